//! Looking inside a store: its size, streams and stream ids (for tools such
//! as the `varvedb` command, and for applications' own health pages).

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::position::{GlobalSequence, StreamId, StreamSequence};
use crate::projection::{ProjectionReset, ProjectionStatus};
use crate::storage::{StoreId, DATA_FILE, FORMAT_VERSION};
use crate::store::Varve;

/// What [`Varve::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreInfo {
    /// The store's directory.
    pub path: PathBuf,
    /// The store's id.
    pub store_id: StoreId,
    /// The on-disk format version.
    pub format: u32,
    /// Whether this handle is read-only.
    pub read_only: bool,
    /// The size of `data.mdb` in bytes.
    pub data_bytes: u64,
    /// This process's memory map, in bytes (address space, not memory).
    pub map_size: u64,
    /// One past the last global sequence (the number of events).
    pub end: GlobalSequence,
    /// Streams in the catalog.
    pub streams: u64,
    /// The id of the newest commit ([`Varve::last_commit_id`]).
    pub last_commit: u64,
    /// LMDB reader slots in use, across processes (a slot stays taken by a
    /// thread that once read, and by a dead process until cleared).
    pub readers_used: u32,
    /// LMDB reader slots in all (`max_readers`).
    pub max_readers: u32,
}

/// One stream, as [`Varve::streams`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream's name.
    pub name: String,
    /// The Rust type it is bound to.
    pub type_name: String,
    /// The type's layout fingerprint.
    pub layout_fingerprint: u64,
    /// The derive's schema fingerprint (0 without `#[derive(Event)]`).
    pub schema_fingerprint: u64,
    /// Stream ids that hold events.
    pub ids: u64,
    /// Events in all its ids.
    pub events: u64,
}

/// One stream id, as [`Varve::stream_ids`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdSummary {
    /// The id.
    pub id: StreamId,
    /// Its events.
    pub events: u64,
    /// Its last stream sequence (`events - 1`).
    pub version: StreamSequence,
}

/// LMDB's reader table of a store: which processes hold reader slots, their
/// snapshots, and whether they are alive. Read by [`ReaderTable::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderTable {
    /// The store's directory.
    pub path: PathBuf,
    /// The newest commit's transaction id, as the lock file records it (0
    /// without a lock file).
    pub last_txn: u64,
    /// Slots ever used: LMDB's high-water mark, which it never lowers (the
    /// `readers_used` of [`StoreInfo`]).
    pub used: u32,
    /// Slots the lock file holds (the `max_readers` of the process that
    /// created it).
    pub capacity: u32,
    /// The slots a process holds, in table order.
    pub slots: Vec<ReaderSlot>,
}

/// One taken slot of a [`ReaderTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderSlot {
    /// The process holding it.
    pub pid: u32,
    /// The thread that took it (LMDB's `pthread_t`, an opaque number).
    pub thread: u64,
    /// The transaction id of its open snapshot; `None` when its thread has
    /// no snapshot open (LMDB keeps a thread's slot between snapshots).
    pub txn: Option<u64>,
    /// How many commits the snapshot is behind the newest
    /// ([`ReaderTable::last_txn`] minus [`ReaderSlot::txn`]): the pages of
    /// the commits since it was opened cannot be reused while it lives.
    pub behind: Option<u64>,
    /// Whether its process is gone: a slot left by a process that died
    /// (`kill -9`, a crash) while it held it. It pins its snapshot's pages
    /// until cleared ([`Varve::clear_dead_readers`], done by every
    /// read-write open and when slots run out).
    pub stale: bool,
}

