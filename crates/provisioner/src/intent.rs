//! The no-leak state machine of one claim (see `README.md`): the pure `plan` of the claim worker.
//!
//! Intent is recorded in the driver's journal ([`crate::journal`]) *before* any CreateVolume,
//! and released only once a PV records the volume, or the volume is known not to exist. While it
//! is recorded, the claim worker either drives the recorded request to a PV (claim alive) or
//! rolls it back with DeleteVolume (claim deleted, or bound to another volume). The journal
//! outlives the claim, so a restart at any instant finds the intent and resumes.
//!
//! Earlier versions recorded the intent on the PVC itself (finalizer [`FINALIZER_VOLUME_INTENT`]
//! and annotation [`ANN_VOLUME_INTENT`]); such a claim's intent is moved into the journal
//! ([`ClaimPlan::Adopt`]) and the claim cleaned ([`ClaimPlan::Strip`]).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::claim::{self, Selection};
use crate::constants::*;
use crate::request::Intent;

/// What the claim's annotations and finalizers say about intent recorded on it (the earlier way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// No finalizer, no annotation.
    None,
    /// A valid intent for this very object.
    Intent(Box<Intent>),
    /// An intent recorded by another driver's manager: not ours to act on.
    Foreign(String),
    /// Our finalizer or annotation is there but the intent cannot be used (missing, unreadable,
    /// or recorded on an object with another UID); the string says why.
    Invalid(String),
}

/// Reads the recorded intent of `pvc`, as the manager of `driver` sees it.
pub fn recorded(pvc: &PersistentVolumeClaim, driver: &str) -> Recorded {
    let finalizer = crate::meta::has_finalizer(&pvc.metadata, FINALIZER_VOLUME_INTENT);
    let annotation = crate::meta::annotation(&pvc.metadata, ANN_VOLUME_INTENT);
    match (finalizer, annotation) {
        (false, None) => Recorded::None,
        (_, None) => Recorded::Invalid("the intent annotation is missing".into()),
        (_, Some(json)) => match serde_json::from_str::<Intent>(json) {
            Ok(i) if i.driver != driver => Recorded::Foreign(i.driver),
            Ok(i) if Some(i.claim_uid.as_str()) == pvc.metadata.uid.as_deref() => {
                Recorded::Intent(Box::new(i))
            }
            Ok(_) => Recorded::Invalid("the intent was recorded for another claim UID".into()),
            Err(e) => Recorded::Invalid(format!("the intent annotation is unreadable: {e}")),
        },
    }
}

/// What one pass of the claim worker does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimPlan {
    /// Nothing to do.
    Nothing(&'static str),
    /// The StorageClass is missing: retry with backoff.
    MissingClass(String),
    /// Build the request (`request::prepare`) and record it in the journal.
    Prepare {
        /// The selected node, if any.
        selected_node: Option<String>,
    },
    /// Call CreateVolume with the recorded request, then create the PV.
    Provision(Box<Intent>),
    /// Replay the recorded CreateVolume to learn the volume id, DeleteVolume it, then release.
    RollBack(Box<Intent>),
    /// Release the journal's intent.
    Release(String),
    /// Record the intent found on the claim in the journal (then [`ClaimPlan::Strip`]).
    Adopt(Box<Intent>),
    /// Remove the intent finalizer and annotation from the claim.
    Strip(String),
}

/// The observed state of one claim.
#[derive(Clone, Copy, Debug)]
pub struct ClaimObservation<'a> {
    /// This manager's driver.
    pub driver: &'a str,
    /// The claim.
    pub pvc: &'a PersistentVolumeClaim,
    /// The journal's intent for this claim (by UID).
    pub journal: Option<&'a Intent>,
    /// Whether a PV with the recorded intent's volume name exists (`false` without an intent).
    pub intent_pv_exists: bool,
    /// Whether a PV with the name the claim would get now exists.
    pub pv_exists: bool,
    /// Claim selection (class lookup included) for a claim without intent.
    pub selection: &'a Selection,
}

/// The claim worker's plan.
pub fn plan(obs: &ClaimObservation<'_>) -> ClaimPlan {
    let pvc = obs.pvc;
    match recorded(pvc, obs.driver) {
        Recorded::None => {}
        Recorded::Foreign(_) => {
            return ClaimPlan::Nothing("the intent was recorded by another driver");
        }
        Recorded::Intent(_) if obs.journal.is_some() => {
            return ClaimPlan::Strip("the journal holds the intent".into());
        }
        Recorded::Intent(intent) => return ClaimPlan::Adopt(intent),
        // Nothing can be resumed or rolled back without the request; do not block the claim.
        Recorded::Invalid(why) => return ClaimPlan::Strip(why),
    }
    if let Some(intent) = obs.journal {
        return journal_plan(intent, Some(pvc), obs.intent_pv_exists);
    }
    if claim::is_deleting(pvc) {
        return ClaimPlan::Nothing("the claim is being deleted");
    }
    match obs.selection {
        Selection::Skip(why) => ClaimPlan::Nothing(why),
        Selection::MissingClass(e) => ClaimPlan::MissingClass(e.clone()),
        // LIB: a PV of that name already exists: provisioned, nothing to do.
        Selection::Provision { .. } if obs.pv_exists => ClaimPlan::Nothing("the PV already exists"),
        Selection::Provision { selected_node } => ClaimPlan::Prepare {
            selected_node: selected_node.clone(),
        },
    }
}

