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
//! 1       1     metadata flags: which fields begin every slot (0: none)
//! 2       2     header length (64)
//! 4       4     stream tag (interned stream name)
//! 8       8     stream id
//! 16      8     first stream sequence
//! 24      8     type fingerprint
//! 32      4     event count (>= 1)
//! 36      4     per-event metadata length (0 when the flags are 0)
//! 40      8     first global sequence (must equal the key)
//! 48      8     commit time, microseconds since the Unix epoch
//! 56      4     reserved (0)
//! 60      4     checksum of bytes 0..60 (low 32 bits of XXH3-64)
//! 64      8*n   entry table: per event, u32 end offset of its slot, u32 checksum of
//!               the slot (low 32 bits of XXH3-64 seeded with the event's index)
//! ..      pad   zeros up to a multiple of 16
//! base    ..    slots: event i occupies [start_i, end_i) from `base`, start_0 = 0,
//!               start_i = end_{i-1} rounded up to 16; total length padded to 16
//! ```
//!
//! **Metadata.** A block without metadata (flags 0, metadata length 0) is
//! byte for byte a format-1 block. Otherwise every slot begins with a
//! metadata prefix of exactly `metadata length` bytes, padded with zeros to
//! a multiple of 16, and the payload follows (still 16-byte aligned). The
//! flags say which fields the prefix holds, in this order:
//!
//! ```text
//! flag  size   field
//! 0x01  16     event id
//! 0x02  16     correlation id
//! 0x04  16     causation id
//! 0x08  4+m    user bytes: u32 length, then the bytes; m is the longest
//!              user bytes of the block, shorter ones are zero-padded
//! ```
//!
//! Every event of a block has the same fields (one append decides them), so
//! the prefix length is one number in the (checksummed) header, and the
//! prefix lies inside the slot that the entry checksum covers. Unknown flags,
//! or a length that disagrees with the flags, fail the header check.
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

/// Metadata flag: every slot begins with a 16-byte event id.
pub(crate) const META_EVENT_ID: u8 = 0x01;
/// Metadata flag: a 16-byte correlation id follows.
pub(crate) const META_CORRELATION: u8 = 0x02;
/// Metadata flag: a 16-byte causation id follows.
pub(crate) const META_CAUSATION: u8 = 0x04;
/// Metadata flag: user bytes (u32 length, then the bytes) follow.
pub(crate) const META_USER: u8 = 0x08;
const META_KNOWN: u8 = META_EVENT_ID | META_CORRELATION | META_CAUSATION | META_USER;
/// Length of one id field of the metadata prefix.
const ID_LEN: usize = 16;

/// The length of the fixed (id) part of a prefix with `flags`.
fn ids_len(flags: u8) -> usize {
    (flags & (META_EVENT_ID | META_CORRELATION | META_CAUSATION)).count_ones() as usize * ID_LEN
}

/// The metadata of one event, borrowed from its slot (ids are copied: 16
/// bytes each). All `None` for an event of a block without metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawMeta<'a> {
    pub(crate) event_id: Option<[u8; 16]>,
    pub(crate) correlation: Option<[u8; 16]>,
    pub(crate) causation: Option<[u8; 16]>,
    pub(crate) user: Option<&'a [u8]>,
}

/// An event's metadata prefix, checked when the event was read and parsed
/// again only when asked for: 24 bytes to carry where [`RawMeta`] is 72, so
/// the entries a scan yields stay small.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MetaPrefix<'a> {
    flags: u8,
    bytes: &'a [u8],
}

impl<'a> MetaPrefix<'a> {
    /// `bytes` as the prefix of a block with metadata `flags`, if it parses.
    #[inline]
    pub(crate) fn checked(flags: u8, bytes: &'a [u8]) -> Result<Self, BlockError> {
        if flags != 0 {
            parse_meta(flags, bytes)?;
        }
        Ok(MetaPrefix { flags, bytes })
    }

    /// A prefix `checked` before (for entries that keep only its bytes).
    #[inline]
    pub(crate) fn trusted(flags: u8, bytes: &'a [u8]) -> Self {
        MetaPrefix { flags, bytes }
    }

    /// The prefix's bytes.
    #[inline]
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The parsed metadata (empty without metadata).
    #[inline]
    pub(crate) fn raw(&self) -> RawMeta<'a> {
        if self.flags == 0 {
            return RawMeta::default();
        }
        // Checked by `checked` (or before `trusted`).
        parse_meta(self.flags, self.bytes).unwrap_or_default()
    }
}

impl RawMeta<'_> {
    /// The flags of a prefix holding exactly the fields present here.
    pub(crate) fn flags(&self) -> u8 {
        let mut f = 0;
        if self.event_id.is_some() {
            f |= META_EVENT_ID;
        }
        if self.correlation.is_some() {
            f |= META_CORRELATION;
        }
        if self.causation.is_some() {
            f |= META_CAUSATION;
        }
        if self.user.is_some() {
            f |= META_USER;
        }
        f
    }
}

