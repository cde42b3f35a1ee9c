//! What the controller reports about itself and its pool: ControllerGetCapabilities,
//! ListVolumes and GetCapacity; and the pagination that ListVolumes and ListSnapshots share.

use std::collections::BTreeMap;
use std::ops::Bound;

use csi::v1 as pb;
use tonic::Status;

use super::Backend;
use super::validation::{check_capability, invalid};
use crate::config::ControllerCapability as Cap;
use crate::state::{VOLUME_ID_PREFIX, is_id_with_prefix};

/// Reads a pagination request: the entries after `starting_token`, at most `max_entries`.
pub(super) fn page<'m, V>(
    map: &'m BTreeMap<String, V>,
    max_entries: i32,
    starting_token: &str,
    prefix: &str,
    filter: impl Fn(&V) -> bool,
) -> Result<(Vec<&'m V>, String), Status> {
    if max_entries < 0 {
        return Err(invalid("max_entries must not be negative"));
    }
    let start = if starting_token.is_empty() {
        Bound::Unbounded
    } else if is_id_with_prefix(starting_token, prefix) {
        // The token is the last id returned; ids only grow, so deletions never invalidate it.
        Bound::Excluded(starting_token.to_owned())
    } else {
        return Err(Status::aborted(format!(
            "invalid starting_token {starting_token:?}"
        )));
    };
    let limit = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let mut matching = map
        .range((start, Bound::Unbounded))
        .filter(|(_, v)| filter(v));
    let entries: Vec<(&String, &V)> = matching.by_ref().take(limit).collect();
    let next_token = match (entries.last(), matching.next()) {
        (Some((last, _)), Some(_)) => (*last).clone(),
        _ => String::new(),
    };
    Ok((entries.into_iter().map(|(_, v)| v).collect(), next_token))
}

impl Backend<'_> {
    /// ControllerGetCapabilities: the configured set.
    pub fn controller_get_capabilities(
        &mut self,
        _req: pb::ControllerGetCapabilitiesRequest,
    ) -> Result<pb::ControllerGetCapabilitiesResponse, Status> {
        use pb::controller_service_capability::{Rpc, Type};
        Ok(pb::ControllerGetCapabilitiesResponse {
            capabilities: self
                .config
                .controller_capabilities
                .iter()
                .map(|cap| pb::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc {
                        r#type: (*cap).into(),
                    })),
                })
                .collect(),
        })
    }

    /// ListVolumes, in creation order. The token is the id of the last volume returned, so
    /// deleting volumes between pages never invalidates it; anything not shaped like a volume id
    /// is ABORTED. Status carries published nodes and condition when those capabilities are on.
    pub fn list_volumes(
        &mut self,
        req: pb::ListVolumesRequest,
    ) -> Result<pb::ListVolumesResponse, Status> {
        self.require_cap(Cap::ListVolumes)?;
        let (volumes, next_token) = page(
            &self.state.volumes,
            req.max_entries,
            &req.starting_token,
            VOLUME_ID_PREFIX,
            |_| true,
        )?;
        let with_nodes = self.config.has(Cap::ListVolumesPublishedNodes);
        let with_condition = self.config.has(Cap::VolumeCondition);
        let entries = volumes
            .into_iter()
            .map(|v| pb::list_volumes_response::Entry {
                volume: Some(self.volume_to_pb(v)),
                status: (with_nodes || with_condition).then(|| {
                    pb::list_volumes_response::VolumeStatus {
                        published_node_ids: if with_nodes {
                            v.publications.keys().cloned().collect()
                        } else {
                            Vec::new()
                        },
                        volume_condition: self.volume_condition(v),
                    }
                }),
            })
            .collect();
        Ok(pb::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    /// GetCapacity: the free bytes of the pool (`i64::MAX` when unlimited), or 0 for a topology
    /// segment outside the configured zones; `maximum_volume_size` when configured.
    pub fn get_capacity(
        &mut self,
        req: pb::GetCapacityRequest,
    ) -> Result<pb::GetCapacityResponse, Status> {
        self.require_cap(Cap::GetCapacity)?;
        for cap in &req.volume_capabilities {
            check_capability(self.config, cap)?;
        }
        let in_zone = match (&self.config.topology, &req.accessible_topology) {
            (Some(topology), Some(segment)) => segment
                .segments
                .get(&topology.key)
                .is_some_and(|z| topology.has_zone(z)),
            _ => true,
        };
        let free = self.config.total_capacity.map_or(i64::MAX, |total| {
            (total - self.state.used_capacity()).max(0)
        });
        Ok(pb::GetCapacityResponse {
            available_capacity: if in_zone { free } else { 0 },
            maximum_volume_size: self.config.max_volume_size,
            minimum_volume_size: None,
        })
    }
}
