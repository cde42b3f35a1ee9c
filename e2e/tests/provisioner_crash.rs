//! Crash safety of the provisioner (issue 4): csi-controller-manager is SIGKILLed at random
//! instants, many of them just after a CreateVolume or DeleteVolume reached the driver, while
//! claims are created and deleted (many mid-flight) and the driver hangs, slows down, fails, or
//! does the work and loses the answer. At the end the driver's volumes must be exactly the
//! volumes of the PVs in the cluster: zero leaked, zero lost.
//!
//! The test runs its own csi-mock (in this process, under a driver name of its own) and its own
//! csi-controller-manager process (`--controllers=provisioner`, no leader election: a SIGKILLed
//! leader would otherwise hold its Lease for 15 s at every kill). The cluster's own controllers
//! ignore this driver's objects. Needs `e2e/cluster up` and KUBECONFIG; the binary is found next
//! to the test executable (or `OURS_BIN`). `CRASH_SEED` replays a run, `CRASH_CYCLES` changes
//! the number of claims (default 200).
#![cfg(feature = "cluster")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use csi_mock::{Fault, Method, MockDriver};
use e2e::{ManagerProcess, OwnDriver, claim, clients, eventually, journal_entries, storage_class};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Claims kept to the end (every tenth): the final comparison is not between two empty sets.
const KEEP_EVERY: u64 = 10;
/// Claims in flight at once.
const CONCURRENCY: usize = 10;
/// The intent finalizer; a claim still carrying it at the end is stuck.
const INTENT_FINALIZER: &str = "provisioner.csi-controller-manager.io/volume-intent";

/// Faults the driver suffers, one call at a time.
fn random_fault(rng: &mut StdRng) -> (Method, Fault) {
    match rng.random_range(0..8) {
        // The volume is created, the answer lost: the most dangerous case for leaks.
        0 => (
            Method::CreateVolume,
            Fault::error(Code::DeadlineExceeded, "answer lost").after_handling(),
        ),
        1 => (
            Method::CreateVolume,
            Fault::error(Code::Aborted, "answer lost").after_handling(),
        ),
        // Slow: kills land in the middle of the call.
        2 => (
            Method::CreateVolume,
            Fault::delay(Duration::from_millis(1500)),
        ),
        // Never answers: the manager's --timeout (2 s) gives up, the call may be in flight.
        3 => (Method::CreateVolume, Fault::hang()),
        4 => (
            Method::CreateVolume,
            Fault::error(Code::Unavailable, "busy"),
        ),
        // A final error before anything was created: the intent is released and re-recorded.
        5 => (Method::CreateVolume, Fault::error(Code::Internal, "boom")),
        6 => (
            Method::DeleteVolume,
            Fault::error(Code::Unavailable, "busy"),
        ),
        _ => (
            Method::DeleteVolume,
            Fault::delay(Duration::from_millis(1000)),
        ),
    }
}

#[derive(Default)]
struct Counts {
    deleted_at_once: AtomicU64,
    deleted_after_bound: AtomicU64,
    deleted_after_a_while: AtomicU64,
    never_bound_in_time: AtomicU64,
    kills: AtomicU64,
    kills_after_a_call: AtomicU64,
    faults: AtomicU64,
}

