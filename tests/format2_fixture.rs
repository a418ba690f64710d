//! Stores written by format 2 keep reading: a store kept under
//! `tests/fixtures/format-2` (an event family written in two versions, events
//! with ids, correlation, causation and user bytes, an entity key, and a
//! plain stream) opens, verifies clean and reads back on every path: the old
//! version upcast, the metadata and ids byte for byte, the key resolved.
//!
//! After an intended format change, bump the format version and regenerate:
//! `VARVEDB_WRITE_FIXTURES=1 cargo test --test format2_fixture`.

use std::path::{Path, PathBuf};

use rkyv::{rancor, Archive, Deserialize, Serialize};
use varvedb::{
    Append, Context, CorrelationId, Event, EventId, GlobalSequence, StreamId, StreamSequence,
    Upcast, Varve,
};
use varvedb_suite::Order;

const WRITE: &str = "VARVEDB_WRITE_FIXTURES";

mod v1 {
    /// The first version of a shipment.
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event, Debug, Clone, PartialEq)]
    #[event(name = "Shipment", stream = "shipments")]
    pub struct Shipment {
        pub parcel: u64,
        pub grams: u32,
    }
}

/// The second: a carrier, "unknown" for everything written before.
#[derive(Archive, Serialize, Deserialize, Event, Debug, Clone, PartialEq)]
#[event(name = "Shipment", stream = "shipments", version = 2, upcast_from = v1::Shipment)]
struct Shipment {
    parcel: u64,
    grams: u32,
    carrier: String,
}

