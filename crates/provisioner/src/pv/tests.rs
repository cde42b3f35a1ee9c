//! Tables for the PV builder, the volume worker's plan and deletion secrets.

use super::*;
use crate::request::{PvTemplate, RecordedRequest};
use k8s_openapi::api::core::v1::PersistentVolumeStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rstest::rstest;

fn claim() -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("claim".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            resource_version: Some("42".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn intent(template: PvTemplate) -> Intent {
    Intent {
        driver: "d".into(),
        volume_name: "pvc-uid-1".into(),
        claim_uid: "uid-1".into(),
        claim_namespace: "ns".into(),
        claim_name: "claim".into(),
        request: RecordedRequest::default(),
        provisioner_secret: None,
        pv: template,
        may_reschedule: false,
    }
}

#[rstest]
#[case(0, 100, Ok(100))]
#[case(200, 100, Ok(200))]
#[case(
    50,
    100,
    Err("created volume capacity 50 less than requested capacity 100")
)]
fn capacity(#[case] got: i64, #[case] req: i64, #[case] want: Result<i64, &str>) {
    assert_eq!(pv_capacity(got, req), want.map_err(String::from));
}

#[test]
fn the_pv_is_built_field_for_field() {
    let t = PvTemplate {
        provisioned_by: "d".into(),
        storage_class_name: "sc".into(),
        access_modes: vec!["ReadWriteOnce".into()],
        volume_mode: Some("Filesystem".into()),
        mount_options: vec!["noatime".into()],
        reclaim_policy: Some("Delete".into()),
        fs_type: Some("ext4".into()),
        topology: true,
        node_stage_secret: Some(SecretRef {
            name: "s".into(),
            namespace: "n".into(),
        }),
        ..Default::default()
    };
    let volume = v1::Volume {
        volume_id: "vol-1".into(),
        capacity_bytes: 1 << 30,
        volume_context: [
            ("k".to_string(), "v".to_string()),
            (
                VOLUME_ATTR_PROVISIONER_IDENTITY.to_string(),
                "driver-wins".to_string(),
            ),
        ]
        .into(),
        accessible_topology: vec![v1::Topology {
            segments: [("zone".to_string(), "a".to_string())].into(),
        }],
        ..Default::default()
    };
    let pv = build_pv(&claim(), &intent(t), &volume, 1 << 30, "d", "id-1");
    let ann = pv.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[ANN_DYNAMICALLY_PROVISIONED], "d");
    assert_eq!(ann[ANN_DELETION_SECRET_NAME], "");
    assert_eq!(ann[ANN_DELETION_SECRET_NAMESPACE], "");
    assert!(!ann.contains_key(ANN_MODIFY_SECRET_NAME));
    assert_eq!(pv.metadata.finalizers, Some(vec![FINALIZER_PV.to_string()]));
    assert_eq!(pv.metadata.name.as_deref(), Some("pvc-uid-1"));
    let spec = pv.spec.unwrap();
    assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
    assert_eq!(spec.storage_class_name.as_deref(), Some("sc"));
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(spec.mount_options, Some(vec!["noatime".to_string()]));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    let cr = spec.claim_ref.unwrap();
    assert_eq!(cr.uid.as_deref(), Some("uid-1"));
    assert_eq!(cr.kind.as_deref(), Some("PersistentVolumeClaim"));
    assert_eq!(cr.api_version.as_deref(), Some("v1"));
    assert_eq!(cr.resource_version.as_deref(), Some("42"));
    let csi = spec.csi.unwrap();
    assert_eq!(csi.driver, "d");
    assert_eq!(csi.volume_handle, "vol-1");
    assert_eq!(csi.fs_type.as_deref(), Some("ext4"));
    assert_eq!(csi.read_only, None);
    let attrs = csi.volume_attributes.unwrap();
    assert_eq!(attrs[VOLUME_ATTR_PROVISIONER_IDENTITY], "driver-wins");
    assert_eq!(attrs["k"], "v");
    assert_eq!(
        csi.node_stage_secret_ref.unwrap().name.as_deref(),
        Some("s")
    );
    assert!(csi.controller_publish_secret_ref.is_none());
    let terms = spec
        .node_affinity
        .unwrap()
        .required
        .unwrap()
        .node_selector_terms;
    assert_eq!(terms.len(), 1);
}

#[test]
fn secrets_are_annotated_and_no_affinity_without_topology() {
    let t = PvTemplate {
        deletion_secret: Some(SecretRef {
            name: "p".into(),
            namespace: "pn".into(),
        }),
        modify_secret: Some(SecretRef {
            name: "m".into(),
            namespace: "mn".into(),
        }),
        ..Default::default()
    };
    let volume = v1::Volume {
        volume_id: "v".into(),
        accessible_topology: vec![v1::Topology {
            segments: [("zone".to_string(), "a".to_string())].into(),
        }],
        ..Default::default()
    };
    let pv = build_pv(&claim(), &intent(t), &volume, 1000, "d", "id");
    let ann = pv.metadata.annotations.unwrap();
    assert_eq!(ann[ANN_DELETION_SECRET_NAME], "p");
    assert_eq!(ann[ANN_DELETION_SECRET_NAMESPACE], "pn");
    assert_eq!(ann[ANN_MODIFY_SECRET_NAME], "m");
    assert_eq!(ann[ANN_MODIFY_SECRET_NAMESPACE], "mn");
    assert!(pv.spec.unwrap().node_affinity.is_none());
}

