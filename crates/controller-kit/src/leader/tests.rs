//! I/O-level tests of the election loop, on virtual time (`start_paused`), against an in-memory
//! [`LeaseStore`] that keeps `resourceVersion` like the apiserver and can be made to fail, hang,
//! lag or race per candidate. (The Kubernetes store is tested in `store.rs`, against
//! [`crate::testing::FakeApiServer`].)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::decide::LeaseRecord;
use super::*;

pub(crate) const LEASE: &str = "external-attacher-leader-hostpath-csi-k8s-io";
pub(crate) const NS: &str = "kube-system";

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

mod mem_store;

pub(crate) use mem_store::{Backend, MemStore, Reach, Write};

// ---------------------------------------------------------------------------------------------
// Harness

pub(crate) fn config(identity: &str) -> LeaderElectionConfig {
    LeaderElectionConfig::new(LEASE, NS, identity)
}

/// A running candidate.
struct Candidate {
    store: MemStore,
    health: LeaderHealth,
    rx: watch::Receiver<bool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    registry: Registry,
}

impl Candidate {
    fn start(backend: &Arc<Mutex<Backend>>, config: LeaderElectionConfig) -> Self {
        Self::start_on(MemStore::new(backend, &config.identity), config)
    }

    fn start_on(store: MemStore, config: LeaderElectionConfig) -> Self {
        let mut registry = Registry::default();
        let metrics = LeaderMetrics::register(&mut registry);
        let elector = LeaderElector::with_store(Arc::new(store.clone()), config, metrics).unwrap();
        let health = elector.health();
        let shutdown = CancellationToken::new();
        let (rx, task) = elector.spawn(shutdown.clone());
        let log = record_changes(rx.clone());
        Self {
            store,
            health,
            rx,
            log,
            shutdown,
            task,
            registry,
        }
    }

    fn leading(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits (virtual time) until leadership is `want`, at most `limit`; returns when it happened.
    async fn wait_leading(&mut self, want: bool, limit: Duration) -> Instant {
        tokio::time::timeout(limit, self.rx.wait_for(|l| *l == want))
            .await
            .unwrap_or_else(|_| panic!("{} did not reach leading={want}", self.store.who))
            .unwrap();
        Instant::now()
    }

    fn changes(&self) -> Vec<(Instant, bool)> {
        self.log.lock().unwrap().clone()
    }

    fn metric(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// Records every value published on `rx` with its (virtual) time.
fn record_changes(mut rx: watch::Receiver<bool>) -> Arc<Mutex<Vec<(Instant, bool)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let value = *rx.borrow_and_update();
            out.lock().unwrap().push((Instant::now(), value));
        }
    });
    log
}

/// Leadership intervals `[start, end)` from a change log, open ones closed at `end`.
fn intervals(changes: &[(Instant, bool)], end: Instant) -> Vec<(Instant, Instant)> {
    let mut out = Vec::new();
    let mut start = None;
    for &(at, leading) in changes {
        match (leading, start) {
            (true, None) => start = Some(at),
            (false, Some(s)) => {
                out.push((s, at));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, end));
    }
    out
}

