//! Clone sources and the cloning-protection rule, with upstream's messages.

use super::*;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus,
    TypedLocalObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use rstest::rstest;

const DRIVER: &str = "d.csi.io";

fn pvc(name: &str, size: &str, phase: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: Some("sc".into()),
            volume_name: Some(format!("pv-{name}")),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(size.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

fn clone_of(source: &str, size: &str) -> PersistentVolumeClaim {
    let mut c = pvc("new", size, "Pending");
    let spec = c.spec.as_mut().unwrap();
    spec.volume_name = None;
    spec.data_source = Some(TypedLocalObjectReference {
        api_group: None,
        kind: PVC_KIND.into(),
        name: source.into(),
    });
    c
}

fn pv_of(source: &PersistentVolumeClaim, driver: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: source.spec.as_ref().unwrap().volume_name.clone(),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: "vol-src".into(),
                ..Default::default()
            }),
            claim_ref: Some(ObjectReference {
                name: source.metadata.name.clone(),
                namespace: source.metadata.namespace.clone(),
                uid: source.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        }),
    }
}

#[test]
fn a_valid_clone_source_gives_its_volume_id() {
    let src = pvc("src", "1Gi", "Bound");
    let pv = pv_of(&src, DRIVER);
    let got = clone_source(&clone_of("src", "2Gi"), Ok(&src), Some(&pv), DRIVER);
    assert_eq!(got, Ok(RecordedSource::Volume("vol-src".into())));
}

#[rstest]
#[case::unbound(
    "Pending",
    None,
    "the PVC DataSource src must have a status of Bound.  Got {Pending}"
)]
#[case::too_small(
    "Bound",
    Some("500Mi"),
    "error, new PVC request must be greater than or equal in size to the specified PVC data source, requested 524288000 but source is 1073741824"
)]
fn source_claim_checks(#[case] phase: &str, #[case] size: Option<&str>, #[case] want: &str) {
    let src = pvc("src", "1Gi", phase);
    let pv = pv_of(&src, DRIVER);
    let claim = clone_of("src", size.unwrap_or("1Gi"));
    assert_eq!(
        clone_source(&claim, Ok(&src), Some(&pv), DRIVER),
        Err(want.to_string())
    );
}

#[test]
fn a_deleting_or_classless_or_unbound_source_is_refused() {
    let claim = clone_of("src", "1Gi");
    let mut deleting = pvc("src", "1Gi", "Bound");
    deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
    let pv = pv_of(&deleting, DRIVER);
    assert_eq!(
        clone_source(&claim, Ok(&deleting), Some(&pv), DRIVER).unwrap_err(),
        "the PVC DataSource src is currently being deleted"
    );
    let mut classless = pvc("src", "1Gi", "Bound");
    classless.spec.as_mut().unwrap().storage_class_name = None;
    assert_eq!(
        clone_source(&claim, Ok(&classless), Some(&pv), DRIVER).unwrap_err(),
        "the source PVC (src) storageclass cannot be empty"
    );
    let mut no_volume = pvc("src", "1Gi", "Bound");
    no_volume.spec.as_mut().unwrap().volume_name = None;
    assert_eq!(
        clone_source(&claim, Ok(&no_volume), Some(&pv), DRIVER).unwrap_err(),
        "volume name is empty in source PVC src"
    );
    assert_eq!(
        clone_source(&claim, Err("not found".into()), None, DRIVER).unwrap_err(),
        "error getting PVC src (namespace \"ns\") from api server: not found"
    );
}

#[test]
fn every_pv_problem_is_the_generic_invalid_source() {
    let src = pvc("src", "1Gi", "Bound");
    let claim = clone_of("src", "1Gi");
    let invalid = Err("claim in dataSource not bound or invalid".to_string());
    // Missing, another driver's, bound to another claim, not Bound.
    assert_eq!(clone_source(&claim, Ok(&src), None, DRIVER), invalid);
    let other = pv_of(&src, "other.csi.io");
    assert_eq!(
        clone_source(&claim, Ok(&src), Some(&other), DRIVER),
        invalid
    );
    let mut foreign = pv_of(&src, DRIVER);
    foreign
        .spec
        .as_mut()
        .unwrap()
        .claim_ref
        .as_mut()
        .unwrap()
        .uid = Some("x".into());
    assert_eq!(
        clone_source(&claim, Ok(&src), Some(&foreign), DRIVER),
        invalid
    );
    let mut released = pv_of(&src, DRIVER);
    released.status.as_mut().unwrap().phase = Some("Released".into());
    assert_eq!(
        clone_source(&claim, Ok(&src), Some(&released), DRIVER),
        invalid
    );
}

