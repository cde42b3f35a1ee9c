//! I/O-level tests of the election loop, on virtual time (`start_paused`), against an in-memory
//! [`LeaseStore`] that keeps `resourceVersion` like the apiserver and can be made to fail, hang,
//! lag or race per candidate; plus the Kubernetes store against a minimal fake apiserver.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::decide::LeaseRecord;
use super::*;

const LEASE: &str = "external-attacher-leader-hostpath-csi-k8s-io";
const NS: &str = "kube-system";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------------------------
// In-memory store

/// One write that reached the "server".
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub(crate) by: String,
    pub(crate) at: Instant,
    pub(crate) record: LeaseRecord,
}

/// The "apiserver": one Lease and its resourceVersion, and a watch of it.
#[derive(Debug)]
pub(crate) struct Backend {
    lease: Option<Lease>,
    version: u64,
    pub(crate) writes: Vec<Write>,
    watch: watch::Sender<Option<Lease>>,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            lease: None,
            version: 0,
            writes: Vec::new(),
            watch: watch::Sender::new(None),
        }
    }
}

impl Backend {
    fn store(&mut self, by: &str, mut lease: Lease) -> Lease {
        self.version += 1;
        lease.metadata.resource_version = Some(self.version.to_string());
        self.writes.push(Write {
            by: by.to_owned(),
            at: Instant::now(),
            record: LeaseRecord::from_lease(&lease),
        });
        self.lease = Some(lease.clone());
        self.watch.send_replace(Some(lease.clone()));
        lease
    }

