//! Component tests of the provisioner's act layer: the real controller (informers, queues,
//! workers, journal) against the fake API server of `controller-kit` and csi-mock on a Unix
//! socket. They check what reaches the API server and the driver, step by step, where the e2e
//! suite can only see the end state:
//! - the deletion stages of a Released PV (DeleteVolume once, then the PV, then its finalizer),
//!   and that a failed step is retried without repeating the ones done;
//! - the intent after a failed CreateVolume: released when the error proves nothing was created,
//!   kept when the volume may exist;
//! - what issue 10 fixed: the cloning finalizer of a source bound to a static PV, events as
//!   upstream, secret errors, intents recorded only before CreateVolume, moved classes.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{Fault, Method};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use provisioner::constants::*;
use provisioner::journal;
use tonic::Code;

use support::*;

#[tokio::test]
async fn a_released_volume_is_deleted_then_its_pv_then_its_finalizer_each_once() {
    let h = Harness::start(|_, _| {}).await;
    let id = create_volume(&h.csi, "pvc-1").await;
    h.api.insert(&released_pv("pvc-1", &h.name, &id));

    eventually("the PV to be gone", || {
        h.api.get::<PersistentVolume>(None, "pvc-1").is_none()
    })
    .await;
    assert!(h.driver.state().volumes.is_empty(), "the volume is deleted");
    // Let the PV's own events (deletion timestamp, finalizer removal, removal) come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.driver.calls(Method::DeleteVolume), 1, "DeleteVolume once");
    assert_eq!(
        h.writes("/persistentvolumes/pvc-1"),
        [
            "DELETE /api/v1/persistentvolumes/pvc-1 200",
            "PATCH /api/v1/persistentvolumes/pvc-1 200",
        ],
        "the PV is deleted, then its finalizer removed, once each"
    );
    let finalizer_patch = h
        .api
        .requests_matching("PATCH", "/persistentvolumes/pvc-1")
        .remove(0);
    assert_eq!(
        finalizer_patch.body.unwrap()["metadata"]["$deleteFromPrimitiveList/finalizers"],
        serde_json::json!([FINALIZER_PV])
    );
}

#[tokio::test]
async fn a_failed_pv_delete_is_retried_without_a_second_delete_volume() {
    let h = Harness::start(|_, _| {}).await;
    let id = create_volume(&h.csi, "pvc-2").await;
    h.api
        .fail_next("DELETE", "/persistentvolumes/pvc-2", 2, 500);
    h.api.insert(&released_pv("pvc-2", &h.name, &id));

    eventually("the PV to be gone", || {
        h.api.get::<PersistentVolume>(None, "pvc-2").is_none()
    })
    .await;
    assert_eq!(
        h.driver.calls(Method::DeleteVolume),
        1,
        "the volume deleted once; the retries redo only the PV's deletion"
    );
    assert_eq!(
        h.writes("/persistentvolumes/pvc-2"),
        [
            "DELETE /api/v1/persistentvolumes/pvc-2 500",
            "DELETE /api/v1/persistentvolumes/pvc-2 500",
            "DELETE /api/v1/persistentvolumes/pvc-2 200",
            "PATCH /api/v1/persistentvolumes/pvc-2 200",
        ]
    );
}

#[tokio::test]
async fn a_failed_delete_volume_is_an_event_and_keeps_the_pv() {
    let h = Harness::start(|_, _| {}).await;
    let id = create_volume(&h.csi, "pvc-3").await;
    h.driver.inject(
        Method::DeleteVolume,
        Fault::error(Code::FailedPrecondition, "volume is busy").times(2),
    );
    h.api.insert(&released_pv("pvc-3", &h.name, &id));

    eventually("a VolumeFailedDelete event", || {
        !h.events(REASON_VOLUME_FAILED_DELETE).is_empty()
    })
    .await;
    let event = h.events(REASON_VOLUME_FAILED_DELETE).remove(0);
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("volume is busy"),
        "{event:?}"
    );
    // Retried with backoff until the driver lets go; the PV is touched only after that.
    eventually("the PV to be gone", || {
        h.api.get::<PersistentVolume>(None, "pvc-3").is_none()
    })
    .await;
    assert_eq!(h.driver.calls(Method::DeleteVolume), 3);
    assert!(h.driver.state().volumes.is_empty());
    // Issue 10, item 1: core v1 Events, as client-go's recorder writes them (upstream's roles
    // grant no events.k8s.io); the repeat is folded into the first one's count.
    let events = h.events(REASON_VOLUME_FAILED_DELETE);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].count, Some(2));
    assert_eq!(
        events[0].involved_object.name.as_deref(),
        Some("pvc-3"),
        "about the PV"
    );
    let writes: Vec<(String, Option<String>)> = h
        .api
        .requests()
        .into_iter()
        .filter(|r| !r.is_read() && r.path.contains("events"))
        .map(|r| (format!("{} {}", r.method, r.status), r.content_type))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        h.api
            .requests()
            .iter()
            .filter(|r| !r.is_read() && r.path.contains("events"))
            .all(|r| r.path.starts_with("/api/v1/namespaces/default/events")),
        "core events only"
    );
    assert_eq!(writes[0].0, "POST 201");
    assert_eq!(writes[1].0, "PATCH 200");
    assert_eq!(
        writes[1].1.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
}

