//! The resizer's pure decisions: which claim changes to queue, whether a claim needs expanding,
//! the size to expand to (upstream's recovery table, `expandAndRecover`), how a CSI error is
//! classed, and how resize conditions merge. No I/O: plain objects and flags in, a step out.

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use controller_kit::meta::annotation;

use crate::constants::*;

/// The claim's `storage` entry of a quantity map.
fn storage(map: Option<&std::collections::BTreeMap<String, Quantity>>) -> Option<&Quantity> {
    map.and_then(|m| m.get(STORAGE))
}

/// Bytes of a quantity (0 when absent or unreadable; the API server validates them).
pub fn bytes(q: Option<&Quantity>) -> i64 {
    q.and_then(|q| controller_kit::quantity::parse_bytes(&q.0))
        .unwrap_or(0)
}

/// The size ControllerExpandVolume's answer gives the volume: 0 (the field is required, but
/// some drivers leave it out) means the size asked for; less than asked is an error, so a
/// wrong answer never shrinks the PV's capacity or marks a resize done that was not (upstream
/// records whatever the driver says).
pub fn expanded_bytes(returned: i64, requested: i64) -> Result<i64, String> {
    match returned {
        0 => Ok(requested),
        r if r < requested => Err(format!(
            "ControllerExpandVolume returned capacity {r}, less than the requested {requested}"
        )),
        r => Ok(r),
    }
}

/// `spec.resources.requests.storage`.
pub fn requested(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    storage(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

/// `status.capacity.storage`.
pub fn capacity(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    storage(pvc.status.as_ref().and_then(|s| s.capacity.as_ref()))
}

/// `status.allocatedResources.storage`.
pub fn allocated(pvc: &PersistentVolumeClaim) -> Option<&Quantity> {
    storage(
        pvc.status
            .as_ref()
            .and_then(|s| s.allocated_resources.as_ref()),
    )
}

/// `status.allocatedResourceStatuses.storage` (`""` when absent).
pub fn resize_status(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.allocated_resource_statuses.as_ref())
        .and_then(|m| m.get(STORAGE))
        .map_or("", String::as_str)
}

/// The PV's `spec.capacity.storage`.
pub fn pv_capacity(pv: &PersistentVolume) -> Option<&Quantity> {
    storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

/// Upstream's update filter (`updatePVC`, recovery gate on): a claim is queued when its request
/// changed, the resizer annotation changed, on a resync (same resourceVersion), when its capacity
/// grew (the pre-resize annotation cleanup needs it), or when its resize status changed.
pub fn should_enqueue(previous: &PersistentVolumeClaim, new: &PersistentVolumeClaim) -> bool {
    let request_changed = bytes(requested(new)) != bytes(requested(previous));
    let resizer_changed = annotation(&new.metadata, ANN_STORAGE_RESIZER)
        != annotation(&previous.metadata, ANN_STORAGE_RESIZER);
    if request_changed || resizer_changed {
        return true;
    }
    new.metadata.resource_version == previous.metadata.resource_version
        || bytes(capacity(new)) > bytes(capacity(previous))
        || resize_status(new) != resize_status(previous)
}

/// `pvcNeedResize`: Bound, with a volume, and a request above the capacity.
pub fn needs_resize(pvc: &PersistentVolumeClaim) -> bool {
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    bound && volume && bytes(requested(pvc)) > bytes(capacity(pvc))
}

/// `CanSupport` and the claimRef check of `pvCanBeExpanded`: a CSI PV of `driver`, bound to this
/// very claim (namespace and UID). `Err` says why not.
pub fn can_expand(
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
    driver: &str,
) -> Result<(), &'static str> {
    let spec = pv.spec.as_ref();
    match spec.and_then(|s| s.csi.as_ref()) {
        None => return Err("the PV is not a CSI volume"),
        Some(csi) if csi.driver != driver => return Err("the PV belongs to another driver"),
        Some(_) => {}
    }
    let bound = spec.and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
        r.namespace == pvc.metadata.namespace && r.uid.is_some() && r.uid == pvc.metadata.uid
    });
    if !bound {
        return Err("the PV is not bound to this claim");
    }
    Ok(())
}

/// Whether the PV's pre-resize annotation can go: the claim's capacity has caught up with the
/// PV's (`isNodeExpandComplete`) and the annotation is there.
pub fn pre_resize_annotation_done(pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    annotation(&pv.metadata, ANN_PRE_RESIZE_CAPACITY).is_some()
        && bytes(capacity(pvc)) >= bytes(pv_capacity(pv))
}

/// What the recovery table decides for one pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Expansion {
    /// Nothing to call: kubelet's part is pending, or done.
    Wait,
    /// The same target failed as infeasible within `--retry-interval-max`: retry when that has
    /// passed (upstream's `DelayRetryError`).
    SlowRetry,
    /// Mark the claim in progress and call the driver with `size`; `update_status` says whether
    /// `allocatedResourceStatuses` (and the resize conditions) are rewritten.
    Expand {
        /// The size to expand to (written to `allocatedResources`).
        size: Quantity,
        /// Upstream's `updateStatus`.
        update_status: bool,
    },
}

