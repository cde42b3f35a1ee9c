//! The writes of the resizer, built as pure values: the claim's `/status` patches of upstream's
//! `resize_status.go` and the PV's capacity patch.
//!
//! Claim patches are RFC 7386 merge patches computed as the diff of the claim before and after
//! the change (upstream sends the strategic two-way diff; the object that results is the same,
//! since a merge patch sends the whole `conditions` list, which is replaced). Those that upstream
//! conditions on the resourceVersion carry it (`metadata.resourceVersion`); the failure markers
//! do not, so they land even from a slightly older copy, as upstream's.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::constants::*;
use crate::plan::merge_resize_conditions;

fn condition(
    type_: &str,
    message: Option<String>,
    reason: Option<&str>,
    now: Timestamp,
) -> PersistentVolumeClaimCondition {
    PersistentVolumeClaimCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(Time(now)),
        message,
        reason: reason.map(str::to_string),
        ..Default::default()
    }
}

/// The parts of a claim the resizer writes: annotations and status.
fn written(pvc: &PersistentVolumeClaim) -> Value {
    json!({
        "metadata": { "annotations": pvc.metadata.annotations.clone().unwrap_or_default() },
        "status": pvc.status.clone().unwrap_or_default(),
    })
}

/// The merge patch from `old` to `new`, with `old`'s resourceVersion when `check_version`.
pub(crate) fn claim_diff(
    old: &PersistentVolumeClaim,
    new: &PersistentVolumeClaim,
    check_version: bool,
) -> Value {
    let mut patch = controller_kit::patch::merge_diff(&written(old), &written(new))
        .unwrap_or_else(|| json!({}));
    if check_version && let Some(rv) = &old.metadata.resource_version {
        patch["metadata"]["resourceVersion"] = json!(rv);
    }
    patch
}

/// A copy of `pvc` (with a status) changed by `f`: the "after" of a [`claim_diff`].
pub(crate) fn with(
    pvc: &PersistentVolumeClaim,
    f: impl FnOnce(&mut PersistentVolumeClaim),
) -> PersistentVolumeClaim {
    let mut new = pvc.clone();
    if new.status.is_none() {
        new.status = Some(Default::default());
    }
    f(&mut new);
    new
}

