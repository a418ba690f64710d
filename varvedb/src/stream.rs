//! [`Stream`], a typed write handle on one named stream.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use rkyv::rancor;

use crate::error::{Error, Result};
use crate::event::Archivable;
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use crate::reader::StreamReader;
use crate::storage::block::MAX_SLOT_LEN;
use crate::storage::{BlockBuilder, Store, StreamInfo};

/// Serializes `event` with rkyv as the next event of `block` (which must have
/// been [`BlockBuilder::start`]ed with room for it).
pub(crate) fn serialize_event<T: Archivable>(
    block: &mut BlockBuilder,
    stream: &str,
    event: &T,
) -> Result<()> {
    serialize_events(block, stream, std::slice::from_ref(event))
}

/// Serializes `events` in order into `block`, borrowing rkyv's thread-local
/// arena once for the whole batch rather than once per event.
pub(crate) fn serialize_events<T: Archivable>(
    block: &mut BlockBuilder,
    stream: &str,
    events: &[T],
) -> Result<()> {
    rkyv::util::with_arena(|arena| {
        events
            .iter()
            .try_for_each(|event| serialize_with(block, stream, event, arena.acquire()))
    })
}

fn serialize_with<T: Archivable>(
    block: &mut BlockBuilder,
    stream: &str,
    event: &T,
    alloc: rkyv::ser::allocator::ArenaHandle<'_>,
) -> Result<()> {
    let buf = block.begin_event();
    match rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(event, buf, alloc) {
        Ok(buf) => block
            .finish_event(buf)
            .map_err(|size| Error::EventTooLarge {
                stream: stream.to_string(),
                size,
                max: MAX_SLOT_LEN,
            }),
        Err(source) => {
            block.abandon();
            Err(Error::Serialize {
                stream: stream.to_string(),
                source,
            })
        }
    }
}

/// The serializer varvedb 0.4 used for [`Stream::append`]: rkyv's, writing
/// into a fixed buffer, without an allocator or pointer sharing.
///
/// Kept so that 0.4 bounds such as `T: for<'a> rkyv::Serialize<LowSerializer<'a>>`
/// still name a type. VarveDB serializes every event with
/// [`HighSerializer`]'s capabilities, so its appends need
/// [`Archivable`](crate::Archivable) instead, which every type deriving rkyv's
/// traits has.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::LowSerializer;
///
/// #[derive(Archive, Serialize)]
/// struct Point { x: i32 }
/// fn fixed_size<T: for<'a> Serialize<LowSerializer<'a>>>(_: &T) {}
/// fixed_size(&Point { x: 1 });
/// ```
pub type LowSerializer<'a> =
    rancor::Strategy<rkyv::ser::Serializer<rkyv::ser::writer::Buffer<'a>, (), ()>, rancor::Error>;

/// The serializer varvedb 0.4 used for [`Stream::append_alloc`]: rkyv's,
/// writing into a fixed buffer, with an arena allocator and pointer sharing.
/// Kept for 0.4 bounds, like [`LowSerializer`].
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::HighSerializer;
///
/// #[derive(Archive, Serialize)]
/// struct Tagged { tags: Vec<String> }
/// fn allocating<T: for<'a> Serialize<HighSerializer<'a>>>(_: &T) {}
/// allocating(&Tagged { tags: vec!["new".into()] });
/// ```
pub type HighSerializer<'a> = rancor::Strategy<
    rkyv::ser::Serializer<
        rkyv::ser::writer::Buffer<'a>,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rkyv::ser::sharing::Share,
    >,
    rancor::Error,
>;

/// A typed handle for appending events of type `T` to one named stream.
///
/// Appends take `&mut self`: a handle is one writer. Any number of handles
/// (for the same stream or others, on any threads) may append at once; their
/// commits are serialized and every event gets a dense stream sequence and
/// global sequence. Every append returns only after its transaction is durable
/// (see [`Durability`](crate::Durability)).
///
/// `N` is the initial size of the handle's serialization buffer; larger events
/// grow it on the heap rather than failing.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{StreamId, Varve};
///
/// #[derive(Archive, Serialize)]
/// struct Shipped { parcel: u64 }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let varve = Varve::new(dir.path())?;
/// let mut shipments = varve.stream::<Shipped, 64>("shipments")?;
/// shipments.append(StreamId(7), &Shipped { parcel: 1 })?;
/// let positions = shipments.append_batch(StreamId(7), &[Shipped { parcel: 2 }, Shipped { parcel: 3 }])?;
/// assert_eq!(positions.last().unwrap().0 .0, 2);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct Stream<T, const N: usize> {
    store: Arc<Store>,
    info: StreamInfo,
    block: BlockBuilder,
    _event: PhantomData<fn(&T)>,
}

