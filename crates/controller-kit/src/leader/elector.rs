//! The election loop: candidate → leader → (lost) candidate …, until shutdown, then an optional
//! release. It reads and writes through a [`LeaseStore`] and asks [`decide`] what to do.
//!
//! # Invariants
//! - One task owns all state; [`LeaderHealth`] sees a copy of what it publishes.
//! - Every attempt is bounded: by `retry_period` as a candidate, and by
//!   `min(retry_period, time left before the renew deadline)` as leader.
//! - Leadership is published `true` only after a successful write naming us, and `false` no later
//!   than `renew_deadline` after the start of the last successful write, or as soon as a read shows
//!   another holder.
//! - An attempt in flight is never abandoned because of shutdown (it is bounded anyway), so a write
//!   that succeeds during shutdown is still known, and released.
//! - After losing, the elector waits a jittered retry period before competing again, so `false`
//!   is observable on the channel before any later `true`.
//! - A *gated* elector (see [`LeaderElector::spawn_gated`]) writes the Lease only while its gate is
//!   open; while it is closed it still reads (and follows) the Lease, so that when the gate opens
//!   another holder's claim is judged from what was observed all along, not from that moment.
//!   When the gate closes while it leads, it stands down and releases (with `release_on_cancel`).
//! - Between attempts a candidate wakes at the earliest of: its jittered retry period, the instant
//!   the observed claim lapses, its gate opening, or a watched change that leaves the Lease free.
//!   Watched changes only bring an attempt forward: every attempt still re-reads the Lease and
//!   writes conditioned on that read, so a late, lost or stale watch event cannot cause a takeover.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decide::{Decision, LeaseRecord, Observed, Vacancy, decide};
use super::store::{KubeLeaseStore, LeaseStore};
use super::{
    JITTER_FACTOR, LeaderElectionConfig, LeaderError, LeaderHealth, LeaderMetrics, Status, lock,
};

/// Most conflicts a release retries before giving up (each retry re-reads the Lease).
const RELEASE_ATTEMPTS: usize = 5;

/// Competes for one Lease and publishes whether we hold it.
///
/// ```no_run
/// # async fn f(le_client: kube::Client, mut registry: prometheus_client::registry::Registry) -> Result<(), controller_kit::leader::LeaderError> {
/// use controller_kit::leader::{LeaderElectionConfig, LeaderElector};
/// use tokio_util::sync::CancellationToken;
///
/// let config = LeaderElectionConfig::new("external-attacher-leader-x", "kube-system", "pod-0");
/// let elector = LeaderElector::new(le_client, config, &mut registry)?;
/// let health = elector.health(); // serve at controller_kit::leader::HEALTH_PATH
/// let election_shutdown = CancellationToken::new();
/// let (mut leading, task) = elector.spawn(election_shutdown.clone());
/// loop {
///     if leading.wait_for(|l| *l).await.is_err() { break }
///     let controllers = CancellationToken::new();
///     // start controllers with `controllers.clone()` …
///     if leading.wait_for(|l| !*l).await.is_err() { controllers.cancel(); break }
///     controllers.cancel(); // … and wait for them to stop, then compete again.
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LeaderElector {
    store: Arc<dyn LeaseStore>,
    config: LeaderElectionConfig,
    metrics: LeaderMetrics,
    status: Arc<Mutex<Status>>,
}

impl LeaderElector {
    /// An elector on the Kubernetes Lease `config.namespace/config.lease_name`, registering its
    /// metrics in `registry`.
    ///
    /// `client` should be **dedicated to leader election** (as the sidecars do): a client whose
    /// connection pool or rate limiter is saturated by controller traffic must not delay renewals.
    /// The caller builds it. It needs RBAC on `leases`: get, create, update.
    ///
    /// # Warning
    /// Registers the metric families in `registry`; for several leases in one registry, register
    /// [`LeaderMetrics`] once and use [`LeaderElector::with_store`].
    pub fn new(
        client: kube::Client,
        config: LeaderElectionConfig,
        registry: &mut Registry,
    ) -> Result<Self, LeaderError> {
        config.validate()?;
        let store = KubeLeaseStore::new(client, &config.namespace, &config.lease_name);
        Self::with_store(Arc::new(store), config, LeaderMetrics::register(registry))
    }

    /// An elector on any [`LeaseStore`], which must be bound to `config.lease_name`.
    pub fn with_store(
        store: Arc<dyn LeaseStore>,
        config: LeaderElectionConfig,
        metrics: LeaderMetrics,
    ) -> Result<Self, LeaderError> {
        config.validate()?;
        metrics.init(&config.lease_name);
        Ok(Self {
            store,
            config,
            metrics,
            status: Arc::default(),
        })
    }

