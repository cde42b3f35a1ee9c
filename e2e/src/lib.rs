//! Helpers of the end-to-end suite: the cluster's kubeconfig and clients, unique names, polling.
//!
//! The suite runs against the local control plane (`e2e/cluster up`) or any cluster, found through
//! `KUBECONFIG` (exported by `e2e/run-tests`). Tests are compiled only with the `cluster` feature.

use std::future::Future;
use std::time::{Duration, Instant};

pub mod churn;
pub mod state;

/// API clients for the cluster under test (`KUBECONFIG`); panics with a clear message without one.
pub async fn clients() -> controller_kit::kubeclient::Clients {
    let path = std::env::var_os("KUBECONFIG")
        .expect("KUBECONFIG must point at the cluster under test (e2e/cluster up writes one)");
    controller_kit::kubeclient::clients(Some(std::path::Path::new(&path)), 100.0, 200)
        .await
        .expect("a client for the cluster under test")
}

/// A name unique to this test run: `prefix-<8 hex>`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..8])
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `timeout` until the object `name` of `api` is gone from the API server.
pub async fn until_gone<K>(api: &kube::Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{} {name} to be gone", K::kind(&()));
    eventually(&what, timeout, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// A binary of this workspace (`csi-controller-manager`, `csi-mock`), built next to the test
/// executable (`target/<profile>/`); the environment variable `env_override` wins if set.
pub fn workspace_binary(name: &str, env_override: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p ...), or set {env_override}",
        path.display()
    );
    path
}

/// A StorageClass of `driver`: Immediate binding, the given reclaim policy and parameters.
pub fn storage_class(
    name: &str,
    driver: &str,
    reclaim_policy: &str,
    parameters: std::collections::BTreeMap<String, String>,
) -> k8s_openapi::api::storage::v1::StorageClass {
    k8s_openapi::api::storage::v1::StorageClass {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        provisioner: driver.into(),
        parameters: Some(parameters),
        reclaim_policy: Some(reclaim_policy.into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    }
}

/// A VolumeSnapshot `name` of claim `claim`, in `class` (the default class when `None`).
pub fn volume_snapshot(
    name: &str,
    claim: &str,
    class: Option<&str>,
) -> snapshotter::types::VolumeSnapshot {
    use snapshotter::types::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec};
    VolumeSnapshot {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(claim.into()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: class.map(str::to_string),
        },
        status: None,
    }
}

/// A VolumeAttachment `name` by `attacher` of PV `pv` to `node`, as kube-controller-manager's
/// attach/detach controller makes them.
pub fn volume_attachment(
    name: &str,
    attacher: &str,
    node: &str,
    pv: &str,
) -> k8s_openapi::api::storage::v1::VolumeAttachment {
    use k8s_openapi::api::storage::v1::{
        VolumeAttachment, VolumeAttachmentSource, VolumeAttachmentSpec,
    };
    VolumeAttachment {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: VolumeAttachmentSpec {
            attacher: attacher.to_string(),
            node_name: node.to_string(),
            source: VolumeAttachmentSource {
                persistent_volume_name: Some(pv.to_string()),
                ..Default::default()
            },
        },
        status: None,
    }
}

