//! The CSI client: one lazily connected gRPC channel to the driver, a timeout on every call,
//! metrics on every call, and discovery of what the driver can do.
//!
//! # Connection lifecycle
//! [`CsiClient::connect`] never touches the socket; the channel connects on first use and again
//! after the connection breaks (a driver restart costs the one call that was in flight when it
//! died, which fails as UNAVAILABLE, an in-flight error). [`DriverWatch`] runs discovery until the
//! driver answers, logging that it is waiting, then keeps probing so that readiness tracks the
//! driver and discovery is repeated after every outage.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::endpoint::CsiEndpoint;
use crate::error::{CsiError, code_name};
use crate::metrics::CsiMetrics;
use crate::v1;
use crate::v1::controller_service_capability::rpc::Type as ControllerCapability;
use crate::v1::group_controller_service_capability::rpc::Type as GroupControllerCapability;
use crate::v1::plugin_capability::service::Type as PluginService;

/// How often a ready driver is probed, and how often an absent one is retried at most.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Back-off while waiting for the driver; capped low so that we are ready within a second or two
/// of the driver appearing.
const WAIT_BACKOFF_START: Duration = Duration::from_millis(100);
const WAIT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often "waiting for CSI driver" is repeated in the log while the driver stays away.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// A connected driver as the controllers see it: the client and what discovery learnt of it.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The client of the driver's socket.
    pub client: CsiClient,
    /// The driver's name and capabilities.
    pub discovery: std::sync::Arc<Discovery>,
}

/// What discovery learnt of the driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The driver's name from GetPluginInfo, e.g. `hostpath.csi.k8s.io`.
    pub driver_name: String,
    /// The driver's vendor version from GetPluginInfo.
    pub vendor_version: String,
    /// Plugin (Identity) service capabilities.
    pub plugin_services: BTreeSet<i32>,
    /// Controller service capabilities; empty when the driver has no Controller service.
    pub controller: BTreeSet<i32>,
    /// GroupController service capabilities; empty when the driver has none.
    pub group_controller: BTreeSet<i32>,
    /// Node service capabilities as the controller's socket answers them; asked only when the
    /// Controller service cannot expand volumes (upstream's resizer then looks for node-only
    /// expansion). Empty when not asked, or when the socket has no Node service.
    pub node: BTreeSet<i32>,
}

impl Discovery {
    /// Whether the driver offers a plugin service (CONTROLLER_SERVICE, …).
    pub fn has_plugin_service(&self, service: PluginService) -> bool {
        self.plugin_services.contains(&(service as i32))
    }

    /// Whether the driver's Controller service has this capability.
    pub fn has_controller(&self, capability: ControllerCapability) -> bool {
        self.controller.contains(&(capability as i32))
    }

    /// Whether the Node service on the controller's socket has this capability (see
    /// [`Discovery::node`]).
    pub fn has_node(&self, capability: v1::node_service_capability::rpc::Type) -> bool {
        self.node.contains(&(capability as i32))
    }

    /// Whether the driver's GroupController service has this capability.
    pub fn has_group_controller(&self, capability: GroupControllerCapability) -> bool {
        self.group_controller.contains(&(capability as i32))
    }
}

/// A client of one CSI driver. Cheap to clone: clones share the channel and metrics.
#[derive(Clone, Debug)]
pub struct CsiClient {
    endpoint: CsiEndpoint,
    channel: Channel,
    timeout: Duration,
    metrics: CsiMetrics,
}

