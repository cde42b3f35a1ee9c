//! The intent journal: where the provisioner records, durably and before any CreateVolume, the
//! volumes it may be creating (see `README.md`, "No leak").
//!
//! One ConfigMap per driver in the manager's namespace holds one entry per volume name (the
//! [`Intent`] as JSON). Writes use group commit ([`next`]): one writer makes one JSON merge patch
//! at a time, and whatever arrives during a write goes into the next one. A record after a quiet
//! spell is written at once (a lone claim pays one round trip); while records stream in, they
//! share one patch per [`LINGER`], or go at once when half the claim workers wait (so a burst is
//! written as fast as the API server stores it, each patch carrying what arrived during the
//! previous one, and the journal never caps throughput at workers per window). Releases never
//! start a write of their own while records flow: they ride along with the next record, or go
//! alone after [`RELEASE_WINDOW`] without one, so they cost about one patch per burst, not one
//! per volume. Users' PVCs carry nothing of ours.
//!
//! Invariants:
//! - A record is acknowledged only once the API server has stored it (its waiter is answered
//!   after the patch returned), and its entry is visible to lookups only from then on.
//! - A release may be lost in a crash, which is harmless: the entry's PV exists, and the next
//!   leader releases it again after one look at its cache.
//! - At most one write is in flight (a single writer task), so patches are applied in order.
//!
//! Only the leader writes (the writer runs inside the controller's leader-only `run`), and each
//! patch names only the keys it sets or removes, so nothing another writer stored is overwritten.
//! If the ConfigMap is deleted, the next write creates it again from memory.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::request::Intent;

/// How long releases wait for a record to ride along with before they are written alone.
pub const RELEASE_WINDOW: Duration = Duration::from_secs(2);
/// How long a record waits for its patch before its pass fails (and is retried with backoff).
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries beyond this many bytes wait (their passes fail and retry): a ConfigMap holds at most
/// 1 MiB, and the rest is kept for the object's metadata.
pub const MAX_BYTES: usize = 900 * 1024;
/// First and longest pause after a failed write.
const WRITE_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Label on every journal ConfigMap.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Its value.
pub const COMPONENT: &str = "provisioner-intent-journal";
/// Annotation naming the journal's driver (the object's name is derived from it).
pub const ANN_DRIVER: &str = "provisioner.csi-controller-manager.io/driver";

/// While records stream in, how long after the start of a record write the next one waits for
/// others to share it (unless half the claim workers already wait, see [`next`]). It bounds
/// record patches to two a second in a stream: kube-controller-manager at its default client QPS
/// (20) hands over 50 claims in about 3 s, which then cost about 7 patches, and API requests
/// per volume stay below upstream's (`e2e/bench/api-requests.sh`).
pub const LINGER: Duration = Duration::from_millis(500);

/// What the writer does next, decided whenever no write is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing waits: sleep until something is queued.
    Idle,
    /// Write everything pending now, in one patch.
    Write,
    /// Write when this long has passed, or earlier if [`next`] says so on a later look.
    Wait(Duration),
}

/// Group commit, decided when no write is in flight: `records` how many records wait,
/// `anything` whether a record or a release waits, `since_record_write` how long ago the last
/// write with records started, `full` how many waiting records are worth a write at once.
///
/// - A record after a quiet spell (no record write for [`LINGER`]) is written at once: a lone
///   claim pays one round trip.
/// - While records stream in, they share one patch per [`LINGER`], unless `full` of them wait
///   (half the claim workers): then at once, so the journal never holds most workers idle; a
///   burst is written as fast as the API server stores it, each patch carrying what arrived
///   during the previous one.
/// - Releases never start a write while records flow: they ride along with the next record, or
///   go alone after [`RELEASE_WINDOW`] without one (the last releases of a burst share one).
pub fn next(
    records: usize,
    anything: bool,
    since_record_write: Option<Duration>,
    full: usize,
) -> Next {
    if records >= full.max(1) {
        return Next::Write;
    }
    if records > 0 {
        return match since_record_write {
            Some(d) if d < LINGER => Next::Wait(LINGER - d),
            _ => Next::Write,
        };
    }
    if anything {
        Next::Wait(RELEASE_WINDOW)
    } else {
        Next::Idle
    }
}

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

/// Where a record's outcome is sent.
pub type Answer = oneshot::Sender<Result<(), String>>;
/// A record waiting for its write.
#[derive(Debug)]
pub struct Waiter {
    intent: Intent,
    /// Its share of the journal's bytes (key and JSON), counted once at `record`.
    size: usize,
    answer: Answer,
}

