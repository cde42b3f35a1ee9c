//! Tables for `prepare`: the CreateVolume request and PV template, as upstream's TestProvision.

use super::*;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimSpec, TypedLocalObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use v1::volume_capability::access_mode::Mode;

const DRIVER: &str = "hostpath.csi.k8s.io";
const UID: &str = "uid-1";

fn claim(modes: &[&str], block: bool) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("claim".into()),
            namespace: Some("ns".into()),
            uid: Some(UID.into()),
            annotations: Some(BTreeMap::from([("team".to_string(), "blue".to_string())])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            storage_class_name: Some("sc".into()),
            volume_mode: block.then(|| "Block".to_string()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity("1Gi".into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn class(params: &[(&str, &str)]) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some("sc".into()),
            ..Default::default()
        },
        provisioner: DRIVER.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        mount_options: Some(vec!["ro".into(), "noatime".into()]),
        reclaim_policy: Some("Delete".into()),
        ..Default::default()
    }
}

fn caps() -> DriverCaps {
    DriverCaps {
        controller_service: true,
        create_delete_volume: true,
        ..Default::default()
    }
}

fn run(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    config: &ProvisionerConfig,
    caps: DriverCaps,
) -> Result<Intent, ProvisionError> {
    let cluster = ClusterTopology::default();
    prepare(&PrepareInput {
        claim,
        class,
        config,
        driver: DRIVER,
        caps,
        selected_node: None,
        cluster: &cluster,
        vac: None,
        source: None,
    })
}

