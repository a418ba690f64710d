//! Programs written against the published varvedb 0.4.2 compile unchanged and
//! behave as 0.4.2 documented: its README program, its append, read and
//! iteration calls with their closure shapes, its owned global events, its
//! watcher; and a 0.4 store on disk is refused untouched, never mistaken for
//! an empty one. What could not be kept is in `docs/migrating-from-0.4.md`.
//!
//! Written the way 0.4.2's README and tests use the crate (`let mut varve`,
//! readers bound without `mut`, `.0` on positions), hence the `allow`s.
#![allow(unused_mut, clippy::needless_range_loop)]

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use rkyv::{Archive, Deserialize, Serialize};
use tempfile::tempdir;
use varvedb::{
    Error, ExpectedVersion, GlobalIterator, GlobalSequence, HighSerializer, LowSerializer,
    OwnedGlobalEvent, StreamId, StreamIterator, StreamKey, StreamSequence, Varve, VarveConfig,
};

// ---------------------------------------------------------------------------
// 0.4.2's README, "Basic Usage", unchanged but for `main`'s name.
// ---------------------------------------------------------------------------

// Define your event schema
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
#[rkyv(derive(Debug))]
struct OrderPlaced {
    order_id: u64,
    product: String,
    quantity: u32,
    amount: u64,
}

fn readme_main() -> Result<(), Box<dyn std::error::Error>> {
    // Initialize the database
    let dir = tempdir()?;
    let mut varve = Varve::new(dir.path())?;

    // Create a typed stream
    // Stream names organize related events (e.g., "orders", "users")
    // The buffer size (1024) should be larger than your largest event
    let mut stream = varve.stream::<OrderPlaced, 1024>("orders")?;

    // Append an event
    // Events are grouped by StreamId (e.g., a specific order, user, etc.)
    let event = OrderPlaced {
        order_id: 12345,
        product: "Laptop".to_string(),
        quantity: 1,
        amount: 99900, // cents
    };

    let (stream_seq, global_seq) = stream.append(StreamId(1), &event)?;
    println!(
        "✓ Appended event at stream sequence {}, global sequence {}",
        stream_seq.0, global_seq.0
    );

    // Read it back (zero-copy)
    let mut reader = stream.reader();

    if let Some(archived_event) = reader.get_archived(StreamId(1), stream_seq)? {
        // 'archived_event' is a reference directly into the memory-mapped file
        println!(
            "✓ Read event: Order #{}, Product: {}",
            archived_event.order_id, archived_event.product
        );
    }

    // Batch append for high throughput
    let more_events: Vec<OrderPlaced> = (0..100)
        .map(|i| OrderPlaced {
            order_id: 12346 + i,
            product: format!("Product-{}", i),
            quantity: 1,
            amount: 1000 * (i + 1),
        })
        .collect();

    let results = stream.append_batch(StreamId(2), &more_events)?;
    println!("✓ Batch appended {} events", results.len());

    // Iterate over a stream
    let iter = reader.iter_stream(StreamId(2), None)?;
    let events = iter.collect_bytes()?;
    println!("✓ Stream contains {} events", events.len());

    // Not in the README: what it printed, checked.
    assert_eq!((stream_seq.0, global_seq.0), (0, 0));
    assert_eq!(events.len(), 100);
    assert_eq!(events[99].0, StreamSequence(99));
    let last = rkyv::access::<ArchivedOrderPlaced, rkyv::rancor::Error>(&events[99].1)?;
    assert_eq!(
        (last.order_id.to_native(), last.amount.to_native()),
        (12445, 100_000)
    );
    assert_eq!(varve.next_global_seq(), GlobalSequence(101));
    Ok(())
}

#[test]
fn the_0_4_2_readme_program_runs_unchanged() {
    readme_main().expect("the README's program succeeds");
}

