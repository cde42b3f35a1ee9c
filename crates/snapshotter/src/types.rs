//! `snapshot.storage.k8s.io/v1`: VolumeSnapshot, VolumeSnapshotContent and VolumeSnapshotClass,
//! field for field with external-snapshotter v8.6's CRDs (`client/apis/volumesnapshot/v1`); the
//! group snapshot kinds of `groupsnapshot.storage.k8s.io/v1` are in [`group`].
//!
//! Every optional field is an `Option`, skipped when `None`: the controllers tell "unset" from
//! `false` or zero everywhere (`readyToUse`, `restoreSize`), as upstream's pointers do. Fields
//! the CRDs require are plain values with a serde default, so that an object the API server
//! holds but that misses one (a CRD of another version, say) is still read, and the controller
//! reports it instead of the watch failing on it. Enumerations keep values they do not know
//! (`DeletionPolicy::Other`) for the same reason.
//!
//! `apiVersion` and `kind` are written on every serialization, as kube's derived types do.
//!
//! The CRDs are generated from these types ([`crate::crd`]): the validation rules of upstream's
//! CRDs are attached to the fields they constrain (`x-kubernetes-validations`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// The API group of the snapshot kinds.
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// The only version the controllers use.
pub const VERSION: &str = "v1";
/// `snapshot.storage.k8s.io/v1`.
pub const API_VERSION: &str = "snapshot.storage.k8s.io/v1";

/// A request for a snapshot of a claim, or for a pre-provisioned snapshot (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotSpec,
    #[serde(default)]
    pub status: Option<VolumeSnapshotStatus>,
}

/// What to snapshot, and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    #[serde(default)]
    pub source: VolumeSnapshotSource,
    /// The VolumeSnapshotClass; the default class of the source's driver when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeSnapshotClassName must not be the empty string when set", "rule": "size(self) > 0"}
    ]))]
    pub volume_snapshot_class_name: Option<String>,
}

/// Exactly one of the two is set (CEL in the CRD).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "persistentVolumeClaimName is required once set", "rule": "!has(oldSelf.persistentVolumeClaimName) || has(self.persistentVolumeClaimName)"},
    {"message": "volumeSnapshotContentName is required once set", "rule": "!has(oldSelf.volumeSnapshotContentName) || has(self.volumeSnapshotContentName)"},
    {"message": "exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set", "rule": "(has(self.volumeSnapshotContentName) && !has(self.persistentVolumeClaimName)) || (!has(self.volumeSnapshotContentName) && has(self.persistentVolumeClaimName))"}
]))]
pub struct VolumeSnapshotSource {
    /// A claim in the snapshot's namespace: a dynamic snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "persistentVolumeClaimName is immutable", "rule": "self == oldSelf"}
    ]))]
    pub persistent_volume_claim_name: Option<String>,
    /// An existing content: a pre-provisioned snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeSnapshotContentName is immutable", "rule": "self == oldSelf"}
    ]))]
    pub volume_snapshot_content_name: Option<String>,
}

/// What the controllers observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// The VolumeSnapshotContent this snapshot binds to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// When the storage system took the snapshot (seconds precision on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub creation_time: Option<Time>,
    /// The snapshot can restore a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest volume the snapshot restores into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity")]
    pub restore_size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_name: Option<String>,
}

/// The last error of an operation, shared by every snapshot kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What happens to the snapshot on the storage system when its content is released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
    /// A value the CRD would refuse; kept so that the object is still read and reported.
    #[serde(other)]
    #[schemars(skip)]
    Other,
}

/// A snapshot on the storage system, bound to one VolumeSnapshot (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContent {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotContentSpec,
    #[serde(default)]
    pub status: Option<VolumeSnapshotContentStatus>,
}

/// The snapshot on the storage system and the VolumeSnapshot it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "sourceVolumeMode is required once set", "rule": "!has(oldSelf.sourceVolumeMode) || has(self.sourceVolumeMode)"}
]))]
pub struct VolumeSnapshotContentSpec {
    /// The VolumeSnapshot this content is bound to (its UID once bound).
    #[serde(default)]
    #[schemars(schema_with = "object_reference")]
    pub volume_snapshot_ref: ObjectReference,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    #[serde(default)]
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    #[serde(default)]
    pub source: VolumeSnapshotContentSource,
    /// The source volume's mode (`Filesystem` or `Block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "sourceVolumeMode is immutable", "rule": "self == oldSelf"}
    ]))]
    pub source_volume_mode: Option<String>,
}

