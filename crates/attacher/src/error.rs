//! The attacher's errors. Every reconcile error is retried with the key's exponential backoff;
//! there is no "give up" (upstream retries final CSI errors too, reference detail 7).

use controller_kit::api::ApiError;

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
