//! Migration: rewriting a stream's blocks of older event versions into the
//! current version, in place, one bounded batch per write transaction.
//!
//! ```text
//! state "migrate/" + tag (BE u32) -> next global sequence to examine (LE u64)
//! ```
//!
//! Each batch reads the cursor, rewrites the blocks it examines and moves
//! the cursor in one write transaction, so a crash loses at most a batch
//! that never committed, and two migrations of one stream serialize on the
//! writer lock (each sees the cursor the other left). The batch that reaches
//! the end of the log retires the older versions in the stream's family and
//! deletes the cursor, in the same transaction: no block of a retired
//! version can exist, since the family records the current version from the
//! first batch on and older builds cannot append past it.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::kv::Txn;
use rkyv::util::AlignedVec;

use super::block::reseal;
use super::chain;
use super::keys::{event_key, parse_event_key};
use super::{Store, StreamInfo, WriteTxn};
use crate::error::{Error, Location, Result};
use crate::position::GlobalSequence;
use crate::verify::Problem;

/// The `state` key of the cursor of a migration of the stream with `tag`.
fn cursor_key(tag: u32) -> [u8; 12] {
    let mut k = *b"migrate/\0\0\0\0";
    k[8..].copy_from_slice(&tag.to_be_bytes());
    k
}

/// What one batch did.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Blocks rewritten.
    pub(crate) blocks: u64,
    /// Events rewritten, per version they had.
    pub(crate) events: BTreeMap<u32, u64>,
    /// The versions retired (by the last batch).
    pub(crate) retired: Vec<u32>,
    /// Whether the stream is migrated (the cursor reached the end of the log).
    pub(crate) done: bool,
    /// Whether the stream exists.
    pub(crate) exists: bool,
    /// Re-seal records written (blocks the chain covers that were rewritten).
    pub(crate) resealed: u64,
    /// The next global sequence a later batch examines (the end of the
    /// log, once done).
    pub(crate) position: u64,
}

/// What a migration of a stream would rewrite, counted without writing.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Events of older versions, per version.
    pub(crate) events: BTreeMap<u32, u64>,
    /// Events already of the current version.
    pub(crate) current: u64,
    /// Blocks a migration would rewrite: those of older versions, and
    /// legacy blocks of the current version (only their fingerprint changes).
    pub(crate) blocks: u64,
}

/// The limits of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Events rewritten, at most (a block is never split: one block of more
    /// events is rewritten whole, alone).
    pub(crate) events: usize,
    /// Blocks examined (of any stream), at most.
    pub(crate) blocks: usize,
}

