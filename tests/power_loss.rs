//! Power loss: an acknowledged event survives the machine losing power, not
//! only the process dying.
//!
//! A child process runs a workload (single appends, batches, group commit
//! from three threads, map growth, aggregates with snapshots, an in-store
//! projection) under an `LD_PRELOAD` recorder (`tests/power_loss/recorder.c`,
//! compiled here with the system `cc`) that logs every write, truncation,
//! sync barrier, open, rename and unlink under the store's directory. The
//! workload acknowledges each append by writing a line to a marker file
//! beside the store as soon as the append returns, so acknowledgements are
//! ordered with the store's writes in one log.
//!
//! From the log, `replay.rs` builds the images a power cut could leave (its
//! model of the disk is documented there): at every barrier (before and after
//! it returns), after every acknowledgement and at the end, the durable state
//! alone, everything landed, and a seeded random sample of subsets of the
//! pending writes, some with one write torn at 512 B or 4 KiB. Each distinct
//! image is checked in a child process (so a crash is counted, with its
//! signal): it must open, `verify()` clean, read back dense and byte-identical
//! with no partial batch, load its aggregates and projection consistently,
//! take the next append, and hold every append acknowledged before the cut
//! (`Durability::Full`), or lose only the most recent ones
//! (`Durability::NoMetaSync`).
//!
//! `VARVEDB_POWER_LOSS_OPS` sets the appends per workload (12),
//! `VARVEDB_POWER_LOSS_STATES` the random states per cut (2),
//! `VARVEDB_POWER_LOSS_SEED` the seed, `VARVEDB_POWER_LOSS_WORKLOADS` a
//! comma-separated subset of the workloads.
#![cfg(target_os = "linux")]

#[path = "power_loss/check.rs"]
mod check;
#[path = "power_loss/replay.rs"]
mod replay;
#[path = "power_loss/workload.rs"]
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use check::Outcome;
use replay::{Recording, Rng, State};
use workload::Ack;

const RECORD_CHILD: &str = "a_recorded_workload_child";
const CHECK_CHILD: &str = "a_power_loss_checker_child";
const CHILD_WORKLOAD: &str = "VARVEDB_POWER_LOSS_CHILD_WORKLOAD";
const CHILD_JOB: &str = "VARVEDB_POWER_LOSS_CHILD_JOB";

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

fn seed() -> u64 {
    env_number("VARVEDB_POWER_LOSS_SEED").unwrap_or(0x5eed_90fe_2024)
}

// ------------------------------------------------------------- the children

/// Not a test on its own: the recorded workload, run by the parent with
/// `--ignored --exact` under the recorder.
#[test]
#[ignore = "a child process of the power-loss tests"]
fn a_recorded_workload_child() {
    let spec = std::env::var(CHILD_WORKLOAD).expect("run by the power-loss tests only");
    // workload durability ops seed root
    let f: Vec<&str> = spec.splitn(5, ' ').collect();
    let root = Path::new(f[4]);
    let acks = workload::Acks::create(&root.join("acks"));
    let store = root.join("store");
    std::fs::create_dir(&store).expect("create the store directory");
    workload::run(
        f[0],
        workload::durability(f[1]),
        &store,
        &acks,
        f[2].parse().expect("ops"),
        f[3].parse().expect("seed"),
    );
}

/// Not a test on its own: checks the images a job file lists, one line each
/// (`<image dir> <workload> <acks file> <acks before the cut>`), printing
/// `@@ start <n>` before and `@@ done <n> <outcome>` after each.
#[test]
#[ignore = "a child process of the power-loss tests"]
fn a_power_loss_checker_child() {
    let job = std::env::var(CHILD_JOB).expect("run by the power-loss tests only");
    let job = std::fs::read_to_string(job).expect("read the job");
    let mut acks_cache: HashMap<String, Vec<Ack>> = HashMap::new();
    let mut out = std::io::stdout().lock();
    for (n, line) in job.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let acks = acks_cache.entry(f[2].to_string()).or_insert_with(|| {
            std::fs::read_to_string(f[2])
                .expect("read the acks")
                .lines()
                .map(Ack::parse)
                .collect()
        });
        let before: usize = f[3].parse().expect("ack count");
        writeln!(out, "@@ start {n}")
            .and_then(|()| out.flush())
            .expect("report");
        let outcome = check::check(Path::new(f[0]), f[1], &acks[..before]);
        writeln!(out, "@@ done {n} {}", outcome.encode())
            .and_then(|()| out.flush())
            .expect("report");
    }
}