fn pv(
    policy: &str,
    phase: &str,
    finalizer: bool,
    deleting: bool,
    annotations: &[(&str, &str)],
) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pv".into()),
            finalizers: finalizer.then(|| vec![FINALIZER_PV.to_string()]),
            deletion_timestamp: deleting.then(|| Time(Default::default())),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            persistent_volume_reclaim_policy: Some(policy.into()),
            claim_ref: Some(ObjectReference {
                name: Some("claim".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            }),
            storage_class_name: Some("sc".into()),
            csi: Some(CSIPersistentVolumeSource {
                driver: "d".into(),
                volume_handle: "h".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

#[rstest]
#[case("Delete", "Bound", false, false, VolumeAction::AddFinalizer)]
#[case("Delete", "Bound", true, false, VolumeAction::Nothing)]
#[case("Retain", "Bound", true, false, VolumeAction::RemoveFinalizer)]
#[case("Recycle", "Released", true, false, VolumeAction::RemoveFinalizer)]
#[case("Retain", "Released", false, false, VolumeAction::Nothing)]
#[case("Delete", "Released", true, false, VolumeAction::Delete)]
#[case("Delete", "Released", false, false, VolumeAction::Delete)]
#[case("Delete", "Released", true, true, VolumeAction::Delete)]
#[case("Delete", "Released", false, true, VolumeAction::Nothing)]
#[case("Delete", "Failed", true, false, VolumeAction::Nothing)]
#[case("Delete", "Available", true, false, VolumeAction::Nothing)]
fn volume_plan(
    #[case] policy: &str,
    #[case] phase: &str,
    #[case] finalizer: bool,
    #[case] deleting: bool,
    #[case] want: VolumeAction,
) {
    assert_eq!(
        plan_volume(&pv(policy, phase, finalizer, deleting, &[])),
        want
    );
}

#[test]
fn ownership() {
    let mut p = pv("Delete", "Bound", false, false, &[]);
    assert!(is_ours(&p, "d"), "static CSI PV of our driver");
    assert!(!is_ours(&p, "other"));
    p.metadata.annotations =
        Some([(ANN_DYNAMICALLY_PROVISIONED.to_string(), "x".to_string())].into());
    assert!(
        !is_ours(&p, "d"),
        "provisioned-by wins over spec.csi.driver"
    );
    assert!(is_ours(&p, "x"));
}

#[test]
fn deletion_secret_sources() {
    let sref = |n: &str, ns: &str| {
        DeletionSecrets::Secret(SecretRef {
            name: n.into(),
            namespace: ns.into(),
        })
    };
    let annotated = pv(
        "Delete",
        "Released",
        true,
        false,
        &[
            (ANN_DELETION_SECRET_NAME, "s"),
            (ANN_DELETION_SECRET_NAMESPACE, "n"),
        ],
    );
    assert_eq!(deletion_secrets(&annotated, None), sref("s", "n"));
    let empty = pv(
        "Delete",
        "Released",
        true,
        false,
        &[
            (ANN_DELETION_SECRET_NAME, ""),
            (ANN_DELETION_SECRET_NAMESPACE, ""),
        ],
    );
    let params: BTreeMap<String, String> = [
        (
            PARAM_PROVISIONER_SECRET_NAME.to_string(),
            "${pvc.name}".to_string(),
        ),
        (
            PARAM_PROVISIONER_SECRET_NAMESPACE.to_string(),
            "${pvc.namespace}".to_string(),
        ),
    ]
    .into();
    assert_eq!(
        deletion_secrets(&empty, Some(&params)),
        DeletionSecrets::None
    );
    // Old PVs without the annotations: the class's template against claimRef.
    let old = pv("Delete", "Released", true, false, &[]);
    assert_eq!(deletion_secrets(&old, Some(&params)), sref("claim", "ns"));
    assert_eq!(deletion_secrets(&old, None), DeletionSecrets::None);
    let with_annotation_token: BTreeMap<String, String> = [
        (
            PARAM_PROVISIONER_SECRET_NAME.to_string(),
            "${pvc.annotations['a']}".to_string(),
        ),
        (
            PARAM_PROVISIONER_SECRET_NAMESPACE.to_string(),
            "ns".to_string(),
        ),
    ]
    .into();
    assert_eq!(
        deletion_secrets(&old, Some(&with_annotation_token)),
        DeletionSecrets::Error(
            "failed to get secretreference for volume pv: error resolving value \"${pvc.annotations['a']}\": invalid tokens: [\"pvc.annotations['a']\"]".into()
        )
    );
}

#[test]
fn the_provisioner_identity_is_upstreams_format() {
    assert_eq!(
        provisioner_identity(1_700_000_000_123, 42, "hostpath.csi.k8s.io", None),
        "1700000000123-42-hostpath.csi.k8s.io"
    );
    assert_eq!(
        provisioner_identity(1_700_000_000_123, 9999, "d", Some("node-1")),
        "1700000000123-9999-d-node-1"
    );
}
