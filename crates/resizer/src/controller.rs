//! The act layer: informer handlers, the worker pass, and the API and CSI calls that carry out
//! what [`crate::plan`] decides.
//!
//! # Which claims are cached
//! The claim informer is shared with the provisioner. The resizer keeps a claim whose
//! provisioner or resizer annotation names this driver, or whose volume is a cached PV of this
//! driver (every claim until the PV cache has synced, when it cannot be told). A new PV of this
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
use controller_kit::{Change, ControllerContext, Informers, NamespacedName, Outcome, WorkQueue};
use csi::v1::controller_service_capability::rpc::Type as Cap;
use csi::v1::node_service_capability::rpc::Type as NodeCap;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ResizerConfig;
use crate::constants::*;
use crate::patch;
use crate::plan::{self, ErrorClass, Expansion, RecoveryInput};
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
    single_node_multi_writer: bool,
    /// The driver expands on the node only (upstream's trivial resizer): no ControllerExpandVolume,
    /// the PV takes the requested size and the node's part is always required.
    node_only: bool,
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
    slow: Expiring<String, Instant>,
    /// Claims whose last expansion ended with a final error (the target may change).
    final_errors: Mutex<HashSet<String>>,
    /// Claims whose last expansion failed with FAILED_PRECONDITION (in use, offline-only driver).
    in_use_errors: Mutex<HashSet<String>>,
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
fn may_be_ours(pvc: &PersistentVolumeClaim, driver: &str, pvs: &Store<PersistentVolume>) -> bool {
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
    async fn call<T>(
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

    /// One pass over claim `key`.
    async fn reconcile(self: Arc<Self>, key: NamespacedName) -> Result<Outcome, String> {
        let name = key.to_string();
        let (pvc, mut pv) = match self.lookup(&key) {
            Lookup::Gone => {
                // Deleted: forget it (upstream only forgets the queue's backoff).
                self.slow.remove(&name);
                set_put(&self.final_errors, &name, false);
                set_put(&self.in_use_errors, &name, false);
                return Ok(Outcome::Done);
            }
            Lookup::Unbound => return Ok(Outcome::Done),
            // Not ours, or not in the cache yet: upstream requeues with backoff. A PV of
            // another driver is not kept, so a claim of another driver ends here quietly.
            Lookup::NoPv(pvc, volume) => {
                if may_be_ours(&pvc, &self.driver, &self.pvs) {
                    return Err(format!("PV {volume:?} bound to pvc {name:?} not found"));
                }
                return Ok(Outcome::Done);
            }
            Lookup::Found(pvc, pv) => (pvc, pv),
        };
        let volume = pv.metadata.name.clone().unwrap_or_default();
        if self.config.annotate_fs_resize && plan::pre_resize_annotation_done(&pvc, &pv) {
            pv = self
                .patch_pv(&pv, &patch::remove_pre_resize_annotation())
                .await
                .map_err(|e| {
                    format!("failed removing annotation {ANN_PRE_RESIZE_CAPACITY} from pv {volume:?}: {e}")
                })?;
        }
        if !plan::needs_resize(&pvc) {
            return Ok(Outcome::Done);
        }
        if let Err(why) = plan::can_expand(&pv, &pvc, &self.driver) {
            tracing::debug!(pvc = %name, pv = %volume, why, "not expanding");
            return Ok(Outcome::Done);
        }
        let Some(spec) = plan::requested(&pvc).cloned() else {
            return Ok(Outcome::Done);
        };
        let status = plan::resize_status(&pvc);
        let in_slow_set = self.slow.get(&name).is_some();
        if status == CONTROLLER_RESIZE_INFEASIBLE && !in_slow_set {
            self.slow.insert(name.clone(), Instant::now());
        }
        let decision = plan::decide(&RecoveryInput {
            pv_size: plan::pv_capacity(&pv),
            spec: &spec,
            allocated: plan::allocated(&pvc),
            status,
            final_error: set_has(&self.final_errors, &name),
            in_slow_set,
            fs_resize_pending: plan::has_fs_resize_pending(&pvc),
            control_plane: !self.node_only,
        });
        match decision {
            Expansion::Wait => Ok(Outcome::Done),
            Expansion::SlowRetry => {
                let since = self.slow.get(&name).unwrap_or_else(Instant::now);
                let remaining = self.ctx.backoff.max.saturating_sub(since.elapsed());
                tracing::debug!(pvc = %name, ?remaining, "skipping volume expansion, because expansion previously failed with infeasible error");
                Ok(Outcome::RequeueAfter(
                    remaining.max(std::time::Duration::from_millis(100)),
                ))
            }
            Expansion::Expand {
                size,
                update_status,
            } => self.expand(&name, &pvc, &pv, size, update_status).await,
        }
    }

    /// Marks the claim in progress, calls the driver, and records the outcome.
    async fn expand(
        &self,
        name: &str,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
        size: Quantity,
        update_status: bool,
    ) -> Result<Outcome, String> {
        let before = plan::capacity(pvc).cloned();
        let now = jiff::Timestamp::now();
        let pvc = self
            .patch_claim(
                pvc,
                &patch::mark_in_progress(pvc, &size, update_status, now),
            )
            .await
            .map_err(|e| format!("marking pvc {name:?} as resizing failed: {e}"))?;
        if set_has(&self.in_use_errors, name) && self.in_use(&pvc).await? {
            let message = format!(
                "Unable to expand {name} because CSI driver {} only supports offline expansion and volume is currently in-use",
                self.driver
            );
            self.failed_event(&pvc, plan::IN_USE_REASON, &message).await;
            return Err(message);
        }
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        self.events
            .normal(
                &pvc_ref(&pvc),
                REASON_RESIZING,
                "Resize",
                &format!("External resizer is resizing volume {pv_name}"),
            )
            .await;
        set_put(&self.in_use_errors, name, false);
        let result = self.call_driver(pv, &size).await;
        let (capacity, node_expansion_required) = match result {
            Ok(r) => r,
            Err((code, text)) => {
                let class = ErrorClass::of(code);
                if code == Some(csi::Code::FailedPrecondition) {
                    set_put(&self.in_use_errors, name, true);
                }
                let wrapped = format!(
                    "resize volume {pv_name:?} by resizer {:?} failed: {text}",
                    self.driver
                );
                let mut message = wrapped.clone();
                match class {
                    ErrorClass::Transient => {
                        self.slow.remove(name);
                        set_put(&self.final_errors, name, false);
                    }
                    ErrorClass::Infeasible | ErrorClass::Final => {
                        set_put(&self.final_errors, name, true);
                        let infeasible = class == ErrorClass::Infeasible;
                        if !infeasible {
                            self.slow.remove(name);
                        }
                        let p = patch::mark_failed(&pvc, &text, class.reason(), infeasible, now);
                        if let Err(e) = self.patch_claim(&pvc, &p).await {
                            message = format!(
                                "resizing failed in controller with {text} but failed to update PVC {name} with: mark PVC {name:?} as controller expansion failed, errored with: {e}"
                            );
                        }
                    }
                }
                self.failed_event(&pvc, class.reason(), &message).await;
                return Err(message);
            }
        };
        set_put(&self.final_errors, name, false);
        self.slow.remove(name);
        let finish = async {
            let p = patch::pv_capacity(pv, &capacity, node_expansion_required, before.as_ref());
            self.patch_pv(pv, &p).await.map_err(|e| {
                format!(
                    "error updating pv {pv_name:?} by resizer: updating capacity of PV {pv_name:?} to {} failed: {e}",
                    capacity.0
                )
            })?;
            if node_expansion_required {
                self.patch_claim(
                    &pvc,
                    &patch::mark_node_pending(&pvc, jiff::Timestamp::now()),
                )
                .await
                .map_err(|e| format!("mark PVC {name:?} as node expansion required failed: {e}"))?;
                self.events
                    .normal(
                        &pvc_ref(&pvc),
                        REASON_FS_RESIZE_REQUIRED,
                        "Resize",
                        "Require file system resize of volume on node",
                    )
                    .await;
            } else {
                self.patch_claim(&pvc, &patch::mark_finished(&pvc, &capacity))
                    .await
                    .map_err(|e| format!("mark PVC {name:?} as resize finished failed: {e}"))?;
                self.events
                    .normal(
                        &pvc_ref(&pvc),
                        REASON_RESIZE_SUCCESSFUL,
                        "Resize",
                        "Resize volume succeeded",
                    )
                    .await;
            }
            Ok::<(), String>(())
        };
        if let Err(message) = finish.await {
            // The driver has expanded; the next pass records it (the call is idempotent).
            self.failed_event(&pvc, ErrorClass::Transient.reason(), &message)
                .await;
            return Err(message);
        }
        tracing::info!(pvc = %name, pv = %pv_name, capacity = %capacity.0, node_expansion_required, "expanded volume");
        Ok(Outcome::Done)
    }

    /// ControllerExpandVolume for `pv` to `size`: the new capacity (BinarySI) and whether the
    /// node must expand too; on failure the gRPC code (`None`: the call was not made) and text.
    async fn call_driver(
        &self,
        pv: &PersistentVolume,
        size: &Quantity,
    ) -> Result<(Quantity, bool), (Option<csi::Code>, String)> {
        if self.node_only {
            // Upstream's trivial resizer: the requested size, and the node does the work.
            return Ok((size.clone(), true));
        }
        let secrets = match request::expand_secret(pv) {
            Some(r) => self.secret(&r).await.map_err(|e| (None, e))?,
            None => Default::default(),
        };
        let bytes = plan::bytes(Some(size));
        let req = request::expand_request(pv, bytes, secrets, self.single_node_multi_writer)
            .map_err(|e| (None, e))?;
        match self.csi.controller_expand_volume(req).await {
            Ok(r) => Ok((
                Quantity(controller_kit::quantity::format_binary_si(r.capacity_bytes)),
                r.node_expansion_required,
            )),
            Err(e) => Err((e.code(), e.go_message())),
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

    /// Whether a Pod that is not finished uses the claim (`checkForUse`); never with
    /// `--handle-volume-inuse-error=false`. Pods are listed on demand, in the claim's namespace.
    async fn in_use(&self, pvc: &PersistentVolumeClaim) -> Result<bool, String> {
        if !self.config.handle_volume_inuse_error {
            return Ok(false);
        }
        let (Some(ns), Some(claim)) = (&pvc.metadata.namespace, &pvc.metadata.name) else {
            return Ok(false);
        };
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        let pods = self
            .call(api.list(&ListParams::default()))
            .await
            .map_err(|e| format!("listing pods in namespace {ns} failed: {e}"))?;
        Ok(pods.items.iter().any(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let running = !matches!(phase, Some("Succeeded" | "Failed"));
            running
                && pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .is_some_and(|vs| {
                        vs.iter().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| &c.claim_name == claim)
                        })
                    })
        }))
    }

    /// Counts a failure of `class`.
    pub(crate) fn count_failure(&self, class: &'static str) {
        self.failures.get_or_create(&ClassLabels { class }).inc();
    }

    async fn failed_event(&self, pvc: &PersistentVolumeClaim, class: &'static str, message: &str) {
        self.count_failure(class);
        self.events
            .warning(&pvc_ref(pvc), REASON_RESIZE_FAILED, class, message)
            .await;
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
