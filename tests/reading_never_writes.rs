//! Reading never writes: opening a stream, reading it, loading an aggregate
//! from it or subscribing to it creates nothing (no catalog entry, no commit),
//! so a misspelt name cannot make a stream. A stream is created by its first
//! append, inside that append's transaction, bound to the appender's type.
//! The one exception is asked for by name: an aggregate whose snapshot
//! policy says `on_load` stores a due snapshot after a load.

use std::path::Path;

use heed::types::Bytes;
use rkyv::{Archive, Serialize};
use varvedb::{
    Aggregate, Error, Event, ExpectedVersion, GlobalSequence, Snapshots, StreamId, StreamSequence,
    Varve,
};
use varvedb_suite::{ArchivedOrder, Order};

#[derive(Archive, Serialize, Debug)]
struct Other {
    x: u32,
}

#[derive(Archive, Serialize, Event)]
#[event(stream = "audits")]
struct Audited {
    by: u32,
}

/// Counts the orders of an id.
#[derive(Default, Debug)]
struct Tally(u64);

impl Aggregate for Tally {
    type Event = Order;
    type Command = ();
    type Error = std::convert::Infallible;
    const STREAM: &'static str = "tallies";
    fn apply(&mut self, _: &ArchivedOrder) {
        self.0 += 1;
    }
    fn handle(&self, _: &()) -> Result<Vec<Order>, Self::Error> {
        Ok(vec![Order::numbered(self.0)])
    }
}

/// The stream names in the data file's catalog, read with LMDB directly
/// (every varvedb handle on `path` must be dropped).
fn catalog_names(path: &Path) -> Vec<String> {
    // SAFETY: the test owns the store directory and no varvedb handle is open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).open(path) }.unwrap();
    let rtxn = env.read_txn().unwrap();
    let catalog = env
        .open_databases_and_commit(rtxn, |opener, rtxn| -> heed::Result<_> {
            let db = opener.open_database::<Bytes, Bytes>(rtxn, Some("catalog"))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit()
        .expect("the catalog database exists");
    let rtxn = env.read_txn().unwrap();
    catalog
        .iter(&rtxn)
        .unwrap()
        .map(|entry| entry.unwrap().0.to_vec())
        .filter(|key| key.first() == Some(&b'n'))
        .map(|key| String::from_utf8(key[1..].to_vec()).unwrap_or_else(|_| "(hashed)".into()))
        .collect()
}

#[test]
fn opening_reading_loading_and_subscribing_to_unknown_streams_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let before = varve.last_commit_id();
    let id = StreamId(1);

    let typo = varve.stream::<Order, 64>("ordres").unwrap();
    assert_eq!(typo.version(id).unwrap(), None);
    let mut reader = typo.reader();
    assert!(reader
        .get_archived(id, StreamSequence(0))
        .unwrap()
        .is_none());
    assert!(reader.get_bytes(id, StreamSequence(0)).unwrap().is_none());
    assert_eq!(reader.iter_stream(id, None).unwrap().count(), 0);
    assert_eq!(
        reader
            .iter_stream(id, None)
            .unwrap()
            .try_fold_archived(0, |n, _, _| n + 1)
            .unwrap(),
        0
    );
    assert!(reader
        .iter_stream(id, None)
        .unwrap()
        .collect_bytes()
        .unwrap()
        .is_empty());
    assert_eq!(reader.version(id).unwrap(), None);
    assert_eq!(reader.load::<Tally>(id).unwrap().version, None);
    let mut following = reader.subscribe(id, StreamSequence(0));
    assert!(following.try_next().unwrap().is_none());

    let loaded = varve.load::<Tally>(id).unwrap();
    assert_eq!((loaded.state.0, loaded.version), (0, None));

    let audits = varve.events::<Audited>().unwrap();
    assert_eq!(audits.version(id).unwrap(), None);
    assert_eq!(audits.reader().iter_stream(id, None).unwrap().count(), 0);

    let mut everything = varve.subscribe(GlobalSequence(0));
    assert!(everything.try_next().unwrap().is_none());

    assert_eq!(varve.last_commit_id(), before, "a read committed something");
    assert_eq!(varve.verify().unwrap().streams, 0);
    drop((typo, reader, following, audits, everything, varve));
    assert!(catalog_names(dir.path()).is_empty());

    // The first append creates the stream, in its own commit.
    let varve = Varve::new(dir.path()).unwrap();
    let before = varve.last_commit_id();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    assert_eq!(varve.last_commit_id(), before);
    orders.append(id, &Order::numbered(1)).unwrap();
    assert_eq!(
        varve.last_commit_id(),
        before + 1,
        "one commit: entry and event"
    );
    drop((orders, varve));
    // (An encrypted store keeps a keyed hash of the name, not the name.)
    let names = catalog_names(dir.path());
    if varvedb_suite::encrypted_run() {
        assert_eq!(names, ["(hashed)"]);
    } else {
        assert_eq!(names, ["orders"]);
    }
}

#[test]
fn a_rejected_first_append_creates_no_stream() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    let refused = orders.append_expected(
        StreamId(1),
        &Order::numbered(1),
        ExpectedVersion::Exact(StreamSequence(3)),
    );
    assert!(
        matches!(refused, Err(Error::VersionConflict { actual: None, .. })),
        "{refused:?}"
    );
    assert!(matches!(
        varve.execute_expected::<Tally>(StreamId(1), &(), ExpectedVersion::StreamExists),
        Err(varvedb::ExecuteError::Store(Error::VersionConflict { .. }))
    ));
    assert_eq!(varve.verify().unwrap().streams, 0);
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(0));
    drop((orders, varve));
    assert!(catalog_names(dir.path()).is_empty());
}

