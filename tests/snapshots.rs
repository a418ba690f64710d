//! A stored snapshot only ever shortens a load: it is written with its
//! events (or, with `Snapshots::on_load`, by a load that folded an
//! interval's worth of them), used to fold just the tail, and ignored (the
//! stream replayed in full) when it was made by another state layout or is
//! damaged. Storing one never changes a loaded state or fails a load.

use std::cell::Cell;

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Aggregate, Snapshots, StreamId, StreamSequence, Varve};
use varvedb_suite::flip_in_data_file;

/// The counters' events (public: the versioned states below expose it).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, varvedb::Event)]
pub enum Counted {
    /// Adds to the total.
    Added(u64),
    /// Sets the total to 0.
    Cleared,
}

thread_local! {
    /// `apply` calls on this thread: what a load folded.
    static APPLIED: Cell<u64> = const { Cell::new(0) };
}

fn applied_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = APPLIED.with(Cell::get);
    let r = f();
    (r, APPLIED.with(Cell::get) - before)
}

/// Text that appears in a stored state, never in an event.
const MARKER: &str = "snapshot-marker-41f09c";

macro_rules! counter_aggregate {
    ($ty:ident, every = $every:expr) => {
        impl Aggregate for $ty {
            type Event = Counted;
            type Command = Vec<Counted>;
            type Error = std::convert::Infallible;
            const STREAM: &'static str = "counters";

            fn apply(&mut self, event: &ArchivedCounted) {
                APPLIED.with(|a| a.set(a.get() + 1));
                self.fold(event);
            }

            fn handle(&self, events: &Vec<Counted>) -> Result<Vec<Counted>, Self::Error> {
                Ok(events.clone())
            }

            fn snapshots() -> Snapshots<Self> {
                Snapshots::every($every)
            }
        }
    };
}

mod v1 {
    use super::*;

    /// The state as first shipped.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Counter {
        pub total: u64,
        pub label: String,
    }

    impl Default for Counter {
        fn default() -> Self {
            Counter {
                total: 0,
                label: MARKER.into(),
            }
        }
    }

    impl Counter {
        fn fold(&mut self, event: &ArchivedCounted) {
            match event {
                ArchivedCounted::Added(n) => self.total += n.to_native(),
                ArchivedCounted::Cleared => self.total = 0,
            }
        }
    }

    counter_aggregate!(Counter, every = 10);
}

mod v2 {
    use super::*;

    /// The same aggregate after a release that added a field: another layout.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
    pub struct Counter {
        pub total: u64,
        pub events: u64,
    }

    impl Counter {
        fn fold(&mut self, event: &ArchivedCounted) {
            self.events += 1;
            match event {
                ArchivedCounted::Added(n) => self.total += n.to_native(),
                ArchivedCounted::Cleared => self.total = 0,
            }
        }
    }

    counter_aggregate!(Counter, every = 10);
}

/// Appends `n` events `Added(1)`, `batch` per command, through `A::execute`.
fn add<A: Aggregate<Command = Vec<Counted>>>(varve: &Varve, id: StreamId, n: u64, batch: u64)
where
    A::Error: std::fmt::Debug,
{
    for _ in 0..n / batch {
        let events = vec![Counted::Added(1); batch as usize];
        varve.execute::<A>(id, &events).unwrap();
    }
}

#[test]
fn a_long_stream_loads_from_its_snapshot_and_folds_only_the_tail() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(1);
    add::<v1::Counter>(&varve, id, 1000, 10);

    let (loaded, folded) = applied_during(|| varve.load::<v1::Counter>(id).unwrap());
    assert_eq!(loaded.state.total, 1000);
    assert_eq!(loaded.version, Some(StreamSequence(999)));
    assert_eq!(loaded.snapshot, Some(StreamSequence(999)));
    assert_eq!(folded, 0, "the snapshot covers every event");

    // Seven more events, appended outside any command: no new snapshot.
    let mut stream = varve.events_in::<Counted>("counters").unwrap();
    stream
        .append_batch(id, &vec![Counted::Added(2); 7])
        .unwrap();
    let (loaded, folded) = applied_during(|| varve.load::<v1::Counter>(id).unwrap());
    assert_eq!((loaded.state.total, folded), (1014, 7));
    assert_eq!(loaded.version, Some(StreamSequence(1006)));
    let mut reader = stream.reader();
    let (from_reader, folded) = applied_during(|| reader.load::<v1::Counter>(id).unwrap());
    assert_eq!((from_reader, folded), (loaded, 7));
}

