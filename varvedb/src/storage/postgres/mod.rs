//! The PostgreSQL engine (feature `postgres`): the logical databases of
//! [`kv`](super::kv) as tables of one PostgreSQL database.
//!
//! | table              | holds                                                     |
//! |--------------------|-----------------------------------------------------------|
//! | `varvedb_schema`   | the schema's version (one row)                            |
//! | `varvedb_head`     | `last`: one past the last global sequence; `txn`: commits |
//! | `varvedb_events`   | one row per event ([`events`]), global sequence the key   |
//! | `varvedb_streams`  | each stream id's version (for SQL readers; kept by appends)|
//! | `varvedb_meta`, `varvedb_catalog`, `varvedb_index`, `varvedb_state`, `varvedb_ids`, `varvedb_keys`, `varvedb_chain`, `varvedb_seals` | `key bytea` → `value bytea`, the LMDB databases' records unchanged |
//!
//! **Writes** run in a `READ COMMITTED` transaction that first locks the
//! head row (`SELECT … FOR UPDATE`): every write transaction of every
//! process serializes there, like LMDB's single writer, so the writer logic
//! above the seam (expected-version check, the next global sequence read
//! from the log's last block) sees every earlier commit and no concurrent
//! one. Each appended block then moves the head
//! (`UPDATE varvedb_head SET last = last + n RETURNING last`), checked
//! against the block's own sequences; the commit bumps `txn` and sends
//! `NOTIFY varvedb` with the new end inside the transaction.
//!
//! **Reads** run in a `REPEATABLE READ READ ONLY` transaction: one
//! consistent snapshot of every table (events are immutable, but runs,
//! state, catalog entries and keys are not), like an LMDB read transaction.
//! Bytes fetched are copied into the transaction's arena of aligned buffers,
//! so the `&[u8]` handed out live as long as the transaction, like slices of
//! the map. Event blocks are fetched `PREFETCH` rows per round trip.
//!
//! The synchronous API runs the client on a private tokio runtime: from a
//! thread outside any runtime the call blocks on it; from inside a caller's
//! runtime the future is spawned onto the private runtime and the calling
//! thread waits for its answer (never `block_on` inside the caller's
//! runtime, which would panic).

mod events;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use parking_lot::Mutex;
use rkyv::util::AlignedVec;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::kv::Pair;
use crate::error::{Error, Result};

pub(crate) use events::{decompose, recompose};

/// The schema version this build creates and reads.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Event rows fetched per round trip when reading blocks.
const PREFETCH: i64 = 256;

/// The `NOTIFY` channel appends wake subscribers on.
const CHANNEL: &str = "varvedb";

/// The most connections one store's pool opens (`max_readers` sets it,
/// from 4): every open snapshot and write transaction holds one.
const MAX_POOL: usize = 16;

/// How long a reader's cached snapshot may stay open unused.
const IDLE_VIEW: Duration = Duration::from_secs(1);

/// The name of the backend in [`Error::Unsupported`].
pub(crate) const BACKEND: &str = "PostgreSQL";

/// Runs `f`, a blocking call of the synchronous API, from async code: under
/// `block_in_place` on a multi-threaded tokio runtime (its other tasks move
/// to other workers meanwhile), in place anywhere else (a current-thread
/// runtime cannot hand its tasks over; `f` then blocks it, as any blocking
/// call would, but never panics).
pub(crate) fn offload<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `sql` on one connection to `url`, outside any store (test setup:
/// `CREATE DATABASE`).
pub(crate) fn admin_execute(url: &str, sql: &str) -> Result<()> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| Error::Open {
        path: "postgresql".into(),
        source: std::io::Error::other(format!("{e}")),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Open {
            path: "postgresql".into(),
            source,
        })?;
    let sql = sql.to_owned();
    let run = async move {
        let (client, connection) = config.connect(NoTls).await?;
        let driver = tokio::spawn(connection);
        let done = client.batch_execute(&sql).await;
        drop(client);
        let _ = driver.await;
        done
    };
    let outcome = std::thread::spawn(move || rt.block_on(run))
        .join()
        .map_err(|_| Error::Open {
            path: "postgresql".into(),
            source: std::io::Error::other("the SQL thread panicked"),
        })?;
    outcome.map_err(|e| Error::Storage {
        operation: "running SQL",
        source: super::engine_error(server(e)),
    })
}

/// A failure of the server or the connection, carried inside
/// `heed::Error::Io` across the seam and turned into
/// [`StorageErrorKind::Server`](crate::StorageErrorKind::Server) by
/// [`engine_error`](super::engine_error).
#[derive(Debug)]
pub(crate) struct ServerFailure {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for ServerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ServerFailure {
    /// The failure as the error type that crosses the seam.
    fn carried(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> heed::Error {
        heed::Error::Io(std::io::Error::other(ServerFailure {
            message: message.into(),
            source,
        }))
    }
}

fn server(e: tokio_postgres::Error) -> heed::Error {
    let message = match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
        None => format!("PostgreSQL: {e}"),
    };
    ServerFailure::carried(message, Some(Box::new(e)))
}

fn pool_error(e: deadpool_postgres::PoolError) -> heed::Error {
    ServerFailure::carried(
        format!("PostgreSQL: no connection from the pool: {e}"),
        Some(Box::new(e)),
    )
}

fn malformed(detail: String) -> heed::Error {
    ServerFailure::carried(format!("PostgreSQL: malformed rows: {detail}"), None)
}

/// The tables of the store. `Events` is special ([`events`]); the others
/// are `key bytea` → `value bytea`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgTable {
    Meta,
    Catalog,
    Index,
    Events,
    State,
    Ids,
    Keys,
    Chain,
    Seals,
}

impl PgTable {
    const KV: [PgTable; 8] = [
        PgTable::Meta,
        PgTable::Catalog,
        PgTable::Index,
        PgTable::State,
        PgTable::Ids,
        PgTable::Keys,
        PgTable::Chain,
        PgTable::Seals,
    ];

    fn name(self) -> &'static str {
        match self {
            PgTable::Meta => "varvedb_meta",
            PgTable::Catalog => "varvedb_catalog",
            PgTable::Index => "varvedb_index",
            PgTable::Events => "varvedb_events",
            PgTable::State => "varvedb_state",
            PgTable::Ids => "varvedb_ids",
            PgTable::Keys => "varvedb_keys",
            PgTable::Chain => "varvedb_chain",
            PgTable::Seals => "varvedb_seals",
        }
    }
}

/// Which neighbour of a key [`PgTxn::seek`] finds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seek {
    /// The greatest key `<=` the one given.
    AtOrBefore,
    /// The greatest key `<`.
    Before,
    /// The smallest key `>`.
    After,
}

/// One PostgreSQL database serving a store: the private runtime, the pool,
/// and the commit listener.
pub(crate) struct Pg {
    /// `Option` only so `Drop` can shut it down without blocking (a runtime
    /// dropped inside a caller's runtime would panic).
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    /// The URL without its password: the store's "path" in errors.
    label: String,
    /// Set when the store is dropped: the listener stops.
    closed: Arc<AtomicBool>,
    /// What the last write transaction of this process knew of the tables
    /// when it committed, and the commit counter its commit left: valid for
    /// the next write transaction only if the head row still shows that
    /// counter (see [`Known`]).
    carry: Mutex<Option<Box<Known>>>,
    /// The round trips of write transactions ([`Pg::round_trips`]).
    round_trips: AtomicU64,
    /// `SET LOCAL synchronous_commit = off` in every write transaction
    /// (a relaxed [`Durability`](crate::Durability)).
    relaxed: bool,
    /// How long a transaction waits for a pooled connection in all.
    pool_wait: Duration,
    /// Closes the snapshots this store's idle readers keep between calls
    /// (each holds a pooled connection): called while a transaction waits
    /// for a connection, like LMDB's full reader table.
    reclaim: Mutex<Option<Reclaim>>,
    /// The epochs ([`Known::epoch`]) and log ends this store has seen: tells
    /// subscriptions when the server may have lost commits since.
    watch: Arc<Watch>,
}

/// What tells a store that the server lost commits it had acknowledged: the
/// epoch (server start time, head table oid) changed, or the log's end the
/// commit listener reads on (re)connecting is below one it saw before.
#[derive(Default)]
pub(crate) struct Watch {
    /// The last epoch seen (empty before the first).
    epoch: Mutex<String>,
    /// The greatest log end the listener saw.
    high: AtomicU64,
    /// How many times commits may have been lost ([`Pg::rewinds`]).
    rewinds: AtomicU64,
}

impl Watch {
    /// Records `epoch`, read from the head row: a change counts a rewind.
    fn observe_epoch(&self, epoch: &str) {
        if epoch.is_empty() {
            return;
        }
        let mut seen = self.epoch.lock();
        if *seen != epoch {
            if !seen.is_empty() {
                self.rewinds.fetch_add(1, Ordering::AcqRel);
            }
            *seen = epoch.to_owned();
        }
    }

