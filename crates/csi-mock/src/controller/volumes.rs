//! The volume lifecycle: CreateVolume (sizing, content sources, zone placement, idempotency by
//! name), DeleteVolume, ValidateVolumeCapabilities, ControllerExpandVolume, ControllerGetVolume
//! and ControllerModifyVolume.
//!
//! Capacity is accounted against the pool here: creating or growing a volume past the size limit
//! or the free capacity is OUT_OF_RANGE.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use csi::v1 as pb;
use tonic::Status;

use super::Backend;
use super::convert::to_btree;
use super::validation::{CheckedCapability, MAX_NAME_BYTES, check_capability, invalid, require};
use crate::config::{
    ControllerCapability as Cap, DEFAULT_VOLUME_SIZE, TopologyConfig, VOLUME_NAME_CONTEXT_KEY,
};
use crate::state::{AccessType, ContentSource, VOLUME_ID_PREFIX, VolumeRecord};

/// Picks the zone of a new volume: the first preferred zone that is also requisite (or exists,
/// without requisite), else the first requisite zone that exists, else the default zone.
fn choose_zone(
    topology: &TopologyConfig,
    requirement: Option<&pb::TopologyRequirement>,
) -> Result<String, Status> {
    let zone_of = |t: &pb::Topology, what: &str| -> Result<String, Status> {
        t.segments.get(&topology.key).cloned().ok_or_else(|| {
            invalid(format!(
                "{what} topology {:?} lacks the segment {:?}",
                t.segments, topology.key
            ))
        })
    };
    let Some(req) = requirement else {
        return Ok(topology.default_zone().to_owned());
    };
    let requisite: Vec<String> = req
        .requisite
        .iter()
        .map(|t| zone_of(t, "requisite"))
        .collect::<Result<_, _>>()?;
    let preferred: Vec<String> = req
        .preferred
        .iter()
        .map(|t| zone_of(t, "preferred"))
        .collect::<Result<_, _>>()?;
    let usable: Vec<&String> = requisite.iter().filter(|z| topology.has_zone(z)).collect();
    if !requisite.is_empty() && usable.is_empty() {
        return Err(Status::resource_exhausted(format!(
            "cannot provision in the requisite zones {requisite:?}"
        )));
    }
    let allowed = |z: &String| {
        if requisite.is_empty() {
            topology.has_zone(z)
        } else {
            usable.contains(&z)
        }
    };
    if let Some(zone) = preferred.iter().find(|z| allowed(z)) {
        return Ok(zone.clone());
    }
    Ok(usable
        .first()
        .map_or_else(|| topology.default_zone().to_owned(), |z| (*z).clone()))
}

