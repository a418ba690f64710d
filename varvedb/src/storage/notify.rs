//! Commit notification: wakes threads and tasks waiting for new events
//! (subscriptions, projections) without polling in a sleep loop.
//!
//! Waiters wait for the log's *end* (one past the last global sequence) to
//! move past what they have read, not for any commit: commits that only write
//! state (projection checkpoints, snapshots, the catalog) wake nobody. Every
//! commit of this process that appends publishes the end it leaves; when that moves the
//! end, a counter under a mutex is bumped and every blocked thread (a
//! condition variable) and every registered async task (its `Waker`) is woken.
//! Commits made by other processes cannot signal us, so unless
//! [`VarveConfig::cross_process_poll`](crate::VarveConfig::cross_process_poll)
//! is `None`, blocked threads also look for them every poll interval, and
//! while any task is registered one helper thread per store does the same for
//! them: that bounds how late either notices. Looking is cheap when nothing
//! was committed (LMDB's last transaction id, read inside the map gate); only
//! a new transaction id costs a short snapshot to read the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use super::sync::{Condvar, Instant, Mutex};

use super::Store;
use crate::error::Result;

pub(crate) use crate::config::CROSS_PROCESS_POLL;

/// The shortest poll interval: a zero interval would spin.
const MIN_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
pub(crate) struct CommitSignal {
    ticket: Mutex<u64>,
    changed: Condvar,
    /// Shared with the poller thread, which looks at it without holding the
    /// store.
    tasks: Arc<Mutex<Tasks>>,
    /// Held by the poller thread for as long as it holds the store (see
    /// [`poll_other_processes`]).
    looking: Arc<Mutex<()>>,
    /// One past the last global sequence this process has seen committed.
    /// Only ever raised.
    end: AtomicU64,
    /// The newest LMDB transaction id whose end is published in `end`: when
    /// LMDB's last transaction id still equals it, nothing new can exist.
    looked_at: AtomicUsize,
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
    /// Records that the log ends at `end` as of the commit with id `txn_id`
    /// (`None`: the commit appended nothing, so the end is where it was, as
    /// far as this process knows), and wakes every waiting thread and task if
    /// that moved the end.
    pub(crate) fn publish(&self, end: Option<u64>, txn_id: usize) {
        if let Some(end) = end {
            // The end is known as of this commit: a look finding this id
            // has nothing to learn. (Without an end it would: commits of
            // other processes before this one.)
            self.looked_at.fetch_max(txn_id, Ordering::AcqRel);
            self.raise(end);
        }
    }

    /// Raises the published end to `end`; wakes everyone if that moved it.
    pub(crate) fn raise(&self, end: u64) {
        if self.end.fetch_max(end, Ordering::AcqRel) < end {
            self.notify();
        }
    }

    /// One past the last global sequence known to be committed.
    fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Wakes every waiting thread and task: a waiter was asked to stop.
    pub(crate) fn interrupt(&self) {
        self.notify();
    }

