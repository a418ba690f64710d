//! Subscriptions: follow the log as it grows. [`Subscription`] yields every
//! event of the store in global order from a position, catching up on history
//! and then waiting for new commits; [`StreamSubscription`] does the same for
//! one stream id, typed.
//!
//! A subscription may start anywhere, including past the end of the log (or
//! of its stream id): it then waits for that position, as a subscription from
//! a position does in KurrentDB. Its first event is the one at the requested
//! position once committed; the events committed before it are not yielded.
//!
//! A waiting subscription is woken at once when a commit of this process
//! adds events (commits that only write state, such as projection
//! checkpoints, wake nobody), and notices commits of other processes within
//! [`VarveConfig::cross_process_poll`](crate::VarveConfig::cross_process_poll)
//! (50 ms by default; never, when that is `None`). It reads in short
//! pages (at most 512 events or 100 ms per snapshot) and holds no snapshot
//! while it waits, so it never keeps LMDB from reusing pages for long.

#[cfg(feature = "async")]
mod asynchronous;
mod filter;
mod follow;
mod stop;
mod watcher;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::Archivable;
use crate::global::{GlobalEvent, GlobalIter};
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::{EventRef, StreamIter};
use crate::storage::{EventPosition, Store, StreamInfo, View, CROSS_PROCESS_POLL};

#[cfg(feature = "async")]
pub use asynchronous::{AsyncStreamSubscription, AsyncSubscription};
pub use filter::Filter;
pub(crate) use filter::FilterCache;
pub(crate) use follow::{Follower, Pager, Step};
pub use stop::StopHandle;
pub use watcher::WriteWatcher;

/// Reads the global log from a position, applying a filter.
pub(crate) struct GlobalPager {
    next: u64,
    filter: FilterCache,
    /// The last event read (filtered out or not): checked after the server
    /// may have lost commits ([`Pager::check_delivered`]).
    last: Option<EventPosition>,
}

impl GlobalPager {
    pub(crate) fn new(from: GlobalSequence, filter: Filter) -> Self {
        GlobalPager {
            next: from.0,
            filter: FilterCache::new(filter),
            last: None,
        }
    }

    pub(crate) fn position(&self) -> GlobalSequence {
        GlobalSequence(self.next)
    }
}

impl Pager for GlobalPager {
    type Item = GlobalEvent;
    type Page = GlobalIter;

    fn open(&mut self, view: View) -> GlobalIter {
        GlobalIter::from_view(view, self.next)
    }

    fn accept(&mut self, event: &GlobalEvent) -> bool {
        self.next = event.global_sequence().0 + 1;
        self.last = Some(event.position());
        self.filter.matches(event)
    }

    fn log_position(&self) -> Option<u64> {
        Some(self.next)
    }

    fn check_delivered(&mut self, view: &mut View, end: u64) -> Result<()> {
        let Some(last) = self.last else {
            return Ok(());
        };
        let g = last.global.0;
        let found = match g < end {
            true => view.event_at_global(g)?.map(|e| e.position),
            false => None,
        };
        if found == Some(last) {
            return Ok(());
        }
        Err(Error::CommitsLost {
            delivered: GlobalSequence(g),
            end: GlobalSequence(end),
            resume: GlobalSequence(g.min(end)),
        })
    }
}

/// Reads one stream id from a stream sequence.
pub(crate) struct StreamPager<T> {
    info: StreamInfo,
    id: StreamId,
    next: u64,
    _event: PhantomData<fn() -> T>,
}

impl<T: Archivable> Pager for StreamPager<T> {
    type Item = EventRef<T>;
    type Page = StreamIter<T>;

    fn open(&mut self, view: View) -> StreamIter<T> {
        StreamIter::from_view(view, self.info.clone(), self.id, self.next)
    }

    fn accept(&mut self, event: &EventRef<T>) -> bool {
        self.next = event.stream_sequence().0 + 1;
        true
    }
}

