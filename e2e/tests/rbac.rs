//! Permissions at start-up (issue 10): a manager whose role lacks one permission it needs names
//! it at once, in its log, in `/readyz` and as `csi_controller_manager_permission_missing`,
//! instead of failing later in silence. (That every scenario works under upstream's roles plus
//! our documented additions is shown by the whole suite: `e2e/run-tests` runs every manager
//! under them, see `e2e/cluster rbac`.)
#![cfg(feature = "cluster")]

use std::time::Duration;

use e2e::{OwnDriver, clients, eventually, unique};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

fn rule(group: &str, resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_missing_permission_is_named_at_start_up() {
    let c = clients().await;
    let name = unique("rbac-missing");
    // What the provisioner needs, except `create` on PersistentVolumes.
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        rules: Some(vec![
            rule(
                "",
                "persistentvolumes",
                &["get", "list", "watch", "patch", "delete"],
            ),
            rule(
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch", "update"],
            ),
            rule(
                "storage.k8s.io",
                "storageclasses",
                &["get", "list", "watch"],
            ),
            rule("storage.k8s.io", "csinodes", &["get", "list", "watch"]),
            rule("", "nodes", &["get", "list", "watch"]),
            rule(
                "storage.k8s.io",
                "volumeattachments",
                &["get", "list", "watch"],
            ),
            rule("", "events", &["create", "patch"]),
            rule("", "configmaps", &["get", "create", "patch"]),
        ]),
        ..Default::default()
    };
    let roles: Api<ClusterRole> = Api::all(c.main.clone());
    roles.create(&PostParams::default(), &role).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(c.main.clone(), "default");
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(c.main.clone());
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some("default".into()),
            ..Default::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // A kubeconfig acting as that ServiceAccount.
    let admin = std::fs::read_to_string(e2e::env("KUBECONFIG")).unwrap();
    let as_account = admin.replacen(
        "  user:\n",
        &format!("  user:\n    as: system:serviceaccount:default:{name}\n"),
        1,
    );
    assert_ne!(as_account, admin, "the kubeconfig has a user entry");
    let kubeconfig = std::env::temp_dir().join(format!("{name}.kubeconfig"));
    std::fs::write(&kubeconfig, as_account).unwrap();

    let port = e2e::free_port();
    let own = OwnDriver::start(
        "rbac",
        |_| {},
        &[
            "--controllers=provisioner",
            &format!("--kubeconfig={}", kubeconfig.display()),
            &format!("--http-endpoint=127.0.0.1:{port}"),
            "--leader-election-namespace=default",
        ],
    )
    .await;

    let log = eventually(
        "the missing permission in the log",
        Duration::from_secs(60),
        || async {
            let log = std::fs::read_to_string(&own.manager.log).ok()?;
            log.contains("missing permission").then_some(log)
        },
    )
    .await;
    let line = log
        .lines()
        .find(|l| l.contains("missing permission:"))
        .unwrap_or_default();
    assert!(line.contains("create persistentvolumes"), "{line}");
    assert!(
        !log.lines()
            .any(|l| l.contains("missing permission:") && !l.contains("create persistentvolumes")),
        "only the one removed is named as required:\n{log}"
    );
    let ready = e2e::http_get(port, "/readyz").await;
    assert!(
        ready.contains("missing permissions: create persistentvolumes (provisioner)"),
        "{ready}"
    );
    let metrics = e2e::http_get(port, "/metrics").await;
    assert!(
        metrics.contains(r#"csi_controller_manager_permission_missing{controller="provisioner",group="",resource="persistentvolumes",verb="create",namespace="",required="true"} 1"#),
        "{metrics}"
    );

    own.stop().await;
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = bindings.delete(&name, &DeleteParams::default()).await;
    let _ = roles.delete(&name, &DeleteParams::default()).await;
    let _ = accounts.delete(&name, &DeleteParams::default()).await;
}
