//! `Varve`'s aggregate methods: [`Varve::load`] and [`Varve::execute`] with
//! their variants, over the fold and the execute of [`crate::aggregate`].
//! They live with `Varve` (the top layer) so that `aggregate` stays below it.

use crate::aggregate::{execute, load_in, store_loaded, Aggregate, ExecuteError, Executed, Loaded};
use crate::error::Result;
use crate::metadata::Execute;
use crate::position::{ExpectedVersion, StreamId};
use crate::storage::{Entity, StreamInfo};
use crate::store::Varve;

impl Varve {
    /// `A`'s stream, bound to its event's family as
    /// [`Varve::events_in`] binds it.
    fn aggregate_stream<A: Aggregate>(&self) -> Result<StreamInfo> {
        self.store()
            .open_stream(A::STREAM, &crate::typed::identity::<A::Event>())
    }

    /// Loads aggregate `A` of `id`: its [stored snapshot](crate::Snapshots), if any
    /// and usable, plus every later event, folded in one read snapshot.
    /// Callable from any thread; `Varve` is `Clone + Send + Sync`.
    ///
    /// Opens the stream `A::STREAM` as [`Varve::stream`] does, writing
    /// nothing: a stream id without events, or a stream that does not exist
    /// yet, loads as the default state with version `None`. The one write a
    /// load may make is opt-in: with [`Snapshots::on_load`](crate::Snapshots::on_load), a load that
    /// folded a snapshot interval's worth of events stores the state, after
    /// its read (a failure to store it is ignored).
    ///
    /// # Errors
    /// [`Error::TypeMismatch`](crate::Error::TypeMismatch) if `A::STREAM` holds another event type, and
    /// [`Error::Corruption`](crate::Error::Corruption) if an event fails validation. A damaged or
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
    /// **How it runs.** The state is loaded (from its [snapshot](crate::Snapshots)
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
    /// If the aggregate has [snapshots](crate::Snapshots) and the events folded on
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
    /// [`Loaded::expected`](crate::Loaded::expected)). Otherwise nothing is decided or written and the
    /// error is [`Error::VersionConflict`](crate::Error::VersionConflict), naming the stream, the id and
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
    /// ([`Executed::idempotent`](crate::Executed::idempotent)) *without calling `handle`*, even if the
    /// state changed since (a retry of "withdraw 30" after a timeout must not
    /// withdraw twice, nor be refused because the first attempt drained the
    /// account). A command that produced no events leaves nothing to find: a
    /// retry decides again.
    ///
    /// # Errors
    /// As [`Varve::execute_expected`], plus [`Error::EventIdConflict`](crate::Error::EventIdConflict) if the
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
    /// As [`Varve::execute_with`], plus [`Error::InvalidEntityKey`](crate::Error::InvalidEntityKey).
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
    /// As [`Varve::load`], plus [`Error::InvalidEntityKey`](crate::Error::InvalidEntityKey).
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
        match execute::<A>(self.store(), &info, &entity, command, &options)? {
            Ok(done) => Ok(done),
            Err(rejection) => Err(ExecuteError::Rejected(rejection)),
        }
    }
}