// ------------------------------------------------------------- the recorder

/// Compiles the recorder with the system C compiler, once per process.
fn recorder() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/power_loss/recorder.c");
            let out = std::env::temp_dir().join(format!(
                "varvedb-power-loss-recorder-{}.so",
                std::process::id()
            ));
            let status = Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&out)
                .arg(&src)
                .arg("-ldl")
                .status()
                .unwrap_or_else(|e| {
                    panic!("the power-loss tests need a C compiler (`cc`) to build their recorder: {e}")
                });
            assert!(status.success(), "cc failed to build {}", src.display());
            out
        })
        .clone()
}

/// Runs `workload` under the recorder in a fresh directory and parses the log.
fn record(workload: &str, durability: &str, ops: u64, seed: u64) -> (tempfile::TempDir, Recording) {
    let root = tempfile::tempdir().expect("a temporary directory");
    let root_path = root.path().to_str().expect("a UTF-8 path").to_string();
    let log = root.path().with_extension("log");
    let data = root.path().with_extension("data");
    let output = varvedb_suite::child_test(RECORD_CHILD)
        .env(
            CHILD_WORKLOAD,
            format!("{workload} {durability} {ops} {seed} {root_path}"),
        )
        .env("LD_PRELOAD", recorder())
        .env("VARVEDB_RECORD_ROOT", &root_path)
        .env("VARVEDB_RECORD_LOG", &log)
        .env("VARVEDB_RECORD_DATA", &data)
        .output()
        .expect("run the recorded workload");
    assert!(
        output.status.success(),
        "the recorded workload {workload} ({durability}) failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    let text = std::fs::read_to_string(&log).expect("read the log");
    let bytes = std::fs::read(&data).expect("read the data");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&data);
    let store = format!("{root_path}/store");
    let acks = format!("{root_path}/acks");
    let recording = Recording::parse(&text, bytes, &acks, &store);
    assert_eq!(
        recording.acks().len() as u64,
        std::fs::read_to_string(&acks)
            .expect("the acks")
            .lines()
            .count() as u64,
        "every acknowledgement was recorded"
    );
    (root, recording)
}

// ------------------------------------------------------------- the explorer

#[derive(Debug, Default, Clone)]
struct Tally {
    recordings: u64,
    barriers: u64,
    dsync_writes: u64,
    cuts: u64,
    states: u64,
    images: u64,
    /// Distinct images with a torn write, and with a reordered subset.
    torn_images: u64,
    subset_images: u64,
    sound: u64,
    /// Images that lost at least one acknowledged append, and the most lost.
    lost_images: u64,
    lost_max: u64,
    typed: u64,
    typed_with_acks: u64,
    /// Typed errors on images that hold the identity record: the store's
    /// creation had finished (`Varve::new` returned or was about to).
    typed_after_creation: u64,
    unverified: u64,
    wrong: u64,
    crashed: u64,
    /// Images equal to a state where every write before the cut landed (what
    /// a process crash leaves), and how many of them were not sound and whole.
    process_crash_images: u64,
    process_crash_failures: u64,
    /// The first few findings of each kind.
    examples: BTreeMap<&'static str, Vec<String>>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.recordings += o.recordings;
        self.barriers += o.barriers;
        self.dsync_writes += o.dsync_writes;
        self.cuts += o.cuts;
        self.states += o.states;
        self.images += o.images;
        self.torn_images += o.torn_images;
        self.subset_images += o.subset_images;
        self.sound += o.sound;
        self.lost_images += o.lost_images;
        self.lost_max = self.lost_max.max(o.lost_max);
        self.typed += o.typed;
        self.typed_with_acks += o.typed_with_acks;
        self.typed_after_creation += o.typed_after_creation;
        self.unverified += o.unverified;
        self.wrong += o.wrong;
        self.crashed += o.crashed;
        self.process_crash_images += o.process_crash_images;
        self.process_crash_failures += o.process_crash_failures;
        for (kind, list) in &o.examples {
            let mine = self.examples.entry(kind).or_default();
            for e in list {
                if mine.len() < 3 {
                    mine.push(e.clone());
                }
            }
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} recordings, {} barriers + {} O_DSYNC writes, {} cuts, {} crash states, {} distinct images \
             ({} with a torn write, {} with a reordered subset): \
             {} sound, {} lost acknowledged appends (at most {}), {} typed errors ({} with acknowledged appends, {} after creation), \
             {} failed verify, {} wrong reads, {} crashed; {} images of a process crash, {} of them not whole",
            self.recordings,
            self.barriers,
            self.dsync_writes,
            self.cuts,
            self.states,
            self.images,
            self.torn_images,
            self.subset_images,
            self.sound,
            self.lost_images,
            self.lost_max,
            self.typed,
            self.typed_with_acks,
            self.typed_after_creation,
            self.unverified,
            self.wrong,
            self.crashed,
            self.process_crash_images,
            self.process_crash_failures
        )
    }
}

