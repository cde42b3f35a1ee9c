//! The CSI half (upstream csi-snapshotter): cuts, polls and deletes this driver's snapshots for
//! its VolumeSnapshotContents, under upstream's Lease `external-snapshotter-leader-<driver>`.
//!
//! # What is cached
//! This driver's contents and every VolumeSnapshotClass (small); nothing else. No periodic
//! resync: a content that is not ready is polled with its own backoff (1 s doubling to
//! `--retry-interval-max`), so the time a new snapshot takes to become ready does not depend on
//! how many others exist.
//!
//! # Invariants
//! - `volumesnapshot-being-created` is set before every CreateSnapshot and removed only after a
//!   final answer, so a content whose creation may still run on the driver is never released
//!   (nothing leaks); the class's parameters and secrets are checked *before* it is set, so a bad
//!   class never blocks deletion (upstream's trap).
//! - Deletion acts only on a content marked `volumesnapshot-being-deleted` by the common
//!   controller (or an unbound pre-provisioned one), as upstream.

pub(crate) mod act;
mod group;
pub mod group_plan;
pub mod plan;

use std::sync::Arc;

use controller_kit::events::EventRecorder;
use controller_kit::expiring::Expiring;
use controller_kit::written::Written;
use controller_kit::{Change, ControllerContext, Informers, WorkQueue};
use futures::future::BoxFuture;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use crate::constants::*;
use crate::types::*;

/// The CSI half's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarConfig {
    /// `--snapshot-name-prefix` (default `snapshot`).
    pub name_prefix: String,
    /// `--snapshot-name-uuid-length` (default: the whole UID).
    pub name_uuid_length: Option<usize>,
    /// `--extra-create-metadata`: the snapshot's and content's names among the parameters.
    pub extra_create_metadata: bool,
    /// Serve group contents (`groupsnapshot.storage.k8s.io/v1`); the manager turns it on when
    /// the API server serves the group kinds.
    pub groups: bool,
    /// `--groupsnapshot-name-prefix` (default `groupsnapshot`).
    pub group_name_prefix: String,
    /// `--groupsnapshot-name-uuid-length` (default: the whole UID).
    pub group_name_uuid_length: Option<usize>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            name_prefix: "snapshot".into(),
            name_uuid_length: None,
            extra_create_metadata: false,
            groups: false,
            group_name_prefix: "groupsnapshot".into(),
            group_name_uuid_length: None,
        }
    }
}

pub(crate) const NAME: &str = "snapshotter";

/// The CSI half (see the module docs).
pub struct Sidecar {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("driver", &self.shared.driver)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) ctx: ControllerContext,
    pub(crate) config: SidecarConfig,
    pub(crate) csi: csi::CsiClient,
    pub(crate) driver: String,
    /// The driver has LIST_SNAPSHOTS (without it, pre-provisioned contents are taken as ready).
    pub(crate) can_list: bool,
    pub(crate) contents: Store<VolumeSnapshotContent>,
    pub(crate) classes: Store<VolumeSnapshotClass>,
    pub(crate) queue: WorkQueue<String>,
    pub(crate) written: Written<VolumeSnapshotContent>,
    /// Polls of contents not ready yet, for their backoff.
    pub(crate) polls: Expiring<String, u32>,
    pub(crate) events: EventRecorder,
    /// The group half, when served.
    pub(crate) groups: Option<SidecarGroups>,
}

/// This driver's group contents and the group classes.
pub(crate) struct SidecarGroups {
    pub(crate) contents: Store<VolumeGroupSnapshotContent>,
    pub(crate) classes: Store<VolumeGroupSnapshotClass>,
    pub(crate) queue: WorkQueue<String>,
    pub(crate) written: Written<VolumeGroupSnapshotContent>,
    /// The driver offers CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT.
    pub(crate) capable: bool,
}

/// Upstream's driver filter for group contents.
fn is_our_group(
    c: &VolumeGroupSnapshotContent,
    driver: &str,
    classes: &Store<VolumeGroupSnapshotClass>,
) -> bool {
    let src = &c.spec.source;
    if c.spec.driver != driver
        || (c.volume_handles().is_empty() && src.group_snapshot_handles.is_none())
    {
        return false;
    }
    match c.spec.volume_group_snapshot_class_name.as_deref() {
        Some(class) => classes
            .get(&ObjectRef::new(class))
            .is_none_or(|k| k.driver == driver),
        None => true,
    }
}

fn build_groups(
    ctx: &ControllerContext,
    driver: &csi::Driver,
    informers: &mut Informers,
) -> SidecarGroups {
    use csi::v1::group_controller_service_capability::rpc::Type as GroupCap;
    let name = driver.discovery.driver_name.clone();
    let capable = driver
        .discovery
        .has_group_controller(GroupCap::CreateDeleteGetVolumeGroupSnapshot);
    if !capable {
        tracing::warn!(driver = %name, "the CSI driver does not offer CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT: its group snapshot contents get an error");
    }
    let queue = WorkQueue::new(
        QUEUE_SIDECAR_GROUP_CONTENTS,
        ctx.backoff,
        ctx.metrics.queues(),
    );
    let classes = informers
        .for_type::<VolumeGroupSnapshotClass>()
        .keep(|_| true)
        .store();
    let contents = {
        let (d, d2) = (name.clone(), name.clone());
        let (k2, q) = (classes.clone(), queue.clone());
        informers
            .for_type::<VolumeGroupSnapshotContent>()
            .keep(move |c| c.spec.driver == d)
            .on_change(move |change: &Change<'_, VolumeGroupSnapshotContent>| {
                let Change::Applied { object, previous } = change else {
                    return;
                };
                if is_our_group(object, &d2, &k2)
                    && previous.is_none_or(|p| group_plan::should_enqueue(p, object))
                    && let Some(n) = &object.metadata.name
                {
                    q.add(n.clone());
                }
            })
            .store()
    };
    SidecarGroups {
        contents,
        classes,
        queue,
        written: Written::default(),
        capable,
    }
}

