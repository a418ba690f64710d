//! [`Varve::backup`]: a hot, consistent, verified full backup.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    digest_log, file_digest, io_error, micros_now, write_durably, BackupManifest, LogDigest,
    Staging, MANIFEST_FILE,
};
use crate::error::{Error, Result};
use crate::position::GlobalSequence;
use crate::storage::{self, Identity, StoreId, DATA_FILE, FORMAT_VERSION};
use crate::store::Varve;

/// What a backup is doing, for [`Varve::backup_with_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupPhase {
    /// LMDB copies the store in one call: no progress is known until it
    /// returns (`done` is 0, `total` is 0), then once with the bytes copied.
    Copying,
    /// Hashing the copy's data file (`done`/`total` in bytes).
    HashingFile,
    /// Walking the copy's log for its digest (`done`/`total` in global
    /// sequences).
    DigestingLog,
    /// Checking the copy's structure ([`Varve::verify`]); no progress within.
    Verifying,
}

/// One progress report of a backup: `done` of `total` in the phase's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupProgress {
    /// The phase.
    pub phase: BackupPhase,
    /// Work done in this phase.
    pub done: u64,
    /// Work of this phase in all (0 while unknown).
    pub total: u64,
}

/// What [`Varve::backup`] wrote.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The backup directory.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: BackupManifest,
    /// The size of the copy's data file.
    pub bytes: u64,
    /// How long the whole backup took (copy, digests, verification).
    pub duration: Duration,
    /// How long LMDB's copy itself took.
    pub copy_duration: Duration,
}

impl BackupReport {
    /// One past the last global sequence the backup holds.
    pub fn end(&self) -> GlobalSequence {
        self.manifest.end
    }

    /// Events in the backup.
    pub fn events(&self) -> u64 {
        self.manifest.events
    }

    /// The copy's throughput in bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        super::rate(self.bytes, self.copy_duration)
    }
}

impl Varve {
    /// Writes a full backup of the store to the new directory `dest`, while
    /// appends go on (here and in other processes). See
    /// [`Varve::backup_with_progress`].
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{StreamId, Varve};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = Varve::new(dir.path().join("store"))?;
    /// varve.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 1 })?;
    /// let report = varve.backup(dir.path().join("backup"))?;
    /// assert_eq!(report.events(), 1);
    /// // A backup is the same store, and never overwritten.
    /// assert_eq!(Varve::open_read_only(dir.path().join("backup"))?.store_id(), varve.store_id());
    /// assert!(matches!(
    ///     varve.backup(dir.path().join("backup")),
    ///     Err(varvedb::Error::DestinationExists { .. })
    /// ));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        self.backup_with_progress(dest, |_| {})
    }

    /// [`Varve::backup`], reporting progress.
    ///
    /// 1. LMDB copies the newest commit, compacted (`mdb_env_copyfd2` with
    ///    `MDB_CP_COMPACT`), in one read transaction: writers go on, the copy
    ///    holds every commit up to the one its transaction saw and nothing
    ///    after. It runs in a staging directory beside `dest`.
    /// 2. The copy is synced, the store's identity record written beside it
    ///    (same store id), and the copy opened read-only: it must pass
    ///    [`Varve::verify`], and its file and log digests are computed.
    /// 3. The manifest is written, the staging directory synced and renamed
    ///    to `dest`, and the parent directory synced. A crash at any point
    ///    leaves no `dest` (only a `.NAME.partial-*` directory to delete).
    ///
    /// While LMDB copies, this process cannot grow its memory map: an
    /// append that needs more map waits for the copy (up to
    /// `resize_wait`, then `MapResizeBlocked`). The copy also keeps its
    /// snapshot's pages from reuse, so the data file may grow meanwhile.
    ///
    /// # Errors
    /// [`Error::DestinationExists`] if `dest` exists; [`Error::BackupDamaged`]
    /// if the copy fails verification; I/O errors as [`Error::Open`].
    pub fn backup_with_progress(
        &self,
        dest: impl AsRef<Path>,
        mut progress: impl FnMut(BackupProgress),
    ) -> Result<BackupReport> {
        let started = Instant::now();
        let dest = dest.as_ref();
        self.store().require_local("a file backup")?;
        let _span = crate::trace::span!(
            INFO,
            "varvedb.backup",
            dest = crate::trace::display(dest.display())
        );
        let staging = Staging::new(dest, false)?;
        let report = |phase, done, total| BackupProgress { phase, done, total };
        progress(report(BackupPhase::Copying, 0, 0));
        let data_path = staging.dir.join(DATA_FILE);
        let mut file = File::create(&data_path).map_err(io_error(&data_path))?;
        let copy_started = Instant::now();
        self.store().copy_compacted(&mut file)?;
        file.sync_all().map_err(io_error(&data_path))?;
        let copy_duration = copy_started.elapsed();
        let bytes = file.metadata().map_err(io_error(&data_path))?.len();
        drop(file);
        progress(report(BackupPhase::Copying, bytes, bytes));

        let created_micros = storage::read_identity(self.path())?.map_or(0, |r| r.created_micros);
        storage::write_identity(
            &staging.dir,
            &Identity {
                id: self.store_id(),
                format: FORMAT_VERSION,
                created_micros,
            },
        )?;
        let data_digest = file_digest(&data_path, |done| {
            progress(report(BackupPhase::HashingFile, done, bytes))
        })?;
        // A keyed chain is checked with this handle's key, if it has one.
        let key = self.store().chain_key();
        let manifest = check_copy(
            &staging.dir,
            self.store_id(),
            key,
            self.store().config().encryption.clone(),
            self.store().config().key_vault.clone(),
            data_digest,
            bytes,
            &mut progress,
        )?;
        write_durably(&staging.dir, MANIFEST_FILE, manifest.encode().as_bytes())?;
        staging.publish(false)?;
        let report = BackupReport {
            path: dest.to_path_buf(),
            manifest,
            bytes,
            duration: started.elapsed(),
            copy_duration,
        };
        crate::trace::event!(
            INFO,
            "varvedb.backup",
            "backup written and verified",
            path = crate::trace::display(dest.display()),
            events = report.events(),
            end = report.end().0,
            bytes = report.bytes,
            copy_us = report.copy_duration.as_micros() as u64,
            duration_us = report.duration.as_micros() as u64,
        );
        Ok(report)
    }
}

