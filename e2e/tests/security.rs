//! Secrets never leak (issue 15, item 7): a unique value is planted in the Secret every CSI call
//! of a driver needs (csi-mock refuses CreateVolume, DeleteVolume, ControllerPublish/Unpublish,
//! ControllerExpand and Create/DeleteSnapshot without it), a volume goes through its whole life
//! (provisioned, attached, expanded, snapshotted, detached, deleted) with every controller of
//! ours at trace logging, and a claim whose secret is missing fails. Then the value, plain and in
//! base64, is searched for in the manager's log, every Event of the cluster, the metrics, the
//! debug views and health pages, and the objects the controllers wrote (claim, PV, attachment,
//! snapshot, content, the intent journal): it is found nowhere.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{OwnDriver, claim, clients, eventually};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Secret,
};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use snapshotter::types::{
    DeletionPolicy, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent,
};

/// Every secret key of a StorageClass a controller of ours reads, pointing at `<ns>/creds`.
fn secret_parameters(ns: &str) -> BTreeMap<String, String> {
    [
        "provisioner",
        "controller-publish",
        "controller-expand",
        "node-publish",
    ]
    .into_iter()
    .flat_map(|kind| {
        [
            (
                format!("csi.storage.k8s.io/{kind}-secret-name"),
                "creds".to_string(),
            ),
            (
                format!("csi.storage.k8s.io/{kind}-secret-namespace"),
                ns.to_string(),
            ),
        ]
    })
    .collect()
}

