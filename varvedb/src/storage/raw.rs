//! Whole blocks and catalog records as bytes, for backups, exports and
//! restores (`crate::backup`): a gated copy of the environment, a walk over
//! the log's blocks and the catalog, and the write side that appends such
//! blocks to another store of the same id.
//!
//! Nothing here interprets a block beyond its header and its events' ids (a
//! restore records them in the `ids` index): a block is copied byte for
//! byte, so a restored store holds the very bytes the source held.

use std::fs::File;
use std::io::Seek;
use std::ops::{Bound, ControlFlow};

use heed::{CompactionOption, MdbError, PutFlags};

use super::keys::{event_key, index_key, parse_event_key, Run};
use super::snapshot::corrupt_at;
use super::{Remap, Store, View, WriteTxn};
use crate::error::{Error, Location, Result};
use crate::position::GlobalSequence;

impl Store {
    /// Writes a compacted copy of the newest commit to `file` (LMDB's
    /// `mdb_env_copyfd2` with `MDB_CP_COMPACT`, which reads in one read
    /// transaction: writers, in this process and others, go on meanwhile).
    ///
    /// The copy reads through the memory map, so it runs holding a gate
    /// guard, like a snapshot: this process cannot remap under it. A writer
    /// of this process that must grow the map waits for the copy (up to
    /// `resize_wait`, then `MapResizeBlocked`).
    pub(crate) fn copy_compacted(&self, file: &mut File) -> Result<()> {
        let env = self.env("a file backup")?;
        loop {
            let guard = self.gate.enter();
            let copied = env.copy_to_file(file, CompactionOption::Enabled);
            drop(guard);
            match copied {
                // Another process grew the map: adopt its size, start again.
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    self.remap(Remap::Adopt)?;
                    let io = |source| Error::Open {
                        path: self.path.clone(),
                        source,
                    };
                    file.set_len(0).map_err(io)?;
                    file.rewind().map_err(io)?;
                }
                other => return other.map_err(self.err("copying the store")),
            }
        }
    }
}

impl View {
    /// The first global sequence of the block holding `global`, or `None`
    /// when the log ends at or before `global`.
    pub(crate) fn block_start(&self, global: u64) -> Result<Option<u64>> {
        Ok(self
            .store
            .block_containing(&self.pin.txn, &self.pin.plain, global)?
            .map(|(key, _)| key))
    }

