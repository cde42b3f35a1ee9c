//! The member snapshots of a dynamic group snapshot (upstream
//! `createSnapshotsForGroupSnapshotContent`): for each member the driver reported, its content
//! and its VolumeSnapshot, created or read, bound both ways.

use std::collections::BTreeMap;
use std::sync::Arc;

use controller_kit::NamespacedName;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::Shared;
use super::act::call;
use super::group_plan::{self, MemberSource};
use crate::PassError;
use crate::params::{self, SecretKind};
use crate::types::*;

impl Shared {
    /// Upstream `createSnapshotsForGroupSnapshotContent`: for each member the driver reported,
    /// the content and the snapshot (created or read), bound both ways, and the content's status
    /// from the driver's answer; members already complete are skipped.
    pub(super) async fn create_members(
        &self,
        vgs: &VolumeGroupSnapshot,
        group: &VolumeGroupSnapshotContent,
    ) -> Result<(), PassError> {
        let g = self.group_half();
        let secret = match vgs
            .spec
            .volume_group_snapshot_class_name
            .as_deref()
            .and_then(|c| g.classes.get(&ObjectRef::new(c)))
        {
            Some(class) => params::secret_reference(
                SecretKind::GroupSnapshotter,
                &class.params(),
                group.name(),
                None,
            )
            .map_err(|e| {
                format!(
                    "getGroupSnapshotSecret: failed to get secret reference for group snapshot content {}: {e}",
                    group.name()
                )
            })?,
            None => {
                return Err(
                    "getGroupSnapshotSecret: internal error: cannot find reference to volume group snapshot class"
                        .to_string()
                        .into(),
                );
            }
        };
        let uid = vgs.metadata.uid.as_deref().unwrap_or_default();
        let ns = vgs.metadata.namespace.as_deref().unwrap_or_default();
        // The source claims, by volume handle (read only when a member is missing).
        let mut sources: Option<BTreeMap<String, MemberSource>> = None;
        for info in group.members() {
            let handle = info.volume_handle.clone().unwrap_or_default();
            let (snapshot_name, content_name) = params::member_names(uid, &handle);
            let cached_vs = self.snapshot(&NamespacedName::new(ns, &snapshot_name));
            let cached_c = self.content(&content_name);
            if group_plan::member_complete(cached_vs.as_deref(), cached_c.as_deref()) {
                continue;
            }
            if sources.is_none() {
                sources = Some(self.member_sources(vgs, &group.spec.driver).await);
            }
            let source = sources.as_ref().and_then(|s| s.get(&handle));
            let content = match cached_c {
                Some(c) => c,
                None => {
                    let wanted =
                        group_plan::member_content(vgs, group, &handle, source, secret.as_ref());
                    Arc::new(self.create_or_get_content(&wanted).await?)
                }
            };
            let vs = match cached_vs {
                Some(vs) => vs,
                None => {
                    let wanted = group_plan::member_snapshot(vgs, &handle, source);
                    Arc::new(self.create_or_get_snapshot(&wanted).await?)
                }
            };
            if vs.metadata.uid.is_none() {
                return Err(format!("created snapshot {snapshot_name} has an empty UID").into());
            }
            if content.spec.volume_snapshot_ref.uid != vs.metadata.uid {
                let body = json!({"spec": {"volumeSnapshotRef": {"uid": vs.metadata.uid}}});
                self.patch_content(&content, &body).await?;
            }
            if vs.bound_content() != Some(content.name()) {
                let status = VolumeSnapshotStatus {
                    bound_volume_snapshot_content_name: Some(content.name().to_string()),
                    ..Default::default()
                };
                self.replace_status(&vs, status).await?;
            }
            if content
                .status
                .as_ref()
                .and_then(|s| s.snapshot_handle.as_ref())
                .is_none()
            {
                let status = group_plan::member_content_status(info, group);
                let body = json!({"status": status});
                let updated = call(self.contents_api().patch_status(
                    content.name(),
                    &PatchParams::default(),
                    &Patch::Merge(&body),
                ))
                .await
                .map_err(|e| {
                    PassError::api(
                        format!("content {}: setting its status failed: {e}", content.name()),
                        &e,
                    )
                })?;
                self.written_contents
                    .record(content.name(), &content, updated);
            }
        }
        Ok(())
    }

    /// The claim and volume mode of each of the group's volumes, by handle (upstream reads the
    /// PV index; here the group's claims are listed again, as for its content). A volume
    /// whose PV is not found gets a member with an empty claim, as upstream.
    async fn member_sources(
        &self,
        vgs: &VolumeGroupSnapshot,
        driver: &str,
    ) -> BTreeMap<String, MemberSource> {
        let volumes = match self.group_volumes(vgs).await {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(group_snapshot = %vgs.key(), %error, "cannot read the group's claims; members get no source claim");
                return BTreeMap::new();
            }
        };
        volumes
            .into_iter()
            .filter_map(|(pvc, pv)| {
                let spec = pv.spec?;
                let csi = spec.csi.filter(|c| c.driver == driver)?;
                Some((
                    csi.volume_handle,
                    MemberSource {
                        claim: pvc.metadata.name.unwrap_or_default(),
                        volume_mode: spec
                            .volume_mode
                            .filter(|_| self.config.prevent_volume_mode_conversion),
                    },
                ))
            })
            .collect()
    }

    async fn create_or_get_content(
        &self,
        wanted: &VolumeSnapshotContent,
    ) -> Result<VolumeSnapshotContent, PassError> {
        let api = self.contents_api();
        match call(api.create(&PostParams::default(), wanted)).await {
            Ok(c) => Ok(c),
            Err(e) if e.status_code() == Some(409) => call(api.get(wanted.name()))
                .await
                .map_err(|e| PassError::api(format!("content {}: {e}", wanted.name()), &e)),
            Err(e) => Err(PassError::api(
                format!("creating volumesnapshotcontent {}: {e}", wanted.name()),
                &e,
            )),
        }
    }

    async fn create_or_get_snapshot(
        &self,
        wanted: &VolumeSnapshot,
    ) -> Result<VolumeSnapshot, PassError> {
        let api = self.snapshots_api(wanted.metadata.namespace.as_deref().unwrap_or_default());
        let name = wanted.metadata.name.as_deref().unwrap_or_default();
        match call(api.create(&PostParams::default(), wanted)).await {
            Ok(vs) => Ok(vs),
            Err(e) if e.status_code() == Some(409) => call(api.get(name))
                .await
                .map_err(|e| PassError::api(format!("snapshot {}: {e}", wanted.key()), &e)),
            Err(e) => Err(PassError::api(
                format!(
                    "error creating or fetching volumesnapshot {}: {e}",
                    wanted.key()
                ),
                &e,
            )),
        }
    }
}
