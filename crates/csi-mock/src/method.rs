//! The RPCs the mock serves, as one enum: the key of fault rules and call counters.
//!
//! A [`Method`] is written as its gRPC method name (`CreateVolume`, `NodeGetInfo`, ...) in logs,
//! in the control API's JSON and in fault specs; parsing also accepts the full path
//! (`/csi.v1.Controller/CreateVolume`) and ignores ASCII case.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines [`Method`] with its service and method names in one table.
macro_rules! methods {
    ($($variant:ident => $service:literal),* $(,)?) => {
        /// One RPC of the Identity, Controller, GroupController or Node service.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Method {
            $(
                #[doc = concat!("`/csi.v1.", $service, "/", stringify!($variant), "`")]
                $variant,
            )*
        }

        impl Method {
            /// Every method, in service order.
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            /// The gRPC method name, e.g. `CreateVolume`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Method::$variant => stringify!($variant),)*
                }
            }

            /// The gRPC service the method belongs to, e.g. `Controller`.
            pub const fn service(self) -> &'static str {
                match self {
                    $(Method::$variant => $service,)*
                }
            }
        }
    };
}

methods! {
    GetPluginInfo => "Identity",
    GetPluginCapabilities => "Identity",
    Probe => "Identity",
    CreateVolume => "Controller",
    DeleteVolume => "Controller",
    ControllerPublishVolume => "Controller",
    ControllerUnpublishVolume => "Controller",
    ValidateVolumeCapabilities => "Controller",
    ListVolumes => "Controller",
    GetCapacity => "Controller",
    ControllerGetCapabilities => "Controller",
    CreateSnapshot => "Controller",
    DeleteSnapshot => "Controller",
    ListSnapshots => "Controller",
    GetSnapshot => "Controller",
    ControllerExpandVolume => "Controller",
    ControllerGetVolume => "Controller",
    ControllerModifyVolume => "Controller",
    GroupControllerGetCapabilities => "GroupController",
    CreateVolumeGroupSnapshot => "GroupController",
    DeleteVolumeGroupSnapshot => "GroupController",
    GetVolumeGroupSnapshot => "GroupController",
    NodeStageVolume => "Node",
    NodeUnstageVolume => "Node",
    NodePublishVolume => "Node",
    NodeUnpublishVolume => "Node",
    NodeGetVolumeStats => "Node",
    NodeExpandVolume => "Node",
    NodeGetCapabilities => "Node",
    NodeGetInfo => "Node",
}

impl Method {
    /// Whether a successful call may change [`MockState`](crate::MockState) (and so is followed
    /// by a write of the state file).
    pub const fn is_mutating(self) -> bool {
        matches!(
            self,
            Method::CreateVolume
                | Method::DeleteVolume
                | Method::ControllerPublishVolume
                | Method::ControllerUnpublishVolume
                | Method::CreateSnapshot
                | Method::DeleteSnapshot
                | Method::ControllerExpandVolume
                | Method::ControllerModifyVolume
                | Method::CreateVolumeGroupSnapshot
                | Method::DeleteVolumeGroupSnapshot
                | Method::NodeStageVolume
                | Method::NodeUnstageVolume
                | Method::NodePublishVolume
                | Method::NodeUnpublishVolume
        )
    }

    /// The full gRPC path, e.g. `/csi.v1.Controller/CreateVolume`.
    pub fn path(self) -> String {
        format!("/csi.v1.{}/{}", self.service(), self.as_str())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Method`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CSI method {0:?} (expected a gRPC method name such as CreateVolume)")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Accept `/csi.v1.Controller/CreateVolume` as well as `CreateVolume`.
        let name = s.rsplit('/').next().unwrap_or(s).trim();
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownMethod(s.to_owned()))
    }
}

impl Serialize for Method {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), *m);
            assert_eq!(m.path().parse::<Method>().unwrap(), *m);
        }
        assert_eq!(Method::ALL.len(), 30);
    }

    #[test]
    fn parsing_ignores_case_and_rejects_unknown_names() {
        assert_eq!(
            "createvolume".parse::<Method>().unwrap(),
            Method::CreateVolume
        );
        assert_eq!(
            "/csi.v1.Controller/ControllerPublishVolume"
                .parse::<Method>()
                .unwrap(),
            Method::ControllerPublishVolume
        );
        assert!("CreateVolumes".parse::<Method>().is_err());
        assert!("".parse::<Method>().is_err());
    }

    #[test]
    fn path_names_the_service() {
        assert_eq!(
            Method::CreateVolumeGroupSnapshot.path(),
            "/csi.v1.GroupController/CreateVolumeGroupSnapshot"
        );
        assert_eq!(Method::Probe.path(), "/csi.v1.Identity/Probe");
    }
}
