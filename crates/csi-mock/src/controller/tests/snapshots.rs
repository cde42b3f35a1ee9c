//! ListVolumes, snapshots and group snapshots.

use super::*;

#[test]
fn list_volumes_paginates_by_id_and_survives_deletes() {
    let mut f = Fixture::new();
    let ids: Vec<String> = (0..5)
        .map(|i| f.create_named(&format!("v{i}"), GIB).volume_id)
        .collect();
    f.publish(&ids[0], "n1", Mode::SingleNodeWriter).unwrap();
    let list = |f: &mut Fixture, max: i32, token: &str| {
        f.b().list_volumes(pb::ListVolumesRequest {
            max_entries: max,
            starting_token: token.into(),
        })
    };
    let page1 = list(&mut f, 2, "").unwrap();
    let got: Vec<&str> = page1
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.as_str())
        .collect();
    assert_eq!(got, [&ids[0], &ids[1]]);
    assert_eq!(page1.next_token, ids[1]);
    assert_eq!(
        page1.entries[0].status.as_ref().unwrap().published_node_ids,
        ["n1"]
    );
    assert_eq!(
        page1.entries[0].status.as_ref().unwrap().volume_condition,
        Some(pb::VolumeCondition {
            abnormal: false,
            message: String::new()
        })
    );

    // Deleting the token's volume does not invalidate the token.
    f.b()
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: ids[1].clone(),
            ..Default::default()
        })
        .unwrap();
    let page2 = list(&mut f, 0, &page1.next_token).unwrap();
    assert_eq!(page2.entries.len(), 3);
    assert!(page2.next_token.is_empty());
    let exact = list(&mut f, 4, "").unwrap();
    assert_eq!(exact.entries.len(), 4);
    assert!(exact.next_token.is_empty(), "no more entries: no token");

    assert_eq!(code(list(&mut f, 0, "invalid-token")), Code::Aborted);
    assert_eq!(code(list(&mut f, -1, "")), Code::InvalidArgument);

    let mut bare = Fixture::with(|c| {
        c.controller_capabilities
            .remove(&Cap::ListVolumesPublishedNodes);
        c.controller_capabilities.remove(&Cap::VolumeCondition);
    });
    bare.create_named("v", GIB);
    assert!(list(&mut bare, 0, "").unwrap().entries[0].status.is_none());
}

#[test]
fn snapshots_lifecycle_filters_and_pagination() {
    let mut f = Fixture::with(|c| c.snapshot_ready_delay = Duration::from_secs(10));
    let v1 = f.create_named("v1", GIB).volume_id;
    let v2 = f.create_named("v2", 2 * GIB).volume_id;
    assert_eq!(code(f.snapshot("", &v1)), Code::InvalidArgument);
    assert_eq!(code(f.snapshot("s", "")), Code::InvalidArgument);
    assert_eq!(code(f.snapshot("s", "vol-missing")), Code::NotFound);
    let s1 = f.snapshot("s1", &v1).unwrap();
    assert!(!s1.ready_to_use, "not ready before the delay");
    assert_eq!(f.snapshot("s1", &v1).unwrap().snapshot_id, s1.snapshot_id);
    assert_eq!(code(f.snapshot("s1", &v2)), Code::AlreadyExists);
    let s2 = f.snapshot("s2", &v2).unwrap();
    let s3 = f.snapshot("s3", &v2).unwrap();
    f.now_ms += 10_000;
    assert!(f.snapshot("s1", &v1).unwrap().ready_to_use);

    let list = |f: &mut Fixture, req: pb::ListSnapshotsRequest| {
        f.b().list_snapshots(req).map(|r| {
            (
                r.entries
                    .into_iter()
                    .map(|e| e.snapshot.unwrap().snapshot_id)
                    .collect::<Vec<_>>(),
                r.next_token,
            )
        })
    };
    let (all, _) = list(&mut f, Default::default()).unwrap();
    assert_eq!(
        all,
        [s1.snapshot_id.as_str(), &s2.snapshot_id, &s3.snapshot_id]
    );
    let (by_source, _) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            source_volume_id: v2.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_source, [s2.snapshot_id.as_str(), &s3.snapshot_id]);
    let (by_id, _) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            snapshot_id: s2.snapshot_id.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_id, [s2.snapshot_id.as_str()]);
    let (none, _) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            snapshot_id: "snap-none".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
    let (page, token) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            max_entries: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(page.len(), 2);
    let (rest, token2) = list(
        &mut f,
        pb::ListSnapshotsRequest {
            starting_token: token,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rest, [s3.snapshot_id.as_str()]);
    assert!(token2.is_empty());
    assert_eq!(
        code(list(
            &mut f,
            pb::ListSnapshotsRequest {
                starting_token: "vol-0000000001".into(),
                ..Default::default()
            }
        )),
        Code::Aborted
    );

    // GetSnapshot and DeleteSnapshot.
    let get = |f: &mut Fixture, id: &str| {
        f.b().get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        })
    };
    assert_eq!(
        get(&mut f, &s2.snapshot_id)
            .unwrap()
            .snapshot
            .unwrap()
            .size_bytes,
        2 * GIB
    );
    assert_eq!(code(get(&mut f, "none-exist-id")), Code::NotFound);
    assert_eq!(code(get(&mut f, "")), Code::InvalidArgument);
    for id in [&s2.snapshot_id, &s2.snapshot_id, &"snap-unknown".to_owned()] {
        f.b()
            .delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            })
            .unwrap();
    }
    assert_eq!(code(get(&mut f, &s2.snapshot_id)), Code::NotFound);
    assert_eq!(
        code(f.b().delete_snapshot(Default::default())),
        Code::InvalidArgument
    );
}

