//! PostgreSQL reliability: the server stopped abruptly (`pg_ctl stop -m
//! immediate`, as a crash or a failover) in the middle of a load, then
//! restarted. No acknowledged event is lost, no batch is partial, no global
//! sequence is skipped; the clients get typed errors while the server is
//! down and recover by themselves once it is back (an append whose commit
//! answer was lost is retried with its event ids and answered idempotently,
//! never written twice); a subscription delivers every event once, in
//! order, across the outage.
//!
//! Each test has a cluster of its own (`varvedb_suite::pg::private_cluster`):
//! stopping the shared one would break the other tests. Skipped without
//! `initdb`/`pg_ctl`, unless `VARVEDB_REQUIRE_POSTGRES=1`.
//! `VARVEDB_RESTART_CYCLES` sets the number of stop/restart cycles (3).
//!
//! The application-side kill loop (kill -9 of a process mid-append) is in
//! `tests/conformance.rs`, run against every backend.
#![cfg(feature = "postgres")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use varvedb::{Append, Error, EventId, GlobalSequence, StreamId, Varve};
use varvedb_suite::checks::{batch, dense_log, order_notes, whole_batches};
use varvedb_suite::pg;

const DEADLINE: Duration = Duration::from_secs(120);

fn cycles() -> u64 {
    std::env::var("VARVEDB_RESTART_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3)
}

/// The event ids of batch `b` of writer `w`: the same on every retry.
fn batch_ids(w: u64, b: u64, n: u64) -> Vec<EventId> {
    (0..n)
        .map(|i| {
            EventId::from_u128(
                (1u128 << 127) | ((w as u128) << 64) | ((b as u128) << 8) | i as u128,
            )
        })
        .collect()
}

/// What the writers saw: acknowledged batches `(w, b, first global, n)`,
/// retries answered idempotently, and the errors met while the server was down.
#[derive(Default)]
struct Seen {
    acks: Vec<(u64, u64, u64, u64)>,
    idempotent: u64,
    errors: BTreeSet<String>,
}

/// Errors that must never come from an outage: they would mean the store
/// mistook a lost connection for a conflict or damage.
fn assert_outage_error(e: &Error) {
    assert!(
        !matches!(
            e,
            Error::VersionConflict { .. }
                | Error::EventIdConflict { .. }
                | Error::DuplicateEventId { .. }
                | Error::Corruption { .. }
        ),
        "an outage reported as {e}"
    );
}

fn writer(
    varve: Varve,
    w: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    progress: Arc<AtomicU64>,
) {
    let mut orders = varve
        .stream::<varvedb_suite::Order, 256>("orders")
        .expect("open");
    let deadline = Instant::now() + DEADLINE;
    let mut b = 0;
    while !stop.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "writer {w} did not recover");
        let n = 1 + (w + b) % 5;
        let events = batch(w, b, n);
        let ids = batch_ids(w, b, n);
        // Retry the same batch, with the same ids, until it is acknowledged.
        loop {
            assert!(Instant::now() < deadline, "writer {w} did not recover");
            match orders.append_batch_with(StreamId(w % 3), &events, Append::new().event_ids(&ids))
            {
                Ok(done) => {
                    let first = done.first().expect("positions").1 .0;
                    let mut seen = seen.lock().unwrap();
                    seen.acks.push((w, b, first, n));
                    seen.idempotent += u64::from(done.is_idempotent());
                    progress.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                Err(e) => {
                    assert_outage_error(&e);
                    seen.lock()
                        .unwrap()
                        .errors
                        .insert(format!("{e:?}").chars().take(60).collect());
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        b += 1;
    }
}

fn wait_for(progress: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + DEADLINE;
    while progress.load(Ordering::Acquire) < at_least {
        assert!(
            Instant::now() < deadline,
            "no progress: {} batches",
            progress.load(Ordering::Acquire)
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_server_stopped_abruptly_mid_load_loses_no_acknowledged_event() {
    let Some(cluster) = pg::private_cluster("server_stopped_mid_load") else {
        return;
    };
    let db = cluster
        .fresh_database("stopped_mid_load")
        .expect("a database");
    let varve = Varve::connect(db.url()).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let progress = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (varve, stop, seen, progress) = (
                varve.clone(),
                Arc::clone(&stop),
                Arc::clone(&seen),
                Arc::clone(&progress),
            );
            thread::spawn(move || writer(varve, w, stop, seen, progress))
        })
        .collect();

    for cycle in 0..cycles() {
        wait_for(&progress, progress.load(Ordering::Acquire) + 20);
        cluster.stop_immediate().expect("stop the server");
        thread::sleep(Duration::from_millis(300));
        cluster.start_again().expect("restart the server");
        // The clients recover by themselves: appends go through again.
        wait_for(&progress, progress.load(Ordering::Acquire) + 20);
        eprintln!(
            "cycle {cycle}: {} batches acknowledged",
            progress.load(Ordering::Acquire)
        );
    }
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().expect("writer");
    }

    let seen = seen.lock().unwrap();
    assert!(!seen.errors.is_empty(), "the outages were noticed");
    eprintln!(
        "errors while down: {:?}; idempotent retries: {}",
        seen.errors, seen.idempotent
    );
    // A fresh handle sees every acknowledged batch, whole, where it was
    // acknowledged, each once; the log is dense.
    drop(varve);
    let varve = Varve::connect(db.url()).expect("reconnect");
    let events = dense_log(&varve);
    let notes = order_notes(&events);
    let batches = whole_batches(&notes);
    for &(w, b, first, n) in &seen.acks {
        assert_eq!(
            batches.get(&(w, b)),
            Some(&first),
            "batch w{w} b{b} lost or moved"
        );
        for i in 0..n {
            assert_eq!(notes[&(first + i)], format!("w{w} b{b} {i}/{n}"));
        }
    }
    assert_eq!(
        batches.len(),
        seen.acks.len(),
        "only acknowledged batches, each once"
    );
    assert_eq!(varve.global_reader().end().unwrap().0, events.len() as u64);
}

#[test]
fn a_subscription_delivers_every_event_once_across_a_server_restart() {
    let Some(cluster) = pg::private_cluster("subscription_across_restart") else {
        return;
    };
    let db = cluster
        .fresh_database("subscription_restart")
        .expect("a database");
    let varve = Varve::connect(db.url()).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let progress = Arc::new(AtomicU64::new(0));
    // The log's final length, once the writer has stopped.
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let subscriber = {
        let varve = varve.clone();
        let target = Arc::clone(&target);
        thread::spawn(move || {
            let mut sub = varve.subscribe(GlobalSequence(0));
            let mut got = Vec::new();
            let mut errors = 0u64;
            let deadline = Instant::now() + DEADLINE;
            loop {
                assert!(
                    Instant::now() < deadline,
                    "the subscription stalled at {}",
                    got.len()
                );
                match sub.next_timeout(Duration::from_millis(200)) {
                    Ok(Some(e)) => got.push(e.global_sequence().0),
                    Ok(None) if got.len() as u64 >= target.load(Ordering::Acquire) => {
                        return (got, errors)
                    }
                    Ok(None) => {}
                    Err(e) => {
                        assert_outage_error(&e);
                        errors += 1;
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
    };
    let writer = {
        let (varve, stop, seen, progress) = (
            varve.clone(),
            Arc::clone(&stop),
            Arc::clone(&seen),
            Arc::clone(&progress),
        );
        thread::spawn(move || writer(varve, 0, stop, seen, progress))
    };
    wait_for(&progress, 20);
    cluster.stop_immediate().expect("stop the server");
    thread::sleep(Duration::from_millis(300));
    cluster.start_again().expect("restart the server");
    wait_for(&progress, progress.load(Ordering::Acquire) + 20);
    stop.store(true, Ordering::Release);
    writer.join().expect("writer");
    let final_end = Varve::connect(db.url())
        .unwrap()
        .global_reader()
        .end()
        .unwrap()
        .0;
    target.store(final_end, Ordering::Release);
    let (got, errors) = subscriber.join().expect("subscriber");
    eprintln!("subscription errors while down: {errors}");
    assert_eq!(
        got,
        (0..final_end).collect::<Vec<_>>(),
        "every event once, in order"
    );
    dense_log(&varve);
}

/// The tables of a store, for [`a_writer_never_trusts_what_it_knew_before_commits_were_lost`].
const TABLES: [&str; 11] = [
    "varvedb_head",
    "varvedb_events",
    "varvedb_streams",
    "varvedb_meta",
    "varvedb_catalog",
    "varvedb_index",
    "varvedb_state",
    "varvedb_ids",
    "varvedb_keys",
    "varvedb_chain",
    "varvedb_seals",
];

/// Keeps a copy of every table of the store in `url` (what a server that
/// loses the commits after this one comes back with).
fn save_tables(url: &str) {
    for t in TABLES {
        pg::admin(url, &format!("CREATE TABLE saved_{t} AS TABLE {t}")).unwrap();
    }
}

/// Puts back the tables [`save_tables`] kept: the commits since are lost.
/// Row by row (`DELETE`, not `TRUNCATE`, which would wait for every open
/// snapshot).
fn restore_tables(url: &str) {
    let mut restore = String::from("BEGIN;");
    for t in TABLES {
        restore.push_str(&format!(
            "DELETE FROM {t}; INSERT INTO {t} SELECT * FROM saved_{t};"
        ));
    }
    restore.push_str("COMMIT;");
    pg::admin(url, &restore).unwrap();
}

/// The server loses its last commit (a crash with a relaxed `Durability`,
/// i.e. `synchronous_commit = off`, or a failover to an asynchronous
/// standby): the database is back at an earlier commit and the server
/// restarts. The commit counter then runs again through numbers a live
/// writer has seen, so what that writer knew of the tables (carried from
/// its last commit, tagged with the counter) must not be trusted: here it
/// would take stream id 1 to have 2 events when it has 1, accept an
/// expected version that is wrong, and extend the stream's index run over
/// another stream id's event.
#[test]
fn a_writer_never_trusts_what_it_knew_before_commits_were_lost() {
    use varvedb::{ExpectedVersion, StreamSequence};
    let Some(cluster) = pg::private_cluster("lost_commits") else {
        return;
    };
    let db = cluster.fresh_database("lost_commits").expect("a database");
    let a = Varve::connect(db.url()).expect("connect a");
    // The other process opens before the commit that is lost (opening
    // commits too).
    let b = Varve::connect(db.url()).expect("connect b");
    let mut orders = a.stream::<varvedb_suite::Order, 256>("orders").unwrap();
    orders
        .append(StreamId(1), &varvedb_suite::Order::numbered(0))
        .unwrap();
    // What the server will keep: the state after that commit.
    save_tables(db.url());
    orders
        .append(StreamId(1), &varvedb_suite::Order::numbered(1))
        .unwrap();
    // The server loses that last commit and restarts.
    restore_tables(db.url());
    cluster.stop_immediate().expect("stop the server");
    cluster.start_again().expect("restart the server");
    // Another process commits once: the counter is back where `a` left it.
    let mut others = b.stream::<varvedb_suite::Order, 256>("orders").unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match others.append(StreamId(2), &varvedb_suite::Order::numbered(2)) {
            Ok(_) => break,
            Err(e) => {
                assert_outage_error(&e);
                assert!(Instant::now() < deadline, "b did not recover: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Stream id 1 has one event (version 0): expecting version 1 conflicts.
    let outcome = loop {
        match orders.append_expected(
            StreamId(1),
            &varvedb_suite::Order::numbered(3),
            ExpectedVersion::Exact(StreamSequence(1)),
        ) {
            Err(e @ Error::Storage { .. }) => {
                assert!(Instant::now() < deadline, "a did not recover: {e}");
                thread::sleep(Duration::from_millis(50));
            }
            other => break other,
        }
    };
    assert!(
        matches!(outcome, Err(Error::VersionConflict { .. })),
        "an append expecting a version the stream never reached: {outcome:?}"
    );
    let fresh = Varve::connect(db.url()).unwrap();
    let mut reader = fresh
        .stream::<varvedb_suite::Order, 256>("orders")
        .unwrap()
        .reader();
    assert_eq!(
        reader.version(StreamId(1)).unwrap(),
        Some(StreamSequence(0))
    );
    assert_eq!(
        reader.version(StreamId(2)).unwrap(),
        Some(StreamSequence(0))
    );
    dense_log(&fresh);
}

/// As [`a_writer_never_trusts_what_it_knew_before_commits_were_lost`], for
/// the stream's tag a handle learnt in the lost commit that created its
/// stream: after the loss another process creates another stream, which
/// gets that tag. The handle must not append its events to that stream.
#[test]
fn a_stream_created_in_a_lost_commit_is_not_confused_with_the_next_one() {
    let Some(cluster) = pg::private_cluster("lost_stream") else {
        return;
    };
    let db = cluster.fresh_database("lost_stream").expect("a database");
    let a = Varve::connect(db.url()).expect("connect a");
    let b = Varve::connect(db.url()).expect("connect b");
    save_tables(db.url());
    let mut orders = a.stream::<varvedb_suite::Order, 256>("orders").unwrap();
    orders
        .append(StreamId(1), &varvedb_suite::Order::numbered(0))
        .unwrap();
    restore_tables(db.url());
    cluster.stop_immediate().expect("stop the server");
    cluster.start_again().expect("restart the server");
    let deadline = Instant::now() + DEADLINE;
    let mut payments = b.stream::<varvedb_suite::Order, 256>("payments").unwrap();
    while let Err(e) = payments.append(StreamId(1), &varvedb_suite::Order::numbered(1)) {
        assert_outage_error(&e);
        assert!(Instant::now() < deadline, "b did not recover: {e}");
        thread::sleep(Duration::from_millis(50));
    }
    while let Err(e) = orders.append(StreamId(1), &varvedb_suite::Order::numbered(2)) {
        assert_outage_error(&e);
        assert!(Instant::now() < deadline, "a did not recover: {e}");
        thread::sleep(Duration::from_millis(50));
    }
    let fresh = Varve::connect(db.url()).unwrap();
    let version = |name: &str| {
        fresh
            .stream::<varvedb_suite::Order, 256>(name)
            .unwrap()
            .reader()
            .version(StreamId(1))
            .unwrap()
    };
    use varvedb::StreamSequence;
    assert_eq!(
        version("payments"),
        Some(StreamSequence(0)),
        "payments got orders' event"
    );
    assert_eq!(version("orders"), Some(StreamSequence(0)));
}

/// A live subscription, after the server lost its last commit (see
/// [`a_writer_never_trusts_what_it_knew_before_commits_were_lost`]): the
/// event it delivered is gone, and the next one committed (durably) takes
/// its global sequence. The subscription must not skip that event: it
/// fails with [`Error::CommitsLost`], which says where to resubscribe, and
/// a subscription from there delivers it.
#[test]
fn a_subscription_does_not_skip_events_that_reuse_lost_sequences() {
    let Some(cluster) = pg::private_cluster("lost_subscribed") else {
        return;
    };
    let db = cluster
        .fresh_database("lost_subscribed")
        .expect("a database");
    let a = Varve::connect(db.url()).expect("connect a");
    let b = Varve::connect(db.url()).expect("connect b");
    let mut orders = a.stream::<varvedb_suite::Order, 256>("orders").unwrap();
    orders
        .append(StreamId(1), &varvedb_suite::Order::numbered(0))
        .unwrap();
    save_tables(db.url());
    let mut sub = a.subscribe(GlobalSequence(0));
    orders
        .append(StreamId(1), &varvedb_suite::Order::numbered(1))
        .unwrap();
    for g in 0..2 {
        let e = sub.next_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(e.global_sequence().0, g);
    }
    restore_tables(db.url());
    cluster.stop_immediate().expect("stop the server");
    cluster.start_again().expect("restart the server");
    let deadline = Instant::now() + DEADLINE;
    let mut others = b.stream::<varvedb_suite::Order, 256>("orders").unwrap();
    while let Err(e) = others.append(StreamId(2), &varvedb_suite::Order::numbered(2)) {
        assert_outage_error(&e);
        assert!(Instant::now() < deadline, "b did not recover: {e}");
        thread::sleep(Duration::from_millis(50));
    }
    // The subscription is told the event it delivered at 1 is gone.
    let got = loop {
        match sub.next_timeout(Duration::from_secs(5)) {
            Err(e @ Error::Storage { .. }) if Instant::now() < deadline => {
                assert_outage_error(&e);
                thread::sleep(Duration::from_millis(50));
            }
            other => break other,
        }
    };
    let resume = match got {
        Err(Error::CommitsLost {
            delivered,
            end,
            resume,
        }) => {
            assert_eq!((delivered, end), (GlobalSequence(1), GlobalSequence(2)));
            resume
        }
        Ok(Some(e)) => panic!("delivered {:?} without a word", e.global_sequence()),
        Ok(None) => panic!("the subscription skipped the durable event at global 1"),
        Err(e) => panic!("{e:?}"),
    };
    assert_eq!(resume, GlobalSequence(1));
    let message = sub.next_timeout(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(message, Error::CommitsLost { .. })
            && message.to_string().contains("lost commits")
            && message
                .to_string()
                .contains("resubscribe from global sequence 1"),
        "it stays failed, and says why and from where: {message}"
    );
    // From there, the durable event at 1 (stream id 2) is delivered.
    let mut again = a.subscribe(resume);
    let e = again
        .next_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the new event at 1");
    assert_eq!(
        (e.global_sequence(), e.stream_id()),
        (GlobalSequence(1), StreamId(2))
    );
}