/// Every event of the store in global order from a position: the history
/// first, then each new commit as it happens. Made by
/// [`Varve::subscribe`](crate::Varve::subscribe).
///
/// As an [`Iterator`] it blocks the calling thread until the next event is
/// committed, and ends only when [stopped](Subscription::stop_handle) or after
/// an error. [`Subscription::next_timeout`] and [`Subscription::try_next`]
/// bound the wait. Each event is yielded exactly once, in global order; an
/// error does not move the position, so the event that failed is the next
/// one read (by `next_timeout`, or by a new subscription from
/// [`Subscription::position`]).
///
/// Events ([`GlobalEvent`]) pin the snapshot they were read from: drop them
/// when done rather than collecting them for long.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Placed { order: u64 }
/// use varvedb::{GlobalSequence, StreamId};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut orders = varve.stream::<Placed, 16>("orders")?;
/// orders.append(StreamId(1), &Placed { order: 1 })?;
///
/// let subscription = varve.subscribe(GlobalSequence(0));
/// let consumer = std::thread::spawn(move || -> varvedb::Result<Vec<u64>> {
///     subscription
///         .take(3)
///         .map(|event| Ok(event?.archived_plain::<Placed>()?.order.to_native()))
///         .collect()
/// });
/// // Appended after the consumer started: it waits for them.
/// orders.append(StreamId(2), &Placed { order: 2 })?;
/// orders.append(StreamId(3), &Placed { order: 3 })?;
/// assert_eq!(consumer.join().expect("no panic")?, [1, 2, 3]);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct Subscription {
    follower: Follower<GlobalPager>,
    failed: bool,
}

impl Subscription {
    /// The longest a waiting subscription (or projection) takes to notice a
    /// commit made by another process under the default
    /// [`VarveConfig::cross_process_poll`](crate::VarveConfig::cross_process_poll);
    /// commits of this process wake it at once.
    pub const CROSS_PROCESS_DELAY: Duration = CROSS_PROCESS_POLL;

    pub(crate) fn new(store: Arc<Store>, from: GlobalSequence) -> Self {
        Subscription {
            follower: Follower::new(store, GlobalPager::new(from, Filter::all())),
            failed: false,
        }
    }

    /// Yields only the events `filter` passes, from the current position on.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.follower.pager_mut().filter = FilterCache::new(filter);
        self
    }

    /// The global sequence of the next event to examine: every event before
    /// it was yielded or filtered out.
    pub fn position(&self) -> GlobalSequence {
        self.follower.pager().position()
    }

    /// The next event, waiting up to `timeout` for it to be committed;
    /// `Ok(None)` if none came in time (or the subscription was stopped).
    ///
    /// # Errors
    /// [`Error::Corruption`](crate::Error::Corruption) for a damaged event,
    /// or a storage error; the position stays on the event that failed, and
    /// the next call tries it again.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut subscription = varve.subscribe(varvedb::GlobalSequence(0));
    /// assert!(subscription.next_timeout(Duration::from_millis(1))?.is_none());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<GlobalEvent>> {
        self.follower.next_timeout(timeout)
    }

    /// The next event if one is already committed, without waiting.
    ///
    /// # Errors
    /// As [`Subscription::next_timeout`].
    pub fn try_next(&mut self) -> Result<Option<GlobalEvent>> {
        self.follower.next_timeout(Duration::ZERO)
    }

    /// A handle that stops this subscription from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.follower.stop_handle()
    }

    /// Drops the snapshot the subscription may be reading (it opens a new one
    /// when next read). For a consumer that will pause for long mid-history.
    pub fn release(&mut self) {
        self.follower.release();
    }

    /// This subscription as an async [`Stream`](futures_core::Stream), from
    /// its current position, with its filter and stop handle.
    #[cfg(feature = "async")]
    pub fn into_async(self) -> AsyncSubscription {
        AsyncSubscription::new(self.follower)
    }
}

impl Iterator for Subscription {
    type Item = Result<GlobalEvent>;

    /// Blocks until the next event is committed. `None` once stopped, or
    /// after an error (which was yielded just before).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            match self.follower.next_timeout(Duration::MAX) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) if self.follower.is_stopped() => return None,
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("position", &self.position())
            .field("filter", &self.follower.pager().filter)
            .finish_non_exhaustive()
    }
}

