//! Data sources, without I/O: which source a claim names, the checks of a clone source (upstream
//! `getPVCSource`), and the cloning-protection finalizer's rule (upstream `clone_controller.go`).
//!
//! The controller looks the source objects up (caches first) and hands them here; the answer is
//! the content source recorded in the intent, so that retries and rollbacks replay it exactly.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde::{Deserialize, Serialize};

use crate::constants::{
    ANN_ALLOW_VOLUME_MODE_CHANGE, FINALIZER_CLONE_PROTECTION, FINALIZER_SNAPSHOT_SOURCE_PROTECTION,
    PVC_KIND, SNAPSHOT_KIND,
};
use controller_kit::quantity;

/// `volume_content_source` of a CreateVolume request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordedSource {
    /// Clone of this volume id.
    Volume(String),
    /// Restore of this snapshot id.
    Snapshot(String),
}

/// The data source a claim names (`spec.dataSource`, else `spec.dataSourceRef`): kind and name.
pub fn data_source(claim: &PersistentVolumeClaim) -> Option<(String, String)> {
    let spec = claim.spec.as_ref()?;
    if let Some(ds) = &spec.data_source {
        return Some((ds.kind.clone(), ds.name.clone()));
    }
    spec.data_source_ref
        .as_ref()
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// The source PVC's name when `claim` is a clone.
pub fn clone_source_name(claim: &PersistentVolumeClaim) -> Option<String> {
    data_source(claim)
        .filter(|(kind, _)| kind == PVC_KIND)
        .map(|(_, name)| name)
}

fn storage_request(pvc: &PersistentVolumeClaim) -> i64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::parse_bytes(&q.0))
        .unwrap_or(0)
}

fn volume_mode(pvc_mode: Option<&str>) -> &str {
    // Filesystem is the default: nil counts as Filesystem.
    match pvc_mode {
        Some("Block") => "Block",
        _ => "Filesystem",
    }
}

/// Upstream `getPVCSource`: checks the clone source and returns its volume id. The error is the
/// inner message; the caller wraps it as upstream does.
///
/// `source_pvc` is the source claim (`Err` carries the lookup error), `source_pv` the PV it is
/// bound to, if found, and `provisioner` the StorageClass's provisioner.
pub fn clone_source(
    claim: &PersistentVolumeClaim,
    source_pvc: Result<&PersistentVolumeClaim, String>,
    source_pv: Option<&PersistentVolume>,
    provisioner: &str,
) -> Result<RecordedSource, String> {
    let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let name = clone_source_name(claim).unwrap_or_default();
    let source = source_pvc.map_err(|e| {
        format!("error getting PVC {name} (namespace {namespace:?}) from api server: {e}")
    })?;
    let phase = source
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    if phase != "Bound" {
        return Err(format!(
            "the PVC DataSource {name} must have a status of Bound.  Got {{{phase}}}"
        ));
    }
    if source.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "the PVC DataSource {name} is currently being deleted"
        ));
    }
    let source_spec = source.spec.clone().unwrap_or_default();
    let claim_spec = claim.spec.clone().unwrap_or_default();
    if source_spec.storage_class_name.is_none() {
        return Err(format!(
            "the source PVC ({name}) storageclass cannot be empty"
        ));
    }
    if claim_spec.storage_class_name.is_none() {
        return Err(format!(
            "the requested PVC ({claim_name}) storageclass cannot be empty"
        ));
    }
    let (requested, source_size) = (storage_request(claim), storage_request(source));
    if requested < source_size {
        return Err(format!(
            "error, new PVC request must be greater than or equal in size to the specified PVC data source, requested {requested} but source is {source_size}"
        ));
    }
    let volume_name = source_spec.volume_name.clone().unwrap_or_default();
    if volume_name.is_empty() {
        return Err(format!("volume name is empty in source PVC {name}"));
    }
    let invalid = || "claim in dataSource not bound or invalid".to_string();
    let pv = source_pv.ok_or_else(invalid)?;
    let pv_spec = pv.spec.as_ref().ok_or_else(invalid)?;
    let csi = pv_spec.csi.as_ref().ok_or_else(invalid)?;
    if csi.driver != provisioner {
        return Err(invalid());
    }
    let claim_ref = pv_spec.claim_ref.as_ref().ok_or_else(invalid)?;
    if claim_ref.uid != source.metadata.uid
        || claim_ref.namespace != source.metadata.namespace
        || claim_ref.name != source.metadata.name
    {
        return Err(invalid());
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Err(invalid());
    }
    let (from, to) = (
        volume_mode(source_spec.volume_mode.as_deref()),
        volume_mode(claim_spec.volume_mode.as_deref()),
    );
    if from != to {
        return Err(format!(
            "the source PVC and destination PVCs must have the same volume mode for cloning.  Source is {from}, but new PVC requested {to}"
        ));
    }
    Ok(RecordedSource::Volume(csi.volume_handle.clone()))
}

