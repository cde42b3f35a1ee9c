//! Shared informers: one watch and one cache per resource type for the whole process.
//!
//! # Sharing
//! Controllers do not watch anything themselves. At wiring time each asks [`Informers::for_type`]
//! for the informer of a type and registers
//! - a *keep* predicate: which objects it cares about (e.g. PVs whose `spec.csi.driver` is ours).
//!   The cache holds an object if any registered predicate keeps it; with no predicate it holds
//!   all. Objects that concern no controller are decoded, looked at and dropped, so memory follows
//!   this driver's objects, not the cluster's. An object that stops concerning us is removed (and
//!   reported as deleted); one that starts to is added.
//! - change handlers: cheap, synchronous functions that map a changed object to work-queue keys.
//!
//! Then [`Informers::start`] runs one watcher per type. For types where only metadata matters,
//! register `PartialObjectMeta<K>` as the type: kube then lists and watches metadata only.
//!
//! # Back-pressure
//! There is none to couple consumers: handlers only insert keys into de-duplicating work queues,
//! which never block and hold each key once, so a slow controller makes its own queue older, never
//! the watch or the other controllers slower. Queues are bounded by the number of objects.
//!
//! # Consistency
//! Handlers run after the cache is updated, so a worker woken by a handler reads at least that
//! version. During a (re)list, notifications are held back until the new list is complete and
//! swapped in; objects that vanished during a relist are reported as deleted. Deletes are always
//! delivered (unlike kube-runtime's shared streams).
//!
//! # Memory
//! Objects are cached without `metadata.managedFields` (no controller reads them; an update
//! sent without them leaves the server's as they are).

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Debug};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A change seen by an informer, passed to handlers.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// The object was added or updated (or listed again after a relist).
    Applied {
        /// Its new state.
        object: &'a K,
        /// The state the cache held before, if any (`None` for an add). After a relist it is
        /// the state before the relist, which may carry the same `resourceVersion`, as client-go's
        /// resync updates do.
        previous: Option<&'a K>,
    },
    /// The object was deleted, or stopped concerning this process; this is its last known state.
    Deleted(&'a K),
}

impl<K> Change<'_, K> {
    /// The object, whichever the change.
    pub fn object(&self) -> &K {
        match self {
            Change::Applied { object, .. } => object,
            Change::Deleted(o) => o,
        }
    }
}

