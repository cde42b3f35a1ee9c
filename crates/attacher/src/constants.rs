//! Names that other software reads, with external-attacher v4.12's values: the finalizer (and
//! how it is built from the driver name), the node-id annotation, queue names and metric names.
//! Nothing here is configurable; changing a value breaks compatibility with objects written by
//! the Go sidecar.

/// Prefix of the finalizer put on VolumeAttachments and PersistentVolumes
/// (`pkg/controller/util.go` `GetFinalizerName`).
pub const FINALIZER_PREFIX: &str = "external-attacher/";

/// Annotation on a VolumeAttachment recording the CSI node ID it was published to, so a detach
/// works after the node's CSINode is gone (`vaNodeIDAnnotation`).
pub const NODE_ID_ANNOTATION: &str = "csi.alpha.kubernetes.io/node-id";

/// Controller name in logs and `csi_controller_*` metrics.
pub const CONTROLLER_NAME: &str = "attacher";

/// Work queue of VolumeAttachments to attach (no deletionTimestamp). Upstream has one queue,
/// `csi-attacher-va`; we split it so that detaches and attaches do not starve each other.
pub const ATTACH_QUEUE: &str = "csi-attacher-va-attach";
/// Work queue of VolumeAttachments to detach (deletionTimestamp set).
pub const DETACH_QUEUE: &str = "csi-attacher-va-detach";
/// Work queue of PersistentVolumes whose finalizer may be removed (upstream's name).
pub const PV_QUEUE: &str = "csi-attacher-pv";

/// Counter of detaches finished because the Node object is gone and the driver answered
/// NOT_FOUND (see the crate docs, "Deleted nodes").
pub const DELETED_NODE_DETACHES_METRIC: &str = "csi_attacher_deleted_node_detaches";

/// The driver name as upstream's `SanitizeDriverName`: every character outside `[a-zA-Z0-9-]`
/// becomes `-`, and an `X` is appended if the result ends in `-` — the same rule as the Lease
/// names', so it is the kit's.
pub fn sanitize_driver_name(driver: &str) -> String {
    controller_kit::leader::sanitize_name(driver)
}

/// The finalizer this driver puts on VolumeAttachments and PersistentVolumes.
pub fn finalizer_name(driver: &str) -> String {
    format!("{FINALIZER_PREFIX}{}", sanitize_driver_name(driver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("hostpath.csi.k8s.io", "external-attacher/hostpath-csi-k8s-io")]
    #[case("example.com/x", "external-attacher/example-com-x")]
    #[case("driver-", "external-attacher/driver-X")]
    #[case("a_b.", "external-attacher/a-b-X")]
    #[case("ünïcode", "external-attacher/-n-code")]
    fn finalizer_names_match_upstream(#[case] driver: &str, #[case] want: &str) {
        assert_eq!(finalizer_name(driver), want);
    }
}
