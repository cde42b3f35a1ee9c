//! The provisioner's door to the API server: every call through [`call_api`] (the kit's
//! timeout, an error naming what we were doing), and the typed and dynamic APIs it writes to.
//! The act layer (`controller`), the journal and capacity tracking all call the API from here,
//! so none of them imports from another.

use std::future::Future;

use controller_kit::patch::{PatchKind, UpdateFallback, patch_or_update};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use crate::constants::SNAPSHOT_API_GROUP;
use crate::error::Error;

/// One API call with the runtime's timeout; a failure names what we were doing.
pub async fn call_api<T>(
    action: impl Into<String>,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    controller_kit::api::call(controller_kit::api::DEFAULT_API_TIMEOUT, call)
        .await
        .map_err(|source| Error::Api {
            action: action.into(),
            source,
        })
}

/// A snapshot API (`snapshot.storage.k8s.io/v1`, not compiled in): namespaced with `ns`.
pub fn snapshot_api(
    client: &kube::Client,
    ns: Option<&str>,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(SNAPSHOT_API_GROUP, "v1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Changes to claims and VolumeSnapshots: patches, or, where RBAC grants only `update` (as
/// upstream's provisioner ClusterRole does), the same changes as updates
/// ([`controller_kit::patch`]). One per controller, so a refused patch is tried once.
pub struct Writes {
    client: kube::Client,
    claims: UpdateFallback,
    snapshots: UpdateFallback,
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("claims", &self.claims)
            .field("snapshots", &self.snapshots)
            .finish_non_exhaustive()
    }
}

impl Writes {
    /// Writes through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            claims: UpdateFallback::default(),
            snapshots: UpdateFallback::default(),
        }
    }

    /// Changes `pvc` by `patch`.
    pub async fn claim_of(
        &self,
        pvc: &PersistentVolumeClaim,
        kind: PatchKind,
        patch: &Value,
        action: &str,
    ) -> Result<(), Error> {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        self.claim(ns, name, kind, patch, action).await
    }

    /// Changes the claim `ns/name` by `patch`.
    pub async fn claim(
        &self,
        ns: &str,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        action: &str,
    ) -> Result<(), Error> {
        let api = Api::namespaced_with(
            self.client.clone(),
            ns,
            &ApiResource::erase::<PersistentVolumeClaim>(&()),
        );
        change(&api, name, kind, patch, &self.claims, action).await
    }

    /// Changes the VolumeSnapshot `ns/name` by the merge patch `patch`.
    pub async fn snapshot(
        &self,
        ns: &str,
        name: &str,
        patch: &Value,
        action: &str,
    ) -> Result<(), Error> {
        let api = snapshot_api(
            &self.client,
            Some(ns),
            crate::constants::SNAPSHOT_KIND,
            "volumesnapshots",
        );
        change(&api, name, PatchKind::Merge, patch, &self.snapshots, action).await
    }
}

async fn change(
    api: &Api<DynamicObject>,
    name: &str,
    kind: PatchKind,
    patch: &Value,
    fallback: &UpdateFallback,
    action: &str,
) -> Result<(), Error> {
    patch_or_update(
        api,
        name,
        kind,
        patch,
        fallback,
        controller_kit::api::DEFAULT_API_TIMEOUT,
    )
    .await
    .map_err(|source| Error::Api {
        action: action.into(),
        source,
    })
}

/// The Event reference of a claim.
pub fn pvc_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    crate::pv::claim_ref(pvc)
}

/// The Event reference of a PV.
pub fn pv_ref(pv: &PersistentVolume) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: pv.metadata.name.clone(),
        uid: pv.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}