// ---------------------------------------------------------------------------
// 0.4.2's API, call by call.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
#[rkyv(attr(derive(Debug)))]
struct SimpleEvent {
    id: u64,
    timestamp: u64,
    value: i32,
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
#[rkyv(attr(derive(Debug)))]
struct UserEvent {
    user_id: String,
    email: String,
}

fn simple(i: u64) -> SimpleEvent {
    SimpleEvent {
        id: i,
        timestamp: 1_702_400_000 + i,
        value: (i * 10) as i32,
    }
}

fn user(i: u64) -> UserEvent {
    UserEvent {
        user_id: format!("usr_{i:03}"),
        email: format!("user{i}@example.com"),
    }
}

#[test]
fn the_readme_api_overview_compiles_with_a_config_built_as_in_0_4() {
    let dir = tempdir().unwrap();
    let config = VarveConfig {
        map_size: 10 * 1024 * 1024,
        ..Default::default()
    };
    let mut varve = Varve::with_config(dir.path(), config).unwrap();
    let mut stream = varve.stream::<SimpleEvent, 1024>("stream_name").unwrap();
    let (seq, global_seq) = stream.append(StreamId(1), &simple(0)).unwrap();
    let events = vec![simple(1), simple(2)];
    let results = stream.append_batch(StreamId(1), &events).unwrap();
    let mut reader = stream.reader();
    let archived = reader.get_archived(StreamId(1), seq).unwrap();
    let bytes = reader.get_bytes(StreamId(1), seq).unwrap();
    let iter = reader.iter_stream(StreamId(1), None).unwrap();

    let mut global_reader = varve.global_reader();
    let event = global_reader.get(GlobalSequence(0)).unwrap();
    let giter = global_reader.iter_from(GlobalSequence(0)).unwrap();

    assert_eq!((seq.0, global_seq.0, results.len()), (0, 0, 2));
    assert_eq!(archived.expect("written").value, 0);
    assert_eq!(
        bytes.expect("written").len(),
        std::mem::size_of::<ArchivedSimpleEvent>()
    );
    assert_eq!(iter.collect_bytes().unwrap().len(), 3);
    assert_eq!(event.expect("written").stream_name(), "stream_name");
    assert_eq!(giter.collect_all().unwrap().len(), 3);
}

#[test]
fn append_alloc_and_stream_get_bytes_keep_positions_dense_across_names() {
    let dir = tempdir().unwrap();
    let mut varve = Varve::new(dir.path()).unwrap();
    let mut users = varve.stream::<UserEvent, 4096>("users").unwrap();
    let mut events = varve.stream::<SimpleEvent, 1024>("events").unwrap();

    assert_eq!(
        users.append_alloc(StreamId(1), &user(1)).unwrap(),
        (StreamSequence(0), GlobalSequence(0))
    );
    assert_eq!(
        events.append(StreamId(1), &simple(1)).unwrap(),
        (StreamSequence(0), GlobalSequence(1))
    );
    let batch: Vec<UserEvent> = (2..6).map(user).collect();
    let positions = users.append_batch_alloc(StreamId(1), &batch).unwrap();
    assert_eq!(
        positions,
        (0..4)
            .map(|i| (StreamSequence(1 + i), GlobalSequence(2 + i)))
            .collect::<Vec<_>>()
    );
    // An empty batch writes nothing, as in 0.4.
    assert!(users
        .append_batch_alloc(StreamId(1), &[])
        .unwrap()
        .is_empty());

    for i in 0..5u64 {
        let bytes: Vec<u8> = users
            .get_bytes(StreamId(1), StreamSequence(i))
            .expect("Failed to get bytes")
            .expect("Event not found");
        let archived =
            rkyv::access::<rkyv::Archived<UserEvent>, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(archived.user_id.as_str(), format!("usr_{:03}", i + 1));
    }
    assert_eq!(
        users.get_bytes(StreamId(1), StreamSequence(5)).unwrap(),
        None
    );
    assert_eq!(
        users.get_bytes(StreamId(2), StreamSequence(0)).unwrap(),
        None
    );
    // A stream that was never written reads as empty, whatever handle asks.
    let never = varve.stream::<SimpleEvent, 64>("never").unwrap();
    assert_eq!(
        never.get_bytes(StreamId(1), StreamSequence(0)).unwrap(),
        None
    );

    // `get_archived_unchecked` still validates: same answers as `get_archived`.
    let mut reader = events.reader();
    // SAFETY: varvedb validates the bytes whatever the method's name says.
    let unchecked = unsafe { reader.get_archived_unchecked(StreamId(1), StreamSequence(0)) };
    assert_eq!(unchecked.unwrap().expect("written").id, 1);
}

#[test]
fn next_global_seq_counts_committed_events_only_and_survives_reopen() {
    let dir = tempdir().unwrap();
    {
        let mut varve = Varve::new(dir.path()).unwrap();
        assert_eq!(varve.next_global_seq(), GlobalSequence(0));
        let mut stream = varve.stream::<SimpleEvent, 1024>("events").unwrap();
        assert_eq!(stream.next_global_seq(), GlobalSequence(0));
        stream.append(StreamId(1), &simple(0)).unwrap();
        stream.append(StreamId(1), &simple(1)).unwrap();
        assert_eq!(varve.next_global_seq(), GlobalSequence(2));

        // A refused append consumes no number: 0.4.2 reserved one before
        // committing and left a gap; here the next append gets 2.
        let refused = stream.append_expected(StreamId(1), &simple(9), ExpectedVersion::NoStream);
        assert!(matches!(refused, Err(Error::VersionConflict { .. })));
        assert_eq!(stream.next_global_seq(), GlobalSequence(2));
        // Another handle's commit moves every handle's answer.
        let mut other = varve.stream::<UserEvent, 256>("users").unwrap();
        other.append_alloc(StreamId(3), &user(3)).unwrap();
        assert_eq!(stream.next_global_seq(), GlobalSequence(3));
    }
    let mut varve = Varve::new(dir.path()).expect("Failed to reopen Varve");
    assert_eq!(varve.next_global_seq().0, 3);
    let mut stream = varve.stream::<SimpleEvent, 1024>("events").unwrap();
    assert_eq!(
        stream.append(StreamId(1), &simple(2)).unwrap(),
        (StreamSequence(2), GlobalSequence(3))
    );
    let reader = stream.reader();
    let iter = reader.iter_stream(StreamId(1), None).unwrap();
    assert_eq!(iter.collect_bytes().unwrap().len(), 3);
}

/// Two streams interleaved, one id written in several commits (so several
/// blocks and index runs), another id in between.
fn interleaved(varve: &Varve) -> (Vec<SimpleEvent>, Vec<UserEvent>) {
    let mut events = varve.stream::<SimpleEvent, 1024>("events").unwrap();
    let mut users = varve.stream::<UserEvent, 4096>("users").unwrap();
    let mut written = Vec::new();
    let mut joined = Vec::new();
    for round in 0..4u64 {
        let batch: Vec<SimpleEvent> = (0..=round).map(|k| simple(round * 10 + k)).collect();
        events.append_batch(StreamId(7), &batch).unwrap();
        written.extend(batch);
        events.append(StreamId(8), &simple(999)).unwrap();
        users.append_alloc(StreamId(7), &user(round)).unwrap();
        joined.push(user(round));
    }
    (written, joined)
}

#[test]
fn collect_all_returns_owned_events_with_the_0_4_fields_in_global_order() {
    let dir = tempdir().unwrap();
    let mut varve = Varve::new(dir.path()).unwrap();
    let (written, joined) = interleaved(&varve);

    let reader = varve.global_reader();
    let iter = reader
        .iter_from(GlobalSequence(0))
        .expect("Failed to create iterator");
    let events = iter.collect_all().expect("Failed to collect events");
    assert_eq!(events.len(), written.len() + 4 + joined.len());

    let (mut next_simple, mut next_user, mut next_other) = (0, 0, 0);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.global_seq.0, i as u64);
        match (event.stream_name.as_str(), event.stream_id) {
            ("events", StreamId(7)) => {
                assert_eq!(event.stream_seq.0, next_simple as u64);
                let archived =
                    rkyv::access::<ArchivedSimpleEvent, rkyv::rancor::Error>(&event.payload)
                        .unwrap();
                assert_eq!(archived.id, written[next_simple].id);
                next_simple += 1;
            }
            ("events", StreamId(8)) => {
                assert_eq!(event.stream_seq.0, next_other);
                next_other += 1;
            }
            ("users", StreamId(7)) => {
                assert_eq!(event.stream_seq.0, next_user as u64);
                let archived =
                    rkyv::access::<ArchivedUserEvent, rkyv::rancor::Error>(&event.payload).unwrap();
                assert_eq!(archived.email.as_str(), joined[next_user].email);
                next_user += 1;
            }
            other => panic!("unexpected event of {other:?}"),
        }
    }
    assert_eq!((next_simple, next_user, next_other), (written.len(), 4, 4));

    // The same events through the zero-copy reader, converted.
    let mut log = varve.global_reader();
    for event in &events {
        let zero_copy = log.get(event.global_seq).unwrap().expect("in the log");
        assert_eq!(&zero_copy.to_owned_event(), event);
        assert_eq!(OwnedGlobalEvent::from(&zero_copy), *event);
        assert_eq!(
            &*log
                .get_bytes(event.global_seq)
                .unwrap()
                .expect("in the log"),
            &event.payload[..]
        );
    }
    assert!(log
        .get_bytes(GlobalSequence(events.len() as u64))
        .unwrap()
        .is_none());

    // From the middle, and after the iterator's own `next` moved into a block.
    let tail = reader
        .iter_from(GlobalSequence(5))
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(tail, events[5..]);
    let mut iter = reader.iter_from(GlobalSequence(0)).unwrap();
    for _ in 0..8 {
        iter.next().expect("an event").expect("readable");
    }
    assert_eq!(iter.collect_all().unwrap(), events[8..]);
    assert!(reader
        .iter_from(GlobalSequence(1_000))
        .unwrap()
        .collect_all()
        .unwrap()
        .is_empty());
}

