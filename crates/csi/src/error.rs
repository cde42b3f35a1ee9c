//! The error of every CSI call, classified as upstream does.
//!
//! A CSI call that fails with CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, RESOURCE_EXHAUSTED or
//! ABORTED, or that fails without a gRPC status at all (the connection broke, our own timeout fired),
//! may still be running on the driver: the caller must keep whatever guards it (finalizers, in-flight
//! annotations) and retry the *same* request. Every other code is final: the driver has finished
//! with the request. This is `isFinalError` of external-attacher and csi-snapshotter; the
//! provisioner's `checkError` maps the same set to "InBackground".

use std::time::Duration;

use tonic::Code;

/// Why a CSI call, or setting up the connection, failed.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// The driver answered with a gRPC status other than OK.
    #[error("{method}: rpc error: code = {} desc = {}", code_name(.status.code()), .status.message())]
    Status {
        /// Full gRPC method, e.g. `/csi.v1.Controller/CreateVolume`.
        method: &'static str,
        /// The status as the driver sent it.
        #[source]
        status: Box<tonic::Status>,
    },
    /// Our per-call timeout (`--timeout`) expired before the driver answered.
    #[error("{method}: no answer from the CSI driver within {timeout:?}")]
    Timeout {
        /// Full gRPC method.
        method: &'static str,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The `--csi-address` value cannot be used.
    #[error("invalid CSI endpoint {address:?}: {reason}")]
    InvalidEndpoint {
        /// The value as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The driver's answer breaks the CSI spec (e.g. an empty driver name).
    #[error("the CSI driver's answer to {method} is invalid: {reason}")]
    InvalidResponse {
        /// Full gRPC method.
        method: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Shutdown was requested while waiting for the driver.
    #[error("shut down while waiting for the CSI driver")]
    Cancelled,
}

impl CsiError {
    /// The gRPC code of the failure: the driver's, or DEADLINE_EXCEEDED for our own timeout.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { status, .. } => Some(status.code()),
            Self::Timeout { .. } => Some(Code::DeadlineExceeded),
            _ => None,
        }
    }

    /// True when the driver is known to have finished with the request: retrying is a new
    /// attempt, and nothing the request may have created is still on its way.
    pub fn is_final(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_final_code(status.code()),
            Self::Timeout { .. } => false,
            // Not an answer from the driver about the operation: nothing is known, so not final.
            Self::InvalidEndpoint { .. } | Self::Cancelled => false,
            // The driver answered OK, so the operation itself finished.
            Self::InvalidResponse { .. } => true,
        }
    }

    /// The opposite of [`is_final`](Self::is_final): the operation may still be running on the
    /// driver, so the caller keeps its guards and repeats the same request.
    pub fn may_be_in_flight(&self) -> bool {
        !self.is_final()
    }

    /// The text Go's gRPC client gives for this failure (`rpc error: code = X desc = Y`), without
    /// our method prefix; our own timeout reads as grpc-go's context deadline. This is what the Go
    /// sidecars put in Events and saved statuses, so ours read the same.
    pub fn go_message(&self) -> String {
        match self {
            Self::Status { status, .. } => format!(
                "rpc error: code = {} desc = {}",
                code_name(status.code()),
                status.message()
            ),
            Self::Timeout { .. } => {
                "rpc error: code = DeadlineExceeded desc = context deadline exceeded".to_string()
            }
            other => other.to_string(),
        }
    }

    /// The driver's own message (the gRPC status message, `desc` of [`go_message`](Self::go_message));
    /// our own timeout reads as grpc-go's `context deadline exceeded`.
    pub fn status_message(&self) -> String {
        match self {
            Self::Status { status, .. } => status.message().to_string(),
            Self::Timeout { .. } => "context deadline exceeded".to_string(),
            other => other.to_string(),
        }
    }

    /// The label value used for `grpc_status_code` in metrics and for Event messages.
    pub fn code_label(&self) -> &'static str {
        match self.code() {
            Some(code) => code_name(code),
            None => "unknown-non-grpc",
        }
    }
}

/// Whether a gRPC code means the driver has finished with the request (see the module doc).
pub fn is_final_code(code: Code) -> bool {
    !matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// The code's name as Go's `codes.Code.String()` prints it, so metric labels and messages read the
/// same as the Go sidecars' (`OK`, `Canceled`, `DeadlineExceeded`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code) -> CsiError {
        CsiError::Status {
            method: "/csi.v1.Controller/CreateVolume",
            status: Box::new(tonic::Status::new(code, "boom")),
        }
    }

    #[test]
    fn final_and_in_flight_per_code() {
        let in_flight = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Aborted,
        ];
        let final_codes = [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for code in in_flight {
            assert!(!status(code).is_final(), "{code:?} must be in flight");
            assert!(status(code).may_be_in_flight());
        }
        for code in final_codes {
            assert!(status(code).is_final(), "{code:?} must be final");
        }
        let timeout = CsiError::Timeout {
            method: "/csi.v1.Controller/CreateVolume",
            timeout: Duration::from_secs(1),
        };
        assert!(!timeout.is_final());
        assert_eq!(timeout.code(), Some(Code::DeadlineExceeded));
    }

    #[test]
    fn messages_read_like_the_go_sidecars() {
        let e = status(Code::ResourceExhausted);
        assert_eq!(
            e.to_string(),
            "/csi.v1.Controller/CreateVolume: rpc error: code = ResourceExhausted desc = boom"
        );
        assert_eq!(e.code_label(), "ResourceExhausted");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(CsiError::Cancelled.code_label(), "unknown-non-grpc");
    }
}
