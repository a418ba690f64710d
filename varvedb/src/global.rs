//! Reading the whole log in global order: [`GlobalReader`], [`GlobalEvent`], [`GlobalIter`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use rkyv::util::AlignedVec;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Location, Result};
use crate::event::{layout_fingerprint, Archivable, Event, Schema};
use crate::id::EventId;
use crate::metadata::Metadata;
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::{current_view, owned_view, EventBytes, EventRef};
use crate::storage::{
    block_end, block_position, block_tag, may_need_alignment, ArchivedRef, BlockRef, EventPosition,
    GlobalCursor, Legacy, MappedEvent, MetaPrefix, Store, StreamInfo, View, ViewSlot,
};

/// Reads events of every stream by [`GlobalSequence`], the store-wide commit order.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Placed { n: u32 }
/// # #[derive(Archive, Serialize)] struct Joined { n: u32 }
/// use varvedb::{GlobalSequence, StreamId};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// varve.stream::<Placed, 16>("orders")?.append(StreamId(1), &Placed { n: 1 })?;
/// varve.stream::<Joined, 16>("users")?.append(StreamId(9), &Joined { n: 2 })?;
///
/// let mut log = varve.global_reader();
/// let second = log.get(GlobalSequence(1))?.expect("two events were written");
/// assert_eq!(second.stream_name(), "users");
/// assert_eq!(second.stream_id(), StreamId(9));
/// let names: Vec<String> = log
///     .iter_from(GlobalSequence(0))?
///     .map(|e| e.map(|e| e.stream_name().to_owned()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(names, ["orders", "users"]);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct GlobalReader {
    store: Arc<Store>,
    view: ViewSlot,
}

impl Clone for GlobalReader {
    fn clone(&self) -> Self {
        GlobalReader {
            store: Arc::clone(&self.store),
            view: self.store.view_slot(),
        }
    }
}

impl fmt::Debug for GlobalReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalReader").finish_non_exhaustive()
    }
}

impl GlobalReader {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        GlobalReader {
            view: store.view_slot(),
            store,
        }
    }

    /// The store this reader reads (for other modules).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The reader's cached snapshot if it is current, else a new one (for an
    /// iterator or a borrowed snapshot to own).
    pub(crate) fn owned_view(&self) -> Result<View> {
        owned_view(&self.store, &mut self.view.lock())
    }

    /// The event at `global`, or `Ok(None)` past the end of the log.
    pub fn get(&mut self, global: GlobalSequence) -> Result<Option<GlobalEvent>> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        match view.event_at_global(global.0)? {
            Some(event) => {
                let stream = view.stream_by_tag(event.position.stream_tag)?;
                Ok(Some(GlobalEvent {
                    event,
                    stream,
                    aligned: OnceLock::new(),
                }))
            }
            None => Ok(None),
        }
    }

    /// The event stored with `event_id` (see
    /// [`Stream::append_with`](crate::Stream::append_with)), or `Ok(None)` if
    /// no event has that id: one lookup in the idempotency index, one in the
    /// log.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// use varvedb::{Append, EventId, StreamId};
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let id = EventId::from_u128(77);
    /// varve.stream::<Paid, 16>("payments")?
    ///     .append_with(StreamId(3), &Paid { cents: 12 }, Append::new().event_id(id))?;
    /// let mut log = varve.global_reader();
    /// let paid = log.get_by_id(id)?.expect("stored");
    /// assert_eq!((paid.stream_id(), paid.archived_plain::<Paid>()?.cents.to_native()), (StreamId(3), 12));
    /// assert!(log.get_by_id(EventId::from_u128(78))?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_by_id(&mut self, event_id: EventId) -> Result<Option<GlobalEvent>> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        match view.event_by_id(&event_id.0)? {
            Some(event) => {
                let stream = view.stream_by_tag(event.position.stream_tag)?;
                Ok(Some(GlobalEvent {
                    event,
                    stream,
                    aligned: OnceLock::new(),
                }))
            }
            None => Ok(None),
        }
    }

    /// A lazy iterator over every event from `from` to the end of the log as
    /// of now, in one consistent snapshot.
    pub fn iter_from(&self, from: GlobalSequence) -> Result<GlobalIter> {
        let view = owned_view(&self.store, &mut self.view.lock())?;
        Ok(GlobalIter {
            cursor: GlobalCursor::new(view, from.0),
            last: None,
            failed: false,
        })
    }

    /// The archived bytes of the event at `global` (checksummed, not
    /// rkyv-validated), without copying them, or `Ok(None)` past the end of
    /// the log. varvedb 0.4 returned `&[u8]`; [`EventBytes`] dereferences to
    /// it (write `&bytes` where a `&[u8]` is wanted).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Paid, 16>("payments")?.append(StreamId(1), &Paid { cents: 99 })?;
    /// let mut log = varve.global_reader();
    /// let bytes = log.get_bytes(GlobalSequence(0))?.expect("written");
    /// assert_eq!(rkyv::access::<ArchivedPaid, rkyv::rancor::Error>(&bytes).unwrap().cents, 99);
    /// assert!(log.get_bytes(GlobalSequence(1))?.is_none());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Corruption`] if the stored bytes fail their checksum.
    pub fn get_bytes(&mut self, global: GlobalSequence) -> Result<Option<EventBytes>> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        Ok(view.event_at_global(global.0)?.map(EventBytes::new))
    }

    /// One past the newest global sequence: the number of events in the store.
    pub fn end(&mut self) -> Result<GlobalSequence> {
        current_view(&self.store, &mut self.view.lock())?
            .end_global()
            .map(GlobalSequence)
    }

    /// Releases the snapshot this reader keeps between calls.
    pub fn release(&mut self) {
        *self.view.lock() = None;
    }
}

