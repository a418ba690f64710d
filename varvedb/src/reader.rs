//! Reading one stream: [`StreamReader`], [`StreamIter`] and the zero-copy
//! [`EventRef`].

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rkyv::rancor;

use crate::error::{Error, Location, Result};
use crate::event::Archivable;
use crate::metadata::Metadata;
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::storage::{
    may_need_alignment, ArchivedRef, EventPosition, MappedEvent, RawMeta, Store, StreamCursor,
    StreamInfo, View, ViewSlot,
};

/// A read-only view of one stream. Cheap to clone, `Send`, and usable while
/// writers append.
///
/// Each call reads the newest commit. Between commits, consecutive calls share
/// one LMDB snapshot, so a burst of point reads costs no transaction setup.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Rated { stars: u8 }
/// use varvedb::{StreamId, StreamSequence};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut ratings = varve.stream::<Rated, 16>("ratings")?;
/// ratings.append(StreamId(3), &Rated { stars: 5 })?;
///
/// let mut reader = ratings.reader();
/// let rated = reader.get_archived(StreamId(3), StreamSequence(0))?.expect("just written");
/// assert_eq!(rated.stars, 5);
/// assert!(reader.get_archived(StreamId(3), StreamSequence(1))?.is_none());
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct StreamReader<T> {
    store: Arc<Store>,
    info: StreamInfo,
    view: ViewSlot,
    _event: PhantomData<fn() -> T>,
}

impl<T> StreamReader<T> {
    /// The store this reader reads (for other modules).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The stream this reader reads (for other modules).
    pub(crate) fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The reader's cached snapshot if it is current, else a new one (for an
    /// iterator or a borrowed snapshot to own).
    pub(crate) fn owned_view(&self) -> Result<View> {
        owned_view(&self.store, &mut self.view.lock())
    }
}

impl<T> Clone for StreamReader<T> {
    fn clone(&self) -> Self {
        StreamReader {
            store: Arc::clone(&self.store),
            info: self.info.clone(),
            view: self.store.view_slot(),
            _event: PhantomData,
        }
    }
}

impl<T> fmt::Debug for StreamReader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream", &&*self.info.name)
            .finish_non_exhaustive()
    }
}

/// A snapshot that shows the newest commit: the cached one if nothing was
/// committed since it was taken, a new one otherwise.
pub(crate) fn current_view<'v>(
    store: &Arc<Store>,
    cached: &'v mut Option<View>,
) -> Result<&'v mut View> {
    if !cached.as_ref().is_some_and(View::is_current) {
        *cached = None;
        *cached = Some(store.snapshot()?);
    }
    Ok(cached.as_mut().expect("just filled"))
}

/// Takes the cached snapshot if it is current (for an iterator to own), else opens one.
pub(crate) fn owned_view(store: &Arc<Store>, cached: &mut Option<View>) -> Result<View> {
    // The stale snapshot is closed before a new one is opened: opening waits
    // at the gate while a writer grows the map, and that writer waits for
    // every open snapshot, this one included.
    let stale = match cached.take() {
        Some(view) if view.is_current() => return Ok(view),
        stale => stale,
    };
    drop(stale);
    store.snapshot()
}

/// How a handle reads an event, from the fingerprint of its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Written with the handle's type (its current version): read in place.
    Current,
    /// Written with an older version of the handle's event, with this
    /// fingerprint: validated as that version and upcast.
    Older(u64),
}

/// How `stream`'s handle reads an event whose block carries `fingerprint`:
/// a plain type only its own layout; a `#[derive(Event)]` type its current
/// version in place and the older versions of its chain by upcasting. Any
/// other fingerprint is an error, never a reinterpretation of the bytes.
pub(crate) fn form_of(
    stream: &StreamInfo,
    fingerprint: u64,
    location: impl FnOnce() -> Location,
) -> Result<Form> {
    let Some(schema) = &stream.schema else {
        if fingerprint == stream.layout_fingerprint {
            return Ok(Form::Current);
        }
        return Err(Error::Corruption {
            location: location(),
            detail: format!(
                "event carries type fingerprint {fingerprint:#018x}, the stream's type is {:#018x}",
                stream.layout_fingerprint
            ),
        });
    };
    let fp = stream
        .legacy()
        .filter(|l| l.block == fingerprint)
        .map_or(fingerprint, |l| l.schema);
    if fp == schema.fingerprint {
        return Ok(Form::Current);
    }
    if schema.version_of(fp).is_some() {
        return Ok(Form::Older(fp));
    }
    Err(Error::UnknownEventVersion {
        location: location(),
        event: schema.name.to_string(),
        version: None,
        fingerprint: fp,
        known: schema.lineage().into(),
    })
}

