//! Unit tests of the controller logic: spec error codes, idempotency, accounting, pagination.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use csi::v1 as pb;
use csi::v1::volume_capability::access_mode::Mode;
use tonic::{Code, Status};

use super::Backend;
use crate::config::{
    ControllerCapability as Cap, DEFAULT_VOLUME_SIZE, DEVICE_PATH_CONTEXT_KEY, MockConfig,
    TopologyConfig, VOLUME_NAME_CONTEXT_KEY,
};
use crate::state::{ContentSource, MockState};

const GIB: i64 = 1 << 30;

struct Fixture {
    config: MockConfig,
    state: MockState,
    now_ms: i64,
}

impl Fixture {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(change: impl FnOnce(&mut MockConfig)) -> Self {
        let mut config = MockConfig::default();
        change(&mut config);
        Self {
            config,
            state: MockState::default(),
            now_ms: 1_700_000_000_000,
        }
    }

    fn b(&mut self) -> Backend<'_> {
        Backend {
            config: &self.config,
            state: &mut self.state,
            now_ms: self.now_ms,
            ready: true,
        }
    }

    fn create(&mut self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status> {
        self.b().create_volume(req).map(|r| r.volume.unwrap())
    }

    fn create_named(&mut self, name: &str, bytes: i64) -> pb::Volume {
        self.create(volume_req(name, bytes)).unwrap()
    }

    fn publish(&mut self, volume_id: &str, node: &str, mode: Mode) -> Result<(), Status> {
        self.b()
            .controller_publish_volume(publish_req(volume_id, node, mode))
            .map(drop)
    }

    fn snapshot(&mut self, name: &str, source: &str) -> Result<pb::Snapshot, Status> {
        self.b()
            .create_snapshot(pb::CreateSnapshotRequest {
                source_volume_id: source.into(),
                name: name.into(),
                ..Default::default()
            })
            .map(|r| r.snapshot.unwrap())
    }
}

fn mount(mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode.into() }),
    }
}

fn block(mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Block(
            pb::volume_capability::BlockVolume {},
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode.into() }),
    }
}

fn volume_req(name: &str, bytes: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: (bytes > 0).then_some(pb::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount(Mode::SingleNodeWriter)],
        ..Default::default()
    }
}

fn publish_req(volume_id: &str, node: &str, mode: Mode) -> pb::ControllerPublishVolumeRequest {
    pb::ControllerPublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: node.into(),
        volume_capability: Some(mount(mode)),
        ..Default::default()
    }
}

fn zone(key: &str, z: &str) -> pb::Topology {
    pb::Topology {
        segments: HashMap::from([(key.to_owned(), z.to_owned())]),
    }
}

fn code<T: fmt::Debug>(r: Result<T, Status>) -> Code {
    r.expect_err("expected an error").code()
}

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

#[test]
fn list_volumes_paginates_by_id_and_survives_deletes() {
    let mut f = Fixture::new();
    let ids: Vec<String> = (0..5)
        .map(|i| f.create_named(&format!("v{i}"), GIB).volume_id)
        .collect();
    f.publish(&ids[0], "n1", Mode::SingleNodeWriter).unwrap();
    let list = |f: &mut Fixture, max: i32, token: &str| {
        f.b().list_volumes(pb::ListVolumesRequest {
            max_entries: max,
            starting_token: token.into(),
        })
    };
    let page1 = list(&mut f, 2, "").unwrap();
    let got: Vec<&str> = page1
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.as_str())
        .collect();
    assert_eq!(got, [&ids[0], &ids[1]]);
    assert_eq!(page1.next_token, ids[1]);
    assert_eq!(
        page1.entries[0].status.as_ref().unwrap().published_node_ids,
        ["n1"]
    );
    assert_eq!(
        page1.entries[0].status.as_ref().unwrap().volume_condition,
        Some(pb::VolumeCondition {
            abnormal: false,
            message: String::new()
        })
    );

    // Deleting the token's volume does not invalidate the token.
    f.b()
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: ids[1].clone(),
            ..Default::default()
        })
        .unwrap();
    let page2 = list(&mut f, 0, &page1.next_token).unwrap();
    assert_eq!(page2.entries.len(), 3);
    assert!(page2.next_token.is_empty());
    let exact = list(&mut f, 4, "").unwrap();
    assert_eq!(exact.entries.len(), 4);
    assert!(exact.next_token.is_empty(), "no more entries: no token");

    assert_eq!(code(list(&mut f, 0, "invalid-token")), Code::Aborted);
    assert_eq!(code(list(&mut f, -1, "")), Code::InvalidArgument);

    let mut bare = Fixture::with(|c| {
        c.controller_capabilities
            .remove(&Cap::ListVolumesPublishedNodes);
        c.controller_capabilities.remove(&Cap::VolumeCondition);
    });
    bare.create_named("v", GIB);
    assert!(list(&mut bare, 0, "").unwrap().entries[0].status.is_none());
}

