//! Compiles `proto/csi.proto` into Rust with `protox` (pure Rust, no `protoc` needed) and
//! `tonic-prost-build` (messages, clients and servers for all five CSI services).
//!
//! Messages with a `[(csi_secret) = true]` field get no derived `Debug`; `src/v1.rs` implements a
//! redacting one instead. The build fails if the proto marks a secret in a message that is not in
//! [`SECRET_MESSAGES`], so a spec bump cannot silently leak secrets into logs.

use std::collections::BTreeSet;
use std::error::Error;
use std::path::PathBuf;

/// Every message that carries a `csi_secret` field (CSI spec v1.12.0).
/// Keep in sync with the `redacted_debug!` list in `src/v1.rs`.
const SECRET_MESSAGES: &[&str] = &[
    "CreateVolumeRequest",
    "DeleteVolumeRequest",
    "ControllerPublishVolumeRequest",
    "ControllerUnpublishVolumeRequest",
    "ValidateVolumeCapabilitiesRequest",
    "ControllerModifyVolumeRequest",
    "CreateSnapshotRequest",
    "DeleteSnapshotRequest",
    "ListSnapshotsRequest",
    "GetSnapshotRequest",
    "ControllerExpandVolumeRequest",
    "NodeStageVolumeRequest",
    "NodePublishVolumeRequest",
    "NodeExpandVolumeRequest",
    "CreateVolumeGroupSnapshotRequest",
    "DeleteVolumeGroupSnapshotRequest",
    "GetVolumeGroupSnapshotRequest",
    "GetMetadataAllocatedRequest",
    "GetMetadataDeltaRequest",
];

const PACKAGE: &str = "csi.v1";

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto_file = proto_dir.join("csi.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    check_secret_messages(&std::fs::read_to_string(&proto_file)?)?;

    let fds = protox::compile(["csi.proto"], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(SECRET_MESSAGES.iter().map(|m| format!(".{PACKAGE}.{m}")))
        .compile_fds(fds)?;
    Ok(())
}

/// Fails unless the set of messages holding a `(csi_secret) = true` field equals
/// [`SECRET_MESSAGES`]. A light scan of the proto text (comments stripped, braces tracked)
/// is enough for our own file's layout; nested messages are named by their full path.
fn check_secret_messages(proto: &str) -> Result<(), Box<dyn Error>> {
    let mut scopes: Vec<Option<String>> = Vec::new();
    let mut found = BTreeSet::new();
    for line in proto.lines() {
        let line = line.split("//").next().unwrap_or_default().trim();
        if line.contains("(csi_secret) = true") {
            let path: Vec<&str> = scopes.iter().flatten().map(String::as_str).collect();
            if path.is_empty() {
                return Err(format!("csi_secret outside a message: {line}").into());
            }
            found.insert(path.join("."));
        }
        for (i, _) in line.match_indices(['{', '}']) {
            if &line[i..=i] == "{" {
                let mut words = line.split_whitespace();
                let name = match words.next() {
                    Some("message") => words.next().map(|w| w.trim_end_matches('{').to_owned()),
                    _ => None,
                };
                scopes.push(name);
            } else {
                scopes.pop();
            }
        }
    }
    let expected: BTreeSet<String> = SECRET_MESSAGES.iter().map(|m| (*m).to_owned()).collect();
    if found != expected {
        let missing: Vec<_> = found.difference(&expected).collect();
        let extra: Vec<_> = expected.difference(&found).collect();
        return Err(format!(
            "SECRET_MESSAGES out of sync with csi.proto: add {missing:?}, remove {extra:?} \
             (and update the redacted Debug impls in src/v1.rs)"
        )
        .into());
    }
    Ok(())
}
