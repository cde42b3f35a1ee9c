//! The journal's book-keeping: what each batch writes, what lookups see before and after.

use std::collections::{BTreeMap, BTreeSet};

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
    let (batch, waiters) = book.take();
    book.stored(&batch, waiters);
    book
}

#[rstest]
#[case::plain("hostpath.csi.k8s.io", "csi-volume-intents.hostpath.csi.k8s.io")]
#[case::upper_and_underscore("My_Driver.example", "csi-volume-intents.my-driver.example")]
#[case::trailing_dot("d.", "csi-volume-intents.d")]
fn object_names(#[case] driver: &str, #[case] want: &str) {
    assert_eq!(object_name(driver), want);
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[rstest]
// A lone record (no record write for LINGER, or ever) is written at once.
#[case::first_record(1, true, None, 50, 0, Next::Write)]
#[case::after_a_quiet_spell(1, true, Some(LINGER), 50, 0, Next::Write)]
// While records stream in, they wait for others until LINGER after the last record write...
#[case::in_a_stream(3, true, Some(ms(100)), 50, 0, Next::Wait(LINGER - ms(100)))]
// ... unless half the workers wait on the journal.
#[case::full(50, true, Some(ms(10)), 50, 0, Next::Write)]
#[case::full_of_one(1, true, Some(ms(10)), 1, 0, Next::Write)]
// A full write goes also while others are in flight...
#[case::full_behind_a_write(50, true, Some(ms(10)), 50, 3, Next::Write)]
// ... where fewer records, even after a quiet spell, wait for the write in flight.
#[case::few_behind_a_write(3, true, Some(LINGER * 2), 50, 1, Next::Idle)]
#[case::releases_behind_a_write(0, true, Some(ms(10)), 50, 1, Next::Idle)]
// Releases alone wait for a record to ride along with.
#[case::releases_only(0, true, Some(ms(10)), 50, 0, Next::Wait(RELEASE_WINDOW))]
#[case::nothing(0, false, None, 50, 0, Next::Idle)]
fn group_commit(
    #[case] records: usize,
    #[case] anything: bool,
    #[case] since: Option<Duration>,
    #[case] full: usize,
    #[case] in_flight: usize,
    #[case] want: Next,
) {
    // A record arrived just now, in a stream whose end is not in sight.
    let look = Look {
        records,
        anything,
        since_record_write: since,
        since_arrival: Duration::ZERO,
        quiet: LINGER,
        full,
        in_flight,
    };
    assert_eq!(next(look), want);
}

#[rstest]
// Records every 20 ms or so: wait for the next one, at most the quiet spell...
#[case::stream_flowing(ms(5), ms(40), Next::Wait(ms(35)))]
// ... or until LINGER after the last write, whichever comes first.
#[case::linger_first(ms(5), ms(450), Next::Wait(LINGER - ms(100)))]
// The stream stopped: no record for the quiet spell, write what waits.
#[case::stream_stopped(ms(40), ms(40), Next::Write)]
fn a_stream_that_stops_is_written_at_once(
    #[case] since_arrival: Duration,
    #[case] quiet: Duration,
    #[case] want: Next,
) {
    let look = Look {
        records: 3,
        anything: true,
        since_record_write: Some(ms(100)),
        since_arrival,
        quiet,
        full: 50,
        in_flight: 0,
    };
    assert_eq!(next(look), want);
}

#[test]
fn the_quiet_spell_follows_the_gaps_between_records() {
    let mut a = Arrivals::default();
    assert_eq!(a.quiet(), LINGER, "no gap known: the linger alone");
    a.arrived(ms(0));
    assert_eq!(a.quiet(), LINGER);
    a.arrived(ms(20));
    assert_eq!(a.quiet(), ms(40), "twice the gap");
    for t in [40, 60, 80] {
        a.arrived(ms(t));
    }
    assert_eq!(a.quiet(), ms(40));
    assert_eq!(a.since_last(ms(95)), Some(ms(15)));
    // Records at once: the floor.
    for _ in 0..20 {
        a.arrived(ms(80));
    }
    assert_eq!(a.quiet(), QUIET_MIN);
    // A long pause counts as LINGER, and the average follows it up.
    a.arrived(ms(10_000));
    assert!(a.quiet() > QUIET_MIN && a.quiet() <= LINGER);
}

#[test]
fn what_arrives_during_a_write_goes_in_the_next_one() {
    let mut book = book_with_pvc_1();
    let (tx, mut rx2) = waiter();
    book.record(&intent("pvc-2", "2"), tx).unwrap();
    let (first, first_waiters) = book.take();
    // While the first write is in flight: a record and a release.
    let (tx, mut rx3) = waiter();
    book.record(&intent("pvc-3", "3"), tx).unwrap();
    book.release("pvc-1");
    assert_eq!(first.data.keys().collect::<Vec<_>>(), vec!["pvc-2"]);
    book.stored(&first, first_waiters);
    assert_eq!(rx2.try_recv().unwrap(), Ok(()));
    assert!(rx3.try_recv().is_err(), "pvc-3 waits for its own write");
    assert_eq!(book.for_claim("3"), None);
    let (second, waiters) = book.take();
    assert_eq!(
        second.data.keys().collect::<Vec<_>>(),
        vec!["pvc-1", "pvc-3"]
    );
    book.stored(&second, waiters);
    assert_eq!(rx3.try_recv().unwrap(), Ok(()));
}

#[test]
fn a_name_in_a_write_in_flight_waits_for_its_answer() {
    let mut book = Book::default();
    let (tx, mut rx1) = waiter();
    book.record(&intent("pvc-1", "1"), tx).unwrap();
    let (first, first_waiters) = book.take();
    assert_eq!(book.names_in_flight(), 1);
    // While pvc-1's record is in flight: its release, and another record.
    book.release("pvc-1");
    let (tx, mut rx2) = waiter();
    book.record(&intent("pvc-2", "2"), tx).unwrap();
    assert_eq!(book.waiting(), (true, true));
    assert_eq!(book.records_waiting(), 1);
    let (second, second_waiters) = book.take();
    assert_eq!(
        second.data.keys().collect::<Vec<_>>(),
        vec!["pvc-2"],
        "pvc-1 is held back while its record is in flight"
    );
    assert_eq!(book.waiting(), (false, false), "nothing may start now");
    // The second write is answered first: pvc-2 is stored, pvc-1's release still waits.
    book.stored(&second, second_waiters);
    assert_eq!(rx2.try_recv().unwrap(), Ok(()));
    assert_eq!(book.waiting(), (false, false));
    book.stored(&first, first_waiters);
    assert_eq!(rx1.try_recv().unwrap(), Ok(()));
    assert_eq!(book.for_claim("1"), None, "released while in flight");
    assert_eq!(book.waiting(), (false, true), "the release may go now");
    let (third, _) = book.take();
    assert_eq!(third.data, BTreeMap::from([("pvc-1".to_string(), None)]));
    assert_eq!(book.len(), 1);
    assert_eq!(
        book.bytes(),
        "pvc-2".len() + serde_json::to_string(&intent("pvc-2", "2")).unwrap().len(),
        "pvc-1's bytes are no longer counted"
    );
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
    book.stored(&batch, waiters);
    assert_eq!(rx.try_recv().unwrap(), Ok(()));
    assert_eq!(book.for_claim("1"), Some(intent("pvc-1", "1")));
    assert_eq!(book.for_key("ns", "claim-1").len(), 1);
    assert_eq!(
        book.claim_keys(),
        vec![controller_kit::NamespacedName::new("ns", "claim-1")]
    );
    assert_eq!(book.waiting(), (false, false));
}

#[test]
fn the_intents_in_flight_say_where_each_record_is() {
    let mut book = Book::default();
    let (tx, _rx) = waiter();
    book.record(&intent("pvc-1", "1"), tx).unwrap();
    let state = |b: &Book| -> Vec<(String, String)> {
        b.in_flight()
            .iter()
            .map(|v| {
                (
                    v["claim"].as_str().unwrap_or("?").to_string(),
                    v["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        state(&book),
        [("ns/claim-1".to_string(), "recording".to_string())]
    );
    let (batch, waiters) = book.take();
    book.stored(&batch, waiters);
    assert_eq!(
        state(&book),
        [("ns/claim-1".to_string(), "stored".to_string())]
    );
    book.release("pvc-1");
    assert!(
        state(&book).is_empty(),
        "a released intent is no longer in flight"
    );
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
    book.stored(&batch, waiters);
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
    assert_eq!(book.bytes(), 0, "no bytes left counted");
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
    let full = book.full_data(&batch, 0);
    assert_eq!(full.keys().collect::<Vec<_>>(), vec!["pvc-5"]);
}

/// An intent whose JSON is about `kib` KiB (a big recorded request).
fn big_intent(volume: &str, uid: &str, kib: usize) -> Intent {
    let mut i = intent(volume, uid);
    i.request
        .parameters
        .insert("padding".into(), "x".repeat(kib * 1024));
    i
}

/// Issue 10, item 3: entries that stay (a rollback the driver keeps refusing) fill one shard; a
/// new claim's record goes to the next, never refused while a shard has room.
#[test]
fn a_full_shard_spills_into_the_next_and_releases_go_where_the_entry_is() {
    let mut book = Book::default();
    // Shard 0 nearly full of entries that stay.
    for n in 0..8 {
        let (tx, _rx) = waiter();
        book.record(&big_intent(&format!("stuck-{n}"), &n.to_string(), 110), tx)
            .unwrap();
    }
    let (batch, waiters) = book.take();
    assert_eq!(batch.shards(), BTreeSet::from([0]));
    book.stored(&batch, waiters);
    // The next one does not fit in shard 0.
    let (tx, _rx) = waiter();
    book.record(&big_intent("new", "new", 110), tx)
        .expect("a new claim is not refused while another shard has room");
    let (batch, waiters) = book.take();
    assert_eq!(batch.shards(), BTreeSet::from([1]));
    assert!(batch.patch_for(1)["data"]["new"].is_string());
    assert!(batch.patch_for(0)["data"].as_object().unwrap().is_empty());
    book.stored(&batch, waiters);
    // Its release is written to its shard; a stuck one's to shard 0.
    book.release("new");
    book.release("stuck-3");
    let (batch, _) = book.take();
    assert_eq!(batch.shards(), BTreeSet::from([0, 1]));
    assert!(batch.patch_for(1)["data"]["new"].is_null());
    assert!(batch.patch_for(0)["data"]["stuck-3"].is_null());
    // A re-created shard holds only its own entries.
    assert_eq!(book.full_data(&batch, 1).len(), 0);
    assert_eq!(book.full_data(&batch, 0).len(), 7);
}

#[test]
fn every_shard_full_refuses_with_a_clear_error() {
    let mut book = Book::default();
    let mut n = 0;
    let error = loop {
        let (tx, _rx) = waiter();
        match book.record(&big_intent(&format!("v-{n}"), &n.to_string(), 400), tx) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "never refused");
    };
    assert_eq!(n, 2 * MAX_SHARDS, "two of these per shard");
    assert!(error.contains("the intent journal is full"), "{error}");
}

#[test]
fn loading_shards_restores_where_each_entry_is() {
    let mut book = Book::default();
    let json = |v: &str, u: &str| serde_json::to_string(&intent(v, u)).unwrap();
    book.load(&BTreeMap::from([("a".to_string(), json("a", "1"))]), "d");
    book.load_shard(2, &BTreeMap::from([("b".to_string(), json("b", "2"))]), "d");
    assert_eq!(book.len(), 2);
    book.release("b");
    let (batch, _) = book.take();
    assert_eq!(batch.shards(), BTreeSet::from([2]));
}

/// The writer loop against a fake store whose writes finish when the test says so.
mod writer {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::{Semaphore, mpsc};
    use tokio::time::Instant;

    /// Each write reports its keys (`None` for a release) and when it started, then waits for a
    /// permit.
    /// Writes holding a key of `failing` fail once their permit comes.
    struct Fake {
        writes: mpsc::UnboundedSender<(Vec<(String, bool)>, Instant)>,
        done: Semaphore,
        failing: std::sync::Mutex<BTreeSet<String>>,
    }

    impl Store for Arc<Fake> {
        async fn store(&self, batch: &Batch) -> Result<(), Error> {
            let keys = batch
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.is_some()))
                .collect();
            self.writes.send((keys, Instant::now())).unwrap();
            self.done.acquire().await.unwrap().forget();
            let failing = self.failing.lock().unwrap();
            match batch.data.keys().find(|k| failing.contains(*k)) {
                Some(k) => Err(Error::Journal(format!("{k} refused"))),
                None => Ok(()),
            }
        }
    }

    type Writes = mpsc::UnboundedReceiver<(Vec<(String, bool)>, Instant)>;

    /// A journal with `workers` claim workers whose writer runs against a fake store; the
    /// client is never called.
    fn start(workers: usize) -> (Arc<Journal>, Arc<Fake>, Writes, CancellationToken) {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let journal = Arc::new(Journal::new(client, "ns", "d", None, workers));
        let (tx, rx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            writes: tx,
            done: Semaphore::new(0),
            failing: Default::default(),
        });
        let token = CancellationToken::new();
        let (j, f, t) = (journal.clone(), fake.clone(), token.clone());
        tokio::spawn(async move { j.write_to(&f, t).await });
        (journal, fake, rx, token)
    }

    fn record(journal: &Arc<Journal>, n: u32) -> tokio::task::JoinHandle<Result<(), Error>> {
        let j = journal.clone();
        tokio::spawn(async move { j.record(&intent(&format!("pvc-{n}"), &n.to_string())).await })
    }

    /// Records `ns`, one every `gap` (the first after one gap).
    async fn spaced_records(
        journal: &Arc<Journal>,
        ns: std::ops::Range<u32>,
        gap: Duration,
    ) -> Vec<tokio::task::JoinHandle<Result<(), Error>>> {
        let mut passes = Vec::new();
        for n in ns {
            tokio::time::sleep(gap).await;
            passes.push(record(journal, n));
            settle().await;
        }
        passes
    }

    fn key(n: u32, record: bool) -> (String, bool) {
        (format!("pvc-{n}"), record)
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_record_is_written_at_once_and_acknowledged_once_stored() {
        let (journal, fake, mut writes, token) = start(100);
        let t0 = Instant::now();
        let pass = record(&journal, 1);
        let (keys, at) = writes.recv().await.unwrap();
        assert_eq!(keys, vec![key(1, true)]);
        assert_eq!(at, t0, "no timer before the write");
        settle().await;
        assert!(!pass.is_finished(), "not acknowledged before it is stored");
        assert!(!journal.has_claim("1"));
        fake.done.add_permits(1);
        pass.await.unwrap().unwrap();
        assert!(journal.has_claim("1"));
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn records_arriving_during_a_write_share_the_next_one() {
        let (journal, fake, mut writes, token) = start(100);
        let t0 = Instant::now();
        let first = record(&journal, 1);
        assert_eq!(writes.recv().await.unwrap().0, vec![key(1, true)]);
        // Three records, 150 ms apart (a stream that goes on), and a release arrive while the
        // first write is in flight.
        let later = spaced_records(&journal, 2..5, ms(150)).await;
        journal.release("pvc-0");
        assert!(
            writes.try_recv().is_err(),
            "fewer than half the workers wait for the write in flight"
        );
        fake.done.add_permits(1);
        first.await.unwrap().unwrap();
        // A stream: they share the next write, LINGER after the first one started.
        let (keys, at) = writes.recv().await.unwrap();
        assert_eq!(
            keys,
            vec![key(0, false), key(2, true), key(3, true), key(4, true)]
        );
        assert_eq!(at, t0 + LINGER);
        settle().await;
        for pass in &later {
            assert!(!pass.is_finished(), "acknowledged only once stored");
        }
        fake.done.add_permits(1);
        for pass in later {
            pass.await.unwrap().unwrap();
        }
        token.cancel();
    }

    /// With `workers` claim workers and a write in flight, `full` records arriving behind it
    /// go in a write of their own at once: no linger, no wait for the first write's answer.
    async fn a_full_write_goes_at_once(workers: usize, full: u32) {
        let (journal, fake, mut writes, token) = start(workers);
        let first = record(&journal, 1);
        assert_eq!(writes.recv().await.unwrap().0, vec![key(1, true)]);
        tokio::time::sleep(ms(50)).await;
        let arrived = Instant::now();
        let later: Vec<_> = (2..2 + full).map(|n| record(&journal, n)).collect();
        let (keys, at) = writes.recv().await.unwrap();
        let mut want: Vec<_> = (2..2 + full).map(|n| key(n, true)).collect();
        want.sort();
        assert_eq!(keys, want, "all of them, in key order");
        assert_eq!(at, arrived, "no linger, no wait for the write in flight");
        settle().await;
        assert!(!first.is_finished(), "the first write is still in flight");
        fake.done.add_permits(2);
        first.await.unwrap().unwrap();
        for pass in later {
            pass.await.unwrap().unwrap();
        }
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn when_half_the_workers_wait_the_next_write_goes_at_once() {
        // 6 workers: 3 waiting records are a full write.
        a_full_write_goes_at_once(6, 3).await;
    }

    #[tokio::test(start_paused = true)]
    async fn with_many_workers_ten_waiting_records_are_a_full_write() {
        a_full_write_goes_at_once(100, FULL_WRITE as u32).await;
    }

    #[tokio::test(start_paused = true)]
    async fn releases_ride_along_with_a_record_or_go_alone_after_their_window() {
        let (journal, fake, mut writes, token) = start(100);
        fake.done.add_permits(10);
        // A record within the window takes the release along.
        let t0 = Instant::now();
        journal.release("pvc-0");
        tokio::time::sleep(RELEASE_WINDOW / 2).await;
        record(&journal, 1).await.unwrap().unwrap();
        let (keys, at) = writes.recv().await.unwrap();
        assert_eq!(keys, vec![key(0, false), key(1, true)]);
        assert_eq!(at, t0 + RELEASE_WINDOW / 2);
        // Without one, releases go alone, together, after the window.
        let t1 = Instant::now();
        journal.release("pvc-1");
        journal.release("pvc-2");
        let (keys, at) = writes.recv().await.unwrap();
        assert_eq!(keys, vec![key(1, false), key(2, false)]);
        assert_eq!(at, t1 + RELEASE_WINDOW);
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_in_flight_writes_go_at_once() {
        // 2 workers: every record is a full write.
        let (journal, fake, mut writes, token) = start(2);
        let n = MAX_IN_FLIGHT as u32;
        let mut passes = Vec::new();
        for i in 1..=n {
            passes.push(record(&journal, i));
            assert_eq!(writes.recv().await.unwrap().0, vec![key(i, true)]);
        }
        passes.extend([record(&journal, n + 1), record(&journal, n + 2)]);
        settle().await;
        assert!(writes.try_recv().is_err(), "no more than {n} in flight");
        // One answer makes room: the two records left share the next write.
        fake.done.add_permits(1);
        let (keys, _) = writes.recv().await.unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        fake.done.add_permits(n as usize);
        for pass in passes {
            pass.await.unwrap().unwrap();
        }
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_leaves_the_others_in_flight_and_pauses_new_ones() {
        let (journal, fake, mut writes, token) = start(2);
        fake.failing.lock().unwrap().insert("pvc-1".into());
        let one = record(&journal, 1);
        assert_eq!(writes.recv().await.unwrap().0, vec![key(1, true)]);
        let two = record(&journal, 2);
        assert_eq!(writes.recv().await.unwrap().0, vec![key(2, true)]);
        // The first write's answer: refused.
        fake.done.add_permits(1);
        let e = one.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("pvc-1 refused"), "{e}");
        let failed = Instant::now();
        assert!(!journal.has_claim("1"));
        // A record arriving now waits out the pause; the second write is still in flight.
        let three = record(&journal, 3);
        let (keys, at) = writes.recv().await.unwrap();
        assert_eq!(keys, vec![key(3, true)]);
        assert_eq!(at, failed + WRITE_BACKOFF.0, "no write during the pause");
        assert!(!two.is_finished());
        fake.done.add_permits(2);
        two.await.unwrap().unwrap();
        three.await.unwrap().unwrap();
        assert!(journal.has_claim("2") && journal.has_claim("3"));
        token.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_tail_of_a_burst_goes_once_the_records_stop() {
        let (journal, fake, mut writes, token) = start(100);
        let t0 = Instant::now();
        let first = record(&journal, 1);
        assert_eq!(writes.recv().await.unwrap().0, vec![key(1, true)]);
        // The last three records of a burst, 5 ms apart, fewer than a full write.
        let tail = spaced_records(&journal, 2..5, ms(5)).await;
        tokio::time::sleep(ms(85)).await;
        fake.done.add_permits(1);
        first.await.unwrap().unwrap();
        let (keys, at) = writes.recv().await.unwrap();
        assert_eq!(keys, vec![key(2, true), key(3, true), key(4, true)]);
        assert_eq!(
            at,
            t0 + ms(100),
            "at once when the first write is stored, not LINGER after it started"
        );
        fake.done.add_permits(1);
        for pass in tail {
            pass.await.unwrap().unwrap();
        }
        token.cancel();
    }
}