/// The plan for a recorded intent; `pvc` is its claim, `None` when the claim is gone (deleted,
/// or replaced by another object of the same name).
pub fn journal_plan(
    intent: &Intent,
    pvc: Option<&PersistentVolumeClaim>,
    intent_pv_exists: bool,
) -> ClaimPlan {
    if intent_pv_exists {
        return ClaimPlan::Release(format!(
            "PV {} exists and records the volume",
            intent.volume_name
        ));
    }
    let Some(pvc) = pvc.filter(|p| p.metadata.uid.as_deref() == Some(&intent.claim_uid)) else {
        return ClaimPlan::RollBack(Box::new(intent.clone()));
    };
    let bound_elsewhere = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty() && v != intent.volume_name);
    if claim::is_deleting(pvc) || bound_elsewhere {
        ClaimPlan::RollBack(Box::new(intent.clone()))
    } else {
        ClaimPlan::Provision(Box::new(intent.clone()))
    }
}

/// What a rollback's CreateVolume replay answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayResult {
    /// The volume exists with this id.
    Exists(String),
    /// An error that says this request can never succeed ([`proves_nothing_created`]): no call
    /// with these arguments created anything.
    NotCreated,
    /// ALREADY_EXISTS: a volume of that name exists but with other arguments; its id is unknown.
    Conflict,
    /// Any other error: the volume may exist (an earlier call may have created it) or be in
    /// the making.
    InFlight,
}

/// Whether a CreateVolume error proves that no call with the same arguments ever created the
/// volume: only errors about the request itself do (INVALID_ARGUMENT, OUT_OF_RANGE,
/// UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED), since every call with these arguments got
/// or would get the same answer.
///
/// Every other error only speaks of this one call. An idempotent driver answers a repeated
/// CreateVolume with the volume an earlier call created, but a driver in trouble answers INTERNAL
/// or UNKNOWN (or times out) whether or not the volume exists, and the earlier call may have been
/// made by a process that was killed since. Upstream's final/in-flight split
/// ([`crate::error::check_error`]) decides what to tell the user and when to retry; this decides
/// whether the recorded intent may be dropped. The crash-safety test found both leaks this
/// closes: a killed CreateVolume followed by INTERNAL on the retry, then the claim deleted.
pub fn proves_nothing_created(code: Option<tonic::Code>) -> bool {
    use tonic::Code;
    matches!(
        code,
        Some(
            Code::InvalidArgument
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::PermissionDenied
                | Code::Unauthenticated
        )
    )
}

/// What becomes of the journal's intent after a failed CreateVolume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCreateError {
    /// Keep it: the next pass replays the recorded request, or rolls it back if the claim goes.
    Keep,
    /// Drop it: the error proves nothing was created.
    Release,
    /// Drop it and give the claim back to the scheduler (remove `selected-node`).
    Reschedule,
}

/// Upstream forgets a claim after a final error; we drop the intent only when the error proves
/// that no earlier call (perhaps of a killed process) created the volume
/// ([`proves_nothing_created`]), and on upstream's rescheduling path.
pub fn after_create_error(
    state: crate::error::ProvisioningState,
    code: Option<tonic::Code>,
) -> AfterCreateError {
    use crate::error::ProvisioningState;
    match state {
        ProvisioningState::Finished if proves_nothing_created(code) => AfterCreateError::Release,
        ProvisioningState::Reschedule => AfterCreateError::Reschedule,
        _ => AfterCreateError::Keep,
    }
}

/// How a rollback reads an error from its CreateVolume replay: the intent is dropped only when
/// [`proves_nothing_created`]; every other error keeps it and retries with backoff (a claim held
/// a little longer, never a leak).
pub fn replay_error(code: Option<tonic::Code>) -> ReplayResult {
    if code == Some(tonic::Code::AlreadyExists) {
        ReplayResult::Conflict
    } else if proves_nothing_created(code) {
        ReplayResult::NotCreated
    } else {
        ReplayResult::InFlight
    }
}

/// The next step of a rollback after the replayed CreateVolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollBackStep {
    /// DeleteVolume this id, then release the intent.
    Delete(String),
    /// Release the intent: nothing exists.
    Release,
    /// Release the intent with a warning: the volume can not be found by id.
    ReleaseOrphan,
    /// Keep the intent and retry with backoff.
    Retry,
}

/// What to do after the rollback's replay.
pub fn rollback_step(result: &ReplayResult) -> RollBackStep {
    match result {
        ReplayResult::Exists(id) => RollBackStep::Delete(id.clone()),
        ReplayResult::NotCreated => RollBackStep::Release,
        ReplayResult::Conflict => RollBackStep::ReleaseOrphan,
        ReplayResult::InFlight => RollBackStep::Retry,
    }
}

#[cfg(test)]
mod tests;

/// Whether the rollback of an intent that has been failing for `failing_for` (since its first
/// failure; the caller never gives up on the first) is given up: after `--intent-rollback-timeout`
/// (`timeout`; zero never gives up).
pub fn give_up_rollback(failing_for: std::time::Duration, timeout: std::time::Duration) -> bool {
    !timeout.is_zero() && failing_for >= timeout
}