#[test]
fn volume_modes_must_match_with_nil_as_filesystem() {
    let mut src = pvc("src", "1Gi", "Bound");
    src.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    let pv = pv_of(&src, DRIVER);
    assert_eq!(
        clone_source(&clone_of("src", "1Gi"), Ok(&src), Some(&pv), DRIVER).unwrap_err(),
        "the source PVC and destination PVCs must have the same volume mode for cloning.  Source is Block, but new PVC requested Filesystem"
    );
    let mut fs = pvc("src", "1Gi", "Bound");
    fs.spec.as_mut().unwrap().volume_mode = Some("Filesystem".into());
    let pv = pv_of(&fs, DRIVER);
    assert!(clone_source(&clone_of("src", "1Gi"), Ok(&fs), Some(&pv), DRIVER).is_ok());
}

#[test]
fn a_pending_clone_in_the_namespace_keeps_the_protection() {
    let src = pvc("src", "1Gi", "Bound");
    let pending = clone_of("src", "1Gi");
    let mut bound = clone_of("src", "1Gi");
    bound.status.as_mut().unwrap().phase = Some("Bound".into());
    let mut elsewhere = clone_of("src", "1Gi");
    elsewhere.metadata.namespace = Some("other".into());
    assert_eq!(
        clone_in_progress(&src, [&pending, &bound]),
        Some("PVC 'src' is in 'Pending' state, cloning in progress".into())
    );
    assert_eq!(clone_in_progress(&src, [&bound, &elsewhere]), None);
}

#[test]
fn the_data_source_ref_counts_when_data_source_is_absent() {
    use k8s_openapi::api::core::v1::TypedObjectReference;
    let mut c = pvc("new", "1Gi", "Pending");
    c.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
        kind: PVC_KIND.into(),
        name: "src".into(),
        ..Default::default()
    });
    assert_eq!(clone_source_name(&c), Some("src".into()));
}

fn restore_of(snapshot: &str, size: &str, mode: Option<&str>) -> PersistentVolumeClaim {
    let mut c = pvc("new", size, "Pending");
    let spec = c.spec.as_mut().unwrap();
    spec.volume_name = None;
    spec.volume_mode = mode.map(Into::into);
    spec.data_source = Some(TypedLocalObjectReference {
        api_group: Some("snapshot.storage.k8s.io".into()),
        kind: "VolumeSnapshot".into(),
        name: snapshot.into(),
    });
    c
}

fn snapshot_json() -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": "snap", "namespace": "ns", "uid": "uid-snap"},
        "status": {"boundVolumeSnapshotContentName": "content-1", "readyToUse": true,
                   "restoreSize": "1Gi"},
    })
}

fn content_json() -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": "content-1"},
        "spec": {"driver": DRIVER, "sourceVolumeMode": "Filesystem",
                 "volumeSnapshotRef": {"name": "snap", "namespace": "ns", "uid": "uid-snap"}},
        "status": {"snapshotHandle": "snap-handle"},
    })
}

fn restore(
    claim: &PersistentVolumeClaim,
    snapshot: &serde_json::Value,
    content: &serde_json::Value,
) -> Result<RecordedSource, String> {
    snapshot_source(
        claim,
        Ok(snapshot),
        Some(Ok(content)),
        ("fast", DRIVER),
        true,
    )
}

#[test]
fn a_ready_snapshot_gives_its_handle() {
    let claim = restore_of("snap", "1Gi", None);
    assert_eq!(
        restore(&claim, &snapshot_json(), &content_json()),
        Ok(RecordedSource::Snapshot("snap-handle".into()))
    );
}

#[test]
fn snapshot_checks_in_upstream_order_with_upstream_messages() {
    let claim = restore_of("snap", "1Gi", None);
    let e = |r: Result<RecordedSource, String>| r.unwrap_err();
    assert_eq!(
        e(snapshot_source(
            &claim,
            Err("nope".into()),
            None,
            ("fast", DRIVER),
            true
        )),
        "error getting snapshot snap from api server: nope"
    );
    let mut deleting = snapshot_json();
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    assert_eq!(
        e(restore(&claim, &deleting, &content_json())),
        "snapshot snap is being deleted"
    );
    // A restore that put our finalizer on before the deletion goes on.
    deleting["metadata"]["finalizers"] = serde_json::json!([FINALIZER_SNAPSHOT_SOURCE_PROTECTION]);
    assert!(restore(&claim, &deleting, &content_json()).is_ok());
    let mut unbound = snapshot_json();
    unbound["status"]["boundVolumeSnapshotContentName"] = serde_json::Value::Null;
    assert_eq!(
        e(restore(&claim, &unbound, &content_json())),
        "snapshot snap not bound"
    );
    assert_eq!(
        e(snapshot_source(
            &claim,
            Ok(&snapshot_json()),
            Some(Err("boom".into())),
            ("fast", DRIVER),
            true
        )),
        "error getting snapshotcontent content-1 for snapshot snap"
    );
    let mut other_driver = content_json();
    other_driver["spec"]["driver"] = "other".into();
    assert_eq!(
        e(restore(&claim, &snapshot_json(), &other_driver)),
        "snapshotcontent content-1 for snapshot snap is not handled by CSI driver of StorageClass fast"
    );
    let mut other_snapshot = content_json();
    other_snapshot["spec"]["volumeSnapshotRef"]["uid"] = "x".into();
    assert_eq!(
        e(restore(&claim, &snapshot_json(), &other_snapshot)),
        "snapshotcontent content-1 for snapshot snap is bound to a different snapshot"
    );
    let mut not_ready = snapshot_json();
    not_ready["status"]["readyToUse"] = false.into();
    assert_eq!(
        e(restore(&claim, &not_ready, &content_json())),
        "snapshot snap is not Ready"
    );
    let mut no_handle = content_json();
    no_handle["status"] = serde_json::json!({});
    assert_eq!(
        e(restore(&claim, &snapshot_json(), &no_handle)),
        "snapshot handle snap is not available"
    );
    assert_eq!(
        e(restore(
            &restore_of("snap", "500Mi", None),
            &snapshot_json(),
            &content_json()
        )),
        "requested volume size 524288000 is less than the size 1073741824 for the source snapshot snap"
    );
}

