//! The stream catalog: stream names interned to 32-bit tags, each bound to one
//! event type.
//!
//! ```text
//! "n" + name       -> tag u32 | layout fingerprint u64 | schema fingerprint u64 | type name (UTF-8)
//! "t" + tag (BE)   -> name (UTF-8)
//! ```
//! Entries are written once, by the write transaction of a stream's first
//! append, and never change (except the schema fingerprint, filled in by the
//! first append of a `#[derive(Event)]` type to a stream created from a plain
//! rkyv type), so the in-memory cache never goes stale. Opening or reading a
//! stream never writes: a handle opened before its stream exists holds an
//! unbound [`StreamInfo`] that learns its tag when the stream appears.
//!
//! Names are compared byte for byte: nothing is normalised, so `"Café"` in
//! NFC and in NFD are two streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use heed::{RoTxn, RwTxn};
use parking_lot::RwLock;

use super::Store;
use crate::error::{Error, Location, Result};

/// The longest stream name, in bytes of UTF-8.
pub(crate) const MAX_STREAM_NAME_LEN: usize = 255;

const RECORD_FIXED: usize = 4 + 8 + 8;

/// What a handle knows of its stream's catalog entry, shared by the handle's
/// clones (readers, queued appends) so one learning it teaches all.
#[derive(Debug, Default)]
struct Binding {
    /// The stream's tag, once the stream exists in the catalog.
    tag: OnceLock<u32>,
    /// Whether the catalog entry is all an append needs (it exists and records
    /// the handle's schema fingerprint), so appends skip the catalog.
    settled: AtomicBool,
}

/// A stream as recorded in the catalog, or as a handle asked for it.
///
/// A handle opened before its stream exists is *unbound*: `tag()` is `None`,
/// reads find nothing, and the first append creates the catalog entry in its
/// own write transaction.
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    binding: Arc<Binding>,
    pub(crate) name: Arc<str>,
    pub(crate) type_name: Arc<str>,
    pub(crate) layout_fingerprint: u64,
    /// 0 when the stream was created from a type without `#[derive(Event)]`.
    pub(crate) schema_fingerprint: u64,
    /// Address of the `type_name` of the last Rust type found to match this
    /// stream, so typed reads of the global log check a type once, not per event.
    pub(crate) matched_type: Arc<AtomicUsize>,
}

impl StreamInfo {
    /// A catalog record (bound and settled).
    fn record(
        tag: u32,
        name: Arc<str>,
        type_name: Arc<str>,
        layout_fingerprint: u64,
        schema_fingerprint: u64,
    ) -> Self {
        let binding = Binding::default();
        let _ = binding.tag.set(tag);
        binding.settled.store(true, Ordering::Relaxed);
        StreamInfo {
            binding: Arc::new(binding),
            name,
            type_name,
            layout_fingerprint,
            schema_fingerprint,
            matched_type: Arc::default(),
        }
    }

    /// A handle's view of stream `name` opened with `ty`; `tag` if it exists.
    fn handle(name: Arc<str>, ty: &TypeIdentity<&str>, tag: Option<u32>, settled: bool) -> Self {
        let binding = Binding::default();
        if let Some(tag) = tag {
            let _ = binding.tag.set(tag);
        }
        binding.settled.store(settled, Ordering::Relaxed);
        StreamInfo {
            binding: Arc::new(binding),
            name,
            type_name: ty.type_name.into(),
            layout_fingerprint: ty.layout_fingerprint,
            schema_fingerprint: ty.schema_fingerprint,
            matched_type: Arc::default(),
        }
    }

    /// The stream's tag, or `None` while the stream does not exist (as far
    /// as this handle has seen).
    #[inline]
    pub(crate) fn tag(&self) -> Option<u32> {
        self.binding.tag.get().copied()
    }

    /// The tag, when the catalog entry needs nothing more from an append.
    #[inline]
    fn settled_tag(&self) -> Option<u32> {
        if self.binding.settled.load(Ordering::Acquire) {
            self.tag()
        } else {
            None
        }
    }

    /// Records that the stream exists with `tag`, with an entry that needs
    /// nothing more from appends when `settled`.
    fn bind(&self, tag: u32, settled: bool) {
        let _ = self.binding.tag.set(tag);
        if settled {
            self.binding.settled.store(true, Ordering::Release);
        }
    }

