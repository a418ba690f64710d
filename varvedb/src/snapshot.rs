//! Borrowed snapshots: [`StreamSnapshot`] and [`LogSnapshot`], and the
//! [`StreamEntry`]s and [`GlobalEntry`]s their plain `for` loops yield.
//!
//! An owning iterator ([`StreamIter`](crate::StreamIter),
//! [`GlobalIter`](crate::GlobalIter)) hands out events that each keep the
//! snapshot alive, an atomic reference count per event. A snapshot turns that
//! around: the snapshot is a value the caller holds, and what its iterators
//! yield borrows it, so an event costs no reference counting and, in its
//! current version, no allocation.
//!
//! # Holding a snapshot
//! A snapshot keeps one LMDB read transaction open and holds the store's map
//! gate, exactly as a held [`EventRef`](crate::EventRef) does: while it lives,
//! the memory map cannot grow. An append that needs a larger map waits up to
//! [`VarveConfig::resize_wait`](crate::VarveConfig::resize_wait) for it to be
//! dropped, then fails with [`Error::MapResizeBlocked`](crate::Error::MapResizeBlocked) (it never remaps
//! under a reader). It also keeps LMDB from reusing the pages of later
//! commits' garbage. Take a snapshot for a scan or a burst of reads, then drop
//! it; never hold one across a long pause.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::error::{Location, Result};
use crate::event::Archivable;
use crate::global::GlobalEntry;
use crate::metadata::Metadata;
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::{form_of, invalid_event, upcast_into, Form, StreamReader};
use crate::storage::{
    block_tag, may_need_alignment, ArchivedRef, EventAt, EventPosition, Frozen, GlobalCursor,
    MetaPrefix, StreamBlock, StreamCursor, StreamInfo, View,
};
use crate::{GlobalReader, Varve};

/// One consistent snapshot of the whole store, whose reads borrow it: the
/// global log by [`GlobalSequence`] with no reference counting per event.
/// Made by [`GlobalReader::snapshot`] or [`Varve::snapshot`].
///
/// It sees one commit for as long as it lives, whatever is appended
/// meanwhile. It holds the store's map gate, like a held
/// [`EventRef`](crate::EventRef): while it lives the map cannot grow, and an
/// append that needs a larger map waits up to
/// [`VarveConfig::resize_wait`](crate::VarveConfig::resize_wait), then fails
/// with [`Error::MapResizeBlocked`](crate::Error::MapResizeBlocked). Never hold one across a long pause.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
/// use varvedb::{GlobalSequence, StreamId};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// varve.stream::<Paid, 16>("payments")?.append_batch(StreamId(1), &[Paid { cents: 150 }, Paid { cents: 250 }])?;
///
/// let snap = varve.snapshot()?;
/// let mut total = 0;
/// for event in snap.iter_from(GlobalSequence(0))? {
///     total += event?.archived_plain::<Paid>()?.cents.to_native();
/// }
/// assert_eq!(total, 400);
/// assert_eq!(snap.end()?, GlobalSequence(2));
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct LogSnapshot {
    frozen: Frozen,
}

impl fmt::Debug for LogSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSnapshot")
            .field("commit", &self.frozen.txn_id())
            .finish_non_exhaustive()
    }
}

impl LogSnapshot {
    fn new(view: View) -> LogSnapshot {
        LogSnapshot {
            frozen: Frozen::new(view),
        }
    }

