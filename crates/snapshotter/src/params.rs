//! VolumeSnapshotClass parameters and names, with upstream's rules and error texts
//! (`pkg/utils/util.go`: `GetSecretReference`, `RemovePrefixedParameters`;
//! `pkg/sidecar-controller/csi_handler.go`: `makeSnapshotName`). Pure functions.

use std::collections::BTreeMap;

use controller_kit::template::{
    checked_namespace, checked_secret_name, go_quote, resolve_template,
};

use crate::constants::*;

/// A Secret's name and namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub namespace: String,
}

/// The secret kinds of a VolumeSnapshotClass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// CreateSnapshot and DeleteSnapshot (resolved once, frozen on the content).
    Snapshotter,
    /// ListSnapshots (resolved per call, with the content's name only).
    SnapshotterList,
    /// Create/DeleteVolumeGroupSnapshot (resolved once, frozen on the group content), and
    /// ListSnapshots of a dynamic group's members.
    GroupSnapshotter,
    /// GetVolumeGroupSnapshot of a pre-provisioned group content (per call, content name only).
    GroupSnapshotterGet,
}

impl SecretKind {
    fn keys(self) -> (&'static str, &'static str, &'static str) {
        match self {
            SecretKind::Snapshotter => ("Snapshotter", PARAM_SECRET_NAME, PARAM_SECRET_NAMESPACE),
            SecretKind::SnapshotterList => (
                "SnapshotterList",
                PARAM_LIST_SECRET_NAME,
                PARAM_LIST_SECRET_NAMESPACE,
            ),
            SecretKind::GroupSnapshotter => (
                "GroupSnapshotter",
                PARAM_GROUP_SECRET_NAME,
                PARAM_GROUP_SECRET_NAMESPACE,
            ),
            SecretKind::GroupSnapshotterGet => (
                "GroupSnapshotterGet",
                PARAM_GROUP_GET_SECRET_NAME,
                PARAM_GROUP_GET_SECRET_NAMESPACE,
            ),
        }
    }

    /// The template tokens: (content name, snapshot namespace, snapshot name).
    fn tokens(self) -> (&'static str, &'static str, &'static str) {
        match self {
            SecretKind::Snapshotter | SecretKind::SnapshotterList => (
                TOKEN_CONTENT_NAME,
                TOKEN_SNAPSHOT_NAMESPACE,
                TOKEN_SNAPSHOT_NAME,
            ),
            SecretKind::GroupSnapshotter | SecretKind::GroupSnapshotterGet => (
                TOKEN_GROUP_CONTENT_NAME,
                TOKEN_GROUP_NAMESPACE,
                TOKEN_GROUP_NAME,
            ),
        }
    }
}

/// The (group) snapshot a secret template may name: `${volumesnapshot.name}`,
/// `${volumesnapshot.namespace}` (`${volumegroupsnapshot.…}` for the group kinds).
#[derive(Clone, Copy, Debug)]
pub struct SnapshotFields<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
}

