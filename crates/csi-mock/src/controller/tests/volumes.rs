//! CreateVolume, DeleteVolume, ControllerExpandVolume, ControllerModifyVolume and
//! ControllerGetVolume.

use super::*;

#[test]
fn create_validates_required_fields() {
    let mut f = Fixture::new();
    let cases: Vec<(&str, pb::CreateVolumeRequest)> = vec![
        ("no name", volume_req("", GIB)),
        (
            "no capabilities",
            pb::CreateVolumeRequest {
                volume_capabilities: vec![],
                ..volume_req("a", GIB)
            },
        ),
        (
            "no access mode",
            pb::CreateVolumeRequest {
                volume_capabilities: vec![pb::VolumeCapability {
                    access_mode: None,
                    ..mount(Mode::SingleNodeWriter)
                }],
                ..volume_req("a", GIB)
            },
        ),
        (
            "unknown access mode",
            pb::CreateVolumeRequest {
                volume_capabilities: vec![mount(Mode::Unknown)],
                ..volume_req("a", GIB)
            },
        ),
        (
            "no access type",
            pb::CreateVolumeRequest {
                volume_capabilities: vec![pb::VolumeCapability {
                    access_type: None,
                    ..mount(Mode::SingleNodeWriter)
                }],
                ..volume_req("a", GIB)
            },
        ),
        ("name too long", volume_req(&"n".repeat(129), GIB)),
        (
            "negative capacity",
            pb::CreateVolumeRequest {
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: -1,
                    limit_bytes: 0,
                }),
                ..volume_req("a", 0)
            },
        ),
        (
            "unsupported mutable parameter",
            pb::CreateVolumeRequest {
                mutable_parameters: HashMap::from([("XXX_FakeKey".into(), "v".into())]),
                ..volume_req("a", GIB)
            },
        ),
        (
            "source without type",
            pb::CreateVolumeRequest {
                volume_content_source: Some(pb::VolumeContentSource { r#type: None }),
                ..volume_req("a", GIB)
            },
        ),
    ];
    for (what, req) in cases {
        assert_eq!(code(f.create(req)), Code::InvalidArgument, "{what}");
    }
    assert!(f.state.volumes.is_empty());
    // The maximum name length is fine.
    f.create_named(&"n".repeat(128), GIB);
}

#[test]
fn create_is_idempotent_by_name_and_rejects_incompatible_repeats() {
    let mut f = Fixture::new();
    let first = f
        .create(pb::CreateVolumeRequest {
            capacity_range: Some(pb::CapacityRange {
                required_bytes: GIB,
                limit_bytes: GIB,
            }),
            parameters: HashMap::from([("type".into(), "fast".into())]),
            ..volume_req("pvc-1", 0)
        })
        .unwrap();
    assert_eq!(first.capacity_bytes, GIB);
    assert_eq!(first.volume_context["type"], "fast");
    assert_eq!(first.volume_context[VOLUME_NAME_CONTEXT_KEY], "pvc-1");

    let same = f
        .create(pb::CreateVolumeRequest {
            parameters: HashMap::from([("type".into(), "fast".into())]),
            ..volume_req("pvc-1", GIB)
        })
        .unwrap();
    assert_eq!(same, first);
    assert_eq!(f.state.volumes.len(), 1);

    let conflicts = [
        (
            "bigger",
            pb::CreateVolumeRequest {
                parameters: HashMap::from([("type".into(), "fast".into())]),
                ..volume_req("pvc-1", 2 * GIB)
            },
        ),
        ("other parameters", volume_req("pvc-1", GIB)),
        (
            "limit below size",
            pb::CreateVolumeRequest {
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: GIB / 2,
                    limit_bytes: GIB / 2,
                }),
                parameters: HashMap::from([("type".into(), "fast".into())]),
                ..volume_req("pvc-1", 0)
            },
        ),
        (
            "block access",
            pb::CreateVolumeRequest {
                parameters: HashMap::from([("type".into(), "fast".into())]),
                volume_capabilities: vec![block(Mode::SingleNodeWriter)],
                ..volume_req("pvc-1", GIB)
            },
        ),
    ];
    for (what, req) in conflicts {
        assert_eq!(code(f.create(req)), Code::AlreadyExists, "{what}");
    }
    assert_eq!(f.state.volumes.len(), 1);
}

#[test]
fn create_sizes_volumes_and_accounts_capacity() {
    let mut f = Fixture::with(|c| {
        c.total_capacity = Some(10 * GIB);
        c.max_volume_size = Some(8 * GIB);
    });
    assert_eq!(
        f.create_named("default", 0).capacity_bytes,
        DEFAULT_VOLUME_SIZE
    );
    let capped = f
        .create(pb::CreateVolumeRequest {
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 0,
                limit_bytes: GIB / 4,
            }),
            ..volume_req("capped", 0)
        })
        .unwrap();
    assert_eq!(capped.capacity_bytes, GIB / 4);
    assert_eq!(
        code(f.create(volume_req("huge", 9 * GIB))),
        Code::OutOfRange
    );
    f.create_named("big", 8 * GIB);
    // 1.25 GiB used + 8 GiB: 0.75 GiB left.
    assert_eq!(code(f.create(volume_req("over", GIB))), Code::OutOfRange);
    let cap = f
        .b()
        .get_capacity(pb::GetCapacityRequest::default())
        .unwrap();
    assert_eq!(cap.available_capacity, 10 * GIB - 8 * GIB - GIB - GIB / 4);
    assert_eq!(cap.maximum_volume_size, Some(8 * GIB));
    let range = pb::CreateVolumeRequest {
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 2,
            limit_bytes: 1,
        }),
        ..volume_req("inverted", 0)
    };
    assert_eq!(code(f.create(range)), Code::OutOfRange);
}

