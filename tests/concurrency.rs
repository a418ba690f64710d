//! Many handles on many threads: sequences stay dense and ordered, no raw LMDB
//! error escapes, and readers running meanwhile see consistent snapshots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use varvedb::{ExpectedVersion, GlobalSequence, StreamId, StreamSequence};
use varvedb_suite::{temp_store, Order};

#[test]
fn writers_on_many_threads_and_handles_keep_every_sequence_dense() {
    let (_dir, varve) = temp_store();
    let threads = 8u64;
    let per_thread = 60u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                // Half the threads share a stream name, every thread shares id 0.
                let name = if t % 2 == 0 { "orders" } else { "other" };
                let mut stream = varve.stream::<Order, 128>(name).unwrap();
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    let id = if i % 2 == 0 {
                        StreamId(0)
                    } else {
                        StreamId(t + 1)
                    };
                    if i % 10 == 9 {
                        let batch = vec![Order::numbered(t * 1000 + i); 3];
                        mine.extend(
                            stream
                                .append_batch(id, &batch)
                                .unwrap()
                                .into_iter()
                                .map(|p| (name, id, p)),
                        );
                    } else {
                        mine.push((
                            name,
                            id,
                            stream.append(id, &Order::numbered(t * 1000 + i)).unwrap(),
                        ));
                    }
                }
                mine
            })
        })
        .collect();
    let all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();

    let mut globals: Vec<u64> = all.iter().map(|(_, _, (_, g))| g.0).collect();
    globals.sort_unstable();
    assert_eq!(
        globals,
        (0..all.len() as u64).collect::<Vec<_>>(),
        "global sequence dense"
    );

    let mut per_stream: HashMap<(&str, StreamId), Vec<(u64, u64)>> = HashMap::new();
    for (name, id, (s, g)) in &all {
        per_stream.entry((name, *id)).or_default().push((s.0, g.0));
    }
    for ((name, id), mut positions) in per_stream {
        positions.sort_unstable();
        let seqs: Vec<u64> = positions.iter().map(|p| p.0).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "{name}/{id:?} dense"
        );
        assert!(
            positions.windows(2).all(|w| w[0].1 < w[1].1),
            "{name}/{id:?} in commit order"
        );
    }

    // The global log agrees with what every writer was told.
    let mut log = varve.global_reader();
    assert_eq!(log.end().unwrap(), GlobalSequence(all.len() as u64));
    for (name, id, (s, g)) in &all {
        let e = log.get(*g).unwrap().unwrap();
        assert_eq!(
            (e.stream_name(), e.stream_id(), e.stream_sequence()),
            (*name, *id, *s)
        );
    }
}

#[test]
fn readers_never_see_half_a_batch_or_a_gap_while_a_writer_appends() {
    let (_dir, varve) = temp_store();
    let mut writer = varve.stream::<Order, 128>("orders").unwrap();
    let reader = writer.reader();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let reader = reader.clone();
            let log = varve.global_reader();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !done.load(Ordering::Relaxed) || checks == 0 {
                    let seqs: Vec<u64> = reader
                        .iter_stream(StreamId(1), None)
                        .unwrap()
                        .map(|e| e.unwrap().stream_sequence().0)
                        .collect();
                    // Batches are 5 events: a snapshot holds whole batches only.
                    assert_eq!(seqs.len() % 5, 0, "half a batch visible");
                    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
                    let globals: Vec<u64> = log
                        .iter_from(GlobalSequence(0))
                        .unwrap()
                        .map(|e| e.unwrap().global_sequence().0)
                        .collect();
                    assert_eq!(globals, (0..globals.len() as u64).collect::<Vec<_>>());
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for i in 0..200u64 {
        let batch: Vec<Order> = (0..5).map(|j| Order::numbered(i * 5 + j)).collect();
        writer.append_batch(StreamId(1), &batch).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

#[test]
fn an_iterator_sees_one_snapshot_even_as_appends_continue() {
    let (_dir, varve) = temp_store();
    let mut writer = varve.stream::<Order, 128>("orders").unwrap();
    writer
        .append_batch(
            StreamId(1),
            &(0..10).map(Order::numbered).collect::<Vec<_>>(),
        )
        .unwrap();
    let reader = writer.reader();
    let mut iter = reader.iter_stream(StreamId(1), None).unwrap();
    let first = iter.next().unwrap().unwrap();
    for n in 10..20 {
        writer.append(StreamId(1), &Order::numbered(n)).unwrap();
    }
    assert_eq!(first.id.to_native(), 0);
    assert_eq!(
        iter.count(),
        9,
        "the iterator keeps the snapshot it started with"
    );
    assert_eq!(reader.iter_stream(StreamId(1), None).unwrap().count(), 20);
}

#[test]
fn exactly_one_writer_wins_each_expected_version() {
    let (_dir, varve) = temp_store();
    let threads = 6;
    let rounds = 30u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                let mut stream = varve.stream::<Order, 128>("contested").unwrap();
                let mut wins = Vec::new();
                for round in 0..rounds {
                    let expected = match round {
                        0 => ExpectedVersion::NoStream,
                        r => ExpectedVersion::Exact(StreamSequence(r - 1)),
                    };
                    // Keep trying this round until somebody (maybe us) has won it.
                    loop {
                        match stream.append_expected(StreamId(1), &Order::numbered(t), expected) {
                            Ok((s, _)) => {
                                wins.push(s.0);
                                break;
                            }
                            Err(varvedb::Error::VersionConflict { actual, .. }) => {
                                if actual.is_some_and(|a| a.0 >= round) {
                                    break;
                                }
                            }
                            Err(other) => panic!("unexpected error: {other}"),
                        }
                    }
                }
                wins
            })
        })
        .collect();
    let mut wins: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    wins.sort_unstable();
    assert_eq!(
        wins,
        (0..rounds).collect::<Vec<_>>(),
        "each version won exactly once"
    );
}

