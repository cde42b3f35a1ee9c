//! The patches external-attacher sends, built as pure values so that tests can compare them
//! byte for byte with upstream's (`pkg/controller/util.go`, `csi_handler.go`).
//!
//! Three styles, on purpose (reference detail 2):
//! - PV finalizers: RFC 6902 JSON patch with `test` ops, so a stale cache never re-adds or drops
//!   finalizers that other controllers changed;
//! - VA finalizer + node-id annotation: RFC 7386 merge patch on the main resource;
//! - VA status: merge patch on `/status`.
//!
//! None carries a resourceVersion.

use std::collections::BTreeMap;

use controller_kit::patch::merge_diff;
use k8s_openapi::api::storage::v1::{VolumeAttachment, VolumeAttachmentStatus};
use serde_json::{Map, Value, json};

use crate::constants::NODE_ID_ANNOTATION;

/// JSON patch adding `finalizer` to a PV whose cached finalizers are `existing`
/// (`addFinalizerPatch`): three variants for absent, empty and non-empty lists.
pub fn add_pv_finalizer(existing: Option<&[String]>, finalizer: &str) -> Value {
    match existing {
        None => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ]),
        Some([]) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": []},
            {"op": "replace", "path": "/metadata/finalizers", "value": [finalizer]},
        ]),
        Some(_) => json!([
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ]),
    }
}

/// JSON patch removing `finalizer` by its index in the cached list, after a `test` of that
/// index (`removeFinalizerPatch`); `None` if it is not in the list.
pub fn remove_pv_finalizer(existing: &[String], finalizer: &str) -> Option<Value> {
    let i = existing.iter().position(|f| f == finalizer)?;
    let path = format!("/metadata/finalizers/{i}");
    Some(json!([
        {"op": "test", "path": path, "value": finalizer},
        {"op": "remove", "path": path},
    ]))
}

/// Merge patch adding the VA finalizer and/or setting the node-id annotation
/// (`prepareVAFinalizer` + `prepareVANodeID` + `createMergePatch`); `None` if both are in place.
///
/// As upstream's merge patch, it replaces the whole `finalizers` list with the cached one plus
/// ours.
pub fn va_metadata(va: &VolumeAttachment, finalizer: &str, node_id: &str) -> Option<Value> {
    let mut metadata = Map::new();
    let annotated = va
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ID_ANNOTATION))
        .is_some_and(|id| id == node_id);
    if !annotated {
        metadata.insert("annotations".into(), json!({ NODE_ID_ANNOTATION: node_id }));
    }
    let finalizers = va.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        let mut all = finalizers;
        all.push(finalizer.to_string());
        metadata.insert("finalizers".into(), json!(all));
    }
    (!metadata.is_empty()).then(|| json!({ "metadata": metadata }))
}

/// Merge patch removing the VA finalizer (first half of `markAsDetached`); `None` if absent.
/// An emptied list is sent as `null`, as upstream does.
pub fn remove_va_finalizer(va: &VolumeAttachment, finalizer: &str) -> Option<Value> {
    let finalizers = va.metadata.finalizers.as_deref().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        return None;
    }
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
    let value = if rest.is_empty() {
        Value::Null
    } else {
        json!(rest)
    };
    Some(json!({ "metadata": { "finalizers": value } }))
}

fn status_of(va: &VolumeAttachment) -> VolumeAttachmentStatus {
    va.status.clone().unwrap_or_default()
}

/// A merge patch from the status `old` to `new` (what Go's `createMergePatch` of two
/// VolumeAttachments yields). `{}` when nothing differs; upstream sends it all the same.
fn status_diff(old: &VolumeAttachmentStatus, new: &VolumeAttachmentStatus) -> Value {
    let to_value = |s: &VolumeAttachmentStatus| serde_json::to_value(s).unwrap_or(Value::Null);
    match merge_diff(&to_value(old), &to_value(new)) {
        Some(diff) => json!({ "status": diff }),
        None => json!({}),
    }
}

/// `/status` merge patch after a successful publish (`markAsAttached`): attached, the publish
/// context as attachment metadata (absent when empty), no attach error.
pub fn mark_attached(va: &VolumeAttachment, metadata: BTreeMap<String, String>) -> Value {
    let old = status_of(va);
    let mut new = old.clone();
    new.attached = true;
    new.attachment_metadata = (!metadata.is_empty()).then_some(metadata);
    new.attach_error = None;
    status_diff(&old, &new)
}

