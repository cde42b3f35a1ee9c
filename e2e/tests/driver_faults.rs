//! Driver faults through every controller on the cluster (issue 15, item 3):
//! - every gRPC error code from every Controller RPC we call (CreateVolume, ControllerExpand,
//!   CreateSnapshot, ControllerPublish, ControllerUnpublish, DeleteSnapshot, DeleteVolume), each
//!   reported where a user looks (an Event, or the VolumeAttachment's error) and then recovered
//!   from by retrying, with the driver called a bounded number of times;
//! - the driver stopped and started again while a call of each kind hangs in it;
//! - wrong answers: a volume smaller than asked, a volume or snapshot without an ID, an
//!   expansion answered with less than asked.
//!
//! Each time the driver's state at the end equals the cluster's (nothing leaked, nothing lost).
//! Runs the cluster-wide snapshot controller, so the tests of this file take turns (`ALONE`).
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csi::Code;
use csi_mock::{Fault, Method, WrongAnswer};
use e2e::{OwnDriver, claim, clients, eventually};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use snapshotter::types::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every gRPC code but OK.
const CODES: [Code; 16] = [
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

const WAIT: Duration = Duration::from_secs(120);

/// A volume's life, one RPC per step, in order.
#[derive(Clone, Copy, Debug)]
enum Step {
    Provision,
    Expand,
    Snapshot,
    Attach,
    Detach,
    DeleteSnapshot,
    DeleteVolume,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::Provision,
        Step::Expand,
        Step::Snapshot,
        Step::Attach,
        Step::Detach,
        Step::DeleteSnapshot,
        Step::DeleteVolume,
    ];

    fn method(self) -> Method {
        match self {
            Step::Provision => Method::CreateVolume,
            Step::Expand => Method::ControllerExpandVolume,
            Step::Snapshot => Method::CreateSnapshot,
            Step::Attach => Method::ControllerPublishVolume,
            Step::Detach => Method::ControllerUnpublishVolume,
            Step::DeleteSnapshot => Method::DeleteSnapshot,
            Step::DeleteVolume => Method::DeleteVolume,
        }
    }
}

/// Every message a user could read about the test's objects, as it appears: Event messages,
/// VolumeAttachments' attach and detach errors, snapshot contents' errors (the last two are
/// cleared on success, so they are watched, not listed at the end).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn start(client: &kube::Client) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let seen = Self::default();
        let mut tasks = Vec::new();
        let s = seen.clone();
        let events: Api<Event> = Api::all(client.clone());
        tasks.push(tokio::spawn(s.follow(events, |e: &Event| {
            e.message.clone().into_iter().collect()
        })));
        let s = seen.clone();
        let vas: Api<VolumeAttachment> = Api::all(client.clone());
        tasks.push(tokio::spawn(s.follow(vas, |va: &VolumeAttachment| {
            let st = va.status.as_ref();
            [
                st.and_then(|s| s.attach_error.as_ref()),
                st.and_then(|s| s.detach_error.as_ref()),
            ]
            .into_iter()
            .flatten()
            .filter_map(|e| e.message.clone())
            .collect()
        })));
        let s = seen.clone();
        let contents: Api<VolumeSnapshotContent> = Api::all(client.clone());
        tasks.push(tokio::spawn(s.follow(
            contents,
            |c: &VolumeSnapshotContent| {
                c.status
                    .as_ref()
                    .and_then(|s| s.error.as_ref())
                    .and_then(|e| e.message.clone())
                    .into_iter()
                    .collect()
            },
        )));
        (seen, tasks)
    }

    async fn follow<K>(self, api: Api<K>, texts: impl Fn(&K) -> Vec<String>)
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                let found = texts(&o);
                if !found.is_empty() {
                    self.0.lock().unwrap().extend(found);
                }
            }
        }
    }

    /// The tokens not found in any message yet.
    fn missing<'a>(&self, tokens: &'a [String]) -> Vec<&'a String> {
        let seen = self.0.lock().unwrap();
        tokens
            .iter()
            .filter(|t| !seen.iter().any(|m| m.contains(t.as_str())))
            .collect()
    }

    /// A message containing `token`, for the report.
    fn one_with(&self, token: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.contains(token))
            .cloned()
    }
}

struct World {
    own: OwnDriver,
    ns: String,
    class: String,
    node: String,
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    vas: Api<VolumeAttachment>,
    snapshots: Api<VolumeSnapshot>,
    snapshot_classes: Api<VolumeSnapshotClass>,
    contents: Api<VolumeSnapshotContent>,
    seen: Seen,
    watches: Vec<tokio::task::JoinHandle<()>>,
    marks: e2e::NodeMarks,
}