/// Opens the copy in `dir` read-only, verifies it and digests its log.
// What opens the copy (its id, chain key, encryption key, key vault) and
// what it is checked against: grouping them would only move the list.
#[allow(clippy::too_many_arguments)]
fn check_copy(
    dir: &Path,
    store_id: StoreId,
    key: Option<[u8; 32]>,
    encryption: Option<crate::EncryptionKey>,
    key_vault: Option<std::path::PathBuf>,
    data_digest: LogDigest,
    bytes: u64,
    mut progress: impl FnMut(BackupProgress),
) -> Result<BackupManifest> {
    let damaged = |detail: String| Error::BackupDamaged {
        path: dir.to_path_buf(),
        detail,
    };
    let config = crate::VarveConfig {
        tamper_evident: key.map(crate::Chain::Keyed),
        // An encrypted store's copy opens with the same key.
        encryption,
        // And with its key vault, whose entity keys its blocks need.
        key_vault,
        ..crate::VarveConfig::default()
    };
    let copy = Varve::open_read_only_with_config(dir, config)?;
    if copy.store_id() != store_id {
        return Err(damaged(format!(
            "the copy names store {}, not {store_id}",
            copy.store_id()
        )));
    }
    let end = copy.global_reader().end()?.0;
    let (log_digest, blocks) = digest_log(copy.store(), end, |done| {
        progress(BackupProgress {
            phase: BackupPhase::DigestingLog,
            done,
            total: end,
        })
    })?;
    progress(BackupProgress {
        phase: BackupPhase::Verifying,
        done: 0,
        total: 0,
    });
    let verified = copy.verify()?;
    if !verified.is_ok() {
        let first = verified.problems.first().map(ToString::to_string);
        return Err(damaged(format!(
            "the copy fails verification ({} problems; first: {})",
            verified.problems.len(),
            first.unwrap_or_default()
        )));
    }
    if verified.events + verified.erased_events != end {
        return Err(damaged(format!(
            "the copy holds {} events but its log ends at {end}",
            verified.events
        )));
    }
    let chain_head = copy.head_digest()?;
    drop(copy);
    // The read-only open made LMDB's lock file; it is no part of a backup.
    let _ = std::fs::remove_file(dir.join("lock.mdb"));
    Ok(BackupManifest {
        store_id,
        format: FORMAT_VERSION,
        taken_micros: micros_now(),
        end: GlobalSequence(end),
        events: end,
        blocks,
        data_bytes: bytes,
        log_digest,
        data_digest,
        chain_head,
    })
}