/// The error for an event whose archived bytes fail validation; out of line,
/// so the read loops that may return it stay small.
#[cold]
#[inline(never)]
pub(crate) fn invalid_event(location: Location, e: rancor::Error) -> Error {
    Error::Corruption {
        location,
        detail: format!("invalid archived event: {e}"),
    }
}

/// Reads `bytes`, an event of `form`, as the handle's current version: in
/// place (or on an aligned copy in `scratch`), or upcast into `scratch`.
/// Inlined: it is the body of every typed read loop, and the current-version
/// branch is a validation call.
#[inline]
pub(crate) fn read_form<'a, T: Archivable>(
    stream: &StreamInfo,
    form: Form,
    bytes: &'a [u8],
    scratch: &'a mut rkyv::util::AlignedVec<16>,
    location: impl Fn() -> Location,
) -> Result<&'a T::Archived> {
    let corrupt = |e: rancor::Error| invalid_event(location(), e);
    match form {
        Form::Current => access_or_copy::<T>(bytes, scratch).map_err(corrupt),
        Form::Older(fp) => {
            upcast_into(stream, fp, bytes, scratch, &location)?;
            rkyv::access::<T::Archived, rancor::Error>(scratch).map_err(corrupt)
        }
    }
}

/// Upcasts `bytes` (the version with fingerprint `fp` of `stream`'s event)
/// into `out`, archived as the handle's current version.
pub(crate) fn upcast_into(
    stream: &StreamInfo,
    fp: u64,
    bytes: &[u8],
    out: &mut rkyv::util::AlignedVec<16>,
    location: &impl Fn() -> Location,
) -> Result<()> {
    let schema = stream.schema.as_ref().ok_or_else(|| Error::Corruption {
        location: location(),
        detail: "an older event version for a type without versions".into(),
    })?;
    match schema.upcast(fp, bytes, out) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::UnknownEventVersion {
            location: location(),
            event: schema.name.to_string(),
            version: None,
            fingerprint: fp,
            known: schema.lineage().into(),
        }),
        Err(e) => Err(Error::UpcastFailed {
            location: location(),
            event: schema.name.to_string(),
            detail: e.to_string(),
        }),
    }
}

fn validate<T: Archivable>(stream: &StreamInfo, event: MappedEvent) -> Result<EventRef<T>> {
    let position = event.position;
    let location = || Location::Stream {
        stream: stream.name.to_string(),
        id: position.stream_id,
        sequence: position.stream_sequence,
    };
    let corrupt = |e: rancor::Error| Error::Corruption {
        location: location(),
        detail: format!("invalid archived event: {e}"),
    };
    // The metadata stays in the event's slot: pinned by a share of it (an
    // upcast event's archive is a copy, the metadata is not).
    let meta = (position.meta_flags != 0).then(|| event.share());
    let archived = match form_of(stream, position.fingerprint, location)? {
        Form::Current => {
            ArchivedRef::new(event, rkyv::access::<T::Archived, rancor::Error>).map_err(corrupt)?
        }
        Form::Older(fp) => {
            let mut out = rkyv::util::AlignedVec::<16>::new();
            upcast_into(stream, fp, event.bytes(), &mut out, &location)?;
            ArchivedRef::owned(out, rkyv::access::<T::Archived, rancor::Error>).map_err(corrupt)?
        }
    };
    Ok(EventRef {
        archived,
        position,
        meta,
    })
}

