//! Aggregates: state folded from one stream id's events, commands decided
//! against it, and the resulting events appended only if decided on the
//! stream id's newest state.
//!
//! - [`Aggregate`]: the user's state type, its events, commands and rejections.
//! - [`Varve::load`], [`StreamReader::load`](crate::StreamReader::load):
//!   fold a stream id into a [`Loaded`] state, zero-copy.
//! - [`Varve::execute`], [`Varve::execute_expected`]: load and decide on a
//!   read snapshot, append in a write transaction that folds only the events
//!   committed since (deciding again if there were any), returning an
//!   [`Executed`] or an [`ExecuteError`].
//! - [`Snapshots`]: opt-in stored states, so loads fold only the tail.
//! - [`AggregateTest`]: given / when / then tests of an aggregate's logic.

mod fold;
mod snapshot;
mod testing;

use std::fmt;

use rkyv::Archive;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::metadata::{Execute, Metadata};
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use crate::storage::{Entity, StreamInfo};
use crate::store::Varve;

pub(crate) use fold::{load_in, store_loaded};
pub use snapshot::Snapshots;
pub use testing::{AggregateTest, TestOutcome};

/// A state rebuilt from the events of one stream id, and the business rules
/// that decide which events a command produces.
///
/// - [`apply`](Aggregate::apply) folds one event into the state. It reads the
///   *archived* event straight from the memory map (no deserialization, no
///   allocation) and holds no logic: an event is a fact that already happened.
/// - [`handle`](Aggregate::handle) decides: it checks a command against the
///   state and returns the events to append, or a rejection of the
///   aggregate's own [`Error`](Aggregate::Error) type.
///
/// The initial state (before any event) is [`Default`]. An aggregate lives in
/// the stream [`STREAM`](Aggregate::STREAM); each [`StreamId`] of it is one
/// instance (one account, one order).
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{Aggregate, ExecuteError, StreamId, StreamSequence, Varve};
///
/// #[derive(Archive, Serialize, Debug, PartialEq, varvedb::Event)]
/// enum CounterEvent {
///     Added(u64),
///     Reset,
/// }
///
/// #[derive(Default, Debug)]
/// struct Counter {
///     value: u64,
/// }
///
/// enum CounterCommand {
///     Add(u64),
///     Reset,
/// }
///
/// #[derive(Debug, PartialEq)]
/// struct Overflow;
///
/// impl std::fmt::Display for Overflow {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("the counter would overflow")
///     }
/// }
///
/// impl std::error::Error for Overflow {}
///
/// impl Aggregate for Counter {
///     type Event = CounterEvent;
///     type Command = CounterCommand;
///     type Error = Overflow;
///     const STREAM: &'static str = "counters";
///
///     fn apply(&mut self, event: &ArchivedCounterEvent) {
///         match event {
///             ArchivedCounterEvent::Added(n) => self.value += n.to_native(),
///             ArchivedCounterEvent::Reset => self.value = 0,
///         }
///     }
///
///     fn handle(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, Overflow> {
///         match *command {
///             CounterCommand::Add(n) => {
///                 self.value.checked_add(n).ok_or(Overflow)?;
///                 Ok(vec![CounterEvent::Added(n)])
///             }
///             CounterCommand::Reset => Ok(vec![CounterEvent::Reset]),
///         }
///     }
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let varve = Varve::new(dir.path())?;
/// let id = StreamId(1);
/// varve.execute::<Counter>(id, &CounterCommand::Add(40))?;
/// let done = varve.execute::<Counter>(id, &CounterCommand::Add(2))?;
/// assert_eq!((done.state.value, done.version), (42, Some(StreamSequence(1))));
///
/// // A rejection writes nothing and is the aggregate's own error.
/// let overflow = varve.execute::<Counter>(id, &CounterCommand::Add(u64::MAX));
/// assert!(matches!(overflow, Err(ExecuteError::Rejected(Overflow))));
///
/// let loaded = varve.load::<Counter>(id)?;
/// assert_eq!((loaded.state.value, loaded.version), (42, Some(StreamSequence(1))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Aggregate: Default {
    /// The events of the aggregate's stream: usually an enum with one
    /// past-tense variant per fact, with `#[derive(Event)]`, so the stream
    /// is bound to its name and versions and every read is checked (an
    /// older version's events are upcast before [`apply`](Aggregate::apply)
    /// sees them).
    type Event: Event;
    /// What callers ask the aggregate to do.
    type Command;
    /// Why a command is rejected (a business rule), as opposed to a store
    /// failure ([`ExecuteError::Store`]).
    type Error;

    /// The stream the aggregate's events live in: by default the event's
    /// own [`STREAM`](Event::STREAM). It is bound to the event's family as
    /// [`Varve::events_in`] binds it.
    const STREAM: &'static str = <Self::Event as Event>::STREAM;

    /// Initial capacity, in bytes, of the buffer [`Varve::execute`] serializes
    /// a command's events into. Larger events still succeed: it grows.
    const BUFFER_SIZE: usize = 1024;

    /// Folds one event into the state. The event is the archived form, read
    /// in place from the store (or, in [`AggregateTest`], from its serialized
    /// bytes), exactly as production reads it.
    ///
    /// It must not fail or decide anything: events are facts. Logic here runs
    /// on every load, and a [snapshot](Snapshots) stores its result.
    fn apply(&mut self, event: &<Self::Event as Archive>::Archived);

    /// [`apply`](Aggregate::apply) with the event's [`Metadata`] (its id,
    /// correlation, causation, user bytes). Calls `apply` unless overridden;
    /// loads and [`Varve::execute`] call this one.
    fn apply_with_meta(
        &mut self,
        event: &<Self::Event as Archive>::Archived,
        metadata: &Metadata<'_>,
    ) {
        let _ = metadata;
        self.apply(event);
    }

    /// Decides a command against the current state: the events to append
    /// (possibly none), or a rejection.
    ///
    /// It must be a pure function of the state and the command (as in
    /// cqrs-es and most event-sourcing libraries): no I/O, no side effect
    /// that must happen once. The command is borrowed because
    /// [`Varve::execute`] may decide it more than once:
    ///
    /// - first on the state in a read snapshot, outside the store's write
    ///   lock, so a long fold or decision holds up no other writer;
    /// - again, inside a write transaction, if events were committed to the
    ///   same stream id between that read and the append (another command
    ///   or append won the race): the state is brought up to date with them
    ///   and the command decided on it, and the first decision is discarded;
    /// - again if that write transaction (one that also stores a
    ///   [snapshot](Snapshots)) is rolled back to grow the store's map.
    ///
    /// Only the last decision's events are appended. Since the second and
    /// third cases run inside the write transaction, `handle` must not write
    /// to the store itself (that would wait forever).
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Whether and how often the state is stored: [`Snapshots::never`]
    /// unless overridden. See [`Snapshots`].
    fn snapshots() -> Snapshots<Self> {
        Snapshots::never()
    }
}

