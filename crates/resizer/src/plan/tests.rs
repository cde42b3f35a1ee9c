//! The recovery table branch by branch (upstream's `expand_and_recover_test.go` cases and the
//! branches it leaves out), the update filter, selection, error classes and condition merging.
// The recovery table has one column per input.
#![allow(clippy::too_many_arguments)]

use super::*;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, VolumeResourceRequirements,
};
use kube::api::ObjectMeta;
use rstest::rstest;
use std::collections::BTreeMap;

fn q(s: &str) -> Quantity {
    Quantity(s.into())
}

#[rstest]
// pv < spec
#[case::node_infeasible_keeps_allocated(1, 5, Some("3G"), NODE_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("3G"), update_status: false })]
#[case::node_infeasible_without_allocated(1, 5, None, NODE_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("5G"), update_status: true })]
#[case::node_pending_pv_reached_allocated(
    3,
    10,
    Some("3G"),
    NODE_RESIZE_PENDING,
    false,
    false,
    false,
    Expansion::Wait
)]
#[case::node_in_progress_pv_reached_allocated(
    3,
    10,
    Some("3G"),
    NODE_RESIZE_IN_PROGRESS,
    false,
    false,
    false,
    Expansion::Wait
)]
#[case::node_pending_pv_below_allocated(3, 10, Some("4G"), NODE_RESIZE_PENDING, false, false, false, Expansion::Expand { size: q("4G"), update_status: false })]
#[case::controller_in_progress_uncertain_pins_allocated(3, 5, Some("10G"), CONTROLLER_RESIZE_IN_PROGRESS, false, false, false, Expansion::Expand { size: q("10G"), update_status: false })]
#[case::controller_in_progress_after_final_error_takes_spec(3, 5, Some("10G"), CONTROLLER_RESIZE_IN_PROGRESS, true, false, false, Expansion::Expand { size: q("5G"), update_status: true })]
#[case::controller_infeasible_lowered_request_recovers(3, 5, Some("10G"), CONTROLLER_RESIZE_INFEASIBLE, false, true, false, Expansion::Expand { size: q("5G"), update_status: true })]
#[case::controller_infeasible_same_target_slow(
    3,
    5,
    Some("5G"),
    CONTROLLER_RESIZE_INFEASIBLE,
    false,
    true,
    false,
    Expansion::SlowRetry
)]
#[case::controller_infeasible_same_target_after_the_wait(3, 5, Some("5G"), CONTROLLER_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("5G"), update_status: false })]
#[case::fresh_expansion(1, 2, None, "", false, false, false, Expansion::Expand { size: q("2G"), update_status: true })]
// pv >= spec
#[case::done_waiting_for_kubelet(
    2,
    2,
    Some("2G"),
    NODE_RESIZE_PENDING,
    false,
    false,
    false,
    Expansion::Wait
)]
#[case::kubelet_expanding(
    2,
    2,
    Some("2G"),
    NODE_RESIZE_IN_PROGRESS,
    false,
    false,
    false,
    Expansion::Wait
)]
#[case::node_infeasible_retried_with_allocated(2, 2, Some("2G"), NODE_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("2G"), update_status: false })]
#[case::node_infeasible_retried_with_spec(2, 2, None, NODE_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("2G"), update_status: true })]
#[case::node_only_driver_node_infeasible_takes_spec(3, 2, Some("3G"), NODE_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("2G"), update_status: true })]
#[case::controller_in_progress_record_the_done_work(10, 5, Some("10G"), CONTROLLER_RESIZE_IN_PROGRESS, false, false, false, Expansion::Expand { size: q("10G"), update_status: false })]
#[case::controller_infeasible_shrunk_request(10, 5, Some("10G"), CONTROLLER_RESIZE_INFEASIBLE, false, false, false, Expansion::Expand { size: q("10G"), update_status: false })]
#[case::no_status_with_allocated(2, 2, Some("2G"), "", false, false, false, Expansion::Expand { size: q("2G"), update_status: false })]
#[case::old_api_server_fs_pending(2, 2, None, "", false, false, true, Expansion::Wait)]
#[case::old_api_server(1, 1, None, "", false, false, false, Expansion::Expand { size: q("1G"), update_status: true })]
fn recovery_table(
    #[case] pv_g: i64,
    #[case] spec_g: i64,
    #[case] allocated: Option<&str>,
    #[case] status: &str,
    #[case] final_error: bool,
    #[case] in_slow_set: bool,
    #[case] fs_resize_pending: bool,
    #[case] want: Expansion,
) {
    let pv = q(&format!("{pv_g}G"));
    let spec = q(&format!("{spec_g}G"));
    let allocated = allocated.map(q);
    let input = RecoveryInput {
        pv_size: Some(&pv),
        spec: &spec,
        allocated: allocated.as_ref(),
        status,
        final_error,
        in_slow_set,
        fs_resize_pending,
        // The last case is a node-only driver (upstream's trivial resizer).
        control_plane: !(status == NODE_RESIZE_INFEASIBLE && pv_g == 3),
    };
    assert_eq!(decide(&input), want);
}

