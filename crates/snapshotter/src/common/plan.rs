//! The common controller's decisions (snapshot-controller, `pkg/common-controller`), as pure
//! functions of the cached objects: which step a VolumeSnapshot or a VolumeSnapshotContent
//! needs next, and the statuses and objects written. One step per pass; the pass is queued
//! again after a write, so the next step is decided on the written state.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::constants::*;
use crate::params::{self, SecretRef};
use crate::types::*;

/// Whether `meta` holds finalizer `f`.
pub fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    controller_kit::meta::has_finalizer(meta, f)
}

fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// `snapshot-controller`'s name for the snapshot in messages: `namespace/name`.
pub fn key(vs: &VolumeSnapshot) -> String {
    vs.key()
}

/// Whether the snapshot is a member of a group snapshot (an owner of kind VolumeGroupSnapshot
/// in the group snapshot API group, whatever its version: members written by earlier versions
/// carry a v1beta ownerRef).
pub fn is_group_member(vs: &VolumeSnapshot) -> bool {
    vs.metadata.owner_references.iter().flatten().any(|o| {
        o.kind == "VolumeGroupSnapshot"
            && o.api_version.starts_with("groupsnapshot.storage.k8s.io/")
    })
}

/// Upstream `IsSnapshotDeletionCandidate`.
pub fn is_deletion_candidate(vs: &VolumeSnapshot) -> bool {
    deleting(&vs.metadata)
        && (has_finalizer(&vs.metadata, FIN_SNAPSHOT_AS_SOURCE)
            || has_finalizer(&vs.metadata, FIN_SNAPSHOT_BOUND))
}

/// Upstream `IsVolumeSnapshotRefSet`: the content points at this snapshot by name, namespace
/// and UID.
pub fn ref_is_set(vs: &VolumeSnapshot, content: &VolumeSnapshotContent) -> bool {
    let r = &content.spec.volume_snapshot_ref;
    r.name == vs.metadata.name && r.namespace == vs.metadata.namespace && r.uid == vs.metadata.uid
}

/// The content a pass looks at: while deleting, the bound one (or the deterministic name of a
/// dynamic snapshot not bound yet); a ready and bound snapshot's bound one; a pre-provisioned
/// snapshot's named one; a group member's bound one; else `snapcontent-<uid>`.
pub fn content_name(vs: &VolumeSnapshot) -> Option<String> {
    let dynamic = || {
        vs.source_claim()
            .map(|_| params::content_name(vs.metadata.uid.as_deref().unwrap_or_default()))
    };
    if deleting(&vs.metadata) {
        return vs.bound_content().map(str::to_string).or_else(dynamic);
    }
    if vs.is_ready() && vs.bound_content().is_some() {
        return vs.bound_content().map(str::to_string);
    }
    if let Some(c) = vs.source_content() {
        return Some(c.to_string());
    }
    if is_group_member(vs) {
        return vs.bound_content().map(str::to_string);
    }
    dynamic()
}

/// A failure reported on the snapshot: its `status.error` (when the message is new) and a
/// Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    /// Also set `readyToUse` to false.
    pub not_ready: bool,
    /// Retry with backoff (else wait for the next change).
    pub retry: bool,
}

impl Failure {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            not_ready: true,
            retry: true,
        }
    }
}

/// The next step for a VolumeSnapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotStep {
    /// Nothing to do until something changes.
    Done,
    /// Report a failure.
    Fail(Failure),
    /// Deletion waits (an Event, and a retry).
    DeletePending { message: String },
    /// Mark the content with `volumesnapshot-being-deleted`.
    MarkContentBeingDeleted { content: String },
    /// Delete the content (policy Delete).
    DeleteContent { content: String },
    /// Remove the snapshot's finalizers (the claim's first, when it may go).
    RemoveFinalizers { bound: bool, in_group: bool },
    /// Add the missing finalizers.
    AddFinalizers { as_source: bool, bound: bool },
    /// Bind a pre-provisioned content: its ref's UID and the snapshot's class.
    BindContent {
        content: String,
        uid: String,
        class: Option<String>,
    },
    /// Write the status computed from the content.
    UpdateStatus(StatusUpdate),
    /// Create the dynamic content (the claim's finalizer first).
    CreateContent,
}

