//! Running the controllers only while this replica leads, on one or several Leases.
//!
//! The process runs several controllers, and each upstream sidecar it replaces has its own Lease
//! name. To exclude the Go sidecars during a rolling migration, the process must hold the Lease of
//! every controller it runs. Several replicas of ours competing for several Leases could deadlock
//! (each holding one, waiting for another), so the Leases are taken in a fixed order: the first is
//! the *primary*, and a replica competes for the others only while it holds the primary. Only one
//! replica can hold the primary, so only one ever waits for the others; a Go sidecar holding one of
//! them never waits for us. The controllers run while every Lease is held; losing any stops them
//! (cancels their token and waits for them) before the others are released, and the replica
//! competes again. The process never exits on a lost Lease.

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
    // has stopped, so no Lease is released while our controllers still run.
    let elections = CancellationToken::new();
    let primary = group.elector(&group.leases[0])?;
    on_health(primary.health());
    let (mut primary_rx, primary_task) = primary.spawn(elections.clone());
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
        let secondaries_token = elections.child_token();
        let mut secondaries = Vec::new();
        for config in &group.leases[1..] {
            secondaries.push(group.elector(config)?.spawn(secondaries_token.clone()));
        }
        let mut receivers: Vec<watch::Receiver<bool>> =
            secondaries.iter().map(|(rx, _)| rx.clone()).collect();

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
        secondaries_token.cancel();
        for (_, task) in secondaries {
            let _ = task.await;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    elections.cancel();
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
    use crate::leader::tests::{Backend, MemStore};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::time::{Instant, sleep};

    use crate::leader::decide::LeaseRecord;

    const PRIMARY: &str = "hostpath-csi-k8s-io";
    const SECONDARY: &str = "external-attacher-leader-hostpath-csi-k8s-io";

    struct Cluster {
        backends: [Arc<Mutex<Backend>>; 2],
    }

    impl Cluster {
        fn group(&self, me: &str) -> LeaseGroup {
            let backends = self.backends.clone();
            let who = me.to_string();
            LeaseGroup {
                leases: [PRIMARY, SECONDARY]
                    .map(|name| LeaderElectionConfig::new(name, "kube-system", me))
                    .to_vec(),
                stores: Arc::new(move |config: &LeaderElectionConfig| {
                    let i = usize::from(config.lease_name == SECONDARY);
                    Arc::new(MemStore::new(&backends[i], &who)) as Arc<dyn LeaseStore>
                }),
                metrics: LeaderMetrics::register(
                    &mut prometheus_client::registry::Registry::default(),
                ),
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
        let cluster = Cluster {
            backends: [Arc::default(), Arc::default()],
        };
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
}
