//! The journal's pure book-keeping, with no I/O: the entries the API server stored, the writes not
//! yet made and the records waiting for them ([`Book`]), what one write sends ([`Batch`]), and
//! when the writer writes ([`next`], group commit). The I/O around it is in the parent module.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{MAX_BYTES, MAX_SHARDS, RELEASE_WINDOW};
use crate::request::Intent;

/// While records stream in, how long after the start of a record write the next one waits for
/// others to share it (unless half the claim workers, at most ten, already wait, see [`next`]). It
/// bounds record patches to two a second in a stream: kube-controller-manager at its default client
/// QPS (20) hands over 50 claims in about 3 s, which then cost about 7 patches, and API requests
/// per volume stay below upstream's (`e2e/bench/api-requests.sh`).
pub const LINGER: Duration = Duration::from_millis(500);
/// The shortest quiet spell that ends a stream of records (see [`Arrivals::quiet`]).
pub const QUIET_MIN: Duration = Duration::from_millis(10);

/// When records arrive: the time between arrivals, smoothed, to tell the end of a stream. A
/// stream of records is over when none has come for twice the usual time between them: then
/// those waiting are written at once rather than [`LINGER`] after the last write (the tail of a
/// burst of 50 claims waited up to 500 ms for records that would not come: every PV in 0.94 s
/// against upstream's 0.38 s). While claims trickle in at an even pace (kube-controller-manager
/// handing them over at its QPS), no gap is that long, and they still share a patch per
/// [`LINGER`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Arrivals {
    /// The last arrival, as an offset from any fixed start the caller chooses.
    last: Option<Duration>,
    /// The smoothed time between arrivals (each gap counted up to [`LINGER`]).
    gap: Option<Duration>,
}

impl Arrivals {
    /// A record arrived at `now`.
    pub fn arrived(&mut self, now: Duration) {
        if let Some(last) = self.last {
            let sample = now.saturating_sub(last).min(LINGER);
            // An exponential average, a quarter weight to the newest gap.
            self.gap = Some(self.gap.map_or(sample, |g| (g * 3 + sample) / 4));
        }
        self.last = Some(now);
    }

    /// How long before `now` the last record arrived.
    pub fn since_last(&self, now: Duration) -> Option<Duration> {
        self.last.map(|l| now.saturating_sub(l))
    }

    /// The quiet spell that ends a stream: twice the usual gap, between [`QUIET_MIN`] and
    /// [`LINGER`] ([`LINGER`] while no gap is known).
    pub fn quiet(&self) -> Duration {
        self.gap
            .map_or(LINGER, |g| (g * 2).clamp(QUIET_MIN, LINGER))
    }
}

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

/// What the writer knows when it decides: `records` how many records wait, `anything` whether
/// a record or a release waits, `since_record_write` how long ago the last write with records
/// started, `since_arrival` how long ago the last record arrived and `quiet` the quiet spell
/// that ends a stream ([`Arrivals`]), `full` how many waiting records are worth a write at once,
/// `in_flight` how many writes are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub records: usize,
    pub anything: bool,
    pub since_record_write: Option<Duration>,
    pub since_arrival: Duration,
    pub quiet: Duration,
    pub full: usize,
    pub in_flight: usize,
}