    /// Records the log's end the listener read when it (re)connected: below
    /// one it saw before is a rewind.
    fn observe_end(&self, end: u64) {
        if self.high.fetch_max(end, Ordering::AcqRel) > end {
            self.high.store(end, Ordering::Release);
            self.rewinds.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records a log end notified by a commit.
    fn notified(&self, end: u64) {
        self.high.fetch_max(end, Ordering::AcqRel);
    }
}

/// What [`Pg::reclaim`] calls.
type Reclaim = Arc<dyn Fn() + Send + Sync>;

/// How often a transaction waiting for a pooled connection closes idle
/// readers' snapshots again.
const RECLAIM_EVERY: Duration = Duration::from_millis(20);

/// A connection from `pool`, waiting up to `wait` in all. When none is free
/// at once, and every `RECLAIM_EVERY` while waiting, `reclaim` closes the
/// snapshots idle readers keep (the connections they hold return to the
/// pool): idle readers never starve a writer or a nested snapshot.
async fn pooled(
    pool: &Pool,
    reclaim: Option<&Reclaim>,
    wait: Duration,
) -> std::result::Result<Object, deadpool_postgres::PoolError> {
    use deadpool_postgres::{PoolError, TimeoutType, Timeouts};
    let deadline = tokio::time::Instant::now() + wait;
    let mut step = Duration::ZERO;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let timeouts = Timeouts {
            wait: Some(step.min(left)),
            ..pool.timeouts()
        };
        match pool.timeout_get(&timeouts).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) if !left.is_zero() => {
                if let Some(reclaim) = reclaim {
                    reclaim();
                }
                step = RECLAIM_EVERY;
            }
            got => return got,
        }
    }
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("label", &self.label).finish()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The text a URL is shown as: everything but the password.
fn label_of(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

impl Pg {
    /// Parses `url`, starts the private runtime and the pool, and creates or
    /// checks the schema. A caller waits up to `pool_wait` for a pooled
    /// connection; `durability` other than `Full` commits writes with
    /// `synchronous_commit = off`.
    pub(crate) fn connect(
        url: &str,
        pool_size: usize,
        pool_wait: Duration,
        durability: crate::config::Durability,
    ) -> Result<Arc<Pg>> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| Error::Open {
            path: "postgresql".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not a PostgreSQL connection string: {e}"),
            ),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let label = label_of(&config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("varvedb-postgres")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| Error::Open {
                path: label.clone().into(),
                source,
            })?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(pool_wait))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Open {
                path: label.clone().into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let pg = Arc::new(Pg {
            handle: rt.handle().clone(),
            rt: Some(rt),
            pool,
            config,
            label,
            closed: Arc::new(AtomicBool::new(false)),
            carry: Mutex::new(None),
            round_trips: AtomicU64::new(0),
            relaxed: durability != crate::config::Durability::Full,
            pool_wait,
            reclaim: Mutex::new(None),
            watch: Arc::default(),
        });
        pg.migrate()?;
        Ok(pg)
    }

    /// How many times a write transaction of this store went to the server
    /// and waited for its answer since the store was opened (one round trip
    /// each, whatever was pipelined in it; statements are prepared once per
    /// connection, inside the first such trip).
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// How many times this store saw signs that the server lost commits it
    /// had acknowledged (a new epoch, or a log end below one seen before):
    /// a subscription that sees it move checks the last event it delivered
    /// is still in the log.
    pub(crate) fn rewinds(&self) -> u64 {
        self.watch.rewinds.load(Ordering::Acquire)
    }

    /// The URL without its password.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Runs `fut` on the private runtime and waits for its output, from any
    /// thread: outside a runtime by blocking on it, inside one (a caller's
    /// tokio task) by spawning it and waiting on a channel.
    pub(crate) fn block<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.handle.block_on(fut);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        // The runtime outlives this call (`self` holds it); the task sends
        // exactly once unless the runtime shuts down, which only `Drop`
        // does, when no call can be running.
        match rx.recv() {
            Ok(out) => out,
            Err(_) => unreachable!("the private runtime dropped a task of a live store"),
        }
    }

    /// A connection from the pool.
    fn client(&self) -> heed::Result<Arc<Object>> {
        let pool = self.pool.clone();
        self.block(async move { pool.get().await })
            .map(Arc::new)
            .map_err(pool_error)
    }

    /// Creates the schema in an empty database, checks its version in one
    /// that has it; refuses a newer one.
    fn migrate(&self) -> Result<()> {
        let err = |e: heed::Error| Error::Storage {
            operation: "creating the PostgreSQL schema",
            source: super::engine_error(e),
        };
        let client = self.client().map_err(err)?;
        let mut ddl = String::from(
            "CREATE TABLE IF NOT EXISTS varvedb_head (
                id smallint PRIMARY KEY CHECK (id = 1),
                last bigint NOT NULL,
                txn bigint NOT NULL);
             INSERT INTO varvedb_head VALUES (1, 0, 0) ON CONFLICT DO NOTHING;
             CREATE TABLE IF NOT EXISTS varvedb_events (
                global bigint PRIMARY KEY,
                stream_tag integer NOT NULL,
                stream_id bigint NOT NULL,
                stream_seq bigint NOT NULL,
                event_id bytea UNIQUE,
                fingerprint bigint NOT NULL,
                committed_at bigint NOT NULL,
                metadata bytea NOT NULL,
                payload bytea NOT NULL,
                block_first bigint NOT NULL,
                block_head bytea,
                UNIQUE (stream_tag, stream_id, stream_seq));
             CREATE TABLE IF NOT EXISTS varvedb_streams (
                stream_tag integer NOT NULL,
                stream_id bigint NOT NULL,
                version bigint NOT NULL,
                PRIMARY KEY (stream_tag, stream_id));",
        );
        for t in PgTable::KV {
            ddl.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} (key bytea PRIMARY KEY, value bytea NOT NULL);",
                t.name()
            ));
        }
        let found = self
            .block(async move {
                // One creator at a time, across processes.
                client
                    .batch_execute(
                        "BEGIN;
                         SELECT pg_advisory_xact_lock(7235460817249710);
                         CREATE TABLE IF NOT EXISTS varvedb_schema (
                            id smallint PRIMARY KEY CHECK (id = 1),
                            version integer NOT NULL);",
                    )
                    .await?;
                let row = client
                    .query_opt("SELECT version FROM varvedb_schema WHERE id = 1", &[])
                    .await?;
                let found: Option<i32> = match row {
                    Some(r) => Some(r.try_get(0)?),
                    None => None,
                };
                if found.is_none() {
                    client.batch_execute(&ddl).await?;
                    client
                        .execute(
                            "INSERT INTO varvedb_schema VALUES (1, $1)",
                            &[&SCHEMA_VERSION],
                        )
                        .await?;
                }
                client.batch_execute("COMMIT").await?;
                Ok(found)
            })
            .map_err(|e| err(server(e)))?;
        match found {
            Some(v) if v > SCHEMA_VERSION => Err(Error::UnsupportedFormat {
                path: self.label.clone().into(),
                found: v as u32,
                supported: SCHEMA_VERSION as u32,
            }),
            _ => Ok(()),
        }
    }

    /// The store's commit counter (`varvedb_head.txn`), or `usize::MAX` when
    /// the server cannot be asked (a snapshot opened next reports why). Its
    /// connection is taken as a transaction's is ([`pooled`]): idle readers'
    /// snapshots are closed while it waits, so they never starve it.
    pub(crate) fn last_txn_id(&self) -> usize {
        let pool = self.pool.clone();
        let (reclaim, wait) = (self.reclaim.lock().clone(), self.pool_wait);
        self.block(async move {
            let client = pooled(&pool, reclaim.as_ref(), wait).await.ok()?;
            let row = client
                .query_one("SELECT txn FROM varvedb_head WHERE id = 1", &[])
                .await
                .ok()?;
            row.try_get::<_, i64>(0).ok().map(|t| t as usize)
        })
        .unwrap_or(usize::MAX)
    }

    /// Opens a read snapshot: a `REPEATABLE READ READ ONLY` transaction.
    pub(crate) fn begin_read(self: &Arc<Self>) -> heed::Result<PgTxn> {
        self.begin(false)
    }

    /// Opens a write transaction: `READ COMMITTED`, the head row locked.
    pub(crate) fn begin_write(self: &Arc<Self>) -> heed::Result<PgTxn> {
        self.begin(true)
    }

    fn begin(self: &Arc<Self>, write: bool) -> heed::Result<PgTxn> {
        let pool = self.pool.clone();
        let sql = match (write, self.relaxed) {
            (true, false) => {
                "BEGIN ISOLATION LEVEL READ COMMITTED;
                 SELECT txn, last, pg_postmaster_start_time(), tableoid
                 FROM varvedb_head WHERE id = 1 FOR UPDATE"
            }
            // A relaxed durability: the commit returns before its WAL is
            // flushed (a server crash may lose the last commits, never
            // leaves a partial one).
            (true, true) => {
                "BEGIN ISOLATION LEVEL READ COMMITTED;
                 SET LOCAL synchronous_commit = off;
                 SELECT txn, last, pg_postmaster_start_time(), tableoid
                 FROM varvedb_head WHERE id = 1 FOR UPDATE"
            }
            (false, _) => {
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                 SELECT txn, last, pg_postmaster_start_time(), tableoid
                 FROM varvedb_head WHERE id = 1"
            }
        };
        if write {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        let (reclaim, wait) = (self.reclaim.lock().clone(), self.pool_wait);
        let (client, txn, last, tail, epoch) = self.block(async move {
            let client = pooled(&pool, reclaim.as_ref(), wait)
                .await
                .map_err(pool_error)?;
            // A write transaction reads the log's last block (the writer
            // numbers the next event from it): that read is pipelined
            // behind the head-row lock, in the same round trip. It runs
            // after the lock is held (the connection runs requests in
            // order), so it sees every earlier commit and no concurrent one.
            let tail = async {
                if write {
                    let st = client.prepare_cached(FETCH_LAST).await?;
                    client.query(&st, &[]).await.map(Some)
                } else {
                    Ok(None)
                }
            };
            let (msgs, tail) =
                match futures_util::future::join(client.simple_query(sql), tail).await {
                    (Ok(msgs), Ok(tail)) => (msgs, tail),
                    (Err(e), _) | (_, Err(e)) => {
                        // `BEGIN` may have run: this connection is not reused.
                        drop(Object::take(client));
                        return Err(server(e));
                    }
                };
            let row = msgs.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            });
            let parse = |i| {
                row.and_then(|r| r.try_get(i).ok().flatten())
                    .and_then(|v: &str| v.parse::<u64>().ok())
            };
            // Where the counter's numbers are unique (see `Known::epoch`).
            let epoch = match row.and_then(|r| r.try_get(2).ok().flatten()) {
                Some(started) => {
                    let table = row.and_then(|r| r.try_get(3).ok().flatten());
                    format!("{started}/{}", table.unwrap_or(""))
                }
                None => String::new(),
            };
            match (parse(0), parse(1)) {
                (Some(txn), Some(last)) => Ok((client, txn, last, tail, epoch)),
                _ => {
                    // `BEGIN` ran: a connection inside a transaction never
                    // goes back to the pool.
                    drop(Object::take(client));
                    Err(malformed("no head row".into()))
                }
            }
        })?;
        self.watch.observe_epoch(&epoch);
        // What the last commit of this process knew still holds if no
        // commit came after it: every commit of every process bumps `txn`
        // under the head-row lock this transaction now holds. Unless the
        // server lost commits since (it restarted: a crash with
        // `synchronous_commit = off`, a failover to an asynchronous
        // standby; or the database was restored): `txn` then runs again
        // through numbers already seen, so the epoch must match too.
        let known = if write {
            let carried = self.carry.lock().take();
            carried
                .filter(|k| k.txn == txn && !epoch.is_empty() && k.epoch == epoch)
                .unwrap_or_default()
        } else {
            Box::default()
        };
        let txn = PgTxn {
            pg: Arc::clone(self),
            client: Some(Arc::new(client)),
            write,
            id: if write { txn + 1 } else { txn } as usize,
            epoch,
            end: last,
            appended: false,
            arena: Mutex::new(Vec::new()),
            cache: Mutex::new(BlockCache::default()),
            gets: Mutex::new(BTreeMap::new()),
            known: Mutex::new(known),
            tail_known: AtomicBool::new(false),
            pending: Mutex::new(Box::default()),
        };
        if let Some(rows) = tail {
            txn.absorb(None, &rows)?;
            txn.tail_known.store(true, Ordering::Release);
        }
        Ok(txn)
    }

    /// Starts the task that listens for commits of other processes
    /// (`LISTEN varvedb`) and calls `raise` with each end notified. It
    /// reconnects after the connection drops; waiters also poll (the store's
    /// `cross_process_poll`), so a lost notification only delays them.
    pub(crate) fn start_listener(&self, raise: impl Fn(u64) + Send + Sync + 'static) {
        let config = self.config.clone();
        let closed = Arc::clone(&self.closed);
        let raise: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(raise);
        let watch = Arc::clone(&self.watch);
        self.handle.spawn(async move {
            while !closed.load(Ordering::Acquire) {
                let _ = listen(&config, &*raise, &watch, &closed).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

impl Pg {
    /// Starts the task that closes the snapshots readers keep between calls
    /// once they have been idle for up to `IDLE_VIEW`: on a server an open
    /// snapshot is an open transaction, which holds a pooled connection and
    /// holds back vacuum, so none may stay open for long unused.
    fn start_sweeper(&self, store: Weak<super::Store>) {
        let weak = store.clone();
        *self.reclaim.lock() = Some(Arc::new(move || {
            if let Some(store) = weak.upgrade() {
                store.close_idle_views();
            }
        }));
        let closed = Arc::clone(&self.closed);
        self.handle.spawn(async move {
            while !closed.load(Ordering::Acquire) {
                tokio::time::sleep(IDLE_VIEW).await;
                match store.upgrade() {
                    Some(store) => store.close_idle_views(),
                    None => break,
                }
            }
        });
    }
}

/// One `LISTEN` connection's life: returns when it drops.
async fn listen(
    config: &tokio_postgres::Config,
    raise: &(dyn Fn(u64) + Send + Sync),
    watch: &Watch,
    closed: &AtomicBool,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // What was committed while this connection was not listening, and
    // whether commits were lost meanwhile (the server restarted: a new
    // epoch; or the log is shorter than it was).
    let head = client
        .simple_query(
            "SELECT last, pg_postmaster_start_time(), tableoid FROM varvedb_head WHERE id = 1",
        )
        .await?;
    let row = head.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    if let Some(row) = row {
        if let (Ok(Some(started)), Ok(Some(table))) = (row.try_get(1), row.try_get(2)) {
            watch.observe_epoch(&format!("{started}/{table}"));
        }
        if let Some(last) = row
            .try_get(0)
            .ok()
            .flatten()
            .and_then(|v: &str| v.parse::<u64>().ok())
        {
            watch.observe_end(last);
            raise(last);
        }
    }
    while let Some(payload) = rx.recv().await {
        if closed.load(Ordering::Acquire) {
            break;
        }
        if let Ok(end) = payload.parse::<u64>() {
            watch.notified(end);
            raise(end);
        }
    }
    driver.abort();
    Ok(())
}

/// A stable, aligned copy of bytes fetched from the server, owned by a
/// transaction's arena.
#[derive(Clone, Copy)]
struct Span {
    addr: usize,
    len: usize,
}

/// What a transaction's `get`s read: by table (as `u8`) and key, the value's
/// span in the arena, or `None` for a missing key.
type Remembered = BTreeMap<(u8, Vec<u8>), Option<Span>>;

/// Blocks already fetched in this transaction: every block whose first
/// global sequence lies in `[lo, hi)` is in `blocks`, and no block starts
/// between two consecutive ones (the log is gapless). `hi == u64::MAX`: the
/// log ends with the last block held.
#[derive(Default)]
struct BlockCache {
    blocks: BTreeMap<u64, (Span, Span)>,
    lo: u64,
    hi: u64,
}

impl BlockCache {
    fn covers(&self, global: u64) -> bool {
        !self.blocks.is_empty() && self.lo <= global && global < self.hi
    }
}

/// The most entries [`Known`] keeps of each kind before it forgets them all
/// (a bound on memory; the writer's working set is a few entries per stream
/// id written).
const KNOWN_MAX: usize = 4096;

/// The most bytes of keys and values [`Known`] keeps before it forgets
/// everything (large read-model values are not worth keeping).
const KNOWN_BYTES: usize = 8 << 20;

/// The largest entry [`Known`] keeps: a larger one is not learned (and a put
/// of one forgets what it changes).
const KNOWN_ENTRY: usize = KNOWN_BYTES / 16;

/// What a write transaction knows of the key-value tables without asking the
/// server: values of keys (`None`: no such key) and answers of neighbour
/// lookups ([`Seek`], and `last`), learned from what it read and kept exact
/// by what it writes. Carried from one write transaction of this process to
/// the next through [`Pg::carry`], tagged with the commit counter `txn` the
/// commit left: every write transaction of every process locks the head row
/// first and bumps `txn` when it commits, so if the next write transaction
/// finds `txn` unchanged under its lock, no table changed in between and
/// every entry still holds. Otherwise it starts empty.
#[derive(Default)]
struct Known {
    /// The commit counter this knowledge is true at.
    txn: u64,
    /// The server's start time and the head table's oid when `txn` was
    /// read: the counter names one commit only within an epoch. A server
    /// that lost its last commits (a crash with `synchronous_commit = off`,
    /// a failover to an asynchronous standby) restarted, and a database
    /// restored from a dump has new tables; in both the counter runs again
    /// through numbers a live writer has seen, for other commits.
    epoch: String,
    /// By table (as `u8`) and key: the value, or `None` for no such key.
    values: HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    /// By table (as `u8`), how ([`Seek`] as `u8`, [`LAST`]: the greatest key)
    /// and key: the pair found, or `None`.
    seeks: HashMap<(u8, u8, Vec<u8>), Option<OwnedPair>>,
    /// Bytes learned since the maps were last cleared (an upper bound on
    /// what they hold).
    bytes: usize,
}

/// A key-value pair owned.
type OwnedPair = (Vec<u8>, Vec<u8>);

/// The keys and values of one table's overwrites, as statement parameters.
type TableWrites<'a> = (PgTable, Vec<&'a [u8]>, Vec<&'a [u8]>);

/// The [`Known::seeks`] kind of `last` (the greatest key of a table).
const LAST: u8 = 3;

impl Known {
    fn value(&self, table: PgTable, key: &[u8]) -> Option<Option<&[u8]>> {
        self.values
            .get(&(table as u8, key.to_vec()))
            .map(|v| v.as_deref())
    }

    /// Counts `n` bytes about to be kept; forgets everything first if that
    /// would pass the budget.
    fn budget(&mut self, n: usize) {
        self.bytes += n;
        if self.bytes > KNOWN_BYTES {
            self.values.clear();
            self.seeks.clear();
            self.bytes = n;
        }
    }

    fn learn_value(&mut self, table: PgTable, key: &[u8], value: Option<&[u8]>) {
        let n = key.len() + value.map_or(0, <[u8]>::len);
        if n > KNOWN_ENTRY {
            self.values.remove(&(table as u8, key.to_vec()));
            return;
        }
        self.budget(n);
        if self.values.len() >= KNOWN_MAX {
            self.values.clear();
        }
        self.values
            .insert((table as u8, key.to_vec()), value.map(<[u8]>::to_vec));
    }

    fn seek(&self, table: PgTable, how: u8, key: &[u8]) -> Option<Option<Pair<'_>>> {
        self.seeks
            .get(&(table as u8, how, key.to_vec()))
            .map(|found| found.as_ref().map(|(k, v)| (&k[..], &v[..])))
    }

    fn learn_seek(&mut self, table: PgTable, how: u8, key: &[u8], found: Option<Pair<'_>>) {
        let n = key.len() + found.map_or(0, |(k, v)| k.len() + v.len());
        if n > KNOWN_ENTRY {
            return;
        }
        self.budget(n);
        if self.seeks.len() >= KNOWN_MAX {
            self.seeks.clear();
        }
        self.seeks.insert(
            (table as u8, how, key.to_vec()),
            found.map(|(k, v)| (k.to_vec(), v.to_vec())),
        );
    }

    /// `key` now holds `value` in `table`: every answer it changes changes.
    fn put(&mut self, table: PgTable, key: &[u8], value: &[u8]) {
        if key.len() + value.len() > KNOWN_ENTRY {
            // Too large to keep: what it changes is forgotten instead.
            self.values.remove(&(table as u8, key.to_vec()));
            self.seeks.retain(|(t, _, _), _| *t != table as u8);
            return;
        }
        self.learn_value(table, key, Some(value));
        let mut replaced = 0;
        for ((t, how, probe), found) in self.seeks.iter_mut() {
            if *t != table as u8 {
                continue;
            }
            // Whether `key` is a candidate for this lookup, and whether it
            // is a better one than the pair found (the nearest to `probe`).
            let (candidate, nearer) = match *how {
                h if h == Seek::AtOrBefore as u8 => (key <= &probe[..], true),
                h if h == Seek::Before as u8 => (key < &probe[..], true),
                h if h == Seek::After as u8 => (key > &probe[..], false),
                _ => (true, true),
            };
            if !candidate {
                continue;
            }
            let better = match found {
                None => true,
                // For the lookups below a key the greater the nearer; above
                // it, the smaller. The same key: its new value.
                Some((k, _)) if nearer => key >= &k[..],
                Some((k, _)) => key <= &k[..],
            };
            if better {
                *found = Some((key.to_vec(), value.to_vec()));
                replaced += 1;
            }
        }
        self.budget(replaced * (key.len() + value.len()));
    }

    /// The keys of `table` for which `gone` holds were deleted: their values
    /// are known missing, and a lookup that found one is forgotten (a key
    /// deleted adds none, so the others stand).
    fn delete(&mut self, table: PgTable, gone: impl Fn(&[u8]) -> bool) {
        for ((t, k), v) in self.values.iter_mut() {
            if *t == table as u8 && gone(k) {
                *v = None;
            }
        }
        self.seeks.retain(|(t, _, _), found| {
            *t != table as u8 || !matches!(found, Some((k, _)) if gone(k))
        });
    }
}

/// Writes that cannot be refused for a reason of their own, waiting to be
/// sent with the transaction's next statement, or with `COMMIT` in its round
/// trip (every statement sends them first, in one pipelined burst).
#[derive(Default)]
struct Pending {
    /// Overwriting puts, by table and key (the last value wins).
    overwrites: BTreeMap<(u8, Vec<u8>), (PgTable, Vec<u8>)>,
    /// The event rows of appended blocks, in log order.
    events: Columns,
    /// How far the appended blocks move the head: from `from` to `to`.
    moved: Option<(u64, u64)>,
    /// Each appended stream id's new version, by (tag, id).
    versions: BTreeMap<(i32, i64), i64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.overwrites.is_empty() && self.moved.is_none() && self.events.global.is_empty()
    }
}

/// A PostgreSQL transaction: a read snapshot or a write transaction, on one
/// pooled connection held for its life.
pub(crate) struct PgTxn {
    pg: Arc<Pg>,
    client: Option<Arc<Object>>,
    write: bool,
    id: usize,
    /// The [`Known::epoch`] the transaction began in.
    epoch: String,
    /// The head's `last` when the transaction began (one past the last
    /// global sequence), moved by this transaction's appends.
    end: u64,
    appended: bool,
    /// Every byte string handed out: never freed or moved before the
    /// transaction is dropped.
    arena: Mutex<Vec<AlignedVec<16>>>,
    cache: Mutex<BlockCache>,
    /// What `get` read in this transaction, by table and key (`None`: no
    /// such key); a write to a table forgets its entries. Exact, not a
    /// guess: a read snapshot sees no other commit, and a write transaction
    /// holds the head row, which every writer of every process locks before
    /// touching any table, so no other commit lands while it runs.
    gets: Mutex<Remembered>,
    /// What a write transaction knows of the tables, carried across
    /// transactions ([`Known`]); unused by a read snapshot.
    known: Mutex<Box<Known>>,
    /// `cache` holds the log's last block as read right after the head row
    /// was locked (pipelined with `BEGIN`): `last` needs no round trip.
    /// Cleared when the transaction writes the log or the cache is replaced.
    tail_known: AtomicBool,
    /// Overwriting puts and appended blocks not yet sent ([`Pending`]).
    pending: Mutex<Box<Pending>>,
}

impl Drop for PgTxn {
    fn drop(&mut self) {
        // A transaction not committed is rolled back before its connection
        // returns to the pool, on the runtime: dropping never blocks.
        if let Some(client) = self.client.take() {
            if !self.pg.closed.load(Ordering::Acquire) {
                self.pg.handle.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        // A connection in an unknown state never returns
                        // to the pool.
                        discard(client);
                    }
                });
            }
        }
    }
}

