//! Stores written by format 3 keep their chain: a keyed chained store kept
//! under `tests/fixtures/format-3` (appends, a migration that re-sealed some
//! blocks, appends after it) opens with its key, verifies clean, and still
//! extends the two heads recorded beside it (`heads.txt`, one taken before
//! the migration and one at the end), so the chain's formula, its records
//! and the re-seal records read the same in every later build. A format-2
//! store is upgraded by its first read-write open with its chain off, and a
//! chain enabled on it covers its old blocks.
//!
//! After an intended format change, bump the format version and regenerate:
//! `VARVEDB_WRITE_FIXTURES=1 cargo test --test format3_fixture`.

use std::path::{Path, PathBuf};

use varvedb::{
    Chain, ChainCheck, ChainStatus, Extension, HeadDigest, StreamId, Varve, VarveConfig,
};
use varvedb_suite::Order;

const WRITE: &str = "VARVEDB_WRITE_FIXTURES";
/// The fixture's key: public, it is a test.
const KEY: [u8; 32] = *b"varvedb format-3 fixture key 32b";

use varvedb_suite::deposited::{v1, v2};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-3")
}

fn keyed() -> VarveConfig {
    VarveConfig::tamper_evident(Chain::Keyed(KEY))
}

/// Writes the store; returns the heads before the migration and at the end.
fn write_fixture(dest: &Path) -> (HeadDigest, HeadDigest) {
    let scratch = tempfile::tempdir().unwrap();
    let heads = {
        let varve = Varve::with_config(scratch.path(), keyed()).unwrap();
        let mut deposits = varve.events::<v1::Deposited>().unwrap();
        let mut orders = varve.stream::<Order, 256>("orders").unwrap();
        for i in 0..4u64 {
            deposits
                .append(StreamId(i % 2), &v1::Deposited { cents: i as u32 })
                .unwrap();
            orders
                .append_batch(StreamId(i), &[Order::numbered(i), Order::numbered(i + 10)])
                .unwrap();
        }
        drop(deposits);
        let before = varve.head_digest().unwrap().unwrap();
        let report = varve.migrate::<v2::Deposited>().unwrap();
        assert_eq!(report.resealed, 4);
        varve
            .events::<v2::Deposited>()
            .unwrap()
            .append(StreamId(0), &v2::Deposited { cents: 99 })
            .unwrap();
        (before, varve.head_digest().unwrap().unwrap())
    };
    std::fs::create_dir_all(dest).unwrap();
    let data = dest.join("data.mdb");
    let _ = std::fs::remove_file(&data);
    // SAFETY: the store above is closed; nothing else opens the scratch copy.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(scratch.path()) }.unwrap();
    env.copy_to_path(&data, heed::CompactionOption::Enabled)
        .unwrap();
    std::fs::write(
        dest.join("heads.txt"),
        format!("{}\n{}\n", heads.0, heads.1),
    )
    .unwrap();
    heads
}

fn check_fixture(fixture: &Path) {
    let text = std::fs::read_to_string(fixture.join("heads.txt")).unwrap();
    let heads: Vec<HeadDigest> = text.lines().map(|l| l.parse().unwrap()).collect();
    let [before, end] = heads[..] else {
        panic!("two heads in heads.txt")
    };
    assert_eq!((before.reseals, end.reseals), (0, 4));

    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    let varve = Varve::with_config(copy.path(), keyed()).expect("the fixture opens with its key");
    assert_eq!(
        varve.chain_status().unwrap(),
        ChainStatus::On {
            mode: varvedb::ChainMode::Keyed
        }
    );
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.chain, ChainCheck::Checked { head: Some(end) });
    assert_eq!(varve.head_digest().unwrap(), Some(end));
    match varve.verify_extends(&before).unwrap() {
        Extension::Extends { resealed } => {
            let blocks: Vec<u64> = resealed.iter().map(|r| r.block.0).collect();
            assert_eq!(blocks, [0, 3, 6, 9]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        varve.verify_extends(&end).unwrap(),
        Extension::Extends { resealed: vec![] }
    );
    // It goes on: an append extends the same chain.
    varve
        .events::<v2::Deposited>()
        .unwrap()
        .append(StreamId(1), &v2::Deposited { cents: 1 })
        .unwrap();
    assert!(varve.verify_extends(&end).unwrap().extends());
    drop(varve);
    assert!(matches!(
        Varve::new(copy.path()).and_then(|v| {
            v.stream::<Order, 256>("orders")?
                .append(StreamId(1), &Order::numbered(5))
                .map(|_| ())
        }),
        Err(varvedb::Error::ChainKeyRequired { .. })
    ));
}

#[test]
fn stores_written_by_format_3_keep_their_chain_and_heads() {
    if std::env::var_os(WRITE).is_some() {
        write_fixture(&fixture_dir());
    }
    check_fixture(&fixture_dir());
}

#[test]
fn a_freshly_written_store_matches_the_fixture_expectations() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    check_fixture(dir.path());
}

#[test]
fn a_format_2_store_is_upgraded_with_its_chain_off_and_a_chain_enabled_on_it_covers_it() {
    let copy = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2/data.mdb");
    std::fs::copy(source, copy.path().join("data.mdb")).unwrap();
    let read_only = Varve::open_read_only(copy.path()).expect("format 2 opens read-only");
    assert_eq!(read_only.chain_status().unwrap(), ChainStatus::Off);
    assert_eq!(read_only.verify().unwrap().chain, ChainCheck::Off);
    drop(read_only);
    let varve = Varve::new(copy.path()).expect("format 2 opens read-write");
    assert_eq!(varve.chain_status().unwrap(), ChainStatus::Off);
    let end = varve.global_reader().end().unwrap();
    let report = varve.enable_chain(Chain::Plain).unwrap();
    assert_eq!(report.head.map(|h| h.sequence.0 + 1), Some(end.0));
    let verified = varve.verify().unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.chain, ChainCheck::Checked { head: report.head });
}