    /// A health handle for `/healthz/leader-election`; take it before [`LeaderElector::spawn`].
    pub fn health(&self) -> LeaderHealth {
        LeaderHealth::new(
            self.status.clone(),
            &self.config.lease_name,
            self.config.lease_duration,
        )
    }

    /// Runs the election until `shutdown` is cancelled, publishing leadership on the returned
    /// channel (starts `false`). Losing the lease publishes `false` and the elector competes
    /// again. On shutdown it publishes `false` and, with `release_on_cancel`, releases the Lease
    /// if it holds it (bounded by `renew_deadline`); then the task ends.
    ///
    /// # Warning
    /// The lease is renewed until `shutdown` is cancelled. Cancel it only **after** the work that
    /// leadership guards has stopped; otherwise a released lease lets a successor start while our
    /// controllers still run.
    pub fn spawn(self, shutdown: CancellationToken) -> (watch::Receiver<bool>, JoinHandle<()>) {
        self.start(shutdown, None)
    }

    /// Like [`LeaderElector::spawn`], but the elector may acquire (or renew) the Lease only while
    /// `gate` is `true`. While it is `false` the elector keeps observing the Lease, so that once
    /// the gate opens it takes a free Lease at once and another holder's lapsed claim as soon as
    /// it has been seen unchanged for its duration. Closing the gate while leading makes the
    /// elector stand down (publish `false`) and release the Lease if `release_on_cancel`.
    ///
    /// # Warning
    /// Close the gate only once the work guarded by this Lease has stopped: the release lets a
    /// successor start at once.
    pub fn spawn_gated(
        self,
        shutdown: CancellationToken,
        gate: watch::Receiver<bool>,
    ) -> (watch::Receiver<bool>, JoinHandle<()>) {
        self.start(shutdown, Some(gate))
    }

    fn start(
        self,
        shutdown: CancellationToken,
        gate: Option<watch::Receiver<bool>>,
    ) -> (watch::Receiver<bool>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let changes = self.store.follow();
        let campaign = Campaign {
            store: self.store,
            config: self.config,
            metrics: self.metrics,
            status: self.status,
            tx,
            gate,
            changes,
            observed: None,
            lease: None,
            last_renew: None,
            reported_holder: String::new(),
        };
        (rx, tokio::spawn(campaign.run(shutdown)))
    }
}

/// How one attempt ended when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease, just written.
    Held,
    /// Someone else holds a current claim, which lapses in `expires_in` if it stays unchanged.
    Following {
        holder: String,
        expires_in: Duration,
    },
    /// The Lease is free (or ours), but the gate is closed: observed, not written.
    Gated,
}

/// How the leader phase ended.
#[derive(Debug, PartialEq, Eq)]
enum Reign {
    Lost,
    /// The gate closed: stand down and let the Lease go.
    Revoked,
    Shutdown,
}

/// The state of the running election task.
struct Campaign {
    store: Arc<dyn LeaseStore>,
    config: LeaderElectionConfig,
    metrics: LeaderMetrics,
    status: Arc<Mutex<Status>>,
    tx: watch::Sender<bool>,
    /// Whether we may write the Lease (`None`: always).
    gate: Option<watch::Receiver<bool>>,
    /// The Lease as a watch sees it (`None` inside: deleted), if the store can follow it.
    changes: Option<watch::Receiver<Option<Lease>>>,
    /// The record last read or written, and since when it has been seen unchanged.
    observed: Option<Observed>,
    /// The Lease object last read or written (its `resourceVersion` conditions our writes).
    lease: Option<Lease>,
    /// Start of the attempt that last wrote the Lease successfully.
    last_renew: Option<Instant>,
    /// Holder last logged, for "new leader elected".
    reported_holder: String,
}

