//! Our snapshot and group snapshot CRDs (generated from `snapshotter::types`,
//! `snapshotter::crd`) validate as upstream's: the API server accepts and refuses the same
//! objects and updates, with the same messages. Upstream's CRDs are the cluster's (`e2e/cluster` installs them); ours are installed
//! beside them under a test group, since both cannot have the same name. Every case is a
//! server-side dry run, except the object an update case starts from.
#![cfg(feature = "cluster")]

use std::time::Duration;

use e2e::{clients, eventually, unique};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

const UPSTREAM: &str = "snapshot.storage.k8s.io";
const OURS: &str = "snapshot.crdtest.csi-controller-manager.io";
const UPSTREAM_GROUPS: &str = "groupsnapshot.storage.k8s.io";
const OURS_GROUPS: &str = "groupsnapshot.crdtest.csi-controller-manager.io";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Snapshot,
    Content,
    Class,
    Group,
    GroupContent,
    GroupClass,
}

impl Kind {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Kind::Snapshot => ("VolumeSnapshot", "volumesnapshots"),
            Kind::Content => ("VolumeSnapshotContent", "volumesnapshotcontents"),
            Kind::Class => ("VolumeSnapshotClass", "volumesnapshotclasses"),
            Kind::Group => ("VolumeGroupSnapshot", "volumegroupsnapshots"),
            Kind::GroupContent => ("VolumeGroupSnapshotContent", "volumegroupsnapshotcontents"),
            Kind::GroupClass => ("VolumeGroupSnapshotClass", "volumegroupsnapshotclasses"),
        }
    }

    /// The API group of the kind: upstream's, or ours under test.
    fn group(self, ours: bool) -> &'static str {
        let grouped = matches!(self, Kind::Group | Kind::GroupContent | Kind::GroupClass);
        match (grouped, ours) {
            (false, false) => UPSTREAM,
            (false, true) => OURS,
            (true, false) => UPSTREAM_GROUPS,
            (true, true) => OURS_GROUPS,
        }
    }
}

struct Case {
    name: &'static str,
    kind: Kind,
    /// The object (created by dry run), or the object an update starts from.
    object: Value,
    /// Fields merged into the created object, sent as an update by dry run.
    update: Option<Value>,
}

fn case(name: &'static str, kind: Kind, object: Value) -> Case {
    Case {
        name,
        kind,
        object,
        update: None,
    }
}

fn update(name: &'static str, kind: Kind, object: Value, change: Value) -> Case {
    Case {
        name,
        kind,
        object,
        update: Some(change),
    }
}

fn vs(spec: Value) -> Value {
    json!({"spec": spec})
}

fn vsc(spec: Value) -> Value {
    json!({"spec": spec})
}

fn content_spec() -> Value {
    json!({
        "volumeSnapshotRef": {"name": "snap", "namespace": "ns"},
        "deletionPolicy": "Delete",
        "driver": "d.example.com",
        "source": {"volumeHandle": "vol-1"},
    })
}

fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut base;
    for p in &path[..path.len() - 1] {
        at = &mut at[*p];
    }
    let last = path[path.len() - 1];
    if value.is_null() {
        at.as_object_mut().unwrap().remove(last);
    } else {
        at[last] = value;
    }
    base
}