/// Keeps a connection from returning to the pool (it is closed instead):
/// for one whose transaction state is unknown.
fn discard(client: Arc<Object>) {
    if let Ok(object) = Arc::try_unwrap(client) {
        drop(Object::take(object));
    }
}

/// A `query` on the transaction's connection with owned parameters, run on
/// the runtime after the transaction's pending writes, in the same round
/// trip.
macro_rules! query {
    ($txn:expr, $sql:expr, [$($p:expr),*]) => {{
        let pending = $txn.take_pending();
        let client = $txn.client()?;
        let sql: String = $sql;
        $txn.block(async move {
            let then = async {
                let st = client.prepare_cached(&sql).await?;
                client.query(&st, &[$(&$p as &(dyn ToSql + Sync)),*]).await
            };
            send_then(&client, &pending, then).await.and_then(|rows| rows)
        }).map_err(server)?
    }};
}

/// The statement of the overwriting puts into `table`: keys and values as
/// two arrays (distinct keys: a statement may not update one row twice).
fn upsert_sql(table: PgTable) -> String {
    format!(
        "INSERT INTO {} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        table.name()
    )
}

/// Moves the head from `$1` to `$2`. The head row is locked by the
/// transaction, so `last` is where it began plus what it appended; should it
/// not be, `last` is set to NULL, which its `NOT NULL` refuses: the
/// transaction fails rather than commit a gap or an overlap (the check runs
/// on the server, so a `COMMIT` pipelined behind it never commits one).
const MOVE_HEAD: &str =
    "UPDATE varvedb_head SET last = CASE WHEN last = $1::bigint THEN $2::bigint END WHERE id = 1";

