//! The store behaves like a plain in-memory log: random sequences of appends,
//! batches, expected-version appends, appends with event ids and their
//! retries (whole, or any run of them, with any expected version), point
//! reads, iterations from random positions and reopens, run against both,
//! always agree.
//!
//! One more stream holds a `#[derive(Event)]` family with two versions:
//! appends of version 1 (until version 2 is appended or a migration records
//! it; then they fail with `OutdatedEventVersion` and write nothing), appends
//! of version 2 and migrations, mixed with the rest. Every read through
//! version 2 (point reads, iteration, the global log) sees exactly the
//! upcast of what was written, before and after a migration; a read through
//! version 1 sees a version-1 event as written and a version-2 one (or a
//! migrated one) as a typed `UnknownEventVersion`, never as a value.
//!
//! `PROPTEST_CASES` sets the number of sequences (64 by default).

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Append, Durability, Error, Event, EventId, Events, ExpectedVersion, GlobalReader,
    GlobalSequence, Stream, StreamId, StreamReader, StreamSequence, Upcast, Varve, VarveConfig,
};
use varvedb_suite::Order;

/// A second event type, so the global log mixes types.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Note {
    text: String,
    pinned: bool,
}

fn note(v: u32) -> Note {
    Note {
        text: "n".repeat((v % 40) as usize) + &v.to_string(),
        pinned: v.is_multiple_of(3),
    }
}

/// Streams 0 and 2 hold `Order`s, stream 1 holds `Note`s.
const STREAMS: [&str; 3] = ["orders", "notes", "orders-eu"];
const IDS: u64 = 3;

/// What an event looks like: its stream decides the type, `v` the content.
fn order(v: u32) -> Order {
    Order {
        id: u64::from(v),
        quantity: v % 11,
        note: "o".repeat((v % 300) as usize),
    }
}

/// The first version of the evolving stream's event.
mod v1 {
    #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    #[event(name = "Evolving", stream = "evolving")]
    pub struct Ev {
        pub n: u32,
        pub label: String,
    }
}

/// Version 2: `n` widened, two fields added; version 1 upcast into it.
#[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event, Debug, Clone, PartialEq, Eq)]
#[event(name = "Evolving", stream = "evolving", version = 2, upcast_from = v1::Ev)]
struct Ev {
    n: u64,
    label: String,
    doubled: u64,
    origin: [u8; 2],
}

impl Upcast<v1::Ev> for Ev {
    fn upcast(old: &v1::ArchivedEv) -> Self {
        let n = u64::from(old.n.to_native());
        Ev {
            n,
            label: old.label.as_str().to_string(),
            doubled: 2 * n,
            origin: *b"v1",
        }
    }
}

/// The evolving stream's index in the model (after [`STREAMS`]).
const EVOLVING: usize = 3;

fn ev1(v: u32) -> v1::Ev {
    v1::Ev {
        n: v,
        label: "e".repeat((v % 50) as usize),
    }
}

fn ev2(v: u32) -> Ev {
    Ev {
        n: u64::from(v) << 16 | 0xbeef,
        label: "f".repeat((v % 70) as usize),
        doubled: u64::from(v) * 3,
        origin: *b"v2",
    }
}

/// What a read through version 2 must see of `ev1(v)`: its upcast, by the
/// very conversion the store runs.
fn upcast_of(v: u32) -> Ev {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&ev1(v)).unwrap();
    let archived = rkyv::access::<v1::ArchivedEv, rkyv::rancor::Error>(&bytes).unwrap();
    <Ev as Upcast<v1::Ev>>::upcast(archived)
}

/// An archived version 2, as a value.
fn seen(a: &ArchivedEv) -> Ev {
    Ev {
        n: a.n.to_native(),
        label: a.label.as_str().to_string(),
        doubled: a.doubled.to_native(),
        origin: a.origin,
    }
}

