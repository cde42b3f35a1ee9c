//! Failure isolation (issue 15, item 5), on the cluster: in one manager running all five
//! controllers, every reconcile of one claim panics (the debug builds' test switch
//! `CSI_CONTROLLER_MANAGER_PANIC_KEY`), while a tenfold surge of claims arrives and other claims
//! go through expansion, snapshots and attachments. The panic is caught, counted and retried
//! with backoff (no hot loop), the operator sees it in `/debug/queues`, the process stays up,
//! every other object is served, and the queues and memory stay bounded by the objects.
//!
//! Runs the cluster-wide snapshot controller, so the file holds one test.
#![cfg(feature = "cluster")]

use std::time::{Duration, Instant};

use controller_kit::worker::PANIC_KEY_ENV;
use e2e::churn::Churn;
use e2e::{OwnDriver, claim, clients, eventually};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// Claims before the surge, and the surge (ten times as many).
const BASE: usize = 20;
const SURGE: usize = 10 * BASE;
/// Claims going through their whole life meanwhile (the other controllers' work).
const LIVES: usize = 5;

/// The value of a metric line `name{labels} value` whose name and labels start with `prefix`,
/// summed over matching lines, and the largest single one.
fn metric(text: &str, prefix: &str) -> (f64, f64) {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (
        values.iter().sum(),
        values.iter().copied().fold(0.0, f64::max),
    )
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn all_bound(pvcs: &Api<PersistentVolumeClaim>, except: &str) -> Option<usize> {
    let list = pvcs.list(&ListParams::default()).await.ok()?;
    let pending = list
        .items
        .iter()
        .filter(|c| c.metadata.name.as_deref() != Some(except))
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"))
        .count();
    (pending == 0).then_some(list.items.len())
}

#[tokio::test]
async fn a_panicking_claim_and_a_tenfold_surge_leave_the_rest_served() {
    let port = e2e::free_port();
    let http = format!("--http-endpoint=127.0.0.1:{port}");
    let mut own = OwnDriver::prepare(
        "isolation",
        |_| {},
        &[
            "--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller",
            &http,
        ],
    )
    .await;
    let churn = Churn::prepare(&own).await;
    let ns = own.name.clone();
    let poison = "poison";
    let poison_key = format!("provisioner/{ns}/{poison}");
    // Without RUST_BACKTRACE: a debug build's first backtrace loads its debug info (over
    // 100 MiB), which says nothing about the controllers' memory.
    own.manager
        .restart_with(
            &[],
            &[
                (PANIC_KEY_ENV, poison_key.as_str()),
                ("RUST_BACKTRACE", "0"),
            ],
        )
        .await;
    let pid = own.manager.pid().expect("the manager runs");
    let c = clients().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &ns);
    let create = |name: String| {
        let pvcs = pvcs.clone();
        let class = ns.clone();
        async move {
            pvcs.create(&PostParams::default(), &claim(&name, &class, "1Mi"))
                .await
                .unwrap();
        }
    };

    // The base load, then the poisoned claim.
    futures::future::join_all((0..BASE).map(|i| create(format!("base-{i}")))).await;
    eventually("the base claims Bound", Duration::from_secs(120), || {
        all_bound(&pvcs, poison)
    })
    .await;
    let rss_base = rss_mib(pid);
    create(poison.to_string()).await;
    let poisoned_at = Instant::now();

    // The surge, with whole lives beside it; memory and queue depth sampled meanwhile.
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let sampler = async {
        let mut peaks = (rss_base, 0.0f64, 0.0f64);
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let text = e2e::http_get(port, "/metrics").await;
            let (total, largest) = metric(&text, "workqueue_depth{");
            peaks = (
                peaks.0.max(rss_mib(pid)),
                peaks.1.max(total),
                peaks.2.max(largest),
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peaks
    };
    let work = async {
        let surge = futures::future::join_all((0..SURGE).map(|i| create(format!("surge-{i}"))));
        let lives = futures::future::join_all((0..LIVES).map(|i| {
            let churn = &churn;
            async move {
                churn.grow(&format!("life-{i}"), &churn.node(i)).await;
            }
        }));
        futures::join!(surge, lives);
        let claims = eventually("every other claim Bound", Duration::from_secs(300), || {
            all_bound(&pvcs, poison)
        })
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        claims
    };
    let (peaks, claims) = futures::join!(sampler, work);
    let served = started.elapsed();
    assert_eq!(claims, BASE + SURGE + LIVES + 1, "every claim exists");

    // The poisoned claim: panics counted, retried with backoff, visible to the operator.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(poisoned_at.elapsed())).await;
    let text = e2e::http_get(port, "/metrics").await;
    let (panics, _) = metric(
        &text,
        r#"csi_controller_reconcile_panics_total{controller="provisioner"}"#,
    );
    let window = poisoned_at.elapsed();
    let queues = e2e::http_get(port, "/debug/queues").await;
    let healthz = e2e::http_get(port, "/healthz").await;
    eprintln!(
        "{SURGE} claims surged onto {BASE} (+{LIVES} whole lives) served in {served:?}; \
         {panics} panics of the poisoned claim in {window:?}; peak RSS {:.1} MiB (base \
         {rss_base:.1} MiB), peak queue depth {} in all, {} in one queue",
        peaks.0, peaks.1, peaks.2
    );
    assert!(own.manager.is_running(), "the process stays up");
    assert!(healthz.contains("ok"), "liveness: {healthz}");
    assert!(panics >= 3.0, "the panic is retried and counted ({panics})");
    // Backoff from 1 s doubling: about log2(window) passes; a hot loop would be thousands.
    assert!(
        panics <= 12.0,
        "the panicking claim loops: {panics} panics in {window:?}"
    );
    assert!(
        queues.contains(poison) && queues.contains("panicked"),
        "/debug/queues shows the stuck claim: {queues}"
    );
    // Each key is queued once: never more entries than objects.
    let objects = (BASE + SURGE + 1 + 4 * LIVES) as f64;
    assert!(
        peaks.1 <= 2.0 * objects,
        "queues grew beyond the objects: {}",
        peaks.1
    );
    assert!(
        peaks.0 <= rss_base + 128.0,
        "memory grew by {:.1} MiB for {objects} objects",
        peaks.0 - rss_base
    );

    // Everything goes; the driver ends empty.
    let _ = pvcs.delete(poison, &DeleteParams::default()).await;
    for i in 0..LIVES {
        let name = format!("life-{i}");
        let pv = churn.pv_of(&name).await;
        churn.wither(&name, &pv).await;
    }
    let _ = pvcs
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    eventually("every volume deleted", Duration::from_secs(300), || async {
        own.driver.state().volumes.is_empty().then_some(())
    })
    .await;
    e2e::state::assert_driver_matches_cluster(&own.driver, &own.driver_name).await;
    churn.remove().await;
    own.stop().await;
}
