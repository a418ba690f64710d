//! The PostgreSQL engine against a real server (feature `postgres`).
//!
//! Runs when `VARVEDB_TEST_POSTGRES_URL` names a server whose user may
//! create databases (`postgresql://postgres@127.0.0.1:5432/postgres`); each
//! test works in a fresh database it creates and drops. Without the variable
//! every test prints that it was skipped and passes, unless
//! `VARVEDB_REQUIRE_POSTGRES` is set (as `.ci/run` does): then it fails. The
//! test that stops the server starts a cluster of its own (`initdb` and
//! `pg_ctl` on the PATH).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Aggregate, Append, Error, EventId, ExecuteError, ExpectedVersion, GlobalEvent, GlobalSequence,
    HandlerError, Projection, ReadModel, StorageErrorKind, StreamId, StreamSequence, Varve,
};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, varvedb::Event)]
#[event(stream = "ledger")]
struct Entry {
    cents: u64,
}

/// The admin URL, or `None` (the test is skipped).
fn server() -> Option<String> {
    let url = std::env::var("VARVEDB_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        // CI sets both: there a missing server fails the run.
        assert!(
            std::env::var_os("VARVEDB_REQUIRE_POSTGRES").is_none(),
            "VARVEDB_REQUIRE_POSTGRES is set but VARVEDB_TEST_POSTGRES_URL is not"
        );
        eprintln!("skipped: VARVEDB_TEST_POSTGRES_URL is not set");
    }
    url
}

/// Drops its test database when the test ends (pass or fail).
struct DropDb {
    admin: String,
    name: String,
}

impl Drop for DropDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = varvedb::__pg::execute(&self.admin, &sql);
    }
}

/// A fresh database on the server: its URL, and what drops it.
fn fresh_db(admin: &str, test: &str) -> (String, DropDb) {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "varvedb_engine_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    varvedb::__pg::execute(admin, &format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    varvedb::__pg::execute(admin, &format!("CREATE DATABASE {name}")).unwrap();
    let url = with_db(admin, &name);
    let drop = DropDb {
        admin: admin.to_owned(),
        name,
    };
    (url, drop)
}

/// `admin` with its database replaced by `name`.
fn with_db(admin: &str, name: &str) -> String {
    match admin.rsplit_once('/') {
        Some((base, tail)) if !tail.contains('@') && admin.contains("://") => {
            let query = tail
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{name}{query}")
        }
        _ => format!("{admin} dbname={name}"),
    }
}

macro_rules! db {
    ($test:literal) => {
        match server() {
            Some(admin) => fresh_db(&admin, $test),
            None => return,
        }
    };
}

#[test]
fn appends_read_back_with_dense_sequences() {
    let (url, _db) = db!("basic");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    assert_eq!(
        ledger.append(StreamId(1), &Entry { cents: 5 }).unwrap(),
        (StreamSequence(0), GlobalSequence(0))
    );
    let batch = ledger
        .append_batch(StreamId(2), &[Entry { cents: 6 }, Entry { cents: 7 }])
        .unwrap();
    assert_eq!(batch[1], (StreamSequence(1), GlobalSequence(2)));
    let mut reader = ledger.reader();
    let e = reader
        .get_archived(StreamId(2), StreamSequence(1))
        .unwrap()
        .unwrap();
    assert_eq!(e.cents.to_native(), 7);
    let all: Vec<u64> = varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| e.unwrap().global_sequence().0)
        .collect();
    assert_eq!(all, vec![0, 1, 2]);
    // A second handle (another "process") sees the same log.
    let again = Varve::connect(&url).unwrap();
    assert_eq!(again.next_global_seq(), GlobalSequence(3));
}

/// Every global sequence of the log, in order.
fn log_of(varve: &Varve) -> Vec<u64> {
    varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| e.unwrap().global_sequence().0)
        .collect()
}

