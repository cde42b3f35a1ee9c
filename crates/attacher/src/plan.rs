//! The planner: given what the caches (and, when needed, a Secret) say about one
//! VolumeAttachment, the next step, as external-attacher v4.12 would take it.
//!
//! Pure: no I/O, no clock. The act layer ([`crate::controller`]) performs the step and plans
//! again on the next pass. One pass performs at most one visible step; a CSI call together with
//! the writes that record its outcome (status, finalizer) counts as one step, because its result
//! exists only in memory.
//!
//! # Order (upstream `csiAttach`)
//! PV checks and PV finalizer → source, capability, secrets, node ID → VA finalizer and node-id
//! annotation (one merge patch) → ControllerPublish. A failure before the VA-finalizer step never
//! adds that finalizer, so such a VA can still be deleted freely.

use std::collections::HashMap;

use csi::v1;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use serde_json::Value;

use crate::patch;
use crate::request::{self, DriverInfo, SecretRef, Source};

/// A work lane: one queue and one worker pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// VolumeAttachments without deletionTimestamp (and all of them for a driver without
    /// PUBLISH_UNPUBLISH_VOLUME).
    Attach,
    /// VolumeAttachments with deletionTimestamp.
    Detach,
}

impl Lane {
    /// The lane a VolumeAttachment belongs in, by its state.
    pub fn of(va: &VolumeAttachment, driver: &DriverInfo) -> Lane {
        if driver.publish_unpublish && va.metadata.deletion_timestamp.is_some() {
            Lane::Detach
        } else {
            Lane::Attach
        }
    }
}

/// The Secret of ControllerPublish/Unpublish, as far as it has been read.
#[derive(Clone, PartialEq, Eq)]
pub enum Secrets {
    /// Not read (yet); the planner asks for it with [`Step::LoadSecrets`] when needed.
    NotLoaded,
    /// Read: its `data`, as strings.
    Loaded(HashMap<String, String>),
    /// The GET failed; upstream's message.
    Failed(String),
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secrets::NotLoaded => f.write_str("NotLoaded"),
            Secrets::Loaded(m) => write!(f, "Loaded({} keys)", m.len()),
            Secrets::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// What one pass knows about one VolumeAttachment.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The VolumeAttachment (from the cache).
    pub va: &'a VolumeAttachment,
    /// The PV named by `spec.source.persistentVolumeName`, if that is set and cached.
    pub pv: Option<&'a PersistentVolume>,
    /// The CSINode named `spec.nodeName`, if cached.
    pub csinode: Option<&'a CSINode>,
    /// Whether the Node object `spec.nodeName` exists (from the synced Node cache).
    pub node_exists: bool,
    /// The publish Secret.
    pub secrets: &'a Secrets,
    /// A one-shot flag set by the ListVolumes sync: bypass the skip rules once.
    pub force_sync: bool,
}

/// Why nothing is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `status.attached` is true (the finalizer is not looked at, as upstream).
    AlreadyAttached,
    /// Our finalizer is absent (`status.attached` is not looked at, as upstream).
    AlreadyDetached,
}

/// The next step for one VolumeAttachment.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing to do.
    Skip(Skip),
    /// The VA belongs in the other lane (its deletionTimestamp appeared or, never in practice,
    /// went away).
    MoveLane(Lane),
    /// Read this Secret, then plan again.
    LoadSecrets(SecretRef),
    /// JSON-patch our finalizer onto the PV.
    AddPvFinalizer {
        /// The PV's name.
        pv: String,
        /// The RFC 6902 patch.
        patch: Value,
    },
    /// Save `status.attachError` (no gRPC code) and retry with backoff.
    AttachError(String),
    /// Save `status.detachError` and retry with backoff.
    DetachError(String),
    /// Merge-patch the VA finalizer and node-id annotation.
    SaveVaMetadata(Value),
    /// ControllerPublishVolume, then mark attached or save the error.
    Publish(Box<v1::ControllerPublishVolumeRequest>),
    /// ControllerUnpublishVolume, then remove the finalizer and mark detached, or save the error.
    Unpublish {
        /// The request.
        request: v1::ControllerUnpublishVolumeRequest,
        /// The Node object is gone: a NOT_FOUND answer then counts as detached.
        node_gone: bool,
    },
    /// Driver without PUBLISH_UNPUBLISH_VOLUME: mark attached without calling the driver.
    MarkAttachedTrivially,
}

enum Resolved<'a> {
    Source(Source<'a>),
    Step(Step),
}

/// Resolves the VA's source (upstream `csiAttach`/`csiDetach` prologue). On attach, the PV must
/// not be deleting and must carry our finalizer first; `error` wraps messages for the lane.
fn resolve<'a>(
    obs: &Observed<'a>,
    driver: &DriverInfo,
    attach: bool,
    error: fn(String) -> Step,
) -> Resolved<'a> {
    let src = &obs.va.spec.source;
    let result = match (&src.persistent_volume_name, &src.inline_volume_spec) {
        (Some(_), Some(_)) => {
            Err("both InlineCSIVolumeSource and PersistentVolumeName specified in VA source".into())
        }
        (None, None) => Err(
            "neither InlineCSIVolumeSource nor PersistentVolumeName specified in VA source".into(),
        ),
        (None, Some(inline)) => request::inline_source(inline),
        (Some(name), None) => match obs.pv {
            None => Err(request::pv_not_found(name)),
            Some(pv) => {
                if attach {
                    if pv.metadata.deletion_timestamp.is_some() {
                        return Resolved::Step(error(format!(
                            "PersistentVolume {name:?} is marked for deletion"
                        )));
                    }
                    if !controller_kit::meta::has_finalizer(&pv.metadata, &driver.finalizer) {
                        return Resolved::Step(Step::AddPvFinalizer {
                            pv: name.clone(),
                            patch: patch::add_pv_finalizer(
                                pv.metadata.finalizers.as_deref(),
                                &driver.finalizer,
                            ),
                        });
                    }
                }
                match &pv.spec {
                    Some(spec) => request::csi_source(spec),
                    None => Err("could not get CSI source, pv spec was nil".into()),
                }
            }
        },
    };
    match result {
        Ok(source) => Resolved::Source(source),
        Err(e) => Resolved::Step(error(e)),
    }
}

