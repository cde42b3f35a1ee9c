//! Snapshots on the local control plane: csi-controller-manager's two snapshot halves (the
//! common controller and the CSI half) in place of upstream's snapshot-controller and
//! csi-snapshotter, each test with its own csi-mock driver.
//! - Dynamic snapshot to ready with the default class; restore into a new claim by our
//!   provisioner; deleting the snapshot while the restore waits; Delete and Retain.
//! - A pre-provisioned content imported; a bad class parameter (clear error, deletion not
//!   blocked); no default class, then one; driver errors then recovery; a slow driver.
//! - The manager killed while CreateSnapshot hangs, the snapshot deleted meanwhile: nothing
//!   leaks on the driver.
//! - Mixed: our common controller with upstream's csi-snapshotter, and upstream's
//!   snapshot-controller with our CSI half.
//! - Side by side with upstream's two controllers (same driver settings, one after the other):
//!   the same snapshot and content status, finalizers, annotations and event reasons.
//! - A group snapshot of the claims a selector picks, to ready with its member snapshots, a
//!   member's lone deletion held back, then deleted with its members, nothing left on the
//!   driver; side by side with upstream's two controllers, the same objects.
//!
//! The common controller is cluster-wide (it serves every driver's snapshots), so these tests
//! run one at a time (`SERIAL`) and each starts and stops its own.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{Fault, Method};
use e2e::{ManagerProcess, OwnDriver, claim, clients, eventually, storage_class};
use k8s_openapi::api::core::v1::{
    Event, PersistentVolume, PersistentVolumeClaim, TypedLocalObjectReference,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use snapshotter::constants::*;
use snapshotter::types::*;
use tokio::sync::Mutex;
use tonic::Code;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Who runs each half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Halves {
    Ours,
    Upstream,
    /// Our common controller, upstream's csi-snapshotter.
    OursCommon,
    /// Upstream's snapshot-controller, our CSI half.
    OursCsi,
}

struct Env {
    own: OwnDriver,
    upstream: Vec<ManagerProcess>,
    pvcs: Api<PersistentVolumeClaim>,
    snapshots: Api<VolumeSnapshot>,
    contents: Api<VolumeSnapshotContent>,
    classes: Api<VolumeSnapshotClass>,
    events: Api<Event>,
}

fn upstream_process(own: &OwnDriver, which: &str) -> ManagerProcess {
    let dir = std::path::PathBuf::from(e2e::env("SNAPSHOTTER_DIR"));
    let mut args = vec![
        format!("--kubeconfig={}", e2e::env("KUBECONFIG")),
        "--leader-election=false".to_string(),
    ];
    if which == "csi-snapshotter" {
        args.push(format!(
            "--csi-address={}",
            own.endpoint.trim_start_matches("unix://")
        ));
        args.push("--extra-create-metadata".into());
    }
    // Upstream serves group snapshots only behind this gate (beta, off by default in v8.6).
    args.push("--feature-gates=CSIVolumeGroupSnapshot=true".into());
    let mut p = ManagerProcess::other(&format!("{}-{which}", own.name), dir.join(which), args);
    p.start();
    p
}

impl Env {
    async fn start(
        prefix: &str,
        halves: Halves,
        configure: impl FnOnce(&mut csi_mock::MockConfig),
    ) -> Self {
        let controllers = match halves {
            Halves::Ours => "--controllers=provisioner,snapshotter,snapshot-controller",
            Halves::Upstream => "--controllers=provisioner",
            Halves::OursCommon => "--controllers=provisioner,snapshot-controller",
            Halves::OursCsi => "--controllers=provisioner,snapshotter",
        };
        let own =
            OwnDriver::start(prefix, configure, &[controllers, "--extra-create-metadata"]).await;
        let mut upstream = Vec::new();
        if matches!(halves, Halves::Upstream | Halves::OursCsi) {
            upstream.push(upstream_process(&own, "snapshot-controller"));
        }
        if matches!(halves, Halves::Upstream | Halves::OursCommon) {
            upstream.push(upstream_process(&own, "csi-snapshotter"));
        }
        let c = clients().await;
        Api::<StorageClass>::all(c.main.clone())
            .create(
                &PostParams::default(),
                &storage_class(&own.name, &own.driver_name, "Delete", BTreeMap::new()),
            )
            .await
            .unwrap();
        Self {
            pvcs: Api::namespaced(c.main.clone(), &own.name),
            snapshots: Api::namespaced(c.main.clone(), &own.name),
            contents: Api::all(c.main.clone()),
            classes: Api::all(c.main.clone()),
            events: Api::namespaced(c.main.clone(), &own.name),
            own,
            upstream,
        }
    }

    /// A VolumeSnapshotClass of this driver named `<ns>-<suffix>`.
    async fn class(
        &self,
        suffix: &str,
        policy: DeletionPolicy,
        params: &[(&str, &str)],
        default: bool,
    ) -> String {
        let name = format!("{}-{suffix}", self.own.name);
        let class = VolumeSnapshotClass {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: default
                    .then(|| BTreeMap::from([(ANN_DEFAULT_CLASS.to_string(), "true".to_string())])),
                ..Default::default()
            },
            driver: self.own.driver_name.clone(),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            deletion_policy: policy,
        };
        self.classes
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        name
    }

    /// A bound claim `name` of 1Gi; its volume handle.
    async fn source(&self, name: &str) -> String {
        self.pvcs
            .create(&PostParams::default(), &claim(name, &self.own.name, "1Gi"))
            .await
            .unwrap();
        self.bound_volume(name).await
    }

    /// The volume handle of claim `name`, once Bound.
    async fn bound_volume(&self, name: &str) -> String {
        let pvc = eventually(
            &format!("claim {name} to be Bound"),
            Duration::from_secs(60),
            || async {
                let pvc = self.pvcs.get(name).await.ok()?;
                (pvc.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pvc)
            },
        )
        .await;
        let pv: PersistentVolume = Api::all(clients().await.main.clone())
            .get(pvc.spec.unwrap().volume_name.as_deref().unwrap())
            .await
            .unwrap();
        pv.spec.unwrap().csi.unwrap().volume_handle
    }

    async fn snapshot(&self, name: &str, source: VolumeSnapshotSource, class: Option<&str>) {
        let mut vs = e2e::volume_snapshot(name, "", class);
        vs.spec.source = source;
        self.snapshots
            .create(&PostParams::default(), &vs)
            .await
            .unwrap();
    }

    async fn of_claim(&self, name: &str, claim: &str, class: Option<&str>) {
        self.snapshots
            .create(
                &PostParams::default(),
                &e2e::volume_snapshot(name, claim, class),
            )
            .await
            .unwrap();
    }

    async fn ready(&self, name: &str, within: Duration) -> VolumeSnapshot {
        eventually(&format!("snapshot {name} to be ready"), within, || async {
            let vs = self.snapshots.get(name).await.ok()?;
            vs.is_ready().then_some(vs)
        })
        .await
    }

    async fn gone(&self, name: &str, within: Duration) {
        e2e::until_gone(&self.snapshots, name, within).await;
    }

    async fn content_gone(&self, name: &str) {
        e2e::until_gone(&self.contents, name, Duration::from_secs(30)).await;
    }

    /// Waits for the claim's `pvc-as-source-protection` to go.
    async fn claim_released(&self, claim: &str) {
        eventually(
            &format!("claim {claim}'s snapshot protection to go"),
            Duration::from_secs(30),
            || async {
                let pvc = self.pvcs.get(claim).await.ok()?;
                (!has(&pvc.metadata, FIN_PVC_AS_SOURCE)).then_some(())
            },
        )
        .await;
    }

    async fn content_of(&self, vs: &VolumeSnapshot) -> VolumeSnapshotContent {
        self.contents
            .get(vs.bound_content().expect("a bound content"))
            .await
            .unwrap()
    }

    /// Event reasons about `kind` objects named `name`, sorted and deduplicated.
    async fn reasons(&self, kind: &str, name: &str) -> Vec<String> {
        let ns_events = self
            .events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let all: Api<Event> = Api::all(clients().await.main.clone());
        let cluster_events = all
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
            .unwrap()
            .items;
        let mut r: Vec<String> = ns_events
            .into_iter()
            .chain(cluster_events)
            .filter(|e| {
                let o = &e.involved_object;
                // Namespaced objects of this test only (other tests' namespaces linger).
                let ours = o.namespace.as_deref().is_none_or(|ns| ns == self.own.name);
                o.kind.as_deref() == Some(kind) && o.name.as_deref() == Some(name) && ours
            })
            .filter_map(|e| e.reason)
            .collect();
        r.sort();
        r.dedup();
        r
    }

    async fn finish(mut self) {
        for p in &mut self.upstream {
            p.kill().await;
        }
        let _ = self
            .snapshots
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let classes = self
            .classes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        for c in classes {
            let name = c.metadata.name.unwrap_or_default();
            if name.starts_with(&self.own.name) {
                let _ = self.classes.delete(&name, &DeleteParams::default()).await;
            }
        }
        let _ = Api::<StorageClass>::all(clients().await.main.clone())
            .delete(&self.own.name, &DeleteParams::default())
            .await;
        self.own.stop().await;
    }
}

