//! The `csi-mock` binary: control API over HTTP, exit faults, state file across process restarts,
//! SIGTERM.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use csi::v1 as pb;
use csi::v1::controller_client::ControllerClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic::Code;

use crate::common::{GIB, connect, create_req};

const STARTUP: Duration = Duration::from_secs(20);

/// A running `csi-mock` process and its control API address.
struct Process {
    child: Child,
    control: String,
    endpoint: String,
}

/// Starts the binary and waits for its control API to be announced in the log.
async fn spawn(dir: &Path) -> Process {
    let endpoint = format!("unix://{}", dir.join("csi.sock").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_csi-mock"))
        .args(["--endpoint", &endpoint, "--control-endpoint", "127.0.0.1:0"])
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("control API serving") {
                let _ = tx.send(line.clone()).await;
            }
            println!("csi-mock: {line}");
        }
    });
    let line = tokio::time::timeout(STARTUP, rx.recv())
        .await
        .expect("control API announced in time")
        .expect("log line");
    let control = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr field")
        .to_owned();
    Process {
        child,
        control,
        endpoint,
    }
}

/// One HTTP/1.1 request over a raw TCP stream; returns status and body.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("control API reachable");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn control_api_injects_faults_and_the_state_file_survives_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = spawn(dir.path()).await;
    let control = process.control.clone();
    let mut c = ControllerClient::new(connect(&process.endpoint).await);

    // A fault injected over HTTP takes effect on the next call only.
    let (status, body) = http(
        &control,
        "POST",
        "/faults",
        r#"{"method":"CreateVolume","code":"UNAVAILABLE","message":"from http","count":1}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)[0]["code"], "UNAVAILABLE");
    let err = c.create_volume(create_req("pvc-1", GIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "from http");
    let volume = c
        .create_volume(create_req("pvc-1", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();

    let (status, body) = http(&control, "GET", "/calls", "").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["CreateVolume"], 2);
    let (_, body) = http(&control, "GET", "/state", "").await;
    assert_eq!(
        json(&body)["volumes"][&volume.volume_id]["name"],
        "pvc-1",
        "{body}"
    );
    let (_, body) = http(&control, "GET", "/faults", "").await;
    assert_eq!(json(&body), serde_json::json!([]));
    let (status, body) = http(
        &control,
        "POST",
        "/faults",
        r#"{"method":"Nope","code":14}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("Nope"));

    // Faults can be cleared before they fire.
    http(&control, "POST", "/faults", r#"{"code":"INTERNAL"}"#).await;
    let (status, body) = http(&control, "DELETE", "/faults", "").await;
    assert_eq!((status, json(&body)), (200, serde_json::json!([])));
    c.list_volumes(pb::ListVolumesRequest::default())
        .await
        .unwrap();

    // An exit fault kills the process mid-call; the state file keeps the volume.
    let (status, _) = http(
        &control,
        "POST",
        "/faults",
        r#"{"method":"DeleteVolume","exit":true,"exit_code":3}"#,
    )
    .await;
    assert_eq!(status, 201);
    let err = c
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let exit = tokio::time::timeout(STARTUP, process.child.wait())
        .await
        .expect("the process exits")
        .unwrap();
    assert_eq!(exit.code(), Some(3));
    drop(c);

    // Restarted on the same socket (left behind by the crash) and state file.
    let mut process = spawn(dir.path()).await;
    let mut c = ControllerClient::new(connect(&process.endpoint).await);
    let listed = c
        .list_volumes(pb::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.as_str())
        .collect();
    assert_eq!(ids, [volume.volume_id.as_str()]);
    drop(c);

    // SIGTERM: clean exit, socket removed.
    let pid = process.child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(STARTUP, process.child.wait())
        .await
        .expect("the process stops on SIGTERM")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(!dir.path().join("csi.sock").exists());
}
