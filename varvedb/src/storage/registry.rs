//! One `Store` per data file per process.
//!
//! LMDB forbids opening the same environment twice in one process (the second
//! open would break its locking). Every `Varve::new` of a directory whose data
//! file is already open returns a handle to the same store instead.
//!
//! Stores are keyed by their data file's identity (device and inode), not by
//! path: a directory deleted, moved or replaced while its store is open no
//! longer names that store, and a path that now holds another data file (or
//! none) must not be answered with the old one, whose appends would be lost.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};

use super::identity::FileKey;
use super::Store;

static OPEN: Mutex<Option<HashMap<FileKey, Weak<Store>>>> = Mutex::new(None);

/// The registry, locked for one open: lookups and the open itself happen
/// under the lock, so two threads never open the same store twice.
pub(super) struct Registry {
    guard: MutexGuard<'static, Option<HashMap<FileKey, Weak<Store>>>>,
}

pub(super) fn lock() -> Registry {
    let mut guard = OPEN.lock();
    guard
        .get_or_insert_with(HashMap::new)
        .retain(|_, weak| weak.strong_count() > 0);
    Registry { guard }
}

impl Registry {
    fn map(&mut self) -> &mut HashMap<FileKey, Weak<Store>> {
        self.guard.get_or_insert_with(HashMap::new)
    }

    /// The live store whose data file is `key`.
    pub(super) fn get(&mut self, key: &FileKey) -> Option<Arc<Store>> {
        self.map().get(key).and_then(Weak::upgrade)
    }

    /// Whether a live store was opened at the directory `canonical`.
    pub(super) fn any_at(&mut self, canonical: &Path) -> bool {
        self.map()
            .values()
            .filter_map(Weak::upgrade)
            .any(|store| store.path() == canonical)
    }

    pub(super) fn insert(&mut self, store: &Arc<Store>) {
        if let Some(key) = store.file_key() {
            self.map().insert(key.clone(), Arc::downgrade(store));
        }
    }
}
