//! ControllerPublishVolume and ControllerUnpublishVolume: a volume's publications per node,
//! following the access modes (a single-node publication excludes every other node) and the
//! node attach limit.

use std::collections::BTreeMap;

use csi::v1 as pb;
use csi::v1::volume_capability::access_mode::Mode;
use tonic::Status;

use super::Backend;
use super::convert::to_hash;
use super::validation::{check_capability, invalid, require};
use crate::config::{ControllerCapability as Cap, DEVICE_PATH_CONTEXT_KEY};
use crate::state::Publication;

fn is_multi_node(mode: Mode) -> bool {
    matches!(
        mode,
        Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter
    )
}

impl Backend<'_> {
    /// ControllerPublishVolume. Idempotent per (volume, node); a different capability or
    /// `readonly` on the same node is ALREADY_EXISTS; another node while either publication is
    /// single-node is FAILED_PRECONDITION (naming the node); a node at its attach limit is
    /// RESOURCE_EXHAUSTED; unknown volume or node is NOT_FOUND.
    pub fn controller_publish_volume(
        &mut self,
        req: pb::ControllerPublishVolumeRequest,
    ) -> Result<pb::ControllerPublishVolumeResponse, Status> {
        self.require_cap(Cap::PublishUnpublishVolume)?;
        self.require_secrets_on_call(&req.secrets)?;
        require(!req.volume_id.is_empty(), "volume_id")?;
        require(!req.node_id.is_empty(), "node_id")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("volume_capability is required"))?;
        let cap = check_capability(self.config, cap)?;
        if req.readonly && !self.config.has(Cap::PublishReadonly) {
            return Err(invalid("readonly needs the PUBLISH_READONLY capability"));
        }
        let volume =
            self.state.volumes.get(&req.volume_id).ok_or_else(|| {
                Status::not_found(format!("volume {} does not exist", req.volume_id))
            })?;
        if !self.config.node_exists(&req.node_id) {
            return Err(Status::not_found(format!(
                "node {} does not exist",
                req.node_id
            )));
        }
        if !volume.access_types.contains(&cap.access_type) {
            return Err(invalid(format!(
                "volume {} was not created for {:?} access",
                req.volume_id, cap.access_type
            )));
        }
        let wanted = Publication {
            readonly: req.readonly,
            access_mode: cap.mode.as_str_name().to_owned(),
            access_type: Some(cap.access_type),
            fs_type: cap.fs_type,
            mount_flags: cap.mount_flags,
            publish_context: BTreeMap::from([(
                DEVICE_PATH_CONTEXT_KEY.to_owned(),
                format!("/dev/mock/{}", req.volume_id),
            )]),
        };
        if let Some(existing) = volume.publications.get(&req.node_id) {
            if *existing == wanted {
                return Ok(pb::ControllerPublishVolumeResponse {
                    publish_context: to_hash(&existing.publish_context),
                });
            }
            return Err(Status::already_exists(format!(
                "volume {} is published to node {} with a different capability or readonly flag",
                req.volume_id, req.node_id
            )));
        }
        let single_node =
            |p: &Publication| !Mode::from_str_name(&p.access_mode).is_some_and(is_multi_node);
        if let Some((other, _)) = volume
            .publications
            .iter()
            .find(|(_, p)| !is_multi_node(cap.mode) || single_node(p))
        {
            return Err(Status::failed_precondition(format!(
                "volume {} is already published to node {other}",
                req.volume_id
            )));
        }
        let max = self.config.max_volumes_per_node;
        if max > 0 && self.state.volumes_on_node(&req.node_id) as u64 >= max {
            return Err(Status::resource_exhausted(format!(
                "node {} already has the maximum of {max} volumes published",
                req.node_id
            )));
        }
        let publish_context = to_hash(&wanted.publish_context);
        if let Some(volume) = self.state.volumes.get_mut(&req.volume_id) {
            volume.publications.insert(req.node_id, wanted);
        }
        Ok(pb::ControllerPublishVolumeResponse { publish_context })
    }

    /// ControllerUnpublishVolume. An unknown volume, unknown node or absent publication
    /// succeeds (the volume is assumed unpublished); an empty `node_id` unpublishes from all.
    pub fn controller_unpublish_volume(
        &mut self,
        req: pb::ControllerUnpublishVolumeRequest,
    ) -> Result<pb::ControllerUnpublishVolumeResponse, Status> {
        self.require_cap(Cap::PublishUnpublishVolume)?;
        self.require_secrets_on_call(&req.secrets)?;
        require(!req.volume_id.is_empty(), "volume_id")?;
        if let Some(volume) = self.state.volumes.get_mut(&req.volume_id) {
            if req.node_id.is_empty() {
                volume.publications.clear();
            } else {
                volume.publications.remove(&req.node_id);
            }
        }
        Ok(pb::ControllerUnpublishVolumeResponse {})
    }
}
