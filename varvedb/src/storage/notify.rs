//! Commit notification: wakes threads and tasks waiting for new commits
//! (subscriptions, projections) without polling in a sleep loop.
//!
//! Commits made by this process bump a counter under a mutex, wake every
//! blocked thread at once (a condition variable) and every registered async
//! task (its `Waker`). Commits made by other processes cannot signal us, so
//! blocked threads also re-read LMDB's last transaction id every
//! [`CROSS_PROCESS_POLL`], and while any task is registered one helper thread
//! per store does the same for them: that bounds how late either notices.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use super::sync::{Condvar, Instant, Mutex};

use super::Store;

/// The longest a waiter takes to notice a commit made by another process.
pub(crate) const CROSS_PROCESS_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub(crate) struct CommitSignal {
    ticket: Mutex<u64>,
    changed: Condvar,
    tasks: Mutex<Tasks>,
}

/// The async tasks waiting for a commit, each under the key of its subscription.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
struct Tasks {
    next_key: u64,
    waiting: HashMap<u64, Waker>,
    /// Whether the cross-process poller thread is running.
    poller: bool,
}

impl CommitSignal {
    /// Wakes every waiting thread and task: a commit happened, or a waiter
    /// was asked to stop.
    pub(crate) fn notify(&self) {
        *self.ticket.lock() += 1;
        self.changed.notify_all();
        self.wake_tasks();
    }

    fn wake_tasks(&self) {
        let wakers: Vec<Waker> = {
            let mut tasks = self.tasks.lock();
            if tasks.waiting.is_empty() {
                return;
            }
            tasks.waiting.drain().map(|(_, w)| w).collect()
        };
        // Outside the lock: a waker may run code that registers again.
        for waker in wakers {
            waker.wake();
        }
    }

    fn ticket(&self) -> u64 {
        *self.ticket.lock()
    }

    fn wait_past(&self, ticket: u64, deadline: Instant) {
        let mut current = self.ticket.lock();
        while *current == ticket {
            if self.changed.wait_until(&mut current, deadline).timed_out() {
                break;
            }
        }
    }
}

/// `now + timeout`, or a far deadline when that overflows (`Duration::MAX`).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365))
}

impl Store {
    /// Blocks until the store's last transaction id differs from `seen`,
    /// `timeout` passes, or `stop` is set (whoever sets it then calls
    /// [`Store::interrupt_waiters`]); returns the last transaction id.
    pub(crate) fn wait_for_commit(
        &self,
        seen: usize,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> usize {
        let deadline = deadline_after(timeout);
        loop {
            // Take the ticket before looking, so a commit in between is not missed.
            let ticket = self.commits.ticket();
            let current = self.last_txn_id();
            let now = Instant::now();
            if current != seen || now >= deadline || stop.load(Ordering::Acquire) {
                return current;
            }
            self.commits
                .wait_past(ticket, deadline.min(now + CROSS_PROCESS_POLL));
        }
    }

    /// Wakes every thread and task waiting for a commit, so that one whose
    /// stop flag was just set notices it.
    pub(crate) fn interrupt_waiters(&self) {
        self.commits.notify();
    }

    /// A key under which one subscription registers its task's waker.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn waker_key(&self) -> u64 {
        let mut tasks = self.commits.tasks.lock();
        tasks.next_key += 1;
        tasks.next_key
    }

    /// Registers `waker` to be woken (once) by the next commit of any process,
    /// replacing what `key` registered before. Commits of other processes are
    /// noticed within [`CROSS_PROCESS_POLL`] by a helper thread, started here
    /// if none runs; if the thread cannot be started, only this process's
    /// commits wake the task (the next registration tries again).
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn register_waker(self: &Arc<Self>, key: u64, waker: &Waker) {
        let start_poller = {
            let mut tasks = self.commits.tasks.lock();
            match tasks.waiting.get_mut(&key) {
                Some(known) if known.will_wake(waker) => {}
                Some(known) => known.clone_from(waker),
                None => {
                    tasks.waiting.insert(key, waker.clone());
                }
            }
            !std::mem::replace(&mut tasks.poller, true)
        };
        if start_poller {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("varvedb-commit-poll".into())
                .spawn(move || poll_other_processes(weak));
            if spawned.is_err() {
                self.commits.tasks.lock().poller = false;
            }
        }
    }

