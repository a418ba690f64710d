//! The one error type of VarveDB.

use std::path::PathBuf;

use crate::id::EventId;
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};

/// Everything that can go wrong in VarveDB.
///
/// Each variant carries the context needed to act on it (which path, which
/// stream, which position). Raw LMDB errors never escape on their own: they are
/// wrapped in [`Error::Storage`] with the operation that failed.
///
/// ```
/// use varvedb::{Error, Varve};
///
/// let file = tempfile::NamedTempFile::new().unwrap();
/// match Varve::new(file.path()) {
///     Err(Error::NotADirectory { path }) => assert_eq!(path, file.path()),
///     other => panic!("expected NotADirectory, got {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store path exists but is not a directory.
    #[error("cannot open a store at {path}: it is not a directory")]
    NotADirectory {
        /// The path given to [`Varve::new`](crate::Varve::new).
        path: PathBuf,
    },

    /// The store directory could not be created, read or locked.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The store was written with an on-disk format this version cannot read.
    #[error(
        "the store at {path} uses on-disk format {found}, this version of varvedb reads format {supported}"
    )]
    UnsupportedFormat {
        /// The store directory.
        path: PathBuf,
        /// The format version recorded in the store.
        found: u32,
        /// The format version this build reads and writes.
        supported: u32,
    },

    /// The store was written with a different rkyv encoding (endianness, pointer
    /// width or alignment features), so its events cannot be read zero-copy.
    #[error(
        "the store at {path} was written with a different rkyv encoding; check rkyv's \
         `big_endian`, `unaligned` and `pointer_width_*` features across your dependency graph"
    )]
    IncompatibleEncoding {
        /// The store directory.
        path: PathBuf,
    },

    /// A stream name is empty, too long, or otherwise unusable.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName {
        /// The rejected name (possibly truncated for display).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A stream is bound to one event type, and it was opened or read with another.
    #[error(
        "stream {stream:?} holds events of type `{stored}` (layout {stored_fingerprint:#018x}), \
         not `{requested}` (layout {requested_fingerprint:#018x})"
    )]
    TypeMismatch {
        /// The stream name.
        stream: String,
        /// The type name recorded when the stream was created.
        stored: String,
        /// The layout fingerprint recorded when the stream was created.
        stored_fingerprint: u64,
        /// The type the caller asked for.
        requested: String,
        /// The layout fingerprint of the requested type.
        requested_fingerprint: u64,
    },

    /// An event could not be serialized with rkyv.
    #[error("cannot serialize an event for stream {stream:?}: {source}")]
    Serialize {
        /// The stream name.
        stream: String,
        /// rkyv's error.
        #[source]
        source: rkyv::rancor::Error,
    },

    /// An event (or a batch) is larger than one record can hold.
    #[error("an event of {size} bytes for stream {stream:?} exceeds the limit of {max} bytes")]
    EventTooLarge {
        /// The stream name.
        stream: String,
        /// The serialized size.
        size: usize,
        /// The largest size a record can hold.
        max: usize,
    },

    /// An optimistic-concurrency check failed; nothing was written.
    #[error(
        "version conflict on stream {stream:?} id {id}: expected {expected}, but the stream is at {}",
        match actual { Some(v) => format!("version {}", v.0), None => "no version (empty)".to_string() }
    )]
    VersionConflict {
        /// The stream name.
        stream: String,
        /// The stream id within the stream.
        id: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The last stream sequence actually present, or `None` for an empty stream.
        actual: Option<StreamSequence>,
    },

    /// Bytes read from disk failed validation: a checksum mismatch, an
    /// out-of-bounds offset, or an rkyv layout that does not check.
    #[error("corrupted data at {location}: {detail}")]
    Corruption {
        /// Where the bad bytes were found.
        location: Location,
        /// What was wrong with them.
        detail: String,
    },

    /// All of LMDB's reader slots are taken: too many snapshots (readers,
    /// iterators, held events) are alive at once.
    #[error(
        "too many concurrent read snapshots (the store allows {max}); drop idle readers, \
         iterators and event guards, or raise `VarveConfig::max_readers`"
    )]
    ReadersFull {
        /// The configured number of reader slots.
        max: u32,
    },

    /// The memory map had to grow, but read snapshots held in this process
    /// kept it from being remapped within the configured wait.
    #[error(
        "the store needs to grow its map to {wanted} bytes, but {held} read snapshot(s) stayed \
         open for {waited_ms} ms; drop long-lived readers, iterators or event guards"
    )]
    MapResizeBlocked {
        /// The map size the write needed.
        wanted: usize,
        /// How many snapshots were still open.
        held: usize,
        /// How long the writer waited.
        waited_ms: u64,
    },

    /// A projection's handler failed on an event. The projection's checkpoint
    /// stays just before that event (nothing past it was applied), so running
    /// the projection again retries it.
    #[error("projection {projection:?} failed at global sequence {at}: {source}")]
    Projection {
        /// The projection's name.
        projection: String,
        /// The event the handler failed on.
        at: GlobalSequence,
        /// What the handler returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A projection name is empty, too long, or uses a character outside the
    /// allowed set.
    #[error("invalid projection name {name:?}: {reason}")]
    InvalidProjectionName {
        /// The rejected name (possibly truncated for display).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The storage engine reported an error; `operation` says what VarveDB
    /// was doing. [`StorageError::kind`] says what failed (I/O, with
    /// [`StorageError::io_error`], a full map, an engine code).
    #[error("storage error while {operation}: {source}")]
    Storage {
        /// What VarveDB was doing.
        operation: &'static str,
        /// What the engine reported.
        #[source]
        source: StorageError,
    },

    /// The data file is shorter than its newest commit needs: pages it uses
    /// lie past the end of the file (it was cut, or lost its tail in a crash
    /// of the machine under [`Durability::NoSync`](crate::Durability::NoSync)).
    /// Reading them through the memory map would kill the process, so the
    /// store does not open. Restore the file from a backup.
    #[error(
        "the data file {path} is truncated: its newest commit needs at least {expected} bytes, \
         the file holds {actual}"
    )]
    Truncated {
        /// The data file.
        path: PathBuf,
        /// The least length the newest commit needs, in bytes.
        expected: u64,
        /// The file's length, in bytes.
        actual: u64,
    },

    /// The store's identity record is there but its data file is missing or
    /// empty: the store existed and lost its data. It is never silently
    /// recreated; restore the data file, or delete the directory to start over.
    #[error(
        "the store {store_id} at {path} has lost its data file (missing or empty); \
         refusing to create a new store in its place"
    )]
    DataFileMissing {
        /// The store directory.
        path: PathBuf,
        /// The id recorded in the store's identity record.
        store_id: crate::StoreId,
    },

    /// The data file does not belong to the store whose identity record sits
    /// beside it (it was copied or moved in from another store).
    #[error(
        "the data file in {path} belongs to {}, not to store {expected} named by the identity \
         record beside it",
        match found { Some(id) => format!("store {id}"), None => "no known store".to_string() }
    )]
    StoreMismatch {
        /// The store directory.
        path: PathBuf,
        /// The id in the identity record (`varvedb.id`).
        expected: crate::StoreId,
        /// The id recorded in the data file, if any.
        found: Option<crate::StoreId>,
    },

    /// The store this process opened at `path` was deleted, moved or replaced
    /// while still open, and LMDB cannot open a second store at the same path
    /// in one process until every handle to the first one is dropped.
    #[error(
        "the store this process opened at {path} was deleted, moved or replaced while open; \
         drop every handle to it (streams, readers, events) before opening {path} again"
    )]
    StoreReplaced {
        /// The store directory.
        path: PathBuf,
    },

    /// The store is already open in this process with a configuration that
    /// differs in a setting a second open cannot change.
    #[error(
        "the store at {path} is already open in this process with {field} = {open}, \
         not {requested}; open it with the same configuration or use the open handle"
    )]
    ConfigConflict {
        /// The store directory.
        path: PathBuf,
        /// The setting that differs (`durability`, `max_readers`, `resize_wait`,
        /// `cross_process_poll`).
        field: &'static str,
        /// Its value in the open store.
        open: String,
        /// Its value in the configuration asked for.
        requested: String,
    },

    /// A projection's checkpoint was moved by someone else while this
    /// projector ran (another projector of the same name, or a reset): its
    /// progress is not written, so the checkpoint never moves back and never
    /// skips events. Run one external projector per name at a time.
    #[error(
        "the checkpoint of projection {projection:?} moved from {expected} to {found} while \
         this projector ran; another projector of that name is running, or it was reset"
    )]
    CheckpointMoved {
        /// The projection's name.
        projection: String,
        /// The checkpoint this projector last read or wrote.
        expected: GlobalSequence,
        /// The checkpoint the store holds now.
        found: GlobalSequence,
    },

    /// A projection name is already used by a projection of the other kind
    /// (in-store versus external): the two would share one checkpoint.
    #[error("projection {projection:?} is an {stored} projection, not an {requested} one")]
    ProjectionKindMismatch {
        /// The projection's name.
        projection: String,
        /// The kind the store has recorded for the name.
        stored: &'static str,
        /// The kind asked for.
        requested: &'static str,
    },

    /// The append had joined a group commit whose leading thread panicked
    /// before answering it. The group's write transaction was aborted unless
    /// the panic came after its commit, so the append may or may not be
    /// durable: read the stream to find out before appending it again.
    #[error(
        "the thread committing this append's group panicked before answering it; \
         the append may or may not have been committed"
    )]
    CommitAbandoned,

    /// An event's user metadata is larger than
    /// [`Context::MAX_USER_BYTES`](crate::Context::MAX_USER_BYTES).
    #[error("user metadata of {size} bytes for stream {stream:?} exceeds the {max}-byte limit")]
    MetadataTooLarge {
        /// The stream appended to.
        stream: String,
        /// The size of the user bytes.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// An append was given event ids, but not one per event.
    #[error("an append of {events} events to stream {stream:?} was given {ids} event ids: give one per event, or none")]
    EventIdCount {
        /// The stream appended to.
        stream: String,
        /// The number of events.
        events: usize,
        /// The number of event ids.
        ids: usize,
    },

    /// One append names the same event id twice. Refused before anything
    /// is read or written.
    #[error("event id {event_id} is given to events {first} and {second} of one append to stream {stream:?}")]
    DuplicateEventId {
        /// The stream appended to.
        stream: String,
        /// The repeated id.
        event_id: EventId,
        /// The index (in the append) of its first event.
        first: usize,
        /// The index of the second.
        second: usize,
    },

    /// Some of an append's event ids are already stored, but the append is
    /// not a retry of (a run of) the append that stored them: some of its
    /// ids are not stored, or they are stored in another stream or stream
    /// id, or in another order. Nothing was written: a stored id is never
    /// stored twice.
    #[error(
        "event id {event_id} (event {index} of this append to stream {stream:?} id {id}) is already \
         stored at {stored}: {reason}"
    )]
    EventIdConflict {
        /// The stream appended to.
        stream: String,
        /// The stream id appended to.
        id: StreamId,
        /// The stored id.
        event_id: EventId,
        /// Its index in the append.
        index: usize,
        /// Where it is stored (boxed: it keeps `Error` small).
        stored: Box<StoredAt>,
        /// Why the append is not a retry.
        reason: &'static str,
    },

    /// An entity key is empty or longer than
    /// [`MAX_ENTITY_KEY`](crate::MAX_ENTITY_KEY) bytes.
    #[error("entity key of {len} bytes for stream {stream:?}: keys are 1 to {max} bytes")]
    InvalidEntityKey {
        /// The stream.
        stream: String,
        /// The key's length.
        len: usize,
        /// The longest key.
        max: usize,
    },
    /// The store's data file was deleted (its directory removed) while the
    /// store was open: the write was not committed, since it would have been
    /// acknowledged and lost with the file. Open the store again where it now
    /// lives, or restore it.
    #[error(
        "the data file of the store at {path} was deleted while the store was open; \
         nothing was written"
    )]
    StoreDeleted {
        /// The store directory, as it was opened.
        path: PathBuf,
    },

    /// The directory holds a store written by varvedb 0.4, whose on-disk
    /// layout this version does not read. Nothing was changed in it; convert
    /// it with `varvedb import` (see `docs/migrating-from-0.4.md`).
    #[error(
        "the store at {path} was written by varvedb 0.4, whose on-disk format this version \
         cannot read; nothing was changed: convert it with `varvedb import` \
         (see docs/migrating-from-0.4.md)"
    )]
    LegacyStore {
        /// The store directory.
        path: PathBuf,
    },

    /// A stream holds an event family (a `#[derive(Event)]` name and chain of
    /// versions) that the type it was opened with does not match: another
    /// event name, a stored version this type gives another fingerprint (its
    /// fields changed without a new version), or a type without the derive.
    #[error(
        "stream {stream:?} holds event {stored:?} {}; this program's `{requested}` is {}: {advice}",
        show_versions(.stored_versions),
        show_versions(.requested_versions)
    )]
    SchemaMismatch {
        /// The stream name.
        stream: String,
        /// The event name the stream is bound to (a type name for a stream
        /// bound by type).
        stored: String,
        /// `(version, fingerprint)` of every version the stream holds (or
        /// held, before a migration retired it), oldest first.
        stored_versions: Box<[(u32, u64)]>,
        /// The program's event name (or type name, for a type without the derive).
        requested: String,
        /// `(version, fingerprint)` of every version the program's type knows.
        requested_versions: Box<[(u32, u64)]>,
        /// What to do about it.
        advice: &'static str,
    },

    /// An event was written with a version of its event that the program's
    /// type does not know: a newer build wrote it. The program reads the
    /// versions it knows; upgrade it to read this one.
    #[error(
        "{location}: event {event:?}{} (fingerprint {fingerprint:#018x}) is unknown \
         to this program, which knows {}; a newer build wrote it",
        .version.map(|v| format!(" version {v}")).unwrap_or_default(),
        show_versions(.known)
    )]
    UnknownEventVersion {
        /// Where the event is.
        location: Location,
        /// The event name.
        event: String,
        /// The version the stream records for the fingerprint, when known.
        version: Option<u32>,
        /// The fingerprint the event's block carries.
        fingerprint: u64,
        /// `(version, fingerprint)` of every version the program knows.
        known: Box<[(u32, u64)]>,
    },

    /// An append of an event version older than the newest one its stream
    /// holds: only the newest version can be appended, so an older build can
    /// read the stream but not write to it.
    #[error(
        "stream {stream:?} holds event {event:?} version {newest}, newer than this program's \
         version {program}: an older build cannot append; upgrade it"
    )]
    OutdatedEventVersion {
        /// The stream name.
        stream: String,
        /// The event name.
        event: String,
        /// The newest version the stream holds.
        newest: u32,
        /// The version the program appends.
        program: u32,
    },

    /// An older version's event could not be upcast into the current one: its
    /// bytes failed validation as that version, or re-archiving failed.
    #[error("{location}: cannot upcast event {event:?}: {detail}")]
    UpcastFailed {
        /// Where the event is.
        location: Location,
        /// The event name.
        event: String,
        /// What went wrong, with the version being read.
        detail: String,
    },

    /// The store was opened read-only (`Varve::open_read_only`), and this
    /// operation would write.
    #[error("the store at {path} is open read-only: {operation} is refused")]
    ReadOnly {
        /// The store directory.
        path: PathBuf,
        /// What was refused (appending, writing state, ...).
        operation: &'static str,
    },

    /// A backup, segment or restore would be written where something already
    /// is; nothing is ever overwritten.
    #[error("{path} already exists (or is not empty); choose a new destination")]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },

    /// A backup or segment file fails its own checks: a bad manifest,
    /// header or checksum, or content whose digest differs from the one
    /// recorded.
    #[error("the backup at {path} is damaged: {detail}")]
    BackupDamaged {
        /// The backup directory or segment file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },

    /// A segment (or backup) belongs to another store.
    #[error("{path} belongs to store {found}, not to store {expected}")]
    ForeignBackup {
        /// The segment file or backup directory.
        path: PathBuf,
        /// The store being restored.
        expected: crate::StoreId,
        /// The store the file names.
        found: crate::StoreId,
    },

    /// A chain of segments has a hole: the segment starts after where the
    /// chain so far ends, so a segment between them is missing.
    #[error(
        "a segment is missing before {path}: the chain ends at global sequence {}, \
         this segment starts at {}",
        expected_from.0, found_from.0
    )]
    SegmentMissing {
        /// The segment after the hole.
        path: PathBuf,
        /// Where the chain so far ends.
        expected_from: GlobalSequence,
        /// Where the segment starts.
        found_from: GlobalSequence,
    },

    /// A segment does not continue the chain: it starts before where the
    /// chain so far ends, or at the same place but after other content
    /// (its recorded starting digest differs).
    #[error(
        "the segment {path} is out of order: the chain ends at global sequence {}, \
         this segment starts at {} (or continues other content)",
        expected_from.0, found_from.0
    )]
    SegmentOutOfOrder {
        /// The segment.
        path: PathBuf,
        /// Where the chain so far ends.
        expected_from: GlobalSequence,
        /// Where the segment starts.
        found_from: GlobalSequence,
    },

    /// A varvedb 0.4 store being imported cannot be read as 0.4 wrote it:
    /// a record that does not decode, an index that disagrees with the
    /// log, or a payload that is not a valid archived value of the type
    /// its stream was bound to. Nothing is written to the destination.
    #[error("the varvedb 0.4 store at {path} is damaged: {detail}")]
    LegacyDamaged {
        /// The 0.4 store directory.
        path: PathBuf,
        /// What failed, and where.
        detail: String,
    },

    /// A varvedb 0.4 store being imported has positions this format cannot
    /// keep: a hole in the global log (a failed 0.4 commit leaves one) or
    /// a stream id whose sequences are not dense from 0. Import with
    /// renumbering (`ImportOptions::renumber`, `varvedb import --renumber`)
    /// to number them densely, keeping their order.
    #[error(
        "the varvedb 0.4 store at {path} cannot be imported with its positions kept: {detail}; \
         import with renumbering to number events densely in the same order"
    )]
    LegacyGap {
        /// The 0.4 store directory.
        path: PathBuf,
        /// The hole or duplicate, with its stream, id and sequences.
        detail: String,
    },

    /// A varvedb 0.4 store being imported holds streams whose event type
    /// was not given: 0.4 recorded no types, and VarveDB binds every stream
    /// to one.
    #[error(
        "the varvedb 0.4 store at {path} holds streams with no event type given: {}; \
         bind each to the Rust type that wrote it (ImportOptions::stream, or \
         Cli::stream in a tool built with your types)",
        streams.join(", ")
    )]
    ImportUnbound {
        /// The 0.4 store directory.
        path: PathBuf,
        /// The streams without a type, with their event counts.
        streams: Vec<String>,
    },

    /// The tamper-evident chain asked for (in [`VarveConfig::tamper_evident`](
    /// crate::VarveConfig::tamper_evident) or [`Varve::enable_chain`](
    /// crate::Varve::enable_chain)) is not the store's: a keyed chain for a
    /// plain one or the other way round, or a chain for a store that has none
    /// (enable it with `Varve::enable_chain`).
    #[error(
        "the store at {path} has {found}, not the {requested} asked for{}",
        if found.starts_with("no ") { " (enable it with Varve::enable_chain)" } else { "" }
    )]
    ChainModeMismatch {
        /// The store directory.
        path: PathBuf,
        /// What the store has (`no tamper-evident chain`, `a plain chain`, `a keyed chain`).
        found: &'static str,
        /// What was asked for (`plain chain`, `keyed chain`).
        requested: &'static str,
    },

    /// The key given for a keyed chain is not the store's: its check value
    /// differs from the one recorded when the chain was enabled.
    #[error(
        "the chain key given for the store at {path} is not its key (the key check value differs)"
    )]
    ChainKeyMismatch {
        /// The store directory.
        path: PathBuf,
    },

    /// The store's chain is keyed and this handle was opened without the
    /// key: appending, re-sealing and checking the chain need it.
    #[error(
        "the store at {path} has a keyed tamper-evident chain: {operation} needs its key          (VarveConfig::tamper_evident(Chain::Keyed(key)))"
    )]
    ChainKeyRequired {
        /// The store directory.
        path: PathBuf,
        /// What was refused.
        operation: &'static str,
    },

    /// The store has no tamper-evident chain (or its chain is still being
    /// enabled), so there is nothing to check a held head against.
    #[error("the store at {path} has no complete tamper-evident chain: {detail}")]
    ChainNotEnabled {
        /// The store directory.
        path: PathBuf,
        /// Off, or enabled up to which sequence.
        detail: String,
    },

    /// Text that is not a [`HeadDigest`](crate::HeadDigest) (`SEQUENCE:RESEALS:64 hex digits`).
    #[error("{text:?} is not a head digest (expected SEQUENCE:RESEALS:64 hex digits)")]
    MalformedHeadDigest {
        /// The text given.
        text: String,
    },

    /// No projection of this name is recorded in the store: no checkpoint,
    /// kind or generation under `proj/<name>/` (see `docs/design.md`).
    #[error(
        "no projection named {name:?} is recorded in the store at {path} \
         (`varvedb projections` lists those that are)"
    )]
    UnknownProjection {
        /// The store directory.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },

    /// LMDB's reader table (in `lock.mdb`) could not be listed: its layout
    /// is not one this build reads, or this process has the store open
    /// (reading the lock file through a second descriptor would drop the
    /// process's LMDB locks when closed).
    #[error("cannot list the reader slots of the store at {path}: {detail}")]
    ReaderTable {
        /// The store directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// The operation has no meaning on this store's backend: a file backup,
    /// the memory map or the reader table of a store on a database server
    /// (feature `postgres`; see `docs/design.md`, "Layers and the backend seam").
    #[error("{operation} is not supported by a store on {backend}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The store's backend (`"PostgreSQL"`).
        backend: &'static str,
    },

    /// The store is encrypted and was opened without its key
    /// ([`VarveConfig::encryption`](crate::VarveConfig::encryption)).
    #[error(
        "the store at {path} is encrypted: open it with its key \
         (VarveConfig::encryption)"
    )]
    EncryptionKeyRequired {
        /// The store directory.
        path: PathBuf,
    },

    /// The key given does not open the store's data keys: it is not the key
    /// the store was created (or last re-keyed) with. From a handle already
    /// open: another handle changed the master key since (a rotation, or a
    /// data key another handle added, needs the new one: reopen with it).
    #[error(
        "the encryption key given is not the key of the store at {path} (if another handle \
         changed it since this one opened the store, reopen with the new key)"
    )]
    EncryptionKeyMismatch {
        /// The store directory.
        path: PathBuf,
    },

    /// An encryption key was given for a store that is not encrypted
    /// (encryption is chosen when a store is created).
    #[error(
        "the store at {path} is not encrypted, but an encryption key was given \
         (encryption is chosen when a store is created)"
    )]
    NotEncrypted {
        /// The store directory.
        path: PathBuf,
    },

    /// Sealed bytes of an encrypted store failed authentication: they were
    /// altered, moved to another key, swapped, or copied from another store.
    /// Distinct from [`Error::Corruption`]: an accident is as likely to cause
    /// it as an adversary, but it is the cipher, not a checksum, that refused.
    #[error("authentication failed at {location}: {detail}")]
    Unauthentic {
        /// Where the sealed bytes were found.
        location: Location,
        /// What did not authenticate.
        detail: String,
    },

    /// The event belongs to an entity (a stream id of a stream) that was
    /// erased: its key was deleted from the key vault
    /// ([`Stream::erase`](crate::Stream::erase)), so its events are
    /// unreadable everywhere, backups included. Not damage: scans go on past
    /// it, and `verify` counts it apart from problems. Appending to an erased
    /// entity is refused with it too.
    #[error(
        "the event at global sequence {} belongs to an erased entity (stream {}, id {})",
        at.0,
        stream.as_deref().map_or_else(|| "unknown".to_string(), |s| format!("{s:?}")),
        id.0
    )]
    Erased {
        /// The stream's name, where the reader knows it.
        stream: Option<String>,
        /// The erased stream id.
        id: StreamId,
        /// The event's global sequence (for a whole block, its first).
        at: GlobalSequence,
    },

    /// The key vault of entity keys ([`VarveConfig::key_vault`](crate::VarveConfig::key_vault))
    /// cannot serve this store: the store uses one and none was given, the
    /// vault given holds none of the store's keys, the store is not
    /// encrypted, or the vault could not be read or written.
    #[error("key vault at {path}: {detail}")]
    KeyVault {
        /// The vault's directory (or the store's, when no vault was given).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// A subscription found that the log was rewound under it: the event it
    /// delivered at `delivered` is gone or another one. The PostgreSQL server
    /// lost commits it had acknowledged (a crash with a relaxed
    /// [`Durability`](crate::Durability), a failover to an asynchronous
    /// standby, a restore), and later events may reuse the lost sequences:
    /// rather than skip them, the subscription stops. Resubscribe from
    /// `resume` at the latest (from the last checkpoint you kept at or
    /// before it: the events delivered from the first lost commit on are
    /// not in the log).
    #[error(
        "the server lost commits it had acknowledged: the event this subscription delivered at global sequence {} is no longer in the log (the log's end is now {}); resubscribe from global sequence {} or earlier (from your last checkpoint at or before it)",
        delivered.0,
        end.0,
        resume.0
    )]
    CommitsLost {
        /// The last event the subscription delivered, now gone or replaced.
        delivered: GlobalSequence,
        /// The log's end the subscription found.
        end: GlobalSequence,
        /// The latest position to resubscribe from.
        resume: GlobalSequence,
    },
}

