//! CSI spec v1.12 bindings (protobuf package `csi.v1`), generated at build time from
//! `proto/csi.proto`: every message, plus a client and a server for each of the five services
//! (`identity_*`, `controller_*`, `group_controller_*`, `node_*`, `snapshot_metadata_*`).
//!
//! Messages that carry a `csi_secret` field have no derived `Debug`. Their hand-written `Debug`
//! prints every field but shows the secrets map as `{"key": "***stripped***"}`: keys visible,
//! values never (the placeholder is the Go sidecars' protosanitizer text). So any request may be
//! logged with `?req`.
//!
//! # Warning
//! A secret value still lives in the message itself; only `Debug` redacts it. Never log a secrets
//! map (or a value taken out of it) on its own.

use std::collections::HashMap;
use std::fmt;

/// The `tonic`/`prost` output, kept apart so that lint allowances do not cover our own code.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all,
    unreachable_pub
)]
mod generated {
    tonic::include_proto!("csi.v1");
}

pub use generated::*;

/// What `Debug` prints in place of a secret value (the same placeholder as Go's protosanitizer).
pub const STRIPPED: &str = "***stripped***";

/// `Debug` view of a `csi_secret` map: sorted keys, each value replaced by [`STRIPPED`].
struct Stripped<'a>(&'a HashMap<String, String>);

impl fmt::Debug for Stripped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort_unstable();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, STRIPPED)))
            .finish()
    }
}

/// Picks the `Debug` view of one field: `#[secret]` fields go through [`Stripped`].
macro_rules! debug_view {
    (#[secret] $value:ident) => {
        Stripped($value)
    };
    ($value:ident) => {
        $value
    };
}