/// The claim's conditions.
pub(crate) fn conditions(pvc: &PersistentVolumeClaim) -> Vec<PersistentVolumeClaimCondition> {
    pvc.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// Sets the claim's conditions (none: the field is absent).
pub(crate) fn set_conditions(
    pvc: &mut PersistentVolumeClaim,
    c: Vec<PersistentVolumeClaimCondition>,
) {
    if let Some(s) = pvc.status.as_mut() {
        s.conditions = (!c.is_empty()).then_some(c);
    }
}

fn remove_annotation(pvc: &mut PersistentVolumeClaim, key: &str) {
    if let Some(a) = pvc.metadata.annotations.as_mut() {
        a.remove(key);
    }
}

fn set_resize_status(pvc: &mut PersistentVolumeClaim, value: Option<&str>) {
    let Some(s) = pvc.status.as_mut() else { return };
    let mut map = s.allocated_resource_statuses.take().unwrap_or_default();
    match value {
        Some(v) => {
            map.insert(STORAGE.into(), v.into());
        }
        None => {
            map.remove(STORAGE);
        }
    }
    s.allocated_resource_statuses = (!map.is_empty()).then_some(map);
}

/// `markControllerResizeInProgress`: `Resizing` (other resize conditions dropped when
/// `update_status`), no node-expansion-not-required annotation, `ControllerResizeInProgress`
/// when `update_status`, `allocatedResources` = `size`. Version-checked.
pub fn mark_in_progress(
    pvc: &PersistentVolumeClaim,
    size: &Quantity,
    update_status: bool,
    now: Timestamp,
) -> Value {
    let new = with(pvc, |n| {
        let merged = merge_resize_conditions(
            &conditions(pvc),
            &[condition(COND_RESIZING, None, None, now)],
            !update_status,
        );
        set_conditions(n, merged);
        remove_annotation(n, ANN_NODE_EXPANSION_NOT_REQUIRED);
        if update_status {
            set_resize_status(n, Some(CONTROLLER_RESIZE_IN_PROGRESS));
        }
        if let Some(s) = n.status.as_mut() {
            s.allocated_resources
                .get_or_insert_with(Default::default)
                .insert(STORAGE.into(), size.clone());
        }
    });
    claim_diff(pvc, &new, true)
}

/// `markForPendingNodeExpansion`: `FileSystemResizePending` added (older resize conditions
/// kept), no node-expansion-not-required annotation, `NodeResizePending`. Version-checked.
pub fn mark_node_pending(pvc: &PersistentVolumeClaim, now: Timestamp) -> Value {
    let new = with(pvc, |n| {
        let pending = condition(
            COND_FS_RESIZE_PENDING,
            Some(FS_RESIZE_PENDING_MESSAGE.into()),
            None,
            now,
        );
        set_conditions(
            n,
            merge_resize_conditions(&conditions(pvc), &[pending], true),
        );
        remove_annotation(n, ANN_NODE_EXPANSION_NOT_REQUIRED);
        set_resize_status(n, Some(NODE_RESIZE_PENDING));
    });
    claim_diff(pvc, &new, true)
}

/// `markControllerExpansionInfeasible` (`infeasible`) or `markControllerExpansionFailedCondition`:
/// a `ControllerResizeError` condition (older ones kept) whose message is upstream's and whose
/// reason is the error class (ours), and `ControllerResizeInfeasible` when `infeasible`. Not
/// version-checked.
pub fn mark_failed(
    pvc: &PersistentVolumeClaim,
    error: &str,
    reason: &str,
    infeasible: bool,
    now: Timestamp,
) -> Value {
    let new = with(pvc, |n| {
        if infeasible {
            set_resize_status(n, Some(CONTROLLER_RESIZE_INFEASIBLE));
        }
        let failed = condition(
            COND_CONTROLLER_RESIZE_ERROR,
            Some(format!("failed to expand pvc with {error}")),
            Some(reason),
            now,
        );
        set_conditions(
            n,
            merge_resize_conditions(&conditions(pvc), &[failed], true),
        );
    });
    claim_diff(pvc, &new, false)
}

/// `markOverallExpansionAsFinished`: `status.capacity` = `capacity`, every resize condition
/// removed, the storage resize status removed, the node-expansion-not-required annotation set
/// (through `/status`, as upstream). Version-checked.
pub fn mark_finished(pvc: &PersistentVolumeClaim, capacity: &Quantity) -> Value {
    let new = with(pvc, |n| {
        if let Some(s) = n.status.as_mut() {
            s.capacity
                .get_or_insert_with(Default::default)
                .insert(STORAGE.into(), capacity.clone());
        }
        set_conditions(n, merge_resize_conditions(&conditions(pvc), &[], false));
        set_resize_status(n, None);
        n.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANN_NODE_EXPANSION_NOT_REQUIRED.into(), "true".into());
    });
    claim_diff(pvc, &new, true)
}

/// `updatePVCapacity`: the PV's capacity, and the pre-resize annotation (the claim's capacity
/// before, `old_capacity`) when node expansion is required and the PV has none yet. Strategic
/// merge patch on the PV, not version-checked.
pub fn pv_capacity(
    pv: &PersistentVolume,
    capacity: &Quantity,
    node_expansion_required: bool,
    old_capacity: Option<&Quantity>,
) -> Value {
    let mut patch = json!({ "spec": { "capacity": { STORAGE: capacity } } });
    let annotated = pv
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANN_PRE_RESIZE_CAPACITY));
    if node_expansion_required && !annotated {
        let old = old_capacity.map_or_else(|| "0".to_string(), |q| q.0.clone());
        patch["metadata"] = json!({ "annotations": { ANN_PRE_RESIZE_CAPACITY: old } });
    }
    patch
}

