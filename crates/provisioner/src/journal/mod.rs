//! The intent journal: where the provisioner records, durably and before any CreateVolume, the
//! volumes it may be creating (see `README.md`, "No leak").
//!
//! ConfigMaps in the manager's namespace (one per driver, sharded beyond 900 KiB, see [`Book`])
//! hold one entry per volume name (the [`Intent`] as JSON). Writes use group commit ([`next`]): one
//! writer task makes JSON merge patches, and whatever arrives during a write goes into a later
//! one. A record after a quiet spell is written at once (a lone claim pays one round trip); while
//! records stream in, they share one patch per [`LINGER`] or go when the stream stops
//! ([`Arrivals`]), or go at once when half the claim
//! workers (at most [`FULL_WRITE`]) wait, even while other writes are in flight (up to
//! [`MAX_IN_FLIGHT`]): a burst is written as fast as the API server stores it, a record waiting
//! one round trip, and the journal never caps throughput at workers per window.
//! Releases never start a write of their own while records flow: they ride along with the next
//! record, or go alone after [`RELEASE_WINDOW`] without one, so they cost about one patch per
//! burst, not one per volume. Users' PVCs carry nothing of ours.
//!
//! Invariants:
//! - A record is acknowledged only once the API server has stored it (its waiter is answered
//!   after the patch returned), and its entry is visible to lookups only from then on.
//! - A release may be lost in a crash, which is harmless: the entry's PV exists, and the next
//!   leader releases it again after one look at its cache.
//! - A volume name is in at most one write in flight ([`Book::take`]): writes in flight may be
//!   applied in any order, and each names only its own keys, so no write undoes another.
//!
//! Only the leader writes (the writer runs inside the controller's leader-only `run`), and each
//! patch names only the keys it sets or removes, so nothing another writer stored is overwritten.
//! If the ConfigMap is deleted, the next write creates it again from memory.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::request::Intent;

/// How long releases wait for a record to ride along with before they are written alone.
pub const RELEASE_WINDOW: Duration = Duration::from_secs(2);
/// How long a record waits for its patch before its pass fails (and is retried with backoff).
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of entries one shard (ConfigMap) holds: a ConfigMap holds at most 1 MiB, and the rest
/// is kept for the object's metadata.
pub const MAX_BYTES: usize = 900 * 1024;
/// Shards (ConfigMaps) of one journal: shard 0 is [`object_name`], shard `n` its name with
/// `.shard-<n>`. Beyond them all (some 14 MiB of volumes in flight) records wait, their claims
/// failing with a `ProvisioningFailed` Event that says so.
pub const MAX_SHARDS: usize = 16;
/// Waiting records that make a write go at once (fewer with few workers: half of them). With
/// upstream's 100 workers, half (50) made most of a burst pay [`LINGER`]: 200 claims had every PV
/// after 4.7 s against upstream's 4.5 s, and 4.0 s with 10 workers (`e2e/bench/
/// provision-throughput.sh`, release build). Ten still groups a burst into few patches.
pub const FULL_WRITE: usize = 10;
/// First and longest pause after a failed write. Every claim of the driver waits for the
/// journal, so the pause is short: after a 60 s API server outage a 30 s pause held every
/// claim back for 20 s after the server's return (`e2e/tests/outage.rs`), where 5 s costs one
/// write attempt per 5 s while the server is away.
const WRITE_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

/// Journal writes in flight at most. While claims stream in, a write of `FULL_WRITE` waiting
/// records starts without waiting for the one before (a record's wait is one round trip, not
/// up to two); each write names only its own keys, and a key is never in two at once (see
/// [`Book::take`]), so their order does not matter.
pub const MAX_IN_FLIGHT: usize = 4;

/// Label on every journal ConfigMap.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Its value.
pub const COMPONENT: &str = "provisioner-intent-journal";
/// Annotation naming the journal's driver (the object's name is derived from it).
pub const ANN_DRIVER: &str = "provisioner.csi-controller-manager.io/driver";

mod book;

pub use book::{Answer, Arrivals, Batch, Book, LINGER, Look, Next, QUIET_MIN, Waiter, next};

/// The journal ConfigMap's name for `driver`: `csi-volume-intents.` and the driver's name
/// lowercased, with anything a DNS subdomain does not allow replaced by `-`. In node deployment
/// each node's instance has its own, with `.<node>` appended.
pub fn object_name(driver: &str) -> String {
    format!("csi-volume-intents.{}", object_name_part(driver))
}

/// `s` lowercased, with anything a DNS subdomain does not allow replaced by `-`.
fn object_name_part(s: &str) -> String {
    let tail: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    tail.trim_matches(|c| c == '.' || c == '-').to_string()
}

