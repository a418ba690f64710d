//! The key vault: per-entity data keys kept outside the store, for
//! crypto-shredding (erasure requests).
//!
//! An encrypted store opened with [`VarveConfig::key_vault`](crate::VarveConfig::key_vault)
//! seals every block it appends with the key of the block's entity: the
//! `(stream, stream id)` the block belongs to (a block is one append of one
//! stream id, so it belongs to exactly one entity). Those keys live in the
//! vault, a small LMDB environment of its own at a path the application
//! chooses, never in the store's file: [`Varve::backup`](crate::Varve::backup)
//! and exports copy the store, not the vault. Erasing an entity deletes its
//! key from the vault (and leaves a tombstone saying when), so its events
//! become unreadable in the store and in every backup or export of it,
//! taken before or after.
//!
//! **On disk.** The vault's environment holds three databases:
//!
//! ```text
//! stores: store id (16)                        -> wrapped check key (72)
//! keys:   store id (16) | tag (u32 BE) | id (u64 BE) -> wrapped entity key (72)
//! erased: store id (16) | tag (u32 BE) | id (u64 BE) -> erased at (u64 LE, micros) | nonce (24) | tag (16)
//! ```
//!
//! A tombstone is authenticated under the master key too (an empty message
//! with the erasure time and the entity as associated data): a key deleted
//! by anyone without the master key is missing, never "erased".
//!
//! A wrapped key is `nonce (24) | sealed key (32) | tag (16)` under the
//! store's master key, with the store id and the entity (or `check`) as
//! associated data: a vault opened with the wrong master key fails on the
//! store's check key, a typed error at open. The store records that it uses
//! a vault (its `meta` record `crypt-vault`), so opening it without one is a
//! typed error at open too, not at the first read.
//!
//! A block sealed with an entity key has the layout of any encrypted block,
//! with the key id [`ENTITY_KEY_ID`]; its associated data is that of a
//! store-keyed block under another label. The entity is the one its header
//! (in the clear) names.
//!
//! **Since.** The store's record `crypt-vault` (version 2) is
//! `2 | since (u64 LE) | tag (32)`: `since` is the store's next global
//! sequence when it got its vault (written in the open's write transaction
//! that records the vault; a store restored from a backup taken before it
//! had a vault has no record, so its first writable open with the vault
//! records that copy's own end). `tag` is a keyed BLAKE3 hash of the store
//! id and `since` under a key derived from the master key (see
//! [`since_record`]), checked at every open, read-only too: a wrong one is
//! [`Error::Unauthentic`] at open. Every block appended while the store has
//! its vault sits at or past `since`, so an entity-sealed block (key id
//! [`ENTITY_KEY_ID`]) below it was sealed with a store data key and its key
//! id altered: it is [`Error::Unauthentic`] on every read path and in
//! `verify`, never opened, never [`Error::Erased`]. One bound per store, not
//! per entity: nothing in the vault records it, so erasing a damaged key, a
//! restored copy sharing the vault, or a vault restored from its backup
//! cannot move it. A **version-1 record** (`1`, one byte: stores that got
//! their vault before `since` was recorded) reads as since 0: the stream
//! index check alone (see [`super::Store::check_erased`]). A writable open
//! does not upgrade it: its since is not known (the lowest entity-sealed
//! block is no evidence, an altered block would lower it), and a since 0
//! written down would add nothing. A version-1 record is not authenticated:
//! a store whose record was rewritten from version 2 to 1 falls back to the
//! stream index check.
//!
//! Every write transaction re-reads the record: one that appeared or
//! changed since the handle opened (another process gave the store a vault)
//! refuses the write with [`Error::KeyVault`], so a handle opened before
//! never seals an append with a data key that erasure would not reach.
//!
//! **Order across the two environments.** A new entity key commits to the
//! vault (durably) before any block sealed with it commits to the store: a
//! crash in between leaves an unused key, which is harmless (the next append
//! of the entity uses it). Erasure commits in the vault and nothing in the
//! store: no stored byte changes, so the tamper-evident chain still verifies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::block::HEADER_LEN;
use super::crypt::{check_reserved, check_sealed_len, BlockKey, PlainBuf, NONCE_LEN};
use super::identity::StoreId;
use crate::error::{Error, Location, Result};
use crate::position::{GlobalSequence, StreamId};

/// The key id in a block's seal that says "sealed with its entity's key".
/// Store data keys count up from 1, so they never reach it.
pub(crate) const ENTITY_KEY_ID: u32 = u32::MAX;
/// The store's `meta` record saying its blocks may be sealed with entity
/// keys kept in a vault (shares the `crypt` prefix, so a restore that adopts
/// the source's encryption records adopts it too).
pub(crate) const VAULT_RECORD: &[u8] = b"crypt-vault";
/// Version 1: one byte, no since (read as since 0).
const VAULT_RECORD_V1: u8 = 1;
/// Version 2: `2 | since (u64 LE) | tag (32)`.
const VAULT_RECORD_V2: u8 = 2;
const VAULT_RECORD_V2_LEN: usize = 1 + 8 + 32;
/// The store's `meta` record counting erasures (see
/// [`super::WriteTxn::note_erasure`]).
const ERASURES_RECORD: &[u8] = b"vault-erasures";
const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;
const TOMBSTONE_LEN: usize = 8 + NONCE_LEN + 16;
/// The vault's map: a reservation of address space, not disk (an entry is
/// about 120 bytes, so millions of entities fit).
#[cfg(target_pointer_width = "64")]
const VAULT_MAP_SIZE: usize = 1 << 30;
#[cfg(not(target_pointer_width = "64"))]
const VAULT_MAP_SIZE: usize = 64 << 20;

type Key32 = Zeroizing<[u8; 32]>;

