//! `#[derive(Event)]` writes the constants its attributes declare, fingerprints
//! exactly the layout, and `Varve::events` binds each stream to one type.

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Error, Event, ExpectedVersion, StreamId, StreamSequence, Varve};

mod base {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev {
        pub a: u64,
        pub b: u32,
    }
}

/// The same definition as `base::Ev`, written differently.
mod same {
    /// A doc comment, other attributes.
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(stream = "elsewhere", buffer = 64)]
    pub struct Ev {
        /// The first field.
        pub a: u64,
        pub b: u32,
    }

    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Nested {
        pub v: Vec<Option<u8>>,
    }
}

mod spaced {
    #[rustfmt::skip]
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Nested {
        pub v: Vec< Option < u8 > >,
    }
}

mod added {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev {
        pub a: u64,
        pub b: u32,
        pub c: u8,
    }
}

mod removed {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev {
        pub a: u64,
    }
}

mod reordered {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev {
        pub b: u32,
        pub a: u64,
    }
}

mod retyped {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev {
        pub a: u64,
        pub b: u64,
    }
}

mod renamed_field {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev {
        pub a: u64,
        pub c: u32,
    }
}

mod renamed_type {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Other {
        pub a: u64,
        pub b: u32,
    }
}

mod tuple {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    pub struct Ev(pub u64, pub u32);
}

mod versioned {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(version = 2)]
    pub struct Ev {
        pub a: u64,
        pub b: u32,
    }
}

mod explicit_version_one {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(version = 1)]
    pub struct Ev {
        pub a: u64,
        pub b: u32,
    }
}

// The variants exist only to be fingerprinted.
#[allow(dead_code)]
mod enums {
    pub mod base {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Opened { owner: u64 },
            Closed,
        }
    }
    pub mod same {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Opened { owner: u64 },
            Closed,
        }
    }
    pub mod variant_added {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Opened { owner: u64 },
            Closed,
            Frozen,
        }
    }
    pub mod variants_reordered {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Closed,
            Opened { owner: u64 },
        }
    }
    pub mod variant_renamed {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Opened { owner: u64 },
            Shut,
        }
    }
    pub mod variant_field_retyped {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Opened { owner: u32 },
            Closed,
        }
    }
    pub mod variant_made_tuple {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        pub enum Ev {
            Opened(u64),
            Closed,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Event, Debug, PartialEq)]
#[event(stream = "orders", buffer = 4096, version = 3)]
struct OrderPlaced {
    order: u64,
    lines: Vec<String>,
}

#[derive(Archive, Serialize, Event)]
struct HTTPRequestLogged;

#[derive(Archive, Serialize, Event)]
#[event(stream = "tiny", buffer = 8)]
struct Blob(Vec<u8>);

#[derive(Archive, Serialize, Event)]
#[event(stream = "measurements")]
struct Measured<T> {
    value: T,
}

fn store() -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().unwrap();
    let varve = Varve::new(dir.path()).unwrap();
    (dir, varve)
}

#[test]
fn constants_are_what_the_attributes_say() {
    assert_eq!(OrderPlaced::STREAM, "orders");
    assert_eq!(OrderPlaced::BUFFER_SIZE, 4096);
    assert_eq!(OrderPlaced::VERSION, 3);
    assert_eq!(OrderPlaced::TYPE_NAME, "derive::OrderPlaced");
    assert_eq!(OrderPlaced::TYPE_NAME, std::any::type_name::<OrderPlaced>());
    assert_eq!(same::Ev::STREAM, "elsewhere");
    assert_eq!(same::Ev::BUFFER_SIZE, 64);
}

#[test]
fn defaults_are_the_snake_case_name_1024_bytes_and_version_1() {
    assert_eq!(base::Ev::STREAM, "ev");
    assert_eq!(HTTPRequestLogged::STREAM, "http_request_logged");
    assert_eq!(enums::base::Ev::STREAM, "ev");
    assert_eq!(base::Ev::BUFFER_SIZE, 1024);
    assert_eq!(base::Ev::VERSION, 1);
    assert_eq!(base::Ev::TYPE_NAME, "derive::base::Ev");
    assert_eq!(enums::base::Ev::TYPE_NAME, "derive::enums::base::Ev");
}