#[test]
fn snapshots_lifecycle_filters_and_pagination() {
    let mut f = Fixture::with(|c| c.snapshot_ready_delay = Duration::from_secs(10));
    let v1 = f.create_named("v1", GIB).volume_id;
    let v2 = f.create_named("v2", 2 * GIB).volume_id;
    assert_eq!(code(f.snapshot("", &v1)), Code::InvalidArgument);
    assert_eq!(code(f.snapshot("s", "")), Code::InvalidArgument);
    assert_eq!(code(f.snapshot("s", "vol-missing")), Code::NotFound);
    let s1 = f.snapshot("s1", &v1).unwrap();
    assert!(!s1.ready_to_use, "not ready before the delay");
    assert_eq!(f.snapshot("s1", &v1).unwrap().snapshot_id, s1.snapshot_id);
    assert_eq!(code(f.snapshot("s1", &v2)), Code::AlreadyExists);
    let s2 = f.snapshot("s2", &v2).unwrap();
    let s3 = f.snapshot("s3", &v2).unwrap();
    f.now_ms += 10_000;
    assert!(f.snapshot("s1", &v1).unwrap().ready_to_use);

    let list = |f: &mut Fixture, req: pb::ListSnapshotsRequest| {
        f.b().list_snapshots(req).map(|r| {
            (
                r.entries
                    .into_iter()
                    .map(|e| e.snapshot.unwrap().snapshot_id)
                    .collect::<Vec<_>>(),
                r.next_token,
            )
        })
    };
    let (all, _) = list(&mut f, Default::default()).unwrap();
    assert_eq!(
        all,
        [s1.snapshot_id.as_str(), &s2.snapshot_id, &s3.snapshot_id]
    );
    let (by_source, _) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            source_volume_id: v2.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_source, [s2.snapshot_id.as_str(), &s3.snapshot_id]);
    let (by_id, _) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            snapshot_id: s2.snapshot_id.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_id, [s2.snapshot_id.as_str()]);
    let (none, _) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            snapshot_id: "snap-none".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
    let (page, token) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            max_entries: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page.len(), 2);
    let (rest, token2) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            starting_token: token,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rest, [s3.snapshot_id.as_str()]);
    assert!(token2.is_empty());
    assert_eq!(
        code(list(
            &mut f,
            pb::ListSnapshotsRequest {
                starting_token: "vol-0000000001".into(),
                ..Default::default()
            }
        )),
        Code::Aborted
    );

    // GetSnapshot and DeleteSnapshot.
    let get = |f: &mut Fixture, id: &str| {
        f.b().get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        })
    };
    assert_eq!(
        get(&mut f, &s2.snapshot_id)
            .unwrap()
            .snapshot
            .unwrap()
            .size_bytes,
        2 * GIB
    );
    assert_eq!(code(get(&mut f, "none-exist-id")), Code::NotFound);
    assert_eq!(code(get(&mut f, "")), Code::InvalidArgument);
    for id in [&s2.snapshot_id, &s2.snapshot_id, &"snap-unknown".to_owned()] {
        f.b()
            .delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            })
            .unwrap();
    }
    assert_eq!(code(get(&mut f, &s2.snapshot_id)), Code::NotFound);
    assert_eq!(
        code(f.b().delete_snapshot(Default::default())),
        Code::InvalidArgument
    );
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

#[test]
fn disabled_capabilities_are_unimplemented() {
    let mut f = Fixture::with(|c| {
        c.controller_capabilities.clear();
        c.group_controller = false;
    });
    assert_eq!(code(f.create(volume_req("v", GIB))), Code::Unimplemented);
    assert_eq!(
        code(f.b().list_volumes(Default::default())),
        Code::Unimplemented
    );
    assert_eq!(
        code(f.b().get_capacity(Default::default())),
        Code::Unimplemented
    );
    assert_eq!(
        code(f.b().list_snapshots(Default::default())),
        Code::Unimplemented
    );
    assert_eq!(
        code(f.b().group_controller_get_capabilities(Default::default())),
        Code::Unimplemented
    );
    let caps = f
        .b()
        .controller_get_capabilities(Default::default())
        .unwrap();
    assert!(caps.capabilities.is_empty());
    let plugin = f.b().get_plugin_capabilities(Default::default()).unwrap();
    assert_eq!(plugin.capabilities.len(), 1, "CONTROLLER_SERVICE only");
}

