//! Topology: the CreateVolume accessibility requirements (upstream `GenerateAccessibilityRequirements`,
//! `pkg/controller/topology.go`) and the PV node affinity (`GenerateVolumeNodeAffinity`).
//!
//! Pure: CSINodes and Nodes come in as plain maps. Requisite terms are sorted (shorter first, then
//! key by key, value by value) and de-duplicated, so the same cluster always gives byte-identical
//! arguments; across retries the recorded intent (see `intent.rs`) replays the exact request, which
//! replaces upstream's per-claim in-memory cache.
//!
//! Deliberate differences: for immediate binding upstream takes the topology keys of a *random*
//! CSINode; we take those of the first CSINode (by name) that has keys, so the choice is stable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, TopologySelectorTerm,
    VolumeNodeAffinity,
};

/// One topology term: segments AND-ed together, sorted by key.
pub type Term = Vec<(String, String)>;

/// What the cluster says about topology, for one driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterTopology {
    /// Per CSINode (node name): this driver's topology keys; empty when the driver is not
    /// registered there or reports none. A node without a CSINode is absent.
    pub csinode_keys: BTreeMap<String, Vec<String>>,
    /// Per Node: its labels.
    pub node_labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// The accessibility requirements of a CreateVolume request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Where the volume must be accessible (OR of terms).
    pub requisite: Vec<Term>,
    /// Where it should be, in order.
    pub preferred: Vec<Term>,
}

/// The inputs of [`requirements`].
#[derive(Clone, Copy, Debug)]
pub struct TopologyInput<'a> {
    /// The driver name.
    pub driver: &'a str,
    /// The claim name (for the StatefulSet spreading hash).
    pub pvc_name: &'a str,
    /// The StorageClass's `allowedTopologies`.
    pub allowed: &'a [TopologySelectorTerm],
    /// The selected node, if any.
    pub selected_node: Option<&'a str>,
    /// `--strict-topology`.
    pub strict: bool,
    /// `--immediate-topology`.
    pub immediate: bool,
    /// The cluster.
    pub cluster: &'a ClusterTopology,
}

/// Why no requirement could be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// The selected node's CSINode does not exist: give the claim back to the scheduler.
    Reschedule(String),
    /// Anything else: retry (upstream wraps it in "error generating accessibility requirements").
    Other(String),
}

/// Go's `%v` of a term: `[{k1 v1} {k2 v2}]`.
fn fmt_term(t: &Term) -> String {
    let parts: Vec<String> = t.iter().map(|(k, v)| format!("{{{k} {v}}}")).collect();
    format!("[{}]", parts.join(" "))
}

fn fmt_terms(ts: &[Term]) -> String {
    let parts: Vec<String> = ts.iter().map(fmt_term).collect();
    format!("[{}]", parts.join(" "))
}

fn fmt_list(l: &[String]) -> String {
    format!("[{}]", l.join(" "))
}

fn fmt_map(m: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", parts.join(" "))
}

/// The segment of `labels` for `keys`, sorted; `None` if a key is missing.
fn extract(labels: &BTreeMap<String, String>, keys: &[String]) -> Option<Term> {
    let mut term: Term = keys
        .iter()
        .map(|k| labels.get(k).map(|v| (k.clone(), v.clone())))
        .collect::<Option<_>>()?;
    term.sort();
    Some(term)
}

/// Upstream `topologyTerm.compare`.
fn compare(a: &Term, b: &Term) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Upstream `topologyTerm.subset`: every segment of `t` is in `other` (both sorted).
fn subset(t: &Term, other: &Term) -> bool {
    if t.is_empty() {
        return true;
    }
    let mut j = 0;
    for (k2, v2) in other {
        let (k1, v1) = &t[j];
        if k1 != k2 {
            continue;
        }
        if v1 != v2 {
            return false;
        }
        j += 1;
        if j == t.len() {
            return true;
        }
    }
    false
}