#[test]
fn fingerprint_is_stable_for_the_same_definition() {
    // Types are hashed as written: spacing does not matter, spelling does.
    assert_ne!(base::Ev::FINGERPRINT, 0);
    assert_eq!(
        base::Ev::FINGERPRINT,
        same::Ev::FINGERPRINT,
        "docs, stream and buffer are not part of it"
    );
    assert_eq!(base::Ev::FINGERPRINT, explicit_version_one::Ev::FINGERPRINT);
    assert_eq!(same::Nested::FINGERPRINT, spaced::Nested::FINGERPRINT);
    assert_eq!(enums::base::Ev::FINGERPRINT, enums::same::Ev::FINGERPRINT);
}

#[test]
fn fingerprint_changes_with_the_layout_or_the_version() {
    let changed = [
        ("a field added", added::Ev::FINGERPRINT),
        ("a field removed", removed::Ev::FINGERPRINT),
        ("fields reordered", reordered::Ev::FINGERPRINT),
        ("a field retyped", retyped::Ev::FINGERPRINT),
        ("a field renamed", renamed_field::Ev::FINGERPRINT),
        ("the type renamed", renamed_type::Other::FINGERPRINT),
        ("named fields made a tuple", tuple::Ev::FINGERPRINT),
        ("the version bumped", versioned::Ev::FINGERPRINT),
    ];
    for (change, fingerprint) in changed {
        assert_ne!(fingerprint, base::Ev::FINGERPRINT, "{change}");
    }

    let changed = [
        ("a variant added", enums::variant_added::Ev::FINGERPRINT),
        (
            "variants reordered",
            enums::variants_reordered::Ev::FINGERPRINT,
        ),
        ("a variant renamed", enums::variant_renamed::Ev::FINGERPRINT),
        (
            "a variant's field retyped",
            enums::variant_field_retyped::Ev::FINGERPRINT,
        ),
        (
            "a variant's fields made a tuple",
            enums::variant_made_tuple::Ev::FINGERPRINT,
        ),
    ];
    for (change, fingerprint) in changed {
        assert_ne!(fingerprint, enums::base::Ev::FINGERPRINT, "{change}");
    }
}

#[test]
fn events_append_and_read_back() {
    let (_dir, varve) = store();
    let mut orders = varve.events::<OrderPlaced>().unwrap();
    assert_eq!(orders.name(), "orders");

    let id = StreamId(9);
    let first = OrderPlaced {
        order: 1,
        lines: vec!["tea".into()],
    };
    let (seq, global) = orders
        .append_expected(id, &first, ExpectedVersion::NoStream)
        .unwrap();
    assert_eq!((seq, global.0), (StreamSequence(0), 0));
    let batch = [
        OrderPlaced {
            order: 2,
            lines: vec![],
        },
        OrderPlaced {
            order: 3,
            lines: vec!["milk".into(), "bread".into()],
        },
    ];
    orders.append_batch(id, &batch).unwrap();
    assert_eq!(orders.version(id).unwrap(), Some(StreamSequence(2)));

    let again = orders.append_expected(id, &first, ExpectedVersion::NoStream);
    assert!(matches!(again, Err(Error::VersionConflict { .. })));
    let stale = orders.append_batch_expected(id, &batch, ExpectedVersion::Exact(StreamSequence(0)));
    assert!(matches!(stale, Err(Error::VersionConflict { .. })));
    let more = orders
        .append_batch_expected(id, &batch, ExpectedVersion::Exact(StreamSequence(2)))
        .unwrap();
    assert_eq!(more.last().map(|(seq, _)| *seq), Some(StreamSequence(4)));

    let mut reader = orders.reader();
    let third = reader
        .get_archived(id, StreamSequence(2))
        .unwrap()
        .expect("written");
    let third: OrderPlaced = rkyv::deserialize::<_, rkyv::rancor::Error>(&*third).unwrap();
    assert_eq!(third, batch[1]);
}

#[test]
fn events_larger_than_the_buffer_are_stored_whole() {
    let (_dir, varve) = store();
    let mut tiny = varve.events::<Blob>().unwrap();
    tiny.append(StreamId(1), &Blob(vec![7; 10_000])).unwrap();
    let read = tiny
        .reader()
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_eq!(read.0.len(), 10_000);
}