    /// Calls `f(first global, end global, block bytes)` for each block whose
    /// key is at least `from`, in log order, until `f` breaks. Each block's
    /// header is checked (checksum, key binding) before `f` sees it.
    pub(crate) fn for_each_block(
        &self,
        from: u64,
        mut f: impl FnMut(u64, u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let err = self.store.err("reading the event log");
        let start = event_key(from);
        let range = (Bound::Included(&start[..]), Bound::Unbounded);
        let iter = self
            .store
            .events
            .range(&self.pin.txn, &range)
            .map_err(&err)?;
        for entry in iter {
            let (k, v) = entry.map_err(&err)?;
            let key = parse_event_key(k).ok_or_else(|| Error::Corruption {
                location: Location::Record("an event-log key".into()),
                detail: format!("malformed key of {} bytes", k.len()),
            })?;
            let end = self.store.stored_header(key, v)?.end_global();
            if f(key, end, v)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f(key, value)` for every record of the catalog, in key order.
    pub(crate) fn for_each_catalog_record(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let err = self.store.err("reading the catalog");
        for entry in self.store.catalog.iter(&self.pin.txn).map_err(&err)? {
            let (k, v) = entry.map_err(&err)?;
            f(k, v)?;
        }
        Ok(())
    }
}

impl WriteTxn<'_> {
    /// Writes a catalog record copied from a store of the same id (a newer
    /// record of the same key replaces the older one, as the source did).
    pub(crate) fn import_catalog_record(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let put = self.store.catalog.put(&mut self.txn, key, value);
        self.lmdb("restoring the catalog", put)
    }

    /// Appends a block copied byte for byte from a store of the same id:
    /// it must continue this log at its end and its stream id at its next
    /// sequence, exactly as the source appended it; the index run is
    /// extended or started as an append would, and the block's event ids
    /// (if it carries them) are recorded in the `ids` index. Entity keys are
    /// not in blocks, so they cannot be restored from one (see
    /// `docs/operations.md`).
    ///
    /// `chain` is the source's `chain` value of the block when a migration
    /// re-sealed it (its digest covers the block as first written); the
    /// block is chained like an append otherwise.
    pub(crate) fn import_block(
        &mut self,
        key: u64,
        bytes: &[u8],
        chain: Option<&[u8]>,
    ) -> Result<()> {
        self.import_block_with(key, bytes, chain, None)
    }

    /// [`WriteTxn::import_block`] of `bytes`, the block `source` (as a
    /// store of the same id stores it) sealed anew under this store's keys
    /// (a re-keying restore): chained as `source` was, then re-sealed with a
    /// re-seal record, so the chain digests stay the source's.
    pub(crate) fn import_block_with(
        &mut self,
        key: u64,
        bytes: &[u8],
        chain: Option<&[u8]>,
        source: Option<&[u8]>,
    ) -> Result<()> {
        let store = self.store;
        // An encrypted store's block must open under this store's keys (a
        // restore keeps the source's id and keys).
        let mut plain = super::crypt::PlainBuf::default();
        let (header, view) = match store.open_stored(key, bytes, &mut plain) {
            Ok(view) => (*view.header(), Some(view)),
            // An erased entity's block is restored as it is (its header is
            // in the clear); its event ids cannot be read, so they are not
            // indexed.
            Err(Error::Erased { .. }) => (store.stored_header(key, bytes)?, None),
            Err(e) => return Err(e),
        };
        let end = match self.end_global {
            Some(g) => g,
            None => store.end_global(&self.txn)?,
        };
        if key != end {
            return Err(Error::Corruption {
                location: Location::Global(GlobalSequence(key)),
                detail: format!("a restored block must continue the log at {end}"),
            });
        }
        let (tag, id) = (header.stream_tag, header.stream_id);
        let head = store.last_run(&self.txn, tag, id)?;
        let next_seq = head.map_or(0, |r| r.end_seq());
        if header.first_stream_seq != next_seq {
            return Err(Error::Corruption {
                location: Location::Global(GlobalSequence(key)),
                detail: format!(
                    "a restored block of stream tag {tag} id {id} starts at sequence {}, \
                     the stream continues at {next_seq}",
                    header.first_stream_seq
                ),
            });
        }
        let put = store.events.append(&mut self.txn, &event_key(key), bytes);
        self.lmdb("restoring the event log", put)?;
        match source {
            None => self.chain_append(key, bytes, chain)?,
            Some(source) => {
                self.chain_append(key, source, chain)?;
                self.chain_reseal(key, &super::chain::leaf(source), bytes)?;
            }
        }
        let count = u64::from(header.count);
        let run = match head {
            Some(r) if r.end_global() == key => Run {
                count: r.count + count,
                ..r
            },
            _ => Run {
                first_seq: next_seq,
                first_global: key,
                count,
            },
        };
        let index = index_key(tag, id, run.first_seq);
        let put = store.index.put(&mut self.txn, &index, &run.encode(&index));
        self.lmdb("restoring the stream index", put)?;
        // The idempotency index: each event id the block carries, pointing
        // at its event, as the source's append recorded it.
        if let Some(view) = view.filter(|_| header.meta_flags & super::block::META_EVENT_ID != 0) {
            for i in 0..header.count {
                let global = key + u64::from(i);
                let (meta, _) = view.entry(i).map_err(corrupt_at(global))?;
                let Some(event_id) = meta.event_id else {
                    continue;
                };
                let put = store.ids_db()?.put_with_flags(
                    &mut self.txn,
                    PutFlags::NO_OVERWRITE,
                    &event_id,
                    &super::keys::id_value(&event_id, global),
                );
                match put {
                    Err(heed::Error::Mdb(MdbError::KeyExist)) => {
                        return Err(Error::Corruption {
                            location: Location::Global(GlobalSequence(global)),
                            detail: format!(
                                "a restored event carries id {}, which an earlier event has",
                                crate::id::EventId(event_id)
                            ),
                        })
                    }
                    put => self.lmdb("restoring event ids", put)?,
                }
            }
        }
        self.end_global = Some(header.end_global());
        Ok(())
    }
}

/// What LMDB says about the environment, read inside the gate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvStats {
    pub(crate) map_size: usize,
    pub(crate) last_txn: usize,
    pub(crate) readers_used: u32,
    pub(crate) max_readers: u32,
}

impl Store {
    /// The map size, last commit and reader slots in use (`mdb_env_info`,
    /// which reads the meta pages through the map: inside the gate).
    pub(crate) fn env_stats(&self) -> Result<EnvStats> {
        let env = self.env("reading the memory map's statistics")?;
        let _inside = self.gate.enter();
        let info = env.info();
        Ok(EnvStats {
            map_size: info.map_size,
            last_txn: info.last_txn_id,
            readers_used: info.number_of_readers,
            max_readers: info.maximum_number_of_readers,
        })
    }

    /// Frees the reader slots of dead processes (writes `lock.mdb` only);
    /// returns how many.
    pub(crate) fn clear_dead_readers(&self) -> Result<usize> {
        self.clear_stale_readers()
    }
}

impl View {
    /// Calls `f(tag, stream)` for each stream of the catalog, in tag order.
    pub(crate) fn for_each_stream(
        &mut self,
        mut f: impl FnMut(u32, &super::StreamInfo) -> Result<()>,
    ) -> Result<()> {
        let mut tags = Vec::new();
        self.for_each_catalog_record(|k, _| {
            if let [b't', a, b, c, d] = *k {
                tags.push(u32::from_be_bytes([a, b, c, d]));
            }
            Ok(())
        })?;
        for tag in tags {
            let info = self.stream_by_tag(tag)?;
            f(tag, &info)?;
        }
        Ok(())
    }

    /// Calls `f(id, events)` for each stream id of the stream `tag`, in id
    /// order, with its event count (its runs are contiguous from 0).
    pub(crate) fn for_each_id(
        &self,
        tag: u32,
        mut f: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let err = self.store.err("reading the stream index");
        let prefix = tag.to_be_bytes();
        let iter = self
            .store
            .index
            .prefix_iter(&self.pin.txn, &prefix)
            .map_err(&err)?;
        let mut current: Option<(u64, u64)> = None;
        for entry in iter {
            let (k, v) = entry.map_err(&err)?;
            let (_, id, seq) =
                super::keys::parse_index_key(k).ok_or_else(|| Error::Corruption {
                    location: Location::Record("a stream-index key".into()),
                    detail: format!("malformed key of {} bytes", k.len()),
                })?;
            let run = Run::decode(k, seq, v).ok_or_else(|| Error::Corruption {
                location: Location::Record(format!("the index run of tag {tag} id {id} at {seq}")),
                detail: "the run fails its checksum".into(),
            })?;
            match current {
                Some((cur, _)) if cur == id => current = Some((id, run.end_seq())),
                Some((cur, n)) => {
                    f(cur, n)?;
                    current = Some((id, run.end_seq()));
                }
                None => current = Some((id, run.end_seq())),
            }
        }
        if let Some((id, n)) = current {
            f(id, n)?;
        }
        Ok(())
    }
}