    /// Forgets the waker registered under `key`, if any.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn deregister_waker(&self, key: u64) {
        self.commits.tasks.lock().waiting.remove(&key);
    }

    /// How many tasks are registered (for tests).
    #[cfg(test)]
    pub(crate) fn registered_wakers(&self) -> usize {
        self.commits.tasks.lock().waiting.len()
    }
}

/// The helper thread: while tasks wait, re-reads the last transaction id every
/// [`CROSS_PROCESS_POLL`] and wakes them when it changed. Ends when no task
/// waits or the store is gone; holds the store only while looking.
#[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
fn poll_other_processes(store: Weak<Store>) {
    let Some(mut last) = store.upgrade().map(|s| s.last_txn_id()) else {
        return;
    };
    loop {
        std::thread::sleep(CROSS_PROCESS_POLL);
        let Some(store) = store.upgrade() else { return };
        let current = store.last_txn_id();
        {
            let mut tasks = store.commits.tasks.lock();
            if tasks.waiting.is_empty() {
                tasks.poller = false;
                return;
            }
        }
        if current != last {
            last = current;
            store.commits.wake_tasks();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;
    use crate::config::VarveConfig;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_commit_wakes_each_registered_task_once_and_forgets_it() {
        let (_dir, store) = store();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let key = store.waker_key();
        store.register_waker(key, &waker);
        store.register_waker(key, &waker);
        assert_eq!(store.registered_wakers(), 1);
        store.write(|w| w.state_put(b"k", b"v")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(store.registered_wakers(), 0);
    }

    #[test]
    fn a_deregistered_task_is_not_kept() {
        let (_dir, store) = store();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let key = store.waker_key();
        store.register_waker(key, &Waker::from(Arc::clone(&count)));
        store.deregister_waker(key);
        assert_eq!(store.registered_wakers(), 0);
        store.write(|w| w.state_put(b"k", b"v")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stop_flag_ends_a_wait_early() {
        let (_dir, store) = store();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = store.last_txn_id();
        let waiter = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || store.wait_for_commit(seen, Duration::MAX, &stop))
        };
        stop.store(true, Ordering::Release);
        store.interrupt_waiters();
        assert_eq!(waiter.join().unwrap(), seen);
    }
}

/// loom models of the commit signal: run with `RUSTFLAGS="--cfg loom" cargo
/// test -p varvedb --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::thread;

    use super::*;
    use crate::storage::sync::model;

    /// Far enough that the model's standing clock never reaches it.
    const FOREVER: Duration = Duration::from_secs(3600);

    /// A waiter for `committed`, taking its ticket before (`ticket_first`) or
    /// after looking.
    fn wait_for(signal: &CommitSignal, committed: &AtomicBool, ticket_first: bool) {
        loop {
            let early = ticket_first.then(|| signal.ticket());
            if committed.load(Ordering::Acquire) {
                return;
            }
            let ticket = early.unwrap_or_else(|| signal.ticket());
            signal.wait_past(ticket, Instant::now() + FOREVER);
        }
    }

    fn commit_and_wait(ticket_first: bool) {
        model(move || {
            let signal = Arc::new(CommitSignal::default());
            let committed = Arc::new(AtomicBool::new(false));
            let waiter = {
                let (signal, committed) = (Arc::clone(&signal), Arc::clone(&committed));
                thread::spawn(move || wait_for(&signal, &committed, ticket_first))
            };
            committed.store(true, Ordering::Release);
            signal.notify();
            waiter.join().unwrap();
        });
    }

    #[test]
    fn a_waiter_never_misses_a_commit_between_its_ticket_and_its_wait() {
        commit_and_wait(true);
    }

    /// The model has teeth: taking the ticket after looking (the order
    /// `wait_for_commit` must not use) loses the wake-up, and loom finds it.
    #[test]
    #[should_panic]
    fn a_waiter_taking_its_ticket_after_looking_can_miss_a_commit() {
        commit_and_wait(false);
    }
}
