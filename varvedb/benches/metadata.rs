//! The cost of event metadata and idempotency, beside the raw-heed baseline:
//! W1 (durable batches of 1,000) and W2 (durable single appends) without
//! metadata, with event ids, and with the full context (ids, correlation,
//! causation); the idempotency lookup on append (a retry answered from the
//! index); and a point read of an event by its id.
//!
//! The write workloads run in interleaved rounds, best of 10; the retry and
//! the reads through criterion.
//!
//! `cargo bench -p varvedb --bench metadata` prints a table for
//! `docs/performance.md`; `VARVEDB_BENCH_SCALE=0.1` shrinks it.

#[path = "workloads/baseline.rs"]
#[allow(dead_code)]
mod baseline;
#[path = "workloads/contender.rs"]
#[allow(dead_code)]
mod contender;

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use varvedb::{Append, Context, CorrelationId, EventId, GlobalSequence, Stream, StreamId, Varve};

use baseline::RawHeed;
use contender::{Contender, Sample};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Meta {
    None,
    Ids,
    Full,
}

fn context() -> Context {
    Context::new()
        .correlation(CorrelationId::from_u128(0x00c0_ffee))
        .causation(EventId::from_u128(0xca05e))
}

/// A time-ordered id (like a UUIDv7): the counter in the high bits.
fn event_id(n: u64) -> EventId {
    EventId::from_u128((u128::from(n) << 64) | 0x7000_8000_0000_0000)
}

fn append_batch(
    stream: &mut Stream<Sample, 128>,
    id: u64,
    events: &[Sample],
    first: u64,
    meta: Meta,
) {
    let ids: Vec<EventId> = (first..first + events.len() as u64).map(event_id).collect();
    let ctx = context();
    let options = match meta {
        Meta::None => Append::new(),
        Meta::Ids => Append::new().event_ids(&ids),
        Meta::Full => Append::new().event_ids(&ids).context(&ctx),
    };
    stream
        .append_batch_with(StreamId(id), events, options)
        .expect("append");
}

fn data_file_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("data.mdb")).map_or(0, |m| m.len())
}

struct Row {
    what: String,
    rate: f64,
    bytes_per_event: Option<f64>,
}

