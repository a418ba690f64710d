//! The write path: one block, one index update, one commit.
//!
//! Sequence numbers are assigned inside the write transaction from what the
//! transaction itself reads (the last block of the log, the last run of the
//! stream id), so a failed or aborted append consumes no number and two
//! writers (threads, handles or processes) can never be handed the same one.

use std::time::{SystemTime, UNIX_EPOCH};

use heed::{MdbError, PutFlags};

use super::block::{BlockBuilder, BlockHeader};
use super::keys::{event_key, index_key, Run};
use super::{Store, StreamInfo};
use crate::error::{Error, Result};
use crate::position::{ExpectedVersion, StreamId, StreamSequence};

enum Attempt {
    MapFull,
    MapResized,
    Fail(Error),
}

impl Store {
    /// Appends the events in `block` (already serialized) to `(info, id)` in one
    /// durable transaction. Returns the first stream and global sequences.
    pub(crate) fn append(
        &self,
        info: &StreamInfo,
        id: u64,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<(u64, u64)> {
        let _writer = self.writer.lock();
        loop {
            let guard = self.gate.enter();
            let attempt = self.try_append(info, id, expected, block);
            drop(guard);
            match attempt {
                Ok(positions) => return Ok(positions),
                Err(Attempt::MapFull) => self.grow()?,
                Err(Attempt::MapResized) => self.remap(0)?,
                Err(Attempt::Fail(e)) => return Err(e),
            }
        }
    }

    fn try_append(
        &self,
        info: &StreamInfo,
        id: u64,
        expected: ExpectedVersion,
        block: &mut BlockBuilder,
    ) -> Result<(u64, u64), Attempt> {
        let classify = |operation: &'static str| {
            let err = self.err(operation);
            move |e: heed::Error| match e {
                heed::Error::Mdb(MdbError::MapFull) => Attempt::MapFull,
                heed::Error::Mdb(MdbError::MapResized) => Attempt::MapResized,
                other => Attempt::Fail(err(other)),
            }
        };
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(classify("starting a write transaction"))?;

        let head = self.last_run(&wtxn, info.tag, id).map_err(Attempt::Fail)?;
        let actual = head.map(|r| StreamSequence(r.end_seq() - 1));
        if !expected.matches(actual) {
            return Err(Attempt::Fail(Error::VersionConflict {
                stream: info.name.to_string(),
                id: StreamId(id),
                expected,
                actual,
            }));
        }
        let first_seq = head.map_or(0, |r| r.end_seq());
        let first_global = self.end_global(&wtxn).map_err(Attempt::Fail)?;
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
        self.events
            .put_with_flags(&mut wtxn, PutFlags::APPEND, &event_key(first_global), bytes)
            .map_err(classify("appending to the event log"))?;

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
        self.index
            .put(
                &mut wtxn,
                &index_key(info.tag, id, run.first_seq),
                &run.encode(),
            )
            .map_err(classify("updating the stream index"))?;

        wtxn.commit().map_err(classify("committing an append"))?;
        Ok((first_seq, first_global))
    }
}
