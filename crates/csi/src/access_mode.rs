//! Kubernetes access modes as a CSI access mode (csi-lib-utils `accessmodes.ToCSIAccessMode`),
//! the same for every controller that builds a volume capability from a PV.

use std::collections::BTreeSet;

use crate::v1::volume_capability::access_mode::Mode;

/// Upstream's access-mode mapping (csi-lib-utils `accessmodes.ToCSIAccessMode`).
pub fn from_kubernetes(modes: &[String], single_node_multi_writer: bool) -> Result<Mode, String> {
    let set: BTreeSet<&str> = modes.iter().map(String::as_str).collect();
    let has = |m: &str| set.contains(m);
    if has("ReadWriteOncePod") {
        if set.len() > 1 {
            return Err("Kubernetes does not support use of ReadWriteOncePod with other access modes on the same PersistentVolume".to_string());
        }
        return Ok(if single_node_multi_writer {
            Mode::SingleNodeSingleWriter
        } else {
            Mode::SingleNodeWriter
        });
    }
    if has("ReadWriteMany") {
        return Ok(Mode::MultiNodeMultiWriter);
    }
    if has("ReadOnlyMany") && has("ReadWriteOnce") {
        return Err(
            "CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume"
                .to_string(),
        );
    }
    if has("ReadOnlyMany") {
        return Ok(Mode::MultiNodeReaderOnly);
    }
    if has("ReadWriteOnce") {
        return Ok(if single_node_multi_writer {
            Mode::SingleNodeMultiWriter
        } else {
            Mode::SingleNodeWriter
        });
    }
    // Go prints the slice with %+v: `[A B]`.
    Err(format!(
        "unsupported AccessMode combination: [{}]",
        modes.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(&["ReadWriteOnce"], false, Ok(Mode::SingleNodeWriter))]
    #[case(&["ReadWriteOnce"], true, Ok(Mode::SingleNodeMultiWriter))]
    #[case(&["ReadWriteOncePod"], false, Ok(Mode::SingleNodeWriter))]
    #[case(&["ReadWriteOncePod"], true, Ok(Mode::SingleNodeSingleWriter))]
    #[case(&["ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce"], false, Ok(Mode::MultiNodeMultiWriter))]
    #[case(&["ReadOnlyMany"], true, Ok(Mode::MultiNodeReaderOnly))]
    #[case(&["ReadOnlyMany", "ReadWriteOnce"], false, Err("CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume"))]
    #[case(&["ReadWriteOncePod", "ReadWriteOnce"], true, Err("Kubernetes does not support use of ReadWriteOncePod with other access modes on the same PersistentVolume"))]
    #[case(&[], false, Err("unsupported AccessMode combination: []"))]
    #[case(&["Bogus", "Other"], false, Err("unsupported AccessMode combination: [Bogus Other]"))]
    fn access_modes(#[case] modes: &[&str], #[case] smmw: bool, #[case] want: Result<Mode, &str>) {
        let modes: Vec<String> = modes.iter().map(|m| m.to_string()).collect();
        assert_eq!(from_kubernetes(&modes, smmw), want.map_err(str::to_string));
    }
}