/// Upstream `flatten`: each selector term expanded into the product of its values.
pub fn flatten(allowed: &[TopologySelectorTerm]) -> Vec<Term> {
    let mut out = Vec::new();
    for selector in allowed {
        let mut old: Vec<Term> = Vec::new();
        for expr in selector.match_label_expressions.iter().flatten() {
            let mut new = Vec::new();
            for v in &expr.values {
                if old.is_empty() {
                    new.push(vec![(expr.key.clone(), v.clone())]);
                } else {
                    for t in &old {
                        let mut t = t.clone();
                        t.push((expr.key.clone(), v.clone()));
                        new.push(t);
                    }
                }
            }
            old = new;
        }
        out.extend(old);
    }
    for t in &mut out {
        t.sort();
    }
    out
}

/// 32-bit FNV-1 (Go `hash/fnv.New32`, not FNV-1a).
pub fn fnv1_32(data: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in data {
        h = h.wrapping_mul(16_777_619);
        h ^= u32::from(*b);
    }
    h
}

/// Upstream `getPVCNameHashAndIndexOffset`: StatefulSet-style names `<claim>-<set>-<n>` hash
/// `<set>` and offset by `n`, so replicas spread over the terms.
pub fn name_hash_and_index(pvc_name: &str) -> (u32, u32) {
    let mut hash_string = pvc_name;
    let mut index = 0;
    if let Some(last) = pvc_name.rfind('-') {
        let id = &pvc_name[last + 1..];
        // Go's ParseUint(id, 10, 32): digits only, no sign, fits 32 bits.
        if !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = id.parse::<u32>()
        {
            index = n;
            hash_string = &pvc_name[..last];
            if let Some(last) = hash_string.rfind('-') {
                hash_string = &hash_string[last + 1..];
            }
        }
    }
    (fnv1_32(hash_string.as_bytes()), index)
}

/// Upstream `GenerateAccessibilityRequirements`. `Ok(None)`: send no requirement.
pub fn requirements(input: &TopologyInput<'_>) -> Result<Option<Requirement>, TopologyError> {
    let cluster = input.cluster;
    let mut selected_topology: Term = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut requisite: Vec<Term> = Vec::new();

    if let Some(node) = input.selected_node {
        let Some(node_keys) = cluster.csinode_keys.get(node) else {
            return Err(TopologyError::Reschedule(format!(
                "failed to get selected CSINode {node}: csinode.storage.k8s.io \"{node}\" not found"
            )));
        };
        keys = node_keys.clone();
        if keys.is_empty() {
            return Err(TopologyError::Other(format!(
                "no topology key found for node {node}"
            )));
        }
        let labels = cluster.node_labels.get(node);
        selected_topology = match labels.and_then(|l| extract(l, &keys)) {
            Some(t) => t,
            None => {
                let shown = labels.map(fmt_map).unwrap_or_else(|| "map[]".to_string());
                return Err(TopologyError::Other(format!(
                    "topology labels from selected node {shown} does not match topology keys from CSINode {}",
                    fmt_list(&keys)
                )));
            }
        };
        if input.strict {
            if !input.allowed.is_empty() {
                let flat = flatten(input.allowed);
                if !flat.iter().any(|t| subset(t, &selected_topology)) {
                    return Err(TopologyError::Other(format!(
                        "selected node '\"{node}\"' topology '{}' is not in allowed topologies: {}",
                        fmt_term(&selected_topology),
                        fmt_terms(&flat)
                    )));
                }
            }
            requisite.push(selected_topology.clone());
        }
    }

    if requisite.is_empty() {
        if !input.allowed.is_empty() {
            requisite = flatten(input.allowed);
        } else {
            if input.selected_node.is_none() && !input.immediate {
                return Ok(None);
            }
            if input.selected_node.is_none() {
                // Immediate binding: the keys of a node where the driver registered them.
                match cluster.csinode_keys.values().find(|k| !k.is_empty()) {
                    Some(k) => keys = k.clone(),
                    // No node has registered keys: upstream logs a warning, then fails below.
                    None => keys.clear(),
                }
            }
            if !keys.is_empty() {
                requisite = cluster
                    .node_labels
                    .values()
                    .filter_map(|labels| extract(labels, &keys))
                    .filter(|t| !t.is_empty())
                    .collect();
                if requisite.is_empty() {
                    return Err(TopologyError::Other(format!(
                        "topologyKeys {} were not found on any nodes",
                        fmt_list(&keys)
                    )));
                }
            }
            if requisite.is_empty() {
                return Err(TopologyError::Other(
                    "no available topology found".to_string(),
                ));
            }
        }
    }
    if requisite.is_empty() {
        return Ok(None);
    }

    requisite.sort_by(compare);
    requisite.dedup();

    let preferred: Vec<Term> = match input.selected_node {
        None => {
            let (hash, index) = name_hash_and_index(input.pvc_name);
            let len = u32::try_from(requisite.len()).unwrap_or(u32::MAX);
            let i = (hash.wrapping_add(index) % len) as usize;
            rotate(&requisite, i)
        }
        Some(_) if input.strict => requisite.clone(),
        Some(node) => match requisite.iter().position(|t| subset(t, &selected_topology)) {
            Some(i) => rotate(&requisite, i),
            None => {
                return Err(TopologyError::Other(format!(
                    "topology {} from selected node \"{node}\" is not in requisite: {}",
                    fmt_term(&selected_topology),
                    fmt_terms(&requisite)
                )));
            }
        },
    };
    // Terms without segments are not sent.
    let non_empty = |v: Vec<Term>| v.into_iter().filter(|t| !t.is_empty()).collect();
    Ok(Some(Requirement {
        requisite: non_empty(requisite),
        preferred: non_empty(preferred),
    }))
}