impl WriteTxn<'_> {
    /// Rewrites, within `budget`, the next blocks of `info`'s stream that
    /// hold an older version of its event (`info` is a `#[derive(Event)]`
    /// handle), from the cursor the last batch left.
    pub(crate) fn migrate_batch(&mut self, info: &StreamInfo, budget: Budget) -> Result<Batch> {
        let store = self.store;
        let mut batch = Batch::default();
        let Some((tag, family, bound)) = store.migration_target(&mut self.txn, info)? else {
            batch.done = true;
            return Ok(batch);
        };
        batch.exists = true;
        self.bound.extend(bound);
        let schema = info.schema.as_ref().ok_or_else(|| Error::Corruption {
            location: Location::Record(format!("stream {:?}", info.name)),
            detail: "a migration needs a #[derive(Event)] type".into(),
        })?;
        let key = cursor_key(tag);
        let from = match self.state_get(&key)? {
            Some(v) => u64::from_le_bytes(v.try_into().map_err(|_| Error::Corruption {
                location: Location::Record(format!(
                    "the migration cursor of stream {:?}",
                    info.name
                )),
                detail: format!("{} bytes, expected 8", v.len()),
            })?),
            None => 0,
        };

        // Read first (the iterator borrows the transaction), write after.
        // (key, the block's chain leaf before, its new bytes)
        // (key, chain leaf as written, new plaintext, sealed with an entity key)
        let mut rewrites: Vec<(u64, chain::Leaf, Vec<u8>, bool)> = Vec::new();
        let mut next = from;
        let mut rewritten = 0usize;
        let mut reached_end = true;
        let mut scratch: Vec<AlignedVec<16>> = Vec::new();
        let mut plain = super::crypt::PlainBuf::default();
        let start = event_key(from);
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(&start[..]), Bound::Unbounded);
        let range = store.events.range(&self.txn, &bounds);
        let iter = self.lmdb("reading the event log", range)?;
        for (examined, item) in iter.enumerate() {
            let (k, v) = self.lmdb("reading the event log", item)?;
            if examined >= budget.blocks || (rewritten > 0 && rewritten >= budget.events) {
                reached_end = false;
                break;
            }
            let global = parse_event_key(k).ok_or_else(|| Error::Corruption {
                location: Location::Record("the event log".into()),
                detail: format!("malformed key of {} bytes", k.len()),
            })?;
            let corrupt = |detail: String| Error::Corruption {
                location: Location::Global(GlobalSequence(global)),
                detail,
            };
            let view = match store.open_stored(global, v, &mut plain) {
                Ok(view) => view,
                // An erased entity's block stays as it is: unreadable, so
                // neither migrated nor needing to be.
                Err(Error::Erased { .. }) => {
                    next = store.stored_header(global, v)?.end_global();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let entity = store.keyring().is_some() && super::vault::entity_sealed(v);
            let header = *view.header();
            next = header.end_global();
            if header.stream_tag != tag {
                continue;
            }
            let fp = family
                .legacy
                .filter(|l| l.block == header.fingerprint)
                .map_or(header.fingerprint, |l| l.schema);
            if fp == schema.fingerprint {
                if header.fingerprint != fp {
                    // A block from before the family was recorded, of the
                    // current version: its bytes stay, its fingerprint is
                    // the version's own from now on.
                    let payloads = (0..header.count)
                        .map(|i| view.event(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| corrupt(e.0))?;
                    let bytes =
                        reseal(&view, schema.fingerprint, &payloads).map_err(|e| corrupt(e.0))?;
                    rewrites.push((global, chain::leaf(v), bytes, entity));
                    batch.blocks += 1;
                }
                continue;
            }
            let unknown = || Error::UnknownEventVersion {
                location: Location::Global(GlobalSequence(global)),
                event: schema.name.to_string(),
                version: family.version_of(header.fingerprint),
                fingerprint: fp,
                known: schema.lineage().into(),
            };
            let version = schema.version_of(fp).ok_or_else(unknown)?;
            scratch.resize_with(header.count as usize, AlignedVec::new);
            for i in 0..header.count {
                let payload = view.event(i).map_err(|e| corrupt(e.0))?;
                let out = &mut scratch[i as usize];
                match schema.upcast(fp, payload, out) {
                    Ok(true) => {}
                    Ok(false) => return Err(unknown()),
                    Err(e) => {
                        return Err(Error::UpcastFailed {
                            location: Location::Global(GlobalSequence(global + u64::from(i))),
                            event: schema.name.to_string(),
                            detail: e.to_string(),
                        })
                    }
                }
            }
            let payloads: Vec<&[u8]> = scratch[..header.count as usize]
                .iter()
                .map(|b| b.as_slice())
                .collect();
            let bytes = reseal(&view, schema.fingerprint, &payloads).map_err(|e| corrupt(e.0))?;
            rewrites.push((global, chain::leaf(v), bytes, entity));
            batch.blocks += 1;
            *batch.events.entry(version).or_default() += u64::from(header.count);
            rewritten += header.count as usize;
        }

        for (global, old, bytes, entity) in &rewrites {
            // An encrypted store's block is sealed anew (a new nonce, its new
            // header in the associated data), with its entity's key if it
            // was sealed with one.
            let sealed;
            let bytes = match store.keyring() {
                None => bytes,
                Some(ring) => {
                    sealed = match store.vault().filter(|_| *entity) {
                        Some(vault) => {
                            let h = super::block::parse_header(*global, bytes)
                                .map_err(super::snapshot::corrupt_at(*global))?;
                            vault.seal_block(*global, h.stream_tag, h.stream_id, bytes)?
                        }
                        None => super::crypt::sealed_block(ring, *global, bytes)?,
                    };
                    self.plain.forget_block(*global);
                    &sealed
                }
            };
            let put = store.events.put(&mut self.txn, &event_key(*global), bytes);
            self.lmdb("rewriting a block", put)?;
            // The chain keeps covering the block as written; a re-seal
            // record says what it became.
            if self.chain_reseal(*global, old, bytes)? {
                batch.resealed += 1;
            }
        }
        batch.position = next;
        if reached_end {
            let (retired, bound) =
                store.retire_versions(&mut self.txn, info, tag, &family, schema.fingerprint)?;
            self.bound.extend(bound);
            batch.retired = retired;
            self.state_delete(&key)?;
            batch.done = true;
        } else {
            self.state_put(&key, &next.to_le_bytes())?;
        }
        Ok(batch)
    }
}

impl Store {
    /// Counts, in the snapshot `txn`, what [`WriteTxn::migrate_batch`]
    /// would rewrite in `info`'s stream (a `#[derive(Event)]` handle): one
    /// walk of the log's block headers, no payload read. `None` if the
    /// stream does not exist.
    ///
    /// # Errors
    /// As a migration's checks: `SchemaMismatch`, `OutdatedEventVersion`,
    /// `UnknownEventVersion` for a block of a version the handle's chain
    /// does not know, `Corruption` for a damaged block header.
    pub(crate) fn migration_plan(&self, txn: &Txn<'_>, info: &StreamInfo) -> Result<Option<Plan>> {
        let Some((tag, family, legacy)) = self.migration_source(txn, info)? else {
            return Ok(None);
        };
        let schema = info.schema.as_ref().ok_or_else(|| Error::Corruption {
            location: Location::Record(format!("stream {:?}", info.name)),
            detail: "a migration needs a #[derive(Event)] type".into(),
        })?;
        let err = self.err("reading the event log");
        let mut plan = Plan::default();
        for item in self.events.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let global = parse_event_key(k).ok_or_else(|| Error::Corruption {
                location: Location::Record("the event log".into()),
                detail: format!("malformed key of {} bytes", k.len()),
            })?;
            let header = &self.stored_header(global, v)?;
            if header.stream_tag != tag {
                continue;
            }
            let fp = legacy
                .filter(|l| l.block == header.fingerprint)
                .map_or(header.fingerprint, |l| l.schema);
            let count = u64::from(header.count);
            if fp == schema.fingerprint {
                plan.current += count;
                if header.fingerprint != fp {
                    plan.blocks += 1;
                }
                continue;
            }
            let version = schema
                .version_of(fp)
                .ok_or_else(|| Error::UnknownEventVersion {
                    location: Location::Global(GlobalSequence(global)),
                    event: schema.name.to_string(),
                    version: family
                        .as_ref()
                        .and_then(|f| f.version_of(header.fingerprint)),
                    fingerprint: fp,
                    known: schema.lineage().into(),
                })?;
            *plan.events.entry(version).or_default() += count;
            plan.blocks += 1;
        }
        Ok(Some(plan))
    }

    /// After a migration: every block of the stream with `tag` carries the
    /// current version's fingerprint `current` and each of its events passes
    /// `check` (validation as the current version). Returns what does not.
    pub(crate) fn check_migrated(
        &self,
        txn: &Txn<'_>,
        tag: u32,
        current: u64,
        mut check: impl FnMut(&[u8]) -> std::result::Result<(), String>,
    ) -> Result<Vec<Problem>> {
        let err = self.err("checking a migrated stream");
        let mut problems = Vec::new();
        let mut plain = super::crypt::PlainBuf::default();
        for item in self.events.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let Some(global) = parse_event_key(k) else {
                continue; // verify() reports it
            };
            let Ok(view) = self.open_stored(global, v, &mut plain) else {
                continue; // verify() reports it
            };
            let header = view.header();
            if header.stream_tag != tag {
                continue;
            }
            let at = Location::Global(GlobalSequence(global));
            if header.fingerprint != current {
                problems.push(Problem::damage(
                    at,
                    format!(
                        "block still carries fingerprint {:#018x}, not the current version's {current:#018x}",
                        header.fingerprint
                    ),
                ));
                continue;
            }
            for i in 0..header.count {
                let result = view.event(i).map_err(|e| e.0).and_then(&mut check);
                if let Err(detail) = result {
                    problems.push(Problem::damage(
                        Location::Global(GlobalSequence(global + u64::from(i))),
                        detail,
                    ));
                }
            }
        }
        Ok(problems)
    }
}
