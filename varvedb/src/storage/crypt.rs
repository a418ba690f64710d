//! Encryption at rest (format 4): the keyring of an encrypted store, and
//! the sealing and opening of its blocks, stream names and `state` values.
//!
//! **Keys.** The application's master key ([`EncryptionKey`]: 32 raw bytes,
//! or a passphrase through Argon2id with the salt and costs recorded here)
//! wraps random 32-byte keys kept in `meta`: key id 0 hashes stream names
//! (the catalog's lookup keys), ids from 1 are data keys. The `crypt`
//! record names the active data key (the one new blocks and values are
//! sealed with). Each wrapped key is sealed like everything else below,
//! with the store id and its key id as associated data, so a wrong master
//! key fails to open the first one: a typed error at open.
//!
//! **Blocks.** One XChaCha20-Poly1305 operation per block, with a random
//! 24-byte nonce. On disk, an encrypted block is
//!
//! ```text
//! header (64, in the clear) | key id (u32 LE) | 0 (u32) | nonce (24) | sealed body | tag (16)
//! ```
//!
//! where the body is everything of the plaintext block after its header
//! (entry table, metadata and payloads). The associated data binds the
//! block to its place: the store id, the block's key (its first global
//! sequence), its header and its key id. A block moved to another key,
//! swapped with another, or copied from another store (even one sealed with
//! the same keys) fails to open with [`Error::Unauthentic`].
//!
//! **Values.** A stream name (the catalog's `t` record) and a `state`
//! value are `key id (u32 LE) | nonce (24) | sealed value | tag (16)`, with
//! the store id, what the value is and its LMDB key as associated data.
//!
//! Opened plaintext lives in a [`PlainBuf`] (16-byte aligned, zeroed when
//! cleared and when dropped) that a read snapshot owns ([`Plaintexts`]):
//! references into it live exactly as long as references into the map.

use std::collections::HashMap;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use heed::types::Bytes;
use heed::{Database, RoTxn, RwTxn};
use parking_lot::{Mutex, RwLock};
use rkyv::util::AlignedVec;
use zeroize::{Zeroize, Zeroizing};

use super::block::{parse_header, BlockHeader, BlockView, HEADER_LEN};
use super::identity::StoreId;
use super::kv::{Table, Txn};
use super::snapshot::corrupt_at;
use super::Store;
use crate::encryption::{EncryptionKey, Secret, ARGON2_M_KIB, ARGON2_P, ARGON2_T};
use crate::error::{Error, Location, Result};
use crate::position::GlobalSequence;

/// The nonce of one sealing.
pub(crate) const NONCE_LEN: usize = 24;
/// Poly1305's tag.
pub(crate) const TAG_LEN: usize = 16;
/// What an encrypted block carries between its header and its sealed body:
/// key id, a reserved word, the nonce.
pub(crate) const SEAL_LEN: usize = 8 + NONCE_LEN;
/// What sealing adds to a block (the sealed body is as long as the plain one).
pub(crate) const BLOCK_OVERHEAD: usize = SEAL_LEN + TAG_LEN;
/// What sealing adds to a value.
pub(crate) const VALUE_OVERHEAD: usize = 4 + NONCE_LEN + TAG_LEN;

/// The `meta` record saying the store is encrypted, and how.
pub(crate) const RECORD_KEY: &[u8] = b"crypt";
/// `meta` keys of the wrapped keys: this prefix + key id (BE u32).
pub(crate) const WRAPPED_PREFIX: &[u8] = b"crypt-key";
const RECORD_VERSION: u8 = 1;
const RECORD_LEN: usize = 36;
const KDF_RAW: u8 = 1;
const KDF_ARGON2ID: u8 = 2;
/// Key id of the key that hashes stream names.
const NAMES_KEY_ID: u32 = 0;
/// Key id of the first data key.
const FIRST_DATA_KEY: u32 = 1;
const WRAPPED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// What a sealed value is, bound into its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ValueKind {
    /// A stream name, the value of a catalog `t` record.
    StreamName,
    /// A value of the `state` database.
    State,
}

impl ValueKind {
    fn label(self) -> &'static [u8] {
        match self {
            ValueKind::StreamName => b"stream-name",
            ValueKind::State => b"state",
        }
    }
}

/// How the master key is derived, as recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kdf {
    Raw,
    Argon2id {
        m_kib: u32,
        t: u32,
        p: u32,
        salt: [u8; 16],
    },
}

/// The `crypt` record of `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    kdf: Kdf,
    /// The data key new blocks and values are sealed with.
    active: u32,
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = RECORD_VERSION;
        match self.kdf {
            Kdf::Raw => b[1] = KDF_RAW,
            Kdf::Argon2id { m_kib, t, p, salt } => {
                b[1] = KDF_ARGON2ID;
                b[4..8].copy_from_slice(&m_kib.to_le_bytes());
                b[8..12].copy_from_slice(&t.to_le_bytes());
                b[12..16].copy_from_slice(&p.to_le_bytes());
                b[16..32].copy_from_slice(&salt);
            }
        }
        b[32..36].copy_from_slice(&self.active.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != RECORD_LEN || b[0] != RECORD_VERSION {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let kdf = match b[1] {
            KDF_RAW => Kdf::Raw,
            KDF_ARGON2ID => Kdf::Argon2id {
                m_kib: u32_at(4),
                t: u32_at(8),
                p: u32_at(12),
                salt: b[16..32].try_into().ok()?,
            },
            _ => return None,
        };
        Some(Record {
            kdf,
            active: u32_at(32),
        })
    }
}

pub(crate) type Key32 = Zeroizing<[u8; 32]>;

/// The unwrapped keys of an open encrypted store. Zeroed when dropped.
///
/// The data keys change while the store is open (a rotation, by this
/// process or another, adds one and makes it active), so they sit behind a
/// lock; each is boxed, so growing the list moves pointers, never a key
/// (no stale copy is left behind in a freed allocation).
pub(crate) struct Keyring {
    store_id: StoreId,
    names: Key32,
    keys: RwLock<Keys>,
}

/// The part of a [`Keyring`] a rotation changes.
struct Keys {
    /// The data key new blocks and values are sealed with.
    active: u32,
    /// The `crypt` record these keys were loaded under (a write
    /// transaction that finds another reloads).
    record: [u8; RECORD_LEN],
    /// The master key, to unwrap data keys added after the open (`None`:
    /// a fixed keyring of the fuzz targets).
    master: Option<Box<Key32>>,
    /// Data keys by id. A key retired from the store stays here until the
    /// store closes: a snapshot taken before the retirement may still read
    /// a block sealed with it.
    data: Vec<(u32, Box<Key32>)>,
}

impl Keys {
    fn get(&self, id: u32) -> Option<&Key32> {
        self.data.iter().find(|(i, _)| *i == id).map(|(_, k)| &**k)
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read();
        f.debug_struct("Keyring")
            .field("active", &keys.active)
            .field("data_keys", &keys.data.len())
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>(path: &Path, what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Open {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("cannot draw a random {what}: {e}")),
    })?;
    Ok(b)
}

