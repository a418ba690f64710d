//! [`Varve`], the entry point: opens a store and hands out typed streams and readers.

mod aggregates;
mod keys;

use std::path::Path;
use std::sync::Arc;

use crate::chain::{Chain, ChainOptions, ChainReport, ChainStatus, Extension, HeadDigest};
use crate::config::VarveConfig;
use crate::error::Result;
use crate::event::{layout_fingerprint, Archivable, Event};
use crate::global::GlobalReader;
use crate::position::GlobalSequence;
use crate::projection::{
    ExternalProjection, ExternalProjector, Kind, ModelReader, Namespace, Projection, Projector,
};
use crate::storage::{Access, CommitStats, Store, TypeIdentity};
use crate::stream::Stream;
use crate::subscription::{Subscription, WriteWatcher};
use crate::typed::{self, Events};
use crate::verify::VerifyReport;

/// An open event store.
///
/// Cloning is cheap and shares the store. Opening the same directory again in
/// the same process also shares it (LMDB forbids two opens of one environment).
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{StreamId, Varve};
///
/// #[derive(Archive, Serialize)]
/// struct Deposited { cents: u64 }
///
/// let dir = tempfile::tempdir().unwrap();
/// let varve = Varve::new(dir.path())?;
/// let mut accounts = varve.stream::<Deposited, 64>("accounts")?;
/// let (seq, global) = accounts.append(StreamId(1), &Deposited { cents: 500 })?;
/// assert_eq!((seq.0, global.0), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Varve {
    store: Arc<Store>,
}

impl Varve {
    /// Opens the store in directory `path`, creating it if needed, with the
    /// default [`VarveConfig`].
    ///
    /// # Errors
    /// [`Error::NotADirectory`](crate::Error::NotADirectory) if `path` is a file,
    /// [`Error::Open`](crate::Error::Open) if it cannot be created or read,
    /// [`Error::UnsupportedFormat`](crate::Error::UnsupportedFormat) for a store
    /// of another format version, and
    /// [`Error::Corruption`](crate::Error::Corruption) for a damaged data file.
    pub fn new(path: impl AsRef<Path>) -> Result<Varve> {
        Varve::with_config(path, VarveConfig::default())
    }

