//! The attacher under faults, on the local control plane with csi-mock (issue 5): PV deletion
//! waits for detach, driver errors in `status.attachError`, a deleted node's attachment, and
//! attaches not starved by a detach backlog.
//!
//! Needs `e2e/cluster up`, `e2e/cluster driver mock` and `e2e/cluster sidecars ours`, with
//! KUBECONFIG and the run dir's driver.env exported (as e2e/run-tests does): CSI_SOCKET,
//! DRIVER_NAME and CSI_MOCK_CONTROL (`host:port` of csi-mock's control API).
//!
//! The tests share the driver's fault queue and call counts, so they run one at a time (a lock).
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use csi::CsiClient;
use csi::v1;
use e2e::{clients, eventually, unique};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, Pod, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::{CSINode, CSINodeDriver, CSINodeSpec, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One test at a time: they share csi-mock's faults and counters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NS: &str = "default";

fn finalizer(driver: &str) -> String {
    format!(
        "external-attacher/{}",
        controller_kit::leader::sanitize_name(driver)
    )
}

// ---------------------------------------------------------------------------------------------
// csi-mock's control API (plain HTTP/1.1; the suite has no HTTP client)

/// `host:port` of csi-mock's control API (in driver.env when `e2e/cluster driver mock` runs).
fn mock_control() -> String {
    e2e::env("CSI_MOCK_CONTROL")
}

async fn mock(method: &str, path: &str, body: Option<Value>) -> Value {
    let addr = mock_control();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("csi-mock control API at {addr}: {e}"));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    assert!(
        status
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2')),
        "{method} {path}: {status}\n{body}"
    );
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn inject(fault: Value) {
    mock("POST", "/faults", Some(fault)).await;
}

async fn clear_faults() {
    mock("DELETE", "/faults", None).await;
}

async fn calls(method: &str) -> u64 {
    mock("GET", "/calls", None).await[method]
        .as_u64()
        .unwrap_or(0)
}

/// The node IDs csi-mock holds `volume_id` published to.
async fn published_nodes(volume_id: &str) -> Vec<String> {
    let state = mock("GET", "/state", None).await;
    state["volumes"][volume_id]["publications"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Objects

/// What a test created, deleted (best effort, in dependency order) when dropped: also when the
/// test fails half-way. Faults are cleared first so that detaches can finish.
#[derive(Default)]
struct Cleanup(Objects);

#[derive(Default)]
struct Objects {
    pods: Vec<String>,
    vas: Vec<String>,
    pvcs: Vec<String>,
    pvs: Vec<String>,
    csinodes: Vec<String>,
    nodes: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let me = std::mem::take(&mut self.0);
        if me.is_empty() {
            return;
        }
        // A fresh runtime on a fresh thread: Drop may run inside (or during a panic of) the
        // test's runtime, which cannot block.
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(me.run());
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup panicked");
        }
    }
}

impl std::ops::Deref for Cleanup {
    type Target = Objects;
    fn deref(&self) -> &Objects {
        &self.0
    }
}

impl std::ops::DerefMut for Cleanup {
    fn deref_mut(&mut self) -> &mut Objects {
        &mut self.0
    }
}

impl Objects {
    fn is_empty(&self) -> bool {
        [
            &self.pods,
            &self.vas,
            &self.pvcs,
            &self.pvs,
            &self.csinodes,
            &self.nodes,
            &self.volumes,
        ]
        .iter()
        .all(|v| v.is_empty())
    }

    async fn run(&self) {
        if std::env::var_os("CSI_MOCK_CONTROL").is_some() {
            let _ = tokio::spawn(clear_faults()).await;
        }
        let c = clients().await;
        let force = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let dp = DeleteParams::default();
        async fn del<K>(api: &Api<K>, names: &[String], dp: &DeleteParams)
        where
            K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
        {
            futures::stream::iter(names)
                .for_each_concurrent(20, |n| async move {
                    let _ = api.delete(n, dp).await;
                })
                .await;
        }
        del(
            &Api::<Pod>::namespaced(c.main.clone(), NS),
            &self.pods,
            &force,
        )
        .await;
        del(
            &Api::<VolumeAttachment>::all(c.main.clone()),
            &self.vas,
            &dp,
        )
        .await;
        del(
            &Api::<PersistentVolumeClaim>::namespaced(c.main.clone(), NS),
            &self.pvcs,
            &dp,
        )
        .await;
        del(
            &Api::<PersistentVolume>::all(c.main.clone()),
            &self.pvs,
            &dp,
        )
        .await;
        del(&Api::<CSINode>::all(c.main.clone()), &self.csinodes, &dp).await;
        del(&Api::<Node>::all(c.main.clone()), &self.nodes, &dp).await;
        if !self.volumes.is_empty() {
            // The VAs must be detached before the volumes can go; give them a moment.
            let vas = Api::<VolumeAttachment>::all(c.main.clone());
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in &self.vas {
                while Instant::now() < deadline && matches!(vas.get_opt(n).await, Ok(Some(_))) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let csi = e2e::cluster_csi();
            futures::stream::iter(self.volumes.clone())
                .for_each_concurrent(20, |volume_id| {
                    let csi = csi.clone();
                    async move {
                        let _ = csi
                            .delete_volume(v1::DeleteVolumeRequest {
                                volume_id,
                                ..Default::default()
                            })
                            .await;
                    }
                })
                .await;
        }
    }
}

/// Everything a test needs from the cluster.
struct World {
    driver: String,
    csi: CsiClient,
    pvs: Api<PersistentVolume>,
    pvcs: Api<PersistentVolumeClaim>,
    pods: Api<Pod>,
    vas: Api<VolumeAttachment>,
    nodes: Api<Node>,
    csinodes: Api<CSINode>,
}

async fn world() -> World {
    let c = clients().await;
    World {
        driver: e2e::env("DRIVER_NAME"),
        csi: e2e::cluster_csi(),
        pvs: Api::all(c.main.clone()),
        pvcs: Api::namespaced(c.main.clone(), NS),
        pods: Api::namespaced(c.main.clone(), NS),
        vas: Api::all(c.main.clone()),
        nodes: Api::all(c.main.clone()),
        csinodes: Api::all(c.main.clone()),
    }
}

fn size() -> BTreeMap<String, Quantity> {
    BTreeMap::from([("storage".to_string(), Quantity("1Mi".into()))])
}

impl World {
    /// A volume created on the driver, and a static PV for it (Retain), pre-bound to the claim
    /// `name` if `claim`.
    async fn volume_and_pv(&self, name: &str, claim: bool, cleanup: &mut Cleanup) -> String {
        let volume = self
            .csi
            .create_volume(v1::CreateVolumeRequest {
                name: name.to_string(),
                capacity_range: Some(v1::CapacityRange {
                    required_bytes: 1 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![e2e::rwo()],
                ..Default::default()
            })
            .await
            .unwrap()
            .volume
            .unwrap();
        cleanup.volumes.push(volume.volume_id.clone());
        self.pvs
            .create(
                &PostParams::default(),
                &PersistentVolume {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    spec: Some(PersistentVolumeSpec {
                        capacity: Some(size()),
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        persistent_volume_reclaim_policy: Some("Retain".into()),
                        storage_class_name: Some(String::new()),
                        claim_ref: claim.then(|| ObjectReference {
                            namespace: Some(NS.into()),
                            name: Some(name.to_string()),
                            ..Default::default()
                        }),
                        csi: Some(CSIPersistentVolumeSource {
                            driver: self.driver.clone(),
                            volume_handle: volume.volume_id.clone(),
                            volume_attributes: Some(
                                volume.volume_context.clone().into_iter().collect(),
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        cleanup.pvs.push(name.to_string());
        volume.volume_id
    }

    /// Volume, PV, PVC and a pod using it on `node`: kube-controller-manager's attach/detach
    /// controller creates the VolumeAttachment. Returns the volume ID.
    async fn pod_with_volume(&self, name: &str, node: &str, cleanup: &mut Cleanup) -> String {
        let volume_id = self.volume_and_pv(name, true, cleanup).await;
        self.pvcs
            .create(
                &PostParams::default(),
                &PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        storage_class_name: Some(String::new()),
                        volume_name: Some(name.to_string()),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(size()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        cleanup.pvcs.push(name.to_string());
        self.pod(name, name, node).await;
        cleanup.pods.push(name.to_string());
        volume_id
    }

    /// A pod on `node` using claim `claim`.
    async fn pod(&self, name: &str, claim: &str, node: &str) {
        self.pods
            .create(
                &PostParams::default(),
                &e2e::pod_using(name, claim, Some(node)),
            )
            .await
            .unwrap();
    }

    /// The VolumeAttachment naming PV `pv`, once `ok` holds for it.
    async fn va_of(
        &self,
        what: &str,
        pv: &str,
        timeout: Duration,
        ok: impl Fn(&VolumeAttachment) -> bool,
    ) -> VolumeAttachment {
        eventually(what, timeout, || {
            let vas = self.vas.clone();
            let ok = &ok;
            async move {
                let list = vas.list(&Default::default()).await.ok()?;
                list.items.into_iter().find(|va| {
                    va.spec.source.persistent_volume_name.as_deref() == Some(pv) && ok(va)
                })
            }
        })
        .await
    }

    /// Waits until kube-controller-manager's attach/detach controller has recorded the volume
    /// as attached (`node.status.volumesAttached`). Without a kubelet that record (a Node
    /// update) is also what tells it the volume is not mounted; a pod deleted before it
    /// leaves the volume "mounted" in its eyes, and it waits 6 minutes before detaching.
    async fn adc_recorded(&self, node: &str, volume_id: &str) {
        let unique_name = format!("kubernetes.io/csi/{}^{volume_id}", self.driver);
        eventually(
            "kube-controller-manager to record the attachment in node.status.volumesAttached",
            Duration::from_secs(60),
            || {
                let (nodes, unique_name) = (self.nodes.clone(), &unique_name);
                async move {
                    let n = nodes.get(node).await.ok()?;
                    n.status?
                        .volumes_attached?
                        .iter()
                        .any(|v| &v.name == unique_name)
                        .then_some(())
                }
            },
        )
        .await;
    }

    async fn delete_pod(&self, name: &str) {
        self.pods
            .delete(
                name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
}

async fn gone<K>(what: &str, api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(what, timeout, || async move {
        api.get_opt(name)
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
}

fn attached(va: &VolumeAttachment) -> bool {
    va.status.as_ref().is_some_and(|s| s.attached)
}

fn attach_error(va: &VolumeAttachment) -> Option<String> {
    va.status
        .as_ref()
        .and_then(|s| s.attach_error.as_ref())
        .and_then(|e| e.message.clone())
}

fn detach_error(va: &VolumeAttachment) -> Option<String> {
    va.status
        .as_ref()
        .and_then(|s| s.detach_error.as_ref())
        .and_then(|e| e.message.clone())
}

fn finalizers<K: kube::Resource>(o: &K) -> Vec<String> {
    o.meta().finalizers.clone().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// 1. PV deletion waits for detach

#[tokio::test]
async fn a_deleted_pv_stays_until_its_volume_is_detached() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let mut cleanup = Cleanup::default();
    clear_faults().await;
    let name = unique("e2e-pvdel");
    let node = "kwok-node-0";
    let volume_id = w.pod_with_volume(&name, node, &mut cleanup).await;
    let va = w
        .va_of(
            "the VolumeAttachment to be attached",
            &name,
            Duration::from_secs(60),
            attached,
        )
        .await;
    let va_name = va.metadata.name.clone().unwrap();
    cleanup.vas.push(va_name.clone());
    let ours = finalizer(&w.driver);
    w.adc_recorded(node, &volume_id).await;

    // Deleted while attached: Terminating, our finalizer on it.
    w.pvs.delete(&name, &DeleteParams::default()).await.unwrap();
    let pv = w.pvs.get(&name).await.unwrap();
    assert!(pv.metadata.deletion_timestamp.is_some());
    assert!(finalizers(&pv).contains(&ours), "{:?}", finalizers(&pv));

    // Detach fails for now: the pod and the claim go, so kube-controller-manager's
    // pv-protection finalizer goes too, and only the attacher's holds the PV.
    inject(
        json!({"method": "ControllerUnpublishVolume", "code": "UNAVAILABLE",
                  "message": format!("{name}: backend busy")}),
    )
    .await;
    w.delete_pod(&name).await;
    w.pvcs
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let held = eventually(
        "the PV to be held by the attacher's finalizer alone, its VA failing to detach",
        Duration::from_secs(60),
        || {
            let (w, name, va_name, ours) = (&w, &name, &va_name, &ours);
            async move {
                let pv = w.pvs.get_opt(name).await.ok()??;
                let va = w.vas.get_opt(va_name).await.ok()??;
                (finalizers(&pv) == [ours.clone()]
                    && va.metadata.deletion_timestamp.is_some()
                    && detach_error(&va).is_some_and(|m| m.contains("backend busy")))
                .then_some(pv)
            }
        },
    )
    .await;
    assert!(held.metadata.deletion_timestamp.is_some());
    // And it stays while the detach keeps failing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pv = w.pvs.get(&name).await.unwrap();
    assert_eq!(finalizers(&pv), std::slice::from_ref(&ours));
    let va = w.vas.get(&va_name).await.unwrap();
    assert!(attached(&va), "still attached while detach fails");

    // The driver recovers: detached, the VA goes, then the PV.
    clear_faults().await;
    gone(
        "the VolumeAttachment to be detached and gone",
        &w.vas,
        &va_name,
        Duration::from_secs(90),
    )
    .await;
    gone(
        "the PV to go once detached",
        &w.pvs,
        &name,
        Duration::from_secs(30),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. A driver error shows in status.attachError and clears after recovery

#[tokio::test]
async fn a_driver_error_is_reported_in_attach_error_and_cleared_on_recovery() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let mut cleanup = Cleanup::default();
    clear_faults().await;
    let name = unique("e2e-atterr");
    let message = format!("injected publish failure {name}");
    // Three failures, then the driver answers again (the fault's count runs out).
    inject(
        json!({"method": "ControllerPublishVolume", "code": "INTERNAL",
                  "message": message, "count": 3}),
    )
    .await;
    let publishes = calls("ControllerPublishVolume").await;
    let volume_id = w.pod_with_volume(&name, "kwok-node-1", &mut cleanup).await;

    let va = w
        .va_of(
            "status.attachError with the driver's message",
            &name,
            Duration::from_secs(60),
            |va| attach_error(va).is_some_and(|m| m.contains(&message)),
        )
        .await;
    cleanup.vas.push(va.metadata.name.clone().unwrap());
    assert!(!attached(&va));
    let error = va.status.as_ref().unwrap().attach_error.as_ref().unwrap();
    assert_eq!(error.error_code, Some(13), "INTERNAL: {error:?}");

    let t0 = Instant::now();
    let va = w
        .va_of(
            "the VolumeAttachment to be attached once the fault ran out",
            &name,
            Duration::from_secs(60),
            attached,
        )
        .await;
    println!(
        "recovered {:?} after the first attachError was seen",
        t0.elapsed()
    );
    assert_eq!(
        attach_error(&va),
        None,
        "attachError cleared: {:?}",
        va.status
    );
    let n = calls("ControllerPublishVolume").await - publishes;
    assert!(n >= 4, "3 failed publishes and a good one, saw {n}");
    assert!(
        mock("GET", "/faults", None)
            .await
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    // The same with an unlimited fault, lifted with DELETE /faults.
    let va_name = va.metadata.name.clone().unwrap();
    w.adc_recorded("kwok-node-1", &volume_id).await;
    w.delete_pod(&name).await;
    gone(
        "the first VolumeAttachment to go",
        &w.vas,
        &va_name,
        Duration::from_secs(90),
    )
    .await;
    let message = format!("injected outage {name}");
    inject(json!({"method": "ControllerPublishVolume", "code": "UNAVAILABLE", "message": message}))
        .await;
    let again = format!("{name}-2");
    w.pod(&again, &name, "kwok-node-1").await;
    cleanup.pods.push(again.clone());
    let va = w
        .va_of(
            "status.attachError with the outage message",
            &name,
            Duration::from_secs(60),
            |va| attach_error(va).is_some_and(|m| m.contains(&message)),
        )
        .await;
    let va_name = va.metadata.name.clone().unwrap();
    cleanup.vas.push(va_name.clone());
    assert_eq!(
        va.status
            .as_ref()
            .unwrap()
            .attach_error
            .as_ref()
            .unwrap()
            .error_code,
        Some(14)
    );
    clear_faults().await;
    let va = w
        .va_of(
            "attached after DELETE /faults",
            &name,
            Duration::from_secs(60),
            attached,
        )
        .await;
    assert_eq!(
        attach_error(&va),
        None,
        "attachError cleared: {:?}",
        va.status
    );

    w.adc_recorded("kwok-node-1", &volume_id).await;
    w.delete_pod(&again).await;
    gone(
        "the VolumeAttachment to go",
        &w.vas,
        &va_name,
        Duration::from_secs(90),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. A deleted node

/// A kwok-managed node of our own (as e2e/cluster creates them: the attach/detach controller
/// only handles nodes with the controller-managed-attach-detach annotation) and its CSINode,
/// owned by the Node as kubelet makes it, so the garbage collector deletes it with the Node.
async fn own_node(w: &World, name: &str, node_id: &str, cleanup: &mut Cleanup) {
    let node = w
        .nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                    },
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "e2e": "attacher",
                    },
                },
                "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    cleanup.nodes.push(name.to_string());
    eventually(
        "our node to become Ready (kwok)",
        Duration::from_secs(60),
        || async move {
            let n = w.nodes.get(name).await.ok()?;
            n.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    w.csinodes
        .create(
            &PostParams::default(),
            &CSINode {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_string(),
                        uid: node.metadata.uid.clone().unwrap(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: CSINodeSpec {
                    drivers: vec![CSINodeDriver {
                        name: w.driver.clone(),
                        node_id: node_id.to_string(),
                        topology_keys: None,
                        allocatable: None,
                    }],
                },
                status: None,
            },
        )
        .await
        .unwrap();
    cleanup.csinodes.push(name.to_string());
}

#[tokio::test]
async fn a_deleted_nodes_volume_is_unpublished_with_the_recorded_node_id() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let mut cleanup = Cleanup::default();
    clear_faults().await;
    let name = unique("e2e-gone");
    let node = format!("{name}-node");
    // A node ID that is not the node's name: only the CSINode / the VA annotation know it.
    let node_id = format!("{name}-backend-id");
    own_node(&w, &node, &node_id, &mut cleanup).await;
    let volume_id = w.pod_with_volume(&name, &node, &mut cleanup).await;
    let va = w
        .va_of(
            "the VolumeAttachment to be attached",
            &name,
            Duration::from_secs(60),
            attached,
        )
        .await;
    let va_name = va.metadata.name.clone().unwrap();
    cleanup.vas.push(va_name.clone());
    assert_eq!(
        va.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("csi.alpha.kubernetes.io/node-id")),
        Some(&node_id)
    );
    assert_eq!(
        published_nodes(&volume_id).await,
        std::slice::from_ref(&node_id)
    );
    let unpublishes = calls("ControllerUnpublishVolume").await;

    w.adc_recorded(&node, &volume_id).await;
    // The Node goes; the garbage collector takes its CSINode with it.
    w.nodes
        .delete(&node, &DeleteParams::default())
        .await
        .unwrap();
    gone(
        "the CSINode to be garbage-collected with its Node",
        &w.csinodes,
        &node,
        Duration::from_secs(60),
    )
    .await;

    // While the pod exists kube-controller-manager does not detach (the pod garbage collector,
    // which this control plane does not run, deletes the pods of a missing node), and we never
    // delete VolumeAttachments: it stays attached.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let va = w.vas.get(&va_name).await.unwrap();
    println!(
        "5 s after the node's deletion: VA deletionTimestamp {:?}, attached {}",
        va.metadata.deletion_timestamp,
        attached(&va)
    );
    assert!(attached(&va));
    assert_eq!(
        published_nodes(&volume_id).await,
        std::slice::from_ref(&node_id)
    );

    // The pod garbage collector's part (it deletes pods bound to a missing node): the pod goes,
    // kube-controller-manager deletes the VA, and we unpublish with the node ID recorded in
    // the VA's annotation (the CSINode is gone), then let the VA go.
    w.delete_pod(&name).await;
    let t0 = Instant::now();
    gone(
        "the VolumeAttachment of the deleted node to be detached and gone",
        &w.vas,
        &va_name,
        Duration::from_secs(90),
    )
    .await;
    println!(
        "VA of the deleted node detached and gone {:?} after its pod",
        t0.elapsed()
    );
    assert_eq!(published_nodes(&volume_id).await, Vec::<String>::new());
    assert!(calls("ControllerUnpublishVolume").await > unpublishes);

    // A new VolumeAttachment naming the deleted node is not attached.
    let publishes = calls("ControllerPublishVolume").await;
    let hand = format!("{name}-hand");
    w.vas
        .create(
            &PostParams::default(),
            &e2e::volume_attachment(&hand, &w.driver, &node, &name),
        )
        .await
        .unwrap();
    cleanup.vas.push(hand.clone());
    let va = eventually(
        "attachError for the deleted node",
        Duration::from_secs(30),
        || {
            let (vas, hand) = (w.vas.clone(), hand.clone());
            async move {
                let va = vas.get(&hand).await.ok()?;
                attach_error(&va)
                    .is_some_and(|m| m.contains("not attaching to a deleted node"))
                    .then_some(va)
            }
        },
    )
    .await;
    assert!(!attached(&va));
    assert_eq!(
        calls("ControllerPublishVolume").await,
        publishes,
        "no publish to a deleted node"
    );
    assert_eq!(published_nodes(&volume_id).await, Vec::<String>::new());
    w.vas.delete(&hand, &DeleteParams::default()).await.unwrap();
    gone(
        "the hand-made VolumeAttachment to go",
        &w.vas,
        &hand,
        Duration::from_secs(30),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Attaches are not starved by a detach backlog

/// Unpublish latency injected into csi-mock.
const DETACH_LATENCY: Duration = Duration::from_secs(1);
/// Detaches queued before the attaches.
const DETACHES: usize = 200;
/// Attaches measured.
const ATTACHES: usize = 20;
/// Bound on each attach's completion (VA created → `status.attached`). With one shared FIFO
/// the attaches would wait behind 200 × 1 s / 10 workers ≈ 20 s of detaches.
const ATTACH_BOUND: Duration = Duration::from_secs(5);

/// The names among `names` whose VolumeAttachment exists / is attached.
async fn va_census(vas: &Api<VolumeAttachment>, prefix: &str) -> BTreeMap<String, bool> {
    vas.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|va| {
            let name = va.metadata.name.clone()?;
            name.starts_with(prefix).then(|| (name, attached(&va)))
        })
        .collect()
}

/// VolumeAttachments made by hand (kube-controller-manager's attach/detach controller leaves
/// VAs it did not create alone; checked: a hand-made VA stayed for minutes): 200 attached, then
/// deleted while every ControllerUnpublish takes 1 s, then 20 new ones. The attach lane has its
/// own workers, so the new ones attach while the detach lane works through its backlog.
#[tokio::test]
async fn attaches_are_not_starved_by_a_detach_backlog() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let mut cleanup = Cleanup::default();
    clear_faults().await;
    let name = unique("e2e-fair");
    let node = "kwok-node-2";
    let t_setup = Instant::now();

    // Volumes and PVs: one per VolumeAttachment.
    let pv_names: Vec<String> = (0..DETACHES + ATTACHES)
        .map(|i| format!("{name}-{i:03}"))
        .collect();
    let created: Vec<String> = futures::stream::iter(pv_names.iter())
        .map(|pv| {
            let w = &w;
            async move {
                let mut c = Cleanup::default();
                let id = w.volume_and_pv(pv, false, &mut c).await;
                // Handed to the test's Cleanup below.
                std::mem::take(&mut c.0);
                id
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    cleanup.volumes.extend(created);
    cleanup.pvs.extend(pv_names.iter().cloned());

    // 200 VolumeAttachments, attached.
    let detach_prefix = format!("{name}-d");
    let detach_vas: Vec<String> = (0..DETACHES)
        .map(|i| format!("{detach_prefix}-{i:03}"))
        .collect();
    cleanup.vas.extend(detach_vas.iter().cloned());
    futures::stream::iter(detach_vas.iter().zip(&pv_names))
        .for_each_concurrent(20, |(va, pv)| {
            let w = &w;
            async move {
                w.vas
                    .create(
                        &PostParams::default(),
                        &e2e::volume_attachment(va, &w.driver, node, pv),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    eventually(
        "200 hand-made VolumeAttachments to be attached",
        Duration::from_secs(90),
        || {
            let (vas, prefix) = (&w.vas, &detach_prefix);
            async move {
                let census = va_census(vas, prefix).await;
                (census.len() == DETACHES && census.values().all(|a| *a)).then_some(())
            }
        },
    )
    .await;
    println!("setup: {DETACHES} attached in {:?}", t_setup.elapsed());

    // Every unpublish now takes 1 s; the 200 go.
    inject(json!({"method": "ControllerUnpublishVolume", "delay_ms": DETACH_LATENCY.as_millis() as u64}))
        .await;
    let unpublishes = calls("ControllerUnpublishVolume").await;
    let t_delete = Instant::now();
    futures::stream::iter(detach_vas.iter())
        .for_each_concurrent(50, |va| {
            let vas = &w.vas;
            async move {
                vas.delete(va, &DeleteParams::default()).await.unwrap();
            }
        })
        .await;
    println!(
        "{DETACHES} VolumeAttachments deleted in {:?}",
        t_delete.elapsed()
    );

    // Then 20 attaches; each one's time from creation to attached.
    let attach_prefix = format!("{name}-a");
    let attach_vas: Vec<String> = (0..ATTACHES)
        .map(|i| format!("{attach_prefix}-{i:03}"))
        .collect();
    cleanup.vas.extend(attach_vas.iter().cloned());
    let t_attach = Instant::now();
    let mut created_at = BTreeMap::new();
    for (va, pv) in attach_vas.iter().zip(&pv_names[DETACHES..]) {
        w.vas
            .create(
                &PostParams::default(),
                &e2e::volume_attachment(va, &w.driver, node, pv),
            )
            .await
            .unwrap();
        created_at.insert(va.clone(), Instant::now());
    }
    let mut done_at: BTreeMap<String, Instant> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backlog_when_attached = None;
    while done_at.len() < ATTACHES {
        assert!(
            Instant::now() < deadline,
            "attaches not done after 60 s: {} of {ATTACHES}",
            done_at.len()
        );
        let census = va_census(&w.vas, &attach_prefix).await;
        let now = Instant::now();
        for (va, is_attached) in census {
            if is_attached {
                done_at.entry(va).or_insert(now);
            }
        }
        if done_at.len() == ATTACHES {
            backlog_when_attached = Some(va_census(&w.vas, &detach_prefix).await.len());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut latencies: Vec<Duration> = done_at
        .iter()
        .map(|(va, t)| t.duration_since(created_at[va]))
        .collect();
    latencies.sort();
    let all_attached = t_attach.elapsed();
    let backlog = backlog_when_attached.unwrap();
    println!(
        "{ATTACHES} attaches behind {DETACHES} detaches of {DETACH_LATENCY:?} each: \
         min {:?}, median {:?}, max {:?}; all attached {all_attached:?} after the first was \
         created; {backlog} detaches still pending then",
        latencies[0],
        latencies[ATTACHES / 2],
        latencies[ATTACHES - 1]
    );

    // The backlog drains at ~10 per second (10 workers).
    for va in &detach_vas {
        gone(
            "the detach backlog to drain",
            &w.vas,
            va,
            Duration::from_secs(90),
        )
        .await;
    }
    let drained = t_delete.elapsed();
    let n = calls("ControllerUnpublishVolume").await - unpublishes;
    println!("detach backlog of {DETACHES} drained in {drained:?} ({n} ControllerUnpublish calls)");

    assert!(
        latencies[ATTACHES - 1] < ATTACH_BOUND,
        "slowest attach {:?} ≥ {ATTACH_BOUND:?}: {latencies:?}",
        latencies[ATTACHES - 1]
    );
    assert!(
        backlog >= DETACHES / 2,
        "the attaches should overtake the backlog: only {backlog} of {DETACHES} detaches were left"
    );
    assert!(
        drained >= Duration::from_secs(10),
        "the backlog should take ~20 s (200 × 1 s / 10 workers): {drained:?}"
    );

    // Cleanup: the 20 attached go too (unpublish still slow: clear the fault first).
    clear_faults().await;
    futures::stream::iter(attach_vas.iter())
        .for_each_concurrent(20, |va| {
            let vas = &w.vas;
            async move {
                vas.delete(va, &DeleteParams::default()).await.unwrap();
            }
        })
        .await;
    for va in &attach_vas {
        gone(
            "the attached VolumeAttachments to go",
            &w.vas,
            va,
            Duration::from_secs(60),
        )
        .await;
    }
    futures::stream::iter(pv_names.iter())
        .for_each_concurrent(50, |pv| {
            let pvs = &w.pvs;
            async move {
                pvs.delete(pv, &DeleteParams::default()).await.unwrap();
            }
        })
        .await;
    for pv in &pv_names {
        gone("the PVs to go", &w.pvs, pv, Duration::from_secs(60)).await;
    }
}
