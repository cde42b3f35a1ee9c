//! The shared runtime against a real kube-apiserver: leader election on a real Lease, and the
//! shared informer keeping only this driver's objects.
#![cfg(feature = "cluster")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controller_kit::informer::{Change, Informers};
use controller_kit::leader::{LeaderElectionConfig, LeaderElector};
use e2e::{clients, eventually, unique};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolume, PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

fn fast(name: &str, identity: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        ..LeaderElectionConfig::new(name, "default", identity)
    }
}

#[tokio::test]
async fn leader_election_on_a_real_lease() {
    let c = clients().await;
    let name = unique("e2e-lease");
    let mut registry = Registry::default();
    let a =
        LeaderElector::new(c.election.clone(), fast(&name, "replica-a"), &mut registry).unwrap();
    let b = LeaderElector::new(
        c.election.clone(),
        fast(&name, "replica-b"),
        &mut Registry::default(),
    )
    .unwrap();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (mut rx_a, task_a) = a.spawn(stop_a.clone());
    tokio::time::timeout(Duration::from_secs(10), rx_a.wait_for(|l| *l))
        .await
        .expect("replica-a leads an uncontested lease")
        .unwrap();
    let (rx_b, task_b) = b.spawn(stop_b.clone());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        *rx_a.borrow() && !*rx_b.borrow(),
        "exactly one leader while a renews"
    );

    let leases: Api<Lease> = Api::namespaced(c.main.clone(), "default");
    let lease = leases.get(&name).await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    assert_eq!(spec.lease_duration_seconds, Some(4));

    // a shuts down: it releases the Lease and b takes over well before the lease would expire.
    let released = Instant::now();
    stop_a.cancel();
    task_a.await.unwrap();
    let mut rx_b2 = rx_b.clone();
    tokio::time::timeout(Duration::from_secs(10), rx_b2.wait_for(|l| *l))
        .await
        .expect("replica-b takes over")
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(4),
        "took {:?}",
        released.elapsed()
    );
    let spec = leases.get(&name).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));

    stop_b.cancel();
    task_b.await.unwrap();
    leases
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

fn pv(name: &str, driver: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity("1Gi".into()),
            )])),
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: format!("handle-{name}"),
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    }
}

#[tokio::test]
async fn the_shared_informer_keeps_only_our_objects_and_sees_deletes() {
    let c = clients().await;
    let ours = unique("ours.csi.test");
    let pvs: Api<PersistentVolume> = Api::all(c.main.clone());
    let mine = unique("e2e-pv-ours");
    let theirs = unique("e2e-pv-theirs");
    pvs.create(&PostParams::default(), &pv(&mine, &ours))
        .await
        .unwrap();
    pvs.create(&PostParams::default(), &pv(&theirs, "other.csi.test"))
        .await
        .unwrap();

    let changes: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut informers = Informers::new(c.main.clone());
    let store = {
        let driver = ours.clone();
        let log = changes.clone();
        let pv_informer = informers.for_type::<PersistentVolume>();
        // Two consumers register predicates: the cache keeps what either keeps.
        pv_informer
            .keep(move |pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .is_some_and(|c| c.driver == driver)
            })
            .keep(|_| false)
            .on_change(move |change| {
                let (what, obj) = match change {
                    Change::Applied { object: o, .. } => ("applied", o),
                    Change::Deleted(o) => ("deleted", o),
                };
                log.lock().unwrap().push(format!(
                    "{what} {}",
                    obj.metadata.name.as_deref().unwrap_or_default()
                ));
            });
        pv_informer.store()
    };
    let token = CancellationToken::new();
    let running = informers.start(token.clone());
    assert!(
        tokio::time::timeout(Duration::from_secs(30), running.wait_synced())
            .await
            .unwrap()
    );
    assert!(running.all_synced());

    assert!(store.get(&ObjectRef::new(&mine)).is_some());
    assert!(
        store.get(&ObjectRef::new(&theirs)).is_none(),
        "another driver's PV is not kept"
    );
    assert!(
        store
            .state()
            .iter()
            .all(|pv| pv.spec.as_ref().unwrap().csi.as_ref().unwrap().driver == ours)
    );

    pvs.delete(&mine, &DeleteParams::default()).await.unwrap();
    eventually(
        "the delete to reach the handler",
        Duration::from_secs(30),
        || {
            let seen = changes.lock().unwrap().contains(&format!("deleted {mine}"));
            async move { seen.then_some(()) }
        },
    )
    .await;
    assert!(store.get(&ObjectRef::new(&mine)).is_none());
    let log = changes.lock().unwrap().clone();
    assert!(!log.iter().any(|l| l.ends_with(&theirs)), "{log:?}");

    token.cancel();
    running.join().await;
    pvs.delete(&theirs, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn repeated_events_fold_into_a_count_and_new_messages_show() {
    use controller_kit::events::EventRecorder;
    use k8s_openapi::api::core::v1::{Event, ObjectReference};
    use kube::api::ListParams;

    let c = clients().await;
    let name = unique("e2e-events");
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: Some(name.clone()),
        namespace: Some("default".into()),
        uid: Some(uuid::Uuid::new_v4().to_string()),
        ..Default::default()
    };
    let recorder = EventRecorder::new(c.main.clone(), "external-provisioner", None);
    for _ in 0..3 {
        recorder
            .warning(
                &regarding,
                "ProvisioningFailed",
                "Provision",
                "backend busy",
            )
            .await;
    }
    recorder
        .warning(
            &regarding,
            "ProvisioningFailed",
            "Provision",
            "backend broke",
        )
        .await;
    // Events are written by the recorder's own task; wait for it.
    recorder.flush().await;

    let events: Api<Event> = Api::namespaced(c.main.clone(), "default");
    let ours: Vec<Event> = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items;
    let count_of = |note: &str| -> Vec<i32> {
        ours.iter()
            .filter(|e| e.message.as_deref() == Some(note))
            .map(|e| e.count.unwrap_or(1))
            .collect()
    };
    assert_eq!(
        count_of("backend busy"),
        vec![3],
        "one event, counted 3 times"
    );
    assert_eq!(
        count_of("backend broke"),
        vec![1],
        "a new message is a new event"
    );
    for e in &ours {
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("external-provisioner"),
            "as client-go's recorder writes it"
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        let _ = events
            .delete(
                e.metadata.name.as_deref().unwrap(),
                &DeleteParams::default(),
            )
            .await;
    }
}