/// Records `workload`, builds its crash states and checks every distinct image.
fn explore(workload: &str, durability: &str, ops: u64, samples: usize, seed: u64) -> Tally {
    let (root, rec) = record(workload, durability, ops, seed);
    let mut rng = Rng(seed ^ 0xc0ff_ee00);
    let cuts = rec.cuts();
    let mut tally = Tally {
        recordings: 1,
        barriers: rec.barriers as u64,
        dsync_writes: rec.dsync_writes as u64,
        cuts: cuts.len() as u64,
        ..Tally::default()
    };
    // Distinct images, keeping for each the state with the most acknowledgements.
    let mut distinct: HashMap<(u64, bool), State> = HashMap::new();
    for &cut in &cuts {
        for state in rec.states(cut, samples, &mut rng) {
            tally.states += 1;
            let hash = replay::image_hash(&rec.image(&state));
            // A state where everything landed is what a process crash
            // leaves: it is checked on its own, with its own acknowledgements.
            let crash = state.label == "all";
            match distinct.get(&(hash, crash)) {
                Some(kept) if kept.acks >= state.acks => {}
                _ => {
                    let mut state = state;
                    state.process_crash = crash;
                    distinct.insert((hash, crash), state);
                }
            }
        }
    }
    let mut states: Vec<State> = distinct.into_values().collect();
    states.sort_by_key(|s| (s.cut, s.acks, s.included.len()));
    tally.images = states.len() as u64;
    tally.torn_images = states.iter().filter(|s| s.torn.is_some()).count() as u64;
    tally.subset_images = states.iter().filter(|s| s.label == "subset").count() as u64;

    let work = root.path().join("images");
    std::fs::create_dir(&work).expect("an image directory");
    let acks_file = root.path().join("acks");
    for chunk in states.chunks(64) {
        let mut job = String::new();
        let mut created = Vec::new();
        for (n, state) in chunk.iter().enumerate() {
            let files = rec.image(state);
            created.push(files.contains_key("varvedb.id"));
            let dir = replay::write_image(&work.join(n.to_string()), &files);
            job.push_str(&format!(
                "{} {workload} {} {}\n",
                dir.display(),
                acks_file.display(),
                state.acks
            ));
        }
        let outcomes = check_images(&work.join("job"), &job, chunk.len());
        for ((state, outcome), created) in chunk.iter().zip(outcomes).zip(created) {
            if state.process_crash {
                tally.process_crash_images += 1;
                if !matches!(outcome, Outcome::Sound { lost: 0, .. }) {
                    tally.process_crash_failures += 1;
                }
            }
            let kind: &'static str = match &outcome {
                Outcome::Sound { .. } => "lost",
                Outcome::Typed(_) => "typed",
                Outcome::Unverified(_) => "unverified",
                Outcome::Wrong(_) => "wrong",
                Outcome::Crashed(_) => "crashed",
            };
            let note = |tally: &mut Tally, what: &str| {
                let list = tally.examples.entry(kind).or_default();
                if list.len() < 3 {
                    list.push(format!(
                        "{workload}/{durability} cut {} ({} state, {} acks, torn {:?}): {what}",
                        state.cut, state.label, state.acks, state.torn
                    ));
                }
            };
            match &outcome {
                Outcome::Sound { lost, .. } => {
                    tally.sound += 1;
                    if *lost > 0 {
                        tally.lost_images += 1;
                        tally.lost_max = tally.lost_max.max(*lost);
                        if durability == "full" {
                            note(&mut tally, &format!("lost {lost} acknowledged appends"));
                        }
                    }
                }
                Outcome::Typed(m) => {
                    tally.typed += 1;
                    if state.acks > 0 {
                        tally.typed_with_acks += 1;
                    }
                    if created {
                        tally.typed_after_creation += 1;
                    }
                    note(&mut tally, m);
                }
                Outcome::Unverified(m) => {
                    tally.unverified += 1;
                    note(&mut tally, m);
                }
                Outcome::Wrong(m) => {
                    tally.wrong += 1;
                    note(&mut tally, m);
                }
                Outcome::Crashed(m) => {
                    tally.crashed += 1;
                    note(&mut tally, m);
                }
            }
        }
        for n in 0..chunk.len() {
            let _ = std::fs::remove_dir_all(work.join(n.to_string()));
        }
    }
    tally
}