fn cases() -> Vec<Case> {
    use Kind::*;
    let pvc = || json!({"source": {"persistentVolumeClaimName": "claim"}});
    let spec = content_spec;
    vec![
        case("snapshot of a claim", Snapshot, vs(pvc())),
        case(
            "snapshot of a content",
            Snapshot,
            vs(json!({"source": {"volumeSnapshotContentName": "c"}})),
        ),
        case(
            "snapshot with both sources",
            Snapshot,
            vs(
                json!({"source": {"persistentVolumeClaimName": "a", "volumeSnapshotContentName": "c"}}),
            ),
        ),
        case(
            "snapshot with no source",
            Snapshot,
            vs(json!({"source": {}})),
        ),
        case("snapshot without spec", Snapshot, json!({})),
        case(
            "snapshot with an empty class",
            Snapshot,
            vs(with(pvc(), &["volumeSnapshotClassName"], json!(""))),
        ),
        case(
            "snapshot with a class",
            Snapshot,
            vs(with(pvc(), &["volumeSnapshotClassName"], json!("c"))),
        ),
        case(
            "snapshot with an unknown field",
            Snapshot,
            vs(with(pvc(), &["bogus"], json!(1))),
        ),
        case(
            "snapshot with a numeric claim",
            Snapshot,
            vs(json!({"source": {"persistentVolumeClaimName": 5}})),
        ),
        update(
            "snapshot's claim changed",
            Snapshot,
            vs(pvc()),
            json!({"spec": {"source": {"persistentVolumeClaimName": "other"}}}),
        ),
        update(
            "snapshot's source switched",
            Snapshot,
            vs(pvc()),
            json!({"spec": {"source": {"volumeSnapshotContentName": "c"}}}),
        ),
        update(
            "snapshot's class set later",
            Snapshot,
            vs(pvc()),
            json!({"spec": {"source": {"persistentVolumeClaimName": "claim"}, "volumeSnapshotClassName": "c"}}),
        ),
        case("dynamic content", Content, vsc(spec())),
        case(
            "pre-provisioned content",
            Content,
            vsc(with(spec(), &["source"], json!({"snapshotHandle": "s"}))),
        ),
        case(
            "content with both handles",
            Content,
            vsc(with(
                spec(),
                &["source"],
                json!({"snapshotHandle": "s", "volumeHandle": "v"}),
            )),
        ),
        case(
            "content with no handle",
            Content,
            vsc(with(spec(), &["source"], json!({}))),
        ),
        case(
            "content without driver",
            Content,
            vsc(with(spec(), &["driver"], Value::Null)),
        ),
        case(
            "content with an unknown policy",
            Content,
            vsc(with(spec(), &["deletionPolicy"], json!("Sometimes"))),
        ),
        case(
            "content whose ref has no namespace",
            Content,
            vsc(with(
                spec(),
                &["volumeSnapshotRef"],
                json!({"name": "snap"}),
            )),
        ),
        case(
            "content without ref",
            Content,
            vsc(with(spec(), &["volumeSnapshotRef"], Value::Null)),
        ),
        case(
            "content with a source volume mode",
            Content,
            vsc(with(spec(), &["sourceVolumeMode"], json!("Block"))),
        ),
        update(
            "content's volume changed",
            Content,
            vsc(spec()),
            json!({"spec": with(spec(), &["source"], json!({"volumeHandle": "vol-2"}))}),
        ),
        update(
            "content's volume mode dropped",
            Content,
            vsc(with(spec(), &["sourceVolumeMode"], json!("Block"))),
            json!({"spec": spec()}),
        ),
        update(
            "content's policy changed",
            Content,
            vsc(spec()),
            json!({"spec": with(spec(), &["deletionPolicy"], json!("Retain"))}),
        ),
        update(
            "content bound by UID",
            Content,
            vsc(spec()),
            json!({"spec": with(spec(), &["volumeSnapshotRef"], json!({"name": "snap", "namespace": "ns", "uid": "u-1"}))}),
        ),
        case(
            "class",
            Class,
            json!({"driver": "d.example.com", "deletionPolicy": "Delete", "parameters": {"a": "b"}}),
        ),
        case(
            "class without driver",
            Class,
            json!({"deletionPolicy": "Delete"}),
        ),
        case(
            "class with an unknown policy",
            Class,
            json!({"driver": "d", "deletionPolicy": "Keep"}),
        ),
        case(
            "class with a numeric parameter",
            Class,
            json!({"driver": "d", "deletionPolicy": "Retain", "parameters": {"a": 1}}),
        ),
        case("class without policy", Class, json!({"driver": "d"})),
    ]
    .into_iter()
    .chain(group_cases())
    .collect()
}

