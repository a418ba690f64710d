//! The on-disk format does not change by accident: stores written by this
//! version and kept under `tests/fixtures/` open, verify clean and read back
//! every event, byte for byte, with the archived bytes this build would write.
//!
//! A change of block layout, catalog record, index run, type fingerprint or
//! rkyv encoding (including one caused by an rkyv feature flag elsewhere in
//! the dependency graph, which the store's probe refuses at open) fails here.
//! After an intended format change, bump the format version and regenerate:
//! `VARVEDB_WRITE_FIXTURES=1 cargo test --test format_fixtures`.

use std::path::{Path, PathBuf};

use rkyv::{rancor, Archive, Deserialize, Serialize};
use varvedb::{Durability, GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig};
use varvedb_suite::Order;

const WRITE: &str = "VARVEDB_WRITE_FIXTURES";

/// A reading with many kinds of archived fields.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Reading {
    sensor: u8,
    delta: i16,
    sample: u32,
    at: u64,
    offset: i64,
    wide: u128,
    ratio: f32,
    value: f64,
    ok: bool,
    unit: char,
    limit: Option<u32>,
    history: Vec<u16>,
    label: String,
    place: Place,
    kind: Kind,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Place {
    x: i32,
    y: i32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Kind {
    Plain,
    Tagged(u32),
    Named { name: String },
}

/// An event whose archived form needs 16-byte alignment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Wide {
    value: u128,
    pair: (u64, u64),
}

fn reading(n: u32) -> Reading {
    Reading {
        sensor: n as u8,
        delta: -(n as i16) * 3,
        sample: n * 1_000_003,
        at: 1_700_000_000_000 + u64::from(n),
        offset: -(i64::from(n) << 40),
        wide: u128::from(n) << 100 | 7,
        ratio: n as f32 / 8.0,
        value: f64::from(n) * 2.5e-3,
        ok: n.is_multiple_of(2),
        unit: ['°', 'K', 'µ', 'x'][n as usize % 4],
        limit: (!n.is_multiple_of(3)).then_some(n * 10),
        history: (0..n as u16 * 3).collect(),
        label: format!("sensor {n} — étiquette"),
        place: Place {
            x: n as i32 - 5,
            y: 2 * n as i32,
        },
        kind: match n % 3 {
            0 => Kind::Plain,
            1 => Kind::Tagged(n),
            _ => Kind::Named {
                name: format!("probe-{n}"),
            },
        },
    }
}

fn wide(n: u64) -> Wide {
    Wide {
        value: u128::MAX - u128::from(n),
        pair: (n, !n),
    }
}

/// One append of the fixture: a stream, an id and its events.
enum Append {
    Orders(u64, Vec<Order>),
    Readings(u64, Vec<Reading>),
    Wides(u64, Vec<Wide>),
}

/// Everything the fixture store holds, in commit order.
fn appends() -> Vec<Append> {
    let big = Order {
        id: 9,
        quantity: 1,
        note: "large event spanning LMDB overflow pages ".repeat(150),
    };
    vec![
        Append::Orders(1, vec![Order::numbered(1)]),
        Append::Orders(2, (10..15).map(Order::numbered).collect()),
        Append::Readings(7, (0..4).map(reading).collect()),
        Append::Orders(1, vec![Order::numbered(2)]),
        Append::Wides(0, vec![wide(1)]),
        Append::Wides(0, vec![wide(2)]),
        Append::Readings(7, vec![reading(4)]),
        Append::Readings(8, vec![reading(5), reading(6)]),
        Append::Orders(9, vec![big]),
        Append::Orders(3, (20..23).map(Order::numbered).collect()),
        Append::Wides(1, vec![wide(3), wide(4)]),
    ]
}

/// One event the fixture must hold: `(stream, id, seq, archived bytes)`, in global order.
fn expected_events() -> Vec<(&'static str, u64, u64, Vec<u8>)> {
    let mut next = std::collections::HashMap::new();
    let mut out = Vec::new();
    let mut push = |stream: &'static str, id: u64, bytes: Vec<u8>| {
        let seq = next.entry((stream, id)).or_insert(0u64);
        out.push((stream, id, *seq, bytes));
        *seq += 1;
    };
    let bytes = |b: rkyv::util::AlignedVec| b.to_vec();
    for append in appends() {
        match append {
            Append::Orders(id, events) => events.iter().for_each(|e| {
                push(
                    "orders",
                    id,
                    bytes(rkyv::to_bytes::<rancor::Error>(e).unwrap()),
                );
            }),
            Append::Readings(id, events) => events.iter().for_each(|e| {
                push(
                    "telemetry",
                    id,
                    bytes(rkyv::to_bytes::<rancor::Error>(e).unwrap()),
                );
            }),
            Append::Wides(id, events) => events.iter().for_each(|e| {
                push(
                    "wide",
                    id,
                    bytes(rkyv::to_bytes::<rancor::Error>(e).unwrap()),
                );
            }),
        }
    }
    out
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1")
}