fn assert_no_overlap(a: &Candidate, b: &Candidate) {
    let end = Instant::now();
    for (a0, a1) in intervals(&a.changes(), end) {
        for (b0, b1) in intervals(&b.changes(), end) {
            assert!(
                a1 <= b0 || b1 <= a0,
                "double leadership: {} {:?}..{:?} and {} {:?}..{:?}",
                a.store.who,
                a0,
                a1,
                b.store.who,
                b0,
                b1
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(start_paused = true)]
async fn lone_candidate_creates_the_lease_leads_and_renews() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;

    let created = backend.lock().unwrap().record().unwrap();
    assert_eq!(created.holder, "a");
    assert_eq!(created.lease_duration_seconds, 15);
    assert_eq!(created.transitions, 0);
    assert!(created.acquire_time.is_some() && created.acquire_time == created.renew_time);
    assert!(
        a.metric().contains(&format!(
            "leader_election_master_status{{name=\"{LEASE}\"}} 1"
        )),
        "{}",
        a.metric()
    );
    assert!(a.health.is_leading() && a.health.is_healthy());
    assert_eq!(a.health.leader().as_deref(), Some("a"));

    // Wall-clock renewTime would not move under virtual time, so count writes instead.
    sleep(secs(31)).await;
    let writes = backend.lock().unwrap().writes_by("a");
    assert_eq!(writes.len(), 1 + 6, "created, then renewed every 5 s");
    for pair in writes.windows(2) {
        assert_eq!(pair[1].at - pair[0].at, secs(5));
    }
    let renewed = backend.lock().unwrap().record().unwrap();
    assert_eq!(renewed.acquire_time, created.acquire_time);
    assert_eq!(renewed.transitions, 0);
    assert!(a.leading());
    assert!(
        a.metric().contains(&format!(
            "leader_election_slowpath_total{{name=\"{LEASE}\"}} 0"
        )),
        "renewals use the fast path: {}",
        a.metric()
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_candidates_racing_to_create_exactly_one_leads() {
    let backend = Arc::<Mutex<Backend>>::default();
    let slow = |who: &str| {
        let store = MemStore::new(&backend, who);
        // Both GETs (404) happen before either create, so the creates race.
        store.faults.lock().unwrap().latency = Duration::from_millis(10);
        store
    };
    let a = Candidate::start_on(slow("a"), config("a"));
    let b = Candidate::start_on(slow("b"), config("b"));

    for _ in 0..1200 {
        sleep(Duration::from_millis(100)).await;
        assert!(!(a.leading() && b.leading()), "both lead");
    }
    assert!(a.leading() ^ b.leading(), "exactly one leads");
    let (winner, loser) = if a.leading() { (&a, &b) } else { (&b, &a) };
    assert_eq!(intervals(&winner.changes(), Instant::now()).len(), 1);
    assert!(loser.changes().is_empty(), "the loser never led");
    let record = backend.lock().unwrap().record().unwrap();
    assert_eq!(record.holder, winner.store.who);
    assert_eq!(record.transitions, 0);
    assert_eq!(loser.health.leader().as_deref(), Some(&*winner.store.who));
    a.stop().await;
    b.stop().await;
}

/// The leader's store becomes unreachable: it stands down before `renew_deadline + retry_period`,
/// and the follower takes over only after `lease_duration` without change, never overlapping.
async fn leader_cut_off(reach: Reach) {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    let mut b = Candidate::start(&backend, config("b"));
    sleep(Duration::from_millis(7_300)).await; // mid-way between renewals

    let cut = Instant::now();
    a.store.set_reach(reach);
    let a_down = a.wait_leading(false, secs(30)).await;
    let bound = DEFAULT_RENEW_DEADLINE + DEFAULT_RETRY_PERIOD;
    assert!(a_down - cut < bound, "stood down after {:?}", a_down - cut);
    let a_last = backend.lock().unwrap().writes_by("a").last().unwrap().at;
    assert_eq!(
        a_down - a_last,
        DEFAULT_RENEW_DEADLINE,
        "deadline counts from the last renewal"
    );
    assert!(
        a.metric().contains(&format!(
            "leader_election_master_status{{name=\"{LEASE}\"}} 0"
        )),
        "{}",
        a.metric()
    );

    let b_up = b.wait_leading(true, secs(60)).await;
    let b_first = backend.lock().unwrap().writes_by("b")[0].at;
    assert!(
        b_first - a_last >= DEFAULT_LEASE_DURATION,
        "took over {:?} after the last renewal",
        b_first - a_last
    );
    assert!(b_up > a_down);
    let record = backend.lock().unwrap().record().unwrap();
    assert_eq!(record.holder, "b");
    assert_eq!(record.transitions, 1, "holder change counts a transition");

    // `a` did not exit: once reachable again it follows, and takes over when `b` goes dark.
    a.store.set_reach(Reach::Up);
    sleep(secs(30)).await;
    assert!(!a.leading() && b.leading());
    b.store.set_reach(Reach::Down);
    a.wait_leading(true, secs(60)).await;
    assert_eq!(backend.lock().unwrap().record().unwrap().transitions, 2);
    assert_no_overlap(&a, &b);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unreachable_leader_stands_down_and_the_other_takes_over() {
    leader_cut_off(Reach::Down).await;
}

#[tokio::test(start_paused = true)]
async fn hanging_leader_stands_down_and_the_other_takes_over() {
    leader_cut_off(Reach::Hang).await;
}

#[tokio::test(start_paused = true)]
async fn one_failed_renewal_does_not_cost_leadership() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    sleep(Duration::from_millis(100)).await;
    // The next renewal fails on both its fast write and its re-read.
    a.store.faults.lock().unwrap().fail_calls = 2;
    sleep(secs(60)).await;
    assert!(a.leading());
    assert_eq!(
        a.changes().len(),
        1,
        "never published false: {:?}",
        a.changes()
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_the_lease_and_the_follower_acquires_at_once() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    // Without a watch the follower sees the release on its next attempt (a watching one takes it
    // at once: `a_watching_follower_takes_a_released_lease_at_once`).
    let mut b = Candidate::start_on(MemStore::new(&backend, "b").polling_only(), config("b"));
    sleep(secs(12)).await;

    let rx = a.rx.clone();
    let released_at = Instant::now();
    a.stop().await;
    assert!(!*rx.borrow(), "published false on shutdown");
    let record = backend.lock().unwrap().record().unwrap();
    assert_eq!(record.holder, "");
    assert_eq!(record.lease_duration_seconds, 1);
    assert_eq!(record.transitions, 0, "release keeps transitions");
    assert_eq!(
        backend
            .lock()
            .unwrap()
            .lease
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .holder_identity
            .as_deref(),
        Some(""),
        "holderIdentity written empty, like client-go"
    );

    let b_up = b.wait_leading(true, secs(15)).await;
    // Within b's next jittered retry, well before a lease duration.
    assert!(b_up - released_at < DEFAULT_RETRY_PERIOD.mul_f64(1.0 + JITTER_FACTOR));
    assert_eq!(backend.lock().unwrap().record().unwrap().transitions, 1);
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watching_follower_takes_a_released_lease_at_once() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    let mut b = Candidate::start(&backend, config("b"));
    sleep(Duration::from_millis(12_300)).await;
    let a_log = a.log.clone();
    let released_at = Instant::now();
    a.stop().await;
    let b_up = b.wait_leading(true, secs(15)).await;
    assert_eq!(
        b_up, released_at,
        "taken on the watched release, not a retry later"
    );
    let writes = backend.lock().unwrap().writes.clone();
    let release = writes.iter().rfind(|w| w.by == "a").unwrap();
    assert_eq!(release.record.holder, "", "a released before b took it");
    assert_eq!(backend.lock().unwrap().record().unwrap().holder, "b");
    assert_eq!(backend.lock().unwrap().record().unwrap().transitions, 1);
    let (a_down, leading) = *a_log.lock().unwrap().last().unwrap();
    assert!(!leading && a_down <= b_up, "a stood down before b led");
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watching_follower_takes_a_lapsed_lease_when_it_lapses() {
    // The holder's last renewal is seen as it happens, so the claim lapses exactly a lease
    // duration after it, not up to a retry period later as when polling.
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    let mut b = Candidate::start(&backend, config("b"));
    sleep(Duration::from_millis(7_300)).await;
    a.store.set_reach(Reach::Hang);
    let b_up = b.wait_leading(true, secs(60)).await;
    let a_last = backend.lock().unwrap().writes_by("a").last().unwrap().at;
    assert_eq!(b_up - a_last, DEFAULT_LEASE_DURATION);
    assert_no_overlap(&a, &b);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_without_release_leaves_the_lease_to_expire() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(
        &backend,
        LeaderElectionConfig {
            release_on_cancel: false,
            ..config("a")
        },
    );
    a.wait_leading(true, secs(1)).await;
    let mut b = Candidate::start(&backend, config("b"));
    sleep(secs(3)).await;
    a.stop().await;
    assert_eq!(backend.lock().unwrap().record().unwrap().holder, "a");
    let a_last = backend.lock().unwrap().writes_by("a").last().unwrap().at;
    b.wait_leading(true, secs(60)).await;
    let b_first = backend.lock().unwrap().writes_by("b")[0].at;
    assert!(b_first - a_last >= DEFAULT_LEASE_DURATION);
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn follower_honours_the_lease_duration_in_the_record() {
    let backend = Arc::<Mutex<Backend>>::default();
    // A holder that wrote a 60 s lease and then died; our own config says 15 s.
    let ghost = LeaseRecord {
        holder: "ghost".into(),
        lease_duration_seconds: 60,
        transitions: 7,
        ..LeaseRecord::default()
    };
    backend.lock().unwrap().put("ghost", &ghost);
    let start = Instant::now();
    let mut a = Candidate::start(&backend, config("a"));
    let a_up = a.wait_leading(true, secs(120)).await;
    assert!(
        a_up - start >= secs(60),
        "took over after {:?}",
        a_up - start
    );
    assert!(a_up - start < secs(60) + DEFAULT_RETRY_PERIOD.mul_f64(1.0 + JITTER_FACTOR));
    let record = backend.lock().unwrap().record().unwrap();
    assert_eq!((record.holder.as_str(), record.transitions), ("a", 8));
    assert_eq!(
        record.lease_duration_seconds, 15,
        "we write our own duration"
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn conflict_on_renewal_rereads_and_keeps_leading() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    // Someone touches the Lease (same record, new resourceVersion) before our next renewal.
    let same = backend.lock().unwrap().record().unwrap();
    a.store.faults.lock().unwrap().intrude = Some(("kubectl".into(), same));
    sleep(secs(6)).await;
    assert!(a.leading());
    assert_eq!(a.changes().len(), 1, "never stood down");
    assert!(
        a.metric().contains(&format!(
            "leader_election_slowpath_total{{name=\"{LEASE}\"}} 1"
        )),
        "{}",
        a.metric()
    );
    assert_eq!(backend.lock().unwrap().record().unwrap().holder, "a");
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn conflict_with_another_holder_stands_down_at_once_without_double_leadership() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    // Another candidate's claim lands just before our renewal: our PUT gets 409, the re-read
    // shows a current claim by "z".
    let theirs = LeaseRecord {
        holder: "z".into(),
        lease_duration_seconds: 15,
        transitions: 1,
        ..LeaseRecord::default()
    };
    a.store.faults.lock().unwrap().intrude = Some(("z".into(), theirs));
    let down = a.wait_leading(false, secs(6)).await;
    let z_at = backend.lock().unwrap().writes_by("z")[0].at;
    assert_eq!(down, z_at, "stood down on the renewal that lost the race");
    assert_eq!(a.health.leader().as_deref(), Some("z"));
    // "z" never renews: we take over only after 15 s of no change, observed locally.
    let up = a.wait_leading(true, secs(60)).await;
    assert!(up - z_at >= DEFAULT_LEASE_DURATION);
    assert_eq!(backend.lock().unwrap().record().unwrap().transitions, 2);
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn racing_takeover_of_a_released_lease_has_one_winner() {
    let backend = Arc::<Mutex<Backend>>::default();
    let released = LeaseRecord {
        holder: String::new(),
        lease_duration_seconds: 1,
        transitions: 3,
        ..LeaseRecord::default()
    };
    backend.lock().unwrap().put("old", &released);
    let slow = |who: &str| {
        let store = MemStore::new(&backend, who);
        // Both read the same resourceVersion before either writes.
        store.faults.lock().unwrap().latency = Duration::from_millis(10);
        store
    };
    let a = Candidate::start_on(slow("a"), config("a"));
    let b = Candidate::start_on(slow("b"), config("b"));
    sleep(secs(60)).await;
    assert!(a.leading() ^ b.leading());
    assert_no_overlap(&a, &b);
    let writes = backend.lock().unwrap().writes.clone();
    let takeovers: Vec<_> = writes
        .iter()
        .filter(|w| w.record.transitions == 4 && w.by != "old")
        .map(|w| w.by.clone())
        .collect();
    assert!(
        takeovers.iter().all(|w| w == &takeovers[0]),
        "only the winner ever wrote: {takeovers:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_fails_when_the_leading_task_dies() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    a.task.abort(); // stands in for a wedged or panicked task
    sleep(DEFAULT_LEASE_DURATION + DEFAULT_HEALTH_TIMEOUT - secs(1)).await;
    assert!(a.health.is_healthy(), "within the tolerance");
    sleep(secs(2)).await;
    assert!(matches!(
        a.health.check(),
        Err(LeaderError::RenewOverdue { .. })
    ));
    assert!(
        a.health.clone().with_timeout(secs(60)).is_healthy(),
        "timeout is configurable"
    );
}

#[tokio::test(start_paused = true)]
async fn health_is_ok_while_not_leading() {
    let backend = Arc::<Mutex<Backend>>::default();
    let a = Candidate::start(&backend, config("a"));
    a.store.set_reach(Reach::Down);
    sleep(secs(120)).await;
    assert!(!a.leading());
    assert!(a.health.is_healthy());
    assert!(
        a.metric().contains(&format!(
            "leader_election_master_status{{name=\"{LEASE}\"}} 0"
        )),
        "{}",
        a.metric()
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_following_writes_nothing() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut a = Candidate::start(&backend, config("a"));
    a.wait_leading(true, secs(1)).await;
    let b = Candidate::start(&backend, config("b"));
    sleep(secs(3)).await;
    b.stop().await;
    assert!(backend.lock().unwrap().writes_by("b").is_empty());
    assert_eq!(backend.lock().unwrap().record().unwrap().holder, "a");
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn labels_are_put_on_the_lease() {
    let backend = Arc::<Mutex<Backend>>::default();
    let mut cfg = config("a");
    cfg.labels.insert("app".into(), "csi".into());
    let mut a = Candidate::start(&backend, cfg);
    a.wait_leading(true, secs(1)).await;
    sleep(secs(6)).await;
    let labels = backend
        .lock()
        .unwrap()
        .lease
        .as_ref()
        .unwrap()
        .metadata
        .labels
        .clone();
    assert_eq!(labels.unwrap().get("app").map(String::as_str), Some("csi"));
    a.stop().await;
}

#[test]
fn new_rejects_an_invalid_config() {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let client = kube::Client::try_from(config).unwrap();
    let bad = LeaderElectionConfig {
        renew_deadline: secs(20),
        ..LeaderElectionConfig::new(LEASE, NS, "a")
    };
    let mut registry = Registry::default();
    assert!(matches!(
        LeaderElector::new(client, bad, &mut registry),
        Err(LeaderError::InvalidConfig(_))
    ));
}