/// An archived version 1: the `v` it was written from.
fn seen_v1(a: &v1::ArchivedEv) -> u32 {
    let v = a.n.to_native();
    assert_eq!(a.label.as_str(), ev1(v).label);
    v
}

/// What an event holds: an `Order` or `Note` by its value, or an evolving
/// event as read through version 2.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Plain(u32),
    Evolving(Ev),
}

/// A read through version 1 of an evolving event: its value, or the typed
/// error of an event stored as version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldRead {
    Value(u32),
    Unknown,
}

fn old_read<T>(r: varvedb::Result<T>, f: impl FnOnce(T) -> u32) -> OldRead {
    match r {
        Ok(t) => OldRead::Value(f(t)),
        Err(Error::UnknownEventVersion {
            version,
            fingerprint,
            ..
        }) => {
            assert_eq!(fingerprint, Ev::FINGERPRINT);
            // `None` from a handle whose catalog entry predates version 2.
            assert!(matches!(version, None | Some(2)), "{version:?}");
            OldRead::Unknown
        }
        Err(other) => panic!("a read through version 1: {other}"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    /// `Exact(version + offset)`, or `Exact(0)` for an empty id.
    Exact(i8),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        id: u64,
        values: Vec<u32>,
        single: bool,
        expect: Expect,
        with_ids: bool,
    },
    /// Retries the run `[from, from + len)` (clamped) of the `pick`th append
    /// made with ids, with the same ids and `expect`.
    Retry {
        pick: usize,
        from: usize,
        len: usize,
        expect: Expect,
    },
    Get {
        stream: usize,
        id: u64,
        seq: u64,
    },
    GetGlobal(u64),
    IterStream {
        stream: usize,
        id: u64,
        from: u64,
    },
    IterGlobal(u64),
    /// An append to the evolving stream, as version 1 or 2.
    AppendEvolving {
        id: u64,
        values: Vec<u32>,
        single: bool,
        v2: bool,
        expect: Expect,
    },
    GetEvolving {
        id: u64,
        seq: u64,
    },
    IterEvolving {
        id: u64,
        from: u64,
    },
    /// `Varve::migrate` of the evolving stream into version 2.
    Migrate,
    Version {
        stream: usize,
        id: u64,
    },
    Reopen,
    Verify,
}

fn op() -> impl Strategy<Value = Op> {
    let stream = 0..STREAMS.len();
    let id = 0..IDS;
    let expect = prop_oneof![
        3 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        3 => (-2i8..=2).prop_map(Expect::Exact),
    ];
    prop_oneof![
        8 => (stream.clone(), id.clone(), prop::collection::vec(any::<u32>(), 1..8), any::<bool>(), expect.clone(), any::<bool>())
            .prop_map(|(stream, id, values, single, expect, with_ids)| Op::Append {
                stream,
                id,
                single: single && values.len() == 1,
                values,
                expect,
                with_ids,
            }),
        3 => (any::<usize>(), 0usize..8, 1usize..8, expect.clone())
            .prop_map(|(pick, from, len, expect)| Op::Retry { pick, from, len, expect }),
        3 => (stream.clone(), id.clone(), 0u64..12).prop_map(|(stream, id, seq)| Op::Get { stream, id, seq }),
        2 => (0u64..60).prop_map(Op::GetGlobal),
        2 => (stream.clone(), id.clone(), 0u64..12)
            .prop_map(|(stream, id, from)| Op::IterStream { stream, id, from }),
        1 => (0u64..60).prop_map(Op::IterGlobal),
        5 => (id.clone(), prop::collection::vec(any::<u32>(), 1..6), any::<bool>(), prop::bool::weighted(0.3), expect)
            .prop_map(|(id, values, single, v2, expect)| Op::AppendEvolving {
                id,
                single: single && values.len() == 1,
                values,
                v2,
                expect,
            }),
        2 => (id.clone(), 0u64..12).prop_map(|(id, seq)| Op::GetEvolving { id, seq }),
        2 => (id.clone(), 0u64..12).prop_map(|(id, from)| Op::IterEvolving { id, from }),
        1 => Just(Op::Migrate),
        1 => (0..=EVOLVING, id).prop_map(|(stream, id)| Op::Version { stream, id }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Verify),
    ]
}

/// An append made with event ids: `(stream, id, values, ids, positions)`.
type WithIds = (usize, u64, Vec<u32>, Vec<EventId>, Vec<(u64, u64)>);

/// One event of the global log: `(stream, id, stream sequence, value)`.
type Entry = (usize, u64, u64, Value);

/// The model: the global log as `(stream, id, stream sequence, value)`.
#[derive(Default)]
struct Model {
    log: Vec<Entry>,
    /// `(stream, id)` -> globals of its events, in order.
    ids: HashMap<(usize, u64), Vec<u64>>,
    /// Appends made with event ids.
    with_ids: Vec<WithIds>,
    /// The next event id to hand out.
    next_event_id: u128,
    /// Global -> `v` of each evolving event stored as version 1 (written so,
    /// not migrated since).
    stored_v1: HashMap<u64, u32>,
    /// Whether the evolving stream records version 2 (appended, or a
    /// migration ran on it): version 1 can no longer be appended.
    switched: bool,
}

impl Model {
    fn version(&self, stream: usize, id: u64) -> Option<u64> {
        self.ids.get(&(stream, id)).map(|g| g.len() as u64 - 1)
    }

    fn expected(&self, stream: usize, id: u64, expect: Expect) -> ExpectedVersion {
        match expect {
            Expect::Any => ExpectedVersion::Any,
            Expect::NoStream => ExpectedVersion::NoStream,
            Expect::StreamExists => ExpectedVersion::StreamExists,
            Expect::Exact(offset) => {
                let v = self.version(stream, id).unwrap_or(0) as i64 + i64::from(offset);
                ExpectedVersion::Exact(StreamSequence(v.max(0) as u64))
            }
        }
    }

    fn append(&mut self, stream: usize, id: u64, values: &[u32]) -> Vec<(u64, u64)> {
        self.push(stream, id, values.iter().map(|&v| Value::Plain(v)))
    }

    fn push(
        &mut self,
        stream: usize,
        id: u64,
        values: impl IntoIterator<Item = Value>,
    ) -> Vec<(u64, u64)> {
        let positions = self.ids.entry((stream, id)).or_default();
        values
            .into_iter()
            .map(|v| {
                let (seq, global) = (positions.len() as u64, self.log.len() as u64);
                positions.push(global);
                self.log.push((stream, id, seq, v));
                (seq, global)
            })
            .collect()
    }

    fn value(&self, global: u64) -> Value {
        self.log[global as usize].3.clone()
    }

    /// What a read through version 1 sees of the event at `global`.
    fn old_read(&self, global: u64) -> OldRead {
        self.stored_v1
            .get(&global)
            .map_or(OldRead::Unknown, |&v| OldRead::Value(v))
    }

    /// `(stream sequence, global)` of `(stream, id)` from `from`.
    fn positions(&self, stream: usize, id: u64, from: u64) -> Vec<(u64, u64)> {
        self.ids
            .get(&(stream, id))
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .enumerate()
            .skip(from as usize)
            .map(|(seq, &g)| (seq as u64, g))
            .collect()
    }
}

/// The store under test, with long-lived handles and readers (their cached
/// snapshots are part of what is tested).
struct Subject {
    varve: Varve,
    orders: [Stream<Order, 64>; 2],
    notes: Stream<Note, 64>,
    order_readers: [StreamReader<Order>; 2],
    note_reader: StreamReader<Note>,
    /// The evolving stream through both versions, handles opened at once
    /// (so a version-1 handle outlives the switch to version 2).
    old: Events<v1::Ev>,
    new: Events<Ev>,
    old_reader: StreamReader<v1::Ev>,
    new_reader: StreamReader<Ev>,
    log: GlobalReader,
}

impl Subject {
    fn open(dir: &Path) -> Subject {
        let config = VarveConfig {
            durability: Durability::NoSync,
            // Small, so that sequences also grow the map now and then.
            map_size: 64 * 1024,
            ..VarveConfig::default()
        };
        let varve = Varve::with_config(dir, config).unwrap();
        let orders = [
            varve.stream::<Order, 64>(STREAMS[0]).unwrap(),
            varve.stream::<Order, 64>(STREAMS[2]).unwrap(),
        ];
        let notes = varve.stream::<Note, 64>(STREAMS[1]).unwrap();
        let old = varve.events::<v1::Ev>().unwrap();
        let new = varve.events::<Ev>().unwrap();
        Subject {
            order_readers: [orders[0].reader(), orders[1].reader()],
            note_reader: notes.reader(),
            old_reader: old.reader(),
            new_reader: new.reader(),
            old,
            new,
            log: varve.global_reader(),
            orders,
            notes,
            varve,
        }
    }

    /// An append with event ids: its positions and whether it was idempotent.
    fn append_with_ids(
        &mut self,
        stream: usize,
        id: u64,
        values: &[u32],
        ids: &[EventId],
        expected: ExpectedVersion,
    ) -> varvedb::Result<(Vec<(StreamSequence, GlobalSequence)>, bool)> {
        let (id, options) = (
            StreamId(id),
            Append::new().expected(expected).event_ids(ids),
        );
        let done = match stream {
            1 => {
                let events: Vec<Note> = values.iter().map(|&v| note(v)).collect();
                self.notes.append_batch_with(id, &events, options)?
            }
            s => {
                let events: Vec<Order> = values.iter().map(|&v| order(v)).collect();
                self.orders[s / 2].append_batch_with(id, &events, options)?
            }
        };
        let idempotent = done.is_idempotent();
        Ok((done.into_positions(), idempotent))
    }

    fn append(
        &mut self,
        stream: usize,
        id: u64,
        values: &[u32],
        single: bool,
        expected: ExpectedVersion,
    ) -> varvedb::Result<Vec<(StreamSequence, GlobalSequence)>> {
        let id = StreamId(id);
        match stream {
            1 if single => self
                .notes
                .append_expected(id, &note(values[0]), expected)
                .map(|p| vec![p]),
            1 => {
                let events: Vec<Note> = values.iter().map(|&v| note(v)).collect();
                self.notes.append_batch_expected(id, &events, expected)
            }
            s => {
                let handle = &mut self.orders[s / 2];
                if single {
                    handle
                        .append_expected(id, &order(values[0]), expected)
                        .map(|p| vec![p])
                } else {
                    let events: Vec<Order> = values.iter().map(|&v| order(v)).collect();
                    handle.append_batch_expected(id, &events, expected)
                }
            }
        }
    }

    /// An append to the evolving stream, as version 2 or 1.
    fn append_evolving(
        &mut self,
        id: u64,
        values: &[u32],
        single: bool,
        v2: bool,
        expected: ExpectedVersion,
    ) -> varvedb::Result<Vec<(StreamSequence, GlobalSequence)>> {
        let id = StreamId(id);
        match (v2, single) {
            (true, true) => self
                .new
                .append_expected(id, &ev2(values[0]), expected)
                .map(|p| vec![p]),
            (true, false) => {
                let events: Vec<Ev> = values.iter().map(|&v| ev2(v)).collect();
                self.new.append_batch_expected(id, &events, expected)
            }
            (false, true) => self
                .old
                .append_expected(id, &ev1(values[0]), expected)
                .map(|p| vec![p]),
            (false, false) => {
                let events: Vec<v1::Ev> = values.iter().map(|&v| ev1(v)).collect();
                self.old.append_batch_expected(id, &events, expected)
            }
        }
    }

    /// The evolving event at `(id, seq)` by point reads through version 2
    /// and version 1: `(global, value, version 1 read)`.
    fn get_evolving(&mut self, id: u64, seq: u64) -> Option<(u64, Value, OldRead)> {
        let (id, seq) = (StreamId(id), StreamSequence(seq));
        let new = self.new_reader.get_archived(id, seq).unwrap().map(|e| {
            assert_eq!(e.stream_sequence(), seq);
            (e.global_sequence().0, Value::Evolving(seen(&e)))
        });
        let old = match self.old_reader.get_archived(id, seq) {
            Ok(None) => None,
            r => Some(old_read(r, |e| seen_v1(&e.unwrap()))),
        };
        assert_eq!(new.is_some(), old.is_some(), "both versions see the event");
        new.map(|(g, v)| (g, v, old.unwrap()))
    }

    /// The evolving events of `id` from `from` by iteration through version
    /// 2, `(stream sequence, global, value)`, and through version 1, which
    /// ends after its first error.
    #[allow(clippy::type_complexity)]
    fn iter_evolving(&mut self, id: u64, from: u64) -> (Vec<(u64, u64, Value)>, Vec<OldRead>) {
        let (id, from) = (StreamId(id), Some(StreamSequence(from)));
        let new = self
            .new_reader
            .iter_stream(id, from)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.stream_sequence().0,
                    e.global_sequence().0,
                    Value::Evolving(seen(&e)),
                )
            })
            .collect();
        let old = self
            .old_reader
            .iter_stream(id, from)
            .unwrap()
            .map(|e| old_read(e, |e| seen_v1(&e)))
            .collect();
        (new, old)
    }

    /// `(stream sequence, global, value)` of `(stream, id)` from `from`, by iteration.
    fn iter_stream(&mut self, stream: usize, id: u64, from: u64) -> Vec<(u64, u64, Value)> {
        let (id, from) = (StreamId(id), Some(StreamSequence(from)));
        match stream {
            1 => self
                .note_reader
                .iter_stream(id, from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let v = value_of_note(&e.text, e.pinned);
                    (
                        e.stream_sequence().0,
                        e.global_sequence().0,
                        Value::Plain(v),
                    )
                })
                .collect(),
            s => self.order_readers[s / 2]
                .iter_stream(id, from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.stream_sequence().0,
                        e.global_sequence().0,
                        Value::Plain(e.id.to_native() as u32),
                    )
                })
                .collect(),
        }
    }

    /// The event at `(stream, id, seq)` by point read: `(global, value)`.
    fn get(&mut self, stream: usize, id: u64, seq: u64) -> Option<(u64, Value)> {
        let (id, seq) = (StreamId(id), StreamSequence(seq));
        match stream {
            1 => self.note_reader.get_archived(id, seq).unwrap().map(|e| {
                assert_eq!(e.stream_sequence(), seq);
                (
                    e.global_sequence().0,
                    Value::Plain(value_of_note(&e.text, e.pinned)),
                )
            }),
            s => self.order_readers[s / 2]
                .get_archived(id, seq)
                .unwrap()
                .map(|e| {
                    assert_eq!(e.stream_sequence(), seq);
                    (e.global_sequence().0, Value::Plain(e.id.to_native() as u32))
                }),
        }
    }

    fn version(&mut self, stream: usize, id: u64) -> Option<u64> {
        let id = StreamId(id);
        let (by_handle, by_reader) = match stream {
            EVOLVING => {
                let old = (self.old.version(id), self.old_reader.version(id));
                let new = (self.new.version(id), self.new_reader.version(id));
                assert_eq!(old.0.as_ref().unwrap(), new.0.as_ref().unwrap());
                assert_eq!(old.1.unwrap(), new.1.as_ref().unwrap().clone());
                new
            }
            1 => (self.notes.version(id), self.note_reader.version(id)),
            s => (
                self.orders[s / 2].version(id),
                self.order_readers[s / 2].version(id),
            ),
        };
        let v = by_handle.unwrap();
        assert_eq!(v, by_reader.unwrap(), "handle and reader agree");
        v.map(|s| s.0)
    }
}

