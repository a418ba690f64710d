//! Entity keys: stream ids named by the application's own keys (strings,
//! bytes, UUIDs), allocated on first use inside the append or command's
//! transaction and resolvable both ways.

use crate::error::{Error, Result};
use crate::position::StreamId;
use crate::reader::{current_view, StreamReader};

/// The longest entity key, in bytes (LMDB keys are at most 511 bytes; the
/// store prefixes 5).
pub const MAX_ENTITY_KEY: usize = 255;

/// Checks `key`'s length for the stream `stream`.
pub(crate) fn check_key<'k>(stream: &str, key: &'k [u8]) -> Result<&'k [u8]> {
    if key.is_empty() || key.len() > MAX_ENTITY_KEY {
        return Err(Error::InvalidEntityKey {
            stream: stream.to_string(),
            len: key.len(),
            max: MAX_ENTITY_KEY,
        });
    }
    Ok(key)
}

impl<T: crate::Archivable> StreamReader<T> {
    /// The stream id entity `key` maps to in this stream, or `None` if no
    /// append has used the key yet. Reading never allocates.
    ///
    /// Keys map to ids allocated from 2^63 up, per stream (an id that
    /// already holds events is skipped), so they stay clear of small ids
    /// chosen by hand. The mapping is written in the transaction of the
    /// key's first append, so two racing first appends (threads or
    /// processes) get the same id.
    ///
    /// # Errors
    /// [`Error::InvalidEntityKey`], [`Error::Corruption`] for a damaged entry.
    pub fn entity_id(&mut self, key: impl AsRef<[u8]>) -> Result<Option<StreamId>> {
        let key = check_key(self.name(), key.as_ref())?;
        let (store, info, slot) = self.parts();
        let mut slot = slot.lock();
        let view = current_view(store, &mut slot)?;
        let Some(tag) = view.stream_tag(info)? else {
            return Ok(None);
        };
        Ok(view.entity_id(tag, key)?.map(StreamId))
    }

    /// The entity key stream id `id` was allocated to, if any.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a damaged entry.
    pub fn entity_key(&mut self, id: StreamId) -> Result<Option<Vec<u8>>> {
        let (store, info, slot) = self.parts();
        let mut slot = slot.lock();
        let view = current_view(store, &mut slot)?;
        let Some(tag) = view.stream_tag(info)? else {
            return Ok(None);
        };
        view.entity_key_of(tag, id.0)
    }
}
