//! Component tests of the resizer's act layer: the real controller (informers, queue, workers)
//! against the fake API server of `controller-kit` and csi-mock on a Unix socket. They check the
//! writes and calls of each step, which the e2e suite sees only as an end state:
//! - an online expansion, with and without the node's part, and the pre-resize annotation's
//!   life;
//! - an infeasible size: its statuses, the slow retry, and recovery by a lowered request;
//! - a transient driver error, an in-use volume of an offline-only driver, a Secret that does
//!   not resolve: each a clear Event with its class, and no crash.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{Fault, Method};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, SecretReference, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use resizer::constants::*;
use tonic::Code;

use support::*;

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
            .any(|l| l == "csi_resizer_failures_total{class=\"ResizeInfeasible\"} 2"),
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

#[tokio::test]
async fn a_request_below_the_capacity_changes_nothing() {
    let h = Harness::start(|_| {}, "512Mi", Duration::from_secs(1), |_, _| {}).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        h.writes("/persistentvolume").is_empty(),
        "{:?}",
        h.writes("/")
    );
    assert_eq!(h.expand_calls(), 0);
}

/// A driver that expands on the node only (upstream's trivial resizer): no ControllerExpandVolume,
/// the PV takes the requested size, and kubelet is handed the rest.
#[tokio::test]
async fn a_node_only_driver_hands_every_expansion_to_kubelet() {
    let h = Harness::start(
        |c| {
            c.controller_capabilities
                .remove(&csi_mock::ControllerCapability::ExpandVolume);
            c.node_expand_volume = true;
        },
        "2Gi",
        Duration::from_secs(1),
        |_, _| {},
    )
    .await;
    eventually("NodeResizePending", || {
        h.resize_status().as_deref() == Some(NODE_RESIZE_PENDING)
    })
    .await;
    assert_eq!(h.expand_calls(), 0);
    assert_eq!(
        h.pv().spec.unwrap().capacity.unwrap()[STORAGE].0,
        "2Gi",
        "the requested size, as the claim wrote it"
    );
    assert_eq!(
        h.conditions(),
        vec![
            (COND_RESIZING.to_string(), None),
            (COND_FS_RESIZE_PENDING.to_string(), None)
        ]
    );
}
