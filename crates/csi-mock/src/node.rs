//! The Node RPCs, kept to bookkeeping: enough for a CO (or csi-sanity) to learn the node id,
//! its attach limit and its topology, and to stage and publish volumes on paths that are only
//! recorded in [`MockState`](crate::MockState), never mounted.
//!
//! No node capability is advertised, so COs do not stage; NodeStageVolume still works when called.

use csi::v1 as pb;
use tonic::Status;

use crate::controller::{Backend, check_capability, invalid};
use crate::state::VolumeRecord;

impl Backend<'_> {
    fn node_volume(&mut self, volume_id: &str) -> Result<&mut VolumeRecord, Status> {
        if volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        self.state
            .volumes
            .get_mut(volume_id)
            .ok_or_else(|| Status::not_found(format!("volume {volume_id} does not exist")))
    }

    /// NodeGetInfo: the configured node id, attach limit and (with topology) zone.
    pub fn node_get_info(
        &mut self,
        _req: pb::NodeGetInfoRequest,
    ) -> Result<pb::NodeGetInfoResponse, Status> {
        Ok(pb::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: i64::try_from(self.config.max_volumes_per_node)
                .unwrap_or(i64::MAX),
            accessible_topology: self.config.topology.as_ref().map(|t| pb::Topology {
                segments: [(t.key.clone(), t.default_zone().to_owned())].into(),
            }),
        })
    }

    /// NodeGetCapabilities: EXPAND_VOLUME when configured (`node_expand_volume`), else none.
    pub fn node_get_capabilities(
        &mut self,
        _req: pb::NodeGetCapabilitiesRequest,
    ) -> Result<pb::NodeGetCapabilitiesResponse, Status> {
        use pb::node_service_capability::{Rpc, Type, rpc};
        let capabilities = if self.config.node_expand_volume {
            vec![pb::NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::ExpandVolume as i32,
                })),
            }]
        } else {
            Vec::new()
        };
        Ok(pb::NodeGetCapabilitiesResponse { capabilities })
    }

    /// NodeStageVolume: records the staging path (idempotent).
    pub fn node_stage_volume(
        &mut self,
        req: pb::NodeStageVolumeRequest,
    ) -> Result<pb::NodeStageVolumeResponse, Status> {
        if req.staging_target_path.is_empty() {
            return Err(invalid("staging_target_path is required"));
        }
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("volume_capability is required"))?;
        check_capability(self.config, cap)?;
        let volume = self.node_volume(&req.volume_id)?;
        volume.node_staged_paths.insert(req.staging_target_path);
        Ok(pb::NodeStageVolumeResponse {})
    }

    /// NodeUnstageVolume: forgets the staging path (idempotent).
    pub fn node_unstage_volume(
        &mut self,
        req: pb::NodeUnstageVolumeRequest,
    ) -> Result<pb::NodeUnstageVolumeResponse, Status> {
        if req.staging_target_path.is_empty() {
            return Err(invalid("staging_target_path is required"));
        }
        let volume = self.node_volume(&req.volume_id)?;
        volume.node_staged_paths.remove(&req.staging_target_path);
        Ok(pb::NodeUnstageVolumeResponse {})
    }

    /// NodePublishVolume: records the target path; the same path with another `readonly` is
    /// ALREADY_EXISTS.
    pub fn node_publish_volume(
        &mut self,
        req: pb::NodePublishVolumeRequest,
    ) -> Result<pb::NodePublishVolumeResponse, Status> {
        if req.target_path.is_empty() {
            return Err(invalid("target_path is required"));
        }
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("volume_capability is required"))?;
        check_capability(self.config, cap)?;
        let volume = self.node_volume(&req.volume_id)?;
        match volume.node_published_paths.get(&req.target_path) {
            Some(readonly) if *readonly != req.readonly => Err(Status::already_exists(format!(
                "volume {} is published at {} with readonly={readonly}",
                req.volume_id, req.target_path
            ))),
            _ => {
                volume
                    .node_published_paths
                    .insert(req.target_path, req.readonly);
                Ok(pb::NodePublishVolumeResponse {})
            }
        }
    }

    /// NodeUnpublishVolume: forgets the target path (idempotent).
    pub fn node_unpublish_volume(
        &mut self,
        req: pb::NodeUnpublishVolumeRequest,
    ) -> Result<pb::NodeUnpublishVolumeResponse, Status> {
        if req.target_path.is_empty() {
            return Err(invalid("target_path is required"));
        }
        let volume = self.node_volume(&req.volume_id)?;
        volume.node_published_paths.remove(&req.target_path);
        Ok(pb::NodeUnpublishVolumeResponse {})
    }

    /// NodeGetVolumeStats: the volume's capacity as total, nothing used.
    pub fn node_get_volume_stats(
        &mut self,
        req: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
        use pb::volume_usage::Unit;
        if req.volume_path.is_empty() {
            return Err(invalid("volume_path is required"));
        }
        let volume = self.node_volume(&req.volume_id)?;
        Ok(pb::NodeGetVolumeStatsResponse {
            usage: vec![pb::VolumeUsage {
                available: volume.capacity_bytes,
                total: volume.capacity_bytes,
                used: 0,
                unit: Unit::Bytes.into(),
            }],
            volume_condition: None,
        })
    }

    /// NodeExpandVolume: reports the controller-side capacity (at least `required_bytes`).
    pub fn node_expand_volume(
        &mut self,
        req: pb::NodeExpandVolumeRequest,
    ) -> Result<pb::NodeExpandVolumeResponse, Status> {
        let volume = self.node_volume(&req.volume_id)?;
        let required = req.capacity_range.map_or(0, |r| r.required_bytes);
        Ok(pb::NodeExpandVolumeResponse {
            capacity_bytes: volume.capacity_bytes.max(required),
        })
    }
}