#[test]
fn global_for_each_takes_0_4s_closure_and_sees_what_collect_all_sees() {
    let dir = tempdir().unwrap();
    let mut varve = Varve::new(dir.path()).unwrap();
    interleaved(&varve);
    let reader = varve.global_reader();
    let all = reader
        .iter_from(GlobalSequence(3))
        .unwrap()
        .collect_all()
        .unwrap();

    let mut seen = Vec::new();
    reader
        .iter_from(GlobalSequence(3))
        .unwrap()
        .for_each(|event| seen.push(event))
        .unwrap();
    assert_eq!(seen, all);

    fn count(iter: GlobalIterator<'_>) -> usize {
        let mut n = 0;
        iter.for_each(|_| n += 1).unwrap();
        n
    }
    assert_eq!(
        count(reader.iter_from(GlobalSequence(0)).unwrap()),
        all.len() + 3
    );
}

#[test]
fn stream_for_each_and_collect_bytes_pair_each_payload_with_its_sequence() {
    let dir = tempdir().unwrap();
    let mut varve = Varve::new(dir.path()).unwrap();
    let (written, _) = interleaved(&varve);
    let stream = varve.stream::<SimpleEvent, 1024>("events").unwrap();
    let reader = stream.reader();

    for from in [
        None,
        Some(StreamSequence(0)),
        Some(StreamSequence(2)),
        Some(StreamSequence(9)),
        Some(StreamSequence(10)),
        Some(StreamSequence(50)),
    ] {
        let start = from.map_or(0, |s| s.0 as usize).min(written.len());
        let events = reader
            .iter_stream(StreamId(7), from)
            .unwrap()
            .collect_bytes()
            .unwrap();
        assert_eq!(events.len(), written.len() - start, "from {from:?}");
        for (i, (seq, bytes)) in events.iter().enumerate() {
            assert_eq!(seq.0, (start + i) as u64);
            let archived = rkyv::access::<ArchivedSimpleEvent, rkyv::rancor::Error>(bytes).unwrap();
            assert_eq!(archived.id, written[start + i].id);
        }

        let mut seen = Vec::new();
        reader
            .iter_stream(StreamId(7), from)
            .unwrap()
            .for_each(|seq, bytes| seen.push((seq, bytes.to_vec())))
            .unwrap();
        assert_eq!(seen, events, "for_each from {from:?}");
    }

    fn sequences(iter: StreamIterator<'_, SimpleEvent>) -> Vec<u64> {
        let mut out = Vec::new();
        iter.for_each(|seq, _| out.push(seq.0)).unwrap();
        out
    }
    assert_eq!(
        sequences(reader.iter_stream(StreamId(8), None).unwrap()),
        [0, 1, 2, 3]
    );
    assert!(sequences(reader.iter_stream(StreamId(9), None).unwrap()).is_empty());

    // After the iterator's own `next`, both continue where it stopped.
    let mut iter = reader.iter_stream(StreamId(7), None).unwrap();
    iter.next().unwrap().unwrap();
    iter.next().unwrap().unwrap();
    assert_eq!(iter.collect_bytes().unwrap()[0].0, StreamSequence(2));
    let mut iter = reader.iter_stream(StreamId(7), None).unwrap();
    iter.next().unwrap().unwrap();
    assert_eq!(sequences(iter)[0], 1);
}

