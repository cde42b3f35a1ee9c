//! Table tests of the planner: every state of a VolumeAttachment and its PV to the next step.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolumeSpec, SecretReference,
};
use k8s_openapi::api::storage::v1::{
    CSINodeDriver, CSINodeSpec, VolumeAttachmentSource, VolumeAttachmentSpec,
    VolumeAttachmentStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use rstest::rstest;

use super::*;
use crate::constants::NODE_ID_ANNOTATION;

const DRIVER: &str = "hostpath.csi.k8s.io";
const FIN: &str = "external-attacher/hostpath-csi-k8s-io";

fn driver() -> DriverInfo {
    DriverInfo {
        name: DRIVER.into(),
        finalizer: FIN.into(),
        publish_unpublish: true,
        publish_readonly: true,
        single_node_multi_writer: false,
        list_published_nodes: false,
        default_fstype: String::new(),
    }
}

fn now() -> Time {
    Time("2024-01-01T00:00:00Z".parse().unwrap())
}

fn pv_spec(secret: bool) -> PersistentVolumeSpec {
    PersistentVolumeSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        csi: Some(CSIPersistentVolumeSource {
            driver: DRIVER.into(),
            volume_handle: "vol-1".into(),
            controller_publish_secret_ref: secret.then(|| SecretReference {
                name: Some("s".into()),
                namespace: Some("ns".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A PV: `fin` = our finalizer present; `deleting`; `secret` = publish secret ref.
fn pv(fin: bool, deleting: bool, secret: bool) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pv1".into()),
            finalizers: fin.then(|| vec!["kubernetes.io/pv-protection".into(), FIN.into()]),
            deletion_timestamp: deleting.then(now),
            ..Default::default()
        },
        spec: Some(pv_spec(secret)),
        ..Default::default()
    }
}

#[derive(Clone, Copy)]
struct V {
    attached: bool,
    fin: bool,
    ann: bool,
    deleting: bool,
}

const NEW: V = V {
    attached: false,
    fin: false,
    ann: false,
    deleting: false,
};
const PREPARED: V = V {
    attached: false,
    fin: true,
    ann: true,
    deleting: false,
};
const ATTACHED: V = V {
    attached: true,
    fin: true,
    ann: true,
    deleting: false,
};
const DELETING: V = V {
    attached: true,
    fin: true,
    ann: true,
    deleting: true,
};
const DELETED_CLEAN: V = V {
    attached: true,
    fin: false,
    ann: true,
    deleting: true,
};

fn va(v: V) -> VolumeAttachment {
    VolumeAttachment {
        metadata: ObjectMeta {
            name: Some("va1".into()),
            finalizers: v.fin.then(|| vec![FIN.into()]),
            annotations: v
                .ann
                .then(|| BTreeMap::from([(NODE_ID_ANNOTATION.into(), "id-1".into())])),
            deletion_timestamp: v.deleting.then(now),
            ..Default::default()
        },
        spec: VolumeAttachmentSpec {
            attacher: DRIVER.into(),
            node_name: "node1".into(),
            source: VolumeAttachmentSource {
                persistent_volume_name: Some("pv1".into()),
                ..Default::default()
            },
        },
        status: Some(VolumeAttachmentStatus {
            attached: v.attached,
            ..Default::default()
        }),
    }
}

fn csinode(with_driver: bool) -> CSINode {
    CSINode {
        metadata: ObjectMeta {
            name: Some("node1".into()),
            ..Default::default()
        },
        spec: CSINodeSpec {
            drivers: if with_driver {
                vec![CSINodeDriver {
                    name: DRIVER.into(),
                    node_id: "id-1".into(),
                    ..Default::default()
                }]
            } else {
                vec![]
            },
        },
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Skip(Skip),
    Move(Lane),
    LoadSecrets,
    AddPvFinalizer,
    AttachError(&'static str),
    DetachError(&'static str),
    SaveVaMetadata,
    Publish,
    Unpublish { node_gone: bool },
    Trivial,
}

fn kind(step: &Step) -> Want {
    match step {
        Step::Skip(s) => Want::Skip(*s),
        Step::MoveLane(l) => Want::Move(*l),
        Step::LoadSecrets(_) => Want::LoadSecrets,
        Step::AddPvFinalizer { .. } => Want::AddPvFinalizer,
        Step::AttachError(e) => Want::AttachError(Box::leak(e.clone().into_boxed_str())),
        Step::DetachError(e) => Want::DetachError(Box::leak(e.clone().into_boxed_str())),
        Step::SaveVaMetadata(_) => Want::SaveVaMetadata,
        Step::Publish(_) => Want::Publish,
        Step::Unpublish { node_gone, .. } => Want::Unpublish {
            node_gone: *node_gone,
        },
        Step::MarkAttachedTrivially => Want::Trivial,
    }
}

#[allow(clippy::too_many_arguments)]
#[rstest]
// Attach lane.
#[case::attached_is_skipped(
    ATTACHED,
    Some(pv(true, false, false)),
    true,
    true,
    false,
    Lane::Attach,
    Want::Skip(Skip::AlreadyAttached)
)]
#[case::attached_even_without_finalizer(V { fin: false, ..ATTACHED }, Some(pv(true, false, false)), true, true, false, Lane::Attach, Want::Skip(Skip::AlreadyAttached))]
#[case::force_sync_bypasses_skip(
    ATTACHED,
    Some(pv(true, false, false)),
    true,
    true,
    true,
    Lane::Attach,
    Want::Publish
)]
#[case::pv_missing(
    NEW,
    None,
    true,
    true,
    false,
    Lane::Attach,
    Want::AttachError("persistentvolume \"pv1\" not found")
)]
#[case::pv_deleting(
    NEW,
    Some(pv(true, true, false)),
    true,
    true,
    false,
    Lane::Attach,
    Want::AttachError("PersistentVolume \"pv1\" is marked for deletion")
)]
#[case::pv_finalizer_first(
    NEW,
    Some(pv(false, false, false)),
    false,
    false,
    false,
    Lane::Attach,
    Want::AddPvFinalizer
)]
#[case::csinode_missing(
    NEW,
    Some(pv(true, false, false)),
    false,
    true,
    false,
    Lane::Attach,
    Want::AttachError("csinode.storage.k8s.io \"node1\" not found")
)]
#[case::deleted_node_not_attached(
    NEW,
    Some(pv(true, false, false)),
    true,
    false,
    false,
    Lane::Attach,
    Want::AttachError("node \"node1\" not found; not attaching to a deleted node")
)]
#[case::metadata_before_publish(
    NEW,
    Some(pv(true, false, false)),
    true,
    true,
    false,
    Lane::Attach,
    Want::SaveVaMetadata
)]
#[case::publish(
    PREPARED,
    Some(pv(true, false, false)),
    true,
    true,
    false,
    Lane::Attach,
    Want::Publish
)]
#[case::secrets_before_metadata(
    NEW,
    Some(pv(true, false, true)),
    true,
    true,
    false,
    Lane::Attach,
    Want::LoadSecrets
)]
#[case::deleting_moves_to_detach(
    DELETING,
    Some(pv(true, false, false)),
    true,
    true,
    false,
    Lane::Attach,
    Want::Move(Lane::Detach)
)]
// Detach lane.
#[case::not_deleting_moves_to_attach(
    ATTACHED,
    Some(pv(true, false, false)),
    true,
    true,
    false,
    Lane::Detach,
    Want::Move(Lane::Attach)
)]
#[case::no_finalizer_is_detached(
    DELETED_CLEAN,
    Some(pv(true, false, false)),
    true,
    true,
    false,
    Lane::Detach,
    Want::Skip(Skip::AlreadyDetached)
)]
#[case::force_sync_detaches_anyway(DELETED_CLEAN, Some(pv(true, false, false)), true, true, true, Lane::Detach, Want::Unpublish { node_gone: false })]
#[case::unpublish(DELETING, Some(pv(true, true, false)), true, true, false, Lane::Detach, Want::Unpublish { node_gone: false })]
#[case::unpublish_via_annotation(DELETING, Some(pv(true, false, false)), false, true, false, Lane::Detach, Want::Unpublish { node_gone: false })]
#[case::unpublish_deleted_node(DELETING, Some(pv(true, false, false)), false, false, false, Lane::Detach, Want::Unpublish { node_gone: true })]
#[case::detach_pv_missing(
    DELETING,
    None,
    true,
    true,
    false,
    Lane::Detach,
    Want::DetachError("persistentvolume \"pv1\" not found")
)]
#[case::detach_no_node_id(V { ann: false, ..DELETING }, Some(pv(true, false, false)), false, false, false, Lane::Detach, Want::DetachError("csinode.storage.k8s.io \"node1\" not found"))]
#[case::detach_secrets(
    DELETING,
    Some(pv(true, false, true)),
    true,
    true,
    false,
    Lane::Detach,
    Want::LoadSecrets
)]
fn plan_table(
    #[case] v: V,
    #[case] pv: Option<PersistentVolume>,
    #[case] csinode_ok: bool,
    #[case] node_exists: bool,
    #[case] force_sync: bool,
    #[case] lane: Lane,
    #[case] want: Want,
) {
    let va = va(v);
    let node = csinode(csinode_ok);
    let secrets = Secrets::NotLoaded;
    let obs = Observed {
        va: &va,
        pv: pv.as_ref(),
        csinode: csinode_ok.then_some(&node),
        node_exists,
        secrets: &secrets,
        force_sync,
    };
    assert_eq!(kind(&plan(&driver(), lane, &obs)), want);
}