/// A random nonce for a sealing on the write path.
fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut b = [0u8; NONCE_LEN];
    getrandom::fill(&mut b).map_err(|e| Error::Storage {
        operation: "drawing a random nonce",
        source: crate::error::StorageError::new(
            crate::error::StorageErrorKind::Io,
            std::io::Error::other(e.to_string()),
        ),
    })?;
    Ok(b)
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// The master key `key` gives under `kdf`.
fn master(path: &Path, key: &EncryptionKey, kdf: Kdf) -> Result<Key32> {
    match (&key.secret, kdf) {
        (Secret::Raw(bytes), Kdf::Raw) => Ok(Zeroizing::new(**bytes)),
        (Secret::Passphrase(pass), Kdf::Argon2id { m_kib, t, p, salt }) => {
            let params =
                argon2::Params::new(m_kib, t, p, Some(32)).map_err(|e| Error::Corruption {
                    location: Location::Record("the store's encryption record".into()),
                    detail: format!("invalid Argon2id parameters: {e}"),
                })?;
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = Zeroizing::new([0u8; 32]);
            argon
                .hash_password_into(pass.as_bytes(), &salt, &mut *out)
                .map_err(|e| Error::Open {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(format!("deriving the key: {e}")),
                })?;
            Ok(out)
        }
        // A raw key for a passphrase store or the other way round can only
        // be the wrong key.
        _ => Err(Error::EncryptionKeyMismatch {
            path: path.to_path_buf(),
        }),
    }
}

fn wrapped_key(id: u32) -> Vec<u8> {
    let mut k = WRAPPED_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn wrap_ad(store_id: StoreId, id: u32) -> Vec<u8> {
    let mut ad = b"varvedb wrapped key 1".to_vec();
    ad.extend_from_slice(store_id.as_bytes());
    ad.extend_from_slice(&id.to_be_bytes());
    ad
}

fn wrap(master: &[u8; 32], store_id: StoreId, id: u32, key: &[u8; 32]) -> Result<Vec<u8>> {
    let nonce = nonce()?;
    let mut body = Zeroizing::new(*key);
    let tag = cipher(master)
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &wrap_ad(store_id, id),
            &mut *body,
        )
        .map_err(|_| Error::Corruption {
            location: Location::Record("a data key".into()),
            detail: "sealing failed".into(),
        })?;
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&*body);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn unwrap(path: &Path, master: &[u8; 32], store_id: StoreId, id: u32, raw: &[u8]) -> Result<Key32> {
    if raw.len() != WRAPPED_LEN {
        return Err(Error::Corruption {
            location: Location::Record(format!("wrapped data key {id}")),
            detail: format!("expected {WRAPPED_LEN} bytes, found {}", raw.len()),
        });
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&raw[NONCE_LEN..NONCE_LEN + 32]);
    cipher(master)
        .decrypt_in_place_detached(
            XNonce::from_slice(&raw[..NONCE_LEN]),
            &wrap_ad(store_id, id),
            &mut *key,
            Tag::from_slice(&raw[NONCE_LEN + 32..]),
        )
        .map_err(|_| Error::EncryptionKeyMismatch {
            path: path.to_path_buf(),
        })?;
    Ok(key)
}

/// The environment variable of the test switch (feature `test-encryption`).
pub(crate) const TEST_KEY_VAR: &str = "VARVEDB_TEST_ENCRYPTION_KEY";

/// Under the test-only feature `test-encryption`, the key a store opened
/// without one uses when `VARVEDB_TEST_ENCRYPTION_KEY` is set (non-empty):
/// its BLAKE3 hash as a raw key. A new store is then created encrypted, and
/// an encrypted one opens with it; a plaintext store stays plaintext. Lets
/// the whole behaviour suite run a second time against encrypted stores.
#[cfg(feature = "test-encryption")]
pub(crate) fn test_key() -> Option<EncryptionKey> {
    let v = std::env::var(TEST_KEY_VAR).ok().filter(|v| !v.is_empty())?;
    Some(EncryptionKey::from_bytes(
        *blake3::hash(v.as_bytes()).as_bytes(),
    ))
}

/// Without the feature `test-encryption`: never a key.
#[cfg(not(feature = "test-encryption"))]
pub(crate) fn test_key() -> Option<EncryptionKey> {
    let _ = TEST_KEY_VAR;
    None
}

/// The keyring a read-write open settles on: a new store (`create`) is
/// encrypted with `key` if one is given (or the test switch's), an existing
/// one is opened as [`open_keyring`] does.
pub(crate) fn settle_at_open(
    txn: &mut RwTxn,
    meta: &Database<Bytes, Bytes>,
    path: &Path,
    store_id: StoreId,
    key: Option<&EncryptionKey>,
    create: bool,
) -> Result<Option<Keyring>> {
    if create {
        let test = test_key();
        return match key.or(test.as_ref()) {
            Some(key) => create_keyring(txn, meta, path, store_id, key).map(Some),
            None => Ok(None),
        };
    }
    open_keyring(txn, meta, path, store_id, key)
}

/// Reads the keyring of an existing store with `key`: `None` for a
/// plaintext store opened without a key. A key for a plaintext store, no key
/// for an encrypted one, or a wrong key are typed errors.
pub(crate) fn open_keyring(
    txn: &RoTxn,
    meta: &Database<Bytes, Bytes>,
    path: &Path,
    store_id: StoreId,
    key: Option<&EncryptionKey>,
) -> Result<Option<Keyring>> {
    let err = super::storage_error("reading the encryption record", 0);
    let record = meta.get(txn, RECORD_KEY).map_err(&err)?;
    let (record, key) = match (record, key) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(Error::NotEncrypted {
                path: path.to_path_buf(),
            })
        }
        (Some(raw), key) => {
            let record = Record::decode(raw).ok_or_else(|| malformed_record(raw))?;
            (record, key)
        }
    };
    let test;
    let key = match key {
        Some(key) => key,
        None => {
            test = test_key().ok_or_else(|| Error::EncryptionKeyRequired {
                path: path.to_path_buf(),
            })?;
            &test
        }
    };
    let master = master(path, key, record.kdf)?;
    let mut wrapped = Vec::new();
    for item in meta.prefix_iter(txn, WRAPPED_PREFIX).map_err(&err)? {
        let (k, v) = item.map_err(&err)?;
        wrapped.push((wrapped_id(k)?, v.to_vec()));
    }
    let mut names = None;
    let mut data = Vec::new();
    for (id, raw) in &wrapped {
        let unwrapped = unwrap(path, &master, store_id, *id, raw)?;
        if *id == NAMES_KEY_ID {
            names = Some(unwrapped);
        } else {
            data.push((*id, Box::new(unwrapped)));
        }
    }
    let missing = |what: String| Error::Corruption {
        location: Location::Record("the store's wrapped keys".into()),
        detail: format!("{what} is missing"),
    };
    let names = names.ok_or_else(|| missing("the stream-name key".into()))?;
    let keys = Keys {
        active: record.active,
        record: record.encode(),
        master: Some(Box::new(master)),
        data,
    };
    if keys.get(record.active).is_none() {
        return Err(missing(format!("active data key {}", record.active)));
    }
    Ok(Some(Keyring {
        store_id,
        names,
        keys: RwLock::new(keys),
    }))
}

