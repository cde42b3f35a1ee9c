//! The common controller's writes of group snapshots and their contents: status (with its
//! Events and metrics), patches, failures. Every write records what the API server returned in
//! the half's `written` caches, so the next pass does not act on an older cached object.

use controller_kit::Outcome;
use kube::api::{Patch, PatchParams, PostParams};

use super::Shared;
use super::act::{call, now};
use super::group_plan;
use super::plan::Failure;
use crate::PassError;
use crate::constants::*;
use crate::types::*;

impl Shared {
    /// Reports a failure on the group snapshot (status error when new, and an Event).
    pub(super) async fn fail_group(
        &self,
        vgs: &VolumeGroupSnapshot,
        f: Failure,
    ) -> Result<Outcome, PassError> {
        if let Some(status) = group_plan::error_status(vgs, &f.message, f.not_ready, now()) {
            let written = self.replace_group_status(vgs, status).await;
            self.events
                .warning(
                    &group_plan::group_reference(vgs),
                    f.reason,
                    "GroupSnapshot",
                    &f.message,
                )
                .await;
            written?;
        }
        if f.retry {
            Err(f.message.into())
        } else {
            Ok(Outcome::Done)
        }
    }

    pub(super) async fn write_group_status(
        &self,
        vgs: &VolumeGroupSnapshot,
        update: group_plan::GroupStatusUpdate,
    ) -> Result<(), PassError> {
        let uid = vgs.metadata.uid.clone().unwrap_or_default();
        let key = vgs.key();
        let r = group_plan::group_reference(vgs);
        self.replace_group_status(vgs, update.status).await?;
        if update.created {
            self.metrics.finish(OP_CREATE_GROUP, &uid, "success");
            let note = format!("GroupSnapshot {key} was successfully created by the CSI driver.");
            self.events
                .normal(&r, REASON_GROUP_CREATED, "GroupSnapshot", &note)
                .await;
        }
        if update.ready {
            self.metrics
                .finish(OP_CREATE_GROUP_AND_READY, &uid, "success");
            let note = format!("GroupSnapshot {key} is ready to use.");
            self.events
                .normal(&r, REASON_GROUP_READY, "GroupSnapshot", &note)
                .await;
        }
        Ok(())
    }

    /// PUT of the group snapshot's `/status` (conditioned on its resourceVersion).
    pub(super) async fn replace_group_status(
        &self,
        vgs: &VolumeGroupSnapshot,
        status: VolumeGroupSnapshotStatus,
    ) -> Result<(), PassError> {
        let mut next = vgs.clone();
        next.status = Some(status);
        let ns = vgs.metadata.namespace.as_deref().unwrap_or_default();
        let name = vgs.metadata.name.as_deref().unwrap_or_default();
        let updated = call(self.group_snapshots_api(ns).replace_status(
            name,
            &PostParams::default(),
            &next,
        ))
        .await
        .map_err(|e| {
            PassError::api(
                format!("group snapshot {}: status update failed: {e}", vgs.key()),
                &e,
            )
        })?;
        self.group_half()
            .written_snapshots
            .record(&vgs.key(), vgs, updated);
        Ok(())
    }

    pub(super) async fn patch_group(
        &self,
        vgs: &VolumeGroupSnapshot,
        body: &serde_json::Value,
    ) -> Result<(), PassError> {
        let ns = vgs.metadata.namespace.as_deref().unwrap_or_default();
        let name = vgs.metadata.name.as_deref().unwrap_or_default();
        let updated = call(self.group_snapshots_api(ns).patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(body),
        ))
        .await
        .map_err(|e| PassError::api(format!("group snapshot {}: {e}", vgs.key()), &e))?;
        self.group_half()
            .written_snapshots
            .record(&vgs.key(), vgs, updated);
        Ok(())
    }

    pub(super) async fn patch_group_content(
        &self,
        c: &VolumeGroupSnapshotContent,
        body: &serde_json::Value,
    ) -> Result<(), PassError> {
        let updated = call(self.group_contents_api().patch(
            c.name(),
            &PatchParams::default(),
            &Patch::Merge(body),
        ))
        .await
        .map_err(|e| PassError::api(format!("group content {}: {e}", c.name()), &e))?;
        self.group_half()
            .written_contents
            .record(c.name(), c, updated);
        Ok(())
    }
}