/// `v1 0x…, v2 0x…` for messages (`none` for an empty list).
fn show_versions(versions: &[(u32, u64)]) -> String {
    if versions.is_empty() {
        return "without versions (not a #[derive(Event)] type)".into();
    }
    let shown: Vec<String> = versions
        .iter()
        .map(|(v, fp)| format!("v{v} {fp:#018x}"))
        .collect();
    format!("[{}]", shown.join(", "))
}

/// Where a stored event is, for [`Error::EventIdConflict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    /// The stream's name.
    pub stream: String,
    /// The stream id.
    pub id: StreamId,
    /// The event's stream sequence.
    pub sequence: StreamSequence,
    /// The event's global sequence.
    pub global: GlobalSequence,
}

impl std::fmt::Display for StoredAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream {:?} id {} sequence {} (global {})",
            self.stream, self.id.0, self.sequence.0, self.global.0
        )
    }
}

/// Where corrupted bytes were found, for [`Error::Corruption`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// The event at this global sequence (or the block that holds it).
    Global(GlobalSequence),
    /// The event at this position of a stream.
    Stream {
        /// The stream name.
        stream: String,
        /// The stream id.
        id: StreamId,
        /// The stream sequence.
        sequence: StreamSequence,
    },
    /// A store-level record (catalog, index or metadata), described in words.
    Record(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Global(g) => write!(f, "global sequence {}", g.0),
            Location::Stream {
                stream,
                id,
                sequence,
            } => {
                write!(f, "stream {stream:?} id {} sequence {}", id.0, sequence.0)
            }
            Location::Record(what) => f.write_str(what),
        }
    }
}

