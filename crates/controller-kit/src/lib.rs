//! What every controller of csi-controller-manager shares and kube-rs does not provide:
//!
//! - [`access`]: the API permissions each controller uses, checked at start-up;
//! - [`api`]: every API call with a timeout, and one error type for the answers;
//! - [`informer`]: one watch and cache per resource type for the whole process, keeping only the
//!   objects that concern this driver;
//! - [`queue`] and [`worker`]: per-key work queues with de-duplication, exclusivity and exponential
//!   backoff, and bounded workers that survive panics;
//! - [`key`]: typed queue keys;
//! - [`keylock`] and [`expiring`]: per-key async locks, and maps of recent facts that forget;
//! - [`meta`]: annotations and finalizers, read one way;
//! - [`patch`]: patches applied locally, and sent as updates where RBAC grants no `patch`;
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease;
//! - [`events`]: Kubernetes Events that never block a reconcile;
//! - [`metrics`] and [`http`]: one registry, and `/metrics`, `/healthz`, `/readyz`;
//! - [`secrets`]: a Secret's data as the strings a CSI request carries;
//! - [`kubeclient`]: the API clients (rate-limited for controllers, unthrottled for the lease);
//! - [`shutdown`]: one cancellation token reaching every task;
//! - `testing` (feature `testing`): a fake Kubernetes API server for component tests.

pub mod access;
pub mod api;
pub mod controller;
pub mod events;
pub mod expiring;
pub mod http;
pub mod informer;
pub mod key;
pub mod keylock;
pub mod kubeclient;
pub mod leader;
pub mod meta;
pub mod metrics;
pub mod patch;
pub mod quantity;
pub mod queue;
pub mod secrets;
pub mod shutdown;
pub mod template;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod worker;
pub mod written;

pub use controller::{Controller, ControllerContext};
pub use informer::{Change, Informers};
pub use key::NamespacedName;
pub use metrics::Metrics;
pub use queue::{Backoff, WorkQueue};
pub use worker::{Outcome, Workers, run_workers};
