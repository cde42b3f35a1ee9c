//! The attacher's errors. Every reconcile error is retried with the key's exponential backoff;
//! there is no "give up" (upstream retries final CSI errors too, reference detail 7).

use std::time::Duration;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API server (or the client) said no.
    #[error("{}", api_message(.0))]
    Kube(#[source] kube::Error),
    /// No answer within the API timeout.
    #[error("API call timed out after {0:?}")]
    Timeout(Duration),
}

impl ApiError {
    /// Whether the API server answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Kube(kube::Error::Api(s)) if s.is_not_found())
    }
}

/// The API server's message as client-go prints it (`persistentvolumes "x" not found`), so
/// that saved errors read as upstream's.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

/// Why one reconcile pass failed. The message of `Attach` / `Detach` was saved in the VA status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Attaching failed (saved as `status.attachError`).
    #[error("failed to attach: {0}")]
    Attach(String),
    /// Detaching failed (saved as `status.detachError`).
    #[error("failed to detach: {0}")]
    Detach(String),
    /// ControllerPublish succeeded but the status could not be written; the retry publishes again
    /// (idempotent on the driver).
    #[error("failed to mark as attached: {0}")]
    MarkAttached(#[source] ApiError),
    /// The PV finalizer could not be removed.
    #[error("failed to remove finalizer from PersistentVolume: {0}")]
    RemovePvFinalizer(#[source] ApiError),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Attach(_) => "attach",
            Error::Detach(_) => "detach",
            Error::MarkAttached(_) => "mark-attached",
            Error::RemovePvFinalizer(_) => "pv-finalizer",
        }
    }
}