impl ReaderTable {
    /// Reads the reader table of the store in directory `path` from its
    /// lock file (`lock.mdb`), with plain reads: no LMDB environment is
    /// opened and nothing is written. A slot is stale when no process holds
    /// LMDB's lock for its process id, the check LMDB's own
    /// `mdb_reader_check` (and so [`Varve::clear_dead_readers`]) makes.
    ///
    /// Call it from a process that does **not** have the store open, such
    /// as the `varvedb readers` command: POSIX drops all of a process's
    /// locks on a file when it closes any descriptor of it, so reading the
    /// lock file beside this process's own open store would silently drop
    /// that store's LMDB locks. That case is refused.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # {
    /// #     let varve = varvedb::Varve::new(dir.path())?;
    /// #     varve.stream::<Tick, 16>("ticks")?.append(varvedb::StreamId(1), &Tick { n: 1 })?;
    /// # }
    /// // The store is not open in this process (any more).
    /// let table = varvedb::ReaderTable::read(dir.path())?;
    /// assert!(table.capacity >= 126);
    /// assert!(table.slots.iter().all(|slot| slot.pid != std::process::id()));
    ///
    /// let varve = varvedb::Varve::open_read_only(dir.path())?;
    /// assert!(varvedb::ReaderTable::read(dir.path()).is_err()); // open here: refused
    /// # drop(varve);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ReaderTable`](crate::Error::ReaderTable) if this process
    /// has the store open or the lock file's layout is not one this build
    /// reads (it is LMDB's internal layout, described by the file itself:
    /// Unix builds of LMDB with POSIX mutexes are read);
    /// [`Error::Open`](crate::Error::Open) if there is no store at `path`.
    /// A store without a lock file (never opened where `lock.mdb` could be
    /// written) has an empty table: no slots, capacity 0.
    pub fn read(path: impl AsRef<Path>) -> Result<ReaderTable> {
        let path = path.as_ref();
        let table = crate::storage::readers::read(path)?;
        Ok(ReaderTable {
            path: path.to_path_buf(),
            last_txn: table.last_txn,
            used: table.used,
            capacity: table.capacity,
            slots: table
                .slots
                .iter()
                .map(|s| ReaderSlot {
                    pid: s.pid as u32,
                    thread: s.thread,
                    txn: s.txn,
                    behind: s.txn.map(|t| table.last_txn.saturating_sub(t)),
                    stale: !s.alive,
                })
                .collect(),
        })
    }

    /// How many slots are stale.
    pub fn stale(&self) -> usize {
        self.slots.iter().filter(|s| s.stale).count()
    }
}

