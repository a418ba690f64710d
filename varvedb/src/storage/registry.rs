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
//!
//! Invariant: an open never takes a strong reference to a store of another
//! data file, even for a moment. The store (and its LMDB environment) must
//! close on the thread that drops its last handle, as that drop returns: a
//! caller may then open the files with another tool (or `heed` directly). A
//! passing upgrade on a thread opening some other store would make that
//! thread the last owner, closing the environment a moment later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};

use super::identity::FileKey;
use super::Store;

/// A live store: the directory it was opened at, and the store.
struct Entry {
    canonical: PathBuf,
    store: Weak<Store>,
}

type Map = HashMap<FileKey, Entry>;

static OPEN: Mutex<Option<Map>> = Mutex::new(None);

/// The registry, locked for one open: lookups and the open itself happen
/// under the lock, so two threads never open the same store twice.
pub(super) struct Registry {
    guard: MutexGuard<'static, Option<Map>>,
}

pub(super) fn lock() -> Registry {
    let mut guard = OPEN.lock();
    guard
        .get_or_insert_with(HashMap::new)
        .retain(|_, entry| entry.store.strong_count() > 0);
    Registry { guard }
}

impl Registry {
    fn map(&mut self) -> &mut Map {
        self.guard.get_or_insert_with(HashMap::new)
    }

    /// The live store whose data file is `key`.
    pub(super) fn get(&mut self, key: &FileKey) -> Option<Arc<Store>> {
        self.map().get(key).and_then(|entry| entry.store.upgrade())
    }

    /// Whether a live store was opened at the directory `canonical`.
    pub(super) fn any_at(&mut self, canonical: &Path) -> bool {
        // Counted, not upgraded: see the module's invariant.
        self.map()
            .values()
            .any(|entry| entry.canonical == canonical && entry.store.strong_count() > 0)
    }

    pub(super) fn insert(&mut self, store: &Arc<Store>) {
        if let Some(key) = store.file_key() {
            let entry = Entry {
                canonical: store.path().to_path_buf(),
                store: Arc::downgrade(store),
            };
            self.map().insert(key.clone(), entry);
        }
    }
}
