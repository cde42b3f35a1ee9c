//! The act layer: informer handlers, the worker pass, and the API and CSI calls that carry out
//! what [`crate::plan`] decides.
//!
//! # Which claims are cached
//! The claim informer is shared with the provisioner. The resizer keeps a claim whose
//! provisioner or resizer annotation names this driver, or whose volume is a cached PV of this
//! driver. The claims' watch starts once the PV cache has synced (before, every claim would be
//! kept, since it cannot be told, and stay cached until its next change). A new PV of this
//! driver queues its claim, in case the claim's change came first. A claim bound to a static PV
//! of this driver whose bind event arrives before the PV's is cached at its next change.
//!
//! # Invariants
//! - The claim's status is written only through `/status`, the PV before the claim, as upstream.
//! - What a pass wrote is what the next pass reads ([`Written`]) until the watch catches up, so
//!   a pass never decides on the state before its own write.
//! - Secrets are read live, never cached or logged.
//! - The in-memory sets (final errors, slow retries, in-use errors) forget a claim when it is
//!   deleted; the slow set also after `--retry-interval-max`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use controller_kit::events::EventRecorder;
use controller_kit::expiring::Expiring;
use controller_kit::written::Written;
use controller_kit::{Change, ControllerContext, Informers, NamespacedName, WorkQueue};
use csi::v1::controller_service_capability::rpc::Type as Cap;
use csi::v1::node_service_capability::rpc::Type as NodeCap;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, Secret,
};
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ResizerConfig;
use crate::constants::*;
use crate::plan;
use crate::request;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

/// The resizer (see the crate docs).
pub struct Resizer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Resizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resizer")
            .field("driver", &self.shared.driver)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) ctx: ControllerContext,
    pub(crate) csi: csi::CsiClient,
    pub(crate) config: ResizerConfig,
    pub(crate) driver: String,
    pub(crate) single_node_multi_writer: bool,
    /// The driver expands on the node only (upstream's trivial resizer): no ControllerExpandVolume,
    /// the PV takes the requested size and the node's part is always required.
    pub(crate) node_only: bool,
    pub(crate) pvcs: Store<PersistentVolumeClaim>,
    pub(crate) pvs: Store<PersistentVolume>,
    /// The resize controller's queue, with EXPAND_VOLUME.
    queue: Option<WorkQueue<NamespacedName>>,
    /// The modify controller's queue, with MODIFY_VOLUME and [`ResizerConfig::modify`].
    modify_queue: Option<WorkQueue<NamespacedName>>,
    /// VolumeAttributesClasses, for the modify controller.
    pub(crate) vacs: Option<Store<VolumeAttributesClass>>,
    pub(crate) written_pvcs: Written<PersistentVolumeClaim>,
    pub(crate) written_pvs: Written<PersistentVolume>,
    /// Claims whose expansion was infeasible, with when that was first seen; remembered for
    /// `--retry-interval-max` (upstream's slow set).
    pub(crate) slow: Expiring<String, Instant>,
    /// Claims whose last expansion ended with a final error (the target may change).
    pub(crate) final_errors: Mutex<HashSet<String>>,
    /// Claims whose last expansion failed with FAILED_PRECONDITION (in use, offline-only driver).
    pub(crate) in_use_errors: Mutex<HashSet<String>>,
    /// Claims whose last modification may still run on the driver: its target is kept.
    pub(crate) uncertain: Mutex<HashSet<String>>,
    /// Claims whose modification was infeasible, with when that was first seen.
    pub(crate) modify_slow: Expiring<String, Instant>,
    pub(crate) events: EventRecorder,
    failures: Family<ClassLabels, Counter>,
}

/// What [`Shared::lookup`] found.
pub(crate) enum Lookup {
    /// The claim is gone.
    Gone,
    /// The claim names no volume yet.
    Unbound,
    /// The claim's PV is not in the cache (not this driver's, or not seen yet).
    NoPv(Arc<PersistentVolumeClaim>, String),
    /// The claim and its PV.
    Found(Arc<PersistentVolumeClaim>, Arc<PersistentVolume>),
}

pub(crate) fn set_has(set: &Mutex<HashSet<String>>, key: &str) -> bool {
    set.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
}

pub(crate) fn set_put(set: &Mutex<HashSet<String>>, key: &str, on: bool) {
    let mut s = set.lock().unwrap_or_else(|e| e.into_inner());
    if on {
        s.insert(key.to_string());
    } else {
        s.remove(key);
    }
}

/// Whether a claim may be this driver's, before its PV is looked at.
pub(crate) fn may_be_ours(
    pvc: &PersistentVolumeClaim,
    driver: &str,
    pvs: &Store<PersistentVolume>,
) -> bool {
    let named = [
        "volume.kubernetes.io/storage-provisioner",
        "volume.beta.kubernetes.io/storage-provisioner",
        ANN_STORAGE_RESIZER,
    ]
    .iter()
    .any(|a| controller_kit::meta::annotation(&pvc.metadata, a) == Some(driver));
    named
        || pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .filter(|v| !v.is_empty())
            .is_some_and(|v| pvs.get(&ObjectRef::new(v)).is_some())
}

