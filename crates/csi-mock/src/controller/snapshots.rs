//! CreateSnapshot, DeleteSnapshot, ListSnapshots and GetSnapshot, and when a snapshot is ready to
//! use (the configured delay after its creation).
//!
//! The members of a group snapshot are ordinary snapshots carrying the group id; they are created
//! and deleted with their group ([`group_snapshots`](super::group_snapshots)), never alone.

use csi::v1 as pb;
use tonic::Status;

use super::Backend;
use super::convert::to_btree;
use super::listing::page;
use super::validation::{MAX_NAME_BYTES, invalid, require};
use crate::config::ControllerCapability as Cap;
use crate::state::{SNAPSHOT_ID_PREFIX, SnapshotRecord};

impl Backend<'_> {
    pub(super) fn snapshot_ready(&self, s: &SnapshotRecord) -> bool {
        let delay = i64::try_from(self.config.snapshot_ready_delay.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.saturating_sub(s.created_at_unix_ms) >= delay
    }

    /// CreateSnapshot. Idempotent by `name`; the same name with another source volume is
    /// ALREADY_EXISTS; an unknown source is NOT_FOUND. `ready_to_use` turns true after the
    /// configured delay.
    pub fn create_snapshot(
        &mut self,
        req: pb::CreateSnapshotRequest,
    ) -> Result<pb::CreateSnapshotResponse, Status> {
        self.require_cap(Cap::CreateDeleteSnapshot)?;
        self.require_secrets_on_call(&req.secrets)?;
        require(!req.name.is_empty(), "name")?;
        if req.name.len() > MAX_NAME_BYTES {
            return Err(invalid(format!(
                "name is longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        require(!req.source_volume_id.is_empty(), "source_volume_id")?;
        if let Some(existing) = self.state.snapshot_by_name(&req.name) {
            if existing.source_volume_id != req.source_volume_id {
                return Err(Status::already_exists(format!(
                    "snapshot {} with name {:?} exists for source volume {}",
                    existing.id, req.name, existing.source_volume_id
                )));
            }
            return Ok(pb::CreateSnapshotResponse {
                snapshot: Some(self.snapshot_to_pb(existing)),
            });
        }
        let size = self
            .state
            .volumes
            .get(&req.source_volume_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "source volume {} does not exist",
                    req.source_volume_id
                ))
            })?
            .capacity_bytes;
        let id = self.state.allocate_id(SNAPSHOT_ID_PREFIX);
        let record = SnapshotRecord {
            id: id.clone(),
            name: req.name,
            source_volume_id: req.source_volume_id,
            size_bytes: size,
            parameters: to_btree(&req.parameters),
            created_at_unix_ms: self.now_ms,
            group_snapshot_id: None,
        };
        let snapshot = self.snapshot_to_pb(&record);
        self.state.snapshots.insert(id, record);
        Ok(pb::CreateSnapshotResponse {
            snapshot: Some(snapshot),
        })
    }

    /// DeleteSnapshot. An unknown id succeeds; a member of a group snapshot is INVALID_ARGUMENT
    /// (delete the group instead).
    pub fn delete_snapshot(
        &mut self,
        req: pb::DeleteSnapshotRequest,
    ) -> Result<pb::DeleteSnapshotResponse, Status> {
        self.require_cap(Cap::CreateDeleteSnapshot)?;
        self.require_secrets_on_call(&req.secrets)?;
        require(!req.snapshot_id.is_empty(), "snapshot_id")?;
        if let Some(snapshot) = self.state.snapshots.get(&req.snapshot_id) {
            if let Some(group) = &snapshot.group_snapshot_id {
                return Err(invalid(format!(
                    "snapshot {} is part of group snapshot {group}: delete the group",
                    req.snapshot_id
                )));
            }
            self.state.snapshots.remove(&req.snapshot_id);
        }
        Ok(pb::DeleteSnapshotResponse {})
    }

    /// ListSnapshots, in creation order, filtered by `snapshot_id` and `source_volume_id`;
    /// pagination as ListVolumes.
    pub fn list_snapshots(
        &mut self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse, Status> {
        self.require_cap(Cap::ListSnapshots)?;
        let (snapshots, next_token) = page(
            &self.state.snapshots,
            req.max_entries,
            &req.starting_token,
            SNAPSHOT_ID_PREFIX,
            |s| {
                (req.snapshot_id.is_empty() || s.id == req.snapshot_id)
                    && (req.source_volume_id.is_empty()
                        || s.source_volume_id == req.source_volume_id)
            },
        )?;
        Ok(pb::ListSnapshotsResponse {
            entries: snapshots
                .into_iter()
                .map(|s| pb::list_snapshots_response::Entry {
                    snapshot: Some(self.snapshot_to_pb(s)),
                })
                .collect(),
            next_token,
        })
    }

    /// GetSnapshot: NOT_FOUND for an unknown id.
    pub fn get_snapshot(
        &mut self,
        req: pb::GetSnapshotRequest,
    ) -> Result<pb::GetSnapshotResponse, Status> {
        self.require_cap(Cap::GetSnapshot)?;
        require(!req.snapshot_id.is_empty(), "snapshot_id")?;
        let snapshot = self.state.snapshots.get(&req.snapshot_id).ok_or_else(|| {
            Status::not_found(format!("snapshot {} does not exist", req.snapshot_id))
        })?;
        Ok(pb::GetSnapshotResponse {
            snapshot: Some(self.snapshot_to_pb(snapshot)),
        })
    }
}
