//! Event metadata: what an append attaches to its events ([`Append`],
//! [`Context`]), what a read sees of it ([`Metadata`]), and what an append
//! reports ([`Appended`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::id::{CommandId, CorrelationId, EventId};
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use crate::storage::{Placed, RawMeta};

/// The metadata stored with one event, read in place from the store: its
/// id, correlation id, causation id and user bytes, each `None` if the
/// append did not give it. An event appended without metadata has none,
/// and costs no byte for it.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{Append, Context, CorrelationId, EventId, StreamId, StreamSequence};
/// # #[derive(Archive, Serialize)] struct Shipped { parcel: u64 }
/// # let dir = tempfile::tempdir()?;
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut shipments = varve.stream::<Shipped, 64>("shipments")?;
/// let context = Context::new().correlation(CorrelationId::from_u128(7)).user_bytes(b"{\"by\":\"ann\"}".to_vec())?;
/// let id = EventId::from_u128(1);
/// shipments.append_with(StreamId(1), &Shipped { parcel: 9 }, Append::new().event_id(id).context(&context))?;
///
/// let mut reader = shipments.reader();
/// let shipped = reader.get_archived(StreamId(1), StreamSequence(0))?.expect("written");
/// let meta = shipped.metadata();
/// assert_eq!(meta.event_id(), Some(id));
/// assert_eq!(meta.correlation_id(), Some(CorrelationId::from_u128(7)));
/// assert_eq!(meta.causation_id(), None);
/// assert_eq!(meta.user_bytes(), Some(&b"{\"by\":\"ann\"}"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metadata<'a> {
    raw: RawMeta<'a>,
}

impl<'a> Metadata<'a> {
    pub(crate) fn from_raw(raw: RawMeta<'a>) -> Self {
        Metadata { raw }
    }

    /// The event's id, if its append gave one.
    pub fn event_id(&self) -> Option<EventId> {
        self.raw.event_id.map(EventId)
    }

    /// The id of the flow the event belongs to.
    pub fn correlation_id(&self) -> Option<CorrelationId> {
        self.raw.correlation.map(CorrelationId)
    }

    /// The id of the event (or command) that caused this one.
    pub fn causation_id(&self) -> Option<EventId> {
        self.raw.causation.map(EventId)
    }

    /// The opaque user bytes, borrowed from the store (zero-copy).
    pub fn user_bytes(&self) -> Option<&'a [u8]> {
        self.raw.user
    }

    /// Whether the event carries no metadata at all.
    pub fn is_empty(&self) -> bool {
        self.raw == RawMeta::default()
    }

    /// The context for events caused by this one: causation = this event's
    /// id, correlation = this event's correlation (or, if it has none, its
    /// own id: it starts the flow). No user bytes.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// use varvedb::{Append, Context, CorrelationId, EventId, GlobalSequence, StreamId};
    /// # #[derive(Archive, Serialize)] struct Ordered;
    /// # #[derive(Archive, Serialize)] struct Reserved;
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let ordered = EventId::from_u128(1);
    /// varve.stream::<Ordered, 16>("orders")?
    ///     .append_with(StreamId(1), &Ordered, Append::new().event_id(ordered))?;
    ///
    /// // A reaction (a policy, a saga) derives its context from its cause.
    /// let cause = varve.global_reader().get(GlobalSequence(0))?.expect("written");
    /// let follow_up = cause.metadata().follow_up();
    /// let mut stock = varve.stream::<Reserved, 16>("stock")?;
    /// stock.with_context(follow_up).append(StreamId(4), &Reserved)?;
    ///
    /// let reaction = varve.global_reader().get(GlobalSequence(1))?.expect("written");
    /// assert_eq!(reaction.metadata().causation_id(), Some(ordered));
    /// assert_eq!(reaction.metadata().correlation_id(), Some(CorrelationId::from(ordered)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn follow_up(&self) -> Context {
        Context {
            correlation: self
                .correlation_id()
                .or_else(|| self.event_id().map(CorrelationId::from)),
            causation: self.event_id(),
            user: None,
        }
    }
}

