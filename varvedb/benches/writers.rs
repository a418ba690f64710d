//! Writer scaling (issue 13): durable single appends from 1, 2, 4, 8 and 16
//! threads, VarveDB against SQLite (WAL, `synchronous=FULL`) and raw heed,
//! with VarveDB's appends per commit and the disk's physical sync rate; and
//! VarveDB with `Durability::NoMetaSync` (one sync per commit; the last
//! commits may roll back on power loss), to show what LMDB's second sync
//! costs.
//!
//! ```sh
//! cargo bench -p varvedb --bench writers                    # 2,000 appends per run, 7 rounds
//! VARVEDB_BENCH_SCALE=0.25 VARVEDB_BENCH_ROUNDS=5 cargo bench -p varvedb --bench writers
//! ```
//!
//! The same adapters as the `workloads` bench (W2, W2c), but run in
//! interleaved rounds: each round runs every (writers, engine) pair once, in a
//! fresh store, and the table shows the median over rounds. Durable appends are
//! bound by the disk's syncs, which other programs on a shared machine slow
//! down in bursts; interleaving puts every engine through the same bursts, so
//! the ratios hold where single runs of each would not.

// The adapters serve the `workloads` bench too: what only it uses is unused here.
#![allow(dead_code)]

#[path = "workloads/baseline.rs"]
mod baseline;
#[path = "workloads/contender.rs"]
mod contender;
#[path = "workloads/sqlite.rs"]
mod sqlite;
#[path = "workloads/varve.rs"]
mod varve;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baseline::RawHeed;
use contender::{Contender, Sample};
use sqlite::Sqlite;
use varve::VarveDb;

/// VarveDB with `Durability::NoMetaSync`: LMDB syncs the data pages at commit
/// but not the meta page, one sync per commit instead of two. Not a fair
/// contender (a power loss may roll back the last commits, which were
/// acknowledged): it shows what the second sync costs.
struct NoMetaSync(VarveDb);

impl Contender for NoMetaSync {
    const NAME: &'static str = "varvedb NoMetaSync";

    fn open(dir: &std::path::Path) -> Self {
        let config = varvedb::VarveConfig {
            durability: varvedb::Durability::NoMetaSync,
            ..varvedb::VarveConfig::default()
        };
        NoMetaSync(VarveDb::open_with(dir, config))
    }
    fn append_batch(&self, id: u64, events: &[Sample]) {
        self.0.append_batch(id, events)
    }
    fn append_one(&self, id: u64, event: &Sample) {
        self.0.append_one(id, event)
    }
    fn point_read(&self, id: u64, seq: u64) -> u64 {
        self.0.point_read(id, seq)
    }
    fn scan_stream(&self, id: u64) -> u64 {
        self.0.scan_stream(id)
    }
    fn scan_global(&self) -> u64 {
        self.0.scan_global()
    }
    fn disk_bytes(&self) -> u64 {
        self.0.disk_bytes()
    }
}

const WRITERS: [u64; 5] = [1, 2, 4, 8, 16];

/// One run: `writers` threads append `total / writers` events each, one
/// durable transaction per event, to a stream id of their own, in a fresh
/// store. Returns events/s and (commits, appends) if the engine counts them.
fn run<C: Contender>(writers: u64, total: u64, events: &[Sample]) -> (f64, Option<(u64, u64)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = C::open(dir.path());
    db.prepare_writers(writers as usize);
    let per_thread = (total / writers) as usize;
    let before = db.commit_stats();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..writers {
            let (db, events) = (&db, &events[..per_thread]);
            s.spawn(move || events.iter().for_each(|e| db.append_one(t, e)));
        }
    });
    let took = start.elapsed();
    let shared = match (before, db.commit_stats()) {
        (Some(b), Some(a)) => Some((a.0 - b.0, a.1 - b.1)),
        _ => None,
    };
    (
        (per_thread as u64 * writers) as f64 / took.as_secs_f64(),
        shared,
    )
}