/// Records stream ids' versions (one row per stream id).
const UPSERT_VERSIONS: &str = "INSERT INTO varvedb_streams
     SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bigint[])
     ON CONFLICT (stream_tag, stream_id)
     DO UPDATE SET version = GREATEST(varvedb_streams.version, EXCLUDED.version)";

type Sent<'a> = std::pin::Pin<
    Box<dyn Future<Output = std::result::Result<u64, tokio_postgres::Error>> + Send + 'a>,
>;

/// Sends the writes `pending` then `then`, pipelined in one round trip. The
/// statements are prepared first (cached: no round trip once a connection
/// has seen them), so each request is sent when its future is first polled,
/// in order: the server runs them in that order.
async fn send_then<F: Future>(
    client: &Object,
    pending: &Pending,
    then: F,
) -> std::result::Result<F::Output, tokio_postgres::Error> {
    // The overwrites, grouped by table (the map is ordered by table first).
    let mut tables: Vec<TableWrites<'_>> = Vec::new();
    for ((_, key), (table, value)) in &pending.overwrites {
        match tables.last_mut() {
            Some((t, keys, values)) if *t == *table => {
                keys.push(key);
                values.push(value);
            }
            _ => tables.push((*table, vec![key], vec![value])),
        }
    }
    let mut upserts = Vec::with_capacity(tables.len());
    for (table, _, _) in &tables {
        upserts.push(client.prepare_cached(&upsert_sql(*table)).await?);
    }
    let c = &pending.events;
    let insert = match c.global.is_empty() {
        true => None,
        false => Some(client.prepare_cached(INSERT_EVENTS).await?),
    };
    let moved = match pending.moved {
        Some((from, to)) => Some((
            client.prepare_cached(MOVE_HEAD).await?,
            from as i64,
            to as i64,
        )),
        None => None,
    };
    let versions = match pending.versions.is_empty() {
        true => None,
        false => Some(client.prepare_cached(UPSERT_VERSIONS).await?),
    };
    let (tags, ids, seqs): (Vec<i32>, Vec<i64>, Vec<i64>) = {
        let mut cols = (Vec::new(), Vec::new(), Vec::new());
        for (&(tag, id), &version) in &pending.versions {
            cols.0.push(tag);
            cols.1.push(id);
            cols.2.push(version);
        }
        cols
    };
    let event_params = c.params();
    let table_params: Vec<[&(dyn ToSql + Sync); 2]> = tables
        .iter()
        .map(|(_, keys, values)| [keys as &(dyn ToSql + Sync), values as &(dyn ToSql + Sync)])
        .collect();
    let head_params: Option<[&(dyn ToSql + Sync); 2]> = moved
        .as_ref()
        .map(|(_, from, to)| [from as &(dyn ToSql + Sync), to as &(dyn ToSql + Sync)]);
    let version_params: [&(dyn ToSql + Sync); 3] = [&tags, &ids, &seqs];
    let mut sent: Vec<Sent<'_>> = Vec::new();
    for (st, p) in upserts.iter().zip(&table_params) {
        sent.push(Box::pin(client.execute(st, &p[..])));
    }
    if let Some(st) = &insert {
        sent.push(Box::pin(client.execute(st, &event_params)));
    }
    if let (Some((st, _, _)), Some(p)) = (&moved, &head_params) {
        sent.push(Box::pin(client.execute(st, &p[..])));
    }
    if let Some(st) = &versions {
        sent.push(Box::pin(client.execute(st, &version_params)));
    }
    let (written, out) =
        futures_util::future::join(futures_util::future::try_join_all(sent), then).await;
    written?;
    Ok(out)
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn global_of(key: &[u8]) -> heed::Result<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| malformed(format!("an event-log key of {} bytes", key.len())))
}

/// Column `i` of `row`, or a typed error for a NULL or a value of another
/// type (a schema altered by hand): never a panic.
fn column<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r tokio_postgres::Row,
    i: usize,
    what: &str,
) -> heed::Result<T> {
    row.try_get(i)
        .map_err(|e| malformed(format!("column {i} of {what}: {e}")))
}

/// How [`PgTxn::put`] treats a key that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Its value is replaced.
    Overwrite,
    /// Refused (`KeyExist`), like LMDB's `NO_OVERWRITE`.
    NoOverwrite,
    /// The key must be greater than every key of the table (`KeyExist`
    /// otherwise), like LMDB's `APPEND`.
    Append,
}

impl PgTxn {
    /// [`Pg::block`], counting a write transaction's round trip.
    fn block<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.write {
            self.pg.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        self.pg.block(fut)
    }

    pub(crate) fn id(&self) -> usize {
        self.id
    }

    fn client(&self) -> heed::Result<Arc<Object>> {
        self.client
            .clone()
            .ok_or_else(|| malformed("a transaction used after it ended".into()))
    }

    /// Copies `bytes` into the arena.
    fn keep(&self, bytes: &[u8]) -> Span {
        let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        self.keep_owned(copy)
    }

    fn keep_owned(&self, bytes: AlignedVec<16>) -> Span {
        let span = Span {
            addr: bytes.as_ptr() as usize,
            len: bytes.len(),
        };
        // Moving the vector does not move its heap buffer.
        self.arena.lock().push(bytes);
        span
    }

    fn slice(&self, span: Span) -> &[u8] {
        // SAFETY: `span` was made by `keep_owned` from a buffer the arena
        // now owns; the arena only ever grows (a buffer is never removed,
        // mutated or reallocated) until `self` is dropped, and the returned
        // slice borrows `self`. An empty buffer's pointer is dangling but
        // aligned and non-null, which a zero-length slice allows.
        unsafe { std::slice::from_raw_parts(span.addr as *const u8, span.len) }
    }

