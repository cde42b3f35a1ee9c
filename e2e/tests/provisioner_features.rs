//! The provisioner's features on the local control plane, each test with its own csi-mock and
//! csi-controller-manager (`e2e::OwnDriver`): Retain, block volumes, secrets from templates
//! (the driver refuses calls without them), driver errors then recovery, and
//! WaitForFirstConsumer with topology (kube-scheduler picks the node).
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{AccessType, Fault, Method, TopologyConfig};
use e2e::{OwnDriver, claim, clients, eventually, storage_class};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec, StorageClass};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::Code;

const MANAGER_ARGS: &[&str] = &[
    "--controllers=provisioner",
    "--retry-interval-start=500ms",
    "--retry-interval-max=5s",
    "--snapshot-orphan-sweep-interval=1s",
];

struct Apis {
    classes: Api<StorageClass>,
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    events: Api<Event>,
}

/// A driver and manager of the test's own, with a StorageClass named like its namespace.
async fn setup(prefix: &str, reclaim_policy: &str) -> (OwnDriver, Apis) {
    let own = OwnDriver::start(prefix, |_| {}, MANAGER_ARGS).await;
    let a = apis(&own.name).await;
    let class = storage_class(&own.name, &own.driver_name, reclaim_policy, BTreeMap::new());
    a.classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    (own, a)
}

async fn apis(ns: &str) -> Apis {
    let c = clients().await;
    Apis {
        classes: Api::all(c.main.clone()),
        pvcs: Api::namespaced(c.main.clone(), ns),
        pvs: Api::all(c.main.clone()),
        events: Api::namespaced(c.main.clone(), ns),
    }
}

impl Apis {
    /// Waits for the claim to be Bound and returns its PV.
    async fn bound_pv(&self, claim: &str) -> PersistentVolume {
        let pvc = eventually(
            &format!("claim {claim} to be Bound"),
            Duration::from_secs(60),
            || async {
                let pvc = self.pvcs.get(claim).await.ok()?;
                (pvc.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pvc)
            },
        )
        .await;
        let pv = pvc
            .spec
            .and_then(|s| s.volume_name)
            .expect("a bound claim names its PV");
        self.pvs.get(&pv).await.unwrap()
    }

    /// Deletes `claim`, waits until the driver has no volume left, deletes the test's class and
    /// stops its driver and manager.
    async fn finish(&self, own: OwnDriver, claim: &str) {
        self.pvcs
            .delete(claim, &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            "every volume to be deleted",
            Duration::from_secs(60),
            || async { own.driver.state().volumes.is_empty().then_some(()) },
        )
        .await;
        self.classes
            .delete(&own.name, &DeleteParams::default())
            .await
            .unwrap();
        own.stop().await;
    }

    /// Reasons and notes of the events about `name`.
    async fn events_of(&self, name: &str) -> Vec<(String, String)> {
        let list = self.events.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }
}

fn handle(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .unwrap()
        .csi
        .as_ref()
        .unwrap()
        .volume_handle
        .clone()
}

