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
//! | `ids`     | event id (16 bytes)                   | global sequence, checksum              |
//! | `keys`    | entity keys ([`keys::entity_key`])    | stream id / user key / next id         |
//! | `chain`   | first global sequence (BE)            | the block's chained digest ([`chain`]) |
//! | `seals`   | re-seal number (BE)                   | a migration's re-seal record           |
//!
//! See `docs/design.md` for the invariants each one protects.
//!
//! Every access to these databases goes through [`kv`] (one `match` whose
//! first arm is the heed call), so the same engine also runs on PostgreSQL
//! (feature `postgres`, [`postgres`]), where each database is a table.

pub(crate) mod block;
mod catalog;
pub(crate) mod chain;
pub(crate) mod crypt;
mod gate;
mod group;
mod identity;
pub(crate) mod keys;
pub(crate) mod kv;
pub(crate) mod legacy04;
pub(crate) mod migrate;
mod notify;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod probe;
mod raw;
pub(crate) mod readers;
mod registry;
pub(crate) mod rekey;
mod snapshot;
mod sync;
pub(crate) mod vault;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, MdbError, WithoutTls};
use parking_lot::Mutex;

use crate::config::{Durability, VarveConfig};
use crate::error::{Error, Location, Result, StorageError, StorageErrorKind};

pub(crate) use block::{may_need_alignment, BlockBuilder, MetaPrefix, RawMeta};
pub(crate) use catalog::{Legacy, StreamInfo, TypeIdentity};
pub use group::CommitStats;
pub use identity::StoreId;
pub(crate) use identity::{read_identity, sync_dir, write_identity, Identity, DATA_FILE};
pub(crate) use notify::{CommitSignal, CROSS_PROCESS_POLL};
pub(crate) use snapshot::{
    block_end, block_position, block_tag, ArchivedRef, BlockRef, EventAt, EventPosition, Frozen,
    GlobalCursor, MappedEvent, StreamBlock, StreamCursor, View,
};
pub(crate) use writer::{Entity, Placed, StoredEvent, WriteTxn, FIRST_KEYED_ID};

#[cfg(feature = "postgres")]
pub(crate) use postgres::{admin_execute, offload};

/// A reader's cached snapshot; see [`Store::view_slot`].
pub(crate) type ViewSlot = Arc<Mutex<Option<View>>>;

/// How long an open waits for an environment of the same path that is being
/// closed on another thread (its last handle dropping) to be gone.
const ENV_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The on-disk format version this build reads and writes.
///
/// Format 4 adds encryption at rest ([`crypt`]): the `crypt` record and the
/// wrapped keys in `meta`, and, in a store created encrypted, sealed blocks,
/// stream names and `state` values. A format-1, 2 or 3 store is upgraded by
/// its first read-write open like 2 to 3 (its `format` record rewritten; it
/// stays a plaintext store); a format-3 build refuses it from then on.
///
/// Format 3 adds the tamper-evident chain: the `chain` and `seals`
/// databases and the `chain` record in `meta` (see [`chain`]). A format-1
/// or format-2 store is upgraded by its first read-write open like format 1
/// to 2 (its `format` record rewritten, the two databases created empty: its
/// chain stays off until enabled); a format-2 build refuses it from then on.
///
/// Format 2 adds, beside every format-1 record (which it reads unchanged):
/// event-family records in the catalog (`f` + tag), block fingerprints that
/// name an event version, per-event metadata in blocks (header flags and a
/// slot prefix), and the `ids` and `keys` databases. A format-1 store is
/// upgraded in place by its first read-write open (the `format` record is
/// rewritten; no other byte changes), after which builds that read only
/// format 1 refuse it with `UnsupportedFormat` instead of misreading a record
/// they do not know.
pub(crate) const FORMAT_VERSION: u32 = 4;

/// The oldest format this build reads (and upgrades when it opens a store
/// read-write).
pub(crate) const OLDEST_FORMAT: u32 = 1;

use kv::{Db, Table, Txn};

/// One open store, shared by every handle (`Varve`, streams, readers) in the process.
pub(crate) struct Store {
    path: PathBuf,
    /// The engine under the logical databases; see [`Engine`].
    engine: Engine,
    catalog: Table,
    index: Table,
    events: Table,
    /// `None` only in a read-only open of a store from before the `state`
    /// database existed: it reads as empty.
    state: Option<Table>,
    /// Event id to global sequence: the idempotency index. `None` only in a
    /// read-only open of a store from before it existed: it reads as empty.
    ids: Option<Table>,
    /// Entity keys to stream ids and back. `None` as `ids`.
    keys: Option<Table>,
    /// The store's metadata (format, probe, id, the chain's record).
    meta: Table,
    /// The tamper-evident chain's digests and re-seal records. `None` as `ids`.
    chain: Option<Table>,
    seals: Option<Table>,
    /// The chain's key, when the chain is keyed and it was given (at open or
    /// to `enable_chain`).
    chain_key: parking_lot::RwLock<Option<[u8; 32]>>,
    /// The unwrapped keys of an encrypted store; `None`: a plaintext store.
    crypt: Option<crypt::Keyring>,
    /// The key vault of entity keys (set once at open, before the store is
    /// shared); unset: none. See [`vault`].
    vault: std::sync::OnceLock<vault::Vault>,
    /// Shared with the [`StopHandle`](crate::StopHandle)s, which wake its
    /// waiters without holding the store.
    commits: Arc<notify::CommitSignal>,
    group: group::GroupCommit,
    gate: Arc<gate::MapGate>,
    /// Serializes this process's writers, so LMDB's own (cross-process) writer
    /// lock is never contended between our threads, and map growth happens
    /// with no write transaction open.
    writer: Mutex<()>,
    streams: catalog::Cache,
    /// Every reader's snapshot slot, for growth to close idle ones.
    view_slots: Mutex<Vec<std::sync::Weak<Mutex<Option<View>>>>>,
    /// The size of this process's memory map, in bytes. Written only inside
    /// [`MapGate::exclusive_within`](gate::MapGate::exclusive_within), so growth never asks
    /// LMDB (whose `mdb_env_info` reads through the map) outside the gate.
    map_size: AtomicUsize,
    config: VarveConfig,
    store_id: StoreId,
    /// How the store was opened; see [`Access`].
    access: Access,
}

