//! Group commit: appends that arrive while a commit is in flight share the next
//! transaction and its sync.
//!
//! The first appender to find no commit in flight becomes the *leader*: it takes
//! every queued append, writes them in one transaction in queue order, commits
//! (one durable sync), and hands each appender its own result. Appenders that
//! arrive meanwhile queue up and sleep; when the leader is done it passes
//! leadership to the first of them. Nobody is acknowledged before the sync that
//! makes its events durable, and each append keeps its own expected-version
//! check: a conflict rejects that append alone.

use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::block::BlockBuilder;
use super::{Store, StreamInfo};
use crate::error::{Error, Result};
use crate::position::ExpectedVersion;

struct Request {
    info: StreamInfo,
    id: u64,
    expected: ExpectedVersion,
    block: BlockBuilder,
    slot: Arc<Slot>,
}

enum State {
    Waiting,
    /// The previous leader finished: this appender leads the next group.
    Lead,
    Done(Result<(u64, u64)>, BlockBuilder),
}

struct Slot {
    state: Mutex<State>,
    changed: Condvar,
}

impl Slot {
    fn set(&self, state: State) {
        *self.state.lock() = state;
        self.changed.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    pending: Vec<Request>,
    leading: bool,
    /// How many appends the previous group committed: a leader waits (briefly)
    /// for that many to queue, since writers that just got their answer are
    /// about to send their next append.
    last_group: usize,
}

/// The longest a leader waits for the appends of writers that were in the
/// previous group. A durable commit costs about 200 µs on the development
/// machine, so gathering one more append in this time halves its cost; a
/// lone writer never waits (its previous group was itself).
const GATHER_WAIT: Duration = Duration::from_micros(50);

/// The queue of appends waiting for the next group commit.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    /// Signalled when an append joins the queue, for a gathering leader.
    arrived: Condvar,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl Store {
    /// Appends `block` to `(info, id)` durably, sharing the commit with any
    /// concurrent appends. Returns the first stream and global sequences.
    pub(crate) fn append(
        &self,
        info: &StreamInfo,
        id: u64,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<(u64, u64)> {
        let slot = Arc::new(Slot {
            state: Mutex::new(State::Waiting),
            changed: Condvar::new(),
        });
        let request = Request {
            info: info.clone(),
            id,
            expected,
            block: mem::take(block),
            slot: Arc::clone(&slot),
        };
        let mut lead = {
            let mut queue = self.group.queue.lock();
            queue.pending.push(request);
            self.group.arrived.notify_one();
            !mem::replace(&mut queue.leading, true)
        };
        loop {
            if lead {
                // Commit what is queued (our own append included), then hand over.
                let batch = self.gather();
                self.commit_group(batch);
                let mut queue = self.group.queue.lock();
                match queue.pending.first() {
                    Some(next) => next.slot.set(State::Lead),
                    None => queue.leading = false,
                }
            }
            let mut state = slot.state.lock();
            loop {
                match mem::replace(&mut *state, State::Waiting) {
                    State::Waiting => slot.changed.wait(&mut state),
                    State::Lead => {
                        lead = true;
                        break;
                    }
                    State::Done(result, returned) => {
                        *block = returned;
                        return result;
                    }
                }
            }
        }
    }

    /// Takes the queued appends for the next group, first waiting up to
    /// [`GATHER_WAIT`] for as many as the previous group had.
    fn gather(&self) -> Vec<Request> {
        let mut queue = self.group.queue.lock();
        let deadline = Instant::now() + GATHER_WAIT;
        while queue.pending.len() < queue.last_group {
            if self
                .group
                .arrived
                .wait_until(&mut queue, deadline)
                .timed_out()
            {
                break;
            }
        }
        queue.last_group = queue.pending.len();
        mem::take(&mut queue.pending)
    }

    /// Writes `batch` in one transaction and answers every request. If the
    /// group transaction fails for a reason other than one append's version
    /// conflict, each append is retried alone so it gets its own outcome.
    fn commit_group(&self, mut batch: Vec<Request>) {
        let grouped = self.write(|txn| {
            let mut results = Vec::with_capacity(batch.len());
            for r in batch.iter_mut() {
                match txn.append(&r.info, r.id, r.expected, &mut r.block) {
                    Ok(positions) => results.push(Ok(positions)),
                    // Checked before anything is written: only this append fails.
                    Err(e @ Error::VersionConflict { .. }) => results.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            Ok(results)
        });
        match grouped {
            Ok(results) => {
                for (r, result) in batch.into_iter().zip(results) {
                    r.slot.set(State::Done(result, r.block));
                }
            }
            Err(_) if batch.len() > 1 => {
                for mut r in batch {
                    let result =
                        self.write(|txn| txn.append(&r.info, r.id, r.expected, &mut r.block));
                    r.slot.set(State::Done(result, r.block));
                }
            }
            Err(e) => {
                if let Some(r) = batch.pop() {
                    r.slot.set(State::Done(Err(e), r.block));
                }
            }
        }
    }
}