#[test]
fn a_mount_volume_gets_one_capability_per_access_mode() {
    let c = claim(&["ReadWriteOnce", "ReadOnlyMany"], false);
    let sc = class(&[("csi.storage.k8s.io/fstype", "xfs"), ("zone", "a")]);
    let i = run(&c, &sc, &ProvisionerConfig::default(), caps()).unwrap();
    assert_eq!(i.volume_name, "pvc-uid-1");
    assert_eq!(i.request.required_bytes, 1 << 30);
    assert_eq!(
        i.request.parameters,
        BTreeMap::from([("zone".to_string(), "a".to_string())])
    );
    let modes: Vec<i32> = i.request.capabilities.iter().map(|c| c.mode).collect();
    assert_eq!(
        modes,
        [
            Mode::SingleNodeWriter as i32,
            Mode::MultiNodeReaderOnly as i32
        ]
    );
    for cap in &i.request.capabilities {
        assert!(!cap.block);
        assert_eq!(cap.fs_type, "xfs");
        assert_eq!(cap.mount_flags, ["ro", "noatime"]);
    }
    assert_eq!(i.pv.fs_type.as_deref(), Some("xfs"));
    assert_eq!(i.pv.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(i.pv.provisioned_by, DRIVER);
    assert_eq!(i.pv.storage_class_name, "sc");
    assert_eq!(i.pv.deletion_secret, None);
    assert!(!i.pv.read_only);
    // The CSI request carries what was recorded.
    let req = i.request.to_csi(&i.volume_name, BTreeMap::new());
    assert_eq!(req.name, "pvc-uid-1");
    assert_eq!(req.capacity_range.unwrap().required_bytes, 1 << 30);
    assert_eq!(req.volume_capabilities.len(), 2);
    assert!(req.accessibility_requirements.is_none());
}

#[test]
fn a_block_volume_has_no_fs_type_or_mount_flags() {
    let c = claim(&["ReadWriteOnce"], true);
    let sc = class(&[("csi.storage.k8s.io/fstype", "xfs")]);
    let i = run(&c, &sc, &ProvisionerConfig::default(), caps()).unwrap();
    assert_eq!(
        i.request.capabilities,
        [Capability {
            block: true,
            fs_type: String::new(),
            mount_flags: vec![],
            mode: Mode::SingleNodeWriter as i32
        }]
    );
    assert_eq!(i.pv.fs_type, None);
    assert_eq!(i.pv.volume_mode.as_deref(), Some("Block"));
}

#[rstest::rstest]
#[case("ReadWriteOnce", false, Ok(Mode::SingleNodeWriter))]
#[case("ReadWriteOnce", true, Ok(Mode::SingleNodeMultiWriter))]
#[case("ReadWriteOncePod", false, Ok(Mode::SingleNodeWriter))]
#[case("ReadWriteOncePod", true, Ok(Mode::SingleNodeSingleWriter))]
#[case("ReadOnlyMany", true, Ok(Mode::MultiNodeReaderOnly))]
#[case("ReadWriteMany", false, Ok(Mode::MultiNodeMultiWriter))]
#[case("Bogus", false, Err("unsupported AccessMode combination: [Bogus]"))]
fn access_mode_mapping(#[case] mode: &str, #[case] snmw: bool, #[case] want: Result<Mode, &str>) {
    assert_eq!(
        csi_access_mode(mode, snmw),
        want.map(|m| m as i32).map_err(String::from)
    );
}

#[test]
fn default_fs_type_extra_metadata_and_secrets() {
    let c = claim(&["ReadOnlyMany"], false);
    let sc = class(&[
        (
            "csi.storage.k8s.io/provisioner-secret-name",
            "${pvc.annotations['team']}",
        ),
        (
            "csi.storage.k8s.io/provisioner-secret-namespace",
            "${pvc.namespace}",
        ),
        ("csi.storage.k8s.io/controller-modify-secret-name", "mod"),
        (
            "csi.storage.k8s.io/controller-modify-secret-namespace",
            "kube-system",
        ),
        ("csi.storage.k8s.io/secret-name", "default-secret"),
        ("csi.storage.k8s.io/secret-namespace", "kube-system"),
        ("csiNodeStageSecretName", "stage"),
        ("csiNodeStageSecretNamespace", "kube-system"),
    ]);
    let config = ProvisionerConfig {
        default_fs_type: "ext4".into(),
        extra_create_metadata: true,
        controller_publish_readonly: true,
        ..Default::default()
    };
    let i = run(&c, &sc, &config, caps()).unwrap();
    assert_eq!(i.request.capabilities[0].fs_type, "ext4");
    let sref = |n: &str, ns: &str| {
        Some(SecretRef {
            name: n.into(),
            namespace: ns.into(),
        })
    };
    assert_eq!(i.provisioner_secret, sref("blue", "ns"));
    assert_eq!(i.pv.deletion_secret, sref("blue", "ns"));
    assert_eq!(i.pv.modify_secret, sref("mod", "kube-system"));
    assert_eq!(i.pv.node_stage_secret, sref("stage", "kube-system"));
    // The default secret applies to every other kind.
    assert_eq!(
        i.pv.controller_publish_secret,
        sref("default-secret", "kube-system")
    );
    assert_eq!(
        i.pv.node_expand_secret,
        sref("default-secret", "kube-system")
    );
    assert!(
        i.pv.read_only,
        "one ROX mode with --controller-publish-readonly"
    );
    assert_eq!(
        i.request.parameters,
        BTreeMap::from([
            (
                "csi.storage.k8s.io/pv/name".to_string(),
                "pvc-uid-1".to_string()
            ),
            (
                "csi.storage.k8s.io/pvc/name".to_string(),
                "claim".to_string()
            ),
            (
                "csi.storage.k8s.io/pvc/namespace".to_string(),
                "ns".to_string()
            ),
            ("csiNodeStageSecretName".to_string(), "stage".to_string()),
            (
                "csiNodeStageSecretNamespace".to_string(),
                "kube-system".to_string()
            ),
        ])
    );
}

#[test]
fn errors_have_upstream_texts_and_states() {
    let config = ProvisionerConfig::default();
    let check = |c: &PersistentVolumeClaim, sc: &StorageClass, caps: DriverCaps, msg: &str, st| {
        let e = run(c, sc, &config, caps).unwrap_err();
        assert_eq!(e.message, msg);
        assert_eq!(e.state, st);
    };
    let rwo = claim(&["ReadWriteOnce"], false);
    check(
        &rwo,
        &class(&[("csi.storage.k8s.io/bogus", "x")]),
        caps(),
        "failed to strip CSI Parameters of prefixed keys: found unknown parameter key \"csi.storage.k8s.io/bogus\" with reserved namespace csi.storage.k8s.io/",
        ProvisioningState::Finished,
    );
    check(
        &rwo,
        &class(&[("csi.storage.k8s.io/provisioner-secret-name", "x")]),
        caps(),
        "failed to get name and namespace template from params: either name and namespace for Provisioner secrets specified, Both must be specified",
        ProvisioningState::NoChange,
    );
    check(
        &rwo,
        &class(&[]),
        DriverCaps {
            create_delete_volume: false,
            ..caps()
        },
        "CSI driver does not support dynamic provisioning: controller CREATE_DELETE_VOLUME capability is not reported",
        ProvisioningState::Finished,
    );
    let mut with_selector = rwo.clone();
    with_selector.spec.as_mut().unwrap().selector = Some(Default::default());
    check(
        &with_selector,
        &class(&[]),
        caps(),
        "claim Selector is not supported",
        ProvisioningState::Finished,
    );
    let mut populated = rwo.clone();
    populated.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: Some("example.com".into()),
        kind: "Widget".into(),
        name: "w".into(),
    });
    check(
        &populated,
        &class(&[]),
        caps(),
        "data source (Widget) is not handled by the provisioner, assuming an external populator will provision it",
        ProvisioningState::Ignored,
    );
    let mut bad_snap = rwo.clone();
    bad_snap.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: Some("wrong".into()),
        kind: "VolumeSnapshot".into(),
        name: "s".into(),
    });
    check(
        &bad_snap,
        &class(&[]),
        caps(),
        "the PVC source does not belong to the right APIGroup. Expected snapshot.storage.k8s.io, Got wrong",
        ProvisioningState::Finished,
    );
}