#[test]
fn concurrent_appends_share_commits_and_each_is_acknowledged_after_its_own() {
    let (_dir, varve) = temp_store();
    varve.stream::<Order, 128>("orders").unwrap();
    let before = varve.last_commit_id();
    let threads = 8u64;
    let per_thread = 40u64;
    let acks: Vec<(u64, GlobalSequence)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let varve = varve.clone();
                s.spawn(move || {
                    let mut stream = varve.stream::<Order, 128>("orders").unwrap();
                    let mut reader = stream.reader();
                    (0..per_thread)
                        .map(|i| {
                            let (seq, global) =
                                stream.append(StreamId(t), &Order::numbered(i)).unwrap();
                            // Acknowledged means committed: visible to a fresh read at once.
                            let read = reader
                                .get_archived(StreamId(t), seq)
                                .unwrap()
                                .expect("acknowledged event is visible");
                            assert_eq!(read.id, i);
                            (t, global)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let appends = threads * per_thread;
    assert_eq!(acks.len() as u64, appends);
    let commits = varve.last_commit_id() - before;
    assert!(
        commits < appends,
        "{appends} concurrent appends took {commits} commits: nothing was grouped"
    );
    // The counters agree with LMDB's own count of commits.
    let stats = varve.commit_stats();
    assert_eq!(
        (stats.commits, stats.appends, stats.events),
        (commits, appends, appends)
    );
    assert!(stats.appends_per_commit() > 1.0, "{stats:?}");
    let mut globals: Vec<u64> = acks.iter().map(|(_, g)| g.0).collect();
    globals.sort_unstable();
    assert_eq!(globals, (0..appends).collect::<Vec<_>>());
}

#[test]
fn racing_batches_with_exact_expected_versions_each_land_whole_exactly_once() {
    let (_dir, varve) = temp_store();
    let threads = 4u64;
    let rounds = 25u64;
    let batch = 3u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let varve = varve.clone();
            std::thread::spawn(move || {
                let mut stream = varve.stream::<Order, 128>("contested").unwrap();
                let mut wins = Vec::new();
                for round in 0..rounds {
                    let expected = match round {
                        0 => ExpectedVersion::NoStream,
                        r => ExpectedVersion::Exact(StreamSequence(r * batch - 1)),
                    };
                    // Each event says who wrote it, in which round, at which index.
                    let events: Vec<Order> = (0..batch)
                        .map(|i| Order {
                            id: t,
                            quantity: (round * batch + i) as u32,
                            note: format!("{t}/{round}/{i}"),
                        })
                        .collect();
                    loop {
                        match stream.append_batch_expected(StreamId(1), &events, expected) {
                            Ok(positions) => {
                                wins.push(round);
                                assert_eq!(positions[0].0, StreamSequence(round * batch));
                                break;
                            }
                            Err(varvedb::Error::VersionConflict { actual, .. }) => {
                                if actual.is_some_and(|a| a.0 >= round * batch) {
                                    break;
                                }
                            }
                            Err(other) => panic!("unexpected error: {other}"),
                        }
                    }
                }
                (t, wins)
            })
        })
        .collect();
    let mut winner_of = HashMap::new();
    for h in handles {
        let (t, wins) = h.join().unwrap();
        for round in wins {
            assert!(
                winner_of.insert(round, t).is_none(),
                "round {round} won twice"
            );
        }
    }
    assert_eq!(winner_of.len() as u64, rounds, "every round won");
    // The stream is the winners' batches, whole and in round order.
    let reader = varve.stream::<Order, 128>("contested").unwrap().reader();
    let events: Vec<(u64, u32)> = reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.id.to_native(), e.quantity.to_native())
        })
        .collect();
    assert_eq!(events.len() as u64, rounds * batch);
    for (seq, (writer, quantity)) in events.iter().enumerate() {
        let round = seq as u64 / batch;
        assert_eq!(
            (*writer, u64::from(*quantity)),
            (winner_of[&round], seq as u64)
        );
    }
}

