//! `groupsnapshot.storage.k8s.io/v1`: VolumeGroupSnapshot, VolumeGroupSnapshotContent and
//! VolumeGroupSnapshotClass, field for field with external-snapshotter v8.6's CRDs
//! (`client/apis/volumegroupsnapshot/v1`), under the same rules as the snapshot kinds (see the
//! parent module): optional fields are `Option`s, required ones default when missing, unknown
//! enumeration values are kept.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use schemars::JsonSchema;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::{DeletionPolicy, VolumeSnapshotError, date_time};

/// The API group of the group snapshot kinds.
pub const GROUP: &str = "groupsnapshot.storage.k8s.io";
/// The only version the controllers use (upstream's CRDs also serve `v1beta1` and `v1beta2`).
pub const VERSION: &str = "v1";
/// `groupsnapshot.storage.k8s.io/v1`.
pub const API_VERSION: &str = "groupsnapshot.storage.k8s.io/v1";

/// A request for a crash-consistent snapshot of several claims at once, or for a
/// pre-provisioned group snapshot (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshot {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeGroupSnapshotSpec,
    #[serde(default)]
    pub status: Option<VolumeGroupSnapshotStatus>,
}

/// What to snapshot, and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotSpec {
    #[serde(default)]
    pub source: VolumeGroupSnapshotSource,
    /// The VolumeGroupSnapshotClass; the default class of the claims' driver when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeGroupSnapshotClassName must not be the empty string when set", "rule": "size(self) > 0"}
    ]))]
    pub volume_group_snapshot_class_name: Option<String>,
}

/// Exactly one of the two is set (CEL in the CRD).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "selector is required once set", "rule": "!has(oldSelf.selector) || has(self.selector)"},
    {"message": "volumeGroupSnapshotContentName is required once set", "rule": "!has(oldSelf.volumeGroupSnapshotContentName) || has(self.volumeGroupSnapshotContentName)"},
    {"message": "exactly one of selector and volumeGroupSnapshotContentName must be set", "rule": "(has(self.selector) && !has(self.volumeGroupSnapshotContentName)) || (!has(self.selector) && has(self.volumeGroupSnapshotContentName))"}
]))]
pub struct VolumeGroupSnapshotSource {
    /// The claims of the group snapshot's namespace to snapshot together: a dynamic group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector")]
    pub selector: Option<LabelSelector>,
    /// An existing group content: a pre-provisioned group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeGroupSnapshotContentName is immutable", "rule": "self == oldSelf"}
    ]))]
    pub volume_group_snapshot_content_name: Option<String>,
}

/// What the common controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "boundVolumeGroupSnapshotContentName is immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub bound_volume_group_snapshot_content_name: Option<String>,
    /// When the storage system took the group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub creation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// A group snapshot on the storage system, bound to one VolumeGroupSnapshot (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContent {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeGroupSnapshotContentSpec,
    #[serde(default)]
    pub status: Option<VolumeGroupSnapshotContentStatus>,
}

/// The group snapshot on the storage system and the VolumeGroupSnapshot it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentSpec {
    /// The VolumeGroupSnapshot this content is bound to (its UID once bound).
    #[serde(default)]
    #[schemars(schema_with = "group_reference")]
    pub volume_group_snapshot_ref: ObjectReference,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "driver is immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeGroupSnapshotClassName is immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub volume_group_snapshot_class_name: Option<String>,
    #[serde(default)]
    pub source: VolumeGroupSnapshotContentSource,
}

/// Exactly one of the two is set (CEL in the CRD).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "volumeHandles is required once set", "rule": "!has(oldSelf.volumeHandles) || has(self.volumeHandles)"},
    {"message": "groupSnapshotHandles is required once set", "rule": "!has(oldSelf.groupSnapshotHandles) || has(self.groupSnapshotHandles)"},
    {"message": "exactly one of volumeHandles and groupSnapshotHandles must be set", "rule": "(has(self.volumeHandles) && !has(self.groupSnapshotHandles)) || (!has(self.volumeHandles) && has(self.groupSnapshotHandles))"}
]))]
pub struct VolumeGroupSnapshotContentSource {
    /// The volumes to snapshot together: a dynamic group content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeHandles is immutable", "rule": "self == oldSelf"}
    ]))]
    pub volume_handles: Option<Vec<String>>,
    /// An existing group snapshot: a pre-provisioned group content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot_handles: Option<GroupSnapshotHandles>,
}

/// The driver's handles of an existing group snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "groupSnapshotHandles is immutable", "rule": "self == oldSelf"}
]))]
pub struct GroupSnapshotHandles {
    /// The driver's `group_snapshot_id`.
    #[serde(default)]
    pub volume_group_snapshot_handle: String,
    /// The driver's `snapshot_id` of each member.
    #[serde(default)]
    pub volume_snapshot_handles: Vec<String>,
}

/// What the CSI half observed on the driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentStatus {
    /// The driver's `group_snapshot_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeGroupSnapshotHandle is immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub volume_group_snapshot_handle: Option<String>,
    /// A date-time here (Unix nanoseconds on a VolumeSnapshotContent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub creation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The members as the driver cut them (written once, by the CSI half).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_info_list: Option<Vec<VolumeSnapshotInfo>>,
}

/// One member of a dynamic group snapshot, as the driver reported it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// Unix nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub creation_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub restore_size: Option<i64>,
}

/// How group snapshots of one driver are taken (cluster-scoped; no `spec`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotClass {
    #[serde(default)]
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    /// The CSI driver that takes the group snapshots.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "driver is immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub driver: String,
    /// Parameters of CreateVolumeGroupSnapshot (and, under `csi.storage.k8s.io/`, the secrets).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "parameters are immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub parameters: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "deletionPolicy is immutable once set", "rule": "self == oldSelf"}
    ]))]
    pub deletion_policy: DeletionPolicy,
}

