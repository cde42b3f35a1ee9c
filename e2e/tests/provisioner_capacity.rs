//! Storage capacity tracking (`--enable-capacity`) on the local control plane, with a test's own
//! csi-mock (topology: one zone per node, one zone outside the driver's) and manager: one
//! CSIStorageCapacity per late-binding class and segment with GetCapacity's answer, refreshed
//! after a provisioning, re-created when deleted by someone else, deleted with its class.
#![cfg(feature = "cluster")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use csi_mock::TopologyConfig;
use e2e::{OwnDriver, claim, clients, eventually, storage_class};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const GI: i64 = 1 << 30;

/// The driver's CSIStorageCapacity objects: (class, zone) -> (name, capacity).
async fn published(
    api: &Api<CSIStorageCapacity>,
    driver: &str,
    key: &str,
) -> BTreeMap<(String, String), (String, String)> {
    let list = api
        .list(&ListParams::default().labels(&format!(
            "csi.storage.k8s.io/drivername={driver},csi.storage.k8s.io/managed-by=external-provisioner"
        )))
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|o| {
            let zone = o
                .node_topology
                .and_then(|t| t.match_labels)
                .and_then(|l| l.get(key).cloned())
                .unwrap_or_default();
            (
                (o.storage_class_name, zone),
                (
                    o.metadata.name.unwrap_or_default(),
                    o.capacity.map(|q| q.0).unwrap_or_default(),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn capacity_is_published_per_class_and_segment_and_follows_the_driver() {
    let c = clients().await;
    let key = format!("topology.{}/zone", e2e::unique("cap"));
    let nodes = e2e::kwok_node_count().await;
    assert!(nodes >= 2, "the test needs two kwok nodes");
    // The driver serves zone-0 and zone-1; the last node is in zone-out, where it has nothing.
    let own = OwnDriver::start(
        "cap",
        |cfg| {
            cfg.topology = Some(TopologyConfig {
                key: key.clone(),
                zones: vec!["zone-0".into(), "zone-1".into()],
            });
            cfg.total_capacity = Some(10 * GI);
        },
        &[],
    )
    .await;
    let mut own = own;
    let namespace = own.name.clone();
    // Capacity objects live in the manager's namespace, here the test's.
    e2e::grant_upstream_namespace_role(&namespace).await;
    own.manager
        .restart_with(
            &[
                "--controllers=provisioner",
                "--enable-capacity",
                "--capacity-ownerref-level=-1",
                // Long: only a provisioning, a deletion or a change may refresh within the test.
                "--capacity-poll-interval=1h",
            ],
            &[("NAMESPACE", &namespace)],
        )
        .await;
    let zone_of = |i: usize| {
        if i + 1 == nodes {
            "zone-out".to_string()
        } else {
            format!("zone-{}", i % 2)
        }
    };
    let marks = e2e::mark_nodes(&own.driver_name, &key, zone_of).await;

    let classes: Api<StorageClass> = Api::all(c.main.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &own.name);
    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    let objects: Api<CSIStorageCapacity> = Api::namespaced(c.main.clone(), &own.name);
    let late = format!("{}-late", own.name);
    let now = format!("{}-now", own.name);
    let mut class = storage_class(&late, &own.driver_name, "Delete", BTreeMap::new());
    class.volume_binding_mode = Some("WaitForFirstConsumer".into());
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    // Immediate binding: not published without --capacity-for-immediate-binding.
    let immediate = storage_class(&now, &own.driver_name, "Delete", BTreeMap::new());
    classes
        .create(&PostParams::default(), &immediate)
        .await
        .unwrap();

    let zones: BTreeSet<String> = (0..nodes).map(zone_of).collect();
    let want = |free: &str| -> BTreeMap<(String, String), String> {
        zones
            .iter()
            .map(|z| {
                let capacity = if z == "zone-out" { "0" } else { free };
                ((late.clone(), z.clone()), capacity.to_string())
            })
            .collect()
    };
    let capacities = |p: &BTreeMap<(String, String), (String, String)>| {
        p.iter()
            .map(|(k, (_, cap))| (k.clone(), cap.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let first = eventually(
        "one object per segment of the late-binding class",
        Duration::from_secs(60),
        || async {
            let p = published(&objects, &own.driver_name, &key).await;
            (capacities(&p) == want("10Gi")).then_some(p)
        },
    )
    .await;
    let one = first.values().next().unwrap().0.clone();
    let got = objects.get(&one).await.unwrap();
    assert_eq!(got.metadata.generate_name.as_deref(), Some("csisc-"));
    assert_eq!(got.metadata.owner_references, None, "level -1: no owner");

    // A provisioning in zone-0 takes 2 GiB from the pool: the objects follow without a poll.
    let mut data = claim("data", &late, "2Gi");
    data.metadata.annotations = Some(BTreeMap::from([(
        "volume.kubernetes.io/selected-node".to_string(),
        marks.zones[0].0.clone(),
    )]));
    pvcs.create(&PostParams::default(), &data).await.unwrap();
    eventually(
        "capacity to drop by the new volume",
        Duration::from_secs(60),
        || async {
            let p = published(&objects, &own.driver_name, &key).await;
            (capacities(&p) == want("8Gi")).then_some(())
        },
    )
    .await;

    // Someone deletes an object: it is created again.
    objects
        .delete(&one, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted object to be replaced",
        Duration::from_secs(60),
        || async {
            let p = published(&objects, &own.driver_name, &key).await;
            let replaced = p.values().all(|(name, _)| *name != one);
            (replaced && capacities(&p) == want("8Gi")).then_some(())
        },
    )
    .await;
    // Someone changes one: the next refresh puts it right (a deletion refreshes the class).
    let (victim, _) = published(&objects, &own.driver_name, &key)
        .await
        .into_values()
        .next()
        .unwrap();
    let wrong = json!({"capacity": "1"});
    objects
        .patch(&victim, &PatchParams::default(), &Patch::Merge(&wrong))
        .await
        .unwrap();
    pvcs.delete("data", &DeleteParams::default()).await.unwrap();
    eventually(
        "capacity to come back after the deletion",
        Duration::from_secs(60),
        || async {
            let p = published(&objects, &own.driver_name, &key).await;
            let gone = pvs
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .all(|pv| {
                    let driver = pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.csi.as_ref())
                        .map(|c| &c.driver);
                    driver != Some(&own.driver_name)
                });
            (gone && capacities(&p) == want("10Gi")).then_some(())
        },
    )
    .await;

    // The class goes: its objects go.
    classes
        .delete(&late, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the class's objects to be deleted",
        Duration::from_secs(60),
        || async {
            published(&objects, &own.driver_name, &key)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    classes
        .delete(&now, &DeleteParams::default())
        .await
        .unwrap();
    marks.remove().await;
    own.stop().await;
}
