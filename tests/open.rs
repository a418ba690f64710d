//! Opening a store: bad paths, a second open in the same process, a store of
//! another format and a damaged data file all give typed errors, never panics.

use std::path::Path;

use heed::types::Bytes;
use varvedb::{Error, StreamId, StreamSequence, Varve, VarveConfig};
use varvedb_suite::Order;

#[test]
fn a_path_that_is_a_file_is_not_a_directory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    assert!(matches!(
        Varve::new(file.path()),
        Err(Error::NotADirectory { .. })
    ));
}

#[test]
fn a_directory_that_cannot_be_created_is_an_open_error_naming_it() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside = file.path().join("store");
    match Varve::new(&inside) {
        Err(Error::Open { path, .. }) => assert_eq!(path, inside),
        other => panic!("expected Error::Open, got {other:?}"),
    }
}

#[cfg(unix)]
const PERMISSION_CHILD: &str = "VARVEDB_PERMISSION_CHILD";

/// A directory the store may not enter is an `Error::Open`. Root ignores
/// permission bits, so as root (as in CI) the check runs in a child process
/// of this test binary dropped to the unprivileged user `nobody` (65534); if
/// privileges cannot be dropped, the test fails rather than pass untested.
#[cfg(unix)]
#[test]
fn a_directory_without_permission_is_an_open_error() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    // `nobody` must be able to reach `locked` (and run the binary below).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    // SAFETY: `geteuid` has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let result = Varve::new(&locked);
        assert!(
            matches!(&result, Err(Error::Open { path, .. }) if path.starts_with(&locked)),
            "{result:?}"
        );
        return;
    }
    // The test binary may sit under a directory `nobody` cannot enter: run a
    // copy from the (now world-readable) temporary directory.
    let exe = dir.path().join("open-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "a_child_cannot_open_a_directory_without_permission",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PERMISSION_CHILD, &locked)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the permission check as the unprivileged user nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("@@ refused as uid 65534"),
        "the unprivileged child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Not a test on its own: the unprivileged child of
/// `a_directory_without_permission_is_an_open_error`, which runs it with
/// `--ignored --exact`; without the variable set it fails.
#[cfg(unix)]
#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_cannot_open_a_directory_without_permission() {
    let Some(locked) = std::env::var_os(PERMISSION_CHILD) else {
        panic!("not a test on its own: run by a_directory_without_permission_is_an_open_error, which sets {PERMISSION_CHILD}");
    };
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_ne!(uid, 0, "the child must run unprivileged");
    let locked = Path::new(&locked);
    let result = Varve::new(locked);
    match &result {
        Err(Error::Open { path, source }) => {
            // The directory, or the file in it that could not be read.
            assert!(path.starts_with(locked), "{path:?} is not in {locked:?}");
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{source}"
            );
        }
        other => panic!("expected Error::Open, got {other:?}"),
    }
    println!("@@ refused as uid {uid}: {}", result.unwrap_err());
}

#[test]
fn opening_the_same_store_twice_in_one_process_shares_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Varve::new(dir.path()).unwrap();
    let b = Varve::with_config(dir.path(), VarveConfig::default()).unwrap();
    a.stream::<Order, 64>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(5))
        .unwrap();
    let mut reader = b.stream::<Order, 64>("orders").unwrap().reader();
    assert_eq!(
        reader
            .get_archived(StreamId(1), StreamSequence(0))
            .unwrap()
            .unwrap()
            .id,
        5
    );
    drop((a, b, reader));
    // After every handle is gone, the store can be opened afresh.
    let c = Varve::new(dir.path()).unwrap();
    assert_eq!(c.global_reader().end().unwrap().0, 1);
}

fn poke_meta(path: &Path, key: &[u8], value: &[u8]) {
    // SAFETY: the test owns the store directory and no varvedb handle is open.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).open(path) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let meta = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let db = opener
                .database_options()
                .types::<Bytes, Bytes>()
                .name("meta")
                .create(wtxn)?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, key, value).unwrap();
    wtxn.commit().unwrap();
}

#[test]
fn a_store_of_an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Varve::new(dir.path()).unwrap());
    poke_meta(dir.path(), b"format", &99u32.to_le_bytes());
    match Varve::new(dir.path()) {
        Err(Error::UnsupportedFormat {
            found: 99,
            supported: 4,
            ..
        }) => {}
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
}

