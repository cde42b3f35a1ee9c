//! Building a provisioning attempt: upstream `prepareProvision`, pure. The result, an [`Intent`],
//! holds the CreateVolume request (without secret values) and every field the PV needs; it is what
//! the no-leak design records on the PVC before calling CreateVolume, so a retry or a restart
//! replays the very same request.
//!
//! Checks run in upstream's order and fail with upstream's texts and states. Differences, all
//! deliberate: the provisioner Secret is read by the act layer after this succeeds (upstream reads
//! it between the secret-reference checks and the parameter stripping, so with two faults at once
//! the reported one may differ); the clone source is resolved by the act layer (`source`) and passed
//! in, as is the snapshot source of a restore.

use std::collections::BTreeMap;

use csi::v1;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use serde::{Deserialize, Serialize};

use crate::claim;
use crate::constants::*;
use crate::error::{ProvisionError, ProvisioningState};
use crate::params::{self, ClaimFields, SecretKind, SecretRef};
use crate::source::{self, RecordedSource};
use crate::topology::{self, ClusterTopology, TopologyError, TopologyInput};
use controller_kit::quantity;

/// The provisioner's settings (upstream flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionerConfig {
    /// `--volume-name-prefix` (default `pvc`).
    pub volume_name_prefix: String,
    /// `--volume-name-uuid-length` (default -1: the whole UID).
    pub volume_name_uuid_length: i64,
    /// `--default-fstype`.
    pub default_fs_type: String,
    /// `--extra-create-metadata`.
    pub extra_create_metadata: bool,
    /// `--strict-topology`.
    pub strict_topology: bool,
    /// `--immediate-topology` (default true).
    pub immediate_topology: bool,
    /// `--controller-publish-readonly`.
    pub controller_publish_readonly: bool,
    /// Feature gate `Topology` (GA, default true).
    pub topology_gate: bool,
    /// Feature gate `VolumeAttributesClass` (GA, default true).
    pub volume_attributes_class_gate: bool,
    /// `--prevent-volume-mode-conversion` (default true).
    pub prevent_volume_mode_conversion: bool,
    /// `--snapshot-orphan-sweep-interval` (default 5 min; zero disables the sweep).
    pub snapshot_orphan_sweep_interval: std::time::Duration,
    /// `--enable-capacity` and its settings (`None`: off).
    pub capacity: Option<crate::capacity::CapacityConfig>,
    /// `--node-deployment` and its settings (`None`: central).
    pub node_deployment: Option<crate::node::NodeDeployment>,
    /// `--intent-rollback-timeout` (default 24 h; zero: never give up): how long the rollback of
    /// a deleted claim's intent may keep failing before the intent is given up, reported, and
    /// its volume left to the operator.
    pub rollback_timeout: std::time::Duration,
}

/// Default of `--intent-rollback-timeout`.
pub const DEFAULT_ROLLBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Default for ProvisionerConfig {
    fn default() -> Self {
        Self {
            volume_name_prefix: DEFAULT_VOLUME_NAME_PREFIX.to_string(),
            volume_name_uuid_length: -1,
            default_fs_type: String::new(),
            extra_create_metadata: false,
            strict_topology: false,
            immediate_topology: true,
            controller_publish_readonly: false,
            topology_gate: true,
            volume_attributes_class_gate: true,
            prevent_volume_mode_conversion: true,
            snapshot_orphan_sweep_interval: std::time::Duration::from_secs(300),
            capacity: None,
            node_deployment: None,
            rollback_timeout: DEFAULT_ROLLBACK_TIMEOUT,
        }
    }
}

/// What the driver can do, as far as provisioning cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCaps {
    /// Plugin capability CONTROLLER_SERVICE.
    pub controller_service: bool,
    /// Plugin capability VOLUME_ACCESSIBILITY_CONSTRAINTS (and the Topology gate).
    pub topology: bool,
    /// CREATE_DELETE_VOLUME.
    pub create_delete_volume: bool,
    /// SINGLE_NODE_MULTI_WRITER.
    pub single_node_multi_writer: bool,
    /// PUBLISH_UNPUBLISH_VOLUME (VolumeAttachments block deletion).
    pub publish_unpublish: bool,
    /// MODIFY_VOLUME (VolumeAttributesClass).
    pub modify_volume: bool,
    /// CREATE_DELETE_SNAPSHOT.
    pub snapshot: bool,
    /// CLONE_VOLUME.
    pub clone: bool,
}

