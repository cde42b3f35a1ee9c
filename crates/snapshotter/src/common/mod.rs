//! The common controller (upstream snapshot-controller): binds VolumeSnapshots to contents,
//! creates dynamic contents, propagates status, and runs the deletion handshake. It is
//! cluster-wide, as upstream's: one per cluster serves every driver's snapshots, under
//! upstream's Lease `snapshot-controller-leader`.
//!
//! # What is cached
//! Every VolumeSnapshot, VolumeSnapshotContent and VolumeSnapshotClass (the controller serves
//! them all). Of claims, only those it has business with: claims holding its
//! `pvc-as-source-protection` finalizer, and Pending claims restoring from a snapshot (the
//! deletion guard). A snapshot's source claim that is not cached is read live when needed;
//! PersistentVolumes are always read live (as upstream does). No periodic resync: every change
//! of the objects arrives through the watch, and every failure is retried with backoff.
//!
//! # Invariants
//! - One step per pass ([`plan`]); the pass is queued again after a write, and what it wrote is
//!   what the next pass reads ([`Written`]).
//! - A content whose snapshot is gone is never deleted (upstream's rule against data loss).
//! - The claim's finalizer is released before the snapshot's own (nothing would sync the
//!   snapshot afterwards).

pub(crate) mod act;
mod claims;
mod content;
mod deletion;
mod group;
pub mod group_plan;
mod group_writes;
mod members;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use controller_kit::events::EventRecorder;
use controller_kit::written::Written;
use controller_kit::{Change, ControllerContext, Informers, NamespacedName, WorkQueue};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use crate::constants::*;
use crate::metrics::OperationMetrics;
use crate::types::*;

/// The common controller's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommonConfig {
    /// `--prevent-volume-mode-conversion` (default true): the source PV's `volumeMode` is
    /// copied to the content's `sourceVolumeMode`.
    pub prevent_volume_mode_conversion: bool,
    /// Serve group snapshots (`groupsnapshot.storage.k8s.io/v1`); the manager turns it on when
    /// the API server serves the group kinds (upstream's `CSIVolumeGroupSnapshot` gate).
    pub groups: bool,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            prevent_volume_mode_conversion: true,
            groups: false,
        }
    }
}

pub(crate) const NAME: &str = "snapshot-controller";

/// The common controller (see the module docs).
pub struct CommonController {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CommonController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonController").finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) ctx: ControllerContext,
    pub(crate) config: CommonConfig,
    pub(crate) snapshots: Store<VolumeSnapshot>,
    pub(crate) contents: Store<VolumeSnapshotContent>,
    pub(crate) classes: Store<VolumeSnapshotClass>,
    pub(crate) claims: Store<PersistentVolumeClaim>,
    pub(crate) snapshot_queue: WorkQueue<NamespacedName>,
    pub(crate) content_queue: WorkQueue<String>,
    pub(crate) written_snapshots: Written<VolumeSnapshot>,
    pub(crate) written_contents: Written<VolumeSnapshotContent>,
    pub(crate) events: EventRecorder,
    pub(crate) metrics: OperationMetrics,
    /// The group snapshot half, when served.
    pub(crate) groups: Option<Groups>,
}

/// The group snapshot kinds' caches and queues.
pub(crate) struct Groups {
    pub(crate) snapshots: Store<VolumeGroupSnapshot>,
    pub(crate) contents: Store<VolumeGroupSnapshotContent>,
    pub(crate) classes: Store<VolumeGroupSnapshotClass>,
    pub(crate) snapshot_queue: WorkQueue<NamespacedName>,
    pub(crate) content_queue: WorkQueue<String>,
    pub(crate) written_snapshots: Written<VolumeGroupSnapshot>,
    pub(crate) written_contents: Written<VolumeGroupSnapshotContent>,
}

