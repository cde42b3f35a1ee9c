//! The CSI half's decisions, after upstream's tables (`pkg/sidecar-controller/*_test.go`).

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rstest::rstest;

fn t(s: i64) -> Time {
    Time(jiff::Timestamp::from_second(s).unwrap())
}

fn dynamic() -> VolumeSnapshotContent {
    VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some("snapcontent-1".into()),
            resource_version: Some("1".into()),
            finalizers: Some(vec![FIN_CONTENT_BOUND.into()]),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            volume_snapshot_ref: k8s_openapi::api::core::v1::ObjectReference {
                name: Some("snap".into()),
                namespace: Some("ns".into()),
                uid: Some("1".into()),
                ..Default::default()
            },
            driver: "d".into(),
            volume_snapshot_class_name: Some("class".into()),
            source: VolumeSnapshotContentSource {
                volume_handle: Some("vol".into()),
                snapshot_handle: None,
            },
            ..Default::default()
        },
        status: None,
    }
}

fn imported(uid: Option<&str>) -> VolumeSnapshotContent {
    let mut c = dynamic();
    c.spec.source = VolumeSnapshotContentSource {
        volume_handle: None,
        snapshot_handle: Some("snap-1".into()),
    };
    c.spec.volume_snapshot_ref.uid = uid.map(str::to_string);
    c
}

fn status(
    mut c: VolumeSnapshotContent,
    handle: Option<&str>,
    ready: bool,
) -> VolumeSnapshotContent {
    c.status = Some(VolumeSnapshotContentStatus {
        snapshot_handle: handle.map(str::to_string),
        ready_to_use: Some(ready),
        creation_time: Some(5),
        ..Default::default()
    });
    c
}

fn ann(mut c: VolumeSnapshotContent, key: &str) -> VolumeSnapshotContent {
    c.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.into(), YES.into());
    c
}

fn deleting(mut c: VolumeSnapshotContent) -> VolumeSnapshotContent {
    c.metadata.deletion_timestamp = Some(t(9));
    c
}

#[rstest]
#[case::new_dynamic_is_created(dynamic(), SidecarStep::Create { first: true })]
#[case::not_ready_is_created_again(status(dynamic(), Some("s"), false), SidecarStep::Create { first: false })]
#[case::ready_is_left_alone(status(dynamic(), Some("s"), true), SidecarStep::Done)]
#[case::ready_forgets_the_guard(
    ann(status(dynamic(), Some("s"), true), ANN_BEING_CREATED),
    SidecarStep::ForgetCreating
)]
#[case::imported_is_listed(imported(Some("1")), SidecarStep::List)]
#[case::member_waits_for_handles(ann(dynamic(), ANN_GROUP_SNAPSHOT_HANDLE), SidecarStep::Wait)]
// Deletion: only with being-deleted and without being-created (a CreateSnapshot may still run).
#[case::deleting_without_mark_keeps_creating(deleting(status(dynamic(), Some("s"), false)), SidecarStep::Create { first: false })]
#[case::deleting_marked_deletes(
    deleting(ann(status(dynamic(), Some("s"), true), ANN_BEING_DELETED)),
    SidecarStep::DeleteSnapshot
)]
#[case::deleting_while_creating_waits(deleting(ann(ann(dynamic(), ANN_BEING_DELETED), ANN_BEING_CREATED)), SidecarStep::Create { first: true })]
#[case::deleted_releases(
    deleting(ann(status(dynamic(), None, false), ANN_BEING_DELETED)),
    SidecarStep::RemoveFinalizer
)]
#[case::retain_only_releases(deleting(ann({ let mut c = status(dynamic(), Some("s"), true); c.spec.deletion_policy = DeletionPolicy::Retain; c }, ANN_BEING_DELETED)), SidecarStep::RemoveFinalizer)]
#[case::unbound_imported_deletes(
    deleting(status(imported(None), Some("snap-1"), true)),
    SidecarStep::DeleteSnapshot
)]
#[case::released_is_done(deleting(ann({ let mut c = status(dynamic(), None, false); c.metadata.finalizers = None; c }, ANN_BEING_DELETED)), SidecarStep::Done)]
fn steps(#[case] c: VolumeSnapshotContent, #[case] want: SidecarStep) {
    assert_eq!(next(&c), want);
}