    /// Opens the store in directory `path` with `config`. If this process
    /// already has the store open, the existing store is shared; its
    /// configuration must then agree with `config` except for `map_size` (the
    /// map grows by itself), or the open is
    /// [`Error::ConfigConflict`](crate::Error::ConfigConflict).
    ///
    /// ```
    /// use varvedb::{Durability, Varve, VarveConfig};
    /// let dir = tempfile::tempdir().unwrap();
    /// let config = VarveConfig { durability: Durability::NoSync, ..VarveConfig::default() };
    /// let varve = Varve::with_config(dir.path(), config)?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn with_config(path: impl AsRef<Path>, config: VarveConfig) -> Result<Varve> {
        Ok(Varve {
            store: Store::open(path.as_ref(), config)?,
        })
    }

    /// Opens the store in directory `path` read-only, with the default
    /// [`VarveConfig`]: an inspector, a backup job or a reporting process
    /// beside the application that writes it (in another process).
    ///
    /// A read-only open writes nothing: it creates no directory, no store,
    /// no identity record and no database (a database missing from an old
    /// store reads as empty). Every read works as usual (streams, readers,
    /// the global log, subscriptions, read models, [`Varve::verify`],
    /// [`Varve::backup`](crate::Varve::backup)); appends, `execute` and
    /// projectors are [`Error::ReadOnly`](crate::Error::ReadOnly).
    ///
    /// LMDB still takes a reader slot in `lock.mdb` (creating that file if
    /// the directory allows). Where the lock file cannot be written (a
    /// directory this user may only read), the store opens without LMDB's
    /// lock: then a writer in another process cannot see this process's
    /// snapshots and may reuse their pages, so use that mode only on a store
    /// nobody writes meanwhile (see `docs/operations.md`).
    ///
    /// # Errors
    /// As [`Varve::new`]; [`Error::Open`](crate::Error::Open) with
    /// [`NotFound`](std::io::ErrorKind::NotFound) if there is no store at
    /// `path`; [`Error::ConfigConflict`](crate::Error::ConfigConflict) if
    /// this process already has the store open read-write.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{Error, StreamId, Varve};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # Varve::new(dir.path())?.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 1 })?;
    /// let inspector = Varve::open_read_only(dir.path())?;
    /// assert_eq!(inspector.global_reader().end()?.0, 1);
    /// let mut ticks = inspector.stream::<Tick, 16>("ticks")?;
    /// assert!(matches!(ticks.append(StreamId(1), &Tick { n: 2 }), Err(Error::ReadOnly { .. })));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Varve> {
        Varve::open_read_only_with_config(path, VarveConfig::default())
    }

    /// [`Varve::open_read_only`] with `config` (`max_readers`,
    /// `cross_process_poll` and `map_size` apply; `durability` is moot).
    pub fn open_read_only_with_config(
        path: impl AsRef<Path>,
        config: VarveConfig,
    ) -> Result<Varve> {
        Ok(Varve {
            store: Store::open_as(path.as_ref(), config, Access::ReadOnly, None)?,
        })
    }

    /// Whether this handle was opened with [`Varve::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.store.access() == Access::ReadOnly
    }

    /// Opens the stream `name` for events of type `T`.
    ///
    /// Opening writes nothing: a stream that does not exist yet opens as an
    /// empty one (its reads find nothing), and its first append creates it,
    /// bound to `T`, in that append's transaction. So a misspelt name never
    /// creates a stream by being read.
    ///
    /// `N` is the initial capacity in bytes of the handle's serialization
    /// buffer. An event larger than `N` is still stored whole: the buffer grows
    /// on the heap (once) and keeps its new size.
    ///
    /// Stream names are 1 to 255 bytes of UTF-8 without control characters
    /// (`char::is_control`: NUL, tab, line breaks, DEL, the C1 range). Names
    /// are compared byte for byte and never normalised: `"Café"` written
    /// with a precomposed `é` (NFC) and with `e` plus a combining accent
    /// (NFD) are two different streams.
    ///
    /// # What is checked
    ///
    /// A type opened here (a plain rkyv type, or a `#[derive(Event)]` type:
    /// this function cannot tell them apart) binds the stream by its
    /// [`std::any::type_name`] and its archived size and alignment. Detected:
    /// another type, the same type moved to another module or crate (then
    /// refused, although nothing changed), and any change of the archived
    /// size or alignment. **Not detected:** a change that keeps the type's
    /// path, size and alignment: two fields of one type swapped, a `u64`
    /// retyped as `f64` or `i64`, a field renamed. Such a build reads the old
    /// bytes as its new fields. For events that will change, derive
    /// [`Event`] and open them with [`Varve::events`] or [`Varve::events_in`]:
    /// their streams record every version's fingerprint and upcast old
    /// versions (see "Changing an event" in the README). A stream bound to a
    /// `#[derive(Event)]` family cannot be opened here.
    ///
    /// # Errors
    /// [`Error::InvalidStreamName`](crate::Error::InvalidStreamName),
    /// [`Error::TypeMismatch`](crate::Error::TypeMismatch) if the stream
    /// exists for another type (or for this type with a different layout), or
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) if it holds a
    /// `#[derive(Event)]` event.
    /// A stream created for another type after this handle was opened is a
    /// `TypeMismatch` at this handle's first append or read.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct A { x: u64 }
    /// # #[derive(Archive, Serialize)] struct B { x: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let mut things = varve.stream::<A, 64>("things")?;
    /// things.append(varvedb::StreamId(1), &A { x: 1 })?;
    /// assert!(matches!(
    ///     varve.stream::<B, 64>("things"),
    ///     Err(varvedb::Error::TypeMismatch { .. })
    /// ));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn stream<T: Archivable, const N: usize>(&self, name: &str) -> Result<Stream<T, N>> {
        let identity = TypeIdentity {
            type_name: std::any::type_name::<T>(),
            layout_fingerprint: layout_fingerprint::<T>(),
            schema_fingerprint: 0,
            schema: None,
        };
        let info = self.store.open_stream(name, &identity)?;
        Ok(Stream::new(Arc::clone(&self.store), info, N))
    }

    /// Opens the stream of a `#[derive(Event)]` type, named by `E::STREAM`
    /// with a buffer of `E::BUFFER_SIZE` bytes. As for [`Varve::stream`],
    /// opening writes nothing; the first append creates the stream.
    ///
    /// The stream is bound to `E`'s event family: its
    /// [`NAME`](Event::NAME) and every version appended to it, each with its
    /// [`FINGERPRINT`](Event::FINGERPRINT). A type of the same name and fields
    /// in another module or crate is the same event (moving a type changes
    /// nothing); a stored version that this program's type gives other fields
    /// is refused. Events of an older version of `E`'s chain
    /// (`#[event(upcast_from)]`) are upcast as they are read; a program older
    /// than the stream's newest version reads the versions it knows and may
    /// not append. A stream of a `#[derive(Event)]` type cannot be opened with
    /// [`Varve::stream`], which could not check its versions.
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) if the stream
    /// holds another event, one of its versions with other fields, or a plain
    /// rkyv type other than `E` (a store of format 1, or [`Varve::stream`]).
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use varvedb::{Event, StreamId, Varve};
    ///
    /// #[derive(Archive, Serialize, Event)]
    /// #[event(stream = "carts")]
    /// struct ItemAdded { sku: u32 }
    ///
    /// mod moved {
    ///     // The same event, moved to another module.
    ///     #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    ///     #[event(stream = "carts")]
    ///     pub struct ItemAdded { pub sku: u32 }
    /// }
    ///
    /// mod changed {
    ///     // The same name with another field type and no new version.
    ///     #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    ///     #[event(stream = "carts")]
    ///     pub struct ItemAdded { pub sku: i32 }
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// let mut carts = varve.events::<ItemAdded>()?;
    /// carts.append(StreamId(1), &ItemAdded { sku: 42 })?;
    /// assert!(varve.events::<moved::ItemAdded>().is_ok());
    /// assert!(matches!(
    ///     varve.events::<changed::ItemAdded>(),
    ///     Err(varvedb::Error::SchemaMismatch { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn events<E: Event>(&self) -> Result<Events<E>> {
        let info = self.store.open_stream(E::STREAM, &typed::identity::<E>())?;
        Ok(Events::new(Stream::new(
            Arc::clone(&self.store),
            info,
            E::BUFFER_SIZE,
        )))
    }

    /// Opens the stream `name` for the `#[derive(Event)]` type `E`: as
    /// [`Varve::events`], under another name than `E::STREAM` (one event in
    /// several streams, or a stream per tenant). The stream is bound to `E`'s
    /// event family and every read and append is checked against its versions.
    ///
    /// # Errors
    /// [`Error::InvalidStreamName`](crate::Error::InvalidStreamName), and as
    /// [`Varve::events`].
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use varvedb::{Event, StreamId, Varve};
    ///
    /// #[derive(Archive, Serialize, Event)]
    /// struct Visited { page: u32 }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// let mut eu = varve.events_in::<Visited>("visits/eu")?;
    /// eu.append(StreamId(1), &Visited { page: 3 })?;
    /// assert_eq!(eu.name(), "visits/eu");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn events_in<E: Event>(&self, name: &str) -> Result<Events<E>> {
        let info = self.store.open_stream(name, &typed::identity::<E>())?;
        Ok(Events::new(Stream::new(
            Arc::clone(&self.store),
            info,
            E::BUFFER_SIZE,
        )))
    }

    /// A reader over every event of every stream, in global order.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let mut log = varve.global_reader();
    /// assert!(log.get(varvedb::GlobalSequence(0))?.is_none());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn global_reader(&self) -> GlobalReader {
        GlobalReader::new(Arc::clone(&self.store))
    }

    /// Follows the global log from `from`: every event already committed, in
    /// global order, then each new one as it is committed. See
    /// [`Subscription`]; [`Subscription::with_filter`] narrows it to some
    /// streams or event types.
    ///
    /// A `from` past the end of the log is not an error: the subscription
    /// waits for that position, and its first event is the one committed at
    /// `from` (the events committed before it are not yielded).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append_batch(StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }])?;
    ///
    /// // Start at the end of the log: only new events.
    /// let end = varve.global_reader().end()?;
    /// let mut news = varve.subscribe(end);
    /// assert!(news.try_next()?.is_none());
    /// ticks.append(StreamId(1), &Tick { n: 3 })?;
    /// assert_eq!(news.try_next()?.expect("committed").global_sequence(), GlobalSequence(2));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn subscribe(&self, from: GlobalSequence) -> Subscription {
        Subscription::new(Arc::clone(&self.store), from)
    }

    /// A projector for the in-store projection `name`: it keeps `projection`'s
    /// read model and checkpoint in this store (see [`Projector`]). Opening
    /// it reads nothing; the checkpoint under `name` decides where it resumes.
    ///
    /// # Errors
    /// [`Error::ReadOnly`](crate::Error::ReadOnly) on a read-only handle;
    /// [`Error::InvalidProjectionName`](crate::Error::InvalidProjectionName)
    /// unless `name` is 1 to 64 bytes of ASCII letters, digits, `_`, `-`, `.`.
    ///
    /// ```
    /// use varvedb::{GlobalEvent, HandlerError, Projection, ReadModel};
    ///
    /// struct Count;
    /// impl Projection for Count {
    ///     fn apply(&mut self, _: &GlobalEvent, model: &mut ReadModel<'_, '_>) -> Result<(), HandlerError> {
    ///         let n = model.get_u64(b"n")?.unwrap_or(0);
    ///         Ok(model.put_u64(b"n", n + 1)?)
    ///     }
    /// }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// assert!(varve.projector("count/all", Count).is_err());
    /// let mut count = varve.projector("count", Count)?;
    /// count.catch_up()?;
    /// assert_eq!(varve.read_model("count")?.get_u64(b"n")?, None);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn projector<P: Projection>(&self, name: &str, projection: P) -> Result<Projector<P>> {
        self.store.check_writable("running a projector")?;
        let ns = Namespace::new(name, Kind::InStore)?;
        Ok(Projector::new(Arc::clone(&self.store), ns, projection))
    }

    /// A projector for the external projection `name`: it delivers events to
    /// `sink` and keeps only its checkpoint in this store (see
    /// [`ExternalProjector`]).
    ///
    /// # Errors
    /// [`Error::InvalidProjectionName`](crate::Error::InvalidProjectionName),
    /// as for [`Varve::projector`].
    pub fn external_projector<S: ExternalProjection>(
        &self,
        name: &str,
        sink: S,
    ) -> Result<ExternalProjector<S>> {
        self.store.check_writable("running a projector")?;
        let ns = Namespace::new(name, Kind::External)?;
        Ok(ExternalProjector::new(Arc::clone(&self.store), ns, sink))
    }

    /// A reader of the read model of the in-store projection `name`, usable
    /// from any thread while the projection runs.
    ///
    /// # Errors
    /// [`Error::InvalidProjectionName`](crate::Error::InvalidProjectionName),
    /// as for [`Varve::projector`].
    pub fn read_model(&self, name: &str) -> Result<ModelReader> {
        let ns = Namespace::new(name, Kind::InStore)?;
        Ok(ModelReader::new(Arc::clone(&self.store), ns))
    }

    /// Walks the whole store in one snapshot and reports every problem with its
    /// position: damaged blocks (checksums, bounds), gaps or overlaps in the global
    /// log, gaps in a stream id's sequences, index runs that disagree with the
    /// log, events of streams missing from the catalog. It checks structure and
    /// checksums; typed (rkyv) validation happens on every read.
    ///
    /// # Errors
    /// Only if the snapshot cannot be read at all; damage is reported in the
    /// [`VerifyReport`].
    pub fn verify(&self) -> Result<VerifyReport> {
        let view = self.store.snapshot()?;
        view.verify()
    }

    /// Whether the store keeps a tamper-evident chain, and how far.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// assert_eq!(varve.chain_status()?, varvedb::ChainStatus::Off);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn chain_status(&self) -> Result<ChainStatus> {
        let view = self.store.snapshot()?;
        view.chain_status()
    }

    /// The head of the tamper-evident chain: the last event's global
    /// sequence and a digest committing to every block up to it (and to
    /// every re-seal record). Give it to an auditor, who later checks with
    /// [`Varve::verify_extends`] that the log still extends it. Read from
    /// the stored digests: no key needed, nothing recomputed.
    ///
    /// `None` for a store without a chain (or whose chain is still being
    /// enabled) and for an empty log.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{Chain, StreamId, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = Varve::with_config(dir.path(), VarveConfig::tamper_evident(Chain::Plain))?;
    /// varve.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 1 })?;
    /// let held = varve.head_digest()?.expect("a chained, non-empty log");
    /// varve.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 2 })?;
    /// assert!(varve.verify_extends(&held)?.extends());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn head_digest(&self) -> Result<Option<HeadDigest>> {
        let view = self.store.snapshot()?;
        view.head_digest()
    }

    /// Checks that today's log extends `held`, a head taken earlier with
    /// [`Varve::head_digest`]: recomputes the chain from its genesis up to
    /// the held sequence (and the re-seal records it covers) and compares.
    /// Rewriting, removing, reordering or inserting any event up to it, or
    /// cutting the log short, gives [`Extension::Diverges`], even when the
    /// stored chain was rewritten to match (the held head cannot be).
    /// Blocks a migration re-sealed since are listed in
    /// [`Extension::Extends`].
    ///
    /// # Errors
    /// [`Error::ChainNotEnabled`](crate::Error::ChainNotEnabled) without a
    /// complete chain; [`Error::ChainKeyRequired`](crate::Error::ChainKeyRequired)
    /// for a keyed chain opened without its key.
    pub fn verify_extends(&self, held: &HeadDigest) -> Result<Extension> {
        let view = self.store.snapshot()?;
        view.verify_extends(held)
    }

    /// Turns the tamper-evident chain on for an existing store: chains its
    /// log from the first block, in batches (see [`ChainOptions`]), one
    /// write transaction each, so other writers go on meanwhile; the batch
    /// that reaches the end turns the chain on, and from then on every
    /// append extends it. A crash (even `kill -9`) loses at most a batch
    /// that never committed: call it again to resume. Appends made while it
    /// runs hash nothing; the enable chains them when it gets there.
    ///
    /// On a store already chained this way it does nothing. A damaged block
    /// is never chained (`Corruption`, the blocks before it stay chained).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{Chain, StreamId, Varve};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = Varve::new(dir.path())?;
    /// varve.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 1 })?;
    /// let report = varve.enable_chain(Chain::Plain)?;
    /// assert_eq!(report.blocks, 1);
    /// assert!(varve.chain_status()?.is_on());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ChainModeMismatch`](crate::Error::ChainModeMismatch) if the
    /// store keeps another kind of chain; [`Error::ChainKeyMismatch`](
    /// crate::Error::ChainKeyMismatch) for a key that is not its key;
    /// [`Error::ReadOnly`](crate::Error::ReadOnly) on a read-only handle.
    pub fn enable_chain(&self, chain: Chain) -> Result<ChainReport> {
        self.enable_chain_with(chain, ChainOptions::default())
    }

    /// [`Varve::enable_chain`] with `options`.
    pub fn enable_chain_with(&self, chain: Chain, options: ChainOptions) -> Result<ChainReport> {
        self.store.check_writable("enabling the chain")?;
        let limit = options.batch_blocks_limit();
        let mut report = ChainReport {
            blocks: 0,
            batches: 0,
            head: None,
        };
        loop {
            let (blocks, on) = self
                .store
                .write(|txn| txn.enable_chain_batch(&chain, limit))?;
            report.blocks += blocks;
            report.batches += 1;
            if on {
                break;
            }
        }
        // Only once the store accepted the key (its check value matched).
        self.store.set_chain_key(chain.key());
        report.head = self.head_digest()?;
        Ok(report)
    }

    /// An identifier of the newest commit, by this process or another: it
    /// grows with every commit (appends, and also projection checkpoints,
    /// aggregate snapshots and new streams). Reading it is cheap (no
    /// transaction), so it tells whether anything changed since it was last
    /// read. While a writer grows the memory map it waits for the growth to
    /// finish, as opening a snapshot does. For the number of events, see
    /// [`GlobalReader::end`](crate::GlobalReader::end).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Pinged;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let before = varve.last_commit_id();
    /// varve.stream::<Pinged, 8>("pings")?.append(varvedb::StreamId(1), &Pinged)?;
    /// assert!(varve.last_commit_id() > before);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn last_commit_id(&self) -> u64 {
        self.store.last_txn_id() as u64
    }

    /// How many durable commits this handle's appends took, and how many
    /// appends and events they carried: `appends / commits` is how much group
    /// commit shared each commit's syncs between concurrent writers. Counted
    /// since the store was opened in this process, over every handle of it in
    /// this process (they share one store), not across processes. Cheap:
    /// three relaxed loads.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Pinged;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let before = varve.commit_stats();
    /// let mut pings = varve.stream::<Pinged, 8>("pings")?;
    /// pings.append_batch(varvedb::StreamId(1), &[Pinged, Pinged])?;
    /// let after = varve.commit_stats();
    /// assert_eq!(after.commits - before.commits, 1);
    /// assert_eq!(after.appends - before.appends, 1);
    /// assert_eq!(after.events - before.events, 2);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn commit_stats(&self) -> CommitStats {
        self.store.commit_stats()
    }

    /// The global sequence the next event appended to the store will get:
    /// one past the newest committed event, by any handle or process (so the
    /// number of events in the store). varvedb 0.4's method, with no
    /// `Result`.
    ///
    /// It looks at LMDB's newest transaction id and, only if that moved since
    /// the end was last read, reads the end from a short snapshot. If that
    /// read cannot be made (every reader slot taken) or would wait (a writer
    /// is growing the map), it returns the newest end this process already
    /// knows, which may be behind other processes' latest commits.
    /// [`GlobalReader::end`](crate::GlobalReader::end) reports such failures.
    ///
    /// Unlike 0.4's counter, it never counts an append that failed: global
    /// sequences have no gaps.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Tick, 16>("ticks")?.append_batch(varvedb::StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }])?;
    /// assert_eq!(varve.next_global_seq().0, 2);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn next_global_seq(&self) -> GlobalSequence {
        GlobalSequence(self.store.newest_end())
    }

    /// A [`WriteWatcher`] on this store, for varvedb 0.4 programs that wait
    /// for new commits with it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// assert_eq!(varve.watcher().committed_next_global_seq(), varve.next_global_seq());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn watcher(&self) -> WriteWatcher {
        WriteWatcher::new(Arc::clone(self.store()))
    }

    /// Whether a writer is waiting for references to be dropped so it can
    /// grow the memory map. For tests that must act while growth waits; not
    /// a stable API.
    #[doc(hidden)]
    pub fn __growth_pending(&self) -> bool {
        self.store.resize_pending()
    }

    /// A handle on an open store (for other modules).
    pub(crate) fn from_store(store: Arc<Store>) -> Varve {
        Varve { store }
    }

    /// Opens the store kept in the PostgreSQL database that `url` names (a
    /// `postgresql://user:password@host:port/database` URL or a
    /// `host=… dbname=…` string), creating its tables if the database has
    /// none, with the default [`VarveConfig`] (feature `postgres`).
    ///
    /// The handle is the same [`Varve`]: streams, readers, the global log,
    /// aggregates, snapshots, subscriptions and projections work as on
    /// LMDB. What only a directory has (file backups, the memory map, the
    /// reader table, [`Varve::info`]) returns
    /// [`Error::Unsupported`](crate::Error::Unsupported); [`Varve::path`]
    /// is the URL without its password.
    ///
    /// ```no_run
    /// # #[derive(rkyv::Archive, rkyv::Serialize)] struct Deposited { cents: u64 }
    /// let varve = varvedb::Varve::connect("postgresql://app@localhost/ledger")?;
    /// let mut accounts = varve.stream::<Deposited, 64>("accounts")?;
    /// accounts.append(varvedb::StreamId(1), &Deposited { cents: 500 })?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Open`](crate::Error::Open) for a string that is not a
    /// connection string, [`Error::Storage`](crate::Error::Storage) with
    /// [`StorageErrorKind::Server`](crate::StorageErrorKind::Server) if the
    /// server cannot be reached or refuses, and
    /// [`Error::UnsupportedFormat`](crate::Error::UnsupportedFormat) for a
    /// database whose schema a newer VarveDB created.
    #[cfg(feature = "postgres")]
    pub fn connect(url: &str) -> Result<Varve> {
        Varve::connect_with(url, VarveConfig::default())
    }

    /// [`Varve::connect`] with a configuration. `max_readers` bounds the
    /// connection pool (4 to 16 connections; every open snapshot and
    /// write transaction holds one); `resize_wait` is how long a call waits
    /// for a pooled connection (idle readers' snapshots are closed
    /// meanwhile) before a [`Storage`](crate::Error::Storage) error;
    /// [`Durability::Full`](crate::Durability::Full) keeps the server's
    /// `synchronous_commit`, a relaxed durability commits writes with
    /// `synchronous_commit = off` (a server crash may lose the last commits,
    /// never leaves a partial one); `map_size` does not apply.
    ///
    /// # Errors
    /// As [`Varve::connect`].
    #[cfg(feature = "postgres")]
    pub fn connect_with(url: &str, config: VarveConfig) -> Result<Varve> {
        Ok(Varve {
            store: Store::connect(url, config)?,
        })
    }

    /// [`Varve::connect`] for async code: the connection is made without
    /// blocking the calling task's thread.
    ///
    /// # Errors
    /// As [`Varve::connect`].
    #[cfg(feature = "postgres")]
    pub async fn connect_async(url: &str) -> Result<Varve> {
        Varve::connect_with_async(url, VarveConfig::default()).await
    }

    /// [`Varve::connect_with`] for async code.
    ///
    /// # Errors
    /// As [`Varve::connect`].
    #[cfg(feature = "postgres")]
    pub async fn connect_with_async(url: &str, config: VarveConfig) -> Result<Varve> {
        crate::storage::offload(|| Varve::connect_with(url, config))
    }

    /// Runs `f` (any synchronous call of this API) from async code without
    /// stalling the runtime: on a multi-threaded tokio runtime the worker
    /// hands its other tasks to the rest of the pool while `f` waits for
    /// the store (`tokio::task::block_in_place`); elsewhere `f` runs in
    /// place (feature `postgres`).
    ///
    /// ```no_run
    /// # #[derive(rkyv::Archive, rkyv::Serialize)] struct Deposited { cents: u64 }
    /// # async fn run(varve: varvedb::Varve) -> varvedb::Result<()> {
    /// let end = varve.run(|v| Ok(v.next_global_seq())).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Whatever `f` returns.
    #[cfg(feature = "postgres")]
    pub async fn run<R>(&self, f: impl FnOnce(&Varve) -> Result<R>) -> Result<R> {
        crate::storage::offload(|| f(self))
    }

    /// [`Varve::load`] for async code (see [`Varve::run`]).
    ///
    /// # Errors
    /// As [`Varve::load`].
    #[cfg(feature = "postgres")]
    pub async fn load_async<A: crate::Aggregate>(
        &self,
        id: crate::StreamId,
    ) -> Result<crate::Loaded<A>> {
        crate::storage::offload(|| self.load::<A>(id))
    }

    /// The engine behind this handle (for other modules).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The store's directory (canonicalized).
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Whether the store is encrypted at rest (created with
    /// [`VarveConfig::encryption`](crate::VarveConfig::encryption)).
    pub fn is_encrypted(&self) -> bool {
        self.store.keyring().is_some()
    }

    /// Changes an encrypted store's master key to `key`: its data keys are
    /// wrapped anew under it in one transaction (nothing else is rewritten,
    /// so it takes a moment whatever the store's size). From the commit on,
    /// opening the store needs `key`; handles already open (in this and
    /// other processes) go on reading and appending, but one of another
    /// process keeps the old master key, so it cannot
    /// [rotate](Varve::rotate_data_key) (or take a data key another handle
    /// adds) until it is reopened with `key`: a typed
    /// [`Error::EncryptionKeyMismatch`](crate::Error::EncryptionKeyMismatch),
    /// never a key wrapped under the old one. A handle opened later in this
    /// process while this one is still open shares it, so it must give the
    /// key this one was opened with (the key is checked per open store, not
    /// per handle).
    ///
    /// ```
    /// use varvedb::{EncryptionKey, Error, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let old = EncryptionKey::from_bytes([1; 32]);
    /// let varve = Varve::with_config(dir.path(), VarveConfig::encryption(old.clone()))?;
    /// varve.change_encryption_key(EncryptionKey::from_passphrase("new passphrase"))?;
    /// drop(varve);
    /// assert!(matches!(
    ///     Varve::with_config(dir.path(), VarveConfig::encryption(old)),
    ///     Err(Error::EncryptionKeyMismatch { .. })
    /// ));
    /// let new = VarveConfig::encryption(EncryptionKey::from_passphrase("new passphrase"));
    /// assert!(Varve::with_config(dir.path(), new)?.is_encrypted());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotEncrypted`](crate::Error::NotEncrypted) for a plaintext
    /// store; [`Error::ReadOnly`](crate::Error::ReadOnly) on a read-only
    /// handle; [`Error::KeyVault`](crate::Error::KeyVault) for a store with
    /// a key vault (not supported yet).
    pub fn change_encryption_key(&self, key: crate::EncryptionKey) -> Result<()> {
        self.store.check_writable("changing the encryption key")?;
        if self.store.vault().is_some() {
            // The vault's entity keys are wrapped under the master key too;
            // re-wrapping them is not done yet (docs/security.md).
            return Err(crate::Error::KeyVault {
                path: self.store.path().to_path_buf(),
                detail: "changing the master key of a store with a key vault is not supported yet"
                    .into(),
            });
        }
        // The keyring takes the new master key as the write commits, before
        // another write of this process can start.
        self.store.write(|txn| txn.change_master_key(&key))
    }

    /// The store's id: random bytes chosen when it was created, kept in the
    /// data file and in the identity record `varvedb.id` beside it. It stays
    /// the same for the life of the store (and of its copies).
    pub fn store_id(&self) -> crate::StoreId {
        self.store.store_id()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &VarveConfig {
        self.store.config()
    }
}
