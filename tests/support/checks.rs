//! Checks of a store's global log shared by the conformance and reliability
//! tests: batches whose events say where they belong, and the promises a log
//! must keep (dense sequences, whole batches).

use std::collections::{BTreeMap, HashMap};

use varvedb::{GlobalSequence, Varve};

use crate::Order;

/// Batch `b` of writer `w`: `n` orders whose notes say where they belong.
pub fn batch(w: u64, b: u64, n: u64) -> Vec<Order> {
    (0..n)
        .map(|i| Order {
            id: w * 1_000_000 + b * 100 + i,
            quantity: (n as u32) * 10 + i as u32,
            note: format!("w{w} b{b} {i}/{n}"),
        })
        .collect()
}

/// `(writer, batch, index, size)` from a note [`batch`] wrote.
pub fn parse_note(note: &str) -> (u64, u64, u64, u64) {
    let mut parts = note.split(' ');
    let w = parts.next().and_then(|p| p.strip_prefix('w')?.parse().ok());
    let b = parts.next().and_then(|p| p.strip_prefix('b')?.parse().ok());
    let (i, n) = parts
        .next()
        .and_then(|p| p.split_once('/'))
        .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
        .unwrap_or_else(|| panic!("not a note of `batch`: {note:?}"));
    (
        w.unwrap_or_else(|| panic!("{note:?}")),
        b.unwrap_or_else(|| panic!("{note:?}")),
        i,
        n,
    )
}

/// One event of the global log, as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its global sequence.
    pub global: u64,
    /// Its stream's name.
    pub stream: String,
    /// Its stream id.
    pub id: u64,
    /// Its stream sequence.
    pub seq: u64,
    /// The note of an `"orders"` event.
    pub note: Option<String>,
}

/// The global log from `from` on, as one read (one snapshot) sees it.
pub fn read_log(varve: &Varve, from: u64) -> Vec<Seen> {
    varve
        .global_reader()
        .iter_from(GlobalSequence(from))
        .expect("iterate")
        .map(|e| {
            let e = e.expect("read the log");
            let note = (e.stream_name() == "orders").then(|| {
                e.archived_plain::<Order>()
                    .expect("an order")
                    .note
                    .to_string()
            });
            Seen {
                global: e.global_sequence().0,
                stream: e.stream_name().to_string(),
                id: e.stream_id().0,
                seq: e.stream_sequence().0,
                note,
            }
        })
        .collect()
}

/// The whole global log, checked: global sequences 0.. without a gap, each
/// `(stream, id)`'s stream sequences 0.. without a gap, in global order.
pub fn dense_log(varve: &Varve) -> Vec<Seen> {
    let end = varve.global_reader().end().expect("end").0;
    let events = read_log(varve, 0);
    assert!(
        events.len() as u64 >= end,
        "the log holds at least `end` events"
    );
    let mut next: HashMap<(String, u64), u64> = HashMap::new();
    for (g, e) in events.iter().enumerate() {
        assert_eq!(e.global, g as u64, "a gap in the global log");
        let key = (e.stream.clone(), e.id);
        let want = next.entry(key.clone()).or_insert(0);
        assert_eq!(e.seq, *want, "a gap in stream {key:?} at global {g}");
        *want += 1;
    }
    events
}

/// The notes of the `"orders"` events of `events`, by global sequence.
pub fn order_notes(events: &[Seen]) -> BTreeMap<u64, String> {
    events
        .iter()
        .filter_map(|e| Some((e.global, e.note.clone()?)))
        .collect()
}

/// Every batch in `notes` whole and contiguous: its events at consecutive
/// global sequences, indexes 0..n. Returns the batches `(writer, batch) ->
/// first global`.
pub fn whole_batches(notes: &BTreeMap<u64, String>) -> BTreeMap<(u64, u64), u64> {
    let mut batches = BTreeMap::new();
    let mut open: Option<(u64, u64, u64, u64)> = None; // w, b, next index, size
    for (&g, note) in notes {
        let (w, b, i, n) = parse_note(note);
        match open {
            Some((ow, ob, oi, on)) if oi < on => {
                assert_eq!(
                    (w, b, i, n),
                    (ow, ob, oi, on),
                    "batch w{ow} b{ob} interrupted at {g}"
                );
            }
            _ => {
                assert_eq!(i, 0, "batch w{w} b{b} starts at its event {i} (global {g})");
                assert!(batches.insert((w, b), g).is_none(), "batch w{w} b{b} twice");
            }
        }
        open = Some((w, b, i + 1, n));
    }
    if let Some((w, b, i, n)) = open {
        assert_eq!(i, n, "batch w{w} b{b} is partial: {i} of {n} events");
    }
    batches
}
