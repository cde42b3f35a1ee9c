//! The API permissions of the two halves (checked at start-up, see [`controller_kit::access`]):
//! within upstream's `snapshot-controller-runner` and `external-snapshotter-runner`
//! ClusterRoles.

use controller_kit::access::{Need, Permission, permissions};

const GROUP: &str = crate::types::GROUP;

/// The common controller's permissions.
pub fn common() -> Vec<Permission> {
    let all = |group, resource, verbs: &[&'static str], need| {
        permissions(crate::common::NAME, group, resource, verbs, None, need)
    };
    let mut p = Vec::new();
    p.extend(all(
        GROUP,
        "volumesnapshots",
        &["get", "list", "watch", "patch"],
        Need::Required,
    ));
    p.extend(all(
        GROUP,
        "volumesnapshots/status",
        &["update"],
        Need::Required,
    ));
    p.extend(all(
        GROUP,
        "volumesnapshotcontents",
        &["create", "get", "list", "watch", "delete", "patch"],
        Need::Required,
    ));
    p.extend(all(
        GROUP,
        "volumesnapshotclasses",
        &["get", "list", "watch"],
        Need::Required,
    ));
    p.extend(all(
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "update"],
        Need::Required,
    ));
    p.extend(all("", "persistentvolumes", &["get"], Need::Required));
    p
}

/// The CSI half's permissions.
pub fn sidecar() -> Vec<Permission> {
    let all = |group, resource, verbs: &[&'static str], need| {
        permissions(crate::sidecar::NAME, group, resource, verbs, None, need)
    };
    let mut p = Vec::new();
    p.extend(all(
        GROUP,
        "volumesnapshotcontents",
        &["get", "list", "watch", "patch"],
        Need::Required,
    ));
    p.extend(all(
        GROUP,
        "volumesnapshotcontents/status",
        &["patch"],
        Need::Required,
    ));
    p.extend(all(
        GROUP,
        "volumesnapshotclasses",
        &["get", "list", "watch"],
        Need::Required,
    ));
    p.extend(all(
        "",
        "secrets",
        &["get"],
        Need::Optional("snapshots whose class names a snapshotter or snapshotter-list secret"),
    ));
    p
}
