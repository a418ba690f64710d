//! Idempotent appends: an append whose event ids are all stored, as one run
//! of its `(stream, id)` in its order, is answered with the original
//! positions and commit time and writes nothing, whatever its expected
//! version; anything else that touches a stored id is refused, naming the id
//! and where it is stored, and a stored id is never stored twice.
//!
//! The cases follow KurrentDB's idempotency tests (same / `Any` / next /
//! wrong expected version; single events and batches; prefix and suffix
//! retries; a batch whose first or a later id differs). Where KurrentDB
//! writes a duplicate or reports a version conflict for a retry, VarveDB
//! answers idempotently: see `docs/design.md`, "Idempotent appends".

use std::sync::Barrier;

use varvedb::{
    Append, Appended, Error, EventId, ExpectedVersion, GlobalSequence, Stream, StreamId,
    StreamSequence, Varve,
};
use varvedb_suite::{temp_store, Order};

fn eid(n: u128) -> EventId {
    EventId::from_u128(n)
}

fn ids(ns: &[u128]) -> Vec<EventId> {
    ns.iter().map(|&n| eid(n)).collect()
}

fn orders(varve: &Varve) -> Stream<Order, 256> {
    varve.stream::<Order, 256>("orders").unwrap()
}

/// Six events e1..=e6 appended one by one to id 1 with exact expectations.
fn six_singles(stream: &mut Stream<Order, 256>) -> Vec<Appended> {
    (1..=6u128)
        .map(|n| {
            let expected = match n {
                1 => ExpectedVersion::NoStream,
                n => ExpectedVersion::Exact(StreamSequence(n as u64 - 2)),
            };
            let options = Append::new().expected(expected).event_id(eid(n));
            stream
                .append_with(StreamId(1), &Order::numbered(n as u64), options)
                .unwrap()
        })
        .collect()
}

/// Asserts `retry` is the idempotent answer of `original` and nothing was
/// written since `end` / `commit`.
fn assert_replayed(varve: &Varve, retry: &Appended, original: &Appended, end: u64, commit: u64) {
    assert!(retry.is_idempotent(), "{retry:?}");
    assert!(!original.is_idempotent());
    assert_eq!(retry.positions(), original.positions());
    assert_eq!(retry.committed_at(), original.committed_at());
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(end));
    assert_eq!(varve.last_commit_id(), commit, "a retry commits nothing");
}

#[test]
fn a_single_retry_is_idempotent_for_every_expected_version_kind() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    let first = six_singles(&mut stream);
    let commit = varve.last_commit_id();
    let e1 = &Order::numbered(1);
    let kinds = [
        // KurrentDB: idempotent.
        ("same", ExpectedVersion::NoStream),
        ("any", ExpectedVersion::Any),
        // KurrentDB: idempotent too.
        ("stream exists", ExpectedVersion::StreamExists),
        // KurrentDB writes a duplicate e1 at version 6.
        ("next", ExpectedVersion::Exact(StreamSequence(5))),
        // KurrentDB: WrongExpectedVersion.
        ("wrong", ExpectedVersion::Exact(StreamSequence(2))),
    ];
    for (what, expected) in kinds {
        let retry = stream
            .append_with(
                StreamId(1),
                e1,
                Append::new().expected(expected).event_id(eid(1)),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_replayed(&varve, &retry, &first[0], 6, commit);
    }
    // A later event, with its own original expectation and with others.
    for expected in [
        ExpectedVersion::Exact(StreamSequence(1)),
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
    ] {
        let retry = stream
            .append_with(
                StreamId(1),
                &Order::numbered(3),
                Append::new().expected(expected).event_id(eid(3)),
            )
            .unwrap();
        assert_replayed(&varve, &retry, &first[2], 6, commit);
    }
}