#[rstest]
#[case(None, ErrorClass::Transient)]
#[case(Some(csi::Code::Cancelled), ErrorClass::Transient)]
#[case(Some(csi::Code::DeadlineExceeded), ErrorClass::Transient)]
#[case(Some(csi::Code::Unavailable), ErrorClass::Transient)]
#[case(Some(csi::Code::ResourceExhausted), ErrorClass::Transient)]
#[case(Some(csi::Code::Aborted), ErrorClass::Transient)]
#[case(Some(csi::Code::InvalidArgument), ErrorClass::Infeasible)]
#[case(Some(csi::Code::OutOfRange), ErrorClass::Infeasible)]
#[case(Some(csi::Code::NotFound), ErrorClass::Infeasible)]
#[case(Some(csi::Code::Internal), ErrorClass::Final)]
#[case(Some(csi::Code::FailedPrecondition), ErrorClass::Final)]
#[case(Some(csi::Code::Unimplemented), ErrorClass::Final)]
fn error_classes(#[case] code: Option<csi::Code>, #[case] want: ErrorClass) {
    assert_eq!(ErrorClass::of(code), want);
}

pub(crate) fn pvc(request: &str, capacity: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("c".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            volume_name: Some("pv-1".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(STORAGE.into(), q(request))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            capacity: Some(BTreeMap::from([(STORAGE.into(), q(capacity))])),
            ..Default::default()
        }),
    }
}

fn pv(driver: &str, claim_ns: &str, claim_uid: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pv-1".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: "vol-1".into(),
                ..Default::default()
            }),
            claim_ref: Some(ObjectReference {
                namespace: Some(claim_ns.into()),
                name: Some("c".into()),
                uid: Some(claim_uid.into()),
                ..Default::default()
            }),
            capacity: Some(BTreeMap::from([(STORAGE.into(), q("1Gi"))])),
            ..Default::default()
        }),
        status: None,
    }
}

#[rstest]
#[case::ours("d", "ns", "uid-1", Ok(()))]
#[case::other_driver("e", "ns", "uid-1", Err("the PV belongs to another driver"))]
#[case::other_namespace("d", "other", "uid-1", Err("the PV is not bound to this claim"))]
#[case::other_uid("d", "ns", "uid-2", Err("the PV is not bound to this claim"))]
fn selection(
    #[case] driver: &str,
    #[case] ns: &str,
    #[case] uid: &str,
    #[case] want: Result<(), &str>,
) {
    assert_eq!(
        can_expand(&pv(driver, ns, uid), &pvc("2Gi", "1Gi"), "d"),
        want
    );
}

#[test]
fn a_pv_without_csi_is_not_ours() {
    let mut p = pv("d", "ns", "uid-1");
    p.spec.as_mut().unwrap().csi = None;
    assert_eq!(
        can_expand(&p, &pvc("2Gi", "1Gi"), "d"),
        Err("the PV is not a CSI volume")
    );
}

#[rstest]
#[case::larger("2Gi", "1Gi", "Bound", true)]
#[case::numerically_equal("1024Mi", "1Gi", "Bound", false)]
#[case::smaller("1Gi", "2Gi", "Bound", false)]
#[case::not_bound("2Gi", "1Gi", "Pending", false)]
fn needs_resize_compares_numerically(
    #[case] request: &str,
    #[case] cap: &str,
    #[case] phase: &str,
    #[case] want: bool,
) {
    let mut c = pvc(request, cap);
    c.status.as_mut().unwrap().phase = Some(phase.into());
    assert_eq!(needs_resize(&c), want);
}

