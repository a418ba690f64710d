//! The engine: the only module that touches heed, raw bytes and `unsafe`.
//!
//! One LMDB environment holds four databases:
//!
//! | database  | key                                   | value                                  |
//! |-----------|---------------------------------------|----------------------------------------|
//! | `meta`    | `format`, `rkyv-probe`, `created`     | format version, rkyv probe bytes, time |
//! | `catalog` | `n` + stream name / `t` + tag (BE)    | stream record / stream name            |
//! | `index`   | tag, stream id, first sequence (BE)   | run: first global, count               |
//! | `events`  | first global sequence (BE)            | a block of events ([`block`])          |
//! | `state`   | namespaced by its owner               | snapshots, checkpoints, read models    |
//!
//! See `docs/design.md` for the invariants each one protects.

pub(crate) mod block;
mod catalog;
mod gate;
pub(crate) mod keys;
mod notify;
mod probe;
mod registry;
mod snapshot;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, MdbError, WithoutTls};
use parking_lot::Mutex;

use crate::config::{Durability, VarveConfig};
use crate::error::{Error, Location, Result};

pub(crate) use block::BlockBuilder;
pub(crate) use catalog::{StreamInfo, TypeIdentity};
pub(crate) use notify::CROSS_PROCESS_POLL;
pub(crate) use snapshot::{
    walk_stream, ArchivedRef, EventPosition, GlobalCursor, MappedEvent, StreamCursor, View,
};
pub(crate) use writer::WriteTxn;

/// The on-disk format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 1;

type Db = Database<'static, Bytes, Bytes>;

