//! The stream catalog: stream names interned to 32-bit tags, each bound to one
//! event type.
//!
//! ```text
//! "n" + name       -> tag u32 | layout fingerprint u64 | schema fingerprint u64 | type name (UTF-8)
//! "t" + tag (BE)   -> name (UTF-8)
//! "f" + tag (BE)   -> event family: kind 1 | flags | name | [legacy] | versions
//! ```
//! The `f` record (new with event families; a stream without one is bound by
//! type name, as every stream of a format-1 store is) binds the stream to a
//! `#[derive(Event)]` family: its [`NAME`](crate::Event::NAME) and every
//! version it has stored, `(version, fingerprint)`, oldest first. It is
//! written by the write transaction that first appends a version of the
//! family (creating the stream, adopting a stream bound by type name, or
//! appending a new version), and rewritten by a migration that retires old
//! versions (see `storage/migrate.rs`): a retired version's events were all
//! rewritten, so no reader needs to know it any more.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::kv::Txn;
use parking_lot::RwLock;

use super::crypt::{PlainBuf, ValueKind};
use super::Store;
use crate::error::{Error, Location, Result};
use crate::event::Schema;

/// The longest stream name, in bytes of UTF-8.
pub(crate) const MAX_STREAM_NAME_LEN: usize = 255;

const RECORD_FIXED: usize = 4 + 8 + 8;

/// One version of an event family as the catalog records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredVersion {
    pub(crate) version: u32,
    pub(crate) fingerprint: u64,
    /// Retired by a migration: no event of the stream has it any more.
    pub(crate) retired: bool,
}

/// Blocks written before a stream was bound to its event family (by type
/// name: format 1, or [`Varve::stream`](crate::Varve::stream)) carry the
/// layout fingerprint `block`; they hold the version with fingerprint `schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Legacy {
    pub(crate) block: u64,
    pub(crate) schema: u64,
}

/// The event family a stream is bound to (the `f` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Family {
    pub(crate) name: String,
    /// Every version stored, oldest first.
    pub(crate) versions: Vec<StoredVersion>,
    pub(crate) legacy: Option<Legacy>,
}

const FAMILY_KIND: u8 = 1;
const FAMILY_HAS_LEGACY: u8 = 1;

impl Family {
    /// `(version, fingerprint)` of the versions not retired.
    pub(crate) fn live(&self) -> Vec<(u32, u64)> {
        self.versions
            .iter()
            .filter(|v| !v.retired)
            .map(|v| (v.version, v.fingerprint))
            .collect()
    }

