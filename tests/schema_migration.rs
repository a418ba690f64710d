//! `Varve::migrate` rewrites every old-version event of a stream into the
//! current version in place without changing what any read returns: the
//! same values, sequences, commit times and folds before and after, through
//! a crash at any moment, beside concurrent appenders and a second
//! migration; afterwards the old versions are retired and a program that no
//! longer knows them reads everything.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use varvedb::{
    Aggregate, Append, Context, CorrelationId, Error, Event, EventId, GlobalSequence,
    MigrateOptions, StreamId, StreamSequence, Upcast, Varve, VarveConfig,
};

/// The first release: cents fit in 32 bits.
mod v1 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u32,
    }
}

/// Version 2: 64-bit cents.
mod v2 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 2, upcast_from = super::v1::OrderPlaced)]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
    }

    impl varvedb::Upcast<super::v1::OrderPlaced> for OrderPlaced {
        fn upcast(old: &super::v1::ArchivedOrderPlaced) -> Self {
            OrderPlaced {
                order: old.order.to_native(),
                cents: u64::from(old.cents.to_native()),
            }
        }
    }
}

/// Version 3: a currency; what the program migrates to.
mod v3 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 3, upcast_from = super::v2::OrderPlaced)]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
        pub currency: [u8; 3],
    }
}

impl Upcast<v2::OrderPlaced> for v3::OrderPlaced {
    fn upcast(old: &v2::ArchivedOrderPlaced) -> Self {
        v3::OrderPlaced {
            order: old.order.to_native(),
            cents: old.cents.to_native() * 10,
            currency: *b"EUR",
        }
    }
}

/// A later build that deleted version 1: version 2's type no longer names
/// an `upcast_from` (the same fields and version, so the same fingerprint),
/// and version 3 upcasts from it.
mod later {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 2)]
    pub struct OrderPlacedV2 {
        pub order: u64,
        pub cents: u64,
    }

    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 3, upcast_from = OrderPlacedV2)]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
        pub currency: [u8; 3],
    }

    impl varvedb::Upcast<OrderPlacedV2> for OrderPlaced {
        fn upcast(old: &ArchivedOrderPlacedV2) -> Self {
            OrderPlaced {
                order: old.order.to_native(),
                cents: old.cents.to_native() * 10,
                currency: *b"EUR",
            }
        }
    }
}

/// The latest build with no older version at all.
mod only {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 3)]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
        pub currency: [u8; 3],
    }
}

/// Another stream between the orders, which a migration must not touch.
#[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
#[event(stream = "payments")]
struct Paid {
    order: u64,
}

/// A fold over the orders of one id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Totals {
    count: u64,
    cents: u64,
    hash: u64,
}

impl Aggregate for Totals {
    type Event = v3::OrderPlaced;
    type Command = ();
    type Error = std::convert::Infallible;

    fn apply(&mut self, e: &v3::ArchivedOrderPlaced) {
        self.count += 1;
        self.cents += e.cents.to_native();
        self.hash = self
            .hash
            .wrapping_mul(31)
            .wrapping_add(e.order.to_native() ^ u64::from(e.currency[0]));
    }

    fn handle(&self, _: &()) -> Result<Vec<v3::OrderPlaced>, Self::Error> {
        Ok(Vec::new())
    }
}

const IDS: u64 = 4;

/// Writes a mixed log: blocks of one to three events of version 1, then of
/// version 2, then of version 3, across `IDS` ids, with payments between.
/// Returns the number of version-1 and version-2 events.
fn write_mixed(varve: &Varve, rounds: u64) -> (u64, u64) {
    let mut payments = varve.events::<Paid>().unwrap();
    let mut old = varve.events::<v1::OrderPlaced>().unwrap();
    let mut n1 = 0;
    for i in 0..rounds {
        let batch: Vec<_> = (0..1 + i % 3)
            .map(|k| v1::OrderPlaced {
                order: i * 10 + k,
                cents: (i * 7 + k) as u32,
            })
            .collect();
        n1 += batch.len() as u64;
        old.append_batch(StreamId(i % IDS), &batch).unwrap();
        payments.append(StreamId(i), &Paid { order: i }).unwrap();
    }
    drop(old);
    let mut mid = varve.events::<v2::OrderPlaced>().unwrap();
    let mut n2 = 0;
    for i in rounds..2 * rounds {
        let batch: Vec<_> = (0..1 + i % 2)
            .map(|k| v2::OrderPlaced {
                order: i * 10 + k,
                cents: i * 1_000_000_007 + k,
            })
            .collect();
        n2 += batch.len() as u64;
        mid.append_batch(StreamId(i % IDS), &batch).unwrap();
        payments.append(StreamId(i), &Paid { order: i }).unwrap();
    }
    drop(mid);
    let mut new = varve.events::<v3::OrderPlaced>().unwrap();
    for i in 2 * rounds..2 * rounds + 3 {
        new.append(
            StreamId(i % IDS),
            &v3::OrderPlaced {
                order: i * 10,
                cents: i,
                currency: *b"USD",
            },
        )
        .unwrap();
    }
    (n1, n2)
}

