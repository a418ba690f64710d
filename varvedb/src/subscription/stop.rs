//! [`StopHandle`]: ends a subscription or a running projection from another thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::storage::{CommitSignal, Store};

/// Stops a [`Subscription`](crate::Subscription) (or a running projection)
/// from any thread, waking it if it waits for a commit. Cheap to clone.
///
/// Once stopped, a subscription yields nothing more: its iterator ends and
/// its `next_timeout` returns `Ok(None)`.
///
/// ```
/// use varvedb::GlobalSequence;
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path())?;
/// let subscription = varve.subscribe(GlobalSequence(0));
/// let stop = subscription.stop_handle();
/// let consumer = std::thread::spawn(move || subscription.count());
/// stop.stop();
/// assert_eq!(consumer.join().expect("no panic"), 0);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    /// The store's waiters, not the store: a handle never owns the store,
    /// even for a moment, so the last handle's drop on another thread
    /// closes it before that drop returns.
    waiters: Arc<CommitSignal>,
}

impl StopHandle {
    pub(crate) fn new(flag: Arc<AtomicBool>, store: &Arc<Store>) -> Self {
        StopHandle {
            flag,
            waiters: store.commit_signal(),
        }
    }

    /// Asks the subscription or projection to stop, and wakes it if it waits.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        self.waiters.interrupt();
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}
