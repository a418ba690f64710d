//! W6e: W6's fold (every stream id, the sum of a field) over events of the
//! current version, read in place, against the same fold over events one
//! version behind, upcast on every read. The difference per event is what
//! an unmigrated stream costs its readers (`Varve::migrate` removes it).

use std::hint::black_box;
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use varvedb::{StreamId, Upcast, Varve};

/// The benchmark sample as a first release wrote it.
#[derive(Archive, Serialize, Clone, Debug, varvedb::Event)]
#[event(name = "Sample", stream = "evolve")]
pub struct SampleV1 {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub tag: String,
}

/// The current release: one field more.
#[derive(Archive, Serialize, Clone, Debug, varvedb::Event)]
#[event(name = "Sample", stream = "evolve", version = 2, upcast_from = SampleV1)]
pub struct SampleV2 {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub tag: String,
    pub e: u64,
}

impl Upcast<SampleV1> for SampleV2 {
    fn upcast(old: &ArchivedSampleV1) -> Self {
        SampleV2 {
            a: old.a.to_native(),
            b: old.b.to_native(),
            c: old.c.to_native(),
            d: old.d.to_native(),
            tag: old.tag.as_str().to_owned(),
            e: 0,
        }
    }
}

fn v1(n: u64) -> SampleV1 {
    SampleV1 {
        a: n,
        b: n.wrapping_mul(31),
        c: n ^ 0x5555,
        d: 1,
        tag: format!("sample-{n:08}"),
    }
}

fn fold_all(varve: &Varve, ids: u64) -> u64 {
    let reader = varve.events::<SampleV2>().expect("open").reader();
    (0..ids)
        .map(|id| {
            reader
                .iter_stream(StreamId(id), None)
                .expect("iterate")
                .try_fold_archived(0u64, |sum, _, e| sum.wrapping_add(e.c.to_native()))
                .expect("fold")
        })
        .fold(0u64, u64::wrapping_add)
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[runs / 2]
}

/// Fills two stores with `events` events in batches of `batch` over `ids`
/// stream ids (one written as version 2, one as version 1), folds each
/// every stream id, and returns the report's lines.
pub fn run(events: u64, batch: u64, ids: u64) -> String {
    let current_dir = tempfile::tempdir().expect("tempdir");
    let current = Varve::new(current_dir.path()).expect("open");
    let behind_dir = tempfile::tempdir().expect("tempdir");
    let behind = Varve::new(behind_dir.path()).expect("open");
    {
        let mut new = current.events::<SampleV2>().expect("open");
        let mut old = behind.events::<SampleV1>().expect("open");
        for b in 0..events / batch {
            let olds: Vec<SampleV1> = (b * batch..(b + 1) * batch).map(v1).collect();
            let news: Vec<SampleV2> = olds
                .iter()
                .map(|s| {
                    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(s).expect("archive");
                    let a = rkyv::access::<ArchivedSampleV1, rkyv::rancor::Error>(&archived)
                        .expect("access");
                    SampleV2::upcast(a)
                })
                .collect();
            new.append_batch(StreamId(b % ids), &news).expect("append");
            old.append_batch(StreamId(b % ids), &olds).expect("append");
        }
    }
    assert_eq!(fold_all(&current, ids), fold_all(&behind, ids), "same sums");
    let n = (events / batch * batch) as f64;
    let now = median(11, || {
        black_box(fold_all(&current, ids));
    });
    let old = median(5, || {
        black_box(fold_all(&behind, ids));
    });
    let rate = |d: Duration| n / d.as_secs_f64() / 1e6;
    let per_event = |d: Duration| d.as_secs_f64() * 1e9 / n;
    let mut out = String::new();
    out.push_str("| W6e fold every stream, by event version | M events/s | ns/event |\n");
    out.push_str("|---|---:|---:|\n");
    out.push_str(&format!(
        "| all current (version 2, read in place) | {:.2} | {:.1} |\n",
        rate(now),
        per_event(now)
    ));
    out.push_str(&format!(
        "| all one version behind (version 1, upcast) | {:.2} | {:.1} |\n",
        rate(old),
        per_event(old)
    ));
    out.push_str(&format!(
        "| upcast cost per event | | {:.1} |\n",
        per_event(old) - per_event(now)
    ));
    out
}