/// Writes the fixture store with this build, compacted to its live pages.
fn write_fixture(dest: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    {
        let config = VarveConfig {
            durability: Durability::Full,
            ..VarveConfig::default()
        };
        let varve = Varve::with_config(scratch.path(), config).unwrap();
        let mut orders = varve.stream::<Order, 256>("orders").unwrap();
        let mut readings = varve.stream::<Reading, 256>("telemetry").unwrap();
        let mut wides = varve.stream::<Wide, 256>("wide").unwrap();
        for append in appends() {
            match append {
                Append::Orders(id, e) => drop(orders.append_batch(StreamId(id), &e).unwrap()),
                Append::Readings(id, e) => {
                    drop(readings.append_batch(StreamId(id), &e).unwrap());
                }
                Append::Wides(id, e) => drop(wides.append_batch(StreamId(id), &e).unwrap()),
            }
        }
    }
    std::fs::create_dir_all(dest).unwrap();
    let data = dest.join("data.mdb");
    let _ = std::fs::remove_file(&data);
    // SAFETY: the scratch store is closed; nothing else maps it.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).open(scratch.path()) }.unwrap();
    env.copy_to_path(&data, heed::CompactionOption::Enabled)
        .unwrap();
}

fn check_fixture(fixture: &Path) {
    // Opening may touch the files (lock file, a no-op commit): use a copy.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    let varve = Varve::new(copy.path()).expect("the fixture opens");
    let expected = expected_events();

    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        (report.events, report.blocks, report.streams),
        (expected.len() as u64, appends().len() as u64, 3)
    );

    // The log, in order, byte for byte.
    let log = varve.global_reader();
    let mut n = 0;
    for (g, e) in log.iter_from(GlobalSequence(0)).unwrap().enumerate() {
        let e = e.unwrap();
        let (stream, id, seq, bytes) = &expected[g];
        assert_eq!(e.global_sequence(), GlobalSequence(g as u64));
        assert_eq!(
            (e.stream_name(), e.stream_id(), e.stream_sequence()),
            (*stream, StreamId(*id), StreamSequence(*seq)),
            "global {g}"
        );
        assert!(
            e.payload() == bytes.as_slice(),
            "global {g}: archived bytes differ"
        );
        n += 1;
    }
    assert_eq!(n, expected.len());

    // Each stream, typed: every event validates and deserializes to its value.
    let mut orders = varve.stream::<Order, 256>("orders").unwrap().reader();
    let mut readings = varve.stream::<Reading, 256>("telemetry").unwrap().reader();
    let mut wides = varve.stream::<Wide, 256>("wide").unwrap().reader();
    let mut next = std::collections::HashMap::new();
    for append in appends() {
        let mut check = |stream: &'static str, id: u64| {
            let seq = next.entry((stream, id)).or_insert(0u64);
            let at = (StreamId(id), StreamSequence(*seq));
            *seq += 1;
            at
        };
        match append {
            Append::Orders(id, events) => {
                for e in events {
                    let (id, seq) = check("orders", id);
                    let got = orders.get_archived(id, seq).unwrap().unwrap();
                    let got: Order = rkyv::deserialize::<_, rancor::Error>(&*got).unwrap();
                    assert_eq!(got, e);
                }
            }
            Append::Readings(id, events) => {
                for e in events {
                    let (id, seq) = check("telemetry", id);
                    let got = readings.get_archived(id, seq).unwrap().unwrap();
                    let got: Reading = rkyv::deserialize::<_, rancor::Error>(&*got).unwrap();
                    assert_eq!(got, e);
                }
            }
            Append::Wides(id, events) => {
                for e in events {
                    let (id, seq) = check("wide", id);
                    let got = wides.get_archived(id, seq).unwrap().unwrap();
                    let got: Wide = rkyv::deserialize::<_, rancor::Error>(&*got).unwrap();
                    assert_eq!(got, e);
                }
            }
        }
    }
    for ((stream, id), count) in next {
        let version = match stream {
            "orders" => orders.version(StreamId(id)),
            "telemetry" => readings.version(StreamId(id)),
            _ => wides.version(StreamId(id)),
        };
        assert_eq!(version.unwrap(), Some(StreamSequence(count - 1)));
    }

    // The store this version wrote stays writable: sequences continue.
    let mut stream = varve.stream::<Order, 256>("orders").unwrap();
    let (seq, global) = stream.append(StreamId(2), &Order::numbered(99)).unwrap();
    assert_eq!(
        (seq, global),
        (StreamSequence(5), GlobalSequence(expected.len() as u64))
    );
    assert!(varve.verify().unwrap().is_ok());
}

