//! Wiring: the HTTP server first, then the CSI driver, the API clients, the informers, and the
//! controllers under leader election.
//!
//! Start-up never crash-loops on an absent driver: the process serves `/healthz` (ok) and `/readyz`
//! (not ready) and logs that it waits, until the driver answers. Readiness then follows the driver
//! (probed continuously) and the informers' sync. A replica that is not the leader is ready too:
//! its caches are warm, so a failover starts from memory rather than from a full list.

use std::collections::BTreeSet;
use std::sync::Arc;

use controller_kit::access;
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
use crate::wiring::{Configs, Wiring, build_controllers};

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

    let source = kubeclient::Source {
        kubeconfig: flags.kubeconfig.as_deref(),
        master: flags.master.as_deref(),
    };
    for flag in flags.ignored() {
        tracing::warn!(
            flag,
            "accepted for compatibility with the Go sidecars; it has no effect here"
        );
    }
    let clients = kubeclient::clients(source, flags.kube_api_qps, flags.kube_api_burst).await?;

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
                source,
                flags.kube_api_capacity_qps,
                flags.kube_api_capacity_burst,
            )
            .await?,
        )
    } else {
        None
    };
    // The intent journal's requests gate every claim: a limiter of their own, so the other
    // controllers' resync after a start or a failover never queues them.
    let journal_client = if kinds.contains(&ControllerKind::Provisioner) {
        Some(
            kubeclient::client_with_budget(source, flags.kube_api_qps, flags.kube_api_burst)
                .await?,
        )
    } else {
        None
    };
    // A client per controller on the one shared budget: when it runs short they take turns, so
    // one controller's backlog (a resync after a start) never holds another's requests back.
    let mut controller_clients = std::collections::BTreeMap::new();
    for kind in &kinds {
        controller_clients.insert(*kind, clients.taking_turns()?);
    }
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
    let mut configs = Configs::new(&flags, node);
    if kinds.contains(&ControllerKind::Resizer)
        && flags.gate("VolumeAttributesClass").is_none()
        && configs.resizer.modify
        && !crate::wiring::serves_volume_attributes_classes(&clients.main).await
    {
        tracing::info!(
            "the API server serves no storage.k8s.io/v1 VolumeAttributesClass: the modify controller is off"
        );
        configs.resizer.modify = false;
    }
    let snapshots = kinds.contains(&ControllerKind::Snapshotter)
        || kinds.contains(&ControllerKind::SnapshotController);
    if snapshots
        && (configs.snapshotter.groups || configs.snapshot_controller.groups)
        && !crate::wiring::serves_group_snapshots(&clients.main).await
    {
        tracing::info!(
            "the API server serves no groupsnapshot.storage.k8s.io/v1: group snapshots are off"
        );
        configs.snapshotter.groups = false;
        configs.snapshot_controller.groups = false;
    }
    let wanted = configs.permissions(
        &kinds,
        &discovery,
        &context.namespace,
        flags.leader_election,
    );
    match access::check(&clients.main, &wanted).await {
        Ok(denied) => {
            configs.without(&denied);
            if let Some(missing) = metrics.register(|r| access::report(&denied, r)) {
                health.add_ready("permissions", move || Err(missing.clone()));
            }
        }
        Err(error) => tracing::warn!(%error, "could not check this process's API permissions"),
    }
    let built = build_controllers(
        &kinds,
        configs,
        Wiring {
            flags: &flags,
            context: &context,
            driver: &csi_driver,
            capacity_client,
            journal_client,
            clients: controller_clients,
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
            let failing = informers.failing(controller_kit::informer::WATCH_FAILING_FOR);
            let mut waits = Vec::new();
            if !unsynced.is_empty() {
                waits.push(format!("not synced: {}", unsynced.join(", ")));
            }
            if !failing.is_empty() {
                waits.push(format!("watch failing: {}", failing.join("; ")));
            }
            if waits.is_empty() {
                Ok(())
            } else {
                Err(waits.join("; "))
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
