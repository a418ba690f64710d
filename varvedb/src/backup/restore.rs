//! [`Varve::restore`]: a store rebuilt from a backup and segments.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::segment::Record;
use super::{
    digest_log, file_digest, io_error, walk_blocks, BackupManifest, LogDigest, SegmentInfo, Staging,
};
use crate::config::VarveConfig;
use crate::error::{Error, Result};
use crate::position::GlobalSequence;
use crate::storage::{self, Access, Store, StoreId, DATA_FILE, FORMAT_VERSION};
use crate::store::Varve;

/// Bytes of blocks written per transaction while restoring.
const CHUNK_BYTES: usize = 4 << 20;

/// What [`Varve::restore`] rebuilt.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The restored store's directory.
    pub path: PathBuf,
    /// Its id (the backup's).
    pub store_id: StoreId,
    /// One past its last global sequence.
    pub end: GlobalSequence,
    /// Events it holds (equal to `end`).
    pub events: u64,
    /// Blocks written on top of the backup's data file (all of them when
    /// `rebuilt`).
    pub blocks_applied: u64,
    /// Segments whose blocks were applied (wholly or up to `until`).
    pub segments_applied: usize,
    /// Whether the store was rebuilt block by block from the backup (a
    /// point in time before the backup's end) instead of starting from a
    /// copy of its data file. A rebuilt store holds the log and catalog
    /// only: no aggregate snapshots, no projection checkpoints or models
    /// (projections start over, which is right for a log cut short).
    pub rebuilt: bool,
    /// The log digest of the restored store, recomputed from it.
    pub log_digest: LogDigest,
    /// The head of the restored store's tamper-evident chain, for a chained
    /// store: the same blocks of the same store, with the same re-seals, give
    /// the same digests as the source's (verified from its genesis before the
    /// restore is published).
    pub chain_head: Option<crate::HeadDigest>,
    /// How long the restore took.
    pub duration: Duration,
}

/// Where blocks go while restoring: a store, written a chunk at a time.
struct Sink {
    varve: Varve,
    /// Blocks, each with the source's chain value when it was re-sealed.
    chunk: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
    bytes: usize,
    digest: LogDigest,
    blocks: u64,
    end: u64,
}

impl Sink {
    fn block(&mut self, key: u64, end: u64, bytes: &[u8], chain: Option<Vec<u8>>) -> Result<()> {
        self.digest = self.digest.chain(key, bytes);
        self.blocks += 1;
        self.end = end;
        self.bytes += bytes.len();
        self.chunk.push((key, bytes.to_vec(), chain));
        if self.bytes >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.bytes = 0;
        self.varve.store().write(|txn| {
            for (key, bytes, chain) in &chunk {
                txn.import_block(*key, bytes, chain.as_deref())?;
            }
            Ok(())
        })
    }

    /// Copies the source's re-seal records (after the blocks they name).
    fn reseals(&mut self, records: &[(u64, Vec<u8>)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.flush()?;
        self.varve.store().write(|txn| {
            for (n, record) in records {
                txn.import_reseal(*n, record)?;
            }
            Ok(())
        })
    }

    fn catalog(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.flush()?;
        self.varve.store().write(|txn| {
            for (k, v) in records {
                txn.import_catalog_record(k, v)?;
            }
            Ok(())
        })
    }
}

impl Varve {
    /// Restores the full backup `backup`, then the chain of `segments` (in
    /// order), into `dest`, a new or empty directory, up to (not including)
    /// global sequence `until` if given.
    ///
    /// Before writing anything it checks the backup's manifest and the
    /// digest of its data file, and each segment's checksum, store id and
    /// place in the chain (each must start where the previous ends, with
    /// the same log digest). Appends are atomic, so a restore stops *before*
    /// a batch that `until` would cut: the report's `end` may be below
    /// `until`. Restoring to a point before the backup's end rebuilds the
    /// store from the backup's blocks (see [`RestoreReport::rebuilt`]).
    ///
    /// The result is opened, [verified](Varve::verify), and its log digest
    /// recomputed and compared with the digests recorded in the backup and
    /// segments, before it is moved to `dest` (syncing files and
    /// directories). A crash leaves no `dest`.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{GlobalSequence, StreamId, Varve};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = Varve::new(dir.path().join("store"))?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append(StreamId(1), &Tick { n: 1 })?;
    /// varve.backup(dir.path().join("full"))?;
    /// ticks.append(StreamId(1), &Tick { n: 2 })?;
    /// ticks.append(StreamId(1), &Tick { n: 3 })?;
    /// varve.export_after(dir.path().join("full"), dir.path().join("1.seg"))?;
    ///
    /// let restored = Varve::restore(
    ///     dir.path().join("full"),
    ///     [dir.path().join("1.seg")],
    ///     dir.path().join("restored"),
    ///     Some(GlobalSequence(2)),
    /// )?;
    /// assert_eq!(restored.end, GlobalSequence(2));
    /// assert_eq!(Varve::new(dir.path().join("restored"))?.store_id(), varve.store_id());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DestinationExists`] if `dest` is neither absent nor an empty
    /// directory; [`Error::BackupDamaged`] for a damaged backup or segment,
    /// or a result that fails its checks; [`Error::ForeignBackup`],
    /// [`Error::SegmentMissing`] and [`Error::SegmentOutOfOrder`] for
    /// segments that do not continue the chain.
    pub fn restore<P: AsRef<Path>>(
        backup: impl AsRef<Path>,
        segments: impl IntoIterator<Item = P>,
        dest: impl AsRef<Path>,
        until: Option<GlobalSequence>,
    ) -> Result<RestoreReport> {
        Varve::restore_with_config(backup, segments, dest, until, VarveConfig::default())
    }

