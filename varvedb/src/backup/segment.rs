//! Segments: the log from a position on, for incremental backups.
//!
//! A segment file (version 1, or 2 when it carries chain records; little
//! endian unless said otherwise):
//!
//! ```text
//! header  (64 bytes): magic "VARVESEG" | version u32 | 0 u32 | store id [16] |
//!                     from u64 | start digest [16] | XXH3-64 of the 56 bytes before
//! records           : 0x01 | first global u64 | length u32 | block bytes
//!                     0x02 | key length u32 | value length u32 | key | value   (catalog)
//!                     0x03 | length u32 | chain value        (v2: of the next block,
//!                                                             when a migration re-sealed it)
//!                     0x04 | number u64 | length u32 | re-seal record   (v2)
//!                     0xff                                                      (end)
//! trailer (64 bytes): magic "VARVEEND" | to u64 | blocks u64 | catalog records u64 |
//!                     end digest [16] | XXH3-128 of every byte of the file before it
//! ```
//!
//! `from`/`to` are the global sequences the blocks cover (`[from, to)`), the
//! start digest is the [log digest](crate::LogDigest) at `from` (the end
//! digest of the backup or segment it continues) and the end digest the log
//! digest at `to`. Blocks are the source's bytes, unchanged.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{digest_log, io_error, walk_blocks, BackupManifest, LogDigest, Staging};
use crate::error::{Error, Result};
use crate::position::GlobalSequence;
use crate::storage::StoreId;
use crate::store::Varve;

const MAGIC: &[u8; 8] = b"VARVESEG";
const END_MAGIC: &[u8; 8] = b"VARVEEND";
const VERSION: u32 = 1;
/// The version of a segment with chain records (0x03, 0x04), which a
/// version-1 reader must refuse rather than skip.
const VERSION_CHAIN: u32 = 2;
const HEADER_LEN: usize = 64;
const TRAILER_LEN: usize = 64;
const BLOCK: u8 = 0x01;
const CATALOG: u8 = 0x02;
const CHAIN: u8 = 0x03;
const RESEAL: u8 = 0x04;
const END: u8 = 0xff;

/// What a segment file's header and trailer say, once its checksums passed
/// ([`SegmentInfo::read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// The store it belongs to.
    pub store_id: StoreId,
    /// The first global sequence it holds.
    pub from: GlobalSequence,
    /// One past the last global sequence it holds.
    pub to: GlobalSequence,
    /// Blocks it holds.
    pub blocks: u64,
    /// Catalog records it holds.
    pub catalog_records: u64,
    /// The log digest at `from`: the end digest of what it continues.
    pub start_digest: LogDigest,
    /// The log digest at `to`.
    pub end_digest: LogDigest,
}

/// What [`Varve::export`] wrote.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExportReport {
    /// The segment written.
    pub segment: SegmentInfo,
    /// Its size in bytes.
    pub bytes: u64,
    /// How long the export took.
    pub duration: Duration,
}

impl ExportReport {
    /// Events in the segment.
    pub fn events(&self) -> u64 {
        self.segment.to.0 - self.segment.from.0
    }
}

