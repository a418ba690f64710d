//! The tamper-evident log: a hash chain over the blocks, opt-in per store.
//!
//! Each block's chained digest is `BLAKE3(previous digest | header | BLAKE3(rest
//! of the block))` (a keyed BLAKE3 in [`Chain::Keyed`] mode), starting from a
//! genesis value bound to the store's id, so the last block's digest commits
//! to the whole history. [`Varve::head_digest`](crate::Varve::head_digest)
//! hands it out as a [`HeadDigest`]; an auditor who keeps one checks later
//! that the log still extends it ([`Varve::verify_extends`](
//! crate::Varve::verify_extends)), and [`Varve::verify`](crate::Varve::verify)
//! recomputes the chain and names the first block that breaks it. See
//! `docs/security.md` for what it does and does not protect against.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::position::GlobalSequence;

/// Which tamper-evident chain a store keeps.
///
/// ```
/// use varvedb::{Chain, Varve, VarveConfig};
/// # let dir = tempfile::tempdir().unwrap();
/// let varve = Varve::with_config(dir.path(), VarveConfig::tamper_evident(Chain::Plain))?;
/// assert!(varve.chain_status()?.is_on());
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// BLAKE3 over the blocks: anyone can recompute it. It detects changes
    /// against a head kept elsewhere; someone who can write the store can
    /// rewrite the chain along with the log, so [`Varve::verify`](
    /// crate::Varve::verify) alone proves nothing against them.
    Plain,
    /// Keyed BLAKE3 with a 32-byte key the writer holds: without the key the
    /// chain can be neither extended nor recomputed, so `verify` detects a
    /// rewrite by anyone who lacks it. The store records a check value of
    /// the key (never the key): a wrong key is refused at open.
    Keyed([u8; 32]),
}

impl Chain {
    /// The mode, without the key.
    pub fn mode(&self) -> ChainMode {
        match self {
            Chain::Plain => ChainMode::Plain,
            Chain::Keyed(_) => ChainMode::Keyed,
        }
    }

    pub(crate) fn key(&self) -> Option<[u8; 32]> {
        match self {
            Chain::Plain => None,
            Chain::Keyed(key) => Some(*key),
        }
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chain::Plain => f.write_str("Plain"),
            // Never print the key.
            Chain::Keyed(_) => f.write_str("Keyed(<key>)"),
        }
    }
}

/// A chain's mode, without its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainMode {
    /// [`Chain::Plain`].
    Plain,
    /// [`Chain::Keyed`].
    Keyed,
}

/// Whether a store keeps a chain ([`Varve::chain_status`](crate::Varve::chain_status)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainStatus {
    /// No chain: appends hash nothing.
    Off,
    /// [`Varve::enable_chain`](crate::Varve::enable_chain) started and has
    /// chained the blocks below `covered`; appends hash nothing until it
    /// reaches the end.
    Enabling {
        /// The chain's mode.
        mode: ChainMode,
        /// Every block below this sequence is chained.
        covered: GlobalSequence,
    },
    /// Every block is chained, and every append extends the chain.
    On {
        /// The chain's mode.
        mode: ChainMode,
    },
}

impl ChainStatus {
    /// Whether every block is chained.
    pub fn is_on(&self) -> bool {
        matches!(self, ChainStatus::On { .. })
    }
}

/// The head of a store's chain: what an auditor keeps, to check later that
/// the log still extends it ([`Varve::verify_extends`](crate::Varve::verify_extends)).
///
/// `digest` commits to every block up to and including `sequence` and to the
/// first `reseals` re-seal records (a migration's rewrites, see
/// `docs/security.md`). It displays as `SEQUENCE:RESEALS:HEX` and parses back.
///
/// ```
/// let text = format!("41:0:{}", "ab".repeat(32));
/// let head: varvedb::HeadDigest = text.parse()?;
/// assert_eq!((head.sequence.0, head.reseals), (41, 0));
/// assert_eq!(head.to_string(), text);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeadDigest {
    /// The global sequence of the last event it covers.
    pub sequence: GlobalSequence,
    /// Re-seal records it covers.
    pub reseals: u64,
    /// The digest.
    pub digest: [u8; 32],
}

