//! Pure builders of the CSI requests, as external-attacher builds them
//! (`pkg/controller/util.go`, `csi_handler.go`, csi-lib-utils `accessmodes`).
//!
//! Every error is a `String` with upstream's exact text, because it ends up verbatim in
//! `status.attachError.message` / `status.detachError.message`, which users and runbooks read.

use std::collections::{BTreeMap, HashMap};

use csi::v1;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolume, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};

use crate::constants::NODE_ID_ANNOTATION;

/// What the attacher knows of the driver and its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// GetPluginInfo name; compared exactly with `spec.attacher`.
    pub name: String,
    /// `external-attacher/<sanitized name>`.
    pub finalizer: String,
    /// PUBLISH_UNPUBLISH_VOLUME: without it the trivial handler is used.
    pub publish_unpublish: bool,
    /// PUBLISH_READONLY: without it `readonly` is always false.
    pub publish_readonly: bool,
    /// SINGLE_NODE_MULTI_WRITER: changes the access-mode mapping.
    pub single_node_multi_writer: bool,
    /// LIST_VOLUMES and LIST_VOLUMES_PUBLISHED_NODES: the ListVolumes sync runs.
    pub list_published_nodes: bool,
    /// `--default-fstype`.
    pub default_fstype: String,
}

/// The volume a VolumeAttachment is about, resolved from its source.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The spec carrying the CSI source: the PV's, or the inline one.
    pub spec: &'a PersistentVolumeSpec,
    /// `spec.csi` of it.
    pub csi: &'a CSIPersistentVolumeSource,
}

/// Secret reference of ControllerPublish/Unpublish.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// Resolves the CSI source of `spec` (upstream `getCSISource`).
pub fn csi_source(spec: &PersistentVolumeSpec) -> Result<Source<'_>, String> {
    match &spec.csi {
        Some(csi) => Ok(Source { spec, csi }),
        None => Err("pv spec contained non-csi source that was not migrated".to_string()),
    }
}

/// Resolves an inline source (`spec.source.inlineVolumeSpec`).
pub fn inline_source(spec: &PersistentVolumeSpec) -> Result<Source<'_>, String> {
    match &spec.csi {
        Some(csi) => Ok(Source { spec, csi }),
        None => Err("inline volume spec contains nil CSI source".to_string()),
    }
}

/// The message of a PV missing from the informer, as client-go's lister reports it.
pub fn pv_not_found(name: &str) -> String {
    format!("persistentvolume {name:?} not found")
}

/// The secret reference of ControllerPublish/Unpublish (`controllerPublishSecretRef`).
pub fn secret_ref(csi: &CSIPersistentVolumeSource) -> Option<SecretRef> {
    csi.controller_publish_secret_ref
        .as_ref()
        .map(|r| SecretRef {
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
        })
}

/// The message of a failed Secret GET (`getCredentialsFromPV`).
pub fn secret_error(r: &SecretRef, error: &dyn std::fmt::Display) -> String {
    format!(
        "failed to load secret \"{}/{}\": {error}",
        r.namespace, r.name
    )
}

