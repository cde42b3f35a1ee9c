//! The attacher on the local control plane: kube-controller-manager's attach/detach controller
//! creates VolumeAttachments for pods on kwok nodes; csi-controller-manager attaches and detaches
//! them through the driver.
//!
//! Needs `e2e/cluster up`, a driver (`e2e/cluster driver …`, which writes `CSI_SOCKET` and
//! `DRIVER_NAME` to driver.env, exported by e2e/run-tests) and `e2e/cluster sidecars ours`.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use csi::v1;
use e2e::{clients, eventually, unique};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, Pod, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

/// A first kwok node's name.
async fn a_node(client: &kube::Client) -> String {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.unwrap();
    list.items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .find(|n| n.starts_with("kwok-"))
        .expect("a kwok node")
}

#[tokio::test]
async fn a_pod_gets_its_volume_attached_and_detached_when_it_goes() {
    let c = clients().await;
    let driver = e2e::env("DRIVER_NAME");
    let ns = "default";
    let name = unique("e2e-attach");

    // The volume, created on the driver directly: this test is about attaching.
    let csi = e2e::cluster_csi();
    let volume = csi
        .create_volume(v1::CreateVolumeRequest {
            name: name.clone(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![e2e::rwo()],
            ..Default::default()
        })
        .await
        .unwrap()
        .volume
        .unwrap();

    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(c.main.clone(), ns);
    let vas: Api<VolumeAttachment> = Api::all(c.main.clone());
    let size = BTreeMap::from([("storage".to_string(), Quantity("1Mi".into()))]);
    pvs.create(
        &PostParams::default(),
        &PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(size.clone()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                persistent_volume_reclaim_policy: Some("Retain".into()),
                storage_class_name: Some(String::new()),
                claim_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    namespace: Some(ns.into()),
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                csi: Some(CSIPersistentVolumeSource {
                    driver: driver.clone(),
                    volume_handle: volume.volume_id.clone(),
                    volume_attributes: Some(volume.volume_context.clone().into_iter().collect()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    pvcs.create(
        &PostParams::default(),
        &PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some(String::new()),
                volume_name: Some(name.clone()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(size),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let node = a_node(&c.main).await;
    pods.create(
        &PostParams::default(),
        &e2e::pod_using(&name, &name, Some(&node)),
    )
    .await
    .unwrap();

    // kube-controller-manager creates the VolumeAttachment; we attach it.
    let va = eventually(
        "the VolumeAttachment to be attached",
        Duration::from_secs(120),
        || {
            let (vas, name) = (vas.clone(), name.clone());
            async move {
                let list = vas.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|va| {
                    va.spec.source.persistent_volume_name.as_deref() == Some(name.as_str())
                        && va.status.as_ref().is_some_and(|s| s.attached)
                })
            }
        },
    )
    .await;
    assert_eq!(va.spec.attacher, driver);
    assert_eq!(va.spec.node_name, node);
    let finalizers = va.metadata.finalizers.clone().unwrap_or_default();
    assert!(
        finalizers
            .iter()
            .any(|f| f.starts_with("external-attacher/")),
        "{finalizers:?}"
    );
    let pv = pvs.get(&name).await.unwrap();
    assert!(
        pv.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f.starts_with("external-attacher/"))
    );

    // The pod goes: the attachment is detached and the VolumeAttachment deleted.
    pods.delete(
        &name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let va_name = va.metadata.name.clone().unwrap();
    eventually(
        "the VolumeAttachment to be detached and gone",
        Duration::from_secs(180),
        || {
            let (vas, n) = (vas.clone(), va_name.clone());
            async move {
                vas.get_opt(&n)
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            }
        },
    )
    .await;

    pvcs.delete(&name, &DeleteParams::default()).await.unwrap();
    pvs.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(
        "the PV to go (its attacher finalizer removed)",
        Duration::from_secs(60),
        || {
            let (pvs, n) = (pvs.clone(), name.clone());
            async move {
                pvs.get_opt(&n)
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            }
        },
    )
    .await;
    csi.delete_volume(v1::DeleteVolumeRequest {
        volume_id: volume.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
}
