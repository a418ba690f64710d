//! Changing the master key of a store with a key vault
//! ([`Varve::change_encryption_key`](crate::Varve::change_encryption_key)).
//!
//! Every entry of the store in the vault (its check key, each entity key,
//! each tombstone) is authenticated under the master key, so a change of it
//! re-wraps them all: the same key and erasure time, under the new master
//! key (only the nonce and the tag change; a key entry stays 72 bytes, a
//! tombstone 48). The vault and the store are two environments with commits
//! of their own, so the change runs in three durable steps, each one
//! commit:
//!
//! 1. **Stage** (a vault commit, inside the store's write transaction that
//!    records the new master key, before it commits): every entry of the
//!    store, re-wrapped under the new key, goes into the vault's `staged`
//!    database, keyed `store id (16) | kind (1) | tag | id`; the staged
//!    check key (kind 0) marks the change as under way.
//! 2. **Record** the new master key in the store (its commit, then a forced
//!    sync whatever the store's durability). The same transaction writes the
//!    store's `crypt-vault` record anew: a version-2 record's since stays,
//!    its tag is recomputed under the new master key ([`super::since_record`]);
//!    a version-1 record (no tag) is left as it is. The changing handle
//!    adopts the new record; other processes' handles refuse writes until
//!    reopened ([`super::super::Store::check_vault_record`]).
//! 3. **Swap** (a vault commit): the staged entries replace the store's
//!    entries, and the staged set goes.
//!
//! A crash leaves the vault with a staged set at most, which the next open
//! of the store settles (in [`Vault::open`]) with the one master key it has,
//! the one the store records: if it opens the staged check key, the store
//! committed step 2, so the swap is finished; if it opens the live check
//! key, the store did not, so the staged set is dropped. Either way the
//! store opens with exactly one key, old or new, and reads every event.
//!
//! While a staged set exists no entity key is drawn and no entity erased in
//! the store ([`Vault::current`]): a key or tombstone written under the old
//! master key then would be lost to the swap (an erased entity would come
//! back). Writers of this process wait (the vault's `writing` lock, held
//! from step 1 to step 3); those of other processes get
//! [`Error::KeyVault`] and retry. After the swap, a handle of another
//! process still holding the old master key gets [`Error::KeyVault`] on an
//! entry it cannot unwrap ("reopen with the new key"), never an erasure
//! nor [`Error::Unauthentic`].
//!
//! Both vault commits are single transactions, over entries read in
//! batches of [`BATCH`]: the vault's file grows by about the size of the
//! store's entries while they are staged, and once more when they are
//! swapped (the freed pages are reused after), within its 1 GiB map; a
//! vault too large for that fails the staging with [`Error::KeyVault`] (map
//! full), nothing changed.

use std::ops::Bound;

use heed::RwTxn;

use super::{
    crash_point, lmdb, read_since, since_record, vault_error, Db, Key32, Vault, TOMBSTONE_LEN,
    VAULT_RECORD, VAULT_RECORD_V1,
};
use crate::error::{Error, Location, Result};
use crate::storage::Store;

/// The kinds of staged entries (the byte after the store id).
const CHECK: u8 = 0;
const KEY: u8 = 1;
const TOMBSTONE: u8 = 2;
/// Entries read per batch (the vault's transactions hold every batch, the
/// process only one).
const BATCH: usize = 4096;

fn staged_key(store: &[u8], kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(store.len() + 1 + rest.len());
    k.extend_from_slice(store);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// The entity (tag, id) an entry's key names after the store id.
fn entity_of(rest: &[u8]) -> (u32, u64) {
    let tag = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes);
    let id = rest
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    (tag, id)
}

fn unauthentic(what: &str, rest: &[u8]) -> Error {
    let (tag, id) = entity_of(rest);
    Error::Unauthentic {
        location: Location::Record(format!(
            "the key vault's {what} of stream tag {tag} id {id}"
        )),
        detail: format!(
            "the {what} does not authenticate under the store's master key: the master key \
             was not changed (nothing was)"
        ),
    }
}

