//! The Identity RPCs: plugin name and version, plugin capabilities, readiness.

use csi::v1 as pb;
use csi::v1::plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
use tonic::Status;

use crate::config::ControllerCapability as Cap;
use crate::controller::Backend;

impl Backend<'_> {
    /// GetPluginInfo: the configured name and vendor version.
    pub fn get_plugin_info(
        &mut self,
        _req: pb::GetPluginInfoRequest,
    ) -> Result<pb::GetPluginInfoResponse, Status> {
        Ok(pb::GetPluginInfoResponse {
            name: self.config.driver_name.clone(),
            vendor_version: self.config.vendor_version.clone(),
            manifest: [("implementation".to_owned(), "csi-mock".to_owned())].into(),
        })
    }

    /// GetPluginCapabilities: CONTROLLER_SERVICE; VOLUME_ACCESSIBILITY_CONSTRAINTS with topology;
    /// GROUP_CONTROLLER_SERVICE when enabled; ONLINE or OFFLINE expansion with EXPAND_VOLUME.
    pub fn get_plugin_capabilities(
        &mut self,
        _req: pb::GetPluginCapabilitiesRequest,
    ) -> Result<pb::GetPluginCapabilitiesResponse, Status> {
        let service = |t: service::Type| pb::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t.into() })),
        };
        let mut capabilities = vec![service(service::Type::ControllerService)];
        if self.config.topology.is_some() {
            capabilities.push(service(service::Type::VolumeAccessibilityConstraints));
        }
        if self.config.group_controller {
            capabilities.push(service(service::Type::GroupControllerService));
        }
        if self.config.has(Cap::ExpandVolume) {
            let kind = if self.config.online_expansion {
                volume_expansion::Type::Online
            } else {
                volume_expansion::Type::Offline
            };
            capabilities.push(pb::PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                    r#type: kind.into(),
                })),
            });
        }
        Ok(pb::GetPluginCapabilitiesResponse { capabilities })
    }

    /// Probe: `ready` as set with [`MockDriver::set_ready`](crate::MockDriver::set_ready).
    pub fn probe(&mut self, _req: pb::ProbeRequest) -> Result<pb::ProbeResponse, Status> {
        Ok(pb::ProbeResponse {
            ready: Some(self.ready),
        })
    }
}
