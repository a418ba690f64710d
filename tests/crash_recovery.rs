//! Crash recovery: a writer process killed with SIGKILL at any moment never
//! loses an acknowledged event, never leaves part of a batch visible, and leaves
//! a store that reopens clean, with dense sequences, byte-identical events and
//! an index that agrees with the log.
//!
//! The parent test re-executes this test binary as a child writer
//! (`VARVEDB_CRASH_CHILD=<dir>`), which appends single events and batches to
//! several streams from two threads and reports each append on stdout before
//! (`intent`) and after (`ack`) it returns. The parent kills it at a random
//! moment, reopens the store and checks it against every report, appends once
//! itself, and repeats. `VARVEDB_CRASH_CYCLES` sets the number of cycles (50),
//! `VARVEDB_CRASH_SEED` replays a run.
#![cfg(unix)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rkyv::{rancor, Archive, Deserialize, Serialize};
use varvedb::{
    Durability, ExpectedVersion, GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig,
};

const CHILD: &str = "VARVEDB_CRASH_CHILD";
const CHILD_CYCLE: &str = "VARVEDB_CRASH_CHILD_CYCLE";
const CHILD_DURABILITY: &str = "VARVEDB_CRASH_CHILD_DURABILITY";
const CYCLES: &str = "VARVEDB_CRASH_CYCLES";
const SEED: &str = "VARVEDB_CRASH_SEED";
const CHILD_TEST: &str = "a_child_writer_appends_until_it_is_killed";

const STREAMS: [&str; 3] = ["ledger", "orders", "audit"];
const IDS: u64 = 6;
const WRITER_THREADS: u64 = 2;
/// The parent's own appends use this writer number in their nonces.
const PARENT_WRITER: u64 = 15;

/// The event every writer appends. Its bytes are a pure function of
/// `(nonce, index)`, so the parent can regenerate what a child wrote.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Written {
    nonce: u64,
    index: u32,
    body: Vec<u8>,
}

/// splitmix64: small, seedable, good enough to pick sizes and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn written(nonce: u64, index: u32) -> Written {
    let mut rng = Rng(nonce ^ (u64::from(index) << 44) ^ 0x5eed);
    // Mostly small events, some of a page, a few spanning LMDB overflow pages.
    let len = match rng.below(40) {
        0 => 4_000 + rng.below(8_000),
        1..=6 => rng.below(1_500),
        _ => rng.below(80),
    };
    let body = (0..len).map(|_| rng.next() as u8).collect();
    Written { nonce, index, body }
}

fn archived_bytes(event: &Written) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(event)
        .expect("serialize an event")
        .to_vec()
}

fn nonce(cycle: u64, writer: u64, counter: u64) -> u64 {
    (cycle << 24) | (writer << 20) | counter
}

// ---------------------------------------------------------------- the child

/// Not a test on its own: the body of the child process.
/// It is `#[ignore]`d: its parent runs it with `--ignored --exact`, and
/// without the variable set it fails.
#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_writer_appends_until_it_is_killed() {
    let Some(dir) = std::env::var_os(CHILD) else {
        panic!("not a test on its own: run by acknowledged_events_survive_a_writer_killed_at_any_moment, which sets {CHILD}");
    };
    let cycle: u64 = env_number(CHILD_CYCLE).expect("the cycle number");
    let durability = match std::env::var(CHILD_DURABILITY).as_deref() {
        Ok("full") => Durability::Full,
        Ok("no-meta-sync") => Durability::NoMetaSync,
        Ok("no-sync") => Durability::NoSync,
        other => panic!("unknown durability {other:?}"),
    };
    let config = VarveConfig {
        durability,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(Path::new(&dir), config).expect("open the store");
    let writers: Vec<_> = (0..WRITER_THREADS)
        .map(|writer| {
            let varve = varve.clone();
            std::thread::spawn(move || append_until_killed(&varve, cycle, writer))
        })
        .collect();
    for w in writers {
        w.join().expect("a writer thread panicked");
    }
}

fn report(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line).expect("write to the parent");
    out.flush().expect("flush to the parent");
}

