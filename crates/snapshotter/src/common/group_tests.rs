use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

fn t(s: i64) -> Time {
    Time(jiff::Timestamp::from_second(s).unwrap())
}

fn vgs() -> VolumeGroupSnapshot {
    VolumeGroupSnapshot {
        metadata: ObjectMeta {
            name: Some("g".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: VolumeGroupSnapshotSpec {
            source: VolumeGroupSnapshotSource {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "db".to_string())].into()),
                    ..Default::default()
                }),
                volume_group_snapshot_content_name: None,
            },
            volume_group_snapshot_class_name: Some("gc".into()),
        },
        status: None,
    }
}

fn class(policy: DeletionPolicy) -> VolumeGroupSnapshotClass {
    VolumeGroupSnapshotClass {
        metadata: ObjectMeta {
            name: Some("gc".into()),
            ..Default::default()
        },
        driver: "d".into(),
        parameters: None,
        deletion_policy: policy,
    }
}

fn dynamic_content(g: &VolumeGroupSnapshot, policy: DeletionPolicy) -> VolumeGroupSnapshotContent {
    new_content(&GroupContentInput {
        vgs: g,
        class: &class(policy),
        volume_handles: vec!["v1".into(), "v2".into()],
        secret: None,
    })
}

fn facts<'a>(
    g: &'a VolumeGroupSnapshot,
    content: Option<&'a VolumeGroupSnapshotContent>,
    members_complete: bool,
) -> GroupFacts<'a> {
    GroupFacts {
        vgs: g,
        content,
        members_complete,
        members: Vec::new(),
        restoring_member: None,
    }
}

fn reported(c: &mut VolumeGroupSnapshotContent, ready: bool) {
    c.status = Some(VolumeGroupSnapshotContentStatus {
        volume_group_snapshot_handle: Some("group-1".into()),
        creation_time: Some(t(100)),
        ready_to_use: Some(ready),
        error: None,
        volume_snapshot_info_list: Some(vec![VolumeSnapshotInfo {
            volume_handle: Some("v1".into()),
            snapshot_handle: Some("s1".into()),
            creation_time: Some(100_000_000_000),
            ready_to_use: Some(ready),
            restore_size: Some(1024),
        }]),
    });
}

#[test]
fn exactly_one_source_is_required() {
    let mut g = vgs();
    g.spec.source.volume_group_snapshot_content_name = Some("x".into());
    match live_step(&facts(&g, None, false)) {
        GroupStep::Fail(f) => assert_eq!(f.reason, REASON_GROUP_VALIDATION),
        other => panic!("{other:?}"),
    }
    g.spec.source = VolumeGroupSnapshotSource::default();
    assert!(matches!(
        live_step(&facts(&g, None, false)),
        GroupStep::Fail(_)
    ));
}

