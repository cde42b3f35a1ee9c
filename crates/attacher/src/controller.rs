//! The act layer: informer handlers, the three lanes (attach, detach, PV) and their workers, and
//! the API calls that carry out a planned step.
//!
//! # Lanes
//! A VolumeAttachment key goes to the attach queue (`csi-attacher-va-attach`) while it has no
//! deletionTimestamp, and to the detach queue (`csi-attacher-va-detach`) once it has one; each
//! queue has its own worker pool, so a burst of detaches never delays attaches or the reverse.
//! Routing happens at enqueue time from the cached state, and each pass checks the lane again
//! ([`Step::MoveLane`]). A per-key claim makes sure a key is never processed by both lanes at
//! once: a pass that finds the key claimed by the other lane comes back shortly.
//!
//! # Invariants
//! - One pass performs at most one visible step (see [`crate::plan`]); the next pass is
//!   triggered by the watch event of that write (VA events for VA writes; PV events re-enqueue
//!   the VAs naming that PV).
//! - Every API call has a timeout ([`crate::AttacherConfig::api_timeout`]); every CSI call has the
//!   client's `--timeout`.
//! - Secrets are read live, never cached, and never logged.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller_kit::{Change, ControllerContext, Informers, Outcome, WorkQueue};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Secret};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::constants::{
    ATTACH_QUEUE, CONTROLLER_NAME, DELETED_NODE_DETACHES_METRIC, DETACH_QUEUE, PV_QUEUE,
};
use crate::csi_call::{self, Unpublished};
use crate::error::Error;
use crate::patch;
use crate::plan::{self, Lane, Observed, PvStep, Secrets, Step};
use crate::request::{self, DriverInfo, SecretRef};
use crate::{AttacherConfig, filter, list_sync};
use controller_kit::api::ApiError;
use controller_kit::keylock::KeyLocks;

/// How soon a pass that found its key claimed by the other lane tries again.
const CLAIM_RETRY: Duration = Duration::from_millis(500);

