//! csi-mock: an in-memory CSI driver (Identity, Controller, GroupController and a bookkeeping
//! Node service, spec v1.12) with fault injection, for tests, benchmarks and demos.
//!
//! It behaves as the spec asks a real driver to: idempotent by name, NOT_FOUND / ALREADY_EXISTS /
//! OUT_OF_RANGE / FAILED_PRECONDITION / RESOURCE_EXHAUSTED / ABORTED where the per-RPC error
//! tables say so, INVALID_ARGUMENT for missing required fields, UNIMPLEMENTED for RPCs whose
//! capability is disabled. Capacity is accounted against a pool, volumes are placed in zones when
//! topology is on, publications follow the access-mode rules and the node attach limit.
//!
//! # Use from tests
//! - [`MockDriver`] holds configuration ([`MockConfig`]), state ([`MockState`]), the fault queue
//!   and call counters; clones share them. [`MockDriver::inject`] queues a [`Fault`] for a
//!   [`Method`] (precedence: see [`fault`]), [`MockDriver::state`] returns a copy of the state,
//!   [`MockDriver::calls`] the number of calls of a method.
//! - [`MockServer::start`] serves a driver on `unix:///path` or `tcp://host:port`;
//!   [`MockServer::shutdown`] stops it and removes the socket.
//! - [`control::router`] / [`ControlServer`] expose the same over HTTP JSON (the binary's
//!   `--control-endpoint`).
//!
//! With [`MockConfig::state_file`] set, the state is written after every change and loaded at
//! start, so a restarted mock keeps its volumes, snapshots and publications.
//!
//! # Warning
//! Requests are logged at debug level through their `Debug` form, which the `csi` crate redacts;
//! never log a secrets map from a request directly.

pub mod config;
pub mod control;
mod controller;
mod driver;
pub mod error;
pub mod fault;
mod identity;
pub mod method;
mod node;
pub mod server;
mod service;
pub mod state;

pub use config::{ControllerCapability, MockConfig, TopologyConfig};
pub use control::ControlServer;
pub use driver::{ExitHook, MockDriver};
pub use error::MockError;
pub use fault::{Fault, FaultRule, FaultSpec, Outcome, WrongAnswer};
pub use method::Method;
pub use server::MockServer;
pub use state::{
    AccessType, ContentSource, GroupSnapshotRecord, MockState, Publication, SnapshotRecord,
    VolumeHealth, VolumeRecord,
};

/// csi-mock served on a socket in its own temporary directory, with a connected client and the
/// driver's discovery: the start of every controller's component tests.
#[derive(Debug)]
pub struct TestDriver {
    /// The driver, to inject faults and read its state.
    pub driver: MockDriver,
    /// A client of it.
    pub client: csi::CsiClient,
    /// What the client discovered.
    pub discovery: std::sync::Arc<csi::Discovery>,
    /// The driver's name.
    pub name: String,
    /// The server; it stops when dropped.
    pub server: MockServer,
    /// The socket's directory, removed when dropped.
    pub dir: tempfile::TempDir,
}

impl TestDriver {
    /// Serves a driver with `config` and connects to it.
    pub async fn start(config: MockConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let endpoint = format!("unix://{}", dir.path().join("csi.sock").display());
        let driver = MockDriver::new(config);
        let name = driver.config().driver_name;
        let server = MockServer::start(&endpoint, driver.clone())
            .await
            .expect("csi-mock serves");
        let client = csi::CsiClient::connect(
            csi::CsiEndpoint::parse(&endpoint).expect("an endpoint"),
            std::time::Duration::from_secs(5),
            csi::CsiMetrics::default(),
        )
        .expect("a CSI client");
        let discovery = std::sync::Arc::new(client.discover().await.expect("discovery"));
        Self {
            driver,
            client,
            discovery,
            name,
            server,
            dir,
        }
    }
}

/// Creates a 1 GiB single-node-writer mount volume named `name` through `csi` (any driver, this
/// one in tests) and returns its ID: the seed most controller tests start from.
pub async fn create_volume(csi: &csi::CsiClient, name: &str) -> String {
    use csi::v1::{self, volume_capability};
    csi.create_volume(v1::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(v1::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![v1::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }],
        ..Default::default()
    })
    .await
    .expect("CreateVolume")
    .volume
    .expect("a volume in the answer")
    .volume_id
}
