//! One task's waker that
//! panics must not cost other tasks their wake-up, nor turn a committed
//! append into a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::Stream;
use varvedb::{GlobalSequence, StreamId, Varve, VarveConfig};
use varvedb_suite::Order;

struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker of some other executor whose `wake` panics (say, it sends on a
/// closed channel and unwraps).
struct Panicking;

impl Wake for Panicking {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

/// `CommitSignal::wake_tasks` drains every registered waker, then wakes
/// them one by one on the appending thread. A panicking waker unwinds out of
/// that loop: the wakers not yet called are dropped unwoken (their tasks
/// stay `Pending` although the event is committed, until some later
/// append), and the appender, whose event is durable, panics instead of
/// getting its position.
#[test]
fn a_panicking_waker_costs_no_other_task_its_wake_up_and_no_append_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let config = VarveConfig {
        cross_process_poll: None,
        ..VarveConfig::default()
    };
    let varve = Varve::with_config(dir.path(), config).unwrap();
    let poll = |sub: &mut varvedb::AsyncSubscription, waker: &Waker| {
        let mut cx = Context::from_waker(waker);
        Pin::new(sub).poll_next(&mut cx)
    };
    let bad_waker = Waker::from(Arc::new(Panicking));
    let mut bad = varve.subscribe(GlobalSequence(0)).into_async();
    assert!(poll(&mut bad, &bad_waker).is_pending());
    let counters: Vec<Arc<Counting>> = (0..16)
        .map(|_| Arc::new(Counting(AtomicUsize::new(0))))
        .collect();
    let mut good: Vec<_> = counters
        .iter()
        .map(|c| {
            let mut sub = varve.subscribe(GlobalSequence(0)).into_async();
            assert!(poll(&mut sub, &Waker::from(Arc::clone(c))).is_pending());
            sub
        })
        .collect();

    let mut orders = varve.stream::<Order, 64>("orders").unwrap();
    let appended = catch_unwind(AssertUnwindSafe(|| {
        orders.append(StreamId(1), &Order::numbered(1))
    }));
    std::thread::sleep(Duration::from_millis(200));
    let committed = varve.verify().unwrap().events;
    let woken = counters
        .iter()
        .filter(|c| c.0.load(Ordering::SeqCst) > 0)
        .count();
    // Every good subscription has an event ready.
    for (sub, c) in good.iter_mut().zip(&counters) {
        assert!(matches!(
            poll(sub, &Waker::from(Arc::clone(c))),
            Poll::Ready(Some(Ok(_)))
        ));
    }
    assert_eq!(committed, 1, "the append was committed");
    eprintln!("{woken} of {} waiting tasks woken", counters.len());
    assert!(
        appended.as_ref().is_ok_and(|r| r.is_ok()),
        "the committed append's caller got {}",
        match &appended {
            Ok(r) => format!("{r:?}"),
            Err(_) => "a panic (from another task's waker)".into(),
        }
    );
    assert_eq!(
        woken,
        counters.len(),
        "only {woken} of {} waiting tasks were woken",
        counters.len()
    );
}
