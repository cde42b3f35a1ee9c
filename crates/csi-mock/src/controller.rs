//! The Controller and GroupController RPCs as plain functions over [`MockState`]: validation,
//! idempotency, capacity accounting, topology, publication rules, pagination.
//!
//! Nothing here does I/O, locking or fault injection; [`MockDriver`](crate::MockDriver) runs these
//! under its state lock and persists the state afterwards. Error codes follow the tables of the CSI
//! spec v1.12 for each RPC; the choices the spec leaves open are documented on each function.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use csi::v1 as pb;
use csi::v1::volume_capability::access_mode::Mode;
use tonic::Status;

use crate::config::{
    ControllerCapability as Cap, DEFAULT_VOLUME_SIZE, DEVICE_PATH_CONTEXT_KEY, MockConfig,
    TopologyConfig, VOLUME_NAME_CONTEXT_KEY,
};
use crate::state::{
    AccessType, ContentSource, GROUP_SNAPSHOT_ID_PREFIX, GroupSnapshotRecord, MockState,
    Publication, SNAPSHOT_ID_PREFIX, SnapshotRecord, VOLUME_ID_PREFIX, VolumeRecord,
    is_id_with_prefix,
};

/// Longest name or id the spec allows (128 bytes for strings).
const MAX_NAME_BYTES: usize = 128;

/// The driver's view of one call: configuration, state and the clock.
#[derive(Debug)]
pub(crate) struct Backend<'a> {
    pub config: &'a MockConfig,
    pub state: &'a mut MockState,
    /// Milliseconds since the Unix epoch, for creation times and snapshot readiness.
    pub now_ms: i64,
    /// What Probe reports.
    pub ready: bool,
}

pub(crate) fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

fn require(ok: bool, what: &str) -> Result<(), Status> {
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{what} is required")))
    }
}

pub(crate) fn to_btree(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn to_hash(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A volume capability after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedCapability {
    pub mode: Mode,
    pub access_type: AccessType,
    pub fs_type: String,
    pub mount_flags: Vec<String>,
}

/// Validates the structure of a capability: an access type and a known access mode, and the
/// SINGLE_NODE_*_WRITER modes only when SINGLE_NODE_MULTI_WRITER is advertised.
pub(crate) fn check_capability(
    config: &MockConfig,
    cap: &pb::VolumeCapability,
) -> Result<CheckedCapability, Status> {
    let (access_type, fs_type, mount_flags) = match &cap.access_type {
        Some(pb::volume_capability::AccessType::Block(_)) => {
            (AccessType::Block, String::new(), Vec::new())
        }
        Some(pb::volume_capability::AccessType::Mount(m)) => {
            (AccessType::Mount, m.fs_type.clone(), m.mount_flags.clone())
        }
        None => return Err(invalid("volume capability access_type is required")),
    };
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .filter(|m| *m != Mode::Unknown)
        .ok_or_else(|| invalid("volume capability access_mode is required"))?;
    if matches!(
        mode,
        Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter
    ) && !config.has(Cap::SingleNodeMultiWriter)
    {
        return Err(invalid(format!(
            "access mode {} needs the SINGLE_NODE_MULTI_WRITER capability",
            mode.as_str_name()
        )));
    }
    Ok(CheckedCapability {
        mode,
        access_type,
        fs_type,
        mount_flags,
    })
}

fn is_multi_node(mode: Mode) -> bool {
    matches!(
        mode,
        Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter
    )
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // Always in 0..1_000_000_000, so the cast cannot truncate.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Reads a pagination request: the entries after `starting_token`, at most `max_entries`.
fn page<'m, V>(
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
    fn require_cap(&self, cap: Cap) -> Result<(), Status> {
        if self.config.has(cap) {
            Ok(())
        } else {
            Err(Status::unimplemented(format!(
                "the {} controller capability is disabled",
                cap.as_str_name()
            )))
        }
    }

    fn require_group(&self) -> Result<(), Status> {
        if self.config.group_controller {
            Ok(())
        } else {
            Err(Status::unimplemented(
                "the GroupController service is disabled",
            ))
        }
    }

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

    fn volume_to_pb(&self, v: &VolumeRecord) -> pb::Volume {
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

    fn volume_condition(&self, v: &VolumeRecord) -> Option<pb::VolumeCondition> {
        self.config
            .has(Cap::VolumeCondition)
            .then(|| pb::VolumeCondition {
                abnormal: v.condition.abnormal,
                message: v.condition.message.clone(),
            })
    }

    fn snapshot_ready(&self, s: &SnapshotRecord) -> bool {
        let delay = i64::try_from(self.config.snapshot_ready_delay.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.saturating_sub(s.created_at_unix_ms) >= delay
    }

    fn snapshot_to_pb(&self, s: &SnapshotRecord) -> pb::Snapshot {
        pb::Snapshot {
            size_bytes: s.size_bytes,
            snapshot_id: s.id.clone(),
            source_volume_id: s.source_volume_id.clone(),
            creation_time: Some(timestamp(s.created_at_unix_ms)),
            ready_to_use: self.snapshot_ready(s),
            group_snapshot_id: s.group_snapshot_id.clone().unwrap_or_default(),
        }
    }

    fn group_to_pb(&self, g: &GroupSnapshotRecord) -> pb::VolumeGroupSnapshot {
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

    /// UNAUTHENTICATED unless `secrets` holds every [`MockConfig::required_secrets`] entry.
    /// The message names the missing keys, never a value.
    fn require_secrets(&self, secrets: &HashMap<String, String>) -> Result<(), Status> {
        let missing: Vec<&String> = self
            .config
            .required_secrets
            .iter()
            .filter(|(k, v)| secrets.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "missing or wrong secrets: {missing:?}"
            )))
        }
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

    /// ControllerPublishVolume. Idempotent per (volume, node); a different capability or
    /// `readonly` on the same node is ALREADY_EXISTS; another node while either publication is
    /// single-node is FAILED_PRECONDITION (naming the node); a node at its attach limit is
    /// RESOURCE_EXHAUSTED; unknown volume or node is NOT_FOUND.
    pub fn controller_publish_volume(
        &mut self,
        req: pb::ControllerPublishVolumeRequest,
    ) -> Result<pb::ControllerPublishVolumeResponse, Status> {
        self.require_cap(Cap::PublishUnpublishVolume)?;
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

    /// CreateSnapshot. Idempotent by `name`; the same name with another source volume is
    /// ALREADY_EXISTS; an unknown source is NOT_FOUND. `ready_to_use` turns true after the
    /// configured delay.
    pub fn create_snapshot(
        &mut self,
        req: pb::CreateSnapshotRequest,
    ) -> Result<pb::CreateSnapshotResponse, Status> {
        self.require_cap(Cap::CreateDeleteSnapshot)?;
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

    /// ControllerExpandVolume. A volume already at least `required_bytes` is returned as is; a
    /// volume larger than `limit_bytes`, or growth past the size limit or free capacity, is
    /// OUT_OF_RANGE; a published volume under OFFLINE expansion is FAILED_PRECONDITION.
    pub fn controller_expand_volume(
        &mut self,
        req: pb::ControllerExpandVolumeRequest,
    ) -> Result<pb::ControllerExpandVolumeResponse, Status> {
        self.require_cap(Cap::ExpandVolume)?;
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

#[cfg(test)]
mod tests;
