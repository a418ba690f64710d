//! [`Events`], the write handle of a `#[derive(Event)]` type, opened from the
//! type's own constants by [`Varve::events`](crate::Varve::events).

use std::fmt;

use crate::error::Result;
use crate::event::{layout_fingerprint, Event, Schema};
use crate::metadata::{Append, Appended, Context};
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use crate::reader::StreamReader;
use crate::storage::TypeIdentity;
use crate::stream::{Stream, WithContext};

/// A write handle on the stream of event type `E`, named by `E::STREAM` and
/// with a buffer of `E::BUFFER_SIZE` bytes.
///
/// It behaves like [`Stream`]: appends take `&mut self`, any number of handles
/// may append at once, and every append is durable when it returns. The stream
/// records `E`'s [`FINGERPRINT`](Event::FINGERPRINT), so a later build whose `E`
/// has another layout cannot open it (see [`Varve::events`](crate::Varve::events)).
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{Event, ExpectedVersion, StreamId, StreamSequence, Varve};
///
/// #[derive(Archive, Serialize, Event)]
/// #[event(stream = "accounts")]
/// enum Account {
///     Opened { owner: String },
///     Deposited { cents: u64 },
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let varve = Varve::new(dir.path())?;
/// let mut accounts = varve.events::<Account>()?;
/// assert_eq!(accounts.name(), "accounts");
///
/// let alice = StreamId(1);
/// accounts.append_expected(alice, &Account::Opened { owner: "alice".into() }, ExpectedVersion::NoStream)?;
/// accounts.append_batch(alice, &[Account::Deposited { cents: 100 }, Account::Deposited { cents: 250 }])?;
/// assert_eq!(accounts.version(alice)?, Some(StreamSequence(2)));
///
/// let mut reader = accounts.reader();
/// let last = reader.get_archived(alice, StreamSequence(2))?.expect("just written");
/// assert!(matches!(&*last, ArchivedAccount::Deposited { cents } if *cents == 250));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Events<E> {
    stream: Stream<E, 0>,
}

impl<E> fmt::Debug for Events<E>
where
    E: Event,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("stream", &self.stream.name())
            .field("type", &E::TYPE_NAME)
            .field("buffer", &E::BUFFER_SIZE)
            .finish()
    }
}

/// The identity `E`'s stream is created with or checked against: its event
/// family (name and versions); the type name and layout are recorded for
/// messages and for adopting a stream bound by type name.
pub(crate) fn identity<E: Event>() -> TypeIdentity {
    let schema = Schema::of::<E>();
    TypeIdentity {
        type_name: std::any::type_name::<E>(),
        layout_fingerprint: layout_fingerprint::<E>(),
        schema_fingerprint: schema.fingerprint,
        schema: Some(schema),
    }
}

impl<E: Event> Events<E> {
    /// Wraps a stream opened with [`identity::<E>()`](identity) and a buffer
    /// of `E::BUFFER_SIZE` bytes.
    pub(crate) fn new(stream: Stream<E, 0>) -> Self {
        Events { stream }
    }

    /// The stream's name, `E::STREAM`.
    pub fn name(&self) -> &str {
        self.stream.name()
    }

    /// Appends one event to `id`. Returns its stream sequence and global
    /// sequence.
    ///
    /// # Errors
    /// As [`Stream::append`].
    pub fn append(&mut self, id: StreamId, event: &E) -> Result<(StreamSequence, GlobalSequence)> {
        self.stream.append(id, event)
    }

    /// [`Events::append`] for async code: the append waits for its commit
    /// without stalling the runtime (see [`Varve::run`](crate::Varve::run);
    /// feature `postgres`).
    ///
    /// # Errors
    /// As [`Stream::append`].
    #[cfg(feature = "postgres")]
    pub async fn append_async(
        &mut self,
        id: StreamId,
        event: &E,
    ) -> Result<(StreamSequence, GlobalSequence)> {
        crate::storage::offload(|| self.append(id, event))
    }

    /// [`Events::append_batch`] for async code (see [`Events::append_async`]).
    ///
    /// # Errors
    /// As [`Stream::append_batch`].
    #[cfg(feature = "postgres")]
    pub async fn append_batch_async(
        &mut self,
        id: StreamId,
        events: &[E],
    ) -> Result<Vec<(StreamSequence, GlobalSequence)>> {
        crate::storage::offload(|| self.append_batch(id, events))
    }

    /// [`Events::append_expected`] for async code (see [`Events::append_async`]).
    ///
    /// # Errors
    /// As [`Stream::append_expected`].
    #[cfg(feature = "postgres")]
    pub async fn append_expected_async(
        &mut self,
        id: StreamId,
        event: &E,
        expected: ExpectedVersion,
    ) -> Result<(StreamSequence, GlobalSequence)> {
        crate::storage::offload(|| self.append_expected(id, event, expected))
    }

    /// Appends one event if `id`'s version matches `expected`; otherwise
    /// writes nothing and returns [`Error::VersionConflict`](crate::Error::VersionConflict).
    ///
    /// # Errors
    /// As [`Stream::append_expected`].
    pub fn append_expected(
        &mut self,
        id: StreamId,
        event: &E,
        expected: ExpectedVersion,
    ) -> Result<(StreamSequence, GlobalSequence)> {
        self.stream.append_expected(id, event, expected)
    }