impl<T: Archivable> StreamReader<T> {
    pub(crate) fn new(store: Arc<Store>, info: StreamInfo) -> Self {
        StreamReader {
            view: store.view_slot(),
            store,
            info,
            _event: PhantomData,
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The store, the stream's catalog entry and the snapshot slot, for
    /// the reads other modules add.
    pub(crate) fn parts(&self) -> (&Arc<Store>, &StreamInfo, &ViewSlot) {
        (&self.store, &self.info, &self.view)
    }

    /// The event at `(id, seq)`, validated and zero-copy: the returned guard
    /// dereferences to the archived event inside the memory map. `Ok(None)` if
    /// `id` has no event at `seq`.
    ///
    /// # Errors
    /// [`Error::Corruption`] if the stored bytes fail their checksum or rkyv
    /// validation.
    pub fn get_archived(
        &mut self,
        id: StreamId,
        seq: StreamSequence,
    ) -> Result<Option<EventRef<T>>> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        let Some(tag) = view.stream_tag(&self.info)? else {
            return Ok(None);
        };
        match view.event_at_stream(tag, id.0, seq.0)? {
            Some(event) => validate(&self.info, event).map(Some),
            None => Ok(None),
        }
    }

    /// The archived bytes of the event at `(id, seq)` (checksummed, not
    /// rkyv-validated), without copying them. `Ok(None)` past the end.
    pub fn get_bytes(&mut self, id: StreamId, seq: StreamSequence) -> Result<Option<EventBytes>> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        let Some(tag) = view.stream_tag(&self.info)? else {
            return Ok(None);
        };
        Ok(view
            .event_at_stream(tag, id.0, seq.0)?
            .map(|event| EventBytes { event }))
    }

    /// A lazy iterator over `id`'s events from `from` (or the start), in one
    /// consistent snapshot. Memory use does not grow with the stream's length.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// # use varvedb::{StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append_batch(StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }, Tick { n: 3 }])?;
    /// let mut reader = ticks.reader();
    /// let tail: Vec<u32> = reader
    ///     .iter_stream(StreamId(1), Some(StreamSequence(1)))?
    ///     .map(|e| e.map(|tick| tick.n.to_native()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(tail, [2, 3]);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn iter_stream(&self, id: StreamId, from: Option<StreamSequence>) -> Result<StreamIter<T>> {
        let mut view = owned_view(&self.store, &mut self.view.lock())?;
        let tag = view.stream_tag(&self.info)?;
        let cursor = StreamCursor::new(view, tag, id.0, from.map_or(0, |s| s.0));
        Ok(StreamIter {
            cursor,
            info: self.info.clone(),
            pending: None,
            failed: false,
            _event: PhantomData,
        })
    }

    /// [`StreamReader::get_archived`], under varvedb 0.4's name for a read
    /// that skipped validation. VarveDB always validates (a checksum and
    /// rkyv's check, so damaged bytes are an [`Error::Corruption`], never
    /// undefined behaviour); the method stays `unsafe` only so that 0.4
    /// callers, who wrap it in `unsafe { }`, compile unchanged.
    ///
    /// # Safety
    /// None needed: it is as safe as [`StreamReader::get_archived`].
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Rated { stars: u8 }
    /// use varvedb::{StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ratings = varve.stream::<Rated, 16>("ratings")?;
    /// ratings.append(StreamId(3), &Rated { stars: 4 })?;
    /// let mut reader = ratings.reader();
    /// // SAFETY: varvedb validates the bytes anyway.
    /// let rated = unsafe { reader.get_archived_unchecked(StreamId(3), StreamSequence(0))? };
    /// assert_eq!(rated.expect("written").stars, 4);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[allow(clippy::missing_safety_doc)]
    pub unsafe fn get_archived_unchecked(
        &mut self,
        id: StreamId,
        seq: StreamSequence,
    ) -> Result<Option<EventRef<T>>> {
        self.get_archived(id, seq)
    }

    /// The last stream sequence of `id`, or `None` if it has no events.
    pub fn version(&mut self, id: StreamId) -> Result<Option<StreamSequence>> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        match view.stream_tag(&self.info)? {
            Some(tag) => view.stream_version(tag, id.0),
            None => Ok(None),
        }
    }

    /// Releases the snapshot this reader keeps between calls. Readers do this
    /// by themselves when a newer commit exists; call it when a reader will sit
    /// idle for long while writers keep appending, so LMDB can reuse pages.
    pub fn release(&mut self) {
        *self.view.lock() = None;
    }
}

/// A validated archived event pinned in the memory map. Dereferences to
/// `T::Archived` with no copy; holding it keeps its snapshot open, so drop it
/// when done.
pub struct EventRef<T: Archivable> {
    archived: ArchivedRef<T::Archived>,
    position: EventPosition,
    /// The event pinned once more, for its metadata (only if it has some:
    /// the payload may be an aligned copy that no longer pins the slot).
    meta: Option<MappedEvent>,
}