#[tokio::test]
async fn retain_keeps_the_pv_and_the_volume_after_the_claim_is_deleted() {
    let (own, a) = setup("retain", "Retain").await;
    a.pvcs
        .create(&PostParams::default(), &claim("data", &own.name, "1Gi"))
        .await
        .unwrap();
    let pv = a.bound_pv("data").await;
    let pv_name = pv.metadata.name.clone().unwrap();
    assert_eq!(
        pv.spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain")
    );

    a.pvcs
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the PV to be Released", Duration::from_secs(60), || async {
        let pv = a.pvs.get(&pv_name).await.ok()?;
        (pv.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await;
    // Give the manager time to (wrongly) act, then check that it did not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.pvs.get_opt(&pv_name).await.unwrap().is_some());
    assert!(own.driver.state().volumes.contains_key(&handle(&pv)));
    assert_eq!(own.driver.calls(Method::DeleteVolume), 0);

    a.pvs
        .delete(&pv_name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the retained PV to be deleted by hand",
        Duration::from_secs(30),
        || async { a.pvs.get_opt(&pv_name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        own.driver.state().volumes.contains_key(&handle(&pv)),
        "Retain: the volume stays"
    );
    a.classes
        .delete(&own.name, &DeleteParams::default())
        .await
        .unwrap();
    own.stop().await;
}

#[tokio::test]
async fn a_block_claim_gets_a_block_volume() {
    let own = OwnDriver::start("block", |_| {}, MANAGER_ARGS).await;
    let a = apis(&own.name).await;
    let mut params = BTreeMap::new();
    params.insert("csi.storage.k8s.io/fstype".to_string(), "xfs".to_string());
    let class = storage_class(&own.name, &own.driver_name, "Delete", params);
    a.classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let mut pvc = claim("raw", &own.name, "1Gi");
    pvc.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    a.pvcs.create(&PostParams::default(), &pvc).await.unwrap();

    let pv = a.bound_pv("raw").await;
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
    // A block volume has no filesystem: the class's fsType is not put on the PV.
    assert_eq!(spec.csi.as_ref().unwrap().fs_type, None);
    let volume = own.driver.state().volumes[&handle(&pv)].clone();
    assert!(
        volume.access_types.contains(&AccessType::Block),
        "{volume:?}"
    );
    assert!(
        !volume.access_types.contains(&AccessType::Mount),
        "{volume:?}"
    );

    a.finish(own, "raw").await;
}

#[tokio::test]
async fn secrets_from_templates_reach_the_driver_and_the_pv() {
    // The driver refuses CreateVolume and DeleteVolume without this secret.
    let own = OwnDriver::start(
        "secrets",
        |c| {
            c.required_secrets = [("user".to_string(), "admin".to_string())].into();
        },
        MANAGER_ARGS,
    )
    .await;
    let a = apis(&own.name).await;
    let c = clients().await;
    let secrets: Api<Secret> = Api::namespaced(c.main.clone(), &own.name);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("data-creds".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "user".to_string(),
            ByteString(b"admin".to_vec()),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let params: BTreeMap<String, String> = [
        (
            "csi.storage.k8s.io/provisioner-secret-name",
            "${pvc.name}-creds",
        ),
        (
            "csi.storage.k8s.io/provisioner-secret-namespace",
            "${pvc.namespace}",
        ),
        (
            "csi.storage.k8s.io/node-publish-secret-name",
            "${pvc.annotations['team']}-publish",
        ),
        (
            "csi.storage.k8s.io/node-publish-secret-namespace",
            "${pvc.namespace}",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let class = storage_class(&own.name, &own.driver_name, "Delete", params);
    a.classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let mut pvc = claim("data", &own.name, "1Gi");
    pvc.metadata.annotations = Some(BTreeMap::from([("team".to_string(), "blue".to_string())]));
    a.pvcs.create(&PostParams::default(), &pvc).await.unwrap();

    let pv = a.bound_pv("data").await;
    let annotations = pv.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("volume.kubernetes.io/provisioner-deletion-secret-name"),
        Some(&"data-creds".to_string())
    );
    assert_eq!(
        annotations.get("volume.kubernetes.io/provisioner-deletion-secret-namespace"),
        Some(&own.name)
    );
    let publish = pv
        .spec
        .as_ref()
        .unwrap()
        .csi
        .as_ref()
        .unwrap()
        .node_publish_secret_ref
        .clone();
    let publish = publish.expect("nodePublishSecretRef from the template");
    assert_eq!(publish.name.as_deref(), Some("blue-publish"));
    assert_eq!(publish.namespace.as_deref(), Some(own.name.as_str()));

    // Deletion reads the secret named by the PV's annotations: the driver accepts it.
    a.finish(own, "data").await;
}

#[tokio::test]
async fn driver_errors_are_reported_then_provisioning_and_deletion_recover() {
    let port = e2e::free_port();
    let http = format!("--http-endpoint=127.0.0.1:{port}");
    let args: Vec<&str> = MANAGER_ARGS
        .iter()
        .copied()
        .chain([http.as_str()])
        .collect();
    let own = OwnDriver::start("recover", |_| {}, &args).await;
    own.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "backend busy").times(2),
    );
    own.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Internal, "backend broke").once(),
    );
    own.driver.inject(
        Method::DeleteVolume,
        Fault::error(Code::Unavailable, "backend busy on delete").times(2),
    );
    let a = apis(&own.name).await;
    let class = storage_class(&own.name, &own.driver_name, "Delete", BTreeMap::new());
    a.classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    a.pvcs
        .create(&PostParams::default(), &claim("data", &own.name, "1Gi"))
        .await
        .unwrap();

    let pv = a.bound_pv("data").await;
    assert_eq!(
        own.driver.calls(Method::CreateVolume),
        4,
        "3 failures, then success"
    );
    let events = a.events_of("data").await;
    for want in ["backend busy", "backend broke"] {
        assert!(
            events
                .iter()
                .any(|(r, n)| r == "ProvisioningFailed" && n.contains(want)),
            "a ProvisioningFailed event saying {want:?}: {events:?}"
        );
    }
    assert!(
        events.iter().any(|(r, _)| r == "ProvisioningSucceeded"),
        "{events:?}"
    );

    let pv_name = pv.metadata.name.clone().unwrap();
    a.pvcs
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the PV to be deleted after the driver recovers",
        Duration::from_secs(60),
        || async { a.pvs.get_opt(&pv_name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(own.driver.state().volumes.is_empty());
    assert_eq!(
        own.driver.calls(Method::DeleteVolume),
        3,
        "2 failures, then success"
    );
    let c = clients().await;
    let all_events: Api<Event> = Api::all(c.main.clone());
    let failed = all_events
        .list(&ListParams::default().fields(&format!("involvedObject.name={pv_name}")))
        .await
        .unwrap();
    assert!(
        failed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("VolumeFailedDelete")
                && e.message
                    .as_deref()
                    .is_some_and(|n| n.contains("backend busy on delete"))),
        "a VolumeFailedDelete event on the PV"
    );
    // Upstream's metrics count the same attempts.
    let metrics = e2e::http_get(port, "/metrics").await;
    let class = &own.name;
    for line in [
        format!(
            r#"controller_persistentvolumeclaim_provision_failed_total{{class="{class}",source=""}} 3"#
        ),
        format!(
            r#"controller_persistentvolumeclaim_provision_total{{class="{class}",source=""}} 1"#
        ),
        format!(r#"controller_persistentvolume_delete_failed_total{{class="{class}"}} 2"#),
        format!(r#"controller_persistentvolume_delete_total{{class="{class}"}} 1"#),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    a.classes
        .delete(&own.name, &DeleteParams::default())
        .await
        .unwrap();
    own.stop().await;
}

#[tokio::test]
async fn wait_for_first_consumer_provisions_in_the_scheduled_nodes_zone() {
    let c = clients().await;
    // A topology key of this test's own, one zone per node.
    let key = format!("topology.{}/zone", e2e::unique("wffc"));
    let node_count = e2e::kwok_node_count().await;
    let zones: Vec<String> = (0..node_count).map(|i| format!("zone-{i}")).collect();
    let own = OwnDriver::start(
        "wffc",
        |cfg| {
            cfg.topology = Some(TopologyConfig {
                key: key.clone(),
                zones: zones.clone(),
            });
        },
        MANAGER_ARGS,
    )
    .await;
    let a = apis(&own.name).await;
    let csidrivers: Api<CSIDriver> = Api::all(c.main.clone());
    // No attach: this test is about provisioning.
    csidrivers
        .create(
            &PostParams::default(),
            &CSIDriver {
                metadata: ObjectMeta {
                    name: Some(own.driver_name.clone()),
                    ..Default::default()
                },
                spec: CSIDriverSpec {
                    attach_required: Some(false),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    let marks = e2e::mark_nodes(&own.driver_name, &key, |i| format!("zone-{i}")).await;
    let mut class = storage_class(&own.name, &own.driver_name, "Delete", BTreeMap::new());
    class.volume_binding_mode = Some("WaitForFirstConsumer".into());
    a.classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    a.pvcs
        .create(&PostParams::default(), &claim("data", &own.name, "1Gi"))
        .await
        .unwrap();
    // Nothing happens without a consumer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(own.driver.calls(Method::CreateVolume), 0);

    let pods: Api<Pod> = Api::namespaced(c.main.clone(), &own.name);
    let pod = e2e::pod_using("app", "data", None);
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let pv = a.bound_pv("data").await;
    let pvc = a.pvcs.get("data").await.unwrap();
    let selected = pvc
        .metadata
        .annotations
        .unwrap_or_default()
        .get("volume.kubernetes.io/selected-node")
        .cloned()
        .expect("kube-scheduler set the selected node");
    let zone = &marks.zone_of(&selected).to_string();
    // The PV is pinned to the selected node's zone, and the driver placed the volume there.
    let terms = pv
        .spec
        .as_ref()
        .unwrap()
        .node_affinity
        .clone()
        .unwrap()
        .required
        .unwrap();
    let exprs = terms.node_selector_terms[0]
        .match_expressions
        .clone()
        .unwrap_or_default();
    assert!(
        exprs.iter().any(|e| e.key == key
            && e.operator == "In"
            && e.values.as_deref() == Some(std::slice::from_ref(zone))),
        "{exprs:?}"
    );
    let volume = own.driver.state().volumes[&handle(&pv)].clone();
    assert_eq!(volume.accessible_topology[0].get(&key), Some(zone));
    eventually(
        "the pod to run on the selected node",
        Duration::from_secs(60),
        || async {
            let p = pods.get("app").await.ok()?;
            (p.spec?.node_name.as_deref() == Some(selected.as_str())).then_some(())
        },
    )
    .await;

    // Tidy up: the pod, the claim (and with it the volume), then our marks on the nodes.
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete("app", &force).await.unwrap();
    a.pvcs
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the volume to be deleted",
        Duration::from_secs(60),
        || async { own.driver.state().volumes.is_empty().then_some(()) },
    )
    .await;
    marks.remove().await;
    let _ = csidrivers
        .delete(&own.driver_name, &DeleteParams::default())
        .await;
    a.classes
        .delete(&own.name, &DeleteParams::default())
        .await
        .unwrap();
    own.stop().await;
}

#[tokio::test]
async fn a_clone_copies_its_source_which_stays_until_the_clone_is_bound() {
    use k8s_openapi::api::core::v1::TypedLocalObjectReference;
    let (own, a) = setup("clone", "Delete").await;
    a.pvcs
        .create(&PostParams::default(), &claim("src", &own.name, "1Gi"))
        .await
        .unwrap();
    let src_handle = handle(&a.bound_pv("src").await);
    let clone = |name: &str, size: &str| {
        let mut c = claim(name, &own.name, size);
        c.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: "src".into(),
        });
        c
    };

    // A clone smaller than its source is refused with upstream's message.
    a.pvcs
        .create(&PostParams::default(), &clone("small", "500Mi"))
        .await
        .unwrap();
    eventually(
        "the small clone's ProvisioningFailed event",
        Duration::from_secs(30),
        || async {
            a.events_of("small").await.into_iter().find(|(r, n)| {
                r == "ProvisioningFailed"
                    && n.contains(
                        "must be greater than or equal in size to the specified PVC data source",
                    )
            })
        },
    )
    .await;
    a.pvcs
        .delete("small", &DeleteParams::default())
        .await
        .unwrap();

    // The driver is busy: the clone stays Pending, and its source cannot go meanwhile.
    own.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "busy"),
    );
    a.pvcs
        .create(&PostParams::default(), &clone("copy", "1Gi"))
        .await
        .unwrap();
    eventually(
        "the source to get the cloning-protection finalizer",
        Duration::from_secs(30),
        || async {
            let src = a.pvcs.get("src").await.ok()?;
            src.metadata
                .finalizers?
                .iter()
                .any(|f| f == "provisioner.storage.kubernetes.io/cloning-protection")
                .then_some(())
        },
    )
    .await;
    a.pvcs
        .delete("src", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let src = a
        .pvcs
        .get_opt("src")
        .await
        .unwrap()
        .expect("the source is kept");
    assert!(src.metadata.deletion_timestamp.is_some());

    own.driver.clear_faults();
    let copy = a.bound_pv("copy").await;
    let volume = own.driver.state().volumes[&handle(&copy)].clone();
    assert_eq!(
        volume.content_source,
        Some(csi_mock::ContentSource::Volume(src_handle.clone()))
    );
    eventually(
        "the source claim and its volume to go",
        Duration::from_secs(60),
        || async {
            let gone = a.pvcs.get_opt("src").await.ok()?.is_none();
            (gone && !own.driver.state().volumes.contains_key(&src_handle)).then_some(())
        },
    )
    .await;

    a.finish(own, "copy").await;
}

/// The upstream snapshot controllers for a test's own driver: snapshot-controller and
/// csi-snapshotter, built by `e2e/cluster` (`SNAPSHOTTER_DIR`).
fn upstream_snapshotters(own: &OwnDriver) -> Vec<e2e::ManagerProcess> {
    let dir = std::path::PathBuf::from(e2e::env("SNAPSHOTTER_DIR"));
    let kubeconfig = e2e::env("KUBECONFIG");
    let mut controller = e2e::ManagerProcess::other(
        &format!("{}-snapshot-controller", own.name),
        dir.join("snapshot-controller"),
        vec![
            format!("--kubeconfig={kubeconfig}"),
            "--leader-election=false".into(),
        ],
    );
    let mut sidecar = e2e::ManagerProcess::other(
        &format!("{}-csi-snapshotter", own.name),
        dir.join("csi-snapshotter"),
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!(
                "--csi-address={}",
                own.endpoint.trim_start_matches("unix://")
            ),
            "--leader-election=false".into(),
        ],
    );
    controller.start();
    sidecar.start();
    vec![controller, sidecar]
}

#[tokio::test]
async fn a_claim_restores_a_snapshot_taken_by_the_upstream_snapshotter() {
    use k8s_openapi::api::core::v1::TypedLocalObjectReference;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let (own, a) = setup("restore", "Delete").await;
    let mut snapshotters = upstream_snapshotters(&own);
    let c = clients().await;
    let resource = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", kind),
            plural,
        )
    };
    let classes: Api<DynamicObject> = Api::all_with(
        c.main.clone(),
        &resource("VolumeSnapshotClass", "volumesnapshotclasses"),
    );
    let snapshots: Api<DynamicObject> = Api::namespaced_with(
        c.main.clone(),
        &own.name,
        &resource("VolumeSnapshot", "volumesnapshots"),
    );
    let class: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": own.name}, "driver": own.driver_name, "deletionPolicy": "Delete",
    }))
    .unwrap();
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    a.pvcs
        .create(&PostParams::default(), &claim("src", &own.name, "1Gi"))
        .await
        .unwrap();
    a.bound_pv("src").await;
    let snapshot: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap"},
        "spec": {"volumeSnapshotClassName": own.name, "source": {"persistentVolumeClaimName": "src"}},
    }))
    .unwrap();
    snapshots
        .create(&PostParams::default(), &snapshot)
        .await
        .unwrap();
    eventually(
        "the snapshot to be ready",
        Duration::from_secs(90),
        || async {
            let s = snapshots.get("snap").await.ok()?;
            (s.data["status"]["readyToUse"] == json!(true)).then_some(())
        },
    )
    .await;
    let snapshot_id = own
        .driver
        .state()
        .snapshots
        .keys()
        .next()
        .cloned()
        .expect("the upstream csi-snapshotter cut a snapshot on our driver");

    // The driver is busy at first: the snapshot carries our finalizer while the restore waits.
    own.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "busy"),
    );
    let mut restore = claim("restored", &own.name, "1Gi");
    restore.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: Some("snapshot.storage.k8s.io".into()),
        kind: "VolumeSnapshot".into(),
        name: "snap".into(),
    });
    a.pvcs
        .create(&PostParams::default(), &restore)
        .await
        .unwrap();
    let protection = "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection";
    let has_protection = |s: &DynamicObject| {
        s.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == protection))
    };
    eventually(
        "the snapshot to be protected",
        Duration::from_secs(30),
        || async { has_protection(&snapshots.get("snap").await.ok()?).then_some(()) },
    )
    .await;
    own.driver.clear_faults();
    let pv = a.bound_pv("restored").await;
    let volume = own.driver.state().volumes[&handle(&pv)].clone();
    assert_eq!(
        volume.content_source,
        Some(csi_mock::ContentSource::Snapshot(snapshot_id))
    );
    eventually(
        "the snapshot's protection to go",
        Duration::from_secs(30),
        || async { (!has_protection(&snapshots.get("snap").await.ok()?)).then_some(()) },
    )
    .await;

    // A finalizer left behind (say, its removal failed) is swept: no Pending claim needs it.
    let mut again = snapshots.get("snap").await.unwrap();
    again
        .metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(protection.to_string());
    snapshots
        .replace("snap", &PostParams::default(), &again)
        .await
        .unwrap();
    eventually(
        "the sweep to remove the orphaned finalizer",
        Duration::from_secs(30),
        || async { (!has_protection(&snapshots.get("snap").await.ok()?)).then_some(()) },
    )
    .await;

    // Tidy up: the snapshot (the upstream controllers delete it on the driver), the claims.
    snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the snapshot to be deleted",
        Duration::from_secs(60),
        || async {
            snapshots
                .get_opt("snap")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    a.pvcs
        .delete("src", &DeleteParams::default())
        .await
        .unwrap();
    for p in &mut snapshotters {
        p.kill().await;
    }
    let _ = classes.delete(&own.name, &DeleteParams::default()).await;
    a.finish(own, "restored").await;
}

