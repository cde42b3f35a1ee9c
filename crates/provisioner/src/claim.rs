//! Which claims are ours and when to provision them (upstream `ShouldProvision` of the CSI
//! provisioner and `shouldProvision` / `provisionClaimOperation` of the library), and the volume
//! name (`makeVolumeName`). Pure functions over the PVC and StorageClass.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;

use crate::constants::*;

fn annotation<'a>(pvc: &'a PersistentVolumeClaim, key: &str) -> Option<&'a str> {
    crate::meta::annotation(&pvc.metadata, key)
}

/// The provisioner the claim asks for: the GA annotation, or the beta one only when the GA key is
/// absent (even an empty GA value wins).
pub fn requested_provisioner(pvc: &PersistentVolumeClaim) -> Option<&str> {
    annotation(pvc, ANN_STORAGE_PROVISIONER)
        .or_else(|| annotation(pvc, ANN_BETA_STORAGE_PROVISIONER))
}

/// Whether the claim is for `driver`: by the provisioner annotation or `pv.kubernetes.io/migrated-to`.
pub fn is_for_driver(pvc: &PersistentVolumeClaim, driver: &str) -> bool {
    requested_provisioner(pvc) == Some(driver) || annotation(pvc, ANN_MIGRATED_TO) == Some(driver)
}

/// The claim's class (`GetPersistentVolumeClaimClass`): the beta annotation if present, else
/// `spec.storageClassName`, else "".
pub fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    if let Some(c) = annotation(pvc, ANN_BETA_STORAGE_CLASS) {
        return c.to_string();
    }
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// The node the scheduler selected (GA annotation, else the alpha one); `None` when empty.
pub fn selected_node(pvc: &PersistentVolumeClaim) -> Option<&str> {
    annotation(pvc, ANN_SELECTED_NODE)
        .or_else(|| annotation(pvc, ANN_ALPHA_SELECTED_NODE))
        .filter(|n| !n.is_empty())
}

/// Whether the claim is being deleted.
pub fn is_deleting(pvc: &PersistentVolumeClaim) -> bool {
    pvc.metadata.deletion_timestamp.is_some()
}

/// What to do with a claim that has no recorded intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Provision it now.
    Provision {
        /// The node the scheduler selected, if any.
        selected_node: Option<String>,
    },
    /// Not ours, already bound, or not ready (WaitForFirstConsumer without a selected node).
    Skip(&'static str),
    /// Ours, but its StorageClass is not (yet) known: retry with backoff.
    MissingClass(String),
}

/// Upstream's claim selection. `class` is the claim's class looked up by [`claim_class`].
pub fn select(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    driver: &str,
) -> Selection {
    let spec = pvc.spec.as_ref();
    if spec
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
    {
        return Selection::Skip("the claim is bound");
    }
    if !is_for_driver(pvc, driver) {
        return Selection::Skip("the claim is for another provisioner");
    }
    // LIB requires the provisioner annotation itself to be a known name.
    if requested_provisioner(pvc) != Some(driver) {
        return Selection::Skip("the claim's provisioner annotation is not ours");
    }
    let Some(class) = class else {
        return Selection::MissingClass(format!("storageClass \"{}\" not found", claim_class(pvc)));
    };
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && annotation(pvc, ANN_SELECTED_NODE).is_none_or(str::is_empty)
    {
        return Selection::Skip("waiting for the scheduler to select a node");
    }
    if class.provisioner != driver {
        return Selection::Skip("the claim's StorageClass is for another provisioner");
    }
    Selection::Provision {
        selected_node: selected_node(pvc).map(str::to_string),
    }
}

