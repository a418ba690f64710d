//! A subscription yields every committed event exactly once, in global order,
//! whether it starts before, during or after the appends, however slowly it
//! reads; it is woken by commits of this process and of other processes, as a
//! blocking iterator and as an async stream; and it holds no snapshot once
//! dropped or while it waits.
//!
//! The cross-process tests re-execute this test binary with
//! `VARVEDB_SUBSCRIPTION_CHILD` set: the child appends to the store and exits.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use futures_util::StreamExt;
use rkyv::{Archive, Serialize};
use varvedb::{
    Error, Filter, GlobalEvent, GlobalSequence, StreamId, StreamSequence, Subscription, Varve,
    VarveConfig,
};
use varvedb_suite::{temp_store, Order};

const CHILD: &str = "VARVEDB_SUBSCRIPTION_CHILD";
const CHILD_TEST: &str = "a_child_process_appends_when_asked";
/// A bound on waits, so a broken wake-up fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

const WRITERS: u64 = 4;
const PER_WRITER: u64 = 600;

/// The order number a writer gives its `n`-th event.
fn order_id(writer: u64, n: u64) -> u64 {
    writer * 1_000_000 + n
}

fn order_of(event: &GlobalEvent) -> u64 {
    event
        .archived_plain::<Order>()
        .expect("an order")
        .id
        .to_native()
}

/// Reads `count` events (blocking) and returns their (global, order id).
fn collect(subscription: Subscription, count: u64) -> Vec<(u64, u64)> {
    subscription
        .take(count as usize)
        .map(|event| {
            let event = event.expect("a readable event");
            (event.global_sequence().0, order_of(&event))
        })
        .collect()
}

/// Each writer appends its events in batches of 1 to 5, on its own stream id.
fn burst(varve: &Varve) -> Vec<thread::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let varve = varve.clone();
            thread::spawn(move || {
                let mut orders = varve.stream::<Order, 256>("orders").expect("open");
                let mut n = 0;
                while n < PER_WRITER {
                    let size = (1 + (n + w) % 5).min(PER_WRITER - n);
                    let batch: Vec<Order> = (n..n + size)
                        .map(|i| Order::numbered(order_id(w, i)))
                        .collect();
                    orders.append_batch(StreamId(w), &batch).expect("append");
                    n += size;
                }
            })
        })
        .collect()
}

/// Every global sequence once, in order, and each writer's events in its order.
fn assert_complete_and_ordered(seen: &[(u64, u64)], total: u64) {
    let globals: Vec<u64> = seen.iter().map(|&(g, _)| g).collect();
    assert_eq!(globals, (0..total).collect::<Vec<_>>());
    let mut per_writer: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(_, id) in seen {
        per_writer
            .entry(id / 1_000_000)
            .or_default()
            .push(id % 1_000_000);
    }
    assert_eq!(per_writer.len() as u64, WRITERS);
    for events in per_writer.values() {
        assert_eq!(*events, (0..PER_WRITER).collect::<Vec<_>>());
    }
}

#[test]
fn subscribers_started_before_during_and_after_a_burst_each_see_every_event_once_in_order() {
    let (_dir, varve) = temp_store();
    let total = WRITERS * PER_WRITER;

    let before = varve.subscribe(GlobalSequence(0));
    let before = thread::spawn(move || collect(before, total));
    let writers = burst(&varve);

    // Start one subscriber while the writers are at it.
    let mut log = varve.global_reader();
    while log.end().expect("end").0 < total / 3 {
        thread::yield_now();
    }
    let during = varve.subscribe(GlobalSequence(0));
    let during = thread::spawn(move || collect(during, total));

    for w in writers {
        w.join().expect("writer");
    }
    let after = collect(varve.subscribe(GlobalSequence(0)), total);

    let before = before.join().expect("subscriber");
    let during = during.join().expect("subscriber");
    assert_complete_and_ordered(&before, total);
    assert_complete_and_ordered(&during, total);
    assert_complete_and_ordered(&after, total);
    assert_eq!(before, after);
    assert_eq!(during, after);
}