/// What the plan knows beyond the snapshot.
#[derive(Debug)]
pub struct SnapshotFacts<'a> {
    pub vs: &'a VolumeSnapshot,
    /// The content named by [`content_name`], if cached.
    pub content: Option<&'a VolumeSnapshotContent>,
    /// A Pending claim in the namespace is being restored from this snapshot.
    pub restoring: bool,
    /// The snapshot's group snapshot still exists (for a member).
    pub group_exists: bool,
    /// The group snapshot whose content holds the content's group handle (a member's
    /// `status.volumeGroupSnapshotName`).
    pub group_name: Option<&'a str>,
    /// Now, for error times.
    pub now: Time,
}

/// The next step for a snapshot being deleted (upstream `processSnapshotWithDeletionTimestamp`).
pub fn deletion_step(f: &SnapshotFacts<'_>) -> SnapshotStep {
    let vs = f.vs;
    if !is_deletion_candidate(vs) {
        return SnapshotStep::Done;
    }
    // Only a content that points back at this snapshot is touched.
    let content = f.content.filter(|c| ref_is_set(vs, c));
    if content.is_some() && f.restoring {
        return SnapshotStep::DeletePending {
            message: "Snapshot is being used to restore a PVC".into(),
        };
    }
    let group = vs
        .status
        .as_ref()
        .and_then(|s| s.volume_group_snapshot_name.as_deref());
    if let Some(g) = group
        && f.group_exists
    {
        return SnapshotStep::DeletePending {
            message: format!(
                "deletion of the individual volume snapshot {} is not allowed as it belongs to group snapshot {}/{g}. Deleting the group snapshot will trigger the deletion of all the individual volume snapshots that are part of the group.",
                key(vs),
                vs.metadata.namespace.as_deref().unwrap_or_default()
            ),
        };
    }
    let delete_content = content.is_some_and(|c| c.spec.deletion_policy == DeletionPolicy::Delete);
    if let Some(c) = content {
        if controller_kit::meta::annotation(&c.metadata, ANN_BEING_DELETED) != Some(YES) {
            return SnapshotStep::MarkContentBeingDeleted {
                content: c.name().to_string(),
            };
        }
        if delete_content && !deleting(&c.metadata) {
            return SnapshotStep::DeleteContent {
                content: c.name().to_string(),
            };
        }
    }
    SnapshotStep::RemoveFinalizers {
        // Kept while the content is being deleted: its disappearance releases the snapshot.
        bound: !delete_content,
        in_group: group.is_some(),
    }
}

