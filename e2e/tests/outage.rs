//! Control-plane outages (issue 15, item 2). Upstream's sidecars exit when the API server goes
//! away and count on being restarted; ours stays up, says on `/readyz` what it waits on, and
//! finishes the work once the API server is back.
//! - kube-apiserver stopped for `OUTAGE_SECS` (default 60) right after a wave of claims and
//!   attachments was created: the process does not exit, `/healthz` stays ok, `/readyz` names
//!   the failing watches; after the restart every claim binds, every attachment attaches, the
//!   deletions asked before the outage complete, and the driver holds exactly the cluster's
//!   volumes and publications (nothing lost, nothing twice).
//! - etcd stopped for 20 s (the API server answers errors meanwhile), with the same checks.
//!
//! This stops the shared control plane, so the file holds one test and runs alone (cargo runs
//! test binaries one after another).
#![cfg(feature = "cluster")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use csi_mock::Method;
use e2e::{OwnDriver, claim, clients, eventually};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// `e2e/cluster ARGS…`, which must succeed.
async fn cluster(args: &[&str]) {
    let status = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster"))
        .args(args)
        .status()
        .await
        .expect("run e2e/cluster");
    assert!(status.success(), "e2e/cluster {args:?}: {status}");
}

struct Wave {
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    vas: Api<VolumeAttachment>,
    ns: String,
    driver: String,
    nodes: Vec<String>,
}

impl Wave {
    async fn claims(&self, names: &[String]) {
        for n in names {
            self.pvcs
                .create(&PostParams::default(), &claim(n, &self.ns, "1Gi"))
                .await
                .unwrap();
        }
    }

    /// The PV of each claim, once all are Bound.
    async fn bound(&self, names: &[String], within: Duration) -> Vec<String> {
        let want: BTreeSet<&String> = names.iter().collect();
        eventually("every claim Bound", within, || async {
            let list = self.pvcs.list(&ListParams::default()).await.ok()?;
            let pvs: Vec<String> = list
                .items
                .into_iter()
                .filter(|c| c.metadata.name.as_ref().is_some_and(|n| want.contains(n)))
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .filter_map(|c| c.spec?.volume_name)
                .collect();
            (pvs.len() == want.len()).then_some(pvs)
        })
        .await
    }

    /// Waits until each claim has its PV (our part; binding the claim is
    /// kube-controller-manager's).
    async fn provisioned(&self, names: &[String], within: Duration) {
        let want: BTreeSet<&String> = names.iter().collect();
        eventually("a PV for every claim", within, || async {
            let list = self.pvs.list(&ListParams::default()).await.ok()?;
            let n = list
                .items
                .iter()
                .filter_map(|pv| pv.spec.as_ref()?.claim_ref.as_ref())
                .filter(|r| r.namespace.as_deref() == Some(self.ns.as_str()))
                .filter(|r| r.name.as_ref().is_some_and(|n| want.contains(n)))
                .count();
            (n == want.len()).then_some(())
        })
        .await;
    }

    /// A VolumeAttachment `<pv>` of each PV, spread over the nodes.
    async fn attach(&self, pvs: &[String]) {
        for (i, pv) in pvs.iter().enumerate() {
            let va =
                e2e::volume_attachment(pv, &self.driver, &self.nodes[i % self.nodes.len()], pv);
            self.vas.create(&PostParams::default(), &va).await.unwrap();
        }
    }

    async fn attached(&self, pvs: &[String], within: Duration) {
        let want: BTreeSet<&String> = pvs.iter().collect();
        eventually("every attachment attached", within, || async {
            let list = self.vas.list(&ListParams::default()).await.ok()?;
            let n = list
                .items
                .iter()
                .filter(|va| va.metadata.name.as_ref().is_some_and(|n| want.contains(n)))
                .filter(|va| va.status.as_ref().is_some_and(|s| s.attached))
                .count();
            (n == want.len()).then_some(())
        })
        .await;
    }

