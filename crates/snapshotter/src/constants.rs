//! The strings other software reads, with external-snapshotter v8.6's values
//! (`pkg/utils/util.go`, `pkg/common-controller`, `pkg/sidecar-controller`).

/// On every live VolumeSnapshot: its deletion waits while a claim is being restored from it.
pub const FIN_SNAPSHOT_AS_SOURCE: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
/// On a bound VolumeSnapshot whose content's policy is Delete, until the content is gone.
pub const FIN_SNAPSHOT_BOUND: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
/// On a member of a group snapshot.
pub const FIN_SNAPSHOT_IN_GROUP: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-in-group-protection";
/// On a bound content: added by the common controller, removed by the CSI half.
pub const FIN_CONTENT_BOUND: &str =
    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
/// On a claim while a snapshot of it is not ready.
pub const FIN_PVC_AS_SOURCE: &str = "snapshot.storage.kubernetes.io/pvc-as-source-protection";

/// On a content: its snapshot is being deleted, so the CSI half may act on the content's deletion.
pub const ANN_BEING_DELETED: &str = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted";
/// On a content: a CreateSnapshot call is in flight or its outcome is unknown.
pub const ANN_BEING_CREATED: &str = "snapshot.storage.kubernetes.io/volumesnapshot-being-created";
/// The Secret the CSI half uses for CreateSnapshot and DeleteSnapshot, frozen on the content.
pub const ANN_SECRET_NAME: &str = "snapshot.storage.kubernetes.io/deletion-secret-name";
pub const ANN_SECRET_NAMESPACE: &str = "snapshot.storage.kubernetes.io/deletion-secret-namespace";
/// On a member content of a group snapshot (note the `k8s.io` group): never CreateSnapshot.
pub const ANN_GROUP_SNAPSHOT_HANDLE: &str =
    "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle";
/// The default class of its driver, when exactly `"true"`.
pub const ANN_DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// The value of the being-created and being-deleted annotations.
pub const YES: &str = "yes";

/// Class parameters naming the Secret of CreateSnapshot/DeleteSnapshot.
pub const PARAM_SECRET_NAME: &str = "csi.storage.k8s.io/snapshotter-secret-name";
pub const PARAM_SECRET_NAMESPACE: &str = "csi.storage.k8s.io/snapshotter-secret-namespace";
/// Class parameters naming the Secret of ListSnapshots.
pub const PARAM_LIST_SECRET_NAME: &str = "csi.storage.k8s.io/snapshotter-list-secret-name";
pub const PARAM_LIST_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/snapshotter-list-secret-namespace";
/// The group snapshot keys, also stripped from a VolumeSnapshotClass's parameters.
pub const PARAM_GROUP_SECRET_NAME: &str = "csi.storage.k8s.io/group-snapshotter-secret-name";
pub const PARAM_GROUP_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/group-snapshotter-secret-namespace";
pub const PARAM_GROUP_GET_SECRET_NAME: &str =
    "csi.storage.k8s.io/group-snapshotter-get-secret-name";
pub const PARAM_GROUP_GET_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/group-snapshotter-get-secret-namespace";
/// Reserved prefix of class parameters.
pub const CSI_PARAMETER_PREFIX: &str = "csi.storage.k8s.io/";

/// `--extra-create-metadata` parameters.
pub const PARAM_META_SNAPSHOT_NAME: &str = "csi.storage.k8s.io/volumesnapshot/name";
pub const PARAM_META_SNAPSHOT_NAMESPACE: &str = "csi.storage.k8s.io/volumesnapshot/namespace";
pub const PARAM_META_CONTENT_NAME: &str = "csi.storage.k8s.io/volumesnapshotcontent/name";

/// Secret template tokens.
pub const TOKEN_CONTENT_NAME: &str = "volumesnapshotcontent.name";
pub const TOKEN_SNAPSHOT_NAME: &str = "volumesnapshot.name";
pub const TOKEN_SNAPSHOT_NAMESPACE: &str = "volumesnapshot.namespace";

/// A dynamic content is `snapcontent-<VolumeSnapshot UID>`.
pub const CONTENT_NAME_PREFIX: &str = "snapcontent-";

