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

/// Runs `workers` concurrent workers over `queue` until `token` is cancelled, then waits for them.
///
/// `controller` names the controller in logs and metrics.
pub async fn run_workers<K, F, Fut, E>(
    controller: &'static str,
    queue: WorkQueue<K>,
    workers: usize,
    metrics: ControllerMetrics,
    token: CancellationToken,
    reconcile: F,
) where
    K: QueueKey + Display,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let metrics = metrics.clone();
        let token = token.clone();
        let reconcile = reconcile.clone();
        set.spawn(async move {
            loop {
                let key = tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    key = queue.get() => key,
                };
                let pass = AssertUnwindSafe(reconcile(key.clone())).catch_unwind();
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
                        tracing::warn!(controller, key = %key, %error, failures, "reconcile failed; will retry with backoff");
                        queue.add_rate_limited(key.clone());
                        metrics.reconciled(controller, "error");
                    }
                    Err(panic) => {
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

    #[tokio::test]
    async fn concurrency_is_bounded_and_keys_are_exclusive() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let per_key: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        for i in 0..40 {
            q.add(format!("k{}", i % 10));
        }
        let task = {
            let (running, peak, per_key, done) =
                (running.clone(), peak.clone(), per_key.clone(), done.clone());
            let q2 = q.clone();
            tokio::spawn(run_workers(
                "test",
                q.clone(),
                3,
                metrics.controllers(),
                token.clone(),
                move |key: String| {
                    let (running, peak, per_key, done, q2) = (
                        running.clone(),
                        peak.clone(),
                        per_key.clone(),
                        done.clone(),
                        q2.clone(),
                    );
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        {
                            let mut m = per_key.lock().unwrap();
                            let c = m.entry(key.clone()).or_default();
                            *c += 1;
                            assert_eq!(*c, 1, "two workers on {key}");
                        }
                        // Re-adding a key while it runs must not let a second worker take it.
                        q2.add(key.clone());
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        *per_key.lock().unwrap().get_mut(&key).unwrap() -= 1;
                        running.fetch_sub(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(Outcome::Done)
                    }
                },
            ))
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
        task.await.unwrap();
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "exactly the worker bound runs at once"
        );
        assert!(done.load(Ordering::SeqCst) >= 20);
    }

    #[tokio::test]
    async fn errors_back_off_and_success_resets() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let calls: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
        let token = CancellationToken::new();
        q.add("a".to_string());
        let task = {
            let calls = calls.clone();
            tokio::spawn(run_workers(
                "test",
                q.clone(),
                2,
                metrics.controllers(),
                token.clone(),
                move |_key: String| {
                    let calls = calls.clone();
                    async move {
                        let mut c = calls.lock().unwrap();
                        c.push(std::time::Instant::now());
                        if c.len() < 4 {
                            Err("driver says no".to_string())
                        } else {
                            Ok(Outcome::Done)
                        }
                    }
                },
            ))
        };
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

    #[tokio::test]
    async fn a_panic_is_caught_counted_and_retried_while_other_keys_proceed() {
        let metrics = Metrics::default();
        let q = queue(&metrics);
        let ok = Arc::new(AtomicUsize::new(0));
        let bad_calls = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        q.add("bad".to_string());
        for i in 0..5 {
            q.add(format!("good{i}"));
        }
        let task = {
            let (ok, bad_calls) = (ok.clone(), bad_calls.clone());
            tokio::spawn(run_workers(
                "panicky",
                q.clone(),
                1,
                metrics.controllers(),
                token.clone(),
                move |key: String| {
                    let (ok, bad_calls) = (ok.clone(), bad_calls.clone());
                    async move {
                        if key == "bad" && bad_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                            panic!("malformed object");
                        }
                        ok.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(Outcome::Done)
                    }
                },
            ))
        };
        // Capturing a panic's backtrace can be slow, so wait for the outcome, not a fixed time.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while ok.load(Ordering::SeqCst) < 6 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        task.await.unwrap();
        assert_eq!(
            (ok.load(Ordering::SeqCst), bad_calls.load(Ordering::SeqCst)),
            (6, 3),
            "five good keys and the third try of bad"
        );
        assert_eq!(bad_calls.load(Ordering::SeqCst), 3);
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
            "test",
            q.clone(),
            1,
            metrics.controllers(),
            token.clone(),
            |_key: String| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>(Outcome::Done)
            },
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(q.stats().in_flight, 1);
        token.cancel();
        task.await.unwrap();
        let s = q.stats();
        assert_eq!((s.depth, s.in_flight), (1, 0));
    }
}
