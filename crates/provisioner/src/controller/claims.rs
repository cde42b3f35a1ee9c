//! The claim pass: what a claim and the journal's intents for its key need next, and the steps
//! that carry it out: preparing the request and recording the intent, CreateVolume and the PV,
//! releasing an intent, rolling back a deleted claim's volume.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller_kit::patch::PatchKind;
use controller_kit::{NamespacedName, Outcome};
use csi::v1;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttributesClass};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use super::Shared;
use crate::api::{call_api, pvc_ref};
use crate::claim;
use crate::constants::*;
use crate::error::{Error, ProvisionError, ProvisioningState};
use crate::intent::{
    self, AfterCreateError, ClaimObservation, ClaimPlan, ReplayResult, RollBackStep,
};
use crate::node::{self, Ownership};
use crate::patch;
use crate::pv;
use crate::request::{self, Intent, PrepareInput, VacInfo};
use crate::source::{self, RecordedSource};

/// How often upstream retries DeleteVolume of a too-small volume within one `--timeout`.
const CLEANUP_RETRIES: usize = 5;

impl Shared {
    /// The claim pass: the journal's intents of claims of this key that are gone, then the
    /// claim itself (the intent plan, provisioning, clone-source release).
    pub(super) async fn sync_claim(&self, key: &NamespacedName) -> Result<Outcome, Error> {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        let mut cached = self.pvcs.get(&key.object_ref());
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
        if claim::is_deleting(&pvc)
            && source::has_clone_protection(&pvc)
            && self.owns_clone_source(&pvc)
        {
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

    /// Carries out a plan for a journal intent; `pvc` is its claim if it still exists.
    pub(super) async fn act_on_intent(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
        plan: ClaimPlan,
    ) -> Result<Outcome, Error> {
        match (plan, pvc) {
            (ClaimPlan::Provision(intent), Some(pvc)) => {
                let _guard = self.locks.lock(&intent.volume_name).await;
                self.announce(pvc).await;
                let secrets = match self.provisioner_secrets(&intent).await {
                    Ok(s) => s,
                    Err(m) => return self.failed(pvc, ProvisionError::no_change(m)).await,
                };
                self.provision(pvc, &intent, secrets).await
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
    pub(super) fn held_back(&self, uid: &str, class_uid: &str) -> bool {
        match self.infeasible.get(uid) {
            Some(sc) if sc == class_uid => true,
            Some(_) => {
                self.infeasible.remove(uid);
                false
            }
            None => false,
        }
    }

    pub(super) async fn prepare(
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
        self.announce(pvc).await;
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
        // Upstream reports these failures as ProvisioningFailed too.
        if let (Some(name), Some(RecordedSource::Volume(_))) =
            (&clone, &intent.request.content_source)
            && let Err(e) = self.protect_clone_source(pvc, name).await
        {
            return self
                .failed(pvc, ProvisionError::no_change(e.to_string()))
                .await;
        }
        if let (Some(json), Some(RecordedSource::Snapshot(_))) =
            (&snapshot, &intent.request.content_source)
            && let Err(e) = self.protect_snapshot(json).await
        {
            return self
                .failed(pvc, ProvisionError::no_change(e.to_string()))
                .await;
        }
        // The intent is recorded only when CreateVolume is about to be sent: a claim that fails
        // before (here, its Secret) leaves nothing in the journal.
        let secrets = match self.provisioner_secrets(&intent).await {
            Ok(s) => s,
            Err(m) => return self.failed(pvc, ProvisionError::no_change(m)).await,
        };
        if let Err(e) = self.journal.record(&intent).await {
            return self
                .failed(pvc, ProvisionError::no_change(e.to_string()))
                .await;
        }
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        tracing::info!(pvc = %NamespacedName::new(ns, name), volume = %intent.volume_name, "recorded volume intent");
        // Provision at once (the caller holds the volume name's lock): nothing else brings the
        // claim back.
        self.provision(pvc, &intent, secrets).await
    }

    /// Upstream's Normal `Provisioning` event, before every provisioning attempt.
    async fn announce(&self, pvc: &PersistentVolumeClaim) {
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
    }

    /// Reports a failed attempt (Event), applies its state, and fails the pass for backoff.
    pub(super) async fn failed(
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
    pub(super) async fn release(
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
    pub(super) async fn unselect_node(&self, pvc: &PersistentVolumeClaim) -> Result<(), Error> {
        let patch = patch::unselect_node(pvc.metadata.uid.as_deref());
        self.patch_claim(pvc, "reschedule claim", &patch).await
    }

    /// Removes the intent finalizer and annotation an earlier version put on the claim.
    pub(super) async fn strip(&self, pvc: &PersistentVolumeClaim) -> Result<(), Error> {
        let patch = patch::strip_intent(pvc.metadata.uid.as_deref());
        self.patch_claim(pvc, "remove volume intent from claim", &patch)
            .await
    }

    /// A strategic-merge patch of the claim; a claim already gone is fine.
    pub(super) async fn patch_claim(
        &self,
        pvc: &PersistentVolumeClaim,
        action: &str,
        patch: &serde_json::Value,
    ) -> Result<(), Error> {
        let r = self
            .writes
            .claim_of(pvc, PatchKind::Strategic, patch, action)
            .await;
        match r {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// The provisioner Secret's data of `intent`, if it names one; the error is the Event's text.
    async fn provisioner_secrets(
        &self,
        intent: &Intent,
    ) -> Result<BTreeMap<String, String>, String> {
        match &intent.provisioner_secret {
            Some(r) => self.secret_data(r).await,
            None => Ok(BTreeMap::new()),
        }
    }

    /// CreateVolume with the recorded request and `secrets`, then the PV.
    pub(super) async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        intent: &Intent,
        secrets: BTreeMap<String, String>,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        let request = intent.request.to_csi(&intent.volume_name, secrets.clone());
        let volume = match self.csi.create_volume(request).await {
            Ok(v1::CreateVolumeResponse { volume: Some(v) }) if !v.volume_id.is_empty() => v,
            Ok(v1::CreateVolumeResponse { volume: Some(_) }) => {
                // Beyond upstream, which would make a PV the API server refuses. The intent
                // stays: the driver may hold a volume under this name, and the next
                // CreateVolume (idempotent by name) may name it.
                let e = ProvisionError::new(
                    ProvisioningState::InBackground,
                    "CreateVolume returned a volume without an ID",
                );
                return self.failed(pvc, e).await;
            }
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
                    self.infeasible.insert(intent.claim_uid.clone(), class_uid);
                }
                // A kept intent is replayed by the next pass, or rolled back if the claim goes.
                match intent::after_create_error(e.state, err.code()) {
                    AfterCreateError::Release => self.release(Some(pvc), intent, false).await?,
                    AfterCreateError::Reschedule => self.release(Some(pvc), intent, true).await?,
                    AfterCreateError::Keep => {}
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
                        err.go_message()
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
                // Lower-case here, as upstream writes this one.
                m = format!(
                    "{m}. cleanup of volume {} failed, volume is orphaned: {}",
                    intent.volume_name,
                    err.go_message()
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
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
        self.created_pvs.insert(intent.volume_name.clone(), ());
        tracing::info!(pvc = %NamespacedName::new(ns, name), pv = %intent.volume_name, volume_id = %volume.volume_id, "provisioned volume");
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
        self.infeasible.remove(&intent.claim_uid);
        // The PV records the volume now.
        self.release(Some(pvc), intent, false).await?;
        Ok(Outcome::Done)
    }

    /// Upstream `cleanupVolume`: DeleteVolume up to 5 times.
    pub(super) async fn cleanup(
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
            last = self.csi.delete_volume(req).await.map(|_| ());
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// [`Shared::roll_back_once`], and each failure made visible: a Warning `VolumeRollbackFailed`
    /// Event on the journal ConfigMap (the claim is gone) and
    /// `csi_provisioner_intent_rollback_failed`, so a stuck entry is seen, not only logged.
    /// Failures for longer than `--intent-rollback-timeout` give the intent up
    /// ([`Shared::abandon`]): an entry that can never be resolved does not stay for ever.
    pub(super) async fn roll_back(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
    ) -> Result<Outcome, Error> {
        let result = self.roll_back_once(pvc, intent).await;
        // How long it has been failing before this attempt (`None`: this is the first failure).
        let failing_for = {
            let mut failing = self
                .rollback_failing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(_) => {
                    failing.remove(&intent.claim_uid);
                    None
                }
                Err(_) => match failing.get(&intent.claim_uid) {
                    Some(since) => Some(since.elapsed()),
                    None => {
                        failing.insert(intent.claim_uid.clone(), Instant::now());
                        None
                    }
                },
            }
        };
        let Err(e) = &result else {
            return result;
        };
        self.metrics.rollback_failed();
        let note = format!(
            "volume {} of claim {}/{} (uid {}): {e}",
            intent.volume_name, intent.claim_namespace, intent.claim_name, intent.claim_uid
        );
        if let Some(failing_for) = failing_for
            && intent::give_up_rollback(failing_for, self.config.rollback_timeout)
        {
            return self.abandon(pvc, intent, failing_for, &note).await;
        }
        self.events
            .warning(
                &self.journal_ref(),
                REASON_ROLLBACK_FAILED,
                "RollBack",
                &note,
            )
            .await;
        result
    }

    /// Gives up an intent whose rollback kept failing: releases it, and says which volume may be
    /// left on the driver (Event, error log, `csi_provisioner_intent_rollback_abandoned`).
    async fn abandon(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
        failing_for: Duration,
        last: &str,
    ) -> Result<Outcome, Error> {
        self.release(pvc, intent, false).await?;
        self.rollback_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&intent.claim_uid);
        self.metrics.rollback_abandoned();
        let note = format!(
            "gave up rolling back after {}s of failures (--intent-rollback-timeout); a volume named {} may be left on the driver and must be deleted there by hand. Last failure: {last}",
            failing_for.as_secs(),
            intent.volume_name
        );
        tracing::error!(volume = %intent.volume_name, claim_uid = %intent.claim_uid, "{note}");
        self.events
            .warning(
                &self.journal_ref(),
                REASON_ROLLBACK_ABANDONED,
                "RollBack",
                &note,
            )
            .await;
        Ok(Outcome::Done)
    }

    /// The journal ConfigMap, which rollback Events are about (the claim is gone).
    fn journal_ref(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(self.ctx.namespace.clone()),
            name: Some(self.journal.object_name().to_string()),
            ..Default::default()
        }
    }

    async fn roll_back_once(
        &self,
        pvc: Option<&PersistentVolumeClaim>,
        intent: &Intent,
    ) -> Result<Outcome, Error> {
        let secrets = match &intent.provisioner_secret {
            Some(r) => self.secret_data(r).await.map_err(Error::Delete)?,
            None => BTreeMap::new(),
        };
        let request = intent.request.to_csi(&intent.volume_name, secrets.clone());
        let (replay, answer) = match self.csi.create_volume(request).await {
            Ok(v1::CreateVolumeResponse { volume: Some(v) }) => {
                (ReplayResult::Exists(v.volume_id), String::new())
            }
            Ok(_) => (ReplayResult::InFlight, "no volume in the answer".into()),
            Err(e) => (intent::replay_error(e.code()), e.go_message()),
        };
        let key = NamespacedName::new(&intent.claim_namespace, &intent.claim_name);
        match intent::rollback_step(&replay) {
            RollBackStep::Delete(id) => {
                let req = v1::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    secrets: secrets.into_iter().collect(),
                };
                match self.csi.delete_volume(req).await {
                    Ok(_) => {}
                    // Gone already: what the rollback wanted (the spec asks for OK here).
                    Err(e) if e.code() == Some(csi::Code::NotFound) => {}
                    Err(e) => {
                        return Err(Error::Csi {
                            action: format!("roll back volume {id}"),
                            source: Box::new(e),
                        });
                    }
                }
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
}