    /// Every event from `from` to the end of the log as this snapshot sees
    /// it, each borrowed from the snapshot. After the first error the
    /// iterator yields `None`: it never skips past a damaged event.
    ///
    /// # Errors
    /// None today; a `Result` so that every backend can fail here.
    pub fn iter_from(&self, from: GlobalSequence) -> Result<GlobalEntries<'_>> {
        Ok(GlobalEntries {
            cursor: self.frozen.global_cursor(from.0),
            frozen: &self.frozen,
            last: None,
            failed: false,
        })
    }

    /// The event at `global`, borrowed from the snapshot, or `Ok(None)` past
    /// the end of the log.
    ///
    /// # Errors
    /// [`Error::Corruption`](crate::Error::Corruption) if its block is damaged.
    pub fn get(&self, global: GlobalSequence) -> Result<Option<GlobalEntry<'_>>> {
        let Some((block, bytes, meta)) = self.frozen.event_at_global(global.0)? else {
            return Ok(None);
        };
        let stream = self.frozen.stream(block_tag(&block))?;
        Ok(Some(GlobalEntry::new(block, global.0, bytes, meta, stream)))
    }

    /// One past the newest global sequence this snapshot sees: the number of
    /// events in the store at its commit.
    pub fn end(&self) -> Result<GlobalSequence> {
        self.frozen.end_global().map(GlobalSequence)
    }
}

/// The iterator of [`LogSnapshot::iter_from`]: yields [`GlobalEntry`]s
/// borrowed from the snapshot.
pub struct GlobalEntries<'s> {
    cursor: GlobalCursor<&'s View>,
    frozen: &'s Frozen,
    last: Option<(u32, &'s StreamInfo)>,
    failed: bool,
}

impl<'s> Iterator for GlobalEntries<'s> {
    type Item = Result<GlobalEntry<'s>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (block, global, bytes, meta) = match self.cursor.next_in()? {
            Ok(found) => found,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let tag = block_tag(&block);
        let stream = match self.last {
            Some((t, stream)) if t == tag => stream,
            _ => match self.frozen.stream(tag) {
                Ok(stream) => {
                    self.last = Some((tag, stream));
                    stream
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            },
        };
        Some(Ok(GlobalEntry::new(block, global, bytes, meta, stream)))
    }
}

impl fmt::Debug for GlobalEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalEntries").finish_non_exhaustive()
    }
}

/// One consistent snapshot of the store, read as one stream of `T`s: the
/// fast, natural way to scan a stream. `for event in snap.iter_stream(..)?`
/// yields [`StreamEntry`]s that borrow the snapshot: no reference counting
/// and, for events in their current version, no allocation. Made by
/// [`StreamReader::snapshot`].
///
/// Every read checks each block's version as the other typed reads do: the
/// handle's current version is read in place, an older version of a
/// `#[derive(Event)]` event is upcast (one allocation, owned by its entry),
/// anything else is an error, never a reinterpretation of the bytes.
///
/// It sees one commit for as long as it lives, and holds the store's map
/// gate like a held [`EventRef`](crate::EventRef): while it lives the map
/// cannot grow, and an append that needs a larger map waits up to
/// [`VarveConfig::resize_wait`](crate::VarveConfig::resize_wait), then fails
/// with [`Error::MapResizeBlocked`](crate::Error::MapResizeBlocked). Never hold one across a long pause.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
/// use varvedb::{StreamId, StreamSequence};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut payments = varve.stream::<Paid, 16>("payments")?;
/// payments.append_batch(StreamId(1), &[Paid { cents: 150 }, Paid { cents: 250 }])?;
///
/// let snap = payments.reader().snapshot()?;
/// let mut total = 0;
/// for paid in snap.iter_stream(StreamId(1), None)? {
///     let paid = paid?;
///     total += paid.cents.to_native();
///     assert_eq!(paid.stream_id(), StreamId(1));
/// }
/// assert_eq!(total, 400);
/// let second = snap.get(StreamId(1), StreamSequence(1))?.expect("written");
/// assert_eq!(second.cents, 250);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct StreamSnapshot<T> {
    log: LogSnapshot,
    info: StreamInfo,
    /// The stream's tag in this snapshot; `None` if it did not exist yet.
    tag: Option<u32>,
    _event: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for StreamSnapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSnapshot")
            .field("stream", &&*self.info.name)
            .field("commit", &self.log.frozen.txn_id())
            .finish_non_exhaustive()
    }
}

