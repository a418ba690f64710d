//! A projection's read model in the store: [`ReadModel`] to write it (inside
//! the projection's transaction) and [`ModelReader`] to query it.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::namespace::Namespace;
use crate::error::{Error, Location, Result};
use crate::position::GlobalSequence;
use crate::reader::current_view;
use crate::storage::{Store, ViewSlot, WriteTxn};

/// Key-value pairs, copied out of the store.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn not_a_u64(ns: &Namespace, key: &[u8], len: usize) -> Error {
    Error::Corruption {
        location: Location::Record(format!(
            "read model {:?} key {:?}",
            ns.name(),
            String::from_utf8_lossy(key)
        )),
        detail: format!("expected a u64 (8 bytes), found {len} bytes"),
    }
}

/// The read model of an in-store [`Projection`](crate::Projection), as its
/// handler sees it: keys and values of bytes, private to the projection.
///
/// Everything written through it commits in the same transaction as the
/// projection's checkpoint, so each event's effect is applied exactly once,
/// crash or not. Keys are at most `503 - name length` bytes (LMDB's key limit
/// less the projection's prefix).
pub struct ReadModel<'a, 's> {
    txn: &'a mut WriteTxn<'s>,
    ns: &'a Namespace,
    key: &'a mut Vec<u8>,
}

impl<'a, 's> ReadModel<'a, 's> {
    pub(crate) fn new(txn: &'a mut WriteTxn<'s>, ns: &'a Namespace, key: &'a mut Vec<u8>) -> Self {
        ReadModel { txn, ns, key }
    }

    /// The value of `key`, as this transaction sees it (including its own
    /// writes).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        let full = self.ns.model_key(self.key, key);
        self.txn.state_get(full)
    }

    /// The value of `key` as a little-endian `u64` (as [`ReadModel::put_u64`]
    /// writes it).
    ///
    /// # Errors
    /// [`Error::Corruption`] if the value is not 8 bytes.
    pub fn get_u64(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let ns = self.ns;
        match self.get(key)? {
            None => Ok(None),
            Some(v) => v
                .try_into()
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| not_a_u64(ns, key, v.len())),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let full = self.ns.model_key(self.key, key);
        self.txn.state_put(full, value)
    }

    /// Sets `key` to `value` as a little-endian `u64`.
    pub fn put_u64(&mut self, key: &[u8], value: u64) -> Result<()> {
        self.put(key, &value.to_le_bytes())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let full = self.ns.model_key(self.key, key);
        self.txn.state_delete(full)
    }
}

impl fmt::Debug for ReadModel<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadModel")
            .field("projection", &self.ns.name())
            .finish_non_exhaustive()
    }
}

/// Queries the read model of an in-store projection, from any thread, while
/// the projection runs. Made by [`Varve::read_model`](crate::Varve::read_model)
/// or [`Projector::model`](crate::Projector::model).
///
/// Each call reads the newest commit (reusing one snapshot between commits,
/// as [`StreamReader`](crate::StreamReader) does). Values are copied out.
pub struct ModelReader {
    store: Arc<Store>,
    ns: Namespace,
    /// The snapshot kept between calls, in a slot a writer that must grow
    /// the map can empty while this reader is idle.
    view: ViewSlot,
}

impl ModelReader {
    pub(crate) fn new(store: Arc<Store>, ns: Namespace) -> Self {
        ModelReader {
            view: store.view_slot(),
            store,
            ns,
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The value of `key`, copied.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let full = [self.ns.model(), key].concat();
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        Ok(view.state_get(&full)?.map(<[u8]>::to_vec))
    }

    /// The value of `key` as a little-endian `u64`.
    ///
    /// # Errors
    /// [`Error::Corruption`] if the value is not 8 bytes.
    pub fn get_u64(&mut self, key: &[u8]) -> Result<Option<u64>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| not_a_u64(&self.ns, key, v.len())),
        }
    }

    /// The projection's checkpoint: the global sequence of the next event it
    /// will apply (every event before it is reflected in the model).
    pub fn checkpoint(&mut self) -> Result<GlobalSequence> {
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        self.ns.checkpoint_in_view(view).map(GlobalSequence)
    }

    /// Calls `f(key, value)` for every entry whose key starts with `prefix`
    /// (`b""` for all), in key order, in one snapshot.
    pub fn for_each(&mut self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let full = [self.ns.model(), prefix].concat();
        let skip = self.ns.model().len();
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        view.state_for_each(&full, |k, v| {
            f(&k[skip..], v);
            ControlFlow::Continue(())
        })
    }

    /// Every entry of the model, copied, in key order, with the checkpoint
    /// they reflect (both from one snapshot).
    pub fn entries(&mut self) -> Result<(GlobalSequence, Entries)> {
        let skip = self.ns.model().len();
        let mut slot = self.view.lock();
        let view = current_view(&self.store, &mut slot)?;
        let mut out = Vec::new();
        view.state_for_each(self.ns.model(), |k, v| {
            out.push((k[skip..].to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        })?;
        let checkpoint = self.ns.checkpoint_in_view(view)?;
        Ok((GlobalSequence(checkpoint), out))
    }

    /// Releases the snapshot kept between calls.
    pub fn release(&mut self) {
        *self.view.lock() = None;
    }
}

impl fmt::Debug for ModelReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelReader")
            .field("projection", &self.ns.name())
            .finish_non_exhaustive()
    }
}
