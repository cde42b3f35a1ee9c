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