#[test]
fn a_batch_retry_of_the_whole_batch_a_prefix_a_suffix_or_a_middle_run_is_idempotent() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    stream.append(StreamId(9), &Order::numbered(0)).unwrap();
    let events: Vec<Order> = (1..=4).map(Order::numbered).collect();
    let all = ids(&[1, 2, 3, 4]);
    let original = stream
        .append_batch_with(
            StreamId(1),
            &events,
            Append::new()
                .expected(ExpectedVersion::NoStream)
                .event_ids(&all),
        )
        .unwrap();
    let commit = varve.last_commit_id();
    let runs: [(&str, std::ops::Range<usize>, ExpectedVersion); 6] = [
        ("whole, same", 0..4, ExpectedVersion::NoStream),
        ("whole, any", 0..4, ExpectedVersion::Any),
        (
            "whole, next",
            0..4,
            ExpectedVersion::Exact(StreamSequence(3)),
        ),
        ("prefix", 0..2, ExpectedVersion::NoStream),
        ("suffix", 2..4, ExpectedVersion::Exact(StreamSequence(1))),
        (
            "middle, wrong",
            1..3,
            ExpectedVersion::Exact(StreamSequence(7)),
        ),
    ];
    for (what, run, expected) in runs {
        let retry = stream
            .append_batch_with(
                StreamId(1),
                &events[run.clone()],
                Append::new()
                    .expected(expected)
                    .event_ids(&all[run.clone()]),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(retry.is_idempotent(), "{what}");
        assert_eq!(retry.positions(), &original.positions()[run], "{what}");
        assert_eq!(retry.committed_at(), original.committed_at());
        assert_eq!(varve.last_commit_id(), commit, "{what} wrote");
    }
    // A single event of the batch, retried alone.
    let one = stream
        .append_with(StreamId(1), &events[3], Append::new().event_id(all[3]))
        .unwrap();
    assert_eq!(one.first(), original.last());
}

/// The error for an append that touches stored ids without being a retry:
/// it names the id and where it is stored.
fn conflict(
    result: varvedb::Result<Appended>,
) -> (EventId, usize, varvedb::StoredAt, &'static str) {
    match result {
        Err(Error::EventIdConflict {
            event_id,
            index,
            stored,
            reason,
            ..
        }) => (event_id, index, *stored, reason),
        other => panic!("expected an event id conflict, got {other:?}"),
    }
}

#[test]
fn a_batch_that_is_not_a_retry_is_refused_naming_the_stored_id_and_writes_nothing() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    let events: Vec<Order> = (1..=3).map(Order::numbered).collect();
    stream
        .append_batch_with(
            StreamId(1),
            &events[..2],
            Append::new().event_ids(&ids(&[1, 2])),
        )
        .unwrap();
    let commit = varve.last_commit_id();
    let at = |seq: u64| (StreamId(1), StreamSequence(seq), GlobalSequence(seq));
    // (what, the batch's ids, expected, the id named, its index, its sequence)
    type Case = (
        &'static str,
        Vec<EventId>,
        ExpectedVersion,
        u128,
        usize,
        u64,
    );
    let cases: [Case; 5] = [
        // KurrentDB: an idempotency failure too.
        (
            "a later id is new",
            ids(&[1, 2, 3]),
            ExpectedVersion::NoStream,
            1,
            0,
            0,
        ),
        (
            "a later id is new, any",
            ids(&[1, 2, 3]),
            ExpectedVersion::Any,
            1,
            0,
            0,
        ),
        (
            "the first id differs",
            ids(&[7, 2, 3]),
            ExpectedVersion::Any,
            2,
            1,
            1,
        ),
        ("reordered", ids(&[2, 1, 3]), ExpectedVersion::Any, 2, 0, 1),
        (
            "a new id between",
            ids(&[1, 8, 2]),
            ExpectedVersion::Exact(StreamSequence(1)),
            1,
            0,
            0,
        ),
    ];
    for (what, batch, expected, named, index, seq) in cases {
        let n = batch.len();
        let (event_id, got_index, stored, _) = conflict(stream.append_batch_with(
            StreamId(1),
            &events[..n],
            Append::new().expected(expected).event_ids(&batch),
        ));
        assert_eq!((event_id, got_index), (eid(named), index), "{what}");
        assert_eq!(
            (stored.id, stored.sequence, stored.global),
            at(seq),
            "{what}"
        );
        assert_eq!(stored.stream, "orders");
        assert_eq!(varve.last_commit_id(), commit, "{what} wrote");
    }
    // Reordered, all stored: not one run in this order.
    let (_, _, _, reason) = conflict(stream.append_batch_with(
        StreamId(1),
        &events[..2],
        Append::new().event_ids(&ids(&[2, 1])),
    ));
    assert!(reason.contains("order"), "{reason}");
    assert_eq!(
        stream.version(StreamId(1)).unwrap(),
        Some(StreamSequence(1))
    );
}

