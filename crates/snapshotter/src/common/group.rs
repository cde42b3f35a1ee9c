//! The common controller's passes over group snapshots and their contents: observe the caches,
//! let [`super::group_plan`] decide, perform the one step it returns.
//!
//! Beyond upstream: the claims of a group are listed with the whole selector (upstream ignores
//! `matchExpressions` and would snapshot more claims than asked); a dynamic group snapshot
//! deleted before its status names its content still finds the content by its deterministic
//! name; members already complete are not written again on every pass.

use std::sync::Arc;

use controller_kit::{NamespacedName, Outcome};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::act::{again, call};
use super::group_plan::{self, GroupContentStep, GroupFacts, GroupStep};
use super::plan::Failure;
use super::{Groups, Shared};
use crate::PassError;
use crate::constants::*;
use crate::metrics::snapshot_type;
use crate::params::{self, SecretKind, SnapshotFields};
use crate::types::*;

/// A selector as a list query (`matchLabels` and `matchExpressions`).
fn selector_query(s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

impl Shared {
    pub(super) fn group_half(&self) -> &Groups {
        self.groups
            .as_ref()
            .expect("group passes run only with the group half")
    }

    pub(super) fn group_snapshots_api(&self, ns: &str) -> Api<VolumeGroupSnapshot> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    pub(super) fn group_contents_api(&self) -> Api<VolumeGroupSnapshotContent> {
        Api::all(self.ctx.client.clone())
    }

    /// The driver of a group snapshot, for metrics: its content's, else its class's.
    fn group_driver(&self, vgs: &VolumeGroupSnapshot) -> String {
        let g = self.group_half();
        group_plan::content_name(vgs)
            .and_then(|c| self.group_content(&c))
            .map(|c| c.spec.driver.clone())
            .or_else(|| {
                let class = vgs.spec.volume_group_snapshot_class_name.as_deref()?;
                g.classes
                    .get(&ObjectRef::new(class))
                    .map(|c| c.driver.clone())
            })
            .unwrap_or_default()
    }

    /// The member snapshots of `vgs` in the cache.
    fn members_of(&self, vgs: &VolumeGroupSnapshot) -> Vec<Arc<VolumeSnapshot>> {
        let name = vgs.metadata.name.as_deref().unwrap_or_default();
        self.snapshots
            .state()
            .into_iter()
            .filter(|vs| {
                vs.metadata.namespace == vgs.metadata.namespace
                    && group_plan::is_member_of(vs, name)
            })
            .collect()
    }

    /// Every member `content` reports is complete in the caches (or as written here).
    fn members_complete(
        &self,
        vgs: &VolumeGroupSnapshot,
        content: &VolumeGroupSnapshotContent,
    ) -> bool {
        let uid = vgs.metadata.uid.as_deref().unwrap_or_default();
        let ns = vgs.metadata.namespace.as_deref().unwrap_or_default();
        content.members().iter().all(|info| {
            let handle = info.volume_handle.as_deref().unwrap_or_default();
            let (snapshot, content) = params::member_names(uid, handle);
            let vs = self.snapshot(&NamespacedName::new(ns, &snapshot));
            let c = self.content(&content);
            group_plan::member_complete(vs.as_deref(), c.as_deref())
        })
    }

    pub(crate) async fn sync_group(
        self: Arc<Self>,
        key: NamespacedName,
    ) -> Result<Outcome, PassError> {
        let Some(vgs) = self.group_snapshot(&key) else {
            return Ok(Outcome::Done);
        };
        if vgs.metadata.deletion_timestamp.is_some() {
            return self.sync_group_deleting(&vgs).await;
        }
        let g = self.group_half();
        let dynamic = vgs.spec.source.selector.is_some() && vgs.source_content().is_none();
        match vgs.spec.volume_group_snapshot_class_name.as_deref() {
            Some(class) if g.classes.get(&ObjectRef::new(class)).is_none() => {
                let failure = Failure {
                    reason: REASON_GROUP_GET_CLASS_FAILED,
                    message: format!(
                        "failed to get group snapshot class with error volumegroupsnapshotclass.groupsnapshot.storage.k8s.io \"{class}\" not found"
                    ),
                    not_ready: false,
                    retry: true,
                };
                return self.fail_group(&vgs, failure).await;
            }
            None if dynamic => {
                return match self.default_group_class(&vgs).await {
                    Ok(class) => {
                        let body = json!({"spec": {"volumeGroupSnapshotClassName": class}});
                        self.patch_group(&vgs, &body).await?;
                        again()
                    }
                    Err(e) => {
                        let failure = Failure {
                            reason: REASON_GROUP_DEFAULT_CLASS_FAILED,
                            message: format!(
                                "Failed to set default group snapshot class with error {e}"
                            ),
                            not_ready: false,
                            retry: true,
                        };
                        self.fail_group(&vgs, failure).await
                    }
                };
            }
            _ => {}
        }
        let uid = vgs.metadata.uid.clone().unwrap_or_default();
        if !vgs.is_ready() {
            let driver = self.group_driver(&vgs);
            let kind = snapshot_type(vgs.source_content().is_some());
            if vgs
                .status
                .as_ref()
                .and_then(|s| s.creation_time.as_ref())
                .is_none()
            {
                self.metrics.start(OP_CREATE_GROUP, &uid, &driver, kind);
            }
            self.metrics
                .start(OP_CREATE_GROUP_AND_READY, &uid, &driver, kind);
        }
        let content = group_plan::content_name(&vgs).and_then(|c| self.group_content(&c));
        let members_complete = content
            .as_deref()
            .is_some_and(|c| self.members_complete(&vgs, c));
        let facts = GroupFacts {
            vgs: &vgs,
            content: content.as_deref(),
            members_complete,
            members: Vec::new(),
            restoring_member: None,
        };
        let step = group_plan::live_step(&facts);
        tracing::debug!(group_snapshot = %vgs.key(), ?step, "group snapshot pass");
        match step {
            GroupStep::Done => Ok(Outcome::Done),
            GroupStep::Fail(f) => self.fail_group(&vgs, f).await,
            GroupStep::AddFinalizer => {
                let mut finalizers = vgs.metadata.finalizers.clone().unwrap_or_default();
                finalizers.push(FIN_GROUP_BOUND.into());
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": vgs.metadata.resource_version}});
                if let Err(e) = self.patch_group(&vgs, &body).await {
                    if !e.conflict {
                        let note = format!("Failed to check and update group snapshot: {e}");
                        self.events
                            .warning(
                                &group_plan::group_reference(&vgs),
                                REASON_GROUP_FINALIZER_ERROR,
                                "Finalizer",
                                &note,
                            )
                            .await;
                    }
                    return Err(e);
                }
                again()
            }
            GroupStep::BindContent {
                content,
                uid,
                class,
            } => {
                let Some(c) = self.group_content(&content) else {
                    return again();
                };
                let mut spec = json!({"volumeGroupSnapshotRef": {"uid": uid}});
                if let Some(class) = class {
                    spec["volumeGroupSnapshotClassName"] = json!(class);
                }
                if let Err(e) = self.patch_group_content(&c, &json!({"spec": spec})).await {
                    let failure = Failure {
                        reason: REASON_GROUP_BIND_FAILED,
                        message: format!(
                            "GroupSnapshot failed to bind VolumeGroupSnapshotContent, {e}"
                        ),
                        not_ready: true,
                        retry: true,
                    };
                    return self.fail_group(&vgs, failure).await;
                }
                again()
            }
            GroupStep::UpdateStatus(update) => {
                if let Err(e) = self.write_group_status(&vgs, update).await {
                    if e.conflict {
                        return Err(e);
                    }
                    let failure = Failure {
                        reason: REASON_GROUP_STATUS_UPDATE_FAILED,
                        message: format!("GroupSnapshot status update failed, {e}"),
                        not_ready: false,
                        retry: true,
                    };
                    return self.fail_group(&vgs, failure).await;
                }
                again()
            }
            GroupStep::CreateContent => self.create_group_content(&vgs).await,
            GroupStep::CreateMembers => {
                let Some(c) = content else {
                    return again();
                };
                self.create_members(&vgs, &c).await?;
                again()
            }
            step => Err(format!("unexpected step {step:?} for a live group snapshot").into()),
        }
    }

    /// The group's claims and their volumes (upstream `getVolumesFromVolumeGroupSnapshot`):
    /// every selected claim must be bound, each PV is read live and must point back.
    pub(super) async fn group_volumes(
        &self,
        vgs: &VolumeGroupSnapshot,
    ) -> Result<Vec<(PersistentVolumeClaim, PersistentVolume)>, String> {
        let Some(selector) = vgs.spec.source.selector.as_ref() else {
            return Err(format!("group snapshot {} has no selector", vgs.key()));
        };
        let query = selector_query(selector);
        let ns = vgs.metadata.namespace.as_deref().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        let list = call(claims.list(&ListParams::default().labels(&query)))
            .await
            .map_err(|e| format!("failed to list PVCs with label selector {query}: \"{e}\""))?;
        if list.items.is_empty() {
            return Err(format!(
                "label selector {query} for group snapshot not applied to any PVC"
            ));
        }
        let volumes: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        let mut found = Vec::new();
        for pvc in list.items {
            let name = pvc.metadata.name.clone().unwrap_or_default();
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let pv_name = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if !bound || pv_name.is_empty() {
                return Err(format!(
                    "the PVC {name} is not yet bound to a PV, will not attempt to take a group snapshot"
                ));
            }
            let pv = call(volumes.get(&pv_name)).await.map_err(|e| {
                format!("failed to retrieve PV {pv_name} from the API server: \"{e}\"")
            })?;
            let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            let points_back = r.is_some_and(|r| {
                r.name.as_deref() == Some(name.as_str())
                    && r.namespace.as_deref() == Some(ns)
                    && (r.uid.is_none() || r.uid == pvc.metadata.uid)
            });
            if !points_back {
                return Err("claim in dataSource not bound or invalid".into());
            }
            found.push((pvc, pv));
        }
        Ok(found)
    }

    async fn default_group_class(&self, vgs: &VolumeGroupSnapshot) -> Result<String, String> {
        let volumes = self.group_volumes(vgs).await?;
        let driver = volumes
            .first()
            .and_then(|(_, pv)| pv.spec.as_ref()?.csi.as_ref())
            .map(|c| c.driver.clone())
            .ok_or_else(|| {
                format!(
                    "snapshotting non-CSI volumes is not supported, group snapshot:{}",
                    vgs.key()
                )
            })?;
        let classes = self.group_half().classes.state();
        group_plan::default_class(classes.iter().map(|c| c.as_ref()), &driver)
    }

    /// Upstream `createGroupSnapshotContent` and the status that binds the group to it.
    async fn create_group_content(&self, vgs: &VolumeGroupSnapshot) -> Result<Outcome, PassError> {
        let fail = |message: String| Failure {
            reason: REASON_GROUP_CONTENT_CREATION_FAILED,
            message: format!("failed to create group snapshot content with error {message}"),
            not_ready: true,
            retry: true,
        };
        let name = vgs.metadata.name.as_deref().unwrap_or_default();
        let input = async {
            let class_name = vgs
                .spec
                .volume_group_snapshot_class_name
                .as_deref()
                .ok_or_else(|| {
                    format!("failed to take group snapshot {name} without a group snapshot class")
                })?;
            let class = self
                .group_half()
                .classes
                .get(&ObjectRef::new(class_name))
                .ok_or_else(|| {
                    format!("volumegroupsnapshotclass.groupsnapshot.storage.k8s.io \"{class_name}\" not found")
                })?;
            let volumes = self.group_volumes(vgs).await?;
            let content_name =
                params::group_content_name(vgs.metadata.uid.as_deref().unwrap_or_default());
            let fields = SnapshotFields {
                name,
                namespace: vgs.metadata.namespace.as_deref().unwrap_or_default(),
            };
            let secret = params::secret_reference(
                SecretKind::GroupSnapshotter,
                &class.params(),
                &content_name,
                Some(fields),
            )?;
            Ok::<_, String>((class, volumes, secret))
        };
        let (class, volumes, secret) = match input.await {
            Ok(i) => i,
            Err(e) => {
                let message = format!(
                    "failed to get input parameters to create group snapshot {name}: \"{e}\""
                );
                return self.fail_group(vgs, fail(message)).await;
            }
        };
        let mut handles = Vec::new();
        for (_, pv) in &volumes {
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
                self.events
                    .warning(
                        &group_plan::group_reference(vgs),
                        REASON_CREATE_GROUP_CONTENT_FAILED,
                        "GroupSnapshot",
                        &format!("Cannot snapshot a non-CSI volume: {pv_name}"),
                    )
                    .await;
                let message = format!(
                    "cannot snapshot a non-CSI volume for group snapshot {}: {pv_name}",
                    vgs.key()
                );
                return self.fail_group(vgs, fail(message)).await;
            };
            if csi.driver != class.driver {
                let message = format!(
                    "Volume CSI driver ({}) mismatch with VolumeGroupSnapshotClass ({}) {}: {pv_name}",
                    csi.driver,
                    class.driver,
                    vgs.key()
                );
                self.events
                    .warning(
                        &group_plan::group_reference(vgs),
                        REASON_CREATE_GROUP_CONTENT_FAILED,
                        "GroupSnapshot",
                        &message,
                    )
                    .await;
                return self.fail_group(vgs, fail(message)).await;
            }
            handles.push(csi.volume_handle.clone());
        }
        let content = group_plan::new_content(&group_plan::GroupContentInput {
            vgs,
            class: &class,
            volume_handles: handles,
            secret,
        });
        let created = match call(
            self.group_contents_api()
                .create(&PostParams::default(), &content),
        )
        .await
        {
            Ok(c) => c,
            Err(e) if e.status_code() == Some(409) => content.clone(),
            Err(e) => {
                let note = format!(
                    "Error creating volume group snapshot content object for group snapshot {}: {e}.",
                    vgs.key()
                );
                self.events
                    .warning(
                        &group_plan::group_reference(vgs),
                        REASON_CREATE_GROUP_CONTENT_FAILED,
                        "GroupSnapshot",
                        &note,
                    )
                    .await;
                return self.fail_group(vgs, fail(e.to_string())).await;
            }
        };
        let note = format!(
            "Waiting for a group snapshot {} to be created by the CSI driver.",
            vgs.key()
        );
        self.events
            .normal(
                &group_plan::group_reference(vgs),
                REASON_CREATING_GROUP,
                "GroupSnapshot",
                &note,
            )
            .await;
        if let Some(update) = group_plan::status_update(vgs, &created)
            && let Err(e) = self.write_group_status(vgs, update).await
        {
            if e.conflict {
                return Err(e);
            }
            let failure = Failure {
                reason: REASON_GROUP_STATUS_UPDATE_FAILED,
                message: format!("GroupSnapshot status update failed, {e}"),
                not_ready: false,
                retry: true,
            };
            return self.fail_group(vgs, failure).await;
        }
        again()
    }

    /// The deletion pass of a group snapshot.
    async fn sync_group_deleting(&self, vgs: &VolumeGroupSnapshot) -> Result<Outcome, PassError> {
        let uid = vgs.metadata.uid.clone().unwrap_or_default();
        self.metrics.start(
            OP_DELETE_GROUP,
            &uid,
            &self.group_driver(vgs),
            snapshot_type(vgs.source_content().is_some()),
        );
        let content = group_plan::content_name(vgs).and_then(|c| self.group_content(&c));
        let members = self.members_of(vgs);
        let ns = vgs.metadata.namespace.as_deref().unwrap_or_default();
        let restoring_member = members.iter().find_map(|m| {
            let name = m.metadata.name.as_deref().unwrap_or_default();
            self.claims
                .state()
                .iter()
                .any(|pvc| {
                    pvc.metadata.namespace.as_deref() == Some(ns)
                        && super::plan::restores_from(pvc, name)
                })
                .then(|| m.key())
        });
        let facts = GroupFacts {
            vgs,
            content: content.as_deref(),
            members_complete: true,
            members: members.iter().map(|m| m.as_ref()).collect(),
            restoring_member,
        };
        let step = group_plan::deletion_step(&facts);
        tracing::debug!(group_snapshot = %vgs.key(), ?step, "group snapshot deletion pass");
        let r = group_plan::group_reference(vgs);
        match step {
            GroupStep::Done => Ok(Outcome::Done),
            GroupStep::DeletePending { message } => {
                self.events
                    .warning(&r, REASON_DELETE_PENDING, "Delete", &message)
                    .await;
                Err(format!("{message}: snapshot is in use, will retry deletion").into())
            }
            GroupStep::MarkContentBeingDeleted { content } => {
                let Some(c) = self.group_content(&content) else {
                    return again();
                };
                let body = json!({"metadata": {"annotations": {ANN_GROUP_BEING_DELETED: YES}}});
                self.patch_group_content(&c, &body).await?;
                again()
            }
            GroupStep::DeleteContent { content } => {
                match call(
                    self.group_contents_api()
                        .delete(&content, &DeleteParams::default()),
                )
                .await
                {
                    Ok(_) => again(),
                    Err(e) if e.is_not_found() => again(),
                    Err(e) => {
                        self.events
                            .warning(
                                &r,
                                REASON_GROUP_CONTENT_DELETE_ERROR,
                                "Delete",
                                "Failed to delete group snapshot content API object",
                            )
                            .await;
                        Err(format!(
                            "failed to delete VolumeGroupSnapshotContent {content} from API server: \"{e}\""
                        )
                        .into())
                    }
                }
            }
            GroupStep::DeleteMembers { names } => {
                let api = self.snapshots_api(ns);
                for name in names {
                    match call(api.delete(&name, &DeleteParams::default())).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            let message = format!(
                                "failed to delete snapshot API object {ns}/{name} part of group snapshot {}: {e}",
                                vgs.key()
                            );
                            self.events
                                .warning(&r, REASON_MEMBER_DELETE_ERROR, "Delete", &message)
                                .await;
                            return Err(message.into());
                        }
                    }
                }
                again()
            }
            GroupStep::RemoveFinalizer => {
                let finalizers: Vec<&String> = vgs
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .filter(|f| *f != FIN_GROUP_BOUND)
                    .collect();
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": vgs.metadata.resource_version}});
                self.patch_group(vgs, &body).await?;
                Ok(Outcome::Done)
            }
            step => {
                Err(format!("unexpected step {step:?} for a group snapshot being deleted").into())
            }
        }
    }

    /// The common controller's pass over a group content (upstream `syncGroupSnapshotContent`).
    pub(crate) async fn sync_group_content(
        self: Arc<Self>,
        name: String,
    ) -> Result<Outcome, PassError> {
        let Some(c) = self.group_content(&name) else {
            return Ok(Outcome::Done);
        };
        match group_plan::content_step(&c) {
            GroupContentStep::Done => Ok(Outcome::Done),
            GroupContentStep::Invalid(message) => {
                self.events
                    .warning(
                        &group_plan::group_content_reference(&c),
                        REASON_GROUP_CONTENT_VALIDATION,
                        "GroupSnapshotContent",
                        &message,
                    )
                    .await;
                Err(message.into())
            }
            GroupContentStep::AddFinalizer => {
                let mut finalizers = c.metadata.finalizers.clone().unwrap_or_default();
                finalizers.push(FIN_GROUP_CONTENT_BOUND.into());
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": c.metadata.resource_version}});
                self.patch_group_content(&c, &body).await?;
                Ok(Outcome::Done)
            }
        }
    }
}
