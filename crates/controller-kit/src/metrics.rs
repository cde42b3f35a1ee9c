//! The process's one metrics registry, and the metrics the runtime itself keeps: work queues
//! (client-go's `workqueue_*` names, labelled by queue `name`, plus the oldest item's age),
//! reconcile outcomes and panics per controller, and the process's start time and memory.
//!
//! Registration may happen at any time (controllers start once the driver is known, after the
//! HTTP server is up), so the registry sits behind a mutex that scrapes take briefly.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::queue::QueueStats;

/// The process's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    queues: QueueMetrics,
    controllers: ControllerMetrics,
    views: DebugViews,
}

/// A JSON view of a controller's state, served under `/debug/<name>`.
pub type DebugView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The debug views controllers registered (the stuck-object view beside `/debug/queues`).
#[derive(Clone, Default)]
pub struct DebugViews(Arc<Mutex<std::collections::BTreeMap<String, DebugView>>>);

impl fmt::Debug for DebugViews {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_tuple("DebugViews").field(&names).finish()
    }
}

impl DebugViews {
    fn lock(&self) -> MutexGuard<'_, std::collections::BTreeMap<String, DebugView>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `view` under `/debug/<name>` (a later registration of the name replaces it).
    pub fn add(&self, name: &str, view: DebugView) {
        self.lock().insert(name.to_string(), view);
    }

    /// The view `name`, computed now; `None` when none is registered.
    pub fn render(&self, name: &str) -> Option<serde_json::Value> {
        let view = self.lock().get(name).cloned()?;
        Some(view())
    }

    /// The registered names.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let queues = QueueMetrics::new(&mut registry);
        let controllers = ControllerMetrics::new(&mut registry);
        let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            start,
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry: Arc::new(Mutex::new(registry)),
            queues,
            controllers,
            views: DebugViews::default(),
        }
    }
}

impl Metrics {
    /// Registers metrics into the registry: `metrics.register(|r| CsiMetrics::new(r))`.
    pub fn register<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renders every metric in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.lock()) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }

    /// The work-queue metrics, for [`WorkQueue::new`](crate::queue::WorkQueue::new).
    pub fn queues(&self) -> QueueMetrics {
        self.queues.clone()
    }

    /// The per-controller reconcile metrics.
    pub fn controllers(&self) -> ControllerMetrics {
        self.controllers.clone()
    }

    /// The debug views served under `/debug/<name>`.
    pub fn views(&self) -> DebugViews {
        self.views.clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    name: String,
}

type StatsFn = Box<dyn Fn() -> Option<QueueStats> + Send + Sync>;
type StuckFn = Box<dyn Fn() -> Option<Vec<crate::queue::StuckKey>> + Send + Sync>;

/// Metrics of every work queue. Cheap to clone.
#[derive(Clone)]
pub struct QueueMetrics {
    adds: Family<QueueLabel, Counter>,
    retries: Family<QueueLabel, Counter>,
    queue_duration: Family<QueueLabel, Histogram>,
    work_duration: Family<QueueLabel, Histogram>,
    stats: Arc<Mutex<Vec<(String, StatsFn)>>>,
    stuck: Arc<Mutex<Vec<(String, StuckFn)>>>,
}

impl fmt::Debug for QueueMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueMetrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // client-go's workqueue buckets: 1e-8 s to 10 s, factor 10.
    Histogram::new(exponential_buckets(1e-8, 10.0, 10))
}

impl QueueMetrics {
    fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
            stats: Arc::default(),
            stuck: Arc::default(),
        };
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            metrics.adds.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            metrics.retries.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            metrics.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            metrics.work_duration.clone(),
        );
        registry.register_collector(Box::new(QueueCollector {
            stats: metrics.stats.clone(),
        }));
        metrics
    }

    fn label(name: &str) -> QueueLabel {
        QueueLabel {
            name: name.to_string(),
        }
    }

    pub(crate) fn register_queue(&self, name: String, stats: StatsFn, stuck: StuckFn) {
        let mut all = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        // A queue re-created under the same name replaces the old one.
        all.retain(|(n, _)| n != &name);
        all.push((name.clone(), stats));
        let mut all = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(n, _)| n != &name);
        all.push((name, stuck));
    }

    /// Every queue's stuck keys ([`crate::queue::WorkQueue::stuck`]), by queue name.
    pub fn stuck(&self) -> std::collections::BTreeMap<String, Vec<crate::queue::StuckKey>> {
        let all = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .filter_map(|(name, f)| f().map(|s| (name.clone(), s)))
            .collect()
    }

    pub(crate) fn added(&self, queue: &str) {
        self.adds.get_or_create(&Self::label(queue)).inc();
    }

    pub(crate) fn retried(&self, queue: &str) {
        self.retries.get_or_create(&Self::label(queue)).inc();
    }

    pub(crate) fn queued_for(&self, queue: &str, d: Duration) {
        self.queue_duration
            .get_or_create(&Self::label(queue))
            .observe(d.as_secs_f64());
    }

    pub(crate) fn worked_for(&self, queue: &str, d: Duration) {
        self.work_duration
            .get_or_create(&Self::label(queue))
            .observe(d.as_secs_f64());
    }
}

