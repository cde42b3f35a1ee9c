//! The CSI half's pass over a group content: the step [`super::group_plan::next`] names, with
//! its API and CSI calls (Create/Get/DeleteVolumeGroupSnapshot).
//!
//! As for single snapshots, the class's parameters and the frozen Secret are checked before the
//! content is marked `volumegroupsnapshot-being-created`, so a bad class never blocks the
//! group's deletion; a driver without the GroupController capability gets a clear error on the
//! content instead of a call.

use std::collections::BTreeMap;
use std::sync::Arc;

use controller_kit::Outcome;
use csi::v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use super::group_plan::{self, DriverGroup, GroupSidecarStep};
use super::{Shared, SidecarGroups};
use crate::PassError;
use crate::common::group_plan::group_content_reference;
use crate::constants::*;
use crate::params::{self, SecretKind, SecretRef};
use crate::types::*;

async fn call<T>(
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, controller_kit::api::ApiError> {
    controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, f).await
}

/// A proto timestamp as a `Time`; none or zero is now (upstream).
fn time_of(t: Option<&prost_types::Timestamp>) -> Time {
    match t {
        Some(t) if t.seconds != 0 || t.nanos != 0 => Time(
            jiff::Timestamp::new(t.seconds, t.nanos).unwrap_or_else(|_| jiff::Timestamp::now()),
        ),
        _ => Time(jiff::Timestamp::now()),
    }
}

fn nanos(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
}

/// A failure of one pass, and whether a CreateVolumeGroupSnapshot may still run on the driver.
struct CreateError {
    message: String,
    final_answer: bool,
}

/// The driver's answer as the content's status takes it.
fn driver_group(g: v1::VolumeGroupSnapshot, handle: Option<String>, members: bool) -> DriverGroup {
    let created = time_of(g.creation_time.as_ref());
    let list = if members {
        g.snapshots
            .iter()
            .map(|s| VolumeSnapshotInfo {
                volume_handle: Some(s.source_volume_id.clone()),
                snapshot_handle: Some(s.snapshot_id.clone()),
                creation_time: nanos(s.creation_time.as_ref()),
                ready_to_use: Some(s.ready_to_use),
                restore_size: (s.size_bytes > 0).then_some(s.size_bytes),
            })
            .collect()
    } else {
        Vec::new()
    };
    DriverGroup {
        handle: handle.unwrap_or(g.group_snapshot_id),
        ready: g.ready_to_use,
        created,
        members: list,
    }
}

impl Shared {
    fn group_half(&self) -> &SidecarGroups {
        self.groups
            .as_ref()
            .expect("group passes run only with the group half")
    }

    fn group_api(&self) -> Api<VolumeGroupSnapshotContent> {
        Api::all(self.ctx.client.clone())
    }

    async fn patch_group(
        &self,
        c: &VolumeGroupSnapshotContent,
        body: &Value,
    ) -> Result<Arc<VolumeGroupSnapshotContent>, PassError> {
        let updated = call(self.group_api().patch(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(body),
        ))
        .await
        .map_err(|e| PassError::api(e.to_string(), &e))?;
        self.group_half()
            .written
            .record(c.name(), c, updated.clone());
        Ok(Arc::new(updated))
    }

    async fn patch_group_status(
        &self,
        c: &VolumeGroupSnapshotContent,
        status: &VolumeGroupSnapshotContentStatus,
    ) -> Result<Arc<VolumeGroupSnapshotContent>, PassError> {
        let old = json!({"status": c.status});
        let new = json!({"status": status});
        let Some(body) = controller_kit::patch::merge_diff(&old, &new) else {
            return Ok(Arc::new(c.clone()));
        };
        let updated = call(self.group_api().patch_status(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        ))
        .await
        .map_err(|e| PassError::api(e.to_string(), &e))?;
        self.group_half()
            .written
            .record(c.name(), c, updated.clone());
        Ok(Arc::new(updated))
    }

