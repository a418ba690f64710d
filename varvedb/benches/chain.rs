//! The cost of the tamper-evident chain per append: W1 (batches of 1,000)
//! and W2 (single appends), each durable (synced at commit, as in the
//! workloads) and unsynced (`Durability::NoSync`, where the hashing is not
//! hidden behind the sync), without a chain, with a plain chain and with a
//! keyed one; then `verify` of the W1 store (which recomputes the chain) and
//! `enable_chain` over it.
//!
//! Runs in interleaved rounds (the machine is shared: a slow moment hits
//! one round of every variant), best of the rounds.
//!
//! `cargo bench -p varvedb --bench chain` prints a table for
//! `docs/performance.md`; `VARVEDB_BENCH_SCALE=0.1` shrinks it.

#[path = "workloads/contender.rs"]
#[allow(dead_code)]
mod contender;

use std::time::{Duration, Instant};

use varvedb::{Chain, Durability, StreamId, Varve, VarveConfig};

use contender::Sample;

const ROUNDS: usize = 5;

fn config(chain: Option<Chain>, durability: Durability) -> VarveConfig {
    VarveConfig {
        durability,
        tamper_evident: chain,
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

fn main() {
    let f: f64 = std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let events = ((200_000.0 * f) as u64).max(2_000) / 1_000 * 1_000;
    let singles = ((1_000.0 * f) as u64).max(50);
    let batches: Vec<Vec<Sample>> = (0..events / 1_000)
        .map(|b| (b * 1_000..(b + 1) * 1_000).map(Sample::new).collect())
        .collect();
    let singles_data: Vec<Sample> = (0..singles * 10).map(Sample::new).collect();

    let chains = [
        ("no chain", None),
        ("plain chain", Some(Chain::Plain)),
        ("keyed chain", Some(Chain::Keyed([7; 32]))),
    ];
    let durabilities = [
        ("durable", Durability::Full),
        ("unsynced", Durability::NoSync),
    ];
    // [durability][chain]
    let mut w1 = [[Duration::MAX; 3]; 2];
    let mut w2 = [[Duration::MAX; 3]; 2];
    let mut verify = [Duration::MAX; 3];
    let mut enable = Duration::MAX;
    for _ in 0..ROUNDS {
        for (d, (_, durability)) in durabilities.iter().enumerate() {
            for (k, (_, chain)) in chains.iter().enumerate() {
                let dir = tempfile::tempdir().unwrap();
                let varve = Varve::with_config(dir.path(), config(*chain, *durability)).unwrap();
                let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
                let start = Instant::now();
                for (i, batch) in batches.iter().enumerate() {
                    stream
                        .append_batch(StreamId(i as u64 % 100), batch)
                        .unwrap();
                }
                w1[d][k] = w1[d][k].min(start.elapsed());
                if d == 1 {
                    let start = Instant::now();
                    let report = varve.verify().unwrap();
                    verify[k] = verify[k].min(start.elapsed());
                    assert!(report.is_ok());
                    if chain.is_none() {
                        let start = Instant::now();
                        varve.enable_chain(Chain::Plain).unwrap();
                        enable = enable.min(start.elapsed());
                    }
                }
                drop((stream, varve));

                // Unsynced singles are cheap: ten times as many.
                let n = if d == 0 { singles } else { singles * 10 };
                let dir = tempfile::tempdir().unwrap();
                let varve = Varve::with_config(dir.path(), config(*chain, *durability)).unwrap();
                let mut stream = varve.stream::<Sample, 128>("samples").unwrap();
                let start = Instant::now();
                for (i, e) in singles_data[..n as usize].iter().enumerate() {
                    stream.append(StreamId(i as u64 % 16), e).unwrap();
                }
                w2[d][k] = w2[d][k].min(start.elapsed());
            }
        }
    }

    println!(
        "\n| workload ({events} events in batches of 1,000; {singles} durable / {} unsynced single appends) | no chain | plain chain | keyed chain |",
        singles * 10
    );
    println!("|---|---:|---:|---:|");
    for (d, (name, _)) in durabilities.iter().enumerate() {
        let n = if d == 0 { singles } else { singles * 10 };
        let cells: Vec<String> = (0..3).map(|k| rate(per_second(events, w1[d][k]))).collect();
        println!("| W1 batch append, {name} | {} |", cells.join(" | "));
        let cells: Vec<String> = (0..3).map(|k| rate(per_second(n, w2[d][k]))).collect();
        println!("| W2 single append, {name} | {} |", cells.join(" | "));
    }
    for (d, (name, _)) in durabilities.iter().enumerate() {
        let n = if d == 0 { singles } else { singles * 10 };
        let cost = |k: usize, took: &[[Duration; 3]; 2], count: u64| {
            let base = took[d][0].as_secs_f64() / count as f64;
            let with = took[d][k].as_secs_f64() / count as f64;
            format!("{:+.2} µs", (with - base) * 1e6)
        };
        println!(
            "| chain cost per append, W1 (per event), {name} | - | {} | {} |",
            cost(1, &w1, events),
            cost(2, &w1, events)
        );
        println!(
            "| chain cost per append, W2 (per event), {name} | - | {} | {} |",
            cost(1, &w2, n),
            cost(2, &w2, n)
        );
    }
    let cells: Vec<String> = (0..3)
        .map(|k| rate(per_second(events, verify[k])))
        .collect();
    println!(
        "| verify of the W1 store (events/s) | {} |",
        cells.join(" | ")
    );
    println!(
        "| enable_chain(Plain) over the W1 store (events/s) | - | {} | - |",
        rate(per_second(events, enable))
    );
}