#[test]
fn status_fields_are_written_once() {
    let found = DriverSnapshot {
        handle: "snap-1".into(),
        ready: false,
        created_ns: 10,
        size: 0,
        group_handle: None,
    };
    let first = status_after(&dynamic(), &found).unwrap();
    assert_eq!(
        first,
        VolumeSnapshotContentStatus {
            snapshot_handle: Some("snap-1".into()),
            ready_to_use: Some(false),
            creation_time: Some(10),
            ..Default::default()
        }
    );
    let mut c = dynamic();
    c.status = Some(first.clone());
    c.status.as_mut().unwrap().error = Some(VolumeSnapshotError {
        time: Some(t(1)),
        message: Some("old".into()),
    });
    // The same answer changes nothing, and a stale error survives while not ready (upstream).
    assert_eq!(status_after(&c, &found), None);
    let later = DriverSnapshot {
        ready: true,
        created_ns: 99,
        size: 4096,
        ..found
    };
    let done = status_after(&c, &later).unwrap();
    assert_eq!(done.ready_to_use, Some(true));
    assert_eq!(done.creation_time, Some(10), "written once");
    assert_eq!(done.restore_size, Some(4096));
    assert_eq!(done.error, None, "readiness clears the error");
}

#[test]
fn errors_and_clearing() {
    let c = status(dynamic(), Some("s"), false);
    let st = error_status(&c, "boom", t(3)).unwrap();
    assert_eq!(st.error.as_ref().unwrap().message.as_deref(), Some("boom"));
    let mut again = c.clone();
    again.status = Some(st);
    assert_eq!(error_status(&again, "boom", t(4)), None);
    let cleared = cleared_status(&again).unwrap();
    assert_eq!(cleared.snapshot_handle, None);
    assert_eq!(cleared.ready_to_use, None);
    assert_eq!(cleared.creation_time, None);
    assert!(cleared.error.is_some(), "the error is kept");
}

#[test]
fn the_update_filter_ignores_our_own_writes() {
    let old = dynamic();
    let bump = |mut c: VolumeSnapshotContent| {
        c.metadata.resource_version = Some("2".into());
        c
    };
    assert!(should_enqueue(&old, &old), "a resync");
    assert!(!should_enqueue(
        &old,
        &bump(status(old.clone(), Some("s"), false))
    ));
    assert!(!should_enqueue(
        &old,
        &bump(ann(old.clone(), ANN_BEING_CREATED))
    ));
    let mut fin = bump(old.clone());
    fin.metadata.finalizers = None;
    assert!(!should_enqueue(&old, &fin));
    assert!(should_enqueue(
        &old,
        &bump(ann(old.clone(), ANN_BEING_DELETED))
    ));
    assert!(should_enqueue(&old, &bump(deleting(old.clone()))));
    assert!(
        should_enqueue(
            &status(old.clone(), Some("s"), false),
            &bump(status(old.clone(), Some("s"), true))
        ),
        "readiness turning true"
    );
}

#[test]
fn no_creation_before_the_common_controllers_protection() {
    let protected = dynamic();
    let mut bare = dynamic();
    bare.metadata.finalizers = None;
    assert_eq!(next(&bare), SidecarStep::AwaitProtection);
    // Nor a re-sent CreateSnapshot: the content could vanish while it runs.
    let polled = status(bare.clone(), None, false);
    assert_eq!(next(&polled), SidecarStep::AwaitProtection);
    assert_eq!(next(&protected), SidecarStep::Create { first: true });
    let mut arrived = protected.clone();
    arrived.metadata.resource_version = Some("2".into());
    assert!(
        should_enqueue(&bare, &arrived),
        "the finalizer's arrival queues the content"
    );
    // A pre-provisioned content needs no creation, protected or not.
    let mut imported = imported(Some("1"));
    imported.metadata.finalizers = None;
    assert_eq!(next(&imported), SidecarStep::List);
}
