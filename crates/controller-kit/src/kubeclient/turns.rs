//! One API budget shared by several clients that take turns when it runs short: each controller
//! has a client of its own, and all of them draw on the one `--kube-api-qps`/`--kube-api-burst`
//! bucket ([`Bucket`], client-go's token bucket), so the process never sends more than the
//! flags allow. While tokens are left, a request goes at once; when they run short, the clients
//! waiting are served one token each in turn. With a single client (every controller's requests
//! in one queue), a controller with one request to make waited behind another's whole backlog:
//! after a restart the resync of one controller held the others back for a second or two with a
//! few hundred objects (docs/reliability.md, crash safety).
//!
//! Each client's service sits behind kube's `Buffer`, whose one worker calls `poll_ready` and
//! `call`, so a client waits for at most one token at a time: the turns are between clients,
//! and each client's own requests keep their order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::token_bucket::Bucket;

/// The shared bucket and the clients waiting for its tokens.
#[derive(Debug)]
struct State {
    bucket: Bucket,
    /// Clients waiting for a token, in turn order; each at most once.
    waiting: VecDeque<u64>,
    /// How to wake each waiting client but the first (which waits on its own timer).
    wakers: HashMap<u64, Waker>,
    next_id: u64,
}

impl State {
    /// Wakes the client whose turn it now is.
    fn wake_first(&mut self) {
        if let Some(first) = self.waiting.front()
            && let Some(waker) = self.wakers.remove(first)
        {
            waker.wake();
        }
    }
}

/// A budget of `burst` requests at once and `qps` a second, shared by every client built with
/// one of its [`Budget::layer`]s.
#[derive(Debug, Clone)]
pub struct Budget {
    state: Arc<Mutex<State>>,
}

impl Budget {
    /// `qps` and `burst` must be positive (checked by the caller, as for the flags).
    pub fn new(qps: f32, burst: u32) -> Self {
        Budget {
            state: Arc::new(Mutex::new(State {
                bucket: Bucket::new(qps, burst, Instant::now()),
                waiting: VecDeque::new(),
                wakers: HashMap::new(),
                next_id: 0,
            })),
        }
    }

    /// The layer of one more client on this budget.
    pub fn layer(&self) -> TurnLayer {
        let id = {
            let mut state = lock(&self.state);
            state.next_id += 1;
            state.next_id
        };
        TurnLayer {
            state: self.state.clone(),
            id,
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client's place in a [`Budget`]; build one client with it.
#[derive(Debug)]
pub struct TurnLayer {
    state: Arc<Mutex<State>>,
    id: u64,
}

impl<S> Layer<S> for TurnLayer {
    type Service = Turn<S>;

    fn layer(&self, inner: S) -> Turn<S> {
        Turn {
            inner,
            state: self.state.clone(),
            id: self.id,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            has_token: false,
        }
    }
}

/// The service: ready once it holds a token of the shared budget and the inner service is
/// ready.
pub struct Turn<S> {
    inner: S,
    state: Arc<Mutex<State>>,
    id: u64,
    sleep: Pin<Box<Sleep>>,
    /// A token was taken for the next `call` (poll_ready may be called again before it).
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
        while !self.has_token {
            let now = Instant::now();
            let wait = {
                let mut state = lock(&self.state);
                if !state.waiting.contains(&self.id) {
                    state.waiting.push_back(self.id);
                }
                if state.waiting.front() != Some(&self.id) {
                    // Another client's turn: it wakes this one when it has its token.
                    state.wakers.insert(self.id, cx.waker().clone());
                    return Poll::Pending;
                }
                match state.bucket.take(now) {
                    None => {
                        state.waiting.pop_front();
                        state.wakers.remove(&self.id);
                        state.wake_first();
                        self.has_token = true;
                        continue;
                    }
                    Some(wait) => wait,
                }
            };
            self.sleep.as_mut().reset(now + wait);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
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

impl<S> Drop for Turn<S> {
    /// A client that goes away gives up its turn, so the others are not left waiting for it.
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        let was_first = state.waiting.front() == Some(&self.id);
        state.waiting.retain(|id| *id != self.id);
        state.wakers.remove(&self.id);
        if was_first {
            state.wake_first();
        }
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
    async fn a_client_dropped_while_waiting_gives_up_its_turn() {
        let budget = Budget::new(10.0, 1);
        let t0 = Instant::now();
        let mut first = client(&budget);
        first.ready().await.unwrap();
        // Its next request waits for the next token (100 ms); meanwhile another queues.
        let mut waiting = client(&budget);
        assert!(futures::poll!(Box::pin(waiting.ready())).is_pending());
        let other = send(client(&budget), 1, t0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(waiting);
        assert_eq!(other.await.unwrap(), [100]);
        first.call(()).await.unwrap();
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
