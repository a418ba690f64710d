//! The memory map grows by itself: a user never sees `MDB_MAP_FULL`, a batch that
//! overflows the map in its middle still commits whole, and growth never moves
//! the map under a live reference.

use std::time::{Duration, Instant};

use varvedb::{Error, GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig};
use varvedb_suite::Order;

fn tiny(dir: &std::path::Path, resize_wait: Duration) -> Varve {
    let config = VarveConfig {
        map_size: 256 * 1024,
        resize_wait,
        ..VarveConfig::default()
    };
    Varve::with_config(dir, config).unwrap()
}

fn chunky(n: u64) -> Order {
    Order {
        id: n,
        quantity: 1,
        note: format!("{n:>4000}"),
    }
}

#[test]
fn appends_far_beyond_the_initial_map_succeed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let varve = tiny(dir.path(), Duration::from_secs(10));
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    for i in 0..40u64 {
        orders.append(StreamId(1), &chunky(i)).unwrap();
    }
    // One batch of ~8 MB: the map fills in its middle.
    let batch: Vec<Order> = (40..2040).map(chunky).collect();
    orders.append_batch(StreamId(1), &batch).unwrap();
    let mut reader = orders.reader();
    assert_eq!(reader.iter_stream(StreamId(1), None).unwrap().count(), 2040);
    assert_eq!(
        reader
            .get_archived(StreamId(1), StreamSequence(2039))
            .unwrap()
            .unwrap()
            .id,
        2039
    );
    drop((orders, reader, varve));
    // The grown size sticks across reopen.
    let varve = tiny(dir.path(), Duration::from_secs(10));
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(2040));
}

#[test]
fn growth_waits_for_a_reader_on_another_thread_to_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let varve = tiny(dir.path(), Duration::from_secs(30));
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    orders.append(StreamId(1), &chunky(0)).unwrap();
    let mut reader = orders.reader();
    let held = reader
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    let watcher = varve.clone();
    let holder = std::thread::spawn(move || {
        // Let go only once the writer is waiting to grow the map for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !watcher.__growth_pending() {
            assert!(Instant::now() < deadline, "the writer never waited to grow");
            std::thread::yield_now();
        }
        assert_eq!(
            held.id, 0,
            "the reference is still valid while growth waits"
        );
        drop(held);
        drop(reader);
    });
    let batch: Vec<Order> = (1..1000).map(chunky).collect();
    orders.append_batch(StreamId(1), &batch).unwrap();
    holder.join().unwrap();
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(1000));
}

#[test]
fn growth_blocked_by_a_held_reference_fails_cleanly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let varve = tiny(dir.path(), Duration::from_millis(100));
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    orders.append(StreamId(1), &chunky(0)).unwrap();
    let mut reader = orders.reader();
    let held = reader
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    let batch: Vec<Order> = (1..1000).map(chunky).collect();
    let err = orders.append_batch(StreamId(1), &batch).unwrap_err();
    assert!(
        matches!(err, Error::MapResizeBlocked { held: 1, .. }),
        "{err:?}"
    );
    assert_eq!(held.id, 0);
    drop(held);
    reader.release();
    assert_eq!(
        varve.global_reader().end().unwrap(),
        GlobalSequence(1),
        "nothing of the failed batch"
    );
    orders.append_batch(StreamId(1), &batch).unwrap();
    assert_eq!(
        orders.version(StreamId(1)).unwrap(),
        Some(StreamSequence(999))
    );
}
