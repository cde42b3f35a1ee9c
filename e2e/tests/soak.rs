//! Soak (issue 15, item 9): claims live their whole lives against one manager running all five
//! controllers for `SOAK_SECS` (default 40 s in the test command; `e2e/bench/soak.sh` runs an
//! hour), while the manager's resident memory, open file descriptors and threads are sampled.
//! At the end the driver holds exactly what the cluster names, and nothing once the last claims
//! are gone. Runs of 10 minutes or more must also be flat: the last fifth of the samples no
//! higher than the first fifth after warm-up, within a margin (memory +25 % and 8 MiB, file
//! descriptors +8, threads +4). `SOAK_REPORT` names a JSON file for the samples.
#![cfg(feature = "cluster")]

use std::time::{Duration, Instant};

use e2e::OwnDriver;
use e2e::churn::Churn;

/// Claims living their lives at once.
const SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    operations: u64,
}

fn sample(pid: u32, started: Instant, operations: u64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        secs: started.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
        operations,
    })
}

/// Mean and maximum of one measure over `samples`.
fn mean_max(samples: &[Sample], measure: impl Fn(&Sample) -> u64) -> (f64, u64) {
    let values: Vec<u64> = samples.iter().map(measure).collect();
    let mean = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    (mean, values.into_iter().max().unwrap_or(0))
}

#[tokio::test]
async fn churn_for_a_while_leaves_memory_files_and_threads_flat() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let every = Duration::from_secs(if secs >= 600 { 10 } else { 2 });
    let mut own = OwnDriver::start(
        "soak",
        |_| {},
        &["--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller"],
    )
    .await;
    let churn = Churn::prepare(&own).await;
    let pid = own.manager.pid().expect("the manager runs");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let samples = std::sync::Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let sampler = async {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(s) = sample(pid, started, churn.operations()) {
                samples.lock().unwrap().push(s);
            }
            tokio::time::sleep(every).await;
        }
    };
    let work = async {
        futures::future::join_all((0..SLOTS).map(|slot| {
            let churn = &churn;
            let node_slot = slot;
            async move {
                let mut life = 0;
                while Instant::now() < deadline {
                    let name = format!("s{slot}-{life}");
                    let pv = churn.grow(&name, &churn.node(node_slot)).await;
                    churn.wither(&name, &pv).await;
                    life += 1;
                }
            }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    futures::join!(sampler, work);
    // Quiet for a moment, then the last sample.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let last = sample(pid, started, churn.operations()).expect("the manager still runs");
    let mut samples = samples.into_inner().unwrap();
    samples.push(last);
    assert!(own.manager.is_running(), "the manager is up");
    e2e::state::assert_driver_matches_cluster(&own.driver, &own.driver_name).await;
    let state = own.driver.state();
    assert!(
        state.volumes.is_empty() && state.snapshots.is_empty(),
        "the driver holds nothing"
    );
    assert_eq!(churn.claims_left().await, 0, "no claim is stuck");

    // Warm-up is the first tenth; compare the next fifth with the last fifth.
    let n = samples.len();
    let first = &samples[n / 10..(n / 10 + n / 5).max(n / 10 + 1).min(n)];
    let tail = &samples[n - (n / 5).max(1)..];
    let (rss0, _) = mean_max(first, |s| s.rss_kib);
    let (rss1, rss_peak) = mean_max(tail, |s| s.rss_kib);
    let (_, fds0) = mean_max(first, |s| s.fds);
    let (_, fds1) = mean_max(tail, |s| s.fds);
    let (_, threads0) = mean_max(first, |s| s.threads);
    let (_, threads1) = mean_max(tail, |s| s.threads);
    let operations = churn.operations();
    eprintln!(
        "{operations} operations in {:?} ({n} samples): RSS {:.1} MiB early, {:.1} MiB late \
         (peak {:.1} MiB); file descriptors {fds0} early, {fds1} late; threads {threads0} early, \
         {threads1} late",
        started.elapsed(),
        rss0 / 1024.0,
        rss1 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        let report = serde_json::json!({
            "seconds": secs, "operations": operations, "slots": SLOTS, "samples": samples,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        eprintln!("samples written to {path}");
    }
    if secs >= 600 {
        assert!(
            rss1 <= rss0 * 1.25 + 8.0 * 1024.0,
            "memory grew: {rss0:.0} KiB early, {rss1:.0} KiB late"
        );
        assert!(fds1 <= fds0 + 8, "file descriptors grew: {fds0} → {fds1}");
        assert!(
            threads1 <= threads0 + 4,
            "threads grew: {threads0} → {threads1}"
        );
    }
    churn.remove().await;
    own.stop().await;
}
