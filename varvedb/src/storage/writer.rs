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

use heed::{MdbError, PutFlags};

use super::kv::Txn;

use super::block::{BlockBuilder, BlockHeader, BlockView};
use super::catalog::Bound;
use super::keys::{
    decode_id_value, entity_counter_key, entity_key, entity_reverse_key, event_key, id_value,
    index_key, open_sealed, sealed_value, Run,
};
use super::{Remap, Store, StreamInfo, View};
use crate::error::{Error, Location, Result, StorageErrorKind, StoredAt};
use crate::id::EventId;
use crate::position::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};

/// Where an append's events are: where [`WriteTxn::append`] wrote them, or,
/// for an idempotent retry, where the original append had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The stream id the events are in.
    pub(crate) id: u64,
    pub(crate) first_seq: u64,
    pub(crate) first_global: u64,
    pub(crate) count: u64,
    /// The commit time of the (first) event.
    pub(crate) committed_at_micros: u64,
    /// For a retry whose original events lie apart in the log (they were
    /// appended by several calls): each event's global sequence.
    pub(crate) scattered: Option<Vec<u64>>,
    /// Whether every event was already stored: nothing was written.
    pub(crate) idempotent: bool,
}

impl Placed {
    /// The global sequence of the `i`th event.
    pub(crate) fn global(&self, i: u64) -> u64 {
        match &self.scattered {
            Some(globals) => globals[i as usize],
            None => self.first_global + i,
        }
    }
}

/// Which stream id an append goes to: one given, or the one an entity key
/// maps to (allocated in the append's transaction if the key is new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entity {
    Id(u64),
    Key(Box<[u8]>),
}

/// Where an event found by its id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    pub(crate) tag: u32,
    pub(crate) id: u64,
    pub(crate) seq: u64,
    pub(crate) global: u64,
}

/// The first stream id allocated to entity keys, in each stream: the top
/// half of the id space, so allocated ids stay clear of small hand-chosen ones.
pub(crate) const FIRST_KEYED_ID: u64 = 1 << 63;

/// An open write transaction. Everything done through it commits together
/// (durably) or not at all.
pub(crate) struct WriteTxn<'s> {
    pub(super) store: &'s Store,
    pub(super) txn: Txn<'s>,
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
    /// The tamper-evident chain's state, read by the first append.
    pub(super) chain: super::chain::TxnChain,
    /// What this transaction opened of an encrypted store (empty otherwise).
    pub(super) plain: super::crypt::Plaintexts,
    /// The master key this transaction wrapped the store's keys under (a
    /// master-key change), given to the keyring once it commits, before the
    /// writer lock is released: no other write of this process runs between
    /// the commit and the keyring's update, and an aborted attempt changes
    /// nothing.
    pub(super) master: Option<super::crypt::Key32>,
}

fn is_map_full(e: &Error) -> bool {
    matches!(
        e,
        Error::Storage { source, .. } if source.kind() == StorageErrorKind::MapFull
    )
}