    /// The group Secret frozen on the content by the common controller.
    async fn group_credentials(
        &self,
        c: &VolumeGroupSnapshotContent,
    ) -> Result<BTreeMap<String, String>, String> {
        let name = controller_kit::meta::annotation(&c.metadata, ANN_GROUP_SECRET_NAME);
        let namespace = controller_kit::meta::annotation(&c.metadata, ANN_GROUP_SECRET_NAMESPACE);
        match (name, namespace) {
            (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => self
                .secret(&SecretRef {
                    name: n.into(),
                    namespace: ns.into(),
                })
                .await
                .map_err(|e| {
                    tracing::warn!(content = %c.name(), error = %e, "cannot read the group snapshot's secret");
                    format!("cannot get credentials for group snapshot content \"{}\"", c.name())
                }),
            (Some(_), Some(_)) => Err(format!(
                "cannot retrieve secrets for group snapshot content \"{}\", err: secret name or namespace not specified",
                c.name()
            )),
            _ => Ok(BTreeMap::new()),
        }
    }

    async fn group_event(&self, c: &VolumeGroupSnapshotContent, reason: &str, note: &str) {
        self.events
            .warning(&group_content_reference(c), reason, "GroupSnapshot", note)
            .await;
    }

    /// The error status (when the message is new) and a Warning Event.
    async fn report_group(&self, c: &VolumeGroupSnapshotContent, reason: &str, note: &str) {
        if let Some(status) = group_plan::error_status(c, note, Time(jiff::Timestamp::now())) {
            if let Err(e) = self.patch_group_status(c, &status).await {
                tracing::warn!(content = %c.name(), error = %e, "cannot write the group content's error status");
            }
            self.group_event(c, reason, note).await;
        }
    }

    pub(crate) async fn sync_group(self: Arc<Self>, name: String) -> Result<Outcome, PassError> {
        let poll_key = format!("group/{name}");
        let Some(c) = self.group_content(&name) else {
            self.polls.remove(&poll_key);
            return Ok(Outcome::Done);
        };
        let step = group_plan::next(&c);
        tracing::debug!(group_content = %name, ?step, "group snapshotter pass");
        match step {
            GroupSidecarStep::Done | GroupSidecarStep::AwaitProtection => {
                self.polls.remove(&poll_key);
                Ok(Outcome::Done)
            }
            GroupSidecarStep::Delete => self.delete_group(&c).await,
            GroupSidecarStep::RemoveFinalizer => {
                let finalizers: Vec<&String> = c
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .filter(|f| *f != FIN_GROUP_CONTENT_BOUND)
                    .collect();
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": c.metadata.resource_version}});
                self.patch_group(&c, &body).await?;
                self.polls.remove(&poll_key);
                Ok(Outcome::Done)
            }
            GroupSidecarStep::ForgetCreating => {
                let updated = self
                    .patch_group(
                        &c,
                        &json!({"metadata": {"annotations": {ANN_GROUP_BEING_CREATED: null}}}),
                    )
                    .await?;
                self.polls.remove(&poll_key);
                Ok(if updated.metadata.deletion_timestamp.is_some() {
                    Outcome::RequeueAfter(std::time::Duration::ZERO)
                } else {
                    Outcome::Done
                })
            }
            GroupSidecarStep::Create { first } => match self.create_group(&c).await {
                Ok(updated) if updated.is_ready() => {
                    self.polls.remove(&poll_key);
                    // The guard is gone: a deletion asked for meanwhile goes on.
                    Ok(Outcome::RequeueAfter(std::time::Duration::ZERO))
                }
                Ok(_) => Ok(self.poll_again(&poll_key)),
                Err(e) => {
                    let (reason, note) = if first {
                        (
                            REASON_GROUP_CREATION_FAILED,
                            format!("Failed to create group snapshot: {}", e.message),
                        )
                    } else {
                        (
                            REASON_GROUP_CHECK_FAILED,
                            format!(
                                "Failed to check and update group snapshot content: {}",
                                e.message
                            ),
                        )
                    };
                    let c = self.group_content(&name).unwrap_or(c);
                    self.report_group(&c, reason, &note).await;
                    if !e.final_answer {
                        tracing::warn!(group_content = %name, error = %e.message, "CreateVolumeGroupSnapshot may still run on the driver; the content stays marked as being created");
                    }
                    Err(e.message.into())
                }
            },
            GroupSidecarStep::Get => match self.get_group(&c).await {
                Ok(updated) if updated.is_ready() => {
                    self.polls.remove(&poll_key);
                    Ok(Outcome::Done)
                }
                Ok(_) => Ok(self.poll_again(&poll_key)),
                Err(e) => {
                    let note = format!("Failed to check and update group snapshot content: {e}");
                    self.report_group(&c, REASON_GROUP_CHECK_FAILED, &note)
                        .await;
                    Err(e)
                }
            },
        }
    }

    fn require_group_capability(&self) -> Result<(), String> {
        if self.group_half().capable {
            Ok(())
        } else {
            Err(format!(
                "the CSI driver {} does not offer CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT",
                self.driver
            ))
        }
    }

    /// Upstream `createGroupSnapshotWrapper`, with the class checked before the content is
    /// marked.
    async fn create_group(
        &self,
        c: &VolumeGroupSnapshotContent,
    ) -> Result<Arc<VolumeGroupSnapshotContent>, CreateError> {
        let not_started = |message: String| CreateError {
            message: format!(
                "failed to get input parameters to create group snapshot for group snapshot content {}: \"{message}\"",
                c.name()
            ),
            final_answer: true,
        };
        self.require_group_capability().map_err(not_started)?;
        let class_name = c
            .spec
            .volume_group_snapshot_class_name
            .as_deref()
            .ok_or_else(|| {
                not_started(format!(
                    "failed to take group snapshot {} without a group snapshot class",
                    c.name()
                ))
            })?;
        let class = self
            .group_half()
            .classes
            .get(&ObjectRef::new(class_name))
            .ok_or_else(|| {
                not_started(format!(
                    "volumegroupsnapshotclass.groupsnapshot.storage.k8s.io \"{class_name}\" not found"
                ))
            })?;
        let mut parameters = params::strip_prefixed(&class.params()).map_err(|e| CreateError {
            message: format!("failed to remove CSI Parameters of prefixed keys: {e}"),
            final_answer: true,
        })?;
        let credentials = self.group_credentials(c).await.map_err(not_started)?;
        let r = &c.spec.volume_group_snapshot_ref;
        if self.config.extra_create_metadata {
            parameters.insert(
                PARAM_META_GROUP_NAME.into(),
                r.name.clone().unwrap_or_default(),
            );
            parameters.insert(
                PARAM_META_GROUP_NAMESPACE.into(),
                r.namespace.clone().unwrap_or_default(),
            );
            parameters.insert(PARAM_META_GROUP_CONTENT_NAME.into(), c.name().to_string());
        }
        let name = params::snapshot_name(
            &self.config.group_name_prefix,
            r.uid.as_deref().unwrap_or_default(),
            self.config.group_name_uuid_length,
        )
        .map_err(not_started)?;
        let volumes = c.volume_handles().to_vec();

        // The guard: set before the call, removed only after a final answer.
        let c = if controller_kit::meta::annotation(&c.metadata, ANN_GROUP_BEING_CREATED).is_none()
        {
            self.patch_group(c, &json!({"metadata": {"annotations": {ANN_GROUP_BEING_CREATED: YES}}}))
                .await
                .map_err(|e| CreateError {
                    message: format!("failed to add VolumeGroupSnapshotBeingCreated annotation on the group snapshot content {}: \"{e}\"", c.name()),
                    final_answer: false,
                })?
        } else {
            Arc::new(c.clone())
        };
        let request = v1::CreateVolumeGroupSnapshotRequest {
            name,
            source_volume_ids: volumes.clone(),
            secrets: credentials.into_iter().collect(),
            parameters: parameters.into_iter().collect(),
        };
        tracing::info!(group_content = %c.name(), group_snapshot = %request.name, volumes = ?volumes, "CreateVolumeGroupSnapshot");
        let group = match self.csi.create_volume_group_snapshot(request).await {
            Ok(r)
                if r.group_snapshot.as_ref().is_some_and(|g| {
                    !g.group_snapshot_id.is_empty()
                        && g.snapshots.iter().all(|s| !s.snapshot_id.is_empty())
                }) =>
            {
                r.group_snapshot.unwrap_or_default()
            }
            Ok(_) => {
                // As for a single snapshot: not final, the guard stays.
                return Err(CreateError {
                    message: format!(
                        "failed to take group snapshot of the volumes {volumes:?}: \"CreateVolumeGroupSnapshot returned no group snapshot ID or a member without an ID\""
                    ),
                    final_answer: false,
                });
            }
            Err(e) => {
                let final_answer = e.is_final();
                if final_answer {
                    self.patch_group(&c, &json!({"metadata": {"annotations": {ANN_GROUP_BEING_CREATED: null}}}))
                        .await
                        .map_err(|err| CreateError {
                            message: format!("failed to remove VolumeGroupSnapshotBeingCreated annotation from the group snapshot content {}: {err}", c.name()),
                            final_answer: true,
                        })?;
                }
                return Err(CreateError {
                    message: format!(
                        "failed to take group snapshot of the volumes {volumes:?}: \"{}\"",
                        e.go_message()
                    ),
                    final_answer,
                });
            }
        };
        let found = driver_group(group, None, true);
        let c = match group_plan::status_after(&c, &found) {
            Some(status) => {
                self.patch_group_status(&c, &status)
                    .await
                    .map_err(|e| CreateError {
                        message: format!(
                            "error updating status for volume group snapshot content {}: {e}",
                            c.name()
                        ),
                        final_answer: false,
                    })?
            }
            None => c,
        };
        self.patch_group(
            &c,
            &json!({"metadata": {"annotations": {ANN_GROUP_BEING_CREATED: null}}}),
        )
        .await
        .map_err(|e| CreateError {
            message: format!(
                "failed to remove VolumeGroupSnapshotBeingCreated annotation on the groupSnapshotContent {}: \"{e}\"",
                c.name()
            ),
            final_answer: true,
        })
    }

    /// Upstream `checkandUpdateGroupSnapshotContentStatusOperation` for a pre-provisioned group:
    /// GetVolumeGroupSnapshot with the class's get-secret.
    async fn get_group(
        &self,
        c: &VolumeGroupSnapshotContent,
    ) -> Result<Arc<VolumeGroupSnapshotContent>, PassError> {
        self.require_group_capability()?;
        let mut credentials = BTreeMap::new();
        if let Some(class_name) = c.spec.volume_group_snapshot_class_name.as_deref() {
            let class = self
                .group_half()
                .classes
                .get(&ObjectRef::new(class_name))
                .ok_or_else(|| {
                    format!("failed to get group snapshot class {class_name} for group snapshot content {}: volumegroupsnapshotclass.groupsnapshot.storage.k8s.io \"{class_name}\" not found", c.name())
                })?;
            let r = params::secret_reference(
                SecretKind::GroupSnapshotterGet,
                &class.params(),
                c.name(),
                None,
            )
            .map_err(|e| {
                format!(
                    "failed to get secret reference for group snapshot content {}: {e}",
                    c.name()
                )
            })?;
            if let Some(r) = r {
                credentials = self.secret(&r).await.map_err(|e| {
                    format!(
                        "failed to get credentials for group snapshot content {}: {e}",
                        c.name()
                    )
                })?;
            }
        }
        let handles = c
            .spec
            .source
            .group_snapshot_handles
            .clone()
            .unwrap_or_default();
        let request = v1::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: handles.volume_group_snapshot_handle.clone(),
            snapshot_ids: handles.volume_snapshot_handles.clone(),
            secrets: credentials.into_iter().collect(),
        };
        let answer = self
            .csi
            .get_volume_group_snapshot(request)
            .await
            .map_err(|e| e.go_message())?;
        let found = driver_group(
            answer.group_snapshot.unwrap_or_default(),
            Some(handles.volume_group_snapshot_handle),
            false,
        );
        match group_plan::status_after(c, &found) {
            Some(status) => self.patch_group_status(c, &status).await,
            None => Ok(Arc::new(c.clone())),
        }
    }