/// Group commit, decided whenever the writer may start a write (fewer than
/// [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT) in flight), from what it knows ([`Look`]).
///
/// - A record after a quiet spell (no record write for [`LINGER`]) is written at once: a lone
///   claim pays one round trip.
/// - While records stream in, they share one patch per [`LINGER`], or go when the stream stops
///   (no record for `quiet`, [`Arrivals`]), unless `full` of them wait
///   (half the claim workers, at most `FULL_WRITE`): then at once, also while other writes are
///   in flight, so the journal never holds most workers idle; a burst is written as fast as the
///   API server stores it, in several patches at a time, each carrying what arrived since the
///   one before.
/// - Fewer than `full` records never start a write while another is in flight: they wait for
///   its answer (or for more records), so a trickle is not split into a write per record.
/// - Releases never start a write while records flow: they ride along with the next record, or
///   go alone after [`RELEASE_WINDOW`] without one (the last releases of a burst share one).
pub fn next(look: Look) -> Next {
    let Look {
        records,
        anything,
        since_record_write,
        since_arrival,
        quiet,
        full,
        in_flight,
    } = look;
    if records >= full.max(1) {
        return Next::Write;
    }
    if in_flight > 0 {
        return Next::Idle;
    }
    if records > 0 {
        return match since_record_write {
            Some(d) if d < LINGER && since_arrival < quiet => {
                Next::Wait((LINGER - d).min(quiet - since_arrival))
            }
            _ => Next::Write,
        };
    }
    if anything {
        Next::Wait(RELEASE_WINDOW)
    } else {
        Next::Idle
    }
}
/// Where a record's outcome is sent.
pub type Answer = oneshot::Sender<Result<(), String>>;
/// A record waiting for its write.
#[derive(Debug)]
pub struct Waiter {
    intent: Intent,
    /// Its share of its shard's bytes (key and JSON), counted once at `record`.
    size: usize,
    /// The shard (ConfigMap) it is written to.
    shard: usize,
    answer: Answer,
}

/// The pure part of the journal: committed entries, the writes not yet made, their waiters.
///
/// The journal is split into shards, one ConfigMap each, of at most [`MAX_BYTES`]: a record goes
/// to the first shard with room, so entries that stay (a rollback the driver keeps refusing) fill
/// one shard and never refuse a new claim while another has room. An entry stays in its shard
/// until released.
#[derive(Debug, Default)]
pub struct Book {
    /// Entries the API server stored (or will store, for releases not yet written):
    /// volume name -> intent, its JSON length and its shard.
    entries: BTreeMap<String, (Intent, usize, usize)>,
    /// Writes not yet made: volume name -> the JSON to store, or `None` to remove.
    pending: BTreeMap<String, Option<String>>,
    /// The shard of each pending write.
    pending_shard: BTreeMap<String, usize>,
    /// Records waiting for their write.
    waiters: Vec<Waiter>,
    /// Bytes of the entries plus the records pending, per shard.
    bytes: Vec<usize>,
    /// Volume names in a write in flight. A name stays out of new batches until that write is
    /// answered: two writes in flight may be applied in either order, so a later write of the
    /// same name (a release after its record) must not start before the earlier one is stored.
    in_flight: BTreeSet<String>,
}

/// One batched write.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The merge patch's `data`: volume name -> JSON or null.
    pub data: BTreeMap<String, Option<String>>,
    /// The shard of each key of `data`.
    pub shard: BTreeMap<String, usize>,
}

impl Book {
    /// Loads the entries of a stored journal's shard 0 from its ConfigMap's `data`, forgetting
    /// everything else; returns the keys that were not readable or not this driver's (left
    /// alone) with why. Further shards: [`Book::load_shard`].
    pub fn load(&mut self, data: &BTreeMap<String, String>, driver: &str) -> Vec<(String, String)> {
        *self = Book::default();
        self.load_shard(0, data, driver)
    }