/// The inputs of [`decide`], read from the claim, its PV and the controller's memory.
#[derive(Clone, Copy, Debug)]
pub struct RecoveryInput<'a> {
    /// The PV's capacity.
    pub pv_size: Option<&'a Quantity>,
    /// The claim's request.
    pub spec: &'a Quantity,
    /// `status.allocatedResources.storage`.
    pub allocated: Option<&'a Quantity>,
    /// `status.allocatedResourceStatuses.storage`.
    pub status: &'a str,
    /// The last attempt of this claim ended with a final error (in-memory set).
    pub final_error: bool,
    /// The claim is in the slow set (an infeasible attempt within `--retry-interval-max`).
    pub in_slow_set: bool,
    /// The claim has a `FileSystemResizePending` condition.
    pub fs_resize_pending: bool,
    /// The driver expands in the control plane (false: node-only, upstream's trivial resizer).
    pub control_plane: bool,
}

/// Upstream's recovery table (`expandAndRecover`, RecoverVolumeExpansionFailure on), branch for
/// branch.
pub fn decide(i: &RecoveryInput<'_>) -> Expansion {
    let pv = bytes(i.pv_size);
    let spec = bytes(Some(i.spec));
    let mut size = i.spec.clone();
    let allocated_or = |fallback: &Quantity| i.allocated.cloned().unwrap_or(fallback.clone());
    if pv < spec {
        match i.status {
            NODE_RESIZE_INFEASIBLE => size = allocated_or(i.spec),
            NODE_RESIZE_PENDING | NODE_RESIZE_IN_PROGRESS => {
                size = allocated_or(i.spec);
                if pv >= bytes(Some(&size)) {
                    return Expansion::Wait;
                }
            }
            // The last outcome is uncertain unless it was a final error: keep its target.
            CONTROLLER_RESIZE_IN_PROGRESS if !i.final_error => size = allocated_or(i.spec),
            _ => {}
        }
    } else {
        match i.status {
            NODE_RESIZE_IN_PROGRESS | NODE_RESIZE_PENDING => return Expansion::Wait,
            NODE_RESIZE_INFEASIBLE if i.control_plane => size = allocated_or(i.spec),
            NODE_RESIZE_INFEASIBLE => {}
            CONTROLLER_RESIZE_IN_PROGRESS | CONTROLLER_RESIZE_INFEASIBLE => {
                size = allocated_or(i.spec);
            }
            "" if i.allocated.is_some() => size = allocated_or(i.spec),
            _ => {
                // An API server without the recovery fields.
                if i.fs_resize_pending {
                    return Expansion::Wait;
                }
            }
        }
    }
    let same_target = i
        .allocated
        .is_some_and(|a| bytes(Some(a)) == bytes(Some(&size)));
    if same_target && i.in_slow_set {
        return Expansion::SlowRetry;
    }
    Expansion::Expand {
        size,
        update_status: !same_target,
    }
}

/// How a failed ControllerExpandVolume is handled (`IsFinalError`, `IsInfeasibleError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The operation may still be in progress (Canceled, DeadlineExceeded, Unavailable,
    /// ResourceExhausted, Aborted, or no gRPC status): the target stays pinned.
    Transient,
    /// The size cannot be reached (InvalidArgument, OutOfRange, NotFound):
    /// `ControllerResizeInfeasible`, and retries slowed to `--retry-interval-max`.
    Infeasible,
    /// Any other code: the operation is over; a `ControllerResizeError` condition.
    Final,
}

impl ErrorClass {
    /// Of a CSI error with gRPC `code` (`None`: the call never reached the driver).
    pub fn of(code: Option<csi::Code>) -> Self {
        use csi::Code;
        match code {
            None
            | Some(
                Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Unavailable
                | Code::ResourceExhausted
                | Code::Aborted,
            ) => ErrorClass::Transient,
            Some(Code::InvalidArgument | Code::OutOfRange | Code::NotFound) => {
                ErrorClass::Infeasible
            }
            Some(_) => ErrorClass::Final,
        }
    }

    /// The machine-readable class (ours): the `reason` of the `ControllerResizeError`
    /// condition and the `action` of the `VolumeResizeFailed` Event.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorClass::Transient => "ResizeTransientError",
            ErrorClass::Infeasible => "ResizeInfeasible",
            ErrorClass::Final => "ResizeFailed",
        }
    }
}

/// The `action` of the `VolumeResizeFailed` Event for an expansion held because the volume is
/// in use and the driver expands only offline (ours, machine-readable).
pub const IN_USE_REASON: &str = "ResizeVolumeInUse";

/// `MergeResizeConditionsOfPVC`: conditions that are not resize conditions are kept; a resize
/// condition of a type in `new` is replaced in place; other resize conditions are kept only with
/// `keep_old`; the rest of `new` is appended.
pub fn merge_resize_conditions(
    old: &[PersistentVolumeClaimCondition],
    new: &[PersistentVolumeClaimCondition],
    keep_old: bool,
) -> Vec<PersistentVolumeClaimCondition> {
    let mut pending: Vec<&PersistentVolumeClaimCondition> = new.iter().collect();
    let mut result = Vec::new();
    for c in old {
        if !RESIZE_CONDITIONS.contains(&c.type_.as_str()) {
            result.push(c.clone());
            continue;
        }
        if let Some(i) = pending.iter().position(|n| n.type_ == c.type_) {
            result.push(pending.remove(i).clone());
        } else if keep_old {
            result.push(c.clone());
        }
    }
    result.extend(pending.into_iter().cloned());
    result
}

/// Whether the claim has a `FileSystemResizePending` condition.
pub fn has_fs_resize_pending(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == COND_FS_RESIZE_PENDING))
}

#[cfg(test)]
pub(crate) mod tests;