    fn pair(&self, (k, v): (Span, Span)) -> Pair<'_> {
        (self.slice(k), self.slice(v))
    }

    /// A copy of `found` in the arena.
    fn kept_pair(&self, (k, v): Pair<'_>) -> Pair<'_> {
        let span = (self.keep(k), self.keep(v));
        self.pair(span)
    }

    /// The writes waiting to be sent, taken to send them.
    fn take_pending(&self) -> Box<Pending> {
        std::mem::take(&mut *self.pending.lock())
    }

    pub(crate) fn get(&self, table: PgTable, key: &[u8]) -> heed::Result<Option<&[u8]>> {
        if table == PgTable::Events {
            let g = global_of(key)?;
            return Ok(self
                .block_at_or_before(g)?
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v));
        }
        let slot = (table as u8, key.to_vec());
        if let Some(hit) = self.gets.lock().get(&slot) {
            return Ok(hit.map(|span| self.slice(span)));
        }
        let known = {
            let known = self.known.lock();
            known.value(table, key).map(|v| v.map(|v| self.keep(v)))
        };
        let span = match known {
            Some(span) => span,
            None => {
                let key = slot.1.clone();
                let rows = query!(
                    self,
                    format!("SELECT value FROM {} WHERE key = $1", table.name()),
                    [key]
                );
                let span = match rows.first() {
                    Some(r) => Some(self.keep(column(r, 0, table.name())?)),
                    None => None,
                };
                if self.write {
                    let value = span.map(|s| self.slice(s));
                    self.known.lock().learn_value(table, &slot.1, value);
                }
                span
            }
        };
        self.gets.lock().insert(slot, span);
        Ok(span.map(|span| self.slice(span)))
    }

    /// Sends the writes waiting in `pending` (one round trip).
    fn flush(&self) -> heed::Result<()> {
        let pending = self.take_pending();
        if pending.is_empty() {
            return Ok(());
        }
        let client = self.client()?;
        self.block(async move { send_then(&client, &pending, async {}).await })
            .map_err(server)
    }

    pub(crate) fn seek(
        &self,
        table: PgTable,
        key: &[u8],
        how: Seek,
    ) -> heed::Result<Option<Pair<'_>>> {
        if table == PgTable::Events {
            let g = global_of(key)?;
            return match how {
                Seek::AtOrBefore => self.block_at_or_before(g),
                Seek::Before if g == 0 => Ok(None),
                Seek::Before => self.block_at_or_before(g - 1),
                Seek::After => self.block_after(g),
            };
        }
        let (op, order) = match how {
            Seek::AtOrBefore => ("<=", "DESC"),
            Seek::Before => ("<", "DESC"),
            Seek::After => (">", "ASC"),
        };
        self.seek_sql(
            table,
            how as u8,
            key,
            format!(
                "SELECT key, value FROM {} WHERE key {op} $1 ORDER BY key {order} LIMIT 1",
                table.name()
            ),
        )
    }

    /// A lookup of one neighbour: known to a write transaction, or asked.
    fn seek_sql(
        &self,
        table: PgTable,
        how: u8,
        key: &[u8],
        sql: String,
    ) -> heed::Result<Option<Pair<'_>>> {
        if self.write {
            let known = self.known.lock();
            if let Some(found) = known.seek(table, how, key) {
                return Ok(found.map(|p| self.kept_pair(p)));
            }
        }
        let rows = if how == LAST {
            query!(self, sql, [])
        } else {
            let probe = key.to_vec();
            query!(self, sql, [probe])
        };
        let found = match rows.first() {
            Some(r) => Some(self.row_pair(r, table)?),
            None => None,
        };
        if self.write {
            self.known.lock().learn_seek(table, how, key, found);
        }
        Ok(found)
    }

    fn row_pair(&self, r: &tokio_postgres::Row, table: PgTable) -> heed::Result<Pair<'_>> {
        let k = self.keep(column(r, 0, table.name())?);
        let v = self.keep(column(r, 1, table.name())?);
        Ok(self.pair((k, v)))
    }

    pub(crate) fn last(&self, table: PgTable) -> heed::Result<Option<Pair<'_>>> {
        if table == PgTable::Events {
            return self.last_block();
        }
        self.seek_sql(
            table,
            LAST,
            b"",
            format!(
                "SELECT key, value FROM {} ORDER BY key DESC LIMIT 1",
                table.name()
            ),
        )
    }

    /// The pairs with keys between `lo` and `hi`, in key order.
    pub(crate) fn range(
        &self,
        table: PgTable,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> heed::Result<Vec<Pair<'_>>> {
        if table == PgTable::Events {
            return self.block_range(lo, hi);
        }
        let mut sql = format!("SELECT key, value FROM {} WHERE true", table.name());
        let (lo_key, hi_key) = (bound_key(lo), bound_key(hi));
        match lo {
            Bound::Included(_) => sql.push_str(" AND key >= $1"),
            Bound::Excluded(_) => sql.push_str(" AND key > $1"),
            Bound::Unbounded => sql.push_str(" AND $1::bytea IS NULL"),
        }
        match hi {
            Bound::Included(_) => sql.push_str(" AND key <= $2"),
            Bound::Excluded(_) => sql.push_str(" AND key < $2"),
            Bound::Unbounded => sql.push_str(" AND $2::bytea IS NULL"),
        }
        sql.push_str(" ORDER BY key");
        let rows = query!(self, sql, [lo_key, hi_key]);
        rows.iter().map(|r| self.row_pair(r, table)).collect()
    }

    /// The pairs whose keys start with `prefix`, in key order.
    pub(crate) fn prefix(&self, table: PgTable, prefix: &[u8]) -> heed::Result<Vec<Pair<'_>>> {
        let end = prefix_end(prefix);
        let hi = match &end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        self.range(table, Bound::Included(prefix), hi)
    }

    /// `key` holds `value` (or nothing) in this transaction: what `get`
    /// remembers of it.
    fn remember(&self, table: PgTable, key: &[u8], value: Option<&[u8]>) {
        let span = value.map(|v| self.keep(v));
        self.gets.lock().insert((table as u8, key.to_vec()), span);
    }

    pub(crate) fn put(
        &mut self,
        table: PgTable,
        key: &[u8],
        value: &[u8],
        how: Put,
    ) -> heed::Result<()> {
        if !self.write {
            return Err(heed::Error::Mdb(heed::MdbError::BadTxn));
        }
        if table == PgTable::Events {
            return self.put_block(key, value, how != Put::Overwrite);
        }
        if how == Put::Overwrite {
            // An overwrite cannot be refused: it waits for the next
            // statement (see `pending`).
            self.pending
                .lock()
                .overwrites
                .insert((table as u8, key.to_vec()), (table, value.to_vec()));
        } else {
            // LMDB's `NO_OVERWRITE` refuses a key that exists; `APPEND`,
            // also one not greater than every key.
            let guard = match how {
                Put::Append => format!(
                    " WHERE NOT EXISTS (SELECT 1 FROM {} WHERE key >= $1)",
                    table.name()
                ),
                _ => String::new(),
            };
            let (k, v) = (key.to_vec(), value.to_vec());
            let rows = query!(
                self,
                format!(
                    "INSERT INTO {} (key, value) SELECT $1, $2{guard} \
                     ON CONFLICT (key) DO NOTHING RETURNING 1",
                    table.name()
                ),
                [k, v]
            );
            if rows.is_empty() {
                return Err(heed::Error::Mdb(heed::MdbError::KeyExist));
            }
        }
        self.known.lock().put(table, key, value);
        self.remember(table, key, Some(value));
        Ok(())
    }

    pub(crate) fn delete(&mut self, table: PgTable, key: &[u8]) -> heed::Result<bool> {
        if !self.write || table == PgTable::Events {
            return Err(heed::Error::Mdb(heed::MdbError::BadTxn));
        }
        let k = key.to_vec();
        let rows = query!(
            self,
            format!("DELETE FROM {} WHERE key = $1 RETURNING 1", table.name()),
            [k]
        );
        self.known.lock().delete(table, |k| k == key);
        self.remember(table, key, None);
        Ok(!rows.is_empty())
    }

    pub(crate) fn delete_prefix(&mut self, table: PgTable, prefix: &[u8]) -> heed::Result<usize> {
        if !self.write || table == PgTable::Events {
            return Err(heed::Error::Mdb(heed::MdbError::BadTxn));
        }
        let lo = prefix.to_vec();
        let hi = prefix_end(prefix);
        let rows = query!(
            self,
            format!(
                "DELETE FROM {} WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) RETURNING 1",
                table.name()
            ),
            [lo, hi]
        );
        self.known.lock().delete(table, |k| k.starts_with(prefix));
        self.gets
            .lock()
            .retain(|(t, k), _| *t != table as u8 || !k.starts_with(prefix));
        Ok(rows.len())
    }

    /// Commits: sends the writes still waiting, bumps the commit counter
    /// and, if this transaction appended, notifies listeners of the new end,
    /// inside the transaction, in one round trip. A write transaction leaves
    /// what it knows of the tables to the next one ([`Known`]).
    pub(crate) fn commit(mut self) -> heed::Result<()> {
        let Some(client) = self.client.take() else {
            return Err(malformed("a transaction committed twice".into()));
        };
        let sql = if !self.write {
            "COMMIT".to_owned()
        } else if self.appended {
            format!(
                "UPDATE varvedb_head SET txn = txn + 1 WHERE id = 1;
                 NOTIFY {CHANNEL}, '{}';
                 COMMIT",
                self.end
            )
        } else {
            "UPDATE varvedb_head SET txn = txn + 1 WHERE id = 1; COMMIT".to_owned()
        };
        // Writes still waiting ride in the same round trip, before the
        // commit (a failed one aborts the transaction: nothing commits).
        let pending = self.take_pending();
        self.block(async move {
            let done = send_then(&client, &pending, client.batch_execute(&sql))
                .await
                .and_then(|done| done);
            if done.is_err() {
                // Its transaction may still be open (aborted): the
                // connection never returns to the pool.
                discard(client);
            }
            done
        })
        .map_err(server)?;
        if self.write {
            // The commit counter now reads this transaction's id.
            let mut known = std::mem::take(&mut *self.known.lock());
            known.txn = self.id as u64;
            known.epoch = std::mem::take(&mut self.epoch);
            *self.pg.carry.lock() = Some(known);
        }
        Ok(())
    }

    /// Writes a block as event rows, moves the head past it and records the
    /// stream's version. An append is sent with the transaction's next
    /// statement (its commit, usually: a group's appends go in one round
    /// trip); a block rewritten in place (a migration) at once.
    fn put_block(&mut self, key: &[u8], value: &[u8], append: bool) -> heed::Result<()> {
        let first = global_of(key)?;
        let rows = decompose(first, value)
            .ok_or_else(|| malformed(format!("an unparsable block at {first}")))?;
        let n = rows.len() as u64;
        if !append {
            return self.rewrite_block(first, rows);
        }
        // The head moves with the log: a block that does not start where
        // the head stands would leave a gap or an overlap.
        if first != self.end {
            return Err(malformed(format!(
                "a block appended at {first}, but the log ends at {}",
                self.end
            )));
        }
        let end = first + n;
        {
            let mut pending = self.pending.lock();
            for r in rows {
                let version = r.stream_seq + 1;
                pending
                    .versions
                    .entry((r.stream_tag, r.stream_id))
                    .and_modify(|v| *v = (*v).max(version))
                    .or_insert(version);
                pending.events.push(r);
            }
            pending.moved = Some((pending.moved.map_or(first, |(from, _)| from), end));
        }
        self.end = end;
        self.appended = true;
        // The block is the log's new last block: reads of it in this
        // transaction need no round trip.
        let block = (self.keep(key), self.keep(value));
        let mut cache = self.cache.lock();
        if cache.hi != u64::MAX || cache.blocks.is_empty() {
            *cache = BlockCache::default();
            cache.lo = first;
        }
        cache.hi = u64::MAX;
        cache.blocks.insert(first, block);
        self.tail_known.store(true, Ordering::Release);
        Ok(())
    }

    /// Replaces the event rows of the block at `first` (a migration
    /// rewriting it in place; the head does not move).
    fn rewrite_block(&mut self, first: u64, rows: Vec<events::EventRow>) -> heed::Result<()> {
        let n = rows.len() as i64;
        let mut cols = Columns::default();
        let mut versions = Pending::default();
        for r in rows {
            versions
                .versions
                .insert((r.stream_tag, r.stream_id), r.stream_seq + 1);
            cols.push(r);
        }
        // Whatever was cached no longer describes the log.
        *self.cache.lock() = BlockCache::default();
        self.tail_known.store(false, Ordering::Release);
        self.flush()?;
        versions.events = cols;
        let client = self.client()?;
        self.block(async move {
            client
                .execute(
                    "DELETE FROM varvedb_events WHERE global >= $1 AND global < $2",
                    &[&(first as i64), &(first as i64 + n)],
                )
                .await?;
            send_then(&client, &versions, async {}).await
        })
        .map_err(server)
    }

    /// Fetches the rows of the block holding `global` (or the last block
    /// before it) and the blocks after it, `PREFETCH` rows in all, into the
    /// cache. `None` as `global`: the log's last block.
    fn fetch(&self, global: Option<u64>) -> heed::Result<()> {
        let rows = match global {
            Some(g) => query!(
                self,
                FETCH_AT.to_owned(),
                [g.min(i64::MAX as u64) as i64, PREFETCH]
            ),
            None => query!(self, FETCH_LAST.to_owned(), []),
        };
        self.absorb(global, &rows)
    }

    /// Caches the blocks of `rows`, fetched by [`PgTxn::fetch`] for `global`.
    fn absorb(&self, global: Option<u64>, rows: &[tokio_postgres::Row]) -> heed::Result<()> {
        let limited = global.is_some() && rows.len() as i64 == PREFETCH;
        let rows_fetched: Vec<events::Fetched<'_>> =
            rows.iter().map(row_parts).collect::<heed::Result<_>>()?;
        let fetched = rows_fetched;
        let mut found = Vec::new();
        let mut at = 0;
        let mut hi = u64::MAX;
        while at < fetched.len() {
            match recompose(&fetched[at..]) {
                events::Recomposed::Block(first, bytes, used) => {
                    found.push((first, bytes));
                    at += used;
                }
                events::Recomposed::Incomplete { first, count } if at == 0 => {
                    // A block longer than one fetch: fetch exactly it.
                    let (lo, end) = (first as i64, first.saturating_add(count) as i64);
                    let rows = query!(self, FETCH_RANGE.to_owned(), [lo, end]);
                    let whole: Vec<events::Fetched<'_>> =
                        rows.iter().map(row_parts).collect::<heed::Result<_>>()?;
                    match recompose(&whole) {
                        events::Recomposed::Block(first, bytes, _) => {
                            found.push((first, bytes));
                            let end = first.saturating_add(count);
                            // The last block (asked for as such, or found
                            // ending before the sequence asked for: the
                            // log is gapless, so nothing lies past it).
                            hi = match global {
                                Some(g) if g < end => end,
                                _ => u64::MAX,
                            };
                        }
                        events::Recomposed::Incomplete { .. } => {
                            return Err(malformed(format!("the block at {first} lacks events")))
                        }
                        events::Recomposed::Malformed(m) => return Err(malformed(m)),
                    }
                    break;
                }
                events::Recomposed::Incomplete { first, .. } => {
                    hi = first;
                    break;
                }
                events::Recomposed::Malformed(m) => return Err(malformed(m)),
            }
        }
        if limited && at == fetched.len() {
            // The fetch stopped at its limit on a block boundary: what comes
            // next is unknown.
            hi = found.last().map_or(hi, |(first, bytes)| {
                first
                    + u64::from(u32::from_le_bytes([
                        bytes[32], bytes[33], bytes[34], bytes[35],
                    ]))
            });
        }
        let mut cache = self.cache.lock();
        let Some(lo) = found.first().map(|(first, _)| *first) else {
            return Ok(());
        };
        if !(cache.covers(lo) || cache.hi == lo) {
            *cache = BlockCache::default();
            self.tail_known.store(false, Ordering::Release);
            cache.lo = lo;
        }
        cache.hi = hi;
        for (first, bytes) in found {
            let k = self.keep(&first.to_be_bytes());
            let v = self.keep_owned(bytes);
            cache.blocks.insert(first, (k, v));
        }
        Ok(())
    }

    fn cached_at_or_before(&self, g: u64) -> Option<Option<(Span, Span)>> {
        let cache = self.cache.lock();
        cache
            .covers(g)
            .then(|| cache.blocks.range(..=g).next_back().map(|(_, s)| *s))
    }

    fn block_at_or_before(&self, g: u64) -> heed::Result<Option<Pair<'_>>> {
        if let Some(hit) = self.cached_at_or_before(g) {
            return Ok(hit.map(|s| self.pair(s)));
        }
        self.fetch(Some(g))?;
        Ok(self.cached_at_or_before(g).flatten().map(|s| self.pair(s)))
    }

    fn block_after(&self, g: u64) -> heed::Result<Option<Pair<'_>>> {
        let Some(target) = g.checked_add(1) else {
            return Ok(None);
        };
        for _ in 0..3 {
            let next = {
                let cache = self.cache.lock();
                if cache.covers(target) {
                    match cache.blocks.range(target..).next() {
                        Some((_, s)) => return Ok(Some(self.pair(*s))),
                        None if cache.hi == u64::MAX => return Ok(None),
                        None => cache.hi,
                    }
                } else {
                    target
                }
            };
            self.fetch(Some(next))?;
            let cache = self.cache.lock();
            if cache.blocks.is_empty() {
                return Ok(None);
            }
        }
        Err(malformed(format!("no block boundary found after {g}")))
    }

    fn last_block(&self) -> heed::Result<Option<Pair<'_>>> {
        let primed = self.tail_known.load(Ordering::Acquire) && {
            let cache = self.cache.lock();
            cache.hi == u64::MAX && !cache.blocks.is_empty()
        };
        if !primed {
            self.fetch(None)?;
        }
        let cache = self.cache.lock();
        Ok(cache
            .blocks
            .iter()
            .next_back()
            .map(|(_, s)| *s)
            .filter(|_| cache.hi == u64::MAX))
        .map(|s| s.map(|s| self.pair(s)))
    }

    fn block_range(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> heed::Result<Vec<Pair<'_>>> {
        let mut out = Vec::new();
        let mut next = match lo {
            Bound::Included(k) => {
                let g = global_of(k)?;
                match g.checked_sub(1) {
                    Some(before) => self.block_after(before)?,
                    None => self.block_at_or_before(0)?,
                }
            }
            Bound::Excluded(k) => self.block_after(global_of(k)?)?,
            Bound::Unbounded => self.block_at_or_before(0)?,
        };
        while let Some((k, v)) = next {
            let within = match hi {
                Bound::Included(h) => k <= h,
                Bound::Excluded(h) => k < h,
                Bound::Unbounded => true,
            };
            if !within {
                break;
            }
            out.push((k, v));
            next = self.block_after(global_of(k)?)?;
        }
        Ok(out)
    }
}

