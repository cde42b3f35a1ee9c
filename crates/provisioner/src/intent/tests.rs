//! The no-leak state machine at every crash point, with and without the claim deleted.

use super::*;
use crate::error::ProvisioningState;
use crate::request::{PvTemplate, RecordedRequest};
use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use rstest::rstest;

const DRIVER: &str = "d";

fn intent() -> Intent {
    Intent {
        driver: DRIVER.into(),
        volume_name: "pvc-uid-1".into(),
        claim_uid: "uid-1".into(),
        claim_namespace: "ns".into(),
        claim_name: "claim".into(),
        request: RecordedRequest::default(),
        provisioner_secret: None,
        pv: PvTemplate::default(),
        may_reschedule: false,
    }
}

/// A claim, maybe carrying an intent the earlier way (`on_claim`), maybe deleted, maybe bound.
fn pvc(on_claim: bool, deleting: bool, volume_name: Option<&str>) -> PersistentVolumeClaim {
    let mut annotations = std::collections::BTreeMap::new();
    let mut finalizers = vec!["kubernetes.io/pvc-protection".to_string()];
    if on_claim {
        annotations.insert(
            ANN_VOLUME_INTENT.to_string(),
            serde_json::to_string(&intent()).unwrap(),
        );
        finalizers.push(FINALIZER_VOLUME_INTENT.to_string());
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("claim".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            annotations: Some(annotations),
            finalizers: Some(finalizers),
            deletion_timestamp: deleting.then(|| Time(Default::default())),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            volume_name: volume_name.map(Into::into),
            ..Default::default()
        }),
        status: None,
    }
}

/// The plan for claim `p`, with the journal holding [`intent`] if `journal`.
fn plan_in(
    p: &PersistentVolumeClaim,
    journal: bool,
    pv_exists: bool,
    selection: Selection,
) -> ClaimPlan {
    let i = intent();
    plan(&ClaimObservation {
        driver: DRIVER,
        pvc: p,
        journal: journal.then_some(&i),
        intent_pv_exists: journal && pv_exists,
        pv_exists,
        selection: &selection,
    })
}

fn provision() -> Selection {
    Selection::Provision {
        selected_node: None,
    }
}

fn kind(p: &ClaimPlan) -> &'static str {
    match p {
        ClaimPlan::Nothing(_) => "nothing",
        ClaimPlan::MissingClass(_) => "missing-class",
        ClaimPlan::Prepare { .. } => "prepare",
        ClaimPlan::Provision(_) => "provision",
        ClaimPlan::RollBack(_) => "rollback",
        ClaimPlan::Release(_) => "release",
        ClaimPlan::Adopt(_) => "adopt",
        ClaimPlan::Strip(_) => "strip",
    }
}

#[rstest]
// `recorded`: the journal holds the claim's intent.
// Fresh claim: record intent first (nothing on the driver yet).
#[case::fresh(false, false, None, false, "prepare")]
// Crash before CreateVolume / during it / after it before the PV: replay the same request.
#[case::crash_before_or_during_create(true, false, None, false, "provision")]
// Crash after the PV was created, before the release was written: release.
#[case::crash_after_pv_create(true, false, None, true, "release")]
// Bound to the PV, intent still there: release.
#[case::bound_to_our_pv(true, false, Some("pvc-uid-1"), true, "release")]
// Claim deleted before the intent was recorded: nothing on the driver, nothing to do.
#[case::deleted_before_intent(false, true, None, false, "nothing")]
// Claim deleted while intent is recorded and no PV: roll back with DeleteVolume.
#[case::deleted_with_intent(true, true, None, false, "rollback")]
// Claim deleted after the PV was created: release; the PV is Released and deleted normally.
#[case::deleted_after_pv_create(true, true, None, true, "release")]
// Claim bound to another volume meanwhile: roll ours back.
#[case::bound_elsewhere(true, false, Some("other-pv"), false, "rollback")]
// Provisioned already (PV of that name exists): nothing.
#[case::already_provisioned(false, false, None, true, "nothing")]
fn crash_points(
    #[case] recorded: bool,
    #[case] deleting: bool,
    #[case] volume_name: Option<&str>,
    #[case] pv_exists: bool,
    #[case] want: &str,
) {
    let p = pvc(false, deleting, volume_name);
    let got = plan_in(&p, recorded, pv_exists, provision());
    assert_eq!(kind(&got), want, "{got:?}");
    if let ClaimPlan::Provision(i) | ClaimPlan::RollBack(i) = got {
        assert_eq!(*i, intent(), "the recorded request is replayed unchanged");
    }
}