/// One event read from the global log: where it belongs and its archived payload.
pub struct GlobalEvent {
    event: MappedEvent,
    stream: Arc<StreamInfo>,
    aligned: OnceLock<(u64, AlignedVec<16>)>,
}

impl GlobalEvent {
    /// The catalog entry of the event's stream (for filters).
    pub(crate) fn stream_info(&self) -> &StreamInfo {
        &self.stream
    }

    /// The catalog tag of the event's stream (for filters).
    pub(crate) fn stream_tag(&self) -> u32 {
        self.event.position.stream_tag
    }

    /// Where the event sits, as its block records it: what tells it from
    /// another event at the same global sequence (subscriptions).
    pub(crate) fn position(&self) -> crate::storage::EventPosition {
        self.event.position
    }

    /// The name of the stream the event was appended to.
    pub fn stream_name(&self) -> &str {
        &self.stream.name
    }

    /// The name of the type the event's stream holds.
    pub fn type_name(&self) -> &str {
        &self.stream.type_name
    }

    /// The stream id within its stream.
    pub fn stream_id(&self) -> StreamId {
        self.event.position.stream_id
    }

    /// The event's position in its stream id.
    pub fn stream_sequence(&self) -> StreamSequence {
        self.event.position.stream_sequence
    }

    /// The event's position in the global log.
    pub fn global_sequence(&self) -> GlobalSequence {
        self.event.position.global
    }