/// Notes carry their value in the digits that end their text.
fn value_of_note(text: &rkyv::string::ArchivedString, pinned: bool) -> u32 {
    let digits = text.trim_start_matches('n');
    let v: u32 = digits.parse().unwrap();
    assert_eq!(note(v).pinned, pinned);
    assert_eq!(note(v).text, text.as_str());
    v
}

/// What the global reader says about one event: `(stream, id, seq, value)`,
/// and for an evolving event what a read through version 1 sees.
fn global_entry(e: &varvedb::GlobalEvent) -> (Entry, Option<OldRead>) {
    if e.stream_name() == v1::Ev::STREAM {
        assert!(e.is::<Ev>());
        assert!(matches!(
            e.archived_plain::<Order>(),
            Err(Error::SchemaMismatch { .. })
        ));
        let value = Value::Evolving(seen(e.archived::<Ev>().unwrap()));
        let old = old_read(e.archived::<v1::Ev>(), seen_v1);
        assert_eq!(e.is::<v1::Ev>(), old != OldRead::Unknown);
        let entry = (EVOLVING, e.stream_id().0, e.stream_sequence().0, value);
        return (entry, Some(old));
    }
    let stream = STREAMS.iter().position(|s| *s == e.stream_name()).unwrap();
    let value = if stream == 1 {
        assert!(e.is_plain::<Note>() && !e.is_plain::<Order>());
        let n = e.archived_plain::<Note>().unwrap();
        value_of_note(&n.text, n.pinned)
    } else {
        assert!(matches!(
            e.archived_plain::<Note>(),
            Err(Error::TypeMismatch { .. })
        ));
        e.archived_plain::<Order>().unwrap().id.to_native() as u32
    };
    let entry = (
        stream,
        e.stream_id().0,
        e.stream_sequence().0,
        Value::Plain(value),
    );
    (entry, None)
}