/// Registers the group kinds' informers: every group snapshot, content and class.
fn build_groups(
    ctx: &ControllerContext,
    informers: &mut Informers,
    snapshot_queue: &WorkQueue<NamespacedName>,
    snapshot_store: &Store<VolumeSnapshot>,
    metrics: &OperationMetrics,
) -> Groups {
    let group_queue = WorkQueue::new(QUEUE_GROUP_SNAPSHOTS, ctx.backoff, ctx.metrics.queues());
    let content_queue = WorkQueue::new(QUEUE_GROUP_CONTENTS, ctx.backoff, ctx.metrics.queues());
    let snapshots = {
        let (gq, cq, sq) = (
            group_queue.clone(),
            content_queue.clone(),
            snapshot_queue.clone(),
        );
        let (m, snaps) = (metrics.clone(), snapshot_store.clone());
        informers
            .for_type::<VolumeGroupSnapshot>()
            .keep(|_| true)
            .on_change(move |change: &Change<'_, VolumeGroupSnapshot>| {
                let vgs = change.object();
                let Some(key) = NamespacedName::of(&vgs.metadata) else {
                    return;
                };
                if let Change::Deleted(_) = change {
                    if let Some(uid) = vgs.metadata.uid.as_deref() {
                        m.finish(OP_DELETE_GROUP, uid, "success");
                    }
                    if let Some(c) = group_plan::content_name(vgs) {
                        cq.add(c);
                    }
                    // Members wait for their group to be gone (the group deletion guard).
                    for vs in snaps.state() {
                        if vs.metadata.namespace == vgs.metadata.namespace
                            && group_plan::is_member_of(&vs, &key.name)
                            && let Some(k) = NamespacedName::of(&vs.metadata)
                        {
                            sq.add(k);
                        }
                    }
                }
                gq.add(key);
            })
            .store()
    };
    let contents = {
        let (gq, cq) = (group_queue.clone(), content_queue.clone());
        informers
            .for_type::<VolumeGroupSnapshotContent>()
            .keep(|_| true)
            .on_change(move |change: &Change<'_, VolumeGroupSnapshotContent>| {
                let content = change.object();
                // Its group snapshot follows its status, creates members from it, and waits
                // for its disappearance.
                let r = &content.spec.volume_group_snapshot_ref;
                if let (Some(ns), Some(n)) = (&r.namespace, &r.name) {
                    gq.add(NamespacedName::new(ns, n));
                }
                if let Some(name) = &content.metadata.name {
                    cq.add(name.clone());
                }
            })
            .store()
    };
    let classes = informers
        .for_type::<VolumeGroupSnapshotClass>()
        .keep(|_| true)
        .store();
    Groups {
        snapshots,
        contents,
        classes,
        snapshot_queue: group_queue,
        content_queue,
        written_snapshots: Written::default(),
        written_contents: Written::default(),
    }
}

/// Whether the claim concerns the common controller (see the module docs).
fn claim_kept(pvc: &PersistentVolumeClaim) -> bool {
    controller_kit::meta::has_finalizer(&pvc.metadata, FIN_PVC_AS_SOURCE)
        || restored_snapshot(pvc).is_some()
}

/// The snapshot a Pending claim restores from.
fn restored_snapshot(pvc: &PersistentVolumeClaim) -> Option<&str> {
    let ds = pvc.spec.as_ref()?.data_source.as_ref()?;
    let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    (pending && ds.kind == "VolumeSnapshot" && ds.api_group.as_deref() == Some(GROUP))
        .then_some(ds.name.as_str())
}

pub(crate) fn build(
    ctx: ControllerContext,
    config: CommonConfig,
    informers: &mut Informers,
) -> CommonController {
    let snapshot_queue = WorkQueue::new(QUEUE_SNAPSHOTS, ctx.backoff, ctx.metrics.queues());
    let content_queue = WorkQueue::new(QUEUE_CONTENTS, ctx.backoff, ctx.metrics.queues());
    let metrics = OperationMetrics::register(&ctx.metrics);

    let snapshots = {
        let (sq, cq) = (snapshot_queue.clone(), content_queue.clone());
        let m = metrics.clone();
        informers
            .for_type::<VolumeSnapshot>()
            .keep(|_| true)
            .on_change(move |change: &Change<'_, VolumeSnapshot>| {
                let vs = change.object();
                let Some(key) = NamespacedName::of(&vs.metadata) else {
                    return;
                };
                if let Change::Deleted(_) = change {
                    // Upstream `deleteSnapshot`: the delete is done; its content may now go.
                    if let Some(uid) = vs.metadata.uid.as_deref() {
                        m.finish(OP_DELETE, uid, "success");
                    }
                    if let Some(c) = plan::content_name(vs) {
                        cq.add(c);
                    }
                }
                sq.add(key);
            })
            .store()
    };
    let contents = {
        let (sq, cq) = (snapshot_queue.clone(), content_queue.clone());
        informers
            .for_type::<VolumeSnapshotContent>()
            .keep(|_| true)
            .on_change(move |change: &Change<'_, VolumeSnapshotContent>| {
                let content = change.object();
                if let Change::Deleted(_) = change {
                    // The snapshot's bound finalizer waits for this.
                    let r = &content.spec.volume_snapshot_ref;
                    if let (Some(ns), Some(n)) = (&r.namespace, &r.name) {
                        sq.add(NamespacedName::new(ns, n));
                    }
                }
                if let Some(name) = &content.metadata.name {
                    cq.add(name.clone());
                }
            })
            .store()
    };
    // Beyond upstream: a class created after a snapshot asked for it is used at once.
    let classes = {
        let (sq, snaps) = (snapshot_queue.clone(), snapshots.clone());
        informers
            .for_type::<VolumeSnapshotClass>()
            .keep(|_| true)
            .on_change(move |change: &Change<'_, VolumeSnapshotClass>| {
                let Change::Applied { object, previous } = change else {
                    return;
                };
                let became_default =
                    plan::is_default_class(object) && !previous.is_some_and(plan::is_default_class);
                if previous.is_some() && !became_default {
                    return;
                }
                let name = object.metadata.name.as_deref();
                for vs in snaps.state() {
                    let class = vs.spec.volume_snapshot_class_name.as_deref();
                    let waiting = vs.status.as_ref().and_then(|s| s.error.as_ref()).is_some()
                        && !vs.is_ready();
                    if waiting
                        && (class == name || (class.is_none() && became_default))
                        && let Some(key) = NamespacedName::of(&vs.metadata)
                    {
                        sq.add(key);
                    }
                }
            })
            .store()
    };
    let claims = {
        let sq = snapshot_queue.clone();
        informers
            .for_type::<PersistentVolumeClaim>()
            .keep(claim_kept)
            // A restore ending (bound, or the claim gone) lets a waiting deletion go on.
            .on_change(move |change: &Change<'_, PersistentVolumeClaim>| {
                let (now, before) = match change {
                    Change::Applied { object, previous } => (Some(*object), *previous),
                    Change::Deleted(object) => (None, Some(*object)),
                };
                let Some(from) = before.and_then(restored_snapshot) else {
                    return;
                };
                if now.and_then(restored_snapshot) != Some(from)
                    && let Some(ns) = before.and_then(|p| p.metadata.namespace.as_deref())
                {
                    sq.add(NamespacedName::new(ns, from));
                }
            })
            .store()
    };
    let events = EventRecorder::new(
        ctx.client.clone(),
        COMPONENT_COMMON,
        Some(ctx.identity.clone()),
    );
    let groups = config
        .groups
        .then(|| build_groups(&ctx, informers, &snapshot_queue, &snapshots, &metrics));
    CommonController {
        shared: Arc::new(Shared {
            ctx,
            config,
            snapshots,
            contents,
            classes,
            claims,
            snapshot_queue,
            content_queue,
            written_snapshots: Written::default(),
            written_contents: Written::default(),
            events,
            metrics,
            groups,
        }),
    }
}

