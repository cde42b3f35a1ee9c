//! The deletion pass of a VolumeSnapshot (upstream `processSnapshotWithDeletionTimestamp`): the
//! restore guard, the being-deleted mark, the content's deletion, then the finalizers.

use controller_kit::Outcome;
use kube::api::DeleteParams;
use serde_json::json;

use super::Shared;
use super::act::{again, call, now};
use super::plan::{self, SnapshotFacts, SnapshotStep};
use crate::PassError;
use crate::constants::*;
use crate::metrics::snapshot_type;
use crate::types::*;

impl Shared {
    pub(super) async fn sync_deleting(&self, vs: &VolumeSnapshot) -> Result<Outcome, PassError> {
        let uid = vs.metadata.uid.clone().unwrap_or_default();
        self.metrics.start(
            OP_DELETE,
            &uid,
            &self.driver_of(vs),
            snapshot_type(vs.source_content().is_some()),
        );
        let content = plan::content_name(vs).and_then(|c| self.content(&c));
        let name = vs.metadata.name.as_deref().unwrap_or_default();
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let restoring = self.claims.state().iter().any(|pvc| {
            pvc.metadata.namespace.as_deref() == Some(ns) && plan::restores_from(pvc, name)
        });
        // A member waits for its group snapshot to be gone (without the group half, it is
        // taken as gone).
        let group_exists = vs
            .status
            .as_ref()
            .and_then(|s| s.volume_group_snapshot_name.as_deref())
            .is_some_and(|g| {
                self.group_snapshot(&controller_kit::NamespacedName::new(ns, g))
                    .is_some()
            });
        let facts = SnapshotFacts {
            vs,
            content: content.as_deref(),
            restoring,
            group_exists,
            group_name: None,
            now: now(),
        };
        let step = plan::deletion_step(&facts);
        tracing::debug!(snapshot = %vs.key(), ?step, "snapshot deletion pass");
        match step {
            SnapshotStep::Done => Ok(Outcome::Done),
            SnapshotStep::DeletePending { message } => {
                self.events
                    .warning(
                        &plan::snapshot_reference(vs),
                        REASON_DELETE_PENDING,
                        "Delete",
                        &message,
                    )
                    .await;
                Err(format!(
                    "snapshot {} is in use (being used to restore a PVC), will retry deletion",
                    vs.key()
                )
                .into())
            }
            SnapshotStep::MarkContentBeingDeleted { content } => {
                let Some(c) = self.content(&content) else {
                    return again();
                };
                let body = json!({"metadata": {"annotations": {ANN_BEING_DELETED: YES}}});
                self.patch_content(&c, &body).await?;
                again()
            }
            SnapshotStep::DeleteContent { content } => {
                match call(
                    self.contents_api()
                        .delete(&content, &DeleteParams::default()),
                )
                .await
                {
                    Ok(_) => again(),
                    Err(e) if e.is_not_found() => again(),
                    Err(e) => {
                        self.events
                            .warning(
                                &plan::snapshot_reference(vs),
                                REASON_CONTENT_DELETE_ERROR,
                                "Delete",
                                "Failed to delete snapshot content API object",
                            )
                            .await;
                        Err(format!(
                            "failed to delete VolumeSnapshotContent {content} from API server: \"{e}\""
                        )
                        .into())
                    }
                }
            }
            SnapshotStep::RemoveFinalizers { bound, in_group } => {
                if let Some(claim) = self.claim_to_release(vs, true)
                    && let Err(e) = self.release_claim(vs, &claim).await
                {
                    self.events
                        .warning(
                            &plan::snapshot_reference(vs),
                            REASON_PVC_FINALIZER_ERROR,
                            "Finalizer",
                            "Error check and remove PVC Finalizer for VolumeSnapshot",
                        )
                        .await;
                    return Err(e);
                }
                let finalizers: Vec<String> = vs
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .filter(|f| {
                        !(f.as_str() == FIN_SNAPSHOT_AS_SOURCE
                            || (bound && f.as_str() == FIN_SNAPSHOT_BOUND)
                            || (in_group && f.as_str() == FIN_SNAPSHOT_IN_GROUP))
                    })
                    .cloned()
                    .collect();
                if Some(&finalizers) != vs.metadata.finalizers.as_ref() {
                    self.set_snapshot_finalizers(vs, finalizers).await?;
                }
                Ok(Outcome::Done)
            }
            step => Err(format!("unexpected step {step:?} for a snapshot being deleted").into()),
        }
    }
}