/// A state loaded from the store: the fold of a stream id's events.
///
/// ```
/// use varvedb::{ExpectedVersion, Loaded, StreamSequence};
/// let fresh = Loaded { state: 0u64, version: None, snapshot: None };
/// assert_eq!(fresh.expected(), ExpectedVersion::NoStream);
/// let later = Loaded { state: 7u64, version: Some(StreamSequence(3)), snapshot: None };
/// assert_eq!(later.expected(), ExpectedVersion::Exact(StreamSequence(3)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The state after every event of the stream id.
    pub state: A,
    /// The stream sequence of the last event folded in, or `None` for a
    /// stream id without events (then `state` is the default).
    pub version: Option<StreamSequence>,
    /// The last stream sequence covered by the stored snapshot the fold
    /// started from, or `None` if it replayed every event (snapshots off,
    /// none stored yet, or the stored one unusable and ignored).
    pub snapshot: Option<StreamSequence>,
}

impl<A> Loaded<A> {
    /// The expectation that holds while nobody else has appended since this
    /// load: [`ExpectedVersion::Exact`] of `version`, or
    /// [`ExpectedVersion::NoStream`]. Pass it to [`Varve::execute_expected`]
    /// to decide a later command only against this state's version.
    pub fn expected(&self) -> ExpectedVersion {
        match self.version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        }
    }
}