/// What erasing an entity did ([`Stream::erase`](crate::Stream::erase)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Erasure {
    /// The entity's key was deleted now: its events are unreadable
    /// everywhere from here on.
    Erased,
    /// The entity was erased before, at this time (microseconds since the
    /// Unix epoch); nothing changed.
    AlreadyErased {
        /// When it was erased.
        erased_at_micros: u64,
    },
    /// The entity has no key in the vault: no event of it was appended
    /// since the store had a vault (so nothing sealed with a key of its
    /// own exists). Nothing changed, and no tombstone was written.
    NoKey,
}

/// An entity's key as the vault holds it.
pub(crate) enum Found {
    Key(Key32),
    Erased { at_micros: u64 },
    Missing,
}

/// One open vault environment, shared by every store of this process that
/// uses it (LMDB wants an environment opened once per process).
struct VaultEnv {
    path: PathBuf,
    env: Env<WithoutTls>,
    /// The vault's data file, to tell a vault deleted under us (a key
    /// committed into it would be gone with it).
    file: Option<std::fs::File>,
    /// Opened read-write (by a writable store): see [`open_env`].
    writable: bool,
    stores: Db,
    keys: Db,
    erased: Db,
}

type Db = Database<'static, Bytes, Bytes>;

static OPEN: Mutex<Option<HashMap<PathBuf, Weak<VaultEnv>>>> = Mutex::new(None);

/// The key vault of one open store: its environment, the store's id and
/// master key (zeroed when dropped).
pub(crate) struct Vault {
    env: Arc<VaultEnv>,
    store_id: StoreId,
    master: Key32,
    /// Entity-sealed blocks below it are damage (see the module's "Since").
    since: u64,
    /// The store's `crypt-vault` record as this handle opened (or wrote)
    /// it: every write transaction checks it is still the same.
    record: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.env.path)
            .finish_non_exhaustive()
    }
}

fn vault_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::KeyVault {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn lmdb<'p>(path: &'p Path, what: &str) -> impl Fn(heed::Error) -> Error + 'p {
    let what = what.to_string();
    move |e| vault_error(path, format!("{what}: {e}"))
}

/// `max_readers` is the store's: every thread reading an entity's block
/// holds one of the store's reader slots while it looks the key up, so the
/// vault never needs more (LMDB keeps the first opener's figure).
///
/// `writable`: a read-write open, which creates the vault (its directory,
/// file and databases) when missing. A read-only open (a read-only store's)
/// writes nothing: it opens an existing vault with `MDB_RDONLY` (without
/// LMDB's lock file when that cannot be opened for writing, as the store's
/// own read-only open does) and opens its databases in a read transaction.
///
/// **One environment per vault per process, in the first opener's mode.**
/// A read-only open shares an environment a writable store opened; a
/// writable open of a vault this process holds read-only is refused
/// ([`Error::KeyVault`]): LMDB cannot reopen an environment while it is
/// open, so the read-only stores sharing it must be closed first.
///
/// The map is a fixed [`VAULT_MAP_SIZE`] that no opener ever grows, so a
/// read transaction never meets `MDB_MAP_RESIZED`: nothing to adopt.
fn open_env(path: &Path, writable: bool, max_readers: u32) -> Result<Arc<VaultEnv>> {
    if !writable && !path.join(super::identity::DATA_FILE).is_file() {
        return Err(vault_error(
            path,
            "no key vault here (a read-only open creates none)",
        ));
    }
    if writable {
        std::fs::create_dir_all(path).map_err(|e| vault_error(path, e.to_string()))?;
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| vault_error(path, e.to_string()))?;
    let mut open = OPEN.lock();
    let open = open.get_or_insert_with(HashMap::new);
    if let Some(env) = open.get(&canonical).and_then(Weak::upgrade) {
        if writable && !env.writable {
            return Err(vault_error(
                path,
                "the key vault is open read-only in this process (by a read-only store \
                 using it): close those read-only handles before a writable open of a \
                 store with this vault",
            ));
        }
        return Ok(env);
    }
    // LMDB reads pages through the map: a page past the end of a truncated
    // file would be a SIGBUS, not an error. The store's own check (plain
    // reads of the meta pages and the free list) runs before mapping.
    super::identity::check_data_file(&canonical)?;
    let options = |flags: EnvFlags| {
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(VAULT_MAP_SIZE)
            .max_dbs(4)
            .max_readers(max_readers.max(126));
        // SAFETY: READ_ONLY only removes abilities. NO_LOCK (passed only to
        // a read-only open when the lock file cannot be written) drops
        // LMDB's reader table for this process: its snapshots are then not
        // protected from page reuse by writers in *other* processes. Within
        // this process the vault is opened once (the registry above), and
        // a writable open of it is refused while it is open read-only; the
        // cross-process consequence is the documented limit of this mode (a
        // vault nobody writes meanwhile), which the caller chose by opening
        // a vault it cannot lock.
        unsafe { options.flags(flags) };
        options
    };
    // SAFETY: mapping a file is sound only while nothing truncates or
    // rewrites it underneath us: the directory is the application's key
    // vault, used only through LMDB (whose lock file coordinates processes),
    // and the registry above (whose lock we hold) opens it once per process.
    let open_with = |flags: EnvFlags| unsafe { options(flags).open(&canonical) };
    let opened = if writable {
        open_with(EnvFlags::empty())
    } else {
        match open_with(EnvFlags::READ_ONLY) {
            Err(heed::Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                open_with(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK)
            }
            opened => opened,
        }
    };
    let env = opened.map_err(lmdb(path, "opening the key vault"))?;
    let (stores, keys, erased) = if writable {
        let wtxn = env
            .write_txn()
            .map_err(lmdb(path, "opening the key vault"))?;
        let created = env.create_databases_and_commit(wtxn, |opener, wtxn| {
            let mut db = |name| {
                opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .name(name)
                    .create(wtxn)
            };
            let dbs = (db("stores")?, db("keys")?, db("erased")?);
            Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(dbs))
        });
        created
            .map_err(lmdb(path, "opening the key vault"))?
            .unwrap_commit()
    } else {
        let rtxn = env
            .read_txn()
            .map_err(lmdb(path, "opening the key vault"))?;
        let opened = env.open_databases_and_commit(rtxn, |opener, rtxn| {
            let db = |name| {
                opener
                    .database_options()
                    .types::<Bytes, Bytes>()
                    .name(name)
                    .open(rtxn)
            };
            let dbs = (db("stores")?, db("keys")?, db("erased")?);
            Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(dbs))
        });
        match opened
            .map_err(lmdb(path, "opening the key vault"))?
            .unwrap_commit()
        {
            (Some(stores), Some(keys), Some(erased)) => (stores, keys, erased),
            // A vault whose first writable open never committed (or
            // another LMDB environment): a read-only open cannot finish it.
            _ => {
                return Err(vault_error(
                    path,
                    "no key vault here (the LMDB environment has no key vault databases, \
                     and a read-only open creates none)",
                ))
            }
        }
    };
    let file = std::fs::File::open(canonical.join(super::identity::DATA_FILE)).ok();
    let env = Arc::new(VaultEnv {
        path: path.to_path_buf(),
        env,
        file,
        writable,
        stores,
        keys,
        erased,
    });
    open.retain(|_, w| w.strong_count() > 0);
    open.insert(canonical, Arc::downgrade(&env));
    Ok(env)
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

