//! Zero-copy and lazy reads: events are handed out as references into the
//! memory map (no payload copy), and iterating a stream allocates nothing per
//! event, so memory does not grow with the stream's length.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use varvedb::{GlobalSequence, StreamId, StreamSequence};
use varvedb_suite::{temp_store, Order};

/// Counts allocations made by the thread that switched counting on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MEASURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counters
// are atomics and the thread-local is a plain `Cell<bool>` (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && MEASURED.try_with(|m| m.get()).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    MEASURED.with(|m| m.set(true));
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    MEASURED.with(|m| m.set(false));
    (
        r,
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    )
}

#[test]
fn iterating_allocates_the_same_whatever_the_stream_length() {
    if varvedb_suite::skip_when_encrypted(
        "an encrypted store opens each block into a buffer: its reads are not zero-copy by design",
    ) {
        return;
    }
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    for chunk in 0..20u64 {
        let batch: Vec<Order> = (chunk * 1000..(chunk + 1) * 1000)
            .map(Order::numbered)
            .collect();
        orders.append_batch(StreamId(1), &batch).unwrap();
        orders.append_batch(StreamId(2), &batch[..50]).unwrap();
    }
    for n in 0..500 {
        orders.append(StreamId(1), &Order::numbered(n)).unwrap();
    }
    let mut reader = orders.reader();
    let scan = |reader: &mut varvedb::StreamReader<Order>, id| {
        reader
            .iter_stream(StreamId(id), None)
            .unwrap()
            .map(|e| u64::from(e.unwrap().quantity.to_native()))
            .sum::<u64>()
    };
    let (_, short_allocs, _) = measure(|| scan(&mut reader, 2));
    let (_, long_allocs, long_bytes) = measure(|| scan(&mut reader, 1));
    assert!(
        long_allocs <= short_allocs + 2,
        "{long_allocs} allocations for 20,500 events vs {short_allocs} for 1,000"
    );
    assert!(
        long_bytes < 64 * 1024,
        "{long_bytes} bytes allocated scanning 20,500 events"
    );

    let (_, fold_allocs, _) = measure(|| {
        reader
            .iter_stream(StreamId(1), None)
            .unwrap()
            .try_fold_archived(0u64, |sum, _, order| sum + order.id.to_native())
            .unwrap()
    });
    assert!(fold_allocs <= short_allocs, "{fold_allocs}");

    let log = varve.global_reader();
    let (count, global_allocs, _) = measure(|| log.iter_from(GlobalSequence(0)).unwrap().count());
    assert_eq!(count, 21_500);
    assert!(
        global_allocs < 16,
        "{global_allocs} allocations walking the global log"
    );
}

#[test]
fn archived_events_point_into_the_map_without_copying() {
    if varvedb_suite::skip_when_encrypted(
        "an encrypted store opens each block into a buffer: its reads are not zero-copy by design",
    ) {
        return;
    }
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    orders
        .append_batch(
            StreamId(1),
            &(0..100).map(Order::numbered).collect::<Vec<_>>(),
        )
        .unwrap();
    let mut reader = orders.reader();
    let a = reader
        .get_archived(StreamId(1), StreamSequence(42))
        .unwrap()
        .unwrap();
    let (b, allocations, _) = measure(|| {
        reader
            .get_archived(StreamId(1), StreamSequence(42))
            .unwrap()
            .unwrap()
    });
    assert_eq!(
        allocations, 0,
        "a point read in a current snapshot allocates nothing"
    );
    assert_eq!(
        a.bytes().as_ptr(),
        b.bytes().as_ptr(),
        "two reads of one event share the mapped bytes"
    );
    assert_eq!(&*a as *const _, &*b as *const _);
    assert_eq!(
        a.bytes().as_ptr() as usize % 8,
        0,
        "payloads are 8-byte aligned in the map"
    );
    let raw = reader
        .get_bytes(StreamId(1), StreamSequence(42))
        .unwrap()
        .unwrap();
    assert_eq!(raw.as_ptr(), a.bytes().as_ptr());
    let iterated = reader
        .iter_stream(StreamId(1), Some(StreamSequence(42)))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(iterated.bytes().as_ptr(), a.bytes().as_ptr());
    let global = varve
        .global_reader()
        .get(GlobalSequence(42))
        .unwrap()
        .unwrap();
    assert_eq!(global.payload().as_ptr(), a.bytes().as_ptr());
}

#[test]
fn sixteen_byte_aligned_types_read_back_correctly() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Wide {
        a: u128,
        tag: u8,
    }
    let (_dir, varve) = temp_store();
    let mut wide = varve.stream::<Wide, 64>("wide").unwrap();
    let mut plain = varve.stream::<Order, 64>("plain").unwrap();
    for i in 0..200u64 {
        // Mixed sizes move records around within pages.
        plain
            .append(
                StreamId(i),
                &Order {
                    id: i,
                    quantity: 0,
                    note: "x".repeat((i % 37) as usize),
                },
            )
            .unwrap();
        wide.append(
            StreamId(1),
            &Wide {
                a: u128::from(i) << 70,
                tag: i as u8,
            },
        )
        .unwrap();
    }
    let reader = wide.reader();
    let sum = reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .try_fold_archived(0u128, |s, _, w| s + w.a.to_native())
        .unwrap();
    assert_eq!(sum, (0..200u128).map(|i| i << 70).sum::<u128>());
    for (i, e) in reader.iter_stream(StreamId(1), None).unwrap().enumerate() {
        let e = e.unwrap();
        assert_eq!((e.a.to_native(), e.tag), ((i as u128) << 70, i as u8));
    }
}