#[test]
fn the_0_4_scans_report_damage_instead_of_skipping_it() {
    if varvedb_suite::skip_when_encrypted("damages plaintext blocks at known bytes") {
        return;
    }
    let dir = tempdir().unwrap();
    let mut varve = Varve::new(dir.path()).unwrap();
    let mut users = varve.stream::<UserEvent, 4096>("users").unwrap();
    for i in 0..6 {
        users.append_alloc(StreamId(1), &user(i)).unwrap();
    }
    drop(users);
    drop(varve);
    // One payload of the six, in every copy LMDB left in the file.
    varvedb_suite::flip_in_data_file(dir.path(), b"user3@example.com", 0);

    let mut varve = Varve::new(dir.path()).unwrap();
    let reader = varve.global_reader();
    assert!(matches!(
        reader.iter_from(GlobalSequence(0)).unwrap().collect_all(),
        Err(Error::Corruption { .. })
    ));
    let mut seen = Vec::new();
    let scan = reader
        .iter_from(GlobalSequence(0))
        .unwrap()
        .for_each(|e| seen.push(e.global_seq.0));
    assert!(matches!(scan, Err(Error::Corruption { .. })));
    assert_eq!(
        seen,
        [0, 1, 2],
        "the events before the damage, then the error"
    );
    // Past the damage, the log reads on.
    assert_eq!(
        reader
            .iter_from(GlobalSequence(4))
            .unwrap()
            .collect_all()
            .unwrap()
            .len(),
        2
    );

    let stream = varve.stream::<UserEvent, 4096>("users").unwrap();
    assert!(matches!(
        stream.get_bytes(StreamId(1), StreamSequence(3)),
        Err(Error::Corruption { .. })
    ));
    let reader = stream.reader();
    assert!(reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .collect_bytes()
        .is_err());
    let mut seen = Vec::new();
    let scan = reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .for_each(|seq, _| seen.push(seq.0));
    assert!(matches!(scan, Err(Error::Corruption { .. })));
    assert_eq!(seen, [0, 1, 2]);
}