fn random<const N: usize>(path: &Path) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| vault_error(path, format!("drawing a random key: {e}")))?;
    Ok(b)
}

fn entry_key(store_id: StoreId, tag: u32, id: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..16].copy_from_slice(store_id.as_bytes());
    k[16..20].copy_from_slice(&tag.to_be_bytes());
    k[20..].copy_from_slice(&id.to_be_bytes());
    k
}

fn wrap_ad(store_id: StoreId, what: &[u8]) -> Vec<u8> {
    let mut ad = b"varvedb vault key 1\0".to_vec();
    ad.extend_from_slice(store_id.as_bytes());
    ad.extend_from_slice(what);
    ad
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The test-only crash points (feature `test-encryption`): with
/// `VARVEDB_TEST_VAULT_CRASH` set to `name`, the process aborts there (no
/// destructor, no flush: as a kill -9 would leave it).
#[cfg(feature = "test-encryption")]
fn crash_point(name: &str) {
    if std::env::var("VARVEDB_TEST_VAULT_CRASH").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

#[cfg(not(feature = "test-encryption"))]
fn crash_point(_: &str) {}

impl Vault {
    fn path(&self) -> &Path {
        &self.env.path
    }

    fn wrap(&self, what: &[u8], key: &[u8; 32]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = random(self.path())?;
        let mut body = Zeroizing::new(*key);
        let tag = cipher(&self.master)
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &wrap_ad(self.store_id, what),
                &mut *body,
            )
            .map_err(|_| vault_error(self.path(), "sealing a key failed"))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&*body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// A tombstone of `what` (the entity) erased now: the time, then a
    /// seal of nothing with the time and the entity as associated data.
    fn tombstone(&self, what: &[u8]) -> Result<Vec<u8>> {
        let at = now_micros().to_le_bytes();
        let nonce: [u8; NONCE_LEN] = random(self.path())?;
        let mut ad = wrap_ad(self.store_id, b"erased");
        ad.extend_from_slice(what);
        ad.extend_from_slice(&at);
        let tag = cipher(&self.master)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut [])
            .map_err(|_| vault_error(self.path(), "sealing a tombstone failed"))?;
        let mut out = Vec::with_capacity(TOMBSTONE_LEN);
        out.extend_from_slice(&at);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The erasure time of the tombstone `raw` of `what`; `None` if it does
    /// not authenticate under the master key.
    fn open_tombstone(&self, what: &[u8], raw: &[u8]) -> Option<u64> {
        if raw.len() != TOMBSTONE_LEN {
            return None;
        }
        let (at, rest) = raw.split_at(8);
        let (nonce, tag) = rest.split_at(NONCE_LEN);
        let mut ad = wrap_ad(self.store_id, b"erased");
        ad.extend_from_slice(what);
        ad.extend_from_slice(at);
        cipher(&self.master)
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &ad,
                &mut [],
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(u64::from_le_bytes(at.try_into().ok()?))
    }

    /// `Ok(None)`: the master key does not open it.
    fn unwrap(&self, what: &[u8], raw: &[u8]) -> Result<Option<Key32>> {
        if raw.len() != WRAPPED_LEN {
            return Err(Error::Corruption {
                location: Location::Record(format!("the key vault at {}", self.path().display())),
                detail: format!("a wrapped key of {} bytes", raw.len()),
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&raw[NONCE_LEN..NONCE_LEN + 32]);
        let opened = cipher(&self.master).decrypt_in_place_detached(
            XNonce::from_slice(&raw[..NONCE_LEN]),
            &wrap_ad(self.store_id, what),
            &mut *key,
            Tag::from_slice(&raw[NONCE_LEN + 32..]),
        );
        Ok(opened.ok().map(|()| key))
    }

    /// Opens the vault at `path` for the store `store_id` with its master
    /// key: checks (or, with `register`, records) the store's check key.
    /// Returns the vault and whether the store was known to it. `writable`:
    /// see [`open_env`].
    fn open(
        path: &Path,
        store_id: StoreId,
        master: Key32,
        writable: bool,
        max_readers: u32,
    ) -> Result<(Vault, bool)> {
        let env = open_env(path, writable, max_readers)?;
        let vault = Vault {
            env,
            store_id,
            master,
            since: 0,
            record: Mutex::new(None),
        };
        let rtxn = vault.read()?;
        let check = vault
            .env
            .stores
            .get(&rtxn, store_id.as_bytes())
            .map_err(lmdb(path, "reading the key vault"))?
            .map(<[u8]>::to_vec);
        drop(rtxn);
        match check {
            Some(raw) => match vault.unwrap(b"check", &raw)? {
                Some(_) => Ok((vault, true)),
                None => Err(Error::EncryptionKeyMismatch {
                    path: path.to_path_buf(),
                }),
            },
            None => Ok((vault, false)),
        }
    }

    /// Records this store in the vault (its check key), durably.
    fn register(&self) -> Result<()> {
        let check: [u8; 32] = random(self.path())?;
        let wrapped = self.wrap(b"check", &check)?;
        let mut wtxn = self.write()?;
        self.env
            .stores
            .put(&mut wtxn, self.store_id.as_bytes(), &wrapped)
            .map_err(lmdb(self.path(), "recording the store in the key vault"))?;
        self.commit(wtxn, "recording the store in the key vault")
    }

    fn read(&self) -> Result<RoTxn<'_, WithoutTls>> {
        self.env
            .env
            .read_txn()
            .map_err(lmdb(self.path(), "reading the key vault"))
    }

    /// Commits `wtxn`, unless the vault's file was deleted under the open
    /// store: a key (or tombstone) committed into it would be acknowledged
    /// and lost with the file.
    fn commit(&self, wtxn: RwTxn<'_>, what: &str) -> Result<()> {
        if self
            .env
            .file
            .as_ref()
            .is_some_and(super::identity::is_unlinked)
        {
            return Err(vault_error(
                self.path(),
                format!("{what}: the key vault was deleted while the store was open"),
            ));
        }
        wtxn.commit().map_err(lmdb(self.path(), what))
    }

    fn write(&self) -> Result<RwTxn<'_>> {
        self.env
            .env
            .write_txn()
            .map_err(lmdb(self.path(), "writing the key vault"))
    }

    fn find(&self, txn: &RoTxn<'_, WithoutTls>, tag: u32, id: u64) -> Result<Found> {
        let k = entry_key(self.store_id, tag, id);
        let err = lmdb(self.path(), "reading the key vault");
        if let Some(raw) = self.env.keys.get(txn, &k).map_err(&err)? {
            return match self.unwrap(&k[16..], raw)? {
                Some(key) => Ok(Found::Key(key)),
                None => Err(Error::Unauthentic {
                    location: Location::Record(format!(
                        "the key vault's key of stream tag {tag} id {id}"
                    )),
                    detail: "the wrapped key does not authenticate".into(),
                }),
            };
        }
        if let Some(raw) = self.env.erased.get(txn, &k).map_err(&err)? {
            return match self.open_tombstone(&k[16..], raw) {
                Some(at_micros) => Ok(Found::Erased { at_micros }),
                None => Err(Error::Unauthentic {
                    location: Location::Record(format!(
                        "the key vault's tombstone of stream tag {tag} id {id}"
                    )),
                    detail: "the tombstone does not authenticate: the entity's key was \
                             deleted, not erased"
                        .into(),
                }),
            };
        }
        Ok(Found::Missing)
    }

    /// The key of entity `(tag, id)`, as the vault holds it now.
    pub(crate) fn lookup(&self, tag: u32, id: u64) -> Result<Found> {
        let rtxn = self.read()?;
        self.find(&rtxn, tag, id)
    }

    /// The key to seal an append of `(tag, id)` with: the entity's, drawn
    /// and committed (durably) to the vault on its first append.
    /// [`Error::Erased`] for an erased entity (`at`: the append's first
    /// global sequence).
    pub(crate) fn key_for_append(&self, tag: u32, id: u64, at: u64) -> Result<Key32> {
        let erased = || Error::Erased {
            stream: None,
            id: StreamId(id),
            at: GlobalSequence(at),
        };
        match self.lookup(tag, id)? {
            Found::Key(key) => return Ok(key),
            Found::Erased { .. } => return Err(erased()),
            Found::Missing => {}
        }
        // The store's writer lock is held (an append is in its write
        // transaction), so no other writer of this store draws a key for
        // the entity meanwhile; looking again inside the vault's own write
        // transaction covers any other writer of the vault.
        let mut wtxn = self.write()?;
        match self.find(&wtxn, tag, id)? {
            Found::Key(key) => return Ok(key),
            Found::Erased { .. } => return Err(erased()),
            Found::Missing => {}
        }
        let key = Zeroizing::new(random::<32>(self.path())?);
        let k = entry_key(self.store_id, tag, id);
        let wrapped = self.wrap(&k[16..], &key)?;
        let err = lmdb(self.path(), "recording an entity key in the key vault");
        self.env.keys.put(&mut wtxn, &k, &wrapped).map_err(&err)?;
        self.commit(wtxn, "recording an entity key in the key vault")?;
        crash_point("after-key");
        Ok(key)
    }

    /// Erases entity `(tag, id)`: deletes its key and leaves a tombstone,
    /// in one durable commit of the vault.
    pub(crate) fn erase(&self, tag: u32, id: u64) -> Result<Erasure> {
        let mut wtxn = self.write()?;
        let outcome = match self.find(&wtxn, tag, id) {
            // A key that no longer authenticates is erased all the same.
            Ok(Found::Key(_)) | Err(Error::Unauthentic { .. }) => Erasure::Erased,
            Ok(Found::Erased { at_micros }) => {
                return Ok(Erasure::AlreadyErased {
                    erased_at_micros: at_micros,
                })
            }
            Ok(Found::Missing) => return Ok(Erasure::NoKey),
            Err(e) => return Err(e),
        };
        let k = entry_key(self.store_id, tag, id);
        let err = lmdb(self.path(), "erasing an entity key");
        self.env.keys.delete(&mut wtxn, &k).map_err(&err)?;
        self.env
            .erased
            .put(&mut wtxn, &k, &self.tombstone(&k[16..])?)
            .map_err(&err)?;
        self.commit(wtxn, "erasing an entity key")?;
        crash_point("after-erase");
        Ok(outcome)
    }

    /// Seals the stamped plaintext block `plain` of entity `(tag, id)`,
    /// stored under `key`, with the entity's key.
    pub(crate) fn seal_block(&self, key: u64, tag: u32, id: u64, plain: &[u8]) -> Result<Vec<u8>> {
        let entity_key = self.key_for_append(tag, id, key)?;
        let nonce: [u8; NONCE_LEN] = random(self.path())?;
        let mut out = Vec::new();
        self.block_key(&entity_key)
            .seal(key, &nonce, plain, &mut out)?;
        Ok(out)
    }

    /// How a block of this store is sealed with the entity key `secret`.
    fn block_key<'k>(&self, secret: &'k [u8; 32]) -> BlockKey<'k> {
        BlockKey {
            label: ENTITY_BLOCK,
            store_id: self.store_id,
            key_id: ENTITY_KEY_ID,
            secret,
        }
    }

    /// Opens the entity-sealed block `raw` stored under `key` into `out`
    /// (its header, then its body): [`Error::Erased`] if its entity was
    /// erased; [`Error::Unauthentic`] if it sits below the store's since
    /// (see the module's "Since").
    pub(crate) fn open_block(&self, key: u64, raw: &[u8], out: &mut PlainBuf) -> Result<()> {
        check_sealed_len(key, raw)?;
        let (tag, id) = block_entity(raw);
        if key < self.since {
            return Err(Error::Unauthentic {
                location: Location::Global(GlobalSequence(key)),
                detail: format!(
                    "the block says it is sealed with the key of stream tag {tag} id {id}, \
                     but it sits below global sequence {}, where the store got its key \
                     vault: it was sealed with a store data key, and its key id was altered",
                    self.since
                ),
            });
        }
        let entity_key = match self.lookup(tag, id)? {
            Found::Key(k) => k,
            Found::Erased { .. } => {
                return Err(Error::Erased {
                    stream: None,
                    id: StreamId(id),
                    at: GlobalSequence(key),
                })
            }
            Found::Missing => {
                return Err(vault_error(
                    self.path(),
                    format!(
                        "it holds no key for stream tag {tag} id {id} (the block at global \
                         sequence {key}): the vault is older than the store, or another \
                         store's"
                    ),
                ))
            }
        };
        check_reserved(key, raw)?;
        self.block_key(&entity_key)
            .open(key, raw, out, " under its entity's key")
    }
}

