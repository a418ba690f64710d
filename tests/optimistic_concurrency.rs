//! An append or command with an expected version goes through only if the
//! stream id is at that version; on a mismatch nothing is decided or written,
//! and the error names the stream, the id, the expected and the actual version.

use std::cell::Cell;

use rkyv::{Archive, Serialize};
use varvedb::{
    Aggregate, Error, ExecuteError, ExpectedVersion, GlobalSequence, StreamId, StreamSequence,
    Varve,
};

#[derive(Archive, Serialize, Debug, Clone, PartialEq, varvedb::Event)]
struct Booked {
    seat: u32,
}

thread_local! {
    static DECISIONS: Cell<u64> = const { Cell::new(0) };
}

/// A show's booked seats; booking a seat twice is rejected.
#[derive(Default)]
struct Show {
    seats: Vec<u32>,
}

impl Aggregate for Show {
    type Event = Booked;
    type Command = u32;
    type Error = u32;
    const STREAM: &'static str = "shows";

    fn apply(&mut self, event: &ArchivedBooked) {
        self.seats.push(event.seat.to_native());
    }

    fn handle(&self, seat: &u32) -> Result<Vec<Booked>, u32> {
        DECISIONS.with(|d| d.set(d.get() + 1));
        if self.seats.contains(seat) {
            return Err(*seat);
        }
        Ok(vec![Booked { seat: *seat }])
    }
}

const AT: StreamSequence = StreamSequence(1);

/// The stream id's three shapes: empty, at `AT`, one past `AT`.
fn prepare(varve: &Varve, id: StreamId, events: u32) {
    for seat in 0..events {
        varve.execute::<Show>(id, &seat).unwrap();
    }
}

fn end_of_log(varve: &Varve) -> u64 {
    varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .count() as u64
}

/// Every kind of expectation against every shape: `true` where it matches.
fn matrix() -> Vec<(ExpectedVersion, [bool; 3])> {
    vec![
        (ExpectedVersion::Any, [true, true, true]),
        (ExpectedVersion::NoStream, [true, false, false]),
        (ExpectedVersion::StreamExists, [false, true, true]),
        (ExpectedVersion::Exact(AT), [false, true, false]),
    ]
}

fn shapes() -> [(u32, Option<StreamSequence>); 3] {
    [(0, None), (2, Some(AT)), (3, Some(StreamSequence(2)))]
}

fn assert_conflict(
    err: &Error,
    id: StreamId,
    expected: ExpectedVersion,
    actual: Option<StreamSequence>,
) {
    match err {
        Error::VersionConflict {
            stream,
            id: got_id,
            expected: got_expected,
            actual: got_actual,
        } => {
            assert_eq!(stream, "shows");
            assert_eq!(
                (*got_id, *got_expected, *got_actual),
                (id, expected, actual)
            );
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

#[test]
fn every_expectation_against_every_stream_shape_through_execute() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let mut id = 0;
    for (expected, outcomes) in matrix() {
        for ((events, actual), ok) in shapes().into_iter().zip(outcomes) {
            id += 1;
            let id = StreamId(id);
            prepare(&varve, id, events);
            let end = end_of_log(&varve);
            let decided = DECISIONS.with(Cell::get);
            let result = varve.execute_expected::<Show>(id, &99, expected);
            let version = varve.load::<Show>(id).unwrap().version;
            if ok {
                let done = result.unwrap_or_else(|e| panic!("{expected} on {actual:?}: {e}"));
                let next = StreamSequence(actual.map_or(0, |v| v.0 + 1));
                assert_eq!((done.version, version), (Some(next), Some(next)));
                assert_eq!(end_of_log(&varve), end + 1);
            } else {
                match result {
                    Err(ExecuteError::Store(e)) => assert_conflict(&e, id, expected, actual),
                    Err(e) => panic!("{expected} on {actual:?}: expected a conflict, got {e:?}"),
                    Ok(_) => panic!("{expected} on {actual:?}: expected a conflict"),
                }
                assert_eq!(version, actual, "nothing written");
                assert_eq!(end_of_log(&varve), end, "nothing written");
                assert_eq!(DECISIONS.with(Cell::get), decided, "nothing decided");
            }
        }
    }
}

#[test]
fn every_expectation_against_every_stream_shape_through_a_stream() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let mut shows = varve.events_in::<Booked>("shows").unwrap();
    let mut id = 100;
    for (expected, outcomes) in matrix() {
        for ((events, actual), ok) in shapes().into_iter().zip(outcomes) {
            for batch in [1, 3] {
                id += 1;
                let id = StreamId(id);
                prepare(&varve, id, events);
                let end = end_of_log(&varve);
                let seats = vec![Booked { seat: 99 }; batch];
                let result = if batch == 1 {
                    shows
                        .append_expected(id, &seats[0], expected)
                        .map(|p| vec![p])
                } else {
                    shows.append_batch_expected(id, &seats, expected)
                };
                if ok {
                    assert_eq!(result.unwrap().len(), batch);
                    assert_eq!(end_of_log(&varve), end + batch as u64);
                } else {
                    assert_conflict(&result.unwrap_err(), id, expected, actual);
                    assert_eq!(shows.version(id).unwrap(), actual, "nothing written");
                    assert_eq!(end_of_log(&varve), end, "nothing written");
                }
            }
        }
    }
}

#[test]
fn a_client_holding_a_stale_version_is_refused_until_it_reloads() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(1);
    let first = varve.load::<Show>(id).unwrap();
    let second = varve.load::<Show>(id).unwrap();
    assert_eq!(first.expected(), ExpectedVersion::NoStream);

    varve
        .execute_expected::<Show>(id, &7, first.expected())
        .unwrap();
    let stale = varve.execute_expected::<Show>(id, &8, second.expected());
    match stale {
        Err(ExecuteError::Store(e)) => {
            assert_conflict(&e, id, ExpectedVersion::NoStream, Some(StreamSequence(0)));
            let message = e.to_string();
            assert!(
                message.contains("shows") && message.contains("id 1"),
                "{message}"
            );
        }
        other => panic!("expected a conflict, got {:?}", other.map(|d| d.version)),
    }

    let reloaded = varve.load::<Show>(id).unwrap();
    assert_eq!(
        reloaded.expected(),
        ExpectedVersion::Exact(StreamSequence(0))
    );
    let done = varve
        .execute_expected::<Show>(id, &8, reloaded.expected())
        .unwrap();
    assert_eq!(done.state.seats, [7, 8]);
    // A business rejection is not a conflict.
    let again = varve.execute_expected::<Show>(
        id,
        &7,
        done.version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
    );
    assert!(matches!(again, Err(ExecuteError::Rejected(7))));
}

