//! A borrowed snapshot reads exactly what the owning reads read, sees one
//! commit for as long as it lives whatever is appended meanwhile, and, held
//! while the map must grow, makes the append fail with `MapResizeBlocked`
//! after `resize_wait`, never a crash or a remap under it.
//! (Damaged data: tests/corruption.rs; older event versions:
//! tests/schema_evolution.rs; both cover the snapshot paths too.)

use std::time::Duration;

use varvedb::{Error, GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig};
use varvedb_suite::{temp_store, Order};

/// `(stream id, stream sequence, global sequence, order id, note)` of an event.
type Seen = (u64, u64, u64, u64, String);

fn write_three_ids(varve: &Varve) {
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    let mut tickets = varve.stream::<Order, 128>("tickets").unwrap();
    for round in 0..5u64 {
        for id in 1..=3u64 {
            let batch: Vec<Order> = (0..round + 1)
                .map(|k| Order::numbered(id * 1000 + round * 10 + k))
                .collect();
            orders.append_batch(StreamId(id), &batch).unwrap();
        }
        tickets
            .append(StreamId(9), &Order::numbered(round))
            .unwrap();
    }
}

#[test]
fn a_snapshot_loop_reads_the_same_values_as_the_owning_iterators_on_every_path() {
    let (_dir, varve) = temp_store();
    write_three_ids(&varve);
    let mut reader = varve.stream::<Order, 128>("orders").unwrap().reader();
    let snap = reader.snapshot().unwrap();
    for id in [1u64, 2, 3, 4] {
        for from in [
            None,
            Some(StreamSequence(0)),
            Some(StreamSequence(4)),
            Some(StreamSequence(99)),
        ] {
            let owned: Vec<Seen> = reader
                .iter_stream(StreamId(id), from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let at = (
                        e.stream_id().0,
                        e.stream_sequence().0,
                        e.global_sequence().0,
                    );
                    (at.0, at.1, at.2, e.id.to_native(), e.note.to_string())
                })
                .collect();
            let mut borrowed: Vec<Seen> = Vec::new();
            for e in snap.iter_stream(StreamId(id), from).unwrap() {
                let e = e.unwrap();
                let at = (
                    e.stream_id().0,
                    e.stream_sequence().0,
                    e.global_sequence().0,
                );
                borrowed.push((at.0, at.1, at.2, e.id.to_native(), e.note.to_string()));
            }
            assert_eq!(borrowed, owned, "id {id} from {from:?}");
            assert_eq!(
                owned.is_empty(),
                id == 4 || from == Some(StreamSequence(99))
            );
        }
        let version = reader.version(StreamId(id)).unwrap();
        assert_eq!(snap.version(StreamId(id)).unwrap(), version);
        for seq in 0..17u64 {
            let owned = reader
                .get_archived(StreamId(id), StreamSequence(seq))
                .unwrap();
            let borrowed = snap.get(StreamId(id), StreamSequence(seq)).unwrap();
            assert_eq!(
                borrowed.map(|e| (e.id.to_native(), e.committed_at(), e.global_sequence())),
                owned.map(|e| (e.id.to_native(), e.committed_at(), e.global_sequence())),
                "id {id} seq {seq}"
            );
        }
    }

    let mut log = varve.global_reader();
    let end = log.end().unwrap();
    assert_eq!(snap.log().end().unwrap(), end);
    for from in [0, 1, 7, end.0 - 1, end.0, end.0 + 3] {
        let owned: Vec<(String, Seen)> = log
            .iter_from(GlobalSequence(from))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let o = e.archived_plain::<Order>().unwrap();
                let at = (
                    e.stream_id().0,
                    e.stream_sequence().0,
                    e.global_sequence().0,
                );
                let seen = (at.0, at.1, at.2, o.id.to_native(), o.note.to_string());
                (e.stream_name().to_owned(), seen)
            })
            .collect();
        let mut borrowed = Vec::new();
        for e in snap.log().iter_from(GlobalSequence(from)).unwrap() {
            let e = e.unwrap();
            let o = e.archived_plain::<Order>().unwrap();
            let at = (
                e.stream_id().0,
                e.stream_sequence().0,
                e.global_sequence().0,
            );
            let seen = (at.0, at.1, at.2, o.id.to_native(), o.note.to_string());
            borrowed.push((e.stream_name().to_owned(), seen));
        }
        assert_eq!(borrowed, owned, "log from {from}");
    }
    for g in 0..end.0 + 2 {
        let owned = log.get(GlobalSequence(g)).unwrap();
        let borrowed = snap.log().get(GlobalSequence(g)).unwrap();
        assert_eq!(
            borrowed.map(|e| (
                e.stream_name().to_owned(),
                e.payload().to_vec(),
                e.committed_at()
            )),
            owned.map(|e| (
                e.stream_name().to_owned(),
                e.payload().to_vec(),
                e.committed_at()
            )),
            "global {g}"
        );
    }
}

