//! Local patch application, and the fallback to updates against the fake API server.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ObjectMeta;
use kube::core::ApiResource;
use serde_json::json;

use super::*;
use crate::testing::FakeApiServer;

#[test]
fn merge_and_strategic_patches_apply_as_the_api_server_does() {
    let object = json!({
        "metadata": {"uid": "u1", "resourceVersion": "7", "finalizers": ["a"],
                     "annotations": {"x": "1", "y": "2"}},
        "spec": {"list": [1, 2]},
    });

    let mut t = object.clone();
    apply(
        PatchKind::Merge,
        &mut t,
        &json!({"metadata": {"annotations": {"x": null, "z": "3"}, "finalizers": ["b"]},
                "spec": {"list": [3]}}),
    )
    .unwrap();
    assert_eq!(t["metadata"]["annotations"], json!({"y": "2", "z": "3"}));
    assert_eq!(
        t["metadata"]["finalizers"],
        json!(["b"]),
        "merge replaces lists"
    );
    assert_eq!(t["spec"]["list"], json!([3]));

    let mut t = object.clone();
    apply(
        PatchKind::Strategic,
        &mut t,
        &json!({"metadata": {"uid": "u1", "finalizers": ["b", "a"]}}),
    )
    .unwrap();
    assert_eq!(
        t["metadata"]["finalizers"],
        json!(["a", "b"]),
        "finalizers merge, each once"
    );
    apply(
        PatchKind::Strategic,
        &mut t,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"],
                             "annotations": {"y": null}}}),
    )
    .unwrap();
    assert_eq!(t["metadata"]["finalizers"], json!(["b"]));
    assert_eq!(t["metadata"]["annotations"], json!({"x": "1"}));
    assert!(
        t["metadata"]
            .get("$deleteFromPrimitiveList/finalizers")
            .is_none(),
        "directives are not stored"
    );
}

#[test]
fn a_uid_or_resource_version_in_the_patch_is_a_precondition() {
    let object = json!({"metadata": {"uid": "u1", "resourceVersion": "7"}});
    for patch in [
        json!({"metadata": {"uid": "u2", "labels": {"a": "b"}}}),
        json!({"metadata": {"resourceVersion": "6", "labels": {"a": "b"}}}),
    ] {
        let mut t = object.clone();
        assert!(apply(PatchKind::Strategic, &mut t, &patch).is_err());
        assert!(apply(PatchKind::Merge, &mut t, &patch).is_err());
        assert_eq!(t, object, "unchanged");
    }
    let mut t = object.clone();
    apply(
        PatchKind::Merge,
        &mut t,
        &json!({"metadata": {"uid": "u1", "resourceVersion": "7", "labels": {"a": "b"}}}),
    )
    .unwrap();
    assert_eq!(t["metadata"]["labels"], json!({"a": "b"}));
}

fn pvc(name: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            finalizers: Some(vec!["kubernetes.io/pvc-protection".into()]),
            ..ObjectMeta::default()
        },
        ..PersistentVolumeClaim::default()
    }
}

fn finalizers(server: &FakeApiServer) -> Vec<String> {
    server
        .get::<PersistentVolumeClaim>(Some("ns"), "c")
        .and_then(|p| p.metadata.finalizers)
        .unwrap_or_default()
}

/// Writes since the last look, as "METHOD status".
fn writes(server: &FakeApiServer) -> Vec<String> {
    let all = server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/persistentvolumeclaims/c"))
        .map(|r| format!("{} {}", r.method, r.status))
        .collect();
    server.clear_requests();
    all
}

#[tokio::test]
async fn a_refused_patch_is_sent_as_an_update_from_then_on() {
    let server = FakeApiServer::start().await;
    let uid = server.insert(&pvc("c")).metadata.uid.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(
        server.client(),
        "ns",
        &ApiResource::erase::<PersistentVolumeClaim>(&()),
    );
    let fallback = UpdateFallback::default();
    let timeout = Duration::from_secs(5);
    // An extra field this build may not know must survive an update.
    server.put_json(
        "/api/v1/namespaces/ns/persistentvolumeclaims",
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "c", "namespace": "ns", "uid": uid,
                         "finalizers": ["kubernetes.io/pvc-protection"]},
            "spec": {"futureField": {"k": "v"}},
        }),
    );
    server.clear_requests();

    // Patch allowed: one PATCH.
    let add = json!({"metadata": {"finalizers": ["example.com/a"]}});
    patch_or_update(&api, "c", PatchKind::Strategic, &add, &fallback, timeout)
        .await
        .unwrap();
    assert_eq!(writes(&server), ["PATCH 200"]);
    assert!(!fallback.active());

    // Patch refused (RBAC grants only update): the same change as GET + PUT.
    server.fail_next("PATCH", "/persistentvolumeclaims/c", 1, 403);
    let add = json!({"metadata": {"uid": uid, "finalizers": ["example.com/b"]}});
    patch_or_update(&api, "c", PatchKind::Strategic, &add, &fallback, timeout)
        .await
        .unwrap();
    assert_eq!(writes(&server), ["PATCH 403", "GET 200", "PUT 200"]);
    assert!(fallback.active());
    assert_eq!(
        finalizers(&server),
        [
            "kubernetes.io/pvc-protection",
            "example.com/a",
            "example.com/b"
        ]
    );
    let raw = server
        .get_json("/api/v1/namespaces/ns/persistentvolumeclaims/c")
        .unwrap();
    assert_eq!(
        raw["spec"]["futureField"],
        json!({"k": "v"}),
        "unknown fields kept"
    );

    // From then on no PATCH is tried.
    let remove = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]}});
    patch_or_update(&api, "c", PatchKind::Strategic, &remove, &fallback, timeout)
        .await
        .unwrap();
    assert_eq!(writes(&server), ["GET 200", "PUT 200"]);
    assert_eq!(
        finalizers(&server),
        ["kubernetes.io/pvc-protection", "example.com/b"]
    );

    // A precondition that fails is a conflict, and nothing is written.
    let stale = json!({"metadata": {"uid": "someone-else", "finalizers": ["example.com/c"]}});
    let e = patch_or_update(&api, "c", PatchKind::Strategic, &stale, &fallback, timeout)
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert_eq!(writes(&server), ["GET 200"]);
}