impl<T: Archivable> EventRef<T> {
    pub(crate) fn from_parts(
        archived: ArchivedRef<T::Archived>,
        position: EventPosition,
        meta: Option<MappedEvent>,
    ) -> Self {
        EventRef {
            archived,
            position,
            meta,
        }
    }

    /// The event's metadata (id, correlation, causation, user bytes), read
    /// in place.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata::from_raw(
            self.meta
                .as_ref()
                .map(MappedEvent::meta)
                .unwrap_or_default(),
        )
    }

    /// The stream id the event belongs to.
    pub fn stream_id(&self) -> StreamId {
        self.position.stream_id
    }

    /// The event's position in its stream id.
    pub fn stream_sequence(&self) -> StreamSequence {
        self.position.stream_sequence
    }

    /// The event's position in the global log.
    pub fn global_sequence(&self) -> GlobalSequence {
        self.position.global
    }

    /// When the event was committed (wall clock of the writer).
    pub fn committed_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.position.committed_at_micros)
    }

    /// The archived bytes of the event.
    pub fn bytes(&self) -> &[u8] {
        self.archived.bytes()
    }
}

impl<T: Archivable> Deref for EventRef<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        self.archived.get()
    }
}

impl<T: Archivable> fmt::Debug for EventRef<T>
where
    T::Archived: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRef")
            .field("stream_id", &self.position.stream_id)
            .field("stream_sequence", &self.position.stream_sequence)
            .field("global_sequence", &self.position.global)
            .field("event", &**self)
            .finish()
    }
}

/// The stored bytes of one event, pinned in the memory map. Dereferences to `[u8]`.
pub struct EventBytes {
    event: MappedEvent,
}

impl EventBytes {
    pub(crate) fn new(event: MappedEvent) -> Self {
        EventBytes { event }
    }

    /// The event's metadata, read in place.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata::from_raw(self.event.meta())
    }

    /// The event's position in its stream id.
    pub fn stream_sequence(&self) -> StreamSequence {
        self.event.position.stream_sequence
    }

    /// The event's position in the global log.
    pub fn global_sequence(&self) -> GlobalSequence {
        self.event.position.global
    }
}

impl Deref for EventBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.event.bytes()
    }
}

impl fmt::Debug for EventBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBytes")
            .field("global_sequence", &self.event.position.global)
            .field("len", &self.event.bytes().len())
            .finish()
    }
}

/// varvedb 0.4's name for [`StreamIter`], the iterator of
/// [`StreamReader::iter_stream`]. The lifetime is unused (VarveDB's iterator
/// owns its snapshot); the event type is new: 0.4's iterator was untyped.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
/// use varvedb::{StreamId, StreamIterator, StreamReader};
/// fn count(iter: StreamIterator<'_, Tick>) -> varvedb::Result<usize> {
///     Ok(iter.collect_bytes()?.len())
/// }
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let reader: StreamReader<Tick> = varve.stream::<Tick, 16>("ticks")?.reader();
/// assert_eq!(count(reader.iter_stream(StreamId(1), None)?)?, 0);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub type StreamIterator<'a, T> = StreamIter<T>;

/// A lazy iterator over one stream id's events, in one snapshot. Yields
/// validated, zero-copy [`EventRef`]s.
/// After the first error it yields `None`: it never skips past a damaged event,
/// and neither does a fold or copy of what is left of it.
pub struct StreamIter<T> {
    cursor: StreamCursor,
    info: StreamInfo,
    /// An error found while opening (the stream's type), yielded first
    /// (boxed: the iterator stays `Unpin` for the async subscriptions).
    pending: Option<Box<Error>>,
    failed: bool,
    _event: PhantomData<fn() -> T>,
}

impl<T: Archivable> StreamIter<T> {
    /// An iterator over `id`'s events in `view` from `from` (for subscriptions).
    pub(crate) fn from_view(mut view: View, info: StreamInfo, id: StreamId, from: u64) -> Self {
        let (tag, pending) = match view.stream_tag(&info) {
            Ok(tag) => (tag, None),
            Err(e) => (None, Some(Box::new(e))),
        };
        StreamIter {
            cursor: StreamCursor::new(view, tag, id.0, from),
            info,
            pending,
            failed: false,
            _event: PhantomData,
        }
    }