/// What an append attaches to every event it writes besides the event ids:
/// a correlation id, a causation id and opaque user bytes (at most
/// [`Context::MAX_USER_BYTES`]). Pass it per call ([`Append::context`]) or
/// through a handle ([`Stream::with_context`](crate::Stream::with_context));
/// nothing is global or per thread.
///
/// ```
/// use varvedb::{Context, CorrelationId, EventId};
/// let context = Context::new()
///     .correlation(CorrelationId::from_u128(1))
///     .causation(EventId::from_u128(2))
///     .user_bytes(b"tenant=7".to_vec())?;
/// assert_eq!(context.user(), Some(&b"tenant=7"[..]));
/// assert!(Context::new().user_bytes(vec![0; Context::MAX_USER_BYTES + 1]).is_err());
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    correlation: Option<CorrelationId>,
    causation: Option<EventId>,
    user: Option<Vec<u8>>,
}

impl Context {
    /// The most user bytes one event may carry: 64 KiB. Metadata is meant
    /// for ids and small headers; larger data belongs in the event.
    pub const MAX_USER_BYTES: usize = 64 * 1024;

    /// An empty context.
    pub fn new() -> Self {
        Context::default()
    }

    /// Sets the correlation id.
    pub fn correlation(mut self, id: impl Into<CorrelationId>) -> Self {
        self.correlation = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn causation(mut self, id: impl Into<EventId>) -> Self {
        self.causation = Some(id.into());
        self
    }

    /// Sets the user bytes.
    ///
    /// # Errors
    /// [`Error::MetadataTooLarge`](crate::Error::MetadataTooLarge) past
    /// [`Context::MAX_USER_BYTES`].
    pub fn user_bytes(mut self, bytes: Vec<u8>) -> crate::Result<Self> {
        if bytes.len() > Self::MAX_USER_BYTES {
            return Err(crate::Error::MetadataTooLarge {
                stream: String::new(),
                size: bytes.len(),
                max: Self::MAX_USER_BYTES,
            });
        }
        self.user = Some(bytes);
        Ok(self)
    }

    /// The correlation id.
    pub fn correlation_id(&self) -> Option<CorrelationId> {
        self.correlation
    }

    /// The causation id.
    pub fn causation_id(&self) -> Option<EventId> {
        self.causation
    }

    /// The user bytes.
    pub fn user(&self) -> Option<&[u8]> {
        self.user.as_deref()
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Context::default()
    }

    /// The stored metadata of an event with `event_id` under this context.
    pub(crate) fn raw(&self, event_id: Option<EventId>) -> RawMeta<'_> {
        RawMeta {
            event_id: event_id.map(|id| id.0),
            correlation: self.correlation.map(|id| id.0),
            causation: self.causation.map(|id| id.0),
            user: self.user.as_deref(),
        }
    }
}

/// The options of one append: its expected version, its events' ids and
/// its context. `Append::new()` is an append with none of them, like
/// [`Stream::append`](crate::Stream::append).
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Paid { cents: u64 }
/// use varvedb::{Append, EventId, ExpectedVersion, StreamId};
/// # let dir = tempfile::tempdir()?;
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut payments = varve.stream::<Paid, 16>("payments")?;
/// let ids = [EventId::from_u128(1), EventId::from_u128(2)];
/// let options = Append::new().expected(ExpectedVersion::NoStream).event_ids(&ids);
/// let first = payments.append_batch_with(StreamId(5), &[Paid { cents: 1 }, Paid { cents: 2 }], options)?;
/// // The request timed out? Send it again: same positions, nothing written.
/// let retry = payments.append_batch_with(StreamId(5), &[Paid { cents: 1 }, Paid { cents: 2 }], options)?;
/// assert!(retry.is_idempotent() && !first.is_idempotent());
/// assert_eq!(retry.positions(), first.positions());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Append<'a> {
    pub(crate) expected: ExpectedVersion,
    pub(crate) event_id: Option<EventId>,
    pub(crate) event_ids: Option<&'a [EventId]>,
    pub(crate) context: Option<&'a Context>,
}

impl<'a> Append<'a> {
    /// No expectation, no ids, no context.
    pub fn new() -> Self {
        Append::default()
    }

    /// The optimistic-concurrency check (see [`ExpectedVersion`]). An
    /// append whose event ids are all stored is answered idempotently
    /// whatever its expected version.
    pub fn expected(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }

