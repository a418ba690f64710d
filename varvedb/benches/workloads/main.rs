//! VarveDB against a raw-LMDB baseline, same data, same run.
//!
//! `scripts/bench.sh` runs this and writes `docs/performance.md`. Sizes default to
//! the figures in `docs/performance.md` and shrink with `VARVEDB_BENCH_SCALE`
//! (e.g. `0.01` for a smoke run); every workload runs once per contender per
//! criterion sample.

mod aggregate;
mod alloc;
mod baseline;
mod contender;
mod report;
mod varve;

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};

use baseline::RawHeed;
use contender::{Contender, Sample};
use report::Report;
use varve::VarveDb;

/// Workload sizes, scaled by `VARVEDB_BENCH_SCALE`.
#[derive(Clone, Copy, Debug)]
struct Scale {
    events: u64,
    batch: u64,
    ids: u64,
    singles: u64,
    threads: u64,
    reads: u64,
    stream_len: u64,
}

impl Scale {
    fn from_env() -> Scale {
        let f: f64 = std::env::var("VARVEDB_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        let n = |x: f64| ((x * f).round() as u64).max(1);
        Scale {
            events: n(1_000_000.0).max(1_000),
            batch: 1_000,
            ids: (n(1_000_000.0) / 1_000).max(1),
            singles: n(2_000.0).max(40),
            threads: 4,
            reads: n(1_000_000.0),
            stream_len: n(100_000.0).max(1_000),
        }
    }
}

fn batch(scale: &Scale, first: u64) -> Vec<Sample> {
    (first..first + scale.batch).map(Sample::new).collect()
}

/// W1's data set: `events` events in batches of `batch`, over `ids` stream ids.
/// The events are built before timing starts.
fn w1_batches(scale: &Scale) -> Vec<Vec<Sample>> {
    (0..scale.events / scale.batch)
        .map(|b| batch(scale, b * scale.batch))
        .collect()
}

fn fill<C: Contender>(db: &C, scale: &Scale, batches: &[Vec<Sample>]) {
    for (b, events) in batches.iter().enumerate() {
        db.append_batch(b as u64 % scale.ids, events);
    }
}

/// W4's data set: one stream id holding `stream_len` events.
fn fill_one_stream<C: Contender>(db: &C, scale: &Scale) {
    for b in 0..scale.stream_len / scale.batch {
        db.append_batch(7, &batch(scale, b * scale.batch));
    }
}

struct Fixture<C> {
    _dir: tempfile::TempDir,
    db: C,
}

fn fixture<C: Contender>(fill_with: impl Fn(&C)) -> Fixture<C> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = C::open(dir.path());
    fill_with(&db);
    Fixture { _dir: dir, db }
}

