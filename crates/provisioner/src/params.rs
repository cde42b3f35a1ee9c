//! StorageClass parameters: the filesystem type, stripping of the provisioner's own
//! `csi.storage.k8s.io/*` keys, and secret references with their templates, all with upstream's
//! rules and error texts (`pkg/controller/controller.go`: `prepareProvision`,
//! `removePrefixedParameters`, `verifyAndGetSecretNameAndNamespaceTemplate`, `getSecretReference`,
//! `resolveTemplate`).
//!
//! Pure functions over plain maps. Upstream iterates Go maps, so when several keys are wrong the
//! one it reports is random; we report the first in key order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use controller_kit::template::{
    checked_namespace, checked_secret_name, go_quote, resolve_template,
};

use crate::constants::*;

/// The claim fields secret templates may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimFields<'a> {
    /// `${pvc.name}`.
    pub name: &'a str,
    /// `${pvc.namespace}`.
    pub namespace: &'a str,
    /// `${pvc.annotations['<key>']}`.
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

/// A reference to a Secret (`v1.SecretReference`), always with both fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
    /// The Secret's namespace.
    pub namespace: String,
}

impl SecretRef {
    /// As a `v1.SecretReference`.
    pub fn to_k8s(&self) -> k8s_openapi::api::core::v1::SecretReference {
        k8s_openapi::api::core::v1::SecretReference {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
        }
    }
}

/// The kinds of secret a StorageClass can name (upstream `secretParamsMap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// CreateVolume / DeleteVolume.
    Provisioner,
    /// ControllerPublishVolume (attacher).
    ControllerPublish,
    /// NodeStageVolume (kubelet).
    NodeStage,
    /// NodePublishVolume (kubelet).
    NodePublish,
    /// ControllerExpandVolume (resizer).
    ControllerExpand,
    /// NodeExpandVolume (kubelet).
    NodeExpand,
    /// ControllerModifyVolume (resizer).
    ControllerModify,
}

struct SecretKeys {
    name: &'static str,
    deprecated_name: Option<&'static str>,
    deprecated_namespace: Option<&'static str>,
    name_key: &'static str,
    namespace_key: &'static str,
}

const DEFAULT_SECRET_KEYS: SecretKeys = SecretKeys {
    name: "Default",
    deprecated_name: None,
    deprecated_namespace: None,
    name_key: PARAM_DEFAULT_SECRET_NAME,
    namespace_key: PARAM_DEFAULT_SECRET_NAMESPACE,
};

impl SecretKind {
    fn keys(self) -> SecretKeys {
        let (name, deprecated, name_key, namespace_key) = match self {
            Self::Provisioner => (
                "Provisioner",
                Some((
                    PARAM_DEPRECATED_PROVISIONER_SECRET_NAME,
                    PARAM_DEPRECATED_PROVISIONER_SECRET_NAMESPACE,
                )),
                PARAM_PROVISIONER_SECRET_NAME,
                PARAM_PROVISIONER_SECRET_NAMESPACE,
            ),
            Self::ControllerPublish => (
                "ControllerPublish",
                Some((
                    PARAM_DEPRECATED_CONTROLLER_PUBLISH_SECRET_NAME,
                    PARAM_DEPRECATED_CONTROLLER_PUBLISH_SECRET_NAMESPACE,
                )),
                PARAM_CONTROLLER_PUBLISH_SECRET_NAME,
                PARAM_CONTROLLER_PUBLISH_SECRET_NAMESPACE,
            ),
            Self::NodeStage => (
                "NodeStage",
                Some((
                    PARAM_DEPRECATED_NODE_STAGE_SECRET_NAME,
                    PARAM_DEPRECATED_NODE_STAGE_SECRET_NAMESPACE,
                )),
                PARAM_NODE_STAGE_SECRET_NAME,
                PARAM_NODE_STAGE_SECRET_NAMESPACE,
            ),
            Self::NodePublish => (
                "NodePublish",
                Some((
                    PARAM_DEPRECATED_NODE_PUBLISH_SECRET_NAME,
                    PARAM_DEPRECATED_NODE_PUBLISH_SECRET_NAMESPACE,
                )),
                PARAM_NODE_PUBLISH_SECRET_NAME,
                PARAM_NODE_PUBLISH_SECRET_NAMESPACE,
            ),
            Self::ControllerExpand => (
                "ControllerExpand",
                None,
                PARAM_CONTROLLER_EXPAND_SECRET_NAME,
                PARAM_CONTROLLER_EXPAND_SECRET_NAMESPACE,
            ),
            Self::NodeExpand => (
                "NodeExpand",
                None,
                PARAM_NODE_EXPAND_SECRET_NAME,
                PARAM_NODE_EXPAND_SECRET_NAMESPACE,
            ),
            Self::ControllerModify => (
                "ControllerModify",
                None,
                PARAM_CONTROLLER_MODIFY_SECRET_NAME,
                PARAM_CONTROLLER_MODIFY_SECRET_NAMESPACE,
            ),
        };
        SecretKeys {
            name,
            deprecated_name: deprecated.map(|d| d.0),
            deprecated_namespace: deprecated.map(|d| d.1),
            name_key,
            namespace_key,
        }
    }
}