impl<T, const N: usize> fmt::Debug for Stream<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("name", &&*self.info.name)
            .field("buffer", &N)
            .finish()
    }
}

impl<T: Archivable, const N: usize> Stream<T, N> {
    pub(crate) fn new(store: Arc<Store>, info: StreamInfo, buffer: usize) -> Self {
        Stream {
            store,
            info,
            block: BlockBuilder::with_capacity(buffer),
            _event: PhantomData,
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Appends one event to `id`. Returns its stream sequence and global sequence.
    ///
    /// # Errors
    /// [`Error::Serialize`] if rkyv cannot serialize the event,
    /// [`Error::EventTooLarge`] past 4 GiB, [`Error::Storage`] for I/O failures.
    pub fn append(&mut self, id: StreamId, event: &T) -> Result<(StreamSequence, GlobalSequence)> {
        self.append_expected(id, event, ExpectedVersion::Any)
    }

    /// Appends one event if `id`'s version matches `expected` (optimistic
    /// concurrency); otherwise writes nothing and returns
    /// [`Error::VersionConflict`].
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Opened;
    /// use varvedb::{Error, ExpectedVersion, StreamId};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut accounts = varve.stream::<Opened, 16>("accounts")?;
    /// accounts.append_expected(StreamId(1), &Opened, ExpectedVersion::NoStream)?;
    /// let again = accounts.append_expected(StreamId(1), &Opened, ExpectedVersion::NoStream);
    /// assert!(matches!(again, Err(Error::VersionConflict { .. })));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn append_expected(
        &mut self,
        id: StreamId,
        event: &T,
        expected: ExpectedVersion,
    ) -> Result<(StreamSequence, GlobalSequence)> {
        self.block.start(1);
        self.serialize(event)?;
        let (seq, global) = self
            .store
            .append(&self.info, id.0, expected, &mut self.block)?;
        Ok((StreamSequence(seq), GlobalSequence(global)))
    }

    /// Appends `events` to `id` atomically: all of them or none, at consecutive
    /// stream and global sequences. Returns each event's position. An empty
    /// slice writes nothing and returns an empty `Vec`.
    pub fn append_batch(
        &mut self,
        id: StreamId,
        events: &[T],
    ) -> Result<Vec<(StreamSequence, GlobalSequence)>> {
        self.append_batch_expected(id, events, ExpectedVersion::Any)
    }

    /// [`Stream::append_batch`] with an optimistic-concurrency check on `id`'s
    /// version before the batch.
    ///
    /// An empty slice writes nothing, but `expected` is still checked against
    /// the newest commit: `Ok(vec![])` if it holds, [`Error::VersionConflict`]
    /// otherwise.
    pub fn append_batch_expected(
        &mut self,
        id: StreamId,
        events: &[T],
        expected: ExpectedVersion,
    ) -> Result<Vec<(StreamSequence, GlobalSequence)>> {
        if events.is_empty() {
            // Nothing to write, but the caller's expectation is still checked
            // (against the newest commit), so a stale `expected` is never Ok.
            let actual = self.version(id)?;
            if !expected.matches(actual) {
                return Err(Error::VersionConflict {
                    stream: self.info.name.to_string(),
                    id,
                    expected,
                    actual,
                });
            }
            return Ok(Vec::new());
        }
        if events.len() > u32::MAX as usize {
            return Err(Error::EventTooLarge {
                stream: self.info.name.to_string(),
                size: events.len(),
                max: u32::MAX as usize,
            });
        }
        self.block.start(events.len());
        serialize_events(&mut self.block, &self.info.name, events)?;
        let (seq, global) = self
            .store
            .append(&self.info, id.0, expected, &mut self.block)?;
        Ok((0..events.len() as u64)
            .map(|i| (StreamSequence(seq + i), GlobalSequence(global + i)))
            .collect())
    }

    fn serialize(&mut self, event: &T) -> Result<()> {
        let buf = self.block.begin_event();
        match rkyv::api::high::to_bytes_in::<_, rancor::Error>(event, buf) {
            Ok(buf) => self
                .block
                .finish_event(buf)
                .map_err(|size| Error::EventTooLarge {
                    stream: self.info.name.to_string(),
                    size,
                    max: MAX_SLOT_LEN,
                }),
            Err(source) => {
                self.block.abandon();
                Err(Error::Serialize {
                    stream: self.info.name.to_string(),
                    source,
                })
            }
        }
    }

    /// [`Stream::append`], under varvedb 0.4's name for appending an event
    /// that needs an allocating serializer (strings, vectors). VarveDB
    /// serializes every event with an allocator, so both names do the same.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// #[derive(Archive, Serialize)]
    /// struct Named { name: String }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut names = varve.stream::<Named, 64>("names")?;
    /// let (seq, _) = names.append_alloc(varvedb::StreamId(1), &Named { name: "Ada".into() })?;
    /// assert_eq!(seq.0, 0);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn append_alloc(
        &mut self,
        id: StreamId,
        event: &T,
    ) -> Result<(StreamSequence, GlobalSequence)> {
        self.append(id, event)
    }