fn append_until_killed(varve: &Varve, cycle: u64, writer: u64) {
    let mut rng = Rng(cycle.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ writer);
    let mut streams: Vec<_> = STREAMS
        .iter()
        .map(|name| varve.stream::<Written, 256>(name).expect("open a stream"))
        .collect();
    // Each writer owns the ids congruent to its number, so it can predict
    // their versions exactly: a conflict means the store lost or invented events.
    let mut versions = HashMap::new();
    for (s, stream) in streams.iter().enumerate() {
        for id in (writer..IDS).step_by(WRITER_THREADS as usize) {
            versions.insert((s, id), stream.version(StreamId(id)).expect("version"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for counter in 0..1 << 20 {
        if Instant::now() > deadline {
            return;
        }
        let s = rng.below(STREAMS.len() as u64) as usize;
        let id = rng.below(IDS / WRITER_THREADS) * WRITER_THREADS + writer;
        let count = match rng.below(80) {
            0..=49 => 1,
            50..=78 => 2 + rng.below(9),
            _ => 20 + rng.below(60),
        } as u32;
        let nonce = nonce(cycle, writer, counter);
        let events: Vec<Written> = (0..count).map(|i| written(nonce, i)).collect();
        let version = versions[&(s, id)];
        let expected = match (rng.below(2), version) {
            (0, _) => ExpectedVersion::Any,
            (_, None) => ExpectedVersion::NoStream,
            (_, Some(v)) => ExpectedVersion::Exact(v),
        };
        report(format_args!("@@ intent {nonce} {s} {id} {count}\n"));
        let stream = &mut streams[s];
        let (seq, global) = if count == 1 && rng.below(2) == 0 {
            stream
                .append_expected(StreamId(id), &events[0], expected)
                .expect("append")
        } else {
            stream
                .append_batch_expected(StreamId(id), &events, expected)
                .expect("append a batch")[0]
        };
        let next = seq.0 + u64::from(count);
        assert_eq!(
            seq.0,
            version.map_or(0, |v| v.0 + 1),
            "the store gave a sequence this writer did not predict"
        );
        versions.insert((s, id), Some(StreamSequence(next - 1)));
        report(format_args!("@@ ack {nonce} {} {}\n", seq.0, global.0));
    }
}

// ---------------------------------------------------------------- the parent

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One append a child announced, and its positions if it was acknowledged.
#[derive(Debug, Clone)]
struct Intent {
    stream: usize,
    id: u64,
    count: u32,
    ack: Option<(u64, u64)>,
}

/// One event the store must hold, in global order.
struct Expected {
    stream: usize,
    id: u64,
    seq: u64,
    bytes: Vec<u8>,
}

#[derive(Default, Debug)]
struct Totals {
    cycles: u64,
    events_checked: u64,
    acknowledged: u64,
    in_flight_committed: u64,
    in_flight_absent: u64,
}

/// Kills and reaps the child if the parent fails while it runs.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn durability_name(rng: &mut Rng) -> &'static str {
    ["full", "no-meta-sync", "no-sync"][rng.below(3) as usize]
}

/// Runs one child until `kill_after` past its first acknowledged append, kills
/// it and returns everything it reported, by nonce.
fn run_child(
    dir: &Path,
    cycle: u64,
    durability: &str,
    kill_after: Duration,
) -> BTreeMap<u64, Intent> {
    let child = varvedb_suite::child_test(CHILD_TEST)
        .env(CHILD, dir)
        .env(CHILD_CYCLE, cycle.to_string())
        .env(CHILD_DURABILITY, durability)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child writer");
    let mut child = Reaper(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut stderr = child.0.stderr.take().expect("child stderr");
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // A line cut short by the kill has no newline and is dropped.
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') && lines_tx.send(line.clone()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut received = Vec::new();
    let mut killed = false;
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let first_ack = !killed && line.contains("@@ ack ");
                received.push(line);
                if first_ack {
                    std::thread::sleep(kill_after);
                    child.0.kill().expect("kill the child");
                    killed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the child writer went silent"),
        }
    }
    let status = child.0.wait().expect("reap the child");
    reader.join().expect("stdout reader");
    let stderr = errors.join().expect("stderr reader");
    assert!(
        killed && status.signal() == Some(9),
        "the child writer failed on its own ({status}):\n{stderr}"
    );

    let mut intents = BTreeMap::new();
    for line in received {
        // libtest may print on the same line before our report: skip to the marker.
        let Some(at) = line.find("@@ ") else { continue };
        let words: Vec<&str> = line[at + 3..].split_whitespace().collect();
        let n = |i: usize| -> u64 { words[i].parse().expect("a number") };
        match words.first() {
            Some(&"intent") => {
                let intent = Intent {
                    stream: n(2) as usize,
                    id: n(3),
                    count: n(4) as u32,
                    ack: None,
                };
                assert!(intents.insert(n(1), intent).is_none(), "nonce reused");
            }
            Some(&"ack") => {
                let intent: &mut Intent = intents.get_mut(&n(1)).expect("ack of an intent");
                intent.ack = Some((n(2), n(3)));
            }
            _ => panic!("unexpected report {line:?}"),
        }
    }
    intents
}

/// Checks the reopened store against `log` (what earlier cycles proved is
/// there) and `intents` (what the killed child reported), then extends `log`
/// with the child's events found in the store.
fn check_store(
    varve: &Varve,
    log: &mut Vec<Expected>,
    intents: &BTreeMap<u64, Intent>,
    totals: &mut Totals,
) {
    let report = varve.verify().expect("verify");
    assert!(report.is_ok(), "verify: {:?}", report.problems);

    let mut next_seq: HashMap<(usize, u64), u64> = HashMap::new();
    for e in log.iter() {
        next_seq.insert((e.stream, e.id), e.seq + 1);
    }
    let global = varve.global_reader();
    let mut events = global
        .iter_from(GlobalSequence(0))
        .expect("iterate the log");
    for (g, expected) in log.iter().enumerate() {
        let event = events
            .next()
            .unwrap_or_else(|| panic!("global {g} is missing"))
            .expect("read an acknowledged event");
        assert_eq!(event.global_sequence(), GlobalSequence(g as u64));
        assert_eq!(
            (
                event.stream_name(),
                event.stream_id().0,
                event.stream_sequence().0
            ),
            (STREAMS[expected.stream], expected.id, expected.seq),
            "global {g} moved"
        );
        assert!(event.payload() == expected.bytes, "global {g} changed");
    }

    // The child's events: whole batches of announced appends, every
    // acknowledged one present where its acknowledgement said.
    let mut seen = HashMap::new();
    let mut current: Option<(u64, u32)> = None;
    for (g, event) in (log.len() as u64..).zip(events) {
        let event = event.expect("read a new event");
        assert_eq!(
            event.global_sequence(),
            GlobalSequence(g),
            "the log has a gap"
        );
        let typed = event.archived_plain::<Written>().expect("a valid event");
        let (nonce, index) = (typed.nonce.to_native(), typed.index.to_native());
        let intent = intents
            .get(&nonce)
            .unwrap_or_else(|| panic!("global {g} holds an event nobody wrote (nonce {nonce})"));
        let expected_index = match current {
            Some((n, i)) if n == nonce => i + 1,
            Some((n, i)) => panic!(
                "global {g}: batch {n} stops after {} of {} events",
                i + 1,
                intents[&n].count
            ),
            None => 0,
        };
        assert_eq!(index, expected_index, "global {g}: batch out of order");
        let key = (intent.stream, intent.id);
        let seq = next_seq.entry(key).or_insert(0);
        assert_eq!(
            (
                event.stream_name(),
                event.stream_id().0,
                event.stream_sequence().0
            ),
            (STREAMS[intent.stream], intent.id, *seq),
            "global {g}: wrong position"
        );
        if index == 0 {
            if let Some(ack) = intent.ack {
                assert_eq!(ack, (*seq, g), "acknowledged at other positions");
            }
            assert!(
                seen.insert(nonce, g).is_none(),
                "batch {nonce} written twice"
            );
        }
        let bytes = archived_bytes(&written(nonce, index));
        assert!(
            event.payload() == bytes,
            "global {g} differs from what was written"
        );
        log.push(Expected {
            stream: intent.stream,
            id: intent.id,
            seq: *seq,
            bytes,
        });
        *seq += 1;
        current = (index + 1 < intent.count).then_some((nonce, index));
    }
    if let Some((n, i)) = current {
        panic!("batch {n} is cut after {} events", i + 1);
    }
    let mut in_flight = 0;
    for (nonce, intent) in intents {
        match (intent.ack, seen.contains_key(nonce)) {
            (Some(_), true) => totals.acknowledged += 1,
            (Some(_), false) => panic!("acknowledged append {nonce} was lost"),
            (None, true) => totals.in_flight_committed += 1,
            (None, false) => totals.in_flight_absent += 1,
        }
        in_flight += usize::from(intent.ack.is_none());
    }
    assert!(
        in_flight <= WRITER_THREADS as usize,
        "each writer has one append in flight"
    );
    assert_eq!(report.events, log.len() as u64, "verify counts every event");

    // Every stream id reads back through the index, by iteration and by point reads.
    let mut by_key: HashMap<(usize, u64), Vec<(u64, &Expected)>> = HashMap::new();
    for (g, e) in log.iter().enumerate() {
        by_key
            .entry((e.stream, e.id))
            .or_default()
            .push((g as u64, e));
    }
    for (s, name) in STREAMS.iter().enumerate() {
        let stream = varve.stream::<Written, 256>(name).expect("open a stream");
        let mut reader = stream.reader();
        for id in 0..IDS {
            let expected = by_key.get(&(s, id)).map_or(&[][..], Vec::as_slice);
            let got: Vec<(u64, u64, Vec<u8>)> = reader
                .iter_stream(StreamId(id), None)
                .expect("iterate a stream")
                .map(|e| {
                    let e = e.expect("read a stream event");
                    (
                        e.stream_sequence().0,
                        e.global_sequence().0,
                        e.bytes().to_vec(),
                    )
                })
                .collect();
            assert_eq!(got.len(), expected.len(), "{name}/{id}: length");
            for ((seq, g, bytes), (eg, e)) in got.iter().zip(expected) {
                assert_eq!((*seq, *g), (e.seq, *eg), "{name}/{id}: position");
                assert!(*bytes == e.bytes, "{name}/{id}: bytes at {seq}");
            }
            let version = reader.version(StreamId(id)).expect("version");
            assert_eq!(version.map(|v| v.0), expected.last().map(|(_, e)| e.seq));
            if let Some((_, last)) = expected.last() {
                let e = reader
                    .get_bytes(StreamId(id), StreamSequence(last.seq))
                    .expect("point read")
                    .expect("the last event");
                assert!(*e == *last.bytes);
            }
        }
    }
    totals.events_checked += log.len() as u64;
}

/// After a crash the next append works: the parent appends a batch with an
/// exact expected version and records it.
fn append_after_recovery(varve: &Varve, log: &mut Vec<Expected>, cycle: u64, rng: &mut Rng) {
    let s = rng.below(STREAMS.len() as u64) as usize;
    let id = rng.below(IDS);
    let mut stream = varve
        .stream::<Written, 256>(STREAMS[s])
        .expect("open a stream");
    let version = stream.version(StreamId(id)).expect("version");
    let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let nonce = nonce(cycle, PARENT_WRITER, 0);
    let events: Vec<Written> = (0..1 + rng.below(3) as u32)
        .map(|i| written(nonce, i))
        .collect();
    let positions = stream
        .append_batch_expected(StreamId(id), &events, expected)
        .expect("append after recovery");
    assert_eq!(positions[0].1 .0, log.len() as u64);
    for ((seq, _), event) in positions.iter().zip(&events) {
        log.push(Expected {
            stream: s,
            id,
            seq: seq.0,
            bytes: archived_bytes(event),
        });
    }
}

#[test]
fn acknowledged_events_survive_a_writer_killed_at_any_moment() {
    let cycles = env_number(CYCLES).unwrap_or(50);
    let seed = env_number(SEED).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("crash recovery: {cycles} cycles, {SEED}={seed}");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut rng = Rng(seed);
    let mut log = Vec::new();
    let mut totals = Totals::default();
    let started = Instant::now();
    for cycle in 0..cycles {
        // Cycle numbers in nonces must never repeat within one store.
        let child_cycle = seed.wrapping_add(cycle) & 0xff_ffff_ffff;
        let durability = durability_name(&mut rng);
        let kill_after = Duration::from_micros(rng.below(4_000));
        let intents = run_child(dir.path(), child_cycle, durability, kill_after);
        let varve = Varve::new(dir.path()).expect("reopen after the crash");
        check_store(&varve, &mut log, &intents, &mut totals);
        append_after_recovery(&varve, &mut log, child_cycle, &mut rng);
        totals.cycles += 1;
    }
    // The parent's last append is durable too.
    let varve = Varve::new(dir.path()).expect("reopen");
    check_store(&varve, &mut log, &BTreeMap::new(), &mut totals);
    eprintln!(
        "crash recovery: {totals:?}, {} events in the store, {:.1?}",
        log.len(),
        started.elapsed()
    );
}
