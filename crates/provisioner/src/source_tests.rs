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
