//! The mock's storage system: volumes (with their publications), snapshots and group snapshots.
//!
//! [`MockState`] is plain data: tests read a cloned snapshot of it through
//! [`MockDriver::state`](crate::MockDriver::state), the control API serves it as JSON, and the
//! state file holds exactly its JSON form. Maps are ordered so that the JSON is stable.
//!
//! Invariant: ids are `vol-`, `snap-` and `group-snap-` followed by the zero-padded value of the
//! shared counter [`MockState::next_id`], so they never repeat (also across restarts with a state
//! file) and their string order is their creation order, which list pagination relies on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Prefix of volume ids.
pub const VOLUME_ID_PREFIX: &str = "vol-";
/// Prefix of snapshot ids.
pub const SNAPSHOT_ID_PREFIX: &str = "snap-";
/// Prefix of group snapshot ids.
pub const GROUP_SNAPSHOT_ID_PREFIX: &str = "group-snap-";
/// Digits of the counter in an id.
const ID_DIGITS: usize = 10;

/// Everything the mock stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockState {
    /// Volumes by id.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Snapshots by id (including members of group snapshots).
    pub snapshots: BTreeMap<String, SnapshotRecord>,
    /// Group snapshots by id.
    pub group_snapshots: BTreeMap<String, GroupSnapshotRecord>,
    /// The counter behind every id; the next id uses `next_id + 1`.
    pub next_id: u64,
}

/// A volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeRecord {
    /// `volume_id`.
    pub id: String,
    /// The CreateVolume `name` (the idempotency key).
    pub name: String,
    /// Size in bytes.
    pub capacity_bytes: i64,
    /// CreateVolume `parameters`.
    pub parameters: BTreeMap<String, String>,
    /// Mutable parameters: from CreateVolume, updated by ControllerModifyVolume.
    pub mutable_parameters: BTreeMap<String, String>,
    /// `volume_context` returned to the CO.
    pub context: BTreeMap<String, String>,
    /// What the volume was pre-populated from.
    pub content_source: Option<ContentSource>,
    /// `accessible_topology`: one segment map per topology (empty without topology).
    pub accessible_topology: Vec<BTreeMap<String, String>>,
    /// Access types the volume was created for.
    pub access_types: BTreeSet<AccessType>,
    /// ControllerPublishVolume results by node id.
    pub publications: BTreeMap<String, Publication>,
    /// NodeStageVolume staging paths.
    pub node_staged_paths: BTreeSet<String>,
    /// NodePublishVolume target paths, with their `readonly` flag.
    pub node_published_paths: BTreeMap<String, bool>,
    /// Reported as `volume_condition` when VOLUME_CONDITION is advertised.
    pub condition: VolumeHealth,
}

/// Health reported for a volume (`VolumeCondition`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeHealth {
    /// `abnormal`.
    pub abnormal: bool,
    /// `message`.
    pub message: String,
}

/// The source a volume was created from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentSource {
    /// A snapshot id.
    Snapshot(String),
    /// A volume id (clone).
    Volume(String),
}

/// How a volume is accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessType {
    /// Raw block device.
    Block,
    /// Mounted filesystem.
    Mount,
}

/// One ControllerPublishVolume of a volume to a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Publication {
    /// The `readonly` flag.
    pub readonly: bool,
    /// The access mode, by its CSI name (e.g. `SINGLE_NODE_WRITER`).
    pub access_mode: String,
    /// The access type requested.
    pub access_type: Option<AccessType>,
    /// `fs_type` of a mount capability.
    pub fs_type: String,
    /// `mount_flags` of a mount capability.
    pub mount_flags: Vec<String>,
    /// The `publish_context` returned.
    pub publish_context: BTreeMap<String, String>,
}

/// A snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotRecord {
    /// `snapshot_id`.
    pub id: String,
    /// The CreateSnapshot `name`; for a member of a group, `<group name>/<source volume id>`.
    pub name: String,
    /// `source_volume_id`.
    pub source_volume_id: String,
    /// Size in bytes (the source volume's size when cut).
    pub size_bytes: i64,
    /// CreateSnapshot `parameters`.
    pub parameters: BTreeMap<String, String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_unix_ms: i64,
    /// The group snapshot this snapshot belongs to.
    pub group_snapshot_id: Option<String>,
}

