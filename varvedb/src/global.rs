//! Reading the whole log in global order: [`GlobalReader`], [`GlobalEvent`], [`GlobalIter`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Location, Result};
use crate::event::{layout_fingerprint, Archivable};
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::{current_view, owned_view, EventRef};
use crate::storage::{ArchivedRef, GlobalCursor, MappedEvent, Store, StreamInfo, View};

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
    view: Option<View>,
}

impl Clone for GlobalReader {
    fn clone(&self) -> Self {
        GlobalReader {
            store: Arc::clone(&self.store),
            view: None,
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
        GlobalReader { store, view: None }
    }

    /// The event at `global`, or `Ok(None)` past the end of the log.
    pub fn get(&mut self, global: GlobalSequence) -> Result<Option<GlobalEvent>> {
        let view = current_view(&self.store, &mut self.view)?;
        match view.event_at_global(global.0)? {
            Some(event) => {
                let stream = view.stream_by_tag(event.position.stream_tag)?;
                Ok(Some(GlobalEvent { event, stream }))
            }
            None => Ok(None),
        }
    }

    /// A lazy iterator over every event from `from` to the end of the log as
    /// of now, in one consistent snapshot.
    pub fn iter_from(&mut self, from: GlobalSequence) -> Result<GlobalIter> {
        let view = owned_view(&self.store, &mut self.view)?;
        Ok(GlobalIter {
            cursor: GlobalCursor::new(view, from.0),
            last: None,
            failed: false,
        })
    }

    /// One past the newest global sequence: the number of events in the store.
    pub fn end(&mut self) -> Result<GlobalSequence> {
        current_view(&self.store, &mut self.view)?
            .end_global()
            .map(GlobalSequence)
    }

    /// Releases the snapshot this reader keeps between calls.
    pub fn release(&mut self) {
        self.view = None;
    }
}

/// One event read from the global log: where it belongs and its archived payload.
pub struct GlobalEvent {
    event: MappedEvent,
    stream: Arc<StreamInfo>,
}

impl GlobalEvent {
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

    /// Whether the event's stream holds events of type `T`.
    pub fn is<T: Archivable>(&self) -> bool {
        *self.stream.type_name == *std::any::type_name::<T>()
            && self.stream.layout_fingerprint == layout_fingerprint::<T>()
    }

    /// The payload as a validated archived `T`, zero-copy.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if the event's stream holds another type,
    /// [`Error::Corruption`] if the bytes fail validation.
    pub fn archived<T: Archivable>(&self) -> Result<EventRef<T>> {
        if !self.is::<T>() {
            return Err(Error::TypeMismatch {
                stream: self.stream.name.to_string(),
                stored: self.stream.type_name.to_string(),
                stored_fingerprint: self.stream.layout_fingerprint,
                requested: std::any::type_name::<T>().to_string(),
                requested_fingerprint: layout_fingerprint::<T>(),
            });
        }
        let position = self.event.position;
        let archived = ArchivedRef::new(
            self.event.share(),
            rkyv::access::<T::Archived, rkyv::rancor::Error>,
        )
        .map_err(|e| Error::Corruption {
            location: Location::Global(position.global),
            detail: format!("invalid archived event: {e}"),
        })?;
        Ok(EventRef::from_parts(archived, position))
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
            Some(info) if info.tag == tag => Arc::clone(info),
            _ => match self.cursor.view_mut().stream_by_tag(tag) {
                Ok(info) => {
                    self.last = Some(Arc::clone(&info));
                    info
                }
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok(GlobalEvent { event, stream }))
    }
}

impl fmt::Debug for GlobalIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalIter").finish_non_exhaustive()
    }
}
