//! The act layer: informers, the `claims` and `volumes` queues, and one thin step per pass.
//!
//! Each pass reads the shared caches, asks a pure planner (`intent::plan`, `pv::plan_volume`)
//! what to do, and does it. API writes are strategic-merge patches naming the object's UID (a
//! recreated object with the same name is never patched by mistake); every API call has a
//! timeout, every CSI call has the client's `--timeout`.
//!
//! # Invariants
//! - Provisioning and deletion of one volume name never overlap: both passes hold the volume
//!   name's lock ([`NameLocks`]) for their whole duration.
//! - Intent is recorded in the journal before CreateVolume and released only when a PV records
//!   the volume, when
//!   the driver's error proves that nothing was created (`intent::proves_nothing_created`), or
//!   after a rollback's DeleteVolume succeeded.
//! - Secrets are read into CSI requests only; they are never logged (the request's `Debug` redacts).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csi::v1;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Secret,
};
use k8s_openapi::api::storage::v1::{
    CSINode, StorageClass, VolumeAttachment, VolumeAttributesClass,
};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use runtime::events::EventRecorder;
use runtime::{Change, Controller, ControllerContext, Informers, Outcome, WorkQueue};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capacity::Item;
use crate::capacity_controller::{QUEUE_CAPACITY, Tracker};
use crate::claim;
use crate::constants::*;
use crate::error::{Error, ProvisionError, ProvisioningState, grpc_message};
use crate::intent::{self, ClaimObservation, ClaimPlan, Recorded, ReplayResult, RollBackStep};
use crate::journal::Journal;
use crate::node::{self, Ownership};
use crate::params::SecretRef;
use crate::pv::{self, DeletionSecrets, VolumeAction};
use crate::request::{self, DriverCaps, Intent, PrepareInput, ProvisionerConfig, VacInfo};
use crate::source::{self, RecordedSource};
use crate::topology::ClusterTopology;

/// Timeout of every API call.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a deletion or a PV creation is remembered (`Shared::deletions`, `created_pvs`).
const DELETION_MEMORY: Duration = Duration::from_secs(600);

/// How far the deletion of a PV got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeletionStage {
    /// DeleteVolume succeeded.
    VolumeDeleted,
    /// DeleteVolume, the PV's deletion and its finalizer's removal all succeeded.
    Finished,
}
/// How often upstream retries DeleteVolume of a too-small volume within one `--timeout`.
const CLEANUP_RETRIES: usize = 5;

/// Per-name async locks; entries are dropped when nobody holds them.
#[derive(Debug, Default)]
pub struct NameLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl NameLocks {
    /// Locks `name` until the guard is dropped.
    pub async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Drop idle entries so the map follows the names in flight, not all names ever seen.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

struct Shared {
    ctx: ControllerContext,
    config: ProvisionerConfig,
    driver: String,
    caps: DriverCaps,
    pvcs: Store<PersistentVolumeClaim>,
    pvs: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    csinodes: Option<Store<CSINode>>,
    nodes: Option<Store<PartialObjectMeta<Node>>>,
    attachments: Option<Store<VolumeAttachment>>,
    claims: WorkQueue<String>,
    volumes: WorkQueue<String>,
    locks: NameLocks,
    journal: Arc<Journal>,
    /// Capacity tracking, with `--enable-capacity`.
    capacity: Option<(Arc<Tracker>, WorkQueue<Item>)>,
    /// The provisioner identity on PVs (with `-<node>` in node deployment).
    identity: String,
    /// Upstream's provisioning and deletion metrics.
    metrics: crate::metrics::ProvisionerMetrics,
    /// Node deployment: claims this node competes for, by UID: when it may try, and how many
    /// tries lost.
    competing: Mutex<HashMap<String, (Instant, u32)>>,
    events: EventRecorder,
    /// Claims held back after INVALID_ARGUMENT: UID -> (until, StorageClass UID).
    infeasible: Mutex<HashMap<String, (Instant, String)>>,
    /// PVs (by UID) this process deleted, how far and when: a pass that finds such a PV again
    /// (its own deletion and finalizer removal raise events) neither repeats DeleteVolume nor
    /// the API calls already done. After a restart they are repeated, which is idempotent.
    deletions: Mutex<HashMap<String, (Instant, DeletionStage)>>,
    /// PVs this process created, and when: a claim pass that runs before the PV reaches the cache
    /// releases the intent instead of replaying CreateVolume and the PV create.
    created_pvs: Mutex<HashMap<String, Instant>>,
}

/// The provisioner controller (see the crate docs).
pub struct Provisioner {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("driver", &self.shared.driver)
            .finish_non_exhaustive()
    }
}

fn claim_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn has_intent_finalizer(pvc: &PersistentVolumeClaim) -> bool {
    crate::meta::has_finalizer(&pvc.metadata, FINALIZER_VOLUME_INTENT)
}

/// How long a node deployment's competition for a claim is remembered after its last try.
const COMPETITION_MEMORY: Duration = Duration::from_secs(3600);
/// How long a failed journal read waits before the next try.
const LOAD_RETRY: Duration = Duration::from_secs(2);

/// A jitter in `[0, 1)` for a claim's competition delay: different per claim and per moment.
fn jitter(uid: &str) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let h = crate::capacity::fnv1a_32(uid.as_bytes()) ^ nanos.wrapping_mul(0x9e37_79b9);
    f64::from(h) / (f64::from(u32::MAX) + 1.0)
}