fn pv_is_ours(pv: &PersistentVolume, driver: &str) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| c.driver == driver)
}

pub(crate) fn build(
    ctx: ControllerContext,
    driver: &csi::Driver,
    config: ResizerConfig,
    informers: &mut Informers,
) -> Resizer {
    let name = driver.discovery.driver_name.clone();
    let control_plane = driver.discovery.has_controller(Cap::ExpandVolume);
    let node_only = !control_plane && driver.discovery.has_node(NodeCap::ExpandVolume);
    let queue = (control_plane || node_only)
        .then(|| WorkQueue::new(queue_name(&name), ctx.backoff, ctx.metrics.queues()));
    let modify_queue = (config.modify && driver.discovery.has_controller(Cap::ModifyVolume))
        .then(|| WorkQueue::new(modify_queue_name(&name), ctx.backoff, ctx.metrics.queues()));
    let pvs = {
        let d = name.clone();
        let queues: Vec<_> = queue.iter().chain(modify_queue.iter()).cloned().collect();
        informers
            .for_type::<PersistentVolume>()
            .keep(move |pv| pv_is_ours(pv, &d))
            // A new PV of ours: its claim may have been passed over while the PV was unknown.
            .on_change(move |change: &Change<'_, PersistentVolume>| {
                if let Change::Applied {
                    object,
                    previous: None,
                } = change
                    && let Some(r) = object.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                    && let (Some(ns), Some(n)) = (&r.namespace, &r.name)
                {
                    for q in &queues {
                        q.add(NamespacedName::new(ns, n));
                    }
                }
            })
            .store()
    };
    let pvcs = {
        let d = name.clone();
        let ours = pvs.clone();
        let pvs_synced = informers.for_type::<PersistentVolume>().synced();
        let handler_synced = pvs_synced.clone();
        let (d2, ours2) = (name.clone(), pvs.clone());
        let (resize, modify) = (queue.clone(), modify_queue.clone());
        informers
            .for_type::<PersistentVolumeClaim>()
            // Claims are listed once the PVs are, so that another driver's claims are never
            // cached (the keep predicate looks at the PV cache).
            .after(pvs_synced.clone())
            .keep(move |pvc| !*pvs_synced.borrow() || may_be_ours(pvc, &d, &ours))
            .on_change(move |change: &Change<'_, PersistentVolumeClaim>| {
                let Some(key) = NamespacedName::of(&change.object().metadata) else {
                    return;
                };
                match change {
                    Change::Applied { object, previous } => {
                        if *handler_synced.borrow() && !may_be_ours(object, &d2, &ours2) {
                            return;
                        }
                        if let Some(q) = &resize
                            && previous.is_none_or(|p| plan::should_enqueue(p, object))
                        {
                            q.add(key.clone());
                        }
                        if let Some(q) = &modify {
                            let queued = previous.is_none_or(|p| {
                                let pv = p.spec.as_ref().and_then(|s| s.volume_name.as_deref());
                                let cached =
                                    pv.is_some_and(|v| ours2.get(&ObjectRef::new(v)).is_some());
                                crate::modify::should_enqueue(p, object, cached)
                            });
                            if queued {
                                q.add(key);
                            }
                        }
                    }
                    // The workers forget the claim's memory when they find it gone.
                    Change::Deleted(_) => {
                        for q in resize.iter().chain(modify.iter()) {
                            q.add(key.clone());
                        }
                    }
                }
            })
            .store()
    };
    // Beyond upstream: a class created after a claim asked for it (status Pending) is applied at
    // once; upstream waits for the claim's next change or resync.
    let vacs = modify_queue.clone().map(|q| {
        let claims = pvcs.clone();
        informers
            .for_type::<VolumeAttributesClass>()
            .keep(|_| true)
            .on_change(move |change: &Change<'_, VolumeAttributesClass>| {
                let Change::Applied {
                    object,
                    previous: None,
                } = change
                else {
                    return;
                };
                let Some(class) = object.metadata.name.as_deref() else {
                    return;
                };
                // Every claim that asks for it and does not have it: its cached copy may not
                // show the Pending status written a moment ago; the pass decides.
                for pvc in claims.state() {
                    if crate::modify::spec_class(&pvc) == class
                        && crate::modify::current_class(&pvc) != class
                        && let Some(key) = NamespacedName::of(&pvc.metadata)
                    {
                        q.add(key);
                    }
                }
            })
            .store()
    });
    let failures = ctx.metrics.register(|registry| {
        let family = Family::<ClassLabels, Counter>::default();
        registry.register(
            "csi_resizer_failures",
            "Failed expansion and modification attempts (and expansions held because the volume is in use), by class: ResizeInfeasible, ResizeFailed, ResizeTransientError, ResizeVolumeInUse, ModifyInfeasible, ModifyFailed, ModifyTransientError.",
            family.clone(),
        );
        family
    });
    let events = EventRecorder::new(
        ctx.client.clone(),
        &event_component(&name),
        Some(ctx.identity.clone()),
    );
    let slow_memory = ctx.backoff.max;
    Resizer {
        shared: Arc::new(Shared {
            csi: driver.client.clone(),
            single_node_multi_writer: driver.discovery.has_controller(Cap::SingleNodeMultiWriter),
            node_only,
            ctx,
            config,
            driver: name,
            pvcs,
            pvs,
            queue,
            modify_queue,
            vacs,
            written_pvcs: Written::default(),
            written_pvs: Written::default(),
            slow: Expiring::new(slow_memory),
            final_errors: Mutex::default(),
            in_use_errors: Mutex::default(),
            uncertain: Mutex::default(),
            modify_slow: Expiring::new(slow_memory),
            events,
            failures,
        }),
    }
}

