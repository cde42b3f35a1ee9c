//! The resizer on the local control plane: csi-controller-manager in place of external-resizer,
//! each test with its own csi-mock driver and manager.
//! - Side by side with the upstream csi-resizer (built from its Go module), on the same cluster
//!   with the same driver settings: an online expansion and an infeasible one recovered by a
//!   lowered request leave the same claim status, conditions, PV capacity and event reasons.
//! - The node's part handed to kubelet (the test plays kubelet), and the PV's pre-resize
//!   annotation removed once the claim has caught up.
//! - An offline-only driver with the claim in use by a pod, then not.
//! - Side by side too: a VolumeAttributesClass applied, one the driver refuses (Infeasible),
//!   then back to the one that works.
//! - Driver errors, then recovery; the manager killed mid-expansion, and the expansion finished
//!   by the restarted one.
#![cfg(feature = "cluster")]

use std::collections::BTreeSet;
use std::time::Duration;

use csi_mock::{Fault, Method};
use e2e::{ManagerProcess, OwnDriver, clients, eventually, storage_class};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttributesClass};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::Code;

const MI: i64 = 1 << 20;

/// One driver with its class, and who resizes: ours, or the upstream csi-resizer beside our
/// provisioner.
struct Side {
    own: OwnDriver,
    upstream: Option<ManagerProcess>,
    pvcs: Api<PersistentVolumeClaim>,
    pvs: Api<PersistentVolume>,
    events: Api<Event>,
}

impl Side {
    async fn start(
        prefix: &str,
        upstream: bool,
        configure: impl FnOnce(&mut csi_mock::MockConfig),
        extra: &[&str],
    ) -> Self {
        let mut args = extra.to_vec();
        if upstream {
            args.push("--controllers=provisioner,attacher");
        }
        let own = OwnDriver::start(prefix, configure, &args).await;
        let c = clients().await;
        let mut class = storage_class(&own.name, &own.driver_name, "Delete", Default::default());
        class.allow_volume_expansion = Some(true);
        Api::<StorageClass>::all(c.main.clone())
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        let upstream = upstream.then(|| {
            let mut p = ManagerProcess::other(
                &format!("{}-csi-resizer", own.name),
                std::path::PathBuf::from(e2e::env("RESIZER_DIR")).join("csi-resizer"),
                vec![
                    format!("--kubeconfig={}", e2e::env("KUBECONFIG")),
                    format!(
                        "--csi-address={}",
                        own.endpoint.trim_start_matches("unix://")
                    ),
                ],
            );
            p.start();
            p
        });
        Self {
            pvcs: Api::namespaced(c.main.clone(), &own.name),
            pvs: Api::all(c.main.clone()),
            events: Api::namespaced(c.main.clone(), &own.name),
            own,
            upstream,
        }
    }

    async fn stop(mut self) {
        if let Some(mut p) = self.upstream.take() {
            p.kill().await;
        }
        let c = clients().await;
        let _ = Api::<StorageClass>::all(c.main.clone())
            .delete(&self.own.name, &DeleteParams::default())
            .await;
        self.own.stop().await;
    }

    /// A claim of `size` in the side's class, Bound.
    async fn bound_claim(&self, name: &str, size: &str) {
        self.pvcs
            .create(
                &PostParams::default(),
                &e2e::claim(name, &self.own.name, size),
            )
            .await
            .unwrap();
        eventually(
            &format!("claim {name} to be Bound"),
            Duration::from_secs(60),
            || async {
                let pvc = self.pvcs.get(name).await.ok()?;
                (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())
            },
        )
        .await;
    }

