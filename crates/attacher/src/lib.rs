//! The VolumeAttachment controller of csi-controller-manager: a drop-in for external-attacher
//! v4.12 (`kubernetes-csi/external-attacher`), same finalizers, annotation, patches, status
//! fields and error texts.
//!
//! # Shape
//! - [`constants`]: the strings other software reads (finalizer, annotation, queue and metric
//!   names);
//! - [`request`], [`patch`]: pure builders of CSI requests and API patches;
//! - [`plan`]: the pure planner, state → next step;
//! - [`filter`]: upstream's filter that keeps our own error writes from defeating backoff;
//! - [`csi_call`]: the CSI calls and the mapping of their outcomes;
//! - `controller`: informers, lanes, workers and the API calls (thin);
//! - [`list_sync`]: the periodic ListVolumes sync (`--reconcile-sync`);
//! - [`access`]: the API permissions it uses, checked at start-up.
//!
//! # Lanes (beyond upstream)
//! Attaches and detaches have separate queues, `csi-attacher-va-attach` and
//! `csi-attacher-va-detach`, each with its own worker pool; the PV finalizer queue keeps
//! upstream's `csi-attacher-pv`. A key is routed by state (deletionTimestamp → detach) and is
//! never processed by both lanes at once.
//!
//! # Deleted nodes (beyond upstream)
//! - A VA whose Node object is gone is not attached (ControllerPublish is not called; an
//!   `attachError` says why, retried with backoff, so a node that comes back is attached).
//! - A deleting VA whose Node object is gone is unpublished with the node ID from the CSINode or,
//!   as upstream, from the `csi.alpha.kubernetes.io/node-id` annotation; if the driver answers
//!   NOT_FOUND the volume is treated as detached (finalizer removed), where upstream retries
//!   forever. Any other error is retried as upstream, because the backend may still hold the
//!   attachment.
//! - Kubernetes' attach/detach controller is what deletes the VA of a deleted node (after the
//!   node's pods are gone, or after its 6-minute force-detach timeout); this controller never
//!   deletes a VolumeAttachment itself.
//! - Both need a watch of Nodes, which upstream's attacher ClusterRole does not grant: without
//!   it ([`AttacherConfig::watch_nodes`] off) every node is taken to exist, as upstream does.

pub mod access;
pub mod constants;
mod controller;
pub mod csi_call;
pub mod error;
pub mod filter;
pub mod list_sync;
pub mod patch;
pub mod plan;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

pub use controller::Attacher;
pub use error::Error;

/// The attacher's settings beyond those in [`controller_kit::ControllerContext`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttacherConfig {
    /// `--default-fstype`: fsType for Filesystem volumes whose PV has none.
    pub default_fstype: String,
    /// `--reconcile-sync`: period of the ListVolumes sync (0 turns it off).
    pub reconcile_sync: Duration,
    /// `--resync`: every VA of ours is queued again this often (0 turns it off).
    pub resync: Duration,
    /// `--max-entries`: ListVolumes page size (0 = no limit).
    pub max_entries: i32,
    /// Workers of the attach lane; `None` = `--worker-threads`.
    pub attach_workers: Option<usize>,
    /// Workers of the detach lane; `None` = `--worker-threads`.
    pub detach_workers: Option<usize>,
    /// Timeout of each API call.
    pub api_timeout: Duration,
    /// Watch Nodes (metadata only) to refuse attaching to, and detach from, deleted nodes.
    /// Upstream's attacher ClusterRole grants no Nodes: without the permission this is off.
    pub watch_nodes: bool,
}

impl Default for AttacherConfig {
    fn default() -> Self {
        Self {
            default_fstype: String::new(),
            reconcile_sync: Duration::from_secs(60),
            resync: Duration::from_secs(600),
            max_entries: 0,
            attach_workers: None,
            detach_workers: None,
            api_timeout: Duration::from_secs(30),
            watch_nodes: true,
        }
    }
}

/// Builds the attacher: registers its informers (VolumeAttachment, PersistentVolume, CSINode,
/// Node metadata) and their handlers in `informers`, and returns the controller whose
/// [`run`](controller_kit::Controller::run) starts the workers for one leader term.
///
/// The handler (CSI or trivial) is chosen from the driver's capabilities, as upstream: without
/// PUBLISH_UNPUBLISH_VOLUME, VolumeAttachments are marked attached without calling the driver.
pub fn build(
    ctx: controller_kit::ControllerContext,
    driver: &csi::Driver,
    config: AttacherConfig,
    informers: &mut controller_kit::Informers,
) -> Arc<dyn controller_kit::Controller> {
    Arc::new(Attacher {
        shared: controller::build(ctx, driver, config, informers),
    })
}
