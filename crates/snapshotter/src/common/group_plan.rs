//! The common controller's decisions for group snapshots (snapshot-controller,
//! `pkg/common-controller/groupsnapshot_controller_helper.go`), as pure functions of the cached
//! objects. One step per pass, as for single snapshots ([`super::plan`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::plan::{Failure, has_finalizer};
use crate::constants::*;
use crate::params::{self, SecretRef};
use crate::types::group::{API_VERSION as GROUP_API_VERSION, GROUP};
use crate::types::*;

fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// Upstream `IsVolumeGroupSnapshotRefSet`: the content points at this group snapshot by name,
/// namespace and UID.
pub fn ref_is_set(vgs: &VolumeGroupSnapshot, c: &VolumeGroupSnapshotContent) -> bool {
    let r = &c.spec.volume_group_snapshot_ref;
    r.name == vgs.metadata.name
        && r.namespace == vgs.metadata.namespace
        && r.uid == vgs.metadata.uid
}

/// The group content a pass looks at: while deleting, the bound one (or the deterministic name
/// of a dynamic group not bound yet); a ready and bound group's bound one; a pre-provisioned
/// group's named one; else `groupsnapcontent-<uid>`.
pub fn content_name(vgs: &VolumeGroupSnapshot) -> Option<String> {
    let dynamic =
        || {
            vgs.spec.source.selector.as_ref().map(|_| {
                params::group_content_name(vgs.metadata.uid.as_deref().unwrap_or_default())
            })
        };
    if deleting(&vgs.metadata) {
        return vgs.bound_content().map(str::to_string).or_else(dynamic);
    }
    if vgs.is_ready() && vgs.bound_content().is_some() {
        return vgs.bound_content().map(str::to_string);
    }
    if let Some(c) = vgs.source_content() {
        return Some(c.to_string());
    }
    dynamic()
}

/// Whether `vs` is a member of the group snapshot `name` (an owner reference of kind
/// VolumeGroupSnapshot in the group API, any version).
pub fn is_member_of(vs: &VolumeSnapshot, name: &str) -> bool {
    vs.metadata.owner_references.iter().flatten().any(|o| {
        o.kind == "VolumeGroupSnapshot"
            && o.api_version.starts_with(&format!("{GROUP}/"))
            && o.name == name
    })
}

/// The next step for a VolumeGroupSnapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupStep {
    /// Nothing to do until something changes.
    Done,
    /// Report a failure on the group snapshot.
    Fail(Failure),
    /// Add `volumegroupsnapshot-bound-protection`.
    AddFinalizer,
    /// Bind a pre-provisioned content: its ref's UID and the group's class.
    BindContent {
        content: String,
        uid: String,
        class: Option<String>,
    },
    /// Create `groupsnapcontent-<uid>` from the selected claims.
    CreateContent,
    /// Create (or complete) the member VolumeSnapshots and contents the driver reported.
    CreateMembers,
    /// Write the status computed from the content.
    UpdateStatus(GroupStatusUpdate),
    /// Deletion waits: a member is being restored from (an Event, and a retry).
    DeletePending { message: String },
    /// Mark the content `volumegroupsnapshot-being-deleted`.
    MarkContentBeingDeleted { content: String },
    /// Delete the content (policy Delete).
    DeleteContent { content: String },
    /// Delete these member snapshots.
    DeleteMembers { names: Vec<String> },
    /// Remove `volumegroupsnapshot-bound-protection`.
    RemoveFinalizer,
}

/// What the plan knows beyond the group snapshot.
#[derive(Debug)]
pub struct GroupFacts<'a> {
    pub vgs: &'a VolumeGroupSnapshot,
    /// The content named by [`content_name`], if cached.
    pub content: Option<&'a VolumeGroupSnapshotContent>,
    /// Every member the content reports exists and is bound both ways with its handle set.
    pub members_complete: bool,
    /// The members found (live passes ignore them).
    pub members: Vec<&'a VolumeSnapshot>,
    /// A member being restored from, by `namespace/name` (deletion only).
    pub restoring_member: Option<String>,
}

fn failure(reason: &'static str, message: impl Into<String>) -> GroupStep {
    GroupStep::Fail(Failure::new(reason, message))
}