fn group_content_spec() -> Value {
    json!({
        "volumeGroupSnapshotRef": {"name": "group", "namespace": "ns"},
        "deletionPolicy": "Delete",
        "driver": "d.example.com",
        "source": {"volumeHandles": ["vol-1", "vol-2"]},
    })
}

fn group_cases() -> Vec<Case> {
    use Kind::*;
    let selector = || json!({"source": {"selector": {"matchLabels": {"app": "db"}}}});
    let spec = group_content_spec;
    let handles = || json!({"groupSnapshotHandles": {"volumeGroupSnapshotHandle": "g", "volumeSnapshotHandles": ["s1"]}});
    let class =
        || json!({"driver": "d.example.com", "deletionPolicy": "Delete", "parameters": {"a": "b"}});
    vec![
        case("group of selected claims", Group, vs(selector())),
        case(
            "group of a content",
            Group,
            vs(json!({"source": {"volumeGroupSnapshotContentName": "gc"}})),
        ),
        case(
            "group with both sources",
            Group,
            vs(json!({"source": {"selector": {}, "volumeGroupSnapshotContentName": "gc"}})),
        ),
        case("group with no source", Group, vs(json!({"source": {}}))),
        case(
            "group with an empty class",
            Group,
            vs(with(
                selector(),
                &["volumeGroupSnapshotClassName"],
                json!(""),
            )),
        ),
        case(
            "group whose expression has no operator",
            Group,
            vs(json!({"source": {"selector": {"matchExpressions": [{"key": "app"}]}}})),
        ),
        update(
            "group's selector changed",
            Group,
            vs(selector()),
            json!({"spec": {"source": {"selector": {"matchLabels": {"app": "web"}}}}}),
        ),
        update(
            "group's source switched",
            Group,
            vs(selector()),
            json!({"spec": {"source": {"volumeGroupSnapshotContentName": "gc"}}}),
        ),
        case("dynamic group content", GroupContent, vsc(spec())),
        case(
            "pre-provisioned group content",
            GroupContent,
            vsc(with(spec(), &["source"], handles())),
        ),
        case(
            "group content with both sources",
            GroupContent,
            vsc(with(
                spec(),
                &["source"],
                json!({"volumeHandles": ["v"], "groupSnapshotHandles": {"volumeGroupSnapshotHandle": "g", "volumeSnapshotHandles": []}}),
            )),
        ),
        case(
            "group content whose handles miss the group handle",
            GroupContent,
            vsc(with(
                spec(),
                &["source"],
                json!({"groupSnapshotHandles": {"volumeSnapshotHandles": ["s1"]}}),
            )),
        ),
        case(
            "group content whose ref has no namespace",
            GroupContent,
            vsc(with(
                spec(),
                &["volumeGroupSnapshotRef"],
                json!({"name": "group"}),
            )),
        ),
        update(
            "group content's volumes changed",
            GroupContent,
            vsc(spec()),
            json!({"spec": with(spec(), &["source"], json!({"volumeHandles": ["vol-3"]}))}),
        ),
        update(
            "group content's driver changed",
            GroupContent,
            vsc(spec()),
            json!({"spec": with(spec(), &["driver"], json!("e.example.com"))}),
        ),
        update(
            "group content bound by UID",
            GroupContent,
            vsc(spec()),
            json!({"spec": with(spec(), &["volumeGroupSnapshotRef"], json!({"name": "group", "namespace": "ns", "uid": "u-1"}))}),
        ),
        update(
            "group content's ref renamed",
            GroupContent,
            vsc(spec()),
            json!({"spec": with(spec(), &["volumeGroupSnapshotRef"], json!({"name": "other", "namespace": "ns"}))}),
        ),
        case("group class", GroupClass, class()),
        case(
            "group class with an unknown policy",
            GroupClass,
            with(class(), &["deletionPolicy"], json!("Keep")),
        ),
        update(
            "group class's parameters changed",
            GroupClass,
            class(),
            json!({"parameters": {"a": "c"}}),
        ),
        update(
            "group class's policy changed",
            GroupClass,
            class(),
            json!({"deletionPolicy": "Retain"}),
        ),
    ]
}

