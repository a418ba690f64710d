//! Stream names and types: a name is bound to one event type (layout included),
//! names are validated, any number of names can exist, and an event larger than
//! the handle's buffer is stored whole.

use rkyv::{Archive, Serialize};
use varvedb::{Error, GlobalSequence, StreamId, StreamSequence};
use varvedb_suite::{temp_store, Order};

mod v1 {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    pub struct Renamed {
        pub a: u64,
    }
}

mod v2 {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    pub struct Renamed {
        pub a: u64,
        pub b: u64,
    }
}

#[derive(Archive, Serialize)]
struct Other {
    x: u32,
}

#[test]
fn a_stream_opened_with_another_type_is_a_typed_error_naming_both() {
    let (_dir, varve) = temp_store();
    varve
        .stream::<Order, 64>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(1))
        .unwrap();
    match varve.stream::<Other, 64>("orders") {
        Err(Error::TypeMismatch {
            stream,
            stored,
            requested,
            ..
        }) => {
            assert_eq!(stream, "orders");
            assert!(stored.ends_with("Order"), "{stored}");
            assert!(requested.ends_with("Other"), "{requested}");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    // Same type, other buffer size: fine.
    assert!(varve.stream::<Order, 4096>("orders").is_ok());
}

#[test]
fn same_named_types_from_different_modules_do_not_share_a_stream() {
    let (_dir, varve) = temp_store();
    varve
        .stream::<v1::Renamed, 64>("renamed")
        .unwrap()
        .append(StreamId(1), &v1::Renamed { a: 1 })
        .unwrap();
    let err = varve.stream::<v2::Renamed, 64>("renamed").unwrap_err();
    assert!(
        err.to_string().contains("v1::Renamed") && err.to_string().contains("v2::Renamed"),
        "{err}"
    );
}

#[test]
fn the_binding_survives_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    varvedb::Varve::new(dir.path())
        .unwrap()
        .stream::<Order, 64>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(1))
        .unwrap();
    let varve = varvedb::Varve::new(dir.path()).unwrap();
    assert!(matches!(
        varve.stream::<Other, 64>("orders"),
        Err(Error::TypeMismatch { .. })
    ));
}

#[test]
fn the_global_reader_refuses_to_view_an_event_as_the_wrong_type() {
    let (_dir, varve) = temp_store();
    varve
        .stream::<Order, 64>("orders")
        .unwrap()
        .append(StreamId(1), &Order::numbered(1))
        .unwrap();
    let event = varve
        .global_reader()
        .get(GlobalSequence(0))
        .unwrap()
        .unwrap();
    assert!(event.is_plain::<Order>() && !event.is_plain::<Other>());
    assert!(matches!(
        event.archived_plain::<Other>(),
        Err(Error::TypeMismatch { .. })
    ));
    assert_eq!(event.archived_plain::<Order>().unwrap().id, 1);
}

#[test]
fn stream_names_are_utf8_of_1_to_255_bytes_without_control_characters() {
    let (_dir, varve) = temp_store();
    for bad in [
        String::new(),
        "x".repeat(256),
        "é".repeat(128),
        "a\0b".to_string(),
        "orders\n".to_string(),
        "a\tb".to_string(),
        "a\rb".to_string(),
        "del\u{7f}".to_string(),
        "c1\u{85}".to_string(),
        "esc\u{1b}[2J".to_string(),
    ] {
        match varve.stream::<Order, 64>(&bad) {
            Err(Error::InvalidStreamName { .. }) => {}
            other => panic!("{bad:?} should be rejected, got {other:?}"),
        }
        // Every way of opening a stream checks the name the same way.
        assert!(
            matches!(
                varve.stream::<Order, 0>(&bad).map(|s| s.reader()),
                Err(Error::InvalidStreamName { .. })
            ),
            "{bad:?}"
        );
    }
    for good in [
        "x".repeat(255),
        "commandes/été 🚀".to_string(),
        " ".to_string(),
        "zero\u{200b}width".to_string(),
    ] {
        let mut s = varve.stream::<Order, 64>(&good).unwrap();
        s.append(StreamId(1), &Order::numbered(1)).unwrap();
        assert_eq!(
            varve
                .global_reader()
                .iter_from(GlobalSequence(0))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().stream_name() == good)
                .count(),
            1
        );
    }
}

#[test]
fn names_are_compared_byte_for_byte_so_nfc_and_nfd_are_two_streams() {
    let (_dir, varve) = temp_store();
    let nfc = "Caf\u{e9}"; // precomposed é
    let nfd = "Cafe\u{301}"; // e + combining acute accent
    assert_ne!(nfc.as_bytes(), nfd.as_bytes());
    varve
        .stream::<Order, 64>(nfc)
        .unwrap()
        .append(StreamId(1), &Order::numbered(1))
        .unwrap();
    // The NFD spelling is another, still empty stream; it can even hold
    // another type.
    let mut other = varve.stream::<Other, 64>(nfd).unwrap();
    assert_eq!(other.version(StreamId(1)).unwrap(), None);
    other.append(StreamId(1), &Other { x: 2 }).unwrap();
    let names: Vec<String> = varve
        .global_reader()
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| e.unwrap().stream_name().to_string())
        .collect();
    assert_eq!(names, [nfc, nfd]);
}

#[test]
fn thousands_of_stream_names_live_in_one_store() {
    let (_dir, varve) = temp_store();
    for i in 0..2000u64 {
        let mut s = varve.stream::<Order, 64>(&format!("tenant-{i}")).unwrap();
        s.append(StreamId(i), &Order::numbered(i)).unwrap();
    }
    let mut log = varve.global_reader();
    let e = log.get(GlobalSequence(1999)).unwrap().unwrap();
    assert_eq!(e.stream_name(), "tenant-1999");
    let mut reader = varve.stream::<Order, 64>("tenant-1234").unwrap().reader();
    assert_eq!(
        reader
            .get_archived(StreamId(1234), StreamSequence(0))
            .unwrap()
            .unwrap()
            .id,
        1234
    );
}

#[test]
fn an_event_larger_than_the_buffer_is_stored_whole_through_the_heap() {
    let (_dir, varve) = temp_store();
    let mut small = varve.stream::<Order, 16>("orders").unwrap();
    let big = Order {
        id: 1,
        quantity: 2,
        note: "z".repeat(3 << 20),
    };
    let batch = vec![Order::numbered(7), big.clone(), Order::numbered(8)];
    small.append(StreamId(1), &big).unwrap();
    small.append_batch(StreamId(1), &batch).unwrap();
    let mut reader = small.reader();
    for seq in [0, 2] {
        let e = reader
            .get_archived(StreamId(1), StreamSequence(seq))
            .unwrap()
            .unwrap();
        assert_eq!(e.note.len(), 3 << 20);
        assert!(e.note.chars().all(|c| c == 'z'));
    }
    assert_eq!(
        reader
            .get_archived(StreamId(1), StreamSequence(3))
            .unwrap()
            .unwrap()
            .id,
        8
    );
}
