//! A fixed scan workload for counting instructions with callgrind, which
//! (unlike wall-clock timings on a shared machine) gives the same figure on
//! every run. 100,000 events of the workloads' sample type in one stream id
//! (100 blocks of 1,000), and 100,000 more over 1,000 ids of another stream
//! (W6's shape), then `PASSES` scans of the chosen kind (`fold`, `loop`: the
//! one id; `gfold`, `gloop`: the whole log; `many`: a fold of each of the
//! 1,000 ids):
//!
//! ```sh
//! cargo bench -p varvedb --bench scan_instructions --no-run
//! B=$(ls -t target/release/deps/scan_instructions-* | grep -v '\.d$' | head -1)
//! for mode in setup fold loop gfold gloop many; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B $mode 2>&1 | grep Collected
//! done
//! ```
//!
//! Per-scan instructions are `(mode - setup) / PASSES`. Run without
//! arguments (as `cargo bench` does) it runs every mode once and prints the
//! sums, so it stays a working program.

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{GlobalSequence, StreamId, Varve, VarveConfig};

const PASSES: usize = 10;

#[derive(Archive, Serialize, Deserialize, Clone)]
struct Sample {
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    s: String,
}

fn scan(varve: &Varve, mode: &str) -> u64 {
    let reader = varve
        .stream::<Sample, 128>("samples")
        .expect("stream")
        .reader();
    let mut total = 0u64;
    for _ in 0..PASSES {
        total = total.wrapping_add(match mode {
            "fold" => reader
                .iter_stream(StreamId(1), None)
                .expect("iterate")
                .try_fold_archived(0u64, |sum, _, e| sum.wrapping_add(e.b.to_native()))
                .expect("fold"),
            "many" => {
                let reader = varve
                    .stream::<Sample, 128>("many")
                    .expect("stream")
                    .reader();
                (0..1000u64).fold(0u64, |total, id| {
                    total.wrapping_add(
                        reader
                            .iter_stream(StreamId(id), None)
                            .expect("iterate")
                            .try_fold_archived(0u64, |sum, _, e| sum.wrapping_add(e.c.to_native()))
                            .expect("fold"),
                    )
                })
            }
            "loop" => {
                let snap = reader.snapshot().expect("snapshot");
                let mut sum = 0u64;
                for e in snap.iter_stream(StreamId(1), None).expect("iterate") {
                    sum = sum.wrapping_add(e.expect("scan").b.to_native());
                }
                sum
            }
            "gfold" => varve
                .global_reader()
                .iter_from(GlobalSequence(0))
                .expect("iterate")
                .try_fold_entries(0u64, |sum, e| {
                    Ok(sum.wrapping_add(e.archived_plain::<Sample>()?.b.to_native()))
                })
                .expect("fold"),
            "gloop" => {
                let snap = varve.snapshot().expect("snapshot");
                let mut sum = 0u64;
                for e in snap.iter_from(GlobalSequence(0)).expect("iterate") {
                    let e = e.expect("scan");
                    sum =
                        sum.wrapping_add(e.archived_plain::<Sample>().expect("type").b.to_native());
                }
                sum
            }
            _ => 0,
        });
    }
    total
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A small map: valgrind cannot reserve the default one.
    let config = VarveConfig {
        map_size: 256 << 20,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).expect("open");
    let mut stream = varve.stream::<Sample, 128>("samples").expect("stream");
    let batch: Vec<Sample> = (0..1000)
        .map(|i| Sample {
            a: i,
            b: i * 2,
            c: i * 3,
            d: 4,
            s: "hello world".into(),
        })
        .collect();
    for _ in 0..100 {
        stream.append_batch(StreamId(1), &batch).expect("append");
    }
    // W6's shape: 1,000 ids of 100 events, appended a batch at a time.
    let mut many = varve.stream::<Sample, 128>("many").expect("stream");
    for id in 0..1000u64 {
        many.append_batch(StreamId(id), &batch[..100])
            .expect("append");
    }
    // `cargo bench` passes `--bench`: run every mode.
    let modes: Vec<String> = match std::env::args().nth(1) {
        Some(mode) if !mode.starts_with('-') => vec![mode],
        _ => ["fold", "loop", "gfold", "gloop"]
            .map(String::from)
            .to_vec(),
    };
    for mode in modes {
        println!("{mode}: {}", scan(&varve, &mode));
    }
}
