//! The CustomResourceDefinitions of [`crate::types`], generated from the types: their schemas
//! come from the structs (`schemars`), with upstream's validation rules (CEL) attached to the
//! fields they constrain, and upstream's names, printer columns and subresources
//! (`client/config/crd` of external-snapshotter v8.6: version `v1`; the group kinds also serve
//! and store `v1beta2`, whose schema is `v1`'s, as upstream's; the deprecated `v1beta1` is
//! left out).
//!
//! The chart ships them (`charts/csi-controller-manager/files/snapshot-crds/`, checked against
//! this module by a test: `UPDATE_CRDS=1 cargo test -p snapshotter crd` rewrites them), and the
//! e2e suite checks that the API server accepts and refuses the same objects with ours as with
//! upstream's.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::types::group;
use crate::types::*;

/// The upstream API review of the snapshot API (required for a `*.k8s.io` group).
const APPROVED: &str = "https://github.com/kubernetes-csi/external-snapshotter/pull/814";
const APPROVED_CONTENTS: &str = "https://github.com/kubernetes-csi/external-snapshotter/pull/955";
/// The storage version of upstream's group snapshot CRDs (v8.6), served beside `v1`.
const GROUP_STORAGE_VERSION: &str = "v1beta2";
/// The upstream API review of the group snapshot API.
const APPROVED_GROUPS: &str = "https://github.com/kubernetes-csi/external-snapshotter/pull/1337";

/// The schema of `T` as a structural CRD schema: subschemas inlined, no `nullable` or
/// `default` (the API server would default fields upstream's CRDs leave unset).
fn schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut v = generator.into_root_schema_for::<T>().to_value();
    clean(&mut v);
    v
}

fn clean(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for key in [
                "nullable",
                "default",
                "title",
                "$schema",
                "definitions",
                "$defs",
            ] {
                map.remove(key);
            }
            // An enum with a skipped variant comes as a `oneOf` of one schema: inline it.
            if let Some(Value::Array(one)) = map.get("oneOf")
                && let [Value::Object(only)] = one.as_slice()
            {
                let only = only.clone();
                map.remove("oneOf");
                map.extend(only);
            }
            for (_, child) in map.iter_mut() {
                clean(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// Marks `fields` of the object schema at `path` (property names) required.
fn require(root: &mut Value, path: &[&str], fields: &[&str]) {
    let mut at = root;
    for p in path {
        at = &mut at["properties"][*p];
    }
    at["required"] = json!(fields);
}

/// The root schema of a kind with `spec` and `status`.
fn with_spec<S: JsonSchema, T: JsonSchema>() -> Value {
    json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": schema::<S>(),
            "status": schema::<T>(),
        }
    })
}

/// A kind's names and scope.
struct Names {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    scope: &'static str,
    approved: &'static str,
}

fn definition(names: Names, root: Value, columns: Value, status: bool) -> CustomResourceDefinition {
    let Names {
        group,
        kind,
        plural,
        short,
        scope,
        approved,
    } = names;
    let version = |name: &str, storage: bool| {
        let mut v = json!({
            "name": name,
            "served": true,
            "storage": storage,
            "schema": {"openAPIV3Schema": root},
            "additionalPrinterColumns": columns,
        });
        if status {
            v["subresources"] = json!({"status": {}});
        }
        v
    };
    // The group kinds as upstream's CRDs: `v1beta2` (the same schema as `v1`) stays the
    // storage version, so that ours and upstream's replace each other on a cluster either
    // has stored objects in (the API server refuses a CRD without a stored version).
    let versions = if group == group::GROUP {
        vec![
            version(GROUP_STORAGE_VERSION, true),
            version(VERSION, false),
        ]
    } else {
        vec![version(VERSION, true)]
    };
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{group}"),
            "annotations": {"api-approved.kubernetes.io": approved},
            "labels": {"app.kubernetes.io/part-of": "csi-controller-manager"},
        },
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
                "shortNames": short,
            },
            "scope": scope,
            "versions": versions,
        }
    }))
    .expect("a CustomResourceDefinition")
}

fn age() -> Value {
    json!({"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"})
}

