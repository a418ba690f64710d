//! W7: loading one long aggregate, by full replay and from a snapshot.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Aggregate, Snapshots, StreamId, Varve};

use crate::contender::{ArchivedSample, Contender, Sample};
use crate::report::Report;

/// The sum of `c` over a stream, replayed in full on every load.
#[derive(Default)]
pub struct Replayed {
    sum: u64,
}

/// The same, snapshotted every 1,000 events.
#[derive(Default, Archive, Serialize, Deserialize)]
pub struct Snapshotted {
    sum: u64,
}

impl Aggregate for Replayed {
    type Event = Sample;
    type Command = Sample;
    type Error = Infallible;
    const STREAM: &'static str = "samples";

    fn apply(&mut self, event: &ArchivedSample) {
        self.sum = self.sum.wrapping_add(event.c.to_native());
    }

    fn handle(&self, command: &Sample) -> Result<Vec<Sample>, Infallible> {
        Ok(vec![command.clone()])
    }
}

impl Aggregate for Snapshotted {
    type Event = Sample;
    type Command = Sample;
    type Error = Infallible;
    const STREAM: &'static str = "samples";

    fn apply(&mut self, event: &ArchivedSample) {
        self.sum = self.sum.wrapping_add(event.c.to_native());
    }

    fn handle(&self, command: &Sample) -> Result<Vec<Sample>, Infallible> {
        Ok(vec![command.clone()])
    }

    fn snapshots() -> Snapshots<Self> {
        Snapshots::every(1_000)
    }
}

fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
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

/// Fills one stream id with `len` events in batches of 1,000 (plus one command,
/// which writes the snapshot), then times loads.
pub fn run<C: Contender>(len: u64, report: &mut Report) {
    let batches: Vec<Vec<Sample>> = (0..len / 1_000)
        .map(|b| (b * 1_000..(b + 1) * 1_000).map(Sample::new).collect())
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let base = C::open(dir.path());
    for b in &batches {
        base.append_batch(3, b);
    }
    let baseline = median_time(5, || {
        black_box(base.fold(3));
    });
    drop(base);

    let dir = tempfile::tempdir().expect("tempdir");
    let varve = Varve::new(dir.path()).expect("open");
    let mut stream = varve.stream::<Sample, 128>("samples").expect("stream");
    for b in &batches {
        stream.append_batch(StreamId(3), b).expect("append");
    }
    varve
        .execute::<Snapshotted>(StreamId(3), &Sample::new(0))
        .expect("execute writes a snapshot");
    let replay = median_time(5, || {
        black_box(varve.load::<Replayed>(StreamId(3)).expect("load").state.sum);
    });
    let snap = median_time(101, || {
        let loaded = varve.load::<Snapshotted>(StreamId(3)).expect("load");
        assert!(
            loaded.snapshot.is_some(),
            "the load started from a snapshot"
        );
        black_box(loaded.state.sum);
    });
    report.aggregate_load(len, C::NAME, baseline, replay, snap);
}
