//! The PostgreSQL engine against a real server (feature `postgres`).
//!
//! Runs when `VARVEDB_TEST_POSTGRES_URL` names a server whose user may
//! create databases (`postgresql://postgres@127.0.0.1:5432/postgres`); each
//! test works in a fresh database it creates. Without the variable every
//! test prints that it was skipped and passes: the conformance suite of the
//! workspace (`tests/`) is what CI makes mandatory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Aggregate, Append, Error, EventId, ExecuteError, ExpectedVersion, GlobalSequence, Projection,
    StorageErrorKind, StreamId, StreamSequence, Varve,
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
        eprintln!("skipped: VARVEDB_TEST_POSTGRES_URL is not set");
    }
    url
}

/// A fresh database on the server; its URL.
fn fresh_db(admin: &str, test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "varvedb_engine_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    varvedb::__pg::execute(admin, &format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    varvedb::__pg::execute(admin, &format!("CREATE DATABASE {name}")).unwrap();
    with_db(admin, &name)
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
    let url = db!("basic");
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
