//! The snapshotter's passes against the fake API server and csi-mock: the writes and CSI calls
//! of the creation guard, a bad class, and a dynamic snapshot through the common controller.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{Fault, Method};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Event, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use serde_json::json;
use snapshotter::constants::*;
use snapshotter::types::*;
use support::{Halves, Harness, NS, class, dynamic_content};

fn annotation(c: &VolumeSnapshotContent, key: &str) -> Option<String> {
    controller_kit::meta::annotation(&c.metadata, key).map(str::to_string)
}

/// What the common controller does when a snapshot is deleted: mark the content, delete it.
async fn delete_as_the_common_controller(h: &Harness, name: &str) {
    let api: Api<VolumeSnapshotContent> = Api::all(h.api.client());
    let mark = json!({"metadata": {"annotations": {ANN_BEING_DELETED: YES}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&mark))
        .await
        .unwrap();
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_content_deleted_while_create_snapshot_runs_is_deleted_once_the_driver_answers() {
    let h = Harness::start(
        |_| {},
        Halves::Sidecar,
        |api, driver, _| {
            api.insert(&class("c", driver, &[]));
        },
    )
    .await;
    h.driver.inject(
        Method::CreateSnapshot,
        Fault::delay(Duration::from_millis(1500)).once(),
    );
    h.api.insert(&dynamic_content(&h.name, &h.volume, "c"));
    h.until("the creation guard", |h| {
        annotation(&h.content("snapcontent-u-1")?, ANN_BEING_CREATED).map(|_| ())
    })
    .await;
    // The snapshot is deleted while the driver is still cutting it.
    delete_as_the_common_controller(&h, "snapcontent-u-1").await;
    h.until("the content to go", |h| {
        h.content("snapcontent-u-1").is_none().then_some(())
    })
    .await;
    assert_eq!(h.driver.calls(Method::CreateSnapshot), 1);
    assert_eq!(
        h.driver.calls(Method::DeleteSnapshot),
        1,
        "the snapshot the driver cut is deleted"
    );
    assert!(h.driver.state().snapshots.is_empty());
}

#[tokio::test]
async fn a_bad_class_is_reported_and_never_marks_the_content() {
    let h = Harness::start(
        |_| {},
        Halves::Sidecar,
        |api, driver, volume| {
            api.insert(&class("bad", driver, &[("csi.storage.k8s.io/foo", "x")]));
            api.insert(&dynamic_content(driver, volume, "bad"));
        },
    )
    .await;
    let error = h
        .until("the error status", |h| {
            h.content("snapcontent-u-1")?.status?.error?.message
        })
        .await;
    assert!(
        error.contains("found unknown parameter key \"csi.storage.k8s.io/foo\""),
        "{error}"
    );
    let marked = h
        .api
        .requests_matching("PATCH", "volumesnapshotcontents/snapcontent-u-1")
        .iter()
        .any(|r| {
            r.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(ANN_BEING_CREATED))
        });
    assert!(
        !marked,
        "the creation guard was set for a class that cannot work"
    );
    let events: Vec<String> = h
        .api
        .list::<Event>()
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        events.contains(&REASON_CREATION_FAILED.to_string()),
        "{events:?}"
    );
    // Its deletion is not blocked, and nothing reaches the driver.
    delete_as_the_common_controller(&h, "snapcontent-u-1").await;
    h.until("the content to go", |h| {
        h.content("snapcontent-u-1").is_none().then_some(())
    })
    .await;
    assert_eq!(h.driver.calls(Method::CreateSnapshot), 0);
    assert_eq!(h.driver.calls(Method::DeleteSnapshot), 0);
}

fn bound_claim(driver: &str, volume: &str) -> (PersistentVolumeClaim, PersistentVolume) {
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("claim".into()),
            namespace: Some(NS.into()),
            uid: Some("claim-uid".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            volume_name: Some("pv".into()),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        }),
    };
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pv".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            claim_ref: Some(ObjectReference {
                name: Some("claim".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: volume.into(),
                ..Default::default()
            }),
            volume_mode: Some("Block".into()),
            ..Default::default()
        }),
        status: None,
    };
    (pvc, pv)
}

