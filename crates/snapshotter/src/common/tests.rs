//! The common controller's decisions, after upstream's table tests
//! (`pkg/common-controller/snapshot_*_test.go`).

use super::*;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, TypedLocalObjectReference,
};
use rstest::rstest;

const UID: &str = "uid-1";

fn t(s: i64) -> Time {
    Time(jiff::Timestamp::from_second(s).unwrap())
}

fn dynamic(finalizers: &[&str]) -> VolumeSnapshot {
    VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some("snap".into()),
            namespace: Some("ns".into()),
            uid: Some(UID.into()),
            finalizers: (!finalizers.is_empty())
                .then(|| finalizers.iter().map(|f| f.to_string()).collect()),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some("claim".into()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: Some("class".into()),
        },
        status: None,
    }
}

fn pre_provisioned(finalizers: &[&str]) -> VolumeSnapshot {
    let mut vs = dynamic(finalizers);
    vs.spec.source = VolumeSnapshotSource {
        persistent_volume_claim_name: None,
        volume_snapshot_content_name: Some("imported".into()),
    };
    vs
}

fn bound(mut vs: VolumeSnapshot, content: &str, ready: bool) -> VolumeSnapshot {
    vs.status = Some(VolumeSnapshotStatus {
        bound_volume_snapshot_content_name: Some(content.into()),
        ready_to_use: Some(ready),
        ..Default::default()
    });
    vs
}

fn content(name: &str, uid: &str, policy: DeletionPolicy) -> VolumeSnapshotContent {
    VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            volume_snapshot_ref: ObjectReference {
                name: Some("snap".into()),
                namespace: Some("ns".into()),
                uid: (!uid.is_empty()).then(|| uid.to_string()),
                ..Default::default()
            },
            deletion_policy: policy,
            driver: "d".into(),
            volume_snapshot_class_name: Some("class".into()),
            source: VolumeSnapshotContentSource {
                volume_handle: Some("vol".into()),
                snapshot_handle: None,
            },
            source_volume_mode: None,
        },
        status: None,
    }
}

fn dyn_content(policy: DeletionPolicy) -> VolumeSnapshotContent {
    content(&format!("snapcontent-{UID}"), UID, policy)
}

fn imported(uid: &str) -> VolumeSnapshotContent {
    let mut c = content("imported", uid, DeletionPolicy::Delete);
    c.spec.source = VolumeSnapshotContentSource {
        volume_handle: None,
        snapshot_handle: Some("snap-1".into()),
    };
    c
}

fn with_status(
    mut c: VolumeSnapshotContent,
    ready: bool,
    created: Option<i64>,
    size: Option<i64>,
) -> VolumeSnapshotContent {
    c.status = Some(VolumeSnapshotContentStatus {
        snapshot_handle: Some("snap-1".into()),
        creation_time: created,
        restore_size: size,
        ready_to_use: Some(ready),
        ..Default::default()
    });
    c
}

fn deleting(mut vs: VolumeSnapshot) -> VolumeSnapshot {
    vs.metadata.deletion_timestamp = Some(t(100));
    vs
}

fn annotated(mut c: VolumeSnapshotContent, key: &str) -> VolumeSnapshotContent {
    c.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.into(), YES.into());
    c
}

fn facts<'a>(
    vs: &'a VolumeSnapshot,
    content: Option<&'a VolumeSnapshotContent>,
) -> SnapshotFacts<'a> {
    SnapshotFacts {
        vs,
        content,
        restoring: false,
        group_exists: false,
        group_name: None,
        now: t(1),
    }
}

const BOTH: &[&str] = &[FIN_SNAPSHOT_AS_SOURCE, FIN_SNAPSHOT_BOUND];

#[test]
fn content_names_follow_the_snapshot_kind_and_phase() {
    assert_eq!(
        content_name(&dynamic(&[])).as_deref(),
        Some("snapcontent-uid-1")
    );
    assert_eq!(
        content_name(&pre_provisioned(&[])).as_deref(),
        Some("imported")
    );
    let ready = bound(dynamic(&[]), "other", true);
    assert_eq!(content_name(&ready).as_deref(), Some("other"));
    assert_eq!(
        content_name(&deleting(dynamic(&[]))).as_deref(),
        Some("snapcontent-uid-1")
    );
    assert_eq!(
        content_name(&deleting(bound(pre_provisioned(&[]), "imported", false))).as_deref(),
        Some("imported")
    );
}