    /// Someone outside the test's electors writes `record` unconditionally.
    pub(crate) fn put(&mut self, by: &str, record: &LeaseRecord) {
        let mut lease = self.lease.clone().unwrap_or_else(|| Lease {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(LEASE.into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            spec: None,
        });
        lease.spec = Some(record.to_spec());
        self.store(by, lease);
    }

    pub(crate) fn record(&self) -> Option<LeaseRecord> {
        self.lease.as_ref().map(LeaseRecord::from_lease)
    }

    pub(crate) fn writes_by(&self, by: &str) -> Vec<Write> {
        self.writes.iter().filter(|w| w.by == by).cloned().collect()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Reach {
    #[default]
    Up,
    /// Every call fails at once (connection refused).
    Down,
    /// Every call hangs forever (black-holed network).
    Hang,
}

/// Faults injected into one candidate's view of the backend.
#[derive(Debug, Default)]
struct Faults {
    reach: Reach,
    /// Fail this many next calls, then recover.
    fail_calls: usize,
    /// Just before our next replace reaches the backend, another writer writes this record
    /// (bumping the resourceVersion), so that replace loses the race with 409.
    intrude: Option<(String, LeaseRecord)>,
    /// Delay before each call reaches the backend, to interleave candidates.
    latency: Duration,
}

/// One candidate's connection to the shared backend.
#[derive(Clone, Debug)]
pub(crate) struct MemStore {
    who: String,
    backend: Arc<Mutex<Backend>>,
    faults: Arc<Mutex<Faults>>,
    /// Whether [`LeaseStore::follow`] watches the backend (else the elector only polls).
    follows: bool,
}

impl MemStore {
    pub(crate) fn new(backend: &Arc<Mutex<Backend>>, who: &str) -> Self {
        Self {
            who: who.to_owned(),
            backend: backend.clone(),
            faults: Arc::default(),
            follows: true,
        }
    }

    /// A store without a watch: the elector polls only.
    pub(crate) fn polling_only(mut self) -> Self {
        self.follows = false;
        self
    }

    pub(crate) fn set_reach(&self, reach: Reach) {
        self.faults.lock().unwrap().reach = reach;
    }

    async fn enter(&self) -> Result<(), LeaderError> {
        let (latency, reach) = {
            let f = self.faults.lock().unwrap();
            (f.latency, f.reach)
        };
        if !latency.is_zero() {
            sleep(latency).await;
        }
        let fail = {
            let mut f = self.faults.lock().unwrap();
            let fail = f.fail_calls > 0;
            f.fail_calls = f.fail_calls.saturating_sub(1);
            fail
        };
        match reach {
            Reach::Hang => std::future::pending().await,
            Reach::Down => Err(unreachable()),
            Reach::Up if fail => Err(unreachable()),
            Reach::Up => Ok(()),
        }
    }
}

fn unreachable() -> LeaderError {
    LeaderError::Api {
        lease: LEASE.into(),
        source: Box::new(kube::Error::Service(Box::new(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))),
    }
}

fn conflict() -> LeaderError {
    LeaderError::Conflict {
        lease: LEASE.into(),
    }
}

impl LeaseStore for MemStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, LeaderError>> {
        Box::pin(async move {
            self.enter().await?;
            Ok(self.backend.lock().unwrap().lease.clone())
        })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>> {
        Box::pin(async move {
            self.enter().await?;
            let mut backend = self.backend.lock().unwrap();
            if backend.lease.is_some() {
                return Err(conflict()); // 409 AlreadyExists
            }
            Ok(backend.store(&self.who, lease.clone()))
        })
    }

    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>> {
        Box::pin(async move {
            self.enter().await?;
            let intruder = self.faults.lock().unwrap().intrude.take();
            let mut backend = self.backend.lock().unwrap();
            if let Some((by, record)) = intruder {
                backend.put(&by, &record);
            }
            let current = backend.lease.as_ref().ok_or_else(conflict)?;
            if current.metadata.resource_version != lease.metadata.resource_version {
                return Err(conflict()); // 409 Conflict
            }
            Ok(backend.store(&self.who, lease.clone()))
        })
    }

    /// The backend's watch; it ignores the faults (a cut-off candidate's attempts fail anyway).
    fn follow(&self) -> Option<watch::Receiver<Option<Lease>>> {
        self.follows
            .then(|| self.backend.lock().unwrap().watch.subscribe())
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

fn config(identity: &str) -> LeaderElectionConfig {
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

// ---------------------------------------------------------------------------------------------
// The Kubernetes store against a minimal fake apiserver (real HTTP, real JSON).

mod fake_apiserver {
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use serde_json::{Value, json};

    #[derive(Default)]
    pub(super) struct Server {
        pub(super) lease: Option<Value>,
        version: u64,
        pub(super) puts: Vec<Value>,
    }

    type Shared = Arc<Mutex<Server>>;

    fn status(code: StatusCode, reason: &str) -> (StatusCode, Json<Value>) {
        (
            code,
            Json(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": reason, "reason": reason, "code": code.as_u16(),
            })),
        )
    }

    async fn read(State(s): State<Shared>) -> (StatusCode, Json<Value>) {
        match s.lock().unwrap().lease.clone() {
            Some(lease) => (StatusCode::OK, Json(lease)),
            None => status(StatusCode::NOT_FOUND, "NotFound"),
        }
    }

    async fn create(
        State(s): State<Shared>,
        Json(mut body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let mut s = s.lock().unwrap();
        if s.lease.is_some() {
            return status(StatusCode::CONFLICT, "AlreadyExists");
        }
        s.version += 1;
        body["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.lease = Some(body.clone());
        (StatusCode::CREATED, Json(body))
    }

    async fn replace(
        State(s): State<Shared>,
        Json(mut body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let mut s = s.lock().unwrap();
        s.puts.push(body.clone());
        let Some(current) = s.lease.as_ref() else {
            return status(StatusCode::NOT_FOUND, "NotFound");
        };
        if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
            return status(StatusCode::CONFLICT, "Conflict");
        }
        s.version += 1;
        body["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.lease = Some(body.clone());
        (StatusCode::OK, Json(body))
    }

    /// Serves Leases at `127.0.0.1:<port>`; returns the client and the server state.
    pub(super) async fn start() -> (kube::Client, Shared) {
        let shared = Shared::default();
        let base = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = Router::new()
            .route(base, post(create))
            .route(&format!("{base}/{{name}}"), get(read).put(replace))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        (kube::Client::try_from(config).unwrap(), shared)
    }
}

#[tokio::test]
async fn kube_store_speaks_the_lease_api() {
    let (client, server) = fake_apiserver::start().await;
    let store = KubeLeaseStore::new(client, NS, LEASE);
    assert!(store.get().await.unwrap().is_none(), "404 reads as absent");

    let record = LeaseRecord {
        holder: "a".into(),
        lease_duration_seconds: 15,
        acquire_time: Some(jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap()),
        renew_time: Some(jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap()),
        transitions: 0,
    };
    let lease = Lease {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(record.to_spec()),
    };
    let created = store.create(&lease).await.unwrap();
    assert_eq!(created.metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(
        LeaseRecord::from_lease(&created),
        record,
        "MicroTime round-trips"
    );
    assert!(matches!(
        store.create(&lease).await,
        Err(LeaderError::Conflict { .. })
    ));

    let replaced = store.replace(&created).await.unwrap();
    assert_eq!(replaced.metadata.resource_version.as_deref(), Some("2"));
    assert!(
        matches!(
            store.replace(&created).await,
            Err(LeaderError::Conflict { .. })
        ),
        "a stale resourceVersion is a conflict"
    );
    let puts = server.lock().unwrap().puts.clone();
    assert_eq!(
        puts[0]["metadata"]["resourceVersion"], "1",
        "PUT carries the version read"
    );
    assert_eq!(
        puts[0]["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z",
        "MicroTime on the wire"
    );
}

#[tokio::test]
async fn elector_on_the_kube_store_leads_and_releases() {
    let (client, server) = fake_apiserver::start().await;
    let mut registry = Registry::default();
    let config = LeaderElectionConfig {
        lease_duration: secs(3),
        renew_deadline: secs(2),
        retry_period: Duration::from_millis(200),
        ..config("pod-0")
    };
    let elector = LeaderElector::new(client, config, &mut registry).unwrap();
    let shutdown = CancellationToken::new();
    let (mut rx, task) = elector.spawn(shutdown.clone());
    tokio::time::timeout(secs(5), rx.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // a couple of renewals
    shutdown.cancel();
    task.await.unwrap();
    let lease = server.lock().unwrap().lease.clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(lease["metadata"]["name"], LEASE);
    let version: u64 = lease["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(version >= 3, "created, renewed, released: {version}");
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