impl Vault {
    /// `Ok` if `m` is the store's master key as the vault holds it and no
    /// change of the master key is under way: the condition of writing an
    /// entry under `m`.
    pub(super) fn current(
        &self,
        txn: &heed::RoTxn<'_, heed::WithoutTls>,
        m: &[u8; 32],
    ) -> Result<()> {
        let err = lmdb(self.path(), "reading the key vault");
        let id = self.store_id.as_bytes();
        let marker = staged_key(id, CHECK, &[]);
        if self.env.staged.get(txn, &marker).map_err(&err)?.is_some() {
            return Err(vault_error(
                self.path(),
                format!(
                    "a change of the master key of store {} is under way, or was interrupted \
                     (reopening the store settles it): retry",
                    self.store_id
                ),
            ));
        }
        match self.env.stores.get(txn, id).map_err(&err)? {
            Some(raw) if self.unwrap(m, b"check", raw)?.is_none() => Err(vault_error(
                self.path(),
                format!(
                    "the master key of store {} was changed by another handle since this one \
                     was opened: reopen the store with the new key",
                    self.store_id
                ),
            )),
            // A store the vault does not know yet (a read-only open) has no
            // entry to be stale against.
            _ => Ok(()),
        }
    }

    /// Up to [`BATCH`] entries of `db` under `prefix`, after `after`.
    fn batch(
        &self,
        txn: &heed::RoTxn<'_, heed::WithoutTls>,
        db: Db,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let err = lmdb(self.path(), "reading the key vault");
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for item in db.range(txn, &(start, Bound::Unbounded)).map_err(&err)? {
            let (k, v) = item.map_err(&err)?;
            if !k.starts_with(prefix) || out.len() == BATCH {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The key entry `raw` of `entity`, re-wrapped from `old` to `new`
    /// (same key).
    fn rewrap_key(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        entity: &[u8],
        raw: &[u8],
    ) -> Result<Vec<u8>> {
        let key = self
            .unwrap(old, entity, raw)?
            .ok_or_else(|| unauthentic("key", entity))?;
        self.wrap(new, entity, &key)
    }

    /// The tombstone `raw` of `entity`, authenticated under `old`, sealed
    /// anew under `new` (same erasure time).
    fn reseal_tombstone(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        entity: &[u8],
        raw: &[u8],
    ) -> Result<Vec<u8>> {
        let at = self
            .open_tombstone(old, entity, raw)
            .ok_or_else(|| unauthentic("tombstone", entity))?;
        let out = self.tombstone(new, entity, at)?;
        debug_assert_eq!((out.len(), &out[..8]), (TOMBSTONE_LEN, &raw[..8]));
        Ok(out)
    }

    /// Step 1: stages every entry of this store re-wrapped under `new`, in
    /// one durable commit of the vault. `ours`: a staged set there is this
    /// change's own (its store transaction was retried), replaced; any
    /// other is [`Error::KeyVault`]. An entry that does not authenticate
    /// under the current master key stages nothing.
    fn stage(&self, new: &[u8; 32], ours: bool) -> Result<()> {
        let what = "staging the key vault's entries under the new master key";
        let err = lmdb(self.path(), what);
        let mut wtxn = self.write()?;
        if ours {
            self.drop_staged(&mut wtxn)?;
        }
        let old = self.master.read();
        self.current(&wtxn, &old)?;
        let id = *self.store_id.as_bytes();
        let check = self
            .env
            .stores
            .get(&wtxn, &id)
            .map_err(&err)?
            .map(<[u8]>::to_vec)
            .ok_or_else(|| vault_error(self.path(), "it holds no check key of the store"))?;
        let check = self
            .unwrap(&old, b"check", &check)?
            .ok_or(Error::EncryptionKeyMismatch {
                path: self.path().to_path_buf(),
            })?;
        let staged = self.wrap(new, b"check", &check)?;
        let put = |wtxn: &mut RwTxn<'_>, k: Vec<u8>, v: Vec<u8>| {
            self.env.staged.put(wtxn, &k, &v).map_err(&err)
        };
        put(&mut wtxn, staged_key(&id, CHECK, &[]), staged)?;
        for (db, kind) in [(self.env.keys, KEY), (self.env.erased, TOMBSTONE)] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let entries = self.batch(&wtxn, db, &id, after.as_deref())?;
                let Some((last, _)) = entries.last() else {
                    break;
                };
                after = Some(last.clone());
                for (k, raw) in entries {
                    let entity = &k[16..];
                    let v = match kind {
                        KEY => self.rewrap_key(&old, new, entity, &raw)?,
                        _ => self.reseal_tombstone(&old, new, entity, &raw)?,
                    };
                    put(&mut wtxn, staged_key(&id, kind, entity), v)?;
                }
            }
        }
        drop(old);
        self.commit(wtxn, what)
    }