/// One open store, shared by every handle (`Varve`, streams, readers) in the process.
pub(crate) struct Store {
    path: PathBuf,
    env: Env<WithoutTls>,
    catalog: Db,
    index: Db,
    events: Db,
    state: Db,
    commits: notify::CommitSignal,
    gate: Arc<gate::MapGate>,
    /// Serializes this process's writers, so LMDB's own (cross-process) writer
    /// lock is never contended between our threads, and map growth happens
    /// with no write transaction open.
    writer: Mutex<()>,
    streams: catalog::Cache,
    config: VarveConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Wraps a heed error with what we were doing, turning the LMDB errors a user
/// can act on into their own variants.
pub(crate) fn storage_error(
    operation: &'static str,
    max_readers: u32,
) -> impl Fn(heed::Error) -> Error {
    move |source| match source {
        heed::Error::Mdb(MdbError::ReadersFull) => Error::ReadersFull { max: max_readers },
        heed::Error::Mdb(
            e @ (MdbError::Corrupted
            | MdbError::PageNotFound
            | MdbError::Invalid
            | MdbError::VersionMismatch
            | MdbError::Panic),
        ) => Error::Corruption {
            location: Location::Record("the LMDB data file".into()),
            detail: format!("{operation}: {e}"),
        },
        source => Error::Storage { operation, source },
    }
}

fn open_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Open {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`, or returns the handle
    /// already open in this process for the same directory.
    pub(crate) fn open(path: &Path, config: VarveConfig) -> Result<Arc<Store>> {
        if path.exists() && !path.is_dir() {
            return Err(Error::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        std::fs::create_dir_all(path).map_err(open_error(path))?;
        let canonical = path.canonicalize().map_err(open_error(path))?;
        registry::get_or_open(&canonical, || Store::open_new(&canonical, config))
    }

    fn open_new(path: &Path, config: VarveConfig) -> Result<Arc<Store>> {
        let page = page_size();
        let map_size = config.map_size.max(page).div_ceil(page) * page;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(map_size)
            .max_readers(config.max_readers)
            .max_dbs(8);
        let flags = match config.durability {
            Durability::Full => EnvFlags::empty(),
            Durability::NoMetaSync => EnvFlags::NO_META_SYNC,
            Durability::NoSync => EnvFlags::NO_SYNC,
        };
        // SAFETY: heed marks `flags` unsafe because flags like NO_LOCK or
        // WRITE_MAP change the safety contract; we only ever pass NO_META_SYNC
        // or NO_SYNC, which trade durability (documented on `Durability`), not
        // memory safety.
        unsafe { options.flags(flags) };
        // SAFETY: `open` is unsafe because memory-mapping a file is only sound if
        // nothing truncates or rewrites it underneath us. The directory belongs
        // to this store; LMDB's lock file coordinates with other processes that
        // use it through LMDB, and the process-wide registry guarantees this
        // process opens it only once.
        let env = unsafe { options.open(path) }.map_err(|e| match e {
            heed::Error::Io(source) => Error::Open {
                path: path.to_path_buf(),
                source,
            },
            heed::Error::EnvAlreadyOpened => Error::Open {
                path: path.to_path_buf(),
                source: std::io::Error::other(
                    "the LMDB environment is already open in this process outside varvedb",
                ),
            },
            other => storage_error("opening the store", config.max_readers)(other),
        })?;
        let err = storage_error("creating the store's databases", config.max_readers);
        let wtxn = env.write_txn().map_err(&err)?;
        let created =
            env.create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, OpenError> {
                let mut db = |name| {
                    opener
                        .database_options()
                        .types::<Bytes, Bytes>()
                        .name(name)
                        .create(wtxn)
                };
                let dbs = (db("meta")?, db("catalog")?, db("index")?, db("events")?, db("state")?);
                probe::initialize_or_check(wtxn, &dbs.0, path).map_err(OpenError::Varve)?;
                Ok(CommitOrAbort::<_, ()>::Commit(dbs))
            });
        let (_meta, catalog, index, events, state) = match created {
            Ok(committed) => committed.unwrap_commit(),
            Err(OpenError::Heed(e)) => return Err(err(e)),
            Err(OpenError::Varve(e)) => return Err(e),
        };
        Ok(Arc::new(Store {
            path: path.to_path_buf(),
            env,
            catalog,
            index,
            events,
            state,
            commits: notify::CommitSignal::default(),
            gate: Arc::new(gate::MapGate::default()),
            writer: Mutex::new(()),
            streams: catalog::Cache::default(),
            config,
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn config(&self) -> &VarveConfig {
        &self.config
    }

    /// The id of the newest committed transaction (by any process).
    pub(crate) fn last_txn_id(&self) -> usize {
        self.env.info().last_txn_id
    }

    /// Whether a writer is waiting for snapshots to close so it can grow the map.
    pub(crate) fn resize_pending(&self) -> bool {
        self.gate.resize_pending()
    }

    pub(crate) fn err(&self, operation: &'static str) -> impl Fn(heed::Error) -> Error {
        storage_error(operation, self.config.max_readers)
    }

    /// Grows the map (or adopts a size another process set, with `new_size` 0)
    /// once no transaction of this process is open.
    fn remap(&self, new_size: usize) -> Result<()> {
        let result = self.gate.exclusive(self.config.resize_wait, || {
            // SAFETY: `exclusive` runs this only while the gate counts no open
            // transaction in this process: every snapshot and write transaction
            // holds a gate guard for its whole life, and new ones wait at the
            // gate. That is LMDB's requirement for `mdb_env_set_mapsize`.
            unsafe { self.env.resize(new_size) }
        });
        match result {
            Ok(r) => r.map_err(self.err("growing the memory map")),
            Err(held) => Err(Error::MapResizeBlocked {
                wanted: new_size,
                held,
                waited_ms: self.config.resize_wait.as_millis() as u64,
            }),
        }
    }

    /// Doubles the map (at least), for a write that hit `MDB_MAP_FULL`.
    fn grow(&self) -> Result<()> {
        let current = self.env.info().map_size;
        let page = page_size();
        let wanted = current.saturating_mul(2).div_ceil(page) * page;
        self.remap(wanted)
    }

    /// Opens a read snapshot of the newest commit.
    pub(crate) fn snapshot(self: &Arc<Self>) -> Result<View> {
        loop {
            let guard = self.gate.enter();
            match self.env.clone().static_read_txn() {
                Ok(txn) => return Ok(View::new(txn, guard, Arc::clone(self))),
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    drop(guard);
                    self.remap(0)?;
                }
                Err(e) => return Err(self.err("opening a read snapshot")(e)),
            }
        }
    }
}

/// The error type heed's database-creation helper needs (`From<heed::Error>`).
enum OpenError {
    Heed(heed::Error),
    Varve(Error),
}

impl From<heed::Error> for OpenError {
    fn from(e: heed::Error) -> Self {
        OpenError::Heed(e)
    }
}

fn page_size() -> usize {
    // LMDB uses the OS page size; 4 KiB everywhere we build except Apple
    // silicon (16 KiB). Rounding to 64 KiB satisfies every page size.
    64 * 1024
}
