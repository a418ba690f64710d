//! Sequences: stream sequences start at 0 per (stream, id) and are dense; global
//! sequences start at 0, are dense and follow commit order; batches are atomic;
//! a failed append consumes no number; reopening continues both.

use rkyv::{rancor, Archive, Serialize};
use varvedb::{Error, ExpectedVersion, GlobalSequence, StreamId, StreamSequence, Varve};
use varvedb_suite::{temp_store, Order};

#[test]
fn stream_sequences_start_at_zero_per_stream_and_id_and_are_dense() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    let mut returns = varve.stream::<Order, 128>("returns").unwrap();
    let mut seen = Vec::new();
    for n in 0..5 {
        seen.push(orders.append(StreamId(1), &Order::numbered(n)).unwrap());
        seen.push(orders.append(StreamId(2), &Order::numbered(n)).unwrap());
        seen.push(returns.append(StreamId(1), &Order::numbered(n)).unwrap());
    }
    for (i, round) in seen.chunks(3).enumerate() {
        for (seq, _) in round {
            assert_eq!(seq.0, i as u64);
        }
    }
    let globals: Vec<u64> = seen.iter().map(|(_, g)| g.0).collect();
    assert_eq!(globals, (0..15).collect::<Vec<_>>());
}

#[test]
fn a_batch_gets_consecutive_positions_and_reads_back_in_order() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    orders.append(StreamId(9), &Order::numbered(0)).unwrap();
    let batch: Vec<Order> = (1..=50).map(Order::numbered).collect();
    let positions = orders.append_batch(StreamId(9), &batch).unwrap();
    let expected: Vec<(u64, u64)> = (1..=50).map(|i| (i, i)).collect();
    let got: Vec<(u64, u64)> = positions.iter().map(|(s, g)| (s.0, g.0)).collect();
    assert_eq!(got, expected);

    let reader = orders.reader();
    let ids: Vec<u64> = reader
        .iter_stream(StreamId(9), None)
        .unwrap()
        .map(|e| e.unwrap().id.to_native())
        .collect();
    assert_eq!(ids, (0..=50).collect::<Vec<_>>());
    assert!(orders.append_batch(StreamId(9), &[]).unwrap().is_empty());
}

#[test]
fn reopening_a_store_continues_both_sequences() {
    let dir = tempfile::tempdir().unwrap();
    {
        let varve = Varve::new(dir.path()).unwrap();
        let mut orders = varve.stream::<Order, 128>("orders").unwrap();
        orders
            .append_batch(StreamId(1), &[Order::numbered(1), Order::numbered(2)])
            .unwrap();
    }
    let varve = Varve::new(dir.path()).unwrap();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    assert_eq!(
        orders.append(StreamId(1), &Order::numbered(3)).unwrap(),
        (StreamSequence(2), GlobalSequence(2))
    );
    assert_eq!(
        orders.append(StreamId(2), &Order::numbered(4)).unwrap(),
        (StreamSequence(0), GlobalSequence(3))
    );
}

/// Serializes fine unless `explode` is set, then fails inside rkyv.
#[derive(Debug)]
struct Bomb {
    explode: bool,
}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

impl Archive for Bomb {
    type Archived = ();
    type Resolver = ();
    fn resolve(&self, _: (), _: rkyv::Place<()>) {}
}

impl<S: rancor::Fallible + ?Sized> Serialize<S> for Bomb
where
    S::Error: rancor::Source,
{
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        if self.explode {
            Err(<S::Error as rancor::Source>::new(Boom))
        } else {
            Ok(())
        }
    }
}

#[derive(Archive, Serialize, Debug)]
struct Fragile {
    n: u64,
    bomb: Bomb,
}

fn fragile(n: u64, explode: bool) -> Fragile {
    Fragile {
        n,
        bomb: Bomb { explode },
    }
}

#[test]
fn a_batch_that_fails_midway_writes_nothing_and_consumes_no_number() {
    let (_dir, varve) = temp_store();
    let mut stream = varve.stream::<Fragile, 64>("fragile").unwrap();
    stream.append(StreamId(1), &fragile(0, false)).unwrap();

    let batch = [
        fragile(1, false),
        fragile(2, false),
        fragile(3, true),
        fragile(4, false),
    ];
    let err = stream.append_batch(StreamId(1), &batch).unwrap_err();
    assert!(
        matches!(err, Error::Serialize { ref stream, .. } if stream == "fragile"),
        "{err}"
    );
    assert!(stream.append(StreamId(1), &fragile(5, true)).is_err());

    let reader = stream.reader();
    assert_eq!(reader.iter_stream(StreamId(1), None).unwrap().count(), 1);
    assert_eq!(varve.global_reader().end().unwrap(), GlobalSequence(1));
    // The next good append takes the very next numbers: nothing was consumed.
    assert_eq!(
        stream.append(StreamId(1), &fragile(6, false)).unwrap(),
        (StreamSequence(1), GlobalSequence(1))
    );
}

