//! Patches where RBAC allows them, else the same change as an update, as the Go sidecars make it.
//!
//! Upstream's ClusterRoles grant some resources `update` but not `patch` (the provisioner's
//! PersistentVolumeClaims and VolumeSnapshots): the Go sidecars read, modify and `Update`. We
//! prefer targeted patches (no lost update of fields we do not know), so [`patch_or_update`] sends
//! the patch, and only if the API server answers 403 does it fall back, for that resource and
//! from then on, to a GET, the patch applied locally ([`apply`]), and a PUT conditioned on the
//! resourceVersion read. The object is handled as a [`DynamicObject`], so fields this build does
//! not know survive the round trip.
//!
//! # Invariants
//! - A fallback update never overwrites a change it did not read: the PUT carries the
//!   resourceVersion of the GET, and a conflict is returned to the caller (who retries).
//! - Preconditions in the patch hold in both modes: a `metadata.uid` or `metadata.resourceVersion`
//!   in the patch must match the object read, else the update is not sent and the answer is 409,
//!   as the API server would answer the patch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Map, Value};

use crate::api::{ApiError, call};

/// How a patch merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386 JSON merge patch.
    Merge,
    /// Kubernetes strategic merge patch (see [`apply`] for what is supported locally).
    Strategic,
}

/// Lists of primitives a strategic merge patch merges (union) instead of replacing, among those
/// controllers patch: `metadata.finalizers` has `patchStrategy: merge`.
const MERGED_PRIMITIVE_LISTS: &[&str] = &["finalizers"];

/// A patch's precondition that the object does not meet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("precondition failed: {0}")]
pub struct PreconditionFailed(pub String);

/// Applies `patch` to `target` as the API server would, for the patches controllers send:
/// - [`PatchKind::Merge`]: RFC 7386;
/// - [`PatchKind::Strategic`]: RFC 7386, except that `$deleteFromPrimitiveList/<key>` removes
///   values from the list `<key>`, the lists of [`MERGED_PRIMITIVE_LISTS`] are merged (each value
///   once, in order), and other `$` directives are ignored (lists of objects are replaced, never
///   merged by key).
///
/// A `metadata.uid` or `metadata.resourceVersion` in the patch is a precondition on `target`.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), PreconditionFailed> {
    for field in ["uid", "resourceVersion"] {
        let pointer = format!("/metadata/{field}");
        if let Some(want) = patch.pointer(&pointer).and_then(Value::as_str)
            && target.pointer(&pointer).and_then(Value::as_str) != Some(want)
        {
            return Err(PreconditionFailed(format!(
                "{field} in the patch is {want}, the object's differs"
            )));
        }
    }
    match kind {
        PatchKind::Merge => merge(target, patch),
        PatchKind::Strategic => strategic(target, patch),
    }
    Ok(())
}

/// The RFC 7386 merge patch that turns `old` into `new`, as Go's `jsonpatch.CreateMergePatch`
/// builds it: objects are compared key by key, recursively, and a key gone from `new` is sent as
/// `null` at whatever depth (so a removed `attachmentMetadata` key or `errorCode` is removed on the
/// server, not kept); anything else that differs is sent whole. `None` when nothing differs.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut diff = Map::new();
            for (k, v) in new {
                match old.get(k) {
                    Some(o) => {
                        if let Some(d) = merge_diff(o, v) {
                            diff.insert(k.clone(), d);
                        }
                    }
                    None => {
                        diff.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                diff.insert(k.clone(), Value::Null);
            }
            (!diff.is_empty()).then_some(Value::Object(diff))
        }
        _ => (old != new).then(|| new.clone()),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = object(target);
    for (key, value) in patch {
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Value::Array(drop)) = (target.get_mut(list), value) {
                have.retain(|v| !drop.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Array(add) if MERGED_PRIMITIVE_LISTS.contains(&key.as_str()) => {
                match target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(have) => {
                        for v in add {
                            if !have.contains(v) {
                                have.push(v.clone());
                            }
                        }
                    }
                    other => *other = value.clone(),
                }
            }
            Value::Object(_) => {
                strategic(target.entry(key.clone()).or_insert(Value::Null), value);
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// `v` as an object, replacing anything else with an empty one.
fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// Whether patches of one resource type were refused (403) and changes go as updates now.
/// One per resource type and controller; starts by patching.
#[derive(Debug, Default)]
pub struct UpdateFallback {
    update_only: AtomicBool,
}

impl UpdateFallback {
    /// Whether changes go as updates.
    pub fn active(&self) -> bool {
        self.update_only.load(Ordering::Relaxed)
    }
}

/// Sends `patch` to the object `name` of `api`, or, once the API server refused a patch of this
/// resource (403), the same change as GET + local [`apply`] + PUT (see the module docs).
pub async fn patch_or_update(
    api: &Api<DynamicObject>,
    name: &str,
    kind: PatchKind,
    patch: &Value,
    fallback: &UpdateFallback,
    timeout: Duration,
) -> Result<(), ApiError> {
    if !fallback.active() {
        let params = PatchParams::default();
        let sent = match kind {
            PatchKind::Merge => call(timeout, api.patch(name, &params, &Patch::Merge(patch))).await,
            PatchKind::Strategic => {
                call(timeout, api.patch(name, &params, &Patch::Strategic(patch))).await
            }
        };
        match sent {
            Err(e) if e.is_forbidden() => {
                if !fallback.update_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(object = name, error = %e, "patch refused; sending changes of this resource as updates (get, then replace), as the Go sidecars do");
                }
            }
            other => return other.map(drop),
        }
    }
    let current = call(timeout, api.get(name)).await?;
    let mut value =
        serde_json::to_value(&current).map_err(|e| ApiError::from(kube::Error::SerdeError(e)))?;
    if let Err(e) = apply(kind, &mut value, patch) {
        let status = kube::core::Status::failure(&e.to_string(), "Conflict").with_code(409);
        return Err(ApiError::from(kube::Error::Api(status.boxed())));
    }
    let updated: DynamicObject =
        serde_json::from_value(value).map_err(|e| ApiError::from(kube::Error::SerdeError(e)))?;
    call(timeout, api.replace(name, &PostParams::default(), &updated))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests;
