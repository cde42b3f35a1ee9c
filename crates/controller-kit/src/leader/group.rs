//! Running the controllers only while this replica leads, on one or several Leases.
//!
//! The process runs several controllers, and each upstream sidecar it replaces has its own Lease
//! name. To exclude the Go sidecars during a rolling migration, the process must hold the Lease of
//! every controller it runs (and only those: a Lease of a controller it does not run is left to
//! whoever runs it). Several replicas of ours competing for several Leases could deadlock (each
//! holding one, waiting for another), so the Leases are taken in a fixed order: the first is the
//! *primary*, and a replica *acquires* the others only while it holds the primary. Only one replica
//! can hold the primary, so only one ever waits for the others; a Go sidecar holding one of them
//! never waits for us.
//!
//! Every Lease of the group is *observed* from the start, by every replica, standby included (a
//! gated elector per secondary, see [`crate::leader::LeaderElector::spawn_gated`]): when a replica
//! wins the primary, another holder's claim on a secondary is judged from its real last renewal as
//! observed since start, so the secondaries follow the primary at once (released, or lapsed at the
//! same time) instead of after a further lease duration each. Watched changes wake the electors,
//! so a released Lease is taken without waiting for a retry period.
//!
//! The controllers run while every Lease is held; losing any stops them (cancels their token and
//! waits for them). Only then is anything released: the secondaries when the primary was lost or
//! on shutdown, the primary last on shutdown. The replica competes again; the process never exits
//! on a lost Lease.

use std::future::Future;
use std::sync::Arc;

use futures::future::{Either, select, select_all};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leader::{
    KubeLeaseStore, LeaderElectionConfig, LeaderElector, LeaderError, LeaderHealth, LeaderMetrics,
    LeaseStore,
};

/// Builds the Lease store of a lease name (the Kubernetes one in production, in-memory in tests).
pub type StoreFactory = Arc<dyn Fn(&LeaderElectionConfig) -> Arc<dyn LeaseStore> + Send + Sync>;

/// A factory of Kubernetes Lease stores on `client` (which should be the dedicated election client).
pub fn kube_stores(client: kube::Client) -> StoreFactory {
    Arc::new(move |config: &LeaderElectionConfig| {
        Arc::new(KubeLeaseStore::new(
            client.clone(),
            &config.namespace,
            &config.lease_name,
        )) as Arc<dyn LeaseStore>
    })
}

/// Leases to hold, in order, and how to reach them.
pub struct LeaseGroup {
    /// One configuration per Lease; the first is the primary. Must not be empty.
    pub leases: Vec<LeaderElectionConfig>,
    /// Where the Leases live.
    pub stores: StoreFactory,
    /// Shared metrics of every Lease.
    pub metrics: LeaderMetrics,
}

impl std::fmt::Debug for LeaseGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.leases.iter().map(|l| l.lease_name.as_str()).collect();
        f.debug_struct("LeaseGroup")
            .field("leases", &names)
            .finish()
    }
}

impl LeaseGroup {
    fn elector(&self, config: &LeaderElectionConfig) -> Result<LeaderElector, LeaderError> {
        LeaderElector::with_store((self.stores)(config), config.clone(), self.metrics.clone())
    }

    /// Health handles of every Lease's elector, for `/healthz/leader-election`.
    ///
    /// Validates every configuration.
    pub fn validate(&self) -> Result<(), LeaderError> {
        if self.leases.is_empty() {
            return Err(LeaderError::InvalidConfig("no lease to hold".into()));
        }
        self.leases
            .iter()
            .try_for_each(LeaderElectionConfig::validate)
    }
}