impl<T: Archivable> StreamSnapshot<T> {
    /// `id`'s events from `from` (or the start), each borrowed from the
    /// snapshot. After the first error the iterator yields `None`: it never
    /// skips past a damaged event.
    ///
    /// # Errors
    /// None today; a `Result` so that every backend can fail here. Errors
    /// of the events themselves come as items.
    pub fn iter_stream(
        &self,
        id: StreamId,
        from: Option<StreamSequence>,
    ) -> Result<StreamEntries<'_, T>> {
        let from = from.map_or(0, |s| s.0);
        Ok(StreamEntries {
            cursor: self.log.frozen.stream_cursor(self.tag, id.0, from),
            info: &self.info,
            last: None,
            part: None,
            at: 0,
            failed: false,
            _event: PhantomData,
        })
    }

    /// The event at `(id, seq)`, borrowed from the snapshot (or upcast from
    /// an older version), or `Ok(None)` if `id` has no event at `seq`.
    ///
    /// # Errors
    /// [`Error::Corruption`](crate::Error::Corruption) if the stored bytes fail their checksum or rkyv
    /// validation, [`Error::UnknownEventVersion`](crate::Error::UnknownEventVersion) or
    /// [`Error::UpcastFailed`](crate::Error::UpcastFailed) for a version the handle cannot read.
    pub fn get(&self, id: StreamId, seq: StreamSequence) -> Result<Option<StreamEntry<'_, T>>> {
        let Some(tag) = self.tag else {
            return Ok(None);
        };
        match self.log.frozen.event_at_stream(tag, id.0, seq.0)? {
            Some((at, bytes, meta)) => read_entry(&self.info, &mut None, at, bytes, meta).map(Some),
            None => Ok(None),
        }
    }

    /// The last stream sequence of `id` in this snapshot, or `None` if it has
    /// no events.
    pub fn version(&self, id: StreamId) -> Result<Option<StreamSequence>> {
        match self.tag {
            Some(tag) => self.log.frozen.stream_version(tag, id.0),
            None => Ok(None),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The same snapshot, read as the global log (every stream).
    pub fn log(&self) -> &LogSnapshot {
        &self.log
    }
}

/// The iterator of [`StreamSnapshot::iter_stream`]: yields [`StreamEntry`]s
/// borrowed from the snapshot.
pub struct StreamEntries<'s, T> {
    cursor: StreamCursor<&'s View>,
    info: &'s StreamInfo,
    /// The form of the last block fingerprint seen: decided once per block.
    last: Option<(u64, Form)>,
    /// The block being walked, its form, and the index of the next event
    /// in it: run, header and form are checked once per block.
    part: Option<(StreamBlock<'s>, Form)>,
    at: u32,
    failed: bool,
    _event: PhantomData<fn() -> T>,
}

impl<'s, T: Archivable> Iterator for StreamEntries<'s, T>
where
    T::Archived: 's,
{
    type Item = Result<StreamEntry<'s, T>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((part, form)) = &self.part {
                let (part, form) = (part, *form);
                if self.at < part.len() {
                    let i = self.at;
                    self.at += 1;
                    let item = part.read(i).and_then(|(at, prefix, bytes)| {
                        entry_of(self.info, form, at, bytes, prefix)
                    });
                    if item.is_err() {
                        self.failed = true;
                        self.part = None;
                    }
                    return Some(item);
                }
                self.part = None;
            }
            if self.failed {
                return None;
            }
            let next = self.cursor.next_block_in().and_then(|part| {
                part.map(|part| {
                    let position = part.position(0);
                    form_for(self.info, &mut self.last, &position).map(|form| (part, form))
                })
                .transpose()
            });
            match next {
                Ok(Some(part)) => {
                    self.part = Some(part);
                    self.at = 0;
                }
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl<T> fmt::Debug for StreamEntries<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamEntries")
            .field("stream", &&*self.info.name)
            .finish_non_exhaustive()
    }
}

