//! How a store is opened: map size, reader slots, durability, polling.

use std::path::PathBuf;
use std::time::Duration;

use crate::chain::Chain;
use crate::encryption::EncryptionKey;

/// How hard a commit works to survive a crash.
///
/// ```
/// use varvedb::{Durability, VarveConfig};
/// let config = VarveConfig { durability: Durability::Full, ..VarveConfig::default() };
/// assert_eq!(config.durability, Durability::Full);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every append returns only after its transaction is on disk (data and
    /// metadata synced). Survives process crashes and power loss. The default.
    #[default]
    Full,
    /// Data pages are synced at commit, the metadata page is not. A power loss
    /// may roll back the last commits, but never corrupts the store; a process
    /// crash loses nothing. Trades the last transaction for one fewer sync.
    ///
    /// On PostgreSQL (`Varve::connect`, feature `postgres`) both relaxed
    /// levels commit with `synchronous_commit = off`: a crash of the
    /// *application* process still loses nothing, but a crash of the
    /// *server* (or a failover to an asynchronous standby) may lose the last
    /// commits it had acknowledged. A writer then never trusts what it knew
    /// before (its appends stay correct), and a live subscription that had
    /// delivered a lost event fails with
    /// [`Error::CommitsLost`](crate::Error::CommitsLost) rather than skip the
    /// events that reuse its sequences.
    NoMetaSync,
    /// Nothing is synced at commit; the OS writes pages back when it likes. A
    /// process crash loses nothing, but a power loss or kernel crash may lose
    /// any number of recent commits, and with a filesystem that reorders writes
    /// may corrupt the store. For tests and rebuildable data only. On
    /// PostgreSQL as [`NoMetaSync`](Durability::NoMetaSync): a server crash
    /// may lose the last acknowledged commits.
    NoSync,
}

/// The default longest a waiter takes to notice a commit made by another
/// process ([`VarveConfig::cross_process_poll`]).
pub(crate) const CROSS_PROCESS_POLL: Duration = Duration::from_millis(50);

/// Options for [`Varve::with_config`](crate::Varve::with_config).
///
/// The defaults need no tuning for stores of tens of gigabytes: the map starts
/// large (it is address space, not memory or disk) and grows by itself.
///
/// ```no_run
/// use varvedb::{Varve, VarveConfig};
/// let config = VarveConfig { max_readers: 512, ..VarveConfig::default() };
/// let varve = Varve::with_config("./data", config)?;
/// # Ok::<(), varvedb::Error>(())
/// ```
/// Build it with struct-update syntax (`..VarveConfig::default()`), so fields
/// added later keep your code compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarveConfig {
    /// Initial size of the memory map in bytes (rounded up to the page size).
    /// When a write needs more, the map doubles automatically.
    pub map_size: usize,
    /// How many read snapshots (readers mid-call, live iterators and event
    /// guards) may be open at once across all processes using the store.
    pub max_readers: u32,
    /// Commit durability. See [`Durability`]. On PostgreSQL, `Full` keeps
    /// the server's `synchronous_commit` and the relaxed modes turn it off
    /// for this store's writes.
    pub durability: Durability,
    /// How long a writer that must grow the map waits for this process's open
    /// read snapshots to close before failing with
    /// [`Error::MapResizeBlocked`](crate::Error::MapResizeBlocked). On
    /// PostgreSQL: how long a call waits for a pooled connection.
    pub resize_wait: Duration,
    /// How often a waiting subscription or projector looks for commits made
    /// by *other processes*, which cannot signal it (commits of this process
    /// wake it at once). Looking costs little when nothing was committed (one
    /// read of LMDB's transaction id) and a short read snapshot when something
    /// was. Intervals under 1 ms count as 1 ms.
    ///
    /// `None` turns looking off, for a store only this process writes: then a
    /// commit by another process is seen only once something in this process
    /// reads the log's end anew (its own next append, a new subscription or
    /// projector run, [`GlobalReader::end`](crate::GlobalReader::end)); a
    /// waiting subscription sleeps through it until then, or until its
    /// timeout. Default: `Some(50 ms)`.
    pub cross_process_poll: Option<Duration>,
    /// The tamper-evident chain a store created by this open keeps (`None`,
    /// the default: none; see [`VarveConfig::tamper_evident`]). For an
    /// existing store it must be the store's chain (or `None`): a
    /// [`Chain::Keyed`] key is checked against the store's at open, and is
    /// what appends extend the chain with.
    pub tamper_evident: Option<Chain>,
    /// The master key of an encrypted store (`None`, the default: a
    /// plaintext store; see [`VarveConfig::encryption`]). A store created
    /// with a key is encrypted for good; opening it needs the same key
    /// ([`Error::EncryptionKeyRequired`](crate::Error::EncryptionKeyRequired),
    /// [`Error::EncryptionKeyMismatch`](crate::Error::EncryptionKeyMismatch)),
    /// and a key given for a plaintext store is
    /// [`Error::NotEncrypted`](crate::Error::NotEncrypted).
    pub encryption: Option<EncryptionKey>,
    /// The key vault of an encrypted store's entity keys (`None`, the
    /// default: none; see [`VarveConfig::key_vault`]): a directory outside
    /// the store, holding one random data key per entity (stream and stream
    /// id) that appends seal the entity's events with, so erasing an entity
    /// ([`Stream::erase`](crate::Stream::erase)) makes its events unreadable
    /// in the store and in every backup of it. A store that has used a vault
    /// opens only with it ([`Error::KeyVault`](crate::Error::KeyVault)).
    pub key_vault: Option<PathBuf>,
}