    /// When the event was committed (wall clock of the writer).
    pub fn committed_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.event.position.committed_at_micros)
    }

    /// The archived payload bytes (checksummed), zero-copy.
    pub fn payload(&self) -> &[u8] {
        self.event.bytes()
    }

    /// The event's metadata (id, correlation, causation, user bytes), read
    /// in place.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata::from_raw(self.event.meta())
    }

    /// Whether the event is an `E`: its stream holds `E`'s event family and
    /// the event's version is one `E` knows (so [`archived`](Self::archived)
    /// would not fail for its type).
    pub fn is<E: Event>(&self) -> bool {
        is_event::<E>(&self.stream, self.event.position.fingerprint)
    }

    /// Whether the event's stream holds events of the plain rkyv type `T`
    /// (opened with [`Varve::stream`](crate::Varve::stream), no
    /// `#[derive(Event)]`), by its type name and archived size and alignment.
    pub fn is_plain<T: Archivable>(&self) -> bool {
        self.stream
            .holds(std::any::type_name::<T>(), layout_fingerprint::<T>)
    }

    /// The payload as a validated archived `E`, borrowed from the memory map
    /// (no copy, no reference counting). An event written with an older
    /// version of `E` is validated as that version and upcast, once, into a
    /// buffer this `GlobalEvent` owns.
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`] if the event's stream holds another event,
    /// [`Error::UnknownEventVersion`] for a version `E` does not know (a newer
    /// build wrote it), [`Error::Corruption`] if the bytes fail validation.
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use varvedb::{Event, GlobalSequence, StreamId};
    ///
    /// #[derive(Archive, Serialize, Event)]
    /// struct Paid { cents: u64 }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// varve.events::<Paid>()?.append(StreamId(1), &Paid { cents: 7 })?;
    /// let event = varve.global_reader().get(GlobalSequence(0))?.expect("written");
    /// assert!(event.is::<Paid>());
    /// assert_eq!(event.archived::<Paid>()?.cents, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn archived<E: Event>(&self) -> Result<&E::Archived> {
        typed_event::<E>(
            &self.stream,
            self.event.position.global,
            self.event.position.fingerprint,
            self.event.bytes(),
            &self.aligned,
        )
    }

    /// A copy of the event with varvedb 0.4's public fields (see
    /// [`OwnedGlobalEvent`]); it holds no snapshot.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Paid, 16>("payments")?.append(StreamId(4), &Paid { cents: 5 })?;
    /// let event = varve.global_reader().get(GlobalSequence(0))?.expect("written").to_owned_event();
    /// assert_eq!((event.stream_name.as_str(), event.stream_id), ("payments", StreamId(4)));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn to_owned_event(&self) -> OwnedGlobalEvent {
        OwnedGlobalEvent {
            global_seq: self.global_sequence(),
            stream_name: self.stream_name().to_owned(),
            stream_id: self.stream_id(),
            stream_seq: self.stream_sequence(),
            payload: self.payload().to_vec(),
        }
    }

    /// The payload as a validated archived plain rkyv type `T` (a stream
    /// opened with [`Varve::stream`](crate::Varve::stream)), borrowed from the
    /// memory map.
    ///
    /// Only the stream's type name and the archived size and alignment are
    /// checked: a type changed without changing those (two fields of one
    /// type swapped, `u64` retyped as `f64`) is not detected. Streams of
    /// `#[derive(Event)]` types refuse it; read those with
    /// [`archived`](Self::archived).
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if the event's stream holds another type,
    /// [`Error::SchemaMismatch`] if it holds a `#[derive(Event)]` event,
    /// [`Error::Corruption`] if the bytes fail validation.
    pub fn archived_plain<T: Archivable>(&self) -> Result<&T::Archived> {
        typed::<T>(
            &self.stream,
            self.event.position.global,
            self.event.position.fingerprint,
            self.event.bytes(),
            &self.aligned,
        )
    }

    /// The payload as a validated archived `E` that owns its snapshot pin
    /// (or, for an upcast event, its upcast bytes), so it can outlive this
    /// `GlobalEvent`.
    ///
    /// # Errors
    /// As [`archived`](Self::archived).
    pub fn to_event_ref<E: Event>(&self) -> Result<EventRef<E>> {
        let position = self.event.position;
        let meta = (position.meta_flags != 0).then(|| self.event.share());
        let schema = Schema::of::<E>();
        let legacy = self.stream.accepts(&schema)?;
        let fp = resolve(legacy, position.fingerprint);
        let corrupt = |e: rkyv::rancor::Error| Error::Corruption {
            location: Location::Global(position.global),
            detail: format!("invalid archived event: {e}"),
        };
        let archived = if fp == schema.fingerprint {
            ArchivedRef::new(
                self.event.share(),
                rkyv::access::<E::Archived, rkyv::rancor::Error>,
            )
            .map_err(corrupt)?
        } else {
            let mut out = AlignedVec::<16>::new();
            upcast(
                &self.stream,
                &schema,
                position.global,
                fp,
                self.payload(),
                &mut out,
            )?;
            ArchivedRef::owned(out, rkyv::access::<E::Archived, rkyv::rancor::Error>)
                .map_err(corrupt)?
        };
        Ok(EventRef::from_parts(archived, position, meta))
    }

    /// [`to_event_ref`](Self::to_event_ref) for a plain rkyv type, checked
    /// as [`archived_plain`](Self::archived_plain) checks it.
    pub fn to_event_ref_plain<T: Archivable>(&self) -> Result<EventRef<T>> {
        self.archived_plain::<T>()?;
        let position = self.event.position;
        let meta = (position.meta_flags != 0).then(|| self.event.share());
        let archived = ArchivedRef::new(
            self.event.share(),
            rkyv::access::<T::Archived, rkyv::rancor::Error>,
        )
        .map_err(|e| Error::Corruption {
            location: Location::Global(position.global),
            detail: format!("invalid archived event: {e}"),
        })?;
        Ok(EventRef::from_parts(archived, position, meta))
    }
}