/// The engine a store runs on.
pub(crate) enum Engine {
    /// An LMDB environment in a directory (the embedded default).
    Lmdb {
        env: Env<WithoutTls>,
        /// The data file this store mapped (device and inode), for the
        /// registry to tell whether a path still names it.
        file_key: identity::FileKey,
        /// The data file, open, to check its length with plain reads.
        data_file: std::fs::File,
    },
    /// A PostgreSQL database (feature `postgres`).
    #[cfg(feature = "postgres")]
    Pg(Arc<postgres::Pg>),
}

/// Whether a store may be written through this process's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Appends, projections and aggregates may write.
    ReadWrite,
    /// LMDB's `MDB_RDONLY`: nothing is written, not even the identity record
    /// of an old store or a database that is missing; every write is
    /// [`Error::ReadOnly`].
    ReadOnly,
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
        source => Error::Storage {
            operation,
            source: engine_error(source),
        },
    }
}

/// heed's error as VarveDB's [`StorageError`]: classified, with the engine's
/// error (or the I/O error inside it) kept inside it.
pub(crate) fn engine_error(e: heed::Error) -> StorageError {
    match e {
        // A PostgreSQL failure crosses the seam as an I/O error around
        // `ServerFailure` (see `kv`).
        #[cfg(feature = "postgres")]
        heed::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|e| e.is::<postgres::ServerFailure>()) =>
        {
            StorageError::new(StorageErrorKind::Server, io)
        }
        heed::Error::Io(io) => StorageError::new(StorageErrorKind::Io, io),
        heed::Error::Mdb(MdbError::MapFull) => StorageError::new(StorageErrorKind::MapFull, e),
        heed::Error::Mdb(MdbError::MapResized) => {
            StorageError::new(StorageErrorKind::MapResized, e)
        }
        heed::Error::Mdb(mdb) => StorageError::new(
            StorageErrorKind::Engine {
                code: mdb.to_err_code(),
            },
            e,
        ),
        heed::Error::Encoding(_) | heed::Error::Decoding(_) => {
            StorageError::new(StorageErrorKind::Encoding, e)
        }
        heed::Error::EnvAlreadyOpened => StorageError::new(StorageErrorKind::AlreadyOpen, e),
    }
}

/// Runs `open` again while heed answers `EnvAlreadyOpened`, for at most
/// [`ENV_CLOSE_WAIT`]. heed forgets an environment only once its last handle
/// has closed it: a store of this path whose last `Varve` is being dropped on
/// another thread right now (the registry already saw it die) is still
/// "open" for a moment.
fn retry_while_closing<T>(mut open: impl FnMut() -> heed::Result<T>) -> heed::Result<T> {
    let since = std::time::Instant::now();
    loop {
        match open() {
            Err(heed::Error::EnvAlreadyOpened) if since.elapsed() < ENV_CLOSE_WAIT => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            opened => return opened,
        }
    }
}