    fn identity(&self) -> TypeIdentity<&str> {
        TypeIdentity {
            type_name: &self.type_name,
            layout_fingerprint: self.layout_fingerprint,
            schema_fingerprint: self.schema_fingerprint,
        }
    }

    /// Whether the Rust type named `type_name` with `layout_fingerprint` is this
    /// stream's type. `layout_fingerprint` is only computed on a cache miss.
    pub(crate) fn holds(
        &self,
        type_name: &'static str,
        layout_fingerprint: impl FnOnce() -> u64,
    ) -> bool {
        let key = type_name.as_ptr() as usize;
        if self.matched_type.load(Ordering::Relaxed) == key {
            return true;
        }
        let holds =
            *self.type_name == *type_name && self.layout_fingerprint == layout_fingerprint();
        if holds {
            self.matched_type.store(key, Ordering::Relaxed);
        }
        holds
    }
}

/// The identity of the type a caller opens a stream with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TypeIdentity<S = &'static str> {
    pub(crate) type_name: S,
    pub(crate) layout_fingerprint: u64,
    /// 0 when unknown (a plain rkyv type).
    pub(crate) schema_fingerprint: u64,
}

/// A stream entry created or completed by a write transaction, to be taught
/// to its handle and the cache once (and only if) the transaction commits.
#[derive(Debug)]
pub(crate) struct Bound {
    handle: StreamInfo,
    tag: u32,
    record: StreamInfo,
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    by_name: RwLock<HashMap<Arc<str>, StreamInfo>>,
    by_tag: RwLock<HashMap<u32, Arc<StreamInfo>>>,
}

fn name_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'n');
    k.extend_from_slice(name.as_bytes());
    k
}

fn tag_key(tag: u32) -> [u8; 5] {
    let mut k = [b't', 0, 0, 0, 0];
    k[1..].copy_from_slice(&tag.to_be_bytes());
    k
}

fn corrupt(what: String, detail: impl Into<String>) -> Error {
    Error::Corruption {
        location: Location::Record(what),
        detail: detail.into(),
    }
}

fn decode(name: &str, v: &[u8]) -> Result<(u32, StreamInfo)> {
    let bad = || {
        corrupt(
            format!("the catalog entry of stream {name:?}"),
            "malformed record",
        )
    };
    if v.len() < RECORD_FIXED {
        return Err(bad());
    }
    let type_name = std::str::from_utf8(&v[RECORD_FIXED..]).map_err(|_| bad())?;
    let tag = u32::from_le_bytes(v[..4].try_into().map_err(|_| bad())?);
    let info = StreamInfo::record(
        tag,
        name.into(),
        type_name.into(),
        u64::from_le_bytes(v[4..12].try_into().map_err(|_| bad())?),
        u64::from_le_bytes(v[12..20].try_into().map_err(|_| bad())?),
    );
    Ok((tag, info))
}

fn encode(tag: u32, info: &StreamInfo) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_FIXED + info.type_name.len());
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&info.layout_fingerprint.to_le_bytes());
    v.extend_from_slice(&info.schema_fingerprint.to_le_bytes());
    v.extend_from_slice(info.type_name.as_bytes());
    v
}

/// Checks a stream name against the documented rules: 1 to 255 bytes of
/// UTF-8 without control characters (`char::is_control`: NUL, tab, line
/// breaks, DEL, the C1 range). Nothing is normalised: names are compared byte
/// for byte.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a stream name must not be empty"
    } else if name.len() > MAX_STREAM_NAME_LEN {
        "a stream name must be at most 255 bytes of UTF-8"
    } else if name.chars().any(char::is_control) {
        "a stream name must not contain control characters"
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(64).collect();
    Err(Error::InvalidStreamName {
        name: shown,
        reason,
    })
}

/// Whether `record` (the catalog entry) needs nothing more from an append of
/// a handle of type `ty`: it records `ty`'s schema fingerprint, or `ty` has none.
fn settles(record: &StreamInfo, ty: &TypeIdentity<&str>) -> bool {
    record.schema_fingerprint != 0 || ty.schema_fingerprint == 0
}

