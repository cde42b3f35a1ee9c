//! Which controllers to run: the `--controllers` flag, narrowed by what the driver can do, and the
//! upstream Lease name of each, so a migration from the Go sidecars never has two active actors.
//! The process holds exactly the Leases of the controllers it runs; the others are left to
//! whoever runs those controllers (an upstream sidecar kept beside it, say).

use std::collections::BTreeSet;

use controller_kit::leader::sanitize_name;
use csi::Discovery;
use csi::v1::controller_service_capability::rpc::Type as Cap;
use csi::v1::node_service_capability::rpc::Type as NodeCap;

use crate::flags::ControllerKind;

impl ControllerKind {
    /// Every controller, in Lease order.
    pub const ALL: [ControllerKind; 5] = [
        ControllerKind::Provisioner,
        ControllerKind::Attacher,
        ControllerKind::Resizer,
        ControllerKind::Snapshotter,
        ControllerKind::SnapshotController,
    ];

    /// The name used in logs, metrics and `--controllers`.
    pub fn name(self) -> &'static str {
        match self {
            ControllerKind::Provisioner => "provisioner",
            ControllerKind::Attacher => "attacher",
            ControllerKind::Resizer => "resizer",
            ControllerKind::Snapshotter => "snapshotter",
            ControllerKind::SnapshotController => "snapshot-controller",
        }
    }

    /// Whether the driver's Controller service can serve this controller; if not, why.
    pub fn supported_by(self, driver: &Discovery) -> Result<(), &'static str> {
        let ok = match self {
            ControllerKind::Provisioner => driver.has_controller(Cap::CreateDeleteVolume),
            ControllerKind::Attacher => driver.has_controller(Cap::PublishUnpublishVolume),
            ControllerKind::Resizer => {
                driver.has_controller(Cap::ExpandVolume)
                    || driver.has_controller(Cap::ModifyVolume)
                    || driver.has_node(NodeCap::ExpandVolume)
            }
            ControllerKind::Snapshotter => driver.has_controller(Cap::CreateDeleteSnapshot),
            // Not the driver's business: it serves every driver's snapshots.
            ControllerKind::SnapshotController => true,
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            ControllerKind::Provisioner => "the driver lacks CREATE_DELETE_VOLUME",
            ControllerKind::Attacher => "the driver lacks PUBLISH_UNPUBLISH_VOLUME",
            ControllerKind::Resizer => {
                "the driver lacks EXPAND_VOLUME (controller or node) and MODIFY_VOLUME"
            }
            ControllerKind::Snapshotter => "the driver lacks CREATE_DELETE_SNAPSHOT",
            ControllerKind::SnapshotController => "",
        })
    }

    /// The Lease name the upstream sidecar uses for `driver`.
    pub fn lease_name(self, driver: &str) -> String {
        match self {
            ControllerKind::Provisioner => sanitize_name(&driver.replace('/', "-")),
            ControllerKind::Attacher => {
                sanitize_name(&format!("external-attacher-leader-{driver}"))
            }
            ControllerKind::Resizer => sanitize_name(&format!("external-resizer-{driver}")),
            ControllerKind::Snapshotter => {
                sanitize_name(&format!("external-snapshotter-leader-{driver}"))
            }
            // One per cluster, whatever the driver.
            ControllerKind::SnapshotController => "snapshot-controller-leader".to_string(),
        }
    }
}

/// Which Leases a process running `running` competes for, and which it leaves to others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasePlan {
    /// Lease names held, in the group's fixed order: the first is the primary.
    pub held: Vec<String>,
    /// Lease names of the controllers not run here.
    pub left: Vec<String>,
}

impl LeasePlan {
    /// The plan for the controllers in `running` on `driver`, in [`ControllerKind::ALL`] order,
    /// so that every replica with the same controllers has the same primary.
    pub fn new(running: &BTreeSet<ControllerKind>, driver: &str) -> Self {
        let (held, left): (Vec<ControllerKind>, Vec<ControllerKind>) = ControllerKind::ALL
            .into_iter()
            .partition(|kind| running.contains(kind));
        let names =
            |kinds: Vec<ControllerKind>| kinds.iter().map(|k| k.lease_name(driver)).collect();
        Self {
            held: names(held),
            left: names(left),
        }
    }
}