#[test]
fn a_stream_bound_to_another_type_fails_the_0_4_scans() {
    let dir = tempdir().unwrap();
    let mut varve = Varve::new(dir.path()).unwrap();
    // Opened for one type before the stream exists, created for another.
    let stale = varve.stream::<SimpleEvent, 64>("shared").unwrap();
    varve
        .stream::<UserEvent, 256>("shared")
        .unwrap()
        .append_alloc(StreamId(1), &user(1))
        .unwrap();
    let reader = stale.reader();
    // Refused when the scan starts (as `iter_stream`) or at its first item.
    assert!(matches!(
        reader
            .iter_stream(StreamId(1), None)
            .and_then(|iter| iter.collect_bytes()),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        reader
            .iter_stream(StreamId(1), None)
            .and_then(|iter| iter.for_each(|_, _| ())),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        stale.get_bytes(StreamId(1), StreamSequence(0)),
        Err(Error::TypeMismatch { .. })
    ));
}

#[test]
fn positions_keys_and_serializers_keep_their_0_4_shapes() {
    assert_eq!(StreamId::from(5u64), StreamId(5));
    assert_eq!(u64::from(StreamSequence(6)), 6);
    assert_eq!(GlobalSequence::from(7u64).0, 7);
    let key = StreamKey::new(StreamId(1), StreamSequence(2));
    assert_eq!(
        (key.stream_id, key.stream_seq),
        (StreamId(1), StreamSequence(2))
    );
    assert_eq!(StreamKey::from_bytes(&key.to_bytes()), Some(key));
    // Big-endian: keys sort as (id, sequence) pairs, across the byte boundary too.
    let keys = [(0, 0), (0, 255), (0, 256), (1, 0), (u64::MAX, u64::MAX)]
        .map(|(id, seq)| StreamKey::new(StreamId(id), StreamSequence(seq)).to_bytes());
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(StreamKey::prefix(StreamId(3)).stream_seq, StreamSequence(0));

    fn low<T: for<'a> rkyv::Serialize<LowSerializer<'a>>>(_: &T) {}
    fn high<T: for<'a> rkyv::Serialize<HighSerializer<'a>>>(_: &T) {}
    low(&simple(1));
    high(&user(1));
}

