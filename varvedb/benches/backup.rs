//! Backup, export and restore rates, and what a backup costs concurrent
//! appends. Not criterion: each figure is one timed run of a whole operation
//! on a store of `1_000_000 × VARVEDB_BENCH_SCALE` events (default scale 1),
//! printed as a table for docs/performance.md.
//!
//! ```sh
//! cargo bench -p varvedb --bench backup
//! VARVEDB_BENCH_SCALE=0.1 cargo bench -p varvedb --bench backup
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use varvedb::{Durability, GlobalSequence, StreamId, Varve, VarveConfig};

#[derive(Archive, Serialize)]
struct Payment {
    account: u64,
    cents: u64,
    at: u64,
    batch: u64,
    memo: String,
}

fn payment(n: u64) -> Payment {
    Payment {
        account: n % 1000,
        cents: n * 7,
        at: n,
        batch: n / 100,
        memo: format!("payment {n}"),
    }
}

fn fill(varve: &Varve, events: u64) {
    let mut s = varve.stream::<Payment, 128>("payments").unwrap();
    let mut n = 0;
    while n < events {
        let batch: Vec<Payment> = (n..(n + 1000).min(events)).map(payment).collect();
        s.append_batch(StreamId(n / 1000 % 100), &batch).unwrap();
        n += batch.len() as u64;
    }
}

/// Appends of one event each (durable) from one thread until `stop`;
/// returns appends per second over the time it ran.
fn appender(
    varve: Varve,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut s = varve.stream::<Payment, 128>("live").unwrap();
        let started = Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            s.append(StreamId(n % 10), &payment(n)).unwrap();
            n += 1;
            count.store(n, Ordering::Relaxed);
        }
        n as f64 / started.elapsed().as_secs_f64()
    })
}

fn append_rate_during(varve: &Varve, work: impl FnOnce()) -> (f64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let thread = appender(varve.clone(), Arc::clone(&stop), Arc::clone(&count));
    let started = Instant::now();
    work();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    (thread.join().unwrap(), took)
}

fn mb(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: f64 = std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let events = ((1_000_000.0 * scale) as u64).max(1000);
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        durability: Durability::Full,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path().join("store"), config).unwrap();
    fill(&varve, events);
    let data = std::fs::metadata(dir.path().join("store/data.mdb"))
        .unwrap()
        .len();

    // The first backup reads a cold cache; the timed one below a warm one.
    let report = varve.backup(dir.path().join("warm")).unwrap();
    let backup = varve.backup(dir.path().join("full")).unwrap();
    // Durable single appends for a fixed window, alone and while backups run
    // back to back.
    let window = Duration::from_secs(3);
    let (alone, _) = append_rate_during(&varve, || std::thread::sleep(window));
    let mut backups = 0u32;
    let (during, _) = append_rate_during(&varve, || {
        let started = Instant::now();
        while started.elapsed() < window {
            let dest = dir.path().join(format!("loop-{backups}"));
            varve.backup(&dest).unwrap();
            std::fs::remove_dir_all(&dest).unwrap();
            backups += 1;
        }
    });
    let (after, _) = append_rate_during(&varve, || std::thread::sleep(window));

    fill_more(&varve, events / 10);
    let started = Instant::now();
    let export = varve
        .export_after(dir.path().join("full"), dir.path().join("1.seg"))
        .unwrap();
    let export_time = started.elapsed();
    let started = Instant::now();
    let restore = Varve::restore(
        dir.path().join("full"),
        [dir.path().join("1.seg")],
        dir.path().join("restored"),
        None,
    )
    .unwrap();
    let restore_time = started.elapsed();
    let started = Instant::now();
    let rebuilt = Varve::restore(
        dir.path().join("full"),
        Vec::<&Path>::new(),
        dir.path().join("rebuilt"),
        Some(GlobalSequence(backup.end().0 - 1)),
    )
    .unwrap();
    let rebuild_time = started.elapsed();
    assert!(rebuilt.rebuilt);

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| store | {} events, data.mdb {:.1} MB |",
        events,
        data as f64 / 1e6
    );
    println!(
        "| full backup (copy + hash + verify) | {:.2?}, {:.0} MB/s of copy ({:.1} MB compacted) |",
        backup.duration,
        mb(backup.bytes, backup.copy_duration),
        backup.bytes as f64 / 1e6
    );
    println!(
        "| first backup (cold cache) | {:.2?} ({} events) |",
        report.duration,
        report.events()
    );
    println!("| durable single appends over {window:?}: alone / while {backups} backups ran back to back / alone again | {alone:.0}/s / {during:.0}/s / {after:.0}/s |"
    );
    println!(
        "| export of {} events ({:.1} MB) | {:.2?}, {:.0} events/s |",
        export.events(),
        export.bytes as f64 / 1e6,
        export_time,
        export.events() as f64 / export_time.as_secs_f64()
    );
    println!(
        "| restore: backup + segment ({} blocks applied) | {:.2?} |",
        restore.blocks_applied, restore_time
    );
    println!(
        "| restore rebuilt block by block ({} events) | {:.2?}, {:.0} events/s |",
        rebuilt.events,
        rebuild_time,
        rebuilt.events as f64 / rebuild_time.as_secs_f64()
    );
}

fn fill_more(varve: &Varve, events: u64) {
    let mut s = varve.stream::<Payment, 128>("later").unwrap();
    let mut n = 0;
    while n < events {
        let batch: Vec<Payment> = (n..(n + 100).min(events)).map(payment).collect();
        s.append_batch(StreamId(n % 7), &batch).unwrap();
        n += batch.len() as u64;
    }
}
