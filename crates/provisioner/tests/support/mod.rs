//! The harness of the act-layer component tests: csi-mock, the fake API server and a running
//! provisioner, and builders of the objects the tests seed.

use std::collections::BTreeMap;
use std::time::Duration;

use controller_kit::testing::FakeApiServer;
use controller_kit::{Backoff, ControllerContext, Informers, Metrics};
use csi::CsiClient;
use csi_mock::{MockConfig, MockDriver};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ConfigMap, Event, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, PersistentVolumeStatus,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use provisioner::constants::*;
use provisioner::{ProvisionerConfig, journal};
use tokio_util::sync::CancellationToken;

pub const NS: &str = "ns";
/// The manager's namespace, where the journal lives.
pub const HOME: &str = "kube-system";

/// The fake API server, csi-mock and a running provisioner.
pub struct Harness {
    pub api: FakeApiServer,
    pub metrics: Metrics,
    pub driver: MockDriver,
    pub csi: CsiClient,
    pub name: String,
    pub token: CancellationToken,
    _mock: csi_mock::TestDriver,
}

impl Harness {
    /// Starts csi-mock, the fake API server (`seed` gets it and the driver's name before the
    /// informers start, so what it adds is in their first list) and the provisioner.
    pub async fn start(seed: impl FnOnce(&FakeApiServer, &str)) -> Self {
        Self::start_with(ProvisionerConfig::default(), Duration::from_secs(1), seed).await
    }

    /// [`Harness::start`] with `config` and `retry_max` (`--retry-interval-max`, which also
    /// holds back a claim after an infeasible error).
    pub async fn start_with(
        config: ProvisionerConfig,
        retry_max: Duration,
        seed: impl FnOnce(&FakeApiServer, &str),
    ) -> Self {
        let mock = csi_mock::TestDriver::start(MockConfig::default()).await;
        let (csi, discovery, driver, name) = (
            mock.client.clone(),
            mock.discovery.clone(),
            mock.driver.clone(),
            mock.name.clone(),
        );
        let api = FakeApiServer::start().await;
        seed(&api, &name);

        let metrics = Metrics::default();
        let ctx = ControllerContext {
            client: api.client(),
            metrics: metrics.clone(),
            backoff: Backoff {
                start: Duration::from_millis(100),
                max: retry_max,
            },
            workers: 4,
            identity: "test-0".into(),
            namespace: HOME.into(),
        };
        let mut informers = Informers::new(api.client());
        let controller = provisioner::build(
            ctx,
            &csi::Driver {
                client: csi.clone(),
                discovery,
            },
            config,
            &mut informers,
            None,
            None,
        );
        let token = CancellationToken::new();
        let running = informers.start(token.clone());
        assert!(running.wait_synced().await, "informers synced");
        let run = controller.run(token.clone());
        tokio::spawn(async move {
            let _informers = running;
            run.await;
        });
        Self {
            api,
            metrics,
            driver,
            csi,
            name,
            token,
            _mock: mock,
        }
    }

    /// Write requests (not GET, LIST or WATCH) whose path contains `path`, as "METHOD path".
    pub fn writes(&self, path: &str) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| !r.is_read() && r.path.contains(path))
            .map(|r| format!("{} {} {}", r.method, r.path, r.status))
            .collect()
    }

    pub fn events(&self, reason: &str) -> Vec<Event> {
        self.api
            .list::<Event>()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// The journal's entries (volume names).
    pub fn journal(&self) -> Vec<String> {
        self.api
            .get::<ConfigMap>(Some(HOME), &journal::object_name(&self.name))
            .and_then(|c| c.data)
            .map(|d| d.into_keys().collect())
            .unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Waits up to 20 s for `check`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        ..ObjectMeta::default()
    }
}

/// A Released PV of `driver` for `volume_id`, with the Delete policy and our finalizer.
pub fn released_pv(name: &str, driver: &str, volume_id: &str) -> PersistentVolume {
    let mut m = meta(name, None);
    m.finalizers = Some(vec![FINALIZER_PV.into()]);
    m.annotations = Some(BTreeMap::from([(
        ANN_DYNAMICALLY_PROVISIONED.into(),
        driver.into(),
    )]));
    PersistentVolume {
        metadata: m,
        spec: Some(PersistentVolumeSpec {
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: volume_id.into(),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..Default::default()
        }),
    }
}

pub async fn create_volume(csi: &CsiClient, name: &str) -> String {
    csi_mock::create_volume(csi, name).await
}

pub fn class(name: &str, driver: &str) -> StorageClass {
    StorageClass {
        metadata: meta(name, None),
        provisioner: driver.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    }
}

pub fn claim(name: &str, class: &str, driver: &str) -> PersistentVolumeClaim {
    let mut m = meta(name, Some(NS));
    m.annotations = Some(BTreeMap::from([(
        ANN_STORAGE_PROVISIONER.into(),
        driver.into(),
    )]));
    PersistentVolumeClaim {
        metadata: m,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(Default::default()),
    }
}

/// The journal's patches and creates, in order, each as the entries it sets (`+`) or removes
/// (`-`).
pub fn journal_writes(h: &Harness) -> Vec<String> {
    h.api
        .requests()
        .into_iter()
        .filter(|r| !r.is_read() && r.path.contains("/configmaps") && r.status < 300)
        .map(|r| {
            let data = r
                .body
                .as_ref()
                .and_then(|b| b.get("data"))
                .and_then(|d| d.as_object())
                .cloned()
                .unwrap_or_default();
            data.iter()
                .map(|(k, v)| format!("{}{k}", if v.is_null() { "-" } else { "+" }))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A claim being deleted with the cloning-protection finalizer, bound to `volume`, with no
/// provisioner annotation (a claim bound to a statically created PV).
pub fn deleted_source(name: &str, volume: &str) -> PersistentVolumeClaim {
    let mut m = meta(name, Some(NS));
    m.finalizers = Some(vec![FINALIZER_CLONE_PROTECTION.into()]);
    m.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    PersistentVolumeClaim {
        metadata: m,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            volume_name: Some(volume.into()),
            ..Default::default()
        }),
        status: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        }),
    }
}

/// A Bound, statically created PV of `driver` (no provisioner annotation).
pub fn static_pv(name: &str, driver: &str) -> PersistentVolume {
    let mut pv = released_pv(name, driver, &format!("static-{name}"));
    pv.metadata.annotations = None;
    pv.metadata.finalizers = None;
    pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
    pv.status.as_mut().unwrap().phase = Some("Bound".into());
    pv
}

/// The claim's events, oldest first, as "Type Reason: message".
pub fn claim_events(h: &Harness, claim: &str) -> Vec<String> {
    let mut events: Vec<Event> = h
        .api
        .list::<Event>()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(claim))
        .collect();
    events.sort_by_key(|e| {
        e.metadata
            .resource_version
            .clone()
            .unwrap_or_default()
            .parse::<u64>()
            .unwrap_or(0)
    });
    events
        .into_iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

pub fn class_with_secret(name: &str, driver: &str, secret: &str) -> StorageClass {
    let mut c = class(name, driver);
    c.parameters = Some(BTreeMap::from([
        (
            "csi.storage.k8s.io/provisioner-secret-name".into(),
            secret.into(),
        ),
        (
            "csi.storage.k8s.io/provisioner-secret-namespace".into(),
            NS.into(),
        ),
    ]));
    c
}