/// The secrets, or the step to get them.
fn secrets(
    source: Source<'_>,
    obs: &Observed<'_>,
    error: fn(String) -> Step,
) -> Result<HashMap<String, String>, Step> {
    let Some(r) = request::secret_ref(source.csi) else {
        return Ok(HashMap::new());
    };
    match obs.secrets {
        Secrets::NotLoaded => Err(Step::LoadSecrets(r)),
        Secrets::Loaded(m) => Ok(m.clone()),
        Secrets::Failed(e) => Err(error(e.clone())),
    }
}

/// The next step for `obs.va` in `lane`.
pub fn plan(driver: &DriverInfo, lane: Lane, obs: &Observed<'_>) -> Step {
    let va = obs.va;
    let attached = va.status.as_ref().is_some_and(|s| s.attached);
    if !driver.publish_unpublish {
        // Upstream's trivial handler: attached = true, even while deleting.
        return if attached {
            Step::Skip(Skip::AlreadyAttached)
        } else {
            Step::MarkAttachedTrivially
        };
    }
    let want = Lane::of(va, driver);
    if want != lane {
        return Step::MoveLane(want);
    }
    match lane {
        Lane::Attach => plan_attach(driver, obs, attached),
        Lane::Detach => plan_detach(driver, obs),
    }
}

fn plan_attach(driver: &DriverInfo, obs: &Observed<'_>, attached: bool) -> Step {
    if attached && !obs.force_sync {
        return Step::Skip(Skip::AlreadyAttached);
    }
    let source = match resolve(obs, driver, true, Step::AttachError) {
        Resolved::Source(s) => s,
        Resolved::Step(step) => return step,
    };
    // Validate the capability before the Secret GET, as upstream orders its checks.
    if let Err(e) = request::volume_capability(source.spec, source.csi, driver) {
        return Step::AttachError(e);
    }
    let secrets = match secrets(source, obs, Step::AttachError) {
        Ok(s) => s,
        Err(step) => return step,
    };
    let node = &obs.va.spec.node_name;
    if !obs.node_exists {
        // Beyond upstream: never publish to a node whose Node object is gone. Retried with
        // backoff, so a re-registered node is attached.
        return Step::AttachError(format!(
            "node {node:?} not found; not attaching to a deleted node"
        ));
    }
    let node_id = match request::node_id(&driver.name, node, obs.csinode, None) {
        Ok(id) => id,
        Err(e) => return Step::AttachError(e),
    };
    if let Some(patch) = patch::va_metadata(obs.va, &driver.finalizer, &node_id) {
        return Step::SaveVaMetadata(patch);
    }
    match request::publish_request(source, driver, node_id, secrets) {
        Ok(req) => Step::Publish(Box::new(req)),
        Err(e) => Step::AttachError(e),
    }
}

fn plan_detach(driver: &DriverInfo, obs: &Observed<'_>) -> Step {
    if !obs.force_sync && !controller_kit::meta::has_finalizer(&obs.va.metadata, &driver.finalizer)
    {
        return Step::Skip(Skip::AlreadyDetached);
    }
    let source = match resolve(obs, driver, false, Step::DetachError) {
        Resolved::Source(s) => s,
        Resolved::Step(step) => return step,
    };
    let secrets = match secrets(source, obs, Step::DetachError) {
        Ok(s) => s,
        Err(step) => return step,
    };
    let node_id = match request::node_id(
        &driver.name,
        &obs.va.spec.node_name,
        obs.csinode,
        Some(obs.va),
    ) {
        Ok(id) => id,
        Err(e) => return Step::DetachError(e),
    };
    Step::Unpublish {
        request: request::unpublish_request(source, node_id, secrets),
        node_gone: !obs.node_exists,
    }
}

/// The next step for a PersistentVolume in the PV lane.
#[derive(Debug, PartialEq)]
pub enum PvStep {
    /// Nothing to do, and why.
    Nothing(&'static str),
    /// JSON-patch our finalizer away.
    RemoveFinalizer(Value),
}

/// Upstream `SyncNewOrUpdatedPersistentVolume` (without CSI migration): remove our finalizer
/// from a deleting PV that no VolumeAttachment, of any attacher, names.
pub fn plan_pv(pv: &PersistentVolume, finalizer: &str, referenced: bool) -> PvStep {
    if pv.metadata.deletion_timestamp.is_none() {
        return PvStep::Nothing("not being deleted");
    }
    let finalizers = pv.metadata.finalizers.as_deref().unwrap_or_default();
    let Some(patch) = patch::remove_pv_finalizer(finalizers, finalizer) else {
        return PvStep::Nothing("no finalizer");
    };
    if referenced {
        return PvStep::Nothing("a VolumeAttachment names it");
    }
    PvStep::RemoveFinalizer(patch)
}

#[cfg(test)]
mod tests;