/// The controllers to run: those requested (when none are, all but the common snapshot
/// controller, which is one per cluster and runs only when asked for), minus those the driver
/// cannot serve; each one left out is reported with the reason.
pub fn select(
    requested: &[ControllerKind],
    driver: &Discovery,
) -> (
    BTreeSet<ControllerKind>,
    Vec<(ControllerKind, &'static str)>,
) {
    let explicit = !requested.is_empty();
    let wanted: BTreeSet<ControllerKind> = if explicit {
        requested.iter().copied().collect()
    } else {
        ControllerKind::ALL
            .into_iter()
            .filter(|k| *k != ControllerKind::SnapshotController)
            .collect()
    };
    let mut run = BTreeSet::new();
    let mut skipped = Vec::new();
    for kind in wanted {
        match kind.supported_by(driver) {
            Ok(()) => {
                run.insert(kind);
            }
            // As upstream, an attacher asked for explicitly serves a driver without
            // PUBLISH_UNPUBLISH_VOLUME by marking its VolumeAttachments attached without a call.
            Err(_) if explicit && kind == ControllerKind::Attacher => {
                run.insert(kind);
            }
            Err(why) => skipped.push((kind, why)),
        }
    }
    (run, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(caps: &[Cap]) -> Discovery {
        Discovery {
            driver_name: "hostpath.csi.k8s.io".into(),
            controller: caps.iter().map(|c| *c as i32).collect(),
            ..Discovery::default()
        }
    }

    #[test]
    fn lease_names_match_the_sidecars() {
        let d = "hostpath.csi.k8s.io";
        assert_eq!(
            ControllerKind::Provisioner.lease_name(d),
            "hostpath-csi-k8s-io"
        );
        assert_eq!(
            ControllerKind::Attacher.lease_name(d),
            "external-attacher-leader-hostpath-csi-k8s-io"
        );
        assert_eq!(
            ControllerKind::Resizer.lease_name(d),
            "external-resizer-hostpath-csi-k8s-io"
        );
        assert_eq!(
            ControllerKind::Snapshotter.lease_name(d),
            "external-snapshotter-leader-hostpath-csi-k8s-io"
        );
        assert_eq!(
            ControllerKind::Provisioner.lease_name("example.com/x-"),
            "example-com-x-X"
        );
    }

    #[test]
    fn only_the_leases_of_running_controllers_are_held() {
        let d = "hostpath.csi.k8s.io";
        let running = BTreeSet::from([ControllerKind::Attacher, ControllerKind::Provisioner]);
        assert_eq!(
            LeasePlan::new(&running, d),
            LeasePlan {
                held: vec![
                    "hostpath-csi-k8s-io".into(),
                    "external-attacher-leader-hostpath-csi-k8s-io".into()
                ],
                left: vec![
                    "external-resizer-hostpath-csi-k8s-io".into(),
                    "external-snapshotter-leader-hostpath-csi-k8s-io".into(),
                    "snapshot-controller-leader".into()
                ],
            }
        );
        let attacher_only = LeasePlan::new(&BTreeSet::from([ControllerKind::Attacher]), d);
        assert_eq!(
            attacher_only.held,
            ["external-attacher-leader-hostpath-csi-k8s-io"],
            "the attacher's Lease is the primary when it runs alone"
        );
        assert_eq!(attacher_only.left.len(), 4);
        assert_eq!(
            ControllerKind::SnapshotController.lease_name(d),
            "snapshot-controller-leader"
        );
    }

    #[test]
    fn selection_follows_capabilities() {
        let d = driver(&[Cap::CreateDeleteVolume, Cap::PublishUnpublishVolume]);
        let (run, skipped) = select(&[], &d);
        assert_eq!(
            run.into_iter().collect::<Vec<_>>(),
            [ControllerKind::Provisioner, ControllerKind::Attacher]
        );
        assert_eq!(
            skipped.len(),
            2,
            "the common snapshot controller is not a default"
        );
        let (run, skipped) = select(&[ControllerKind::Attacher, ControllerKind::Snapshotter], &d);
        assert_eq!(
            run.into_iter().collect::<Vec<_>>(),
            [ControllerKind::Attacher]
        );
        assert_eq!(
            skipped,
            [(
                ControllerKind::Snapshotter,
                "the driver lacks CREATE_DELETE_SNAPSHOT"
            )]
        );
        let resizer_by_modify = driver(&[Cap::ModifyVolume]);
        assert!(
            ControllerKind::Resizer
                .supported_by(&resizer_by_modify)
                .is_ok()
        );
    }
}