/// Runs `term` each time this replica holds every Lease of `group`, until `shutdown`.
///
/// `term` gets a token that is cancelled when a Lease is lost or on shutdown; the group waits for
/// the future to end before releasing any Lease. `leading` (if given) mirrors whether a term runs.
/// Returns the primary elector's health handle through `on_health` before competing.
pub async fn run_leading<F, Fut>(
    group: LeaseGroup,
    shutdown: CancellationToken,
    leading: Option<watch::Sender<bool>>,
    on_health: impl FnOnce(LeaderHealth),
    mut term: F,
) -> Result<(), LeaderError>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    group.validate()?;
    // Elections outlive the controllers' shutdown: they are cancelled only after the last term
    // has stopped, so no Lease is released while our controllers still run. The secondaries go
    // first, so a successor that wins the primary finds them free.
    let primary_elections = CancellationToken::new();
    let secondary_elections = CancellationToken::new();
    let primary = group.elector(&group.leases[0])?;
    on_health(primary.health());
    // Open while we hold the primary: the secondaries' electors may acquire only then.
    let (gate, gate_rx) = watch::channel(false);
    let mut secondaries = Vec::new();
    for config in &group.leases[1..] {
        secondaries.push(
            group
                .elector(config)?
                .spawn_gated(secondary_elections.clone(), gate_rx.clone()),
        );
    }
    let (mut primary_rx, primary_task) = primary.spawn(primary_elections.clone());
    let mut receivers: Vec<watch::Receiver<bool>> =
        secondaries.iter().map(|(rx, _)| rx.clone()).collect();
    let set_leading = |v: bool| {
        if let Some(tx) = &leading {
            tx.send_replace(v);
        }
    };

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            held = primary_rx.wait_for(|l| *l) => if held.is_err() { break },
        }
        gate.send_replace(true);
        if wait_all_held(&mut receivers, &mut primary_rx, &shutdown).await {
            tracing::info!(leases = group.leases.len(), "leading: starting controllers");
            set_leading(true);
            let term_token = shutdown.child_token();
            let running = std::pin::pin!(term(term_token.clone()));
            let lost = std::pin::pin!(any_lost(&mut receivers, &mut primary_rx, &shutdown));
            match select(running, lost).await {
                Either::Left(((), _)) => {}
                Either::Right(((), running)) => {
                    term_token.cancel();
                    running.await;
                }
            }
            set_leading(false);
            if !shutdown.is_cancelled() {
                tracing::warn!("lost a lease: controllers stopped; competing again");
            }
        }
        // No controller runs now. Without the primary, let the secondaries go (a lost secondary
        // alone leaves the others held: the primary's holder is the only one that may take it).
        if shutdown.is_cancelled() || !*primary_rx.borrow() {
            gate.send_replace(false);
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    secondary_elections.cancel();
    for (_, task) in secondaries {
        let _ = task.await;
    }
    primary_elections.cancel();
    let _ = primary_task.await;
    Ok(())
}

/// Waits until every Lease is held; false on shutdown or when the primary is lost meanwhile.
async fn wait_all_held(
    secondaries: &mut [watch::Receiver<bool>],
    primary: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> bool {
    for rx in secondaries.iter_mut() {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            lost = primary.wait_for(|l| !*l) => { let _ = lost; return false }
            held = rx.wait_for(|l| *l) => if held.is_err() { return false },
        }
    }
    *primary.borrow() && !shutdown.is_cancelled()
}

