//! [`Varve::verify`](crate::Varve::verify): a full consistency check of a store.

use crate::error::Location;

/// What [`Varve::verify`](crate::Varve::verify) found.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let varve = varvedb::Varve::new(dir.path())?;
/// let report = varve.verify()?;
/// assert!(report.is_ok(), "{report:?}");
/// assert_eq!(report.events, 0);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Events whose bytes passed their checksums.
    pub events: u64,
    /// Blocks (one per append) in the log.
    pub blocks: u64,
    /// Stream-index runs checked.
    pub runs: u64,
    /// Streams in the catalog.
    pub streams: u64,
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether the store is free of problems.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One inconsistency or damaged record found by [`Varve::verify`](crate::Varve::verify).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Where it is.
    pub location: Location,
    /// What is wrong.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.detail)
    }
}