/// `Result` with VarveDB's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of an error that could not be copied as it was (a boxed source
/// error): keeps what it said.
#[derive(Debug)]
struct Copied(String);

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Copied {}

fn copy_io(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// A failure reported by the storage engine under a store: VarveDB's own
/// type, so no engine type is part of the public API. The engine's error is
/// kept inside it: this error displays the engine's message, and its
/// [`source`](std::error::Error::source) is that error's own cause, if any
/// (so an error chain does not print the message twice). The OS error of an
/// I/O failure is [`io_error`](Self::io_error).
///
/// ```
/// use varvedb::{Error, StorageErrorKind};
///
/// fn is_disk_full(err: &Error) -> bool {
///     match err {
///         Error::Storage { source, .. } => {
///             source.kind() == StorageErrorKind::Io
///                 && source.io_error().and_then(|e| e.raw_os_error()) == Some(28) // ENOSPC
///         }
///         _ => false,
///     }
/// }
/// # let _ = is_disk_full;
/// ```
pub struct StorageError {
    kind: StorageErrorKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

/// What kind of failure a [`StorageError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// An operating-system I/O error; [`StorageError::io_error`] returns it.
    Io,
    /// The memory map is full (VarveDB grows it itself; this reaches a caller
    /// only where growing was not possible).
    MapFull,
    /// Another process grew the map beyond this one's.
    MapResized,
    /// Any other refusal of the engine, with its (LMDB) error code.
    Engine {
        /// The engine's error code.
        code: i32,
    },
    /// The engine layer could not encode or decode a value.
    Encoding,
    /// The environment was already open in this process with other options.
    AlreadyOpen,
    /// The database server (PostgreSQL, feature `postgres`) could not be
    /// reached, lost the connection, or refused a statement; the server's
    /// error is the source.
    Server,
}

impl StorageError {
    /// A storage error of `kind` whose cause is `source`.
    pub(crate) fn new(
        kind: StorageErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        StorageError {
            kind,
            source: source.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// The operating-system error, for [`StorageErrorKind::Io`].
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.source.downcast_ref::<std::io::Error>()
    }

    /// A copy for another caller that met the same failure: same kind; an I/O
    /// error rebuilt with its code or kind, anything else with its message.
    fn duplicate(&self) -> StorageError {
        let source: Box<dyn std::error::Error + Send + Sync> = match self.io_error() {
            Some(io) => Box::new(copy_io(io)),
            None => Box::new(Copied(self.source.to_string())),
        };
        StorageError {
            kind: self.kind,
            source,
        }
    }
}

impl std::fmt::Debug for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageError")
            .field("kind", &self.kind)
            .field("message", &self.source.to_string())
            .finish()
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The engine's error is what this one displays; its own cause (if
        // any) is the next link.
        self.source.source()
    }
}