#[test]
fn concurrent_appenders_on_threads_and_handles_leave_a_dense_commit_ordered_log() {
    let (url, _db) = db!("dense");
    // Two handles: two pools, two group commits, as two processes would.
    let handles = [Varve::connect(&url).unwrap(), Varve::connect(&url).unwrap()];
    let threads = 8;
    let per_thread = 30u64;
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let varve = handles[t % 2].clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut ledger = varve.events::<Entry>().unwrap();
                start.wait();
                let mut got = Vec::new();
                for i in 0..per_thread {
                    let id = StreamId(t as u64);
                    if i % 5 == 0 {
                        let batch = ledger
                            .append_batch(id, &[Entry { cents: i }, Entry { cents: i }])
                            .unwrap();
                        got.extend(batch);
                    } else {
                        got.push(ledger.append(id, &Entry { cents: i }).unwrap());
                    }
                }
                got
            })
        })
        .collect();
    let mut globals = Vec::new();
    for (t, w) in workers.into_iter().enumerate() {
        let got = w.join().unwrap();
        // Each stream id's sequences are dense, and its globals rise.
        let seqs: Vec<u64> = got.iter().map(|(s, _)| s.0).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "thread {t}"
        );
        assert!(got.windows(2).all(|w| w[0].1 < w[1].1));
        globals.extend(got.iter().map(|(_, g)| g.0));
    }
    globals.sort_unstable();
    let n = globals.len() as u64;
    assert_eq!(
        globals,
        (0..n).collect::<Vec<_>>(),
        "acknowledged globals are dense"
    );
    assert_eq!(log_of(&handles[0]), (0..n).collect::<Vec<_>>());
    assert_eq!(handles[1].next_global_seq(), GlobalSequence(n));
}

