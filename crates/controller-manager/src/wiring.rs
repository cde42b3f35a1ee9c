//! From flags to controllers: each controller's configuration, the API permissions they use
//! (checked before they are built, so that a missing optional one turns its feature off), and
//! building them with their informers.

use std::collections::BTreeSet;
use std::sync::Arc;

use controller_kit::access::{self, Need, Permission};
use controller_kit::informer::Informers;
use controller_kit::{Controller, ControllerContext};

use crate::flags::{ControllerKind, Flags};

/// The configuration of every controller this build has.
#[derive(Clone, Debug)]
pub struct Configs {
    pub attacher: attacher::AttacherConfig,
    pub provisioner: provisioner::ProvisionerConfig,
    pub resizer: resizer::ResizerConfig,
    pub snapshotter: snapshotter::SidecarConfig,
    pub snapshot_controller: snapshotter::CommonConfig,
}

impl Configs {
    /// From the flags; `node` is node deployment's node and segment (`--node-deployment`).
    pub fn new(flags: &Flags, node: Option<provisioner::node::NodeDeployment>) -> Self {
        let attacher = attacher::AttacherConfig {
            default_fstype: flags.default_fstype.clone(),
            reconcile_sync: flags.reconcile_sync,
            resync: flags.resync,
            max_entries: flags.max_entries,
            ..attacher::AttacherConfig::default()
        };
        let mut provisioner = provisioner::ProvisionerConfig {
            volume_name_prefix: flags.volume_name_prefix.clone(),
            volume_name_uuid_length: flags.volume_name_uuid_length,
            default_fs_type: flags.default_fstype.clone(),
            extra_create_metadata: flags.extra_create_metadata,
            strict_topology: flags.strict_topology,
            immediate_topology: flags.immediate_topology,
            controller_publish_readonly: flags.controller_publish_readonly,
            prevent_volume_mode_conversion: flags.prevent_volume_mode_conversion,
            snapshot_orphan_sweep_interval: flags.snapshot_orphan_sweep_interval,
            rollback_timeout: flags.intent_rollback_timeout,
            node_deployment: node.clone(),
            topology_gate: flags.gate("Topology").unwrap_or(true),
            volume_attributes_class_gate: flags.gate("VolumeAttributesClass").unwrap_or(true),
            ..provisioner::ProvisionerConfig::default()
        };
        provisioner.capacity =
            flags
                .enable_capacity
                .then(|| provisioner::capacity::CapacityConfig {
                    for_immediate_binding: flags.capacity_for_immediate_binding,
                    poll_interval: flags.capacity_poll_interval,
                    ownerref_level: flags.capacity_ownerref_level,
                    topology_gate: provisioner.topology_gate,
                    workers: flags.capacity_threads,
                    namespace: std::env::var("NAMESPACE").unwrap_or_default(),
                    pod_name: std::env::var("POD_NAME").unwrap_or_default(),
                    node: node.as_ref().map(|n| (n.node.clone(), n.segment.clone())),
                });
        let resizer = resizer::ResizerConfig {
            handle_volume_inuse_error: flags.handle_volume_inuse_error,
            annotate_fs_resize: flags.gate("AnnotateFsResize").unwrap_or(true),
            // Refined by [`serves_volume_attributes_classes`] when the gate is not set.
            modify: flags.gate("VolumeAttributesClass").unwrap_or(true),
            extra_modify_metadata: flags.extra_modify_metadata,
        };
        let snapshotter = snapshotter::SidecarConfig {
            name_prefix: flags.snapshot_name_prefix.clone(),
            name_uuid_length: usize::try_from(flags.snapshot_name_uuid_length).ok(),
            extra_create_metadata: flags
                .snapshotter_extra_create_metadata
                .unwrap_or(flags.extra_create_metadata),
            // Refined by [`serves_group_snapshots`] when the gate is not off.
            groups: flags.gate("CSIVolumeGroupSnapshot").unwrap_or(true),
            group_name_prefix: flags.groupsnapshot_name_prefix.clone(),
            group_name_uuid_length: usize::try_from(flags.groupsnapshot_name_uuid_length).ok(),
        };
        let snapshot_controller = snapshotter::CommonConfig {
            prevent_volume_mode_conversion: flags.prevent_volume_mode_conversion,
            groups: flags.gate("CSIVolumeGroupSnapshot").unwrap_or(true),
        };
        Self {
            attacher,
            provisioner,
            resizer,
            snapshotter,
            snapshot_controller,
        }
    }

