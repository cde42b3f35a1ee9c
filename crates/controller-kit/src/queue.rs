//! A per-key work queue with de-duplication, per-key exclusivity and per-key exponential backoff,
//! in the manner of client-go's rate-limited delaying work queue.
//!
//! # Invariants
//! - A key is at most once in the queue: adding a queued key again does nothing.
//! - A key is never handed to two workers at once: a key added while it is being processed is
//!   marked dirty and queued again only when [`WorkQueue::done`] is called for it.
//! - [`WorkQueue::add_rate_limited`] delays a key by `start · 2^(failures-1)`, capped at `max`;
//!   [`WorkQueue::forget`] resets the count after a success.
//! - The queue holds each key at most once, so its size is bounded by the number of distinct keys
//!   (objects), never by the event rate.
//!
//! The queue outlives its workers: when leadership is lost the workers stop, the queue keeps its
//! keys, and the next leader term starts from them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::QueueMetrics;

/// Default first retry delay (upstream `--retry-interval-start`).
pub const DEFAULT_BACKOFF_START: Duration = Duration::from_secs(1);
/// Default longest retry delay (upstream `--retry-interval-max`).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Per-key exponential backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub start: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            start: DEFAULT_BACKOFF_START,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(63);
        let factor = 1u64.checked_shl(exp).unwrap_or(u64::MAX);
        let nanos = (self.start.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }
}

/// A key that can be queued.
pub trait QueueKey: Clone + Eq + Hash + Debug + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Debug + Send + Sync + 'static> QueueKey for T {}

/// A cheap-to-clone handle to one work queue.
#[derive(Debug)]
pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    name: String,
    backoff: Backoff,
    state: Mutex<State<K>>,
    notify: Notify,
    metrics: QueueMetrics,
}

#[derive(Debug)]
struct State<K> {
    /// Keys ready to be handed out, in order.
    ready: VecDeque<K>,
    /// Keys that need processing (in `ready`, or processing and to be re-queued), with the time
    /// they were first added since they were last handed out.
    dirty: HashMap<K, Instant>,
    /// Keys handed to a worker, with the time they were handed out.
    processing: HashMap<K, Instant>,
    /// Delayed keys: due time -> keys, and key -> due time (the earliest wins).
    waiting: BTreeMap<Instant, Vec<K>>,
    waiting_index: HashMap<K, Instant>,
    /// Consecutive failures per key.
    failures: HashMap<K, u32>,
    /// The last error of each key that has failures (for the stuck-object view).
    last_error: HashMap<K, String>,
}

impl<K> Default for State<K> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            dirty: HashMap::new(),
            processing: HashMap::new(),
            waiting: BTreeMap::new(),
            waiting_index: HashMap::new(),
            failures: HashMap::new(),
            last_error: HashMap::new(),
        }
    }
}

impl<K: QueueKey> State<K> {
    fn add(&mut self, key: K, now: Instant) -> bool {
        if self.dirty.contains_key(&key) {
            return false;
        }
        self.dirty.insert(key.clone(), now);
        if !self.processing.contains_key(&key) {
            self.ready.push_back(key);
        }
        true
    }

    /// Moves delayed keys that are due into the ready queue; returns how many were added.
    fn promote_due(&mut self, now: Instant) -> usize {
        let mut added = 0;
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > now {
                break;
            }
            for key in entry.remove() {
                self.waiting_index.remove(&key);
                if self.add(key, now) {
                    added += 1;
                }
            }
        }
        added
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.keys().next().copied()
    }
}

/// A key that keeps failing or runs long, for the stuck-object view (`/debug/queues`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StuckKey {
    /// The key (`namespace/name` or `name`).
    pub key: String,
    /// Consecutive failed passes.
    pub failures: u32,
    /// The last pass's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Seconds until the next pass, if one is scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<f64>,
    /// Seconds the current pass has run, if a worker is on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_for_seconds: Option<f64>,
}