    /// Wakes every waiting thread and task: the log's end moved, or a waiter
    /// was asked to stop.
    fn notify(&self) {
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
        // Outside the lock: a waker may run code that registers again. A
        // waker belongs to the task's runtime; one that panics must not cost
        // the other tasks their wake-up, nor the committing thread (an
        // appender, a group's leader) the answer of a commit that is durable,
        // so its panic is contained here.
        for waker in wakers {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
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
    /// How often waiters look for commits of other processes, if at all.
    fn cross_process_poll(&self) -> Option<Duration> {
        self.config().cross_process_poll.map(|p| p.max(MIN_POLL))
    }

    /// One past the last global sequence this process knows to be committed:
    /// by its own commits, and by every snapshot that read the log's end.
    /// An atomic load: no LMDB call.
    pub(crate) fn log_end(&self) -> u64 {
        self.commits.end()
    }

    /// Records the log's end read from a committed snapshot.
    pub(crate) fn observe_end(&self, end: u64) {
        self.commits.raise(end);
    }

    /// [`Store::log_end`], after looking for commits of other processes when
    /// cross-process polling is on.
    pub(crate) fn current_end(self: &Arc<Self>) -> u64 {
        if self.cross_process_poll().is_some() {
            // A failure to look (no reader slot, a blocked resize) only means
            // a later look finds the commit; the reader that opens the next
            // snapshot reports a lasting failure.
            let _ = self.look_for_commits();
        }
        self.log_end()
    }

    /// One past the last global sequence committed by any process, whatever
    /// the poll setting: looks for new commits (LMDB's last transaction id,
    /// then a short snapshot only if it moved), then reads the published end.
    /// If looking fails (no reader slot) or would wait (a map growth is
    /// pending), the newest end this process already knows.
    pub(crate) fn newest_end(self: &Arc<Self>) -> u64 {
        let _ = self.look_for_commits();
        self.log_end()
    }

    /// Publishes the log's end of the newest commit, if a transaction was
    /// committed (by any process) since the last one whose end is known.
    fn look_for_commits(self: &Arc<Self>) -> Result<()> {
        // While a writer waits to grow the map, entering the gate would wait
        // too (for as long as the caller holds events, up to `resize_wait`):
        // look next time instead.
        if self.resize_pending() {
            return Ok(());
        }
        if self.last_txn_id() == self.commits.looked_at.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut view = self.snapshot()?;
        // Publishes the end (`View::end_global` does for every snapshot).
        view.end_global()?;
        self.commits
            .looked_at
            .fetch_max(view.txn_id(), Ordering::AcqRel);
        Ok(())
    }

    /// [`Store::look_for_commits`] for the poller thread, which must never
    /// wait at the map gate: it holds `looking`, which a task's drop waits
    /// for ([`Store::deregister_waker`]), and the dropping thread may hold a
    /// snapshot (an event) that a pending growth waits for; each would wait
    /// for the other until the growth gave up (`resize_wait`), failing it.
    /// A look that would wait is skipped: the next tick looks again.
    ///
    /// Publishes nothing: returns the end found and its transaction id, for
    /// the poller to publish once it has let the store go (publishing runs
    /// the tasks' wakers, which may drop the last handles).
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    fn look_for_commits_without_waiting(self: &Arc<Self>) -> Result<Option<(u64, usize)>> {
        let Some(guard) = self.gate.try_enter() else {
            return Ok(None);
        };
        let newest = self.last_txn_id_in(&guard);
        drop(guard);
        if newest == self.commits.looked_at.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(mut view) = self.snapshot_without_waiting()? else {
            return Ok(None);
        };
        let end = view.end_global_unpublished()?;
        Ok(Some((end, view.txn_id())))
    }

    /// Blocks until the log's end is past `seen`, `timeout` passes, or `stop`
    /// is set (whoever sets it then calls [`Store::interrupt_waiters`]);
    /// returns the log's end.
    ///
    /// With cross-process polling off, commits of other processes are not
    /// looked for: only an append of this process (or a snapshot that reads
    /// the end) ends the wait early.
    pub(crate) fn wait_for_commit(
        self: &Arc<Self>,
        seen: u64,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> u64 {
        let deadline = deadline_after(timeout);
        let poll = self.cross_process_poll();
        // A server that lost commits (PostgreSQL) may never reach `seen`
        // again: the waiter returns to check what it read.
        let rewinds = self.rewinds();
        loop {
            // Take the ticket before looking, so a commit in between is not missed.
            let ticket = self.commits.ticket();
            let current = self.current_end();
            let now = Instant::now();
            if current > seen
                || now >= deadline
                || stop.load(Ordering::Acquire)
                || self.rewinds() != rewinds
            {
                return current;
            }
            let until = poll.map_or(deadline, |p| deadline.min(now + p));
            self.commits.wait_past(ticket, until);
        }
    }

    /// Wakes every thread and task waiting for a commit, so that one whose
    /// stop flag was just set notices it (or, on PostgreSQL, one that must
    /// check what it read after lost commits).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL listener
    pub(crate) fn interrupt_waiters(&self) {
        self.commits.notify();
    }

    /// What wakes this store's waiters, for a [`StopHandle`](crate::StopHandle)
    /// to hold instead of the store: it must never own the store, even for a
    /// moment, or the thread stopping could close it after the last handle's
    /// drop returned (see `registry.rs`).
    pub(crate) fn commit_signal(&self) -> Arc<CommitSignal> {
        Arc::clone(&self.commits)
    }

    /// A key under which one subscription registers its task's waker.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn waker_key(&self) -> u64 {
        let mut tasks = self.commits.tasks.lock();
        tasks.next_key += 1;
        tasks.next_key
    }

    /// Registers `waker` to be woken (once) when the log's end next moves,
    /// replacing what `key` registered before. With cross-process polling on,
    /// commits of other processes are noticed within the poll interval by a
    /// helper thread, started here if none runs; if the thread cannot be
    /// started, only this process's commits wake the task (the next
    /// registration tries again).
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn register_waker(self: &Arc<Self>, key: u64, waker: &Waker) {
        let poll = self.cross_process_poll();
        let start_poller = {
            let mut tasks = self.commits.tasks.lock();
            match tasks.waiting.get_mut(&key) {
                Some(known) if known.will_wake(waker) => {}
                Some(known) => known.clone_from(waker),
                None => {
                    tasks.waiting.insert(key, waker.clone());
                }
            }
            poll.is_some() && !std::mem::replace(&mut tasks.poller, true)
        };
        if let (true, Some(every)) = (start_poller, poll) {
            let weak = Arc::downgrade(self);
            let signal = Arc::clone(&self.commits);
            let spawned = std::thread::Builder::new()
                .name(POLLER_THREAD.into())
                .spawn(move || poll_other_processes(weak, &signal, every));
            if spawned.is_err() {
                self.commits.tasks.lock().poller = false;
            }
        }
    }

    /// Forgets the waker registered under `key`, if any, then waits for a
    /// look of the poller thread in progress to end: the task's handle of
    /// the store, dropped next, may be the last one, and the store must then
    /// close on this thread (see [`poll_other_processes`]). The poller runs
    /// no waker while it looks, so a waker it runs may drop tasks too.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn deregister_waker(&self, key: u64) {
        self.commits.tasks.lock().waiting.remove(&key);
        drop(self.commits.looking.lock());
    }

    /// How many tasks are registered (for tests).
    #[cfg(test)]
    pub(crate) fn registered_wakers(&self) -> usize {
        self.commits.tasks.lock().waiting.len()
    }

    /// Whether the cross-process poller thread runs (for tests).
    #[cfg(test)]
    pub(crate) fn poller_running(&self) -> bool {
        self.commits.tasks.lock().poller
    }
}

/// The name of the poller thread.
#[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
const POLLER_THREAD: &str = "varvedb-commit-poll";

/// The helper thread: while tasks wait, looks for commits of other processes
/// every `every`; publishing a moved end wakes them. Ends when no task waits
/// or the store is gone.
///
/// It holds the store only while looking, and must never be its last owner:
/// the store (and its LMDB environment) closes on the thread that drops the
/// last handle, as that drop returns (`registry.rs`). So it takes the store
/// only while a task is registered, under `tasks`' lock, and holds `looking`
/// until it has let the store go; a task's drop deregisters, then waits for
/// `looking` ([`Store::deregister_waker`]) before its own handle goes. Every
/// task registered when a look began still owns the store when it ends.
/// What the look found is published (the tasks' wakers run) only after
/// that: a waker may drop tasks and the last handles, and the store then
/// closes inside that drop.
#[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
fn poll_other_processes(store: Weak<Store>, signal: &CommitSignal, every: Duration) {
    loop {
        std::thread::sleep(every);
        let (store, look) = {
            let mut tasks = signal.tasks.lock();
            // Asked before taking the store: with no task waiting, this
            // thread could be its last owner.
            if tasks.waiting.is_empty() {
                tasks.poller = false;
                return;
            }
            let look = signal.looking.lock();
            let Some(store) = store.upgrade() else {
                tasks.poller = false;
                return;
            };
            (store, look)
        };
        // A failed (or skipped) look is retried at the next tick.
        let found = store.look_for_commits_without_waiting();
        drop(store);
        drop(look);
        if let Ok(Some((end, txn_id))) = found {
            signal.raise(end);
            signal.looked_at.fetch_max(txn_id, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;
    use crate::config::VarveConfig;
    use crate::position::ExpectedVersion;
    use crate::storage::{BlockBuilder, StreamInfo, TypeIdentity, WriteTxn};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn store_with(config: VarveConfig) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config).unwrap();
        (dir, store)
    }

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        store_with(VarveConfig::default())
    }

    /// Stream `"s"` of raw bytes.
    fn raw_stream(store: &Arc<Store>) -> StreamInfo {
        let identity = TypeIdentity {
            type_name: "raw",
            layout_fingerprint: 1,
            schema_fingerprint: 0,
            schema: None,
        };
        store.open_stream("s", &identity).unwrap()
    }

    /// Appends one event of raw bytes to `info` id 1, in `txn`.
    fn append_one(txn: &mut WriteTxn<'_>, info: &StreamInfo) -> Result<()> {
        let mut block = BlockBuilder::with_capacity(0);
        block.start(1);
        let mut buf = block.begin_event();
        buf.extend_from_slice(&[7; 16]);
        block.finish_event(buf).unwrap();
        txn.append(info, 1, ExpectedVersion::Any, &mut block)
            .map(drop)
    }

    fn append(store: &Arc<Store>) {
        let info = raw_stream(store);
        store.write(|w| append_one(w, &info)).unwrap();
    }

    /// Appends one event as another process would: nothing published.
    fn append_elsewhere(store: &Arc<Store>) {
        let info = raw_stream(store);
        store
            .commit_as_another_process(|w| append_one(w, &info))
            .unwrap();
    }

    fn register(store: &Arc<Store>) -> (u64, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let key = store.waker_key();
        store.register_waker(key, &Waker::from(Arc::clone(&count)));
        (key, count)
    }

    #[test]
    fn a_commit_that_adds_events_wakes_each_registered_task_once_and_forgets_it() {
        let (_dir, store) = store();
        let (key, count) = register(&store);
        store.register_waker(key, &Waker::from(Arc::clone(&count)));
        assert_eq!(store.registered_wakers(), 1);
        append(&store);
        assert_eq!(count.get(), 1);
        assert_eq!(store.registered_wakers(), 0);
        assert_eq!(store.log_end(), 1);
    }

    #[test]
    fn commits_that_only_write_state_wake_no_task_and_no_thread() {
        let (_dir, store) = store();
        append(&store);
        let (_key, count) = register(&store);
        let ticket = store.commits.ticket();
        // What a projector's checkpoint, an aggregate's snapshot or a new
        // stream commits: state, no events.
        for i in 0..5u64 {
            store
                .write(|w| w.state_put(b"proj/p/c", &i.to_le_bytes()))
                .unwrap();
        }
        assert_eq!(count.get(), 0, "no task woken");
        assert_eq!(store.commits.ticket(), ticket, "no thread woken");
        assert_eq!(store.registered_wakers(), 1);
        append(&store);
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_deregistered_task_is_not_kept() {
        let (_dir, store) = store();
        let (key, count) = register(&store);
        store.deregister_waker(key);
        assert_eq!(store.registered_wakers(), 0);
        append(&store);
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn a_stop_flag_ends_a_wait_early() {
        let (_dir, store) = store();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = store.log_end();
        let waiter = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || store.wait_for_commit(seen, Duration::MAX, &stop))
        };
        stop.store(true, Ordering::Release);
        store.interrupt_waiters();
        assert_eq!(waiter.join().unwrap(), seen);
    }

    #[test]
    fn a_waiter_finds_a_commit_of_another_process_by_polling() {
        let (_dir, store) = store_with(VarveConfig {
            cross_process_poll: Some(Duration::from_millis(1)),
            ..VarveConfig::default()
        });
        let seen = store.log_end();
        append_elsewhere(&store);
        let never = AtomicBool::new(false);
        assert_eq!(store.wait_for_commit(seen, Duration::MAX, &never), 1);
    }

    #[test]
    fn with_polling_off_a_commit_of_another_process_waits_for_one_of_this_process() {
        let (_dir, store) = store_with(VarveConfig {
            cross_process_poll: None,
            ..VarveConfig::default()
        });
        let seen = store.log_end();
        append_elsewhere(&store);
        let never = AtomicBool::new(false);
        // Not looked for: the wait runs to its timeout.
        assert_eq!(
            store.wait_for_commit(seen, Duration::from_millis(20), &never),
            seen
        );
        // No helper thread for tasks either.
        let (_key, count) = register(&store);
        assert!(!store.poller_running());
        // This process's next commit publishes the end, both commits included.
        append(&store);
        assert_eq!(count.get(), 1);
        assert_eq!(store.wait_for_commit(seen, Duration::MAX, &never), 2);
    }
}

/// The poller's exemption from waiting for looks is its own store's only.
#[cfg(all(test, not(loom), feature = "async"))]
mod poller_tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::task::Wake;