/// An informer handler that wakes `n`.
fn notifier<K>(n: &Arc<tokio::sync::Notify>) -> impl Fn(&Change<'_, K>) + Send + Sync + 'static {
    let n = n.clone();
    move |_| n.notify_one()
}

/// Builds the provisioner: registers its informers and handlers. Call before the informers start.
pub fn build(
    ctx: ControllerContext,
    config: ProvisionerConfig,
    informers: &mut Informers,
) -> Arc<dyn Controller> {
    let driver = ctx.driver.driver_name.clone();
    let caps = DriverCaps::from_discovery(&ctx.driver, config.topology_gate);
    let claims = WorkQueue::new(QUEUE_CLAIMS, ctx.backoff, ctx.metrics.queues());
    let volumes = WorkQueue::new(QUEUE_VOLUMES, ctx.backoff, ctx.metrics.queues());
    let node_mode = config.node_deployment.clone();
    let journal = Arc::new(Journal::new(
        ctx.client.clone(),
        &ctx.namespace,
        &driver,
        node_mode.as_ref().map(|n| n.node.as_str()),
        ctx.workers,
    ));

    let pvcs = {
        let d = driver.clone();
        let q = claims.clone();
        let j = journal.clone();
        informers
            .for_type::<PersistentVolumeClaim>()
            // A claim with our intent stays in memory even if its annotations change.
            .keep(move |pvc| {
                claim::is_for_driver(pvc, &d)
                    || pvc.metadata.uid.as_deref().is_some_and(|u| j.has_claim(u))
                    || (has_intent_finalizer(pvc)
                        && matches!(intent::recorded(pvc, &d), Recorded::Intent(_)))
            })
            .on_change(move |change: &Change<'_, PersistentVolumeClaim>| {
                let pvc = change.object();
                let m = &pvc.metadata;
                if let (Some(ns), Some(n)) = (&m.namespace, &m.name) {
                    q.add(claim_key(ns, n));
                    // A clone that changes may free its source's cloning-protection finalizer.
                    if let Some(src) = source::clone_source_name(pvc) {
                        q.add(claim_key(ns, &src));
                    }
                }
            })
            .store()
    };
    let pvs = {
        let d = driver.clone();
        let (cq, vq) = (claims.clone(), volumes.clone());
        informers
            .for_type::<PersistentVolume>()
            .keep(move |p| pv::is_ours(p, &d))
            .on_change(move |change: &Change<'_, PersistentVolume>| {
                let p = change.object();
                if let Some(n) = &p.metadata.name {
                    vq.add(n.clone());
                }
                // A new PV releases its claim's intent.
                if let Some(r) = p.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                    && let (Some(ns), Some(n)) = (&r.namespace, &r.name)
                {
                    cq.add(claim_key(ns, n));
                }
            })
            .store()
    };
    let changed = Arc::new(tokio::sync::Notify::new());
    let tracking = config.capacity.is_some();
    let classes = {
        let d = driver.clone();
        let b = informers
            .for_type::<StorageClass>()
            .keep(move |sc| sc.provisioner == d);
        if tracking {
            b.on_change(notifier(&changed));
        }
        b.store()
    };
    // Node deployment: the node's own topology is static (upstream replaces these informers).
    let (csinodes, nodes) = if (caps.topology || tracking) && node_mode.is_none() {
        let csinodes = informers.for_type::<CSINode>();
        if tracking {
            csinodes.on_change(notifier(&changed));
        }
        let csinodes = csinodes.store();
        let nodes = caps.topology.then(|| {
            let nodes = informers.for_type::<PartialObjectMeta<Node>>();
            if tracking {
                nodes.on_change(notifier(&changed));
            }
            nodes.store()
        });
        (Some(csinodes), nodes)
    } else {
        (None, None)
    };
    let capacity = match &config.capacity {
        Some(c) => {
            let queue = WorkQueue::new(QUEUE_CAPACITY, ctx.backoff, ctx.metrics.queues());
            let tracker = Tracker::new(
                ctx.capacity_client.clone(),
                ctx.csi.clone(),
                &driver,
                c.clone(),
                classes.clone(),
                csinodes.clone(),
                nodes.clone(),
                queue.clone(),
                changed,
                ctx.metrics
                    .register(crate::capacity_controller::CapacityMetrics::register),
            );
            Some((Arc::new(tracker), queue))
        }
        None => None,
    };
    let metrics = ctx
        .metrics
        .register(crate::metrics::ProvisionerMetrics::register);
    let identity = match &node_mode {
        Some(n) => format!("{}-{}", ctx.identity, n.node),
        None => ctx.identity.clone(),
    };
    let attachments = caps.publish_unpublish.then(|| {
        let d = driver.clone();
        informers
            .for_type::<VolumeAttachment>()
            .keep(move |va| va.spec.attacher == d)
            .store()
    });
    let events = EventRecorder::new(
        ctx.client.clone(),
        EVENT_CONTROLLER,
        Some(ctx.identity.clone()),
    );
    Arc::new(Provisioner {
        shared: Arc::new(Shared {
            ctx,
            config,
            driver,
            caps,
            pvcs,
            pvs,
            classes,
            csinodes,
            nodes,
            attachments,
            claims,
            volumes,
            locks: NameLocks::default(),
            journal,
            capacity,
            identity,
            metrics,
            competing: Mutex::default(),
            events,
            infeasible: Mutex::default(),
            deletions: Mutex::default(),
            created_pvs: Mutex::default(),
        }),
    })
}

impl Controller for Provisioner {
    fn name(&self) -> &'static str {
        "provisioner"
    }

    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            // No claim pass before the journal is read: it would record a claim's intent anew.
            loop {
                match shared.journal.load().await {
                    Ok(n) => {
                        tracing::info!(journal = %shared.journal.object_name(), intents = n, "read the intent journal");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(journal = %shared.journal.object_name(), error = %e, "cannot read the intent journal; retrying");
                        tokio::select! {
                            () = token.cancelled() => return,
                            () = tokio::time::sleep(LOAD_RETRY) => {}
                        }
                    }
                }
            }
            // Claims deleted while no one led are in no cache: their keys come from the journal.
            for key in shared.journal.claim_keys() {
                shared.claims.add(key);
            }
            let writer = shared.journal.write(token.clone());
            let metrics = shared.ctx.metrics.controllers();
            let workers = shared.ctx.workers;
            let s1 = shared.clone();
            let claims = runtime::run_workers(
                "provisioner",
                shared.claims.clone(),
                workers,
                metrics.clone(),
                token.clone(),
                move |key| {
                    let s = s1.clone();
                    async move { s.sync_claim(&key).await }
                },
            );
            let s2 = shared.clone();
            let volumes = runtime::run_workers(
                "provisioner",
                shared.volumes.clone(),
                workers,
                metrics,
                token.clone(),
                move |key| {
                    let s = s2.clone();
                    async move { s.sync_volume(&key).await }
                },
            );
            let sweep = shared.clone().sweep_snapshot_finalizers(token.clone());
            let capacity = shared.clone().track_capacity(token.clone());
            futures::join!(claims, volumes, sweep, writer, capacity);
        })
    }
}

pub(crate) async fn call_api<T>(
    action: impl Into<String>,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    let action = action.into();
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Kube {
            action,
            source: Box::new(source),
        }),
        Err(_) => Err(Error::KubeTimeout(action)),
    }
}

pub(crate) fn is_status(e: &Error, code: u16) -> bool {
    matches!(e, Error::Kube { source, .. } if matches!(**source, kube::Error::Api(ref s) if s.code == code))
}

