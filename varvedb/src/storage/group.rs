//! Group commit: appends that arrive while a commit is in flight share the next
//! transaction and its sync.
//!
//! The first appender to find no commit in flight becomes the *leader*: it takes
//! every queued append, writes them in one transaction in queue order, commits
//! (one durable sync), and hands each appender its own result. Appenders that
//! arrive meanwhile queue up and sleep; when the leader is done it passes
//! leadership to the first of them. Nobody is acknowledged before the sync that
//! makes its events durable, and each append keeps its own expected-version
//! check: a conflict rejects that append alone. A group whose transaction
//! fails as a whole answers every append with the same error, at once; a
//! leader that panics still answers its group (`Error::CommitAbandoned`) and
//! passes the lead on.

use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::block::BlockBuilder;
use super::sync::{Condvar, Instant, Mutex};
use super::writer::{Entity, Placed};
use super::{Store, StreamInfo};
use crate::error::{Error, Result};
use crate::position::ExpectedVersion;

/// The answer an appender gets when the thread leading its group panicked
/// before answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abandoned;

enum State<A> {
    Waiting,
    /// The previous leader finished: this appender leads the next group.
    Lead,
    Done(Result<A, Abandoned>),
}

/// Where one appender sleeps until it is answered or told to lead.
struct Slot<A> {
    state: Mutex<State<A>>,
    changed: Condvar,
}

impl<A> Slot<A> {
    fn new() -> Slot<A> {
        Slot {
            state: Mutex::new(State::Waiting),
            changed: Condvar::new(),
        }
    }

    fn set(&self, state: State<A>) {
        *self.state.lock() = state;
        self.changed.notify_one();
    }

    /// Sleeps until this appender is answered (`Some`) or told to lead (`None`).
    fn wait(&self) -> Option<Result<A, Abandoned>> {
        let mut state = self.state.lock();
        loop {
            match mem::replace(&mut *state, State::Waiting) {
                State::Waiting => self.changed.wait(&mut state),
                State::Lead => return None,
                State::Done(answer) => return Some(answer),
            }
        }
    }
}

struct Queue<T, A> {
    pending: Vec<(T, Arc<Slot<A>>)>,
    leading: bool,
    /// How many requests the previous group committed: a leader waits (briefly)
    /// for that many to queue, since writers that just got their answer are
    /// about to send their next append.
    last_group: usize,
}

/// The queue, leader election and hand-off of group commit, apart from what a
/// commit does (a closure), so that loom can model it without LMDB.
///
/// Every request submitted gets exactly one answer: the one its group's
/// commit returned for it, or [`Abandoned`] if the leader's commit panicked.
/// Leadership always passes on, to the oldest queued request, or is released
/// when none is queued, a panicking leader included.
pub(crate) struct GroupQueue<T, A> {
    queue: Mutex<Queue<T, A>>,
    /// Signalled when a request joins the queue, for a gathering leader.
    arrived: Condvar,
    /// The longest a leader waits for as many requests as its predecessor had.
    gather_wait: Duration,
}