#[test]
fn same_named_events_share_a_stream_only_with_the_same_fields() {
    let (_dir, varve) = store();
    assert_eq!(base::Ev::STREAM, enums::base::Ev::STREAM);
    varve
        .events::<base::Ev>()
        .unwrap()
        .append(StreamId(1), &base::Ev { a: 1, b: 2 })
        .unwrap();
    // Another event of the same name (an enum): its version 1 differs.
    match varve.events::<enums::base::Ev>() {
        Err(Error::SchemaMismatch {
            stream,
            stored,
            stored_versions,
            requested_versions,
            ..
        }) => {
            assert_eq!((stream.as_str(), stored.as_str()), ("ev", "Ev"));
            assert_eq!(stored_versions.to_vec(), vec![(1, base::Ev::FINGERPRINT)]);
            assert_eq!(
                requested_versions.to_vec(),
                vec![(1, enums::base::Ev::FINGERPRINT)]
            );
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    // An identical definition in another module (a moved type) is the same
    // event: it opens the stream and reads what the first one wrote.
    assert_eq!(explicit_version_one::Ev::STREAM, "ev");
    let moved = varve.events::<explicit_version_one::Ev>().unwrap();
    let read = moved
        .reader()
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_eq!((read.a.to_native(), read.b.to_native()), (1, 2));
    // The first type still opens it.
    assert!(varve.events::<base::Ev>().is_ok());
}

#[test]
fn a_type_with_another_fingerprint_cannot_open_the_stream() {
    let (_dir, varve) = store();
    varve
        .events::<base::Ev>()
        .unwrap()
        .append(StreamId(1), &base::Ev { a: 1, b: 2 })
        .unwrap();
    assert!(matches!(
        varve.events::<added::Ev>(),
        Err(Error::SchemaMismatch { .. })
    ));
    // A version 2 that does not name version 1 as its predecessor does not
    // know its events: it may not open the stream either.
    assert!(matches!(
        varve.events::<versioned::Ev>(),
        Err(Error::SchemaMismatch { .. })
    ));
}

#[test]
fn a_derived_stream_refuses_a_plain_handle_that_cannot_check_its_versions() {
    let (_dir, varve) = store();
    varve
        .events::<OrderPlaced>()
        .unwrap()
        .append(
            StreamId(1),
            &OrderPlaced {
                order: 1,
                lines: vec![],
            },
        )
        .unwrap();
    match varve.stream::<OrderPlaced, 16>(OrderPlaced::STREAM) {
        Err(Error::SchemaMismatch { advice, .. }) => {
            assert!(advice.contains("Varve::events"), "{advice}")
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    let mut log = varve.global_reader();
    let event = log.get(varvedb::GlobalSequence(0)).unwrap().unwrap();
    assert!(event.is::<OrderPlaced>() && !event.is_plain::<OrderPlaced>());
    assert!(matches!(
        event.archived_plain::<OrderPlaced>(),
        Err(Error::SchemaMismatch { .. })
    ));
    assert_eq!(event.archived::<OrderPlaced>().unwrap().order, 1);
}

#[test]
fn generic_events_are_told_apart_by_their_arguments() {
    let (_dir, varve) = store();
    assert_eq!(Measured::<u64>::FINGERPRINT, Measured::<u32>::FINGERPRINT);
    let mut measurements = varve.events::<Measured<u64>>().unwrap();
    measurements
        .append(StreamId(1), &Measured { value: 21 })
        .unwrap();
    let read = measurements
        .reader()
        .get_archived(StreamId(1), StreamSequence(0))
        .unwrap()
        .unwrap();
    assert_eq!(read.value, 21);
    assert!(matches!(
        varve.events::<Measured<u32>>(),
        Err(Error::SchemaMismatch { .. })
    ));
    let event = varve
        .global_reader()
        .get(varvedb::GlobalSequence(0))
        .unwrap()
        .unwrap();
    assert!(event.is::<Measured<u64>>() && !event.is::<Measured<u32>>());
    assert!(event.archived::<Measured<u32>>().is_err());
}

#[test]
fn the_handle_shows_its_stream_type_and_buffer() {
    let (_dir, varve) = store();
    let shown = format!("{:?}", varve.events::<OrderPlaced>().unwrap());
    assert_eq!(
        shown,
        r#"Events { stream: "orders", type: "derive::OrderPlaced", buffer: 4096 }"#
    );
}