fn pvc_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    pv::claim_ref(pvc)
}

fn pv_ref(pv: &PersistentVolume) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: pv.metadata.name.clone(),
        uid: pv.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

impl Shared {
    fn pvc_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    fn pv_api(&self) -> Api<PersistentVolume> {
        Api::all(self.ctx.client.clone())
    }

    /// Capacity tracking (with `--enable-capacity`): the tracker and its workers.
    async fn track_capacity(self: Arc<Self>, token: CancellationToken) {
        let Some((tracker, queue)) = self.capacity.clone() else {
            return;
        };
        let t = tracker.clone();
        let workers = runtime::run_workers(
            "provisioner-capacity",
            queue,
            t.config_workers(),
            self.ctx.metrics.controllers(),
            token.clone(),
            move |item| {
                let t = t.clone();
                async move { t.sync_item(&item).await }
            },
        );
        futures::join!(tracker.run(token), workers);
    }

    /// Tells capacity tracking that volumes of `class` came or went.
    fn capacity_changed(&self, class: Option<&str>) {
        if let (Some((tracker, _)), Some(class)) = (&self.capacity, class) {
            tracker.class_changed(class);
        }
    }

    fn cluster_topology(&self) -> ClusterTopology {
        if let Some(nd) = &self.config.node_deployment {
            return nd.cluster();
        }
        let mut t = ClusterTopology::default();
        if let Some(s) = &self.csinodes {
            for n in s.state() {
                let keys = n
                    .spec
                    .drivers
                    .iter()
                    .find(|d| d.name == self.driver)
                    .and_then(|d| d.topology_keys.clone())
                    .unwrap_or_default();
                t.csinode_keys
                    .insert(n.metadata.name.clone().unwrap_or_default(), keys);
            }
        }
        if let Some(s) = &self.nodes {
            for n in s.state() {
                t.node_labels.insert(
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata.labels.clone().unwrap_or_default(),
                );
            }
        }
        t
    }

