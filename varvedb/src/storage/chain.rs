//! The tamper-evident chain (opt-in per store; see `docs/security.md`).
//!
//! ```text
//! genesis  = H("varvedb chain genesis 1" | store id)
//! leaf(b)  = header(b) (64 bytes) | BLAKE3(rest of b)            (96 bytes)
//! d(b)     = H("VARVELNK" | d(block before b) | leaf(b))        (genesis before the first)
//! H        = BLAKE3, or keyed BLAKE3 with the store's key (`Chain::Keyed`)
//! ```
//!
//! - `chain` database: first global sequence (BE u64, like `events`) →
//!   `d(b)` (32 bytes), written in the block's own write transaction. A block
//!   a migration rewrote in place keeps its digest, which covers the block as
//!   it was written: its value grows to `d(b) | original leaf (96) | number of
//!   its latest re-seal record (LE u64)` (136 bytes).
//! - `seals` database: re-seal number (BE u64, from 1) → 256 bytes: block
//!   (LE u64), previous re-seal of that block (LE u64, 0: none), time (µs, LE
//!   u64), 8 reserved, the leaf before (96), the leaf after (96), and
//!   `s(n) = H("VARVESEA" | s(n-1) | those 224 bytes)` (`s(0)` = 32 zeros).
//! - `meta` record `chain` (48 bytes): version 1, mode (1 plain, 2 keyed),
//!   state (0 enabling, 1 on), 5 reserved, the enabling cursor (LE u64: every
//!   block below it is chained), and the key check value
//!   `keyed BLAKE3(key, "varvedb chain key check 1" | store id)` (zeros for
//!   plain).
//! - The head: `BLAKE3("VARVEHED" | last sequence (BE) | re-seals (BE) |
//!   d(last block) | s(re-seals))`, so it commits to every block and every
//!   re-seal made so far.

use std::ops::Bound;

use super::kv::Txn;

use super::block::HEADER_LEN;
use super::keys::{event_key, parse_event_key};
use super::{Store, StoreId, WriteTxn};
use crate::chain::{Chain, ChainCheck, ChainMode, ChainStatus, Extension, HeadDigest, Reseal};
use crate::error::{Error, Location, Result};
use crate::position::GlobalSequence;
use crate::verify::{Problem, VerifyReport};

/// A chained digest.
pub(crate) type Digest = [u8; 32];
/// What a block contributes to the chain: its header and a digest of the rest.
pub(crate) type Leaf = [u8; LEAF_LEN];

const DIGEST_LEN: usize = 32;
const LEAF_LEN: usize = HEADER_LEN + DIGEST_LEN;
/// A `chain` value of a re-sealed block.
pub(crate) const AMENDED_LEN: usize = DIGEST_LEN + LEAF_LEN + 8;
const BODY_LEN: usize = 224;
const RESEAL_LEN: usize = BODY_LEN + DIGEST_LEN;
/// The `meta` record of the chain.
pub(crate) const META_KEY: &[u8] = b"chain";
const META_LEN: usize = 48;

fn hasher(key: Option<&[u8; 32]>) -> blake3::Hasher {
    match key {
        Some(key) => blake3::Hasher::new_keyed(key),
        None => blake3::Hasher::new(),
    }
}

/// The digest of `h`; a keyed hasher (holding the chain's key) is then
/// zeroed.
fn finish(mut h: blake3::Hasher, keyed: bool) -> Digest {
    let d = *h.finalize().as_bytes();
    if keyed {
        zeroize::Zeroize::zeroize(&mut h);
    }
    d
}

/// The digest before a store's first block.
pub(crate) fn genesis(key: Option<&[u8; 32]>, id: StoreId) -> Digest {
    let mut h = hasher(key);
    h.update(b"varvedb chain genesis 1");
    h.update(id.as_bytes());
    finish(h, key.is_some())
}

/// A block's leaf: its header and an (unkeyed) digest of everything after it.
pub(crate) fn leaf(block: &[u8]) -> Leaf {
    let mut out = [0u8; LEAF_LEN];
    let split = block.len().min(HEADER_LEN);
    out[..split].copy_from_slice(&block[..split]);
    out[HEADER_LEN..].copy_from_slice(blake3::hash(&block[split..]).as_bytes());
    out
}

/// The digest of a block whose leaf is `leaf`, after `prev`.
pub(crate) fn link(key: Option<&[u8; 32]>, prev: &Digest, leaf: &Leaf) -> Digest {
    let mut h = hasher(key);
    h.update(b"VARVELNK");
    h.update(prev);
    h.update(leaf);
    finish(h, key.is_some())
}