/// One event of the global log, copied out of the store: varvedb 0.4's
/// `GlobalEvent`, a struct with public fields. [`GlobalIter::collect_all`] and
/// [`GlobalIter::for_each`] hand these out, so 0.4 code reading
/// `event.global_seq`, `event.stream_name`, `event.payload` compiles
/// unchanged; [`GlobalEvent::to_owned_event`] makes one from a zero-copy
/// [`GlobalEvent`].
///
/// In 0.4 this type was named `GlobalEvent`. This crate's [`GlobalEvent`] is
/// the zero-copy event the log's iterator yields (accessors instead of
/// fields), so 0.4 code that *names* the type (`Vec<GlobalEvent>`) says
/// `OwnedGlobalEvent` instead.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
/// use varvedb::{GlobalSequence, OwnedGlobalEvent, StreamId, StreamSequence};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// varve.stream::<Paid, 16>("payments")?.append(StreamId(4), &Paid { cents: 5 })?;
/// let events: Vec<OwnedGlobalEvent> = varve.global_reader().iter_from(GlobalSequence(0))?.collect_all()?;
/// let OwnedGlobalEvent { global_seq, stream_name, stream_id, stream_seq, payload } = events[0].clone();
/// assert_eq!((global_seq, stream_id, stream_seq), (GlobalSequence(0), StreamId(4), StreamSequence(0)));
/// assert_eq!(stream_name, "payments");
/// assert_eq!(rkyv::access::<ArchivedPaid, rkyv::rancor::Error>(&payload).unwrap().cents, 5);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedGlobalEvent {
    /// The event's position in the global log.
    pub global_seq: GlobalSequence,
    /// The name of the stream the event was appended to.
    pub stream_name: String,
    /// The stream id within its stream.
    pub stream_id: StreamId,
    /// The event's position in its stream id.
    pub stream_seq: StreamSequence,
    /// The archived payload bytes (checksummed when read), copied.
    pub payload: Vec<u8>,
}

impl From<&GlobalEvent> for OwnedGlobalEvent {
    fn from(event: &GlobalEvent) -> Self {
        event.to_owned_event()
    }
}

impl From<GlobalEvent> for OwnedGlobalEvent {
    fn from(event: GlobalEvent) -> Self {
        event.to_owned_event()
    }
}

impl From<&GlobalEntry<'_>> for OwnedGlobalEvent {
    fn from(entry: &GlobalEntry<'_>) -> Self {
        OwnedGlobalEvent {
            global_seq: entry.global_sequence(),
            stream_name: entry.stream_name().to_owned(),
            stream_id: entry.stream_id(),
            stream_seq: entry.stream_sequence(),
            payload: entry.payload().to_vec(),
        }
    }
}

/// The fingerprint of the version an event of block fingerprint `fp` holds.
fn resolve(legacy: Option<Legacy>, fp: u64) -> u64 {
    legacy.filter(|l| l.block == fp).map_or(fp, |l| l.schema)
}

fn is_event<E: Event>(stream: &StreamInfo, fingerprint: u64) -> bool {
    let schema = Schema::of::<E>();
    match stream.accepts(&schema) {
        Ok(legacy) => {
            let fp = resolve(legacy, fingerprint);
            fp == schema.fingerprint || schema.version_of(fp).is_some()
        }
        Err(_) => false,
    }
}