fn bound_key(b: Bound<&[u8]>) -> Option<Vec<u8>> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k.to_vec()),
        Bound::Unbounded => None,
    }
}

fn row_parts(r: &tokio_postgres::Row) -> heed::Result<events::Fetched<'_>> {
    const WHAT: &str = "varvedb_events";
    Ok(events::Fetched {
        global: column::<i64>(r, 0, WHAT)? as u64,
        block_head: column(r, 1, WHAT)?,
        metadata: column(r, 2, WHAT)?,
        payload: column(r, 3, WHAT)?,
    })
}

const FETCH_AT: &str = "SELECT global, block_head, metadata, payload FROM varvedb_events
     WHERE global >= (SELECT block_first FROM varvedb_events WHERE global <= $1
                      ORDER BY global DESC LIMIT 1)
     ORDER BY global LIMIT $2";

const FETCH_LAST: &str = "SELECT global, block_head, metadata, payload FROM varvedb_events
     WHERE global >= (SELECT block_first FROM varvedb_events ORDER BY global DESC LIMIT 1)
     ORDER BY global";

const FETCH_RANGE: &str = "SELECT global, block_head, metadata, payload FROM varvedb_events
     WHERE global >= $1 AND global < $2 ORDER BY global";

const INSERT_EVENTS: &str = "INSERT INTO varvedb_events (global, stream_tag, stream_id,
     stream_seq, event_id, fingerprint, committed_at, metadata, payload, block_first, block_head)
     SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bytea[],
     $6::bigint[], $7::bigint[], $8::bytea[], $9::bytea[], $10::bigint[], $11::bytea[])";

