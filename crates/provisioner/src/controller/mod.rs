//! The act layer: informers, the `claims` and `volumes` queues, and one thin step per pass.
//!
//! Each pass reads the shared caches, asks a pure planner (`intent::plan`, `pv::plan_volume`)
//! what to do, and does it. Patches come from [`crate::patch`]; API calls go through
//! [`crate::api::call_api`] (a timeout on each); every CSI call has the client's `--timeout`.
//! One file per concern:
//! - [`claims`]: the claim pass: provisioning, the journal's intents, rollbacks;
//! - [`deletion`]: the volume pass: the PV finalizer and deleting Released volumes;
//! - [`sources`]: data sources and their protection finalizers, with the orphan sweep;
//! - [`competition`]: node deployment's competition for Immediate claims.
//!
//! # Invariants
//! - Provisioning and deletion of one volume name never overlap: both passes hold the volume
//!   name's lock (`Shared::locks`) for their whole duration.
//! - Intent is recorded in the journal before CreateVolume and released only when a PV records
//!   the volume, when the driver's error proves that nothing was created
//!   (`intent::after_create_error`), or after a rollback's DeleteVolume succeeded.
//! - Secrets are read into CSI requests only; they are never logged (the request's `Debug` redacts).

mod claims;
mod competition;
mod deletion;
mod sources;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller_kit::events::EventRecorder;
use controller_kit::expiring::Expiring;
use controller_kit::keylock::KeyLocks;
use controller_kit::{Change, Controller, ControllerContext, Informers, NamespacedName, WorkQueue};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass, VolumeAttachment};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capacity::CapacityHandle;
use crate::claim;
use crate::constants::*;
use crate::intent::{self, Recorded};
use crate::journal::Journal;
use crate::params::SecretRef;
use crate::pv;
use crate::request::{DriverCaps, ProvisionerConfig};
use crate::source;
use crate::topology::ClusterTopology;

use deletion::DeletionStage;

/// How long a deletion or a PV creation is remembered (`Shared::deletions`, `created_pvs`).
const DELETION_MEMORY: Duration = Duration::from_secs(600);
/// How long a node deployment's competition for a claim is remembered after its last try.
const COMPETITION_MEMORY: Duration = Duration::from_secs(3600);
/// How long a failed journal read waits before the next try.
const LOAD_RETRY: Duration = Duration::from_secs(2);

