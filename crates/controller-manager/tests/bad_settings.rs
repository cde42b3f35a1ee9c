//! Bad settings at start-up (issue 15, item 6): each wrong flag or kubeconfig makes the binary
//! exit at once with a non-zero status and a message naming what is wrong, never a panic and
//! never a process that lingers half-started. (Bad objects are the e2e suite's
//! `e2e/tests/bad_input.rs`.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A kubeconfig for an API server that is never contacted.
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