/// An empty batch writes nothing, but its expected version is checked all the
/// same, for every kind of expectation, on an id with events and on one
/// without (and on a stream that does not exist yet).
#[test]
fn an_empty_batch_still_checks_its_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut shows = varve.stream::<Booked, 16>("shows").unwrap();

    // The stream does not exist yet: every id is empty.
    let empty = StreamId(9);
    let expect = |shows: &mut varvedb::Stream<Booked, 16>, id, expected, ok: bool| {
        let before = varve.last_commit_id();
        let got = shows.append_batch_expected(id, &[], expected);
        assert_eq!(
            varve.last_commit_id(),
            before,
            "{expected:?}: nothing is written"
        );
        match got {
            Ok(positions) if ok => assert!(positions.is_empty()),
            Err(Error::VersionConflict {
                expected: e, id: i, ..
            }) if !ok => assert_eq!((e, i), (expected, id)),
            other => panic!("{expected:?} on {id:?}: expected ok={ok}, got {other:?}"),
        }
    };
    for (expected, ok) in [
        (ExpectedVersion::Any, true),
        (ExpectedVersion::NoStream, true),
        (ExpectedVersion::StreamExists, false),
        (ExpectedVersion::Exact(StreamSequence(0)), false),
    ] {
        expect(&mut shows, empty, expected, ok);
    }

    let booked = StreamId(1);
    shows
        .append_batch(booked, &[Booked { seat: 1 }, Booked { seat: 2 }])
        .unwrap();
    for (id, expected, ok) in [
        (booked, ExpectedVersion::Any, true),
        (booked, ExpectedVersion::NoStream, false),
        (booked, ExpectedVersion::StreamExists, true),
        (booked, ExpectedVersion::Exact(StreamSequence(1)), true),
        (booked, ExpectedVersion::Exact(StreamSequence(0)), false),
        (booked, ExpectedVersion::Exact(StreamSequence(2)), false),
        (empty, ExpectedVersion::Any, true),
        (empty, ExpectedVersion::NoStream, true),
        (empty, ExpectedVersion::StreamExists, false),
        (empty, ExpectedVersion::Exact(StreamSequence(0)), false),
    ] {
        expect(&mut shows, id, expected, ok);
    }

    // The conflict names the actual version.
    match shows.append_batch_expected(booked, &[], ExpectedVersion::NoStream) {
        Err(Error::VersionConflict { actual, .. }) => {
            assert_eq!(actual, Some(StreamSequence(1)))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(shows.version(booked).unwrap(), Some(StreamSequence(1)));
}
