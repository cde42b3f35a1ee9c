//! The gRPC face of a [`MockDriver`]: tonic service implementations for Identity, Controller,
//! GroupController and Node, each call going through the same path:
//!
//! 1. count the call and take the fault that applies (see [`crate::fault`]);
//! 2. a fault not marked `after` is applied: delay, then error / hang / exit / carry on;
//! 3. the handler runs under the state lock (state persisted if it changed);
//! 4. a fault marked `after` is applied to the finished call, replacing its answer;
//! 5. a wrong-answer fault spoils a successful answer ([`Spoil`]).
//!
//! Requests are logged at debug level with their `Debug` form, which redacts secret values.
//! Delays and hangs end early when the server shuts down, so shutdown is never blocked by a fault.

use std::fmt;

use csi::v1 as pb;
use csi::v1::controller_server::Controller;
use csi::v1::group_controller_server::GroupController;
use csi::v1::identity_server::Identity;
use csi::v1::node_server::Node;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::controller::Backend;
use crate::driver::MockDriver;
use crate::fault::{Fault, Outcome, WrongAnswer, code_name};
use crate::method::Method;

/// One server's view of a driver: the driver plus the server's shutdown signal.
#[derive(Clone, Debug)]
pub(crate) struct CsiService {
    driver: MockDriver,
    shutdown: CancellationToken,
}

impl CsiService {
    pub(crate) fn new(driver: MockDriver, shutdown: CancellationToken) -> Self {
        Self { driver, shutdown }
    }

