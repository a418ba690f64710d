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
            // A block sealed with its entity's key (the key vault) is not
            // sealed with a data key: it stays as it is.
            if block_key_id(v).is_none_or(|id| id == cursor.target) {
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

/// What [`copy_resealed`] copied.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    pub(crate) blocks: u64,
    pub(crate) events: u64,
    pub(crate) names: u64,
    pub(crate) values: u64,
    pub(crate) entity_keys: u64,
}

/// Bytes of blocks (or values) written per transaction by [`copy_resealed`].
const COPY_CHUNK: usize = 4 << 20;

/// Copies everything of `source` into `target`, a new, empty store of the
/// same id with its own keys (a re-keying restore): every block, stream
/// name and `state` value opened with the source's keys (or read as is from
/// a plaintext source) and sealed with the target's; the catalog's name
/// keys hashed with the target's stream-name key; the index, event ids and
/// entity keys as in the source. A chained source's chain digests and
/// re-seal records are kept, and each block gets one more re-seal record
/// (from its source bytes to its new ones), so every head the source
/// handed out still verifies against the target.
pub(crate) fn copy_resealed(
    source: &std::sync::Arc<super::Store>,
    target: &std::sync::Arc<super::Store>,
) -> Result<Copied> {
    use zeroize::Zeroizing;
    let mut copied = Copied::default();
    let view = source.snapshot()?;
    let txn = &view.pin.txn;
    let err = source.err("reading the store to re-key");

    // The source's re-seal records first: the blocks' chain values name them.
    let mut amended = std::collections::HashMap::new();
    let mut reseals = Vec::new();
    view.for_each_reseal(0, |n, record| {
        let block = u64::from_le_bytes(record[..8].try_into().unwrap_or_default());
        reseals.push((n, record.to_vec()));
        if let Some(value) = view.chain_value(block)? {
            amended.insert(block, value);
        }
        Ok(())
    })?;
    if !reseals.is_empty() {
        target.write(|t| {
            for (n, record) in &reseals {
                t.import_reseal(*n, record)?;
            }
            Ok(())
        })?;
    }

    // Blocks, a chunk per transaction: (key, stored bytes, plaintext).
    type Chunk = Vec<(u64, Vec<u8>, Zeroizing<Vec<u8>>)>;
    let mut chunk: Chunk = Vec::new();
    let mut bytes = 0;
    let flush =
        |chunk: &mut Chunk, amended: &std::collections::HashMap<u64, Vec<u8>>| -> Result<()> {
            if chunk.is_empty() {
                return Ok(());
            }
            target.write(|t| {
                let ring = target.keyring();
                let mut sealed = Vec::new();
                for (key, stored, plain) in chunk.iter() {
                    let bytes: &[u8] = match ring {
                        Some(ring) => {
                            ring.seal_block(*key, plain, &mut sealed)?;
                            &sealed
                        }
                        None => plain,
                    };
                    let chain = amended.get(key).map(Vec::as_slice);
                    t.import_block_with(*key, bytes, chain, Some(stored))?;
                }
                Ok(())
            })?;
            chunk.clear();
            Ok(())
        };
    let mut plain = PlainBuf::default();
    for item in source.events.iter(txn).map_err(&err)? {
        let (k, v) = item.map_err(&err)?;
        let key = parse_event_key(k).ok_or_else(|| Error::Corruption {
            location: Location::Record("the event log".into()),
            detail: format!("malformed key of {} bytes", k.len()),
        })?;
        if super::vault::entity_sealed(v) {
            // Sealed with its entity's key (the key vault): re-sealing it
            // under a data key would undo crypto-shredding.
            return Err(Error::Unsupported {
                operation: "a re-keying restore of a store with entity-sealed blocks (a key vault)",
                backend: "a store with a key vault",
            });
        }
        let view = source.open_stored(key, v, &mut plain)?;
        copied.blocks += 1;
        copied.events += u64::from(view.header().count);
        let opened = match source.keyring() {
            Some(_) => Zeroizing::new(plain.as_slice().to_vec()),
            None => Zeroizing::new(v.to_vec()),
        };
        bytes += v.len();
        chunk.push((key, v.to_vec(), opened));
        if bytes >= COPY_CHUNK {
            flush(&mut chunk, &amended)?;
            bytes = 0;
        }
    }
    flush(&mut chunk, &amended)?;
    plain.clear();

    // The catalog: stream names sealed anew, name keys hashed anew.
    let mut records = Vec::new();
    for item in source.catalog.iter(txn).map_err(&err)? {
        let (k, v) = item.map_err(&err)?;
        records.push((k.to_vec(), v.to_vec()));
    }
    let mut names: Vec<String> = Vec::new();
    for (k, v) in &records {
        if k.len() == 5 && k[0] == b't' {
            let name = match source.keyring() {
                Some(ring) => {
                    source.open_value_into(ring, ValueKind::StreamName, k, v, &mut plain)?;
                    plain.as_slice().to_vec()
                }
                None => v.clone(),
            };
            plain.clear();
            let name = String::from_utf8(name).map_err(|_| Error::Corruption {
                location: Location::Record("the catalog".into()),
                detail: "a stream name is not UTF-8".into(),
            })?;
            names.push(name);
        } else if k.first() == Some(&b'n') && source.keyring().is_none() {
            // A plaintext store's name key is the name.
            if let Ok(name) = std::str::from_utf8(&k[1..]) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    let by_key: std::collections::HashMap<&[u8], &[u8]> = records
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let mut handled = std::collections::HashSet::new();
    target.write(|t| {
        for name in &names {
            let from = source.name_key(name);
            if let Some(v) = by_key.get(from.as_slice()) {
                t.import_catalog_record(&target.name_key(name), v)?;
                handled.insert(from);
            }
        }
        for (k, v) in &records {
            if k.len() == 5 && k[0] == b't' {
                let name = match source.keyring() {
                    Some(ring) => {
                        let mut buf = PlainBuf::default();
                        source.open_value_into(ring, ValueKind::StreamName, k, v, &mut buf)?;
                        Zeroizing::new(buf.as_slice().to_vec())
                    }
                    None => Zeroizing::new(v.clone()),
                };
                let sealed = target.seal_value(ValueKind::StreamName, k, &name)?;
                t.import_catalog_record(k, &sealed)?;
            } else if k.first() != Some(&b'n') {
                t.import_catalog_record(k, v)?;
            }
        }
        Ok(())
    })?;
    copied.names = names.len() as u64;
    if let Some((k, _)) = records
        .iter()
        .find(|(k, _)| k.first() == Some(&b'n') && !handled.contains(k))
    {
        return Err(Error::Corruption {
            location: Location::Record("the catalog".into()),
            detail: format!(
                "a name record ({} bytes) names no stream of the catalog",
                k.len()
            ),
        });
    }

    // `state` values, opened and sealed anew (`state_put` seals).
    if let Some(state) = source.state {
        let mut values: Vec<(Vec<u8>, Zeroizing<Vec<u8>>)> = Vec::new();
        let mut bytes = 0;
        let put = |values: &mut Vec<(Vec<u8>, Zeroizing<Vec<u8>>)>| -> Result<()> {
            target.write(|t| {
                for (k, v) in values.iter() {
                    t.state_put(k, v)?;
                }
                Ok(())
            })?;
            values.clear();
            Ok(())
        };
        for item in state.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let opened = match source.keyring() {
                Some(ring) => {
                    source.open_value_into(ring, ValueKind::State, k, v, &mut plain)?;
                    let o = Zeroizing::new(plain.as_slice().to_vec());
                    plain.clear();
                    o
                }
                None => Zeroizing::new(v.to_vec()),
            };
            bytes += v.len();
            values.push((k.to_vec(), opened));
            copied.values += 1;
            if bytes >= COPY_CHUNK {
                put(&mut values)?;
                bytes = 0;
            }
        }
        put(&mut values)?;
    }

    // Entity keys (in the clear in both).
    if let Some(keys) = source.keys {
        let mut entries = Vec::new();
        for item in keys.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            entries.push((k.to_vec(), v.to_vec()));
        }
        copied.entity_keys = entries.len() as u64;
        target.write(|t| {
            let db = *t.store.keys_db()?;
            for (k, v) in &entries {
                let put = db.put(&mut t.txn, k, v);
                t.lmdb("restoring entity keys", put)?;
            }
            Ok(())
        })?;
    }
    Ok(copied)
}
