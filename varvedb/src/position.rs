//! Positions in the store: which entity, where in its stream, where in the log.

use std::fmt;

/// Identifies one entity (an order, a user, an account) within a named stream.
///
/// Events are grouped by `(stream name, StreamId)`; each such group has its own
/// dense [`StreamSequence`] starting at 0.
///
/// ```
/// use varvedb::StreamId;
/// let order = StreamId(42);
/// assert_eq!(order.0, 42);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(pub u64);

/// The position of an event within its `(stream name, StreamId)`: 0, 1, 2, … with no gaps.
///
/// ```
/// use varvedb::StreamSequence;
/// assert!(StreamSequence(0) < StreamSequence(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamSequence(pub u64);

/// The position of an event in the store-wide log: 0, 1, 2, … with no gaps, in
/// commit order across every stream, handle and thread.
///
/// ```
/// use varvedb::GlobalSequence;
/// assert_eq!(GlobalSequence(3).0 + 1, 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GlobalSequence(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for StreamSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for GlobalSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a writer expects a stream to look like before its append: the
/// optimistic-concurrency check. A mismatch writes nothing and returns
/// [`Error::VersionConflict`](crate::Error::VersionConflict).
///
/// The *version* of a stream is the [`StreamSequence`] of its last event.
///
/// ```
/// use varvedb::{ExpectedVersion, StreamSequence};
/// let after_first_event = ExpectedVersion::Exact(StreamSequence(0));
/// assert!(after_first_event.matches(Some(StreamSequence(0))));
/// assert!(!ExpectedVersion::NoStream.matches(Some(StreamSequence(0))));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check: append wherever the stream is.
    #[default]
    Any,
    /// The stream id must have no events yet.
    NoStream,
    /// The stream id must have at least one event.
    StreamExists,
    /// The stream id's last event must be exactly this one.
    Exact(StreamSequence),
}

impl ExpectedVersion {
    /// Whether a stream whose last event is `actual` (`None`: empty) satisfies this expectation.
    pub fn matches(self, actual: Option<StreamSequence>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {}", v.0),
        }
    }
}

macro_rules! u64_conversions {
    ($($name:ident),*) => {$(
        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                $name(value)
            }
        }

        impl From<$name> for u64 {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    )*};
}

// As in varvedb 0.4: each position converts from and into its `u64`.
u64_conversions!(StreamId, StreamSequence, GlobalSequence);

/// One event's place in its stream: a [`StreamId`] and a [`StreamSequence`],
/// with varvedb 0.4's 16-byte big-endian encoding (stream id, then sequence),
/// which sorts as the pair does.
///
/// Kept for programs written against varvedb 0.4, which exported it. VarveDB
/// itself indexes runs of events, not single keys, so nothing in its API takes
/// a `StreamKey`: it is a plain value type.
///
/// ```
/// use varvedb::{StreamId, StreamKey, StreamSequence};
/// let key = StreamKey::new(StreamId(7), StreamSequence(2));
/// let bytes = key.to_bytes();
/// assert_eq!(bytes.len(), StreamKey::SIZE);
/// assert_eq!(StreamKey::from_bytes(&bytes), Some(key));
/// assert!(StreamKey::prefix(StreamId(7)).to_bytes() < bytes);
/// assert_eq!(StreamKey::from_bytes(&bytes[..15]), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamKey {
    /// The stream id.
    pub stream_id: StreamId,
    /// The position within the stream id.
    pub stream_seq: StreamSequence,
}

impl StreamKey {
    /// The length of [`StreamKey::to_bytes`].
    pub const SIZE: usize = 16;

    /// The key of event `stream_seq` of `stream_id`.
    pub fn new(stream_id: StreamId, stream_seq: StreamSequence) -> Self {
        StreamKey {
            stream_id,
            stream_seq,
        }
    }

    /// The first key of `stream_id` (sequence 0): every key of the id sorts
    /// at or after it.
    pub fn prefix(stream_id: StreamId) -> Self {
        StreamKey::new(stream_id, StreamSequence(0))
    }

    /// The stream id then the sequence, each 8 bytes big-endian.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut bytes = [0; Self::SIZE];
        bytes[..8].copy_from_slice(&self.stream_id.0.to_be_bytes());
        bytes[8..].copy_from_slice(&self.stream_seq.0.to_be_bytes());
        bytes
    }

    /// Decodes the first [`StreamKey::SIZE`] bytes of `bytes` (later bytes are
    /// ignored, as in 0.4), or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id = bytes.get(..8)?.try_into().ok()?;
        let seq = bytes.get(8..16)?.try_into().ok()?;
        Some(StreamKey::new(
            StreamId(u64::from_be_bytes(id)),
            StreamSequence(u64::from_be_bytes(seq)),
        ))
    }
}