/// Every event of the log as a program with `E` (a version 3 type) sees it:
/// position, commit time, and for orders the values, for payments the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    stream: String,
    id: u64,
    seq: u64,
    committed_at: SystemTime,
    values: Vec<u64>,
}

trait V3: Event {
    fn values(a: &Self::Archived) -> Vec<u64>;
}

/// The three builds' version 3 are one layout under three types (each a
/// build of its own), read the same way.
macro_rules! v3_values {
    ($($build:ident),*) => {$(
        impl V3 for $build::OrderPlaced {
            fn values(a: &Self::Archived) -> Vec<u64> {
                let c = a.currency;
                vec![
                    a.order.to_native(),
                    a.cents.to_native(),
                    u64::from(c[0]) << 16 | u64::from(c[1]) << 8 | u64::from(c[2]),
                ]
            }
        }
    )*};
}

v3_values!(v3, later, only);

fn seen<E: V3>(varve: &Varve) -> BTreeMap<u64, Seen> {
    let mut log = varve.global_reader();
    let end = log.end().unwrap().0;
    let mut all = BTreeMap::new();
    for g in 0..end {
        let e = log.get(GlobalSequence(g)).unwrap().expect("a dense log");
        let values = if e.stream_name() == "orders" {
            E::values(e.archived::<E>().unwrap())
        } else {
            e.payload().iter().map(|&b| u64::from(b)).collect()
        };
        all.insert(
            g,
            Seen {
                stream: e.stream_name().to_string(),
                id: e.stream_id().0,
                seq: e.stream_sequence().0,
                committed_at: e.committed_at(),
                values,
            },
        );
    }
    // The stream readers agree with the global log.
    let reader = varve.events::<E>().unwrap().reader();
    for id in 0..IDS {
        for item in reader.iter_stream(StreamId(id), None).unwrap() {
            let item = item.unwrap();
            let g = item.global_sequence().0;
            assert_eq!(all[&g].values, E::values(&item), "global {g}");
            assert_eq!(all[&g].seq, item.stream_sequence().0);
        }
    }
    all
}

fn folds(varve: &Varve) -> Vec<Totals> {
    (0..IDS)
        .map(|id| varve.load::<Totals>(StreamId(id)).unwrap().state)
        .collect()
}

#[test]
fn a_mixed_stream_migrates_in_place_and_every_read_and_fold_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::with_config(
        dir.path(),
        VarveConfig {
            map_size: 64 * 1024,
            ..VarveConfig::default()
        },
    )
    .unwrap();
    let (n1, n2) = write_mixed(&varve, 40);
    let before = seen::<v3::OrderPlaced>(&varve);
    let folds_before = folds(&varve);
    assert!(matches!(
        varve.events::<later::OrderPlaced>(),
        Err(Error::SchemaMismatch { .. })
    ));

    let report = varve
        .migrate_with::<v3::OrderPlaced>(MigrateOptions::default().batch_events(5))
        .unwrap();
    assert_eq!(report.stream, "orders");
    assert_eq!(report.events, n1 + n2);
    assert_eq!(report.versions, vec![(1, n1), (2, n2)]);
    assert_eq!(report.blocks, 40 + 40);
    assert_eq!(report.retired, vec![1, 2]);
    // A batch stops once it rewrote 5 events; a block (up to 3) is never split.
    assert!(report.batches >= (n1 + n2) / 7, "{report:?}");
    assert!(report.verify.is_ok(), "{:?}", report.verify);

    assert_eq!(seen::<v3::OrderPlaced>(&varve), before);
    assert_eq!(folds(&varve), folds_before);
    assert!(varve.verify().unwrap().is_ok());

    // Nothing is left to do: a second run rewrites and retires nothing.
    let again = varve.migrate::<v3::OrderPlaced>().unwrap();
    assert_eq!((again.events, again.blocks, again.retired.len()), (0, 0, 0));

    // After reopening too.
    drop(varve);
    let varve = Varve::new(dir.path()).unwrap();
    assert_eq!(seen::<v3::OrderPlaced>(&varve), before);
    assert_eq!(folds(&varve), folds_before);
}

