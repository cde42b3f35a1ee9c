//! What this process may do: each controller lists the API permissions it uses ([`Permission`]),
//! and at start-up they are checked with SelfSubjectAccessReviews ([`check`]), so that a missing
//! verb is named at once (log, readiness, metric) instead of failing later in silence.
//!
//! A permission is *required* (the controller cannot work without it) or *optional* (a feature is
//! lost, e.g. reading Secrets for classes that name none); the reason says which. Creating a
//! SelfSubjectAccessReview is allowed to every authenticated user (`system:basic-user`).

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::{ApiError, call};

/// How long one access review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a controller can do without a permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// The controller cannot work without it.
    Required,
    /// Without it, this feature is lost.
    Optional(&'static str),
}

/// One verb on one resource, cluster-wide or in one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permission {
    /// The controller that uses it.
    pub controller: &'static str,
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, with a subresource as `volumeattachments/status`.
    pub resource: &'static str,
    /// Verb: get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// The namespace, or `None` for every namespace (cluster-scoped resources, or namespaced
    /// ones in all namespaces).
    pub namespace: Option<String>,
    /// Whether the controller can do without it.
    pub need: Need,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        write!(f, "{} {}{}", self.verb, self.resource, group)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// `verbs` on `resource` of `group` for `controller`, everywhere (`namespace: None`) or in one
/// namespace, all with the same need.
pub fn permissions(
    controller: &'static str,
    group: &'static str,
    resource: &'static str,
    verbs: &[&'static str],
    namespace: Option<&str>,
    need: Need,
) -> Vec<Permission> {
    verbs
        .iter()
        .map(|verb| Permission {
            controller,
            group,
            resource,
            verb,
            namespace: namespace.map(str::to_owned),
            need,
        })
        .collect()
}

/// Asks the API server, for each permission, whether this process has it; returns those it
/// does not have. Duplicates are asked once.
pub async fn check(
    client: &kube::Client,
    wanted: &[Permission],
) -> Result<Vec<Permission>, ApiError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    let mut asked = std::collections::HashMap::new();
    for p in wanted {
        let key = (p.group, p.resource, p.verb, p.namespace.clone());
        let allowed = match asked.get(&key) {
            Some(allowed) => *allowed,
            None => {
                let allowed = review(&api, p).await?;
                asked.insert(key, allowed);
                allowed
            }
        };
        if !allowed {
            denied.push(p.clone());
        }
    }
    Ok(denied)
}

async fn review(api: &Api<SelfSubjectAccessReview>, p: &Permission) -> Result<bool, ApiError> {
    let (resource, subresource) = match p.resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (p.resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(p.group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                verb: Some(p.verb.to_owned()),
                namespace: p.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = call(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Labels of `csi_controller_manager_permission_missing`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MissingLabels {
    controller: String,
    group: String,
    resource: String,
    verb: String,
    namespace: String,
    required: String,
}

/// Logs each denied permission and publishes it as `csi_controller_manager_permission_missing`
/// (1 per missing permission). Returns the message naming the required ones, if any, for the
/// readiness check.
pub fn report(denied: &[Permission], registry: &mut Registry) -> Option<String> {
    let family = Family::<MissingLabels, Gauge>::default();
    registry.register(
        "csi_controller_manager_permission_missing",
        "API permissions this process uses and was found not to have at start-up",
        family.clone(),
    );
    let mut required = Vec::new();
    for p in denied {
        family
            .get_or_create(&MissingLabels {
                controller: p.controller.to_owned(),
                group: p.group.to_owned(),
                resource: p.resource.to_owned(),
                verb: p.verb.to_owned(),
                namespace: p.namespace.clone().unwrap_or_default(),
                required: matches!(p.need, Need::Required).to_string(),
            })
            .set(1);
        match p.need {
            Need::Required => {
                tracing::error!(controller = p.controller, permission = %p, "missing permission: the controller cannot work without it");
                required.push(format!("{} ({})", p, p.controller));
            }
            Need::Optional(lost) => {
                tracing::warn!(controller = p.controller, permission = %p, without = lost, "missing optional permission")
            }
        }
    }
    (!required.is_empty()).then(|| format!("missing permissions: {}", required.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_kubectl_names_them() {
        let p = permissions(
            "attacher",
            "storage.k8s.io",
            "volumeattachments/status",
            &["patch"],
            None,
            Need::Required,
        );
        assert_eq!(
            p[0].to_string(),
            "patch volumeattachments/status.storage.k8s.io"
        );
        let p = permissions(
            "provisioner",
            "",
            "configmaps",
            &["get"],
            Some("kube-system"),
            Need::Required,
        );
        assert_eq!(p[0].to_string(), "get configmaps in namespace kube-system");
    }

    #[test]
    fn only_required_permissions_fail_readiness() {
        let mut registry = Registry::default();
        let optional = permissions(
            "p",
            "",
            "secrets",
            &["get"],
            None,
            Need::Optional("secrets"),
        );
        assert_eq!(report(&optional, &mut registry), None);
        let mut all = optional;
        all.extend(permissions(
            "p",
            "",
            "persistentvolumes",
            &["create"],
            None,
            Need::Required,
        ));
        let mut registry = Registry::default();
        assert_eq!(
            report(&all, &mut registry).as_deref(),
            Some("missing permissions: create persistentvolumes (p)")
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains(r#"csi_controller_manager_permission_missing{controller="p",group="",resource="persistentvolumes",verb="create",namespace="",required="true"} 1"#), "{out}");
        assert!(
            out.contains(r#"resource="secrets",verb="get",namespace="",required="false"} 1"#),
            "{out}"
        );
    }
}
