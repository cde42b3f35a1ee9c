//! The provisioner on the local control plane with csi-controller-manager in place of the
//! sidecars: a claim gets a volume and a PV shaped as upstream's, deleting it deletes both, and a
//! bad StorageClass parameter gives a clear ProvisioningFailed event without a hot loop.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use csi::v1;
use e2e::{clients, eventually, journal_entries, storage_class, unique};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

async fn driver_volume_names() -> Vec<String> {
    let list = e2e::cluster_csi()
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap();
    list.entries
        .into_iter()
        .filter_map(|e| e.volume)
        .map(|v| v.volume_id)
        .collect()
}

fn class(name: &str, parameters: BTreeMap<String, String>) -> StorageClass {
    storage_class(name, &e2e::env("DRIVER_NAME"), "Delete", parameters)
}

fn claim(name: &str, class: &str) -> PersistentVolumeClaim {
    e2e::claim(name, class, "1Gi")
}

#[tokio::test]
async fn a_claim_is_provisioned_and_deleted_as_upstream_does() {
    let c = clients().await;
    let driver = e2e::env("DRIVER_NAME");
    let name = unique("e2e-prov");
    let classes: Api<StorageClass> = Api::all(c.main.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    classes
        .create(&PostParams::default(), &class(&name, BTreeMap::new()))
        .await
        .unwrap();
    let created = pvcs
        .create(&PostParams::default(), &claim(&name, &name))
        .await
        .unwrap();

    let bound = eventually("the claim to be Bound", Duration::from_secs(60), || {
        let (pvcs, n) = (pvcs.clone(), name.clone());
        async move {
            let pvc = pvcs.get(&n).await.ok()?;
            (pvc.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pvc)
        }
    })
    .await;
    let pv_name = bound.spec.unwrap().volume_name.unwrap();
    assert_eq!(
        pv_name,
        format!("pvc-{}", created.metadata.uid.clone().unwrap())
    );
    let pv = pvs.get(&pv_name).await.unwrap();
    let annotations = pv.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("pv.kubernetes.io/provisioned-by"),
        Some(&driver)
    );
    let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
    assert!(
        finalizers.contains(&"external-provisioner.volume.kubernetes.io/finalizer".to_string()),
        "{finalizers:?}"
    );
    let spec = pv.spec.unwrap();
    let claim_ref = spec.claim_ref.unwrap();
    assert_eq!(claim_ref.uid, created.metadata.uid);
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    let csi = spec.csi.unwrap();
    assert_eq!(csi.driver, driver);
    assert!(driver_volume_names().await.contains(&csi.volume_handle));
    // Our intent record is released once the PV exists (with the journal's next write), and the
    // claim carries nothing of ours.
    eventually(
        "the journal to release the volume",
        Duration::from_secs(30),
        || {
            let (client, d, v) = (c.main.clone(), driver.clone(), pv_name.clone());
            async move { (!journal_entries(&client, &d).await.contains(&v)).then_some(()) }
        },
    )
    .await;
    let pvc = pvcs.get(&name).await.unwrap();
    assert!(
        !pvc.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f.contains("volume-intent"))
    );

    pvcs.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually("the PV to be deleted", Duration::from_secs(60), || {
        let (pvs, n) = (pvs.clone(), pv_name.clone());
        async move {
            pvs.get_opt(&n)
                .await
                .ok()
                .and_then(|o| o.is_none().then_some(()))
        }
    })
    .await;
    assert!(
        !driver_volume_names().await.contains(&csi.volume_handle),
        "the driver's volume is deleted too"
    );
    classes
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bad_class_parameter_fails_clearly_without_a_hot_loop() {
    let c = clients().await;
    let name = unique("e2e-badparam");
    let classes: Api<StorageClass> = Api::all(c.main.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), "default");
    let events: Api<Event> = Api::namespaced(c.main.clone(), "default");
    let params = BTreeMap::from([("csi.storage.k8s.io/bogus".to_string(), "x".to_string())]);
    classes
        .create(&PostParams::default(), &class(&name, params))
        .await
        .unwrap();
    pvcs.create(&PostParams::default(), &claim(&name, &name))
        .await
        .unwrap();

    let failed = eventually(
        "a ProvisioningFailed event",
        Duration::from_secs(60),
        || {
            let (events, n) = (events.clone(), name.clone());
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|e| {
                    e.involved_object.name.as_deref() == Some(n.as_str())
                        && e.reason.as_deref() == Some("ProvisioningFailed")
                })
            }
        },
    )
    .await;
    let note = failed.message.unwrap_or_default();
    assert!(
        note.contains("found unknown parameter key \"csi.storage.k8s.io/bogus\" with reserved namespace csi.storage.k8s.io/"),
        "{note}"
    );
    // Retries back off (1 s doubling): over 8 s at most a handful of attempts, folded into one
    // event series, never a hot loop. The claim stays Pending.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let list = events.list(&ListParams::default()).await.unwrap();
    let ours: Vec<&Event> = list
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
        .filter(|e| e.reason.as_deref() == Some("ProvisioningFailed"))
        .collect();
    let attempts: i32 = ours.iter().map(|e| e.count.unwrap_or(1)).sum();
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} failed attempts in ~8 s"
    );
    let pvc = pvcs.get(&name).await.unwrap();
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Pending"));

    pvcs.delete(&name, &DeleteParams::default()).await.unwrap();
    classes
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}
