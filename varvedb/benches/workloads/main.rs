//! VarveDB against a raw-LMDB baseline, same data, same run; the durable
//! single appends (W2, W2c) also against SQLite.
//!
//! `scripts/bench.sh` runs this and writes `docs/performance.md`. Sizes default to
//! the figures in `docs/performance.md` and shrink with `VARVEDB_BENCH_SCALE`
//! (e.g. `0.01` for a smoke run); every workload runs once per contender per
//! criterion sample.

mod aggregate;
mod alloc;
mod baseline;
mod contender;
mod evolution;
mod report;
mod sqlite;
mod varve;

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};

use baseline::RawHeed;
use contender::{Contender, Sample};
use report::Report;
use sqlite::Sqlite;
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

/// Benchmarks one workload of one contender: criterion runs `once` as many
/// times as it wants; `once` does its own setup and returns the time of the
/// measured part only. Each sample also goes into `report`.
fn workload(
    c: &mut Criterion,
    report: &mut Report,
    (id, title): (&'static str, &str),
    contender: &'static str,
    events: u64,
    mut once: impl FnMut() -> Duration,
) {
    let mut g = c.benchmark_group(format!("{id} {title}"));
    g.throughput(Throughput::Elements(events)).sample_size(10);
    g.bench_function(BenchmarkId::from_parameter(contender), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let took = once();
                    report.sample(id, contender, events, took);
                    took
                })
                .sum()
        })
    });
    g.finish();
}

/// Times `f` once.
fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// The W2c workloads: their ids and writer counts (W2c itself: `threads`).
fn writer_counts(scale: &Scale) -> [(&'static str, u64); 4] {
    [
        ("W2c2", 2),
        ("W2c", scale.threads),
        ("W2c8", 8),
        ("W2c16", 16),
    ]
}

/// W2: single durable appends, one thread; W2c: the same from several threads
/// at once, each appending to a stream id of its own. Adds `C`'s rows, and
/// the appends per commit of an engine that shares commits, to `report`.
fn writes<C: Contender>(c: &mut Criterion, scale: &Scale, report: &mut Report) {
    let name = C::NAME;
    let singles: Vec<Sample> = (0..scale.singles).map(Sample::new).collect();
    let fresh = |writers: u64| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = C::open(dir.path());
        db.prepare_writers(writers as usize);
        (dir, db)
    };

    let mut latencies = Vec::new();
    workload(
        c,
        report,
        ("W2", "single append"),
        name,
        scale.singles,
        || {
            let (_dir, db) = fresh(1);
            timed(|| {
                for (i, event) in (0u64..).zip(&singles) {
                    let t = Instant::now();
                    db.append_one(i % 16, event);
                    latencies.push(t.elapsed());
                }
            })
        },
    );
    latencies.sort_unstable();
    report.latency(
        "W2",
        name,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );

    for (id, writers) in writer_counts(scale) {
        let per_thread = scale.singles / writers;
        let mut shared = (0, 0);
        workload(
            c,
            report,
            (id, &format!("concurrent single append, {writers} writers")),
            name,
            per_thread * writers,
            || {
                let (_dir, db) = fresh(writers);
                let before = db.commit_stats();
                let took = timed(|| {
                    std::thread::scope(|s| {
                        for t in 0..writers {
                            let (db, singles) = (&db, &singles);
                            s.spawn(move || {
                                singles[..per_thread as usize]
                                    .iter()
                                    .for_each(|e| db.append_one(t, e))
                            });
                        }
                    })
                });
                if let (Some(before), Some(after)) = (before, db.commit_stats()) {
                    shared.0 += after.0 - before.0;
                    shared.1 += after.1 - before.1;
                }
                took
            },
        );
        if shared.0 > 0 {
            report.appends_per_commit(id, name, shared.1 as f64 / shared.0 as f64);
        }
    }
}

/// The disk's physical sync rate under the bench's temp dir: an 8-byte
/// write and `fdatasync` of one file, repeated (for 1 s or 5,000 syncs).
fn fsync_rate() -> f64 {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::create(dir.path().join("sync")).expect("create");
    let start = Instant::now();
    let mut syncs = 0u64;
    while syncs < 5_000 && start.elapsed() < Duration::from_secs(1) {
        file.write_all_at(&syncs.to_le_bytes(), 0).expect("write");
        file.sync_data().expect("fdatasync");
        syncs += 1;
    }
    syncs as f64 / start.elapsed().as_secs_f64()
}

