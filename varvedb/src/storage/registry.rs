//! One `Store` per directory per process.
//!
//! LMDB forbids opening the same environment twice in one process (the second
//! open would break its locking). Every `Varve::new` on a directory that is
//! already open returns a handle to the same store instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::Store;
use crate::error::Result;

static OPEN: Mutex<Option<HashMap<PathBuf, Weak<Store>>>> = Mutex::new(None);

/// Returns the live store for `canonical`, or opens one with `open`.
pub(super) fn get_or_open(
    canonical: &Path,
    open: impl FnOnce() -> Result<Arc<Store>>,
) -> Result<Arc<Store>> {
    let mut guard = OPEN.lock();
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(store) = map.get(canonical).and_then(Weak::upgrade) {
        return Ok(store);
    }
    map.retain(|_, weak| weak.strong_count() > 0);
    let store = open()?;
    map.insert(canonical.to_path_buf(), Arc::downgrade(&store));
    Ok(store)
}