impl Upcast<v1::Shipment> for Shipment {
    fn upcast(old: &v1::ArchivedShipment) -> Self {
        Shipment {
            parcel: old.parcel.to_native(),
            grams: old.grams.to_native(),
            carrier: "unknown".into(),
        }
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2")
}

fn correlation() -> Context {
    Context::new().correlation(CorrelationId::from_u128(0xC0))
}

fn with_user_bytes() -> Context {
    Context::new()
        .correlation(CorrelationId::from_u128(0xC1))
        .causation(EventId::from_u128(0x11))
        .user_bytes(b"tenant=7".to_vec())
        .unwrap()
}

/// One event as the fixture must hold it.
struct Expected {
    id: u64,
    seq: u64,
    value: Shipment,
    /// `Some` for an event written as version 1.
    v1: Option<v1::Shipment>,
    event_id: Option<u128>,
    correlation: Option<u128>,
    causation: Option<u128>,
    user: Option<&'static [u8]>,
}

fn shipment(parcel: u64, carrier: &str) -> Shipment {
    Shipment {
        parcel,
        grams: parcel as u32 * 10,
        carrier: carrier.into(),
    }
}

fn old(parcel: u64) -> v1::Shipment {
    v1::Shipment {
        parcel,
        grams: parcel as u32 * 10,
    }
}

/// The `shipments` events in global order (the plain `orders` event is the
/// log's last).
fn expected() -> Vec<Expected> {
    let from_v1 = |id, seq, parcel, event_id, correlation| Expected {
        id,
        seq,
        value: shipment(parcel, "unknown"),
        v1: Some(old(parcel)),
        event_id,
        correlation,
        causation: None,
        user: None,
    };
    let v2 = |id, seq, parcel: u64, event_id, ctx: bool| Expected {
        id,
        seq,
        value: shipment(parcel, "parcelforce"),
        v1: None,
        event_id,
        correlation: ctx.then_some(0xC1),
        causation: ctx.then_some(0x11),
        user: ctx.then_some(&b"tenant=7"[..]),
    };
    vec![
        from_v1(1, 0, 1, None, None),
        from_v1(1, 1, 2, None, None),
        from_v1(1, 2, 3, None, None),
        from_v1(2, 0, 4, Some(0x11), Some(0xC0)),
        v2(1, 3, 5, Some(0x21), false),
        v2(3, 0, 6, Some(0x31), true),
        v2(3, 1, 7, Some(0x32), true),
    ]
}

/// Writes the fixture store with this build, compacted to its live pages.
fn write_fixture(dest: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    {
        let varve = Varve::new(scratch.path()).unwrap();
        let mut first = varve.events::<v1::Shipment>().unwrap();
        first
            .append_batch(StreamId(1), &[old(1), old(2), old(3)])
            .unwrap();
        let ctx = correlation();
        first
            .append_with(
                StreamId(2),
                &old(4),
                Append::new()
                    .event_id(EventId::from_u128(0x11))
                    .context(&ctx),
            )
            .unwrap();
        drop(first);
        let mut second = varve.events::<Shipment>().unwrap();
        second
            .append_with(
                StreamId(1),
                &shipment(5, "parcelforce"),
                Append::new().event_id(EventId::from_u128(0x21)),
            )
            .unwrap();
        let ctx = with_user_bytes();
        let ids = [EventId::from_u128(0x31), EventId::from_u128(0x32)];
        second
            .append_batch_with(
                StreamId(3),
                &[shipment(6, "parcelforce"), shipment(7, "parcelforce")],
                Append::new().event_ids(&ids).context(&ctx),
            )
            .unwrap();
        second
            .append_keyed("parcel-9f3c", &shipment(8, "parcelforce"))
            .unwrap();
        varve
            .stream::<Order, 256>("orders")
            .unwrap()
            .append(StreamId(1), &Order::numbered(1))
            .unwrap();
    }
    std::fs::create_dir_all(dest).unwrap();
    let data = dest.join("data.mdb");
    let _ = std::fs::remove_file(&data);
    // SAFETY: the scratch store is closed; nothing else maps it.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(scratch.path()) }.unwrap();
    env.copy_to_path(&data, heed::CompactionOption::Enabled)
        .unwrap();
}

fn check_fixture(fixture: &Path) {
    // Opening may touch the files (lock file): use a copy.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    let varve = Varve::new(copy.path()).expect("the fixture opens");
    let report = varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let expected = expected();
    // 7 listed + the keyed shipment + the order.
    assert_eq!(report.events, expected.len() as u64 + 2);

    let mut log = varve.global_reader();
    let mut shipments = varve.events::<Shipment>().unwrap().reader();
    for (g, e) in expected.iter().enumerate() {
        let event = log
            .get(GlobalSequence(g as u64))
            .unwrap()
            .expect("in the log");
        assert_eq!(
            (
                event.stream_name(),
                event.stream_id(),
                event.stream_sequence()
            ),
            ("shipments", StreamId(e.id), StreamSequence(e.seq)),
            "global {g}"
        );
        // The payload as written, byte for byte.
        let written = match &e.v1 {
            Some(old) => rkyv::to_bytes::<rancor::Error>(old).unwrap(),
            None => rkyv::to_bytes::<rancor::Error>(&e.value).unwrap(),
        };
        assert!(event.payload() == written.as_slice(), "global {g}: payload");
        // Typed, through the log and the stream: version 1 upcast.
        let typed: Shipment =
            rkyv::deserialize::<_, rancor::Error>(event.archived::<Shipment>().unwrap()).unwrap();
        assert_eq!(typed, e.value, "global {g}");
        let read = shipments
            .get_archived(StreamId(e.id), StreamSequence(e.seq))
            .unwrap()
            .unwrap();
        let read: Shipment = rkyv::deserialize::<_, rancor::Error>(&*read).unwrap();
        assert_eq!(read, e.value, "global {g}, stream read");
        // The metadata, byte for byte.
        let meta = event.metadata();
        assert_eq!(
            meta.event_id(),
            e.event_id.map(EventId::from_u128),
            "global {g}"
        );
        assert_eq!(
            meta.correlation_id(),
            e.correlation.map(CorrelationId::from_u128),
            "global {g}"
        );
        assert_eq!(
            meta.causation_id(),
            e.causation.map(EventId::from_u128),
            "global {g}"
        );
        assert_eq!(meta.user_bytes(), e.user, "global {g}");
        // Found by its id.
        if let Some(id) = e.event_id {
            let found = log
                .get_by_id(EventId::from_u128(id))
                .unwrap()
                .expect("indexed");
            assert_eq!(found.global_sequence(), GlobalSequence(g as u64));
        }
    }

    // The entity key resolves to the stream id its event went to.
    let keyed = shipments
        .entity_id("parcel-9f3c")
        .unwrap()
        .expect("the key");
    let event = shipments
        .get_archived(keyed, StreamSequence(0))
        .unwrap()
        .expect("the keyed shipment");
    assert_eq!(event.parcel, 8);

    // A retry of a stored id is answered, not written again.
    let again = varve
        .events::<Shipment>()
        .unwrap()
        .append_with(
            StreamId(1),
            &shipment(5, "parcelforce"),
            Append::new().event_id(EventId::from_u128(0x21)),
        )
        .unwrap();
    assert!(again.is_idempotent());
    assert_eq!(again.first(), Some((StreamSequence(3), GlobalSequence(4))));

    // The plain stream beside the family, and appends continue.
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    assert_eq!(
        orders.reader().version(StreamId(1)).unwrap(),
        Some(StreamSequence(0))
    );
    let (seq, _) = orders.append(StreamId(1), &Order::numbered(2)).unwrap();
    assert_eq!(seq, StreamSequence(1));
    assert!(varve.verify().unwrap().is_ok());
}

#[test]
fn stores_written_by_format_2_read_back_on_every_path() {
    let fixture = fixture_dir();
    if std::env::var_os(WRITE).is_some() {
        write_fixture(&fixture);
        let size = std::fs::metadata(fixture.join("data.mdb")).unwrap().len();
        eprintln!("wrote {} ({size} bytes)", fixture.display());
    }
    check_fixture(&fixture);
}