    /// [`Varve::restore`], opening the restored store with `config`: a
    /// store with a keyed tamper-evident chain needs its key there
    /// (`VarveConfig::tamper_evident(Chain::Keyed(key))`) to chain the
    /// blocks it appends. The restored store keeps the source's id, blocks
    /// and re-seal records, so its chain digests are the source's, and every
    /// head the source handed out up to the restored end still verifies
    /// against it; the whole chain is recomputed from its genesis before the
    /// restore is published.
    ///
    /// # Errors
    /// As [`Varve::restore`];
    /// [`Error::ChainKeyRequired`](crate::Error::ChainKeyRequired) for a
    /// keyed chain without its key; [`Error::ChainKeyMismatch`](
    /// crate::Error::ChainKeyMismatch) for a wrong one;
    /// [`Error::BackupDamaged`] for a segment whose re-seal records do not
    /// continue the backup's (a migration after the backup re-sealed
    /// blocks the backup holds: take a new full backup after a migration).
    pub fn restore_with_config<P: AsRef<Path>>(
        backup: impl AsRef<Path>,
        segments: impl IntoIterator<Item = P>,
        dest: impl AsRef<Path>,
        until: Option<GlobalSequence>,
        config: VarveConfig,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let backup = backup.as_ref();
        let dest = dest.as_ref();
        let _span = crate::trace::span!(
            INFO,
            "varvedb.restore",
            backup = crate::trace::display(backup.display()),
            dest = crate::trace::display(dest.display()),
        );
        let manifest = BackupManifest::read(backup)?;
        if !(storage::OLDEST_FORMAT..=FORMAT_VERSION).contains(&manifest.format) {
            return Err(Error::UnsupportedFormat {
                path: backup.to_path_buf(),
                found: manifest.format,
                supported: FORMAT_VERSION,
            });
        }
        let damaged = |path: &Path, detail: String| Error::BackupDamaged {
            path: path.to_path_buf(),
            detail,
        };
        let data = backup.join(DATA_FILE);
        if file_digest(&data, |_| {})? != manifest.data_digest {
            return Err(damaged(
                backup,
                "its data file does not match the digest in its manifest".into(),
            ));
        }
        // The whole chain is checked before anything is written.
        let mut chain = Vec::new();
        let (mut at, mut digest) = (manifest.end, manifest.log_digest);
        for path in segments {
            let info = SegmentInfo::read(path.as_ref())?;
            if info.store_id != manifest.store_id {
                return Err(Error::ForeignBackup {
                    path: info.path,
                    expected: manifest.store_id,
                    found: info.store_id,
                });
            }
            if info.from > at {
                return Err(Error::SegmentMissing {
                    path: info.path,
                    expected_from: at,
                    found_from: info.from,
                });
            }
            if info.from < at || info.start_digest != digest {
                return Err(Error::SegmentOutOfOrder {
                    path: info.path,
                    expected_from: at,
                    found_from: info.from,
                });
            }
            (at, digest) = (info.to, info.end_digest);
            chain.push(info);
        }

        let limit = until.map_or(u64::MAX, |u| u.0);
        let staging = Staging::new(dest, true)?;
        let identity = storage::read_identity(backup)?
            .ok_or_else(|| damaged(backup, "it has no identity record (varvedb.id)".into()))?;
        let rebuilt = limit < manifest.end.0;
        let mut sink = if rebuilt {
            rebuild_from_backup(backup, &staging.dir, identity, limit, &config)?
        } else {
            let copy = staging.dir.join(DATA_FILE);
            std::fs::copy(&data, &copy).map_err(io_error(&copy))?;
            std::fs::File::open(&copy)
                .and_then(|f| f.sync_all())
                .map_err(io_error(&copy))?;
            storage::write_identity(&staging.dir, &identity)?;
            let varve = Varve::with_config(&staging.dir, config.clone())?;
            Sink {
                varve,
                chunk: Vec::new(),
                bytes: 0,
                digest: manifest.log_digest,
                blocks: 0,
                end: manifest.end.0,
            }
        };

        let mut applied = 0;
        for info in &chain {
            if sink.end >= limit || rebuilt {
                break;
            }
            let mut catalog = Vec::new();
            let mut reseals = Vec::new();
            let mut chain = None;
            let mut cut = false;
            let mut blocks = 0u64;
            info.for_each_record(|record| {
                match record {
                    Record::Chain(value) => chain = Some(value.to_vec()),
                    Record::Reseal(n, bytes) => reseals.push((n, bytes.to_vec())),
                    Record::Block(key, bytes) => {
                        // The header only: an encrypted store's block is
                        // opened (and wholly checked) when it is imported.
                        let header = storage::block::parse_header(key, bytes)
                            .map_err(|e| damaged(&info.path, format!("block at {key}: {}", e.0)))?;
                        let end = header.end_global();
                        if end > limit {
                            cut = true;
                            return Ok(true); // the catalog records follow
                        }
                        if !cut {
                            sink.block(key, end, bytes, chain.take())?;
                            blocks += 1;
                        }
                    }
                    Record::Catalog(k, v) => catalog.push((k.to_vec(), v.to_vec())),
                }
                Ok(true)
            })?;
            sink.catalog(&catalog)?;
            sink.reseals(&reseals).map_err(|e| {
                damaged(
                    &info.path,
                    format!(
                        "its re-seal records do not continue the store's ({e}): a migration \
                         after the backup re-sealed blocks it holds; restore from a full \
                         backup taken after the migration"
                    ),
                )
            })?;
            applied += 1;
            if !cut
                && (blocks != info.blocks
                    || sink.digest != info.end_digest
                    || sink.end != info.to.0)
            {
                return Err(damaged(
                    &info.path,
                    "its blocks do not add up to the digest in its trailer".into(),
                ));
            }
            if cut {
                break;
            }
        }
        sink.flush()?;

        // Check the result from scratch.
        let varve = sink.varve;
        let end = varve.global_reader().end()?.0;
        let verified = varve.verify()?;
        if !verified.is_ok() || verified.events + verified.erased_events != end {
            return Err(damaged(
                dest,
                format!(
                    "the restored store fails verification: {}",
                    verified
                        .problems
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| format!("{} events, end {end}", verified.events))
                ),
            ));
        }
        let (log_digest, _) = digest_log(varve.store(), end, |_| {})?;
        let chain_head = varve.head_digest()?;
        if !rebuilt && sink.blocks == 0 && chain_head != manifest.chain_head {
            return Err(damaged(
                dest,
                "the restored chain's head differs from the backup's manifest".into(),
            ));
        }
        if log_digest != sink.digest || end != sink.end {
            return Err(damaged(
                dest,
                "the restored log's digest differs from the backup's and segments'".into(),
            ));
        }
        let store_id = varve.store_id();
        drop(varve);
        staging.publish(true)?;
        let report = RestoreReport {
            path: dest.to_path_buf(),
            store_id,
            end: GlobalSequence(end),
            events: end,
            blocks_applied: sink.blocks,
            segments_applied: applied,
            rebuilt,
            log_digest,
            chain_head,
            duration: started.elapsed(),
        };
        crate::trace::event!(
            INFO,
            "varvedb.restore",
            "store restored and verified",
            path = crate::trace::display(dest.display()),
            events = report.events,
            blocks = report.blocks_applied,
            segments = report.segments_applied as u64,
            rebuilt = report.rebuilt,
            duration_us = report.duration.as_micros() as u64,
        );
        Ok(report)
    }
}

