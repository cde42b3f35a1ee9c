//! The expansion pass (external-resizer's `syncPVC` + `expandAndRecover`): the API and CSI
//! calls that carry out what [`crate::plan`] decides. The informers and the shared state are in
//! `controller`.

use std::sync::Arc;

use controller_kit::{NamespacedName, Outcome};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use crate::constants::*;
use crate::controller::{Lookup, Shared, may_be_ours, pvc_ref, set_has, set_put};
use crate::patch;
use crate::plan::{self, ErrorClass, Expansion, RecoveryInput};
use crate::request;

impl Shared {
    /// One pass over claim `key`.
    pub(crate) async fn reconcile(self: Arc<Self>, key: NamespacedName) -> Result<Outcome, String> {
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
            Ok(r) => {
                let capacity =
                    plan::expanded_bytes(r.capacity_bytes, bytes).map_err(|m| (None, m))?;
                Ok((
                    Quantity(controller_kit::quantity::format_binary_si(capacity)),
                    r.node_expansion_required,
                ))
            }
            Err(e) => Err((e.code(), e.go_message())),
        }
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

    async fn failed_event(&self, pvc: &PersistentVolumeClaim, class: &'static str, message: &str) {
        self.count_failure(class);
        self.events
            .warning(&pvc_ref(pvc), REASON_RESIZE_FAILED, class, message)
            .await;
    }
}