/// Everything the handlers, workers and the ListVolumes sync share.
pub(crate) struct Shared {
    pub(crate) ctx: ControllerContext,
    /// The driver's client.
    pub(crate) csi: csi::CsiClient,
    pub(crate) config: AttacherConfig,
    pub(crate) driver: DriverInfo,
    pub(crate) vas: Store<VolumeAttachment>,
    pub(crate) pvs: Store<PersistentVolume>,
    pub(crate) csinodes: Store<CSINode>,
    /// Nodes (metadata only), unless RBAC grants no Node watch (`AttacherConfig::watch_nodes`).
    pub(crate) nodes: Option<Store<PartialObjectMeta<Node>>>,
    pub(crate) attach: WorkQueue<String>,
    pub(crate) detach: WorkQueue<String>,
    pub(crate) pv_queue: WorkQueue<String>,
    /// VA names being reconciled: a key is never in both lanes at once.
    lanes: KeyLocks<String>,
    force_sync: Mutex<HashSet<String>>,
    /// PV name → names of the cached VAs (of any attacher) naming it.
    pv_index: Mutex<HashMap<String, BTreeSet<String>>>,
    deleted_node_detaches: Counter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// Builds the shared state and registers the informers and their handlers.
pub(crate) fn build(
    ctx: ControllerContext,
    csi: &csi::Driver,
    config: AttacherConfig,
    informers: &mut Informers,
) -> Arc<Shared> {
    use csi::v1::controller_service_capability::rpc::Type as Cap;
    let d = &csi.discovery;
    let driver = DriverInfo {
        name: d.driver_name.clone(),
        finalizer: crate::constants::finalizer_name(&d.driver_name),
        publish_unpublish: d.has_controller(Cap::PublishUnpublishVolume),
        publish_readonly: d.has_controller(Cap::PublishReadonly),
        single_node_multi_writer: d.has_controller(Cap::SingleNodeMultiWriter),
        list_published_nodes: d.has_controller(Cap::ListVolumes)
            && d.has_controller(Cap::ListVolumesPublishedNodes),
        default_fstype: config.default_fstype.clone(),
    };
    let queues = ctx.metrics.queues();
    let deleted_node_detaches = ctx.metrics.register(|r| {
        let c = Counter::default();
        r.register(
            DELETED_NODE_DETACHES_METRIC,
            "VolumeAttachments detached because their Node is gone and the driver answered NOT_FOUND",
            c.clone(),
        );
        c
    });

    let pvs = {
        let name = driver.name.clone();
        informers
            .for_type::<PersistentVolume>()
            .keep(move |pv| request::pv_is_ours(pv, &name))
            .store()
    };
    let vas = {
        let name = driver.name.clone();
        let pvs = pvs.clone();
        let pvs_synced = informers.for_type::<PersistentVolume>().synced();
        // Foreign VAs naming one of our PVs are kept too: they hold the PV finalizer. They are
        // listed once the PVs are, so that the PV cache can tell them.
        informers
            .for_type::<VolumeAttachment>()
            .after(pvs_synced)
            .keep(move |va| {
                va.spec.attacher == name
                    || request::pv_name(va).is_some_and(|pv| {
                        pvs.get(&ObjectRef::new(pv))
                            .is_some_and(|pv| request::pv_is_ours(&pv, &name))
                    })
            })
            .store()
    };
    let csinodes = {
        let name = driver.name.clone();
        informers
            .for_type::<CSINode>()
            .keep(move |c| c.spec.drivers.iter().any(|d| d.name == name))
            .store()
    };
    // Existence only; metadata-only watch. Upstream's attacher role grants no Nodes.
    let nodes = config.watch_nodes.then(|| {
        informers
            .for_type::<PartialObjectMeta<Node>>()
            .keep(|_| true)
            .store()
    });

    let shared = Arc::new(Shared {
        attach: WorkQueue::new(ATTACH_QUEUE, ctx.backoff, queues.clone()),
        detach: WorkQueue::new(DETACH_QUEUE, ctx.backoff, queues.clone()),
        pv_queue: WorkQueue::new(PV_QUEUE, ctx.backoff, queues),
        ctx,
        csi: csi.client.clone(),
        config,
        driver,
        vas,
        pvs,
        csinodes,
        nodes,
        lanes: KeyLocks::default(),
        force_sync: Mutex::default(),
        pv_index: Mutex::default(),
        deleted_node_detaches,
    });

    let s = shared.clone();
    informers
        .for_type::<VolumeAttachment>()
        .on_change(move |change| s.on_va(change));
    let s = shared.clone();
    informers
        .for_type::<PersistentVolume>()
        .on_change(move |change| s.on_pv(change));
    if shared.nodes.is_some() {
        let s = shared.clone();
        informers
            .for_type::<PartialObjectMeta<Node>>()
            .on_change(move |change| {
                if let Change::Deleted(node) = change {
                    s.on_node_deleted(&name_of(*node));
                }
            });
    }
    shared
}

impl Shared {
    fn queue(&self, lane: Lane) -> &WorkQueue<String> {
        match lane {
            Lane::Attach => &self.attach,
            Lane::Detach => &self.detach,
        }
    }

    /// Queues a VA in the lane its state asks for.
    pub(crate) fn route(&self, va: &VolumeAttachment) {
        self.queue(Lane::of(va, &self.driver)).add(name_of(va));
    }

    fn ours(&self, va: &VolumeAttachment) -> bool {
        va.spec.attacher == self.driver.name
    }

