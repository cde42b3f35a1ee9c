//! Our CSI client across a restart of the csi-mock *process*: killed with SIGKILL (socket left
//! behind, as after a crash) and started again on the same socket, the same `CsiClient` reconnects
//! by itself, the failures in between are in-flight errors, and the volumes survive (state file).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi::v1;
use csi::{CsiClient, CsiEndpoint, CsiMetrics};

struct Mock(Child);
impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path) -> Mock {
    let child = Command::new(env!("CARGO_BIN_EXE_csi-mock"))
        .arg(format!(
            "--endpoint=unix://{}",
            dir.join("csi.sock").display()
        ))
        .arg(format!("--state-file={}", dir.join("state.json").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Mock(child)
}

async fn until_ok(csi: &CsiClient, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match csi.probe(v1::ProbeRequest {}).await {
            Ok(_) => return started.elapsed(),
            Err(e) => {
                assert!(!e.is_final(), "an absent driver is an in-flight error: {e}");
                assert!(
                    started.elapsed() < within,
                    "no answer within {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_client_reconnects_after_the_driver_process_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint =
        CsiEndpoint::parse(&format!("unix://{}", dir.path().join("csi.sock").display())).unwrap();
    let csi = CsiClient::connect(endpoint, Duration::from_secs(2), CsiMetrics::default()).unwrap();

    let mut mock = start(dir.path());
    until_ok(&csi, Duration::from_secs(20)).await;
    let discovery = csi.discover().await.unwrap();
    let volume = csi
        .create_volume(v1::CreateVolumeRequest {
            name: "pvc-restart".into(),
            volume_capabilities: vec![v1::VolumeCapability {
                access_type: Some(v1::volume_capability::AccessType::Mount(Default::default())),
                access_mode: Some(v1::volume_capability::AccessMode {
                    mode: v1::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .volume
        .unwrap();

    // Crash: SIGKILL, the socket file stays.
    mock.0.kill().unwrap();
    mock.0.wait().unwrap();
    let err = csi.probe(v1::ProbeRequest {}).await.unwrap_err();
    assert!(!err.is_final(), "{err}");

    let _mock = start(dir.path());
    until_ok(&csi, Duration::from_secs(20)).await;
    assert_eq!(
        csi.discover().await.unwrap(),
        discovery,
        "re-discovery finds the same driver"
    );
    let listed = csi
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap();
    let ids: Vec<String> = listed
        .entries
        .into_iter()
        .filter_map(|e| e.volume)
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(
        ids,
        [volume.volume_id],
        "the restarted driver kept its volume"
    );
}
