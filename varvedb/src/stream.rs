//! [`Stream`], a typed write handle on one named stream.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use rkyv::rancor;

use crate::error::{Error, Result};
use crate::event::Archivable;
use crate::id::EventId;
use crate::metadata::{Append, Appended, Context};
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use crate::reader::StreamReader;
use crate::storage::block::MAX_SLOT_LEN;
use crate::storage::vault::Erasure;
use crate::storage::{BlockBuilder, Entity, RawMeta, Store, StreamInfo};

/// Serializes `events` in order into `block`, borrowing rkyv's thread-local
/// arena once for the whole batch rather than once per event.
pub(crate) fn serialize_events<T: Archivable>(
    block: &mut BlockBuilder,
    stream: &str,
    events: &[T],
) -> Result<()> {
    rkyv::util::with_arena(|arena| {
        events.iter().try_for_each(|event| {
            serialize_with(block, stream, event, &RawMeta::default(), arena.acquire())
        })
    })
}

/// Starts `block` for `events` with the metadata of `options` and
/// serializes them: the event ids (checked: one per event, no repeats) and
/// the context go into each event's metadata prefix.
pub(crate) fn serialize_with_meta<T: Archivable>(
    block: &mut BlockBuilder,
    stream: &str,
    events: &[T],
    ids: Option<&[EventId]>,
    context: Option<&Context>,
) -> Result<()> {
    if let Some(ids) = ids {
        check_ids(stream, events.len(), ids)?;
    }
    let empty = Context::default();
    let context = context.unwrap_or(&empty);
    let id_of = |i: usize| ids.map(|ids| ids[i]);
    let first = context.raw(id_of(0));
    if first.flags() == 0 {
        block.start(events.len());
        return serialize_events(block, stream, events);
    }
    if let Some(user) = context.user() {
        if user.len() > Context::MAX_USER_BYTES {
            return Err(Error::MetadataTooLarge {
                stream: stream.to_string(),
                size: user.len(),
                max: Context::MAX_USER_BYTES,
            });
        }
    }
    block.start_with_meta(
        events.len(),
        first.flags(),
        context.user().map_or(0, <[u8]>::len),
    );
    rkyv::util::with_arena(|arena| {
        events.iter().enumerate().try_for_each(|(i, event)| {
            serialize_with(
                block,
                stream,
                event,
                &context.raw(id_of(i)),
                arena.acquire(),
            )
        })
    })
}

/// Refuses ids that are not one per event, or that repeat, before any
/// transaction.
fn check_ids(stream: &str, events: usize, ids: &[EventId]) -> Result<()> {
    if ids.len() != events {
        return Err(Error::EventIdCount {
            stream: stream.to_string(),
            events,
            ids: ids.len(),
        });
    }
    if ids.len() > 1 {
        let mut sorted: Vec<(EventId, usize)> = ids.iter().copied().zip(0..).collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::DuplicateEventId {
                stream: stream.to_string(),
                event_id: w[0].0,
                first: w[0].1.min(w[1].1),
                second: w[0].1.max(w[1].1),
            });
        }
    }
    Ok(())
}