/// The prefix length for `flags` and user bytes of at most `user_max` bytes.
pub(crate) fn meta_len(flags: u8, user_max: usize) -> usize {
    ids_len(flags)
        + if flags & META_USER != 0 {
            4 + user_max
        } else {
            0
        }
}

/// Checks that a header's metadata flags and length describe a prefix.
fn check_meta(flags: u8, len: u32) -> Result<(), BlockError> {
    if flags & !META_KNOWN != 0 {
        return Err(BlockError::new(format!(
            "unknown metadata flags {flags:#04x}"
        )));
    }
    let fixed = meta_len(flags, 0);
    let ok = if flags & META_USER != 0 {
        len as usize >= fixed
    } else {
        len as usize == fixed
    };
    if !ok {
        return Err(BlockError::new(format!(
            "metadata length {len} does not fit metadata flags {flags:#04x}"
        )));
    }
    Ok(())
}

/// Decodes a metadata prefix of `flags` (validated by the header check) from
/// `prefix` (exactly the prefix, unpadded).
pub(crate) fn parse_meta(flags: u8, prefix: &[u8]) -> Result<RawMeta<'_>, BlockError> {
    let mut meta = RawMeta::default();
    if flags == 0 {
        return Ok(meta);
    }
    let mut at = 0;
    let id = |at: &mut usize| -> Result<[u8; 16], BlockError> {
        let bytes = prefix
            .get(*at..*at + ID_LEN)
            .ok_or_else(|| BlockError::new("metadata prefix is too short for its ids"))?;
        *at += ID_LEN;
        let mut out = [0u8; 16];
        out.copy_from_slice(bytes);
        Ok(out)
    };
    if flags & META_EVENT_ID != 0 {
        meta.event_id = Some(id(&mut at)?);
    }
    if flags & META_CORRELATION != 0 {
        meta.correlation = Some(id(&mut at)?);
    }
    if flags & META_CAUSATION != 0 {
        meta.causation = Some(id(&mut at)?);
    }
    if flags & META_USER != 0 {
        let len = prefix
            .get(at..at + 4)
            .map(|b| u32_at(b, 0) as usize)
            .ok_or_else(|| BlockError::new("metadata prefix is too short for its user bytes"))?;
        let user = prefix.get(at + 4..at + 4 + len).ok_or_else(|| {
            BlockError::new(format!(
                "user metadata of {len} bytes overruns its {}-byte prefix",
                prefix.len()
            ))
        })?;
        meta.user = Some(user);
    }
    Ok(meta)
}

/// Checksums are XXH3-64 truncated to 32 bits: about three times cheaper than
/// CRC-32 on event-sized inputs (measured: 3.7 ns vs 10.3 ns for 68 bytes), and
/// any corruption goes undetected with probability 2^-32.
fn header_crc(header: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(header) as u32
}

/// The header checksum of a header's first 60 bytes (for tests and the
/// fuzz targets, which forge headers).
pub(crate) fn header_checksum(header: &[u8]) -> u32 {
    header_crc(header)
}

/// Seeding with the entry's index binds each payload to its place in the block.
#[inline]
fn entry_crc(index: u32, slot: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64_with_seed(slot, u64::from(index)) as u32
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
    pub(crate) meta_flags: u8,
    pub(crate) meta_len: u32,
    pub(crate) first_global: u64,
    pub(crate) committed_at_micros: u64,
}

impl BlockHeader {
    /// The fields of a header's bytes, unchecked: for bytes [`BlockView::parse`]
    /// checked (it decodes with this too).
    #[inline]
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> BlockHeader {
        BlockHeader {
            stream_tag: u32_at(b, 4),
            stream_id: u64_at(b, 8),
            first_stream_seq: u64_at(b, 16),
            fingerprint: u64_at(b, 24),
            count: u32_at(b, 32),
            meta_flags: b[1],
            meta_len: u32_at(b, 36),
            first_global: u64_at(b, 40),
            committed_at_micros: u64_at(b, 48),
        }
    }

    /// The global sequence one past this block's last event.
    pub(crate) fn end_global(&self) -> u64 {
        self.first_global + u64::from(self.count)
    }
}

/// The little-endian `u32` at `at` (callers check the bounds first).
#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The little-endian `u64` at `at` (callers check the bounds first).
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
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
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    buf: AlignedVec<16>,
    capacity: usize,
    written: usize,
    /// Metadata flags and prefix length of the current block (0, 0: none).
    meta_flags: u8,
    meta_len: usize,
    /// The event id of each event, when the block carries them (for the
    /// writer's idempotency index).
    event_ids: Vec<[u8; 16]>,
}

/// The plaintext of the last block built is zeroed when the builder is
/// dropped (and when the next block starts). A buffer that grows (an event
/// larger than the builder's capacity, or rkyv reallocating while it
/// serializes) hands its old allocation back to the allocator unzeroed.
impl Drop for BlockBuilder {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.buf.as_mut_slice());
    }
}

