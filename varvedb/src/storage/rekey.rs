//! Re-encryption: rewriting every block, stream name and `state` value
//! sealed with a data key other than the active one under the active one,
//! one bounded batch per write transaction, then retiring the old keys.
//!
//! ```text
//! meta "reencrypt" -> version 1 | phase (1 blocks, 2 names, 3 state) | 2 reserved
//!                     | target key id (LE u32) | the last key done in the phase
//! ```
//!
//! Each batch reads the cursor, rewrites what it examines and moves the
//! cursor in one write transaction, so a crash loses at most a batch that
//! never committed. Writers running beside the pass seal with the active
//! key (every write transaction reloads the keyring when the `crypt`
//! record changed), so nothing sealed with an older key appears behind the
//! cursor. A rotation during a pass changes the target: the pass starts
//! over for the new key. The batch that finishes the `state` phase deletes
//! the wrapped data keys other than the target and the cursor, in the same
//! transaction. A re-sealed block keeps its chain digest, with a re-seal
//! record (as a migration's rewrite does), so `verify` and a held head
//! still check.

use std::ops::Bound;

use super::block::parse_header;
use super::chain;
use super::crypt::{block_key_id, value_key_id, PlainBuf, ValueKind};
use super::keys::parse_event_key;
use super::kv::Table;
use super::snapshot::corrupt_at;
use super::WriteTxn;
use crate::error::{Error, Location, Result};

/// The `meta` key of the pass's cursor (not under the `crypt` prefix: a
/// restore adopting a source's keys does not adopt its pass).
pub(crate) const CURSOR_KEY: &[u8] = b"reencrypt";
const VERSION: u8 = 1;

/// What a pass rewrites, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Blocks = 1,
    Names = 2,
    State = 3,
}

/// The pass's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    phase: Phase,
    target: u32,
    /// The last key rewritten or examined in the phase (empty: none yet).
    after: Vec<u8>,
}

impl Cursor {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![VERSION, self.phase as u8, 0, 0];
        b.extend_from_slice(&self.target.to_le_bytes());
        b.extend_from_slice(&self.after);
        b
    }

    fn decode(b: &[u8]) -> Option<Cursor> {
        if b.len() < 8 || b[0] != VERSION {
            return None;
        }
        let phase = match b[1] {
            1 => Phase::Blocks,
            2 => Phase::Names,
            3 => Phase::State,
            _ => return None,
        };
        Some(Cursor {
            phase,
            target: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            after: b[8..].to_vec(),
        })
    }
}

/// What one batch did.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Blocks re-sealed, and the events and stored bytes they hold.
    pub(crate) blocks: u64,
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    /// Stream names re-sealed.
    pub(crate) names: u64,
    /// `state` values re-sealed.
    pub(crate) values: u64,
    /// Re-seal records written (chained blocks rewritten).
    pub(crate) resealed: u64,
    /// The data keys retired (by the last batch).
    pub(crate) retired: Vec<u32>,
    /// The key everything is sealed with once the pass is done.
    pub(crate) target: u32,
    /// The next global sequence the blocks phase examines (`None` past it).
    pub(crate) position: Option<u64>,
    /// Whether the pass is complete.
    pub(crate) done: bool,
}

/// The limits of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Items (blocks or values) rewritten, at most.
    pub(crate) rewrites: usize,
    /// Stored bytes rewritten, at most (one item larger is rewritten alone).
    pub(crate) bytes: usize,
    /// Items examined, at most.
    pub(crate) examined: usize,
}

fn malformed(raw: &[u8]) -> Error {
    Error::Corruption {
        location: Location::Record("the re-encryption cursor".into()),
        detail: format!("a malformed record of {} bytes", raw.len()),
    }
}