/// Exactly one of the two is set (CEL in the CRD).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"message": "volumeHandle is required once set", "rule": "!has(oldSelf.volumeHandle) || has(self.volumeHandle)"},
    {"message": "snapshotHandle is required once set", "rule": "!has(oldSelf.snapshotHandle) || has(self.snapshotHandle)"},
    {"message": "exactly one of volumeHandle and snapshotHandle must be set", "rule": "(has(self.volumeHandle) && !has(self.snapshotHandle)) || (!has(self.volumeHandle) && has(self.snapshotHandle))"}
]))]
pub struct VolumeSnapshotContentSource {
    /// The volume to snapshot: a dynamic content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "volumeHandle is immutable", "rule": "self == oldSelf"}
    ]))]
    pub volume_handle: Option<String>,
    /// An existing snapshot: a pre-provisioned content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"message": "snapshotHandle is immutable", "rule": "self == oldSelf"}
    ]))]
    pub snapshot_handle: Option<String>,
}

/// What the CSI half observed on the driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    /// The driver's `snapshot_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// Unix nanoseconds (unlike the VolumeSnapshot's date-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<i64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0))]
    pub restore_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The driver's `group_snapshot_id`, for a member of a group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_handle: Option<String>,
}

/// How snapshots of one driver are taken (cluster-scoped; no `spec`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    #[serde(default)]
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    /// The CSI driver that takes the snapshots.
    #[serde(default)]
    pub driver: String,
    /// Parameters of CreateSnapshot (and, under `csi.storage.k8s.io/`, the secrets).
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    /// Whether contents made through this class are deleted with their VolumeSnapshot.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

fn quantity(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "x-kubernetes-int-or-string": true,
        "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$"
    })
}

/// An ObjectReference's schema, without rules.
fn reference_properties() -> serde_json::Value {
    let field = |d: &str| serde_json::json!({"type": "string", "description": d});
    serde_json::json!({
        "type": "object",
        "properties": {
            "apiVersion": field("API version of the referent."),
            "fieldPath": field("A piece of the referent, if any."),
            "kind": field("Kind of the referent."),
            "name": field("Name of the referent."),
            "namespace": field("Namespace of the referent."),
            "resourceVersion": field("The referent's resourceVersion when the reference was made."),
            "uid": field("UID of the referent."),
        },
        "x-kubernetes-map-type": "atomic",
    })
}

fn object_reference(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = reference_properties();
    schema["x-kubernetes-validations"] = serde_json::json!([
        {"message": "both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set", "rule": "has(self.name) && has(self.__namespace__)"}
    ]);
    schemars::Schema::try_from(schema).expect("an object schema")
}

/// Implements `kube::Resource` and a `Serialize` that writes `apiVersion` and `kind` first.
macro_rules! resource {
    ($ty:ident, $kind:literal, $plural:literal, $scope:ty, [$($json:literal => $field:ident $(? $opt:tt)?),*]) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(API_VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut s = serializer.serialize_struct($kind, 3 + [$($json),*].len())?;
                s.serialize_field("apiVersion", API_VERSION)?;
                s.serialize_field("kind", $kind)?;
                s.serialize_field("metadata", &self.metadata)?;
                $( resource!(@field s, self, $json, $field $(? $opt)?); )*
                s.end()
            }
        }
    };
    (@field $s:ident, $self:ident, $json:literal, $field:ident ? opt) => {
        match &$self.$field {
            Some(v) => $s.serialize_field($json, v)?,
            None => $s.skip_field($json)?,
        }
    };
    (@field $s:ident, $self:ident, $json:literal, $field:ident) => {
        $s.serialize_field($json, &$self.$field)?
    };
}

resource!(VolumeSnapshot, "VolumeSnapshot", "volumesnapshots", k8s_openapi::NamespaceResourceScope,
    ["spec" => spec, "status" => status ? opt]);