/// The next step for a live group snapshot whose class is resolved (upstream
/// `syncGroupSnapshot`).
pub fn live_step(f: &GroupFacts<'_>) -> GroupStep {
    let vgs = f.vgs;
    let src = &vgs.spec.source;
    if src.selector.is_some() == src.volume_group_snapshot_content_name.is_some() {
        return failure(
            REASON_GROUP_VALIDATION,
            "Exactly one of Selector and VolumeGroupSnapshotContentName should be specified",
        );
    }
    if let Some(c) = f.content {
        if let Some(wanted) = vgs.source_content() {
            if c.spec.source.group_snapshot_handles.is_none() {
                return failure(
                    REASON_GROUP_CONTENT_MISMATCH,
                    "VolumeGroupSnapshotContent is dynamically provisioned while expecting a pre-provisioned one",
                );
            }
            let r = &c.spec.volume_group_snapshot_ref;
            let uid = r.uid.as_deref().unwrap_or_default();
            if r.name != vgs.metadata.name
                || r.namespace != vgs.metadata.namespace
                || (!uid.is_empty() && Some(uid) != vgs.metadata.uid.as_deref())
            {
                return failure(
                    REASON_GROUP_CONTENT_MISBOUND,
                    format!(
                        "VolumeGroupSnapshotContent [{wanted}] is bound to a different group snapshot"
                    ),
                );
            }
        } else if !(vgs.is_ready() && vgs.bound_content().is_some()) {
            if c.spec.source.group_snapshot_handles.is_some() {
                return failure(
                    REASON_GROUP_CONTENT_MISMATCH,
                    format!(
                        "VolumeGroupSnapshotContent {} is pre-provisioned while expecting a dynamically provisioned one",
                        c.name()
                    ),
                );
            }
            if !ref_is_set(vgs, c) {
                return failure(
                    REASON_GROUP_CONTENT_MISBOUND,
                    format!(
                        "VolumeGroupSnapshotContent [{}] is bound to a different group snapshot",
                        c.name()
                    ),
                );
            }
        }
    }
    // The bound finalizer, whatever the policy, once a content is found and the status bound.
    if f.content.is_some()
        && vgs.bound_content().is_some()
        && !has_finalizer(&vgs.metadata, FIN_GROUP_BOUND)
    {
        return GroupStep::AddFinalizer;
    }
    if vgs.is_ready() && vgs.bound_content().is_some() {
        let no_retry = |reason, message: &str| {
            GroupStep::Fail(Failure {
                retry: false,
                ..Failure::new(reason, message)
            })
        };
        return match f.content {
            None => no_retry(
                REASON_GROUP_CONTENT_MISSING,
                "VolumeGroupSnapshotContent is missing",
            ),
            Some(c) if !ref_is_set(vgs, c) => no_retry(
                REASON_GROUP_MISBOUND,
                "VolumeGroupSnapshotContent is not bound to the VolumeGroupSnapshot correctly",
            ),
            Some(_) => GroupStep::Done,
        };
    }
    let status = |c: &VolumeGroupSnapshotContent| match status_update(vgs, c) {
        Some(u) => GroupStep::UpdateStatus(u),
        None => GroupStep::Done,
    };
    if let Some(wanted) = vgs.source_content() {
        return match f.content {
            None => failure(
                REASON_GROUP_CONTENT_MISSING,
                "VolumeGroupSnapshotContent is missing",
            ),
            // As for a snapshot: a bind that would change nothing goes on to the status.
            Some(c)
                if c.group_snapshot_uid().is_empty()
                    || (c.spec.volume_group_snapshot_class_name.is_none()
                        && vgs.spec.volume_group_snapshot_class_name.is_some()) =>
            {
                GroupStep::BindContent {
                    content: wanted.to_string(),
                    uid: vgs.metadata.uid.clone().unwrap_or_default(),
                    class: vgs.spec.volume_group_snapshot_class_name.clone(),
                }
            }
            Some(c) => status(c),
        };
    }
    match f.content {
        Some(c) if members_reported(c) && !f.members_complete => GroupStep::CreateMembers,
        Some(c) => status(c),
        None => GroupStep::CreateContent,
    }
}