/// `/status` merge patch after a successful unpublish (second half of `markAsDetached`).
pub fn mark_detached(va: &VolumeAttachment) -> Value {
    let old = status_of(va);
    let mut new = old.clone();
    new.attached = false;
    new.detach_error = None;
    new.attachment_metadata = None;
    status_diff(&old, &new)
}

/// A `VolumeError` as upstream writes it. `time` is RFC 3339 with second precision, as
/// `metav1.Time` marshals.
pub fn volume_error(message: &str, code: Option<i32>, time: jiff::Timestamp) -> Value {
    let time = time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut e = json!({ "message": message, "time": time });
    if let Some(code) = code {
        e["errorCode"] = json!(code);
    }
    e
}

/// `/status` merge patch from `va`'s status to one with `field` set to `error`.
fn status_error(va: &VolumeAttachment, field: &str, error: Value) -> Value {
    let old = serde_json::to_value(status_of(va)).unwrap_or_else(|_| json!({}));
    let mut new = old.clone();
    if let Value::Object(m) = &mut new {
        m.insert(field.to_string(), error);
    }
    match merge_diff(&old, &new) {
        Some(diff) => json!({ "status": diff }),
        None => json!({}),
    }
}

/// `/status` merge patch saving an attach error (`saveAttachError`): the diff from `va`'s
/// status, so an `errorCode` the new error lacks is removed (`null`).
pub fn attach_error(va: &VolumeAttachment, error: Value) -> Value {
    status_error(va, "attachError", error)
}

