//! Reading the whole log in global order: [`GlobalReader`], [`GlobalEvent`], [`GlobalIter`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use rkyv::util::AlignedVec;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Location, Result};
use crate::event::{layout_fingerprint, Archivable};
use crate::id::EventId;
use crate::metadata::Metadata;
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::{current_view, may_need_alignment, owned_view, EventRef};
use crate::storage::{
    block_end, block_position, block_tag, ArchivedRef, BlockRef, EventPosition, GlobalCursor,
    MappedEvent, RawMeta, Store, StreamInfo, View, ViewSlot,
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
    /// assert_eq!((paid.stream_id(), paid.archived::<Paid>()?.cents.to_native()), (StreamId(3), 12));
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
    pub fn iter_from(&mut self, from: GlobalSequence) -> Result<GlobalIter> {
        let view = owned_view(&self.store, &mut self.view.lock())?;
        Ok(GlobalIter {
            cursor: GlobalCursor::new(view, from.0),
            last: None,
            failed: false,
        })
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
    aligned: OnceLock<AlignedVec<16>>,
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

    /// Whether the event's stream holds events of type `T`.
    pub fn is<T: Archivable>(&self) -> bool {
        self.stream
            .holds(std::any::type_name::<T>(), layout_fingerprint::<T>)
    }

    /// The payload as a validated archived `T`, borrowed from the memory map
    /// (no copy, no reference counting).
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if the event's stream holds another type,
    /// [`Error::Corruption`] if the bytes fail validation.
    pub fn archived<T: Archivable>(&self) -> Result<&T::Archived> {
        typed::<T>(
            &self.stream,
            self.event.position.global,
            self.event.bytes(),
            &self.aligned,
        )
    }

    /// The payload as a validated archived `T` that owns its snapshot pin, so
    /// it can outlive this `GlobalEvent`.
    pub fn to_event_ref<T: Archivable>(&self) -> Result<EventRef<T>> {
        self.archived::<T>()?;
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

/// Checks that `stream` holds `T`, then validates `bytes` as an archived `T`,
/// in place, or on an aligned copy kept in `aligned` if under-aligned.
fn typed<'a, T: Archivable>(
    stream: &StreamInfo,
    global: GlobalSequence,
    bytes: &'a [u8],
    aligned: &'a OnceLock<AlignedVec<16>>,
) -> Result<&'a T::Archived> {
    if !stream.holds(std::any::type_name::<T>(), layout_fingerprint::<T>) {
        return Err(Error::TypeMismatch {
            stream: stream.name.to_string(),
            stored: stream.type_name.to_string(),
            stored_fingerprint: stream.layout_fingerprint,
            requested: std::any::type_name::<T>().to_string(),
            requested_fingerprint: layout_fingerprint::<T>(),
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
            let copy = aligned.get_or_init(|| {
                let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
                copy.extend_from_slice(bytes);
                copy
            });
            rkyv::access::<T::Archived, rkyv::rancor::Error>(copy).map_err(corrupt)
        }
    }
}

/// One event of the global log, borrowed from the snapshot of a
/// [`GlobalIter::try_fold_entries`]: the same accessors as [`GlobalEvent`], with no
/// reference counting at all.
pub struct GlobalEntry<'a> {
    block: &'a BlockRef,
    global: u64,
    bytes: &'a [u8],
    meta: RawMeta<'a>,
    stream: &'a StreamInfo,
    aligned: OnceLock<AlignedVec<16>>,
}

impl GlobalEntry<'_> {
    fn position(&self) -> EventPosition {
        block_position(self.block, self.global)
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
        Metadata::from_raw(self.meta)
    }

    /// Whether the event's stream holds events of type `T`.
    pub fn is<T: Archivable>(&self) -> bool {
        self.stream
            .holds(std::any::type_name::<T>(), layout_fingerprint::<T>)
    }

    /// The payload as a validated archived `T`, borrowed from the memory map.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if the event's stream holds another type,
    /// [`Error::Corruption`] if the bytes fail validation.
    pub fn archived<T: Archivable>(&self) -> Result<&T::Archived> {
        typed::<T>(
            self.stream,
            GlobalSequence(self.global),
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

/// A lazy iterator over the global log in one snapshot. After the first error
/// it yields `None`: it never skips past a damaged event.
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
    ///     Ok(sum + event.archived::<Paid>()?.cents.to_native())
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
            let (block, first) = found?;
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
                    block: &block,
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
}

impl Iterator for GlobalIter {
    type Item = Result<GlobalEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_inner()?;
        self.failed = item.is_err();
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