#[rstest]
// 2-1: a new dynamic snapshot gets its as-source finalizer, then its content is created.
#[case::new_snapshot_gets_the_source_finalizer(dynamic(&[]), None, SnapshotStep::AddFinalizers { as_source: true, bound: false })]
#[case::then_the_content_is_created(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), None, SnapshotStep::CreateContent)]
// The bound finalizer once bound to a content whose policy is Delete, never for Retain.
#[case::bound_delete_gets_bound_finalizer(bound(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), "snapcontent-uid-1", false), Some(dyn_content(DeletionPolicy::Delete)), SnapshotStep::AddFinalizers { as_source: false, bound: true })]
#[case::bound_retain_gets_none(bound(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), "snapcontent-uid-1", true), Some(dyn_content(DeletionPolicy::Retain)), SnapshotStep::Done)]
// A ready snapshot whose content is gone, or points elsewhere.
#[case::ready_content_missing(bound(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), "snapcontent-uid-1", true), None, SnapshotStep::Fail(Failure { reason: REASON_CONTENT_MISSING, message: "VolumeSnapshotContent is missing".into(), not_ready: true, retry: false }))]
#[case::ready_misbound(bound(dynamic(BOTH), "snapcontent-uid-1", true), Some(content("snapcontent-uid-1", "uid-2", DeletionPolicy::Delete)), SnapshotStep::Fail(Failure { reason: REASON_MISBOUND, message: "VolumeSnapshotContent is not bound to the VolumeSnapshot correctly".into(), not_ready: true, retry: false }))]
// A dynamic content with another UID, or a pre-provisioned one under the dynamic name.
#[case::dynamic_misbound(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), Some(content("snapcontent-uid-1", "uid-2", DeletionPolicy::Delete)), SnapshotStep::Fail(Failure::new(REASON_CONTENT_MISBOUND, "VolumeSnapshotContent [snapcontent-uid-1] is bound to a different snapshot")))]
#[case::dynamic_mismatch(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), Some({ let mut c = imported(UID); c.metadata.name = Some("snapcontent-uid-1".into()); c }), SnapshotStep::Fail(Failure::new(REASON_CONTENT_MISMATCH, "VolumeSnapshotContent snapcontent-uid-1 is pre-provisioned while expecting a dynamically provisioned one")))]
// Pre-provisioned: missing, dynamic, bound elsewhere, unbound (bind), bound (status).
#[case::pre_missing(pre_provisioned(&[FIN_SNAPSHOT_AS_SOURCE]), None, SnapshotStep::Fail(Failure::new(REASON_CONTENT_MISSING, "VolumeSnapshotContent is missing")))]
#[case::pre_dynamic(pre_provisioned(&[FIN_SNAPSHOT_AS_SOURCE]), Some(content("imported", "", DeletionPolicy::Delete)), SnapshotStep::Fail(Failure::new(REASON_CONTENT_MISMATCH, "VolumeSnapshotContent is dynamically provisioned while expecting a pre-provisioned one")))]
#[case::pre_misbound(pre_provisioned(&[FIN_SNAPSHOT_AS_SOURCE]), Some(imported("uid-9")), SnapshotStep::Fail(Failure::new(REASON_CONTENT_MISBOUND, "VolumeSnapshotContent [imported] is bound to a different snapshot")))]
#[case::pre_binds(pre_provisioned(&[FIN_SNAPSHOT_AS_SOURCE]), Some(imported("")), SnapshotStep::BindContent { content: "imported".into(), uid: UID.into(), class: Some("class".into()) })]
#[case::no_source(VolumeSnapshot { spec: VolumeSnapshotSpec::default(), ..dynamic(&[]) }, None, SnapshotStep::Fail(Failure::new(REASON_VALIDATION, "Exactly one of PersistentVolumeClaimName and VolumeSnapshotContentName should be specified")))]
#[case::handle_on_dynamic(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), Some({ let mut c = dyn_content(DeletionPolicy::Delete); c.spec.source.snapshot_handle = Some("x".into()); c.spec.source.volume_handle = Some("v".into()); c }), SnapshotStep::Fail(Failure::new(REASON_HANDLE_SET, "Snapshot handle should not be set in content ns/snap for dynamic provisioning")))]
fn live_steps(
    #[case] vs: VolumeSnapshot,
    #[case] content: Option<VolumeSnapshotContent>,
    #[case] want: SnapshotStep,
) {
    assert_eq!(live_step(&facts(&vs, content.as_ref())), want);
}