impl DriverCaps {
    /// From what discovery learnt; `topology_gate` is the `Topology` feature gate.
    pub fn from_discovery(d: &csi::Discovery, topology_gate: bool) -> Self {
        use v1::controller_service_capability::rpc::Type as C;
        use v1::plugin_capability::service::Type as P;
        Self {
            controller_service: d.has_plugin_service(P::ControllerService),
            topology: topology_gate && d.has_plugin_service(P::VolumeAccessibilityConstraints),
            create_delete_volume: d.has_controller(C::CreateDeleteVolume),
            single_node_multi_writer: d.has_controller(C::SingleNodeMultiWriter),
            publish_unpublish: d.has_controller(C::PublishUnpublishVolume),
            modify_volume: d.has_controller(C::ModifyVolume),
            snapshot: d.has_controller(C::CreateDeleteSnapshot),
            clone: d.has_controller(C::CloneVolume),
        }
    }

    /// Upstream `checkDriverCapabilities` with no data source: run before every Provision and Delete.
    pub fn check_basic(&self) -> Result<(), String> {
        if !self.controller_service {
            return Err("CSI driver does not support dynamic provisioning: plugin CONTROLLER_SERVICE capability is not reported".into());
        }
        if !self.create_delete_volume {
            return Err("CSI driver does not support dynamic provisioning: controller CREATE_DELETE_VOLUME capability is not reported".into());
        }
        Ok(())
    }
}

/// A VolumeAttributesClass, as far as CreateVolume needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VacInfo {
    /// `driverName`.
    pub driver_name: String,
    /// `parameters`, sent as `mutable_parameters`.
    pub parameters: BTreeMap<String, String>,
}

/// One volume capability, serialisable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Block access (else mount).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
    /// Mount: the filesystem type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fs_type: String,
    /// Mount: the mount flags (the class's mount options).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_flags: Vec<String>,
    /// `VolumeCapability.AccessMode.Mode` as its number.
    pub mode: i32,
}

/// Accessibility requirements, serialisable: each term a segment map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedTopology {
    /// Requisite terms.
    pub requisite: Vec<BTreeMap<String, String>>,
    /// Preferred terms.
    pub preferred: Vec<BTreeMap<String, String>>,
}

/// A CreateVolume request without its secrets, serialisable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// `capacity_range.required_bytes`.
    pub required_bytes: i64,
    /// `parameters` (stripped, plus extra metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// `mutable_parameters` (from the VolumeAttributesClass).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mutable_parameters: BTreeMap<String, String>,
    /// `volume_capabilities`, one per access mode.
    pub capabilities: Vec<Capability>,
    /// `accessibility_requirements`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<RecordedTopology>,
    /// `volume_content_source`: what the volume is cloned or restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_source: Option<RecordedSource>,
}

impl RecordedRequest {
    /// The CSI request for volume `name` with the provisioner secret's data.
    pub fn to_csi(&self, name: &str, secrets: BTreeMap<String, String>) -> v1::CreateVolumeRequest {
        use v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
        let to_topology = |terms: &[BTreeMap<String, String>]| -> Vec<v1::Topology> {
            terms
                .iter()
                .map(|t| v1::Topology {
                    segments: t.clone().into_iter().collect(),
                })
                .collect()
        };
        v1::CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: self.required_bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: self
                .capabilities
                .iter()
                .map(|c| v1::VolumeCapability {
                    access_mode: Some(AccessMode { mode: c.mode }),
                    access_type: Some(if c.block {
                        AccessType::Block(BlockVolume {})
                    } else {
                        AccessType::Mount(MountVolume {
                            fs_type: c.fs_type.clone(),
                            mount_flags: c.mount_flags.clone(),
                            volume_mount_group: String::new(),
                        })
                    }),
                })
                .collect(),
            parameters: self.parameters.clone().into_iter().collect(),
            secrets: secrets.into_iter().collect(),
            volume_content_source: self.content_source.as_ref().map(|s| {
                use v1::volume_content_source::{SnapshotSource, Type, VolumeSource};
                v1::VolumeContentSource {
                    r#type: Some(match s {
                        RecordedSource::Volume(id) => Type::Volume(VolumeSource {
                            volume_id: id.clone(),
                        }),
                        RecordedSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                            snapshot_id: id.clone(),
                        }),
                    }),
                }
            }),
            accessibility_requirements: self.topology.as_ref().map(|t| v1::TopologyRequirement {
                requisite: to_topology(&t.requisite),
                preferred: to_topology(&t.preferred),
            }),
            mutable_parameters: self.mutable_parameters.clone().into_iter().collect(),
        }
    }
}