impl controller_kit::Controller for CommonController {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, token: CancellationToken) -> BoxFuture<'static, ()> {
        let s = self.shared.clone();
        Box::pin(async move {
            let workers = || controller_kit::Workers {
                controller: NAME,
                count: s.ctx.workers,
                metrics: s.ctx.metrics.controllers(),
            };
            // Everything cached is looked at once per term (upstream's start-up sync), not
            // again on a timer.
            for vs in s.snapshots.state() {
                if let Some(key) = NamespacedName::of(&vs.metadata) {
                    s.snapshot_queue.add(key);
                }
            }
            for c in s.contents.state() {
                if let Some(name) = &c.metadata.name {
                    s.content_queue.add(name.clone());
                }
            }
            let snapshots = controller_kit::run_workers(
                workers(),
                s.snapshot_queue.clone(),
                s.clone(),
                |s, key| async move { crate::settle(s.sync_snapshot(key).await) },
                token.clone(),
            );
            let contents = controller_kit::run_workers(
                workers(),
                s.content_queue.clone(),
                s.clone(),
                |s, key| async move { crate::settle(s.sync_content(key).await) },
                token.clone(),
            );
            let groups = async {
                let Some(g) = &s.groups else {
                    return;
                };
                for vgs in g.snapshots.state() {
                    if let Some(key) = NamespacedName::of(&vgs.metadata) {
                        g.snapshot_queue.add(key);
                    }
                }
                for c in g.contents.state() {
                    if let Some(name) = &c.metadata.name {
                        g.content_queue.add(name.clone());
                    }
                }
                let group_snapshots = controller_kit::run_workers(
                    workers(),
                    g.snapshot_queue.clone(),
                    s.clone(),
                    |s, key| async move { crate::settle(s.sync_group(key).await) },
                    token.clone(),
                );
                let group_contents = controller_kit::run_workers(
                    workers(),
                    g.content_queue.clone(),
                    s.clone(),
                    |s, key| async move { crate::settle(s.sync_group_content(key).await) },
                    token.clone(),
                );
                futures::join!(group_snapshots, group_contents);
            };
            futures::join!(snapshots, contents, groups);
        })
    }
}

/// A short pause before a pass runs again after its own write (the write's watch event usually
/// comes first).
pub(crate) const AGAIN: Duration = Duration::ZERO;

impl Shared {
    /// The snapshot `key` as last written here or cached.
    pub(crate) fn snapshot(&self, key: &NamespacedName) -> Option<Arc<VolumeSnapshot>> {
        self.written_snapshots
            .read(&key.to_string(), self.snapshots.get(&key.object_ref()))
    }

    /// The group snapshot `key` as last written here or cached.
    pub(crate) fn group_snapshot(&self, key: &NamespacedName) -> Option<Arc<VolumeGroupSnapshot>> {
        let g = self.groups.as_ref()?;
        g.written_snapshots
            .read(&key.to_string(), g.snapshots.get(&key.object_ref()))
    }

    /// The group content `name` as last written here or cached.
    pub(crate) fn group_content(&self, name: &str) -> Option<Arc<VolumeGroupSnapshotContent>> {
        let g = self.groups.as_ref()?;
        g.written_contents
            .read(name, g.contents.get(&ObjectRef::new(name)))
    }

    /// The content `name` as last written here or cached.
    pub(crate) fn content(&self, name: &str) -> Option<Arc<VolumeSnapshotContent>> {
        self.written_contents
            .read(name, self.contents.get(&ObjectRef::new(name)))
    }
}
