//! Sockets and the state file across server restarts.

use csi::v1 as pb;
use csi::v1::controller_client::ControllerClient;
use csi_mock::{MockConfig, MockDriver, MockServer};

use crate::common::{GIB, connect, create_req, publish_req};

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let config = MockConfig {
        state_file: Some(dir.path().join("state.json")),
        ..MockConfig::default()
    };

    let first = MockServer::start(&endpoint, MockDriver::new(config.clone()))
        .await
        .unwrap();
    let mut c = ControllerClient::new(connect(first.endpoint()).await);
    let volume = c
        .create_volume(create_req("pvc-1", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    c.controller_publish_volume(pb::ControllerPublishVolumeRequest {
        readonly: true,
        ..publish_req(&volume.volume_id, "node-a")
    })
    .await
    .unwrap();
    let snapshot = c
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: volume.volume_id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    drop(c);
    first.shutdown().await.unwrap();
    assert!(!socket.exists(), "shutdown removes the socket");

    let driver = MockDriver::new(config);
    let state = driver.state();
    let restored = &state.volumes[&volume.volume_id];
    assert_eq!(restored.name, "pvc-1");
    assert!(restored.publications["node-a"].readonly);
    assert!(state.snapshots.contains_key(&snapshot.snapshot_id));

    let second = MockServer::start(&endpoint, driver.clone()).await.unwrap();
    let mut c = ControllerClient::new(connect(second.endpoint()).await);
    // Idempotency holds across the restart: the same name gives the same volume.
    let again = c
        .create_volume(create_req("pvc-1", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, volume.volume_id);
    let listed = c
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    // New ids continue after the old ones.
    let other = c
        .create_volume(create_req("pvc-2", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(other.volume_id > snapshot.snapshot_id.replace("snap-", "vol-"));
    drop(c);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nested/csi.sock");
    // A socket left behind by a crashed process: bound, then the listener dropped.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    // A bare path is accepted too.
    let server = MockServer::start(
        socket.to_str().unwrap(),
        MockDriver::new(MockConfig::default()),
    )
    .await
    .unwrap();
    assert_eq!(server.endpoint(), format!("unix://{}", socket.display()));
    let mut c = ControllerClient::new(connect(server.endpoint()).await);
    c.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap();
    drop(c);
    server.shutdown().await.unwrap();
    assert!(!socket.exists());
}

#[tokio::test]
async fn tcp_endpoint_reports_the_bound_port() {
    let server = MockServer::start("tcp://127.0.0.1:0", MockDriver::new(MockConfig::default()))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(server.endpoint(), format!("tcp://{addr}"));
    let mut c = ControllerClient::new(connect(server.endpoint()).await);
    let caps = c
        .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 15);
    drop(c);
    server.shutdown().await.unwrap();
}
