//! Workers: a bounded number of tasks that take keys from a [`WorkQueue`] and reconcile them.
//!
//! Each pass ends in one of three ways. Success forgets the key's failures (and requeues it later
//! if asked); an error retries it with the key's exponential backoff; a panic is caught, counted in
//! `csi_controller_reconcile_panics_total`, logged, and retried with backoff like an error, so one
//! bad object cannot take down the other controllers or even the other keys of this one.
//!
//! Workers stop when their cancellation token fires (shutdown, or leadership lost). A pass still
//! running then is dropped at its next await point and its key is queued again for the next term;
//! every reconcile step must therefore be idempotent, which the controllers guarantee by recording
//! intent on the API objects before acting.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::ControllerMetrics;
use crate::queue::{QueueKey, WorkQueue};

/// What a successful reconcile pass asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more to do until the object changes.
    Done,
    /// Look again after this delay (e.g. to poll a long-running operation), without counting a
    /// failure.
    RequeueAfter(Duration),
}

/// How many workers run over a queue, and the name they log and count under.
#[derive(Clone, Debug)]
pub struct Workers {
    /// The controller's name in logs and metrics.
    pub controller: &'static str,
    /// How many keys are reconciled at once (at least one).
    pub count: usize,
    /// Where passes and panics are counted.
    pub metrics: ControllerMetrics,
}