#[test]
fn events_once_read_never_change_or_vanish_while_writers_append_and_the_map_grows() {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let config = varvedb::VarveConfig {
        map_size: 128 * 1024,
        resize_wait: std::time::Duration::from_millis(300),
        ..varvedb::VarveConfig::default()
    };
    let varve = varvedb::Varve::with_config(dir.path(), config).unwrap();
    let writers = 3u64;
    let batches = 40u64;
    // Every event names its batch and its place in it: `note` = "writer/batch/index/count".
    let done = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    type Acked = Vec<(u64, StreamSequence, GlobalSequence, Order)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let writer_threads: Vec<_> = (0..writers)
        .map(|w| {
            let (varve, appended, acked) =
                (varve.clone(), Arc::clone(&appended), Arc::clone(&acked));
            std::thread::spawn(move || {
                let mut stream = varve.stream::<Order, 128>("orders").unwrap();
                for b in 0..batches {
                    let count = 1 + (w + b) % 5;
                    let events: Vec<Order> = (0..count)
                        .map(|i| Order {
                            id: w,
                            quantity: i as u32,
                            // Big enough that the map grows several times.
                            note: format!("{w}/{b}/{i}/{count}/{}", "x".repeat(1_500)),
                        })
                        .collect();
                    let id = StreamId(b % 2);
                    // A reader holding an event while it opens another snapshot
                    // can keep the map from growing: the append then fails
                    // whole, and is simply tried again.
                    let positions = loop {
                        match stream.append_batch(id, &events) {
                            Err(varvedb::Error::MapResizeBlocked { .. }) => continue,
                            other => break other.unwrap(),
                        }
                    };
                    let mut acked = acked.lock().unwrap();
                    for ((seq, global), e) in positions.into_iter().zip(events) {
                        acked.push((id.0, seq, global, e));
                    }
                    appended.fetch_add(count, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let reader_threads: Vec<_> = (0..2)
        .map(|r| {
            let (varve, done) = (varve.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let log = varve.global_reader();
                let mut reader = varve.stream::<Order, 128>("orders").unwrap().reader();
                let mut seen: HashMap<u64, String> = HashMap::new();
                let mut rounds = 0u64;
                while !done.load(Ordering::Relaxed) || rounds == 0 {
                    // The whole log: dense, batches whole, earlier reads unchanged.
                    let mut open: Option<(String, u64, u64)> = None;
                    let mut n = 0u64;
                    for e in log.iter_from(GlobalSequence(0)).unwrap() {
                        let e = e.unwrap();
                        assert_eq!(e.global_sequence().0, n);
                        let order = e.archived_plain::<Order>().unwrap();
                        let note = order.note.as_str();
                        let parts: Vec<&str> = note.splitn(5, '/').collect();
                        let (batch, index, count) = (
                            format!("{}/{}", parts[0], parts[1]),
                            parts[2].parse::<u64>().unwrap(),
                            parts[3].parse::<u64>().unwrap(),
                        );
                        match &open {
                            Some((b, i, c)) if *i + 1 < *c => {
                                assert_eq!((b, i + 1), (&batch, index), "a batch interleaved");
                            }
                            _ => assert_eq!(index, 0, "a batch starts in its middle"),
                        }
                        open = Some((batch, index, count));
                        if let Some(before) = seen.insert(n, note.to_string()) {
                            assert_eq!(before, note, "global {n} changed");
                        }
                        n += 1;
                    }
                    if let Some((_, i, c)) = open {
                        assert_eq!(i + 1, c, "half a batch visible");
                    }
                    assert!(n >= seen.len() as u64, "events vanished");
                    // Point reads at every position, every other round holding one
                    // event across them (growth must wait for it, not move it).
                    let held = match rounds % 2 {
                        0 => reader
                            .get_archived(StreamId(r % 2), StreamSequence(0))
                            .unwrap(),
                        _ => None,
                    };
                    for seq in 0.. {
                        match reader
                            .get_archived(StreamId(r % 2), StreamSequence(seq))
                            .unwrap()
                        {
                            Some(e) => assert_eq!(e.stream_sequence().0, seq),
                            None => break,
                        }
                    }
                    if let Some(e) = held {
                        assert_eq!(e.stream_sequence().0, 0);
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    for w in writer_threads {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in reader_threads {
        assert!(r.join().unwrap() > 0);
    }
    // Every acknowledged event reads back where it was acknowledged, and
    // nothing else is in the log: failed appends left nothing.
    let acked = acked.lock().unwrap();
    assert_eq!(acked.len() as u64, appended.load(Ordering::Relaxed));
    assert_eq!(varve.global_reader().end().unwrap().0, acked.len() as u64);
    let mut reader = varve.stream::<Order, 128>("orders").unwrap().reader();
    for (id, seq, global, order) in acked.iter() {
        let e = reader.get_archived(StreamId(*id), *seq).unwrap().unwrap();
        assert_eq!(
            (e.global_sequence(), e.note.as_str()),
            (*global, order.note.as_str())
        );
    }
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
