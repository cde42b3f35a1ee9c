//! Component tests of the modify controller (VolumeAttributesClass): the real resizer against the
//! fake API server and csi-mock. A class change applied; a class the driver refuses reported
//! Infeasible, held back, and rolled back to the current class; a class that does not exist
//! reported Pending and applied once it is created; a transient error pinning the target.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use csi_mock::{Fault, Method};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use kube::api::ObjectMeta;
use resizer::constants::*;
use tonic::Code;

use support::*;

fn class(name: &str, driver: &str, params: &[(&str, &str)]) -> VolumeAttributesClass {
    VolumeAttributesClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        driver_name: driver.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    }
}

/// A harness whose claim asks for class `wanted` while its volume has class `current`, with
/// the classes `classes` (name, parameters) in the API.
async fn start(
    wanted: &str,
    current: Option<&str>,
    classes: &'static [(&'static str, &'static [(&'static str, &'static str)])],
    retry_max: Duration,
) -> Harness {
    let (wanted, current) = (wanted.to_string(), current.map(str::to_string));
    Harness::start_with(
        |_| {},
        "1Gi",
        retry_max,
        move |pvc, pv| {
            pvc.spec.as_mut().unwrap().volume_attributes_class_name = Some(wanted);
            pvc.status
                .as_mut()
                .unwrap()
                .current_volume_attributes_class_name = current.clone();
            pv.spec.as_mut().unwrap().volume_attributes_class_name = current;
        },
        resizer::ResizerConfig::default(),
        |api| {
            for (name, params) in classes {
                api.insert(&class(
                    name,
                    &csi_mock::MockConfig::default().driver_name,
                    params,
                ));
            }
        },
    )
    .await
}

fn modify_status(h: &Harness) -> Option<(String, Option<String>)> {
    let s = h.claim().status?.modify_volume_status?;
    Some((s.status, s.target_volume_attributes_class_name))
}

fn current(h: &Harness) -> Option<String> {
    h.claim().status?.current_volume_attributes_class_name
}

fn modify_calls(h: &Harness) -> u64 {
    h.driver.calls(Method::ControllerModifyVolume)
}

fn volume_parameters(h: &Harness) -> BTreeMap<String, String> {
    h.driver
        .state()
        .volumes
        .into_values()
        .next()
        .unwrap()
        .mutable_parameters
        .into_iter()
        .collect()
}

#[tokio::test]
async fn a_class_change_is_applied_pv_first() {
    let h = start(
        "gold",
        Some("silver"),
        &[("gold", &[("iops", "500")]), ("silver", &[("iops", "100")])],
        Duration::from_secs(1),
    )
    .await;
    eventually("the class to be current", || {
        current(&h).as_deref() == Some("gold")
    })
    .await;
    assert_eq!(modify_status(&h), None);
    assert!(h.conditions().is_empty(), "{:?}", h.conditions());
    assert_eq!(
        h.pv().spec.unwrap().volume_attributes_class_name.as_deref(),
        Some("gold")
    );
    assert_eq!(
        h.writes("/persistentvolume"),
        vec![
            "PATCH /api/v1/namespaces/ns/persistentvolumeclaims/c/status",
            "PATCH /api/v1/persistentvolumes/pv",
            "PATCH /api/v1/namespaces/ns/persistentvolumeclaims/c/status",
        ],
        "InProgress, then the PV, then the claim"
    );
    assert_eq!(modify_calls(&h), 1);
    assert_eq!(
        volume_parameters(&h).get("iops").map(String::as_str),
        Some("500")
    );
    eventually("the events", || {
        h.has_event("VolumeModify/Modify: external resizer is modifying volume c with vac gold")
            && h.has_event(
                "VolumeModifySuccessful/Modify: external resizer modified volume c with vac gold successfully",
            )
    })
    .await;
}

