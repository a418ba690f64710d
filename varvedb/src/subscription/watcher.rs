//! [`WriteWatcher`]: varvedb 0.4's async wait for new commits, kept for 0.4
//! programs; [`Subscription`](crate::Subscription) (and its async form) is the
//! way to follow the log.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::global::GlobalReader;
use crate::position::GlobalSequence;
use crate::reader::StreamReader;
use crate::storage::Store;

/// Watches the store's committed log end and lets a task wait, without
/// polling, until it moves past a position: varvedb 0.4's `WriteWatcher`
/// (its `notify` feature), on any executor.
///
/// Unlike 0.4's, it also sees commits of other processes (within
/// [`VarveConfig::cross_process_poll`](crate::VarveConfig::cross_process_poll)),
/// and the position it reports is exact: one past the newest committed event
/// (0.4 counted sequences reserved by appends that then failed). For a
/// stream of the events themselves, use [`Varve::subscribe`](crate::Varve::subscribe).
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
/// use varvedb::{GlobalSequence, StreamId};
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let watcher = varve.watcher();
/// assert_eq!(watcher.committed_next_global_seq(), GlobalSequence(0));
/// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
/// let writer = std::thread::spawn(move || ticks.append(StreamId(1), &Tick { n: 1 }));
/// // Any executor will do; this one polls on the current thread.
/// let end = block_on(watcher.wait_for_global_seq(GlobalSequence(0)));
/// assert_eq!(end, GlobalSequence(1));
/// writer.join().unwrap()?;
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     use std::task::{Context, Poll, Wake, Waker};
/// #     struct Unpark(std::thread::Thread);
/// #     impl Wake for Unpark { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
/// #     let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
/// #     let mut f = std::pin::pin!(f);
/// #     loop {
/// #         if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) { return v; }
/// #         std::thread::park();
/// #     }
/// # }
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone)]
pub struct WriteWatcher {
    store: Arc<Store>,
}

impl fmt::Debug for WriteWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteWatcher").finish_non_exhaustive()
    }
}

impl WriteWatcher {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        WriteWatcher { store }
    }

    /// One past the newest committed event: the global sequence the next
    /// append will get (see [`Varve::next_global_seq`](crate::Varve::next_global_seq)).
    pub fn committed_next_global_seq(&self) -> GlobalSequence {
        GlobalSequence(self.store.newest_end())
    }

    /// Waits until the committed end is past `from` (an event at `from` or
    /// later is committed) and returns it; at once if it already is. The
    /// returned end may be several events past `from`: read from `from`, not
    /// from the returned value, to see every event. Dropping the future
    /// stops waiting.
    pub async fn wait_for_global_seq(&self, from: GlobalSequence) -> GlobalSequence {
        GlobalSequence(
            WaitPast {
                store: &self.store,
                seen: from.0,
                key: None,
            }
            .await,
        )
    }
}

/// The future of [`WriteWatcher::wait_for_global_seq`]: registers its task's
/// waker with the store's commit signal while the end is not past `seen`.
struct WaitPast<'a> {
    store: &'a Arc<Store>,
    seen: u64,
    key: Option<u64>,
}

impl Future for WaitPast<'_> {
    type Output = u64;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        // Looks for commits of other processes too: the end this process has
        // published may be older than the store's (no read since it opened).
        let end = self.store.newest_end();
        if end > self.seen {
            return Poll::Ready(end);
        }
        let store = Arc::clone(self.store);
        let key = *self.key.get_or_insert_with(|| store.waker_key());
        store.register_waker(key, cx.waker());
        // Look again after registering, so a commit in between is not missed.
        let end = store.log_end();
        if end > self.seen {
            return Poll::Ready(end);
        }
        Poll::Pending
    }
}

impl Drop for WaitPast<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.store.deregister_waker(key);
        }
    }
}

impl GlobalReader {
    /// A [`WriteWatcher`] on the reader's store (as [`Varve::watcher`](crate::Varve::watcher)).
    pub fn watcher(&self) -> WriteWatcher {
        WriteWatcher::new(Arc::clone(self.store()))
    }
}

impl<T> StreamReader<T> {
    /// A [`WriteWatcher`] on the reader's store (as [`Varve::watcher`](crate::Varve::watcher)): it
    /// watches the whole log, as in 0.4, not only this stream.
    pub fn watcher(&self) -> WriteWatcher {
        WriteWatcher::new(Arc::clone(self.store()))
    }
}