/// The next step for a live snapshot whose class is resolved (upstream `syncSnapshot` after
/// the claim's finalizer check).
pub fn live_step(f: &SnapshotFacts<'_>) -> SnapshotStep {
    let vs = f.vs;
    let name = vs.metadata.name.as_deref().unwrap_or_default();
    let src = &vs.spec.source;
    if src.persistent_volume_claim_name.is_some() == src.volume_snapshot_content_name.is_some() {
        return SnapshotStep::Fail(Failure::new(
            REASON_VALIDATION,
            "Exactly one of PersistentVolumeClaimName and VolumeSnapshotContentName should be specified",
        ));
    }
    let member = is_group_member(vs);
    // The content's kind and binding are checked whenever it is looked at.
    if let Some(c) = f.content
        && !member
    {
        if let Some(wanted) = vs.source_content() {
            if c.spec.source.snapshot_handle.is_none() {
                return SnapshotStep::Fail(Failure::new(
                    REASON_CONTENT_MISMATCH,
                    "VolumeSnapshotContent is dynamically provisioned while expecting a pre-provisioned one",
                ));
            }
            let r = &c.spec.volume_snapshot_ref;
            let uid = r.uid.as_deref().unwrap_or_default();
            if r.name.as_deref() != Some(name)
                || r.namespace != vs.metadata.namespace
                || (!uid.is_empty() && Some(uid) != vs.metadata.uid.as_deref())
            {
                return SnapshotStep::Fail(Failure::new(
                    REASON_CONTENT_MISBOUND,
                    format!("VolumeSnapshotContent [{wanted}] is bound to a different snapshot"),
                ));
            }
        } else if !(vs.is_ready() && vs.bound_content().is_some()) {
            if c.spec.source.volume_handle.is_none() {
                return SnapshotStep::Fail(Failure::new(
                    REASON_CONTENT_MISMATCH,
                    format!(
                        "VolumeSnapshotContent {} is pre-provisioned while expecting a dynamically provisioned one",
                        c.name()
                    ),
                ));
            }
            if !ref_is_set(vs, c) {
                return SnapshotStep::Fail(Failure::new(
                    REASON_CONTENT_MISBOUND,
                    format!(
                        "VolumeSnapshotContent [{}] is bound to a different snapshot",
                        c.name()
                    ),
                ));
            }
        }
    }
    // Finalizers: as-source on every live snapshot, bound once bound to a content whose policy
    // is Delete.
    let as_source = !has_finalizer(&vs.metadata, FIN_SNAPSHOT_AS_SOURCE);
    let bound = f
        .content
        .is_some_and(|c| c.spec.deletion_policy == DeletionPolicy::Delete)
        && vs.bound_content().is_some()
        && !has_finalizer(&vs.metadata, FIN_SNAPSHOT_BOUND);
    if as_source || bound {
        return SnapshotStep::AddFinalizers { as_source, bound };
    }
    if vs.is_ready() && vs.bound_content().is_some() {
        return match f.content {
            None => SnapshotStep::Fail(Failure {
                retry: false,
                ..Failure::new(REASON_CONTENT_MISSING, "VolumeSnapshotContent is missing")
            }),
            Some(c) if !ref_is_set(vs, c) => SnapshotStep::Fail(Failure {
                retry: false,
                ..Failure::new(
                    REASON_MISBOUND,
                    "VolumeSnapshotContent is not bound to the VolumeSnapshot correctly",
                )
            }),
            Some(_) => SnapshotStep::Done,
        };
    }
    let status = |c: &VolumeSnapshotContent| match status_with_group(vs, c, f.group_name) {
        Some(u) => SnapshotStep::UpdateStatus(u),
        None => SnapshotStep::Done,
    };
    if let Some(wanted) = vs.source_content() {
        return match f.content {
            None => SnapshotStep::Fail(Failure::new(
                REASON_CONTENT_MISSING,
                "VolumeSnapshotContent is missing",
            )),
            Some(c) => {
                // Upstream patches the UID (and the snapshot's class, if it names one) while
                // either is missing, then updates the status in the same pass; a bind that
                // would change nothing (no class on either side) goes on to the status here,
                // or the snapshot would wait for an event that never comes.
                let uid = c.snapshot_uid();
                let class_missing = c.spec.volume_snapshot_class_name.is_none()
                    && vs.spec.volume_snapshot_class_name.is_some();
                if uid.is_empty() || class_missing {
                    SnapshotStep::BindContent {
                        content: wanted.to_string(),
                        uid: vs.metadata.uid.clone().unwrap_or_default(),
                        class: vs.spec.volume_snapshot_class_name.clone(),
                    }
                } else {
                    status(c)
                }
            }
        };
    }
    if member {
        // Members are created bound by the group snapshot's controller; wait for the content.
        return match f.content {
            Some(c) => status(c),
            None => SnapshotStep::Done,
        };
    }
    match f.content {
        Some(c) if c.spec.source.snapshot_handle.is_some() => SnapshotStep::Fail(Failure::new(
            REASON_HANDLE_SET,
            format!(
                "Snapshot handle should not be set in content {} for dynamic provisioning",
                key(vs)
            ),
        )),
        Some(c) => status(c),
        None if vs.source_claim().is_none() => SnapshotStep::Fail(Failure::new(
            REASON_PVC_SOURCE_MISSING,
            format!("PVC source for snapshot {} is missing", key(vs)),
        )),
        None => SnapshotStep::CreateContent,
    }
}