/// The filesystem type: the `fstype` parameter (any case, deprecated) or
/// `csi.storage.k8s.io/fstype`, else `default_fs_type`.
pub fn fs_type(params: &BTreeMap<String, String>, default_fs_type: &str) -> Result<String, String> {
    let found: Vec<&String> = params
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(PARAM_LEGACY_FSTYPE) || *k == PARAM_FSTYPE)
        .map(|(_, v)| v)
        .collect();
    if found.len() > 1 {
        return Err(format!(
            "fstype specified in parameters with both \"fstype\" and \"{PARAM_FSTYPE}\" keys"
        ));
    }
    match found.first() {
        Some(v) if !v.is_empty() => Ok((*v).clone()),
        _ => Ok(default_fs_type.to_string()),
    }
}

/// The parameters sent to the driver: every `csi.storage.k8s.io/*` key removed, each of which
/// must be one the provisioner knows (the error is wrapped by the caller as upstream does).
pub fn strip_prefixed(
    params: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    const KNOWN: &[&str] = &[
        PARAM_FSTYPE,
        PARAM_PROVISIONER_SECRET_NAME,
        PARAM_PROVISIONER_SECRET_NAMESPACE,
        PARAM_CONTROLLER_PUBLISH_SECRET_NAME,
        PARAM_CONTROLLER_PUBLISH_SECRET_NAMESPACE,
        PARAM_NODE_STAGE_SECRET_NAME,
        PARAM_NODE_STAGE_SECRET_NAMESPACE,
        PARAM_NODE_PUBLISH_SECRET_NAME,
        PARAM_NODE_PUBLISH_SECRET_NAMESPACE,
        PARAM_CONTROLLER_EXPAND_SECRET_NAME,
        PARAM_CONTROLLER_EXPAND_SECRET_NAMESPACE,
        PARAM_DEFAULT_SECRET_NAME,
        PARAM_DEFAULT_SECRET_NAMESPACE,
        PARAM_NODE_EXPAND_SECRET_NAME,
        PARAM_NODE_EXPAND_SECRET_NAMESPACE,
        PARAM_CONTROLLER_MODIFY_SECRET_NAME,
        PARAM_CONTROLLER_MODIFY_SECRET_NAMESPACE,
    ];
    csi::parameters::strip_reserved(params, KNOWN)
}

