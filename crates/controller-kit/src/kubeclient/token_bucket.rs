//! The controllers' client-side API budget: client-go's token bucket
//! (`flowcontrol.NewTokenBucketRateLimiter`, what `--kube-api-qps`/`--kube-api-burst` mean in
//! the sidecars). The bucket holds at most `burst` tokens and gains `qps` a second; a request
//! takes one, and waits for it when none is left.
//!
//! tower's `RateLimit`, used before, is a fixed window: `burst` requests, then nothing until
//! `burst / qps` seconds have passed. Its long-run rate is the same, but after a burst every
//! request waits for the whole window instead of the next token: 500 attachments at QPS 200,
//! burst 400 took 4.6 s against the Go attacher's 3.1 s, though ours makes two requests per
//! attachment there to its three (`e2e/bench/attach-detach.sh`, 2026-12-03).
//!
//! The service is not shared: kube's `Client` runs its stack behind one `Buffer`, whose worker
//! alone calls `poll_ready` and `call`, so one bucket serves every clone of the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// The bucket's arithmetic, with no I/O.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub(super) fn new(qps: f32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket {
            qps: f64::from(qps).max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token if there is one at `now` (`None`); else how long until there is.
    pub(super) fn take(&mut self, now: Instant) -> Option<Duration> {
        if now > self.at {
            let gained = now.duration_since(self.at).as_secs_f64() * self.qps;
            self.tokens = (self.tokens + gained).min(self.burst);
            self.at = now;
        }
        // Within rounding of a whole token counts as one: else a wait of a few nanoseconds
        // could come back, which a timer of millisecond resolution ends at once, again and
        // again.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

/// The layer: `burst` requests at once, `qps` a second sustained.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucketLayer {
    qps: f32,
    burst: u32,
}

impl TokenBucketLayer {
    /// `qps` and `burst` must be positive (checked by the caller, as for the flags).
    pub fn new(qps: f32, burst: u32) -> Self {
        TokenBucketLayer { qps, burst }
    }
}

impl<S> Layer<S> for TokenBucketLayer {
    type Service = TokenBucket<S>;

    fn layer(&self, inner: S) -> TokenBucket<S> {
        TokenBucket {
            inner,
            bucket: Bucket::new(self.qps, self.burst, Instant::now()),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            has_token: false,
        }
    }
}

/// The service: ready once it holds a token and the inner service is ready.
pub struct TokenBucket<S> {
    inner: S,
    bucket: Bucket,
    sleep: Pin<Box<Sleep>>,
    /// A token was taken for the next `call` (poll_ready may be called again before it).
    has_token: bool,
}

impl<S, R> Service<R> for TokenBucket<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.has_token {
            match self.bucket.take(Instant::now()) {
                None => self.has_token = true,
                Some(wait) => {
                    self.sleep.as_mut().reset(Instant::now() + wait);
                    if self.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
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

    #[test]
    fn a_full_bucket_gives_burst_tokens_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 4, t0);
        for _ in 0..4 {
            assert_eq!(b.take(t0), None);
        }
        assert_eq!(b.take(t0), Some(Duration::from_millis(500)));
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(t1), None);
        assert_eq!(b.take(t1), Some(Duration::from_millis(500)));
        // A long pause refills to `burst`, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(b.take(t2), None);
        }
        assert!(b.take(t2).is_some());
    }

    // Six requests at burst 4, QPS 2: four at once, then one every 0.5 s: the last at 1 s (a
    // fixed window of 4 per 2 s would send it at 2 s).
    #[tokio::test(start_paused = true)]
    async fn requests_after_the_burst_wait_for_the_next_token_not_a_window() {
        let t0 = Instant::now();
        let inner =
            tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(Instant::now()) });
        let mut svc = TokenBucketLayer::new(2.0, 4).layer(inner);
        let mut sent = Vec::new();
        for _ in 0..6 {
            sent.push(svc.ready().await.unwrap().call(()).await.unwrap() - t0);
        }
        let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 0, 500, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_twice_takes_one_token() {
        let inner = tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) });
        let mut svc = TokenBucketLayer::new(1.0, 1).layer(inner);
        svc.ready().await.unwrap();
        svc.ready().await.unwrap();
        let t0 = Instant::now();
        svc.call(()).await.unwrap();
        svc.ready().await.unwrap();
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
    }
}