#[tokio::test]
async fn an_intent_is_released_when_create_volume_proves_nothing_was_created() {
    let h = Harness::start(|api, driver| {
        api.insert(&class("fast", driver));
    })
    .await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::InvalidArgument, "unsupported parameter").once(),
    );
    h.api.insert(&claim("c1", "fast", &h.name));
    let uid = h
        .api
        .get::<PersistentVolumeClaim>(Some(NS), "c1")
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let volume = format!("pvc-{uid}");

    eventually("a ProvisioningFailed event", || {
        !h.events(REASON_PROVISIONING_FAILED).is_empty()
    })
    .await;
    // Released within the journal's release window, with nothing else to ride along with.
    eventually("the intent to be released", || h.journal().is_empty()).await;
    let writes = journal_writes(&h);
    assert_eq!(
        writes.first().map(String::as_str),
        Some(format!("+{volume}").as_str()),
        "recorded before CreateVolume: {writes:?}"
    );
    assert!(
        writes.iter().any(|w| w == &format!("-{volume}")),
        "then released: {writes:?}"
    );
    let note = h.events(REASON_PROVISIONING_FAILED).remove(0).message;
    assert!(
        note.as_deref()
            .unwrap_or_default()
            .contains("unsupported parameter"),
        "{note:?}"
    );
    // The retry (the fault was one-shot) then provisions the claim.
    eventually("the PV", || {
        h.api.get::<PersistentVolume>(None, &volume).is_some()
    })
    .await;
    assert_eq!(h.driver.state().volumes.len(), 1);
    // Issue 10, item 7: upstream's `<unix-ms>-<random>-<driver>`.
    let pv = h.api.get::<PersistentVolume>(None, &volume).unwrap();
    let identity = pv.spec.unwrap().csi.unwrap().volume_attributes.unwrap()
        [VOLUME_ATTR_PROVISIONER_IDENTITY]
        .clone();
    let (ms, rest) = identity.split_once('-').unwrap();
    let (random, driver) = rest.split_once('-').unwrap();
    assert!(
        ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit()),
        "{identity}"
    );
    assert!(
        random.parse::<u32>().is_ok_and(|r| r < 10_000),
        "{identity}"
    );
    assert_eq!(driver, h.name);
}

#[tokio::test]
async fn an_intent_is_kept_while_create_volume_may_still_be_creating() {
    let h = Harness::start(|api, driver| {
        api.insert(&class("fast", driver));
    })
    .await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "try again").times(1_000),
    );
    h.api.insert(&claim("c2", "fast", &h.name));
    let uid = h
        .api
        .get::<PersistentVolumeClaim>(Some(NS), "c2")
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let volume = format!("pvc-{uid}");

    eventually("two CreateVolume attempts", || {
        h.driver.calls(Method::CreateVolume) >= 2
    })
    .await;
    // Longer than the release window: nothing is released.
    tokio::time::sleep(journal::RELEASE_WINDOW + Duration::from_millis(500)).await;
    assert_eq!(
        h.journal(),
        std::slice::from_ref(&volume),
        "the intent is kept"
    );
    assert!(
        journal_writes(&h)
            .iter()
            .flat_map(|w| w.split(' '))
            .all(|entry| !entry.starts_with('-')),
        "no release was written: {:?}",
        journal_writes(&h)
    );
    // The driver recovers: the retry creates the volume, the PV records it, the intent goes.
    h.driver.clear_faults();
    eventually("the PV", || {
        h.api.get::<PersistentVolume>(None, &volume).is_some()
    })
    .await;
    eventually("the intent to be released", || h.journal().is_empty()).await;
}

