//! What the mock driver advertises and enforces: its name, capabilities, topology, limits and
//! persistence. Also the constants other software may read (driver name, topology key, context keys).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// A controller capability (`ControllerServiceCapability.RPC.Type`).
pub use csi::v1::controller_service_capability::rpc::Type as ControllerCapability;

/// The driver name reported by `GetPluginInfo` unless configured otherwise.
pub const DEFAULT_DRIVER_NAME: &str = "mock.csi.controller-manager.io";
/// The topology segment key of the mock's zones unless configured otherwise.
pub const DEFAULT_TOPOLOGY_KEY: &str = "topology.mock.csi/zone";
/// The zone used when no zone is configured and the request does not pick one.
pub const DEFAULT_ZONE: &str = "zone-1";
/// The node id reported by `NodeGetInfo` unless configured otherwise.
pub const DEFAULT_NODE_ID: &str = "csi-mock-node";
/// Volume context key holding the name the volume was created with.
pub const VOLUME_NAME_CONTEXT_KEY: &str = "mock.csi/volume-name";
/// Publish context key holding the (fake) device path of a published volume.
pub const DEVICE_PATH_CONTEXT_KEY: &str = "devicePath";
/// Capacity given to a volume whose request has no capacity range (1 GiB).
pub const DEFAULT_VOLUME_SIZE: i64 = 1 << 30;
/// Total capacity of the mock's storage pool unless configured otherwise (1 TiB).
pub const DEFAULT_TOTAL_CAPACITY: i64 = 1 << 40;
/// Mutable parameter keys accepted by `ControllerModifyVolume` unless configured otherwise.
pub const DEFAULT_MUTABLE_PARAMETER_KEYS: &[&str] = &["iops", "throughput", "tier"];

/// The controller capabilities advertised by default: every capability the mock implements.
pub const DEFAULT_CONTROLLER_CAPABILITIES: &[ControllerCapability] = &[
    ControllerCapability::CreateDeleteVolume,
    ControllerCapability::PublishUnpublishVolume,
    ControllerCapability::ListVolumes,
    ControllerCapability::GetCapacity,
    ControllerCapability::CreateDeleteSnapshot,
    ControllerCapability::ListSnapshots,
    ControllerCapability::CloneVolume,
    ControllerCapability::PublishReadonly,
    ControllerCapability::ExpandVolume,
    ControllerCapability::ListVolumesPublishedNodes,
    ControllerCapability::VolumeCondition,
    ControllerCapability::GetVolume,
    ControllerCapability::SingleNodeMultiWriter,
    ControllerCapability::ModifyVolume,
    ControllerCapability::GetSnapshot,
];

/// Topology settings: volumes are placed in zones under one segment key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyConfig {
    /// The segment key, e.g. [`DEFAULT_TOPOLOGY_KEY`].
    pub key: String,
    /// The zones that exist. Empty means any zone a request names exists.
    pub zones: Vec<String>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            key: DEFAULT_TOPOLOGY_KEY.to_owned(),
            zones: Vec::new(),
        }
    }
}

impl TopologyConfig {
    /// The zone a volume gets when the request expresses no preference, and the Node service's.
    pub fn default_zone(&self) -> &str {
        self.zones.first().map_or(DEFAULT_ZONE, String::as_str)
    }

    /// Whether `zone` exists.
    pub fn has_zone(&self, zone: &str) -> bool {
        self.zones.is_empty() || self.zones.iter().any(|z| z == zone)
    }
}