impl VarveConfig {
    /// The default configuration with a tamper-evident chain: a store created
    /// with it chains every block from its first (see [`Chain`]); an existing
    /// store must already keep this chain (an unchained one is enabled with
    /// [`Varve::enable_chain`](crate::Varve::enable_chain)).
    ///
    /// ```
    /// use varvedb::{Chain, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let key = [7u8; 32]; // keep it outside the store
    /// let varve = Varve::with_config(dir.path(), VarveConfig::tamper_evident(Chain::Keyed(key)))?;
    /// assert!(varve.chain_status()?.is_on());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn tamper_evident(chain: Chain) -> VarveConfig {
        VarveConfig {
            tamper_evident: Some(chain),
            ..VarveConfig::default()
        }
    }

    /// The default configuration with encryption at rest: a store created
    /// with it seals every block of events, every stream name and every
    /// `state` value with XChaCha20-Poly1305 under data keys that `key`
    /// wraps (see [`EncryptionKey`] and `docs/security.md`). An existing
    /// store must have been created with the same key.
    ///
    /// ```
    /// use varvedb::{EncryptionKey, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let config = VarveConfig::encryption(EncryptionKey::from_bytes([42; 32]));
    /// let varve = Varve::with_config(dir.path(), config)?;
    /// assert!(varve.is_encrypted());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn encryption(key: EncryptionKey) -> VarveConfig {
        VarveConfig {
            encryption: Some(key),
            ..VarveConfig::default()
        }
    }

    /// This configuration with the key vault at `path` (see
    /// [`VarveConfig::key_vault`](VarveConfig#structfield.key_vault) and
    /// `docs/security.md`, "Erasure"): the store (which must be encrypted)
    /// seals each entity's events with a key of the entity's own, kept in
    /// the vault, so [`Stream::erase`](crate::Stream::erase) can shred them.
    /// Keep the vault outside the store's directory and its backups.
    ///
    /// ```
    /// use varvedb::{EncryptionKey, Erasure, Error, StreamId, Varve, VarveConfig};
    /// # #[derive(rkyv::Archive, rkyv::Serialize)] struct Joined { n: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let vault_dir = tempfile::tempdir().unwrap();
    /// let config = VarveConfig::encryption(EncryptionKey::from_bytes([42; 32]))
    ///     .key_vault(vault_dir.path());
    /// let varve = Varve::with_config(dir.path(), config)?;
    /// let mut users = varve.stream::<Joined, 16>("users")?;
    /// users.append(StreamId(7), &Joined { n: 1 })?;
    /// assert_eq!(users.erase(StreamId(7))?, Erasure::Erased);
    /// let read = users.reader().get_bytes(StreamId(7), varvedb::StreamSequence(0));
    /// assert!(matches!(read, Err(Error::Erased { .. })));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn key_vault(self, path: impl Into<PathBuf>) -> VarveConfig {
        VarveConfig {
            key_vault: Some(path.into()),
            ..self
        }
    }
}

/// 64 GiB on 64-bit targets: a virtual reservation, not memory or disk.
#[cfg(target_pointer_width = "64")]
const DEFAULT_MAP_SIZE: usize = 64 << 30;
#[cfg(not(target_pointer_width = "64"))]
const DEFAULT_MAP_SIZE: usize = 256 << 20;

impl Default for VarveConfig {
    fn default() -> Self {
        VarveConfig {
            map_size: DEFAULT_MAP_SIZE,
            max_readers: 1024,
            durability: Durability::Full,
            resize_wait: Duration::from_secs(10),
            cross_process_poll: Some(CROSS_PROCESS_POLL),
            tamper_evident: None,
            encryption: None,
            key_vault: None,
        }
    }
}