#[test]
fn a_reader_never_sees_a_hole_while_appends_are_in_flight() {
    let (url, _db) = db!("holes");
    let varve = Varve::connect(&url).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let varve = Varve::connect(&url).unwrap();
            std::thread::spawn(move || {
                let mut ledger = varve.events::<Entry>().unwrap();
                for i in 0..40 {
                    ledger.append(StreamId(t), &Entry { cents: i }).unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let done = Arc::clone(&done);
        let varve = varve.clone();
        std::thread::spawn(move || {
            let mut looks = 0;
            let mut last_len = 0;
            while !done.load(Ordering::Acquire) || looks == 0 {
                let log = log_of(&varve);
                assert_eq!(log, (0..log.len() as u64).collect::<Vec<_>>(), "a hole");
                assert!(log.len() >= last_len, "the log shrank");
                last_len = log.len();
                looks += 1;
            }
            looks
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(log_of(&varve), (0..160).collect::<Vec<_>>());
}

#[test]
fn expected_version_outcomes_and_no_gap_after_a_refused_append() {
    let (url, _db) = db!("expected");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    let id = StreamId(9);
    let e = Entry { cents: 1 };
    assert!(matches!(
        ledger.append_expected(id, &e, ExpectedVersion::StreamExists),
        Err(Error::VersionConflict { actual: None, .. })
    ));
    let (s0, g0) = ledger
        .append_expected(id, &e, ExpectedVersion::NoStream)
        .unwrap();
    assert_eq!((s0.0, g0.0), (0, 0));
    assert!(matches!(
        ledger.append_expected(id, &e, ExpectedVersion::NoStream),
        Err(Error::VersionConflict { .. })
    ));
    assert!(matches!(
        ledger.append_expected(id, &e, ExpectedVersion::Exact(StreamSequence(5))),
        Err(Error::VersionConflict {
            actual: Some(StreamSequence(0)),
            ..
        })
    ));
    let (s1, g1) = ledger
        .append_expected(id, &e, ExpectedVersion::Exact(StreamSequence(0)))
        .unwrap();
    let (_, g2) = ledger
        .append_expected(StreamId(10), &e, ExpectedVersion::Any)
        .unwrap();
    // The refused appends consumed no number.
    assert_eq!((s1.0, g1.0, g2.0), (1, 1, 2));
    assert_eq!(ledger.version(id).unwrap(), Some(StreamSequence(1)));
    assert_eq!(log_of(&varve), vec![0, 1, 2]);
}

#[test]
fn a_retried_append_with_the_same_event_id_is_answered_without_writing() {
    let (url, _db) = db!("idem");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    let id = EventId::from_u128(42);
    let first = ledger
        .append_with(StreamId(1), &Entry { cents: 3 }, Append::new().event_id(id))
        .unwrap();
    assert!(!first.is_idempotent());
    let retry = Varve::connect(&url)
        .unwrap()
        .events::<Entry>()
        .unwrap()
        .append_with(StreamId(1), &Entry { cents: 3 }, Append::new().event_id(id))
        .unwrap();
    assert!(retry.is_idempotent());
    assert_eq!(retry.positions(), first.positions());
    let found = varve.global_reader().get_by_id(id).unwrap().unwrap();
    assert_eq!(found.global_sequence(), GlobalSequence(0));
    assert_eq!(found.metadata().event_id(), Some(id));
    assert_eq!(log_of(&varve), vec![0]);
}

/// A counter aggregate: each command adds one event.
#[derive(Default, Debug)]
struct Counter {
    total: u64,
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

impl Aggregate for Counter {
    type Event = Entry;
    type Command = u64;
    type Error = Refused;
    const STREAM: &'static str = "ledger";

    fn apply(&mut self, event: &ArchivedEntry) {
        self.total += event.cents.to_native();
    }

    fn handle(&self, add: &u64) -> Result<Vec<Entry>, Refused> {
        match add {
            0 => Err(Refused),
            n => Ok(vec![Entry { cents: *n }]),
        }
    }
}

#[test]
fn execute_under_contention_loses_no_update_and_a_rejection_leaves_no_gap() {
    let (url, _db) = db!("execute");
    let varve = Varve::connect(&url).unwrap();
    let id = StreamId(7);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let varve = Varve::connect(&url).unwrap();
            std::thread::spawn(move || {
                for _ in 0..15 {
                    varve.execute::<Counter>(id, &1).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let loaded = varve.load::<Counter>(id).unwrap();
    assert_eq!(
        (loaded.state.total, loaded.version),
        (60, Some(StreamSequence(59)))
    );
    // A rejected command: its transaction rolls back, consuming nothing.
    assert!(matches!(
        varve.execute::<Counter>(id, &0),
        Err(ExecuteError::Rejected(Refused))
    ));
    let next = varve.execute::<Counter>(id, &2).unwrap();
    assert_eq!(next.version, Some(StreamSequence(60)));
    assert_eq!(log_of(&varve), (0..61).collect::<Vec<_>>());
}

#[test]
fn a_subscription_receives_every_event_once_in_order_while_appends_run() {
    let (url, _db) = db!("subscribe");
    let varve = Varve::connect(&url).unwrap();
    let total = 120u64;
    let mut subscription = varve.subscribe(GlobalSequence(0));
    // Appends from another handle: this one learns of them by LISTEN/NOTIFY
    // (or its poll), not by its own commits.
    let writer = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut ledger = Varve::connect(&url).unwrap().events::<Entry>().unwrap();
            for i in 0..total {
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                ledger.append(StreamId(i % 3), &Entry { cents: i }).unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.len() as u64) < total && Instant::now() < deadline {
        if let Some(e) = subscription.next_timeout(Duration::from_secs(5)).unwrap() {
            assert_eq!(
                e.archived::<Entry>().unwrap().cents.to_native(),
                seen.len() as u64
            );
            seen.push(e.global_sequence().0);
        }
    }
    writer.join().unwrap();
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    assert!(subscription.try_next().unwrap().is_none());
}

/// Sums the cents into the read model, and counts the events applied.
struct Sum;

impl Projection for Sum {
    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let cents = event.archived::<Entry>()?.cents.to_native();
        let sum = model.get_u64(b"sum")?.unwrap_or(0) + cents;
        model.put_u64(b"sum", sum)?;
        let n = model.get_u64(b"n")?.unwrap_or(0) + 1;
        model.put_u64(b"n", n)?;
        Ok(())
    }
}

#[test]
fn a_projection_applies_each_event_exactly_once_across_restarts() {
    let (url, _db) = db!("project");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    for i in 1..=50 {
        ledger.append(StreamId(i % 4), &Entry { cents: i }).unwrap();
    }
    {
        let mut projector = varve.projector("sum", Sum).unwrap();
        assert_eq!(projector.catch_up().unwrap(), GlobalSequence(50));
    }
    for i in 51..=80 {
        ledger.append(StreamId(i % 4), &Entry { cents: i }).unwrap();
    }
    // A new process: the checkpoint and the model were committed together.
    let again = Varve::connect(&url).unwrap();
    let mut projector = again.projector("sum", Sum).unwrap();
    assert_eq!(projector.checkpoint().unwrap(), GlobalSequence(50));
    projector.catch_up().unwrap();
    let mut model = projector.model();
    assert_eq!(model.get_u64(b"n").unwrap(), Some(80));
    assert_eq!(model.get_u64(b"sum").unwrap(), Some(80 * 81 / 2));
}

#[test]
fn what_a_server_cannot_do_is_a_typed_error() {
    let (url, _db) = db!("unsupported");
    let varve = Varve::connect(&url).unwrap();
    assert!(matches!(
        varve.info(),
        Err(Error::Unsupported {
            backend: "PostgreSQL",
            ..
        })
    ));
    let dir = std::env::temp_dir().join(format!("varvedb-pg-backup-{}", std::process::id()));
    assert!(matches!(varve.backup(&dir), Err(Error::Unsupported { .. })));
    assert!(varve.path().to_string_lossy().starts_with("postgresql://"));
    assert!(!varve.path().to_string_lossy().contains("password"));
    // No key vault of entity keys either (encryption is not varvedb's there).
    let vault = std::env::temp_dir().join(format!("varvedb-pg-vault-{}", std::process::id()));
    assert!(matches!(
        Varve::connect_with(&url, varvedb::VarveConfig::default().key_vault(&vault)),
        Err(Error::Unsupported {
            operation: "a key vault of entity keys",
            ..
        })
    ));
    // Not a connection string.
    assert!(matches!(
        Varve::connect("this is not = a url = at all"),
        Err(Error::Open { .. })
    ));
}

#[test]
fn a_newer_schema_is_refused() {
    let (url, _db) = db!("schema");
    drop(Varve::connect(&url).unwrap());
    varvedb::__pg::execute(&url, "UPDATE varvedb_schema SET version = version + 1").unwrap();
    assert!(matches!(
        Varve::connect(&url),
        Err(Error::UnsupportedFormat { .. })
    ));
}

#[test]
fn async_code_connects_appends_and_loads() {
    let (url, _db) = db!("async");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let varve = Varve::connect_async(&url).await.unwrap();
        let mut ledger = varve.events::<Entry>().unwrap();
        let (_, g) = ledger
            .append_async(StreamId(1), &Entry { cents: 4 })
            .await
            .unwrap();
        assert_eq!(g, GlobalSequence(0));
        ledger
            .append_batch_async(StreamId(1), &[Entry { cents: 1 }, Entry { cents: 2 }])
            .await
            .unwrap();
        let loaded = varve.load_async::<Counter>(StreamId(1)).await.unwrap();
        assert_eq!(loaded.state.total, 7);
        // The synchronous API called straight from a task does not panic.
        assert_eq!(varve.next_global_seq(), GlobalSequence(3));
    });
    // A current-thread runtime: the same calls, in place.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let varve = Varve::connect_async(&url).await.unwrap();
        let mut ledger = varve.events::<Entry>().unwrap();
        let (_, g) = ledger
            .append_async(StreamId(2), &Entry { cents: 4 })
            .await
            .unwrap();
        assert_eq!(g, GlobalSequence(3));
    });
}

/// A throwaway cluster this test starts and stops itself (it needs
/// `initdb` and `pg_ctl`, on the PATH or in Debian's
/// `/usr/lib/postgresql/*/bin`; as root they run as `postgres`).
struct Cluster {
    dir: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
    bin: std::path::PathBuf,
}

/// The directory holding `initdb` and `pg_ctl`.
fn server_tools() -> Option<std::path::PathBuf> {
    let has_both = |d: &std::path::Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|d| has_both(d)));
    on_path.or_else(|| {
        let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, d)| has_both(d))
            .collect();
        versions.sort();
        versions.pop().map(|(_, d)| d)
    })
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let Some(bin) = server_tools() else {
            assert!(
                std::env::var_os("VARVEDB_REQUIRE_POSTGRES").is_none(),
                "VARVEDB_REQUIRE_POSTGRES is set but initdb and pg_ctl are not found"
            );
            eprintln!("skipped: initdb and pg_ctl are not found");
            return None;
        };
        let uid = std::process::Command::new("id").arg("-u").output().ok()?;
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = std::env::temp_dir().join(format!(
            "varvedb-pg-engine-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            assert!(std::process::Command::new("chown")
                .args(["postgres", dir.to_str().unwrap()])
                .status()
                .unwrap()
                .success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            dir,
            port,
            as_postgres,
            bin,
        };
        let data = cluster.dir.join("data");
        assert!(cluster.run(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres"
        ]));
        assert!(cluster.start_again());
        Some(cluster)
    }

    fn run(&self, args: &[&str]) -> bool {
        let program = self.bin.join(args[0]);
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c.args(&args[1..]);
            c
        } else {
            let mut c = std::process::Command::new(&program);
            c.args(&args[1..]);
            c
        };
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.dir.join("data");
        let mut all = vec!["pg_ctl", "-D", data.to_str().unwrap(), "-w"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn start_again(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.pg_ctl(&["-o", &options, "-l", log.to_str().unwrap(), "start"])
    }

    fn stop_immediately(&self) -> bool {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediately();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_server_error(e: &Error) -> bool {
    matches!(e, Error::Storage { source, .. } if source.kind() == StorageErrorKind::Server)
}

#[test]
fn a_stopped_server_is_a_typed_error_and_the_store_recovers_when_it_returns() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    for i in 0..10 {
        ledger.append(StreamId(1), &Entry { cents: i }).unwrap();
    }
    let mut subscription = varve.subscribe(GlobalSequence(10));
    assert!(cluster.stop_immediately());
    let failed = ledger
        .append(StreamId(1), &Entry { cents: 99 })
        .unwrap_err();
    assert!(is_server_error(&failed), "{failed:?}");
    let failed = varve.load::<Counter>(StreamId(1)).unwrap_err();
    assert!(is_server_error(&failed), "{failed:?}");
    assert!(Varve::connect(&url).is_err());
    assert!(cluster.start_again());
    // Connections broken by the stop are dropped from the pool; a few
    // attempts may still meet one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let appended = loop {
        match ledger.append(StreamId(1), &Entry { cents: 10 }) {
            Ok(done) => break done,
            Err(e) if is_server_error(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no recovery: {e:?}"),
        }
    };
    // Nothing acknowledged was lost; nothing refused was written.
    assert_eq!(appended, (StreamSequence(10), GlobalSequence(10)));
    assert_eq!(log_of(&varve), (0..11).collect::<Vec<_>>());
    // The listener reconnected (or the poll found it): the subscription
    // sees an append of another handle.
    Varve::connect(&url)
        .unwrap()
        .events::<Entry>()
        .unwrap()
        .append(StreamId(2), &Entry { cents: 11 })
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 && Instant::now() < deadline {
        match subscription.next_timeout(Duration::from_secs(2)) {
            Ok(Some(e)) => seen.push(e.global_sequence().0),
            Ok(None) => {}
            Err(e) if is_server_error(&e) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, vec![10, 11]);
}

#[test]
fn a_reader_idle_between_calls_keeps_no_transaction_open() {
    let (url, _db) = db!("idle");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    ledger.append(StreamId(1), &Entry { cents: 1 }).unwrap();
    let mut reader = ledger.reader();
    assert!(reader
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .is_some());
    let mut global = varve.global_reader();
    assert!(global.get(GlobalSequence(0)).unwrap().is_some());
    // Both readers keep their snapshot for their next call; on a server
    // that is an open transaction, closed once idle.
    std::thread::sleep(Duration::from_millis(2500));
    let no_idle_transaction = "DO $$ BEGIN
        IF (SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND state = 'idle in transaction') > 0
        THEN RAISE EXCEPTION 'a transaction stays open'; END IF; END $$";
    varvedb::__pg::execute(&url, no_idle_transaction).unwrap();
    // The readers still work: they open a new snapshot.
    assert!(reader
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .is_some());
    assert!(global.get(GlobalSequence(0)).unwrap().is_some());
}

#[test]
fn verification_and_the_tamper_evident_chain_run_over_the_server() {
    let (url, _db) = db!("chain");
    let config = varvedb::VarveConfig::tamper_evident(varvedb::Chain::Plain);
    let varve = Varve::connect_with(&url, config).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    for i in 0..20 {
        ledger.append(StreamId(i % 3), &Entry { cents: i }).unwrap();
    }
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 20);
    let head = varve.head_digest().unwrap().unwrap();
    assert!(matches!(
        varve.verify_extends(&head),
        Ok(varvedb::Extension::Extends { .. })
    ));
    // A payload changed on the server is found, not served.
    varvedb::__pg::execute(
        &url,
        "UPDATE varvedb_events SET payload = set_byte(payload, 0, get_byte(payload, 0) # 1)
         WHERE global = 7",
    )
    .unwrap();
    let report = varve.verify().unwrap();
    assert!(!report.is_ok());
    assert!(matches!(
        varve.global_reader().get(GlobalSequence(7)),
        Err(Error::Corruption { .. })
    ));
}

mod v1 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Paid", stream = "payments")]
    pub struct Paid {
        pub cents: u32,
    }
}

