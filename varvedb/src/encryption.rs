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