fn label_selector(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let strings = serde_json::json!({"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"});
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "matchExpressions": {
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": strings,
                    }
                }
            },
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "x-kubernetes-map-type": "atomic",
        "x-kubernetes-validations": [{"message": "selector is immutable", "rule": "self == oldSelf"}]
    })
}

fn group_reference(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = super::reference_properties();
    schema["x-kubernetes-validations"] = serde_json::json!([
        {"message": "both volumeGroupSnapshotRef.name and volumeGroupSnapshotRef.namespace must be set", "rule": "has(self.name) && has(self.__namespace__)"},
        {"message": "volumeGroupSnapshotRef.name and volumeGroupSnapshotRef.namespace are immutable", "rule": "self.name == oldSelf.name && self.__namespace__ == oldSelf.__namespace__"},
        {"message": "volumeGroupSnapshotRef.uid is immutable once set", "rule": "!has(oldSelf.uid) || (has(self.uid) && self.uid == oldSelf.uid)"}
    ]);
    schemars::Schema::try_from(schema).expect("an object schema")
}

resource!(VolumeGroupSnapshot, "VolumeGroupSnapshot", "volumegroupsnapshots", k8s_openapi::NamespaceResourceScope,
    ["spec" => spec, "status" => status ? opt]);
resource!(VolumeGroupSnapshotContent, "VolumeGroupSnapshotContent", "volumegroupsnapshotcontents", k8s_openapi::ClusterResourceScope,
    ["spec" => spec, "status" => status ? opt]);
resource!(VolumeGroupSnapshotClass, "VolumeGroupSnapshotClass", "volumegroupsnapshotclasses", k8s_openapi::ClusterResourceScope,
    ["driver" => driver, "parameters" => parameters ? opt, "deletionPolicy" => deletion_policy]);

impl VolumeGroupSnapshot {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The content a pre-provisioned group snapshot names.
    pub fn source_content(&self) -> Option<&str> {
        self.spec
            .source
            .volume_group_snapshot_content_name
            .as_deref()
    }

    /// `status.readyToUse == true`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// `status.boundVolumeGroupSnapshotContentName`, when set and not empty.
    pub fn bound_content(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.bound_volume_group_snapshot_content_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

impl VolumeGroupSnapshotContent {
    /// The content's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// `status.readyToUse == true`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// The volumes of a dynamic content (empty for a pre-provisioned one).
    pub fn volume_handles(&self) -> &[String] {
        self.spec
            .source
            .volume_handles
            .as_deref()
            .unwrap_or_default()
    }

    /// The driver's group handle: the status's, else the spec's (pre-provisioned).
    pub fn group_handle(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.volume_group_snapshot_handle.as_deref())
            .or(self
                .spec
                .source
                .group_snapshot_handles
                .as_ref()
                .map(|h| h.volume_group_snapshot_handle.as_str()))
    }

    /// The members the driver reported (empty when none yet).
    pub fn members(&self) -> &[VolumeSnapshotInfo] {
        self.status
            .as_ref()
            .and_then(|s| s.volume_snapshot_info_list.as_deref())
            .unwrap_or_default()
    }

    /// The referenced group snapshot's `namespace/name`.
    pub fn group_snapshot_key(&self) -> String {
        let r = &self.spec.volume_group_snapshot_ref;
        format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default()
        )
    }

    /// The referenced group snapshot's UID, empty when unset.
    pub fn group_snapshot_uid(&self) -> &str {
        self.spec
            .volume_group_snapshot_ref
            .uid
            .as_deref()
            .unwrap_or_default()
    }
}

impl VolumeGroupSnapshotClass {
    /// The class's parameters (empty when none).
    pub fn params(&self) -> BTreeMap<String, String> {
        self.parameters.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn group_objects_round_trip_with_their_type() {
        let vgs: VolumeGroupSnapshot = serde_json::from_value(json!({
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": {"source": {"selector": {"matchLabels": {"app": "db"}}},
                     "volumeGroupSnapshotClassName": "c"},
        }))
        .unwrap();
        assert_eq!(vgs.key(), "ns/g");
        assert_eq!(
            serde_json::to_value(&vgs).unwrap(),
            json!({
                "apiVersion": "groupsnapshot.storage.k8s.io/v1",
                "kind": "VolumeGroupSnapshot",
                "metadata": {"name": "g", "namespace": "ns"},
                "spec": {"source": {"selector": {"matchLabels": {"app": "db"}}},
                         "volumeGroupSnapshotClassName": "c"},
            })
        );
        let content: VolumeGroupSnapshotContent = serde_json::from_value(json!({
            "metadata": {"name": "gc"},
            "spec": {"deletionPolicy": "Retain", "driver": "d",
                     "source": {"groupSnapshotHandles": {"volumeGroupSnapshotHandle": "g1",
                                                         "volumeSnapshotHandles": ["s1", "s2"]}},
                     "volumeGroupSnapshotRef": {"name": "g", "namespace": "ns"}},
            "status": {"creationTime": "2026-12-02T10:00:00Z",
                       "volumeSnapshotInfoList": [{"volumeHandle": "v1", "snapshotHandle": "s1",
                                                   "creationTime": 5, "readyToUse": true, "restoreSize": 7}]}
        }))
        .unwrap();
        assert_eq!(content.group_handle(), Some("g1"));
        assert_eq!(content.members()[0].restore_size, Some(7));
        assert!(content.volume_handles().is_empty());
        assert_eq!(content.group_snapshot_uid(), "");
    }
}