#[test]
fn a_bound_pre_provisioned_snapshot_without_a_class_takes_the_content_status() {
    // Neither side names a class: binding would change nothing, so the status follows the
    // content's (its error too), as upstream's does after its bind.
    let mut vs = pre_provisioned(&[FIN_SNAPSHOT_AS_SOURCE]);
    vs.spec.volume_snapshot_class_name = None;
    let mut c = imported(UID);
    c.spec.volume_snapshot_class_name = None;
    c.status = Some(VolumeSnapshotContentStatus {
        error: Some(VolumeSnapshotError {
            message: Some("can not find snapshot".into()),
            time: None,
        }),
        ..Default::default()
    });
    let SnapshotStep::UpdateStatus(u) = live_step(&facts(&vs, Some(&c))) else {
        panic!(
            "a status update, not {:?}",
            live_step(&facts(&vs, Some(&c)))
        );
    };
    assert_eq!(
        u.status.bound_volume_snapshot_content_name.as_deref(),
        Some("imported")
    );
    assert!(
        u.status
            .error
            .is_some_and(|e| e.message.as_deref() == Some("can not find snapshot"))
    );
}

#[test]
fn a_bound_snapshot_takes_the_content_status_once() {
    let vs = bound(dynamic(BOTH), "snapcontent-uid-1", false);
    let c = with_status(
        dyn_content(DeletionPolicy::Delete),
        true,
        Some(1_700_000_000_123_000_000),
        Some(1 << 30),
    );
    let SnapshotStep::UpdateStatus(u) = live_step(&facts(&vs, Some(&c))) else {
        panic!("a status update");
    };
    assert!(u.created && u.ready);
    assert_eq!(
        u.status.restore_size.as_ref().map(|q| q.0.as_str()),
        Some("1Gi")
    );
    assert_eq!(
        u.status.creation_time,
        Some(time_from_nanos(1_700_000_000_123_000_000))
    );
    // Written, the next pass has nothing to do.
    let done = VolumeSnapshot {
        status: Some(u.status),
        ..vs
    };
    assert_eq!(live_step(&facts(&done, Some(&c))), SnapshotStep::Done);
}

#[test]
fn status_rules_are_upstreams() {
    let vs = bound(dynamic(BOTH), "snapcontent-uid-1", false);
    // Content without a status: bound, not ready.
    let c = dyn_content(DeletionPolicy::Delete);
    assert_eq!(
        status_update(&dynamic(&[]), &c).unwrap().status,
        bound(dynamic(&[]), "snapcontent-uid-1", false)
            .status
            .unwrap()
    );
    assert_eq!(status_update(&vs, &c), None);
    // A zero size is replaced by a real one; a real one is never changed.
    let mut zero = vs.clone();
    zero.status.as_mut().unwrap().restore_size = Some(quantity(0));
    let sized = with_status(c.clone(), false, None, Some(5));
    assert_eq!(
        status_update(&zero, &sized).unwrap().status.restore_size,
        Some(quantity(5))
    );
    let mut set = vs.clone();
    set.status.as_mut().unwrap().restore_size = Some(quantity(7));
    assert_eq!(status_update(&set, &sized), None, "a size once set is kept");
    // The error follows the content's; readiness clears it.
    let mut failing = with_status(c.clone(), false, None, None);
    failing.status.as_mut().unwrap().error = Some(VolumeSnapshotError {
        time: Some(t(5)),
        message: Some("boom".into()),
    });
    let u = status_update(&vs, &failing).unwrap();
    assert_eq!(u.status.error.unwrap().message.as_deref(), Some("boom"));
    assert!(!u.ready && !u.created);
}

