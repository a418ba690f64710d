//! What the `tracing` feature costs the hottest write path: appends of one
//! event each with `Durability::NoSync` (no disk wait to hide the cost),
//! without the feature, with it and no subscriber, with a subscriber that
//! enables only INFO (the commit event is DEBUG: its call site is skipped),
//! and with one that records every event.
//!
//! ```sh
//! cargo bench -p varvedb --bench tracing                     # feature off
//! cargo bench -p varvedb --features tracing --bench tracing  # feature on
//! ```

use std::hint::black_box;

use criterion::Criterion;
use rkyv::{Archive, Serialize};
use varvedb::{Durability, StreamId, Varve, VarveConfig};

#[derive(Archive, Serialize)]
struct Tick {
    n: u64,
    note: [u8; 32],
}

fn bench_appends(c: &mut Criterion, name: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = VarveConfig {
        durability: Durability::NoSync,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).expect("open");
    let mut ticks = varve.stream::<Tick, 64>("ticks").expect("stream");
    let mut n = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            black_box(ticks.append(StreamId(n % 16), &Tick { n, note: [7; 32] })).expect("append");
        })
    });
}

#[cfg(feature = "tracing")]
mod subscribers {
    use tracing::Subscriber;
    use tracing_subscriber::layer::{Context, Layer};

    /// Looks at every event it is given (its name), keeps nothing.
    pub struct Touch;

    impl<S: Subscriber> Layer<S> for Touch {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            std::hint::black_box(event.metadata().name());
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    #[cfg(not(feature = "tracing"))]
    bench_appends(&mut c, "append, feature off");
    #[cfg(feature = "tracing")]
    {
        use tracing_subscriber::filter::LevelFilter;
        use tracing_subscriber::layer::SubscriberExt;

        bench_appends(&mut c, "append, feature on, no subscriber");
        let info = tracing_subscriber::registry()
            .with(LevelFilter::INFO)
            .with(subscribers::Touch);
        tracing::subscriber::with_default(info, || {
            bench_appends(&mut c, "append, subscriber at INFO")
        });
        let all = tracing_subscriber::registry()
            .with(LevelFilter::TRACE)
            .with(subscribers::Touch);
        tracing::subscriber::with_default(all, || {
            bench_appends(&mut c, "append, subscriber at TRACE")
        });
    }
    c.final_summary();
}