    /// The API permissions the controllers of `kinds` use, plus leader election's in
    /// `namespace` (the manager's, where the Leases and the journal live).
    pub fn permissions(
        &self,
        kinds: &BTreeSet<ControllerKind>,
        discovery: &csi::Discovery,
        namespace: &str,
        leader_election: bool,
    ) -> Vec<Permission> {
        let mut wanted = Vec::new();
        for kind in kinds {
            match kind {
                ControllerKind::Attacher => wanted.extend(attacher::access::needed()),
                ControllerKind::Provisioner => {
                    let caps = provisioner::DriverCaps::from_discovery(
                        discovery,
                        self.provisioner.topology_gate,
                    );
                    wanted.extend(provisioner::access::needed(
                        &self.provisioner,
                        &caps,
                        namespace,
                    ));
                }
                ControllerKind::Resizer => wanted.extend(resizer::access::needed(&self.resizer)),
                ControllerKind::Snapshotter => {
                    wanted.extend(snapshotter::access::sidecar());
                    if self.snapshotter.groups {
                        wanted.extend(snapshotter::access::sidecar_groups());
                    }
                }
                ControllerKind::SnapshotController => {
                    wanted.extend(snapshotter::access::common());
                    if self.snapshot_controller.groups {
                        wanted.extend(snapshotter::access::common_groups());
                    }
                }
            }
        }
        if leader_election && !kinds.is_empty() {
            let leases = |verbs: &[&'static str], need| {
                access::permissions(
                    "leader-election",
                    "coordination.k8s.io",
                    "leases",
                    verbs,
                    Some(namespace),
                    need,
                )
            };
            wanted.extend(leases(&["get", "create", "update"], Need::Required));
            wanted.extend(leases(
                &["list", "watch"],
                Need::Optional("watching the Leases (the election polls instead)"),
            ));
        }
        wanted
    }

    /// Turns off what the `denied` permissions do not allow.
    pub fn without(&mut self, denied: &[Permission]) {
        for (controller, on) in [
            ("snapshotter", &mut self.snapshotter.groups),
            ("snapshot-controller", &mut self.snapshot_controller.groups),
        ] {
            let group_denied = denied
                .iter()
                .any(|p| p.controller == controller && snapshotter::access::is_group_permission(p));
            if group_denied && *on {
                tracing::warn!(
                    controller,
                    "group snapshots are off: this process may not use every group snapshot resource it needs"
                );
                *on = false;
            }
        }
        let nodes_denied = denied.iter().any(|p| {
            p.controller == "attacher"
                && p.resource == "nodes"
                && attacher::access::NODE_VERBS.contains(&p.verb)
        });
        if nodes_denied && self.attacher.watch_nodes {
            tracing::warn!(
                "the attacher may not watch Nodes: every node is taken to exist, as upstream does"
            );
            self.attacher.watch_nodes = false;
        }
        let pods_denied = denied
            .iter()
            .any(|p| p.controller == "resizer" && p.resource == "pods");
        if pods_denied && self.resizer.handle_volume_inuse_error {
            tracing::warn!(
                "the resizer may not list Pods: expansions of an offline-only driver are retried while the volume is in use, as with --handle-volume-inuse-error=false"
            );
            self.resizer.handle_volume_inuse_error = false;
        }
    }
}

