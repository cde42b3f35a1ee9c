//! Command-line flags. The Go sidecars' common flag names are accepted with their meanings, so a
//! Deployment's `args` carry over; where our default differs, the help says why.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::duration;

/// The controllers this process can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum ControllerKind {
    /// Dynamic provisioning and deletion (external-provisioner).
    Provisioner,
    /// VolumeAttachment attach and detach (external-attacher).
    Attacher,
    /// Volume expansion and modification (external-resizer).
    Resizer,
    /// Volume snapshots on the driver (csi-snapshotter).
    Snapshotter,
    /// The common snapshot controller (snapshot-controller): cluster-wide, one per cluster, so it
    /// runs only when named in `--controllers`.
    SnapshotController,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The provisioner's workers per queue without `--worker-threads`, as external-provisioner's:
/// a worker holds one claim through its journal write, CreateVolume (seconds with real storage)
/// and PV create, so the worker count bounds the volumes provisioned at once. Workers are tasks
/// (a few KiB each), and 100 records in flight are far below the journal's bound.
pub const PROVISIONER_WORKERS: usize = 100;
/// The other controllers' workers per queue without `--worker-threads`, as upstream's
/// external-attacher, -resizer and csi-snapshotter.
pub const WORKERS: usize = 10;

/// The feature gates `--feature-gates` knows.
pub const FEATURE_GATES: [&str; 6] = [
    "Topology",
    "CSIVolumeGroupSnapshot",
    "VolumeAttributesClass",
    "AnnotateFsResize",
    "RecoverVolumeExpansionFailure",
    "ReleaseLeaderElectionOnExit",
];

fn feature_gate(s: &str) -> Result<(String, bool), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("missing bool value for {s}"))?;
    let name = name.trim();
    if !FEATURE_GATES.contains(&name) {
        return Err(format!("unrecognized feature gate: {name}"));
    }
    let value = value
        .trim()
        .parse::<bool>()
        .map_err(|_| format!("invalid value of {name}={value}, err: invalid syntax"))?;
    Ok((name.to_string(), value))
}

fn go_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// csi-controller-manager: one process in place of a CSI driver's controller sidecars.
#[derive(Clone, Debug, Parser)]
#[command(name = "csi-controller-manager", version, about, long_about = None)]
pub struct Flags {
    /// CSI driver endpoint: unix:///path, a bare path, or tcp://host:port.
    #[arg(long, default_value = "/run/csi/socket", env = "CSI_ADDRESS")]
    pub csi_address: String,

    /// Timeout of each CSI call.
    #[arg(long, default_value = "10s", value_parser = go_duration)]
    pub timeout: Duration,

    /// kubeconfig file; without it, the in-cluster configuration (or the default kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Controllers to run, comma-separated; default: every one the driver's capabilities allow.
    #[arg(long, value_delimiter = ',')]
    pub controllers: Vec<ControllerKind>,

    /// Sustained API requests per second of the controllers' client. Upstream's default is 5,
    /// which throttles busy clusters; ours is higher.
    #[arg(long, default_value_t = 50.0)]
    pub kube_api_qps: f32,

    /// Largest burst of API requests of the controllers' client (upstream: 10).
    #[arg(long, default_value_t = 100)]
    pub kube_api_burst: u32,

    /// Workers per controller queue. Default: upstream's for each controller, 100 for the
    /// provisioner (each worker waits out a whole CreateVolume or DeleteVolume, which takes
    /// seconds with real storage, and its journal write) and 10 for the attacher.
    /// (`--workers` is the resizer's name for it.)
    #[arg(long, alias = "workers")]
    pub worker_threads: Option<usize>,

    /// The provisioner's workers (ours; before `--worker-threads`).
    #[arg(long)]
    pub provisioner_worker_threads: Option<usize>,

    /// The attacher's workers (ours; before `--worker-threads`).
    #[arg(long)]
    pub attacher_worker_threads: Option<usize>,

    /// The resizer's workers, per queue (ours; before `--worker-threads`).
    #[arg(long)]
    pub resizer_worker_threads: Option<usize>,

