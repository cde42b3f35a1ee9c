//! Node deployment (`--node-deployment`), the pure part: one provisioner per node, each
//! provisioning only the claims of its node and deleting only its node's volumes, as upstream's
//! distributed provisioning (see `README.md`, "Node deployment").

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim,
};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::claim;
use crate::topology::{self, ClusterTopology, TopologyInput};

/// `--node-deployment` and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDeployment {
    /// `$NODE_NAME`.
    pub node: String,
    /// The node's topology segment, from NodeGetInfo (empty without topology).
    pub segment: BTreeMap<String, String>,
    /// `--node-deployment-immediate-binding` (default true).
    pub immediate_binding: bool,
    /// `--node-deployment-base-delay` (default 20 s).
    pub base_delay: Duration,
    /// `--node-deployment-max-delay` (default 60 s).
    pub max_delay: Duration,
}

impl NodeDeployment {
    /// The static topology of this node: one Node with the segment as labels, one CSINode with
    /// its keys (upstream replaces the topology informers by these).
    pub fn cluster(&self) -> ClusterTopology {
        ClusterTopology {
            csinode_keys: BTreeMap::from([(
                self.node.clone(),
                self.segment.keys().cloned().collect(),
            )]),
            node_labels: BTreeMap::from([(self.node.clone(), self.segment.clone())]),
        }
    }
}

/// What this node does with a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The claim is this node's: provision it.
    Mine,
    /// Another node's, or nobody's yet and not to be competed for.
    NotMine(String),
    /// Immediate binding, no node yet: compete for it by setting `selected-node` to this node.
    Compete,
}

/// Upstream's `shouldProvision` ownership check in node deployment.
pub fn ownership(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    nd: &NodeDeployment,
    driver: &str,
) -> Ownership {
    let not_mine = || {
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        Ownership::NotMine(format!(
            "not responsible for provisioning of PVC {ns}/{name} because it is not assigned to node \"{}\"",
            nd.node
        ))
    };
    match claim::selected_node(pvc) {
        Some(n) if n == nd.node => return Ownership::Mine,
        Some(n) if !n.is_empty() => return not_mine(),
        _ => {}
    }
    let immediate = class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer");
    if !immediate || !nd.immediate_binding {
        return not_mine();
    }
    let allowed = class.allowed_topologies.clone().unwrap_or_default();
    if !allowed.is_empty() && !nd.segment.is_empty() {
        // Compete only if a requirement can be built for this node.
        let cluster = nd.cluster();
        let input = TopologyInput {
            driver,
            pvc_name: pvc.metadata.name.as_deref().unwrap_or_default(),
            allowed: &allowed,
            selected_node: Some(&nd.node),
            strict: false,
            immediate: true,
            cluster: &cluster,
        };
        if topology::requirements(&input).is_err() {
            return not_mine();
        }
    }
    Ownership::Compete
}

/// Upstream's wait before competing for a claim: exponential per claim (`failures` earlier
/// tries), from `--node-deployment-base-delay` up to `--node-deployment-max-delay`, minus a
/// jitter in `[0, base)` (`jitter` in `[0, 1)`), never below zero.
pub fn compete_delay(nd: &NodeDeployment, failures: u32, jitter: f64) -> Duration {
    let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
    let delay = nd
        .base_delay
        .checked_mul(factor)
        .unwrap_or(nd.max_delay)
        .min(nd.max_delay);
    delay.saturating_sub(nd.base_delay.mul_f64(jitter.clamp(0.0, 1.0)))
}

/// Whether the PV is this node's to delete, as upstream's `MatchNodeSelectorTerms` over the node's
/// topology: PVs without node affinity, and every PV when the node reports no topology, are every
/// node's; otherwise one of the PV's required terms must match the node's segment (`In`, `NotIn`,
/// `Exists`, `DoesNotExist`, and `Gt`/`Lt` comparing integers).
pub fn deletes(pv: &PersistentVolume, nd: &NodeDeployment) -> bool {
    let Some(terms) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| &r.node_selector_terms)
    else {
        return true;
    };
    if nd.segment.is_empty() {
        return true;
    }
    terms.iter().any(|t| {
        t.match_expressions
            .iter()
            .flatten()
            .all(|e| requirement_matches(e, &nd.segment))
    })
}

fn requirement_matches(e: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&e.key);
    let values = e.values.as_deref().unwrap_or_default();
    // Gt/Lt: one integer value, compared with the label's integer value.
    let compare = |want: std::cmp::Ordering| {
        let (Some(v), [bound]) = (value, values) else {
            return false;
        };
        match (v.parse::<i64>(), bound.parse::<i64>()) {
            (Ok(v), Ok(bound)) => v.cmp(&bound) == want,
            _ => false,
        }
    };
    match e.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
