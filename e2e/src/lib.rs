//! Helpers of the end-to-end suite: the cluster's kubeconfig and clients, unique names, polling.
//!
//! The suite runs against the local control plane (`e2e/cluster up`) or any cluster, found through
//! `KUBECONFIG` (exported by `e2e/run-tests`). Tests are compiled only with the `cluster` feature.

use std::future::Future;
use std::time::{Duration, Instant};

/// API clients for the cluster under test (`KUBECONFIG`); panics with a clear message without one.
pub async fn clients() -> runtime::kubeclient::Clients {
    let path = std::env::var_os("KUBECONFIG")
        .expect("KUBECONFIG must point at the cluster under test (e2e/cluster up writes one)");
    runtime::kubeclient::clients(Some(std::path::Path::new(&path)), 100.0, 200)
        .await
        .expect("a client for the cluster under test")
}

/// A name unique to this test run: `prefix-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..8])
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