/// The key id of a wrapped key's `meta` key.
fn wrapped_id(k: &[u8]) -> Result<u32> {
    k.get(WRAPPED_PREFIX.len()..)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| Error::Corruption {
            location: Location::Record("the store's wrapped keys".into()),
            detail: format!("malformed key of {} bytes", k.len()),
        })
}

fn malformed_record(raw: &[u8]) -> Error {
    Error::Corruption {
        location: Location::Record("the store's encryption record".into()),
        detail: format!("malformed record of {} bytes", raw.len()),
    }
}

/// The master key of the encrypted store whose `meta` `txn` reads, derived
/// from `key` (or the test switch's) as [`open_keyring`] derives it: for
/// the key vault, whose entity keys it wraps.
pub(crate) fn derive_master(
    txn: &RoTxn,
    meta: &Database<Bytes, Bytes>,
    path: &Path,
    key: Option<&EncryptionKey>,
) -> Result<Zeroizing<[u8; 32]>> {
    let err = super::storage_error("reading the encryption record", 0);
    let record = meta
        .get(txn, RECORD_KEY)
        .map_err(&err)?
        .and_then(Record::decode)
        .ok_or_else(|| Error::EncryptionKeyRequired {
            path: path.to_path_buf(),
        })?;
    let test;
    let key = match key {
        Some(key) => key,
        None => {
            test = test_key().ok_or_else(|| Error::EncryptionKeyRequired {
                path: path.to_path_buf(),
            })?;
            &test
        }
    };
    master(path, key, record.kdf)
}

/// Writes `records` ([`View::key_records`](super::View::key_records) of a store of the same id) into a new
/// store's `meta`: it then opens with the same master key and data keys.
pub(crate) fn adopt_records(
    txn: &mut RwTxn,
    meta: &Database<Bytes, Bytes>,
    records: &[(Vec<u8>, Vec<u8>)],
) -> Result<()> {
    let err = super::storage_error("recording the encryption keys", 0);
    for (k, v) in records {
        if k.starts_with(RECORD_KEY) {
            meta.put(txn, k, v).map_err(&err)?;
        }
    }
    Ok(())
}

/// The `crypt` record and wrapped keys of `ring` under the master key `key`
/// (a passphrase gets a fresh salt), written over the store's. Returns the
/// new master key.
fn write_wrapped(
    mut put: impl FnMut(&[u8], &[u8]) -> heed::Result<()>,
    path: &Path,
    ring: &Keyring,
    key: &EncryptionKey,
) -> Result<Key32> {
    let err = super::storage_error("recording the encryption keys", 0);
    let kdf = match key.secret {
        Secret::Raw(_) => Kdf::Raw,
        Secret::Passphrase(_) => Kdf::Argon2id {
            m_kib: ARGON2_M_KIB,
            t: ARGON2_T,
            p: ARGON2_P,
            salt: random(path, "salt")?,
        },
    };
    let master = master(path, key, kdf)?;
    let wrapped = wrap(&master, ring.store_id, NAMES_KEY_ID, &ring.names)?;
    put(&wrapped_key(NAMES_KEY_ID), &wrapped).map_err(&err)?;
    let keys = ring.keys.read();
    for (id, k) in &keys.data {
        let wrapped = wrap(&master, ring.store_id, *id, k)?;
        put(&wrapped_key(*id), &wrapped).map_err(&err)?;
    }
    let record = Record {
        kdf,
        active: keys.active,
    };
    put(RECORD_KEY, &record.encode()).map_err(&err)?;
    Ok(master)
}

impl super::WriteTxn<'_> {
    /// Wraps the store's keys under a new master key, in this transaction:
    /// the data keys (so every sealed byte) stay as they are. The keyring
    /// takes the new master key when this transaction commits, under the
    /// writer lock ([`Store::write`]): a rotation on another thread never
    /// runs between the commit and the update (it would find its master key
    /// stale and be refused), and two changes leave the keyring with the
    /// one that committed last.
    ///
    /// Only the data keys the store still holds are wrapped anew (a key
    /// retired by a re-encryption pass stays retired).
    pub(crate) fn change_master_key(&mut self, key: &EncryptionKey) -> Result<()> {
        let store = self.store;
        let ring = store.keyring().ok_or_else(|| Error::NotEncrypted {
            path: store.path().to_path_buf(),
        })?;
        let held = self.wrapped_ids()?;
        let kdf = match key.secret {
            Secret::Raw(_) => Kdf::Raw,
            Secret::Passphrase(_) => Kdf::Argon2id {
                m_kib: ARGON2_M_KIB,
                t: ARGON2_T,
                p: ARGON2_P,
                salt: random(store.path(), "salt")?,
            },
        };
        let master = master(store.path(), key, kdf)?;
        let err = super::storage_error("recording the encryption keys", 0);
        let keys = ring.keys.read();
        for id in held {
            let k = if id == NAMES_KEY_ID {
                Some(&ring.names)
            } else {
                keys.get(id)
            };
            // The write transaction reloaded the keyring: every key the
            // store holds is known.
            let k = k.ok_or_else(|| Error::Corruption {
                location: Location::Record(format!("wrapped data key {id}")),
                detail: "not loaded by this handle".into(),
            })?;
            let wrapped = wrap(&master, ring.store_id, id, k)?;
            let put = store.meta.put(&mut self.txn, &wrapped_key(id), &wrapped);
            self.lmdb("recording the encryption keys", put)?;
        }
        let record = Record {
            kdf,
            active: keys.active,
        };
        store
            .meta
            .put(&mut self.txn, RECORD_KEY, &record.encode())
            .map_err(&err)?;
        drop(keys);
        self.master = Some(master);
        Ok(())
    }

    /// The ids of the wrapped keys the store holds (the stream-name key's 0
    /// among them).
    pub(crate) fn wrapped_ids(&self) -> Result<Vec<u32>> {
        let iter = self.store.meta.prefix_iter(&self.txn, WRAPPED_PREFIX);
        let mut ids = Vec::new();
        for item in self.lmdb("reading the encryption keys", iter)? {
            let (k, _) = self.lmdb("reading the encryption keys", item)?;
            ids.push(wrapped_id(k)?);
        }
        Ok(ids)
    }

    /// Adds a random data key (the next key id, wrapped under the master
    /// key) and makes it the active one, in this transaction. Returns its id.
    pub(crate) fn rotate_data_key(&mut self) -> Result<u32> {
        let store = self.store;
        let path = store.path();
        let ring = store.keyring().ok_or_else(|| Error::NotEncrypted {
            path: path.to_path_buf(),
        })?;
        let ids = self.wrapped_ids()?;
        let keys = ring.keys.read();
        let record = Record::decode(&keys.record).ok_or_else(|| malformed_record(&keys.record))?;
        let id = ids
            .iter()
            .copied()
            .chain([keys.active])
            .max()
            .unwrap_or(FIRST_DATA_KEY)
            .checked_add(1)
            .ok_or_else(|| Error::Corruption {
                location: Location::Record("the store's wrapped keys".into()),
                detail: "no key id is left for a new data key".into(),
            })?;
        let master = keys.master.as_deref().ok_or(Error::EncryptionKeyMismatch {
            path: path.to_path_buf(),
        })?;
        // The master key this handle holds must still be the store's (another
        // process may have changed it): it must open the active key as stored.
        let active = store.meta.get(&self.txn, &wrapped_key(keys.active));
        let active = self
            .lmdb("reading the encryption keys", active)?
            .ok_or_else(|| Error::Corruption {
                location: Location::Record("the store's wrapped keys".into()),
                detail: format!("active data key {} is missing", keys.active),
            })?;
        unwrap(path, master, ring.store_id, keys.active, active)?;
        let key = Zeroizing::new(random::<32>(path, "key")?);
        let wrapped = wrap(master, ring.store_id, id, &key)?;
        drop(keys);
        let put = store.meta.put(&mut self.txn, &wrapped_key(id), &wrapped);
        self.lmdb("recording a new data key", put)?;
        let record = Record {
            active: id,
            ..record
        };
        let put = store.meta.put(&mut self.txn, RECORD_KEY, &record.encode());
        self.lmdb("recording a new data key", put)?;
        // This handle learns the key from the store, once this commits (a
        // transaction that aborts must leave no key in memory).
        Ok(id)
    }

    /// Deletes the wrapped data keys other than the active one, in this
    /// transaction (the last batch of a re-encryption pass, once nothing is
    /// sealed with them). Returns their ids.
    pub(crate) fn retire_data_keys(&mut self) -> Result<Vec<u32>> {
        let Some(ring) = self.store.keyring() else {
            return Ok(Vec::new());
        };
        let active = ring.active();
        let retired: Vec<u32> = self
            .wrapped_ids()?
            .into_iter()
            .filter(|id| *id != NAMES_KEY_ID && *id != active)
            .collect();
        for id in &retired {
            let del = self.store.meta.delete(&mut self.txn, &wrapped_key(*id));
            self.lmdb("retiring a data key", del)?;
        }
        Ok(retired)
    }
}