/// Upstream's queue names (client-go `workqueue_*` metrics).
pub const QUEUE_SNAPSHOTS: &str = "snapshot-controller-snapshot";
pub const QUEUE_CONTENTS: &str = "snapshot-controller-content";
pub const QUEUE_SIDECAR_CONTENTS: &str = "csi-snapshotter-content";

/// Event source components.
pub const COMPONENT_COMMON: &str = "snapshot-controller";

/// The CSI half's Event component: `csi-snapshotter <driver>`.
pub fn sidecar_component(driver: &str) -> String {
    format!("csi-snapshotter {driver}")
}

// Event reasons of the common controller.
pub const REASON_CREATING: &str = "CreatingSnapshot";
pub const REASON_CREATED: &str = "SnapshotCreated";
pub const REASON_READY: &str = "SnapshotReady";
pub const REASON_GET_CLASS_FAILED: &str = "GetSnapshotClassFailed";
pub const REASON_DEFAULT_CLASS_FAILED: &str = "SetDefaultSnapshotClassFailed";
pub const REASON_VALIDATION: &str = "SnapshotValidationError";
pub const REASON_FINALIZER_ERROR: &str = "SnapshotFinalizerError";
pub const REASON_PVC_FINALIZER_ERROR: &str = "ErrorPVCFinalizer";
pub const REASON_CONTENT_MISSING: &str = "SnapshotContentMissing";
pub const REASON_CONTENT_MISMATCH: &str = "SnapshotContentMismatch";
pub const REASON_CONTENT_MISBOUND: &str = "SnapshotContentMisbound";
pub const REASON_MISBOUND: &str = "SnapshotMisbound";
pub const REASON_HANDLE_SET: &str = "SnapshotHandleSet";
pub const REASON_BIND_FAILED: &str = "SnapshotBindFailed";
pub const REASON_STATUS_UPDATE_FAILED: &str = "SnapshotStatusUpdateFailed";
pub const REASON_PVC_SOURCE_MISSING: &str = "SnapshotPVCSourceMissing";
pub const REASON_CONTENT_CREATION_FAILED: &str = "SnapshotContentCreationFailed";
pub const REASON_CREATE_CONTENT_FAILED: &str = "CreateSnapshotContentFailed";
pub const REASON_DELETE_PENDING: &str = "SnapshotDeletePending";
pub const REASON_CONTENT_DELETE_ERROR: &str = "SnapshotContentObjectDeleteError";
pub const REASON_CONTENT_VALIDATION: &str = "ContentValidationError";

// Event reasons of the CSI half.
pub const REASON_CREATION_FAILED: &str = "SnapshotCreationFailed";
pub const REASON_CHECK_FAILED: &str = "SnapshotContentCheckandUpdateFailed";
pub const REASON_DELETE_ERROR: &str = "SnapshotDeleteError";

/// `snapshot_controller_operation_total_seconds` operation names.
pub const OP_CREATE: &str = "CreateSnapshot";
pub const OP_CREATE_AND_READY: &str = "CreateSnapshotAndReady";
pub const OP_DELETE: &str = "DeleteSnapshot";

// Group snapshots (`groupsnapshot.storage.k8s.io`).

/// On a bound VolumeGroupSnapshot, until its content is gone (whatever the policy).
pub const FIN_GROUP_BOUND: &str =
    "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection";
/// On a bound VolumeGroupSnapshotContent: added by the common controller, removed by the CSI half.
pub const FIN_GROUP_CONTENT_BOUND: &str =
    "groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection";
/// On a group content: its group snapshot is being deleted.
pub const ANN_GROUP_BEING_DELETED: &str =
    "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted";
/// On a group content: a CreateVolumeGroupSnapshot call is in flight or its outcome unknown.
pub const ANN_GROUP_BEING_CREATED: &str =
    "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-created";
/// The Secret of Create/DeleteVolumeGroupSnapshot, frozen on the group content.
pub const ANN_GROUP_SECRET_NAME: &str = "groupsnapshot.storage.kubernetes.io/deletion-secret-name";
pub const ANN_GROUP_SECRET_NAMESPACE: &str =
    "groupsnapshot.storage.kubernetes.io/deletion-secret-namespace";
/// The default group class of its driver, when exactly `"true"`.
pub const ANN_DEFAULT_GROUP_CLASS: &str = "groupsnapshot.storage.kubernetes.io/is-default-class";

