//! Tests of the fake API server, through a real kube client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::WatchParams;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::WatchEvent;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{Change, Informers};

fn cm(ns: &str, name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(status) => status,
        other => panic!("expected a Status, got {other}"),
    }
}

/// Waits (up to 10 s) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn create_get_replace_and_not_found() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());

    let created = api
        .create(&PostParams::default(), &cm("default", "a", &[]))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.resource_version.as_deref(), Some("1"));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.uid.as_ref().map(String::len), Some(36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(api.get("a").await.unwrap(), created);

    let again = api
        .create(&PostParams::default(), &cm("default", "a", &[]))
        .await;
    let status = api_error(again.unwrap_err());
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    let status = api_error(api.get("x").await.unwrap_err());
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    assert_eq!(status.message, r#"configmaps "x" not found"#);
    let details = status.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("x", "configmaps")
    );

    // generateName.
    let mut template = cm("default", "", &[]);
    template.metadata.name = None;
    template.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&PostParams::default(), &template).await.unwrap();
    let name = generated.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    // PUT: a new resourceVersion, then a conflict on the stale one.
    let mut changed = created.clone();
    changed.data = Some([("k".to_owned(), "v".to_owned())].into());
    let replaced = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.resource_version.as_deref(), Some("3"));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    assert_eq!(replaced.metadata.generation, Some(2), "data changed");
    let stale = api.replace("a", &PostParams::default(), &changed).await;
    assert_eq!(api_error(stale.unwrap_err()).reason, "Conflict");
    assert_eq!(
        server.get::<ConfigMap>(Some("default"), "a"),
        Some(replaced)
    );
}

#[tokio::test]
async fn merge_patch_merges_and_checks_the_resource_version() {
    let server = FakeApiServer::start().await;
    server.insert(&cm("ns", "a", &[("app", "x"), ("tier", "db")]));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");

    let patch = json!({"metadata": {"labels": {"tier": null, "new": "y"}}, "data": {"k": "v"}});
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(labels.len(), 2);
    assert_eq!((labels["app"].as_str(), labels["new"].as_str()), ("x", "y"));
    assert_eq!(patched.metadata.resource_version.as_deref(), Some("2"));

    let stale = json!({"metadata": {"resourceVersion": "1"}, "data": {"k": "w"}});
    let e = api
        .patch("a", &PatchParams::default(), &Patch::Strategic(&stale))
        .await
        .unwrap_err();
    assert_eq!(api_error(e).code, 409);
    let missing = api
        .patch("nope", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    assert_eq!(api_error(missing.unwrap_err()).code, 404);

    let recorded = server.requests_matching("PATCH", "/configmaps/a");
    assert_eq!(recorded.len(), 2);
    assert_eq!(
        recorded[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(recorded[0].body.as_ref(), Some(&patch));
    assert_eq!((recorded[0].status, recorded[1].status), (200, 409));
}

#[tokio::test]
async fn json_patch_with_a_failing_test_is_invalid() {
    let server = FakeApiServer::start().await;
    server.insert(&cm("ns", "a", &[("app", "x")]));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/app", "value": "other"},
        {"op": "add", "path": "/data", "value": {"k": "v"}},
    ]))
    .unwrap();
    let e = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap_err();
    let status = api_error(e);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let stored = server.get::<ConfigMap>(Some("ns"), "a").unwrap();
    assert_eq!(stored.data, None, "nothing applied");
    assert_eq!(stored.metadata.resource_version.as_deref(), Some("1"));

    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/app", "value": "x"},
        {"op": "add", "path": "/data", "value": {"k": "v"}},
    ]))
    .unwrap();
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"], "v");
}

