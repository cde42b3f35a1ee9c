//! The binary started before its driver: it stays up, serves /healthz, reports not ready and logs
//! that it waits; once csi-mock appears on the socket it becomes ready within a second or two.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi_mock::{MockConfig, MockDriver, MockServer};

/// A kubeconfig for an API server that is never contacted; creating the clients must not need a
/// reachable server.
const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- cluster: {server: \"https://127.0.0.1:9\", insecure-skip-tls-verify: true}
  name: c
contexts:
- context: {cluster: c, user: u}
  name: c
current-context: c
users:
- name: u
  user: {token: t}
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path`, returning the status code (0 when nothing answers).
fn get(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn waits_for_the_driver_then_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let sock = dir.path().join("csi.sock");
    let log = dir.path().join("log");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_csi-controller-manager"))
        .arg(format!("--csi-address=unix://{}", sock.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--http-endpoint=127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Kill(child);

    // Up and live, not ready, for a while with no driver.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(port, "/healthz") != 200 {
        assert!(Instant::now() < deadline, "the HTTP server never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(port, "/readyz"), 500);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the process must not exit without a driver"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("waiting for CSI driver at unix://"), "{text}");

    // The driver appears. It offers no controller capability, so no controller (and no informer,
    // which could not sync against this test's unreachable API server) is started: readiness then
    // depends on the driver alone, which is what this test is about. Readiness with informers is
    // covered by the e2e suite on a real cluster.
    let driver = MockDriver::new(MockConfig {
        controller_capabilities: Default::default(),
        ..MockConfig::default()
    });
    let appeared = Instant::now();
    let server = MockServer::start(&format!("unix://{}", sock.display()), driver)
        .await
        .unwrap();
    while get(port, "/readyz") != 200 {
        assert!(
            appeared.elapsed() < Duration::from_secs(5),
            "not ready 5 s after the driver appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = appeared.elapsed();
    assert!(took < Duration::from_secs(2), "ready only after {took:?}");
    assert_eq!(get(port, "/metrics"), 200);
    assert_eq!(
        get(port, "/debug/queues"),
        200,
        "the stuck-object view is served"
    );
    // No provisioner runs here, so it registered no view of its intents.
    assert_eq!(get(port, "/debug/intents"), 404);
    server.shutdown().await.unwrap();
}
