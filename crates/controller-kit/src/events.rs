//! Kubernetes Events, published without ever blocking or failing a reconcile.
//!
//! Core `v1` Events, as the Go sidecars' recorder (client-go `tools/record`) writes them, so that
//! upstream's ClusterRoles (which grant `events` in the core group only) are enough: named
//! `<object>.<unix-nanos in hex>`, with `involvedObject`, `source.component`, `firstTimestamp`,
//! `lastTimestamp` and `count`. A repeat of the same event (same object, type, reason *and
//! message*) within six minutes is folded into the first one, as client-go's correlator does: a
//! strategic merge patch of `count`, `lastTimestamp` and `message`. The message is part of the key
//! on purpose: kube-runtime's recorder leaves it out, so a new error message would be counted into
//! the first one and never shown. Event reasons are constants of the controller that emits them,
//! with upstream's values. Publishing never waits for the API server: events go through a bounded
//! queue to one background task per recorder (in order, each call bounded by a timeout), as
//! client-go's broadcaster does, so a reconcile never pays an Event's round trip; a failure, or
//! an event that finds the queue full, is logged and dropped, since an Event is information, not
//! state. Readers of `events.k8s.io/v1` see the same objects
//! (`note`, `regarding`, `deprecatedCount`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::{mpsc, oneshot};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest message kept (1 KiB, as the events.k8s.io API's note); longer messages are cut.
const MAX_NOTE: usize = 1024;
/// How long a published event can still take repeats into its count (client-go's correlator
/// keeps its cache longer, but a repeat after a quiet spell starting a new Event is harmless).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// Bound on remembered events; the oldest are forgotten first.
const MAX_REMEMBERED: usize = 4096;
/// Events waiting to be written; beyond, new ones are dropped (and logged).
const QUEUE: usize = 4096;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// What makes two events the same one, repeated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    type_: EventType,
    reason: String,
    action: String,
    note: String,
}

/// A published event that repeats fold into.
#[derive(Clone, Debug)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events for one controller. Cheap to clone; clones share one queue and writer.
#[derive(Clone)]
pub struct EventRecorder {
    sink: Sink,
    /// The queue to the writer task, started with the first event; the task ends when the last
    /// clone is dropped.
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
}

/// What the writer task needs: the API client and the events already written.
#[derive(Clone)]
struct Sink {
    client: Client,
    controller: String,
    instance: String,
    published: Arc<Mutex<HashMap<Key, Published>>>,
}

/// Work for the writer task.
enum Job {
    Publish(Key, Box<ObjectReference>),
    /// Answered once everything queued before it is written (or dropped).
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("controller", &self.sink.controller)
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder reporting as `controller` (e.g. `external-provisioner`) from `instance` (the pod).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            sink: Sink {
                client,
                controller: controller.to_string(),
                instance: instance.unwrap_or_else(|| controller.to_string()),
                published: Arc::default(),
            },
            queue: Arc::default(),
        }
    }

    /// Queues a Normal event.
    pub async fn normal(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(regarding, EventType::Normal, reason, action, note);
    }

    /// Queues a Warning event.
    pub async fn warning(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(regarding, EventType::Warning, reason, action, note);
    }

    /// Waits until every event queued so far is written (or dropped).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender().send(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The writer's queue; starts the writer (within the Tokio runtime of the first event).
    fn sender(&self) -> &mpsc::Sender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(self.sink.clone().write(rx));
            tx
        })
    }

    fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let key = Key {
            // Events about cluster-scoped objects go to "default", as client-go does.
            namespace: regarding
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            action: action.to_string(),
            note: truncate(note, MAX_NOTE),
        };
        let object = regarding.name.as_deref().unwrap_or_default();
        match self
            .sender()
            .try_send(Job::Publish(key, Box::new(regarding.clone())))
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(object, reason, "event queue full; event dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Sink {
    /// The writer task: one event at a time, in order, each bounded by a timeout.
    async fn write(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            match job {
                Job::Flush(done) => {
                    let _ = done.send(());
                }
                Job::Publish(key, regarding) => {
                    let reason = key.reason.clone();
                    let object = regarding.name.clone().unwrap_or_default();
                    match tokio::time::timeout(PUBLISH_TIMEOUT, self.send(key, &regarding)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(%object, %reason, %error, "could not publish event")
                        }
                        Err(_) => tracing::warn!(%object, %reason, "publishing an event timed out"),
                    }
                }
            }
        }
    }

    async fn send(&self, key: Key, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let repeat = {
            let mut published = self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            published.retain(|_, p| p.last + SERIES_WINDOW > now);
            published.get(&key).cloned()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        let published = match repeat {
            Some(mut p) => {
                p.count += 1;
                p.last = now;
                // client-go's `eventSink.Patch`: count, last timestamp and message.
                let patch = serde_json::json!({
                    "count": p.count,
                    "lastTimestamp": Time(now),
                    "message": key.note,
                });
                match api
                    .patch(&p.name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    Ok(_) => p,
                    // Gone (expired by the API server, or deleted): start a new one.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        self.create(&api, &key, regarding, now).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.create(&api, &key, regarding, now).await?,
        };
        let mut all = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_REMEMBERED
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, p)| p.last)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(key, published);
        Ok(())
    }

    async fn create(
        &self,
        api: &Api<Event>,
        key: &Key,
        regarding: &ObjectReference,
        now: Timestamp,
    ) -> Result<Published, kube::Error> {
        let base = if key.name.is_empty() {
            &self.controller
        } else {
            &key.name
        };
        let name = format!("{base}.{:x}", now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(key.namespace.clone()),
                ..Default::default()
            },
            involved_object: regarding.clone(),
            reason: Some(key.reason.clone()),
            message: Some(key.note.clone()),
            source: Some(EventSource {
                component: Some(self.controller.clone()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            type_: Some(key.type_.as_str().into()),
            action: Some(key.action.clone()),
            reporting_component: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        Ok(Published {
            name,
            count: 1,
            last: now,
        })
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeApiServer;

    #[tokio::test]
    async fn events_are_written_in_order_by_the_recorders_task_and_repeats_fold() {
        let api = FakeApiServer::start().await;
        let recorder = EventRecorder::new(api.client(), "external-provisioner", None);
        let pvc = ObjectReference {
            kind: Some("PersistentVolumeClaim".into()),
            namespace: Some("ns".into()),
            name: Some("c".into()),
            uid: Some("u".into()),
            ..Default::default()
        };
        for note in ["first", "busy", "busy", "busy"] {
            recorder
                .warning(&pvc, "ProvisioningFailed", "Provision", note)
                .await;
        }
        recorder.flush().await;
        let mut events = api.list::<Event>();
        events.sort_by_key(|e| e.first_timestamp.clone().map(|t| t.0));
        let seen: Vec<(String, i32)> = events
            .iter()
            .map(|e| (e.message.clone().unwrap_or_default(), e.count.unwrap_or(0)))
            .collect();
        assert_eq!(seen, [("first".to_string(), 1), ("busy".to_string(), 3)]);
        let writes: Vec<String> = api
            .requests()
            .iter()
            .filter(|r| !r.is_read())
            .map(|r| r.method.clone())
            .collect();
        assert_eq!(writes, ["POST", "POST", "PATCH", "PATCH"], "in order");
    }

    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = super::truncate(&s, 1024);
        assert!(t.len() <= 1024);
        assert!(s.starts_with(&t));
    }
}