/// A status to write, and what it means.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub status: VolumeSnapshotStatus,
    /// `creationTime` appears: the snapshot was cut (`SnapshotCreated`).
    pub created: bool,
    /// `readyToUse` turns true (`SnapshotReady`).
    pub ready: bool,
}

/// Unix nanoseconds as a `Time` (which the API writes with seconds precision).
pub fn time_from_nanos(ns: i64) -> Time {
    Time(jiff::Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// Bytes as a Quantity, as `resource.NewQuantity(n, BinarySI)` prints it.
pub fn quantity(bytes: i64) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        controller_kit::quantity::format_binary_si(bytes),
    )
}

fn is_zero(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> bool {
    controller_kit::quantity::parse_bytes(&q.0) == Some(0)
}

/// Upstream `updateSnapshotStatus`: the snapshot's status after the content's, or `None` when
/// nothing changes. `creationTime` is written once; `restoreSize` once, or when it was zero and
/// a size arrives; `readyToUse` follows the content (turning true clears the error); the error
/// follows the content's (compared by value, where upstream rewrites it every pass).
pub fn status_update(vs: &VolumeSnapshot, content: &VolumeSnapshotContent) -> Option<StatusUpdate> {
    let cs = content.status.clone().unwrap_or_default();
    let ready = cs.ready_to_use.unwrap_or(false);
    let old = vs.status.clone();
    let mut st = old.clone().unwrap_or_default();
    if st.bound_volume_snapshot_content_name.is_none() {
        st.bound_volume_snapshot_content_name = Some(content.name().to_string());
    }
    if st.creation_time.is_none() {
        st.creation_time = cs.creation_time.map(time_from_nanos);
    }
    if st.ready_to_use != Some(ready) {
        st.ready_to_use = Some(ready);
        if ready {
            st.error = None;
        }
    }
    if let Some(size) = cs.restore_size
        && (st.restore_size.is_none()
            || (st.restore_size.as_ref().is_some_and(is_zero) && size > 0))
    {
        st.restore_size = Some(quantity(size));
    }
    if st.error != cs.error {
        st.error = cs.error.clone();
    }
    if Some(&st) == old.as_ref() {
        return None;
    }
    let was_created = old.as_ref().is_some_and(|s| s.creation_time.is_some());
    let was_ready = old.as_ref().and_then(|s| s.ready_to_use) == Some(true);
    Some(StatusUpdate {
        created: !was_created && st.creation_time.is_some(),
        ready: !was_ready && st.ready_to_use == Some(true),
        status: st,
    })
}

/// [`status_update`], and `volumeGroupSnapshotName` once the content's group is known.
fn status_with_group(
    vs: &VolumeSnapshot,
    content: &VolumeSnapshotContent,
    group: Option<&str>,
) -> Option<StatusUpdate> {
    let mut update = status_update(vs, content);
    let named = vs
        .status
        .as_ref()
        .is_some_and(|s| s.volume_group_snapshot_name.is_some());
    if let Some(g) = group
        && !named
    {
        let u = update.get_or_insert_with(|| StatusUpdate {
            status: vs.status.clone().unwrap_or_default(),
            created: false,
            ready: false,
        });
        u.status.volume_group_snapshot_name = Some(g.to_string());
    }
    update
}

/// Upstream `updateSnapshotErrorStatusWithEvent`: the status with `error` set, or `None` when
/// the same message is already there.
pub fn error_status(
    vs: &VolumeSnapshot,
    message: &str,
    not_ready: bool,
    now: Time,
) -> Option<VolumeSnapshotStatus> {
    let mut st = vs.status.clone().unwrap_or_default();
    if st.error.as_ref().and_then(|e| e.message.as_deref()) == Some(message) {
        return None;
    }
    st.error = Some(VolumeSnapshotError {
        time: Some(now),
        message: Some(message.to_string()),
    });
    if not_ready {
        st.ready_to_use = Some(false);
    }
    Some(st)
}

/// A full reference to the snapshot (`ref.GetReference`): the content's `volumeSnapshotRef`, and
/// the object of the snapshot's Events.
pub fn snapshot_reference(vs: &VolumeSnapshot) -> ObjectReference {
    ObjectReference {
        api_version: Some(API_VERSION.into()),
        kind: Some("VolumeSnapshot".into()),
        name: vs.metadata.name.clone(),
        namespace: vs.metadata.namespace.clone(),
        uid: vs.metadata.uid.clone(),
        resource_version: vs.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// What a dynamic content is made from.
#[derive(Debug)]
pub struct ContentInput<'a> {
    pub vs: &'a VolumeSnapshot,
    pub class: &'a VolumeSnapshotClass,
    /// The source volume's CSI handle.
    pub volume_handle: &'a str,
    /// The source PV's `volumeMode`, with `--prevent-volume-mode-conversion`.
    pub volume_mode: Option<String>,
    pub secret: Option<SecretRef>,
    /// Label `snapshot.storage.kubernetes.io/managed-by` (distributed snapshotting).
    pub managed_by: Option<String>,
}

/// Upstream `createSnapshotContent`'s object: `snapcontent-<uid>`, referring to the snapshot
/// (with its UID and resourceVersion), policy and driver from the class, the frozen secret.
pub fn new_content(input: &ContentInput<'_>) -> VolumeSnapshotContent {
    let vs = input.vs;
    let name = params::content_name(vs.metadata.uid.as_deref().unwrap_or_default());
    let mut annotations = BTreeMap::new();
    if let Some(s) = &input.secret {
        annotations.insert(ANN_SECRET_NAME.to_string(), s.name.clone());
        annotations.insert(ANN_SECRET_NAMESPACE.to_string(), s.namespace.clone());
    }
    VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: (!annotations.is_empty()).then_some(annotations),
            labels: input.managed_by.as_ref().map(|n| {
                BTreeMap::from([(
                    "snapshot.storage.kubernetes.io/managed-by".to_string(),
                    n.clone(),
                )])
            }),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            volume_snapshot_ref: snapshot_reference(vs),
            deletion_policy: input.class.deletion_policy,
            driver: input.class.driver.clone(),
            volume_snapshot_class_name: input.class.metadata.name.clone(),
            source: VolumeSnapshotContentSource {
                volume_handle: Some(input.volume_handle.to_string()),
                snapshot_handle: None,
            },
            source_volume_mode: input.volume_mode.clone(),
        },
        status: None,
    }
}

