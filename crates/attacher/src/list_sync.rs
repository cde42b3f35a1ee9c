//! The periodic ListVolumes sync (`--reconcile-sync`): when the driver reports LIST_VOLUMES and
//! LIST_VOLUMES_PUBLISHED_NODES, compare the driver's publications with `status.attached` and
//! force one sync of every VolumeAttachment where they disagree.
//!
//! As upstream (`ReconcileVA`): the first pass runs at start, the next `reconcile_sync` after the
//! end of the previous one; one `--timeout` covers a whole pass (all pages); a disagreement only
//! sets a one-shot force-sync flag and queues the VA, never patches it; publications without a
//! VA are ignored; inline VAs are skipped (upstream's `RepairVolumeHandle` rejects them for a
//! driver that is not a migrated in-tree one).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use csi::{CsiClient, CsiError, v1};
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use crate::controller::Shared;
use crate::request::{self, DriverInfo};

/// Volume handle → node IDs it is published to, as the driver says.
pub type Published = HashMap<String, HashSet<String>>;

/// Pages through ListVolumes (`max_entries` per page, 0 = no limit).
pub async fn list_published(csi: &CsiClient, max_entries: i32) -> Result<Published, CsiError> {
    let mut published = Published::new();
    let mut token = String::new();
    loop {
        let resp = csi
            .list_volumes(v1::ListVolumesRequest {
                max_entries,
                starting_token: token,
            })
            .await?;
        for entry in resp.entries {
            let (Some(volume), Some(status)) = (entry.volume, entry.status) else {
                continue;
            };
            published
                .entry(volume.volume_id)
                .or_default()
                .extend(status.published_node_ids);
        }
        if resp.next_token.is_empty() {
            return Ok(published);
        }
        token = resp.next_token;
    }
}

/// Whether `va` needs a forced sync: the driver's view (published to its node or not) differs
/// from `status.attached`. `None` when it cannot be judged (no node ID, no PV, inline, not ours).
pub fn out_of_sync(
    driver: &DriverInfo,
    va: &VolumeAttachment,
    pv: Option<&PersistentVolume>,
    csinode: Option<&CSINode>,
    published: &Published,
) -> Option<bool> {
    if va.spec.attacher != driver.name {
        return None;
    }
    request::pv_name(va)?;
    let handle = &pv?.spec.as_ref()?.csi.as_ref()?.volume_handle;
    let node_id = request::node_id(&driver.name, &va.spec.node_name, csinode, Some(va)).ok()?;
    let found = published.get(handle).is_some_and(|n| n.contains(&node_id));
    let attached = va.status.as_ref().is_some_and(|s| s.attached);
    Some(found != attached)
}

async fn pass(s: &Shared) -> Result<usize, CsiError> {
    let published = list_published(&s.csi, s.config.max_entries).await?;
    let mut forced = 0;
    for va in s.vas.state() {
        let pv = request::pv_name(&va).and_then(|n| s.pvs.get(&ObjectRef::new(n)));
        let csinode = s.csinodes.get(&ObjectRef::new(&va.spec.node_name));
        if out_of_sync(
            &s.driver,
            &va,
            pv.as_deref(),
            csinode.as_deref(),
            &published,
        ) == Some(true)
        {
            tracing::info!(va = %va.metadata.name.as_deref().unwrap_or_default(), "ListVolumes disagrees with status.attached; forcing a sync");
            s.force_sync(&va);
            forced += 1;
        }
    }
    Ok(forced)
}

/// Runs the sync until `token` is cancelled; returns at once if the driver cannot list
/// publications or `reconcile_sync` is zero.
pub(crate) async fn run(s: Arc<Shared>, token: CancellationToken) {
    if !s.driver.publish_unpublish
        || !s.driver.list_published_nodes
        || s.config.reconcile_sync.is_zero()
    {
        return;
    }
    loop {
        let deadline = s.csi.timeout();
        tokio::select! {
            () = token.cancelled() => return,
            r = tokio::time::timeout(deadline, pass(&s)) => match r {
                Ok(Ok(forced)) => tracing::debug!(forced, "VolumeAttachment reconcile pass done"),
                Ok(Err(error)) => tracing::warn!(%error, "Failed to reconcile VolumeAttachment"),
                Err(_) => tracing::warn!(timeout = ?deadline, "Failed to reconcile VolumeAttachment: deadline exceeded"),
            },
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(s.config.reconcile_sync) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::NODE_ID_ANNOTATION;
    use k8s_openapi::api::core::v1::{CSIPersistentVolumeSource, PersistentVolumeSpec};
    use k8s_openapi::api::storage::v1::{VolumeAttachmentSource, VolumeAttachmentStatus};
    use std::collections::BTreeMap;

    fn driver() -> DriverInfo {
        DriverInfo {
            name: "d".into(),
            finalizer: "external-attacher/d".into(),
            publish_unpublish: true,
            publish_readonly: false,
            single_node_multi_writer: false,
            list_published_nodes: true,
            default_fstype: String::new(),
        }
    }

    fn va(attached: bool, inline: bool) -> VolumeAttachment {
        let mut va = VolumeAttachment::default();
        va.spec.attacher = "d".into();
        va.spec.node_name = "node1".into();
        va.metadata.annotations =
            Some(BTreeMap::from([(NODE_ID_ANNOTATION.into(), "id-1".into())]));
        va.spec.source = if inline {
            VolumeAttachmentSource {
                inline_volume_spec: Some(Default::default()),
                ..Default::default()
            }
        } else {
            VolumeAttachmentSource {
                persistent_volume_name: Some("pv1".into()),
                ..Default::default()
            }
        };
        va.status = Some(VolumeAttachmentStatus {
            attached,
            ..Default::default()
        });
        va
    }

    fn pv() -> PersistentVolume {
        PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                csi: Some(CSIPersistentVolumeSource {
                    driver: "d".into(),
                    volume_handle: "vol-1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn disagreement_is_detected_both_ways() {
        let on = Published::from([("vol-1".to_string(), HashSet::from(["id-1".to_string()]))]);
        let off = Published::new();
        let d = driver();
        let p = pv();
        assert_eq!(
            out_of_sync(&d, &va(true, false), Some(&p), None, &on),
            Some(false)
        );
        assert_eq!(
            out_of_sync(&d, &va(false, false), Some(&p), None, &on),
            Some(true)
        );
        assert_eq!(
            out_of_sync(&d, &va(true, false), Some(&p), None, &off),
            Some(true)
        );
        assert_eq!(
            out_of_sync(&d, &va(false, false), Some(&p), None, &off),
            Some(false)
        );
        // Not judged: inline, PV missing, other attacher.
        assert_eq!(out_of_sync(&d, &va(false, true), Some(&p), None, &on), None);
        assert_eq!(out_of_sync(&d, &va(false, false), None, None, &on), None);
        let mut other = va(false, false);
        other.spec.attacher = "x".into();
        assert_eq!(out_of_sync(&d, &other, Some(&p), None, &on), None);
    }
}
