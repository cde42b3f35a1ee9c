//! Claims living their whole lives, concurrently, against a test's own driver: created,
//! expanded, snapshotted, attached, then detached, the snapshot deleted, the claim deleted.
//! The crash test kills the manager meanwhile; the soak runs it for an hour.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use snapshotter::types::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

use crate::{claim, clients, eventually};

/// Each step of a life may wait through several kills and restarts.
const STEP: Duration = Duration::from_secs(180);

/// Claims living their whole lives against one test driver (its StorageClass and
/// VolumeSnapshotClass are named after its namespace; [`Churn::prepare`] makes them).
pub struct Churn {
    ns: String,
    driver_name: String,
    nodes: Vec<String>,
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    vas: Api<VolumeAttachment>,
    snapshots: Api<VolumeSnapshot>,
    contents: Api<VolumeSnapshotContent>,
    marks: crate::NodeMarks,
    operations: AtomicU64,
    /// Time spent waiting, per step.
    waits: std::sync::Mutex<BTreeMap<&'static str, Duration>>,
}

impl std::fmt::Debug for Churn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Churn")
            .field("ns", &self.ns)
            .field("operations", &self.operations())
            .finish_non_exhaustive()
    }
}

impl Churn {
    /// Creates `own`'s StorageClass and VolumeSnapshotClass (named after its namespace) and
    /// lists its driver in the kwok nodes' CSINodes. Undo with [`Churn::remove`].
    pub async fn prepare(own: &crate::OwnDriver) -> Self {
        let c = clients().await;
        let ns = own.name.clone();
        own.create_class(&ns, Default::default()).await;
        let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(c.main.clone());
        let class = serde_json::from_value(json!({
            "metadata": {"name": ns}, "driver": own.driver_name, "deletionPolicy": "Delete",
        }))
        .expect("a VolumeSnapshotClass");
        snapshot_classes
            .create(&PostParams::default(), &class)
            .await
            .expect("create the VolumeSnapshotClass");
        let marks =
            crate::mark_nodes(&own.driver_name, &format!("{ns}/zone"), |_| "z".into()).await;
        Churn {
            ns: ns.clone(),
            driver_name: own.driver_name.clone(),
            nodes: marks.zones.iter().map(|(n, _)| n.clone()).collect(),
            marks,
            pvcs: Api::namespaced(c.main.clone(), &ns),
            pvs: Api::all(c.main.clone()),
            vas: Api::all(c.main.clone()),
            snapshots: Api::namespaced(c.main.clone(), &ns),
            contents: Api::all(c.main.clone()),
            operations: AtomicU64::new(0),
            waits: Default::default(),
        }
    }

    /// Removes the classes and the node marks.
    pub async fn remove(self) {
        let c = clients().await;
        let classes: Api<StorageClass> = Api::all(c.main.clone());
        let _ = classes.delete(&self.ns, &DeleteParams::default()).await;
        let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(c.main.clone());
        let _ = snapshot_classes
            .delete(&self.ns, &DeleteParams::default())
            .await;
        self.marks.remove().await;
    }

    /// Operations asked so far (each create, patch or delete counts one).
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }

    /// Time spent waiting for each kind of step, summed over all claims.
    pub fn waits(&self) -> BTreeMap<&'static str, Duration> {
        self.waits.lock().expect("the waits").clone()
    }

    /// The node slot `slot`'s attachments go to.
    pub fn node(&self, slot: usize) -> String {
        self.nodes[slot % self.nodes.len()].clone()
    }

    /// The PV of claim `name`.
    pub async fn pv_of(&self, name: &str) -> String {
        self.pvcs
            .get(name)
            .await
            .ok()
            .and_then(|c| c.spec?.volume_name)
            .expect("a bound claim")
    }

    /// Claims left in the namespace.
    pub async fn claims_left(&self) -> usize {
        self.pvcs
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX)
    }

    fn op(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }

    async fn timed<T>(&self, step: &'static str, wait: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = wait.await;
        *self
            .waits
            .lock()
            .expect("the waits")
            .entry(step)
            .or_default() += started.elapsed();
        out
    }

    /// Creates, expands, snapshots and attaches claim `name`; returns its PV.
    pub async fn grow(&self, name: &str, node: &str) -> String {
        self.pvcs
            .create(&PostParams::default(), &claim(name, &self.ns, "1Mi"))
            .await
            .unwrap();
        self.op();
        let pv = self
            .timed(
                "bind",
                eventually(&format!("{name} Bound"), STEP, || async {
                    let pvc = self.pvcs.get(name).await.ok()?;
                    (pvc.status?.phase.as_deref() == Some("Bound"))
                        .then_some(pvc.spec?.volume_name?)
                }),
            )
            .await;
        let patch = json!({"spec": {"resources": {"requests": {"storage": "2Mi"}}}});
        self.pvcs
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        self.op();
        self.timed(
            "expand",
            eventually(&format!("{name} expanded"), STEP, || async {
                let pv = self.pvs.get(&pv).await.ok()?;
                (pv.spec?.capacity?.get("storage")?.0 == "2Mi").then_some(())
            }),
        )
        .await;
        let vs = crate::volume_snapshot(name, name, Some(&self.ns));
        self.snapshots
            .create(&PostParams::default(), &vs)
            .await
            .unwrap();
        self.op();
        self.timed(
            "snapshot",
            eventually(&format!("snapshot {name} ready"), STEP, || async {
                let vs = self.snapshots.get(name).await.ok()?;
                (vs.status?.ready_to_use == Some(true)).then_some(())
            }),
        )
        .await;
        let va = crate::volume_attachment(&self.va(name), &self.driver_name, node, &pv);
        self.vas.create(&PostParams::default(), &va).await.unwrap();
        self.op();
        self.timed(
            "attach",
            eventually(&format!("{name} attached"), STEP, || async {
                let va = self.vas.get(&self.va(name)).await.ok()?;
                va.status?.attached.then_some(())
            }),
        )
        .await;
        pv
    }

    /// Detaches claim `name`, deletes its snapshot, then the claim, each to the end.
    pub async fn wither(&self, name: &str, pv: &str) {
        self.vas
            .delete(&self.va(name), &DeleteParams::default())
            .await
            .unwrap();
        self.op();
        self.timed("detach", crate::until_gone(&self.vas, &self.va(name), STEP))
            .await;
        let content = self
            .snapshots
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.bound_volume_snapshot_content_name)
            .unwrap();
        self.snapshots
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        self.op();
        self.timed(
            "delete snapshot",
            crate::until_gone(&self.contents, &content, STEP),
        )
        .await;
        self.pvcs
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        self.op();
        self.timed("delete volume", crate::until_gone(&self.pvs, pv, STEP))
            .await;
    }

    fn va(&self, claim: &str) -> String {
        format!("{}-{claim}", self.ns)
    }

    /// One slot: `lives` whole lives, then one left mid-life (`s<slot>-kept`).
    pub async fn slot(&self, slot: usize, lives: usize) {
        let node = &self.nodes[slot % self.nodes.len()];
        for life in 0..lives {
            let name = format!("s{slot}-{life}");
            let pv = self.grow(&name, node).await;
            self.wither(&name, &pv).await;
        }
        self.grow(&format!("s{slot}-kept"), node).await;
    }
}