/// The journal of one driver (see the module docs).
#[derive(Debug)]
pub struct Journal {
    api: Api<ConfigMap>,
    name: String,
    driver: String,
    book: Mutex<Book>,
    /// When records arrive (offsets from `epoch`), to tell when a stream stops.
    arrivals: Mutex<Arrivals>,
    epoch: tokio::time::Instant,
    wake: Notify,
    /// Waiting records written at once (see [`next`]).
    full: usize,
}

impl Journal {
    /// The journal of `driver` in `namespace`; in node deployment, of that node's instance.
    /// `workers`: the claim workers that may wait on it at once.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        driver: &str,
        node: Option<&str>,
        workers: usize,
    ) -> Self {
        let name = match node {
            Some(n) => format!("{}.{}", object_name(driver), object_name_part(n)),
            None => object_name(driver),
        };
        Journal {
            api: Api::namespaced(client, namespace),
            name,
            driver: driver.to_string(),
            book: Mutex::default(),
            arrivals: Mutex::default(),
            epoch: tokio::time::Instant::now(),
            wake: Notify::new(),
            full: workers.div_ceil(2).clamp(1, FULL_WRITE),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrivals(&self) -> std::sync::MutexGuard<'_, Arrivals> {
        self.arrivals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ConfigMap's name.
    pub fn object_name(&self) -> &str {
        &self.name
    }

    /// The name of shard `shard`'s ConfigMap.
    pub fn shard_name(&self, shard: usize) -> String {
        if shard == 0 {
            self.name.clone()
        } else {
            format!("{}.shard-{shard}", self.name)
        }
    }

    /// Reads the stored journal (absent objects are empty shards): every shard, also past one
    /// that is missing (deleted by hand), so no entry is overlooked. Call before any pass that
    /// reads it; returns how many intents it holds.
    pub async fn load(&self) -> Result<usize, Error> {
        // All shards at once: one round trip, not sixteen, before the first claim pass after a
        // start or a failover (a busy API server made sixteen in a row take seconds).
        let reads = (0..MAX_SHARDS).map(|shard| async move {
            let name = self.shard_name(shard);
            let stored =
                crate::api::call_api("read the intent journal", self.api.get_opt(&name)).await?;
            Ok::<_, Error>((name, stored.and_then(|c| c.data).unwrap_or_default()))
        });
        let shards: Vec<(String, BTreeMap<String, String>)> =
            futures::future::try_join_all(reads).await?;
        let mut book = self.book();
        *book = Book::default();
        for (shard, (name, data)) in shards.iter().enumerate() {
            for (key, why) in book.load_shard(shard, data, &self.driver) {
                tracing::warn!(journal = %name, entry = %key, reason = %why, "journal entry left alone");
            }
        }
        Ok(book.len())
    }

    /// Records `intent` durably; returns once the API server stored it.
    pub async fn record(&self, intent: &Intent) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.book().record(intent, tx).map_err(Error::Held)?;
        self.arrivals().arrived(self.epoch.elapsed());
        self.wake.notify_one();
        let answer = tokio::time::timeout(RECORD_TIMEOUT, rx).await;
        match answer {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::Journal(e)),
            Ok(Err(_)) => Err(Error::Journal("the journal writer stopped".into())),
            Err(_) => Err(Error::Journal("no answer from the journal writer".into())),
        }
    }

    /// Releases the intent of `volume` (written with the next batch).
    pub fn release(&self, volume: &str) {
        self.book().release(volume);
        self.wake.notify_one();
    }

    /// The intent recorded for the claim with this UID.
    pub fn for_claim(&self, uid: &str) -> Option<Intent> {
        self.book().for_claim(uid)
    }

    /// Whether an intent is recorded for the claim with this UID.
    pub fn has_claim(&self, uid: &str) -> bool {
        self.book().has_claim(uid)
    }

    /// The intents recorded for claims of this namespace and name (any UID).
    pub fn for_key(&self, namespace: &str, name: &str) -> Vec<Intent> {
        self.book().for_key(namespace, name)
    }

    /// Every claim key with a recorded intent.
    pub fn claim_keys(&self) -> Vec<controller_kit::NamespacedName> {
        self.book().claim_keys()
    }

    /// The intents in flight (`/debug/intents`): each volume being created or rolled back,
    /// its claim, and whether its record is stored yet.
    pub fn in_flight(&self) -> serde_json::Value {
        serde_json::json!({"journal": self.name, "intents": self.book().in_flight()})
    }

    /// The writer (group commit, see [`next`]): until `token` is cancelled.
    pub async fn write(&self, token: CancellationToken) {
        self.write_to(self, token).await;
    }

    /// The writer's loop, storing each batch with `store` (the API server, or a test's fake):
    /// up to [`MAX_IN_FLIGHT`] writes at a time, each started when [`next`] says so.
    async fn write_to(&self, store: &impl Store, token: CancellationToken) {
        use futures::stream::{FuturesUnordered, StreamExt};
        use tokio::time::Instant;
        let mut backoff = WRITE_BACKOFF.0;
        // After a failed write, no new one starts before this.
        let mut paused_until: Option<Instant> = None;
        let mut last_record_write: Option<Instant> = None;
        // When a waiting write goes (a later look may only bring it forward).
        let mut deadline: Option<Instant> = None;
        let mut writes = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            let paused = paused_until.is_some_and(|t| t > now);
            let (records, anything) = {
                let book = self.book();
                (book.records_waiting(), book.waiting().1)
            };
            let decision = if paused || writes.len() >= MAX_IN_FLIGHT {
                Next::Idle
            } else {
                let (since_arrival, quiet) = {
                    let arrivals = self.arrivals();
                    let at = now - self.epoch;
                    (
                        arrivals.since_last(at).unwrap_or(Duration::MAX),
                        arrivals.quiet(),
                    )
                };
                next(Look {
                    records,
                    anything,
                    since_record_write: last_record_write.map(|t| now - t),
                    since_arrival,
                    quiet,
                    full: self.full,
                    in_flight: writes.len(),
                })
            };
            let write_now = match decision {
                Next::Write => true,
                // Records: the wait is worked out afresh at each look (a new arrival moves the
                // end of the stream later).
                Next::Wait(wait) if records > 0 => {
                    deadline = Some(now + wait);
                    false
                }
                // Releases alone: a later look may only bring their write forward.
                Next::Wait(wait) => {
                    let until =
                        *deadline.insert(deadline.map_or(now + wait, |d| d.min(now + wait)));
                    until <= now
                }
                Next::Idle => false,
            };
            if write_now {
                deadline = None;
                let (batch, waiters) = self.book().take();
                if !waiters.is_empty() {
                    last_record_write = Some(now);
                }
                writes.push(async move {
                    let result = store.store(&batch).await;
                    (batch, waiters, now, result)
                });
                continue;
            }
            let wake_at = if paused {
                paused_until
            } else if matches!(decision, Next::Wait(_)) {
                deadline
            } else {
                None
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => {}
                Some((batch, waiters, started, result)) = writes.next(), if !writes.is_empty() => {
                    match result {
                        Ok(()) => {
                            tracing::debug!(
                                journal = %self.name,
                                records = waiters.len(),
                                releases = batch.data.values().filter(|v| v.is_none()).count(),
                                in_flight = writes.len(),
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "journal written"
                            );
                            self.book().stored(&batch, waiters);
                            backoff = WRITE_BACKOFF.0;
                        }
                        Err(e) => {
                            let message = e.to_string();
                            tracing::warn!(journal = %self.name, error = %message, "journal write failed");
                            self.book().failed(batch, waiters, &message);
                            paused_until = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(WRITE_BACKOFF.1);
                        }
                    }
                }
            }
        }
    }
}

