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
//! keys:   store id (16) | tag (u32 BE) | id (u64 BE) -> first (u64 LE) | wrapped entity key (72)
//! erased: store id (16) | tag (u32 BE) | id (u64 BE) -> erased at (u64 LE, micros) | first (u64 LE) | nonce (24) | tag (16)
//! ```
//!
//! A tombstone is authenticated under the master key too (an empty message
//! with the erasure time, the entity and its first as associated data): a
//! key deleted by anyone without the master key is missing, never "erased".
//!
//! A wrapped key is `nonce (24) | sealed key (32) | tag (16)` under the
//! store's master key, with the store id and the entity (or `check`) as
//! associated data: a vault opened with the wrong master key fails on the
//! store's check key, a typed error at open. The store records that it uses
//! a vault (its `meta` record `crypt-vault`), so opening it without one is a
//! typed error at open too, not at the first read.
//!
//! **First.** An entity's entry (key, then tombstone) records, authenticated
//! (in the associated data), the first global sequence a block sealed with
//! its key may sit at: the global of the append that drew the key. A block
//! of an entity stored below its first was sealed before the entity had a
//! key, with a store data key, so one whose key id says
//! [`ENTITY_KEY_ID`] had it altered: [`Error::Unauthentic`], never opened
//! and never [`Error::Erased`] (an erasure leaves such blocks readable).
//! The bound holds because a key commits to the vault before its block
//! commits to the store, every append of a store with a vault is sealed
//! with its entity's key, and every global the writer appends at is past
//! every block sealed before the store had its vault. An append below the
//! recorded first (the append that drew the key did not commit, and a later
//! transaction reused its globals; or the store was restored from an older
//! backup) lowers it, in the vault, before its block commits.
//!
//! **Layouts.** Entries of vault layout 1 (72-byte keys, 48-byte tombstones,
//! associated data labelled `varvedb vault key 1`) carry no first: they
//! read as first 0 (the stream index check alone, as before), and an
//! erasure of such a key writes a tombstone of first 0. Layout 2 entries
//! (80-byte keys, 56-byte tombstones) are labelled `varvedb vault key 2`,
//! so neither layout's entry passes for the other's. The check key keeps
//! layout 1.
//!
//! A block sealed with an entity key has the layout of any encrypted block,
//! with the key id [`ENTITY_KEY_ID`]; its associated data is that of a
//! store-keyed block under another label. The entity is the one its header
//! (in the clear) names.
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
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};
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
const VAULT_RECORD_VERSION: u8 = 1;
/// The store's `meta` record counting erasures (see
/// [`super::WriteTxn::note_erasure`]).
const ERASURES_RECORD: &[u8] = b"vault-erasures";
/// A wrapped key: the check key, and an entity key of vault layout 1.
const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;
/// An entity key of vault layout 2: its first, then the wrapped key.
const KEY_ENTRY_LEN: usize = 8 + WRAPPED_LEN;
/// A tombstone of vault layout 1: no first.
const TOMBSTONE_V1_LEN: usize = 8 + NONCE_LEN + 16;
/// A tombstone of vault layout 2: the erasure time, the first.
const TOMBSTONE_LEN: usize = 8 + 8 + NONCE_LEN + 16;
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