/// A block's rows as column arrays, for one `INSERT … SELECT unnest(…)`.
#[derive(Default)]
struct Columns {
    global: Vec<i64>,
    stream_tag: Vec<i32>,
    stream_id: Vec<i64>,
    stream_seq: Vec<i64>,
    event_id: Vec<Option<Vec<u8>>>,
    fingerprint: Vec<i64>,
    committed_at: Vec<i64>,
    metadata: Vec<Vec<u8>>,
    payload: Vec<Vec<u8>>,
    block_first: Vec<i64>,
    block_head: Vec<Option<Vec<u8>>>,
}

impl Columns {
    /// The columns as the parameters of [`INSERT_EVENTS`].
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.global,
            &self.stream_tag,
            &self.stream_id,
            &self.stream_seq,
            &self.event_id,
            &self.fingerprint,
            &self.committed_at,
            &self.metadata,
            &self.payload,
            &self.block_first,
            &self.block_head,
        ]
    }

    fn push(&mut self, r: events::EventRow) {
        self.global.push(r.global);
        self.stream_tag.push(r.stream_tag);
        self.stream_id.push(r.stream_id);
        self.stream_seq.push(r.stream_seq);
        self.event_id.push(r.event_id);
        self.fingerprint.push(r.fingerprint);
        self.committed_at.push(r.committed_at);
        self.metadata.push(r.metadata);
        self.payload.push(r.payload);
        self.block_first.push(r.block_first);
        self.block_head.push(r.block_head);
    }
}

/// Keeps the store alive-agnostic listener from holding it: the listener
/// holds a `Weak` and stops raising once the store is gone.
pub(crate) fn raiser(store: Weak<super::Store>) -> impl Fn(u64) + Send + Sync + 'static {
    let rewinds = AtomicU64::new(0);
    move |end| {
        if let Some(store) = store.upgrade() {
            store.observe_end(end);
            // The listener noticed lost commits: waiting subscriptions wake
            // to check what they delivered.
            let now = store.rewinds();
            if rewinds.swap(now, Ordering::AcqRel) != now {
                store.interrupt_waiters();
            }
        }
    }
}