impl<T, A> GroupQueue<T, A> {
    pub(crate) fn new(gather_wait: Duration) -> Self {
        GroupQueue {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                leading: false,
                last_group: 0,
            }),
            arrived: Condvar::new(),
            gather_wait,
        }
    }

    /// Queues `request` and returns its answer. If no group is in flight, the
    /// caller leads: it takes every queued request, runs `commit` on them
    /// (which must return one answer per request, in order), answers each,
    /// and passes leadership on. Otherwise it sleeps until its group's leader
    /// answers it, or hands it the lead (then `commit` runs on its thread).
    pub(crate) fn submit(
        &self,
        request: T,
        commit: impl FnOnce(Vec<T>) -> Vec<A>,
    ) -> Result<A, Abandoned> {
        let slot = Arc::new(Slot::new());
        let lead = {
            let mut queue = self.queue.lock();
            queue.pending.push((request, Arc::clone(&slot)));
            self.arrived.notify_one();
            !mem::replace(&mut queue.leading, true)
        };
        if !lead {
            if let Some(answer) = slot.wait() {
                return answer;
            }
        }
        self.lead(commit);
        // A leader's own request is in the group it commits, so it is answered.
        slot.wait().unwrap_or(Err(Abandoned))
    }

    fn lead(&self, commit: impl FnOnce(Vec<T>) -> Vec<A>) {
        let (requests, slots): (Vec<T>, Vec<Arc<Slot<A>>>) = self.gather().into_iter().unzip();
        // From here on, whatever happens (a panic in `commit` included), the
        // hand-off answers every request of the group and passes the lead on.
        let mut handoff = Handoff {
            group: self,
            slots,
            answered: 0,
        };
        for answer in commit(requests) {
            let Some(slot) = handoff.slots.get(handoff.answered) else {
                break;
            };
            slot.set(State::Done(Ok(answer)));
            handoff.answered += 1;
        }
    }

    /// Takes the queued requests for the next group, first waiting up to
    /// `gather_wait` for as many as the previous group had.
    fn gather(&self) -> Vec<(T, Arc<Slot<A>>)> {
        let mut queue = self.queue.lock();
        let deadline = Instant::now() + self.gather_wait;
        while queue.pending.len() < queue.last_group {
            if self.arrived.wait_until(&mut queue, deadline).timed_out() {
                break;
            }
        }
        queue.last_group = queue.pending.len();
        mem::take(&mut queue.pending)
    }
}

/// Ends a leader's turn, on return or on unwind: answers the requests the
/// commit did not answer with [`Abandoned`], then hands the lead to the oldest
/// queued request, or releases it.
struct Handoff<'g, T, A> {
    group: &'g GroupQueue<T, A>,
    slots: Vec<Arc<Slot<A>>>,
    answered: usize,
}

impl<T, A> Drop for Handoff<'_, T, A> {
    fn drop(&mut self) {
        for slot in &self.slots[self.answered..] {
            slot.set(State::Done(Err(Abandoned)));
        }
        let mut queue = self.group.queue.lock();
        match queue.pending.first() {
            Some((_, next)) => next.set(State::Lead),
            None => queue.leading = false,
        }
    }
}

/// One append waiting for its group.
struct Append {
    info: StreamInfo,
    id: Entity,
    expected: ExpectedVersion,
    block: BlockBuilder,
}

/// An append's outcome, with its block builder handed back for reuse.
type Answer = (Result<Placed>, BlockBuilder);

/// The longest a leader waits for the appends of writers that were in the
/// previous group. A durable commit costs about 200 µs on the development
/// machine, so gathering one more append in this time halves its cost; a
/// lone writer never waits (its previous group was itself).
const GATHER_WAIT: Duration = Duration::from_micros(50);

/// How much group commit shared: counters of the commits that made appends
/// durable, kept by a store handle since it was opened (in this process; other
/// processes' commits are not counted). See
/// [`Varve::commit_stats`](crate::Varve::commit_stats).
///
/// `appends / commits` is how many appends shared each commit and its syncs:
/// 1 for a lone writer, up to the number of concurrent writers under load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Durable commits that wrote appends (one write transaction, one
    /// sync of the data and one of LMDB's meta page each).
    pub commits: u64,
    /// Appends those commits wrote: calls of a [`Stream`](crate::Stream)'s
    /// `append`, `append_batch` and their variants, and commands (`execute`)
    /// whose stream id did not move since they read it (they join the group
    /// commit). Rejected appends (a version conflict) and idempotent retries
    /// write nothing and are not counted; a command that must decide again,
    /// projections and migrations commit on their own, outside group commit,
    /// and are not counted either.
    pub appends: u64,
    /// Events those appends wrote.
    pub events: u64,
}

impl CommitStats {
    /// Appends per commit: how many appends shared each commit's syncs on
    /// average (0 before the first commit).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Pinged;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<Pinged, 8>("pings")?.append(varvedb::StreamId(1), &Pinged)?;
    /// let stats = varve.commit_stats();
    /// assert_eq!((stats.commits, stats.appends, stats.events), (1, 1, 1));
    /// assert_eq!(stats.appends_per_commit(), 1.0);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn appends_per_commit(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.appends as f64 / self.commits as f64
        }
    }
}

