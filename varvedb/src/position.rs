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