impl Varve {
    /// The store's size, position and reader slots, in one snapshot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let info = varve.info()?;
    /// assert_eq!((info.end.0, info.streams, info.read_only), (0, 0, false));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn info(&self) -> Result<StoreInfo> {
        let stats = self.store().env_stats()?;
        let mut view = self.store().snapshot()?;
        let end = view.end_global()?;
        let mut streams = 0;
        view.for_each_stream(|_, _| {
            streams += 1;
            Ok(())
        })?;
        drop(view);
        let data = self.path().join(DATA_FILE);
        let data_bytes = std::fs::metadata(&data)
            .map_err(|source| crate::Error::Open { path: data, source })?
            .len();
        Ok(StoreInfo {
            path: self.path().to_path_buf(),
            store_id: self.store_id(),
            format: FORMAT_VERSION,
            read_only: self.is_read_only(),
            data_bytes,
            map_size: stats.map_size as u64,
            end: GlobalSequence(end),
            streams,
            last_commit: stats.last_txn as u64,
            readers_used: stats.readers_used,
            max_readers: stats.max_readers,
        })
    }

    /// Every stream of the catalog with its type and counts, in creation
    /// order, from one snapshot (it walks the whole index: a tool's call).
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = varvedb::Varve::new(dir.path())?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append_batch(varvedb::StreamId(7), &[Tick { n: 1 }, Tick { n: 2 }])?;
    /// let streams = varve.streams()?;
    /// assert_eq!((streams[0].name.as_str(), streams[0].ids, streams[0].events), ("ticks", 1, 2));
    /// assert_eq!(varve.stream_ids("ticks")?[0].version.0, 1);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn streams(&self) -> Result<Vec<StreamSummary>> {
        let mut view = self.store().snapshot()?;
        let mut found = Vec::new();
        view.for_each_stream(|tag, info| {
            found.push((tag, info.clone()));
            Ok(())
        })?;
        let mut out = Vec::with_capacity(found.len());
        for (tag, info) in found {
            let (mut ids, mut events) = (0, 0);
            view.for_each_id(tag, |_, n| {
                ids += 1;
                events += n;
                Ok(())
            })?;
            out.push(StreamSummary {
                name: info.name.to_string(),
                type_name: info.type_name.to_string(),
                layout_fingerprint: info.layout_fingerprint,
                schema_fingerprint: info.schema_fingerprint,
                ids,
                events,
            });
        }
        Ok(out)
    }

    /// The ids of stream `stream` with their event counts, in id order (an
    /// unknown stream has none).
    pub fn stream_ids(&self, stream: &str) -> Result<Vec<IdSummary>> {
        let mut view = self.store().snapshot()?;
        let mut tag = None;
        view.for_each_stream(|t, info| {
            if &*info.name == stream {
                tag = Some(t);
            }
            Ok(())
        })?;
        let mut out = Vec::new();
        if let Some(tag) = tag {
            view.for_each_id(tag, |id, events| {
                out.push(IdSummary {
                    id: StreamId(id),
                    events,
                    version: StreamSequence(events.saturating_sub(1)),
                });
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Frees the LMDB reader slots left taken by processes that died while
    /// reading; returns how many. Writes only LMDB's lock file (also on a
    /// read-only handle). [`ReaderTable::read`] lists them first.
    pub fn clear_dead_readers(&self) -> Result<usize> {
        self.store().clear_dead_readers()
    }
}

impl Varve {
    /// Every projection the store records (in-store and external), in name
    /// order, with its checkpoint, generation, lag behind the end of the
    /// log and the failures it recorded, from one snapshot. Works on a
    /// read-only store beside the application (`varvedb projections`).
    ///
    /// The walk seeks from one projection's keys to the next, so a large
    /// read model is not read; each projection's skip records are counted.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Sold { units: u32 }
    /// use varvedb::{GlobalEvent, HandlerError, Projection, ProjectionKind, ReadModel, StreamId};
    ///
    /// struct Count;
    /// impl Projection for Count {
    ///     fn apply(&mut self, _: &GlobalEvent, model: &mut ReadModel<'_, '_>) -> Result<(), HandlerError> {
    ///         let n = model.get_u64(b"n")?.unwrap_or(0);
    ///         Ok(model.put_u64(b"n", n + 1)?)
    ///     }
    /// }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let varve = varvedb::Varve::new(dir.path())?;
    /// let mut sales = varve.stream::<Sold, 16>("sales")?;
    /// sales.append(StreamId(1), &Sold { units: 1 })?;
    /// varve.projector("count", Count)?.catch_up()?;
    /// sales.append(StreamId(1), &Sold { units: 2 })?;
    ///
    /// let listed = varve.projections()?;
    /// assert_eq!(listed[0].name, "count");
    /// assert_eq!(listed[0].kind, Some(ProjectionKind::InStore));
    /// assert_eq!((listed[0].checkpoint.0, listed[0].lag), (1, 1));
    ///
    /// // Back to the start, its model cleared, in one transaction.
    /// let reset = varve.reset_projection("count")?;
    /// assert_eq!((reset.checkpoint.0, reset.model_entries), (1, 1));
    /// assert_eq!(varve.projections()?[0].lag, 2);
    /// assert!(varve.reset_projection("nothing").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn projections(&self) -> Result<Vec<ProjectionStatus>> {
        crate::projection::status::list(self.store())
    }

    /// The projection `name` as [`Varve::projections`] lists it, or `None`
    /// if the store records nothing of it.
    ///
    /// # Errors
    /// [`Error::InvalidProjectionName`](crate::Error::InvalidProjectionName); storage errors.
    pub fn projection_status(&self, name: &str) -> Result<Option<ProjectionStatus>> {
        crate::projection::status::status_of(self.store(), name)
    }

    /// Resets the projection `name` without its projector (an operator's
    /// `varvedb projections reset NAME --write`): deletes its checkpoint,
    /// kind and skip records and, for an in-store projection, its read
    /// model, and raises its generation, all in one write transaction. Its
    /// projector starts over from the first event at its next run.
    ///
    /// A projector of the name running meanwhile (in any process) is not
    /// misled: an in-store one reads its checkpoint in each batch's
    /// transaction, so its next batch starts from 0; an external one fails
    /// its next checkpoint write with
    /// [`Error::CheckpointMoved`](crate::Error::CheckpointMoved) (the
    /// generation moved). An external projection's sink, outside the store,
    /// is not emptied: its events are delivered again from the first, which
    /// at-least-once delivery allows; empty it with
    /// [`ExternalProjector::reset`](crate::ExternalProjector::reset) instead
    /// where the sink cannot take that.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`](crate::Error::UnknownProjection) if the store records nothing of `name`
    /// (nothing is written); [`Error::InvalidProjectionName`](crate::Error::InvalidProjectionName);
    /// [`Error::ReadOnly`](crate::Error::ReadOnly) on a read-only handle; storage errors.
    pub fn reset_projection(&self, name: &str) -> Result<ProjectionReset> {
        crate::projection::status::reset(self.store(), name)
    }
}

impl Varve {
    /// The global sequences of stream `stream`'s id `id` from stream
    /// sequence `from`, at most `limit` of them (an untyped read, for tools).
    #[cfg(feature = "cli")]
    pub(crate) fn stream_globals(
        &self,
        stream: &str,
        id: StreamId,
        from: StreamSequence,
        limit: u64,
    ) -> Result<Vec<GlobalSequence>> {
        let mut view = self.store().snapshot()?;
        let mut tag = None;
        view.for_each_stream(|t, info| {
            if &*info.name == stream {
                tag = Some(t);
            }
            Ok(())
        })?;
        let Some(tag) = tag else {
            return Ok(Vec::new());
        };
        let mut cursor = crate::storage::StreamCursor::new(view, Some(tag), id.0, from.0);
        let mut out = Vec::new();
        while (out.len() as u64) < limit {
            match cursor.next_bytes() {
                Some(found) => out.push(found?.1),
                None => break,
            }
        }
        Ok(out)
    }
}