fn rotate(terms: &[Term], i: usize) -> Vec<Term> {
    terms[i..].iter().chain(&terms[..i]).cloned().collect()
}

/// Upstream `GenerateVolumeNodeAffinity`: one node selector term per non-empty accessible
/// topology, one `In` expression per segment (sorted by key; upstream's order is random).
pub fn node_affinity(accessible: &[BTreeMap<String, String>]) -> Option<VolumeNodeAffinity> {
    if accessible.is_empty() {
        return None;
    }
    let terms: Vec<NodeSelectorTerm> = accessible
        .iter()
        .filter(|segments| !segments.is_empty())
        .map(|segments| NodeSelectorTerm {
            match_expressions: Some(
                segments
                    .iter()
                    .map(|(k, v)| NodeSelectorRequirement {
                        key: k.clone(),
                        operator: "In".to_string(),
                        values: Some(vec![v.clone()]),
                    })
                    .collect(),
            ),
            match_fields: None,
        })
        .collect();
    Some(VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: terms,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::TopologySelectorLabelRequirement;

    fn term(pairs: &[(&str, &str)]) -> Term {
        let mut t: Term = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        t.sort();
        t
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(exprs: &[(&str, &[&str])]) -> TopologySelectorTerm {
        TopologySelectorTerm {
            match_label_expressions: Some(
                exprs
                    .iter()
                    .map(|(k, vs)| TopologySelectorLabelRequirement {
                        key: k.to_string(),
                        values: vs.iter().map(|v| v.to_string()).collect(),
                    })
                    .collect(),
            ),
        }
    }

    /// Three nodes in zones a, b, c; node-x has no zone label; node-d has no CSINode.
    fn cluster() -> ClusterTopology {
        let keys = vec!["zone".to_string()];
        ClusterTopology {
            csinode_keys: [
                ("node-a", keys.clone()),
                ("node-b", keys.clone()),
                ("node-c", keys.clone()),
                ("node-x", keys.clone()),
                ("node-nokeys", vec![]),
            ]
            .into_iter()
            .map(|(n, k)| (n.to_string(), k))
            .collect(),
            node_labels: [
                ("node-a", labels(&[("zone", "a"), ("other", "1")])),
                ("node-b", labels(&[("zone", "b")])),
                ("node-c", labels(&[("zone", "c")])),
                ("node-c2", labels(&[("zone", "c")])),
                ("node-x", labels(&[("other", "2")])),
                ("node-d", labels(&[("zone", "d")])),
            ]
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect(),
        }
    }

    fn input<'a>(
        cluster: &'a ClusterTopology,
        allowed: &'a [TopologySelectorTerm],
        node: Option<&'a str>,
        strict: bool,
        immediate: bool,
    ) -> TopologyInput<'a> {
        TopologyInput {
            driver: "d",
            pvc_name: "data-web-0",
            allowed,
            selected_node: node,
            strict,
            immediate,
            cluster,
        }
    }

    fn zones(ts: &[Term]) -> Vec<String> {
        ts.iter().map(|t| t[0].1.clone()).collect()
    }

    #[test]
    fn fnv1_is_not_fnv1a() {
        // Reference values of Go's fnv.New32 (FNV-1).
        assert_eq!(fnv1_32(b""), 0x811c9dc5);
        assert_eq!(fnv1_32(b"a"), 0x050c5d7e);
        assert_eq!(fnv1_32(b"foobar"), 0x31f0b262);
    }

    #[test]
    fn statefulset_names_hash_the_set_and_offset_by_ordinal() {
        assert_eq!(name_hash_and_index("data-web-3"), (fnv1_32(b"web"), 3));
        assert_eq!(name_hash_and_index("web-3"), (fnv1_32(b"web"), 3));
        assert_eq!(name_hash_and_index("claim"), (fnv1_32(b"claim"), 0));
        assert_eq!(name_hash_and_index("a-b-+3"), (fnv1_32(b"a-b-+3"), 0));
        assert_eq!(name_hash_and_index("a-"), (fnv1_32(b"a-"), 0));
        assert_eq!(
            name_hash_and_index("a-99999999999"),
            (fnv1_32(b"a-99999999999"), 0)
        );
    }

    #[test]
    fn immediate_binding_aggregates_all_labelled_nodes_sorted_and_deduplicated() {
        let c = cluster();
        let r = requirements(&input(&c, &[], None, false, true))
            .unwrap()
            .unwrap();
        assert_eq!(zones(&r.requisite), ["a", "b", "c", "d"]);
        let (hash, index) = name_hash_and_index("data-web-0");
        let i = (hash.wrapping_add(index) % 4) as usize;
        let mut want = vec!["a", "b", "c", "d"];
        want.rotate_left(i);
        assert_eq!(zones(&r.preferred), want);
        // Byte-stable: the same input always gives the same answer.
        assert_eq!(
            requirements(&input(&c, &[], None, false, true)).unwrap(),
            Some(r)
        );
    }

    #[test]
    fn statefulset_replicas_rotate_the_preferred_order() {
        let c = cluster();
        let first = |name: &'static str| {
            let mut i = input(&c, &[], None, false, true);
            i.pvc_name = name;
            requirements(&i).unwrap().unwrap().preferred[0][0].1.clone()
        };
        let got: Vec<String> = ["data-web-0", "data-web-1", "data-web-2", "data-web-3"]
            .into_iter()
            .map(first)
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["a", "b", "c", "d"],
            "replicas spread over every zone"
        );
    }

    #[test]
    fn immediate_topology_off_sends_nothing() {
        let c = cluster();
        assert_eq!(requirements(&input(&c, &[], None, false, false)), Ok(None));
    }

    #[test]
    fn allowed_topologies_are_flattened() {
        let c = cluster();
        let allowed = [
            selector(&[("zone", &["z2", "z1"]), ("rack", &["r1", "r2"])]),
            selector(&[("zone", &["z0"])]),
        ];
        let r = requirements(&input(&c, &allowed, None, false, false))
            .unwrap()
            .unwrap();
        assert_eq!(
            r.requisite,
            vec![
                term(&[("zone", "z0")]),
                // Within a term segments sort by key, so "rack" compares first.
                term(&[("zone", "z1"), ("rack", "r1")]),
                term(&[("zone", "z2"), ("rack", "r1")]),
                term(&[("zone", "z1"), ("rack", "r2")]),
                term(&[("zone", "z2"), ("rack", "r2")]),
            ]
        );
    }

    #[test]
    fn selected_node_comes_first_in_preferred() {
        let c = cluster();
        let r = requirements(&input(&c, &[], Some("node-c"), false, true))
            .unwrap()
            .unwrap();
        assert_eq!(zones(&r.requisite), ["a", "b", "c", "d"]);
        assert_eq!(zones(&r.preferred), ["c", "d", "a", "b"]);
    }

    #[test]
    fn strict_topology_sends_only_the_selected_segment() {
        let c = cluster();
        let r = requirements(&input(&c, &[], Some("node-b"), true, true))
            .unwrap()
            .unwrap();
        assert_eq!(zones(&r.requisite), ["b"]);
        assert_eq!(r.preferred, r.requisite);
        let allowed = [selector(&[("zone", &["a"])])];
        let err = requirements(&input(&c, &allowed, Some("node-b"), true, true)).unwrap_err();
        assert_eq!(
            err,
            TopologyError::Other(
                "selected node '\"node-b\"' topology '[{zone b}]' is not in allowed topologies: [[{zone a}]]".into()
            )
        );
    }

    #[test]
    fn selected_node_outside_allowed_topologies_is_an_error() {
        let c = cluster();
        let allowed = [selector(&[("zone", &["a"])])];
        let err = requirements(&input(&c, &allowed, Some("node-b"), false, true)).unwrap_err();
        assert_eq!(
            err,
            TopologyError::Other(
                "topology [{zone b}] from selected node \"node-b\" is not in requisite: [[{zone a}]]"
                    .into()
            )
        );
    }

    #[test]
    fn selected_node_errors() {
        let c = cluster();
        assert_eq!(
            requirements(&input(&c, &[], Some("node-d"), false, true)),
            Err(TopologyError::Reschedule(
                "failed to get selected CSINode node-d: csinode.storage.k8s.io \"node-d\" not found"
                    .into()
            ))
        );
        assert_eq!(
            requirements(&input(&c, &[], Some("node-nokeys"), false, true)),
            Err(TopologyError::Other(
                "no topology key found for node node-nokeys".into()
            ))
        );
        assert_eq!(
            requirements(&input(&c, &[], Some("node-x"), false, true)),
            Err(TopologyError::Other(
                "topology labels from selected node map[other:2] does not match topology keys from CSINode [zone]".into()
            ))
        );
    }

    #[test]
    fn no_registered_keys_and_no_labelled_nodes_are_errors() {
        let mut c = cluster();
        c.csinode_keys.values_mut().for_each(Vec::clear);
        assert_eq!(
            requirements(&input(&c, &[], None, false, true)),
            Err(TopologyError::Other("no available topology found".into()))
        );
        let mut c = cluster();
        c.node_labels.clear();
        assert_eq!(
            requirements(&input(&c, &[], None, false, true)),
            Err(TopologyError::Other(
                "topologyKeys [zone] were not found on any nodes".into()
            ))
        );
    }

    #[test]
    fn subset_and_compare() {
        assert!(subset(&term(&[]), &term(&[("a", "1")])));
        assert!(subset(
            &term(&[("a", "1")]),
            &term(&[("a", "1"), ("b", "2")])
        ));
        assert!(!subset(
            &term(&[("a", "2")]),
            &term(&[("a", "1"), ("b", "2")])
        ));
        assert!(!subset(
            &term(&[("c", "1")]),
            &term(&[("a", "1"), ("b", "2")])
        ));
        assert_eq!(
            compare(&term(&[("z", "9")]), &term(&[("a", "1"), ("b", "1")])),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn node_affinity_has_one_term_per_non_empty_topology() {
        assert_eq!(node_affinity(&[]), None);
        let a = node_affinity(&[
            labels(&[("zone", "a"), ("rack", "1")]),
            labels(&[]),
            labels(&[("zone", "b")]),
        ])
        .unwrap();
        let terms = a.required.unwrap().node_selector_terms;
        assert_eq!(terms.len(), 2);
        let first = terms[0].match_expressions.as_ref().unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].key, "rack");
        assert_eq!(first[0].operator, "In");
        assert_eq!(first[0].values, Some(vec!["1".to_string()]));
    }
}