#[test]
fn group_snapshots() {
    let mut f = Fixture::new();
    let v1 = f.create_named("v1", GIB).volume_id;
    let v2 = f.create_named("v2", 2 * GIB).volume_id;
    let create = |f: &mut Fixture, name: &str, ids: &[&str]| {
        f.b()
            .create_volume_group_snapshot(pb::CreateVolumeGroupSnapshotRequest {
                name: name.into(),
                source_volume_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .map(|r| r.group_snapshot.unwrap())
    };
    assert_eq!(code(create(&mut f, "", &[&v1])), Code::InvalidArgument);
    assert_eq!(code(create(&mut f, "g", &[])), Code::InvalidArgument);
    assert_eq!(
        code(create(&mut f, "g", &[&v1, &v1])),
        Code::InvalidArgument
    );
    assert_eq!(code(create(&mut f, "g", &[&v1, "vol-x"])), Code::NotFound);
    let g = create(&mut f, "g", &[&v1, &v2]).unwrap();
    assert_eq!(g.snapshots.len(), 2);
    assert!(g.ready_to_use);
    assert!(
        g.snapshots
            .iter()
            .all(|s| s.group_snapshot_id == g.group_snapshot_id)
    );
    assert_eq!(g.snapshots[1].size_bytes, 2 * GIB);
    // Idempotent regardless of order; other volumes conflict.
    assert_eq!(create(&mut f, "g", &[&v2, &v1]).unwrap(), g);
    assert_eq!(code(create(&mut f, "g", &[&v1])), Code::AlreadyExists);

    // Members cannot be deleted alone; they are listed with the others.
    let member = g.snapshots[0].snapshot_id.clone();
    assert_eq!(
        code(f.b().delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: member.clone(),
            ..Default::default()
        })),
        Code::InvalidArgument
    );
    assert_eq!(
        f.b()
            .list_snapshots(Default::default())
            .unwrap()
            .entries
            .len(),
        2
    );

    let get = |f: &mut Fixture, id: &str, members: Vec<String>| {
        f.b()
            .get_volume_group_snapshot(pb::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: id.into(),
                snapshot_ids: members,
                ..Default::default()
            })
    };
    assert_eq!(
        get(&mut f, &g.group_snapshot_id, vec![])
            .unwrap()
            .group_snapshot
            .unwrap(),
        g
    );
    assert_eq!(
        code(get(&mut f, &g.group_snapshot_id, vec![member.clone()])),
        Code::InvalidArgument
    );
    assert_eq!(code(get(&mut f, "group-snap-x", vec![])), Code::NotFound);
    assert_eq!(code(get(&mut f, "", vec![])), Code::InvalidArgument);

    let delete = |f: &mut Fixture, id: &str, members: Vec<String>| {
        f.b()
            .delete_volume_group_snapshot(pb::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: id.into(),
                snapshot_ids: members,
                ..Default::default()
            })
    };
    assert_eq!(
        code(delete(&mut f, &g.group_snapshot_id, vec![member])),
        Code::InvalidArgument
    );
    let members: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    delete(&mut f, &g.group_snapshot_id, members.clone()).unwrap();
    delete(&mut f, &g.group_snapshot_id, members).unwrap();
    delete(&mut f, "group-snap-unknown", vec![]).unwrap();
    assert_eq!(code(delete(&mut f, "", vec![])), Code::InvalidArgument);
    assert!(f.state.snapshots.is_empty() && f.state.group_snapshots.is_empty());
}
