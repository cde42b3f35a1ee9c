//! The binary at start-up:
//! - started before its driver, it stays up, serves /healthz, reports not ready and logs that it
//!   waits; once csi-mock appears on the socket it becomes ready within a second or two;
//! - given a bad setting (issue 15, item 6), it exits at once with a non-zero status and a
//!   message naming what is wrong, never a panic and never a process that lingers half-started
//!   (bad objects are the e2e suite's `e2e/tests/bad_input.rs`).

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

/// (what, extra arguments, kubeconfig text or None for the good one, a fragment the error must
/// contain).
type Case = (
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
    &'static str,
);

const CASES: &[Case] = &[
    (
        "unknown controller",
        &["--controllers=provisioner,nonsense"],
        None,
        "nonsense",
    ),
    (
        "duration without unit",
        &["--timeout=15"],
        None,
        "--timeout",
    ),
    (
        "duration not a number",
        &["--retry-interval-start=soon"],
        None,
        "--retry-interval-start",
    ),
    (
        "negative QPS",
        &["--kube-api-qps=-5"],
        None,
        "--kube-api-qps",
    ),
    (
        "zero workers",
        &["--worker-threads=0"],
        None,
        "--worker-threads",
    ),
    (
        "unknown feature gate",
        &["--feature-gates=NoSuchGate=true"],
        None,
        "NoSuchGate",
    ),
    (
        "feature gate not a boolean",
        &["--feature-gates=CSIVolumeGroupSnapshot=maybe"],
        None,
        "maybe",
    ),
    (
        "boolean flag not a boolean",
        &["--extra-create-metadata=perhaps"],
        None,
        "perhaps",
    ),
    (
        "HTTP endpoint not an address",
        &["--http-endpoint=here"],
        None,
        "here",
    ),
    (
        "both HTTP endpoint flags",
        &[
            "--http-endpoint=127.0.0.1:0",
            "--metrics-address=127.0.0.1:0",
        ],
        None,
        "--metrics-address",
    ),
    (
        "metrics path without /",
        &["--metrics-path=metrics"],
        None,
        "--metrics-path",
    ),
    (
        "empty snapshot name prefix",
        &["--snapshot-name-prefix="],
        None,
        "--snapshot-name-prefix",
    ),
    (
        "snapshot UUID length too long",
        &["--snapshot-name-uuid-length=99"],
        None,
        "--snapshot-name-uuid-length",
    ),
    (
        "unknown flag",
        &["--no-such-flag=1"],
        None,
        "--no-such-flag",
    ),
    ("log format unknown", &["--log-format=xml"], None, "xml"),
    (
        "missing kubeconfig file",
        &["--kubeconfig=/nonexistent/kubeconfig"],
        None,
        "/nonexistent/kubeconfig",
    ),
    (
        "kubeconfig not YAML",
        &[],
        Some("{{{ this is : not yaml"),
        "kubeconfig",
    ),
    (
        "kubeconfig without a current context",
        &[],
        Some("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"),
        "context",
    ),
    (
        "kubeconfig naming a missing cluster",
        &[],
        Some(
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts:\n- context: {cluster: gone, user: u}\n  name: c\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n",
        ),
        "gone",
    ),
];

#[test]
fn each_bad_setting_stops_the_process_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("kubeconfig");
    std::fs::write(&good, KUBECONFIG).unwrap();
    let mut failures = Vec::new();
    for (i, (what, args, kubeconfig, fragment)) in CASES.iter().enumerate() {
        let path = match kubeconfig {
            Some(text) => {
                let p = dir.path().join(format!("kubeconfig-{i}"));
                std::fs::write(&p, text).unwrap();
                p
            }
            None => good.clone(),
        };
        let mut all = vec![format!(
            "--csi-address=unix://{}/csi-{i}.sock",
            dir.path().display()
        )];
        if !args.iter().any(|a| a.starts_with("--kubeconfig")) {
            all.push(format!("--kubeconfig={}", path.display()));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_csi-controller-manager"))
            .args(&all)
            .env_remove("RUST_LOG")
            .env_remove("KUBECONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The error line (the driver's wait may log beside it while the process exits).
        let line = text
            .lines()
            .find(|l| l.contains(fragment))
            .unwrap_or_default();
        match status {
            None => failures.push(format!("{what}: still running after 10 s")),
            Some(s) if s.success() => failures.push(format!("{what}: exited 0")),
            Some(_) if text.contains("panicked") => {
                failures.push(format!("{what}: panicked: {text}"))
            }
            Some(_) if !text.contains(fragment) => failures.push(format!(
                "{what}: the message does not name `{fragment}`: {text}"
            )),
            Some(s) => eprintln!("ok  {what}: {s}: {line}"),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
