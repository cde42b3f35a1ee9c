//! The common controller's pass over a live VolumeSnapshot: observe the caches, let
//! [`super::plan`] decide, perform the one step it returns; and the API writes every pass uses.
//! The deletion pass is in `deletion`, the content's pass in `content`, the source claim's
//! handling in `claims`.

use std::sync::Arc;

use controller_kit::{NamespacedName, Outcome};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::plan::{self, Failure, SnapshotFacts, SnapshotStep};
use super::{AGAIN, Shared};
use crate::PassError;
use crate::constants::*;
use crate::metrics::snapshot_type;
use crate::params::{self, SecretKind, SnapshotFields};
use crate::types::*;

pub(super) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

pub(crate) fn content_ref(c: &VolumeSnapshotContent) -> ObjectReference {
    ObjectReference {
        api_version: Some(API_VERSION.into()),
        kind: Some("VolumeSnapshotContent".into()),
        name: c.metadata.name.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        ..Default::default()
    }
}

pub(super) async fn call<T>(
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, controller_kit::api::ApiError> {
    controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, f).await
}

pub(super) fn again() -> Result<Outcome, PassError> {
    Ok(Outcome::RequeueAfter(AGAIN))
}

impl Shared {
    pub(super) fn snapshots_api(&self, ns: &str) -> Api<VolumeSnapshot> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    pub(super) fn contents_api(&self) -> Api<VolumeSnapshotContent> {
        Api::all(self.ctx.client.clone())
    }

    /// The driver of a snapshot, for metrics: its content's, else its class's.
    pub(super) fn driver_of(&self, vs: &VolumeSnapshot) -> String {
        plan::content_name(vs)
            .and_then(|c| self.content(&c))
            .map(|c| c.spec.driver.clone())
            .or_else(|| {
                let class = vs.spec.volume_snapshot_class_name.as_deref()?;
                self.classes
                    .get(&ObjectRef::new(class))
                    .map(|c| c.driver.clone())
            })
            .unwrap_or_default()
    }

    /// The group snapshot whose content holds a member content's group handle (upstream
    /// scans the group contents the same way).
    fn group_of_member(&self, c: &VolumeSnapshotContent) -> Option<String> {
        let handle = c.status.as_ref()?.volume_group_snapshot_handle.as_deref()?;
        let g = self.groups.as_ref()?;
        g.contents.state().iter().find_map(|gc| {
            (gc.status.as_ref()?.volume_group_snapshot_handle.as_deref() == Some(handle))
                .then(|| gc.spec.volume_group_snapshot_ref.name.clone())
                .flatten()
        })
    }