/// Upcasts `bytes` (version `fp` of `schema`'s event) into `out`.
fn upcast(
    stream: &StreamInfo,
    schema: &Schema,
    global: GlobalSequence,
    fp: u64,
    bytes: &[u8],
    out: &mut AlignedVec<16>,
) -> Result<()> {
    match schema.upcast(fp, bytes, out) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::UnknownEventVersion {
            location: Location::Global(global),
            event: schema.name.to_string(),
            version: stream.family.as_ref().and_then(|f| f.version_of(fp)),
            fingerprint: fp,
            known: schema.lineage().into(),
        }),
        Err(e) => Err(Error::UpcastFailed {
            location: Location::Global(global),
            event: schema.name.to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Checks that `stream` holds `E`'s family, then reads `bytes` (written with
/// block fingerprint `fingerprint`) as `E`'s current version: in place, on
/// an aligned copy, or upcast, the copy or upcast kept in `aligned`.
fn typed_event<'a, E: Event>(
    stream: &StreamInfo,
    global: GlobalSequence,
    fingerprint: u64,
    bytes: &'a [u8],
    aligned: &'a OnceLock<(u64, AlignedVec<16>)>,
) -> Result<&'a E::Archived> {
    let schema = Schema::of::<E>();
    let legacy = stream.accepts(&schema)?;
    let fp = resolve(legacy, fingerprint);
    let corrupt = |e: rkyv::rancor::Error| Error::Corruption {
        location: Location::Global(global),
        detail: format!("invalid archived event: {e}"),
    };
    if fp == schema.fingerprint {
        return match rkyv::access::<E::Archived, rkyv::rancor::Error>(bytes) {
            Ok(archived) => Ok(archived),
            Err(e) if !may_need_alignment(bytes) => Err(corrupt(e)),
            Err(_) => {
                let copy = kept(aligned, schema.fingerprint, || {
                    let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
                    copy.extend_from_slice(bytes);
                    Ok(copy)
                })?;
                rkyv::access::<E::Archived, rkyv::rancor::Error>(copy).map_err(corrupt)
            }
        };
    }
    if schema.version_of(fp).is_none() {
        return Err(Error::UnknownEventVersion {
            location: Location::Global(global),
            event: schema.name.to_string(),
            version: stream
                .family
                .as_ref()
                .and_then(|f| f.version_of(fingerprint)),
            fingerprint: fp,
            known: schema.lineage().into(),
        });
    }
    let upcast_bytes = kept(aligned, schema.fingerprint, || {
        let mut out = AlignedVec::<16>::new();
        upcast(stream, &schema, global, fp, bytes, &mut out)?;
        Ok(out)
    })?;
    rkyv::access::<E::Archived, rkyv::rancor::Error>(upcast_bytes).map_err(corrupt)
}

/// The bytes kept in `cell` for the type with fingerprint `key`, made by
/// `make` on first use. A cell already holding another type's bytes (the
/// event read as two versions of one event through one handle) is refused
/// rather than reused.
fn kept(
    cell: &OnceLock<(u64, AlignedVec<16>)>,
    key: u64,
    make: impl FnOnce() -> Result<AlignedVec<16>>,
) -> Result<&AlignedVec<16>> {
    if cell.get().is_none() {
        let made = make()?;
        let _ = cell.set((key, made));
    }
    match cell.get() {
        Some((k, bytes)) if *k == key => Ok(bytes),
        _ => Err(Error::UpcastFailed {
            location: Location::Record("an event read as two types".into()),
            event: String::new(),
            detail:
                "this handle already holds the event as another version: read it again from the log"
                    .into(),
        }),
    }
}

