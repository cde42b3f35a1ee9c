//! Leader election of two replicas of csi-controller-manager on one driver (issue 16): the leader
//! is stopped with SIGTERM, then (restarted as the standby, the other now leading) SIGKILL. A
//! claim created at the moment of each stop is provisioned exactly once (the driver sees one
//! CreateVolume), the standby does not call the driver before it holds every Lease, and the
//! measured handover and failover times are printed (`--nocapture`) and bounded loosely, since
//! the machine may be loaded; `e2e/bench/leader-election.sh` measures them properly.
//!
//! Short durations (4 s / 3 s / 1 s) keep the test quick; the Leases live in `default`, named after
//! the test's own driver. Needs `e2e/cluster up` and KUBECONFIG; the binary is found next to the
//! test executable (or `OURS_BIN`).
#![cfg(feature = "cluster")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use controller_kit::leader::sanitize_name;
use csi_mock::Method;
use e2e::{ManagerProcess, OwnDriver, claim, clients, eventually, storage_class};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use tokio_util::sync::CancellationToken;

const LEASE_DURATION: Duration = Duration::from_secs(4);
const RETRY_PERIOD: Duration = Duration::from_secs(1);
const LEASE_NAMESPACE: &str = "default";
/// A graceful handover: the Leases are released on shutdown and the standby watches them.
const SIGTERM_BOUND: Duration = Duration::from_secs(5);
/// Slack for a loaded machine on top of lease duration + retry period.
const MARGIN: Duration = Duration::from_secs(5);

fn replica_args(identity: &str) -> Vec<String> {
    [
        "--controllers=provisioner,attacher",
        "--leader-election",
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=3s",
        "--leader-election-retry-period=1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--leader-election-namespace={LEASE_NAMESPACE}"),
        format!("--leader-election-identity={identity}"),
    ])
    .collect()
}

/// The Leases of the provisioner (primary) and the attacher, as the Go sidecars name them.
struct Leases {
    api: Api<Lease>,
    names: [String; 2],
}

impl Leases {
    fn new(client: kube::Client, driver: &str) -> Self {
        Self {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            names: [
                sanitize_name(driver),
                sanitize_name(&format!("external-attacher-leader-{driver}")),
            ],
        }
    }

    /// The holder of both Leases if one identity holds both, else `None`.
    async fn common_holder(&self) -> Option<String> {
        let mut holders = Vec::new();
        for name in &self.names {
            let lease = self.api.get_opt(name).await.ok()??;
            holders.push(lease.spec?.holder_identity.unwrap_or_default());
        }
        (!holders[0].is_empty() && holders[0] == holders[1]).then(|| holders[0].clone())
    }