/// Upstream `isPVCBeingUsed`: whether a snapshot in `snapshots` (of the claim's namespace),
/// other than `skip`, takes a snapshot of `claim` and is not ready.
pub fn claim_in_use<'a>(
    claim: &str,
    snapshots: impl IntoIterator<Item = &'a VolumeSnapshot>,
    skip: Option<&str>,
) -> bool {
    snapshots.into_iter().any(|s| {
        skip.is_none_or(|n| s.metadata.name.as_deref() != Some(n))
            && s.source_claim() == Some(claim)
            && !s.is_ready()
    })
}

/// Upstream `isVolumeBeingCreatedFromSnapshot`: a Pending claim whose `dataSource` is this
/// snapshot (`dataSourceRef` is not looked at, as upstream).
pub fn restores_from(pvc: &PersistentVolumeClaim, snapshot: &str) -> bool {
    let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    let from = pvc
        .spec
        .as_ref()
        .and_then(|s| s.data_source.as_ref())
        .is_some_and(|d| {
            d.kind == "VolumeSnapshot"
                && d.api_group.as_deref() == Some(GROUP)
                && d.name == snapshot
        });
    pending && from
}

/// The next step for a content, from the common controller's side (upstream `syncContent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentStep {
    Done,
    /// The spec names both or neither source: an Event and a retry.
    Invalid,
    /// Add `volumesnapshotcontent-bound-protection`.
    AddFinalizer,
    /// Mark it `volumesnapshot-being-deleted` (its snapshot is being deleted).
    MarkBeingDeleted,
}