/// Upstream's driver filter: this driver's content with a source, whose class (if cached) is
/// this driver's too.
fn is_ours(c: &VolumeSnapshotContent, driver: &str, classes: &Store<VolumeSnapshotClass>) -> bool {
    let src = &c.spec.source;
    if c.spec.driver != driver || (src.volume_handle.is_none() && src.snapshot_handle.is_none()) {
        return false;
    }
    match c.spec.volume_snapshot_class_name.as_deref() {
        Some(class) => classes
            .get(&ObjectRef::new(class))
            .is_none_or(|k| k.driver == driver),
        None => true,
    }
}

pub(crate) fn build(
    ctx: ControllerContext,
    driver: &csi::Driver,
    config: SidecarConfig,
    informers: &mut Informers,
) -> Sidecar {
    use csi::v1::controller_service_capability::rpc::Type as Cap;
    let name = driver.discovery.driver_name.clone();
    let queue = WorkQueue::new(QUEUE_SIDECAR_CONTENTS, ctx.backoff, ctx.metrics.queues());
    let classes = informers
        .for_type::<VolumeSnapshotClass>()
        .keep(|_| true)
        .store();
    let contents = {
        let (d, d2) = (name.clone(), name.clone());
        let k2 = classes.clone();
        let q = queue.clone();
        informers
            .for_type::<VolumeSnapshotContent>()
            .keep(move |c| c.spec.driver == d)
            .on_change(move |change: &Change<'_, VolumeSnapshotContent>| {
                let Change::Applied { object, previous } = change else {
                    return;
                };
                if !is_ours(object, &d2, &k2) {
                    return;
                }
                if previous.is_none_or(|p| plan::should_enqueue(p, object))
                    && let Some(n) = &object.metadata.name
                {
                    q.add(n.clone());
                }
            })
            .store()
    };
    let events = EventRecorder::new(
        ctx.client.clone(),
        &sidecar_component(&name),
        Some(ctx.identity.clone()),
    );
    let groups = config.groups.then(|| build_groups(&ctx, driver, informers));
    let memory = ctx.backoff.max * 2;
    Sidecar {
        shared: Arc::new(Shared {
            csi: driver.client.clone(),
            can_list: driver.discovery.has_controller(Cap::ListSnapshots),
            ctx,
            config,
            driver: name,
            contents,
            classes,
            queue,
            written: Written::default(),
            polls: Expiring::new(memory),
            events,
            groups,
        }),
    }
}

impl controller_kit::Controller for Sidecar {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()> {
        let s = self.shared.clone();
        Box::pin(async move {
            for c in s.contents.state() {
                if is_ours(&c, &s.driver, &s.classes)
                    && let Some(n) = &c.metadata.name
                {
                    s.queue.add(n.clone());
                }
            }
            let workers = controller_kit::Workers {
                controller: NAME,
                count: s.ctx.workers,
                metrics: s.ctx.metrics.controllers(),
            };
            let contents = controller_kit::run_workers(
                workers.clone(),
                s.queue.clone(),
                s.clone(),
                |s, name| async move { crate::settle(s.sync(name).await) },
                token.clone(),
            );
            let groups = async {
                let Some(g) = &s.groups else {
                    return;
                };
                for c in g.contents.state() {
                    if is_our_group(&c, &s.driver, &g.classes)
                        && let Some(n) = &c.metadata.name
                    {
                        g.queue.add(n.clone());
                    }
                }
                controller_kit::run_workers(
                    workers.clone(),
                    g.queue.clone(),
                    s.clone(),
                    |s, name| async move { crate::settle(s.sync_group(name).await) },
                    token.clone(),
                )
                .await;
            };
            futures::join!(contents, groups);
        })
    }
}

impl Shared {
    /// The group content as last written here or cached, if it is this driver's.
    pub(crate) fn group_content(&self, name: &str) -> Option<Arc<VolumeGroupSnapshotContent>> {
        let g = self.groups.as_ref()?;
        g.written
            .read(name, g.contents.get(&ObjectRef::new(name)))
            .filter(|c| is_our_group(c, &self.driver, &g.classes))
    }

    /// The content as last written here or cached, if it is this driver's.
    pub(crate) fn content(&self, name: &str) -> Option<Arc<VolumeSnapshotContent>> {
        self.written
            .read(name, self.contents.get(&ObjectRef::new(name)))
            .filter(|c| is_ours(c, &self.driver, &self.classes))
    }
}