type Keep<K> = Arc<dyn Fn(&K) -> bool + Send + Sync>;
type Handler<K> = Arc<dyn Fn(&Change<'_, K>) + Send + Sync>;

/// Types an informer can watch.
pub trait Watchable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<K> Watchable for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// The informer of one type, being configured. Obtain it from [`Informers::for_type`].
pub struct InformerBuilder<K: Watchable> {
    config: watcher::Config,
    keep: Vec<Keep<K>>,
    handlers: Vec<Handler<K>>,
    store: Store<K>,
    writer: Writer<K>,
    synced: watch::Sender<bool>,
    after: Vec<watch::Receiver<bool>>,
}

impl<K: Watchable> Debug for InformerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformerBuilder")
            .field("kind", &K::kind(&()))
            .field("keep", &self.keep.len())
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl<K: Watchable> InformerBuilder<K> {
    fn new() -> Self {
        let (store, writer) = kube::runtime::reflector::store();
        Self {
            // Any-semantic relists are served from the API server's watch cache, not etcd.
            config: watcher::Config::default().any_semantic(),
            keep: Vec::new(),
            handlers: Vec::new(),
            store,
            writer,
            synced: watch::channel(false).0,
            after: Vec::new(),
        }
    }

    /// Narrows the watch with a label or field selector, for every consumer of this type.
    pub fn config(&mut self, config: watcher::Config) -> &mut Self {
        self.config = config;
        self
    }

    /// Keeps objects for which `keep` is true (OR-ed with the other consumers' predicates).
    pub fn keep(&mut self, keep: impl Fn(&K) -> bool + Send + Sync + 'static) -> &mut Self {
        self.keep.push(Arc::new(keep));
        self
    }

    /// Calls `handler` for every change of a kept object. It must be cheap and must not block:
    /// map the object to keys and add them to a work queue.
    pub fn on_change(
        &mut self,
        handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static,
    ) -> &mut Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// Starts this type's watch only once `ready` is true (another informer's [`synced`]), for a
    /// keep predicate that looks into another cache: listed before that cache is filled, it
    /// could not tell, and what it kept then would stay cached until its next change.
    ///
    /// [`synced`]: InformerBuilder::synced
    pub fn after(&mut self, ready: watch::Receiver<bool>) -> &mut Self {
        self.after.push(ready);
        self
    }

    /// The read handle of the cache (empty until the informer has synced).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A receiver that turns true once the first list is in the cache.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }
}

struct Running<K: Watchable> {
    keep: Vec<Keep<K>>,
    handlers: Vec<Handler<K>>,
    store: Store<K>,
    writer: Writer<K>,
    synced: watch::Sender<bool>,
    /// Objects listed during the current (re)list, notified once it completes.
    listing: Option<HashSet<ObjectRef<K>>>,
}

impl<K: Watchable> InformerBuilder<K> {
    /// The watcher's configuration and the state that handles its events.
    fn into_running(self) -> (watcher::Config, Running<K>) {
        let running = Running {
            keep: self.keep,
            handlers: self.handlers,
            store: self.store,
            writer: self.writer,
            synced: self.synced,
            listing: None,
        };
        (self.config, running)
    }
}

impl<K: Watchable> Running<K> {
    fn keeps(&self, obj: &K) -> bool {
        self.keep.is_empty() || self.keep.iter().any(|k| k(obj))
    }

    fn notify(&self, change: Change<'_, K>) {
        for handler in &self.handlers {
            handler(&change);
        }
    }

    fn handle(&mut self, event: Event<K>) {
        match slim(event) {
            Event::Init => {
                self.listing = Some(HashSet::new());
                self.writer.apply_watcher_event(&Event::Init);
            }
            Event::InitApply(obj) => {
                if self.keeps(&obj) {
                    if let Some(listing) = &mut self.listing {
                        listing.insert(ObjectRef::from_obj(&obj));
                    }
                    self.writer.apply_watcher_event(&Event::InitApply(obj));
                }
            }
            Event::InitDone => {
                let mut before: HashMap<ObjectRef<K>, Arc<K>> = self
                    .store
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from_obj(o.as_ref()), o))
                    .collect();
                self.writer.apply_watcher_event(&Event::InitDone);
                let listed = self.listing.take().unwrap_or_default();
                let (kept, gone): (HashMap<_, _>, HashMap<_, _>) =
                    before.drain().partition(|(r, _)| listed.contains(r));
                for old in gone.values() {
                    self.notify(Change::Deleted(old));
                }
                for r in &listed {
                    if let Some(obj) = self.store.get(r) {
                        self.notify(Change::Applied {
                            object: &obj,
                            previous: kept.get(r).map(AsRef::as_ref),
                        });
                    }
                }
                self.synced.send_replace(true);
            }
            Event::Apply(obj) => {
                if self.keeps(&obj) {
                    let previous = self.store.get(&ObjectRef::from_obj(&obj));
                    self.writer.apply_watcher_event(&Event::Apply(obj.clone()));
                    self.notify(Change::Applied {
                        object: &obj,
                        previous: previous.as_deref(),
                    });
                } else if self.store.get(&ObjectRef::from_obj(&obj)).is_some() {
                    self.writer.apply_watcher_event(&Event::Delete(obj.clone()));
                    self.notify(Change::Deleted(&obj));
                }
            }
            Event::Delete(obj) => {
                if self.store.get(&ObjectRef::from_obj(&obj)).is_some() || self.keeps(&obj) {
                    self.writer.apply_watcher_event(&Event::Delete(obj.clone()));
                    self.notify(Change::Deleted(&obj));
                }
            }
        }
    }
}

/// Drops `metadata.managedFields` (server-side apply bookkeeping, often the larger part of an
/// object) before anything is cached or handed to a handler: no controller reads it, and an
/// update sent without it leaves the server's copy as it is.
fn slim<K: Watchable>(event: Event<K>) -> Event<K> {
    let strip = |mut obj: K| {
        obj.meta_mut().managed_fields = None;
        obj
    };
    match event {
        Event::InitApply(obj) => Event::InitApply(strip(obj)),
        Event::Apply(obj) => Event::Apply(strip(obj)),
        Event::Delete(obj) => Event::Delete(strip(obj)),
        other => other,
    }
}

trait ErasedInformer: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn kind(&self) -> String;
    fn synced_erased(&self) -> watch::Receiver<bool>;
    fn spawn(
        self: Box<Self>,
        client: Client,
        token: CancellationToken,
        failure: WatchFailure,
    ) -> JoinHandle<()>;
}

/// The last failure of an informer's watch (when, and the error), cleared by the next event it
/// receives. The watch retries with backoff ([`watch_backoff`]); a failure older than
/// [`WATCH_FAILING_FOR`] with nothing since means the watch is up again on a quiet type.
type WatchFailure = Arc<Mutex<Option<(Instant, String)>>>;

/// How long after its last failure a watch counts as failing (the longest watch backoff with
/// its jitter, plus a margin).
pub const WATCH_FAILING_FOR: Duration = Duration::from_secs(15);

/// The backoff between failed watch attempts: 0.8 s doubling to 5 s, plus up to as much again
/// in jitter, reset after two minutes without a failure. client-go's reflector goes to 30 s;
/// ours is shorter so that the process resumes within seconds of an API server's return
/// (upstream's sidecars exit instead), at a cost of one attempt per type every 5 to 10 s while
/// the server is away.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(120))
}

/// Waits until every receiver holds true; false when cancelled first (or a sender is gone
/// without having turned true).
async fn all_ready(after: Vec<watch::Receiver<bool>>, token: &CancellationToken) -> bool {
    for mut ready in after {
        tokio::select! {
            () = token.cancelled() => return false,
            r = ready.wait_for(|v| *v) => if r.is_err() { return false },
        }
    }
    true
}