#[test]
fn a_store_written_with_another_rkyv_encoding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Varve::new(dir.path()).unwrap());
    poke_meta(dir.path(), b"rkyv-probe", b"bytes from a big-endian build");
    assert!(matches!(
        Varve::new(dir.path()),
        Err(Error::IncompatibleEncoding { .. })
    ));
}

#[test]
fn a_garbage_data_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.mdb"), vec![0xA5u8; 64 * 1024]).unwrap();
    let err = Varve::new(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Corruption { .. } | Error::Storage { .. }),
        "{err:?}"
    );
}

/// Opens the store's files with `heed` directly, as another tool would right
/// after the last handle's drop returned: heed refuses (`EnvAlreadyOpened`)
/// an environment this process still has open.
fn open_as_another_tool(dir: &Path) -> heed::Result<()> {
    // SAFETY: the caller dropped every varvedb handle of `dir` (the drops
    // returned), and this environment is closed before this returns.
    unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir) }.map(drop)
}

/// A new store (closed again) holding one order.
fn a_store_with_one_order() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Varve::new(dir.path())
        .unwrap()
        .stream::<Order, 128>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(1))
        .unwrap();
    dir
}

/// The last handle's drop closes the store before it returns, whatever other
/// threads open meanwhile: the files can then be opened by another tool (here
/// `heed` itself, which refuses an environment this process still has open).
/// Another thread opening other stores (each open looks at every live store)
/// once held this store for a moment, so the environment closed on that
/// thread, after the drop had returned.
#[test]
fn a_dropped_store_is_closed_when_the_drop_returns_while_other_threads_open_stores() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = a_store_with_one_order();
    let stop = Arc::new(AtomicBool::new(false));
    let openers: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // A directory without a store: each read-only open looks at
                // every live store, then fails (no data file).
                let empty = tempfile::tempdir().unwrap();
                let mut opens = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert!(Varve::open_read_only(empty.path()).is_err());
                    opens += 1;
                }
                opens
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut rounds = 0;
    while rounds < 10_000 && std::time::Instant::now() < deadline {
        drop(Varve::new(dir.path()).unwrap());
        if let Err(e) = open_as_another_tool(dir.path()) {
            stop.store(true, Ordering::Relaxed);
            panic!("round {rounds}: the dropped store is still open: {e:?}");
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let opens: u64 = openers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        rounds >= 100 && opens >= 100,
        "{rounds} rounds, {opens} opens"
    );
}

/// The same with an async subscription that waited: its waker started the
/// thread that looks for other processes' commits (`storage/notify.rs`),
/// which holds the store while it looks. That thread once became the last
/// owner when the drops landed during a look, and closed the environment
/// after the last drop had returned.
#[test]
fn a_dropped_store_is_closed_when_the_drop_returns_after_an_async_subscription_waited() {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use futures_util::Stream;

    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        // The poller looks as often as it may, to meet the drops often.
        cross_process_poll: Some(std::time::Duration::from_millis(1)),
        ..VarveConfig::default()
    };
    Varve::with_config(dir.path(), config.clone())
        .unwrap()
        .stream::<Order, 128>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(1))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut rounds = 0;
    while rounds < 1_000 && std::time::Instant::now() < deadline {
        let varve = Varve::with_config(dir.path(), config.clone()).unwrap();
        let mut waiting = varve.subscribe(varvedb::GlobalSequence(1)).into_async();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut waiting).poll_next(&mut cx),
            Poll::Pending
        ));
        // Drops at varied moments of the poller's period.
        std::thread::sleep(std::time::Duration::from_micros(100 * (rounds % 15)));
        drop(varve);
        drop(waiting);
        if let Err(e) = open_as_another_tool(dir.path()) {
            panic!("round {rounds}: the dropped store is still open: {e:?}");
        }
        rounds += 1;
    }
    assert!(rounds >= 50, "{rounds} rounds");
}