#[test]
fn a_restore_into_another_volume_mode_needs_the_contents_permission() {
    let block = restore_of("snap", "1Gi", Some("Block"));
    assert_eq!(
        restore(&block, &snapshot_json(), &content_json()).unwrap_err(),
        "requested volume ns/new modifies the mode of the source volume but does not have permission to do so. snapshot.storage.kubernetes.io/allow-volume-mode-change annotation is not present on snapshotcontent content-1"
    );
    let mut allowed = content_json();
    allowed["metadata"]["annotations"] =
        serde_json::json!({"snapshot.storage.kubernetes.io/allow-volume-mode-change": "true"});
    assert!(restore(&block, &snapshot_json(), &allowed).is_ok());
    allowed["metadata"]["annotations"]["snapshot.storage.kubernetes.io/allow-volume-mode-change"] =
        "false".into();
    assert!(restore(&block, &snapshot_json(), &allowed)
        .unwrap_err()
        .ends_with("snapshot.storage.kubernetes.io/allow-volume-mode-change is set to false on snapshotcontent content-1"));
    // --prevent-volume-mode-conversion=false, or a claim without volumeMode: no check.
    assert!(
        snapshot_source(
            &block,
            Ok(&snapshot_json()),
            Some(Ok(&content_json())),
            ("fast", DRIVER),
            false
        )
        .is_ok()
    );
    assert!(
        restore(
            &restore_of("snap", "1Gi", None),
            &snapshot_json(),
            &content_json()
        )
        .is_ok()
    );
}

#[test]
fn the_sweep_frees_a_snapshot_no_pending_claim_restores_from() {
    let mut snapshot = snapshot_json();
    // Without our finalizer there is nothing to sweep.
    assert!(!orphaned_snapshot_protection(&snapshot, []));
    snapshot["metadata"]["finalizers"] =
        serde_json::json!(["other", FINALIZER_SNAPSHOT_SOURCE_PROTECTION]);
    assert!(orphaned_snapshot_protection(&snapshot, []));
    // A Pending restore, or one with no phase yet, keeps it; a Bound one does not.
    let pending = restore_of("snap", "1Gi", None);
    assert!(!orphaned_snapshot_protection(&snapshot, [&pending]));
    let mut fresh = restore_of("snap", "1Gi", None);
    fresh.status = None;
    assert!(!orphaned_snapshot_protection(&snapshot, [&fresh]));
    let mut bound = restore_of("snap", "1Gi", None);
    bound.status.as_mut().unwrap().phase = Some("Bound".into());
    assert!(orphaned_snapshot_protection(&snapshot, [&bound]));
    // Another namespace's claim of the same name does not count; a Ref naming the namespace does.
    let mut elsewhere = restore_of("snap", "1Gi", None);
    elsewhere.metadata.namespace = Some("other".into());
    assert!(orphaned_snapshot_protection(&snapshot, [&elsewhere]));
    let mut by_ref = restore_of("snap", "1Gi", None);
    by_ref.metadata.namespace = Some("other".into());
    let spec = by_ref.spec.as_mut().unwrap();
    spec.data_source = None;
    spec.data_source_ref = Some(k8s_openapi::api::core::v1::TypedObjectReference {
        api_group: Some("snapshot.storage.k8s.io".into()),
        kind: "VolumeSnapshot".into(),
        name: "snap".into(),
        namespace: Some("ns".into()),
    });
    assert!(!orphaned_snapshot_protection(&snapshot, [&by_ref]));
}
