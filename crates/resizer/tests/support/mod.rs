//! The harness of the resizer's component tests: csi-mock with one volume, the fake API server
//! with a Bound claim and its PV, and a running resizer.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use controller_kit::testing::FakeApiServer;
use controller_kit::{Backoff, ControllerContext, Informers, Metrics};
use csi_mock::{Method, MockConfig, MockDriver};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Event, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use resizer::constants::*;
use tokio_util::sync::CancellationToken;

pub const NS: &str = "ns";

pub struct Harness {
    pub api: FakeApiServer,
    pub metrics: Metrics,
    pub driver: MockDriver,
    pub name: String,
    pub token: CancellationToken,
    _mock: csi_mock::TestDriver,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Harness {
    /// csi-mock (`configure` adjusts it) with a 1 GiB volume `vol`, the fake API server with a
    /// claim `c` bound to PV `pv` of that volume, asking for `request`, and the resizer, whose
    /// slow retry lasts `retry_max`. `seed` changes the objects before the informers start.
    pub async fn start(
        configure: impl FnOnce(&mut MockConfig),
        request: &str,
        retry_max: Duration,
        seed: impl FnOnce(&mut PersistentVolumeClaim, &mut PersistentVolume),
    ) -> Self {
        Self::start_with(
            configure,
            request,
            retry_max,
            seed,
            resizer::ResizerConfig::default(),
            |_| {},
        )
        .await
    }

    /// [`Harness::start`] with the resizer's `config`, and `setup` adding objects to the API
    /// server before the informers start.
    pub async fn start_with(
        configure: impl FnOnce(&mut MockConfig),
        request: &str,
        retry_max: Duration,
        seed: impl FnOnce(&mut PersistentVolumeClaim, &mut PersistentVolume),
        resizer_config: resizer::ResizerConfig,
        setup: impl FnOnce(&FakeApiServer),
    ) -> Self {
        let mut config = MockConfig::default();
        configure(&mut config);
        let mock = csi_mock::TestDriver::start(config).await;
        let (csi, discovery, driver, name) = (
            mock.client.clone(),
            mock.discovery.clone(),
            mock.driver.clone(),
            mock.name.clone(),
        );
        let handle = csi_mock::create_volume(&csi, "vol").await;

        let api = FakeApiServer::start().await;
        let mut pvc = claim(request);
        let mut pv = volume(&name, &handle);
        seed(&mut pvc, &mut pv);
        setup(&api);
        let pvc = api.insert(&pvc);
        pv.spec.as_mut().unwrap().claim_ref.as_mut().unwrap().uid = pvc.metadata.uid.clone();
        api.insert(&pv);

        let metrics = Metrics::default();
        let ctx = ControllerContext {
            client: api.client(),
            metrics: metrics.clone(),
            backoff: Backoff {
                start: Duration::from_millis(100),
                max: retry_max,
            },
            workers: 2,
            identity: "test-0".into(),
            namespace: "kube-system".into(),
        };
        let mut informers = Informers::new(api.client());
        let controller = resizer::build(
            ctx,
            &csi::Driver {
                client: csi.clone(),
                discovery,
            },
            resizer_config,
            &mut informers,
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
            name,
            token,
            _mock: mock,
        }
    }

    pub fn claim(&self) -> PersistentVolumeClaim {
        self.api.get(Some(NS), "c").unwrap()
    }

    pub fn pv(&self) -> PersistentVolume {
        self.api.get(None, "pv").unwrap()
    }

    /// The claim's `allocatedResourceStatuses.storage`.
    pub fn resize_status(&self) -> Option<String> {
        self.claim()
            .status?
            .allocated_resource_statuses?
            .get(STORAGE)
            .cloned()
    }

    pub fn conditions(&self) -> Vec<(String, Option<String>)> {
        self.claim()
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.reason))
            .collect()
    }

    pub fn capacity(&self) -> String {
        self.claim().status.unwrap().capacity.unwrap()[STORAGE]
            .0
            .clone()
    }

    /// Events as "reason/action: message", oldest first.
    pub fn events(&self) -> Vec<String> {
        self.api
            .list::<Event>()
            .into_iter()
            .map(|e| {
                format!(
                    "{}/{}: {}",
                    e.reason.unwrap_or_default(),
                    e.action.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect()
    }

    pub fn has_event(&self, prefix: &str) -> bool {
        self.events().iter().any(|e| e.starts_with(prefix))
    }

    pub fn set_request(&self, size: &str) {
        let mut c = self.claim();
        c.spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests = Some(BTreeMap::from([(STORAGE.into(), Quantity(size.into()))]));
        self.api.insert(&c);
    }

    pub fn expand_calls(&self) -> u64 {
        self.driver.calls(Method::ControllerExpandVolume)
    }

    /// Writes whose path contains `path`, as "METHOD path".
    pub fn writes(&self, path: &str) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| !r.is_read() && r.path.contains(path) && r.status < 300)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn claim(request: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("c".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            volume_name: Some("pv".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(STORAGE.into(), Quantity(request.into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            capacity: Some(BTreeMap::from([(STORAGE.into(), Quantity("1Gi".into()))])),
            ..Default::default()
        }),
    }
}

pub fn volume(driver: &str, handle: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pv".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            capacity: Some(BTreeMap::from([(STORAGE.into(), Quantity("1Gi".into()))])),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: handle.into(),
                ..Default::default()
            }),
            claim_ref: Some(ObjectReference {
                namespace: Some(NS.into()),
                name: Some("c".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}
