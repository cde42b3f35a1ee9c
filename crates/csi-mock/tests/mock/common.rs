//! Shared helpers: a mock served on a Unix socket in a temporary directory, and request builders.

use std::time::Duration;

use csi::v1 as pb;
use csi::v1::controller_client::ControllerClient;
use csi::v1::group_controller_client::GroupControllerClient;
use csi::v1::identity_client::IdentityClient;
use csi::v1::node_client::NodeClient;
use csi::v1::volume_capability::access_mode::Mode;
use csi_mock::{MockConfig, MockDriver, MockServer};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

pub const GIB: i64 = 1 << 30;

/// A driver served on `<tempdir>/csi.sock`, with a connected channel.
pub struct Harness {
    /// Holds the socket's directory until the test ends.
    _dir: TempDir,
    pub driver: MockDriver,
    pub server: MockServer,
    pub channel: Channel,
}

impl Harness {
    pub async fn start(config: MockConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = MockDriver::new(config);
        let endpoint = format!("unix://{}", dir.path().join("csi.sock").display());
        let server = MockServer::start(&endpoint, driver.clone())
            .await
            .expect("server starts");
        let channel = connect(server.endpoint()).await;
        Self {
            _dir: dir,
            driver,
            server,
            channel,
        }
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    pub fn group(&self) -> GroupControllerClient<Channel> {
        GroupControllerClient::new(self.channel.clone())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }
}

/// Connects to `unix:///path` or `tcp://host:port`.
pub async fn connect(endpoint: &str) -> Channel {
    let uri = match endpoint.strip_prefix("tcp://") {
        Some(hostport) => format!("http://{hostport}"),
        None => endpoint.to_owned(),
    };
    Endpoint::from_shared(uri)
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connects")
}

pub fn mount(mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode.into() }),
    }
}

pub fn create_req(name: &str, bytes: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount(Mode::SingleNodeWriter)],
        ..Default::default()
    }
}

pub fn publish_req(volume_id: &str, node_id: &str) -> pb::ControllerPublishVolumeRequest {
    pb::ControllerPublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: node_id.into(),
        volume_capability: Some(mount(Mode::SingleNodeWriter)),
        ..Default::default()
    }
}
