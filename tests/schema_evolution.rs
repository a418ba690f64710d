//! Changing an event type never makes a read return a value that was not
//! written: every typed path (streams, readers, folds, aggregates, the
//! global log, subscriptions, projections) either reads the right values
//! (the same event moved or renamed, an older version upcast) or fails with
//! a typed error (fields changed without a new version, a version the
//! program does not know).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use varvedb::{
    Aggregate, Error, Event, GlobalEvent, GlobalSequence, HandlerError, Projection, ReadModel,
    StreamId, StreamSequence, Upcast, Varve,
};

/// What an event of each test type says, as `(order, cents)`: the values a
/// path read, to compare with what was written.
trait Probe: Event {
    fn values(archived: &Self::Archived) -> (u64, u64);
}

/// The first release.
mod v1 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
    }
}

impl Probe for v1::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// The same event moved to another module (or crate: the identity holds no path).
mod moved {
    pub mod deeper {
        #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
        #[event(name = "OrderPlaced", stream = "orders")]
        pub struct OrderPlaced {
            pub order: u64,
            pub cents: u64,
        }
    }
}

impl Probe for moved::deeper::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// The same event with its type renamed, its name kept.
mod renamed {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct Placed {
        pub order: u64,
        pub cents: u64,
    }
}

impl Probe for renamed::Placed {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// The fields swapped, no new version: same size, same type name.
mod swapped {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct OrderPlaced {
        pub cents: u64,
        pub order: u64,
    }
}

impl Probe for swapped::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// `cents` retyped to `f64`, no new version: same size and alignment.
mod retyped {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: f64,
    }
}

impl Probe for retyped::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native() as u64)
    }
}

/// A field added without a new version.
mod added {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders")]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
        pub note: u32,
    }
}

impl Probe for added::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// Another event under the old stream.
mod other {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderShipped", stream = "orders")]
    pub struct OrderShipped {
        pub order: u64,
        pub cents: u64,
    }
}

impl Probe for other::OrderShipped {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// Version 2: a currency added, version 1 upcast with "EUR".
mod v2 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 2, upcast_from = super::v1::OrderPlaced)]
    pub struct OrderPlaced {
        pub order: u64,
        pub cents: u64,
        pub currency: [u8; 3],
    }

    impl varvedb::Upcast<super::v1::OrderPlaced> for OrderPlaced {
        fn upcast(old: &super::v1::ArchivedOrderPlaced) -> Self {
            OrderPlaced {
                order: old.order.to_native(),
                cents: old.cents.to_native(),
                currency: *b"EUR",
            }
        }
    }
}

impl Probe for v2::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (a.order.to_native(), a.cents.to_native())
    }
}

/// Version 3: the amount in thousandths, as a signed number, a string order id.
mod v3 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "OrderPlaced", stream = "orders", version = 3, upcast_from = super::v2::OrderPlaced)]
    pub struct OrderPlaced {
        pub order: String,
        pub millis: i64,
        pub currency: [u8; 3],
    }
}

impl Upcast<v2::OrderPlaced> for v3::OrderPlaced {
    fn upcast(old: &v2::ArchivedOrderPlaced) -> Self {
        v3::OrderPlaced {
            order: old.order.to_native().to_string(),
            millis: old.cents.to_native() as i64 * 10,
            currency: old.currency,
        }
    }
}

impl Probe for v3::OrderPlaced {
    fn values(a: &Self::Archived) -> (u64, u64) {
        (
            a.order.as_str().parse().expect("a number"),
            a.millis.to_native() as u64 / 10,
        )
    }
}

/// An aggregate collecting every event's values, for any probe type.
struct Collect<E>(Vec<(u64, u64)>, PhantomData<fn() -> E>);

impl<E> Default for Collect<E> {
    fn default() -> Self {
        Collect(Vec::new(), PhantomData)
    }
}

impl<E: Probe> Aggregate for Collect<E> {
    type Event = E;
    type Command = Vec<E>;
    type Error = std::convert::Infallible;
    fn apply(&mut self, event: &E::Archived) {
        self.0.push(E::values(event));
    }
    fn handle(&self, _: &Vec<E>) -> Result<Vec<E>, Self::Error> {
        Ok(Vec::new())
    }
}

/// A projection keeping each event's values under its global sequence.
struct Keep<E>(PhantomData<fn() -> E>);

impl<E: Probe> Projection for Keep<E> {
    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let (order, cents) = E::values(event.archived::<E>()?);
        let key = event.global_sequence().0.to_be_bytes();
        model.put_u64(&key, order << 32 | cents)?;
        Ok(())
    }
}

