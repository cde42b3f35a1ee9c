//! Node deployment (`--node-deployment`) on the local control plane: two instances of one driver,
//! each on its own kwok node with its own csi-mock (node-local storage, one zone each), as a
//! DaemonSet would run them. A late-binding claim is provisioned by its selected node's instance
//! only; an Immediate claim is competed for and won by exactly one; each deletes only its own.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{Method, TopologyConfig};
use e2e::{OwnDriver, claim, clients, eventually, storage_class};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};

/// One node's instance: its driver (named `driver`, in zone `zone`) and its manager.
async fn instance(prefix: &str, driver: &str, key: &str, zone: &str, node: &str) -> OwnDriver {
    let mut own = OwnDriver::start(
        prefix,
        |cfg| {
            cfg.driver_name = driver.to_string();
            cfg.node_id = node.to_string();
            cfg.topology = Some(TopologyConfig {
                key: key.to_string(),
                zones: vec![zone.to_string()],
            });
        },
        &[],
    )
    .await;
    own.driver_name = driver.to_string();
    own.manager
        .restart_with(
            &[
                "--controllers=provisioner",
                "--node-deployment",
                "--node-deployment-base-delay=200ms",
                "--node-deployment-max-delay=2s",
                "--retry-interval-start=200ms",
            ],
            &[("NODE_NAME", node)],
        )
        .await;
    own
}

#[tokio::test]
async fn each_node_provisions_and_deletes_only_its_own_volumes() {
    let c = clients().await;
    assert!(e2e::kwok_node_count().await >= 2, "two kwok nodes needed");
    let key = format!("topology.{}/zone", e2e::unique("node"));
    let driver = format!("{}.csi.controller-manager.io", e2e::unique("node"));
    let marks = e2e::mark_nodes(&driver, &key, |i| format!("zone-{i}")).await;
    let (node_a, node_b) = (marks.zones[0].0.clone(), marks.zones[1].0.clone());
    let a = instance("node-a", &driver, &key, "zone-0", &node_a).await;
    let b = instance("node-b", &driver, &key, "zone-1", &node_b).await;

    let classes: Api<StorageClass> = Api::all(c.main.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &a.name);
    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    let late = format!("{}-late", a.name);
    let now = format!("{}-now", a.name);
    let mut class = storage_class(&late, &a.driver_name, "Delete", BTreeMap::new());
    class.volume_binding_mode = Some("WaitForFirstConsumer".into());
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    classes
        .create(
            &PostParams::default(),
            &storage_class(&now, &a.driver_name, "Delete", BTreeMap::new()),
        )
        .await
        .unwrap();

    // Late binding, node b selected (as kube-scheduler would): only b provisions.
    let mut on_b = claim("on-b", &late, "1Gi");
    on_b.metadata.annotations = Some(BTreeMap::from([(
        "volume.kubernetes.io/selected-node".to_string(),
        node_b.clone(),
    )]));
    pvcs.create(&PostParams::default(), &on_b).await.unwrap();
    let bound = |name: &'static str| {
        let pvcs = pvcs.clone();
        async move {
            eventually(
                &format!("claim {name} to be Bound"),
                Duration::from_secs(60),
                || async {
                    let p = pvcs.get(name).await.ok()?;
                    (p.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(p)
                },
            )
            .await
        }
    };
    let pvc = bound("on-b").await;
    let pv = pvs
        .get(pvc.spec.as_ref().unwrap().volume_name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(b.driver.state().volumes.len(), 1, "b made the volume");
    assert_eq!(a.driver.calls(Method::CreateVolume), 0, "a left it alone");
    let affinity = serde_json::to_string(&pv.spec.as_ref().unwrap().node_affinity).unwrap();
    assert!(affinity.contains("zone-1"), "{affinity}");

    // Immediate binding: both compete, one wins and provisions in its zone.
    pvcs.create(&PostParams::default(), &claim("anywhere", &now, "1Gi"))
        .await
        .unwrap();
    let pvc = bound("anywhere").await;
    let winner = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.kubernetes.io/selected-node").cloned())
        .expect("the winner selected its node");
    let (won, lost) = if winner == node_a { (&a, &b) } else { (&b, &a) };
    // Each node's driver numbers its volumes on its own: look them up by name (the PV's).
    let pv_name = pvc.spec.as_ref().unwrap().volume_name.clone().unwrap();
    let has = |own: &OwnDriver| {
        own.driver
            .state()
            .volumes
            .values()
            .any(|v| v.name == pv_name)
    };
    assert!(has(won), "the winner made the volume");
    assert!(!has(lost), "the loser did not");
    assert_eq!(
        a.driver.calls(Method::CreateVolume) + b.driver.calls(Method::CreateVolume),
        2,
        "one CreateVolume per claim, by its node"
    );

    // Deleting: each instance deletes its own volumes only.
    for name in ["on-b", "anywhere"] {
        pvcs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(
        "both nodes' volumes to be deleted",
        Duration::from_secs(60),
        || async {
            (a.driver.state().volumes.is_empty() && b.driver.state().volumes.is_empty())
                .then_some(())
        },
    )
    .await;
    let deletes = a.driver.calls(Method::DeleteVolume) + b.driver.calls(Method::DeleteVolume);
    assert_eq!(deletes, 2, "one DeleteVolume per volume, by its own node");
    // Each node keeps its own intent journal.
    for (own, node) in [(&a, &node_a), (&b, &node_b)] {
        let log = std::fs::read_to_string(&own.manager.log).unwrap();
        assert!(
            log.contains(&format!(".{node} intents=")),
            "{} reads its node's journal (log {})",
            node,
            own.manager.log.display()
        );
    }

    for class in [&late, &now] {
        classes
            .delete(class, &DeleteParams::default())
            .await
            .unwrap();
    }
    marks.remove().await;
    b.stop().await;
    a.stop().await;
}