impl World {
    async fn start(prefix: &str) -> Self {
        let own = OwnDriver::start(
            prefix,
            |_| {},
            &[
                "--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller",
                // Upstream holds a claim back after INVALID_ARGUMENT ("infeasible") until this
                // much time has passed or the claim or class changes; 5 min by default.
                "--retry-interval-max=10s",
            ],
        )
        .await;
        let c = clients().await;
        let ns = own.name.clone();
        let class = own.create_class(&ns, BTreeMap::new()).await;
        let snapshot_classes: Api<VolumeSnapshotClass> = Api::all(c.main.clone());
        let vsc: VolumeSnapshotClass = serde_json::from_value(json!({
            "metadata": {"name": ns,
                         "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "false"}},
            "driver": own.driver_name, "deletionPolicy": "Delete",
        }))
        .unwrap();
        snapshot_classes
            .create(&PostParams::default(), &vsc)
            .await
            .unwrap();
        let marks = e2e::mark_nodes(&own.driver_name, &format!("{ns}/zone"), |_| "z".into()).await;
        let node = marks.zones[0].0.clone();
        let (seen, watches) = Seen::start(&c.main);
        Self {
            pvcs: Api::namespaced(c.main.clone(), &ns),
            pvs: Api::all(c.main.clone()),
            vas: Api::all(c.main.clone()),
            snapshots: Api::namespaced(c.main.clone(), &ns),
            contents: Api::all(c.main.clone()),
            snapshot_classes,
            seen,
            watches,
            marks,
            node,
            class,
            ns,
            own,
        }
    }

    fn names(&self, what: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{what}-{i}")).collect()
    }

    fn va_name(&self, claim: &str) -> String {
        format!("{}-{claim}", self.ns)
    }

    async fn create_claims(&self, names: &[String]) {
        for n in names {
            self.pvcs
                .create(&PostParams::default(), &claim(n, &self.class, "1Gi"))
                .await
                .unwrap();
        }
    }

    async fn pv_of(&self, claim: &str) -> Option<PersistentVolume> {
        let pvc = self.pvcs.get(claim).await.ok()?;
        let pv = pvc.spec?.volume_name?;
        self.pvs.get(&pv).await.ok()
    }

    async fn all_bound(&self, names: &[String]) -> Option<()> {
        for n in names {
            let pvc = self.pvcs.get(n).await.ok()?;
            (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())?;
        }
        Some(())
    }

    async fn expand(&self, names: &[String], size: &str) {
        for n in names {
            self.pvcs
                .patch(
                    n,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": size}}}})),
                )
                .await
                .unwrap();
        }
    }

    async fn all_expanded(&self, names: &[String], size: &str) -> Option<()> {
        for n in names {
            let pv = self.pv_of(n).await?;
            let capacity = pv.spec?.capacity?.get("storage")?.0.clone();
            (capacity == size).then_some(())?;
        }
        Some(())
    }

    async fn snapshot(&self, names: &[String]) {
        for n in names {
            let vs = e2e::volume_snapshot(n, n, Some(&self.ns));
            self.snapshots
                .create(&PostParams::default(), &vs)
                .await
                .unwrap();
        }
    }

    async fn all_ready(&self, names: &[String]) -> Option<()> {
        for n in names {
            let vs = self.snapshots.get(n).await.ok()?;
            (vs.status?.ready_to_use == Some(true)).then_some(())?;
        }
        Some(())
    }

    async fn attach(&self, names: &[String]) {
        for n in names {
            let pv = self.pv_of(n).await.unwrap().metadata.name.unwrap();
            let va =
                e2e::volume_attachment(&self.va_name(n), &self.own.driver_name, &self.node, &pv);
            self.vas.create(&PostParams::default(), &va).await.unwrap();
        }
    }

    async fn all_attached(&self, names: &[String]) -> Option<()> {
        for n in names {
            let va = self.vas.get(&self.va_name(n)).await.ok()?;
            va.status?.attached.then_some(())?;
        }
        Some(())
    }

    async fn detach(&self, names: &[String]) {
        for n in names {
            self.vas
                .delete(&self.va_name(n), &DeleteParams::default())
                .await
                .unwrap();
        }
    }

    async fn all_gone<K>(&self, api: &Api<K>, names: impl IntoIterator<Item = String>) -> Option<()>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        for n in names {
            api.get_opt(&n).await.ok()?.is_none().then_some(())?;
        }
        Some(())
    }

    async fn delete_snapshots(&self, names: &[String]) {
        for n in names {
            self.snapshots
                .delete(n, &DeleteParams::default())
                .await
                .unwrap();
        }
    }

