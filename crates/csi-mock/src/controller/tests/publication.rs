//! ControllerPublishVolume, ControllerUnpublishVolume and ValidateVolumeCapabilities.

use super::*;

#[test]
fn publish_rules() {
    let mut f = Fixture::with(|c| {
        c.max_volumes_per_node = 2;
        c.nodes = vec!["n1".into(), "n2".into()];
    });
    let v1 = f.create_named("v1", GIB).volume_id;
    let v2 = f.create_named("v2", GIB).volume_id;
    let v3 = f.create_named("v3", GIB).volume_id;

    // Required fields.
    for req in [
        publish_req("", "n1", Mode::SingleNodeWriter),
        publish_req(&v1, "", Mode::SingleNodeWriter),
        pb::ControllerPublishVolumeRequest {
            volume_capability: None,
            ..publish_req(&v1, "n1", Mode::SingleNodeWriter)
        },
    ] {
        assert_eq!(
            code(f.b().controller_publish_volume(req)),
            Code::InvalidArgument
        );
    }
    assert_eq!(
        code(f.publish("vol-nope", "n1", Mode::SingleNodeWriter)),
        Code::NotFound
    );
    assert_eq!(
        code(f.publish(&v1, "n9", Mode::SingleNodeWriter)),
        Code::NotFound
    );

    // Idempotent on the same node, ALREADY_EXISTS with another readonly flag.
    let first = f
        .b()
        .controller_publish_volume(publish_req(&v1, "n1", Mode::SingleNodeWriter))
        .unwrap();
    let again = f
        .b()
        .controller_publish_volume(publish_req(&v1, "n1", Mode::SingleNodeWriter))
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        first.publish_context[DEVICE_PATH_CONTEXT_KEY],
        format!("/dev/mock/{v1}")
    );
    let readonly = pb::ControllerPublishVolumeRequest {
        readonly: true,
        ..publish_req(&v1, "n1", Mode::SingleNodeWriter)
    };
    assert_eq!(
        code(f.b().controller_publish_volume(readonly)),
        Code::AlreadyExists
    );

    // Single-node volume on another node.
    let err = f.publish(&v1, "n2", Mode::SingleNodeWriter).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("n1"), "{}", err.message());

    // Multi-node publications may share a volume.
    f.publish(&v2, "n1", Mode::MultiNodeMultiWriter).unwrap();
    f.publish(&v2, "n2", Mode::MultiNodeMultiWriter).unwrap();
    assert_eq!(
        code(f.publish(&v2, "n2", Mode::SingleNodeWriter)),
        Code::AlreadyExists
    );

    // Attach limit: n1 has v1 and v2.
    assert_eq!(
        code(f.publish(&v3, "n1", Mode::SingleNodeWriter)),
        Code::ResourceExhausted
    );
    f.publish(&v3, "n2", Mode::SingleNodeWriter).unwrap();
    let volume = &f.state.volumes[&v2];
    assert_eq!(volume.publications.keys().collect::<Vec<_>>(), ["n1", "n2"]);

    // Unpublish: idempotent, unknown volume fine, empty node means all.
    for node in ["n1", "n1", "n9"] {
        f.b()
            .controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
                volume_id: v1.clone(),
                node_id: node.into(),
                ..Default::default()
            })
            .unwrap();
    }
    f.b()
        .controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
            volume_id: v2.clone(),
            ..Default::default()
        })
        .unwrap();
    f.b()
        .controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
            volume_id: "vol-gone".into(),
            node_id: "n1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(f.state.publications().len(), 1);
    assert_eq!(
        code(f.b().controller_unpublish_volume(Default::default())),
        Code::InvalidArgument
    );
}

#[test]
fn single_node_multi_writer_modes_need_the_capability() {
    let mut f = Fixture::with(|c| {
        c.controller_capabilities
            .remove(&Cap::SingleNodeMultiWriter);
    });
    let req = pb::CreateVolumeRequest {
        volume_capabilities: vec![mount(Mode::SingleNodeMultiWriter)],
        ..volume_req("v", GIB)
    };
    assert_eq!(code(f.create(req.clone())), Code::InvalidArgument);
    let mut g = Fixture::new();
    g.create(req).unwrap();
}

#[test]
fn validate_volume_capabilities() {
    let mut f = Fixture::new();
    let v = f
        .create(pb::CreateVolumeRequest {
            parameters: HashMap::from([("p".into(), "1".into())]),
            ..volume_req("v", GIB)
        })
        .unwrap();
    let req = |caps: Vec<pb::VolumeCapability>| pb::ValidateVolumeCapabilitiesRequest {
        volume_id: v.volume_id.clone(),
        volume_context: v.volume_context.clone(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = f
        .b()
        .validate_volume_capabilities(req(vec![mount(Mode::MultiNodeReaderOnly)]))
        .unwrap();
    assert!(ok.confirmed.is_some(), "{}", ok.message);
    let block_answer = f
        .b()
        .validate_volume_capabilities(req(vec![block(Mode::SingleNodeWriter)]))
        .unwrap();
    assert!(block_answer.confirmed.is_none());
    assert!(
        block_answer.message.contains("Block"),
        "{}",
        block_answer.message
    );
    let other_params = f
        .b()
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            parameters: HashMap::from([("p".into(), "2".into())]),
            ..req(vec![mount(Mode::SingleNodeWriter)])
        })
        .unwrap();
    assert!(other_params.confirmed.is_none());
    assert_eq!(
        code(f.b().validate_volume_capabilities(req(vec![]))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            f.b()
                .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                    volume_id: "vol-x".into(),
                    ..req(vec![mount(Mode::SingleNodeWriter)])
                })
        ),
        Code::NotFound
    );
}