/// Issue 10, item 2: the finalizer we put on a clone's source must come off even when the source
/// is not a claim we provisioned (it is not in the claim cache by its annotations).
#[tokio::test]
async fn the_cloning_finalizer_leaves_a_deleted_source_bound_to_a_static_pv_of_ours() {
    let h = Harness::start(|api, driver| {
        api.insert(&static_pv("static-ours", driver));
        api.insert(&static_pv("static-theirs", "other.csi.example.com"));
        api.insert(&deleted_source("src-ours", "static-ours"));
        api.insert(&deleted_source("src-theirs", "static-theirs"));
    })
    .await;
    eventually("the source of ours to be released and gone", || {
        h.api
            .get::<PersistentVolumeClaim>(Some(NS), "src-ours")
            .is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let theirs = h
        .api
        .get::<PersistentVolumeClaim>(Some(NS), "src-theirs")
        .expect("another driver's source is left to its provisioner");
    assert_eq!(
        theirs.metadata.finalizers.unwrap_or_default(),
        [FINALIZER_CLONE_PROTECTION],
        "not ours to release: its clones may be in no cache of ours"
    );
}

/// Issue 10, item 6: upstream announces every attempt with a Normal `Provisioning` event, also
/// one that fails before CreateVolume.
#[tokio::test]
async fn an_attempt_that_fails_while_preparing_is_announced_then_reported() {
    let h = Harness::start(|api, driver| {
        let mut c = class("bogus", driver);
        c.parameters = Some(BTreeMap::from([(
            "csi.storage.k8s.io/bogus".into(),
            "x".into(),
        )]));
        api.insert(&c);
    })
    .await;
    h.api.insert(&claim("c3", "bogus", &h.name));
    eventually("a ProvisioningFailed event", || {
        !h.events(REASON_PROVISIONING_FAILED).is_empty()
    })
    .await;
    let events = claim_events(&h, "c3");
    assert_eq!(
        events.first().map(String::as_str),
        Some(
            "Normal Provisioning: External provisioner is provisioning volume for claim \"ns/c3\""
        ),
        "{events:?}"
    );
    assert!(
        events[1].starts_with("Warning ProvisioningFailed: ")
            && events[1].contains("csi.storage.k8s.io/bogus"),
        "{events:?}"
    );
    assert_eq!(h.driver.calls(Method::CreateVolume), 0);
}

/// Issue 10, items 6 and 8: a missing Secret is named in client-go's words, and Secret data that
/// is not UTF-8 is a clear error, never altered on its way to the driver.
#[tokio::test]
async fn secret_errors_read_as_upstreams_and_binary_data_is_refused() {
    let h = Harness::start(|api, driver| {
        api.insert(&class_with_secret("missing", driver, "nosuch"));
        api.insert(&class_with_secret("binary", driver, "bin"));
        api.insert(&k8s_openapi::api::core::v1::Secret {
            metadata: meta("bin", Some(NS)),
            data: Some(BTreeMap::from([(
                "password".into(),
                k8s_openapi::ByteString(vec![0xff, 0xfe, b'x']),
            )])),
            ..Default::default()
        });
    })
    .await;
    h.api.insert(&claim("c4", "missing", &h.name));
    h.api.insert(&claim("c5", "binary", &h.name));
    eventually("both claims to fail", || {
        let failed = |c: &str| {
            claim_events(&h, c)
                .iter()
                .any(|e| e.starts_with("Warning ProvisioningFailed"))
        };
        failed("c4") && failed("c5")
    })
    .await;
    let failure = |c: &str| {
        claim_events(&h, c)
            .into_iter()
            .find(|e| e.starts_with("Warning ProvisioningFailed"))
            .unwrap()
    };
    assert_eq!(
        failure("c4"),
        "Warning ProvisioningFailed: error getting secret nosuch in namespace ns: secrets \"nosuch\" not found"
    );
    assert_eq!(
        failure("c5"),
        "Warning ProvisioningFailed: secret bin in namespace ns: the value of \"password\" is not UTF-8 text, which a CSI request cannot carry"
    );
    assert_eq!(h.driver.calls(Method::CreateVolume), 0);
    // Issue 10, item 3: an intent is recorded only when CreateVolume is about to be sent.
    assert!(
        journal_writes(&h).is_empty(),
        "nothing recorded: {:?}",
        journal_writes(&h)
    );
}

/// Issue 10, item 8: a claim whose StorageClass now names another provisioner is dropped
/// quietly, as upstream does (`unknown provisioner requested in claim's StorageClass`), not
/// retried forever as if the class were missing.
#[tokio::test]
async fn a_claim_whose_class_moved_to_another_provisioner_is_left_quietly() {
    let h = Harness::start(|api, _| {
        api.insert(&class("moved", "other.csi.example.com"));
    })
    .await;
    h.api.insert(&claim("c6", "moved", &h.name));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = h.metrics.encode();
    let errors = metrics
        .lines()
        .find(|l| {
            l.starts_with("csi_controller_reconciles_total")
                && l.contains(r#"controller="provisioner""#)
                && l.contains(r#"result="error""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert_eq!(errors, 0.0, "no failed passes to retry:\n{metrics}");
    assert!(claim_events(&h, "c6").is_empty());
    assert_eq!(h.driver.calls(Method::CreateVolume), 0);
}

/// Issue 10, item 5: after an error that proves nothing was created, the next attempt builds its
/// request from the current class (as upstream does), not the recorded one, so a fixed class
/// takes effect.
#[tokio::test]
async fn a_retry_after_a_proven_failure_takes_the_fixed_class() {
    let h = Harness::start(|api, driver| {
        let mut c = class("tiered", driver);
        c.parameters = Some(BTreeMap::from([("tier".into(), "bad".into())]));
        api.insert(&c);
    })
    .await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::InvalidArgument, "unknown tier").once(),
    );
    h.api.insert(&claim("c8", "tiered", &h.name));
    eventually("a ProvisioningFailed event", || {
        !h.events(REASON_PROVISIONING_FAILED).is_empty()
    })
    .await;
    let mut fixed = class("tiered", &h.name);
    fixed.parameters = Some(BTreeMap::from([("tier".into(), "good".into())]));
    h.api.insert(&fixed);
    eventually("the volume", || h.driver.state().volumes.len() == 1).await;
    let volume = h.driver.state().volumes.into_values().next().unwrap();
    assert_eq!(
        volume.parameters.get("tier").map(String::as_str),
        Some("good")
    );
}

/// Issue 10, item 3: a rollback that keeps failing is visible (an Event on the journal and a
/// metric), and a DeleteVolume answering NOT_FOUND ends it (the volume is gone).
#[tokio::test]
async fn a_failing_rollback_is_reported_and_not_found_ends_it() {
    let h = Harness::start(|api, driver| {
        api.insert(&class("fast", driver));
    })
    .await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "backend down").times(1_000),
    );
    h.api.insert(&claim("c9", "fast", &h.name));
    eventually("the intent", || !h.journal().is_empty()).await;
    // The claim goes while its volume may be in the making: the intent is rolled back.
    h.api.remove::<PersistentVolumeClaim>(Some(NS), "c9");
    eventually("a VolumeRollbackFailed event", || {
        !h.events(REASON_ROLLBACK_FAILED).is_empty()
    })
    .await;
    let event = h.events(REASON_ROLLBACK_FAILED).remove(0);
    assert_eq!(event.involved_object.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(
        event.involved_object.name.as_deref(),
        Some(journal::object_name(&h.name).as_str())
    );
    assert!(
        event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("of claim ns/c9") && m.contains("backend down")),
        "{event:?}"
    );
    assert!(
        h.metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("csi_provisioner_intent_rollback_failed_total ")),
        "the counter is exported"
    );
    // The driver comes back, creates the volume on the replay, but answers NOT_FOUND to its
    // deletion: the rollback is done all the same.
    h.driver.clear_faults();
    h.driver.inject(
        Method::DeleteVolume,
        Fault::error(Code::NotFound, "no such volume").times(1_000),
    );
    eventually("the intent to be released", || h.journal().is_empty()).await;
}

/// Issue 10, item 3: a rollback that keeps failing for `--intent-rollback-timeout` is given up:
/// the intent leaves the journal, an Event names the volume that may be left on the driver, and
/// a counter says so.
#[tokio::test]
async fn a_rollback_failing_past_the_timeout_is_given_up_and_reported() {
    let config = provisioner::ProvisionerConfig {
        rollback_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let h = Harness::start_with(config, Duration::from_secs(1), |api, driver| {
        api.insert(&class("fast", driver));
    })
    .await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::Unavailable, "backend down").times(1_000),
    );
    h.api.insert(&claim("c10", "fast", &h.name));
    eventually("the intent", || !h.journal().is_empty()).await;
    let volume = h.journal().remove(0);
    h.api.remove::<PersistentVolumeClaim>(Some(NS), "c10");
    eventually("the intent to be given up", || h.journal().is_empty()).await;
    let abandoned = h.events(REASON_ROLLBACK_ABANDONED);
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    let message = abandoned[0].message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("a volume named {volume} may be left"))
            && message.contains("backend down"),
        "{message}"
    );
    assert!(
        !h.events(REASON_ROLLBACK_FAILED).is_empty(),
        "the failures before were reported"
    );
    assert!(
        h.metrics
            .encode()
            .lines()
            .any(|l| l == "csi_provisioner_intent_rollback_abandoned_total 1"),
        "the counter says one intent was given up"
    );
}

