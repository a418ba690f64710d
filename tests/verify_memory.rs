//! `verify()` runs in memory bounded by the number of streams, not by the
//! number of blocks, ids or index runs: a log of 10⁸ blocks verifies in the
//! same memory as one of 10³.
//!
//! This binary counts every byte the process allocates (a counting global
//! allocator) and compares the peak `verify()` reaches above its starting
//! point on stores of 10³ and 10⁵ blocks. One test only: the counter is
//! process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use varvedb::{Durability, StreamId, Varve, VarveConfig};
use varvedb_suite::Order;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A store of `blocks` single-event appends spread over 1,000 ids (so each
/// append is its own block and its own index run), and the bytes `verify()`
/// allocated at its peak above what was allocated when it started.
fn verify_peak(blocks: u64) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        durability: Durability::NoSync,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    for n in 0..blocks {
        orders
            .append(StreamId(n % 1_000), &Order::numbered(n))
            .unwrap();
    }
    drop(orders);
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let report = varve.verify().unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.blocks, report.runs), (blocks, blocks));
    peak
}

#[test]
fn verify_memory_does_not_grow_with_the_number_of_blocks() {
    let small = verify_peak(1_000);
    let large = verify_peak(100_000);
    // A map of every block (the old design) costs tens of bytes per block:
    // megabytes here. A streaming walk allocates the same few kilobytes.
    assert!(
        large <= small + 16 * 1024,
        "verify allocated {large} bytes at its peak over 100,000 blocks, {small} over 1,000"
    );
}