/// Upstream `makeVolumeName`: `<prefix>-<uid>`, or with `uuid_length >= 0` the UID without
/// dashes cut to that many characters. Used as the CSI name and the PV name.
pub fn volume_name(prefix: &str, uid: &str, uuid_length: i64) -> Result<String, String> {
    if prefix.is_empty() {
        return Err("volume name prefix cannot be of length 0".to_string());
    }
    if uid.is_empty() {
        return Err("corrupted PVC object, it is missing UID".to_string());
    }
    if uuid_length == -1 {
        return Ok(format!("{prefix}-{uid}"));
    }
    let stripped = uid.replace('-', "");
    // Upstream panics here (slice out of range); we refuse instead.
    let n = usize::try_from(uuid_length)
        .ok()
        .filter(|n| *n <= stripped.len())
        .ok_or_else(|| {
            format!("--volume-name-uuid-length={uuid_length} is out of range for PVC UID {uid}")
        })?;
    Ok(format!("{prefix}-{}", &stripped[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
    use kube::api::ObjectMeta;
    use rstest::rstest;

    const DRIVER: &str = "hostpath.csi.k8s.io";

    fn pvc(annotations: &[(&str, &str)], volume_name: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("ns".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some("sc".into()),
                volume_name: volume_name.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn class(provisioner: &str, mode: Option<&str>) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("sc".into()),
                ..Default::default()
            },
            provisioner: provisioner.into(),
            volume_binding_mode: mode.map(Into::into),
            ..Default::default()
        }
    }

    const GA: &str = ANN_STORAGE_PROVISIONER;
    const BETA: &str = ANN_BETA_STORAGE_PROVISIONER;

    #[rstest]
    #[case::ga(&[(GA, DRIVER)], None, Some(class(DRIVER, None)), "provision")]
    #[case::beta_only(&[(BETA, DRIVER)], None, Some(class(DRIVER, None)), "provision")]
    #[case::ga_wins_even_empty(&[(GA, ""), (BETA, DRIVER)], None, Some(class(DRIVER, None)), "skip")]
    #[case::ga_other(&[(GA, "other"), (BETA, DRIVER)], None, Some(class(DRIVER, None)), "skip")]
    #[case::no_annotation(&[], None, Some(class(DRIVER, None)), "skip")]
    #[case::bound(&[(GA, DRIVER)], Some("pv"), Some(class(DRIVER, None)), "skip")]
    #[case::missing_class(&[(GA, DRIVER)], None, None, "missing")]
    #[case::class_of_other_driver(&[(GA, DRIVER)], None, Some(class("other", None)), "skip")]
    #[case::wffc_without_node(&[(GA, DRIVER)], None, Some(class(DRIVER, Some("WaitForFirstConsumer"))), "skip")]
    #[case::wffc_with_empty_node(&[(GA, DRIVER), (ANN_SELECTED_NODE, "")], None, Some(class(DRIVER, Some("WaitForFirstConsumer"))), "skip")]
    #[case::wffc_with_alpha_node_only(&[(GA, DRIVER), (ANN_ALPHA_SELECTED_NODE, "n")], None, Some(class(DRIVER, Some("WaitForFirstConsumer"))), "skip")]
    #[case::wffc_with_node(&[(GA, DRIVER), (ANN_SELECTED_NODE, "n")], None, Some(class(DRIVER, Some("WaitForFirstConsumer"))), "provision")]
    #[case::immediate(&[(GA, DRIVER)], None, Some(class(DRIVER, Some("Immediate"))), "provision")]
    // migrated-to alone passes the CSI check, but LIB wants the provisioner annotation known.
    #[case::migrated_to_only(&[(GA, "kubernetes.io/gce-pd"), (ANN_MIGRATED_TO, DRIVER)], None, Some(class(DRIVER, None)), "skip")]
    fn claim_selection(
        #[case] annotations: &[(&str, &str)],
        #[case] volume_name: Option<&str>,
        #[case] class: Option<StorageClass>,
        #[case] want: &str,
    ) {
        let got = select(&pvc(annotations, volume_name), class.as_ref(), DRIVER);
        let kind = match got {
            Selection::Provision { .. } => "provision",
            Selection::Skip(_) => "skip",
            Selection::MissingClass(_) => "missing",
        };
        assert_eq!(kind, want, "{got:?}");
    }

    #[test]
    fn selected_node_and_class_lookup() {
        let p = pvc(
            &[
                (ANN_ALPHA_SELECTED_NODE, "old"),
                (ANN_BETA_STORAGE_CLASS, "beta-sc"),
            ],
            None,
        );
        assert_eq!(selected_node(&p), Some("old"));
        assert_eq!(claim_class(&p), "beta-sc");
        let p = pvc(
            &[(ANN_SELECTED_NODE, "n"), (ANN_ALPHA_SELECTED_NODE, "old")],
            None,
        );
        assert_eq!(selected_node(&p), Some("n"));
        assert_eq!(claim_class(&p), "sc");
    }

    const UID: &str = "3f0a5b6c-1d2e-4f30-8a9b-0c1d2e3f4a5b";

    #[rstest]
    #[case("pvc", UID, -1, Ok("pvc-3f0a5b6c-1d2e-4f30-8a9b-0c1d2e3f4a5b"))]
    #[case("pvc", UID, 8, Ok("pvc-3f0a5b6c"))]
    #[case("vol", UID, 32, Ok("vol-3f0a5b6c1d2e4f308a9b0c1d2e3f4a5b"))]
    #[case("pvc", UID, 0, Ok("pvc-"))]
    #[case("", UID, -1, Err("volume name prefix cannot be of length 0"))]
    #[case("pvc", "", -1, Err("corrupted PVC object, it is missing UID"))]
    fn volume_names(
        #[case] prefix: &str,
        #[case] uid: &str,
        #[case] len: i64,
        #[case] want: Result<&str, &str>,
    ) {
        assert_eq!(
            volume_name(prefix, uid, len),
            want.map(String::from).map_err(String::from)
        );
    }

    #[test]
    fn out_of_range_uuid_length_is_an_error_not_a_panic() {
        assert!(volume_name("pvc", UID, 33).is_err());
        assert!(volume_name("pvc", UID, -2).is_err());
    }
}