/// Upstream `isGroupSnapshotContentReadyForSnapshotCreation`: the driver's group handle and
/// members are in the content's status.
pub fn members_reported(c: &VolumeGroupSnapshotContent) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| s.volume_group_snapshot_handle.is_some())
        && !c.members().is_empty()
}

/// The next step for a group snapshot being deleted (upstream
/// `processGroupSnapshotWithDeletionTimestamp`).
pub fn deletion_step(f: &GroupFacts<'_>) -> GroupStep {
    let vgs = f.vgs;
    if !has_finalizer(&vgs.metadata, FIN_GROUP_BOUND) {
        return GroupStep::Done;
    }
    let content = f.content.filter(|c| ref_is_set(vgs, c));
    if let Some(member) = &f.restoring_member {
        return GroupStep::DeletePending {
            message: format!(
                "Snapshot {member} belonging to VolumeGroupSnapshot {} is being used to restore a PVC",
                vgs.key()
            ),
        };
    }
    if let Some(c) = content
        && controller_kit::meta::annotation(&c.metadata, ANN_GROUP_BEING_DELETED).is_none()
    {
        return GroupStep::MarkContentBeingDeleted {
            content: c.name().to_string(),
        };
    }
    let delete_content = content.is_some_and(|c| c.spec.deletion_policy == DeletionPolicy::Delete);
    if let Some(c) = content
        && delete_content
        && !deleting(&c.metadata)
    {
        return GroupStep::DeleteContent {
            content: c.name().to_string(),
        };
    }
    let names: Vec<String> = f
        .members
        .iter()
        .filter(|m| !deleting(&m.metadata))
        .filter_map(|m| m.metadata.name.clone())
        .collect();
    if !names.is_empty() {
        return GroupStep::DeleteMembers { names };
    }
    if delete_content {
        // Kept until the content is gone: its disappearance releases the group snapshot.
        return GroupStep::Done;
    }
    GroupStep::RemoveFinalizer
}

/// A group status to write, and what it means.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStatusUpdate {
    pub status: VolumeGroupSnapshotStatus,
    /// `creationTime` appears (`GroupSnapshotCreated`).
    pub created: bool,
    /// `readyToUse` turns true (`GroupSnapshotReady`).
    pub ready: bool,
}

/// Upstream `updateGroupSnapshotStatus`: the bound name and creation time written once,
/// `readyToUse` follows the content (turning true clears the error), the error follows the
/// content's (by value). `None` when nothing changes.
pub fn status_update(
    vgs: &VolumeGroupSnapshot,
    c: &VolumeGroupSnapshotContent,
) -> Option<GroupStatusUpdate> {
    let cs = c.status.clone().unwrap_or_default();
    let ready = cs.ready_to_use.unwrap_or(false);
    let old = vgs.status.clone();
    let mut st = old.clone().unwrap_or_default();
    if st.bound_volume_group_snapshot_content_name.is_none() {
        st.bound_volume_group_snapshot_content_name = Some(c.name().to_string());
    }
    if st.creation_time.is_none() {
        st.creation_time = cs.creation_time.clone();
    }
    if st.ready_to_use != Some(ready) {
        st.ready_to_use = Some(ready);
        if ready {
            st.error = None;
        }
    }
    if st.error != cs.error {
        st.error = cs.error.clone();
    }
    if Some(&st) == old.as_ref() {
        return None;
    }
    let was_created = old.as_ref().is_some_and(|s| s.creation_time.is_some());
    let was_ready = old.as_ref().and_then(|s| s.ready_to_use) == Some(true);
    Some(GroupStatusUpdate {
        created: !was_created && st.creation_time.is_some(),
        ready: !was_ready && st.ready_to_use == Some(true),
        status: st,
    })
}

