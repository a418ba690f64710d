//! Store-level metadata: the format version and the rkyv encoding probe.
//!
//! rkyv's archived layout depends on crate features anywhere in the dependency
//! graph (`big_endian`, `unaligned`, `pointer_width_16/32/64`). A store written
//! under one set cannot be read zero-copy under another. At creation we archive
//! a fixed probe value and keep its bytes; every open archives it again and
//! compares, so such a change is a typed error instead of garbage.
//!
//! The `meta` database also holds the store's [`StoreId`], the same id as the
//! identity record beside the data file (see [`super::identity`]).

use std::path::Path;

use super::kv::MetaKv;
use rkyv::{rancor, Archive, Serialize};

use super::identity::StoreId;
use super::{FORMAT_VERSION, OLDEST_FORMAT};
use crate::error::{Error, Location, Result};

const FORMAT_KEY: &[u8] = b"format";
const PROBE_KEY: &[u8] = b"rkyv-probe";
const CREATED_KEY: &[u8] = b"created";
const STORE_ID_KEY: &[u8] = b"store-id";

/// What the `meta` database says about the store, once checked.
pub(super) struct Checked {
    /// The store's id.
    pub(super) id: StoreId,
    /// When the store was created (µs since the epoch, 0 if unknown).
    pub(super) created_micros: u64,
    /// Whether this open created the store.
    pub(super) created: bool,
    /// The format the store had before this open: `None` for a store this
    /// open created, an older one for a store it upgraded.
    pub(super) found: Option<u32>,
}

#[derive(Archive, Serialize)]
struct Probe {
    byte: u8,
    half: u16,
    word: u32,
    long: u64,
    wide: u128,
    signed: i64,
    text: String,
    list: Vec<u32>,
    maybe: Option<u64>,
    size: usize,
}

fn probe_bytes() -> Vec<u8> {
    let probe = Probe {
        byte: 0xab,
        half: 0x1234,
        word: 0x0102_0304,
        long: 0x0102_0304_0506_0708,
        wide: 1 << 100,
        signed: -2,
        text: "varvedb probe, longer than the inline limit".into(),
        list: vec![1, 2, 3],
        maybe: Some(9),
        size: 77,
    };
    match rkyv::to_bytes::<rancor::Error>(&probe) {
        Ok(bytes) => bytes.to_vec(),
        // Serializing this plain value into memory cannot fail short of
        // allocation failure; an empty probe then simply fails the comparison.
        Err(_) => Vec::new(),
    }
}

/// Initializes a new store's metadata, or checks an existing store's format
/// and encoding. `recorded` is the id in the identity record beside the data
/// file, if there is one: the data file must carry the same id. A store from
/// before ids existed is given one.
///
/// `seed` (a restore) is the id and creation time a *new* store takes; for
/// an existing store it is ignored.
pub(super) fn initialize_or_check(
    kv: &mut impl MetaKv,
    path: &Path,
    recorded: Option<StoreId>,
    seed: Option<super::Identity>,
) -> Result<Checked> {
    let err = super::storage_error("reading the store's metadata", 0);
    let format = kv.meta_get(FORMAT_KEY).map_err(&err)?.map(<[u8]>::to_vec);
    if format.is_none() {
        if let Some(seed) = seed {
            kv.meta_put(STORE_ID_KEY, seed.id.as_bytes())
                .map_err(&err)?;
        }
    }
    let created = format.is_none();
    let mut found = None;
    let created_micros = match format {
        None => {
            let created = seed.map(|s| s.created_micros).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64)
            });
            kv.meta_put(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes())
                .map_err(&err)?;
            kv.meta_put(PROBE_KEY, &probe_bytes()).map_err(&err)?;
            kv.meta_put(CREATED_KEY, &created.to_le_bytes())
                .map_err(&err)?;
            created
        }
        Some(raw) => {
            let (created, format) = check_format(&*kv, path, &raw)?;
            found = Some(format);
            if format < FORMAT_VERSION {
                // Every record of the older format reads unchanged in this
                // one; from now on this build may write records it does not
                // know, so the store says it is of this format.
                kv.meta_put(FORMAT_KEY, &FORMAT_VERSION.to_le_bytes())
                    .map_err(&err)?;
            }
            created
        }
    };
    let stored = stored_id(&*kv)?;
    let id = match (stored, recorded) {
        (Some(stored), Some(recorded)) if stored != recorded => {
            return Err(Error::StoreMismatch {
                path: path.to_path_buf(),
                expected: recorded,
                found: Some(stored),
            })
        }
        (Some(stored), _) => stored,
        // The identity record names a store, but this data file carries no
        // id: it was made elsewhere (or is a pre-id store put in its place).
        (None, Some(recorded)) => {
            return Err(Error::StoreMismatch {
                path: path.to_path_buf(),
                expected: recorded,
                found: None,
            })
        }
        // A new store, or one from before ids existed: give it one.
        (None, None) => {
            let id = StoreId::random(path)?;
            kv.meta_put(STORE_ID_KEY, id.as_bytes()).map_err(&err)?;
            id
        }
    };
    Ok(Checked {
        id,
        created_micros,
        created,
        found,
    })
}