    async fn delete_claims(&self, names: &[String]) {
        for n in names {
            self.pvcs.delete(n, &DeleteParams::default()).await.unwrap();
        }
    }

    /// This driver's PVs and their volume handles.
    async fn our_pvs(&self) -> BTreeMap<String, String> {
        self.pvs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|pv| {
                let csi = pv.spec?.csi?;
                (csi.driver == self.own.driver_name)
                    .then(|| (pv.metadata.name.unwrap_or_default(), csi.volume_handle))
            })
            .collect()
    }

    async fn driver_matches_cluster(&self) {
        e2e::state::assert_driver_matches_cluster(&self.own.driver, &self.own.driver_name).await;
    }

    /// Asks for `step` of the claims `names`.
    async fn act(&self, step: Step, names: &[String]) {
        match step {
            Step::Provision => self.create_claims(names).await,
            Step::Expand => self.expand(names, "2Gi").await,
            Step::Snapshot => self.snapshot(names).await,
            Step::Attach => self.attach(names).await,
            Step::Detach => self.detach(names).await,
            Step::DeleteSnapshot => self.delete_snapshots(names).await,
            Step::DeleteVolume => self.delete_claims(names).await,
        }
    }

    /// Whether `step` is done for the claims `names` (a deletion: for everything of the
    /// driver's kind).
    async fn done(&self, step: Step, names: &[String]) -> Option<()> {
        match step {
            Step::Provision => self.all_bound(names).await,
            Step::Expand => self.all_expanded(names, "2Gi").await,
            Step::Snapshot => self.all_ready(names).await,
            Step::Attach => self.all_attached(names).await,
            Step::Detach => {
                self.all_gone(&self.vas, names.iter().map(|c| self.va_name(c)))
                    .await
            }
            Step::DeleteSnapshot => self.our_contents().await.is_empty().then_some(()),
            Step::DeleteVolume => self.our_pvs().await.is_empty().then_some(()),
        }
    }

    /// Queues one fault of each code for `step`'s RPC, asks for the step and waits until it
    /// is done; then each fault was used, its message reached a user-visible message, and the
    /// driver was called a bounded number of times. Returns (calls, an example message).
    async fn each_code(&self, step: Step, names: &[String]) -> (u64, String) {
        let method = step.method();
        let before = self.own.driver.calls(method);
        let tokens: Vec<String> = CODES
            .iter()
            .map(|code| format!("{}-{method}-{code:?}", self.ns))
            .collect();
        for (code, token) in CODES.iter().zip(&tokens) {
            self.own
                .driver
                .inject(method, Fault::error(*code, token.clone()).once());
        }
        self.act(step, names).await;
        eventually(&format!("{method} recovered"), WAIT, || {
            self.done(step, names)
        })
        .await;
        eventually(
            &format!("{method} errors shown"),
            Duration::from_secs(30),
            || async { self.seen.missing(&tokens).is_empty().then_some(()) },
        )
        .await;
        let left: Vec<_> = self
            .own
            .driver
            .faults()
            .into_iter()
            .filter(|r| r.method == Some(method))
            .collect();
        assert!(left.is_empty(), "{method}: faults not used: {left:?}");
        let calls = self.own.driver.calls(method) - before;
        // Sixteen failures, one success per object (16), and a few repeats of an idempotent
        // call (a retry racing a status update); a hot loop would be hundreds.
        assert!(
            calls <= 48,
            "{method}: {calls} calls for 16 faults and 16 objects"
        );
        let example = self.seen.one_with(&tokens[13]).unwrap_or_default();
        (calls, example)
    }

    /// Makes every call of `step`'s RPC hang after the driver did its work (the answer is
    /// lost), asks for the step, and once three calls hang restarts the driver; the step must
    /// then finish. Returns how long after the restart.
    async fn restart_during(&self, step: Step, names: &[String]) -> Duration {
        let method = step.method();
        let before = self.own.driver.calls(method);
        self.own
            .driver
            .inject(method, Fault::hang().after_handling());
        self.act(step, names).await;
        eventually(
            &format!("three {method} calls hanging"),
            Duration::from_secs(60),
            || async { (self.own.driver.calls(method) - before >= 3).then_some(()) },
        )
        .await;
        self.own.driver.clear_faults();
        self.own.restart_driver(Duration::from_secs(2)).await;
        let back = Instant::now();
        eventually(&format!("{method} done after the restart"), WAIT, || {
            self.done(step, names)
        })
        .await;
        back.elapsed()
    }

    async fn our_contents(&self) -> Vec<String> {
        self.contents
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|c| c.spec.driver == self.own.driver_name)
            .filter_map(|c| c.metadata.name)
            .collect()
    }

    /// At the end: the driver holds nothing, and the manager never went down.
    async fn nothing_left(&mut self) {
        self.driver_matches_cluster().await;
        let state = self.own.driver.state();
        assert!(
            state.volumes.is_empty() && state.snapshots.is_empty(),
            "leaked: {:?} {:?}",
            state.volumes.keys(),
            state.snapshots.keys()
        );
        assert!(self.own.manager.is_running(), "the manager is up");
        let log = std::fs::read_to_string(&self.own.manager.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "the manager panicked");
    }

    async fn stop(self) {
        for t in &self.watches {
            t.abort();
        }
        let _ = self
            .snapshot_classes
            .delete(&self.ns, &DeleteParams::default())
            .await;
        let classes: Api<k8s_openapi::api::storage::v1::StorageClass> =
            Api::all(clients().await.main.clone());
        let _ = classes.delete(&self.class, &DeleteParams::default()).await;
        self.marks.remove().await;
        self.own.stop().await;
    }
}