/// Checks that `stream` holds the plain type `T`, then validates `bytes` as
/// an archived `T`, in place, or on an aligned copy kept in `aligned`.
fn typed<'a, T: Archivable>(
    stream: &StreamInfo,
    global: GlobalSequence,
    fingerprint: u64,
    bytes: &'a [u8],
    aligned: &'a OnceLock<(u64, AlignedVec<16>)>,
) -> Result<&'a T::Archived> {
    if let Some(family) = &stream.family {
        return Err(Error::SchemaMismatch {
            stream: stream.name.to_string(),
            stored: family.name.clone(),
            stored_versions: family.live().into(),
            requested: std::any::type_name::<T>().to_string(),
            requested_versions: Box::default(),
            advice: "the stream holds a #[derive(Event)] event: read it with `archived::<E>()`, \
                     which checks its version",
        });
    }
    if !stream.holds(std::any::type_name::<T>(), layout_fingerprint::<T>) {
        return Err(Error::TypeMismatch {
            stream: stream.name.to_string(),
            stored: stream.type_name.to_string(),
            stored_fingerprint: stream.layout_fingerprint,
            requested: std::any::type_name::<T>().to_string(),
            requested_fingerprint: layout_fingerprint::<T>(),
        });
    }
    // Per block too: a catalog entry cached before another process bound
    // the stream to an event family would not show the family's blocks.
    if fingerprint != stream.layout_fingerprint {
        return Err(Error::TypeMismatch {
            stream: stream.name.to_string(),
            stored: format!("events written with fingerprint {fingerprint:#018x}"),
            stored_fingerprint: fingerprint,
            requested: std::any::type_name::<T>().to_string(),
            requested_fingerprint: stream.layout_fingerprint,
        });
    }
    let corrupt = |e: rkyv::rancor::Error| Error::Corruption {
        location: Location::Global(global),
        detail: format!("invalid archived event: {e}"),
    };
    match rkyv::access::<T::Archived, rkyv::rancor::Error>(bytes) {
        Ok(archived) => Ok(archived),
        Err(e) if !may_need_alignment(bytes) => Err(corrupt(e)),
        Err(_) => {
            let copy = kept(aligned, layout_fingerprint::<T>(), || {
                let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
                copy.extend_from_slice(bytes);
                Ok(copy)
            })?;
            rkyv::access::<T::Archived, rkyv::rancor::Error>(copy).map_err(corrupt)
        }
    }
}

/// One event of the global log, borrowed from the snapshot of a
/// [`GlobalIter::try_fold_entries`] or a [`LogSnapshot`](crate::LogSnapshot):
/// the same accessors as [`GlobalEvent`], with no reference counting at all.
pub struct GlobalEntry<'a> {
    block: BlockRef,
    global: u64,
    bytes: &'a [u8],
    meta: MetaPrefix<'a>,
    stream: &'a StreamInfo,
    aligned: OnceLock<(u64, AlignedVec<16>)>,
}

impl<'a> GlobalEntry<'a> {
    /// The entry for the event at `global` of `block`, whose payload is
    /// `bytes` and metadata `meta`, in `stream` (for the borrowed snapshots).
    pub(crate) fn new(
        block: BlockRef,
        global: u64,
        bytes: &'a [u8],
        meta: MetaPrefix<'a>,
        stream: &'a StreamInfo,
    ) -> GlobalEntry<'a> {
        GlobalEntry {
            block,
            global,
            bytes,
            meta,
            stream,
            aligned: OnceLock::new(),
        }
    }
}

impl GlobalEntry<'_> {
    fn position(&self) -> EventPosition {
        block_position(&self.block, self.global)
    }

    /// The name of the stream the event was appended to.
    pub fn stream_name(&self) -> &str {
        &self.stream.name
    }

    /// The stream id within its stream.
    pub fn stream_id(&self) -> StreamId {
        self.position().stream_id
    }

    /// The event's position in its stream id.
    pub fn stream_sequence(&self) -> StreamSequence {
        self.position().stream_sequence
    }

    /// The event's position in the global log.
    pub fn global_sequence(&self) -> GlobalSequence {
        GlobalSequence(self.global)
    }

    /// When the event was committed (wall clock of the writer).
    pub fn committed_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.position().committed_at_micros)
    }

    /// The archived payload bytes (checksummed), zero-copy.
    pub fn payload(&self) -> &[u8] {
        self.bytes
    }

    /// The event's metadata, borrowed from the snapshot.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata::from_raw(self.meta.raw())
    }

    /// Whether the event is an `E` (see [`GlobalEvent::is`]).
    pub fn is<E: Event>(&self) -> bool {
        is_event::<E>(self.stream, self.block_fingerprint())
    }

    /// Whether the event's stream holds the plain rkyv type `T` (see
    /// [`GlobalEvent::is_plain`]).
    pub fn is_plain<T: Archivable>(&self) -> bool {
        self.stream
            .holds(std::any::type_name::<T>(), layout_fingerprint::<T>)
    }

    fn block_fingerprint(&self) -> u64 {
        self.position().fingerprint
    }

    /// The payload as a validated archived `E`, borrowed from the memory map
    /// or upcast from an older version (see [`GlobalEvent::archived`]).
    ///
    /// # Errors
    /// As [`GlobalEvent::archived`].
    pub fn archived<E: Event>(&self) -> Result<&E::Archived> {
        typed_event::<E>(
            self.stream,
            GlobalSequence(self.global),
            self.block_fingerprint(),
            self.bytes,
            &self.aligned,
        )
    }

    /// The payload as a validated archived plain rkyv type `T` (see
    /// [`GlobalEvent::archived_plain`] for what is and is not checked).
    ///
    /// # Errors
    /// As [`GlobalEvent::archived_plain`].
    pub fn archived_plain<T: Archivable>(&self) -> Result<&T::Archived> {
        typed::<T>(
            self.stream,
            GlobalSequence(self.global),
            self.block_fingerprint(),
            self.bytes,
            &self.aligned,
        )
    }
}