impl controller_kit::Controller for Resizer {
    fn name(&self) -> &'static str {
        CONTROLLER_NAME
    }

    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()> {
        let s = self.shared.clone();
        Box::pin(async move {
            let workers = || controller_kit::Workers {
                controller: CONTROLLER_NAME,
                count: s.ctx.workers,
                metrics: s.ctx.metrics.controllers(),
            };
            let resize = s.queue.clone().map(|queue| {
                controller_kit::run_workers(
                    workers(),
                    queue,
                    s.clone(),
                    |s, key| async move { s.reconcile(key).await },
                    token.clone(),
                )
            });
            let modify = s.modify_queue.clone().map(|queue| {
                // After a restart, a modification found in progress may still run on the
                // driver: its target is kept until it ends (`initUncertainPVCs`).
                for pvc in s.pvcs.state() {
                    if crate::modify::modify_status(&pvc)
                        .is_some_and(|m| m.status == MODIFY_IN_PROGRESS)
                        && let Some(key) = NamespacedName::of(&pvc.metadata)
                    {
                        set_put(&s.uncertain, &key.to_string(), true);
                    }
                }
                controller_kit::run_workers(
                    workers(),
                    queue,
                    s.clone(),
                    |s, key| async move { s.reconcile_modify(key).await },
                    token.clone(),
                )
            });
            let resize = async move {
                if let Some(r) = resize {
                    r.await;
                }
            };
            let modify = async move {
                if let Some(m) = modify {
                    m.await;
                }
            };
            futures::join!(resize, modify);
        })
    }
}

pub(crate) fn pvc_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn api_error(e: controller_kit::api::ApiError) -> String {
    e.to_string()
}

impl Shared {
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, call)
            .await
            .map_err(api_error)
    }

    /// The claim `key` and its PV, as this controller last wrote or the caches hold them.
    pub(crate) fn lookup(&self, key: &NamespacedName) -> Lookup {
        let name = key.to_string();
        let cached = self.pvcs.get(&key.object_ref());
        let Some(pvc) = self.written_pvcs.read(&name, cached) else {
            return Lookup::Gone;
        };
        let Some(volume) = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| !v.is_empty())
        else {
            return Lookup::Unbound;
        };
        let cached_pv = self.pvs.get(&ObjectRef::new(&volume));
        match self.written_pvs.read(&volume, cached_pv) {
            Some(pv) => Lookup::Found(pvc, pv),
            None => Lookup::NoPv(pvc, volume),
        }
    }

    pub(crate) async fn secret(
        &self,
        r: &request::SecretRef,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &r.namespace);
        let secret = self
            .call(api.get(&r.name))
            .await
            .map_err(|e| request::secret_error(r, &e))?;
        controller_kit::secrets::csi_strings(secret).map_err(|e| request::secret_error(r, &e))
    }

    /// Counts a failure of `class`.
    pub(crate) fn count_failure(&self, class: &'static str) {
        self.failures.get_or_create(&ClassLabels { class }).inc();
    }

    /// Merge patch of the claim's `/status`; the answer is what later passes read.
    pub(crate) async fn patch_claim(
        &self,
        pvc: &PersistentVolumeClaim,
        body: &Value,
    ) -> Result<PersistentVolumeClaim, String> {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        let updated = self
            .call(api.patch_status(name, &PatchParams::default(), &Patch::Merge(body)))
            .await?;
        self.written_pvcs.record(
            &NamespacedName::new(ns, name).to_string(),
            pvc,
            updated.clone(),
        );
        Ok(updated)
    }

    /// Strategic merge patch of the PV; the answer is what later passes read.
    pub(crate) async fn patch_pv(
        &self,
        pv: &PersistentVolume,
        body: &Value,
    ) -> Result<Arc<PersistentVolume>, String> {
        let name = pv.metadata.name.as_deref().unwrap_or_default();
        let api: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        let updated = self
            .call(api.patch(name, &PatchParams::default(), &Patch::Strategic(body)))
            .await?;
        self.written_pvs.record(name, pv, updated.clone());
        Ok(Arc::new(updated))
    }
}