/// Issue 10, item 8: a claim held back after an infeasible error is forgotten when it is deleted
/// (not only when `--retry-interval-max` has passed).
#[tokio::test]
async fn a_deleted_claim_is_no_longer_held_back() {
    let h = Harness::start_with(
        provisioner::ProvisionerConfig::default(),
        Duration::from_secs(120),
        |api, driver| {
            api.insert(&class("fast", driver));
        },
    )
    .await;
    h.driver.inject(
        Method::CreateVolume,
        Fault::error(Code::InvalidArgument, "no such tier").once(),
    );
    let stored = h.api.insert(&claim("c11", "fast", &h.name));
    eventually("a ProvisioningFailed event", || {
        !h.events(REASON_PROVISIONING_FAILED).is_empty()
    })
    .await;
    h.api.remove::<PersistentVolumeClaim>(Some(NS), "c11");
    // The same object again (same UID, as a restore from a backup brings it back): provisioned
    // at once, not after two minutes.
    h.api.insert(&stored);
    eventually("the volume", || h.driver.state().volumes.len() == 1).await;
}

/// Issue 10, item 8: Events report as the provisioner library's recorder does:
/// `<driver>_<host>_<uuid>`.
#[tokio::test]
async fn events_carry_upstreams_source_component() {
    let h = Harness::start(|api, driver| {
        api.insert(&class("fast", driver));
    })
    .await;
    h.api.insert(&claim("c12", "fast", &h.name));
    eventually("a ProvisioningSucceeded event", || {
        !h.events(REASON_PROVISIONING_SUCCEEDED).is_empty()
    })
    .await;
    let event = h.events(REASON_PROVISIONING_SUCCEEDED).remove(0);
    let component = event.source.and_then(|s| s.component).unwrap_or_default();
    let rest = component
        .strip_prefix(&format!("{}_test-0_", h.name))
        .unwrap_or_else(|| panic!("{component}"));
    assert!(uuid::Uuid::parse_str(rest).is_ok(), "{component}");
    assert_eq!(
        event.reporting_component.as_deref(),
        Some(component.as_str())
    );
}

