//! Storage capacity tracking (`--enable-capacity`), a controller of its own beside the
//! provisioner, run under the provisioner's Lease (upstream runs it inside external-provisioner).
//!
//! - [`plan`]: the pure part: which (StorageClass, topology segment) items there are, the
//!   CSIStorageCapacity object of each, which objects are obsolete;
//! - [`tracker`]: the act part: the objects' watch, the items loop, GetCapacity and the writes.
//!
//! It registers its own interest in StorageClasses, CSINodes and Nodes with the shared informers
//! (one watch per type for the whole process); the provisioner only tells it, through
//! [`CapacityHandle`], that volumes of a class came or went.

pub mod plan;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use controller_kit::{Change, Controller, ControllerContext, Informers, WorkQueue};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use plan::{Item, Segment};
pub use tracker::Tracker;

/// Queue name (upstream's).
pub const QUEUE_CAPACITY: &str = "csistoragecapacity";

/// `--enable-capacity` and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityConfig {
    /// `--capacity-for-immediate-binding`.
    pub for_immediate_binding: bool,
    /// `--capacity-poll-interval` (default 1 min).
    pub poll_interval: Duration,
    /// `--capacity-ownerref-level` (default 1; -1: no owner).
    pub ownerref_level: i64,
    /// The `Topology` feature gate (`--feature-gates`): without it, Nodes' labels are not read.
    pub topology_gate: bool,
    /// `--capacity-threads` (default 1).
    pub workers: usize,
    /// Namespace of the objects (`$NAMESPACE`, else the manager's).
    pub namespace: String,
    /// This pod's name (`$POD_NAME`), where the owner look-up starts.
    pub pod_name: String,
    /// In node deployment, the node and its segment: the managed-by value is the node's, and
    /// its segment is the only one.
    pub node: Option<(String, Segment)>,
}

/// Upstream's capacity metrics.
#[derive(Clone, Debug, Default)]
pub struct CapacityMetrics {
    pub(crate) goal: prometheus_client::metrics::gauge::Gauge,
    pub(crate) current: prometheus_client::metrics::gauge::Gauge,
    pub(crate) obsolete: prometheus_client::metrics::gauge::Gauge,
}

impl CapacityMetrics {
    /// Registers them.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "csistoragecapacities_desired_goal",
            "Number of CSIStorageCapacity objects that are supposed to be managed automatically.",
            m.goal.clone(),
        );
        registry.register(
            "csistoragecapacities_desired_current",
            "Number of CSIStorageCapacity objects that exist and are supposed to be managed automatically.",
            m.current.clone(),
        );
        registry.register(
            "csistoragecapacities_obsolete",
            "Number of CSIStorageCapacity objects that exist and will be deleted automatically. Objects that exist and may need an update are not considered obsolete and therefore not included in this value.",
            m.obsolete.clone(),
        );
        m
    }
}

/// What the provisioner holds of capacity tracking: a way to say that a class changed.
#[derive(Clone, Debug)]
pub struct CapacityHandle(Arc<Tracker>);

impl CapacityHandle {
    /// Volumes of `class` came or went: its items are refreshed without waiting for the poll.
    pub fn class_changed(&self, class: &str) {
        self.0.class_changed(class);
    }
}

/// The capacity-tracking controller.
#[derive(Debug)]
pub struct CapacityTracking {
    tracker: Arc<Tracker>,
    workers: usize,
    metrics: controller_kit::metrics::ControllerMetrics,
}

/// An informer handler that wakes `n`.
fn notifier<K>(n: &Arc<Notify>) -> impl Fn(&Change<'_, K>) + Send + Sync + 'static {
    let n = n.clone();
    move |_| n.notify_one()
}

/// Builds capacity tracking for `driver`: registers its informers and handlers (call before the
/// informers start). `ctx.client` should be the capacity client (`--kube-api-capacity-qps`).
/// Without node deployment, the items follow the driver's CSINodes and, when the driver reports
/// topology, the Nodes' labels.
pub fn build(
    ctx: &ControllerContext,
    driver: &csi::Driver,
    config: CapacityConfig,
    informers: &mut Informers,
) -> (Arc<dyn Controller>, CapacityHandle) {
    let name = driver.discovery.driver_name.clone();
    let changed = Arc::new(Notify::new());
    let classes = {
        let d = name.clone();
        informers
            .for_type::<StorageClass>()
            .keep(move |sc| sc.provisioner == d)
            .on_change(notifier(&changed))
            .store()
    };
    let topology = config.topology_gate
        && driver.discovery.has_plugin_service(
            csi::v1::plugin_capability::service::Type::VolumeAccessibilityConstraints,
        );
    let (csinodes, nodes) = if config.node.is_none() {
        let csinodes = informers
            .for_type::<CSINode>()
            .on_change(notifier(&changed))
            .store();
        let nodes = topology.then(|| {
            informers
                .for_type::<PartialObjectMeta<Node>>()
                .on_change(notifier(&changed))
                .store()
        });
        (Some(csinodes), nodes)
    } else {
        (None, None)
    };
    let queue = WorkQueue::new(QUEUE_CAPACITY, ctx.backoff, ctx.metrics.queues());
    let workers = config.workers;
    let tracker = Arc::new(Tracker {
        client: ctx.client.clone(),
        csi: driver.client.clone(),
        driver: name,
        managed_by: plan::managed_by(config.node.as_ref().map(|(n, _)| n.as_str())),
        config,
        classes,
        csinodes,
        nodes,
        objects: std::sync::Mutex::new(reflector::store().0),
        queue,
        items: Default::default(),
        changed,
        created: Default::default(),
        owner: Default::default(),
        metrics: ctx.metrics.register(CapacityMetrics::register),
    });
    let controller = CapacityTracking {
        tracker: tracker.clone(),
        workers,
        metrics: ctx.metrics.controllers(),
    };
    (Arc::new(controller), CapacityHandle(tracker))
}

impl Controller for CapacityTracking {
    fn name(&self) -> &'static str {
        "provisioner-capacity"
    }

    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()> {
        let tracker = self.tracker.clone();
        let workers = controller_kit::run_workers(
            controller_kit::Workers {
                controller: "provisioner-capacity",
                count: self.workers,
                metrics: self.metrics.clone(),
            },
            tracker.queue.clone(),
            tracker.clone(),
            |t, item| async move { t.sync_item(&item).await },
            token.clone(),
        );
        Box::pin(async move {
            futures::join!(tracker.run(token), workers);
        })
    }
}
