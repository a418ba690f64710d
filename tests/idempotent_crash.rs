//! Retries across crashes and processes: a writer killed at any moment and
//! restarted retries its last appends with the same event ids; after
//! recovery every logical append exists exactly once, whole, and every
//! acknowledged one exists. Two processes sending the same appends at once
//! write each exactly once, and both get its one position.
//!
//! The parent test re-executes this binary as a child writer
//! (`VARVEDB_IDEM_CHILD=<dir>:<first append>`), which appends a fixed plan
//! of batches, each with its own ids, and reports each acknowledgement. The
//! parent kills it at a random moment, checks the store, and restarts a child
//! a few appends *before* the last acknowledged one (so it retries appends
//! that landed, and the one in flight that may or may not have).
#![cfg(unix)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use varvedb::{Append, EventId, GlobalSequence, StreamId, StreamSequence, Varve};
use varvedb_suite::Order;

const CHILD: &str = "VARVEDB_IDEM_CHILD";
const CHILD_TEST: &str = "a_child_writer_retries_its_plan_until_killed";
const CYCLES: u64 = 12;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Logical append `k`: `k % 3 + 1` events to stream id `k % 4`.
fn plan(k: u64) -> (StreamId, Vec<EventId>) {
    let n = k % 3 + 1;
    let ids = (0..n)
        .map(|i| EventId::from_u128((u128::from(k) << 8) | u128::from(i)))
        .collect();
    (StreamId(k % 4), ids)
}

fn split(id: EventId) -> (u64, u64) {
    let v = u128::from_be_bytes(id.0);
    ((v >> 8) as u64, (v & 0xff) as u64)
}

/// Checks the store: every event has an id, no id twice, every logical
/// append whole and contiguous in its stream id; returns the appends found.
fn check(varve: &Varve) -> HashSet<u64> {
    let mut seen = HashSet::new();
    let mut appends = HashSet::new();
    let mut log = varve.global_reader();
    for event in log.iter_from(GlobalSequence(0)).unwrap() {
        let event = event.unwrap();
        let id = event.metadata().event_id().expect("every event has an id");
        assert!(seen.insert(id), "{id} stored twice");
        let (k, i) = split(id);
        let (stream_id, ids) = plan(k);
        assert_eq!(event.stream_id(), stream_id);
        appends.insert(k);
        // The first event of an append is followed by the rest, in order.
        if i == 0 {
            for (j, later) in ids.iter().enumerate().skip(1) {
                let e = log.get_by_id(*later).unwrap().expect("a whole append");
                assert_eq!(
                    e.stream_sequence(),
                    StreamSequence(event.stream_sequence().0 + j as u64)
                );
            }
        }
    }
    for k in &appends {
        for id in plan(*k).1 {
            assert!(seen.contains(&id), "append {k} is partial");
        }
    }
    assert!(varve.verify().unwrap().is_ok());
    appends
}

#[test]
fn after_crashes_and_retries_each_logical_append_exists_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x1de3_u64;
    let mut acked: Option<u64> = None;
    for cycle in 0..CYCLES {
        let start = acked.map_or(0, |a| a.saturating_sub(3));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD,
                format!("{start}:{}:{}", u64::MAX, dir.path().display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(at) = line.find("@@ ") {
                    let _ = tx.send(line[at + 3..].to_string());
                }
            }
        });
        // Wait for the child to get going (past its retries), then kill it
        // a pseudo-random number of acknowledgements later.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait_for = 4 + (seed >> 33) % 20;
        let deadline = Instant::now() + TIMEOUT;
        let mut got = 0;
        while got < wait_for {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the child acknowledged in time");
            let k = ack(&line).0;
            acked = Some(acked.map_or(k, |a| a.max(k)));
            got += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements that were printed before the kill count too: all
        // of them, read to the pipe's end (the reading thread drops its
        // sender there), not only those the thread has passed on so far.
        while let Ok(line) = rx.recv_timeout(TIMEOUT) {
            let k = ack(&line).0;
            acked = Some(acked.map_or(k, |a| a.max(k)));
        }
        let varve = Varve::new(dir.path()).unwrap();
        let appends = check(&varve);
        let last = acked.unwrap();
        for k in 0..=last {
            assert!(
                appends.contains(&k),
                "cycle {cycle}: acknowledged append {k} lost"
            );
        }
        // Nothing past the one in flight.
        assert!(appends.iter().all(|&k| k <= last + 1), "cycle {cycle}");
    }
}

/// A child's report `ack <k> <first global> <idempotent>`.
fn ack(line: &str) -> (u64, u64, bool) {
    let mut parts = line.strip_prefix("ack ").unwrap().split(' ');
    let mut next = || parts.next().unwrap();
    (
        next().parse().unwrap(),
        next().parse().unwrap(),
        next() == "true",
    )
}

#[test]
fn two_processes_sending_the_same_appends_at_once_write_each_once() {
    const APPENDS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    // Created first: two processes creating one store at the same moment
    // race on its identity record (a separate issue, not this test's).
    drop(Varve::new(dir.path()).unwrap());
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("0:{APPENDS}:{}", dir.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    let reports: Vec<Vec<(u64, u64, bool)>> = children
        .into_iter()
        .map(|mut child| {
            let out = child.stdout.take().unwrap();
            let acks = BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.find("@@ ").map(|at| ack(&l[at + 3..])))
                .collect();
            assert!(child.wait().unwrap().success());
            acks
        })
        .collect();
    assert_eq!(reports[0].len(), APPENDS as usize);
    assert_eq!(reports[1].len(), APPENDS as usize);
    for (k, (a, b)) in reports[0].iter().zip(&reports[1]).enumerate() {
        assert_eq!((a.0, a.1), (b.0, b.1), "append {k}: one position for both");
        assert!(
            a.2 != b.2,
            "append {k}: exactly one process wrote it: {a:?} {b:?}"
        );
    }
    let varve = Varve::new(dir.path()).unwrap();
    assert_eq!(check(&varve).len() as u64, APPENDS);
}

/// The child writer of the tests above: appends `[start, end)` of the plan.
#[test]
#[ignore = "run by its parent test"]
fn a_child_writer_retries_its_plan_until_killed() {
    let Ok(arg) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = arg.splitn(3, ':');
    let start: u64 = parts.next().unwrap().parse().unwrap();
    let end: u64 = parts.next().unwrap().parse().unwrap();
    let dir = parts.next().unwrap();
    let varve = Varve::new(dir).unwrap();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    for k in start..end {
        let (id, ids) = plan(k);
        let events: Vec<Order> = (0..ids.len() as u64)
            .map(|i| Order::numbered(k + i))
            .collect();
        let done = orders
            .append_batch_with(id, &events, Append::new().event_ids(&ids))
            .unwrap();
        let first = done.first().unwrap().1 .0;
        println!("@@ ack {k} {first} {}", done.is_idempotent());
    }
}
