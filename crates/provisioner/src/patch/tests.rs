use super::*;

fn text(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn claim_patches_name_the_uid() {
    assert_eq!(
        text(&unselect_node(Some("u1"))),
        r#"{"metadata":{"annotations":{"volume.kubernetes.io/selected-node":null},"uid":"u1"}}"#
    );
    assert_eq!(
        text(&strip_intent(Some("u1"))),
        r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["provisioner.csi-controller-manager.io/volume-intent"],"annotations":{"provisioner.csi-controller-manager.io/volume-intent":null},"uid":"u1"}}"#
    );
    assert_eq!(
        text(&remove_clone_protection(Some("u2"))),
        r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["provisioner.storage.kubernetes.io/cloning-protection"],"uid":"u2"}}"#
    );
    assert_eq!(
        text(&add_clone_protection()),
        r#"{"metadata":{"finalizers":["provisioner.storage.kubernetes.io/cloning-protection"]}}"#
    );
}

#[test]
fn node_selection_is_conditioned_on_the_resource_version() {
    assert_eq!(
        text(&select_node(Some("42"), "node-a")),
        r#"{"metadata":{"annotations":{"volume.kubernetes.io/selected-node":"node-a"},"resourceVersion":"42"}}"#
    );
}

#[test]
fn pv_finalizer_is_added_and_removed_without_touching_others() {
    assert_eq!(
        text(&pv_finalizer(Some("p1"), true)),
        r#"{"metadata":{"finalizers":["external-provisioner.volume.kubernetes.io/finalizer"],"uid":"p1"}}"#
    );
    assert_eq!(
        text(&pv_finalizer(Some("p1"), false)),
        r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["external-provisioner.volume.kubernetes.io/finalizer"],"uid":"p1"}}"#
    );
}

#[test]
fn snapshot_protection_keeps_other_finalizers_and_the_version() {
    let others = vec!["snapshot.storage.kubernetes.io/volumesnapshot-bound-protection".to_string()];
    let on = snapshot_source_protection(&others, Some("7"), true).expect("added");
    assert_eq!(
        text(&on),
        r#"{"metadata":{"finalizers":["snapshot.storage.kubernetes.io/volumesnapshot-bound-protection","provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection"],"resourceVersion":"7"}}"#
    );
    assert_eq!(snapshot_source_protection(&others, Some("7"), false), None);

    let with = vec![
        FINALIZER_SNAPSHOT_SOURCE_PROTECTION.to_string(),
        others[0].clone(),
    ];
    assert_eq!(snapshot_source_protection(&with, Some("8"), true), None);
    let off = snapshot_source_protection(&with, Some("8"), false).expect("removed");
    assert_eq!(
        text(&off),
        r#"{"metadata":{"finalizers":["snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"],"resourceVersion":"8"}}"#
    );
    let last = snapshot_source_protection(&with[..1], None, false).expect("removed");
    assert_eq!(
        text(&last),
        r#"{"metadata":{"finalizers":[],"resourceVersion":null}}"#
    );
}