macro_rules! rpcs {
    ($( $(#[$doc:meta])* $module:ident :: $client:ident :: $method:ident ($service:literal, $name:literal, $req:ty) -> $resp:ty; )*) => {
        $(
            $(#[$doc])*
            pub async fn $method(&self, request: $req) -> Result<$resp, CsiError> {
                const METHOD: &str = concat!("/csi.v1.", $service, "/", $name);
                let mut client = v1::$module::$client::new(self.channel.clone());
                let request = self.request(request);
                self.call(METHOD, async move { client.$method(request).await }).await
            }
        )*
    };
}

impl CsiClient {
    /// Creates a client for `endpoint`. Nothing is dialled until the first call, so this succeeds
    /// whether or not the driver is running.
    pub fn connect(
        endpoint: CsiEndpoint,
        timeout: Duration,
        metrics: CsiMetrics,
    ) -> Result<Self, CsiError> {
        let channel = match &endpoint {
            CsiEndpoint::Unix(path) => {
                let path = path.clone();
                // The URI is required by tonic but unused: the connector dials the socket.
                Endpoint::from_static("http://csi.invalid")
                    .connect_timeout(timeout)
                    .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
            }
            CsiEndpoint::Tcp(hostport) => Endpoint::from_shared(format!("http://{hostport}"))
                .map_err(|e| CsiError::InvalidEndpoint {
                    address: endpoint.to_string(),
                    reason: e.to_string(),
                })?
                .connect_timeout(timeout)
                .connect_lazy(),
        };
        Ok(Self {
            endpoint,
            channel,
            timeout,
            metrics,
        })
    }

    /// The endpoint this client dials.
    pub fn endpoint(&self) -> &CsiEndpoint {
        &self.endpoint
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The metrics this client records into.
    pub fn metrics(&self) -> &CsiMetrics {
        &self.metrics
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Tells the driver our deadline; we also enforce it locally in `call`.
        request.set_timeout(self.timeout);
        request
    }

    async fn call<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CsiError> {
        let started = Instant::now();
        let (result, code) = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => (Ok(response.into_inner()), "OK"),
            // tonic enforces the grpc-timeout we send and reports it as CANCELLED; it is our
            // deadline all the same, reported as Go's clients report a context deadline.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled && started.elapsed() >= self.timeout =>
            {
                let error = CsiError::Timeout {
                    method,
                    timeout: self.timeout,
                };
                (Err(error), "DeadlineExceeded")
            }
            Ok(Err(status)) => {
                let status = transport_failure_as_unavailable(status);
                let code = code_name(status.code());
                let error = CsiError::Status {
                    method,
                    status: Box::new(status),
                };
                (Err(error), code)
            }
            Err(_) => {
                let error = CsiError::Timeout {
                    method,
                    timeout: self.timeout,
                };
                (Err(error), "DeadlineExceeded")
            }
        };
        self.metrics.observe(method, code, started.elapsed());
        result
    }

    rpcs! {
        /// Identity.GetPluginInfo.
        identity_client::IdentityClient::get_plugin_info("Identity", "GetPluginInfo", v1::GetPluginInfoRequest) -> v1::GetPluginInfoResponse;
        /// Identity.GetPluginCapabilities.
        identity_client::IdentityClient::get_plugin_capabilities("Identity", "GetPluginCapabilities", v1::GetPluginCapabilitiesRequest) -> v1::GetPluginCapabilitiesResponse;
        /// Identity.Probe.
        identity_client::IdentityClient::probe("Identity", "Probe", v1::ProbeRequest) -> v1::ProbeResponse;
        /// Controller.CreateVolume.
        controller_client::ControllerClient::create_volume("Controller", "CreateVolume", v1::CreateVolumeRequest) -> v1::CreateVolumeResponse;
        /// Controller.DeleteVolume.
        controller_client::ControllerClient::delete_volume("Controller", "DeleteVolume", v1::DeleteVolumeRequest) -> v1::DeleteVolumeResponse;
        /// Controller.ControllerPublishVolume.
        controller_client::ControllerClient::controller_publish_volume("Controller", "ControllerPublishVolume", v1::ControllerPublishVolumeRequest) -> v1::ControllerPublishVolumeResponse;
        /// Controller.ControllerUnpublishVolume.
        controller_client::ControllerClient::controller_unpublish_volume("Controller", "ControllerUnpublishVolume", v1::ControllerUnpublishVolumeRequest) -> v1::ControllerUnpublishVolumeResponse;
        /// Controller.ValidateVolumeCapabilities.
        controller_client::ControllerClient::validate_volume_capabilities("Controller", "ValidateVolumeCapabilities", v1::ValidateVolumeCapabilitiesRequest) -> v1::ValidateVolumeCapabilitiesResponse;
        /// Controller.ListVolumes.
        controller_client::ControllerClient::list_volumes("Controller", "ListVolumes", v1::ListVolumesRequest) -> v1::ListVolumesResponse;
        /// Controller.GetCapacity.
        controller_client::ControllerClient::get_capacity("Controller", "GetCapacity", v1::GetCapacityRequest) -> v1::GetCapacityResponse;
        /// Controller.ControllerGetCapabilities.
        controller_client::ControllerClient::controller_get_capabilities("Controller", "ControllerGetCapabilities", v1::ControllerGetCapabilitiesRequest) -> v1::ControllerGetCapabilitiesResponse;
        /// Controller.CreateSnapshot.
        controller_client::ControllerClient::create_snapshot("Controller", "CreateSnapshot", v1::CreateSnapshotRequest) -> v1::CreateSnapshotResponse;
        /// Controller.DeleteSnapshot.
        controller_client::ControllerClient::delete_snapshot("Controller", "DeleteSnapshot", v1::DeleteSnapshotRequest) -> v1::DeleteSnapshotResponse;
        /// Controller.ListSnapshots.
        controller_client::ControllerClient::list_snapshots("Controller", "ListSnapshots", v1::ListSnapshotsRequest) -> v1::ListSnapshotsResponse;
        /// Controller.ControllerExpandVolume.
        controller_client::ControllerClient::controller_expand_volume("Controller", "ControllerExpandVolume", v1::ControllerExpandVolumeRequest) -> v1::ControllerExpandVolumeResponse;
        /// Controller.ControllerGetVolume.
        controller_client::ControllerClient::controller_get_volume("Controller", "ControllerGetVolume", v1::ControllerGetVolumeRequest) -> v1::ControllerGetVolumeResponse;
        /// Controller.ControllerModifyVolume.
        controller_client::ControllerClient::controller_modify_volume("Controller", "ControllerModifyVolume", v1::ControllerModifyVolumeRequest) -> v1::ControllerModifyVolumeResponse;
        /// Node.NodeGetCapabilities (on the controller's socket: whether a driver without
        /// controller expansion expands on the node, as upstream's resizer asks).
        node_client::NodeClient::node_get_capabilities("Node", "NodeGetCapabilities", v1::NodeGetCapabilitiesRequest) -> v1::NodeGetCapabilitiesResponse;
        /// Node.NodeGetInfo (the provisioner's node deployment asks its node's topology).
        node_client::NodeClient::node_get_info("Node", "NodeGetInfo", v1::NodeGetInfoRequest) -> v1::NodeGetInfoResponse;
        /// GroupController.GroupControllerGetCapabilities.
        group_controller_client::GroupControllerClient::group_controller_get_capabilities("GroupController", "GroupControllerGetCapabilities", v1::GroupControllerGetCapabilitiesRequest) -> v1::GroupControllerGetCapabilitiesResponse;
        /// GroupController.CreateVolumeGroupSnapshot.
        group_controller_client::GroupControllerClient::create_volume_group_snapshot("GroupController", "CreateVolumeGroupSnapshot", v1::CreateVolumeGroupSnapshotRequest) -> v1::CreateVolumeGroupSnapshotResponse;
        /// GroupController.DeleteVolumeGroupSnapshot.
        group_controller_client::GroupControllerClient::delete_volume_group_snapshot("GroupController", "DeleteVolumeGroupSnapshot", v1::DeleteVolumeGroupSnapshotRequest) -> v1::DeleteVolumeGroupSnapshotResponse;
        /// GroupController.GetVolumeGroupSnapshot.
        group_controller_client::GroupControllerClient::get_volume_group_snapshot("GroupController", "GetVolumeGroupSnapshot", v1::GetVolumeGroupSnapshotRequest) -> v1::GetVolumeGroupSnapshotResponse;
    }

    /// Asks the driver who it is and what it can do: GetPluginInfo, GetPluginCapabilities, Probe,
    /// then ControllerGetCapabilities and GroupControllerGetCapabilities when offered. Fails unless
    /// the driver is ready.
    pub async fn discover(&self) -> Result<Discovery, CsiError> {
        let info = self.get_plugin_info(v1::GetPluginInfoRequest {}).await?;
        if info.name.is_empty() {
            return Err(CsiError::InvalidResponse {
                method: "/csi.v1.Identity/GetPluginInfo",
                reason: "the driver name is empty".into(),
            });
        }
        self.metrics.set_driver_name(&info.name);

        let plugin = self
            .get_plugin_capabilities(v1::GetPluginCapabilitiesRequest {})
            .await?;
        let plugin_services: BTreeSet<i32> = plugin
            .capabilities
            .iter()
            .filter_map(|c| match &c.r#type {
                Some(v1::plugin_capability::Type::Service(s)) => Some(s.r#type),
                _ => None,
            })
            .collect();

        let probe = self.probe(v1::ProbeRequest {}).await?;
        // An absent `ready` means ready (CSI spec, Probe).
        if probe.ready == Some(false) {
            return Err(CsiError::InvalidResponse {
                method: "/csi.v1.Identity/Probe",
                reason: "the driver says it is not ready yet".into(),
            });
        }

        let mut discovery = Discovery {
            driver_name: info.name,
            vendor_version: info.vendor_version,
            plugin_services,
            ..Discovery::default()
        };
        if discovery.has_plugin_service(PluginService::ControllerService) {
            let caps = self
                .controller_get_capabilities(v1::ControllerGetCapabilitiesRequest {})
                .await?;
            discovery.controller = caps
                .capabilities
                .iter()
                .filter_map(|c| match &c.r#type {
                    Some(v1::controller_service_capability::Type::Rpc(rpc)) => Some(rpc.r#type),
                    _ => None,
                })
                .collect();
        }
        if !discovery.has_controller(ControllerCapability::ExpandVolume) {
            // Node-only expansion (upstream's trivial resizer). A socket without a Node service
            // answers UNIMPLEMENTED: no node capabilities.
            match self
                .node_get_capabilities(v1::NodeGetCapabilitiesRequest {})
                .await
            {
                Ok(caps) => {
                    discovery.node = caps
                        .capabilities
                        .iter()
                        .filter_map(|c| match &c.r#type {
                            Some(v1::node_service_capability::Type::Rpc(rpc)) => Some(rpc.r#type),
                            _ => None,
                        })
                        .collect();
                }
                Err(error) => {
                    tracing::debug!(%error, "no node capabilities on the controller's socket");
                }
            }
        }
        if discovery.has_plugin_service(PluginService::GroupControllerService) {
            let caps = self
                .group_controller_get_capabilities(v1::GroupControllerGetCapabilitiesRequest {})
                .await?;
            discovery.group_controller = caps
                .capabilities
                .iter()
                .filter_map(|c| match &c.r#type {
                    Some(v1::group_controller_service_capability::Type::Rpc(rpc)) => {
                        Some(rpc.r#type)
                    }
                    _ => None,
                })
                .collect();
        }
        Ok(discovery)
    }

    /// Runs [`discover`](Self::discover) until it succeeds, logging "waiting for CSI driver at …"
    /// at start and every few seconds after, retrying with a short capped back-off.
    pub async fn wait_for_driver(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Discovery, CsiError> {
        let mut delay = WAIT_BACKOFF_START;
        let mut last_log: Option<Instant> = None;
        loop {
            match self.discover().await {
                Ok(discovery) => {
                    tracing::info!(
                        endpoint = %self.endpoint,
                        driver = %discovery.driver_name,
                        version = %discovery.vendor_version,
                        "CSI driver is ready"
                    );
                    return Ok(discovery);
                }
                Err(error) => {
                    if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                        tracing::info!(endpoint = %self.endpoint, %error, "waiting for CSI driver at {}", self.endpoint);
                        last_log = Some(Instant::now());
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(CsiError::Cancelled),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(WAIT_BACKOFF_MAX);
        }
    }
}

/// tonic reports a broken or refused connection as UNKNOWN with the local error as its source; a
/// status the driver sent has no source. A failed connection says nothing about the operation, so
/// it must not read as a final answer: like Go's gRPC, report it as UNAVAILABLE (in flight).
fn transport_failure_as_unavailable(status: tonic::Status) -> tonic::Status {
    let Some(source) = std::error::Error::source(&status) else {
        return status;
    };
    if status.code() != tonic::Code::Unknown {
        return status;
    }
    let mut detail = source.to_string();
    let mut next = source.source();
    while let Some(cause) = next {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        next = cause.source();
    }
    tonic::Status::unavailable(format!("connection to the CSI driver failed: {detail}"))
}

/// What [`DriverWatch`] knows of the driver right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    /// The driver has never answered yet.
    Waiting,
    /// The driver answered the last probe.
    Ready(Arc<Discovery>),
    /// The driver answered once but not the last probe; what it said then is kept.
    Lost(Arc<Discovery>),
}

/// A background task that discovers the driver, then keeps probing it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DriverWatch {
    state: watch::Receiver<ProbeState>,
}

impl DriverWatch {
    /// Starts the watch; it ends when `shutdown` is cancelled.
    pub fn spawn(client: CsiClient, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(ProbeState::Waiting);
        tokio::spawn(async move {
            loop {
                let Ok(discovery) = client.wait_for_driver(&shutdown).await else {
                    return;
                };
                let discovery = Arc::new(discovery);
                if let ProbeState::Lost(old) = &*tx.borrow()
                    && old.driver_name != discovery.driver_name
                {
                    tracing::error!(old = %old.driver_name, new = %discovery.driver_name, "the CSI driver changed its name; objects of the old name are no longer served");
                }
                tx.send_replace(ProbeState::Ready(discovery.clone()));
                // Probe until it fails, then go back to waiting (and re-discover).
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(PROBE_INTERVAL) => {}
                    }
                    match client.probe(v1::ProbeRequest {}).await {
                        Ok(p) if p.ready != Some(false) => {}
                        Ok(_) => {
                            tracing::warn!(endpoint = %client.endpoint, "CSI driver reports not ready");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(endpoint = %client.endpoint, %error, "lost the CSI driver");
                            break;
                        }
                    }
                }
                tx.send_replace(ProbeState::Lost(discovery));
            }
        });
        Self { state: rx }
    }

    /// True while the driver answers.
    pub fn is_ready(&self) -> bool {
        matches!(*self.state.borrow(), ProbeState::Ready(_))
    }

    /// The current state.
    pub fn state(&self) -> ProbeState {
        self.state.borrow().clone()
    }

    /// Waits until the driver has been discovered once and returns what was learnt; `None` if the
    /// watch ended (shutdown) first.
    pub async fn discovered(&self) -> Option<Arc<Discovery>> {
        let mut rx = self.state.clone();
        loop {
            if let ProbeState::Ready(d) | ProbeState::Lost(d) = &*rx.borrow_and_update() {
                return Some(d.clone());
            }
            rx.changed().await.ok()?;
        }
    }
}
