//! The `csi-mock` binary: serves a [`MockDriver`] on a socket, optionally with a state file and an
//! HTTP control API, until SIGTERM or SIGINT; then stops gracefully and removes the socket.
//!
//! An exit fault ends the process at once with the fault's status (like a crash: the socket file
//! stays, the state file has every change made so far).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use csi_mock::config::{
    DEFAULT_DRIVER_NAME, DEFAULT_NODE_ID, DEFAULT_TOPOLOGY_KEY, parse_capability,
};
use csi_mock::{ControlServer, MockConfig, MockDriver, MockError, MockServer, TopologyConfig};
use tracing_subscriber::EnvFilter;

/// An in-memory CSI driver with fault injection.
#[derive(Debug, Parser)]
#[command(name = "csi-mock", version)]
struct Args {
    /// Where to serve CSI: unix:///path, a bare path, or tcp://host:port.
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// Driver name reported by GetPluginInfo.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Vendor version reported by GetPluginInfo (default: the crate version).
    #[arg(long)]
    vendor_version: Option<String>,
    /// Controller capabilities, comma-separated (e.g. CREATE_DELETE_VOLUME,LIST_VOLUMES);
    /// "all" for every implemented one, "none" for none.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    capabilities: Vec<String>,
    /// Do not advertise the GroupController service (its RPCs answer UNIMPLEMENTED).
    #[arg(long)]
    disable_group_controller: bool,
    /// Enable topology (VOLUME_ACCESSIBILITY_CONSTRAINTS).
    #[arg(long)]
    topology: bool,
    /// Topology segment key.
    #[arg(long, default_value = DEFAULT_TOPOLOGY_KEY)]
    topology_key: String,
    /// Zones that exist, comma-separated; empty means any zone a request names.
    #[arg(long, value_delimiter = ',')]
    zones: Vec<String>,
    /// Maximum volumes published to one node; 0 means unlimited.
    #[arg(long, default_value_t = 0)]
    max_volumes_per_node: u64,
    /// Storage pool size in bytes (suffixes Ki, Mi, Gi, Ti, K, M, G, T), or "unlimited".
    #[arg(long, default_value = "1Ti", value_parser = parse_capacity)]
    total_capacity: Capacity,
    /// Largest volume in bytes (same suffixes).
    #[arg(long, value_parser = parse_bytes)]
    max_volume_size: Option<i64>,
    /// Node ids that exist for ControllerPublishVolume, comma-separated; empty means any.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Node id reported by NodeGetInfo.
    #[arg(long, default_value = DEFAULT_NODE_ID)]
    node_id: String,
    /// Mutable parameter keys accepted, comma-separated; "*" accepts any
    /// (default: iops,throughput,tier).
    #[arg(long, value_delimiter = ',')]
    mutable_parameter_keys: Option<Vec<String>>,
    /// Snapshots become ready_to_use this many milliseconds after they are cut.
    #[arg(long, default_value_t = 0)]
    snapshot_ready_delay_ms: u64,
    /// Volume expansion is OFFLINE: published volumes cannot be expanded.
    #[arg(long)]
    offline_expansion: bool,
    /// ControllerExpandVolume reports node_expansion_required = true.
    #[arg(long)]
    node_expansion_required: bool,
    /// NodeGetCapabilities reports EXPAND_VOLUME.
    #[arg(long)]
    node_expand_volume: bool,
    /// Probe reports not ready (until PUT /ready on the control API).
    #[arg(long)]
    not_ready: bool,
    /// Persist volumes, snapshots and publications to this JSON file after every change, and
    /// load it at start.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// A secret CreateVolume and DeleteVolume must carry, as KEY=VALUE (repeatable); calls
    /// without it fail with UNAUTHENTICATED.
    #[arg(long = "required-secret", value_parser = parse_key_value)]
    required_secrets: Vec<(String, String)>,
    /// Require the --required-secret secrets on ControllerPublish/UnpublishVolume,
    /// ControllerExpandVolume and Create/DeleteSnapshot too.
    #[arg(long)]
    secrets_on_every_call: bool,
    /// Serve the HTTP control API (GET /state, GET /calls, POST|GET|DELETE /faults, PUT /ready)
    /// on this host:port.
    #[arg(long)]
    control_endpoint: Option<String>,
    /// Default log filter when RUST_LOG is unset (e.g. debug to see every RPC).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// A pool size: a byte count or unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Capacity(Option<i64>);

fn parse_capacity(s: &str) -> Result<Capacity, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        Ok(Capacity(None))
    } else {
        parse_bytes(s).map(|b| Capacity(Some(b)))
    }
}