/// The result of a command that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed<A> {
    /// The state after the new events, folded from their stored (archived)
    /// form.
    pub state: A,
    /// The stream id's version after the command: its last event.
    pub version: Option<StreamSequence>,
    /// Where each new event was written, in order; empty if the command
    /// produced no event.
    pub positions: Vec<(StreamSequence, GlobalSequence)>,
    /// Whether this is the original outcome of a command executed before
    /// with the same [`CommandId`](crate::CommandId): nothing was decided or
    /// written, `positions` are where its events were written, and `state`
    /// and `version` are as they were right after them.
    pub idempotent: bool,
}

/// Why [`Varve::execute`] did not apply a command: the aggregate rejected
/// it, or the store failed. Either way nothing was written.
///
/// ```
/// use varvedb::{Error, ExecuteError};
/// let rejected: ExecuteError<&str> = ExecuteError::Rejected("insufficient funds");
/// assert_eq!(rejected.to_string(), "command rejected: insufficient funds");
/// let failed: ExecuteError<&str> = Error::ReadersFull { max: 126 }.into();
/// assert!(matches!(failed, ExecuteError::Store(Error::ReadersFull { .. })));
/// ```
#[derive(Debug)]
pub enum ExecuteError<E> {
    /// The aggregate's [`handle`](Aggregate::handle) rejected the command.
    Rejected(E),
    /// The store failed, or an expected version did not match
    /// ([`Error::VersionConflict`]).
    Store(Error),
}

impl<E> ExecuteError<E> {
    /// The rejection, if the aggregate rejected the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            ExecuteError::Rejected(e) => Some(e),
            ExecuteError::Store(_) => None,
        }
    }
}

impl<E> From<Error> for ExecuteError<E> {
    fn from(e: Error) -> Self {
        ExecuteError::Store(e)
    }
}

impl<E: fmt::Display> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::Rejected(e) => write!(f, "command rejected: {e}"),
            ExecuteError::Store(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::Rejected(e) => Some(e),
            ExecuteError::Store(e) => Some(e),
        }
    }
}

impl Varve {
    /// `A`'s stream, bound to its event's family as
    /// [`Varve::events_in`] binds it.
    fn aggregate_stream<A: Aggregate>(&self) -> Result<StreamInfo> {
        self.store()
            .open_stream(A::STREAM, &crate::typed::identity::<A::Event>())
    }