mod v2 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Paid", stream = "payments", version = 2, upcast_from = super::v1::Paid)]
    pub struct Paid {
        pub cents: u64,
    }

    impl varvedb::Upcast<super::v1::Paid> for Paid {
        fn upcast(old: &super::v1::ArchivedPaid) -> Self {
            Paid {
                cents: u64::from(old.cents.to_native()) * 10,
            }
        }
    }
}

#[test]
fn a_migration_rewrites_blocks_in_place_on_the_server() {
    let (url, _db) = db!("migrate");
    {
        let varve = Varve::connect(&url).unwrap();
        let mut paid = varve.events::<v1::Paid>().unwrap();
        paid.append_batch(StreamId(1), &[v1::Paid { cents: 1 }, v1::Paid { cents: 2 }])
            .unwrap();
        paid.append(StreamId(2), &v1::Paid { cents: 3 }).unwrap();
    }
    let varve = Varve::connect(&url).unwrap();
    let report = varve.migrate::<v2::Paid>().unwrap();
    assert_eq!(report.events, 3);
    let mut reader = varve.events::<v2::Paid>().unwrap().reader();
    let e = reader
        .get_archived(StreamId(1), StreamSequence(1))
        .unwrap()
        .unwrap();
    assert_eq!(e.cents.to_native(), 20);
    assert_eq!(log_of(&varve), vec![0, 1, 2]);
    assert!(varve.verify().unwrap().is_ok());
    // The head did not move: the next append continues the log.
    let (_, g) = varve
        .events::<v2::Paid>()
        .unwrap()
        .append(StreamId(2), &v2::Paid { cents: 5 })
        .unwrap();
    assert_eq!(g, GlobalSequence(3));
}