/// Makes a new store encrypted with `key`: draws its keys and records them.
pub(crate) fn create_keyring(
    txn: &mut RwTxn,
    meta: &Database<Bytes, Bytes>,
    path: &Path,
    store_id: StoreId,
    key: &EncryptionKey,
) -> Result<Keyring> {
    let ring = Keyring {
        store_id,
        names: Zeroizing::new(random::<32>(path, "key")?),
        keys: RwLock::new(Keys {
            active: FIRST_DATA_KEY,
            record: [0; RECORD_LEN],
            master: None,
            data: vec![(
                FIRST_DATA_KEY,
                Box::new(Zeroizing::new(random::<32>(path, "key")?)),
            )],
        }),
    };
    let master = write_wrapped(|k, v| meta.put(txn, k, v), path, &ring, key)?;
    {
        let mut keys = ring.keys.write();
        keys.master = Some(Box::new(master));
        let err = super::storage_error("reading the encryption record", 0);
        let raw = meta.get(txn, RECORD_KEY).map_err(&err)?.unwrap_or_default();
        keys.record = <[u8; RECORD_LEN]>::try_from(raw).map_err(|_| malformed_record(raw))?;
    }
    Ok(ring)
}

/// What a block's associated data says sealed it: a store data key.
pub(crate) const STORE_BLOCK: &[u8; 16] = b"varvedb block 1\0";

/// One sealing key of blocks: the store's data key `key_id`, or an entity's
/// key (`storage::vault`), with the label its associated data carries. The
/// one place a block is sealed and opened, whichever key it is.
pub(crate) struct BlockKey<'k> {
    pub(crate) label: &'static [u8; 16],
    pub(crate) store_id: StoreId,
    pub(crate) key_id: u32,
    pub(crate) secret: &'k [u8; 32],
}

impl BlockKey<'_> {
    /// Binds the block to its place: store, key (first global sequence),
    /// header and key id.
    fn ad(&self, key: u64, header: &[u8]) -> [u8; 16 + 16 + 8 + 64 + 4] {
        let mut ad = [0u8; 16 + 16 + 8 + 64 + 4];
        ad[..16].copy_from_slice(self.label);
        ad[16..32].copy_from_slice(self.store_id.as_bytes());
        ad[32..40].copy_from_slice(&key.to_be_bytes());
        ad[40..104].copy_from_slice(&header[..HEADER_LEN]);
        ad[104..108].copy_from_slice(&self.key_id.to_le_bytes());
        ad
    }

    /// Seals the plaintext block `plain`, stored under `key`, with `nonce`
    /// into `out` (cleared first).
    pub(crate) fn seal(
        &self,
        key: u64,
        nonce: &[u8; NONCE_LEN],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        out.reserve(plain.len() + BLOCK_OVERHEAD);
        out.extend_from_slice(&plain[..HEADER_LEN]);
        out.extend_from_slice(&self.key_id.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&plain[HEADER_LEN..]);
        let ad = self.ad(key, &plain[..HEADER_LEN]);
        let tag = cipher(self.secret)
            .encrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &ad,
                &mut out[HEADER_LEN + SEAL_LEN..],
            )
            .map_err(|_| sealing(key))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens the sealed block `raw` (at least [`check_sealed_len`] long),
    /// stored under `key`, into `out`: its header, then its body. `whose`
    /// completes the message of a block that does not authenticate.
    pub(crate) fn open(&self, key: u64, raw: &[u8], out: &mut PlainBuf, whose: &str) -> Result<()> {
        let seal = &raw[HEADER_LEN..HEADER_LEN + SEAL_LEN];
        let (body, tag) =
            raw[HEADER_LEN + SEAL_LEN..].split_at(raw.len() - HEADER_LEN - BLOCK_OVERHEAD);
        out.fill(&[&raw[..HEADER_LEN], body]);
        let ad = self.ad(key, &raw[..HEADER_LEN]);
        let opened = cipher(self.secret).decrypt_in_place_detached(
            XNonce::from_slice(&seal[8..]),
            &ad,
            &mut out.as_mut()[HEADER_LEN..],
            Tag::from_slice(tag),
        );
        if opened.is_err() {
            out.clear();
            return Err(unauthentic_block(
                key,
                format!(
                    "the block does not authenticate{whose}: it was altered, moved, swapped, \
                     or copied from another store"
                ),
            ));
        }
        Ok(())
    }
}