/// The counters behind [`CommitStats`]: relaxed atomics, bumped once per
/// commit (never per append), read without synchronizing with commits.
#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    appends: AtomicU64,
    events: AtomicU64,
}

impl Counters {
    /// Counts one durable commit of `placed` (the appends' outcomes).
    fn count<'a>(&self, placed: impl IntoIterator<Item = &'a Result<Placed>>) {
        let (mut appends, mut events) = (0, 0);
        for p in placed.into_iter().flatten() {
            if !p.idempotent {
                appends += 1;
                events += p.count;
            }
        }
        if appends > 0 {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.appends.fetch_add(appends, Ordering::Relaxed);
            self.events.fetch_add(events, Ordering::Relaxed);
        }
    }

    fn read(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// The queue of appends waiting for the next group commit.
pub(crate) struct GroupCommit {
    queue: GroupQueue<Append, Answer>,
    stats: Counters,
    /// Fault injection: the next group's leader panics inside its write
    /// transaction.
    #[cfg(test)]
    panic_next: std::sync::atomic::AtomicBool,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            queue: GroupQueue::new(GATHER_WAIT),
            stats: Counters::default(),
            #[cfg(test)]
            panic_next: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl Store {
    /// What this handle's group commits have carried so far.
    pub(crate) fn commit_stats(&self) -> CommitStats {
        self.group.stats.read()
    }

    /// Appends `block` to `(info, id)` durably, sharing the commit with any
    /// concurrent appends. Returns the first stream and global sequences.
    pub(crate) fn append(
        &self,
        info: &StreamInfo,
        id: Entity,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<Placed> {
        self.check_writable("appending")?;
        let request = Append {
            info: info.clone(),
            id,
            expected,
            block: mem::take(block),
        };
        match self
            .group
            .queue
            .submit(request, |batch| self.commit_group(batch))
        {
            Ok((result, returned)) => {
                *block = returned;
                result
            }
            // The builder went down with the leader; `block` is left empty,
            // which the next append's `start` handles.
            Err(Abandoned) => Err(Error::CommitAbandoned),
        }
    }

    /// Writes `batch` in one transaction and answers every request.
    ///
    /// A version conflict is one append's own: it is checked before anything
    /// of that append is written, and only that append fails. If the group
    /// transaction fails as a whole, the error is usually the environment's
    /// (the map could not grow, reader slots ran out, an I/O error): every
    /// append would meet it again, so each gets a copy of it at once, never a
    /// retry of its own that would wait again. Only damaged data (which may
    /// belong to one stream's index) is retried append by append, so that
    /// each gets its own outcome.
    fn commit_group(&self, mut batch: Vec<Append>) -> Vec<Answer> {
        let timer = crate::trace::timer!(DEBUG);
        let grouped = self.write(|txn| {
            #[cfg(test)]
            if self
                .group
                .panic_next
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("injected panic in a group commit's leader");
            }
            let mut results = Vec::with_capacity(batch.len());
            for r in batch.iter_mut() {
                match txn.append_to(&r.info, &r.id, r.expected, &mut r.block) {
                    Ok(positions) => results.push(Ok(positions)),
                    // Checked before anything is written: only this append
                    // fails. An id conflict sees the ids of the appends
                    // before it in this group (the same transaction). An
                    // erased entity is found when its block is sealed, before
                    // anything of it is put (its stream exists, so nothing
                    // was settled for it either).
                    Err(
                        e @ (Error::VersionConflict { .. }
                        | Error::TypeMismatch { .. }
                        | Error::EventIdConflict { .. }
                        | Error::Erased { .. }),
                    ) => results.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            Ok(results)
        });
        crate::trace::event!(
            DEBUG,
            "varvedb.commit",
            "group committed",
            appends = batch.len() as u64,
            events = batch.iter().map(|r| r.block.count() as u64).sum::<u64>(),
            bytes = batch.iter().map(|r| r.block.len() as u64).sum::<u64>(),
            duration_us = timer.micros(),
            ok = grouped.is_ok(),
        );
        match grouped {
            Ok(results) => {
                self.group.stats.count(&results);
                batch
                    .into_iter()
                    .zip(results)
                    .map(|(r, result)| (result, r.block))
                    .collect()
            }
            Err(Error::Corruption { .. }) if batch.len() > 1 => batch
                .into_iter()
                .map(|mut r| {
                    let result =
                        self.write(|txn| txn.append_to(&r.info, &r.id, r.expected, &mut r.block));
                    self.group.stats.count([&result]);
                    (result, r.block)
                })
                .collect(),
            Err(e) => {
                let mut batch = batch.into_iter();
                let last = batch.next_back();
                let mut answers: Vec<Answer> =
                    batch.map(|r| (Err(e.duplicate()), r.block)).collect();
                answers.extend(last.map(|r| (Err(e), r.block)));
                answers
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::Ordering;
    use std::sync::{mpsc, Barrier};
    use std::thread;

    use super::*;
    use crate::{StreamId, StreamSequence, Varve, VarveConfig};

    /// Longer than any answer can take here: a call still running then hangs.
    const NO_HANG: Duration = Duration::from_secs(30);

    /// Runs `f` on its own thread; its result, or `Err` if it panicked.
    fn spawn<R: Send + 'static>(
        f: impl FnOnce() -> R + Send + 'static,
    ) -> mpsc::Receiver<thread::Result<R>> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        rx
    }

    /// The answer `rx` brings, failing the test if none comes within [`NO_HANG`].
    fn answer<R>(rx: &mpsc::Receiver<thread::Result<R>>) -> thread::Result<R> {
        rx.recv_timeout(NO_HANG)
            .expect("the call is still waiting: it hangs")
    }

    /// Spins until `ready` holds, failing the test if it does not within [`NO_HANG`].
    fn until(mut ready: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + NO_HANG;
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "never got ready");
            thread::yield_now();
        }
    }

    #[test]
    fn every_request_of_a_panicking_leaders_group_is_answered_and_the_lead_passes_on() {
        let group = Arc::new(GroupQueue::<u32, u32>::new(Duration::ZERO));
        // A leads a group of its own and holds it open while B, then C, queue.
        let (release_a, hold_a) = mpsc::channel::<()>();
        let a = {
            let group = Arc::clone(&group);
            spawn(move || {
                group.submit(1, |batch| {
                    hold_a.recv().unwrap();
                    batch
                })
            })
        };
        until(|| {
            let q = group.queue.lock();
            q.leading && q.pending.is_empty()
        });
        let b = {
            let group = Arc::clone(&group);
            spawn(move || group.submit(2, |_| panic!("leader B panics mid-commit")))
        };
        until(|| group.queue.lock().pending.len() == 1);
        let c = {
            let group = Arc::clone(&group);
            spawn(move || group.submit(3, |batch| batch))
        };
        until(|| group.queue.lock().pending.len() == 2);
        release_a.send(()).unwrap();

        assert_eq!(answer(&a).unwrap(), Ok(1));
        assert!(
            answer(&b).is_err(),
            "B led the group of B and C and panicked"
        );
        assert_eq!(answer(&c).unwrap(), Err(Abandoned));
        // Leadership was released: a later request leads and is answered.
        let d = {
            let group = Arc::clone(&group);
            spawn(move || group.submit(4, |batch| batch))
        };
        assert_eq!(answer(&d).unwrap(), Ok(4));
        assert!(!group.queue.lock().leading);
    }

    #[test]
    fn an_append_to_an_erased_entity_fails_alone_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::VarveConfig::encryption(crate::EncryptionKey::from_bytes([3; 32]))
            .key_vault(dir.path().join("vault"));
        let varve = Varve::with_config(dir.path().join("store"), config).unwrap();
        let mut stream = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
        let info = stream.info().clone();
        stream.append(crate::StreamId(1), &vec![1u8]).unwrap();
        stream.append(crate::StreamId(2), &vec![2u8]).unwrap();
        assert_eq!(
            stream.erase(crate::StreamId(2)).unwrap(),
            crate::Erasure::Erased
        );
        let any = |id, n| {
            let mut r = request(&info, id, &[crate::EventId::from_u128(n)]);
            r.expected = ExpectedVersion::Any;
            r
        };
        // One group: an append to the erased entity between two healthy ones.
        let answers = varve
            .store()
            .commit_group(vec![any(1, 10), any(2, 11), any(3, 12)]);
        let results: Vec<_> = answers.into_iter().map(|(r, _)| r).collect();
        assert!(
            matches!(results[1], Err(Error::Erased { .. })),
            "{:?}",
            results[1]
        );
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(results[2].is_ok(), "{:?}", results[2]);
        assert_eq!(
            varve.global_reader().end().unwrap(),
            crate::GlobalSequence(4)
        );
    }

    /// An append of `ids` to `(info, id)` as the group commit receives it.
    fn request(info: &StreamInfo, id: u64, ids: &[crate::EventId]) -> Append {
        let mut block = BlockBuilder::with_capacity(64);
        let events: Vec<Vec<u8>> = ids.iter().map(|i| i.0.to_vec()).collect();
        crate::stream::serialize_with_meta(&mut block, &info.name, &events, Some(ids), None)
            .unwrap();
        Append {
            info: info.clone(),
            id: Entity::Id(id),
            expected: ExpectedVersion::NoStream,
            block,
        }
    }

    #[test]
    fn a_retry_in_the_same_group_commit_as_its_original_sees_its_ids_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let varve = Varve::new(dir.path()).unwrap();
        let info = varve.stream::<Vec<u8>, 16>("blobs").unwrap().info().clone();
        let store = varve.store();
        let ids = [crate::EventId::from_u128(1), crate::EventId::from_u128(2)];
        let other = [crate::EventId::from_u128(2)];
        // One group: the original, its retry, a suffix retry, and an append
        // of a stored id to another stream id.
        let answers = store.commit_group(vec![
            request(&info, 1, &ids),
            request(&info, 1, &ids),
            request(&info, 1, &ids[1..]),
            request(&info, 2, &other),
        ]);
        let results: Vec<_> = answers.into_iter().map(|(r, _)| r).collect();
        let original = results[0].as_ref().unwrap();
        assert!(!original.idempotent);
        let retry = results[1].as_ref().unwrap();
        assert!(retry.idempotent);
        assert_eq!(
            (
                retry.first_seq,
                retry.first_global,
                retry.count,
                retry.committed_at_micros
            ),
            (0, 0, 2, original.committed_at_micros)
        );
        let suffix = results[2].as_ref().unwrap();
        assert_eq!(
            (suffix.idempotent, suffix.first_seq, suffix.first_global),
            (true, 1, 1)
        );
        assert!(
            matches!(results[3], Err(Error::EventIdConflict { .. })),
            "{:?}",
            results[3]
        );
        // Only the original was written.
        let mut log = varve.global_reader();
        assert_eq!(log.end().unwrap(), crate::GlobalSequence(2));
    }

    #[test]
    fn commit_stats_count_a_group_once_with_only_the_appends_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let varve = Varve::new(dir.path()).unwrap();
        let info = varve.stream::<Vec<u8>, 16>("blobs").unwrap().info().clone();
        let store = varve.store();
        let id = |n| crate::EventId::from_u128(n);
        let mut conflicting = request(&info, 9, &[id(9)]);
        conflicting.expected = ExpectedVersion::Exact(StreamSequence(5));
        // One group: two writing appends (one of two events), a retry of the
        // first (writes nothing) and a version conflict (writes nothing).
        let answers = store.commit_group(vec![
            request(&info, 1, &[id(1), id(2)]),
            request(&info, 2, &[id(3)]),
            request(&info, 1, &[id(1), id(2)]),
            conflicting,
        ]);
        assert_eq!(answers.iter().filter(|(r, _)| r.is_ok()).count(), 3);
        let stats = varve.commit_stats();
        assert_eq!((stats.commits, stats.appends, stats.events), (1, 2, 3));
        assert_eq!(stats.appends_per_commit(), 2.0);
        // A group that writes nothing counts nothing.
        let answers = store.commit_group(vec![request(&info, 2, &[id(3)])]);
        assert!(answers[0].0.as_ref().unwrap().idempotent);
        assert_eq!(varve.commit_stats(), stats);
        // Each append is counted once, whichever handle made it.
        let mut blobs = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
        blobs
            .append_batch(StreamId(3), &[vec![1], vec![2]])
            .unwrap();
        let after = varve.clone().commit_stats();
        assert_eq!((after.commits, after.appends, after.events), (2, 3, 5));
    }

    #[test]
    fn a_leader_that_panics_in_its_write_transaction_leaves_no_later_append_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let varve = Varve::new(dir.path()).unwrap();
        varve.store().group.panic_next.store(true, Ordering::SeqCst);
        let first = {
            let mut blobs = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
            spawn(move || blobs.append(StreamId(1), &vec![1]))
        };
        assert!(
            answer(&first).is_err(),
            "the injected panic reaches the appender"
        );
        let later = {
            let mut blobs = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
            spawn(move || blobs.append(StreamId(1), &vec![2]))
        };
        // The panicking transaction was aborted: the later append is the first.
        let (seq, _) = answer(&later).unwrap().unwrap();
        assert_eq!(seq, StreamSequence(0));
    }

    #[test]
    fn appends_blocked_from_growing_the_map_fail_together_without_waiting_one_by_one() {
        const APPENDERS: usize = 60;
        let dir = tempfile::tempdir().unwrap();
        let config = VarveConfig {
            map_size: 64 * 1024,
            resize_wait: Duration::from_millis(500),
            ..VarveConfig::default()
        };
        let varve = Varve::with_config(dir.path(), config).unwrap();
        let mut blobs = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
        blobs.append(StreamId(0), &vec![7; 16]).unwrap();
        let mut reader = blobs.reader();
        // A held reference pins the map: it cannot grow.
        let held = reader.get_archived(StreamId(0), StreamSequence(0)).unwrap();
        let start = Barrier::new(APPENDERS);
        let results: Vec<_> = thread::scope(|s| {
            let appenders: Vec<_> = (0..APPENDERS as u64)
                .map(|i| {
                    let (varve, start) = (&varve, &start);
                    s.spawn(move || {
                        let mut blobs = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
                        start.wait();
                        // Larger than the whole map: every append needs growth.
                        blobs.append(StreamId(i + 1), &vec![0; 256 * 1024])
                    })
                })
                .collect();
            appenders.into_iter().map(|t| t.join().unwrap()).collect()
        });
        drop(held);
        for r in &results {
            assert!(
                matches!(r, Err(Error::MapResizeBlocked { held: 1, .. })),
                "{r:?}"
            );
        }
        // Each group waits once for the map: the first appender's group, then
        // everyone who queued behind it, and one spare for a thread the
        // scheduler delays past a whole `resize_wait`. Retrying each append
        // alone waited once per append.
        let waits = varve.store().gate.timeouts.load(Ordering::SeqCst);
        assert!(
            (1..=3).contains(&waits),
            "{waits} resize waits for {APPENDERS} appends"
        );
    }
}

