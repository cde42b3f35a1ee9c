//! Names that other software reads, with external-resizer v2.2's values: annotations, condition
//! types, `allocatedResourceStatuses` values, event reasons and texts, the queue name. Changing
//! one breaks compatibility with kubelet, kube-controller-manager or the Go sidecar.

/// PV annotation: the claim's `status.capacity` before an expansion that needs the node's part
/// (kube-controller-manager's PV controller reads it when binding).
pub const ANN_PRE_RESIZE_CAPACITY: &str = "volume.alpha.kubernetes.io/pre-resize-capacity";
/// PVC annotation (`"true"`), written through `/status`: the driver needs no node expansion, so
/// kubelet must not try one.
pub const ANN_NODE_EXPANSION_NOT_REQUIRED: &str =
    "volume.kubernetes.io/node-expansion-not-required";
/// PVC annotation naming the resizer of a migrated in-tree claim (set by kube-controller-manager).
pub const ANN_STORAGE_RESIZER: &str = "volume.kubernetes.io/storage-resizer";

/// The resource whose size is expanded.
pub const STORAGE: &str = "storage";

/// Condition: the controller expansion is under way.
pub const COND_RESIZING: &str = "Resizing";
/// Condition: the node's part of the expansion is pending.
pub const COND_FS_RESIZE_PENDING: &str = "FileSystemResizePending";
/// Condition: the controller expansion failed with a final error.
pub const COND_CONTROLLER_RESIZE_ERROR: &str = "ControllerResizeError";
/// Condition (written by kubelet): the node expansion failed.
pub const COND_NODE_RESIZE_ERROR: &str = "NodeResizeError";
/// The conditions that count as resize conditions when merging (`knownResizeConditions`).
pub const RESIZE_CONDITIONS: [&str; 4] = [
    COND_RESIZING,
    COND_FS_RESIZE_PENDING,
    COND_CONTROLLER_RESIZE_ERROR,
    COND_NODE_RESIZE_ERROR,
];
/// Message of the `FileSystemResizePending` condition.
pub const FS_RESIZE_PENDING_MESSAGE: &str =
    "Waiting for user to (re-)start a pod to finish file system resize of volume on node.";

/// `status.allocatedResourceStatuses.storage`: the controller is expanding (the target is pinned
/// to `allocatedResources` while the outcome is uncertain).
pub const CONTROLLER_RESIZE_IN_PROGRESS: &str = "ControllerResizeInProgress";
/// The controller expansion failed and cannot succeed at that size.
pub const CONTROLLER_RESIZE_INFEASIBLE: &str = "ControllerResizeInfeasible";
/// The controller part is done; kubelet is to expand on the node.
pub const NODE_RESIZE_PENDING: &str = "NodeResizePending";
/// Kubelet is expanding on the node (written only by kubelet).
pub const NODE_RESIZE_IN_PROGRESS: &str = "NodeResizeInProgress";
/// The node expansion failed and cannot succeed (written only by kubelet).
pub const NODE_RESIZE_INFEASIBLE: &str = "NodeResizeInfeasible";

/// Normal: an expansion is sent to the driver.
pub const REASON_RESIZING: &str = "Resizing";
/// Warning: an expansion failed, or is held because the volume is in use.
pub const REASON_RESIZE_FAILED: &str = "VolumeResizeFailed";
/// Normal: the node's part is needed.
pub const REASON_FS_RESIZE_REQUIRED: &str = "FileSystemResizeRequired";
/// Normal: the expansion is complete.
pub const REASON_RESIZE_SUCCESSFUL: &str = "VolumeResizeSuccessful";

/// Controller name in logs, metrics and permission reports.
pub const CONTROLLER_NAME: &str = "resizer";

/// The event source component, as upstream's recorder: `external-resizer <driver>`.
pub fn event_component(driver: &str) -> String {
    format!("external-resizer {driver}")
}

/// The work queue's name (and its metrics' label), as upstream's: `<driver>-pvc`.
pub fn queue_name(driver: &str) -> String {
    format!("{driver}-pvc")
}

// --- The modify controller (VolumeAttributesClass) ------------------------------------------

/// PV annotation naming the Secret of ControllerModifyVolume (with the namespace annotation).
pub const ANN_MODIFY_SECRET_NAME: &str = "volume.kubernetes.io/controller-modify-secret-name";
/// PV annotation naming the namespace of that Secret.
pub const ANN_MODIFY_SECRET_NAMESPACE: &str =
    "volume.kubernetes.io/controller-modify-secret-namespace";
/// `--extra-modify-metadata` keys added to the mutable parameters.
pub const PARAM_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
/// See [`PARAM_PVC_NAME`].
pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
/// See [`PARAM_PVC_NAME`].
pub const PARAM_PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// Condition: a modification is under way (or waits for a retry).
pub const COND_MODIFYING_VOLUME: &str = "ModifyingVolume";
/// Condition: the last ControllerModifyVolume failed; its reason is the gRPC code's name.
pub const COND_MODIFY_VOLUME_ERROR: &str = "ModifyVolumeError";

/// `status.modifyVolumeStatus.status`: the class does not exist (yet).
pub const MODIFY_PENDING: &str = "Pending";
/// The modification is under way, or failed and is retried.
pub const MODIFY_IN_PROGRESS: &str = "InProgress";
/// The driver refused the class's parameters (INVALID_ARGUMENT).
pub const MODIFY_INFEASIBLE: &str = "Infeasible";

/// Normal: a modification is sent to the driver.
pub const REASON_MODIFY: &str = "VolumeModify";
/// Warning: a modification failed, or its class does not exist.
pub const REASON_MODIFY_FAILED: &str = "VolumeModifyFailed";
/// Normal: the volume has the class's parameters.
pub const REASON_MODIFY_SUCCESSFUL: &str = "VolumeModifySuccessful";
/// Normal: the user cleared the class while the modification waited (upstream's spelling).
pub const REASON_MODIFY_CANCELED: &str = "VolumeModifyCanceled";

/// The modify controller's queue. Upstream names it `<driver>-pvc` as the resize controller's,
/// so their metrics mix; ours are told apart.
pub fn modify_queue_name(driver: &str) -> String {
    format!("{driver}-pvc-modify")
}
