//! A stored snapshot only ever shortens a load: it is written with its
//! events, used to fold just the tail, and ignored (the stream replayed in
//! full) when it was made by another state layout or is damaged.

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
    flip_in_data_file(dir.path(), needle, offset);

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
