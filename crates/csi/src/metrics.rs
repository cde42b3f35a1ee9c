//! `csi_sidecar_operations_seconds`, the histogram every Go sidecar exports, with the same name,
//! labels and buckets, so existing dashboards keep working.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of upstream's `csi_sidecar_operations_seconds`.
pub const OPERATION_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0,
];

/// Labels of one CSI operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The driver's name from GetPluginInfo.
    pub driver_name: String,
    /// Full gRPC method, e.g. `/csi.v1.Controller/CreateVolume`.
    pub method_name: String,
    /// `OK`, a gRPC code name as Go prints it, or `unknown-non-grpc`.
    pub grpc_status_code: String,
}

/// Per-call metrics of one CSI client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CsiMetrics {
    operations: Family<OperationLabels, Histogram>,
    driver_name: Arc<RwLock<Option<String>>>,
}

impl Default for CsiMetrics {
    fn default() -> Self {
        Self {
            operations: Family::new_with_constructor(|| {
                Histogram::new(OPERATION_BUCKETS.iter().copied())
            }),
            driver_name: Arc::default(),
        }
    }
}

impl CsiMetrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "csi_sidecar_operations_seconds",
            "Container Storage Interface operation duration with gRPC error code status total",
            metrics.operations.clone(),
        );
        metrics
    }

    /// Sets the driver name used as the `driver_name` label, once discovery has learnt it.
    pub fn set_driver_name(&self, name: &str) {
        *self.driver_name.write().unwrap_or_else(|e| e.into_inner()) = Some(name.to_string());
    }

    /// The driver name, once known.
    pub fn driver_name(&self) -> Option<String> {
        self.driver_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one call. Calls made before the driver's name is known (only the first
    /// GetPluginInfo attempts) are not recorded, so no series ever says `unknown-driver`.
    pub fn observe(&self, method: &str, status_code: &str, elapsed: Duration) {
        let Some(driver_name) = self.driver_name() else {
            return;
        };
        self.operations
            .get_or_create(&OperationLabels {
                driver_name,
                method_name: method.to_string(),
                grpc_status_code: status_code.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn records_under_the_real_driver_name_only() {
        let mut registry = Registry::default();
        let metrics = CsiMetrics::new(&mut registry);
        metrics.observe(
            "/csi.v1.Identity/GetPluginInfo",
            "Unavailable",
            Duration::from_millis(5),
        );
        metrics.set_driver_name("hostpath.csi.k8s.io");
        metrics.observe(
            "/csi.v1.Controller/CreateVolume",
            "OK",
            Duration::from_millis(200),
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            r#"csi_sidecar_operations_seconds_count{driver_name="hostpath.csi.k8s.io",method_name="/csi.v1.Controller/CreateVolume",grpc_status_code="OK"} 1"#
        ), "{text}");
        assert!(!text.contains("GetPluginInfo"));
        assert!(!text.contains("unknown-driver"));
    }
}
