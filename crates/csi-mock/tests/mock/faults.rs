//! Fault injection seen from a gRPC client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csi::v1 as pb;
use csi_mock::{Fault, Method, MockConfig};
use tonic::Code;

use crate::common::{GIB, Harness, create_req};

#[tokio::test]
async fn unavailable_twice_then_success() {
    let h = Harness::start(MockConfig::default()).await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "backend down").times(2),
    );
    let mut c = h.controller();
    for _ in 0..2 {
        let err = c.create_volume(create_req("v", GIB)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "backend down");
    }
    assert!(
        h.driver.state().volumes.is_empty(),
        "faulted calls change nothing"
    );
    c.create_volume(create_req("v", GIB)).await.unwrap();
    assert_eq!(h.driver.calls(Method::CreateVolume), 3);
    assert!(h.driver.faults().is_empty(), "the rule is used up");
    // Other methods were never affected.
    c.list_volumes(pb::ListVolumesRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn latency_fault_delays_then_serves() {
    let h = Harness::start(MockConfig::default()).await;
    h.driver.inject(
        Method::ListVolumes,
        Fault::delay(Duration::from_millis(300)).once(),
    );
    let mut c = h.controller();
    let start = Instant::now();
    c.list_volumes(pb::ListVolumesRequest::default())
        .await
        .unwrap();
    let slow = start.elapsed();
    assert!(slow >= Duration::from_millis(300), "{slow:?}");
    assert!(h.driver.faults().is_empty(), "used once, then gone");
    c.list_volumes(pb::ListVolumesRequest::default())
        .await
        .unwrap();
    assert_eq!(h.driver.calls(Method::ListVolumes), 2);
}

#[tokio::test]
async fn hang_is_cancelled_by_the_client_timeout() {
    let h = Harness::start(MockConfig::default()).await;
    h.driver.inject(Method::CreateVolume, Fault::hang().once());
    let mut c = h.controller();
    let mut request = tonic::Request::new(create_req("v", GIB));
    request.set_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let err = c.create_volume(request).await.unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(h.driver.state().volumes.is_empty());
    // The server is still healthy and the retry goes through.
    c.create_volume(create_req("v", GIB)).await.unwrap();
}

#[tokio::test]
async fn shutdown_releases_hanging_calls() {
    let h = Harness::start(MockConfig::default()).await;
    h.driver.inject(Method::Probe, Fault::hang());
    let mut identity = h.identity();
    let call = tokio::spawn(async move { identity.probe(pb::ProbeRequest {}).await });
    assert!(
        h.driver
            .wait_for_calls(Method::Probe, 1, Duration::from_secs(5))
            .await
    );
    let start = Instant::now();
    h.server.shutdown().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn fault_after_handling_keeps_the_effect_but_loses_the_answer() {
    let h = Harness::start(MockConfig::default()).await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::DeadlineExceeded, "lost reply")
            .once()
            .after_handling(),
    );
    let mut c = h.controller();
    let err = c.create_volume(create_req("v", GIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    let created = h.driver.state().volume_by_name("v").cloned().unwrap();
    // The retry finds the same volume: idempotency makes the lost reply harmless.
    let retry = c
        .create_volume(create_req("v", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(retry.volume_id, created.id);
}

#[tokio::test]
async fn faults_follow_insertion_order_and_can_be_cleared() {
    let h = Harness::start(MockConfig::default()).await;
    h.driver
        .inject_all(Fault::error(Code::Internal, "everything").once());
    h.driver.inject(
        Method::Probe,
        Fault::error(Code::FailedPrecondition, "not healthy"),
    );
    let mut identity = h.identity();
    let first = identity.probe(pb::ProbeRequest {}).await.unwrap_err();
    assert_eq!(first.code(), Code::Internal);
    for _ in 0..2 {
        let next = identity.probe(pb::ProbeRequest {}).await.unwrap_err();
        assert_eq!(next.code(), Code::FailedPrecondition);
    }
    h.driver.clear_faults();
    identity.probe(pb::ProbeRequest {}).await.unwrap();
}

#[tokio::test]
async fn exit_fault_runs_the_hook() {
    let h = Harness::start(MockConfig::default()).await;
    let exited = Arc::new(Mutex::new(None));
    let seen = exited.clone();
    h.driver
        .on_exit(move |code| *seen.lock().unwrap() = Some(code));
    h.driver
        .inject(Method::DeleteVolume, Fault::exit(42).once());
    let err = h
        .controller()
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: "vol-x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(*exited.lock().unwrap(), Some(42));
}
