//! The volume pass: the provisioner's PV finalizer, and deleting the volume of a Released PV
//! with the Delete policy (DeleteVolume, then the PV, then the finalizer), remembering how far
//! it got so that the PV's own events do not repeat a step.

use std::collections::BTreeMap;

use controller_kit::Outcome;
use csi::v1;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use super::Shared;
use crate::api::{call_api, pv_ref};
use crate::constants::*;
use crate::error::Error;
use crate::node;
use crate::patch;
use crate::pv::{self, DeletionSecrets, VolumeAction};

/// How far the deletion of a PV got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DeletionStage {
    /// DeleteVolume succeeded.
    VolumeDeleted,
    /// DeleteVolume, the PV's deletion and its finalizer's removal all succeeded.
    Finished,
}

impl Shared {
    pub(super) async fn sync_volume(&self, name: &str) -> Result<Outcome, Error> {
        let Some(pv) = self.pvs.get(&ObjectRef::new(name)) else {
            return Ok(Outcome::Done);
        };
        if !pv::is_ours(&pv, &self.driver) {
            return Ok(Outcome::Done);
        }
        let action = pv::plan_volume(&pv);
        let patch_finalizer = |add: bool| patch::pv_finalizer(pv.metadata.uid.as_deref(), add);
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
                        Err(e) if !e.is_not_found() => return Err(e),
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
                    Err(e) if !e.is_not_found() => return Err(e),
                    _ => {}
                }
                self.remember_deletion(&uid, DeletionStage::Finished);
                self.metrics
                    .deleted(&class, started.elapsed().as_secs_f64());
                Ok(Outcome::Done)
            }
        }
    }

    /// How far this process got in deleting the PV with this UID, if it did.
    fn deletion_done(&self, pv_uid: &str) -> Option<DeletionStage> {
        self.deletions.get(pv_uid)
    }

    fn remember_deletion(&self, pv_uid: &str, stage: DeletionStage) {
        self.deletions.insert(pv_uid.to_string(), stage);
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
        self.csi
            .delete_volume(req)
            .await
            .map_err(|e| e.go_message())?;
        tracing::info!(pv = %name, volume_id = %source.volume_handle, "deleted volume");
        Ok(())
    }
}