/// Whether the encrypted block `raw` is sealed with its entity's key.
#[inline]
pub(crate) fn entity_sealed(raw: &[u8]) -> bool {
    raw.get(HEADER_LEN..HEADER_LEN + 4) == Some(&ENTITY_KEY_ID.to_le_bytes()[..])
}

/// The entity (stream tag, stream id) a block's header names.
fn block_entity(raw: &[u8]) -> (u32, u64) {
    let h = super::block::BlockHeader::decode(
        raw[..HEADER_LEN]
            .try_into()
            .expect("callers check the length"),
    );
    (h.stream_tag, h.stream_id)
}

/// What a block's associated data says sealed it: an entity's key.
const ENTITY_BLOCK: &[u8; 16] = b"varvedb entity1\0";

/// The vault a store opens with: `None` when it neither has nor asks for
/// one. `master` derives the store's master key (asked only when a vault is
/// opened); `end` reads the store's next global sequence (asked only when
/// the store has no record yet); `writable`: a read-write open, which
/// records a vault the store did not have yet (returned: the record the
/// caller writes in its open transaction).
#[allow(clippy::too_many_arguments)]
pub(crate) fn settle_at_open(
    path: &Path,
    recorded: Option<&[u8]>,
    config: &crate::config::VarveConfig,
    encrypted: bool,
    store_id: StoreId,
    writable: bool,
    master: impl FnOnce() -> Result<Key32>,
    end: impl FnOnce() -> Result<u64>,
) -> Result<(Option<Vault>, Option<Vec<u8>>)> {
    if let Some(r) = recorded {
        let known = match r.first() {
            Some(&VAULT_RECORD_V1) => r.len() == 1,
            Some(&VAULT_RECORD_V2) => r.len() == VAULT_RECORD_V2_LEN,
            _ => false,
        };
        if !known {
            return Err(Error::Corruption {
                location: Location::Record("the store's key vault record".into()),
                detail: format!("unknown record of {} bytes", r.len()),
            });
        }
    }
    let Some(vault_path) = config.key_vault.as_deref() else {
        return match recorded {
            None => Ok((None, None)),
            Some(_) => Err(vault_error(
                path,
                "the store seals events with entity keys kept in a key vault: open it with \
                 its vault (VarveConfig::key_vault)",
            )),
        };
    };
    if !encrypted {
        return Err(vault_error(
            vault_path,
            format!(
                "the store at {} is not encrypted: entity keys need an encrypted store \
                 (VarveConfig::encryption)",
                path.display()
            ),
        ));
    }
    // A vault inside the store's directory would go into every copy of that
    // directory, keys and all: erasure would erase nothing there.
    let resolve = |p: &Path| p.canonicalize().or_else(|_| std::path::absolute(p));
    if let (Ok(store_dir), Ok(vault_dir)) = (resolve(path), resolve(vault_path)) {
        if vault_dir.starts_with(&store_dir) {
            return Err(vault_error(
                vault_path,
                format!(
                    "the key vault is inside the store's directory {}: keep it outside, \
                     or every copy of the store carries the keys erasure deletes",
                    path.display()
                ),
            ));
        }
    }
    let (mut vault, known) = Vault::open(
        vault_path,
        store_id,
        master()?,
        writable,
        config.max_readers,
    )?;
    if let Some(r) = recorded {
        if !known {
            return Err(vault_error(
                vault_path,
                format!(
                    "the vault holds no keys of the store at {} (store id {store_id}): it is \
                     another store's vault, or one older than this store's",
                    path.display()
                ),
            ));
        }
        vault.since = read_since(&vault.master, store_id, r)?;
        *vault.record.get_mut() = Some(r.to_vec());
        return Ok((Some(vault), None));
    }
    // No record: every block the store holds was sealed with its data
    // keys, so its end is where entity-sealed blocks may begin.
    vault.since = end()?;
    if !writable {
        return Ok((Some(vault), None));
    }
    if !known {
        // The vault knows the store before the store names the vault.
        vault.register()?;
    }
    let record = since_record(&vault.master, store_id, vault.since);
    *vault.record.get_mut() = Some(record.clone());
    Ok((Some(vault), Some(record)))
}