fn other_attachers_va(name: &str, pv: &str) -> k8s_openapi::api::storage::v1::VolumeAttachment {
    use k8s_openapi::api::storage::v1::{
        VolumeAttachment, VolumeAttachmentSource, VolumeAttachmentSpec,
    };
    VolumeAttachment {
        metadata: meta(name, None),
        spec: VolumeAttachmentSpec {
            attacher: "other-attacher".into(),
            node_name: "node-1".into(),
            source: VolumeAttachmentSource {
                persistent_volume_name: Some(pv.into()),
                ..Default::default()
            },
        },
        status: None,
    }
}

/// Issue 10, item 8: the "still attached" check before DeleteVolume sees every VolumeAttachment
/// of the volume, not only those of our attacher, as upstream's does: here one listed at start
/// (whichever cache fills first) and one created later for a PV already cached.
#[tokio::test]
async fn a_volume_attached_by_another_attacher_is_not_deleted() {
    let h = Harness::start(|api, driver| {
        api.insert(&released_pv("pvc-7", driver, "vol-7"));
        api.insert(&other_attachers_va("va-7", "pvc-7"));
        api.insert(&static_pv("pvc-8", driver));
    })
    .await;
    eventually("a VolumeFailedDelete event for pvc-7", || {
        !h.events(REASON_VOLUME_FAILED_DELETE).is_empty()
    })
    .await;
    assert_eq!(
        h.events(REASON_VOLUME_FAILED_DELETE)[0].message.as_deref(),
        Some("persistentvolume pvc-7 is still attached to node node-1")
    );
    // Attached later, then released: its deletion waits too.
    h.api.insert(&other_attachers_va("va-8", "pvc-8"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pv = h.api.get::<PersistentVolume>(None, "pvc-8").unwrap();
    pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Delete".into());
    pv.status.as_mut().unwrap().phase = Some("Released".into());
    h.api.insert(&pv);
    eventually("a VolumeFailedDelete event for pvc-8", || {
        h.events(REASON_VOLUME_FAILED_DELETE)
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some("pvc-8"))
    })
    .await;
    assert_eq!(h.driver.calls(Method::DeleteVolume), 0);
    assert!(h.api.get::<PersistentVolume>(None, "pvc-7").is_some());
    assert!(h.api.get::<PersistentVolume>(None, "pvc-8").is_some());
}
