//! Entry points for the fuzz targets in `fuzz/` (a crate outside the
//! workspace): the pure record codec of `storage::block`, with no LMDB. Not a
//! public API: it may change in any release.
//!
//! The fuzz target feeds untrusted bytes to `decode_block`, and builds valid
//! blocks with `encode_block` to mutate them. A random mutation almost never
//! survives the header's checksum, so `fix_checksums` recomputes every
//! checksum of a block: that lets the fuzzer explore the bounds checks behind
//! the checksums.

use rkyv::util::AlignedVec;

use crate::storage::block::{self, BlockBuilder, BlockHeader, BlockView};

/// One block, decoded: the header fields the codec validated and, per
/// event, its payload or why it was rejected.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The block's stream id.
    pub stream_id: u64,
    /// The block's first stream sequence.
    pub first_stream_seq: u64,
    /// The block's first global sequence (equal to the key).
    pub first_global: u64,
    /// Per event: its payload, or the error reading it.
    pub events: Vec<Result<&'a [u8], String>>,
}

/// Parses `bytes` as the block stored under `key` and reads every event, as
/// every read path of the store does. `Err` if the header is rejected.
pub fn decode_block(key: u64, bytes: &[u8]) -> Result<Decoded<'_>, String> {
    let view = BlockView::parse(key, bytes).map_err(|e| e.0)?;
    let h = *view.header();
    // `entry` checks the slot as `event` does, and parses its metadata.
    let events = (0..h.count)
        .map(|i| view.entry(i).map(|(_, payload)| payload).map_err(|e| e.0))
        .collect();
    Ok(Decoded {
        stream_id: h.stream_id,
        first_stream_seq: h.first_stream_seq,
        first_global: h.first_global,
        events,
    })
}

/// Builds a block of `payloads` (each an rkyv archive, or any bytes) as the
/// writer does, stamped with the given positions.
pub fn encode_block(
    payloads: &[&[u8]],
    stream_id: u64,
    first_stream_seq: u64,
    first_global: u64,
) -> AlignedVec<16> {
    let mut builder = BlockBuilder::with_capacity(0);
    builder.start(payloads.len());
    for payload in payloads {
        let mut buf = builder.begin_event();
        buf.extend_from_slice(payload);
        if builder.finish_event(buf).is_err() {
            unreachable!("a fuzz payload is far below the 4 GiB slot limit");
        }
    }
    let header = BlockHeader {
        stream_tag: 1,
        stream_id,
        first_stream_seq,
        fingerprint: 0x5eed,
        count: payloads.len() as u32,
        meta_flags: 0,
        meta_len: 0,
        first_global,
        committed_at_micros: 0,
    };
    let mut out = AlignedVec::<16>::new();
    out.extend_from_slice(builder.seal(&header));
    out
}

/// The first global sequence a block's header claims (its key, if intact).
pub fn claimed_key(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(40..48)?.try_into().ok()?))
}

/// The `index` value of a run of `count` events from global `first_global`,
/// stored under the 20-byte index key `key` (tag, stream id, first sequence,
/// big endian), with its checksum: for tests that rewrite a store's index as
/// a forger would. `None` for a key of another length.
pub fn encode_run(key: &[u8], first_global: u64, count: u64) -> Option<Vec<u8>> {
    let key: &[u8; 20] = key.try_into().ok()?;
    let (_, _, first_seq) = crate::storage::keys::parse_index_key(key)?;
    let run = crate::storage::keys::Run {
        first_seq,
        first_global,
        count,
    };
    Some(run.encode(key).to_vec())
}

/// Recomputes the header checksum and the checksum of every event whose
/// slot lies inside the block, so that mutated bytes reach the checks behind
/// them.
pub fn fix_checksums(bytes: &mut [u8]) {
    block::restamp_checksums(bytes);
}

/// The checksum a block header carries in bytes 60..64, over its first 60.
pub fn header_checksum(header: &[u8]) -> u32 {
    block::header_checksum(header)
}

/// The fixed keyring the encrypted-block entry points use.
fn fixed_ring() -> crate::storage::crypt::Keyring {
    crate::storage::crypt::Keyring::fixed([7; 16], [9; 32])
}

/// Seals the plaintext block `bytes` stored under `key` as an encrypted
/// store does (a fixed store id and data key; a random nonce).
pub fn seal_block(key: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Only a failing random source fails; the fuzzer then has nothing to do.
    let _ = fixed_ring().seal_block(key, bytes, &mut out);
    out
}

/// Opens `bytes`, an encrypted block stored under `key` (sealed by
/// [`seal_block`]), and decodes it as every read path does: the opened
/// plaintext, or why it was refused.
pub fn open_block(key: u64, bytes: &[u8]) -> Result<AlignedVec<16>, String> {
    block::parse_header(key, bytes).map_err(|e| e.0)?;
    let mut plain = crate::storage::crypt::PlainBuf::default();
    fixed_ring()
        .open_block(key, bytes, &mut plain)
        .map_err(|e| e.to_string())?;
    let mut out = AlignedVec::<16>::new();
    out.extend_from_slice(plain.as_slice());
    BlockView::parse(key, &out).map_err(|e| e.0)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_block_decodes_to_its_payloads() {
        let block = encode_block(&[b"one", b"", b"three"], 7, 2, 40);
        let decoded = decode_block(40, &block).unwrap();
        assert_eq!((decoded.stream_id, decoded.first_stream_seq), (7, 2));
        let events: Vec<&[u8]> = decoded.events.into_iter().map(Result::unwrap).collect();
        assert_eq!(events, [&b"one"[..], b"", b"three"]);
        assert_eq!(claimed_key(&block), Some(40));
    }

    #[test]
    fn fixing_checksums_leaves_a_valid_block_unchanged() {
        let block = encode_block(&[b"alpha", b"beta"], 1, 0, 3);
        let mut fixed = block.to_vec();
        fix_checksums(&mut fixed);
        assert_eq!(&fixed[..], &block[..]);
    }

    #[test]
    fn fixing_checksums_lets_a_changed_payload_through() {
        let block = encode_block(&[b"alpha", b"beta"], 1, 0, 3);
        let mut bytes = block.to_vec();
        let at = bytes.len() - 16; // inside "beta"'s slot
        bytes[at] ^= 1;
        assert!(decode_block(3, &bytes).unwrap().events[1].is_err());
        fix_checksums(&mut bytes);
        assert_eq!(decode_block(3, &bytes).unwrap().events[1], Ok(&b"ceta"[..]));
    }
}
