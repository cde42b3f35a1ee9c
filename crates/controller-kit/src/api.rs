//! One way for every controller to call the Kubernetes API: a timeout on each call, and one error
//! type that says what the API server answered in client-go's words.
//!
//! # Invariants
//! - No call waits longer than its timeout: a hung connection becomes [`ApiError::Timeout`].
//! - An error's text is the API server's message as client-go prints it
//!   (`persistentvolumes "x" not found`), so saved errors and Events read as upstream's; the full
//!   `kube::Error` stays reachable as the `source`.

use std::future::Future;
use std::time::Duration;

/// The timeout of an API call unless a controller configures its own.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API server (or the client) said no.
    #[error("{}", status_message(.0))]
    Kube(#[source] Box<kube::Error>),
    /// No answer within the timeout.
    #[error("API call timed out after {0:?}")]
    Timeout(Duration),
}

impl ApiError {
    /// The HTTP status code the API server answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ApiError::Kube(e) => match e.as_ref() {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
            ApiError::Timeout(_) => None,
        }
    }

    /// The object does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// The object changed meanwhile, or already exists (409).
    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }

    /// RBAC does not allow the call (403).
    pub fn is_forbidden(&self) -> bool {
        self.status_code() == Some(403)
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        ApiError::Kube(Box::new(e))
    }
}

/// The API server's message as client-go prints it, else the client's own error text.
fn status_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

/// Runs one API call with `timeout`.
pub async fn call<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> ApiError {
        ApiError::from(kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "NotFound").with_code(code),
        )))
    }

    #[test]
    fn classifies_status_codes() {
        let e = status(404, r#"secrets "x" not found"#);
        assert!(e.is_not_found() && !e.is_conflict() && !e.is_forbidden());
        assert_eq!(e.to_string(), r#"secrets "x" not found"#);
        assert!(status(409, "conflict").is_conflict());
        assert!(status(403, "forbidden").is_forbidden());
        let t = ApiError::Timeout(Duration::from_secs(30));
        assert_eq!(t.status_code(), None);
        assert_eq!(t.to_string(), "API call timed out after 30s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_times_out() {
        let hang = std::future::pending::<Result<(), kube::Error>>();
        let r = call(Duration::from_secs(5), hang).await;
        assert!(matches!(r, Err(ApiError::Timeout(d)) if d == Duration::from_secs(5)));
        let ok = call(Duration::from_secs(5), async { Ok::<_, kube::Error>(7) }).await;
        assert_eq!(ok.unwrap(), 7);
    }
}