#[test]
fn a_slow_subscriber_falls_behind_and_catches_up_without_losing_anything() {
    let (_dir, varve) = temp_store();
    let total = WRITERS * PER_WRITER;
    let (done_tx, done_rx) = mpsc::channel::<()>();

    let mut subscription = varve.subscribe(GlobalSequence(0));
    let reader = thread::spawn(move || {
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            let event = subscription
                .next_timeout(PATIENCE)
                .expect("readable")
                .expect("the writers keep appending");
            seen.push((event.global_sequence().0, order_of(&event)));
            drop(event);
            if seen.len() == 10 {
                // Fall behind by everything the writers have left to do.
                done_rx.recv().expect("the writers finish");
            }
            if seen.len() == 700 {
                // Give up the snapshot mid-page (as an old page is): the
                // next read opens a new one and goes on from the position.
                subscription.release();
            }
        }
        seen
    });

    for w in burst(&varve) {
        w.join().expect("writer");
    }
    done_tx.send(()).expect("the reader waits");
    let seen = reader.join().expect("reader");
    assert_complete_and_ordered(&seen, total);
}

#[test]
fn dropped_and_waiting_subscriptions_hold_no_snapshot() {
    const SLOTS: u32 = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = VarveConfig {
        max_readers: SLOTS,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).expect("open");
    let mut orders = varve.stream::<Order, 256>("orders").expect("open");
    let batch: Vec<Order> = (0..2_000).map(Order::numbered).collect();
    orders.append_batch(StreamId(1), &batch).expect("append");

    // Many subscriptions dropped mid-history, each holding a snapshot until then.
    for n in 0..200 {
        let mut subscription = varve.subscribe(GlobalSequence(n));
        let event = subscription
            .try_next()
            .expect("readable")
            .expect("committed");
        assert_eq!(event.global_sequence(), GlobalSequence(n));
    }

    // A subscription that caught up and waits holds none either.
    let mut idle = varve.subscribe(GlobalSequence(1_990));
    let mut read = 0;
    while idle.try_next().expect("readable").is_some() {
        read += 1;
    }
    assert_eq!(read, 10);

    // So every reader slot is free for others (and there are no more).
    let log = varve.global_reader();
    let held: Vec<_> = (0..SLOTS)
        .map(|_| {
            log.iter_from(GlobalSequence(0))
                .expect("a free reader slot")
        })
        .collect();
    assert!(matches!(
        log.iter_from(GlobalSequence(0)),
        Err(Error::ReadersFull { .. })
    ));
    drop(held);

    // And the idle subscription still follows new commits.
    orders
        .append(StreamId(2), &Order::numbered(2_000))
        .expect("append");
    let next = idle
        .next_timeout(PATIENCE)
        .expect("readable")
        .expect("committed");
    assert_eq!(next.global_sequence(), GlobalSequence(2_000));
}

#[derive(Archive, Serialize, Debug)]
struct Joined {
    user: u64,
}

#[test]
fn filters_select_events_by_stream_and_by_type() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 64>("orders").expect("open");
    let mut returns = varve.stream::<Order, 64>("returns").expect("open");
    let mut users = varve.stream::<Joined, 64>("users").expect("open");
    for n in 0..30 {
        match n % 3 {
            0 => orders.append(StreamId(n), &Order::numbered(n)).map(drop),
            1 => returns.append(StreamId(n), &Order::numbered(n)).map(drop),
            _ => users.append(StreamId(n), &Joined { user: n }).map(drop),
        }
        .expect("append");
    }

    let drain = |filter: Filter| -> Vec<(String, u64)> {
        let mut subscription = varve.subscribe(GlobalSequence(0)).with_filter(filter);
        let mut out = Vec::new();
        while let Some(event) = subscription.try_next().expect("readable") {
            out.push((event.stream_name().to_owned(), event.global_sequence().0));
        }
        assert_eq!(
            subscription.position(),
            GlobalSequence(30),
            "filtered events are passed"
        );
        out
    };
    let names = |seen: &[(String, u64)]| seen.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();

    let users_only = drain(Filter::all().stream("users"));
    assert_eq!(users_only.len(), 10);
    assert!(users_only.iter().all(|(s, g)| s == "users" && g % 3 == 2));

    let all_orders = drain(Filter::all().plain_type::<Order>());
    assert_eq!(all_orders.len(), 20);
    assert!(names(&all_orders).iter().all(|s| s != "users"));

    let both = drain(Filter::all().stream("orders").stream("users"));
    assert_eq!(both.len(), 20);
    let narrowed = drain(
        Filter::all()
            .stream("orders")
            .stream("users")
            .plain_type::<Joined>(),
    );
    assert_eq!(narrowed, users_only);
    assert_eq!(drain(Filter::all().stream("nowhere")), []);
}

