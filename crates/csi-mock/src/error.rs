//! The one error type of the crate: starting servers and reading or writing the state file.

use std::path::PathBuf;

/// Why the mock could not start, persist or shut down.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The endpoint string cannot be used; fix the flag or argument.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value (flag) is invalid; fix it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Binding the listener failed (address in use, no permission, missing directory, ...).
    #[error("cannot listen on {endpoint}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but cannot be read.
    #[error("cannot read the state file {}", .path.display())]
    ReadState {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not the JSON of a `MockState`; remove it or fix it.
    #[error("the state file {} is not valid mock state JSON", .path.display())]
    ParseState {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the state file failed; the in-memory state is ahead of the file.
    #[error("cannot write the state file {}", .path.display())]
    WriteState {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The HTTP control server stopped with an error.
    #[error("the control server failed")]
    Control(#[source] std::io::Error),
    /// A server task panicked or was aborted.
    #[error("a server task ended abnormally")]
    Join(#[source] tokio::task::JoinError),
}