static PROJECTIONS: AtomicUsize = AtomicUsize::new(0);

type Values = Vec<(u64, u64)>;

/// The values of stream id `id` (`n` events, all in the log from global 0)
/// read as `E` through every typed path, each path's outcome named.
fn every_path<E: Probe>(
    varve: &Varve,
    id: StreamId,
    n: usize,
) -> Vec<(&'static str, varvedb::Result<Values>)> {
    let mut out: Vec<(&'static str, varvedb::Result<Values>)> = Vec::new();
    let opened = varve.events::<E>();
    let events = match opened {
        Ok(events) => events,
        Err(e) => {
            out.push(("events", Err(e)));
            // Every other path must fail on its own, too.
            return with_log_paths::<E>(varve, n, out);
        }
    };
    let mut reader = events.reader();
    out.push((
        "get_archived",
        (0..n as u64)
            .map(|s| {
                reader
                    .get_archived(id, StreamSequence(s))
                    .map(|e| E::values(&e.expect("written")))
            })
            .collect(),
    ));
    out.push((
        "iter_stream",
        reader
            .iter_stream(id, None)
            .and_then(|it| it.map(|e| e.map(|e| E::values(&e))).collect()),
    ));
    out.push((
        "try_fold_archived",
        reader.iter_stream(id, None).and_then(|it| {
            it.try_fold_archived(Vec::new(), |mut v, _, e| {
                v.push(E::values(e));
                v
            })
        }),
    ));
    out.push((
        "snapshot iter_stream",
        reader.snapshot().and_then(|snap| {
            let values = snap
                .iter_stream(id, None)?
                .map(|e| e.map(|e| E::values(&e)))
                .collect();
            values
        }),
    ));
    out.push((
        "snapshot get",
        reader.snapshot().and_then(|snap| {
            let values = (0..n as u64)
                .map(|s| {
                    snap.get(id, StreamSequence(s))
                        .map(|e| E::values(&e.expect("written")))
                })
                .collect();
            values
        }),
    ));
    out.push((
        "reader.load",
        reader.load::<Collect<E>>(id).map(|l| l.state.0),
    ));
    out.push((
        "stream subscription",
        reader
            .subscribe(id, StreamSequence(0))
            .take(n)
            .map(|e| e.map(|e| E::values(&e)))
            .collect(),
    ));
    out.push((
        "Varve::load",
        varve.load::<Collect<E>>(id).map(|l| l.state.0),
    ));
    out.push((
        "Varve::execute",
        varve
            .execute::<Collect<E>>(id, &Vec::new())
            .map(|d| d.state.0)
            .map_err(|e| match e {
                varvedb::ExecuteError::Store(e) => e,
                varvedb::ExecuteError::Rejected(never) => match never {},
            }),
    ));
    with_log_paths::<E>(varve, n, out)
}

/// The global-log paths: `GlobalEvent::archived`/`to_event_ref`, folds of
/// entries, subscriptions and a projection.
fn with_log_paths<E: Probe>(
    varve: &Varve,
    n: usize,
    mut out: Vec<(&'static str, varvedb::Result<Values>)>,
) -> Vec<(&'static str, varvedb::Result<Values>)> {
    let mut log = varve.global_reader();
    out.push((
        "GlobalEvent::archived",
        (0..n as u64)
            .map(|g| {
                let event = log.get(GlobalSequence(g))?.expect("written");
                event.archived::<E>().map(E::values)
            })
            .collect(),
    ));
    out.push((
        "GlobalEvent::to_event_ref",
        (0..n as u64)
            .map(|g| {
                let event = log.get(GlobalSequence(g))?.expect("written");
                event.to_event_ref::<E>().map(|e| E::values(&e))
            })
            .collect(),
    ));
    out.push((
        "try_fold_entries",
        log.iter_from(GlobalSequence(0)).and_then(|it| {
            it.try_fold_entries(Vec::new(), |mut v, entry| {
                v.push(E::values(entry.archived::<E>()?));
                Ok(v)
            })
        }),
    ));
    out.push((
        "LogSnapshot iter_from",
        varve.snapshot().and_then(|snap| {
            let values = snap
                .iter_from(GlobalSequence(0))?
                .map(|e| e.and_then(|e| e.archived::<E>().map(E::values)))
                .collect();
            values
        }),
    ));
    out.push((
        "LogSnapshot get",
        varve.snapshot().and_then(|snap| {
            let values = (0..n as u64)
                .map(|g| {
                    let event = snap.get(GlobalSequence(g))?.expect("written");
                    event.archived::<E>().map(E::values)
                })
                .collect();
            values
        }),
    ));
    let mut sub = varve.subscribe(GlobalSequence(0));
    out.push((
        "subscription",
        (0..n)
            .map(|_| {
                let event = sub.try_next()?.expect("committed");
                event.archived::<E>().map(E::values)
            })
            .collect(),
    ));
    let name = format!("keep{}", PROJECTIONS.fetch_add(1, Ordering::Relaxed));
    let projected = varve
        .projector(&name, Keep::<E>(PhantomData))
        .and_then(|mut p| p.catch_up().map(|_| ()))
        .and_then(|()| {
            let mut model = varve.read_model(&name)?;
            (0..n as u64)
                .map(|g| {
                    let v = model.get_u64(&g.to_be_bytes())?.expect("projected");
                    Ok((v >> 32, v & 0xffff_ffff))
                })
                .collect()
        });
    out.push(("projection", projected));
    out.push((
        "Varve::stream (plain)",
        varve
            .stream::<E, 64>(E::STREAM)
            // Opening reads nothing: an empty list stands for "opened".
            .map(|_| Values::new()),
    ));
    out
}

/// Every path read `expected`, except opening the stream as a plain type,
/// which a derived stream refuses.
fn assert_reads<E: Probe>(varve: &Varve, id: StreamId, expected: &[(u64, u64)]) {
    for (path, got) in every_path::<E>(varve, id, expected.len()) {
        match got {
            // A derived stream refuses a plain handle; one still bound by
            // type name (not adopted yet) opens for it.
            Err(Error::SchemaMismatch { .. }) | Ok(_) if path == "Varve::stream (plain)" => {}
            Ok(values) => assert_eq!(values, expected, "{path} read other values"),
            Err(e) => panic!("{path} failed: {e}"),
        }
    }
}

/// Every path failed with a typed error (never a value).
fn assert_refused<E: Probe>(varve: &Varve, id: StreamId, n: usize) {
    for (path, got) in every_path::<E>(varve, id, n) {
        match got {
            Ok(values) => panic!("{path} read {values:?} through a changed type"),
            Err(Error::SchemaMismatch { .. } | Error::Projection { .. }) => {}
            Err(e) => panic!("{path} failed with an unexpected error: {e:?}"),
        }
    }
}

fn written_by_v1() -> (tempfile::TempDir, Varve) {
    let (dir, varve) = varvedb_suite::temp_store();
    let mut orders = varve.events::<v1::OrderPlaced>().unwrap();
    orders
        .append_batch(
            StreamId(1),
            &[
                v1::OrderPlaced {
                    order: 1,
                    cents: 101,
                },
                v1::OrderPlaced {
                    order: 2,
                    cents: 202,
                },
            ],
        )
        .unwrap();
    (dir, varve)
}

const V1: [(u64, u64); 2] = [(1, 101), (2, 202)];

#[test]
fn the_writing_type_reads_its_events_on_every_path() {
    let (_dir, varve) = written_by_v1();
    assert_reads::<v1::OrderPlaced>(&varve, StreamId(1), &V1);
}

#[test]
fn swapped_fields_without_a_new_version_are_refused_on_every_path() {
    let (_dir, varve) = written_by_v1();
    assert_refused::<swapped::OrderPlaced>(&varve, StreamId(1), 2);
}

#[test]
fn a_retyped_field_without_a_new_version_is_refused_on_every_path() {
    let (_dir, varve) = written_by_v1();
    assert_refused::<retyped::OrderPlaced>(&varve, StreamId(1), 2);
}

#[test]
fn an_added_field_without_a_new_version_is_refused_on_every_path() {
    let (_dir, varve) = written_by_v1();
    assert_refused::<added::OrderPlaced>(&varve, StreamId(1), 2);
}

#[test]
fn another_event_in_the_same_stream_is_refused_on_every_path() {
    let (_dir, varve) = written_by_v1();
    assert_refused::<other::OrderShipped>(&varve, StreamId(1), 2);
    match varve.events::<other::OrderShipped>() {
        Err(Error::SchemaMismatch { advice, .. }) => {
            assert!(advice.contains("#[event(name"), "{advice}")
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
}

#[test]
fn a_moved_type_reads_and_appends_as_before() {
    let (dir, varve) = written_by_v1();
    assert_reads::<moved::deeper::OrderPlaced>(&varve, StreamId(1), &V1);
    drop(varve);
    // After a reopen, as a new build would: the catalog, not a cache, decides.
    let varve = Varve::new(dir.path()).unwrap();
    varve
        .events::<moved::deeper::OrderPlaced>()
        .unwrap()
        .append(
            StreamId(1),
            &moved::deeper::OrderPlaced {
                order: 3,
                cents: 303,
            },
        )
        .unwrap();
    assert_reads::<v1::OrderPlaced>(&varve, StreamId(1), &[(1, 101), (2, 202), (3, 303)]);
}

#[test]
fn a_renamed_type_that_keeps_its_name_reads_as_before() {
    let (dir, varve) = written_by_v1();
    drop(varve);
    let varve = Varve::new(dir.path()).unwrap();
    assert_reads::<renamed::Placed>(&varve, StreamId(1), &V1);
}

#[test]
fn the_identity_holds_no_path_so_a_renamed_crate_changes_nothing() {
    // A renamed crate changes every type's path and nothing else: the name
    // and fingerprint the store binds are computed without it.
    assert_ne!(
        v1::OrderPlaced::TYPE_NAME,
        moved::deeper::OrderPlaced::TYPE_NAME
    );
    assert_eq!(v1::OrderPlaced::NAME, moved::deeper::OrderPlaced::NAME);
    assert_eq!(
        v1::OrderPlaced::FINGERPRINT,
        moved::deeper::OrderPlaced::FINGERPRINT
    );
    assert_eq!(v1::OrderPlaced::FINGERPRINT, renamed::Placed::FINGERPRINT);
    assert_ne!(
        v1::OrderPlaced::FINGERPRINT,
        swapped::OrderPlaced::FINGERPRINT
    );
    assert_ne!(
        v1::OrderPlaced::FINGERPRINT,
        retyped::OrderPlaced::FINGERPRINT
    );
}

/// Three builds write in turn, each through its own store handle (a
/// reopen), then the last one reads and folds everything.
#[test]
fn a_chain_of_three_versions_written_by_three_builds_is_read_by_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let id = StreamId(9);
    {
        let varve = Varve::new(dir.path()).unwrap();
        varve
            .events::<v1::OrderPlaced>()
            .unwrap()
            .append_batch(
                id,
                &[
                    v1::OrderPlaced {
                        order: 1,
                        cents: 10,
                    },
                    v1::OrderPlaced {
                        order: 2,
                        cents: 20,
                    },
                ],
            )
            .unwrap();
    }
    {
        let varve = Varve::new(dir.path()).unwrap();
        let mut orders = varve.events::<v2::OrderPlaced>().unwrap();
        orders
            .append(
                id,
                &v2::OrderPlaced {
                    order: 3,
                    cents: 30,
                    currency: *b"USD",
                },
            )
            .unwrap();
        // The second build reads the first build's events upcast.
        let first = orders
            .reader()
            .get_archived(id, StreamSequence(0))
            .unwrap()
            .unwrap();
        assert_eq!(&first.currency, b"EUR");
    }
    {
        let varve = Varve::new(dir.path()).unwrap();
        varve
            .events::<v3::OrderPlaced>()
            .unwrap()
            .append(
                id,
                &v3::OrderPlaced {
                    order: "4".into(),
                    millis: 400,
                    currency: *b"GBP",
                },
            )
            .unwrap();
    }
    let varve = Varve::new(dir.path()).unwrap();
    let expected = [(1, 10), (2, 20), (3, 30), (4, 40)];
    assert_reads::<v3::OrderPlaced>(&varve, id, &expected);
    let mut reader = varve.events::<v3::OrderPlaced>().unwrap().reader();
    let currencies: Vec<[u8; 3]> = reader
        .iter_stream(id, None)
        .unwrap()
        .map(|e| e.map(|e| e.currency))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(currencies, [*b"EUR", *b"EUR", *b"USD", *b"GBP"]);
    // An upcast event is handed out as the current version: its bytes are
    // the current version's archived form.
    let first = reader.get_archived(id, StreamSequence(0)).unwrap().unwrap();
    let again =
        rkyv::access::<v3::ArchivedOrderPlaced, rkyv::rancor::Error>(first.bytes()).unwrap();
    assert_eq!(again.order.as_str(), "1");
}

#[test]
fn an_older_program_reads_what_it_knows_and_cannot_append() {
    let (_dir, varve) = varvedb_suite::temp_store();
    let id = StreamId(1);
    varve
        .events::<v1::OrderPlaced>()
        .unwrap()
        .append(
            id,
            &v1::OrderPlaced {
                order: 1,
                cents: 10,
            },
        )
        .unwrap();
    varve
        .events::<v2::OrderPlaced>()
        .unwrap()
        .append(
            id,
            &v2::OrderPlaced {
                order: 2,
                cents: 20,
                currency: *b"USD",
            },
        )
        .unwrap();
    varve
        .events::<v3::OrderPlaced>()
        .unwrap()
        .append(
            id,
            &v3::OrderPlaced {
                order: "3".into(),
                millis: 30,
                currency: *b"USD",
            },
        )
        .unwrap();

    // A program that knows versions 1 and 2 only.
    let mut old = varve.events::<v2::OrderPlaced>().unwrap();
    let mut reader = old.reader();
    let first = reader.get_archived(id, StreamSequence(0)).unwrap().unwrap();
    assert_eq!((first.order.to_native(), &first.currency), (1, b"EUR"));
    let second = reader.get_archived(id, StreamSequence(1)).unwrap().unwrap();
    assert_eq!(second.cents.to_native(), 20);
    match reader.get_archived(id, StreamSequence(2)) {
        Err(Error::UnknownEventVersion {
            fingerprint, known, ..
        }) => {
            assert_eq!(fingerprint, v3::OrderPlaced::FINGERPRINT);
            assert_eq!(known.to_vec(), varvedb::lineage::<v2::OrderPlaced>());
        }
        other => panic!("expected UnknownEventVersion, got {:?}", other.map(|_| ())),
    }
    let items: Vec<_> = reader.iter_stream(id, None).unwrap().collect();
    assert_eq!(items.len(), 3, "two events, then the error, then nothing");
    assert!(matches!(items[2], Err(Error::UnknownEventVersion { .. })));
    assert!(matches!(
        varve.load::<Collect<v2::OrderPlaced>>(id),
        Err(Error::UnknownEventVersion { .. })
    ));
    let event = varve
        .global_reader()
        .get(GlobalSequence(2))
        .unwrap()
        .unwrap();
    assert!(!event.is::<v2::OrderPlaced>());
    assert!(matches!(
        event.archived::<v2::OrderPlaced>(),
        Err(Error::UnknownEventVersion { .. })
    ));

    // Appending is refused, writing nothing.
    let end = varve.global_reader().end().unwrap();
    match old.append(
        id,
        &v2::OrderPlaced {
            order: 4,
            cents: 40,
            currency: *b"USD",
        },
    ) {
        Err(Error::OutdatedEventVersion {
            newest, program, ..
        }) => {
            assert_eq!((newest, program), (3, 2))
        }
        other => panic!("expected OutdatedEventVersion, got {other:?}"),
    }
    assert!(matches!(
        varve.execute::<Collect<v1::OrderPlaced>>(StreamId(2), &Vec::new()),
        Err(varvedb::ExecuteError::Store(
            Error::OutdatedEventVersion { .. } | Error::UnknownEventVersion { .. }
        ))
    ));
    assert_eq!(varve.global_reader().end().unwrap(), end);
}

#[test]
fn a_stream_bound_by_type_name_is_adopted_by_its_derived_type() {
    let (dir, varve) = varvedb_suite::temp_store();
    // Written without the derive's checks (as every format-1 stream is bound).
    varve
        .stream::<v1::OrderPlaced, 64>("orders")
        .unwrap()
        .append_batch(
            StreamId(1),
            &[
                v1::OrderPlaced {
                    order: 1,
                    cents: 101,
                },
                v1::OrderPlaced {
                    order: 2,
                    cents: 202,
                },
            ],
        )
        .unwrap();
    // Read through the derived type before its first append (nothing written)...
    assert_reads::<v1::OrderPlaced>(&varve, StreamId(1), &V1);
    // ...but a type of another path (or layout) cannot prove it is the same.
    assert!(matches!(
        varve.events::<moved::deeper::OrderPlaced>(),
        Err(Error::SchemaMismatch { .. })
    ));
    // The derived type's first append records the family, and then a later
    // version reads the adopted events upcast.
    varve
        .events::<v1::OrderPlaced>()
        .unwrap()
        .append(
            StreamId(1),
            &v1::OrderPlaced {
                order: 3,
                cents: 303,
            },
        )
        .unwrap();
    drop(varve);
    let varve = Varve::new(dir.path()).unwrap();
    assert_reads::<v2::OrderPlaced>(&varve, StreamId(1), &[(1, 101), (2, 202), (3, 303)]);
    // Now bound to the family: the moved type is the same event.
    assert_reads::<moved::deeper::OrderPlaced>(
        &varve,
        StreamId(1),
        &[(1, 101), (2, 202), (3, 303)],
    );
    assert!(varve.verify().unwrap().is_ok());
}