impl Backend<'_> {
    fn check_mutable_parameters(&self, params: &HashMap<String, String>) -> Result<(), Status> {
        if params.is_empty() {
            return Ok(());
        }
        if !self.config.has(Cap::ModifyVolume) {
            return Err(invalid(
                "mutable_parameters need the MODIFY_VOLUME capability",
            ));
        }
        if let Some(allowed) = &self.config.mutable_parameter_keys {
            let mut unsupported: Vec<&String> =
                params.keys().filter(|k| !allowed.contains(*k)).collect();
            if !unsupported.is_empty() {
                unsupported.sort();
                return Err(invalid(format!(
                    "unsupported mutable parameters {unsupported:?} (supported: {allowed:?})"
                )));
            }
        }
        Ok(())
    }

    /// Resolves a content source to its record form and the source's size.
    fn resolve_source(
        &self,
        source: Option<&pb::VolumeContentSource>,
    ) -> Result<Option<(ContentSource, i64)>, Status> {
        use pb::volume_content_source::Type;
        let Some(source) = source else {
            return Ok(None);
        };
        match &source.r#type {
            None => Err(invalid(
                "volume_content_source needs a snapshot or a volume",
            )),
            Some(Type::Snapshot(s)) => {
                if !self.config.has(Cap::CreateDeleteSnapshot) {
                    return Err(invalid(
                        "creating from a snapshot needs the CREATE_DELETE_SNAPSHOT capability",
                    ));
                }
                require(
                    !s.snapshot_id.is_empty(),
                    "volume_content_source.snapshot.snapshot_id",
                )?;
                let snap = self.state.snapshots.get(&s.snapshot_id).ok_or_else(|| {
                    Status::not_found(format!("source snapshot {} does not exist", s.snapshot_id))
                })?;
                if !self.snapshot_ready(snap) {
                    return Err(Status::unavailable(format!(
                        "source snapshot {} is not ready to use yet",
                        s.snapshot_id
                    )));
                }
                Ok(Some((
                    ContentSource::Snapshot(snap.id.clone()),
                    snap.size_bytes,
                )))
            }
            Some(Type::Volume(v)) => {
                if !self.config.has(Cap::CloneVolume) {
                    return Err(invalid("cloning needs the CLONE_VOLUME capability"));
                }
                require(
                    !v.volume_id.is_empty(),
                    "volume_content_source.volume.volume_id",
                )?;
                let vol = self.state.volumes.get(&v.volume_id).ok_or_else(|| {
                    Status::not_found(format!("source volume {} does not exist", v.volume_id))
                })?;
                Ok(Some((
                    ContentSource::Volume(vol.id.clone()),
                    vol.capacity_bytes,
                )))
            }
        }
    }

    /// Fails with OUT_OF_RANGE unless `size` fits the volume size limit and, replacing
    /// `replacing` bytes, the pool.
    fn check_space(&self, size: i64, replacing: i64) -> Result<(), Status> {
        if let Some(max) = self.config.max_volume_size
            && size > max
        {
            return Err(Status::out_of_range(format!(
                "{size} bytes exceed the maximum volume size of {max} bytes"
            )));
        }
        if let Some(total) = self.config.total_capacity {
            let free = total - self.state.used_capacity() + replacing;
            if size > free {
                return Err(Status::out_of_range(format!(
                    "{size} bytes exceed the free capacity of {free} bytes"
                )));
            }
        }
        Ok(())
    }

    /// CreateVolume. Idempotent by `name`: a volume with that name is returned when compatible
    /// (capacity within the range, same parameters, mutable parameters and content source,
    /// requested access types supported, placed in a requisite zone), else ALREADY_EXISTS. New
    /// volumes get `required_bytes`, else the source's size, else 1 GiB capped by `limit_bytes`;
    /// OUT_OF_RANGE when that is smaller than the source, larger than the maximum volume size or
    /// than the free capacity.
    pub fn create_volume(
        &mut self,
        req: pb::CreateVolumeRequest,
    ) -> Result<pb::CreateVolumeResponse, Status> {
        self.require_cap(Cap::CreateDeleteVolume)?;
        self.require_secrets(&req.secrets)?;
        require(!req.name.is_empty(), "name")?;
        if req.name.len() > MAX_NAME_BYTES {
            return Err(invalid(format!(
                "name is longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        require(!req.volume_capabilities.is_empty(), "volume_capabilities")?;
        let access_types: BTreeSet<AccessType> = req
            .volume_capabilities
            .iter()
            .map(|c| check_capability(self.config, c).map(|c| c.access_type))
            .collect::<Result<_, _>>()?;
        self.check_mutable_parameters(&req.mutable_parameters)?;
        let range = req.capacity_range.unwrap_or_default();
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(invalid("capacity_range must not be negative"));
        }
        if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
            return Err(Status::out_of_range(format!(
                "required_bytes {} exceed limit_bytes {}",
                range.required_bytes, range.limit_bytes
            )));
        }
        let source = self.resolve_source(req.volume_content_source.as_ref())?;
        let zone = self
            .config
            .topology
            .as_ref()
            .map(|t| choose_zone(t, req.accessibility_requirements.as_ref()).map(|z| (t, z)))
            .transpose()?;
        let parameters = to_btree(&req.parameters);
        let mutable_parameters = to_btree(&req.mutable_parameters);

        if let Some(existing) = self.state.volume_by_name(&req.name) {
            let mut conflicts = Vec::new();
            if range.required_bytes > 0 && existing.capacity_bytes < range.required_bytes
                || range.limit_bytes > 0 && existing.capacity_bytes > range.limit_bytes
            {
                conflicts.push("capacity_range");
            }
            if existing.parameters != parameters {
                conflicts.push("parameters");
            }
            if existing.mutable_parameters != mutable_parameters {
                conflicts.push("mutable_parameters");
            }
            if existing.content_source != source.as_ref().map(|(s, _)| s.clone()) {
                conflicts.push("volume_content_source");
            }
            if !access_types.is_subset(&existing.access_types) {
                conflicts.push("volume_capabilities");
            }
            if let (Some((topology, _)), Some(req_topology)) =
                (&zone, req.accessibility_requirements.as_ref())
                && !req_topology.requisite.is_empty()
            {
                let placed = existing
                    .accessible_topology
                    .iter()
                    .filter_map(|s| s.get(&topology.key))
                    .any(|z| {
                        req_topology
                            .requisite
                            .iter()
                            .any(|t| t.segments.get(&topology.key) == Some(z))
                    });
                if !placed {
                    conflicts.push("accessibility_requirements");
                }
            }
            if !conflicts.is_empty() {
                return Err(Status::already_exists(format!(
                    "volume {} with name {:?} exists with a different {}",
                    existing.id,
                    req.name,
                    conflicts.join(", ")
                )));
            }
            return Ok(pb::CreateVolumeResponse {
                volume: Some(self.volume_to_pb(existing)),
            });
        }

        let source_size = source.as_ref().map(|(_, size)| *size);
        let size = if range.required_bytes > 0 {
            range.required_bytes
        } else {
            let natural = source_size.unwrap_or(DEFAULT_VOLUME_SIZE);
            if range.limit_bytes > 0 {
                natural.min(range.limit_bytes)
            } else {
                natural
            }
        };
        if let Some(source_size) = source_size
            && size < source_size
        {
            return Err(Status::out_of_range(format!(
                "{size} bytes are less than the {source_size} bytes of the source"
            )));
        }
        self.check_space(size, 0)?;

        let id = self.state.allocate_id(VOLUME_ID_PREFIX);
        let mut context = parameters.clone();
        context.insert(VOLUME_NAME_CONTEXT_KEY.to_owned(), req.name.clone());
        let record = VolumeRecord {
            id: id.clone(),
            name: req.name,
            capacity_bytes: size,
            parameters,
            mutable_parameters,
            context,
            content_source: source.map(|(s, _)| s),
            accessible_topology: zone
                .map(|(t, z)| vec![BTreeMap::from([(t.key.clone(), z)])])
                .unwrap_or_default(),
            access_types,
            ..VolumeRecord::default()
        };
        let volume = self.volume_to_pb(&record);
        self.state.volumes.insert(id, record);
        Ok(pb::CreateVolumeResponse {
            volume: Some(volume),
        })
    }

    /// DeleteVolume. An unknown id succeeds; a volume still published to a node fails with
    /// FAILED_PRECONDITION (volume in use). Snapshots are independent of their source volume.
    pub fn delete_volume(
        &mut self,
        req: pb::DeleteVolumeRequest,
    ) -> Result<pb::DeleteVolumeResponse, Status> {
        self.require_cap(Cap::CreateDeleteVolume)?;
        self.require_secrets(&req.secrets)?;
        require(!req.volume_id.is_empty(), "volume_id")?;
        if let Some(volume) = self.state.volumes.get(&req.volume_id) {
            if !volume.publications.is_empty() {
                let nodes: Vec<&String> = volume.publications.keys().collect();
                return Err(Status::failed_precondition(format!(
                    "volume {} is still published to nodes {nodes:?}",
                    req.volume_id
                )));
            }
            self.state.volumes.remove(&req.volume_id);
        }
        Ok(pb::DeleteVolumeResponse {})
    }

    /// ValidateVolumeCapabilities. Malformed capabilities are INVALID_ARGUMENT; an access type
    /// the volume was not created for, or parameters / context that differ from the volume's,
    /// leave the answer unconfirmed with a message.
    pub fn validate_volume_capabilities(
        &mut self,
        req: pb::ValidateVolumeCapabilitiesRequest,
    ) -> Result<pb::ValidateVolumeCapabilitiesResponse, Status> {
        require(!req.volume_id.is_empty(), "volume_id")?;
        require(!req.volume_capabilities.is_empty(), "volume_capabilities")?;
        let checked: Vec<CheckedCapability> = req
            .volume_capabilities
            .iter()
            .map(|c| check_capability(self.config, c))
            .collect::<Result<_, _>>()?;
        let volume =
            self.state.volumes.get(&req.volume_id).ok_or_else(|| {
                Status::not_found(format!("volume {} does not exist", req.volume_id))
            })?;
        let mut problems = Vec::new();
        if let Some(c) = checked
            .iter()
            .find(|c| !volume.access_types.contains(&c.access_type))
        {
            problems.push(format!(
                "the volume does not support {:?} access",
                c.access_type
            ));
        }
        if !req.parameters.is_empty() && to_btree(&req.parameters) != volume.parameters {
            problems.push("parameters differ from the volume's".to_owned());
        }
        if !req.mutable_parameters.is_empty()
            && to_btree(&req.mutable_parameters) != volume.mutable_parameters
        {
            problems.push("mutable_parameters differ from the volume's".to_owned());
        }
        if !req.volume_context.is_empty() && to_btree(&req.volume_context) != volume.context {
            problems.push("volume_context differs from the volume's".to_owned());
        }
        if !problems.is_empty() {
            return Ok(pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: problems.join("; "),
            });
        }
        Ok(pb::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        })
    }

    /// ControllerExpandVolume. A volume already at least `required_bytes` is returned as is; a
    /// volume larger than `limit_bytes`, or growth past the size limit or free capacity, is
    /// OUT_OF_RANGE; a published volume under OFFLINE expansion is FAILED_PRECONDITION.
    pub fn controller_expand_volume(
        &mut self,
        req: pb::ControllerExpandVolumeRequest,
    ) -> Result<pb::ControllerExpandVolumeResponse, Status> {
        self.require_cap(Cap::ExpandVolume)?;
        self.require_secrets_on_call(&req.secrets)?;
        require(!req.volume_id.is_empty(), "volume_id")?;
        let range = req
            .capacity_range
            .ok_or_else(|| invalid("capacity_range is required"))?;
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(invalid("capacity_range must not be negative"));
        }
        if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
            return Err(Status::out_of_range(format!(
                "required_bytes {} exceed limit_bytes {}",
                range.required_bytes, range.limit_bytes
            )));
        }
        if let Some(cap) = &req.volume_capability {
            check_capability(self.config, cap)?;
        }
        let volume =
            self.state.volumes.get(&req.volume_id).ok_or_else(|| {
                Status::not_found(format!("volume {} does not exist", req.volume_id))
            })?;
        let current = volume.capacity_bytes;
        if range.limit_bytes > 0 && current > range.limit_bytes {
            return Err(Status::out_of_range(format!(
                "volume {} already has {current} bytes, more than limit_bytes {}",
                req.volume_id, range.limit_bytes
            )));
        }
        let node_expansion_required = self.config.node_expansion_required;
        if range.required_bytes <= current {
            return Ok(pb::ControllerExpandVolumeResponse {
                capacity_bytes: current,
                node_expansion_required,
            });
        }
        if !self.config.online_expansion && !volume.publications.is_empty() {
            return Err(Status::failed_precondition(format!(
                "volume {} is published and the plugin only supports OFFLINE expansion",
                req.volume_id
            )));
        }
        self.check_space(range.required_bytes, current)?;
        if let Some(volume) = self.state.volumes.get_mut(&req.volume_id) {
            volume.capacity_bytes = range.required_bytes;
        }
        Ok(pb::ControllerExpandVolumeResponse {
            capacity_bytes: range.required_bytes,
            node_expansion_required,
        })
    }

    /// ControllerGetVolume: the volume with its published nodes and condition.
    pub fn controller_get_volume(
        &mut self,
        req: pb::ControllerGetVolumeRequest,
    ) -> Result<pb::ControllerGetVolumeResponse, Status> {
        self.require_cap(Cap::GetVolume)?;
        require(!req.volume_id.is_empty(), "volume_id")?;
        let volume =
            self.state.volumes.get(&req.volume_id).ok_or_else(|| {
                Status::not_found(format!("volume {} does not exist", req.volume_id))
            })?;
        Ok(pb::ControllerGetVolumeResponse {
            volume: Some(self.volume_to_pb(volume)),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: volume.publications.keys().cloned().collect(),
                volume_condition: self.volume_condition(volume),
            }),
        })
    }

    /// ControllerModifyVolume: merges the mutable parameters into the volume's; keys outside
    /// the configured set are INVALID_ARGUMENT and change nothing.
    pub fn controller_modify_volume(
        &mut self,
        req: pb::ControllerModifyVolumeRequest,
    ) -> Result<pb::ControllerModifyVolumeResponse, Status> {
        self.require_cap(Cap::ModifyVolume)?;
        require(!req.volume_id.is_empty(), "volume_id")?;
        if !self.state.volumes.contains_key(&req.volume_id) {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        }
        self.check_mutable_parameters(&req.mutable_parameters)?;
        if let Some(volume) = self.state.volumes.get_mut(&req.volume_id) {
            volume
                .mutable_parameters
                .extend(to_btree(&req.mutable_parameters));
        }
        Ok(pb::ControllerModifyVolumeResponse {})
    }
}
