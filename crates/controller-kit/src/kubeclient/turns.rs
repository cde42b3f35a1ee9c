//! One API budget shared by several clients that take turns when it runs short: each controller
//! has a client of its own, and all of them draw on the one `--kube-api-qps`/`--kube-api-burst`
//! bucket ([`Bucket`], client-go's token bucket), so the process never sends more than the
//! flags allow. While tokens are left, a request goes at once; when they run short, each
//! request reserves the next token not yet owed and waits for it. Each client's service sits
//! behind kube's `Buffer`, whose one worker calls `poll_ready` and `call`, so a client holds at
//! most one reservation at a time: a client with a backlog reserves its next token only once
//! its previous request has gone, and a client with one request to make reserves the token
//! after it, so the clients take turns. With a single client (every controller's requests in
//! one queue), a controller with one request waited behind another's whole backlog: after a
//! restart the resync of one controller held the others back for a second or two with a few
//! hundred objects (docs/reliability.md, crash safety).
//!
//! A reservation is kept by the service until used: a request abandoned while it waits (its
//! caller timed out) leaves it to the client's next request, and nothing waits on a client that
//! went away. A budget of one client is the token bucket itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::token_bucket::Bucket;

/// A budget of `burst` requests at once and `qps` a second, shared by every client built with
/// one of its [`Budget::layer`]s.
#[derive(Debug, Clone)]
pub struct Budget {
    bucket: Arc<Mutex<Bucket>>,
}

impl Budget {
    /// `qps` and `burst` must be positive (checked by the caller, as for the flags).
    pub fn new(qps: f32, burst: u32) -> Self {
        Budget {
            bucket: Arc::new(Mutex::new(Bucket::new(qps, burst, Instant::now()))),
        }
    }

    /// The layer of one more client on this budget.
    pub fn layer(&self) -> TurnLayer {
        TurnLayer {
            bucket: self.bucket.clone(),
        }
    }
}

/// One client's place in a [`Budget`].
#[derive(Debug, Clone)]
pub struct TurnLayer {
    bucket: Arc<Mutex<Bucket>>,
}

impl<S> Layer<S> for TurnLayer {
    type Service = Turn<S>;

    fn layer(&self, inner: S) -> Turn<S> {
        Turn {
            inner,
            bucket: self.bucket.clone(),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            reserved: false,
            has_token: false,
        }
    }
}

/// The service: ready once its reserved token of the shared budget is due and the inner
/// service is ready.
pub struct Turn<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    /// Until the reserved token is due.
    sleep: Pin<Box<Sleep>>,
    /// A token is reserved, due when `sleep` ends.
    reserved: bool,
    /// A token is held for the next `call` (poll_ready may be called again before it).
    has_token: bool,
}

impl<S, R> Service<R> for Turn<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.has_token {
            if !self.reserved {
                let now = Instant::now();
                let wait = self
                    .bucket
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .reserve(now);
                if wait.is_zero() {
                    self.has_token = true;
                } else {
                    self.sleep.as_mut().reset(now + wait);
                    self.reserved = true;
                }
            }
            if self.reserved {
                if self.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.reserved = false;
                self.has_token = true;
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // tower's contract: `call` follows a ready `poll_ready`, which took the token.
        debug_assert!(self.has_token, "call without poll_ready");
        self.has_token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    type Svc = Turn<tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<Instant, ()>>>>;

    fn client(budget: &Budget) -> Svc {
        fn now(_: ()) -> std::future::Ready<Result<Instant, ()>> {
            std::future::ready(Ok(Instant::now()))
        }
        budget.layer().layer(tower::service_fn(now as fn(()) -> _))
    }

    /// Sends `n` requests one after another; returns when each was sent, from `t0`.
    fn send(mut svc: Svc, n: usize, t0: Instant) -> tokio::task::JoinHandle<Vec<u128>> {
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for _ in 0..n {
                let at = svc.ready().await.unwrap().call(()).await.unwrap();
                sent.push((at - t0).as_millis());
            }
            sent
        })
    }

    // QPS 10, burst 1: one token every 100 ms for the whole process.
    #[tokio::test(start_paused = true)]
    async fn a_client_with_one_request_does_not_wait_behind_anothers_backlog() {
        let budget = Budget::new(10.0, 1);
        let t0 = Instant::now();
        let busy = send(client(&budget), 6, t0);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let lone = send(client(&budget), 1, t0);
        let lone = lone.await.unwrap();
        let busy = busy.await.unwrap();
        assert_eq!(busy[..2], [0, 100], "the burst, then one per interval");
        assert_eq!(
            lone,
            [300],
            "served at the second token after it came, not after the backlog"
        );
        assert_eq!(
            busy[2..],
            [200, 400, 500, 600],
            "the backlog took turns with it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_the_whole_processs() {
        let budget = Budget::new(10.0, 2);
        let t0 = Instant::now();
        let (a, b) = (send(client(&budget), 5, t0), send(client(&budget), 5, t0));
        let mut all: Vec<u128> = a.await.unwrap();
        all.extend(b.await.unwrap());
        all.sort();
        // Two at once, then one every 100 ms for both together: 10 requests by 800 ms.
        assert_eq!(all, [0, 0, 100, 200, 300, 400, 500, 600, 700, 800]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_abandoned_while_waiting_leaves_its_token_to_the_next() {
        let budget = Budget::new(10.0, 1);
        let t0 = Instant::now();
        let mut svc = client(&budget);
        svc.ready().await.unwrap();
        svc.call(()).await.unwrap();
        // The next request reserves the token due at 100 ms and is given up at 10 ms.
        let waiting = tokio::time::timeout(Duration::from_millis(10), svc.ready()).await;
        assert!(waiting.is_err());
        // Another client queues behind that reservation, not blocked by it.
        let other = send(client(&budget), 1, t0);
        // The client's next request uses the token it reserved.
        svc.ready().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_millis(100));
        svc.call(()).await.unwrap();
        assert_eq!(other.await.unwrap(), [200]);
    }

    // A budget of one client is client-go's token bucket. Six requests at burst 4, QPS 2: four
    // at once, then one every 0.5 s: the last at 1 s (a fixed window of 4 per 2 s would send it
    // at 2 s).
    #[tokio::test(start_paused = true)]
    async fn requests_after_the_burst_wait_for_the_next_token_not_a_window() {
        let t0 = Instant::now();
        let sent = send(client(&Budget::new(2.0, 4)), 6, t0).await.unwrap();
        assert_eq!(sent, [0, 0, 0, 0, 500, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_twice_takes_one_token() {
        let mut svc = client(&Budget::new(1.0, 1));
        svc.ready().await.unwrap();
        svc.ready().await.unwrap();
        let t0 = Instant::now();
        svc.call(()).await.unwrap();
        svc.ready().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    }
}