#[test]
fn entries_read_in_place_outlive_their_iteration_for_as_long_as_the_snapshot() {
    let (_dir, varve) = temp_store();
    write_three_ids(&varve);
    let snap = varve
        .stream::<Order, 128>("orders")
        .unwrap()
        .reader()
        .snapshot()
        .unwrap();
    let kept: Vec<&varvedb_suite::ArchivedOrder> = snap
        .iter_stream(StreamId(2), None)
        .unwrap()
        .map(|e| e.unwrap().in_snapshot().expect("the current version"))
        .collect();
    let ids: Vec<u64> = kept.iter().map(|o| o.id.to_native()).collect();
    let expected: Vec<u64> = (0..5u64)
        .flat_map(|round| (0..round + 1).map(move |k| 2000 + round * 10 + k))
        .collect();
    assert_eq!(ids, expected);
}

#[test]
fn a_held_snapshot_keeps_seeing_its_own_commit_while_another_thread_appends() {
    let (_dir, varve) = temp_store();
    write_three_ids(&varve);
    let orders = varve.stream::<Order, 128>("orders").unwrap();
    let snap = orders.reader().snapshot().unwrap();
    let before: Vec<u64> = snap
        .iter_stream(StreamId(1), None)
        .unwrap()
        .map(|e| e.unwrap().id.to_native())
        .collect();
    let end_before = snap.log().end().unwrap();

    let writer = {
        let varve = varve.clone();
        std::thread::spawn(move || {
            let mut orders = varve.stream::<Order, 128>("orders").unwrap();
            for n in 0..200u64 {
                orders
                    .append(StreamId(1), &Order::numbered(90_000 + n))
                    .unwrap();
            }
        })
    };
    // Reads interleave with the writer's commits, then follow all of them.
    let mut passes = 0;
    loop {
        let finished = writer.is_finished();
        let now: Vec<u64> = snap
            .iter_stream(StreamId(1), None)
            .unwrap()
            .map(|e| e.unwrap().id.to_native())
            .collect();
        assert_eq!(
            now, before,
            "the snapshot changed under a concurrent append"
        );
        assert_eq!(snap.log().end().unwrap(), end_before);
        assert_eq!(snap.version(StreamId(1)).unwrap(), Some(StreamSequence(14)));
        assert!(snap.get(StreamId(1), StreamSequence(15)).unwrap().is_none());
        passes += 1;
        if finished {
            break;
        }
    }
    writer.join().unwrap();
    assert!(passes >= 1);
    let fresh = orders.reader().snapshot().unwrap();
    assert_eq!(
        fresh.version(StreamId(1)).unwrap(),
        Some(StreamSequence(214))
    );
    assert_eq!(
        fresh.log().end().unwrap(),
        GlobalSequence(end_before.0 + 200)
    );
    // The old snapshot is untouched by the new one.
    assert_eq!(
        snap.iter_stream(StreamId(1), None).unwrap().count(),
        before.len()
    );
}

fn chunky(n: u64) -> Order {
    Order {
        id: n,
        quantity: 1,
        note: format!("{n:>4000}"),
    }
}

#[test]
fn a_held_snapshot_makes_map_growth_fail_with_map_resize_blocked_not_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        map_size: 64 * 1024,
        resize_wait: Duration::from_millis(100),
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    orders.append(StreamId(1), &chunky(0)).unwrap();
    let reader = orders.reader();
    let snap = reader.snapshot().unwrap();
    let log = varve.snapshot().unwrap();
    let first = snap.get(StreamId(1), StreamSequence(0)).unwrap().unwrap();

    let batch: Vec<Order> = (1..200).map(chunky).collect();
    let err = orders.append_batch(StreamId(1), &batch).unwrap_err();
    assert!(matches!(err, Error::MapResizeBlocked { .. }), "{err:?}");
    // Both snapshots still read, from the map they pinned.
    assert_eq!(first.id, 0);
    assert_eq!(first.note.as_str(), chunky(0).note);
    let entry = log.get(GlobalSequence(0)).unwrap().unwrap();
    assert_eq!(entry.archived_plain::<Order>().unwrap().id, 0);
    assert_eq!(snap.iter_stream(StreamId(1), None).unwrap().count(), 1);
    drop(entry);
    drop(first);
    drop((snap, log, reader));

    // Nothing of the failed batch was written; with the snapshots gone it grows.
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(1));
    orders.append_batch(StreamId(1), &batch).unwrap();
    let snap = orders.reader().snapshot().unwrap();
    let ids: Vec<u64> = snap
        .iter_stream(StreamId(1), None)
        .unwrap()
        .map(|e| e.unwrap().id.to_native())
        .collect();
    assert_eq!(ids, (0..200).collect::<Vec<u64>>());
}

#[test]
fn a_snapshot_of_a_stream_not_created_yet_is_empty() {
    let (_dir, varve) = temp_store();
    let reader = varve.stream::<Order, 128>("orders").unwrap().reader();
    let snap = reader.snapshot().unwrap();
    assert_eq!(snap.iter_stream(StreamId(1), None).unwrap().count(), 0);
    assert!(snap.get(StreamId(1), StreamSequence(0)).unwrap().is_none());
    assert_eq!(snap.version(StreamId(1)).unwrap(), None);
    assert_eq!(snap.log().iter_from(GlobalSequence(0)).unwrap().count(), 0);
    assert!(snap.log().get(GlobalSequence(0)).unwrap().is_none());
}
