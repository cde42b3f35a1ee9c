//! snapshot-controller's operation metrics (`pkg/metrics/metrics.go`):
//! `snapshot_controller_operation_total_seconds{driver_name, operation_name, snapshot_type,
//! operation_status}` and `snapshot_controller_operations_in_flight`. An operation starts when
//! the controller first works on it and is observed when it ends; start times live in memory,
//! keyed by operation and object UID, as upstream's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::constants::{OP_CREATE, OP_CREATE_AND_READY};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    driver_name: String,
    operation_name: &'static str,
    snapshot_type: &'static str,
    operation_status: &'static str,
}

/// `dynamic` or `pre-provisioned`.
pub fn snapshot_type(pre_provisioned: bool) -> &'static str {
    if pre_provisioned {
        "pre-provisioned"
    } else {
        "dynamic"
    }
}

struct Started {
    at: Instant,
    driver: String,
    snapshot_type: &'static str,
}

/// The operation metrics of the common controller.
#[derive(Clone)]
pub struct OperationMetrics {
    seconds: Family<Labels, Histogram>,
    in_flight: Gauge,
    started: Arc<Mutex<HashMap<(&'static str, String), Started>>>,
}

impl std::fmt::Debug for OperationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationMetrics").finish_non_exhaustive()
    }
}

impl OperationMetrics {
    /// Registers the metrics in `metrics`.
    pub fn register(metrics: &controller_kit::Metrics) -> Self {
        let seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ])
        });
        let in_flight = Gauge::default();
        let (s, g) = (seconds.clone(), in_flight.clone());
        metrics.register(move |registry| {
            registry.register(
                "snapshot_controller_operation_total_seconds",
                "Total number of seconds spent by the controller on an operation",
                s,
            );
            registry.register(
                "snapshot_controller_operations_in_flight",
                "Total number of operations in flight",
                g,
            );
        });
        Self {
            seconds,
            in_flight,
            started: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, String), Started>> {
        self.started.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `op` for the object `uid`, unless it is already started.
    pub fn start(&self, op: &'static str, uid: &str, driver: &str, snapshot_type: &'static str) {
        let mut started = self.lock();
        started
            .entry((op, uid.to_string()))
            .or_insert_with(|| Started {
                at: Instant::now(),
                driver: if driver.is_empty() {
                    "unknown".into()
                } else {
                    driver.to_string()
                },
                snapshot_type,
            });
        self.in_flight.set(started.len() as i64);
    }

    /// Ends `op` for `uid` with `status` (`success`, `cancel`), if it was started. A delete also
    /// cancels the creation operations of the same object.
    pub fn finish(&self, op: &'static str, uid: &str, status: &'static str) {
        let mut started = self.lock();
        let mut end = |op: &'static str, status: &'static str| {
            if let Some(s) = started.remove(&(op, uid.to_string())) {
                self.seconds
                    .get_or_create(&Labels {
                        driver_name: s.driver,
                        operation_name: op,
                        snapshot_type: s.snapshot_type,
                        operation_status: status,
                    })
                    .observe(s.at.elapsed().as_secs_f64());
            }
        };
        end(op, status);
        if op == crate::constants::OP_DELETE {
            end(OP_CREATE, "cancel");
            end(OP_CREATE_AND_READY, "cancel");
        }
        self.in_flight.set(started.len() as i64);
    }
}