/// Parses a byte count with an optional binary (Ki..Ti) or decimal (K..T) suffix.
fn parse_bytes(s: &str) -> Result<i64, String> {
    const SUFFIXES: &[(&str, i64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let s = s.trim();
    let (digits, unit) = SUFFIXES
        .iter()
        .find_map(|(suffix, unit)| s.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((s, 1));
    digits
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("invalid byte count {s:?} (e.g. 1073741824, 10Gi, 1T)"))
}

fn config_from(args: &Args) -> Result<MockConfig, String> {
    let defaults = MockConfig::default();
    let words: Vec<&str> = args.capabilities.iter().map(|c| c.trim()).collect();
    let controller_capabilities = match words.as_slice() {
        ["all"] => defaults.controller_capabilities.clone(),
        ["none"] | [""] | [] => BTreeSet::new(),
        names => names
            .iter()
            .map(|n| parse_capability(n).ok_or_else(|| format!("unknown capability {n:?}")))
            .collect::<Result<_, _>>()?,
    };
    let mutable_parameter_keys = match &args.mutable_parameter_keys {
        None => defaults.mutable_parameter_keys.clone(),
        Some(keys) if keys.iter().any(|k| k == "*") => None,
        Some(keys) => Some(keys.iter().cloned().collect()),
    };
    Ok(MockConfig {
        driver_name: args.driver_name.clone(),
        vendor_version: args
            .vendor_version
            .clone()
            .unwrap_or(defaults.vendor_version),
        controller_capabilities,
        group_controller: !args.disable_group_controller,
        topology: args.topology.then(|| TopologyConfig {
            key: args.topology_key.clone(),
            zones: args.zones.clone(),
        }),
        max_volumes_per_node: args.max_volumes_per_node,
        total_capacity: args.total_capacity.0,
        max_volume_size: args.max_volume_size,
        nodes: args.nodes.clone(),
        node_id: args.node_id.clone(),
        mutable_parameter_keys,
        snapshot_ready_delay: Duration::from_millis(args.snapshot_ready_delay_ms),
        online_expansion: !args.offline_expansion,
        node_expansion_required: args.node_expansion_required,
        node_expand_volume: args.node_expand_volume,
        state_file: args.state_file.clone(),
        required_secrets: args.required_secrets.iter().cloned().collect(),
        secrets_on_every_call: args.secrets_on_every_call,
    })
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the mock");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = sigterm.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "stopping"),
    }
}

async fn run(args: Args) -> Result<(), MockError> {
    let config = config_from(&args).map_err(MockError::InvalidConfig)?;
    let driver = MockDriver::try_new(config)?;
    driver.set_ready(!args.not_ready);
    driver.on_exit(|code| {
        tracing::warn!(code, "exit fault: exiting now");
        std::process::exit(code);
    });
    let server = MockServer::start(&args.endpoint, driver.clone()).await?;
    let control = match &args.control_endpoint {
        Some(addr) => Some(ControlServer::start(addr, driver.clone()).await?),
        None => None,
    };
    terminated().await;
    if let Some(control) = control {
        control.shutdown().await?;
    }
    server.shutdown().await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            tracing::error!(error = %message, "csi-mock failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_mock::ControllerCapability;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
        assert_eq!(parse_bytes("1T"), Ok(1_000_000_000_000));
        assert_eq!(parse_bytes(" 5 Ki"), Ok(5 << 10));
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("1Pi").is_err());
        assert!(parse_bytes("9999999Ti").is_err());
        assert_eq!(parse_capacity("unlimited"), Ok(Capacity(None)));
    }

    #[test]
    fn flags_map_to_config() {
        let args = Args::parse_from([
            "csi-mock",
            "--endpoint",
            "unix:///tmp/x.sock",
            "--capabilities",
            "create_delete_volume,LIST_VOLUMES",
            "--topology",
            "--zones",
            "a,b",
            "--max-volumes-per-node",
            "3",
            "--total-capacity",
            "10Gi",
            "--mutable-parameter-keys",
            "*",
            "--disable-group-controller",
        ]);
        let config = config_from(&args).unwrap();
        assert_eq!(
            config.controller_capabilities,
            BTreeSet::from([
                ControllerCapability::CreateDeleteVolume,
                ControllerCapability::ListVolumes
            ])
        );
        assert_eq!(config.topology.unwrap().zones, ["a", "b"]);
        assert_eq!(config.max_volumes_per_node, 3);
        assert_eq!(config.total_capacity, Some(10 << 30));
        assert_eq!(config.mutable_parameter_keys, None);
        assert!(!config.group_controller);

        let defaults = config_from(&Args::parse_from(["csi-mock", "--endpoint", "x"])).unwrap();
        assert_eq!(defaults, MockConfig::default());

        let bad = Args::parse_from(["csi-mock", "--endpoint", "x", "--capabilities", "FLY"]);
        assert!(config_from(&bad).unwrap_err().contains("FLY"));
    }
}
