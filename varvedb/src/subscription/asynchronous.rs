//! Async subscriptions (feature `async`): [`AsyncSubscription`] and
//! [`AsyncStreamSubscription`], `futures_core::Stream`s that never block the
//! executor while they wait.
//!
//! When caught up, a subscription registers its task's waker with the store
//! and returns `Pending`; every commit of this process that adds events wakes
//! it, and one helper thread per store (running only while some task waits,
//! and only if cross-process polling is on) wakes it within
//! [`VarveConfig::cross_process_poll`](crate::VarveConfig::cross_process_poll)
//! of a commit by another process. Reading itself is synchronous
//! but short: at most one page (512 events) per poll before yielding.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{FusedStream, Stream};

use super::{Follower, GlobalPager, Pager, StopHandle, StreamPager};
use crate::error::Result;
use crate::event::Archivable;
use crate::global::GlobalEvent;
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::reader::EventRef;

/// A follower plus the key its task's waker is registered under.
struct Task<P: Pager> {
    follower: Follower<P>,
    key: u64,
    done: bool,
}

impl<P: Pager> Task<P> {
    fn new(follower: Follower<P>) -> Self {
        let key = follower.store().waker_key();
        Task {
            follower,
            key,
            done: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<P::Item>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.follower.poll_next(cx, self.key);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.done = true;
            self.follower.store().deregister_waker(self.key);
        }
        polled
    }
}

impl<P: Pager> Drop for Task<P> {
    fn drop(&mut self) {
        // Its page first: that snapshot holds the map gate, which a look of
        // the poller thread may be waiting to enter while the deregistering
        // waits for that look to end (`Store::deregister_waker`).
        self.follower.release();
        self.follower.store().deregister_waker(self.key);
    }
}

/// [`Subscription`](crate::Subscription) as an async
/// [`Stream`] of [`GlobalEvent`]s: every event in global
/// order from a position, then each new commit as it happens. Made by
/// [`Subscription::into_async`](crate::Subscription::into_async).
///
/// The stream ends when [stopped](AsyncSubscription::stop_handle), or after
/// yielding an error; [`AsyncSubscription::position`] is then where a new
/// subscription would resume.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Placed { order: u64 }
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use futures_core::Stream;
/// use varvedb::{GlobalSequence, StreamId};
///
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let mut orders = varve.stream::<Placed, 16>("orders")?;
/// orders.append(StreamId(1), &Placed { order: 7 })?;
/// let mut events = varve.subscribe(GlobalSequence(0)).into_async();
///
/// // Any executor will do; with tokio: `events.next().await` (futures' StreamExt).
/// let first = futures_executor_block_on(poll_fn(|cx| Pin::new(&mut events).poll_next(cx)));
/// assert_eq!(first.expect("committed")?.archived_plain::<Placed>()?.order, 7);
/// # fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop { if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) { return out } }
/// # }
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct AsyncSubscription {
    task: Task<GlobalPager>,
}

impl AsyncSubscription {
    pub(super) fn new(follower: Follower<GlobalPager>) -> Self {
        AsyncSubscription {
            task: Task::new(follower),
        }
    }

    /// The global sequence of the next event to examine.
    pub fn position(&self) -> GlobalSequence {
        self.task.follower.pager().position()
    }

    /// A handle that ends this stream from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.task.follower.stop_handle()
    }
}

impl Stream for AsyncSubscription {
    type Item = Result<GlobalEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().task.poll(cx)
    }
}

impl FusedStream for AsyncSubscription {
    fn is_terminated(&self) -> bool {
        self.task.done
    }
}

impl fmt::Debug for AsyncSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSubscription")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

/// [`StreamSubscription`](crate::StreamSubscription) as an async
/// [`Stream`] of [`EventRef`]s. Made by
/// [`StreamSubscription::into_async`](crate::StreamSubscription::into_async);
/// behaves as [`AsyncSubscription`] does.
pub struct AsyncStreamSubscription<T: Archivable> {
    task: Task<StreamPager<T>>,
}

impl<T: Archivable> AsyncStreamSubscription<T> {
    pub(super) fn new(follower: Follower<StreamPager<T>>) -> Self {
        AsyncStreamSubscription {
            task: Task::new(follower),
        }
    }

    /// The stream id followed.
    pub fn id(&self) -> StreamId {
        self.task.follower.pager().id
    }

    /// The stream sequence of the next event to yield.
    pub fn position(&self) -> StreamSequence {
        StreamSequence(self.task.follower.pager().next)
    }

    /// A handle that ends this stream from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.task.follower.stop_handle()
    }
}

impl<T: Archivable> Stream for AsyncStreamSubscription<T> {
    type Item = Result<EventRef<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().task.poll(cx)
    }
}

impl<T: Archivable> FusedStream for AsyncStreamSubscription<T> {
    fn is_terminated(&self) -> bool {
        self.task.done
    }
}

impl<T: Archivable> fmt::Debug for AsyncStreamSubscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncStreamSubscription")
            .field("id", &self.id())
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;

    use super::*;
    use crate::config::VarveConfig;
    use crate::storage::Store;
    use crate::subscription::Subscription;

    #[test]
    fn a_waiting_stream_registers_its_task_and_forgets_it_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        let mut stream = Subscription::new(Arc::clone(&store), GlobalSequence(0)).into_async();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut stream).poll_next(&mut cx).is_pending());
        assert_eq!(store.registered_wakers(), 1);
        drop(stream);
        assert_eq!(store.registered_wakers(), 0);
    }

    #[test]
    fn a_stopped_stream_ends_and_forgets_its_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        let mut stream = Subscription::new(Arc::clone(&store), GlobalSequence(0)).into_async();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut stream).poll_next(&mut cx).is_pending());
        stream.stop_handle().stop();
        assert!(matches!(
            Pin::new(&mut stream).poll_next(&mut cx),
            Poll::Ready(None)
        ));
        assert!(stream.is_terminated());
        assert_eq!(store.registered_wakers(), 0);
    }
}