/// `/status` merge patch saving a detach error (`saveDetachError`), as [`attach_error`].
pub fn detach_error(va: &VolumeAttachment, error: Value) -> Value {
    status_error(va, "detachError", error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::storage::v1::VolumeError;

    const FIN: &str = "external-attacher/hostpath-csi-k8s-io";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn pv_finalizer_patches_are_upstreams_bytes() {
        assert_eq!(
            add_pv_finalizer(None, FIN).to_string(),
            r#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["external-attacher/hostpath-csi-k8s-io"]}]"#
        );
        assert_eq!(
            add_pv_finalizer(Some(&[]), FIN).to_string(),
            r#"[{"op":"test","path":"/metadata/finalizers","value":[]},{"op":"replace","path":"/metadata/finalizers","value":["external-attacher/hostpath-csi-k8s-io"]}]"#
        );
        assert_eq!(
            add_pv_finalizer(Some(&s(&["kubernetes.io/pv-protection"])), FIN).to_string(),
            r#"[{"op":"add","path":"/metadata/finalizers/-","value":"external-attacher/hostpath-csi-k8s-io"}]"#
        );
        assert_eq!(
            remove_pv_finalizer(&s(&["kubernetes.io/pv-protection", FIN]), FIN)
                .unwrap()
                .to_string(),
            r#"[{"op":"test","path":"/metadata/finalizers/1","value":"external-attacher/hostpath-csi-k8s-io"},{"op":"remove","path":"/metadata/finalizers/1"}]"#
        );
        assert_eq!(remove_pv_finalizer(&s(&["x"]), FIN), None);
    }

    fn va(finalizers: Option<&[&str]>, node_id: Option<&str>) -> VolumeAttachment {
        let mut va = VolumeAttachment::default();
        va.metadata.finalizers = finalizers.map(s);
        va.metadata.annotations =
            node_id.map(|id| BTreeMap::from([(NODE_ID_ANNOTATION.to_string(), id.to_string())]));
        va
    }

    #[test]
    fn va_metadata_patch_adds_only_what_is_missing() {
        assert_eq!(
            va_metadata(&va(None, None), FIN, "n1").unwrap().to_string(),
            r#"{"metadata":{"annotations":{"csi.alpha.kubernetes.io/node-id":"n1"},"finalizers":["external-attacher/hostpath-csi-k8s-io"]}}"#
        );
        assert_eq!(
            va_metadata(&va(Some(&["other"]), Some("n1")), FIN, "n1")
                .unwrap()
                .to_string(),
            r#"{"metadata":{"finalizers":["other","external-attacher/hostpath-csi-k8s-io"]}}"#
        );
        assert_eq!(
            va_metadata(&va(Some(&[FIN]), Some("old")), FIN, "n1")
                .unwrap()
                .to_string(),
            r#"{"metadata":{"annotations":{"csi.alpha.kubernetes.io/node-id":"n1"}}}"#
        );
        assert_eq!(va_metadata(&va(Some(&[FIN]), Some("n1")), FIN, "n1"), None);
    }

    #[test]
    fn va_finalizer_removal() {
        assert_eq!(
            remove_va_finalizer(&va(Some(&[FIN]), None), FIN)
                .unwrap()
                .to_string(),
            r#"{"metadata":{"finalizers":null}}"#
        );
        assert_eq!(
            remove_va_finalizer(&va(Some(&["a", FIN]), None), FIN)
                .unwrap()
                .to_string(),
            r#"{"metadata":{"finalizers":["a"]}}"#
        );
        assert_eq!(remove_va_finalizer(&va(Some(&["a"]), None), FIN), None);
    }

    #[test]
    fn status_patches() {
        let mut v = va(None, None);
        v.status = Some(VolumeAttachmentStatus {
            attached: false,
            attach_error: Some(VolumeError {
                message: Some("boom".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            mark_attached(&v, BTreeMap::from([("k".into(), "v".into())])).to_string(),
            r#"{"status":{"attachError":null,"attached":true,"attachmentMetadata":{"k":"v"}}}"#
        );
        v.status = Some(VolumeAttachmentStatus {
            attached: true,
            attachment_metadata: Some(BTreeMap::from([("k".into(), "v".into())])),
            ..Default::default()
        });
        assert_eq!(
            mark_attached(&v, BTreeMap::from([("k".into(), "v".into())])).to_string(),
            "{}"
        );
        assert_eq!(
            mark_detached(&v).to_string(),
            r#"{"status":{"attached":false,"attachmentMetadata":null}}"#
        );
        let t: jiff::Timestamp = "2024-05-06T07:08:09.5Z".parse().unwrap();
        let fresh = va(None, None);
        let full = attach_error(
            &fresh,
            volume_error(
                "rpc error: code = ResourceExhausted desc = full",
                Some(8),
                t,
            ),
        );
        assert_eq!(
            full.to_string(),
            r#"{"status":{"attachError":{"errorCode":8,"message":"rpc error: code = ResourceExhausted desc = full","time":"2024-05-06T07:08:09Z"}}}"#
        );
        assert_eq!(
            detach_error(&fresh, volume_error("x", None, t)).to_string(),
            r#"{"status":{"detachError":{"message":"x","time":"2024-05-06T07:08:09Z"}}}"#
        );
    }

    /// The status after a server applied `patch` (RFC 7386) to `va`'s.
    fn patched(va: &VolumeAttachment, patch: &Value) -> Value {
        let mut status = serde_json::to_value(va.status.clone().unwrap_or_default()).unwrap();
        fn apply(target: &mut Value, patch: &Value) {
            match (target, patch) {
                (Value::Object(t), Value::Object(p)) => {
                    for (k, v) in p {
                        if v.is_null() {
                            t.remove(k);
                        } else {
                            apply(t.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
                (t, p) => *t = p.clone(),
            }
        }
        if let Some(p) = patch.get("status") {
            apply(&mut status, p);
        }
        status
    }

    /// Issue 10, item 4: nested keys that are gone must be sent as `null`, as Go's
    /// `CreateMergePatch` does, or the server keeps them.
    #[test]
    fn status_patches_remove_stale_nested_keys() {
        let t: jiff::Timestamp = "2024-05-06T07:08:09Z".parse().unwrap();
        let mut v = va(None, None);
        v.status = Some(VolumeAttachmentStatus {
            attached: false,
            attach_error: Some(VolumeError {
                error_code: Some(8),
                message: Some("full".into()),
                time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)),
            }),
            ..Default::default()
        });
        let patch = attach_error(&v, volume_error("not found", None, t));
        assert_eq!(
            patch.to_string(),
            r#"{"status":{"attachError":{"errorCode":null,"message":"not found"}}}"#
        );
        assert_eq!(
            patched(&v, &patch)["attachError"],
            json!({"message": "not found", "time": "2024-05-06T07:08:09Z"}),
            "no stale errorCode"
        );

        v.status = Some(VolumeAttachmentStatus {
            attached: true,
            attachment_metadata: Some(BTreeMap::from([
                ("old".into(), "1".into()),
                ("kept".into(), "2".into()),
            ])),
            ..Default::default()
        });
        let patch = mark_attached(&v, BTreeMap::from([("kept".into(), "2".into())]));
        assert_eq!(
            patch.to_string(),
            r#"{"status":{"attachmentMetadata":{"old":null}}}"#
        );
        assert_eq!(
            patched(&v, &patch)["attachmentMetadata"],
            json!({"kept": "2"}),
            "no stale publish_context key"
        );
    }
}