    use super::*;
    use crate::config::VarveConfig;
    use crate::position::ExpectedVersion;
    use crate::storage::{BlockBuilder, TypeIdentity};

    /// Drops (deregisters) a task of another store when woken, then says
    /// whether that store's `looking` was free as the drop returned.
    struct DropsTaskOf {
        other: Arc<Store>,
        key: u64,
        woken: AtomicUsize,
        entered: Mutex<Option<mpsc::Sender<()>>>,
        out: Mutex<Option<mpsc::Sender<bool>>>,
    }

    impl Wake for DropsTaskOf {
        fn wake(self: Arc<Self>) {
            if self.woken.fetch_add(1, Ordering::SeqCst) > 0 {
                return;
            }
            if let Some(entered) = self.entered.lock().take() {
                let _ = entered.send(());
            }
            self.other.deregister_waker(self.key);
            let free = self.other.commits.looking.try_lock().is_some();
            if let Some(out) = self.out.lock().take() {
                let _ = out.send(free);
            }
        }
    }

    /// A waker run by store A's poller drops a task of store B while B's
    /// poller looks (its `looking` held, here by the test): the drop must
    /// wait for that look to end, or B's poller could be left B's last
    /// owner and close B after the task's (last) handle was dropped. The
    /// exemption from that wait was once any poller's, by a thread-local
    /// flag.
    #[test]
    fn a_task_dropped_by_another_stores_poller_waits_for_its_own_stores_look() {
        let a_dir = tempfile::tempdir().unwrap();
        let a = Store::open(
            a_dir.path(),
            VarveConfig {
                cross_process_poll: Some(Duration::from_millis(1)),
                ..VarveConfig::default()
            },
        )
        .unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let b = Store::open(
            b_dir.path(),
            VarveConfig {
                cross_process_poll: None,
                ..VarveConfig::default()
            },
        )
        .unwrap();
        let b_key = b.waker_key();
        b.register_waker(b_key, Waker::noop());
        // B's poller is looking.
        let look = b.commits.looking.lock();
        let (entered_tx, entered) = mpsc::channel();
        let (out_tx, out) = mpsc::channel();
        let waker = Arc::new(DropsTaskOf {
            other: Arc::clone(&b),
            key: b_key,
            woken: AtomicUsize::new(0),
            entered: Mutex::new(Some(entered_tx)),
            out: Mutex::new(Some(out_tx)),
        });
        let a_key = a.waker_key();
        a.register_waker(a_key, &Waker::from(Arc::clone(&waker)));
        // A commit of "another process" on A: A's poller finds it and runs
        // the waker.
        append_elsewhere(&a);
        entered.recv().unwrap();
        // The drop must not return while B's look lasts. (A drop that does
        // not wait answers at once; a waiting one is let go after a while.)
        match out.recv_timeout(Duration::from_millis(300)) {
            Ok(free) => panic!("the drop returned during B's look (looking free: {free})"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("{e:?}"),
        }
        drop(look);
        assert!(
            out.recv().unwrap(),
            "the drop returned before B's look ended"
        );
        assert_eq!(b.registered_wakers(), 0);
    }

    /// The poller's look never waits at the map gate: it holds `looking`,
    /// which a task's drop waits for, and the dropping thread may hold the
    /// snapshot (an event) that a pending growth waits for. A look that
    /// waited would hold both until the growth gave up.
    #[test]
    fn the_pollers_look_never_waits_for_a_pending_growth() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        append_elsewhere(&store);
        // The dropping thread's event.
        let held = store.snapshot().unwrap();
        let grower = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                store
                    .gate
                    .exclusive(Duration::from_secs(30), || (), || ())
                    .is_ok()
            })
        };
        while !store.resize_pending() {
            std::thread::yield_now();
        }
        // Inside the window the poller's own check cannot close: past
        // `resize_pending` (still false then), the growth began.
        assert_eq!(
            store.look_for_commits_without_waiting().unwrap(),
            None,
            "skipped, not waited for"
        );
        drop(held);
        assert!(grower.join().unwrap(), "the growth ran");
        assert_eq!(
            store.gate.timeouts.load(Ordering::SeqCst),
            0,
            "the growth never gave up"
        );
        let found = store.look_for_commits_without_waiting().unwrap();
        assert_eq!(
            found.map(|f| f.0),
            Some(1),
            "the next look finds the commit"
        );
        assert_eq!(store.log_end(), 0, "published by the poller, not the look");
    }

    /// Drops the last handle of the store it holds when woken, then opens
    /// the store's environment with `heed` (which refuses one still open).
    struct DropsLastHandle {
        store: Mutex<Option<Arc<Store>>>,
        handed_over: Mutex<Option<mpsc::Receiver<()>>>,
        out: Mutex<Option<mpsc::Sender<std::result::Result<(), String>>>>,
    }

    impl Wake for DropsLastHandle {
        fn wake(self: Arc<Self>) {
            let Some(handed_over) = self.handed_over.lock().take() else {
                return;
            };
            handed_over.recv().unwrap();
            let Some(store) = self.store.lock().take() else {
                return;
            };
            let dir = store.path().to_path_buf();
            drop(store);
            // SAFETY: the store's last handle was just dropped; this
            // environment is closed at once.
            let raw = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(&dir) };
            let opened = raw.map(drop).map_err(|e| format!("{e:?}"));
            if let Some(out) = self.out.lock().take() {
                let _ = out.send(opened);
            }
        }
    }

    /// A waker the poller runs (for a commit of another process) may drop
    /// the store's last handle: the store then closes inside that drop.
    /// The poller once ran wakers while it still held the store, so the
    /// environment closed on it only after the waker returned.
    #[test]
    fn a_waker_the_poller_runs_may_drop_the_last_handle_which_closes_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            VarveConfig {
                cross_process_poll: Some(Duration::from_millis(1)),
                ..VarveConfig::default()
            },
        )
        .unwrap();
        append_elsewhere(&store);
        let (hand_over, handed_over) = mpsc::channel();
        let (out_tx, out) = mpsc::channel();
        let waker = Arc::new(DropsLastHandle {
            store: Mutex::new(Some(Arc::clone(&store))),
            handed_over: Mutex::new(Some(handed_over)),
            out: Mutex::new(Some(out_tx)),
        });
        let key = store.waker_key();
        store.register_waker(key, &Waker::from(Arc::clone(&waker)));
        // The waker's handle is the last one now.
        drop(store);
        hand_over.send(()).unwrap();
        let opened = out.recv().unwrap();
        assert_eq!(opened, Ok(()), "the store closed inside the waker's drop");
    }

    /// Appends one event to stream "s" as another process would.
    fn append_elsewhere(store: &Arc<Store>) {
        let identity = TypeIdentity {
            type_name: "raw",
            layout_fingerprint: 1,
            schema_fingerprint: 0,
            schema: None,
        };
        let info = store.open_stream("s", &identity).unwrap();
        store
            .commit_as_another_process(|w| {
                let mut block = BlockBuilder::with_capacity(0);
                block.start(1);
                let mut buf = block.begin_event();
                buf.extend_from_slice(&[7; 16]);
                block.finish_event(buf).unwrap();
                w.append(&info, 1, ExpectedVersion::Any, &mut block)
                    .map(drop)
            })
            .unwrap();
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
