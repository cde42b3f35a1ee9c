//! Names other software reads: annotation keys, finalizers, event reasons, StorageClass parameter
//! keys and template tokens, all with external-provisioner v6.3's values (`pkg/controller/
//! controller.go` and sig-storage-lib-external-provisioner v13 `controller/controller.go`), plus
//! the few names of our own no-leak design, which live under our own domain.

// --- PVC annotations read by the provisioner -------------------------------------------------

/// Which provisioner must provision the claim (set by kube-controller-manager).
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The beta form of [`ANN_STORAGE_PROVISIONER`], read only when the GA key is absent.
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// A claim (or PV) migrated from an in-tree plugin to this CSI driver.
pub const ANN_MIGRATED_TO: &str = "pv.kubernetes.io/migrated-to";
/// The node the scheduler picked for a WaitForFirstConsumer claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The old form of [`ANN_SELECTED_NODE`], read when the GA key is absent.
pub const ANN_ALPHA_SELECTED_NODE: &str = "volume.alpha.kubernetes.io/selected-node";
/// The claim's class, preferred over `spec.storageClassName` when present.
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

// --- PV annotations and finalizer written by the provisioner ---------------------------------

/// The provisioner that created the PV (`sc.provisioner`).
pub const ANN_DYNAMICALLY_PROVISIONED: &str = "pv.kubernetes.io/provisioned-by";
/// Name of the provisioner secret DeleteVolume needs; always written, empty when unused.
pub const ANN_DELETION_SECRET_NAME: &str = "volume.kubernetes.io/provisioner-deletion-secret-name";
/// Namespace of the provisioner secret DeleteVolume needs; always written, empty when unused.
pub const ANN_DELETION_SECRET_NAMESPACE: &str =
    "volume.kubernetes.io/provisioner-deletion-secret-namespace";
/// Name of the ControllerModify secret (read by the external-resizer); only when configured.
pub const ANN_MODIFY_SECRET_NAME: &str = "volume.kubernetes.io/controller-modify-secret-name";
/// Namespace of the ControllerModify secret; only when configured.
pub const ANN_MODIFY_SECRET_NAMESPACE: &str =
    "volume.kubernetes.io/controller-modify-secret-namespace";
/// The PV finalizer that keeps a Delete-policy PV until its volume is deleted (LIB `finalizerPV`).
pub const FINALIZER_PV: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// Volume attribute carrying the provisioner's identity (`provisionerIDKey`).
pub const VOLUME_ATTR_PROVISIONER_IDENTITY: &str = "storage.kubernetes.io/csiProvisionerIdentity";

// --- Data sources ---------------------------------------------------------------------------------

/// Finalizer on a PVC that is the source of a clone in progress.
pub const FINALIZER_CLONE_PROTECTION: &str = "provisioner.storage.kubernetes.io/cloning-protection";
/// Finalizer on a VolumeSnapshot that is the source of a restore in progress.
pub const FINALIZER_SNAPSHOT_SOURCE_PROTECTION: &str =
    "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection";
/// Annotation on a VolumeSnapshotContent allowing a restore into another volume mode.
pub const ANN_ALLOW_VOLUME_MODE_CHANGE: &str =
    "snapshot.storage.kubernetes.io/allow-volume-mode-change";
/// `kind` of a snapshot data source.
pub const SNAPSHOT_KIND: &str = "VolumeSnapshot";
/// `apiGroup` a snapshot data source must have.
pub const SNAPSHOT_API_GROUP: &str = "snapshot.storage.k8s.io";
/// `kind` of a clone data source.
pub const PVC_KIND: &str = "PersistentVolumeClaim";

// --- StorageClass parameters ---------------------------------------------------------------------

/// Parameters with this prefix are for the provisioner and are not passed to the driver.
pub const CSI_PARAMETER_PREFIX: &str = "csi.storage.k8s.io/";
/// The filesystem type.
pub const PARAM_FSTYPE: &str = "csi.storage.k8s.io/fstype";
/// The deprecated, case-insensitive filesystem-type key (passed through to the driver).
pub const PARAM_LEGACY_FSTYPE: &str = "fstype";
/// Default secret name for every secret kind that has none of its own.
pub const PARAM_DEFAULT_SECRET_NAME: &str = "csi.storage.k8s.io/secret-name";
/// Default secret namespace for every secret kind that has none of its own.
pub const PARAM_DEFAULT_SECRET_NAMESPACE: &str = "csi.storage.k8s.io/secret-namespace";
/// Provisioner secret (CreateVolume / DeleteVolume).
pub const PARAM_PROVISIONER_SECRET_NAME: &str = "csi.storage.k8s.io/provisioner-secret-name";
/// Provisioner secret namespace.
pub const PARAM_PROVISIONER_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/provisioner-secret-namespace";
/// ControllerPublish secret.
pub const PARAM_CONTROLLER_PUBLISH_SECRET_NAME: &str =
    "csi.storage.k8s.io/controller-publish-secret-name";
/// ControllerPublish secret namespace.
pub const PARAM_CONTROLLER_PUBLISH_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/controller-publish-secret-namespace";
/// NodeStage secret.
pub const PARAM_NODE_STAGE_SECRET_NAME: &str = "csi.storage.k8s.io/node-stage-secret-name";
/// NodeStage secret namespace.
pub const PARAM_NODE_STAGE_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/node-stage-secret-namespace";
/// NodePublish secret.
pub const PARAM_NODE_PUBLISH_SECRET_NAME: &str = "csi.storage.k8s.io/node-publish-secret-name";
/// NodePublish secret namespace.
pub const PARAM_NODE_PUBLISH_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/node-publish-secret-namespace";
/// ControllerExpand secret.
pub const PARAM_CONTROLLER_EXPAND_SECRET_NAME: &str =
    "csi.storage.k8s.io/controller-expand-secret-name";