    /// Waits until `who` holds both Leases; returns when that was seen.
    async fn wait_held_by(&self, who: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.common_holder().await.as_deref() == Some(who) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{who} did not hold every Lease within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn delete(&self) {
        for name in &self.names {
            let _ = self.api.delete(name, &DeleteParams::default()).await;
        }
    }
}

/// Watches, until stopped, that no CreateVolume reaches the driver while `successor` does not
/// hold every Lease: the counter is read before the Leases, so a call counted while the Leases
/// show another holder happened before the successor held them all.
fn watch_for_early_calls(
    own: &OwnDriver,
    leases: Arc<Leases>,
    successor: &'static str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<bool> {
    let driver = own.driver.clone();
    let baseline = driver.calls(Method::CreateVolume);
    tokio::spawn(async move {
        let mut early = false;
        while !stop.is_cancelled() {
            let calls = driver.calls(Method::CreateVolume);
            let holder = leases.common_holder().await;
            if calls > baseline && holder.as_deref() != Some(successor) {
                early = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        early
    })
}

async fn wait_bound(pvcs: &Api<PersistentVolumeClaim>, name: &str) -> Instant {
    eventually(
        &format!("claim {name} to be bound"),
        Duration::from_secs(60),
        || async {
            let pvc = pvcs.get(name).await.ok()?;
            (pvc.status?.phase.as_deref() == Some("Bound")).then(Instant::now)
        },
    )
    .await
}

#[tokio::test]
async fn the_standby_takes_over_on_sigterm_and_sigkill_and_provisions_once() {
    let a_args = replica_args("a");
    let a_refs: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let mut own = OwnDriver::start("le", |_| {}, &a_refs).await;
    let c = clients().await;
    let leases = Arc::new(Leases::new(c.main.clone(), &own.driver_name));

    let classes: Api<StorageClass> = Api::all(c.main.clone());
    own.create_class(&own.name, Default::default()).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &own.name);

    // "a" leads; "b" is started only then (started together, either may win the primary on a
    // loaded machine), and stands by with warm caches.
    let start = Instant::now();
    leases.wait_held_by("a", Duration::from_secs(90)).await;
    println!("a holds every Lease {:?} after start", start.elapsed());
    let b_args = replica_args("b");
    let b_refs: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let mut b = ManagerProcess::new(&format!("{}-b", own.name), &own.endpoint, &b_refs);
    b.start();
    // "b" competes once it has seen "a" leading.
    eventually(
        "b to observe a leading",
        Duration::from_secs(90),
        || async {
            let log = std::fs::read_to_string(&b.log).ok()?;
            log.contains("new leader elected").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leases.common_holder().await.as_deref(), Some("a"));
    assert_eq!(own.driver.calls(Method::CreateVolume), 0);

    // SIGTERM: the leader stops its controllers and releases its Leases; "b" takes them at once.
    let stop_watch = CancellationToken::new();
    let term = Instant::now();
    let exited = own.manager.terminate(Duration::from_secs(30)).await;
    let exit_took = term.elapsed();
    // Counted from the old leader's exit: until then a call may be its own, finishing.
    let early = watch_for_early_calls(&own, leases.clone(), "b", stop_watch.clone());
    pvcs.create(
        &PostParams::default(),
        &claim("at-sigterm", &own.name, "1Mi"),
    )
    .await
    .unwrap();
    let handover = leases.wait_held_by("b", Duration::from_secs(60)).await - term;
    let bound = wait_bound(&pvcs, "at-sigterm").await - term;
    stop_watch.cancel();
    println!(
        "SIGTERM: leader exited after {exit_took:?}; standby held every Lease after {handover:?}; \
         claim created at the kill bound after {bound:?}"
    );
    assert!(exited, "the leader exits on SIGTERM");
    assert!(
        !early.await.unwrap(),
        "the standby called CreateVolume before it held every Lease"
    );
    assert_eq!(
        own.driver.calls(Method::CreateVolume),
        1,
        "the claim created at the SIGTERM was provisioned once"
    );
    assert!(
        handover < SIGTERM_BOUND,
        "SIGTERM handover took {handover:?}"
    );

    // "a" comes back as the standby; then SIGKILL of "b": no release, the Leases lapse.
    own.manager.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(leases.common_holder().await.as_deref(), Some("b"));
    let stop_watch = CancellationToken::new();
    let early = watch_for_early_calls(&own, leases.clone(), "a", stop_watch.clone());
    let kill = Instant::now();
    b.kill().await;
    pvcs.create(
        &PostParams::default(),
        &claim("at-sigkill", &own.name, "1Mi"),
    )
    .await
    .unwrap();
    let failover = leases.wait_held_by("a", Duration::from_secs(60)).await - kill;
    let bound = wait_bound(&pvcs, "at-sigkill").await - kill;
    stop_watch.cancel();
    println!(
        "SIGKILL: standby held every Lease after {failover:?} (lease duration {LEASE_DURATION:?}, \
         retry period {RETRY_PERIOD:?}); claim created at the kill bound after {bound:?}"
    );
    assert!(
        !early.await.unwrap(),
        "the standby called CreateVolume before it held every Lease"
    );
    assert_eq!(
        own.driver.calls(Method::CreateVolume),
        2,
        "the claim created at the SIGKILL was provisioned once"
    );
    assert!(
        failover < LEASE_DURATION + RETRY_PERIOD + MARGIN,
        "SIGKILL failover took {failover:?}"
    );
    assert_eq!(
        own.driver.state().volumes.len(),
        2,
        "one volume per claim, no more"
    );
    assert!(
        b.unexpected_exits.is_empty() && own.manager.unexpected_exits.is_empty(),
        "{:?} {:?}",
        b.unexpected_exits,
        own.manager.unexpected_exits
    );

    let _ = pvcs
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    let _ = classes.delete(&own.name, &DeleteParams::default()).await;
    own.stop().await;
    leases.delete().await;
}

/// Our process runs the provisioner and the attacher only (`--controllers`), so it holds their
/// Leases and leaves the resizer's: an upstream csi-resizer beside it, with leader election on,
/// becomes leader and expands a claim.
#[tokio::test]
async fn an_upstream_resizer_beside_us_takes_its_lease_and_expands() {
    let own = OwnDriver::start(
        "le-resizer",
        |_| {},
        &[
            "--controllers=provisioner,attacher",
            "--leader-election",
            "--leader-election-lease-duration=4s",
            "--leader-election-renew-deadline=3s",
            "--leader-election-retry-period=1s",
            &format!("--leader-election-namespace={LEASE_NAMESPACE}"),
            "--leader-election-identity=ours",
        ],
    )
    .await;
    let c = clients().await;
    let leases = Leases::new(c.main.clone(), &own.driver_name);
    let resizer_lease = sanitize_name(&format!("external-resizer-{}", own.driver_name));
    let mut resizer = ManagerProcess::other(
        &format!("{}-csi-resizer", own.name),
        std::path::PathBuf::from(e2e::env("RESIZER_DIR")).join("csi-resizer"),
        vec![
            format!("--kubeconfig={}", e2e::env("KUBECONFIG")),
            format!(
                "--csi-address={}",
                own.endpoint.trim_start_matches("unix://")
            ),
            "--leader-election".into(),
            format!("--leader-election-namespace={LEASE_NAMESPACE}"),
            "--leader-election-lease-duration=4s".into(),
            "--leader-election-renew-deadline=3s".into(),
            "--leader-election-retry-period=1s".into(),
        ],
    );
    resizer.start();

    leases.wait_held_by("ours", Duration::from_secs(90)).await;
    let resizer_holder = eventually(
        "the upstream csi-resizer to hold its Lease",
        Duration::from_secs(60),
        || async {
            let lease = leases.api.get_opt(&resizer_lease).await.ok()??;
            let holder = lease.spec?.holder_identity.unwrap_or_default();
            (!holder.is_empty()).then_some(holder)
        },
    )
    .await;
    assert_ne!(resizer_holder, "ours", "we left the resizer's Lease alone");
    let ours_log = std::fs::read_to_string(&own.manager.log).unwrap();
    assert!(
        ours_log.contains("leaves_to_others") && ours_log.contains(&resizer_lease),
        "the start-up log names the Lease left to others"
    );

    let classes: Api<StorageClass> = Api::all(c.main.clone());
    let mut class = storage_class(&own.name, &own.driver_name, "Delete", Default::default());
    class.allow_volume_expansion = Some(true);
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.main.clone(), &own.name);
    pvcs.create(&PostParams::default(), &claim("grow", &own.name, "1Mi"))
        .await
        .unwrap();
    wait_bound(&pvcs, "grow").await;
    let mut grown = pvcs.get("grow").await.unwrap();
    grown
        .spec
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .requests = Some(
        [(
            "storage".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Mi".into()),
        )]
        .into(),
    );
    pvcs.replace("grow", &PostParams::default(), &grown)
        .await
        .unwrap();
    eventually(
        "the upstream resizer to expand the claim",
        Duration::from_secs(90),
        || async {
            let pvc = pvcs.get("grow").await.ok()?;
            let capacity = pvc.status?.capacity?.get("storage")?.0.clone();
            (capacity == "2Mi").then_some(())
        },
    )
    .await;
    assert_eq!(own.driver.calls(Method::ControllerExpandVolume), 1);
    let volume = own.driver.state().volumes.into_values().next().unwrap();
    assert_eq!(volume.capacity_bytes, 2 * 1024 * 1024);
    assert_eq!(
        leases.common_holder().await.as_deref(),
        Some("ours"),
        "we kept our own Leases throughout"
    );

    resizer.kill().await;
    let _ = pvcs.delete("grow", &DeleteParams::default()).await;
    let _ = classes.delete(&own.name, &DeleteParams::default()).await;
    own.stop().await;
    leases.delete().await;
    let _ = leases
        .api
        .delete(&resizer_lease, &DeleteParams::default())
        .await;
}