    /// Loads aggregate `A` of `id`: its [stored snapshot](Snapshots), if any
    /// and usable, plus every later event, folded in one read snapshot.
    /// Callable from any thread; `Varve` is `Clone + Send + Sync`.
    ///
    /// Opens the stream `A::STREAM` as [`Varve::stream`] does, writing
    /// nothing: a stream id without events, or a stream that does not exist
    /// yet, loads as the default state with version `None`. The one write a
    /// load may make is opt-in: with [`Snapshots::on_load`], a load that
    /// folded a snapshot interval's worth of events stores the state, after
    /// its read (a failure to store it is ignored).
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if `A::STREAM` holds another event type, and
    /// [`Error::Corruption`] if an event fails validation. A damaged or
    /// outdated snapshot is not an error: it is ignored and every event
    /// replayed.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # use varvedb::{Aggregate, StreamId, StreamSequence, Varve};
    /// # #[derive(Archive, Serialize, varvedb::Event)] struct Visited;
    /// # #[derive(Default)] struct Visits(u64);
    /// # impl Aggregate for Visits {
    /// #     type Event = Visited; type Command = (); type Error = std::convert::Infallible;
    /// #     const STREAM: &'static str = "visits";
    /// #     fn apply(&mut self, _: &ArchivedVisited) { self.0 += 1 }
    /// #     fn handle(&self, _: &()) -> Result<Vec<Visited>, Self::Error> { Ok(vec![Visited]) }
    /// # }
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// let page = StreamId(3);
    /// assert_eq!(varve.load::<Visits>(page)?.version, None);
    ///
    /// varve.events_in::<Visited>("visits")?.append_batch(page, &[Visited, Visited])?;
    /// let loaded = varve.load::<Visits>(page)?;
    /// assert_eq!((loaded.state.0, loaded.version), (2, Some(StreamSequence(1))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load<A: Aggregate>(&self, id: StreamId) -> Result<Loaded<A>> {
        let info = self.aggregate_stream::<A>()?;
        let loaded = load_in(&mut self.store().snapshot()?, &info, id)?;
        // The read snapshot is closed: storing the state cannot wait on it.
        store_loaded(self.store(), &info, id, &loaded);
        Ok(loaded)
    }

    /// Loads aggregate `A` of `id`, decides `command` against it and appends
    /// the resulting events, as one atomic step: no other writer can append
    /// to `id` between the state the command was decided on and its events,
    /// so in-process callers never see a conflict and no update is lost.
    /// Returns the new state and where the events were written.
    ///
    /// **How it runs.** The state is loaded (from its [snapshot](Snapshots)
    /// if any, plus the later events) and the command decided in a read
    /// snapshot, *outside* the store's write lock: folding a long stream id
    /// and deciding hold up no other writer. Only the append takes the lock,
    /// on condition that nothing was committed to `id` since the read (the
    /// usual case): then the events decided are appended as they are,
    /// sharing a durable commit with concurrent appends (group commit). If
    /// something was committed, a write transaction of the command's own
    /// folds just those new events into the state, calls
    /// [`handle`](Aggregate::handle) again on it, and appends what that
    /// decides (or returns its rejection). So `handle` may be called twice
    /// for one command and must be pure: see [`Aggregate::handle`]. An
    /// outcome that writes nothing (a rejection, a command producing no
    /// event) is answered from the read snapshot, without a write
    /// transaction: it is the outcome the command had on the store as the
    /// read saw it.
    ///
    /// If the aggregate has [snapshots](Snapshots) and the events folded on
    /// top of the last usable snapshot reach its interval, the new state is
    /// stored in the same transaction as the events (a command whose
    /// snapshot is due takes the write transaction of its own).
    ///
    /// # Errors
    /// [`ExecuteError::Rejected`] with the aggregate's error if
    /// [`handle`](Aggregate::handle) rejects the command, and
    /// [`ExecuteError::Store`] for the errors of [`Varve::load`] and of
    /// [`Stream::append_batch`](crate::Stream::append_batch). Nothing is
    /// written in either case.
    ///
    /// See [`Aggregate`] for an example.
    pub fn execute<A: Aggregate>(
        &self,
        id: StreamId,
        command: &A::Command,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        self.execute_expected(id, command, ExpectedVersion::Any)
    }

    /// [`Varve::execute`] for a caller that decided on a state it loaded
    /// earlier (an HTTP client holding a version between requests): the
    /// command is decided only if `id` is still at `expected` (usually
    /// [`Loaded::expected`]). Otherwise nothing is decided or written and the
    /// error is [`Error::VersionConflict`], naming the stream, the id and
    /// both versions. The version is checked on the read snapshot the
    /// command is decided on and again in the write transaction, where an
    /// append that raced the decision is found: exactly one command wins
    /// each version.
    ///
    /// # Errors
    /// As [`Varve::execute`], plus the conflict above.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # use varvedb::{Aggregate, StreamId, Varve};
    /// # #[derive(Archive, Serialize, varvedb::Event)] struct Visited;
    /// # #[derive(Default)] struct Visits(u64);
    /// # impl Aggregate for Visits {
    /// #     type Event = Visited; type Command = (); type Error = std::convert::Infallible;
    /// #     const STREAM: &'static str = "visits";
    /// #     fn apply(&mut self, _: &ArchivedVisited) { self.0 += 1 }
    /// #     fn handle(&self, _: &()) -> Result<Vec<Visited>, Self::Error> { Ok(vec![Visited]) }
    /// # }
    /// use varvedb::{Error, ExecuteError};
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// let page = StreamId(1);
    ///
    /// // Two clients read the same version...
    /// let first = varve.load::<Visits>(page)?;
    /// let second = varve.load::<Visits>(page)?;
    /// // ...the first one's command goes through...
    /// varve.execute_expected::<Visits>(page, &(), first.expected())?;
    /// // ...and the second one, now stale, is refused: it must reload.
    /// let stale = varve.execute_expected::<Visits>(page, &(), second.expected());
    /// assert!(matches!(stale, Err(ExecuteError::Store(Error::VersionConflict { .. }))));
    /// assert_eq!(varve.load::<Visits>(page)?.state.0, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute_expected<A: Aggregate>(
        &self,
        id: StreamId,
        command: &A::Command,
        expected: ExpectedVersion,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        self.execute_with::<A>(id, command, Execute::new().expected(expected))
    }

    /// [`Varve::execute`] with options: an expected version, a
    /// [`CommandId`](crate::CommandId), a [`Context`](crate::Context) for the
    /// events.
    ///
    /// **Idempotent commands.** With a command id, the events' ids derive
    /// from it ([`CommandId::event_id`](crate::CommandId::event_id)), and a
    /// command whose events are stored is answered with its original outcome
    /// ([`Executed::idempotent`]) *without calling `handle`*, even if the
    /// state changed since (a retry of "withdraw 30" after a timeout must not
    /// withdraw twice, nor be refused because the first attempt drained the
    /// account). A command that produced no events leaves nothing to find: a
    /// retry decides again.
    ///
    /// # Errors
    /// As [`Varve::execute_expected`], plus [`Error::EventIdConflict`] if the
    /// command id was used for another stream id.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # use varvedb::{Aggregate, StreamId, Varve};
    /// # #[derive(Archive, Serialize, varvedb::Event)] struct Withdrew(u64);
    /// # #[derive(Default)] struct Account(u64);
    /// # impl Aggregate for Account {
    /// #     type Event = Withdrew; type Command = u64; type Error = &'static str;
    /// #     const STREAM: &'static str = "accounts";
    /// #     fn apply(&mut self, e: &ArchivedWithdrew) { self.0 += e.0.to_native() }
    /// #     fn handle(&self, c: &u64) -> Result<Vec<Withdrew>, &'static str> {
    /// #         if self.0 + c > 50 { Err("over the limit") } else { Ok(vec![Withdrew(*c)]) } }
    /// # }
    /// use varvedb::{CommandId, Execute};
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// let request = Execute::new().command_id(CommandId::from_u128(0xbeef));
    /// let first = varve.execute_with::<Account>(StreamId(1), &30, request).map_err(|e| e.to_string())?;
    /// // The client timed out and retries: the original answer, not "over the limit".
    /// let retry = varve.execute_with::<Account>(StreamId(1), &30, request).map_err(|e| e.to_string())?;
    /// assert!(retry.idempotent && !first.idempotent);
    /// assert_eq!((retry.positions, retry.state.0), (first.positions, 30));
    /// assert_eq!(varve.load::<Account>(StreamId(1))?.state.0, 30);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute_with<A: Aggregate>(
        &self,
        id: StreamId,
        command: &A::Command,
        options: Execute<'_>,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        self.execute_entity::<A>(Entity::Id(id.0), command, options)
    }

    /// [`Varve::execute_with`] on the stream id of entity `key` (allocated
    /// in the command's transaction if the key is new; see
    /// [`StreamReader::entity_id`](crate::StreamReader::entity_id)).
    ///
    /// # Errors
    /// As [`Varve::execute_with`], plus [`Error::InvalidEntityKey`].
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # use varvedb::{Aggregate, Varve};
    /// # #[derive(Archive, Serialize, varvedb::Event)] struct Added(u64);
    /// # #[derive(Default)] struct Cart(u64);
    /// # impl Aggregate for Cart {
    /// #     type Event = Added; type Command = u64; type Error = std::convert::Infallible;
    /// #     const STREAM: &'static str = "carts";
    /// #     fn apply(&mut self, e: &ArchivedAdded) { self.0 += e.0.to_native() }
    /// #     fn handle(&self, c: &u64) -> Result<Vec<Added>, Self::Error> { Ok(vec![Added(*c)]) }
    /// # }
    /// use varvedb::Execute;
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// varve.execute_keyed::<Cart>("cart-3f9a", &2, Execute::new())?;
    /// varve.execute_keyed::<Cart>("cart-3f9a", &5, Execute::new())?;
    /// assert_eq!(varve.load_keyed::<Cart>("cart-3f9a")?.state.0, 7);
    /// assert_eq!(varve.load_keyed::<Cart>("cart-0000")?.version, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute_keyed<A: Aggregate>(
        &self,
        key: impl AsRef<[u8]>,
        command: &A::Command,
        options: Execute<'_>,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let key = crate::entity::check_key(A::STREAM, key.as_ref())?;
        self.execute_entity::<A>(Entity::Key(key.into()), command, options)
    }

    /// [`Varve::load`] of the stream id of entity `key`: the default state
    /// (version `None`) if the key was never used. Allocates nothing.
    ///
    /// # Errors
    /// As [`Varve::load`], plus [`Error::InvalidEntityKey`].
    pub fn load_keyed<A: Aggregate>(&self, key: impl AsRef<[u8]>) -> Result<Loaded<A>> {
        let key = crate::entity::check_key(A::STREAM, key.as_ref())?;
        let info = self.aggregate_stream::<A>()?;
        let mut view = self.store().snapshot()?;
        let id = match view.stream_tag(&info)? {
            Some(tag) => view.entity_id(tag, key)?,
            None => None,
        };
        let Some(id) = id.map(StreamId) else {
            return Ok(Loaded {
                state: A::default(),
                version: None,
                snapshot: None,
            });
        };
        let loaded = load_in(&mut view, &info, id)?;
        drop(view);
        store_loaded(self.store(), &info, id, &loaded);
        Ok(loaded)
    }

    fn execute_entity<A: Aggregate>(
        &self,
        entity: Entity,
        command: &A::Command,
        options: Execute<'_>,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let info = self.aggregate_stream::<A>()?;
        match fold::execute::<A>(self.store(), &info, &entity, command, &options)? {
            Ok(done) => Ok(done),
            Err(rejection) => Err(ExecuteError::Rejected(rejection)),
        }
    }
}