    fn on_va(&self, change: &Change<'_, VolumeAttachment>) {
        let va = change.object();
        let name = name_of(va);
        match change {
            Change::Applied { previous, .. } => {
                if let Some(pv) = request::pv_name(va) {
                    self.index()
                        .entry(pv.to_string())
                        .or_default()
                        .insert(name.clone());
                }
                if self.ours(va) && filter::should_enqueue(*previous, va) {
                    self.route(va);
                }
            }
            Change::Deleted(_) => {
                // A forced sync of a VA that is gone would never be taken.
                self.force_sync
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
                if let Some(pv) = request::pv_name(va) {
                    let mut index = self.index();
                    if let Some(set) = index.get_mut(pv) {
                        set.remove(&name);
                        if set.is_empty() {
                            index.remove(pv);
                        }
                    }
                    drop(index);
                    // Its finalizer may now go (upstream `vaDeleted`).
                    self.pv_queue.add(pv.to_string());
                }
            }
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.pv_index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vas_naming(&self, pv: &str) -> Vec<String> {
        self.index()
            .get(pv)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn on_pv(&self, change: &Change<'_, PersistentVolume>) {
        let Change::Applied { object: pv, .. } = change else {
            return;
        };
        if !request::pv_is_ours(pv, &self.driver.name) {
            return;
        }
        let name = name_of(*pv);
        if pv.metadata.deletion_timestamp.is_some()
            && controller_kit::meta::has_finalizer(&pv.metadata, &self.driver.finalizer)
        {
            self.pv_queue.add(name.clone());
        }
        // VAs waiting for this PV (to appear, or to carry our finalizer) go on at once.
        for va in self.vas_naming(&name) {
            if let Some(va) = self.vas.get(&ObjectRef::new(&va))
                && self.ours(&va)
            {
                self.route(&va);
            }
        }
    }

    fn on_node_deleted(&self, node: &str) {
        for va in self.vas.state() {
            if self.ours(&va) && va.spec.node_name == node {
                self.route(&va);
            }
        }
    }

    /// Queues every VA of ours, and every deleting PV with our finalizer (a resync).
    pub(crate) fn resync(&self) {
        for va in self.vas.state() {
            if self.ours(&va) {
                self.route(&va);
            }
        }
        for pv in self.pvs.state() {
            if pv.metadata.deletion_timestamp.is_some()
                && controller_kit::meta::has_finalizer(&pv.metadata, &self.driver.finalizer)
            {
                self.pv_queue.add(name_of(pv.as_ref()));
            }
        }
    }

    /// Marks `va` for a one-shot forced sync (ListVolumes disagreed with its status).
    pub(crate) fn force_sync(&self, va: &VolumeAttachment) {
        self.force_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name_of(va));
        self.route(va);
    }

    fn take_force_sync(&self, key: &str) -> bool {
        self.force_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }

    async fn api<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        controller_kit::api::call(self.config.api_timeout, call).await
    }

    fn va_api(&self) -> Api<VolumeAttachment> {
        Api::all(self.ctx.client.clone())
    }

    async fn patch_va(&self, name: &str, patch: &Value, status: bool) -> Result<(), ApiError> {
        let api = self.va_api();
        let pp = PatchParams::default();
        let p = Patch::Merge(patch);
        if status {
            self.api(api.patch_status(name, &pp, &p)).await.map(drop)
        } else {
            self.api(api.patch(name, &pp, &p)).await.map(drop)
        }
    }

    async fn patch_pv(&self, name: &str, patch: Value) -> Result<(), ApiError> {
        let api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        // The json-patch type is inferred from `Patch::Json`; kube does not re-export it.
        let patch = Patch::Json::<()>(
            serde_json::from_value(patch)
                .map_err(|e| ApiError::from(kube::Error::SerdeError(e)))?,
        );
        self.api(api.patch(name, &PatchParams::default(), &patch))
            .await
            .map(drop)
    }

    async fn load_secrets(&self, r: &SecretRef) -> Secrets {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &r.namespace);
        match self.api(api.get(&r.name)).await {
            Ok(secret) => match controller_kit::secrets::csi_strings(secret) {
                Ok(data) => Secrets::Loaded(data.into_iter().collect()),
                Err(m) => Secrets::Failed(m),
            },
            Err(e) => Secrets::Failed(request::secret_error(r, &e)),
        }
    }

    /// Saves `status.attachError`; a failure to save is only logged, as upstream.
    async fn save_attach_error(
        &self,
        va: &VolumeAttachment,
        key: &str,
        message: &str,
        code: Option<i32>,
    ) {
        let error = patch::volume_error(message, code, jiff::Timestamp::now());
        if let Err(e) = self
            .patch_va(key, &patch::attach_error(va, error), true)
            .await
        {
            tracing::info!(va = %key, error = %e, "failed to save attach error");
        }
    }

    async fn save_detach_error(&self, va: &VolumeAttachment, key: &str, message: &str) {
        let error = patch::volume_error(message, None, jiff::Timestamp::now());
        if let Err(e) = self
            .patch_va(key, &patch::detach_error(va, error), true)
            .await
        {
            tracing::info!(va = %key, error = %e, "failed to save detach error");
        }
    }

