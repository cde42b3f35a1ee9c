//! The Controller and GroupController RPCs as plain functions over [`MockState`]: validation,
//! idempotency, capacity accounting, topology, publication rules, pagination.
//!
//! Nothing here does I/O, locking or fault injection; [`MockDriver`](crate::MockDriver) runs these
//! under its state lock and persists the state afterwards. Error codes follow the tables of the CSI
//! spec v1.12 for each RPC; the choices the spec leaves open are documented on each function.
//!
//! Every RPC is a method of [`Backend`] (as are the Identity and Node RPCs, in `identity.rs` and
//! `node.rs`), one file per concern:
//! - [`volumes`]: CreateVolume, DeleteVolume, ValidateVolumeCapabilities, ControllerExpandVolume,
//!   ControllerGetVolume, ControllerModifyVolume;
//! - [`publication`]: ControllerPublishVolume, ControllerUnpublishVolume;
//! - [`snapshots`]: CreateSnapshot, DeleteSnapshot, ListSnapshots, GetSnapshot;
//! - [`group_snapshots`]: the GroupController service;
//! - [`listing`]: ControllerGetCapabilities, ListVolumes, GetCapacity and the pagination;
//! - [`validation`] and [`convert`]: the request checks and the record-to-protobuf conversions
//!   the others share.
//!
//! # Invariants
//! - A call that fails changes nothing: each RPC makes all its checks before its first change to
//!   the state.
//! - Ids only grow, so a pagination token (the last id returned) survives deletions.

mod convert;
mod group_snapshots;
mod listing;
mod publication;
mod snapshots;
mod validation;
mod volumes;

use crate::config::MockConfig;
use crate::state::MockState;

pub(crate) use validation::{check_capability, invalid};

/// The driver's view of one call: configuration, state and the clock.
#[derive(Debug)]
pub(crate) struct Backend<'a> {
    pub config: &'a MockConfig,
    pub state: &'a mut MockState,
    /// Milliseconds since the Unix epoch, for creation times and snapshot readiness.
    pub now_ms: i64,
    /// What Probe reports.
    pub ready: bool,
}

#[cfg(test)]
mod tests;
