//! The API permissions the attacher uses (checked at start-up, see [`controller_kit::access`]):
//! upstream's `external-attacher-runner` ClusterRole, plus Nodes and Secrets, both optional.

use controller_kit::access::{Need, Permission, permissions};

const NAME: &str = "attacher";

/// Node verbs the attacher's node watch needs.
pub const NODE_VERBS: [&str; 2] = ["list", "watch"];

/// The permissions the attacher uses.
pub fn needed() -> Vec<Permission> {
    let all = |group, resource, verbs: &[&'static str], need| {
        permissions(NAME, group, resource, verbs, None, need)
    };
    let mut p = Vec::new();
    p.extend(all(
        "",
        "persistentvolumes",
        &["get", "list", "watch", "patch"],
        Need::Required,
    ));
    p.extend(all(
        "storage.k8s.io",
        "csinodes",
        &["get", "list", "watch"],
        Need::Required,
    ));
    p.extend(all(
        "storage.k8s.io",
        "volumeattachments",
        &["get", "list", "watch", "patch"],
        Need::Required,
    ));
    p.extend(all(
        "storage.k8s.io",
        "volumeattachments/status",
        &["patch"],
        Need::Required,
    ));
    p.extend(all(
        "",
        "nodes",
        &NODE_VERBS,
        Need::Optional("refusing to attach to deleted nodes, and detaching from them"),
    ));
    p.extend(all(
        "",
        "secrets",
        &["get"],
        Need::Optional("volumes whose PV names a controller-publish secret"),
    ));
    p
}
