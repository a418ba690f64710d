//! [`Varve::verify`](crate::Varve::verify): a full consistency check of a store.

use crate::chain::ChainCheck;
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
    /// What became of the tamper-evident chain (breaks are `problems` of
    /// kind [`ProblemKind::Chain`]).
    pub chain: ChainCheck,
    /// Blocks of erased entities ([`Stream::erase`](crate::Stream::erase)):
    /// unreadable by design, not problems. Their headers (in the clear)
    /// are still checked against the log and the index.
    pub erased_blocks: u64,
    /// Events in those blocks (not counted in `events`).
    pub erased_events: u64,
}

impl VerifyReport {
    /// Whether the store is free of problems.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first block that breaks the tamper-evident chain, if any.
    pub fn chain_break(&self) -> Option<&Problem> {
        self.problems.iter().find(|p| p.kind == ProblemKind::Chain)
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
    /// Damage (a checksum, an index) or a break in the tamper-evident chain.
    pub kind: ProblemKind,
}

/// What kind of [`Problem`] [`Varve::verify`](crate::Varve::verify) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A record fails its checksum or disagrees with another record: what
    /// accidents (a bad disk, a bug) leave.
    Damage,
    /// A block (or a re-seal record) does not match the tamper-evident chain:
    /// bytes were changed, blocks removed, inserted or moved, even with every
    /// checksum recomputed.
    Chain,
}

impl Problem {
    pub(crate) fn damage(location: Location, detail: String) -> Problem {
        Problem {
            location,
            detail,
            kind: ProblemKind::Damage,
        }
    }

    pub(crate) fn chain(location: Location, detail: String) -> Problem {
        Problem {
            location,
            detail,
            kind: ProblemKind::Chain,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.detail)
    }
}