    /// [`Stream::append_batch`], under varvedb 0.4's name for a batch of
    /// events that need an allocating serializer: the same atomic batch.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Named { name: String }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut names = varve.stream::<Named, 64>("names")?;
    /// let batch = [Named { name: "Ada".into() }, Named { name: "Alan".into() }];
    /// let positions = names.append_batch_alloc(varvedb::StreamId(1), &batch)?;
    /// assert_eq!(positions.len(), 2);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn append_batch_alloc(
        &mut self,
        id: StreamId,
        events: &[T],
    ) -> Result<Vec<(StreamSequence, GlobalSequence)>> {
        self.append_batch(id, events)
    }

    /// A copy of the archived bytes of the event at `(id, seq)` (checksummed,
    /// not rkyv-validated), or `Ok(None)` if `id` has no event at `seq`, as in
    /// varvedb 0.4. Reads the newest commit. For zero-copy reads use a
    /// [`StreamReader`] ([`StreamReader::get_archived`],
    /// [`StreamReader::get_bytes`]).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append(StreamId(1), &Tick { n: 7 })?;
    /// let bytes = ticks.get_bytes(StreamId(1), StreamSequence(0))?.expect("written");
    /// let tick = rkyv::access::<ArchivedTick, rkyv::rancor::Error>(&bytes).unwrap();
    /// assert_eq!(tick.n, 7);
    /// assert!(ticks.get_bytes(StreamId(1), StreamSequence(1))?.is_none());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Corruption`] if the stored bytes fail their checksum.
    pub fn get_bytes(&self, id: StreamId, seq: StreamSequence) -> Result<Option<Vec<u8>>> {
        let mut view = self.store.snapshot()?;
        let Some(tag) = view.stream_tag(&self.info)? else {
            return Ok(None);
        };
        Ok(view
            .event_at_stream(tag, id.0, seq.0)?
            .map(|event| event.bytes().to_vec()))
    }

    /// The global sequence the next event appended to the store will get:
    /// one past the newest committed event of any stream, by any handle or
    /// process (the number of events in the store). As in varvedb 0.4 it
    /// returns no `Result`; see [`Varve::next_global_seq`](crate::Varve::next_global_seq)
    /// for how it reads the log.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// assert_eq!(ticks.next_global_seq().0, 0);
    /// let (_, global) = ticks.append(varvedb::StreamId(1), &Tick { n: 1 })?;
    /// assert_eq!(ticks.next_global_seq().0, global.0 + 1);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn next_global_seq(&self) -> GlobalSequence {
        GlobalSequence(self.store.newest_end())
    }

    /// A reader for this stream. Readers are cheap, `Clone` and `Send`.
    pub fn reader(&self) -> StreamReader<T> {
        StreamReader::new(Arc::clone(&self.store), self.info.clone())
    }

    /// The last stream sequence of `id`, or `None` if it has no events.
    pub fn version(&self, id: StreamId) -> Result<Option<StreamSequence>> {
        let mut view = self.store.snapshot()?;
        match view.stream_tag(&self.info)? {
            Some(tag) => view.stream_version(tag, id.0),
            None => Ok(None),
        }
    }
}
