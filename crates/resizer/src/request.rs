//! The ControllerExpandVolume request, built from the PV as upstream's `csiResizer.Resize`:
//! the volume handle, `required_bytes` only (no limit), the PV's volume capability (no default
//! fstype), and the data of `spec.csi.controllerExpandSecretRef`, read by the caller.

use std::collections::BTreeMap;

use csi::v1;
use k8s_openapi::api::core::v1::PersistentVolume;

/// A Secret reference: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The PV's `spec.csi.controllerExpandSecretRef`.
pub fn expand_secret(pv: &PersistentVolume) -> Option<SecretRef> {
    let r = pv
        .spec
        .as_ref()?
        .csi
        .as_ref()?
        .controller_expand_secret_ref
        .as_ref()?;
    Some(SecretRef {
        namespace: r.namespace.clone().unwrap_or_default(),
        name: r.name.clone().unwrap_or_default(),
    })
}

/// The error text of a failed Secret read (`getCredentials`).
pub fn secret_error(r: &SecretRef, error: &dyn std::fmt::Display) -> String {
    format!(
        "error getting secret {} in namespace {}: {error}",
        r.name, r.namespace
    )
}

/// The volume capability (`GetVolumeCapabilities`): block for Block mode, else mount with the
/// PV's fsType (empty if none) and mount options; the access mode per SINGLE_NODE_MULTI_WRITER.
pub fn volume_capability(
    pv: &PersistentVolume,
    single_node_multi_writer: bool,
) -> Result<v1::VolumeCapability, String> {
    use v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let spec = pv.spec.as_ref().ok_or("the PV has no spec")?;
    let source = spec.csi.as_ref().ok_or("CSI volume source was nil")?;
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: source.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let mode = csi::access_mode::from_kubernetes(
        spec.access_modes.as_deref().unwrap_or_default(),
        single_node_multi_writer,
    )?;
    Ok(v1::VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    })
}

/// The ControllerExpandVolume request for `pv` to `required_bytes`. Errors are upstream's texts.
pub fn expand_request(
    pv: &PersistentVolume,
    required_bytes: i64,
    secrets: BTreeMap<String, String>,
    single_node_multi_writer: bool,
) -> Result<v1::ControllerExpandVolumeRequest, String> {
    let name = pv.metadata.name.as_deref().unwrap_or_default();
    let handle = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .ok_or_else(|| format!("volume {name} is not migrated to CSI"))?;
    if handle.is_empty() {
        return Err("empty volume handle".into());
    }
    let capability = volume_capability(pv, single_node_multi_writer)
        .map_err(|e| format!("failed to get capabilities of volume {name} with {e}"))?;
    Ok(v1::ControllerExpandVolumeRequest {
        volume_id: handle,
        capacity_range: Some(v1::CapacityRange {
            required_bytes,
            limit_bytes: 0,
        }),
        secrets: secrets.into_iter().collect(),
        volume_capability: Some(capability),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        CSIPersistentVolumeSource, PersistentVolumeSpec, SecretReference,
    };
    use v1::volume_capability::access_mode::Mode;
    use v1::volume_capability::{AccessType, MountVolume};

    fn pv(block: bool, fs: Option<&str>) -> PersistentVolume {
        PersistentVolume {
            metadata: kube::api::ObjectMeta {
                name: Some("pv-1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                volume_mode: Some(if block { "Block" } else { "Filesystem" }.into()),
                mount_options: Some(vec!["noatime".into()]),
                csi: Some(CSIPersistentVolumeSource {
                    driver: "d".into(),
                    volume_handle: "vol-1".into(),
                    fs_type: fs.map(Into::into),
                    controller_expand_secret_ref: Some(SecretReference {
                        name: Some("s".into()),
                        namespace: Some("ns".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn the_request_carries_what_upstream_sends() {
        let secrets = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let r = expand_request(&pv(false, None), 2 << 30, secrets, true).unwrap();
        assert_eq!(r.volume_id, "vol-1");
        assert_eq!(
            r.capacity_range,
            Some(v1::CapacityRange {
                required_bytes: 2 << 30,
                limit_bytes: 0
            })
        );
        assert_eq!(r.secrets.get("k").map(String::as_str), Some("v"));
        let cap = r.volume_capability.unwrap();
        assert_eq!(
            cap.access_type,
            Some(AccessType::Mount(MountVolume {
                fs_type: String::new(),
                mount_flags: vec!["noatime".into()],
                ..Default::default()
            }))
        );
        assert_eq!(
            cap.access_mode.unwrap().mode,
            Mode::SingleNodeMultiWriter as i32
        );
        assert_eq!(
            expand_secret(&pv(false, None)),
            Some(SecretRef {
                namespace: "ns".into(),
                name: "s".into()
            })
        );
    }

    #[test]
    fn block_and_bad_volumes() {
        let r = expand_request(&pv(true, Some("xfs")), 1, BTreeMap::new(), false).unwrap();
        assert!(matches!(
            r.volume_capability.unwrap().access_type,
            Some(AccessType::Block(_))
        ));
        let mut empty = pv(false, None);
        empty
            .spec
            .as_mut()
            .unwrap()
            .csi
            .as_mut()
            .unwrap()
            .volume_handle = String::new();
        assert_eq!(
            expand_request(&empty, 1, BTreeMap::new(), false),
            Err("empty volume handle".into())
        );
        let mut in_tree = pv(false, None);
        in_tree.spec.as_mut().unwrap().csi = None;
        assert_eq!(
            expand_request(&in_tree, 1, BTreeMap::new(), false),
            Err("volume pv-1 is not migrated to CSI".into())
        );
    }
}
