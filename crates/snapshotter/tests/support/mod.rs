//! The harness of the snapshotter's component tests: csi-mock with one volume, the fake API
//! server seeded by the test, and the controllers built and run as the manager does.
#![allow(dead_code)]

use std::time::Duration;

use controller_kit::testing::FakeApiServer;
use controller_kit::{Backoff, ControllerContext, Informers, Metrics};
use csi_mock::{MockConfig, MockDriver};
use kube::api::ObjectMeta;
use snapshotter::types::*;
use tokio_util::sync::CancellationToken;

pub const NS: &str = "ns";

pub struct Harness {
    pub api: FakeApiServer,
    pub driver: MockDriver,
    pub name: String,
    /// The handle of csi-mock's volume `vol`.
    pub volume: String,
    pub token: CancellationToken,
    _mock: csi_mock::TestDriver,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Which halves run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halves {
    Common,
    Sidecar,
    Both,
}

impl Harness {
    /// csi-mock (`configure` adjusts it) with a volume `vol`; `seed` fills the fake API server
    /// (it gets the driver name and the volume handle) before the informers start.
    pub async fn start(
        configure: impl FnOnce(&mut MockConfig),
        halves: Halves,
        seed: impl FnOnce(&FakeApiServer, &str, &str),
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
        let volume = csi_mock::create_volume(&csi, "vol").await;
        let api = FakeApiServer::start().await;
        seed(&api, &name, &volume);

        let ctx = ControllerContext {
            client: api.client(),
            metrics: Metrics::default(),
            backoff: Backoff {
                start: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            workers: 2,
            identity: "test-0".into(),
            namespace: "kube-system".into(),
        };
        let mut informers = Informers::new(api.client());
        let mut controllers = Vec::new();
        if halves != Halves::Sidecar {
            controllers.push(snapshotter::build_common(
                ctx.clone(),
                snapshotter::CommonConfig::default(),
                &mut informers,
            ));
        }
        if halves != Halves::Common {
            let driver = csi::Driver {
                client: csi.clone(),
                discovery,
            };
            controllers.push(snapshotter::build_sidecar(
                ctx,
                &driver,
                snapshotter::SidecarConfig::default(),
                &mut informers,
            ));
        }
        let token = CancellationToken::new();
        let running = informers.start(token.clone());
        assert!(running.wait_synced().await, "informers synced");
        for c in controllers {
            let run = c.run(token.clone());
            tokio::spawn(run);
        }
        tokio::spawn(async move {
            let _informers = running;
            std::future::pending::<()>().await;
        });
        Self {
            api,
            driver,
            name,
            volume,
            token,
            _mock: mock,
        }
    }

    pub fn content(&self, name: &str) -> Option<VolumeSnapshotContent> {
        self.api.get(None, name)
    }

    pub fn snapshot(&self, name: &str) -> Option<VolumeSnapshot> {
        self.api.get(Some(NS), name)
    }

    /// Waits up to 10 s for `check`.
    pub async fn until<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        for _ in 0..200 {
            if let Some(v) = check(self) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

pub fn class(name: &str, driver: &str, params: &[(&str, &str)]) -> VolumeSnapshotClass {
    VolumeSnapshotClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        driver: driver.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        deletion_policy: DeletionPolicy::Delete,
    }
}

/// A dynamic content as the common controller makes it, bound to snapshot `snap` (UID `u-1`).
pub fn dynamic_content(driver: &str, volume: &str, class: &str) -> VolumeSnapshotContent {
    VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some("snapcontent-u-1".into()),
            finalizers: Some(vec![snapshotter::constants::FIN_CONTENT_BOUND.into()]),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            volume_snapshot_ref: k8s_openapi::api::core::v1::ObjectReference {
                name: Some("snap".into()),
                namespace: Some(NS.into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            deletion_policy: DeletionPolicy::Delete,
            driver: driver.into(),
            volume_snapshot_class_name: Some(class.into()),
            source: VolumeSnapshotContentSource {
                volume_handle: Some(volume.into()),
                snapshot_handle: None,
            },
            source_volume_mode: None,
        },
        status: None,
    }
}
