//! Storage capacity tracking (`--enable-capacity`), the pure part: which (StorageClass, topology
//! segment) items there are, the CSIStorageCapacity object of each, and which objects are
//! obsolete. As upstream's `pkg/capacity` (see `README.md`, "Capacity tracking").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::storage::v1::{CSINode, CSIStorageCapacity, StorageClass};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::{Value, json};

use controller_kit::quantity::{format_binary_si, parse_bytes};

/// Label naming the driver of a CSIStorageCapacity.
pub const LABEL_DRIVER: &str = "csi.storage.k8s.io/drivername";
/// Label naming the instance that manages it.
pub const LABEL_MANAGED_BY: &str = "csi.storage.k8s.io/managed-by";
/// Upstream's managed-by value in central mode.
pub const MANAGED_BY: &str = "external-provisioner";
/// `generateName` of the objects.
pub const GENERATE_NAME: &str = "csisc-";

/// One topology segment: key -> value (empty: every node).
pub type Segment = BTreeMap<String, String>;

/// One work item: a StorageClass in a segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    /// The StorageClass.
    pub class: String,
    /// The segment.
    pub segment: Segment,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segment: Vec<String> = self
            .segment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{} [{}]", self.class, segment.join(","))
    }
}

/// The managed-by label value: `external-provisioner`, or `external-provisioner-<node>` in node
/// deployment, shortened to 63 characters as upstream (`getNameWithMaxLength`): the base cut
/// short, then the FNV-1a hash of the base, then the node name; or, for a node name too long for
/// that, the base and the hash of the whole name.
pub fn managed_by(node: Option<&str>) -> String {
    const MAX: usize = 63;
    let Some(node) = node else {
        return MANAGED_BY.to_string();
    };
    let name = format!("{MANAGED_BY}-{node}");
    if name.len() <= MAX {
        return name;
    }
    match (MAX - 10).checked_sub(node.len()).filter(|n| *n > 0) {
        Some(base) => format!(
            "{}-{:08x}-{node}",
            &MANAGED_BY[..base.min(MANAGED_BY.len())],
            fnv1a_32(MANAGED_BY.as_bytes())
        ),
        None => {
            let prefix = &MANAGED_BY[..MANAGED_BY.len().min(MAX - 9)];
            let short = format!("{prefix}-{:08x}", fnv1a_32(name.as_bytes()));
            short[..short.len().min(MAX)].to_string()
        }
    }
}

/// 32-bit FNV-1a (Go `hash/fnv.New32a`).
pub fn fnv1a_32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The segments of the driver's nodes: for each CSINode that lists the driver, its topology keys
/// with the Node's label values. A CSINode without a Node, or a Node lacking one of the labels,
/// gives none; a driver without topology keys gives the empty segment.
pub fn segments(
    csinodes: &[&CSINode],
    node_labels: &BTreeMap<String, BTreeMap<String, String>>,
    driver: &str,
) -> BTreeSet<Segment> {
    let mut out = BTreeSet::new();
    for csinode in csinodes {
        let Some(d) = csinode.spec.drivers.iter().find(|d| d.name == driver) else {
            continue;
        };
        let keys: BTreeSet<&String> = d.topology_keys.iter().flatten().collect();
        if keys.is_empty() {
            out.insert(Segment::new());
            continue;
        }
        let name = csinode.metadata.name.as_deref().unwrap_or_default();
        let Some(labels) = node_labels.get(name) else {
            continue;
        };
        let segment: Option<Segment> = keys
            .iter()
            .map(|k| labels.get(*k).map(|v| ((*k).clone(), v.clone())))
            .collect();
        if let Some(s) = segment {
            out.insert(s);
        }
    }
    out
}

/// The items: every segment with every class of the driver; classes with Immediate binding only
/// with `immediate_too` (`--capacity-for-immediate-binding`).
pub fn items(
    segments: &BTreeSet<Segment>,
    classes: &[&StorageClass],
    driver: &str,
    immediate_too: bool,
) -> BTreeSet<Item> {
    let mut out = BTreeSet::new();
    for class in classes {
        if class.provisioner != driver {
            continue;
        }
        let wffc = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
        if !wffc && !immediate_too {
            continue;
        }
        let name = class.metadata.name.clone().unwrap_or_default();
        for segment in segments {
            out.insert(Item {
                class: name.clone(),
                segment: segment.clone(),
            });
        }
    }
    out
}