    pub(crate) async fn sync_snapshot(
        self: Arc<Self>,
        key: NamespacedName,
    ) -> Result<Outcome, PassError> {
        let Some(vs) = self.snapshot(&key) else {
            return Ok(Outcome::Done);
        };
        // The claim's finalizer goes as soon as no unready snapshot needs it.
        if let Some(claim) = self.claim_to_release(&vs, false) {
            if let Err(e) = self.release_claim(&vs, &claim).await {
                self.events
                    .warning(
                        &plan::snapshot_reference(&vs),
                        REASON_PVC_FINALIZER_ERROR,
                        "Finalizer",
                        "Error check and remove PVC Finalizer for VolumeSnapshot",
                    )
                    .await;
                return Err(e);
            }
            return again();
        }
        if vs.metadata.deletion_timestamp.is_some() {
            return self.sync_deleting(&vs).await;
        }
        // The class: named and cached, or the default one of the source volume's driver.
        let dynamic = vs.source_claim().is_some() && !plan::is_group_member(&vs);
        match vs.spec.volume_snapshot_class_name.as_deref() {
            Some(class) if self.classes.get(&ObjectRef::new(class)).is_none() => {
                let message = format!(
                    "Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io \"{class}\" not found"
                );
                let failure = Failure {
                    reason: REASON_GET_CLASS_FAILED,
                    message,
                    not_ready: false,
                    retry: true,
                };
                return self.fail(&vs, failure).await;
            }
            Some(_) => {}
            None if dynamic && vs.source_content().is_none() => {
                return match self.default_class(&vs).await {
                    Ok(class) => {
                        let body = json!({"spec": {"volumeSnapshotClassName": class}});
                        self.patch_snapshot(&vs, &body).await?;
                        again()
                    }
                    Err(e) => {
                        let failure = Failure {
                            reason: REASON_DEFAULT_CLASS_FAILED,
                            message: format!("Failed to set default snapshot class with error {e}"),
                            not_ready: false,
                            retry: true,
                        };
                        self.fail(&vs, failure).await
                    }
                };
            }
            None => {}
        }
        let uid = vs.metadata.uid.clone().unwrap_or_default();
        let pre = vs.source_content().is_some();
        if !vs.is_ready() {
            let driver = self.driver_of(&vs);
            if vs
                .status
                .as_ref()
                .and_then(|s| s.creation_time.as_ref())
                .is_none()
            {
                self.metrics
                    .start(OP_CREATE, &uid, &driver, snapshot_type(pre));
            }
            self.metrics
                .start(OP_CREATE_AND_READY, &uid, &driver, snapshot_type(pre));
        }
        let content = plan::content_name(&vs).and_then(|c| self.content(&c));
        let group_name = content.as_deref().and_then(|c| self.group_of_member(c));
        let facts = SnapshotFacts {
            vs: &vs,
            content: content.as_deref(),
            restoring: false,
            group_exists: false,
            group_name: group_name.as_deref(),
            now: now(),
        };
        let step = plan::live_step(&facts);
        tracing::debug!(snapshot = %vs.key(), ?step, "snapshot pass");
        match step {
            SnapshotStep::Done => Ok(Outcome::Done),
            SnapshotStep::Fail(f) => self.fail(&vs, f).await,
            SnapshotStep::AddFinalizers { as_source, bound } => {
                let mut finalizers = vs.metadata.finalizers.clone().unwrap_or_default();
                if as_source {
                    finalizers.push(FIN_SNAPSHOT_AS_SOURCE.into());
                }
                if bound {
                    finalizers.push(FIN_SNAPSHOT_BOUND.into());
                }
                if let Err(e) = self.set_snapshot_finalizers(&vs, finalizers).await {
                    // A lost race is retried quietly (upstream reports it as an Event too).
                    if e.conflict {
                        return Err(e);
                    }
                    let note = format!("Failed to check and update snapshot: {e}");
                    self.events
                        .warning(
                            &plan::snapshot_reference(&vs),
                            REASON_FINALIZER_ERROR,
                            "Finalizer",
                            &note,
                        )
                        .await;
                    return Err(e);
                }
                again()
            }
            SnapshotStep::BindContent {
                content,
                uid,
                class,
            } => {
                let Some(c) = self.content(&content) else {
                    return again();
                };
                let mut spec = json!({"volumeSnapshotRef": {"uid": uid}});
                if let Some(class) = class {
                    spec["volumeSnapshotClassName"] = json!(class);
                }
                if let Err(e) = self.patch_content(&c, &json!({"spec": spec})).await {
                    let failure = Failure {
                        reason: REASON_BIND_FAILED,
                        message: format!("Snapshot failed to bind VolumeSnapshotContent, {e}"),
                        not_ready: true,
                        retry: true,
                    };
                    return self.fail(&vs, failure).await;
                }
                again()
            }
            SnapshotStep::UpdateStatus(update) => {
                self.write_status(&vs, update).await?;
                again()
            }
            SnapshotStep::CreateContent => self.create_content(&vs).await,
            step @ (SnapshotStep::DeletePending { .. }
            | SnapshotStep::MarkContentBeingDeleted { .. }
            | SnapshotStep::DeleteContent { .. }
            | SnapshotStep::RemoveFinalizers { .. }) => {
                Err(format!("unexpected step {step:?} for a live snapshot").into())
            }
        }
    }