/// The pure part of the journal: committed entries, the writes not yet made, their waiters.
#[derive(Debug, Default)]
pub struct Book {
    /// Entries the API server stored (or will store, for releases not yet written):
    /// volume name -> intent and its JSON length.
    entries: BTreeMap<String, (Intent, usize)>,
    /// Writes not yet made: volume name -> the JSON to store, or `None` to remove.
    pending: BTreeMap<String, Option<String>>,
    /// Records waiting for their write.
    waiters: Vec<Waiter>,
    /// Bytes of the entries plus the records pending.
    bytes: usize,
}

/// One batched write.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The merge patch's `data`: volume name -> JSON or null.
    pub data: BTreeMap<String, Option<String>>,
}

impl Book {
    /// Loads the entries of a stored ConfigMap's `data`; returns the keys that were not
    /// readable or not this driver's (left alone) with why.
    pub fn load(&mut self, data: &BTreeMap<String, String>, driver: &str) -> Vec<(String, String)> {
        *self = Book::default();
        let mut skipped = Vec::new();
        for (key, json) in data {
            match serde_json::from_str::<Intent>(json) {
                Ok(i) if i.driver == driver && i.volume_name == *key => {
                    self.bytes += key.len() + json.len();
                    self.entries
                        .insert(key.clone(), (i, key.len() + json.len()));
                }
                Ok(i) if i.driver != driver => {
                    skipped.push((key.clone(), format!("recorded by driver {}", i.driver)));
                }
                Ok(_) => skipped.push((key.clone(), "recorded under another name".into())),
                Err(e) => skipped.push((key.clone(), format!("unreadable: {e}"))),
            }
        }
        skipped
    }

    /// Queues a record; fails at once if the journal is full.
    pub fn record(&mut self, intent: &Intent, done: Answer) -> Result<(), String> {
        let json = serde_json::to_string(intent).map_err(|e| e.to_string())?;
        let size = intent.volume_name.len() + json.len();
        if self.bytes + size > MAX_BYTES {
            return Err(format!(
                "the intent journal is full ({} volumes in flight); waiting for some to finish",
                self.entries.len()
            ));
        }
        self.bytes += size;
        self.pending.insert(intent.volume_name.clone(), Some(json));
        self.waiters.push(Waiter {
            intent: intent.clone(),
            size,
            answer: done,
        });
        Ok(())
    }

    /// Queues a release; the entry is gone from lookups at once.
    pub fn release(&mut self, volume: &str) {
        if let Some((_, size)) = self.entries.remove(volume) {
            self.bytes = self.bytes.saturating_sub(size);
        }
        self.pending.insert(volume.to_string(), None);
    }

    /// Whether any record waits, whether anything (a record or a release) waits.
    pub fn waiting(&self) -> (bool, bool) {
        (!self.waiters.is_empty(), !self.pending.is_empty())
    }

    /// How many records wait.
    pub fn records_waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Takes everything pending as one batch, with the waiters it answers.
    pub fn take(&mut self) -> (Batch, Vec<Waiter>) {
        let data = std::mem::take(&mut self.pending);
        (Batch { data }, std::mem::take(&mut self.waiters))
    }

    /// The batch was stored: recorded entries become visible.
    pub fn stored(&mut self, waiters: Vec<Waiter>) {
        for w in waiters {
            // The pending bytes become the entry's.
            let volume = w.intent.volume_name.clone();
            if let Some((_, old)) = self.entries.insert(volume, (w.intent, w.size)) {
                self.bytes = self.bytes.saturating_sub(old);
            }
            let _ = w.answer.send(Ok(()));
        }
    }

    /// The batch failed: records are answered with the error (their passes retry); releases are
    /// queued again unless something newer replaced them.
    pub fn failed(&mut self, batch: Batch, waiters: Vec<Waiter>, error: &str) {
        for w in waiters {
            self.bytes = self.bytes.saturating_sub(w.size);
            let _ = w.answer.send(Err(error.to_string()));
        }
        for (volume, value) in batch.data {
            if value.is_none() {
                self.pending.entry(volume).or_insert(None);
            }
        }
    }

    /// The whole content to store when the object has to be created.
    pub fn full_data(&self, batch: &Batch) -> BTreeMap<String, String> {
        let mut data: BTreeMap<String, String> = self
            .entries
            .iter()
            .filter_map(|(k, (i, _))| Some((k.clone(), serde_json::to_string(i).ok()?)))
            .collect();
        for (k, v) in &batch.data {
            match v {
                Some(json) => data.insert(k.clone(), json.clone()),
                None => data.remove(k),
            };
        }
        data
    }

    /// The intent recorded for the claim with this UID.
    pub fn for_claim(&self, uid: &str) -> Option<Intent> {
        self.claim_entry(uid).cloned()
    }