/// The same with a `StopHandle` used on another thread while the last
/// handles drop: `stop` once took the store for a moment, to wake its
/// waiters, so that thread could close the environment after the drop had
/// returned.
#[test]
fn a_dropped_store_is_closed_when_the_drop_returns_while_another_thread_stops_its_subscription() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    let dir = a_store_with_one_order();
    let (handles, stops) = mpsc::channel::<varvedb::StopHandle>();
    let done = Arc::new(AtomicBool::new(false));
    let stopper = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut stops_made = 0u64;
            let mut current = None;
            while !done.load(Ordering::Relaxed) {
                while let Ok(handle) = stops.try_recv() {
                    current = Some(handle);
                }
                if let Some(handle) = &current {
                    handle.stop();
                    stops_made += 1;
                }
            }
            stops_made
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut rounds = 0;
    while rounds < 2_000 && std::time::Instant::now() < deadline {
        let varve = Varve::new(dir.path()).unwrap();
        let subscription = varve.subscribe(varvedb::GlobalSequence(0));
        handles.send(subscription.stop_handle()).unwrap();
        // Let the other thread stop it a few times.
        std::thread::sleep(std::time::Duration::from_micros(50 * (rounds % 7)));
        drop(subscription);
        drop(varve);
        if let Err(e) = open_as_another_tool(dir.path()) {
            done.store(true, Ordering::Relaxed);
            panic!("round {rounds}: the dropped store is still open: {e:?}");
        }
        rounds += 1;
    }
    done.store(true, Ordering::Relaxed);
    let stops_made = stopper.join().unwrap();
    assert!(
        rounds >= 50 && stops_made > 0,
        "{rounds} rounds, {stops_made} stops"
    );
}

/// The same with an async subscription dropped from inside a waker that an
/// append runs (a commit wakes tasks on the committing thread) while the
/// poller may be looking: the drop waits for the look, which must never
/// wait for the appending thread, and the last drops still close the store
/// before they return.
#[test]
fn a_subscription_dropped_by_a_waker_an_append_runs_neither_hangs_nor_closes_late() {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    use futures_util::Stream;
    use varvedb::{AsyncSubscription, GlobalSequence};

    /// Drops the subscription it holds when woken.
    struct DropsOnWake(Mutex<Option<AsyncSubscription>>);

    impl Wake for DropsOnWake {
        fn wake(self: Arc<Self>) {
            drop(self.0.lock().unwrap().take());
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        // The poller looks as often as it may, to meet the drops often.
        cross_process_poll: Some(std::time::Duration::from_millis(1)),
        ..VarveConfig::default()
    };
    for round in 0..200u64 {
        let varve = Varve::with_config(dir.path(), config.clone()).unwrap();
        let mut orders = varve.stream::<Order, 128>("orders").unwrap();
        let mut victim = varve.subscribe(GlobalSequence(round)).into_async();
        assert!(matches!(
            Pin::new(&mut victim).poll_next(&mut Context::from_waker(Waker::noop())),
            Poll::Pending
        ));
        let dropper = Arc::new(DropsOnWake(Mutex::new(Some(victim))));
        let waker = Waker::from(Arc::clone(&dropper));
        let mut woken = varve.subscribe(GlobalSequence(round)).into_async();
        assert!(matches!(
            Pin::new(&mut woken).poll_next(&mut Context::from_waker(&waker)),
            Poll::Pending
        ));
        // Appends at varied moments of the poller's period.
        std::thread::sleep(std::time::Duration::from_micros(100 * (round % 15)));
        orders
            .append(StreamId(1), &Order::numbered(round + 1))
            .unwrap();
        assert!(
            dropper.0.lock().unwrap().is_none(),
            "round {round}: the append woke the task, which dropped the other"
        );
        drop((woken, waker, dropper, orders, varve));
        if let Err(e) = open_as_another_tool(dir.path()) {
            panic!("round {round}: the dropped store is still open: {e:?}");
        }
    }
}

/// The same with a projection thread stopped before the last handle:
/// [`varvedb::ProjectionThread::stop`] waits for the thread, whose handle of
/// the store is gone when it returns. (A projection thread dropped without
/// `stop` finishes on its own and keeps the store open until then, as its
/// documentation says: joining in the drop would hang a caller whose handler
/// waits on it, such as a bounded channel drained after the drop.)
#[test]
fn a_dropped_store_is_closed_when_the_drop_returns_after_its_projection_thread_was_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut orders = Varve::new(dir.path())
        .unwrap()
        .stream::<Order, 128>("orders")
        .unwrap();
    for n in 1..=20 {
        orders.append(StreamId(n % 3), &Order::numbered(n)).unwrap();
    }
    drop(orders);
    for round in 0..50 {
        let varve = Varve::new(dir.path()).unwrap();
        let running = varve
            .projector("sales", varvedb_suite::Sales)
            .unwrap()
            .spawn()
            .unwrap();
        let (_, outcome) = running.stop();
        outcome.unwrap();
        drop(varve);
        if let Err(e) = open_as_another_tool(dir.path()) {
            panic!("round {round}: the store is still open: {e:?}");
        }
    }
}