impl BlockBuilder {
    /// A builder whose buffer starts with room for `initial_capacity` bytes.
    pub(crate) fn with_capacity(initial_capacity: usize) -> Self {
        BlockBuilder {
            buf: AlignedVec::with_capacity(initial_capacity.max(HEADER_LEN + 64)),
            capacity: 0,
            written: 0,
            meta_flags: 0,
            meta_len: 0,
            event_ids: Vec::new(),
        }
    }

    /// Starts a block of exactly `count` events without metadata,
    /// discarding any previous content.
    pub(crate) fn start(&mut self, count: usize) {
        self.start_with_meta(count, 0, 0);
    }

    /// Starts a block of `count` events whose slots begin with a metadata
    /// prefix of `flags`, with user bytes of at most `user_max` bytes. Each
    /// event is then begun with [`Self::begin_event_with`].
    pub(crate) fn start_with_meta(&mut self, count: usize, flags: u8, user_max: usize) {
        // The previous block's plaintext is zeroed, not just forgotten.
        zeroize::Zeroize::zeroize(self.buf.as_mut_slice());
        self.buf.clear();
        self.buf.resize(table_end(count), 0);
        self.capacity = count;
        self.written = 0;
        self.meta_flags = flags;
        self.meta_len = if flags == 0 {
            0
        } else {
            meta_len(flags, user_max)
        };
        self.event_ids.clear();
    }

    /// Starts a block of `count` events whose slots begin with a metadata
    /// prefix of exactly `meta_len` bytes with `flags`, each copied from an
    /// existing block by [`Self::begin_event_verbatim`] (a migration's
    /// [`reseal`]).
    pub(crate) fn start_verbatim(&mut self, count: usize, flags: u8, meta_len: usize) {
        self.start_with_meta(count, flags, 0);
        self.meta_len = if flags == 0 { 0 } else { meta_len };
    }

    /// [`Self::begin_event`], first copying `prefix` (an event's metadata
    /// prefix as stored, `meta_len` bytes) and padding it as every block does.
    pub(crate) fn begin_event_verbatim(&mut self, prefix: &[u8]) -> AlignedVec<16> {
        debug_assert!(self.written < self.capacity);
        debug_assert_eq!(prefix.len(), self.meta_len);
        let aligned = align_up(self.buf.len(), SLOT_ALIGN);
        self.buf.resize(aligned, 0);
        if self.meta_flags != 0 {
            self.buf.extend_from_slice(prefix);
            if self.meta_flags & META_EVENT_ID != 0 {
                if let Some(id) = prefix.get(..ID_LEN) {
                    let mut out = [0u8; 16];
                    out.copy_from_slice(id);
                    self.event_ids.push(out);
                }
            }
            let end = align_up(self.buf.len(), SLOT_ALIGN);
            self.buf.resize(end, 0);
        }
        std::mem::take(&mut self.buf)
    }

    /// The event ids of the current block, one per event, or empty.
    pub(crate) fn event_ids(&self) -> &[[u8; 16]] {
        &self.event_ids
    }

    /// The metadata flags and prefix length of the current block.
    pub(crate) fn meta(&self) -> (u8, u32) {
        (self.meta_flags, self.meta_len as u32)
    }

    /// Number of events the current block will hold.
    pub(crate) fn count(&self) -> usize {
        self.capacity
    }

    /// The current block's size in bytes, so far (all of it once finished).
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    fn base(&self) -> usize {
        table_end(self.capacity)
    }

    /// Pads the buffer so the next slot starts aligned, and hands it out for the
    /// serializer to append one event. Must be followed by [`Self::finish_event`].
    pub(crate) fn begin_event(&mut self) -> AlignedVec<16> {
        self.begin_event_with(&RawMeta::default())
    }