/// The driver's snapshot of a content that has one.
fn handle_of(content: &VolumeSnapshotContent) -> String {
    content
        .status
        .as_ref()
        .and_then(|s| s.snapshot_handle.clone())
        .expect("a snapshot handle")
}

fn has(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

#[tokio::test]
async fn a_dynamic_snapshot_is_cut_restored_and_deleted_and_retain_keeps_it() {
    let _serial = SERIAL.lock().await;
    let env = Env::start("snap-dyn", Halves::Ours, |_| {}).await;
    let default = env
        .class("default", DeletionPolicy::Delete, &[], true)
        .await;
    let volume = env.source("src").await;

    // The default class of the volume's driver is taken; ready with the source's size.
    env.of_claim("snap", "src", None).await;
    let vs = env.ready("snap", Duration::from_secs(60)).await;
    assert_eq!(
        vs.spec.volume_snapshot_class_name.as_deref(),
        Some(default.as_str())
    );
    let status = vs.status.clone().unwrap();
    assert_eq!(status.restore_size.unwrap().0, "1Gi");
    assert!(status.creation_time.is_some() && status.error.is_none());
    assert!(has(&vs.metadata, FIN_SNAPSHOT_AS_SOURCE) && has(&vs.metadata, FIN_SNAPSHOT_BOUND));
    let content = env.content_of(&vs).await;
    assert_eq!(
        content.metadata.name.as_deref(),
        Some(format!("snapcontent-{}", vs.metadata.uid.as_deref().unwrap()).as_str())
    );
    assert!(has(&content.metadata, FIN_CONTENT_BOUND));
    assert_eq!(
        content.spec.source.volume_handle.as_deref(),
        Some(volume.as_str())
    );
    let handle = handle_of(&content);
    let cut = env.own.driver.state().snapshots[&handle].clone();
    assert_eq!(cut.source_volume_id, volume);
    assert_eq!(
        cut.name,
        format!("snapshot-{}", vs.metadata.uid.as_deref().unwrap())
    );
    assert!(
        controller_kit::meta::annotation(&content.metadata, ANN_BEING_CREATED).is_none(),
        "the creation guard is removed"
    );
    env.claim_released("src").await;
    assert_eq!(
        env.reasons("VolumeSnapshot", "snap").await,
        [REASON_CREATING, REASON_CREATED, REASON_READY]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .tap_sort()
    );

    // A restore waits (the driver is busy): the snapshot's deletion waits for it.
    env.own.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "busy"),
    );
    let mut restore = claim("restored", &env.own.name, "1Gi");
    restore.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: Some(GROUP.into()),
        kind: "VolumeSnapshot".into(),
        name: "snap".into(),
    });
    env.pvcs
        .create(&PostParams::default(), &restore)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deletion to wait for the restore",
        Duration::from_secs(30),
        || async {
            env.reasons("VolumeSnapshot", "snap")
                .await
                .contains(&REASON_DELETE_PENDING.to_string())
                .then_some(())
        },
    )
    .await;
    assert!(env.snapshots.get_opt("snap").await.unwrap().is_some());
    assert!(env.own.driver.state().snapshots.contains_key(&handle));
    env.own.driver.clear_faults();
    eventually(
        "the restored claim to be Bound",
        Duration::from_secs(60),
        || async {
            let pvc = env.pvcs.get("restored").await.ok()?;
            (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())
        },
    )
    .await;
    env.gone("snap", Duration::from_secs(60)).await;
    eventually(
        "the content and the driver's snapshot to go",
        Duration::from_secs(30),
        || async {
            let content = env
                .contents
                .get_opt(content.metadata.name.as_deref().unwrap())
                .await
                .ok()?;
            (content.is_none() && !env.own.driver.state().snapshots.contains_key(&handle))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        env.own.driver.calls(Method::DeleteSnapshot),
        1,
        "deleted once"
    );

    // Retain: the snapshot goes, its content and the driver's snapshot stay.
    let keep = env.class("keep", DeletionPolicy::Retain, &[], false).await;
    env.of_claim("kept", "src", Some(&keep)).await;
    let vs = env.ready("kept", Duration::from_secs(60)).await;
    assert!(
        !has(&vs.metadata, FIN_SNAPSHOT_BOUND),
        "no bound finalizer under Retain"
    );
    let content = env.content_of(&vs).await;
    let kept = handle_of(&content);
    env.snapshots
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("kept", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let content = env
        .contents
        .get(content.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        controller_kit::meta::annotation(&content.metadata, ANN_BEING_DELETED),
        Some(YES)
    );
    assert!(env.own.driver.state().snapshots.contains_key(&kept));
    // The admin releases it: the finalizer goes, the driver's snapshot stays.
    env.contents
        .delete(
            content.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    env.content_gone(content.metadata.name.as_deref().unwrap())
        .await;
    assert!(env.own.driver.state().snapshots.contains_key(&kept));
    env.finish().await;
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}

#[tokio::test]
async fn a_pre_provisioned_snapshot_is_imported_and_deleted() {
    let _serial = SERIAL.lock().await;
    let env = Env::start("snap-pre", Halves::Ours, |_| {}).await;
    let class = env.class("class", DeletionPolicy::Delete, &[], false).await;
    let volume = env.source("src").await;
    let client = csi::CsiClient::connect(
        csi::CsiEndpoint::parse(&env.own.endpoint).unwrap(),
        Duration::from_secs(10),
        csi::CsiMetrics::default(),
    )
    .unwrap();
    let cut = client
        .create_snapshot(csi::v1::CreateSnapshotRequest {
            source_volume_id: volume,
            name: "made-elsewhere".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .snapshot
        .unwrap();
    let name = format!("{}-imported", env.own.name);
    let content = VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            volume_snapshot_ref: k8s_openapi::api::core::v1::ObjectReference {
                name: Some("imp".into()),
                namespace: Some(env.own.name.clone()),
                ..Default::default()
            },
            deletion_policy: DeletionPolicy::Delete,
            driver: env.own.driver_name.clone(),
            volume_snapshot_class_name: None,
            source: VolumeSnapshotContentSource {
                volume_handle: None,
                snapshot_handle: Some(cut.snapshot_id.clone()),
            },
            source_volume_mode: None,
        },
        status: None,
    };
    env.contents
        .create(&PostParams::default(), &content)
        .await
        .unwrap();
    let source = VolumeSnapshotSource {
        persistent_volume_claim_name: None,
        volume_snapshot_content_name: Some(name.clone()),
    };
    env.snapshot("imp", source, Some(&class)).await;
    let vs = env.ready("imp", Duration::from_secs(60)).await;
    assert_eq!(
        vs.status.as_ref().unwrap().restore_size.as_ref().unwrap().0,
        "1Gi"
    );
    let bound = env.contents.get(&name).await.unwrap();
    assert_eq!(
        bound.spec.volume_snapshot_ref.uid, vs.metadata.uid,
        "bound by UID"
    );
    assert_eq!(
        bound.spec.volume_snapshot_class_name.as_deref(),
        Some(class.as_str())
    );
    assert_eq!(
        env.own.driver.calls(Method::CreateSnapshot),
        1,
        "only the test's own call"
    );
    env.snapshots
        .delete("imp", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("imp", Duration::from_secs(60)).await;
    eventually(
        "the imported snapshot to be deleted on the driver",
        Duration::from_secs(30),
        || async {
            (!env
                .own
                .driver
                .state()
                .snapshots
                .contains_key(&cut.snapshot_id))
            .then_some(())
        },
    )
    .await;
    env.finish().await;
}

#[tokio::test]
async fn bad_classes_driver_errors_and_a_slow_driver_are_reported_and_recovered() {
    let _serial = SERIAL.lock().await;
    let env = Env::start("snap-err", Halves::Ours, |c| {
        c.snapshot_ready_delay = Duration::from_secs(4)
    })
    .await;
    env.source("src").await;

    // No default class: a clear error; a default class created later is used at once.
    env.of_claim("nodefault", "src", None).await;
    eventually(
        "the missing default class to be reported",
        Duration::from_secs(30),
        || async {
            let vs = env.snapshots.get("nodefault").await.ok()?;
            let msg = vs.status?.error?.message?;
            msg.contains("cannot find default snapshot class")
                .then_some(())
        },
    )
    .await;
    let good = env.class("good", DeletionPolicy::Delete, &[], true).await;

    // A slow driver: not ready at first, ready later.
    let first = eventually(
        "the snapshot to be cut",
        Duration::from_secs(30),
        || async {
            let vs = env.snapshots.get("nodefault").await.ok()?;
            vs.status.as_ref()?.creation_time.as_ref()?;
            Some(vs)
        },
    )
    .await;
    assert_eq!(
        first.spec.volume_snapshot_class_name.as_deref(),
        Some(good.as_str())
    );
    env.ready("nodefault", Duration::from_secs(60)).await;

    // A bad parameter: the content reports it and is never marked as being created, so the
    // snapshot's deletion is not blocked.
    let bad = env
        .class(
            "bad",
            DeletionPolicy::Delete,
            &[("csi.storage.k8s.io/foo", "bar")],
            false,
        )
        .await;
    env.of_claim("bad", "src", Some(&bad)).await;
    let vs = eventually(
        "the bad parameter to be reported",
        Duration::from_secs(30),
        || async {
            let vs = env.snapshots.get("bad").await.ok()?;
            let msg = vs.status.as_ref()?.error.as_ref()?.message.clone()?;
            msg.contains("found unknown parameter key \"csi.storage.k8s.io/foo\"")
                .then_some(vs)
        },
    )
    .await;
    let content = env.content_of(&vs).await;
    assert!(controller_kit::meta::annotation(&content.metadata, ANN_BEING_CREATED).is_none());
    assert!(
        env.reasons(
            "VolumeSnapshotContent",
            content.metadata.name.as_deref().unwrap()
        )
        .await
        .contains(&REASON_CREATION_FAILED.to_string())
    );
    let calls = env.own.driver.calls(Method::CreateSnapshot);
    env.snapshots
        .delete("bad", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("bad", Duration::from_secs(30)).await;
    assert_eq!(
        env.own.driver.calls(Method::CreateSnapshot),
        calls,
        "the bad class never reached the driver"
    );

    // Driver errors, then recovery.
    env.own.driver.inject(
        Method::CreateSnapshot,
        Fault::error(Code::Internal, "disk on fire").times(2),
    );
    env.of_claim("flaky", "src", Some(&good)).await;
    eventually(
        "the driver's error to be reported",
        Duration::from_secs(30),
        || async {
            let vs = env.snapshots.get("flaky").await.ok()?;
            vs.status?
                .error?
                .message?
                .contains("disk on fire")
                .then_some(())
        },
    )
    .await;
    let vs = env.ready("flaky", Duration::from_secs(60)).await;
    assert!(
        vs.status.unwrap().error.is_none(),
        "readiness clears the error"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_manager_killed_mid_creation_leaks_no_snapshot() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("snap-kill", Halves::Ours, |_| {}).await;
    let class = env.class("class", DeletionPolicy::Delete, &[], true).await;
    env.source("src").await;
    env.own.driver.inject(
        Method::CreateSnapshot,
        Fault::hang().after_handling().once(),
    );
    env.of_claim("snap", "src", Some(&class)).await;
    let content = eventually(
        "CreateSnapshot to be in flight",
        Duration::from_secs(30),
        || async {
            let vs = env.snapshots.get("snap").await.ok()?;
            let c = env.contents.get(vs.bound_content()?).await.ok()?;
            controller_kit::meta::annotation(&c.metadata, ANN_BEING_CREATED)
                .is_some()
                .then_some(c)
        },
    )
    .await;
    eventually(
        "the hung call to have cut the snapshot",
        Duration::from_secs(10),
        || async { (env.own.driver.state().snapshots.len() == 1).then_some(()) },
    )
    .await;
    env.own.manager.kill().await;
    // The snapshot is deleted while nobody runs; the driver cut it, but nobody heard.
    env.snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    env.own.manager.start();
    env.gone("snap", Duration::from_secs(90)).await;
    env.content_gone(content.metadata.name.as_deref().unwrap())
        .await;
    assert!(
        env.own.driver.state().snapshots.is_empty(),
        "no snapshot left on the driver: {:?}",
        env.own.driver.state().snapshots.keys()
    );
    assert!(env.own.manager.unexpected_exits.is_empty());
    env.finish().await;
}

/// Dynamic snapshot to ready, then deleted; the snapshot and content as they were when ready,
/// normalized, and the event reasons.
async fn dynamic_and_delete(env: &Env) -> Value {
    let class = env.class("class", DeletionPolicy::Delete, &[], true).await;
    let volume = env.source("src").await;
    env.of_claim("snap", "src", Some(&class)).await;
    env.ready("snap", Duration::from_secs(90)).await;
    env.claim_released("src").await;
    // Upstream adds the bound finalizer in a later pass: compare the settled objects.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let vs = env.snapshots.get("snap").await.unwrap();
    let content = env.content_of(&vs).await;
    let handle = handle_of(&content);
    let cut = env.own.driver.state().snapshots[&handle].clone();
    assert_eq!(cut.source_volume_id, volume);
    let content_name = content.metadata.name.clone().unwrap();
    // Upstream now and then reports a lost write race as SnapshotFinalizerError (seen: adding
    // the bound finalizer once the deletion had begun): not part of the comparison.
    let mut reasons_ready = env.reasons("VolumeSnapshot", "snap").await;
    reasons_ready.retain(|r| r != REASON_FINALIZER_ERROR);
    env.snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("snap", Duration::from_secs(60)).await;
    eventually(
        "the content and the driver's snapshot to go",
        Duration::from_secs(60),
        || async {
            let gone = env.contents.get_opt(&content_name).await.ok()?.is_none();
            (gone && !env.own.driver.state().snapshots.contains_key(&handle)).then_some(())
        },
    )
    .await;
    assert_eq!(env.own.driver.calls(Method::DeleteSnapshot), 1);
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let vs_json = serde_json::to_value(&vs).unwrap();
    let c_json = serde_json::to_value(&content).unwrap();
    let uid = vs.metadata.uid.clone().unwrap();
    json!({
        "snapshot": {
            "finalizers": vs.metadata.finalizers,
            "annotations": keys(&vs_json["metadata"]["annotations"]),
            "status": keys(&vs_json["status"]),
            "bound": vs.bound_content() == Some(format!("snapcontent-{uid}").as_str()),
            "restoreSize": vs_json["status"]["restoreSize"],
            "readyToUse": vs_json["status"]["readyToUse"],
        },
        "content": {
            "finalizers": content.metadata.finalizers,
            "annotations": keys(&c_json["metadata"]["annotations"]),
            "spec": keys(&c_json["spec"]),
            "ref": keys(&c_json["spec"]["volumeSnapshotRef"]),
            "status": keys(&c_json["status"]),
            "restoreSize": c_json["status"]["restoreSize"],
            "sourceVolumeMode": c_json["spec"]["sourceVolumeMode"],
        },
        "driver": {
            "name": cut.name.replace(&uid, "<uid>"),
            "parameters": cut.parameters.keys().collect::<Vec<_>>(),
        },
        "events": {
            "snapshot": reasons_ready,
            "content": env.reasons("VolumeSnapshotContent", &content_name).await,
        },
    })
}

#[tokio::test]
async fn side_by_side_with_upstream_the_objects_match() {
    let _serial = SERIAL.lock().await;
    let upstream = Env::start("snap-up", Halves::Upstream, |_| {}).await;
    let theirs = dynamic_and_delete(&upstream).await;
    upstream.finish().await;
    let ours = Env::start("snap-ours", Halves::Ours, |_| {}).await;
    let mine = dynamic_and_delete(&ours).await;
    ours.finish().await;
    eprintln!("normalized objects (ours): {mine:#}");
    assert_eq!(mine, theirs, "ours (left) and upstream's (right)");
}

#[tokio::test]
async fn either_half_runs_beside_upstreams_other_half() {
    let _serial = SERIAL.lock().await;
    for halves in [Halves::OursCommon, Halves::OursCsi] {
        let env = Env::start("snap-mix", halves, |_| {}).await;
        let seen = dynamic_and_delete(&env).await;
        assert_eq!(seen["snapshot"]["readyToUse"], json!(true), "{halves:?}");
        assert!(env.own.manager.unexpected_exits.is_empty());
        env.finish().await;
    }
}

/// A group snapshot of two of three claims (a selector on a label), to ready with its members;
/// a member's lone deletion held back; then the group deleted with its members. Asserts what
/// both implementations must do; returns the normalized objects and event reasons.
async fn group_and_delete(env: &Env) -> Value {
    let c = clients().await;
    let groups: Api<VolumeGroupSnapshot> = Api::namespaced(c.main.clone(), &env.own.name);
    let group_contents: Api<VolumeGroupSnapshotContent> = Api::all(c.main.clone());
    let group_classes: Api<VolumeGroupSnapshotClass> = Api::all(c.main.clone());
    let class_name = format!("{}-group", env.own.name);
    let class = VolumeGroupSnapshotClass {
        metadata: ObjectMeta {
            name: Some(class_name.clone()),
            annotations: Some(BTreeMap::from([(
                ANN_DEFAULT_GROUP_CLASS.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        driver: env.own.driver_name.clone(),
        parameters: Some(BTreeMap::from([("tier".to_string(), "gold".to_string())])),
        deletion_policy: DeletionPolicy::Delete,
    };
    group_classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let mut handles = Vec::new();
    for (name, label) in [("db-0", "db"), ("db-1", "db"), ("web", "web")] {
        let mut pvc = claim(name, &env.own.name, "1Gi");
        pvc.metadata.labels = Some(BTreeMap::from([("app".to_string(), label.to_string())]));
        env.pvcs.create(&PostParams::default(), &pvc).await.unwrap();
        let handle = env.bound_volume(name).await;
        if label == "db" {
            handles.push(handle);
        }
    }
    let vgs: VolumeGroupSnapshot = serde_json::from_value(json!({
        "metadata": {"name": "group"},
        "spec": {"source": {"selector": {"matchLabels": {"app": "db"}}}},
    }))
    .unwrap();
    groups.create(&PostParams::default(), &vgs).await.unwrap();
    let vgs = eventually(
        "the group snapshot to be ready",
        Duration::from_secs(90),
        || async {
            let g = groups.get("group").await.ok()?;
            g.is_ready().then_some(g)
        },
    )
    .await;
    // Members become ready through their own passes: settle.
    let members = eventually(
        "both members to be ready",
        Duration::from_secs(60),
        || async {
            let list = env.snapshots.list(&ListParams::default()).await.ok()?.items;
            let members: Vec<VolumeSnapshot> = list
                .into_iter()
                .filter(|vs| {
                    vs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.name == "group")
                })
                .collect();
            (members.len() == 2
                && members.iter().all(|m| {
                    m.is_ready()
                        && m.status
                            .as_ref()
                            .is_some_and(|s| s.volume_group_snapshot_name.is_some())
                }))
            .then_some(members)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let vgs = groups.get("group").await.unwrap_or(vgs);
    let uid = vgs.metadata.uid.clone().unwrap();
    assert_eq!(
        vgs.spec.volume_group_snapshot_class_name.as_deref(),
        Some(class_name.as_str()),
        "the default group class of the claims' driver"
    );
    let content_name = vgs.bound_content().expect("bound").to_string();
    assert_eq!(content_name, format!("groupsnapcontent-{uid}"));
    let content = group_contents.get(&content_name).await.unwrap();
    assert_eq!(content.volume_handles(), handles.as_slice());
    let state = env.own.driver.state();
    assert_eq!(state.group_snapshots.len(), 1, "one group snapshot cut");
    let cut = state.group_snapshots.values().next().unwrap().clone();
    assert_eq!(cut.name, format!("groupsnapshot-{uid}"));
    assert_eq!(cut.source_volume_ids, handles, "only the selected claims");
    assert_eq!(content.group_handle(), Some(cut.id.as_str()));
    let mut member_json = Vec::new();
    for m in &members {
        let member_content = env.content_of(m).await;
        let handle = handle_of(&member_content);
        assert!(
            cut.snapshot_ids.contains(&handle),
            "{handle} is the group's"
        );
        assert_eq!(
            m.status
                .as_ref()
                .unwrap()
                .volume_group_snapshot_name
                .as_deref(),
            Some("group")
        );
        let mj = serde_json::to_value(m).unwrap();
        let cj = serde_json::to_value(&member_content).unwrap();
        // Ours also protects a member bound to a Delete content with
        // `volumesnapshot-bound-protection`, as any snapshot (upstream looks for the member's
        // content under the name of a dynamic snapshot's, finds none, and adds none): not
        // compared.
        let finalizers: Vec<&String> = m
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != FIN_SNAPSHOT_BOUND)
            .collect();
        member_json.push(json!({
            "finalizers": finalizers,
            "status": keys(&mj["status"]),
            "source": keys(&mj["spec"]["source"]),
            "claim": mj["spec"]["source"]["persistentVolumeClaimName"].as_str().is_some_and(|c| c.starts_with("db-")),
            "content": {
                "finalizers": member_content.metadata.finalizers,
                "annotations": keys(&cj["metadata"]["annotations"]),
                "spec": keys(&cj["spec"]),
                "status": keys(&cj["status"]),
            },
        }));
    }
    assert_eq!(
        env.own.driver.calls(Method::CreateSnapshot),
        0,
        "members are never cut alone"
    );

    // A member cannot go alone while its group exists.
    let lone = members[0].metadata.name.clone().unwrap();
    env.snapshots
        .delete(&lone, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the member's deletion to be held back",
        Duration::from_secs(30),
        || async {
            env.reasons("VolumeSnapshot", &lone)
                .await
                .contains(&REASON_DELETE_PENDING.to_string())
                .then_some(())
        },
    )
    .await;
    assert!(env.snapshots.get_opt(&lone).await.unwrap().is_some());

    let cj = serde_json::to_value(&content).unwrap();
    let vj = serde_json::to_value(&vgs).unwrap();
    let group_reasons = env.reasons("VolumeGroupSnapshot", "group").await;
    groups
        .delete("group", &DeleteParams::default())
        .await
        .unwrap();
    e2e::until_gone(&groups, "group", Duration::from_secs(90)).await;
    e2e::until_gone(&group_contents, &content_name, Duration::from_secs(30)).await;
    for m in &members {
        env.gone(m.metadata.name.as_deref().unwrap(), Duration::from_secs(60))
            .await;
        env.content_gone(
            m.status
                .as_ref()
                .unwrap()
                .bound_volume_snapshot_content_name
                .as_deref()
                .unwrap(),
        )
        .await;
    }
    let state = env.own.driver.state();
    assert!(
        state.group_snapshots.is_empty() && state.snapshots.is_empty(),
        "nothing left on the driver: {:?}",
        state.snapshots.keys()
    );
    assert_eq!(
        env.own.driver.calls(Method::DeleteSnapshot),
        0,
        "members go with their group"
    );
    // Upstream's CSI half now and then reports a lost write race (its status update against
    // the common controller's finalizer) as GroupSnapshotCreationFailed: races are not compared.
    let all: Api<Event> = Api::all(c.main.clone());
    let mut content_reasons: Vec<String> = all
        .list(&ListParams::default().fields(&format!("involvedObject.name={content_name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            !e.message
                .as_deref()
                .is_some_and(|m| m.contains("the object has been modified"))
        })
        .filter_map(|e| e.reason)
        .collect();
    content_reasons.sort();
    content_reasons.dedup();
    let _ = group_classes
        .delete(&class_name, &DeleteParams::default())
        .await;
    member_json.sort_by_key(|v| v.to_string());
    json!({
        "group": {
            "finalizers": vgs.metadata.finalizers,
            "status": keys(&vj["status"]),
        },
        "content": {
            "finalizers": content.metadata.finalizers,
            "annotations": keys(&cj["metadata"]["annotations"]),
            "spec": keys(&cj["spec"]),
            "status": keys(&cj["status"]),
            "members": cj["status"]["volumeSnapshotInfoList"].as_array().map(|l| l.iter().map(keys).collect::<Vec<_>>()),
        },
        "members": member_json,
        "driver": {
            "parameters": cut.parameters.keys().collect::<Vec<_>>(),
        },
        "events": {
            "group": group_reasons,
            "content": content_reasons,
        },
    })
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_group_snapshot_is_cut_with_its_members_and_deleted_with_them_as_upstreams() {
    let _serial = SERIAL.lock().await;
    let upstream = Env::start("group-up", Halves::Upstream, |_| {}).await;
    let theirs = group_and_delete(&upstream).await;
    upstream.finish().await;
    let ours = Env::start("group-ours", Halves::Ours, |_| {}).await;
    let mine = group_and_delete(&ours).await;
    assert!(ours.own.manager.unexpected_exits.is_empty());
    ours.finish().await;
    eprintln!("normalized group objects (ours): {mine:#}");
    assert_eq!(mine, theirs, "ours (left) and upstream's (right)");
}
