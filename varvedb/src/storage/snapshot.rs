//! Read snapshots and the zero-copy references handed out from them.
//!
//! A [`View`] is one LMDB read transaction: a consistent snapshot of one commit.
//! It is the only object that makes LMDB calls through that transaction (its
//! lookup methods take `&mut self`), which is what LMDB requires of a
//! transaction. Every reference into the map ([`MappedEvent`],
//! [`ArchivedRef`]) holds an `Arc` of the view's [`Pinned`] part, which keeps
//! the transaction (so the pages it sees are never reused) and a gate guard (so
//! the map is never moved) alive for as long as any reference exists.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::ptr::NonNull;
use std::sync::Arc;

use super::kv::Txn;
use rkyv::util::AlignedVec;

use super::block::{
    parse_meta, BlockError, BlockHeader, BlockView, MetaPrefix, RawMeta, HEADER_LEN,
};
use super::crypt::{PlainBuf, Plaintexts, ValueKind};
use super::gate::GateGuard;
use super::keys::{event_key, index_key, parse_event_key, parse_index_key, Run};
use super::Store;
use crate::error::{Error, Location, Result};
use crate::position::{GlobalSequence, StreamId, StreamSequence};

/// The part of a snapshot that references into the map keep alive.
pub(crate) struct Pinned {
    // Field order matters: the transaction ends before the gate guard is released.
    pub(super) txn: Txn<'static>,
    guard: GateGuard,
    /// What this snapshot opened of an encrypted store (empty otherwise):
    /// references into it live as long as references into the map.
    pub(super) plain: Plaintexts,
}

// SAFETY: `RoTxn<WithoutTls>` is `Send` (LMDB's NOTLS mode lets a read
// transaction move between threads). `Pinned` is shared between threads only
// through `Arc`s held by references into the map, which never call into LMDB:
// the single `View` that owns the snapshot makes every LMDB call, through
// `&mut self`. Dropping the last `Arc` aborts the transaction from whichever
// thread holds it, which NOTLS allows.
unsafe impl Sync for Pinned {}

/// A snapshot of the store, owned by one reader or iterator.
pub(crate) struct View {
    pub(super) pin: Arc<Pinned>,
    pub(super) store: Arc<Store>,
}

/// A block found in a snapshot: its bytes stay valid while the snapshot's
/// [`Pinned`] is alive.
#[derive(Clone, Copy)]
pub(crate) struct BlockRef {
    ptr: NonNull<u8>,
    len: usize,
    header: BlockHeader,
}

/// One event's payload, pinned in the map.
///
/// `P` is what keeps the bytes valid: a snapshot's [`Pinned`] part; the
/// tests (and Miri, which cannot run LMDB) use a heap buffer standing in for
/// the map.
pub(crate) struct MappedEvent<P = Pinned> {
    pin: Arc<P>,
    ptr: NonNull<u8>,
    len: usize,
    /// The event's metadata prefix (unpadded; empty without metadata), in
    /// the same slot as the payload.
    meta_ptr: NonNull<u8>,
    meta_len: usize,
    pub(crate) position: EventPosition,
}

/// Where an event sits, as recorded in its block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventPosition {
    pub(crate) stream_tag: u32,
    pub(crate) stream_id: StreamId,
    pub(crate) stream_sequence: StreamSequence,
    pub(crate) global: GlobalSequence,
    pub(crate) fingerprint: u64,
    pub(crate) committed_at_micros: u64,
    /// The block's metadata flags (which fields the event's prefix holds).
    pub(crate) meta_flags: u8,
}

/// Where an event of a borrowed snapshot sits: its block's header bytes in
/// the map and its index in the block. Its [`EventPosition`] is decoded only
/// when asked for, so an entry carries 16 bytes for it instead of 48.
#[derive(Clone, Copy)]
pub(crate) struct EventAt<'a> {
    header: &'a [u8; HEADER_LEN],
    index: u32,
}

impl<'a> EventAt<'a> {
    /// The metadata of the event whose checked prefix is `prefix`.
    #[inline]
    pub(crate) fn meta(&self, prefix: &'a [u8]) -> RawMeta<'a> {
        MetaPrefix::trusted(self.header[1], prefix).raw()
    }

    /// The event's position, decoded from its (checked) block header.
    #[inline]
    pub(crate) fn position(&self) -> EventPosition {
        let h = BlockHeader::decode(self.header);
        position_in(&h, h.first_global + u64::from(self.index))
    }
}

// SAFETY: a `MappedEvent` is a shared, read-only view of bytes in the map plus
// an `Arc` of their owner (`Pinned` is Send + Sync, see above); the bytes are
// never written while the pin lives, so reading them from any thread is sound.
unsafe impl<P: Send + Sync> Send for MappedEvent<P> {}
// SAFETY: as for `Send`: only immutable bytes are reachable through `&MappedEvent`.
unsafe impl<P: Send + Sync> Sync for MappedEvent<P> {}

impl<P> MappedEvent<P> {
    /// Pins `bytes` (the payload) and `meta` (its metadata prefix) with `pin`.
    ///
    /// # Safety
    ///
    /// `bytes` and `meta` must stay valid and unchanged for as long as any
    /// clone of `pin` lives. For a snapshot's [`Pinned`]: bytes LMDB
    /// returned in its transaction. `meta` must be a prefix that
    /// [`parse_meta`] accepts with `position.meta_flags`.
    unsafe fn pinned(
        pin: Arc<P>,
        meta: &[u8],
        bytes: &[u8],
        position: EventPosition,
    ) -> MappedEvent<P> {
        MappedEvent {
            pin,
            ptr: NonNull::from(bytes).cast(),
            len: bytes.len(),
            meta_ptr: NonNull::from(meta).cast(),
            meta_len: meta.len(),
            position,
        }
    }

    /// The event's metadata, borrowed from its slot.
    pub(crate) fn meta(&self) -> RawMeta<'_> {
        if self.position.meta_flags == 0 {
            return RawMeta::default();
        }
        // SAFETY: as in `bytes`: `meta_ptr`/`meta_len` came from a slice in
        // the same pinned slot as the payload, valid while `self.pin` lives.
        let prefix = unsafe { std::slice::from_raw_parts(self.meta_ptr.as_ptr(), self.meta_len) };
        // Validated when the event was pinned (`mapped_in`).
        parse_meta(self.position.meta_flags, prefix).unwrap_or_default()
    }

    /// The payload bytes (the archived event).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr`/`len` came from a slice that, by the contract of
        // `MappedEvent::pinned`, stays valid and unchanged while `self.pin`
        // lives: for a snapshot, bytes LMDB returned inside the transaction
        // `pin` keeps open (LMDB never reuses the pages a live read transaction
        // can see, and the gate guard in `pin` keeps the map from being
        // remapped). `self` holds `pin`, so the slice outlives the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// A cheap clone sharing the same pinned snapshot.
    pub(crate) fn share(&self) -> MappedEvent<P> {
        MappedEvent {
            pin: Arc::clone(&self.pin),
            ptr: self.ptr,
            len: self.len,
            meta_ptr: self.meta_ptr,
            meta_len: self.meta_len,
            position: self.position,
        }
    }
}

enum Holder<P> {
    Mapped(MappedEvent<P>),
    Owned(AlignedVec<16>),
}

/// A validated archived value: a pointer into the map (or, as a fallback, into
/// an aligned copy) plus whatever keeps those bytes alive.
pub(crate) struct ArchivedRef<A, P = Pinned> {
    ptr: NonNull<A>,
    _holder: Holder<P>,
}

// SAFETY: `ArchivedRef<A>` behaves like `&A` plus an owner of the bytes (an
// `Arc<P>` with `P: Send + Sync`, or an `AlignedVec`, both Send + Sync); `&A`
// is Send and Sync when `A: Sync`.
unsafe impl<A: Sync, P: Send + Sync> Send for ArchivedRef<A, P> {}
// SAFETY: see `Send`.
unsafe impl<A: Sync, P: Send + Sync> Sync for ArchivedRef<A, P> {}