/// ControllerExpand secret namespace.
pub const PARAM_CONTROLLER_EXPAND_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/controller-expand-secret-namespace";
/// NodeExpand secret.
pub const PARAM_NODE_EXPAND_SECRET_NAME: &str = "csi.storage.k8s.io/node-expand-secret-name";
/// NodeExpand secret namespace.
pub const PARAM_NODE_EXPAND_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/node-expand-secret-namespace";
/// ControllerModify secret.
pub const PARAM_CONTROLLER_MODIFY_SECRET_NAME: &str =
    "csi.storage.k8s.io/controller-modify-secret-name";
/// ControllerModify secret namespace.
pub const PARAM_CONTROLLER_MODIFY_SECRET_NAMESPACE: &str =
    "csi.storage.k8s.io/controller-modify-secret-namespace";

/// Deprecated provisioner secret name key (kept in the parameters sent to the driver).
pub const PARAM_DEPRECATED_PROVISIONER_SECRET_NAME: &str = "csiProvisionerSecretName";
/// Deprecated provisioner secret namespace key.
pub const PARAM_DEPRECATED_PROVISIONER_SECRET_NAMESPACE: &str = "csiProvisionerSecretNamespace";
/// Deprecated ControllerPublish secret name key.
pub const PARAM_DEPRECATED_CONTROLLER_PUBLISH_SECRET_NAME: &str = "csiControllerPublishSecretName";
/// Deprecated ControllerPublish secret namespace key.
pub const PARAM_DEPRECATED_CONTROLLER_PUBLISH_SECRET_NAMESPACE: &str =
    "csiControllerPublishSecretNamespace";
/// Deprecated NodeStage secret name key.
pub const PARAM_DEPRECATED_NODE_STAGE_SECRET_NAME: &str = "csiNodeStageSecretName";
/// Deprecated NodeStage secret namespace key.
pub const PARAM_DEPRECATED_NODE_STAGE_SECRET_NAMESPACE: &str = "csiNodeStageSecretNamespace";
/// Deprecated NodePublish secret name key.
pub const PARAM_DEPRECATED_NODE_PUBLISH_SECRET_NAME: &str = "csiNodePublishSecretName";
/// Deprecated NodePublish secret namespace key.
pub const PARAM_DEPRECATED_NODE_PUBLISH_SECRET_NAMESPACE: &str = "csiNodePublishSecretNamespace";

/// `--extra-create-metadata`: the claim's name.
pub const PARAM_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
/// `--extra-create-metadata`: the claim's namespace.
pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
/// `--extra-create-metadata`: the PV's name.
pub const PARAM_PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// Secret template token: the PV (and volume) name.
pub const TOKEN_PV_NAME: &str = "pv.name";
/// Secret template token: the claim's name (name templates only).
pub const TOKEN_PVC_NAME: &str = "pvc.name";
/// Secret template token: the claim's namespace.
pub const TOKEN_PVC_NAMESPACE: &str = "pvc.namespace";

// --- Event reasons ---------------------------------------------------------------------------------

/// Normal, on the PVC, before each provisioning attempt; and for external populators.
pub const REASON_PROVISIONING: &str = "Provisioning";
/// Warning, on the PVC, for every failed provisioning attempt.
pub const REASON_PROVISIONING_FAILED: &str = "ProvisioningFailed";
/// Normal, on the PVC, once the PV is saved.
pub const REASON_PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
/// Warning, on the PV, for every failed deletion attempt.
pub const REASON_VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
/// Ours (no upstream counterpart): a journal intent's rollback failed; on the journal ConfigMap.
pub const REASON_ROLLBACK_FAILED: &str = "VolumeRollbackFailed";
/// Ours: a journal intent whose rollback failed for `--intent-rollback-timeout` was given up; its
/// volume may be left on the driver. Warning, on the journal ConfigMap.
pub const REASON_ROLLBACK_ABANDONED: &str = "VolumeRollbackAbandoned";

/// The reporting controller (event source component) of our Events, as the provisioner library
/// names its recorder: `<driver>_<host>_<uuid>`, new for every process (sig-storage-lib-external-
/// provisioner `NewProvisionController`). Each process thus starts its own Event series, as
/// upstream's does.
pub fn event_component(driver: &str, host: &str, id: &uuid::Uuid) -> String {
    format!("{driver}_{host}_{id}")
}

// --- Our own names (the no-leak design, see README.md) ----------------------------------------

/// Finalizer an earlier version put on a PVC while a volume could exist for it and no PV recorded
/// it (today the journal holds the intent; such claims are taken over, see `intent`).
pub const FINALIZER_VOLUME_INTENT: &str = "provisioner.csi-controller-manager.io/volume-intent";
/// Annotation an earlier version put on the PVC with the intent (JSON of [`crate::Intent`]).
pub const ANN_VOLUME_INTENT: &str = "provisioner.csi-controller-manager.io/volume-intent";

/// Default `--volume-name-prefix`.
pub const DEFAULT_VOLUME_NAME_PREFIX: &str = "pvc";
/// Work queue of claims (upstream's name, for the `workqueue_*` metrics).
pub const QUEUE_CLAIMS: &str = "claims";
/// Work queue of volumes (upstream's name).
pub const QUEUE_VOLUMES: &str = "volumes";