    /// One pass over one VolumeAttachment in `lane`.
    pub(crate) async fn reconcile_va(&self, lane: Lane, key: String) -> Result<Outcome, Error> {
        let Some(_held) = self.lanes.try_lock(&key) else {
            return Ok(Outcome::RequeueAfter(CLAIM_RETRY));
        };
        let Some(va) = self.vas.get(&ObjectRef::new(&key)) else {
            return Ok(Outcome::Done); // deleted meanwhile
        };
        if !self.ours(&va) {
            return Ok(Outcome::Done);
        }
        let force_sync = Lane::of(&va, &self.driver) == lane && self.take_force_sync(&key);
        let pv = request::pv_name(&va).and_then(|n| self.pvs.get(&ObjectRef::new(n)));
        let node = &va.spec.node_name;
        let csinode = self.csinodes.get(&ObjectRef::new(node));
        // Without a Node watch, every node is taken to exist (as upstream does).
        let node_exists = self
            .nodes
            .as_ref()
            .is_none_or(|n| n.get(&ObjectRef::new(node)).is_some());
        let mut secrets = Secrets::NotLoaded;
        let step = loop {
            let obs = Observed {
                va: &va,
                pv: pv.as_deref(),
                csinode: csinode.as_deref(),
                node_exists,
                secrets: &secrets,
                force_sync,
            };
            match plan::plan(&self.driver, lane, &obs) {
                Step::LoadSecrets(r) => secrets = self.load_secrets(&r).await,
                step => break step,
            }
        };
        tracing::debug!(va = %key, ?lane, step = step_name(&step), "planned");
        self.act(&va, &key, step).await
    }

    async fn act(&self, va: &VolumeAttachment, key: &str, step: Step) -> Result<Outcome, Error> {
        match step {
            Step::Skip(_) | Step::LoadSecrets(_) => Ok(Outcome::Done),
            Step::MoveLane(lane) => {
                self.queue(lane).add(key.to_string());
                Ok(Outcome::Done)
            }
            Step::AddPvFinalizer { pv, patch } => match self.patch_pv(&pv, patch).await {
                // The PV's watch event re-queues this VA (see `on_pv`).
                Ok(()) => Ok(Outcome::Done),
                Err(e) => {
                    let message = format!("could not add PersistentVolume finalizer: {e}");
                    self.save_attach_error(va, key, &message, None).await;
                    Err(Error::Attach(message))
                }
            },
            Step::AttachError(message) => {
                self.save_attach_error(va, key, &message, None).await;
                Err(Error::Attach(message))
            }
            Step::DetachError(message) => {
                self.save_detach_error(va, key, &message).await;
                Err(Error::Detach(message))
            }
            Step::SaveVaMetadata(patch) => match self.patch_va(key, &patch, false).await {
                Ok(()) => Ok(Outcome::Done),
                Err(e) => {
                    let message = format!("could not save VolumeAttachment: {e}");
                    self.save_attach_error(va, key, &message, None).await;
                    Err(Error::Attach(message))
                }
            },
            Step::Publish(request) => match csi_call::publish(&self.csi, *request).await {
                Ok(metadata) => {
                    tracing::info!(va = %key, "attached");
                    self.patch_va(key, &patch::mark_attached(va, metadata), true)
                        .await
                        .map_err(Error::MarkAttached)?;
                    Ok(Outcome::Done)
                }
                Err(e) => {
                    self.save_attach_error(va, key, &e.message, e.code).await;
                    Err(Error::Attach(e.message))
                }
            },
            Step::Unpublish { request, node_gone } => {
                match csi_call::unpublish(&self.csi, request, node_gone).await {
                    Ok(how) => {
                        if how == Unpublished::NodeGone {
                            self.deleted_node_detaches.inc();
                            tracing::warn!(va = %key, node = %va.spec.node_name, "node is gone and the driver does not know it; treating the volume as detached");
                        }
                        if let Err(e) = self.mark_detached(va, key).await {
                            let message = format!("could not mark as detached: {e}");
                            self.save_detach_error(va, key, &message).await;
                            return Err(Error::Detach(message));
                        }
                        tracing::info!(va = %key, "detached");
                        Ok(Outcome::Done)
                    }
                    Err(e) => {
                        self.save_detach_error(va, key, &e.message).await;
                        Err(Error::Detach(e.message))
                    }
                }
            }
            Step::MarkAttachedTrivially => {
                self.patch_va(key, &patch::mark_attached(va, Default::default()), true)
                    .await
                    .map_err(Error::MarkAttached)?;
                Ok(Outcome::Done)
            }
        }
    }