fn unauthentic_block(key: u64, detail: String) -> Error {
    Error::Unauthentic {
        location: Location::Global(GlobalSequence(key)),
        detail,
    }
}

/// Refuses an encrypted block `raw`, stored under `key`, too short for its
/// header and seal.
pub(crate) fn check_sealed_len(key: u64, raw: &[u8]) -> Result<()> {
    if raw.len() < HEADER_LEN + BLOCK_OVERHEAD {
        return Err(unauthentic_block(
            key,
            format!(
                "an encrypted block of {} bytes is shorter than its header and seal",
                raw.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses a seal whose reserved word is not zero (this version writes zero
/// and accepts nothing else).
pub(crate) fn check_reserved(key: u64, raw: &[u8]) -> Result<()> {
    if raw[HEADER_LEN + 4..HEADER_LEN + 8] != [0; 4] {
        return Err(unauthentic_block(
            key,
            "the seal's reserved word is not zero".into(),
        ));
    }
    Ok(())
}

fn value_ad(store_id: StoreId, kind: ValueKind, key: &[u8], key_id: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(64 + key.len());
    ad.extend_from_slice(b"varvedb value 1\0");
    ad.extend_from_slice(kind.label());
    ad.push(0);
    ad.extend_from_slice(store_id.as_bytes());
    ad.extend_from_slice(&(key.len() as u32).to_le_bytes());
    ad.extend_from_slice(key);
    ad.extend_from_slice(&key_id.to_le_bytes());
    ad
}

impl Keyring {
    /// A keyring of fixed keys for the fuzz targets (`crate::fuzzing`).
    pub(crate) fn fixed(store_id: [u8; 16], data_key: [u8; 32]) -> Keyring {
        Keyring {
            store_id: StoreId::from_bytes(store_id),
            names: Zeroizing::new([0; 32]),
            keys: RwLock::new(Keys {
                active: FIRST_DATA_KEY,
                record: [0; RECORD_LEN],
                master: None,
                data: vec![(FIRST_DATA_KEY, Box::new(Zeroizing::new(data_key)))],
            }),
        }
    }

    /// The data key new blocks and values are sealed with.
    pub(crate) fn active(&self) -> u32 {
        self.keys.read().active
    }

    /// Whether this keyring holds the data key `id`.
    pub(crate) fn knows(&self, id: u32) -> bool {
        self.keys.read().get(id).is_some()
    }

    /// Replaces the master key (a master-key change committed: called by
    /// [`Store::write`] under the writer lock).
    pub(crate) fn set_master(&self, master: Key32) {
        self.keys.write().master = Some(Box::new(master));
    }

    /// Makes the keyring match the store as `txn` sees it, if its `crypt`
    /// record changed since the keyring was loaded (another handle, in this
    /// process or another, rotated the data key): unwraps the data keys it
    /// does not hold yet and takes the active one from the record.
    pub(crate) fn refresh(&self, path: &Path, meta: &Table, txn: &Txn<'_>) -> Result<()> {
        let err = super::storage_error("reading the encryption record", 0);
        let raw = meta.get(txn, RECORD_KEY).map_err(&err)?;
        let raw = raw.ok_or_else(|| malformed_record(&[]))?;
        if self.keys.read().record[..] == *raw {
            return Ok(());
        }
        self.reload(path, meta, txn)
    }

    /// Loads, from `txn`, the store's active key id and every data key this
    /// keyring does not hold yet.
    pub(crate) fn reload(&self, path: &Path, meta: &Table, txn: &Txn<'_>) -> Result<()> {
        let err = super::storage_error("reading the encryption keys", 0);
        let raw = meta.get(txn, RECORD_KEY).map_err(&err)?;
        let raw = raw.ok_or_else(|| malformed_record(&[]))?;
        let record = Record::decode(raw).ok_or_else(|| malformed_record(raw))?;
        let mut fresh = Vec::new();
        {
            let keys = self.keys.read();
            for item in meta.prefix_iter(txn, WRAPPED_PREFIX).map_err(&err)? {
                let (k, v) = item.map_err(&err)?;
                let id = wrapped_id(k)?;
                if id == NAMES_KEY_ID || keys.get(id).is_some() {
                    continue;
                }
                // A master key changed by another process since this handle
                // opened cannot unwrap a key added after: a typed error
                // (reopen with the new key), never a key guessed.
                let master = keys.master.as_deref().ok_or(Error::EncryptionKeyMismatch {
                    path: path.to_path_buf(),
                })?;
                fresh.push((id, Box::new(unwrap(path, master, self.store_id, id, v)?)));
            }
        }
        let mut keys = self.keys.write();
        for (id, key) in fresh {
            if keys.get(id).is_none() {
                keys.data.push((id, key));
            }
        }
        if keys.get(record.active).is_none() {
            return Err(Error::Corruption {
                location: Location::Record("the store's wrapped keys".into()),
                detail: format!("active data key {} is missing", record.active),
            });
        }
        keys.active = record.active;
        keys.record.copy_from_slice(raw);
        Ok(())
    }

    /// The catalog key standing for the stream name `name`: a keyed BLAKE3
    /// hash, so a lookup by name needs no scan and the name is not on disk.
    ///
    /// The hasher's copy of the key (and its state) is zeroed before it is
    /// dropped (blake3's `zeroize` feature). What is not: copies its SIMD
    /// compression makes in registers and stack frames, which the next calls
    /// overwrite.
    pub(crate) fn name_digest(&self, name: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.names);
        h.update(b"varvedb stream name 1\0");
        h.update(name.as_bytes());
        let digest = *h.finalize().as_bytes();
        zeroize::Zeroize::zeroize(&mut h);
        digest
    }

    /// Seals the plaintext block `plain` (header stamped) stored under
    /// `key` into `out`.
    pub(crate) fn seal_block(&self, key: u64, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let nonce = nonce()?;
        let keys = self.keys.read();
        let active = keys.active;
        BlockKey {
            label: STORE_BLOCK,
            store_id: self.store_id,
            key_id: active,
            secret: keys.get(active).ok_or_else(|| sealing(key))?,
        }
        .seal(key, &nonce, plain, out)
    }

    /// Opens the encrypted block `raw` stored under `key` into `out`: its
    /// header followed by its body, as the plaintext block was sealed.
    pub(crate) fn open_block(&self, key: u64, raw: &[u8], out: &mut PlainBuf) -> Result<()> {
        check_sealed_len(key, raw)?;
        check_reserved(key, raw)?;
        let key_id = u32::from_le_bytes([
            raw[HEADER_LEN],
            raw[HEADER_LEN + 1],
            raw[HEADER_LEN + 2],
            raw[HEADER_LEN + 3],
        ]);
        let keys = self.keys.read();
        let secret = keys.get(key_id).ok_or_else(|| {
            unauthentic_block(
                key,
                format!("sealed with data key {key_id}, unknown to this store"),
            )
        })?;
        BlockKey {
            label: STORE_BLOCK,
            store_id: self.store_id,
            key_id,
            secret,
        }
        .open(key, raw, out, "")
    }

    /// Seals `plain`, the value of `kind` stored under the LMDB key `key`.
    pub(crate) fn seal_value(&self, kind: ValueKind, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let nonce = nonce()?;
        let keys = self.keys.read();
        let active = keys.active;
        let mut out = Vec::with_capacity(plain.len() + VALUE_OVERHEAD);
        out.extend_from_slice(&active.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let ad = value_ad(self.store_id, kind, key, active);
        let failed = || Error::Corruption {
            location: Location::Record(format!("a {} value", kind_name(kind))),
            detail: "sealing failed".into(),
        };
        let data_key = keys.get(active).ok_or_else(failed)?;
        let tag = cipher(data_key)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut out[4 + NONCE_LEN..])
            .map_err(|_| failed())?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens `raw`, a sealed value of `kind` stored under `key`, into `out`.
    pub(crate) fn open_value(
        &self,
        kind: ValueKind,
        key: &[u8],
        raw: &[u8],
        out: &mut PlainBuf,
    ) -> Result<()> {
        let bad = |detail: &str| Error::Unauthentic {
            location: Location::Record(format!(
                "the {} under key {}",
                kind_name(kind),
                String::from_utf8_lossy(key).escape_debug()
            )),
            detail: detail.into(),
        };
        if raw.len() < VALUE_OVERHEAD {
            return Err(bad("a sealed value shorter than its seal"));
        }
        let key_id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let keys = self.keys.read();
        let data_key = keys
            .get(key_id)
            .ok_or_else(|| bad("sealed with a data key unknown to this store"))?;
        let body = &raw[4 + NONCE_LEN..raw.len() - TAG_LEN];
        out.fill(&[body]);
        let ad = value_ad(self.store_id, kind, key, key_id);
        let opened = cipher(data_key).decrypt_in_place_detached(
            XNonce::from_slice(&raw[4..4 + NONCE_LEN]),
            &ad,
            out.as_mut(),
            Tag::from_slice(&raw[raw.len() - TAG_LEN..]),
        );
        if opened.is_err() {
            out.clear();
            return Err(bad(
                "the value does not authenticate: it was altered, moved, or copied from another store",
            ));
        }
        Ok(())
    }
}

fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::StreamName => "stream name",
        ValueKind::State => "state value",
    }
}

fn sealing(key: u64) -> Error {
    Error::Corruption {
        location: Location::Global(GlobalSequence(key)),
        detail: "sealing the block failed".into(),
    }
}

/// A 16-byte aligned buffer of opened plaintext, zeroed when cleared and
/// when dropped. Its bytes never move while it is not written to.
#[derive(Default)]
pub(crate) struct PlainBuf(AlignedVec<16>);

impl PlainBuf {
    /// Zeroes and empties the buffer (keeping its allocation).
    pub(crate) fn clear(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.clear();
    }

    /// Replaces the contents with `parts`, concatenated. Never leaves
    /// plaintext behind in a freed allocation: a buffer too small is zeroed
    /// and replaced, not grown.
    pub(super) fn fill(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.clear();
        if self.0.capacity() < len {
            self.0 = AlignedVec::with_capacity(len);
        }
        for p in parts {
            self.0.extend_from_slice(p);
        }
    }

    pub(super) fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }

    /// The plaintext.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Drop for PlainBuf {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// The plaintext a read snapshot (or one walk) has opened: each block
/// once, plus any values. Entries are never changed or removed while the
/// arena is borrowed, so the bytes handed out stay valid for the borrow.
#[derive(Default)]
pub(crate) struct Plaintexts {
    blocks: Mutex<HashMap<u64, PlainBuf>>,
    values: Mutex<HashMap<(ValueKind, Vec<u8>), PlainBuf>>,
}

/// Extends a borrow of `buf`'s bytes to the arena's borrow.
///
/// # Safety
///
/// `buf` must be (or be about to be) owned by an arena borrowed for `'a`
/// that never mutates, removes or drops it before `'a` ends.
unsafe fn pinned<'a>(buf: &PlainBuf) -> &'a [u8] {
    let s = buf.as_slice();
    // SAFETY: the caller guarantees the allocation behind `s` outlives 'a
    // unchanged; moving a `PlainBuf` (into or within the arena's map) moves
    // only the vector's pointer, not the bytes it points to.
    unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) }
}

impl Plaintexts {
    /// Drops everything opened so far (the borrow checker makes sure no
    /// reference into it is alive).
    pub(crate) fn clear(&mut self) {
        self.blocks.get_mut().clear();
        self.values.get_mut().clear();
    }

    /// Forgets the opened value of `kind` under `key` (written since).
    pub(crate) fn forget_value(&mut self, kind: ValueKind, key: &[u8]) {
        let values = self.values.get_mut();
        if !values.is_empty() {
            values.remove(&(kind, key.to_vec()));
        }
    }

    /// Forgets the opened block under `key` (rewritten since).
    pub(crate) fn forget_block(&mut self, key: u64) {
        let blocks = self.blocks.get_mut();
        if !blocks.is_empty() {
            blocks.remove(&key);
        }
    }

    /// The opened block stored under `key`: `open` fills a fresh buffer
    /// the first time, so a block is opened at most once per arena.
    pub(crate) fn block(
        &self,
        key: u64,
        open: impl FnOnce(&mut PlainBuf) -> Result<()>,
    ) -> Result<&[u8]> {
        let mut blocks = self.blocks.lock();
        if let Some(buf) = blocks.get(&key) {
            // SAFETY: `buf` is in this arena, borrowed for as long as the
            // result; entries are only removed by `clear` (through
            // `&mut self`) or drop.
            return Ok(unsafe { pinned(buf) });
        }
        let mut buf = PlainBuf::default();
        open(&mut buf)?;
        // SAFETY: `buf` goes into this arena right below, never to change.
        let bytes = unsafe { pinned(&buf) };
        blocks.insert(key, buf);
        Ok(bytes)
    }

    /// The opened value `raw` of `kind` stored under `key`.
    pub(crate) fn value<'a>(
        &'a self,
        ring: &Keyring,
        kind: ValueKind,
        key: &[u8],
        raw: &[u8],
    ) -> Result<&'a [u8]> {
        let mut values = self.values.lock();
        let slot = (kind, key.to_vec());
        if let Some(buf) = values.get(&slot) {
            // SAFETY: as in `block`: an entry of this arena, borrowed for 'a.
            return Ok(unsafe { pinned(buf) });
        }
        let mut buf = PlainBuf::default();
        ring.open_value(kind, key, raw, &mut buf)?;
        // SAFETY: `buf` goes into this arena right below, never to change.
        let bytes = unsafe { pinned(&buf) };
        values.insert(slot, buf);
        Ok(bytes)
    }
}

