//! The modify controller's pass: the API and CSI calls that carry out [`super::plan`].

use std::collections::BTreeMap;
use std::sync::Arc;

use controller_kit::{NamespacedName, Outcome};
use csi::v1;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use super::{ModifyError, ModifyErrorClass, ModifyStep};
use crate::constants::*;
use crate::controller::{Lookup, Shared, pvc_ref, set_has, set_put};
use crate::request::SecretRef;

/// The Secret of ControllerModifyVolume: the PV's modify-secret annotations when both are set,
/// else `spec.csi.controllerExpandSecretRef` (`getModifySecretRef`).
pub fn modify_secret(pv: &PersistentVolume) -> Option<SecretRef> {
    let a = |k| controller_kit::meta::annotation(&pv.metadata, k).filter(|v| !v.is_empty());
    if let (Some(name), Some(namespace)) =
        (a(ANN_MODIFY_SECRET_NAME), a(ANN_MODIFY_SECRET_NAMESPACE))
    {
        return Some(SecretRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
    }
    crate::request::expand_secret(pv)
}

/// The mutable parameters sent: the class's, plus the claim's and PV's names with
/// `--extra-modify-metadata`.
pub fn mutable_parameters(
    class: &VolumeAttributesClass,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    extra: bool,
) -> BTreeMap<String, String> {
    let mut p = class.parameters.clone().unwrap_or_default();
    if extra {
        let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
        p.insert(PARAM_PVC_NAME.into(), name(&pvc.metadata));
        p.insert(
            PARAM_PVC_NAMESPACE.into(),
            pvc.metadata.namespace.clone().unwrap_or_default(),
        );
        p.insert(PARAM_PV_NAME.into(), name(&pv.metadata));
    }
    p
}

impl Shared {
    /// One modify pass over claim `key` (`syncPVC` + `modify`).
    pub(crate) async fn reconcile_modify(
        self: Arc<Self>,
        key: NamespacedName,
    ) -> Result<Outcome, String> {
        let name = key.to_string();
        let (pvc, pv) = match self.lookup(&key) {
            Lookup::Gone => {
                self.modify_slow.remove(&name);
                set_put(&self.uncertain, &name, false);
                return Ok(Outcome::Done);
            }
            Lookup::Unbound => return Ok(Outcome::Done),
            Lookup::NoPv(_, volume) => {
                return Err(format!(
                    "Get PV {volume:?} of pvc {name:?} in PVInformer cache failed: not found"
                ));
            }
            Lookup::Found(pvc, pv) => (pvc, pv),
        };
        let ours = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .is_some_and(|c| c.driver == self.driver);
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if !ours || !bound {
            return Ok(Outcome::Done);
        }
        // The slow retry of an infeasible class (`delayModificationIfRecentlyInfeasible`).
        if !super::targets_spec(&pvc) {
            self.modify_slow.remove(&name);
        } else {
            let in_slow_set = self.modify_slow.get(&name).is_some();
            if super::is_infeasible(&pvc) && !in_slow_set {
                self.modify_slow.insert(name.clone(), Instant::now());
            }
            if in_slow_set {
                // Upstream returns this as an error: the key is retried with backoff.
                return Err(format!(
                    "skipping volume modification for pvc {name}, because modification previously failed with infeasible error"
                ));
            }
        }
        let uncertain = set_has(&self.uncertain, &name);
        match super::plan(&pvc, uncertain) {
            ModifyStep::Done => Ok(Outcome::Done),
            ModifyStep::RollBack { cancel: false } => Ok(Outcome::Done),
            ModifyStep::RollBack { cancel: true } => {
                self.events
                    .normal(
                        &pvc_ref(&pvc),
                        REASON_MODIFY_CANCELED,
                        "Modify",
                        "Cancelled modify.",
                    )
                    .await;
                self.patch_claim(&pvc, &super::mark_rolled_back(&pvc))
                    .await
                    .map_err(|e| format!("mark PVC {name:?} as rolled back failed: {e}"))?;
                Ok(Outcome::Done)
            }
            ModifyStep::Continue(target) => {
                let class = self.class(&pvc, &target).await?;
                self.modify(&name, &pvc, &pv, &class).await
            }
            ModifyStep::Start(target) => {
                let Ok(class) = self.class(&pvc, &target).await else {
                    // Upstream: Pending, and no retry until the claim changes again.
                    let p = super::mark_status(&pvc, MODIFY_PENDING, None, jiff::Timestamp::now());
                    self.patch_claim(&pvc, &p).await.map_err(|e| {
                        format!("mark PVC {name:?} as modify volume failed, errored with: {e}")
                    })?;
                    return Ok(Outcome::Done);
                };
                let p = super::mark_status(&pvc, MODIFY_IN_PROGRESS, None, jiff::Timestamp::now());
                let pvc = self.patch_claim(&pvc, &p).await.map_err(|e| {
                    format!("mark PVC {name:?} as modify volume failed, errored with: {e}")
                })?;
                let claim = pvc.metadata.name.clone().unwrap_or_default();
                self.events
                    .normal(
                        &pvc_ref(&pvc),
                        REASON_MODIFY,
                        "Modify",
                        &format!("external resizer is modifying volume {claim} with vac {target}"),
                    )
                    .await;
                self.modify(&name, &pvc, &pv, &class).await
            }
        }
    }

    /// The class `target` from the cache; a Warning Event when it does not exist.
    async fn class(
        &self,
        pvc: &PersistentVolumeClaim,
        target: &str,
    ) -> Result<Arc<VolumeAttributesClass>, String> {
        let found = self
            .vacs
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::new(target)));
        match found {
            Some(c) => Ok(c),
            None => {
                self.events
                    .warning(
                        &pvc_ref(pvc),
                        REASON_MODIFY_FAILED,
                        "Modify",
                        &format!("VAC {target:?} does not exist."),
                    )
                    .await;
                Err(format!(
                    "get VAC with vac name {target} in VACInformer cache failed: volumeattributesclass.storage.k8s.io {target:?} not found"
                ))
            }
        }
    }

    /// ControllerModifyVolume to `class`, and the outcome recorded (`controllerModifyVolumeWithTarget`).
    async fn modify(
        &self,
        name: &str,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
        class: &VolumeAttributesClass,
    ) -> Result<Outcome, String> {
        let class_name = class.metadata.name.clone().unwrap_or_default();
        let claim = pvc.metadata.name.clone().unwrap_or_default();
        let result = self.call_modify(pvc, pv, class).await;
        let error = match result {
            Ok(()) => {
                // The PV first, then the claim, as upstream.
                let completed = async {
                    self.patch_pv(pv, &super::pv_class(&class_name))
                        .await
                        .map_err(|e| format!("update pv.Spec.VolumeAttributesClassName for PVC {claim:?} failed, errored with: {e}"))?;
                    self.patch_claim(pvc, &super::mark_completed(pvc, &class_name))
                        .await
                        .map_err(|e| format!("mark PVC {claim:?} as ModifyVolumeCompleted failed, errored with: {e}"))
                };
                if let Err(e) = completed.await {
                    let message = format!(
                        "modify volume failed to mark pvc {claim} modify volume completed: {e} "
                    );
                    self.modify_failed_event(pvc, ModifyErrorClass::Transient.reason(), &message)
                        .await;
                    return Err(message);
                }
                set_put(&self.uncertain, name, false);
                self.events
                    .normal(
                        &pvc_ref(pvc),
                        REASON_MODIFY_SUCCESSFUL,
                        "Modify",
                        &format!(
                            "external resizer modified volume {claim} with vac {class_name} successfully"
                        ),
                    )
                    .await;
                return Ok(Outcome::Done);
            }
            Err(e) => e,
        };
        let Some(code) = error.code() else {
            // Not an answer of the driver (a Secret, say): upstream leaves the status alone and
            // sends no Event; ours says why.
            let message = format!(
                "cannot get error status from modify volume err: {}",
                error.text
            );
            self.modify_failed_event(pvc, ModifyErrorClass::Transient.reason(), &message)
                .await;
            return Err(message);
        };
        let class = ModifyErrorClass::of(code);
        let mut message = error.text.clone();
        let status = match class {
            ModifyErrorClass::Transient => {
                set_put(&self.uncertain, name, true);
                message.push_str(&format!(". Still modifying to VAC {class_name}"));
                MODIFY_IN_PROGRESS
            }
            ModifyErrorClass::Infeasible => {
                set_put(&self.uncertain, name, false);
                MODIFY_INFEASIBLE
            }
            ModifyErrorClass::Final => {
                set_put(&self.uncertain, name, false);
                MODIFY_IN_PROGRESS
            }
        };
        let recorded = ModifyError {
            code,
            message: error.status_message.clone(),
        };
        let p = super::mark_status(pvc, status, Some(&recorded), jiff::Timestamp::now());
        let pvc = self.patch_claim(pvc, &p).await.map_err(|e| {
            format!("mark PVC {claim:?} as modify volume failed, errored with: {e}")
        })?;
        if super::is_infeasible(&pvc) && self.modify_slow.get(name).is_none() {
            self.modify_slow.insert(name.to_string(), Instant::now());
        }
        self.modify_failed_event(&pvc, class.reason(), &message)
            .await;
        Err(error.text)
    }

    async fn call_modify(
        &self,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
        class: &VolumeAttributesClass,
    ) -> Result<(), CallError> {
        let handle = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .map(|c| c.volume_handle.clone())
            .unwrap_or_default();
        if handle.is_empty() {
            return Err(CallError::local("empty volume handle".into()));
        }
        let secrets = match modify_secret(pv) {
            Some(r) => self.secret(&r).await.map_err(CallError::local)?,
            None => BTreeMap::new(),
        };
        let req = v1::ControllerModifyVolumeRequest {
            volume_id: handle,
            secrets: secrets.into_iter().collect(),
            mutable_parameters: mutable_parameters(
                class,
                pvc,
                pv,
                self.config.extra_modify_metadata,
            )
            .into_iter()
            .collect(),
        };
        self.csi
            .controller_modify_volume(req)
            .await
            .map(|_| ())
            .map_err(|e| CallError {
                code: e.code(),
                text: e.go_message(),
                status_message: e.status_message(),
            })
    }

    async fn modify_failed_event(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &'static str,
        message: &str,
    ) {
        self.count_failure(class);
        self.events
            .warning(&pvc_ref(pvc), REASON_MODIFY_FAILED, class, message)
            .await;
    }
}

/// A failed modify call: the gRPC code (`None`: the driver was not called), Go's text, and the
/// driver's own message.
struct CallError {
    code: Option<csi::Code>,
    text: String,
    status_message: String,
}

impl CallError {
    fn local(text: String) -> Self {
        Self {
            code: None,
            status_message: text.clone(),
            text,
        }
    }

    fn code(&self) -> Option<csi::Code> {
        self.code
    }
}
