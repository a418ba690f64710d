//! W7: loading one long aggregate, by full replay and from a snapshot.
//! W2x: W2c's writers while a fifth thread executes commands on one long
//! aggregate.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Aggregate, Snapshots, StreamId, Varve};

use crate::contender::{ArchivedSample, Contender, Sample};
use crate::report::Report;
use crate::varve::VarveDb;
use crate::Scale;

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

/// The aggregate W2x's fifth thread executes commands on: 100,000 events,
/// whatever the scale (the figure), and no snapshot.
pub const W2X_AGGREGATE_LEN: u64 = 100_000;

/// Its stream id.
const W2X_ID: StreamId = StreamId(3);

/// [`Replayed`] in a stream of its own: the writers' plain `Sample` stream
/// is bound by type name, the aggregate's by the derived event.
#[derive(Default)]
pub struct Commanded {
    sum: u64,
}

impl Aggregate for Commanded {
    type Event = Sample;
    type Command = Sample;
    type Error = Infallible;
    const STREAM: &'static str = "commands";

    fn apply(&mut self, event: &ArchivedSample) {
        self.sum = self.sum.wrapping_add(event.c.to_native());
    }

    fn handle(&self, command: &Sample) -> Result<Vec<Sample>, Infallible> {
        Ok(vec![command.clone()])
    }
}

/// W2c's writers: `threads` threads each appending `per_thread` single
/// events durably, to their own stream id.
fn writers(db: &VarveDb, scale: &Scale, singles: &[Sample]) {
    let per_thread = (scale.singles / scale.threads) as usize;
    std::thread::scope(|s| {
        for t in 0..scale.threads {
            s.spawn(move || {
                singles[..per_thread]
                    .iter()
                    .for_each(|e| db.append_one(t, e))
            });
        }
    });
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What W2x's fifth thread does while the writers run.
#[derive(Clone, Copy)]
enum Fifth {
    /// Executes commands on the aggregate (the workload).
    Executes,
    /// Loads the aggregate, then appends one event to it with a plain
    /// append: a command's work written by hand, without `execute`.
    LoadsThenAppends,
    /// Loads the aggregate, writing nothing: the fold's share of the cost.
    Loads,
    /// Spins on the CPU, touching no store: the CPU's share.
    Spins,
}

/// Times `f`, and counts the commits the store made meanwhile.
fn counted(db: &VarveDb, f: impl FnOnce()) -> (Duration, u64) {
    let before = db.varve().last_commit_id();
    let took = crate::timed(f);
    (took, db.varve().last_commit_id() - before)
}

/// Runs W2c's writers while a fifth thread does `fifth`; returns their time,
/// the commits made meanwhile, and how many rounds the fifth thread did in
/// how long.
fn writers_beside(
    db: &VarveDb,
    scale: &Scale,
    singles: &[Sample],
    fifth: Fifth,
) -> (Duration, u64, u64, Duration) {
    let (stop, rounds) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut plain = db
                .varve()
                .events_in::<Sample>(Commanded::STREAM)
                .expect("stream");
            let start = Instant::now();
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match fifth {
                    Fifth::Executes => {
                        db.varve()
                            .execute::<Commanded>(W2X_ID, &Sample::new(0))
                            .expect("execute");
                    }
                    Fifth::LoadsThenAppends => {
                        black_box(db.varve().load::<Commanded>(W2X_ID).expect("load"));
                        plain.append(W2X_ID, &Sample::new(0)).expect("append");
                    }
                    Fifth::Loads => {
                        black_box(db.varve().load::<Commanded>(W2X_ID).expect("load"));
                    }
                    Fifth::Spins => {
                        for i in 0..1_000_000u64 {
                            x = black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                    }
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            start.elapsed()
        });
        // Stops the fifth thread however this scope ends (a panicking
        // writer included): the scope waits for it.
        let _stop = StopOnDrop(&stop);
        // Its first round is under way before timing starts.
        while rounds.load(Ordering::Relaxed) == 0 && !other.is_finished() {
            std::thread::yield_now();
        }
        let (took, commits) = counted(db, || writers(db, scale, singles));
        stop.store(true, Ordering::Relaxed);
        let busy = other.join().expect("fifth thread");
        (took, commits, rounds.load(Ordering::Relaxed), busy)
    })
}

/// W2x: W2c's writers alone (`W2x0`), then with a fifth thread executing
/// commands on one aggregate of [`W2X_AGGREGATE_LEN`] events without a
/// snapshot (`W2x`), back to back in each sample, on one store; and, to
/// tell the costs apart, with the fifth thread loading the aggregate then
/// appending to it by hand (`W2xp`), only loading it (`W2xl`), or only
/// spinning on the CPU (`W2xs`). Criterion reports `W2x`; the report has
/// them all, with the commits each run made.
pub fn w2x(c: &mut Criterion, scale: &Scale, report: &mut Report) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = VarveDb::open(dir.path());
    let mut commands = db
        .varve()
        .events_in::<Sample>(Commanded::STREAM)
        .expect("stream");
    for b in 0..W2X_AGGREGATE_LEN / 1_000 {
        let batch: Vec<Sample> = (b * 1_000..(b + 1) * 1_000).map(Sample::new).collect();
        commands.append_batch(W2X_ID, &batch).expect("append");
    }
    let singles: Vec<Sample> = (0..scale.singles).map(Sample::new).collect();
    let events = scale.singles / scale.threads * scale.threads;
    // The variants of one sample run back to back, in an order that turns
    // from sample to sample: a disk or CPU shared with other work slows
    // them alike, not always the same one.
    let variants = [
        None,
        Some(Fifth::Executes),
        Some(Fifth::LoadsThenAppends),
        Some(Fifth::Loads),
        Some(Fifth::Spins),
    ];
    let mut turn = 0;
    let mut once = || {
        let mut with = Duration::ZERO;
        for k in 0..variants.len() {
            let fifth = variants[(turn + k) % variants.len()];
            let (id, took, commits) = match fifth {
                None => {
                    let (took, commits) = counted(&db, || writers(&db, scale, &singles));
                    ("W2x0", took, commits)
                }
                Some(fifth) => {
                    let (took, commits, n, busy) = writers_beside(&db, scale, &singles, fifth);
                    match fifth {
                        Fifth::Executes => {
                            report.commands(n, busy);
                            with = took;
                            ("W2x", took, commits)
                        }
                        Fifth::LoadsThenAppends => ("W2xp", took, commits),
                        Fifth::Loads => ("W2xl", took, commits),
                        Fifth::Spins => ("W2xs", took, commits),
                    }
                }
            };
            report.sample(id, VarveDb::NAME, events, took);
            report.commits(id, commits);
        }
        turn += 1;
        with
    };
    crate::workload(
        c,
        &mut Report::default(),
        (
            "W2x",
            "4 writers beside a fifth thread executing on a 100,000-event aggregate",
        ),
        VarveDb::NAME,
        events,
        &mut once,
    );
}