fn serialize_with<T: Archivable>(
    block: &mut BlockBuilder,
    stream: &str,
    event: &T,
    meta: &RawMeta<'_>,
    alloc: rkyv::ser::allocator::ArenaHandle<'_>,
) -> Result<()> {
    let buf = block.begin_event_with(meta);
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

    /// The stream's catalog entry (for tests that drive the engine).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn info(&self) -> &StreamInfo {
        &self.info
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
        let placed = self
            .store
            .append(&self.info, Entity::Id(id.0), expected, &mut self.block)?;
        Ok((
            StreamSequence(placed.first_seq),
            GlobalSequence(placed.first_global),
        ))
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
        let placed = self
            .store
            .append(&self.info, Entity::Id(id.0), expected, &mut self.block)?;
        Ok((0..events.len() as u64)
            .map(|i| {
                (
                    StreamSequence(placed.first_seq + i),
                    GlobalSequence(placed.first_global + i),
                )
            })
            .collect())
    }

    /// Appends one event with `options`: an expected version, an
    /// [`EventId`], a [`Context`]. Returns where it is, when it was
    /// committed, and whether it was an idempotent retry.
    ///
    /// **Idempotency.** If the event's id is already stored in this stream
    /// id, nothing is written and the answer is the original position and
    /// commit time, with [`Appended::is_idempotent`] set, *whatever the
    /// expected version says* (a retry after a timeout must not fail because
    /// its own first attempt moved the version). The index of ids is
    /// persistent and written in the event's transaction: retries are safe
    /// across restarts, processes and concurrent retries.
    ///
    /// # Errors
    /// As [`Stream::append_expected`], plus [`Error::EventIdConflict`] if the
    /// id is stored in another stream or stream id, and
    /// [`Error::MetadataTooLarge`].
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
    /// use varvedb::{Append, EventId, ExpectedVersion, StreamId};
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut payments = varve.stream::<Paid, 16>("payments")?;
    /// let id = EventId::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    /// let once = Append::new().expected(ExpectedVersion::NoStream).event_id(id);
    /// let first = payments.append_with(StreamId(1), &Paid { cents: 5 }, once)?;
    /// let again = payments.append_with(StreamId(1), &Paid { cents: 5 }, once)?;
    /// assert!(again.is_idempotent());
    /// assert_eq!((again.first(), again.committed_at()), (first.first(), first.committed_at()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_with(
        &mut self,
        id: StreamId,
        event: &T,
        options: Append<'_>,
    ) -> Result<Appended> {
        self.write(Entity::Id(id.0), std::slice::from_ref(event), options)
    }

    /// Appends `events` atomically with `options` (one event id per event,
    /// via [`Append::event_ids`]). A retry is idempotent when every id is
    /// stored, as one run of this stream id in this order: the whole
    /// original batch, or a prefix, suffix or any run of it. If only some
    /// ids are stored, or they are stored elsewhere or in another order,
    /// nothing is written and the error is [`Error::EventIdConflict`],
    /// naming the id and where it is stored. An id repeated within the
    /// batch is [`Error::DuplicateEventId`], before any transaction.
    ///
    /// # Errors
    /// As [`Stream::append_with`], plus [`Error::EventIdCount`].
    pub fn append_batch_with(
        &mut self,
        id: StreamId,
        events: &[T],
        options: Append<'_>,
    ) -> Result<Appended> {
        self.write(Entity::Id(id.0), events, options)
    }

    /// Appends one event to the stream id of entity `key` (a string, bytes
    /// or a UUID's bytes), allocating the id in this append's transaction if
    /// the key is new (see [`StreamReader::entity_id`]).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Placed { cents: u64 }
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut orders = varve.stream::<Placed, 16>("orders")?;
    /// let placed = orders.append_keyed("order-9f3c", &Placed { cents: 100 })?;
    /// let (_, _) = placed.first().expect("one event");
    /// let mut reader = orders.reader();
    /// let id = reader.entity_id("order-9f3c")?.expect("allocated");
    /// assert_eq!(reader.entity_key(id)?.as_deref(), Some(&b"order-9f3c"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Stream::append_with`], plus [`Error::InvalidEntityKey`].
    pub fn append_keyed(&mut self, key: impl AsRef<[u8]>, event: &T) -> Result<Appended> {
        self.append_keyed_with(key, event, Append::new())
    }

    /// [`Stream::append_keyed`] with options.
    ///
    /// # Errors
    /// As [`Stream::append_keyed`].
    pub fn append_keyed_with(
        &mut self,
        key: impl AsRef<[u8]>,
        event: &T,
        options: Append<'_>,
    ) -> Result<Appended> {
        let key = crate::entity::check_key(&self.info.name, key.as_ref())?;
        self.write(
            Entity::Key(key.into()),
            std::slice::from_ref(event),
            options,
        )
    }

    /// [`Stream::append_batch_with`] to the stream id of entity `key`.
    ///
    /// # Errors
    /// As [`Stream::append_keyed`].
    pub fn append_batch_keyed_with(
        &mut self,
        key: impl AsRef<[u8]>,
        events: &[T],
        options: Append<'_>,
    ) -> Result<Appended> {
        let key = crate::entity::check_key(&self.info.name, key.as_ref())?;
        self.write(Entity::Key(key.into()), events, options)
    }

    /// A handle that appends every event with `context` (sugar for
    /// [`Append::context`] on each call).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Clicked;
    /// use varvedb::{Context, CorrelationId, StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut clicks = varve.stream::<Clicked, 16>("clicks")?;
    /// let request = Context::new().correlation(CorrelationId::from_u128(42));
    /// let mut traced = clicks.with_context(request);
    /// traced.append(StreamId(1), &Clicked)?;
    /// traced.append_batch(StreamId(1), &[Clicked, Clicked])?;
    /// let read = clicks.reader().get_archived(StreamId(1), StreamSequence(2))?.expect("written");
    /// assert_eq!(read.metadata().correlation_id(), Some(CorrelationId::from_u128(42)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_context(&mut self, context: Context) -> WithContext<'_, T, N> {
        WithContext {
            stream: self,
            context,
        }
    }

    fn write(&mut self, entity: Entity, events: &[T], options: Append<'_>) -> Result<Appended> {
        if events.is_empty() {
            if let Some(ids) = options.ids() {
                check_ids(&self.info.name, 0, ids)?;
            }
            let actual = match &entity {
                Entity::Id(id) => self.version(StreamId(*id))?,
                Entity::Key(key) => {
                    let mut reader = self.reader();
                    match reader.entity_id(key)? {
                        Some(id) => reader.version(id)?,
                        None => None,
                    }
                }
            };
            if !options.expected.matches(actual) {
                return Err(Error::VersionConflict {
                    stream: self.info.name.to_string(),
                    id: match entity {
                        Entity::Id(id) => StreamId(id),
                        Entity::Key(_) => StreamId(crate::storage::FIRST_KEYED_ID),
                    },
                    expected: options.expected,
                    actual,
                });
            }
            return Ok(Appended::empty());
        }
        if events.len() > u32::MAX as usize {
            return Err(Error::EventTooLarge {
                stream: self.info.name.to_string(),
                size: events.len(),
                max: u32::MAX as usize,
            });
        }
        serialize_with_meta(
            &mut self.block,
            &self.info.name,
            events,
            options.ids(),
            options.context,
        )?;
        let placed = self
            .store
            .append(&self.info, entity, options.expected, &mut self.block)?;
        Ok(Appended::from_placed(&placed))
    }

    fn serialize(&mut self, event: &T) -> Result<()> {
        let buf = self.block.begin_event_with(&RawMeta::default());
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

    /// Erases the entity `id` of this stream (crypto-shredding, for erasure
    /// requests): deletes its key from the store's key vault, durably, and
    /// leaves a tombstone. From then on every read of its events (by
    /// position, in scans, folds, subscriptions, and in any backup or export
    /// of the store, taken before or after) is [`Error::Erased`], appends to
    /// it are refused with the same error, and `verify` counts its blocks as
    /// erased. Sequences stay dense: the events still occupy their positions.
    ///
    /// Only events appended while the store had its vault are sealed with
    /// the entity's key; snapshots and read models derived from the entity
    /// are the application's to delete. A read snapshot opened before the
    /// erasure keeps what it already decrypted until it is dropped.
    ///
    /// See [`VarveConfig::key_vault`](crate::VarveConfig::key_vault) for an
    /// example.
    ///
    /// # Errors
    /// [`Error::KeyVault`] if the store has no key vault (or it cannot be
    /// written), [`Error::ReadOnly`] on a read-only handle.
    pub fn erase(&mut self, id: StreamId) -> Result<Erasure> {
        self.store.check_writable("erasing an entity")?;
        let Some(vault) = self.store.vault() else {
            return Err(Error::KeyVault {
                path: self.store.path().to_path_buf(),
                detail: "the store has no key vault (VarveConfig::key_vault), so it has no \
                         entity keys to erase"
                    .into(),
            });
        };
        let mut view = self.store.snapshot()?;
        let Some(tag) = view.stream_tag(&self.info)? else {
            return Ok(Erasure::NoKey);
        };
        drop(view);
        // (A key that no longer authenticates is erased all the same.)
        if let Ok(crate::storage::vault::Found::Missing) = vault.lookup(tag, id.0) {
            return Ok(Erasure::NoKey);
        }
        // The entity's aggregate snapshot (sealed under the store's keys, it
        // would outlive the erasure) goes in a store commit of its own
        // first: a crash after the vault's commit below must not leave it
        // behind.
        let snapshot = crate::storage::keys::snapshot_key(tag, id.0);
        self.store
            .write(|txn| txn.state_delete(&snapshot).map(drop))?;
        // Then the vault's commit, under the store's writer lock (no append
        // or execute of the entity is between its key lookup and its commit
        // meanwhile), and the store's side again (for an erasure a crash
        // interrupted, too): a snapshot written since goes, and the commit
        // makes every reader of this store take a new snapshot instead of a
        // cached one. A retried transaction keeps the first outcome.
        let mut outcome = None;
        self.store.write(|txn| {
            let erased = match outcome {
                Some(o) => o,
                None => *outcome.insert(vault.erase(tag, id.0)?),
            };
            if erased != Erasure::NoKey {
                txn.state_delete(&snapshot)?;
                txn.note_erasure()?;
            }
            Ok(())
        })?;
        let outcome = outcome.unwrap_or(Erasure::NoKey);
        Ok(outcome)
    }

    /// [`Stream::erase`] of the stream id entity `key` maps to
    /// ([`Erasure::NoKey`] for a key no append has used).
    ///
    /// # Errors
    /// As [`Stream::erase`], and [`Error::InvalidEntityKey`].
    pub fn erase_keyed(&mut self, key: impl AsRef<[u8]>) -> Result<Erasure> {
        match self.reader().entity_id(key)? {
            Some(id) => self.erase(id),
            None => Ok(Erasure::NoKey),
        }
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

/// A [`Stream`] handle that appends with a [`Context`]: see
/// [`Stream::with_context`].
pub struct WithContext<'s, T, const N: usize> {
    stream: &'s mut Stream<T, N>,
    context: Context,
}

impl<T, const N: usize> fmt::Debug for WithContext<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithContext")
            .field("stream", &self.stream)
            .field("context", &self.context)
            .finish()
    }
}

