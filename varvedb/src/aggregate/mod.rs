//! Aggregates: state folded from one stream id's events, commands decided
//! against it, and the resulting events appended only if decided on the
//! stream id's newest state.
//!
//! - [`Aggregate`]: the user's state type, its events, commands and rejections.
//! - [`Varve::load`](crate::Varve::load), [`StreamReader::load`](crate::StreamReader::load):
//!   fold a stream id into a [`Loaded`] state, zero-copy.
//! - [`Varve::execute`](crate::Varve::execute), [`Varve::execute_expected`](crate::Varve::execute_expected): load and decide on a
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
use crate::metadata::Metadata;
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};

pub(crate) use fold::{execute, load_in, store_loaded};
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
    /// [`Varve::events_in`](crate::Varve::events_in) binds it.
    const STREAM: &'static str = <Self::Event as Event>::STREAM;

    /// Initial capacity, in bytes, of the buffer [`Varve::execute`](crate::Varve::execute) serializes
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
    /// loads and [`Varve::execute`](crate::Varve::execute) call this one.
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
    /// [`Varve::execute`](crate::Varve::execute) may decide it more than once:
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
    /// [`ExpectedVersion::NoStream`]. Pass it to [`Varve::execute_expected`](crate::Varve::execute_expected)
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

/// Why [`Varve::execute`](crate::Varve::execute) did not apply a command: the aggregate rejected
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