/// Runs `workers.count` concurrent workers over `queue` until `token` is cancelled, then waits
/// for them. Each pass is `reconcile(context, key)`: a plain function (no captures), so every
/// pass sees the controller's shared state the same way.
pub async fn run_workers<C, K, Fut, E>(
    workers: Workers,
    queue: WorkQueue<K>,
    context: Arc<C>,
    reconcile: fn(Arc<C>, K) -> Fut,
    token: CancellationToken,
) where
    C: Send + Sync + 'static,
    K: QueueKey + Display,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let Workers {
        controller,
        count,
        metrics,
    } = workers;
    let mut set = JoinSet::new();
    for _ in 0..count.max(1) {
        let queue = queue.clone();
        let metrics = metrics.clone();
        let token = token.clone();
        let context = context.clone();
        set.spawn(async move {
            loop {
                let key = tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    key = queue.get() => key,
                };
                let poisoned = poisoned(controller, &key);
                let pass = AssertUnwindSafe(async {
                    if poisoned {
                        panic!("injected panic ({PANIC_KEY_ENV})");
                    }
                    reconcile(context.clone(), key.clone()).await
                })
                .catch_unwind();
                let result = tokio::select! {
                    biased;
                    () = token.cancelled() => {
                        // Leave the key for the next term; the pass is dropped here.
                        queue.done(&key);
                        queue.add(key);
                        return;
                    }
                    result = pass => result,
                };
                match result {
                    Ok(Ok(Outcome::Done)) => {
                        queue.forget(&key);
                        metrics.reconciled(controller, "success");
                    }
                    Ok(Ok(Outcome::RequeueAfter(delay))) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                        metrics.reconciled(controller, "requeue");
                    }
                    Ok(Err(error)) => {
                        let failures = queue.failures(&key) + 1;
                        queue.record_error(&key, error.to_string());
                        tracing::warn!(controller, key = %key, %error, failures, "reconcile failed; will retry with backoff");
                        queue.add_rate_limited(key.clone());
                        metrics.reconciled(controller, "error");
                    }
                    Err(panic) => {
                        queue.record_error(&key, format!("panicked: {}", panic_message(&*panic)));
                        tracing::error!(controller, key = %key, panic = %panic_message(&*panic), "reconcile panicked; will retry with backoff");
                        metrics.panicked(controller);
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Debug builds only: `CSI_CONTROLLER_MANAGER_PANIC_KEY=<controller>/<key>` makes every pass of
/// that key panic, so the end-to-end suite can show a panic loop on a real cluster
/// (`e2e/tests/isolation.rs`). Release builds have no such switch.
pub const PANIC_KEY_ENV: &str = "CSI_CONTROLLER_MANAGER_PANIC_KEY";

#[cfg(debug_assertions)]
fn poisoned(controller: &str, key: &dyn Display) -> bool {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WANTED
        .get_or_init(|| std::env::var(PANIC_KEY_ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
        .is_some_and(|wanted| wanted == format!("{controller}/{key}"))
}

#[cfg(not(debug_assertions))]
fn poisoned(_controller: &str, _key: &dyn Display) -> bool {
    false
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::queue::Backoff;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn queue(metrics: &Metrics) -> WorkQueue<String> {
        WorkQueue::new(
            "test",
            Backoff {
                start: Duration::from_millis(10),
                max: Duration::from_millis(40),
            },
            metrics.queues(),
        )
    }

    fn workers(metrics: &Metrics, controller: &'static str, count: usize) -> Workers {
        Workers {
            controller,
            count,
            metrics: metrics.controllers(),
        }
    }

    #[derive(Default)]
    struct Exclusive {
        running: AtomicUsize,
        peak: AtomicUsize,
        per_key: Mutex<HashMap<String, usize>>,
        done: AtomicUsize,
        queue: Mutex<Option<WorkQueue<String>>>,
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_keys_are_exclusive() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let state = Arc::new(Exclusive::default());
        *state.queue.lock().unwrap() = Some(q.clone());
        let token = CancellationToken::new();
        for i in 0..40 {
            q.add(format!("k{}", i % 10));
        }
        let task = tokio::spawn(run_workers(
            workers(&metrics, "test", 3),
            q.clone(),
            state.clone(),
            |s: Arc<Exclusive>, key: String| async move {
                let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
                s.peak.fetch_max(now, Ordering::SeqCst);
                {
                    let mut m = s.per_key.lock().unwrap();
                    let c = m.entry(key.clone()).or_default();
                    *c += 1;
                    assert_eq!(*c, 1, "two workers on {key}");
                }
                // Re-adding a key while it runs must not let a second worker take it.
                let q = s.queue.lock().unwrap().clone().unwrap();
                q.add(key.clone());
                tokio::time::sleep(Duration::from_millis(5)).await;
                *s.per_key.lock().unwrap().get_mut(&key).unwrap() -= 1;
                s.running.fetch_sub(1, Ordering::SeqCst);
                s.done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(Outcome::Done)
            },
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
        task.await.unwrap();
        assert_eq!(
            state.peak.load(Ordering::SeqCst),
            3,
            "exactly the worker bound runs at once"
        );
        assert!(state.done.load(Ordering::SeqCst) >= 20);
    }

    #[tokio::test]
    async fn errors_back_off_and_success_resets() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let calls: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
        let token = CancellationToken::new();
        q.add("a".to_string());
        let task = tokio::spawn(run_workers(
            workers(&metrics, "test", 2),
            q.clone(),
            calls.clone(),
            |calls: Arc<Mutex<Vec<std::time::Instant>>>, _key: String| async move {
                let mut c = calls.lock().unwrap();
                c.push(std::time::Instant::now());
                if c.len() < 4 {
                    Err("driver says no".to_string())
                } else {
                    Ok(Outcome::Done)
                }
            },
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(400)).await;
        token.cancel();
        task.await.unwrap();
        let c = calls.lock().unwrap();
        assert_eq!(
            c.len(),
            4,
            "three failures then a success, then nothing more"
        );
        let gaps: Vec<u128> = c.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert!(gaps[0] >= 10 && gaps[1] >= 20 && gaps[2] >= 40, "{gaps:?}");
        assert_eq!(
            q.failures(&"a".to_string()),
            0,
            "success forgets the failures"
        );
    }

    #[derive(Default)]
    struct Panicky {
        ok: AtomicUsize,
        bad_calls: AtomicUsize,
    }

    #[tokio::test]
    async fn a_panic_is_caught_counted_and_retried_while_other_keys_proceed() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let state = Arc::new(Panicky::default());
        let token = CancellationToken::new();
        q.add("bad".to_string());
        for i in 0..5 {
            q.add(format!("good{i}"));
        }
        let task = tokio::spawn(run_workers(
            workers(&metrics, "panicky", 1),
            q.clone(),
            state.clone(),
            |s: Arc<Panicky>, key: String| async move {
                if key == "bad" && s.bad_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("malformed object");
                }
                s.ok.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(Outcome::Done)
            },
            token.clone(),
        ));
        // Capturing a panic's backtrace can be slow, so wait for the outcome, not a fixed time.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while state.ok.load(Ordering::SeqCst) < 6 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        task.await.unwrap();
        assert_eq!(
            (
                state.ok.load(Ordering::SeqCst),
                state.bad_calls.load(Ordering::SeqCst)
            ),
            (6, 3),
            "five good keys and the third try of bad"
        );
        assert_eq!(state.bad_calls.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.controllers().panics("panicky"), 2);
        assert!(
            metrics
                .encode()
                .contains(r#"csi_controller_reconcile_panics_total{controller="panicky"} 2"#)
        );
    }

    #[tokio::test]
    async fn cancelling_leaves_the_key_queued_for_the_next_term() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let token = CancellationToken::new();
        q.add("slow".to_string());
        let task = tokio::spawn(run_workers(
            workers(&metrics, "test", 1),
            q.clone(),
            Arc::new(()),
            |_: Arc<()>, _key: String| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>(Outcome::Done)
            },
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(q.stats().in_flight, 1);
        token.cancel();
        task.await.unwrap();
        let s = q.stats();
        assert_eq!((s.depth, s.in_flight), (1, 0));
    }
}