/// The disk's physical sync rate under the temp dir: `threads` threads each
/// writing 8 bytes to one shared file and `fdatasync`ing it, repeated for
/// 1 s (or 5,000 syncs per thread). Returns the syncs per second of all
/// threads together: with two threads it shows whether concurrent syncs
/// share the disk's flushes (twice the rate) or wait for each other (the same).
fn fsync_rate(threads: u64) -> f64 {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::File::create(dir.path().join("sync")).expect("create");
    let start = Instant::now();
    let syncs: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let file = &file;
                s.spawn(move || {
                    let mut syncs = 0u64;
                    while syncs < 5_000 && start.elapsed() < Duration::from_secs(1) {
                        file.write_all_at(&syncs.to_le_bytes(), t * 8)
                            .expect("write");
                        file.sync_data().expect("fdatasync");
                        syncs += 1;
                    }
                    syncs
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("syncer")).sum()
    });
    syncs as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn human(rate: f64) -> String {
    if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0} /s")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments name the engines to run
    // (by a part of their name), all of them if none.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let writer_counts: Vec<u64> = std::env::var("VARVEDB_BENCH_WRITERS")
        .ok()
        .map(|s| s.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| WRITERS.to_vec());
    let scale: f64 = std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rounds: usize = std::env::var("VARVEDB_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let total = ((2_000.0 * scale).round() as u64).max(64);
    let events: Vec<Sample> = (0..total).map(Sample::new).collect();

    // Each engine's name and its run (events/s, (commits, appends) if counted).
    type Runner = fn(u64, u64, &[Sample]) -> (f64, Option<(u64, u64)>);
    let engines: [(&str, Runner); 4] = [
        (VarveDb::NAME, run::<VarveDb>),
        (Sqlite::NAME, run::<Sqlite>),
        (RawHeed::NAME, run::<RawHeed>),
        (NoMetaSync::NAME, run::<NoMetaSync>),
    ];
    let names: Vec<&str> = engines.iter().map(|(n, _)| *n).collect();
    // (writers, engine) -> events/s per round; writers -> (commits, appends)
    // of VarveDB (durable).
    let mut rates: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
    let mut shared: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let (mut syncs, mut paired) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        syncs.push(fsync_rate(1));
        paired.push(fsync_rate(2));
        for &writers in &writer_counts {
            for &(name, runner) in engines.iter().filter(|(n, _)| runs(n)) {
                let (rate, stats) = runner(writers, total, &events);
                rates.entry((writers, name)).or_default().push(rate);
                if let (VarveDb::NAME, Some((c, a))) = (name, stats) {
                    let e = shared.entry(writers).or_default();
                    e.0 += c;
                    e.1 += a;
                }
            }
        }
        let line: Vec<String> = writer_counts
            .iter()
            .map(|w| {
                let last: Vec<String> = names
                    .iter()
                    .map(|c| {
                        rates
                            .get(&(*w, *c))
                            .and_then(|r| r.last())
                            .map_or("–".into(), |r| human(*r))
                    })
                    .collect();
                format!("{w}: {}", last.join(" / "))
            })
            .collect();
        eprintln!(
            "round {} of {rounds} (writers: {}; sync {}): {}",
            round + 1,
            names.join(" / "),
            human(*syncs.last().expect("measured")),
            line.join(", ")
        );
    }

    let mut out = String::new();
    let (v, q, h, n) = (VarveDb::NAME, Sqlite::NAME, RawHeed::NAME, NoMetaSync::NAME);
    out.push_str(&format!(
        "| writers | {v} | appends per commit | {q} | {v} / {q} | {h} | {n} |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    ));
    for &writers in &writer_counts {
        let of = |c| rates.get(&(writers, c)).cloned().unwrap_or_default();
        // Median and best of the rounds.
        let shown = |r: Vec<f64>| {
            if r.is_empty() {
                return "–".to_string();
            }
            let best = r.iter().copied().fold(0.0, f64::max);
            format!("{} (best {})", human(median(r)), human(best))
        };
        let per_commit = shared.get(&writers).map_or("–".to_string(), |(c, a)| {
            format!("{:.2}", *a as f64 / (*c).max(1) as f64)
        });
        // The ratio within each round (both engines under the same load):
        // its median and range over the rounds; and the ratio of the bests.
        let (ours, theirs) = (of(v), of(q));
        let ratio = if ours.is_empty() || theirs.is_empty() {
            "–".to_string()
        } else {
            let per_round: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(0.0, f64::max);
            let best = |r: &[f64]| r.iter().copied().fold(0.0, f64::max);
            format!(
                "**{:.2}×** ({lo:.2}–{hi:.2}; bests {:.2}×)",
                median(per_round),
                best(&ours) / best(&theirs)
            )
        };
        out.push_str(&format!(
            "| {writers} | {} | {per_commit} | {} | {ratio} | {} | {} |\n",
            shown(ours.clone()),
            shown(theirs.clone()),
            shown(of(h)),
            shown(of(n)),
        ));
    }
    let best_sync = syncs.iter().copied().fold(0.0, f64::max);
    let fsync = median(syncs.clone());
    let pair_gain = median(paired.iter().zip(&syncs).map(|(p, s)| p / s).collect());
    let paired = median(paired);
    out.push_str(&format!(
        "\nMedians (and bests) of {rounds} interleaved rounds, {total} appends per run; the \
         ratio is the median of each round's ratio (its range; the ratio of the bests). \
         Physical sync rate of the temp dir's disk (8-byte write + `fdatasync`, one thread, \
         once per round): median {} ({:.0} µs per sync), best {}; two threads syncing \
         one file at once: {} together (median of rounds: {:.2}× one thread's).\n",
        human(fsync),
        1e6 / fsync,
        human(best_sync),
        human(paired),
        pair_gain
    ));
    println!("{out}");
    if let Ok(path) = std::env::var("VARVEDB_BENCH_REPORT") {
        std::fs::write(path, &out).expect("write the report");
    }
}