    /// Upstream `markAsDetached`: the finalizer first, then the status; a 404 on the status is
    /// fine (the VA is gone once the finalizer is).
    async fn mark_detached(&self, va: &VolumeAttachment, key: &str) -> Result<(), ApiError> {
        let attached = va.status.as_ref().is_some_and(|s| s.attached);
        let removal = patch::remove_va_finalizer(va, &self.driver.finalizer);
        if removal.is_none() && !attached {
            return Ok(());
        }
        if let Some(p) = removal {
            self.patch_va(key, &p, false).await?;
        }
        match self.patch_va(key, &patch::mark_detached(va), true).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// One pass over one PersistentVolume: remove our finalizer once nothing needs it.
    pub(crate) async fn reconcile_pv(&self, key: String) -> Result<Outcome, Error> {
        let Some(pv) = self.pvs.get(&ObjectRef::new(&key)) else {
            return Ok(Outcome::Done);
        };
        let referenced = self.index().get(&key).is_some_and(|s| !s.is_empty());
        match plan::plan_pv(&pv, &self.driver.finalizer, referenced) {
            PvStep::Nothing(_) => Ok(Outcome::Done),
            PvStep::RemoveFinalizer(p) => {
                self.patch_pv(&key, p)
                    .await
                    .map_err(Error::RemovePvFinalizer)?;
                tracing::info!(pv = %key, "removed finalizer from PersistentVolume");
                Ok(Outcome::Done)
            }
        }
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Skip(_) => "skip",
        Step::MoveLane(_) => "move-lane",
        Step::LoadSecrets(_) => "load-secrets",
        Step::AddPvFinalizer { .. } => "add-pv-finalizer",
        Step::AttachError(_) => "attach-error",
        Step::DetachError(_) => "detach-error",
        Step::SaveVaMetadata(_) => "save-va-metadata",
        Step::Publish(_) => "publish",
        Step::Unpublish { .. } => "unpublish",
        Step::MarkAttachedTrivially => "mark-attached-trivially",
    }
}

/// The controller handed to the manager.
#[derive(Debug)]
pub struct Attacher {
    pub(crate) shared: Arc<Shared>,
}

impl controller_kit::Controller for Attacher {
    fn name(&self) -> &'static str {
        CONTROLLER_NAME
    }

    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()> {
        let s = self.shared.clone();
        Box::pin(async move {
            let workers = |count: Option<usize>| controller_kit::Workers {
                controller: CONTROLLER_NAME,
                count: count.unwrap_or(s.ctx.workers),
                metrics: s.ctx.metrics.controllers(),
            };
            let attach = controller_kit::run_workers(
                workers(s.config.attach_workers),
                s.attach.clone(),
                s.clone(),
                |s, key| async move { s.reconcile_va(Lane::Attach, key).await },
                token.clone(),
            );
            let detach = controller_kit::run_workers(
                workers(s.config.detach_workers),
                s.detach.clone(),
                s.clone(),
                |s, key| async move { s.reconcile_va(Lane::Detach, key).await },
                token.clone(),
            );
            let pv = controller_kit::run_workers(
                workers(None),
                s.pv_queue.clone(),
                s.clone(),
                |s, key| async move { s.reconcile_pv(key).await },
                token.clone(),
            );
            let resync = {
                let (s, token) = (s.clone(), token.clone());
                async move {
                    if s.config.resync.is_zero() {
                        return;
                    }
                    loop {
                        tokio::select! {
                            () = token.cancelled() => return,
                            () = tokio::time::sleep(s.config.resync) => s.resync(),
                        }
                    }
                }
            };
            let list_sync = list_sync::run(s.clone(), token.clone());
            tokio::join!(attach, detach, pv, resync, list_sync);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10, item 8: the forced-sync marks of deleted VolumeAttachments are forgotten.
    #[tokio::test]
    async fn a_deleted_va_leaves_no_forced_sync_behind() {
        let api = controller_kit::testing::FakeApiServer::start().await;
        let mut registry = prometheus_client::registry::Registry::default();
        let client = csi::CsiClient::connect(
            csi::CsiEndpoint::parse("unix:///nonexistent/csi.sock").unwrap(),
            Duration::from_secs(1),
            csi::CsiMetrics::new(&mut registry),
        )
        .unwrap();
        let driver = csi::Driver {
            client,
            discovery: Arc::new(csi::Discovery {
                driver_name: "d".into(),
                ..Default::default()
            }),
        };
        let ctx = ControllerContext {
            client: api.client(),
            metrics: controller_kit::Metrics::default(),
            backoff: Default::default(),
            workers: 1,
            identity: "test".into(),
            namespace: "default".into(),
        };
        let mut informers = Informers::new(api.client());
        let shared = build(ctx, &driver, AttacherConfig::default(), &mut informers);
        let mut va = VolumeAttachment::default();
        va.metadata.name = Some("va-1".into());
        va.spec.attacher = "d".into();
        shared.force_sync(&va);
        assert_eq!(shared.force_sync.lock().unwrap().len(), 1);
        shared.on_va(&Change::Deleted(&va));
        assert!(shared.force_sync.lock().unwrap().is_empty());
    }
}