/// `deletePreResizeCapAnnotation`: the PV's pre-resize annotation removed.
pub fn remove_pre_resize_annotation() -> Value {
    json!({ "metadata": { "annotations": { ANN_PRE_RESIZE_CAPACITY: null } } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::pvc;

    const NOW: &str = "2026-12-02T10:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    #[test]
    fn in_progress_sets_the_target_and_status_and_checks_the_version() {
        let mut c = pvc("2Gi", "1Gi");
        c.metadata.annotations =
            Some([(ANN_NODE_EXPANSION_NOT_REQUIRED.into(), "true".into())].into());
        let p = mark_in_progress(&c, &Quantity("2Gi".into()), true, now());
        assert_eq!(
            p,
            json!({
                "metadata": {
                    "resourceVersion": "1",
                    "annotations": { ANN_NODE_EXPANSION_NOT_REQUIRED: null },
                },
                "status": {
                    "allocatedResources": { "storage": "2Gi" },
                    "allocatedResourceStatuses": { "storage": CONTROLLER_RESIZE_IN_PROGRESS },
                    "conditions": [{ "type": "Resizing", "status": "True", "lastTransitionTime": NOW }],
                },
            })
        );
    }

    #[test]
    fn in_progress_without_status_update_keeps_the_status_and_old_conditions() {
        let mut c = pvc("2Gi", "1Gi");
        let s = c.status.as_mut().unwrap();
        s.allocated_resources = Some([(STORAGE.into(), Quantity("2Gi".into()))].into());
        s.allocated_resource_statuses =
            Some([(STORAGE.into(), CONTROLLER_RESIZE_INFEASIBLE.into())].into());
        s.conditions = Some(vec![PersistentVolumeClaimCondition {
            type_: COND_CONTROLLER_RESIZE_ERROR.into(),
            status: "True".into(),
            ..Default::default()
        }]);
        let p = mark_in_progress(&c, &Quantity("2Gi".into()), false, now());
        assert_eq!(
            p["status"],
            json!({ "conditions": [
                { "type": COND_CONTROLLER_RESIZE_ERROR, "status": "True" },
                { "type": "Resizing", "status": "True", "lastTransitionTime": NOW },
            ]})
        );
    }

    #[test]
    fn infeasible_is_not_version_checked_and_carries_the_class() {
        let c = pvc("2Gi", "1Gi");
        let p = mark_failed(
            &c,
            "rpc error: code = OutOfRange desc = too big",
            "ResizeInfeasible",
            true,
            now(),
        );
        assert!(p["metadata"].get("resourceVersion").is_none());
        assert_eq!(
            p["status"]["allocatedResourceStatuses"]["storage"],
            CONTROLLER_RESIZE_INFEASIBLE
        );
        assert_eq!(
            p["status"]["conditions"][0],
            json!({
                "type": COND_CONTROLLER_RESIZE_ERROR,
                "status": "True",
                "reason": "ResizeInfeasible",
                "message": "failed to expand pvc with rpc error: code = OutOfRange desc = too big",
                "lastTransitionTime": NOW,
            })
        );
    }

    #[test]
    fn finished_records_the_capacity_and_clears_the_resize_state() {
        let mut c = pvc("2Gi", "1Gi");
        let s = c.status.as_mut().unwrap();
        s.allocated_resources = Some([(STORAGE.into(), Quantity("2Gi".into()))].into());
        s.allocated_resource_statuses =
            Some([(STORAGE.into(), CONTROLLER_RESIZE_IN_PROGRESS.into())].into());
        s.conditions = Some(vec![PersistentVolumeClaimCondition {
            type_: COND_RESIZING.into(),
            status: "True".into(),
            ..Default::default()
        }]);
        let p = mark_finished(&c, &Quantity("2Gi".into()));
        assert_eq!(
            p,
            json!({
                "metadata": {
                    "resourceVersion": "1",
                    "annotations": { ANN_NODE_EXPANSION_NOT_REQUIRED: "true" },
                },
                "status": {
                    "capacity": { "storage": "2Gi" },
                    "allocatedResourceStatuses": null,
                    "conditions": null,
                },
            })
        );
    }

    #[test]
    fn the_pv_is_annotated_only_when_the_node_has_work_and_once() {
        let mut pv = k8s_openapi::api::core::v1::PersistentVolume::default();
        let cap = Quantity("2Gi".into());
        let old = Quantity("1Gi".into());
        assert_eq!(
            pv_capacity(&pv, &cap, true, Some(&old)),
            json!({
                "spec": { "capacity": { "storage": "2Gi" } },
                "metadata": { "annotations": { ANN_PRE_RESIZE_CAPACITY: "1Gi" } },
            })
        );
        assert_eq!(
            pv_capacity(&pv, &cap, false, Some(&old)),
            json!({ "spec": { "capacity": { "storage": "2Gi" } } })
        );
        pv.metadata.annotations = Some([(ANN_PRE_RESIZE_CAPACITY.into(), "512Mi".into())].into());
        assert_eq!(
            pv_capacity(&pv, &cap, true, Some(&old)),
            json!({ "spec": { "capacity": { "storage": "2Gi" } } })
        );
    }
}
