//! Bad objects (issue 15, item 6): a table of malformed or hostile claims, classes,
//! attachments and snapshots, all created at once for one manager running every controller. Each
//! gets the Event or status message it should (naming what is wrong), the good objects beside
//! them are served, the manager stays up, and nothing loops hot: over a quiet window afterwards
//! the driver calls, Events and log lines grow no faster than the retry backoff allows.
//! (Bad flags and kubeconfigs are `crates/controller-manager/tests/startup.rs`.)
//!
//! Runs the cluster-wide snapshot controller, so the file holds one test and runs alone.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::Method;
use e2e::{OwnDriver, claim, clients, eventually};
use k8s_openapi::api::core::v1::{
    Event, Node, PersistentVolume, PersistentVolumeClaim, TypedLocalObjectReference,
};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use snapshotter::types::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

const GI: i64 = 1 << 30;

/// What a case must show.
enum Expect {
    /// An Event of this reason on the claim, its message containing the fragment.
    ClaimEvent(&'static str, &'static str, &'static str),
    /// The claim is Bound (a valid object at a limit).
    Bound(String),
    /// The attachment's `status.attachError.message` contains the fragment.
    AttachError(String, &'static str),
    /// The snapshot's `status.error.message`, or an Event on it, contains the fragment.
    SnapshotError(&'static str, &'static str),
}

struct Case {
    what: &'static str,
    expect: Expect,
}

/// Builds a typed object from JSON (the table reads like the manifests a user would write).
fn obj<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("a well-formed test object")
}

struct World {
    own: OwnDriver,
    ns: String,
    classes: Api<StorageClass>,
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    vas: Api<VolumeAttachment>,
    nodes: Api<Node>,
    snapshots: Api<VolumeSnapshot>,
    snapshot_classes: Api<VolumeSnapshotClass>,
    contents: Api<VolumeSnapshotContent>,
    events: Api<Event>,
}

impl World {
    async fn class(&self, suffix: &str, params: &[(&str, &str)]) -> String {
        let params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.own
            .create_class(&format!("{}-{suffix}", self.ns), params)
            .await
    }

    async fn claim(&self, pvc: PersistentVolumeClaim) {
        self.pvcs
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap();
    }

    async fn va(&self, name: &str, pv: &str, node: &str) -> String {
        let name = format!("{}-{name}", self.ns);
        let va = e2e::volume_attachment(&name, &self.own.driver_name, node, pv);
        self.vas.create(&PostParams::default(), &va).await.unwrap();
        name
    }

    /// Reasons and messages of the Events about `kind`/`name` in the test's namespace.
    async fn events_of(&self, kind: &str, name: &str) -> Vec<(String, String)> {
        self.events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some(kind)
                    && e.involved_object.name.as_deref() == Some(name)
            })
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    /// Whether the case shows what it must; else what it shows.
    async fn check(&self, expect: &Expect) -> Result<(), String> {
        match expect {
            Expect::ClaimEvent(claim, reason, fragment) => {
                let events = self.events_of("PersistentVolumeClaim", claim).await;
                if events
                    .iter()
                    .any(|(r, m)| r == reason && m.contains(fragment))
                {
                    Ok(())
                } else {
                    Err(format!("events {events:?}"))
                }
            }
            Expect::Bound(claim) => {
                let pvc = self.pvcs.get(claim).await.map_err(|e| e.to_string())?;
                let phase = pvc.status.and_then(|s| s.phase);
                (phase.as_deref() == Some("Bound"))
                    .then_some(())
                    .ok_or(format!("phase {phase:?}"))
            }
            Expect::AttachError(va, fragment) => {
                let va = self.vas.get(va).await.map_err(|e| e.to_string())?;
                let error = va
                    .status
                    .and_then(|s| s.attach_error)
                    .and_then(|e| e.message)
                    .unwrap_or_default();
                error
                    .contains(fragment)
                    .then_some(())
                    .ok_or(format!("attachError {error:?}"))
            }
            Expect::SnapshotError(vs, fragment) => {
                let snapshot = self.snapshots.get(vs).await.map_err(|e| e.to_string())?;
                let error = snapshot
                    .status
                    .and_then(|s| s.error)
                    .and_then(|e| e.message)
                    .unwrap_or_default();
                let events = self.events_of("VolumeSnapshot", vs).await;
                (error.contains(fragment) || events.iter().any(|(_, m)| m.contains(fragment)))
                    .then_some(())
                    .ok_or(format!("error {error:?}, events {events:?}"))
            }
        }
    }

