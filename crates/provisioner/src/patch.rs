//! Every patch the provisioner sends, built as pure values so that tests compare them byte for
//! byte.
//!
//! Two styles, on purpose:
//! - strategic-merge patches that name the object's UID, so a recreated object of the same name is
//!   never patched by mistake (the API server answers 409 when the UID differs); finalizers are
//!   added with the list-merge and removed with `$deleteFromPrimitiveList`, so other controllers'
//!   finalizers are never touched;
//! - merge patches carrying the `resourceVersion` where a whole value is replaced (the
//!   snapshot-as-source finalizer list of a custom resource, which has no strategic merge) or where
//!   only one writer may win (node deployment's claim on `selected-node`).

use serde_json::{Value, json};

use crate::constants::{
    ANN_SELECTED_NODE, ANN_VOLUME_INTENT, FINALIZER_CLONE_PROTECTION, FINALIZER_PV,
    FINALIZER_SNAPSHOT_SOURCE_PROTECTION, FINALIZER_VOLUME_INTENT,
};

/// Strategic merge: removes `volume.kubernetes.io/selected-node` (upstream's rescheduling).
pub fn unselect_node(uid: Option<&str>) -> Value {
    json!({"metadata": {
        "uid": uid,
        "annotations": {ANN_SELECTED_NODE: null},
    }})
}

/// Merge patch, conditioned on `resource_version`: node deployment sets `selected-node` to its
/// own node; of several nodes racing, one wins and the others get 409.
pub fn select_node(resource_version: Option<&str>, node: &str) -> Value {
    json!({"metadata": {
        "resourceVersion": resource_version,
        "annotations": {ANN_SELECTED_NODE: node},
    }})
}

/// Strategic merge: removes the intent finalizer and annotation an earlier version put on a claim.
pub fn strip_intent(uid: Option<&str>) -> Value {
    json!({"metadata": {
        "uid": uid,
        "$deleteFromPrimitiveList/finalizers": [FINALIZER_VOLUME_INTENT],
        "annotations": {ANN_VOLUME_INTENT: null},
    }})
}

/// Strategic merge: adds the cloning-protection finalizer to a clone's source claim (upstream
/// `setCloneFinalizer`; the list merges, so others' finalizers stay).
pub fn add_clone_protection() -> Value {
    json!({"metadata": {"finalizers": [FINALIZER_CLONE_PROTECTION]}})
}

/// Strategic merge: removes the cloning-protection finalizer from the claim with `uid`.
pub fn remove_clone_protection(uid: Option<&str>) -> Value {
    json!({"metadata": {
        "uid": uid,
        "$deleteFromPrimitiveList/finalizers": [FINALIZER_CLONE_PROTECTION],
    }})
}

/// Strategic merge: adds (`add`) or removes the provisioner's finalizer on the PV with `uid`.
pub fn pv_finalizer(uid: Option<&str>, add: bool) -> Value {
    let list = if add {
        "finalizers"
    } else {
        "$deleteFromPrimitiveList/finalizers"
    };
    json!({"metadata": {"uid": uid, list: [FINALIZER_PV]}})
}

/// Merge patch putting the snapshot-as-source finalizer on a VolumeSnapshot whose finalizers are
/// `existing` (`on`), or taking it off; `None` if it is so already. A merge patch replaces the
/// whole list, so it carries `resource_version`: a snapshot changed meanwhile answers 409 and no
/// other finalizer is lost.
pub fn snapshot_source_protection(
    existing: &[String],
    resource_version: Option<&str>,
    on: bool,
) -> Option<Value> {
    let has = existing
        .iter()
        .any(|f| f == FINALIZER_SNAPSHOT_SOURCE_PROTECTION);
    if has == on {
        return None;
    }
    let mut finalizers: Vec<&str> = existing
        .iter()
        .map(String::as_str)
        .filter(|f| *f != FINALIZER_SNAPSHOT_SOURCE_PROTECTION)
        .collect();
    if on {
        finalizers.push(FINALIZER_SNAPSHOT_SOURCE_PROTECTION);
    }
    Some(json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": resource_version,
    }}))
}

#[cfg(test)]
mod tests;