/// Whether the API server serves `storage.k8s.io/v1` VolumeAttributesClass: without it the
/// modify controller is off, unless the `VolumeAttributesClass` gate is set explicitly (as
/// upstream's resizer decides). A discovery error is logged and leaves it on.
pub async fn serves_volume_attributes_classes(client: &kube::Client) -> bool {
    match client.list_api_group_resources("storage.k8s.io/v1").await {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.kind == "VolumeAttributesClass"),
        Err(error) => {
            tracing::warn!(%error, "cannot discover storage.k8s.io/v1; the modify controller stays on");
            true
        }
    }
}

/// Whether the API server serves `groupsnapshot.storage.k8s.io/v1` (the group snapshot CRDs):
/// without it group snapshots are off, as upstream's controllers decide. A discovery error
/// turns them off too, with a warning.
pub async fn serves_group_snapshots(client: &kube::Client) -> bool {
    match client
        .list_api_group_resources(snapshotter::types::group::API_VERSION)
        .await
    {
        Ok(list) => [
            "VolumeGroupSnapshot",
            "VolumeGroupSnapshotContent",
            "VolumeGroupSnapshotClass",
        ]
        .iter()
        .all(|kind| list.resources.iter().any(|r| r.kind == *kind)),
        Err(kube::Error::Api(e)) if e.code == 404 => false,
        Err(error) => {
            tracing::warn!(%error, "cannot discover groupsnapshot.storage.k8s.io/v1; group snapshots are off");
            false
        }
    }
}

/// What every controller is built from, beside its configuration.
pub struct Wiring<'a> {
    pub flags: &'a Flags,
    pub context: &'a ControllerContext,
    pub driver: &'a csi::Driver,
    /// Capacity tracking's own API client, with `--enable-capacity`.
    pub capacity_client: Option<kube::Client>,
    /// The intent journal's own API client (same budget as the controllers', a limiter of its
    /// own), when the provisioner runs.
    pub journal_client: Option<kube::Client>,
    /// Each controller's own client on the shared budget (`Clients::taking_turns`); a
    /// controller without one uses the context's.
    pub clients: std::collections::BTreeMap<ControllerKind, kube::Client>,
}

/// Builds the controllers of `kinds`, registering their informers; returns those built.
///
pub fn build_controllers(
    kinds: &BTreeSet<ControllerKind>,
    configs: Configs,
    wiring: Wiring<'_>,
    informers: &mut Informers,
) -> Vec<(ControllerKind, Arc<dyn Controller>)> {
    let Wiring {
        flags,
        context,
        driver,
        capacity_client,
        journal_client,
        clients,
    } = wiring;
    let mut built: Vec<(ControllerKind, Arc<dyn Controller>)> = Vec::new();
    for kind in kinds {
        let context = ControllerContext {
            workers: flags.workers(*kind),
            client: clients
                .get(kind)
                .cloned()
                .unwrap_or_else(|| context.client.clone()),
            ..context.clone()
        };
        match kind {
            ControllerKind::Attacher => {
                let config = configs.attacher.clone();
                built.push((*kind, attacher::build(context, driver, config, informers)));
            }
            ControllerKind::Provisioner => {
                let config = configs.provisioner.clone();
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
                    provisioner::build(
                        context,
                        driver,
                        config,
                        informers,
                        capacity,
                        journal_client.clone(),
                    ),
                ));
            }
            ControllerKind::Resizer => {
                let config = configs.resizer.clone();
                built.push((*kind, resizer::build(context, driver, config, informers)));
            }
            ControllerKind::Snapshotter => {
                let config = configs.snapshotter.clone();
                built.push((
                    *kind,
                    snapshotter::build_sidecar(context, driver, config, informers),
                ));
            }
            ControllerKind::SnapshotController => {
                let config = configs.snapshot_controller.clone();
                built.push((*kind, snapshotter::build_common(context, config, informers)));
            }
        }
    }
    built
}