/// Upstream `verifyAndGetSecretNameAndNamespaceTemplate`: the (name, namespace) templates of one
/// kind, `None` when the class names no secret of that kind.
fn templates(
    keys: &SecretKeys,
    params: &BTreeMap<String, String>,
) -> Result<Option<(String, String)>, String> {
    let get = |k: Option<&str>| k.and_then(|k| params.get(k));
    let names: Vec<&String> = [get(keys.deprecated_name), get(Some(keys.name_key))]
        .into_iter()
        .flatten()
        .collect();
    let namespaces: Vec<&String> = [
        get(keys.deprecated_namespace),
        get(Some(keys.namespace_key)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (num_name, num_namespace) = (names.len(), namespaces.len());
    // The new key wins when both are present (but that is an error below anyway).
    let name = names.last().map(|s| s.to_string()).unwrap_or_default();
    let namespace = namespaces.last().map(|s| s.to_string()).unwrap_or_default();
    let kind = keys.name;
    if num_name > 1 || num_namespace > 1 {
        return Err(format!(
            "{kind} secrets specified in parameters with both \"csi\" and \"{CSI_PARAMETER_PREFIX}\" keys"
        ));
    }
    if num_name != num_namespace {
        return Err(format!(
            "either name and namespace for {kind} secrets specified, Both must be specified"
        ));
    }
    if num_name == 0 {
        return Ok(None);
    }
    if name.is_empty() || namespace.is_empty() {
        return Err(format!(
            "{kind} secrets specified in parameters but value of either namespace or name is empty"
        ));
    }
    Ok(Some((name, namespace)))
}

/// Upstream `getSecretReference`: the resolved reference of one secret kind, or `None`.
pub fn secret_reference(
    kind: SecretKind,
    params: &BTreeMap<String, String>,
    pv_name: &str,
    claim: Option<&ClaimFields<'_>>,
) -> Result<Option<SecretRef>, String> {
    let own = templates(&kind.keys(), params)
        .map_err(|e| format!("failed to get name and namespace template from params: {e}"))?;
    let found = match own {
        Some(t) => Some(t),
        None => templates(&DEFAULT_SECRET_KEYS, params).map_err(|e| {
            format!("failed to get default name and namespace template from params: {e}")
        })?,
    };
    let Some((name_template, namespace_template)) = found else {
        return Ok(None);
    };

    // The namespace may use the PV name and the claim's namespace, neither of which the claim's
    // owner controls.
    let mut ns_params = BTreeMap::from([(TOKEN_PV_NAME.to_string(), pv_name.to_string())]);
    if let Some(c) = claim {
        ns_params.insert(TOKEN_PVC_NAMESPACE.to_string(), c.namespace.to_string());
    }
    let namespace = resolve_template(&namespace_template, &ns_params).map_err(|e| {
        format!(
            "error resolving value {}: {e}",
            go_quote(&namespace_template)
        )
    })?;
    let namespace = checked_namespace(&namespace_template, namespace)?;

    let mut name_params = BTreeMap::from([(TOKEN_PV_NAME.to_string(), pv_name.to_string())]);
    if let Some(c) = claim {
        name_params.insert(TOKEN_PVC_NAME.to_string(), c.name.to_string());
        name_params.insert(TOKEN_PVC_NAMESPACE.to_string(), c.namespace.to_string());
        for (k, v) in c.annotations.into_iter().flatten() {
            name_params.insert(format!("pvc.annotations['{k}']"), v.clone());
        }
    }
    let name = resolve_template(&name_template, &name_params)
        .map_err(|e| format!("error resolving value {}: {e}", go_quote(&name_template)))?;
    let name = checked_secret_name(&name_template, name)?;
    Ok(Some(SecretRef { name, namespace }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[rstest]
    #[case(&[], "", Ok(""))]
    #[case(&[], "ext4", Ok("ext4"))]
    #[case(&[("fstype", "xfs")], "ext4", Ok("xfs"))]
    #[case(&[("FsType", "xfs")], "", Ok("xfs"))]
    #[case(&[("csi.storage.k8s.io/fstype", "btrfs")], "ext4", Ok("btrfs"))]
    #[case(&[("csi.storage.k8s.io/fstype", "")], "ext4", Ok("ext4"))]
    #[case(&[("fstype", "xfs"), ("csi.storage.k8s.io/fstype", "xfs")], "", Err("fstype specified in parameters with both \"fstype\" and \"csi.storage.k8s.io/fstype\" keys"))]
    fn fs_type_rules(
        #[case] params: &[(&str, &str)],
        #[case] default: &str,
        #[case] want: Result<&str, &str>,
    ) {
        let got = fs_type(&map(params), default);
        assert_eq!(got, want.map(String::from).map_err(String::from));
    }

    #[test]
    fn stripping_keeps_deprecated_and_legacy_keys_and_removes_known_prefixed_ones() {
        let params = map(&[
            ("csi.storage.k8s.io/fstype", "ext4"),
            ("csi.storage.k8s.io/provisioner-secret-name", "s"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "ns"),
            ("csi.storage.k8s.io/controller-modify-secret-name", "s"),
            ("csi.storage.k8s.io/secret-name", "s"),
            ("csiProvisionerSecretName", "old"),
            ("fstype", "xfs"),
            ("zone", "a"),
        ]);
        let got = strip_prefixed(&params).unwrap();
        assert_eq!(
            got,
            map(&[
                ("csiProvisionerSecretName", "old"),
                ("fstype", "xfs"),
                ("zone", "a")
            ])
        );
    }

    #[rstest]
    #[case("csi.storage.k8s.io/foo")]
    #[case("csi.storage.k8s.io/pvc/name")]
    #[case("csi.storage.k8s.io/pv/name")]
    fn unknown_prefixed_keys_are_rejected(#[case] key: &str) {
        let err = strip_prefixed(&map(&[(key, "x"), ("a", "b")])).unwrap_err();
        assert_eq!(
            err,
            format!(
                "found unknown parameter key \"{key}\" with reserved namespace csi.storage.k8s.io/"
            )
        );
    }

    fn claim_annotations() -> BTreeMap<String, String> {
        map(&[("team", "blue"), ("bad", "Not_Valid")])
    }

    #[rstest]
    // No secret at all.
    #[case(SecretKind::Provisioner, &[], Ok(None))]
    // Own keys.
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "s"), ("csi.storage.k8s.io/provisioner-secret-namespace", "ns")], Ok(Some(("s", "ns"))))]
    // Deprecated keys.
    #[case(SecretKind::NodeStage, &[("csiNodeStageSecretName", "s"), ("csiNodeStageSecretNamespace", "ns")], Ok(Some(("s", "ns"))))]
    // Defaults apply to every kind.
    #[case(SecretKind::ControllerExpand, &[("csi.storage.k8s.io/secret-name", "d"), ("csi.storage.k8s.io/secret-namespace", "dns")], Ok(Some(("d", "dns"))))]
    // Own keys win over defaults.
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/secret-name", "d"), ("csi.storage.k8s.io/secret-namespace", "dns"), ("csi.storage.k8s.io/provisioner-secret-name", "s"), ("csi.storage.k8s.io/provisioner-secret-namespace", "ns")], Ok(Some(("s", "ns"))))]
    // Templates.
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "${pvc.name}-${pv.name}"), ("csi.storage.k8s.io/provisioner-secret-namespace", "${pvc.namespace}")], Ok(Some(("claim-pvc-1", "default"))))]
    #[case(SecretKind::NodePublish, &[("csi.storage.k8s.io/node-publish-secret-name", "${pvc.annotations['team']}"), ("csi.storage.k8s.io/node-publish-secret-namespace", "${pv.name}")], Ok(Some(("blue", "pvc-1"))))]
    // Errors.
    #[case(SecretKind::Provisioner, &[("csiProvisionerSecretName", "a"), ("csi.storage.k8s.io/provisioner-secret-name", "b"), ("csi.storage.k8s.io/provisioner-secret-namespace", "c")], Err("failed to get name and namespace template from params: Provisioner secrets specified in parameters with both \"csi\" and \"csi.storage.k8s.io/\" keys"))]
    #[case(SecretKind::ControllerPublish, &[("csi.storage.k8s.io/controller-publish-secret-name", "a")], Err("failed to get name and namespace template from params: either name and namespace for ControllerPublish secrets specified, Both must be specified"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", ""), ("csi.storage.k8s.io/provisioner-secret-namespace", "ns")], Err("failed to get name and namespace template from params: Provisioner secrets specified in parameters but value of either namespace or name is empty"))]
    #[case(SecretKind::NodeExpand, &[("csi.storage.k8s.io/secret-name", "a")], Err("failed to get default name and namespace template from params: either name and namespace for Default secrets specified, Both must be specified"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "s"), ("csi.storage.k8s.io/provisioner-secret-namespace", "${pvc.name}")], Err("error resolving value \"${pvc.name}\": invalid tokens: [\"pvc.name\"]"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "${pvc.annotations['missing']}"), ("csi.storage.k8s.io/provisioner-secret-namespace", "ns")], Err("error resolving value \"${pvc.annotations['missing']}\": invalid tokens: [\"pvc.annotations['missing']\"]"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "s"), ("csi.storage.k8s.io/provisioner-secret-namespace", "Bad_NS")], Err("\"Bad_NS\" is not a valid namespace name"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "s"), ("csi.storage.k8s.io/provisioner-secret-namespace", "x-${pv.name}.y")], Err("\"x-${pv.name}.y\" resolved to \"x-pvc-1.y\" which is not a valid namespace name"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "${pvc.annotations['bad']}"), ("csi.storage.k8s.io/provisioner-secret-namespace", "ns")], Err("\"${pvc.annotations['bad']}\" resolved to \"Not_Valid\" which is not a valid secret name"))]
    #[case(SecretKind::Provisioner, &[("csi.storage.k8s.io/provisioner-secret-name", "Bad"), ("csi.storage.k8s.io/provisioner-secret-namespace", "ns")], Err("\"Bad\" is not a valid secret name"))]
    fn secret_references(
        #[case] kind: SecretKind,
        #[case] params: &[(&str, &str)],
        #[case] want: Result<Option<(&str, &str)>, &str>,
    ) {
        let annotations = claim_annotations();
        let claim = ClaimFields {
            name: "claim",
            namespace: "default",
            annotations: Some(&annotations),
        };
        let got = secret_reference(kind, &map(params), "pvc-1", Some(&claim));
        let want = want
            .map(|o| {
                o.map(|(n, ns)| SecretRef {
                    name: n.into(),
                    namespace: ns.into(),
                })
            })
            .map_err(String::from);
        assert_eq!(got, want);
    }

    #[test]
    fn without_a_claim_only_pv_name_resolves() {
        let params = map(&[
            ("csi.storage.k8s.io/provisioner-secret-name", "${pvc.name}"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "ns"),
        ]);
        let err = secret_reference(SecretKind::Provisioner, &params, "pv", None).unwrap_err();
        assert_eq!(
            err,
            "error resolving value \"${pvc.name}\": invalid tokens: [\"pvc.name\"]"
        );
    }
}