#[test]
fn a_transaction_that_fails_to_begin_leaves_no_broken_connection_in_the_pool() {
    let (url, _db) = db!("poison");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    ledger.append(StreamId(1), &Entry { cents: 1 }).unwrap();
    // `BEGIN` runs, then reading the head fails: those connections hold an
    // aborted transaction and must not be handed out again.
    varvedb::__pg::execute(&url, "ALTER TABLE varvedb_head RENAME TO varvedb_head_away").unwrap();
    for _ in 0..6 {
        let failed = ledger.append(StreamId(1), &Entry { cents: 2 }).unwrap_err();
        assert!(is_server_error(&failed), "{failed:?}");
    }
    varvedb::__pg::execute(&url, "ALTER TABLE varvedb_head_away RENAME TO varvedb_head").unwrap();
    for i in 0..20 {
        let (seq, global) = ledger.append(StreamId(1), &Entry { cents: i }).unwrap();
        assert_eq!((seq.0, global.0), (i + 1, i + 1));
    }
    assert_eq!(log_of(&varve), (0..21).collect::<Vec<_>>());
}

#[test]
fn batches_longer_than_one_fetch_read_back_whole() {
    let (url, _db) = db!("long");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    // More events per block than one round trip fetches (256).
    let batch: Vec<Entry> = (0..700).map(|cents| Entry { cents }).collect();
    ledger.append_batch(StreamId(1), &batch).unwrap();
    // The log's end is read from its last block, here a long one.
    assert_eq!(varve.next_global_seq(), GlobalSequence(700));
    let (_, g) = ledger.append(StreamId(2), &Entry { cents: 700 }).unwrap();
    assert_eq!(g, GlobalSequence(700));
    ledger.append_batch(StreamId(1), &batch[..300]).unwrap();
    assert_eq!(
        Varve::connect(&url).unwrap().next_global_seq(),
        GlobalSequence(1001)
    );
    let mut cents = Vec::new();
    for e in varve.global_reader().iter_from(GlobalSequence(0)).unwrap() {
        cents.push(e.unwrap().archived::<Entry>().unwrap().cents.to_native());
    }
    let expected: Vec<u64> = (0..701).chain(0..300).collect();
    assert_eq!(cents, expected);
    // From the middle of a long block, and past the end.
    let from: Vec<u64> = varve
        .global_reader()
        .iter_from(GlobalSequence(650))
        .unwrap()
        .map(|e| e.unwrap().global_sequence().0)
        .collect();
    assert_eq!(from, (650..1001).collect::<Vec<_>>());
    assert_eq!(
        varve
            .global_reader()
            .iter_from(GlobalSequence(5000))
            .unwrap()
            .count(),
        0
    );
    let mut reader = ledger.reader();
    let e = reader
        .get_archived(StreamId(1), StreamSequence(999))
        .unwrap()
        .unwrap();
    assert_eq!(e.cents.to_native(), 299);
    assert!(reader
        .get_archived(StreamId(1), StreamSequence(1000))
        .unwrap()
        .is_none());
}