#[test]
fn after_a_migration_a_build_without_the_retired_versions_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    write_mixed(&varve, 12);
    let before = seen::<v3::OrderPlaced>(&varve);
    // Opened (and cached) before the migration: the old versions are not retired yet.
    assert!(matches!(
        varve.events::<only::OrderPlaced>(),
        Err(Error::SchemaMismatch { .. })
    ));
    varve.migrate::<v3::OrderPlaced>().unwrap();

    // In the same process, whose catalog cache saw the family before.
    assert_eq!(seen::<later::OrderPlaced>(&varve), before);
    assert_eq!(seen::<only::OrderPlaced>(&varve), before);

    // In another process (a fresh open), which never knew version 1.
    let other = Varve::new(dir.path()).unwrap();
    drop(varve);
    assert_eq!(seen::<only::OrderPlaced>(&other), before);
    let mut orders = other.events::<only::OrderPlaced>().unwrap();
    orders
        .append(
            StreamId(0),
            &only::OrderPlaced {
                order: 1,
                cents: 2,
                currency: *b"CHF",
            },
        )
        .unwrap();
    assert!(other.verify().unwrap().is_ok());
}

#[test]
fn an_older_build_cannot_append_once_a_migration_recorded_the_newer_version() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    varve
        .events::<v1::OrderPlaced>()
        .unwrap()
        .append(StreamId(1), &v1::OrderPlaced { order: 1, cents: 2 })
        .unwrap();
    let mut older = varve.events::<v2::OrderPlaced>().unwrap();
    varve.migrate::<v3::OrderPlaced>().unwrap();
    assert!(matches!(
        older.append(StreamId(1), &v2::OrderPlaced { order: 2, cents: 3 }),
        Err(Error::OutdatedEventVersion {
            newest: 3,
            program: 2,
            ..
        })
    ));
    // And migrating "back" to version 2 is refused before anything is written.
    assert!(matches!(
        varve.migrate::<v2::OrderPlaced>(),
        Err(Error::OutdatedEventVersion { .. })
    ));
    let read = varve
        .events::<v3::OrderPlaced>()
        .unwrap()
        .reader()
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .map(|e| (e.order.to_native(), e.cents.to_native(), e.currency));
    assert_eq!(read, Some((1, 20, *b"EUR")));
}

#[test]
fn a_stream_that_does_not_exist_migrates_to_an_empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let report = varve.migrate::<v3::OrderPlaced>().unwrap();
    assert_eq!((report.events, report.blocks, report.batches), (0, 0, 0));
    assert!(report.verify.is_ok());
}