impl Varve {
    /// [`Varve::restore_with_config`] into a store sealed under a new master
    /// key `key`, with fresh data keys and a fresh stream-name key: a
    /// *re-keying* restore. `config` opens the backup (the source's key, if
    /// it is encrypted, and a keyed chain's key); a plaintext backup comes
    /// out encrypted (a conversion).
    ///
    /// The backup and segments are restored (and checked) as by
    /// [`Varve::restore_with_config`] into a scratch directory beside `dest`,
    /// then every block, stream name and `state` value is opened and sealed
    /// anew into a second one, which is verified and renamed to `dest`; the
    /// scratch directory is removed. A crash leaves no `dest` (only
    /// `.NAME.partial-*` directories). The new store keeps the source's id,
    /// events, positions, event ids and entity keys. Its data file never
    /// held anything sealed with the old keys (no old pages linger in it).
    ///
    /// A chained store keeps its chain digests and re-seal records, and each
    /// block gets one more re-seal record (from its old sealed bytes to its
    /// new ones): `verify` passes and a head held from before the restore
    /// still verifies ([`Varve::verify_extends`]); the new store's own head
    /// counts the extra re-seals. The report's log digest is the new
    /// store's (its stored bytes differ from the backup's, so it is not the
    /// manifest's), and segments exported from the source can no longer be
    /// applied to it: take a new full backup.
    ///
    /// ```
    /// use varvedb::{EncryptionKey, StreamId, Varve, VarveConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let plain = Varve::with_config(dir.path().join("plain"), VarveConfig::default())?;
    /// # if plain.is_encrypted() { return Ok(()); } // the suite's encrypted run
    /// plain.stream::<u64, 8>("ticks")?.append(StreamId(1), &7)?;
    /// plain.backup(dir.path().join("full"))?;
    /// let key = EncryptionKey::from_bytes([9; 32]);
    /// Varve::restore_rekeyed(
    ///     dir.path().join("full"),
    ///     Vec::<std::path::PathBuf>::new(),
    ///     dir.path().join("encrypted"),
    ///     None,
    ///     VarveConfig::default(),
    ///     key.clone(),
    /// )?;
    /// let varve = Varve::with_config(dir.path().join("encrypted"), VarveConfig::encryption(key))?;
    /// assert!(varve.is_encrypted());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Varve::restore_with_config`]; [`Error::Unauthentic`] or
    /// [`Error::Corruption`] for a block or value that does not open.
    pub fn restore_rekeyed<P: AsRef<Path>>(
        backup: impl AsRef<Path>,
        segments: impl IntoIterator<Item = P>,
        dest: impl AsRef<Path>,
        until: Option<GlobalSequence>,
        config: VarveConfig,
        key: crate::EncryptionKey,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let dest = dest.as_ref();
        let staging = Staging::new(dest, true)?;
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let scratch = Staging::new(&dest.with_file_name(format!(".{name}.rekey-source")), false)?;
        let source_dir = scratch.dir.join("store");
        let mut report =
            Varve::restore_with_config(backup, segments, &source_dir, until, config.clone())?;
        let source = Varve::with_config(&source_dir, config.clone())?;
        let view = source.store().snapshot()?;
        let tamper_evident = match view.chain_mode()? {
            None => None,
            Some(crate::ChainMode::Plain) => Some(crate::Chain::Plain),
            Some(crate::ChainMode::Keyed) => match source.store().chain_key() {
                Some(key) => Some(crate::Chain::Keyed(key)),
                None => {
                    return Err(Error::ChainKeyRequired {
                        path: dest.to_path_buf(),
                        operation: "restoring a keyed chain",
                    })
                }
            },
        };
        drop(view);
        let identity =
            storage::read_identity(&source_dir)?.ok_or_else(|| Error::BackupDamaged {
                path: source_dir.clone(),
                detail: "the restored store has no identity record (varvedb.id)".into(),
            })?;
        let store = Store::open_as(
            &staging.dir,
            VarveConfig {
                tamper_evident,
                encryption: Some(key),
                ..config
            },
            Access::ReadWrite,
            Some(storage::Seed {
                identity,
                keys: Vec::new(),
            }),
        )?;
        let target = Varve::from_store(store);
        storage::rekey::copy_resealed(source.store(), target.store())?;
        drop(source);
        let end = target.global_reader().end()?.0;
        let verified = target.verify()?;
        if !verified.is_ok() || verified.events != end || end != report.end.0 {
            return Err(Error::BackupDamaged {
                path: dest.to_path_buf(),
                detail: format!(
                    "the re-keyed store fails verification: {}",
                    verified
                        .problems
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| format!(
                            "{} events, end {end}, {} restored",
                            verified.events, report.end.0
                        ))
                ),
            });
        }
        let (log_digest, _) = digest_log(target.store(), end, |_| {})?;
        report.log_digest = log_digest;
        report.chain_head = target.head_digest()?;
        drop(target);
        staging.publish(true)?;
        drop(scratch);
        report.path = dest.to_path_buf();
        report.duration = started.elapsed();
        Ok(report)
    }
}