    /// Reports a failure on the snapshot (status error when new, and an Event even if the status
    /// write fails, as upstream).
    pub(super) async fn fail(&self, vs: &VolumeSnapshot, f: Failure) -> Result<Outcome, PassError> {
        if let Some(status) = plan::error_status(vs, &f.message, f.not_ready, now()) {
            let written = self.replace_status(vs, status).await;
            self.events
                .warning(
                    &plan::snapshot_reference(vs),
                    f.reason,
                    "Snapshot",
                    &f.message,
                )
                .await;
            written?;
        }
        if f.retry {
            Err(f.message.into())
        } else {
            Ok(Outcome::Done)
        }
    }

    pub(super) async fn write_status(
        &self,
        vs: &VolumeSnapshot,
        update: plan::StatusUpdate,
    ) -> Result<(), PassError> {
        let uid = vs.metadata.uid.clone().unwrap_or_default();
        let key = vs.key();
        let r = plan::snapshot_reference(vs);
        let created = update.created;
        let ready = update.ready;
        self.replace_status(vs, update.status).await?;
        if created {
            self.metrics.finish(OP_CREATE, &uid, "success");
            let note = format!("Snapshot {key} was successfully created by the CSI driver.");
            self.events
                .normal(&r, REASON_CREATED, "Snapshot", &note)
                .await;
        }
        if ready {
            self.metrics.finish(OP_CREATE_AND_READY, &uid, "success");
            let note = format!("Snapshot {key} is ready to use.");
            self.events
                .normal(&r, REASON_READY, "Snapshot", &note)
                .await;
        }
        Ok(())
    }

    /// PUT of the snapshot's `/status` (conditioned on its resourceVersion).
    pub(super) async fn replace_status(
        &self,
        vs: &VolumeSnapshot,
        status: VolumeSnapshotStatus,
    ) -> Result<(), PassError> {
        let mut next = vs.clone();
        next.status = Some(status);
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let name = vs.metadata.name.as_deref().unwrap_or_default();
        let updated = call(self.snapshots_api(ns).replace_status(
            name,
            &PostParams::default(),
            &next,
        ))
        .await
        .map_err(|e| {
            PassError::api(
                format!("snapshot {}: status update failed: {e}", vs.key()),
                &e,
            )
        })?;
        self.written_snapshots.record(&vs.key(), vs, updated);
        Ok(())
    }

