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

mod publication;
mod snapshots;
mod volumes;

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