impl<T: crate::event::Archivable> crate::reader::StreamReader<T> {
    /// Loads aggregate `A` of `id` from this reader's stream (which need not
    /// be named `A::STREAM`), as [`Varve::load`](crate::Varve::load) does:
    /// a usable snapshot plus the later events, folded zero-copy in one
    /// snapshot of the store, reusing the reader's snapshot when no commit
    /// happened since its last call.
    ///
    /// # Errors
    /// [`Error::Corruption`] if an event fails validation.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # use varvedb::{Aggregate, StreamId, Varve};
    /// #[derive(Archive, Serialize, varvedb::Event)]
    /// struct Rated(u8);
    ///
    /// #[derive(Default)]
    /// struct Rating { count: u32, sum: u32 }
    ///
    /// impl Aggregate for Rating {
    ///     type Event = Rated;
    ///     type Command = u8;
    ///     type Error = std::convert::Infallible;
    ///     const STREAM: &'static str = "ratings";
    ///     fn apply(&mut self, event: &ArchivedRated) {
    ///         self.count += 1;
    ///         self.sum += u32::from(event.0);
    ///     }
    ///     fn handle(&self, stars: &u8) -> Result<Vec<Rated>, Self::Error> {
    ///         Ok(vec![Rated(*stars)])
    ///     }
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let varve = Varve::new(dir.path())?;
    /// let mut ratings = varve.events_in::<Rated>("ratings")?;
    /// ratings.append_batch(StreamId(4), &[Rated(5), Rated(3)])?;
    ///
    /// let mut reader = ratings.reader();
    /// let handle = std::thread::spawn(move || reader.load::<Rating>(StreamId(4)));
    /// let rating = handle.join().expect("no panic")?.state;
    /// assert_eq!((rating.count, rating.sum), (2, 8));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load<A: Aggregate<Event = T>>(&mut self, id: StreamId) -> Result<Loaded<A>> {
        let (store, info, view) = self.parts();
        let loaded = {
            let mut slot = view.lock();
            let view = crate::reader::current_view(store, &mut slot)?;
            load_in(view, info, id)?
        };
        // With the slot released, so that a map growth the write needs can
        // close the cached snapshot.
        store_loaded(store, info, id, &loaded);
        Ok(loaded)
    }
}
