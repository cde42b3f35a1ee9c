//! The PV for a created volume, field for field as upstream builds it (`Provision` of the CSI
//! provisioner, then `provisionClaimOperation` of the library), and the PV side of deletion:
//! whether a PV is ours, its finalizer upkeep and when its volume must be deleted.

use std::collections::BTreeMap;

use csi::v1;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use crate::constants::*;
use crate::params::{self, ClaimFields, SecretKind, SecretRef};
use crate::request::Intent;
use crate::topology;
use controller_kit::quantity;

/// The PV's capacity from CreateVolume's answer: 0 means "the requested size"; less than
/// requested is an error (upstream then deletes the volume and retries).
pub fn pv_capacity(returned: i64, required: i64) -> Result<i64, String> {
    if returned == 0 {
        Ok(required)
    } else if returned < required {
        Err(format!(
            "created volume capacity {returned} less than requested capacity {required}"
        ))
    } else {
        Ok(returned)
    }
}

/// The claim reference a PV gets (`ref.GetReference`): with UID and resourceVersion.
pub fn claim_ref(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: claim.metadata.name.clone(),
        namespace: claim.metadata.namespace.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The provisioner identity written on every PV (`storage.kubernetes.io/csiProvisionerIdentity`),
/// in upstream's format: `<unix-ms>-<random 0..9999>-<driver>`, with `-<node>` in node deployment
/// (external-provisioner `main.go`). Made once per process.
pub fn provisioner_identity(
    unix_ms: u128,
    random: u32,
    driver: &str,
    node: Option<&str>,
) -> String {
    let mut id = format!("{unix_ms}-{random}-{driver}");
    if let Some(node) = node {
        id.push('-');
        id.push_str(node);
    }
    id
}

/// The PV for `volume`, created by CreateVolume for `intent`, bound to `claim`.
pub fn build_pv(
    claim: &PersistentVolumeClaim,
    intent: &Intent,
    volume: &v1::Volume,
    capacity_bytes: i64,
    driver: &str,
    identity: &str,
) -> PersistentVolume {
    let t = &intent.pv;
    let mut attributes = BTreeMap::from([(
        VOLUME_ATTR_PROVISIONER_IDENTITY.to_string(),
        identity.to_string(),
    )]);
    // The driver's keys win.
    attributes.extend(volume.volume_context.clone());

    let mut annotations = BTreeMap::new();
    let deletion = t.deletion_secret.clone().unwrap_or(SecretRef {
        name: String::new(),
        namespace: String::new(),
    });
    annotations.insert(ANN_DELETION_SECRET_NAME.to_string(), deletion.name);
    annotations.insert(
        ANN_DELETION_SECRET_NAMESPACE.to_string(),
        deletion.namespace,
    );
    if let Some(m) = &t.modify_secret {
        annotations.insert(ANN_MODIFY_SECRET_NAME.to_string(), m.name.clone());
        annotations.insert(ANN_MODIFY_SECRET_NAMESPACE.to_string(), m.namespace.clone());
    }
    annotations.insert(
        ANN_DYNAMICALLY_PROVISIONED.to_string(),
        t.provisioned_by.clone(),
    );

    let node_affinity = if t.topology {
        let accessible: Vec<BTreeMap<String, String>> = volume
            .accessible_topology
            .iter()
            .map(|t| t.segments.clone().into_iter().collect())
            .collect();
        topology::node_affinity(&accessible)
    } else {
        None
    };
    let secret = |r: &Option<SecretRef>| r.as_ref().map(SecretRef::to_k8s);

    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(intent.volume_name.clone()),
            annotations: Some(annotations),
            // Added at creation even for Retain; the volume worker strips it again then.
            finalizers: Some(vec![FINALIZER_PV.to_string()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(t.access_modes.clone()),
            mount_options: (!t.mount_options.is_empty()).then(|| t.mount_options.clone()),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(quantity::format_binary_si(capacity_bytes)),
            )])),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.to_string(),
                volume_handle: volume.volume_id.clone(),
                volume_attributes: Some(attributes),
                read_only: t.read_only.then_some(true),
                fs_type: t.fs_type.clone(),
                controller_publish_secret_ref: secret(&t.controller_publish_secret),
                node_stage_secret_ref: secret(&t.node_stage_secret),
                node_publish_secret_ref: secret(&t.node_publish_secret),
                controller_expand_secret_ref: secret(&t.controller_expand_secret),
                node_expand_secret_ref: secret(&t.node_expand_secret),
            }),
            persistent_volume_reclaim_policy: t.reclaim_policy.clone(),
            node_affinity,
            volume_mode: t.volume_mode.clone(),
            volume_attributes_class_name: t.volume_attributes_class.clone(),
            claim_ref: Some(claim_ref(claim)),
            storage_class_name: Some(t.storage_class_name.clone()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

fn pv_annotation<'a>(pv: &'a PersistentVolume, key: &str) -> Option<&'a str> {
    crate::meta::annotation(&pv.metadata, key)
}