#[test]
fn snapshots_are_written_every_n_events_in_the_same_commit() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(2);
    let one = vec![Counted::Added(1)];
    for n in 0..25u64 {
        let done = varve.execute::<v1::Counter>(id, &one).unwrap();
        assert_eq!(done.version, Some(StreamSequence(n)));
        let loaded = varve.load::<v1::Counter>(id).unwrap();
        // Stored after 10 and 20 events, covering sequences 9 and 19.
        let expected = (n >= 9).then(|| StreamSequence(n - (n + 1) % 10));
        assert_eq!(loaded.snapshot, expected, "after event {n}");
        assert_eq!(loaded.state, done.state);
    }
    // A batch crossing the interval stores a snapshot of its end.
    varve
        .execute::<v1::Counter>(id, &vec![Counted::Added(1); 12])
        .unwrap();
    let loaded = varve.load::<v1::Counter>(id).unwrap();
    assert_eq!(loaded.snapshot, Some(StreamSequence(36)));
    assert_eq!(loaded.state.total, 37);
}

#[test]
fn a_snapshot_of_another_layout_is_ignored_and_the_stream_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let id = StreamId(3);
    {
        let varve = Varve::new(dir.path()).unwrap();
        add::<v1::Counter>(&varve, id, 24, 1);
        varve
            .execute::<v1::Counter>(id, &vec![Counted::Cleared, Counted::Added(5)])
            .unwrap();
        let loaded = varve.load::<v1::Counter>(id).unwrap();
        assert_eq!(loaded.snapshot, Some(StreamSequence(19)));
    }

    // The next release reads the same stream with the new state type.
    let varve = Varve::new(dir.path()).unwrap();
    let (loaded, folded) = applied_during(|| varve.load::<v2::Counter>(id).unwrap());
    assert_eq!(loaded.snapshot, None, "v1's snapshot is not v2's");
    assert_eq!(folded, 26, "every event replayed");
    assert_eq!(
        loaded.state,
        v2::Counter {
            total: 5,
            events: 26
        }
    );

    // v2's first command stores a v2 snapshot in place of v1's...
    varve
        .execute::<v2::Counter>(id, &vec![Counted::Added(1)])
        .unwrap();
    let (loaded, folded) = applied_during(|| varve.load::<v2::Counter>(id).unwrap());
    assert_eq!((loaded.snapshot, folded), (Some(StreamSequence(26)), 0));
    assert_eq!(loaded.state.events, 27);
    // ...which v1, in turn, ignores.
    let (old, folded) = applied_during(|| varve.load::<v1::Counter>(id).unwrap());
    assert_eq!((old.snapshot, folded, old.state.total), (None, 27, 6));
}