fn damaged(path: &Path, detail: impl Into<String>) -> Error {
    Error::BackupDamaged {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn digest_at(b: &[u8], at: usize) -> LogDigest {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[at..at + 16]);
    LogDigest(x)
}

impl SegmentInfo {
    /// Reads a segment's header and trailer and checks the whole file's
    /// checksum (reading it once).
    ///
    /// # Errors
    /// [`Error::BackupDamaged`] for a file that is not a segment, of an
    /// unknown version, cut short, or whose bytes fail the checksum.
    pub fn read(path: impl AsRef<Path>) -> Result<SegmentInfo> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len < (HEADER_LEN + 1 + TRAILER_LEN) as u64 {
            return Err(damaged(
                path,
                format!("{len} bytes is too short for a segment"),
            ));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header).map_err(io_error(path))?;
        if &header[..8] != MAGIC {
            return Err(damaged(path, "not a varvedb segment (bad magic)"));
        }
        if xxhash_rust::xxh3::xxh3_64(&header[..56]) != u64_at(&header, 56) {
            return Err(damaged(path, "the segment header fails its checksum"));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != VERSION && version != VERSION_CHAIN {
            return Err(damaged(
                path,
                format!(
                    "segment version {version}; this build reads versions {VERSION} and \
                     {VERSION_CHAIN}"
                ),
            ));
        }
        // The whole file's checksum, streamed.
        file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
        let body_len = len - 16;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut reader = BufReader::with_capacity(1 << 20, &mut file).take(body_len);
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(io_error(path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            read += n as u64;
        }
        if read != body_len {
            return Err(damaged(path, "the segment was cut short while being read"));
        }
        let mut tail = [0u8; TRAILER_LEN];
        file.seek(SeekFrom::Start(len - TRAILER_LEN as u64))
            .map_err(io_error(path))?;
        file.read_exact(&mut tail).map_err(io_error(path))?;
        if h.digest128().to_le_bytes()[..] != tail[TRAILER_LEN - 16..] {
            return Err(damaged(
                path,
                "the segment fails its checksum (damaged or cut short)",
            ));
        }
        let trailer = &tail[..TRAILER_LEN - 16];
        if &trailer[..8] != END_MAGIC {
            return Err(damaged(path, "the segment has no trailer"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&header[16..32]);
        let info = SegmentInfo {
            path: path.to_path_buf(),
            store_id: StoreId::from_bytes(id),
            from: GlobalSequence(u64_at(&header, 32)),
            to: GlobalSequence(u64_at(trailer, 8)),
            blocks: u64_at(trailer, 16),
            catalog_records: u64_at(trailer, 24),
            start_digest: digest_at(&header, 40),
            end_digest: digest_at(trailer, 32),
        };
        if info.to < info.from {
            return Err(damaged(path, "the segment ends before it starts"));
        }
        Ok(info)
    }

    /// Calls `f` for each record, in file order (the file's checksum was
    /// checked by [`SegmentInfo::read`]; records are still bounds-checked).
    pub(crate) fn for_each_record(
        &self,
        mut f: impl FnMut(Record<'_>) -> Result<bool>,
    ) -> Result<()> {
        let path = &self.path;
        let file = File::open(path).map_err(io_error(path))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        r.seek(SeekFrom::Start(HEADER_LEN as u64))
            .map_err(io_error(path))?;
        let cut = |e: std::io::Error| damaged(path, format!("a record is cut short: {e}"));
        let mut buf = Vec::new();
        let mut key = Vec::new();
        loop {
            let mut kind = [0u8; 1];
            r.read_exact(&mut kind).map_err(cut)?;
            let go_on = match kind[0] {
                BLOCK => {
                    let mut head = [0u8; 12];
                    r.read_exact(&mut head).map_err(cut)?;
                    let global = u64_at(&head, 0);
                    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
                    buf.resize(len, 0);
                    r.read_exact(&mut buf).map_err(cut)?;
                    f(Record::Block(global, &buf))?
                }
                CATALOG => {
                    let mut head = [0u8; 8];
                    r.read_exact(&mut head).map_err(cut)?;
                    let klen = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    let vlen = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
                    key.resize(klen, 0);
                    r.read_exact(&mut key).map_err(cut)?;
                    buf.resize(vlen, 0);
                    r.read_exact(&mut buf).map_err(cut)?;
                    f(Record::Catalog(&key, &buf))?
                }
                CHAIN => {
                    let mut head = [0u8; 4];
                    r.read_exact(&mut head).map_err(cut)?;
                    buf.resize(u32::from_le_bytes(head) as usize, 0);
                    r.read_exact(&mut buf).map_err(cut)?;
                    f(Record::Chain(&buf))?
                }
                RESEAL => {
                    let mut head = [0u8; 12];
                    r.read_exact(&mut head).map_err(cut)?;
                    let n = u64_at(&head, 0);
                    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
                    buf.resize(len, 0);
                    r.read_exact(&mut buf).map_err(cut)?;
                    f(Record::Reseal(n, &buf))?
                }
                END => return Ok(()),
                other => return Err(damaged(path, format!("unknown record kind {other:#04x}"))),
            };
            if !go_on {
                return Ok(());
            }
        }
    }
}

/// One record of a segment.
pub(crate) enum Record<'a> {
    /// A block: its first global sequence and bytes.
    Block(u64, &'a [u8]),
    /// A catalog record: key and value.
    Catalog(&'a [u8], &'a [u8]),
    /// The source's chain value of the next block (a re-sealed block).
    Chain(&'a [u8]),
    /// A re-seal record of the source: its number and bytes.
    Reseal(u64, &'a [u8]),
}

/// Writes records, hashing every byte written.
struct SegmentWriter {
    out: BufWriter<File>,
    hash: xxhash_rust::xxh3::Xxh3,
    bytes: u64,
    path: PathBuf,
}

impl SegmentWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(io_error(&self.path))
    }
}

impl Varve {
    /// Writes the log from `from` (a block boundary: the end of a backup or
    /// of a previous segment) to the current end into the new segment file
    /// `dest`, with the catalog.
    ///
    /// The starting digest is computed by reading the log before `from`
    /// (in short snapshots); [`Varve::export_after`] takes it from the file
    /// the segment continues instead, reading nothing before `from`. Blocks
    /// are read in short snapshots (4096 blocks each), so an export never
    /// holds old pages or map growth for long.
    ///
    /// ```
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
    /// use varvedb::{GlobalSequence, StreamId, Varve};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let varve = Varve::new(dir.path().join("store"))?;
    /// let mut ticks = varve.stream::<Tick, 16>("ticks")?;
    /// ticks.append(StreamId(1), &Tick { n: 1 })?;
    /// let full = varve.backup(dir.path().join("full"))?;
    /// ticks.append(StreamId(1), &Tick { n: 2 })?;
    /// let seg = varve.export(full.end(), dir.path().join("1.seg"))?;
    /// assert_eq!((seg.segment.from, seg.segment.to), (GlobalSequence(1), GlobalSequence(2)));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DestinationExists`] if `dest` exists; `Corruption` if `from`
    /// is inside a block or past the end of the log.
    pub fn export(&self, from: GlobalSequence, dest: impl AsRef<Path>) -> Result<ExportReport> {
        let started = Instant::now();
        let end = self.global_reader().end()?.0;
        self.check_boundary(from.0, end)?;
        let (start_digest, _) = digest_log(self.store(), from.0, |_| {})?;
        self.export_range(from.0, end, start_digest, dest.as_ref(), started)
    }

    /// [`Varve::export`] continuing `previous`: a backup directory or a
    /// segment file of this store. The segment starts where `previous`
    /// ends, with its end digest.
    ///
    /// # Errors
    /// As [`Varve::export`]; [`Error::ForeignBackup`] if `previous` belongs
    /// to another store; [`Error::BackupDamaged`] if it fails its checks.
    pub fn export_after(
        &self,
        previous: impl AsRef<Path>,
        dest: impl AsRef<Path>,
    ) -> Result<ExportReport> {
        let started = Instant::now();
        let previous = previous.as_ref();
        let (id, from, digest) = if previous.is_dir() {
            let m = BackupManifest::read(previous)?;
            (m.store_id, m.end, m.log_digest)
        } else {
            let s = SegmentInfo::read(previous)?;
            (s.store_id, s.to, s.end_digest)
        };
        if id != self.store_id() {
            return Err(Error::ForeignBackup {
                path: previous.to_path_buf(),
                expected: self.store_id(),
                found: id,
            });
        }
        let end = self.global_reader().end()?.0;
        self.check_boundary(from.0, end)?;
        self.export_range(from.0, end, digest, dest.as_ref(), started)
    }

    fn check_boundary(&self, from: u64, end: u64) -> Result<()> {
        let view = self.store().snapshot()?;
        let fine = from == end || (from < end && view.block_start(from)? == Some(from));
        if fine {
            Ok(())
        } else {
            Err(Error::Corruption {
                location: crate::Location::Global(GlobalSequence(from)),
                detail: format!(
                    "an export must start at a block boundary at or before the log's end ({end})"
                ),
            })
        }
    }

    fn export_range(
        &self,
        from: u64,
        to: u64,
        start_digest: LogDigest,
        dest: &Path,
        started: Instant,
    ) -> Result<ExportReport> {
        // The chain records of this range: the values of re-sealed blocks
        // (whose digests cover the blocks as first written) and the re-seal
        // records themselves, read before the blocks.
        let mut amended = std::collections::BTreeMap::new();
        let mut reseals = Vec::new();
        {
            let view = self.store().snapshot()?;
            view.for_each_reseal(from, |n, record| {
                let block = u64::from_le_bytes(record[..8].try_into().unwrap_or_default());
                if block < to {
                    reseals.push((n, record.to_vec()));
                    if let Some(value) = view.chain_value(block)? {
                        amended.insert(block, value);
                    }
                }
                Ok(())
            })?;
        }
        let version = if reseals.is_empty() {
            VERSION
        } else {
            VERSION_CHAIN
        };
        let _span = crate::trace::span!(
            INFO,
            "varvedb.export",
            dest = crate::trace::display(dest.display()),
            from = from,
            to = to,
        );
        let staging = Staging::new(dest, false)?;
        let path = staging.dir.join("segment");
        let file = File::create(&path).map_err(io_error(&path))?;
        let mut w = SegmentWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hash: xxhash_rust::xxh3::Xxh3::new(),
            bytes: 0,
            path: path.clone(),
        };
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&version.to_le_bytes());
        header[16..32].copy_from_slice(self.store_id().as_bytes());
        header[32..40].copy_from_slice(&from.to_le_bytes());
        header[40..56].copy_from_slice(&start_digest.0);
        let sum = xxhash_rust::xxh3::xxh3_64(&header[..56]);
        header[56..].copy_from_slice(&sum.to_le_bytes());
        w.put(&header)?;
        let mut digest = start_digest;
        let mut blocks = 0u64;
        walk_blocks(self.store(), from, to, |key, _, bytes| {
            let len =
                u32::try_from(bytes.len()).map_err(|_| damaged(&path, "a block over 4 GiB"))?;
            if let Some(value) = amended.get(&key) {
                w.put(&[CHAIN])?;
                w.put(&(value.len() as u32).to_le_bytes())?;
                w.put(value)?;
            }
            w.put(&[BLOCK])?;
            w.put(&key.to_le_bytes())?;
            w.put(&len.to_le_bytes())?;
            w.put(bytes)?;
            digest = digest.chain(key, bytes);
            blocks += 1;
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        for (n, record) in &reseals {
            w.put(&[RESEAL])?;
            w.put(&n.to_le_bytes())?;
            w.put(&(record.len() as u32).to_le_bytes())?;
            w.put(record)?;
        }
        // The catalog after the blocks: every stream a block names was in
        // the catalog by the commit of that block, so this later snapshot
        // holds them all.
        let mut records = Vec::new();
        self.store().snapshot()?.for_each_catalog_record(|k, v| {
            records.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        for (k, v) in &records {
            w.put(&[CATALOG])?;
            w.put(&(k.len() as u32).to_le_bytes())?;
            w.put(&(v.len() as u32).to_le_bytes())?;
            w.put(k)?;
            w.put(v)?;
        }
        w.put(&[END])?;
        let mut trailer = [0u8; TRAILER_LEN - 16];
        trailer[..8].copy_from_slice(END_MAGIC);
        trailer[8..16].copy_from_slice(&to.to_le_bytes());
        trailer[16..24].copy_from_slice(&blocks.to_le_bytes());
        trailer[24..32].copy_from_slice(&(records.len() as u64).to_le_bytes());
        trailer[32..48].copy_from_slice(&digest.0);
        w.put(&trailer)?;
        let sum = w.hash.digest128().to_le_bytes();
        w.out.write_all(&sum).map_err(io_error(&path))?;
        let bytes = w.bytes + 16;
        let file = w
            .out
            .into_inner()
            .map_err(|e| io_error(&path)(e.into_error()))?;
        file.sync_all().map_err(io_error(&path))?;
        drop(file);
        // The segment is a file: publish it by linking it under its name
        // (`link` never replaces an existing file, unlike `rename`), then
        // sync the directory it lands in; the staging directory goes.
        std::fs::hard_link(&path, dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::DestinationExists {
                    path: dest.to_path_buf(),
                }
            } else {
                io_error(dest)(e)
            }
        })?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        crate::storage::sync_dir(parent).map_err(io_error(parent))?;
        drop(staging);
        let report = ExportReport {
            segment: SegmentInfo {
                path: dest.to_path_buf(),
                store_id: self.store_id(),
                from: GlobalSequence(from),
                to: GlobalSequence(to),
                blocks,
                catalog_records: records.len() as u64,
                start_digest,
                end_digest: digest,
            },
            bytes,
            duration: started.elapsed(),
        };
        crate::trace::event!(
            INFO,
            "varvedb.export",
            "segment exported",
            path = crate::trace::display(dest.display()),
            from = from,
            to = to,
            events = report.events(),
            blocks = blocks,
            bytes = report.bytes,
            duration_us = report.duration.as_micros() as u64,
        );
        Ok(report)
    }
}

/// Follows the log, writing a segment whenever new commits land, so a
/// standby copy (a backup plus these segments) lags the store by at most one
/// segment. Made by [`Varve::export_follower`].
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
/// use std::time::Duration;
/// use varvedb::{StreamId, Varve};
/// # let dir = tempfile::tempdir().unwrap();
/// let varve = Varve::new(dir.path().join("store"))?;
/// varve.backup(dir.path().join("full"))?;
/// let mut follower = varve.export_follower(dir.path().join("full"), dir.path().join("segments"))?;
/// assert!(follower.next_segment(Duration::ZERO)?.is_none()); // nothing new
/// varve.stream::<Tick, 16>("ticks")?.append(StreamId(1), &Tick { n: 1 })?;
/// let written = follower.next_segment(Duration::from_secs(5))?.expect("a commit landed");
/// assert_eq!(written.events(), 1);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug)]
pub struct ExportFollower {
    varve: Varve,
    dir: PathBuf,
    last: PathBuf,
    end: GlobalSequence,
}

impl Varve {
    /// An [`ExportFollower`] continuing `previous` (a backup directory or a
    /// segment of this store), writing segments into directory `dir`
    /// (created if needed) named `FROM-TO.seg` with zero-padded positions,
    /// so their names sort in chain order.
    ///
    /// # Errors
    /// As [`Varve::export_after`].
    pub fn export_follower(
        &self,
        previous: impl AsRef<Path>,
        dir: impl AsRef<Path>,
    ) -> Result<ExportFollower> {
        let previous = previous.as_ref();
        let (id, end) = if previous.is_dir() {
            let m = BackupManifest::read(previous)?;
            (m.store_id, m.end)
        } else {
            let s = SegmentInfo::read(previous)?;
            (s.store_id, s.to)
        };
        if id != self.store_id() {
            return Err(Error::ForeignBackup {
                path: previous.to_path_buf(),
                expected: self.store_id(),
                found: id,
            });
        }
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        Ok(ExportFollower {
            varve: self.clone(),
            dir: dir.to_path_buf(),
            last: previous.to_path_buf(),
            end,
        })
    }
}

impl ExportFollower {
    /// Waits up to `timeout` for a commit past the last segment, then writes
    /// one segment holding everything committed by then; `None` if nothing
    /// was committed in time.
    ///
    /// # Errors
    /// As [`Varve::export_after`].
    pub fn next_segment(&mut self, timeout: Duration) -> Result<Option<ExportReport>> {
        let mut news = self.varve.subscribe(self.end);
        if news.next_timeout(timeout)?.is_none() {
            return Ok(None);
        }
        drop(news);
        let end = self.varve.global_reader().end()?;
        let dest = self
            .dir
            .join(format!("{:020}-{:020}.seg", self.end.0, end.0));
        let report = self.varve.export_after(&self.last, &dest)?;
        self.last = report.segment.path.clone();
        self.end = report.segment.to;
        Ok(Some(report))
    }

    /// The last backup or segment written (or continued).
    pub fn last(&self) -> &Path {
        &self.last
    }
}
