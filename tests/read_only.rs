//! A read-only open never writes: not the data file, not the identity
//! record, not a missing store or directory; it reads everything, refuses
//! every write with `Error::ReadOnly`, opens a store in a directory the
//! process may only read, and beside a live writer in another process sees
//! whole commits only.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use varvedb::{Error, GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig};
use varvedb_suite::{Order, Sales};

const CHILD: &str = "VARVEDB_READ_ONLY_CHILD";

struct Sink;
impl varvedb::ExternalProjection for Sink {
    fn deliver(&mut self, _: &varvedb::GlobalEvent) -> Result<(), varvedb::HandlerError> {
        Ok(())
    }
}

use varvedb_suite::file_digests as files;

fn fill(dir: &Path, events: u64) {
    let varve = Varve::new(dir).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    for n in 0..events {
        orders.append(StreamId(n % 3), &Order::numbered(n)).unwrap();
    }
}

/// Reads every event in global order and checks it is `Order::numbered(g)`.
fn check_all(varve: &Varve, events: u64) {
    let mut log = varve.global_reader();
    assert_eq!(log.end().unwrap(), GlobalSequence(events));
    for (g, event) in log.iter_from(GlobalSequence(0)).unwrap().enumerate() {
        let event = event.unwrap();
        assert_eq!(event.global_sequence(), GlobalSequence(g as u64));
        let order = event.archived::<Order>().unwrap();
        assert_eq!(order.id, g as u64);
    }
    let mut reader = varve.stream::<Order, 64>("orders").unwrap().reader();
    let got = reader
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_eq!(got.id, 1);
}

#[test]
fn a_read_only_open_reads_everything_refuses_every_write_and_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 30);
    let before = files(dir.path());

    let varve = Varve::open_read_only(dir.path()).unwrap();
    assert!(varve.is_read_only());
    check_all(&varve, 30);
    assert!(varve.verify().unwrap().is_ok());
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    let refused = orders.append(StreamId(1), &Order::numbered(99));
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
    let refused = orders.append_batch(StreamId(1), &[Order::numbered(1), Order::numbered(2)]);
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
    // A stream that does not exist opens (reads find nothing) and refuses too.
    let mut other = varve.stream::<Order, 64>("other").unwrap();
    assert!(matches!(
        other.append(StreamId(1), &Order::numbered(1)),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        varve.projector("sales", Sales),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        varve.external_projector("sink", Sink),
        Err(Error::ReadOnly { .. })
    ));
    // A read model reads (nothing) without writing.
    assert_eq!(
        varve.read_model("sales").unwrap().get_u64(b"x").unwrap(),
        None
    );
    drop((orders, other, varve));
    assert_eq!(
        files(dir.path()),
        before,
        "a read-only open changed the store's files"
    );
}

#[test]
fn a_read_only_open_creates_no_directory_and_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let result = Varve::open_read_only(&missing);
    assert!(
        matches!(&result, Err(Error::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
        "{result:?}"
    );
    assert!(!missing.exists());
    let result = Varve::open_read_only(dir.path());
    assert!(
        matches!(&result, Err(Error::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
        "{result:?}"
    );
    assert!(
        files(dir.path()).is_empty(),
        "{:?}",
        files(dir.path()).keys()
    );
}

#[test]
fn an_old_store_without_identity_record_is_not_given_one_by_a_read_only_open() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let data = std::fs::read(dir.path().join("data.mdb")).unwrap();
    let varve = Varve::open_read_only(dir.path()).unwrap();
    let end = varve.global_reader().end().unwrap();
    assert!(end.0 > 0);
    assert_eq!(
        varve
            .global_reader()
            .iter_from(GlobalSequence(0))
            .unwrap()
            .count() as u64,
        end.0
    );
    drop(varve);
    assert!(!dir.path().join("varvedb.id").exists());
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), data);
}

#[test]
fn a_process_cannot_hold_one_store_both_read_only_and_writable() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1);
    let writer = Varve::new(dir.path()).unwrap();
    let result = Varve::open_read_only(dir.path());
    assert!(
        matches!(
            &result,
            Err(Error::ConfigConflict {
                field: "read_only",
                ..
            })
        ),
        "{result:?}"
    );
    drop(writer);
    let reader = Varve::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        Varve::new(dir.path()),
        Err(Error::ConfigConflict {
            field: "read_only",
            ..
        })
    ));
    // A second read-only open shares the first.
    assert_eq!(
        Varve::open_read_only(dir.path()).unwrap().path(),
        reader.path()
    );
}