    /// The CSI snapshot half's workers (ours; before `--worker-threads`).
    #[arg(long)]
    pub snapshotter_worker_threads: Option<usize>,

    /// The common snapshot controller's workers, per queue (ours; before `--worker-threads`).
    #[arg(long)]
    pub snapshot_controller_worker_threads: Option<usize>,

    /// The snapshotter's `--extra-create-metadata` (ours; default: `--extra-create-metadata`):
    /// the VolumeSnapshot's and content's names among CreateSnapshot parameters.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub snapshotter_extra_create_metadata: Option<bool>,

    /// Prefix of the names of snapshots cut on the driver (`<prefix>-<VolumeSnapshot UID>`).
    #[arg(long, default_value = "snapshot")]
    pub snapshot_name_prefix: String,

    /// Characters of the VolumeSnapshot's UID (dashes removed) in snapshot names; -1 keeps the
    /// whole UID.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub snapshot_name_uuid_length: i64,

    /// Prefix of the names of group snapshots cut on the driver
    /// (`<prefix>-<VolumeGroupSnapshot UID>`).
    #[arg(long, default_value = "groupsnapshot")]
    pub groupsnapshot_name_prefix: String,

    /// Characters of the VolumeGroupSnapshot's UID (dashes removed) in group snapshot names;
    /// -1 keeps the whole UID.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub groupsnapshot_name_uuid_length: i64,

    /// First retry delay of a failed object; doubles per failure.
    #[arg(long, default_value = "1s", value_parser = go_duration)]
    pub retry_interval_start: Duration,

    /// Longest retry delay.
    #[arg(long, default_value = "5m", value_parser = go_duration)]
    pub retry_interval_max: Duration,

    /// Filesystem type used when a volume's spec names none (provisioner and attacher).
    #[arg(long, default_value = "")]
    pub default_fstype: String,

    /// Prefix of provisioned volume (and PV) names.
    #[arg(long, default_value = "pvc")]
    pub volume_name_prefix: String,

    /// Characters of the claim's UID (dashes removed) in volume names; -1 keeps the whole UID.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub volume_name_uuid_length: i64,

    /// Add the claim's name and namespace and the PV's name to CreateVolume parameters.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub extra_create_metadata: bool,

    /// Late binding: require exactly the selected node's topology segment.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub strict_topology: bool,

    /// Immediate binding without allowedTopologies: send the cluster's aggregated topology.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub immediate_topology: bool,

    /// Mark PVs of single-ReadOnlyMany claims read-only for ControllerPublish.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub controller_publish_readonly: bool,

    /// Provisioner: refuse to restore a snapshot into another volume mode unless its
    /// VolumeSnapshotContent allows it (annotation snapshot.storage.kubernetes.io/allow-volume-mode-change).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub prevent_volume_mode_conversion: bool,

    /// Provisioner: how often the snapshot-as-source finalizer is removed from VolumeSnapshots
    /// no Pending claim restores from (0 disables the sweep).
    #[arg(long, default_value = "5m", value_parser = go_duration)]
    pub snapshot_orphan_sweep_interval: Duration,

    /// Provisioner (ours): how long the rollback of a deleted claim's recorded intent may keep
    /// failing before it is given up with a VolumeRollbackAbandoned Event naming the volume that
    /// may be left on the driver (0: never give up).
    #[arg(long, default_value = "24h", value_parser = go_duration)]
    pub intent_rollback_timeout: Duration,

    /// Resizer: after an expansion fails with FAILED_PRECONDITION (an offline-only driver), hold
    /// further attempts while a running Pod uses the claim.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub handle_volume_inuse_error: bool,

    /// Resizer: add the claim's name and namespace and the PV's name to ControllerModifyVolume's
    /// mutable parameters.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub extra_modify_metadata: bool,

    /// Provisioner: publish CSIStorageCapacity objects (GetCapacity per StorageClass and topology
    /// segment) in `$NAMESPACE`.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_capacity: bool,

