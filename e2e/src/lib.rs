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

/// A binary of this workspace (`csi-controller-manager`, `csi-mock`), built next to the test
/// executable (`target/<profile>/`); the environment variable `env_override` wins if set.
pub fn workspace_binary(name: &str, env_override: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p ...), or set {env_override}",
        path.display()
    );
    path
}

/// A StorageClass of `driver`: Immediate binding, the given reclaim policy and parameters.
pub fn storage_class(
    name: &str,
    driver: &str,
    reclaim_policy: &str,
    parameters: std::collections::BTreeMap<String, String>,
) -> k8s_openapi::api::storage::v1::StorageClass {
    k8s_openapi::api::storage::v1::StorageClass {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        provisioner: driver.into(),
        parameters: Some(parameters),
        reclaim_policy: Some(reclaim_policy.into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    }
}

/// A ReadWriteOnce claim of `size` (a Kubernetes quantity) in `class`.
pub fn claim(
    name: &str,
    class: &str,
    size: &str,
) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    k8s_openapi::api::core::v1::PersistentVolumeClaim {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(std::collections::BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