/// The events of one stream id from a stream sequence, typed: its history
/// first, then each new event as it is committed. Made by
/// [`StreamReader::subscribe`](crate::StreamReader::subscribe).
///
/// It behaves as [`Subscription`] does (blocking iterator, timeouts, stop
/// handle, short snapshots), yielding validated, zero-copy [`EventRef`]s.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Moved { x: i32 }
/// use std::time::Duration;
/// use varvedb::{StreamId, StreamSequence};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut moves = varve.stream::<Moved, 16>("moves")?;
/// moves.append_batch(StreamId(1), &[Moved { x: 1 }, Moved { x: 2 }])?;
/// moves.append(StreamId(2), &Moved { x: 99 })?;
///
/// let mut piece = moves.reader().subscribe(StreamId(1), StreamSequence(1));
/// let second = piece.try_next()?.expect("committed");
/// assert_eq!((second.stream_sequence(), second.x.to_native()), (StreamSequence(1), 2));
/// assert!(piece.next_timeout(Duration::from_millis(1))?.is_none());
///
/// moves.append(StreamId(1), &Moved { x: 3 })?;
/// assert_eq!(piece.try_next()?.expect("committed").x, 3);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct StreamSubscription<T: Archivable> {
    follower: Follower<StreamPager<T>>,
    failed: bool,
}

impl<T: Archivable> StreamSubscription<T> {
    pub(crate) fn new(
        store: Arc<Store>,
        info: StreamInfo,
        id: StreamId,
        from: StreamSequence,
    ) -> Self {
        let pager = StreamPager {
            info,
            id,
            next: from.0,
            _event: PhantomData,
        };
        StreamSubscription {
            follower: Follower::new(store, pager),
            failed: false,
        }
    }

    /// The stream id followed.
    pub fn id(&self) -> StreamId {
        self.follower.pager().id
    }

    /// The stream sequence of the next event to yield.
    pub fn position(&self) -> StreamSequence {
        StreamSequence(self.follower.pager().next)
    }

    /// The next event, waiting up to `timeout` for it to be committed;
    /// `Ok(None)` if none came in time (or the subscription was stopped).
    ///
    /// # Errors
    /// [`Error::Corruption`](crate::Error::Corruption) for a damaged event,
    /// or a storage error; the position stays on the event that failed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<EventRef<T>>> {
        self.follower.next_timeout(timeout)
    }

    /// The next event if one is already committed, without waiting.
    ///
    /// # Errors
    /// As [`StreamSubscription::next_timeout`].
    pub fn try_next(&mut self) -> Result<Option<EventRef<T>>> {
        self.follower.next_timeout(Duration::ZERO)
    }

    /// A handle that stops this subscription from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.follower.stop_handle()
    }

    /// Drops the snapshot the subscription may be reading.
    pub fn release(&mut self) {
        self.follower.release();
    }

    /// This subscription as an async [`Stream`](futures_core::Stream).
    #[cfg(feature = "async")]
    pub fn into_async(self) -> AsyncStreamSubscription<T> {
        AsyncStreamSubscription::new(self.follower)
    }
}

impl<T: Archivable> Iterator for StreamSubscription<T> {
    type Item = Result<EventRef<T>>;

    /// Blocks until the next event is committed. `None` once stopped, or
    /// after an error (which was yielded just before).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            match self.follower.next_timeout(Duration::MAX) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) if self.follower.is_stopped() => return None,
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl<T: Archivable> fmt::Debug for StreamSubscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSubscription")
            .field("stream", &&*self.follower.pager().info.name)
            .field("id", &self.id())
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl<T: crate::event::Archivable> crate::reader::StreamReader<T> {
    /// Follows `id` from `from`: its events already committed, then each new
    /// one as it is committed. See [`StreamSubscription`]. A `from` past
    /// `id`'s last event (or on a stream not created yet) waits for that
    /// sequence; the events before it are not yielded.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Moved { x: i32 }
    /// use varvedb::{StreamId, StreamSequence};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut moves = varve.stream::<Moved, 16>("moves")?;
    /// let follower = moves.reader().subscribe(StreamId(5), StreamSequence(0));
    /// let watcher = std::thread::spawn(move || follower.take(2).map(|m| m.map(|m| m.x.to_native())).collect::<Result<Vec<_>, _>>());
    /// moves.append(StreamId(5), &Moved { x: -1 })?;
    /// moves.append(StreamId(5), &Moved { x: 4 })?;
    /// assert_eq!(watcher.join().expect("no panic")?, [-1, 4]);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn subscribe(&self, id: StreamId, from: StreamSequence) -> StreamSubscription<T> {
        StreamSubscription::new(Arc::clone(self.store()), self.info().clone(), id, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_and_their_handles_move_between_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Subscription>();
        send::<StreamSubscription<u64>>();
        send_sync::<StopHandle>();
        send_sync::<Filter>();
        #[cfg(feature = "async")]
        {
            send::<AsyncSubscription>();
            send::<AsyncStreamSubscription<u64>>();
        }
    }
}
