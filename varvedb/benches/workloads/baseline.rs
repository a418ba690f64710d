//! The raw-LMDB baseline: what a careful program written directly against heed
//! does with the naive layout. A global log keyed by big-endian u64 written with
//! `MDB_APPEND`, plus one `(stream id, sequence) -> global sequence` index entry
//! per event. Reads validate with rkyv in place when the value happens to be
//! aligned, on an aligned copy otherwise, as VarveDB does.

use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, PutFlags, WithoutTls};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::contender::{ArchivedSample, Contender, Sample};

pub struct RawHeed {
    env: Env<WithoutTls>,
    events: Database<'static, U64<BigEndian>, Bytes>,
    index: Database<'static, Bytes, U64<BigEndian>>,
}

fn index_key(id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Validates `bytes` as a `Sample` and applies `f` to it.
pub fn with_sample<R>(bytes: &[u8], f: impl FnOnce(&ArchivedSample) -> R) -> R {
    match rkyv::access::<ArchivedSample, rancor::Error>(bytes) {
        Ok(s) => f(s),
        Err(_) => {
            let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
            copy.extend_from_slice(bytes);
            f(rkyv::access::<ArchivedSample, rancor::Error>(&copy).expect("valid sample"))
        }
    }
}

impl RawHeed {
    fn next_seq(&self, txn: &heed::RoTxn, id: u64) -> u64 {
        match self
            .index
            .get_lower_than_or_equal_to(txn, &index_key(id, u64::MAX))
            .expect("index")
        {
            Some((k, _)) if k[..8] == id.to_be_bytes() => {
                u64::from_be_bytes(k[8..16].try_into().expect("16-byte key")) + 1
            }
            _ => 0,
        }
    }
}

impl RawHeed {
    /// Sums `field` over stream id `id`: the index in key order, one log
    /// lookup per event.
    fn sum_stream(&self, id: u64, field: impl Fn(&ArchivedSample) -> u64) -> u64 {
        let rtxn = self.env.read_txn().expect("rtxn");
        let mut sum = 0u64;
        for entry in self
            .index
            .prefix_iter(&rtxn, &id.to_be_bytes())
            .expect("prefix")
        {
            let (_, global) = entry.expect("entry");
            let bytes = self
                .events
                .get(&rtxn, &global)
                .expect("get")
                .expect("present");
            sum = sum.wrapping_add(with_sample(bytes, &field));
        }
        sum
    }
}

impl Contender for RawHeed {
    const NAME: &'static str = "raw heed";

    fn open(dir: &Path) -> Self {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(64 << 30).max_dbs(2);
        // SAFETY: the benchmark owns `dir` and opens it once.
        let env = unsafe { options.open(dir) }.expect("open heed");
        let wtxn = env.write_txn().expect("wtxn");
        let (events, index) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let events = opener
                    .database_options()
                    .types()
                    .name("events")
                    .create(wtxn)?;
                let index = opener
                    .database_options()
                    .types()
                    .name("index")
                    .create(wtxn)?;
                Ok(CommitOrAbort::<_, ()>::Commit((events, index)))
            })
            .expect("create databases")
            .unwrap_commit();
        RawHeed { env, events, index }
    }

    fn append_batch(&self, id: u64, events: &[Sample]) {
        let mut wtxn = self.env.write_txn().expect("wtxn");
        let first_global = self
            .events
            .last(&wtxn)
            .expect("last")
            .map_or(0, |(k, _)| k + 1);
        let first_seq = self.next_seq(&wtxn, id);
        for (i, event) in (0u64..).zip(events) {
            let bytes = rkyv::to_bytes::<rancor::Error>(event).expect("serialize");
            let global = first_global + i;
            self.events
                .put_with_flags(&mut wtxn, PutFlags::APPEND, &global, &bytes)
                .expect("put event");
            self.index
                .put(&mut wtxn, &index_key(id, first_seq + i), &global)
                .expect("put index");
        }
        wtxn.commit().expect("commit");
    }

    fn append_one(&self, id: u64, event: &Sample) {
        self.append_batch(id, std::slice::from_ref(event));
    }

    fn point_read(&self, id: u64, seq: u64) -> u64 {
        let rtxn = self.env.read_txn().expect("rtxn");
        let global = self
            .index
            .get(&rtxn, &index_key(id, seq))
            .expect("index")
            .expect("present");
        let bytes = self
            .events
            .get(&rtxn, &global)
            .expect("get")
            .expect("present");
        with_sample(bytes, |s| s.a.to_native())
    }

    fn scan_stream(&self, id: u64) -> u64 {
        self.sum_stream(id, |s| s.b.to_native())
    }

    fn scan_global(&self) -> u64 {
        let rtxn = self.env.read_txn().expect("rtxn");
        let mut sum = 0u64;
        for entry in self.events.iter(&rtxn).expect("iter") {
            let (_, bytes) = entry.expect("entry");
            sum = sum.wrapping_add(with_sample(bytes, |s| s.b.to_native()));
        }
        sum
    }

    fn fold(&self, id: u64) -> u64 {
        self.sum_stream(id, |s| s.c.to_native())
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(self.env.path().join("data.mdb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}