    /// Copies every remaining event's archived bytes (checksummed, not
    /// rkyv-validated) into a `Vec`, each with its stream sequence, as
    /// varvedb 0.4 did.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append_batch(StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }, Tick { n: 3 }])?;
    /// let tail = ticks.reader().iter_stream(StreamId(1), Some(StreamSequence(1)))?.collect_bytes()?;
    /// assert_eq!(tail.len(), 2);
    /// let (seq, bytes) = &tail[0];
    /// assert_eq!(*seq, StreamSequence(1));
    /// assert_eq!(rkyv::access::<ArchivedTick, rkyv::rancor::Error>(bytes).unwrap().n, 2);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first error the scan meets ([`Error::Corruption`], or the
    /// stream's [`Error::TypeMismatch`]); nothing is returned then.
    pub fn collect_bytes(mut self) -> Result<Vec<(StreamSequence, Vec<u8>)>> {
        if let Some(e) = self.pending.take() {
            return Err(*e);
        }
        let mut out = Vec::new();
        while let Some(next) = self.cursor.next_bytes() {
            let (seq, _, bytes) = next?;
            out.push((seq, bytes.to_vec()));
        }
        Ok(out)
    }

    /// Calls `f(sequence, bytes)` for every remaining event, with its archived
    /// bytes (checksummed, not rkyv-validated) borrowed from the map: no copy,
    /// no allocation per event. varvedb 0.4's closure shape.
    ///
    /// This inherent method shadows [`Iterator::for_each`] in method-call
    /// syntax (`iter.for_each(..)`), so 0.4 code compiles unchanged. For the
    /// iterator's own, which yields `Result<EventRef<T>>`, write
    /// `for event in iter { .. }` or `Iterator::for_each(iter, ..)`.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append_batch(StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }])?;
    /// let mut seen = Vec::new();
    /// ticks.reader().iter_stream(StreamId(1), None)?.for_each(|seq, bytes| {
    ///     let tick = rkyv::access::<ArchivedTick, rkyv::rancor::Error>(bytes).unwrap();
    ///     seen.push((seq.0, tick.n.to_native()));
    /// })?;
    /// assert_eq!(seen, [(0, 1), (1, 2)]);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first error the scan meets; `f` has then seen every event before it.
    pub fn for_each(mut self, mut f: impl FnMut(StreamSequence, &[u8])) -> Result<()> {
        if let Some(e) = self.pending.take() {
            return Err(*e);
        }
        self.cursor.walk_versions(|seq, _, _, bytes, _| {
            f(StreamSequence(seq), bytes);
            Ok(std::ops::ControlFlow::Continue(()))
        })
    }