#[test]
fn a_failed_expected_version_check_writes_nothing_and_consumes_no_number() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    orders.append(StreamId(1), &Order::numbered(0)).unwrap();
    let batch = vec![Order::numbered(1), Order::numbered(2)];
    let err = orders
        .append_batch_expected(StreamId(1), &batch, ExpectedVersion::NoStream)
        .unwrap_err();
    match err {
        Error::VersionConflict {
            stream,
            id,
            expected,
            actual,
        } => {
            assert_eq!(
                (stream.as_str(), id, expected, actual),
                (
                    "orders",
                    StreamId(1),
                    ExpectedVersion::NoStream,
                    Some(StreamSequence(0))
                )
            );
        }
        other => panic!("expected a version conflict, got {other}"),
    }
    let ok = orders
        .append_batch_expected(
            StreamId(1),
            &batch,
            ExpectedVersion::Exact(StreamSequence(0)),
        )
        .unwrap();
    assert_eq!(ok[0], (StreamSequence(1), GlobalSequence(1)));
}

#[test]
fn reads_past_the_end_are_none_not_errors() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    let mut reader = orders.reader();
    assert!(reader
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .is_none());
    orders.append(StreamId(1), &Order::numbered(0)).unwrap();
    assert!(reader
        .get_archived(StreamId(1), StreamSequence(1))
        .unwrap()
        .is_none());
    assert!(reader
        .get_archived(StreamId(1), StreamSequence(u64::MAX))
        .unwrap()
        .is_none());
    assert!(reader
        .get_bytes(StreamId(2), StreamSequence(0))
        .unwrap()
        .is_none());
    assert_eq!(
        reader
            .iter_stream(StreamId(1), Some(StreamSequence(5)))
            .unwrap()
            .count(),
        0
    );
    let mut log = varve.global_reader();
    assert!(log.get(GlobalSequence(1)).unwrap().is_none());
    assert!(log.get(GlobalSequence(u64::MAX)).unwrap().is_none());
    assert_eq!(log.iter_from(GlobalSequence(7)).unwrap().count(), 0);
}

#[test]
fn interleaved_single_appends_read_back_per_stream_and_globally() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    for n in 0..300u64 {
        orders.append(StreamId(n % 3), &Order::numbered(n)).unwrap();
    }
    let mut reader = orders.reader();
    for id in 0..3u64 {
        let got: Vec<u64> = reader
            .iter_stream(StreamId(id), None)
            .unwrap()
            .map(|e| e.unwrap().id.to_native())
            .collect();
        let want: Vec<u64> = (0..300).filter(|n| n % 3 == id).collect();
        assert_eq!(got, want);
        let e = reader
            .get_archived(StreamId(id), StreamSequence(50))
            .unwrap()
            .unwrap();
        assert_eq!(e.id.to_native(), 150 + id);
        assert_eq!(e.global_sequence(), GlobalSequence(150 + id));
    }
    let from_global: Vec<(u64, u64)> = varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.stream_id().0,
                e.archived_plain::<Order>().unwrap().id.to_native(),
            )
        })
        .collect();
    assert_eq!(
        from_global,
        (0..300).map(|n| (n % 3, n)).collect::<Vec<_>>()
    );
}

#[test]
fn consecutive_appends_to_one_id_read_back_from_any_position() {
    let (_dir, varve) = temp_store();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    for n in 0..10u64 {
        orders.append(StreamId(4), &Order::numbered(n)).unwrap();
    }
    orders
        .append_batch(
            StreamId(4),
            &(10..20).map(Order::numbered).collect::<Vec<_>>(),
        )
        .unwrap();
    let reader = orders.reader();
    for from in 0..21u64 {
        let got: Vec<u64> = reader
            .iter_stream(StreamId(4), Some(StreamSequence(from)))
            .unwrap()
            .map(|e| e.unwrap().stream_sequence().0)
            .collect();
        assert_eq!(got, (from..20).collect::<Vec<_>>());
    }
    assert_eq!(
        orders.version(StreamId(4)).unwrap(),
        Some(StreamSequence(19))
    );
    assert_eq!(orders.version(StreamId(5)).unwrap(), None);
}
