//! Map growth races nothing: whatever readers, pollers and subscriptions do
//! while a writer remaps, none of them reads unmapped memory, and none that
//! sits idle holds growth up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use varvedb::{
    Durability, Error, GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel, StreamId,
    Varve, VarveConfig,
};
use varvedb_suite::Order;

/// A store whose map starts at 64 KiB, so a few appends remap it many times.
fn tiny(dir: &std::path::Path, resize_wait: Duration) -> Varve {
    let config = VarveConfig {
        map_size: 64 * 1024,
        resize_wait,
        durability: Durability::NoSync,
        ..VarveConfig::default()
    };
    Varve::with_config(dir, config).unwrap()
}

/// An event of about `kib` KiB.
fn sized(n: u64, kib: usize) -> Order {
    Order {
        id: n,
        quantity: 1,
        note: "x".repeat(kib * 1024),
    }
}

/// Appends `count` events of `kib` KiB one by one while `race` runs on another
/// thread, then stops it; returns what `race` returned.
fn append_while<R: Send + 'static>(
    varve: &Varve,
    count: u64,
    kib: usize,
    race: impl FnOnce(Arc<AtomicBool>) -> R + Send + 'static,
) -> R {
    let done = Arc::new(AtomicBool::new(false));
    let racer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || race(done))
    };
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    let appended: Result<Vec<_>, Error> = (0..count)
        .map(|n| orders.append(StreamId(n % 3), &sized(n, kib)))
        .collect();
    done.store(true, Ordering::Release);
    let out = racer.join().expect("the racing thread did not panic");
    appended.expect("every append succeeded");
    out
}

#[test]
fn a_poller_racing_map_growth_never_reads_unmapped_memory() {
    let dir = tempfile::tempdir().unwrap();
    let varve = tiny(dir.path(), Duration::from_secs(30));
    let poller = varve.clone();
    let (polls, last) = append_while(&varve, 400, 256, move |done| {
        let (mut polls, mut last) = (0u64, 0);
        while !done.load(Ordering::Acquire) {
            let id = poller.last_commit_id();
            assert!(id >= last, "commit ids never go back");
            (polls, last) = (polls + 1, id);
        }
        (polls, last)
    });
    assert!(polls > 0);
    assert!(varve.last_commit_id() >= last);
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(400));
}

#[test]
fn a_caught_up_subscription_polled_while_the_map_grows_never_reads_unmapped_memory() {
    let dir = tempfile::tempdir().unwrap();
    let varve = tiny(dir.path(), Duration::from_secs(30));
    let mut subscription = varve.subscribe(GlobalSequence(0));
    let read = append_while(&varve, 400, 256, move |done| {
        let mut read = 0u64;
        loop {
            // Read flag first: after it is set, one more pass drains the log.
            let finished = done.load(Ordering::Acquire);
            while let Some(event) = subscription.try_next().unwrap() {
                assert_eq!(event.global_sequence(), GlobalSequence(read));
                read += 1;
            }
            if finished {
                return read;
            }
        }
    });
    assert_eq!(read, 400);
}

#[test]
fn a_reader_that_reopens_its_snapshot_never_holds_growth_up() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that only a reader holding growth up can make it fail.
    let varve = tiny(dir.path(), Duration::from_secs(5));
    varve
        .stream::<Order, 64>("orders")
        .unwrap()
        .append(StreamId(0), &sized(0, 1))
        .unwrap();
    let mut reader = varve.stream::<Order, 64>("orders").unwrap().reader();
    let mut log = varve.global_reader();
    let iterations = append_while(&varve, 300, 64, move |done| {
        let mut iterations = 0u64;
        while !done.load(Ordering::Acquire) {
            // A call that caches a snapshot, then one that takes it over
            // (and must close it first if it is stale).
            reader.version(StreamId(0)).unwrap();
            drop(reader.iter_stream(StreamId(0), None).unwrap());
            log.end().unwrap();
            drop(log.iter_from(GlobalSequence(0)).unwrap());
            iterations += 1;
        }
        iterations
    });
    assert!(iterations > 0);
}

struct Count;

impl Projection for Count {
    fn apply(
        &mut self,
        _: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let n = model.get_u64(b"n")?.unwrap_or(0);
        Ok(model.put_u64(b"n", n + 1)?)
    }
}

#[test]
fn an_idle_model_reader_never_holds_growth_up() {
    let dir = tempfile::tempdir().unwrap();
    let varve = tiny(dir.path(), Duration::from_millis(500));
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    orders.append(StreamId(0), &sized(0, 1)).unwrap();
    let mut projector = varve.projector("count", Count).unwrap();
    projector.catch_up().unwrap();
    let mut model = varve.read_model("count").unwrap();
    assert_eq!(model.get_u64(b"n").unwrap(), Some(1));
    // The model reader now sits idle, its snapshot cached.
    for n in 1..=20 {
        orders.append(StreamId(0), &sized(n, 256)).unwrap();
    }
    projector.catch_up().unwrap();
    assert_eq!(model.get_u64(b"n").unwrap(), Some(21));
}

#[test]
fn a_full_reader_table_first_closes_the_snapshots_idle_readers_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        max_readers: 8,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    varve
        .stream::<Order, 64>("orders")
        .unwrap()
        .append(StreamId(0), &Order::numbered(0))
        .unwrap();
    // LMDB rounds the reader table up to fill its pages: far more readers
    // than that, each caching a snapshot between calls.
    let mut readers = Vec::new();
    for _ in 0..500 {
        let mut reader = varve.global_reader();
        assert_eq!(reader.end().unwrap(), GlobalSequence(1));
        readers.push(reader);
    }
    let mut models = Vec::new();
    for _ in 0..500 {
        let mut model = varve.read_model("none").unwrap();
        assert_eq!(model.checkpoint().unwrap(), GlobalSequence(0));
        models.push(model);
    }
    // Snapshots in use are not closed: a reader table full of them still fails.
    let held: Result<Vec<_>, Error> = (0..500)
        .map(|_| varve.global_reader().iter_from(GlobalSequence(0)))
        .collect();
    assert!(
        matches!(held, Err(Error::ReadersFull { max: 8 })),
        "{:?}",
        held.map(|h| h.len())
    );
}