/// One claim's life: created, then deleted at once, after a random while, or once bound; every
/// tenth claim is kept.
async fn claim_life(
    i: u64,
    seed: u64,
    pvcs: Api<PersistentVolumeClaim>,
    class: String,
    counts: Arc<Counts>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let name = format!("c{i:03}");
    pvcs.create(&PostParams::default(), &claim(&name, &class, "1Mi"))
        .await
        .unwrap_or_else(|e| panic!("create claim {name}: {e}"));
    if i.is_multiple_of(KEEP_EVERY) {
        return;
    }
    match rng.random_range(0..3) {
        0 => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            counts.deleted_at_once.fetch_add(1, Ordering::Relaxed);
        }
        1 => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
            counts.deleted_after_a_while.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let bound =
                    pvcs.get(&name).await.ok().is_some_and(|p| {
                        p.status.and_then(|s| s.phase).as_deref() == Some("Bound")
                    });
                if bound {
                    counts.deleted_after_bound.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if Instant::now() > deadline {
                    counts.never_bound_in_time.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    pvcs.delete(&name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete claim {name}: {e}"));
}

/// Kills and restarts the manager until `stop`: half the kills at a random instant, half right
/// after the driver received a CreateVolume or DeleteVolume.
async fn killer(
    mut manager: ManagerProcess,
    driver: MockDriver,
    seed: u64,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> ManagerProcess {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    while !stop.is_cancelled() {
        if rng.random_bool(0.5) {
            let method = if rng.random_bool(0.7) {
                Method::CreateVolume
            } else {
                Method::DeleteVolume
            };
            let seen = driver.calls(method);
            let arrived = driver
                .wait_for_calls(method, seen + 1, Duration::from_secs(3))
                .await;
            if arrived {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                counts.kills_after_a_call.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let pause = Duration::from_millis(rng.random_range(300..3000));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => break,
            }
        }
        manager.kill().await;
        counts.kills.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        manager.start();
    }
    manager
}

/// Queues a random fault now and then, keeping at most a few queued.
async fn fault_injector(
    driver: MockDriver,
    seed: u64,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(33));
    while !stop.is_cancelled() {
        if driver.faults().len() < 3 {
            let (method, fault) = random_fault(&mut rng);
            driver.inject(method, fault.once());
            counts.faults.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// What the cluster and the driver hold for this driver.
#[derive(Debug)]
struct Census {
    /// Claims left in the namespace: name -> (phase, finalizers).
    claims: BTreeMap<String, (String, Vec<String>)>,
    /// PVs of the driver: volume handle -> (PV name, claim name, phase).
    pvs: BTreeMap<String, (String, String, String)>,
    /// Volumes on the driver: id -> name (the PV name it was created for).
    volumes: BTreeMap<String, String>,
    /// Volume names with an intent still recorded in the journal.
    journal: Vec<String>,
}

async fn census(
    client: &kube::Client,
    pvcs: &Api<PersistentVolumeClaim>,
    pvs: &Api<PersistentVolume>,
    driver: &MockDriver,
    driver_name: &str,
) -> Option<Census> {
    let claims = pvcs
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .map(|p| {
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            let finalizers = p.metadata.finalizers.unwrap_or_default();
            (p.metadata.name.unwrap_or_default(), (phase, finalizers))
        })
        .collect();
    let pvs = pvs
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .filter_map(|pv| {
            let spec = pv.spec?;
            let csi = spec.csi?;
            (csi.driver == driver_name).then(|| {
                let claim = spec.claim_ref.and_then(|r| r.name).unwrap_or_default();
                let phase = pv.status.and_then(|s| s.phase).unwrap_or_default();
                (
                    csi.volume_handle,
                    (pv.metadata.name.unwrap_or_default(), claim, phase),
                )
            })
        })
        .collect();
    let volumes = driver
        .state()
        .volumes
        .into_iter()
        .map(|(id, v)| (id, v.name))
        .collect();
    Some(Census {
        claims,
        pvs,
        volumes,
        journal: journal_entries(client, driver_name).await,
    })
}

impl Census {
    /// Converged: only the kept claims remain, all Bound and without our intent finalizer, the
    /// journal holds no intent, and the driver's volumes are exactly the PVs' volumes, one per
    /// kept claim.
    fn converged(&self, kept: &BTreeSet<String>) -> bool {
        let claims_ok = self.claims.keys().cloned().collect::<BTreeSet<_>>() == *kept
            && self.claims.values().all(|(phase, finalizers)| {
                phase == "Bound" && !finalizers.iter().any(|f| f == INTENT_FINALIZER)
            });
        let pv_claims: BTreeSet<String> = self.pvs.values().map(|(_, c, _)| c.clone()).collect();
        claims_ok
            && self.journal.is_empty()
            && self.pvs.keys().eq(self.volumes.keys())
            && pv_claims == *kept
            && self.pvs.len() == kept.len()
    }

    fn leaked(&self) -> Vec<(&String, &String)> {
        self.volumes
            .iter()
            .filter(|(id, _)| !self.pvs.contains_key(*id))
            .collect()
    }

    fn lost(&self) -> Vec<&String> {
        self.pvs
            .keys()
            .filter(|v| !self.volumes.contains_key(*v))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_volume_is_leaked_or_lost_across_200_sigkills() {
    let cycles: u64 = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!(
        "crash test: seed {seed} (CRASH_SEED={seed} replays the same choices), {cycles} claims"
    );
    let started = Instant::now();

    // The test's own driver and manager; the cluster's controllers ignore this driver.
    let mut own = OwnDriver::start(
        "crash",
        |_| {},
        &[
            "--controllers=provisioner",
            "--timeout=2s",
            "--retry-interval-start=500ms",
            "--retry-interval-max=5s",
        ],
    )
    .await;
    let (name, driver_name, driver) = (
        own.name.clone(),
        own.driver_name.clone(),
        own.driver.clone(),
    );
    println!("crash test: manager log {}", own.manager.log.display());
    let c = clients().await;
    let classes: Api<StorageClass> = Api::all(c.main.clone());
    classes
        .create(
            &PostParams::default(),
            &storage_class(&name, &driver_name, "Delete", BTreeMap::new()),
        )
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &name);
    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    // The killer owns the manager until the churn ends.
    let manager = std::mem::replace(
        &mut own.manager,
        ManagerProcess::new(&name, &own.endpoint, &[]),
    );

    // Claims come and go while the manager is killed and the driver misbehaves.
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let killing = tokio::spawn(killer(
        manager,
        driver.clone(),
        seed,
        counts.clone(),
        stop.clone(),
    ));
    let faulting = tokio::spawn(fault_injector(
        driver.clone(),
        seed,
        counts.clone(),
        stop.clone(),
    ));
    futures::stream::iter(0..cycles)
        .for_each_concurrent(CONCURRENCY, |i| {
            claim_life(i, seed, pvcs.clone(), name.clone(), counts.clone())
        })
        .await;
    stop.cancel();
    faulting.await.unwrap();
    let manager = killing.await.unwrap();
    driver.clear_faults();
    let churn = started.elapsed();

    // Left alone, the manager must converge to exactly one volume per kept claim.
    let kept: BTreeSet<String> = (0..cycles)
        .filter(|i| i.is_multiple_of(KEEP_EVERY))
        .map(|i| format!("c{i:03}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let last = loop {
        let now = census(&c.main, &pvcs, &pvs, &driver, &driver_name).await;
        match now {
            Some(n) if n.converged(&kept) => break n,
            Some(n) if Instant::now() > deadline => {
                panic!(
                    "no convergence in 180 s (seed {seed}).\nleaked volumes (on the driver, no PV; id, name): {:?}\n\
                     lost volumes (PV, none on the driver): {:?}\nclaims left: {:?}\nPVs: {:?}\njournal: {:?}\n\
                     manager log: {}",
                    n.leaked(),
                    n.lost(),
                    n.claims,
                    n.pvs,
                    n.journal,
                    manager.log.display()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let converge = started.elapsed() - churn;
    let state = driver.state();
    println!(
        "crash test: {cycles} claims in {:.0?} with {} SIGKILLs ({} right after a driver call), {} faults; \
         deleted at once {}, after a while {}, once bound {}, not bound within 120 s {}; \
         CreateVolume calls {}, DeleteVolume calls {}, volumes ever created {}; converged in {:.0?}: \
         {} claims, {} PVs, {} driver volumes, 0 leaked, 0 lost",
        churn,
        counts.kills.load(Ordering::Relaxed),
        counts.kills_after_a_call.load(Ordering::Relaxed),
        counts.faults.load(Ordering::Relaxed),
        counts.deleted_at_once.load(Ordering::Relaxed),
        counts.deleted_after_a_while.load(Ordering::Relaxed),
        counts.deleted_after_bound.load(Ordering::Relaxed),
        counts.never_bound_in_time.load(Ordering::Relaxed),
        driver.calls(Method::CreateVolume),
        driver.calls(Method::DeleteVolume),
        state.next_id,
        converge,
        last.claims.len(),
        last.pvs.len(),
        last.volumes.len(),
    );
    assert!(
        manager.unexpected_exits.is_empty(),
        "the manager exited by itself: {:?} (log {})",
        manager.unexpected_exits,
        manager.log.display()
    );
    assert!(
        counts.kills.load(Ordering::Relaxed) >= cycles / 10,
        "too few kills to mean anything"
    );

    // Deleting the kept claims deletes their volumes too; then tidy up.
    for k in &kept {
        pvcs.delete(k, &DeleteParams::default()).await.unwrap();
    }
    eventually(
        "every volume and PV of the test driver to be deleted",
        Duration::from_secs(120),
        || {
            let (client, pvcs, pvs, driver, dn) = (&c.main, &pvcs, &pvs, &driver, &driver_name);
            async move {
                let n = census(client, pvcs, pvs, driver, dn).await?;
                (n.volumes.is_empty() && n.pvs.is_empty() && n.claims.is_empty()).then_some(())
            }
        },
    )
    .await;
    classes
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    own.manager = manager;
    own.stop().await;
}