/// Reads `bytes` (the event `at`) as `T`'s current version: in place, or
/// (upcast, or a misaligned payload copied) into a buffer the entry owns.
/// `last` caches the form of the last block fingerprint seen.
#[inline]
fn read_entry<'s, T: Archivable>(
    info: &StreamInfo,
    last: &mut Option<(u64, Form)>,
    at: EventAt<'s>,
    bytes: &'s [u8],
    meta: MetaPrefix<'s>,
) -> Result<StreamEntry<'s, T>> {
    let form = form_for(info, last, &at.position())?;
    entry_of(info, form, at, bytes, meta.bytes())
}

/// The form of the event at `position` (the current version, or an older
/// one to upcast), from `last` when its block fingerprint is the same.
#[inline]
fn form_for(
    info: &StreamInfo,
    last: &mut Option<(u64, Form)>,
    position: &EventPosition,
) -> Result<Form> {
    let fp = position.fingerprint;
    match *last {
        Some((f, form)) if f == fp => Ok(form),
        _ => {
            let form = form_of(info, fp, || entry_location(info, position))?;
            *last = Some((fp, form));
            Ok(form)
        }
    }
}

fn entry_location(info: &StreamInfo, position: &EventPosition) -> Location {
    Location::Stream {
        stream: info.name.to_string(),
        id: position.stream_id,
        sequence: position.stream_sequence,
    }
}

/// [`read_entry`] once the form is known.
#[inline]
fn entry_of<'s, T: Archivable>(
    info: &StreamInfo,
    form: Form,
    at: EventAt<'s>,
    bytes: &'s [u8],
    prefix: &'s [u8],
) -> Result<StreamEntry<'s, T>> {
    let location = || entry_location(info, &at.position());
    let corrupt = |e: rancor::Error| invalid_event(location(), e);
    let access = rkyv::access::<T::Archived, rancor::Error>;
    let archived = match form {
        Form::Current => match access(bytes) {
            Ok(archived) => Held::Borrowed(archived),
            Err(e) if !may_need_alignment(bytes) => return Err(corrupt(e)),
            Err(_) => {
                let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
                copy.extend_from_slice(bytes);
                Held::Owned(Box::new(ArchivedRef::owned(copy, access).map_err(corrupt)?))
            }
        },
        Form::Older(fp) => {
            let mut out = AlignedVec::<16>::new();
            upcast_into(info, fp, bytes, &mut out, &location)?;
            Held::Owned(Box::new(ArchivedRef::owned(out, access).map_err(corrupt)?))
        }
    };
    Ok(StreamEntry {
        archived,
        at,
        prefix,
    })
}

/// Where a [`StreamEntry`]'s archived event lives.
enum Held<'s, A> {
    /// In the snapshot's pages: the current version, read in place.
    Borrowed(&'s A),
    /// In a buffer the entry owns: an upcast older version (or, rarely, a
    /// payload copied for alignment).
    Owned(Box<ArchivedRef<A, ()>>),
}

/// One validated event of a [`StreamSnapshot`], borrowed from it: dereferences
/// to `T::Archived`, with no reference counting and no copy for an event in
/// its current version. An older version of a `#[derive(Event)]` event was
/// upcast into a buffer the entry owns.
pub struct StreamEntry<'s, T: Archivable> {
    archived: Held<'s, T::Archived>,
    at: EventAt<'s>,
    /// The event's metadata prefix, checked when read; parsed when asked.
    prefix: &'s [u8],
}

impl<'s, T: Archivable> StreamEntry<'s, T> {
    /// The stream id the event belongs to.
    pub fn stream_id(&self) -> StreamId {
        self.at.position().stream_id
    }

    /// The event's position in its stream id.
    pub fn stream_sequence(&self) -> StreamSequence {
        self.at.position().stream_sequence
    }

    /// The event's position in the global log.
    pub fn global_sequence(&self) -> GlobalSequence {
        self.at.position().global
    }