#[test]
fn the_filter_queues_what_upstream_queues() {
    let old = pvc("1Gi", "1Gi");
    let changed = |f: &dyn Fn(&mut PersistentVolumeClaim)| {
        let mut n = old.clone();
        n.metadata.resource_version = Some("2".into());
        f(&mut n);
        should_enqueue(&old, &n)
    };
    assert!(should_enqueue(&old, &old), "a resync");
    assert!(!changed(&|_| {}), "an unrelated change");
    assert!(!changed(&|n| {
        n.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())]));
    }));
    assert!(changed(&|n| *n = pvc("2Gi", "1Gi")), "a larger request");
    assert!(
        changed(&|n| {
            *n = pvc("500Mi", "1Gi");
            n.metadata.resource_version = Some("2".into());
        }),
        "a lowered request (recovery)"
    );
    assert!(changed(&|n| {
        n.status.as_mut().unwrap().capacity = Some(BTreeMap::from([(STORAGE.into(), q("2Gi"))]));
    }));
    assert!(changed(&|n| {
        n.status.as_mut().unwrap().allocated_resource_statuses = Some(BTreeMap::from([(
            STORAGE.into(),
            NODE_RESIZE_INFEASIBLE.into(),
        )]));
    }));
    assert!(changed(&|n| {
        n.metadata.annotations = Some(BTreeMap::from([(ANN_STORAGE_RESIZER.into(), "d".into())]));
    }));
}

fn cond(t: &str, message: &str) -> PersistentVolumeClaimCondition {
    PersistentVolumeClaimCondition {
        type_: t.into(),
        status: "True".into(),
        message: Some(message.into()),
        ..Default::default()
    }
}

fn types(c: &[PersistentVolumeClaimCondition]) -> Vec<String> {
    c.iter()
        .map(|c| format!("{}:{}", c.type_, c.message.as_deref().unwrap_or("")))
        .collect()
}

#[rstest]
#[case::replace_drops_other_resize_conditions(false, vec!["Other:o", "Resizing:new"])]
#[case::keep_old_keeps_them(true, vec!["Other:o", "Resizing:new", "FileSystemResizePending:old"])]
fn conditions_merge_as_upstream(#[case] keep_old: bool, #[case] want: Vec<&str>) {
    let old = vec![
        cond("Other", "o"),
        cond(COND_RESIZING, "old"),
        cond(COND_FS_RESIZE_PENDING, "old"),
    ];
    let merged = merge_resize_conditions(&old, &[cond(COND_RESIZING, "new")], keep_old);
    assert_eq!(types(&merged), want);
}

#[test]
fn new_conditions_are_appended() {
    let merged = merge_resize_conditions(
        &[cond(COND_RESIZING, "r")],
        &[cond(COND_CONTROLLER_RESIZE_ERROR, "e")],
        true,
    );
    assert_eq!(
        types(&merged),
        vec!["Resizing:r", "ControllerResizeError:e"]
    );
    assert!(merge_resize_conditions(&[cond(COND_RESIZING, "r")], &[], false).is_empty());
}

#[test]
fn the_pre_resize_annotation_goes_once_the_claim_caught_up() {
    let mut p = pv("d", "ns", "uid-1");
    p.metadata.annotations = Some(BTreeMap::from([(
        ANN_PRE_RESIZE_CAPACITY.into(),
        "1Gi".into(),
    )]));
    p.spec.as_mut().unwrap().capacity = Some(BTreeMap::from([(STORAGE.into(), q("2Gi"))]));
    assert!(!pre_resize_annotation_done(&pvc("2Gi", "1Gi"), &p));
    assert!(pre_resize_annotation_done(&pvc("2Gi", "2Gi"), &p));
}

#[test]
fn an_expansion_answer_below_the_request_is_an_error_and_zero_means_the_request() {
    assert_eq!(expanded_bytes(0, 100), Ok(100));
    assert_eq!(expanded_bytes(100, 100), Ok(100));
    assert_eq!(expanded_bytes(150, 100), Ok(150));
    assert_eq!(
        expanded_bytes(50, 100),
        Err("ControllerExpandVolume returned capacity 50, less than the requested 100".into())
    );
}