/// `volumesnapshots.snapshot.storage.k8s.io`.
pub fn volume_snapshot() -> CustomResourceDefinition {
    let mut root = with_spec::<VolumeSnapshotSpec, VolumeSnapshotStatus>();
    require(&mut root, &["spec"], &["source"]);
    let columns = json!([
        {"jsonPath": ".status.readyToUse", "name": "ReadyToUse", "type": "boolean",
         "description": "Indicates if the snapshot is ready to be used to restore a volume."},
        {"jsonPath": ".spec.source.persistentVolumeClaimName", "name": "SourcePVC", "type": "string",
         "description": "The claim the snapshot is (or will be) taken of."},
        {"jsonPath": ".spec.source.volumeSnapshotContentName", "name": "SourceSnapshotContent", "type": "string",
         "description": "The pre-provisioned VolumeSnapshotContent."},
        {"jsonPath": ".status.restoreSize", "name": "RestoreSize", "type": "string",
         "description": "The minimum size of a volume restored from this snapshot."},
        {"jsonPath": ".spec.volumeSnapshotClassName", "name": "SnapshotClass", "type": "string",
         "description": "The VolumeSnapshotClass requested."},
        {"jsonPath": ".status.boundVolumeSnapshotContentName", "name": "SnapshotContent", "type": "string",
         "description": "The VolumeSnapshotContent this snapshot binds to (verify both sides)."},
        {"jsonPath": ".status.creationTime", "name": "CreationTime", "type": "date",
         "description": "When the storage system took the snapshot."},
        age(),
    ]);
    let names = Names {
        group: GROUP,
        kind: "VolumeSnapshot",
        plural: "volumesnapshots",
        short: &["vs"],
        scope: "Namespaced",
        approved: APPROVED,
    };
    definition(names, root, columns, true)
}

/// `volumesnapshotcontents.snapshot.storage.k8s.io`.
pub fn volume_snapshot_content() -> CustomResourceDefinition {
    let mut root = with_spec::<VolumeSnapshotContentSpec, VolumeSnapshotContentStatus>();
    require(
        &mut root,
        &["spec"],
        &["deletionPolicy", "driver", "source", "volumeSnapshotRef"],
    );
    let columns = json!([
        {"jsonPath": ".status.readyToUse", "name": "ReadyToUse", "type": "boolean",
         "description": "Indicates if the snapshot is ready to be used to restore a volume."},
        {"jsonPath": ".status.restoreSize", "name": "RestoreSize", "type": "integer",
         "description": "The size of the snapshot in bytes."},
        {"jsonPath": ".spec.deletionPolicy", "name": "DeletionPolicy", "type": "string",
         "description": "Whether the snapshot on the storage system is deleted with its VolumeSnapshot."},
        {"jsonPath": ".spec.driver", "name": "Driver", "type": "string",
         "description": "The CSI driver of the snapshot."},
        {"jsonPath": ".spec.volumeSnapshotClassName", "name": "VolumeSnapshotClass", "type": "string",
         "description": "The VolumeSnapshotClass of the snapshot."},
        {"jsonPath": ".spec.volumeSnapshotRef.name", "name": "VolumeSnapshot", "type": "string",
         "description": "The VolumeSnapshot bound to this content."},
        {"jsonPath": ".spec.volumeSnapshotRef.namespace", "name": "VolumeSnapshotNamespace", "type": "string",
         "description": "The namespace of the VolumeSnapshot bound to this content."},
        age(),
    ]);
    let names = Names {
        group: GROUP,
        kind: "VolumeSnapshotContent",
        plural: "volumesnapshotcontents",
        short: &["vsc", "vscs"],
        scope: "Cluster",
        approved: APPROVED_CONTENTS,
    };
    definition(names, root, columns, true)
}

/// The root schema of a class kind (no `spec`: the fields are top-level).
fn class_root<T: JsonSchema>() -> Value {
    let mut root = schema::<T>();
    let props = root["properties"]
        .as_object_mut()
        .expect("class properties");
    props.insert("apiVersion".into(), json!({"type": "string"}));
    props.insert("kind".into(), json!({"type": "string"}));
    props.insert("metadata".into(), json!({"type": "object"}));
    root["required"] = json!(["deletionPolicy", "driver"]);
    root
}

