//! The snapshot controllers of csi-controller-manager: a drop-in for external-snapshotter v8.6
//! (`kubernetes-csi/external-snapshotter`), both halves in one crate, speaking upstream's
//! protocol (annotations, finalizers, deterministic names) so that either half can run beside
//! upstream's other one.
//!
//! - [`common`]: the common controller (snapshot-controller): binding, dynamic contents,
//!   default classes, status propagation, finalizers and the deletion handshake, for snapshots
//!   and group snapshots (with their member snapshots); cluster-wide.
//! - [`sidecar`]: the CSI half (csi-snapshotter): CreateSnapshot with the being-created guard,
//!   readiness polling, ListSnapshots for pre-provisioned contents, DeleteSnapshot, and
//!   Create/Get/DeleteVolumeGroupSnapshot; one driver.
//! - [`types`]: the `snapshot.storage.k8s.io/v1` and `groupsnapshot.storage.k8s.io/v1` kinds; [`constants`]: the strings other
//!   software reads; [`params`]: class parameters, secrets and names; [`metrics`]: upstream's
//!   operation metrics; [`access`]: the permissions each half uses; [`crd`]: the CRDs,
//!   generated from [`types`].
//!
//! # Beyond upstream
//! - Paginated initial lists (kube's watcher), no periodic resync, per-content polling backoff.
//! - The CSI half checks a class's parameters and secrets before it marks a content as being
//!   created, so a bad class never blocks the content's deletion.
//! - Statuses are compared by value (upstream rewrites a snapshot's error on every pass).
//! - A class created after a snapshot asked for it is used at once.
//!
//! # Not built yet
//! Distributed snapshotting (node deployment).

pub mod access;
pub mod common;
pub mod constants;
pub mod crd;
pub mod metrics;
pub mod params;
pub mod sidecar;
pub mod types;

use std::sync::Arc;

pub use common::CommonConfig;
pub use sidecar::SidecarConfig;

/// Builds the common controller (cluster-wide: every driver's snapshots), registering its
/// informers: VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotClass, the claims it has
/// business with, and with `config.groups` the three group kinds.
pub fn build_common(
    ctx: controller_kit::ControllerContext,
    config: CommonConfig,
    informers: &mut controller_kit::Informers,
) -> Arc<dyn controller_kit::Controller> {
    Arc::new(common::build(ctx, config, informers))
}

/// Builds the CSI half for `driver`, registering its informers (this driver's contents, the
/// classes).
pub fn build_sidecar(
    ctx: controller_kit::ControllerContext,
    driver: &csi::Driver,
    config: SidecarConfig,
    informers: &mut controller_kit::Informers,
) -> Arc<dyn controller_kit::Controller> {
    Arc::new(sidecar::build(ctx, driver, config, informers))
}

/// A pass's failure: its text, and whether it was a write that lost a race (a conflict on the
/// resourceVersion), which is retried shortly and quietly instead of with backoff.
#[derive(Debug)]
pub(crate) struct PassError {
    message: String,
    pub(crate) conflict: bool,
}

impl PassError {
    /// A failed API call, described by `message`.
    pub(crate) fn api(message: String, error: &controller_kit::api::ApiError) -> Self {
        Self {
            message,
            conflict: error.is_conflict(),
        }
    }
}

impl From<String> for PassError {
    fn from(message: String) -> Self {
        Self {
            message,
            conflict: false,
        }
    }
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How soon a pass whose write lost a race runs again (the watch brings the newer object).
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// A pass's result for the workers: a lost race is a quiet, short retry.
pub(crate) fn settle(
    result: Result<controller_kit::Outcome, PassError>,
) -> Result<controller_kit::Outcome, String> {
    match result {
        Err(e) if e.conflict => {
            tracing::debug!(error = %e.message, "write conflict; looking again shortly");
            Ok(controller_kit::Outcome::RequeueAfter(CONFLICT_RETRY))
        }
        Err(e) => Err(e.message),
        Ok(o) => Ok(o),
    }
}