#[test]
fn error_status_is_written_once_per_message() {
    let vs = dynamic(&[]);
    let st = error_status(&vs, "bad", true, t(3)).unwrap();
    assert_eq!(st.ready_to_use, Some(false));
    let again = VolumeSnapshot {
        status: Some(st),
        ..vs
    };
    assert_eq!(error_status(&again, "bad", true, t(4)), None);
    assert!(error_status(&again, "worse", false, t(4)).is_some());
}

#[rstest]
// 3-x: deletion marks the content, deletes it (Delete), then drops the finalizers; the bound
// finalizer stays while a Delete content goes.
#[case::marks_first(deleting(bound(dynamic(BOTH), "snapcontent-uid-1", true)), Some(dyn_content(DeletionPolicy::Delete)), false, SnapshotStep::MarkContentBeingDeleted { content: "snapcontent-uid-1".into() })]
#[case::then_deletes(deleting(bound(dynamic(BOTH), "snapcontent-uid-1", true)), Some(annotated(dyn_content(DeletionPolicy::Delete), ANN_BEING_DELETED)), false, SnapshotStep::DeleteContent { content: "snapcontent-uid-1".into() })]
#[case::keeps_bound_while_it_goes(deleting(bound(dynamic(BOTH), "snapcontent-uid-1", true)), Some({ let mut c = annotated(dyn_content(DeletionPolicy::Delete), ANN_BEING_DELETED); c.metadata.deletion_timestamp = Some(t(1)); c }), false, SnapshotStep::RemoveFinalizers { bound: false, in_group: false })]
#[case::retain_releases_all(deleting(bound(dynamic(&[FIN_SNAPSHOT_AS_SOURCE]), "snapcontent-uid-1", true)), Some(annotated(dyn_content(DeletionPolicy::Retain), ANN_BEING_DELETED)), false, SnapshotStep::RemoveFinalizers { bound: true, in_group: false })]
#[case::content_gone(deleting(bound(dynamic(BOTH), "snapcontent-uid-1", true)), None, false, SnapshotStep::RemoveFinalizers { bound: true, in_group: false })]
#[case::restore_pending(deleting(bound(dynamic(BOTH), "snapcontent-uid-1", true)), Some(dyn_content(DeletionPolicy::Delete)), true, SnapshotStep::DeletePending { message: "Snapshot is being used to restore a PVC".into() })]
// Without a content the restore guard does not apply (upstream).
#[case::restore_without_content(deleting(dynamic(BOTH)), None, true, SnapshotStep::RemoveFinalizers { bound: true, in_group: false })]
#[case::another_snapshots_content_untouched(deleting(bound(dynamic(BOTH), "snapcontent-uid-1", true)), Some(content("snapcontent-uid-1", "uid-2", DeletionPolicy::Delete)), false, SnapshotStep::RemoveFinalizers { bound: true, in_group: false })]
#[case::no_finalizers_nothing(deleting(dynamic(&[])), None, false, SnapshotStep::Done)]
fn deletion_steps(
    #[case] vs: VolumeSnapshot,
    #[case] content: Option<VolumeSnapshotContent>,
    #[case] restoring: bool,
    #[case] want: SnapshotStep,
) {
    let f = SnapshotFacts {
        restoring,
        ..facts(&vs, content.as_ref())
    };
    assert_eq!(deletion_step(&f), want);
}