/// One past the newest global sequence of the event log `events` (0 for
/// an empty store), from the last block's header (in the clear), before
/// the store is assembled: the since a store gets its vault at.
pub(crate) fn log_end(
    txn: &RoTxn<'_, heed::AnyTls>,
    events: &Database<'_, Bytes, Bytes>,
) -> Result<u64> {
    let err = super::storage_error("reading the event log", 0);
    let Some((k, v)) = events.last(txn).map_err(err)? else {
        return Ok(0);
    };
    let key = super::keys::parse_event_key(k).ok_or_else(|| Error::Corruption {
        location: Location::Record("the last event-log key".into()),
        detail: format!("malformed key of {} bytes", k.len()),
    })?;
    super::block::parse_header(key, v)
        .map(|h| h.end_global())
        .map_err(|e| Error::Corruption {
            location: Location::Global(GlobalSequence(key)),
            detail: e.0,
        })
}

/// The key authenticating a store's since, derived from its master key.
fn since_tag(master: &[u8; 32], store_id: StoreId, since: u64) -> [u8; 32] {
    let key = Zeroizing::new(blake3::derive_key(
        "varvedb 2026 key vault since record 1",
        master,
    ));
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(store_id.as_bytes());
    h.update(&since.to_le_bytes());
    let tag = *h.finalize().as_bytes();
    zeroize::Zeroize::zeroize(&mut h);
    tag
}