    /// Whether an intent is recorded for the claim with this UID (no copy: the informer's
    /// filter asks this for every claim event).
    pub fn has_claim(&self, uid: &str) -> bool {
        self.claim_entry(uid).is_some()
    }

    fn claim_entry(&self, uid: &str) -> Option<&Intent> {
        self.entries
            .values()
            .map(|(i, _)| i)
            .find(|i| i.claim_uid == uid)
    }

    /// The intents recorded for claims of this namespace and name (any UID).
    pub fn for_key(&self, namespace: &str, name: &str) -> Vec<Intent> {
        self.entries
            .values()
            .filter(|(i, _)| i.claim_namespace == namespace && i.claim_name == name)
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// Every claim key (`namespace/name`) with a recorded intent.
    pub fn claim_keys(&self) -> Vec<controller_kit::NamespacedName> {
        self.entries
            .values()
            .map(|(i, _)| controller_kit::NamespacedName::new(&i.claim_namespace, &i.claim_name))
            .collect()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Batch {
    /// The JSON merge patch of this batch.
    pub fn patch(&self) -> Value {
        let data: serde_json::Map<String, Value> = self
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        json!({ "data": data })
    }
}

/// The journal of one driver (see the module docs).
#[derive(Debug)]
pub struct Journal {
    api: Api<ConfigMap>,
    name: String,
    driver: String,
    book: Mutex<Book>,
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
            wake: Notify::new(),
            full: workers.div_ceil(2).max(1),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ConfigMap's name.
    pub fn object_name(&self) -> &str {
        &self.name
    }

    /// Reads the stored journal (an absent object is an empty journal). Call before any pass
    /// that reads it; returns how many intents it holds.
    pub async fn load(&self) -> Result<usize, Error> {
        let stored =
            crate::api::call_api("read the intent journal", self.api.get_opt(&self.name)).await?;
        let data = stored.and_then(|c| c.data).unwrap_or_default();
        let mut book = self.book();
        for (key, why) in book.load(&data, &self.driver) {
            tracing::warn!(journal = %self.name, entry = %key, reason = %why, "journal entry left alone");
        }
        Ok(book.len())
    }

    /// Records `intent` durably; returns once the API server stored it.
    pub async fn record(&self, intent: &Intent) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.book().record(intent, tx).map_err(Error::Held)?;
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

    /// The writer (group commit, see [`next`]): one patch at a time, until `token` is cancelled.
    pub async fn write(&self, token: CancellationToken) {
        self.write_to(self, token).await;
    }

    /// The writer's loop, storing each batch with `store` (the API server, or a test's fake).
    async fn write_to(&self, store: &impl Store, token: CancellationToken) {
        use tokio::time::Instant;
        let mut backoff = WRITE_BACKOFF.0;
        let mut last_record_write: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let (records, anything) = {
                let book = self.book();
                (book.records_waiting(), book.waiting().1)
            };
            let since = last_record_write.map(|t| t.elapsed());
            match next(records, anything, since, self.full) {
                Next::Idle => {
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = self.wake.notified() => continue,
                    }
                }
                Next::Wait(wait) => {
                    // A later look may only bring the write forward.
                    let until = *deadline.insert(
                        deadline.map_or(Instant::now() + wait, |d| d.min(Instant::now() + wait)),
                    );
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep_until(until) => {}
                        () = self.wake.notified() => continue,
                    }
                }
                Next::Write => {}
            }
            deadline = None;
            let (batch, waiters) = self.book().take();
            let started = Instant::now();
            if !waiters.is_empty() {
                last_record_write = Some(started);
            }
            match store.store(&batch).await {
                Ok(()) => {
                    tracing::debug!(
                        journal = %self.name,
                        records = waiters.len(),
                        releases = batch.data.values().filter(|v| v.is_none()).count(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "journal written"
                    );
                    self.book().stored(waiters);
                    backoff = WRITE_BACKOFF.0;
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(journal = %self.name, error = %message, "journal write failed");
                    self.book().failed(batch, waiters, &message);
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(WRITE_BACKOFF.1);
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
    /// One write: a merge patch, or the whole object when it does not exist.
    async fn store(&self, batch: &Batch) -> Result<(), Error> {
        use crate::api::call_api;
        let patch = batch.patch();
        let patched = call_api(
            "write the intent journal",
            self.api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        match patched {
            Err(e) if e.is_not_found() => {}
            r => return r.map(|_| ()),
        }
        let data = self.book().full_data(batch);
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
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
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
            .map(|_| ()),
            r => r.map(|_| ()),
        }
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