#[test]
fn create_from_sources() {
    let mut f = Fixture::new();
    let source = f.create_named("source", 2 * GIB);
    let snap = f.snapshot("snap", &source.volume_id).unwrap();
    assert_eq!(snap.size_bytes, 2 * GIB);

    let from_snap = f
        .create(pb::CreateVolumeRequest {
            volume_content_source: Some(pb::VolumeContentSource {
                r#type: Some(pb::volume_content_source::Type::Snapshot(
                    pb::volume_content_source::SnapshotSource {
                        snapshot_id: snap.snapshot_id.clone(),
                    },
                )),
            }),
            ..volume_req("restored", 0)
        })
        .unwrap();
    assert_eq!(from_snap.capacity_bytes, 2 * GIB, "takes the source's size");
    assert!(from_snap.content_source.is_some());
    assert_eq!(
        f.state.volume_by_name("restored").unwrap().content_source,
        Some(ContentSource::Snapshot(snap.snapshot_id.clone()))
    );

    let clone_of = |id: &str, name: &str, bytes: i64| pb::CreateVolumeRequest {
        volume_content_source: Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(
                pb::volume_content_source::VolumeSource {
                    volume_id: id.into(),
                },
            )),
        }),
        ..volume_req(name, bytes)
    };
    assert_eq!(
        f.create(clone_of(&source.volume_id, "clone", 3 * GIB))
            .unwrap()
            .capacity_bytes,
        3 * GIB
    );
    assert_eq!(
        code(f.create(clone_of(&source.volume_id, "small", GIB))),
        Code::OutOfRange
    );
    assert_eq!(
        code(f.create(clone_of("vol-missing", "c2", 0))),
        Code::NotFound
    );
    let missing_snap = pb::CreateVolumeRequest {
        volume_content_source: Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: "non-existing-snapshot-id".into(),
                },
            )),
        }),
        ..volume_req("r2", 0)
    };
    assert_eq!(code(f.create(missing_snap)), Code::NotFound);
    // A repeat with another source is incompatible.
    assert_eq!(
        code(f.create(clone_of(&source.volume_id, "restored", 0))),
        Code::AlreadyExists
    );

    let mut no_clone = Fixture::with(|c| {
        c.controller_capabilities.remove(&Cap::CloneVolume);
    });
    let source = no_clone.create_named("source", GIB);
    assert_eq!(
        code(no_clone.create(clone_of(&source.volume_id, "clone", 0))),
        Code::InvalidArgument
    );
}

#[test]
fn topology_places_volumes_by_preference() {
    const KEY: &str = "topology.mock.csi/zone";
    let mut f = Fixture::with(|c| {
        c.topology = Some(TopologyConfig {
            key: KEY.into(),
            zones: vec!["a".into(), "b".into(), "c".into()],
        });
    });
    let placed = |f: &mut Fixture, name: &str, requisite: &[&str], preferred: &[&str]| {
        f.create(pb::CreateVolumeRequest {
            accessibility_requirements: Some(pb::TopologyRequirement {
                requisite: requisite.iter().map(|z| zone(KEY, z)).collect(),
                preferred: preferred.iter().map(|z| zone(KEY, z)).collect(),
            }),
            ..volume_req(name, GIB)
        })
        .map(|v| v.accessible_topology[0].segments[KEY].clone())
    };
    assert_eq!(placed(&mut f, "v1", &["b", "c"], &["c", "b"]).unwrap(), "c");
    assert_eq!(placed(&mut f, "v2", &["b", "c"], &[]).unwrap(), "b");
    assert_eq!(placed(&mut f, "v3", &["x", "c"], &["x"]).unwrap(), "c");
    assert_eq!(placed(&mut f, "v4", &[], &["b"]).unwrap(), "b");
    assert_eq!(placed(&mut f, "v5", &[], &[]).unwrap(), "a");
    assert_eq!(
        code(placed(&mut f, "v6", &["x"], &[])),
        Code::ResourceExhausted
    );
    assert_eq!(
        f.create_named("v7", GIB).accessible_topology[0].segments[KEY],
        "a"
    );
    // A repeat must still be placed in a requisite zone.
    assert_eq!(placed(&mut f, "v1", &["c"], &[]).unwrap(), "c");
    assert_eq!(code(placed(&mut f, "v1", &["a"], &[])), Code::AlreadyExists);
    // Capacity outside the zones is zero.
    let in_zone = |f: &mut Fixture, z: &str| {
        f.b()
            .get_capacity(pb::GetCapacityRequest {
                accessible_topology: Some(zone(KEY, z)),
                ..Default::default()
            })
            .unwrap()
            .available_capacity
    };
    assert!(in_zone(&mut f, "a") > 0);
    assert_eq!(in_zone(&mut f, "x"), 0);
}

