//! The on-disk record format: a *block* of one or more events of one stream id.
//!
//! A block is the value stored under its first global sequence in the `events`
//! database. Every append writes exactly one block (a single event is a block of
//! one), so a batch of a thousand events costs one B-tree insert, and a scan walks
//! contiguous memory.
//!
//! ```text
//! offset  size  field (little endian)
//! 0       1     format version (1)
//! 1       1     flags (0; reserved)
//! 2       2     header length (64)
//! 4       4     stream tag (interned stream name)
//! 8       8     stream id
//! 16      8     first stream sequence
//! 24      8     type fingerprint
//! 32      4     event count (>= 1)
//! 36      4     per-event metadata length (0 in format 1; room for event ids, timestamps)
//! 40      8     first global sequence (must equal the key)
//! 48      8     commit time, microseconds since the Unix epoch
//! 56      4     reserved (0)
//! 60      4     CRC-32 of bytes 0..60
//! 64      8*n   entry table: per event, u32 end offset of its slot, u32 CRC-32 of (index, slot)
//! ..      pad   zeros up to a multiple of 16
//! base    ..    slots: event i occupies [start_i, end_i) from `base`, start_0 = 0,
//!               start_i = end_{i-1} rounded up to 16; total length padded to 16
//! ```
//!
//! Everything in this module is pure byte manipulation (no LMDB, no `unsafe`),
//! so it runs under Miri and the fuzzer.

use rkyv::util::AlignedVec;

/// Current block format version.
pub(crate) const BLOCK_VERSION: u8 = 1;
/// Size of the fixed block header.
pub(crate) const HEADER_LEN: usize = 64;
/// Every slot starts at a multiple of this (relative to the block start).
pub(crate) const SLOT_ALIGN: usize = 16;
const ENTRY_LEN: usize = 8;
/// The largest slot (event) a block can hold: offsets are 32-bit.
pub(crate) const MAX_SLOT_LEN: usize = u32::MAX as usize - SLOT_ALIGN;

const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn entry_crc(index: u32, slot: &[u8]) -> u32 {
    crc32(&[&index.to_le_bytes(), slot])
}

/// Why a block failed validation. Turned into `Error::Corruption` by the caller,
/// which knows the position being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockError(pub(crate) String);

impl BlockError {
    fn new(msg: impl Into<String>) -> Self {
        BlockError(msg.into())
    }
}

/// The decoded, validated fixed header of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHeader {
    pub(crate) stream_tag: u32,
    pub(crate) stream_id: u64,
    pub(crate) first_stream_seq: u64,
    pub(crate) fingerprint: u64,
    pub(crate) count: u32,
    pub(crate) meta_len: u32,
    pub(crate) first_global: u64,
    pub(crate) committed_at_micros: u64,
}