/// `volumesnapshotclasses.snapshot.storage.k8s.io`.
pub fn volume_snapshot_class() -> CustomResourceDefinition {
    let root = class_root::<VolumeSnapshotClass>();
    let columns = json!([
        {"jsonPath": ".driver", "name": "Driver", "type": "string"},
        {"jsonPath": ".deletionPolicy", "name": "DeletionPolicy", "type": "string",
         "description": "Whether contents made through this class are deleted with their VolumeSnapshot."},
        age(),
    ]);
    let names = Names {
        group: GROUP,
        kind: "VolumeSnapshotClass",
        plural: "volumesnapshotclasses",
        short: &["vsclass", "vsclasses"],
        scope: "Cluster",
        approved: APPROVED,
    };
    definition(names, root, columns, false)
}

/// `volumegroupsnapshots.groupsnapshot.storage.k8s.io`.
pub fn volume_group_snapshot() -> CustomResourceDefinition {
    let mut root = with_spec::<VolumeGroupSnapshotSpec, VolumeGroupSnapshotStatus>();
    require(&mut root, &["spec"], &["source"]);
    let columns = json!([
        {"jsonPath": ".status.readyToUse", "name": "ReadyToUse", "type": "boolean",
         "description": "Indicates if all the individual snapshots in the group are ready to be used to restore a group of volumes."},
        {"jsonPath": ".spec.volumeGroupSnapshotClassName", "name": "VolumeGroupSnapshotClass", "type": "string",
         "description": "The VolumeGroupSnapshotClass requested."},
        {"jsonPath": ".status.boundVolumeGroupSnapshotContentName", "name": "VolumeGroupSnapshotContent", "type": "string",
         "description": "The VolumeGroupSnapshotContent this group snapshot binds to."},
        {"jsonPath": ".status.creationTime", "name": "CreationTime", "type": "date",
         "description": "When the storage system took the group snapshot."},
        age(),
    ]);
    let names = Names {
        group: group::GROUP,
        kind: "VolumeGroupSnapshot",
        plural: "volumegroupsnapshots",
        short: &["vgs"],
        scope: "Namespaced",
        approved: APPROVED_GROUPS,
    };
    definition(names, root, columns, true)
}

/// `volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io`.
pub fn volume_group_snapshot_content() -> CustomResourceDefinition {
    let mut root = with_spec::<VolumeGroupSnapshotContentSpec, VolumeGroupSnapshotContentStatus>();
    require(
        &mut root,
        &["spec"],
        &[
            "deletionPolicy",
            "driver",
            "source",
            "volumeGroupSnapshotRef",
        ],
    );
    require(
        &mut root,
        &["spec", "source", "groupSnapshotHandles"],
        &["volumeGroupSnapshotHandle", "volumeSnapshotHandles"],
    );
    let columns = json!([
        {"jsonPath": ".status.readyToUse", "name": "ReadyToUse", "type": "boolean",
         "description": "Indicates if all the individual snapshots in the group are ready to be used to restore a group of volumes."},
        {"jsonPath": ".spec.deletionPolicy", "name": "DeletionPolicy", "type": "string",
         "description": "Whether the group snapshot on the storage system is deleted with its VolumeGroupSnapshot."},
        {"jsonPath": ".spec.driver", "name": "Driver", "type": "string",
         "description": "The CSI driver of the group snapshot."},
        {"jsonPath": ".spec.volumeGroupSnapshotClassName", "name": "VolumeGroupSnapshotClass", "type": "string",
         "description": "The VolumeGroupSnapshotClass of the group snapshot."},
        {"jsonPath": ".spec.volumeGroupSnapshotRef.namespace", "name": "VolumeGroupSnapshotNamespace", "type": "string",
         "description": "The namespace of the VolumeGroupSnapshot bound to this content."},
        {"jsonPath": ".spec.volumeGroupSnapshotRef.name", "name": "VolumeGroupSnapshot", "type": "string",
         "description": "The VolumeGroupSnapshot bound to this content."},
        age(),
    ]);
    let names = Names {
        group: group::GROUP,
        kind: "VolumeGroupSnapshotContent",
        plural: "volumegroupsnapshotcontents",
        short: &["vgsc", "vgscs"],
        scope: "Cluster",
        approved: APPROVED_GROUPS,
    };
    definition(names, root, columns, true)
}

