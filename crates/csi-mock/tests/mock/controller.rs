//! The Identity, Controller and GroupController services over a real Unix socket.

use std::collections::HashMap;

use csi::v1 as pb;
use csi_mock::{ContentSource, Method, MockConfig};
use tonic::Code;

use crate::common::{GIB, Harness, create_req, publish_req};

#[tokio::test]
async fn identity_reports_name_capabilities_and_readiness() {
    let h = Harness::start(MockConfig {
        driver_name: "test.csi.example.com".into(),
        ..MockConfig::default()
    })
    .await;
    let mut identity = h.identity();
    let info = identity
        .get_plugin_info(pb::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "test.csi.example.com");
    let caps = identity
        .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let services: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(pb::plugin_capability::Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    use pb::plugin_capability::service::Type;
    assert_eq!(
        services,
        [
            Type::ControllerService as i32,
            Type::GroupControllerService as i32
        ]
    );
    let probe = identity
        .probe(pb::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    h.driver.set_ready(false);
    let probe = identity
        .probe(pb::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
    assert_eq!(h.driver.calls(Method::Probe), 2);
}

#[tokio::test]
async fn create_is_idempotent_and_conflicts_are_already_exists() {
    let h = Harness::start(MockConfig::default()).await;
    let mut c = h.controller();
    let first = c
        .create_volume(create_req("pvc-1", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let second = c
        .create_volume(create_req("pvc-1", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(first.volume_id, second.volume_id);
    assert_eq!(h.driver.state().volumes.len(), 1);

    let err = c
        .create_volume(create_req("pvc-1", 2 * GIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = c.create_volume(create_req("", GIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let state = h.driver.state();
    let volume = state.volume_by_name("pvc-1").unwrap();
    assert_eq!(volume.capacity_bytes, GIB);
    assert_eq!(h.driver.calls(Method::CreateVolume), 4);
}

#[tokio::test]
async fn delete_of_unknown_volume_succeeds() {
    let h = Harness::start(MockConfig::default()).await;
    let mut c = h.controller();
    c.delete_volume(pb::DeleteVolumeRequest {
        volume_id: "vol-does-not-exist".into(),
        secrets: HashMap::from([("password".into(), "hunter2".into())]),
    })
    .await
    .unwrap();
    let id = c
        .create_volume(create_req("v", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    for _ in 0..2 {
        c.delete_volume(pb::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(h.driver.state().volumes.is_empty());
}

#[tokio::test]
async fn publish_is_idempotent_and_single_node_volumes_stay_on_one_node() {
    let h = Harness::start(MockConfig::default()).await;
    let mut c = h.controller();
    let id = c
        .create_volume(create_req("v", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let first = c
        .controller_publish_volume(publish_req(&id, "node-a"))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .controller_publish_volume(publish_req(&id, "node-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.publish_context, again.publish_context);

    let err = c
        .controller_publish_volume(publish_req(&id, "node-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("node-a"), "{}", err.message());

    let state = h.driver.state();
    let publications = state.publications();
    assert_eq!(publications.len(), 1);
    assert_eq!(
        (publications[0].0, publications[0].1),
        (id.as_str(), "node-a")
    );
    assert!(!publications[0].2.readonly);

    for _ in 0..2 {
        c.controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "node-a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(h.driver.state().publications().is_empty());
    // Now the other node may have it.
    c.controller_publish_volume(publish_req(&id, "node-b"))
        .await
        .unwrap();
    let err = c
        .controller_publish_volume(publish_req("vol-missing", "node-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_volumes_pages_and_rejects_bad_tokens() {
    let h = Harness::start(MockConfig::default()).await;
    let mut c = h.controller();
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = c
            .create_volume(create_req(&format!("v{i}"), GIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }
    c.controller_publish_volume(publish_req(&ids[2], "node-a"))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_volumes(pb::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.entries.len() <= 2);
        for entry in &page.entries {
            let volume = entry.volume.as_ref().unwrap();
            let nodes = &entry.status.as_ref().unwrap().published_node_ids;
            if volume.volume_id == ids[2] {
                assert_eq!(nodes, &["node-a"]);
            } else {
                assert!(nodes.is_empty());
            }
            seen.push(volume.volume_id.clone());
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let err = c
        .list_volumes(pb::ListVolumesRequest {
            max_entries: 0,
            starting_token: "invalid-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
}

#[tokio::test]
async fn snapshots_create_list_delete_and_restore() {
    let h = Harness::start(MockConfig::default()).await;
    let mut c = h.controller();
    let source = c
        .create_volume(create_req("source", 2 * GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let snap_req = pb::CreateSnapshotRequest {
        source_volume_id: source.clone(),
        name: "snap-1".into(),
        ..Default::default()
    };
    let snap = c
        .create_snapshot(snap_req.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 2 * GIB);
    assert!(snap.creation_time.is_some());
    let again = c
        .create_snapshot(snap_req)
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);

    let listed = c
        .list_snapshots(pb::ListSnapshotsRequest {
            source_volume_id: source.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        snap.snapshot_id
    );

    let restored = c
        .create_volume(pb::CreateVolumeRequest {
            volume_content_source: Some(pb::VolumeContentSource {
                r#type: Some(pb::volume_content_source::Type::Snapshot(
                    pb::volume_content_source::SnapshotSource {
                        snapshot_id: snap.snapshot_id.clone(),
                    },
                )),
            }),
            ..create_req("restored", 0)
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(restored.content_source.is_some());
    assert_eq!(
        h.driver.state().volumes[&restored.volume_id].content_source,
        Some(ContentSource::Snapshot(snap.snapshot_id.clone()))
    );

    for _ in 0..2 {
        c.delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let listed = c
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty());
    let err = c
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn expand_grows_the_volume_and_capacity_shrinks() {
    let h = Harness::start(MockConfig {
        total_capacity: Some(10 * GIB),
        ..MockConfig::default()
    })
    .await;
    let mut c = h.controller();
    let id = c
        .create_volume(create_req("v", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let expanded = c
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 3 * GIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expanded.capacity_bytes, 3 * GIB);
    assert!(!expanded.node_expansion_required);
    assert_eq!(h.driver.state().volumes[&id].capacity_bytes, 3 * GIB);
    let capacity = c
        .get_capacity(pb::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.available_capacity, 7 * GIB);
    let err = c
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: id,
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 11 * GIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
}

#[tokio::test]
async fn group_snapshots_round_trip() {
    let h = Harness::start(MockConfig::default()).await;
    let mut c = h.controller();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        ids.push(
            c.create_volume(create_req(name, GIB))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    let mut g = h.group();
    let caps = g
        .group_controller_get_capabilities(pb::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 1);
    let group = g
        .create_volume_group_snapshot(pb::CreateVolumeGroupSnapshotRequest {
            name: "group".into(),
            source_volume_ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(group.snapshots.len(), 2);
    let fetched = g
        .get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(fetched, group);
    g.delete_volume_group_snapshot(pb::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: group.group_snapshot_id,
        ..Default::default()
    })
    .await
    .unwrap();
    let state = h.driver.state();
    assert!(state.group_snapshots.is_empty() && state.snapshots.is_empty());
}

#[tokio::test]
async fn node_service_reports_the_configured_node() {
    let h = Harness::start(MockConfig {
        node_id: "worker-1".into(),
        max_volumes_per_node: 16,
        ..MockConfig::default()
    })
    .await;
    let info = h
        .node()
        .node_get_info(pb::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "worker-1");
    assert_eq!(info.max_volumes_per_node, 16);
    assert!(info.accessible_topology.is_none());
}

#[tokio::test]
async fn required_secrets_guard_create_and_delete() {
    let h = Harness::start(MockConfig {
        required_secrets: [("user".to_string(), "admin".to_string())].into(),
        ..MockConfig::default()
    })
    .await;
    let mut c = h.controller();
    let err = c.create_volume(create_req("v", GIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("user") && !err.message().contains("admin"));
    assert!(h.driver.state().volumes.is_empty());

    let mut wrong = create_req("v", GIB);
    wrong.secrets = [("user".to_string(), "guest".to_string())].into();
    let err = c.create_volume(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut req = create_req("v", GIB);
    req.secrets = [("user".to_string(), "admin".to_string())].into();
    let id = c
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let err = c
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: id.clone(),
            secrets: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    c.delete_volume(pb::DeleteVolumeRequest {
        volume_id: id,
        secrets: [("user".to_string(), "admin".to_string())].into(),
    })
    .await
    .unwrap();
    assert!(h.driver.state().volumes.is_empty());
}

#[tokio::test]
async fn secrets_on_every_call_guard_publish_expand_and_snapshots_too() {
    let h = Harness::start(MockConfig {
        required_secrets: [("user".to_string(), "admin".to_string())].into(),
        secrets_on_every_call: true,
        ..MockConfig::default()
    })
    .await;
    let secrets: HashMap<String, String> = [("user".to_string(), "admin".to_string())].into();
    let mut c = h.controller();
    let mut req = create_req("v", GIB);
    req.secrets = secrets.clone();
    let id = c
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    let err = c
        .controller_publish_volume(publish_req(&id, "n1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut publish = publish_req(&id, "n1");
    publish.secrets = secrets.clone();
    c.controller_publish_volume(publish).await.unwrap();

    let expand = |secrets| pb::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 2 * GIB,
            limit_bytes: 0,
        }),
        secrets,
        ..Default::default()
    };
    let err = c
        .controller_expand_volume(expand(Default::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    c.controller_expand_volume(expand(secrets.clone()))
        .await
        .unwrap();

    let snapshot = |secrets| pb::CreateSnapshotRequest {
        source_volume_id: id.clone(),
        name: "s".to_string(),
        secrets,
        ..Default::default()
    };
    let err = c
        .create_snapshot(snapshot(Default::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let snap = c
        .create_snapshot(snapshot(secrets.clone()))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_id;
    let err = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: snap.clone(),
            secrets: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    c.delete_snapshot(pb::DeleteSnapshotRequest {
        snapshot_id: snap,
        secrets,
    })
    .await
    .unwrap();
}
