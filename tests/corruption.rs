//! Bytes read from disk are untrusted: a damaged event yields `Error::Corruption`
//! on every path that reads it, never a panic and never a wrong value, and the
//! undamaged events around it still read.

use std::path::Path;

use varvedb::{Error, GlobalSequence, StreamId, StreamSequence, Varve};
use varvedb_suite::Order;

const MARKER: &str = "MARKER-7f3a9c-payload";

fn write_store(dir: &Path) {
    let varve = Varve::new(dir).unwrap();
    let mut orders = varve.stream::<Order, 128>("orders").unwrap();
    let batch: Vec<Order> = (0..20)
        .map(|n| Order {
            id: n,
            quantity: 1,
            note: if n == 7 {
                MARKER.into()
            } else {
                format!("note {n}")
            },
        })
        .collect();
    orders.append_batch(StreamId(1), &batch).unwrap();
}

fn flip_in_data_file(dir: &Path, needle: &[u8], offset_in_needle: usize) {
    let path = dir.join("data.mdb");
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip every copy: LMDB's copy-on-write may leave stale copies in free pages.
    let found: Vec<usize> = (0..bytes.len().saturating_sub(needle.len()))
        .filter(|&i| bytes[i..].starts_with(needle))
        .collect();
    assert!(!found.is_empty(), "needle present in the data file");
    for at in found {
        bytes[at + offset_in_needle] ^= 0x20;
    }
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_flipped_payload_byte_fails_its_checksum_on_every_read_path() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    flip_in_data_file(dir.path(), MARKER.as_bytes(), 3);

    let varve = Varve::new(dir.path()).unwrap();
    let mut reader = varve.stream::<Order, 128>("orders").unwrap().reader();
    let err = reader
        .get_archived(StreamId(1), StreamSequence(7))
        .unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(reader.get_bytes(StreamId(1), StreamSequence(7)).is_err());
    // Neighbours in the same block are intact.
    assert_eq!(
        reader
            .get_archived(StreamId(1), StreamSequence(6))
            .unwrap()
            .unwrap()
            .id,
        6
    );
    assert_eq!(
        reader
            .get_archived(StreamId(1), StreamSequence(8))
            .unwrap()
            .unwrap()
            .id,
        8
    );

    let results: Vec<_> = reader.iter_stream(StreamId(1), None).unwrap().collect();
    assert_eq!(results.len(), 8, "iteration stops at the damaged event");
    assert!(results[7].is_err());
    assert!(reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .collect_bytes()
        .is_err());
    assert!(reader
        .iter_stream(StreamId(1), None)
        .unwrap()
        .try_fold_archived((), |_, _, _| ())
        .is_err());

    let mut log = varve.global_reader();
    assert!(matches!(
        log.get(GlobalSequence(7)),
        Err(Error::Corruption { .. })
    ));
    assert!(log
        .iter_from(GlobalSequence(0))
        .unwrap()
        .any(|e| e.is_err()));
}

#[test]
fn a_damaged_block_header_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    // The header's stream id (1, little endian) sits at offset 8 of the block;
    // find it by the tag (0) and id (1) that follow the 64-byte header layout.
    let mut needle = Vec::new();
    needle.extend_from_slice(&[1u8, 0, 64, 0]); // version, flags, header length
    needle.extend_from_slice(&0u32.to_le_bytes()); // stream tag
    needle.extend_from_slice(&1u64.to_le_bytes()); // stream id
    flip_in_data_file(dir.path(), &needle, 8);

    let varve = Varve::new(dir.path()).unwrap();
    let mut reader = varve.stream::<Order, 128>("orders").unwrap().reader();
    for seq in [0, 10, 19] {
        let err = reader
            .get_archived(StreamId(1), StreamSequence(seq))
            .unwrap_err();
        assert!(err.to_string().contains("header checksum"), "{err}");
    }
    assert!(varve.global_reader().get(GlobalSequence(3)).is_err());
}

#[test]
fn random_damage_anywhere_in_the_file_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    let path = dir.path().join("data.mdb");
    let pristine = std::fs::read(&path).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..60 {
        let mut bytes = pristine.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % bytes.len();
            bytes[at] ^= (seed >> 32) as u8 | 1;
        }
        std::fs::write(&path, &bytes).unwrap();
        // Any outcome but a panic (or a wrong value) is acceptable.
        if let Ok(varve) = Varve::new(dir.path()) {
            if let Ok(stream) = varve.stream::<Order, 128>("orders") {
                let mut reader = stream.reader();
                for seq in 0..20 {
                    if let Ok(Some(e)) = reader.get_archived(StreamId(1), StreamSequence(seq)) {
                        assert_eq!(e.id, seq, "a damaged store returned a wrong value");
                    }
                }
                if let Ok(iter) = reader.iter_stream(StreamId(1), None) {
                    for (i, e) in iter.enumerate() {
                        if let Ok(e) = e {
                            assert_eq!(e.id, i as u64);
                        }
                    }
                }
            }
            if let Ok(iter) = varve.global_reader().iter_from(GlobalSequence(0)) {
                iter.for_each(drop);
            }
        }
    }
}

#[test]
fn verify_passes_a_healthy_store_and_reports_damage_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    {
        let varve = Varve::new(dir.path()).unwrap();
        let mut more = varve.stream::<Order, 128>("more").unwrap();
        for n in 0..30 {
            more.append(StreamId(n % 4), &Order::numbered(n)).unwrap();
        }
        let report = varve.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.events, report.blocks, report.streams), (50, 31, 2));
    }
    flip_in_data_file(dir.path(), MARKER.as_bytes(), 3);
    let report = Varve::new(dir.path()).unwrap().verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(
        report.problems[0].location,
        varvedb::Location::Global(GlobalSequence(7))
    );
    assert!(report.problems[0].detail.contains("checksum"));
    assert_eq!(report.events, 49);
}