/// An earlier version kept the intent on the claim (finalizer and annotation). A claim deleted
/// with such an intent while no manager ran has its intent moved into the journal, then its
/// volume rolled back, and the claim goes.
#[tokio::test]
async fn an_intent_left_on_a_deleted_claim_by_an_earlier_version_is_rolled_back() {
    use provisioner::request::{Capability, RecordedRequest};
    let (mut own, a) = setup("prov-legacy", "Delete").await;
    own.manager.kill().await;
    let created = a
        .pvcs
        .create(&PostParams::default(), &claim("legacy", &own.name, "1Gi"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let volume = format!("pvc-{uid}");
    let request = RecordedRequest {
        required_bytes: 1 << 30,
        capabilities: vec![Capability {
            block: false,
            fs_type: "ext4".into(),
            mount_flags: Vec::new(),
            mode: csi::v1::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }],
        ..RecordedRequest::default()
    };
    // The earlier version's CreateVolume made the volume, then it died.
    let endpoint = csi::CsiEndpoint::parse(&own.endpoint).unwrap();
    let csi =
        csi::CsiClient::connect(endpoint, Duration::from_secs(10), Default::default()).unwrap();
    csi.create_volume(request.to_csi(&volume, BTreeMap::new()))
        .await
        .unwrap();
    let intent = provisioner::Intent {
        driver: own.driver_name.clone(),
        volume_name: volume.clone(),
        claim_uid: uid,
        claim_namespace: own.name.clone(),
        claim_name: "legacy".into(),
        request,
        provisioner_secret: None,
        pv: Default::default(),
        may_reschedule: false,
    };
    let recorded = json!({"metadata": {
        "finalizers": [provisioner::constants::FINALIZER_VOLUME_INTENT],
        "annotations": {
            provisioner::constants::ANN_VOLUME_INTENT: serde_json::to_string(&intent).unwrap(),
        },
    }});
    a.pvcs
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Strategic(&recorded),
        )
        .await
        .unwrap();
    a.pvcs
        .delete("legacy", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(own.driver.state().volumes.len(), 1);

    own.manager.start();
    eventually(
        "the claim to go and its volume to be rolled back",
        Duration::from_secs(60),
        || async {
            let gone = a.pvcs.get_opt("legacy").await.unwrap().is_none();
            (gone && own.driver.state().volumes.is_empty()).then_some(())
        },
    )
    .await;
    let c = clients().await;
    eventually(
        "the journal to be empty",
        Duration::from_secs(30),
        || async {
            e2e::journal_entries(&c.main, &own.driver_name)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let log = std::fs::read_to_string(&own.manager.log).unwrap();
    assert!(
        log.contains("moved the volume intent from the claim into the journal"),
        "the intent went through the journal (log {})",
        own.manager.log.display()
    );
    a.classes
        .delete(&own.name, &DeleteParams::default())
        .await
        .unwrap();
    own.stop().await;
}