impl super::Store {
    /// Opens the store kept in the PostgreSQL database `url` names, creating
    /// its schema and metadata if the database has none.
    pub(crate) fn connect(
        url: &str,
        config: crate::config::VarveConfig,
    ) -> Result<Arc<super::Store>> {
        use super::kv::{Table, Txn};
        let pg = Pg::connect(
            url,
            (config.max_readers as usize).clamp(4, MAX_POOL),
            config.resize_wait,
            config.durability,
        )?;
        let label = std::path::PathBuf::from(pg.label());
        let t = |p| Table::Pg(p);
        let tables = super::Tables {
            meta: t(PgTable::Meta),
            catalog: t(PgTable::Catalog),
            index: t(PgTable::Index),
            events: t(PgTable::Events),
            state: Some(t(PgTable::State)),
            ids: Some(t(PgTable::Ids)),
            keys: Some(t(PgTable::Keys)),
            chain: Some(t(PgTable::Chain)),
            seals: Some(t(PgTable::Seals)),
        };
        let err = super::storage_error("creating the store's metadata", config.max_readers);
        // The store's metadata, written (or checked) under the head lock, so
        // two processes creating the store at once agree on one id.
        let mut txn = Txn::Pg(pg.begin_write().map_err(&err)?);
        let mut kv = (&mut txn, tables.meta);
        let checked = super::probe::initialize_or_check(&mut kv, &label, None, None)?;
        let found = super::chain::read_meta(&kv, config.max_readers)?;
        let requested = config.tamper_evident.as_ref();
        let new =
            super::chain::settle_at_open(&label, checked.id, found, requested, checked.created)?;
        if let Some(record) = new {
            super::chain::write_meta(&mut kv, &record, config.max_readers)?;
        }
        if config.encryption.is_some() {
            // Encryption at rest seals LMDB blocks (storage/crypt.rs); a
            // store on PostgreSQL is not encrypted by varvedb.
            return Err(crate::Error::Unsupported {
                operation: "encryption at rest",
                backend: "PostgreSQL",
            });
        }
        if config.key_vault.is_some() {
            // Entity keys seal encrypted blocks: none here either.
            return Err(crate::Error::Unsupported {
                operation: "a key vault of entity keys",
                backend: "PostgreSQL",
            });
        }
        txn.commit().map_err(&err)?;
        let store = super::Store::assemble_with(
            &label,
            config,
            super::Engine::Pg(Arc::clone(&pg)),
            tables,
            0,
            checked.id,
            super::Access::ReadWrite,
            None,
        )?;
        pg.start_listener(raiser(Arc::downgrade(&store)));
        pg.start_sweeper(Arc::downgrade(&store));
        store.trace_open(&checked);
        Ok(store)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A fresh database on `VARVEDB_TEST_POSTGRES_URL`'s server (a user
    /// that may create databases), dropped with the value; `None` (the test
    /// is skipped) without one.
    struct TestDb {
        admin: String,
        name: String,
        url: String,
    }

    impl TestDb {
        fn create(test: &str) -> Option<TestDb> {
            let Ok(admin) = std::env::var("VARVEDB_TEST_POSTGRES_URL") else {
                eprintln!("skipped: VARVEDB_TEST_POSTGRES_URL is not set");
                return None;
            };
            let name = format!("varvedb_lib_{test}_{}", std::process::id());
            admin_execute(&admin, &format!("DROP DATABASE IF EXISTS {name}")).unwrap();
            admin_execute(&admin, &format!("CREATE DATABASE {name}")).unwrap();
            let url = match admin.rsplit_once('/') {
                Some((base, _)) if admin.contains("://") => format!("{base}/{name}"),
                _ => format!("{admin} dbname={name}"),
            };
            Some(TestDb { admin, name, url })
        }

        fn connect(&self, durability: crate::config::Durability) -> Arc<Pg> {
            Pg::connect(&self.url, 4, Duration::from_secs(10), durability).unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = admin_execute(&self.admin, &sql);
        }
    }

    /// Overwrites wait for the transaction's next statement (or its commit)
    /// and `get` remembers what it read: a transaction still reads its own
    /// writes, in order, and commits every one.
    #[test]
    fn deferred_overwrites_and_remembered_reads_keep_read_your_writes() {
        let Some(db) = TestDb::create("deferred") else {
            return;
        };
        let url = db.url.clone();
        {
            let pg = Pg::connect(&url, 2, Duration::from_secs(10), Default::default()).unwrap();
            let mut t = pg.begin_write().unwrap();
            assert_eq!(t.get(PgTable::State, b"k").unwrap(), None);
            t.put(PgTable::State, b"k", b"1", Put::Overwrite).unwrap();
            // The remembered `None` is forgotten; the overwrite is sent first.
            assert_eq!(t.get(PgTable::State, b"k").unwrap(), Some(&b"1"[..]));
            t.put(PgTable::State, b"k", b"2", Put::Overwrite).unwrap();
            t.put(PgTable::State, b"gone", b"x", Put::Overwrite)
                .unwrap();
            assert!(t.delete(PgTable::State, b"gone").unwrap());
            t.put(PgTable::State, b"k", b"3", Put::Overwrite).unwrap();
            t.put(PgTable::Meta, b"m", b"4", Put::Overwrite).unwrap();
            // A no-overwrite put sees the overwrite waiting before it.
            assert!(matches!(
                t.put(PgTable::State, b"k", b"5", Put::NoOverwrite),
                Err(heed::Error::Mdb(heed::MdbError::KeyExist))
            ));
            t.put(PgTable::State, b"last", b"6", Put::Overwrite)
                .unwrap();
            // The last overwrites ride with the commit.
            t.commit().unwrap();
            let r = pg.begin_read().unwrap();
            assert_eq!(r.get(PgTable::State, b"k").unwrap(), Some(&b"3"[..]));
            assert_eq!(r.get(PgTable::State, b"gone").unwrap(), None);
            assert_eq!(r.get(PgTable::Meta, b"m").unwrap(), Some(&b"4"[..]));
            assert_eq!(r.get(PgTable::State, b"last").unwrap(), Some(&b"6"[..]));
            // A rolled-back transaction's waiting overwrites never land.
            let mut t = pg.begin_write().unwrap();
            t.put(PgTable::State, b"k", b"7", Put::Overwrite).unwrap();
            drop(t);
            let r = pg.begin_read().unwrap();
            assert_eq!(r.get(PgTable::State, b"k").unwrap(), Some(&b"3"[..]));
        }
    }

    /// What a write transaction knows is carried to the next one of this
    /// store and answers it without a round trip, exactly as the server
    /// would; a commit by another store (another process) in between makes
    /// the next transaction ask the server again.
    #[test]
    fn what_a_writer_knows_is_carried_until_another_store_commits() {
        let Some(db) = TestDb::create("carried") else {
            return;
        };
        let (pg, other) = (
            db.connect(Default::default()),
            db.connect(Default::default()),
        );
        let probe = b"b\xff";
        let mut t = pg.begin_write().unwrap();
        assert_eq!(
            t.seek(PgTable::Index, probe, Seek::AtOrBefore).unwrap(),
            None
        );
        assert_eq!(t.get(PgTable::Catalog, b"n").unwrap(), None);
        t.put(PgTable::Index, b"b1", b"x", Put::Overwrite).unwrap();
        t.put(PgTable::Catalog, b"n", b"1", Put::Overwrite).unwrap();
        let trips = pg.round_trips();
        // Answered from what the transaction wrote: no round trip.
        assert_eq!(
            t.seek(PgTable::Index, probe, Seek::AtOrBefore).unwrap(),
            Some((&b"b1"[..], &b"x"[..]))
        );
        assert_eq!(t.get(PgTable::Catalog, b"n").unwrap(), Some(&b"1"[..]));
        assert_eq!(pg.round_trips(), trips);
        t.commit().unwrap();

        // The next transaction of the same store knows it, and keeps it
        // exact through its own writes.
        let mut t = pg.begin_write().unwrap();
        let trips = pg.round_trips();
        assert_eq!(
            t.seek(PgTable::Index, probe, Seek::AtOrBefore).unwrap(),
            Some((&b"b1"[..], &b"x"[..]))
        );
        t.put(PgTable::Index, b"b2", b"y", Put::Overwrite).unwrap();
        t.put(PgTable::Index, b"c", b"z", Put::Overwrite).unwrap();
        assert_eq!(
            t.seek(PgTable::Index, probe, Seek::AtOrBefore).unwrap(),
            Some((&b"b2"[..], &b"y"[..]))
        );
        assert_eq!(t.get(PgTable::Catalog, b"n").unwrap(), Some(&b"1"[..]));
        assert_eq!(pg.round_trips(), trips);
        t.commit().unwrap();

        // Another store commits: this one's knowledge is stale and unused.
        let mut t = other.begin_write().unwrap();
        t.put(PgTable::Index, b"b3", b"w", Put::Overwrite).unwrap();
        t.put(PgTable::Catalog, b"n", b"2", Put::Overwrite).unwrap();
        t.commit().unwrap();
        let t = pg.begin_write().unwrap();
        assert_eq!(
            t.seek(PgTable::Index, probe, Seek::AtOrBefore).unwrap(),
            Some((&b"b3"[..], &b"w"[..]))
        );
        assert_eq!(t.get(PgTable::Catalog, b"n").unwrap(), Some(&b"2"[..]));
        // A transaction rolled back leaves nothing to carry.
        drop(t);
        let t = pg.begin_write().unwrap();
        let trips = pg.round_trips();
        assert_eq!(t.get(PgTable::Catalog, b"n").unwrap(), Some(&b"2"[..]));
        assert_eq!(pg.round_trips(), trips + 1);
    }

    /// The answers [`Known`] keeps follow puts and deletes as the server's
    /// would.
    #[test]
    fn known_answers_follow_puts_and_deletes() {
        let mut k = Known::default();
        let t = PgTable::Index;
        let ab = Seek::AtOrBefore as u8;
        let (before, after) = (Seek::Before as u8, Seek::After as u8);
        k.learn_seek(t, ab, b"m", Some((b"c", b"1")));
        k.learn_seek(t, before, b"m", Some((b"c", b"1")));
        k.learn_seek(t, after, b"c", Some((b"m", b"2")));
        k.learn_seek(t, LAST, b"", Some((b"m", b"2")));
        k.learn_seek(PgTable::Ids, LAST, b"", None);
        // Below the found key: nothing changes.
        k.put(t, b"a", b"0");
        assert_eq!(k.seek(t, ab, b"m"), Some(Some((&b"c"[..], &b"1"[..]))));
        // Between: the nearer key is found.
        k.put(t, b"e", b"3");
        assert_eq!(k.seek(t, ab, b"m"), Some(Some((&b"e"[..], &b"3"[..]))));
        assert_eq!(k.seek(t, before, b"m"), Some(Some((&b"e"[..], &b"3"[..]))));
        assert_eq!(k.seek(t, after, b"c"), Some(Some((&b"e"[..], &b"3"[..]))));
        // The probe itself: found at-or-before, not before.
        k.put(t, b"m", b"4");
        assert_eq!(k.seek(t, ab, b"m"), Some(Some((&b"m"[..], &b"4"[..]))));
        assert_eq!(k.seek(t, before, b"m"), Some(Some((&b"e"[..], &b"3"[..]))));
        assert_eq!(k.seek(t, LAST, b""), Some(Some((&b"m"[..], &b"4"[..]))));
        k.put(t, b"z", b"5");
        assert_eq!(k.seek(t, LAST, b""), Some(Some((&b"z"[..], &b"5"[..]))));
        // Another table is untouched.
        assert_eq!(k.seek(PgTable::Ids, LAST, b""), Some(None));
        // A deleted found key is forgotten; other answers stand.
        k.delete(t, |key| key == b"e");
        assert_eq!(k.seek(t, before, b"m"), None);
        assert_eq!(k.seek(t, after, b"c"), None);
        assert_eq!(k.seek(t, ab, b"m"), Some(Some((&b"m"[..], &b"4"[..]))));
        assert_eq!(k.value(t, b"e"), Some(None));
        k.delete(t, |key| key.starts_with(b"m"));
        assert_eq!(k.seek(t, ab, b"m"), None);
        assert_eq!(k.seek(t, LAST, b""), Some(Some((&b"z"[..], &b"5"[..]))));
    }

    /// [`Known`] keeps no entry larger than `KNOWN_ENTRY` (a put of one
    /// forgets what it changes) and forgets everything past `KNOWN_BYTES`.
    #[test]
    fn known_stays_within_its_memory_budget() {
        let mut k = Known::default();
        let t = PgTable::State;
        let big = vec![7u8; KNOWN_ENTRY + 1];
        k.learn_value(t, b"small", Some(b"v"));
        k.learn_seek(t, LAST, b"", Some((b"small", b"v")));
        k.learn_value(PgTable::Index, b"i", Some(b"w"));
        k.put(t, b"big", &big);
        assert_eq!(k.value(t, b"big"), None);
        assert_eq!(
            k.seek(t, LAST, b""),
            None,
            "the last key may be the big one"
        );
        assert_eq!(k.value(t, b"small"), Some(Some(&b"v"[..])));
        k.learn_value(t, b"big", Some(&big));
        assert_eq!(k.value(t, b"big"), None);
        k.learn_seek(t, LAST, b"", Some((b"big", &big)));
        assert_eq!(k.seek(t, LAST, b""), None);
        // Many entries under the size limit pass the byte budget: all go.
        let mid = vec![1u8; KNOWN_ENTRY - 1];
        for i in 0..20u8 {
            k.put(t, &[i], &mid);
        }
        assert!(k.bytes <= KNOWN_BYTES);
        assert_eq!(k.value(PgTable::Index, b"i"), None);
        assert_eq!(k.value(t, &[19]), Some(Some(&mid[..])));
    }

    /// `append` refuses a key not greater than every key of the table, as
    /// LMDB's `MDB_APPEND` does, on every table it is used for.
    #[test]
    fn append_refuses_a_key_not_above_the_last() {
        use super::super::kv::{Table, Txn};
        let Some(db) = TestDb::create("append") else {
            return;
        };
        let pg = db.connect(Default::default());
        for table in [PgTable::Chain, PgTable::Seals, PgTable::Ids] {
            let mut txn = Txn::Pg(pg.begin_write().unwrap());
            let t = Table::Pg(table);
            let key = |n: u64| n.to_be_bytes();
            t.append(&mut txn, &key(5), b"five").unwrap();
            for below in [3, 5] {
                assert!(
                    matches!(
                        t.append(&mut txn, &key(below), b"x"),
                        Err(heed::Error::Mdb(heed::MdbError::KeyExist))
                    ),
                    "{table:?}: {below} appended after 5"
                );
            }
            assert!(matches!(
                t.put_with_flags(&mut txn, heed::PutFlags::APPEND, &key(4), b"x"),
                Err(heed::Error::Mdb(heed::MdbError::KeyExist))
            ));
            // Not appending: below the last is fine.
            t.put_with_flags(&mut txn, heed::PutFlags::NO_OVERWRITE, &key(4), b"four")
                .unwrap();
            t.append(&mut txn, &key(7), b"seven").unwrap();
            txn.commit().unwrap();
            let txn = Txn::Pg(pg.begin_read().unwrap());
            let all: Vec<_> = t
                .iter(&txn)
                .unwrap()
                .map(|p| p.unwrap().1.to_vec())
                .collect();
            assert_eq!(all, [&b"four"[..], b"five", b"seven"], "{table:?}");
        }
    }

    /// The commit counter is read on a connection taken as a transaction's
    /// is: with every connection held by an idle reader's snapshot, the
    /// snapshots are closed and the counter is read, not `usize::MAX`
    /// after the pool's wait.
    #[test]
    fn the_commit_counter_closes_idle_snapshots_to_get_a_connection() {
        let Some(db) = TestDb::create("counter") else {
            return;
        };
        let pg = Pg::connect(&db.url, 1, Duration::from_secs(2), Default::default()).unwrap();
        let mut t = pg.begin_write().unwrap();
        t.put(PgTable::Meta, b"k", b"v", Put::Overwrite).unwrap();
        t.commit().unwrap();
        // An idle reader holds the only connection.
        let idle = Arc::new(Mutex::new(Some(pg.begin_read().unwrap())));
        let held = Arc::clone(&idle);
        *pg.reclaim.lock() = Some(Arc::new(move || drop(held.lock().take())));
        assert_eq!(pg.last_txn_id(), 1);
        assert!(idle.lock().is_none(), "the idle snapshot was closed");
        *pg.reclaim.lock() = None;
    }

    /// A relaxed durability commits writes with `synchronous_commit = off`;
    /// `Full` keeps the server's setting.
    #[test]
    fn a_relaxed_durability_turns_synchronous_commit_off_for_writes() {
        use crate::config::Durability;
        let Some(db) = TestDb::create("durability") else {
            return;
        };
        let setting = |pg: &Arc<Pg>, write: bool| {
            let t = if write {
                pg.begin_write()
            } else {
                pg.begin_read()
            }
            .unwrap();
            let rows = (|| -> heed::Result<Vec<tokio_postgres::Row>> {
                Ok(query!(t, "SHOW synchronous_commit".to_owned(), []))
            })()
            .unwrap();
            column::<String>(&rows[0], 0, "SHOW").unwrap()
        };
        let full = db.connect(Durability::Full);
        assert_eq!(setting(&full, true), "on");
        for relaxed in [Durability::NoMetaSync, Durability::NoSync] {
            let pg = db.connect(relaxed);
            assert_eq!(setting(&pg, true), "off", "{relaxed:?}");
            assert_eq!(setting(&pg, false), "on", "{relaxed:?}");
        }
    }

    #[test]
    fn a_prefix_range_ends_at_the_next_prefix_or_nowhere() {
        assert_eq!(prefix_end(b"proj/a"), Some(b"proj/b".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_store_is_named_by_its_url_without_the_password() {
        let config: tokio_postgres::Config = "postgresql://app:s3cret@db.internal:6543/ledger"
            .parse()
            .unwrap();
        let label = label_of(&config);
        assert_eq!(label, "postgresql://app@db.internal:6543/ledger");
        assert!(!label.contains("s3cret"));
    }

    #[test]
    fn a_server_failure_is_classified_as_such() {
        let e = super::super::engine_error(ServerFailure::carried("PostgreSQL: gone", None));
        assert_eq!(e.kind(), crate::StorageErrorKind::Server);
        assert_eq!(e.to_string(), "PostgreSQL: gone");
    }
}
