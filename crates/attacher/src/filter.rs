//! Which VolumeAttachment updates to enqueue: upstream's `shouldEnqueueVAChange`.
//!
//! An update whose only change is `status.attachError` / `status.detachError` (plus
//! resourceVersion and managedFields) was most likely written by this controller a moment ago;
//! enqueueing it would retry at once and defeat the per-key exponential backoff. A repeated
//! resourceVersion (a relist) is always enqueued. The informer hands the handler the state its
//! cache held before, so the decision is a pure function of the two.

use k8s_openapi::api::storage::v1::VolumeAttachment;

fn has_error(va: &VolumeAttachment) -> bool {
    va.status
        .as_ref()
        .is_some_and(|s| s.attach_error.is_some() || s.detach_error.is_some())
}

/// `va` without what an error write changes.
fn without_errors(va: &VolumeAttachment) -> VolumeAttachment {
    let mut rest = va.clone();
    rest.metadata.resource_version = None;
    rest.metadata.managed_fields = None;
    if let Some(s) = rest.status.as_mut() {
        s.attach_error = None;
        s.detach_error = None;
    }
    rest
}

/// Whether the change from `previous` (`None`: an add) to `new` should be enqueued.
pub fn should_enqueue(previous: Option<&VolumeAttachment>, new: &VolumeAttachment) -> bool {
    let Some(old) = previous else { return true };
    if old.metadata.resource_version == new.metadata.resource_version {
        return true; // a relist or resync
    }
    if !has_error(old) && !has_error(new) {
        return true;
    }
    without_errors(old) != without_errors(new)
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
            assert!(should_enqueue(None, &old), "{name}: an add");
            assert_eq!(should_enqueue(Some(&old), &new), want, "{name}");
        }
    }

    #[test]
    fn managed_fields_alone_do_not_count() {
        let old = va("1", false, Some("e"), None);
        let mut new = va("2", false, Some("e2"), None);
        new.metadata.managed_fields = Some(vec![Default::default()]);
        assert!(!should_enqueue(Some(&old), &new));
    }
}
