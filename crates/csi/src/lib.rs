//! CSI for csi-controller-manager: the generated CSI v1.12 bindings ([`v1`]) and a client for a
//! driver's Identity, Controller and GroupController services.
//!
//! The client ([`CsiClient`]) owns one gRPC channel to the driver's socket. Every call carries the
//! configured timeout, is measured in `csi_sidecar_operations_seconds` under the driver's real name,
//! and fails with a [`CsiError`] that says whether the operation is finished ([`CsiError::is_final`])
//! or may still be in flight on the driver and must be retried with the same request.
//!
//! Connecting never fails because the driver is absent: [`CsiClient::connect`] returns at once and
//! [`CsiClient::wait_for_driver`] waits, logging, until the socket answers; a [`DriverWatch`] keeps
//! probing so that readiness follows the driver through restarts.

pub mod access_mode;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod metrics;
pub mod parameters;
pub mod v1;

pub use client::{CsiClient, Discovery, Driver, DriverWatch, ProbeState};
pub use endpoint::CsiEndpoint;
pub use error::CsiError;
pub use metrics::CsiMetrics;
/// The gRPC status code of a CSI failure, as [`CsiError::code`] returns it.
pub use tonic::Code;
