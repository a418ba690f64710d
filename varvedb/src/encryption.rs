//! Encryption at rest: the key an application gives a store.
//!
//! A store created with [`VarveConfig::encryption`](crate::VarveConfig::encryption)
//! seals every block of events (payloads and metadata), every stream name
//! in its catalog and every value of its `state` database (snapshots, read
//! models, checkpoints) with XChaCha20-Poly1305. The key given here is the
//! *master* key: it only wraps the store's random data keys, which are kept
//! (wrapped) in the store. See `docs/security.md` for what is and is not
//! protected.

use zeroize::Zeroizing;

/// Argon2id's cost for [`EncryptionKey::from_passphrase`]: 19 MiB of memory,
/// 2 passes, 1 lane (the OWASP recommendation for Argon2id). Recorded in the
/// store with its salt, so a later build with other defaults still opens it.
pub(crate) const ARGON2_M_KIB: u32 = 19 * 1024;
pub(crate) const ARGON2_T: u32 = 2;
pub(crate) const ARGON2_P: u32 = 1;

/// The master key of an encrypted store: 32 raw bytes, or a passphrase
/// stretched by Argon2id with a salt kept in the store.
///
/// Its bytes are zeroed when it is dropped, and its `Debug` never shows
/// them. Keep it outside the store (a secrets manager, an environment the
/// application controls): the store holds only data keys wrapped by it.
///
/// ```
/// use varvedb::{EncryptionKey, Varve, VarveConfig};
/// # let dir = tempfile::tempdir().unwrap();
/// let key = EncryptionKey::from_bytes([7u8; 32]);
/// let varve = Varve::with_config(dir.path(), VarveConfig::encryption(key.clone()))?;
/// drop(varve);
/// // Opening it again needs the same key; without one it is a typed error.
/// assert!(matches!(
///     Varve::new(dir.path()),
///     Err(varvedb::Error::EncryptionKeyRequired { .. })
/// ));
/// let varve = Varve::with_config(dir.path(), VarveConfig::encryption(key))?;
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    pub(crate) secret: Secret,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    Raw(Zeroizing<[u8; 32]>),
    Passphrase(Zeroizing<String>),
}

impl EncryptionKey {
    /// A master key of 32 bytes (from a key-management system, or
    /// `getrandom`): used as it is, so it must be uniformly random.
    pub fn from_bytes(bytes: [u8; 32]) -> EncryptionKey {
        let mut bytes = bytes;
        let key = EncryptionKey {
            secret: Secret::Raw(Zeroizing::new(bytes)),
        };
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }

    /// A master key derived from a passphrase with Argon2id (19 MiB, 2
    /// passes, 1 lane) and a random 16-byte salt chosen when the store is
    /// created and kept in it. Opening costs one derivation (tens of
    /// milliseconds).
    ///
    /// ```
    /// use varvedb::{EncryptionKey, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let config = VarveConfig::encryption(EncryptionKey::from_passphrase("correct horse"));
    /// let varve = Varve::with_config(dir.path(), config)?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn from_passphrase(passphrase: &str) -> EncryptionKey {
        EncryptionKey {
            secret: Secret::Passphrase(Zeroizing::new(passphrase.to_owned())),
        }
    }

    /// Whether this key is a passphrase (derived at open) or raw bytes.
    pub fn is_passphrase(&self) -> bool {
        matches!(self.secret, Secret::Passphrase(_))
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.secret {
            Secret::Raw(_) => f.write_str("EncryptionKey(raw, ..)"),
            Secret::Passphrase(_) => f.write_str("EncryptionKey(passphrase, ..)"),
        }
    }
}

/// How [`Varve::reencrypt_with`](crate::Varve::reencrypt_with) batches its
/// work.
///
/// ```
/// let options = varvedb::ReencryptOptions::default().batch_blocks(64).batch_bytes(1 << 20);
/// assert_eq!(options.batch_blocks_limit(), 64);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReencryptOptions {
    batch_blocks: usize,
    batch_bytes: usize,
}

impl Default for ReencryptOptions {
    fn default() -> Self {
        ReencryptOptions {
            batch_blocks: 512,
            batch_bytes: 8 << 20,
        }
    }
}

impl ReencryptOptions {
    /// Re-seals at most `blocks` blocks or values per write transaction (at
    /// least 1; default 512). Smaller batches let other writers in more
    /// often; larger ones commit (and sync) less often.
    pub fn batch_blocks(mut self, blocks: usize) -> Self {
        self.batch_blocks = blocks.max(1);
        self
    }

    /// Re-seals at most about `bytes` stored bytes per write transaction
    /// (default 8 MiB; a larger block is re-sealed alone).
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// The limit [`ReencryptOptions::batch_blocks`] set.
    pub fn batch_blocks_limit(&self) -> usize {
        self.batch_blocks
    }

    /// The limit [`ReencryptOptions::batch_bytes`] set.
    pub fn batch_bytes_limit(&self) -> usize {
        self.batch_bytes
    }
}

/// What [`Varve::reencrypt`](crate::Varve::reencrypt) did (this call: a
/// pass resumed after a crash counts only what it re-sealed itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReencryptReport {
    /// The data key everything is sealed with now (the active one).
    pub key_id: u32,
    /// Blocks re-sealed.
    pub blocks: u64,
    /// Events in those blocks.
    pub events: u64,
    /// Stored bytes of those blocks.
    pub bytes: u64,
    /// Stream names re-sealed.
    pub names: u64,
    /// `state` values (snapshots, read models, checkpoints) re-sealed.
    pub values: u64,
    /// Re-seal records written to the tamper-evident chain (one per
    /// chained block re-sealed).
    pub resealed: u64,
    /// The data keys retired: their wrapped copies deleted from the store,
    /// since nothing is sealed with them any more.
    pub retired: Vec<u32>,
    /// Write transactions committed.
    pub batches: u64,
    /// How long it took.
    pub duration: std::time::Duration,
}

/// Where a re-encryption pass is, given to the callback of
/// [`Varve::reencrypt_with_progress`](crate::Varve::reencrypt_with_progress)
/// after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReencryptProgress {
    /// The next global sequence the pass examines, while it re-seals
    /// blocks; `None` once past the log (stream names and `state` values,
    /// a short tail).
    pub position: Option<crate::GlobalSequence>,
    /// The log's end as this process last saw it.
    pub end: crate::GlobalSequence,
    /// Blocks re-sealed so far.
    pub blocks: u64,
    /// Bytes of blocks re-sealed so far.
    pub bytes: u64,
}

/// An encrypted store's keys, as [`Varve::encryption_status`](
/// crate::Varve::encryption_status) reads them from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncryptionStatus {
    /// The data key new blocks and values are sealed with.
    pub active_key: u32,
    /// The data keys the store holds (wrapped), the active one among them.
    pub data_keys: Vec<u32>,
    /// Whether a re-encryption pass was started and has not finished (run
    /// [`Varve::reencrypt`](crate::Varve::reencrypt) to resume it).
    pub reencrypting: bool,
}
