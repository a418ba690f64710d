//! The stream catalog: stream names interned to 32-bit tags, each bound to one
//! event type.
//!
//! ```text
//! "n" + name       -> tag u32 | layout fingerprint u64 | schema fingerprint u64 | type name (UTF-8)
//! "t" + tag (BE)   -> name (UTF-8)
//! ```
//! Entries are written once, when a stream is first opened, and never change
//! (except the schema fingerprint, filled in the first time a `#[derive(Event)]`
//! type opens a stream created from a plain rkyv type), so the in-memory cache
//! never goes stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use heed::RoTxn;
use parking_lot::RwLock;

use super::{Db, Store};
use crate::error::{Error, Location, Result};

/// The longest stream name, in bytes of UTF-8.
pub(crate) const MAX_STREAM_NAME_LEN: usize = 255;

const RECORD_FIXED: usize = 4 + 8 + 8;

/// A stream as recorded in the catalog.
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    pub(crate) tag: u32,
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
pub(crate) struct TypeIdentity {
    pub(crate) type_name: &'static str,
    pub(crate) layout_fingerprint: u64,
    /// 0 when unknown (a plain rkyv type).
    pub(crate) schema_fingerprint: u64,
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

fn decode(name: &str, v: &[u8]) -> Result<StreamInfo> {
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
    Ok(StreamInfo {
        tag: u32::from_le_bytes(v[..4].try_into().map_err(|_| bad())?),
        name: name.into(),
        type_name: type_name.into(),
        layout_fingerprint: u64::from_le_bytes(v[4..12].try_into().map_err(|_| bad())?),
        schema_fingerprint: u64::from_le_bytes(v[12..20].try_into().map_err(|_| bad())?),
        matched_type: Arc::default(),
    })
}

fn encode(info: &StreamInfo) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_FIXED + info.type_name.len());
    v.extend_from_slice(&info.tag.to_le_bytes());
    v.extend_from_slice(&info.layout_fingerprint.to_le_bytes());
    v.extend_from_slice(&info.schema_fingerprint.to_le_bytes());
    v.extend_from_slice(info.type_name.as_bytes());
    v
}

/// Checks a stream name against the documented rules.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a stream name must not be empty"
    } else if name.len() > MAX_STREAM_NAME_LEN {
        "a stream name must be at most 255 bytes of UTF-8"
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(64).collect();
    Err(Error::InvalidStreamName {
        name: shown,
        reason,
    })
}

fn check_type(info: &StreamInfo, ty: &TypeIdentity) -> Result<()> {
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
    fn lookup(&self, txn: &RoTxn, catalog: &Db, name: &str) -> Result<Option<StreamInfo>> {
        let raw = catalog
            .get(txn, &name_key(name))
            .map_err(self.err("reading the catalog"))?;
        raw.map(|v| decode(name, v)).transpose()
    }

    /// Returns the stream `name`, creating it bound to `ty` if it does not
    /// exist, or a `TypeMismatch` if it is bound to another type.
    pub(crate) fn open_stream(&self, name: &str, ty: &TypeIdentity) -> Result<StreamInfo> {
        validate_name(name)?;
        if let Some(info) = self.streams.by_name.read().get(name) {
            if ty.schema_fingerprint == 0 || info.schema_fingerprint != 0 {
                check_type(info, ty)?;
                return Ok(info.clone());
            }
        }
        let info = self.open_stream_slow(name, ty)?;
        self.streams
            .by_tag
            .write()
            .insert(info.tag, Arc::new(info.clone()));
        self.streams
            .by_name
            .write()
            .insert(Arc::clone(&info.name), info.clone());
        Ok(info)
    }

    fn open_stream_slow(&self, name: &str, ty: &TypeIdentity) -> Result<StreamInfo> {
        self.write(|w| {
            let (store, wtxn) = w.parts();
            let err = store.err("creating a stream");
            match store.lookup(wtxn, &store.catalog, name)? {
                Some(mut info) => {
                    check_type(&info, ty)?;
                    if info.schema_fingerprint == 0 && ty.schema_fingerprint != 0 {
                        info.schema_fingerprint = ty.schema_fingerprint;
                        store
                            .catalog
                            .put(wtxn, &name_key(name), &encode(&info))
                            .map_err(&err)?;
                    }
                    Ok(info)
                }
                None => {
                    let next_tag = match store.catalog.get_lower_than(wtxn, b"u").map_err(&err)? {
                        Some((k, _)) if k.len() == 5 && k[0] == b't' => {
                            let last = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
                            last.checked_add(1).ok_or_else(|| {
                                corrupt("the catalog".into(), "stream tags exhausted")
                            })?
                        }
                        _ => 0,
                    };
                    let info = StreamInfo {
                        tag: next_tag,
                        name: name.into(),
                        type_name: ty.type_name.into(),
                        layout_fingerprint: ty.layout_fingerprint,
                        schema_fingerprint: ty.schema_fingerprint,
                        matched_type: Arc::default(),
                    };
                    store
                        .catalog
                        .put(wtxn, &name_key(name), &encode(&info))
                        .map_err(&err)?;
                    store
                        .catalog
                        .put(wtxn, &tag_key(next_tag), name.as_bytes())
                        .map_err(&err)?;
                    Ok(info)
                }
            }
        })
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
            .lookup(txn, &self.catalog, name)?
            .filter(|i| i.tag == tag)
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
    fn records_round_trip() {
        let info = StreamInfo {
            tag: 9,
            name: "orders".into(),
            type_name: "app::OrderPlaced".into(),
            layout_fingerprint: 1,
            schema_fingerprint: 2,
            matched_type: Arc::default(),
        };
        let back = decode("orders", &encode(&info)).unwrap();
        assert_eq!(
            (
                back.tag,
                &*back.type_name,
                back.layout_fingerprint,
                back.schema_fingerprint
            ),
            (9, "app::OrderPlaced", 1, 2)
        );
        assert!(decode("orders", &[1, 2]).is_err());
    }
}
