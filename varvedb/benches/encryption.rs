//! Encryption at rest against plaintext, on the workloads' shapes
//! (`docs/performance.md`): W1 (durable batches of 1,000 over 100 stream
//! ids), W3 (random point reads of one field), W4 (scan one stream id), W5
//! (scan the log in global order) and W6 (load an aggregate, the sum of a
//! field, for each of the 100 stream ids).
//!
//! Runs in interleaved rounds in one process (the machine is shared: a slow
//! moment hits one round of both variants), best of the rounds; prints the
//! ratio encrypted / plaintext.
//!
//! Then the re-encryption pass (`Varve::reencrypt` after
//! `Varve::rotate_data_key`, durable batches of the default size): MB of
//! sealed blocks and events re-sealed per second, best of the rounds.
//!
//! A second group compares per-entity keys (`VarveConfig::key_vault`,
//! crypto-shredding) with the store's data keys, both encrypted: E1 the
//! first append of each of many entities (durable; with a vault it also
//! commits the entity's new key there), E2 appends to existing entities
//! (batches of 10), E3 loading each entity's aggregate (every block opened
//! with its entity's key, looked up in the vault).
//!
//! `cargo bench -p varvedb --bench encryption` prints tables for
//! `docs/performance.md`; `VARVEDB_BENCH_SCALE=0.1` shrinks them;
//! `VARVEDB_BENCH_ONLY=reencrypt` runs only the re-encryption rounds.

#[path = "workloads/contender.rs"]
#[allow(dead_code)]
mod contender;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use varvedb::{
    Aggregate, Durability, EncryptionKey, GlobalSequence, StreamId, StreamSequence, Varve,
    VarveConfig,
};

use contender::{ArchivedSample, Sample};

const ROUNDS: usize = 5;
const IDS: u64 = 100;

/// The sum of `c` over a stream (W6).
#[derive(Default)]
struct Sum(u64);

impl Aggregate for Sum {
    type Event = Sample;
    type Command = Sample;
    type Error = Infallible;
    const STREAM: &'static str = "samples";

    fn apply(&mut self, event: &ArchivedSample) {
        self.0 = self.0.wrapping_add(event.c.to_native());
    }

    fn handle(&self, command: &Sample) -> Result<Vec<Sample>, Infallible> {
        Ok(vec![command.clone()])
    }
}

fn config(encrypted: bool) -> VarveConfig {
    VarveConfig {
        durability: Durability::Full,
        encryption: encrypted.then(|| EncryptionKey::from_bytes([7; 32])),
        ..VarveConfig::default()
    }
}

fn per_second(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.1} k/s", r / 1e3)
    }
}

/// A small deterministic generator for the point reads.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn main() {
    let f: f64 = std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let events = ((200_000.0 * f) as u64).max(2_000) / 1_000 * 1_000;
    let reads = ((200_000.0 * f) as u64).max(2_000);
    let batches: Vec<Vec<Sample>> = (0..events / 1_000)
        .map(|b| (b * 1_000..(b + 1) * 1_000).map(Sample::new).collect())
        .collect();
    let per_id = events / IDS;

    let only_reencrypt = std::env::var("VARVEDB_BENCH_ONLY").is_ok_and(|v| v == "reencrypt");

    // [plaintext, encrypted]
    let mut w1 = [Duration::MAX; 2];
    let mut w3 = [Duration::MAX; 2];
    let mut w4 = [Duration::MAX; 2];
    let mut w5 = [Duration::MAX; 2];
    let mut w6 = [Duration::MAX; 2];
    let w4_events = per_id;
    for _ in 0..if only_reencrypt { 0 } else { ROUNDS } {
        for (v, encrypted) in [false, true].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let varve = Varve::with_config(dir.path(), config(encrypted)).unwrap();
            let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
            let start = Instant::now();
            for (i, batch) in batches.iter().enumerate() {
                stream
                    .append_batch(StreamId(i as u64 % IDS), batch)
                    .unwrap();
            }
            w1[v] = w1[v].min(start.elapsed());

            // W3: random point reads of one field, validated.
            let mut reader = stream.reader();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let start = Instant::now();
            let mut sum = 0u64;
            for _ in 0..reads {
                let id = next(&mut x) % IDS;
                let seq = next(&mut x) % per_id;
                let e = reader
                    .get_archived(StreamId(id), StreamSequence(seq))
                    .unwrap()
                    .unwrap();
                sum = sum.wrapping_add(e.a.to_native());
            }
            black_box(sum);
            w3[v] = w3[v].min(start.elapsed());

            // W4: every event of one stream id.
            let start = Instant::now();
            let mut n = 0u64;
            for e in reader.iter_stream(StreamId(7), None).unwrap() {
                n += e.unwrap().a.to_native() & 1;
            }
            black_box(n);
            w4[v] = w4[v].min(start.elapsed());

            // W5: the whole log in global order.
            let start = Instant::now();
            let mut n = 0u64;
            for e in varve.global_reader().iter_from(GlobalSequence(0)).unwrap() {
                let e = e.unwrap();
                n = n.wrapping_add(e.archived_plain::<Sample>().unwrap().b.to_native());
            }
            black_box(n);
            w5[v] = w5[v].min(start.elapsed());

            // W6: load each stream id's aggregate.
            let start = Instant::now();
            let mut total = 0u64;
            for id in 0..IDS {
                total = total.wrapping_add(varve.load::<Sum>(StreamId(id)).unwrap().state.0);
            }
            black_box(total);
            w6[v] = w6[v].min(start.elapsed());
        }
    }

    reencrypt(&batches, events);
    if only_reencrypt {
        return;
    }
    println!("\n| workload ({events} events, {IDS} stream ids) | plaintext | encrypted | encrypted / plaintext |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, n: u64, t: &[Duration; 2]| {
        let (p, e) = (per_second(n, t[0]), per_second(n, t[1]));
        println!("| {name} | {} | {} | {:.2} |", rate(p), rate(e), e / p);
    };
    row("W1 batch append, durable (events/s)", events, &w1);
    row(&format!("W3 point reads ({reads}, reads/s)"), reads, &w3);
    row(
        &format!("W4 scan one stream id ({w4_events} events/s)"),
        w4_events,
        &w4,
    );
    row("W5 scan the log (events/s)", events, &w5);
    row(&format!("W6 load {IDS} aggregates (events/s)"), events, &w6);

    entity_keys(f);
}