/// `volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io`.
pub fn volume_group_snapshot_class() -> CustomResourceDefinition {
    let root = class_root::<VolumeGroupSnapshotClass>();
    let columns = json!([
        {"jsonPath": ".driver", "name": "Driver", "type": "string"},
        {"jsonPath": ".deletionPolicy", "name": "DeletionPolicy", "type": "string",
         "description": "Whether contents made through this class are deleted with their VolumeGroupSnapshot."},
        age(),
    ]);
    let names = Names {
        group: group::GROUP,
        kind: "VolumeGroupSnapshotClass",
        plural: "volumegroupsnapshotclasses",
        short: &["vgsclass", "vgsclasses"],
        scope: "Cluster",
        approved: APPROVED_GROUPS,
    };
    definition(names, root, columns, false)
}

/// Every CRD of this crate.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        volume_snapshot(),
        volume_snapshot_content(),
        volume_snapshot_class(),
        volume_group_snapshot(),
        volume_group_snapshot_content(),
        volume_group_snapshot_class(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_schema(crd: &CustomResourceDefinition) -> Value {
        serde_json::to_value(
            &crd.spec
                .versions
                .iter()
                .find(|v| v.name == "v1")
                .unwrap()
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap()
    }

    #[test]
    fn schemas_carry_upstreams_rules() {
        let vs = v1_schema(&volume_snapshot());
        let source = &vs["properties"]["spec"]["properties"]["source"];
        let rules: Vec<&str> = source["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            rules,
            [
                "persistentVolumeClaimName is required once set",
                "volumeSnapshotContentName is required once set",
                "exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set",
            ]
        );
        assert_eq!(vs["properties"]["spec"]["required"], json!(["source"]));
        assert_eq!(
            vs["properties"]["status"]["properties"]["restoreSize"]["x-kubernetes-int-or-string"],
            json!(true)
        );
        let vsc = v1_schema(&volume_snapshot_content());
        let spec = &vsc["properties"]["spec"];
        assert_eq!(
            spec["properties"]["deletionPolicy"]["enum"],
            json!(["Delete", "Retain"])
        );
        assert_eq!(
            spec["properties"]["volumeSnapshotRef"]["x-kubernetes-map-type"],
            json!("atomic")
        );
        assert_eq!(
            vsc["properties"]["status"]["properties"]["restoreSize"]["minimum"].as_f64(),
            Some(0.0)
        );
        let class = v1_schema(&volume_snapshot_class());
        assert_eq!(
            class["properties"]["parameters"]["additionalProperties"],
            json!({"type": "string"})
        );
        let vgsc = v1_schema(&volume_group_snapshot_content());
        let spec = &vgsc["properties"]["spec"];
        assert_eq!(
            spec["properties"]["source"]["properties"]["groupSnapshotHandles"]["required"],
            json!(["volumeGroupSnapshotHandle", "volumeSnapshotHandles"])
        );
        assert_eq!(
            spec["properties"]["volumeGroupSnapshotRef"]["x-kubernetes-validations"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
        let created = &vgsc["properties"]["status"]["properties"]["volumeSnapshotInfoList"]["items"]
            ["properties"]["creationTime"];
        assert_eq!(
            (&created["type"], &created["format"]),
            (&json!("integer"), &json!("int64"))
        );
        let vgs = v1_schema(&volume_group_snapshot());
        let selector = &vgs["properties"]["spec"]["properties"]["source"]["properties"]["selector"];
        assert_eq!(selector["x-kubernetes-map-type"], json!("atomic"));
        // Structural: no references, nothing nullable or defaulted.
        let text = serde_json::to_string(&[vs, vsc, class, vgs, vgsc]).unwrap();
        for banned in ["$ref", "nullable", "\"default\"", "anyOf"] {
            assert!(!text.contains(banned), "{banned} in a schema");
        }
    }

    /// The chart's copies are the generated ones (`UPDATE_CRDS=1` rewrites them).
    #[test]
    fn the_charts_crds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/csi-controller-manager/files/snapshot-crds");
        for crd in all() {
            let name = crd.metadata.name.clone().unwrap();
            let path = dir.join(format!("{name}.json"));
            let text = serde_json::to_string_pretty(&crd).unwrap() + "\n";
            if std::env::var_os("UPDATE_CRDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} is stale: run UPDATE_CRDS=1 cargo test -p snapshotter crd",
                path.display()
            );
        }
    }
}