fn check_value(key: Option<&[u8; 32]>, id: StoreId) -> Digest {
    match key {
        None => [0; 32],
        Some(key) => {
            let mut h = blake3::Hasher::new_keyed(key);
            h.update(b"varvedb chain key check 1");
            h.update(id.as_bytes());
            finish(h, true)
        }
    }
}

fn reseal_link(key: Option<&[u8; 32]>, prev: &Digest, body: &[u8]) -> Digest {
    let mut h = hasher(key);
    h.update(b"VARVESEA");
    h.update(prev);
    h.update(body);
    finish(h, key.is_some())
}

/// The head digest (unkeyed: its parts are).
pub(crate) fn head(sequence: u64, reseals: u64, last: &Digest, seal: &Digest) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"VARVEHED");
    h.update(&sequence.to_be_bytes());
    h.update(&reseals.to_be_bytes());
    h.update(last);
    h.update(seal);
    *h.finalize().as_bytes()
}

fn u64_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn digest_of(b: &[u8]) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&b[..32]);
    d
}

fn leaf_of(b: &[u8]) -> Leaf {
    let mut l = [0u8; LEAF_LEN];
    l.copy_from_slice(&b[..LEAF_LEN]);
    l
}

/// The chain's `meta` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) keyed: bool,
    pub(crate) on: bool,
    pub(crate) cursor: u64,
    kcv: Digest,
}

impl Meta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0] = 1;
        b[1] = if self.keyed { 2 } else { 1 };
        b[2] = u8::from(self.on);
        b[8..16].copy_from_slice(&self.cursor.to_le_bytes());
        b[16..].copy_from_slice(&self.kcv);
        b
    }

    fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != META_LEN || b[0] != 1 || !matches!(b[1], 1 | 2) || b[2] > 1 {
            return None;
        }
        Some(Meta {
            keyed: b[1] == 2,
            on: b[2] == 1,
            cursor: u64_le(&b[8..16]),
            kcv: digest_of(&b[16..]),
        })
    }

    fn mode(&self) -> ChainMode {
        if self.keyed {
            ChainMode::Keyed
        } else {
            ChainMode::Plain
        }
    }

    fn describe(&self) -> &'static str {
        if self.keyed {
            "a keyed chain"
        } else {
            "a plain chain"
        }
    }
}

fn requested_name(chain: &Chain) -> &'static str {
    match chain {
        Chain::Plain => "plain chain",
        Chain::Keyed(_) => "keyed chain",
    }
}

fn corrupt(detail: impl Into<String>) -> Error {
    Error::Corruption {
        location: Location::Record("the tamper-evident chain".into()),
        detail: detail.into(),
    }
}

/// Reads the chain's `meta` record.
pub(super) fn read_meta(kv: &impl super::kv::MetaKv, max_readers: u32) -> Result<Option<Meta>> {
    let raw = kv.meta_get(META_KEY).map_err(super::storage_error(
        "reading the chain's metadata",
        max_readers,
    ))?;
    match raw {
        None => Ok(None),
        Some(raw) => Meta::decode(raw)
            .map(Some)
            .ok_or_else(|| corrupt(format!("a malformed chain record of {} bytes", raw.len()))),
    }
}

/// At open: checks the chain `requested` against the store's `found`
/// record. Returns the record a *new* store (`create`) is to write.
pub(super) fn settle_at_open(
    path: &std::path::Path,
    id: StoreId,
    found: Option<Meta>,
    requested: Option<&Chain>,
    create: bool,
) -> Result<Option<Meta>> {
    let Some(requested) = requested else {
        return Ok(None);
    };
    match found {
        None if create => Ok(Some(Meta {
            keyed: requested.key().is_some(),
            on: true,
            cursor: 0,
            kcv: check_value(requested.key().as_ref(), id),
        })),
        None => Err(Error::ChainModeMismatch {
            path: path.to_path_buf(),
            found: "no tamper-evident chain",
            requested: requested_name(requested),
        }),
        Some(m) => {
            check_requested(path, id, &m, requested)?;
            Ok(None)
        }
    }
}