#[test]
fn a_dynamic_group_is_created_bound_protected_then_made_ready_after_its_members() {
    let mut g = vgs();
    assert_eq!(live_step(&facts(&g, None, false)), GroupStep::CreateContent);
    let mut c = dynamic_content(&g, DeletionPolicy::Delete);
    assert_eq!(c.name(), "groupsnapcontent-u1");
    assert_eq!(c.volume_handles(), ["v1", "v2"]);
    assert_eq!(c.spec.volume_group_snapshot_ref.uid.as_deref(), Some("u1"));
    // The content's creation binds the status at once (not ready).
    let GroupStep::UpdateStatus(update) = live_step(&facts(&g, Some(&c), false)) else {
        panic!("a status");
    };
    assert_eq!(
        update
            .status
            .bound_volume_group_snapshot_content_name
            .as_deref(),
        Some("groupsnapcontent-u1")
    );
    assert_eq!(update.status.ready_to_use, Some(false));
    assert!(!update.created && !update.ready);
    g.status = Some(update.status);
    // Bound: the finalizer, whatever the policy.
    assert_eq!(
        live_step(&facts(&g, Some(&c), false)),
        GroupStep::AddFinalizer
    );
    g.metadata.finalizers = Some(vec![FIN_GROUP_BOUND.into()]);
    assert_eq!(live_step(&facts(&g, Some(&c), false)), GroupStep::Done);
    // The driver reports the group: members first, then the status.
    reported(&mut c, true);
    assert_eq!(
        live_step(&facts(&g, Some(&c), false)),
        GroupStep::CreateMembers
    );
    let GroupStep::UpdateStatus(update) = live_step(&facts(&g, Some(&c), true)) else {
        panic!("a status");
    };
    assert!(update.created && update.ready);
    assert_eq!(update.status.creation_time, Some(t(100)));
    g.status = Some(update.status);
    assert_eq!(live_step(&facts(&g, Some(&c), true)), GroupStep::Done);
    // A ready group whose content vanished is reported once, not retried.
    match live_step(&facts(&g, None, true)) {
        GroupStep::Fail(f) => {
            assert_eq!(f.reason, REASON_GROUP_CONTENT_MISSING);
            assert!(!f.retry);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dynamic_group_refuses_a_foreign_or_pre_provisioned_content() {
    let g = vgs();
    let mut c = dynamic_content(&g, DeletionPolicy::Delete);
    c.spec.volume_group_snapshot_ref.uid = Some("other".into());
    match live_step(&facts(&g, Some(&c), false)) {
        GroupStep::Fail(f) => assert_eq!(f.reason, REASON_GROUP_CONTENT_MISBOUND),
        other => panic!("{other:?}"),
    }
    c.spec.source = VolumeGroupSnapshotContentSource {
        volume_handles: None,
        group_snapshot_handles: Some(GroupSnapshotHandles::default()),
    };
    match live_step(&facts(&g, Some(&c), false)) {
        GroupStep::Fail(f) => assert_eq!(f.reason, REASON_GROUP_CONTENT_MISMATCH),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pre_provisioned_group_binds_its_content_then_follows_it() {
    let mut g = vgs();
    g.spec.source = VolumeGroupSnapshotSource {
        selector: None,
        volume_group_snapshot_content_name: Some("imported".into()),
    };
    match live_step(&facts(&g, None, false)) {
        GroupStep::Fail(f) => assert_eq!(f.reason, REASON_GROUP_CONTENT_MISSING),
        other => panic!("{other:?}"),
    }
    let mut c = VolumeGroupSnapshotContent {
        metadata: ObjectMeta {
            name: Some("imported".into()),
            ..Default::default()
        },
        spec: VolumeGroupSnapshotContentSpec {
            volume_group_snapshot_ref: ObjectReference {
                name: Some("g".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            driver: "d".into(),
            source: VolumeGroupSnapshotContentSource {
                volume_handles: None,
                group_snapshot_handles: Some(GroupSnapshotHandles {
                    volume_group_snapshot_handle: "g9".into(),
                    volume_snapshot_handles: vec!["a".into()],
                }),
            },
            ..Default::default()
        },
        status: None,
    };
    assert_eq!(
        live_step(&facts(&g, Some(&c), false)),
        GroupStep::BindContent {
            content: "imported".into(),
            uid: "u1".into(),
            class: Some("gc".into())
        }
    );
    c.spec.volume_group_snapshot_ref.uid = Some("u1".into());
    c.spec.volume_group_snapshot_class_name = Some("gc".into());
    assert!(matches!(
        live_step(&facts(&g, Some(&c), false)),
        GroupStep::UpdateStatus(_)
    ));
    // A content bound to another group snapshot of the same name is refused.
    c.spec.volume_group_snapshot_ref.uid = Some("u0".into());
    match live_step(&facts(&g, Some(&c), false)) {
        GroupStep::Fail(f) => assert_eq!(f.reason, REASON_GROUP_CONTENT_MISBOUND),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deletion_marks_deletes_the_content_and_members_then_waits_for_the_content() {
    let mut g = vgs();
    g.metadata.deletion_timestamp = Some(t(1));
    assert_eq!(
        deletion_step(&facts(&g, None, true)),
        GroupStep::Done,
        "no finalizer: nothing"
    );
    g.metadata.finalizers = Some(vec![FIN_GROUP_BOUND.into()]);
    g.status = Some(VolumeGroupSnapshotStatus {
        bound_volume_group_snapshot_content_name: Some("groupsnapcontent-u1".into()),
        ..Default::default()
    });
    let mut c = dynamic_content(&g, DeletionPolicy::Delete);
    let mut f = facts(&g, Some(&c), true);
    f.restoring_member = Some("ns/snapshot-x".into());
    assert!(matches!(deletion_step(&f), GroupStep::DeletePending { .. }));
    assert_eq!(
        deletion_step(&facts(&g, Some(&c), true)),
        GroupStep::MarkContentBeingDeleted {
            content: "groupsnapcontent-u1".into()
        }
    );
    c.metadata.annotations = Some([(ANN_GROUP_BEING_DELETED.to_string(), YES.to_string())].into());
    assert_eq!(
        deletion_step(&facts(&g, Some(&c), true)),
        GroupStep::DeleteContent {
            content: "groupsnapcontent-u1".into()
        }
    );
    c.metadata.deletion_timestamp = Some(t(2));
    let member = member_snapshot(&g, "v1", None);
    let mut f = facts(&g, Some(&c), true);
    f.members = vec![&member];
    assert_eq!(
        deletion_step(&f),
        GroupStep::DeleteMembers {
            names: vec![member.metadata.name.clone().unwrap()]
        }
    );
    // Policy Delete: the finalizer stays until the content is gone.
    assert_eq!(deletion_step(&facts(&g, Some(&c), true)), GroupStep::Done);
    assert_eq!(
        deletion_step(&facts(&g, None, true)),
        GroupStep::RemoveFinalizer
    );
    // Retain: released once the content is marked.
    let mut kept = dynamic_content(&g, DeletionPolicy::Retain);
    kept.metadata.annotations = c.metadata.annotations.clone();
    assert_eq!(
        deletion_step(&facts(&g, Some(&kept), true)),
        GroupStep::RemoveFinalizer
    );
}

#[test]
fn members_are_upstreams_objects() {
    let g = vgs();
    let mut c = dynamic_content(&g, DeletionPolicy::Delete);
    reported(&mut c, false);
    let secret = SecretRef {
        name: "s".into(),
        namespace: "sn".into(),
    };
    let source = MemberSource {
        claim: "data-0".into(),
        volume_mode: Some("Filesystem".into()),
    };
    let vsc = member_content(&g, &c, "v1", Some(&source), Some(&secret));
    let vs = member_snapshot(&g, "v1", Some(&source));
    let (snapshot, content) = params::member_names("u1", "v1");
    assert_eq!(vsc.metadata.name.as_deref(), Some(content.as_str()));
    assert_eq!(vs.metadata.name.as_deref(), Some(snapshot.as_str()));
    let ann = vsc.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[ANN_GROUP_SNAPSHOT_HANDLE], "group-1");
    assert_eq!(ann[ANN_SECRET_NAME], "s");
    assert_eq!(vsc.spec.volume_snapshot_class_name, None);
    assert_eq!(
        vsc.spec.volume_snapshot_ref.name.as_deref(),
        Some(snapshot.as_str())
    );
    assert_eq!(vsc.spec.source_volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(
        vs.spec.source.persistent_volume_claim_name.as_deref(),
        Some("data-0")
    );
    assert!(super::super::plan::is_group_member(&vs));
    assert!(is_member_of(&vs, "g"));
    assert_eq!(
        vs.metadata.finalizers,
        Some(vec![FIN_SNAPSHOT_IN_GROUP.to_string()])
    );
    // Without its PV the member takes an empty claim, as upstream.
    let orphan = member_snapshot(&g, "v1", None);
    assert_eq!(
        orphan.spec.source.persistent_volume_claim_name.as_deref(),
        Some("")
    );
    let status = member_content_status(&c.members()[0], &c);
    assert_eq!(status.snapshot_handle.as_deref(), Some("s1"));
    assert_eq!(
        status.volume_group_snapshot_handle.as_deref(),
        Some("group-1")
    );
    assert_eq!(status.restore_size, Some(1024));
    // Complete only when bound both ways with the handle.
    let mut vs = vs;
    vs.metadata.uid = Some("m1".into());
    let mut vsc = vsc;
    assert!(!member_complete(Some(&vs), Some(&vsc)));
    vsc.spec.volume_snapshot_ref.uid = Some("m1".into());
    vs.status = Some(VolumeSnapshotStatus {
        bound_volume_snapshot_content_name: vsc.metadata.name.clone(),
        ..Default::default()
    });
    assert!(!member_complete(Some(&vs), Some(&vsc)));
    vsc.status = Some(status);
    assert!(member_complete(Some(&vs), Some(&vsc)));
}

#[test]
fn a_group_content_gets_its_finalizer_once_bound() {
    let g = vgs();
    let mut c = dynamic_content(&g, DeletionPolicy::Delete);
    assert_eq!(content_step(&c), GroupContentStep::AddFinalizer);
    c.metadata.finalizers = Some(vec![FIN_GROUP_CONTENT_BOUND.into()]);
    assert_eq!(content_step(&c), GroupContentStep::Done);
    c.spec.source.volume_handles = Some(Vec::new());
    assert!(matches!(content_step(&c), GroupContentStep::Invalid(_)));
}

#[test]
fn the_default_group_class_is_the_one_of_the_driver() {
    let mut a = class(DeletionPolicy::Delete);
    a.metadata.annotations =
        Some([(ANN_DEFAULT_GROUP_CLASS.to_string(), "true".to_string())].into());
    let mut b = a.clone();
    b.metadata.name = Some("other".into());
    b.driver = "e".into();
    assert_eq!(default_class([&a, &b], "d"), Ok("gc".into()));
    assert_eq!(
        default_class([&a, &b], "x"),
        Err("cannot find default group snapshot class".into())
    );
    b.driver = "d".into();
    assert_eq!(
        default_class([&a, &b], "d"),
        Err("2 default snapshot classes were found".into())
    );
}