// ---------------------------------------------------------------------------
// The watcher (0.4.2's `notify` feature, enabled in this suite's manifest).
// ---------------------------------------------------------------------------

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls on this thread, parks until woken.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
            return v;
        }
        std::thread::park();
    }
}

/// Polls `future` once.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    std::pin::Pin::new(future).poll(&mut Context::from_waker(&waker))
}

#[test]
fn the_watcher_wakes_a_waiting_task_on_each_commit_of_the_process() {
    let dir = tempdir().unwrap();
    let config = VarveConfig {
        cross_process_poll: None,
        ..VarveConfig::default()
    };
    let mut varve = Varve::with_config(dir.path(), config).unwrap();
    let watcher = varve.watcher();
    let mut stream = varve.stream::<SimpleEvent, 64>("events").unwrap();
    let reader_watcher = stream.reader().watcher();
    assert_eq!(watcher.committed_next_global_seq(), GlobalSequence(0));

    // Not ready while nothing is committed past `from`.
    let mut waiting = Box::pin(watcher.wait_for_global_seq(GlobalSequence(0)));
    assert!(poll_once(&mut waiting).is_pending());
    let writer = std::thread::spawn(move || {
        for i in 0..3 {
            stream.append(StreamId(1), &simple(i)).unwrap();
        }
        stream
    });
    let end = block_on(waiting);
    assert!(
        end >= GlobalSequence(1),
        "woken with the new end, got {end:?}"
    );
    let stream = writer.join().unwrap();
    drop(stream);
    assert_eq!(
        reader_watcher.committed_next_global_seq(),
        GlobalSequence(3)
    );
    // Past `from` already: at once, with the exact end.
    assert_eq!(
        block_on(watcher.wait_for_global_seq(GlobalSequence(2))),
        GlobalSequence(3)
    );
    let global_watcher = varve.global_reader().watcher();
    let mut waiting = Box::pin(global_watcher.wait_for_global_seq(GlobalSequence(3)));
    assert!(poll_once(&mut waiting).is_pending());
    drop(waiting); // dropping a waiting future deregisters it
}

// ---------------------------------------------------------------------------
// Another process, and a store of 0.4.
// ---------------------------------------------------------------------------

const CHILD: &str = "VARVEDB_COMPAT_CHILD";

/// Run by `next_global_seq_and_the_watcher_see_another_processes_commits`
/// in a child process: appends three events to the store named in `CHILD`.
#[test]
#[ignore = "a child process of another test"]
fn a_child_process_appends_three_events() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let varve = Varve::new(dir).unwrap();
    let mut stream = varve.stream::<SimpleEvent, 64>("events").unwrap();
    stream
        .append_batch(StreamId(2), &[simple(1), simple(2), simple(3)])
        .unwrap();
}

fn run_child(dir: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "a_child_process_appends_three_events",
            "--test-threads=1",
        ])
        .env(CHILD, dir)
        .status()
        .unwrap();
    assert!(status.success(), "the child appended");
}

#[test]
fn next_global_seq_and_the_watcher_see_another_processes_commits() {
    let dir = tempdir().unwrap();
    // No cross-process polling: nothing in this process would otherwise
    // notice the child's commit.
    let config = VarveConfig {
        cross_process_poll: None,
        ..VarveConfig::default()
    };
    let mut varve = Varve::with_config(dir.path(), config).unwrap();
    let mut stream = varve.stream::<SimpleEvent, 64>("events").unwrap();
    stream.append(StreamId(1), &simple(0)).unwrap();
    let watcher = varve.watcher();
    assert_eq!(varve.next_global_seq(), GlobalSequence(1));

    run_child(dir.path());

    assert_eq!(stream.next_global_seq(), GlobalSequence(4));
    assert_eq!(varve.next_global_seq(), GlobalSequence(4));
    assert_eq!(
        block_on(watcher.wait_for_global_seq(GlobalSequence(1))),
        GlobalSequence(4)
    );
    assert_eq!(
        stream.append(StreamId(1), &simple(5)).unwrap().1,
        GlobalSequence(4)
    );
}