/// A ReadWriteOnce claim of `size` (a Kubernetes quantity) in `class`.
pub fn claim(
    name: &str,
    class: &str,
    size: &str,
) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    k8s_openapi::api::core::v1::PersistentVolumeClaim {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(std::collections::BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A csi-controller-manager process of a test's own, restarted at will (`--kubeconfig` comes
/// from `KUBECONFIG`). Its output goes to `log` (appended, one header per start).
#[derive(Debug)]
pub struct ManagerProcess {
    /// The binary.
    pub bin: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its log file.
    pub log: std::path::PathBuf,
    child: Option<tokio::process::Child>,
    /// How many times it was started.
    pub starts: u32,
    /// Exits nobody asked for, found at [`ManagerProcess::kill`].
    pub unexpected_exits: Vec<String>,
    /// Environment variables set for the process, on top of the test's.
    pub env: Vec<(String, String)>,
}

impl ManagerProcess {
    /// A manager for `endpoint` with `args` on top; logs under `$E2E_DIR/logs` (or the temp dir).
    /// With `OURS_KUBECONFIG` set (`e2e/cluster rbac`), and no `--kubeconfig` in `args`, it runs
    /// with that kubeconfig: as a ServiceAccount holding only upstream's roles and our documented
    /// additions.
    pub fn new(name: &str, endpoint: &str, args: &[&str]) -> Self {
        let mut all = vec!["--csi-address".to_string(), endpoint.to_string()];
        if let Ok(kubeconfig) = std::env::var("OURS_KUBECONFIG")
            && !kubeconfig.is_empty()
            && !args.iter().any(|a| a.starts_with("--kubeconfig"))
        {
            all.extend(["--kubeconfig".to_string(), kubeconfig]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        Self::other(
            &format!("{name}-manager"),
            workspace_binary("csi-controller-manager", "OURS_BIN"),
            all,
        )
    }

    /// Any other process (e.g. an upstream sidecar), handled the same way; its log is
    /// `<name>.log` under `$E2E_DIR/logs` (or the temp dir).
    pub fn other(name: &str, bin: std::path::PathBuf, args: Vec<String>) -> Self {
        let log_dir = std::env::var_os("E2E_DIR")
            .map(|d| std::path::PathBuf::from(d).join("logs"))
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&log_dir).expect("the log directory");
        Self {
            bin,
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
            unexpected_exits: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts the process.
    pub fn start(&mut self) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the manager's log file");
        writeln!(log, "==== start {}", self.starts).expect("the manager's log file");
        let child = tokio::process::Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("the manager's log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("csi-controller-manager starts");
        self.child = Some(child);
        self.starts += 1;
    }

    /// Kills the process and starts it again with `args` and `env` added.
    pub async fn restart_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.kill().await;
        self.args.extend(args.iter().map(|a| a.to_string()));
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.start();
    }

    /// SIGTERM, then waits up to `within` for the process to exit (SIGKILL after that); returns
    /// whether it exited by itself in time.
    pub async fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.unexpected_exits
                .push(format!("start {} exited by itself: {status}", self.starts));
            return true;
        }
        if let Some(pid) = child.id() {
            let sent = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .is_ok_and(|s| s.success());
            assert!(sent, "SIGTERM to {pid}");
        }
        match tokio::time::timeout(within, child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                let _ = child.kill().await;
                false
            }
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the process runs (started and not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, after noting whether the process had already exited on its own.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(status)) = child.try_wait() {
                self.unexpected_exits
                    .push(format!("start {} exited by itself: {status}", self.starts));
            }
            let _ = child.kill().await;
        }
    }
}

/// A test's own CSI driver (csi-mock in this process, under a unique driver name), its own
/// csi-controller-manager, and a namespace: isolated from the cluster's driver and controllers
/// and from other tests.
pub struct OwnDriver {
    /// Unique name: the namespace, and the prefix of the driver name.
    pub name: String,
    /// The CSI driver name.
    pub driver_name: String,
    /// The driver, to inject faults and read its state.
    pub driver: csi_mock::MockDriver,
    /// `unix://…` of the driver.
    pub endpoint: String,
    /// The manager.
    pub manager: ManagerProcess,
    server: std::sync::Mutex<Option<csi_mock::MockServer>>,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for OwnDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnDriver")
            .field("driver_name", &self.driver_name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl OwnDriver {
    /// Starts the driver (`configure` adjusts its config), creates the namespace, and starts a
    /// manager with `manager_args`.
    pub async fn start(
        prefix: &str,
        configure: impl FnOnce(&mut csi_mock::MockConfig),
        manager_args: &[&str],
    ) -> Self {
        let mut own = Self::prepare(prefix, configure, manager_args).await;
        own.manager.start();
        own
    }

    /// [`OwnDriver::start`] without starting the manager (`manager.start()` does, later).
    pub async fn prepare(
        prefix: &str,
        configure: impl FnOnce(&mut csi_mock::MockConfig),
        manager_args: &[&str],
    ) -> Self {
        let name = unique(prefix);
        let driver_name = format!("{name}.csi.controller-manager.io");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut config = csi_mock::MockConfig {
            driver_name: driver_name.clone(),
            ..Default::default()
        };
        configure(&mut config);
        let driver = csi_mock::MockDriver::new(config);
        let endpoint = format!("unix://{}", dir.join("csi.sock").display());
        let server = csi_mock::MockServer::start(&endpoint, driver.clone())
            .await
            .expect("csi-mock serves");
        let c = clients().await;
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(c.main.clone());
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&Default::default(), &ns)
            .await
            .expect("create the test namespace");
        let manager = ManagerProcess::new(&name, &endpoint, manager_args);
        Self {
            name,
            driver_name,
            driver,
            endpoint,
            manager,
            server: std::sync::Mutex::new(Some(server)),
            dir,
        }
    }

    /// Creates StorageClass `name` of this driver (Delete, Immediate, expandable) with
    /// `parameters`; returns its name.
    pub async fn create_class(
        &self,
        name: &str,
        parameters: std::collections::BTreeMap<String, String>,
    ) -> String {
        let mut class = storage_class(name, &self.driver_name, "Delete", parameters);
        class.allow_volume_expansion = Some(true);
        let classes: kube::Api<k8s_openapi::api::storage::v1::StorageClass> =
            kube::Api::all(clients().await.main.clone());
        classes
            .create(&Default::default(), &class)
            .await
            .expect("create the StorageClass");
        name.to_string()
    }

    /// Stops the manager and the driver, deletes the namespace.
    pub async fn stop(mut self) {
        self.manager.kill().await;
        let c = clients().await;
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(c.main.clone());
        let _ = namespaces.delete(&self.name, &Default::default()).await;
        let server = self.server.lock().expect("the server slot").take();
        if let Some(server) = server {
            let _ = server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Stops the driver's server (calls in flight fail, the socket goes away), waits `down`,
    /// and serves again on the same socket with the same state: a driver restarted with
    /// persistent storage.
    pub async fn restart_driver(&self, down: Duration) {
        let server = self.server.lock().expect("the server slot").take();
        if let Some(server) = server {
            server.shutdown().await.expect("csi-mock stops");
        }
        tokio::time::sleep(down).await;
        let server = csi_mock::MockServer::start(&self.endpoint, self.driver.clone())
            .await
            .expect("csi-mock serves again");
        *self.server.lock().expect("the server slot") = Some(server);
    }
}

/// A pod that uses claim `claim` as volume `data`, tolerating every taint (kwok nodes are
/// tainted), on `node` if given, else wherever kube-scheduler puts it among the kwok nodes.
pub fn pod_using(name: &str, claim: &str, node: Option<&str>) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::{
        Container, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Toleration, Volume,
    };
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(Into::into),
            node_selector: node
                .is_none()
                .then(|| [("type".to_string(), "kwok".to_string())].into()),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: "app".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An environment variable the suite needs (from `e2e/cluster env` and the run dir's driver.env).
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (source the run dir's driver.env)"))
}

/// A CSI client for the cluster's driver (`CSI_SOCKET`).
pub fn cluster_csi() -> csi::CsiClient {
    let endpoint = csi::CsiEndpoint::parse(&env("CSI_SOCKET")).expect("CSI_SOCKET is an endpoint");
    csi::CsiClient::connect(
        endpoint,
        std::time::Duration::from_secs(10),
        csi::CsiMetrics::default(),
    )
    .expect("a CSI client")
}

/// A single-node-writer mount capability.
pub fn rwo() -> csi::v1::VolumeCapability {
    use csi::v1::volume_capability::{AccessMode, AccessType, access_mode::Mode};
    csi::v1::VolumeCapability {
        access_type: Some(AccessType::Mount(Default::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// The volume names with a recorded intent in `driver`'s provisioner journal (the managers the
/// tests start run in `$POD_NAMESPACE`, else `default`); empty if there is no journal.
pub async fn journal_entries(client: &kube::Client, driver: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let ns = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &ns);
    api.get_opt(&provisioner::journal::object_name(driver))
        .await
        .expect("read the intent journal")
        .and_then(|c| c.data)
        .map(|d| d.into_keys().collect())
        .unwrap_or_default()
}

/// The cluster's kwok nodes, labelled with a topology key of a test's own and registered for its
/// driver in their CSINodes (see [`mark_nodes`]).
#[derive(Debug)]
pub struct NodeMarks {
    /// The topology key.
    pub key: String,
    /// Each node and its zone.
    pub zones: Vec<(String, String)>,
    driver: String,
}

/// Labels every kwok node `i` with `key` = `zone_of(i)` and lists `driver` with that key in its
/// CSINode. Undo with [`NodeMarks::remove`].
pub async fn mark_nodes(driver: &str, key: &str, zone_of: impl Fn(usize) -> String) -> NodeMarks {
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::api::storage::v1::CSINode;
    use kube::api::{ListParams, Patch, PatchParams, PostParams};
    let c = clients().await;
    let nodes: kube::Api<Node> = kube::Api::all(c.main.clone());
    let csinodes: kube::Api<CSINode> = kube::Api::all(c.main.clone());
    let names: Vec<String> = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(!names.is_empty(), "the cluster has kwok nodes");
    let mut zones = Vec::new();
    for (i, node) in names.into_iter().enumerate() {
        let zone = zone_of(i);
        let labels = serde_json::json!({"metadata": {"labels": {key: zone}}});
        nodes
            .patch(&node, &PatchParams::default(), &Patch::Strategic(&labels))
            .await
            .expect("label the node");
        let entry = serde_json::json!({"name": driver, "nodeID": node, "topologyKeys": [key]});
        if csinodes
            .get_opt(&node)
            .await
            .expect("get CSINode")
            .is_some()
        {
            let patch = serde_json::json!({"spec": {"drivers": [entry]}});
            csinodes
                .patch(&node, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .expect("register the driver in the CSINode");
        } else {
            let csinode: CSINode = serde_json::from_value(
                serde_json::json!({"metadata": {"name": node}, "spec": {"drivers": [entry]}}),
            )
            .expect("a CSINode");
            csinodes
                .create(&PostParams::default(), &csinode)
                .await
                .expect("create the CSINode");
        }
        zones.push((node, zone));
    }
    NodeMarks {
        key: key.to_string(),
        zones,
        driver: driver.to_string(),
    }
}

impl NodeMarks {
    /// The zone of `node`.
    pub fn zone_of(&self, node: &str) -> &str {
        self.zones
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, z)| z.as_str())
            .expect("a marked node")
    }

    /// Removes the labels and the CSINode entries again.
    pub async fn remove(&self) {
        use k8s_openapi::api::core::v1::Node;
        use k8s_openapi::api::storage::v1::CSINode;
        use kube::api::{Patch, PatchParams};
        let c = clients().await;
        let nodes: kube::Api<Node> = kube::Api::all(c.main.clone());
        let csinodes: kube::Api<CSINode> = kube::Api::all(c.main.clone());
        for (node, _) in &self.zones {
            let labels = serde_json::json!({"metadata": {"labels": {self.key.as_str(): null}}});
            let _ = nodes
                .patch(node, &PatchParams::default(), &Patch::Strategic(&labels))
                .await;
            let entry = serde_json::json!({"spec": {"drivers": [{"name": self.driver, "$patch": "delete"}]}});
            let _ = csinodes
                .patch(node, &PatchParams::default(), &Patch::Strategic(&entry))
                .await;
        }
    }
}

/// How many kwok nodes the cluster has.
pub async fn kwok_node_count() -> usize {
    let c = clients().await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.main.clone());
    nodes
        .list(&kube::api::ListParams::default().labels("type=kwok"))
        .await
        .expect("list nodes")
        .items
        .len()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The body of `GET http://127.0.0.1:<port><path>` (HTTP/1.0, enough for our metrics endpoint).
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP endpoint");
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Under upstream's RBAC (`OURS_KUBECONFIG`, see `e2e/cluster rbac`), grants the manager in
/// namespace `ns` what a deployment there would have: copies of upstream's namespaced provisioner
/// Role (`external-provisioner-cfg`: Leases, CSIStorageCapacities, Pods, ReplicaSets) and of our
/// journal Role (`csi-controller-manager-journal`, e2e/rbac/additions.yaml), bound to the
/// manager's ServiceAccount. Without `OURS_KUBECONFIG`, nothing.
pub async fn grant_upstream_namespace_role(ns: &str) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
    if !std::env::var("OURS_KUBECONFIG").is_ok_and(|k| !k.is_empty()) {
        return;
    }
    let c = clients().await;
    let applied: kube::Api<Role> = kube::Api::namespaced(c.main.clone(), "default");
    let roles: kube::Api<Role> = kube::Api::namespaced(c.main.clone(), ns);
    let bindings: kube::Api<RoleBinding> = kube::Api::namespaced(c.main.clone(), ns);
    for name in ["external-provisioner-cfg", "csi-controller-manager-journal"] {
        let mut role = applied
            .get(name)
            .await
            .expect("the Role, applied by e2e/cluster rbac");
        role.metadata = kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        };
        roles
            .create(&Default::default(), &role)
            .await
            .expect("copy the Role");
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("csi-controller-manager-{name}")),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "csi-controller-manager".into(),
                namespace: Some("default".into()),
                ..Default::default()
            }]),
        };
        bindings
            .create(&Default::default(), &binding)
            .await
            .expect("bind the Role");
    }
}
