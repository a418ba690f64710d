//! [`Varve::migrate`]: rewriting every old-version event of a stream into the
//! current version, in place.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::error::Result;
use crate::event::Event;
use crate::storage::migrate::Budget;
use crate::store::Varve;
use crate::typed;
use crate::verify::VerifyReport;

/// How [`Varve::migrate_with`] runs: which stream, and how much each write
/// transaction rewrites.
///
/// ```
/// let options = varvedb::MigrateOptions::default()
///     .stream("orders/eu")
///     .batch_events(500);
/// assert_eq!(options.batch_events_limit(), 500);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MigrateOptions {
    stream: Option<String>,
    batch_events: usize,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            stream: None,
            batch_events: 1024,
        }
    }
}

impl MigrateOptions {
    /// Migrates the stream `name` instead of the event's own
    /// [`STREAM`](Event::STREAM) (a stream opened with
    /// [`Varve::events_in`]).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// Rewrites at most about `events` events per write transaction (at
    /// least 1; default 1024). A block (one append) is never split, so a
    /// batch holds at least one whole block. Smaller batches let other
    /// writers in more often; larger ones commit (and sync) less often.
    pub fn batch_events(mut self, events: usize) -> Self {
        self.batch_events = events.max(1);
        self
    }

    /// The limit [`MigrateOptions::batch_events`] set.
    pub fn batch_events_limit(&self) -> usize {
        self.batch_events
    }
}

/// What [`Varve::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The stream migrated.
    pub stream: String,
    /// Blocks (appends) rewritten.
    pub blocks: u64,
    /// Events rewritten (upcast into the current version).
    pub events: u64,
    /// `(version, events rewritten from it)`, oldest version first.
    pub versions: Vec<(u32, u64)>,
    /// The versions this run retired in the stream's event family.
    pub retired: Vec<u32>,
    /// Write transactions committed.
    pub batches: u64,
    /// Re-seal records written: blocks the store's tamper-evident chain
    /// covers that this run rewrote (0 for an unchained store). The chain
    /// keeps covering each block as it was written; its record says what
    /// the block became (see [`Varve::verify_extends`]).
    pub resealed: u64,
    /// How long the whole migration took, verification included.
    pub duration: Duration,
    /// [`Varve::verify`] of the store after the migration, with one problem
    /// more for each block of the stream not of the current version and each
    /// event that does not validate as the current version.
    pub verify: VerifyReport,
}

impl Varve {
    /// Rewrites every event of `E`'s stream written with an older version of
    /// `E` into the current version, in place: the same global and stream
    /// sequences, commit times, blocks and metadata, with new payloads
    /// (upcast through `E`'s chain, as reads do), fingerprints and checksums.
    /// See [`Varve::migrate_with`].
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use varvedb::{Event, StreamId, StreamSequence, Upcast, Varve};
    ///
    /// mod v1 {
    ///     #[derive(rkyv::Archive, rkyv::Serialize, varvedb::Event)]
    ///     #[event(name = "Deposited", stream = "accounts")]
    ///     pub struct Deposited { pub cents: u32 }
    /// }
    ///
    /// #[derive(Archive, Serialize, Event)]
    /// #[event(name = "Deposited", stream = "accounts", version = 2, upcast_from = v1::Deposited)]
    /// struct Deposited { cents: u64 }
    ///
    /// impl Upcast<v1::Deposited> for Deposited {
    ///     fn upcast(old: &v1::ArchivedDeposited) -> Self {
    ///         Deposited { cents: u64::from(old.cents.to_native()) }
    ///     }
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let varve = Varve::new(dir.path())?;
    /// varve.events::<v1::Deposited>()?.append(StreamId(1), &v1::Deposited { cents: 5 })?;
    ///
    /// let report = varve.migrate::<Deposited>()?;
    /// assert_eq!((report.events, report.retired.as_slice()), (1, &[1][..]));
    /// assert!(report.verify.is_ok());
    /// let mut reader = varve.events::<Deposited>()?.reader();
    /// let read = reader.get_archived(StreamId(1), StreamSequence(0))?.expect("migrated");
    /// assert_eq!(read.cents, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Varve::migrate_with`].
    pub fn migrate<E: Event>(&self) -> Result<MigrationReport> {
        self.migrate_with::<E>(MigrateOptions::default())
    }

    /// [`Varve::migrate`] with `options`.
    ///
    /// The stream is rewritten in batches of about
    /// [`batch_events`](MigrateOptions::batch_events) events, each in its
    /// own short write transaction, so appends (to this stream or any other)
    /// go on between them; they append the current version. Each batch moves
    /// a cursor kept in the store in the same transaction, so a migration
    /// interrupted (a crash, an error, the process killed) resumes where it
    /// stopped when run again, and two migrations of one stream (threads or
    /// processes) share the work without rewriting anything twice.
    ///
    /// The first batch records the current version in the stream's event
    /// family, so older builds can no longer append to it. The last one
    /// marks every other version *retired*: no event of the stream has them
    /// any more, so a later build may drop their types (and the upcasters
    /// to them) from its chain and still open the stream. The store is then
    /// verified ([`MigrationReport::verify`]).
    ///
    /// A stream that does not exist is migrated at once (an empty report).
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) if `E` does
    /// not know a version the stream holds,
    /// [`Error::OutdatedEventVersion`](crate::Error::OutdatedEventVersion)
    /// if the stream holds a version newer than `E`,
    /// [`Error::UnknownEventVersion`](crate::Error::UnknownEventVersion) or
    /// [`Error::UpcastFailed`](crate::Error::UpcastFailed) for an event that
    /// cannot be upcast, [`Error::Corruption`](crate::Error::Corruption) for
    /// a damaged block (never rewritten under a fresh checksum),
    /// [`Error::Storage`](crate::Error::Storage). The batches committed
    /// before an error stay; running the migration again resumes.
    pub fn migrate_with<E: Event>(&self, options: MigrateOptions) -> Result<MigrationReport> {
        let started = Instant::now();
        let store = self.store();
        let name = options.stream.as_deref().unwrap_or(E::STREAM);
        let info = store.open_stream(name, &typed::identity::<E>())?;
        let budget = Budget {
            events: options.batch_events,
            blocks: options.batch_events.saturating_mul(16).max(1024),
        };
        let mut report = MigrationReport {
            stream: name.to_string(),
            ..MigrationReport::default()
        };
        let mut versions = BTreeMap::new();
        loop {
            let batch = store.write(|txn| txn.migrate_batch(&info, budget))?;
            if !batch.exists {
                break;
            }
            report.batches += 1;
            report.blocks += batch.blocks;
            report.resealed += batch.resealed;
            for (version, events) in batch.events {
                *versions.entry(version).or_insert(0) += events;
                report.events += events;
            }
            report.retired.extend(batch.retired);
            if batch.done {
                break;
            }
        }
        report.versions = versions.into_iter().collect();

        let mut view = store.snapshot()?;
        report.verify = view.verify()?;
        if let Some(tag) = view.stream_tag(&info)? {
            let mut aligned = AlignedVec::<16>::new();
            let problems = view.check_migrated(tag, info.block_fingerprint(), |payload| {
                aligned.clear();
                aligned.extend_from_slice(payload);
                rkyv::access::<E::Archived, rancor::Error>(&aligned)
                    .map(|_| ())
                    .map_err(|e| format!("not a valid event of the current version: {e}"))
            })?;
            report.verify.problems.extend(problems);
        }
        report.duration = started.elapsed();
        Ok(report)
    }
}