fn is_map_resized(e: &Error) -> bool {
    matches!(
        e,
        Error::Storage { source, .. } if source.kind() == StorageErrorKind::MapResized
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
        let txn = self.begin_write().map_err(Attempt::Failed)?;
        if let Some(ring) = &self.crypt {
            // Another handle may have rotated the data key: seal with the
            // one this transaction's `crypt` record names.
            ring.refresh(&self.path, &self.meta, &txn)
                .map_err(Attempt::Failed)?;
        }
        // Another process may have given the store a key vault: this
        // handle's appends would seal with data keys erasure cannot reach.
        self.check_vault_record(&txn).map_err(Attempt::Failed)?;
        let mut wtxn = WriteTxn {
            store: self,
            txn,
            end_global: None,
            bound: Vec::new(),
            environmental: Cell::new(None),
            failure: Cell::new(None),
            chain: Default::default(),
            plain: Default::default(),
            master: None,
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
        if self.data_file().is_some_and(super::identity::is_unlinked) {
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
        let WriteTxn {
            txn, bound, master, ..
        } = wtxn;
        let sync = crate::trace::timer!(TRACE);
        txn.commit()
            .map_err(self.err("committing"))
            .map_err(Attempt::Failed)?;
        crate::trace::event!(
            TRACE,
            "varvedb.sync",
            "transaction committed",
            txn_id = txn_id as u64,
            appended = end.is_some(),
            sync_us = sync.micros()
        );
        self.publish_bound(bound);
        if let (Some(master), Some(ring)) = (master, &self.crypt) {
            ring.set_master(master);
        }
        Ok(Committed { value, end, txn_id })
    }
}

impl Store {
    /// Starts a write transaction of this store's engine.
    fn begin_write(&self) -> Result<Txn<'_>> {
        match &self.engine {
            super::Engine::Lmdb { env, .. } => env.write_txn().map(Txn::Rw),
            #[cfg(feature = "postgres")]
            super::Engine::Pg(pg) => pg.begin_write().map(Txn::Pg),
        }
        .map_err(self.err("starting a write transaction"))
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
    ) -> Result<Placed> {
        let store = self.store;
        let target = store.append_target(&self.txn, info)?;
        let tag = match &target {
            Ok(tag) => Some(*tag),
            Err(existing) => existing.as_ref().map(|(tag, _)| *tag),
        };
        // A retry of an append whose ids are stored answers with the
        // original positions, whatever `expected` says, and writes nothing.
        // Ids all above the greatest stored one (time-ordered ids, UUIDv7)
        // cannot be stored: one look at the index's last key instead of a
        // lookup per id, and the ids are then appended at its end.
        let above_all = self.ids_above_all(block.event_ids())?;
        if !block.event_ids().is_empty() && !above_all {
            if let Some(placed) = self.replay(info, tag, id, block.event_ids())? {
                return Ok(placed);
            }
        }
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
        let (meta_flags, meta_len) = block.meta();
        let committed_at_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let header = BlockHeader {
            stream_tag: tag,
            stream_id: id,
            first_stream_seq: first_seq,
            // The version it was written with: a derived type's schema
            // fingerprint, a plain type's layout fingerprint.
            fingerprint: info.block_fingerprint(),
            count: block.count() as u32,
            meta_flags,
            meta_len,
            first_global,
            committed_at_micros,
        };
        let bytes = block.seal(&header);
        let sealed;
        let bytes = match store.keyring() {
            None => bytes,
            Some(ring) => {
                sealed = match store.vault() {
                    // The entity's key is in the vault (committed there
                    // first) before this block can commit.
                    Some(vault) => vault.seal_block(first_global, tag, id, bytes)?,
                    None => super::crypt::sealed_block(ring, first_global, bytes)?,
                };
                &sealed[..]
            }
        };
        let put = store
            .events
            .append(&mut self.txn, &event_key(first_global), bytes);
        self.lmdb("appending to the event log", put)?;
        self.chain_append(first_global, bytes, None)?;

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
        // The idempotency index: checked above to hold none of these ids,
        // and written without overwriting (`APPEND` too refuses a key that is
        // not above the last), so an id is never stored twice.
        let ascending = block.event_ids().windows(2).all(|w| w[0] < w[1]);
        let flags = if above_all && ascending {
            PutFlags::APPEND
        } else {
            PutFlags::NO_OVERWRITE
        };
        for (i, event_id) in block.event_ids().iter().enumerate() {
            let put = store.ids_db()?.put_with_flags(
                &mut self.txn,
                flags,
                event_id,
                &id_value(event_id, first_global + i as u64),
            );
            self.lmdb("recording event ids", put)?;
        }
        self.end_global = Some(first_global + count);
        Ok(Placed {
            id,
            first_seq,
            first_global,
            count,
            committed_at_micros,
            scattered: None,
            idempotent: false,
        })
    }

    /// [`WriteTxn::append`] to the stream id `entity` names.
    pub(crate) fn append_to(
        &mut self,
        info: &StreamInfo,
        entity: &Entity,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<Placed> {
        let id = match entity {
            Entity::Id(id) => *id,
            Entity::Key(key) => match self.entity_id(info, key)? {
                Some(id) => id,
                None => {
                    // A new key's stream id holds no events, so any stored
                    // id is stored elsewhere: refuse before allocating.
                    if !block.event_ids().is_empty() {
                        self.replay(info, None, FIRST_KEYED_ID, block.event_ids())?;
                    }
                    self.entity_id_or_allocate(info, key, expected)?
                }
            },
        };
        self.append(info, id, expected, block)
    }

    /// Where the event stored with `event_id` is, if any.
    pub(crate) fn event_by_id(&self, event_id: &[u8; 16]) -> Result<Option<StoredEvent>> {
        let Some(global) = self.stored_id(event_id)? else {
            return Ok(None);
        };
        let (tag, id, seq, _) = self.locate_id(event_id, global)?;
        Ok(Some(StoredEvent {
            tag,
            id,
            seq,
            global,
        }))
    }

    /// The name of the stream with `tag`.
    pub(crate) fn stream_name(&self, tag: u32) -> Result<String> {
        Ok(self.store.stream_by_tag(&self.txn, tag)?.name.to_string())
    }

    /// Whether every id of `ids` (none: false) is above the greatest stored
    /// id, so that none can be stored.
    fn ids_above_all(&self, ids: &[[u8; 16]]) -> Result<bool> {
        let Some(lowest) = ids.iter().min() else {
            return Ok(false);
        };
        let last = self.store.ids_db()?.last(&self.txn);
        Ok(match self.lmdb("reading event ids", last)? {
            None => true,
            Some((greatest, _)) => lowest.as_slice() > greatest,
        })
    }

    /// The global sequence stored for `event_id`, if any.
    fn stored_id(&self, event_id: &[u8; 16]) -> Result<Option<u64>> {
        let got = self.store.ids_db()?.get(&self.txn, event_id);
        let Some(v) = self.lmdb("reading event ids", got)? else {
            return Ok(None);
        };
        decode_id_value(event_id, v)
            .map(Some)
            .ok_or_else(|| Error::Corruption {
                location: Location::Record(format!(
                    "the event id index entry of {}",
                    EventId(*event_id)
                )),
                detail: "malformed entry".into(),
            })
    }

    /// Where the event stored under `event_id` at `global` is, checked
    /// against its block: `(tag, id, seq, committed_at)`.
    fn locate_id(&self, event_id: &[u8; 16], global: u64) -> Result<(u32, u64, u64, u64)> {
        let broken = |detail: String| Error::Corruption {
            location: Location::Global(GlobalSequence(global)),
            detail,
        };
        let (_, block): (u64, BlockView<'_>) = self
            .store
            .block_containing(&self.txn, &self.plain, global)?
            .ok_or_else(|| broken("the event id index points past the log".into()))?;
        let h = *block.header();
        let (meta, _) = block
            .entry((global - h.first_global) as u32)
            .map_err(|e| broken(e.0))?;
        if meta.event_id.as_ref() != Some(event_id) {
            return Err(broken(format!(
                "the event id index maps {} to an event without that id",
                EventId(*event_id)
            )));
        }
        let seq = h.first_stream_seq + (global - h.first_global);
        Ok((h.stream_tag, h.stream_id, seq, h.committed_at_micros))
    }

    /// If `ids` are stored, as one run of `(tag, id)` in this order, their
    /// original positions; `None` if none is stored; an
    /// [`Error::EventIdConflict`] for anything in between.
    fn replay(
        &self,
        info: &StreamInfo,
        tag: Option<u32>,
        id: u64,
        ids: &[[u8; 16]],
    ) -> Result<Option<Placed>> {
        let mut stored = Vec::with_capacity(ids.len());
        for event_id in ids {
            stored.push(self.stored_id(event_id)?);
        }
        let Some(first_stored) = stored.iter().position(Option::is_some) else {
            return Ok(None);
        };
        let conflict = |index: usize, global: u64, reason: &'static str| -> Result<Error> {
            let (t, i, seq, _) = self.locate_id(&ids[index], global)?;
            let name = self.store.stream_by_tag(&self.txn, t)?.name.to_string();
            Ok(Error::EventIdConflict {
                stream: info.name.to_string(),
                id: StreamId(id),
                event_id: EventId(ids[index]),
                index,
                stored: Box::new(StoredAt {
                    stream: name,
                    id: StreamId(i),
                    sequence: StreamSequence(seq),
                    global: GlobalSequence(global),
                }),
                reason,
            })
        };
        if stored.iter().any(Option::is_none) {
            let g = stored[first_stored].unwrap_or_default();
            return Err(conflict(
                first_stored,
                g,
                "other events of this append have ids that are not stored: a retry must \
                 repeat the original append's ids, or a run of them, exactly",
            )?);
        }
        let mut globals = Vec::with_capacity(ids.len());
        let mut first = None;
        for (i, (event_id, global)) in ids.iter().zip(&stored).enumerate() {
            let global = global.unwrap_or_default();
            let (t, sid, seq, at) = self.locate_id(event_id, global)?;
            if Some(t) != tag || sid != id {
                return Err(conflict(
                    i,
                    global,
                    "it is stored in another stream or stream id",
                )?);
            }
            let (first_seq, _) = *first.get_or_insert((seq, at));
            if seq != first_seq + i as u64 {
                return Err(conflict(
                    i,
                    global,
                    "the stored events with these ids are not one run in this order",
                )?);
            }
            globals.push(global);
        }
        let (first_seq, committed_at_micros) = first.unwrap_or_default();
        let consecutive = globals.windows(2).all(|w| w[1] == w[0] + 1);
        Ok(Some(Placed {
            id,
            first_seq,
            first_global: globals[0],
            count: globals.len() as u64,
            committed_at_micros,
            scattered: (!consecutive).then_some(globals),
            idempotent: true,
        }))
    }

    /// The stream id the entity `key` of `info`'s stream maps to, as this
    /// transaction sees it.
    pub(crate) fn entity_id(&self, info: &StreamInfo, key: &[u8]) -> Result<Option<u64>> {
        match self.stream_tag(info)? {
            Some(tag) => self.store.entity_id(&self.txn, tag, key),
            None => Ok(None),
        }
    }

    /// The stream id of entity `key` in `info`'s stream, allocated (and the
    /// stream created) if the key is new, in this transaction. `expected`
    /// is checked first for a new key (whose stream id has no events), so a
    /// refused append allocates nothing.
    pub(crate) fn entity_id_or_allocate(
        &mut self,
        info: &StreamInfo,
        key: &[u8],
        expected: ExpectedVersion,
    ) -> Result<u64> {
        if let Some(id) = self.entity_id(info, key)? {
            return Ok(id);
        }
        let store = self.store;
        let target = store.append_target(&self.txn, info)?;
        let tag = match target {
            Ok(tag) => tag,
            Err(existing) => {
                if !expected.matches(None) {
                    return Err(Error::VersionConflict {
                        stream: info.name.to_string(),
                        id: StreamId(FIRST_KEYED_ID),
                        expected,
                        actual: None,
                    });
                }
                let (tag, bound) = store.settle_stream(&mut self.txn, info, existing)?;
                self.bound.push(bound);
                tag
            }
        };
        let counter_key = entity_counter_key(tag);
        let got = store.keys_db()?.get(&self.txn, &counter_key);
        let mut next = match self.lmdb("reading entity keys", got)? {
            None => FIRST_KEYED_ID,
            Some(v) => open_sealed(&counter_key, v)
                .and_then(|v| Some(u64::from_le_bytes(v.try_into().ok()?)))
                .ok_or_else(|| Error::Corruption {
                    location: Location::Record(format!(
                        "the entity key counter of stream {:?}",
                        info.name
                    )),
                    detail: "malformed entry".into(),
                })?,
        };
        // Skip ids that already hold events (chosen by hand).
        while store.last_run(&self.txn, tag, next)?.is_some() {
            next += 1;
        }
        if !expected.matches(None) {
            return Err(Error::VersionConflict {
                stream: info.name.to_string(),
                id: StreamId(next),
                expected,
                actual: None,
            });
        }
        let forward = entity_key(tag, key);
        let reverse = entity_reverse_key(tag, next);
        let puts = [
            (
                forward.as_slice(),
                sealed_value(&forward, &next.to_le_bytes()),
            ),
            (&reverse[..], sealed_value(&reverse, key)),
            (
                &counter_key[..],
                sealed_value(&counter_key, &(next + 1).to_le_bytes()),
            ),
        ];
        for (k, v) in puts {
            let put = store.keys_db()?.put(&mut self.txn, k, &v);
            self.lmdb("writing entity keys", put)?;
        }
        Ok(next)
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
        f: impl FnMut(u64, u64, u64, &[u8], super::RawMeta<'_>) -> Result<ControlFlow<()>>,
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
        let txn = match &store.engine {
            super::Engine::Lmdb { env, .. } => env.clone().static_read_txn().map(Txn::Ro),
            // The head row this transaction locked keeps every other writer
            // out: a new snapshot sees the commit this one started from.
            #[cfg(feature = "postgres")]
            super::Engine::Pg(pg) => pg.begin_read().map(Txn::Pg),
        }
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
        let got = self.lmdb("reading state", got)?;
        got.map(|v| {
            self.store
                .open_value(super::crypt::ValueKind::State, key, v, &self.plain)
        })
        .transpose()
    }

    /// Writes a value of the `state` database.
    pub(crate) fn state_put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.plain.forget_value(super::crypt::ValueKind::State, key);
        let value = self
            .store
            .seal_value(super::crypt::ValueKind::State, key, value)?;
        let put = self.store.state_db()?.put(&mut self.txn, key, &value);
        self.lmdb("writing state", put)
    }

    /// Deletes a value of the `state` database; returns whether it existed.
    pub(crate) fn state_delete(&mut self, key: &[u8]) -> Result<bool> {
        self.plain.forget_value(super::crypt::ValueKind::State, key);
        let deleted = self.store.state_db()?.delete(&mut self.txn, key);
        self.lmdb("deleting state", deleted)
    }

    /// Deletes every `state` key starting with `prefix`; returns how many.
    pub(crate) fn state_delete_prefix(&mut self, prefix: &[u8]) -> Result<usize> {
        let deleted = self.store.state_db()?.delete_prefix(&mut self.txn, prefix);
        self.lmdb("deleting state", deleted)
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

    /// The LMDB errors the writer acts on keep their meaning through
    /// VarveDB's own `StorageError`, and through `Error::duplicate` (what a
    /// group commit hands each of its callers).
    #[test]
    fn engine_errors_keep_their_classification_through_storage_error() {
        use crate::error::StorageErrorKind;
        let err = |e: heed::Error| super::super::storage_error("testing", 7)(e);
        let full = err(heed::Error::Mdb(MdbError::MapFull));
        assert!(is_map_full(&full) && !is_map_resized(&full), "{full:?}");
        assert!(is_map_full(&full.duplicate()));
        let resized = err(heed::Error::Mdb(MdbError::MapResized));
        assert!(is_map_resized(&resized) && !is_map_full(&resized));
        assert!(is_map_resized(&resized.duplicate()));
        assert!(matches!(
            err(heed::Error::Mdb(MdbError::ReadersFull)),
            Error::ReadersFull { max: 7 }
        ));
        for damaged in [
            MdbError::Corrupted,
            MdbError::PageNotFound,
            MdbError::Invalid,
        ] {
            assert!(matches!(
                err(heed::Error::Mdb(damaged)),
                Error::Corruption { .. }
            ));
        }
        // ENOSPC.
        let Error::Storage { source, .. } =
            err(heed::Error::Io(std::io::Error::from_raw_os_error(28)))
        else {
            panic!("an I/O error is a storage error");
        };
        assert_eq!(source.kind(), StorageErrorKind::Io);
        assert_eq!(
            source.io_error().and_then(std::io::Error::raw_os_error),
            Some(28)
        );
        let Error::Storage { source, .. } = err(heed::Error::Mdb(MdbError::KeyExist)) else {
            panic!("another engine error is a storage error");
        };
        let code = MdbError::KeyExist.to_err_code();
        assert_eq!(source.kind(), StorageErrorKind::Engine { code });
        let Error::Storage { source, .. } = err(heed::Error::Mdb(MdbError::KeyExist)).duplicate()
        else {
            panic!("a duplicate keeps the variant");
        };
        assert_eq!(source.kind(), StorageErrorKind::Engine { code });
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
