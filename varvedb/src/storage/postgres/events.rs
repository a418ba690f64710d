//! Blocks in and out of the `varvedb_events` table: one row per event.
//!
//! The engine above the seam writes and reads *blocks* (see [`block`](super::super::block)).
//! On PostgreSQL a block is decomposed into one row per event (global
//! sequence, stream tag, stream id, stream sequence, event id, fingerprint,
//! commit time, metadata prefix, payload) plus, on the block's first row,
//! the block's header and entry table (`block_head`, with its checksums).
//! Reading recomposes the block byte for byte in an aligned buffer; the
//! caller then validates it exactly as a block read from the LMDB map
//! (header checksum, key binding, per-event checksums, rkyv), so bytes from
//! the server are never trusted.

use rkyv::util::AlignedVec;

use super::super::block::{BlockView, HEADER_LEN, SLOT_ALIGN};

const ENTRY_LEN: usize = 8;

fn align_up(n: usize) -> usize {
    n.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// The length of a block's header and entry table, padded.
fn base_len(count: usize) -> usize {
    align_up(HEADER_LEN + ENTRY_LEN * count)
}

/// One event row, ready to insert.
pub(crate) struct EventRow {
    pub(crate) global: i64,
    pub(crate) stream_tag: i32,
    pub(crate) stream_id: i64,
    pub(crate) stream_seq: i64,
    pub(crate) event_id: Option<Vec<u8>>,
    pub(crate) fingerprint: i64,
    pub(crate) committed_at: i64,
    pub(crate) metadata: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) block_first: i64,
    pub(crate) block_head: Option<Vec<u8>>,
}

/// A block's events as rows; `None` if the block does not parse (the
/// writer only ever hands over blocks it sealed, so that is a bug).
pub(crate) fn decompose(key: u64, bytes: &[u8]) -> Option<Vec<EventRow>> {
    let view = BlockView::parse(key, bytes).ok()?;
    let h = *view.header();
    let count = h.count as usize;
    let base = base_len(count);
    if base > bytes.len() {
        return None;
    }
    let mut rows = Vec::with_capacity(count);
    for i in 0..h.count {
        let (prefix, payload) = view.slot(i).ok()?;
        let event_id = (h.meta_flags & super::super::block::META_EVENT_ID != 0)
            .then(|| prefix.get(..16).map(<[u8]>::to_vec))
            .flatten();
        rows.push(EventRow {
            global: (h.first_global + u64::from(i)) as i64,
            stream_tag: h.stream_tag as i32,
            stream_id: h.stream_id as i64,
            stream_seq: (h.first_stream_seq + u64::from(i)) as i64,
            event_id,
            fingerprint: h.fingerprint as i64,
            committed_at: h.committed_at_micros as i64,
            metadata: prefix.to_vec(),
            payload: payload.to_vec(),
            block_first: h.first_global as i64,
            block_head: (i == 0).then(|| bytes[..base].to_vec()),
        });
    }
    Some(rows)
}

/// The parts of one fetched row a block is rebuilt from.
pub(crate) struct Fetched<'r> {
    pub(crate) global: u64,
    pub(crate) block_head: Option<&'r [u8]>,
    pub(crate) metadata: &'r [u8],
    pub(crate) payload: &'r [u8],
}

/// What [`recompose`] found at the start of `rows`.
pub(crate) enum Recomposed {
    /// A whole block: its first global sequence, bytes, and how many rows
    /// it took.
    Block(u64, AlignedVec<16>, usize),
    /// The block starting here has `count` events, more than `rows` holds.
    Incomplete { first: u64, count: u64 },
    /// The rows do not form a block (no header where one must be, a
    /// header of the wrong length, sequences not contiguous).
    Malformed(String),
}

