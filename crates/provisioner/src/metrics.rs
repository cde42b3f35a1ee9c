//! Upstream's provisioning metrics (sig-storage-lib-external-provisioner, subsystem
//! `controller`), with its names, labels and buckets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `class` and `source` (the claim's `dataSource.kind`, or empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// The StorageClass.
    pub class: String,
    /// The data source's kind, or empty.
    pub source: String,
}

/// `class`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    /// The StorageClass.
    pub class: String,
}

/// Prometheus' default buckets, which upstream's histograms use.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The provisioner's metrics.
#[derive(Clone, Debug)]
pub struct ProvisionerMetrics {
    provisioned: Family<ClaimLabels, Counter>,
    provision_failed: Family<ClaimLabels, Counter>,
    provision_duration: Family<ClaimLabels, Histogram>,
    deleted: Family<VolumeLabels, Counter>,
    delete_failed: Family<VolumeLabels, Counter>,
    delete_duration: Family<VolumeLabels, Histogram>,
    /// Ours: failed rollbacks of journal intents whose claim is gone.
    rollback_failed: Counter,
    /// Ours: journal intents given up after `--intent-rollback-timeout` of failed rollbacks.
    rollback_abandoned: Counter,
}

impl ProvisionerMetrics {
    /// Registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            provisioned: Family::default(),
            provision_failed: Family::default(),
            provision_duration: Family::new_with_constructor(histogram),
            deleted: Family::default(),
            delete_failed: Family::default(),
            delete_duration: Family::new_with_constructor(histogram),
            rollback_failed: Counter::default(),
            rollback_abandoned: Counter::default(),
        };
        registry.register(
            "csi_provisioner_intent_rollback_abandoned",
            "Journal intents given up after --intent-rollback-timeout of failed rollbacks; their volume may be left on the driver (each is also a VolumeRollbackAbandoned Event on the journal ConfigMap naming it).",
            m.rollback_abandoned.clone(),
        );
        registry.register(
            "csi_provisioner_intent_rollback_failed",
            "Failed attempts to roll back the volume of a journal intent whose claim is gone (each is also a VolumeRollbackFailed Event on the journal ConfigMap).",
            m.rollback_failed.clone(),
        );
        registry.register(
            "controller_persistentvolumeclaim_provision",
            "Total number of persistent volumes provisioned successfully. Broken down by storage class name and source of the claim.",
            m.provisioned.clone(),
        );
        registry.register(
            "controller_persistentvolumeclaim_provision_failed",
            "Total number of persistent volume provision failed attempts. Broken down by storage class name and source of the claim.",
            m.provision_failed.clone(),
        );
        registry.register(
            "controller_persistentvolumeclaim_provision_duration_seconds",
            "Latency in seconds to provision persistent volumes. Failed provisioning attempts are ignored. Broken down by storage class name and source of the claim.",
            m.provision_duration.clone(),
        );
        registry.register(
            "controller_persistentvolume_delete",
            "Total number of persistent volumes deleted successfully. Broken down by storage class name.",
            m.deleted.clone(),
        );
        registry.register(
            "controller_persistentvolume_delete_failed",
            "Total number of persistent volume delete failed attempts. Broken down by storage class name.",
            m.delete_failed.clone(),
        );
        registry.register(
            "controller_persistentvolume_delete_duration_seconds",
            "Latency in seconds to delete persistent volumes. Failed deletion attempts are ignored. Broken down by storage class name.",
            m.delete_duration.clone(),
        );
        m
    }

    /// A volume provisioned, `seconds` after the attempt began.
    pub fn provisioned(&self, labels: &ClaimLabels, seconds: f64) {
        self.provisioned.get_or_create(labels).inc();
        self.provision_duration
            .get_or_create(labels)
            .observe(seconds);
    }

    /// A failed provisioning attempt.
    pub fn provision_failed(&self, labels: &ClaimLabels) {
        self.provision_failed.get_or_create(labels).inc();
    }

    /// A volume deleted, `seconds` after the attempt began.
    pub fn deleted(&self, class: &str, seconds: f64) {
        let labels = VolumeLabels {
            class: class.to_string(),
        };
        self.deleted.get_or_create(&labels).inc();
        self.delete_duration.get_or_create(&labels).observe(seconds);
    }

    /// A failed rollback attempt.
    pub fn rollback_failed(&self) {
        self.rollback_failed.inc();
    }

    /// An intent given up.
    pub fn rollback_abandoned(&self) {
        self.rollback_abandoned.inc();
    }

    /// A failed deletion attempt.
    pub fn delete_failed(&self, class: &str) {
        let labels = VolumeLabels {
            class: class.to_string(),
        };
        self.delete_failed.get_or_create(&labels).inc();
    }
}

/// The labels of `pvc`'s provisioning.
pub fn claim_labels(pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> ClaimLabels {
    ClaimLabels {
        class: crate::claim::claim_class(pvc),
        source: pvc
            .spec
            .as_ref()
            .and_then(|s| s.data_source.as_ref())
            .map(|d| d.kind.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_upstreams() {
        let mut registry = Registry::default();
        let m = ProvisionerMetrics::register(&mut registry);
        let labels = ClaimLabels {
            class: "fast".into(),
            source: "VolumeSnapshot".into(),
        };
        m.provisioned(&labels, 0.3);
        m.provision_failed(&labels);
        m.deleted("fast", 0.02);
        m.delete_failed("fast");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            r#"controller_persistentvolumeclaim_provision_total{class="fast",source="VolumeSnapshot"} 1"#,
            r#"controller_persistentvolumeclaim_provision_failed_total{class="fast",source="VolumeSnapshot"} 1"#,
            r#"controller_persistentvolumeclaim_provision_duration_seconds_count{class="fast",source="VolumeSnapshot"} 1"#,
            r#"controller_persistentvolumeclaim_provision_duration_seconds_bucket{le="0.5",class="fast",source="VolumeSnapshot"} 1"#,
            r#"controller_persistentvolume_delete_total{class="fast"} 1"#,
            r#"controller_persistentvolume_delete_failed_total{class="fast"} 1"#,
            r#"controller_persistentvolume_delete_duration_seconds_count{class="fast"} 1"#,
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
    }
}
