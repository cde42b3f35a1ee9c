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
//! This module is the arithmetic; the service that waits for the tokens is
//! [`Turn`](super::turns::Turn), on a budget of one client or shared by several.

use std::time::Duration;

use tokio::time::Instant;

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

    /// Takes the next token at `now`: how long until it is the caller's (zero when one is
    /// left). Tokens not yet there are owed, the balance below zero, and later callers wait
    /// behind them: a caller holding a reservation is served before one that comes after it.
    pub(super) fn reserve(&mut self, now: Instant) -> Duration {
        if now > self.at {
            let gained = now.duration_since(self.at).as_secs_f64() * self.qps;
            self.tokens = (self.tokens + gained).min(self.burst);
            self.at = now;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_burst_tokens_then_one_per_interval() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 4, t0);
        for _ in 0..4 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // The next tokens are owed, in order.
        assert_eq!(b.reserve(t0), ms(500));
        assert_eq!(b.reserve(t0), ms(1000));
        // Half a second on, one came (and is owed): the next is 1 s away.
        assert_eq!(b.reserve(t0 + ms(500)), ms(1000));
        // A long pause refills to `burst`, not beyond.
        let t2 = t0 + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(b.reserve(t2), Duration::ZERO);
        }
        assert_eq!(b.reserve(t2), ms(500));
    }
}
