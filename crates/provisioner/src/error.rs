//! The provisioner's errors and upstream's provisioning states.
//!
//! Every provisioning failure carries a [`ProvisioningState`] that says what to do next, exactly as
//! upstream's `controller.ProvisioningState` does, and a message that is the Event text verbatim
//! (upstream's `err.Error()`). CSI errors are classified by [`check_error`], upstream's `checkError`:
//! RESOURCE_EXHAUSTED is "finished" (or "reschedule" when another node may do better), CANCELLED /
//! DEADLINE_EXCEEDED / UNAVAILABLE / ABORTED and non-gRPC failures are "in background" (the volume
//! may still be being created), every other code is "finished".

use controller_kit::api::ApiError;
use csi::{Code, CsiError};

/// What a failed provisioning attempt means for the next one (upstream `ProvisioningState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvisioningState {
    /// Nothing is in progress on the driver; retry from scratch with backoff.
    Finished,
    /// Failed before anything could have been created; retry with backoff.
    NoChange,
    /// The volume may still be being created: keep the intent, repeat the same request.
    InBackground,
    /// Give the claim back to the scheduler: remove `volume.kubernetes.io/selected-node`.
    Reschedule,
    /// Not for us to provision (upstream `IgnoredError`): no failure Event, no retry.
    Ignored,
}

/// A failed provisioning attempt: its state and the Event message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProvisionError {
    /// What to do next.
    pub state: ProvisioningState,
    /// The message, as upstream's `err.Error()`: the `ProvisioningFailed` Event text.
    pub message: String,
    /// The CSI call failed with INVALID_ARGUMENT: upstream's "infeasible" slow retry.
    pub infeasible: bool,
}

impl ProvisionError {
    /// A failure after which nothing is in progress.
    pub fn finished(message: impl Into<String>) -> Self {
        Self::new(ProvisioningState::Finished, message)
    }

    /// A failure before anything was attempted.
    pub fn no_change(message: impl Into<String>) -> Self {
        Self::new(ProvisioningState::NoChange, message)
    }

    /// A failure with the given state.
    pub fn new(state: ProvisioningState, message: impl Into<String>) -> Self {
        Self {
            state,
            message: message.into(),
            infeasible: false,
        }
    }

    /// The failure of a CreateVolume call, classified as upstream does.
    pub fn from_csi(error: &CsiError, may_reschedule: bool) -> Self {
        Self {
            state: check_error(error, may_reschedule),
            message: error.go_message(),
            infeasible: error.code() == Some(Code::InvalidArgument),
        }
    }

    /// The Event message of an "infeasible" failure (LIB `:1500-1501`).
    pub fn event_message(&self) -> String {
        if self.infeasible {
            format!(
                "Volume provisioning failed with infeasible error. Retries will be delayed. {}",
                self.message
            )
        } else {
            self.message.clone()
        }
    }
}

/// Upstream's `checkError`: the provisioning state after a failed CreateVolume.
pub fn check_error(error: &CsiError, may_reschedule: bool) -> ProvisioningState {
    match error.code() {
        Some(Code::ResourceExhausted) if may_reschedule => ProvisioningState::Reschedule,
        Some(Code::ResourceExhausted) => ProvisioningState::Finished,
        Some(Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable | Code::Aborted) => {
            ProvisioningState::InBackground
        }
        // Not a gRPC status: the call may have reached the driver; be safe.
        None => ProvisioningState::InBackground,
        Some(_) => ProvisioningState::Finished,
    }
}

/// Errors of the controller's passes (API calls, CSI calls, invalid state); they are logged and
/// the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A provisioning attempt failed (already reported as an Event).
    #[error("provisioning failed: {0}")]
    Provision(#[source] ProvisionError),
    /// A deletion attempt failed (already reported as an Event).
    #[error("deletion failed: {0}")]
    Delete(String),
    /// An API call failed or timed out.
    #[error("{action}: {source}")]
    Api {
        /// What we were doing.
        action: String,
        /// The API server's answer.
        #[source]
        source: ApiError,
    },
    /// The intent journal could not store a record.
    #[error("recording the volume intent: {0}")]
    Journal(String),
    /// A CSI call failed outside provisioning (rollback).
    #[error("{action}: {source}")]
    Csi {
        /// What we were doing.
        action: String,
        /// The CSI error.
        #[source]
        source: Box<CsiError>,
    },
    /// A provisioning attempt is held back after an infeasible error.
    #[error("{0}")]
    Held(String),
}

impl Error {
    /// The API server answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.is_not_found())
    }

    /// The API server answered 409.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.is_conflict())
    }

    /// The API server answered 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Api { source, .. } if source.is_forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Duration;

    fn status(code: Code) -> CsiError {
        CsiError::Status {
            method: "/csi.v1.Controller/CreateVolume",
            status: Box::new(tonic::Status::new(code, "boom")),
        }
    }

    // Upstream's matrix, pkg/controller/controller_test.go TestProvisionErrorHandling.
    #[rstest]
    #[case(Code::ResourceExhausted, false, ProvisioningState::Finished)]
    #[case(Code::ResourceExhausted, true, ProvisioningState::Reschedule)]
    #[case(Code::Cancelled, true, ProvisioningState::InBackground)]
    #[case(Code::DeadlineExceeded, false, ProvisioningState::InBackground)]
    #[case(Code::Unavailable, true, ProvisioningState::InBackground)]
    #[case(Code::Aborted, false, ProvisioningState::InBackground)]
    #[case(Code::InvalidArgument, true, ProvisioningState::Finished)]
    #[case(Code::AlreadyExists, false, ProvisioningState::Finished)]
    #[case(Code::NotFound, false, ProvisioningState::Finished)]
    #[case(Code::OutOfRange, false, ProvisioningState::Finished)]
    #[case(Code::Internal, true, ProvisioningState::Finished)]
    #[case(Code::Unknown, false, ProvisioningState::Finished)]
    fn grpc_codes_map_to_states(
        #[case] code: Code,
        #[case] may_reschedule: bool,
        #[case] want: ProvisioningState,
    ) {
        assert_eq!(check_error(&status(code), may_reschedule), want);
    }

    #[test]
    fn non_grpc_failures_are_in_background() {
        let timeout = CsiError::Timeout {
            method: "/csi.v1.Controller/CreateVolume",
            timeout: Duration::from_secs(10),
        };
        assert_eq!(check_error(&timeout, true), ProvisioningState::InBackground);
        let invalid = CsiError::InvalidEndpoint {
            address: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(
            check_error(&invalid, false),
            ProvisioningState::InBackground
        );
    }

    #[test]
    fn messages_read_as_go_grpc_errors() {
        let e = ProvisionError::from_csi(&status(Code::InvalidArgument), false);
        assert_eq!(e.message, "rpc error: code = InvalidArgument desc = boom");
        assert!(e.infeasible);
        assert_eq!(
            e.event_message(),
            "Volume provisioning failed with infeasible error. Retries will be delayed. rpc error: code = InvalidArgument desc = boom"
        );
        let e = ProvisionError::from_csi(&status(Code::Internal), false);
        assert!(!e.infeasible);
        assert_eq!(e.event_message(), "rpc error: code = Internal desc = boom");
        let timeout = CsiError::Timeout {
            method: "/csi.v1.Controller/CreateVolume",
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            timeout.go_message(),
            "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
        );
    }
}