fn check_type(info: &StreamInfo, ty: &TypeIdentity<&str>) -> Result<()> {
    let schema_conflict = info.schema_fingerprint != 0
        && ty.schema_fingerprint != 0
        && info.schema_fingerprint != ty.schema_fingerprint;
    if *info.type_name != *ty.type_name
        || info.layout_fingerprint != ty.layout_fingerprint
        || schema_conflict
    {
        let (stored_fingerprint, requested_fingerprint) = if schema_conflict {
            (info.schema_fingerprint, ty.schema_fingerprint)
        } else {
            (info.layout_fingerprint, ty.layout_fingerprint)
        };
        return Err(Error::TypeMismatch {
            stream: info.name.to_string(),
            stored: info.type_name.to_string(),
            stored_fingerprint,
            requested: ty.type_name.to_string(),
            requested_fingerprint,
        });
    }
    Ok(())
}

impl Store {
    fn lookup(&self, txn: &RoTxn, name: &str) -> Result<Option<(u32, StreamInfo)>> {
        let raw = self
            .catalog
            .get(txn, &name_key(name))
            .map_err(self.err("reading the catalog"))?;
        raw.map(|v| decode(name, v)).transpose()
    }

    /// Remembers a committed catalog entry (replacing an older one when
    /// `newest`: a schema fingerprint recorded since).
    fn remember(&self, tag: u32, record: &StreamInfo, newest: bool) {
        let mut by_name = self.streams.by_name.write();
        if newest || !by_name.contains_key(&*record.name) {
            by_name.insert(Arc::clone(&record.name), record.clone());
            drop(by_name);
            self.streams
                .by_tag
                .write()
                .insert(tag, Arc::new(record.clone()));
        }
    }

