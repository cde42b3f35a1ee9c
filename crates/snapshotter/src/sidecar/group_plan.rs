//! The CSI half's decisions for group contents (csi-snapshotter,
//! `pkg/sidecar-controller/groupsnapshot_helper.go`), as pure functions of a
//! VolumeGroupSnapshotContent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::constants::*;
use crate::types::*;

fn has_annotation(c: &VolumeGroupSnapshotContent, key: &str) -> bool {
    c.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

/// Upstream `shouldDeleteGroupSnapshotContent`.
pub fn should_delete(c: &VolumeGroupSnapshotContent) -> bool {
    if c.metadata.deletion_timestamp.is_none() {
        return false;
    }
    if c.spec.source.group_snapshot_handles.is_some() && c.group_snapshot_uid().is_empty() {
        return true;
    }
    !has_annotation(c, ANN_GROUP_BEING_CREATED) && has_annotation(c, ANN_GROUP_BEING_DELETED)
}

/// The next step for a group content of this driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSidecarStep {
    Done,
    /// DeleteVolumeGroupSnapshot, then clear the status.
    Delete,
    /// Remove the content's finalizer.
    RemoveFinalizer,
    /// CreateVolumeGroupSnapshot (again, until ready). `first` when the content has no status.
    Create {
        first: bool,
    },
    /// GetVolumeGroupSnapshot of a pre-provisioned group.
    Get,
    /// Ready: only a leftover being-created annotation is removed.
    ForgetCreating,
    /// Not protected by the common controller's finalizer yet: no creation until it is (as
    /// for single snapshots).
    AwaitProtection,
}

/// Upstream `syncGroupSnapshotContent`'s order.
pub fn next(c: &VolumeGroupSnapshotContent) -> GroupSidecarStep {
    if should_delete(c) {
        let handle = c
            .status
            .as_ref()
            .is_some_and(|s| s.volume_group_snapshot_handle.is_some());
        if c.spec.deletion_policy == DeletionPolicy::Delete && handle {
            return GroupSidecarStep::Delete;
        }
        if controller_kit::meta::has_finalizer(&c.metadata, FIN_GROUP_CONTENT_BOUND) {
            return GroupSidecarStep::RemoveFinalizer;
        }
        return GroupSidecarStep::Done;
    }
    let protected = controller_kit::meta::has_finalizer(&c.metadata, FIN_GROUP_CONTENT_BOUND);
    if !c.volume_handles().is_empty() && c.status.is_none() {
        if !protected {
            return GroupSidecarStep::AwaitProtection;
        }
        return GroupSidecarStep::Create { first: true };
    }
    if c.is_ready() {
        return if has_annotation(c, ANN_GROUP_BEING_CREATED) {
            GroupSidecarStep::ForgetCreating
        } else {
            GroupSidecarStep::Done
        };
    }
    if c.spec.source.group_snapshot_handles.is_some() {
        return GroupSidecarStep::Get;
    }
    if c.volume_handles().is_empty() {
        // Neither source: the common controller reports it.
        return GroupSidecarStep::Done;
    }
    if !protected {
        return GroupSidecarStep::AwaitProtection;
    }
    GroupSidecarStep::Create { first: false }
}

/// What the driver said about a group snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverGroup {
    pub handle: String,
    pub ready: bool,
    pub created: Time,
    /// The members (empty for a pre-provisioned group).
    pub members: Vec<VolumeSnapshotInfo>,
}

/// Upstream `updateGroupSnapshotContentStatus`: the handle and creation time written once,
/// `readyToUse` follows the driver (turning true clears the error), the member list filled
/// only while empty. `None` when nothing changes.
pub fn status_after(
    c: &VolumeGroupSnapshotContent,
    d: &DriverGroup,
) -> Option<VolumeGroupSnapshotContentStatus> {
    let old = c.status.clone();
    let mut st = old.clone().unwrap_or_default();
    if st.volume_group_snapshot_handle.is_none() {
        st.volume_group_snapshot_handle = Some(d.handle.clone());
    }
    if st.ready_to_use != Some(d.ready) {
        st.ready_to_use = Some(d.ready);
        if d.ready {
            st.error = None;
        }
    }
    if st.creation_time.is_none() {
        st.creation_time = Some(d.created.clone());
    }
    if st
        .volume_snapshot_info_list
        .as_ref()
        .is_none_or(Vec::is_empty)
        && !d.members.is_empty()
    {
        st.volume_snapshot_info_list = Some(d.members.clone());
    }
    (Some(&st) != old.as_ref()).then_some(st)
}

