//! Importing a store written by the published varvedb 0.4.2
//! (`tests/fixtures/v0.4`, made by `tests/fixtures/v0.4-generator`): every
//! event keeps its stream, id, sequence, global position and bytes, the new
//! store verifies and accepts appends, and a damaged, gapped or untyped 0.4
//! store, or a destination in use, is refused with a typed error before
//! anything is written.

use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::EnvOpenOptions;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Error, GlobalSequence, ImportOptions, StreamId, StreamSequence, Varve};
use varvedb_suite::flip_in_data_file;

// The generator's event types, field for field.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct OrderPlaced {
    order: u64,
    cents: u64,
    note: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct UserRenamed {
    name: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
struct Tick {
    n: u32,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.4")
}

/// A copy of the fixture store (LMDB makes a lock file beside it).
fn old_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(fixture().join("data.mdb"), old.join("data.mdb")).unwrap();
    (dir, old)
}

fn options() -> ImportOptions {
    ImportOptions::new()
        .stream::<OrderPlaced>("orders")
        .stream::<UserRenamed>("users")
        .stream::<Tick>("ticks")
}

/// `(global, stream, id, seq, payload)` as the generator recorded them.
fn manifest() -> Vec<(u64, String, u64, u64, Vec<u8>)> {
    let text = std::fs::read_to_string(fixture().join("events.txt")).unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let hex = f[4];
            let payload = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (
                f[0].parse().unwrap(),
                f[1].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                payload,
            )
        })
        .collect()
}

