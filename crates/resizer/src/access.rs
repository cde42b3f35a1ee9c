//! The API permissions the resizer uses (checked at start-up, see [`controller_kit::access`]):
//! within upstream's `external-resizer-runner` ClusterRole.

use controller_kit::access::{Need, Permission, permissions};

use crate::ResizerConfig;
use crate::constants::CONTROLLER_NAME;

/// The permissions the resizer uses with `config`.
pub fn needed(config: &ResizerConfig) -> Vec<Permission> {
    let all = |group, resource, verbs: &[&'static str], need| {
        permissions(CONTROLLER_NAME, group, resource, verbs, None, need)
    };
    let mut p = Vec::new();
    p.extend(all(
        "",
        "persistentvolumes",
        &["get", "list", "watch", "patch"],
        Need::Required,
    ));
    p.extend(all(
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch"],
        Need::Required,
    ));
    p.extend(all(
        "",
        "persistentvolumeclaims/status",
        &["patch"],
        Need::Required,
    ));
    if config.handle_volume_inuse_error {
        p.extend(all(
            "",
            "pods",
            &["list"],
            Need::Optional(
                "holding the expansion of an offline-only driver's volume while a Pod uses it",
            ),
        ));
    }
    if config.modify {
        p.extend(all(
            "storage.k8s.io",
            "volumeattributesclasses",
            &["get", "list", "watch"],
            Need::Required,
        ));
    }
    p.extend(all(
        "",
        "secrets",
        &["get"],
        Need::Optional("volumes whose PV names a controller-expand or controller-modify secret"),
    ));
    p
}
