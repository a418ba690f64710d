//! Walks every database of a store in one snapshot and reports each problem
//! with its position: damaged blocks, gaps or overlaps in the global log, gaps
//! in a stream id's sequences, index runs that disagree with the log, events
//! of streams missing from the catalog.
//!
//! It runs in memory bounded by the number of streams (the catalog's tags),
//! whatever the number of blocks, ids and runs: the log is walked in global
//! order and the index in key order, each keeping O(1) state, and each side
//! is checked against the other by lookups rather than a map of either.
//!
//! - Every block's events are found in the index, at the global sequences
//!   they occupy (log walk, one index lookup per run the block touches).
//! - Every run's events are found in the log, in blocks of that stream id at
//!   the stream sequences the run says (index walk, one log lookup per block
//!   the run touches).
//! - Each stream id's runs are dense from sequence 0, and their global
//!   sequences grow with their stream sequences (index walk).
//!
//! Together these make the index and the log describe the same events, so a
//! stream id's blocks are dense and in global order too.
//!
//! - Every event with an event id is found under it in the `ids` index (log
//!   walk), and every `ids` entry points at an event with that id (ids walk).
//! - Every entity key maps to a stream id that maps back to it, and every
//!   reverse entry to a key that maps to it (keys walk, by lookup).

use std::collections::HashMap;

use super::kv::Txn;

use super::block::BlockHeader;
use super::keys::{event_key, index_key, parse_event_key, parse_index_key, Run};
use super::Store;
use crate::error::{Location, Result};
use crate::position::GlobalSequence;
use crate::verify::{Problem, VerifyReport};

impl Store {
    pub(crate) fn verify(&self, txn: &Txn<'_>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut problem = |location: Location, detail: String| {
            report.problems.push(Problem::damage(location, detail));
        };
        let err = self.err("verifying the store");