/// Two stores the unprivileged user `nobody` may read but not write: one
/// whose lock file exists (read-only for it), one without a lock file in a
/// directory it cannot write. As root the check runs in a copy of this test
/// binary dropped to uid 65534; if privileges cannot be dropped, it fails.
#[test]
fn a_store_in_a_directory_the_process_cannot_write_opens_read_only() {
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the unprivileged case is the one this process already is");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_lock = dir.path().join("with-lock");
    let without_lock = dir.path().join("without-lock");
    fill(&with_lock, 12);
    fill(&without_lock, 12);
    std::fs::remove_file(without_lock.join("lock.mdb")).unwrap();
    for store in [&with_lock, &without_lock] {
        for entry in std::fs::read_dir(store).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        std::fs::set_permissions(store, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let before = (files(&with_lock), files(&without_lock));
    let exe = dir.path().join("read-only-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(&exe);
    command
        .args([
            "--ignored",
            "--exact",
            "a_child_reads_stores_it_cannot_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD,
            format!("{}\n{}", with_lock.display(), without_lock.display()),
        );
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    let out = command.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.matches("@@ read 12 events").count() == 2,
        "the unprivileged child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((files(&with_lock), files(&without_lock)), before);
    for store in [&with_lock, &without_lock] {
        std::fs::set_permissions(store, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
#[ignore = "child process of a_store_in_a_directory_the_process_cannot_write_opens_read_only"]
fn a_child_reads_stores_it_cannot_write() {
    let Ok(paths) = std::env::var(CHILD) else {
        return;
    };
    // SAFETY: `geteuid` has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for path in paths.lines().map(PathBuf::from) {
        assert!(
            Varve::new(&path).is_err(),
            "uid {uid} could open {path:?} for writing"
        );
        let varve = Varve::open_read_only(&path).unwrap();
        check_all(&varve, 12);
        assert!(varve.verify().unwrap().is_ok());
        let mut orders = varve.stream::<Order, 64>("orders").unwrap();
        assert!(matches!(
            orders.append(StreamId(0), &Order::numbered(1)),
            Err(Error::ReadOnly { .. })
        ));
        println!("@@ read 12 events as uid {uid}");
    }
}

/// Events per commit of the live writer; every commit is one batch.
const BATCH: u64 = 5;
const WRITER_COMMITS: u64 = 2000;

/// A writer in another process appends batches (growing a tiny map many
/// times) while this process, read-only, reads the log again and again: each
/// read sees a prefix of whole batches, dense, every event the one written
/// at its position, and an end that never moves back.
#[test]
fn a_read_only_inspector_beside_a_live_writer_sees_whole_commits_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_batch_writer(dir.path());

    // A map as small as the writer's: the writer grows the file past it
    // again and again, and this process adopts each size (MDB_MAP_RESIZED).
    let config = VarveConfig {
        map_size: 64 * 1024,
        ..VarveConfig::default()
    };
    let varve = Varve::open_read_only_with_config(dir.path(), config).unwrap();
    let mut last_end = 0;
    let mut reads = 0u64;
    let total = BATCH * WRITER_COMMITS;
    while last_end < total {
        let log = varve.global_reader();
        let mut iter = log.iter_from(GlobalSequence(0)).unwrap();
        let mut seen = 0u64;
        for event in iter.by_ref() {
            let event = event.unwrap();
            assert_eq!(event.global_sequence(), GlobalSequence(seen));
            assert_eq!(event.archived::<Order>().unwrap().id, seen);
            seen += 1;
        }
        assert_eq!(seen % BATCH, 0, "a snapshot saw part of a batch: {seen}");
        assert!(seen >= last_end, "the end moved back: {seen} < {last_end}");
        last_end = seen;
        reads += 1;
    }
    assert!(varve.verify().unwrap().is_ok());
    let status = child.wait().unwrap();
    assert!(status.success(), "writer: {status}");
    assert!(reads > 1);
}

/// Starts `a_child_writes_batches` on a new store in `dir` and returns once
/// its first commit landed.
fn spawn_batch_writer(dir: &Path) -> std::process::Child {
    fill(dir, 0);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "a_child_writes_batches",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Wait for the first commit, so the store exists.
    let started = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("@@ started")));
    assert!(started.is_some(), "the writer did not start");
    // Keep draining the writer's output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Opening a store, read-only or writable, while a writer in another process
/// grows its map: the map size LMDB reads when it opens the environment can
/// be stale by the first transaction (`MDB_MAP_RESIZED`). Every open adopts
/// the new size and succeeds; CI once failed here, on the read-only open.
#[test]
fn opening_beside_a_writer_that_grows_the_map_never_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_batch_writer(dir.path());
    let config = VarveConfig {
        map_size: 64 * 1024,
        ..VarveConfig::default()
    };
    let total = BATCH * WRITER_COMMITS;
    let mut opens = 0u64;
    let mut last_end = 0;
    while last_end < total {
        let end = {
            let varve = Varve::open_read_only_with_config(dir.path(), config.clone())
                .unwrap_or_else(|e| panic!("read-only open {opens}: {e}"));
            varve.global_reader().end().unwrap().0
        };
        assert!(end >= last_end && end % BATCH == 0, "{last_end} then {end}");
        last_end = end;
        let varve = Varve::with_config(dir.path(), config.clone())
            .unwrap_or_else(|e| panic!("writable open {opens}: {e}"));
        assert!(varve.global_reader().end().unwrap().0 >= end);
        drop(varve);
        opens += 1;
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "writer: {status}");
    assert!(opens > 1, "the writer finished before a second open");
}

#[test]
#[ignore = "child process of a_read_only_inspector_beside_a_live_writer_sees_whole_commits_only"]
fn a_child_writes_batches() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let config = VarveConfig {
        map_size: 64 * 1024,
        durability: varvedb::Durability::NoSync,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(&path, config).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    let mut n = 0;
    for k in 0..WRITER_COMMITS {
        let batch: Vec<Order> = (n..n + BATCH).map(Order::numbered).collect();
        orders.append_batch(StreamId(k % 4), &batch).unwrap();
        n += BATCH;
        if k == 0 {
            println!("@@ started");
        }
    }
}

#[test]
fn a_store_from_before_event_ids_opens_read_only_without_them_and_reads_them_as_empty() {
    // The format-1 fixture predates the `ids` and `keys` databases; a
    // read-only open must not create them (nor anything else).
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let data = std::fs::read(dir.path().join("data.mdb")).unwrap();
    let varve = Varve::open_read_only(dir.path()).unwrap();
    let mut log = varve.global_reader();
    assert!(log
        .get_by_id(varvedb::EventId::from_u128(1))
        .unwrap()
        .is_none());
    let first = log
        .get(GlobalSequence(0))
        .unwrap()
        .expect("the fixture has events");
    assert!(first.metadata().is_empty());
    assert!(varve.verify().unwrap().is_ok());
    drop(log);
    drop(varve);
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), data);
}
