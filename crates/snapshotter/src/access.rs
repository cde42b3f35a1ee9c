//! The API permissions of the two halves (checked at start-up, see [`controller_kit::access`]):
//! within upstream's `snapshot-controller-runner` and `external-snapshotter-runner`
//! ClusterRoles.

use controller_kit::access::{Need, Permission, permissions};

const GROUP: &str = crate::types::GROUP;
const GROUPS: &str = crate::types::group::GROUP;
/// Why the group permissions are wanted; without any of them, group snapshots are off.
pub const GROUP_NEED: &str = "group snapshots (groupsnapshot.storage.k8s.io)";

/// Whether a denied permission is one of the group half's (which is then turned off).
pub fn is_group_permission(p: &Permission) -> bool {
    matches!(p.need, Need::Optional(n) if n == GROUP_NEED)
}

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

/// The common controller's permissions for group snapshots (with [`common`]): members are
/// created and deleted with their group.
pub fn common_groups() -> Vec<Permission> {
    let all = |group, resource, verbs: &[&'static str]| {
        permissions(
            crate::common::NAME,
            group,
            resource,
            verbs,
            None,
            Need::Optional(GROUP_NEED),
        )
    };
    let mut p = Vec::new();
    p.extend(all(
        GROUPS,
        "volumegroupsnapshots",
        &["get", "list", "watch", "patch"],
    ));
    p.extend(all(GROUPS, "volumegroupsnapshots/status", &["update"]));
    p.extend(all(
        GROUPS,
        "volumegroupsnapshotcontents",
        &["create", "get", "list", "watch", "delete", "patch"],
    ));
    p.extend(all(
        GROUPS,
        "volumegroupsnapshotclasses",
        &["get", "list", "watch"],
    ));
    p.extend(all(GROUP, "volumesnapshots", &["create", "delete"]));
    p.extend(all(GROUP, "volumesnapshotcontents/status", &["patch"]));
    p.extend(all("", "persistentvolumeclaims", &["list"]));
    p
}

/// The CSI half's permissions for group contents (with [`sidecar`]).
pub fn sidecar_groups() -> Vec<Permission> {
    let all = |resource, verbs: &[&'static str]| {
        permissions(
            crate::sidecar::NAME,
            GROUPS,
            resource,
            verbs,
            None,
            Need::Optional(GROUP_NEED),
        )
    };
    let mut p = Vec::new();
    p.extend(all(
        "volumegroupsnapshotcontents",
        &["get", "list", "watch", "patch"],
    ));
    p.extend(all("volumegroupsnapshotcontents/status", &["patch"]));
    p.extend(all("volumegroupsnapshotclasses", &["get", "list", "watch"]));
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