fn observe<'a>(
    va: &'a VolumeAttachment,
    pv: &'a PersistentVolume,
    node: &'a CSINode,
    secrets: &'a Secrets,
) -> Observed<'a> {
    Observed {
        va,
        pv: Some(pv),
        csinode: Some(node),
        node_exists: true,
        secrets,
        force_sync: false,
    }
}

#[test]
fn source_errors_have_upstream_text() {
    let node = csinode(true);
    let p = pv(true, false, false);
    let mut both = va(NEW);
    both.spec.source.inline_volume_spec = Some(pv_spec(false));
    let mut neither = va(NEW);
    neither.spec.source.persistent_volume_name = None;
    let mut inline_no_csi = va(NEW);
    inline_no_csi.spec.source = VolumeAttachmentSource {
        inline_volume_spec: Some(PersistentVolumeSpec::default()),
        ..Default::default()
    };
    let s = Secrets::NotLoaded;
    for (va, want) in [
        (
            &both,
            "both InlineCSIVolumeSource and PersistentVolumeName specified in VA source",
        ),
        (
            &neither,
            "neither InlineCSIVolumeSource nor PersistentVolumeName specified in VA source",
        ),
        (&inline_no_csi, "inline volume spec contains nil CSI source"),
    ] {
        assert_eq!(
            plan(&driver(), Lane::Attach, &observe(va, &p, &node, &s)),
            Step::AttachError(want.into())
        );
    }
}