/// The round trips `varve` has made so far.
fn trips(varve: &Varve) -> u64 {
    varvedb::__pg::round_trips(varve).expect("a store on PostgreSQL")
}

/// Once the store has seen a stream id, an append is two round trips (the
/// head-row lock with the log's last block; the event rows, the index, the
/// head's move and the commit), however many appends share the group: what
/// a write transaction read or wrote is known to the next one of the store
/// while no other store commits. A commit by another store (another
/// process) makes the next append ask again, and it still numbers right.
#[test]
fn appends_cost_two_round_trips_per_group_commit() {
    let (url, _db) = db!("trips");
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    // The first appends read what the store does not know yet (the new
    // stream's catalog records, its index).
    for _ in 0..2 {
        ledger.append(StreamId(1), &Entry { cents: 1 }).unwrap();
    }
    let before = trips(&varve);
    for i in 0..20 {
        let (seq, _) = ledger.append(StreamId(1), &Entry { cents: i }).unwrap();
        assert_eq!(seq, StreamSequence(i + 2));
    }
    assert_eq!(trips(&varve) - before, 2 * 20, "a lone writer's appends");

    // Another store appends to the same stream id in between.
    let other = Varve::connect(&url).unwrap();
    let (seq, _) = other
        .events::<Entry>()
        .unwrap()
        .append(StreamId(1), &Entry { cents: 0 })
        .unwrap();
    assert_eq!(seq, StreamSequence(22));
    let (seq, global) = ledger
        .append_expected(
            StreamId(1),
            &Entry { cents: 0 },
            ExpectedVersion::Exact(StreamSequence(22)),
        )
        .unwrap();
    assert_eq!((seq, global), (StreamSequence(23), GlobalSequence(23)));

    // Sixteen writers: every group commit costs the same two round trips.
    const WRITERS: u64 = 16;
    let start = Arc::new(Barrier::new(WRITERS as usize + 1));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let varve = varve.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut ledger = varve.events::<Entry>().unwrap();
                for _ in 0..2 {
                    ledger
                        .append(StreamId(100 + w), &Entry { cents: w })
                        .unwrap();
                }
                start.wait();
                start.wait();
                for i in 0..20 {
                    ledger
                        .append(StreamId(100 + w), &Entry { cents: i })
                        .unwrap();
                }
            })
        })
        .collect();
    start.wait();
    // Every stream id is known now; one lone append makes the store's
    // knowledge current (the warm-up commits were grouped arbitrarily).
    ledger.append(StreamId(1), &Entry { cents: 0 }).unwrap();
    let (before, commits) = (trips(&varve), varve.commit_stats().commits);
    start.wait();
    for h in handles {
        h.join().unwrap();
    }
    let commits = varve.commit_stats().commits - commits;
    assert_eq!(trips(&varve) - before, 2 * commits);
    assert!(commits <= WRITERS * 20);
    assert_eq!(log_of(&varve).len() as u64, 25 + WRITERS * 22);
}