/// loom models of the queue, election and hand-off: run with
/// `RUSTFLAGS="--cfg loom" cargo test -p varvedb --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    use super::*;
    use crate::storage::sync::model;

    /// A group queue that does not wait to gather (the model's clock stands
    /// still, so a gathering wait would never time out).
    fn queue() -> Arc<GroupQueue<u32, u32>> {
        Arc::new(GroupQueue::new(Duration::ZERO))
    }

    fn settled(group: &GroupQueue<u32, u32>) -> bool {
        let q = group.queue.lock();
        !q.leading && q.pending.is_empty()
    }

    #[test]
    fn every_appender_gets_exactly_its_own_answer_and_the_lead_always_passes_on() {
        model(|| {
            let group = queue();
            let committed = Arc::new(AtomicUsize::new(0));
            let submit = |group: &GroupQueue<u32, u32>, committed: &AtomicUsize, n: u32| {
                group.submit(n, |batch| {
                    committed.fetch_add(batch.len(), Ordering::SeqCst);
                    batch.into_iter().map(|r| r * 10).collect()
                })
            };
            let others: Vec<_> = (1..3)
                .map(|n| {
                    let (group, committed) = (Arc::clone(&group), Arc::clone(&committed));
                    thread::spawn(move || submit(&group, &committed, n))
                })
                .collect();
            assert_eq!(submit(&group, &committed, 0), Ok(0));
            for (n, t) in (1..).zip(others) {
                assert_eq!(t.join().unwrap(), Ok(n * 10));
            }
            // Each request was committed once, and nobody leads any more.
            assert_eq!(committed.load(Ordering::SeqCst), 3);
            assert!(settled(&group));
        });
    }

    #[test]
    fn a_panicking_leader_answers_its_group_and_hands_on() {
        quiet_injected_panics();
        // Executions in which the doomed request led and panicked.
        static PANICKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        // Executions in which the other request was in the panicking group.
        static ABANDONED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        model(|| {
            let group = queue();
            let doomed = {
                let group = Arc::clone(&group);
                thread::spawn(move || {
                    catch_unwind(AssertUnwindSafe(|| {
                        group.submit(1, |_| std::panic::panic_any(InjectedPanic))
                    }))
                })
            };
            // Answered by its own commit, or abandoned in the panicking group.
            let answer = group.submit(2, |batch| batch);
            assert!(answer == Ok(2) || answer == Err(Abandoned), "{answer:?}");
            if answer == Err(Abandoned) {
                ABANDONED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match doomed.join().unwrap() {
                // It led, and its commit panicked.
                Err(_) => {
                    PANICKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // The other request led a group holding both.
                Ok(doomed) => assert_eq!((doomed, answer), (Ok(1), Ok(2))),
            }
            // The lead was released: a later request is committed.
            assert_eq!(group.submit(3, |batch| batch), Ok(3));
            assert!(settled(&group));
        });
        // The model reached both a lone panicking leader and a shared group.
        assert!(PANICKED.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert!(ABANDONED.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }

    /// The payload of the panic the model injects.
    struct InjectedPanic;

    /// Keeps the panic hook from printing the injected panic in each of the
    /// model's executions; other panics print as usual.
    fn quiet_injected_panics() {
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !info.payload().is::<InjectedPanic>() {
                    previous(info);
                }
            }));
        });
    }

    #[test]
    fn a_leader_dropping_its_turn_unanswered_abandons_exactly_the_unanswered() {
        model(|| {
            let group = queue();
            let commits = Arc::new(AtomicUsize::new(0));
            // A commit that answers only the first request of its group.
            let first_only = |commits: &AtomicUsize, batch: Vec<u32>| {
                commits.fetch_add(1, Ordering::SeqCst);
                batch.into_iter().take(1).collect()
            };
            let other = {
                let (group, commits) = (Arc::clone(&group), Arc::clone(&commits));
                thread::spawn(move || group.submit(1, |batch| first_only(&commits, batch)))
            };
            let mine = group.submit(2, |batch| first_only(&commits, batch));
            let theirs = other.join().unwrap();
            let answers = [mine, theirs];
            let abandoned = answers.iter().filter(|a| **a == Err(Abandoned)).count();
            match commits.load(Ordering::SeqCst) {
                // One group of both: the second was not answered by the commit.
                1 => assert_eq!(abandoned, 1, "{answers:?}"),
                // A group each: each was answered.
                _ => assert_eq!(answers, [Ok(2), Ok(1)]),
            }
            assert!(settled(&group));
        });
    }
}
