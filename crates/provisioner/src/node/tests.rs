//! Node deployment: which claims a node takes, how long it waits to compete, what it deletes.

use super::*;
use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorTerm, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::core::v1::{TopologySelectorLabelRequirement, TopologySelectorTerm};
use kube::api::ObjectMeta;
use rstest::rstest;

const ZONE: &str = "topology.example/zone";

fn nd() -> NodeDeployment {
    NodeDeployment {
        node: "node-a".into(),
        segment: BTreeMap::from([(ZONE.to_string(), "a".to_string())]),
        immediate_binding: true,
        base_delay: Duration::from_secs(20),
        max_delay: Duration::from_secs(60),
    }
}

fn pvc(selected: Option<&str>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("c".into()),
            namespace: Some("ns".into()),
            annotations: selected.map(|n| {
                BTreeMap::from([(
                    "volume.kubernetes.io/selected-node".to_string(),
                    n.to_string(),
                )])
            }),
            ..ObjectMeta::default()
        },
        ..PersistentVolumeClaim::default()
    }
}

fn class(mode: &str, allowed_zone: Option<&str>) -> StorageClass {
    StorageClass {
        provisioner: "d".into(),
        volume_binding_mode: Some(mode.into()),
        allowed_topologies: allowed_zone.map(|z| {
            vec![TopologySelectorTerm {
                match_label_expressions: Some(vec![TopologySelectorLabelRequirement {
                    key: ZONE.into(),
                    values: vec![z.into()],
                }]),
            }]
        }),
        ..StorageClass::default()
    }
}

fn kind(o: &Ownership) -> &'static str {
    match o {
        Ownership::Mine => "mine",
        Ownership::NotMine(_) => "not-mine",
        Ownership::Compete => "compete",
    }
}

#[rstest]
#[case::selected_here(Some("node-a"), "WaitForFirstConsumer", None, true, "mine")]
#[case::selected_elsewhere(Some("node-b"), "WaitForFirstConsumer", None, true, "not-mine")]
#[case::late_binding_no_node_yet(None, "WaitForFirstConsumer", None, true, "not-mine")]
#[case::immediate(None, "Immediate", None, true, "compete")]
#[case::immediate_not_competed_for(None, "Immediate", None, false, "not-mine")]
#[case::immediate_allowed_here(None, "Immediate", Some("a"), true, "compete")]
#[case::immediate_allowed_elsewhere(None, "Immediate", Some("b"), true, "not-mine")]
#[case::immediate_but_selected_elsewhere(Some("node-b"), "Immediate", None, true, "not-mine")]
fn ownership_cases(
    #[case] selected: Option<&str>,
    #[case] mode: &str,
    #[case] allowed: Option<&str>,
    #[case] immediate_binding: bool,
    #[case] want: &str,
) {
    let nd = NodeDeployment {
        immediate_binding,
        ..nd()
    };
    let got = ownership(&pvc(selected), &class(mode, allowed), &nd, "d");
    assert_eq!(kind(&got), want, "{got:?}");
}

#[test]
fn the_not_mine_message_is_upstreams() {
    let got = ownership(&pvc(Some("node-b")), &class("Immediate", None), &nd(), "d");
    assert_eq!(
        got,
        Ownership::NotMine(
            "not responsible for provisioning of PVC ns/c because it is not assigned to node \"node-a\""
                .into()
        )
    );
}

#[rstest]
#[case::first_try_no_jitter(0, 0.0, 20)]
#[case::first_try_full_jitter(0, 0.999_999, 0)]
#[case::second_try(1, 0.0, 40)]
#[case::capped(5, 0.0, 60)]
#[case::capped_with_jitter(5, 0.5, 50)]
fn compete_delays(#[case] failures: u32, #[case] jitter: f64, #[case] want_secs: u64) {
    let got = compete_delay(&nd(), failures, jitter);
    assert_eq!(got.as_secs(), want_secs, "{got:?}");
}

fn pv(zone: Option<&str>) -> PersistentVolume {
    PersistentVolume {
        spec: Some(PersistentVolumeSpec {
            node_affinity: zone.map(|z| VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: ZONE.into(),
                            operator: "In".into(),
                            values: Some(vec![z.into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    }
}

#[rstest]
#[case::this_nodes_volume(Some("a"), true)]
#[case::another_nodes_volume(Some("b"), false)]
#[case::no_affinity_every_node(None, true)]
fn what_a_node_deletes(#[case] zone: Option<&str>, #[case] want: bool) {
    assert_eq!(deletes(&pv(zone), &nd()), want);
}

fn pv_with(key: &str, operator: &str, values: &[&str]) -> PersistentVolume {
    let mut pv = pv(Some("a"));
    let term = &mut pv
        .spec
        .as_mut()
        .unwrap()
        .node_affinity
        .as_mut()
        .unwrap()
        .required
        .as_mut()
        .unwrap()
        .node_selector_terms[0];
    term.match_expressions = Some(vec![NodeSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }]);
    pv
}

/// Issue 10, item 8: as upstream's MatchNodeSelectorTerms.
#[rstest]
#[case::gt_above("rack", "Gt", &["3"], true)]
#[case::gt_equal("rack", "Gt", &["5"], false)]
#[case::lt_below("rack", "Lt", &["9"], true)]
#[case::lt_not_a_number("rack", "Lt", &["x"], false)]
#[case::gt_label_missing("row", "Gt", &["1"], false)]
fn numeric_operators(
    #[case] key: &str,
    #[case] operator: &str,
    #[case] values: &[&str],
    #[case] want: bool,
) {
    let mut node = nd();
    node.segment.insert("rack".into(), "5".into());
    assert_eq!(deletes(&pv_with(key, operator, values), &node), want);
}

#[test]
fn a_node_without_topology_deletes_every_volume() {
    let mut node = nd();
    node.segment.clear();
    assert!(deletes(&pv(Some("b")), &node));
}