/// `--extra-create-metadata` parameters of CreateVolumeGroupSnapshot.
pub const PARAM_META_GROUP_NAME: &str = "csi.storage.k8s.io/volumegroupsnapshot/name";
pub const PARAM_META_GROUP_NAMESPACE: &str = "csi.storage.k8s.io/volumegroupsnapshot/namespace";
pub const PARAM_META_GROUP_CONTENT_NAME: &str =
    "csi.storage.k8s.io/volumegroupsnapshotcontent/name";

/// Group secret template tokens.
pub const TOKEN_GROUP_CONTENT_NAME: &str = "volumegroupsnapshotcontent.name";
pub const TOKEN_GROUP_NAME: &str = "volumegroupsnapshot.name";
pub const TOKEN_GROUP_NAMESPACE: &str = "volumegroupsnapshot.namespace";

/// A dynamic group content is `groupsnapcontent-<VolumeGroupSnapshot UID>`.
pub const GROUP_CONTENT_NAME_PREFIX: &str = "groupsnapcontent-";

pub const QUEUE_GROUP_SNAPSHOTS: &str = "snapshot-controller-group-snapshot";
pub const QUEUE_GROUP_CONTENTS: &str = "snapshot-controller-group-content";
pub const QUEUE_SIDECAR_GROUP_CONTENTS: &str = "csi-snapshotter-groupsnapshotcontent";

// Event reasons of the common controller's group half.
pub const REASON_GROUP_VALIDATION: &str = "GroupSnapshotValidationError";
pub const REASON_GROUP_FINALIZER_ERROR: &str = "GroupSnapshotFinalizerError";
pub const REASON_GROUP_GET_CLASS_FAILED: &str = "GetGroupSnapshotClassFailed";
pub const REASON_GROUP_DEFAULT_CLASS_FAILED: &str = "SetDefaultGroupSnapshotClassFailed";
pub const REASON_GROUP_CONTENT_MISSING: &str = "GroupSnapshotContentMissing";
pub const REASON_GROUP_CONTENT_MISMATCH: &str = "GroupSnapshotContentMismatch";
pub const REASON_GROUP_CONTENT_MISBOUND: &str = "GroupSnapshotContentMisbound";
pub const REASON_GROUP_MISBOUND: &str = "GroupSnapshotMisbound";
pub const REASON_GROUP_HANDLE_SET: &str = "GroupSnapshotHandleSet";
pub const REASON_GROUP_BIND_FAILED: &str = "GroupSnapshotBindFailed";
pub const REASON_GROUP_STATUS_UPDATE_FAILED: &str = "GroupSnapshotStatusUpdateFailed";
pub const REASON_GROUP_CONTENT_CREATION_FAILED: &str = "GroupSnapshotContentCreationFailed";
pub const REASON_CREATE_GROUP_CONTENT_FAILED: &str = "CreateGroupSnapshotContentFailed";
pub const REASON_CREATING_GROUP: &str = "CreatingGroupSnapshot";
pub const REASON_GROUP_CREATED: &str = "GroupSnapshotCreated";
pub const REASON_GROUP_READY: &str = "GroupSnapshotReady";
pub const REASON_GROUP_CONTENT_DELETE_ERROR: &str = "GroupSnapshotContentObjectDeleteError";
pub const REASON_GROUP_CONTENT_VALIDATION: &str = "GroupContentValidationError";
/// A member could not be deleted with its group (upstream reuses the CSI half's reason).
pub const REASON_MEMBER_DELETE_ERROR: &str = "SnapshotDeleteError";

// Event reasons of the CSI half's group half.
pub const REASON_GROUP_CREATION_FAILED: &str = "GroupSnapshotCreationFailed";
pub const REASON_GROUP_CHECK_FAILED: &str = "GroupSnapshotContentCheckandUpdateFailed";
pub const REASON_GROUP_DELETE_ERROR: &str = "GroupSnapshotDeleteError";

/// `snapshot_controller_operation_total_seconds` group operation names.
pub const OP_CREATE_GROUP: &str = "CreateGroupSnapshot";
pub const OP_CREATE_GROUP_AND_READY: &str = "CreateGroupSnapshotAndReady";
pub const OP_DELETE_GROUP: &str = "DeleteGroupSnapshot";