/// Opens `dir` with raw LMDB, creates the named databases `names` in one
/// transaction and writes `records` (`(database index, key, value)`).
fn write_raw(dir: &Path, names: &[&str], records: &[(usize, Vec<u8>, Vec<u8>)]) {
    use heed::types::Bytes;
    // SAFETY: the test owns the directory and no varvedb handle is open on it.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .max_dbs(64)
            .map_size(1 << 30)
            .open(dir)
    }
    .unwrap();
    let mut dbs = Vec::new();
    for name in names {
        let wtxn = env.write_txn().unwrap();
        let db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                let db = opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .name(name)
                    .create(wtxn)?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
            })
            .unwrap()
            .unwrap_commit();
        dbs.push(db);
    }
    let mut wtxn = env.write_txn().unwrap();
    for (db, key, value) in records {
        dbs[*db].put(&mut wtxn, key, value).unwrap();
    }
    wtxn.commit().unwrap();
    drop(dbs);
    env.prepare_for_closing().wait();
}

/// Writes a store the way varvedb 0.4 laid it out: a `global_events`
/// database of records (name length, name, id and sequence big-endian, then
/// the payload) and per-stream `stream:<name>:index` / `:meta` databases.
fn write_0_4_store(dir: &Path) {
    let mut record = vec![6u8];
    record.extend_from_slice(b"orders");
    record.extend_from_slice(&1u64.to_be_bytes());
    record.extend_from_slice(&0u64.to_be_bytes());
    record.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut key = 1u64.to_be_bytes().to_vec();
    key.extend_from_slice(&0u64.to_be_bytes());
    write_raw(
        dir,
        &["global_events", "stream:orders:index", "stream:orders:meta"],
        &[
            (0, 0u64.to_be_bytes().to_vec(), record),
            (1, key, 0u64.to_be_bytes().to_vec()),
            (2, 1u64.to_be_bytes().to_vec(), 1u64.to_be_bytes().to_vec()),
        ],
    );
}

/// The names of the named databases in `dir`'s data file.
fn database_names(dir: &Path) -> Vec<String> {
    use heed::types::{Bytes, Str};
    // SAFETY: the test owns the directory and no varvedb handle is open on it.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .max_dbs(64)
            .map_size(1 << 30)
            .open(dir)
    }
    .unwrap();
    let rtxn = env.read_txn().unwrap();
    let main = env
        .open_databases_and_commit(rtxn, |opener, rtxn| -> heed::Result<_> {
            let db = opener.open_database::<Str, Bytes>(rtxn, None)?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit()
        .expect("the main database exists");
    let rtxn = env.read_txn().unwrap();
    let names = main
        .iter(&rtxn)
        .unwrap()
        .map(|e| e.unwrap().0.to_owned())
        .collect();
    drop(rtxn);
    env.prepare_for_closing().wait();
    names
}

#[test]
fn a_0_4_store_is_refused_untouched_never_opened_as_an_empty_store() {
    let dir = tempdir().unwrap();
    write_0_4_store(dir.path());
    let before = std::fs::read(dir.path().join("data.mdb")).unwrap();

    for _ in 0..2 {
        match Varve::new(dir.path()) {
            Err(Error::LegacyStore { path }) => {
                assert_eq!(path, dir.path().canonicalize().unwrap())
            }
            other => panic!("expected LegacyStore, got {other:?}"),
        }
    }
    let message = Varve::new(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("varvedb 0.4") && message.contains("varvedb import"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("data.mdb")).unwrap(),
        before,
        "nothing written"
    );
    assert!(!dir.path().join("varvedb.id").exists());
    assert_eq!(
        database_names(dir.path()),
        ["global_events", "stream:orders:index", "stream:orders:meta"]
    );

    // A store of this version that happens to hold a database of that name
    // is not one of 0.4's: its `meta` says so.
    let ours = tempdir().unwrap();
    drop(Varve::new(ours.path()).unwrap());
    write_raw(ours.path(), &["global_events"], &[]);
    Varve::new(ours.path()).expect("a store of this format opens");
}