    /// The id of the one event of a single append (a batch needs
    /// [`Append::event_ids`]).
    pub fn event_id(mut self, id: EventId) -> Self {
        self.event_id = Some(id);
        self.event_ids = None;
        self
    }

    /// The ids of a batch's events, one per event, all different.
    pub fn event_ids(mut self, ids: &'a [EventId]) -> Self {
        self.event_ids = Some(ids);
        self.event_id = None;
        self
    }

    /// The context stored with every event of the append.
    pub fn context(mut self, context: &'a Context) -> Self {
        self.context = Some(context);
        self
    }

    /// The ids given, as a slice.
    pub(crate) fn ids(&self) -> Option<&[EventId]> {
        match (&self.event_id, self.event_ids) {
            (Some(id), _) => Some(std::slice::from_ref(id)),
            (None, ids) => ids,
        }
    }
}

/// What an append did: the positions of its events, their commit time, and
/// whether it was an idempotent retry (every event id already stored, so
/// nothing was written and these are the original positions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    stream_id: Option<StreamId>,
    positions: Vec<(StreamSequence, GlobalSequence)>,
    committed_at_micros: Option<u64>,
    idempotent: bool,
}

impl Appended {
    pub(crate) fn from_placed(placed: &Placed) -> Self {
        Appended {
            stream_id: Some(StreamId(placed.id)),
            positions: (0..placed.count)
                .map(|i| {
                    (
                        StreamSequence(placed.first_seq + i),
                        GlobalSequence(placed.global(i)),
                    )
                })
                .collect(),
            committed_at_micros: Some(placed.committed_at_micros),
            idempotent: placed.idempotent,
        }
    }

    pub(crate) fn empty() -> Self {
        Appended {
            stream_id: None,
            positions: Vec::new(),
            committed_at_micros: None,
            idempotent: false,
        }
    }

    /// The stream id the events are in: for an append by entity key, the id
    /// the key maps to. `None` for an empty batch.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.stream_id
    }

    /// Each event's stream and global sequence, in order.
    pub fn positions(&self) -> &[(StreamSequence, GlobalSequence)] {
        &self.positions
    }

    /// The positions, by value.
    pub fn into_positions(self) -> Vec<(StreamSequence, GlobalSequence)> {
        self.positions
    }

    /// The first event's position (`None` for an empty batch).
    pub fn first(&self) -> Option<(StreamSequence, GlobalSequence)> {
        self.positions.first().copied()
    }

    /// The last event's position (`None` for an empty batch).
    pub fn last(&self) -> Option<(StreamSequence, GlobalSequence)> {
        self.positions.last().copied()
    }

    /// When the (first) event was committed: for a retry, the original
    /// commit's time. `None` for an empty batch, which writes nothing.
    pub fn committed_at(&self) -> Option<SystemTime> {
        self.committed_at_micros
            .map(|m| UNIX_EPOCH + Duration::from_micros(m))
    }

    /// Whether every event was already stored by an earlier append with
    /// the same ids: nothing was written, and these are its positions.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

/// The options of one command ([`Varve::execute_with`](crate::Varve::execute_with)):
/// its expected version, its id (from which its events' ids derive, see
/// [`CommandId::event_id`]) and the context stored with its events.
///
/// A command with an id whose events are stored is answered with its
/// original outcome without deciding it again. Without a context, its
/// events get causation = the command id and correlation = the command id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Execute<'a> {
    pub(crate) expected: ExpectedVersion,
    pub(crate) command_id: Option<CommandId>,
    pub(crate) context: Option<&'a Context>,
}

impl<'a> Execute<'a> {
    /// No expectation, no id, no context: like [`Varve::execute`](crate::Varve::execute).
    pub fn new() -> Self {
        Execute::default()
    }

    /// Decide only if the stream id is at `expected`.
    pub fn expected(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }

    /// The command's id: makes a retried command idempotent.
    pub fn command_id(mut self, id: CommandId) -> Self {
        self.command_id = Some(id);
        self
    }

    /// The context stored with the command's events.
    pub fn context(mut self, context: &'a Context) -> Self {
        self.context = Some(context);
        self
    }
}