#[tokio::test]
async fn a_refused_class_is_infeasible_held_back_and_rolled_back() {
    let h = start(
        "fast",
        Some("silver"),
        &[
            ("fast", &[("speed", "max")]),
            ("silver", &[("iops", "100")]),
        ],
        Duration::from_secs(60),
    )
    .await;
    eventually("Infeasible", || {
        modify_status(&h) == Some((MODIFY_INFEASIBLE.into(), Some("fast".into())))
    })
    .await;
    assert_eq!(
        h.conditions(),
        vec![
            (COND_MODIFYING_VOLUME.to_string(), None),
            (
                COND_MODIFY_VOLUME_ERROR.to_string(),
                Some("InvalidArgument".to_string())
            ),
        ]
    );
    eventually("the failure event", || {
        h.has_event("VolumeModifyFailed/ModifyInfeasible: rpc error: code = InvalidArgument")
    })
    .await;
    // Held back for --retry-interval-max (a minute here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(modify_calls(&h), 1, "no retry within the slow period");
    // The user goes back to the current class: applied at once, the error cleared.
    let mut c: PersistentVolumeClaim = h.claim();
    c.spec.as_mut().unwrap().volume_attributes_class_name = Some("silver".into());
    h.api.insert(&c);
    eventually("the rollback to finish", || modify_status(&h).is_none()).await;
    assert_eq!(current(&h).as_deref(), Some("silver"));
    assert!(h.conditions().is_empty(), "{:?}", h.conditions());
    assert_eq!(modify_calls(&h), 2);
    assert!(
        h.metrics
            .encode()
            .lines()
            .any(|l| l == "csi_resizer_failures_total{class=\"ModifyInfeasible\"} 1"),
        "{}",
        h.metrics.encode()
    );
}

#[tokio::test]
async fn a_missing_class_is_pending_until_it_is_created() {
    let h = start("later", None, &[], Duration::from_secs(1)).await;
    eventually("Pending", || {
        modify_status(&h).map(|(s, _)| s).as_deref() == Some(MODIFY_PENDING)
    })
    .await;
    eventually("the missing-class event", || {
        h.has_event("VolumeModifyFailed/Modify: VAC \"later\" does not exist.")
    })
    .await;
    assert_eq!(modify_calls(&h), 0);
    h.api.insert(&class("later", &h.name, &[("tier", "gold")]));
    eventually("the class to be current", || {
        current(&h).as_deref() == Some("later")
    })
    .await;
    assert_eq!(modify_status(&h), None);
    assert_eq!(
        volume_parameters(&h).get("tier").map(String::as_str),
        Some("gold")
    );
}

#[tokio::test]
async fn a_transient_error_keeps_the_target_until_it_resolves() {
    let h = start(
        "gold",
        None,
        &[
            ("gold", &[("iops", "500")]),
            ("platinum", &[("iops", "900")]),
        ],
        Duration::from_secs(1),
    )
    .await;
    h.driver.inject(
        Method::ControllerModifyVolume,
        Fault::error(Code::Unavailable, "backend busy")
            .with_delay(Duration::from_millis(300))
            .times(2),
    );
    eventually("the transient failure", || {
        h.has_event("VolumeModifyFailed/ModifyTransientError: rpc error: code = Unavailable desc = backend busy. Still modifying to VAC gold")
    })
    .await;
    // The user changes the class meanwhile: the uncertain attempt to gold is finished first.
    let mut c: PersistentVolumeClaim = h.claim();
    c.spec.as_mut().unwrap().volume_attributes_class_name = Some("platinum".into());
    h.api.insert(&c);
    eventually("platinum to be current", || {
        current(&h).as_deref() == Some("platinum")
    })
    .await;
    // The success Event follows the status write (as upstream's): wait for it too.
    eventually("the platinum success event", || {
        h.has_event("VolumeModifySuccessful/Modify: external resizer modified volume c with vac platinum successfully")
    })
    .await;
    let events = h.events();
    let gold_done = events
        .iter()
        .position(|e| e.contains("with vac gold successfully"));
    let platinum_done = events
        .iter()
        .position(|e| e.contains("with vac platinum successfully"));
    assert!(
        gold_done.is_some() && gold_done < platinum_done,
        "gold finished before platinum: {events:?}"
    );
    assert_eq!(
        volume_parameters(&h).get("iops").map(String::as_str),
        Some("900")
    );
}