/// Configuration of a [`MockDriver`](crate::MockDriver). `Default` gives a driver with every
/// controller capability, the group controller service, no topology, no attach limit and a 1 TiB pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// `GetPluginInfo.name`.
    pub driver_name: String,
    /// `GetPluginInfo.vendor_version`.
    pub vendor_version: String,
    /// Advertised controller capabilities; RPCs that need a missing one fail with UNIMPLEMENTED.
    pub controller_capabilities: BTreeSet<ControllerCapability>,
    /// Serve and advertise the GroupController service (volume group snapshots).
    pub group_controller: bool,
    /// Topology; `None` disables it (no VOLUME_ACCESSIBILITY_CONSTRAINTS, no accessible_topology).
    pub topology: Option<TopologyConfig>,
    /// Maximum volumes published to one node; 0 means unlimited.
    pub max_volumes_per_node: u64,
    /// Size of the storage pool in bytes; `None` means unlimited.
    pub total_capacity: Option<i64>,
    /// Largest volume in bytes; `None` means bounded by the pool only.
    pub max_volume_size: Option<i64>,
    /// Node ids that exist for ControllerPublishVolume; empty means every node id exists.
    pub nodes: Vec<String>,
    /// The node id reported by the Node service's `NodeGetInfo`.
    pub node_id: String,
    /// Mutable parameter keys accepted by CreateVolume and ControllerModifyVolume; `None` accepts
    /// any key.
    pub mutable_parameter_keys: Option<BTreeSet<String>>,
    /// Snapshots report `ready_to_use = false` until this long after they were cut.
    pub snapshot_ready_delay: Duration,
    /// Volume expansion is ONLINE (published volumes may be expanded); otherwise OFFLINE.
    pub online_expansion: bool,
    /// `ControllerExpandVolume` answers `node_expansion_required` with this value.
    pub node_expansion_required: bool,
    /// `NodeGetCapabilities` reports EXPAND_VOLUME (a node-only expansion driver is one with
    /// this and without the controller's EXPAND_VOLUME).
    pub node_expand_volume: bool,
    /// Where state is persisted as JSON after every change and loaded from at start.
    pub state_file: Option<PathBuf>,
    /// Secrets CreateVolume and DeleteVolume must carry (key and value), like a driver that needs
    /// credentials; a call without them fails with UNAUTHENTICATED. Empty: none needed.
    pub required_secrets: BTreeMap<String, String>,
    /// The same secrets are also required by ControllerPublish/UnpublishVolume,
    /// ControllerExpandVolume and Create/DeleteSnapshot (each of which has a secret of its own
    /// in a StorageClass or VolumeSnapshotClass).
    pub secrets_on_every_call: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            driver_name: DEFAULT_DRIVER_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            controller_capabilities: DEFAULT_CONTROLLER_CAPABILITIES.iter().copied().collect(),
            group_controller: true,
            topology: None,
            max_volumes_per_node: 0,
            total_capacity: Some(DEFAULT_TOTAL_CAPACITY),
            max_volume_size: None,
            nodes: Vec::new(),
            node_id: DEFAULT_NODE_ID.to_owned(),
            mutable_parameter_keys: Some(
                DEFAULT_MUTABLE_PARAMETER_KEYS
                    .iter()
                    .map(|k| (*k).to_owned())
                    .collect(),
            ),
            snapshot_ready_delay: Duration::ZERO,
            online_expansion: true,
            node_expansion_required: false,
            node_expand_volume: false,
            state_file: None,
            required_secrets: BTreeMap::new(),
            secrets_on_every_call: false,
        }
    }
}

impl MockConfig {
    /// Whether `cap` is advertised.
    pub fn has(&self, cap: ControllerCapability) -> bool {
        self.controller_capabilities.contains(&cap)
    }

    /// Whether a node id exists.
    pub fn node_exists(&self, node_id: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node_id)
    }
}

/// Parses a controller capability name such as `CREATE_DELETE_VOLUME` (case-insensitive,
/// `-` accepted for `_`).
pub fn parse_capability(name: &str) -> Option<ControllerCapability> {
    let upper = name.trim().to_ascii_uppercase().replace('-', "_");
    ControllerCapability::from_str_name(&upper).filter(|c| *c != ControllerCapability::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_has_every_implemented_capability() {
        let config = MockConfig::default();
        assert_eq!(config.controller_capabilities.len(), 15);
        assert!(config.has(ControllerCapability::GetSnapshot));
        assert!(!config.has(ControllerCapability::Unknown));
        assert!(config.node_exists("anything"));
    }

    #[test]
    fn capability_names_parse() {
        assert_eq!(
            parse_capability("create_delete_volume"),
            Some(ControllerCapability::CreateDeleteVolume)
        );
        assert_eq!(
            parse_capability("LIST-VOLUMES-PUBLISHED-NODES"),
            Some(ControllerCapability::ListVolumesPublishedNodes)
        );
        assert_eq!(parse_capability("UNKNOWN"), None);
        assert_eq!(parse_capability("FLY"), None);
    }

    #[test]
    fn topology_zones() {
        let any = TopologyConfig::default();
        assert!(any.has_zone("z9"));
        assert_eq!(any.default_zone(), DEFAULT_ZONE);
        let two = TopologyConfig {
            zones: vec!["a".into(), "b".into()],
            ..TopologyConfig::default()
        };
        assert!(two.has_zone("b") && !two.has_zone("c"));
        assert_eq!(two.default_zone(), "a");
    }
}