/// A new store in `dir` with the backup's identity, holding the backup's
/// blocks that end at or before `limit`, and its catalog.
fn rebuild_from_backup(
    backup: &Path,
    dir: &Path,
    identity: storage::Identity,
    limit: u64,
    config: &VarveConfig,
) -> Result<Sink> {
    let source = Varve::open_read_only_with_config(backup, config.clone())?;
    // The new store keeps the backup's chain, if it has one: the same id and
    // blocks give the same digests.
    let view = source.store().snapshot()?;
    let tamper_evident = match view.chain_mode()? {
        None => None,
        Some(crate::ChainMode::Plain) => Some(crate::Chain::Plain),
        Some(crate::ChainMode::Keyed) => match source.store().chain_key() {
            Some(key) => Some(crate::Chain::Keyed(key)),
            None => {
                return Err(Error::ChainKeyRequired {
                    path: backup.to_path_buf(),
                    operation: "restoring a keyed chain",
                })
            }
        },
    };
    let mut amended = std::collections::HashMap::new();
    let mut reseals = Vec::new();
    view.for_each_reseal(0, |n, record| {
        let block = u64::from_le_bytes(record[..8].try_into().unwrap_or_default());
        reseals.push((n, record.to_vec()));
        if let Some(value) = view.chain_value(block)? {
            amended.insert(block, value);
        }
        Ok(())
    })?;
    // An encrypted source's keys come along: its blocks are copied sealed.
    let keys = view.key_records()?;
    drop(view);
    // A source without a vault record (a backup taken before the store had
    // its vault) holds no entity-sealed block: the copy is rebuilt without
    // the vault, or its open (the store still empty) would record the vault
    // with a since of 0, below the pre-vault blocks copied in next. Its
    // first writable open with the vault records its own end.
    let has_vault = keys
        .iter()
        .any(|(k, _)| k.as_slice() == storage::vault::VAULT_RECORD);
    let store = Store::open_as(
        dir,
        VarveConfig {
            tamper_evident,
            key_vault: config.key_vault.clone().filter(|_| has_vault),
            ..config.clone()
        },
        Access::ReadWrite,
        Some(storage::Seed { identity, keys }),
    )?;
    let mut sink = Sink {
        varve: Varve::from_store(store),
        chunk: Vec::new(),
        bytes: 0,
        digest: LogDigest::default(),
        blocks: 0,
        end: 0,
    };
    let end = source.global_reader().end()?.0;
    walk_blocks(source.store(), 0, end, |key, block_end, bytes| {
        if block_end > limit {
            return Ok(ControlFlow::Break(()));
        }
        sink.block(key, block_end, bytes, amended.remove(&key))?;
        Ok(ControlFlow::Continue(()))
    })?;
    // Every re-seal record, those of blocks past `limit` included: the
    // chain of re-seals stays the source's, so heads it handed out still
    // verify (`verify` passes over records of blocks past the end).
    sink.reseals(&reseals)?;
    let mut records = Vec::new();
    source.store().snapshot()?.for_each_catalog_record(|k, v| {
        records.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    sink.catalog(&records)?;
    // The read-only open may have made LMDB's lock file in the backup: it
    // is left there (another process may be reading the backup too).
    drop(source);
    Ok(sink)
}