#[test]
fn handles_opened_before_a_stream_exists_see_it_once_it_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let id = StreamId(4);
    // Opened first, by separate handles: none of them creates anything.
    let mut early_reader = varve.stream::<Order, 64>("orders").unwrap().reader();
    let mut early_sub = early_reader.subscribe(id, StreamSequence(0));
    assert!(early_sub.try_next().unwrap().is_none());
    let early_writer = varve.stream::<Order, 64>("orders").unwrap();
    assert_eq!(early_writer.version(id).unwrap(), None);

    varve
        .stream::<Order, 64>("orders")
        .unwrap()
        .append(id, &Order::numbered(7))
        .unwrap();

    assert_eq!(
        early_reader
            .get_archived(id, StreamSequence(0))
            .unwrap()
            .unwrap()
            .id,
        7
    );
    assert_eq!(early_writer.version(id).unwrap(), Some(StreamSequence(0)));
    assert_eq!(early_sub.try_next().unwrap().expect("created since").id, 7);

    // An aggregate executed on a stream that does not exist creates it.
    let executed = varve.execute::<Tally>(StreamId(1), &()).unwrap();
    assert_eq!(executed.version, Some(StreamSequence(0)));
    assert_eq!(varve.load::<Tally>(StreamId(1)).unwrap().state.0, 1);
    assert_eq!(varve.verify().unwrap().streams, 2);
}