/// The store's `crypt-vault` record (version 2) saying it got its vault
/// at global sequence `since`, authenticated under the store's master key
/// `master` (see the module's "Since"). A change of the master key writes
/// it anew (same `since`, the new master key) in the same store
/// transaction as the new encryption record.
pub(crate) fn since_record(master: &[u8; 32], store_id: StoreId, since: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(VAULT_RECORD_V2_LEN);
    out.push(VAULT_RECORD_V2);
    out.extend_from_slice(&since.to_le_bytes());
    out.extend_from_slice(&since_tag(master, store_id, since));
    out
}

/// The since of the store's `crypt-vault` record `raw` under the master
/// key `master`: 0 for a version-1 record (it has none; see the module's
/// "Since"), [`Error::Unauthentic`] for a version-2 record whose tag does
/// not authenticate, [`Error::Corruption`] for anything else.
pub(crate) fn read_since(master: &[u8; 32], store_id: StoreId, raw: &[u8]) -> Result<u64> {
    match raw {
        [VAULT_RECORD_V1] => Ok(0),
        [VAULT_RECORD_V2, rest @ ..] if rest.len() == VAULT_RECORD_V2_LEN - 1 => {
            let since = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            let expected = blake3::Hash::from(since_tag(master, store_id, since));
            let found: [u8; 32] = rest[8..].try_into().expect("32 bytes");
            // blake3::Hash compares in constant time.
            if expected != blake3::Hash::from(found) {
                return Err(Error::Unauthentic {
                    location: Location::Record("the store's key vault record".into()),
                    detail: "the global sequence where the store got its key vault does not \
                             authenticate under the store's master key"
                        .into(),
                });
            }
            Ok(since)
        }
        _ => Err(Error::Corruption {
            location: Location::Record("the store's key vault record".into()),
            detail: format!("unknown record of {} bytes", raw.len()),
        }),
    }
}

impl Vault {
    /// Takes `raw` as the store's `crypt-vault` record this handle
    /// expects: for a change of the master key made through this handle,
    /// after the commit that rewrote the record.
    #[allow(dead_code)]
    pub(crate) fn adopt_record(&self, raw: Vec<u8>) {
        *self.record.lock() = Some(raw);
    }
}

impl super::Store {
    /// Whether entity `(tag, id)` was erased (always `false` without a
    /// vault).
    pub(crate) fn entity_erased(&self, tag: u32, id: u64) -> Result<bool> {
        match self.vault() {
            Some(vault) => Ok(matches!(vault.lookup(tag, id)?, Found::Erased { .. })),
            None => Ok(false),
        }
    }

    /// `e`, unless it is an [`Error::Erased`] of the block `raw` stored
    /// under `key` that the stream index does not hold where the block's
    /// header (in the clear, and not authenticated until the block opens)
    /// places it: that header was altered to name an erased entity, which
    /// must read as damage ([`Error::Unauthentic`]), not as an erasure that
    /// scans pass over.
    #[cold]
    pub(crate) fn check_erased(
        &self,
        txn: &super::kv::Txn<'_>,
        key: u64,
        raw: &[u8],
        e: Error,
    ) -> Error {
        if !matches!(e, Error::Erased { .. }) {
            return e;
        }
        match self
            .stored_header(key, raw)
            .and_then(|h| self.block_in_index(txn, &h))
        {
            Ok(true) => e,
            Ok(false) => Error::Unauthentic {
                location: Location::Global(GlobalSequence(key)),
                detail: "the block names an erased entity whose stream index does not hold it \
                         there: its header was altered"
                    .into(),
            },
            Err(other) => other,
        }
    }