        // Catalog: tag -> name, both directions present.
        let mut tags = HashMap::new();
        for item in self.catalog.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            if k.first() == Some(&b't') && k.len() == 5 {
                let tag = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                tags.insert(tag, String::from_utf8_lossy(v).into_owned());
            }
        }
        let mut streams = 0u64;
        for tag in tags.keys() {
            match self.stream_by_tag(txn, *tag) {
                Ok(_) => streams += 1,
                Err(e) => problem(
                    Location::Record(format!("catalog tag {tag}")),
                    e.to_string(),
                ),
            }
        }

        // Log: dense, each block intact and found in the index.
        let mut next_global = 0u64;
        let mut events = 0u64;
        let mut block_count = 0u64;
        let mut plain = super::crypt::PlainBuf::default();
        for item in self.events.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            block_count += 1;
            let Some(key) = parse_event_key(k) else {
                problem(
                    Location::Record("the event log".into()),
                    format!("malformed key of {} bytes", k.len()),
                );
                continue;
            };
            let at = Location::Global(GlobalSequence(key));
            if key != next_global {
                problem(
                    at.clone(),
                    format!("the log jumps from global sequence {next_global} to {key}"),
                );
            }
            let view = match self.open_stored(key, v, &mut plain) {
                Ok(view) => view,
                Err(crate::Error::Erased { .. }) => {
                    // Erased, not damaged: its header (in the clear) still
                    // says where it sits, so the log stays dense and the
                    // index is checked against it.
                    let h = self.stored_header(key, v)?;
                    report.erased_blocks += 1;
                    report.erased_events += u64::from(h.count);
                    next_global = h.end_global();
                    if !self.block_in_index(txn, &h)? {
                        problem(
                            at,
                            format!(
                                "events of erased stream tag {} id {} are not in the stream index",
                                h.stream_tag, h.stream_id
                            ),
                        );
                    }
                    continue;
                }
                Err(e) => {
                    problem(at, verify_detail(e));
                    next_global = key.saturating_add(1);
                    continue;
                }
            };
            let h = *view.header();
            next_global = h.end_global();
            if !tags.contains_key(&h.stream_tag) {
                problem(
                    at.clone(),
                    format!(
                        "block names stream tag {} missing from the catalog",
                        h.stream_tag
                    ),
                );
            }
            for i in 0..h.count {
                let global = key + u64::from(i);
                match view.entry(i) {
                    Ok((meta, _)) => {
                        events += 1;
                        if let Some(event_id) = meta.event_id {
                            if self.id_global(txn, &event_id).ok().flatten() != Some(global) {
                                problem(
                                    Location::Global(GlobalSequence(global)),
                                    format!(
                                        "event id {} is not in the event id index at this \
                                         sequence",
                                        crate::id::EventId(event_id)
                                    ),
                                );
                            }
                        }
                    }
                    Err(e) => problem(Location::Global(GlobalSequence(global)), e.0),
                }
            }
            if !self.block_in_index(txn, &h)? {
                problem(
                    at,
                    format!(
                        "events of stream tag {} id {} from sequence {} are not in the stream \
                         index at the global sequences they occupy",
                        h.stream_tag, h.stream_id, h.first_stream_seq
                    ),
                );
            }
        }

        // Index: each id's runs dense from 0 and in global order, each run in the log.
        let mut current = None;
        let mut seen = 0u64;
        let mut last_global = None;
        for item in self.index.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            report.runs += 1;
            let Some((tag, id, first)) = parse_index_key(k) else {
                problem(
                    Location::Record("the stream index".into()),
                    format!("malformed key of {} bytes", k.len()),
                );
                continue;
            };
            let at = Location::Record(format!(
                "stream index run (tag {tag}, id {id}, from {first})"
            ));
            if current != Some((tag, id)) {
                current = Some((tag, id));
                seen = 0;
                last_global = None;
            }
            let Some(run) = Run::decode(k, first, v) else {
                problem(at, "malformed run or checksum mismatch".into());
                continue;
            };
            if run.first_seq != seen {
                problem(
                    at.clone(),
                    format!(
                        "run starts at sequence {} but the previous run ended at {seen}",
                        run.first_seq
                    ),
                );
            }
            if last_global.is_some_and(|g| g >= run.first_global) {
                problem(
                    at.clone(),
                    format!("stream tag {tag} id {id}: sequence order disagrees with global order"),
                );
            }
            seen = run.end_seq();
            last_global = Some(run.end_global() - 1);
            if !self.run_in_log(txn, tag, id, &run)? {
                problem(at, "the run disagrees with the blocks in the log".into());
            }
        }

        // Event ids: each entry points at an event carrying that id.
        // (A read-only open of a store from before event ids has no index.)
        let ids = match &self.ids {
            Some(ids) => Some(ids.iter(txn).map_err(&err)?),
            None => None,
        };
        let mut arena = super::crypt::Plaintexts::default();
        for item in ids.into_iter().flatten() {
            arena.clear();
            let (k, v) = item.map_err(&err)?;
            let at = Location::Record(format!("event id index entry {k:02x?}"));
            let Some((event_id, global)) = <[u8; 16]>::try_from(k)
                .ok()
                .and_then(|id| Some((id, super::keys::decode_id_value(&id, v)?)))
            else {
                problem(at, "malformed entry or checksum mismatch".into());
                continue;
            };
            let found = self.block_containing(txn, &arena, global);
            if let Err(crate::Error::Erased { .. }) = found {
                // Its event cannot be read: nothing to hold the entry against.
                continue;
            }
            let found = found.ok().flatten().and_then(|(_, view)| {
                let index = (global - view.header().first_global) as u32;
                view.entry(index).ok().map(|(meta, _)| meta.event_id)
            });
            if found != Some(Some(event_id)) {
                problem(
                    at,
                    format!("points at global sequence {global}, which does not carry this id"),
                );
            }
        }

        // Entity keys: every key maps to an id that maps back to it, and
        // every reverse entry to a key that maps to it; every value passes its
        // checksum. (A read-only open of a store from before keys has none.)
        let entries = match &self.keys {
            Some(keys) => Some((keys, keys.iter(txn).map_err(&err)?)),
            None => None,
        };
        if let Some((keys, entries)) = entries {
            for item in entries {
                let (k, v) = item.map_err(&err)?;
                let at = Location::Record(format!("entity key entry {k:02x?}"));
                let Some(value) = super::keys::open_sealed(k, v) else {
                    problem(at, "malformed entry or checksum mismatch".into());
                    continue;
                };
                let tag = k.get(1..5).and_then(|t| <[u8; 4]>::try_from(t).ok());
                let (kind, Some(tag)) = (k[0], tag.map(u32::from_be_bytes)) else {
                    problem(at, "a key too short for its kind".into());
                    continue;
                };
                let back = |key: &[u8]| -> Result<Option<Vec<u8>>> {
                    let found = keys.get(txn, key).map_err(&err)?;
                    Ok(found.and_then(|v| super::keys::open_sealed(key, v).map(<[u8]>::to_vec)))
                };
                match kind {
                    b'k' => {
                        let Ok(id) = <[u8; 8]>::try_from(value).map(u64::from_le_bytes) else {
                            problem(at, "a stream id of the wrong length".into());
                            continue;
                        };
                        let reverse = super::keys::entity_reverse_key(tag, id);
                        if back(&reverse)?.as_deref() != Some(&k[5..]) {
                            problem(at, format!("stream id {id} does not map back to this key"));
                        }
                    }
                    b'r' => {
                        let Some(id) = k.get(5..13).and_then(|b| <[u8; 8]>::try_from(b).ok())
                        else {
                            problem(at, "a reverse key of the wrong length".into());
                            continue;
                        };
                        let forward = super::keys::entity_key(tag, value);
                        // Forward values hold the id little-endian.
                        let id = u64::from_be_bytes(id).to_le_bytes();
                        if back(&forward)?.as_deref() != Some(&id[..]) {
                            problem(at, "the key does not map to this stream id".into());
                        }
                    }
                    b'n' => {}
                    _ => problem(at, "an entry of unknown kind".into()),
                }
            }
        }

        report.events = events;
        report.blocks = block_count;
        report.streams = streams;
        self.verify_chain(txn, &mut report)?;
        Ok(report)
    }
}