fn templates(
    kind: SecretKind,
    params: &BTreeMap<String, String>,
) -> Result<Option<(String, String)>, String> {
    let (label, name_key, namespace_key) = kind.keys();
    match (params.get(name_key), params.get(namespace_key)) {
        (None, None) => Ok(None),
        (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => Ok(Some((n.clone(), ns.clone()))),
        (Some(_), Some(_)) => Err(format!(
            "{label} secrets specified in parameters but value of either namespace or name is empty"
        )),
        _ => Err(format!(
            "either name and namespace for {label} secrets specified, Both must be specified"
        )),
    }
}

/// Upstream `GetSecretReference`: the resolved Secret of `kind`, or `None` when the class names
/// none. `snapshot` is `None` where upstream passes no snapshot (the list secret).
pub fn secret_reference(
    kind: SecretKind,
    params: &BTreeMap<String, String>,
    content_name: &str,
    snapshot: Option<SnapshotFields<'_>>,
) -> Result<Option<SecretRef>, String> {
    let Some((name_template, namespace_template)) = templates(kind, params)
        .map_err(|e| format!("failed to get name and namespace template from params: {e}"))?
    else {
        return Ok(None);
    };
    let (content_token, namespace_token, name_token) = kind.tokens();
    let mut ns_params = BTreeMap::from([(content_token.to_string(), content_name.to_string())]);
    if let Some(s) = snapshot {
        ns_params.insert(namespace_token.to_string(), s.namespace.to_string());
    }
    let namespace = resolve_template(&namespace_template, &ns_params).map_err(|e| {
        format!(
            "error resolving value {}: {e}",
            go_quote(&namespace_template)
        )
    })?;
    let namespace = checked_namespace(&namespace_template, namespace)?;
    let mut name_params = ns_params;
    if let Some(s) = snapshot {
        name_params.insert(name_token.to_string(), s.name.to_string());
    }
    let name = resolve_template(&name_template, &name_params)
        .map_err(|e| format!("error resolving value {}: {e}", go_quote(&name_template)))?;
    let name = checked_secret_name(&name_template, name)?;
    Ok(Some(SecretRef { name, namespace }))
}

/// Upstream `RemovePrefixedParameters`: the parameters sent to the driver, without the secret
/// keys (of snapshots and group snapshots); any other `csi.storage.k8s.io/` key is an error.
pub fn strip_prefixed(
    params: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    const KNOWN: &[&str] = &[
        PARAM_SECRET_NAME,
        PARAM_SECRET_NAMESPACE,
        PARAM_LIST_SECRET_NAME,
        PARAM_LIST_SECRET_NAMESPACE,
        PARAM_GROUP_SECRET_NAME,
        PARAM_GROUP_SECRET_NAMESPACE,
        PARAM_GROUP_GET_SECRET_NAME,
        PARAM_GROUP_GET_SECRET_NAMESPACE,
    ];
    csi::parameters::strip_reserved(params, KNOWN)
}

/// The name of the dynamic content of the snapshot with `uid`.
pub fn content_name(uid: &str) -> String {
    format!("{CONTENT_NAME_PREFIX}{uid}")
}

/// The name of the dynamic content of the group snapshot with `uid`.
pub fn group_content_name(uid: &str) -> String {
    format!("{GROUP_CONTENT_NAME_PREFIX}{uid}")
}

/// Upstream `getSnapshotNameForVolumeGroupSnapshotContent` and its content twin: a member of a
/// dynamic group is `snapshot-<sha256(group UID + volume handle)>`, its content
/// `snapcontent-<the same>`. Returns (snapshot, content).
pub fn member_names(group_uid: &str, volume_handle: &str) -> (String, String) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{group_uid}{volume_handle}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    (format!("snapshot-{hex}"), format!("snapcontent-{hex}"))
}