    /// Adds the entries of shard `shard` (see [`Book::load`]).
    pub fn load_shard(
        &mut self,
        shard: usize,
        data: &BTreeMap<String, String>,
        driver: &str,
    ) -> Vec<(String, String)> {
        let mut skipped = Vec::new();
        for (key, json) in data {
            match serde_json::from_str::<Intent>(json) {
                Ok(i) if i.driver == driver && i.volume_name == *key => {
                    let size = key.len() + json.len();
                    *self.shard_bytes(shard) += size;
                    if let Some((_, old, at)) = self.entries.insert(key.clone(), (i, size, shard)) {
                        *self.shard_bytes(at) -= old;
                    }
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

    fn shard_bytes(&mut self, shard: usize) -> &mut usize {
        if self.bytes.len() <= shard {
            self.bytes.resize(shard + 1, 0);
        }
        &mut self.bytes[shard]
    }

    /// The shard `volume` is in (stored or pending), if any.
    fn shard_of(&self, volume: &str) -> Option<usize> {
        self.pending_shard
            .get(volume)
            .copied()
            .or_else(|| self.entries.get(volume).map(|(_, _, s)| *s))
    }

    /// Queues a record in the first shard with room (or the shard already holding the volume);
    /// fails at once if every shard is full.
    pub fn record(&mut self, intent: &Intent, done: Answer) -> Result<(), String> {
        let json = serde_json::to_string(intent).map_err(|e| e.to_string())?;
        let size = intent.volume_name.len() + json.len();
        let shard = match self.shard_of(&intent.volume_name) {
            Some(s) => s,
            None => (0..MAX_SHARDS)
                .find(|&s| self.bytes.get(s).copied().unwrap_or(0) + size <= MAX_BYTES)
                .ok_or_else(|| {
                    format!(
                        "the intent journal is full ({} volumes in flight in {MAX_SHARDS} ConfigMaps); waiting for some to finish",
                        self.entries.len()
                    )
                })?,
        };
        *self.shard_bytes(shard) += size;
        self.pending.insert(intent.volume_name.clone(), Some(json));
        self.pending_shard.insert(intent.volume_name.clone(), shard);
        self.waiters.push(Waiter {
            intent: intent.clone(),
            size,
            shard,
            answer: done,
        });
        Ok(())
    }

    /// Queues a release; the entry is gone from lookups at once.
    pub fn release(&mut self, volume: &str) {
        let shard = self.shard_of(volume).unwrap_or(0);
        if let Some((_, size, at)) = self.entries.remove(volume) {
            let bytes = self.shard_bytes(at);
            *bytes = bytes.saturating_sub(size);
        }
        self.pending.insert(volume.to_string(), None);
        self.pending_shard.insert(volume.to_string(), shard);
    }

    /// Whether any record waits, whether anything (a record or a release) waits, for a write
    /// that may start now (names in a write in flight wait for its answer and do not count).
    pub fn waiting(&self) -> (bool, bool) {
        let free = |k: &String| !self.in_flight.contains(k);
        (self.records_waiting() > 0, self.pending.keys().any(free))
    }

    /// How many records wait for a write that may start now.
    pub fn records_waiting(&self) -> usize {
        self.waiters
            .iter()
            .filter(|w| !self.in_flight.contains(&w.intent.volume_name))
            .count()
    }

    /// Takes everything pending as one batch, with the waiters it answers, except the names in
    /// a write in flight (they wait for its answer); the batch's names are in flight until
    /// [`Book::stored`] or [`Book::failed`].
    pub fn take(&mut self) -> (Batch, Vec<Waiter>) {
        let held: BTreeSet<String> = self
            .pending
            .keys()
            .filter(|k| self.in_flight.contains(*k))
            .cloned()
            .collect();
        let (mut data, mut shard) = (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.pending_shard),
        );
        for k in &held {
            if let Some(v) = data.remove(k) {
                self.pending.insert(k.clone(), v);
            }
            if let Some(s) = shard.remove(k) {
                self.pending_shard.insert(k.clone(), s);
            }
        }
        let (waiters, kept) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| !held.contains(&w.intent.volume_name));
        self.waiters = kept;
        self.in_flight.extend(data.keys().cloned());
        (Batch { data, shard }, waiters)
    }

    /// How many names are in writes in flight.
    pub fn names_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The batch was stored: recorded entries become visible.
    pub fn stored(&mut self, batch: &Batch, waiters: Vec<Waiter>) {
        for k in batch.data.keys() {
            self.in_flight.remove(k);
        }
        for w in waiters {
            let volume = w.intent.volume_name.clone();
            if matches!(self.pending.get(&volume), Some(None)) {
                // Released while its write was in flight: stored, and already on its way out.
                let bytes = self.shard_bytes(w.shard);
                *bytes = bytes.saturating_sub(w.size);
                let _ = w.answer.send(Ok(()));
                continue;
            }
            // The pending bytes become the entry's.
            if let Some((_, old, at)) = self.entries.insert(volume, (w.intent, w.size, w.shard)) {
                let bytes = self.shard_bytes(at);
                *bytes = bytes.saturating_sub(old);
            }
            let _ = w.answer.send(Ok(()));
        }
    }

    /// The batch failed: records are answered with the error (their passes retry); releases are
    /// queued again unless something newer replaced them.
    pub fn failed(&mut self, batch: Batch, waiters: Vec<Waiter>, error: &str) {
        for k in batch.data.keys() {
            self.in_flight.remove(k);
        }
        for w in waiters {
            let bytes = self.shard_bytes(w.shard);
            *bytes = bytes.saturating_sub(w.size);
            let _ = w.answer.send(Err(error.to_string()));
        }
        for (volume, value) in batch.data {
            if value.is_none() && !self.pending.contains_key(&volume) {
                let shard = batch.shard.get(&volume).copied().unwrap_or(0);
                self.pending.insert(volume.clone(), None);
                self.pending_shard.insert(volume, shard);
            }
        }
    }

    /// The whole content of shard `shard` to store when its object has to be created.
    pub fn full_data(&self, batch: &Batch, shard: usize) -> BTreeMap<String, String> {
        let mut data: BTreeMap<String, String> = self
            .entries
            .iter()
            .filter(|(_, (_, _, s))| *s == shard)
            .filter_map(|(k, (i, _, _))| Some((k.clone(), serde_json::to_string(i).ok()?)))
            .collect();
        for (k, v) in batch.in_shard(shard) {
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
            .map(|(i, _, _)| i)
            .find(|i| i.claim_uid == uid)
    }

    /// The intents recorded for claims of this namespace and name (any UID).
    pub fn for_key(&self, namespace: &str, name: &str) -> Vec<Intent> {
        self.entries
            .values()
            .filter(|(i, _, _)| i.claim_namespace == namespace && i.claim_name == name)
            .map(|(i, _, _)| i.clone())
            .collect()
    }

    /// The intents in flight, for the stuck-object view: each volume, its claim, and its
    /// record's state: `recording` (waiting for its write) or `stored` (a released intent is
    /// gone at once).
    pub fn in_flight(&self) -> Vec<serde_json::Value> {
        let row = |volume: &str, i: Option<&Intent>, state: &str| {
            serde_json::json!({
                "volume": volume,
                "claim": i.map(|i| format!("{}/{}", i.claim_namespace, i.claim_name)),
                "claimUid": i.map(|i| i.claim_uid.clone()),
                "state": state,
            })
        };
        let mut out: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|(volume, (i, _, _))| row(volume, Some(i), "stored"))
            .collect();
        for (volume, json) in &self.pending {
            if let Some(json) = json
                && !self.entries.contains_key(volume)
            {
                let i = serde_json::from_str::<Intent>(json).ok();
                out.push(row(volume, i.as_ref(), "recording"));
            }
        }
        out
    }

    /// Every claim key (`namespace/name`) with a recorded intent.
    pub fn claim_keys(&self) -> Vec<controller_kit::NamespacedName> {
        self.entries
            .values()
            .map(|(i, _, _)| controller_kit::NamespacedName::new(&i.claim_namespace, &i.claim_name))
            .collect()
    }

    /// Bytes of the entries plus the records pending, in every shard.
    pub fn bytes(&self) -> usize {
        self.bytes.iter().sum()
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
    /// The shards this batch writes to, in order.
    pub fn shards(&self) -> std::collections::BTreeSet<usize> {
        self.data
            .keys()
            .map(|k| self.shard.get(k).copied().unwrap_or(0))
            .collect()
    }

    /// The writes of shard `shard`.
    pub fn in_shard(&self, shard: usize) -> impl Iterator<Item = (&String, &Option<String>)> {
        self.data
            .iter()
            .filter(move |(k, _)| self.shard.get(*k).copied().unwrap_or(0) == shard)
    }

    /// The JSON merge patch of this batch's writes to shard `shard`.
    pub fn patch_for(&self, shard: usize) -> Value {
        let data: serde_json::Map<String, Value> = self
            .in_shard(shard)
            .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        json!({ "data": data })
    }

    /// The JSON merge patch of this batch (all of it in shard 0, the usual case).
    pub fn patch(&self) -> Value {
        self.patch_for(0)
    }
}