/// LIB `isProvisionerForVolume`: provisioned by us, or a static CSI PV of our driver.
pub fn is_ours(pv: &PersistentVolume, driver: &str) -> bool {
    match pv_annotation(pv, ANN_DYNAMICALLY_PROVISIONED) {
        Some(by) => by == driver || pv_annotation(pv, ANN_MIGRATED_TO) == Some(driver),
        None => match pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
            Some(csi) => csi.driver == driver,
            None => pv_annotation(pv, ANN_MIGRATED_TO) == Some(driver),
        },
    }
}

/// What the volume worker does with one PV, one step per pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeAction {
    /// Nothing to do.
    Nothing,
    /// Add the PV finalizer (Delete policy, Bound, not being deleted).
    AddFinalizer,
    /// Remove the PV finalizer (Retain or Recycle policy).
    RemoveFinalizer,
    /// Delete the volume on the driver, then the PV, then its finalizer.
    Delete,
}

/// LIB `handleProtectionFinalizer` then `shouldDelete`, for a PV that [`is_ours`].
pub fn plan_volume(pv: &PersistentVolume) -> VolumeAction {
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or_default();
    let phase = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let finalizer = crate::meta::has_finalizer(&pv.metadata, FINALIZER_PV);
    if policy == "Delete" && !deleting && phase == "Bound" && !finalizer {
        return VolumeAction::AddFinalizer;
    }
    if (policy == "Retain" || policy == "Recycle") && finalizer {
        return VolumeAction::RemoveFinalizer;
    }
    // The finalizer gone from a deleting PV means its volume is already deleted.
    if deleting && !finalizer {
        return VolumeAction::Nothing;
    }
    if phase == "Released" && policy == "Delete" {
        return VolumeAction::Delete;
    }
    VolumeAction::Nothing
}

/// Where DeleteVolume's secrets come from (upstream `handleSecretsForDeletion`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletionSecrets {
    /// No secrets.
    None,
    /// Read this Secret; if that fails, delete without secrets.
    Secret(SecretRef),
    /// Resolving the StorageClass template failed: deletion is blocked with this error.
    Error(String),
}

/// Upstream `handleSecretsForDeletion`: from the deletion-secret annotations when both are
/// present, else from the StorageClass's provisioner-secret template (`class_params`, `None` when
/// the PV names no class or the class is gone) against a claim that has only claimRef's name and
/// namespace.
pub fn deletion_secrets(
    pv: &PersistentVolume,
    class_params: Option<&BTreeMap<String, String>>,
) -> DeletionSecrets {
    let name = pv_annotation(pv, ANN_DELETION_SECRET_NAME);
    let namespace = pv_annotation(pv, ANN_DELETION_SECRET_NAMESPACE);
    if let (Some(name), Some(namespace)) = (name, namespace) {
        return if !name.is_empty() && !namespace.is_empty() {
            DeletionSecrets::Secret(SecretRef {
                name: name.to_string(),
                namespace: namespace.to_string(),
            })
        } else {
            DeletionSecrets::None
        };
    }
    let Some(params) = class_params else {
        return DeletionSecrets::None;
    };
    let Some(claim_ref) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return DeletionSecrets::None;
    };
    let pv_name = pv.metadata.name.as_deref().unwrap_or_default();
    let claim = ClaimFields {
        name: claim_ref.name.as_deref().unwrap_or_default(),
        namespace: claim_ref.namespace.as_deref().unwrap_or_default(),
        annotations: None,
    };
    match params::secret_reference(SecretKind::Provisioner, params, pv_name, Some(&claim)) {
        Ok(Some(r)) => DeletionSecrets::Secret(r),
        Ok(None) => DeletionSecrets::None,
        Err(e) => DeletionSecrets::Error(format!(
            "failed to get secretreference for volume {pv_name}: {e}"
        )),
    }
}

/// The class a PV names (beta annotation first, then `spec.storageClassName`).
pub fn pv_class(pv: &PersistentVolume) -> Option<String> {
    pv_annotation(pv, ANN_BETA_STORAGE_CLASS)
        .map(str::to_string)
        .or_else(|| pv.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests;
