//! A process running an in-store projection can be killed at any moment:
//! after a restart, the read model equals a rebuild from scratch (each event
//! applied exactly once, none lost), because the model and its checkpoint
//! commit in one transaction.
//!
//! Each cycle re-executes this test binary with `VARVEDB_PROJECTION_CRASH_CHILD`
//! set: the child appends orders on one thread and runs the projection on
//! another (sometimes rebuilding it first), until the parent kills it with
//! SIGKILL after a random delay. `VARVEDB_CRASH_CYCLES` sets the number of
//! cycles (12 by default).
#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use varvedb::{
    Durability, Filter, GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel, StreamId,
    Varve, VarveConfig,
};
use varvedb_suite::{Order, Sales};

const CHILD: &str = "VARVEDB_PROJECTION_CRASH_CHILD";
const CHILD_TEST: &str = "a_child_runs_the_projection_until_killed";
const NAME: &str = "sales";

fn config() -> VarveConfig {
    // A process crash loses nothing under NoSync (the OS keeps the pages);
    // it makes the cycles fast.
    VarveConfig {
        durability: Durability::NoSync,
        ..VarveConfig::default()
    }
}

/// A small xorshift generator: the test needs no crate for its random delays.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_runs_the_projection_until_killed() {
    let Some(dir) = std::env::var_os(CHILD) else {
        panic!("not a test on its own: run by after_a_crash_at_any_moment_the_model_equals_a_rebuild_from_scratch, which sets {CHILD}");
    };
    let rebuild = std::env::var("VARVEDB_PROJECTION_CRASH_REBUILD").is_ok_and(|v| v == "1");
    let varve = Varve::with_config(dir, config()).expect("open in the child");

    let writer = {
        let varve = varve.clone();
        thread::spawn(move || {
            let mut orders = varve.stream::<Order, 128>("orders").expect("open");
            let mut audit = varve.stream::<Order, 128>("audit").expect("open");
            let mut rng = Rng::seeded();
            let started = Instant::now();
            // Bounded, in case the parent dies without killing us.
            while started.elapsed() < Duration::from_secs(60) {
                let n = rng.next() % 1_000_000;
                let size = 1 + rng.below(6) as usize;
                let batch: Vec<Order> = (0..size as u64).map(|i| Order::numbered(n + i)).collect();
                orders
                    .append_batch(StreamId(rng.below(5)), &batch)
                    .expect("append");
                if rng.below(3) == 0 {
                    audit
                        .append(StreamId(1), &Order::numbered(n))
                        .expect("append");
                }
            }
            std::process::exit(0);
        })
    };

    let mut projector = varve.projector(NAME, Sales).expect("name").batch_size(9);
    if rebuild {
        projector.rebuild().expect("rebuilds");
    }
    projector.run().expect("the projection never fails");
    writer.join().expect("writer");
}

/// Runs one child and kills it after `delay`.
fn crash_once(dir: &std::path::Path, delay: Duration, rebuild: bool) {
    let mut child = varvedb_suite::child_test(CHILD_TEST)
        .env(CHILD, dir)
        .env(
            "VARVEDB_PROJECTION_CRASH_REBUILD",
            if rebuild { "1" } else { "0" },
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start the child");
    thread::sleep(delay);
    // SIGKILL: no destructor, no flush, no goodbye.
    child.kill().expect("the child is still running");
    let status = child.wait().expect("reap the child");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child ended by itself: {status}"
    );
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn entries(varve: &Varve, name: &str) -> (GlobalSequence, Entries) {
    varve
        .read_model(name)
        .expect("name")
        .entries()
        .expect("readable")
}

#[test]
fn after_a_crash_at_any_moment_the_model_equals_a_rebuild_from_scratch() {
    let cycles: u32 = std::env::var("VARVEDB_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::seeded();
    let mut checkpoints = Vec::new();

    for cycle in 0..cycles {
        let delay = Duration::from_millis(30 + rng.below(250));
        crash_once(dir.path(), delay, cycle % 4 == 3);

        // Restart: the model as the crash left it must be the events before
        // its checkpoint, each applied once: the same as a rebuild up to there.
        let varve = Varve::with_config(dir.path(), config()).expect("reopen");
        let (checkpoint, crashed) = entries(&varve, NAME);
        let mut partial = varve
            .projector("partial", UpTo(checkpoint.0, Sales))
            .expect("name");
        partial.rebuild().expect("rebuilds");
        assert_eq!(
            crashed,
            entries(&varve, "partial").1,
            "cycle {cycle}: the model at checkpoint {checkpoint} differs from a rebuild"
        );
        let mut log = varve.global_reader();
        checkpoints.push((checkpoint.0, log.end().expect("end").0));
    }

    // Finally resume the crashed projection to the end and rebuild one from scratch.
    let varve = Varve::with_config(dir.path(), config()).expect("reopen");
    let mut resumed = varve.projector(NAME, Sales).expect("name");
    let end = resumed.catch_up().expect("resumes");
    let mut fresh = varve.projector("fresh", Sales).expect("name");
    assert_eq!(fresh.rebuild().expect("rebuilds"), end);
    assert_eq!(entries(&varve, NAME), entries(&varve, "fresh"));
    assert!(end.0 > 0, "the children appended nothing");
    eprintln!("checkpoint / log length after each crash: {checkpoints:?}");
}

/// Applies `Sales` only to events before a global sequence.
struct UpTo(u64, Sales);

impl Projection for UpTo {
    fn filter(&self) -> Filter {
        self.1.filter()
    }

    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        if event.global_sequence().0 < self.0 {
            self.1.apply(event, model)?;
        }
        Ok(())
    }
}