#[test]
fn of_two_handles_opened_before_creation_with_different_types_the_second_to_append_gets_a_type_mismatch(
) {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut orders = varve.stream::<Order, 64>("things").unwrap();
    let mut others = varve.stream::<Other, 64>("things").unwrap();
    let mut others_reader = others.reader();

    orders.append(StreamId(1), &Order::numbered(1)).unwrap();
    let before = (varve.last_commit_id(), varve.global_reader().end().unwrap());
    match others.append(StreamId(1), &Other { x: 1 }) {
        Err(Error::TypeMismatch {
            stream,
            stored,
            requested,
            ..
        }) => {
            assert_eq!(stream, "things");
            assert!(stored.ends_with("Order"), "{stored}");
            assert!(requested.ends_with("Other"), "{requested}");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    assert!(matches!(
        others.append_batch(StreamId(2), &[Other { x: 2 }]),
        Err(Error::TypeMismatch { .. })
    ));
    assert_eq!(
        (varve.last_commit_id(), varve.global_reader().end().unwrap()),
        before,
        "the refused appends wrote nothing"
    );
    // Its reads refuse the stream too, and opening it now fails at once.
    assert!(matches!(
        others_reader.get_archived(StreamId(1), StreamSequence(0)),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        others_reader.iter_stream(StreamId(1), None),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        others_reader
            .subscribe(StreamId(1), StreamSequence(0))
            .try_next(),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        varve.stream::<Other, 64>("things"),
        Err(Error::TypeMismatch { .. })
    ));
    // The first type goes on.
    orders.append(StreamId(1), &Order::numbered(2)).unwrap();
}

#[test]
fn opening_a_plain_stream_as_a_derived_event_writes_nothing_until_its_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    varve
        .stream::<Audited, 16>("audits")
        .unwrap()
        .append(StreamId(1), &Audited { by: 1 })
        .unwrap();
    let before = varve.last_commit_id();
    let mut audits = varve.events::<Audited>().unwrap();
    assert_eq!(
        audits.version(StreamId(1)).unwrap(),
        Some(StreamSequence(0))
    );
    assert_eq!(varve.last_commit_id(), before);
    // The first append records the derive's fingerprint with its events.
    audits.append(StreamId(1), &Audited { by: 2 }).unwrap();
    assert_eq!(varve.last_commit_id(), before + 1);
    audits.append(StreamId(1), &Audited { by: 3 }).unwrap();
    assert_eq!(
        audits.version(StreamId(1)).unwrap(),
        Some(StreamSequence(2))
    );
}

/// Writers of two types race to create one stream through group commit: one
/// type wins, every append of it lands, every append of the other is a
/// `TypeMismatch`, and nothing else fails.
#[test]
fn writers_of_two_types_racing_to_create_a_stream_bind_it_to_exactly_one() {
    const PER_WRITER: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let spawn_writer = |n: u64, orders: bool| {
        let varve = varve.clone();
        let start = std::sync::Arc::clone(&start);
        std::thread::spawn(move || {
            let mut a = varve.stream::<Order, 64>("contested").unwrap();
            let mut b = varve.stream::<Other, 64>("contested").unwrap();
            start.wait();
            let (mut landed, mut refused) = (0u64, 0u64);
            for i in 0..PER_WRITER {
                let result = if orders {
                    a.append(StreamId(n), &Order::numbered(i)).map(drop)
                } else {
                    b.append(StreamId(n), &Other { x: i as u32 }).map(drop)
                };
                match result {
                    Ok(()) => landed += 1,
                    Err(Error::TypeMismatch { .. }) => refused += 1,
                    Err(e) => panic!("writer {n}: {e}"),
                }
            }
            (orders, landed, refused)
        })
    };
    let writers: Vec<_> = (0..4).map(|n| spawn_writer(n, n % 2 == 0)).collect();
    let outcomes: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let winner = outcomes
        .iter()
        .find(|o| o.1 > 0)
        .map(|o| o.0)
        .expect("some type wins");
    for (orders, landed, refused) in &outcomes {
        if *orders == winner {
            assert_eq!((*landed, *refused), (PER_WRITER, 0));
        } else {
            assert_eq!((*landed, *refused), (0, PER_WRITER));
        }
    }
    assert_eq!(
        varve.global_reader().end().unwrap(),
        GlobalSequence(2 * PER_WRITER)
    );
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.streams, 1);
}

/// [`Tally`] with a snapshot due at every load, but not asked to store it.
#[derive(Default, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapTally(u64);

impl Aggregate for SnapTally {
    type Event = Order;
    type Command = ();
    type Error = std::convert::Infallible;
    const STREAM: &'static str = "tallies";
    fn apply(&mut self, _: &ArchivedOrder) {
        self.0 += 1;
    }
    fn handle(&self, _: &()) -> Result<Vec<Order>, Self::Error> {
        Ok(vec![Order::numbered(self.0)])
    }
    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(1)
    }
}

#[test]
fn loads_with_snapshots_due_write_nothing_unless_the_policy_says_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let id = StreamId(2);
    let orders: Vec<Order> = (0..5).map(Order::numbered).collect();
    varve
        .events_in::<Order>("tallies")
        .unwrap()
        .append_batch(id, &orders)
        .unwrap();
    let before = varve.last_commit_id();
    let mut reader = varve.events_in::<Order>("tallies").unwrap().reader();
    for _ in 0..3 {
        let loaded = varve.load::<SnapTally>(id).unwrap();
        assert_eq!((loaded.state.0, loaded.snapshot), (5, None));
        assert_eq!(reader.load::<SnapTally>(id).unwrap().snapshot, None);
    }
    assert_eq!(varve.last_commit_id(), before, "a load committed something");
}