#[test]
fn vac_parameters_and_driver_mismatch() {
    let mut c = claim(&["ReadWriteOnce"], false);
    c.spec.as_mut().unwrap().volume_attributes_class_name = Some("gold".into());
    let sc = class(&[]);
    let config = ProvisionerConfig::default();
    let cluster = ClusterTopology::default();
    let caps = DriverCaps {
        modify_volume: true,
        ..caps()
    };
    let vac = Ok(VacInfo {
        driver_name: DRIVER.into(),
        parameters: BTreeMap::from([("iops".to_string(), "100".to_string())]),
    });
    let mut input = PrepareInput {
        claim: &c,
        class: &sc,
        config: &config,
        driver: DRIVER,
        caps,
        selected_node: None,
        cluster: &cluster,
        vac: Some(&vac),
        source: None,
    };
    let i = prepare(&input).unwrap();
    assert_eq!(i.request.mutable_parameters["iops"], "100");
    assert_eq!(i.pv.volume_attributes_class.as_deref(), Some("gold"));
    let other = Ok(VacInfo {
        driver_name: "other".into(),
        parameters: BTreeMap::new(),
    });
    input.vac = Some(&other);
    assert_eq!(
        prepare(&input).unwrap_err().message,
        "VAC gold referenced in PVC is for driver other which does not match driver name hostpath.csi.k8s.io"
    );
    input.caps.modify_volume = false;
    assert_eq!(
        prepare(&input).unwrap_err().message,
        "CSI driver does not support VolumeAttributesClass: controller MODIFY_VOLUME capability is not reported"
    );
}

#[test]
fn topology_errors_map_to_reschedule_or_no_change() {
    let c = claim(&["ReadWriteOnce"], false);
    let sc = class(&[]);
    let config = ProvisionerConfig::default();
    let cluster = ClusterTopology::default();
    let input = PrepareInput {
        claim: &c,
        class: &sc,
        config: &config,
        driver: DRIVER,
        caps: DriverCaps {
            topology: true,
            ..caps()
        },
        selected_node: Some("node-1"),
        cluster: &cluster,
        vac: None,
        source: None,
    };
    let e = prepare(&input).unwrap_err();
    assert_eq!(e.state, ProvisioningState::Reschedule);
    let mut no_node = input;
    no_node.selected_node = None;
    let e = prepare(&no_node).unwrap_err();
    assert_eq!(e.state, ProvisioningState::NoChange);
    assert_eq!(
        e.message,
        "error generating accessibility requirements: no available topology found"
    );
}

#[test]
fn the_intent_round_trips_through_json() {
    let c = claim(&["ReadWriteOnce"], false);
    let i = run(
        &c,
        &class(&[("a", "b")]),
        &ProvisionerConfig::default(),
        caps(),
    )
    .unwrap();
    let json = serde_json::to_string(&i).unwrap();
    let back: Intent = serde_json::from_str(&json).unwrap();
    assert_eq!(back, i);
}

fn clone_claim() -> PersistentVolumeClaim {
    let mut c = claim(&["ReadWriteOnce"], false);
    c.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".into(),
        name: "src".into(),
    });
    c
}

fn run_with_source(
    claim: &PersistentVolumeClaim,
    caps: DriverCaps,
    source: &Result<crate::source::RecordedSource, String>,
) -> Result<Intent, ProvisionError> {
    let cluster = ClusterTopology::default();
    prepare(&PrepareInput {
        claim,
        class: &class(&[]),
        config: &ProvisionerConfig::default(),
        driver: DRIVER,
        caps,
        selected_node: None,
        cluster: &cluster,
        vac: None,
        source: Some(source),
    })
}

#[test]
fn a_clone_records_its_source_volume_and_replays_it() {
    use crate::source::RecordedSource;
    let caps = DriverCaps {
        clone: true,
        ..caps()
    };
    let intent = run_with_source(
        &clone_claim(),
        caps,
        &Ok(RecordedSource::Volume("vol-src".into())),
    )
    .unwrap();
    assert_eq!(
        intent.request.content_source,
        Some(RecordedSource::Volume("vol-src".into()))
    );
    let req = intent.request.to_csi("pvc-1", Default::default());
    match req.volume_content_source.and_then(|s| s.r#type) {
        Some(v1::volume_content_source::Type::Volume(v)) => assert_eq!(v.volume_id, "vol-src"),
        other => panic!("expected a volume source, got {other:?}"),
    }
    // The recorded form survives the annotation round trip.
    let back: Intent = serde_json::from_str(&serde_json::to_string(&intent).unwrap()).unwrap();
    assert_eq!(back, intent);
}

#[test]
fn a_clone_source_error_is_wrapped_as_upstream_does() {
    let with_clone = DriverCaps {
        clone: true,
        ..caps()
    };
    let e = run_with_source(
        &clone_claim(),
        with_clone,
        &Err("claim in dataSource not bound or invalid".into()),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "error getting handle for DataSource Type PersistentVolumeClaim by Name src: claim in dataSource not bound or invalid"
    );
    assert_eq!(e.state, ProvisioningState::NoChange);
    // Without CLONE_VOLUME the source is never looked at.
    let e = run_with_source(
        &clone_claim(),
        caps(),
        &Ok(crate::source::RecordedSource::Volume("v".into())),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "CSI driver does not support clone operations: controller CLONE_VOLUME capability is not reported"
    );
}
