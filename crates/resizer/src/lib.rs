//! The volume expansion and modification controllers of csi-controller-manager: a drop-in for
//! external-resizer v2.2 (`kubernetes-csi/external-resizer`) with recovery from expansion
//! failure (RecoverVolumeExpansionFailure, GA) and VolumeAttributesClass (GA): the same
//! annotations, conditions, `allocatedResources`/`allocatedResourceStatuses` and
//! `modifyVolumeStatus` values, patches, events and error texts.
//!
//! # Shape
//! - [`constants`]: the strings other software reads;
//! - [`plan`]: the pure decisions (update filter, selection, the recovery table, error classes,
//!   condition merging);
//! - [`request`], [`patch`]: pure builders of the CSI request and the API patches;
//! - [`modify`]: the modify controller (VolumeAttributesClass, ControllerModifyVolume): its pure
//!   plan and patches, and its pass (`modify::act`);
//! - `controller`: informer handlers, the shared state and API helpers; `expand`: the
//!   expansion pass and its API and CSI calls (thin);
//! - [`access`]: the API permissions it uses, checked at start-up.
//!
//! # Beyond upstream
//! - Every failure carries a machine-readable class ([`plan::ErrorClass::reason`],
//!   [`modify::ModifyErrorClass::reason`]): the `reason` of the `ControllerResizeError`
//!   condition and the `action` of the `VolumeResizeFailed`/`VolumeModifyFailed` Event
//!   (`ResizeInfeasible`, `ResizeFailed`, `ResizeTransientError`, `ResizeVolumeInUse`,
//!   `ModifyInfeasible`, `ModifyFailed`, `ModifyTransientError`), and
//!   `csi_resizer_failures_total{class}`.
//! - No cache of Pods: the in-use check of an offline-only driver lists the claim's namespace's
//!   Pods on demand, and only for a claim whose last expansion failed with FAILED_PRECONDITION.
//! - Claims are cached only if they may be this driver's (see `controller`).
//!
//! # Not built yet
//! The legacy path without RecoverVolumeExpansionFailure (GA in Kubernetes 1.34; always on
//! here), and CSI migration of in-tree PVs.

pub mod access;
pub mod constants;
mod controller;
mod expand;
pub mod modify;
pub mod patch;
pub mod plan;
pub mod request;

use std::sync::Arc;

pub use controller::Resizer;

/// The resizer's settings beyond those in [`controller_kit::ControllerContext`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResizerConfig {
    /// `--handle-volume-inuse-error` (default true): after FAILED_PRECONDITION, hold expansion
    /// while a running Pod uses the claim.
    pub handle_volume_inuse_error: bool,
    /// Feature gate `AnnotateFsResize` (default true): the PV's pre-resize-capacity annotation.
    pub annotate_fs_resize: bool,
    /// The modify controller: feature gate `VolumeAttributesClass`, off when the API server
    /// serves no `storage.k8s.io/v1` VolumeAttributesClass (default true). It runs only for a
    /// driver with MODIFY_VOLUME.
    pub modify: bool,
    /// `--extra-modify-metadata`: the claim's and PV's names among the mutable parameters.
    pub extra_modify_metadata: bool,
}

impl Default for ResizerConfig {
    fn default() -> Self {
        Self {
            handle_volume_inuse_error: true,
            annotate_fs_resize: true,
            modify: true,
            extra_modify_metadata: false,
        }
    }
}

/// Builds the resizer: registers its informers (PersistentVolumeClaim, PersistentVolume, and
/// VolumeAttributesClass for the modify controller) and handlers, and returns the controller
/// whose [`run`](controller_kit::Controller::run) starts the workers for one leader term. The
/// resize controller runs for a driver with EXPAND_VOLUME, the modify controller for one with
/// MODIFY_VOLUME and [`ResizerConfig::modify`].
pub fn build(
    ctx: controller_kit::ControllerContext,
    driver: &csi::Driver,
    config: ResizerConfig,
    informers: &mut controller_kit::Informers,
) -> Arc<dyn controller_kit::Controller> {
    Arc::new(controller::build(ctx, driver, config, informers))
}