impl Error {
    /// A copy of this error for another caller that met the same failure (the
    /// appends of one group commit): the same variant and fields; a source
    /// error that cannot be cloned is rebuilt with its kind (I/O), code (OS,
    /// LMDB) or message.
    pub(crate) fn duplicate(&self) -> Error {
        use rkyv::rancor::Source;
        match self {
            Error::NotADirectory { path } => Error::NotADirectory { path: path.clone() },
            Error::Open { path, source } => Error::Open {
                path: path.clone(),
                source: copy_io(source),
            },
            Error::UnsupportedFormat {
                path,
                found,
                supported,
            } => Error::UnsupportedFormat {
                path: path.clone(),
                found: *found,
                supported: *supported,
            },
            Error::IncompatibleEncoding { path } => {
                Error::IncompatibleEncoding { path: path.clone() }
            }
            Error::InvalidStreamName { name, reason } => Error::InvalidStreamName {
                name: name.clone(),
                reason,
            },
            Error::TypeMismatch {
                stream,
                stored,
                stored_fingerprint,
                requested,
                requested_fingerprint,
            } => Error::TypeMismatch {
                stream: stream.clone(),
                stored: stored.clone(),
                stored_fingerprint: *stored_fingerprint,
                requested: requested.clone(),
                requested_fingerprint: *requested_fingerprint,
            },
            Error::Serialize { stream, source } => Error::Serialize {
                stream: stream.clone(),
                source: rkyv::rancor::Error::new(Copied(source.to_string())),
            },
            Error::EventTooLarge { stream, size, max } => Error::EventTooLarge {
                stream: stream.clone(),
                size: *size,
                max: *max,
            },
            Error::VersionConflict {
                stream,
                id,
                expected,
                actual,
            } => Error::VersionConflict {
                stream: stream.clone(),
                id: *id,
                expected: *expected,
                actual: *actual,
            },
            Error::Corruption { location, detail } => Error::Corruption {
                location: location.clone(),
                detail: detail.clone(),
            },
            Error::ReadersFull { max } => Error::ReadersFull { max: *max },
            Error::MapResizeBlocked {
                wanted,
                held,
                waited_ms,
            } => Error::MapResizeBlocked {
                wanted: *wanted,
                held: *held,
                waited_ms: *waited_ms,
            },
            Error::Projection {
                projection,
                at,
                source,
            } => Error::Projection {
                projection: projection.clone(),
                at: *at,
                source: Box::new(Copied(source.to_string())),
            },
            Error::InvalidProjectionName { name, reason } => Error::InvalidProjectionName {
                name: name.clone(),
                reason,
            },
            Error::Storage { operation, source } => Error::Storage {
                operation,
                source: source.duplicate(),
            },
            Error::CommitAbandoned => Error::CommitAbandoned,
            Error::MetadataTooLarge { stream, size, max } => Error::MetadataTooLarge {
                stream: stream.clone(),
                size: *size,
                max: *max,
            },
            Error::EventIdCount {
                stream,
                events,
                ids,
            } => Error::EventIdCount {
                stream: stream.clone(),
                events: *events,
                ids: *ids,
            },
            Error::DuplicateEventId {
                stream,
                event_id,
                first,
                second,
            } => Error::DuplicateEventId {
                stream: stream.clone(),
                event_id: *event_id,
                first: *first,
                second: *second,
            },
            Error::EventIdConflict {
                stream,
                id,
                event_id,
                index,
                stored,
                reason,
            } => Error::EventIdConflict {
                stream: stream.clone(),
                id: *id,
                event_id: *event_id,
                index: *index,
                stored: stored.clone(),
                reason,
            },
            Error::InvalidEntityKey { stream, len, max } => Error::InvalidEntityKey {
                stream: stream.clone(),
                len: *len,
                max: *max,
            },
            Error::SchemaMismatch {
                stream,
                stored,
                stored_versions,
                requested,
                requested_versions,
                advice,
            } => Error::SchemaMismatch {
                stream: stream.clone(),
                stored: stored.clone(),
                stored_versions: stored_versions.clone(),
                requested: requested.clone(),
                requested_versions: requested_versions.clone(),
                advice,
            },
            Error::UnknownEventVersion {
                location,
                event,
                version,
                fingerprint,
                known,
            } => Error::UnknownEventVersion {
                location: location.clone(),
                event: event.clone(),
                version: *version,
                fingerprint: *fingerprint,
                known: known.clone(),
            },
            Error::OutdatedEventVersion {
                stream,
                event,
                newest,
                program,
            } => Error::OutdatedEventVersion {
                stream: stream.clone(),
                event: event.clone(),
                newest: *newest,
                program: *program,
            },
            Error::UpcastFailed {
                location,
                event,
                detail,
            } => Error::UpcastFailed {
                location: location.clone(),
                event: event.clone(),
                detail: detail.clone(),
            },
            Error::ReadOnly { path, operation } => Error::ReadOnly {
                path: path.clone(),
                operation,
            },
            Error::DestinationExists { path } => Error::DestinationExists { path: path.clone() },
            Error::BackupDamaged { path, detail } => Error::BackupDamaged {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::ForeignBackup {
                path,
                expected,
                found,
            } => Error::ForeignBackup {
                path: path.clone(),
                expected: *expected,
                found: *found,
            },
            Error::SegmentMissing {
                path,
                expected_from,
                found_from,
            } => Error::SegmentMissing {
                path: path.clone(),
                expected_from: *expected_from,
                found_from: *found_from,
            },
            Error::SegmentOutOfOrder {
                path,
                expected_from,
                found_from,
            } => Error::SegmentOutOfOrder {
                path: path.clone(),
                expected_from: *expected_from,
                found_from: *found_from,
            },
            Error::Truncated {
                path,
                expected,
                actual,
            } => Error::Truncated {
                path: path.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::DataFileMissing { path, store_id } => Error::DataFileMissing {
                path: path.clone(),
                store_id: *store_id,
            },
            Error::StoreMismatch {
                path,
                expected,
                found,
            } => Error::StoreMismatch {
                path: path.clone(),
                expected: *expected,
                found: *found,
            },
            Error::StoreReplaced { path } => Error::StoreReplaced { path: path.clone() },
            Error::StoreDeleted { path } => Error::StoreDeleted { path: path.clone() },
            Error::LegacyStore { path } => Error::LegacyStore { path: path.clone() },
            Error::ConfigConflict {
                path,
                field,
                open,
                requested,
            } => Error::ConfigConflict {
                path: path.clone(),
                field,
                open: open.clone(),
                requested: requested.clone(),
            },
            Error::CheckpointMoved {
                projection,
                expected,
                found,
            } => Error::CheckpointMoved {
                projection: projection.clone(),
                expected: *expected,
                found: *found,
            },
            Error::ProjectionKindMismatch {
                projection,
                stored,
                requested,
            } => Error::ProjectionKindMismatch {
                projection: projection.clone(),
                stored,
                requested,
            },
            Error::LegacyDamaged { path, detail } => Error::LegacyDamaged {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::LegacyGap { path, detail } => Error::LegacyGap {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::ImportUnbound { path, streams } => Error::ImportUnbound {
                path: path.clone(),
                streams: streams.clone(),
            },
            Error::ChainModeMismatch {
                path,
                found,
                requested,
            } => Error::ChainModeMismatch {
                path: path.clone(),
                found,
                requested,
            },
            Error::ChainKeyMismatch { path } => Error::ChainKeyMismatch { path: path.clone() },
            Error::ChainKeyRequired { path, operation } => Error::ChainKeyRequired {
                path: path.clone(),
                operation,
            },
            Error::EncryptionKeyRequired { path } => {
                Error::EncryptionKeyRequired { path: path.clone() }
            }
            Error::EncryptionKeyMismatch { path } => {
                Error::EncryptionKeyMismatch { path: path.clone() }
            }
            Error::NotEncrypted { path } => Error::NotEncrypted { path: path.clone() },
            Error::Unauthentic { location, detail } => Error::Unauthentic {
                location: location.clone(),
                detail: detail.clone(),
            },
            Error::ChainNotEnabled { path, detail } => Error::ChainNotEnabled {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::MalformedHeadDigest { text } => {
                Error::MalformedHeadDigest { text: text.clone() }
            }
            Error::UnknownProjection { path, name } => Error::UnknownProjection {
                path: path.clone(),
                name: name.clone(),
            },
            Error::ReaderTable { path, detail } => Error::ReaderTable {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::Unsupported { operation, backend } => Error::Unsupported { operation, backend },
            Error::Erased { stream, id, at } => Error::Erased {
                stream: stream.clone(),
                id: *id,
                at: *at,
            },
            Error::KeyVault { path, detail } => Error::KeyVault {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::CommitsLost {
                delivered,
                end,
                resume,
            } => Error::CommitsLost {
                delivered: *delivered,
                end: *end,
                resume: *resume,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_type_is_send_sync_and_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn a_storage_error_says_its_kind_and_keeps_the_os_error_through_a_duplicate() {
        let err = Error::Storage {
            operation: "committing",
            source: StorageError::new(StorageErrorKind::Io, std::io::Error::from_raw_os_error(28)),
        };
        let Error::Storage { source, .. } = err.duplicate() else {
            panic!("not a storage error: {err:?}");
        };
        assert_eq!(source.kind(), StorageErrorKind::Io);
        assert_eq!(source.io_error().and_then(|e| e.raw_os_error()), Some(28));
        let engine = StorageError::new(StorageErrorKind::Engine { code: -30796 }, "MDB_CORRUPTED");
        assert!(engine.io_error().is_none());
        assert_eq!(
            engine.duplicate().kind(),
            StorageErrorKind::Engine { code: -30796 }
        );
        assert_eq!(engine.to_string(), "MDB_CORRUPTED");
    }

    #[test]
    fn a_duplicated_error_keeps_its_variant_fields_and_message() {
        let errors = [
            Error::MapResizeBlocked {
                wanted: 1 << 20,
                held: 1,
                waited_ms: 250,
            },
            Error::ReadersFull { max: 126 },
            Error::Storage {
                operation: "committing",
                source: StorageError::new(
                    StorageErrorKind::MapFull,
                    "MDB_MAP_FULL: Environment mapsize limit reached",
                ),
            },
            Error::Storage {
                operation: "committing",
                source: StorageError::new(
                    StorageErrorKind::Io,
                    std::io::Error::from_raw_os_error(28),
                ),
            },
            Error::Open {
                path: "/x".into(),
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no"),
            },
            Error::CommitAbandoned,
            Error::EventIdConflict {
                stream: "orders".into(),
                id: StreamId(2),
                event_id: EventId::from_u128(9),
                index: 1,
                stored: Box::new(StoredAt {
                    stream: "orders".into(),
                    id: StreamId(1),
                    sequence: StreamSequence(3),
                    global: GlobalSequence(40),
                }),
                reason: "it is stored in another stream or stream id",
            },
            Error::DuplicateEventId {
                stream: "orders".into(),
                event_id: EventId::from_u128(9),
                first: 0,
                second: 2,
            },
            Error::MetadataTooLarge {
                stream: "orders".into(),
                size: 70_000,
                max: 65_536,
            },
            Error::EventIdCount {
                stream: "orders".into(),
                events: 3,
                ids: 2,
            },
            Error::InvalidEntityKey {
                stream: "orders".into(),
                len: 0,
                max: 255,
            },
            Error::ReadOnly {
                path: "/x".into(),
                operation: "appending",
            },
            Error::DestinationExists { path: "/b".into() },
            Error::LegacyDamaged {
                path: "/old".into(),
                detail: "bad".into(),
            },
            Error::LegacyGap {
                path: "/old".into(),
                detail: "hole".into(),
            },
            Error::ImportUnbound {
                path: "/old".into(),
                streams: vec!["orders (3 events)".into()],
            },
            Error::UnknownProjection {
                path: "/s".into(),
                name: "totals".into(),
            },
            Error::ReaderTable {
                path: "/s".into(),
                detail: "layout".into(),
            },
            Error::BackupDamaged {
                path: "/b".into(),
                detail: "bad".into(),
            },
            Error::ForeignBackup {
                path: "/s".into(),
                expected: crate::StoreId::from_bytes([1; 16]),
                found: crate::StoreId::from_bytes([2; 16]),
            },
            Error::SegmentMissing {
                path: "/s".into(),
                expected_from: GlobalSequence(1),
                found_from: GlobalSequence(5),
            },
            Error::SegmentOutOfOrder {
                path: "/s".into(),
                expected_from: GlobalSequence(5),
                found_from: GlobalSequence(1),
            },
            Error::ChainModeMismatch {
                path: "/x".into(),
                found: "no tamper-evident chain",
                requested: "plain chain",
            },
            Error::ChainKeyMismatch { path: "/x".into() },
            Error::ChainKeyRequired {
                path: "/x".into(),
                operation: "appending",
            },
            Error::ChainNotEnabled {
                path: "/x".into(),
                detail: "off".into(),
            },
            Error::MalformedHeadDigest {
                text: "7:0:zz".into(),
            },
            Error::Unsupported {
                operation: "a file backup",
                backend: "PostgreSQL",
            },
        ];
        for e in &errors {
            let copy = e.duplicate();
            assert_eq!(copy.to_string(), e.to_string());
            assert_eq!(format!("{copy:?}"), format!("{e:?}"));
        }
    }

    #[test]
    fn an_event_id_conflict_names_the_id_and_where_it_is_stored() {
        let e = Error::EventIdConflict {
            stream: "orders".into(),
            id: StreamId(2),
            event_id: EventId::from_u128(9),
            index: 1,
            stored: Box::new(StoredAt {
                stream: "orders".into(),
                id: StreamId(1),
                sequence: StreamSequence(3),
                global: GlobalSequence(40),
            }),
            reason: "it is stored in another stream or stream id",
        };
        let msg = e.to_string();
        assert!(
            msg.contains("00000000-0000-0000-0000-000000000009"),
            "{msg}"
        );
        assert!(msg.contains("id 1 sequence 3 (global 40)"), "{msg}");
    }

    #[test]
    fn a_version_conflict_names_stream_id_and_both_versions() {
        let e = Error::VersionConflict {
            stream: "orders".into(),
            id: StreamId(7),
            expected: ExpectedVersion::Exact(StreamSequence(2)),
            actual: Some(StreamSequence(4)),
        };
        let msg = e.to_string();
        assert!(msg.contains("orders") && msg.contains("id 7"), "{msg}");
        assert!(
            msg.contains("version 2") && msg.contains("version 4"),
            "{msg}"
        );
    }
}