impl fmt::Debug for GlobalEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalEntry")
            .field("stream", &&*self.stream.name)
            .field("stream_id", &self.stream_id())
            .field("stream_sequence", &self.stream_sequence())
            .field("global_sequence", &self.global)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl fmt::Debug for GlobalEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalEvent")
            .field("stream", &&*self.stream.name)
            .field("stream_id", &self.stream_id())
            .field("stream_sequence", &self.stream_sequence())
            .field("global_sequence", &self.global_sequence())
            .field("len", &self.payload().len())
            .finish()
    }
}

/// varvedb 0.4's name for [`GlobalIter`], the iterator of
/// [`GlobalReader::iter_from`]. The lifetime is unused: VarveDB's iterator
/// owns its snapshot.
///
/// ```
/// use varvedb::{GlobalIterator, GlobalSequence};
/// fn count(iter: GlobalIterator<'_>) -> varvedb::Result<usize> {
///     Ok(iter.collect_all()?.len())
/// }
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// assert_eq!(count(varve.global_reader().iter_from(GlobalSequence(0))?)?, 0);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub type GlobalIterator<'a> = GlobalIter;

/// A lazy iterator over the global log in one snapshot. After the first error
/// it yields `None`: it never skips past a damaged event. An event of an
/// erased entity ([`Stream::erase`](crate::Stream::erase)) is yielded as
/// [`Error::Erased`] and the iteration goes on: erasure is not damage. The
/// folding methods ([`GlobalIter::try_fold_entries`], `collect_all`,
/// `for_each`) pass over erased events.
pub struct GlobalIter {
    cursor: GlobalCursor,
    last: Option<Arc<StreamInfo>>,
    failed: bool,
}

impl GlobalIter {
    /// An iterator over `view` from `from` (for subscriptions and projections).
    pub(crate) fn from_view(view: View, from: u64) -> GlobalIter {
        GlobalIter {
            cursor: GlobalCursor::new(view, from),
            last: None,
            failed: false,
        }
    }

    /// Folds every remaining event, borrowed straight from the snapshot: no
    /// reference counting, no copy, no allocation per event. The fastest way
    /// to scan the log; stops at the first error, from the store or from `f`.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// # use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut payments = varve.stream::<Paid, 16>("payments")?;
    /// payments.append_batch(StreamId(1), &[Paid { cents: 150 }, Paid { cents: 250 }])?;
    /// let mut log = varve.global_reader();
    /// let total = log.iter_from(GlobalSequence(0))?.try_fold_entries(0u64, |sum, event| {
    ///     Ok(sum + event.archived_plain::<Paid>()?.cents.to_native())
    /// })?;
    /// assert_eq!(total, 400);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn try_fold_entries<B>(
        mut self,
        init: B,
        mut f: impl FnMut(B, &GlobalEntry<'_>) -> Result<B>,
    ) -> Result<B> {
        let mut acc = init;
        if self.failed {
            return Ok(acc);
        }
        while let Some(found) = self.cursor.next_block() {
            let (block, first) = match found {
                Ok(found) => found,
                // Erased events are passed over (the iterator yields them).
                Err(Error::Erased { .. }) => continue,
                Err(e) => return Err(e),
            };
            let tag = block_tag(&block);
            if self
                .last
                .as_ref()
                .is_none_or(|info| info.tag() != Some(tag))
            {
                self.last = Some(self.cursor.view_mut().stream_by_tag(tag)?);
            }
            for global in first..block_end(&block) {
                let (bytes, meta) = self.cursor.payload(&block, global)?;
                let Some(stream) = self.last.as_deref() else {
                    break;
                };
                let entry = GlobalEntry {
                    block,
                    global,
                    bytes,
                    meta,
                    stream,
                    aligned: OnceLock::new(),
                };
                acc = f(acc, &entry)?;
            }
        }
        Ok(acc)
    }

