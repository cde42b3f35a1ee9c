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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csi_mock::Fault;
use e2e::OwnDriver;
use e2e::churn::Churn;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Claims living their lives at once.
const SLOTS: usize = 20;

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
    let churn = Churn::prepare(&own).await;

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
    let operations = churn.operations();
    eprintln!(
        "{operations} operations, {kills} kills in {:?}",
        started.elapsed()
    );
    eprintln!("time waited per step, all slots: {:?}", churn.waits());
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
        let pv = churn.pv_of(&name).await;
        churn.wither(&name, &pv).await;
    }
    e2e::state::assert_driver_matches_cluster(&own.driver, &own.driver_name).await;
    let state = own.driver.state();
    assert!(
        state.volumes.is_empty() && state.snapshots.is_empty(),
        "the driver holds nothing"
    );
    assert_eq!(churn.claims_left().await, 0, "no claim is stuck");
    churn.remove().await;
    own.stop().await;
}
