//! Component tests of the resizer's act layer: the real controller (informers, queue, workers)
//! against the fake API server of `controller-kit` and csi-mock on a Unix socket. They check the
//! writes and calls of each step, which the e2e suite sees only as an end state:
//! - an online expansion, with and without the node's part, and the pre-resize annotation's
//!   life;
//! - an infeasible size: its statuses, the slow retry, and recovery by a lowered request;
//! - a transient driver error, an in-use volume of an offline-only driver, a Secret that does
//!   not resolve: each a clear Event with its class, and no crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controller_kit::testing::FakeApiServer;
use controller_kit::{Backoff, ControllerContext, Informers, Metrics};
use csi::v1::{self, volume_capability};
use csi::{CsiClient, CsiEndpoint, CsiMetrics};
use csi_mock::{Fault, Method, MockConfig, MockDriver, MockServer};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Event, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeClaimVolumeSource,
    PersistentVolumeSpec, Pod, PodSpec, SecretReference, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use resizer::constants::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const NS: &str = "ns";

struct Harness {
    api: FakeApiServer,
    metrics: Metrics,
    driver: MockDriver,
    name: String,
    token: CancellationToken,
    _server: MockServer,
    _dir: tempfile::TempDir,
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
    async fn start(
        configure: impl FnOnce(&mut MockConfig),
        request: &str,
        retry_max: Duration,
        seed: impl FnOnce(&mut PersistentVolumeClaim, &mut PersistentVolume),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}", dir.path().join("csi.sock").display());
        let mut config = MockConfig::default();
        configure(&mut config);
        let driver = MockDriver::new(config);
        let name = driver.config().driver_name;
        let server = MockServer::start(&endpoint, driver.clone()).await.unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let csi = CsiClient::connect(
            CsiEndpoint::parse(&endpoint).unwrap(),
            Duration::from_secs(5),
            CsiMetrics::new(&mut registry),
        )
        .unwrap();
        let discovery = Arc::new(csi.discover().await.unwrap());
        let handle = create_volume(&csi).await;