    /// Folds every remaining event, borrowed straight from the map: no
    /// reference counting, no copy, no allocation per event.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// # use varvedb::StreamId;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut payments = varve.stream::<Paid, 16>("payments")?;
    /// payments.append_batch(StreamId(1), &[Paid { cents: 150 }, Paid { cents: 250 }])?;
    /// let total = payments.reader().iter_stream(StreamId(1), None)?
    ///     .try_fold_archived(0u64, |sum, _, paid| sum + paid.cents.to_native())?;
    /// assert_eq!(total, 400);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn try_fold_archived<B>(
        self,
        init: B,
        mut f: impl FnMut(B, StreamSequence, &T::Archived) -> B,
    ) -> Result<B> {
        self.fold_blocks::<B, false>(init, |acc, seq, archived, _| f(acc, seq, archived))
    }

    /// [`try_fold_archived`](Self::try_fold_archived), with each event's
    /// [`Metadata`](crate::Metadata) (ids, correlation, causation, user
    /// bytes), also borrowed from the map.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// use varvedb::{Append, EventId, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut payments = varve.stream::<Paid, 16>("payments")?;
    /// payments.append_with(StreamId(1), &Paid { cents: 150 }, Append::new().event_id(EventId::from_u128(7)))?;
    /// let ids = payments.reader().iter_stream(StreamId(1), None)?
    ///     .try_fold_with_metadata(Vec::new(), |mut ids, _, _, meta| {
    ///         ids.extend(meta.event_id());
    ///         ids
    ///     })?;
    /// assert_eq!(ids, [EventId::from_u128(7)]);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn try_fold_with_metadata<B>(
        self,
        init: B,
        mut f: impl FnMut(B, StreamSequence, &T::Archived, crate::Metadata<'_>) -> B,
    ) -> Result<B> {
        self.fold_blocks::<B, true>(init, |acc, seq, archived, meta| {
            f(acc, seq, archived, crate::Metadata::from_raw(meta))
        })
    }

    /// The one fold loop, a block at a time: the run, the block header and
    /// the event form (current or an older version to upcast) are decided
    /// once per block; per event it checks the checksum, validates and calls
    /// `f`. With `META` false, or for a block without metadata, the metadata
    /// prefix is skipped unparsed and `f` gets empty metadata.
    fn fold_blocks<B, const META: bool>(
        mut self,
        init: B,
        mut f: impl FnMut(B, StreamSequence, &T::Archived, RawMeta<'_>) -> B,
    ) -> Result<B> {
        if let Some(e) = self.pending.take() {
            return Err(*e);
        }
        let mut acc = Some(init);
        let mut scratch = rkyv::util::AlignedVec::<16>::new();
        let (info, id) = (&self.info, StreamId(self.cursor.id()));
        let location = |seq: u64| {
            move || Location::Stream {
                stream: info.name.to_string(),
                id,
                sequence: StreamSequence(seq),
            }
        };
        let mut last: Option<(u64, Form)> = None;
        self.cursor.walk_blocks(|part| {
            let fp = part.fingerprint();
            let form = match last {
                Some((f, form)) if f == fp => form,
                _ => {
                    let form = form_of(info, fp, location(part.seq(0)))?;
                    last = Some((fp, form));
                    form
                }
            };
            let Some(mut state) = acc.take() else {
                return Ok(std::ops::ControlFlow::Break(()));
            };
            if META && part.has_metadata() {
                for i in 0..part.len() {
                    let (meta, bytes) = part.entry(i)?;
                    let archived =
                        read_form::<T>(info, form, bytes, &mut scratch, location(part.seq(i)))?;
                    state = f(state, StreamSequence(part.seq(i)), archived, meta);
                }
            } else {
                for i in 0..part.len() {
                    let bytes = part.payload(i)?;
                    let archived =
                        read_form::<T>(info, form, bytes, &mut scratch, location(part.seq(i)))?;
                    state = f(
                        state,
                        StreamSequence(part.seq(i)),
                        archived,
                        RawMeta::default(),
                    );
                }
            }
            acc = Some(state);
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        let name = &self.info.name;
        acc.ok_or_else(|| Error::Corruption {
            location: Location::Record(format!("stream {name:?}")),
            detail: "fold state lost".into(),
        })
    }
}

/// Validates `bytes` as an archived `T` in place or, when they are too
/// loosely aligned for `T`, on a copy in `scratch` (the only copying path:
/// payloads are at least 8-byte aligned in the map).
#[inline]
pub(crate) fn access_or_copy<'a, T: Archivable>(
    bytes: &'a [u8],
    scratch: &'a mut rkyv::util::AlignedVec<16>,
) -> Result<&'a T::Archived, rancor::Error> {
    match rkyv::access::<T::Archived, rancor::Error>(bytes) {
        Ok(archived) => Ok(archived),
        Err(e) if !may_need_alignment(bytes) => Err(e),
        Err(_) => {
            scratch.clear();
            scratch.extend_from_slice(bytes);
            rkyv::access::<T::Archived, rancor::Error>(scratch)
        }
    }
}

impl<T: Archivable> Iterator for StreamIter<T> {
    type Item = Result<EventRef<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.failed = true;
            return Some(Err(*e));
        }
        let item = self
            .cursor
            .next_event()?
            .and_then(|event| validate(&self.info, event));
        if item.is_err() {
            // The cursor is past the refused event: a fold or copy of the
            // rest (`try_fold_archived`, `collect_bytes`, ..) must not
            // resume behind it.
            self.failed = true;
            self.cursor.stop();
        }
        Some(item)
    }
}

impl<T> fmt::Debug for StreamIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamIter")
            .field("stream", &&*self.info.name)
            .finish_non_exhaustive()
    }
}
