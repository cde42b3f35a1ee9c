//! The source claim of a dynamic snapshot: read (cached, else live), its PV read live, and
//! its `pvc-as-source-protection` finalizer added while the snapshot is cut and removed once no
//! unready snapshot needs it (by get and update: upstream's RBAC grants no patch on claims).

use std::sync::Arc;

use controller_kit::NamespacedName;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, PostParams};

use super::Shared;
use super::act::call;
use super::plan;
use crate::PassError;
use crate::constants::*;
use crate::types::*;

impl Shared {
    /// The snapshot's source claim, when it holds the finalizer and no unready snapshot of its
    /// namespace (other than this one, with `skip_self`) takes it as source.
    pub(super) fn claim_to_release(&self, vs: &VolumeSnapshot, skip_self: bool) -> Option<String> {
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

    pub(super) fn claims_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    /// GET and PUT of the claim without the finalizer (upstream RBAC grants `update`, not
    /// `patch`, on claims); a conflict is retried.
    pub(super) async fn release_claim(
        &self,
        vs: &VolumeSnapshot,
        claim: &str,
    ) -> Result<(), PassError> {
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
    pub(super) async fn source_claim(
        &self,
        vs: &VolumeSnapshot,
    ) -> Result<PersistentVolumeClaim, String> {
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
    pub(super) async fn source_volume(
        &self,
        vs: &VolumeSnapshot,
    ) -> Result<PersistentVolume, String> {
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

    /// Upstream `ensurePVCFinalizer`: the source claim holds `pvc-as-source-protection` while
    /// the snapshot is cut; a claim being deleted is refused.
    /// Errors read as upstream's (`snapshot controller failed to update <name> on API server:
    /// …`), naming the snapshot when the claim cannot be read, else the claim.
    pub(super) async fn protect_claim(&self, vs: &VolumeSnapshot) -> Result<(), String> {
        let Ok(mut pvc) = self.source_claim(vs).await else {
            return Err(update_error(
                vs.metadata.name.as_deref().unwrap_or_default(),
                "cannot get claim from snapshot",
            ));
        };
        if controller_kit::meta::has_finalizer(&pvc.metadata, FIN_PVC_AS_SOURCE) {
            return Ok(());
        }
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(update_error(
                &name,
                "cannot add finalizer on claim because it is being deleted",
            ));
        }
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
        .map_err(|e| update_error(&name, &e.to_string()))
    }
}

/// Upstream's `newControllerUpdateError`.
fn update_error(name: &str, message: &str) -> String {
    format!("snapshot controller failed to update {name} on API server: {message}")
}
