#![doc = include_str!("../../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]

mod aggregate;
mod backup;
mod chain;
#[cfg(feature = "cli")]
pub mod cli;
mod config;
mod encryption;
mod entity;
mod error;
mod event;
mod global;
mod id;
mod inspect;
mod metadata;
mod migrate;
mod position;
mod projection;
mod reader;
mod snapshot;
mod storage;
mod store;
mod stream;
mod subscription;
mod trace;
mod typed;
mod verify;

/// The record codec, for the fuzz targets in `fuzz/`. Not a public API.
#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;

/// For tests of the PostgreSQL backend: runs SQL (`CREATE DATABASE`, …)
/// outside any store. Not a public API.
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub mod __pg {
    /// Runs `sql` (one or more statements) on a fresh connection to `url`.
    pub fn execute(url: &str, sql: &str) -> crate::Result<()> {
        crate::storage::admin_execute(url, sql)
    }

    /// How many round trips to the server `varve`'s calls have made since
    /// it was opened (`None` for a store on LMDB).
    pub fn round_trips(varve: &crate::Varve) -> Option<u64> {
        varve.store().round_trips()
    }
}

pub use aggregate::{
    Aggregate, AggregateTest, ExecuteError, Executed, Loaded, Snapshots, TestOutcome,
};
pub use backup::{
    BackupManifest, BackupPhase, BackupProgress, BackupReport, ExportFollower, ExportReport,
    ImportOptions, ImportPhase, ImportProgress, ImportReport, LogDigest, RestoreReport,
    SegmentInfo,
};
pub use chain::{
    Chain, ChainCheck, ChainMode, ChainOptions, ChainReport, ChainStatus, Extension, HeadDigest,
    Reseal,
};
pub use config::{Durability, VarveConfig};
pub use encryption::{
    EncryptionKey, EncryptionStatus, ReencryptOptions, ReencryptProgress, ReencryptReport,
};
pub use entity::MAX_ENTITY_KEY;
pub use error::{Error, Location, Result, StorageError, StorageErrorKind, StoredAt};
pub use event::{lineage, Archivable, Event, Lineage, NoPrevious, Upcast, UpcastError};
pub use global::{
    GlobalEntry, GlobalEvent, GlobalIter, GlobalIterator, GlobalReader, OwnedGlobalEvent,
};
pub use id::{CommandId, CorrelationId, EventId};
pub use inspect::{IdSummary, ReaderSlot, ReaderTable, StoreInfo, StreamSummary};
pub use metadata::{Append, Appended, Context, Execute, Metadata};
pub use migrate::{MigrateOptions, MigrateProgress, MigrationPlan, MigrationReport};
pub use position::{ExpectedVersion, GlobalSequence, StreamId, StreamKey, StreamSequence};
pub use projection::{
    ExternalProjection, ExternalProjector, HandlerError, ModelReader, OnError, Projection,
    ProjectionKind, ProjectionReset, ProjectionStatus, ProjectionThread, Projector, ReadModel,
    Skipped,
};
pub use reader::{EventBytes, EventRef, StreamIter, StreamIterator, StreamReader};
pub use snapshot::{GlobalEntries, LogSnapshot, StreamEntries, StreamEntry, StreamSnapshot};
pub use storage::vault::Erasure;
pub use storage::{CommitStats, StoreId};
pub use store::Varve;
pub use stream::{HighSerializer, LowSerializer, Stream, WithContext};
#[cfg(feature = "async")]
pub use subscription::{AsyncStreamSubscription, AsyncSubscription};
pub use subscription::{Filter, StopHandle, StreamSubscription, Subscription, WriteWatcher};
pub use typed::Events;
/// Derives [`Event`](trait@Event): see the trait for every attribute, its
/// default and its limits.
///
/// ```
/// use rkyv::{Archive, Serialize};
/// use varvedb::Event;
///
/// #[derive(Archive, Serialize, Event)]
/// #[event(stream = "orders", buffer = 4096, version = 2)]
/// struct OrderPlaced {
///     order: u64,
/// }
///
/// assert_eq!((OrderPlaced::STREAM, OrderPlaced::BUFFER_SIZE, OrderPlaced::VERSION), ("orders", 4096, 2));
/// ```
pub use varvedb_derive::Event;
pub use verify::{Problem, ProblemKind, VerifyReport};

/// What `#[derive(Event)]` expands to refers to, so that the generated code
/// needs nothing in the user's crate but `varvedb`. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{
        assert_archivable, same_str, upcast, Archivable, Event, Lineage, NoPrevious, Upcast,
    };
    pub use core::assert;
    pub use core::marker::Sized;
    pub use core::primitive::{str, u32, u64, usize};
    pub use core::{concat, module_path};
}
