//! Crash safety across controllers (issue 15, item 4): one manager running all five
//! controllers is SIGKILLed at random instants (and started again at once) while claims go
//! through their whole life concurrently: created, expanded, snapshotted, attached, detached,
//! the snapshot deleted, the claim deleted. Every driver call does its work and then waits
//! before answering, so many kills land between the work and the answer (the answer is lost).
//! At the end, with some claims left mid-life on purpose, the driver's volumes, sizes,
//! publications and snapshots equal exactly what the cluster's objects name; after deleting
//! everything, the driver holds nothing.
//!
//! `CHURN_SEED` replays a run's kill instants, `CHURN_CYCLES` sets the full lives per slot
//! (default 3: 20 slots x 3 lives x 7 operations + 20 x 4 left mid-life = 500 operations).
//! Runs the cluster-wide snapshot controller, so the file holds one test.
#![cfg(feature = "cluster")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use csi_mock::Fault;
use e2e::{OwnDriver, claim, clients, eventually};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use snapshotter::types::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

/// Claims living their lives at once.
const SLOTS: usize = 20;
/// Each step of a life may wait through several kills and restarts.
const STEP: Duration = Duration::from_secs(180);

struct Churn {
    ns: String,
    driver_name: String,
    nodes: Vec<String>,
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    vas: Api<VolumeAttachment>,
    snapshots: Api<VolumeSnapshot>,
    contents: Api<VolumeSnapshotContent>,
    operations: AtomicU64,
    /// Time spent waiting, per step.
    waits: std::sync::Mutex<std::collections::BTreeMap<&'static str, Duration>>,
}

impl Churn {
    fn op(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }

    async fn timed<T>(&self, step: &'static str, wait: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = wait.await;
        *self.waits.lock().unwrap().entry(step).or_default() += started.elapsed();
        out
    }

    /// Creates, expands, snapshots and attaches claim `name`; returns its PV.
    async fn grow(&self, name: &str, node: &str) -> String {
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
        let vs = e2e::volume_snapshot(name, name, Some(&self.ns));
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
        let va = e2e::volume_attachment(&self.va(name), &self.driver_name, node, &pv);
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
    async fn wither(&self, name: &str, pv: &str) {
        self.vas
            .delete(&self.va(name), &DeleteParams::default())
            .await
            .unwrap();
        self.op();
        self.timed("detach", e2e::until_gone(&self.vas, &self.va(name), STEP))
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
            e2e::until_gone(&self.contents, &content, STEP),
        )
        .await;
        self.pvcs
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        self.op();
        self.timed("delete volume", e2e::until_gone(&self.pvs, pv, STEP))
            .await;
    }

    fn va(&self, claim: &str) -> String {
        format!("{}-{claim}", self.ns)
    }

    /// One slot: `lives` whole lives, then one left mid-life.
    async fn slot(&self, slot: usize, lives: usize) {
        let node = &self.nodes[slot % self.nodes.len()];
        for life in 0..lives {
            let name = format!("s{slot}-{life}");
            let pv = self.grow(&name, node).await;
            self.wither(&name, &pv).await;
        }
        self.grow(&format!("s{slot}-kept"), node).await;
    }
}

#[tokio::test]
async fn kills_during_mixed_churn_leak_and_lose_nothing() {
    let seed: u64 = std::env::var("CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let lives: usize = std::env::var("CHURN_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    eprintln!("CHURN_SEED={seed} CHURN_CYCLES={lives}");
    let mut own = OwnDriver::start(
        "churn",
        |_| {},
        &[
            "--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller",
            "--retry-interval-max=5s",
        ],
    )
    .await;
    // Every call does its work, then waits before answering: a kill in that window loses the
    // answer, the case that leaks if anything does.
    own.driver
        .inject_all(Fault::delay(Duration::from_millis(300)).after_handling());
    let c = clients().await;
    let ns = own.name.clone();
    own.create_class(&ns, Default::default()).await;
    let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(c.main.clone());
    let class = serde_json::from_value(
        json!({"metadata": {"name": ns}, "driver": own.driver_name, "deletionPolicy": "Delete"}),
    )
    .unwrap();
    snapshot_classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let marks = e2e::mark_nodes(&own.driver_name, &format!("{ns}/zone"), |_| "z".into()).await;
    let churn = Churn {
        ns: ns.clone(),
        driver_name: own.driver_name.clone(),
        nodes: marks.zones.iter().map(|(n, _)| n.clone()).collect(),
        pvcs: Api::namespaced(c.main.clone(), &ns),
        pvs: Api::all(c.main.clone()),
        vas: Api::all(c.main.clone()),
        snapshots: Api::namespaced(c.main.clone(), &ns),
        contents: Api::all(c.main.clone()),
        operations: AtomicU64::new(0),
        waits: Default::default(),
    };

    let started = Instant::now();
    let done = AtomicBool::new(false);
    let manager = &mut own.manager;
    let killer = async {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut kills = 0u32;
        while !done.load(Ordering::Relaxed) {
            // 2 to 6 s apart: the manager is up most of the time, and most steps meet a kill.
            let wait = Duration::from_millis(rng.random_range(2000..6000));
            let step = Duration::from_millis(100);
            let mut waited = Duration::ZERO;
            while waited < wait && !done.load(Ordering::Relaxed) {
                tokio::time::sleep(step).await;
                waited += step;
            }
            if done.load(Ordering::Relaxed) {
                break;
            }
            manager.kill().await;
            manager.start();
            kills += 1;
        }
        kills
    };
    let work = async {
        futures::future::join_all((0..SLOTS).map(|s| churn.slot(s, lives))).await;
        done.store(true, Ordering::Relaxed);
    };
    let (kills, ()) = futures::join!(killer, work);
    let operations = churn.operations.load(Ordering::Relaxed);
    eprintln!(
        "{operations} operations, {kills} kills in {:?}",
        started.elapsed()
    );
    eprintln!(
        "time waited per step, all slots: {:?}",
        churn.waits.lock().unwrap()
    );
    assert!(kills >= 10, "the manager was killed often ({kills})");

    // The kept claims stay mid-life: attached, expanded, snapshotted. Let the manager settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    e2e::state::assert_driver_matches_cluster(&own.driver, &own.driver_name).await;
    let held = e2e::state::Holdings::of_driver(&own.driver);
    assert_eq!(held.volumes.len(), SLOTS, "one volume per kept claim");
    assert_eq!(
        held.publications.len(),
        SLOTS,
        "one publication per kept claim"
    );
    assert_eq!(held.snapshots.len(), SLOTS, "one snapshot per kept claim");
    assert!(
        held.volumes.values().all(|b| *b == 2 << 20),
        "every kept volume expanded"
    );

    // Then everything goes, with the manager up: the driver holds nothing.
    own.driver.clear_faults();
    for slot in 0..SLOTS {
        let name = format!("s{slot}-kept");
        let pv = churn
            .pvcs
            .get(&name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .volume_name
            .unwrap();
        churn.wither(&name, &pv).await;
    }
    e2e::state::assert_driver_matches_cluster(&own.driver, &own.driver_name).await;
    let state = own.driver.state();
    assert!(
        state.volumes.is_empty() && state.snapshots.is_empty(),
        "the driver holds nothing"
    );
    let leftovers = churn
        .pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(leftovers, 0, "no claim is stuck");

    let classes: Api<StorageClass> = Api::all(c.main.clone());
    let _ = classes.delete(&ns, &DeleteParams::default()).await;
    let _ = snapshot_classes.delete(&ns, &DeleteParams::default()).await;
    marks.remove().await;
    own.stop().await;
}