    /// Applies a fault: `Ok` means the call carries on.
    async fn apply(&self, method: Method, fault: &Fault) -> Result<(), Status> {
        tracing::info!(method = %method, fault = %fault, "injecting fault");
        if let Some(delay) = fault.delay {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("the mock driver is shutting down"));
                }
            }
        }
        match &fault.outcome {
            Outcome::Proceed => Ok(()),
            Outcome::Error { code, message } => Err(Status::new(*code, message.clone())),
            Outcome::Hang => {
                // Ends when the client cancels (tonic drops this future) or at shutdown.
                self.shutdown.cancelled().await;
                Err(Status::unavailable("the mock driver is shutting down"))
            }
            // Served normally; the answer is spoiled afterwards.
            Outcome::Wrong(_) => Ok(()),
            Outcome::Exit { code } => {
                if self.driver.exit(*code) {
                    tracing::warn!(method = %method, code, "exit hook returned");
                }
                Err(Status::unavailable(
                    "the mock driver exited (simulated crash)",
                ))
            }
        }
    }

    async fn call<Req, Resp>(
        &self,
        method: Method,
        request: Request<Req>,
        handler: impl FnOnce(&mut Backend<'_>, Req) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: fmt::Debug,
        Resp: fmt::Debug + Spoil,
    {
        let request = request.into_inner();
        tracing::debug!(method = %method, request = ?request, "CSI call");
        let fault = self.driver.begin_call(method);
        if let Some(fault) = fault.as_ref().filter(|f| !f.after) {
            self.apply(method, fault).await?;
        }
        let mut result = self
            .driver
            .handle(method, |backend| handler(backend, request));
        if let (Some(Outcome::Wrong(wrong)), Ok(response)) =
            (fault.as_ref().map(|f| &f.outcome), result.as_mut())
        {
            response.spoil(*wrong);
        }
        if let Some(fault) = fault.as_ref().filter(|f| f.after) {
            self.apply(method, fault).await?;
        }
        match &result {
            Ok(response) => {
                tracing::debug!(method = %method, response = ?response, "CSI call succeeded")
            }
            Err(status) => tracing::debug!(
                method = %method,
                code = code_name(status.code()),
                message = status.message(),
                "CSI call failed"
            ),
        }
        result.map(Response::new)
    }
}

/// An answer a [`WrongAnswer`] fault can spoil; answers with nothing to spoil keep the default.
pub(crate) trait Spoil {
    fn spoil(&mut self, _wrong: WrongAnswer) {}
}

impl Spoil for pb::CreateVolumeResponse {
    fn spoil(&mut self, wrong: WrongAnswer) {
        if let Some(v) = self.volume.as_mut() {
            match wrong {
                WrongAnswer::Smaller => v.capacity_bytes /= 2,
                WrongAnswer::NoId => v.volume_id.clear(),
            }
        }
    }
}

impl Spoil for pb::ControllerExpandVolumeResponse {
    fn spoil(&mut self, wrong: WrongAnswer) {
        if wrong == WrongAnswer::Smaller {
            self.capacity_bytes /= 2;
        }
    }
}

impl Spoil for pb::CreateSnapshotResponse {
    fn spoil(&mut self, wrong: WrongAnswer) {
        if let Some(s) = self.snapshot.as_mut() {
            match wrong {
                WrongAnswer::Smaller => s.size_bytes /= 2,
                WrongAnswer::NoId => s.snapshot_id.clear(),
            }
        }
    }
}

impl Spoil for pb::CreateVolumeGroupSnapshotResponse {
    fn spoil(&mut self, wrong: WrongAnswer) {
        if let (WrongAnswer::NoId, Some(g)) = (wrong, self.group_snapshot.as_mut()) {
            g.group_snapshot_id.clear();
        }
    }
}

/// Answers with nothing a wrong-answer fault spoils.
macro_rules! nothing_to_spoil {
    ($($resp:ident),* $(,)?) => { $(impl Spoil for pb::$resp {})* };
}

nothing_to_spoil!(
    GetPluginInfoResponse,
    GetPluginCapabilitiesResponse,
    ProbeResponse,
    DeleteVolumeResponse,
    ControllerPublishVolumeResponse,
    ControllerUnpublishVolumeResponse,
    ValidateVolumeCapabilitiesResponse,
    ListVolumesResponse,
    GetCapacityResponse,
    ControllerGetCapabilitiesResponse,
    DeleteSnapshotResponse,
    ListSnapshotsResponse,
    GetSnapshotResponse,
    ControllerGetVolumeResponse,
    ControllerModifyVolumeResponse,
    GroupControllerGetCapabilitiesResponse,
    DeleteVolumeGroupSnapshotResponse,
    GetVolumeGroupSnapshotResponse,
    NodeStageVolumeResponse,
    NodeUnstageVolumeResponse,
    NodePublishVolumeResponse,
    NodeUnpublishVolumeResponse,
    NodeGetVolumeStatsResponse,
    NodeExpandVolumeResponse,
    NodeGetCapabilitiesResponse,
    NodeGetInfoResponse,
);

/// Implements a tonic service trait by routing every method through [`CsiService::call`].
macro_rules! serve {
    ($trait:ident { $($fn:ident: $method:ident($req:ident) -> $resp:ident;)* }) => {
        #[tonic::async_trait]
        impl $trait for CsiService {
            $(
                async fn $fn(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    self.call(Method::$method, request, |b, r| b.$fn(r)).await
                }
            )*
        }
    };
}

serve!(Identity {
    get_plugin_info: GetPluginInfo(GetPluginInfoRequest) -> GetPluginInfoResponse;
    get_plugin_capabilities: GetPluginCapabilities(GetPluginCapabilitiesRequest)
        -> GetPluginCapabilitiesResponse;
    probe: Probe(ProbeRequest) -> ProbeResponse;
});

serve!(Controller {
    create_volume: CreateVolume(CreateVolumeRequest) -> CreateVolumeResponse;
    delete_volume: DeleteVolume(DeleteVolumeRequest) -> DeleteVolumeResponse;
    controller_publish_volume: ControllerPublishVolume(ControllerPublishVolumeRequest)
        -> ControllerPublishVolumeResponse;
    controller_unpublish_volume: ControllerUnpublishVolume(ControllerUnpublishVolumeRequest)
        -> ControllerUnpublishVolumeResponse;
    validate_volume_capabilities: ValidateVolumeCapabilities(ValidateVolumeCapabilitiesRequest)
        -> ValidateVolumeCapabilitiesResponse;
    list_volumes: ListVolumes(ListVolumesRequest) -> ListVolumesResponse;
    get_capacity: GetCapacity(GetCapacityRequest) -> GetCapacityResponse;
    controller_get_capabilities: ControllerGetCapabilities(ControllerGetCapabilitiesRequest)
        -> ControllerGetCapabilitiesResponse;
    create_snapshot: CreateSnapshot(CreateSnapshotRequest) -> CreateSnapshotResponse;
    delete_snapshot: DeleteSnapshot(DeleteSnapshotRequest) -> DeleteSnapshotResponse;
    list_snapshots: ListSnapshots(ListSnapshotsRequest) -> ListSnapshotsResponse;
    get_snapshot: GetSnapshot(GetSnapshotRequest) -> GetSnapshotResponse;
    controller_expand_volume: ControllerExpandVolume(ControllerExpandVolumeRequest)
        -> ControllerExpandVolumeResponse;
    controller_get_volume: ControllerGetVolume(ControllerGetVolumeRequest)
        -> ControllerGetVolumeResponse;
    controller_modify_volume: ControllerModifyVolume(ControllerModifyVolumeRequest)
        -> ControllerModifyVolumeResponse;
});

serve!(GroupController {
    group_controller_get_capabilities: GroupControllerGetCapabilities(
        GroupControllerGetCapabilitiesRequest) -> GroupControllerGetCapabilitiesResponse;
    create_volume_group_snapshot: CreateVolumeGroupSnapshot(CreateVolumeGroupSnapshotRequest)
        -> CreateVolumeGroupSnapshotResponse;
    delete_volume_group_snapshot: DeleteVolumeGroupSnapshot(DeleteVolumeGroupSnapshotRequest)
        -> DeleteVolumeGroupSnapshotResponse;
    get_volume_group_snapshot: GetVolumeGroupSnapshot(GetVolumeGroupSnapshotRequest)
        -> GetVolumeGroupSnapshotResponse;
});

serve!(Node {
    node_stage_volume: NodeStageVolume(NodeStageVolumeRequest) -> NodeStageVolumeResponse;
    node_unstage_volume: NodeUnstageVolume(NodeUnstageVolumeRequest) -> NodeUnstageVolumeResponse;
    node_publish_volume: NodePublishVolume(NodePublishVolumeRequest) -> NodePublishVolumeResponse;
    node_unpublish_volume: NodeUnpublishVolume(NodeUnpublishVolumeRequest)
        -> NodeUnpublishVolumeResponse;
    node_get_volume_stats: NodeGetVolumeStats(NodeGetVolumeStatsRequest)
        -> NodeGetVolumeStatsResponse;
    node_expand_volume: NodeExpandVolume(NodeExpandVolumeRequest) -> NodeExpandVolumeResponse;
    node_get_capabilities: NodeGetCapabilities(NodeGetCapabilitiesRequest)
        -> NodeGetCapabilitiesResponse;
    node_get_info: NodeGetInfo(NodeGetInfoRequest) -> NodeGetInfoResponse;
});

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io;
    use std::sync::{Arc, Mutex};

    use tonic::Code;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::config::MockConfig;

    const SECRET: &str = "hunter2";

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn calls_and_faults_are_logged_without_secret_values() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        let driver = MockDriver::new(MockConfig::default());
        driver.inject(
            Method::CreateVolume,
            Fault::error(Code::Unavailable, "down").once(),
        );
        let service = CsiService::new(driver.clone(), CancellationToken::new());
        let secrets = HashMap::from([("password".to_owned(), SECRET.to_owned())]);
        let create = pb::CreateVolumeRequest {
            name: "v".into(),
            volume_capabilities: vec![pb::VolumeCapability {
                access_type: Some(pb::volume_capability::AccessType::Block(
                    pb::volume_capability::BlockVolume {},
                )),
                access_mode: Some(pb::volume_capability::AccessMode {
                    mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter.into(),
                }),
            }],
            secrets: secrets.clone(),
            ..Default::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let first = Controller::create_volume(&service, Request::new(create.clone())).await;
                assert_eq!(first.unwrap_err().code(), Code::Unavailable);
                Controller::create_volume(&service, Request::new(create))
                    .await
                    .unwrap();
                Controller::delete_volume(
                    &service,
                    Request::new(pb::DeleteVolumeRequest {
                        volume_id: "vol-x".into(),
                        secrets,
                    }),
                )
                .await
                .unwrap();
            });
        });
        let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(!logs.contains(SECRET), "secret leaked: {logs}");
        assert!(logs.contains(csi::v1::STRIPPED), "{logs}");
        assert_eq!(logs.matches("CSI call method=").count(), 3, "{logs}");
        assert!(
            logs.contains("INFO") && logs.contains("injecting fault"),
            "{logs}"
        );
        assert_eq!(driver.calls(Method::CreateVolume), 2);
    }

    #[tokio::test]
    async fn a_wrong_answer_fault_spoils_the_answer_but_not_the_work() {
        let driver = MockDriver::new(MockConfig::default());
        let spec: crate::FaultSpec =
            serde_json::from_str(r#"{"method": "CreateVolume", "wrong": "no_id", "count": 1}"#)
                .unwrap();
        let (method, fault) = spec.to_rule().unwrap();
        assert_eq!(
            crate::FaultSpec::from_rule(&crate::FaultRule {
                method,
                fault: fault.clone()
            }),
            spec
        );
        driver.inject(Method::CreateVolume, fault);
        driver.inject(
            Method::CreateVolume,
            Fault::wrong(WrongAnswer::Smaller).once(),
        );
        let service = CsiService::new(driver.clone(), CancellationToken::new());
        let create = |name: &str| pb::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![pb::VolumeCapability {
                access_type: Some(pb::volume_capability::AccessType::Block(
                    pb::volume_capability::BlockVolume {},
                )),
                access_mode: Some(pb::volume_capability::AccessMode {
                    mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter.into(),
                }),
            }],
            ..Default::default()
        };
        let volume = |r: Result<Response<pb::CreateVolumeResponse>, Status>| {
            r.unwrap().into_inner().volume.unwrap()
        };
        let no_id = volume(Controller::create_volume(&service, Request::new(create("a"))).await);
        assert_eq!(no_id.volume_id, "");
        assert_eq!(no_id.capacity_bytes, 1 << 20);
        let smaller = volume(Controller::create_volume(&service, Request::new(create("b"))).await);
        assert_eq!(smaller.capacity_bytes, 1 << 19);
        let right = volume(Controller::create_volume(&service, Request::new(create("c"))).await);
        assert_eq!(right.capacity_bytes, 1 << 20);
        assert!(!right.volume_id.is_empty());
        // The driver did the work each time: three volumes of the full size.
        let state = driver.state();
        assert_eq!(state.volumes.len(), 3);
        assert!(state.volumes.values().all(|v| v.capacity_bytes == 1 << 20));
    }
}