/// Resolves when shutdown starts or any Lease is lost.
async fn any_lost(
    secondaries: &mut [watch::Receiver<bool>],
    primary: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
) {
    let mut lost: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
    lost.push(Box::pin(async { shutdown.cancelled().await }));
    lost.push(Box::pin(async {
        let _ = primary.wait_for(|l| !*l).await;
    }));
    for rx in secondaries.iter_mut() {
        lost.push(Box::pin(async move {
            let _ = rx.wait_for(|l| !*l).await;
        }));
    }
    select_all(lost).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::tests::{Backend, MemStore, Reach, Write};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::time::{Instant, sleep};

    use crate::leader::DEFAULT_LEASE_DURATION;
    use crate::leader::DEFAULT_RETRY_PERIOD;
    use crate::leader::decide::LeaseRecord;

    const PRIMARY: &str = "hostpath-csi-k8s-io";
    const SECONDARY: &str = "external-attacher-leader-hostpath-csi-k8s-io";

    #[derive(Default)]
    struct Cluster {
        backends: [Arc<Mutex<Backend>>; 2],
        /// Every store handed to a replica, by replica, to cut it off.
        stores: Arc<Mutex<Vec<(String, MemStore)>>>,
        /// Stores without a watch: electors poll only.
        polling_only: bool,
    }

    impl Cluster {
        fn group(&self, me: &str) -> LeaseGroup {
            let backends = self.backends.clone();
            let stores = self.stores.clone();
            let polling_only = self.polling_only;
            let who = me.to_string();
            LeaseGroup {
                leases: [PRIMARY, SECONDARY]
                    .map(|name| LeaderElectionConfig::new(name, "kube-system", me))
                    .to_vec(),
                stores: Arc::new(move |config: &LeaderElectionConfig| {
                    let i = usize::from(config.lease_name == SECONDARY);
                    let mut store = MemStore::new(&backends[i], &who);
                    if polling_only {
                        store = store.polling_only();
                    }
                    stores.lock().unwrap().push((who.clone(), store.clone()));
                    Arc::new(store) as Arc<dyn LeaseStore>
                }),
                metrics: LeaderMetrics::register(
                    &mut prometheus_client::registry::Registry::default(),
                ),
            }
        }

        /// `who` loses the API server for good, as if SIGKILLed: it writes nothing more (its
        /// controllers stop at its renew deadline by self-fencing).
        fn crash(&self, who: &str) {
            for (owner, store) in self.stores.lock().unwrap().iter() {
                if owner == who {
                    store.set_reach(Reach::Hang);
                }
            }
        }

        fn writes(&self, lease: usize) -> Vec<Write> {
            self.backends[lease].lock().unwrap().writes.clone()
        }

        /// Deadlock-free order: every acquisition of the secondary (a write that makes one of ours
        /// its holder) came from the primary's holder. Renewals are not acquisitions: a leader
        /// renews until it learns that it lost the primary, and stops its term then.
        fn assert_secondary_taken_only_under_the_primary(&self) {
            let primary = self.writes(0);
            let mut previous = String::new();
            for w in self.writes(1) {
                let holder = std::mem::replace(&mut previous, w.record.holder.clone());
                if w.record.holder.is_empty() || w.by.starts_with("go-") || holder == w.by {
                    continue; // a release, the Go sidecar, or a renewal
                }
                let primary_holder = primary
                    .iter()
                    .rfind(|p| p.at <= w.at)
                    .map(|p| p.record.holder.clone());
                assert_eq!(
                    primary_holder.as_deref(),
                    Some(w.by.as_str()),
                    "{} acquired the secondary without holding the primary",
                    w.by
                );
            }
        }
    }

    /// A replica of ours: counts its terms and checks no other term runs at the same time.
    fn replica(
        cluster: &Cluster,
        me: &'static str,
        active: Arc<AtomicUsize>,
        terms: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let shutdown = CancellationToken::new();
        let group = cluster.group(me);
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            run_leading(
                group,
                token,
                None,
                |_| {},
                move |term: CancellationToken| {
                    let (active, terms) = (active.clone(), terms.clone());
                    async move {
                        assert_eq!(
                            active.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two leaders at once"
                        );
                        terms.lock().unwrap().push((me, Instant::now()));
                        term.cancelled().await;
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                },
            )
            .await
            .unwrap();
        });
        (shutdown, task)
    }

    #[tokio::test(start_paused = true)]
    async fn runs_only_while_every_lease_is_held_and_hands_over_on_shutdown() {
        let cluster = Cluster::default();
        // A Go attacher of the old deployment holds the attacher's Lease and renews it.
        let go_sidecar = CancellationToken::new();
        {
            let backend = cluster.backends[1].clone();
            let stop = go_sidecar.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let now = jiff::Timestamp::now();
                    let previous = backend.lock().unwrap().record();
                    let record = match &previous {
                        Some(r) if r.holder == "go-attacher" => {
                            r.renewed("go-attacher", Duration::from_secs(15), now)
                        }
                        _ => LeaseRecord::acquired(
                            previous.as_ref(),
                            "go-attacher",
                            Duration::from_secs(15),
                            now,
                        ),
                    };
                    backend.lock().unwrap().put("go-attacher", &record);
                    sleep(Duration::from_secs(2)).await;
                }
            });
        }
        sleep(Duration::from_millis(10)).await;

        let active = Arc::new(AtomicUsize::new(0));
        let terms: Arc<Mutex<Vec<(&'static str, Instant)>>> = Arc::default();
        let started = Instant::now();
        let (stop_a, task_a) = replica(&cluster, "a", active.clone(), terms.clone());
        let (stop_b, task_b) = replica(&cluster, "b", active.clone(), terms.clone());

        sleep(Duration::from_secs(60)).await;
        assert!(
            terms.lock().unwrap().is_empty(),
            "nobody may lead while the Go sidecar holds a lease"
        );
        let primary_holder = cluster.backends[0].lock().unwrap().record().unwrap().holder;
        assert!(primary_holder == "a" || primary_holder == "b");

        // The old pod goes away; its lease expires and the primary's holder takes it.
        go_sidecar.cancel();
        sleep(Duration::from_secs(40)).await;
        let first = terms.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].0, primary_holder, "the primary holder leads");
        assert!(first[0].1 - started >= Duration::from_secs(60));

        // The leader shuts down: its term ends, its leases are released, the other takes over fast.
        let (leader_stop, leader_task, other) = if primary_holder == "a" {
            (stop_a, task_a, (stop_b, task_b))
        } else {
            (stop_b, task_b, (stop_a, task_a))
        };
        let handover = Instant::now();
        leader_stop.cancel();
        leader_task.await.unwrap();
        sleep(Duration::from_secs(30)).await;
        let all = terms.lock().unwrap().clone();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_ne!(all[1].0, primary_holder);
        assert!(
            all[1].1 - handover < Duration::from_secs(15),
            "released leases are taken without waiting for expiry: {:?}",
            all[1].1 - handover
        );
        other.0.cancel();
        other.1.await.unwrap();
        assert_eq!(active.load(Ordering::SeqCst), 0);
    }

    type Terms = Arc<Mutex<Vec<(&'static str, Instant)>>>;

    /// Two replicas; returns them once one leads: (leader, its stop, its task), the other's.
    async fn two_replicas(
        cluster: &Cluster,
        active: &Arc<AtomicUsize>,
        terms: &Terms,
    ) -> (
        &'static str,
        (CancellationToken, tokio::task::JoinHandle<()>),
        (CancellationToken, tokio::task::JoinHandle<()>),
    ) {
        let a = replica(cluster, "a", active.clone(), terms.clone());
        let b = replica(cluster, "b", active.clone(), terms.clone());
        sleep(Duration::from_secs(30)).await;
        let first = terms.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "one replica leads: {first:?}");
        match first[0].0 {
            "a" => ("a", a, b),
            _ => ("b", b, a),
        }
    }

    /// The leader crashes: the standby, which has observed both Leases all along, holds both
    /// within `bound` of the crashed leader's last renewal, and never took one before it lapsed.
    async fn crash_failover(polling_only: bool, bound: Duration) -> Duration {
        let cluster = Cluster {
            polling_only,
            ..Cluster::default()
        };
        let active = Arc::new(AtomicUsize::new(0));
        let terms: Terms = Arc::default();
        let (leader, _leader_handles, other) = two_replicas(&cluster, &active, &terms).await;
        sleep(Duration::from_millis(2_700)).await; // somewhere between renewals

        let crash = Instant::now();
        cluster.crash(leader);
        tokio::time::timeout(Duration::from_secs(120), async {
            while terms.lock().unwrap().len() < 2 {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the standby takes over");
        let all = terms.lock().unwrap().clone();
        assert_ne!(all[1].0, leader);
        let failover = all[1].1 - crash;
        let last_renewal = (0..2)
            .filter_map(|lease| {
                cluster
                    .writes(lease)
                    .iter()
                    .rfind(|w| w.by == leader)
                    .map(|w| w.at)
            })
            .max()
            .unwrap();
        assert!(
            all[1].1 - last_renewal <= bound,
            "the standby led {:?} after the crashed leader's last renewal, more than {bound:?}",
            all[1].1 - last_renewal
        );
        for lease in 0..2 {
            let writes = cluster.writes(lease);
            let last = writes.iter().rfind(|w| w.by == leader).unwrap().at;
            let taken = writes.iter().find(|w| w.by == all[1].0).unwrap().at;
            assert!(
                taken - last >= DEFAULT_LEASE_DURATION,
                "lease {lease} taken {:?} after the crashed leader's last renewal",
                taken - last
            );
        }
        cluster.assert_secondary_taken_only_under_the_primary();
        other.0.cancel();
        other.1.await.unwrap();
        failover
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_crash_the_standby_holds_every_lease_within_a_lease_duration() {
        // Watching, the standby sees the last renewal of each Lease as it happens, and wakes when
        // it lapses: the failover ends one lease duration after the last renewal, at the latest.
        crash_failover(false, DEFAULT_LEASE_DURATION + Duration::from_millis(100)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_crash_a_polling_standby_takes_the_secondaries_with_the_primary() {
        // Polling only, the last renewal is seen up to one jittered retry period late; the
        // secondaries, observed all along, lapse with the primary rather than a lease duration
        // after it was won.
        let bound = DEFAULT_LEASE_DURATION
            + DEFAULT_RETRY_PERIOD.mul_f64(1.0 + crate::leader::JITTER_FACTOR)
            + Duration::from_millis(100);
        crash_failover(true, bound).await;
    }

    #[tokio::test(start_paused = true)]
    async fn released_leases_are_taken_at_once() {
        let cluster = Cluster::default();
        let active = Arc::new(AtomicUsize::new(0));
        let terms: Terms = Arc::default();
        let (leader, (stop, task), other) = two_replicas(&cluster, &active, &terms).await;
        sleep(Duration::from_millis(2_700)).await;
        let handover = Instant::now();
        stop.cancel();
        task.await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), async {
            while terms.lock().unwrap().len() < 2 {
                sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the standby takes over");
        let all = terms.lock().unwrap().clone();
        assert_ne!(all[1].0, leader);
        assert!(
            all[1].1 - handover < Duration::from_millis(100),
            "a released Lease is seen through the watch and taken at once: {:?}",
            all[1].1 - handover
        );
        cluster.assert_secondary_taken_only_under_the_primary();
        other.0.cancel();
        other.1.await.unwrap();
        assert_eq!(active.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_observes_the_secondaries_but_never_writes_them() {
        let cluster = Cluster::default();
        let active = Arc::new(AtomicUsize::new(0));
        let terms: Terms = Arc::default();
        let (leader, leader_handles, other) = two_replicas(&cluster, &active, &terms).await;
        sleep(Duration::from_secs(60)).await;
        let standby = if leader == "a" { "b" } else { "a" };
        for lease in 0..2 {
            assert!(
                cluster.writes(lease).iter().all(|w| w.by != standby),
                "the standby wrote lease {lease}"
            );
        }
        assert_eq!(terms.lock().unwrap().len(), 1);
        for (stop, task) in [leader_handles, other] {
            stop.cancel();
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_primary_stops_the_term_then_releases_the_secondaries() {
        let cluster = Cluster::default();
        let active = Arc::new(AtomicUsize::new(0));
        let terms: Terms = Arc::default();
        let (leader, (stop, task), other) = two_replicas(&cluster, &active, &terms).await;
        // Someone else takes the primary by force (a current claim the leader cannot renew over).
        let theirs = LeaseRecord::acquired(
            cluster.backends[0].lock().unwrap().record().as_ref(),
            "go-provisioner",
            Duration::from_secs(15),
            jiff::Timestamp::now(),
        );
        cluster.backends[0]
            .lock()
            .unwrap()
            .put("go-provisioner", &theirs);
        sleep(Duration::from_secs(6)).await;
        assert_eq!(active.load(Ordering::SeqCst), 0, "the term stopped");
        let secondary = cluster.backends[1].lock().unwrap().record().unwrap();
        assert_eq!(secondary.holder, "", "{leader} released the secondary");
        // Nobody of ours leads while the Go provisioner holds the primary.
        assert_eq!(terms.lock().unwrap().len(), 1);
        cluster.assert_secondary_taken_only_under_the_primary();
        for (stop, task) in [(stop, task), other] {
            stop.cancel();
            task.await.unwrap();
        }
    }
}