#[test]
fn group_snapshots() {
    let mut f = Fixture::new();
    let v1 = f.create_named("v1", GIB).volume_id;
    let v2 = f.create_named("v2", 2 * GIB).volume_id;
    let create = |f: &mut Fixture, name: &str, ids: &[&str]| {
        f.b()
            .create_volume_group_snapshot(pb::CreateVolumeGroupSnapshotRequest {
                name: name.into(),
                source_volume_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .map(|r| r.group_snapshot.unwrap())
    };
    assert_eq!(code(create(&mut f, "", &[&v1])), Code::InvalidArgument);
    assert_eq!(code(create(&mut f, "g", &[])), Code::InvalidArgument);
    assert_eq!(
        code(create(&mut f, "g", &[&v1, &v1])),
        Code::InvalidArgument
    );
    assert_eq!(code(create(&mut f, "g", &[&v1, "vol-x"])), Code::NotFound);
    let g = create(&mut f, "g", &[&v1, &v2]).unwrap();
    assert_eq!(g.snapshots.len(), 2);
    assert!(g.ready_to_use);
    assert!(
        g.snapshots
            .iter()
            .all(|s| s.group_snapshot_id == g.group_snapshot_id)
    );
    assert_eq!(g.snapshots[1].size_bytes, 2 * GIB);
    // Idempotent regardless of order; other volumes conflict.
    assert_eq!(create(&mut f, "g", &[&v2, &v1]).unwrap(), g);
    assert_eq!(code(create(&mut f, "g", &[&v1])), Code::AlreadyExists);

    // Members cannot be deleted alone; they are listed with the others.
    let member = g.snapshots[0].snapshot_id.clone();
    assert_eq!(
        code(f.b().delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: member.clone(),
            ..Default::default()
        })),
        Code::InvalidArgument
    );
    assert_eq!(
        f.b()
            .list_snapshots(Default::default())
            .unwrap()
            .entries
            .len(),
        2
    );

    let get = |f: &mut Fixture, id: &str, members: Vec<String>| {
        f.b()
            .get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: id.into(),
                snapshot_ids: members,
                ..Default::default()
            })
    };
    assert_eq!(
        get(&mut f, &g.group_snapshot_id, vec![])
            .unwrap()
            .group_snapshot
            .unwrap(),
        g
    );
    assert_eq!(
        code(get(&mut f, &g.group_snapshot_id, vec![member.clone()])),
        Code::InvalidArgument
    );
    assert_eq!(code(get(&mut f, "group-snap-x", vec![])), Code::NotFound);
    assert_eq!(code(get(&mut f, "", vec![])), Code::InvalidArgument);

    let delete = |f: &mut Fixture, id: &str, members: Vec<String>| {
        f.b()
            .delete_volume_group_snapshot(pb::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: id.into(),
                snapshot_ids: members,
                ..Default::default()
            })
    };
    assert_eq!(
        code(delete(&mut f, &g.group_snapshot_id, vec![member])),
        Code::InvalidArgument
    );
    let members: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    delete(&mut f, &g.group_snapshot_id, members.clone()).unwrap();
    delete(&mut f, &g.group_snapshot_id, members).unwrap();
    delete(&mut f, "group-snap-unknown", vec![]).unwrap();
    assert_eq!(code(delete(&mut f, "", vec![])), Code::InvalidArgument);
    assert!(f.state.snapshots.is_empty() && f.state.group_snapshots.is_empty());
}

#[test]
fn identity_and_node() {
    let mut f = Fixture::with(|c| {
        c.topology = Some(TopologyConfig::default());
        c.max_volumes_per_node = 7;
    });
    let info = f.b().get_plugin_info(Default::default()).unwrap();
    assert_eq!(info.name, crate::config::DEFAULT_DRIVER_NAME);
    assert!(!info.vendor_version.is_empty());
    let caps = f.b().get_plugin_capabilities(Default::default()).unwrap();
    assert_eq!(caps.capabilities.len(), 4, "{caps:?}");
    assert_eq!(f.b().probe(Default::default()).unwrap().ready, Some(true));
    let node = f.b().node_get_info(Default::default()).unwrap();
    assert_eq!(node.max_volumes_per_node, 7);
    assert_eq!(
        node.accessible_topology.unwrap().segments[crate::config::DEFAULT_TOPOLOGY_KEY],
        crate::config::DEFAULT_ZONE
    );

    let v = f.create_named("v", GIB).volume_id;
    let publish = |f: &mut Fixture, readonly: bool| {
        f.b().node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: v.clone(),
            target_path: "/t".into(),
            volume_capability: Some(mount(Mode::SingleNodeWriter)),
            readonly,
            ..Default::default()
        })
    };
    publish(&mut f, false).unwrap();
    publish(&mut f, false).unwrap();
    assert_eq!(code(publish(&mut f, true)), Code::AlreadyExists);
    assert!(!f.state.volumes[&v].node_published_paths["/t"]);
    f.b()
        .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: v.clone(),
            target_path: "/t".into(),
        })
        .unwrap();
    assert!(f.state.volumes[&v].node_published_paths.is_empty());
    assert_eq!(
        code(f.b().node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: "vol-x".into(),
            target_path: "/t".into(),
        })),
        Code::NotFound
    );
}
