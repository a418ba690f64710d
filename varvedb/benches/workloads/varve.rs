//! The VarveDB adapter.

use std::path::Path;
use std::sync::Mutex;

use varvedb::{GlobalSequence, Stream, StreamId, StreamReader, StreamSequence, Varve, VarveConfig};

use crate::contender::{Contender, Sample};

thread_local! {
    static READER: std::cell::RefCell<Option<(usize, StreamReader<Sample>)>> = const { std::cell::RefCell::new(None) };
}

pub struct VarveDb {
    varve: Varve,
    stream: Mutex<Stream<Sample, 128>>,
    reader: StreamReader<Sample>,
    id: usize,
}

impl VarveDb {
    /// Opens (creating) a store in `dir` with `config`.
    pub fn open_with(dir: &Path, config: VarveConfig) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let varve = Varve::with_config(dir, config).expect("open varvedb");
        let stream = varve.stream::<Sample, 128>("samples").expect("open stream");
        let reader = stream.reader();
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        VarveDb {
            varve,
            stream: Mutex::new(stream),
            reader,
            id,
        }
    }

    /// A per-thread reader, so concurrent workloads don't share one.
    fn with_reader<R>(&self, f: impl FnOnce(&mut StreamReader<Sample>) -> R) -> R {
        READER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                *slot = Some((self.id, self.reader.clone()));
            }
            f(&mut slot.as_mut().expect("just set").1)
        })
    }
}

impl VarveDb {
    /// The store, for workloads beyond the [`Contender`] trait (commands).
    pub fn varve(&self) -> &Varve {
        &self.varve
    }
}

impl Contender for VarveDb {
    const NAME: &'static str = "varvedb";

    fn open(dir: &Path) -> Self {
        VarveDb::open_with(dir, VarveConfig::default())
    }

    fn append_batch(&self, id: u64, events: &[Sample]) {
        self.stream
            .lock()
            .unwrap()
            .append_batch(StreamId(id), events)
            .expect("append batch");
    }

    fn append_one(&self, id: u64, event: &Sample) {
        // A handle per call: concurrent callers must not serialize on our mutex.
        let mut stream = self
            .varve
            .stream::<Sample, 128>("samples")
            .expect("open stream");
        stream.append(StreamId(id), event).expect("append");
    }

    fn point_read(&self, id: u64, seq: u64) -> u64 {
        self.with_reader(|r| {
            r.get_archived(StreamId(id), StreamSequence(seq))
                .expect("read")
                .expect("present")
                .a
                .to_native()
        })
    }

    fn scan_stream(&self, id: u64) -> u64 {
        self.with_reader(|r| {
            r.iter_stream(StreamId(id), None)
                .expect("iterate")
                .try_fold_archived(0u64, |sum, _, e| sum.wrapping_add(e.b.to_native()))
                .expect("scan")
        })
    }

    fn scan_global(&self) -> u64 {
        let log = self.varve.global_reader();
        log.iter_from(GlobalSequence(0))
            .expect("iterate")
            .try_fold_entries(0u64, |sum, event| {
                Ok(sum.wrapping_add(event.archived_plain::<Sample>()?.b.to_native()))
            })
            .expect("scan")
    }

    fn scan_stream_loop(&self, id: u64) -> u64 {
        self.with_reader(|r| {
            let snap = r.snapshot().expect("snapshot");
            let mut sum = 0u64;
            for sample in snap.iter_stream(StreamId(id), None).expect("iterate") {
                sum = sum.wrapping_add(sample.expect("scan").b.to_native());
            }
            sum
        })
    }

    fn scan_global_loop(&self) -> u64 {
        let snap = self.varve.snapshot().expect("snapshot");
        let mut sum = 0u64;
        for event in snap.iter_from(GlobalSequence(0)).expect("iterate") {
            let event = event.expect("scan");
            sum = sum.wrapping_add(
                event
                    .archived_plain::<Sample>()
                    .expect("type")
                    .b
                    .to_native(),
            );
        }
        sum
    }

    fn fold(&self, id: u64) -> u64 {
        self.with_reader(|r| {
            r.iter_stream(StreamId(id), None)
                .expect("iterate")
                .try_fold_archived(0u64, |sum, _, e| sum.wrapping_add(e.c.to_native()))
                .expect("fold")
        })
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(self.varve.path().join("data.mdb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn commit_stats(&self) -> Option<(u64, u64)> {
        let stats = self.varve.commit_stats();
        Some((stats.commits, stats.appends))
    }
}
