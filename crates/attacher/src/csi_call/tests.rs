//! The CSI calls against csi-mock over a real Unix socket: requests built by the planner reach
//! the driver intact, and every outcome maps to what upstream saves.

use std::path::Path;
use std::time::Duration;

use csi::{CsiClient, CsiEndpoint, CsiMetrics};
use csi_mock::fault::CodeSpec;
use csi_mock::{Fault, Method, MockConfig, MockDriver, MockServer};
use k8s_openapi::api::core::v1::{CSIPersistentVolumeSource, PersistentVolumeSpec};
use prometheus_client::registry::Registry;

use super::*;
use crate::list_sync::list_published;
use crate::request::{self, DriverInfo};

fn client(path: &Path, timeout: Duration) -> CsiClient {
    let mut registry = Registry::default();
    CsiClient::connect(
        CsiEndpoint::parse(&format!("unix://{}", path.display())).unwrap(),
        timeout,
        CsiMetrics::new(&mut registry),
    )
    .unwrap()
}

fn code(name: &str) -> Fault {
    Fault::error(CodeSpec::Name(name.into()).to_code().unwrap(), "injected")
}

struct Setup {
    _dir: tempfile::TempDir,
    driver: MockDriver,
    server: Option<MockServer>,
    csi: CsiClient,
    volume_id: String,
}

async fn setup(timeout: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let driver = MockDriver::new(MockConfig::default());
    let server = MockServer::start(&format!("unix://{}", sock.display()), driver.clone())
        .await
        .unwrap();
    let csi = client(&sock, timeout);
    let volume_id = csi_mock::create_volume(&csi, "pvc-1").await;
    Setup {
        _dir: dir,
        driver,
        server: Some(server),
        csi,
        volume_id,
    }
}

fn driver_info() -> DriverInfo {
    DriverInfo {
        name: "mock".into(),
        finalizer: "external-attacher/mock".into(),
        publish_unpublish: true,
        publish_readonly: true,
        single_node_multi_writer: false,
        list_published_nodes: true,
        default_fstype: String::new(),
    }
}

fn spec(volume_id: &str) -> PersistentVolumeSpec {
    PersistentVolumeSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        csi: Some(CSIPersistentVolumeSource {
            driver: "mock".into(),
            volume_handle: volume_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_then_unpublish_round_trip() {
    let s = setup(Duration::from_secs(5)).await;
    let pv = spec(&s.volume_id);
    let source = request::csi_source(&pv).unwrap();
    let req = request::publish_request(source, &driver_info(), "node-1".into(), Default::default())
        .unwrap();
    let metadata = publish(&s.csi, req.clone()).await.unwrap();
    assert!(!metadata.is_empty(), "the mock returns a publish context");
    let vol = s.driver.state().volumes[&s.volume_id].clone();
    assert!(vol.publications.contains_key("node-1"));
    // Idempotent, as a retry after a failed status write needs.
    assert_eq!(publish(&s.csi, req).await.unwrap(), metadata);

    let list = list_published(&s.csi, 1).await.unwrap();
    assert!(list[&s.volume_id].contains("node-1"));

    let un = request::unpublish_request(source, "node-1".into(), Default::default());
    assert_eq!(unpublish(&s.csi, un, false).await, Ok(Unpublished::Ok));
    assert!(
        s.driver.state().volumes[&s.volume_id]
            .publications
            .is_empty()
    );
    s.server.unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_map_to_upstream_messages_and_codes() {
    let s = setup(Duration::from_secs(5)).await;
    let pv = spec(&s.volume_id);
    let source = request::csi_source(&pv).unwrap();
    let req = request::publish_request(source, &driver_info(), "node-1".into(), Default::default())
        .unwrap();

    // Final and in-flight codes alike are reported (and retried by the caller).
    for (name, num, label) in [
        ("INTERNAL", 13, "Internal"),
        ("RESOURCE_EXHAUSTED", 8, "ResourceExhausted"),
        ("NOT_FOUND", 5, "NotFound"),
    ] {
        s.driver
            .inject(Method::ControllerPublishVolume, code(name).once());
        let e = publish(&s.csi, req.clone()).await.unwrap_err();
        assert_eq!(
            e.message,
            format!("rpc error: code = {label} desc = injected")
        );
        assert_eq!(e.code, Some(num));
    }
    // After the faults, the same request succeeds.
    assert!(publish(&s.csi, req).await.is_ok());
}

#[tokio::test]
async fn a_hung_driver_is_a_deadline_exceeded() {
    let s = setup(Duration::from_millis(300)).await;
    let pv = spec(&s.volume_id);
    let source = request::csi_source(&pv).unwrap();
    let req = request::publish_request(source, &driver_info(), "node-1".into(), Default::default())
        .unwrap();
    s.driver
        .inject(Method::ControllerPublishVolume, Fault::hang().once());
    let e = publish(&s.csi, req).await.unwrap_err();
    assert_eq!(
        e,
        CallError {
            message: "rpc error: code = DeadlineExceeded desc = context deadline exceeded".into(),
            code: Some(4),
            not_found: false,
        }
    );
}

#[tokio::test]
async fn unpublish_not_found_counts_as_detached_only_for_a_deleted_node() {
    let s = setup(Duration::from_secs(5)).await;
    let pv = spec(&s.volume_id);
    let source = request::csi_source(&pv).unwrap();
    let un = request::unpublish_request(source, "node-gone".into(), Default::default());

    s.driver
        .inject(Method::ControllerUnpublishVolume, code("NOT_FOUND").once());
    let e = unpublish(&s.csi, un.clone(), false).await.unwrap_err();
    assert!(
        e.not_found,
        "upstream retries NotFound while the node exists"
    );

    s.driver
        .inject(Method::ControllerUnpublishVolume, code("NOT_FOUND").once());
    assert_eq!(
        unpublish(&s.csi, un.clone(), true).await,
        Ok(Unpublished::NodeGone)
    );

    s.driver.inject(
        Method::ControllerUnpublishVolume,
        code("UNAVAILABLE").once(),
    );
    let e = unpublish(&s.csi, un, true).await.unwrap_err();
    assert_eq!(
        e.code,
        Some(14),
        "other errors of a deleted node are still retried"
    );
    assert_eq!(s.driver.calls(Method::ControllerUnpublishVolume), 3);
}