/// How many keys of one queue the stuck-object view shows.
const STUCK_SHOWN: usize = 20;
/// A pass running longer than this shows in the stuck-object view even without failures.
const LONG_PASS: Duration = Duration::from_secs(60);

/// Statistics of one queue at one instant, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Keys ready and waiting for a worker.
    pub depth: usize,
    /// Keys waiting for a delay (backoff or requeue-after) to pass.
    pub delayed: usize,
    /// Keys being processed.
    pub in_flight: usize,
    /// Age of the oldest key waiting for a worker.
    pub oldest_ready_age: Duration,
    /// How long the longest-running worker has been on its key.
    pub longest_running: Duration,
    /// Sum of how long every in-flight key has been processed.
    pub unfinished_work: Duration,
}

impl<K: QueueKey + std::fmt::Display> WorkQueue<K> {
    /// Creates a queue named `name` (the `name` label of the `workqueue_*` metrics).
    pub fn new(name: impl Into<String>, backoff: Backoff, metrics: QueueMetrics) -> Self {
        let name = name.into();
        let queue = Self {
            inner: Arc::new(Inner {
                name: name.clone(),
                backoff,
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                metrics: metrics.clone(),
            }),
        };
        let weak = Arc::downgrade(&queue.inner);
        let stuck = weak.clone();
        metrics.register_queue(
            name,
            Box::new(move || weak.upgrade().map(|inner| WorkQueue { inner }.stats())),
            Box::new(move || stuck.upgrade().map(|inner| WorkQueue { inner }.stuck())),
        );
        queue
    }

    /// The keys that keep failing (most failures first) and the passes running for over a
    /// minute, at most twenty.
    pub fn stuck(&self) -> Vec<StuckKey> {
        let state = self.state();
        let now = Instant::now();
        let mut keys: Vec<&K> = state.failures.keys().collect();
        for (k, started) in &state.processing {
            if now.duration_since(*started) >= LONG_PASS && !state.failures.contains_key(k) {
                keys.push(k);
            }
        }
        let mut out: Vec<StuckKey> = keys
            .into_iter()
            .map(|k| StuckKey {
                key: k.to_string(),
                failures: state.failures.get(k).copied().unwrap_or(0),
                last_error: state.last_error.get(k).cloned(),
                retry_in_seconds: state
                    .waiting_index
                    .get(k)
                    .map(|due| due.saturating_duration_since(now).as_secs_f64()),
                running_for_seconds: state
                    .processing
                    .get(k)
                    .map(|t| now.duration_since(*t).as_secs_f64()),
            })
            .collect();
        out.sort_by(|a, b| b.failures.cmp(&a.failures).then_with(|| a.key.cmp(&b.key)));
        out.truncate(STUCK_SHOWN);
        out
    }
}

impl<K: QueueKey> WorkQueue<K> {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        // A panic while holding this lock can only come from a bug in this module; the state is
        // still consistent enough to go on, which beats poisoning every controller.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` now (no-op if it is already queued).
    pub fn add(&self, key: K) {
        let added = self.state().add(key, Instant::now());
        if added {
            self.inner.metrics.added(&self.inner.name);
            self.inner.notify.notify_waiters();
        }
    }

