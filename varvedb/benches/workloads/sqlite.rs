//! The SQLite contender: what a program that keeps its events in SQLite does.
//! WAL mode with `synchronous=FULL` (every commit syncs the write-ahead log
//! once), one table `events(global INTEGER PRIMARY KEY, stream_id, seq,
//! payload BLOB, UNIQUE(stream_id, seq))`, one `BEGIN IMMEDIATE … COMMIT`
//! transaction per append, and one connection per concurrent writer, each with
//! a busy timeout (SQLite has a single writer; the others wait in its busy
//! handler). Payloads are the rkyv bytes the other contenders store; reads
//! validate them as the raw-heed baseline does.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rkyv::rancor;
use rusqlite::{params, Connection};

use crate::baseline::with_sample;
use crate::contender::{ArchivedSample, Contender, Sample};

pub struct Sqlite {
    path: std::path::PathBuf,
    /// Open connections not in use. A caller takes one for the length of a
    /// call (opening one if none is idle) and puts it back: concurrent writers
    /// each hold their own, as SQLite's documentation has it.
    idle: Mutex<Vec<Connection>>,
}

impl Sqlite {
    fn connect(path: &Path) -> Connection {
        let conn = Connection::open(path).expect("open sqlite");
        conn.busy_timeout(Duration::from_secs(60))
            .expect("busy timeout");
        // `journal_mode` answers with the mode it set.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("synchronous");
        conn
    }

    /// Runs `f` on a connection of its own.
    fn with_conn<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let idle = self.idle.lock().unwrap().pop();
        let mut conn = idle.unwrap_or_else(|| Sqlite::connect(&self.path));
        let r = f(&mut conn);
        self.idle.lock().unwrap().push(conn);
        r
    }

    fn append(&self, id: u64, events: &[Sample]) {
        let payloads: Vec<_> = events
            .iter()
            .map(|e| rkyv::to_bytes::<rancor::Error>(e).expect("serialize"))
            .collect();
        self.with_conn(|conn| {
            let txn = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .expect("begin immediate");
            {
                let next: i64 = txn
                    .prepare_cached(
                        "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE stream_id = ?1",
                    )
                    .expect("prepare")
                    .query_row(params![id as i64], |row| row.get(0))
                    .expect("next seq");
                let mut insert = txn
                    .prepare_cached(
                        "INSERT INTO events (stream_id, seq, payload) VALUES (?1, ?2, ?3)",
                    )
                    .expect("prepare");
                for (seq, payload) in (next..).zip(&payloads) {
                    insert
                        .execute(params![id as i64, seq, payload.as_slice()])
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
        })
    }

    /// Sums `field` over the rows `sql` selects with `args`.
    fn sum(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        field: impl Fn(&ArchivedSample) -> u64,
    ) -> u64 {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(sql).expect("prepare");
            let mut rows = stmt.query(args).expect("query");
            let mut sum = 0u64;
            while let Some(row) = rows.next().expect("row") {
                let bytes = row.get_ref(0).expect("payload").as_blob().expect("blob");
                sum = sum.wrapping_add(with_sample(bytes, &field));
            }
            sum
        })
    }
}

impl Contender for Sqlite {
    const NAME: &'static str = "sqlite";

    fn open(dir: &Path) -> Self {
        let path = dir.join("events.sqlite");
        let conn = Sqlite::connect(&path);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                global INTEGER PRIMARY KEY,
                stream_id INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                payload BLOB NOT NULL,
                UNIQUE (stream_id, seq)
            )",
        )
        .expect("create table");
        Sqlite {
            path,
            idle: Mutex::new(vec![conn]),
        }
    }

    fn prepare_writers(&self, writers: usize) {
        let mut idle = self.idle.lock().unwrap();
        while idle.len() < writers {
            idle.push(Sqlite::connect(&self.path));
        }
    }

    fn append_batch(&self, id: u64, events: &[Sample]) {
        self.append(id, events);
    }

    fn append_one(&self, id: u64, event: &Sample) {
        self.append(id, std::slice::from_ref(event));
    }

    fn point_read(&self, id: u64, seq: u64) -> u64 {
        self.sum(
            "SELECT payload FROM events WHERE stream_id = ?1 AND seq = ?2",
            params![id as i64, seq as i64],
            |s| s.a.to_native(),
        )
    }

    fn scan_stream(&self, id: u64) -> u64 {
        self.sum(
            "SELECT payload FROM events WHERE stream_id = ?1 ORDER BY seq",
            params![id as i64],
            |s| s.b.to_native(),
        )
    }

    fn scan_global(&self) -> u64 {
        self.sum("SELECT payload FROM events ORDER BY global", [], |s| {
            s.b.to_native()
        })
    }

    fn disk_bytes(&self) -> u64 {
        ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut name = self.path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).ok()
            })
            .map(|m| m.len())
            .sum()
    }
}
