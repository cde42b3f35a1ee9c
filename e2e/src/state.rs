//! The driver's state against the cluster's: what the fault and crash tests check at the end.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, ListParams};
use snapshotter::types::VolumeSnapshotContent;

use crate::clients;

/// What the cluster says `driver_name`'s driver holds: volume handles with their PV sizes in
/// bytes, (volume handle, node) of each attached VolumeAttachment, and the snapshot handles of
/// the contents.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Volume handle → size in bytes.
    pub volumes: BTreeMap<String, i64>,
    /// (volume handle, node), sorted.
    pub publications: Vec<(String, String)>,
    /// Snapshot handles, sorted.
    pub snapshots: Vec<String>,
}

impl Holdings {
    /// What the cluster's PVs, VolumeAttachments and snapshot contents of `driver_name` name.
    pub async fn of_cluster(driver_name: &str) -> Self {
        let c = clients().await;
        let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
        let vas: Api<VolumeAttachment> = Api::all(c.main.clone());
        let contents: Api<VolumeSnapshotContent> = Api::all(c.main.clone());
        let mut holdings = Holdings::default();
        let mut handle_of = BTreeMap::new();
        for pv in pvs
            .list(&ListParams::default())
            .await
            .expect("list PVs")
            .items
        {
            let Some(spec) = pv.spec else { continue };
            let Some(csi) = spec.csi else { continue };
            if csi.driver != driver_name {
                continue;
            }
            let bytes = spec
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .and_then(|q| controller_kit::quantity::parse_bytes(&q.0))
                .unwrap_or(0);
            handle_of.insert(
                pv.metadata.name.unwrap_or_default(),
                csi.volume_handle.clone(),
            );
            holdings.volumes.insert(csi.volume_handle, bytes);
        }
        for va in vas
            .list(&ListParams::default())
            .await
            .expect("list VAs")
            .items
        {
            if va.spec.attacher != driver_name || !va.status.is_some_and(|s| s.attached) {
                continue;
            }
            let pv = va.spec.source.persistent_volume_name.unwrap_or_default();
            let handle = handle_of.get(&pv).cloned().unwrap_or(pv);
            holdings.publications.push((handle, va.spec.node_name));
        }
        holdings.publications.sort();
        holdings.snapshots = contents
            .list(&ListParams::default())
            .await
            .expect("list contents")
            .items
            .into_iter()
            .filter(|c| c.spec.driver == driver_name)
            .filter_map(|c| c.status?.snapshot_handle)
            .collect();
        holdings.snapshots.sort();
        holdings
    }

    /// What the driver holds.
    pub fn of_driver(driver: &csi_mock::MockDriver) -> Self {
        let state = driver.state();
        let mut publications: Vec<(String, String)> = state
            .volumes
            .values()
            .flat_map(|v| v.publications.keys().map(|n| (v.id.clone(), n.clone())))
            .collect();
        publications.sort();
        Holdings {
            volumes: state
                .volumes
                .values()
                .map(|v| (v.id.clone(), v.capacity_bytes))
                .collect(),
            publications,
            snapshots: state.snapshots.into_keys().collect(),
        }
    }
}

/// Asserts that the driver's volumes, their sizes, its publications and its snapshots are
/// exactly what the cluster's objects of `driver_name` name: nothing leaked, nothing lost.
pub async fn assert_driver_matches_cluster(driver: &csi_mock::MockDriver, driver_name: &str) {
    let cluster = Holdings::of_cluster(driver_name).await;
    let held = Holdings::of_driver(driver);
    assert_eq!(
        held.volumes, cluster.volumes,
        "the driver's volumes and sizes are the PVs'"
    );
    assert_eq!(
        held.publications, cluster.publications,
        "the driver's publications are the attached VolumeAttachments"
    );
    assert_eq!(
        held.snapshots, cluster.snapshots,
        "the driver's snapshots are the contents' handles"
    );
}