        let api = FakeApiServer::start().await;
        let mut pvc = claim(request);
        let mut pv = volume(&name, &handle);
        seed(&mut pvc, &mut pv);
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
            resizer::ResizerConfig::default(),
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
            _server: server,
            _dir: dir,
        }
    }

    fn claim(&self) -> PersistentVolumeClaim {
        self.api.get(Some(NS), "c").unwrap()
    }

    fn pv(&self) -> PersistentVolume {
        self.api.get(None, "pv").unwrap()
    }

    /// The claim's `allocatedResourceStatuses.storage`.
    fn resize_status(&self) -> Option<String> {
        self.claim()
            .status?
            .allocated_resource_statuses?
            .get(STORAGE)
            .cloned()
    }

    fn conditions(&self) -> Vec<(String, Option<String>)> {
        self.claim()
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.reason))
            .collect()
    }

    fn capacity(&self) -> String {
        self.claim().status.unwrap().capacity.unwrap()[STORAGE]
            .0
            .clone()
    }

    /// Events as "reason/action: message", oldest first.
    fn events(&self) -> Vec<String> {
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

    fn has_event(&self, prefix: &str) -> bool {
        self.events().iter().any(|e| e.starts_with(prefix))
    }

    fn set_request(&self, size: &str) {
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

    fn expand_calls(&self) -> u64 {
        self.driver.calls(Method::ControllerExpandVolume)
    }

    /// Writes whose path contains `path`, as "METHOD path".
    fn writes(&self, path: &str) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| !r.is_read() && r.path.contains(path) && r.status < 300)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn create_volume(csi: &CsiClient) -> String {
    csi.create_volume(v1::CreateVolumeRequest {
        name: "vol".into(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![v1::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }],
        ..Default::default()
    })
    .await
    .unwrap()
    .volume
    .unwrap()
    .volume_id
}

fn claim(request: &str) -> PersistentVolumeClaim {
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

fn volume(driver: &str, handle: &str) -> PersistentVolume {
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

#[tokio::test]
async fn an_online_expansion_marks_the_claim_then_the_pv_then_finishes() {
    let h = Harness::start(|_| {}, "2Gi", Duration::from_secs(1), |_, _| {}).await;
    eventually("the expansion to finish", || h.capacity() == "2Gi").await;
    assert_eq!(
        h.writes("/persistentvolume"),
        vec![
            "PATCH /api/v1/namespaces/ns/persistentvolumeclaims/c/status",
            "PATCH /api/v1/persistentvolumes/pv",
            "PATCH /api/v1/namespaces/ns/persistentvolumeclaims/c/status",
        ],
        "in progress, then the PV, then the claim, once each"
    );
    let c = h.claim();
    let status = c.status.clone().unwrap();
    assert_eq!(status.allocated_resources.unwrap()[STORAGE].0, "2Gi");
    assert_eq!(status.allocated_resource_statuses, None);
    assert!(h.conditions().is_empty(), "{:?}", h.conditions());
    assert_eq!(
        controller_kit::meta::annotation(&c.metadata, ANN_NODE_EXPANSION_NOT_REQUIRED),
        Some("true")
    );
    let pv = h.pv();
    assert_eq!(pv.spec.unwrap().capacity.unwrap()[STORAGE].0, "2Gi");
    assert!(controller_kit::meta::annotation(&pv.metadata, ANN_PRE_RESIZE_CAPACITY).is_none());
    assert_eq!(h.expand_calls(), 1);
    let volume = h.driver.state().volumes.into_values().next().unwrap();
    assert_eq!(volume.capacity_bytes, 2 << 30);
    eventually("the events", || {
        h.has_event("Resizing/Resize: External resizer is resizing volume pv")
            && h.has_event("VolumeResizeSuccessful/Resize: Resize volume succeeded")
    })
    .await;
}

#[tokio::test]
async fn the_node_part_is_handed_to_kubelet_and_the_pre_resize_annotation_goes_after() {
    let h = Harness::start(
        |c| c.node_expansion_required = true,
        "2Gi",
        Duration::from_secs(1),
        |_, _| {},
    )
    .await;
    eventually("NodeResizePending", || {
        h.resize_status().as_deref() == Some(NODE_RESIZE_PENDING)
    })
    .await;
    assert_eq!(
        h.conditions(),
        vec![
            (COND_RESIZING.to_string(), None),
            (COND_FS_RESIZE_PENDING.to_string(), None)
        ],
        "Resizing stays beside FileSystemResizePending, as upstream's"
    );
    assert_eq!(h.capacity(), "1Gi", "kubelet's part is not done");
    let pv = h.pv();
    assert_eq!(
        controller_kit::meta::annotation(&pv.metadata, ANN_PRE_RESIZE_CAPACITY),
        Some("1Gi")
    );
    eventually("FileSystemResizeRequired", || {
        h.has_event("FileSystemResizeRequired/Resize: Require file system resize of volume on node")
    })
    .await;
    // Kubelet's part: NodeExpandVolume done, the claim's capacity and status updated.
    let mut c = h.claim();
    let s = c.status.as_mut().unwrap();
    s.capacity = Some(BTreeMap::from([(STORAGE.into(), Quantity("2Gi".into()))]));
    s.allocated_resource_statuses = None;
    s.conditions = None;
    h.api.insert(&c);
    eventually("the pre-resize annotation to go", || {
        controller_kit::meta::annotation(&h.pv().metadata, ANN_PRE_RESIZE_CAPACITY).is_none()
    })
    .await;
    assert_eq!(h.expand_calls(), 1, "no second expansion");
}

#[tokio::test]
async fn an_infeasible_size_is_marked_retried_slowly_and_recovers_when_lowered() {
    let h = Harness::start(
        |c| c.max_volume_size = Some(3 << 30),
        "10Gi",
        Duration::from_secs(60),
        |_, _| {},
    )
    .await;
    eventually("ControllerResizeInfeasible", || {
        h.resize_status().as_deref() == Some(CONTROLLER_RESIZE_INFEASIBLE)
    })
    .await;
    assert_eq!(
        h.conditions(),
        vec![
            (COND_RESIZING.to_string(), None),
            (
                COND_CONTROLLER_RESIZE_ERROR.to_string(),
                Some("ResizeInfeasible".to_string())
            )
        ]
    );
    let c = h.claim();
    let message = c.status.unwrap().conditions.unwrap()[1]
        .message
        .clone()
        .unwrap();
    assert!(
        message.starts_with("failed to expand pvc with rpc error: code = OutOfRange"),
        "{message}"
    );
    eventually("the failure event", || {
        h.has_event("VolumeResizeFailed/ResizeInfeasible: resize volume \"pv\" by resizer")
    })
    .await;
    // As upstream, the pass that first sees ControllerResizeInfeasible tries once more (the slow
    // set is filled from the status); from then on the same target is held for
    // --retry-interval-max (a minute here), not retried with the fast backoff.
    eventually("the second attempt", || h.expand_calls() == 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.expand_calls(), 2, "no retry within the slow period");
    // The user lowers the request: the new size is tried at once, and succeeds.
    h.set_request("2Gi");
    eventually("the lowered expansion to finish", || h.capacity() == "2Gi").await;
    assert_eq!(h.expand_calls(), 3);
    assert_eq!(h.resize_status(), None);
    assert!(h.conditions().is_empty(), "{:?}", h.conditions());
    assert_eq!(
        h.claim().status.unwrap().allocated_resources.unwrap()[STORAGE].0,
        "2Gi"
    );
    assert!(
        h.metrics
            .encode()
            .lines()
            .any(|l| l == "csi_resizer_expansion_failures_total{class=\"ResizeInfeasible\"} 2"),
        "{}",
        h.metrics.encode()
    );
}

#[tokio::test]
async fn a_transient_error_keeps_the_target_and_the_retry_finishes() {
    let h = Harness::start(|_| {}, "2Gi", Duration::from_secs(1), |_, _| {}).await;
    h.driver.inject(
        Method::ControllerExpandVolume,
        Fault::error(Code::Unavailable, "backend busy").once(),
    );
    eventually("the expansion to finish", || h.capacity() == "2Gi").await;
    assert_eq!(h.expand_calls(), 2);
    assert!(
        h.has_event("VolumeResizeFailed/ResizeTransientError: resize volume \"pv\" by resizer")
    );
    let failure = h
        .events()
        .into_iter()
        .find(|e| e.starts_with("VolumeResizeFailed"))
        .unwrap();
    assert!(
        failure.ends_with("failed: rpc error: code = Unavailable desc = backend busy"),
        "{failure}"
    );
}

fn pod_using(claim: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("user".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test]
async fn an_offline_only_driver_waits_while_the_volume_is_in_use() {
    let h = Harness::start(|_| {}, "2Gi", Duration::from_secs(1), |_, _| {}).await;
    h.api.insert(&pod_using("c"));
    h.driver.inject(
        Method::ControllerExpandVolume,
        Fault::error(Code::FailedPrecondition, "volume is published").once(),
    );
    eventually("the in-use event", || {
        h.has_event(&format!(
            "VolumeResizeFailed/ResizeVolumeInUse: Unable to expand ns/c because CSI driver {} only supports offline expansion and volume is currently in-use",
            h.name
        ))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.expand_calls(), 1, "not called while in use");
    assert_eq!(
        h.resize_status().as_deref(),
        Some(CONTROLLER_RESIZE_IN_PROGRESS),
        "FAILED_PRECONDITION is final but not infeasible"
    );
    h.api.remove::<Pod>(Some(NS), "user");
    eventually("the expansion to finish", || h.capacity() == "2Gi").await;
    assert_eq!(h.expand_calls(), 2);
}

#[tokio::test]
async fn a_missing_expand_secret_is_reported_without_calling_the_driver() {
    let h = Harness::start(
        |_| {},
        "2Gi",
        Duration::from_secs(1),
        |_, pv| {
            pv.spec
                .as_mut()
                .unwrap()
                .csi
                .as_mut()
                .unwrap()
                .controller_expand_secret_ref = Some(SecretReference {
                name: Some("gone".into()),
                namespace: Some(NS.into()),
            });
        },
    )
    .await;
    eventually("the secret event", || {
        h.has_event("VolumeResizeFailed/ResizeTransientError: resize volume \"pv\" by resizer")
    })
    .await;
    let failure = h
        .events()
        .into_iter()
        .find(|e| e.starts_with("VolumeResizeFailed"))
        .unwrap();
    assert!(
        failure.ends_with(
            "failed: error getting secret gone in namespace ns: secrets \"gone\" not found"
        ),
        "{failure}"
    );
    assert_eq!(h.expand_calls(), 0);
}

#[tokio::test]
async fn a_claim_of_another_driver_is_left_alone() {
    let h = Harness::start(
        |_| {},
        "2Gi",
        Duration::from_secs(1),
        |_, pv| {
            pv.spec.as_mut().unwrap().csi.as_mut().unwrap().driver = "other.example.com".into();
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        h.writes("/persistentvolume").is_empty(),
        "{:?}",
        h.writes("/")
    );
    assert_eq!(h.expand_calls(), 0);
}