    /// Queues `key` once `delay` has passed. An earlier pending delay for the key wins.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let due = Instant::now() + delay;
        {
            let mut state = self.state();
            if state.dirty.contains_key(&key) {
                return; // already due now (or as soon as its worker is done)
            }
            if let Some(&existing) = state.waiting_index.get(&key) {
                if existing <= due {
                    return;
                }
                if let Some(keys) = state.waiting.get_mut(&existing) {
                    keys.retain(|k| k != &key);
                    if keys.is_empty() {
                        state.waiting.remove(&existing);
                    }
                }
            }
            state.waiting_index.insert(key.clone(), due);
            state.waiting.entry(due).or_default().push(key);
        }
        self.inner.notify.notify_waiters();
    }

    /// Queues `key` after its backoff delay and counts one more failure for it.
    pub fn add_rate_limited(&self, key: K) {
        let delay = {
            let mut state = self.state();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            self.inner.backoff.delay(*failures)
        };
        self.inner.metrics.retried(&self.inner.name);
        self.add_after(key, delay);
    }

    /// Forgets the failures of `key`, so its next backoff starts over.
    pub fn forget(&self, key: &K) {
        let mut state = self.state();
        state.failures.remove(key);
        state.last_error.remove(key);
    }

    /// Records the error of `key`'s last pass (shown by [`WorkQueue::stuck`] until
    /// [`forget`](Self::forget)).
    pub fn record_error(&self, key: &K, error: String) {
        self.state().last_error.insert(key.clone(), error);
    }

    /// How many consecutive failures `key` has had.
    pub fn failures(&self, key: &K) -> u32 {
        self.state().failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for the next key and marks it in flight. The caller must call [`done`](Self::done)
    /// for it. Cancel-safe: dropping the future takes nothing out of the queue.
    pub async fn get(&self) -> K {
        loop {
            let mut notified = pin!(self.inner.notify.notified());
            notified.as_mut().enable();
            let next_due = {
                let mut state = self.state();
                let now = Instant::now();
                if state.promote_due(now) > 0 {
                    // Other workers may be asleep until a later due time.
                    self.inner.notify.notify_waiters();
                }
                if let Some(key) = state.ready.pop_front() {
                    let queued_at = state.dirty.remove(&key).unwrap_or(now);
                    state.processing.insert(key.clone(), now);
                    drop(state);
                    self.inner
                        .metrics
                        .queued_for(&self.inner.name, now.duration_since(queued_at));
                    return key;
                }
                state.next_due()
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` finished; if it was added again while in flight, it is queued again now.
    pub fn done(&self, key: &K) {
        let requeued = {
            let mut state = self.state();
            let started = state.processing.remove(key);
            if let Some(started) = started {
                self.inner
                    .metrics
                    .worked_for(&self.inner.name, started.elapsed());
            }
            if state.dirty.contains_key(key) {
                state.ready.push_back(key.clone());
                true
            } else {
                false
            }
        };
        if requeued {
            self.inner.notify.notify_waiters();
        }
    }

    /// Whether `key` is ready, delayed, or in flight.
    pub fn contains(&self, key: &K) -> bool {
        let state = self.state();
        state.dirty.contains_key(key)
            || state.processing.contains_key(key)
            || state.waiting_index.contains_key(key)
    }

    /// The queue's statistics now.
    pub fn stats(&self) -> QueueStats {
        let state = self.state();
        let now = Instant::now();
        let oldest_ready = state
            .ready
            .iter()
            .filter_map(|k| state.dirty.get(k))
            .min()
            .map(|t| now.duration_since(*t))
            .unwrap_or_default();
        let running = state.processing.values().map(|t| now.duration_since(*t));
        QueueStats {
            depth: state.ready.len(),
            delayed: state.waiting_index.len(),
            in_flight: state.processing.len(),
            oldest_ready_age: oldest_ready,
            longest_running: running.clone().max().unwrap_or_default(),
            unfinished_work: running.sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn queue(backoff: Backoff) -> WorkQueue<String> {
        WorkQueue::new("test", backoff, Metrics::default().queues())
    }

    fn key(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        let got: Vec<u64> = (1..=12).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.delay(1000), Duration::from_secs(300));
        let custom = Backoff {
            start: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        assert_eq!(custom.delay(3), Duration::from_millis(40));
        assert_eq!(custom.delay(4), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn deduplicates_queued_keys() {
        let q = queue(Backoff::default());
        q.add(key("a"));
        q.add(key("b"));
        q.add(key("a"));
        assert_eq!(q.stats().depth, 2);
        assert_eq!(q.get().await, "a");
        assert_eq!(q.get().await, "b");
        assert_eq!(q.stats().depth, 0);
        assert_eq!(q.stats().in_flight, 2);
    }

    #[tokio::test]
    async fn a_key_in_flight_is_not_handed_out_again_until_done() {
        let q = queue(Backoff::default());
        q.add(key("a"));
        let a = q.get().await;
        q.add(key("a")); // changed while being processed
        q.add(key("b"));
        // The second worker gets b, not a second copy of a.
        assert_eq!(q.get().await, "b");
        assert_eq!(q.stats().depth, 0);
        let second = tokio::time::timeout(Duration::from_millis(50), q.get()).await;
        assert!(second.is_err(), "a must wait for done()");
        q.done(&a);
        assert_eq!(q.get().await, "a", "the dirty key comes back after done()");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_keys_come_back_after_a_growing_delay_and_forget_resets() {
        let q = queue(Backoff {
            start: Duration::from_secs(1),
            max: Duration::from_secs(8),
        });
        let mut delays = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            q.add_rate_limited(key("a"));
            let got = q.get().await;
            delays.push(start.elapsed().as_secs());
            q.done(&got);
        }
        assert_eq!(delays, [1, 2, 4, 8, 8]);
        assert_eq!(q.failures(&key("a")), 5);
        q.forget(&key("a"));
        let start = Instant::now();
        q.add_rate_limited(key("a"));
        q.get().await;
        assert_eq!(start.elapsed().as_secs(), 1, "forget() resets the backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_delay_wins_and_an_immediate_add_overtakes_a_delay() {
        let q = queue(Backoff::default());
        q.add_after(key("a"), Duration::from_secs(10));
        q.add_after(key("a"), Duration::from_secs(2));
        q.add_after(key("a"), Duration::from_secs(5));
        let start = Instant::now();
        let a = q.get().await;
        assert_eq!(start.elapsed().as_secs(), 2);
        q.done(&a);
        q.add_after(key("b"), Duration::from_secs(30));
        q.add(key("b"));
        let start = Instant::now();
        assert_eq!(q.get().await, "b");
        assert_eq!(start.elapsed().as_secs(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleeping_worker_wakes_for_a_new_earlier_delay() {
        let q = queue(Backoff::default());
        q.add_after(key("late"), Duration::from_secs(100));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            let start = Instant::now();
            let k = q2.get().await;
            (k, start.elapsed().as_secs())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add_after(key("soon"), Duration::from_secs(2));
        let (k, waited) = waiter.await.unwrap();
        assert_eq!((k.as_str(), waited), ("soon", 3));
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_keys_show_their_failures_error_and_retry_until_forgotten() {
        let q = queue(Backoff {
            start: Duration::from_secs(10),
            max: Duration::from_secs(60),
        });
        q.add_rate_limited(key("a"));
        q.add_rate_limited(key("a"));
        q.record_error(&key("a"), "driver down".into());
        q.add_rate_limited(key("b"));
        let stuck = q.stuck();
        assert_eq!(stuck.len(), 2);
        assert_eq!(stuck[0].key, "a");
        assert_eq!(stuck[0].failures, 2);
        assert_eq!(stuck[0].last_error.as_deref(), Some("driver down"));
        assert!(stuck[0].retry_in_seconds.is_some_and(|s| s > 0.0));
        assert_eq!(stuck[1].key, "b");
        q.forget(&key("a"));
        assert_eq!(q.stuck().len(), 1);
        let json = serde_json::to_value(q.stuck()).unwrap();
        assert_eq!(json[0]["key"], "b");
        assert!(json[0].get("last_error").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn stats_report_depth_age_and_in_flight() {
        let q = queue(Backoff::default());
        q.add(key("a"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        q.add(key("b"));
        q.add_after(key("c"), Duration::from_secs(60));
        let s = q.stats();
        assert_eq!((s.depth, s.delayed, s.in_flight), (2, 1, 0));
        assert_eq!(s.oldest_ready_age, Duration::from_secs(3));
        let a = q.get().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = q.stats();
        assert_eq!((s.depth, s.in_flight), (1, 1));
        assert_eq!(s.longest_running, Duration::from_secs(2));
        q.done(&a);
        assert_eq!(q.stats().in_flight, 0);
    }
}
