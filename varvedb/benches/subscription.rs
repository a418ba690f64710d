//! Subscriptions and projections: how soon a waiting subscriber sees a commit
//! (p50 and p99, timed by hand and printed), and how fast a subscription or a
//! projection catches up on history (criterion, events per second).
//!
//! ```sh
//! cargo bench -p varvedb --features async --bench subscription
//! ```
//! Sizes shrink or grow with `VARVEDB_BENCH_SCALE` (default 1: 100 000
//! events of history, 2 000 latency samples).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rkyv::{Archive, Serialize};
use varvedb::{
    Durability, GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel, StreamId, Varve,
    VarveConfig,
};

#[derive(Archive, Serialize)]
struct Tick {
    n: u64,
    note: [u8; 32],
}

fn tick(n: u64) -> Tick {
    Tick { n, note: [7; 32] }
}

fn scale() -> f64 {
    std::env::var("VARVEDB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn open(durability: Durability) -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = VarveConfig {
        durability,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).expect("open");
    (dir, varve)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<48} p50 {:>9.1?}  p99 {:>9.1?}  ({} samples)",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.len()
    );
}

/// Wakes the thread that blocks in `block_on`.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: enough to time the async stream's wake-ups without a runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Appends one event at a time; a subscriber waiting on another thread
/// timestamps each arrival. Latency: from just before `append` to arrival
/// (so it includes the commit itself; the append alone is printed beside).
fn commit_to_subscriber(label: &str, durability: Durability, samples: usize, asynchronous: bool) {
    let (_dir, varve) = open(durability);
    let mut ticks = varve.stream::<Tick, 128>("ticks").expect("open");
    let (arrived_tx, arrived_rx) = mpsc::channel::<Instant>();
    let subscription = varve.subscribe(GlobalSequence(0));
    let subscriber = thread::spawn(move || {
        if asynchronous {
            let mut events = subscription.into_async();
            block_on(std::future::poll_fn(|cx| loop {
                match futures_core::Stream::poll_next(std::pin::Pin::new(&mut events), cx) {
                    Poll::Ready(Some(event)) => {
                        drop(event.expect("readable"));
                        if arrived_tx.send(Instant::now()).is_err() {
                            return Poll::Ready(());
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }));
        } else {
            for event in subscription {
                drop(event.expect("readable"));
                if arrived_tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        }
    });
    let mut latencies = Vec::with_capacity(samples);
    let mut appends = Vec::with_capacity(samples);
    for n in 0..samples as u64 {
        // Let the subscriber go back to waiting.
        thread::sleep(Duration::from_micros(200));
        let start = Instant::now();
        ticks.append(StreamId(1), &tick(n)).expect("append");
        appends.push(start.elapsed());
        let arrived = arrived_rx.recv().expect("the subscriber runs");
        latencies.push(arrived.saturating_duration_since(start));
    }
    drop(arrived_rx);
    // One more commit wakes the subscriber to find the channel closed.
    ticks.append(StreamId(1), &tick(u64::MAX)).expect("append");
    subscriber.join().expect("subscriber");
    summary(
        &format!("latency: {label}, append -> subscriber"),
        latencies,
    );
    summary(&format!("latency: {label}, append alone"), appends);
}

/// Units per event, in the model.
struct Count;

impl Projection for Count {
    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let n = event.archived_plain::<Tick>()?.n.to_native();
        let total = model.get_u64(b"sum")?.unwrap_or(0);
        model.put_u64(b"sum", total.wrapping_add(n))?;
        Ok(())
    }
}

fn history(events: u64) -> (tempfile::TempDir, Varve) {
    let (dir, varve) = open(Durability::NoSync);
    let mut ticks = varve.stream::<Tick, 128>("ticks").expect("open");
    let batch: Vec<Tick> = (0..1_000).map(tick).collect();
    for id in 0..events.div_ceil(1_000) {
        ticks
            .append_batch(StreamId(id % 16), &batch)
            .expect("append");
    }
    (dir, varve)
}

fn catch_up(c: &mut Criterion, events: u64) {
    let (_dir, varve) = history(events);
    let events = varve.global_reader().end().expect("end").0;
    let mut group = c.benchmark_group("catch_up");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("global_iter (baseline)", |b| {
        b.iter(|| {
            let log = varve.global_reader();
            let n = log
                .iter_from(GlobalSequence(0))
                .expect("iter")
                .fold(0u64, |n, e| {
                    black_box(e.expect("readable").payload().len());
                    n + 1
                });
            assert_eq!(n, events);
        })
    });
    group.bench_function("subscription", |b| {
        b.iter(|| {
            let mut subscription = varve.subscribe(GlobalSequence(0));
            let mut n = 0;
            while let Some(e) = subscription.try_next().expect("readable") {
                black_box(e.payload().len());
                n += 1;
            }
            assert_eq!(n, events);
        })
    });
    group.bench_function("async subscription", |b| {
        b.iter(|| {
            let mut stream = varve.subscribe(GlobalSequence(0)).into_async();
            let stop = stream.stop_handle();
            let done = AtomicBool::new(false);
            let mut n = 0u64;
            let n = block_on(std::future::poll_fn(|cx| {
                loop {
                    match futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx) {
                        Poll::Ready(Some(e)) => {
                            black_box(e.expect("readable").payload().len());
                            n += 1;
                            if n == events && !done.swap(true, Ordering::Relaxed) {
                                stop.stop();
                            }
                        }
                        Poll::Ready(None) => return Poll::Ready(n),
                        // A yield between pages: poll again at once.
                        Poll::Pending if !done.load(Ordering::Relaxed) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }));
            assert_eq!(n, events);
        })
    });
    group.bench_function("projection rebuild (batches of 4096)", |b| {
        let mut projector = varve
            .projector("count", Count)
            .expect("name")
            .batch_size(4096);
        b.iter(|| {
            assert_eq!(projector.rebuild().expect("rebuilds").0, events);
        })
    });
    group.finish();
}

fn main() {
    let f = scale();
    let samples = ((2_000.0 * f) as usize).max(50);
    let events = ((100_000.0 * f) as u64).max(1_000);

    println!("commit-to-subscriber latency (same process)");
    commit_to_subscriber("blocking, NoSync", Durability::NoSync, samples, false);
    commit_to_subscriber("async, NoSync", Durability::NoSync, samples, true);
    commit_to_subscriber(
        "blocking, Full (fsync)",
        Durability::Full,
        samples / 4,
        false,
    );
    println!();

    let mut c = Criterion::default().configure_from_args();
    catch_up(&mut c, events);
    c.final_summary();
}