/// With a pool of four connections and a short wait for one, writers on
/// many threads and a projector (whose write transaction opens a nested
/// read snapshot: two connections) never wait for a connection long enough
/// to fail: this process's writers take the store's writer lock before a
/// connection, so at most one of them waits on the head row at a time.
#[test]
fn writers_and_a_projector_never_starve_the_pool() {
    let (url, _db) = db!("pool");
    let config = varvedb::VarveConfig {
        max_readers: 4,
        resize_wait: Duration::from_millis(1_500),
        ..varvedb::VarveConfig::default()
    };
    let varve = Varve::connect_with(&url, config).unwrap();
    const WRITERS: u64 = 12;
    const EACH: u64 = 25;
    let done = Arc::new(AtomicBool::new(false));
    let projector = {
        let varve = varve.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut projector = varve.projector("sum", Sum).unwrap();
            while !done.load(Ordering::Acquire) {
                projector.catch_up().unwrap();
            }
            projector.catch_up().unwrap()
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                let mut ledger = varve.events::<Entry>().unwrap();
                let mut reader = ledger.reader();
                for i in 0..EACH {
                    ledger.append(StreamId(w), &Entry { cents: 1 }).unwrap();
                    // A reader between appends holds a snapshot too.
                    assert!(reader
                        .get_archived(StreamId(w), StreamSequence(i))
                        .unwrap()
                        .is_some());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    assert_eq!(projector.join().unwrap(), GlobalSequence(WRITERS * EACH));
}

/// A schema altered by hand (a column made nullable and set to NULL, a
/// column of another type) is a typed error when read, never a panic.
#[test]
fn a_column_altered_by_hand_is_a_typed_error_not_a_panic() {
    let (url, _db) = db!("altered");
    {
        let varve = Varve::connect(&url).unwrap();
        let mut ledger = varve.events::<Entry>().unwrap();
        for i in 0..3 {
            ledger.append(StreamId(1), &Entry { cents: i }).unwrap();
        }
    }
    varvedb::__pg::execute(
        &url,
        "ALTER TABLE varvedb_events ALTER COLUMN payload DROP NOT NULL;
         UPDATE varvedb_events SET payload = NULL WHERE global = 1",
    )
    .unwrap();
    let varve = Varve::connect(&url).unwrap();
    let read: Result<Vec<_>, Error> = varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| e.map(|e| e.global_sequence()))
        .collect();
    match read {
        Err(e) => assert!(is_server_error(&e), "{e:?}"),
        Ok(all) => panic!("a NULL payload read back: {all:?}"),
    }
    drop(varve);
    varvedb::__pg::execute(
        &url,
        "ALTER TABLE varvedb_index ALTER COLUMN value TYPE text USING encode(value, 'hex')",
    )
    .unwrap();
    let varve = Varve::connect(&url).unwrap();
    let mut ledger = varve.events::<Entry>().unwrap();
    let appended = ledger.append(StreamId(1), &Entry { cents: 9 });
    assert!(
        matches!(&appended, Err(e) if is_server_error(e)),
        "{appended:?}"
    );
}
