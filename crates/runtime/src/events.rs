//! Kubernetes Events, published without ever blocking or failing a reconcile.
//!
//! Built on kube-runtime's recorder (events.k8s.io/v1, with repeated events folded into a series
//! instead of new objects). Event reasons are constants of the controller that emits them, with
//! upstream's values. Publishing is bounded by a timeout; a failure is logged and dropped, since an
//! Event is information, not state.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest note the API accepts (1 KiB); longer messages are cut.
const MAX_NOTE: usize = 1024;

/// Publishes Events for one controller. Cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    recorder: std::sync::Arc<Recorder>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder reporting as `controller` (e.g. `external-provisioner`) from `instance` (the pod).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance,
        };
        Self {
            recorder: std::sync::Arc::new(Recorder::new(client, reporter)),
        }
    }

    /// Publishes a Normal event.
    pub async fn normal(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(regarding, EventType::Normal, reason, action, note)
            .await;
    }

    /// Publishes a Warning event.
    pub async fn warning(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(regarding, EventType::Warning, reason, action, note)
            .await;
    }

    async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, MAX_NOTE)),
            action: action.to_string(),
            secondary: None,
        };
        let result =
            tokio::time::timeout(PUBLISH_TIMEOUT, self.recorder.publish(&event, regarding)).await;
        let object = regarding.name.as_deref().unwrap_or_default();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(object, reason, %error, "could not publish event"),
            Err(_) => tracing::warn!(object, reason, "publishing an event timed out"),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = super::truncate(&s, 1024);
        assert!(t.len() <= 1024);
        assert!(s.starts_with(&t));
    }
}