#[test]
fn a_migration_beside_concurrent_appenders_and_a_second_migration_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::with_config(
        dir.path(),
        VarveConfig {
            map_size: 64 * 1024,
            ..VarveConfig::default()
        },
    )
    .unwrap();
    let (n1, n2) = write_mixed(&varve, 60);
    let before = seen::<v3::OrderPlaced>(&varve);
    let end_before = before.len() as u64;

    const APPENDS: u64 = 150;
    let appenders: Vec<_> = (0..2u64)
        .map(|w| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                let mut orders = varve.events::<v3::OrderPlaced>().unwrap();
                let mut payments = varve.events::<Paid>().unwrap();
                for i in 0..APPENDS {
                    let order = 1_000_000 + w * 10_000 + i;
                    orders
                        .append(
                            StreamId(order % IDS),
                            &v3::OrderPlaced {
                                order,
                                cents: order * 3,
                                currency: *b"GBP",
                            },
                        )
                        .unwrap();
                    payments.append(StreamId(order), &Paid { order }).unwrap();
                }
            })
        })
        .collect();
    let migrations: Vec<_> = (0..2)
        .map(|_| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                varve
                    .migrate_with::<v3::OrderPlaced>(MigrateOptions::default().batch_events(2))
                    .unwrap()
            })
        })
        .collect();
    for a in appenders {
        a.join().unwrap();
    }
    let reports: Vec<_> = migrations.into_iter().map(|m| m.join().unwrap()).collect();

    // Every old event was rewritten exactly once, by one migration or the other.
    let total: u64 = reports.iter().map(|r| r.events).sum();
    assert_eq!(total, n1 + n2, "{reports:?}");
    for r in &reports {
        assert!(r.verify.is_ok(), "{:?}", r.verify);
    }

    let after = seen::<v3::OrderPlaced>(&varve);
    assert_eq!(after.len() as u64, end_before + 2 * 2 * APPENDS);
    for (g, s) in &before {
        assert_eq!(&after[g], s, "global {g}");
    }
    let mut appended: Vec<u64> = after
        .range(end_before..)
        .filter(|(_, s)| s.stream == "orders")
        .map(|(_, s)| {
            assert_eq!(s.values[1], s.values[0] * 3);
            s.values[0]
        })
        .collect();
    appended.sort_unstable();
    let expected: Vec<u64> = (0..2)
        .flat_map(|w| (0..APPENDS).map(move |i| 1_000_000 + w * 10_000 + i))
        .collect();
    assert_eq!(appended, expected);
    assert!(varve.verify().unwrap().is_ok());
    // A build without the old versions reads it all.
    assert_eq!(seen::<only::OrderPlaced>(&varve), after);
}

// ------------------------------------------------------------ crash and resume

const CHILD: &str = "VARVEDB_MIGRATE_CHILD_DIR";
const CHILD_TEST: &str = "a_child_migrates_until_it_is_killed";

/// Not a test on its own: the body of the child process, which migrates the
/// store its parent names one event per write transaction until killed.
#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_migrates_until_it_is_killed() {
    let Some(dir) = std::env::var_os(CHILD) else {
        panic!("not a test on its own: run by a_migration_killed_at_any_moment_resumes_to_the_same_values, which sets {CHILD}");
    };
    let varve = Varve::new(Path::new(&dir)).expect("open the store");
    println!("@@ migrating");
    let report = varve
        .migrate_with::<v3::OrderPlaced>(MigrateOptions::default().batch_events(1))
        .expect("migrate");
    println!("@@ done {}", report.events);
}

/// A tiny deterministic generator for kill delays.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1);
    *state >> 33
}

#[test]
fn a_migration_killed_at_any_moment_resumes_to_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = {
        let varve = Varve::new(dir.path()).unwrap();
        write_mixed(&varve, 400)
    };
    let (before, folds_before) = {
        let varve = Varve::new(dir.path()).unwrap();
        (seen::<v3::OrderPlaced>(&varve), folds(&varve))
    };

    let mut rng = 0x5eed_u64;
    let mut killed = 0;
    for cycle in 0..5 {
        let mut child = varvedb_suite::child_test(CHILD_TEST)
            .env(CHILD, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the child died before migrating"
            );
            if line.contains("@@ migrating") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5 + next(&mut rng) % 60));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.signal() == Some(9) {
            killed += 1;
        }
        // Whatever the kill interrupted, the store reads the same values.
        let varve = Varve::new(dir.path()).unwrap();
        assert_eq!(
            seen::<v3::OrderPlaced>(&varve),
            before,
            "after cycle {cycle}"
        );
        assert!(varve.verify().unwrap().is_ok(), "after cycle {cycle}");
    }
    assert!(killed > 0, "no child was killed mid-migration");

    let varve = Varve::new(dir.path()).unwrap();
    let report = varve.migrate::<v3::OrderPlaced>().unwrap();
    assert!(report.verify.is_ok(), "{:?}", report.verify);
    assert!(
        report.events < n1 + n2,
        "the killed children rewrote nothing: {report:?}"
    );
    assert_eq!(seen::<v3::OrderPlaced>(&varve), before);
    assert_eq!(folds(&varve), folds_before);
    assert_eq!(seen::<only::OrderPlaced>(&varve), before);
}

/// An event's metadata: id, correlation, causation, user bytes.
type Meta = (
    Option<EventId>,
    Option<CorrelationId>,
    Option<EventId>,
    Option<Vec<u8>>,
);