    /// Provisioner: also publish capacity for StorageClasses with Immediate binding.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub capacity_for_immediate_binding: bool,

    /// Provisioner: how often every CSIStorageCapacity is refreshed with GetCapacity.
    #[arg(long, default_value = "1m", value_parser = go_duration)]
    pub capacity_poll_interval: Duration,

    /// Provisioner: owner of the CSIStorageCapacity objects, walking up from `$POD_NAME`: -1 none,
    /// 0 the pod, 1 its controller (StatefulSet, DaemonSet), 2 that one's controller (Deployment).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub capacity_ownerref_level: i64,

    /// Provisioner: workers refreshing CSIStorageCapacity objects.
    #[arg(long, default_value_t = 1)]
    pub capacity_threads: usize,

    /// Provisioner: run one instance per node (`$NODE_NAME`), each provisioning the claims of its
    /// node and deleting its node's volumes.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub node_deployment: bool,

    /// Provisioner, node deployment: instances compete for claims with Immediate binding.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub node_deployment_immediate_binding: bool,

    /// Provisioner, node deployment: base of the wait before competing for a claim.
    #[arg(long, default_value = "20s", value_parser = go_duration)]
    pub node_deployment_base_delay: Duration,

    /// Provisioner, node deployment: longest wait before competing for a claim.
    #[arg(long, default_value = "60s", value_parser = go_duration)]
    pub node_deployment_max_delay: Duration,

    /// Sustained API requests per second for CSIStorageCapacity objects (upstream's default).
    #[arg(long, default_value_t = 1.0)]
    pub kube_api_capacity_qps: f32,

    /// Largest burst of API requests for CSIStorageCapacity objects.
    #[arg(long, default_value_t = 5)]
    pub kube_api_capacity_burst: u32,

    /// Period of the attacher's ListVolumes reconciliation (0 turns it off; used only when the
    /// driver has LIST_VOLUMES_PUBLISHED_NODES).
    #[arg(long, default_value = "1m", value_parser = go_duration)]
    pub reconcile_sync: Duration,

    /// Period of the full resync of every cached object (0 turns it off; `--resync-period` is
    /// the resizer's name for it).
    #[arg(long, alias = "resync-period", default_value = "10m", value_parser = go_duration)]
    pub resync: Duration,

    /// Feature gates, `Name=true|false,…`, as the sidecars take them: `Topology`,
    /// `VolumeAttributesClass`, `AnnotateFsResize`; `RecoverVolumeExpansionFailure` and
    /// `ReleaseLeaderElectionOnExit` are accepted and always on. An unknown gate is an error.
    #[arg(long, value_delimiter = ',', value_parser = feature_gate)]
    pub feature_gates: Vec<(String, bool)>,

    /// Elect a leader among replicas on Leases; only the leader runs controllers.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,

    /// Namespace of the Leases; default: $POD_NAMESPACE, else the service account's, else default.
    #[arg(long, default_value = "")]
    pub leader_election_namespace: String,

    /// How long others wait on an unrenewed Lease before taking over.
    #[arg(long, default_value = "15s", value_parser = go_duration)]
    pub leader_election_lease_duration: Duration,

    /// How long the leader keeps leading without a successful renewal.
    #[arg(long, default_value = "10s", value_parser = go_duration)]
    pub leader_election_renew_deadline: Duration,

    /// Interval between election attempts.
    #[arg(long, default_value = "5s", value_parser = go_duration)]
    pub leader_election_retry_period: Duration,

    /// Labels put on the Leases, as k1:v1,k2:v2.
    #[arg(long, default_value = "")]
    pub leader_election_labels: String,

    /// Release the Leases on shutdown so a standby takes over at once (upstream: off by default,
    /// behind the ReleaseLeaderElectionOnExit gate).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_election_release_on_cancel: bool,

    /// Our identity in the Leases; default: $POD_NAME, else the host name.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub leader_election_identity: String,

    /// host:port (or :port) of the HTTP server for metrics and health; empty: no server.
    #[arg(long, default_value = "")]
    pub http_endpoint: String,