/// `vs` is the snapshot the content refers to, if cached with the same UID. Returns the step
/// and whether the snapshot should be synced (its status lags the content's).
pub fn content_step(
    content: &VolumeSnapshotContent,
    vs: Option<&VolumeSnapshot>,
) -> (ContentStep, bool) {
    let src = &content.spec.source;
    if src.volume_handle.is_some() == src.snapshot_handle.is_some() {
        return (ContentStep::Invalid, false);
    }
    if content.snapshot_uid().is_empty() {
        return (ContentStep::Done, false);
    }
    if !deleting(&content.metadata) && !has_finalizer(&content.metadata, FIN_CONTENT_BOUND) {
        return (ContentStep::AddFinalizer, false);
    }
    let vs = vs.filter(|v| v.metadata.uid.as_deref() == Some(content.snapshot_uid()));
    let sync = vs.is_some_and(|v| needs_status_sync(v, content));
    // A content whose snapshot is gone is never deleted: that could lose data.
    if let Some(v) = vs
        && is_deletion_candidate(v)
        && controller_kit::meta::annotation(&content.metadata, ANN_BEING_DELETED) != Some(YES)
    {
        return (ContentStep::MarkBeingDeleted, sync);
    }
    (ContentStep::Done, sync)
}

/// Upstream `needsUpdateSnapshotStatus`, comparing values, and also the error of a snapshot not
/// ready yet (upstream's pointer comparison of `readyToUse` makes every content change sync the
/// snapshot, which is how its errors reach the snapshot there).
pub fn needs_status_sync(vs: &VolumeSnapshot, content: &VolumeSnapshotContent) -> bool {
    let Some(cs) = &content.status else {
        return false;
    };
    let Some(s) = &vs.status else {
        return true;
    };
    s.bound_volume_snapshot_content_name.is_none()
        || (s.creation_time.is_none() && cs.creation_time.is_some())
        || (s.ready_to_use.is_none() && cs.ready_to_use.is_some())
        || (s.ready_to_use.is_some()
            && cs.ready_to_use.is_some()
            && s.ready_to_use != cs.ready_to_use)
        || (s.restore_size.is_none() && cs.restore_size.is_some())
        || (s.restore_size.as_ref().is_some_and(is_zero) && cs.restore_size.is_some_and(|n| n > 0))
        || (!vs.is_ready() && s.error != cs.error)
}

/// Whether `class` is a default class: annotation exactly `"true"`.
pub fn is_default_class(class: &VolumeSnapshotClass) -> bool {
    controller_kit::meta::annotation(&class.metadata, ANN_DEFAULT_CLASS) == Some("true")
}

/// Upstream `SetDefaultSnapshotClass`'s choice among `classes` for a volume of `driver`.
pub fn default_class<'a>(
    classes: impl IntoIterator<Item = &'a VolumeSnapshotClass>,
    driver: &str,
) -> Result<String, String> {
    let found: Vec<&VolumeSnapshotClass> = classes
        .into_iter()
        .filter(|c| is_default_class(c) && c.driver == driver)
        .collect();
    match found.as_slice() {
        [] => Err("cannot find default snapshot class".into()),
        [one] => Ok(one.metadata.name.clone().unwrap_or_default()),
        many => Err(format!(
            "{} default snapshot classes were found",
            many.len()
        )),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
