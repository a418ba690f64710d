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
#[test]
fn a_directory_without_permission_is_an_open_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root ignores permission bits; then the store opens, which is also correct.
    let root = std::fs::read_dir(&locked).is_ok();
    let result = Varve::new(&locked);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        assert!(result.is_ok());
    } else {
        assert!(matches!(result, Err(Error::Open { .. })), "{result:?}");
    }
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
            supported: 1,
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
