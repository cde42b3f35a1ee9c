//! The journal's book-keeping: what each batch writes, what lookups see before and after.

use super::*;
use crate::request::{PvTemplate, RecordedRequest};
use rstest::rstest;

fn intent(volume: &str, uid: &str) -> Intent {
    Intent {
        driver: "d".into(),
        volume_name: volume.into(),
        claim_uid: uid.into(),
        claim_namespace: "ns".into(),
        claim_name: format!("claim-{uid}"),
        request: RecordedRequest::default(),
        provisioner_secret: None,
        pv: PvTemplate::default(),
        may_reschedule: false,
    }
}

fn waiter() -> (Answer, oneshot::Receiver<Result<(), String>>) {
    oneshot::channel()
}

/// A book whose write of pvc-1's record went through.
fn book_with_pvc_1() -> Book {
    let mut book = Book::default();
    let (tx, _rx) = waiter();
    book.record(&intent("pvc-1", "1"), tx).unwrap();
    let (_, waiters) = book.take();
    book.stored(waiters);
    book
}

#[rstest]
#[case::plain("hostpath.csi.k8s.io", "csi-volume-intents.hostpath.csi.k8s.io")]
#[case::upper_and_underscore("My_Driver.example", "csi-volume-intents.my-driver.example")]
#[case::trailing_dot("d.", "csi-volume-intents.d")]
fn object_names(#[case] driver: &str, #[case] want: &str) {
    assert_eq!(object_name(driver), want);
}

#[rstest]
// A lone record is written at once.
#[case::first_record(true, None, Duration::ZERO)]
#[case::after_a_quiet_spell(true, Some(Duration::from_secs(5)), Duration::ZERO)]
// During a burst, records wait for others.
#[case::in_a_burst(true, Some(Duration::from_millis(300)), BURST_WINDOW)]
// Releases wait for a record to ride along with.
#[case::releases_only(false, None, RELEASE_WINDOW)]
fn windows(#[case] records: bool, #[case] since: Option<Duration>, #[case] want: Duration) {
    assert_eq!(window(records, since), want);
}

#[test]
fn a_record_is_seen_only_once_stored() {
    let mut book = Book::default();
    let (tx, mut rx) = waiter();
    book.record(&intent("pvc-1", "1"), tx).unwrap();
    assert_eq!(book.for_claim("1"), None, "not visible before the write");
    assert_eq!(book.waiting(), (true, true));
    let (batch, waiters) = book.take();
    assert_eq!(batch.data.len(), 1);
    assert!(batch.patch()["data"]["pvc-1"].is_string());
    assert!(rx.try_recv().is_err(), "not answered before the write");
    book.stored(waiters);
    assert_eq!(rx.try_recv().unwrap(), Ok(()));
    assert_eq!(book.for_claim("1"), Some(intent("pvc-1", "1")));
    assert_eq!(book.for_key("ns", "claim-1").len(), 1);
    assert_eq!(
        book.claim_keys(),
        vec![runtime::NamespacedName::new("ns", "claim-1")]
    );
    assert_eq!(book.waiting(), (false, false));
}

#[test]
fn records_and_releases_share_one_patch() {
    let mut book = book_with_pvc_1();

    book.release("pvc-1");
    assert_eq!(book.for_claim("1"), None, "a release is seen at once");
    assert_eq!(book.waiting(), (false, true));
    let mut rxs = Vec::new();
    for n in 2..5 {
        let (tx, rx) = waiter();
        book.record(&intent(&format!("pvc-{n}"), &n.to_string()), tx)
            .unwrap();
        rxs.push(rx);
    }
    let (batch, waiters) = book.take();
    let patch = batch.patch();
    assert_eq!(patch["data"].as_object().unwrap().len(), 4);
    assert!(patch["data"]["pvc-1"].is_null(), "the release rides along");
    book.stored(waiters);
    for mut rx in rxs {
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
    }
    assert_eq!(book.len(), 3);
}

#[test]
fn a_failed_write_fails_its_records_and_keeps_its_releases() {
    let mut book = book_with_pvc_1();
    book.release("pvc-1");
    let (tx, mut rx) = waiter();
    book.record(&intent("pvc-2", "2"), tx).unwrap();
    let (batch, waiters) = book.take();
    book.failed(batch, waiters, "boom");
    assert_eq!(rx.try_recv().unwrap(), Err("boom".to_string()));
    assert_eq!(book.for_claim("2"), None);
    // The release is written with the next batch.
    let (batch, _) = book.take();
    assert_eq!(batch.data, BTreeMap::from([("pvc-1".to_string(), None)]));
    assert_eq!(book.bytes, 0, "no bytes left counted");
}

#[test]
fn a_release_queued_again_does_not_undo_a_newer_record() {
    let mut book = Book::default();
    book.release("pvc-1");
    let (batch, waiters) = book.take();
    // While that write was in flight, the same volume was recorded again.
    let (tx, _rx) = waiter();
    book.record(&intent("pvc-1", "1"), tx).unwrap();
    book.failed(batch, waiters, "boom");
    let (batch, _) = book.take();
    assert!(batch.data["pvc-1"].is_some());
}

#[test]
fn a_full_journal_refuses_records() {
    let mut book = Book::default();
    let mut big = intent("pvc-big", "big");
    big.pv.storage_class_name = "x".repeat(MAX_BYTES);
    let (tx, _rx) = waiter();
    let e = book.record(&big, tx).unwrap_err();
    assert!(e.contains("journal is full"), "{e}");
    assert_eq!(book.waiting(), (false, false));
}

#[test]
fn loading_keeps_this_drivers_readable_entries() {
    let mut book = Book::default();
    let mine = serde_json::to_string(&intent("pvc-1", "1")).unwrap();
    let mut other = intent("pvc-2", "2");
    other.driver = "other".into();
    let data = BTreeMap::from([
        ("pvc-1".to_string(), mine.clone()),
        ("pvc-2".to_string(), serde_json::to_string(&other).unwrap()),
        ("pvc-3".to_string(), "{not json".to_string()),
        // Stored under a key that is not its volume name.
        ("pvc-4".to_string(), mine),
    ]);
    let skipped = book.load(&data, "d");
    assert_eq!(book.len(), 1);
    assert_eq!(
        skipped.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["pvc-2", "pvc-3", "pvc-4"]
    );
    // A re-created object holds the entries and the batch, not what was skipped.
    book.release("pvc-1");
    let (tx, _rx) = waiter();
    book.record(&intent("pvc-5", "5"), tx).unwrap();
    let (batch, _) = book.take();
    let full = book.full_data(&batch);
    assert_eq!(full.keys().collect::<Vec<_>>(), vec!["pvc-5"]);
}