impl Campaign {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(lease = %self.describe(), identity = %self.config.identity, "attempting to acquire leader lease");
        loop {
            if !self.acquire(&shutdown).await {
                break;
            }
            self.publish(true);
            info!(lease = %self.describe(), identity = %self.config.identity, "became leader");
            match self.reign(&shutdown).await {
                Reign::Shutdown => break,
                Reign::Revoked => {
                    self.publish(false);
                    info!(lease = %self.describe(), "stood down: no longer allowed to hold the lease");
                    if self.config.release_on_cancel {
                        self.release().await;
                    }
                }
                Reign::Lost => {
                    self.publish(false);
                    // Compete again only after a jittered retry period, so consumers see `false`
                    // (a watch channel coalesces a quick false → true) and stop their controllers.
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = sleep(jittered(self.config.retry_period)) => {}
                    }
                }
            }
        }
        if self.publish(false) {
            info!(lease = %self.describe(), "stopped leading on shutdown");
        }
        if self.config.release_on_cancel {
            self.release().await;
        }
    }

    /// Candidate phase: attempts until we hold the lease (`true`) or shutdown (`false`); between
    /// attempts, waits as [`Campaign::wait_for_chance`] says.
    async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            let result = self.attempt(false, self.config.retry_period).await;
            // As client-go's sliding JitterUntil: the period starts when the attempt ends.
            let poll_at = Instant::now() + jittered(self.config.retry_period);
            match result {
                // Shutdown during a successful attempt: do not start leading, release instead.
                Ok(Attempt::Held) => return !shutdown.is_cancelled(),
                Ok(Attempt::Following { .. } | Attempt::Gated) => {}
                Err(LeaderError::Conflict { .. }) => {
                    debug!(lease = %self.describe(), "lost a race for the lease");
                }
                Err(e) => warn!(lease = %self.describe(), error = %e, "failed to acquire lease"),
            }
            if !self.wait_for_chance(shutdown, poll_at).await {
                return false;
            }
        }
    }

    /// Waits for the next attempt: until `poll_at`, or earlier when the observed claim lapses (if
    /// we may acquire), the gate opens, or a watched change leaves the Lease free for us. Watched
    /// changes are folded into the observation meanwhile. `false` on shutdown.
    async fn wait_for_chance(&mut self, shutdown: &CancellationToken, poll_at: Instant) -> bool {
        loop {
            let allowed = self.may_acquire();
            let now = Instant::now();
            // Free (or ours) and allowed: only a failed attempt gets here; retry at `poll_at`.
            let wake = match decide(self.observed.as_ref(), now, &self.config.identity) {
                Decision::Follow { expires_in, .. } if allowed => poll_at.min(now + expires_in),
                _ => poll_at,
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                () = gate_opens(&mut self.gate), if !allowed => return true,
                change = next_change(&mut self.changes) => match change {
                    Some(lease) => {
                        self.observe(lease);
                        self.report_holder();
                        let free = !matches!(
                            decide(self.observed.as_ref(), Instant::now(), &self.config.identity),
                            Decision::Follow { .. }
                        );
                        if free && self.may_acquire() {
                            return true;
                        }
                    }
                    // The watch is gone for good: poll only.
                    None => self.changes = None,
                },
                () = sleep_until(wake) => return true,
            }
        }
    }

    /// Whether the gate lets us write the Lease now.
    fn may_acquire(&self) -> bool {
        self.gate.as_ref().is_none_or(|gate| *gate.borrow())
    }

    /// Folds a watched Lease (`None`: deleted) into the observation, like a read.
    fn observe(&mut self, lease: Option<Lease>) {
        let Some(lease) = lease else {
            self.observed = None;
            self.lease = None;
            return;
        };
        let version = |l: &Lease| l.metadata.resource_version.clone();
        if self.lease.as_ref().map(version) == Some(version(&lease)) {
            return;
        }
        self.observed = Some(Observed::update(
            self.observed.take(),
            LeaseRecord::from_lease(&lease),
            Instant::now(),
        ));
        self.lease = Some(lease);
    }

    /// Leader phase: renews every `retry_period` until the renew deadline passes without a
    /// successful renewal, another holder shows up, or shutdown.
    async fn reign(&mut self, shutdown: &CancellationToken) -> Reign {
        let retry = self.config.retry_period;
        let Some(mut last_renew) = self.last_renew else {
            return Reign::Lost;
        };
        let mut next = last_renew + retry;
        loop {
            let deadline = last_renew + self.config.renew_deadline;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Reign::Shutdown,
                () = gate_closes(&mut self.gate) => return Reign::Revoked,
                () = sleep_until(next.min(deadline)) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                info!(
                    lease = %self.describe(),
                    reason = "renew deadline passed",
                    renew_deadline = ?self.config.renew_deadline,
                    "lost leadership"
                );
                return Reign::Lost;
            }
            match self.attempt(true, retry.min(deadline - now)).await {
                Ok(Attempt::Held) => {
                    last_renew = self.last_renew.unwrap_or(now);
                    next = last_renew + retry;
                }
                Ok(Attempt::Following { holder, .. }) => {
                    // client-go keeps trying until the deadline; a current claim by someone else
                    // cannot become ours again, so stand down now.
                    info!(
                        lease = %self.describe(),
                        reason = "held by another",
                        %holder,
                        "lost leadership"
                    );
                    return Reign::Lost;
                }
                // The gate closed during the attempt; the next turn of the loop stands down.
                Ok(Attempt::Gated) => {}
                Err(e) => {
                    warn!(lease = %self.describe(), error = %e, "failed to renew lease");
                    // Our window starts at the last renewal, not retry_period later as in
                    // client-go, so retry at half the period to get client-go's number of tries
                    // (two with the defaults) before the deadline.
                    next = Instant::now() + retry / 2;
                }
            }
        }
    }

    /// One bounded try-acquire-or-renew, then the "new leader" report.
    async fn attempt(&mut self, leading: bool, limit: Duration) -> Result<Attempt, LeaderError> {
        let result = match timeout(limit, self.try_acquire_or_renew(leading)).await {
            Ok(result) => result,
            Err(_) => Err(LeaderError::Timeout {
                lease: self.config.lease_name.clone(),
                after: limit,
            }),
        };
        self.report_holder();
        result
    }

    /// client-go's `tryAcquireOrRenew`: a fast renewal over the Lease we last wrote, else read the
    /// Lease, decide, and write.
    async fn try_acquire_or_renew(&mut self, leading: bool) -> Result<Attempt, LeaderError> {
        let started = Instant::now();
        let me = self.config.identity.clone();
        let duration = self.config.lease_duration;

        if leading
            && self.may_acquire()
            && let Some((lease, record)) = self.own_current_lease(started)
        {
            // The resourceVersion of our last write makes this fail if anyone wrote since.
            let renewed = record.renewed(&me, duration, wall_now());
            match self.store.replace(&self.with_record(lease, &renewed)).await {
                Ok(written) => {
                    self.note_own_write(written, started);
                    return Ok(Attempt::Held);
                }
                Err(e) => {
                    debug!(lease = %self.describe(), error = %e, "fast renewal failed; re-reading the lease")
                }
            }
        }

        let current = self.store.get().await?;
        let now = Instant::now();
        self.observed = current.as_ref().map(|lease| {
            Observed::update(self.observed.take(), LeaseRecord::from_lease(lease), now)
        });
        self.lease.clone_from(&current);

        let write = match (decide(self.observed.as_ref(), now, &me), current) {
            (Decision::Follow { holder, expires_in }, _) => {
                debug!(lease = %self.describe(), %holder, ?expires_in, "lease held by another");
                return Ok(Attempt::Following { holder, expires_in });
            }
            // Observed; written only once the gate opens.
            _ if !self.may_acquire() => return Ok(Attempt::Gated),
            (Decision::Create, _) | (_, None) => {
                let record = LeaseRecord::acquired(None, &me, duration, wall_now());
                let created = self.store.create(&self.new_lease(&record)).await?;
                self.note_own_write(created, started);
                return Ok(Attempt::Held);
            }
            (Decision::Renew, Some(lease)) => {
                if leading {
                    self.metrics.slowpath(&self.config.lease_name);
                }
                let record = LeaseRecord::from_lease(&lease).renewed(&me, duration, wall_now());
                self.with_record(lease, &record)
            }
            (Decision::Acquire(vacancy), Some(lease)) => {
                if let Vacancy::Expired { holder } = &vacancy {
                    info!(lease = %self.describe(), previous = %holder, "lease expired; taking over");
                }
                let previous = LeaseRecord::from_lease(&lease);
                let record = LeaseRecord::acquired(Some(&previous), &me, duration, wall_now());
                self.with_record(lease, &record)
            }
        };
        let written = self.store.replace(&write).await?;
        self.note_own_write(written, started);
        Ok(Attempt::Held)
    }

    /// The Lease we last wrote, if it still names us and has not lapsed by our own observation.
    fn own_current_lease(&self, now: Instant) -> Option<(Lease, LeaseRecord)> {
        let observed = self.observed.as_ref()?;
        let lease = self.lease.clone()?;
        (observed.record.holder == self.config.identity && now < observed.expires_at())
            .then(|| (lease, observed.record.clone()))
    }

    /// Records a successful write of ours, observed from the start of its attempt (conservative
    /// for self-fencing: the server applied it later).
    fn note_own_write(&mut self, written: Lease, started: Instant) {
        self.observed = Some(Observed {
            record: LeaseRecord::from_lease(&written),
            since: started,
        });
        self.lease = Some(written);
        self.last_renew = Some(started);
        lock(&self.status).last_renew = Some(started);
    }

    /// Logs a change of holder once (client-go `OnNewLeader`), and shares it with health.
    fn report_holder(&mut self) {
        let holder = self
            .observed
            .as_ref()
            .map(|o| o.record.holder.as_str())
            .unwrap_or_default();
        if holder == self.reported_holder {
            return;
        }
        self.reported_holder = holder.to_owned();
        lock(&self.status).holder = holder.to_owned();
        if !holder.is_empty() && holder != self.config.identity {
            info!(lease = %self.describe(), %holder, "new leader elected");
        }
    }

    /// Publishes leadership on the channel, the gauge and the health status; `true` if it changed.
    fn publish(&self, leading: bool) -> bool {
        let changed = self.tx.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        self.metrics.set_leading(&self.config.lease_name, leading);
        lock(&self.status).leading = leading;
        changed
    }

    /// client-go's `tryRelease`, bounded by `renew_deadline`: if the Lease still names us, write
    /// it with an empty holder so a successor acquires it at once.
    async fn release(&mut self) {
        let believed_ours = self
            .observed
            .as_ref()
            .is_some_and(|o| o.record.holder == self.config.identity);
        if !believed_ours {
            return;
        }
        let limit = self.config.renew_deadline;
        match timeout(limit, self.try_release()).await {
            Ok(Ok(true)) => info!(lease = %self.describe(), "released lease"),
            Ok(Ok(false)) => {
                debug!(lease = %self.describe(), "lease no longer ours; nothing to release")
            }
            Ok(Err(e)) => warn!(lease = %self.describe(), error = %e, "failed to release lease"),
            Err(_) => warn!(lease = %self.describe(), after = ?limit, "timed out releasing lease"),
        }
    }

    async fn try_release(&mut self) -> Result<bool, LeaderError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(current) = self.store.get().await? else {
                return Ok(false);
            };
            let record = LeaseRecord::from_lease(&current);
            // Re-checked on a fresh read: never clear someone else's claim.
            if record.holder != self.config.identity {
                return Ok(false);
            }
            let released = record.released(wall_now());
            match self
                .store
                .replace(&self.with_record(current, &released))
                .await
            {
                Ok(written) => {
                    self.observed = Some(Observed {
                        record: LeaseRecord::from_lease(&written),
                        since: Instant::now(),
                    });
                    self.lease = Some(written);
                    return Ok(true);
                }
                Err(LeaderError::Conflict { .. }) if tries < RELEASE_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `lease` with `record` as its spec and our labels merged in; keeps its resourceVersion.
    fn with_record(&self, mut lease: Lease, record: &LeaseRecord) -> Lease {
        lease.spec = Some(record.to_spec());
        if !self.config.labels.is_empty() {
            let labels = lease.metadata.labels.get_or_insert_with(Default::default);
            labels.extend(self.config.labels.clone());
        }
        lease
    }

    /// A new Lease object holding `record`.
    fn new_lease(&self, record: &LeaseRecord) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.lease_name.clone()),
                namespace: Some(self.config.namespace.clone()),
                labels: (!self.config.labels.is_empty()).then(|| self.config.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(record.to_spec()),
        }
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.lease_name)
    }
}

/// Resolves when the gate is open (never without a gate, or once its sender is gone).
async fn gate_opens(gate: &mut Option<watch::Receiver<bool>>) {
    if let Some(gate) = gate
        && gate.wait_for(|open| *open).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Resolves when the gate is closed (never without a gate, or once its sender is gone).
async fn gate_closes(gate: &mut Option<watch::Receiver<bool>>) {
    if let Some(gate) = gate
        && gate.wait_for(|open| !*open).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// The next watched state of the Lease; `None` once the watch has ended (never without one).
async fn next_change(
    changes: &mut Option<watch::Receiver<Option<Lease>>>,
) -> Option<Option<Lease>> {
    match changes {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// client-go `wait.Jitter`: `d + rand[0,1) * JITTER_FACTOR * d`.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * JITTER_FACTOR)
}

/// Wall-clock now at the microsecond precision a `MicroTime` round-trips with, so our own record
/// compares equal to what the server returns.
fn wall_now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_client_go_bounds() {
        let d = Duration::from_secs(5);
        for _ in 0..1000 {
            let j = jittered(d);
            assert!(j >= d && j < d.mul_f64(1.0 + JITTER_FACTOR), "{j:?}");
        }
    }
}