/// Checks `count` images listed in `job` in child processes, restarting after
/// a child dies on an image (that image's outcome is the death).
fn check_images(job_path: &Path, job: &str, count: usize) -> Vec<Outcome> {
    let lines: Vec<&str> = job.lines().collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
    let mut from = 0;
    while from < count {
        std::fs::write(job_path, lines[from..].join("\n") + "\n").expect("write the job");
        let mut child = varvedb_suite::child_test(CHECK_CHILD)
            .env(CHILD_JOB, job_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the checker");
        let stdout = child.stdout.take().expect("the checker's stdout");
        let mut started = None;
        let mut last_done = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read the checker");
            let Some(rest) = line.strip_prefix("@@ ") else {
                continue;
            };
            let (kind, rest) = rest.split_once(' ').expect("a report");
            let (n, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let n = from + n.parse::<usize>().expect("an image number");
            match kind {
                "start" => started = Some(n),
                "done" => {
                    outcomes[n] = Some(Outcome::decode(rest));
                    started = None;
                    last_done = Some(n);
                }
                other => panic!("unknown report {other:?}"),
            }
        }
        let output = child.wait_with_output().expect("wait for the checker");
        match started {
            Some(n) => {
                let status = output.status;
                let how = match status.signal() {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&output.stderr)
                            .lines()
                            .filter(|l| l.contains("panicked") || l.contains("error"))
                            .take(2)
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ),
                };
                outcomes[n] = Some(Outcome::Crashed(how));
                from = n + 1;
            }
            // Died after an image's check returned (dropping the store, or
            // at exit): that image's outcome is the death.
            None if output.status.signal().is_some() => {
                // Before its first report: the first image it was given.
                let n = last_done.unwrap_or(from);
                outcomes[n] = Some(Outcome::Crashed(format!(
                    "after the check, killed by signal {}",
                    output.status.signal().unwrap_or(0)
                )));
                from = n + 1;
            }
            None => {
                assert!(
                    output.status.success() && outcomes[from..].iter().all(Option::is_some),
                    "the checker failed outside an image: {}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                from = count;
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every image checked"))
        .collect()
}

fn workloads() -> Vec<String> {
    match std::env::var("VARVEDB_POWER_LOSS_WORKLOADS") {
        Ok(list) => list.split(',').map(str::to_string).collect(),
        Err(_) => workload::WORKLOADS.iter().map(|w| w.to_string()).collect(),
    }
}

/// Explores every workload; returns the total and each workload's tally.
fn explore_all(durability: &str, default_ops: u64) -> (Tally, Vec<(String, Tally)>) {
    let ops = env_number("VARVEDB_POWER_LOSS_OPS").unwrap_or(default_ops);
    let samples = env_number("VARVEDB_POWER_LOSS_STATES").unwrap_or(2) as usize;
    let seed = seed();
    let started = Instant::now();
    let mut total = Tally::default();
    let mut each = Vec::new();
    for (i, w) in workloads().iter().enumerate() {
        let t = explore(w, durability, ops, samples, seed.wrapping_add(i as u64));
        eprintln!("power loss, {w} ({durability}): {}", t.summary());
        total.add(&t);
        each.push((w.clone(), t));
    }
    eprintln!(
        "power loss, {durability}, all ({ops} appends per workload, {samples} random states per cut, seed {seed}, {:.1} s): {}",
        started.elapsed().as_secs_f64(),
        total.summary()
    );
    for (kind, list) in &total.examples {
        for e in list {
            eprintln!("  {kind}: {e}");
        }
    }
    (total, each)
}

// ------------------------------------------------------------- the promises

#[test]
fn with_full_durability_every_power_cut_keeps_every_acknowledged_append() {
    let (t, _) = explore_all("full", 12);
    assert!(
        t.barriers > 0 && t.dsync_writes > 0,
        "the recorder saw LMDB's barriers: {}",
        t.summary()
    );
    assert!(
        t.torn_images > 0 && t.subset_images > 0,
        "torn and reordered states were explored: {}",
        t.summary()
    );
    assert_eq!(
        (
            t.lost_images,
            t.typed_with_acks,
            t.typed_after_creation,
            t.unverified,
            t.wrong,
            t.crashed,
            t.process_crash_failures
        ),
        (0, 0, 0, 0, 0, 0, 0),
        "{}\n{:#?}",
        t.summary(),
        t.examples
    );
}

#[test]
fn with_no_meta_sync_a_power_cut_rolls_back_at_most_the_last_commit_and_never_corrupts() {
    let (t, each) = explore_all("no-meta-sync", 12);
    assert!(t.barriers > 0, "the recorder saw LMDB's barriers");
    // The last commit holds one append with one writer thread, at most one
    // per thread (3) under group commit.
    for (w, tally) in &each {
        let most = if w == "group" { 3 } else { 1 };
        assert!(
            tally.lost_max <= most,
            "{w}: no-meta-sync loses at most the last commit: {}",
            tally.summary()
        );
    }
    assert_eq!(
        (
            t.typed_with_acks,
            t.typed_after_creation,
            t.unverified,
            t.wrong,
            t.crashed,
            t.process_crash_failures
        ),
        (0, 0, 0, 0, 0, 0),
        "{}\n{:#?}",
        t.summary(),
        t.examples
    );
}

/// `NoSync` promises nothing across a power cut: it "may lose any number
/// of recent commits, and with a filesystem that reorders writes may corrupt
/// the store". What it does promise is that a process crash loses nothing:
/// every image in which all writes made before the cut landed (what a killed
/// process leaves in the page cache) must be sound and hold every
/// acknowledged append. The power-cut states are measured and reported.
#[test]
fn with_no_sync_a_cut_after_every_write_landed_loses_nothing_and_the_rest_is_measured() {
    let (t, _) = explore_all("no-sync", 12);
    assert!(t.process_crash_images > 0, "{}", t.summary());
    assert_eq!(
        t.process_crash_failures,
        0,
        "{}\n{:#?}",
        t.summary(),
        t.examples
    );
}

/// The checker is not blind: an image that drops the last commit's meta-page
/// write (which a `Full` append returned after) loses acknowledged appends,
/// and the checker says so.
#[test]
fn the_checker_reports_an_acknowledged_append_that_a_cut_removed() {
    let (root, rec) = record("batch", "full", 4, seed());
    let last_meta = rec
        .ops
        .iter()
        .rposition(|(_, op)| matches!(op, replay::Op::Write { dsync: true, .. }))
        .expect("a meta-page write");
    // Everything up to the last meta write, that write lost.
    let state = State {
        cut: last_meta,
        included: Vec::new(),
        dir_prefix: usize::MAX,
        torn: None,
        acks: rec.acks().len(),
        label: "forged",
        process_crash: false,
    };
    let dir = replay::write_image(&root.path().join("forged"), &rec.image(&state));
    let acks_file = root.path().join("acks");
    let job = format!(
        "{} batch {} {}\n",
        dir.display(),
        acks_file.display(),
        state.acks
    );
    let outcomes = check_images(&root.path().join("job"), &job, 1);
    assert!(
        matches!(outcomes[0], Outcome::Sound { lost, .. } if lost >= 1),
        "{:?}",
        outcomes[0]
    );
}