resource!(VolumeSnapshotContent, "VolumeSnapshotContent", "volumesnapshotcontents", k8s_openapi::ClusterResourceScope,
    ["spec" => spec, "status" => status ? opt]);
resource!(VolumeSnapshotClass, "VolumeSnapshotClass", "volumesnapshotclasses", k8s_openapi::ClusterResourceScope,
    ["driver" => driver, "parameters" => parameters ? opt, "deletionPolicy" => deletion_policy]);

pub mod group;
pub use group::{
    GroupSnapshotHandles, VolumeGroupSnapshot, VolumeGroupSnapshotClass,
    VolumeGroupSnapshotContent, VolumeGroupSnapshotContentSource, VolumeGroupSnapshotContentSpec,
    VolumeGroupSnapshotContentStatus, VolumeGroupSnapshotSource, VolumeGroupSnapshotSpec,
    VolumeGroupSnapshotStatus, VolumeSnapshotInfo,
};

impl VolumeSnapshot {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The claim a dynamic snapshot is taken of.
    pub fn source_claim(&self) -> Option<&str> {
        self.spec.source.persistent_volume_claim_name.as_deref()
    }

    /// The content a pre-provisioned snapshot names.
    pub fn source_content(&self) -> Option<&str> {
        self.spec.source.volume_snapshot_content_name.as_deref()
    }

    /// `status.readyToUse == true`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// `status.boundVolumeSnapshotContentName`, when set and not empty.
    pub fn bound_content(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.bound_volume_snapshot_content_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

impl VolumeSnapshotContent {
    /// The content's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// `status.readyToUse == true`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// The snapshot handle: the status's, else the spec's (pre-provisioned).
    pub fn snapshot_handle(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.snapshot_handle.as_deref())
            .or(self.spec.source.snapshot_handle.as_deref())
    }

    /// The referenced snapshot's `namespace/name`.
    pub fn snapshot_key(&self) -> String {
        let r = &self.spec.volume_snapshot_ref;
        format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default()
        )
    }

    /// The referenced snapshot's UID, empty when unset (a pre-provisioned content waiting for
    /// its snapshot).
    pub fn snapshot_uid(&self) -> &str {
        self.spec
            .volume_snapshot_ref
            .uid
            .as_deref()
            .unwrap_or_default()
    }
}

impl VolumeSnapshotClass {
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
    fn objects_carry_their_type_and_skip_unset_fields() {
        let content = VolumeSnapshotContent {
            metadata: ObjectMeta {
                name: Some("snapcontent-1".into()),
                ..Default::default()
            },
            spec: VolumeSnapshotContentSpec {
                driver: "d".into(),
                source: VolumeSnapshotContentSource {
                    volume_handle: Some("v".into()),
                    snapshot_handle: None,
                },
                ..Default::default()
            },
            status: None,
        };
        assert_eq!(
            serde_json::to_value(&content).unwrap(),
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": "snapcontent-1"},
                "spec": {
                    "volumeSnapshotRef": {},
                    "deletionPolicy": "Delete",
                    "driver": "d",
                    "source": {"volumeHandle": "v"},
                }
            })
        );
    }

    #[test]
    fn unknown_values_and_missing_fields_are_still_read() {
        let content: VolumeSnapshotContent = serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "spec": {"deletionPolicy": "Sometimes", "driver": "d"},
            "status": {"creationTime": 1_700_000_000_000_000_000_i64, "restoreSize": 0}
        }))
        .unwrap();
        assert_eq!(content.spec.deletion_policy, DeletionPolicy::Other);
        assert_eq!(content.spec.source, VolumeSnapshotContentSource::default());
        let status = content.status.unwrap();
        assert_eq!(status.restore_size, Some(0));
        assert_eq!(status.ready_to_use, None);
        let class: VolumeSnapshotClass = serde_json::from_value(json!({
            "metadata": {"name": "c"}, "driver": "d", "deletionPolicy": "Retain"
        }))
        .unwrap();
        assert_eq!(class.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(
            serde_json::to_value(&class).unwrap(),
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                   "metadata": {"name": "c"}, "driver": "d", "deletionPolicy": "Retain"})
        );
    }
}