    /// Deprecated upstream alias of --http-endpoint.
    #[arg(long, default_value = "", hide = true)]
    pub metrics_address: String,

    /// Path of the metrics on the HTTP server.
    #[arg(long, default_value = "/metrics")]
    pub metrics_path: String,

    /// Log format (`--logging-format` is the sidecars' name for it).
    #[arg(long, alias = "logging-format", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace); RUST_LOG, when set, takes precedence.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// klog verbosity, accepted for compatibility: 4 and up mean debug, 6 and up trace.
    #[arg(short = 'v', long = "v")]
    pub verbosity: Option<u8>,

    /// The API server's URL, replacing the kubeconfig's (the sidecars' `--master`).
    #[arg(long)]
    pub master: Option<String>,

    /// Attacher: ListVolumes page size for `--reconcile-sync` (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_entries: i32,

    /// The sidecars' flags that have no meaning here, accepted so that their manifests run
    /// unchanged (a warning names each one given).
    #[command(flatten)]
    pub ignored: Ignored,
}

/// Flags of the Go sidecars (klog, Go runtime, pprof, the provisioner's cloning threads) that
/// have no meaning here: accepted and reported, never an error.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Ignored {
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    automaxprocs: Option<String>,
    #[arg(long, hide = true)]
    cloning_protection_threads: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    enable_pprof: Option<String>,
    #[arg(long, hide = true)]
    max_grpc_log_length: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    logtostderr: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    alsologtostderr: Option<String>,
    #[arg(long, hide = true)]
    log_flush_frequency: Option<String>,
    #[arg(long, hide = true)]
    vmodule: Option<String>,
    #[arg(long, hide = true)]
    log_json_info_buffer_size: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    log_json_split_stream: Option<String>,
    #[arg(long, hide = true)]
    log_text_info_buffer_size: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    log_text_split_stream: Option<String>,
}

impl Ignored {
    /// The ignored flags that were given.
    fn given(&self) -> Vec<&'static str> {
        [
            ("--automaxprocs", &self.automaxprocs),
            (
                "--cloning-protection-threads",
                &self.cloning_protection_threads,
            ),
            ("--enable-pprof", &self.enable_pprof),
            ("--max-grpc-log-length", &self.max_grpc_log_length),
            ("--logtostderr", &self.logtostderr),
            ("--alsologtostderr", &self.alsologtostderr),
            ("--log-flush-frequency", &self.log_flush_frequency),
            ("--vmodule", &self.vmodule),
            (
                "--log-json-info-buffer-size",
                &self.log_json_info_buffer_size,
            ),
            ("--log-json-split-stream", &self.log_json_split_stream),
            (
                "--log-text-info-buffer-size",
                &self.log_text_info_buffer_size,
            ),
            ("--log-text-split-stream", &self.log_text_split_stream),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(name, _)| name)
        .collect()
    }
}

impl Flags {
    /// Workers per queue of `kind`: its own flag, else `--worker-threads`, else its default.
    pub fn workers(&self, kind: ControllerKind) -> usize {
        let own = match kind {
            ControllerKind::Provisioner => self.provisioner_worker_threads,
            ControllerKind::Attacher => self.attacher_worker_threads,
            ControllerKind::Resizer => self.resizer_worker_threads,
            ControllerKind::Snapshotter => self.snapshotter_worker_threads,
            ControllerKind::SnapshotController => self.snapshot_controller_worker_threads,
        };
        own.or(self.worker_threads).unwrap_or(match kind {
            ControllerKind::Provisioner => PROVISIONER_WORKERS,
            ControllerKind::Attacher
            | ControllerKind::Resizer
            | ControllerKind::Snapshotter
            | ControllerKind::SnapshotController => WORKERS,
        })
    }