/// The PV fields decided before CreateVolume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvTemplate {
    /// `pv.kubernetes.io/provisioned-by` (the class's provisioner).
    pub provisioned_by: String,
    /// `spec.storageClassName` (the claim's class).
    pub storage_class_name: String,
    /// `spec.accessModes` (the claim's).
    pub access_modes: Vec<String>,
    /// `spec.volumeMode` (the claim's, if set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// `spec.mountOptions` (the class's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
    /// `spec.persistentVolumeReclaimPolicy` (the class's, if set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    /// `spec.csi.fsType`; `None` for block volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// `spec.csi.readOnly`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Whether the driver does topology (then `spec.nodeAffinity` follows accessible_topology).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub topology: bool,
    /// `spec.volumeAttributesClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_attributes_class: Option<String>,
    /// The provisioner secret, for the deletion-secret annotations (always written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_secret: Option<SecretRef>,
    /// The ControllerModify secret, for the modify-secret annotations (only when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modify_secret: Option<SecretRef>,
    /// `spec.csi.controllerPublishSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_publish_secret: Option<SecretRef>,
    /// `spec.csi.nodeStageSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_stage_secret: Option<SecretRef>,
    /// `spec.csi.nodePublishSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_publish_secret: Option<SecretRef>,
    /// `spec.csi.controllerExpandSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_expand_secret: Option<SecretRef>,
    /// `spec.csi.nodeExpandSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_expand_secret: Option<SecretRef>,
}

/// Everything one provisioning needs, decided before CreateVolume; recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The driver that recorded it: with one manager per driver in a cluster, each acts only on
    /// its own intents.
    #[serde(default)]
    pub driver: String,
    /// The CSI name and the PV name.
    pub volume_name: String,
    /// The claim's UID (an intent is only valid for the object it was recorded on).
    pub claim_uid: String,
    /// The claim's namespace: a deleted claim's intent is found by its key.
    #[serde(default)]
    pub claim_namespace: String,
    /// The claim's name.
    #[serde(default)]
    pub claim_name: String,
    /// The request, without secrets.
    pub request: RecordedRequest,
    /// The provisioner Secret whose data goes into the request (and DeleteVolume on rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner_secret: Option<SecretRef>,
    /// The PV to create once the volume exists.
    pub pv: PvTemplate,
    /// Whether RESOURCE_EXHAUSTED gives the claim back to the scheduler.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_reschedule: bool,
}

/// The inputs of [`prepare`].
#[derive(Clone, Copy, Debug)]
pub struct PrepareInput<'a> {
    /// The claim.
    pub claim: &'a PersistentVolumeClaim,
    /// Its StorageClass.
    pub class: &'a StorageClass,
    /// The settings.
    pub config: &'a ProvisionerConfig,
    /// The driver's name.
    pub driver: &'a str,
    /// The driver's capabilities.
    pub caps: DriverCaps,
    /// The selected node, if any.
    pub selected_node: Option<&'a str>,
    /// CSINodes and Nodes.
    pub cluster: &'a ClusterTopology,
    /// The claim's VolumeAttributesClass when it names one: what a GET returned.
    pub vac: Option<&'a Result<VacInfo, String>>,
    /// The claim's clone or restore source as the controller resolved it (`source`), when it
    /// names one: the content source, or the message of why it cannot be used.
    pub source: Option<&'a Result<RecordedSource, String>>,
}

/// The claim's VolumeAttributesClass name, when the gate is on and it names one.
pub fn vac_name<'a>(
    claim: &'a PersistentVolumeClaim,
    config: &ProvisionerConfig,
) -> Option<&'a str> {
    if !config.volume_attributes_class_gate {
        return None;
    }
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_attributes_class_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Upstream's access-mode mapping (csi-lib-utils `accessmodes`) for one mode.
pub fn csi_access_mode(mode: &str, single_node_multi_writer: bool) -> Result<i32, String> {
    use v1::volume_capability::access_mode::Mode;
    let m = match (mode, single_node_multi_writer) {
        ("ReadWriteOncePod", false) => Mode::SingleNodeWriter,
        ("ReadWriteOncePod", true) => Mode::SingleNodeSingleWriter,
        ("ReadWriteMany", _) => Mode::MultiNodeMultiWriter,
        ("ReadOnlyMany", _) => Mode::MultiNodeReaderOnly,
        ("ReadWriteOnce", false) => Mode::SingleNodeWriter,
        ("ReadWriteOnce", true) => Mode::SingleNodeMultiWriter,
        _ => return Err(format!("unsupported AccessMode combination: [{mode}]")),
    };
    Ok(m as i32)
}