#[test]
fn delete_volume() {
    let mut f = Fixture::new();
    assert_eq!(
        code(f.b().delete_volume(pb::DeleteVolumeRequest::default())),
        Code::InvalidArgument
    );
    f.b()
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: "vol-unknown".into(),
            ..Default::default()
        })
        .unwrap();
    let v = f.create_named("v", GIB);
    f.publish(&v.volume_id, "n1", Mode::SingleNodeWriter)
        .unwrap();
    let delete = pb::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    };
    assert_eq!(
        code(f.b().delete_volume(delete.clone())),
        Code::FailedPrecondition
    );
    f.b()
        .controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: "n1".into(),
            ..Default::default()
        })
        .unwrap();
    f.b().delete_volume(delete.clone()).unwrap();
    f.b().delete_volume(delete).unwrap();
    assert!(f.state.volumes.is_empty());
    assert_eq!(f.state.used_capacity(), 0);
}

#[test]
fn expand_volume() {
    let mut f = Fixture::with(|c| c.total_capacity = Some(4 * GIB));
    let v = f.create_named("v", GIB).volume_id;
    let expand = |f: &mut Fixture, id: &str, required: i64, limit: i64| {
        f.b()
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: id.into(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: required,
                    limit_bytes: limit,
                }),
                ..Default::default()
            })
            .map(|r| r.capacity_bytes)
    };
    assert_eq!(expand(&mut f, &v, 2 * GIB, 0).unwrap(), 2 * GIB);
    assert_eq!(f.state.volumes[&v].capacity_bytes, 2 * GIB);
    assert_eq!(
        expand(&mut f, &v, GIB, 0).unwrap(),
        2 * GIB,
        "never shrinks"
    );
    assert_eq!(code(expand(&mut f, &v, GIB, GIB)), Code::OutOfRange);
    assert_eq!(code(expand(&mut f, &v, 5 * GIB, 0)), Code::OutOfRange);
    assert_eq!(
        expand(&mut f, &v, 4 * GIB, 0).unwrap(),
        4 * GIB,
        "may use the whole pool"
    );
    assert_eq!(code(expand(&mut f, "vol-x", GIB, 0)), Code::NotFound);
    assert_eq!(code(expand(&mut f, "", GIB, 0)), Code::InvalidArgument);
    assert_eq!(
        code(
            f.b()
                .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                    volume_id: v.clone(),
                    ..Default::default()
                })
        ),
        Code::InvalidArgument
    );

    let mut offline = Fixture::with(|c| c.online_expansion = false);
    let v = offline.create_named("v", GIB).volume_id;
    offline.publish(&v, "n", Mode::SingleNodeWriter).unwrap();
    assert_eq!(
        code(expand(&mut offline, &v, 2 * GIB, 0)),
        Code::FailedPrecondition
    );
}

#[test]
fn modify_and_get_volume() {
    let mut f = Fixture::new();
    let v = f
        .create(pb::CreateVolumeRequest {
            mutable_parameters: HashMap::from([("iops".into(), "100".into())]),
            ..volume_req("v", GIB)
        })
        .unwrap()
        .volume_id;
    let modify = |f: &mut Fixture, id: &str, key: &str| {
        f.b()
            .controller_modify_volume(pb::ControllerModifyVolumeRequest {
                volume_id: id.into(),
                mutable_parameters: HashMap::from([(key.to_owned(), "200".to_owned())]),
                ..Default::default()
            })
    };
    modify(&mut f, &v, "throughput").unwrap();
    assert_eq!(
        code(modify(&mut f, &v, "XXX_FakeKey")),
        Code::InvalidArgument
    );
    assert_eq!(code(modify(&mut f, "vol-x", "iops")), Code::NotFound);
    assert_eq!(code(modify(&mut f, "", "iops")), Code::InvalidArgument);
    assert_eq!(
        f.state.volumes[&v].mutable_parameters,
        BTreeMap::from([
            ("iops".to_owned(), "100".to_owned()),
            ("throughput".to_owned(), "200".to_owned())
        ])
    );
    f.publish(&v, "n1", Mode::SingleNodeWriter).unwrap();
    let got = f
        .b()
        .controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: v.clone(),
        })
        .unwrap();
    assert_eq!(got.volume.unwrap().volume_id, v);
    assert_eq!(got.status.unwrap().published_node_ids, ["n1"]);
    assert_eq!(
        code(f.b().controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: "vol-x".into()
        })),
        Code::NotFound
    );

    let mut any = Fixture::with(|c| c.mutable_parameter_keys = None);
    let v = any.create_named("v", GIB).volume_id;
    modify(&mut any, &v, "XXX_FakeKey").unwrap();
}