/// An entity's key as the vault holds it. `first`: the first global
/// sequence a block sealed with the key may sit at (0 for an entry of vault
/// layout 1, which recorded none).
pub(crate) enum Found {
    Key { key: Key32, first: u64 },
    Erased { at_micros: u64, first: u64 },
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
fn open_env(path: &Path, create: bool, max_readers: u32) -> Result<Arc<VaultEnv>> {
    if !create && !path.join(super::identity::DATA_FILE).is_file() {
        return Err(vault_error(path, "no key vault here"));
    }
    std::fs::create_dir_all(path).map_err(|e| vault_error(path, e.to_string()))?;
    let canonical = path
        .canonicalize()
        .map_err(|e| vault_error(path, e.to_string()))?;
    let mut open = OPEN.lock();
    let open = open.get_or_insert_with(HashMap::new);
    if let Some(env) = open.get(&canonical).and_then(Weak::upgrade) {
        return Ok(env);
    }
    // LMDB reads pages through the map: a page past the end of a truncated
    // file would be a SIGBUS, not an error. The store's own check (plain
    // reads of the meta pages and the free list) runs before mapping.
    super::identity::check_data_file(&canonical)?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(VAULT_MAP_SIZE)
        .max_dbs(4)
        .max_readers(max_readers.max(126));
    // SAFETY: mapping a file is sound only while nothing truncates or
    // rewrites it underneath us: the directory is the application's key
    // vault, used only through LMDB (whose lock file coordinates processes),
    // and the registry above (whose lock we hold) opens it once per process.
    let env = unsafe { options.open(&canonical) }.map_err(lmdb(path, "opening the key vault"))?;
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
    let (stores, keys, erased) = created
        .map_err(lmdb(path, "opening the key vault"))?
        .unwrap_commit();
    let file = std::fs::File::open(canonical.join(super::identity::DATA_FILE)).ok();
    let env = Arc::new(VaultEnv {
        path: path.to_path_buf(),
        env,
        file,
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

/// The associated data of a layout-1 entry (the check key, and entries
/// written before entities' firsts were recorded).
fn wrap_ad(store_id: StoreId, what: &[u8]) -> Vec<u8> {
    let mut ad = b"varvedb vault key 1\0".to_vec();
    ad.extend_from_slice(store_id.as_bytes());
    ad.extend_from_slice(what);
    ad
}

/// The associated data of a layout-2 entry: `what` (the entity, or
/// `erased` and the entity), then its first.
fn entry_ad(store_id: StoreId, what: &[u8], first: u64) -> Vec<u8> {
    let mut ad = b"varvedb vault key 2\0".to_vec();
    ad.extend_from_slice(store_id.as_bytes());
    ad.extend_from_slice(what);
    ad.extend_from_slice(&first.to_le_bytes());
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

    /// `key` wrapped under the master key with `ad` as associated data:
    /// `nonce | sealed key | tag`.
    fn wrap_with(&self, ad: &[u8], key: &[u8; 32]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = random(self.path())?;
        let mut body = Zeroizing::new(*key);
        let tag = cipher(&self.master)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), ad, &mut *body)
            .map_err(|_| vault_error(self.path(), "sealing a key failed"))?;
        let mut out = Vec::with_capacity(KEY_ENTRY_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&*body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The store's check key, wrapped (layout 1).
    fn wrap(&self, what: &[u8], key: &[u8; 32]) -> Result<Vec<u8>> {
        self.wrap_with(&wrap_ad(self.store_id, what), key)
    }

    /// The key entry of `entity` (layout 2): `first`, then `key` wrapped
    /// with the entity and `first` as associated data.
    fn wrap_entity(&self, entity: &[u8], key: &[u8; 32], first: u64) -> Result<Vec<u8>> {
        let mut out = first.to_le_bytes().to_vec();
        out.extend_from_slice(&self.wrap_with(&entry_ad(self.store_id, entity, first), key)?);
        Ok(out)
    }

    /// A tombstone of `entity` erased now, whose key sealed blocks from
    /// global `first` on (layout 2): the time, the first, then a seal of
    /// nothing with the entity, the time and the first as associated data.
    fn tombstone(&self, entity: &[u8], first: u64) -> Result<Vec<u8>> {
        let at = now_micros().to_le_bytes();
        let nonce: [u8; NONCE_LEN] = random(self.path())?;
        let tag = cipher(&self.master)
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &tombstone_ad(self.store_id, entity, &at, first),
                &mut [],
            )
            .map_err(|_| vault_error(self.path(), "sealing a tombstone failed"))?;
        let mut out = Vec::with_capacity(TOMBSTONE_LEN);
        out.extend_from_slice(&at);
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The erasure time and the first of the tombstone `raw` of `entity`
    /// (first 0 for a layout-1 tombstone); `None` if it does not
    /// authenticate under the master key.
    fn open_tombstone(&self, entity: &[u8], raw: &[u8]) -> Option<(u64, u64)> {
        let (at, first, nonce, tag, ad) = match raw.len() {
            TOMBSTONE_LEN => {
                let (at, rest) = raw.split_at(8);
                let (first, rest) = rest.split_at(8);
                let first = u64::from_le_bytes(first.try_into().ok()?);
                let (nonce, tag) = rest.split_at(NONCE_LEN);
                let ad = tombstone_ad(self.store_id, entity, at, first);
                (at, first, nonce, tag, ad)
            }
            TOMBSTONE_V1_LEN => {
                let (at, rest) = raw.split_at(8);
                let (nonce, tag) = rest.split_at(NONCE_LEN);
                let mut ad = wrap_ad(self.store_id, b"erased");
                ad.extend_from_slice(entity);
                ad.extend_from_slice(at);
                (at, 0, nonce, tag, ad)
            }
            _ => return None,
        };
        cipher(&self.master)
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &ad,
                &mut [],
                Tag::from_slice(tag),
            )
            .ok()?;
        Some((u64::from_le_bytes(at.try_into().ok()?), first))
    }

    /// The key wrapped in `raw` (`nonce | sealed key | tag`) with `ad` as
    /// associated data; `None`: the master key does not open it.
    fn unwrap_with(&self, ad: &[u8], raw: &[u8]) -> Result<Option<Key32>> {
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
            ad,
            &mut *key,
            Tag::from_slice(&raw[NONCE_LEN + 32..]),
        );
        Ok(opened.ok().map(|()| key))
    }

    /// The store's check key in `raw`; `Ok(None)`: the master key does not
    /// open it.
    fn unwrap(&self, what: &[u8], raw: &[u8]) -> Result<Option<Key32>> {
        self.unwrap_with(&wrap_ad(self.store_id, what), raw)
    }

    /// The key of `entity` and its first in the entry `raw`, of either
    /// layout (first 0 for layout 1); `Ok(None)`: the master key does not
    /// open it.
    fn unwrap_entity(&self, entity: &[u8], raw: &[u8]) -> Result<Option<(Key32, u64)>> {
        if raw.len() == KEY_ENTRY_LEN {
            let (first, wrapped) = raw.split_at(8);
            let first = u64::from_le_bytes(first.try_into().expect("8 bytes"));
            let ad = entry_ad(self.store_id, entity, first);
            return Ok(self.unwrap_with(&ad, wrapped)?.map(|k| (k, first)));
        }
        Ok(self.unwrap(entity, raw)?.map(|k| (k, 0)))
    }

    /// Opens the vault at `path` for the store `store_id` with its master
    /// key: checks (or, with `register`, records) the store's check key.
    /// Returns the vault and whether the store was known to it.
    fn open(
        path: &Path,
        store_id: StoreId,
        master: Key32,
        create: bool,
        max_readers: u32,
    ) -> Result<(Vault, bool)> {
        let env = open_env(path, create, max_readers)?;
        let vault = Vault {
            env,
            store_id,
            master,
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
            return match self.unwrap_entity(&k[16..], raw)? {
                Some((key, first)) => Ok(Found::Key { key, first }),
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
                Some((at_micros, first)) => Ok(Found::Erased { at_micros, first }),
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

    /// The key to seal an append of `(tag, id)` at global `at` with: the
    /// entity's, drawn and committed (durably) to the vault, with `at` as
    /// its first, on its first append. [`Error::Erased`] for an erased
    /// entity (`at`: the append's first global sequence).
    pub(crate) fn key_for_append(&self, tag: u32, id: u64, at: u64) -> Result<Key32> {
        let erased = || Error::Erased {
            stream: None,
            id: StreamId(id),
            at: GlobalSequence(at),
        };
        match self.lookup(tag, id)? {
            Found::Key { key, first } if first <= at => return Ok(key),
            Found::Key { .. } | Found::Missing => {}
            Found::Erased { .. } => return Err(erased()),
        }
        // The store's writer lock is held (an append is in its write
        // transaction), so no other writer of this store draws a key for
        // the entity meanwhile; looking again inside the vault's own write
        // transaction covers any other writer of the vault.
        let mut wtxn = self.write()?;
        let key = match self.find(&wtxn, tag, id)? {
            Found::Key { key, first } if first <= at => return Ok(key),
            // Its first came from an append whose store transaction did not
            // commit (a later one reused its globals), or from this store's
            // later history before it was restored from an older backup:
            // this append, committed to the vault before its block, is
            // where the key's blocks begin now. Every global the writer
            // appends at is past every block sealed before the store had
            // its vault, so the lower first still excludes them.
            Found::Key { key, .. } => key,
            Found::Erased { .. } => return Err(erased()),
            Found::Missing => Zeroizing::new(random::<32>(self.path())?),
        };
        let k = entry_key(self.store_id, tag, id);
        let wrapped = self.wrap_entity(&k[16..], &key, at)?;
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
        // The tombstone keeps the key's first.
        let first = match self.find(&wtxn, tag, id) {
            Ok(Found::Key { first, .. }) => first,
            // A key that no longer authenticates is erased all the same; its
            // first is not known (0: the stream index check alone).
            Err(Error::Unauthentic { .. }) => 0,
            Ok(Found::Erased { at_micros, .. }) => {
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
            .put(&mut wtxn, &k, &self.tombstone(&k[16..], first)?)
            .map_err(&err)?;
        self.commit(wtxn, "erasing an entity key")?;
        crash_point("after-erase");
        Ok(Erasure::Erased)
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
    /// erased; [`Error::Unauthentic`] if it sits below its entity key's
    /// first (see the module's "First").
    pub(crate) fn open_block(&self, key: u64, raw: &[u8], out: &mut PlainBuf) -> Result<()> {
        check_sealed_len(key, raw)?;
        let (tag, id) = block_entity(raw);
        let entity_key = match self.lookup(tag, id)? {
            Found::Key { first, .. } | Found::Erased { first, .. } if key < first => {
                return Err(Error::Unauthentic {
                    location: Location::Global(GlobalSequence(key)),
                    detail: format!(
                        "the block says it is sealed with the key of stream tag {tag} id \
                         {id}, which seals blocks from global sequence {first} on: it was \
                         sealed before the entity had a key, and its key id was altered"
                    ),
                })
            }
            Found::Key { key: k, .. } => k,
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

/// The associated data of a layout-2 tombstone of `entity`.
fn tombstone_ad(store_id: StoreId, entity: &[u8], at: &[u8], first: u64) -> Vec<u8> {
    let mut what = b"erased".to_vec();
    what.extend_from_slice(entity);
    what.extend_from_slice(at);
    entry_ad(store_id, &what, first)
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
/// opened); `writable`: a read-write open, which records a vault the store
/// did not have yet (returned as `true`: the caller writes the store's
/// record in its open transaction).
pub(crate) fn settle_at_open(
    path: &Path,
    recorded: Option<&[u8]>,
    config: &crate::config::VarveConfig,
    encrypted: bool,
    store_id: StoreId,
    writable: bool,
    master: impl FnOnce() -> Result<Key32>,
) -> Result<(Option<Vault>, bool)> {
    if let Some(r) = recorded {
        if r.first() != Some(&VAULT_RECORD_VERSION) {
            return Err(Error::Corruption {
                location: Location::Record("the store's key vault record".into()),
                detail: format!("unknown record of {} bytes", r.len()),
            });
        }
    }
    let Some(vault_path) = config.key_vault.as_deref() else {
        return match recorded {
            None => Ok((None, false)),
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
    let (vault, known) = Vault::open(
        vault_path,
        store_id,
        master()?,
        writable,
        config.max_readers,
    )?;
    match (known, recorded.is_some()) {
        (true, _) => Ok((Some(vault), writable && recorded.is_none())),
        (false, true) => Err(vault_error(
            vault_path,
            format!(
                "the vault holds no keys of the store at {} (store id {store_id}): it is \
                 another store's vault, or one older than this store's",
                path.display()
            ),
        )),
        (false, false) if writable => {
            // The vault knows the store before the store names the vault.
            vault.register()?;
            Ok((Some(vault), true))
        }
        (false, false) => Ok((Some(vault), false)),
    }
}

/// The store's record naming a vault.
pub(crate) fn record() -> [u8; 1] {
    [VAULT_RECORD_VERSION]
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

    /// Replaces the raw entry of `k` in `db` with what `f` makes of it.
    fn alter(v: &Vault, db: Db, k: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
        let mut raw = db.get(&v.read().unwrap(), k).unwrap().unwrap().to_vec();
        f(&mut raw);
        let mut wtxn = v.write().unwrap();
        db.put(&mut wtxn, k, &raw).unwrap();
        wtxn.commit().unwrap();
    }

    fn is_unauthentic<T>(r: Result<T>) -> bool {
        matches!(r, Err(Error::Unauthentic { .. }))
    }

    #[test]
    fn a_block_below_its_entity_keys_first_is_unauthentic_never_opened_nor_erased() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let p = plain();
        let (tag, id) = block_entity(&p);
        // The key is drawn by the append at global 5: its first.
        let sealed = v.seal_block(5, tag, id, &p).unwrap();
        let Found::Key { key, first } = v.lookup(tag, id).unwrap() else {
            panic!("no key")
        };
        assert_eq!(first, 5);
        // A block at global 3 sealed with that key (as a block sealed
        // before the key existed, its key id flipped, would claim to be):
        // never opened.
        let mut below = Vec::new();
        v.block_key(&key)
            .seal(3, &[9; NONCE_LEN], &p, &mut below)
            .unwrap();
        let mut out = PlainBuf::default();
        assert!(is_unauthentic(v.open_block(3, &below, &mut out)));
        v.open_block(5, &sealed, &mut out).unwrap();
        // Erased: the block below its first is still damage, not erasure.
        assert_eq!(v.erase(tag, id).unwrap(), Erasure::Erased);
        assert!(matches!(
            v.lookup(tag, id).unwrap(),
            Found::Erased { first: 5, .. }
        ));
        assert!(is_unauthentic(v.open_block(3, &below, &mut out)));
        assert!(matches!(
            v.open_block(5, &sealed, &mut out),
            Err(Error::Erased { .. })
        ));
    }

    #[test]
    fn an_append_below_the_recorded_first_lowers_it_and_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let p = plain();
        let (tag, id) = block_entity(&p);
        // The append at 9 drew the key but its store transaction did not
        // commit; a later transaction appends the entity at 4.
        let drawn = v.key_for_append(tag, id, 9).unwrap();
        let sealed = v.seal_block(4, tag, id, &p).unwrap();
        let Found::Key { key, first } = v.lookup(tag, id).unwrap() else {
            panic!("no key")
        };
        assert_eq!((first, &*key), (4, &*drawn));
        let mut out = PlainBuf::default();
        v.open_block(4, &sealed, &mut out).unwrap();
        assert_eq!(out.as_slice(), &p[..]);
        // A later append leaves it where it is.
        v.seal_block(12, tag, id, &p).unwrap();
        assert!(matches!(
            v.lookup(tag, id).unwrap(),
            Found::Key { first: 4, .. }
        ));
    }

    #[test]
    fn an_altered_first_in_a_key_or_a_tombstone_is_unauthentic() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let (tag, id) = (3, 40);
        v.key_for_append(tag, id, 7).unwrap();
        v.key_for_append(tag, id + 1, 8).unwrap();
        let k = entry_key(v.store_id, tag, id);
        // A live key whose first is lowered (to let a flipped block below
        // it open), or stripped to pass as a layout-1 entry (first 0).
        alter(&v, v.env.keys, &k, |raw| {
            raw[..8].copy_from_slice(&0u64.to_le_bytes())
        });
        assert!(is_unauthentic(v.lookup(tag, id)));
        let k1 = entry_key(v.store_id, tag, id + 1);
        alter(&v, v.env.keys, &k1, |raw| drop(raw.drain(..8)));
        assert!(is_unauthentic(v.lookup(tag, id + 1)));
        // A tombstone likewise: its first lowered, or stripped.
        let (tag, id) = (4, 50);
        v.key_for_append(tag, id, 7).unwrap();
        v.key_for_append(tag, id + 1, 7).unwrap();
        assert_eq!(v.erase(tag, id).unwrap(), Erasure::Erased);
        assert_eq!(v.erase(tag, id + 1).unwrap(), Erasure::Erased);
        let k = entry_key(v.store_id, tag, id);
        alter(&v, v.env.erased, &k, |raw| {
            raw[8..16].copy_from_slice(&0u64.to_le_bytes())
        });
        assert!(is_unauthentic(v.lookup(tag, id)));
        let k1 = entry_key(v.store_id, tag, id + 1);
        alter(&v, v.env.erased, &k1, |raw| drop(raw.drain(8..16)));
        assert!(is_unauthentic(v.lookup(tag, id + 1)));
    }

    /// A tombstone as vault layout 1 wrote it (no first).
    fn tombstone_v1(v: &Vault, entity: &[u8], at: u64) -> Vec<u8> {
        let at = at.to_le_bytes();
        let nonce = [3u8; NONCE_LEN];
        let mut ad = wrap_ad(v.store_id, b"erased");
        ad.extend_from_slice(entity);
        ad.extend_from_slice(&at);
        let tag = cipher(&v.master)
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut [])
            .unwrap();
        [&at[..], &nonce, &tag].concat()
    }

    #[test]
    fn entries_of_vault_layout_1_still_read_with_first_0() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let p = plain();
        let (tag, id) = block_entity(&p);
        // A key as layout 1 wrapped it (the check key's wrapping, with the
        // entity as associated data), and a layout-1 tombstone.
        let key = Zeroizing::new([8u8; 32]);
        let k = entry_key(v.store_id, tag, id);
        let erased = entry_key(v.store_id, tag, id + 1);
        let mut wtxn = v.write().unwrap();
        let old = v.wrap(&k[16..], &key).unwrap();
        assert_eq!(old.len(), WRAPPED_LEN);
        v.env.keys.put(&mut wtxn, &k, &old).unwrap();
        let stone = tombstone_v1(&v, &erased[16..], 77);
        v.env.erased.put(&mut wtxn, &erased, &stone).unwrap();
        wtxn.commit().unwrap();

        assert!(matches!(
            v.lookup(tag, id).unwrap(),
            Found::Key { first: 0, .. }
        ));
        assert!(matches!(
            v.lookup(tag, id + 1).unwrap(),
            Found::Erased {
                at_micros: 77,
                first: 0
            }
        ));
        // Blocks sealed with it (anywhere) open, and later appends use it
        // as it is (its first is not known, so it is not guessed).
        let mut sealed = Vec::new();
        v.block_key(&key)
            .seal(2, &[1; NONCE_LEN], &p, &mut sealed)
            .unwrap();
        let mut out = PlainBuf::default();
        v.open_block(2, &sealed, &mut out).unwrap();
        let later = v.seal_block(30, tag, id, &p).unwrap();
        v.open_block(30, &later, &mut out).unwrap();
        assert_eq!(
            v.env.keys.get(&v.read().unwrap(), &k).unwrap(),
            Some(&old[..])
        );
        // Its erasure writes a layout-2 tombstone of first 0.
        assert_eq!(v.erase(tag, id).unwrap(), Erasure::Erased);
        assert!(matches!(
            v.lookup(tag, id).unwrap(),
            Found::Erased { first: 0, .. }
        ));
        assert!(matches!(
            v.open_block(2, &sealed, &mut out),
            Err(Error::Erased { .. })
        ));
        assert!(matches!(
            v.erase(tag, id + 1).unwrap(),
            Erasure::AlreadyErased {
                erased_at_micros: 77
            }
        ));
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
}