/// Deterministic pseudo-random `(id, seq)` pairs inside W1's data set.
fn random_keys(scale: &Scale, n: u64) -> Vec<(u64, u64)> {
    let per_id = scale.events / scale.ids;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 8) % scale.ids, (x >> 40) % per_id)
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs every workload for contender `C`, adding its rows to `report`.
fn run<C: Contender>(c: &mut Criterion, scale: &Scale, report: &mut Report) {
    let name = C::NAME;
    let batches = w1_batches(scale);
    let singles: Vec<Sample> = (0..scale.singles).map(Sample::new).collect();

    // W1: batch appends into a fresh store.
    let mut g = c.benchmark_group("W1 batch append");
    g.throughput(Throughput::Elements(scale.events))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = C::open(dir.path());
                let start = Instant::now();
                fill(&db, scale, &batches);
                let took = start.elapsed();
                total += took;
                report.sample("W1", name, scale.events, took);
            }
            total
        })
    });
    g.finish();

    // W2: single durable appends, one thread; W2c: the same from several threads.
    let mut latencies = Vec::new();
    let mut g = c.benchmark_group("W2 single append");
    g.throughput(Throughput::Elements(scale.singles))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = C::open(dir.path());
                let start = Instant::now();
                for i in 0..scale.singles {
                    let t = Instant::now();
                    db.append_one(i % 16, &singles[i as usize]);
                    latencies.push(t.elapsed());
                }
                let took = start.elapsed();
                total += took;
                report.sample("W2", name, scale.singles, took);
            }
            total
        })
    });
    g.finish();
    latencies.sort_unstable();
    report.latency(
        "W2",
        name,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );

    let mut g = c.benchmark_group("W2c concurrent single append");
    g.throughput(Throughput::Elements(scale.singles))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = C::open(dir.path());
                let per_thread = scale.singles / scale.threads;
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..scale.threads {
                        let (db, singles) = (&db, &singles);
                        s.spawn(move || {
                            for i in 0..per_thread {
                                db.append_one(t, &singles[i as usize]);
                            }
                        });
                    }
                });
                let took = start.elapsed();
                total += took;
                report.sample("W2c", name, per_thread * scale.threads, took);
            }
            total
        })
    });
    g.finish();

    // Read workloads share one W1 data set per contender.
    let w1 = fixture::<C>(|db| fill(db, scale, &batches));
    report.disk(name, w1.db.disk_bytes() as f64 / scale.events as f64);
    let keys = random_keys(scale, scale.reads);

    let mut g = c.benchmark_group("W3 point read");
    g.throughput(Throughput::Elements(scale.reads))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut sum = 0u64;
                for &(id, seq) in &keys {
                    sum = sum.wrapping_add(w1.db.point_read(id, seq));
                }
                black_box(sum);
                let took = start.elapsed();
                total += took;
                report.sample("W3", name, scale.reads, took);
            }
            total
        })
    });
    g.finish();
    let mut read_latencies: Vec<Duration> = keys
        .iter()
        .take(20_000)
        .map(|&(id, seq)| {
            let t = Instant::now();
            black_box(w1.db.point_read(id, seq));
            t.elapsed()
        })
        .collect();
    read_latencies.sort_unstable();
    report.latency(
        "W3",
        name,
        percentile(&read_latencies, 0.5),
        percentile(&read_latencies, 0.99),
    );
    let (_, allocs) = alloc::count(|| {
        for &(id, seq) in keys.iter().take(10_000) {
            black_box(w1.db.point_read(id, seq));
        }
    });
    report.allocs("W3", name, allocs as f64 / 10_000.0);

    let w4 = fixture::<C>(|db| fill_one_stream(db, scale));
    let mut g = c.benchmark_group("W4 stream scan");
    g.throughput(Throughput::Elements(scale.stream_len))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                black_box(w4.db.scan_stream(7));
                let took = start.elapsed();
                total += took;
                report.sample("W4", name, scale.stream_len, took);
            }
            total
        })
    });
    g.finish();
    let (_, allocs) = alloc::count(|| black_box(w4.db.scan_stream(7)));
    report.allocs("W4", name, allocs as f64 / scale.stream_len as f64);
    drop(w4);

    let mut g = c.benchmark_group("W5 global scan");
    g.throughput(Throughput::Elements(scale.events))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                black_box(w1.db.scan_global());
                let took = start.elapsed();
                total += took;
                report.sample("W5", name, scale.events, took);
            }
            total
        })
    });
    g.finish();
    let anon_before = report::rss_anon_kib();
    let (_, allocs) = alloc::count(|| black_box(w1.db.scan_global()));
    report.allocs("W5", name, allocs as f64 / scale.events as f64);
    report.rss(name, report::rss_anon_kib().saturating_sub(anon_before));

    let mut g = c.benchmark_group("W6 fold every stream");
    g.throughput(Throughput::Elements(scale.events))
        .sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for id in 0..scale.ids {
                    black_box(w1.db.fold(id));
                }
                let took = start.elapsed();
                total += took;
                report.sample("W6", name, scale.events, took);
            }
            total
        })
    });
    g.finish();
    let (_, allocs) = alloc::count(|| {
        for id in 0..scale.ids {
            black_box(w1.db.fold(id));
        }
    });
    report.allocs("W6", name, allocs as f64 / scale.events as f64);
}

fn main() {
    let scale = Scale::from_env();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut report = Report::default();
    run::<VarveDb>(&mut criterion, &scale, &mut report);
    run::<RawHeed>(&mut criterion, &scale, &mut report);
    // W7: one aggregate of 1,000,000 events (and one ten times shorter, to show
    // that a snapshot load does not depend on the stream's length).
    for len in [scale.stream_len, scale.stream_len * 10] {
        aggregate::run::<RawHeed>(len, &mut report);
    }
    criterion.final_summary();

    let table = report.render(VarveDb::NAME, RawHeed::NAME, &format!("{scale:?}"));
    println!("\n{table}");
    if let Ok(path) = std::env::var("VARVEDB_BENCH_REPORT") {
        std::fs::write(Path::new(&path), &table).expect("write the report");
    }
}
