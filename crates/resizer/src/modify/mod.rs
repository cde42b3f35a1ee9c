//! The modify controller's pure part (external-resizer's `modifycontroller`): which claim
//! changes to queue, what one pass does, how a failure is classed, and the claim and PV patches.
//! The act layer is [`act`].

pub(crate) mod act;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ModifyVolumeStatus, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::constants::*;
use crate::patch::{claim_diff, conditions, set_conditions, with};

/// `spec.volumeAttributesClassName` (`""` when unset).
pub fn spec_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref())
        .unwrap_or("")
}

/// `status.currentVolumeAttributesClassName` (`""` when unset).
pub fn current_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.current_volume_attributes_class_name.as_deref())
        .unwrap_or("")
}

/// `status.modifyVolumeStatus`.
pub fn modify_status(pvc: &PersistentVolumeClaim) -> Option<&ModifyVolumeStatus> {
    pvc.status.as_ref()?.modify_volume_status.as_ref()
}

fn bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

fn in_progress(pvc: &PersistentVolumeClaim) -> bool {
    modify_status(pvc).is_some_and(|s| s.status == MODIFY_IN_PROGRESS)
}

/// Upstream's update filter (`updatePVC`): the class changed or no modification is recorded, the
/// claim is Bound, and the PV the previous state names is cached (`pv_cached`).
pub fn should_enqueue(
    previous: &PersistentVolumeClaim,
    new: &PersistentVolumeClaim,
    pv_cached: bool,
) -> bool {
    let changed = spec_class(new) != spec_class(previous) || modify_status(new).is_none();
    changed && bound(new) && pv_cached
}

/// Whether a recorded modification targets the class the spec names: only then may the slow
/// retry of an infeasible class hold the claim back (`delayModificationIfRecentlyInfeasible`).
pub fn targets_spec(pvc: &PersistentVolumeClaim) -> bool {
    let spec = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref());
    match (modify_status(pvc), spec) {
        (Some(s), Some(spec)) => {
            s.target_volume_attributes_class_name
                .as_deref()
                .unwrap_or("")
                == spec
        }
        _ => false,
    }
}

/// Whether the claim's recorded modification is Infeasible.
pub fn is_infeasible(pvc: &PersistentVolumeClaim) -> bool {
    modify_status(pvc).is_some_and(|s| s.status == MODIFY_INFEASIBLE)
}

/// What one pass does (`modify`), after the slow-retry check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModifyStep {
    /// The claim has its class: nothing to do.
    Done,
    /// The class was cleared while no modification runs: keep the state; if a
    /// `ModifyingVolume` condition is there, remove it (`VolumeModifyCanceled`).
    RollBack {
        /// A `ModifyingVolume` condition is to be removed.
        cancel: bool,
    },
    /// Go on with the recorded target (the last attempt's outcome is uncertain, or the class
    /// was cleared while it ran): no new status is written first.
    Continue(String),
    /// Modify to the spec's class: `Pending` if it does not exist, else `InProgress` first.
    Start(String),
}

/// The pass's step for `pvc`; `uncertain` says the last attempt of this claim may still run.
pub fn plan(pvc: &PersistentVolumeClaim, uncertain: bool) -> ModifyStep {
    let spec = spec_class(pvc);
    let status = modify_status(pvc);
    if status.is_none() && spec == current_class(pvc) {
        return ModifyStep::Done;
    }
    let in_progress = in_progress(pvc);
    if spec.is_empty() && !in_progress {
        let cancel = conditions(pvc)
            .iter()
            .any(|c| c.type_ == COND_MODIFYING_VOLUME);
        return ModifyStep::RollBack { cancel };
    }
    if (in_progress && uncertain) || spec.is_empty() {
        let target = status
            .and_then(|s| s.target_volume_attributes_class_name.clone())
            .unwrap_or_default();
        return ModifyStep::Continue(target);
    }
    ModifyStep::Start(spec.to_string())
}

/// How a failed ControllerModifyVolume is recorded (`controllerModifyVolumeWithTarget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModifyErrorClass {
    /// Not final: the attempt may still run; its target stays pinned (uncertain).
    Transient,
    /// INVALID_ARGUMENT: `Infeasible`, retried only after `--retry-interval-max`.
    Infeasible,
    /// Any other final code: stays `InProgress`, retried with backoff.
    Final,
}

impl ModifyErrorClass {
    /// Of a gRPC `code`.
    pub fn of(code: csi::Code) -> Self {
        if !csi::error::is_final_code(code) {
            ModifyErrorClass::Transient
        } else if code == csi::Code::InvalidArgument {
            ModifyErrorClass::Infeasible
        } else {
            ModifyErrorClass::Final
        }
    }

    /// The machine-readable class (ours): the `action` of the `VolumeModifyFailed` Event.
    pub fn reason(self) -> &'static str {
        match self {
            ModifyErrorClass::Transient => "ModifyTransientError",
            ModifyErrorClass::Infeasible => "ModifyInfeasible",
            ModifyErrorClass::Final => "ModifyFailed",
        }
    }
}