fn open_env_error(path: &Path, max_readers: u32) -> impl Fn(heed::Error) -> Error + '_ {
    move |e| match e {
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
        other => storage_error("opening the store", max_readers)(other),
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
    /// already open in this process for the same data file.
    ///
    /// Before LMDB maps the data file, its length is checked against its
    /// newest commit and its identity against the record beside it
    /// (see [`identity`]), so a damaged or replaced file is a typed error.
    pub(crate) fn open(path: &Path, config: VarveConfig) -> Result<Arc<Store>> {
        Store::open_as(path, config, Access::ReadWrite, None)
    }

    /// [`Store::open`] with an [`Access`] mode. `seed` (used by restores
    /// only) is the identity a store created by this open takes instead of a
    /// fresh random one.
    pub(crate) fn open_as(
        path: &Path,
        config: VarveConfig,
        access: Access,
        seed: Option<Seed>,
    ) -> Result<Arc<Store>> {
        // One look: a directory deleted between two looks is not a file.
        if std::fs::metadata(path).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        match access {
            Access::ReadWrite => std::fs::create_dir_all(path).map_err(open_error(path))?,
            // A read-only open creates nothing, not even the directory.
            Access::ReadOnly if !path.exists() => {
                return Err(Error::Open {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no store here (the directory does not exist)",
                    ),
                })
            }
            Access::ReadOnly => {}
        }
        let canonical = path.canonicalize().map_err(open_error(path))?;
        let mut open = registry::lock();
        if let Some(key) = identity::data_file_key(&canonical)? {
            if let Some(store) = open.get(&key) {
                store.check_same_config(&config)?;
                if store.access != access {
                    // One LMDB environment per process: a read-only handle
                    // cannot share a writable one (its streams could append)
                    // nor the other way round.
                    return Err(Error::ConfigConflict {
                        path: store.path.clone(),
                        field: "read_only",
                        open: (store.access == Access::ReadOnly).to_string(),
                        requested: (access == Access::ReadOnly).to_string(),
                    });
                }
                return Ok(store);
            }
        }
        // A live store opened here whose data file is no longer at this path
        // (deleted, moved, replaced): LMDB (and heed) allow one environment
        // per path per process, so the new one cannot open until it is gone.
        if open.any_at(&canonical) {
            return Err(Error::StoreReplaced { path: canonical });
        }
        let store = match access {
            Access::ReadWrite => Store::open_new(&canonical, config, seed)?,
            Access::ReadOnly => Store::open_read_only(&canonical, config)?,
        };
        open.insert(&store);
        Ok(store)
    }

    /// Refuses a second open whose configuration asks for something the open
    /// store does not give. `map_size` may differ: it is only the initial
    /// reservation, and the map grows on demand whatever it was.
    fn check_same_config(&self, requested: &VarveConfig) -> Result<()> {
        // Destructured so a new field must be decided on here.
        let VarveConfig {
            map_size: _,
            max_readers,
            durability,
            resize_wait,
            cross_process_poll,
            tamper_evident,
            encryption,
            key_vault,
        } = requested;
        let conflict = |field, open: String, requested: String| {
            Err(Error::ConfigConflict {
                path: self.path.clone(),
                field,
                open,
                requested,
            })
        };
        if *durability != self.config.durability {
            return conflict(
                "durability",
                format!("{:?}", self.config.durability),
                format!("{durability:?}"),
            );
        }
        if *max_readers != self.config.max_readers {
            return conflict(
                "max_readers",
                self.config.max_readers.to_string(),
                max_readers.to_string(),
            );
        }
        if *cross_process_poll != self.config.cross_process_poll {
            // A waiter of one handle would not notice other processes'
            // commits the way the other asked for.
            return conflict(
                "cross_process_poll",
                format!("{:?}", self.config.cross_process_poll),
                format!("{cross_process_poll:?}"),
            );
        }
        if *tamper_evident != self.config.tamper_evident {
            // One key per store per process: appends of both handles extend
            // one chain. (`Chain`'s `Debug` never shows a key.)
            return conflict(
                "tamper_evident",
                format!("{:?}", self.config.tamper_evident),
                format!("{tamper_evident:?}"),
            );
        }
        if *encryption != self.config.encryption {
            // The store is open with its key already: another key (or none)
            // asked for would be refused by an open of its own.
            return conflict(
                "encryption",
                format!("{:?}", self.config.encryption),
                format!("{encryption:?}"),
            );
        }
        if *key_vault != self.config.key_vault {
            // Appends of both handles must seal with the same entity keys.
            return conflict(
                "key_vault",
                format!("{:?}", self.config.key_vault),
                format!("{key_vault:?}"),
            );
        }
        if *resize_wait != self.config.resize_wait {
            return conflict(
                "resize_wait",
                format!("{:?}", self.config.resize_wait),
                format!("{resize_wait:?}"),
            );
        }
        Ok(())
    }

    fn open_new(path: &Path, config: VarveConfig, seed: Option<Seed>) -> Result<Arc<Store>> {
        let (seed, seed_keys) = match seed {
            Some(Seed { identity, keys }) => (Some(identity), keys),
            None => (None, Vec::new()),
        };
        let recorded = identity::read_identity(path)?;
        match identity::check_data_file(path)? {
            identity::DataFile::Missing | identity::DataFile::Empty => {
                if let Some(recorded) = recorded {
                    return Err(Error::DataFileMissing {
                        path: path.to_path_buf(),
                        store_id: recorded.id,
                    });
                }
            }
            // A store's identity record is written after its first commit,
            // so its data file holds at least the meta pages; without a record
            // the file may be a store another process is creating right now
            // (LMDB's own header check, under its lock, decides).
            identity::DataFile::Partial { expected, actual } => {
                if recorded.is_some() {
                    return Err(Error::Truncated {
                        path: path.join(identity::DATA_FILE),
                        expected,
                        actual,
                    });
                }
            }
            identity::DataFile::Whole => {}
        }
        let page = page_size();
        let map_size = config.map_size.max(page).div_ceil(page) * page;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(map_size)
            .max_readers(config.max_readers)
            .max_dbs(16);
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
        let opened = retry_while_closing(|| {
            // SAFETY: `open` is unsafe because memory-mapping a file is only
            // sound if nothing truncates or rewrites it underneath us. The
            // directory belongs to this store; LMDB's lock file coordinates
            // with other processes that use it through LMDB, and the
            // process-wide registry (whose lock the caller holds) guarantees
            // this process opens it only once.
            unsafe { options.open(path) }
        });
        let env = opened.map_err(open_env_error(path, config.max_readers))?;
        // Processes that died holding snapshots left their reader slots taken,
        // pinning old pages; free them (`snapshot` also does when slots run out).
        env.clear_stale_readers().map_err(storage_error(
            "clearing the reader slots of dead processes",
            config.max_readers,
        ))?;
        let err = storage_error("creating the store's databases", config.max_readers);
        let wtxn = begin_adopting(&env, path, &err, Env::write_txn)?;
        let mut checked = None;
        let mut keyring = None;
        let mut key_vault = None;
        let created =
            env.create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, OpenError> {
                // A store of varvedb 0.4 (its log in a `global_events`
                // database, no `meta`) is refused before anything is
                // created in it: treated as new, its events would vanish
                // from view under a fresh, empty store.
                let main = opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .open(wtxn)?;
                if legacy_store(main, wtxn)? {
                    return Err(OpenError::Varve(Error::LegacyStore {
                        path: path.to_path_buf(),
                    }));
                }
                let mut db = |name| {
                    opener
                        .database_options()
                        .types::<Bytes, Bytes>()
                        .name(name)
                        .create(wtxn)
                };
                let dbs = (
                    db("meta")?,
                    db("catalog")?,
                    db("index")?,
                    db("events")?,
                    db("state")?,
                    db("ids")?,
                    db("keys")?,
                    db("chain")?,
                    db("seals")?,
                );
                let mut kv = (&mut *wtxn, &dbs.0);
                let c = probe::initialize_or_check(&mut kv, path, recorded.map(|r| r.id), seed)
                    .map_err(OpenError::Varve)?;
                // The chain asked for: recorded in a new store, checked
                // against an existing one's (before anything is committed).
                let found = chain::read_meta(&kv, config.max_readers).map_err(OpenError::Varve)?;
                let requested = config.tamper_evident.as_ref();
                let new = chain::settle_at_open(path, c.id, found, requested, c.created)
                    .map_err(OpenError::Varve)?;
                if let Some(record) = new {
                    chain::write_meta(&mut kv, &record, config.max_readers)
                        .map_err(OpenError::Varve)?;
                }
                if c.created && !seed_keys.is_empty() {
                    // A restore rebuilding an encrypted store: the source's
                    // id and wrapped keys, so its blocks open here.
                    crypt::adopt_records(wtxn, &dbs.0, &seed_keys).map_err(OpenError::Varve)?;
                }
                let create = c.created && seed_keys.is_empty();
                let key = config.encryption.as_ref();
                keyring = crypt::settle_at_open(wtxn, &dbs.0, path, c.id, key, create)
                    .map_err(OpenError::Varve)?;
                let recorded = dbs.0.get(wtxn, vault::VAULT_RECORD)?.map(<[u8]>::to_vec);
                let (opened, record) = vault::settle_at_open(
                    path,
                    recorded.as_deref(),
                    &config,
                    keyring.is_some(),
                    c.id,
                    true,
                    || crypt::derive_master(wtxn, &dbs.0, path, key),
                    || vault::log_end(wtxn, &dbs.3),
                )
                .map_err(OpenError::Varve)?;
                if let Some(record) = record {
                    dbs.0.put(wtxn, vault::VAULT_RECORD, &record)?;
                }
                key_vault = opened;
                checked = Some(c);
                Ok(CommitOrAbort::<_, ()>::Commit(dbs))
            });
        let (meta, catalog, index, events, state, ids, keys, chain, seals) = match created {
            Ok(committed) => committed.unwrap_commit(),
            Err(OpenError::Heed(e)) => return Err(err(e)),
            Err(OpenError::Varve(e)) => return Err(e),
        };
        let Some(checked) = checked else {
            return Err(err(heed::Error::Mdb(MdbError::Panic)));
        };
        // Written after the first commit, so a record never names a store
        // whose data file was never complete; an older store adopts one here.
        if recorded.is_none() {
            // The record must never reach the disk before the commit that put
            // the id in the data file: with NoMetaSync or NoSync that commit's
            // meta page is not synced yet, and a power cut would leave a
            // record naming a store the data file does not hold (the store
            // would refuse to open). One forced sync, once per store.
            env.force_sync().map_err(storage_error(
                "syncing the new store before recording its identity",
                config.max_readers,
            ))?;
            identity::write_identity(
                path,
                &identity::Identity {
                    id: checked.id,
                    format: FORMAT_VERSION,
                    created_micros: checked.created_micros,
                },
            )?;
        }
        let store = Store::assemble(
            path,
            config,
            env,
            Dbs {
                meta,
                catalog,
                index,
                events,
                state: Some(state),
                ids: Some(ids),
                keys: Some(keys),
                chain: Some(chain),
                seals: Some(seals),
            },
            checked.id,
            Access::ReadWrite,
            keyring,
        )?;
        if let Some(v) = key_vault {
            let _ = store.vault.set(v);
        }
        store.trace_open(&checked);
        Ok(store)
    }

    /// A read-only open: the same checks as [`Store::open_new`] (the data
    /// file's length, the identity record, the format and encoding), made
    /// without writing anything. LMDB opens with `MDB_RDONLY`; it still
    /// needs its lock file (`lock.mdb`) to take a reader slot beside other
    /// processes. Where the lock file cannot be opened for writing (a
    /// directory and lock file this user may only read), the environment
    /// opens with `MDB_NOLOCK`: then this process's snapshots are invisible
    /// to writers, so a writer in another process may reuse the pages they
    /// read. That mode is meant for a store nobody writes meanwhile (a
    /// backup, a stopped application); see `docs/operations.md`.
    fn open_read_only(path: &Path, config: VarveConfig) -> Result<Arc<Store>> {
        let recorded = identity::read_identity(path)?;
        match identity::check_data_file(path)? {
            identity::DataFile::Missing | identity::DataFile::Empty => {
                return Err(match recorded {
                    Some(recorded) => Error::DataFileMissing {
                        path: path.to_path_buf(),
                        store_id: recorded.id,
                    },
                    None => Error::Open {
                        path: path.to_path_buf(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no store here (no data.mdb, and a read-only open creates none)",
                        ),
                    },
                });
            }
            // A store still being created (see `open_new`): a read-only open
            // cannot wait for LMDB to finish it, and must not map a short file.
            identity::DataFile::Partial { expected, actual } => {
                return Err(Error::Truncated {
                    path: path.join(identity::DATA_FILE),
                    expected,
                    actual,
                })
            }
            identity::DataFile::Whole => {}
        }
        let page = page_size();
        let map_size = config.map_size.max(page).div_ceil(page) * page;
        let open = |flags: EnvFlags| {
            let mut options = EnvOpenOptions::new().read_txn_without_tls();
            options
                .map_size(map_size)
                .max_readers(config.max_readers)
                .max_dbs(16);
            // SAFETY: READ_ONLY only removes abilities. NO_LOCK (passed only
            // when the lock file cannot be written) drops LMDB's reader
            // table for this process: its snapshots are then not protected
            // from page reuse by writers in *other* processes. Within this
            // process the gate still orders remaps against snapshots; the
            // cross-process consequence is the documented limit of this
            // mode (a store nobody writes meanwhile), which the caller chose
            // by opening a store it cannot lock.
            unsafe { options.flags(flags) };
            // SAFETY: as in `open_new`: the registry opens this directory
            // once per process, and LMDB's lock file (when usable)
            // coordinates with other processes.
            unsafe { options.open(path) }
        };
        let env = match retry_while_closing(|| open(EnvFlags::READ_ONLY)) {
            Ok(env) => env,
            Err(heed::Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                open(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK)
                    .map_err(open_env_error(path, config.max_readers))?
            }
            Err(e) => return Err(open_env_error(path, config.max_readers)(e)),
        };
        let err = storage_error("opening the store's databases", config.max_readers);
        let rtxn = begin_adopting(&env, path, &err, Env::read_txn)?;
        let mut checked = None;
        let mut keyring = None;
        let mut key_vault = None;
        let opened = env.open_databases_and_commit(rtxn, |opener, rtxn| -> Result<_, OpenError> {
            let db = |name| {
                opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .name(name)
                    .open(rtxn)
            };
            let Some(meta) = db("meta")? else {
                return Err(OpenError::Varve(Error::Open {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no varvedb store has been created here yet (the LMDB file has no `meta`)",
                    ),
                }));
            };
            let kv = (rtxn, &meta);
            let c = probe::check(&kv, path, recorded.map(|r| r.id)).map_err(OpenError::Varve)?;
            let found = chain::read_meta(&kv, config.max_readers).map_err(OpenError::Varve)?;
            chain::settle_at_open(path, c.id, found, config.tamper_evident.as_ref(), false)
                .map_err(OpenError::Varve)?;
            keyring = crypt::open_keyring(rtxn, &meta, path, c.id, config.encryption.as_ref())
                .map_err(OpenError::Varve)?;
            let recorded = meta.get(rtxn, vault::VAULT_RECORD)?.map(<[u8]>::to_vec);
            key_vault = vault::settle_at_open(
                path,
                recorded.as_deref(),
                &config,
                keyring.is_some(),
                c.id,
                false,
                || crypt::derive_master(rtxn, &meta, path, config.encryption.as_ref()),
                || match db("events").map_err(storage_error("opening the event log", 0))? {
                    Some(events) => vault::log_end(rtxn, &events),
                    None => Ok(0),
                },
            )
            .map_err(OpenError::Varve)?
            .0;
            checked = Some(c);
            fn required<D>(name: &'static str, db: Option<D>) -> Result<D, OpenError> {
                db.ok_or_else(|| {
                    OpenError::Varve(Error::Corruption {
                        location: Location::Record(format!("the `{name}` database")),
                        detail: "missing from a store that has metadata".into(),
                    })
                })
            }
            let dbs = (
                meta,
                required("catalog", db("catalog")?)?,
                required("index", db("index")?)?,
                required("events", db("events")?)?,
                // Stores from before the `state` database: it reads as empty.
                db("state")?,
                // Stores from before event metadata (issue 12): no event
                // ids, no entity keys. Both read as empty.
                db("ids")?,
                db("keys")?,
                // Stores from before the chain (format 3): unchained.
                db("chain")?,
                db("seals")?,
            );
            Ok(CommitOrAbort::<_, ()>::Commit(dbs))
        });
        let (meta, catalog, index, events, state, ids, keys, chain, seals) = match opened {
            Ok(committed) => committed.unwrap_commit(),
            Err(OpenError::Heed(e)) => return Err(err(e)),
            Err(OpenError::Varve(e)) => return Err(e),
        };
        let Some(checked) = checked else {
            return Err(err(heed::Error::Mdb(MdbError::Panic)));
        };
        let dbs = Dbs {
            meta,
            catalog,
            index,
            events,
            state,
            ids,
            keys,
            chain,
            seals,
        };
        let store = Store::assemble(
            path,
            config,
            env,
            dbs,
            checked.id,
            Access::ReadOnly,
            keyring,
        )?;
        if let Some(v) = key_vault {
            let _ = store.vault.set(v);
        }
        store.trace_open(&checked);
        Ok(store)
    }

    /// Reports an open (feature `tracing`): what was opened, how, and
    /// whether the open created or upgraded the store.
    fn trace_open(&self, checked: &probe::Checked) {
        crate::trace::event!(
            INFO,
            "varvedb.open",
            "store opened",
            path = crate::trace::display(self.path.display()),
            store_id = crate::trace::display(checked.id),
            read_only = self.access == Access::ReadOnly,
            format = FORMAT_VERSION,
            found_format = checked.found,
            created = checked.found.is_none(),
            upgraded = checked.found.is_some_and(|f| f < FORMAT_VERSION)
                && self.access == Access::ReadWrite,
            map_size = self.map_size.load(Ordering::Acquire) as u64,
        );
    }

    /// The rest of an open, once the environment and its databases are open.
    fn assemble(
        path: &Path,
        config: VarveConfig,
        env: Env<WithoutTls>,
        dbs: Dbs,
        store_id: StoreId,
        access: Access,
        crypt: Option<crypt::Keyring>,
    ) -> Result<Arc<Store>> {
        let data_path = path.join(identity::DATA_FILE);
        let data_file = std::fs::File::open(&data_path).map_err(open_error(&data_path))?;
        let file_key = identity::file_key(&data_file, &data_path)?;
        // No other handle on `env` exists yet, so nothing can remap it while
        // `mdb_env_info` reads the meta pages.
        let map_size = env.info().map_size;
        let Dbs {
            meta,
            catalog,
            index,
            events,
            state,
            ids,
            keys,
            chain,
            seals,
        } = dbs;
        let engine = Engine::Lmdb {
            env,
            file_key,
            data_file,
        };
        let t = Table::Lmdb;
        let tables = Tables {
            meta: t(meta),
            catalog: t(catalog),
            index: t(index),
            events: t(events),
            state: state.map(t),
            ids: ids.map(t),
            keys: keys.map(t),
            chain: chain.map(t),
            seals: seals.map(t),
        };
        Store::assemble_with(
            path, config, engine, tables, map_size, store_id, access, crypt,
        )
    }

    /// The rest of an open of either engine.
    // Each argument is one part of an opened store; grouping them would only
    // move the list into a struct built once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble_with(
        path: &Path,
        config: VarveConfig,
        engine: Engine,
        tables: Tables,
        map_size: usize,
        store_id: StoreId,
        access: Access,
        crypt: Option<crypt::Keyring>,
    ) -> Result<Arc<Store>> {
        let Tables {
            meta,
            catalog,
            index,
            events,
            state,
            ids,
            keys,
            chain,
            seals,
        } = tables;
        let chain_key = config.tamper_evident.and_then(|c| c.key());
        let store = Arc::new(Store {
            path: path.to_path_buf(),
            engine,
            catalog,
            index,
            events,
            state,
            ids,
            keys,
            meta,
            chain,
            seals,
            vault: std::sync::OnceLock::new(),
            chain_key: parking_lot::RwLock::new(chain_key),
            crypt,
            commits: Arc::default(),
            group: group::GroupCommit::default(),
            gate: Arc::new(gate::MapGate::default()),
            writer: Mutex::new(()),
            streams: catalog::Cache::default(),
            view_slots: Mutex::new(Vec::new()),
            map_size: AtomicUsize::new(map_size),
            config,
            store_id,
            access,
        });
        // Publish the log's end, the mark subscriptions wait past. A damaged
        // last block is not an open error: reads report it where it is.
        let _ = store.snapshot().and_then(|mut view| view.end_global());
        Ok(store)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How this store was opened.
    pub(crate) fn access(&self) -> Access {
        self.access
    }

    /// The `state` database, for writers (a read-only store refuses them).
    pub(crate) fn state_db(&self) -> Result<&Table> {
        self.state.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.path.clone(),
            operation: "writing state",
        })
    }

    /// The `ids` database (event ids), for writers (a read-only store
    /// refuses them).
    pub(crate) fn ids_db(&self) -> Result<&Table> {
        self.ids.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.path.clone(),
            operation: "writing event ids",
        })
    }

    /// The `keys` database (entity keys), for writers (a read-only store
    /// refuses them).
    pub(crate) fn keys_db(&self) -> Result<&Table> {
        self.keys.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.path.clone(),
            operation: "writing entity keys",
        })
    }

    /// `Error::ReadOnly` for `operation` if this store was opened read-only.
    pub(crate) fn check_writable(&self, operation: &'static str) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly {
                path: self.path.clone(),
                operation,
            }),
        }
    }

    /// The keyring of an encrypted store (`None`: plaintext).
    pub(crate) fn keyring(&self) -> Option<&crypt::Keyring> {
        self.crypt.as_ref()
    }

    /// The key vault of entity keys, if the store was opened with one.
    #[inline]
    pub(crate) fn vault(&self) -> Option<&vault::Vault> {
        self.vault.get()
    }

    pub(crate) fn config(&self) -> &VarveConfig {
        &self.config
    }

    /// The store's id (see [`StoreId`]).
    pub(crate) fn store_id(&self) -> StoreId {
        self.store_id
    }

    /// The id of the newest committed transaction (by any process).
    ///
    /// `mdb_env_info` reads LMDB's meta pages through pointers into the map,
    /// so it runs inside the gate: never while a writer remaps. Waits, like a
    /// new snapshot, while a resize is in progress. A caller that already
    /// holds a guard uses [`Store::last_txn_id_in`] instead (entering again
    /// would wait for a resize that waits for its own guard).
    pub(crate) fn last_txn_id(&self) -> usize {
        let guard = self.gate.enter();
        self.last_txn_id_in(&guard)
    }

    /// How many round trips to the server this store's calls made (`None`
    /// on LMDB): for the tests and the bench.
    #[cfg(feature = "postgres")]
    pub(crate) fn round_trips(&self) -> Option<u64> {
        match &self.engine {
            Engine::Lmdb { .. } => None,
            Engine::Pg(pg) => Some(pg.round_trips()),
        }
    }

    /// How many times this store saw signs that the server lost commits it
    /// had acknowledged (always 0 on LMDB, which cannot): a subscription
    /// that sees it move checks the last event it delivered is still there.
    #[inline]
    pub(crate) fn rewinds(&self) -> u64 {
        match &self.engine {
            Engine::Lmdb { .. } => 0,
            #[cfg(feature = "postgres")]
            Engine::Pg(pg) => pg.rewinds(),
        }
    }

    /// [`Store::last_txn_id`] for a caller holding a gate guard: `_inside` is
    /// the proof that no remap can run meanwhile.
    pub(crate) fn last_txn_id_in(&self, _inside: &gate::GateGuard) -> usize {
        match &self.engine {
            Engine::Lmdb { env, .. } => env.info().last_txn_id,
            #[cfg(feature = "postgres")]
            Engine::Pg(pg) => pg.last_txn_id(),
        }
    }

    /// The LMDB environment, or [`Error::Unsupported`] for `operation` on
    /// another engine.
    pub(crate) fn env(&self, operation: &'static str) -> Result<&Env<WithoutTls>> {
        #[cfg(not(feature = "postgres"))]
        let _ = operation;
        match &self.engine {
            Engine::Lmdb { env, .. } => Ok(env),
            #[cfg(feature = "postgres")]
            Engine::Pg(_) => Err(Error::Unsupported {
                operation,
                backend: postgres::BACKEND,
            }),
        }
    }

    /// [`Error::Unsupported`] for `operation` unless the store is a local
    /// (LMDB) one: what only a directory can do (file backups).
    pub(crate) fn require_local(&self, operation: &'static str) -> Result<()> {
        self.env(operation).map(drop)
    }

    /// The LMDB data file, if this store has one.
    pub(crate) fn data_file(&self) -> Option<&std::fs::File> {
        match &self.engine {
            Engine::Lmdb { data_file, .. } => Some(data_file),
            #[cfg(feature = "postgres")]
            Engine::Pg(_) => None,
        }
    }

    /// The data file's identity (device and inode), if this store has one.
    pub(crate) fn file_key(&self) -> Option<&identity::FileKey> {
        match &self.engine {
            Engine::Lmdb { file_key, .. } => Some(file_key),
            #[cfg(feature = "postgres")]
            Engine::Pg(_) => None,
        }
    }

    /// Whether a writer is waiting for snapshots to close so it can grow the map.
    pub(crate) fn resize_pending(&self) -> bool {
        self.gate.resize_pending()
    }

    pub(crate) fn err(&self, operation: &'static str) -> impl Fn(heed::Error) -> Error {
        storage_error(operation, self.config.max_readers)
    }

    /// Doubles the map (`Remap::Grow`) or adopts the size another process set
    /// (`Remap::Adopt`), once no transaction of this process is open.
    fn remap(&self, how: Remap) -> Result<()> {
        self.remap_within(how, Some(self.config.resize_wait))
    }

    /// [`Store::remap`], waiting at most `wait` for open transactions (and
    /// `None`: not at all, see [`gate::MapGate::exclusive_within`]).
    fn remap_within(&self, how: Remap, wait: Option<std::time::Duration>) -> Result<()> {
        let doubled = |size: usize| size.saturating_mul(2).div_ceil(page_size()) * page_size();
        let wanted = match how {
            Remap::Grow => doubled(self.map_size.load(Ordering::Acquire)),
            Remap::Adopt => 0,
        };
        if matches!(how, Remap::Adopt) {
            // Another process grew the map: before mapping more of the file,
            // check it still holds every page the newest commit uses.
            if let Some(file) = self.data_file() {
                identity::check_open_file(file, &self.path.join(identity::DATA_FILE))?;
            }
        }
        let release_idle = || self.close_idle_views();
        let old_size = self.map_size.load(Ordering::Acquire);
        let timer = crate::trace::timer!(INFO);
        let env = self.env("growing the memory map")?;
        let result = self.gate.exclusive_within(wait, release_idle, || {
            // Read again: a remap that ran while we waited (an adoption)
            // may have changed the size; remaps never overlap.
            let new_size = match how {
                Remap::Grow => doubled(self.map_size.load(Ordering::Acquire)),
                Remap::Adopt => 0,
            };
            // SAFETY: `exclusive_within` runs this only while the gate
            // counts no open transaction in this process: every snapshot and
            // write transaction holds a gate guard for its whole life, and
            // new ones wait at the gate. That is LMDB's requirement for
            // `mdb_env_set_mapsize`.
            unsafe { env.resize(new_size) }?;
            // Still inside the gate, after the remap: the meta pages that
            // `mdb_env_info` reads are mapped.
            self.map_size.store(env.info().map_size, Ordering::Release);
            Ok(())
        });
        match result {
            Ok(r) => {
                crate::trace::event!(
                    INFO,
                    "varvedb.map_resize",
                    "memory map resized",
                    adopted = matches!(how, Remap::Adopt),
                    old_size = old_size as u64,
                    new_size = self.map_size.load(Ordering::Acquire) as u64,
                    duration_us = timer.micros(),
                    ok = r.is_ok(),
                );
                r.map_err(self.err("growing the memory map"))
            }
            Err(held) => Err({
                crate::trace::event!(
                    WARN,
                    "varvedb.map_resize",
                    "memory map growth blocked by open snapshots",
                    adopted = matches!(how, Remap::Adopt),
                    old_size = old_size as u64,
                    held = held as u64,
                    duration_us = timer.micros(),
                    ok = false,
                );
                Error::MapResizeBlocked {
                    wanted,
                    held,
                    waited_ms: wait.unwrap_or_default().as_millis() as u64,
                }
            }),
        }
    }

    /// A slot for a reader to keep its snapshot in between calls. While the
    /// reader is not inside a call, a writer that must grow the map may close
    /// the snapshot (the reader opens a new one on its next call), so an idle
    /// reader never blocks growth.
    pub(crate) fn view_slot(&self) -> ViewSlot {
        let slot = ViewSlot::default();
        let mut slots = self.view_slots.lock();
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// Closes the cached snapshot of every reader that is not inside a call.
    /// Events the readers handed out keep their own snapshot open.
    fn close_idle_views(&self) {
        for slot in self.view_slots.lock().iter() {
            if let Some(mut view) = slot.upgrade().as_deref().and_then(Mutex::try_lock) {
                *view = None;
            }
        }
    }

    /// Doubles the map (at least), for a write that hit `MDB_MAP_FULL`.
    fn grow(&self) -> Result<()> {
        self.remap(Remap::Grow)
    }

    /// [`Store::snapshot`] for a thread that must never wait at the map
    /// gate (the commit poller: see [`gate::MapGate::try_enter`]). `None`
    /// where that would wait: a growth pending or running, or another
    /// process's growth to adopt while a transaction of this process is open
    /// (left to the next call).
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn snapshot_without_waiting(self: &Arc<Self>) -> Result<Option<View>> {
        let env = match &self.engine {
            Engine::Lmdb { env, .. } => env,
            // The gate never closes for a server's store: nothing to resize.
            #[cfg(feature = "postgres")]
            Engine::Pg(_) => return self.snapshot().map(Some),
        };
        // As `snapshot`, but what would wait gives up: at most one adoption
        // (with no transaction of this process open), and the same two ways
        // to free a reader slot, neither of which waits.
        let mut freed = Freed::Nothing;
        let mut adopted = false;
        loop {
            let Some(guard) = self.gate.try_enter() else {
                return Ok(None);
            };
            match env.clone().static_read_txn() {
                Ok(txn) => return Ok(Some(View::new(Txn::Ro(txn), guard, Arc::clone(self)))),
                Err(heed::Error::Mdb(MdbError::MapResized)) if !adopted => {
                    drop(guard);
                    adopted = true;
                    match self.remap_within(Remap::Adopt, None) {
                        Ok(()) => {}
                        Err(Error::MapResizeBlocked { .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
                Err(heed::Error::Mdb(MdbError::ReadersFull)) if freed != Freed::IdleViews => {
                    drop(guard);
                    freed = self.free_a_reader_slot(freed)?;
                }
                Err(e) => return Err(self.err("opening a read snapshot")(e)),
            }
        }
    }

    /// The next way to free a slot of a full reader table, after `freed`:
    /// first the slots of dead processes, then the snapshots idle readers of
    /// this process cache (they reopen one on their next call). Returns what
    /// it tried, for the caller's next attempt.
    fn free_a_reader_slot(&self, freed: Freed) -> Result<Freed> {
        Ok(match freed {
            Freed::Nothing => {
                self.clear_stale_readers()?;
                Freed::DeadProcesses
            }
            Freed::DeadProcesses | Freed::IdleViews => {
                self.close_idle_views();
                Freed::IdleViews
            }
        })
    }

    /// Opens a read snapshot of the newest commit.
    pub(crate) fn snapshot(self: &Arc<Self>) -> Result<View> {
        let env = match &self.engine {
            Engine::Lmdb { env, .. } => env,
            #[cfg(feature = "postgres")]
            Engine::Pg(pg) => {
                let txn = pg
                    .begin_read()
                    .map_err(self.err("opening a read snapshot"))?;
                let guard = self.gate.enter();
                return Ok(View::new(Txn::Pg(txn), guard, Arc::clone(self)));
            }
        };
        let mut freed = Freed::Nothing;
        loop {
            let guard = self.gate.enter();
            match env.clone().static_read_txn() {
                Ok(txn) => return Ok(View::new(Txn::Ro(txn), guard, Arc::clone(self))),
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    drop(guard);
                    self.remap(Remap::Adopt)?;
                }
                // The reader table is full. First reclaim the slots of dead
                // processes, then close the snapshots idle readers of this
                // process cache (they reopen one on their next call); fail
                // only when neither freed a slot.
                Err(heed::Error::Mdb(MdbError::ReadersFull)) if freed != Freed::IdleViews => {
                    drop(guard);
                    freed = self.free_a_reader_slot(freed)?;
                }
                Err(e) => return Err(self.err("opening a read snapshot")(e)),
            }
        }
    }

    /// Frees the reader slots of processes that died holding snapshots.
    ///
    /// `mdb_reader_check` touches only the reader table in `lock.mdb` (a
    /// mapping of its own that never moves), not the data map: no gate needed.
    fn clear_stale_readers(&self) -> Result<usize> {
        self.env("clearing stale reader slots")?
            .clear_stale_readers()
            .map_err(self.err("clearing the reader slots of dead processes"))
    }
}

/// What a store created by a restore starts from (see [`Store::open_as`]).
pub(crate) struct Seed {
    /// The source's id and creation time.
    pub(crate) identity: Identity,
    /// The source's encryption records (empty for a plaintext source).
    pub(crate) keys: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What [`Store::remap`] sets the map size to.
#[derive(Debug, Clone, Copy)]
enum Remap {
    /// Double this process's map, for a write that hit `MDB_MAP_FULL`.
    Grow,
    /// Adopt the size another process grew the map to (`MDB_MAP_RESIZED`).
    Adopt,
}

/// What [`Store::snapshot`] has done so far to free a reader slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freed {
    Nothing,
    DeadProcesses,
    IdleViews,
}

/// The error type heed's database-creation helper needs (`From<heed::Error>`).
/// Whether the environment's main database (`main`, whose keys name the
/// named databases) is a varvedb 0.4 store: its `global_events` log without
/// this format's `meta`.
fn legacy_store(
    main: Option<Database<'_, Bytes, Bytes>>,
    txn: &heed::RoTxn,
) -> Result<bool, heed::Error> {
    let Some(main) = main else { return Ok(false) };
    Ok(main.get(txn, b"global_events")?.is_some() && main.get(txn, b"meta")?.is_none())
}

/// The logical databases of an open store, of either engine.
pub(crate) struct Tables {
    pub(crate) meta: Table,
    pub(crate) catalog: Table,
    pub(crate) index: Table,
    pub(crate) events: Table,
    pub(crate) state: Option<Table>,
    pub(crate) ids: Option<Table>,
    pub(crate) keys: Option<Table>,
    pub(crate) chain: Option<Table>,
    pub(crate) seals: Option<Table>,
}

/// The databases an open hands to [`Store::assemble`].
struct Dbs {
    meta: Db,
    catalog: Db,
    index: Db,
    events: Db,
    state: Option<Db>,
    ids: Option<Db>,
    keys: Option<Db>,
    chain: Option<Db>,
    seals: Option<Db>,
}

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

/// Begins the first transaction of an environment this open just made,
/// adopting the map size another process set since LMDB read it.
///
/// A writer in another process can grow the map between `mdb_env_open`
/// (which maps the size recorded then) and this first transaction, which
/// then fails with `MDB_MAP_RESIZED`. Before mapping more of the file, the
/// data file is checked again to hold every page its newest commit uses, as
/// [`Store::remap`] does for a live store.
fn begin_adopting<'e, T>(
    env: &'e Env<WithoutTls>,
    path: &Path,
    err: &impl Fn(heed::Error) -> Error,
    begin: impl Fn(&'e Env<WithoutTls>) -> heed::Result<T>,
) -> Result<T> {
    loop {
        match begin(env) {
            Err(heed::Error::Mdb(MdbError::MapResized)) => {
                if let identity::DataFile::Partial { expected, actual } =
                    identity::check_data_file(path)?
                {
                    return Err(Error::Truncated {
                        path: path.join(identity::DATA_FILE),
                        expected,
                        actual,
                    });
                }
                // SAFETY: `mdb_env_set_mapsize` needs no transaction of this
                // environment open in this process. The environment was
                // opened by the caller a moment ago and not yet handed to
                // anyone (the registry's lock, held by the caller, keeps
                // this process from opening the directory twice); the
                // transaction that failed was never begun.
                unsafe { env.resize(0) }.map_err(err)?;
            }
            other => return other.map_err(err),
        }
    }
}