fn is_block(claim: &PersistentVolumeClaim) -> bool {
    claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// Upstream `prepareProvision`, without I/O.
pub fn prepare(input: &PrepareInput<'_>) -> Result<Intent, ProvisionError> {
    let PrepareInput {
        claim,
        class,
        config,
        driver,
        caps,
        ..
    } = *input;
    let finished = |m: String| ProvisionError::finished(m);
    let spec = claim.spec.clone().unwrap_or_default();
    let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
    let claim_namespace = claim.metadata.namespace.as_deref().unwrap_or_default();

    // Data source.
    let needs_source = if let Some(ds) = &spec.data_source {
        check_data_source(
            &ds.kind,
            &ds.name,
            ds.api_group.as_deref(),
            claim_name,
            caps,
        )?
    } else if let Some(r) = &spec.data_source_ref {
        if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            return Err(finished(
                "dataSourceRef namespace specified but the CrossNamespaceVolumeDataSource feature is disabled".into(),
            ));
        }
        check_data_source(&r.kind, &r.name, r.api_group.as_deref(), claim_name, caps)?
    } else {
        false
    };
    let content_source = if needs_source {
        let (kind, name) = source::data_source(claim).unwrap_or_default();
        match input.source {
            Some(Ok(s)) => Some(s.clone()),
            Some(Err(e)) => {
                return Err(ProvisionError::no_change(format!(
                    "error getting handle for DataSource Type {kind} by Name {name}: {e}"
                )));
            }
            None => {
                return Err(ProvisionError::no_change(format!(
                    "error getting handle for DataSource Type {kind} by Name {name}: not resolved"
                )));
            }
        }
    } else {
        None
    };

    let vac_name = vac_name(claim, config);
    caps.check_basic().map_err(finished)?;
    if vac_name.is_some() && !caps.modify_volume {
        return Err(finished(
            "CSI driver does not support VolumeAttributesClass: controller MODIFY_VOLUME capability is not reported".into(),
        ));
    }
    if spec.selector.is_some() {
        return Err(finished("claim Selector is not supported".into()));
    }
    let uid = claim.metadata.uid.as_deref().unwrap_or_default();
    let volume_name = claim::volume_name(
        &config.volume_name_prefix,
        uid,
        config.volume_name_uuid_length,
    )
    .map_err(finished)?;

    let sc_params: BTreeMap<String, String> = class.parameters.clone().unwrap_or_default();
    let fs_type = params::fs_type(&sc_params, &config.default_fs_type).map_err(finished)?;

    let required_bytes = match spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    {
        Some(q) => quantity::parse_bytes(&q.0)
            .ok_or_else(|| finished(format!("invalid storage request {:?}", q.0)))?,
        None => 0,
    };

    let block = is_block(claim);
    let mount_options = class.mount_options.clone().unwrap_or_default();
    let access_modes = spec.access_modes.clone().unwrap_or_default();
    let mut capabilities = Vec::with_capacity(access_modes.len());
    for mode in &access_modes {
        let mode = csi_access_mode(mode, caps.single_node_multi_writer).map_err(finished)?;
        capabilities.push(if block {
            Capability {
                block: true,
                fs_type: String::new(),
                mount_flags: Vec::new(),
                mode,
            }
        } else {
            Capability {
                block: false,
                fs_type: fs_type.clone(),
                mount_flags: mount_options.clone(),
                mode,
            }
        });
    }

    let topology = if caps.topology {
        let allowed = class.allowed_topologies.clone().unwrap_or_default();
        let result = topology::requirements(&TopologyInput {
            driver,
            pvc_name: claim_name,
            allowed: &allowed,
            selected_node: input.selected_node,
            strict: config.strict_topology,
            immediate: config.immediate_topology,
            cluster: input.cluster,
        });
        match result {
            Ok(r) => r.map(|r| RecordedTopology {
                requisite: r
                    .requisite
                    .into_iter()
                    .map(|t| t.into_iter().collect())
                    .collect(),
                preferred: r
                    .preferred
                    .into_iter()
                    .map(|t| t.into_iter().collect())
                    .collect(),
            }),
            Err(TopologyError::Reschedule(m)) => {
                return Err(ProvisionError::new(ProvisioningState::Reschedule, m));
            }
            Err(TopologyError::Other(m)) => {
                return Err(ProvisionError::no_change(format!(
                    "error generating accessibility requirements: {m}"
                )));
            }
        }
    } else {
        None
    };

    let fields = ClaimFields {
        name: claim_name,
        namespace: claim_namespace,
        annotations: claim.metadata.annotations.as_ref(),
    };
    let secret = |kind| {
        params::secret_reference(kind, &sc_params, &volume_name, Some(&fields))
            .map_err(ProvisionError::no_change)
    };
    let provisioner_secret = secret(SecretKind::Provisioner)?;
    let controller_publish_secret = secret(SecretKind::ControllerPublish)?;
    let node_stage_secret = secret(SecretKind::NodeStage)?;
    let node_publish_secret = secret(SecretKind::NodePublish)?;
    let controller_expand_secret = secret(SecretKind::ControllerExpand)?;
    let node_expand_secret = secret(SecretKind::NodeExpand)?;
    let modify_secret = secret(SecretKind::ControllerModify)?;

    let mut parameters = params::strip_prefixed(&sc_params).map_err(|e| {
        finished(format!(
            "failed to strip CSI Parameters of prefixed keys: {e}"
        ))
    })?;
    if config.extra_create_metadata {
        parameters.insert(PARAM_PVC_NAME.to_string(), claim_name.to_string());
        parameters.insert(PARAM_PVC_NAMESPACE.to_string(), claim_namespace.to_string());
        parameters.insert(PARAM_PV_NAME.to_string(), volume_name.clone());
    }

    let mut mutable_parameters = BTreeMap::new();
    if let Some(name) = vac_name {
        match input.vac {
            Some(Ok(vac)) if vac.driver_name == driver => {
                mutable_parameters = vac.parameters.clone();
            }
            Some(Ok(vac)) => {
                return Err(finished(format!(
                    "VAC {name} referenced in PVC is for driver {} which does not match driver name {driver}",
                    vac.driver_name
                )));
            }
            Some(Err(e)) => return Err(ProvisionError::no_change(e.clone())),
            None => {
                return Err(ProvisionError::no_change(format!(
                    "VolumeAttributesClass {name} was not looked up"
                )));
            }
        }
    }

    // Upstream: readOnly only for exactly one ROX mode, with --controller-publish-readonly.
    let read_only = config.controller_publish_readonly
        && capabilities.len() == 1
        && capabilities[0].mode
            == v1::volume_capability::access_mode::Mode::MultiNodeReaderOnly as i32;

    Ok(Intent {
        driver: input.driver.to_string(),
        volume_name,
        claim_uid: uid.to_string(),
        claim_namespace: claim.metadata.namespace.clone().unwrap_or_default(),
        claim_name: claim.metadata.name.clone().unwrap_or_default(),
        request: RecordedRequest {
            required_bytes,
            parameters,
            mutable_parameters,
            capabilities,
            topology,
            content_source,
        },
        provisioner_secret: provisioner_secret.clone(),
        pv: PvTemplate {
            provisioned_by: class.provisioner.clone(),
            storage_class_name: claim::claim_class(claim),
            access_modes,
            volume_mode: spec.volume_mode.clone(),
            mount_options,
            reclaim_policy: class.reclaim_policy.clone(),
            fs_type: (!block).then_some(fs_type),
            read_only,
            topology: caps.topology,
            volume_attributes_class: vac_name.map(str::to_string),
            deletion_secret: provisioner_secret,
            modify_secret,
            controller_publish_secret,
            node_stage_secret,
            node_publish_secret,
            controller_expand_secret,
            node_expand_secret,
        },
        may_reschedule: caps.topology && input.selected_node.is_some(),
    })
}