/// Computes the queue gauges at scrape time, so ages are current.
struct QueueCollector {
    stats: Arc<Mutex<Vec<(String, StatsFn)>>>,
}

impl fmt::Debug for QueueCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueCollector").finish_non_exhaustive()
    }
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot: Vec<(String, QueueStats)> = {
            let all = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            all.iter()
                .filter_map(|(name, f)| f().map(|s| (name.clone(), s)))
                .collect()
        };
        type Get = fn(&QueueStats) -> f64;
        let gauges: [(&str, &str, Get); 6] = [
            ("workqueue_depth", "Current depth of workqueue", |s| {
                s.depth as f64
            }),
            (
                "workqueue_oldest_item_age_seconds",
                "How long the oldest item waiting for a worker has waited",
                |s| s.oldest_ready_age.as_secs_f64(),
            ),
            (
                "workqueue_delayed_items",
                "Items waiting for a backoff or requeue delay to pass",
                |s| s.delayed as f64,
            ),
            (
                "workqueue_in_flight_items",
                "Items being processed by a worker",
                |s| s.in_flight as f64,
            ),
            (
                "workqueue_longest_running_processor_seconds",
                "How many seconds has the longest running processor for workqueue been running",
                |s| s.longest_running.as_secs_f64(),
            ),
            (
                "workqueue_unfinished_work_seconds",
                "How many seconds of work has been done that is in progress",
                |s| s.unfinished_work.as_secs_f64(),
            ),
        ];
        for (name, help, get) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (queue, stats) in &snapshot {
                let label = QueueLabel {
                    name: queue.clone(),
                };
                ConstGauge::new(get(stats)).encode(metric.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: String,
    result: String,
}

/// Reconcile outcomes per controller. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ControllerMetrics {
    reconciles: Family<ReconcileLabels, Counter>,
    panics: Family<ControllerLabel, Counter>,
}

impl ControllerMetrics {
    fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "csi_controller_reconciles",
            "Reconcile passes per controller and result (success, requeue, error, panic)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "csi_controller_reconcile_panics",
            "Reconcile passes that panicked; the key is retried with backoff",
            metrics.panics.clone(),
        );
        metrics
    }

    pub(crate) fn reconciled(&self, controller: &str, result: &str) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                controller: controller.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub(crate) fn panicked(&self, controller: &str) {
        self.panics
            .get_or_create(&ControllerLabel {
                controller: controller.to_string(),
            })
            .inc();
        self.reconciled(controller, "panic");
    }

    /// How many reconciles of `controller` panicked.
    pub fn panics(&self, controller: &str) -> u64 {
        self.panics
            .get_or_create(&ControllerLabel {
                controller: controller.to_string(),
            })
            .get()
    }
}

/// Resident memory and CPU time of this process, read from /proc at scrape time (Linux only;
/// elsewhere nothing is reported).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
            return Ok(());
        };
        // statm: size resident shared text lib data dt, in pages (4 KiB on the platforms we ship).
        if let Some(resident) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
        {
            let gauge = ConstGauge::new((resident * 4096) as f64);
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_views_render_on_request() {
        let views = Metrics::default().views();
        assert_eq!(views.render("intents"), None);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        views.add(
            "intents",
            std::sync::Arc::new(move || {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                serde_json::json!({"intents": []})
            }),
        );
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "computed only when asked"
        );
        assert_eq!(
            views.render("intents"),
            Some(serde_json::json!({"intents": []}))
        );
        assert_eq!(views.names(), ["intents"]);
    }

    use super::*;
    use crate::queue::{Backoff, WorkQueue};

    #[tokio::test]
    async fn queue_gauges_are_computed_at_scrape_time() {
        let metrics = Metrics::default();
        let q: WorkQueue<u32> =
            WorkQueue::new("csi-attacher-va", Backoff::default(), metrics.queues());
        q.add(1);
        q.add(2);
        q.add_rate_limited(3);
        let text = metrics.encode();
        assert!(
            text.contains(r#"workqueue_depth{name="csi-attacher-va"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"workqueue_adds_total{name="csi-attacher-va"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"workqueue_retries_total{name="csi-attacher-va"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"workqueue_delayed_items{name="csi-attacher-va"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("workqueue_oldest_item_age_seconds{"),
            "{text}"
        );
        assert!(text.contains("process_start_time_seconds"), "{text}");
        let k = q.get().await;
        q.done(&k);
        let text = metrics.encode();
        assert!(
            text.contains(r#"workqueue_depth{name="csi-attacher-va"} 1"#),
            "{text}"
        );
        drop(q);
        assert!(
            !metrics
                .encode()
                .contains(r#"workqueue_depth{name="csi-attacher-va"}"#)
        );
    }
}