#[test]
fn a_042_store_imports_with_every_position_and_byte_kept() {
    let (dir, old) = old_store();
    let new = dir.path().join("new");
    let mut phases = Vec::new();
    let report = Varve::import_v04_with_progress(&old, &new, &options(), |p| {
        phases.push(p.phase);
    })
    .unwrap();
    let expected = manifest();
    assert_eq!(expected.len(), 15);
    assert_eq!(report.events, 15);
    assert_eq!(report.renumbered, 0);
    assert_eq!(report.streams["orders"], 7);
    assert_eq!(report.streams["users"], 3);
    assert_eq!(report.streams["ticks"], 5);
    assert!(!phases.is_empty());

    let varve = Varve::new(&new).unwrap();
    let imported = varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .collect_all()
        .unwrap();
    let got: Vec<_> = imported
        .iter()
        .map(|e| {
            (
                e.global_seq.0,
                e.stream_name.clone(),
                e.stream_id.0,
                e.stream_seq.0,
                e.payload.clone(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let verified = varve.verify().unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(verified.events, 15);

    // The streams open with the types they were imported as, and read typed.
    let mut orders = varve.stream::<OrderPlaced, 256>("orders").unwrap();
    let second = orders
        .reader()
        .get_archived(StreamId(1), StreamSequence(1))
        .unwrap()
        .unwrap();
    assert_eq!(second.note.as_str(), "second, with a longer note");
    assert_eq!(second.cents, 99);
    let ticks = varve.stream::<Tick, 16>("ticks").unwrap();
    let last = ticks
        .reader()
        .get_archived(StreamId(u64::MAX), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_eq!(last.n, 3);
    assert!(matches!(
        varve.stream::<Tick, 16>("orders"),
        Err(Error::TypeMismatch { .. })
    ));

    // It accepts appends after the imported positions.
    let (seq, global) = orders
        .append(
            StreamId(1),
            &OrderPlaced {
                order: 1,
                cents: 7,
                note: "after the import".into(),
            },
        )
        .unwrap();
    assert_eq!((seq, global), (StreamSequence(2), GlobalSequence(15)));
    drop((second, last, orders, ticks, varve));
    // And after a reopen.
    let varve = Varve::new(&new).unwrap();
    assert_eq!(varve.next_global_seq(), GlobalSequence(16));
    assert!(varve.verify().unwrap().is_ok());
}

#[test]
fn the_old_store_is_never_written() {
    let (dir, old) = old_store();
    let before = std::fs::read(old.join("data.mdb")).unwrap();
    Varve::import_v04(&old, dir.path().join("new"), &options()).unwrap();
    assert_eq!(std::fs::read(old.join("data.mdb")).unwrap(), before);
    // It is still refused by a plain open, as before.
    assert!(matches!(Varve::new(&old), Err(Error::LegacyStore { .. })));
}

#[test]
fn a_stream_without_a_type_is_refused_naming_it_before_anything_is_written() {
    let (dir, old) = old_store();
    let new = dir.path().join("new");
    let options = ImportOptions::new().stream::<OrderPlaced>("orders");
    match Varve::import_v04(&old, &new, &options) {
        Err(Error::ImportUnbound { streams, .. }) => {
            assert_eq!(streams, ["\"ticks\" (5 events)", "\"users\" (3 events)"]);
        }
        other => panic!("expected ImportUnbound, got {other:?}"),
    }
    assert!(!new.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_stream_bound_to_the_wrong_type_is_refused_as_damaged() {
    let (dir, old) = old_store();
    let new = dir.path().join("new");
    // `users` holds strings: its 8-byte payloads are no valid `OrderPlaced`.
    let options = ImportOptions::new()
        .stream::<OrderPlaced>("orders")
        .stream::<OrderPlaced>("users")
        .stream::<Tick>("ticks");
    let err = Varve::import_v04(&old, &new, &options).unwrap_err();
    assert!(matches!(err, Error::LegacyDamaged { .. }), "{err}");
    assert!(err.to_string().contains("\"users\""), "{err}");
    assert!(!new.exists());
}

#[test]
fn a_destination_that_is_not_empty_is_refused_and_left_alone() {
    let (dir, old) = old_store();
    let new = dir.path().join("new");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("keep"), b"mine").unwrap();
    assert!(matches!(
        Varve::import_v04(&old, &new, &options()),
        Err(Error::DestinationExists { .. })
    ));
    assert_eq!(std::fs::read(new.join("keep")).unwrap(), b"mine");
    // An empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Varve::import_v04(&old, &empty, &options()).unwrap();
    assert!(Varve::new(&empty).unwrap().verify().unwrap().is_ok());
}

#[test]
fn a_flipped_byte_in_a_record_header_is_a_typed_error() {
    let (dir, old) = old_store();
    // Global 6: "orders" id 1 sequence 1; flip the id's first byte.
    let mut needle = vec![6];
    needle.extend_from_slice(b"orders");
    needle.extend_from_slice(&1u64.to_be_bytes());
    needle.extend_from_slice(&1u64.to_be_bytes());
    needle.extend_from_slice(b"second");
    flip_in_data_file(&old, &needle, 7);
    let new = dir.path().join("new");
    let err = Varve::import_v04(&old, &new, &options()).unwrap_err();
    assert!(matches!(err, Error::LegacyDamaged { .. }), "{err}");
    assert!(
        err.to_string().contains("index of stream \"orders\""),
        "{err}"
    );
    assert!(!new.exists());
}

#[test]
fn a_flipped_byte_in_a_payload_is_a_typed_error() {
    let (dir, old) = old_store();
    // The relative pointer of global 6's `note` string: it then points
    // past its own archive.
    flip_in_data_file(&old, &[0x9a, 0, 0, 0, 0xd0, 0xff, 0xff, 0xff], 4);
    let new = dir.path().join("new");
    let err = Varve::import_v04(&old, &new, &options()).unwrap_err();
    assert!(matches!(err, Error::LegacyDamaged { .. }), "{err}");
    assert!(err.to_string().contains("global sequence 6"), "{err}");
    assert!(!new.exists());
}

#[test]
fn a_directory_that_is_no_042_store_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let varvedb_store = dir.path().join("store");
    drop(Varve::new(&varvedb_store).unwrap());
    for old in [dir.path().join("absent"), varvedb_store] {
        let err = Varve::import_v04(&old, dir.path().join("new"), &options()).unwrap_err();
        assert!(matches!(err, Error::LegacyDamaged { .. }), "{err}");
    }
}

/// A store in 0.4's layout, written with heed as 0.4 did, holding
/// `(global, id, seq, payload)` records of stream `ticks`.
fn handmade_04(dir: &Path, records: &[(u64, u64, u64, u32)]) {
    std::fs::create_dir_all(dir).unwrap();
    // SAFETY: a fresh directory only this test uses.
    let env = unsafe {
        EnvOpenOptions::new()
            .max_dbs(8)
            .map_size(1 << 20)
            .open(dir)
            .unwrap()
    };
    let wtxn = env.write_txn().unwrap();
    env.create_databases_and_commit(wtxn, |dbs, wtxn| -> Result<_, heed::Error> {
        let global = dbs.create_database::<Bytes, Bytes>(wtxn, Some("global_events"))?;
        let index = dbs.create_database::<Bytes, Bytes>(wtxn, Some("stream:ticks:index"))?;
        dbs.create_database::<Bytes, Bytes>(wtxn, Some("stream:ticks:meta"))?;
        for &(g, id, seq, n) in records {
            let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&Tick { n }).unwrap();
            let mut record = vec![5];
            record.extend_from_slice(b"ticks");
            record.extend_from_slice(&id.to_be_bytes());
            record.extend_from_slice(&seq.to_be_bytes());
            record.extend_from_slice(&payload);
            global.put(wtxn, &g.to_be_bytes(), &record)?;
            let mut key = id.to_be_bytes().to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            index.put(wtxn, &key, &g.to_be_bytes())?;
        }
        Ok(heed::CommitOrAbort::<_, ()>::Commit(()))
    })
    .unwrap();
}

#[test]
fn holes_in_the_global_log_are_refused_unless_renumbering_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    // A failed 0.4 commit left global 1 unused.
    handmade_04(&old, &[(0, 1, 0, 10), (2, 1, 1, 11), (3, 2, 0, 20)]);
    let options = ImportOptions::new().stream::<Tick>("ticks");
    let new = dir.path().join("new");
    let err = Varve::import_v04(&old, &new, &options).unwrap_err();
    assert!(matches!(err, Error::LegacyGap { .. }), "{err}");
    assert!(!new.exists());

    let report = Varve::import_v04(&old, &new, &options.renumber(true)).unwrap();
    assert_eq!((report.events, report.renumbered), (3, 2));
    let varve = Varve::new(&new).unwrap();
    let events = varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .collect_all()
        .unwrap();
    let positions: Vec<_> = events
        .iter()
        .map(|e| (e.global_seq.0, e.stream_id.0, e.stream_seq.0))
        .collect();
    assert_eq!(positions, [(0, 1, 0), (1, 1, 1), (2, 2, 0)]);
    let ticks = varve.stream::<Tick, 16>("ticks").unwrap();
    let n = ticks
        .reader()
        .get_archived(StreamId(2), StreamSequence(0))
        .unwrap()
        .unwrap()
        .n;
    assert_eq!(n, 20);
}

#[test]
fn a_stream_id_that_skips_or_repeats_a_sequence_is_refused_unless_renumbering() {
    for (seqs, word) in [([0, 2], "skips to"), ([0, 0], "repeats")] {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        // Distinct index keys for a repeat: another id's slot holds it.
        handmade_04(&old, &[(0, 1, seqs[0], 1), (1, 1, seqs[1], 2)]);
        let options = ImportOptions::new().stream::<Tick>("ticks");
        let new = dir.path().join("new");
        match Varve::import_v04(&old, &new, &options) {
            Err(Error::LegacyGap { detail, .. }) => assert!(detail.contains(word), "{detail}"),
            // Two records of one (id, seq) share one index entry: the
            // index check sees the log and index disagree.
            Err(Error::LegacyDamaged { .. }) if word == "repeats" => {}
            other => panic!("expected LegacyGap, got {other:?}"),
        }
        assert!(!new.exists());
        if word == "skips to" {
            let report = Varve::import_v04(&old, &new, &options.renumber(true)).unwrap();
            assert_eq!(report.renumbered, 1);
            assert!(Varve::new(&new).unwrap().verify().unwrap().is_ok());
        }
    }
}

#[test]
fn an_import_into_a_chained_store_seals_the_imported_history_from_its_first_block() {
    let (dir, old) = old_store();
    let new = dir.path().join("new");
    let key = [9u8; 32];
    let options = options().tamper_evident(varvedb::Chain::Keyed(key));
    let report = Varve::import_v04(&old, &new, &options).unwrap();
    let varve = Varve::with_config(
        &new,
        varvedb::VarveConfig::tamper_evident(varvedb::Chain::Keyed(key)),
    )
    .unwrap();
    let head = varve.head_digest().unwrap().expect("a chained import");
    assert_eq!(head.sequence.0 + 1, report.events);
    let verified = varve.verify().unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_eq!(
        verified.chain,
        varvedb::ChainCheck::Checked { head: Some(head) }
    );
    assert!(varve.verify_extends(&head).unwrap().extends());
}