impl BlockHeader {
    /// The global sequence one past this block's last event.
    pub(crate) fn end_global(&self) -> u64 {
        self.first_global + u64::from(self.count)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn table_end(count: usize) -> usize {
    align_up(HEADER_LEN + ENTRY_LEN * count, SLOT_ALIGN)
}

/// Builds one block in a reusable, 16-byte aligned buffer.
///
/// The payloads are serialized (and their checksums computed) before the write
/// transaction starts; only [`BlockBuilder::seal`], which stamps sequence numbers
/// and the header checksum, runs while the writer lock is held.
#[derive(Debug)]
pub(crate) struct BlockBuilder {
    buf: AlignedVec<16>,
    capacity: usize,
    written: usize,
}

impl BlockBuilder {
    /// A builder whose buffer starts with room for `initial_capacity` bytes.
    pub(crate) fn with_capacity(initial_capacity: usize) -> Self {
        BlockBuilder {
            buf: AlignedVec::with_capacity(initial_capacity.max(HEADER_LEN + 64)),
            capacity: 0,
            written: 0,
        }
    }

    /// Starts a block of exactly `count` events, discarding any previous content.
    pub(crate) fn start(&mut self, count: usize) {
        self.buf.clear();
        self.buf.resize(table_end(count), 0);
        self.capacity = count;
        self.written = 0;
    }

    /// Number of events the current block will hold.
    pub(crate) fn count(&self) -> usize {
        self.capacity
    }

    fn base(&self) -> usize {
        table_end(self.capacity)
    }

    /// Pads the buffer so the next slot starts aligned, and hands it out for the
    /// serializer to append one event. Must be followed by [`Self::finish_event`].
    pub(crate) fn begin_event(&mut self) -> AlignedVec<16> {
        debug_assert!(self.written < self.capacity);
        let aligned = align_up(self.buf.len(), SLOT_ALIGN);
        self.buf.resize(aligned, 0);
        std::mem::take(&mut self.buf)
    }

    /// Takes the buffer back after the serializer appended one event to it, and
    /// records the event's slot in the entry table. If the event is too large
    /// for a block, returns its size; the block is then unusable until the next
    /// [`Self::start`].
    pub(crate) fn finish_event(&mut self, buf: AlignedVec<16>) -> Result<(), usize> {
        self.buf = buf;
        let base = self.base();
        let index = self.written;
        let start = if index == 0 {
            0
        } else {
            align_up(self.entry_end(index - 1) as usize, SLOT_ALIGN)
        };
        let end = self.buf.len() - base;
        if end - start > MAX_SLOT_LEN || end > u32::MAX as usize {
            return Err(end - start);
        }
        let crc = entry_crc(index as u32, &self.buf[base + start..base + end]);
        let at = HEADER_LEN + ENTRY_LEN * index;
        self.buf[at..at + 4].copy_from_slice(&(end as u32).to_le_bytes());
        self.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        self.written += 1;
        Ok(())
    }

    /// Restores an empty buffer after a failed serialization took it.
    pub(crate) fn abandon(&mut self) {
        self.written = 0;
        self.capacity = 0;
    }

    fn entry_end(&self, index: usize) -> u32 {
        u32_at(&self.buf, HEADER_LEN + ENTRY_LEN * index)
    }

    /// Stamps the header. Called inside the write transaction, once the
    /// sequence numbers are known. Returns the finished block bytes.
    pub(crate) fn seal(&mut self, header: &BlockHeader) -> &[u8] {
        debug_assert_eq!(self.written, self.capacity, "every event must be written");
        debug_assert_eq!(header.count as usize, self.capacity);
        let total = align_up(self.buf.len(), SLOT_ALIGN);
        self.buf.resize(total, 0);
        let h = &mut self.buf[..HEADER_LEN];
        h[0] = BLOCK_VERSION;
        h[1] = 0;
        h[2..4].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[4..8].copy_from_slice(&header.stream_tag.to_le_bytes());
        h[8..16].copy_from_slice(&header.stream_id.to_le_bytes());
        h[16..24].copy_from_slice(&header.first_stream_seq.to_le_bytes());
        h[24..32].copy_from_slice(&header.fingerprint.to_le_bytes());
        h[32..36].copy_from_slice(&header.count.to_le_bytes());
        h[36..40].copy_from_slice(&header.meta_len.to_le_bytes());
        h[40..48].copy_from_slice(&header.first_global.to_le_bytes());
        h[48..56].copy_from_slice(&header.committed_at_micros.to_le_bytes());
        h[56..60].copy_from_slice(&0u32.to_le_bytes());
        let crc = crc32(&[&h[..60]]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

/// A validated view of a block's header over untrusted bytes. Individual
/// events are validated when they are read ([`BlockView::event`]), so a point
/// read never pays for the checksums of its neighbours.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockView<'a> {
    bytes: &'a [u8],
    header: BlockHeader,
    base: usize,
}

impl<'a> BlockView<'a> {
    /// Validates the fixed header of `bytes`, stored under key `key_global`.
    pub(crate) fn parse(key_global: u64, bytes: &'a [u8]) -> Result<Self, BlockError> {
        if bytes.len() < HEADER_LEN {
            return Err(BlockError::new(format!(
                "block is {} bytes, shorter than its {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let stored_crc = u32_at(bytes, 60);
        if crc32(&[&bytes[..60]]) != stored_crc {
            return Err(BlockError::new("block header checksum mismatch"));
        }
        if bytes[0] != BLOCK_VERSION {
            return Err(BlockError::new(format!(
                "block format version {} is not supported (expected {BLOCK_VERSION})",
                bytes[0]
            )));
        }
        let header_len = u16::from_le_bytes([bytes[2], bytes[3]]) as usize;
        if header_len != HEADER_LEN {
            return Err(BlockError::new(format!(
                "block header length {header_len} is invalid"
            )));
        }
        let header = BlockHeader {
            stream_tag: u32_at(bytes, 4),
            stream_id: u64_at(bytes, 8),
            first_stream_seq: u64_at(bytes, 16),
            fingerprint: u64_at(bytes, 24),
            count: u32_at(bytes, 32),
            meta_len: u32_at(bytes, 36),
            first_global: u64_at(bytes, 40),
            committed_at_micros: u64_at(bytes, 48),
        };
        if header.first_global != key_global {
            return Err(BlockError::new(format!(
                "block stored under global sequence {key_global} claims to start at {}",
                header.first_global
            )));
        }
        if header.count == 0 {
            return Err(BlockError::new("block holds no events"));
        }
        let base = table_end(header.count as usize);
        if base > bytes.len() {
            return Err(BlockError::new(format!(
                "entry table of {} events overruns the {}-byte block",
                header.count,
                bytes.len()
            )));
        }
        if header
            .first_global
            .checked_add(u64::from(header.count))
            .is_none()
            || header
                .first_stream_seq
                .checked_add(u64::from(header.count))
                .is_none()
        {
            return Err(BlockError::new("block sequence numbers overflow"));
        }
        Ok(BlockView {
            bytes,
            header,
            base,
        })
    }

    /// Rebuilds a view over bytes whose header [`BlockView::parse`] already
    /// validated (event bounds and checksums are still checked per event).
    pub(crate) fn from_validated(bytes: &'a [u8], header: BlockHeader) -> Self {
        BlockView {
            bytes,
            header,
            base: table_end(header.count as usize).min(bytes.len()),
        }
    }

    pub(crate) fn header(&self) -> &BlockHeader {
        &self.header
    }

    /// The whole block's bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The payload of event `index` (0-based within the block), after checking
    /// its bounds and checksum.
    pub(crate) fn event(&self, index: u32) -> Result<&'a [u8], BlockError> {
        if index >= self.header.count {
            return Err(BlockError::new(format!(
                "event {index} is past the block's {} events",
                self.header.count
            )));
        }
        let i = index as usize;
        let end = u32_at(self.bytes, HEADER_LEN + ENTRY_LEN * i) as usize;
        let crc = u32_at(self.bytes, HEADER_LEN + ENTRY_LEN * i + 4);
        let start = if i == 0 {
            0
        } else {
            align_up(
                u32_at(self.bytes, HEADER_LEN + ENTRY_LEN * (i - 1)) as usize,
                SLOT_ALIGN,
            )
        };
        let avail = self.bytes.len() - self.base;
        if start > end || end > avail {
            return Err(BlockError::new(format!(
                "event {index} spans [{start}, {end}) outside the block's {avail} payload bytes"
            )));
        }
        let slot = &self.bytes[self.base + start..self.base + end];
        if entry_crc(index, slot) != crc {
            return Err(BlockError::new(format!("event {index} checksum mismatch")));
        }
        let meta = align_up(self.header.meta_len as usize, SLOT_ALIGN);
        if meta > slot.len() {
            return Err(BlockError::new(format!(
                "event {index} is shorter than its {meta}-byte metadata"
            )));
        }
        Ok(&slot[meta..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(payloads: &[&[u8]], first_global: u64) -> Vec<u8> {
        let mut b = BlockBuilder::with_capacity(0);
        b.start(payloads.len());
        for p in payloads {
            let mut buf = b.begin_event();
            buf.extend_from_slice(p);
            b.finish_event(buf).unwrap();
        }
        b.seal(&BlockHeader {
            stream_tag: 3,
            stream_id: 42,
            first_stream_seq: 7,
            fingerprint: 0xfeed,
            count: payloads.len() as u32,
            meta_len: 0,
            first_global,
            committed_at_micros: 1,
        })
        .to_vec()
    }

    #[test]
    fn a_block_round_trips_every_payload_and_its_header() {
        let bytes = build(&[b"a", b"", b"hello world, this is longer than 16"], 100);
        assert_eq!(bytes.len() % SLOT_ALIGN, 0);
        let view = BlockView::parse(100, &bytes).unwrap();
        assert_eq!(view.header().count, 3);
        assert_eq!(view.header().stream_id, 42);
        assert_eq!(view.header().first_stream_seq, 7);
        assert_eq!(view.header().end_global(), 103);
        assert_eq!(view.event(0).unwrap(), b"a");
        assert_eq!(view.event(1).unwrap(), b"");
        assert_eq!(
            view.event(2).unwrap(),
            b"hello world, this is longer than 16"
        );
        assert!(view.event(3).is_err());
    }

    #[test]
    fn slots_start_at_sixteen_byte_offsets() {
        let bytes = build(&[b"abc", b"defgh", b"i"], 0);
        let view = BlockView::parse(0, &bytes).unwrap();
        for i in 0..3 {
            let p = view.event(i).unwrap();
            let off = p.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(off % SLOT_ALIGN, 0, "slot {i} at offset {off}");
        }
    }

    #[test]
    fn a_block_under_the_wrong_key_is_rejected() {
        let bytes = build(&[b"x"], 5);
        assert!(BlockView::parse(6, &bytes).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_detected_or_harmless() {
        let original = build(&[b"first event", b"second", b"third one here"], 9);
        for byte in 0..original.len() {
            for bit in 0..8 {
                let mut b = original.clone();
                b[byte] ^= 1 << bit;
                let Ok(view) = BlockView::parse(9, &b) else {
                    continue;
                };
                for i in 0..view.header().count {
                    if let Ok(p) = view.event(i) {
                        // Only padding bytes may change without detection.
                        let good = BlockView::parse(9, &original).unwrap().event(i).unwrap();
                        assert_eq!(p, good, "flip at byte {byte} bit {bit} changed event {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_blocks_never_panic() {
        let original = build(&[b"first event", b"second"], 1);
        for len in 0..original.len() {
            if let Ok(view) = BlockView::parse(1, &original[..len]) {
                for i in 0..view.header().count {
                    let _ = view.event(i);
                }
            }
        }
    }
}
