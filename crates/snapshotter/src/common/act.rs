//! The common controller's passes: observe the caches, let [`super::plan`] decide, perform the
//! one step it returns.

use std::sync::Arc;

use controller_kit::{NamespacedName, Outcome};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::plan::{self, ContentStep, Failure, SnapshotFacts, SnapshotStep};
use super::{AGAIN, Shared};
use crate::PassError;
use crate::constants::*;
use crate::metrics::snapshot_type;
use crate::params::{self, SecretKind, SnapshotFields};
use crate::types::*;

fn now() -> Time {
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

async fn call<T>(
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, controller_kit::api::ApiError> {
    controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, f).await
}

fn again() -> Result<Outcome, PassError> {
    Ok(Outcome::RequeueAfter(AGAIN))
}

impl Shared {
    fn snapshots_api(&self, ns: &str) -> Api<VolumeSnapshot> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    fn contents_api(&self) -> Api<VolumeSnapshotContent> {
        Api::all(self.ctx.client.clone())
    }

    /// The driver of a snapshot, for metrics: its content's, else its class's.
    fn driver_of(&self, vs: &VolumeSnapshot) -> String {
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
        let facts = SnapshotFacts {
            vs: &vs,
            content: content.as_deref(),
            restoring: false,
            group_exists: false,
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

    async fn sync_deleting(&self, vs: &VolumeSnapshot) -> Result<Outcome, PassError> {
        let uid = vs.metadata.uid.clone().unwrap_or_default();
        self.metrics.start(
            OP_DELETE,
            &uid,
            &self.driver_of(vs),
            snapshot_type(vs.source_content().is_some()),
        );
        let content = plan::content_name(vs).and_then(|c| self.content(&c));
        let name = vs.metadata.name.as_deref().unwrap_or_default();
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let restoring = self.claims.state().iter().any(|pvc| {
            pvc.metadata.namespace.as_deref() == Some(ns) && plan::restores_from(pvc, name)
        });
        let facts = SnapshotFacts {
            vs,
            content: content.as_deref(),
            restoring,
            // Group snapshots are not served by this build: a member's group is taken as gone.
            group_exists: false,
            now: now(),
        };
        let step = plan::deletion_step(&facts);
        tracing::debug!(snapshot = %vs.key(), ?step, "snapshot deletion pass");
        match step {
            SnapshotStep::Done => Ok(Outcome::Done),
            SnapshotStep::DeletePending { message } => {
                self.events
                    .warning(
                        &plan::snapshot_reference(vs),
                        REASON_DELETE_PENDING,
                        "Delete",
                        &message,
                    )
                    .await;
                Err(format!(
                    "snapshot {} is in use (being used to restore a PVC), will retry deletion",
                    vs.key()
                )
                .into())
            }
            SnapshotStep::MarkContentBeingDeleted { content } => {
                let Some(c) = self.content(&content) else {
                    return again();
                };
                let body = json!({"metadata": {"annotations": {ANN_BEING_DELETED: YES}}});
                self.patch_content(&c, &body).await?;
                again()
            }
            SnapshotStep::DeleteContent { content } => {
                match call(
                    self.contents_api()
                        .delete(&content, &DeleteParams::default()),
                )
                .await
                {
                    Ok(_) => again(),
                    Err(e) if e.is_not_found() => again(),
                    Err(e) => {
                        self.events
                            .warning(
                                &plan::snapshot_reference(vs),
                                REASON_CONTENT_DELETE_ERROR,
                                "Delete",
                                "Failed to delete snapshot content API object",
                            )
                            .await;
                        Err(format!(
                            "failed to delete VolumeSnapshotContent {content} from API server: \"{e}\""
                        )
                        .into())
                    }
                }
            }
            SnapshotStep::RemoveFinalizers { bound, in_group } => {
                if let Some(claim) = self.claim_to_release(vs, true)
                    && let Err(e) = self.release_claim(vs, &claim).await
                {
                    self.events
                        .warning(
                            &plan::snapshot_reference(vs),
                            REASON_PVC_FINALIZER_ERROR,
                            "Finalizer",
                            "Error check and remove PVC Finalizer for VolumeSnapshot",
                        )
                        .await;
                    return Err(e);
                }
                let finalizers: Vec<String> = vs
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .filter(|f| {
                        !(f.as_str() == FIN_SNAPSHOT_AS_SOURCE
                            || (bound && f.as_str() == FIN_SNAPSHOT_BOUND)
                            || (in_group && f.as_str() == FIN_SNAPSHOT_IN_GROUP))
                    })
                    .cloned()
                    .collect();
                if Some(&finalizers) != vs.metadata.finalizers.as_ref() {
                    self.set_snapshot_finalizers(vs, finalizers).await?;
                }
                Ok(Outcome::Done)
            }
            step => Err(format!("unexpected step {step:?} for a snapshot being deleted").into()),
        }
    }

    /// Reports a failure on the snapshot (status error when new, and an Event even if the status
    /// write fails, as upstream).
    async fn fail(&self, vs: &VolumeSnapshot, f: Failure) -> Result<Outcome, PassError> {
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

    async fn write_status(
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
    async fn replace_status(
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

    async fn patch_snapshot(
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
    async fn set_snapshot_finalizers(
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

    /// The snapshot's source claim, when it holds the finalizer and no unready snapshot of its
    /// namespace (other than this one, with `skip_self`) takes it as source.
    fn claim_to_release(&self, vs: &VolumeSnapshot, skip_self: bool) -> Option<String> {
        let claim = vs.source_claim()?;
        let ns = vs.metadata.namespace.as_deref()?;
        let pvc = self
            .claims
            .get(&NamespacedName::new(ns, claim).object_ref())?;
        if !controller_kit::meta::has_finalizer(&pvc.metadata, FIN_PVC_AS_SOURCE) {
            return None;
        }
        let snapshots = self.snapshots.state();
        let in_ns = snapshots.iter().map(|s| {
            let key = NamespacedName::of(&s.metadata);
            key.and_then(|k| self.snapshot(&k))
                .unwrap_or_else(|| s.clone())
        });
        let in_ns: Vec<Arc<VolumeSnapshot>> = in_ns
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .collect();
        let skip = skip_self.then_some(vs.metadata.name.as_deref()).flatten();
        (!plan::claim_in_use(claim, in_ns.iter().map(|s| s.as_ref()), skip))
            .then(|| claim.to_string())
    }

    fn claims_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    /// GET and PUT of the claim without the finalizer (upstream RBAC grants `update`, not
    /// `patch`, on claims); a conflict is retried.
    async fn release_claim(&self, vs: &VolumeSnapshot, claim: &str) -> Result<(), PassError> {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let api = self.claims_api(ns);
        let mut pvc = match call(api.get(claim)).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(PassError::api(e.to_string(), &e)),
        };
        let Some(f) = pvc.metadata.finalizers.as_mut() else {
            return Ok(());
        };
        let before = f.len();
        f.retain(|x| x != FIN_PVC_AS_SOURCE);
        if f.len() == before {
            return Ok(());
        }
        call(api.replace(claim, &PostParams::default(), &pvc))
            .await
            .map(|_| {
                tracing::info!(claim = %format!("{ns}/{claim}"), "removed the snapshot source protection finalizer");
            })
            .map_err(|e| PassError::api(format!("cannot remove finalizer on claim {ns}/{claim}: {e}"), &e))
    }

    /// The source claim: cached, else read live.
    async fn source_claim(&self, vs: &VolumeSnapshot) -> Result<PersistentVolumeClaim, String> {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let name = match vs.source_claim() {
            None => return Err("the snapshot source PVC name is not specified".into()),
            Some("") => {
                return Err(format!(
                    "the PVC name is not specified in snapshot {}",
                    vs.key()
                ));
            }
            Some(n) => n,
        };
        if let Some(pvc) = self.claims.get(&NamespacedName::new(ns, name).object_ref()) {
            return Ok((*pvc).clone());
        }
        call(self.claims_api(ns).get(name))
            .await
            .map_err(|e| format!("failed to retrieve PVC {name} from the lister: \"{e}\""))
    }

    /// Upstream `getVolumeFromVolumeSnapshot`: the bound claim's PV, read live, still bound to it.
    async fn source_volume(&self, vs: &VolumeSnapshot) -> Result<PersistentVolume, String> {
        let pvc = self.source_claim(vs).await?;
        let claim = pvc.metadata.name.clone().unwrap_or_default();
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            return Err(format!(
                "the PVC {claim} is not yet bound to a PV, will not attempt to take a snapshot"
            ));
        }
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        let pv = call(Api::<PersistentVolume>::all(self.ctx.client.clone()).get(&pv_name))
            .await
            .map_err(|e| format!("failed to retrieve PV {pv_name} from the API server: \"{e}\""))?;
        let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let bound = r.is_some_and(|r| {
            r.name == pvc.metadata.name
                && r.namespace == pvc.metadata.namespace
                && (r.uid.as_deref().is_none_or(str::is_empty) || r.uid == pvc.metadata.uid)
        });
        if !bound {
            return Err("claim in dataSource not bound or invalid".into());
        }
        Ok(pv)
    }

    async fn default_class(&self, vs: &VolumeSnapshot) -> Result<String, String> {
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
    async fn create_content(&self, vs: &VolumeSnapshot) -> Result<Outcome, PassError> {
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

    /// Upstream `ensurePVCFinalizer`: the source claim holds `pvc-as-source-protection` while
    /// the snapshot is cut; a claim being deleted is refused.
    async fn protect_claim(&self, vs: &VolumeSnapshot) -> Result<(), String> {
        let Ok(mut pvc) = self.source_claim(vs).await else {
            return Err("cannot get claim from snapshot".into());
        };
        if controller_kit::meta::has_finalizer(&pvc.metadata, FIN_PVC_AS_SOURCE) {
            return Ok(());
        }
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err("cannot add finalizer on claim because it is being deleted".into());
        }
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        pvc.metadata
            .finalizers
            .get_or_insert_default()
            .push(FIN_PVC_AS_SOURCE.into());
        call(
            self.claims_api(&ns)
                .replace(&name, &PostParams::default(), &pvc),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    pub(crate) async fn sync_content(self: Arc<Self>, name: String) -> Result<Outcome, PassError> {
        let Some(content) = self.content(&name) else {
            return Ok(Outcome::Done);
        };
        let vs_key = content.snapshot_key();
        let vs = vs_key
            .split_once('/')
            .and_then(|(ns, n)| self.snapshot(&NamespacedName::new(ns, n)));
        let (step, sync) = plan::content_step(&content, vs.as_deref());
        if sync
            && let Some(v) = &vs
            && let Some(key) = NamespacedName::of(&v.metadata)
        {
            self.snapshot_queue.add(key);
        }
        match step {
            ContentStep::Done => Ok(Outcome::Done),
            ContentStep::Invalid => {
                let message = "Exactly one of VolumeHandle and SnapshotHandle should be specified";
                self.events
                    .warning(
                        &content_ref(&content),
                        REASON_CONTENT_VALIDATION,
                        "Content",
                        message,
                    )
                    .await;
                Err(message.to_string().into())
            }
            ContentStep::AddFinalizer => {
                let mut finalizers = content.metadata.finalizers.clone().unwrap_or_default();
                finalizers.push(FIN_CONTENT_BOUND.into());
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": content.metadata.resource_version}});
                self.patch_content(&content, &body).await?;
                again()
            }
            ContentStep::MarkBeingDeleted => {
                let body = json!({"metadata": {"annotations": {ANN_BEING_DELETED: YES}}});
                self.patch_content(&content, &body).await?;
                Ok(Outcome::Done)
            }
        }
    }
}
