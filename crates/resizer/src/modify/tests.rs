//! The modify controller's decisions (upstream's `modify_volume_test.go` cases and the branches
//! it leaves out), its filter, error classes, condition merging and patches.

use super::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PersistentVolumeClaimStatus};
use kube::api::ObjectMeta;
use rstest::rstest;

const NOW: &str = "2026-12-02T10:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn pvc(
    spec: Option<&str>,
    current: Option<&str>,
    status: Option<(&str, Option<&str>)>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("c".into()),
            namespace: Some("ns".into()),
            resource_version: Some("7".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            volume_name: Some("pv".into()),
            volume_attributes_class_name: spec.map(Into::into),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            current_volume_attributes_class_name: current.map(Into::into),
            modify_volume_status: status.map(|(s, t)| ModifyVolumeStatus {
                status: s.into(),
                target_volume_attributes_class_name: t.map(Into::into),
            }),
            ..Default::default()
        }),
    }
}

fn with_modifying(mut c: PersistentVolumeClaim) -> PersistentVolumeClaim {
    c.status.as_mut().unwrap().conditions = Some(vec![PersistentVolumeClaimCondition {
        type_: COND_MODIFYING_VOLUME.into(),
        status: "True".into(),
        ..Default::default()
    }]);
    c
}

#[rstest]
#[case::reached(pvc(Some("gold"), Some("gold"), None), false, ModifyStep::Done)]
#[case::never_classed(pvc(None, None, None), false, ModifyStep::Done)]
#[case::new_class(pvc(Some("gold"), None, None), false, ModifyStep::Start("gold".into()))]
#[case::changed_class(pvc(Some("gold"), Some("silver"), None), false, ModifyStep::Start("gold".into()))]
#[case::infeasible_then_changed(pvc(Some("gold"), Some("silver"), Some((MODIFY_INFEASIBLE, Some("bad")))), false, ModifyStep::Start("gold".into()))]
#[case::pending_class_created(pvc(Some("gold"), Some("silver"), Some((MODIFY_PENDING, None))), false, ModifyStep::Start("gold".into()))]
#[case::in_progress_certain_takes_the_new_spec(pvc(Some("gold"), Some("silver"), Some((MODIFY_IN_PROGRESS, Some("bronze")))), false, ModifyStep::Start("gold".into()))]
#[case::in_progress_uncertain_keeps_its_target(pvc(Some("gold"), Some("silver"), Some((MODIFY_IN_PROGRESS, Some("bronze")))), true, ModifyStep::Continue("bronze".into()))]
#[case::cleared_while_in_progress_keeps_its_target(pvc(None, Some("silver"), Some((MODIFY_IN_PROGRESS, Some("bronze")))), false, ModifyStep::Continue("bronze".into()))]
#[case::cleared_after_infeasible(pvc(None, Some("silver"), Some((MODIFY_INFEASIBLE, Some("bad")))), false, ModifyStep::RollBack { cancel: false })]
#[case::cleared_with_a_modifying_condition(with_modifying(pvc(None, Some("silver"), Some((MODIFY_INFEASIBLE, Some("bad"))))), false, ModifyStep::RollBack { cancel: true })]
fn one_pass(
    #[case] claim: PersistentVolumeClaim,
    #[case] uncertain: bool,
    #[case] want: ModifyStep,
) {
    assert_eq!(plan(&claim, uncertain), want);
}

#[test]
fn the_filter_queues_what_upstream_queues() {
    let done = pvc(Some("gold"), Some("gold"), None);
    let running = pvc(
        Some("gold"),
        Some("silver"),
        Some((MODIFY_IN_PROGRESS, Some("gold"))),
    );
    assert!(
        should_enqueue(&running, &done, true),
        "a finished modification"
    );
    assert!(
        !should_enqueue(&done, &running, true),
        "the in-progress write itself"
    );
    let changed = pvc(
        Some("platinum"),
        Some("silver"),
        Some((MODIFY_IN_PROGRESS, Some("gold"))),
    );
    assert!(should_enqueue(&running, &changed, true), "a new class");
    assert!(!should_enqueue(&running, &changed, false), "no cached PV");
    let mut pending = changed.clone();
    pending.status.as_mut().unwrap().phase = Some("Pending".into());
    assert!(!should_enqueue(&running, &pending, true), "not Bound");
}

#[test]
fn the_slow_retry_applies_only_to_the_recorded_target() {
    assert!(targets_spec(&pvc(
        Some("bad"),
        None,
        Some((MODIFY_INFEASIBLE, Some("bad")))
    )));
    assert!(!targets_spec(&pvc(
        Some("good"),
        None,
        Some((MODIFY_INFEASIBLE, Some("bad")))
    )));
    assert!(!targets_spec(&pvc(
        None,
        None,
        Some((MODIFY_INFEASIBLE, Some("bad")))
    )));
    assert!(!targets_spec(&pvc(Some("bad"), None, None)));
}

#[rstest]
#[case(csi::Code::InvalidArgument, ModifyErrorClass::Infeasible)]
#[case(csi::Code::NotFound, ModifyErrorClass::Final)]
#[case(csi::Code::OutOfRange, ModifyErrorClass::Final)]
#[case(csi::Code::Internal, ModifyErrorClass::Final)]
#[case(csi::Code::Unavailable, ModifyErrorClass::Transient)]
#[case(csi::Code::DeadlineExceeded, ModifyErrorClass::Transient)]
#[case(csi::Code::Aborted, ModifyErrorClass::Transient)]
fn only_invalid_argument_is_infeasible(#[case] code: csi::Code, #[case] want: ModifyErrorClass) {
    assert_eq!(ModifyErrorClass::of(code), want);
}

