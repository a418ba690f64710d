//! Several processes on one store: a reader in another process sees each
//! commit, whole, as it lands; writers in two processes racing on one stream
//! id with expected versions win each version exactly once while the map
//! grows under both; and a process killed while holding snapshots does not
//! keep their reader slots.
//!
//! The children are this test binary re-executed with `VARVEDB_MP_CHILD`.
#![cfg(unix)]

use std::path::Path;
use std::time::{Duration, Instant};

use varvedb::{
    Error, ExpectedVersion, GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig,
};
use varvedb_suite::child::Reporter;
use varvedb_suite::Order;

const CHILD: &str = "VARVEDB_MP_CHILD";
const CHILD_TEST: &str = "a_child_process_plays_its_role";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Commits of the reader test, and how many events each holds.
const COMMITS: u64 = 40;
fn commit_size(k: u64) -> u64 {
    [1, 3, 1, 7, 2][(k % 5) as usize]
}

const RACE_ROUNDS: u64 = 40;
const HELD_SNAPSHOTS: u64 = 6;

/// A child process of this binary in `role` on the store in `dir`.
struct Process;

impl Process {
    fn spawn(role: &str, dir: &Path) -> Reporter {
        Reporter::spawn(
            CHILD_TEST,
            CHILD,
            &format!("{role}:{}", dir.display()),
            TIMEOUT,
        )
    }
}

fn small_map() -> VarveConfig {
    VarveConfig {
        map_size: 256 * 1024,
        max_readers: 8,
        ..VarveConfig::default()
    }
}

/// Not a test on its own: the body of every child process.
/// It is `#[ignore]`d: its parent runs it with `--ignored --exact`, and
/// without the variable set it fails.
#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_process_plays_its_role() {
    let Ok(spec) = std::env::var(CHILD) else {
        panic!("not a test on its own: run by the tests of this file, which set {CHILD}");
    };
    let (role, dir) = spec.split_once(':').unwrap();
    let dir = Path::new(dir);
    match role {
        "reader" => follow_commits(dir),
        "racer" => race(dir, 1),
        "holder" => hold_snapshots(dir),
        other => panic!("unknown role {other}"),
    }
}