/// The status with the error and `readyToUse` false, or `None` when the same message is there.
pub fn error_status(
    c: &VolumeGroupSnapshotContent,
    message: &str,
    now: Time,
) -> Option<VolumeGroupSnapshotContentStatus> {
    let mut st = c.status.clone().unwrap_or_default();
    if st.error.as_ref().and_then(|e| e.message.as_deref()) == Some(message) {
        return None;
    }
    st.error = Some(VolumeSnapshotError {
        time: Some(now),
        message: Some(message.to_string()),
    });
    st.ready_to_use = Some(false);
    Some(st)
}

/// The status after DeleteVolumeGroupSnapshot: handle, readiness, creation time and error
/// cleared (upstream `clearGroupSnapshotContentStatus`).
pub fn cleared_status(c: &VolumeGroupSnapshotContent) -> Option<VolumeGroupSnapshotContentStatus> {
    let mut st = c.status.clone()?;
    st.volume_group_snapshot_handle = None;
    st.ready_to_use = None;
    st.creation_time = None;
    st.error = None;
    Some(st)
}

/// The member snapshot IDs DeleteVolumeGroupSnapshot names: the status's members, else the
/// pre-provisioned handles (only with a status, as upstream).
pub fn snapshot_ids(c: &VolumeGroupSnapshotContent) -> Vec<String> {
    let Some(st) = c.status.as_ref() else {
        return Vec::new();
    };
    let members = st.volume_snapshot_info_list.as_deref().unwrap_or_default();
    if !members.is_empty() {
        return members
            .iter()
            .map(|m| m.snapshot_handle.clone().unwrap_or_default())
            .collect();
    }
    c.spec
        .source
        .group_snapshot_handles
        .as_ref()
        .map(|h| h.volume_snapshot_handles.clone())
        .unwrap_or_default()
}