/// The volume capability (`GetVolumeCapabilities`): block for Block mode, else mount with
/// `spec.csi.fsType`, or `--default-fstype` when that is empty, and the PV's mount options.
pub fn volume_capability(
    spec: &PersistentVolumeSpec,
    csi: &CSIPersistentVolumeSource,
    driver: &DriverInfo,
) -> Result<v1::VolumeCapability, String> {
    use v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        let fs_type = match csi.fs_type.as_deref() {
            Some(fs) if !fs.is_empty() => fs.to_string(),
            _ => driver.default_fstype.clone(),
        };
        AccessType::Mount(MountVolume {
            fs_type,
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let mode = csi::access_mode::from_kubernetes(
        spec.access_modes.as_deref().unwrap_or_default(),
        driver.single_node_multi_writer,
    )?;
    Ok(v1::VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

/// Why the node ID could not be found.
pub fn csinode_not_found(node: &str) -> String {
    format!("csinode.storage.k8s.io {node:?} not found")
}

/// The node ID of `driver` in `csinode` (`getNodeID`); on detach, `fallback` is the VA whose
/// `csi.alpha.kubernetes.io/node-id` annotation is the last resort.
pub fn node_id(
    driver: &str,
    node: &str,
    csinode: Option<&CSINode>,
    fallback: Option<&VolumeAttachment>,
) -> Result<String, String> {
    let error = match csinode {
        Some(c) => match c.spec.drivers.iter().find(|d| d.name == driver) {
            Some(d) => return Ok(d.node_id.clone()),
            None => format!("CSINode {node} does not contain driver {driver}"),
        },
        None => csinode_not_found(node),
    };
    fallback
        .and_then(|va| va.metadata.annotations.as_ref()?.get(NODE_ID_ANNOTATION))
        .cloned()
        .ok_or(error)
}

fn to_hash(map: Option<&BTreeMap<String, String>>) -> HashMap<String, String> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The ControllerPublishVolume request. `readonly` is `spec.csi.readOnly`, forced to false
/// without PUBLISH_READONLY; access modes never set it.
pub fn publish_request(
    source: Source<'_>,
    driver: &DriverInfo,
    node_id: String,
    secrets: HashMap<String, String>,
) -> Result<v1::ControllerPublishVolumeRequest, String> {
    let capability = volume_capability(source.spec, source.csi, driver)?;
    Ok(v1::ControllerPublishVolumeRequest {
        volume_id: source.csi.volume_handle.clone(),
        node_id,
        volume_capability: Some(capability),
        readonly: driver.publish_readonly && source.csi.read_only.unwrap_or(false),
        secrets,
        volume_context: to_hash(source.csi.volume_attributes.as_ref()),
    })
}

/// The ControllerUnpublishVolume request.
pub fn unpublish_request(
    source: Source<'_>,
    node_id: String,
    secrets: HashMap<String, String>,
) -> v1::ControllerUnpublishVolumeRequest {
    v1::ControllerUnpublishVolumeRequest {
        volume_id: source.csi.volume_handle.clone(),
        node_id,
        secrets,
    }
}

/// The PV name of a VA's source, if it names one.
pub fn pv_name(va: &VolumeAttachment) -> Option<&str> {
    va.spec.source.persistent_volume_name.as_deref()
}

/// Whether a PV belongs to `driver` (`spec.csi.driver`).
pub fn pv_is_ours(pv: &PersistentVolume, driver: &str) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| c.driver == driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::SecretReference;
    use k8s_openapi::api::storage::v1::{CSINodeDriver, CSINodeSpec};
    use rstest::rstest;

    pub(crate) fn driver(readonly: bool, smmw: bool) -> DriverInfo {
        DriverInfo {
            name: "hostpath.csi.k8s.io".into(),
            finalizer: "external-attacher/hostpath-csi-k8s-io".into(),
            publish_unpublish: true,
            publish_readonly: readonly,
            single_node_multi_writer: smmw,
            list_published_nodes: false,
            default_fstype: "ext4".into(),
        }
    }

    fn spec(modes: &[&str], block: bool, fs: Option<&str>, ro: bool) -> PersistentVolumeSpec {
        PersistentVolumeSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            volume_mode: Some(if block { "Block" } else { "Filesystem" }.into()),
            mount_options: Some(vec!["noatime".into()]),
            csi: Some(CSIPersistentVolumeSource {
                driver: "hostpath.csi.k8s.io".into(),
                volume_handle: "vol-1".into(),
                fs_type: fs.map(Into::into),
                read_only: Some(ro),
                volume_attributes: Some(BTreeMap::from([("a".into(), "b".into())])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[rstest]
    // fsType from the PV wins; default only when empty; never for Block.
    #[case(false, Some("xfs"), Some("xfs"))]
    #[case(false, None, Some("ext4"))]
    #[case(false, Some(""), Some("ext4"))]
    #[case(true, None, None)]
    fn capability_fstype(
        #[case] block: bool,
        #[case] fs: Option<&str>,
        #[case] want: Option<&str>,
    ) {
        use v1::volume_capability::AccessType;
        let s = spec(&["ReadWriteOnce"], block, fs, false);
        let cap = volume_capability(&s, s.csi.as_ref().unwrap(), &driver(false, false)).unwrap();
        match (cap.access_type.unwrap(), want) {
            (AccessType::Mount(m), Some(fs)) => {
                assert_eq!(m.fs_type, fs);
                assert_eq!(m.mount_flags, ["noatime"]);
            }
            (AccessType::Block(_), None) => {}
            (other, want) => panic!("got {other:?}, want fs {want:?}"),
        }
    }

    #[rstest]
    #[case(true, true, &["ReadWriteOnce"], true)]
    #[case(false, true, &["ReadWriteOnce"], false)] // no PUBLISH_READONLY: forced false
    #[case(true, false, &["ReadOnlyMany"], false)] // ROX never sets readonly
    fn readonly_rules(
        #[case] cap: bool,
        #[case] pv_ro: bool,
        #[case] modes: &[&str],
        #[case] want: bool,
    ) {
        let s = spec(modes, false, None, pv_ro);
        let src = csi_source(&s).unwrap();
        let req = publish_request(src, &driver(cap, false), "n1".into(), HashMap::new()).unwrap();
        assert_eq!(req.readonly, want);
        assert_eq!(req.volume_id, "vol-1");
        assert_eq!(req.node_id, "n1");
        assert_eq!(req.volume_context.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn secret_refs_and_errors() {
        let mut s = spec(&["ReadWriteOnce"], false, None, false);
        assert_eq!(secret_ref(s.csi.as_ref().unwrap()), None);
        s.csi.as_mut().unwrap().controller_publish_secret_ref = Some(SecretReference {
            name: Some("creds".into()),
            namespace: Some("ns".into()),
        });
        let r = secret_ref(s.csi.as_ref().unwrap()).unwrap();
        assert_eq!(
            r,
            SecretRef {
                namespace: "ns".into(),
                name: "creds".into()
            }
        );
        assert_eq!(
            secret_error(&r, &"secrets \"creds\" not found"),
            "failed to load secret \"ns/creds\": secrets \"creds\" not found"
        );
    }

    #[test]
    fn sources_without_csi() {
        let s = PersistentVolumeSpec::default();
        assert_eq!(
            csi_source(&s).unwrap_err(),
            "pv spec contained non-csi source that was not migrated"
        );
        assert_eq!(
            inline_source(&s).unwrap_err(),
            "inline volume spec contains nil CSI source"
        );
        assert_eq!(pv_not_found("pv1"), "persistentvolume \"pv1\" not found");
    }

    fn csinode(drivers: &[(&str, &str)]) -> CSINode {
        CSINode {
            metadata: kube::api::ObjectMeta {
                name: Some("node1".into()),
                ..Default::default()
            },
            spec: CSINodeSpec {
                drivers: drivers
                    .iter()
                    .map(|(n, id)| CSINodeDriver {
                        name: n.to_string(),
                        node_id: id.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            },
            ..Default::default()
        }
    }

    fn va_with_annotation(id: Option<&str>) -> VolumeAttachment {
        let mut va = VolumeAttachment::default();
        va.metadata.annotations =
            id.map(|id| BTreeMap::from([(NODE_ID_ANNOTATION.to_string(), id.to_string())]));
        va
    }

    #[test]
    fn node_id_lookup_and_fallback() {
        let d = "hostpath.csi.k8s.io";
        let ours = csinode(&[("other", "x"), (d, "id-1")]);
        let theirs = csinode(&[("other", "x")]);
        let ann = va_with_annotation(Some("id-ann"));
        let bare = va_with_annotation(None);
        // Attach: CSINode only.
        assert_eq!(node_id(d, "node1", Some(&ours), None), Ok("id-1".into()));
        assert_eq!(
            node_id(d, "node1", None, None),
            Err("csinode.storage.k8s.io \"node1\" not found".into())
        );
        assert_eq!(
            node_id(d, "node1", Some(&theirs), None),
            Err(format!("CSINode node1 does not contain driver {d}"))
        );
        // Detach: CSINode first, then the annotation.
        assert_eq!(
            node_id(d, "node1", Some(&ours), Some(&ann)),
            Ok("id-1".into())
        );
        assert_eq!(
            node_id(d, "node1", Some(&theirs), Some(&ann)),
            Ok("id-ann".into())
        );
        assert_eq!(node_id(d, "node1", None, Some(&ann)), Ok("id-ann".into()));
        assert_eq!(
            node_id(d, "node1", None, Some(&bare)),
            Err("csinode.storage.k8s.io \"node1\" not found".into())
        );
    }
}
