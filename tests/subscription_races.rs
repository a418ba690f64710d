//! Wake-ups and growth across handles and
//! processes.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use varvedb::{GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig};
use varvedb_suite::Order;

const CHILD: &str = "VARVEDB_SUB_CHILD";

/// A stream subscription made from a handle opened before the stream
/// existed, waiting, while another handle's first append creates the stream.
#[test]
fn a_subscription_waiting_on_a_stream_created_by_another_handles_first_append_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let early = varve.stream::<Order, 64>("late").unwrap();
    let mut sub = early.reader().subscribe(StreamId(7), StreamSequence(0));
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let got = sub.next_timeout(Duration::from_secs(10)).unwrap();
        (got.map(|e| e.id.to_native()), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    // Another handle, opened separately, creates the stream.
    let mut other = varve.stream::<Order, 64>("late").unwrap();
    other.append(StreamId(7), &Order::numbered(42)).unwrap();
    let (got, took) = waiter.join().unwrap();
    assert_eq!(got, Some(42), "woken with the event (after {took:?})");
    assert!(took < Duration::from_secs(5), "woken promptly: {took:?}");
}

/// The same with cross-process polling off (a single-process store): only
/// this process's appends wake the subscription, and this one does.
#[test]
fn with_polling_off_a_stream_subscription_still_wakes_on_the_streams_creation() {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        cross_process_poll: None,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let early = varve.stream::<Order, 64>("late").unwrap();
    let mut sub = early.reader().subscribe(StreamId(7), StreamSequence(0));
    assert!(sub.try_next().unwrap().is_none());
    let waiter = std::thread::spawn(move || {
        let got = sub.next_timeout(Duration::from_secs(10)).unwrap();
        got.map(|e| e.id.to_native())
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut other = varve.stream::<Order, 64>("late").unwrap();
    other.append(StreamId(7), &Order::numbered(42)).unwrap();
    assert_eq!(waiter.join().unwrap(), Some(42));
}

const GROW_EVENTS: u64 = 60;

fn big(n: u64) -> Order {
    Order {
        id: n,
        quantity: 1,
        note: format!("{n:>width$}", width = 40 * 1024 + (n as usize % 7) * 1000),
    }
}

fn tiny_map() -> VarveConfig {
    VarveConfig {
        map_size: 64 * 1024,
        cross_process_poll: Some(Duration::from_millis(5)),
        ..VarveConfig::default()
    }
}

/// The child: appends `GROW_EVENTS` events of 40+ KiB into a store opened
/// with a 64 KiB map, growing it many times.
#[test]
#[ignore = "a child process of a_caught_up_subscription_survives_another_process_growing_the_map"]
fn child_grows_the_map() {
    let dir = std::env::var(CHILD).expect("run by its parent test");
    let varve = Varve::with_config(&dir, tiny_map()).unwrap();
    let mut s = varve.stream::<Order, 64>("big").unwrap();
    // Let the parent get caught up and wait first.
    std::thread::sleep(Duration::from_millis(100));
    for n in 0..GROW_EVENTS {
        s.append(StreamId(n % 3), &big(n)).unwrap();
        if n % 10 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One process is caught up in a subscription (and polls the commit id)
/// while another process grows the map under it: every event arrives, whole,
/// and nothing crashes.
#[test]
fn a_caught_up_subscription_survives_another_process_growing_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::with_config(dir.path(), tiny_map()).unwrap();
    // Create the stream here, so the child only appends.
    let mut s = varve.stream::<Order, 64>("big").unwrap();
    s.append(StreamId(9), &Order::numbered(0)).unwrap();
    let mut sub = varve.subscribe(GlobalSequence(1));
    assert!(sub.try_next().unwrap().is_none());
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (varve, stop) = (varve.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(varve.last_commit_id());
                n += 1;
            }
            n
        })
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_grows_the_map",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < GROW_EVENTS {
        assert!(Instant::now() < deadline, "only {got} events arrived");
        match sub.next_timeout(Duration::from_secs(1)).unwrap() {
            Some(e) => {
                let o = e.archived::<Order>().unwrap();
                assert_eq!(o.id, got);
                assert_eq!(o.note, big(got).note);
                got += 1;
            }
            None => {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "the child failed: {status}");
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the child failed: {status}");
    assert!(varve.verify().unwrap().problems.is_empty());
}
