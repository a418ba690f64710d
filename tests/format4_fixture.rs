//! Stores written by format 4 stay readable: an encrypted store kept under
//! `tests/fixtures/format-4` (a passphrase, appends in two streams, a
//! projection's read model) opens with its passphrase, verifies clean, reads
//! every event and value back, holds none of them in the clear, and refuses
//! a wrong key; a format-3 store is upgraded to 4 by its first read-write
//! open and stays a plaintext store.
//!
//! After an intended format change, bump the format version and regenerate:
//! `VARVEDB_WRITE_FIXTURES=1 cargo test --test format4_fixture`.

use std::path::{Path, PathBuf};

use varvedb::{EncryptionKey, Error, GlobalSequence, StreamId, Varve, VarveConfig};
use varvedb_suite::{Order, Sales};

const WRITE: &str = "VARVEDB_WRITE_FIXTURES";
/// The fixture's passphrase: public, it is a test.
const PASSPHRASE: &str = "varvedb format-4 fixture passphrase";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-4")
}

fn config() -> VarveConfig {
    VarveConfig::encryption(EncryptionKey::from_passphrase(PASSPHRASE))
}

fn write_fixture(dest: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    {
        let varve = Varve::with_config(scratch.path(), config()).unwrap();
        let mut orders = varve.stream::<Order, 256>("orders").unwrap();
        for i in 0..6u64 {
            orders
                .append_batch(
                    StreamId(i % 3),
                    &[Order::numbered(i), Order::numbered(i + 10)],
                )
                .unwrap();
        }
        let mut other = varve.stream::<Order, 256>("fixture-secret-stream").unwrap();
        other.append(StreamId(0), &Order::numbered(77)).unwrap();
        varve.projector("sales", Sales).unwrap().catch_up().unwrap();
    }
    std::fs::create_dir_all(dest).unwrap();
    let data = dest.join("data.mdb");
    let _ = std::fs::remove_file(&data);
    // SAFETY: the store above is closed; nothing else opens the scratch copy.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(scratch.path()) }.unwrap();
    env.copy_to_path(&data, heed::CompactionOption::Enabled)
        .unwrap();
}

fn check_fixture(fixture: &Path) {
    let bytes = std::fs::read(fixture.join("data.mdb")).unwrap();
    for needle in [&b"order number"[..], b"fixture-secret-stream"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{:?} in the clear",
            String::from_utf8_lossy(needle)
        );
    }
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    // (In the suite's encrypted run, an open without a key uses the run's.)
    assert!(matches!(
        Varve::new(copy.path()),
        Err(Error::EncryptionKeyRequired { .. } | Error::EncryptionKeyMismatch { .. })
    ));
    assert!(matches!(
        Varve::with_config(
            copy.path(),
            VarveConfig::encryption(EncryptionKey::from_passphrase("not it"))
        ),
        Err(Error::EncryptionKeyMismatch { .. })
    ));
    let varve = Varve::with_config(copy.path(), config()).expect("the fixture opens");
    assert!(varve.is_encrypted());
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.events, report.streams), (13, 2));
    let mut notes = Vec::new();
    for e in varve.global_reader().iter_from(GlobalSequence(0)).unwrap() {
        let e = e.unwrap();
        notes.push(e.archived_plain::<Order>().unwrap().note.to_string());
    }
    let mut expected: Vec<String> = (0..6u64)
        .flat_map(|i| [Order::numbered(i).note, Order::numbered(i + 10).note])
        .collect();
    expected.push(Order::numbered(77).note);
    assert_eq!(notes, expected);
    let mut model = varve.read_model("sales").unwrap();
    assert_eq!(model.get_u64(b"orders").unwrap(), Some(12));
    // It goes on.
    varve
        .stream::<Order, 256>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(5))
        .unwrap();
    assert!(varve.verify().unwrap().is_ok());
}

#[test]
fn stores_written_by_format_4_stay_readable_and_sealed() {
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
fn a_format_3_store_is_upgraded_to_4_and_stays_plaintext() {
    let copy = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-3/data.mdb");
    std::fs::copy(source, copy.path().join("data.mdb")).unwrap();
    drop(
        Varve::open_read_only_with_config(
            copy.path(),
            varvedb::VarveConfig::tamper_evident(varvedb::Chain::Keyed(
                *b"varvedb format-3 fixture key 32b",
            )),
        )
        .expect("format 3 opens read-only"),
    );
    let varve = Varve::with_config(
        copy.path(),
        varvedb::VarveConfig::tamper_evident(varvedb::Chain::Keyed(
            *b"varvedb format-3 fixture key 32b",
        )),
    )
    .expect("format 3 opens read-write");
    assert!(!varve.is_encrypted());
    assert!(varve.verify().unwrap().is_ok());
    drop(varve);
    // A key for it now is refused: encryption is chosen at creation.
    assert!(matches!(
        Varve::with_config(copy.path(), config()),
        Err(Error::NotEncrypted { .. })
    ));
}
