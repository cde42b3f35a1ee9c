//! Which VolumeAttachment updates to enqueue: upstream's `shouldEnqueueVAChange`.
//!
//! An update whose only change is `status.attachError` / `status.detachError` (plus
//! resourceVersion and managedFields) was most likely written by this controller a moment ago;
//! enqueueing it would retry at once and defeat the per-key exponential backoff. A repeated
//! resourceVersion (a relist) is always enqueued.
//!
//! Our informer hands handlers only the new object, so the filter remembers, per VA name, the
//! resourceVersion, whether an error was set, and a digest of everything else. Memory: one small
//! entry per VA of this driver.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::storage::v1::VolumeAttachment;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    resource_version: Option<String>,
    has_error: bool,
    digest: u64,
}

/// Remembers the last version of each VolumeAttachment seen by the update handler.
#[derive(Debug, Default)]
pub struct ChangeFilter {
    seen: Mutex<HashMap<String, Seen>>,
}

fn seen(va: &VolumeAttachment) -> Seen {
    let status = va.status.as_ref();
    let has_error = status.is_some_and(|s| s.attach_error.is_some() || s.detach_error.is_some());
    let mut rest = va.clone();
    rest.metadata.resource_version = None;
    rest.metadata.managed_fields = None;
    if let Some(s) = rest.status.as_mut() {
        s.attach_error = None;
        s.detach_error = None;
    }
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(&rest)
        .unwrap_or_default()
        .hash(&mut hasher);
    Seen {
        resource_version: va.metadata.resource_version.clone(),
        has_error,
        digest: hasher.finish(),
    }
}

impl ChangeFilter {
    /// Records `va` and says whether this change should be enqueued.
    pub fn should_enqueue(&self, name: &str, va: &VolumeAttachment) -> bool {
        let new = seen(va);
        let old = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), new.clone());
        let Some(old) = old else { return true }; // an add
        if old.resource_version == new.resource_version {
            return true; // a relist or resync
        }
        if !old.has_error && !new.has_error {
            return true;
        }
        old.digest != new.digest
    }

    /// Forgets a deleted VolumeAttachment.
    pub fn forget(&self, name: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::storage::v1::{VolumeAttachmentStatus, VolumeError};

    fn va(
        rv: &str,
        attached: bool,
        attach_err: Option<&str>,
        detach_err: Option<&str>,
    ) -> VolumeAttachment {
        let err = |m: Option<&str>| {
            m.map(|m| VolumeError {
                message: Some(m.into()),
                ..Default::default()
            })
        };
        let mut va = VolumeAttachment::default();
        va.metadata.name = Some("va1".into());
        va.metadata.resource_version = Some(rv.into());
        va.status = Some(VolumeAttachmentStatus {
            attached,
            attach_error: err(attach_err),
            detach_error: err(detach_err),
            ..Default::default()
        });
        va
    }

    /// The cases of upstream's `TestShouldEnqueueVAChange`.
    #[test]
    fn own_error_writes_are_not_enqueued() {
        let cases = [
            (
                "same rv (resync)",
                va("1", false, Some("e"), None),
                va("1", false, Some("e2"), None),
                true,
            ),
            (
                "no errors anywhere",
                va("1", false, None, None),
                va("2", true, None, None),
                true,
            ),
            (
                "attach error added",
                va("1", false, None, None),
                va("2", false, Some("e"), None),
                false,
            ),
            (
                "attach error changed",
                va("1", false, Some("e"), None),
                va("2", false, Some("e2"), None),
                false,
            ),
            (
                "detach error added",
                va("1", true, None, None),
                va("2", true, None, Some("e")),
                false,
            ),
            (
                "error removed",
                va("1", false, Some("e"), None),
                va("2", false, None, None),
                false,
            ),
            (
                "error and other change",
                va("1", false, Some("e"), None),
                va("2", true, Some("e2"), None),
                true,
            ),
        ];
        for (name, old, new, want) in cases {
            let f = ChangeFilter::default();
            assert!(
                f.should_enqueue("va1", &old),
                "{name}: first sight is an add"
            );
            assert_eq!(f.should_enqueue("va1", &new), want, "{name}");
        }
    }

    #[test]
    fn managed_fields_alone_do_not_count() {
        let f = ChangeFilter::default();
        let old = va("1", false, Some("e"), None);
        let mut new = va("2", false, Some("e2"), None);
        new.metadata.managed_fields = Some(vec![Default::default()]);
        f.should_enqueue("va1", &old);
        assert!(!f.should_enqueue("va1", &new));
        f.forget("va1");
        assert!(
            f.should_enqueue("va1", &new),
            "after forget it is an add again"
        );
    }
}
