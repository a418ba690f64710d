//! [`Varve::migrate`]: rewriting every old-version event of a stream into the
//! current version, in place.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::error::Result;
use crate::event::Event;
use crate::position::GlobalSequence;
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

/// How far a migration has come, for [`Varve::migrate_with_progress`]
/// (called after each batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateProgress {
    /// The next global sequence to examine: every block of the stream
    /// before it is of the current version.
    pub position: GlobalSequence,
    /// The log's end as this process last saw it (appends may move it on).
    pub end: GlobalSequence,
    /// Events rewritten so far.
    pub events: u64,
    /// Blocks rewritten so far.
    pub blocks: u64,
}

/// What a migration of a stream would rewrite, counted without writing by
/// [`Varve::migration_plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationPlan {
    /// The stream.
    pub stream: String,
    /// Whether the stream exists.
    pub exists: bool,
    /// The version a migration writes (the program's current one).
    pub version: u32,
    /// `(version, events)` of each older version the stream holds, oldest
    /// first.
    pub versions: Vec<(u32, u64)>,
    /// Events of older versions (the sum of [`MigrationPlan::versions`]):
    /// what a migration would rewrite.
    pub events: u64,
    /// Events already of the current version.
    pub current: u64,
    /// Blocks a migration would rewrite: those of older versions, and
    /// blocks of the current version written before the stream recorded
    /// its event family (only their fingerprint changes).
    pub blocks: u64,
}

impl MigrationPlan {
    /// Whether a migration has anything to rewrite.
    pub fn is_needed(&self) -> bool {
        self.blocks > 0
    }
}

impl Varve {
    /// Counts what [`Varve::migrate`] would rewrite in `E`'s stream,
    /// without writing: events per older version, events already current,
    /// blocks to rewrite. One walk of the log's block headers in one read
    /// snapshot (no payload is read), so it works on a read-only store
    /// beside the application (the `varvedb migrate --dry-run` count).
    ///
    /// ```
    /// use rkyv::{Archive, Serialize};
    /// use varvedb::{Event, StreamId, Upcast, Varve};
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
    /// let old = [v1::Deposited { cents: 5 }, v1::Deposited { cents: 7 }];
    /// varve.events::<v1::Deposited>()?.append_batch(StreamId(1), &old)?;
    ///
    /// let plan = varve.migration_plan::<Deposited>()?;
    /// assert_eq!((plan.versions.as_slice(), plan.blocks), (&[(1, 2)][..], 1));
    /// varve.migrate::<Deposited>()?;
    /// assert!(!varve.migration_plan::<Deposited>()?.is_needed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Varve::migrate_with`]'s checks, before anything is written.
    pub fn migration_plan<E: Event>(&self) -> Result<MigrationPlan> {
        self.migration_plan_with::<E>(&MigrateOptions::default())
    }

    /// [`Varve::migration_plan`] of the stream `options` names.
    pub fn migration_plan_with<E: Event>(&self, options: &MigrateOptions) -> Result<MigrationPlan> {
        let store = self.store();
        let name = options.stream.as_deref().unwrap_or(E::STREAM);
        let info = store.open_stream(name, &typed::identity::<E>())?;
        let mut plan = MigrationPlan {
            stream: name.to_string(),
            version: E::VERSION,
            ..MigrationPlan::default()
        };
        if let Some(counted) = store.snapshot()?.migration_plan(&info)? {
            plan.exists = true;
            plan.versions = counted.events.into_iter().collect();
            plan.events = plan.versions.iter().map(|(_, n)| n).sum();
            plan.current = counted.current;
            plan.blocks = counted.blocks;
        }
        Ok(plan)
    }

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
        self.migrate_with_progress::<E>(options, |_| {})
    }

    /// [`Varve::migrate_with`], calling `progress` after each batch
    /// committed (for a progress bar: [`MigrateProgress::position`] out of
    /// [`MigrateProgress::end`]).
    ///
    /// # Errors
    /// As [`Varve::migrate_with`].
    pub fn migrate_with_progress<E: Event>(
        &self,
        options: MigrateOptions,
        mut progress: impl FnMut(MigrateProgress),
    ) -> Result<MigrationReport> {
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
        let _span = crate::trace::span!(INFO, "varvedb.migrate", stream = name);
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
            progress(MigrateProgress {
                position: GlobalSequence(batch.position),
                end: GlobalSequence(store.log_end().max(batch.position)),
                events: report.events,
                blocks: report.blocks,
            });
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
        crate::trace::event!(
            INFO,
            "varvedb.migrate",
            "stream migrated",
            stream = name,
            events = report.events,
            blocks = report.blocks,
            batches = report.batches,
            problems = report.verify.problems.len() as u64,
            duration_us = report.duration.as_micros() as u64,
        );
        Ok(report)
    }
}