impl fmt::Display for HeadDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.sequence.0, self.reseals)?;
        self.digest.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for HeadDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeadDigest({self})")
    }
}

impl FromStr for HeadDigest {
    type Err = Error;

    fn from_str(text: &str) -> Result<HeadDigest, Error> {
        let bad = || Error::MalformedHeadDigest { text: text.into() };
        let mut parts = text.trim().split(':');
        let (Some(seq), Some(reseals), Some(hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let sequence = seq.parse::<u64>().map_err(|_| bad())?;
        let reseals = reseals.parse::<u64>().map_err(|_| bad())?;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, b) in digest.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(HeadDigest {
            sequence: GlobalSequence(sequence),
            reseals,
            digest,
        })
    }
}

/// What [`Varve::verify_extends`](crate::Varve::verify_extends) found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Extension {
    /// The log, as it is now, extends the held head: every block up to its
    /// sequence recomputes to the same chain, and the re-seal records it
    /// covers are the same.
    Extends {
        /// Re-seals recorded after the head was taken (a migration rewrote
        /// these blocks since): the chain still covers the blocks as they were
        /// written, and these records say what each became.
        resealed: Vec<Reseal>,
    },
    /// The log does not extend the held head: an event up to it was changed,
    /// dropped, inserted or moved, the log was cut short, or a re-seal record
    /// it covers was removed or changed.
    Diverges {
        /// The first block found to break the chain, when one does (a chain
        /// rewritten to match a changed log breaks nowhere: only the head
        /// differs).
        at: Option<GlobalSequence>,
        /// What differs.
        detail: String,
    },
}

impl Extension {
    /// Whether the log extends the held head.
    pub fn extends(&self) -> bool {
        matches!(self, Extension::Extends { .. })
    }
}

/// One re-seal record: a block rewritten in place by a migration
/// ([`Varve::migrate`](crate::Varve::migrate)), with what it was and what it
/// became.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reseal {
    /// Its number: re-seals are numbered from 1 in the order made.
    pub number: u64,
    /// The block rewritten (its first global sequence).
    pub block: GlobalSequence,
    /// When (µs since the Unix epoch).
    pub at_micros: u64,
    /// The block's event fingerprint before (the version it was written as).
    pub old_fingerprint: u64,
    /// And after.
    pub new_fingerprint: u64,
}

/// What [`Varve::verify`](crate::Varve::verify) found of the chain; chain
/// breaks themselves are [`Problem`](crate::Problem)s of kind
/// [`ProblemKind::Chain`](crate::ProblemKind::Chain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainCheck {
    /// The store keeps no chain.
    #[default]
    Off,
    /// The chain is being enabled: the blocks below `covered` were checked.
    Enabling {
        /// Chained up to here.
        covered: GlobalSequence,
    },
    /// The chain was recomputed from its genesis over every block and every
    /// re-seal record.
    Checked {
        /// The head (`None` for an empty log).
        head: Option<HeadDigest>,
    },
    /// The chain is keyed and this handle has no key: nothing was checked.
    KeyMissing,
}

/// How [`Varve::enable_chain_with`](crate::Varve::enable_chain_with) works
/// through an existing log.
///
/// ```
/// let options = varvedb::ChainOptions::default().batch_blocks(256);
/// assert_eq!(options.batch_blocks_limit(), 256);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChainOptions {
    batch_blocks: usize,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions { batch_blocks: 4096 }
    }
}

impl ChainOptions {
    /// Chains at most `blocks` blocks per write transaction (at least 1;
    /// default 4096), so appends interleave with a long enable.
    pub fn batch_blocks(mut self, blocks: usize) -> Self {
        self.batch_blocks = blocks.max(1);
        self
    }

    /// The limit [`ChainOptions::batch_blocks`] set.
    pub fn batch_blocks_limit(&self) -> usize {
        self.batch_blocks
    }
}

/// What [`Varve::enable_chain`](crate::Varve::enable_chain) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainReport {
    /// Blocks this call chained (0 when the chain was already on).
    pub blocks: u64,
    /// Write transactions it committed.
    pub batches: u64,
    /// The head once done (`None` for an empty log).
    pub head: Option<HeadDigest>,
}