#[test]
fn an_id_stored_in_another_stream_id_or_stream_is_refused_with_its_place() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    stream
        .append_with(
            StreamId(1),
            &Order::numbered(1),
            Append::new().event_id(eid(1)),
        )
        .unwrap();
    let (_, _, stored, _) = conflict(stream.append_with(
        StreamId(2),
        &Order::numbered(1),
        Append::new().event_id(eid(1)),
    ));
    assert_eq!((stored.stream.as_str(), stored.id), ("orders", StreamId(1)));
    let mut other = varve.stream::<Order, 256>("returns").unwrap();
    let (_, _, stored, _) = conflict(other.append_with(
        StreamId(1),
        &Order::numbered(1),
        Append::new().event_id(eid(1)),
    ));
    assert_eq!(stored.stream, "orders");
    // The refused append to a new stream created nothing.
    assert_eq!(other.version(StreamId(1)).unwrap(), None);
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(1));
}

#[test]
fn an_id_repeated_in_one_batch_or_a_wrong_count_is_refused_before_any_transaction() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    let events: Vec<Order> = (1..=3).map(Order::numbered).collect();
    let commit = varve.last_commit_id();
    match stream.append_batch_with(
        StreamId(1),
        &events,
        Append::new().event_ids(&ids(&[5, 6, 5])),
    ) {
        Err(Error::DuplicateEventId {
            event_id,
            first,
            second,
            ..
        }) => assert_eq!((event_id, first, second), (eid(5), 0, 2)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        stream.append_batch_with(StreamId(1), &events, Append::new().event_ids(&ids(&[5, 6]))),
        Err(Error::EventIdCount {
            events: 3,
            ids: 2,
            ..
        })
    ));
    assert!(matches!(
        stream.append_batch_with(StreamId(1), &events, Append::new().event_id(eid(5))),
        Err(Error::EventIdCount {
            events: 3,
            ids: 1,
            ..
        })
    ));
    assert_eq!(varve.last_commit_id(), commit);
}

#[test]
fn a_retry_after_reopening_the_store_returns_the_original_positions() {
    let dir = tempfile::tempdir().unwrap();
    let original = {
        let varve = Varve::new(dir.path()).unwrap();
        let mut stream = orders(&varve);
        stream.append(StreamId(4), &Order::numbered(0)).unwrap();
        stream
            .append_batch_with(
                StreamId(1),
                &[Order::numbered(1), Order::numbered(2)],
                Append::new().event_ids(&ids(&[1, 2])),
            )
            .unwrap()
    };
    let varve = Varve::new(dir.path()).unwrap();
    let commit = varve.last_commit_id();
    let retry = orders(&varve)
        .append_batch_with(
            StreamId(1),
            &[Order::numbered(1), Order::numbered(2)],
            Append::new()
                .expected(ExpectedVersion::NoStream)
                .event_ids(&ids(&[1, 2])),
        )
        .unwrap();
    assert_replayed(&varve, &retry, &original, 3, commit);
}

#[test]
fn a_retry_of_events_appended_by_several_calls_answers_each_original_position() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    let a = stream
        .append_with(
            StreamId(1),
            &Order::numbered(1),
            Append::new().event_id(eid(1)),
        )
        .unwrap();
    stream.append(StreamId(2), &Order::numbered(9)).unwrap();
    let b = stream
        .append_with(
            StreamId(1),
            &Order::numbered(2),
            Append::new().event_id(eid(2)),
        )
        .unwrap();
    let retry = stream
        .append_batch_with(
            StreamId(1),
            &[Order::numbered(1), Order::numbered(2)],
            Append::new().event_ids(&ids(&[1, 2])),
        )
        .unwrap();
    assert!(retry.is_idempotent());
    assert_eq!(
        retry.positions(),
        &[a.first().unwrap(), b.first().unwrap()],
        "globals 0 and 2: one run of the stream id, not of the log"
    );
}

