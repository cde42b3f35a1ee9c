//! Capacity tracking's pure part: segments, items, object shape, updates, obsolete objects.

use super::*;
use k8s_openapi::api::storage::v1::{CSINodeDriver, CSINodeSpec};
use rstest::rstest;

const DRIVER: &str = "d";

fn csinode(name: &str, keys: Option<&[&str]>) -> CSINode {
    CSINode {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: CSINodeSpec {
            drivers: vec![CSINodeDriver {
                name: DRIVER.into(),
                node_id: name.into(),
                topology_keys: keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
                allocatable: None,
            }],
        },
        ..CSINode::default()
    }
}

fn labels(pairs: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|(n, l)| {
            (
                n.to_string(),
                l.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect()
}

fn seg(pairs: &[(&str, &str)]) -> Segment {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        provisioner: provisioner.into(),
        volume_binding_mode: Some(mode.into()),
        ..StorageClass::default()
    }
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "csi".into(),
        uid: "owner-uid".into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

#[test]
fn fnv1a_reference_values() {
    // Go: fnv.New32a() over "", "a", "foobar".
    assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
    assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
    assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
}

#[rstest]
#[case::central(None, "external-provisioner".into())]
#[case::short_node(Some("node01".into()), "external-provisioner-node01".into())]
#[case::exactly_63(Some("n".repeat(42)), format!("external-provisioner-{}", "n".repeat(42)))]
fn managed_by_values(#[case] node: Option<String>, #[case] want: String) {
    assert_eq!(managed_by(node.as_deref()), want);
}

#[test]
fn long_node_names_are_shortened_as_upstream() {
    // 43 characters: the base is cut to 10, then the base's hash, then the node name.
    let node = "n".repeat(43);
    let got = managed_by(Some(&node));
    let hash = format!("{:08x}", fnv1a_32(b"external-provisioner"));
    assert_eq!(got, format!("external-p-{hash}-{node}"));
    assert_eq!(got.len(), 63);
    // 53 or more: the base and the hash of the whole name.
    let node = "m".repeat(60);
    let got = managed_by(Some(&node));
    let whole = format!("external-provisioner-{node}");
    assert_eq!(
        got,
        format!("external-provisioner-{:08x}", fnv1a_32(whole.as_bytes()))
    );
}

#[test]
fn segments_follow_csinodes_and_node_labels() {
    let zone = "topology.example/zone";
    let a = csinode("a", Some(&[zone]));
    let b = csinode("b", Some(&[zone]));
    let c = csinode("c", Some(&[zone])); // no Node
    let d = csinode("d", Some(&[zone])); // Node without the label
    let mut other = csinode("e", Some(&[zone]));
    other.spec.drivers[0].name = "other".into();
    let nodes = labels(&[
        ("a", &[(zone, "z1")]),
        ("b", &[(zone, "z2")]),
        ("d", &[("unrelated", "x")]),
        ("e", &[(zone, "z9")]),
    ]);
    let got = segments(&[&a, &b, &c, &d, &other], &nodes, DRIVER);
    assert_eq!(
        got,
        BTreeSet::from([seg(&[(zone, "z1")]), seg(&[(zone, "z2")])])
    );
}

#[test]
fn a_driver_without_topology_has_one_empty_segment_and_none_without_nodes() {
    let a = csinode("a", None);
    let b = csinode("b", Some(&[]));
    assert_eq!(
        segments(&[&a, &b], &BTreeMap::new(), DRIVER),
        BTreeSet::from([Segment::new()])
    );
    assert!(segments(&[], &BTreeMap::new(), DRIVER).is_empty());
}

#[rstest]
#[case::wffc_only(false, vec!["late"])]
#[case::immediate_too(true, vec!["late", "now"])]
fn items_per_class_and_segment(#[case] immediate_too: bool, #[case] classes: Vec<&str>) {
    let late = class("late", DRIVER, "WaitForFirstConsumer");
    let now = class("now", DRIVER, "Immediate");
    let foreign = class("foreign", "other", "WaitForFirstConsumer");
    let segs = BTreeSet::from([seg(&[("z", "1")]), seg(&[("z", "2")])]);
    let got = items(&segs, &[&late, &now, &foreign], DRIVER, immediate_too);
    assert_eq!(got.len(), classes.len() * 2);
    for c in classes {
        for s in &segs {
            assert!(got.contains(&Item {
                class: c.into(),
                segment: s.clone()
            }));
        }
    }
}

fn reported(capacity: i64, maximum: Option<i64>) -> Reported {
    Reported { capacity, maximum }
}

fn item() -> Item {
    Item {
        class: "late".into(),
        segment: seg(&[("z", "1")]),
    }
}

#[test]
fn a_new_object_has_upstreams_shape() {
    let o = new_object(
        &item(),
        reported(1 << 40, Some(1 << 30)),
        DRIVER,
        MANAGED_BY,
        Some(&owner()),
    );
    assert_eq!(o.metadata.generate_name.as_deref(), Some("csisc-"));
    let l = o.metadata.labels.clone().unwrap();
    assert_eq!(l[LABEL_DRIVER], DRIVER);
    assert_eq!(l[LABEL_MANAGED_BY], "external-provisioner");
    assert_eq!(o.storage_class_name, "late");
    assert_eq!(
        o.node_topology.as_ref().unwrap().match_labels,
        Some(seg(&[("z", "1")]))
    );
    assert_eq!(o.capacity, Some(Quantity("1Ti".into())));
    assert_eq!(o.maximum_volume_size, Some(Quantity("1Gi".into())));
    assert_eq!(o.metadata.owner_references, Some(vec![owner()]));
    assert_eq!(item_of(&o), Some(item()));
}

#[test]
fn updates_only_when_something_differs() {
    let o = new_object(
        &item(),
        reported(1000, None),
        DRIVER,
        MANAGED_BY,
        Some(&owner()),
    );
    assert_eq!(update(&o, reported(1000, None), Some(&owner())), None);
    let p = update(&o, reported(2048, None), Some(&owner())).unwrap();
    assert_eq!(p["capacity"], "2Ki");
    assert!(p["metadata"].get("ownerReferences").is_none());
    let p = update(&o, reported(1000, Some(1 << 20)), Some(&owner())).unwrap();
    assert_eq!(p["maximumVolumeSize"], "1Mi");
    // Capacity 0 is published like any other value.
    assert!(update(&o, reported(0, None), Some(&owner())).is_some());
    // A missing owner is appended to the others.
    let bare = new_object(&item(), reported(1000, None), DRIVER, MANAGED_BY, None);
    let p = update(&bare, reported(1000, None), Some(&owner())).unwrap();
    assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "owner-uid");
    assert_eq!(update(&bare, reported(1000, None), None), None);
}

#[test]
fn duplicates_and_objects_without_an_item_are_obsolete() {
    let keep = new_object(&item(), reported(1, None), DRIVER, MANAGED_BY, None);
    let twin = keep.clone();
    let mut gone = keep.clone();
    gone.storage_class_name = "deleted-class".into();
    let mut odd = keep.clone();
    odd.node_topology.as_mut().unwrap().match_expressions = Some(vec![Default::default()]);
    let items = BTreeSet::from([item()]);
    let (assigned, obsolete) = assign(
        [("a", &keep), ("b", &twin), ("c", &gone), ("d", &odd)],
        &items,
    );
    assert_eq!(assigned, BTreeMap::from([(item(), "a".to_string())]));
    assert_eq!(obsolete, vec!["b", "c", "d"]);
}