/// The data key id an encrypted block `raw` names (`None` if too short, or
/// sealed with its entity's key from the key vault, not a data key).
pub(crate) fn block_key_id(raw: &[u8]) -> Option<u32> {
    if super::vault::entity_sealed(raw) {
        return None;
    }
    raw.get(HEADER_LEN..HEADER_LEN + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The data key id a sealed value `raw` names (`None` if too short).
pub(crate) fn value_key_id(raw: &[u8]) -> Option<u32> {
    raw.get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// `plain`, a stamped plaintext block stored under `key`, sealed.
pub(crate) fn sealed_block(ring: &Keyring, key: u64, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ring.seal_block(key, plain, &mut out)?;
    Ok(out)
}

/// The encrypted path of [`Store::open_stored`] and [`Store::open_pinned`],
/// out of line so the plaintext path stays as it was.
#[cold]
#[inline(never)]
fn header_then_open<'a>(
    ring: &Keyring,
    key: u64,
    raw: &[u8],
    open: impl FnOnce(&Keyring) -> Result<&'a [u8]>,
) -> Result<BlockView<'a>> {
    // The header is in the clear: damage to it is reported as damage (its
    // checksum), before the cipher is asked.
    parse_header(key, raw).map_err(corrupt_at(key))?;
    let plain = open(ring)?;
    BlockView::parse(key, plain).map_err(corrupt_at(key))
}

impl super::View {
    /// The store's keys as this snapshot sees them (`None`: plaintext).
    pub(crate) fn encryption_status(&self) -> Result<Option<crate::encryption::EncryptionStatus>> {
        let records = self.key_records()?;
        let Some((_, raw)) = records.iter().find(|(k, _)| k == RECORD_KEY) else {
            return Ok(None);
        };
        let record = Record::decode(raw).ok_or_else(|| malformed_record(raw))?;
        let mut data_keys = Vec::new();
        for (k, _) in &records {
            if k.starts_with(WRAPPED_PREFIX) {
                let id = wrapped_id(k)?;
                if id != NAMES_KEY_ID {
                    data_keys.push(id);
                }
            }
        }
        let cursor = self
            .store
            .meta
            .get(&self.pin.txn, super::rekey::CURSOR_KEY)
            .map_err(super::storage_error("reading the re-encryption cursor", 0))?;
        Ok(Some(crate::encryption::EncryptionStatus {
            active_key: record.active,
            data_keys,
            reencrypting: cursor.is_some(),
        }))
    }

    /// This store's encryption records: its `crypt` record and wrapped
    /// keys, as `(key, value)` (empty for a plaintext store).
    pub(crate) fn key_records(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let err = super::storage_error("reading the encryption record", 0);
        let mut out = Vec::new();
        // `crypt` and `crypt-key…` share the prefix.
        let iter = self
            .store
            .meta
            .prefix_iter(&self.pin.txn, RECORD_KEY)
            .map_err(&err)?;
        for item in iter {
            let (k, v) = item.map_err(&err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

impl Store {
    /// The block `raw` stored under `key`, ready to read: parsed in place in
    /// a plaintext store, opened into `buf` in an encrypted one (for walks
    /// whose references do not outlive one block).
    #[inline]
    pub(crate) fn open_stored<'a>(
        &self,
        key: u64,
        raw: &'a [u8],
        buf: &'a mut PlainBuf,
    ) -> Result<BlockView<'a>> {
        match &self.crypt {
            None => BlockView::parse(key, raw).map_err(corrupt_at(key)),
            Some(ring) => header_then_open(ring, key, raw, |ring| {
                self.learn(ring, block_key_id(raw))?;
                self.open_sealed_block(ring, key, raw, buf)?;
                Ok(buf.as_slice())
            }),
        }
    }

    /// [`Store::open_stored`] into `arena`, where the opened block stays
    /// (opened once) for as long as the arena is borrowed.
    #[inline]
    pub(crate) fn open_pinned<'a>(
        &self,
        key: u64,
        raw: &'a [u8],
        arena: &'a Plaintexts,
    ) -> Result<BlockView<'a>> {
        match &self.crypt {
            None => BlockView::parse(key, raw).map_err(corrupt_at(key)),
            Some(ring) => header_then_open(ring, key, raw, |ring| {
                arena.block(key, |buf| {
                    self.learn(ring, block_key_id(raw))?;
                    self.open_sealed_block(ring, key, raw, buf)
                })
            }),
        }
    }

    /// Opens the encrypted block `raw` stored under `key` into `out`, with
    /// the store's data key its seal names, or with its entity's key from
    /// the key vault (see [`super::vault`]).
    #[inline]
    pub(crate) fn open_sealed_block(
        &self,
        ring: &Keyring,
        key: u64,
        raw: &[u8],
        out: &mut PlainBuf,
    ) -> Result<()> {
        if super::vault::entity_sealed(raw) {
            return match self.vault() {
                Some(vault) => vault.open_block(key, raw, out),
                None => Err(Error::Unauthentic {
                    location: Location::Global(GlobalSequence(key)),
                    detail: "sealed with an entity key, but the store has no key vault".into(),
                }),
            };
        }
        ring.open_block(key, raw, out)
    }

    /// The checked header of the block `raw` stored under `key`, without
    /// opening its body (in a plaintext store, exactly what `BlockView::parse`
    /// checks).
    #[inline]
    pub(crate) fn stored_header(&self, key: u64, raw: &[u8]) -> Result<BlockHeader> {
        match &self.crypt {
            None => BlockView::parse(key, raw)
                .map(|v| *v.header())
                .map_err(corrupt_at(key)),
            Some(_) => sealed_header(key, raw),
        }
    }

    /// A `state` value (or stream name) as stored: sealed in an encrypted
    /// store.
    pub(crate) fn seal_value<'a>(
        &self,
        kind: ValueKind,
        key: &[u8],
        value: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        match &self.crypt {
            None => Ok(std::borrow::Cow::Borrowed(value)),
            Some(ring) => ring
                .seal_value(kind, key, value)
                .map(std::borrow::Cow::Owned),
        }
    }

    /// A stored value opened into `arena` (as it is in a plaintext store).
    #[inline]
    pub(crate) fn open_value<'a>(
        &self,
        kind: ValueKind,
        key: &[u8],
        raw: &'a [u8],
        arena: &'a Plaintexts,
    ) -> Result<&'a [u8]> {
        match &self.crypt {
            None => Ok(raw),
            Some(ring) => {
                self.learn(ring, value_key_id(raw))?;
                arena.value(ring, kind, key, raw)
            }
        }
    }

    /// Opens the sealed value `raw` of `kind` stored under `key` into `out`
    /// with `ring`, this store's keyring.
    pub(crate) fn open_value_into(
        &self,
        ring: &Keyring,
        kind: ValueKind,
        key: &[u8],
        raw: &[u8],
        out: &mut PlainBuf,
    ) -> Result<()> {
        self.learn(ring, value_key_id(raw))?;
        ring.open_value(kind, key, raw, out)
    }

    /// Makes sure `ring` holds the data key `id` (a block or value sealed
    /// with it is about to be opened): a key added by a rotation since the
    /// keyring was loaded (by another process, or by this one since its
    /// last write) is read from the store. A key the store does not hold
    /// either is left for the opening to report.
    #[inline]
    fn learn(&self, ring: &Keyring, id: Option<u32>) -> Result<()> {
        match id {
            Some(id) if !ring.knows(id) => self.reload_keyring(ring),
            _ => Ok(()),
        }
    }

    #[cold]
    #[inline(never)]
    fn reload_keyring(&self, ring: &Keyring) -> Result<()> {
        let env = self.env("reading the encryption keys")?;
        // Every caller is inside a read snapshot or a write transaction,
        // which holds a guard of the gate: no remap can start meanwhile.
        let _guard = self.gate.enter_nested();
        let txn = env
            .read_txn()
            .map_err(self.err("reading the encryption keys"))?;
        // A fresh snapshot sees at least what the caller's does: the key a
        // sealed block or value names was committed with it or before.
        ring.reload(self.path(), &self.meta, &Txn::Ro(txn))
    }
}

