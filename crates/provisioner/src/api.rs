//! The provisioner's door to the API server: every call through [`call_api`] (the kit's
//! timeout, an error naming what we were doing), and the typed and dynamic APIs it writes to.
//! The act layer (`controller`), the journal and capacity tracking all call the API from here,
//! so none of them imports from another.

use std::future::Future;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

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