/// What the model says the global reader must say about `global`.
fn model_entry(model: &Model, global: u64) -> (Entry, Option<OldRead>) {
    let entry = model.log[global as usize].clone();
    let old = (entry.0 == EVOLVING).then(|| model.old_read(global));
    (entry, old)
}

/// Every evolving read (iteration of each id through both versions, and
/// the whole global log) against the model.
fn check_evolving(s: &mut Subject, model: &Model) {
    for id in 0..IDS {
        let positions = model.positions(EVOLVING, id, 0);
        let want: Vec<(u64, u64, Value)> = positions
            .iter()
            .map(|&(seq, g)| (seq, g, model.value(g)))
            .collect();
        let (new, old) = s.iter_evolving(id, 0);
        assert_eq!(new, want, "evolving id {id}");
        assert_eq!(old, old_iteration(model, &positions), "evolving id {id}");
    }
    let got: Vec<_> = s
        .log
        .iter_from(GlobalSequence(0))
        .unwrap()
        .map(|e| global_entry(&e.unwrap()))
        .collect();
    let want: Vec<_> = (0..model.log.len() as u64)
        .map(|g| model_entry(model, g))
        .collect();
    assert_eq!(got, want, "the global log");
}

/// What an iteration through version 1 yields: the events up to the first
/// one it cannot read, that one as an error, then nothing.
fn old_iteration(model: &Model, positions: &[(u64, u64)]) -> Vec<OldRead> {
    let mut out = Vec::new();
    for &(_, g) in positions {
        let read = model.old_read(g);
        out.push(read);
        if read == OldRead::Unknown {
            break;
        }
    }
    out
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut subject = Some(Subject::open(dir.path()));
    for op in ops {
        let s = subject.as_mut().unwrap();
        match op.clone() {
            Op::Append {
                stream,
                id,
                values,
                single,
                expect,
                with_ids,
            } => {
                let expected = model.expected(stream, id, expect);
                let actual = model.version(stream, id).map(StreamSequence);
                let ids: Vec<EventId> = (0..values.len() as u128)
                    .map(|i| EventId::from_u128(model.next_event_id + i))
                    .collect();
                model.next_event_id += values.len() as u128;
                let result = if with_ids {
                    s.append_with_ids(stream, id, &values, &ids, expected).map(
                        |(positions, idempotent)| {
                            assert!(!idempotent, "{op:?}: fresh ids");
                            positions
                        },
                    )
                } else {
                    s.append(stream, id, &values, single, expected)
                };
                match result {
                    Ok(positions) => {
                        assert!(expected.matches(actual), "{op:?} should conflict");
                        let want = model.append(stream, id, &values);
                        let got: Vec<(u64, u64)> =
                            positions.iter().map(|(s, g)| (s.0, g.0)).collect();
                        assert_eq!(got, want, "{op:?}");
                        if with_ids {
                            model.with_ids.push((stream, id, values, ids, want));
                        }
                    }
                    Err(Error::VersionConflict {
                        actual: reported, ..
                    }) => {
                        assert!(!expected.matches(actual), "{op:?} should succeed");
                        assert_eq!(reported, actual);
                    }
                    Err(other) => panic!("{op:?}: {other}"),
                }
            }
            Op::Retry {
                pick,
                from,
                len,
                expect,
            } => {
                if model.with_ids.is_empty() {
                    continue;
                }
                let (stream, id, values, ids, positions) =
                    model.with_ids[pick % model.with_ids.len()].clone();
                let from = from % values.len();
                let run = from..(from + len).min(values.len());
                let expected = model.expected(stream, id, expect);
                let (got, idempotent) = s
                    .append_with_ids(
                        stream,
                        id,
                        &values[run.clone()],
                        &ids[run.clone()],
                        expected,
                    )
                    .unwrap_or_else(|e| panic!("{op:?}: {e}"));
                assert!(idempotent, "{op:?}");
                let got: Vec<(u64, u64)> = got.iter().map(|(s, g)| (s.0, g.0)).collect();
                assert_eq!(got, positions[run.clone()], "{op:?}");
                let by_id = s.log.get_by_id(ids[run.start]).unwrap().expect("stored");
                assert_eq!(by_id.global_sequence().0, positions[run.start].1);
                assert_eq!(by_id.metadata().event_id(), Some(ids[run.start]));
            }
            Op::Get { stream, id, seq } => {
                let want = model
                    .ids
                    .get(&(stream, id))
                    .and_then(|g| g.get(seq as usize))
                    .map(|&g| (g, model.value(g)));
                assert_eq!(s.get(stream, id, seq), want, "{op:?}");
            }
            Op::GetGlobal(g) => {
                let got = s.log.get(GlobalSequence(g)).unwrap().map(|e| {
                    assert_eq!(e.global_sequence(), GlobalSequence(g));
                    global_entry(&e)
                });
                let want = (g < model.log.len() as u64).then(|| model_entry(&model, g));
                assert_eq!(got, want, "{op:?}");
            }
            Op::IterStream { stream, id, from } => {
                let want: Vec<(u64, u64, Value)> = model
                    .positions(stream, id, from)
                    .into_iter()
                    .map(|(seq, g)| (seq, g, model.value(g)))
                    .collect();
                assert_eq!(s.iter_stream(stream, id, from), want, "{op:?}");
            }
            Op::IterGlobal(from) => {
                let got: Vec<(Entry, Option<OldRead>)> = s
                    .log
                    .iter_from(GlobalSequence(from))
                    .unwrap()
                    .enumerate()
                    .map(|(i, e)| {
                        let e = e.unwrap();
                        assert_eq!(e.global_sequence().0, from + i as u64);
                        global_entry(&e)
                    })
                    .collect();
                let want: Vec<_> = (from..model.log.len() as u64)
                    .map(|g| model_entry(&model, g))
                    .collect();
                assert_eq!(got, want, "{op:?}");
                assert_eq!(s.log.end().unwrap().0, model.log.len() as u64);
            }
            Op::AppendEvolving {
                id,
                values,
                single,
                v2,
                expect,
            } => {
                let expected = model.expected(EVOLVING, id, expect);
                let actual = model.version(EVOLVING, id).map(StreamSequence);
                let result = s.append_evolving(id, &values, single, v2, expected);
                if !v2 && model.switched {
                    match result {
                        Err(Error::OutdatedEventVersion {
                            newest, program, ..
                        }) => assert_eq!((newest, program), (2, 1), "{op:?}"),
                        other => panic!("{op:?}: expected OutdatedEventVersion, got {other:?}"),
                    }
                    assert_eq!(s.log.end().unwrap().0, model.log.len() as u64, "{op:?}");
                    continue;
                }
                match result {
                    Ok(positions) => {
                        assert!(expected.matches(actual), "{op:?} should conflict");
                        let written = values
                            .iter()
                            .map(|&v| Value::Evolving(if v2 { ev2(v) } else { upcast_of(v) }));
                        let want = model.push(EVOLVING, id, written);
                        if v2 {
                            model.switched = true;
                        } else {
                            for (&(_, g), &v) in want.iter().zip(&values) {
                                model.stored_v1.insert(g, v);
                            }
                        }
                        let got: Vec<(u64, u64)> =
                            positions.iter().map(|(s, g)| (s.0, g.0)).collect();
                        assert_eq!(got, want, "{op:?}");
                    }
                    Err(Error::VersionConflict {
                        actual: reported, ..
                    }) => {
                        assert!(!expected.matches(actual), "{op:?} should succeed");
                        assert_eq!(reported, actual);
                    }
                    Err(other) => panic!("{op:?}: {other}"),
                }
            }
            Op::GetEvolving { id, seq } => {
                let want = model
                    .ids
                    .get(&(EVOLVING, id))
                    .and_then(|g| g.get(seq as usize))
                    .map(|&g| (g, model.value(g), model.old_read(g)));
                assert_eq!(s.get_evolving(id, seq), want, "{op:?}");
            }
            Op::IterEvolving { id, from } => {
                let positions = model.positions(EVOLVING, id, from);
                let want: Vec<(u64, u64, Value)> = positions
                    .iter()
                    .map(|&(seq, g)| (seq, g, model.value(g)))
                    .collect();
                let (new, old) = s.iter_evolving(id, from);
                assert_eq!(new, want, "{op:?}");
                assert_eq!(old, old_iteration(&model, &positions), "{op:?}");
            }
            Op::Migrate => {
                let report = s
                    .varve
                    .migrate::<Ev>()
                    .unwrap_or_else(|e| panic!("{op:?}: {e}"));
                assert!(report.verify.is_ok(), "{:?}", report.verify.problems);
                assert_eq!(report.verify.events, model.log.len() as u64);
                assert_eq!(report.events, model.stored_v1.len() as u64, "{report:?}");
                model.stored_v1.clear();
                if model.ids.keys().any(|&(stream, _)| stream == EVOLVING) {
                    model.switched = true;
                }
                check_evolving(s, &model);
            }
            Op::Version { stream, id } => {
                assert_eq!(s.version(stream, id), model.version(stream, id), "{op:?}");
            }
            Op::Reopen => {
                drop(subject.take());
                subject = Some(Subject::open(dir.path()));
            }
            Op::Verify => {
                let report = s.varve.verify().unwrap();
                assert!(report.is_ok(), "{:?}", report.problems);
                assert_eq!(report.events, model.log.len() as u64);
            }
        }
    }
    let s = subject.as_mut().unwrap();
    let report = s.varve.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, model.log.len() as u64);
    check_evolving(s, &model);
    for stream in 0..=EVOLVING {
        for id in 0..IDS {
            assert_eq!(s.version(stream, id), model.version(stream, id));
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_store_agrees_with_an_in_memory_log(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}