/// A watch from a resourceVersion the server no longer has (410 Gone, e.g. after an API
/// server restart): the watcher relists on its next attempt, which comes at once, as
/// client-go's reflector does, not after a backoff (once: a second 410 in a row backs off).
fn expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

impl<K: Watchable> ErasedInformer for InformerBuilder<K> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn kind(&self) -> String {
        K::kind(&()).into_owned()
    }

    fn synced_erased(&self) -> watch::Receiver<bool> {
        self.synced()
    }

    fn spawn(
        self: Box<Self>,
        client: Client,
        token: CancellationToken,
        failure: WatchFailure,
    ) -> JoinHandle<()> {
        let mut builder = *self;
        let kind = K::kind(&()).into_owned();
        let api: Api<K> = Api::all(client);
        let after = std::mem::take(&mut builder.after);
        let (config, mut running) = builder.into_running();
        let stream = watcher(api, config);
        tokio::spawn(async move {
            if !all_ready(after, &token).await {
                return;
            }
            let mut stream = std::pin::pin!(stream);
            let mut backoff = watch_backoff();
            let mut relisted = false;
            // Whether `failure` holds a failure: the shared lock is taken only on a change,
            // not for every event.
            let mut failed = false;
            loop {
                let next = tokio::select! {
                    () = token.cancelled() => return,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        relisted = false;
                        if failed {
                            failed = false;
                            if let Ok(mut f) = failure.lock() {
                                *f = None;
                            }
                            tracing::info!(kind = %kind, "watch restored");
                        }
                        running.handle(event)
                    }
                    Some(Err(error)) => {
                        failed = true;
                        if let Ok(mut f) = failure.lock() {
                            *f = Some((Instant::now(), error.to_string()));
                        }
                        if expired(&error) && !relisted {
                            tracing::info!(kind = %kind, %error, "watch expired; relisting");
                            relisted = true;
                            continue;
                        }
                        relisted = false;
                        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                        tracing::warn!(kind = %kind, %error, retry_in = ?delay, "watch failed; retrying with backoff");
                        tokio::select! {
                            () = token.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                    None => return,
                }
            }
        })
    }
}

/// Every informer of the process, by type.
pub struct Informers {
    client: Client,
    informers: HashMap<TypeId, Box<dyn ErasedInformer>>,
}

impl Debug for Informers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self.informers.values().map(|i| i.kind()).collect();
        f.debug_struct("Informers").field("kinds", &kinds).finish()
    }
}

/// The started informers.
#[derive(Debug)]
pub struct RunningInformers {
    synced: Vec<(String, watch::Receiver<bool>)>,
    failures: Vec<(String, WatchFailure)>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningInformers {
    /// True once every informer has listed its type.
    pub fn all_synced(&self) -> bool {
        self.synced.iter().all(|(_, rx)| *rx.borrow())
    }

    /// The kinds that have not synced yet.
    pub fn unsynced(&self) -> Vec<String> {
        self.synced
            .iter()
            .filter(|(_, rx)| !*rx.borrow())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The informers whose watch failed within `within` and has received nothing since, as
    /// `"<kind>: <error> (<n>s ago)"`: what the process waits on while the API server is out.
    pub fn failing(&self, within: Duration) -> Vec<String> {
        let now = Instant::now();
        self.failures
            .iter()
            .filter_map(|(kind, f)| {
                let f = f.lock().ok()?;
                let (at, error) = f.as_ref()?;
                let ago = now.saturating_duration_since(*at);
                (ago <= within).then(|| format!("{kind}: {error} ({}s ago)", ago.as_secs()))
            })
            .collect()
    }

    /// Waits until every informer has synced; false if one stopped first.
    pub async fn wait_synced(&self) -> bool {
        for (_, rx) in &self.synced {
            if rx.clone().wait_for(|s| *s).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Waits for the informer tasks to end (after their token is cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Informers {
    /// An empty set of informers that will watch through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            informers: HashMap::new(),
        }
    }

    /// The informer of `K`, created on first use. Call before [`start`](Self::start).
    pub fn for_type<K: Watchable>(&mut self) -> &mut InformerBuilder<K> {
        self.informers
            .entry(TypeId::of::<K>())
            .or_insert_with(|| Box::new(InformerBuilder::<K>::new()))
            .as_any()
            .downcast_mut::<InformerBuilder<K>>()
            .expect("informers are keyed by their type")
    }

    /// Starts one watch per registered type; they run until `token` is cancelled.
    pub fn start(self, token: CancellationToken) -> RunningInformers {
        let mut synced = Vec::new();
        let mut failures = Vec::new();
        let mut tasks = Vec::new();
        for informer in self.informers.into_values() {
            let failure = WatchFailure::default();
            synced.push((informer.kind(), informer.synced_erased()));
            failures.push((informer.kind(), failure.clone()));
            tasks.push(informer.spawn(self.client.clone(), token.clone(), failure));
        }
        RunningInformers {
            synced,
            failures,
            tasks,
        }
    }
}

#[cfg(test)]
mod tests;