fn check_requested(path: &std::path::Path, id: StoreId, m: &Meta, chain: &Chain) -> Result<()> {
    if m.keyed != chain.key().is_some() {
        return Err(Error::ChainModeMismatch {
            path: path.to_path_buf(),
            found: m.describe(),
            requested: requested_name(chain),
        });
    }
    if m.keyed && check_value(chain.key().as_ref(), id) != m.kcv {
        return Err(Error::ChainKeyMismatch {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Writes the chain's `meta` record (a new store's, at open).
pub(super) fn write_meta(
    kv: &mut impl super::kv::MetaKv,
    record: &Meta,
    max_readers: u32,
) -> Result<()> {
    kv.meta_put(META_KEY, &record.encode())
        .map_err(super::storage_error(
            "writing the chain's metadata",
            max_readers,
        ))
}

/// What a write transaction knows of the chain, read once per transaction.
#[derive(Debug, Default)]
pub(crate) enum TxnChain {
    /// Not read yet in this transaction.
    #[default]
    Unknown,
    /// No chain, or one still being enabled: appends hash nothing.
    Off,
    /// Appends extend the chain from `digest`.
    Tail {
        key: Option<[u8; 32]>,
        digest: Digest,
    },
}

/// One re-seal record, decoded.
struct Record {
    block: u64,
    prev: u64,
    at_micros: u64,
    old: Leaf,
    new: Leaf,
    link: Digest,
}

impl Record {
    fn decode(v: &[u8]) -> Option<Record> {
        if v.len() != RESEAL_LEN {
            return None;
        }
        Some(Record {
            block: u64_le(&v[0..8]),
            prev: u64_le(&v[8..16]),
            at_micros: u64_le(&v[16..24]),
            old: leaf_of(&v[32..128]),
            new: leaf_of(&v[128..224]),
            link: digest_of(&v[224..]),
        })
    }

    fn public(&self, number: u64) -> Reseal {
        Reseal {
            number,
            block: GlobalSequence(self.block),
            at_micros: self.at_micros,
            old_fingerprint: u64_le(&self.old[24..32]),
            new_fingerprint: u64_le(&self.new[24..32]),
        }
    }
}

/// Where a walk over the chain ended.
struct WalkEnd {
    /// The last block walked: key, end, stored digest.
    last: Option<(u64, u64, Digest)>,
}

impl Store {
    /// The key appends and checks use: the one given at open or to
    /// `enable_chain`.
    pub(crate) fn chain_key(&self) -> Option<[u8; 32]> {
        *self.chain_key.read()
    }

    pub(crate) fn set_chain_key(&self, key: Option<[u8; 32]>) {
        if key.is_some() {
            *self.chain_key.write() = key;
        }
    }

    fn chain_meta(&self, txn: &Txn<'_>) -> Result<Option<Meta>> {
        read_meta(&(txn, self.meta), self.config.max_readers)
    }

    fn key_for(&self, m: &Meta, operation: &'static str) -> Result<Option<[u8; 32]>> {
        if !m.keyed {
            return Ok(None);
        }
        self.chain_key()
            .map(Some)
            .ok_or_else(|| Error::ChainKeyRequired {
                path: self.path.clone(),
                operation,
            })
    }

    /// Whether and how far the store is chained, as `txn` sees it.
    pub(crate) fn chain_status(&self, txn: &Txn<'_>) -> Result<ChainStatus> {
        Ok(match self.chain_meta(txn)? {
            None => ChainStatus::Off,
            Some(m) if m.on => ChainStatus::On { mode: m.mode() },
            Some(m) => ChainStatus::Enabling {
                mode: m.mode(),
                covered: GlobalSequence(m.cursor),
            },
        })
    }

    /// The head, from the stored digests (no key needed); `None` without a
    /// complete chain or for an empty log.
    pub(crate) fn head_digest(&self, txn: &Txn<'_>) -> Result<Option<HeadDigest>> {
        let err = self.err("reading the chain");
        let (Some(m), Some(chain)) = (self.chain_meta(txn)?, self.chain.as_ref()) else {
            return Ok(None);
        };
        if !m.on {
            return Ok(None);
        }
        let Some((k, v)) = chain.last(txn).map_err(&err)? else {
            return Ok(None);
        };
        let key = parse_event_key(k).ok_or_else(|| corrupt("a malformed chain key"))?;
        if v.len() != DIGEST_LEN && v.len() != AMENDED_LEN {
            return Err(corrupt(format!("a chain value of {} bytes", v.len())));
        }
        let last = digest_of(v);
        let block = self
            .events
            .get(txn, &event_key(key))
            .map_err(&err)?
            .ok_or_else(|| corrupt(format!("a chain digest for no block, at {key}")))?;
        let end = self.stored_header(key, block)?.end_global();
        let (reseals, seal) = self.last_reseal(txn)?;
        Ok(Some(HeadDigest {
            sequence: GlobalSequence(end - 1),
            reseals,
            digest: head(end - 1, reseals, &last, &seal),
        }))
    }

    fn last_reseal(&self, txn: &Txn<'_>) -> Result<(u64, Digest)> {
        let Some(seals) = self.seals.as_ref() else {
            return Ok((0, [0; 32]));
        };
        match seals.last(txn).map_err(self.err("reading the chain"))? {
            None => Ok((0, [0; 32])),
            Some((k, v)) => {
                let n = <[u8; 8]>::try_from(k)
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("a malformed re-seal key"))?;
                let r = Record::decode(v).ok_or_else(|| corrupt("a malformed re-seal record"))?;
                Ok((n, r.link))
            }
        }
    }

    fn reseal_record(&self, txn: &Txn<'_>, n: u64) -> Result<Option<Record>> {
        let Some(seals) = self.seals.as_ref() else {
            return Ok(None);
        };
        Ok(seals
            .get(txn, &n.to_be_bytes())
            .map_err(self.err("reading the chain"))?
            .and_then(Record::decode))
    }

    /// Walks the blocks below `upto` and their chain digests, recomputing
    /// each link; `problem(block, detail)` for each break, which stops the
    /// walk when it returns false. With `leftovers`, chain digests past the
    /// last block (below `upto`) are problems too.
    fn walk_chain(
        &self,
        txn: &Txn<'_>,
        key: Option<&[u8; 32]>,
        upto: u64,
        leftovers: bool,
        problem: &mut dyn FnMut(Option<u64>, String) -> bool,
    ) -> Result<Option<WalkEnd>> {
        let err = self.err("verifying the chain");
        let Some(chain) = self.chain.as_ref() else {
            return Ok(Some(WalkEnd { last: None }));
        };
        let mut digests = chain.iter(txn).map_err(&err)?.peekable();
        let mut prev = genesis(key, self.store_id);
        let mut last = None;
        for item in self.events.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let Some(global) = parse_event_key(k) else {
                continue; // the damage walk reports it
            };
            if global >= upto {
                break;
            }
            let end = self
                .stored_header(global, v)
                .map(|h| h.end_global())
                .unwrap_or(global + 1);
            // Digests of no block before this one.
            let stored = loop {
                match digests.peek() {
                    Some(Ok((ck, _))) => match parse_event_key(ck) {
                        Some(c) if c == global => {
                            let (_, value) =
                                digests.next().and_then(|r| r.ok()).unwrap_or_default();
                            break Some(value);
                        }
                        Some(c) if c > global => break None,
                        c => {
                            let at = c.unwrap_or(global);
                            digests.next();
                            if !problem(Some(at), format!("a chain digest at {at} names no block"))
                            {
                                return Ok(None);
                            }
                        }
                    },
                    Some(Err(_)) => {
                        let e = digests.next().and_then(|r| r.err());
                        return Err(e.map_or_else(|| corrupt("reading the chain"), &err));
                    }
                    None => break None,
                }
            };
            let Some(value) = stored else {
                if !problem(Some(global), "the block has no chain digest".into()) {
                    return Ok(None);
                }
                prev = link(key, &prev, &leaf(v));
                last = Some((global, end, prev));
                continue;
            };
            let current = leaf(v);
            let chained = match value.len() {
                DIGEST_LEN => current,
                AMENDED_LEN => {
                    let n = u64_le(&value[DIGEST_LEN + LEAF_LEN..]);
                    let record = self.reseal_record(txn, n)?;
                    if !record.is_some_and(|r| r.block == global && r.new == current) {
                        let detail = format!(
                            "the block differs from what its last re-seal record ({n}) says it became"
                        );
                        if !problem(Some(global), detail) {
                            return Ok(None);
                        }
                    }
                    leaf_of(&value[DIGEST_LEN..])
                }
                n => {
                    if !problem(Some(global), format!("a chain value of {n} bytes")) {
                        return Ok(None);
                    }
                    continue;
                }
            };
            let digest = digest_of(value);
            if link(key, &prev, &chained) != digest {
                let detail = "the block does not match its chain digest: it, or the order of \
                              the blocks before it, was changed (an event rewritten, removed, \
                              inserted or moved)"
                    .to_string();
                if !problem(Some(global), detail) {
                    return Ok(None);
                }
            }
            // Go on from the stored digest: each break is reported once.
            prev = digest;
            last = Some((global, end, digest));
        }
        if leftovers {
            for item in digests {
                let (ck, _) = item.map_err(&err)?;
                let at = parse_event_key(ck).unwrap_or(u64::MAX);
                if at >= upto {
                    break;
                }
                let detail = format!(
                    "a chain digest at {at}, past the log's last block: the log was cut short"
                );
                if !problem(Some(at), detail) {
                    return Ok(None);
                }
            }
        }
        Ok(Some(WalkEnd { last }))
    }

    /// Walks the re-seal records: each link recomputed, each record
    /// consistent with the block it names (when the block is in the log).
    /// `each(n, record)` sees every record.
    fn walk_reseals(
        &self,
        txn: &Txn<'_>,
        key: Option<&[u8; 32]>,
        log_end: u64,
        each: &mut dyn FnMut(u64, &Record, &Digest),
        problem: &mut dyn FnMut(Option<u64>, String) -> bool,
    ) -> Result<bool> {
        let err = self.err("verifying the chain");
        let (Some(seals), Some(chain)) = (self.seals.as_ref(), self.chain.as_ref()) else {
            return Ok(true);
        };
        let mut prev_link = [0u8; 32];
        let mut count = 0u64;
        for item in seals.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let n = <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0);
            let Some(record) = Record::decode(v) else {
                if !problem(None, format!("re-seal record {n} is malformed")) {
                    return Ok(false);
                }
                continue;
            };
            let at = Some(record.block);
            if n != count + 1 {
                let detail = format!("re-seal records jump from {count} to {n}: some were removed");
                if !problem(at, detail) {
                    return Ok(false);
                }
            }
            if reseal_link(key, &prev_link, &v[..BODY_LEN]) != record.link {
                let detail = format!("re-seal record {n} does not match the chain of re-seals");
                if !problem(at, detail) {
                    return Ok(false);
                }
            }
            if record.block < log_end {
                let value = chain
                    .get(txn, &event_key(record.block))
                    .map_err(&err)?
                    .filter(|v| v.len() == AMENDED_LEN);
                let before = match (value, record.prev) {
                    (None, _) => None,
                    (Some(v), 0) => Some(leaf_of(&v[DIGEST_LEN..])),
                    (Some(_), p) => self
                        .reseal_record(txn, p)?
                        .filter(|r| r.block == record.block)
                        .map(|r| r.new),
                };
                if before != Some(record.old) {
                    let detail =
                        format!("re-seal record {n} does not follow what the block was before it");
                    if !problem(at, detail) {
                        return Ok(false);
                    }
                }
            }
            each(n, &record, &prev_link);
            prev_link = record.link;
            count = n;
        }
        Ok(true)
    }

    /// The chain part of [`Store::verify`].
    pub(crate) fn verify_chain(&self, txn: &Txn<'_>, report: &mut VerifyReport) -> Result<()> {
        let Some(m) = self.chain_meta(txn)? else {
            report.chain = ChainCheck::Off;
            return Ok(());
        };
        let key = match self.key_for(&m, "checking the chain") {
            Ok(key) => key,
            Err(_) => {
                report.chain = ChainCheck::KeyMissing;
                return Ok(());
            }
        };
        let upto = if m.on { u64::MAX } else { m.cursor };
        let mut problems = Vec::new();
        let mut note = |at: Option<u64>, detail: String| {
            let location = match at {
                Some(g) => Location::Global(GlobalSequence(g)),
                None => Location::Record("the tamper-evident chain".into()),
            };
            problems.push(Problem::chain(location, detail));
            true
        };
        self.walk_chain(txn, key.as_ref(), upto, true, &mut note)?;
        let end = self.end_global(txn).unwrap_or(0);
        self.walk_reseals(txn, key.as_ref(), end, &mut |_, _, _| {}, &mut note)?;
        report.problems.extend(problems);
        report.chain = if m.on {
            ChainCheck::Checked {
                // A chain whose last digest names no block (a cut log) has
                // no head: the problem says why.
                head: self.head_digest(txn).ok().flatten(),
            }
        } else {
            ChainCheck::Enabling {
                covered: GlobalSequence(m.cursor),
            }
        };
        Ok(())
    }

    /// Whether the log extends `held`: see [`crate::Varve::verify_extends`].
    pub(crate) fn verify_extends(&self, txn: &Txn<'_>, held: &HeadDigest) -> Result<Extension> {
        let m = match self.chain_meta(txn)? {
            None => {
                return Err(Error::ChainNotEnabled {
                    path: self.path.clone(),
                    detail: "it keeps no chain".into(),
                })
            }
            Some(m) if !m.on => {
                return Err(Error::ChainNotEnabled {
                    path: self.path.clone(),
                    detail: format!("its chain is being enabled (covered up to {})", m.cursor),
                })
            }
            Some(m) => m,
        };
        let key = self.key_for(&m, "checking a held head")?;
        let seq = held.sequence.0;
        let mut first = None;
        let mut stop = |at: Option<u64>, detail: String| {
            first = Some((at, detail));
            false
        };
        let walked = self.walk_chain(txn, key.as_ref(), seq.saturating_add(1), false, &mut stop)?;
        let diverges = |at: Option<u64>, detail: String| Extension::Diverges {
            at: at.map(GlobalSequence),
            detail,
        };
        if let Some((at, detail)) = first {
            return Ok(diverges(at, detail));
        }
        let last = walked.and_then(|w| w.last);
        let Some((block, end, digest)) = last else {
            return Ok(diverges(
                None,
                format!("the log is empty: it was cut short before the held head's {seq}"),
            ));
        };
        if end <= seq {
            return Ok(diverges(
                Some(end),
                format!("the log ends at {end}, before the held head's {seq}: it was cut short"),
            ));
        }
        if end != seq + 1 {
            return Ok(diverges(
                Some(block),
                format!(
                    "the held head's sequence {seq} falls inside the block at {block}: blocks up \
                     to it were changed"
                ),
            ));
        }
        let log_end = self.end_global(txn).unwrap_or(0);
        let mut link_at = (held.reseals == 0).then_some([0u8; 32]);
        let mut count = 0;
        let mut resealed = Vec::new();
        let mut first = None;
        let mut stop = |at: Option<u64>, detail: String| {
            first = Some((at, detail));
            false
        };
        self.walk_reseals(
            txn,
            key.as_ref(),
            log_end,
            &mut |n, record, _| {
                count = n;
                if n == held.reseals {
                    link_at = Some(record.link);
                }
                if n > held.reseals {
                    resealed.push(record.public(n));
                }
            },
            &mut stop,
        )?;
        if let Some((at, detail)) = first {
            return Ok(diverges(at, detail));
        }
        let Some(link_at) = link_at else {
            return Ok(diverges(
                None,
                format!(
                    "the held head covers {} re-seal records, the store has {count}: records \
                     were removed",
                    held.reseals
                ),
            ));
        };
        if head(seq, held.reseals, &digest, &link_at) != held.digest {
            return Ok(diverges(
                None,
                format!(
                    "the log up to sequence {seq} does not hash to the held head: events up to \
                     it were rewritten, removed, inserted or reordered, or a re-seal it covers \
                     was changed, and the chain computed anew"
                ),
            ));
        }
        Ok(Extension::Extends { resealed })
    }

    /// The `chain` value of the block at `key` (for exports).
    pub(crate) fn chain_value(&self, txn: &Txn<'_>, key: u64) -> Result<Option<Vec<u8>>> {
        let Some(chain) = self.chain.as_ref() else {
            return Ok(None);
        };
        Ok(chain
            .get(txn, &event_key(key))
            .map_err(self.err("reading the chain"))?
            .map(<[u8]>::to_vec))
    }

    /// Calls `f(number, record)` for every re-seal record of a block at or
    /// after `from`, in order (for exports).
    pub(crate) fn for_each_reseal(
        &self,
        txn: &Txn<'_>,
        from: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let Some(seals) = self.seals.as_ref() else {
            return Ok(());
        };
        let err = self.err("reading the chain");
        for item in seals.iter(txn).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            let n = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("a malformed re-seal key"))?;
            if v.len() == RESEAL_LEN && u64_le(v) >= from {
                f(n, v)?;
            }
        }
        Ok(())
    }

    /// The store's chain mode (for restores rebuilding a store like it).
    pub(crate) fn chain_mode(&self, txn: &Txn<'_>) -> Result<Option<ChainMode>> {
        Ok(self.chain_meta(txn)?.map(|m| m.mode()))
    }
}