/// What a migration must keep of each event besides its value: its
/// metadata, as the global log shows it.
fn metadata_of(varve: &Varve) -> BTreeMap<u64, Meta> {
    let mut log = varve.global_reader();
    let end = log.end().unwrap().0;
    (0..end)
        .map(|g| {
            let e = log.get(GlobalSequence(g)).unwrap().expect("a dense log");
            let m = e.metadata();
            (
                g,
                (
                    m.event_id(),
                    m.correlation_id(),
                    m.causation_id(),
                    m.user_bytes().map(<[u8]>::to_vec),
                ),
            )
        })
        .collect()
}

#[test]
fn a_migration_keeps_each_events_ids_and_context_and_the_ids_index() {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    let eid = |n: u128| EventId::from_u128(n);
    let full = Context::new()
        .correlation(CorrelationId::from_u128(900))
        .causation(eid(901))
        .user_bytes(b"who did it".to_vec())
        .unwrap();
    let mut old = varve.events::<v1::OrderPlaced>().unwrap();
    let v1 = |order: u64| v1::OrderPlaced {
        order,
        cents: order as u32 * 3,
    };
    // Ids and the full context (user bytes: a prefix that is not a
    // multiple of 16), ids alone, and no metadata at all.
    let ids = [eid(1), eid(2), eid(3)];
    old.append_batch_with(
        StreamId(1),
        &[v1(1), v1(2), v1(3)],
        Append::new().event_ids(&ids).context(&full),
    )
    .unwrap();
    old.append_with(StreamId(2), &v1(4), Append::new().event_id(eid(4)))
        .unwrap();
    old.append(StreamId(1), &v1(5)).unwrap();
    drop(old);
    let mut mid = varve.events::<v2::OrderPlaced>().unwrap();
    let short = Context::new().user_bytes(b"x".to_vec()).unwrap();
    mid.append_with(
        StreamId(2),
        &v2::OrderPlaced {
            order: 6,
            cents: 60,
        },
        Append::new().event_id(eid(6)).context(&short),
    )
    .unwrap();
    drop(mid);

    let before = seen::<v3::OrderPlaced>(&varve);
    let meta_before = metadata_of(&varve);
    assert_eq!(meta_before[&0].0, Some(eid(1)));
    assert_eq!(meta_before[&2].3.as_deref(), Some(&b"who did it"[..]));
    assert_eq!(meta_before[&4], (None, None, None, None));

    let report = varve.migrate::<v3::OrderPlaced>().unwrap();
    assert_eq!(report.events, 6);
    assert!(report.verify.is_ok(), "{:?}", report.verify);
    assert!(varve.verify().unwrap().is_ok());

    // The values, the positions and every event's metadata are unchanged.
    assert_eq!(seen::<v3::OrderPlaced>(&varve), before);
    assert_eq!(metadata_of(&varve), meta_before);
    // The ids index still finds each event, now in its new version.
    let mut log = varve.global_reader();
    for (n, global) in [(1, 0), (2, 1), (3, 2), (4, 3), (6, 5)] {
        let e = log.get_by_id(eid(n)).unwrap().expect("indexed");
        assert_eq!(e.global_sequence(), GlobalSequence(global));
        assert_eq!(e.metadata().event_id(), Some(eid(n)));
        assert_eq!(
            e.archived::<v3::OrderPlaced>().unwrap().order.to_native(),
            if n == 6 { 6 } else { n as u64 }
        );
    }
    // Typed reads see the metadata too.
    let reader = varve.events::<v3::OrderPlaced>().unwrap().reader();
    let first = reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.metadata().correlation_id(),
        Some(CorrelationId::from_u128(900))
    );
    let snap = reader.snapshot().unwrap();
    let entry = snap.get(StreamId(2), StreamSequence(1)).unwrap().unwrap();
    assert_eq!(
        (entry.metadata().event_id(), entry.metadata().user_bytes()),
        (Some(eid(6)), Some(&b"x"[..]))
    );
    // A retry of a migrated append is still recognized, and writes nothing.
    let mut new = varve.events::<v3::OrderPlaced>().unwrap();
    let retry = new
        .append_with(
            StreamId(2),
            &v3::OrderPlaced {
                order: 4,
                cents: 12,
                currency: *b"EUR",
            },
            Append::new().event_id(eid(4)),
        )
        .unwrap();
    assert!(retry.is_idempotent());
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(6));
}