    pub(super) async fn patch_snapshot(
        &self,
        vs: &VolumeSnapshot,
        body: &serde_json::Value,
    ) -> Result<(), PassError> {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let name = vs.metadata.name.as_deref().unwrap_or_default();
        let updated = call(self.snapshots_api(ns).patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(body),
        ))
        .await
        .map_err(|e| PassError::api(format!("snapshot {}: {e}", vs.key()), &e))?;
        self.written_snapshots.record(&vs.key(), vs, updated);
        Ok(())
    }

    /// The whole finalizer list, conditioned on the resourceVersion read (others' finalizers
    /// are never dropped by a stale write).
    pub(super) async fn set_snapshot_finalizers(
        &self,
        vs: &VolumeSnapshot,
        finalizers: Vec<String>,
    ) -> Result<(), PassError> {
        let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": vs.metadata.resource_version}});
        self.patch_snapshot(vs, &body).await
    }

    pub(crate) async fn patch_content(
        &self,
        c: &VolumeSnapshotContent,
        body: &serde_json::Value,
    ) -> Result<(), PassError> {
        let updated = call(self.contents_api().patch(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(body),
        ))
        .await
        .map_err(|e| PassError::api(format!("content {}: {e}", c.name()), &e))?;
        self.written_contents.record(c.name(), c, updated);
        Ok(())
    }

    pub(super) async fn default_class(&self, vs: &VolumeSnapshot) -> Result<String, String> {
        let pv = self.source_volume(vs).await?;
        let Some(driver) = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .map(|c| c.driver.clone())
        else {
            return Err(format!(
                "snapshotting non-CSI volumes is not supported, snapshot:{}",
                vs.key()
            ));
        };
        let classes = self.classes.state();
        plan::default_class(classes.iter().map(|c| c.as_ref()), &driver)
    }

    /// Upstream `createSnapshotContent` and the status that binds the snapshot to it.
    pub(super) async fn create_content(&self, vs: &VolumeSnapshot) -> Result<Outcome, PassError> {
        let fail = |message: String| Failure {
            reason: REASON_CONTENT_CREATION_FAILED,
            message: format!("Failed to create snapshot content with error {message}"),
            not_ready: true,
            retry: true,
        };
        if let Err(e) = self.protect_claim(vs).await {
            return self.fail(vs, fail(e)).await;
        }
        let input = async {
            let name = vs.metadata.name.as_deref().unwrap_or_default();
            let class_name = vs
                .spec
                .volume_snapshot_class_name
                .as_deref()
                .ok_or_else(|| {
                    format!("failed to take snapshot {name} without a snapshot class")
                })?;
            let class = self
                .classes
                .get(&ObjectRef::new(class_name))
                .ok_or_else(|| {
                    format!(
                        "volumesnapshotclass.snapshot.storage.k8s.io \"{class_name}\" not found"
                    )
                })?;
            let pv = self.source_volume(vs).await?;
            let content_name = params::content_name(vs.metadata.uid.as_deref().unwrap_or_default());
            let fields = SnapshotFields {
                name,
                namespace: vs.metadata.namespace.as_deref().unwrap_or_default(),
            };
            let secret = params::secret_reference(
                SecretKind::Snapshotter,
                &class.params(),
                &content_name,
                Some(fields),
            )?;
            Ok::<_, String>((class, pv, secret))
        };
        let (class, pv, secret) = match input.await {
            Ok(i) => i,
            Err(e) => {
                let name = vs.metadata.name.as_deref().unwrap_or_default();
                return self
                    .fail(
                        vs,
                        fail(format!(
                            "failed to get input parameters to create snapshot {name}: \"{e}\""
                        )),
                    )
                    .await;
            }
        };
        let spec = pv.spec.as_ref();
        let Some(csi) = spec.and_then(|s| s.csi.as_ref()) else {
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            return self
                .fail(
                    vs,
                    fail(format!(
                        "cannot find CSI PersistentVolumeSource for volume {pv_name}"
                    )),
                )
                .await;
        };
        let content = plan::new_content(&plan::ContentInput {
            vs,
            class: &class,
            volume_handle: &csi.volume_handle,
            volume_mode: spec
                .and_then(|s| s.volume_mode.clone())
                .filter(|_| self.config.prevent_volume_mode_conversion),
            secret,
            managed_by: None,
        });
        let created = match call(self.contents_api().create(&PostParams::default(), &content)).await
        {
            Ok(c) => c,
            Err(e) if e.status_code() == Some(409) => content.clone(),
            Err(e) => {
                let note = format!(
                    "Error creating volume snapshot content object for snapshot {}: {e}.",
                    vs.key()
                );
                self.events
                    .warning(
                        &plan::snapshot_reference(vs),
                        REASON_CREATE_CONTENT_FAILED,
                        "Snapshot",
                        &note,
                    )
                    .await;
                return self.fail(vs, fail(e.to_string())).await;
            }
        };
        let note = format!(
            "Waiting for a snapshot {} to be created by the CSI driver.",
            vs.key()
        );
        self.events
            .normal(
                &plan::snapshot_reference(vs),
                REASON_CREATING,
                "Snapshot",
                &note,
            )
            .await;
        if let Some(update) = plan::status_update(vs, &created)
            && let Err(e) = self.write_status(vs, update).await
        {
            let failure = Failure {
                reason: REASON_STATUS_UPDATE_FAILED,
                message: format!("Snapshot status update failed, {e}"),
                not_ready: false,
                retry: true,
            };
            return self.fail(vs, failure).await;
        }
        again()
    }
}