    /// Driver calls, Events (with their counts) in the namespace, and the manager's log lines.
    async fn activity(&self) -> (u64, i64, usize) {
        let calls = [
            Method::CreateVolume,
            Method::DeleteVolume,
            Method::ControllerPublishVolume,
            Method::ControllerExpandVolume,
            Method::CreateSnapshot,
            Method::ListSnapshots,
        ]
        .into_iter()
        .map(|m| self.own.driver.calls(m))
        .sum();
        let events = self
            .events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|e| i64::from(e.count.unwrap_or(1)))
            .sum();
        let lines = std::fs::read_to_string(&self.own.manager.log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        (calls, events, lines)
    }
}

#[tokio::test]
async fn each_bad_object_is_reported_and_nothing_crashes_or_loops() {
    let own = OwnDriver::start(
        "bad-input",
        |c| c.max_volume_size = Some(10 * GI),
        &["--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller"],
    )
    .await;
    let c = clients().await;
    let ns = own.name.clone();
    let w = World {
        classes: Api::all(c.main.clone()),
        pvcs: Api::namespaced(c.main.clone(), &ns),
        pvs: Api::all(c.main.clone()),
        vas: Api::all(c.main.clone()),
        nodes: Api::all(c.main.clone()),
        snapshots: Api::namespaced(c.main.clone(), &ns),
        snapshot_classes: Api::all(c.main.clone()),
        contents: Api::all(c.main.clone()),
        events: Api::namespaced(c.main.clone(), &ns),
        ns: ns.clone(),
        own,
    };
    let marks = e2e::mark_nodes(&w.own.driver_name, &format!("{ns}/zone"), |_| "z".into()).await;
    let node = marks.zones[0].0.clone();
    let mut cases: Vec<Case> = Vec::new();
    let good = w.class("good", &[]).await;
    w.snapshot_classes
        .create(
            &PostParams::default(),
            &obj(
                json!({"metadata": {"name": ns}, "driver": w.own.driver_name,
                        "deletionPolicy": "Delete"}),
            ),
        )
        .await
        .unwrap();

    // Classes and secret templates.
    let class = w
        .class("reserved", &[("csi.storage.k8s.io/bogus", "x")])
        .await;
    w.claim(claim("reserved", &class, "1Gi")).await;
    cases.push(Case {
        what: "a class parameter under the reserved csi.storage.k8s.io/ prefix",
        expect: Expect::ClaimEvent("reserved", "ProvisioningFailed", "csi.storage.k8s.io/bogus"),
    });
    let secret = |name: &'static str, namespace: &'static str| {
        [
            ("csi.storage.k8s.io/provisioner-secret-name", name),
            ("csi.storage.k8s.io/provisioner-secret-namespace", namespace),
        ]
    };
    let class = w
        .class(
            "bad-secret-name",
            &secret("${pvc.annotations['team']}", "${pvc.namespace}"),
        )
        .await;
    let mut pvc = claim("bad-secret-name", &class, "1Gi");
    pvc.metadata.annotations = Some(BTreeMap::from([("team".into(), "Not_Valid".into())]));
    w.claim(pvc).await;
    cases.push(Case {
        what: "a secret name template resolving to an invalid name",
        expect: Expect::ClaimEvent(
            "bad-secret-name",
            "ProvisioningFailed",
            "not a valid secret name",
        ),
    });
    let class = w.class("bad-secret-ns", &secret("creds", "Bad_NS")).await;
    w.claim(claim("bad-secret-ns", &class, "1Gi")).await;
    cases.push(Case {
        what: "a secret namespace that is not a valid name",
        expect: Expect::ClaimEvent(
            "bad-secret-ns",
            "ProvisioningFailed",
            "not a valid namespace name",
        ),
    });
    let class = w
        .class(
            "bad-token",
            &secret("${pvc.labels['x']}", "${pvc.namespace}"),
        )
        .await;
    w.claim(claim("bad-token", &class, "1Gi")).await;
    cases.push(Case {
        what: "a secret template with an unknown token",
        expect: Expect::ClaimEvent("bad-token", "ProvisioningFailed", "invalid tokens"),
    });
    let class = w
        .class(
            "missing-secret",
            &secret("no-such-creds", "${pvc.namespace}"),
        )
        .await;
    w.claim(claim("missing-secret", &class, "1Gi")).await;
    cases.push(Case {
        what: "a secret that does not exist",
        expect: Expect::ClaimEvent("missing-secret", "ProvisioningFailed", "no-such-creds"),
    });
    let class = w
        .class("other-ns-secret", &secret("creds", "kube-system"))
        .await;
    w.claim(claim("other-ns-secret", &class, "1Gi")).await;
    cases.push(Case {
        what: "a secret in another namespace that does not hold it",
        expect: Expect::ClaimEvent("other-ns-secret", "ProvisioningFailed", "kube-system"),
    });

    // Claims.
    let mut pvc = claim("selector", &good, "1Gi");
    pvc.spec.as_mut().unwrap().selector = Some(obj(json!({"matchLabels": {"a": "b"}})));
    w.claim(pvc).await;
    cases.push(Case {
        what: "a claim with a selector",
        expect: Expect::ClaimEvent(
            "selector",
            "ProvisioningFailed",
            "Selector is not supported",
        ),
    });
    w.claim(claim("huge", &good, "1Ei")).await;
    cases.push(Case {
        what: "an absurd size (1Ei, beyond the driver's limit)",
        expect: Expect::ClaimEvent("huge", "ProvisioningFailed", "exceed"),
    });
    let mut pvc = claim("from-missing-snapshot", &good, "1Gi");
    pvc.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: Some("snapshot.storage.k8s.io".into()),
        kind: "VolumeSnapshot".into(),
        name: "no-such-snapshot".into(),
    });
    w.claim(pvc).await;
    cases.push(Case {
        what: "a restore from a snapshot that does not exist",
        expect: Expect::ClaimEvent(
            "from-missing-snapshot",
            "ProvisioningFailed",
            "no-such-snapshot",
        ),
    });
    let mut pvc = claim("clone-of-missing", &good, "1Gi");
    pvc.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".into(),
        name: "no-such-claim".into(),
    });
    w.claim(pvc).await;
    cases.push(Case {
        what: "a clone of a claim that does not exist",
        expect: Expect::ClaimEvent("clone-of-missing", "ProvisioningFailed", "no-such-claim"),
    });
    let mut pvc = claim("big-annotations", &good, "1Gi");
    // Just under the API server's 256 KiB limit for all annotations of an object.
    pvc.metadata.annotations = Some(BTreeMap::from([(
        "example.com/blob".into(),
        "x".repeat(250_000),
    )]));
    pvc.metadata.labels = Some(BTreeMap::from([("example.com/l".into(), "v".repeat(63))]));
    w.claim(pvc).await;
    cases.push(Case {
        what: "annotations and labels at their size limits",
        expect: Expect::Bound("big-annotations".into()),
    });
    let long = format!("l{}ng", "o".repeat(250));
    w.claim(claim(&long, &good, "1Gi")).await;
    cases.push(Case {
        what: "a claim name of 253 characters (the longest allowed)",
        expect: Expect::Bound(long.clone()),
    });
    w.claim(claim("expand-me", &good, "1Gi")).await;

    // Attachments.
    let ghost: PersistentVolume = obj(json!({
        "metadata": {"name": format!("{ns}-ghost")},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                 "persistentVolumeReclaimPolicy": "Retain",
                 "csi": {"driver": w.own.driver_name, "volumeHandle": "no-such-volume"}},
    }));
    w.pvs.create(&PostParams::default(), &ghost).await.unwrap();
    let va = w.va("unknown-volume", &format!("{ns}-ghost"), &node).await;
    cases.push(Case {
        what: "an attachment of a volume the driver does not know",
        expect: Expect::AttachError(va, "no-such-volume"),
    });
    let va = w
        .va(
            "no-node",
            &format!("{ns}-ghost"),
            &format!("{ns}-no-such-node"),
        )
        .await;
    cases.push(Case {
        what: "an attachment to a node that does not exist",
        expect: Expect::AttachError(va, "no-such-node"),
    });
    let bare = format!("{ns}-bare");
    w.nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": bare}})),
        )
        .await
        .unwrap();
    let va = w.va("no-csinode", &format!("{ns}-ghost"), &bare).await;
    cases.push(Case {
        what: "an attachment to a node with no CSINode for the driver",
        expect: Expect::AttachError(va, "csinode"),
    });
    let va = w.va("no-pv", &format!("{ns}-no-such-pv"), &node).await;
    cases.push(Case {
        what: "an attachment of a PersistentVolume that does not exist",
        expect: Expect::AttachError(va, "no-such-pv"),
    });

    // Snapshots.
    for vs in [
        e2e::volume_snapshot("of-missing-claim", "no-such-claim", Some(&ns)),
        e2e::volume_snapshot("missing-class", "expand-me", Some("no-such-class")),
    ] {
        w.snapshots
            .create(&PostParams::default(), &vs)
            .await
            .unwrap();
    }
    cases.push(Case {
        what: "a snapshot of a claim that does not exist",
        // Upstream's words, which name the snapshot, not the claim.
        expect: Expect::SnapshotError("of-missing-claim", "cannot get claim from snapshot"),
    });
    cases.push(Case {
        what: "a snapshot naming a class that does not exist",
        expect: Expect::SnapshotError("missing-class", "no-such-class"),
    });
    let content = format!("{ns}-imported");
    w.contents
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": content},
                "spec": {"deletionPolicy": "Retain", "driver": w.own.driver_name,
                         "source": {"snapshotHandle": "no-such-snapshot-handle"},
                         "volumeSnapshotRef": {"name": "imported", "namespace": ns}},
            })),
        )
        .await
        .unwrap();
    let mut vs = e2e::volume_snapshot("imported", "", None);
    vs.spec.source.persistent_volume_claim_name = None;
    vs.spec.source.volume_snapshot_content_name = Some(content.clone());
    w.snapshots
        .create(&PostParams::default(), &vs)
        .await
        .unwrap();
    cases.push(Case {
        what: "a pre-provisioned content whose snapshot the driver does not know",
        expect: Expect::SnapshotError("imported", "no-such-snapshot-handle"),
    });

    // Expansion beyond the driver's maximum, once the claim is Bound.
    eventually("claim expand-me Bound", Duration::from_secs(60), || async {
        let pvc = w.pvcs.get("expand-me").await.ok()?;
        (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    w.pvcs
        .patch(
            "expand-me",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "100Gi"}}}})),
        )
        .await
        .unwrap();
    cases.push(Case {
        what: "an expansion beyond the driver's maximum volume size",
        expect: Expect::ClaimEvent("expand-me", "VolumeResizeFailed", "exceed"),
    });

    let created = std::time::Instant::now();
    // Every case shows what it must.
    let mut last: Vec<String> = Vec::new();
    let shown = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            last.clear();
            for case in &cases {
                if let Err(shows) = w.check(&case.expect).await {
                    last.push(format!("{}: {shows}", case.what));
                }
            }
            if last.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert!(
        shown.is_ok(),
        "cases not shown within 120 s:\n{}",
        last.join("\n")
    );
    eprintln!("{} bad objects, each reported as it should be", cases.len());

    // Nothing loops hot: each failing object is retried with exponential backoff (1 s doubling,
    // the default), so 40 s after the objects were created a 20 s window holds at most one
    // retry of each (two Events of ours: `Provisioning` and the failure), plus
    // kube-controller-manager's `ExternalProvisioning` every 15 s for each pending claim. A hot
    // loop would show hundreds.
    tokio::time::sleep(Duration::from_secs(40).saturating_sub(created.elapsed())).await;
    let before = w.activity().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = w.activity().await;
    let failing = cases
        .iter()
        .filter(|c| !matches!(c.expect, Expect::Bound(_)))
        .count() as u64;
    let (calls, events, lines) = (
        after.0 - before.0,
        after.1 - before.1,
        after.2.saturating_sub(before.2),
    );
    eprintln!(
        "over 20 s with {failing} failing objects: {calls} driver calls, {events} events, {lines} log lines"
    );
    assert!(calls <= 2 * failing, "driver calls loop: {calls} in 20 s");
    assert!(
        events <= 4 * failing as i64,
        "events loop: {events} in 20 s"
    );
    assert!(
        lines <= 20 * failing as usize,
        "the log loops: {lines} lines in 20 s"
    );
    let mut own = w.own;
    assert!(own.manager.is_running(), "the manager is up");

    // Clean up.
    for va in w.vas.list(&ListParams::default()).await.unwrap().items {
        let name = va.metadata.name.unwrap_or_default();
        if name.starts_with(&ns) {
            let _ = w.vas.delete(&name, &DeleteParams::default()).await;
        }
    }
    let _ = w
        .snapshots
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = w.contents.delete(&content, &DeleteParams::default()).await;
    let _ = w
        .pvcs
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = w
        .pvs
        .delete(&format!("{ns}-ghost"), &DeleteParams::default())
        .await;
    let _ = w.nodes.delete(&bare, &DeleteParams::default()).await;
    for class in w.classes.list(&ListParams::default()).await.unwrap().items {
        let name = class.metadata.name.unwrap_or_default();
        if name.starts_with(&ns) {
            let _ = w.classes.delete(&name, &DeleteParams::default()).await;
        }
    }
    let _ = w
        .snapshot_classes
        .delete(&ns, &DeleteParams::default())
        .await;
    marks.remove().await;
    own.manager.kill().await;
    own.stop().await;
}