#[tokio::test]
async fn delete_waits_for_finalizers() {
    let server = FakeApiServer::start().await;
    let mut obj = cm("ns", "a", &[]);
    obj.metadata.finalizers = Some(vec!["example.com/f".into()]);
    let uid = server.insert(&obj).metadata.uid.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");

    let wrong_uid = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let e = api.delete("a", &wrong_uid).await.unwrap_err();
    assert_eq!(api_error(e).code, 409);

    let marked = api.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = marked.left().expect("the object, still there");
    let at = marked.metadata.deletion_timestamp.clone();
    assert!(at.is_some());
    assert_eq!(marked.metadata.uid.as_deref(), Some(uid.as_str()));
    // A second delete changes nothing.
    let again = api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(again.left().unwrap().metadata.deletion_timestamp, at);
    assert_eq!(server.resource_version(), 2);

    let patch = json!({"metadata": {"finalizers": null}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(server.get::<ConfigMap>(Some("ns"), "a").is_none(), "gone");
    let e = api.delete("a", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_error(e).code, 404);

    // Without finalizers, deleted at once.
    server.insert(&cm("ns", "b", &[]));
    api.delete("b", &DeleteParams::default()).await.unwrap();
    assert!(server.list::<ConfigMap>().is_empty());
}

#[tokio::test]
async fn strategic_merge_adds_and_deletes_finalizers_with_a_uid_precondition() {
    let server = FakeApiServer::start().await;
    let mut obj = cm("ns", "a", &[]);
    obj.metadata.finalizers = Some(vec!["a/one".into()]);
    let uid = server.insert(&obj).metadata.uid.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    let finalizers = |server: &FakeApiServer| {
        server
            .get::<ConfigMap>(Some("ns"), "a")
            .and_then(|c| c.metadata.finalizers)
            .unwrap_or_default()
    };

    let add = json!({"metadata": {"uid": uid, "finalizers": ["b/two"]}});
    api.patch("a", &PatchParams::default(), &Patch::Strategic(&add))
        .await
        .unwrap();
    assert_eq!(
        finalizers(&server),
        ["a/one", "b/two"],
        "merged, not replaced"
    );

    let stale = json!({"metadata": {"uid": "other", "finalizers": ["c/three"]}});
    let e = api
        .patch("a", &PatchParams::default(), &Patch::Strategic(&stale))
        .await
        .unwrap_err();
    assert_eq!(api_error(e).code, 409, "the uid is a precondition");

    let remove = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/one"]}});
    api.patch("a", &PatchParams::default(), &Patch::Strategic(&remove))
        .await
        .unwrap();
    assert_eq!(finalizers(&server), ["b/two"]);
}

#[tokio::test]
async fn lists_honour_selectors_and_namespaces() {
    let server = FakeApiServer::start().await;
    server.insert(&cm("ns1", "a", &[("app", "x")]));
    server.insert(&cm("ns1", "b", &[("app", "y")]));
    server.insert(&cm("ns2", "c", &[]));
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect()
    };
    let all: Api<ConfigMap> = Api::all(server.client());
    let ns1: Api<ConfigMap> = Api::namespaced(server.client(), "ns1");
    let lp = ListParams::default;

    let list = all.list(&lp()).await.unwrap();
    assert_eq!(list.metadata.resource_version.as_deref(), Some("3"));
    assert_eq!(list.types.kind, "ConfigMapList");
    assert_eq!(names(list), ["a", "b", "c"]);
    assert_eq!(names(ns1.list(&lp()).await.unwrap()), ["a", "b"]);
    assert_eq!(names(all.list(&lp().labels("app=x")).await.unwrap()), ["a"]);
    assert_eq!(
        names(all.list(&lp().labels("app!=x")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(
        names(all.list(&lp().labels("app")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(names(all.list(&lp().labels("!app")).await.unwrap()), ["c"]);
    assert_eq!(
        names(all.list(&lp().labels("app,app!=y")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(
            all.list(&lp().fields("metadata.namespace=ns2"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(ns1.list(&lp().fields("metadata.name=b")).await.unwrap()),
        ["b"]
    );
    let e = all.list(&lp().labels("app in (x,y)")).await.unwrap_err();
    assert_eq!(api_error(e).code, 400);
    assert_eq!(server.list::<ConfigMap>().len(), 3);
}

#[tokio::test]
async fn injected_faults_fail_requests_without_changing_state() {
    let server = FakeApiServer::start().await;
    server.insert(&cm("ns", "a", &[]));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    server.fail_next("put", "/configmaps/a", 1, 500);
    server.fail_next("*", "/configmaps", 1, 403);

    let current = api.get("a").await;
    let status = api_error(current.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    let current = api.get("a").await.unwrap();
    let e = api
        .replace("a", &PostParams::default(), &current)
        .await
        .unwrap_err();
    let status = api_error(e);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    assert_eq!(server.resource_version(), 1, "no change");
    let replaced = api
        .replace("a", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.resource_version.as_deref(), Some("2"));

    let statuses: Vec<(String, u16)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect();
    let expected = [("GET", 403), ("GET", 200), ("PUT", 500), ("PUT", 200)];
    assert_eq!(
        statuses,
        expected.map(|(m, s)| (m.to_owned(), s)),
        "every request recorded with its answer"
    );
    let writes: Vec<Request> = server
        .requests()
        .into_iter()
        .filter(|r| !r.is_read())
        .collect();
    assert_eq!(writes.len(), 2);
}

#[tokio::test]
async fn watches_replay_history_and_expire_after_compaction() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    server.insert(&cm("ns", "a", &[("app", "x")]));
    server.insert(&cm("other", "b", &[("app", "x")]));
    server.insert(&cm("ns", "a", &[("app", "y")]));
    server.remove::<ConfigMap>(Some("ns"), "a");

    let wp = WatchParams::default().timeout(1);
    let events: Vec<WatchEvent<ConfigMap>> = api
        .watch(&wp.clone().labels("app=x"), "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(events.is_empty(), "nothing matches now: {events:?}");
    let events: Vec<String> = api
        .watch(&wp.clone().labels("app=x"), "1")
        .await
        .unwrap()
        .map(|e| match e.unwrap() {
            WatchEvent::Added(o) => format!("added {}", o.metadata.resource_version.unwrap()),
            WatchEvent::Modified(o) => format!("modified {}", o.metadata.resource_version.unwrap()),
            WatchEvent::Deleted(o) => format!("deleted {}", o.metadata.resource_version.unwrap()),
            other => format!("{other:?}"),
        })
        .collect()
        .await;
    assert_eq!(
        events,
        ["deleted 3"],
        "a stops matching the selector at rv 3"
    );

    server.compact();
    let events: Vec<WatchEvent<ConfigMap>> = api
        .watch(&wp, "1")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match events.as_slice() {
        [WatchEvent::Error(status)] => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn an_informer_sees_seeded_created_and_deleted_objects() {
    let server = FakeApiServer::start().await;
    server.insert(&cm("default", "seeded", &[]));
    let client = server.client();
    let mut informers = Informers::new(client.clone());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let store = informers
        .for_type::<ConfigMap>()
        .on_change(move |change| {
            let what = match change {
                Change::Applied { .. } => "applied",
                Change::Deleted(_) => "deleted",
            };
            let name = change.object().metadata.name.clone().unwrap_or_default();
            log.lock().unwrap().push(format!("{what} {name}"));
        })
        .store();
    let token = CancellationToken::new();
    let running = informers.start(token.clone());
    let synced = tokio::time::timeout(Duration::from_secs(10), running.wait_synced()).await;
    assert_eq!(synced, Ok(true));
    assert_eq!(store.state().len(), 1);
    let has = |entry: &'static str| {
        let seen = seen.clone();
        move || seen.lock().unwrap().iter().any(|s| s == entry)
    };
    eventually("the seeded object is seen", has("applied seeded")).await;

    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("default", "later", &[]))
        .await
        .unwrap();
    eventually("the created object is seen", has("applied later")).await;
    api.delete("seeded", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deletion is seen", has("deleted seeded")).await;
    assert_eq!(store.state().len(), 1);

    token.cancel();
    running.join().await;
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.is_watch() && r.param("resourceVersion").as_deref() == Some("1")),
        "the watch resumed from the list's resourceVersion"
    );
}