/// A failed ControllerModifyVolume, as the status records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModifyError {
    /// The gRPC code.
    pub code: csi::Code,
    /// The driver's message (the gRPC status message).
    pub message: String,
}

/// `MergePVCConditions`: conditions of a type in `new` are replaced in place, the transition
/// time kept unless the reason or status changed (then it is the probe time); other conditions
/// are kept; the rest of `new` is appended.
pub fn merge_conditions(
    old: &[PersistentVolumeClaimCondition],
    new: &[PersistentVolumeClaimCondition],
) -> Vec<PersistentVolumeClaimCondition> {
    let mut result = Vec::new();
    let mut used = vec![false; new.len()];
    for o in old {
        match new.iter().position(|n| n.type_ == o.type_) {
            Some(i) => {
                used[i] = true;
                let mut n = new[i].clone();
                n.last_transition_time = if n.reason != o.reason || n.status != o.status {
                    n.last_probe_time.clone()
                } else {
                    o.last_transition_time.clone()
                };
                result.push(n);
            }
            None => result.push(o.clone()),
        }
    }
    for (n, used) in new.iter().zip(used) {
        if !used {
            let mut n = n.clone();
            n.last_transition_time = n.last_probe_time.clone();
            result.push(n);
        }
    }
    result
}

fn quoted(name: &str) -> String {
    format!("{name:?}")
}

/// `markControllerModifyVolumeStatus`: `modifyVolumeStatus.status` = `status`; unless Pending,
/// a `ModifyingVolume` condition (and, after a failure, a `ModifyVolumeError` with the gRPC code
/// as reason), and without a failure the spec's class as the target. Version-checked.
pub fn mark_status(
    pvc: &PersistentVolumeClaim,
    status: &str,
    error: Option<&ModifyError>,
    now: Timestamp,
) -> Value {
    let new = with(pvc, |n| {
        let s = n.status.get_or_insert_with(Default::default);
        let mut modify = s.modify_volume_status.clone().unwrap_or_default();
        modify.status = status.to_string();
        if status != MODIFY_PENDING {
            let probe = Some(Time(now));
            let mut added = Vec::new();
            let message = match error {
                None => {
                    let target = spec_class(pvc).to_string();
                    let message =
                        format!("Modifying volume to {} is in progress.", quoted(&target));
                    modify.target_volume_attributes_class_name =
                        (!target.is_empty()).then_some(target);
                    message
                }
                Some(e) => {
                    let target = modify
                        .target_volume_attributes_class_name
                        .clone()
                        .unwrap_or_default();
                    if csi::error::is_final_code(e.code) {
                        format!(
                            "Modifying volume to {} failed. Waiting for retry.",
                            quoted(&target)
                        )
                    } else {
                        format!(
                            "Modifying volume to {} is still in progress.",
                            quoted(&target)
                        )
                    }
                }
            };
            added.push(PersistentVolumeClaimCondition {
                type_: COND_MODIFYING_VOLUME.into(),
                status: "True".into(),
                last_probe_time: probe.clone(),
                message: Some(message),
                ..Default::default()
            });
            if let Some(e) = error {
                added.push(PersistentVolumeClaimCondition {
                    type_: COND_MODIFY_VOLUME_ERROR.into(),
                    status: "True".into(),
                    reason: Some(csi::error::code_name(e.code).into()),
                    message: Some(e.message.clone()),
                    last_probe_time: probe,
                    ..Default::default()
                });
            }
            let merged = merge_conditions(&conditions(pvc), &added);
            s.conditions = (!merged.is_empty()).then_some(merged);
        }
        s.modify_volume_status = Some(modify);
    });
    claim_diff(pvc, &new, true)
}

/// `markControllerModifyVolumeCompleted`, the claim's half: no `modifyVolumeStatus`, the target
/// as the current class, the modify conditions removed. Not version-checked.
pub fn mark_completed(pvc: &PersistentVolumeClaim, target: &str) -> Value {
    let new = with(pvc, |n| {
        let s = n.status.get_or_insert_with(Default::default);
        s.modify_volume_status = None;
        s.current_volume_attributes_class_name = Some(target.to_string());
        let kept: Vec<_> = conditions(pvc)
            .into_iter()
            .filter(|c| c.type_ != COND_MODIFYING_VOLUME && c.type_ != COND_MODIFY_VOLUME_ERROR)
            .collect();
        set_conditions(n, kept);
    });
    claim_diff(pvc, &new, false)
}

/// `markRolledBack`: the `ModifyingVolume` condition removed. Not version-checked.
pub fn mark_rolled_back(pvc: &PersistentVolumeClaim) -> Value {
    let new = with(pvc, |n| {
        let kept: Vec<_> = conditions(pvc)
            .into_iter()
            .filter(|c| c.type_ != COND_MODIFYING_VOLUME)
            .collect();
        set_conditions(n, kept);
    });
    claim_diff(pvc, &new, false)
}

/// The PV's half of completion: `spec.volumeAttributesClassName` (strategic merge patch, before
/// the claim's, as upstream).
pub fn pv_class(target: &str) -> Value {
    json!({ "spec": { "volumeAttributesClassName": target } })
}

#[cfg(test)]
mod tests;
