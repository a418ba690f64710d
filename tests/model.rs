//! The store behaves like a plain in-memory log: random sequences of appends,
//! batches, expected-version appends, appends with event ids and their
//! retries (whole, or any run of them, with any expected version), point
//! reads, iterations from random positions and reopens, run against both,
//! always agree.
//!
//! `PROPTEST_CASES` sets the number of sequences (64 by default).

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{
    Append, Durability, Error, EventId, ExpectedVersion, GlobalReader, GlobalSequence, Stream,
    StreamId, StreamReader, StreamSequence, Varve, VarveConfig,
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
        3 => (any::<usize>(), 0usize..8, 1usize..8, expect)
            .prop_map(|(pick, from, len, expect)| Op::Retry { pick, from, len, expect }),
        3 => (stream.clone(), id.clone(), 0u64..12).prop_map(|(stream, id, seq)| Op::Get { stream, id, seq }),
        2 => (0u64..60).prop_map(Op::GetGlobal),
        2 => (stream.clone(), id.clone(), 0u64..12)
            .prop_map(|(stream, id, from)| Op::IterStream { stream, id, from }),
        1 => (0u64..60).prop_map(Op::IterGlobal),
        1 => (stream, id).prop_map(|(stream, id)| Op::Version { stream, id }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Verify),
    ]
}

/// An append made with event ids: `(stream, id, values, ids, positions)`.
type WithIds = (usize, u64, Vec<u32>, Vec<EventId>, Vec<(u64, u64)>);

/// The model: the global log as `(stream, id, stream sequence, value)`.
#[derive(Default)]
struct Model {
    log: Vec<(usize, u64, u64, u32)>,
    /// `(stream, id)` -> globals of its events, in order.
    ids: HashMap<(usize, u64), Vec<u64>>,
    /// Appends made with event ids.
    with_ids: Vec<WithIds>,
    /// The next event id to hand out.
    next_event_id: u128,
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
        let positions = self.ids.entry((stream, id)).or_default();
        values
            .iter()
            .map(|&v| {
                let (seq, global) = (positions.len() as u64, self.log.len() as u64);
                positions.push(global);
                self.log.push((stream, id, seq, v));
                (seq, global)
            })
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
        Subject {
            order_readers: [orders[0].reader(), orders[1].reader()],
            note_reader: notes.reader(),
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

    /// `(stream sequence, global, value)` of `(stream, id)` from `from`, by iteration.
    fn iter_stream(&mut self, stream: usize, id: u64, from: u64) -> Vec<(u64, u64, u32)> {
        let (id, from) = (StreamId(id), Some(StreamSequence(from)));
        match stream {
            1 => self
                .note_reader
                .iter_stream(id, from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let v = value_of_note(&e.text, e.pinned);
                    (e.stream_sequence().0, e.global_sequence().0, v)
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
                        e.id.to_native() as u32,
                    )
                })
                .collect(),
        }
    }

    /// The event at `(stream, id, seq)` by point read: `(global, value)`.
    fn get(&mut self, stream: usize, id: u64, seq: u64) -> Option<(u64, u32)> {
        let (id, seq) = (StreamId(id), StreamSequence(seq));
        match stream {
            1 => self.note_reader.get_archived(id, seq).unwrap().map(|e| {
                assert_eq!(e.stream_sequence(), seq);
                (e.global_sequence().0, value_of_note(&e.text, e.pinned))
            }),
            s => self.order_readers[s / 2]
                .get_archived(id, seq)
                .unwrap()
                .map(|e| {
                    assert_eq!(e.stream_sequence(), seq);
                    (e.global_sequence().0, e.id.to_native() as u32)
                }),
        }
    }

    fn version(&mut self, stream: usize, id: u64) -> Option<u64> {
        let id = StreamId(id);
        let (by_handle, by_reader) = match stream {
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

/// What the global reader says about one event: `(stream, id, seq, value)`.
fn global_entry(e: &varvedb::GlobalEvent) -> (usize, u64, u64, u32) {
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
    (stream, e.stream_id().0, e.stream_sequence().0, value)
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
                    .map(|&g| (g, model.log[g as usize].3));
                assert_eq!(s.get(stream, id, seq), want, "{op:?}");
            }
            Op::GetGlobal(g) => {
                let got = s.log.get(GlobalSequence(g)).unwrap().map(|e| {
                    assert_eq!(e.global_sequence(), GlobalSequence(g));
                    global_entry(&e)
                });
                assert_eq!(got, model.log.get(g as usize).copied(), "{op:?}");
            }
            Op::IterStream { stream, id, from } => {
                let want: Vec<(u64, u64, u32)> = model
                    .ids
                    .get(&(stream, id))
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .enumerate()
                    .skip(from as usize)
                    .map(|(seq, &g)| (seq as u64, g, model.log[g as usize].3))
                    .collect();
                assert_eq!(s.iter_stream(stream, id, from), want, "{op:?}");
            }
            Op::IterGlobal(from) => {
                let got: Vec<(usize, u64, u64, u32)> = s
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
                let want = model.log.get(from as usize..).unwrap_or(&[]);
                assert_eq!(got, want, "{op:?}");
                assert_eq!(s.log.end().unwrap().0, model.log.len() as u64);
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
    for stream in 0..STREAMS.len() {
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
