//! The interface between the manager and a controller.

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// A controller: informer handlers registered at construction, workers started per leader term.
pub trait Controller: Send + Sync + 'static {
    /// Name in logs and metrics (`provisioner`, `attacher`, …).
    fn name(&self) -> &'static str;

    /// Runs the controller's workers until `token` is cancelled, then returns once they stopped.
    /// Called once per leader term; its queues persist between terms.
    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()>;
}

/// What the manager hands every controller when it builds it. The driver is not in it: the
/// the kit knows nothing of CSI; controllers that call a driver take a `csi::Driver` beside it.
#[derive(Clone)]
pub struct ControllerContext {
    /// API client for the controller (rate-limited by `--kube-api-qps`/`--kube-api-burst`; capacity
    /// tracking gets one of its own, `--kube-api-capacity-qps`/`-burst`).
    pub client: kube::Client,
    /// The process's metrics registry.
    pub metrics: crate::Metrics,
    /// Per-key retry backoff (`--retry-interval-start`, `--retry-interval-max`).
    pub backoff: crate::Backoff,
    /// Workers per queue (`--worker-threads`).
    pub workers: usize,
    /// This replica's identity (pod name), for Events' reporting instance.
    pub identity: String,
    /// The manager's own namespace (`--leader-election-namespace`, else the pod's): its Leases
    /// and any record a controller keeps of its own live there.
    pub namespace: String,
}

impl std::fmt::Debug for ControllerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerContext")
            .field("workers", &self.workers)
            .field("identity", &self.identity)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}