    /// When the event was committed (wall clock of the writer).
    pub fn committed_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.at.position().committed_at_micros)
    }

    /// The event's metadata (id, correlation, causation, user bytes),
    /// borrowed from the snapshot.
    pub fn metadata(&self) -> Metadata<'s> {
        Metadata::from_raw(self.at.meta(self.prefix))
    }

    /// The archived event, for as long as the snapshot lives, when it was
    /// read in place (its current version); `None` for an upcast event,
    /// which lives in this entry (read it through `Deref`).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// # use varvedb::StreamId;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// # let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// # ticks.append_batch(StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }])?;
    /// let snap = ticks.reader().snapshot()?;
    /// // References that outlive their entries, for as long as `snap` lives.
    /// let all: Vec<&ArchivedTick> = snap
    ///     .iter_stream(StreamId(1), None)?
    ///     .map(|e| e.map(|e| e.in_snapshot().expect("current version")))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(all[1].n, 2);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn in_snapshot(&self) -> Option<&'s T::Archived> {
        match self.archived {
            Held::Borrowed(archived) => Some(archived),
            Held::Owned(_) => None,
        }
    }
}

impl<T: Archivable> Deref for StreamEntry<'_, T> {
    type Target = T::Archived;

    #[inline]
    fn deref(&self) -> &T::Archived {
        match &self.archived {
            Held::Borrowed(archived) => archived,
            Held::Owned(owned) => owned.get(),
        }
    }
}

impl<T: Archivable> fmt::Debug for StreamEntry<'_, T>
where
    T::Archived: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamEntry")
            .field("stream_id", &self.at.position().stream_id)
            .field("stream_sequence", &self.at.position().stream_sequence)
            .field("global_sequence", &self.at.position().global)
            .field("event", &**self)
            .finish()
    }
}

impl<T: Archivable> StreamReader<T> {
    /// A snapshot of the newest commit for reads that borrow it: the fast,
    /// natural way to scan (see [`StreamSnapshot`]). Reuses the reader's
    /// cached snapshot when no commit happened since its last call.
    ///
    /// While the snapshot lives, the map cannot grow (an append that needs
    /// it waits, then fails with [`Error::MapResizeBlocked`](crate::Error::MapResizeBlocked)): drop it when
    /// the scan is done.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`](crate::Error::TypeMismatch) or [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) if the stream
    /// now holds another type than this reader's.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::StreamId;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append_batch(StreamId(1), &[Tick { n: 1 }, Tick { n: 2 }])?;
    /// let snap = ticks.reader().snapshot()?;
    /// ticks.append(StreamId(1), &Tick { n: 3 })?; // not seen by `snap`
    /// let mut seen = Vec::new();
    /// for tick in snap.iter_stream(StreamId(1), None)? {
    ///     seen.push(tick?.n.to_native());
    /// }
    /// assert_eq!(seen, [1, 2]);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn snapshot(&self) -> Result<StreamSnapshot<T>> {
        let log = LogSnapshot::new(self.owned_view()?);
        let tag = log.frozen.stream_tag(self.info())?;
        Ok(StreamSnapshot {
            info: self.info().clone(),
            log,
            tag,
            _event: PhantomData,
        })
    }
}

impl GlobalReader {
    /// A snapshot of the newest commit whose reads borrow it (see
    /// [`LogSnapshot`]). While it lives, the map cannot grow: drop it when
    /// done.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{GlobalSequence, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 1 })?;
    /// let snap = varve.global_reader().snapshot()?;
    /// let first = snap.get(GlobalSequence(0))?.expect("written");
    /// assert_eq!(first.stream_name(), "ticks");
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn snapshot(&self) -> Result<LogSnapshot> {
        Ok(LogSnapshot::new(self.owned_view()?))
    }
}

impl Varve {
    /// A snapshot of the newest commit whose reads borrow it: the global
    /// log, as [`GlobalReader::snapshot`].
    pub fn snapshot(&self) -> Result<LogSnapshot> {
        self.global_reader().snapshot()
    }
}