    /// The driver holds exactly the volumes of these PVs, published on the VAs' nodes.
    async fn driver_matches(&self, own: &OwnDriver) {
        let pvs: Vec<PersistentVolume> = self
            .pvs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .is_some_and(|c| c.driver == self.driver)
            })
            .collect();
        let handles: BTreeSet<String> = pvs
            .iter()
            .map(|pv| pv.spec.clone().unwrap().csi.unwrap().volume_handle)
            .collect();
        let state = own.driver.state();
        let on_driver: BTreeSet<String> = state.volumes.keys().cloned().collect();
        assert_eq!(
            on_driver, handles,
            "the driver's volumes are the cluster's PVs"
        );
        let vas = self.vas.list(&ListParams::default()).await.unwrap().items;
        let published: usize = state.volumes.values().map(|v| v.publications.len()).sum();
        let attached = vas
            .iter()
            .filter(|va| va.spec.attacher == self.driver)
            .filter(|va| va.status.as_ref().is_some_and(|s| s.attached))
            .count();
        assert_eq!(
            published, attached,
            "one publication per attached VolumeAttachment"
        );
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn the_manager_rides_out_api_server_and_etcd_outages() {
    let outage = Duration::from_secs(
        std::env::var("OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let port = e2e::free_port();
    let http = format!("--http-endpoint=127.0.0.1:{port}");
    let mut own = OwnDriver::start(
        "outage",
        |_| {},
        &[
            "--controllers=provisioner,attacher",
            "--retry-interval-start=500ms",
            "--retry-interval-max=5s",
            &http,
        ],
    )
    .await;
    let c = clients().await;
    let classes: Api<StorageClass> = Api::all(c.main.clone());
    own.create_class(&own.name, Default::default()).await;
    let marks = e2e::mark_nodes(&own.driver_name, &format!("{}/zone", own.name), |_| {
        "z".into()
    })
    .await;
    let w = Wave {
        pvcs: Api::namespaced(c.main.clone(), &own.name),
        pvs: Api::all(c.main.clone()),
        vas: Api::all(c.main.clone()),
        ns: own.name.clone(),
        driver: own.driver_name.clone(),
        nodes: marks.zones.iter().map(|(n, _)| n.clone()).collect(),
    };

    // Before: 10 claims bound and attached.
    let first = names("before", 10);
    w.claims(&first).await;
    let first_pvs = w.bound(&first, Duration::from_secs(60)).await;
    w.attach(&first_pvs).await;
    w.attached(&first_pvs, Duration::from_secs(60)).await;

    // A wave in flight when the API server stops: 10 new claims, 6 detaches, 3 of them with
    // their claims deleted.
    let second = names("during", 10);
    w.claims(&second).await;
    for pv in &first_pvs[..6] {
        w.vas.delete(pv, &DeleteParams::default()).await.unwrap();
    }
    for n in &first[..3] {
        w.pvcs.delete(n, &DeleteParams::default()).await.unwrap();
    }
    cluster(&["stop", "kube-apiserver"]).await;
    let stopped = Instant::now();
    let readiness = eventually("/readyz to name the failing watches", outage, || async {
        let body = e2e::http_get(port, "/readyz").await;
        body.contains("watch failing").then_some(body)
    })
    .await;
    eprintln!(
        "during the outage, after {:?}: {readiness}",
        stopped.elapsed()
    );
    assert!(
        e2e::http_get(port, "/healthz").await.contains("ok"),
        "liveness stays ok (no restart)"
    );
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    assert!(
        own.manager.is_running(),
        "the manager stays up during the outage"
    );
    // Figures count from the restart command (kube-apiserver takes some seconds to serve).
    let restored = Instant::now();
    let ready = tokio::spawn(async move {
        loop {
            let body = e2e::http_get(port, "/readyz").await;
            if !body.contains("[-]") {
                return restored.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    cluster(&["up"]).await;
    let up_took = restored.elapsed();

    w.provisioned(&second, Duration::from_secs(120)).await;
    let provisioned_after = restored.elapsed();
    let second_pvs = w.bound(&second, Duration::from_secs(120)).await;
    let bound_after = restored.elapsed();
    for pv in &first_pvs[..6] {
        e2e::until_gone(&w.vas, pv, Duration::from_secs(120)).await;
    }
    for pv in &first_pvs[..3] {
        e2e::until_gone(&w.pvs, pv, Duration::from_secs(120)).await;
    }
    w.attach(&second_pvs).await;
    w.attached(&second_pvs, Duration::from_secs(120)).await;
    let ready_after = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("/readyz ok again within 60 s of everything done")
        .expect("the readiness poller");
    w.driver_matches(&own).await;
    eprintln!(
        "kube-apiserver out {outage:?}: after its restart (`up` took {up_took:?}), the in-flight \
         claims had their PVs in \
         {provisioned_after:?} (ours) and were Bound in {bound_after:?} (kube-controller-manager's \
         binder), /readyz ok again in {ready_after:?}"
    );

    // etcd out for 20 s: the API server answers errors meanwhile.
    let third = names("etcd", 5);
    w.claims(&third).await;
    cluster(&["stop", "etcd"]).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        own.manager.is_running(),
        "the manager stays up while etcd is out"
    );
    cluster(&["up"]).await;
    let third_pvs = w.bound(&third, Duration::from_secs(120)).await;
    w.attach(&third_pvs).await;
    w.attached(&third_pvs, Duration::from_secs(120)).await;
    w.driver_matches(&own).await;

    // Nothing twice: one CreateVolume per claim that reached the driver (a repeat is an
    // idempotent retry of a call whose answer was lost, which the outage must not cause here:
    // the driver never failed).
    let claims = first.len() + second.len() + third.len();
    assert_eq!(
        own.driver.calls(Method::CreateVolume) as usize,
        claims,
        "one CreateVolume per claim"
    );
    assert!(
        own.manager.unexpected_exits.is_empty() && own.manager.is_running(),
        "the manager never exited: {:?}",
        own.manager.unexpected_exits
    );

    for pv in first_pvs[6..].iter().chain(&second_pvs).chain(&third_pvs) {
        let _ = w.vas.delete(pv, &DeleteParams::default()).await;
    }
    let _ = w
        .pvcs
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    marks.remove().await;
    let _ = classes.delete(&own.name, &DeleteParams::default()).await;
    own.stop().await;

    // kube-controller-manager and kube-scheduler back off long after an outage (client-go's
    // reflector): a test run right after this one once met a StorageClass that
    // kube-controller-manager's informer had not seen yet (its `ProvisioningFailed: not found`
    // came before ours). Restarted, they list everything at once, and the tests after this one
    // meet the control plane they expect.
    cluster(&["stop", "kube-controller-manager", "kube-scheduler", "kwok"]).await;
    cluster(&["up"]).await;
}