#[rstest]
// The claim is gone (deleted while no one led, or replaced by a new object of the same name).
#[case::gone_without_pv(None, false, "rollback")]
#[case::gone_after_pv_create(None, true, "release")]
// A new claim of the same name: the intent of the old one is rolled back.
#[case::replaced(Some("uid-2"), false, "rollback")]
#[case::same_claim(Some("uid-1"), false, "provision")]
fn intents_of_claims_that_are_gone(
    #[case] live_uid: Option<&str>,
    #[case] pv_exists: bool,
    #[case] want: &str,
) {
    let live = live_uid.map(|u| {
        let mut p = pvc(false, false, None);
        p.metadata.uid = Some(u.into());
        p
    });
    let got = journal_plan(&intent(), live.as_ref(), pv_exists);
    assert_eq!(kind(&got), want, "{got:?}");
}

#[rstest]
// An intent recorded on the claim by an earlier version moves into the journal...
#[case::on_claim_only(false, "adopt")]
// ...and, once there, leaves the claim.
#[case::on_claim_and_in_journal(true, "strip")]
fn intents_recorded_on_the_claim_move_to_the_journal(#[case] journal: bool, #[case] want: &str) {
    for deleting in [false, true] {
        let p = pvc(true, deleting, None);
        let got = plan_in(&p, journal, false, provision());
        assert_eq!(kind(&got), want, "{got:?}");
        if let ClaimPlan::Adopt(i) = got {
            assert_eq!(*i, intent());
        }
    }
}

#[test]
fn recorded_intent_wins_over_selection() {
    // The claim no longer qualifies (e.g. the scheduler removed the selected node), but a
    // CreateVolume may be running: keep driving the recorded request.
    let p = pvc(false, false, None);
    let got = plan_in(
        &p,
        true,
        false,
        Selection::Skip("waiting for the scheduler"),
    );
    assert_eq!(kind(&got), "provision");
}

#[test]
fn selection_outcomes_without_intent() {
    let p = pvc(false, false, None);
    assert_eq!(
        kind(&plan_in(
            &p,
            false,
            false,
            Selection::MissingClass("x".into())
        )),
        "missing-class"
    );
    assert_eq!(
        kind(&plan_in(&p, false, false, Selection::Skip("x"))),
        "nothing"
    );
}

#[test]
fn an_invalid_intent_on_the_claim_is_removed_not_kept_forever() {
    let mut p = pvc(true, true, None);
    p.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANN_VOLUME_INTENT.into(), "{not json".into());
    assert!(matches!(recorded(&p, DRIVER), Recorded::Invalid(_)));
    assert_eq!(kind(&plan_in(&p, false, false, provision())), "strip");
    // An intent copied onto another object (other UID) is not ours to act on.
    let mut q = pvc(true, false, None);
    q.metadata.uid = Some("uid-2".into());
    assert!(matches!(recorded(&q, DRIVER), Recorded::Invalid(_)));
    // A finalizer without annotation.
    let mut r = pvc(false, false, None);
    r.metadata
        .finalizers
        .as_mut()
        .unwrap()
        .push(FINALIZER_VOLUME_INTENT.into());
    assert!(matches!(recorded(&r, DRIVER), Recorded::Invalid(_)));
}

#[rstest]
#[case(ReplayResult::Exists("v".into()), RollBackStep::Delete("v".into()))]
#[case(ReplayResult::NotCreated, RollBackStep::Release)]
#[case(ReplayResult::Conflict, RollBackStep::ReleaseOrphan)]
#[case(ReplayResult::InFlight, RollBackStep::Retry)]
fn rollback_steps(#[case] r: ReplayResult, #[case] want: RollBackStep) {
    assert_eq!(rollback_step(&r), want);
}