impl WriteTxn<'_> {
    fn chain_db(&self) -> Result<super::kv::Table> {
        self.store.chain.ok_or_else(|| Error::ReadOnly {
            path: self.store.path.clone(),
            operation: "writing the chain",
        })
    }

    fn seals_db(&self) -> Result<super::kv::Table> {
        self.store.seals.ok_or_else(|| Error::ReadOnly {
            path: self.store.path.clone(),
            operation: "writing the chain",
        })
    }

    fn load_chain_tail(&self, global: u64) -> Result<TxnChain> {
        let store = self.store;
        let Some(m) = store.chain_meta(&self.txn)? else {
            return Ok(TxnChain::Off);
        };
        if !m.on {
            return Ok(TxnChain::Off);
        }
        let key = store.key_for(&m, "appending")?;
        let last = self.chain_db()?.last(&self.txn);
        let digest = match self.lmdb("reading the chain", last)? {
            None if global == 0 => genesis(key.as_ref(), store.store_id),
            None => {
                return Err(corrupt(format!(
                    "the chain is on but holds no digest for the blocks before {global}"
                )))
            }
            Some((k, v)) => {
                let at = parse_event_key(k).ok_or_else(|| corrupt("a malformed chain key"))?;
                let block = store.events.get(&self.txn, &event_key(at));
                let block = self.lmdb("reading the event log", block)?;
                let end = block.and_then(|b| store.stored_header(at, b).ok());
                if end.map(|h| h.end_global()) != Some(global) || v.len() < DIGEST_LEN {
                    return Err(corrupt(format!(
                        "the chain's last digest (at {at}) is not of the block before {global}"
                    )));
                }
                digest_of(v)
            }
        };
        Ok(TxnChain::Tail { key, digest })
    }

    /// Extends the chain with the block `bytes` just written at `global`, if
    /// the store keeps a chain. `original` is the source's `chain` value of
    /// a re-sealed block a restore copies (whose digest covers the block as
    /// first written).
    pub(crate) fn chain_append(
        &mut self,
        global: u64,
        bytes: &[u8],
        original: Option<&[u8]>,
    ) -> Result<()> {
        if matches!(self.chain, TxnChain::Unknown) {
            self.chain = self.load_chain_tail(global)?;
        }
        let TxnChain::Tail { key, digest } = &self.chain else {
            return Ok(());
        };
        let amended = original.filter(|v| v.len() == AMENDED_LEN);
        let chained = match amended {
            Some(v) => leaf_of(&v[DIGEST_LEN..]),
            None => leaf(bytes),
        };
        let d = link(key.as_ref(), digest, &chained);
        let mut value = [0u8; AMENDED_LEN];
        value[..DIGEST_LEN].copy_from_slice(&d);
        let len = match amended {
            Some(v) => {
                value[DIGEST_LEN..].copy_from_slice(&v[DIGEST_LEN..]);
                AMENDED_LEN
            }
            None => DIGEST_LEN,
        };
        let put = self
            .chain_db()?
            .append(&mut self.txn, &event_key(global), &value[..len]);
        self.lmdb("extending the chain", put)?;
        if let TxnChain::Tail { digest, .. } = &mut self.chain {
            *digest = d;
        }
        Ok(())
    }

    /// After a migration rewrote the block at `global` in place (its leaf
    /// was `old`, its bytes are now `new`): records a re-seal, if the chain
    /// covers the block. The block's digest stays (it covers the block as
    /// written); a block that no longer matches the chain is refused, never
    /// re-sealed. Returns whether a re-seal was recorded.
    pub(crate) fn chain_reseal(&mut self, global: u64, old: &Leaf, new: &[u8]) -> Result<bool> {
        let store = self.store;
        let Some(m) = store.chain_meta(&self.txn)? else {
            return Ok(false);
        };
        if !m.on && global >= m.cursor {
            return Ok(false); // enabling will chain the new bytes
        }
        let key = store.key_for(&m, "re-sealing a migrated block")?;
        let got = self.chain_db()?.get(&self.txn, &event_key(global));
        let value = self
            .lmdb("reading the chain", got)?
            .map(<[u8]>::to_vec)
            .ok_or_else(|| corrupt(format!("the block at {global} has no chain digest")))?;
        let broken = || Error::Corruption {
            location: Location::Global(GlobalSequence(global)),
            detail: "the block does not match the tamper-evident chain: a migration never \
                         re-seals a changed block"
                .into(),
        };
        let (original, prev) = match value.len() {
            DIGEST_LEN => {
                let before = self
                    .chain_db()?
                    .get_lower_than(&self.txn, &event_key(global));
                let before = match self.lmdb("reading the chain", before)? {
                    Some((_, v)) if v.len() >= DIGEST_LEN => digest_of(v),
                    Some(_) => return Err(broken()),
                    None => genesis(key.as_ref(), store.store_id),
                };
                if link(key.as_ref(), &before, old) != digest_of(&value) {
                    return Err(broken());
                }
                (*old, 0)
            }
            AMENDED_LEN => {
                let n = u64_le(&value[DIGEST_LEN + LEAF_LEN..]);
                match store.reseal_record(&self.txn, n)? {
                    Some(r) if r.block == global && r.new == *old => {}
                    _ => return Err(broken()),
                }
                (leaf_of(&value[DIGEST_LEN..]), n)
            }
            _ => return Err(broken()),
        };
        let (count, last_link) = store.last_reseal(&self.txn)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut record = [0u8; RESEAL_LEN];
        record[0..8].copy_from_slice(&global.to_le_bytes());
        record[8..16].copy_from_slice(&prev.to_le_bytes());
        record[16..24].copy_from_slice(&now.to_le_bytes());
        record[32..128].copy_from_slice(old);
        record[128..224].copy_from_slice(&leaf(new));
        let sealed = reseal_link(key.as_ref(), &last_link, &record[..BODY_LEN]);
        record[BODY_LEN..].copy_from_slice(&sealed);
        let n = count + 1;
        let put = self
            .seals_db()?
            .append(&mut self.txn, &n.to_be_bytes(), &record);
        self.lmdb("recording a re-seal", put)?;
        let mut amended = [0u8; AMENDED_LEN];
        amended[..DIGEST_LEN].copy_from_slice(&value[..DIGEST_LEN]);
        amended[DIGEST_LEN..DIGEST_LEN + LEAF_LEN].copy_from_slice(&original);
        amended[DIGEST_LEN + LEAF_LEN..].copy_from_slice(&n.to_le_bytes());
        let put = self
            .chain_db()?
            .put(&mut self.txn, &event_key(global), &amended);
        self.lmdb("recording a re-seal", put)?;
        Ok(true)
    }

    /// Copies a re-seal record of a store of the same id (a restore): it
    /// must continue this store's re-seals. `verify` checks it afterwards.
    pub(crate) fn import_reseal(&mut self, n: u64, record: &[u8]) -> Result<()> {
        if record.len() != RESEAL_LEN {
            return Err(corrupt(format!(
                "a re-seal record of {} bytes",
                record.len()
            )));
        }
        let (count, _) = self.store.last_reseal(&self.txn)?;
        if n != count + 1 {
            return Err(corrupt(format!(
                "re-seal record {n} does not continue this store's {count} re-seals"
            )));
        }
        let put = self
            .seals_db()?
            .append(&mut self.txn, &n.to_be_bytes(), record);
        self.lmdb("restoring a re-seal", put)
    }

    /// One batch of [`crate::Varve::enable_chain`]: chains at most `blocks`
    /// blocks from the cursor the last batch left, and turns the chain on
    /// when it reaches the log's end. Returns the blocks chained and
    /// whether the chain is on.
    pub(crate) fn enable_chain_batch(
        &mut self,
        chain: &Chain,
        blocks: usize,
    ) -> Result<(u64, bool)> {
        let store = self.store;
        let key = chain.key();
        let found = store.chain_meta(&self.txn)?;
        let mut m = match found {
            None => Meta {
                keyed: key.is_some(),
                on: false,
                cursor: 0,
                kcv: check_value(key.as_ref(), store.store_id),
            },
            Some(m) => {
                check_requested(&store.path, store.store_id, &m, chain)?;
                if m.on {
                    return Ok((0, true));
                }
                m
            }
        };
        let mut prev = if m.cursor == 0 {
            genesis(key.as_ref(), store.store_id)
        } else {
            let last = self.chain_db()?.last(&self.txn);
            match self.lmdb("reading the chain", last)? {
                Some((_, v)) if v.len() >= DIGEST_LEN => digest_of(v),
                _ => return Err(corrupt("the chain being enabled lost its last digest")),
            }
        };
        let mut digests = Vec::new();
        let mut reached_end = true;
        let start = event_key(m.cursor);
        let bounds = (Bound::Included(&start[..]), Bound::Unbounded);
        let range = store.events.range(&self.txn, &bounds);
        let mut plain = super::crypt::PlainBuf::default();
        for item in self.lmdb("reading the event log", range)? {
            if digests.len() >= blocks {
                reached_end = false;
                break;
            }
            let (k, v) = self.lmdb("reading the event log", item)?;
            let global = parse_event_key(k).ok_or_else(|| corrupt("a malformed event-log key"))?;
            // A damaged block is never chained: its bytes are not what was
            // written. An erased entity's block is not damage: its bytes are
            // as written (only its key is gone), and its header, in the
            // clear, says where it ends.
            let header = match store.open_stored(global, v, &mut plain) {
                Ok(view) => {
                    for i in 0..view.header().count {
                        view.slot(i)
                            .map_err(super::snapshot::corrupt_at(global + u64::from(i)))?;
                    }
                    *view.header()
                }
                // (Unless its header was altered to name an erased entity.)
                Err(e) => match store.check_erased(&self.txn, global, v, e) {
                    Error::Erased { .. } => store.stored_header(global, v)?,
                    e => return Err(e),
                },
            };
            if global != m.cursor {
                return Err(Error::Corruption {
                    location: Location::Global(GlobalSequence(m.cursor)),
                    detail: format!("the log has no block here (the next one is at {global})"),
                });
            }
            prev = link(key.as_ref(), &prev, &leaf(v));
            digests.push((global, prev));
            m.cursor = header.end_global();
        }
        for (global, digest) in &digests {
            let put = self
                .chain_db()?
                .append(&mut self.txn, &event_key(*global), digest);
            self.lmdb("enabling the chain", put)?;
        }
        m.on = reached_end;
        let put = store.meta.put(&mut self.txn, META_KEY, &m.encode());
        self.lmdb("enabling the chain", put)?;
        self.chain = TxnChain::Unknown;
        Ok((digests.len() as u64, m.on))
    }
}