/// A volume group snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupSnapshotRecord {
    /// `group_snapshot_id`.
    pub id: String,
    /// The CreateVolumeGroupSnapshot `name`.
    pub name: String,
    /// `source_volume_ids`, in request order.
    pub source_volume_ids: Vec<String>,
    /// Ids of the member snapshots, in the order of `source_volume_ids`.
    pub snapshot_ids: Vec<String>,
    /// `parameters`.
    pub parameters: BTreeMap<String, String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_unix_ms: i64,
}

impl MockState {
    /// The volume created with `name`, if any.
    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| v.name == name)
    }

    /// The stand-alone snapshot created with `name`, if any.
    pub fn snapshot_by_name(&self, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots
            .values()
            .find(|s| s.name == name && s.group_snapshot_id.is_none())
    }

    /// The group snapshot created with `name`, if any.
    pub fn group_snapshot_by_name(&self, name: &str) -> Option<&GroupSnapshotRecord> {
        self.group_snapshots.values().find(|g| g.name == name)
    }

    /// Bytes taken by all volumes.
    pub fn used_capacity(&self) -> i64 {
        self.volumes.values().map(|v| v.capacity_bytes).sum()
    }

    /// Every publication as `(volume id, node id, publication)`.
    pub fn publications(&self) -> Vec<(&str, &str, &Publication)> {
        self.volumes
            .values()
            .flat_map(|v| {
                v.publications
                    .iter()
                    .map(move |(node, p)| (v.id.as_str(), node.as_str(), p))
            })
            .collect()
    }

    /// Number of volumes published to `node_id`.
    pub fn volumes_on_node(&self, node_id: &str) -> usize {
        self.volumes
            .values()
            .filter(|v| v.publications.contains_key(node_id))
            .count()
    }

    /// Allocates the next id with `prefix`.
    pub(crate) fn allocate_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:0width$}", self.next_id, width = ID_DIGITS)
    }
}

/// Whether `token` has the form of an id with `prefix` (a valid pagination token).
pub(crate) fn is_id_with_prefix(token: &str, prefix: &str) -> bool {
    token.strip_prefix(prefix).is_some_and(|digits| {
        digits.len() == ID_DIGITS && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order_and_are_valid_tokens() {
        let mut state = MockState::default();
        let ids: Vec<String> = (0..12)
            .map(|_| state.allocate_id(VOLUME_ID_PREFIX))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids[0], "vol-0000000001");
        assert!(is_id_with_prefix(&ids[11], VOLUME_ID_PREFIX));
        assert!(!is_id_with_prefix(&ids[11], SNAPSHOT_ID_PREFIX));
        assert!(!is_id_with_prefix("vol-12", VOLUME_ID_PREFIX));
        assert!(!is_id_with_prefix("invalid-token", VOLUME_ID_PREFIX));
    }

    #[test]
    fn json_round_trips_and_tolerates_missing_fields() {
        let mut state = MockState::default();
        let id = state.allocate_id(VOLUME_ID_PREFIX);
        state.volumes.insert(
            id.clone(),
            VolumeRecord {
                id: id.clone(),
                name: "pvc-1".into(),
                capacity_bytes: 5,
                content_source: Some(ContentSource::Snapshot("snap-0000000009".into())),
                access_types: [AccessType::Mount].into(),
                publications: [(
                    "node-a".to_owned(),
                    Publication {
                        readonly: true,
                        ..Publication::default()
                    },
                )]
                .into(),
                ..VolumeRecord::default()
            },
        );
        let json = serde_json::to_string(&state).unwrap();
        assert!(
            json.contains(r#""content_source":{"snapshot":"snap-0000000009"}"#),
            "{json}"
        );
        let back: MockState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.volume_by_name("pvc-1").unwrap().id, id);
        assert_eq!(
            back.publications(),
            vec![(
                id.as_str(),
                "node-a",
                &back.volumes[&id].publications["node-a"]
            )]
        );
        assert_eq!(back.volumes_on_node("node-a"), 1);

        let sparse: MockState = serde_json::from_str(r#"{"volumes":{}}"#).unwrap();
        assert_eq!(sparse, MockState::default());
    }
}
