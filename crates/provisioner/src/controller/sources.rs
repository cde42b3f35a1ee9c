//! Data sources and their protection finalizers: resolving a clone's source claim and a
//! restore's VolumeSnapshot and content; the cloning-protection finalizer on a source claim; the
//! snapshot-as-source finalizer on a VolumeSnapshot, with upstream's periodic sweep of orphaned
//! ones.

use std::sync::Arc;

use controller_kit::NamespacedName;
use controller_kit::patch::PatchKind;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::api::call_api;
use crate::claim;
use crate::constants::*;
use crate::error::Error;
use crate::patch;
use crate::source::{self, RecordedSource};

impl Shared {
    /// The clone source of `pvc`: the source claim (cache, else a GET) and its PV (cache: only
    /// this driver's PVs can be a source).
    pub(super) async fn resolve_clone(
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

    pub(super) fn snapshot_api(
        &self,
        ns: Option<&str>,
        kind: &str,
        plural: &str,
    ) -> Api<DynamicObject> {
        crate::api::snapshot_api(&self.ctx.client, ns, kind, plural)
    }

    /// The restore source of `pvc`: the VolumeSnapshot and its content, read with GETs as
    /// upstream does (they are not cached). Also returns the snapshot, for its finalizer.
    pub(super) async fn resolve_snapshot(
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
            (
                class.metadata.name.as_deref().unwrap_or_default(),
                &class.provisioner,
            ),
            self.config.prevent_volume_mode_conversion,
        );
        (resolved, object.ok())
    }

    /// Puts the snapshot-as-source finalizer on `snapshot` or takes it off, if it is not so
    /// already. A merge patch replaces the whole list, so it carries the resourceVersion: a
    /// snapshot changed meanwhile answers 409 and nothing is lost.
    pub(super) async fn set_snapshot_protection(
        &self,
        snapshot: &DynamicObject,
        on: bool,
    ) -> Result<(), Error> {
        let existing = snapshot.metadata.finalizers.as_deref().unwrap_or_default();
        let resource_version = snapshot.metadata.resource_version.as_deref();
        let Some(patch) = patch::snapshot_source_protection(existing, resource_version, on) else {
            return Ok(());
        };
        let ns = snapshot.metadata.namespace.as_deref().unwrap_or_default();
        let name = snapshot.metadata.name.as_deref().unwrap_or_default();
        let action = if on {
            "add snapshot source finalizer"
        } else {
            "remove snapshot source finalizer"
        };
        self.writes.snapshot(ns, name, &patch, action).await
    }

    /// Upstream: the VolumeSnapshot a restore reads from gets the provisioner's finalizer before
    /// CreateVolume (Forbidden is tolerated: RBAC may not allow it).
    pub(super) async fn protect_snapshot(&self, snapshot: &DynamicObject) -> Result<(), Error> {
        match self.set_snapshot_protection(snapshot, true).await {
            Err(e) if e.is_forbidden() => {
                let name = snapshot.metadata.name.as_deref().unwrap_or_default();
                tracing::warn!(snapshot = %name, error = %e, "cannot protect the snapshot source");
                Ok(())
            }
            r => r,
        }
    }

    /// Upstream: after the restore, the finalizer goes again, unless another Pending claim in
    /// the namespace still restores from the snapshot. Failures are only logged (as upstream).
    pub(super) async fn unprotect_snapshot(&self, pvc: &PersistentVolumeClaim, name: &str) {
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
            Err(e) if !e.is_not_found() && !e.is_forbidden() => {
                tracing::warn!(snapshot = %NamespacedName::new(ns, name), error = %e, "could not remove the snapshot source finalizer");
            }
            _ => {}
        }
    }

    /// Upstream's orphaned snapshot-finalizer sweep, every `--snapshot-orphan-sweep-interval`
    /// while leading; only for drivers that cut snapshots. Only snapshots whose content is of this
    /// driver are touched (the finalizer's name is shared by every provisioner). A Forbidden LIST
    /// turns the sweep off quietly, as upstream.
    pub(super) async fn sweep_snapshot_finalizers(self: Arc<Self>, token: CancellationToken) {
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
                Err(e) if e.is_forbidden() || e.is_not_found() => {
                    tracing::info!(error = %e, "cannot list VolumeSnapshots; the orphaned-finalizer sweep is off");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "orphaned snapshot-finalizer sweep failed"),
            }
        }
    }

    /// One sweep; returns how many finalizers it removed.
    pub(super) async fn sweep_once(&self) -> Result<usize, Error> {
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
                Err(e) if e.is_not_found() || e.is_conflict() || e.is_forbidden() => {
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
    pub(super) async fn protect_clone_source(
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
        let patch = patch::add_clone_protection();
        let action = "add cloning-protection finalizer";
        self.writes
            .claim(ns, name, PatchKind::Strategic, &patch, action)
            .await
    }

    /// Whether a claim with the cloning-protection finalizer is this driver's to release: a claim
    /// of this driver, or one bound to a PV of this driver (a statically created one). Claims of
    /// other drivers carry the same finalizer name, and their clones are in no cache of ours.
    pub(super) fn owns_clone_source(&self, pvc: &PersistentVolumeClaim) -> bool {
        claim::is_for_driver(pvc, &self.driver)
            || pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|pv| self.pv_exists(pv))
    }

    /// Upstream clone controller: a deleted source loses its cloning-protection finalizer once no
    /// Pending claim in its namespace clones it.
    pub(super) async fn release_clone_source(
        &self,
        pvc: &PersistentVolumeClaim,
    ) -> Result<(), Error> {
        let claims = self.pvcs.state();
        if let Some(m) = source::clone_in_progress(pvc, claims.iter().map(|c| c.as_ref())) {
            return Err(Error::Held(m));
        }
        let patch = patch::remove_clone_protection(pvc.metadata.uid.as_deref());
        let action = "remove cloning-protection finalizer";
        match self
            .writes
            .claim_of(pvc, PatchKind::Strategic, &patch, action)
            .await
        {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}