impl Store {
    /// Whether every event of the block with header `h` is in an index run
    /// of its stream id, at the global sequence it occupies.
    pub(super) fn block_in_index(&self, txn: &Txn<'_>, h: &BlockHeader) -> Result<bool> {
        let err = self.err("verifying the store");
        let end = h.first_stream_seq + u64::from(h.count);
        let mut seq = h.first_stream_seq;
        while seq < end {
            let key = index_key(h.stream_tag, h.stream_id, seq);
            let Some((k, v)) = self
                .index
                .get_lower_than_or_equal_to(txn, &key)
                .map_err(&err)?
            else {
                return Ok(false);
            };
            let Some((tag, id, first)) = parse_index_key(k) else {
                return Ok(false);
            };
            let Some(run) = Run::decode(k, first, v) else {
                return Ok(false);
            };
            let global = h.first_global + (seq - h.first_stream_seq);
            if (tag, id) != (h.stream_tag, h.stream_id)
                || seq >= run.end_seq()
                || run.first_global + (seq - run.first_seq) != global
            {
                return Ok(false);
            }
            seq = run.end_seq().min(end);
        }
        Ok(true)
    }

    /// Whether every event of `run` sits in a block of the same stream id, at
    /// the global sequence the run says.
    fn run_in_log(&self, txn: &Txn<'_>, tag: u32, id: u64, run: &Run) -> Result<bool> {
        let err = self.err("verifying the store");
        let mut seq = run.first_seq;
        while seq < run.end_seq() {
            let global = run.first_global + (seq - run.first_seq);
            let Some((k, v)) = self
                .events
                .get_lower_than_or_equal_to(txn, &event_key(global))
                .map_err(&err)?
            else {
                return Ok(false);
            };
            let Some(block_global) = parse_event_key(k) else {
                return Ok(false);
            };
            let Ok(h) = self.stored_header(block_global, v) else {
                return Ok(false);
            };
            if (h.stream_tag, h.stream_id) != (tag, id)
                || global >= h.end_global()
                || h.first_stream_seq + (global - h.first_global) != seq
            {
                return Ok(false);
            }
            seq = (seq + (h.end_global() - global)).min(run.end_seq());
        }
        Ok(true)
    }
}

/// What `verify` says of a block that does not open: the detail of damage
/// (as before encryption), the whole message of anything else (a block of an
/// encrypted store that does not authenticate).
fn verify_detail(e: crate::Error) -> String {
    match e {
        crate::Error::Corruption { detail, .. } => detail,
        other => other.to_string(),
    }
}
