//! The GroupController service: GroupControllerGetCapabilities, CreateVolumeGroupSnapshot,
//! DeleteVolumeGroupSnapshot and GetVolumeGroupSnapshot, all UNIMPLEMENTED unless the service is
//! enabled.
//!
//! A group's member snapshots are kept with the other snapshots, carry the group id and are
//! deleted with the group.

use std::collections::BTreeSet;

use csi::v1 as pb;
use tonic::Status;

use super::Backend;
use super::convert::to_btree;
use super::validation::{invalid, require};
use crate::state::{
    GROUP_SNAPSHOT_ID_PREFIX, GroupSnapshotRecord, SNAPSHOT_ID_PREFIX, SnapshotRecord,
};

impl Backend<'_> {
    /// GroupControllerGetCapabilities: CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT.
    pub fn group_controller_get_capabilities(
        &mut self,
        _req: pb::GroupControllerGetCapabilitiesRequest,
    ) -> Result<pb::GroupControllerGetCapabilitiesResponse, Status> {
        use pb::group_controller_service_capability::{Rpc, Type, rpc};
        self.require_group()?;
        Ok(pb::GroupControllerGetCapabilitiesResponse {
            capabilities: vec![pb::GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot.into(),
                })),
            }],
        })
    }

    /// CreateVolumeGroupSnapshot. Idempotent by `name` with the same set of source volumes and
    /// parameters, else ALREADY_EXISTS; an unknown source volume is NOT_FOUND. Each member
    /// snapshot is named `<group name>/<volume id>` and carries the group id.
    pub fn create_volume_group_snapshot(
        &mut self,
        req: pb::CreateVolumeGroupSnapshotRequest,
    ) -> Result<pb::CreateVolumeGroupSnapshotResponse, Status> {
        self.require_group()?;
        require(!req.name.is_empty(), "name")?;
        require(!req.source_volume_ids.is_empty(), "source_volume_ids")?;
        let sources: BTreeSet<&String> = req.source_volume_ids.iter().collect();
        if sources.len() != req.source_volume_ids.len() || sources.contains(&String::new()) {
            return Err(invalid(
                "source_volume_ids must be distinct, non-empty volume ids",
            ));
        }
        let parameters = to_btree(&req.parameters);
        if let Some(existing) = self.state.group_snapshot_by_name(&req.name) {
            let existing_sources: BTreeSet<&String> = existing.source_volume_ids.iter().collect();
            if existing_sources != sources || existing.parameters != parameters {
                return Err(Status::already_exists(format!(
                    "group snapshot {} with name {:?} exists with other source volumes or parameters",
                    existing.id, req.name
                )));
            }
            return Ok(pb::CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(self.group_to_pb(existing)),
            });
        }
        let sizes: Vec<i64> = req
            .source_volume_ids
            .iter()
            .map(|id| {
                self.state
                    .volumes
                    .get(id)
                    .map(|v| v.capacity_bytes)
                    .ok_or_else(|| Status::not_found(format!("source volume {id} does not exist")))
            })
            .collect::<Result<_, _>>()?;
        let group_id = self.state.allocate_id(GROUP_SNAPSHOT_ID_PREFIX);
        let mut snapshot_ids = Vec::with_capacity(sizes.len());
        for (volume_id, size) in req.source_volume_ids.iter().zip(sizes) {
            let id = self.state.allocate_id(SNAPSHOT_ID_PREFIX);
            self.state.snapshots.insert(
                id.clone(),
                SnapshotRecord {
                    id: id.clone(),
                    name: format!("{}/{volume_id}", req.name),
                    source_volume_id: volume_id.clone(),
                    size_bytes: size,
                    parameters: parameters.clone(),
                    created_at_unix_ms: self.now_ms,
                    group_snapshot_id: Some(group_id.clone()),
                },
            );
            snapshot_ids.push(id);
        }
        let record = GroupSnapshotRecord {
            id: group_id.clone(),
            name: req.name,
            source_volume_ids: req.source_volume_ids,
            snapshot_ids,
            parameters,
            created_at_unix_ms: self.now_ms,
        };
        let group = self.group_to_pb(&record);
        self.state.group_snapshots.insert(group_id, record);
        Ok(pb::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group),
        })
    }

    fn check_group_members(
        group: &GroupSnapshotRecord,
        snapshot_ids: &[String],
    ) -> Result<(), Status> {
        if snapshot_ids.is_empty() {
            return Ok(());
        }
        let given: BTreeSet<&String> = snapshot_ids.iter().collect();
        let members: BTreeSet<&String> = group.snapshot_ids.iter().collect();
        if given != members {
            return Err(invalid(format!(
                "snapshot_ids {snapshot_ids:?} do not match the members {:?} of group snapshot {}",
                group.snapshot_ids, group.id
            )));
        }
        Ok(())
    }

    /// DeleteVolumeGroupSnapshot: deletes the group and its members. An unknown id succeeds;
    /// `snapshot_ids` that do not match the members are INVALID_ARGUMENT.
    pub fn delete_volume_group_snapshot(
        &mut self,
        req: pb::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<pb::DeleteVolumeGroupSnapshotResponse, Status> {
        self.require_group()?;
        require(!req.group_snapshot_id.is_empty(), "group_snapshot_id")?;
        if let Some(group) = self.state.group_snapshots.get(&req.group_snapshot_id) {
            Self::check_group_members(group, &req.snapshot_ids)?;
            if let Some(group) = self.state.group_snapshots.remove(&req.group_snapshot_id) {
                for id in &group.snapshot_ids {
                    self.state.snapshots.remove(id);
                }
            }
        }
        Ok(pb::DeleteVolumeGroupSnapshotResponse {})
    }

    /// GetVolumeGroupSnapshot: NOT_FOUND for an unknown id; mismatching `snapshot_ids` are
    /// INVALID_ARGUMENT.
    pub fn get_volume_group_snapshot(
        &mut self,
        req: pb::GetVolumeGroupSnapshotRequest,
    ) -> Result<pb::GetVolumeGroupSnapshotResponse, Status> {
        self.require_group()?;
        require(!req.group_snapshot_id.is_empty(), "group_snapshot_id")?;
        let group = self
            .state
            .group_snapshots
            .get(&req.group_snapshot_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "group snapshot {} does not exist",
                    req.group_snapshot_id
                ))
            })?;
        Self::check_group_members(group, &req.snapshot_ids)?;
        Ok(pb::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.group_to_pb(group)),
        })
    }
}