    /// Opens the stream `name` for a handle of type `ty`, without writing:
    /// a `TypeMismatch` if the stream exists bound to another type, an
    /// unbound handle if it does not exist yet (its first append creates it).
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        name: &str,
        ty: &TypeIdentity,
    ) -> Result<StreamInfo> {
        validate_name(name)?;
        let ty = TypeIdentity {
            type_name: ty.type_name,
            layout_fingerprint: ty.layout_fingerprint,
            schema_fingerprint: ty.schema_fingerprint,
        };
        let cached = self.streams.by_name.read().get(name).cloned();
        let found = match cached {
            Some(record) => record.tag().map(|tag| (tag, record)),
            None => {
                let mut view = self.snapshot()?;
                let found = view.stream_entry(name)?;
                if let Some((tag, record)) = &found {
                    self.remember(*tag, record, false);
                }
                found
            }
        };
        match found {
            Some((tag, record)) => {
                check_type(&record, &ty)?;
                let settled = settles(&record, &ty);
                Ok(StreamInfo::handle(record.name, &ty, Some(tag), settled))
            }
            None => Ok(StreamInfo::handle(name.into(), &ty, None, false)),
        }
    }

    /// The catalog entry of `name` as `txn` sees it (for [`View`](super::View)).
    pub(super) fn stream_entry(
        &self,
        txn: &RoTxn,
        name: &str,
    ) -> Result<Option<(u32, StreamInfo)>> {
        self.lookup(txn, name)
    }

    /// The tag of `info`'s stream as `txn` sees it, `None` while the stream
    /// does not exist. A stream created since the handle was opened (by any
    /// handle or process) is checked against the handle's type, and the
    /// handle learns its tag.
    pub(crate) fn stream_tag(&self, txn: &RoTxn, info: &StreamInfo) -> Result<Option<u32>> {
        if let Some(tag) = info.tag() {
            return Ok(Some(tag));
        }
        let Some((tag, record)) = self.lookup(txn, &info.name)? else {
            return Ok(None);
        };
        let ty = info.identity();
        check_type(&record, &ty)?;
        info.bind(tag, settles(&record, &ty));
        self.remember(tag, &record, false);
        Ok(Some(tag))
    }

    /// For an append through `info` in a write transaction: `Ok(tag)` if the
    /// catalog entry needs nothing, else what [`Store::settle_stream`] needs
    /// (the existing entry, type-checked, or `None` to create one).
    pub(super) fn append_target(
        &self,
        txn: &RoTxn,
        info: &StreamInfo,
    ) -> Result<std::result::Result<u32, Option<(u32, StreamInfo)>>> {
        if let Some(tag) = info.settled_tag() {
            return Ok(Ok(tag));
        }
        let found = self.lookup(txn, &info.name)?;
        if let Some((_, record)) = &found {
            check_type(record, &info.identity())?;
        }
        Ok(Err(found))
    }

    /// Creates the catalog entry of `info`'s stream (`existing` is `None`) or
    /// records the handle's schema fingerprint in it, in `txn`. Returns the
    /// tag and what to teach the handle and the cache once `txn` commits.
    pub(super) fn settle_stream(
        &self,
        txn: &mut RwTxn,
        info: &StreamInfo,
        existing: Option<(u32, StreamInfo)>,
    ) -> Result<(u32, Bound)> {
        let err = self.err("creating a stream");
        let (tag, record) = match existing {
            Some((tag, mut record)) => {
                if !settles(&record, &info.identity()) {
                    record.schema_fingerprint = info.schema_fingerprint;
                    self.catalog
                        .put(txn, &name_key(&info.name), &encode(tag, &record))
                        .map_err(&err)?;
                }
                (tag, record)
            }
            None => {
                let tag = match self.catalog.get_lower_than(txn, b"u").map_err(&err)? {
                    Some((k, _)) if k.len() == 5 && k[0] == b't' => {
                        let last = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                        last.checked_add(1)
                            .ok_or_else(|| corrupt("the catalog".into(), "stream tags exhausted"))?
                    }
                    _ => 0,
                };
                let record = StreamInfo::record(
                    tag,
                    Arc::clone(&info.name),
                    Arc::clone(&info.type_name),
                    info.layout_fingerprint,
                    info.schema_fingerprint,
                );
                self.catalog
                    .put(txn, &name_key(&info.name), &encode(tag, &record))
                    .map_err(&err)?;
                self.catalog
                    .put(txn, &tag_key(tag), info.name.as_bytes())
                    .map_err(&err)?;
                (tag, record)
            }
        };
        let bound = Bound {
            handle: info.clone(),
            tag,
            record,
        };
        Ok((tag, bound))
    }

    /// Teaches handles and the cache the catalog entries a committed write
    /// transaction created or completed.
    pub(super) fn publish_bound(&self, bound: Vec<Bound>) {
        for b in bound {
            b.handle.bind(b.tag, true);
            self.remember(b.tag, &b.record, true);
        }
    }

    /// The stream with `tag`, read through `txn` on a cache miss (the stream
    /// may have been created by another process).
    pub(crate) fn stream_by_tag(&self, txn: &RoTxn, tag: u32) -> Result<Arc<StreamInfo>> {
        if let Some(info) = self.streams.by_tag.read().get(&tag) {
            return Ok(Arc::clone(info));
        }
        let err = self.err("reading the catalog");
        let raw = self
            .catalog
            .get(txn, &tag_key(tag))
            .map_err(&err)?
            .ok_or_else(|| {
                corrupt(
                    format!("stream tag {tag}"),
                    "an event names a stream that is not in the catalog",
                )
            })?;
        let name = std::str::from_utf8(raw)
            .map_err(|_| corrupt(format!("stream tag {tag}"), "stream name is not UTF-8"))?;
        let info = self
            .lookup(txn, name)?
            .filter(|(t, _)| *t == tag)
            .map(|(_, info)| info)
            .ok_or_else(|| {
                corrupt(
                    format!("stream tag {tag}"),
                    "the catalog's name and tag entries disagree",
                )
            })?;
        let info = Arc::new(info);
        self.streams.by_tag.write().insert(tag, Arc::clone(&info));
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_non_empty_and_at_most_255_bytes() {
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(255)).is_ok());
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name("commandes/été 🚀").is_ok());
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        for name in [
            "nul\0inside",
            "line\nbreak",
            "carriage\rreturn",
            "tab\there",
            "escape\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}next-line",
            "c1\u{9f}",
        ] {
            match validate_name(name) {
                Err(Error::InvalidStreamName { reason, .. }) => {
                    assert!(reason.contains("control"), "{name:?}: {reason}")
                }
                other => panic!("{name:?} was accepted: {other:?}"),
            }
        }
        // Not control characters: format and separator characters pass as
        // they are, byte for byte.
        assert!(validate_name("zero\u{200b}width").is_ok());
        assert!(validate_name("no\u{a0}break space").is_ok());
    }

    #[test]
    fn records_round_trip() {
        let info = StreamInfo::record(9, "orders".into(), "app::OrderPlaced".into(), 1, 2);
        let (tag, back) = decode("orders", &encode(9, &info)).unwrap();
        assert_eq!(
            (
                tag,
                &*back.type_name,
                back.layout_fingerprint,
                back.schema_fingerprint
            ),
            (9, "app::OrderPlaced", 1, 2)
        );
        assert!(decode("orders", &[1, 2]).is_err());
    }
}