/// Store keys against per-entity keys (see the module's documentation).
fn entity_keys(f: f64) {
    let entities = ((2_000.0 * f) as u64).max(200);
    let per_entity = 10u64;
    // [store keys, entity keys]
    let mut e1 = [Duration::MAX; 2];
    let mut e2 = [Duration::MAX; 2];
    let mut e3 = [Duration::MAX; 2];
    for _ in 0..ROUNDS {
        for (v, vault) in [false, true].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut config = config(true);
            if vault {
                config = config.key_vault(dir.path().join("vault"));
            }
            let varve = Varve::with_config(dir.path().join("store"), config).unwrap();
            let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
            let start = Instant::now();
            for id in 0..entities {
                stream.append(StreamId(id), &Sample::new(id)).unwrap();
            }
            e1[v] = e1[v].min(start.elapsed());

            let batch: Vec<Sample> = (0..per_entity).map(Sample::new).collect();
            let start = Instant::now();
            for id in 0..entities {
                stream.append_batch(StreamId(id), &batch).unwrap();
            }
            e2[v] = e2[v].min(start.elapsed());

            let start = Instant::now();
            let mut total = 0u64;
            for id in 0..entities {
                total = total.wrapping_add(varve.load::<Sum>(StreamId(id)).unwrap().state.0);
            }
            black_box(total);
            e3[v] = e3[v].min(start.elapsed());
        }
    }
    println!(
        "\n| workload ({entities} entities, encrypted) | store keys | entity keys | entity / store |"
    );
    println!("|---|---:|---:|---:|");
    let row = |name: &str, n: u64, t: &[Duration; 2]| {
        let (p, e) = (per_second(n, t[0]), per_second(n, t[1]));
        println!("| {name} | {} | {} | {:.2} |", rate(p), rate(e), e / p);
    };
    row(
        "E1 first append of an entity, durable (appends/s)",
        entities,
        &e1,
    );
    row(
        &format!("E2 batches of {per_entity} to existing entities, durable (events/s)"),
        entities * per_entity,
        &e2,
    );
    row(
        &format!(
            "E3 load each entity's aggregate ({} events each, events/s)",
            per_entity + 1
        ),
        entities * (per_entity + 1),
        &e3,
    );
}

/// The re-encryption pass over a store of `batches` (sealed with key 1,
/// then rotated to key 2): best of the rounds.
fn reencrypt(batches: &[Vec<Sample>], events: u64) {
    let mut best = Duration::MAX;
    let mut bytes = 0;
    let mut resealed = 0;
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let varve = Varve::with_config(dir.path(), config(true)).unwrap();
        let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
        for (i, batch) in batches.iter().enumerate() {
            stream
                .append_batch(StreamId(i as u64 % IDS), batch)
                .unwrap();
        }
        varve.rotate_data_key().unwrap();
        let start = Instant::now();
        let report = varve.reencrypt().unwrap();
        best = best.min(start.elapsed());
        assert_eq!(report.events, events);
        assert_eq!(report.retired, [1]);
        (bytes, resealed) = (report.bytes, report.blocks);
    }
    println!(
        "\n| re-encryption ({events} events, {resealed} blocks, {:.1} MB) | MB/s | events/s |",
        bytes as f64 / 1e6
    );
    println!("|---|---:|---:|");
    println!(
        "| `reencrypt` after `rotate_data_key`, durable batches (512 blocks or 8 MiB) | {:.1} | {} |",
        bytes as f64 / 1e6 / best.as_secs_f64(),
        rate(per_second(events, best))
    );
}