#[rstest]
#[case(tonic::Code::AlreadyExists, ReplayResult::Conflict)]
#[case(tonic::Code::InvalidArgument, ReplayResult::NotCreated)]
#[case(tonic::Code::OutOfRange, ReplayResult::NotCreated)]
#[case(tonic::Code::Unimplemented, ReplayResult::NotCreated)]
#[case(tonic::Code::PermissionDenied, ReplayResult::NotCreated)]
// Upstream calls these final, but on a replay they do not prove that no earlier call created the
// volume: the crash test found the leak (a killed CreateVolume, then INTERNAL on the replay).
#[case(tonic::Code::Internal, ReplayResult::InFlight)]
#[case(tonic::Code::Unknown, ReplayResult::InFlight)]
#[case(tonic::Code::NotFound, ReplayResult::InFlight)]
#[case(tonic::Code::FailedPrecondition, ReplayResult::InFlight)]
#[case(tonic::Code::DeadlineExceeded, ReplayResult::InFlight)]
#[case(tonic::Code::Unavailable, ReplayResult::InFlight)]
#[case(tonic::Code::ResourceExhausted, ReplayResult::InFlight)]
fn replay_errors(#[case] code: tonic::Code, #[case] want: ReplayResult) {
    assert_eq!(replay_error(Some(code)), want);
}

#[test]
fn a_replay_error_without_a_code_keeps_the_intent() {
    assert_eq!(replay_error(None), ReplayResult::InFlight);
}

#[rstest]
#[case(tonic::Code::InvalidArgument, true)]
#[case(tonic::Code::Unauthenticated, true)]
#[case(tonic::Code::Internal, false)]
#[case(tonic::Code::Unknown, false)]
#[case(tonic::Code::Aborted, false)]
#[case(tonic::Code::AlreadyExists, false)]
fn errors_that_prove_nothing_was_created(#[case] code: tonic::Code, #[case] want: bool) {
    assert_eq!(proves_nothing_created(Some(code)), want);
    assert!(!proves_nothing_created(None));
}

#[test]
fn another_drivers_intent_is_left_alone() {
    // Two managers (two drivers) in one cluster: each sees the other's claims only through the
    // intent finalizer; the other's intent is never provisioned, rolled back or released.
    for deleting in [false, true] {
        let p = pvc(true, deleting, None);
        assert!(matches!(recorded(&p, "other"), Recorded::Foreign(d) if d == DRIVER));
        let plan = plan(&ClaimObservation {
            driver: "other",
            pvc: &p,
            journal: None,
            intent_pv_exists: false,
            pv_exists: false,
            selection: &provision(),
        });
        assert_eq!(kind(&plan), "nothing");
    }
}

// What follows a failed CreateVolume: only an error about the request itself, or upstream's
// rescheduling, drops the intent.
#[rstest]
#[case(
    ProvisioningState::Finished,
    Some(tonic::Code::InvalidArgument),
    AfterCreateError::Release
)]
#[case(
    ProvisioningState::Finished,
    Some(tonic::Code::Unimplemented),
    AfterCreateError::Release
)]
#[case(
    ProvisioningState::Finished,
    Some(tonic::Code::Internal),
    AfterCreateError::Keep
)]
#[case(
    ProvisioningState::Finished,
    Some(tonic::Code::NotFound),
    AfterCreateError::Keep
)]
#[case(ProvisioningState::Finished, None, AfterCreateError::Keep)]
#[case(
    ProvisioningState::InBackground,
    Some(tonic::Code::DeadlineExceeded),
    AfterCreateError::Keep
)]
#[case(ProvisioningState::InBackground, None, AfterCreateError::Keep)]
#[case(
    ProvisioningState::Reschedule,
    Some(tonic::Code::ResourceExhausted),
    AfterCreateError::Reschedule
)]
fn after_a_create_error(
    #[case] state: ProvisioningState,
    #[case] code: Option<tonic::Code>,
    #[case] want: AfterCreateError,
) {
    assert_eq!(after_create_error(state, code), want);
}

#[rstest]
#[case::before_the_timeout(59, 60, false)]
#[case::at_the_timeout(60, 60, true)]
#[case::after_the_timeout(3_600, 60, true)]
#[case::zero_never_gives_up(1_000_000, 0, false)]
fn a_failing_rollback_is_given_up_after_the_timeout(
    #[case] failing_for: u64,
    #[case] timeout: u64,
    #[case] want: bool,
) {
    use std::time::Duration;
    assert_eq!(
        give_up_rollback(
            Duration::from_secs(failing_for),
            Duration::from_secs(timeout)
        ),
        want
    );
}
