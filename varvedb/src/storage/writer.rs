//! The write path: one write transaction, any number of blocks and state
//! updates, one durable commit.
//!
//! Sequence numbers are assigned inside the write transaction from what the
//! transaction itself reads (the last block of the log, the last run of the
//! stream id), so a failed or aborted append consumes no number and two
//! writers (threads, handles or processes) can never be handed the same one.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use heed::{MdbError, PutFlags, RwTxn};

use super::block::{BlockBuilder, BlockHeader};
use super::keys::{event_key, index_key, Run};
use super::{walk_stream, Store, StreamInfo, View};
use crate::error::{Error, Result};
use crate::position::{ExpectedVersion, StreamId, StreamSequence};

/// An open write transaction. Everything done through it commits together
/// (durably) or not at all.
pub(crate) struct WriteTxn<'s> {
    store: &'s Store,
    txn: RwTxn<'s>,
    /// One past the newest global sequence, once known in this transaction.
    end_global: Option<u64>,
}

fn is_map_full(e: &Error) -> bool {
    matches!(
        e,
        Error::Storage {
            source: heed::Error::Mdb(MdbError::MapFull),
            ..
        }
    )
}

fn is_map_resized(e: &Error) -> bool {
    matches!(
        e,
        Error::Storage {
            source: heed::Error::Mdb(MdbError::MapResized),
            ..
        }
    )
}