/// Upstream `updateGroupSnapshotErrorStatusWithEvent`: the status with `error` set, or `None`
/// when the same message is already there.
pub fn error_status(
    vgs: &VolumeGroupSnapshot,
    message: &str,
    not_ready: bool,
    now: Time,
) -> Option<VolumeGroupSnapshotStatus> {
    let mut st = vgs.status.clone().unwrap_or_default();
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

/// A full reference to the group snapshot: the content's ref and the object of its Events.
pub fn group_reference(vgs: &VolumeGroupSnapshot) -> ObjectReference {
    ObjectReference {
        api_version: Some(GROUP_API_VERSION.into()),
        kind: Some("VolumeGroupSnapshot".into()),
        name: vgs.metadata.name.clone(),
        namespace: vgs.metadata.namespace.clone(),
        uid: vgs.metadata.uid.clone(),
        resource_version: vgs.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// A reference to a group content, the object of its Events.
pub fn group_content_reference(c: &VolumeGroupSnapshotContent) -> ObjectReference {
    ObjectReference {
        api_version: Some(GROUP_API_VERSION.into()),
        kind: Some("VolumeGroupSnapshotContent".into()),
        name: c.metadata.name.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Whether `class` is a default group class: annotation exactly `"true"`.
pub fn is_default_class(class: &VolumeGroupSnapshotClass) -> bool {
    controller_kit::meta::annotation(&class.metadata, ANN_DEFAULT_GROUP_CLASS) == Some("true")
}

/// Upstream `SetDefaultGroupSnapshotClass`'s choice among `classes` for volumes of `driver`.
pub fn default_class<'a>(
    classes: impl IntoIterator<Item = &'a VolumeGroupSnapshotClass>,
    driver: &str,
) -> Result<String, String> {
    let found: Vec<&VolumeGroupSnapshotClass> = classes
        .into_iter()
        .filter(|c| is_default_class(c) && c.driver == driver)
        .collect();
    match found.as_slice() {
        [] => Err("cannot find default group snapshot class".into()),
        [one] => Ok(one.metadata.name.clone().unwrap_or_default()),
        many => Err(format!(
            "{} default snapshot classes were found",
            many.len()
        )),
    }
}

/// What a dynamic group content is made from.
#[derive(Debug)]
pub struct GroupContentInput<'a> {
    pub vgs: &'a VolumeGroupSnapshot,
    pub class: &'a VolumeGroupSnapshotClass,
    /// The selected claims' volume handles, in the claims' list order.
    pub volume_handles: Vec<String>,
    pub secret: Option<SecretRef>,
}

/// Upstream `createGroupSnapshotContent`'s object.
pub fn new_content(input: &GroupContentInput<'_>) -> VolumeGroupSnapshotContent {
    let vgs = input.vgs;
    let name = params::group_content_name(vgs.metadata.uid.as_deref().unwrap_or_default());
    let mut annotations = BTreeMap::new();
    if let Some(s) = &input.secret {
        annotations.insert(ANN_GROUP_SECRET_NAME.to_string(), s.name.clone());
        annotations.insert(ANN_GROUP_SECRET_NAMESPACE.to_string(), s.namespace.clone());
    }
    VolumeGroupSnapshotContent {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: VolumeGroupSnapshotContentSpec {
            volume_group_snapshot_ref: group_reference(vgs),
            deletion_policy: input.class.deletion_policy,
            driver: input.class.driver.clone(),
            volume_group_snapshot_class_name: input.class.metadata.name.clone(),
            source: VolumeGroupSnapshotContentSource {
                volume_handles: Some(input.volume_handles.clone()),
                group_snapshot_handles: None,
            },
        },
        status: None,
    }
}

/// The source volume of one member, when its PV is known.
#[derive(Clone, Debug, Default)]
pub struct MemberSource {
    /// The claim bound to the volume (`pv.spec.claimRef.name`).
    pub claim: String,
    pub volume_mode: Option<String>,
}

/// Upstream `buildVolumeSnapshotContentSpecForGroupSnapshot`: a member's content, marked with
/// the group handle (so the CSI half never cuts or deletes it alone), without a class.
pub fn member_content(
    vgs: &VolumeGroupSnapshot,
    group: &VolumeGroupSnapshotContent,
    volume_handle: &str,
    source: Option<&MemberSource>,
    secret: Option<&SecretRef>,
) -> VolumeSnapshotContent {
    let (snapshot, content) = params::member_names(
        vgs.metadata.uid.as_deref().unwrap_or_default(),
        volume_handle,
    );
    let mut annotations = BTreeMap::from([(
        ANN_GROUP_SNAPSHOT_HANDLE.to_string(),
        group.group_handle().unwrap_or_default().to_string(),
    )]);
    if let Some(s) = secret {
        annotations.insert(ANN_SECRET_NAME.to_string(), s.name.clone());
        annotations.insert(ANN_SECRET_NAMESPACE.to_string(), s.namespace.clone());
    }
    VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some(content),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            volume_snapshot_ref: ObjectReference {
                kind: Some("VolumeSnapshot".into()),
                name: Some(snapshot),
                namespace: group.spec.volume_group_snapshot_ref.namespace.clone(),
                ..Default::default()
            },
            deletion_policy: group.spec.deletion_policy,
            driver: group.spec.driver.clone(),
            volume_snapshot_class_name: None,
            source: VolumeSnapshotContentSource {
                volume_handle: Some(volume_handle.to_string()),
                snapshot_handle: None,
            },
            source_volume_mode: source.and_then(|s| s.volume_mode.clone()),
        },
        status: None,
    }
}

/// Upstream `buildVolumeSnapshotSpecForGroupSnapshot`: a member snapshot owned by the group,
/// with the in-group finalizer, taken of the volume's claim (empty when its PV is not found).
pub fn member_snapshot(
    vgs: &VolumeGroupSnapshot,
    volume_handle: &str,
    source: Option<&MemberSource>,
) -> VolumeSnapshot {
    let (name, _) = params::member_names(
        vgs.metadata.uid.as_deref().unwrap_or_default(),
        volume_handle,
    );
    VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: vgs.metadata.namespace.clone(),
            owner_references: Some(vec![OwnerReference {
                api_version: GROUP_API_VERSION.into(),
                kind: "VolumeGroupSnapshot".into(),
                name: vgs.metadata.name.clone().unwrap_or_default(),
                uid: vgs.metadata.uid.clone().unwrap_or_default(),
                ..Default::default()
            }]),
            finalizers: Some(vec![FIN_SNAPSHOT_IN_GROUP.into()]),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(
                    source.map(|s| s.claim.clone()).unwrap_or_default(),
                ),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: None,
        },
        status: None,
    }
}