/// The VolumeSnapshot's name when `claim` restores one.
pub fn snapshot_source_name(claim: &PersistentVolumeClaim) -> Option<String> {
    data_source(claim)
        .filter(|(kind, _)| kind == SNAPSHOT_KIND)
        .map(|(_, name)| name)
}

fn text<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Whether a VolumeSnapshot (as JSON) carries the provisioner's source-protection finalizer.
pub fn has_snapshot_protection(snapshot: &serde_json::Value) -> bool {
    snapshot["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER_SNAPSHOT_SOURCE_PROTECTION))
}

/// Upstream `getSnapshotSource`: checks the VolumeSnapshot and its bound content (both as JSON,
/// `Err` carrying the lookup error) against the claim's class (name, provisioner) and returns
/// the snapshot handle, with v6.3's error texts. `content` is `None` when the
/// snapshot names no content (then it is not looked up).
pub fn snapshot_source(
    claim: &PersistentVolumeClaim,
    snapshot: Result<&serde_json::Value, String>,
    content: Option<Result<&serde_json::Value, String>>,
    (class_name, provisioner): (&str, &str),
    prevent_volume_mode_conversion: bool,
) -> Result<RecordedSource, String> {
    let name = snapshot_source_name(claim).unwrap_or_default();
    let snapshot =
        snapshot.map_err(|e| format!("error getting snapshot {name} from api server: {e}"))?;
    if snapshot["metadata"]["deletionTimestamp"].is_string() && !has_snapshot_protection(snapshot) {
        // Only a restore that started before the deletion (it put our finalizer on) may go on.
        return Err(format!("snapshot {name} is being deleted"));
    }
    let not_bound = || format!("snapshot {name} not bound");
    let content_name =
        text(snapshot, &["status", "boundVolumeSnapshotContentName"]).ok_or_else(not_bound)?;
    let content = match content {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::warn!(snapshot = %name, content = %content_name, error = %e, "error getting snapshotcontent");
            return Err(format!(
                "error getting snapshotcontent {content_name} for snapshot {name}"
            ));
        }
        None => return Err(not_bound()),
    };
    let reference = &content["spec"]["volumeSnapshotRef"];
    let meta = &snapshot["metadata"];
    if reference["uid"] != meta["uid"]
        || reference["namespace"] != meta["namespace"]
        || reference["name"] != meta["name"]
    {
        return Err(format!(
            "snapshotcontent {content_name} for snapshot {name} is bound to a different snapshot"
        ));
    }
    if text(content, &["spec", "driver"]) != Some(provisioner) {
        return Err(format!(
            "snapshotcontent {content_name} for snapshot {name} is not handled by CSI driver of StorageClass {class_name}"
        ));
    }
    if snapshot["status"]["readyToUse"] != serde_json::Value::Bool(true) {
        return Err(format!("snapshot {name} is not Ready"));
    }
    let handle = text(content, &["status", "snapshotHandle"])
        .ok_or_else(|| format!("snapshot handle {name} is not available"))?;
    if let Some(restore) = text(snapshot, &["status", "restoreSize"]) {
        let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
        let requested = claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .ok_or_else(|| {
                format!("error getting capacity for PVC {claim_name} when creating snapshot {name}")
            })?;
        let requested = quantity::parse_bytes(&requested.0).unwrap_or(0);
        let restore = quantity::parse_bytes(restore).unwrap_or(0);
        if requested < restore {
            return Err(format!(
                "requested volume size {requested} is less than the size {restore} for the source snapshot {name}"
            ));
        }
    }
    let claim_mode = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref());
    let source_mode = text(content, &["spec", "sourceVolumeMode"]);
    if prevent_volume_mode_conversion
        && let (Some(from), Some(to)) = (source_mode, claim_mode)
        && from != to
    {
        let who = format!(
            "requested volume {}/{} modifies the mode of the source volume but does not have permission to do so.",
            claim.metadata.namespace.as_deref().unwrap_or_default(),
            claim.metadata.name.as_deref().unwrap_or_default()
        );
        let content_name = text(content, &["metadata", "name"]).unwrap_or_default();
        match text(
            content,
            &["metadata", "annotations", ANN_ALLOW_VOLUME_MODE_CHANGE],
        ) {
            None => {
                return Err(format!(
                    "{who} {ANN_ALLOW_VOLUME_MODE_CHANGE} annotation is not present on snapshotcontent {content_name}"
                ));
            }
            Some(v) => match parse_go_bool(v) {
                Err(()) => {
                    return Err(format!(
                        "{who} failed to convert {ANN_ALLOW_VOLUME_MODE_CHANGE} annotation value to boolean with error: strconv.ParseBool: parsing {v:?}: invalid syntax"
                    ));
                }
                Ok(false) => {
                    return Err(format!(
                        "{who} {ANN_ALLOW_VOLUME_MODE_CHANGE} is set to false on snapshotcontent {content_name}"
                    ));
                }
                Ok(true) => {}
            },
        }
    }
    Ok(RecordedSource::Snapshot(handle.to_string()))
}