impl Store {
    /// Runs `f` in one write transaction and commits it durably. If the map
    /// fills up, the transaction is aborted, the map grown and `f` run again, so
    /// `f` must be repeatable (it is given a fresh transaction each time).
    ///
    /// Waiters are woken after the writer lock and the gate guard are
    /// released: a woken subscriber can open its snapshot at once, and a slow
    /// (or writing) waker holds up no other commit.
    pub(crate) fn write<R>(&self, f: impl FnMut(&mut WriteTxn<'_>) -> Result<R>) -> Result<R> {
        let r = self.write_locked(f)?;
        self.commits.notify();
        Ok(r)
    }

    fn write_locked<R>(&self, mut f: impl FnMut(&mut WriteTxn<'_>) -> Result<R>) -> Result<R> {
        let _writer = self.writer.lock();
        loop {
            let guard = self.gate.enter();
            let attempt = self.write_once(&mut f);
            drop(guard);
            match attempt {
                Ok(r) => return Ok(r),
                Err(e) if is_map_full(&e) => self.grow()?,
                Err(e) if is_map_resized(&e) => self.remap(0)?,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_once<R>(&self, f: &mut impl FnMut(&mut WriteTxn<'_>) -> Result<R>) -> Result<R> {
        let txn = self
            .env
            .write_txn()
            .map_err(self.err("starting a write transaction"))?;
        let mut wtxn = WriteTxn {
            store: self,
            txn,
            end_global: None,
        };
        let r = f(&mut wtxn)?;
        wtxn.txn.commit().map_err(self.err("committing"))?;
        Ok(r)
    }
}

impl<'s> WriteTxn<'s> {
    /// The store and the raw transaction, for other `storage` modules.
    pub(super) fn parts(&mut self) -> (&'s Store, &mut RwTxn<'s>) {
        (self.store, &mut self.txn)
    }

    /// Appends `block` to `(info, id)` after checking `expected`. Returns the
    /// first stream sequence and global sequence.
    pub(crate) fn append(
        &mut self,
        info: &StreamInfo,
        id: u64,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<(u64, u64)> {
        let store = self.store;
        let head = store.last_run(&self.txn, info.tag, id)?;
        let actual = head.map(|r| StreamSequence(r.end_seq() - 1));
        if !expected.matches(actual) {
            return Err(Error::VersionConflict {
                stream: info.name.to_string(),
                id: StreamId(id),
                expected,
                actual,
            });
        }
        let first_seq = head.map_or(0, |r| r.end_seq());
        let first_global = match self.end_global {
            Some(g) => g,
            None => store.end_global(&self.txn)?,
        };
        let count = block.count() as u64;

        let header = BlockHeader {
            stream_tag: info.tag,
            stream_id: id,
            first_stream_seq: first_seq,
            fingerprint: info.layout_fingerprint,
            count: block.count() as u32,
            meta_len: 0,
            first_global,
            committed_at_micros: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        };
        let bytes = block.seal(&header);
        store
            .events
            .put_with_flags(
                &mut self.txn,
                PutFlags::APPEND,
                &event_key(first_global),
                bytes,
            )
            .map_err(store.err("appending to the event log"))?;

        // Extend the stream id's last run when this block directly follows it
        // in the log; otherwise start a new run.
        let run = match head {
            Some(r) if r.end_global() == first_global => Run {
                count: r.count + count,
                ..r
            },
            _ => Run {
                first_seq,
                first_global,
                count,
            },
        };
        let key = index_key(info.tag, id, run.first_seq);
        store
            .index
            .put(&mut self.txn, &key, &run.encode(&key))
            .map_err(store.err("updating the stream index"))?;
        self.end_global = Some(first_global + count);
        Ok((first_seq, first_global))
    }

    /// The last stream sequence of `(tag, id)` in this transaction.
    pub(crate) fn version(&self, tag: u32, id: u64) -> Result<Option<u64>> {
        Ok(self
            .store
            .last_run(&self.txn, tag, id)?
            .map(|r| r.end_seq() - 1))
    }

    /// Calls `f(stream sequence, global sequence, payload)` for each event of
    /// `(tag, id)` from `from`, as this transaction sees them.
    pub(crate) fn walk_stream(
        &self,
        tag: u32,
        id: u64,
        from: u64,
        f: impl FnMut(u64, u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        walk_stream(self.store, &self.txn, tag, id, from, f)
    }

    /// A read snapshot of the commit this transaction started from, for reading
    /// events while writing state (a projection's batch). Pages it shows stay
    /// valid whatever this transaction writes. It holds a gate guard taken
    /// without waiting (this transaction's guard already keeps any remap out),
    /// so it must be dropped before the transaction ends: a guard kept past it
    /// would make a retry after map growth wait for it.
    pub(crate) fn snapshot(&self, store: &Arc<Store>) -> Result<View> {
        assert!(
            std::ptr::eq(self.store, Arc::as_ptr(store)),
            "a snapshot of another store"
        );
        let guard = store.gate.enter_nested();
        let txn = store
            .env
            .clone()
            .static_read_txn()
            .map_err(store.err("opening a read snapshot"))?;
        Ok(View::new(txn, guard, Arc::clone(store)))
    }

    /// Reads a value of the `state` database (snapshots, checkpoints, read models).
    pub(crate) fn state_get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.store
            .state
            .get(&self.txn, key)
            .map_err(self.store.err("reading state"))
    }

    /// Writes a value of the `state` database.
    pub(crate) fn state_put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.store
            .state
            .put(&mut self.txn, key, value)
            .map_err(self.store.err("writing state"))
    }

    /// Deletes a value of the `state` database; returns whether it existed.
    pub(crate) fn state_delete(&mut self, key: &[u8]) -> Result<bool> {
        self.store
            .state
            .delete(&mut self.txn, key)
            .map_err(self.store.err("deleting state"))
    }

    /// Deletes every `state` key starting with `prefix`; returns how many.
    pub(crate) fn state_delete_prefix(&mut self, prefix: &[u8]) -> Result<usize> {
        let err = self.store.err("deleting state");
        let mut iter = self
            .store
            .state
            .prefix_iter_mut(&mut self.txn, prefix)
            .map_err(&err)?;
        let mut n = 0;
        while iter.next().transpose().map_err(&err)?.is_some() {
            // SAFETY: heed requires that no reference into the database from this
            // iterator is alive while deleting; the entry just read is discarded.
            unsafe { iter.del_current() }.map_err(&err)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::{Arc, Mutex, Weak};
    use std::task::{Wake, Waker};
    use std::thread::{self, ThreadId};

    use super::*;
    use crate::config::VarveConfig;

    /// A task waker that records, for each wake, the thread that woke it and
    /// whether the store's writer lock was free then.
    struct LockProbe {
        store: Weak<Store>,
        wakes: Mutex<Vec<(ThreadId, bool)>>,
    }

    impl Wake for LockProbe {
        fn wake(self: Arc<Self>) {
            let free = self
                .store
                .upgrade()
                .is_some_and(|store| !store.writer.is_locked());
            self.wakes
                .lock()
                .unwrap()
                .push((thread::current().id(), free));
        }
    }

    #[test]
    fn a_commit_wakes_its_waiters_after_releasing_the_writer_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), VarveConfig::default()).unwrap();
        let probe = Arc::new(LockProbe {
            store: Arc::downgrade(&store),
            wakes: Mutex::new(Vec::new()),
        });
        store.register_waker(store.waker_key(), &Waker::from(Arc::clone(&probe)));
        store.write(|w| w.state_put(b"k", b"v")).unwrap();
        // The cross-process poller may wake the task too; look at the commit's wake.
        let me = thread::current().id();
        let wakes = probe.wakes.lock().unwrap().clone();
        let ours: Vec<bool> = wakes
            .iter()
            .filter(|(t, _)| *t == me)
            .map(|&(_, free)| free)
            .collect();
        assert_eq!(ours, [true], "woken once, with the writer lock free");
    }
}
