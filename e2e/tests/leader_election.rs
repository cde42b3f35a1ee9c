//! Leader election of csi-controller-manager's replicas on one driver (issues 15 and 16):
//! - two replicas (provisioner and attacher): the leader is stopped with SIGTERM, then (restarted
//!   as the standby, the other now leading) SIGKILL; a claim created at the moment of each stop is
//!   provisioned exactly once (the driver sees one CreateVolume) and the standby does not call the
//!   driver before it holds every Lease;
//! - three replicas running all five controllers: SIGKILL of the leader, then SIGTERM of its
//!   successor; each time one replica takes all five Leases and a claim created at the stop goes
//!   through provisioning, expansion, a snapshot and an attachment, each call made once;
//! - an upstream csi-resizer beside ours takes its own Lease.
//!
//! Handover and failover times are printed (`--nocapture`) and bounded loosely, since the machine
//! may be loaded; `e2e/bench/leader-election.sh` measures them properly. Short durations (4 s /
//! 3 s / 1 s) keep the tests quick. Needs `e2e/cluster up` and KUBECONFIG; the binary is found
//! next to the test executable (or `OURS_BIN`).
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
    names: Vec<String>,
}

impl Leases {
    fn new(client: kube::Client, driver: &str) -> Self {
        Self {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            names: vec![
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
        (!holders[0].is_empty() && holders.iter().all(|h| *h == holders[0]))
            .then(|| holders[0].clone())
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

/// Waits until standby `id` has seen the leader (it competes from then on).
async fn wait_observing(r: &ManagerProcess, id: &str) {
    eventually(
        &format!("{id} to observe the leader"),
        Duration::from_secs(90),
        || async {
            let log = std::fs::read_to_string(&r.log).ok()?;
            log.contains("new leader elected").then_some(())
        },
    )
    .await;
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
    wait_observing(&b, "b").await;
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

/// Every controller, as the chart runs them.
const ALL_FIVE: &str = "--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller";

/// Three replicas running all five controllers, Leases in the test's namespace (the snapshot
/// controller's Lease name is not per driver). The leader is SIGKILLed, then its successor gets
/// SIGTERM: each time one replica takes all five Leases, no replica calls the driver before it
/// holds them all, and a claim created at the stop is provisioned, expanded, snapshotted and
/// attached by the new leader, each call made once.
#[tokio::test]
async fn three_replicas_move_every_controller_together() {
    let own = OwnDriver::prepare("le3", |_| {}, &[]).await;
    let ns = own.name.clone();
    e2e::grant_upstream_namespace_role(&ns).await;
    let args = |identity: &str| -> Vec<String> {
        [
            ALL_FIVE,
            "--leader-election",
            "--leader-election-lease-duration=4s",
            "--leader-election-renew-deadline=3s",
            "--leader-election-retry-period=1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--leader-election-namespace={ns}"),
            format!("--leader-election-identity={identity}"),
        ])
        .collect()
    };
    let replica = |identity: &str| {
        let a = args(identity);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        ManagerProcess::new(&format!("{ns}-{identity}"), &own.endpoint, &refs)
    };
    let mut replicas = vec![
        ("a", replica("a")),
        ("b", replica("b")),
        ("c", replica("c")),
    ];
    let c = clients().await;
    let d = own.driver_name.clone();
    let leases = Arc::new(Leases {
        api: Api::namespaced(c.main.clone(), &ns),
        names: vec![
            sanitize_name(&d),
            sanitize_name(&format!("external-attacher-leader-{d}")),
            sanitize_name(&format!("external-resizer-{d}")),
            sanitize_name(&format!("external-snapshotter-leader-{d}")),
            "snapshot-controller-leader".into(),
        ],
    });
    let w = Workload::new(&own, &ns).await;

    replicas[0].1.start();
    leases.wait_held_by("a", Duration::from_secs(90)).await;
    for (_, r) in &mut replicas[1..] {
        r.start();
    }
    for (id, r) in &replicas[1..] {
        wait_observing(r, id).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leases.common_holder().await.as_deref(), Some("a"));
    assert_eq!(w.calls(), 0, "no replica acted before a claim existed");

    let mut leader = "a".to_string();
    for (round, signal) in ["SIGKILL", "SIGTERM"].into_iter().enumerate() {
        let stop_watch = CancellationToken::new();
        let stopped = Instant::now();
        let r = &mut replicas.iter_mut().find(|(id, _)| *id == leader).unwrap().1;
        if signal == "SIGKILL" {
            r.kill().await;
        } else {
            assert!(
                r.terminate(Duration::from_secs(30)).await,
                "the leader exits"
            );
        }
        let early = watch_for_calls_without_a_leader(
            &w,
            leases.clone(),
            leader.clone(),
            stop_watch.clone(),
        );
        let name = format!("at-{}", signal.to_lowercase());
        w.claim(&name).await;
        let successor = eventually(
            "one replica to hold every Lease",
            Duration::from_secs(60),
            || async {
                let holder = leases.common_holder().await?;
                (holder != leader).then_some(holder)
            },
        )
        .await;
        let took = stopped.elapsed();
        w.exercise(&name).await;
        stop_watch.cancel();
        println!(
            "{signal} of {leader}: {successor} held all five Leases after {took:?}; the claim \
             created at the stop was provisioned, expanded, snapshotted and attached after {:?}",
            stopped.elapsed()
        );
        assert!(
            !early.await.unwrap(),
            "a replica called the driver before it held every Lease"
        );
        let n = round as u64 + 1;
        for method in Workload::METHODS {
            assert_eq!(own.driver.calls(method), n, "{method} once per claim");
        }
        let bound = if signal == "SIGKILL" {
            LEASE_DURATION + RETRY_PERIOD + MARGIN
        } else {
            SIGTERM_BOUND
        };
        assert!(took < bound, "{signal} failover took {took:?}");
        // The stopped replica comes back as a standby.
        let r = &mut replicas.iter_mut().find(|(id, _)| *id == leader).unwrap().1;
        r.start();
        leader = successor;
    }
    for (id, r) in &mut replicas {
        assert!(
            r.unexpected_exits.is_empty(),
            "{id}: {:?}",
            r.unexpected_exits
        );
        r.kill().await;
    }
    w.clean_up().await;
    own.stop().await;
}

/// Like [`watch_for_early_calls`] for every call of [`Workload`]: true if a call was counted
/// while no live replica held every Lease.
fn watch_for_calls_without_a_leader(
    w: &Workload,
    leases: Arc<Leases>,
    stopped: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<bool> {
    let driver = w.driver.clone();
    let calls = move || {
        Workload::METHODS
            .iter()
            .map(|m| driver.calls(*m))
            .sum::<u64>()
    };
    let baseline = calls();
    tokio::spawn(async move {
        let mut early = false;
        while !stop.is_cancelled() {
            let n = calls();
            let holder = leases.common_holder().await;
            if n > baseline && holder.is_none_or(|h| h == stopped) {
                early = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        early
    })
}

/// A claim's whole life across the controllers: provisioned, expanded, snapshotted, attached.
struct Workload {
    driver: csi_mock::MockDriver,
    driver_name: String,
    ns: String,
    node: String,
    marks: e2e::NodeMarks,
    pvcs: Api<PersistentVolumeClaim>,
    snapshots: Api<snapshotter::types::VolumeSnapshot>,
    vas: Api<k8s_openapi::api::storage::v1::VolumeAttachment>,
}

impl Workload {
    const METHODS: [Method; 4] = [
        Method::CreateVolume,
        Method::ControllerExpandVolume,
        Method::CreateSnapshot,
        Method::ControllerPublishVolume,
    ];

    async fn new(own: &OwnDriver, ns: &str) -> Self {
        let c = clients().await;
        own.create_class(ns, Default::default()).await;
        let classes: Api<snapshotter::types::VolumeSnapshotClass> = Api::all(c.main.clone());
        let class = serde_json::from_value(serde_json::json!({
            "metadata": {"name": ns}, "driver": own.driver_name, "deletionPolicy": "Delete",
        }))
        .unwrap();
        classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        let marks = e2e::mark_nodes(&own.driver_name, &format!("{ns}/zone"), |_| "z".into()).await;
        Self {
            driver: own.driver.clone(),
            driver_name: own.driver_name.clone(),
            ns: ns.to_string(),
            node: marks.zones[0].0.clone(),
            marks,
            pvcs: Api::namespaced(c.main.clone(), ns),
            snapshots: Api::namespaced(c.main.clone(), ns),
            vas: Api::all(c.main.clone()),
        }
    }

    fn calls(&self) -> u64 {
        Self::METHODS.iter().map(|m| self.driver.calls(*m)).sum()
    }

    async fn claim(&self, name: &str) {
        self.pvcs
            .create(&PostParams::default(), &claim(name, &self.ns, "1Mi"))
            .await
            .unwrap();
    }

    /// Waits for the claim to be Bound, then expands, snapshots and attaches it, each to the end.
    async fn exercise(&self, name: &str) {
        wait_bound(&self.pvcs, name).await;
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": "2Mi"}}}});
        self.pvcs
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .unwrap();
        let pv = self
            .pvcs
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .volume_name
            .unwrap();
        let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> =
            Api::all(self.pvcs.clone().into_client());
        eventually(
            &format!("{name} expanded"),
            Duration::from_secs(60),
            || async {
                let pv = pvs.get(&pv).await.ok()?;
                (pv.spec?.capacity?.get("storage")?.0 == "2Mi").then_some(())
            },
        )
        .await;
        self.snapshots
            .create(
                &PostParams::default(),
                &e2e::volume_snapshot(name, name, Some(&self.ns)),
            )
            .await
            .unwrap();
        eventually(
            &format!("{name} snapshot ready"),
            Duration::from_secs(60),
            || async {
                let vs = self.snapshots.get(name).await.ok()?;
                (vs.status?.ready_to_use == Some(true)).then_some(())
            },
        )
        .await;
        let va_name = format!("{}-{name}", self.ns);
        self.vas
            .create(
                &PostParams::default(),
                &e2e::volume_attachment(&va_name, &self.driver_name, &self.node, &pv),
            )
            .await
            .unwrap();
        eventually(
            &format!("{name} attached"),
            Duration::from_secs(60),
            || async {
                let va = self.vas.get(&va_name).await.ok()?;
                va.status?.attached.then_some(())
            },
        )
        .await;
    }

    /// Removes what the test made outside its namespace (with no manager left, objects with
    /// finalizers stay; the namespace goes with the driver).
    async fn clean_up(&self) {
        let c = clients().await;
        for va in self.vas.list(&Default::default()).await.unwrap().items {
            if va.spec.attacher == self.driver_name {
                let name = va.metadata.name.unwrap_or_default();
                let _ = self.vas.delete(&name, &DeleteParams::default()).await;
                let _ = self
                    .vas
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(
                            serde_json::json!({"metadata": {"finalizers": null}}),
                        ),
                    )
                    .await;
            }
        }
        let classes: Api<StorageClass> = Api::all(c.main.clone());
        let _ = classes.delete(&self.ns, &DeleteParams::default()).await;
        let snapshot_classes: Api<snapshotter::types::VolumeSnapshotClass> =
            Api::all(c.main.clone());
        let _ = snapshot_classes
            .delete(&self.ns, &DeleteParams::default())
            .await;
        self.marks.remove().await;
    }
}