    /// Upstream `deleteCSIGroupSnapshotOperation`: DeleteVolumeGroupSnapshot with the frozen
    /// Secret, then the status cleared; the finalizer goes in the next pass.
    async fn delete_group(&self, c: &VolumeGroupSnapshotContent) -> Result<Outcome, PassError> {
        let credentials = match self.group_credentials(c).await {
            Ok(s) => s,
            Err(e) => {
                self.group_event(
                    c,
                    REASON_GROUP_DELETE_ERROR,
                    "Failed to get snapshot credentials",
                )
                .await;
                return Err(format!(
                    "failed to get input parameters to delete group snapshot for group snapshot content {}: \"{e}\"",
                    c.name()
                )
                .into());
            }
        };
        let ids = group_plan::snapshot_ids(c);
        let request = v1::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: c.group_handle().unwrap_or_default().to_string(),
            snapshot_ids: ids,
            secrets: credentials.into_iter().collect(),
        };
        tracing::info!(group_content = %c.name(), group_snapshot = %request.group_snapshot_id, "DeleteVolumeGroupSnapshot");
        let result = match self.require_group_capability() {
            Ok(()) => self
                .csi
                .delete_volume_group_snapshot(request)
                .await
                .map(|_| ())
                .map_err(|e| e.go_message()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.group_event(
                c,
                REASON_GROUP_DELETE_ERROR,
                "Failed to delete group snapshot",
            )
            .await;
            return Err(
                format!("failed to delete group snapshot \"{}\", err: {e}", c.name()).into(),
            );
        }
        let Some(status) = group_plan::cleared_status(c) else {
            return Ok(Outcome::RequeueAfter(std::time::Duration::ZERO));
        };
        if let Err(e) = self.patch_group_status(c, &status).await {
            self.group_event(
                c,
                REASON_GROUP_DELETE_ERROR,
                "Failed to clear content status",
            )
            .await;
            return Err(e);
        }
        Ok(Outcome::RequeueAfter(std::time::Duration::ZERO))
    }
}