/// Upstream `makeSnapshotName`: `<prefix>-<uid>`, or with `uuid_length` set, the UID without
/// dashes cut to that length. Unlike upstream (which panics), a length beyond the UID's keeps
/// the whole UID; the flag is checked at start-up.
pub fn snapshot_name(
    prefix: &str,
    uid: &str,
    uuid_length: Option<usize>,
) -> Result<String, String> {
    if uid.is_empty() {
        return Err("Corrupted snapshot object, it is missing UID".into());
    }
    Ok(match uuid_length {
        None => format!("{prefix}-{uid}"),
        Some(n) => {
            let plain: String = uid.chars().filter(|c| *c != '-').collect();
            let cut: String = plain.chars().take(n).collect();
            format!("{prefix}-{cut}")
        }
    })
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

    const SNAP: SnapshotFields<'static> = SnapshotFields {
        name: "snap",
        namespace: "team",
    };

    #[rstest]
    #[case(&[], Ok(None))]
    #[case(&[(PARAM_SECRET_NAME, "s"), (PARAM_SECRET_NAMESPACE, "ns")], Ok(Some(("s", "ns"))))]
    #[case(&[(PARAM_SECRET_NAME, "${volumesnapshot.name}-${volumesnapshotcontent.name}"), (PARAM_SECRET_NAMESPACE, "${volumesnapshot.namespace}")], Ok(Some(("snap-snapcontent-1", "team"))))]
    #[case(&[(PARAM_SECRET_NAME, "s")], Err("failed to get name and namespace template from params: either name and namespace for Snapshotter secrets specified, Both must be specified"))]
    #[case(&[(PARAM_SECRET_NAME, ""), (PARAM_SECRET_NAMESPACE, "ns")], Err("failed to get name and namespace template from params: Snapshotter secrets specified in parameters but value of either namespace or name is empty"))]
    #[case(&[(PARAM_SECRET_NAME, "s"), (PARAM_SECRET_NAMESPACE, "${volumesnapshot.name}")], Err("error resolving value \"${volumesnapshot.name}\": invalid tokens: [\"volumesnapshot.name\"]"))]
    #[case(&[(PARAM_SECRET_NAME, "S_x"), (PARAM_SECRET_NAMESPACE, "ns")], Err("\"S_x\" is not a valid secret name"))]
    #[case(&[(PARAM_SECRET_NAME, "s"), (PARAM_SECRET_NAMESPACE, "${volumesnapshot.namespace}.x")], Err("\"${volumesnapshot.namespace}.x\" resolved to \"team.x\" which is not a valid namespace name"))]
    fn snapshotter_secret(
        #[case] params: &[(&str, &str)],
        #[case] want: Result<Option<(&str, &str)>, &str>,
    ) {
        let got = secret_reference(
            SecretKind::Snapshotter,
            &map(params),
            "snapcontent-1",
            Some(SNAP),
        );
        let want = want
            .map(|o| {
                o.map(|(n, ns)| SecretRef {
                    name: n.into(),
                    namespace: ns.into(),
                })
            })
            .map_err(str::to_string);
        assert_eq!(got, want);
    }

    #[test]
    fn the_list_secret_knows_only_the_content() {
        let params = map(&[
            (PARAM_LIST_SECRET_NAME, "${volumesnapshot.name}"),
            (PARAM_LIST_SECRET_NAMESPACE, "ns"),
        ]);
        assert_eq!(
            secret_reference(SecretKind::SnapshotterList, &params, "c", None),
            Err("error resolving value \"${volumesnapshot.name}\": invalid tokens: [\"volumesnapshot.name\"]".into())
        );
    }

    #[test]
    fn stripping_removes_secret_keys_of_both_kinds_and_refuses_others() {
        let params = map(&[
            (PARAM_SECRET_NAME, "a"),
            (PARAM_GROUP_GET_SECRET_NAMESPACE, "b"),
            ("csiLegacy", "kept"),
            ("type", "fast"),
        ]);
        assert_eq!(
            strip_prefixed(&params),
            Ok(map(&[("csiLegacy", "kept"), ("type", "fast")]))
        );
        assert_eq!(
            strip_prefixed(&map(&[("csi.storage.k8s.io/fstype", "ext4")])),
            Err("found unknown parameter key \"csi.storage.k8s.io/fstype\" with reserved namespace csi.storage.k8s.io/".into())
        );
    }

    #[test]
    fn group_secrets_take_the_group_tokens() {
        let params = map(&[
            (
                PARAM_GROUP_SECRET_NAME,
                "${volumegroupsnapshot.name}-${volumegroupsnapshotcontent.name}",
            ),
            (
                PARAM_GROUP_SECRET_NAMESPACE,
                "${volumegroupsnapshot.namespace}",
            ),
        ]);
        let group = SnapshotFields {
            name: "g",
            namespace: "team",
        };
        assert_eq!(
            secret_reference(SecretKind::GroupSnapshotter, &params, "gc", Some(group)),
            Ok(Some(SecretRef {
                name: "g-gc".into(),
                namespace: "team".into()
            }))
        );
        let snapshot_tokens = map(&[
            (PARAM_GROUP_GET_SECRET_NAME, "${volumesnapshotcontent.name}"),
            (PARAM_GROUP_GET_SECRET_NAMESPACE, "ns"),
        ]);
        assert!(
            secret_reference(
                SecretKind::GroupSnapshotterGet,
                &snapshot_tokens,
                "gc",
                None
            )
            .is_err()
        );
    }

    #[test]
    fn member_names_are_upstreams_hashes() {
        // sha256("uid1vol1") by another implementation (`sha256sum`).
        let hex = "6dcf94eb9159ab1660e3aafcd2fc63ed73d06d07b87e83d6faba109c453b7f95";
        assert_eq!(
            member_names("uid1", "vol1"),
            (format!("snapshot-{hex}"), format!("snapcontent-{hex}"))
        );
        assert_eq!(group_content_name("u"), "groupsnapcontent-u");
    }

    #[rstest]
    #[case(None, "snapshot-6f1c-22")]
    #[case(Some(3), "snapshot-6f1")]
    #[case(Some(40), "snapshot-6f1c22")]
    #[case(Some(0), "snapshot-")]
    fn snapshot_names(#[case] length: Option<usize>, #[case] want: &str) {
        assert_eq!(snapshot_name("snapshot", "6f1c-22", length).unwrap(), want);
        assert!(snapshot_name("snapshot", "", length).is_err());
    }
}