#[test]
fn a_stream_subscription_yields_one_stream_id_from_a_sequence_then_follows_it() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 64>("orders").expect("open");
    for n in 0..20 {
        orders
            .append(StreamId(n % 2), &Order::numbered(n))
            .expect("append");
    }
    let subscription = orders.reader().subscribe(StreamId(1), StreamSequence(3));
    let follower = thread::spawn(move || {
        subscription
            .take(12)
            .map(|e| {
                let e = e.expect("readable");
                (e.stream_sequence().0, e.id.to_native())
            })
            .collect::<Vec<_>>()
    });
    for n in 20..30 {
        orders
            .append(StreamId(n % 2), &Order::numbered(n))
            .expect("append");
    }
    let seen = follower.join().expect("follower");
    let expected: Vec<(u64, u64)> = (3..15).map(|seq| (seq, 2 * seq + 1)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_stop_handle_ends_a_subscription_blocked_waiting() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 64>("orders").expect("open");
    orders
        .append(StreamId(1), &Order::numbered(1))
        .expect("append");
    let subscription = varve.subscribe(GlobalSequence(0));
    let stop = subscription.stop_handle();
    let consumer = thread::spawn(move || {
        subscription
            .map(|e| e.map(drop))
            .collect::<Result<Vec<()>, Error>>()
    });
    // Whether the consumer is still reading or already waiting, it ends.
    stop.stop();
    let seen = consumer.join().expect("consumer").expect("readable");
    assert!(seen.len() <= 1);
    assert!(stop.is_stopped());
}

#[test]
fn next_timeout_gives_up_without_an_event_and_try_next_never_waits() {
    let (_dir, varve) = temp_store();
    let mut subscription = varve.subscribe(GlobalSequence(0));
    assert!(subscription.try_next().expect("readable").is_none());
    assert!(subscription
        .next_timeout(Duration::from_millis(5))
        .expect("readable")
        .is_none());
    assert_eq!(subscription.position(), GlobalSequence(0));
}

#[tokio::test]
async fn the_async_stream_follows_commits_without_blocking_a_single_threaded_executor() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 64>("orders").expect("open");
    // More history than one page, so catching up yields to the executor.
    let history: Vec<Order> = (0..700).map(Order::numbered).collect();
    orders.append_batch(StreamId(1), &history).expect("append");

    let mut events = varve.subscribe(GlobalSequence(0)).into_async();
    // On this one thread, the writer task only runs while the stream is pending.
    let writer = tokio::spawn(async move {
        for n in 700..800 {
            orders
                .append(StreamId(2), &Order::numbered(n))
                .expect("append");
            tokio::task::yield_now().await;
        }
    });
    let read = async {
        let mut seen = Vec::new();
        while seen.len() < 800 {
            let event = events.next().await.expect("not stopped").expect("readable");
            seen.push(order_of(&event));
        }
        seen
    };
    let seen = tokio::time::timeout(PATIENCE, read)
        .await
        .expect("woken by each commit");
    assert_eq!(seen, (0..800).collect::<Vec<_>>());
    writer.await.expect("writer");

    let stop = events.stop_handle();
    stop.stop();
    assert!(events.next().await.is_none(), "a stopped stream ends");
}

/// Runs this test binary as a child that appends `count` orders to `dir`.
fn append_from_another_process(dir: &Path, count: u64) {
    let status = varvedb_suite::child_test(CHILD_TEST)
        .env(CHILD, dir)
        .env("VARVEDB_SUBSCRIPTION_CHILD_COUNT", count.to_string())
        .status()
        .expect("start the child");
    assert!(status.success(), "the child failed: {status}");
}