/// Runs every workload for contender `C`, adding its rows to `report`.
fn run<C: Contender>(c: &mut Criterion, scale: &Scale, report: &mut Report) {
    let name = C::NAME;
    let batches = w1_batches(scale);
    let fresh = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = C::open(dir.path());
        (dir, db)
    };

    // W1: batch appends into a fresh store.
    workload(
        c,
        report,
        ("W1", "batch append"),
        name,
        scale.events,
        || {
            let (_dir, db) = fresh();
            timed(|| fill(&db, scale, &batches))
        },
    );

    writes::<C>(c, scale, report);

    // Read workloads share one W1 data set per contender.
    let w1 = fixture::<C>(|db| fill(db, scale, &batches));
    report.disk(name, w1.db.disk_bytes() as f64 / scale.events as f64);
    let keys = random_keys(scale, scale.reads);
    let read_all = || {
        keys.iter().fold(0u64, |sum, &(id, seq)| {
            sum.wrapping_add(w1.db.point_read(id, seq))
        })
    };

    workload(c, report, ("W3", "point read"), name, scale.reads, || {
        timed(|| {
            black_box(read_all());
        })
    });
    let mut read_latencies: Vec<Duration> = keys
        .iter()
        .take(20_000)
        .map(|&(id, seq)| {
            timed(|| {
                black_box(w1.db.point_read(id, seq));
            })
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
    workload(
        c,
        report,
        ("W4", "stream scan"),
        name,
        scale.stream_len,
        || {
            timed(|| {
                black_box(w4.db.scan_stream(7));
            })
        },
    );
    let (_, allocs) = alloc::count(|| black_box(w4.db.scan_stream(7)));
    report.allocs("W4", name, allocs as f64 / scale.stream_len as f64);
    workload(
        c,
        report,
        ("W4s", "stream scan, snapshot loop"),
        name,
        scale.stream_len,
        || {
            timed(|| {
                black_box(w4.db.scan_stream_loop(7));
            })
        },
    );
    let (_, allocs) = alloc::count(|| black_box(w4.db.scan_stream_loop(7)));
    report.allocs("W4s", name, allocs as f64 / scale.stream_len as f64);
    drop(w4);

    workload(c, report, ("W5", "global scan"), name, scale.events, || {
        timed(|| {
            black_box(w1.db.scan_global());
        })
    });
    let anon_before = report::rss_anon_kib();
    let (_, allocs) = alloc::count(|| black_box(w1.db.scan_global()));
    report.allocs("W5", name, allocs as f64 / scale.events as f64);
    report.rss(name, report::rss_anon_kib().saturating_sub(anon_before));
    workload(
        c,
        report,
        ("W5s", "global scan, snapshot loop"),
        name,
        scale.events,
        || {
            timed(|| {
                black_box(w1.db.scan_global_loop());
            })
        },
    );
    let (_, allocs) = alloc::count(|| black_box(w1.db.scan_global_loop()));
    report.allocs("W5s", name, allocs as f64 / scale.events as f64);

    let fold_all = || {
        (0..scale.ids).for_each(|id| {
            black_box(w1.db.fold(id));
        })
    };
    workload(
        c,
        report,
        ("W6", "fold every stream"),
        name,
        scale.events,
        || timed(fold_all),
    );
    let (_, allocs) = alloc::count(fold_all);
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
    // W2x: W2c beside a fifth thread executing commands (issue 13).
    aggregate::w2x(&mut criterion, &scale, &mut report);
    run::<RawHeed>(&mut criterion, &scale, &mut report);
    // SQLite only in the durable single-append workloads, where issue 13
    // measures writer scaling against it.
    writes::<Sqlite>(&mut criterion, &scale, &mut report);
    report.fsync_rate(fsync_rate());
    // W7: one aggregate of 1,000,000 events (and one ten times shorter, to show
    // that a snapshot load does not depend on the stream's length).
    for len in [scale.stream_len, scale.stream_len * 10] {
        aggregate::run::<RawHeed>(len, &mut report);
    }
    // W6e: W6's fold over current-version events and over events one
    // version behind (upcast on every read).
    let evolution = evolution::run(scale.events, scale.batch, scale.ids);
    criterion.final_summary();

    let mut table = report.render(VarveDb::NAME, RawHeed::NAME, &format!("{scale:?}"));
    table.push('\n');
    table.push_str(&report.render_writers(
        VarveDb::NAME,
        Sqlite::NAME,
        RawHeed::NAME,
        &writer_counts(&scale),
    ));
    table.push('\n');
    table.push_str(&evolution);
    println!("\n{table}");
    if let Ok(path) = std::env::var("VARVEDB_BENCH_REPORT") {
        std::fs::write(Path::new(&path), &table).expect("write the report");
    }
}