fn check_data_source(
    kind: &str,
    name: &str,
    api_group: Option<&str>,
    claim_name: &str,
    caps: DriverCaps,
) -> Result<bool, ProvisionError> {
    if name.is_empty() {
        return Err(ProvisionError::finished(format!(
            "the PVC source not found for PVC {claim_name}"
        )));
    }
    match kind {
        SNAPSHOT_KIND => {
            let group = api_group.unwrap_or_default();
            if group != SNAPSHOT_API_GROUP {
                return Err(ProvisionError::finished(format!(
                    "the PVC source does not belong to the right APIGroup. Expected {SNAPSHOT_API_GROUP}, Got {group}"
                )));
            }
            caps.check_basic().map_err(ProvisionError::finished)?;
            if !caps.snapshot {
                return Err(ProvisionError::finished(
                    "CSI driver does not support snapshot restore: controller CREATE_DELETE_SNAPSHOT capability is not reported",
                ));
            }
            Ok(true)
        }
        PVC_KIND => {
            caps.check_basic().map_err(ProvisionError::finished)?;
            if !caps.clone {
                return Err(ProvisionError::finished(
                    "CSI driver does not support clone operations: controller CLONE_VOLUME capability is not reported",
                ));
            }
            Ok(true)
        }
        other => Err(ProvisionError::new(
            ProvisioningState::Ignored,
            format!(
                "data source ({other}) is not handled by the provisioner, assuming an external populator will provision it"
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