#[test]
fn inline_volumes_need_no_pv_and_no_pv_finalizer() {
    let node = csinode(true);
    let unrelated = pv(false, false, false);
    let mut v = va(PREPARED);
    v.spec.source = VolumeAttachmentSource {
        inline_volume_spec: Some(pv_spec(false)),
        ..Default::default()
    };
    let s = Secrets::NotLoaded;
    let mut obs = observe(&v, &unrelated, &node, &s);
    obs.pv = None;
    let Step::Publish(req) = plan(&driver(), Lane::Attach, &obs) else {
        panic!("publish expected")
    };
    assert_eq!(req.volume_id, "vol-1");
    assert_eq!(req.node_id, "id-1");
}

#[test]
fn secrets_flow_into_requests_and_failures_into_errors() {
    let node = csinode(true);
    let p = pv(true, false, true);
    let v = va(PREPARED);
    let loaded = Secrets::Loaded(HashMap::from([("k".into(), "v".into())]));
    let Step::Publish(req) = plan(&driver(), Lane::Attach, &observe(&v, &p, &node, &loaded)) else {
        panic!("publish expected")
    };
    assert_eq!(req.secrets.get("k").map(String::as_str), Some("v"));
    let failed = Secrets::Failed("failed to load secret \"ns/s\": nope".into());
    assert_eq!(
        plan(&driver(), Lane::Attach, &observe(&v, &p, &node, &failed)),
        Step::AttachError("failed to load secret \"ns/s\": nope".into())
    );
    // A VA that never got our finalizer keeps it that way when the secret is missing.
    let fresh = va(NEW);
    assert!(matches!(
        plan(
            &driver(),
            Lane::Attach,
            &observe(&fresh, &p, &node, &failed)
        ),
        Step::AttachError(_)
    ));
    let d = va(DELETING);
    let Step::Unpublish { request, .. } =
        plan(&driver(), Lane::Detach, &observe(&d, &p, &node, &loaded))
    else {
        panic!("unpublish expected")
    };
    assert_eq!(request.secrets.len(), 1);
    assert_eq!(
        format!(
            "{:?}",
            Secrets::Loaded(HashMap::from([("k".into(), "secret-value".into())]))
        ),
        "Loaded(1 keys)"
    );
}

#[test]
fn capability_errors_come_before_the_secret() {
    let node = csinode(true);
    let mut p = pv(true, false, true);
    p.spec.as_mut().unwrap().access_modes = Some(vec![]);
    let v = va(NEW);
    let s = Secrets::NotLoaded;
    assert_eq!(
        plan(&driver(), Lane::Attach, &observe(&v, &p, &node, &s)),
        Step::AttachError("unsupported AccessMode combination: []".into())
    );
}

#[test]
fn trivial_driver_marks_attached_even_while_deleting() {
    let mut d = driver();
    d.publish_unpublish = false;
    let node = csinode(false);
    let s = Secrets::NotLoaded;
    let p = pv(false, false, false);
    let v = va(V {
        attached: false,
        ..DELETING
    });
    assert_eq!(Lane::of(&v, &d), Lane::Attach);
    assert_eq!(
        plan(&d, Lane::Attach, &observe(&v, &p, &node, &s)),
        Step::MarkAttachedTrivially
    );
    let v = va(ATTACHED);
    assert_eq!(
        plan(&d, Lane::Attach, &observe(&v, &p, &node, &s)),
        Step::Skip(Skip::AlreadyAttached)
    );
}

#[rstest]
#[case::not_deleting(pv(true, false, false), false, PvStep::Nothing("not being deleted"))]
#[case::no_finalizer(pv(false, true, false), false, PvStep::Nothing("no finalizer"))]
#[case::still_used(
    pv(true, true, false),
    true,
    PvStep::Nothing("a VolumeAttachment names it")
)]
fn pv_plan_nothing(#[case] pv: PersistentVolume, #[case] referenced: bool, #[case] want: PvStep) {
    assert_eq!(plan_pv(&pv, FIN, referenced), want);
}

#[test]
fn pv_plan_removes_by_index() {
    let PvStep::RemoveFinalizer(p) = plan_pv(&pv(true, true, false), FIN, false) else {
        panic!("removal expected")
    };
    assert_eq!(p[0]["path"], "/metadata/finalizers/1");
}
