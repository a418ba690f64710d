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

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long a caller waits for a pooled connection before a typed error.
const POOL_WAIT: Duration = Duration::from_secs(30);

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
    /// checks the schema.
    pub(crate) fn connect(url: &str, pool_size: usize) -> Result<Arc<Pg>> {
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
            .wait_timeout(Some(POOL_WAIT))
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
        });
        pg.migrate()?;
        Ok(pg)
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
                let found: Option<i32> = row.map(|r| r.get(0));
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
    /// the server cannot be asked (a snapshot opened next reports why).
    pub(crate) fn last_txn_id(&self) -> usize {
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool.get().await.ok()?;
            let row = client
                .query_one("SELECT txn FROM varvedb_head WHERE id = 1", &[])
                .await
                .ok()?;
            Some(row.get::<_, i64>(0) as usize)
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
        let sql = if write {
            "BEGIN ISOLATION LEVEL READ COMMITTED;
             SELECT txn, last FROM varvedb_head WHERE id = 1 FOR UPDATE"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
             SELECT txn, last FROM varvedb_head WHERE id = 1"
        };
        let (client, txn, last, tail) = self.block(async move {
            let client = pool.get().await.map_err(pool_error)?;
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
                row.and_then(|r| r.get(i))
                    .and_then(|v: &str| v.parse::<u64>().ok())
            };
            match (parse(0), parse(1)) {
                (Some(txn), Some(last)) => Ok((client, txn, last, tail)),
                _ => {
                    // `BEGIN` ran: a connection inside a transaction never
                    // goes back to the pool.
                    drop(Object::take(client));
                    Err(malformed("no head row".into()))
                }
            }
        })?;
        let txn = PgTxn {
            pg: Arc::clone(self),
            client: Some(Arc::new(client)),
            write,
            id: if write { txn + 1 } else { txn } as usize,
            end: last,
            appended: false,
            arena: Mutex::new(Vec::new()),
            cache: Mutex::new(BlockCache::default()),
            gets: Mutex::new(BTreeMap::new()),
            tail_known: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
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
        self.handle.spawn(async move {
            while !closed.load(Ordering::Acquire) {
                let _ = listen(&config, &*raise, &closed).await;
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
    // What was committed while this connection was not listening.
    if let Ok(row) = client
        .query_one("SELECT last FROM varvedb_head WHERE id = 1", &[])
        .await
    {
        raise(row.get::<_, i64>(0) as u64);
    }
    while let Some(payload) = rx.recv().await {
        if closed.load(Ordering::Acquire) {
            break;
        }
        if let Ok(end) = payload.parse::<u64>() {
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

/// An overwriting put waiting to be sent: table, key, value.
type Overwrite = (PgTable, Vec<u8>, Vec<u8>);

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

/// A PostgreSQL transaction: a read snapshot or a write transaction, on one
/// pooled connection held for its life.
pub(crate) struct PgTxn {
    pg: Arc<Pg>,
    client: Option<Arc<Object>>,
    write: bool,
    id: usize,
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
    /// `cache` holds the log's last block as read right after the head row
    /// was locked (pipelined with `BEGIN`): `last` needs no round trip.
    /// Cleared when the transaction writes the log or the cache is replaced.
    tail_known: AtomicBool,
    /// Overwriting puts not yet sent (table, key, value): they cannot fail
    /// for a reason of their own (`ON CONFLICT … DO UPDATE`), so they wait
    /// for the next statement of the transaction, or ride with `COMMIT` in
    /// its round trip. Every statement sends them first.
    pending: Mutex<Vec<Overwrite>>,
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

/// A `query` on `client` with owned parameters, run on the runtime.
macro_rules! query {
    ($txn:expr, $sql:expr, [$($p:expr),*]) => {{
        $txn.flush()?;
        let client = $txn.client()?;
        let sql: String = $sql;
        $txn.pg.block(async move {
            let st = client.prepare_cached(&sql).await?;
            client.query(&st, &[$(&$p as &(dyn ToSql + Sync)),*]).await
        }).map_err(server)?
    }};
}

/// The statement of an overwriting put into `table`.
fn upsert_sql(table: PgTable) -> String {
    format!(
        "INSERT INTO {} (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING 1",
        table.name()
    )
}

/// Runs the overwriting puts `pending` in order, then `then`, pipelined in
/// one round trip. The statements are prepared first (cached: no round trip
/// once a connection has seen them), so each request is sent when its future
/// is first polled, in order: the server runs them in that order.
async fn upserts_then<F: Future>(
    client: &Object,
    pending: &[Overwrite],
    then: F,
) -> std::result::Result<F::Output, tokio_postgres::Error> {
    let mut statements = Vec::with_capacity(pending.len());
    for (table, _, _) in pending {
        statements.push(client.prepare_cached(&upsert_sql(*table)).await?);
    }
    let params: Vec<[&(dyn ToSql + Sync); 2]> = pending
        .iter()
        .map(|(_, k, v)| [k as &(dyn ToSql + Sync), v as &(dyn ToSql + Sync)])
        .collect();
    let writes = futures_util::future::try_join_all(
        statements
            .iter()
            .zip(&params)
            .map(|(st, p)| client.execute(st, &p[..])),
    );
    let (written, out) = futures_util::future::join(writes, then).await;
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

impl PgTxn {
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
        let key = slot.1.clone();
        let rows = query!(
            self,
            format!("SELECT value FROM {} WHERE key = $1", table.name()),
            [key]
        );
        let span = rows.first().map(|r| self.keep(r.get::<_, &[u8]>(0)));
        self.gets.lock().insert(slot, span);
        Ok(span.map(|span| self.slice(span)))
    }

    /// Sends the overwriting puts waiting in `pending` (one round trip).
    fn flush(&self) -> heed::Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.is_empty() {
            return Ok(());
        }
        let client = self.client()?;
        self.pg
            .block(async move { upserts_then(&client, &pending, async {}).await })
            .map_err(server)
    }

    /// Forgets what `get` read from `table`, before writing it.
    fn forget(&self, table: PgTable) {
        self.gets.lock().retain(|(t, _), _| *t != table as u8);
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
        let key = key.to_vec();
        let rows = query!(
            self,
            format!(
                "SELECT key, value FROM {} WHERE key {op} $1 ORDER BY key {order} LIMIT 1",
                table.name()
            ),
            [key]
        );
        Ok(rows.first().map(|r| self.row_pair(r)))
    }

    fn row_pair(&self, r: &tokio_postgres::Row) -> Pair<'_> {
        let k = self.keep(r.get::<_, &[u8]>(0));
        let v = self.keep(r.get::<_, &[u8]>(1));
        self.pair((k, v))
    }

    pub(crate) fn last(&self, table: PgTable) -> heed::Result<Option<Pair<'_>>> {
        if table == PgTable::Events {
            return self.last_block();
        }
        let rows = query!(
            self,
            format!(
                "SELECT key, value FROM {} ORDER BY key DESC LIMIT 1",
                table.name()
            ),
            []
        );
        Ok(rows.first().map(|r| self.row_pair(r)))
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
        Ok(rows.iter().map(|r| self.row_pair(r)).collect())
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

    pub(crate) fn put(
        &mut self,
        table: PgTable,
        key: &[u8],
        value: &[u8],
        append: bool,
    ) -> heed::Result<()> {
        if !self.write {
            return Err(heed::Error::Mdb(heed::MdbError::BadTxn));
        }
        if table == PgTable::Events {
            return self.put_block(key, value, append);
        }
        self.forget(table);
        let (key, value) = (key.to_vec(), value.to_vec());
        if !append {
            // An overwrite cannot be refused: it waits for the next
            // statement (see `pending`).
            self.pending.lock().push((table, key, value));
            return Ok(());
        }
        // LMDB's `APPEND` and `NO_OVERWRITE` refuse a key that exists.
        let rows = query!(
            self,
            format!(
                "INSERT INTO {} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING 1",
                table.name()
            ),
            [key, value]
        );
        if rows.is_empty() {
            return Err(heed::Error::Mdb(heed::MdbError::KeyExist));
        }
        Ok(())
    }

    pub(crate) fn delete(&mut self, table: PgTable, key: &[u8]) -> heed::Result<bool> {
        if !self.write || table == PgTable::Events {
            return Err(heed::Error::Mdb(heed::MdbError::BadTxn));
        }
        self.forget(table);
        let key = key.to_vec();
        let rows = query!(
            self,
            format!("DELETE FROM {} WHERE key = $1 RETURNING 1", table.name()),
            [key]
        );
        Ok(!rows.is_empty())
    }

    pub(crate) fn delete_prefix(&mut self, table: PgTable, prefix: &[u8]) -> heed::Result<usize> {
        if !self.write || table == PgTable::Events {
            return Err(heed::Error::Mdb(heed::MdbError::BadTxn));
        }
        self.forget(table);
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
        Ok(rows.len())
    }

    /// Commits: bumps the commit counter and, if this transaction appended,
    /// notifies listeners of the new end, inside the transaction.
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
        // Overwrites still waiting ride in the same round trip, before the
        // commit (a failed one aborts the transaction: nothing commits).
        let pending = std::mem::take(&mut *self.pending.lock());
        self.pg
            .block(async move {
                let done = upserts_then(&client, &pending, client.batch_execute(&sql))
                    .await
                    .and_then(|done| done);
                if done.is_err() {
                    // Its transaction may still be open (aborted): the
                    // connection never returns to the pool.
                    discard(client);
                }
                done
            })
            .map_err(server)
    }

    /// Writes a block as event rows, moves the head past it and records the
    /// stream's version, in one round trip (the statements are pipelined).
    fn put_block(&mut self, key: &[u8], value: &[u8], append: bool) -> heed::Result<()> {
        let first = global_of(key)?;
        let rows = decompose(first, value)
            .ok_or_else(|| malformed(format!("an unparsable block at {first}")))?;
        let n = rows.len() as i64;
        let last_row = rows
            .last()
            .map(|r| (r.stream_tag, r.stream_id, r.stream_seq + 1));
        let mut cols = Columns::default();
        for r in rows {
            cols.push(r);
        }
        // Whatever was cached no longer describes the log.
        *self.cache.lock() = BlockCache::default();
        self.tail_known.store(false, Ordering::Release);
        self.flush()?;
        let client = self.client()?;
        let end = if append { Some(first + n as u64) } else { None };
        let moved = self
            .pg
            .block(async move {
                let insert = client.prepare_cached(INSERT_EVENTS).await?;
                if !append {
                    // A migration rewriting a block in place.
                    client
                        .execute(
                            "DELETE FROM varvedb_events WHERE global >= $1 AND global < $2",
                            &[&(first as i64), &(first as i64 + n)],
                        )
                        .await?;
                }
                let c = &cols;
                let params: [&(dyn ToSql + Sync); 11] = [
                        &c.global,
                        &c.stream_tag,
                        &c.stream_id,
                        &c.stream_seq,
                        &c.event_id,
                        &c.fingerprint,
                        &c.committed_at,
                        &c.metadata,
                        &c.payload,
                        &c.block_first,
                        &c.block_head,
                ];
                let inserted = client.execute(&insert, &params);
                let head = async {
                    if append {
                        let row = client
                            .query_one(
                                "UPDATE varvedb_head SET last = last + $1 WHERE id = 1 RETURNING last",
                                &[&n],
                            )
                            .await?;
                        Ok(Some(row.get::<_, i64>(0)))
                    } else {
                        Ok(None)
                    }
                };
                let version = async {
                    match last_row {
                        Some((tag, id, version)) => client
                            .execute(
                                "INSERT INTO varvedb_streams VALUES ($1, $2, $3)
                                 ON CONFLICT (stream_tag, stream_id)
                                 DO UPDATE SET version = GREATEST(varvedb_streams.version, EXCLUDED.version)",
                                &[&tag, &id, &version],
                            )
                            .await
                            .map(drop),
                        None => Ok(()),
                    }
                };
                let (_, moved, ()) = futures_util::future::try_join3(inserted, head, version).await?;
                Ok(moved)
            })
            .map_err(server)?;
        if let (Some(end), Some(moved)) = (end, moved) {
            // The head moves with the log: a block that does not start where
            // the head stood would leave a gap or an overlap.
            if moved as u64 != end {
                return Err(malformed(format!(
                    "the head moved to {moved}, but the block appended ends at {end}"
                )));
            }
            self.end = end;
            self.appended = true;
        }
        Ok(())
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
        let rows_fetched: Vec<events::Fetched<'_>> = rows.iter().map(row_parts).collect();
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
                    let whole: Vec<events::Fetched<'_>> = rows.iter().map(row_parts).collect();
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

fn row_parts(r: &tokio_postgres::Row) -> events::Fetched<'_> {
    events::Fetched {
        global: r.get::<_, i64>(0) as u64,
        block_head: r.get(1),
        metadata: r.get(2),
        payload: r.get(3),
    }
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
    move |end| {
        if let Some(store) = store.upgrade() {
            store.observe_end(end);
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
        let pg = Pg::connect(url, (config.max_readers as usize).clamp(4, MAX_POOL))?;
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

    /// Overwrites wait for the transaction's next statement (or its commit)
    /// and `get` remembers what it read: a transaction still reads its own
    /// writes, in order, and commits every one. Runs against
    /// `VARVEDB_TEST_POSTGRES_URL` (a user that may create databases).
    #[test]
    fn deferred_overwrites_and_remembered_reads_keep_read_your_writes() {
        let Ok(admin) = std::env::var("VARVEDB_TEST_POSTGRES_URL") else {
            eprintln!("skipped: VARVEDB_TEST_POSTGRES_URL is not set");
            return;
        };
        let name = format!("varvedb_lib_deferred_{}", std::process::id());
        admin_execute(&admin, &format!("DROP DATABASE IF EXISTS {name}")).unwrap();
        admin_execute(&admin, &format!("CREATE DATABASE {name}")).unwrap();
        let url = match admin.rsplit_once('/') {
            Some((base, _)) if admin.contains("://") => format!("{base}/{name}"),
            _ => format!("{admin} dbname={name}"),
        };
        {
            let pg = Pg::connect(&url, 2).unwrap();
            let mut t = pg.begin_write().unwrap();
            assert_eq!(t.get(PgTable::State, b"k").unwrap(), None);
            t.put(PgTable::State, b"k", b"1", false).unwrap();
            // The remembered `None` is forgotten; the overwrite is sent first.
            assert_eq!(t.get(PgTable::State, b"k").unwrap(), Some(&b"1"[..]));
            t.put(PgTable::State, b"k", b"2", false).unwrap();
            t.put(PgTable::State, b"gone", b"x", false).unwrap();
            assert!(t.delete(PgTable::State, b"gone").unwrap());
            t.put(PgTable::State, b"k", b"3", false).unwrap();
            t.put(PgTable::Meta, b"m", b"4", false).unwrap();
            // A no-overwrite put sees the overwrite waiting before it.
            assert!(matches!(
                t.put(PgTable::State, b"k", b"5", true),
                Err(heed::Error::Mdb(heed::MdbError::KeyExist))
            ));
            t.put(PgTable::State, b"last", b"6", false).unwrap();
            // The last overwrites ride with the commit.
            t.commit().unwrap();
            let r = pg.begin_read().unwrap();
            assert_eq!(r.get(PgTable::State, b"k").unwrap(), Some(&b"3"[..]));
            assert_eq!(r.get(PgTable::State, b"gone").unwrap(), None);
            assert_eq!(r.get(PgTable::Meta, b"m").unwrap(), Some(&b"4"[..]));
            assert_eq!(r.get(PgTable::State, b"last").unwrap(), Some(&b"6"[..]));
            // A rolled-back transaction's waiting overwrites never land.
            let mut t = pg.begin_write().unwrap();
            t.put(PgTable::State, b"k", b"7", false).unwrap();
            drop(t);
            let r = pg.begin_read().unwrap();
            assert_eq!(r.get(PgTable::State, b"k").unwrap(), Some(&b"3"[..]));
        }
        admin_execute(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .unwrap();
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
