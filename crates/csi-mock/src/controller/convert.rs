//! State records to their protobuf form: volumes (with their condition when VOLUME_CONDITION is
//! on), snapshots (ready after the configured delay), group snapshots (ready when every member
//! is); and the map and time conversions between the wire and the state.

use std::collections::{BTreeMap, HashMap};

use csi::v1 as pb;

use super::Backend;
use crate::config::ControllerCapability as Cap;
use crate::state::{ContentSource, GroupSnapshotRecord, SnapshotRecord, VolumeRecord};

pub(super) fn to_btree(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn to_hash(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // Always in 0..1_000_000_000, so the cast cannot truncate.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

impl Backend<'_> {
    pub(super) fn volume_to_pb(&self, v: &VolumeRecord) -> pb::Volume {
        pb::Volume {
            capacity_bytes: v.capacity_bytes,
            volume_id: v.id.clone(),
            volume_context: to_hash(&v.context),
            content_source: v.content_source.as_ref().map(|s| pb::VolumeContentSource {
                r#type: Some(match s {
                    ContentSource::Snapshot(id) => pb::volume_content_source::Type::Snapshot(
                        pb::volume_content_source::SnapshotSource {
                            snapshot_id: id.clone(),
                        },
                    ),
                    ContentSource::Volume(id) => pb::volume_content_source::Type::Volume(
                        pb::volume_content_source::VolumeSource {
                            volume_id: id.clone(),
                        },
                    ),
                }),
            }),
            accessible_topology: v
                .accessible_topology
                .iter()
                .map(|segments| pb::Topology {
                    segments: to_hash(segments),
                })
                .collect(),
        }
    }

    pub(super) fn volume_condition(&self, v: &VolumeRecord) -> Option<pb::VolumeCondition> {
        self.config
            .has(Cap::VolumeCondition)
            .then(|| pb::VolumeCondition {
                abnormal: v.condition.abnormal,
                message: v.condition.message.clone(),
            })
    }

    pub(super) fn snapshot_to_pb(&self, s: &SnapshotRecord) -> pb::Snapshot {
        pb::Snapshot {
            size_bytes: s.size_bytes,
            snapshot_id: s.id.clone(),
            source_volume_id: s.source_volume_id.clone(),
            creation_time: Some(timestamp(s.created_at_unix_ms)),
            ready_to_use: self.snapshot_ready(s),
            group_snapshot_id: s.group_snapshot_id.clone().unwrap_or_default(),
        }
    }

    pub(super) fn group_to_pb(&self, g: &GroupSnapshotRecord) -> pb::VolumeGroupSnapshot {
        let snapshots: Vec<pb::Snapshot> = g
            .snapshot_ids
            .iter()
            .filter_map(|id| self.state.snapshots.get(id))
            .map(|s| self.snapshot_to_pb(s))
            .collect();
        pb::VolumeGroupSnapshot {
            group_snapshot_id: g.id.clone(),
            ready_to_use: snapshots.iter().all(|s| s.ready_to_use),
            snapshots,
            creation_time: Some(timestamp(g.created_at_unix_ms)),
        }
    }
}