#[tokio::test]
async fn every_grpc_code_from_every_call_is_shown_then_recovered() {
    let _alone = ALONE.lock().await;
    let mut w = World::start("codes").await;
    let claims = w.names("c", CODES.len());
    let mut report = Vec::new();
    for step in Step::ALL {
        report.push((step.method(), w.each_code(step, &claims).await));
        if let Step::Attach = step {
            w.driver_matches_cluster().await;
        }
    }
    w.nothing_left().await;
    for (method, (calls, example)) in &report {
        eprintln!("{method}: 16 codes shown and recovered, {calls} calls; e.g. {example:?}");
    }
    w.stop().await;
}

#[tokio::test]
async fn a_driver_restarted_while_each_kind_of_call_hangs_loses_and_repeats_nothing() {
    let _alone = ALONE.lock().await;
    let mut w = World::start("restart").await;
    let claims = w.names("r", 3);
    let mut report = Vec::new();
    for step in Step::ALL {
        report.push((step.method(), w.restart_during(step, &claims).await));
        if let Step::Attach = step {
            w.driver_matches_cluster().await;
        }
    }
    w.nothing_left().await;
    for (method, took) in &report {
        eprintln!("{method}: 3 calls hung, driver restarted, done {took:?} after it was back");
    }
    w.stop().await;
}

#[tokio::test]
async fn wrong_answers_from_the_driver_are_reported_and_leak_nothing() {
    let _alone = ALONE.lock().await;
    let mut w = World::start("wrong").await;
    let claims = w.names("w", 2);
    let spoil = |method, wrong| {
        w.own.driver.inject(method, Fault::wrong(wrong).once());
    };
    // A volume smaller than asked (upstream deletes it and retries), then one without an ID.
    spoil(Method::CreateVolume, WrongAnswer::Smaller);
    spoil(Method::CreateVolume, WrongAnswer::NoId);
    w.create_claims(&claims).await;
    eventually("claims Bound", WAIT, || w.all_bound(&claims)).await;
    // An expansion answered with less than asked.
    spoil(Method::ControllerExpandVolume, WrongAnswer::Smaller);
    w.expand(&claims, "2Gi").await;
    eventually("claims expanded", WAIT, || w.all_expanded(&claims, "2Gi")).await;
    // A snapshot without an ID.
    spoil(Method::CreateSnapshot, WrongAnswer::NoId);
    w.snapshot(&claims).await;
    eventually("snapshots ready", WAIT, || w.all_ready(&claims)).await;
    let wanted = [
        "less than requested capacity",
        "CreateVolume returned a volume without an ID",
        "less than the requested",
        "CreateSnapshot returned no snapshot ID",
    ]
    .map(String::from);
    eventually(
        "every wrong answer shown",
        Duration::from_secs(30),
        || async { w.seen.missing(&wanted).is_empty().then_some(()) },
    )
    .await;
    for m in &wanted {
        eprintln!("shown: {:?}", w.seen.one_with(m).unwrap_or_default());
    }
    assert!(
        w.own.driver.faults().is_empty(),
        "every wrong answer was given"
    );
    w.driver_matches_cluster().await;
    let contents = w.our_contents().await;
    w.delete_snapshots(&claims).await;
    eventually("contents gone", WAIT, || {
        w.all_gone(&w.contents, contents.clone())
    })
    .await;
    let pvs: Vec<String> = w.our_pvs().await.into_keys().collect();
    w.delete_claims(&claims).await;
    eventually("PVs gone", WAIT, || w.all_gone(&w.pvs, pvs.clone())).await;
    w.nothing_left().await;
    w.stop().await;
}