impl<A, P> ArchivedRef<A, P> {
    /// Validates `event`'s bytes with `access` and keeps the result.
    ///
    /// rkyv needs its data aligned; LMDB guarantees 8-byte alignment for our
    /// records (16 in most pages). If validation fails on a payload that is not
    /// 16-byte aligned, it is retried on an aligned copy: the only case that
    /// copies, counted by the benches.
    pub(crate) fn new<E>(
        event: MappedEvent<P>,
        access: impl for<'a> Fn(&'a [u8]) -> Result<&'a A, E>,
    ) -> Result<Self, E> {
        let bytes = event.bytes();
        match access(bytes) {
            Ok(archived) => {
                let ptr = NonNull::from(archived);
                Ok(ArchivedRef {
                    ptr,
                    _holder: Holder::Mapped(event),
                })
            }
            Err(e) if !super::block::may_need_alignment(bytes) => Err(e),
            Err(_) => {
                let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
                copy.extend_from_slice(bytes);
                let ptr = NonNull::from(access(&copy)?);
                // Moving `copy` into the holder does not move its heap buffer.
                Ok(ArchivedRef {
                    ptr,
                    _holder: Holder::Owned(copy),
                })
            }
        }
    }

    /// Validates `bytes` (owned: an upcast event) with `access` and keeps them.
    pub(crate) fn owned<E>(
        bytes: AlignedVec<16>,
        access: impl for<'a> Fn(&'a [u8]) -> Result<&'a A, E>,
    ) -> Result<Self, E> {
        let ptr = NonNull::from(access(&bytes)?);
        // Moving `bytes` into the holder does not move its heap buffer.
        Ok(ArchivedRef {
            ptr,
            _holder: Holder::Owned(bytes),
        })
    }

    /// The archived payload's bytes (the aligned copy, in the fallback case).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self._holder {
            Holder::Mapped(event) => event.bytes(),
            Holder::Owned(copy) => copy,
        }
    }

    pub(crate) fn get(&self) -> &A {
        // SAFETY: `ptr` was produced by `access` from bytes owned by `_holder`
        // (pinned map pages or an aligned heap buffer that is never mutated
        // or reallocated), which lives as long as `self`.
        unsafe { self.ptr.as_ref() }
    }
}

/// The stream tag of the block an event was found in.
pub(crate) fn block_tag(block: &BlockRef) -> u32 {
    block.header.stream_tag
}

/// One past the last global sequence of a block.
pub(crate) fn block_end(block: &BlockRef) -> u64 {
    block.header.end_global()
}

/// The position of the event at `global` in `block`.
#[inline]
pub(crate) fn block_position(block: &BlockRef, global: u64) -> EventPosition {
    position_in(&block.header, global)
}

impl BlockRef {
    /// A block over `bytes`, whose header was validated, for tests that stand
    /// a heap buffer in for the map.
    ///
    /// # Safety
    ///
    /// `bytes` must stay valid and unchanged for as long as the `BlockRef`
    /// (or any copy) is used.
    #[cfg(all(test, not(loom)))]
    unsafe fn over(bytes: &[u8], header: BlockHeader) -> BlockRef {
        BlockRef {
            ptr: NonNull::from(bytes).cast(),
            len: bytes.len(),
            header,
        }
    }

    fn view(&self) -> BlockView<'_> {
        // SAFETY: a `BlockRef` is only created by `View` from a slice LMDB
        // returned in the view's transaction, and only used while that `View`
        // (and so its `Pinned`) is alive; see `MappedEvent::bytes`.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        BlockView::from_validated(bytes, self.header)
    }
}

pub(super) fn corrupt_at(global: u64) -> impl Fn(BlockError) -> Error {
    move |e| Error::Corruption {
        location: Location::Global(GlobalSequence(global)),
        detail: e.0,
    }
}

impl Store {
    /// The last run of `(tag, id)`, read through any transaction.
    pub(crate) fn last_run(&self, txn: &Txn<'_>, tag: u32, id: u64) -> Result<Option<Run>> {
        self.run_at_or_before(txn, tag, id, u64::MAX)
    }

    /// The run of `(tag, id)` with the greatest first sequence `<= seq`.
    pub(crate) fn run_at_or_before(
        &self,
        txn: &Txn<'_>,
        tag: u32,
        id: u64,
        seq: u64,
    ) -> Result<Option<Run>> {
        let found = self
            .index
            .get_lower_than_or_equal_to(txn, &index_key(tag, id, seq))
            .map_err(self.err("reading the stream index"))?;
        let Some((k, v)) = found else { return Ok(None) };
        match parse_index_key(k) {
            Some((t, i, first)) if t == tag && i == id => Run::decode(k, first, v)
                .map(Some)
                .ok_or_else(|| Error::Corruption {
                    location: Location::Record(format!(
                        "stream index entry ({tag}, {id}, {first})"
                    )),
                    detail: "malformed run".into(),
                }),
            Some(_) => Ok(None),
            None => Err(Error::Corruption {
                location: Location::Record("the stream index".into()),
                detail: format!("malformed key of {} bytes", k.len()),
            }),
        }
    }