    /// The sidecars' flags given that have no effect here (see [`Ignored`]).
    pub fn ignored(&self) -> Vec<&'static str> {
        self.ignored.given()
    }

    /// The value `--feature-gates` gives gate `name`, if any (the last one wins).
    pub fn gate(&self, name: &str) -> Option<bool> {
        self.feature_gates
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Checks what clap cannot: combinations and value ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !self.http_endpoint.is_empty() && !self.metrics_address.is_empty() {
            return Err("only one of `--metrics-address` and `--http-endpoint` can be set".into());
        }
        if self.retry_interval_start.is_zero()
            || self.retry_interval_max < self.retry_interval_start
        {
            return Err(
                "--retry-interval-start must be positive and at most --retry-interval-max".into(),
            );
        }
        for gate in [
            "RecoverVolumeExpansionFailure",
            "ReleaseLeaderElectionOnExit",
        ] {
            if self.gate(gate) == Some(false) {
                return Err(format!(
                    "feature gate {gate} cannot be turned off: this build always has it on"
                ));
            }
        }
        for (flag, value) in [
            ("--worker-threads", self.worker_threads),
            (
                "--provisioner-worker-threads",
                self.provisioner_worker_threads,
            ),
            ("--attacher-worker-threads", self.attacher_worker_threads),
            ("--resizer-worker-threads", self.resizer_worker_threads),
            (
                "--snapshotter-worker-threads",
                self.snapshotter_worker_threads,
            ),
            (
                "--snapshot-controller-worker-threads",
                self.snapshot_controller_worker_threads,
            ),
        ] {
            if value == Some(0) {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.snapshot_name_prefix.is_empty() {
            return Err("--snapshot-name-prefix must not be empty".into());
        }
        if !(-1..=32).contains(&self.snapshot_name_uuid_length) {
            return Err("--snapshot-name-uuid-length must be -1 (the whole UID) or 0 to 32".into());
        }
        if self.groupsnapshot_name_prefix.is_empty() {
            return Err("--groupsnapshot-name-prefix must not be empty".into());
        }
        if !(-1..=32).contains(&self.groupsnapshot_name_uuid_length) {
            return Err(
                "--groupsnapshot-name-uuid-length must be -1 (the whole UID) or 0 to 32".into(),
            );
        }
        if !self.metrics_path.starts_with('/') {
            return Err("--metrics-path must start with /".into());
        }
        self.lease_labels()?;
        if self.node_deployment && std::env::var("NODE_NAME").unwrap_or_default().is_empty() {
            return Err(
                "The NODE_NAME environment variable must be set when using --enable-node-deployment."
                    .into(),
            );
        }
        if self.enable_capacity {
            if self.capacity_threads == 0 {
                return Err("--capacity-threads must be at least 1".into());
            }
            // Upstream's start-up checks, with its messages.
            if std::env::var("NAMESPACE").unwrap_or_default().is_empty() {
                return Err("need NAMESPACE env variable for CSIStorageCapacity objects".into());
            }
            if self.capacity_ownerref_level >= 0
                && std::env::var("POD_NAME").unwrap_or_default().is_empty()
            {
                return Err(
                    "need POD_NAME env variable to determine CSIStorageCapacity owner".into(),
                );
            }
        }
        Ok(())
    }

    /// The HTTP endpoint to serve on, if any.
    pub fn http_address(&self) -> Option<&str> {
        [&self.http_endpoint, &self.metrics_address]
            .into_iter()
            .find(|a| !a.is_empty())
            .map(String::as_str)
    }

    /// `--leader-election-labels` parsed.
    pub fn lease_labels(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        let mut labels = std::collections::BTreeMap::new();
        for item in self
            .leader_election_labels
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let Some((k, v)) = item.split_once(':').filter(|(_, v)| !v.contains(':')) else {
                return Err(format!("malformed item in list of labels: {item}"));
            };
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(labels)
    }

    /// The log filter: RUST_LOG if set, else from --v, else --log-level.
    pub fn log_filter(&self) -> String {
        if let Ok(filter) = std::env::var("RUST_LOG")
            && !filter.is_empty()
        {
            return filter;
        }
        match self.verbosity {
            Some(v) if v >= 6 => "trace".into(),
            Some(v) if v >= 4 => "debug".into(),
            _ => self.log_level.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
