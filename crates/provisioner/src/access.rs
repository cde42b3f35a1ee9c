//! The API permissions the provisioner uses (checked at start-up, see
//! [`controller_kit::access`]). Everything here is in upstream's `external-provisioner-runner`
//! ClusterRole and `external-provisioner-cfg` Role, except the intent journal's ConfigMap (our
//! addition) and Secrets (commented out upstream: "enable it if your driver needs secret").
//! Claims and VolumeSnapshots are changed by patch where allowed, else by `update`
//! ([`controller_kit::patch`]), so only `update` is required, as upstream grants.

use controller_kit::access::{Need, Permission, permissions};

use crate::request::{DriverCaps, ProvisionerConfig};

const NAME: &str = "provisioner";

/// The permissions the provisioner uses with `config` on a driver with `caps`; `namespace` is
/// the manager's (the journal's, and capacity tracking's by default).
pub fn needed(config: &ProvisionerConfig, caps: &DriverCaps, namespace: &str) -> Vec<Permission> {
    let all = |group, resource, verbs: &[&'static str], need| {
        permissions(NAME, group, resource, verbs, None, need)
    };
    let watch = ["get", "list", "watch"];
    let mut p = Vec::new();
    p.extend(all(
        "",
        "persistentvolumes",
        &["get", "list", "watch", "create", "patch", "delete"],
        Need::Required,
    ));
    p.extend(all(
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "update"],
        Need::Required,
    ));
    p.extend(all(
        "storage.k8s.io",
        "storageclasses",
        &watch,
        Need::Required,
    ));
    p.extend(all("", "events", &["create", "patch"], Need::Required));
    p.extend(permissions(
        NAME,
        "",
        "configmaps",
        &["get", "create", "patch"],
        Some(namespace),
        Need::Required,
    ));
    p.extend(all(
        "",
        "secrets",
        &["get"],
        Need::Optional("classes that name secrets"),
    ));
    if caps.topology && config.node_deployment.is_none() {
        p.extend(all("storage.k8s.io", "csinodes", &watch, Need::Required));
        p.extend(all("", "nodes", &watch, Need::Required));
    }
    if caps.publish_unpublish {
        p.extend(all(
            "storage.k8s.io",
            "volumeattachments",
            &watch,
            Need::Required,
        ));
    }
    let restore = Need::Optional("volumes restored from snapshots");
    p.extend(all(
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        &["get", "list", "update"],
        restore,
    ));
    p.extend(all(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        &["get", "list"],
        restore,
    ));
    if let Some(capacity) = &config.capacity {
        let ns = if capacity.namespace.is_empty() {
            namespace
        } else {
            &capacity.namespace
        };
        p.extend(permissions(
            NAME,
            "storage.k8s.io",
            "csistoragecapacities",
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
            Some(ns),
            Need::Required,
        ));
        if capacity.ownerref_level >= 0 {
            let owner = Need::Optional("an owner on CSIStorageCapacity objects");
            p.extend(permissions(NAME, "", "pods", &["get"], Some(ns), owner));
            p.extend(permissions(
                NAME,
                "apps",
                "replicasets",
                &["get"],
                Some(ns),
                owner,
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_the_only_required_addition_to_upstreams_role() {
        let caps = DriverCaps {
            topology: true,
            publish_unpublish: true,
            ..DriverCaps::default()
        };
        let p = needed(&ProvisionerConfig::default(), &caps, "kube-system");
        let required: Vec<String> = p
            .iter()
            .filter(|p| p.need == Need::Required)
            .map(|p| p.to_string())
            .collect();
        assert!(required.contains(&"create persistentvolumes".to_string()));
        assert!(required.contains(&"update persistentvolumeclaims".to_string()));
        assert!(
            !required
                .iter()
                .any(|r| r.starts_with("patch persistentvolumeclaims")),
            "claims are patched only where allowed"
        );
        assert!(required.contains(&"patch configmaps in namespace kube-system".to_string()));
        assert!(required.contains(&"watch nodes".to_string()));
        assert!(required.contains(&"list volumeattachments.storage.k8s.io".to_string()));
        assert!(
            p.iter()
                .any(|p| p.resource == "secrets" && matches!(p.need, Need::Optional(_)))
        );
    }
}
