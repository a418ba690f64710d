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
            let mut reader = reader.clone();
            let mut log = varve.global_reader();
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
    let mut reader = writer.reader();
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
