//! The write path: one write transaction, any number of blocks and state
//! updates, one durable commit.
//!
//! Sequence numbers are assigned inside the write transaction from what the
//! transaction itself reads (the last block of the log, the last run of the
//! stream id), so a failed or aborted append consumes no number and two
//! writers (threads, handles or processes) can never be handed the same one.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use heed::{MdbError, PutFlags, RwTxn};

use super::block::{BlockBuilder, BlockHeader};
use super::catalog::Bound;
use super::keys::{event_key, index_key, Run};
use super::{Remap, Store, StreamInfo, View};
use crate::error::{Error, Result};
use crate::position::{ExpectedVersion, StreamId, StreamSequence};

/// An open write transaction. Everything done through it commits together
/// (durably) or not at all.
pub(crate) struct WriteTxn<'s> {
    pub(super) store: &'s Store,
    pub(super) txn: RwTxn<'s>,
    /// One past the newest global sequence, once known in this transaction.
    pub(super) end_global: Option<u64>,
    /// Catalog entries this transaction created or completed, taught to their
    /// handles only once it commits (an aborted attempt teaches nothing).
    pub(super) bound: Vec<Bound>,
    /// A map-full or map-resized error an LMDB call of this transaction
    /// returned: the transaction is then doomed (LMDB marks it failed), and
    /// [`Store::write`] grows or remaps and retries whatever the closure
    /// returns.
    environmental: Cell<Option<Environmental>>,
    /// The last LMDB error a call through this transaction returned, so a
    /// caller that handed the error to code which wrapped or dropped it
    /// (a projection's handler) still learns it was the store's.
    failure: Cell<Option<(&'static str, MdbError)>>,
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
    /// After a commit that appended, the log's end is published, waking the
    /// subscriptions waiting for it: a commit that only writes state (a
    /// projection's checkpoint, a snapshot, the catalog) wakes nobody. Waiters
    /// are woken after the writer lock and the gate guard are released: a
    /// woken subscriber can open its snapshot at once, and a slow (or
    /// writing) waker holds up no other commit.
    pub(crate) fn write<R>(&self, f: impl FnMut(&mut WriteTxn<'_>) -> Result<R>) -> Result<R> {
        self.check_writable("writing")?;
        let Committed { value, end, txn_id } = self.write_locked(f)?;
        self.commits.publish(end, txn_id);
        Ok(value)
    }

    fn write_locked<R>(
        &self,
        mut f: impl FnMut(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<Committed<R>> {
        let _writer = self.writer.lock();
        loop {
            let guard = self.gate.enter();
            let attempt = self.write_once(&mut f);
            drop(guard);
            let failure = match attempt {
                Ok(committed) => return Ok(committed),
                Err(Attempt::Failed(e)) => e,
                // The closure's own error, with LMDB's error recorded in the
                // transaction: growth is retried even if the closure wrapped
                // or swallowed the error it got.
                Err(Attempt::Env(env)) => {
                    match env {
                        Environmental::MapFull => self.grow()?,
                        Environmental::MapResized => self.remap(Remap::Adopt)?,
                    }
                    continue;
                }
            };
            match failure {
                e if is_map_full(&e) => self.grow()?,
                e if is_map_resized(&e) => self.remap(Remap::Adopt)?,
                e => return Err(e),
            }
        }
    }

    fn write_once<R>(
        &self,
        f: &mut impl FnMut(&mut WriteTxn<'_>) -> Result<R>,
    ) -> std::result::Result<Committed<R>, Attempt> {
        let txn = self
            .env
            .write_txn()
            .map_err(self.err("starting a write transaction"))
            .map_err(Attempt::Failed)?;
        let mut wtxn = WriteTxn {
            store: self,
            txn,
            end_global: None,
            bound: Vec::new(),
            environmental: Cell::new(None),
            failure: Cell::new(None),
        };
        let value = match f(&mut wtxn) {
            Ok(value) => value,
            Err(e) => {
                return Err(match wtxn.environmental.get() {
                    Some(env) => Attempt::Env(env),
                    None => Attempt::Failed(e),
                })
            }
        };
        if let Some(env) = wtxn.environmental.get() {
            // The closure swallowed a failed write: committing would lose it.
            return Err(Attempt::Env(env));
        }
        if super::identity::is_unlinked(&self.data_file) {
            // The store was deleted under us: a commit would be acknowledged
            // and gone with the file.
            return Err(Attempt::Failed(Error::StoreDeleted {
                path: self.path.clone(),
            }));
        }
        // The end of the log this commit leaves, if it appended. A commit
        // that did not leaves the end where it was; it is not read here, as
        // a failed read (a damaged page) would doom the transaction.
        let end = wtxn.end_global;
        // A write transaction's id is the id its commit gets.
        let txn_id = wtxn.txn.id();
        let WriteTxn { txn, bound, .. } = wtxn;
        txn.commit()
            .map_err(self.err("committing"))
            .map_err(Attempt::Failed)?;
        self.publish_bound(bound);
        Ok(Committed { value, end, txn_id })
    }
}

/// What a committed [`Store::write`] attempt leaves.
struct Committed<R> {
    value: R,
    /// One past the last global sequence, if known.
    end: Option<u64>,
    txn_id: usize,
}

/// Why a [`Store::write`] attempt did not commit.
enum Attempt {
    Failed(Error),
    /// An LMDB call in the transaction hit a condition that growing or
    /// remapping the map cures, whatever the closure made of it.
    Env(Environmental),
}

/// The LMDB conditions [`Store::write`] cures by remapping and retrying.
#[derive(Debug, Clone, Copy)]
enum Environmental {
    MapFull,
    MapResized,
}

impl<'s> WriteTxn<'s> {
    /// Appends `block` to `(info, id)` after checking `expected`. Returns the
    /// first stream sequence and global sequence.
    ///
    /// The stream's catalog entry is created here, in this transaction, by
    /// the first append to it (opening a stream writes nothing). A
    /// `TypeMismatch` (the stream was created meanwhile for another type) or
    /// `VersionConflict` is found before anything is written.
    pub(crate) fn append(
        &mut self,
        info: &StreamInfo,
        id: u64,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<(u64, u64)> {
        let store = self.store;
        let target = store.append_target(&self.txn, info)?;
        let tag = match &target {
            Ok(tag) => Some(*tag),
            Err(existing) => existing.as_ref().map(|(tag, _)| *tag),
        };
        let head = match tag {
            Some(tag) => store.last_run(&self.txn, tag, id)?,
            None => None,
        };
        let actual = head.map(|r| StreamSequence(r.end_seq() - 1));
        if !expected.matches(actual) {
            return Err(Error::VersionConflict {
                stream: info.name.to_string(),
                id: StreamId(id),
                expected,
                actual,
            });
        }
        let tag = match target {
            Ok(tag) => tag,
            Err(existing) => {
                let (tag, bound) = store.settle_stream(&mut self.txn, info, existing)?;
                self.bound.push(bound);
                tag
            }
        };
        let first_seq = head.map_or(0, |r| r.end_seq());
        let first_global = match self.end_global {
            Some(g) => g,
            None => store.end_global(&self.txn)?,
        };
        let count = block.count() as u64;

        let header = BlockHeader {
            stream_tag: tag,
            stream_id: id,
            first_stream_seq: first_seq,
            // The version it was written with: a derived type's schema
            // fingerprint, a plain type's layout fingerprint.
            fingerprint: info.block_fingerprint(),
            count: block.count() as u32,
            meta_len: 0,
            first_global,
            committed_at_micros: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        };
        let bytes = block.seal(&header);
        let put = store.events.put_with_flags(
            &mut self.txn,
            PutFlags::APPEND,
            &event_key(first_global),
            bytes,
        );
        self.lmdb("appending to the event log", put)?;

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
        let key = index_key(tag, id, run.first_seq);
        let put = store.index.put(&mut self.txn, &key, &run.encode(&key));
        self.lmdb("updating the stream index", put)?;
        self.end_global = Some(first_global + count);
        Ok((first_seq, first_global))
    }

    /// The tag of `info`'s stream in this transaction (`None` while it does
    /// not exist), checked against the handle's type.
    pub(crate) fn stream_tag(&self, info: &StreamInfo) -> Result<Option<u32>> {
        match self.store.append_target(&self.txn, info)? {
            Ok(tag) => Ok(Some(tag)),
            Err(existing) => Ok(existing.map(|(tag, _)| tag)),
        }
    }

    /// The last stream sequence of `(tag, id)` in this transaction.
    pub(crate) fn version(&self, tag: u32, id: u64) -> Result<Option<u64>> {
        Ok(self
            .store
            .last_run(&self.txn, tag, id)?
            .map(|r| r.end_seq() - 1))
    }

    /// Calls `f(stream sequence, global sequence, block fingerprint, payload)`
    /// for each event of `(tag, id)` from `from`, as this transaction sees them.
    pub(crate) fn walk_stream_versions(
        &self,
        tag: u32,
        id: u64,
        from: u64,
        f: impl FnMut(u64, u64, u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        super::snapshot::walk_stream_versions(self.store, &self.txn, tag, id, from, f)
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

    /// Maps an LMDB result to ours, first recording its error in the
    /// transaction: see [`WriteTxn::take_failure`].
    pub(super) fn lmdb<T>(&self, operation: &'static str, result: heed::Result<T>) -> Result<T> {
        result.map_err(|e| {
            if let heed::Error::Mdb(code) = e {
                match code {
                    MdbError::MapFull => self.environmental.set(Some(Environmental::MapFull)),
                    MdbError::MapResized => self.environmental.set(Some(Environmental::MapResized)),
                    _ => {}
                }
                self.failure.set(Some((operation, code)));
            }
            self.store.err(operation)(e)
        })
    }

    /// The last LMDB error a call through this transaction returned since the
    /// previous take, rebuilt as the error that call returned. For a caller
    /// that handed that error to user code: whatever the code made of it, the
    /// failure was the store's.
    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure
            .take()
            .map(|(operation, code)| self.store.err(operation)(heed::Error::Mdb(code)))
    }

    /// Reads a value of the `state` database (snapshots, checkpoints, read models).
    pub(crate) fn state_get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        let got = self.store.state_db()?.get(&self.txn, key);
        self.lmdb("reading state", got)
    }

    /// Writes a value of the `state` database.
    pub(crate) fn state_put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let put = self.store.state_db()?.put(&mut self.txn, key, value);
        self.lmdb("writing state", put)
    }

    /// Deletes a value of the `state` database; returns whether it existed.
    pub(crate) fn state_delete(&mut self, key: &[u8]) -> Result<bool> {
        let deleted = self.store.state_db()?.delete(&mut self.txn, key);
        self.lmdb("deleting state", deleted)
    }

    /// Deletes every `state` key starting with `prefix`; returns how many.
    pub(crate) fn state_delete_prefix(&mut self, prefix: &[u8]) -> Result<usize> {
        let deleted = Self::delete_prefix(self.store.state_db()?, &mut self.txn, prefix);
        self.lmdb("deleting state", deleted)
    }

    fn delete_prefix(state: &super::Db, txn: &mut RwTxn<'_>, prefix: &[u8]) -> heed::Result<usize> {
        let mut iter = state.prefix_iter_mut(txn, prefix)?;
        let mut n = 0;
        while iter.next().transpose()?.is_some() {
            // SAFETY: heed requires that no reference into the database from this
            // iterator is alive while deleting; the entry just read is discarded.
            unsafe { iter.del_current() }?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
impl Store {
    /// Commits `f` without publishing the log's end or waking anyone: what a
    /// commit of another process looks like to this one.
    pub(crate) fn commit_as_another_process<R>(
        &self,
        mut f: impl FnMut(&mut WriteTxn<'_>) -> Result<R>,
    ) -> Result<R> {
        let _writer = self.writer.lock();
        let _guard = self.gate.enter();
        match self.write_once(&mut f) {
            Ok(committed) => Ok(committed.value),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Env(env)) => panic!("a test store ran into {env:?}"),
        }
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
        // An append: a commit that only writes state wakes nobody.
        let ty = super::super::TypeIdentity {
            type_name: "raw",
            layout_fingerprint: 1,
            schema_fingerprint: 0,
            schema: None,
        };
        let info = store.open_stream("s", &ty).unwrap();
        store
            .write(|w| {
                let mut block = BlockBuilder::with_capacity(0);
                block.start(1);
                let mut buf = block.begin_event();
                buf.extend_from_slice(&[7; 16]);
                block.finish_event(buf).unwrap();
                w.append(&info, 1, ExpectedVersion::Any, &mut block)
            })
            .unwrap();
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