/// As [`super::plan::should_enqueue`] for group contents: changes limited to the status,
/// managed fields, finalizers or the being-created annotation are this half's own writes (or
/// the common controller's finalizer) and are ignored, except readiness turning true.
pub fn should_enqueue(old: &VolumeGroupSnapshotContent, new: &VolumeGroupSnapshotContent) -> bool {
    if old.metadata.resource_version == new.metadata.resource_version {
        return true;
    }
    if !old.is_ready() && new.is_ready() {
        return true;
    }
    let protected = |c: &VolumeGroupSnapshotContent| {
        controller_kit::meta::has_finalizer(&c.metadata, FIN_GROUP_CONTENT_BOUND)
    };
    if !protected(old) && protected(new) {
        return true;
    }
    let sanitize = |c: &VolumeGroupSnapshotContent| {
        let mut c = c.clone();
        c.metadata.resource_version = None;
        c.metadata.managed_fields = None;
        c.metadata.finalizers = None;
        c.metadata.generation = None;
        c.status = None;
        if let Some(a) = c.metadata.annotations.as_mut() {
            a.remove(ANN_GROUP_BEING_CREATED);
            if a.is_empty() {
                c.metadata.annotations = None;
            }
        }
        c
    };
    sanitize(old) != sanitize(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn content(policy: DeletionPolicy) -> VolumeGroupSnapshotContent {
        VolumeGroupSnapshotContent {
            metadata: ObjectMeta {
                name: Some("groupsnapcontent-1".into()),
                finalizers: Some(vec![FIN_GROUP_CONTENT_BOUND.into()]),
                ..Default::default()
            },
            spec: VolumeGroupSnapshotContentSpec {
                deletion_policy: policy,
                driver: "d".into(),
                volume_group_snapshot_class_name: Some("c".into()),
                source: VolumeGroupSnapshotContentSource {
                    volume_handles: Some(vec!["v1".into(), "v2".into()]),
                    group_snapshot_handles: None,
                },
                ..Default::default()
            },
            status: None,
        }
    }

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    fn member(v: &str, s: &str) -> VolumeSnapshotInfo {
        VolumeSnapshotInfo {
            volume_handle: Some(v.into()),
            snapshot_handle: Some(s.into()),
            creation_time: Some(1),
            ready_to_use: Some(false),
            restore_size: Some(10),
        }
    }

    #[test]
    fn a_new_dynamic_content_is_cut_then_polled_until_ready() {
        let mut c = content(DeletionPolicy::Delete);
        let unprotected = VolumeGroupSnapshotContent {
            metadata: ObjectMeta::default(),
            ..c.clone()
        };
        assert_eq!(next(&unprotected), GroupSidecarStep::AwaitProtection);
        assert!(
            should_enqueue(&unprotected, &c),
            "the finalizer's arrival queues it"
        );
        assert_eq!(next(&c), GroupSidecarStep::Create { first: true });
        let answer = DriverGroup {
            handle: "g1".into(),
            ready: false,
            created: t(5),
            members: vec![member("v1", "s1"), member("v2", "s2")],
        };
        c.status = status_after(&c, &answer);
        assert_eq!(c.members().len(), 2);
        assert_eq!(next(&c), GroupSidecarStep::Create { first: false });
        // The member list is written once; later answers change readiness only.
        let later = DriverGroup {
            ready: true,
            created: t(9),
            members: vec![member("v1", "other")],
            ..answer
        };
        c.status = status_after(&c, &later);
        let st = c.status.as_ref().unwrap();
        assert_eq!(st.creation_time, Some(t(5)));
        assert_eq!(c.members()[0].snapshot_handle.as_deref(), Some("s1"));
        assert!(status_after(&c, &later).is_none());
        assert_eq!(next(&c), GroupSidecarStep::Done);
        assert_eq!(snapshot_ids(&c), ["s1", "s2"]);
    }

    #[test]
    fn deletion_waits_for_the_handshake_and_a_running_creation() {
        let mut c = content(DeletionPolicy::Delete);
        c.metadata.deletion_timestamp = Some(t(1));
        c.status = Some(VolumeGroupSnapshotContentStatus {
            volume_group_snapshot_handle: Some("g1".into()),
            ..Default::default()
        });
        // Not marked by the common controller: nothing.
        assert_eq!(next(&c), GroupSidecarStep::Create { first: false });
        let ann = c.metadata.annotations.get_or_insert_default();
        ann.insert(ANN_GROUP_BEING_DELETED.into(), YES.into());
        ann.insert(ANN_GROUP_BEING_CREATED.into(), YES.into());
        assert!(!should_delete(&c));
        c.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_GROUP_BEING_CREATED);
        assert_eq!(next(&c), GroupSidecarStep::Delete);
        c.status = cleared_status(&c);
        assert_eq!(next(&c), GroupSidecarStep::RemoveFinalizer);
        c.spec.deletion_policy = DeletionPolicy::Retain;
        c.status.as_mut().unwrap().volume_group_snapshot_handle = Some("g1".into());
        assert_eq!(next(&c), GroupSidecarStep::RemoveFinalizer);
    }

    #[test]
    fn own_status_writes_do_not_requeue() {
        let mut old = content(DeletionPolicy::Delete);
        old.metadata.resource_version = Some("1".into());
        let mut new = old.clone();
        new.metadata.resource_version = Some("2".into());
        new.status = Some(VolumeGroupSnapshotContentStatus {
            ready_to_use: Some(false),
            ..Default::default()
        });
        assert!(!should_enqueue(&old, &new));
        let mut ready = new.clone();
        ready.metadata.resource_version = Some("3".into());
        ready.status.as_mut().unwrap().ready_to_use = Some(true);
        assert!(should_enqueue(&new, &ready));
        let mut marked = new.clone();
        marked.metadata.resource_version = Some("4".into());
        marked.metadata.annotations =
            Some([(ANN_GROUP_BEING_DELETED.to_string(), YES.to_string())].into());
        assert!(should_enqueue(&new, &marked));
    }

    #[test]
    fn a_pre_provisioned_content_is_read_and_deleted_by_its_handles() {
        let mut c = content(DeletionPolicy::Delete);
        c.spec.source = VolumeGroupSnapshotContentSource {
            volume_handles: None,
            group_snapshot_handles: Some(GroupSnapshotHandles {
                volume_group_snapshot_handle: "g9".into(),
                volume_snapshot_handles: vec!["a".into(), "b".into()],
            }),
        };
        assert_eq!(next(&c), GroupSidecarStep::Get);
        assert!(
            snapshot_ids(&c).is_empty(),
            "no status: no ids, as upstream"
        );
        c.status = Some(VolumeGroupSnapshotContentStatus::default());
        assert_eq!(snapshot_ids(&c), ["a", "b"]);
        // Unbound and deleted: released at once.
        c.metadata.deletion_timestamp = Some(t(1));
        assert!(should_delete(&c));
    }
}
