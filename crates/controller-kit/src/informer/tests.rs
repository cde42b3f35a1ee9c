//! Tests of the informers: what is cached, what handlers see, and when a watch starts.

use super::*;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ObjectMeta;
use std::sync::Mutex;

fn pv(name: &str, driver: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("driver".to_string(), driver.to_string())].into()),
            ..ObjectMeta::default()
        },
        ..PersistentVolume::default()
    }
}

type Log = Arc<Mutex<Vec<String>>>;

fn running() -> (Running<PersistentVolume>, Log, watch::Receiver<bool>) {
    let mut builder = InformerBuilder::<PersistentVolume>::new();
    let log: Log = Arc::default();
    let seen = log.clone();
    builder
        .keep(|pv| {
            pv.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l["driver"] == "ours")
        })
        .on_change(move |change| {
            let (what, obj) = match change {
                Change::Applied { object: o, .. } => ("applied", o),
                Change::Deleted(o) => ("deleted", o),
            };
            seen.lock()
                .unwrap()
                .push(format!("{what} {}", obj.metadata.name.as_deref().unwrap()));
        });
    let synced = builder.synced();
    let (_, running) = builder.into_running();
    (running, log, synced)
}

fn names(store: &Store<PersistentVolume>) -> Vec<String> {
    let mut n: Vec<String> = store
        .state()
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    n.sort();
    n
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test]
async fn a_watch_after_another_waits_for_it_and_for_nothing_else() {
    let token = CancellationToken::new();
    assert!(all_ready(Vec::new(), &token).await);
    let (first, first_rx) = watch::channel(false);
    let (second, second_rx) = watch::channel(true);
    let waiting = tokio::spawn({
        let token = token.clone();
        async move { all_ready(vec![first_rx, second_rx], &token).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiting.is_finished(),
        "started before the first informer synced"
    );
    first.send_replace(true);
    assert!(waiting.await.unwrap());
    drop(second);

    let (_never, never_rx) = watch::channel(false);
    let cancelled = tokio::spawn({
        let token = token.clone();
        async move { all_ready(vec![never_rx], &token).await }
    });
    token.cancel();
    assert!(
        !cancelled.await.unwrap(),
        "a cancelled wait must not start the watch"
    );
}

#[test]
fn managed_fields_are_not_cached() {
    let (mut r, _log, _synced) = running();
    let mut obj = pv("a", "ours");
    obj.metadata.managed_fields = Some(vec![Default::default()]);
    r.handle(Event::Init);
    r.handle(Event::InitApply(obj.clone()));
    r.handle(Event::InitDone);
    r.handle(Event::Apply(obj));
    let cached = r.store.get(&ObjectRef::new("a")).unwrap();
    assert_eq!(cached.metadata.managed_fields, None);
}

#[test]
fn keeps_only_our_objects_and_notifies_after_the_cache_is_updated() {
    let (mut r, log, synced) = running();
    r.handle(Event::Init);
    r.handle(Event::InitApply(pv("a", "ours")));
    r.handle(Event::InitApply(pv("other", "theirs")));
    assert!(
        take(&log).is_empty(),
        "nothing is notified before the list is complete"
    );
    assert!(!*synced.borrow());
    r.handle(Event::InitDone);
    assert!(*synced.borrow());
    assert_eq!(take(&log), ["applied a"]);
    assert_eq!(
        names(&r.store),
        ["a"],
        "objects of other drivers are not kept"
    );

    // An object that starts to concern us is added; one that stops is removed.
    r.handle(Event::Apply(pv("other", "ours")));
    r.handle(Event::Apply(pv("a", "theirs")));
    assert_eq!(take(&log), ["applied other", "deleted a"]);
    assert_eq!(names(&r.store), ["other"]);

    // Changes and deletes of objects we never kept are ignored.
    r.handle(Event::Apply(pv("x", "theirs")));
    r.handle(Event::Delete(pv("x", "theirs")));
    assert!(take(&log).is_empty());

    r.handle(Event::Delete(pv("other", "ours")));
    assert_eq!(take(&log), ["deleted other"]);
    assert!(names(&r.store).is_empty());
}

#[test]
fn a_relist_reports_objects_that_vanished_meanwhile() {
    let (mut r, log, _) = running();
    r.handle(Event::Init);
    r.handle(Event::InitApply(pv("a", "ours")));
    r.handle(Event::InitApply(pv("b", "ours")));
    r.handle(Event::InitDone);
    take(&log);
    // The watch broke; b was deleted while we were not watching.
    r.handle(Event::Init);
    r.handle(Event::InitApply(pv("a", "ours")));
    r.handle(Event::InitApply(pv("c", "ours")));
    assert_eq!(
        names(&r.store),
        ["a", "b"],
        "the old cache serves until the relist is done"
    );
    r.handle(Event::InitDone);
    let mut got = take(&log);
    got.sort();
    assert_eq!(got, ["applied a", "applied c", "deleted b"]);
    assert_eq!(names(&r.store), ["a", "c"]);
}

#[test]
fn updates_carry_the_state_the_cache_held_before() {
    let (mut r, _, _) = running();
    let previous: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = previous.clone();
    r.handlers
        .push(Arc::new(move |change: &Change<'_, PersistentVolume>| {
            if let Change::Applied { previous, .. } = change {
                seen.lock()
                    .unwrap()
                    .push(previous.and_then(|p| p.metadata.resource_version.clone()));
            }
        }));
    let at = |rv: &str| {
        let mut p = pv("a", "ours");
        p.metadata.resource_version = Some(rv.into());
        p
    };
    r.handle(Event::Init);
    r.handle(Event::InitApply(at("1")));
    r.handle(Event::InitDone);
    r.handle(Event::Apply(at("2")));
    // A relist: the update is reported against the state before it.
    r.handle(Event::Init);
    r.handle(Event::InitApply(at("3")));
    r.handle(Event::InitDone);
    assert_eq!(
        *previous.lock().unwrap(),
        [None, Some("1".to_string()), Some("2".to_string())]
    );
}