    /// Deletes this store's staged set, in `wtxn`.
    fn drop_staged(&self, wtxn: &mut RwTxn<'_>) -> Result<()> {
        let err = lmdb(self.path(), "dropping a staged change of the master key");
        let id = *self.store_id.as_bytes();
        loop {
            let entries = self.batch(wtxn, self.env.staged, &id, None)?;
            if entries.is_empty() {
                return Ok(());
            }
            for (k, _) in entries {
                self.env.staged.delete(wtxn, &k).map_err(&err)?;
            }
        }
    }

    /// Step 3: the staged entries replace the store's, in `wtxn` (the
    /// staged check key, the change's marker, among them).
    fn swap_staged(&self, wtxn: &mut RwTxn<'_>) -> Result<()> {
        let err = lmdb(
            self.path(),
            "swapping in the entries under the new master key",
        );
        let id = *self.store_id.as_bytes();
        loop {
            let entries = self.batch(wtxn, self.env.staged, &id, None)?;
            if entries.is_empty() {
                return Ok(());
            }
            for (k, v) in entries {
                let (kind, rest) = (k[16], &k[17..]);
                let mut live = id.to_vec();
                live.extend_from_slice(rest);
                let db = match kind {
                    CHECK => self.env.stores,
                    KEY => self.env.keys,
                    _ => self.env.erased,
                };
                db.put(wtxn, &live, &v).map_err(&err)?;
                self.env.staged.delete(wtxn, &k).map_err(&err)?;
            }
        }
    }

    /// Step 3, committed: this process's lookups move to `new` with the
    /// entries.
    fn swap(&self, new: Key32) -> Result<()> {
        let mut wtxn = self.write()?;
        self.swap_staged(&mut wtxn)?;
        // Readers hold the master key (read) across their snapshot: none
        // sees the new entries with the old key, or the reverse.
        let mut master = self.master.write();
        self.commit(wtxn, "swapping in the entries under the new master key")?;
        *master = new;
        *self.next.lock() = None;
        Ok(())
    }

    /// At open: settles a change of the master key a crash interrupted,
    /// with the master key the store records (this vault's): finished if it
    /// opens the staged check key (the store committed the new key, so the
    /// staged set is whole and final); undone if it opens the live one and
    /// `undo` (a writable open, holding the store's writer lock: no change
    /// is between its staging and its store commit). A read-only open
    /// leaves a set it would undo as it is: the change may be under way,
    /// and the live entries are the ones the store's key opens.
    /// [`Error::EncryptionKeyMismatch`] if it opens neither.
    pub(super) fn settle_change(&self, undo: bool) -> Result<()> {
        let what = "settling an interrupted change of the master key";
        let err = lmdb(self.path(), what);
        let id = *self.store_id.as_bytes();
        let marker = staged_key(&id, CHECK, &[]);
        {
            let rtxn = self.read()?;
            if self.env.staged.get(&rtxn, &marker).map_err(&err)?.is_none() {
                return Ok(());
            }
        }
        let mut wtxn = self.write()?;
        let m = self.master.read();
        let staged = self.env.staged.get(&wtxn, &marker).map_err(&err)?;
        let live = self.env.stores.get(&wtxn, &id).map_err(&err)?;
        let opens = |raw: Option<&[u8]>| -> Result<bool> {
            Ok(match raw {
                Some(raw) => self.unwrap(&m, b"check", raw)?.is_some(),
                None => false,
            })
        };
        if staged.is_none() {
            // Another process settled it meanwhile.
            return Ok(());
        } else if opens(staged)? {
            self.swap_staged(&mut wtxn)?;
        } else if opens(live)? {
            if !undo {
                return Ok(());
            }
            self.drop_staged(&mut wtxn)?;
        } else {
            return Err(Error::EncryptionKeyMismatch {
                path: self.path().to_path_buf(),
            });
        }
        drop(m);
        self.commit(wtxn, what)
    }
}