fn cond(
    t: &str,
    reason: Option<&str>,
    transition: Option<&str>,
    probe: &str,
) -> PersistentVolumeClaimCondition {
    PersistentVolumeClaimCondition {
        type_: t.into(),
        status: "True".into(),
        reason: reason.map(Into::into),
        last_transition_time: transition.map(|t| Time(t.parse().unwrap())),
        last_probe_time: Some(Time(probe.parse().unwrap())),
        ..Default::default()
    }
}

#[test]
fn the_transition_time_moves_only_when_reason_or_status_change() {
    const OLD: &str = "2026-12-01T10:00:00Z";
    let old = vec![
        cond("Other", None, Some(OLD), OLD),
        cond(COND_MODIFYING_VOLUME, None, Some(OLD), OLD),
        cond(COND_MODIFY_VOLUME_ERROR, Some("Internal"), Some(OLD), OLD),
    ];
    let new = vec![
        cond(COND_MODIFYING_VOLUME, None, None, NOW),
        cond(COND_MODIFY_VOLUME_ERROR, Some("InvalidArgument"), None, NOW),
    ];
    let merged = merge_conditions(&old, &new);
    let times: Vec<(String, String)> = merged
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.last_transition_time.as_ref().unwrap().0.to_string(),
            )
        })
        .collect();
    assert_eq!(
        times,
        vec![
            ("Other".to_string(), OLD.to_string()),
            (COND_MODIFYING_VOLUME.to_string(), OLD.to_string()),
            (COND_MODIFY_VOLUME_ERROR.to_string(), NOW.to_string()),
        ]
    );
    let appended = merge_conditions(&[], &new[..1]);
    assert_eq!(
        appended[0].last_transition_time,
        appended[0].last_probe_time
    );
}

#[test]
fn in_progress_records_the_target_and_checks_the_version() {
    let c = pvc(Some("gold"), Some("silver"), None);
    assert_eq!(
        mark_status(&c, MODIFY_IN_PROGRESS, None, now()),
        json!({
            "metadata": { "resourceVersion": "7" },
            "status": {
                "modifyVolumeStatus": { "status": "InProgress", "targetVolumeAttributesClassName": "gold" },
                "conditions": [{
                    "type": "ModifyingVolume",
                    "status": "True",
                    "message": "Modifying volume to \"gold\" is in progress.",
                    "lastProbeTime": NOW,
                    "lastTransitionTime": NOW,
                }],
            },
        })
    );
}

#[test]
fn pending_leaves_the_target_and_conditions() {
    let c = pvc(
        Some("missing"),
        Some("silver"),
        Some((MODIFY_IN_PROGRESS, Some("gold"))),
    );
    assert_eq!(
        mark_status(&c, MODIFY_PENDING, None, now()),
        json!({
            "metadata": { "resourceVersion": "7" },
            "status": { "modifyVolumeStatus": { "status": "Pending" } },
        })
    );
}

#[test]
fn a_failure_keeps_the_target_and_records_the_code() {
    let c = pvc(
        Some("gold"),
        Some("silver"),
        Some((MODIFY_IN_PROGRESS, Some("gold"))),
    );
    let error = ModifyError {
        code: csi::Code::InvalidArgument,
        message: "unknown key speed".into(),
    };
    let p = mark_status(&c, MODIFY_INFEASIBLE, Some(&error), now());
    assert_eq!(
        p["status"]["modifyVolumeStatus"],
        json!({ "status": "Infeasible" })
    );
    assert_eq!(
        p["status"]["conditions"],
        json!([
            {
                "type": "ModifyingVolume",
                "status": "True",
                "message": "Modifying volume to \"gold\" failed. Waiting for retry.",
                "lastProbeTime": NOW,
                "lastTransitionTime": NOW,
            },
            {
                "type": "ModifyVolumeError",
                "status": "True",
                "reason": "InvalidArgument",
                "message": "unknown key speed",
                "lastProbeTime": NOW,
                "lastTransitionTime": NOW,
            },
        ])
    );
    let transient = ModifyError {
        code: csi::Code::Unavailable,
        message: "busy".into(),
    };
    let p = mark_status(&c, MODIFY_IN_PROGRESS, Some(&transient), now());
    assert_eq!(
        p["status"]["conditions"][0]["message"],
        "Modifying volume to \"gold\" is still in progress."
    );
}

#[test]
fn completion_and_rollback_clear_the_modify_state_without_a_version_check() {
    let mut c = with_modifying(pvc(
        Some("gold"),
        Some("silver"),
        Some((MODIFY_IN_PROGRESS, Some("gold"))),
    ));
    c.status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()
        .push(cond("Other", None, None, NOW));
    assert_eq!(
        mark_completed(&c, "gold"),
        json!({ "status": {
            "modifyVolumeStatus": null,
            "currentVolumeAttributesClassName": "gold",
            "conditions": [{ "type": "Other", "status": "True", "lastProbeTime": NOW }],
        }})
    );
    assert_eq!(
        mark_rolled_back(&c),
        json!({ "status": {
            "conditions": [{ "type": "Other", "status": "True", "lastProbeTime": NOW }],
        }})
    );
    assert_eq!(
        pv_class("gold"),
        json!({ "spec": { "volumeAttributesClassName": "gold" } })
    );
}