/// [`initialize_or_check`] for a read-only open: the same checks, writing
/// nothing. A store from before ids existed, without an identity record,
/// has no id to report until it is opened once read-write: it gets the
/// all-zero id.
pub(super) fn check(kv: &impl MetaKv, path: &Path, recorded: Option<StoreId>) -> Result<Checked> {
    let err = super::storage_error("reading the store's metadata", 0);
    let Some(raw) = kv.meta_get(FORMAT_KEY).map_err(&err)? else {
        return Err(Error::Open {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no varvedb store has been created here yet (no format record)",
            ),
        });
    };
    let raw = raw.to_vec();
    let (created_micros, format) = check_format(kv, path, &raw)?;
    let id = match (stored_id(kv)?, recorded) {
        (Some(stored), Some(recorded)) if stored != recorded => {
            return Err(Error::StoreMismatch {
                path: path.to_path_buf(),
                expected: recorded,
                found: Some(stored),
            })
        }
        (Some(stored), _) => stored,
        (None, Some(recorded)) => {
            return Err(Error::StoreMismatch {
                path: path.to_path_buf(),
                expected: recorded,
                found: None,
            })
        }
        (None, None) => StoreId::from_bytes([0; 16]),
    };
    Ok(Checked {
        id,
        created_micros,
        created: false,
        found: Some(format),
    })
}

/// Checks the recorded format version and rkyv probe; returns the creation
/// time and the store's format.
fn check_format(kv: &impl MetaKv, path: &Path, raw: &[u8]) -> Result<(u64, u32)> {
    let err = super::storage_error("reading the store's metadata", 0);
    let found = <[u8; 4]>::try_from(raw)
        .map(u32::from_le_bytes)
        .map_err(|_| Error::Corruption {
            location: Location::Record("the store's format version".into()),
            detail: format!("expected 4 bytes, found {}", raw.len()),
        })?;
    if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&found) {
        return Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    let stored = kv.meta_get(PROBE_KEY).map_err(&err)?;
    if stored != Some(probe_bytes().as_slice()) {
        return Err(Error::IncompatibleEncoding {
            path: path.to_path_buf(),
        });
    }
    let created = kv
        .meta_get(CREATED_KEY)
        .map_err(&err)?
        .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
        .map_or(0, u64::from_le_bytes);
    Ok((created, found))
}

/// The id recorded in `meta`, if any.
fn stored_id(kv: &impl MetaKv) -> Result<Option<StoreId>> {
    let err = super::storage_error("reading the store's metadata", 0);
    match kv.meta_get(STORE_ID_KEY).map_err(&err)? {
        None => Ok(None),
        Some(raw) => <[u8; 16]>::try_from(raw)
            .map(|b| Some(StoreId::from_bytes(b)))
            .map_err(|_| Error::Corruption {
                location: Location::Record("the store's id".into()),
                detail: format!("expected 16 bytes, found {}", raw.len()),
            }),
    }
}
