//! The one trait every engine in the comparison implements, and the event all
//! workloads write.

use std::path::Path;

use rkyv::{Archive, Serialize};

/// The benchmark event: four u64 and a short string, about 64 bytes archived.
#[derive(Archive, Serialize, Clone, Debug, varvedb::Event)]
#[event(stream = "samples")]
pub struct Sample {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    pub tag: String,
}

impl Sample {
    pub fn new(n: u64) -> Sample {
        Sample {
            a: n,
            b: n.wrapping_mul(31),
            c: n ^ 0x5555,
            d: 1,
            tag: format!("sample-{n:08}"),
        }
    }
}

/// What a workload needs from an engine. Every write is durable (synced at
/// commit); every read validates the archived event before using it.
pub trait Contender: Send + Sync + Sized + 'static {
    /// The name in the report.
    const NAME: &'static str;
    /// Opens (creating) a store in `dir`.
    fn open(dir: &Path) -> Self;
    /// Appends `events` to stream id `id` in one durable transaction.
    fn append_batch(&self, id: u64, events: &[Sample]);
    /// Appends one event to stream id `id` in its own durable transaction.
    fn append_one(&self, id: u64, event: &Sample);
    /// Reads event `(id, seq)` and returns its `a` field.
    fn point_read(&self, id: u64, seq: u64) -> u64;
    /// Sums `b` over every event of stream id `id`.
    fn scan_stream(&self, id: u64) -> u64;
    /// Sums `b` over every event of the log, in global order.
    fn scan_global(&self) -> u64;
    /// [`scan_stream`](Self::scan_stream) written as a user's first code: a
    /// plain `for` loop (VarveDB: over a borrowed snapshot).
    fn scan_stream_loop(&self, id: u64) -> u64 {
        self.scan_stream(id)
    }
    /// [`scan_global`](Self::scan_global) as a plain `for` loop.
    fn scan_global_loop(&self) -> u64 {
        self.scan_global()
    }
    /// Rebuilds an aggregate (the sum of `c`) from stream id `id`.
    fn fold(&self, id: u64) -> u64 {
        self.scan_stream(id)
    }
    /// Bytes used on disk.
    fn disk_bytes(&self) -> u64;
    /// Gets ready, untimed, for `writers` threads appending at once (SQLite:
    /// opens a connection for each).
    fn prepare_writers(&self, _writers: usize) {}
    /// Durable commits and the appends they carried so far, for engines that
    /// share commits between writers (VarveDB's group commit).
    fn commit_stats(&self) -> Option<(u64, u64)> {
        None
    }
}