fn follow_commits(dir: &Path) {
    let varve = Varve::new(dir).unwrap();
    let mut log = varve.global_reader();
    let ends: Vec<u64> = (0..COMMITS)
        .scan(0, |end, k| {
            *end += commit_size(k);
            Some(*end)
        })
        .collect();
    let total = *ends.last().unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + TIMEOUT;
    println!("@@ ready");
    while seen < total {
        assert!(Instant::now() < deadline, "no commit for too long");
        let end = log.end().unwrap().0;
        if end == seen {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        assert!(ends.contains(&end), "a snapshot ends inside a batch: {end}");
        for (g, e) in (seen..).zip(log.iter_from(GlobalSequence(seen)).unwrap()) {
            let e = e.unwrap();
            assert_eq!(e.global_sequence(), GlobalSequence(g));
            let order = e.archived_plain::<Order>().unwrap();
            assert_eq!(order.id, g);
            assert_eq!(order.note, Order::numbered(g).note);
        }
        seen = end;
        println!("@@ seen {seen}");
    }
}

fn race(dir: &Path, me: u64) {
    let varve = Varve::with_config(dir, small_map()).unwrap();
    let mut stream = varve.stream::<Order, 64>("contested").unwrap();
    let mut wins = Vec::new();
    for round in 0..RACE_ROUNDS {
        let expected = match round {
            0 => ExpectedVersion::NoStream,
            r => ExpectedVersion::Exact(StreamSequence(r - 1)),
        };
        // Big events, so that the map grows in both processes as they race.
        let event = Order {
            id: me,
            quantity: round as u32,
            note: "x".repeat(20_000),
        };
        loop {
            match stream.append_expected(StreamId(1), &event, expected) {
                Ok((seq, _)) => {
                    wins.push(seq.0);
                    break;
                }
                Err(Error::VersionConflict { actual, .. }) => {
                    if actual.is_some_and(|a| a.0 >= round) {
                        break;
                    }
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
    }
    let list: Vec<String> = wins.iter().map(u64::to_string).collect();
    println!("@@ wins {}", list.join(" "));
}

fn hold_snapshots(dir: &Path) {
    let varve = Varve::with_config(dir, small_map()).unwrap();
    let orders = varve.stream::<Order, 64>("orders").unwrap();
    let mut held = Vec::new();
    for _ in 0..HELD_SNAPSHOTS {
        let mut reader = orders.reader();
        let e = reader
            .get_archived(StreamId(1), StreamSequence(0))
            .unwrap()
            .unwrap();
        held.push((reader, e));
    }
    println!("@@ holding");
    std::thread::sleep(TIMEOUT);
}

#[test]
fn a_reader_in_another_process_sees_each_commit_whole_as_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    let reader = Process::spawn("reader", dir.path());
    assert_eq!(reader.next(), "ready");
    let mut end = 0;
    for k in 0..COMMITS {
        let batch: Vec<Order> = (end..end + commit_size(k)).map(Order::numbered).collect();
        orders.append_batch(StreamId(k % 3), &batch).unwrap();
        end += commit_size(k);
        assert_eq!(reader.next(), format!("seen {end}"), "commit {k}");
    }
    reader.finish();
}

#[test]
fn writers_in_two_processes_win_each_expected_version_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // The store exists before both writers start.
    drop(Varve::with_config(dir.path(), small_map()).unwrap());
    let other = Process::spawn("racer", dir.path());
    race_here_and_check(dir.path(), other);
}

fn race_here_and_check(dir: &Path, other: Reporter) {
    let racer = std::thread::spawn({
        let dir = dir.to_path_buf();
        move || {
            let varve = Varve::with_config(&dir, small_map()).unwrap();
            let mut stream = varve.stream::<Order, 64>("contested").unwrap();
            let mut wins = Vec::new();
            for round in 0..RACE_ROUNDS {
                let expected = match round {
                    0 => ExpectedVersion::NoStream,
                    r => ExpectedVersion::Exact(StreamSequence(r - 1)),
                };
                let event = Order {
                    id: 0,
                    quantity: round as u32,
                    note: "y".repeat(20_000),
                };
                loop {
                    match stream.append_expected(StreamId(1), &event, expected) {
                        Ok((seq, _)) => {
                            wins.push(seq.0);
                            break;
                        }
                        Err(Error::VersionConflict { actual, .. }) => {
                            if actual.is_some_and(|a| a.0 >= round) {
                                break;
                            }
                        }
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
            }
            wins
        }
    });
    let report = other.next();
    let theirs: Vec<u64> = report
        .strip_prefix("wins")
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    other.finish();
    let mine = racer.join().unwrap();
    let mut all: Vec<u64> = mine.iter().chain(&theirs).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..RACE_ROUNDS).collect::<Vec<_>>(),
        "mine {mine:?}, theirs {theirs:?}"
    );

    // The winners' events are in the log, in order, and the store is whole.
    let varve = Varve::with_config(dir, small_map()).unwrap();
    let reader = varve.stream::<Order, 64>("contested").unwrap().reader();
    for (seq, e) in reader.iter_stream(StreamId(1), None).unwrap().enumerate() {
        let e = e.unwrap();
        assert_eq!(e.quantity, seq as u32);
        let winner = if mine.contains(&(seq as u64)) { 0 } else { 1 };
        assert_eq!(e.id, winner, "event {seq} was written by its winner");
    }
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, RACE_ROUNDS);
}

#[test]
fn a_process_killed_while_holding_snapshots_does_not_keep_their_reader_slots() {
    let dir = tempfile::tempdir().unwrap();
    // This process opens first, so the reader table has its 8 slots.
    let varve = Varve::with_config(dir.path(), small_map()).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    orders.append(StreamId(1), &Order::numbered(0)).unwrap();

    for _ in 0..2 {
        let holder = Process::spawn("holder", dir.path());
        assert_eq!(holder.next(), "holding");
        drop(holder); // SIGKILL, with six snapshots open
    }
    // Twelve slots were taken by dead processes; this one still reads.
    let mut held = Vec::new();
    for _ in 0..HELD_SNAPSHOTS {
        let mut reader = orders.reader();
        let e = reader
            .get_archived(StreamId(1), StreamSequence(0))
            .expect("a reader slot")
            .unwrap();
        held.push((reader, e));
    }
    orders.append(StreamId(1), &Order::numbered(1)).unwrap();
    drop(held);
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