/// Rebuilds the block whose first event is `rows[0]`.
pub(crate) fn recompose(rows: &[Fetched<'_>]) -> Recomposed {
    let Some(first) = rows.first() else {
        return Recomposed::Malformed("no rows".into());
    };
    let Some(head) = first.block_head else {
        return Recomposed::Malformed(format!(
            "event row {} starts no block but is fetched as the start of one",
            first.global
        ));
    };
    if head.len() < HEADER_LEN {
        return Recomposed::Malformed(format!("block head of {} bytes", head.len()));
    }
    let count = u32::from_le_bytes([head[32], head[33], head[34], head[35]]) as usize;
    let meta_len = u32::from_le_bytes([head[36], head[37], head[38], head[39]]) as usize;
    if head.len() != base_len(count) {
        return Recomposed::Malformed(format!(
            "block head of {} bytes for {count} events",
            head.len()
        ));
    }
    if rows.len() < count {
        return Recomposed::Incomplete {
            first: first.global,
            count: count as u64,
        };
    }
    let body: usize = rows[..count]
        .iter()
        .map(|r| align_up(align_up(meta_len) + r.payload.len()))
        .sum();
    let mut out = AlignedVec::<16>::with_capacity(head.len() + body);
    out.extend_from_slice(head);
    for (i, row) in rows[..count].iter().enumerate() {
        if row.global != first.global + i as u64 || (i > 0 && row.block_head.is_some()) {
            return Recomposed::Malformed(format!(
                "the event rows of the block at {} are not contiguous",
                first.global
            ));
        }
        let aligned = align_up(out.len());
        pad(&mut out, aligned);
        let start = out.len();
        out.extend_from_slice(row.metadata);
        pad(&mut out, start + align_up(meta_len));
        out.extend_from_slice(row.payload);
    }
    let total = align_up(out.len());
    pad(&mut out, total);
    Recomposed::Block(first.global, out, count)
}

fn pad(out: &mut AlignedVec<16>, to: usize) {
    while out.len() < to {
        out.push(0);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::storage::block::{BlockBuilder, BlockHeader, RawMeta};

    fn block(with_meta: bool) -> Vec<u8> {
        let mut b = BlockBuilder::with_capacity(0);
        if with_meta {
            b.start_with_meta(3, 0x01 | 0x08, 5);
        } else {
            b.start(3);
        }
        for i in 0..3u8 {
            let mut buf = if with_meta {
                let id = [i; 16];
                b.begin_event_with(&RawMeta {
                    event_id: Some(id),
                    user: Some(&[1, 2, 3][..usize::from(i)]),
                    ..RawMeta::default()
                })
            } else {
                b.begin_event()
            };
            buf.extend_from_slice(&vec![i + 7; 5 + usize::from(i) * 9]);
            b.finish_event(buf).unwrap();
        }
        let (meta_flags, meta_len) = b.meta();
        let header = BlockHeader {
            stream_tag: 4,
            stream_id: 9,
            first_stream_seq: 2,
            fingerprint: 77,
            count: 3,
            meta_flags,
            meta_len,
            first_global: 40,
            committed_at_micros: 5,
        };
        b.seal(&header).to_vec()
    }

    #[test]
    fn a_block_decomposed_into_rows_recomposes_byte_for_byte() {
        for with_meta in [false, true] {
            let bytes = block(with_meta);
            let rows = decompose(40, &bytes).unwrap();
            assert_eq!(rows.len(), 3);
            assert_eq!(rows[1].global, 41);
            assert_eq!(rows[2].stream_seq, 4);
            assert_eq!(rows[0].event_id.is_some(), with_meta);
            let fetched: Vec<Fetched<'_>> = rows
                .iter()
                .map(|r| Fetched {
                    global: r.global as u64,
                    block_head: r.block_head.as_deref(),
                    metadata: &r.metadata,
                    payload: &r.payload,
                })
                .collect();
            let Recomposed::Block(first, out, used) = recompose(&fetched) else {
                panic!("not recomposed");
            };
            assert_eq!((first, used), (40, 3));
            assert_eq!(&out[..], &bytes[..]);
            assert!(matches!(
                recompose(&fetched[..2]),
                Recomposed::Incomplete {
                    first: 40,
                    count: 3
                }
            ));
            assert!(matches!(recompose(&fetched[1..]), Recomposed::Malformed(_)));
        }
    }
}
