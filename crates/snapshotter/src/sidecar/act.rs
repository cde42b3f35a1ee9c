//! The CSI half's pass: the step [`super::plan::next`] names, with its API and CSI calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use controller_kit::Outcome;
use csi::v1;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use super::Shared;
use super::plan::{self, DriverSnapshot, SidecarStep};
use crate::PassError;
use crate::common::act::content_ref;
use crate::constants::*;
use crate::params::{self, SecretKind, SecretRef};
use crate::types::*;

async fn call<T>(
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, controller_kit::api::ApiError> {
    controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, f).await
}

fn now_ns() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

/// A proto timestamp in Unix nanoseconds; none or zero is `now` (upstream: a zero time becomes
/// now; a missing one is the epoch there, which is never what a driver means).
fn nanos(t: Option<&prost_types::Timestamp>) -> i64 {
    match t {
        Some(t) if t.seconds != 0 || t.nanos != 0 => t.seconds * 1_000_000_000 + i64::from(t.nanos),
        _ => now_ns(),
    }
}

/// A failure of one pass: its text, and whether a CreateSnapshot may still run on the driver.
struct CreateError {
    message: String,
    final_answer: bool,
}

impl Shared {
    fn api(&self) -> Api<VolumeSnapshotContent> {
        Api::all(self.ctx.client.clone())
    }

    async fn patch(
        &self,
        c: &VolumeSnapshotContent,
        body: &Value,
    ) -> Result<Arc<VolumeSnapshotContent>, PassError> {
        let updated = call(self.api().patch(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(body),
        ))
        .await
        .map_err(|e| PassError::api(e.to_string(), &e))?;
        self.written.record(c.name(), c, updated.clone());
        Ok(Arc::new(updated))
    }

    /// A merge patch of `/status` from the content's status to `status`.
    async fn patch_status(
        &self,
        c: &VolumeSnapshotContent,
        status: &VolumeSnapshotContentStatus,
    ) -> Result<Arc<VolumeSnapshotContent>, PassError> {
        let old = json!({"status": c.status});
        let new = json!({"status": status});
        let Some(body) = controller_kit::patch::merge_diff(&old, &new) else {
            return Ok(Arc::new(c.clone()));
        };
        let updated = call(self.api().patch_status(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        ))
        .await
        .map_err(|e| PassError::api(e.to_string(), &e))?;
        self.written.record(c.name(), c, updated.clone());
        Ok(Arc::new(updated))
    }