/// [`Varve::change_encryption_key`](crate::Varve::change_encryption_key) of
/// a store with the key vault `vault`: the store's keys and the vault's
/// entries re-wrapped under `key` (see the module docs). Returns the new
/// master key, recorded in the store.
pub(crate) fn change_master_key(
    store: &Store,
    vault: &Vault,
    key: &crate::EncryptionKey,
) -> Result<Key32> {
    // Taken inside the store's write transaction (after the store's writer
    // lock: an append holds that lock when it draws a key, which takes this
    // one), held until the swap.
    let mut writing = None;
    let mut staged = false;
    // The `crypt-vault` record this handle expects, restored if the store's
    // transaction does not commit.
    let previous = vault.record.lock().clone();
    let written = store.write(|txn| {
        let master = txn.change_master_key(key)?;
        if writing.is_none() {
            writing = Some(vault.writing.lock());
        }
        // The since record is authenticated under the master key too: the
        // same since, under the new key, in the transaction that records
        // the new key (so every open finds the pair it wrote, crash or not).
        let err = super::super::storage_error("reading the key vault record", 0);
        let raw = store
            .meta
            .get(&txn.txn, VAULT_RECORD)
            .map_err(err)?
            .map(<[u8]>::to_vec);
        let mut record = None;
        if let Some(raw) = raw.filter(|r| r[..] != [VAULT_RECORD_V1]) {
            let since = read_since(&vault.master.read(), vault.store_id, &raw)?;
            let new = since_record(&master, vault.store_id, since);
            let put = store.meta.put(&mut txn.txn, VAULT_RECORD, &new);
            txn.lmdb("recording the key vault record", put)?;
            record = Some(new);
        }
        vault.stage(&master, staged)?;
        staged = true;
        crash_point("master-staged");
        // This handle's write transactions from the commit on find the new
        // record: it is adopted last, still under the store's writer lock,
        // so no other thread's write between the commit and the return is
        // refused as stale (restored below if the commit fails).
        if let Some(record) = record {
            vault.adopt_record(record);
        }
        Ok(master)
    });
    if written.is_err() {
        // The store kept its record (and its key).
        *vault.record.lock() = previous;
    }
    // A failure after the staging (the store's commit failed, or found its
    // file deleted) leaves the staged set as a crash would: the store may
    // hold either key, and only an open, with the key the store records,
    // can tell which. Until then this store's vault takes no new key or
    // tombstone (a typed "reopen"), and reads go on under the old key.
    let master = written?;
    if let Some(ring) = store.keyring() {
        ring.set_master(master.clone());
    }
    *vault.next.lock() = Some(master.clone());
    // The store's record must be durable before the vault's entries under
    // the old master key go, whatever the store's durability.
    store
        .env("changing the master key")?
        .force_sync()
        .map_err(super::super::storage_error("syncing the new master key", 0))?;
    crash_point("master-stored");
    vault.swap(master.clone())?;
    crash_point("master-swapped");
    drop(writing);
    Ok(master)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::path::Path;

    use zeroize::Zeroizing;

    use super::super::{entry_key, Found, StoreId, WRAPPED_LEN};
    use super::*;

    const OLD: [u8; 32] = [5; 32];
    const NEW: [u8; 32] = [6; 32];

    fn open(dir: &Path, id: u8, master: [u8; 32]) -> Result<Vault> {
        let (v, known) = Vault::open(
            dir,
            StoreId::from_bytes([id; 16]),
            Zeroizing::new(master),
            true,
            126,
        )?;
        if !known {
            v.register()?;
        }
        Ok(v)
    }

    fn is_key_vault<T>(r: Result<T>) -> bool {
        matches!(r, Err(Error::KeyVault { .. }))
    }

    /// What `v` holds of entities (3, 0..4): key or erasure time.
    fn entries(v: &Vault) -> Vec<(Option<[u8; 32]>, Option<u64>)> {
        (0..4)
            .map(|id| match v.lookup(3, id).unwrap() {
                Found::Key(key) => (Some(*key), None),
                Found::Erased { at_micros } => (None, Some(at_micros)),
                Found::Missing => panic!("entity {id} is missing"),
            })
            .collect()
    }

    /// Entities (3, 0..4): a drawn key, an erasure, a known key (8s) and a
    /// tombstone of a known time (77).
    fn fill(v: &Vault) {
        v.key_for_append(3, 0, 11).unwrap();
        v.key_for_append(3, 1, 12).unwrap();
        assert_eq!(v.erase(3, 1).unwrap(), crate::Erasure::Erased);
        let m = v.master.read().clone();
        let mut wtxn = v.write().unwrap();
        let k = entry_key(v.store_id, 3, 2);
        let wrapped = v.wrap(&m, &k[16..], &[8; 32]).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        v.env.keys.put(&mut wtxn, &k, &wrapped).unwrap();
        let k = entry_key(v.store_id, 3, 3);
        let stone = v.tombstone(&m, &k[16..], 77).unwrap();
        assert_eq!(stone.len(), TOMBSTONE_LEN);
        v.env.erased.put(&mut wtxn, &k, &stone).unwrap();
        wtxn.commit().unwrap();
    }

    fn raw(v: &Vault) -> Vec<(Vec<u8>, Vec<u8>)> {
        let rtxn = v.read().unwrap();
        let mut out = Vec::new();
        for db in [v.env.stores, v.env.keys, v.env.erased, v.env.staged] {
            for item in db.iter(&rtxn).unwrap() {
                let (k, val) = item.unwrap();
                out.push((k.to_vec(), val.to_vec()));
            }
        }
        out
    }

    #[test]
    fn every_entry_keeps_its_key_and_erasure_time_under_the_new_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), 7, OLD).unwrap();
        fill(&v);
        let before = entries(&v);
        assert_eq!(before[2], (Some([8; 32]), None));
        assert_eq!(before[3], (None, Some(77)));
        let old_raw = raw(&v);
        v.stage(&NEW, false).unwrap();
        v.swap(Zeroizing::new(NEW)).unwrap();
        assert_eq!(entries(&v), before);
        // Same entries, same lengths (a check key and entity keys of 72
        // bytes, tombstones of 48, the time in the clear the same): only
        // the nonce and the tag changed.
        let after = raw(&v);
        assert_eq!(after.len(), old_raw.len());
        for ((k0, v0), (k1, v1)) in old_raw.iter().zip(&after) {
            assert_eq!(k0, k1);
            assert_eq!(v0.len(), v1.len());
            assert!([WRAPPED_LEN, TOMBSTONE_LEN].contains(&v1.len()));
            assert_ne!(v0, v1);
            if v1.len() == TOMBSTONE_LEN {
                assert_eq!(v0[..8], v1[..8]);
            }
        }
        // Nothing staged is left, and the old key opens nothing.
        let staged = v.env.staged.len(&v.read().unwrap()).unwrap();
        assert_eq!(staged, 0);
        drop(v);
        assert!(matches!(
            open(dir.path(), 7, OLD),
            Err(Error::EncryptionKeyMismatch { .. })
        ));
        let v = open(dir.path(), 7, NEW).unwrap();
        assert_eq!(entries(&v), before);
    }

    #[test]
    fn another_handle_writes_nothing_during_a_change_and_is_told_to_reopen_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), 7, OLD).unwrap();
        fill(&v);
        // Another process's handle of the same store (a vault of its own,
        // the old master key).
        let other = Vault {
            env: v.env.clone(),
            store_id: v.store_id,
            master: parking_lot::RwLock::new(Zeroizing::new(OLD)),
            writing: parking_lot::Mutex::new(()),
            next: parking_lot::Mutex::new(None),
            since: 0,
            record: parking_lot::Mutex::new(None),
        };
        v.stage(&NEW, false).unwrap();
        // While staged: reads go on, a new key or an erasure is refused
        // (either would be lost to the swap: an erased entity back).
        assert!(matches!(other.lookup(3, 0).unwrap(), Found::Key(_)));
        assert!(is_key_vault(other.key_for_append(3, 9, 30)));
        assert!(is_key_vault(other.erase(3, 0)));
        // A second change, by anyone, is refused too.
        assert!(is_key_vault(other.stage(&[9; 32], false)));
        v.swap(Zeroizing::new(NEW)).unwrap();
        // After: the old master key unwraps nothing, which is a typed
        // "reopen", never Unauthentic, never an erasure.
        for id in 0..4 {
            assert!(is_key_vault(other.lookup(3, id)), "entity {id}");
        }
        assert!(is_key_vault(other.key_for_append(3, 9, 30)));
        assert!(is_key_vault(other.erase(3, 0)));
        assert!(matches!(v.lookup(3, 0).unwrap(), Found::Key(_)));
        assert!(matches!(v.lookup(3, 1).unwrap(), Found::Erased { .. }));
        v.key_for_append(3, 9, 30).unwrap();
    }

    #[test]
    fn an_interrupted_change_settles_by_the_master_key_the_store_records() {
        for forward in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let v = open(dir.path(), 7, OLD).unwrap();
            // Another store in the same vault, with a change of its own
            // staged: settling this store's leaves it be.
            let w = open(dir.path(), 8, [1; 32]).unwrap();
            w.key_for_append(3, 0, 1).unwrap();
            fill(&v);
            let before = entries(&v);
            v.stage(&NEW, false).unwrap();
            w.stage(&[2; 32], false).unwrap();
            let w_raw = raw(&w);
            drop(v);
            // A key that is neither: refused, and the staged set kept.
            assert!(matches!(
                open(dir.path(), 7, [9; 32]),
                Err(Error::EncryptionKeyMismatch { .. })
            ));
            let key = if forward { NEW } else { OLD };
            if !forward {
                // A read-only open does not undo a change (it may be between
                // its staging and its store commit): it reads the live
                // entries, and the change stays staged.
                let (ro, _) = Vault::open(
                    dir.path(),
                    StoreId::from_bytes([7; 16]),
                    Zeroizing::new(OLD),
                    false,
                    126,
                )
                .unwrap();
                assert_eq!(entries(&ro), before);
                let marker = staged_key(&[7; 16], CHECK, &[]);
                assert!(ro
                    .env
                    .staged
                    .get(&ro.read().unwrap(), &marker)
                    .unwrap()
                    .is_some());
            }
            let v = open(dir.path(), 7, key).unwrap();
            assert_eq!(entries(&v), before);
            let other = if forward { OLD } else { NEW };
            assert!(matches!(
                open(dir.path(), 7, other),
                Err(Error::EncryptionKeyMismatch { .. })
            ));
            // Settled: nothing of this store staged, writes go on.
            v.key_for_append(3, 9, 30).unwrap();
            assert_eq!(v.erase(3, 0).unwrap(), crate::Erasure::Erased);
            let mine = |r: Vec<(Vec<u8>, Vec<u8>)>| {
                r.into_iter()
                    .filter(|(k, _)| k.starts_with(&[8; 16]))
                    .collect::<Vec<_>>()
            };
            assert_eq!(mine(raw(&w)), mine(w_raw));
        }
    }

    #[test]
    fn the_changing_process_reads_on_when_another_open_finishes_its_swap() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), 7, OLD).unwrap();
        fill(&v);
        let before = entries(&v);
        // Step 1, then step 2 (the store records the new key; this process
        // learns it), then another process opens the store with the new key
        // before this one swaps: its open finishes the swap.
        v.stage(&NEW, false).unwrap();
        *v.next.lock() = Some(Zeroizing::new(NEW));
        let (other, known) = Vault::open(
            dir.path(),
            StoreId::from_bytes([7; 16]),
            Zeroizing::new(NEW),
            true,
            126,
        )
        .unwrap();
        assert!(known);
        assert_eq!(entries(&other), before);
        // This process still reads (its master key is the old one until
        // its own swap), and its swap, with nothing left staged, finishes.
        assert_eq!(entries(&v), before);
        v.swap(Zeroizing::new(NEW)).unwrap();
        assert_eq!(entries(&v), before);
        v.key_for_append(3, 9, 30).unwrap();
        assert!(matches!(other.lookup(3, 9).unwrap(), Found::Key(_)));
    }
}