    /// Called when no run covers `seq` of `(tag, id)`: that is the end of the
    /// id if `seq` is past its last run, and a hole in the index otherwise.
    pub(crate) fn no_run_for(&self, txn: &Txn<'_>, tag: u32, id: u64, seq: u64) -> Result<()> {
        match self.last_run(txn, tag, id)? {
            Some(last) if seq < last.end_seq() => Err(Error::Corruption {
                location: Location::Record(format!("stream index of tag {tag} id {id}")),
                detail: format!(
                    "no run covers sequence {seq}, below the id's last sequence {}",
                    last.end_seq() - 1
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The block holding global sequence `global`, as `(key, bytes)`.
    ///
    /// In an encrypted store the block is opened into `plain` (once per
    /// arena); a plaintext store's is read in place.
    pub(crate) fn block_containing<'t>(
        &self,
        txn: &'t Txn<'_>,
        plain: &'t Plaintexts,
        global: u64,
    ) -> Result<Option<(u64, BlockView<'t>)>> {
        let found = self
            .events
            .get_lower_than_or_equal_to(txn, &event_key(global))
            .map_err(self.err("reading the event log"))?;
        let Some((k, v)) = found else {
            return self.past_the_end(txn, global);
        };
        let key = parse_event_key(k).ok_or_else(|| Error::Corruption {
            location: Location::Global(GlobalSequence(global)),
            detail: format!("malformed event-log key of {} bytes", k.len()),
        })?;
        // An encrypted block is opened only if it holds `global`.
        if self.crypt.is_some() && global >= self.stored_header(key, v)?.end_global() {
            return self.past_the_end(txn, global);
        }
        let view = self
            .open_pinned(key, v, plain)
            .map_err(|e| self.name_erased(txn, key, v, e))?;
        if global >= view.header().end_global() {
            return self.past_the_end(txn, global);
        }
        Ok(Some((key, view)))
    }

    /// `Ok(None)` if no block holds `global` because the log ends before it;
    /// `Corruption` if the log goes on after it: a damaged key must not make
    /// events silently vanish from global reads.
    fn past_the_end<T>(&self, txn: &Txn<'_>, global: u64) -> Result<Option<T>> {
        let later = self
            .events
            .get_greater_than(txn, &event_key(global))
            .map_err(self.err("reading the event log"))?;
        match later {
            None => Ok(None),
            Some((k, _)) => Err(Error::Corruption {
                location: Location::Global(GlobalSequence(global)),
                detail: format!(
                    "no block of the event log holds this sequence, but the log goes on \
                     (next key {:02x?})",
                    k
                ),
            }),
        }
    }

    /// The global sequence the idempotency index holds for `event_id`.
    pub(crate) fn id_global(&self, txn: &Txn<'_>, event_id: &[u8; 16]) -> Result<Option<u64>> {
        // A read-only open of a store from before event ids: none stored.
        let Some(ids) = &self.ids else {
            return Ok(None);
        };
        let got = ids
            .get(txn, event_id)
            .map_err(self.err("reading event ids"))?;
        let Some(v) = got else { return Ok(None) };
        super::keys::decode_id_value(event_id, v)
            .map(Some)
            .ok_or_else(|| Error::Corruption {
                location: Location::Record(format!(
                    "the event id index entry of {}",
                    crate::id::EventId(*event_id)
                )),
                detail: "malformed entry".into(),
            })
    }

    /// The stream id entity `key` maps to in the stream with `tag`.
    pub(crate) fn entity_id(&self, txn: &Txn<'_>, tag: u32, key: &[u8]) -> Result<Option<u64>> {
        let k = super::keys::entity_key(tag, key);
        // A read-only open of a store from before entity keys: none stored.
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let got = keys.get(txn, &k).map_err(self.err("reading entity keys"))?;
        let Some(v) = got else { return Ok(None) };
        super::keys::open_sealed(&k, v)
            .and_then(|v| Some(u64::from_le_bytes(v.try_into().ok()?)))
            .map(Some)
            .ok_or_else(|| Error::Corruption {
                location: Location::Record(format!("the entity key entry of tag {tag}")),
                detail: "malformed entry".into(),
            })
    }

    /// The entity key stream id `id` of the stream with `tag` was allocated to.
    pub(crate) fn entity_key_of(
        &self,
        txn: &Txn<'_>,
        tag: u32,
        id: u64,
    ) -> Result<Option<Vec<u8>>> {
        let k = super::keys::entity_reverse_key(tag, id);
        // A read-only open of a store from before entity keys: none stored.
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let got = keys.get(txn, &k).map_err(self.err("reading entity keys"))?;
        let Some(v) = got else { return Ok(None) };
        super::keys::open_sealed(&k, v)
            .map(|v| Some(v.to_vec()))
            .ok_or_else(|| Error::Corruption {
                location: Location::Record(format!("the entity key of tag {tag} id {id}")),
                detail: "malformed entry".into(),
            })
    }

    /// One past the newest global sequence (0 for an empty store).
    pub(crate) fn end_global(&self, txn: &Txn<'_>) -> Result<u64> {
        let last = self
            .events
            .last(txn)
            .map_err(self.err("reading the event log"))?;
        let Some((k, v)) = last else { return Ok(0) };
        let key = parse_event_key(k).ok_or_else(|| Error::Corruption {
            location: Location::Record("the last event-log key".into()),
            detail: format!("malformed key of {} bytes", k.len()),
        })?;
        Ok(self.stored_header(key, v)?.end_global())
    }
}

/// Calls `f(stream sequence, global sequence, block fingerprint, payload,
/// metadata)` for each event of `(tag, id)` from sequence `from`, as `txn` sees
/// them, borrowing payloads straight from the map: no reference counting, no
/// copy. The fingerprint is the version the event was written with. Stops
/// early when `f` breaks, and at the first damaged event with
/// `Error::Corruption`.
pub(crate) fn walk_stream_versions(
    store: &Store,
    txn: &Txn<'_>,
    tag: u32,
    id: u64,
    from: u64,
    mut f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    walk_stream_blocks(store, txn, tag, id, from, |part| {
        let fp = part.fingerprint();
        for i in 0..part.len() {
            let (meta, payload) = part.entry(i)?;
            if f(part.seq(i), part.global(i), fp, payload, meta)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    })
}

/// The events of one block that belong to a walk: `len()` consecutive events
/// of one `(stream, id)`, starting at stream sequence `seq(0)`. What is the
/// same for every event of an append (its fingerprint, its metadata fields)
/// is read once here, so a fold decides it once per block, not per event.
#[derive(Clone, Copy)]
pub(crate) struct StreamBlock<'a> {
    block: BlockView<'a>,
    header: &'a [u8; HEADER_LEN],
    first_index: u32,
    len: u32,
    first_seq: u64,
}

impl<'a> StreamBlock<'a> {
    /// The events `[global, end)` of `block`, the first at stream sequence
    /// `first_seq` (the caller checked they belong to the walked stream).
    #[inline]
    fn new(block: BlockView<'a>, global: u64, end: u64, first_seq: u64) -> Result<Self> {
        let h = block.header();
        Ok(StreamBlock {
            header: block.header_bytes().ok_or_else(|| missing(global))?,
            first_index: (global - h.first_global) as u32,
            len: (end - global) as u32,
            first_seq,
            block,
        })
    }

    /// How many events of the block the walk visits.
    #[inline]
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// The type fingerprint every event of the block was written with.
    #[inline]
    pub(crate) fn fingerprint(&self) -> u64 {
        self.block.header().fingerprint
    }

    /// Whether the block's events carry a metadata prefix.
    #[inline]
    pub(crate) fn has_metadata(&self) -> bool {
        self.block.header().meta_flags != 0
    }

    /// The stream sequence of the `i`th visited event.
    #[inline]
    pub(crate) fn seq(&self, i: u32) -> u64 {
        self.first_seq + u64::from(i)
    }

    /// The global sequence of the `i`th visited event.
    #[inline]
    pub(crate) fn global(&self, i: u32) -> u64 {
        self.block.header().first_global + u64::from(self.first_index + i)
    }

    /// The position of the `i`th visited event.
    #[inline]
    pub(crate) fn position(&self, i: u32) -> EventPosition {
        position_in(self.block.header(), self.global(i))
    }

    /// Where the `i`th visited event sits, its checked metadata prefix (empty
    /// in a block without metadata) and its payload (checksum checked): what
    /// a borrowed entry holds.
    #[inline]
    pub(crate) fn read(&self, i: u32) -> Result<(EventAt<'a>, &'a [u8], &'a [u8])> {
        let index = self.first_index + i;
        let found = if self.has_metadata() {
            self.block
                .prefixed(index)
                .map(|(meta, payload)| (meta.bytes(), payload))
        } else {
            self.block.event(index).map(|p| (&[][..], p))
        };
        let (prefix, payload) = found.map_err(corrupt_at(self.global(i)))?;
        Ok((self.at(i), prefix, payload))
    }

    /// Where the `i`th visited event sits, for an entry that decodes its
    /// position only when asked.
    #[inline]
    pub(crate) fn at(&self, i: u32) -> EventAt<'a> {
        EventAt {
            header: self.header,
            index: self.first_index + i,
        }
    }

    /// The payload of the `i`th visited event, checksum checked; its
    /// metadata prefix is skipped without being parsed.
    #[inline]
    pub(crate) fn payload(&self, i: u32) -> Result<&'a [u8]> {
        self.block
            .event(self.first_index + i)
            .map_err(corrupt_at(self.global(i)))
    }

    /// The metadata and payload of the `i`th visited event, checksum checked.
    #[inline]
    pub(crate) fn entry(&self, i: u32) -> Result<(RawMeta<'a>, &'a [u8])> {
        self.block
            .entry(self.first_index + i)
            .map_err(corrupt_at(self.global(i)))
    }
}

/// Calls `f` with each block's share of the events of `(tag, id)` from
/// sequence `from`, as `txn` sees them, in order, borrowing from the map.
/// The run and the block header are checked once per block. Stops early when
/// `f` breaks, and at the first damaged run or block with `Error::Corruption`
/// (a damaged event is reported by the [`StreamBlock`] accessor that reads
/// it).
pub(crate) fn walk_stream_blocks(
    store: &Store,
    txn: &Txn<'_>,
    tag: u32,
    id: u64,
    from: u64,
    mut f: impl FnMut(StreamBlock<'_>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut seq = from;
    // An encrypted store's blocks are opened here one at a time: nothing
    // `f` borrows outlives its call.
    let mut plain = Plaintexts::default();
    loop {
        let run = store.run_at_or_before(txn, tag, id, seq)?;
        let Some(run) = run.filter(|r| seq < r.end_seq()) else {
            return store.no_run_for(txn, tag, id, seq);
        };
        while seq < run.end_seq() {
            let global = run.first_global + (seq - run.first_seq);
            if store.crypt.is_some() {
                plain.clear();
            }
            let (_, block) = store
                .block_containing(txn, &plain, global)?
                .ok_or_else(|| missing(global))?;
            let h = *block.header();
            check_belongs(&position_in(&h, global), tag, id, seq)?;
            let last = h.end_global().min(run.end_global());
            let part = StreamBlock::new(block, global, last, seq)?;
            if f(part)?.is_break() {
                return Ok(());
            }
            seq += last - global;
        }
    }
}

impl View {
    pub(crate) fn new(txn: Txn<'static>, guard: GateGuard, store: Arc<Store>) -> View {
        View {
            pin: Arc::new(Pinned {
                txn,
                guard,
                plain: Plaintexts::default(),
            }),
            store,
        }
    }

    /// The id of the commit this snapshot sees.
    pub(crate) fn txn_id(&self) -> usize {
        self.pin.txn.id()
    }

    /// Whether this snapshot still shows the newest commit (and no writer
    /// waits to grow the map, which needs it closed).
    pub(crate) fn is_current(&self) -> bool {
        // Reads LMDB's meta pages under this snapshot's own gate guard: no
        // remap runs while it is held.
        !self.store.resize_pending() && self.txn_id() == self.store.last_txn_id_in(&self.pin.guard)
    }

    fn block_ref(&self, global: u64) -> Result<Option<BlockRef>> {
        let found = self
            .store
            .block_containing(&self.pin.txn, &self.pin.plain, global)?;
        Ok(found.map(|(_, view)| BlockRef {
            ptr: NonNull::from(view.bytes()).cast(),
            len: view.bytes().len(),
            header: *view.header(),
        }))
    }

    fn mapped(&self, block: &BlockRef, global: u64) -> Result<MappedEvent> {
        // SAFETY: `block` was found in this view's transaction, whose pages
        // `self.pin` keeps valid and unchanged (see `MappedEvent::bytes`).
        unsafe { mapped_in(&self.pin, block, global) }
    }

    /// The event at `global`, or `None` past the end of the log.
    pub(crate) fn event_at_global(&mut self, global: u64) -> Result<Option<MappedEvent>> {
        match self.block_ref(global)? {
            Some(block) => self.mapped(&block, global).map(Some),
            None => Ok(None),
        }
    }

    /// The event at `(tag, id, seq)`, or `None` if the stream id is shorter.
    pub(crate) fn event_at_stream(
        &mut self,
        tag: u32,
        id: u64,
        seq: u64,
    ) -> Result<Option<MappedEvent>> {
        let run = self.store.run_at_or_before(&self.pin.txn, tag, id, seq)?;
        let Some(run) = run.filter(|r| seq < r.end_seq()) else {
            self.store.no_run_for(&self.pin.txn, tag, id, seq)?;
            return Ok(None);
        };
        let global = run.first_global + (seq - run.first_seq);
        let block = self.block_ref(global)?.ok_or_else(|| missing(global))?;
        let event = self.mapped(&block, global)?;
        check_belongs(&event.position, tag, id, seq)?;
        Ok(Some(event))
    }

    /// The event stored with `event_id`, or `None` if no event has it.
    pub(crate) fn event_by_id(&mut self, event_id: &[u8; 16]) -> Result<Option<MappedEvent>> {
        let Some(global) = self.store.id_global(&self.pin.txn, event_id)? else {
            return Ok(None);
        };
        let event = self
            .event_at_global(global)?
            .ok_or_else(|| missing(global))?;
        if event.meta().event_id.as_ref() != Some(event_id) {
            return Err(Error::Corruption {
                location: Location::Global(GlobalSequence(global)),
                detail: "the event id index points at an event without that id".into(),
            });
        }
        Ok(Some(event))
    }

    /// The stream id entity `key` maps to in the stream with `tag`.
    pub(crate) fn entity_id(&mut self, tag: u32, key: &[u8]) -> Result<Option<u64>> {
        self.store.entity_id(&self.pin.txn, tag, key)
    }

    /// The entity key of stream id `id` in the stream with `tag`.
    pub(crate) fn entity_key_of(&mut self, tag: u32, id: u64) -> Result<Option<Vec<u8>>> {
        self.store.entity_key_of(&self.pin.txn, tag, id)
    }

    /// The last stream sequence of `(tag, id)`, if any.
    pub(crate) fn stream_version(&mut self, tag: u32, id: u64) -> Result<Option<StreamSequence>> {
        Ok(self
            .store
            .last_run(&self.pin.txn, tag, id)?
            .map(|r| StreamSequence(r.end_seq() - 1)))
    }

    /// See [`walk_stream_versions`].
    pub(crate) fn walk_stream_versions(
        &mut self,
        tag: u32,
        id: u64,
        from: u64,
        f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        walk_stream_versions(&self.store, &self.pin.txn, tag, id, from, f)
    }

    /// A value of the `state` database, borrowed from this snapshot.
    pub(crate) fn state_get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        let Some(state) = &self.store.state else {
            return Ok(None);
        };
        let raw = state
            .get(&self.pin.txn, key)
            .map_err(self.store.err("reading state"))?;
        raw.map(|v| {
            self.store
                .open_value(ValueKind::State, key, v, &self.pin.plain)
        })
        .transpose()
    }

    /// Calls `f(key, value)` for each `state` entry whose key starts with
    /// `prefix`, in key order, until `f` breaks.
    pub(crate) fn state_for_each(
        &mut self,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<()> {
        let err = self.store.err("reading state");
        let Some(state) = &self.store.state else {
            return Ok(());
        };
        let iter = state.prefix_iter(&self.pin.txn, prefix).map_err(&err)?;
        let mut buf = PlainBuf::default();
        for entry in iter {
            let (k, v) = entry.map_err(&err)?;
            let v = match self.store.keyring() {
                None => v,
                Some(ring) => {
                    self.store
                        .open_value_into(ring, ValueKind::State, k, v, &mut buf)?;
                    buf.as_slice()
                }
            };
            if f(k, v).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The first `state` key at or after `from`, if any (a seek: what lies
    /// between is not read).
    pub(crate) fn state_seek(&mut self, from: &[u8]) -> Result<Option<Vec<u8>>> {
        let err = self.store.err("reading state");
        let Some(state) = &self.store.state else {
            return Ok(None);
        };
        let bounds: (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>) =
            (std::ops::Bound::Included(from), std::ops::Bound::Unbounded);
        let mut iter = state.range(&self.pin.txn, &bounds).map_err(&err)?;
        match iter.next() {
            Some(entry) => Ok(Some(entry.map_err(&err)?.0.to_vec())),
            None => Ok(None),
        }
    }

    /// The last `state` entry whose key starts with `prefix`, if any.
    pub(crate) fn state_last(&mut self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let err = self.store.err("reading state");
        let Some(state) = &self.store.state else {
            return Ok(None);
        };
        let mut iter = state.rev_prefix_iter(&self.pin.txn, prefix).map_err(&err)?;
        match iter.next() {
            Some(entry) => {
                let (k, v) = entry.map_err(&err)?;
                let mut buf = PlainBuf::default();
                let v = match self.store.keyring() {
                    None => v,
                    Some(ring) => {
                        self.store
                            .open_value_into(ring, ValueKind::State, k, v, &mut buf)?;
                        buf.as_slice()
                    }
                };
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// See [`Store::verify`].
    pub(crate) fn verify(&self) -> Result<crate::verify::VerifyReport> {
        self.store.verify(&self.pin.txn)
    }

    /// See [`Store::chain_status`].
    pub(crate) fn chain_status(&self) -> Result<crate::chain::ChainStatus> {
        self.store.chain_status(&self.pin.txn)
    }

    /// See [`Store::head_digest`].
    pub(crate) fn head_digest(&self) -> Result<Option<crate::chain::HeadDigest>> {
        self.store.head_digest(&self.pin.txn)
    }

    /// See [`Store::verify_extends`].
    pub(crate) fn verify_extends(
        &self,
        held: &crate::chain::HeadDigest,
    ) -> Result<crate::chain::Extension> {
        self.store.verify_extends(&self.pin.txn, held)
    }

    /// See [`Store::chain_value`].
    pub(crate) fn chain_value(&self, key: u64) -> Result<Option<Vec<u8>>> {
        self.store.chain_value(&self.pin.txn, key)
    }

    /// See [`Store::for_each_reseal`].
    pub(crate) fn for_each_reseal(
        &self,
        from: u64,
        f: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.store.for_each_reseal(&self.pin.txn, from, f)
    }

    /// See [`Store::chain_mode`].
    pub(crate) fn chain_mode(&self) -> Result<Option<crate::chain::ChainMode>> {
        self.store.chain_mode(&self.pin.txn)
    }

    /// See [`Store::migration_plan`].
    pub(crate) fn migration_plan(
        &self,
        info: &super::StreamInfo,
    ) -> Result<Option<super::migrate::Plan>> {
        self.store.migration_plan(&self.pin.txn, info)
    }

    /// See [`Store::check_migrated`].
    pub(crate) fn check_migrated(
        &self,
        tag: u32,
        current: u64,
        check: impl FnMut(&[u8]) -> std::result::Result<(), String>,
    ) -> Result<Vec<crate::verify::Problem>> {
        self.store
            .check_migrated(&self.pin.txn, tag, current, check)
    }

    /// One past the newest global sequence in this snapshot. Also published
    /// as the log's end subscriptions wait past ([`Store::log_end`]): a
    /// snapshot is a commit, whichever process made it.
    pub(crate) fn end_global(&mut self) -> Result<u64> {
        let end = self.store.end_global(&self.pin.txn)?;
        self.store.observe_end(end);
        Ok(end)
    }

    /// [`View::end_global`] without publishing it: for the commit poller,
    /// which publishes (running wakers) only once it has let the store go.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // used by the `async` feature
    pub(crate) fn end_global_unpublished(&mut self) -> Result<u64> {
        self.store.end_global(&self.pin.txn)
    }

    /// The catalog entry of the stream with `tag`.
    pub(crate) fn stream_by_tag(&mut self, tag: u32) -> Result<Arc<super::StreamInfo>> {
        self.store.stream_by_tag(&self.pin.txn, tag)
    }

    /// The catalog entry (tag and record) of the stream `name`, if it exists.
    pub(super) fn stream_entry(&mut self, name: &str) -> Result<Option<(u32, super::StreamInfo)>> {
        self.store.stream_entry(&self.pin.txn, name)
    }

    /// Whether `info`'s handle may append to its stream as this snapshot
    /// sees it: the catalog checks of an append (`TypeMismatch`,
    /// `OutdatedEventVersion`), for a command decided on this snapshot
    /// before its write transaction.
    pub(crate) fn check_appendable(&mut self, info: &super::StreamInfo) -> Result<()> {
        self.store.append_target(&self.pin.txn, info).map(drop)
    }

    /// The tag of `info`'s stream in this snapshot, `None` if it does not
    /// exist in it (see [`Store::stream_tag`]).
    pub(crate) fn stream_tag(&mut self, info: &super::StreamInfo) -> Result<Option<u32>> {
        self.store.stream_tag(&self.pin.txn, info)
    }
}

/// The event at `global` of `block`, pinned by `pin`.
///
/// # Safety
///
/// `block`'s bytes must stay valid and unchanged for as long as any clone of
/// `pin` lives.
unsafe fn mapped_in<P>(pin: &Arc<P>, block: &BlockRef, global: u64) -> Result<MappedEvent<P>> {
    let header = block.header;
    let index = (global - header.first_global) as u32;
    let view = block.view();
    let (meta, payload) = view.slot(index).map_err(corrupt_at(global))?;
    // Validates the metadata once, here, so `MappedEvent::meta` cannot fail.
    parse_meta(header.meta_flags, meta).map_err(corrupt_at(global))?;
    // SAFETY: `meta` and `payload` lie within `block`'s bytes, which the
    // caller guarantees stay valid while `pin` lives.
    Ok(
        unsafe {
            MappedEvent::pinned(Arc::clone(pin), meta, payload, position_in(&header, global))
        },
    )
}

/// The position of the event at `global` in the block with header `h`.
#[inline]
fn position_in(h: &BlockHeader, global: u64) -> EventPosition {
    EventPosition {
        stream_tag: h.stream_tag,
        stream_id: StreamId(h.stream_id),
        stream_sequence: StreamSequence(h.first_stream_seq + (global - h.first_global)),
        global: GlobalSequence(global),
        fingerprint: h.fingerprint,
        committed_at_micros: h.committed_at_micros,
        meta_flags: h.meta_flags,
    }
}

fn missing(global: u64) -> Error {
    Error::Corruption {
        location: Location::Global(GlobalSequence(global)),
        detail: "the stream index points at an event missing from the log".into(),
    }
}

fn check_belongs(pos: &EventPosition, tag: u32, id: u64, seq: u64) -> Result<()> {
    if pos.stream_tag == tag && pos.stream_id.0 == id && pos.stream_sequence.0 == seq {
        return Ok(());
    }
    Err(Error::Corruption {
        location: Location::Global(pos.global),
        detail: format!(
            "the stream index maps (tag {tag}, id {id}, sequence {seq}) to an event of \
             (tag {}, id {}, sequence {})",
            pos.stream_tag, pos.stream_id.0, pos.stream_sequence.0
        ),
    })
}

/// Lazily walks one stream id in one snapshot, a run and a block at a time.
pub(crate) struct StreamCursor<V = View> {
    view: V,
    tag: u32,
    id: u64,
    next_seq: u64,
    run: Option<Run>,
    block: Option<BlockRef>,
    done: bool,
}

// SAFETY: as for `GlobalCursor`: the cached `BlockRef` points into pages pinned
// by the cursor's own `view`, which moves with it.
unsafe impl Send for StreamCursor<View> {}

impl<V: Borrow<View>> StreamCursor<V> {
    /// A cursor over `(tag, id)` from `from`; with no tag (a stream that does
    /// not exist yet), an empty one.
    pub(crate) fn new(view: V, tag: Option<u32>, id: u64, from: u64) -> StreamCursor<V> {
        StreamCursor {
            view,
            tag: tag.unwrap_or(0),
            id,
            next_seq: from,
            run: None,
            block: None,
            done: tag.is_none(),
        }
    }

    /// The stream id being walked.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Ends the walk: every later read finds nothing. For a caller that
    /// refused the event the cursor last moved past (it failed validation),
    /// so that nothing resumes behind it.
    pub(crate) fn stop(&mut self) {
        self.done = true;
    }

    /// The run holding the next sequence, or `None` (the cursor then done)
    /// past the stream's end.
    #[inline]
    fn run_for_next(&mut self) -> Result<Option<Run>> {
        if let Some(run) = self.run.filter(|r| self.next_seq < r.end_seq()) {
            return Ok(Some(run));
        }
        self.block = None;
        let view: &View = self.view.borrow();
        let found = view
            .store
            .run_at_or_before(&view.pin.txn, self.tag, self.id, self.next_seq)?;
        match found {
            Some(run) if self.next_seq < run.end_seq() => {
                self.run = Some(run);
                Ok(Some(run))
            }
            _ => {
                self.done = true;
                view.store
                    .no_run_for(&view.pin.txn, self.tag, self.id, self.next_seq)?;
                Ok(None)
            }
        }
    }

    /// Moves to the next event, returning its block and global sequence.
    fn advance(&mut self) -> Result<Option<(BlockRef, u64)>> {
        if self.done {
            return Ok(None);
        }
        let Some(run) = self.run_for_next()? else {
            return Ok(None);
        };
        let global = run.first_global + (self.next_seq - run.first_seq);
        let block = match self.block {
            Some(b) if global < b.header.end_global() && global >= b.header.first_global => b,
            _ => {
                let b = self
                    .view
                    .borrow()
                    .block_ref(global)?
                    .ok_or_else(|| missing(global))?;
                self.block = Some(b);
                b
            }
        };
        let h = &block.header;
        let seq = h.first_stream_seq + (global - h.first_global);
        if h.stream_tag != self.tag || h.stream_id != self.id || seq != self.next_seq {
            self.done = true;
            return Err(Error::Corruption {
                location: Location::Global(GlobalSequence(global)),
                detail: format!(
                    "the stream index maps (tag {}, id {}, sequence {}) to an event of (tag {}, id {}, sequence {seq})",
                    self.tag, self.id, self.next_seq, h.stream_tag, h.stream_id
                ),
            });
        }
        self.next_seq += 1;
        Ok(Some((block, global)))
    }
}

impl StreamCursor<View> {
    /// The next event, pinned (one atomic increment, no copy).
    pub(crate) fn next_event(&mut self) -> Option<Result<MappedEvent>> {
        match self.advance() {
            Ok(Some((block, global))) => {
                let event = self.view.mapped(&block, global);
                self.done |= event.is_err();
                Some(event)
            }
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Calls `f(stream sequence, global sequence, block fingerprint, payload,
    /// metadata)` for every remaining event, a block at a time, borrowing
    /// payloads from the map. The cursor is finished afterwards.
    pub(crate) fn walk_versions(
        &mut self,
        f: impl FnMut(u64, u64, u64, &[u8], RawMeta<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        walk_stream_versions(
            &self.view.store,
            &self.view.pin.txn,
            self.tag,
            self.id,
            self.next_seq,
            f,
        )
    }

    /// Calls `f` with each remaining block's share of the stream's events
    /// (see [`walk_stream_blocks`]). The cursor is finished afterwards.
    pub(crate) fn walk_blocks(
        &mut self,
        f: impl FnMut(StreamBlock<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        walk_stream_blocks(
            &self.view.store,
            &self.view.pin.txn,
            self.tag,
            self.id,
            self.next_seq,
            f,
        )
    }

    /// The next event's payload, borrowed from the cursor (no reference counting).
    pub(crate) fn next_bytes(&mut self) -> Option<Result<(StreamSequence, GlobalSequence, &[u8])>> {
        let (block, global) = match self.advance() {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let seq = StreamSequence(self.next_seq - 1);
        let index = (global - block.header.first_global) as u32;
        // SAFETY: as in `BlockRef::view`; the returned slice borrows `self`,
        // which owns the view that pins it.
        let bytes = unsafe { std::slice::from_raw_parts(block.ptr.as_ptr(), block.len) };
        let result = BlockView::from_validated(bytes, block.header)
            .event(index)
            .map_err(corrupt_at(global));
        match result {
            Ok(payload) => Some(Ok((seq, GlobalSequence(global), payload))),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Lazily walks the whole log in global order in one snapshot.
pub(crate) struct GlobalCursor<V = View> {
    view: V,
    next: u64,
    block: Option<BlockRef>,
    done: bool,
    /// The erased block being walked (one [`Error::Erased`] per event):
    /// one past its end, and the error's stream and id.
    erased: Option<(u64, Option<String>, StreamId)>,
}

// SAFETY: the only non-`Send` field is the cached `BlockRef`, a pointer into
// pages pinned by the cursor's own `view`. The view (an LMDB read transaction
// in NOTLS mode, plus `Arc`s of `Send + Sync` parts) may move between threads,
// and the pointer moves with it, so it stays valid: the cursor is used from one
// thread at a time (`&mut self`), wherever that thread is.
unsafe impl Send for GlobalCursor<View> {}

impl GlobalCursor<View> {
    pub(crate) fn view_mut(&mut self) -> &mut View {
        &mut self.view
    }
}

impl<V: Borrow<View>> GlobalCursor<V> {
    pub(crate) fn new(view: V, from: u64) -> GlobalCursor<V> {
        GlobalCursor {
            view,
            next: from,
            block: None,
            done: false,
            erased: None,
        }
    }

    /// Moves to the next event of the log, returning its block and global
    /// sequence. An event of an erased entity is [`Error::Erased`], and the
    /// walk goes on past it (erasure is not damage); any other error ends it.
    pub(crate) fn advance(&mut self) -> Option<Result<(BlockRef, u64)>> {
        if self.done {
            return None;
        }
        let global = self.next;
        if let Some((end, stream, id)) = &self.erased {
            if global < *end {
                self.next += 1;
                return Some(Err(Error::Erased {
                    stream: stream.clone(),
                    id: *id,
                    at: GlobalSequence(global),
                }));
            }
            self.erased = None;
        }
        let block = match self.block {
            Some(b) if global < b.header.end_global() => b,
            _ => match self.view.borrow().block_ref(global) {
                Ok(Some(b)) => {
                    self.block = Some(b);
                    b
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(Error::Erased { stream, id, at }) => {
                    // The block's header (in the clear) says how far it goes.
                    match self.view.borrow().block_end_at(at.0) {
                        Ok(end) if end > global => {
                            self.erased = Some((end, stream.clone(), id));
                            self.next += 1;
                            return Some(Err(Error::Erased {
                                stream,
                                id,
                                at: GlobalSequence(global),
                            }));
                        }
                        Ok(_) => {
                            self.done = true;
                            return Some(Err(Error::Erased { stream, id, at }));
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            },
        };
        self.next += 1;
        Some(Ok((block, global)))
    }

    /// Moves past the rest of the current block, returning it and the first
    /// global sequence to visit in it (scans walk a block at a time).
    pub(crate) fn next_block(&mut self) -> Option<Result<(BlockRef, u64)>> {
        let (block, first) = match self.advance()? {
            Ok(found) => found,
            Err(e) => {
                // An erased block is passed over whole.
                if let Some((end, _, _)) = &self.erased {
                    self.next = *end;
                }
                return Some(Err(e));
            }
        };
        self.next = block.header.end_global();
        Some(Ok((block, first)))
    }
}

impl GlobalCursor<View> {
    /// The payload and metadata of an event found by [`Self::advance`],
    /// borrowed from the snapshot (no reference counting).
    #[inline]
    pub(crate) fn payload(
        &mut self,
        block: &BlockRef,
        global: u64,
    ) -> Result<(&[u8], MetaPrefix<'_>)> {
        let h = block.header;
        let index = (global - h.first_global) as u32;
        // SAFETY: `block` was found by `advance` in this cursor's view, whose
        // pin keeps the bytes valid and unchanged while `self` is borrowed.
        let bytes = unsafe { std::slice::from_raw_parts(block.ptr.as_ptr(), block.len) };
        match BlockView::from_validated(bytes, h)
            .prefixed(index)
            .map(|(meta, payload)| (payload, meta))
        {
            Ok(payload) => Ok(payload),
            Err(e) => {
                self.done = true;
                Err(corrupt_at(global)(e))
            }
        }
    }

    /// The next event, pinned (one atomic increment, no copy).
    pub(crate) fn next_event(&mut self) -> Option<Result<MappedEvent>> {
        let (block, global) = match self.advance()? {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        let event = self.view.mapped(&block, global);
        self.done |= event.is_err();
        Some(event)
    }
}

/// A snapshot that lends what it reads for as long as it is borrowed:
/// payloads and catalog entries come back as `&self` references, with no
/// reference counting per event (the public `StreamSnapshot` and
/// `LogSnapshot` are built on it).
///
/// Not `Sync` (the `RefCell` sees to it): every LMDB call goes through the
/// one transaction of its [`View`], and LMDB wants a transaction used by one
/// thread at a time. It may move to another thread while nothing borrows it.
pub(crate) struct Frozen {
    view: View,
    /// The catalog entries looked up so far, by tag. Entries are only ever
    /// added, never removed or replaced, while the snapshot lives.
    streams: RefCell<HashMap<u32, Arc<super::StreamInfo>>>,
}

impl Frozen {
    pub(crate) fn new(view: View) -> Frozen {
        Frozen {
            view,
            streams: RefCell::default(),
        }
    }

    /// The id of the commit this snapshot sees.
    pub(crate) fn txn_id(&self) -> usize {
        self.view.txn_id()
    }

    /// The tag of `info`'s stream in this snapshot (see [`Store::stream_tag`]).
    pub(crate) fn stream_tag(&self, info: &super::StreamInfo) -> Result<Option<u32>> {
        self.view.store.stream_tag(&self.view.pin.txn, info)
    }

    /// The catalog entry of the stream with `tag`, borrowed from the snapshot.
    pub(crate) fn stream(&self, tag: u32) -> Result<&super::StreamInfo> {
        let mut streams = self.streams.borrow_mut();
        let info: *const super::StreamInfo = match streams.get(&tag) {
            Some(info) => Arc::as_ptr(info),
            None => {
                let info = self.view.store.stream_by_tag(&self.view.pin.txn, tag)?;
                let ptr = Arc::as_ptr(&info);
                streams.insert(tag, info);
                ptr
            }
        };
        // SAFETY: `info` points into an `Arc` that `self.streams` keeps until
        // `self` is dropped: entries are never removed or replaced, and a map
        // that rehashes moves the `Arc`s, not what they point to. So the entry
        // outlives the `&self` borrow the result is tied to, and it is never
        // mutated (an `Arc` hands out shared access only).
        Ok(unsafe { &*info })
    }

    /// One past the newest global sequence in this snapshot.
    pub(crate) fn end_global(&self) -> Result<u64> {
        let end = self.view.store.end_global(&self.view.pin.txn)?;
        self.view.store.observe_end(end);
        Ok(end)
    }

    /// The last stream sequence of `(tag, id)`, if any.
    pub(crate) fn stream_version(&self, tag: u32, id: u64) -> Result<Option<StreamSequence>> {
        Ok(self
            .view
            .store
            .last_run(&self.view.pin.txn, tag, id)?
            .map(|r| StreamSequence(r.end_seq() - 1)))
    }

    /// The event at `(tag, id, seq)` (its position, payload and metadata), or `None`
    /// if the stream id is shorter.
    pub(crate) fn event_at_stream(
        &self,
        tag: u32,
        id: u64,
        seq: u64,
    ) -> Result<Option<(EventAt<'_>, &[u8], MetaPrefix<'_>)>> {
        let (store, txn) = (&self.view.store, &self.view.pin.txn);
        let run = store.run_at_or_before(txn, tag, id, seq)?;
        let Some(run) = run.filter(|r| seq < r.end_seq()) else {
            store.no_run_for(txn, tag, id, seq)?;
            return Ok(None);
        };
        let global = run.first_global + (seq - run.first_seq);
        let block = self
            .view
            .block_ref(global)?
            .ok_or_else(|| missing(global))?;
        check_belongs(&position_in(&block.header, global), tag, id, seq)?;
        let (payload, meta) = payload_in(&self.view, &block, global)?;
        // SAFETY: as in `payload_in`: `block` was found in this snapshot's
        // view, whose pin keeps its bytes valid while `self` is borrowed.
        let bytes = unsafe { std::slice::from_raw_parts(block.ptr.as_ptr(), block.len) };
        let part = StreamBlock::new(
            BlockView::from_validated(bytes, block.header),
            global,
            global + 1,
            seq,
        )?;
        Ok(Some((part.at(0), payload, meta)))
    }

    /// The event at `global` (its block, payload and metadata), or `None`
    /// past the end.
    pub(crate) fn event_at_global(
        &self,
        global: u64,
    ) -> Result<Option<(BlockRef, &[u8], MetaPrefix<'_>)>> {
        match self.view.block_ref(global)? {
            Some(block) => {
                let (payload, meta) = payload_in(&self.view, &block, global)?;
                Ok(Some((block, payload, meta)))
            }
            None => Ok(None),
        }
    }

    /// A cursor over `(tag, id)` from `from` that lends payloads for as long
    /// as `self` is borrowed.
    pub(crate) fn stream_cursor(
        &self,
        tag: Option<u32>,
        id: u64,
        from: u64,
    ) -> StreamCursor<&View> {
        StreamCursor::new(&self.view, tag, id, from)
    }

    /// A cursor over the log from `from` that lends payloads for as long as
    /// `self` is borrowed.
    pub(crate) fn global_cursor(&self, from: u64) -> GlobalCursor<&View> {
        GlobalCursor::new(&self.view, from)
    }
}

/// The payload and metadata at `global` of `block`, borrowed for as long as
/// `view` is.
/// `block` must have been found in `view`'s transaction (every caller: a
/// [`Frozen`] or a cursor over its view).
#[inline]
fn payload_in<'s>(
    view: &'s View,
    block: &BlockRef,
    global: u64,
) -> Result<(&'s [u8], MetaPrefix<'s>)> {
    let _pinned_by: &'s Pinned = &view.pin;
    // SAFETY: `block` was found in `view`'s transaction, whose pages `view.pin`
    // keeps valid and unchanged, and whose gate guard keeps the map in place,
    // for as long as `view` is borrowed, which bounds the result.
    let bytes = unsafe { std::slice::from_raw_parts(block.ptr.as_ptr(), block.len) };
    let index = (global - block.header.first_global) as u32;
    BlockView::from_validated(bytes, block.header)
        .prefixed(index)
        .map(|(meta, payload)| (payload, meta))
        .map_err(corrupt_at(global))
}

impl<'s> StreamCursor<&'s View> {
    /// The next block's share of the stream's events, borrowed from the
    /// snapshot (see [`StreamBlock`]); run and header checked once for all
    /// of them. `None` past the end; the cursor is done after an error.
    pub(crate) fn next_block_in(&mut self) -> Result<Option<StreamBlock<'s>>> {
        if self.done {
            return Ok(None);
        }
        let part = self.next_block_unchecked();
        if !matches!(part, Ok(Some(_))) {
            self.done = true;
        }
        part
    }

    fn next_block_unchecked(&mut self) -> Result<Option<StreamBlock<'s>>> {
        let Some(run) = self.run_for_next()? else {
            return Ok(None);
        };
        let view: &'s View = self.view;
        let global = run.first_global + (self.next_seq - run.first_seq);
        let block = view.block_ref(global)?.ok_or_else(|| missing(global))?;
        let h = block.header;
        check_belongs(&position_in(&h, global), self.tag, self.id, self.next_seq)?;
        let _pinned_by: &'s Pinned = &view.pin;
        // SAFETY: `block` was found in `view`'s transaction, whose pages
        // `view.pin` keeps valid and unchanged, and whose gate guard keeps the
        // map in place, for as long as `view` is borrowed, which bounds 's.
        let bytes = unsafe { std::slice::from_raw_parts(block.ptr.as_ptr(), block.len) };
        let last = h.end_global().min(run.end_global());
        let part = StreamBlock::new(
            BlockView::from_validated(bytes, h),
            global,
            last,
            self.next_seq,
        )?;
        self.next_seq += last - global;
        Ok(Some(part))
    }
}

impl<'s> GlobalCursor<&'s View> {
    /// The next event of the log: its block, global sequence, payload and
    /// metadata, borrowed from the snapshot.
    #[inline]
    #[allow(clippy::type_complexity)]
    pub(crate) fn next_in(&mut self) -> Option<Result<(BlockRef, u64, &'s [u8], MetaPrefix<'s>)>> {
        let (block, global) = match self.advance()? {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        match payload_in(self.view, &block, global) {
            Ok((payload, meta)) => Some(Ok((block, global, payload, meta))),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The pointer and holder logic of pinned events and archived references,
/// over a heap buffer standing in for the memory map, so that Miri (which
/// cannot call into LMDB) can check it:
/// `cargo +nightly miri test -p varvedb --lib storage::snapshot`.
#[cfg(all(test, not(loom)))]
mod tests {
    use rkyv::rancor;

    use super::*;
    use crate::storage::block::BlockBuilder;

    /// A heap buffer standing in for the memory map.
    struct HeapMap(AlignedVec<16>);

    const VALUES: [u128; 3] = [1, u128::MAX - 7, 0x0123_4567_89ab_cdef_0011_2233_4455_6677];
    const FIRST_GLOBAL: u64 = 40;

    fn archive(v: u128) -> AlignedVec<16> {
        rkyv::to_bytes::<rancor::Error>(&v).unwrap()
    }

    fn block_of_values() -> Vec<u8> {
        let mut b = BlockBuilder::with_capacity(0);
        b.start(VALUES.len());
        for v in VALUES {
            let mut buf = b.begin_event();
            buf.extend_from_slice(&archive(v));
            b.finish_event(buf).unwrap();
        }
        b.seal(&BlockHeader {
            stream_tag: 1,
            stream_id: 2,
            first_stream_seq: 0,
            fingerprint: 3,
            count: VALUES.len() as u32,
            meta_flags: 0,
            meta_len: 0,
            first_global: FIRST_GLOBAL,
            committed_at_micros: 4,
        })
        .to_vec()
    }

    /// A map holding the block `shift` bytes into its 16-byte aligned buffer:
    /// with a shift of 8 every payload is 8- but not 16-byte aligned, as LMDB
    /// may place it.
    fn map_with_block(shift: usize) -> (Arc<HeapMap>, BlockRef) {
        let mut map = AlignedVec::<16>::new();
        map.resize(shift, 0);
        map.extend_from_slice(&block_of_values());
        let pin = Arc::new(HeapMap(map));
        let bytes = &pin.0[shift..];
        let header = *BlockView::parse(FIRST_GLOBAL, bytes).unwrap().header();
        // SAFETY: `pin` owns the buffer and nothing mutates it; each test uses
        // the block only while it holds `pin`.
        let block = unsafe { BlockRef::over(bytes, header) };
        (pin, block)
    }

    fn event(pin: &Arc<HeapMap>, block: &BlockRef, i: usize) -> MappedEvent<HeapMap> {
        // SAFETY: the block's bytes live in `pin`'s buffer, which nothing
        // mutates and which every clone of `pin` keeps alive.
        unsafe { mapped_in(pin, block, FIRST_GLOBAL + i as u64) }.unwrap()
    }

    fn access(bytes: &[u8]) -> Result<&rkyv::Archived<u128>, rancor::Error> {
        rkyv::access::<rkyv::Archived<u128>, rancor::Error>(bytes)
    }

    #[test]
    fn a_pinned_event_stays_readable_on_any_thread_while_any_share_of_it_lives() {
        let (pin, block) = map_with_block(0);
        let events: Vec<_> = (0..VALUES.len()).map(|i| event(&pin, &block, i)).collect();
        // From here only the events keep the map alive.
        drop(pin);
        let shared = events[1].share();
        assert_eq!(shared.position, events[1].position);
        drop(events);
        let read = std::thread::spawn(move || shared.bytes().to_vec());
        assert_eq!(read.join().unwrap(), archive(VALUES[1]).as_slice());
    }

    #[test]
    fn an_archived_ref_reads_in_place_when_the_payload_is_aligned() {
        let (pin, block) = map_with_block(0);
        let in_map = pin.0.as_ptr_range();
        for (i, v) in VALUES.into_iter().enumerate() {
            let archived = ArchivedRef::new(event(&pin, &block, i), access).unwrap();
            assert!(matches!(archived._holder, Holder::Mapped(_)));
            assert!(in_map.contains(&archived.bytes().as_ptr()));
            assert_eq!(archived.get().to_native(), v);
        }
    }

    #[test]
    fn an_archived_ref_falls_back_to_an_aligned_copy_that_moves_with_it() {
        let (pin, block) = map_with_block(8);
        let in_map = pin.0.as_ptr_range();
        let refs: Vec<ArchivedRef<rkyv::Archived<u128>, HeapMap>> = (0..VALUES.len())
            .map(|i| ArchivedRef::new(event(&pin, &block, i), access).unwrap())
            .collect();
        for r in &refs {
            assert!(matches!(r._holder, Holder::Owned(_)));
            assert!(!in_map.contains(&r.bytes().as_ptr()));
        }
        drop(pin);
        // Moving the references (into a box, onto another thread) moves the
        // copies' owners, never their heap buffers.
        let boxed = Box::new(refs);
        let read = std::thread::spawn(move || {
            boxed
                .iter()
                .map(|r| r.get().to_native())
                .collect::<Vec<u128>>()
        });
        assert_eq!(read.join().unwrap(), Vec::from(VALUES));
    }

    #[test]
    fn a_pinned_events_metadata_stays_readable_while_any_share_of_it_lives() {
        use crate::storage::block::RawMeta;
        let mut b = BlockBuilder::with_capacity(0);
        let user: &[u8] = b"user bytes";
        let meta = |i: u8| RawMeta {
            event_id: Some([i; 16]),
            correlation: Some([9; 16]),
            causation: None,
            user: Some(user),
        };
        b.start_with_meta(2, meta(0).flags(), user.len());
        for i in 0..2u8 {
            let mut buf = b.begin_event_with(&meta(i));
            buf.extend_from_slice(&archive(u128::from(i)));
            b.finish_event(buf).unwrap();
        }
        let (meta_flags, meta_len) = b.meta();
        let mut map = AlignedVec::<16>::new();
        map.extend_from_slice(b.seal(&BlockHeader {
            stream_tag: 1,
            stream_id: 2,
            first_stream_seq: 0,
            fingerprint: 3,
            count: 2,
            meta_flags,
            meta_len,
            first_global: FIRST_GLOBAL,
            committed_at_micros: 4,
        }));
        let pin = Arc::new(HeapMap(map));
        let header = *BlockView::parse(FIRST_GLOBAL, &pin.0).unwrap().header();
        // SAFETY: `pin` owns the buffer and nothing mutates it.
        let block = unsafe { BlockRef::over(&pin.0, header) };
        let second = event(&pin, &block, 1);
        drop(pin);
        let shared = second.share();
        drop(second);
        let read = std::thread::spawn(move || {
            let m = shared.meta();
            (
                m.event_id,
                m.correlation,
                m.user.map(<[u8]>::to_vec),
                shared.bytes().to_vec(),
            )
        });
        assert_eq!(
            read.join().unwrap(),
            (
                Some([1; 16]),
                Some([9; 16]),
                Some(user.to_vec()),
                archive(1).to_vec()
            )
        );
    }

    #[test]
    fn a_payload_that_fails_on_its_aligned_copy_too_is_an_error() {
        fn never(_: &[u8]) -> Result<&rkyv::Archived<u128>, ()> {
            Err(())
        }
        for shift in [0, 8] {
            let (pin, block) = map_with_block(shift);
            assert!(ArchivedRef::new(event(&pin, &block, 0), never).is_err());
        }
    }
}