struct Shared {
    ctx: ControllerContext,
    csi: csi::CsiClient,
    config: ProvisionerConfig,
    driver: String,
    caps: DriverCaps,
    pvcs: Store<PersistentVolumeClaim>,
    pvs: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    csinodes: Option<Store<CSINode>>,
    nodes: Option<Store<PartialObjectMeta<Node>>>,
    attachments: Option<Store<VolumeAttachment>>,
    claims: WorkQueue<NamespacedName>,
    volumes: WorkQueue<String>,
    /// Volume names being provisioned or deleted.
    locks: KeyLocks<String>,
    journal: Arc<Journal>,
    /// Claim and snapshot changes: patches, or updates where RBAC grants no patch.
    writes: crate::api::Writes,
    /// Capacity tracking, with `--enable-capacity`.
    capacity: Option<CapacityHandle>,
    /// The provisioner identity on PVs ([`pv::provisioner_identity`]), stable for the process's life.
    identity: String,
    /// Upstream's provisioning and deletion metrics.
    metrics: crate::metrics::ProvisionerMetrics,
    /// Node deployment: claims this node competes for, by UID: when it may try, and how many
    /// tries lost.
    competing: Expiring<String, (Instant, u32)>,
    events: EventRecorder,
    /// Claims held back after INVALID_ARGUMENT, by UID, for `--retry-interval-max`: the UID of
    /// the StorageClass they failed with.
    /// Forgotten when the claim is deleted.
    infeasible: Arc<Expiring<String, String>>,
    /// PVs (by UID) this process deleted, and how far: a pass that finds such a PV again
    /// (its own deletion and finalizer removal raise events) neither repeats DeleteVolume nor
    /// the API calls already done. After a restart they are repeated, which is idempotent.
    deletions: Expiring<String, DeletionStage>,
    /// PVs this process created: a claim pass that runs before the PV reaches the cache
    /// releases the intent instead of replaying CreateVolume and the PV create.
    created_pvs: Expiring<String, ()>,
    /// Intents (by claim UID) whose rollback has been failing, and since when (as seen by this
    /// process: a restart starts the clock again, which only lengthens the bound).
    rollback_failing: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
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

fn has_intent_finalizer(pvc: &PersistentVolumeClaim) -> bool {
    crate::meta::has_finalizer(&pvc.metadata, FINALIZER_VOLUME_INTENT)
}

/// Builds the provisioner: registers its informers and handlers. Call before the informers start.
/// `capacity` is capacity tracking's handle, with `--enable-capacity`. `journal_client`, if
/// given, carries the intent journal's reads and writes on a rate limit of its own (else
/// `ctx.client`): every claim waits on the journal, and it must not queue behind the other
/// controllers' requests (after a restart, their resync held the journal's first read back for
/// seconds).
pub fn build(
    ctx: ControllerContext,
    driver: &csi::Driver,
    config: ProvisionerConfig,
    informers: &mut Informers,
    capacity: Option<CapacityHandle>,
    journal_client: Option<kube::Client>,
) -> Arc<dyn Controller> {
    let name = driver.discovery.driver_name.clone();
    let caps = DriverCaps::from_discovery(&driver.discovery, config.topology_gate);
    let claims = WorkQueue::new(QUEUE_CLAIMS, ctx.backoff, ctx.metrics.queues());
    let volumes = WorkQueue::new(QUEUE_VOLUMES, ctx.backoff, ctx.metrics.queues());
    let node_mode = config.node_deployment.clone();
    let journal = Arc::new(Journal::new(
        journal_client.unwrap_or_else(|| ctx.client.clone()),
        &ctx.namespace,
        &name,
        node_mode.as_ref().map(|n| n.node.as_str()),
        ctx.workers,
    ));
    {
        let journal = journal.clone();
        ctx.metrics
            .views()
            .add("intents", Arc::new(move || journal.in_flight()));
    }

    let infeasible = Arc::new(Expiring::new(ctx.backoff.max));
    let pvcs = {
        let d = name.clone();
        let q = claims.clone();
        let j = journal.clone();
        let held = infeasible.clone();
        informers
            .for_type::<PersistentVolumeClaim>()
            // A claim with our intent stays in memory even if its annotations change. A claim
            // with the cloning-protection finalizer is kept too, whatever provisioned it: we may
            // have put it there (a clone's source bound to a static PV of ours), and whatever
            // adds a finalizer must see it to remove it (`sources::owns_clone_source` decides).
            .keep(move |pvc| {
                claim::is_for_driver(pvc, &d)
                    || pvc.metadata.uid.as_deref().is_some_and(|u| j.has_claim(u))
                    || (has_intent_finalizer(pvc)
                        && matches!(intent::recorded(pvc, &d), Recorded::Intent(_)))
                    || source::has_clone_protection(pvc)
            })
            .on_change(move |change: &Change<'_, PersistentVolumeClaim>| {
                let pvc = change.object();
                if let (Change::Deleted(_), Some(uid)) = (change, &pvc.metadata.uid) {
                    held.remove(uid);
                }
                if let Some(key) = NamespacedName::of(&pvc.metadata) {
                    // A clone that changes may free its source's cloning-protection finalizer.
                    if let Some(src) = source::clone_source_name(pvc) {
                        q.add(NamespacedName::new(key.namespace.clone(), src));
                    }
                    q.add(key);
                }
            })
            .store()
    };
    let pvs = {
        let d = name.clone();
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
                    cq.add(NamespacedName::new(ns, n));
                }
            })
            .store()
    };
    // Every StorageClass (there are few): a claim whose class now names another provisioner
    // must be told from one whose class is missing, and is left quietly, as upstream does.
    let classes = informers.for_type::<StorageClass>().keep(|_| true).store();
    // Node deployment: the node's own topology is static (upstream replaces these informers).
    let (csinodes, nodes) = if caps.topology && node_mode.is_none() {
        let csinodes = informers.for_type::<CSINode>().store();
        let nodes = informers.for_type::<PartialObjectMeta<Node>>().store();
        (Some(csinodes), Some(nodes))
    } else {
        (None, None)
    };
    let metrics = ctx
        .metrics
        .register(crate::metrics::ProvisionerMetrics::register);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let identity = pv::provisioner_identity(
        unix_ms,
        rand::random_range(0..10_000),
        &name,
        node_mode.as_ref().map(|n| n.node.as_str()),
    );
    // Upstream checks every VolumeAttachment before DeleteVolume, whatever its attacher: keep
    // ours and any that names a PV of ours. Until the PV cache has synced, that cannot be told,
    // so every VA is kept (one that is not ours goes at its next change); after, a VA is created
    // for a PV that exists, so the PV is in the cache first.
    let attachments = caps.publish_unpublish.then(|| {
        let d = name.clone();
        let ours = pvs.clone();
        let pvs_synced = informers.for_type::<PersistentVolume>().synced();
        informers
            .for_type::<VolumeAttachment>()
            .keep(move |va| {
                va.spec.attacher == d
                    || !*pvs_synced.borrow()
                    || va
                        .spec
                        .source
                        .persistent_volume_name
                        .as_deref()
                        .is_some_and(|pv| ours.get(&ObjectRef::new(pv)).is_some())
            })
            .store()
    });
    let events = EventRecorder::new(
        ctx.client.clone(),
        &event_component(&name, &ctx.identity, &uuid::Uuid::new_v4()),
        Some(ctx.identity.clone()),
    );
    let writes = crate::api::Writes::new(ctx.client.clone());
    Arc::new(Provisioner {
        shared: Arc::new(Shared {
            ctx,
            csi: driver.client.clone(),
            config,
            driver: name,
            caps,
            pvcs,
            pvs,
            classes,
            csinodes,
            nodes,
            attachments,
            claims,
            volumes,
            locks: KeyLocks::default(),
            journal,
            writes,
            capacity,
            identity,
            metrics,
            competing: Expiring::new(COMPETITION_MEMORY),
            events,
            infeasible,
            deletions: Expiring::new(DELETION_MEMORY),
            created_pvs: Expiring::new(DELETION_MEMORY),
            rollback_failing: Default::default(),
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
            let workers = controller_kit::Workers {
                controller: "provisioner",
                count: shared.ctx.workers,
                metrics: shared.ctx.metrics.controllers(),
            };
            let claims = controller_kit::run_workers(
                workers.clone(),
                shared.claims.clone(),
                shared.clone(),
                |s, key| async move { s.sync_claim(&key).await },
                token.clone(),
            );
            let volumes = controller_kit::run_workers(
                workers,
                shared.volumes.clone(),
                shared.clone(),
                |s, key| async move { s.sync_volume(&key).await },
                token.clone(),
            );
            let sweep = shared.clone().sweep_snapshot_finalizers(token.clone());
            futures::join!(claims, volumes, sweep, writer);
        })
    }
}

impl Shared {
    fn pvc_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    fn pv_api(&self) -> Api<PersistentVolume> {
        Api::all(self.ctx.client.clone())
    }

    /// Tells capacity tracking that volumes of `class` came or went.
    fn capacity_changed(&self, class: Option<&str>) {
        if let (Some(capacity), Some(class)) = (&self.capacity, class) {
            capacity.class_changed(class);
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

    /// The Secret's data, for a CSI request; the error is the Event's text, as upstream words it
    /// (`error getting secret x in namespace y: secrets "x" not found`).
    async fn secret_data(&self, r: &SecretRef) -> Result<BTreeMap<String, String>, String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &r.namespace);
        let secret =
            controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, api.get(&r.name))
                .await
                .map_err(|e| {
                    format!(
                        "error getting secret {} in namespace {}: {e}",
                        r.name, r.namespace
                    )
                })?;
        controller_kit::secrets::csi_strings(secret)
    }

    /// Whether a PV of this name exists (cache), or this process created it lately.
    fn pv_exists(&self, name: &str) -> bool {
        self.pvs.get(&ObjectRef::new(name)).is_some() || self.created_pvs.get(name).is_some()
    }
}