#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_process_appends_when_asked() {
    let Some(dir) = std::env::var_os(CHILD) else {
        panic!(
            "not a test on its own: run by the cross-process tests of this file, which set {CHILD}"
        );
    };
    let count: u64 = std::env::var("VARVEDB_SUBSCRIPTION_CHILD_COUNT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let varve = Varve::new(dir).expect("open in the child");
    let mut orders = varve.stream::<Order, 64>("orders").expect("open");
    for n in 0..count {
        orders
            .append(StreamId(7), &Order::numbered(100 + n))
            .expect("append");
    }
}

#[test]
fn a_commit_by_another_process_wakes_a_waiting_subscription() {
    let (dir, varve) = temp_store();
    let mut subscription = varve.subscribe(GlobalSequence(0));
    assert!(subscription.try_next().expect("readable").is_none());

    let waiting = thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = subscription
                .next_timeout(PATIENCE)
                .expect("readable")
                .expect("woken by the other process");
            seen.push(order_of(&event));
        }
        seen
    });
    append_from_another_process(dir.path(), 3);
    assert_eq!(waiting.join().expect("subscriber"), [100, 101, 102]);
}

#[test]
fn a_commit_by_another_process_wakes_a_waiting_async_stream() {
    let (dir, varve) = temp_store();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut events = varve.subscribe(GlobalSequence(0)).into_async();
    let path = dir.path().to_path_buf();
    runtime.block_on(async move {
        let child = tokio::task::spawn_blocking(move || append_from_another_process(&path, 2));
        let read = async {
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let event = events.next().await.expect("not stopped").expect("readable");
                seen.push(order_of(&event));
            }
            seen
        };
        let seen = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("woken by the other process");
        assert_eq!(seen, [100, 101]);
        child.await.expect("child");
    });
}

/// A subscription from a position past the end is not an error: it waits for
/// that position and yields nothing committed before it.
#[test]
fn a_subscription_from_past_the_end_waits_for_that_position() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 64>("orders").expect("open");
    orders
        .append_batch(StreamId(1), &[Order::numbered(0), Order::numbered(1)])
        .expect("append");
    let end = varve.global_reader().end().expect("end");
    assert_eq!(end, GlobalSequence(2));

    let mut ahead = varve.subscribe(GlobalSequence(5));
    assert!(ahead.try_next().expect("readable").is_none());
    assert_eq!(ahead.position(), GlobalSequence(5));
    // Globals 2, 3 and 4: before the position, never yielded.
    for n in 2..5 {
        orders
            .append(StreamId(2), &Order::numbered(n))
            .expect("append");
        assert!(ahead.try_next().expect("readable").is_none(), "global {n}");
    }
    orders
        .append(StreamId(2), &Order::numbered(5))
        .expect("append");
    let first = ahead.try_next().expect("readable").expect("global 5");
    assert_eq!(
        (first.global_sequence(), order_of(&first)),
        (GlobalSequence(5), 5)
    );

    // The same for one stream id: sequence 3 of id 9, which has none yet.
    let mut piece = orders.reader().subscribe(StreamId(9), StreamSequence(3));
    for n in 0..3 {
        assert!(piece.try_next().expect("readable").is_none());
        orders
            .append(StreamId(9), &Order::numbered(100 + n))
            .expect("append");
    }
    assert!(piece.try_next().expect("readable").is_none());
    orders
        .append(StreamId(9), &Order::numbered(103))
        .expect("append");
    let event = piece.try_next().expect("readable").expect("sequence 3");
    assert_eq!(
        (event.stream_sequence(), event.id.to_native()),
        (StreamSequence(3), 103)
    );

    // A blocked reader is woken by the commit at its position.
    let mut later = varve.subscribe(GlobalSequence(20));
    let waiting = thread::spawn(move || {
        later
            .next_timeout(PATIENCE)
            .expect("readable")
            .map(|e| e.global_sequence())
    });
    let batch: Vec<Order> = (0..12).map(Order::numbered).collect();
    orders.append_batch(StreamId(3), &batch).expect("append");
    assert_eq!(
        waiting.join().expect("subscriber"),
        Some(GlobalSequence(20))
    );
}