#[tokio::test]
async fn a_dynamic_snapshot_gets_its_content_and_then_its_status() {
    let h = Harness::start(
        |_| {},
        Halves::Common,
        |api, driver, volume| {
            api.insert(&class("c", driver, &[]));
            let (pvc, pv) = bound_claim(driver, volume);
            api.insert(&pvc);
            api.insert(&pv);
            api.insert(&VolumeSnapshot {
                metadata: ObjectMeta {
                    name: Some("snap".into()),
                    namespace: Some(NS.into()),
                    ..Default::default()
                },
                spec: VolumeSnapshotSpec {
                    source: VolumeSnapshotSource {
                        persistent_volume_claim_name: Some("claim".into()),
                        volume_snapshot_content_name: None,
                    },
                    volume_snapshot_class_name: Some("c".into()),
                },
                status: None,
            });
        },
    )
    .await;
    let uid = h.snapshot("snap").unwrap().metadata.uid.unwrap();
    let name = format!("snapcontent-{uid}");
    let content = h.until("the content", |h| h.content(&name)).await;
    assert_eq!(
        content.spec.volume_snapshot_ref.uid.as_deref(),
        Some(uid.as_str())
    );
    assert_eq!(
        content.spec.source.volume_handle.as_deref(),
        Some(h.volume.as_str())
    );
    assert_eq!(content.spec.source_volume_mode.as_deref(), Some("Block"));
    assert_eq!(content.spec.driver, h.name);
    // The source claim is protected while the snapshot is cut (by update: upstream's RBAC has no
    // patch on claims).
    let claim: PersistentVolumeClaim = h.api.get(Some(NS), "claim").unwrap();
    assert!(controller_kit::meta::has_finalizer(
        &claim.metadata,
        FIN_PVC_AS_SOURCE
    ));
    assert!(
        !h.api
            .requests_matching("PUT", "persistentvolumeclaims/claim")
            .is_empty()
    );
    let vs = h
        .until("the snapshot bound, with its finalizers", |h| {
            let vs = h.snapshot("snap")?;
            let both = controller_kit::meta::has_finalizer(&vs.metadata, FIN_SNAPSHOT_AS_SOURCE)
                && controller_kit::meta::has_finalizer(&vs.metadata, FIN_SNAPSHOT_BOUND);
            (vs.bound_content() == Some(name.as_str()) && both).then_some(vs)
        })
        .await;
    assert_eq!(vs.status.unwrap().ready_to_use, Some(false));
    h.until("the content's finalizer", |h| {
        controller_kit::meta::has_finalizer(&h.content(&name)?.metadata, FIN_CONTENT_BOUND)
            .then_some(())
    })
    .await;

    // The CSI half (not running here) reports the snapshot ready.
    let status = json!({"status": {"snapshotHandle": "s-1", "creationTime": 1_700_000_000_000_000_000_i64,
                                   "readyToUse": true, "restoreSize": 1_073_741_824}});
    Api::<VolumeSnapshotContent>::all(h.api.client())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let vs = h
        .until("the snapshot ready", |h| {
            h.snapshot("snap").filter(|v| v.is_ready())
        })
        .await;
    let st = vs.status.unwrap();
    assert_eq!(st.restore_size.unwrap().0, "1Gi");
    assert_eq!(st.creation_time.unwrap().0.as_second(), 1_700_000_000);
    h.until("the claim's protection to go", |h| {
        let claim: PersistentVolumeClaim = h.api.get(Some(NS), "claim")?;
        (!controller_kit::meta::has_finalizer(&claim.metadata, FIN_PVC_AS_SOURCE)).then_some(())
    })
    .await;
    let reasons: BTreeMap<String, usize> = h
        .api
        .list::<Event>()
        .into_iter()
        .filter_map(|e| e.reason)
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r).or_default() += 1;
            m
        });
    for r in [REASON_CREATING, REASON_CREATED, REASON_READY] {
        assert_eq!(reasons.get(r), Some(&1), "{r} once: {reasons:?}");
    }
    assert_eq!(
        h.driver.all_calls().get(&Method::CreateSnapshot),
        None,
        "the common controller calls no driver"
    );
}