    async fn request(&self, name: &str, size: &str) {
        let patch = json!({ "spec": { "resources": { "requests": { "storage": size } } } });
        self.pvcs
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn claim(&self, name: &str) -> PersistentVolumeClaim {
        self.pvcs.get(name).await.unwrap()
    }

    /// Waits until the claim has an Event with `reason` (Events are written in the background,
    /// by upstream's broadcaster as by ours).
    async fn wait_event(&self, name: &str, reason: &str) {
        eventually(
            &format!("a {reason} event on {name}"),
            Duration::from_secs(30),
            || async {
                let events = self.events.list(&ListParams::default()).await.ok()?;
                events
                    .items
                    .iter()
                    .any(|e| {
                        e.involved_object.name.as_deref() == Some(name)
                            && e.reason.as_deref() == Some(reason)
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// Waits until `check` holds for the claim.
    async fn wait(&self, name: &str, what: &str, check: impl Fn(&PersistentVolumeClaim) -> bool) {
        eventually(what, Duration::from_secs(90), || async {
            let pvc = self.pvcs.get(name).await.ok()?;
            check(&pvc).then_some(())
        })
        .await;
    }

    /// What a user, kubelet or kube-controller-manager can see of an expansion, normalized:
    /// sizes, statuses, conditions (type, status, message up to the driver's own words), the
    /// node-expansion-not-required annotation, the PV's capacity and pre-resize annotation,
    /// and the event reasons on the claim.
    async fn observe(&self, name: &str) -> Vec<String> {
        let pvc = self.claim(name).await;
        let status = pvc.status.clone().unwrap_or_default();
        let size = |m: &Option<std::collections::BTreeMap<String, Quantity>>| {
            m.as_ref()
                .and_then(|m| m.get("storage"))
                .map(|q| q.0.clone())
        };
        let mut seen = vec![
            format!("capacity={:?}", size(&status.capacity)),
            format!("allocated={:?}", size(&status.allocated_resources)),
            format!(
                "status={:?}",
                status
                    .allocated_resource_statuses
                    .as_ref()
                    .and_then(|m| m.get("storage"))
            ),
            format!(
                "node-expansion-not-required={:?}",
                controller_kit::meta::annotation(
                    &pvc.metadata,
                    "volume.kubernetes.io/node-expansion-not-required"
                )
            ),
        ];
        for c in status.conditions.unwrap_or_default() {
            let message = c.message.unwrap_or_default();
            let message = message
                .split(" desc = ")
                .next()
                .unwrap_or_default()
                .to_string();
            seen.push(format!("condition {} {} {message}", c.type_, c.status));
        }
        let volume = pvc.spec.and_then(|s| s.volume_name).unwrap_or_default();
        let pv = self.pvs.get(&volume).await.unwrap();
        seen.push(format!(
            "pv capacity={:?} pre-resize={:?}",
            pv.spec
                .and_then(|s| s.capacity)
                .and_then(|c| c.get("storage").map(|q| q.0.clone())),
            controller_kit::meta::annotation(
                &pv.metadata,
                "volume.alpha.kubernetes.io/pre-resize-capacity"
            )
        ));
        let reasons: BTreeSet<String> = self
            .events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .filter(|e| e.involved_object.kind.as_deref() == Some("PersistentVolumeClaim"))
            .filter_map(|e| e.reason)
            // Only the resizer's.
            .filter(|r| r.contains("Resiz"))
            .collect();
        seen.push(format!("events {reasons:?}"));
        seen
    }
}

fn capacity_is(size: &'static str) -> impl Fn(&PersistentVolumeClaim) -> bool {
    move |pvc| {
        pvc.status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .is_some_and(|q| q.0 == size)
    }
}

fn status_is(value: &'static str) -> impl Fn(&PersistentVolumeClaim) -> bool {
    move |pvc| {
        pvc.status
            .as_ref()
            .and_then(|s| s.allocated_resource_statuses.as_ref())
            .and_then(|m| m.get("storage"))
            .is_some_and(|s| s == value)
    }
}

/// The side-by-side scenarios on one side: an online expansion, and an infeasible one
/// recovered by a lowered request. Returns what each left, in order.
async fn expansions(side: &Side) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    side.bound_claim("online", "1Mi").await;
    side.request("online", "2Mi").await;
    side.wait("online", "the online expansion", capacity_is("2Mi"))
        .await;
    side.wait_event("online", "VolumeResizeSuccessful").await;
    seen.push(side.observe("online").await);

    side.bound_claim("too-big", "1Mi").await;
    side.request("too-big", "10Mi").await;
    side.wait(
        "too-big",
        "ControllerResizeInfeasible",
        status_is("ControllerResizeInfeasible"),
    )
    .await;
    side.wait_event("too-big", "VolumeResizeFailed").await;
    seen.push(side.observe("too-big").await);
    side.request("too-big", "3Mi").await;
    side.wait("too-big", "the lowered expansion", capacity_is("3Mi"))
        .await;
    side.wait_event("too-big", "VolumeResizeSuccessful").await;
    seen.push(side.observe("too-big").await);
    seen
}

#[tokio::test]
async fn expansions_leave_what_the_upstream_resizer_leaves() {
    let configure = |c: &mut csi_mock::MockConfig| c.max_volume_size = Some(5 * MI);
    let upstream = Side::start("rs-up", true, configure, &[]).await;
    let ours = Side::start("rs-ours", false, configure, &[]).await;
    let (theirs, mine) = tokio::join!(expansions(&upstream), expansions(&ours));
    assert_eq!(mine, theirs, "ours (left) and upstream's (right) differ");
    // The infeasible size was not retried with the fast backoff by either: the first attempt
    // and the one pass that fills the slow set, then the lowered size.
    for side in [&upstream, &ours] {
        assert!(
            side.own.driver.calls(Method::ControllerExpandVolume) <= 4,
            "{} calls",
            side.own.driver.calls(Method::ControllerExpandVolume)
        );
    }
    upstream.stop().await;
    ours.stop().await;
}

/// What a modification left, with the side's own names replaced by `X`.
async fn observe_modify(side: &Side, name: &str) -> Vec<String> {
    let x = |s: &str| s.replace(&side.own.name, "X");
    let pvc = side.claim(name).await;
    let status = pvc.status.clone().unwrap_or_default();
    let mut seen = vec![
        format!(
            "modify={:?}",
            status.modify_volume_status.as_ref().map(|m| (
                m.status.clone(),
                m.target_volume_attributes_class_name.as_deref().map(x)
            ))
        ),
        format!(
            "current={:?}",
            status
                .current_volume_attributes_class_name
                .as_deref()
                .map(x)
        ),
    ];
    for c in status.conditions.unwrap_or_default() {
        seen.push(format!(
            "condition {} {} {:?} {}",
            c.type_,
            c.status,
            c.reason,
            x(&c.message.unwrap_or_default())
        ));
    }
    let volume = pvc.spec.and_then(|s| s.volume_name).unwrap_or_default();
    let pv = side.pvs.get(&volume).await.unwrap();
    seen.push(format!(
        "pv class={:?}",
        pv.spec
            .and_then(|s| s.volume_attributes_class_name)
            .as_deref()
            .map(x)
    ));
    let reasons: BTreeSet<String> = side
        .events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .filter(|r| r.contains("Modify"))
        .collect();
    seen.push(format!("events {reasons:?}"));
    seen
}

/// The modify scenarios on one side: a class applied, a class the driver refuses (Infeasible),
/// then back to the class that works.
async fn modifications(side: &Side) -> Vec<Vec<String>> {
    let c = clients().await;
    let vacs: Api<VolumeAttributesClass> = Api::all(c.main.clone());
    for (suffix, key) in [("gold", "iops"), ("bad", "speed")] {
        let class = VolumeAttributesClass {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}-{suffix}", side.own.name)),
                ..Default::default()
            },
            driver_name: side.own.driver_name.clone(),
            parameters: Some([(key.to_string(), "500".to_string())].into()),
        };
        vacs.create(&PostParams::default(), &class).await.unwrap();
    }
    let set_class = |suffix: &str| {
        let patch = json!({ "spec": { "volumeAttributesClassName": format!("{}-{suffix}", side.own.name) } });
        async move {
            side.pvcs
                .patch("mod", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    let gold = format!("{}-gold", side.own.name);
    let current_is = |class: String| {
        move |pvc: &PersistentVolumeClaim| {
            let s = pvc.status.as_ref();
            s.and_then(|s| s.current_volume_attributes_class_name.as_deref())
                == Some(class.as_str())
                && s.is_some_and(|s| s.modify_volume_status.is_none())
        }
    };
    let mut seen = Vec::new();
    side.bound_claim("mod", "1Mi").await;
    set_class("gold").await;
    side.wait("mod", "the gold class", current_is(gold.clone()))
        .await;
    side.wait_event("mod", "VolumeModifySuccessful").await;
    seen.push(observe_modify(side, "mod").await);
    set_class("bad").await;
    side.wait("mod", "Infeasible", |pvc| {
        pvc.status
            .as_ref()
            .and_then(|s| s.modify_volume_status.as_ref())
            .is_some_and(|m| m.status == "Infeasible")
    })
    .await;
    side.wait_event("mod", "VolumeModifyFailed").await;
    seen.push(observe_modify(side, "mod").await);
    set_class("gold").await;
    side.wait("mod", "the rollback to gold", current_is(gold))
        .await;
    seen.push(observe_modify(side, "mod").await);
    for suffix in ["gold", "bad"] {
        let _ = vacs
            .delete(
                &format!("{}-{suffix}", side.own.name),
                &DeleteParams::default(),
            )
            .await;
    }
    seen
}

#[tokio::test]
async fn modifications_leave_what_the_upstream_resizer_leaves() {
    let upstream = Side::start("rsm-up", true, |_| {}, &[]).await;
    let ours = Side::start("rsm-ours", false, |_| {}, &[]).await;
    let (theirs, mine) = tokio::join!(modifications(&upstream), modifications(&ours));
    assert_eq!(mine, theirs, "ours (left) and upstream's (right) differ");
    for side in [&upstream, &ours] {
        let volume = side
            .own
            .driver
            .state()
            .volumes
            .into_values()
            .next()
            .unwrap();
        assert_eq!(
            volume.mutable_parameters.get("iops").map(String::as_str),
            Some("500")
        );
    }
    upstream.stop().await;
    ours.stop().await;
}

#[tokio::test]
async fn the_node_part_is_handed_to_kubelet() {
    let side = Side::start("rs-node", false, |c| c.node_expansion_required = true, &[]).await;
    side.bound_claim("grow", "1Mi").await;
    side.request("grow", "2Mi").await;
    side.wait("grow", "NodeResizePending", status_is("NodeResizePending"))
        .await;
    let seen = side.observe("grow").await;
    assert_eq!(
        seen,
        vec![
            "capacity=Some(\"1Mi\")",
            "allocated=Some(\"2Mi\")",
            "status=Some(\"NodeResizePending\")",
            "node-expansion-not-required=None",
            "condition Resizing True ",
            "condition FileSystemResizePending True Waiting for user to (re-)start a pod to finish file system resize of volume on node.",
            "pv capacity=Some(\"2Mi\") pre-resize=Some(\"1Mi\")",
            "events {\"FileSystemResizeRequired\", \"Resizing\"}",
        ]
    );
    // Kubelet's part: the file system grown, the claim's status brought up to date.
    let kubelet = json!({ "status": {
        "capacity": { "storage": "2Mi" },
        "allocatedResourceStatuses": null,
        "conditions": null,
    }});
    side.pvcs
        .patch_status("grow", &PatchParams::default(), &Patch::Merge(&kubelet))
        .await
        .unwrap();
    eventually(
        "the pre-resize annotation to go",
        Duration::from_secs(60),
        || async {
            let volume = side.claim("grow").await.spec?.volume_name?;
            let pv = side.pvs.get(&volume).await.ok()?;
            controller_kit::meta::annotation(
                &pv.metadata,
                "volume.alpha.kubernetes.io/pre-resize-capacity",
            )
            .is_none()
            .then_some(())
        },
    )
    .await;
    assert_eq!(side.own.driver.calls(Method::ControllerExpandVolume), 1);
    side.stop().await;
}

#[tokio::test]
async fn an_offline_only_driver_expands_once_the_pod_is_gone() {
    let side = Side::start(
        "rs-offline",
        false,
        |c| c.online_expansion = false,
        &["--retry-interval-max=5s"],
    )
    .await;
    // The attacher finds the node IDs of this driver in the CSINodes.
    let marks = e2e::mark_nodes(
        &side.own.driver_name,
        &format!("topology.{}/zone", side.own.name),
        |_| "z".into(),
    )
    .await;
    side.bound_claim("used", "1Mi").await;
    let c = clients().await;
    let pods: Api<Pod> = Api::namespaced(c.main.clone(), &side.own.name);
    pods.create(
        &PostParams::default(),
        &e2e::pod_using("user", "used", None),
    )
    .await
    .unwrap();
    eventually(
        "the volume to be published",
        Duration::from_secs(120),
        || async {
            let state = side.own.driver.state();
            state
                .volumes
                .values()
                .any(|v| !v.publications.is_empty())
                .then_some(())
        },
    )
    .await;
    side.request("used", "2Mi").await;
    let in_use = format!(
        "Unable to expand {}/used because CSI driver {} only supports offline expansion and volume is currently in-use",
        side.own.name, side.own.driver_name
    );
    eventually("the in-use event", Duration::from_secs(90), || async {
        let events = side.events.list(&ListParams::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| {
                e.message.as_deref() == Some(in_use.as_str())
                    && e.action.as_deref() == Some("ResizeVolumeInUse")
            })
            .then_some(())
    })
    .await;
    let calls = side.own.driver.calls(Method::ControllerExpandVolume);
    pods.delete(
        "user",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    side.wait(
        "used",
        "the expansion after the pod went",
        capacity_is("2Mi"),
    )
    .await;
    assert!(
        side.own.driver.calls(Method::ControllerExpandVolume) > calls,
        "expanded after the pod went"
    );
    marks.remove().await;
    side.stop().await;
}

#[tokio::test]
async fn driver_errors_then_recovery_and_a_restart_mid_expansion() {
    let mut side = Side::start("rs-faults", false, |_| {}, &["--retry-interval-max=5s"]).await;
    // A final error: a ControllerResizeError condition carrying its class, then recovery.
    side.own.driver.inject(
        Method::ControllerExpandVolume,
        Fault::error(Code::Internal, "backend hiccup").times(2),
    );
    side.bound_claim("flaky", "1Mi").await;
    side.request("flaky", "2Mi").await;
    side.wait("flaky", "the ControllerResizeError condition", |pvc| {
        pvc.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "ControllerResizeError"
                        && c.reason.as_deref() == Some("ResizeFailed")
                })
            })
    })
    .await;
    side.wait("flaky", "the recovered expansion", capacity_is("2Mi"))
        .await;
    let conditions = side.claim("flaky").await.status.unwrap().conditions;
    assert!(conditions.unwrap_or_default().is_empty());

    // The manager killed while the driver expands; the restarted one finishes.
    side.own.driver.inject(
        Method::ControllerExpandVolume,
        Fault::delay(Duration::from_secs(4)).once(),
    );
    side.bound_claim("crash", "1Mi").await;
    side.request("crash", "2Mi").await;
    side.wait(
        "crash",
        "the expansion to be in progress",
        status_is("ControllerResizeInProgress"),
    )
    .await;
    side.own.manager.kill().await;
    side.own.manager.start();
    side.wait(
        "crash",
        "the expansion after the restart",
        capacity_is("2Mi"),
    )
    .await;
    let volume = side.claim("crash").await.spec.unwrap().volume_name.unwrap();
    let pv = side.pvs.get(&volume).await.unwrap();
    assert_eq!(pv.spec.unwrap().capacity.unwrap()["storage"].0, "2Mi");
    side.stop().await;
}
