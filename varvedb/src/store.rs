//! [`Varve`], the entry point: opens a store and hands out typed streams and readers.

use std::path::Path;
use std::sync::Arc;

use crate::config::VarveConfig;
use crate::error::Result;
use crate::event::{layout_fingerprint, Archivable};
use crate::global::GlobalReader;
use crate::storage::{Store, TypeIdentity};
use crate::stream::Stream;
use crate::verify::VerifyReport;

/// An open event store.
///
/// Cloning is cheap and shares the store. Opening the same directory again in
/// the same process also shares it (LMDB forbids two opens of one environment).
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::{StreamId, Varve};
///
/// #[derive(Archive, Serialize)]
/// struct Deposited { cents: u64 }
///
/// let dir = tempfile::tempdir().unwrap();
/// let varve = Varve::new(dir.path())?;
/// let mut accounts = varve.stream::<Deposited, 64>("accounts")?;
/// let (seq, global) = accounts.append(StreamId(1), &Deposited { cents: 500 })?;
/// assert_eq!((seq.0, global.0), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Varve {
    store: Arc<Store>,
}

impl Varve {
    /// Opens the store in directory `path`, creating it if needed, with the
    /// default [`VarveConfig`].
    ///
    /// # Errors
    /// [`Error::NotADirectory`](crate::Error::NotADirectory) if `path` is a file,
    /// [`Error::Open`](crate::Error::Open) if it cannot be created or read,
    /// [`Error::UnsupportedFormat`](crate::Error::UnsupportedFormat) for a store
    /// of another format version, and
    /// [`Error::Corruption`](crate::Error::Corruption) for a damaged data file.
    pub fn new(path: impl AsRef<Path>) -> Result<Varve> {
        Varve::with_config(path, VarveConfig::default())
    }

    /// Opens the store in directory `path` with `config`. If this process
    /// already has the store open, the existing store (and its configuration)
    /// is shared.
    ///
    /// ```
    /// use varvedb::{Durability, Varve, VarveConfig};
    /// let dir = tempfile::tempdir().unwrap();
    /// let config = VarveConfig { durability: Durability::NoSync, ..VarveConfig::default() };
    /// let varve = Varve::with_config(dir.path(), config)?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn with_config(path: impl AsRef<Path>, config: VarveConfig) -> Result<Varve> {
        Ok(Varve {
            store: Store::open(path.as_ref(), config)?,
        })
    }

    /// Opens the stream `name` for events of type `T`, creating it on first use.
    ///
    /// `N` is the initial capacity in bytes of the handle's serialization
    /// buffer. An event larger than `N` is still stored whole: the buffer grows
    /// on the heap (once) and keeps its new size. Stream names are any UTF-8 of
    /// 1 to 255 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidStreamName`](crate::Error::InvalidStreamName), or
    /// [`Error::TypeMismatch`](crate::Error::TypeMismatch) if the stream was
    /// created for another type (or for this type with a different layout).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct A { x: u64 }
    /// # #[derive(Archive, Serialize)] struct B { x: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// varve.stream::<A, 64>("things")?;
    /// assert!(matches!(
    ///     varve.stream::<B, 64>("things"),
    ///     Err(varvedb::Error::TypeMismatch { .. })
    /// ));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn stream<T: Archivable, const N: usize>(&self, name: &str) -> Result<Stream<T, N>> {
        let identity = TypeIdentity {
            type_name: std::any::type_name::<T>(),
            layout_fingerprint: layout_fingerprint::<T>(),
            schema_fingerprint: 0,
        };
        let info = self.store.open_stream(name, &identity)?;
        Ok(Stream::new(Arc::clone(&self.store), info, N))
    }

    /// A reader over every event of every stream, in global order.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let mut log = varve.global_reader();
    /// assert!(log.get(varvedb::GlobalSequence(0))?.is_none());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn global_reader(&self) -> GlobalReader {
        GlobalReader::new(Arc::clone(&self.store))
    }

    /// Walks the whole store in one snapshot and reports every problem with its
    /// position: damaged blocks (checksums, bounds), gaps or overlaps in the global
    /// log, gaps in a stream id's sequences, index runs that disagree with the
    /// log, events of streams missing from the catalog. It checks structure and
    /// checksums; typed (rkyv) validation happens on every read.
    ///
    /// # Errors
    /// Only if the snapshot cannot be read at all; damage is reported in the
    /// [`VerifyReport`].
    pub fn verify(&self) -> Result<VerifyReport> {
        let view = self.store.snapshot()?;
        view.verify()
    }

    /// The engine behind this handle (for other modules).
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The store's directory (canonicalized).
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &VarveConfig {
        self.store.config()
    }
}