    pub(super) async fn secret(&self, r: &SecretRef) -> Result<BTreeMap<String, String>, String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &r.namespace);
        let secret = call(api.get(&r.name)).await.map_err(|e| {
            format!(
                "error getting secret {} in namespace {}: {e}",
                r.name, r.namespace
            )
        })?;
        controller_kit::secrets::csi_strings(secret)
    }

    /// Upstream `GetCredentialsFromAnnotation`: the Secret frozen on the content by the common
    /// controller.
    async fn frozen_credentials(
        &self,
        c: &VolumeSnapshotContent,
    ) -> Result<BTreeMap<String, String>, String> {
        let name = controller_kit::meta::annotation(&c.metadata, ANN_SECRET_NAME);
        let namespace = controller_kit::meta::annotation(&c.metadata, ANN_SECRET_NAMESPACE);
        match (name, namespace) {
            (Some(n), Some(ns)) => self
                .secret(&SecretRef {
                    name: n.into(),
                    namespace: ns.into(),
                })
                .await
                .map_err(|e| {
                    format!(
                        "cannot get credentials for snapshot content \"{}\": {e}",
                        c.name()
                    )
                }),
            _ => Ok(BTreeMap::new()),
        }
    }

    async fn event(&self, c: &VolumeSnapshotContent, reason: &str, note: &str) {
        self.events
            .warning(&content_ref(c), reason, "Snapshot", note)
            .await;
    }

    /// After the being-created guard is removed: a content being deleted is looked at again at
    /// once, since the watch event of the removal is filtered out (upstream leaves it to the
    /// next resync, which we do not have).
    fn after_guard(c: &VolumeSnapshotContent) -> Outcome {
        if c.metadata.deletion_timestamp.is_some() {
            Outcome::RequeueAfter(std::time::Duration::ZERO)
        } else {
            Outcome::Done
        }
    }

    /// Polling delay of a content that is not ready: the content's own backoff.
    pub(super) fn poll_again(&self, name: &str) -> Outcome {
        let n = self.polls.get(name).unwrap_or(0);
        self.polls.insert(name.to_string(), n + 1);
        Outcome::RequeueAfter(self.ctx.backoff.delay(n))
    }

    pub(crate) async fn sync(self: Arc<Self>, name: String) -> Result<Outcome, PassError> {
        let Some(c) = self.content(&name) else {
            self.polls.remove(&name);
            return Ok(Outcome::Done);
        };
        let step = plan::next(&c);
        tracing::debug!(content = %name, ?step, "snapshotter pass");
        match step {
            SidecarStep::Done | SidecarStep::Wait if !c.is_ready() && plan::is_group_member(&c) => {
                Ok(self.poll_again(&name))
            }
            SidecarStep::Done | SidecarStep::Wait | SidecarStep::AwaitProtection => {
                self.polls.remove(&name);
                Ok(Outcome::Done)
            }
            SidecarStep::DeleteSnapshot => self.delete_snapshot(&c).await,
            SidecarStep::RemoveFinalizer => {
                let finalizers: Vec<&String> = c
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .filter(|f| *f != FIN_CONTENT_BOUND)
                    .collect();
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": c.metadata.resource_version}});
                self.patch(&c, &body).await?;
                self.polls.remove(&name);
                Ok(Outcome::Done)
            }
            SidecarStep::ForgetCreating => {
                let updated = self
                    .patch(
                        &c,
                        &json!({"metadata": {"annotations": {ANN_BEING_CREATED: null}}}),
                    )
                    .await?;
                self.polls.remove(&name);
                Ok(Self::after_guard(&updated))
            }
            SidecarStep::Create { first } => match self.create(&c).await {
                Ok(updated) if updated.is_ready() => {
                    self.polls.remove(&name);
                    Ok(Self::after_guard(&updated))
                }
                Ok(_) => Ok(self.poll_again(&name)),
                Err(e) => {
                    let (reason, note) = if first {
                        (
                            REASON_CREATION_FAILED,
                            format!("Failed to create snapshot: {}", e.message),
                        )
                    } else {
                        (
                            REASON_CHECK_FAILED,
                            format!("Failed to check and update snapshot content: {}", e.message),
                        )
                    };
                    let c = self.content(&name).unwrap_or(c);
                    self.report(&c, reason, &note).await;
                    if !e.final_answer {
                        tracing::warn!(content = %name, error = %e.message, "CreateSnapshot may still run on the driver; the content stays marked as being created");
                    }
                    Err(e.message.into())
                }
            },
            SidecarStep::List => match self.list(&c).await {
                Ok(updated) if updated.is_ready() => {
                    self.polls.remove(&name);
                    Ok(Outcome::Done)
                }
                Ok(_) => Ok(self.poll_again(&name)),
                Err(e) => {
                    let note = format!("Failed to check and update snapshot content: {e}");
                    self.report(&c, REASON_CHECK_FAILED, &note).await;
                    Err(e)
                }
            },
        }
    }

    /// The error status (when the message is new) and a Warning Event, even if the status
    /// write fails.
    async fn report(&self, c: &VolumeSnapshotContent, reason: &str, note: &str) {
        if let Some(status) = plan::error_status(c, note, Time(jiff::Timestamp::now())) {
            if let Err(e) = self.patch_status(c, &status).await {
                tracing::warn!(content = %c.name(), error = %e, "cannot write the content's error status");
            }
            self.event(c, reason, note).await;
        }
    }

    /// Upstream `createSnapshotWrapper`, with the class checked before the content is marked.
    async fn create(
        &self,
        c: &VolumeSnapshotContent,
    ) -> Result<Arc<VolumeSnapshotContent>, CreateError> {
        let not_started = |message: String| CreateError {
            message: format!(
                "failed to get input parameters to create snapshot for content {}: \"{message}\"",
                c.name()
            ),
            final_answer: true,
        };
        let class_name = c
            .spec
            .volume_snapshot_class_name
            .as_deref()
            .ok_or_else(|| {
                not_started(format!(
                    "failed to take snapshot {} without a snapshot class",
                    c.name()
                ))
            })?;
        let class = self
            .classes
            .get(&ObjectRef::new(class_name))
            .ok_or_else(|| {
                not_started(format!(
                    "volumesnapshotclass.snapshot.storage.k8s.io \"{class_name}\" not found"
                ))
            })?;
        let mut parameters = params::strip_prefixed(&class.params()).map_err(|e| CreateError {
            message: format!("failed to remove CSI Parameters of prefixed keys: {e}"),
            final_answer: true,
        })?;
        let credentials = self.frozen_credentials(c).await.map_err(not_started)?;
        let r = &c.spec.volume_snapshot_ref;
        if self.config.extra_create_metadata {
            parameters.insert(
                PARAM_META_SNAPSHOT_NAME.into(),
                r.name.clone().unwrap_or_default(),
            );
            parameters.insert(
                PARAM_META_SNAPSHOT_NAMESPACE.into(),
                r.namespace.clone().unwrap_or_default(),
            );
            parameters.insert(PARAM_META_CONTENT_NAME.into(), c.name().to_string());
        }
        let name = params::snapshot_name(
            &self.config.name_prefix,
            r.uid.as_deref().unwrap_or_default(),
            self.config.name_uuid_length,
        )
        .map_err(not_started)?;
        let volume = c.spec.source.volume_handle.clone().unwrap_or_default();

        // The guard: set before the call, removed only after a final answer.
        let c = if controller_kit::meta::annotation(&c.metadata, ANN_BEING_CREATED).is_none() {
            self.patch(c, &json!({"metadata": {"annotations": {ANN_BEING_CREATED: YES}}}))
                .await
                .map_err(|e| CreateError {
                    message: format!("failed to add VolumeSnapshotBeingCreated annotation on the content {}: \"{e}\"", c.name()),
                    final_answer: false,
                })?
        } else {
            Arc::new(c.clone())
        };
        let request = v1::CreateSnapshotRequest {
            source_volume_id: volume.clone(),
            name,
            secrets: credentials.into_iter().collect(),
            parameters: parameters.into_iter().collect(),
        };
        tracing::info!(content = %c.name(), snapshot = %request.name, volume = %volume, "CreateSnapshot");
        let answer = self.csi.create_snapshot(request).await;
        let snapshot = match answer {
            Ok(r)
                if r.snapshot
                    .as_ref()
                    .is_some_and(|s| !s.snapshot_id.is_empty()) =>
            {
                r.snapshot.unwrap_or_default()
            }
            Ok(_) => {
                // Beyond upstream, which would record an empty handle. Not final: the driver
                // may hold a snapshot under this name, and the next call (idempotent by name)
                // may name it, so the guard annotation stays.
                return Err(CreateError {
                    message: format!(
                        "failed to take snapshot of the volume {volume}: \"CreateSnapshot returned no snapshot ID\""
                    ),
                    final_answer: false,
                });
            }
            Err(e) => {
                let final_answer = e.is_final();
                if final_answer {
                    self.patch(&c, &json!({"metadata": {"annotations": {ANN_BEING_CREATED: null}}}))
                        .await
                        .map_err(|err| CreateError {
                            message: format!("failed to remove VolumeSnapshotBeingCreated annotation from the content {}: {err}", c.name()),
                            final_answer: true,
                        })?;
                }
                return Err(CreateError {
                    message: format!(
                        "failed to take snapshot of the volume {volume}: \"{}\"",
                        e.go_message()
                    ),
                    final_answer,
                });
            }
        };
        let found = DriverSnapshot {
            handle: snapshot.snapshot_id,
            ready: snapshot.ready_to_use,
            created_ns: nanos(snapshot.creation_time.as_ref()),
            size: snapshot.size_bytes,
            group_handle: None,
        };
        let c = match plan::status_after(&c, &found) {
            Some(status) => self
                .patch_status(&c, &status)
                .await
                .map_err(|e| CreateError {
                    message: format!(
                        "error updating status for volume snapshot content {}: {e}",
                        c.name()
                    ),
                    final_answer: false,
                })?,
            None => c,
        };
        self.patch(
            &c,
            &json!({"metadata": {"annotations": {ANN_BEING_CREATED: null}}}),
        )
        .await
        .map_err(|e| CreateError {
            message: format!(
                "failed to remove VolumeSnapshotBeingCreated annotation on the content {}: \"{e}\"",
                c.name()
            ),
            final_answer: true,
        })
    }

    /// Upstream `GetSnapshotStatus` for a pre-provisioned content: ListSnapshots by ID (ready at
    /// once when the driver cannot list).
    async fn list(
        &self,
        c: &VolumeSnapshotContent,
    ) -> Result<Arc<VolumeSnapshotContent>, PassError> {
        let id = c.snapshot_handle().unwrap_or_default().to_string();
        let mut credentials = BTreeMap::new();
        if let Some(class_name) = c.spec.volume_snapshot_class_name.as_deref() {
            let class = self.classes.get(&ObjectRef::new(class_name)).ok_or_else(|| {
                format!("failed to get snapshot class {class_name} for snapshot content {}: volumesnapshotclass.snapshot.storage.k8s.io \"{class_name}\" not found", c.name())
            })?;
            let r = params::secret_reference(
                SecretKind::SnapshotterList,
                &class.params(),
                c.name(),
                None,
            )
            .map_err(|e| {
                format!(
                    "failed to get secret reference for snapshot content {}: {e}",
                    c.name()
                )
            })?;
            if let Some(r) = r {
                credentials = self.secret(&r).await.map_err(|e| {
                    format!(
                        "failed to get credentials for snapshot content {}: {e}",
                        c.name()
                    )
                })?;
            }
        }
        if plan::is_group_member(c) {
            credentials = self.frozen_credentials(c).await?;
        }
        let found = if self.can_list {
            let request = v1::ListSnapshotsRequest {
                snapshot_id: id.clone(),
                secrets: credentials.into_iter().collect(),
                ..Default::default()
            };
            let answer = self
                .csi
                .list_snapshots(request)
                .await
                .map_err(|e| e.go_message())?;
            let Some(s) = answer.entries.into_iter().next().and_then(|e| e.snapshot) else {
                return Err(format!("can not find snapshot for snapshotID {id}").into());
            };
            DriverSnapshot {
                handle: id,
                ready: s.ready_to_use,
                created_ns: nanos(s.creation_time.as_ref()),
                size: s.size_bytes,
                group_handle: Some(s.group_snapshot_id),
            }
        } else {
            DriverSnapshot {
                handle: id,
                ready: true,
                created_ns: now_ns(),
                size: 0,
                group_handle: None,
            }
        };
        match plan::status_after(c, &found) {
            Some(status) => self.patch_status(c, &status).await,
            None => Ok(Arc::new(c.clone())),
        }
    }

    /// Upstream `deleteCSISnapshot`: DeleteSnapshot with the frozen Secret, then the status
    /// cleared; the finalizer goes in the next pass.
    async fn delete_snapshot(&self, c: &VolumeSnapshotContent) -> Result<Outcome, PassError> {
        let credentials = match self.frozen_credentials(c).await {
            Ok(s) => s,
            Err(e) => {
                self.event(c, REASON_DELETE_ERROR, "Failed to get snapshot credentials")
                    .await;
                return Err(format!(
                    "failed to get input parameters to delete snapshot for content {}: \"{e}\"",
                    c.name()
                )
                .into());
            }
        };
        let request = v1::DeleteSnapshotRequest {
            snapshot_id: c.snapshot_handle().unwrap_or_default().to_string(),
            secrets: credentials.into_iter().collect(),
        };
        tracing::info!(content = %c.name(), snapshot = %request.snapshot_id, "DeleteSnapshot");
        if let Err(e) = self.csi.delete_snapshot(request).await {
            // Upstream's Event says only "Failed to delete snapshot" (the cause is in its log);
            // ours adds the driver's answer, so `kubectl describe` shows why.
            self.event(
                c,
                REASON_DELETE_ERROR,
                &format!("Failed to delete snapshot: {}", e.go_message()),
            )
            .await;
            return Err(format!(
                "failed to delete snapshot \"{}\", err: {}",
                c.name(),
                e.go_message()
            )
            .into());
        }
        let Some(status) = plan::cleared_status(c) else {
            return Ok(Outcome::RequeueAfter(std::time::Duration::ZERO));
        };
        if let Err(e) = self.patch_status(c, &status).await {
            self.event(c, REASON_DELETE_ERROR, "Failed to clear content status")
                .await;
            return Err(e);
        }
        Ok(Outcome::RequeueAfter(std::time::Duration::ZERO))
    }
}