/// Flips a bit at `offset` of every stored snapshot value (`snap/` keys of
/// the `state` database), through LMDB directly.
fn flip_sealed_snapshots(dir: &std::path::Path, offset: usize) {
    use heed::types::Bytes;
    // SAFETY: the test owns the directory and no varvedb handle is open on it.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir) }.unwrap();
    let rtxn = env.read_txn().unwrap();
    let state = env
        .open_databases_and_commit(rtxn, |opener, rtxn| -> heed::Result<_> {
            let db = opener.open_database::<Bytes, Bytes>(rtxn, Some("state"))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit()
        .expect("the state database exists");
    let mut wtxn = env.write_txn().unwrap();
    let found: Vec<(Vec<u8>, Vec<u8>)> = state
        .prefix_iter(&wtxn, b"snap/")
        .unwrap()
        .map(|e| e.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert!(!found.is_empty(), "a snapshot is stored");
    for (k, mut v) in found {
        v[offset] ^= 0x20;
        state.put(&mut wtxn, &k, &v).unwrap();
    }
    wtxn.commit().unwrap();
}

fn damaged_snapshot_is_ignored(needle: &[u8], offset: usize) {
    let dir = tempfile::tempdir().unwrap();
    let id = StreamId(4);
    {
        let varve = Varve::new(dir.path()).unwrap();
        add::<v1::Counter>(&varve, id, 30, 5);
        assert_eq!(
            varve.load::<v1::Counter>(id).unwrap().snapshot,
            Some(StreamSequence(29))
        );
    }
    if varvedb_suite::encrypted_run() {
        // The snapshot is sealed: damage its sealed bytes instead (past the
        // key id and nonce), which must be ignored the same way.
        flip_sealed_snapshots(dir.path(), 28 + offset);
    } else {
        flip_in_data_file(dir.path(), needle, offset);
    }

    let varve = Varve::new(dir.path()).unwrap();
    let (loaded, folded) = applied_during(|| varve.load::<v1::Counter>(id).unwrap());
    assert_eq!(loaded.snapshot, None, "the damaged snapshot is not used");
    assert_eq!(folded, 30, "every event replayed");
    assert_eq!(loaded.state.total, 30);
    assert_eq!(
        loaded.state.label, MARKER,
        "not a damaged copy of the state"
    );
    assert!(varve.verify().unwrap().is_ok(), "the events are intact");

    // The next command replaces it with a sound one.
    varve
        .execute::<v1::Counter>(id, &vec![Counted::Added(1)])
        .unwrap();
    let (loaded, folded) = applied_during(|| varve.load::<v1::Counter>(id).unwrap());
    assert_eq!((loaded.snapshot, folded), (Some(StreamSequence(30)), 0));
    assert_eq!(loaded.state.total, 31);
}

#[test]
fn a_snapshot_with_a_flipped_state_byte_is_ignored() {
    damaged_snapshot_is_ignored(MARKER.as_bytes(), 5);
}

#[test]
fn a_snapshot_with_a_flipped_header_byte_is_ignored() {
    // The magic, then format version 1: flip a bit of the version.
    damaged_snapshot_is_ignored(b"VSNP\x01\x00\x00\x00", 4);
}

#[test]
fn loads_without_snapshots_ignore_stored_ones() {
    #[derive(Default, Debug, PartialEq)]
    struct Plain(u64);
    impl Aggregate for Plain {
        type Event = Counted;
        type Command = ();
        type Error = ();
        const STREAM: &'static str = "counters";
        fn apply(&mut self, event: &ArchivedCounted) {
            if let ArchivedCounted::Added(n) = event {
                self.0 += n.to_native();
            }
        }
        fn handle(&self, _: &()) -> Result<Vec<Counted>, ()> {
            Ok(vec![])
        }
    }
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(5);
    add::<v1::Counter>(&varve, id, 20, 5);
    let loaded = varve.load::<Plain>(id).unwrap();
    assert_eq!((loaded.state, loaded.snapshot), (Plain(20), None));
}

mod on_load {
    use super::*;

    /// v1's counter, whose loads store snapshots too.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
    pub struct Counter {
        pub total: u64,
        pub events: u64,
    }

    impl Counter {
        fn fold(&mut self, event: &ArchivedCounted) {
            self.events += 1;
            match event {
                ArchivedCounted::Added(n) => self.total += n.to_native(),
                ArchivedCounted::Cleared => self.total = 0,
            }
        }
    }

    impl Aggregate for Counter {
        type Event = Counted;
        type Command = Vec<Counted>;
        type Error = std::convert::Infallible;
        const STREAM: &'static str = "counters";

        fn apply(&mut self, event: &ArchivedCounted) {
            APPLIED.with(|a| a.set(a.get() + 1));
            self.fold(event);
        }

        fn handle(&self, events: &Vec<Counted>) -> Result<Vec<Counted>, Self::Error> {
            Ok(events.clone())
        }

        fn snapshots() -> Snapshots<Self> {
            Snapshots::every(10).on_load()
        }
    }

    /// A state of 100 kB per event: a snapshot of a few events does not fit
    /// in a 256 KiB map.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
    pub struct Bulky {
        pub bytes: Vec<u8>,
    }

    impl Aggregate for Bulky {
        type Event = Counted;
        type Command = ();
        type Error = std::convert::Infallible;
        const STREAM: &'static str = "counters";

        fn apply(&mut self, _: &ArchivedCounted) {
            let next = self.bytes.len() as u8;
            self.bytes.extend(std::iter::repeat_n(next, 100_000));
        }

        fn handle(&self, _: &()) -> Result<Vec<Counted>, Self::Error> {
            Ok(Vec::new())
        }

        fn snapshots() -> Snapshots<Self> {
            Snapshots::every(2).on_load()
        }
    }
}

fn append_added(varve: &Varve, id: StreamId, n: usize) {
    varve
        .events_in::<Counted>("counters")
        .unwrap()
        .append_batch(id, &vec![Counted::Added(1); n])
        .unwrap();
}

#[test]
fn a_stream_filled_by_appends_gets_a_snapshot_from_a_load_when_the_policy_asks() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(6);
    append_added(&varve, id, 25);

    // Snapshots on, but not on load: a load writes nothing.
    let before = varve.last_commit_id();
    let plain = varve.load::<v1::Counter>(id).unwrap();
    assert_eq!((plain.state.total, plain.snapshot), (25, None));
    assert_eq!(
        varve.last_commit_id(),
        before,
        "a load without on_load wrote"
    );

    // On load: the first load folds everything, then stores its state...
    let (first, folded) = applied_during(|| varve.load::<on_load::Counter>(id).unwrap());
    assert_eq!((first.snapshot, folded), (None, 25));
    assert_eq!(
        varve.last_commit_id(),
        before + 1,
        "one commit: the snapshot"
    );
    // ...from which the next one loads the identical state, folding nothing.
    let (second, folded) = applied_during(|| varve.load::<on_load::Counter>(id).unwrap());
    assert_eq!((second.snapshot, folded), (Some(StreamSequence(24)), 0));
    assert_eq!(second.state, first.state);
    assert_eq!(second.version, first.version);
    assert_eq!(
        varve.last_commit_id(),
        before + 1,
        "not due: nothing written"
    );

    // Nine more events are short of the interval; the tenth makes it due.
    append_added(&varve, id, 9);
    let commit = varve.last_commit_id();
    let (loaded, folded) = applied_during(|| varve.load::<on_load::Counter>(id).unwrap());
    assert_eq!((loaded.snapshot, folded), (Some(StreamSequence(24)), 9));
    assert_eq!(varve.last_commit_id(), commit);
    append_added(&varve, id, 1);
    let mut reader = varve.events_in::<Counted>("counters").unwrap().reader();
    let through_reader = reader.load::<on_load::Counter>(id).unwrap();
    let (loaded, folded) = applied_during(|| varve.load::<on_load::Counter>(id).unwrap());
    assert_eq!((loaded.snapshot, folded), (Some(StreamSequence(34)), 0));
    assert_eq!(loaded.state, through_reader.state);
    assert_eq!(
        loaded.state,
        on_load::Counter {
            total: 35,
            events: 35
        }
    );
    let replayed = varve.load::<v1::Counter>(id).unwrap();
    assert_eq!((replayed.state.total, replayed.snapshot), (35, None));

    // Entity keys too.
    let mut counters = varve.events_in::<Counted>("counters").unwrap();
    for _ in 0..12 {
        counters.append_keyed("k-1", &Counted::Added(2)).unwrap();
    }
    let first = varve.load_keyed::<on_load::Counter>("k-1").unwrap();
    let second = varve.load_keyed::<on_load::Counter>("k-1").unwrap();
    assert_eq!(
        (first.snapshot, second.snapshot),
        (None, Some(StreamSequence(11)))
    );
    assert_eq!((second.state.total, &second.state), (24, &first.state));
}

#[test]
fn a_read_only_store_loads_without_storing_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let id = StreamId(7);
    {
        let varve = Varve::new(dir.path()).unwrap();
        append_added(&varve, id, 25);
    }
    let varve = Varve::open_read_only(dir.path()).unwrap();
    let before = varve.last_commit_id();
    for _ in 0..2 {
        let loaded = varve.load::<on_load::Counter>(id).unwrap();
        assert_eq!((loaded.state.total, loaded.snapshot), (25, None));
    }
    assert_eq!(varve.last_commit_id(), before);
}

#[test]
fn a_load_whose_snapshot_cannot_be_stored_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = varvedb::VarveConfig {
        map_size: 256 * 1024,
        resize_wait: std::time::Duration::from_millis(100),
        ..varvedb::VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let id = StreamId(8);
    append_added(&varve, id, 3);
    let before = varve.last_commit_id();
    // A held snapshot keeps the map from growing, and the 300 kB state
    // needs it to: storing the snapshot fails, the load does not.
    let held = varve.snapshot().unwrap();
    let loaded = varve.load::<on_load::Bulky>(id).unwrap();
    assert_eq!(loaded.state.bytes.len(), 300_000);
    assert_eq!(loaded.snapshot, None);
    assert_eq!(varve.last_commit_id(), before, "nothing was stored");
    drop(held);
    // Still due: the next load stores it, growing the map.
    let again = varve.load::<on_load::Bulky>(id).unwrap();
    assert_eq!((again.snapshot, &again.state), (None, &loaded.state));
    let last = varve.load::<on_load::Bulky>(id).unwrap();
    assert_eq!(
        (last.snapshot, &last.state),
        (Some(StreamSequence(2)), &loaded.state)
    );
}