impl<T: Archivable, const N: usize> WithContext<'_, T, N> {
    /// The context every append of this handle stores.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// [`Stream::append`] with the context.
    ///
    /// # Errors
    /// As [`Stream::append_with`].
    pub fn append(&mut self, id: StreamId, event: &T) -> Result<Appended> {
        self.append_with(id, event, Append::new())
    }

    /// [`Stream::append_batch`] with the context.
    ///
    /// # Errors
    /// As [`Stream::append_batch_with`].
    pub fn append_batch(&mut self, id: StreamId, events: &[T]) -> Result<Appended> {
        self.append_batch_with(id, events, Append::new())
    }

    /// [`Stream::append_with`] with the context (which replaces any context
    /// in `options`).
    ///
    /// # Errors
    /// As [`Stream::append_with`].
    pub fn append_with(
        &mut self,
        id: StreamId,
        event: &T,
        options: Append<'_>,
    ) -> Result<Appended> {
        let options = Append {
            context: Some(&self.context),
            ..options
        };
        self.stream.append_with(id, event, options)
    }

    /// [`Stream::append_batch_with`] with the context.
    ///
    /// # Errors
    /// As [`Stream::append_batch_with`].
    pub fn append_batch_with(
        &mut self,
        id: StreamId,
        events: &[T],
        options: Append<'_>,
    ) -> Result<Appended> {
        let options = Append {
            context: Some(&self.context),
            ..options
        };
        self.stream.append_batch_with(id, events, options)
    }
}