    /// The version the family records for block fingerprint `fp`, if any.
    pub(crate) fn version_of(&self, fp: u64) -> Option<u32> {
        let fp = self
            .legacy
            .filter(|l| l.block == fp)
            .map_or(fp, |l| l.schema);
        self.versions
            .iter()
            .find(|v| v.fingerprint == fp)
            .map(|v| v.version)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.name.len() + 13 * self.versions.len());
        v.push(FAMILY_KIND);
        v.push(if self.legacy.is_some() {
            FAMILY_HAS_LEGACY
        } else {
            0
        });
        v.push(self.name.len() as u8);
        v.extend_from_slice(self.name.as_bytes());
        if let Some(l) = self.legacy {
            v.extend_from_slice(&l.block.to_le_bytes());
            v.extend_from_slice(&l.schema.to_le_bytes());
        }
        v.extend_from_slice(&(self.versions.len() as u32).to_le_bytes());
        for ver in &self.versions {
            v.extend_from_slice(&ver.version.to_le_bytes());
            v.extend_from_slice(&ver.fingerprint.to_le_bytes());
            v.push(u8::from(ver.retired));
        }
        v
    }

    fn decode(stream: &str, v: &[u8]) -> Result<Family> {
        let bad = |why: &str| {
            corrupt(
                format!("the event family record of stream {stream:?}"),
                why.to_string(),
            )
        };
        let mut r = Reader(v);
        if r.take(1).ok_or_else(|| bad("empty record"))?[0] != FAMILY_KIND {
            return Err(bad("unknown record kind"));
        }
        let flags = r.take(1).ok_or_else(|| bad("truncated"))?[0];
        let len = r.take(1).ok_or_else(|| bad("truncated"))?[0] as usize;
        let name = std::str::from_utf8(r.take(len).ok_or_else(|| bad("truncated"))?)
            .map_err(|_| bad("the event name is not UTF-8"))?
            .to_string();
        let legacy = if flags & FAMILY_HAS_LEGACY != 0 {
            Some(Legacy {
                block: r.u64().ok_or_else(|| bad("truncated"))?,
                schema: r.u64().ok_or_else(|| bad("truncated"))?,
            })
        } else {
            None
        };
        let count = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        let mut versions = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let version = r.u32().ok_or_else(|| bad("truncated"))?;
            let fingerprint = r.u64().ok_or_else(|| bad("truncated"))?;
            let retired = r.take(1).ok_or_else(|| bad("truncated"))?[0] != 0;
            versions.push(StoredVersion {
                version,
                fingerprint,
                retired,
            });
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Family {
            name,
            versions,
            legacy,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What a handle knows of its stream's catalog entry, shared by the handle's
/// clones (readers, queued appends) so one learning it teaches all.
#[derive(Debug, Default)]
struct Binding {
    /// The stream's tag plus one, once the stream exists in the catalog (0
    /// before). Set once, except on a server that lost the commit that
    /// created the stream: the append that finds the tag no longer names it
    /// moves the handle to the stream's new tag ([`Store::publish_bound`]).
    tag: AtomicU64,
    /// For a handle of a `#[derive(Event)]` type: what the stream's blocks
    /// from before its family was recorded hold (set with the tag).
    legacy: OnceLock<Option<Legacy>>,
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
    /// A handle's `#[derive(Event)]` type (`None` for a plain rkyv type, and
    /// in catalog records).
    pub(crate) schema: Option<Schema>,
    /// In catalog records: the event family the stream is bound to, if any.
    pub(crate) family: Option<Arc<Family>>,
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
        family: Option<Family>,
    ) -> Self {
        let binding = Binding::default();
        binding.tag.store(u64::from(tag) + 1, Ordering::Relaxed);
        let _ = binding.legacy.set(None);
        binding.settled.store(true, Ordering::Relaxed);
        StreamInfo {
            binding: Arc::new(binding),
            name,
            type_name,
            layout_fingerprint,
            schema_fingerprint,
            schema: None,
            family: family.map(Arc::new),
            matched_type: Arc::default(),
        }
    }

    /// A handle's view of stream `name` opened with `ty`; `tag` if it exists.
    fn handle(
        name: Arc<str>,
        ty: &TypeIdentity<&str>,
        bound: Option<(u32, Option<Legacy>)>,
        settled: bool,
    ) -> Self {
        let binding = Binding::default();
        if let Some((tag, legacy)) = bound {
            let _ = binding.legacy.set(legacy);
            binding.tag.store(u64::from(tag) + 1, Ordering::Relaxed);
        }
        binding.settled.store(settled, Ordering::Relaxed);
        StreamInfo {
            binding: Arc::new(binding),
            name,
            type_name: ty.type_name.into(),
            layout_fingerprint: ty.layout_fingerprint,
            schema_fingerprint: ty.schema_fingerprint,
            schema: ty.schema,
            family: None,
            matched_type: Arc::default(),
        }
    }

    /// The fingerprint the blocks this handle appends carry: the schema
    /// fingerprint of a `#[derive(Event)]` type's version, the layout
    /// fingerprint of a plain type.
    #[inline]
    pub(crate) fn block_fingerprint(&self) -> u64 {
        self.schema
            .map_or(self.layout_fingerprint, |s| s.fingerprint)
    }

    /// For a handle of a `#[derive(Event)]` type, once bound: the legacy
    /// blocks of its stream (see [`Legacy`]).
    #[inline]
    pub(crate) fn legacy(&self) -> Option<Legacy> {
        self.binding.legacy.get().copied().flatten()
    }

    /// The stream's tag, or `None` while the stream does not exist (as far
    /// as this handle has seen).
    #[inline]
    pub(crate) fn tag(&self) -> Option<u32> {
        match self.binding.tag.load(Ordering::Acquire) {
            0 => None,
            t => Some((t - 1) as u32),
        }
    }

    /// The tag, when the catalog entry needs nothing more from an append.
    #[inline]
    fn settled_tag(&self) -> Option<u32> {
        // A derived type's appends always read the family record: another
        // process may have appended a newer version since.
        if self.schema.is_none() && self.binding.settled.load(Ordering::Acquire) {
            self.tag()
        } else {
            None
        }
    }

    /// Records that the stream exists with `tag`, with an entry that needs
    /// nothing more from appends when `settled`.
    fn bind(&self, tag: u32, settled: bool, legacy: Option<Legacy>) {
        // The legacy mapping first: a reader that sees the tag finds it set.
        let _ = self.binding.legacy.set(legacy);
        // Set once: a handle already bound keeps its tag (see `rebind`).
        let _ = self.binding.tag.compare_exchange(
            0,
            u64::from(tag) + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if settled {
            self.binding.settled.store(true, Ordering::Release);
        }
    }

    /// Moves a bound handle to `tag`: the stream's catalog entry now has
    /// that tag, because the server lost the commit that gave it the old one.
    #[cfg(feature = "postgres")]
    fn rebind(&self, tag: u32) -> Option<u32> {
        let old = self.binding.tag.swap(u64::from(tag) + 1, Ordering::AcqRel);
        (old != 0 && old != u64::from(tag) + 1).then(|| (old - 1) as u32)
    }

    fn identity(&self) -> TypeIdentity<&str> {
        TypeIdentity {
            type_name: &self.type_name,
            layout_fingerprint: self.layout_fingerprint,
            schema_fingerprint: self.schema_fingerprint,
            schema: self.schema,
        }
    }

    /// For a catalog record: whether a `#[derive(Event)]` type with `schema`
    /// may read the stream, and what its legacy blocks hold. Cached per type
    /// (by the address of its type name), so typed reads of the global log
    /// check a type once, not per event.
    pub(crate) fn accepts(&self, schema: &Schema) -> Result<Option<Legacy>> {
        let key = schema.type_name.as_ptr() as usize ^ 1;
        if self.matched_type.load(Ordering::Relaxed) == key {
            return Ok(self.family_legacy(schema));
        }
        let legacy = check_family(self, schema)?;
        self.matched_type.store(key, Ordering::Relaxed);
        Ok(legacy)
    }

    /// The legacy mapping of a record for `schema`, once it was checked.
    fn family_legacy(&self, schema: &Schema) -> Option<Legacy> {
        match &self.family {
            Some(f) => f.legacy,
            None => Some(Legacy {
                block: self.layout_fingerprint,
                schema: if self.schema_fingerprint != 0 {
                    self.schema_fingerprint
                } else {
                    schema.fingerprint
                },
            }),
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
        let holds = self.family.is_none()
            && *self.type_name == *type_name
            && self.layout_fingerprint == layout_fingerprint();
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
    /// A `#[derive(Event)]` type's schema: the stream is then bound to its
    /// event family.
    pub(crate) schema: Option<Schema>,
}

/// What [`Store::migration_target`] finds: the tag, the event family, and
/// the [`Bound`] to publish if the family record was written.
pub(super) type MigrationTarget = (u32, Arc<Family>, Option<Bound>);

/// What [`Store::migration_source`] finds: the stream's tag, its family (if
/// recorded) and what its legacy blocks hold.
pub(super) type MigrationSource = (u32, Option<Arc<Family>>, Option<Legacy>);

/// A stream entry created or completed by a write transaction, to be taught
/// to its handle and the cache once (and only if) the transaction commits.
#[derive(Debug)]
pub(crate) struct Bound {
    handle: StreamInfo,
    tag: u32,
    record: StreamInfo,
    legacy: Option<Legacy>,
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

fn family_key(tag: u32) -> [u8; 5] {
    let mut k = [b'f', 0, 0, 0, 0];
    k[1..].copy_from_slice(&tag.to_be_bytes());
    k
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
        None,
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
    ty.schema.is_none() && (record.schema_fingerprint != 0 || ty.schema_fingerprint == 0)
}

const ADVICE_PLAIN: &str = "the stream holds a #[derive(Event)] event: open it with that type \
     (Varve::events or Varve::events_in), which checks every version; a plain rkyv type cannot be checked";
const ADVICE_NAME: &str = "the stream holds another event; if this is the same event under a \
     new type name, keep its identity with #[event(name = \"<the stored name>\")]";
const ADVICE_VERSION: &str = "a stored version has another layout in this program; a changed \
     event needs a new version: keep the old type, add #[event(version = <next>, upcast_from = <old type>)] \
     and an Upcast impl (Varve::migrate can then rewrite old events)";
const ADVICE_ADOPT: &str = "the stream is bound by type name (a format-1 store or Varve::stream) \
     to another type or layout: open it with the type that wrote it, or bind its version with \
     #[event(version, upcast_from)] to the type that wrote it";

fn mismatch(record: &StreamInfo, ty: &TypeIdentity<&str>, advice: &'static str) -> Error {
    let (stored, stored_versions) = match &record.family {
        Some(f) => (
            f.name.clone(),
            f.versions
                .iter()
                .map(|v| (v.version, v.fingerprint))
                .collect(),
        ),
        None => (record.type_name.to_string(), Vec::new()),
    };
    let (requested, requested_versions) = match &ty.schema {
        Some(s) => (s.name.to_string(), s.lineage()),
        None => (ty.type_name.to_string(), Vec::new()),
    };
    Error::SchemaMismatch {
        stream: record.name.to_string(),
        stored,
        stored_versions: stored_versions.into(),
        requested,
        requested_versions: requested_versions.into(),
        advice,
    }
}

/// Whether a `#[derive(Event)]` type with `schema` may open the stream of
/// `record`: the same event name and every stored version known by its
/// fingerprint (versions newer than the program's are allowed: it reads what
/// it knows). A stream bound by type name is adopted when it recorded a
/// fingerprint of the type's chain, or (none recorded) has the type's name
/// and layout. Returns what the stream's legacy blocks hold.
fn check_family(record: &StreamInfo, schema: &Schema) -> Result<Option<Legacy>> {
    let ty = TypeIdentity {
        type_name: schema.type_name,
        layout_fingerprint: (schema.layout)(),
        schema_fingerprint: schema.fingerprint,
        schema: Some(*schema),
    };
    match &record.family {
        Some(f) => {
            if f.name != schema.name {
                return Err(mismatch(record, &ty, ADVICE_NAME));
            }
            let lineage = schema.lineage();
            for v in f.versions.iter().filter(|v| !v.retired) {
                let known = lineage.iter().any(|&(_, fp)| fp == v.fingerprint);
                if !known && v.version <= schema.version {
                    return Err(mismatch(record, &ty, ADVICE_VERSION));
                }
            }
            Ok(f.legacy)
        }
        None => {
            let adopted = if record.schema_fingerprint != 0 {
                if schema.version_of(record.schema_fingerprint).is_none() {
                    return Err(mismatch(record, &ty, ADVICE_ADOPT));
                }
                record.schema_fingerprint
            } else if *record.type_name == *schema.type_name
                && record.layout_fingerprint == ty.layout_fingerprint
            {
                schema.fingerprint
            } else {
                return Err(mismatch(record, &ty, ADVICE_ADOPT));
            };
            Ok(Some(Legacy {
                block: record.layout_fingerprint,
                schema: adopted,
            }))
        }
    }
}

/// Checks that a handle of type `ty` may open the stream of `record`;
/// returns what its legacy blocks hold (for a `#[derive(Event)]` type).
fn check_type(record: &StreamInfo, ty: &TypeIdentity<&str>) -> Result<Option<Legacy>> {
    if let Some(schema) = &ty.schema {
        return check_family(record, schema);
    }
    if record.family.is_some() {
        return Err(mismatch(record, ty, ADVICE_PLAIN));
    }
    let schema_conflict = record.schema_fingerprint != 0
        && ty.schema_fingerprint != 0
        && record.schema_fingerprint != ty.schema_fingerprint;
    if *record.type_name != *ty.type_name
        || record.layout_fingerprint != ty.layout_fingerprint
        || schema_conflict
    {
        let (stored_fingerprint, requested_fingerprint) = if schema_conflict {
            (record.schema_fingerprint, ty.schema_fingerprint)
        } else {
            (record.layout_fingerprint, ty.layout_fingerprint)
        };
        return Err(Error::TypeMismatch {
            stream: record.name.to_string(),
            stored: record.type_name.to_string(),
            stored_fingerprint,
            requested: ty.type_name.to_string(),
            requested_fingerprint,
        });
    }
    Ok(None)
}

impl Store {
    /// The catalog key of the stream `name`: `n` + the name, or in an
    /// encrypted store `n` + its keyed hash (the name is not on disk).
    pub(super) fn name_key(&self, name: &str) -> Vec<u8> {
        match self.keyring() {
            None => name_key(name),
            Some(ring) => {
                let mut k = Vec::with_capacity(33);
                k.push(b'n');
                k.extend_from_slice(&ring.name_digest(name));
                k
            }
        }
    }

    fn lookup(&self, txn: &Txn<'_>, name: &str) -> Result<Option<(u32, StreamInfo)>> {
        let raw = self
            .catalog
            .get(txn, &self.name_key(name))
            .map_err(self.err("reading the catalog"))?;
        let Some((tag, mut info)) = raw.map(|v| decode(name, v)).transpose()? else {
            return Ok(None);
        };
        if self.keyring().is_some() {
            self.check_sealed_name(txn, tag, name)?;
        }
        info.family = self.family(txn, tag, name)?.map(Arc::new);
        Ok(Some((tag, info)))
    }

    /// In an encrypted store the name → tag record (`n` + keyed hash) is
    /// not sealed; the tag → name record is. A stream found by name is its
    /// own only if its tag's sealed name is that name: otherwise someone
    /// who could write the file (without the key) pointed the name at
    /// another stream's events, and that is refused as
    /// [`Error::Unauthentic`].
    #[cold]
    fn check_sealed_name(&self, txn: &Txn<'_>, tag: u32, name: &str) -> Result<()> {
        let bad = |detail: &str| Error::Unauthentic {
            location: Location::Record(format!("the catalog record of stream {name:?}")),
            detail: detail.into(),
        };
        let raw = self
            .catalog
            .get(txn, &tag_key(tag))
            .map_err(self.err("reading the catalog"))?
            .ok_or_else(|| bad("its tag has no sealed name"))?;
        let Some(ring) = self.keyring() else {
            return Ok(());
        };
        let mut plain = PlainBuf::default();
        self.open_value_into(ring, ValueKind::StreamName, &tag_key(tag), raw, &mut plain)?;
        if plain.as_slice() != name.as_bytes() {
            return Err(bad("its tag's sealed name is another stream's"));
        }
        Ok(())
    }

    /// The event family record of the stream `name` with `tag`, if any.
    fn family(&self, txn: &Txn<'_>, tag: u32, name: &str) -> Result<Option<Family>> {
        let raw = self
            .catalog
            .get(txn, &family_key(tag))
            .map_err(self.err("reading the catalog"))?;
        raw.map(|v| Family::decode(name, v)).transpose()
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
            schema: ty.schema,
        };
        let cached = self.streams.by_name.read().get(name).cloned();
        let found = match cached {
            // A cached family record may predate a migration (of another
            // process) that retired versions this type no longer knows:
            // a mismatch is decided on the committed record.
            Some(record)
                if record.family.is_some()
                    && record.tag().is_some()
                    && check_type(&record, &ty).is_err() =>
            {
                let mut view = self.snapshot()?;
                let found = view.stream_entry(name)?;
                if let Some((tag, record)) = &found {
                    self.remember(*tag, record, true);
                }
                found
            }
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
                let legacy = check_type(&record, &ty)?;
                let settled = settles(&record, &ty);
                Ok(StreamInfo::handle(
                    record.name,
                    &ty,
                    Some((tag, legacy)),
                    settled,
                ))
            }
            None => Ok(StreamInfo::handle(name.into(), &ty, None, false)),
        }
    }

    /// The catalog entry of `name` as `txn` sees it (for [`View`](super::View)).
    pub(super) fn stream_entry(
        &self,
        txn: &Txn<'_>,
        name: &str,
    ) -> Result<Option<(u32, StreamInfo)>> {
        self.lookup(txn, name)
    }

    /// The tag of `info`'s stream as `txn` sees it, `None` while the stream
    /// does not exist. A stream created since the handle was opened (by any
    /// handle or process) is checked against the handle's type, and the
    /// handle learns its tag.
    pub(crate) fn stream_tag(&self, txn: &Txn<'_>, info: &StreamInfo) -> Result<Option<u32>> {
        if let Some(tag) = info.tag() {
            return Ok(Some(tag));
        }
        let Some((tag, record)) = self.lookup(txn, &info.name)? else {
            return Ok(None);
        };
        let ty = info.identity();
        let legacy = check_type(&record, &ty)?;
        info.bind(tag, settles(&record, &ty), legacy);
        self.remember(tag, &record, false);
        Ok(Some(tag))
    }

    /// For an append through `info` in a write transaction: `Ok(tag)` if the
    /// catalog entry needs nothing, else what [`Store::settle_stream`] needs
    /// (the existing entry, type-checked, or `None` to create one).
    ///
    /// A `#[derive(Event)]` handle always reads the entry (another process may
    /// have appended a newer version): an append of a version older than the
    /// newest stored one is [`Error::OutdatedEventVersion`]; the first append
    /// of a version (or to a stream bound by type name) records it.
    pub(super) fn append_target(
        &self,
        txn: &Txn<'_>,
        info: &StreamInfo,
    ) -> Result<std::result::Result<u32, Option<(u32, StreamInfo)>>> {
        if let Some(tag) = info.settled_tag() {
            #[cfg(feature = "postgres")]
            if matches!(self.engine, super::Engine::Pg(_)) && !self.still_names(txn, info, tag)? {
                // The commit that created the stream was lost: the tag is
                // free or another stream's. Looked up again by name below
                // (created again if missing); the handle moves to that
                // tag once this transaction commits.
                return self.append_target_unsettled(txn, info);
            }
            return Ok(Ok(tag));
        }
        self.append_target_unsettled(txn, info)
    }

    /// Whether the catalog entry of `info`'s stream, as the write
    /// transaction `txn` sees it, still has `tag` and the handle's type. On
    /// PostgreSQL only: a server that lost commits it had acknowledged (a
    /// crash with a relaxed durability, a failover to an asynchronous
    /// standby, a restore) may have lost the one that created the stream,
    /// and given its tag to another stream since. LMDB never loses a
    /// committed catalog entry. Free when the writer's carried knowledge
    /// holds the entry (every append after the first of this process in the
    /// same epoch); one read otherwise.
    #[cfg(feature = "postgres")]
    #[cold]
    fn still_names(&self, txn: &Txn<'_>, info: &StreamInfo, tag: u32) -> Result<bool> {
        let raw = self
            .catalog
            .get(txn, &self.name_key(&info.name))
            .map_err(self.err("reading the catalog"))?;
        let Some(raw) = raw else {
            return Ok(false);
        };
        let (found, record) = decode(&info.name, raw)?;
        Ok(found == tag && check_type(&record, &info.identity()).is_ok())
    }

    /// [`Store::append_target`] for a handle whose catalog entry is read.
    fn append_target_unsettled(
        &self,
        txn: &Txn<'_>,
        info: &StreamInfo,
    ) -> Result<std::result::Result<u32, Option<(u32, StreamInfo)>>> {
        let found = self.lookup(txn, &info.name)?;
        let Some((tag, record)) = &found else {
            return Ok(Err(found));
        };
        check_type(record, &info.identity())?;
        let Some(schema) = &info.schema else {
            return Ok(Err(found));
        };
        let Some(family) = &record.family else {
            return Ok(Err(found));
        };
        if let Some(newest) = family.versions.iter().map(|v| v.version).max() {
            if newest > schema.version {
                return Err(Error::OutdatedEventVersion {
                    stream: info.name.to_string(),
                    event: family.name.clone(),
                    newest,
                    program: schema.version,
                });
            }
        }
        let recorded = family
            .versions
            .iter()
            .any(|v| v.fingerprint == schema.fingerprint && !v.retired);
        if recorded {
            Ok(Ok(*tag))
        } else {
            Ok(Err(found))
        }
    }

    /// Creates the catalog entry of `info`'s stream (`existing` is `None`) or
    /// completes it, in `txn`: records the handle's schema fingerprint, and
    /// for a `#[derive(Event)]` handle its event family and version (adopting
    /// a stream bound by type name). Returns the tag and what to teach the
    /// handle and the cache once `txn` commits.
    pub(super) fn settle_stream(
        &self,
        txn: &mut Txn<'_>,
        info: &StreamInfo,
        existing: Option<(u32, StreamInfo)>,
    ) -> Result<(u32, Bound)> {
        let err = self.err("creating a stream");
        let created = existing.is_none();
        let (tag, mut record) = match existing {
            Some((tag, mut record)) => {
                if !settles(&record, &info.identity()) && record.schema_fingerprint == 0 {
                    record.schema_fingerprint = info.schema_fingerprint;
                    self.catalog
                        .put(txn, &self.name_key(&info.name), &encode(tag, &record))
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
                    None,
                );
                self.catalog
                    .put(txn, &self.name_key(&info.name), &encode(tag, &record))
                    .map_err(&err)?;
                let name =
                    self.seal_value(ValueKind::StreamName, &tag_key(tag), info.name.as_bytes())?;
                self.catalog.put(txn, &tag_key(tag), &name).map_err(&err)?;
                (tag, record)
            }
        };
        let mut legacy = None;
        if let Some(schema) = &info.schema {
            let mut family = match record.family.as_deref() {
                Some(f) => f.clone(),
                None if created => {
                    // Created just now by this handle: no legacy blocks.
                    Family {
                        name: schema.name.to_string(),
                        versions: Vec::new(),
                        legacy: None,
                    }
                }
                None => {
                    // Adopting a stream bound by type name: its blocks hold
                    // the version it recorded, or (none recorded) this one.
                    let held = check_family(&record, schema)?.unwrap_or(Legacy {
                        block: record.layout_fingerprint,
                        schema: schema.fingerprint,
                    });
                    let version = schema.version_of(held.schema).unwrap_or(schema.version);
                    Family {
                        name: schema.name.to_string(),
                        versions: vec![StoredVersion {
                            version,
                            fingerprint: held.schema,
                            retired: false,
                        }],
                        legacy: Some(held),
                    }
                }
            };
            if !family
                .versions
                .iter()
                .any(|v| v.fingerprint == schema.fingerprint && !v.retired)
            {
                family
                    .versions
                    .retain(|v| v.fingerprint != schema.fingerprint);
                family.versions.push(StoredVersion {
                    version: schema.version,
                    fingerprint: schema.fingerprint,
                    retired: false,
                });
                family.versions.sort_by_key(|v| v.version);
            }
            self.put_family(txn, tag, &family)?;
            legacy = family.legacy;
            record.family = Some(Arc::new(family));
        }
        let bound = Bound {
            handle: info.clone(),
            tag,
            record,
            legacy,
        };
        Ok((tag, bound))
    }

    /// For a migration of `info`'s stream (a `#[derive(Event)]` handle) in
    /// `txn`: its tag and event family, checked against the handle's type
    /// and recording the handle's version (adopting a stream bound by type
    /// name), so that older builds can no longer append while old events are
    /// rewritten. `None` if the stream does not exist. The [`Bound`] to
    /// publish if the family record was written.
    pub(super) fn migration_target(
        &self,
        txn: &mut Txn<'_>,
        info: &StreamInfo,
    ) -> Result<Option<MigrationTarget>> {
        let Some((tag, record)) = self.lookup(txn, &info.name)? else {
            return Ok(None);
        };
        let Some(schema) = &info.schema else {
            return Err(mismatch(&record, &info.identity(), ADVICE_PLAIN));
        };
        check_family(&record, schema)?;
        if let Some(family) = &record.family {
            if let Some(newest) = family.versions.iter().map(|v| v.version).max() {
                if newest > schema.version {
                    return Err(Error::OutdatedEventVersion {
                        stream: info.name.to_string(),
                        event: family.name.clone(),
                        newest,
                        program: schema.version,
                    });
                }
            }
            if family
                .versions
                .iter()
                .any(|v| v.fingerprint == schema.fingerprint && !v.retired)
            {
                return Ok(Some((tag, Arc::clone(family), None)));
            }
        }
        let (tag, bound) = self.settle_stream(txn, info, Some((tag, record)))?;
        let family = bound
            .record
            .family
            .clone()
            .ok_or_else(|| corrupt(format!("stream {:?}", info.name), "no event family"))?;
        Ok(Some((tag, family, Some(bound))))
    }

    /// The stream `info` names (a `#[derive(Event)]` handle), as a
    /// migration would find it, read without writing: its tag, its family
    /// (if recorded) and what its legacy blocks hold, after the same checks
    /// as [`Store::migration_target`]. `None` if the stream does not exist.
    pub(super) fn migration_source(
        &self,
        txn: &Txn<'_>,
        info: &StreamInfo,
    ) -> Result<Option<MigrationSource>> {
        let Some((tag, record)) = self.lookup(txn, &info.name)? else {
            return Ok(None);
        };
        let Some(schema) = &info.schema else {
            return Err(mismatch(&record, &info.identity(), ADVICE_PLAIN));
        };
        let legacy = check_family(&record, schema)?;
        if let Some(family) = &record.family {
            if let Some(newest) = family.versions.iter().map(|v| v.version).max() {
                if newest > schema.version {
                    return Err(Error::OutdatedEventVersion {
                        stream: info.name.to_string(),
                        event: family.name.clone(),
                        newest,
                        program: schema.version,
                    });
                }
            }
        }
        Ok(Some((tag, record.family.clone(), legacy)))
    }

    /// Marks every version of `family` but the one with fingerprint
    /// `current` retired, in `txn`: a migration rewrote all their events.
    /// Returns the versions retired now and the [`Bound`] to publish.
    pub(super) fn retire_versions(
        &self,
        txn: &mut Txn<'_>,
        info: &StreamInfo,
        tag: u32,
        family: &Family,
        current: u64,
    ) -> Result<(Vec<u32>, Option<Bound>)> {
        let mut family = family.clone();
        let mut retired = Vec::new();
        for v in &mut family.versions {
            if v.fingerprint != current && !v.retired {
                v.retired = true;
                retired.push(v.version);
            }
        }
        if retired.is_empty() {
            return Ok((retired, None));
        }
        self.put_family(txn, tag, &family)?;
        let Some((_, mut record)) = self.lookup(txn, &info.name)? else {
            return Err(corrupt(
                format!("stream {:?}", info.name),
                "the stream left the catalog during its migration",
            ));
        };
        let legacy = family.legacy;
        record.family = Some(Arc::new(family));
        Ok((
            retired,
            Some(Bound {
                handle: info.clone(),
                tag,
                record,
                legacy,
            }),
        ))
    }

    /// Writes the event family record of the stream with `tag`.
    pub(super) fn put_family(&self, txn: &mut Txn<'_>, tag: u32, family: &Family) -> Result<()> {
        self.catalog
            .put(txn, &family_key(tag), &family.encode())
            .map_err(self.err("recording an event family"))
    }

    /// Teaches handles and the cache the catalog entries a committed write
    /// transaction created or completed.
    pub(super) fn publish_bound(&self, bound: Vec<Bound>) {
        for b in bound {
            b.handle.bind(b.tag, true, b.legacy);
            // A handle whose stream's tag changed (the server lost the
            // commit that created it; never on LMDB) moves to the new tag,
            // and the old tag's cached entry, which names a lost stream,
            // is read again when next met.
            #[cfg(feature = "postgres")]
            if let Some(old) = b.handle.rebind(b.tag) {
                self.streams.by_tag.write().remove(&old);
            }
            self.remember(b.tag, &b.record, true);
        }
    }

    /// The stream with `tag`, read through `txn` on a cache miss (the stream
    /// may have been created by another process).
    pub(crate) fn stream_by_tag(&self, txn: &Txn<'_>, tag: u32) -> Result<Arc<StreamInfo>> {
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
        let mut plain = PlainBuf::default();
        let raw = match self.keyring() {
            None => raw,
            Some(ring) => {
                self.open_value_into(ring, ValueKind::StreamName, &tag_key(tag), raw, &mut plain)?;
                plain.as_slice()
            }
        };
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
        let info = StreamInfo::record(9, "orders".into(), "app::OrderPlaced".into(), 1, 2, None);
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

    #[test]
    fn family_records_round_trip_and_refuse_damage() {
        let family = Family {
            name: "OrderPlaced".into(),
            versions: vec![
                StoredVersion {
                    version: 1,
                    fingerprint: 11,
                    retired: true,
                },
                StoredVersion {
                    version: 2,
                    fingerprint: 22,
                    retired: false,
                },
            ],
            legacy: Some(Legacy {
                block: 7,
                schema: 11,
            }),
        };
        let bytes = family.encode();
        assert_eq!(Family::decode("orders", &bytes).unwrap(), family);
        assert_eq!(family.version_of(7), Some(1));
        assert_eq!(family.live(), vec![(2, 22)]);
        for cut in 0..bytes.len() {
            assert!(
                Family::decode("orders", &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut other_kind = bytes.clone();
        other_kind[0] = 2;
        assert!(Family::decode("orders", &other_kind).is_err());
        let mut longer = bytes;
        longer.push(0);
        assert!(Family::decode("orders", &longer).is_err());
    }
}