    /// `e` with the stream's name filled in when it is an [`Error::Erased`]
    /// of the block `raw` stored under `key` (its header, in the clear,
    /// names the stream).
    #[cold]
    pub(crate) fn name_erased(
        &self,
        txn: &super::kv::Txn<'_>,
        key: u64,
        raw: &[u8],
        e: Error,
    ) -> Error {
        match self.check_erased(txn, key, raw, e) {
            Error::Erased {
                stream: None,
                id,
                at,
            } => {
                let stream = self
                    .stored_header(key, raw)
                    .ok()
                    .and_then(|h| self.stream_by_tag(txn, h.stream_tag).ok())
                    .map(|info| info.name.to_string());
                Error::Erased { stream, id, at }
            }
            e => e,
        }
    }
}

impl super::View {
    /// [`Store::entity_erased`](super::Store::entity_erased).
    pub(crate) fn entity_erased(&self, tag: u32, id: u64) -> Result<bool> {
        self.store.entity_erased(tag, id)
    }

    /// One past the last event of the block stored under `key`, from its
    /// header (in the clear: an erased block's count is still known).
    pub(crate) fn block_end_at(&self, key: u64) -> Result<u64> {
        let raw = self
            .store
            .events
            .get(&self.pin.txn, &super::keys::event_key(key))
            .map_err(self.store.err("reading the event log"))?
            .ok_or_else(|| Error::Corruption {
                location: Location::Global(GlobalSequence(key)),
                detail: "the block vanished from the snapshot".into(),
            })?;
        Ok(self.store.stored_header(key, raw)?.end_global())
    }
}

impl super::Store {
    /// Refuses a write transaction of a handle whose view of the store's
    /// key vault is stale: the `crypt-vault` record `txn` reads is not the
    /// one the handle opened with (another process gave the store a vault,
    /// or changed it). One read of `meta` per write transaction.
    pub(crate) fn check_vault_record(&self, txn: &super::kv::Txn<'_>) -> Result<()> {
        // Only an encrypted LMDB store can have a vault (the PostgreSQL
        // engine refuses one).
        if self.keyring().is_none() || !matches!(self.engine, super::Engine::Lmdb { .. }) {
            return Ok(());
        }
        let err = super::storage_error("reading the key vault record", self.config().max_readers);
        let found = self.meta.get(txn, VAULT_RECORD).map_err(err)?;
        let same = match self.vault() {
            None => found.is_none(),
            Some(vault) => vault.record.lock().as_deref() == found,
        };
        if same {
            return Ok(());
        }
        let detail = match self.vault() {
            None => {
                "another process gave the store a key vault: reopen it with the vault \
                     (VarveConfig::key_vault)"
            }
            Some(_) => {
                "the store's key vault record changed since this handle opened it \
                        (another process gave the store its vault, or changed its master \
                        key): reopen the store"
            }
        };
        Err(vault_error(&self.path, detail))
    }
}