async fn install_ours(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in snapshotter::crd::all() {
        let mut v = serde_json::to_value(&crd).unwrap();
        let plural = v["spec"]["names"]["plural"].as_str().unwrap().to_string();
        let group = if v["spec"]["group"] == json!(UPSTREAM) {
            OURS
        } else {
            OURS_GROUPS
        };
        let name = format!("{plural}.{group}");
        v["metadata"]["name"] = json!(name);
        // The approval annotation is only for `*.k8s.io` groups.
        v["metadata"].as_object_mut().unwrap().remove("annotations");
        v["spec"]["group"] = json!(group);
        let params = PatchParams::apply("csi-controller-manager-e2e").force();
        crds.patch(&name, &params, &Patch::Apply(&v)).await.unwrap();
        names.push(name);
    }
    for name in names {
        eventually(
            &format!("{name} to be established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    }
}

fn api(client: &kube::Client, group: &str, kind: Kind, ns: &str) -> Api<DynamicObject> {
    let (k, plural) = kind.names();
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", k), plural);
    match kind {
        Kind::Snapshot | Kind::Group => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    }
}

fn object(group: &str, kind: Kind, name: &str, body: &Value) -> DynamicObject {
    let mut v = body.clone();
    v["apiVersion"] = json!(format!("{group}/v1"));
    v["kind"] = json!(kind.names().0);
    v["metadata"] = json!({"name": name});
    serde_json::from_value(v).unwrap()
}

/// The outcome of a case against `group`: accepted, or the API server's message with the group
/// named as upstream's.
async fn outcome(
    client: &kube::Client,
    ours: bool,
    ns: &str,
    name: &str,
    c: &Case,
) -> Result<(), String> {
    let group = c.kind.group(ours);
    let api = api(client, group, c.kind, ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let message = |e: kube::Error| {
        let text = match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        };
        text.replace(OURS_GROUPS, UPSTREAM_GROUPS)
            .replace(OURS, UPSTREAM)
    };
    match &c.update {
        None => api
            .create(&dry, &object(group, c.kind, name, &c.object))
            .await
            .map(|_| ())
            .map_err(message),
        Some(change) => {
            let created = api
                .create(
                    &PostParams::default(),
                    &object(group, c.kind, name, &c.object),
                )
                .await
                .unwrap_or_else(|e| panic!("{}: the starting object ({group}): {e}", c.name));
            let mut next = serde_json::to_value(&created).unwrap();
            for (k, v) in change.as_object().unwrap() {
                next[k] = v.clone();
            }
            let next: DynamicObject = serde_json::from_value(next).unwrap();
            let result = api
                .replace(name, &dry, &next)
                .await
                .map(|_| ())
                .map_err(message);
            api.delete(name, &DeleteParams::default()).await.unwrap();
            result
        }
    }
}

#[tokio::test]
async fn our_crds_accept_and_refuse_what_upstreams_do() {
    let c = clients().await;
    install_ours(&c.main).await;
    let ns = unique("snapshot-crds");
    let namespaces: Api<Namespace> = Api::all(c.main.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let mut refused = 0;
    let mut differ = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let name = format!("{ns}-{i}");
        let theirs = outcome(&c.main, false, &ns, &name, case).await;
        let ours = outcome(&c.main, true, &ns, &name, case).await;
        refused += usize::from(theirs.is_err());
        if ours != theirs {
            differ.push(format!(
                "{}:\n  ours:     {ours:?}\n  upstream: {theirs:?}",
                case.name
            ));
        }
    }
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    assert!(differ.is_empty(), "outcomes differ:\n{}", differ.join("\n"));
    assert!(
        refused >= 25,
        "the table refuses {refused} objects: it must exercise the rules"
    );
}