/// Where the writer stores a batch.
trait Store {
    /// Stores `batch`; returns once it is stored (or failed).
    async fn store(&self, batch: &Batch) -> Result<(), Error>;
}

impl Store for Journal {
    /// One write per shard the batch touches, in order: a merge patch, or the whole object when
    /// it does not exist. A failure fails the whole batch (its records retry; what was written
    /// is written again, which is idempotent).
    async fn store(&self, batch: &Batch) -> Result<(), Error> {
        for shard in batch.shards() {
            self.store_shard(batch, shard).await?;
        }
        Ok(())
    }
}

impl Journal {
    async fn store_shard(&self, batch: &Batch, shard: usize) -> Result<(), Error> {
        use crate::api::call_api;
        let name = self.shard_name(shard);
        let patch = batch.patch_for(shard);
        let patched = call_api(
            "write the intent journal",
            self.api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        match patched {
            Err(e) if e.is_not_found() => {}
            r => return r.map(|_| ()),
        }
        let data = self.book().full_data(batch, shard);
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(LABEL_COMPONENT.to_string(), COMPONENT.to_string())].into()),
                annotations: Some([(ANN_DRIVER.to_string(), self.driver.clone())].into()),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        match call_api(
            "create the intent journal",
            self.api.create(&PostParams::default(), &object),
        )
        .await
        {
            // Created meanwhile: patch it.
            Err(e) if e.is_conflict() => call_api(
                "write the intent journal",
                self.api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
            .map(|_| ()),
            r => r.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests;
