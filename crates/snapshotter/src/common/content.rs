//! The common controller's pass over a VolumeSnapshotContent (upstream `syncContent`): its
//! finalizer, the being-deleted mark when its snapshot goes, and the snapshot's sync when its
//! status lags.

use std::sync::Arc;

use controller_kit::{NamespacedName, Outcome};
use serde_json::json;

use super::Shared;
use super::act::{again, content_ref};
use super::plan::{self, ContentStep};
use crate::PassError;
use crate::constants::*;

impl Shared {
    pub(crate) async fn sync_content(self: Arc<Self>, name: String) -> Result<Outcome, PassError> {
        let Some(content) = self.content(&name) else {
            return Ok(Outcome::Done);
        };
        let vs_key = content.snapshot_key();
        let vs = vs_key
            .split_once('/')
            .and_then(|(ns, n)| self.snapshot(&NamespacedName::new(ns, n)));
        let (step, sync) = plan::content_step(&content, vs.as_deref());
        if sync
            && let Some(v) = &vs
            && let Some(key) = NamespacedName::of(&v.metadata)
        {
            self.snapshot_queue.add(key);
        }
        match step {
            ContentStep::Done => Ok(Outcome::Done),
            ContentStep::Invalid => {
                let message = "Exactly one of VolumeHandle and SnapshotHandle should be specified";
                self.events
                    .warning(
                        &content_ref(&content),
                        REASON_CONTENT_VALIDATION,
                        "Content",
                        message,
                    )
                    .await;
                Err(message.to_string().into())
            }
            ContentStep::AddFinalizer => {
                let mut finalizers = content.metadata.finalizers.clone().unwrap_or_default();
                finalizers.push(FIN_CONTENT_BOUND.into());
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": content.metadata.resource_version}});
                self.patch_content(&content, &body).await?;
                again()
            }
            ContentStep::MarkBeingDeleted => {
                let body = json!({"metadata": {"annotations": {ANN_BEING_DELETED: YES}}});
                self.patch_content(&content, &body).await?;
                Ok(Outcome::Done)
            }
        }
    }
}