/// What GetCapacity answered for an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    /// `available_capacity`.
    pub capacity: i64,
    /// `maximum_volume_size`, if the driver gave one.
    pub maximum: Option<i64>,
}

/// The item a managed object stands for, if its shape is one we write.
pub fn item_of(object: &CSIStorageCapacity) -> Option<Item> {
    let topology = object.node_topology.as_ref();
    if topology.is_some_and(|t| t.match_expressions.as_ref().is_some_and(|e| !e.is_empty())) {
        return None;
    }
    Some(Item {
        class: object.storage_class_name.clone(),
        segment: topology
            .and_then(|t| t.match_labels.clone())
            .unwrap_or_default(),
    })
}

/// Which object stands for which item, and which objects are obsolete (no item, or a second
/// object for an item): `objects` are (name, object).
pub fn assign<'a>(
    objects: impl IntoIterator<Item = (&'a str, &'a CSIStorageCapacity)>,
    items: &BTreeSet<Item>,
) -> (BTreeMap<Item, String>, Vec<String>) {
    let mut assigned = BTreeMap::new();
    let mut obsolete = Vec::new();
    for (name, object) in objects {
        match item_of(object) {
            Some(item) if items.contains(&item) && !assigned.contains_key(&item) => {
                assigned.insert(item, name.to_string());
            }
            _ => obsolete.push(name.to_string()),
        }
    }
    (assigned, obsolete)
}

/// A new object for `item`.
pub fn new_object(
    item: &Item,
    reported: Reported,
    driver: &str,
    managed_by: &str,
    owner: Option<&OwnerReference>,
) -> CSIStorageCapacity {
    CSIStorageCapacity {
        metadata: ObjectMeta {
            generate_name: Some(GENERATE_NAME.into()),
            labels: Some(BTreeMap::from([
                (LABEL_DRIVER.to_string(), driver.to_string()),
                (LABEL_MANAGED_BY.to_string(), managed_by.to_string()),
            ])),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        storage_class_name: item.class.clone(),
        node_topology: Some(LabelSelector {
            match_labels: Some(item.segment.clone()),
            match_expressions: None,
        }),
        capacity: Some(Quantity(format_binary_si(reported.capacity))),
        maximum_volume_size: reported.maximum.map(|m| Quantity(format_binary_si(m))),
    }
}

/// The merge patch that brings `object` to what the driver reported (and gives it its owner if
/// it lacks one), or `None` if it is up to date. The patch carries the resourceVersion: an
/// object changed meanwhile answers 409 and is looked at again.
pub fn update(
    object: &CSIStorageCapacity,
    reported: Reported,
    owner: Option<&OwnerReference>,
) -> Option<Value> {
    let bytes = |q: Option<&Quantity>| q.and_then(|q| parse_bytes(&q.0));
    let capacity_ok = bytes(object.capacity.as_ref()) == Some(reported.capacity);
    let maximum_ok = bytes(object.maximum_volume_size.as_ref()) == reported.maximum;
    let owners = object.metadata.owner_references.clone().unwrap_or_default();
    let owner_ok = owner.is_none_or(|o| {
        owners
            .iter()
            .any(|r| r.uid == o.uid && r.controller == Some(true))
    });
    if capacity_ok && maximum_ok && owner_ok {
        return None;
    }
    let mut patch = json!({
        "metadata": {"resourceVersion": object.metadata.resource_version},
        "capacity": format_binary_si(reported.capacity),
        "maximumVolumeSize": reported.maximum.map(format_binary_si),
    });
    if let (false, Some(o)) = (owner_ok, owner) {
        let mut list = owners;
        list.push(o.clone());
        patch["metadata"]["ownerReferences"] = serde_json::to_value(list).unwrap_or_default();
    }
    Some(patch)
}

#[cfg(test)]
mod tests;