impl super::WriteTxn<'_> {
    /// [`Store::entity_erased`](super::Store::entity_erased).
    pub(crate) fn entity_erased(&self, tag: u32, id: u64) -> Result<bool> {
        self.store.entity_erased(tag, id)
    }

    /// Counts an erasure in the store's `meta` (`vault-erasures`, u64 LE):
    /// a commit of the store after the vault's, so every open reader of
    /// the store moves to a new snapshot.
    pub(crate) fn note_erasure(&mut self) -> Result<()> {
        let store = self.store;
        let err = super::storage_error("recording an erasure", store.config().max_readers);
        let count = store
            .meta
            .get(&self.txn, ERASURES_RECORD)
            .map_err(&err)?
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_le_bytes);
        store
            .meta
            .put(&mut self.txn, ERASURES_RECORD, &(count + 1).to_le_bytes())
            .map_err(&err)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn vault(dir: &Path) -> Vault {
        let (v, known) = Vault::open(
            dir,
            StoreId::from_bytes([7; 16]),
            Zeroizing::new([5; 32]),
            true,
            126,
        )
        .unwrap();
        assert!(!known);
        v.register().unwrap();
        v
    }

    fn plain() -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN + 40];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        b
    }

    #[test]
    fn an_entity_block_round_trips_until_its_key_is_erased() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let p = plain();
        let (tag, id) = block_entity(&p);
        let sealed = v.seal_block(3, tag, id, &p).unwrap();
        assert!(entity_sealed(&sealed));
        let mut out = PlainBuf::default();
        v.open_block(3, &sealed, &mut out).unwrap();
        assert_eq!(out.as_slice(), &p[..]);
        // Bound to its place.
        assert!(matches!(
            v.open_block(4, &sealed, &mut out),
            Err(Error::Unauthentic { .. })
        ));
        assert_eq!(v.erase(tag, id).unwrap(), Erasure::Erased);
        assert!(matches!(
            v.open_block(3, &sealed, &mut out),
            Err(Error::Erased {
                at: GlobalSequence(3),
                ..
            })
        ));
        assert!(matches!(
            v.erase(tag, id).unwrap(),
            Erasure::AlreadyErased { .. }
        ));
        assert_eq!(v.erase(tag, id.wrapping_add(1)).unwrap(), Erasure::NoKey);
        // An erased entity takes no new key.
        assert!(matches!(
            v.key_for_append(tag, id, 9),
            Err(Error::Erased { .. })
        ));
    }

    #[test]
    fn a_key_deleted_with_a_forged_tombstone_is_unauthentic_not_erased() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let p = plain();
        let (tag, id) = block_entity(&p);
        let sealed = v.seal_block(3, tag, id, &p).unwrap();
        // Someone with the vault file but not the master key deletes the
        // key and writes a tombstone of the old layout (a bare time).
        let k = entry_key(v.store_id, tag, id);
        let mut wtxn = v.write().unwrap();
        v.env.keys.delete(&mut wtxn, &k).unwrap();
        v.env
            .erased
            .put(&mut wtxn, &k, &7u64.to_le_bytes())
            .unwrap();
        wtxn.commit().unwrap();
        let mut out = PlainBuf::default();
        assert!(
            matches!(
                v.open_block(3, &sealed, &mut out),
                Err(Error::Unauthentic { .. })
            ),
            "a forged tombstone passed for an erasure"
        );
        // A real erasure's tombstone authenticates, bound to its entity.
        let other = v.seal_block(9, tag, id + 1, &p);
        assert!(other.is_ok());
        assert_eq!(v.erase(tag, id + 1).unwrap(), Erasure::Erased);
        let real = v
            .env
            .erased
            .get(&v.read().unwrap(), &entry_key(v.store_id, tag, id + 1))
            .unwrap()
            .unwrap()
            .to_vec();
        assert!(matches!(
            v.lookup(tag, id + 1).unwrap(),
            Found::Erased { .. }
        ));
        let mut wtxn = v.write().unwrap();
        v.env.erased.put(&mut wtxn, &k, &real).unwrap();
        wtxn.commit().unwrap();
        assert!(matches!(v.lookup(tag, id), Err(Error::Unauthentic { .. })));
    }

    #[test]
    fn the_vault_has_as_many_reader_slots_as_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = Vault::open(
            dir.path(),
            StoreId::from_bytes([7; 16]),
            Zeroizing::new([5; 32]),
            true,
            300,
        )
        .unwrap();
        // Every thread reading an entity's block holds a vault reader while
        // it looks the key up: as many as the store's readers at once.
        let held: Vec<_> = (0..250).map(|_| v.env.env.read_txn()).collect();
        assert!(held.iter().all(Result::is_ok), "250 readers of 300");
    }

    #[test]
    fn another_master_key_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(vault(dir.path()));
        let other = Vault::open(
            dir.path(),
            StoreId::from_bytes([7; 16]),
            Zeroizing::new([6; 32]),
            false,
            126,
        );
        assert!(matches!(other, Err(Error::EncryptionKeyMismatch { .. })));
    }

    #[test]
    fn an_entity_sealed_block_below_the_stores_since_is_unauthentic_never_opened_nor_erased() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = vault(dir.path());
        v.since = 5;
        let p = plain();
        let (tag, id) = block_entity(&p);
        let sealed = v.seal_block(5, tag, id, &p).unwrap();
        let Found::Key(key) = v.lookup(tag, id).unwrap() else {
            panic!("no key")
        };
        // A block at global 3 sealed with the entity's key (as a block
        // sealed before the store had its vault, its key id flipped, claims
        // to be): never opened, though the key would open it.
        let mut below = Vec::new();
        v.block_key(&key)
            .seal(3, &[9; NONCE_LEN], &p, &mut below)
            .unwrap();
        let mut out = PlainBuf::default();
        assert!(matches!(
            v.open_block(3, &below, &mut out),
            Err(Error::Unauthentic { .. })
        ));
        v.open_block(5, &sealed, &mut out).unwrap();
        assert_eq!(out.as_slice(), &p[..]);
        // Erased (or its key damaged): still damage below since, not erasure.
        assert_eq!(v.erase(tag, id).unwrap(), Erasure::Erased);
        assert!(matches!(
            v.open_block(3, &below, &mut out),
            Err(Error::Unauthentic { .. })
        ));
        assert!(matches!(
            v.open_block(5, &sealed, &mut out),
            Err(Error::Erased { .. })
        ));
    }

    #[test]
    fn the_since_record_authenticates_its_store_and_since_under_the_master_key() {
        let (master, other) = ([5u8; 32], [6u8; 32]);
        let id = StoreId::from_bytes([7; 16]);
        let record = since_record(&master, id, 42);
        assert_eq!(record.len(), VAULT_RECORD_V2_LEN);
        assert_eq!(read_since(&master, id, &record).unwrap(), 42);
        // Version 1 (no since): 0, under any key.
        assert_eq!(read_since(&other, id, &[VAULT_RECORD_V1]).unwrap(), 0);
        let unauthentic = |r: Result<u64>| matches!(r, Err(Error::Unauthentic { .. }));
        // Another master key, another store, a lowered since, a flipped tag.
        assert!(unauthentic(read_since(&other, id, &record)));
        assert!(unauthentic(read_since(
            &master,
            StoreId::from_bytes([8; 16]),
            &record
        )));
        let mut lowered = record.clone();
        lowered[1..9].copy_from_slice(&0u64.to_le_bytes());
        assert!(unauthentic(read_since(&master, id, &lowered)));
        let mut flipped = record.clone();
        flipped[20] ^= 1;
        assert!(unauthentic(read_since(&master, id, &flipped)));
        // Other shapes are damage.
        for bad in [&[][..], &[1, 0], &record[..40], &[3; 41]] {
            assert!(matches!(
                read_since(&master, id, bad),
                Err(Error::Corruption { .. })
            ));
        }
        // A master-key change re-authenticates the same since.
        let again = since_record(&other, id, read_since(&master, id, &record).unwrap());
        assert_eq!(read_since(&other, id, &again).unwrap(), 42);
    }
}