#[test]
fn threads_retrying_the_same_ids_at_once_write_them_exactly_once() {
    const THREADS: usize = 8;
    const ROUNDS: u128 = 20;
    let (_dir, varve) = temp_store();
    for round in 0..ROUNDS {
        let start = Barrier::new(THREADS);
        let batch = ids(&[round * 2 + 1, round * 2 + 2]);
        let answers: Vec<Appended> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (varve, start, batch) = (&varve, &start, &batch);
                    s.spawn(move || {
                        let mut stream = orders(varve);
                        start.wait();
                        stream
                            .append_batch_with(
                                StreamId(round as u64),
                                &[Order::numbered(1), Order::numbered(2)],
                                Append::new()
                                    .expected(ExpectedVersion::NoStream)
                                    .event_ids(batch),
                            )
                            .unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let written: Vec<&Appended> = answers.iter().filter(|a| !a.is_idempotent()).collect();
        assert_eq!(written.len(), 1, "round {round}: {answers:?}");
        for a in &answers {
            assert_eq!(a.positions(), written[0].positions());
            assert_eq!(a.committed_at(), written[0].committed_at());
        }
        assert_eq!(
            orders(&varve).version(StreamId(round as u64)).unwrap(),
            Some(StreamSequence(1))
        );
    }
    assert_eq!(
        varve.global_reader().end().unwrap(),
        GlobalSequence(2 * ROUNDS as u64)
    );
    assert!(varve.verify().unwrap().is_ok());
}

#[test]
fn an_event_is_found_by_its_id_and_ids_appear_on_every_read_path() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    stream.append(StreamId(1), &Order::numbered(0)).unwrap();
    stream
        .append_batch_with(
            StreamId(1),
            &[Order::numbered(1), Order::numbered(2)],
            Append::new().event_ids(&ids(&[11, 12])),
        )
        .unwrap();
    let mut log = varve.global_reader();
    let found = log.get_by_id(eid(12)).unwrap().expect("stored");
    assert_eq!(
        (found.global_sequence(), found.stream_sequence()),
        (GlobalSequence(2), StreamSequence(2))
    );
    assert_eq!(found.metadata().event_id(), Some(eid(12)));
    assert!(log.get_by_id(eid(13)).unwrap().is_none());
    // Events without ids have no metadata.
    assert!(log
        .get(GlobalSequence(0))
        .unwrap()
        .unwrap()
        .metadata()
        .is_empty());
}

#[test]
fn verify_finds_an_event_id_index_entry_that_was_deleted() {
    let (dir, varve) = temp_store();
    orders(&varve)
        .append_batch_with(
            StreamId(1),
            &[Order::numbered(1), Order::numbered(2)],
            Append::new().event_ids(&ids(&[1, 2])),
        )
        .unwrap();
    assert!(varve.verify().unwrap().is_ok());
    drop(varve);
    {
        use heed::types::Bytes;
        // SAFETY: the test owns the store directory and no varvedb handle is open.
        let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).open(dir.path()) }.unwrap();
        let wtxn = env.write_txn().unwrap();
        let db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let db = opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .name("ids")
                    .create(wtxn)?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
            })
            .unwrap()
            .unwrap_commit();
        let mut wtxn = env.write_txn().unwrap();
        assert!(db.delete(&mut wtxn, eid(2).as_bytes()).unwrap());
        wtxn.commit().unwrap();
    }
    let varve = Varve::new(dir.path()).unwrap();
    let report = varve.verify().unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.detail.contains("event id")),
        "{report:?}"
    );
}

#[test]
fn fresh_ids_in_any_order_above_or_among_the_stored_ones_are_written_once() {
    let (_dir, varve) = temp_store();
    let mut stream = orders(&varve);
    let events = [Order::numbered(1), Order::numbered(2), Order::numbered(3)];
    // Above every stored id, ascending (appended at the index's end), then
    // descending, then among stored ones (looked up one by one).
    for (n, batch) in [[10u128, 11, 12], [22, 21, 20], [15, 5, 16]]
        .iter()
        .enumerate()
    {
        let batch = ids(batch);
        let written = stream
            .append_batch_with(StreamId(n as u64), &events, Append::new().event_ids(&batch))
            .unwrap();
        assert!(!written.is_idempotent());
        let retry = stream
            .append_batch_with(StreamId(n as u64), &events, Append::new().event_ids(&batch))
            .unwrap();
        assert!(retry.is_idempotent(), "{batch:?}");
        assert_eq!(retry.positions(), written.positions());
    }
    let mut log = varve.global_reader();
    for n in [5u128, 10, 11, 12, 15, 16, 20, 21, 22] {
        assert!(log.get_by_id(eid(n)).unwrap().is_some(), "{n}");
    }
    assert_eq!(log.end().unwrap(), GlobalSequence(9));
    assert!(varve.verify().unwrap().is_ok());
}