fn per_second(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn main() {
    let f: f64 = std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let events = ((200_000.0 * f) as u64).max(2_000) / 1_000 * 1_000;
    let singles = ((1_000.0 * f) as u64).max(50);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut rows: Vec<Row> = Vec::new();
    let batches: Vec<Vec<Sample>> = (0..events / 1_000)
        .map(|b| (b * 1_000..(b + 1) * 1_000).map(Sample::new).collect())
        .collect();
    let singles_data: Vec<Sample> = (0..singles).map(Sample::new).collect();

    // W1m / W2m: the three kinds of metadata and the raw-heed baseline, run
    // in interleaved rounds (the machine is shared: a slow moment then hits
    // one round of every contender, not every run of one), best of the rounds.
    const ROUNDS: usize = 10;
    let metas = [Meta::None, Meta::Ids, Meta::Full];
    let mut w1 = [Duration::MAX; 4];
    let mut w2 = [Duration::MAX; 4];
    let mut bytes = [0.0f64; 4];
    for _ in 0..ROUNDS {
        for (k, meta) in metas.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let varve = Varve::new(dir.path()).unwrap();
            let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
            let start = Instant::now();
            for (i, batch) in batches.iter().enumerate() {
                append_batch(&mut stream, i as u64 % 100, batch, i as u64 * 1_000, *meta);
            }
            w1[k] = w1[k].min(start.elapsed());
            drop((stream, varve));
            bytes[k] = data_file_bytes(dir.path()) as f64 / events as f64;

            let dir = tempfile::tempdir().unwrap();
            let varve = Varve::new(dir.path()).unwrap();
            let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
            let start = Instant::now();
            for (i, e) in singles_data.iter().enumerate() {
                append_batch(
                    &mut stream,
                    i as u64 % 16,
                    std::slice::from_ref(e),
                    i as u64,
                    *meta,
                );
            }
            w2[k] = w2[k].min(start.elapsed());
        }
        let dir = tempfile::tempdir().unwrap();
        let db = RawHeed::open(dir.path());
        let start = Instant::now();
        for (i, batch) in batches.iter().enumerate() {
            db.append_batch(i as u64 % 100, batch);
        }
        w1[3] = w1[3].min(start.elapsed());
        bytes[3] = db.disk_bytes() as f64 / events as f64;
        let dir = tempfile::tempdir().unwrap();
        let db = RawHeed::open(dir.path());
        let start = Instant::now();
        for (i, e) in singles_data.iter().enumerate() {
            db.append_one(i as u64 % 16, e);
        }
        w2[3] = w2[3].min(start.elapsed());
    }
    let names = ["no metadata", "event ids", "full context", "raw heed"];
    for k in 0..4 {
        rows.push(Row {
            what: format!("W1 batch append, {}", names[k]),
            rate: per_second(events, w1[k]),
            bytes_per_event: Some(bytes[k]),
        });
    }
    for k in 0..4 {
        rows.push(Row {
            what: format!("W2 single append, {}", names[k]),
            rate: per_second(singles, w2[k]),
            bytes_per_event: None,
        });
    }

    // A store of W1's events with ids, for retries and reads by id.
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
    for (i, batch) in batches.iter().enumerate() {
        append_batch(
            &mut stream,
            i as u64 % 100,
            batch,
            i as u64 * 1_000,
            Meta::Ids,
        );
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let picks: Vec<u64> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % events
        })
        .collect();

    // An idempotent retry: the lookup of the ids and the original positions,
    // no write (single events; one group commit each).
    let retries = singles.min(events);
    let mut best = Duration::MAX;
    let mut g = c.benchmark_group("idempotent retry");
    g.throughput(Throughput::Elements(retries)).sample_size(10);
    g.bench_function("single event", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    for &n in &picks[..retries as usize] {
                        let batch = n / 1_000;
                        let r = stream
                            .append_with(
                                StreamId(batch % 100),
                                &Sample::new(n),
                                Append::new().event_id(event_id(n)),
                            )
                            .unwrap();
                        assert!(r.is_idempotent());
                    }
                    let took = start.elapsed();
                    best = best.min(took);
                    took
                })
                .sum()
        })
    });
    g.finish();
    rows.push(Row {
        what: "idempotent retry of a single append (lookup, no write)".into(),
        rate: per_second(retries, best),
        bytes_per_event: None,
    });

    // Point reads: by global sequence, and by event id.
    let mut log = varve.global_reader();
    for (name, by_id) in [
        ("point read by global sequence", false),
        ("point read by event id", true),
    ] {
        let mut best = Duration::MAX;
        let mut g = c.benchmark_group("point read");
        g.throughput(Throughput::Elements(picks.len() as u64))
            .sample_size(10);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let start = Instant::now();
                        for &n in &picks {
                            let e = if by_id {
                                log.get_by_id(event_id(n)).unwrap()
                            } else {
                                log.get(GlobalSequence(n)).unwrap()
                            };
                            black_box(e.expect("present").payload().len());
                        }
                        let took = start.elapsed();
                        best = best.min(took);
                        took
                    })
                    .sum()
            })
        });
        g.finish();
        rows.push(Row {
            what: name.into(),
            rate: per_second(picks.len() as u64, best),
            bytes_per_event: None,
        });
    }
    c.final_summary();

    println!("\n| workload ({events} events in batches of 1,000; {singles} single appends) | rate (best of 10) | data file bytes per event |");
    println!("|---|---:|---:|");
    for row in rows {
        let rate = if row.rate >= 1e6 {
            format!("{:.2} M/s", row.rate / 1e6)
        } else {
            format!("{:.1} k/s", row.rate / 1e3)
        };
        let bytes = row
            .bytes_per_event
            .map_or(String::new(), |b| format!("{b:.1}"));
        println!("| {} | {rate} | {bytes} |", row.what);
    }
}