impl WriteTxn<'_> {
    /// The pass's cursor, if a pass is under way.
    fn reencrypt_cursor(&self) -> Result<Option<Cursor>> {
        let got = self.store.meta.get(&self.txn, CURSOR_KEY);
        match self.lmdb("reading the re-encryption cursor", got)? {
            None => Ok(None),
            Some(raw) => Cursor::decode(raw).map(Some).ok_or_else(|| malformed(raw)),
        }
    }

    /// One batch of a re-encryption pass (see the module's doc).
    pub(crate) fn reencrypt_batch(&mut self, budget: Budget) -> Result<Batch> {
        let store = self.store;
        let ring = store.keyring().ok_or_else(|| Error::NotEncrypted {
            path: store.path().to_path_buf(),
        })?;
        let target = ring.active();
        let mut batch = Batch {
            target,
            ..Batch::default()
        };
        let mut cursor = match self.reencrypt_cursor()? {
            Some(c) if c.target == target => c,
            found => {
                // No pass under way: with no data key but the active one
                // held, nothing can be sealed with another (a re-run after
                // completion is a no-op).
                if found.is_none()
                    && self
                        .wrapped_ids()?
                        .iter()
                        .all(|id| *id == 0 || *id == target)
                {
                    batch.done = true;
                    return Ok(batch);
                }
                // A new pass, or one for a key rotated away since: from the start.
                Cursor {
                    phase: Phase::Blocks,
                    target,
                    after: Vec::new(),
                }
            }
        };
        let mut left = budget;
        loop {
            let exhausted = match cursor.phase {
                Phase::Blocks => self.reencrypt_blocks(&mut cursor, &mut left, &mut batch)?,
                Phase::Names => {
                    let catalog = store.catalog;
                    self.reencrypt_values(
                        catalog,
                        ValueKind::StreamName,
                        &mut cursor,
                        &mut left,
                        &mut batch,
                    )?
                }
                Phase::State => match store.state {
                    Some(state) => self.reencrypt_values(
                        state,
                        ValueKind::State,
                        &mut cursor,
                        &mut left,
                        &mut batch,
                    )?,
                    None => true,
                },
            };
            if !exhausted {
                break;
            }
            cursor.after.clear();
            cursor.phase = match cursor.phase {
                Phase::Blocks => Phase::Names,
                Phase::Names => Phase::State,
                Phase::State => {
                    batch.retired = self.retire_data_keys()?;
                    let del = store.meta.delete(&mut self.txn, CURSOR_KEY);
                    self.lmdb("finishing the re-encryption", del)?;
                    batch.done = true;
                    return Ok(batch);
                }
            };
        }
        let put = store.meta.put(&mut self.txn, CURSOR_KEY, &cursor.encode());
        self.lmdb("moving the re-encryption cursor", put)?;
        Ok(batch)
    }

    /// Re-seals the blocks after the cursor not sealed with its target key,
    /// within `left`. Returns whether the log's end was reached.
    fn reencrypt_blocks(
        &mut self,
        cursor: &mut Cursor,
        left: &mut Budget,
        batch: &mut Batch,
    ) -> Result<bool> {
        let store = self.store;
        // (key, stored bytes) of the blocks to re-seal; read first (the
        // iterator borrows the transaction), write after.
        let mut todo: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut reached_end = true;
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = if cursor.after.is_empty() {
            (Bound::Unbounded, Bound::Unbounded)
        } else {
            (Bound::Excluded(&cursor.after[..]), Bound::Unbounded)
        };
        let mut last = None;
        let range = store.events.range(&self.txn, &bounds);
        for item in self.lmdb("reading the event log", range)? {
            if left.examined == 0 || left.rewrites == 0 || left.bytes == 0 {
                reached_end = false;
                break;
            }
            let (k, v) = self.lmdb("reading the event log", item)?;
            let global = parse_event_key(k).ok_or_else(|| Error::Corruption {
                location: Location::Record("the event log".into()),
                detail: format!("malformed key of {} bytes", k.len()),
            })?;
            left.examined -= 1;
            last = Some(k.to_vec());
            if block_key_id(v) == Some(cursor.target) {
                continue;
            }
            todo.push((global, v.to_vec()));
            left.rewrites -= 1;
            left.bytes = left.bytes.saturating_sub(v.len());
        }
        if !reached_end {
            batch.position = last
                .as_deref()
                .and_then(parse_event_key)
                .map(|g| g + 1)
                .or(Some(0));
        }
        let ring = store.keyring().ok_or_else(|| Error::NotEncrypted {
            path: store.path().to_path_buf(),
        })?;
        let mut plain = PlainBuf::default();
        let mut sealed = Vec::new();
        for (global, old) in &todo {
            let header = parse_header(*global, old).map_err(corrupt_at(*global))?;
            // Opening checks the block: a damaged one is never re-sealed.
            store.open_stored(*global, old, &mut plain)?;
            ring.seal_block(*global, plain.as_slice(), &mut sealed)?;
            plain.clear();
            self.plain.forget_block(*global);
            let put = store
                .events
                .put(&mut self.txn, &super::keys::event_key(*global), &sealed);
            self.lmdb("re-sealing a block", put)?;
            if self.chain_reseal(*global, &chain::leaf(old), &sealed)? {
                batch.resealed += 1;
            }
            batch.blocks += 1;
            batch.events += u64::from(header.count);
            batch.bytes += old.len() as u64;
        }
        if let Some(last) = last {
            cursor.after = last;
        }
        Ok(reached_end)
    }

    /// Re-seals the values of `table` (the catalog's stream names, or
    /// `state`) after the cursor not sealed with its target key, within
    /// `left`. Returns whether the table's end was reached.
    fn reencrypt_values(
        &mut self,
        table: Table,
        kind: ValueKind,
        cursor: &mut Cursor,
        left: &mut Budget,
        batch: &mut Batch,
    ) -> Result<bool> {
        let store = self.store;
        let names = kind == ValueKind::StreamName;
        let mut todo: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut reached_end = true;
        let start: &[u8] = if names { b"t" } else { b"" };
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = if !cursor.after.is_empty() {
            (Bound::Excluded(&cursor.after[..]), Bound::Unbounded)
        } else if names {
            (Bound::Included(start), Bound::Unbounded)
        } else {
            // LMDB takes no empty key, not even as a bound.
            (Bound::Unbounded, Bound::Unbounded)
        };
        let mut last = None;
        let range = table.range(&self.txn, &bounds);
        for item in self.lmdb("reading sealed values", range)? {
            if left.examined == 0 || left.rewrites == 0 || left.bytes == 0 {
                reached_end = false;
                break;
            }
            let (k, v) = self.lmdb("reading sealed values", item)?;
            if names && !k.starts_with(b"t") {
                break; // past the stream names
            }
            left.examined -= 1;
            last = Some(k.to_vec());
            if names && k.len() != 5 {
                continue;
            }
            if value_key_id(v) == Some(cursor.target) {
                continue;
            }
            todo.push((k.to_vec(), v.to_vec()));
            left.rewrites -= 1;
            left.bytes = left.bytes.saturating_sub(v.len());
        }
        let ring = store.keyring().ok_or_else(|| Error::NotEncrypted {
            path: store.path().to_path_buf(),
        })?;
        let mut plain = PlainBuf::default();
        for (k, old) in &todo {
            store.open_value_into(ring, kind, k, old, &mut plain)?;
            let sealed = ring.seal_value(kind, k, plain.as_slice())?;
            plain.clear();
            self.plain.forget_value(kind, k);
            let put = table.put(&mut self.txn, k, &sealed);
            self.lmdb("re-sealing a value", put)?;
            if names {
                batch.names += 1;
            } else {
                batch.values += 1;
            }
        }
        if let Some(last) = last {
            cursor.after = last;
        }
        Ok(reached_end)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_round_trips_and_a_malformed_one_is_refused() {
        let c = Cursor {
            phase: Phase::Names,
            target: 3,
            after: b"t\0\0\0\x07".to_vec(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        assert_eq!(Cursor::decode(&c.encode()[..7]), None);
        let mut bad = c.encode();
        bad[1] = 9;
        assert_eq!(Cursor::decode(&bad), None);
    }
}
