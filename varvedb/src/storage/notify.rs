//! Commit notification: wakes threads waiting for new commits (subscriptions)
//! without polling in a sleep loop.
//!
//! Commits made by this process bump a counter under a mutex and wake every
//! waiter at once. Commits made by other processes cannot signal us, so
//! waiters also re-read LMDB's last transaction id every
//! [`CROSS_PROCESS_POLL`]: that bounds how late they notice.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Store;

/// The longest a waiter takes to notice a commit made by another process.
pub(crate) const CROSS_PROCESS_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub(crate) struct CommitSignal {
    ticket: Mutex<u64>,
    changed: Condvar,
}

impl CommitSignal {
    pub(crate) fn notify(&self) {
        *self.ticket.lock() += 1;
        self.changed.notify_all();
    }

    fn ticket(&self) -> u64 {
        *self.ticket.lock()
    }

    fn wait_past(&self, ticket: u64, timeout: Duration) {
        let mut current = self.ticket.lock();
        let deadline = Instant::now() + timeout;
        while *current == ticket {
            if self.changed.wait_until(&mut current, deadline).timed_out() {
                break;
            }
        }
    }
}

impl Store {
    /// Blocks until the store's last transaction id differs from `seen` or
    /// `timeout` passes; returns the last transaction id either way.
    pub(crate) fn wait_for_commit(&self, seen: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            // Take the ticket before looking, so a commit in between is not missed.
            let ticket = self.commits.ticket();
            let current = self.last_txn_id();
            let now = Instant::now();
            if current != seen || now >= deadline {
                return current;
            }
            self.commits.wait_past(ticket, (deadline - now).min(CROSS_PROCESS_POLL));
        }
    }
}