/// Upstream's orphaned snapshot-finalizer sweep: a VolumeSnapshot (as JSON) whose source
/// protection no claim needs any more: it carries the finalizer and no claim in phase Pending (or
/// without a phase) restores from it, through `dataSource` or `dataSourceRef` (kind
/// VolumeSnapshot, apiGroup absent or snapshot.storage.k8s.io; a Ref's namespace honoured).
pub fn orphaned_snapshot_protection<'a>(
    snapshot: &serde_json::Value,
    claims: impl IntoIterator<Item = &'a PersistentVolumeClaim>,
) -> bool {
    if !has_snapshot_protection(snapshot) {
        return false;
    }
    let (Some(ns), Some(name)) = (
        snapshot["metadata"]["namespace"].as_str(),
        snapshot["metadata"]["name"].as_str(),
    ) else {
        return false;
    };
    let group_ok = |g: Option<&str>| g.is_none_or(|g| g == crate::constants::SNAPSHOT_API_GROUP);
    !claims.into_iter().any(|c| {
        let phase = c
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default();
        if phase != "Pending" && !phase.is_empty() {
            return false;
        }
        let claim_ns = c.metadata.namespace.as_deref().unwrap_or_default();
        let Some(spec) = c.spec.as_ref() else {
            return false;
        };
        let by_source = spec.data_source.as_ref().is_some_and(|d| {
            d.kind == SNAPSHOT_KIND
                && d.name == name
                && group_ok(d.api_group.as_deref())
                && claim_ns == ns
        });
        let by_ref = spec.data_source_ref.as_ref().is_some_and(|r| {
            r.kind == SNAPSHOT_KIND
                && r.name == name
                && group_ok(r.api_group.as_deref())
                && r.namespace.as_deref().unwrap_or(claim_ns) == ns
        });
        by_source || by_ref
    })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Result<bool, ()> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(()),
    }
}

/// Whether `pvc` carries the cloning-protection finalizer.
pub fn has_clone_protection(pvc: &PersistentVolumeClaim) -> bool {
    crate::meta::has_finalizer(&pvc.metadata, FINALIZER_CLONE_PROTECTION)
}

/// Upstream clone controller: a deleted source keeps its cloning-protection finalizer while a
/// claim in its namespace that clones it (`spec.dataSource`) is still Pending. Returns the error
/// upstream requeues with, or `None` when the finalizer may go.
pub fn clone_in_progress<'a>(
    source: &PersistentVolumeClaim,
    claims: impl IntoIterator<Item = &'a PersistentVolumeClaim>,
) -> Option<String> {
    let name = source.metadata.name.as_deref()?;
    let namespace = source.metadata.namespace.as_deref();
    let pending = claims.into_iter().any(|c| {
        c.metadata.namespace.as_deref() == namespace
            && c.spec
                .as_ref()
                .and_then(|s| s.data_source.as_ref())
                .is_some_and(|ds| ds.kind == PVC_KIND && ds.name == name)
            && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
    });
    pending.then(|| format!("PVC '{name}' is in 'Pending' state, cloning in progress"))
}

#[cfg(test)]
mod tests;