    async fn secret_data(&self, r: &SecretRef) -> Result<BTreeMap<String, String>, String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &r.namespace);
        let secret = call_api("get secret", api.get(&r.name))
            .await
            .map_err(|e| {
                format!(
                    "error getting secret {} in namespace {}: {e}",
                    r.name, r.namespace
                )
            })?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect())
    }

    async fn sync_claim(&self, key: &str) -> Result<Outcome, Error> {
        let Some((ns, name)) = key.split_once('/') else {
            return Ok(Outcome::Done);
        };
        let mut cached = self.pvcs.get(&ObjectRef::new(name).within(ns));
        let recorded = self.journal.for_key(ns, name);
        if cached.is_none() && !recorded.is_empty() {
            // Before rolling back, make sure the claim is gone and not only out of the cache.
            cached = call_api("get PVC", self.pvc_api(ns).get_opt(name))
                .await?
                .map(Arc::new);
        }
        let live_uid = cached.as_ref().and_then(|p| p.metadata.uid.clone());
        for intent in recorded
            .iter()
            .filter(|i| Some(&i.claim_uid) != live_uid.as_ref())
        {
            // The claim this intent was recorded for is gone.
            let plan = intent::journal_plan(intent, None, self.pv_exists(&intent.volume_name));
            self.act_on_intent(None, intent, plan).await?;
        }
        let Some(pvc) = cached else {
            return Ok(Outcome::Done);
        };
        if claim::is_deleting(&pvc) && source::has_clone_protection(&pvc) {
            self.release_clone_source(&pvc).await?;
        }
        let class = self.classes.get(&ObjectRef::new(&claim::claim_class(&pvc)));
        let selection = claim::select(&pvc, class.as_deref(), &self.driver);
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let computed = claim::volume_name(
            &self.config.volume_name_prefix,
            &uid,
            self.config.volume_name_uuid_length,
        )
        .ok();
        let journal = self.journal.for_claim(&uid);
        let plan = intent::plan(&ClaimObservation {
            driver: &self.driver,
            pvc: &pvc,
            journal: journal.as_ref(),
            intent_pv_exists: journal
                .as_ref()
                .is_some_and(|i| self.pv_exists(&i.volume_name)),
            pv_exists: computed.as_deref().is_some_and(|n| self.pv_exists(n)),
            selection: &selection,
        });
        tracing::debug!(pvc = %key, ?plan, "claim plan");
        match plan {
            ClaimPlan::Nothing(_) => Ok(Outcome::Done),
            ClaimPlan::MissingClass(e) => Err(Error::Held(e)),
            ClaimPlan::Prepare { selected_node } => {
                let Some(class) = class else {
                    return Ok(Outcome::Done);
                };
                if let Some(nd) = &self.config.node_deployment {
                    match node::ownership(&pvc, &class, nd, &self.driver) {
                        Ownership::Mine => self.forget_competition(&uid),
                        Ownership::NotMine(why) => {
                            tracing::debug!(pvc = %key, reason = %why, "not this node's claim");
                            self.forget_competition(&uid);
                            return Ok(Outcome::Done);
                        }
                        Ownership::Compete => return self.compete(&pvc, &class, nd).await,
                    }
                }
                let lock_name = computed.unwrap_or_default();
                let _guard = self.locks.lock(&lock_name).await;
                self.prepare(&pvc, &class, selected_node.as_deref()).await
            }
            ClaimPlan::Adopt(intent) => {
                self.journal.record(&intent).await?;
                tracing::info!(pvc = %key, volume = %intent.volume_name, "moved the volume intent from the claim into the journal");
                self.strip(&pvc).await?;
                Ok(Outcome::Done)
            }
            ClaimPlan::Strip(why) => {
                tracing::info!(pvc = %key, reason = %why, "removing the volume intent from the claim");
                self.strip(&pvc).await?;
                Ok(Outcome::Done)
            }
            plan => match &journal {
                Some(intent) => self.act_on_intent(Some(&pvc), intent, plan).await,
                None => Ok(Outcome::Done),
            },
        }
    }

    fn forget_competition(&self, uid: &str) {
        self.competing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Node deployment, upstream's `becomeOwner` for an Immediate claim without a node: after a
    /// per-claim delay (a pass that comes back later, not a blocked worker), check capacity, then
    /// set `selected-node` to this node with a resourceVersion-conditioned patch. Whoever wins,
    /// the claim's update brings it back; a lost race waits longer next time.
    async fn compete(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        nd: &node::NodeDeployment,
    ) -> Result<Outcome, Error> {
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let now = Instant::now();
        let wait = {
            let mut competing = self.competing.lock().unwrap_or_else(|e| e.into_inner());
            // Claims deleted while competed for are not seen again: forget old entries.
            competing.retain(|_, (at, _)| at.elapsed() < COMPETITION_MEMORY);
            match competing.get(&uid).copied() {
                None => {
                    let at = now + node::compete_delay(nd, 0, jitter(&uid));
                    competing.insert(uid.clone(), (at, 0));
                    at.saturating_duration_since(now)
                }
                Some((at, _)) => at.saturating_duration_since(now),
            }
        };
        if !wait.is_zero() {
            return Ok(Outcome::RequeueAfter(wait));
        }
        let requested = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
            .and_then(|q| crate::quantity::parse_bytes(&q.0))
            .unwrap_or(0);
        let request = v1::GetCapacityRequest {
            volume_capabilities: Vec::new(),
            parameters: crate::params::strip_prefixed(
                &class.parameters.clone().unwrap_or_default(),
            )
            .unwrap_or_default()
            .into_iter()
            .collect(),
            accessible_topology: (!nd.segment.is_empty()).then(|| v1::Topology {
                segments: nd.segment.clone().into_iter().collect(),
            }),
        };
        match self.ctx.csi.get_capacity(request).await {
            Ok(c) if c.available_capacity < requested => {
                tracing::info!(pvc = %pvc.metadata.name.as_deref().unwrap_or_default(), available = c.available_capacity, requested, "not enough capacity on this node to compete for the claim");
                self.schedule_next_try(&uid, nd);
                return Ok(Outcome::RequeueAfter(nd.max_delay));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "capacity check failed; competing for the claim anyway")
            }
        }
        let patch = json!({"metadata": {
            "resourceVersion": pvc.metadata.resource_version,
            "annotations": {ANN_SELECTED_NODE: nd.node},
        }});
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        match call_api(
            "select this node for the claim",
            self.pvc_api(ns)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        {
            Ok(_) => {
                tracing::info!(pvc = %claim_key(ns, name), node = %nd.node, "this node took the claim");
                self.forget_competition(&uid);
                Ok(Outcome::Done)
            }
            Err(e) if is_status(&e, 409) => {
                self.schedule_next_try(&uid, nd);
                Ok(Outcome::Done)
            }
            Err(e) => Err(e),
        }
    }

    /// A lost or refused try: the next waits longer.
    fn schedule_next_try(&self, uid: &str, nd: &node::NodeDeployment) {
        let mut competing = self.competing.lock().unwrap_or_else(|e| e.into_inner());
        let failures = competing.get(uid).map_or(0, |(_, f)| *f) + 1;
        let at = Instant::now() + node::compete_delay(nd, failures, jitter(uid));
        competing.insert(uid.to_string(), (at, failures));
    }

    /// Whether a PV of this name exists (cache), or this process created it lately.
    fn pv_exists(&self, name: &str) -> bool {
        self.pvs.get(&ObjectRef::new(name)).is_some() || self.created(name)
    }

    /// Carries out a plan for a journal intent; `pvc` is its claim if it still exists.
    async fn act_on_intent(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
        plan: ClaimPlan,
    ) -> Result<Outcome, Error> {
        match (plan, pvc) {
            (ClaimPlan::Provision(intent), Some(pvc)) => {
                let _guard = self.locks.lock(&intent.volume_name).await;
                self.provision(pvc, &intent).await
            }
            (ClaimPlan::RollBack(intent), _) => {
                let _guard = self.locks.lock(&intent.volume_name).await;
                self.roll_back(pvc, &intent).await
            }
            (ClaimPlan::Release(why), _) => {
                tracing::info!(volume = %intent.volume_name, reason = %why, "releasing volume intent");
                self.release(pvc, intent, false).await?;
                Ok(Outcome::Done)
            }
            (plan, _) => {
                tracing::debug!(?plan, "nothing to do for this intent");
                Ok(Outcome::Done)
            }
        }
    }

    /// Upstream's "infeasible" slow set: held while `--retry-interval-max` has not passed since
    /// an INVALID_ARGUMENT, unless the StorageClass was recreated.
    fn held_back(&self, uid: &str, class_uid: &str) -> bool {
        let mut held = self.infeasible.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(uid) {
            Some((until, sc)) if *until > Instant::now() && sc == class_uid => true,
            Some(_) => {
                held.remove(uid);
                false
            }
            None => false,
        }
    }

    async fn prepare(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        selected_node: Option<&str>,
    ) -> Result<Outcome, Error> {
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let class_uid = class.metadata.uid.clone().unwrap_or_default();
        if self.held_back(&uid, &class_uid) {
            return Err(Error::Held(format!(
                "skipping volume provisioning for pvc {uid}, because provisioning previously failed with infeasible error"
            )));
        }
        let vac = match request::vac_name(pvc, &self.config) {
            Some(name) => {
                let api: Api<VolumeAttributesClass> = Api::all(self.ctx.client.clone());
                Some(
                    call_api("get volumeattributesclass", api.get(name))
                        .await
                        .map(|v| VacInfo {
                            driver_name: v.driver_name,
                            parameters: v.parameters.unwrap_or_default(),
                        })
                        .map_err(|e| e.to_string()),
                )
            }
            None => None,
        };
        let cluster = self.cluster_topology();
        let clone = source::clone_source_name(pvc);
        let restore = source::snapshot_source_name(pvc);
        let mut snapshot = None;
        let resolved = match (&clone, &restore) {
            (Some(name), _) if self.caps.clone => Some(self.resolve_clone(pvc, class, name).await),
            (_, Some(name)) if self.caps.snapshot => {
                let (resolved, json) = self.resolve_snapshot(pvc, class, name).await;
                snapshot = json;
                Some(resolved)
            }
            _ => None,
        };
        let prepared = request::prepare(&PrepareInput {
            source: resolved.as_ref(),
            claim: pvc,
            class,
            config: &self.config,
            driver: &self.driver,
            caps: self.caps,
            selected_node,
            cluster: &cluster,
            vac: vac.as_ref(),
        });
        let intent = match prepared {
            Ok(i) => i,
            Err(e) if e.state == ProvisioningState::Ignored => {
                self.events
                    .normal(
                        &pvc_ref(pvc),
                        REASON_PROVISIONING,
                        "Provision",
                        "Assuming an external populator will provision the volume",
                    )
                    .await;
                return Ok(Outcome::Done);
            }
            Err(e) => {
                if e.state == ProvisioningState::Reschedule {
                    // Give the claim back to the scheduler.
                    self.unselect_node(pvc).await?;
                }
                return self.failed(pvc, e).await;
            }
        };
        if let (Some(name), Some(RecordedSource::Volume(_))) =
            (&clone, &intent.request.content_source)
        {
            self.protect_clone_source(pvc, name).await?;
        }
        if let (Some(json), Some(RecordedSource::Snapshot(_))) =
            (&snapshot, &intent.request.content_source)
        {
            self.protect_snapshot(json).await?;
        }
        self.journal.record(&intent).await?;
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        tracing::info!(pvc = %claim_key(ns, name), volume = %intent.volume_name, "recorded volume intent");
        // Provision at once (the caller holds the volume name's lock): nothing else brings the
        // claim back.
        self.provision(pvc, &intent).await
    }

    /// The clone source of `pvc`: the source claim (cache, else a GET) and its PV (cache: only
    /// this driver's PVs can be a source).
    async fn resolve_clone(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        name: &str,
    ) -> Result<RecordedSource, String> {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let source_pvc = match self.pvcs.get(&ObjectRef::new(name).within(ns)) {
            Some(p) => Ok((*p).clone()),
            None => call_api("get source PVC", self.pvc_api(ns).get(name))
                .await
                .map_err(|e| e.to_string()),
        };
        let source_pv = source_pvc
            .as_ref()
            .ok()
            .and_then(|p| p.spec.as_ref()?.volume_name.clone())
            .and_then(|v| self.pvs.get(&ObjectRef::new(&v)));
        source::clone_source(
            pvc,
            source_pvc.as_ref().map_err(Clone::clone),
            source_pv.as_deref(),
            &class.provisioner,
        )
    }

    fn snapshot_api(&self, ns: Option<&str>, kind: &str, plural: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(SNAPSHOT_API_GROUP, "v1", kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        match ns {
            Some(ns) => Api::namespaced_with(self.ctx.client.clone(), ns, &resource),
            None => Api::all_with(self.ctx.client.clone(), &resource),
        }
    }

    /// The restore source of `pvc`: the VolumeSnapshot and its content, read with GETs as
    /// upstream does (they are not cached). Also returns the snapshot, for its finalizer.
    async fn resolve_snapshot(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        name: &str,
    ) -> (Result<RecordedSource, String>, Option<DynamicObject>) {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let snapshots = self.snapshot_api(Some(ns), SNAPSHOT_KIND, "volumesnapshots");
        let object = call_api("get VolumeSnapshot", snapshots.get(name))
            .await
            .map_err(|e| e.to_string());
        let snapshot = object
            .as_ref()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .map_err(Clone::clone);
        let content_name = snapshot.as_ref().ok().and_then(|s| {
            s["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .map(String::from)
        });
        let content = match content_name {
            Some(c) => {
                let contents =
                    self.snapshot_api(None, "VolumeSnapshotContent", "volumesnapshotcontents");
                Some(
                    call_api("get VolumeSnapshotContent", contents.get(&c))
                        .await
                        .map(|o| serde_json::to_value(o).unwrap_or_default())
                        .map_err(|e| e.to_string()),
                )
            }
            None => None,
        };
        let resolved = source::snapshot_source(
            pvc,
            snapshot.as_ref().map_err(Clone::clone),
            content.as_ref().map(|c| c.as_ref().map_err(Clone::clone)),
            &class.provisioner,
            self.config.prevent_volume_mode_conversion,
        );
        (resolved, object.ok())
    }

    /// Puts the snapshot-as-source finalizer on `snapshot` or takes it off, if it is not so
    /// already. A merge patch replaces the whole list, so it carries the resourceVersion: a
    /// snapshot changed meanwhile answers 409 and nothing is lost.
    async fn set_snapshot_protection(
        &self,
        snapshot: &DynamicObject,
        on: bool,
    ) -> Result<(), Error> {
        if crate::meta::has_finalizer(&snapshot.metadata, FINALIZER_SNAPSHOT_SOURCE_PROTECTION)
            == on
        {
            return Ok(());
        }
        let mut finalizers: Vec<String> = snapshot
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != FINALIZER_SNAPSHOT_SOURCE_PROTECTION)
            .cloned()
            .collect();
        if on {
            finalizers.push(FINALIZER_SNAPSHOT_SOURCE_PROTECTION.into());
        }
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": snapshot.metadata.resource_version,
        }});
        let ns = snapshot.metadata.namespace.as_deref().unwrap_or_default();
        let name = snapshot.metadata.name.as_deref().unwrap_or_default();
        let api = self.snapshot_api(Some(ns), SNAPSHOT_KIND, "volumesnapshots");
        let action = if on {
            "add snapshot source finalizer"
        } else {
            "remove snapshot source finalizer"
        };
        call_api(
            action,
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// Upstream: the VolumeSnapshot a restore reads from gets the provisioner's finalizer before
    /// CreateVolume (Forbidden is tolerated: RBAC may not allow it).
    async fn protect_snapshot(&self, snapshot: &DynamicObject) -> Result<(), Error> {
        match self.set_snapshot_protection(snapshot, true).await {
            Err(e) if is_status(&e, 403) => {
                let name = snapshot.metadata.name.as_deref().unwrap_or_default();
                tracing::warn!(snapshot = %name, error = %e, "cannot protect the snapshot source");
                Ok(())
            }
            r => r,
        }
    }

    /// Upstream: after the restore, the finalizer goes again, unless another Pending claim in
    /// the namespace still restores from the snapshot. Failures are only logged (as upstream).
    async fn unprotect_snapshot(&self, pvc: &PersistentVolumeClaim, name: &str) {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let others_pending = self.pvcs.state().iter().any(|c| {
            c.metadata.uid != pvc.metadata.uid
                && c.metadata.namespace.as_deref() == Some(ns)
                && source::snapshot_source_name(c).as_deref() == Some(name)
                && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
        });
        if others_pending {
            return;
        }
        let api = self.snapshot_api(Some(ns), SNAPSHOT_KIND, "volumesnapshots");
        let result = match call_api("get VolumeSnapshot", api.get_opt(name)).await {
            Ok(Some(snapshot)) => self.set_snapshot_protection(&snapshot, false).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if !is_status(&e, 404) && !is_status(&e, 403) => {
                tracing::warn!(snapshot = %format!("{ns}/{name}"), error = %e, "could not remove the snapshot source finalizer");
            }
            _ => {}
        }
    }

    /// Upstream's orphaned snapshot-finalizer sweep, every `--snapshot-orphan-sweep-interval`
    /// while leading; only for drivers that cut snapshots. Only snapshots whose content is of this
    /// driver are touched (the finalizer's name is shared by every provisioner). A Forbidden LIST
    /// turns the sweep off quietly, as upstream.
    async fn sweep_snapshot_finalizers(self: Arc<Self>, token: CancellationToken) {
        let every = self.config.snapshot_orphan_sweep_interval;
        if every.is_zero() || !self.caps.snapshot {
            return;
        }
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.sweep_once().await {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        removed = n,
                        "removed orphaned snapshot-as-source finalizers"
                    )
                }
                Ok(_) => {}
                Err(e) if is_status(&e, 403) || is_status(&e, 404) => {
                    tracing::info!(error = %e, "cannot list VolumeSnapshots; the orphaned-finalizer sweep is off");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "orphaned snapshot-finalizer sweep failed"),
            }
        }
    }

    /// One sweep; returns how many finalizers it removed.
    async fn sweep_once(&self) -> Result<usize, Error> {
        let all = self.snapshot_api(None, SNAPSHOT_KIND, "volumesnapshots");
        let list = call_api("list VolumeSnapshots", all.list(&Default::default())).await?;
        let claims = self.pvcs.state();
        let contents = self.snapshot_api(None, "VolumeSnapshotContent", "volumesnapshotcontents");
        let mut removed = 0;
        for snapshot in list.items {
            let json = serde_json::to_value(&snapshot).unwrap_or_default();
            if !source::orphaned_snapshot_protection(&json, claims.iter().map(|c| c.as_ref())) {
                continue;
            }
            let Some(content) = json["status"]["boundVolumeSnapshotContentName"].as_str() else {
                continue;
            };
            let ours = call_api("get VolumeSnapshotContent", contents.get_opt(content))
                .await?
                .is_some_and(|c| c.data["spec"]["driver"] == self.driver.as_str());
            if !ours {
                continue;
            }
            match self.set_snapshot_protection(&snapshot, false).await {
                Ok(_) => removed += 1,
                // Gone, changed meanwhile, or not ours to write: the next sweep looks again.
                Err(e) if is_status(&e, 404) || is_status(&e, 409) || is_status(&e, 403) => {
                    let name = snapshot.metadata.name.as_deref().unwrap_or_default();
                    tracing::debug!(snapshot = %name, error = %e, "skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Upstream `setCloneFinalizer`: the source claim keeps the cloning-protection finalizer
    /// until no Pending clone needs it.
    async fn protect_clone_source(
        &self,
        pvc: &PersistentVolumeClaim,
        name: &str,
    ) -> Result<(), Error> {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        if self
            .pvcs
            .get(&ObjectRef::new(name).within(ns))
            .is_some_and(|p| source::has_clone_protection(&p))
        {
            return Ok(());
        }
        let patch = json!({"metadata": {"finalizers": [FINALIZER_CLONE_PROTECTION]}});
        call_api(
            "add cloning-protection finalizer",
            self.pvc_api(ns)
                .patch(name, &PatchParams::default(), &Patch::Strategic(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// Upstream clone controller: a deleted source loses its cloning-protection finalizer once no
    /// Pending claim in its namespace clones it.
    async fn release_clone_source(&self, pvc: &PersistentVolumeClaim) -> Result<(), Error> {
        let claims = self.pvcs.state();
        if let Some(m) = source::clone_in_progress(pvc, claims.iter().map(|c| c.as_ref())) {
            return Err(Error::Held(m));
        }
        let patch = json!({"metadata": {
            "uid": pvc.metadata.uid,
            "$deleteFromPrimitiveList/finalizers": [FINALIZER_CLONE_PROTECTION],
        }});
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        match call_api(
            "remove cloning-protection finalizer",
            self.pvc_api(ns)
                .patch(name, &PatchParams::default(), &Patch::Strategic(&patch)),
        )
        .await
        {
            Err(e) if !is_status(&e, 404) => Err(e),
            _ => Ok(()),
        }
    }

    /// Reports a failed attempt (Event), applies its state, and fails the pass for backoff.
    async fn failed(
        &self,
        pvc: &PersistentVolumeClaim,
        e: ProvisionError,
    ) -> Result<Outcome, Error> {
        // Upstream: a failure that may have touched the driver refreshes the class's capacity.
        if e.state != ProvisioningState::NoChange {
            self.capacity_changed(Some(&claim::claim_class(pvc)));
        }
        if e.state != ProvisioningState::Ignored {
            self.metrics
                .provision_failed(&crate::metrics::claim_labels(pvc));
        }
        self.events
            .warning(
                &pvc_ref(pvc),
                REASON_PROVISIONING_FAILED,
                "Provision",
                &e.event_message(),
            )
            .await;
        Err(Error::Provision(e))
    }

    /// Releases the journal's intent; with `reschedule`, also gives the claim back to the
    /// scheduler.
    async fn release(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
        reschedule: bool,
    ) -> Result<(), Error> {
        if let Some(pvc) = pvc {
            if reschedule {
                self.unselect_node(pvc).await?;
            }
            if let Some(name) = source::snapshot_source_name(pvc) {
                self.unprotect_snapshot(pvc, &name).await;
            }
        }
        self.journal.release(&intent.volume_name);
        Ok(())
    }

    /// Removes `volume.kubernetes.io/selected-node` (upstream's rescheduling).
    async fn unselect_node(&self, pvc: &PersistentVolumeClaim) -> Result<(), Error> {
        let patch = json!({"metadata": {
            "uid": pvc.metadata.uid,
            "annotations": {ANN_SELECTED_NODE: null},
        }});
        self.patch_claim(pvc, "reschedule claim", &patch).await
    }

    /// Removes the intent finalizer and annotation an earlier version put on the claim.
    async fn strip(&self, pvc: &PersistentVolumeClaim) -> Result<(), Error> {
        let patch = json!({"metadata": {
            "uid": pvc.metadata.uid,
            "$deleteFromPrimitiveList/finalizers": [FINALIZER_VOLUME_INTENT],
            "annotations": {ANN_VOLUME_INTENT: null},
        }});
        self.patch_claim(pvc, "remove volume intent from claim", &patch)
            .await
    }

    /// A strategic-merge patch of the claim; a claim already gone is fine.
    async fn patch_claim(
        &self,
        pvc: &PersistentVolumeClaim,
        action: &str,
        patch: &serde_json::Value,
    ) -> Result<(), Error> {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        let r = call_api(
            action,
            self.pvc_api(ns)
                .patch(name, &PatchParams::default(), &Patch::Strategic(patch)),
        )
        .await;
        match r {
            Err(e) if is_status(&e, 404) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        intent: &Intent,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let secrets = match &intent.provisioner_secret {
            Some(r) => match self.secret_data(r).await {
                Ok(s) => s,
                Err(m) => return self.failed(pvc, ProvisionError::no_change(m)).await,
            },
            None => BTreeMap::new(),
        };
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        self.events
            .normal(
                &pvc_ref(pvc),
                REASON_PROVISIONING,
                "Provision",
                &format!("External provisioner is provisioning volume for claim \"{ns}/{name}\""),
            )
            .await;
        let request = intent.request.to_csi(&intent.volume_name, secrets.clone());
        let volume = match self.ctx.csi.create_volume(request).await {
            Ok(v1::CreateVolumeResponse { volume: Some(v) }) => v,
            Ok(_) => {
                let e = ProvisionError::new(
                    ProvisioningState::InBackground,
                    "CreateVolume returned no volume",
                );
                return self.failed(pvc, e).await;
            }
            Err(err) => {
                let e = ProvisionError::from_csi(&err, intent.may_reschedule);
                if e.infeasible {
                    let class_uid = self
                        .classes
                        .get(&ObjectRef::new(&intent.pv.storage_class_name))
                        .and_then(|c| c.metadata.uid.clone())
                        .unwrap_or_default();
                    let until = Instant::now() + self.ctx.backoff.max;
                    self.infeasible
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(intent.claim_uid.clone(), (until, class_uid));
                }
                match e.state {
                    // Upstream forgets the claim here. We drop the intent only if the error
                    // proves that no earlier call (perhaps of a killed process) created the
                    // volume; otherwise it stays, and the next pass replays the recorded request,
                    // or rolls it back if the claim is deleted meanwhile.
                    ProvisioningState::Finished if intent::proves_nothing_created(err.code()) => {
                        self.release(Some(pvc), intent, false).await?;
                    }
                    ProvisioningState::Reschedule => {
                        self.release(Some(pvc), intent, true).await?;
                    }
                    _ => {}
                }
                return self.failed(pvc, e).await;
            }
        };
        let capacity = match pv::pv_capacity(volume.capacity_bytes, intent.request.required_bytes) {
            Ok(c) => c,
            Err(mut m) => {
                if let Err(err) = self.cleanup(&volume.volume_id, &secrets).await {
                    m = format!(
                        "{m}. Cleanup of volume {} failed, volume is orphaned: {}",
                        intent.volume_name,
                        grpc_message(&err)
                    );
                }
                let e = ProvisionError::new(ProvisioningState::InBackground, m);
                return self.failed(pvc, e).await;
            }
        };
        if intent.request.content_source.is_some() && volume.content_source.is_none() {
            // Upstream: the driver ignored the source; an empty volume must not pass for a copy.
            let mut m = "volume content source missing".to_string();
            if let Err(err) = self.cleanup(&volume.volume_id, &secrets).await {
                m = format!(
                    "{m}. Cleanup of volume {} failed, volume is orphaned: {}",
                    intent.volume_name,
                    grpc_message(&err)
                );
            }
            return self
                .failed(pvc, ProvisionError::new(ProvisioningState::InBackground, m))
                .await;
        }
        let pv = pv::build_pv(pvc, intent, &volume, capacity, &self.driver, &self.identity);
        match call_api(
            "create PV",
            self.pv_api().create(&PostParams::default(), &pv),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e),
        }
        {
            let mut created = self.created_pvs.lock().unwrap_or_else(|e| e.into_inner());
            created.retain(|_, at| at.elapsed() < DELETION_MEMORY);
            created.insert(intent.volume_name.clone(), Instant::now());
        }
        tracing::info!(pvc = %claim_key(ns, name), pv = %intent.volume_name, volume_id = %volume.volume_id, "provisioned volume");
        self.capacity_changed(Some(&intent.pv.storage_class_name));
        self.metrics.provisioned(
            &crate::metrics::claim_labels(pvc),
            started.elapsed().as_secs_f64(),
        );
        self.events
            .normal(
                &pvc_ref(pvc),
                REASON_PROVISIONING_SUCCEEDED,
                "Provision",
                &format!("Successfully provisioned volume {}", intent.volume_name),
            )
            .await;
        self.infeasible
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&intent.claim_uid);
        // The PV records the volume now.
        self.release(Some(pvc), intent, false).await?;
        Ok(Outcome::Done)
    }

    /// Upstream `cleanupVolume`: DeleteVolume up to 5 times.
    async fn cleanup(
        &self,
        volume_id: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(), csi::CsiError> {
        let mut last = Ok(());
        for _ in 0..CLEANUP_RETRIES {
            let req = v1::DeleteVolumeRequest {
                volume_id: volume_id.to_string(),
                secrets: secrets.clone().into_iter().collect(),
            };
            last = self.ctx.csi.delete_volume(req).await.map(|_| ());
            if last.is_ok() {
                break;
            }
        }
        last
    }

    async fn roll_back(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
    ) -> Result<Outcome, Error> {
        let secrets = match &intent.provisioner_secret {
            Some(r) => self.secret_data(r).await.map_err(Error::Delete)?,
            None => BTreeMap::new(),
        };
        let request = intent.request.to_csi(&intent.volume_name, secrets.clone());
        let (replay, answer) = match self.ctx.csi.create_volume(request).await {
            Ok(v1::CreateVolumeResponse { volume: Some(v) }) => {
                (ReplayResult::Exists(v.volume_id), String::new())
            }
            Ok(_) => (ReplayResult::InFlight, "no volume in the answer".into()),
            Err(e) => (intent::replay_error(e.code()), grpc_message(&e)),
        };
        let key = claim_key(&intent.claim_namespace, &intent.claim_name);
        match intent::rollback_step(&replay) {
            RollBackStep::Delete(id) => {
                let req = v1::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    secrets: secrets.into_iter().collect(),
                };
                self.ctx
                    .csi
                    .delete_volume(req)
                    .await
                    .map_err(|e| Error::Csi {
                        action: format!("roll back volume {id}"),
                        source: Box::new(e),
                    })?;
                tracing::info!(pvc = %key, volume_id = %id, "rolled back volume of a deleted claim");
                self.release(pvc, intent, false).await?;
                Ok(Outcome::Done)
            }
            RollBackStep::Release => {
                tracing::info!(pvc = %key, volume = %intent.volume_name, "the driver refuses the recorded request: nothing was created");
                self.release(pvc, intent, false).await?;
                Ok(Outcome::Done)
            }
            RollBackStep::ReleaseOrphan => {
                tracing::error!(pvc = %key, volume = %intent.volume_name, "a volume of this name exists with other arguments; it cannot be found by id and is left on the driver");
                self.release(pvc, intent, false).await?;
                Ok(Outcome::Done)
            }
            RollBackStep::Retry => Err(Error::Delete(format!(
                "rollback of volume {}: the driver answered {answer}; it may exist or be in the making, retrying",
                intent.volume_name
            ))),
        }
    }

    async fn sync_volume(&self, name: &str) -> Result<Outcome, Error> {
        let Some(pv) = self.pvs.get(&ObjectRef::new(name)) else {
            return Ok(Outcome::Done);
        };
        if !pv::is_ours(&pv, &self.driver) {
            return Ok(Outcome::Done);
        }
        let action = pv::plan_volume(&pv);
        let patch_finalizer = |add: bool| {
            let list = if add {
                "finalizers"
            } else {
                "$deleteFromPrimitiveList/finalizers"
            };
            json!({"metadata": {"uid": pv.metadata.uid, list: [FINALIZER_PV]}})
        };
        match action {
            VolumeAction::Nothing => Ok(Outcome::Done),
            VolumeAction::AddFinalizer | VolumeAction::RemoveFinalizer => {
                let patch = patch_finalizer(action == VolumeAction::AddFinalizer);
                call_api(
                    "patch PV finalizer",
                    self.pv_api()
                        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            VolumeAction::Delete => {
                if let Some(nd) = &self.config.node_deployment
                    && !node::deletes(&pv, nd)
                {
                    // Another node's volume (upstream: ignored, no Event).
                    return Ok(Outcome::Done);
                }
                let _guard = self.locks.lock(name).await;
                let started = Instant::now();
                let class = pv::pv_class(&pv).unwrap_or_default();
                let uid = pv.metadata.uid.clone().unwrap_or_default();
                let done = self.deletion_done(&uid);
                if done == Some(DeletionStage::Finished) {
                    // Our own delete and finalizer removal, seen through the informer.
                    return Ok(Outcome::Done);
                }
                if done.is_none() {
                    if let Err(m) = self.delete_volume(&pv).await {
                        self.metrics.delete_failed(&class);
                        self.events
                            .warning(&pv_ref(&pv), REASON_VOLUME_FAILED_DELETE, "Delete", &m)
                            .await;
                        return Err(Error::Delete(m));
                    }
                    self.remember_deletion(&uid, DeletionStage::VolumeDeleted);
                    self.capacity_changed(pv::pv_class(&pv).as_deref());
                }
                if pv.metadata.deletion_timestamp.is_none() {
                    match call_api(
                        "delete PV",
                        self.pv_api().delete(name, &DeleteParams::default()),
                    )
                    .await
                    {
                        Err(e) if !is_status(&e, 404) => return Err(e),
                        _ => {}
                    }
                }
                let patch = patch_finalizer(false);
                match call_api(
                    "remove PV finalizer",
                    self.pv_api()
                        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch)),
                )
                .await
                {
                    Err(e) if !is_status(&e, 404) => return Err(e),
                    _ => {}
                }
                self.remember_deletion(&uid, DeletionStage::Finished);
                self.metrics
                    .deleted(&class, started.elapsed().as_secs_f64());
                Ok(Outcome::Done)
            }
        }
    }

    /// Whether this process created the PV `name` lately.
    fn created(&self, name: &str) -> bool {
        self.created_pvs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|at| at.elapsed() < DELETION_MEMORY)
    }

    /// How far this process got in deleting the PV with this UID, if it did.
    fn deletion_done(&self, pv_uid: &str) -> Option<DeletionStage> {
        self.deletions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pv_uid)
            .filter(|(at, _)| at.elapsed() < DELETION_MEMORY)
            .map(|(_, stage)| *stage)
    }

    fn remember_deletion(&self, pv_uid: &str, stage: DeletionStage) {
        let mut deletions = self.deletions.lock().unwrap_or_else(|e| e.into_inner());
        deletions.retain(|_, (at, _)| at.elapsed() < DELETION_MEMORY);
        deletions.insert(pv_uid.to_string(), (Instant::now(), stage));
    }

    /// Upstream `Delete`: DeleteVolume for a Released PV; the error text is the Event message.
    async fn delete_volume(&self, pv: &PersistentVolume) -> Result<(), String> {
        let name = pv.metadata.name.as_deref().unwrap_or_default();
        let Some(source) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
            return Err("invalid CSI PV".into());
        };
        self.caps.check_basic()?;
        let class_params = pv::pv_class(pv)
            .and_then(|c| self.classes.get(&ObjectRef::new(&c)))
            .map(|c| c.parameters.clone().unwrap_or_default());
        let secrets = match pv::deletion_secrets(pv, class_params.as_ref()) {
            DeletionSecrets::None => BTreeMap::new(),
            DeletionSecrets::Error(m) => return Err(m),
            // Continue without secrets: the Secret may have been deleted already.
            DeletionSecrets::Secret(r) => self.secret_data(&r).await.unwrap_or_else(|e| {
                tracing::error!(pv = %name, error = %e, "failed to get credentials for volume");
                BTreeMap::new()
            }),
        };
        if let Some(vas) = &self.attachments
            && let Some(va) = vas
                .state()
                .into_iter()
                .find(|va| va.spec.source.persistent_volume_name.as_deref() == Some(name))
        {
            return Err(format!(
                "persistentvolume {name} is still attached to node {}",
                va.spec.node_name
            ));
        }
        let req = v1::DeleteVolumeRequest {
            volume_id: source.volume_handle.clone(),
            secrets: secrets.into_iter().collect(),
        };
        self.ctx
            .csi
            .delete_volume(req)
            .await
            .map_err(|e| grpc_message(&e))?;
        tracing::info!(pv = %name, volume_id = %source.volume_handle, "deleted volume");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn name_locks_serialise_one_name_and_not_others() {
        let locks = Arc::new(NameLocks::default());
        let a = locks.lock("a").await;
        // Another name is free.
        let b = tokio::time::timeout(Duration::from_millis(50), locks.lock("b")).await;
        assert!(b.is_ok());
        // The same name waits.
        let again = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(again.is_err(), "a second holder of the same name must wait");
        drop(a);
        let again = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(again.is_ok());
    }
}