    /// Copies every remaining event's payload into a `Vec`.
    pub fn collect_bytes(self) -> Result<Vec<Vec<u8>>> {
        self.map(|e| e.map(|e| e.payload().to_vec())).collect()
    }

    /// Copies every remaining event, with its position and stream name, into
    /// a `Vec` of [`OwnedGlobalEvent`]s: varvedb 0.4's `collect_all`, whose
    /// events had the public fields `global_seq`, `stream_name`, `stream_id`,
    /// `stream_seq` and `payload`.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Placed { n: u32 }
    /// # #[derive(Archive, Serialize)] struct Joined { n: u32 }
    /// use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Placed, 16>("orders")?.append(StreamId(1), &Placed { n: 1 })?;
    /// varve.stream::<Joined, 16>("users")?.append(StreamId(9), &Joined { n: 2 })?;
    /// let events = varve.global_reader().iter_from(GlobalSequence(0))?.collect_all()?;
    /// assert_eq!(events[1].stream_name, "users");
    /// assert_eq!(events[1].global_seq.0, 1);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first error the scan meets ([`Error::Corruption`]); nothing is
    /// returned then.
    pub fn collect_all(self) -> Result<Vec<OwnedGlobalEvent>> {
        self.try_fold_entries(Vec::new(), |mut all, entry| {
            all.push(OwnedGlobalEvent::from(entry));
            Ok(all)
        })
    }

    /// Calls `f` with a copy of every remaining event ([`OwnedGlobalEvent`]),
    /// in global order: varvedb 0.4's closure shape.
    ///
    /// This inherent method shadows [`Iterator::for_each`] in method-call
    /// syntax (`iter.for_each(..)`), so 0.4 code compiles unchanged. For the
    /// iterator's own, which yields zero-copy `Result<GlobalEvent>`s, write
    /// `for event in iter { .. }` or `Iterator::for_each(iter, ..)`; to scan
    /// without copying, [`GlobalIter::try_fold_entries`].
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Placed { n: u32 }
    /// use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Placed, 16>("orders")?.append_batch(StreamId(1), &[Placed { n: 1 }, Placed { n: 2 }])?;
    /// let mut seqs = Vec::new();
    /// varve.global_reader().iter_from(GlobalSequence(1))?.for_each(|event| seqs.push(event.global_seq.0))?;
    /// assert_eq!(seqs, [1]);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first error the scan meets; `f` has then seen every event before it.
    pub fn for_each(self, mut f: impl FnMut(OwnedGlobalEvent)) -> Result<()> {
        self.try_fold_entries((), |(), entry| {
            f(OwnedGlobalEvent::from(entry));
            Ok(())
        })
    }
}

impl Iterator for GlobalIter {
    type Item = Result<GlobalEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_inner()?;
        // An erased event is reported and passed: the scan goes on.
        self.failed = item
            .as_ref()
            .is_err_and(|e| !matches!(e, Error::Erased { .. }));
        Some(item)
    }
}

impl GlobalIter {
    fn next_inner(&mut self) -> Option<Result<GlobalEvent>> {
        let event = match self.cursor.next_event()? {
            Ok(event) => event,
            Err(e) => return Some(Err(e)),
        };
        let tag = event.position.stream_tag;
        let stream = match &self.last {
            Some(info) if info.tag() == Some(tag) => Arc::clone(info),
            _ => match self.cursor.view_mut().stream_by_tag(tag) {
                Ok(info) => {
                    self.last = Some(Arc::clone(&info));
                    info
                }
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok(GlobalEvent {
            event,
            stream,
            aligned: OnceLock::new(),
        }))
    }
}

impl fmt::Debug for GlobalIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalIter").finish_non_exhaustive()
    }
}