    /// [`Self::begin_event`], first writing the event's metadata prefix. The
    /// fields of `meta` must be those the block was started with.
    pub(crate) fn begin_event_with(&mut self, meta: &RawMeta<'_>) -> AlignedVec<16> {
        debug_assert!(self.written < self.capacity);
        let aligned = align_up(self.buf.len(), SLOT_ALIGN);
        self.buf.resize(aligned, 0);
        if self.meta_flags != 0 {
            debug_assert_eq!(meta.flags(), self.meta_flags);
            let start = self.buf.len();
            for id in [meta.event_id, meta.correlation, meta.causation]
                .into_iter()
                .flatten()
            {
                self.buf.extend_from_slice(&id);
            }
            if let Some(user) = meta.user {
                self.buf
                    .extend_from_slice(&(user.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(user);
            }
            if let Some(id) = meta.event_id {
                self.event_ids.push(id);
            }
            // Shorter user bytes are zero-padded to the block's prefix length,
            // then the payload starts aligned.
            let end = start + self.meta_len;
            debug_assert!(self.buf.len() <= end);
            self.buf.resize(align_up(end, SLOT_ALIGN), 0);
        }
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
        debug_assert_eq!(
            (header.meta_flags, header.meta_len as usize),
            (self.meta_flags, self.meta_len)
        );
        h[0] = BLOCK_VERSION;
        h[1] = self.meta_flags;
        h[2..4].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[4..8].copy_from_slice(&header.stream_tag.to_le_bytes());
        h[8..16].copy_from_slice(&header.stream_id.to_le_bytes());
        h[16..24].copy_from_slice(&header.first_stream_seq.to_le_bytes());
        h[24..32].copy_from_slice(&header.fingerprint.to_le_bytes());
        h[32..36].copy_from_slice(&header.count.to_le_bytes());
        h[36..40].copy_from_slice(&(self.meta_len as u32).to_le_bytes());
        h[40..48].copy_from_slice(&header.first_global.to_le_bytes());
        h[48..56].copy_from_slice(&header.committed_at_micros.to_le_bytes());
        h[56..60].copy_from_slice(&0u32.to_le_bytes());
        let crc = header_crc(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

/// The checks of [`BlockView::parse`] that read only the fixed header:
/// its checksum, version, length and key binding, and its metadata fields.
/// An encrypted store's block (whose body is sealed, `storage::crypt`) is
/// checked this far before it is opened.
#[inline(always)]
pub(crate) fn parse_header(key_global: u64, bytes: &[u8]) -> Result<BlockHeader, BlockError> {
    if bytes.len() < HEADER_LEN {
        return Err(BlockError::new(format!(
            "block is {} bytes, shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let stored_crc = u32_at(bytes, 60);
    if header_crc(&bytes[..60]) != stored_crc {
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
    let Some(fixed) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(BlockError::new("block is shorter than its header"));
    };
    let header = BlockHeader::decode(fixed);
    if header.first_global != key_global {
        return Err(BlockError::new(format!(
            "block stored under global sequence {key_global} claims to start at {}",
            header.first_global
        )));
    }
    if header.count == 0 {
        return Err(BlockError::new("block holds no events"));
    }
    check_meta(header.meta_flags, header.meta_len)?;
    Ok(header)
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
        let header = parse_header(key_global, bytes)?;
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
    #[inline]
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

    /// The header's bytes, borrowed for as long as the block's.
    #[inline]
    pub(crate) fn header_bytes(&self) -> Option<&'a [u8; HEADER_LEN]> {
        self.bytes.first_chunk::<HEADER_LEN>()
    }

    /// The whole block's bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The payload of event `index` (0-based within the block), after checking
    /// its bounds and checksum.
    #[inline]
    pub(crate) fn event(&self, index: u32) -> Result<&'a [u8], BlockError> {
        self.slot(index).map(|(_, payload)| payload)
    }

    /// The metadata prefix (unpadded; empty without metadata) and the
    /// payload of event `index`, after checking bounds and checksum.
    #[inline(always)]
    pub(crate) fn slot(&self, index: u32) -> Result<(&'a [u8], &'a [u8]), BlockError> {
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
        Ok((&slot[..self.header.meta_len as usize], &slot[meta..]))
    }

    /// The checked metadata prefix and payload of event `index`, checked as
    /// [`Self::entry`] but not kept parsed.
    #[inline]
    pub(crate) fn prefixed(&self, index: u32) -> Result<(MetaPrefix<'a>, &'a [u8]), BlockError> {
        let (prefix, payload) = self.slot(index)?;
        let meta = MetaPrefix::checked(self.header.meta_flags, prefix)
            .map_err(|e| BlockError::new(format!("event {index}: {}", e.0)))?;
        Ok((meta, payload))
    }

    /// The metadata and payload of event `index`, checked as [`Self::event`].
    #[inline]
    pub(crate) fn entry(&self, index: u32) -> Result<(RawMeta<'a>, &'a [u8]), BlockError> {
        let (prefix, payload) = self.slot(index)?;
        let meta = parse_meta(self.header.meta_flags, prefix)
            .map_err(|e| BlockError::new(format!("event {index}: {}", e.0)))?;
        Ok((meta, payload))
    }
}

/// The block `old` with new payloads: what a migration writes in place of a
/// block of an older event version.
///
/// Everything but the payloads, the fingerprint and the checksums is kept:
/// the key (first global sequence), stream tag and id, stream sequences,
/// event count, commit time, metadata flags and length, reserved bytes, and
/// each event's metadata prefix (event id, correlation, causation, user
/// bytes: exactly the header's `meta_len` bytes, zero-padded to 16 as every
/// block pads it), copied verbatim. So the `ids` index, which maps an event
/// id to the global sequence of its block, stays valid.
/// Each payload must be an rkyv archive built in a 16-byte aligned buffer:
/// its slot starts 16-byte aligned, so it stays readable in place.
///
/// Fails, writing nothing, if `payloads` is not one per event, if an event
/// of `old` fails its checksum or its metadata does not parse (a migration
/// never re-seals damage under a fresh checksum), or if a payload is too
/// large for a slot.
pub(crate) fn reseal(
    old: &BlockView<'_>,
    fingerprint: u64,
    payloads: &[&[u8]],
) -> Result<Vec<u8>, BlockError> {
    let header = *old.header();
    if payloads.len() != header.count as usize {
        return Err(BlockError::new(format!(
            "{} payloads for a block of {} events",
            payloads.len(),
            header.count
        )));
    }
    let mut builder = BlockBuilder::with_capacity(old.bytes().len() + 64);
    builder.start_verbatim(payloads.len(), header.meta_flags, header.meta_len as usize);
    for (i, payload) in payloads.iter().enumerate() {
        let (prefix, _) = old.slot(i as u32)?;
        // Checked, not only copied: damage never gets a fresh checksum.
        parse_meta(header.meta_flags, prefix)
            .map_err(|e| BlockError::new(format!("event {i}: {}", e.0)))?;
        let mut buf = builder.begin_event_verbatim(prefix);
        buf.extend_from_slice(payload);
        builder.finish_event(buf).map_err(|size| {
            builder.abandon();
            BlockError::new(format!(
                "event {i} of {size} bytes is too large for a block"
            ))
        })?;
    }
    let mut bytes = builder
        .seal(&BlockHeader {
            fingerprint,
            ..header
        })
        .to_vec();
    // The reserved header bytes `seal` writes as zeros today are kept as
    // they were, so a later format's use of them survives. (Byte 1, the
    // metadata flags, `seal` writes from the builder: the old block's.)
    let old_bytes = old.bytes();
    bytes[56..60].copy_from_slice(&old_bytes[56..60]);
    let crc = header_crc(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Recomputes the header checksum and the checksum of every event whose slot
/// lies inside `bytes`, leaving everything else as it is. For the fuzzer and
/// tests: it lets damaged bytes reach the checks behind the checksums.
pub(crate) fn restamp_checksums(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let crc = header_crc(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    let count = u32_at(bytes, 32);
    let base = table_end(count as usize);
    if base > bytes.len() {
        return;
    }
    let mut start = 0usize;
    for index in 0..count {
        let at = HEADER_LEN + ENTRY_LEN * index as usize;
        let end = u32_at(bytes, at) as usize;
        if start <= end && end <= bytes.len() - base {
            let crc = entry_crc(index, &bytes[base + start..base + end]);
            bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
        start = align_up(end, SLOT_ALIGN);
    }
}

/// Whether a validation failure on `bytes` may only be their alignment (they
/// are less than 16-byte aligned), so it is worth retrying on an aligned copy.
/// The one place that rule lives.
#[inline]
pub(crate) fn may_need_alignment(bytes: &[u8]) -> bool {
    !(bytes.as_ptr() as usize).is_multiple_of(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_a_block_zeroes_the_previous_ones_plaintext() {
        let mut b = BlockBuilder::with_capacity(4096);
        b.start(1);
        let mut buf = b.begin_event();
        buf.extend_from_slice(&[0xAB; 300]);
        b.finish_event(buf).unwrap();
        let used = b.len();
        let at = b.buf.as_ptr();
        b.start(1);
        assert_eq!(b.buf.as_ptr(), at, "the allocation is kept");
        assert!(b.buf.capacity() >= used);
        // SAFETY: `used` bytes of this allocation (still owned by the
        // builder, not reallocated) were written by the first block; reading
        // them as bytes is sound.
        let old = unsafe { std::slice::from_raw_parts(b.buf.as_ptr(), used) };
        assert!(!old.contains(&0xAB), "plaintext left in the buffer");
    }

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
            meta_flags: 0,
            meta_len: 0,
            first_global,
            committed_at_micros: 1,
        })
        .to_vec()
    }

    fn build_with_meta(payloads: &[&[u8]], metas: &[RawMeta<'_>], first_global: u64) -> Vec<u8> {
        let flags = metas[0].flags();
        let user_max = metas
            .iter()
            .filter_map(|m| m.user)
            .map(<[u8]>::len)
            .max()
            .unwrap_or(0);
        let mut b = BlockBuilder::with_capacity(0);
        b.start_with_meta(payloads.len(), flags, user_max);
        for (p, m) in payloads.iter().zip(metas) {
            let mut buf = b.begin_event_with(m);
            buf.extend_from_slice(p);
            b.finish_event(buf).unwrap();
        }
        let (meta_flags, meta_len) = b.meta();
        b.seal(&BlockHeader {
            stream_tag: 3,
            stream_id: 42,
            first_stream_seq: 7,
            fingerprint: 0xfeed,
            count: payloads.len() as u32,
            meta_flags,
            meta_len,
            first_global,
            committed_at_micros: 1,
        })
        .to_vec()
    }

    #[test]
    fn metadata_round_trips_beside_each_payload_which_stays_aligned() {
        let metas = [
            RawMeta {
                event_id: Some([1; 16]),
                correlation: Some([2; 16]),
                causation: Some([3; 16]),
                user: Some(b"short"),
            },
            RawMeta {
                event_id: Some([4; 16]),
                correlation: Some([2; 16]),
                causation: Some([3; 16]),
                user: Some(b"a longer user value, over 16 bytes"),
            },
            RawMeta {
                event_id: Some([5; 16]),
                correlation: Some([2; 16]),
                causation: Some([3; 16]),
                user: Some(b""),
            },
        ];
        let payloads: [&[u8]; 3] = [b"a", b"bb", b"c, longer than sixteen bytes"];
        let bytes = build_with_meta(&payloads, &metas, 10);
        let view = BlockView::parse(10, &bytes).unwrap();
        for i in 0..3 {
            let (meta, payload) = view.entry(i as u32).unwrap();
            assert_eq!((meta, payload), (metas[i], payloads[i]));
            let off = payload.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(off % SLOT_ALIGN, 0);
        }
        let ids_only = [RawMeta {
            event_id: Some([9; 16]),
            ..RawMeta::default()
        }];
        let bytes = build_with_meta(&[b"x"], &ids_only, 0);
        let view = BlockView::parse(0, &bytes).unwrap();
        assert_eq!(view.header().meta_len, 16);
        assert_eq!(view.entry(0).unwrap(), (ids_only[0], &b"x"[..]));
    }

    #[test]
    fn a_block_without_metadata_is_a_format_one_block_byte_for_byte() {
        let plain = build(&[b"one", b"two"], 5);
        assert_eq!((plain[1], u32_at(&plain, 36)), (0, 0));
        let mut b = BlockBuilder::with_capacity(0);
        b.start_with_meta(2, 0, 0);
        for p in [&b"one"[..], b"two"] {
            let mut buf = b.begin_event_with(&RawMeta::default());
            buf.extend_from_slice(p);
            b.finish_event(buf).unwrap();
        }
        let header = *BlockView::parse(5, &plain).unwrap().header();
        assert_eq!(b.seal(&header), &plain[..]);
        let view = BlockView::parse(5, &plain).unwrap();
        assert_eq!(view.entry(1).unwrap(), (RawMeta::default(), &b"two"[..]));
    }

    #[test]
    fn every_single_bit_flip_in_metadata_is_detected_or_harmless() {
        let metas = [
            RawMeta {
                event_id: Some([1; 16]),
                correlation: Some([2; 16]),
                causation: None,
                user: Some(b"user"),
            },
            RawMeta {
                event_id: Some([3; 16]),
                correlation: Some([2; 16]),
                causation: None,
                user: Some(b"bytes!"),
            },
        ];
        let original = build_with_meta(&[b"first", b"second"], &metas, 9);
        let good = BlockView::parse(9, &original).unwrap();
        for byte in 0..original.len() {
            for bit in 0..8 {
                let mut b = original.clone();
                b[byte] ^= 1 << bit;
                let Ok(view) = BlockView::parse(9, &b) else {
                    continue;
                };
                for i in 0..view.header().count {
                    if let Ok(entry) = view.entry(i) {
                        assert_eq!(entry, good.entry(i).unwrap(), "flip at {byte}.{bit}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_header_whose_metadata_flags_and_length_disagree_is_rejected() {
        let metas = [RawMeta {
            event_id: Some([1; 16]),
            ..RawMeta::default()
        }];
        let original = build_with_meta(&[b"x"], &metas, 0);
        for (flags, len) in [
            (0x10u8, 16u32),
            (META_EVENT_ID, 32),
            (META_EVENT_ID | META_CAUSATION, 16),
            (META_USER, 3),
        ] {
            let mut b = original.clone();
            b[1] = flags;
            put_u32(&mut b, 36, len);
            restamp(&mut b);
            assert!(
                BlockView::parse(0, &b).is_err(),
                "flags {flags:#x} len {len}"
            );
        }
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
    fn a_resealed_block_keeps_everything_but_payloads_fingerprint_and_checksums() {
        let original = build(&[b"old one", b"old two, longer than sixteen"], 100);
        let view = BlockView::parse(100, &original).unwrap();
        let bytes = reseal(&view, 0xbeef, &[b"new", b"the second new payload"]).unwrap();
        let new = BlockView::parse(100, &bytes).unwrap();
        assert_eq!(
            *new.header(),
            BlockHeader {
                fingerprint: 0xbeef,
                ..*view.header()
            }
        );
        assert_eq!(new.event(0).unwrap(), b"new");
        assert_eq!(new.event(1).unwrap(), b"the second new payload");
        for i in 0..2 {
            let off = new.event(i).unwrap().as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(off % SLOT_ALIGN, 0);
        }
        assert!(reseal(&view, 1, &[b"only one"]).is_err());
    }

    #[test]
    fn resealing_copies_each_events_metadata_and_the_header_extras_verbatim() {
        // A block whose events carry every metadata field (user bytes of
        // different lengths, so the shorter is zero-padded in its prefix),
        // and whose reserved bytes are set (what a later format may write).
        let users: [&[u8]; 2] = [b"short", b"the longer user bytes"];
        let meta = |i: usize| RawMeta {
            event_id: Some([i as u8 + 1; 16]),
            correlation: Some([7; 16]),
            causation: Some([8; 16]),
            user: Some(users[i]),
        };
        let mut b = BlockBuilder::with_capacity(0);
        b.start_with_meta(2, meta(0).flags(), users[1].len());
        for (i, p) in [&b"one"[..], b"two"].into_iter().enumerate() {
            let mut buf = b.begin_event_with(&meta(i));
            buf.extend_from_slice(p);
            b.finish_event(buf).unwrap();
        }
        let (meta_flags, meta_len) = b.meta();
        let mut original = b
            .seal(&BlockHeader {
                stream_tag: 1,
                stream_id: 2,
                first_stream_seq: 3,
                fingerprint: 4,
                count: 2,
                meta_flags,
                meta_len,
                first_global: 5,
                committed_at_micros: 6,
            })
            .to_vec();
        original[56..60].copy_from_slice(&[1, 2, 3, 4]);
        restamp(&mut original);
        let view = BlockView::parse(5, &original).unwrap();
        assert_eq!(view.event(1).unwrap(), b"two");
        let bytes = reseal(&view, 9, &[b"uno", b"dos, a longer payload"]).unwrap();
        let new = BlockView::parse(5, &bytes).unwrap();
        assert_eq!(
            *new.header(),
            BlockHeader {
                fingerprint: 9,
                ..*view.header()
            }
        );
        assert_eq!(
            (bytes[1], &bytes[56..60]),
            (meta_flags, &[1u8, 2, 3, 4][..])
        );
        for (i, payload) in [&b"uno"[..], b"dos, a longer payload"]
            .into_iter()
            .enumerate()
        {
            let i32 = i as u32;
            // The prefix, byte for byte (padding included), and its fields.
            assert_eq!(new.slot(i32).unwrap().0, view.slot(i32).unwrap().0);
            assert_eq!(new.entry(i32).unwrap(), (meta(i), payload), "event {i}");
            let off = new.event(i32).unwrap().as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(off % SLOT_ALIGN, 0);
        }
    }

    #[test]
    fn a_damaged_event_is_never_resealed_under_a_fresh_checksum() {
        let mut original = build(&[b"first", b"second"], 0);
        let last = original.len() - 1;
        let base = table_end(2);
        // Damage a byte of the second payload (not padding).
        original[base + 16] ^= 1;
        assert!(last > base + 16);
        let view = BlockView::parse(0, &original).unwrap();
        assert!(view.event(1).is_err());
        assert!(reseal(&view, 1, &[b"a", b"b"]).is_err());
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

    /// Iterations of the randomized tests: Miri runs them far slower.
    const ROUNDS: usize = if cfg!(miri) { 40 } else { 3_000 };

    /// splitmix64, for deterministic random bytes.
    fn rng(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Recomputes the header checksum after a test edits the header.
    fn restamp(bytes: &mut [u8]) {
        let crc = header_crc(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn a_block_of_events_of_every_small_size_round_trips() {
        let sizes: Vec<usize> = (0..=33).chain([255, 256, 1000]).collect();
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let bytes = build(&refs, 1 << 40);
        assert_eq!(bytes.len() % SLOT_ALIGN, 0);
        let view = BlockView::parse(1 << 40, &bytes).unwrap();
        assert_eq!(view.header().count as usize, sizes.len());
        for (i, expected) in payloads.iter().enumerate() {
            let got = view.event(i as u32).unwrap();
            assert_eq!(got, expected.as_slice(), "event {i}");
            let offset = got.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(offset % SLOT_ALIGN, 0, "event {i} at offset {offset}");
        }
    }

    #[test]
    fn a_reused_builder_forgets_the_previous_and_the_abandoned_block() {
        let mut b = BlockBuilder::with_capacity(0);
        b.start(3);
        let mut buf = b.begin_event();
        buf.extend_from_slice(b"a long first payload from an earlier block");
        b.finish_event(buf).unwrap();
        // A failed serialization takes the buffer and never gives it back.
        let _lost = b.begin_event();
        b.abandon();

        b.start(2);
        for p in [&b"x"[..], b"yz"] {
            let mut buf = b.begin_event();
            buf.extend_from_slice(p);
            b.finish_event(buf).unwrap();
        }
        let header = BlockHeader {
            stream_tag: 1,
            stream_id: 2,
            first_stream_seq: 0,
            fingerprint: 3,
            count: 2,
            meta_flags: 0,
            meta_len: 0,
            first_global: 4,
            committed_at_micros: 5,
        };
        let bytes = b.seal(&header).to_vec();
        let view = BlockView::parse(4, &bytes).unwrap();
        assert_eq!(*view.header(), header);
        assert_eq!(view.event(0).unwrap(), b"x");
        assert_eq!(view.event(1).unwrap(), b"yz");
    }

    #[test]
    fn sealing_again_for_a_retried_transaction_restamps_the_header() {
        let mut b = BlockBuilder::with_capacity(0);
        b.start(2);
        for p in [&b"first"[..], b"second, a bit longer than sixteen"] {
            let mut buf = b.begin_event();
            buf.extend_from_slice(p);
            b.finish_event(buf).unwrap();
        }
        let mut header = BlockHeader {
            stream_tag: 1,
            stream_id: 9,
            first_stream_seq: 3,
            fingerprint: 3,
            count: 2,
            meta_flags: 0,
            meta_len: 0,
            first_global: 10,
            committed_at_micros: 5,
        };
        let first = b.seal(&header).to_vec();
        header.first_global = 12;
        header.first_stream_seq = 4;
        let second = b.seal(&header).to_vec();
        assert_eq!(first.len(), second.len(), "sealing pads only once");
        assert!(BlockView::parse(10, &second).is_err());
        let view = BlockView::parse(12, &second).unwrap();
        assert_eq!(*view.header(), header);
        assert_eq!(view.event(0).unwrap(), b"first");
        assert_eq!(view.event(1).unwrap(), b"second, a bit longer than sixteen");
    }

    #[test]
    fn a_header_that_lies_is_rejected_even_with_a_valid_checksum() {
        let original = build(&[b"one", b"two"], 8);
        type Edit = fn(&mut [u8]);
        let cases: [(&str, Edit); 8] = [
            ("another format version", |b| b[0] = BLOCK_VERSION + 1),
            ("another header length", |b| b[2] = 65),
            ("no events", |b| put_u32(b, 32, 0)),
            ("a table past the end", |b| put_u32(b, 32, 1_000)),
            ("the largest count", |b| put_u32(b, 32, u32::MAX)),
            ("another key", |b| put_u64(b, 40, 9)),
            ("a global sequence that overflows", |b| {
                put_u64(b, 40, u64::MAX - 1);
            }),
            ("a stream sequence that overflows", |b| {
                put_u64(b, 16, u64::MAX);
            }),
        ];
        for (what, edit) in cases {
            let mut bytes = original.clone();
            edit(&mut bytes);
            restamp(&mut bytes);
            let key = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
            let key = if what == "another key" { 8 } else { key };
            assert!(
                BlockView::parse(key, &bytes).is_err(),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn an_entry_that_lies_is_rejected_even_with_a_valid_checksum() {
        let original = build(&[b"first event", b"second"], 0);
        let entry = |i: usize| HEADER_LEN + ENTRY_LEN * i;
        let fix_crc = |b: &mut Vec<u8>, i: u32, start: usize, end: usize| {
            let base = table_end(2);
            let crc = entry_crc(i, &b[base + start..base + end]);
            put_u32(b, entry(i as usize) + 4, crc);
        };

        // The second slot ends past the block.
        let mut b = original.clone();
        put_u32(&mut b, entry(1), 10_000);
        assert!(BlockView::parse(0, &b).unwrap().event(1).is_err());

        // The first slot ends after the second: the second starts past its end.
        let mut b = original.clone();
        put_u32(&mut b, entry(0), 30);
        fix_crc(&mut b, 0, 0, 30);
        let view = BlockView::parse(0, &b).unwrap();
        assert_eq!(
            view.event(0).unwrap().len(),
            30,
            "in bounds, checksum intact"
        );
        assert!(view.event(1).is_err());

        // Metadata without flags saying what it holds.
        let mut b = original.clone();
        put_u32(&mut b, 36, 64);
        restamp(&mut b);
        assert!(BlockView::parse(0, &b).is_err());

        // Metadata (user bytes) longer than the slot.
        let mut b = original.clone();
        b[1] = META_USER;
        put_u32(&mut b, 36, 64);
        restamp(&mut b);
        let view = BlockView::parse(0, &b).unwrap();
        assert!(view.event(0).is_err() && view.event(1).is_err());

        // An index past the count.
        let view = BlockView::parse(0, &original).unwrap();
        assert!(view.event(2).is_err() && view.event(u32::MAX).is_err());
    }

    #[test]
    fn random_bytes_and_mutated_blocks_never_panic() {
        let mut state = 7u64;
        let original = build(&[b"first event", b"", b"third event, longer"], 3);
        let meta = |user: &'static [u8]| RawMeta {
            event_id: Some([1; 16]),
            correlation: None,
            causation: Some([2; 16]),
            user: Some(user),
        };
        let with_meta = build_with_meta(
            &[b"first event", b"", b"third event, longer"],
            &[meta(b"u"), meta(b""), meta(b"longer user bytes")],
            3,
        );
        for round in 0..ROUNDS {
            let mut bytes = match round % 3 {
                0 => {
                    let len = (rng(&mut state) % 200) as usize;
                    (0..len).map(|_| rng(&mut state) as u8).collect()
                }
                1 => original.clone(),
                _ => with_meta.clone(),
            };
            for _ in 0..1 + rng(&mut state) % 4 {
                if !bytes.is_empty() {
                    let at = (rng(&mut state) as usize) % bytes.len();
                    bytes[at] = rng(&mut state) as u8;
                }
            }
            if round % 2 == 0 {
                restamp_checksums(&mut bytes);
            }
            let key = crate::__fuzz::claimed_key(&bytes).unwrap_or(0);
            if let Ok(view) = BlockView::parse(key, &bytes) {
                for i in 0..view.header().count.min(64) {
                    if let Ok((meta, payload)) = view.entry(i) {
                        for part in [payload].into_iter().chain(meta.user) {
                            let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
                            assert!(start + part.len() <= bytes.len());
                        }
                    }
                }
            }
        }
    }
}
