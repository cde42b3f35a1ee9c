//! Wiring: the HTTP server first, then the CSI driver, the API clients, the informers, and the
//! controllers under leader election.
//!
//! Start-up never crash-loops on an absent driver: the process serves `/healthz` (ok) and `/readyz`
//! (not ready) and logs that it waits, until the driver answers. Readiness then follows the driver
//! (probed continuously) and the informers' sync. A replica that is not the leader is ready too:
//! its caches are warm, so a failover starts from memory rather than from a full list.

use std::collections::BTreeSet;
use std::sync::Arc;

use controller_kit::http::{self, Health};
use controller_kit::informer::{Informers, RunningInformers};
use controller_kit::leader::group::{self, LeaseGroup};
use controller_kit::leader::{LeaderElectionConfig, LeaderMetrics, sanitize_name};
use controller_kit::{Backoff, Controller, ControllerContext};
use controller_kit::{Metrics, kubeclient};
use csi::{CsiClient, CsiEndpoint, CsiMetrics, DriverWatch};
use tokio_util::sync::CancellationToken;

use crate::controllers;
use crate::flags::{ControllerKind, Flags};

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Why the process stops with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A flag value is unusable.
    #[error("{0}")]
    Flags(String),
    /// The HTTP endpoint cannot be served.
    #[error("cannot serve HTTP on {endpoint}: {source}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CSI endpoint is unusable.
    #[error(transparent)]
    Csi(#[from] csi::CsiError),
    /// No API client.
    #[error(transparent)]
    Kube(#[from] kubeclient::ClientError),
    /// Leader election is misconfigured.
    #[error(transparent)]
    Leader(#[from] controller_kit::leader::LeaderError),
    /// Node deployment cannot learn the node's topology.
    #[error("node deployment: NodeGetInfo failed: {0}")]
    NodeInfo(csi::CsiError),
}

/// Runs the process until SIGTERM/SIGINT.
pub async fn run(flags: Flags) -> Result<(), AppError> {
    flags.validate().map_err(AppError::Flags)?;
    let shutdown = controller_kit::shutdown::on_signals();
    let metrics = Metrics::default();
    let health = Health::default();
    health.add_live("ping", || Ok(()));

    let http_task = match flags.http_address() {
        Some(endpoint) => {
            let listener = http::bind(endpoint)
                .await
                .map_err(|source| AppError::Http {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
            let (path, metrics, health, token) = (
                flags.metrics_path.clone(),
                metrics.clone(),
                health.clone(),
                shutdown.clone(),
            );
            Some(tokio::spawn(async move {
                if let Err(error) = http::serve(listener, &path, metrics, health, token).await {
                    tracing::error!(%error, "HTTP server failed");
                }
            }))
        }
        None => None,
    };

    let endpoint = CsiEndpoint::parse(&flags.csi_address)?;
    let csi = CsiClient::connect(endpoint, flags.timeout, metrics.register(CsiMetrics::new))?;
    let driver = DriverWatch::spawn(csi.clone(), shutdown.clone());
    {
        let driver = driver.clone();
        health.add_ready("csi-driver", move || {
            if driver.is_ready() {
                Ok(())
            } else {
                Err("the CSI driver does not answer".into())
            }
        });
    }

    let clients = kubeclient::clients(
        flags.kubeconfig.as_deref(),
        flags.kube_api_qps,
        flags.kube_api_burst,
    )
    .await?;

    let discovery = tokio::select! {
        d = driver.discovered() => d,
        () = shutdown.cancelled() => None,
    };
    let Some(discovery) = discovery else {
        return finish(http_task).await;
    };

    let (kinds, skipped) = controllers::select(&flags.controllers, &discovery);
    for (kind, why) in &skipped {
        if flags.controllers.contains(kind) {
            tracing::warn!(
                controller = kind.name(),
                reason = why,
                "requested controller not started"
            );
        } else {
            tracing::info!(
                controller = kind.name(),
                reason = why,
                "controller not needed"
            );
        }
    }

    let mut informers = Informers::new(clients.main.clone());
    let capacity_client = if flags.enable_capacity {
        Some(
            kubeclient::client_with_budget(
                flags.kubeconfig.as_deref(),
                flags.kube_api_capacity_qps,
                flags.kube_api_capacity_burst,
            )
            .await?,
        )
    } else {
        None
    };
    let csi_driver = csi::Driver {
        client: csi.clone(),
        discovery: discovery.clone(),
    };
    let context = ControllerContext {
        client: clients.main.clone(),
        metrics: metrics.clone(),
        backoff: Backoff {
            start: flags.retry_interval_start,
            max: flags.retry_interval_max,
        },
        // Each controller sets its own count (`Flags::workers`) in `build_controllers`.
        workers: flags.worker_threads.unwrap_or(crate::flags::WORKERS),
        identity: identity(&flags.leader_election_identity),
        namespace: lease_namespace(&flags.leader_election_namespace),
    };
    let node = node_deployment(&flags, &csi, &kinds)
        .await
        .map_err(AppError::NodeInfo)?;
    let built = build_controllers(
        &kinds,
        &flags,
        Wiring {
            context: &context,
            driver: &csi_driver,
            capacity_client,
            node,
        },
        &mut informers,
    );
    let running: BTreeSet<ControllerKind> = built.iter().map(|(kind, _)| *kind).collect();
    let built: Vec<Arc<dyn Controller>> = built.into_iter().map(|(_, c)| c).collect();
    let running_informers = Arc::new(informers.start(shutdown.clone()));
    {
        let informers = running_informers.clone();
        health.add_ready("informers", move || {
            let unsynced = informers.unsynced();
            if unsynced.is_empty() {
                Ok(())
            } else {
                Err(format!("not synced: {}", unsynced.join(", ")))
            }
        });
    }
    tracing::info!(
        driver = %discovery.driver_name,
        controllers = ?running.iter().map(|k| k.name()).collect::<Vec<_>>(),
        leader_election = flags.leader_election,
        "started"
    );

    let term = |token: CancellationToken| run_term(built.clone(), running_informers.clone(), token);
    if flags.leader_election && !running.is_empty() {
        let plan = controllers::LeasePlan::new(&running, &discovery.driver_name);
        tracing::info!(
            competes_for = ?plan.held,
            leaves_to_others = ?plan.left,
            "leader election: holding the Leases of the controllers this process runs"
        );
        let group = LeaseGroup {
            leases: lease_configs(&flags, &plan),
            stores: group::kube_stores(clients.election.clone()),
            metrics: metrics.register(LeaderMetrics::register),
        };
        let live = health.clone();
        group::run_leading(
            group,
            shutdown.clone(),
            None,
            move |h| {
                live.add_live("leader-election", move || {
                    h.check().map_err(|e| e.to_string())
                })
            },
            term,
        )
        .await?;
    } else {
        term(shutdown.child_token()).await;
    }
    finish(http_task).await
}

async fn finish(http_task: Option<tokio::task::JoinHandle<()>>) -> Result<(), AppError> {
    if let Some(task) = http_task {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// One leader term: waits for the caches, then runs every controller until `token` is cancelled.
async fn run_term(
    controllers: Vec<Arc<dyn Controller>>,
    informers: Arc<RunningInformers>,
    token: CancellationToken,
) {
    tokio::select! {
        synced = informers.wait_synced() => if !synced { return },
        () = token.cancelled() => return,
    }
    let runs: Vec<_> = controllers.iter().map(|c| c.run(token.clone())).collect();
    if runs.is_empty() {
        token.cancelled().await;
    } else {
        futures::future::join_all(runs).await;
    }
}

/// With `--node-deployment` and the provisioner: this node's name and topology, from NodeGetInfo
/// (upstream's start-up call, fatal if it fails).
async fn node_deployment(
    flags: &Flags,
    csi: &CsiClient,
    kinds: &BTreeSet<ControllerKind>,
) -> Result<Option<provisioner::node::NodeDeployment>, csi::CsiError> {
    if !flags.node_deployment || !kinds.contains(&ControllerKind::Provisioner) {
        return Ok(None);
    }
    let info = csi.node_get_info(Default::default()).await?;
    let segment = info
        .accessible_topology
        .map(|t| t.segments.into_iter().collect())
        .unwrap_or_default();
    Ok(Some(provisioner::node::NodeDeployment {
        node: std::env::var("NODE_NAME").unwrap_or_default(),
        segment,
        immediate_binding: flags.node_deployment_immediate_binding,
        base_delay: flags.node_deployment_base_delay,
        max_delay: flags.node_deployment_max_delay,
    }))
}

/// What every controller is built from, beside the flags.
struct Wiring<'a> {
    context: &'a ControllerContext,
    driver: &'a csi::Driver,
    /// Capacity tracking's own API client, with `--enable-capacity`.
    capacity_client: Option<kube::Client>,
    /// Node deployment's node and segment, with `--node-deployment`.
    node: Option<provisioner::node::NodeDeployment>,
}

/// Builds the controllers of `kinds`, registering their informers; returns those built.
///
/// A controller whose crate is not part of this build yet is reported and skipped, and its Lease
/// is not held: an upstream sidecar kept beside this process for it takes its Lease and runs.
fn build_controllers(
    kinds: &BTreeSet<ControllerKind>,
    flags: &Flags,
    wiring: Wiring<'_>,
    informers: &mut Informers,
) -> Vec<(ControllerKind, Arc<dyn Controller>)> {
    let Wiring {
        context,
        driver,
        capacity_client,
        node,
    } = wiring;
    let mut built: Vec<(ControllerKind, Arc<dyn Controller>)> = Vec::new();
    for kind in kinds {
        match kind {
            ControllerKind::Attacher => {
                let config = attacher::AttacherConfig {
                    default_fstype: flags.default_fstype.clone(),
                    reconcile_sync: flags.reconcile_sync,
                    resync: flags.resync,
                    ..attacher::AttacherConfig::default()
                };
                let context = ControllerContext {
                    workers: flags.workers(*kind),
                    ..context.clone()
                };
                built.push((*kind, attacher::build(context, driver, config, informers)));
            }
            ControllerKind::Provisioner => {
                let mut config = provisioner::ProvisionerConfig {
                    volume_name_prefix: flags.volume_name_prefix.clone(),
                    volume_name_uuid_length: flags.volume_name_uuid_length,
                    default_fs_type: flags.default_fstype.clone(),
                    extra_create_metadata: flags.extra_create_metadata,
                    strict_topology: flags.strict_topology,
                    immediate_topology: flags.immediate_topology,
                    controller_publish_readonly: flags.controller_publish_readonly,
                    prevent_volume_mode_conversion: flags.prevent_volume_mode_conversion,
                    snapshot_orphan_sweep_interval: flags.snapshot_orphan_sweep_interval,
                    node_deployment: node.clone(),
                    ..provisioner::ProvisionerConfig::default()
                };
                config.capacity =
                    flags
                        .enable_capacity
                        .then(|| provisioner::capacity::CapacityConfig {
                            for_immediate_binding: flags.capacity_for_immediate_binding,
                            poll_interval: flags.capacity_poll_interval,
                            ownerref_level: flags.capacity_ownerref_level,
                            topology_gate: config.topology_gate,
                            workers: flags.capacity_threads,
                            namespace: std::env::var("NAMESPACE").unwrap_or_default(),
                            pod_name: std::env::var("POD_NAME").unwrap_or_default(),
                            node: node.as_ref().map(|n| (n.node.clone(), n.segment.clone())),
                        });
                let context = &ControllerContext {
                    workers: flags.workers(*kind),
                    ..context.clone()
                };
                // Capacity tracking runs beside the provisioner, under its Lease, on its own
                // API budget.
                let capacity = match (&config.capacity, &capacity_client) {
                    (Some(c), Some(client)) => {
                        let ctx = ControllerContext {
                            client: client.clone(),
                            ..context.clone()
                        };
                        let (tracking, handle) =
                            provisioner::capacity::build(&ctx, driver, c.clone(), informers);
                        built.push((*kind, tracking));
                        Some(handle)
                    }
                    _ => None,
                };
                built.push((
                    *kind,
                    provisioner::build(context.clone(), driver, config, informers, capacity),
                ));
            }
            ControllerKind::Resizer | ControllerKind::Snapshotter => {
                tracing::warn!(
                    controller = kind.name(),
                    lease = %kind.lease_name(&driver.discovery.driver_name),
                    "controller is not part of this build yet; its Lease is left to others"
                );
            }
        }
    }
    built
}

/// One election configuration per Lease of `plan.held`, in order (the first is the primary).
fn lease_configs(flags: &Flags, plan: &controllers::LeasePlan) -> Vec<LeaderElectionConfig> {
    let namespace = lease_namespace(&flags.leader_election_namespace);
    let identity = sanitize_name(&identity(&flags.leader_election_identity));
    let labels = flags.lease_labels().unwrap_or_default();
    plan.held
        .iter()
        .map(|lease| LeaderElectionConfig {
            lease_duration: flags.leader_election_lease_duration,
            renew_deadline: flags.leader_election_renew_deadline,
            retry_period: flags.leader_election_retry_period,
            release_on_cancel: flags.leader_election_release_on_cancel,
            labels: labels.clone(),
            ..LeaderElectionConfig::new(lease.as_str(), &namespace, &identity)
        })
        .collect()
}

/// `--leader-election-namespace`, else $POD_NAMESPACE, else the service account's, else default.
fn lease_namespace(flag: &str) -> String {
    if !flag.is_empty() {
        return flag.to_string();
    }
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// `--leader-election-identity` ($POD_NAME), else the host name.
fn identity(flag: &str) -> String {
    if !flag.is_empty() {
        return flag.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "csi-controller-manager".to_string())
}