#[test]
fn stores_written_by_this_format_version_read_back_byte_for_byte() {
    let fixture = fixture_dir();
    if std::env::var_os(WRITE).is_some() {
        write_fixture(&fixture);
        let size = std::fs::metadata(fixture.join("data.mdb")).unwrap().len();
        eprintln!("wrote {} ({size} bytes)", fixture.display());
    }
    check_fixture(&fixture);
}

#[test]
fn a_freshly_written_store_matches_the_fixture_expectations() {
    // The generator and the checker agree on this build, fixture or not.
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    check_fixture(dir.path());
}

fn open_env(dir: &Path) -> heed::Env {
    // SAFETY: no store of this process has `dir` open; nothing truncates the file.
    unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir) }.unwrap()
}

/// The `meta` database of `env`, opened with heed directly.
fn meta_of(env: &heed::Env) -> heed::Database<'_, heed::types::Bytes, heed::types::Bytes> {
    let rtxn = env.read_txn().unwrap();
    env.open_databases_and_commit(rtxn, |opener, rtxn| -> heed::Result<_> {
        let meta = opener
            .database_options()
            .types::<heed::types::Bytes, heed::types::Bytes>()
            .name("meta")
            .open(rtxn)?
            .expect("a meta database");
        Ok(heed::CommitOrAbort::<_, ()>::Commit(meta))
    })
    .unwrap()
    .unwrap_commit()
}

/// The `format` record of the store in `dir`.
fn stored_format(dir: &Path) -> u32 {
    let env = open_env(dir);
    let meta = meta_of(&env);
    let rtxn = env.read_txn().unwrap();
    let raw = meta.get(&rtxn, b"format").unwrap().unwrap();
    u32::from_le_bytes(raw.try_into().unwrap())
}

fn set_format(dir: &Path, format: u32) {
    let env = open_env(dir);
    let meta = meta_of(&env);
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, b"format", &format.to_le_bytes())
        .unwrap();
    wtxn.commit().unwrap();
}

#[test]
fn a_format_1_store_is_upgraded_by_its_first_read_write_open_and_not_before() {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir().join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    assert_eq!(stored_format(copy.path()), 1);
    drop(Varve::open_read_only(copy.path()).expect("format 1 opens read-only"));
    assert_eq!(
        stored_format(copy.path()),
        1,
        "a read-only open writes nothing"
    );
    let upgraded = Varve::new(copy.path()).expect("format 1 opens read-write");
    // Format 3's chain stays off for an upgraded store until it is enabled.
    assert_eq!(upgraded.chain_status().unwrap(), varvedb::ChainStatus::Off);
    drop(upgraded);
    assert_eq!(stored_format(copy.path()), 4, "upgraded in place");

    // A format newer than this build's is refused, never misread.
    set_format(copy.path(), 5);
    match Varve::new(copy.path()) {
        Err(varvedb::Error::UnsupportedFormat {
            found, supported, ..
        }) => assert_eq!((found, supported), (5, 4)),
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert_eq!(stored_format(copy.path()), 5, "nothing written");
}

#[test]
fn a_format_one_store_takes_metadata_ids_and_keys_beside_its_old_events() {
    use varvedb::{Context, CorrelationId, EventId};
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_dir().join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    let varve = Varve::new(copy.path()).unwrap();
    let mut log = varve.global_reader();
    let end = log.end().unwrap();
    // Old events carry no metadata; the (new, empty) ids index finds nothing.
    for event in log.iter_from(GlobalSequence(0)).unwrap() {
        assert!(event.unwrap().metadata().is_empty());
    }
    assert!(log.get_by_id(EventId::from_u128(1)).unwrap().is_none());
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    let context = Context::new().correlation(CorrelationId::from_u128(3));
    let options = varvedb::Append::new()
        .event_id(EventId::from_u128(1))
        .context(&context);
    let first = orders
        .append_with(StreamId(1), &Order::numbered(1), options)
        .unwrap();
    let retry = orders
        .append_with(StreamId(1), &Order::numbered(1), options)
        .unwrap();
    assert!(retry.is_idempotent());
    assert_eq!(retry.positions(), first.positions());
    assert_eq!(first.first().unwrap().1, end);
    orders.append_keyed("order-1", &Order::numbered(2)).unwrap();
    assert!(varve.verify().unwrap().is_ok());
    drop((orders, log, varve));
    // Old and new blocks read together after a reopen.
    let varve = Varve::new(copy.path()).unwrap();
    let mut log = varve.global_reader();
    let found = log.get_by_id(EventId::from_u128(1)).unwrap().unwrap();
    assert_eq!(found.global_sequence(), end);
    assert_eq!(
        found.metadata().correlation_id(),
        Some(CorrelationId::from_u128(3))
    );
    assert_eq!(
        log.iter_from(GlobalSequence(0)).unwrap().count() as u64,
        end.0 + 2
    );
}