/// Implements a redacting `Debug` for messages listed in `skip_debug` in `build.rs`.
///
/// Fields are listed in proto order. The destructuring is exhaustive, so a field added to the
/// proto fails to compile here until it is listed (and marked `#[secret]` if it is one).
macro_rules! redacted_debug {
    ($($message:ident { $($(#[$marker:ident])? $field:ident),* $(,)? })*) => {$(
        impl fmt::Debug for $message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Self { $($field),* } = self;
                f.debug_struct(stringify!($message))
                    $(.field(stringify!($field), &debug_view!($(#[$marker])? $field)))*
                    .finish()
            }
        }
    )*};
}

// Keep in sync with `SECRET_MESSAGES` in build.rs (which checks it against the proto).
redacted_debug! {
    CreateVolumeRequest {
        name, capacity_range, volume_capabilities, parameters, #[secret] secrets,
        volume_content_source, accessibility_requirements, mutable_parameters,
    }
    DeleteVolumeRequest { volume_id, #[secret] secrets }
    ControllerPublishVolumeRequest {
        volume_id, node_id, volume_capability, readonly, #[secret] secrets, volume_context,
    }
    ControllerUnpublishVolumeRequest { volume_id, node_id, #[secret] secrets }
    ValidateVolumeCapabilitiesRequest {
        volume_id, volume_context, volume_capabilities, parameters, #[secret] secrets,
        mutable_parameters,
    }
    ControllerModifyVolumeRequest { volume_id, #[secret] secrets, mutable_parameters }
    CreateSnapshotRequest { source_volume_id, name, #[secret] secrets, parameters }
    DeleteSnapshotRequest { snapshot_id, #[secret] secrets }
    ListSnapshotsRequest {
        max_entries, starting_token, source_volume_id, snapshot_id, #[secret] secrets,
    }
    GetSnapshotRequest { snapshot_id, #[secret] secrets }
    ControllerExpandVolumeRequest {
        volume_id, capacity_range, #[secret] secrets, volume_capability,
    }
    NodeStageVolumeRequest {
        volume_id, publish_context, staging_target_path, volume_capability, #[secret] secrets,
        volume_context,
    }
    NodePublishVolumeRequest {
        volume_id, publish_context, staging_target_path, target_path, volume_capability,
        readonly, #[secret] secrets, volume_context,
    }
    NodeExpandVolumeRequest {
        volume_id, volume_path, capacity_range, staging_target_path, volume_capability,
        #[secret] secrets,
    }
    CreateVolumeGroupSnapshotRequest { name, source_volume_ids, #[secret] secrets, parameters }
    DeleteVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids, #[secret] secrets }
    GetVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids, #[secret] secrets }
    GetMetadataAllocatedRequest {
        snapshot_id, starting_offset, max_results, #[secret] secrets,
    }
    GetMetadataDeltaRequest {
        base_snapshot_id, target_snapshot_id, starting_offset, max_results, #[secret] secrets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const SECRET_VALUE: &str = "hunter2";

    fn secrets() -> HashMap<String, String> {
        HashMap::from([
            ("password".to_owned(), SECRET_VALUE.to_owned()),
            ("username".to_owned(), "admin-hunter2".to_owned()),
        ])
    }

    fn mount_capability() -> VolumeCapability {
        VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    fs_type: "ext4".to_owned(),
                    mount_flags: vec!["noatime".to_owned()],
                    volume_mount_group: String::new(),
                },
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter.into(),
            }),
        }
    }

    fn assert_redacted(debug: &str) {
        assert!(!debug.contains(SECRET_VALUE), "secret leaked: {debug}");
        assert!(debug.contains(r#""password": "***stripped***""#), "{debug}");
        assert!(debug.contains(r#""username": "***stripped***""#), "{debug}");
    }

    #[test]
    fn create_volume_request_debug_strips_secret_values_only() {
        let req = CreateVolumeRequest {
            name: "pvc-1234".to_owned(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability()],
            parameters: HashMap::from([("type".to_owned(), "gp3".to_owned())]),
            secrets: secrets(),
            ..Default::default()
        };
        let debug = format!("{req:?}");
        assert_redacted(&debug);
        assert!(debug.starts_with("CreateVolumeRequest {"), "{debug}");
        for visible in [
            "pvc-1234",
            "1073741824",
            "ext4",
            "noatime",
            "\"type\": \"gp3\"",
        ] {
            assert!(debug.contains(visible), "{visible} missing from {debug}");
        }
        // The alternate form must redact too.
        assert_redacted(&format!("{req:#?}"));
    }

    #[test]
    fn controller_publish_volume_request_debug_strips_secret_values_only() {
        let req = ControllerPublishVolumeRequest {
            volume_id: "vol-1".to_owned(),
            node_id: "node-a".to_owned(),
            volume_capability: Some(mount_capability()),
            readonly: true,
            secrets: secrets(),
            volume_context: HashMap::from([("zone".to_owned(), "eu-1".to_owned())]),
        };
        let debug = format!("{req:?}");
        assert_redacted(&debug);
        for visible in ["vol-1", "node-a", "readonly: true", "ext4", "eu-1"] {
            assert!(debug.contains(visible), "{visible} missing from {debug}");
        }
    }

    #[test]
    fn node_stage_volume_request_debug_strips_secret_values_only() {
        let req = NodeStageVolumeRequest {
            volume_id: "vol-2".to_owned(),
            publish_context: HashMap::from([("device".to_owned(), "/dev/xvdf".to_owned())]),
            staging_target_path: "/var/lib/kubelet/staging".to_owned(),
            volume_capability: Some(mount_capability()),
            secrets: secrets(),
            volume_context: HashMap::new(),
        };
        let debug = format!("{req:?}");
        assert_redacted(&debug);
        for visible in ["vol-2", "/dev/xvdf", "/var/lib/kubelet/staging", "ext4"] {
            assert!(debug.contains(visible), "{visible} missing from {debug}");
        }
    }

    #[test]
    fn every_secret_message_debug_strips_secret_values() {
        macro_rules! check {
            ($($message:ident),* $(,)?) => {$(
                let req = $message { secrets: secrets(), ..Default::default() };
                let debug = format!("{req:?}");
                assert!(debug.starts_with(stringify!($message)), "{debug}");
                assert_redacted(&debug);
            )*};
        }
        check!(
            CreateVolumeRequest,
            DeleteVolumeRequest,
            ControllerPublishVolumeRequest,
            ControllerUnpublishVolumeRequest,
            ValidateVolumeCapabilitiesRequest,
            ControllerModifyVolumeRequest,
            CreateSnapshotRequest,
            DeleteSnapshotRequest,
            ListSnapshotsRequest,
            GetSnapshotRequest,
            ControllerExpandVolumeRequest,
            NodeStageVolumeRequest,
            NodePublishVolumeRequest,
            NodeExpandVolumeRequest,
            CreateVolumeGroupSnapshotRequest,
            DeleteVolumeGroupSnapshotRequest,
            GetVolumeGroupSnapshotRequest,
            GetMetadataAllocatedRequest,
            GetMetadataDeltaRequest,
        );
    }

    #[test]
    fn secrets_map_debug_lists_keys_in_order() {
        let debug = format!(
            "{:?}",
            DeleteVolumeRequest {
                volume_id: "v".to_owned(),
                secrets: secrets(),
            }
        );
        assert_eq!(
            debug,
            r#"DeleteVolumeRequest { volume_id: "v", secrets: {"password": "***stripped***", "username": "***stripped***"} }"#
        );
    }

    #[test]
    fn create_volume_request_round_trips_through_prost() {
        let req = CreateVolumeRequest {
            name: "pvc-1234".to_owned(),
            capacity_range: Some(CapacityRange {
                required_bytes: 5 << 30,
                limit_bytes: 10 << 30,
            }),
            volume_capabilities: vec![
                mount_capability(),
                VolumeCapability {
                    access_type: Some(volume_capability::AccessType::Block(
                        volume_capability::BlockVolume {},
                    )),
                    access_mode: Some(volume_capability::AccessMode {
                        mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter.into(),
                    }),
                },
            ],
            parameters: HashMap::from([("type".to_owned(), "gp3".to_owned())]),
            secrets: secrets(),
            volume_content_source: Some(VolumeContentSource {
                r#type: Some(volume_content_source::Type::Snapshot(
                    volume_content_source::SnapshotSource {
                        snapshot_id: "snap-1".to_owned(),
                    },
                )),
            }),
            accessibility_requirements: Some(TopologyRequirement {
                requisite: vec![Topology {
                    segments: HashMap::from([("zone".to_owned(), "a".to_owned())]),
                }],
                preferred: vec![],
            }),
            mutable_parameters: HashMap::from([("iops".to_owned(), "3000".to_owned())]),
        };
        let bytes = req.encode_to_vec();
        let decoded = CreateVolumeRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, req);
    }

    #[test]
    fn wire_encoding_uses_spec_field_numbers() {
        // DeleteVolumeRequest: volume_id = 1 (string), secrets = 2 (map entry: key = 1, value = 2).
        let req = DeleteVolumeRequest {
            volume_id: "v".to_owned(),
            secrets: HashMap::from([("k".to_owned(), "s".to_owned())]),
        };
        let expected = [
            0x0a, 0x01, b'v', // field 1, length-delimited, "v"
            0x12, 0x06, // field 2, length-delimited, 6-byte map entry
            0x0a, 0x01, b'k', 0x12, 0x01, b's',
        ];
        assert_eq!(req.encode_to_vec(), expected);

        // NodePublishVolumeRequest: readonly = 6 (varint).
        let req = NodePublishVolumeRequest {
            readonly: true,
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), [0x30, 0x01]);

        // ControllerServiceCapability.rpc = 1 -> RPC.type = 1 (enum); GET_SNAPSHOT = 15.
        let cap = ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc {
                    r#type: controller_service_capability::rpc::Type::GetSnapshot.into(),
                },
            )),
        };
        assert_eq!(cap.encode_to_vec(), [0x0a, 0x02, 0x08, 0x0f]);
    }

    #[test]
    fn all_five_services_are_generated() {
        use tonic::transport::Channel;

        assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");
        assert_eq!(controller_server::SERVICE_NAME, "csi.v1.Controller");
        assert_eq!(
            group_controller_server::SERVICE_NAME,
            "csi.v1.GroupController"
        );
        assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");
        assert_eq!(
            snapshot_metadata_server::SERVICE_NAME,
            "csi.v1.SnapshotMetadata"
        );

        // Compile-time check: a client type exists for each service.
        fn exists<T>() {}
        exists::<identity_client::IdentityClient<Channel>>();
        exists::<controller_client::ControllerClient<Channel>>();
        exists::<group_controller_client::GroupControllerClient<Channel>>();
        exists::<node_client::NodeClient<Channel>>();
        exists::<snapshot_metadata_client::SnapshotMetadataClient<Channel>>();
    }
}
