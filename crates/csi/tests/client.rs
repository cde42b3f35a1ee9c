//! The CSI client against csi-mock over a real Unix socket: every Controller RPC, discovery,
//! metrics, per-code classification, timeouts, waiting for an absent driver and reconnecting after
//! the driver restarts.

use std::path::Path;
use std::time::{Duration, Instant};

use csi::v1::controller_service_capability::rpc::Type as Cap;
use csi::v1::{self, volume_capability};
use csi::{CsiClient, CsiEndpoint, CsiError, CsiMetrics};
use csi_mock::{Fault, Method, MockConfig, MockDriver, MockServer};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn endpoint(path: &Path) -> String {
    format!("unix://{}", path.display())
}

fn client(path: &Path, timeout: Duration) -> (CsiClient, Registry) {
    let mut registry = Registry::default();
    let metrics = CsiMetrics::new(&mut registry);
    let client = CsiClient::connect(
        CsiEndpoint::parse(&endpoint(path)).unwrap(),
        timeout,
        metrics,
    )
    .unwrap();
    (client, registry)
}

async fn serve(path: &Path, driver: &MockDriver) -> MockServer {
    MockServer::start(&endpoint(path), driver.clone())
        .await
        .unwrap()
}

fn mount_rwo() -> v1::VolumeCapability {
    v1::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

const GIB: i64 = 1 << 30;

#[tokio::test]
async fn every_controller_rpc_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let driver = MockDriver::new(MockConfig::default());
    let server = serve(&sock, &driver).await;
    let (csi, registry) = client(&sock, Duration::from_secs(5));

    let discovery = csi.discover().await.unwrap();
    assert_eq!(discovery.driver_name, driver.config().driver_name);
    for cap in [
        Cap::CreateDeleteVolume,
        Cap::PublishUnpublishVolume,
        Cap::CreateDeleteSnapshot,
        Cap::ExpandVolume,
    ] {
        assert!(discovery.has_controller(cap), "{cap:?}");
    }
    assert!(!discovery.group_controller.is_empty());

    let created = csi
        .create_volume(v1::CreateVolumeRequest {
            name: "pvc-1".into(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: GIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_rwo()],
            parameters: [("type".to_string(), "fast".to_string())].into(),
            secrets: [("password".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .volume
        .unwrap();
    assert!(created.capacity_bytes >= GIB);
    let id = created.volume_id.clone();
    assert_eq!(driver.state().volume_by_name("pvc-1").unwrap().id, id);

    let validated = csi
        .validate_volume_capabilities(v1::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![mount_rwo()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(validated.confirmed.is_some());

    let listed = csi
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.entries.len(), 1);
    csi.get_capacity(v1::GetCapacityRequest::default())
        .await
        .unwrap();

    csi.controller_publish_volume(v1::ControllerPublishVolumeRequest {
        volume_id: id.clone(),
        node_id: "node-1".into(),
        volume_capability: Some(mount_rwo()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(driver.state().publications().len(), 1);
    csi.controller_unpublish_volume(v1::ControllerUnpublishVolumeRequest {
        volume_id: id.clone(),
        node_id: "node-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(driver.state().publications().is_empty());

    let expanded = csi
        .controller_expand_volume(v1::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 2 * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_rwo()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(expanded.capacity_bytes >= 2 * GIB);
    let got = csi
        .controller_get_volume(v1::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.volume.unwrap().volume_id, id);
    csi.controller_modify_volume(v1::ControllerModifyVolumeRequest {
        volume_id: id.clone(),
        mutable_parameters: [("iops".to_string(), "5000".to_string())].into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let snapshot = csi
        .create_snapshot(v1::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .snapshot
        .unwrap();
    let snaps = csi
        .list_snapshots(v1::ListSnapshotsRequest::default())
        .await
        .unwrap();
    assert_eq!(snaps.entries.len(), 1);
    csi.delete_snapshot(v1::DeleteSnapshotRequest {
        snapshot_id: snapshot.snapshot_id,
        ..Default::default()
    })
    .await
    .unwrap();

    let group = csi
        .create_volume_group_snapshot(v1::CreateVolumeGroupSnapshotRequest {
            name: "group-1".into(),
            source_volume_ids: vec![id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .group_snapshot
        .unwrap();
    csi.get_volume_group_snapshot(v1::GetVolumeGroupSnapshotRequest {
        group_snapshot_id: group.group_snapshot_id.clone(),
        snapshot_ids: group
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    csi.delete_volume_group_snapshot(v1::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: group.group_snapshot_id,
        snapshot_ids: group
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();

    csi.delete_volume(v1::DeleteVolumeRequest {
        volume_id: id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(driver.state().volumes.is_empty());

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let name = driver.config().driver_name;
    assert!(text.contains(&format!(
        r#"csi_sidecar_operations_seconds_count{{driver_name="{name}",method_name="/csi.v1.Controller/CreateVolume",grpc_status_code="OK"}} 1"#
    )), "{text}");
    assert!(!text.contains("hunter2"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_grpc_code_is_classified_as_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let driver = MockDriver::new(MockConfig::default());
    let _server = serve(&sock, &driver).await;
    let (csi, registry) = client(&sock, Duration::from_secs(5));
    csi.discover().await.unwrap();

    let table = [
        (Code::Cancelled, false),
        (Code::DeadlineExceeded, false),
        (Code::Unavailable, false),
        (Code::ResourceExhausted, false),
        (Code::Aborted, false),
        (Code::Unknown, true),
        (Code::InvalidArgument, true),
        (Code::NotFound, true),
        (Code::AlreadyExists, true),
        (Code::PermissionDenied, true),
        (Code::FailedPrecondition, true),
        (Code::OutOfRange, true),
        (Code::Unimplemented, true),
        (Code::Internal, true),
        (Code::DataLoss, true),
        (Code::Unauthenticated, true),
    ];
    for (code, is_final) in table {
        driver.inject(Method::CreateVolume, Fault::error(code, "injected").once());
        let err = csi
            .create_volume(v1::CreateVolumeRequest {
                name: "pvc-x".into(),
                volume_capabilities: vec![mount_rwo()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.is_final(), is_final, "{code:?}");
    }
    // The fault is used up: the same request now succeeds.
    csi.create_volume(v1::CreateVolumeRequest {
        name: "pvc-x".into(),
        volume_capabilities: vec![mount_rwo()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"grpc_status_code="ResourceExhausted"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"grpc_status_code="Canceled"} 1"#), "{text}");
}

#[tokio::test]
async fn a_hanging_call_times_out_as_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let driver = MockDriver::new(MockConfig::default());
    let _server = serve(&sock, &driver).await;
    let (csi, _registry) = client(&sock, Duration::from_millis(300));
    csi.discover().await.unwrap();
    driver.inject(Method::DeleteVolume, Fault::hang().once());
    let started = Instant::now();
    let err = csi
        .delete_volume(v1::DeleteVolumeRequest {
            volume_id: "vol-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, CsiError::Timeout { .. }), "{err}");
    assert_eq!(err.code(), Some(Code::DeadlineExceeded));
    assert!(
        !err.is_final(),
        "a timed-out call may still be running on the driver"
    );
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // The driver, still up, answers the next call.
    csi.delete_volume(v1::DeleteVolumeRequest {
        volume_id: "vol-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn waits_for_an_absent_driver_and_reconnects_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let driver = MockDriver::new(MockConfig::default());
    let (csi, _registry) = client(&sock, Duration::from_secs(2));

    // No socket yet: the first call fails as in flight, and discovery waits.
    let err = csi.probe(v1::ProbeRequest {}).await.unwrap_err();
    assert!(!err.is_final(), "{err}");
    let shutdown = CancellationToken::new();
    let waiting = {
        let (csi, shutdown) = (csi.clone(), shutdown.clone());
        tokio::spawn(async move { csi.wait_for_driver(&shutdown).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished());
    let appeared = Instant::now();
    let server = serve(&sock, &driver).await;
    let discovery = waiting.await.unwrap().unwrap();
    assert!(
        appeared.elapsed() < Duration::from_secs(2),
        "ready {:?} after the driver appeared",
        appeared.elapsed()
    );
    assert_eq!(discovery.driver_name, driver.config().driver_name);

    // The driver restarts on the same socket: at most the calls during the outage fail, then the
    // same client works again without being rebuilt.
    server.shutdown().await.unwrap();
    assert!(csi.probe(v1::ProbeRequest {}).await.is_err());
    let _server = serve(&sock, &driver).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match csi.probe(v1::ProbeRequest {}).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(!e.is_final(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
    csi.discover().await.unwrap();
}
