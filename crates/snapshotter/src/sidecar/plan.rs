//! The CSI half's decisions (csi-snapshotter, `pkg/sidecar-controller`), as pure functions of a
//! VolumeSnapshotContent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::constants::*;
use crate::types::*;

fn has_annotation(c: &VolumeSnapshotContent, key: &str) -> bool {
    c.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

/// A member of a dynamic group snapshot: never CreateSnapshot or DeleteSnapshot.
pub fn is_group_member(c: &VolumeSnapshotContent) -> bool {
    has_annotation(c, ANN_GROUP_SNAPSHOT_HANDLE)
}

/// Upstream `shouldDelete`: the content is being deleted, and either it is an unbound
/// pre-provisioned content, or its snapshot is being deleted and no CreateSnapshot may still run.
pub fn should_delete(c: &VolumeSnapshotContent) -> bool {
    if c.metadata.deletion_timestamp.is_none() {
        return false;
    }
    if c.spec.source.snapshot_handle.is_some() && c.snapshot_uid().is_empty() {
        return true;
    }
    !has_annotation(c, ANN_BEING_CREATED) && has_annotation(c, ANN_BEING_DELETED)
}

/// The next step for a content of this driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarStep {
    /// Nothing to do.
    Done,
    /// Delete the snapshot on the driver (policy Delete, a handle, not a group member), then
    /// clear the content's status.
    DeleteSnapshot,
    /// Release the content: remove its finalizer.
    RemoveFinalizer,
    /// Call CreateSnapshot (again: readiness is polled by re-sending it). `first` when the
    /// content has no status yet (the failure Event differs).
    Create { first: bool },
    /// Ask the driver for a pre-provisioned (or group member's) snapshot with ListSnapshots.
    List,
    /// Ready: only a leftover being-created annotation is removed.
    ForgetCreating,
    /// A group member whose handles are not there yet: wait.
    Wait,
    /// A new content without the common controller's `volumesnapshotcontent-bound-protection`
    /// yet: no CreateSnapshot until it is there, since an unprotected content may be deleted
    /// while the call runs, leaking the snapshot (the finalizer's arrival queues the content).
    AwaitProtection,
}

/// Upstream `syncContent`'s order.
pub fn next(c: &VolumeSnapshotContent) -> SidecarStep {
    if should_delete(c) {
        let st = c.status.as_ref();
        let call = c.spec.deletion_policy == DeletionPolicy::Delete
            && st.is_some_and(|s| {
                s.snapshot_handle.is_some() && s.volume_group_snapshot_handle.is_none()
            });
        if call {
            return SidecarStep::DeleteSnapshot;
        }
        if controller_kit::meta::has_finalizer(&c.metadata, FIN_CONTENT_BOUND) {
            return SidecarStep::RemoveFinalizer;
        }
        return SidecarStep::Done;
    }
    let member = is_group_member(c);
    let protected = controller_kit::meta::has_finalizer(&c.metadata, FIN_CONTENT_BOUND);
    if c.spec.source.volume_handle.is_some() && c.status.is_none() && !member {
        if !protected {
            return SidecarStep::AwaitProtection;
        }
        return SidecarStep::Create { first: true };
    }
    if c.is_ready() {
        return if has_annotation(c, ANN_BEING_CREATED) {
            SidecarStep::ForgetCreating
        } else {
            SidecarStep::Done
        };
    }
    let st = c.status.as_ref();
    let member_with_handles =
        st.is_some_and(|s| s.volume_group_snapshot_handle.is_some() && s.snapshot_handle.is_some());
    if c.spec.source.snapshot_handle.is_some() || member_with_handles {
        return SidecarStep::List;
    }
    if member {
        return SidecarStep::Wait;
    }
    if !protected {
        return SidecarStep::AwaitProtection;
    }
    SidecarStep::Create { first: false }
}

/// What the driver said about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverSnapshot {
    pub handle: String,
    pub ready: bool,
    /// Unix nanoseconds (now when the driver gave none, as upstream).
    pub created_ns: i64,
    /// Bytes; 0 is unknown.
    pub size: i64,
    pub group_handle: Option<String>,
}

/// Upstream `updateSnapshotContentStatus`: the handle, creation time, size and group handle are
/// written once; `readyToUse` follows the driver (turning true clears the error). `None` when
/// nothing changes.
pub fn status_after(
    c: &VolumeSnapshotContent,
    d: &DriverSnapshot,
) -> Option<VolumeSnapshotContentStatus> {
    let old = c.status.clone();
    let mut st = old.clone().unwrap_or_default();
    if st.snapshot_handle.is_none() {
        st.snapshot_handle = Some(d.handle.clone());
    }
    if st.ready_to_use != Some(d.ready) {
        st.ready_to_use = Some(d.ready);
        if d.ready {
            st.error = None;
        }
    }
    if st.creation_time.is_none() {
        st.creation_time = Some(d.created_ns);
    }
    if st.restore_size.is_none() && d.size > 0 {
        st.restore_size = Some(d.size);
    }
    if st.volume_group_snapshot_handle.is_none() {
        st.volume_group_snapshot_handle = d.group_handle.clone().filter(|g| !g.is_empty());
    }
    (Some(&st) != old.as_ref()).then_some(st)
}

/// Upstream `updateContentErrorStatusWithEvent`: the status with the error and `readyToUse`
/// false, or `None` when the same message is already there.
pub fn error_status(
    c: &VolumeSnapshotContent,
    message: &str,
    now: Time,
) -> Option<VolumeSnapshotContentStatus> {
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

/// The status after DeleteSnapshot: handle, readiness, creation time and size cleared (the
/// error is kept).
pub fn cleared_status(c: &VolumeSnapshotContent) -> Option<VolumeSnapshotContentStatus> {
    let mut st = c.status.clone()?;
    st.snapshot_handle = None;
    st.ready_to_use = None;
    st.creation_time = None;
    st.restore_size = None;
    Some(st)
}

/// Upstream `ShouldEnqueueContentChange`: changes limited to the status, managed fields,
/// finalizers or the being-created annotation are ignored, except readiness turning true (a
/// deletion asked for during the creation then goes ahead).
pub fn should_enqueue(old: &VolumeSnapshotContent, new: &VolumeSnapshotContent) -> bool {
    if old.metadata.resource_version == new.metadata.resource_version {
        return true;
    }
    if !old.is_ready() && new.is_ready() {
        return true;
    }
    // The common controller's protection arrived: a creation waiting for it may start.
    let protected = |c: &VolumeSnapshotContent| {
        controller_kit::meta::has_finalizer(&c.metadata, FIN_CONTENT_BOUND)
    };
    if !protected(old) && protected(new) {
        return true;
    }
    let sanitize = |c: &VolumeSnapshotContent| {
        let mut c = c.clone();
        c.metadata.resource_version = None;
        c.metadata.managed_fields = None;
        c.metadata.finalizers = None;
        c.metadata.generation = None;
        c.status = None;
        if let Some(a) = c.metadata.annotations.as_mut() {
            a.remove(ANN_BEING_CREATED);
            if a.is_empty() {
                c.metadata.annotations = None;
            }
        }
        c
    };
    sanitize(old) != sanitize(new)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