/// Upstream `updateVolumeSnapshotContentStatus` for a member: the driver's answer for it.
pub fn member_content_status(
    info: &VolumeSnapshotInfo,
    group: &VolumeGroupSnapshotContent,
) -> VolumeSnapshotContentStatus {
    VolumeSnapshotContentStatus {
        snapshot_handle: info.snapshot_handle.clone(),
        creation_time: info.creation_time,
        restore_size: info.restore_size,
        ready_to_use: info.ready_to_use,
        error: None,
        volume_group_snapshot_handle: group.group_handle().map(str::to_string),
    }
}

/// Whether a member is complete: both objects exist, bound both ways, the content's handle set.
pub fn member_complete(
    snapshot: Option<&VolumeSnapshot>,
    content: Option<&VolumeSnapshotContent>,
) -> bool {
    let (Some(vs), Some(c)) = (snapshot, content) else {
        return false;
    };
    vs.bound_content() == Some(c.name())
        && c.spec.volume_snapshot_ref.uid == vs.metadata.uid
        && c.status
            .as_ref()
            .is_some_and(|s| s.snapshot_handle.is_some())
}

/// The next step for a group content in the common controller (upstream
/// `syncGroupSnapshotContent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupContentStep {
    Done,
    /// Neither or both sources: an Event, and a retry.
    Invalid(String),
    /// Add `volumegroupsnapshotcontent-bound-protection`.
    AddFinalizer,
}

pub fn content_step(c: &VolumeGroupSnapshotContent) -> GroupContentStep {
    let src = &c.spec.source;
    if src.group_snapshot_handles.is_some() != c.volume_handles().is_empty() {
        return GroupContentStep::Invalid(
            "Exactly one of GroupSnapshotHandles and VolumeHandles should be specified".into(),
        );
    }
    if c.group_snapshot_uid().is_empty() {
        return GroupContentStep::Done;
    }
    if !deleting(&c.metadata) && !has_finalizer(&c.metadata, FIN_GROUP_CONTENT_BOUND) {
        return GroupContentStep::AddFinalizer;
    }
    GroupContentStep::Done
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