#[cold]
#[inline(never)]
fn sealed_header(key: u64, raw: &[u8]) -> Result<BlockHeader> {
    let header = parse_header(key, raw).map_err(corrupt_at(key))?;
    check_sealed_len(key, raw)?;
    Ok(header)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::fixed([9; 16], [3; 32])
    }

    fn plain_block() -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN + 48];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn a_block_round_trips_and_each_region_is_authenticated() {
        let ring = ring();
        let plain = plain_block();
        let mut sealed = Vec::new();
        ring.seal_block(7, &plain, &mut sealed).unwrap();
        assert_eq!(sealed.len(), plain.len() + BLOCK_OVERHEAD);
        let mut out = PlainBuf::default();
        ring.open_block(7, &sealed, &mut out).unwrap();
        assert_eq!(out.as_slice(), &plain[..]);
        // Every byte, flipped, fails (the reserved word and the key id too).
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 0x10;
            assert!(
                matches!(
                    ring.open_block(7, &b, &mut out),
                    Err(Error::Unauthentic { .. })
                ),
                "byte {i}"
            );
        }
        // Another key (a moved block) fails.
        assert!(ring.open_block(8, &sealed, &mut out).is_err());
    }

    #[test]
    fn keys_never_move_when_the_keyring_grows() {
        let ring = ring();
        let at = ring.keys.read().get(1).unwrap().as_ptr();
        for id in 2..200u32 {
            ring.keys
                .write()
                .data
                .push((id, Box::new(Zeroizing::new([id as u8; 32]))));
        }
        assert_eq!(ring.keys.read().get(1).unwrap().as_ptr(), at);
        assert_eq!(**ring.keys.read().get(150).unwrap(), [150u8; 32]);
    }

    #[test]
    fn nonces_differ_between_sealings_of_the_same_block() {
        let ring = ring();
        let plain = plain_block();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut sealed = Vec::new();
            ring.seal_block(7, &plain, &mut sealed).unwrap();
            assert!(seen.insert(sealed[HEADER_LEN + 8..HEADER_LEN + SEAL_LEN].to_vec()));
        }
    }

    #[test]
    fn values_are_bound_to_their_key_and_kind() {
        let ring = ring();
        let sealed = ring
            .seal_value(ValueKind::State, b"snap/a", b"hello")
            .unwrap();
        let mut out = PlainBuf::default();
        ring.open_value(ValueKind::State, b"snap/a", &sealed, &mut out)
            .unwrap();
        assert_eq!(out.as_slice(), b"hello");
        assert!(ring
            .open_value(ValueKind::State, b"snap/b", &sealed, &mut out)
            .is_err());
        assert!(ring
            .open_value(ValueKind::StreamName, b"snap/a", &sealed, &mut out)
            .is_err());
    }

    #[test]
    fn the_record_round_trips() {
        let r = Record {
            kdf: Kdf::Argon2id {
                m_kib: 8,
                t: 1,
                p: 1,
                salt: [5; 16],
            },
            active: 3,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&r.encode()[..10]), None);
    }

    fn open_with(dir: &Path, key: [u8; 32]) -> Result<crate::Varve> {
        crate::Varve::with_config(
            dir,
            crate::VarveConfig::encryption(EncryptionKey::from_bytes(key)),
        )
    }

    fn append_and_count(varve: &crate::Varve, append: bool) -> usize {
        let mut s = varve.stream::<Vec<u8>, 16>("blobs").unwrap();
        if append {
            s.append(crate::StreamId(1), &vec![7u8; 3]).unwrap();
        }
        let reader = s.reader();
        let mut n = 0;
        for e in reader.iter_stream(crate::StreamId(1), None).unwrap() {
            assert_eq!(e.unwrap().as_slice(), &[7u8; 3]);
            n += 1;
        }
        n
    }

    /// A write of another thread that starts as soon as a master-key change
    /// commits (the writer lock released) finds the keyring holding the new
    /// master key: a rotation then wraps under it (before, the keyring was
    /// updated after `Store::write` returned, and such a rotation was
    /// refused as a key mismatch; two changes could leave the older key).
    #[test]
    fn a_master_key_change_reaches_the_keyring_as_it_commits() {
        let dir = tempfile::tempdir().unwrap();
        let varve = open_with(dir.path(), [1; 32]).unwrap();
        append_and_count(&varve, true);
        let new = EncryptionKey::from_bytes([2; 32]);
        varve
            .store()
            .write(|txn| txn.change_master_key(&new))
            .unwrap();
        // What the next write of any thread of this process sees.
        assert_eq!(varve.store().write(|txn| txn.rotate_data_key()).unwrap(), 2);
        assert_eq!(append_and_count(&varve, true), 2);
        drop(varve);
        let varve = open_with(dir.path(), [2; 32]).unwrap();
        assert_eq!(append_and_count(&varve, false), 2);
        assert!(varve.verify().unwrap().is_ok());
    }

    /// A master-key change whose transaction aborts (or is run again after
    /// the map grew) leaves the keyring with the master key the store keeps.
    #[test]
    fn an_aborted_master_key_change_leaves_the_keyring_alone() {
        let dir = tempfile::tempdir().unwrap();
        let varve = open_with(dir.path(), [1; 32]).unwrap();
        append_and_count(&varve, true);
        let new = EncryptionKey::from_bytes([2; 32]);
        let aborted = varve.store().write(|txn| {
            txn.change_master_key(&new)?;
            Err::<(), _>(Error::NotEncrypted {
                path: dir.path().to_path_buf(),
            })
        });
        assert!(matches!(aborted, Err(Error::NotEncrypted { .. })));
        assert_eq!(varve.rotate_data_key().unwrap(), 2);
        assert_eq!(append_and_count(&varve, true), 2);
        drop(varve);
        assert!(matches!(
            open_with(dir.path(), [2; 32]),
            Err(Error::EncryptionKeyMismatch { .. })
        ));
        let varve = open_with(dir.path(), [1; 32]).unwrap();
        assert_eq!(append_and_count(&varve, false), 2);
    }
}