    /// Appends `events` to `id` atomically, at consecutive positions. An empty
    /// slice writes nothing.
    ///
    /// # Errors
    /// As [`Stream::append_batch`].
    pub fn append_batch(
        &mut self,
        id: StreamId,
        events: &[E],
    ) -> Result<Vec<(StreamSequence, GlobalSequence)>> {
        self.stream.append_batch(id, events)
    }

    /// [`Events::append_batch`] with an optimistic-concurrency check on `id`'s
    /// version before the batch.
    ///
    /// # Errors
    /// As [`Stream::append_batch_expected`].
    pub fn append_batch_expected(
        &mut self,
        id: StreamId,
        events: &[E],
        expected: ExpectedVersion,
    ) -> Result<Vec<(StreamSequence, GlobalSequence)>> {
        self.stream.append_batch_expected(id, events, expected)
    }

    /// Appends one event with options (ids, context, expected version).
    ///
    /// # Errors
    /// As [`Stream::append_with`].
    pub fn append_with(
        &mut self,
        id: StreamId,
        event: &E,
        options: Append<'_>,
    ) -> Result<Appended> {
        self.stream.append_with(id, event, options)
    }

    /// Appends `events` atomically with options.
    ///
    /// # Errors
    /// As [`Stream::append_batch_with`].
    pub fn append_batch_with(
        &mut self,
        id: StreamId,
        events: &[E],
        options: Append<'_>,
    ) -> Result<Appended> {
        self.stream.append_batch_with(id, events, options)
    }

    /// Appends one event to the stream id of entity `key`.
    ///
    /// # Errors
    /// As [`Stream::append_keyed`].
    pub fn append_keyed(&mut self, key: impl AsRef<[u8]>, event: &E) -> Result<Appended> {
        self.stream.append_keyed(key, event)
    }

    /// A handle appending with `context`.
    pub fn with_context(&mut self, context: Context) -> WithContext<'_, E, 0> {
        self.stream.with_context(context)
    }

    /// A reader for this stream. Readers are cheap, `Clone` and `Send`.
    pub fn reader(&self) -> StreamReader<E> {
        self.stream.reader()
    }

    /// [`Stream::erase`]: erases entity `id` of this stream (crypto-shredding;
    /// see [`VarveConfig::key_vault`](crate::VarveConfig::key_vault)).
    ///
    /// # Errors
    /// As [`Stream::erase`].
    pub fn erase(&mut self, id: StreamId) -> Result<crate::Erasure> {
        self.stream.erase(id)
    }

    /// [`Stream::erase_keyed`]: erases the stream id entity `key` maps to.
    ///
    /// # Errors
    /// As [`Stream::erase_keyed`].
    pub fn erase_keyed(&mut self, key: impl AsRef<[u8]>) -> Result<crate::Erasure> {
        self.stream.erase_keyed(key)
    }

    /// The last stream sequence of `id`, or `None` if it has no events.
    pub fn version(&self, id: StreamId) -> Result<Option<StreamSequence>> {
        self.stream.version(id)
    }
}

#[cfg(test)]
mod tests {
    use rkyv::{Archive, Serialize};

    use std::sync::Arc;

    use super::*;
    use crate::config::VarveConfig;
    use crate::error::Error;
    use crate::storage::Store;

    #[derive(Archive, Serialize)]
    struct Renamed {
        _to: u64,
    }

    impl Event for Renamed {
        const STREAM: &'static str = "renames";
        const BUFFER_SIZE: usize = 64;
        const TYPE_NAME: &'static str = "varvedb::typed::tests::Renamed";
        const VERSION: u32 = 1;
        const FINGERPRINT: u64 = 0x1234;
        const NAME: &'static str = "Renamed";
        type Previous = crate::event::NoPrevious;
        fn upcast(previous: &crate::event::NoPrevious) -> Self {
            match *previous {}
        }
    }

    /// The same type path with another schema fingerprint stands for the type
    /// as a later build declares it (a field added, the version bumped).
    #[test]
    fn a_changed_fingerprint_cannot_open_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        let recorded = store
            .open_stream(Renamed::STREAM, &identity::<Renamed>())
            .unwrap();
        assert_eq!(recorded.schema_fingerprint, 0x1234);
        // The first append creates the stream, recording the fingerprint.
        Events::new(Stream::<Renamed, 0>::new(Arc::clone(&store), recorded, 64))
            .append(crate::StreamId(1), &Renamed { _to: 1 })
            .unwrap();

        // Version 1 with another layout: changed without a new version.
        let mut schema = Schema::of::<Renamed>();
        schema.fingerprint = 0x5678;
        schema.chain = || vec![(1, 0x5678)];
        let later = TypeIdentity {
            schema_fingerprint: 0x5678,
            schema: Some(schema),
            ..identity::<Renamed>()
        };
        match store.open_stream(Renamed::STREAM, &later) {
            Err(Error::SchemaMismatch {
                stored,
                stored_versions,
                requested_versions,
                advice,
                ..
            }) => {
                assert_eq!(stored, "Renamed");
                assert_eq!(
                    (&*stored_versions, &*requested_versions),
                    (&[(1, 0x1234)][..], &[(1, 0x5678)][..])
                );
                assert!(advice.contains("new version"), "{advice}");
            }
            other => panic!("expected SchemaMismatch, got {other:?}"),
        }
        assert!(store
            .open_stream(Renamed::STREAM, &identity::<Renamed>())
            .is_ok());

        // The same from disk, without the in-memory catalog cache.
        drop(store);
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        assert!(matches!(
            store.open_stream(Renamed::STREAM, &later),
            Err(Error::SchemaMismatch { .. })
        ));
    }
}