#[tokio::test]
async fn a_planted_secret_appears_in_no_log_event_metric_status_or_object() {
    let planted = format!("planted-{}", e2e::unique("secret"));
    let port = e2e::free_port();
    let http = format!("--http-endpoint=127.0.0.1:{port}");
    let value = planted.clone();
    let mut own = OwnDriver::start(
        "security",
        move |c| {
            c.required_secrets = [("password".to_string(), value)].into();
            c.secrets_on_every_call = true;
        },
        &[
            "--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller",
            "--v=6",
            "--retry-interval-start=500ms",
            "--retry-interval-max=5s",
            &http,
        ],
    )
    .await;
    let ns = own.name.clone();
    let c = clients().await;
    let secrets: Api<Secret> = Api::namespaced(c.main.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("creds".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "password".to_string(),
                    ByteString(planted.clone().into_bytes()),
                )])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let classes: Api<StorageClass> = Api::all(c.main.clone());
    own.create_class(&ns, secret_parameters(&ns)).await;
    // A class whose secret does not exist: provisioning fails with an Event naming the Secret.
    let missing = format!("{ns}-missing");
    let mut params = secret_parameters(&ns);
    params.insert(
        "csi.storage.k8s.io/provisioner-secret-name".into(),
        "no-such-creds".into(),
    );
    own.create_class(&missing, params).await;
    let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(c.main.clone());
    snapshot_classes
        .create(
            &PostParams::default(),
            &VolumeSnapshotClass {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                driver: own.driver_name.clone(),
                parameters: Some(
                    [
                        ("csi.storage.k8s.io/snapshotter-secret-name", "creds"),
                        (
                            "csi.storage.k8s.io/snapshotter-secret-namespace",
                            ns.as_str(),
                        ),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                deletion_policy: DeletionPolicy::Delete,
            },
        )
        .await
        .unwrap();
    let marks = e2e::mark_nodes(&own.driver_name, &format!("{ns}/zone"), |_| "z".into()).await;
    let node = marks.zones[0].0.clone();

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    let vas: Api<VolumeAttachment> = Api::all(c.main.clone());
    let snapshots: Api<VolumeSnapshot> = Api::namespaced(c.main.clone(), &ns);
    let contents: Api<VolumeSnapshotContent> = Api::all(c.main.clone());
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, text: String| seen.push((what.to_string(), text));

    // Provisioned (the driver refuses CreateVolume without the secret).
    pvcs.create(&PostParams::default(), &claim("data", &ns, "1Gi"))
        .await
        .unwrap();
    pvcs.create(&PostParams::default(), &claim("nosecret", &missing, "1Gi"))
        .await
        .unwrap();
    let pv_name = eventually(
        "claim data to be Bound",
        Duration::from_secs(60),
        || async {
            let pvc = pvcs.get("data").await.ok()?;
            (pvc.status?.phase.as_deref() == Some("Bound")).then_some(pvc.spec?.volume_name?)
        },
    )
    .await;
    let handle = pvs
        .get(&pv_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .csi
        .unwrap()
        .volume_handle;

    // Attached (ControllerPublish needs the secret too).
    let va_name = format!("{ns}-va");
    vas.create(
        &PostParams::default(),
        &e2e::volume_attachment(&va_name, &own.driver_name, &node, &pv_name),
    )
    .await
    .unwrap();
    let va = eventually("the attachment", Duration::from_secs(60), || async {
        let va = vas.get(&va_name).await.ok()?;
        va.status.as_ref()?.attached.then_some(va)
    })
    .await;
    keep("VolumeAttachment", json(&va));

    // Expanded (ControllerExpandVolume needs it).
    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
    )
    .await
    .unwrap();
    let pv = eventually("the PV to grow to 2Gi", Duration::from_secs(60), || async {
        let pv = pvs.get(&pv_name).await.ok()?;
        (pv.spec.as_ref()?.capacity.as_ref()?.get("storage") == Some(&Quantity("2Gi".into())))
            .then_some(pv)
    })
    .await;
    keep("PersistentVolume", json(&pv));

    // Snapshotted (CreateSnapshot needs it).
    snapshots
        .create(
            &PostParams::default(),
            &e2e::volume_snapshot("snap", "data", Some(&ns)),
        )
        .await
        .unwrap();
    let vs = eventually(
        "the snapshot to be ready",
        Duration::from_secs(60),
        || async {
            let vs = snapshots.get("snap").await.ok()?;
            vs.is_ready().then_some(vs)
        },
    )
    .await;
    let content = contents
        .get(vs.bound_content().expect("a bound content"))
        .await
        .unwrap();
    keep("VolumeSnapshot", json(&vs));
    keep("VolumeSnapshotContent", json(&content));
    keep(
        "PersistentVolumeClaim",
        json(&pvcs.get("data").await.unwrap()),
    );

    // The claim whose secret is missing is reported, by the Secret's name.
    let events: Api<Event> = Api::namespaced(c.main.clone(), &ns);
    eventually(
        "a ProvisioningFailed event naming the missing secret",
        Duration::from_secs(60),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ProvisioningFailed")
                        && e.message
                            .as_deref()
                            .is_some_and(|m| m.contains("no-such-creds"))
                })
                .then_some(())
        },
    )
    .await;
    keep(
        "PersistentVolumeClaim nosecret",
        json(&pvcs.get("nosecret").await.unwrap()),
    );
    let journal: Api<ConfigMap> = Api::namespaced(c.main.clone(), "default");
    for cm in journal
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|cm| {
            cm.metadata.name.as_deref().is_some_and(|n| {
                n.starts_with(&provisioner::journal::object_name(&own.driver_name))
            })
        })
    {
        keep("journal ConfigMap", json(&cm));
    }
    for path in [
        "/metrics",
        "/debug/queues",
        "/debug/intents",
        "/readyz?verbose",
        "/healthz?verbose",
    ] {
        seen.push((path.to_string(), e2e::http_get(port, path).await));
    }

    // Everything undone (DeleteSnapshot, ControllerUnpublish, DeleteVolume need it as well).
    snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    e2e::until_gone(&snapshots, "snap", Duration::from_secs(60)).await;
    vas.delete(&va_name, &DeleteParams::default())
        .await
        .unwrap();
    e2e::until_gone(&vas, &va_name, Duration::from_secs(60)).await;
    pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    e2e::until_gone(&pvs, &pv_name, Duration::from_secs(60)).await;
    let state = own.driver.state();
    assert!(
        state.volumes.is_empty() && state.snapshots.is_empty(),
        "the driver still holds {:?} / {:?}",
        state.volumes.keys(),
        state.snapshots.keys()
    );
    assert!(!handle.is_empty());

    let all_events: Api<Event> = Api::all(c.main.clone());
    for e in all_events.list(&ListParams::default()).await.unwrap().items {
        seen.push(("Event".into(), json(&e)));
    }
    own.manager.kill().await;
    let log = std::fs::read_to_string(&own.manager.log).expect("the manager's log");
    assert!(
        log.lines().count() > 100,
        "trace logging was on: {} lines",
        log.lines().count()
    );
    seen.push(("the manager's log".into(), log));

    // The value as a Secret's data carries it (base64).
    let encoded = json(&ByteString(planted.clone().into_bytes()))
        .trim_matches('"')
        .to_string();
    let leaks: Vec<&str> = seen
        .iter()
        .filter(|(_, text)| text.contains(&planted) || text.contains(&encoded))
        .map(|(what, _)| what.as_str())
        .collect();
    assert!(
        leaks.is_empty(),
        "the planted secret leaked into: {leaks:?}"
    );
    eprintln!(
        "searched {} sources ({} bytes) for the planted secret: not found",
        seen.len(),
        seen.iter().map(|(_, t)| t.len()).sum::<usize>()
    );

    marks.remove().await;
    for name in [&ns, &missing] {
        let _ = classes.delete(name, &DeleteParams::default()).await;
    }
    let _ = snapshot_classes.delete(&ns, &DeleteParams::default()).await;
    own.stop().await;
}

/// An object of any kind as JSON text, to search.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("an object serializes")
}