#[test]
fn content_steps() {
    let vs = bound(dynamic(BOTH), "snapcontent-uid-1", false);
    let c = dyn_content(DeletionPolicy::Delete);
    assert_eq!(
        content_step(&c, Some(&vs)),
        (ContentStep::AddFinalizer, false)
    );
    let mut held = c.clone();
    held.metadata.finalizers = Some(vec![FIN_CONTENT_BOUND.into()]);
    assert_eq!(content_step(&held, Some(&vs)), (ContentStep::Done, false));
    // The content is ahead of its snapshot: sync the snapshot.
    let ready = with_status(held.clone(), true, Some(1), Some(1));
    assert_eq!(content_step(&ready, Some(&vs)), (ContentStep::Done, true));
    // The content's error reaches a snapshot that is not ready.
    let mut failing = with_status(held.clone(), false, None, None);
    failing.status.as_mut().unwrap().error = Some(VolumeSnapshotError {
        time: Some(t(2)),
        message: Some("boom".into()),
    });
    assert_eq!(content_step(&failing, Some(&vs)), (ContentStep::Done, true));
    // Its snapshot is being deleted: mark it, once.
    assert_eq!(
        content_step(&held, Some(&deleting(vs.clone()))),
        (ContentStep::MarkBeingDeleted, false)
    );
    assert_eq!(
        content_step(
            &annotated(held.clone(), ANN_BEING_DELETED),
            Some(&deleting(vs.clone()))
        ),
        (ContentStep::Done, false)
    );
    // Its snapshot is gone, or was re-created with another UID: never deleted.
    let mut other = deleting(vs.clone());
    other.metadata.uid = Some("uid-2".into());
    assert_eq!(
        content_step(&held, Some(&other)),
        (ContentStep::Done, false)
    );
    assert_eq!(content_step(&held, None), (ContentStep::Done, false));
    // Pre-bound, waiting for its snapshot; and invalid.
    assert_eq!(
        content_step(&imported(""), None),
        (ContentStep::Done, false)
    );
    let mut both = c.clone();
    both.spec.source.snapshot_handle = Some("x".into());
    assert_eq!(content_step(&both, None), (ContentStep::Invalid, false));
}

#[test]
fn claims_in_use_and_restores() {
    let unready = dynamic(&[]);
    let ready = bound(dynamic(&[]), "c", true);
    assert!(claim_in_use("claim", [&unready], None));
    assert!(
        !claim_in_use("claim", [&unready], Some("snap")),
        "skipping itself"
    );
    assert!(!claim_in_use("claim", [&ready], None));
    assert!(!claim_in_use("other", [&unready], None));
    let pvc = |phase: &str, kind: &str| PersistentVolumeClaim {
        spec: Some(PersistentVolumeClaimSpec {
            data_source: Some(TypedLocalObjectReference {
                api_group: Some(GROUP.into()),
                kind: kind.into(),
                name: "snap".into(),
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(restores_from(&pvc("Pending", "VolumeSnapshot"), "snap"));
    assert!(!restores_from(&pvc("Bound", "VolumeSnapshot"), "snap"));
    assert!(!restores_from(
        &pvc("Pending", "PersistentVolumeClaim"),
        "snap"
    ));
}

#[test]
fn default_class_needs_exactly_one_of_the_driver() {
    let class = |name: &str, driver: &str, default: Option<&str>| VolumeSnapshotClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: default.map(|v| [(ANN_DEFAULT_CLASS.to_string(), v.to_string())].into()),
            ..Default::default()
        },
        driver: driver.into(),
        ..Default::default()
    };
    let a = class("a", "d", Some("true"));
    let b = class("b", "d", Some("True"));
    let c = class("c", "other", Some("true"));
    assert_eq!(default_class([&a, &b, &c], "d"), Ok("a".into()));
    assert_eq!(
        default_class([&b, &c], "d"),
        Err("cannot find default snapshot class".into())
    );
    let a2 = class("a2", "d", Some("true"));
    assert_eq!(
        default_class([&a, &a2], "d"),
        Err("2 default snapshot classes were found".into())
    );
}

#[test]
fn new_content_carries_the_reference_class_and_frozen_secret() {
    let vs = dynamic(&[]);
    let class = VolumeSnapshotClass {
        metadata: ObjectMeta {
            name: Some("class".into()),
            ..Default::default()
        },
        driver: "d".into(),
        deletion_policy: DeletionPolicy::Retain,
        parameters: None,
    };
    let c = new_content(&ContentInput {
        vs: &vs,
        class: &class,
        volume_handle: "vol",
        volume_mode: Some("Block".into()),
        secret: Some(SecretRef {
            name: "s".into(),
            namespace: "ns".into(),
        }),
        managed_by: None,
    });
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": "snapcontent-uid-1", "annotations": {
                "snapshot.storage.kubernetes.io/deletion-secret-name": "s",
                "snapshot.storage.kubernetes.io/deletion-secret-namespace": "ns"}},
            "spec": {
                "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                    "name": "snap", "namespace": "ns", "uid": "uid-1"},
                "deletionPolicy": "Retain", "driver": "d", "volumeSnapshotClassName": "class",
                "source": {"volumeHandle": "vol"}, "sourceVolumeMode": "Block"}
        })
    );
}
