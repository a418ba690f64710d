//! Backups, incremental exports and restores.
//!
//! - [`Varve::backup`](crate::Varve::backup) writes a **full backup**: a
//!   directory holding a compacted copy of the store (`data.mdb`, taken by
//!   LMDB in one read transaction while writers go on), the store's identity
//!   record (`varvedb.id`: a backup *is* the store) and a manifest
//!   (`backup.manifest`) naming the store, its format, the log's end, the
//!   event and block counts and two digests. A backup is itself a store:
//!   [`Varve::open_read_only`](crate::Varve::open_read_only) reads it.
//! - [`Varve::export`](crate::Varve::export) writes a **segment**: the
//!   blocks from a position on, byte for byte, and the catalog, in a
//!   versioned file whose starting digest must equal the end digest of what
//!   it continues (a backup or the previous segment).
//! - [`Varve::restore`](crate::Varve::restore) rebuilds a store from a
//!   backup and a chain of segments, up to a point in time if asked, into a
//!   new directory, and checks it.
//!
//! ## The log digest
//!
//! Content is compared by a **log digest**: a chain over the log's blocks in
//! order, `D(0) = 0` and `D(next) = XXH3-128(D | first global (BE) | length
//! (LE) | block bytes)`. It names the log at a position whatever the
//! segmentation: a backup records `D(end)`, a segment `D(from)` and `D(to)`,
//! and a restore recomputes it from the restored store. XXH3-128 because the
//! crate already depends on XXH3, it hashes at memory speed (the digest adds
//! little to reading the blocks), and 128 bits make an accidental collision
//! negligible. It protects against damage and mix-ups, **not** against
//! someone forging a backup: sign the manifest for that.

mod copy;
mod import_v04;
mod restore;
mod segment;

pub use import_v04::{ImportOptions, ImportPhase, ImportProgress, ImportReport};

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::position::GlobalSequence;
use crate::storage::StoreId;

pub use copy::{BackupPhase, BackupProgress, BackupReport};
pub use restore::RestoreReport;
pub use segment::{ExportFollower, ExportReport, SegmentInfo};

/// The name of a backup's manifest inside its directory.
pub const MANIFEST_FILE: &str = "backup.manifest";

const MANIFEST_HEADER: &str = "varvedb backup manifest 1";

/// A log digest: names the content of the log up to a position.
///
/// A chain over the log's blocks in order: `D(0) = 0` and `D(next) =
/// XXH3-128(D | first global (BE) | length (LE) | block bytes)`. It depends
/// only on the log's content, not on how it was cut into backups and
/// segments: a backup records `D(end)`, a segment `D(from)` and `D(to)`, and a
/// restore recomputes it from the restored store. It guards against damage and
/// mix-ups, not against forgery (sign manifests for that). Displays as 32 hex
/// digits.
///
/// ```
/// let zero = varvedb::LogDigest::default();
/// assert_eq!(zero.to_string(), "0".repeat(32));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LogDigest(pub [u8; 16]);

impl LogDigest {
    /// The digest after one more block (`first_global` is its key).
    pub(crate) fn chain(self, first_global: u64, block: &[u8]) -> LogDigest {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.0);
        h.update(&first_global.to_be_bytes());
        h.update(&(block.len() as u64).to_le_bytes());
        h.update(block);
        LogDigest(h.digest128().to_le_bytes())
    }

    fn parse(hex: &str) -> Option<LogDigest> {
        parse_hex::<16>(hex).map(LogDigest)
    }
}

impl fmt::Display for LogDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for LogDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogDigest({self})")
    }
}

fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// What a full backup's manifest (`backup.manifest`) records.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct Tick { n: u32 }
/// # let dir = tempfile::tempdir().unwrap();
/// # let varve = varvedb::Varve::new(dir.path().join("store"))?;
/// # varve.stream::<Tick, 16>("ticks")?.append(varvedb::StreamId(1), &Tick { n: 1 })?;
/// varve.backup(dir.path().join("backup"))?;
/// let manifest = varvedb::BackupManifest::read(dir.path().join("backup"))?;
/// assert_eq!((manifest.store_id, manifest.end.0), (varve.store_id(), 1));
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupManifest {
    /// The store backed up.
    pub store_id: StoreId,
    /// Its on-disk format version.
    pub format: u32,
    /// When the backup was taken (µs since the Unix epoch).
    pub taken_micros: u64,
    /// One past the last global sequence in the backup.
    pub end: GlobalSequence,
    /// Events in the backup (equal to `end`: sequences are dense).
    pub events: u64,
    /// Blocks (appends) in the backup.
    pub blocks: u64,
    /// The size of the backup's `data.mdb`.
    pub data_bytes: u64,
    /// The [log digest](crate::LogDigest) at `end`.
    pub log_digest: LogDigest,
    /// XXH3-128 of the whole `data.mdb` file, for damage anywhere in it.
    pub data_digest: LogDigest,
    /// The head of the store's tamper-evident chain at `end`, for a chained
    /// store (see [`Varve::head_digest`](crate::Varve::head_digest)): keep it
    /// elsewhere and [`Varve::verify_extends`](crate::Varve::verify_extends)
    /// checks any later state of the store, or this backup, against it.
    pub chain_head: Option<crate::HeadDigest>,
}

impl BackupManifest {
    /// Reads and checks the manifest of the backup in directory `dir`.
    ///
    /// # Errors
    /// [`Error::BackupDamaged`] if it is missing (an unfinished or foreign
    /// directory), malformed, or fails its checksum.
    pub fn read(dir: impl AsRef<Path>) -> Result<BackupManifest> {
        let dir = dir.as_ref();
        let path = dir.join(MANIFEST_FILE);
        let damaged = |detail: String| Error::BackupDamaged {
            path: dir.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| damaged(format!("cannot read {MANIFEST_FILE}: {e}")))?;
        let Some(at) = text.rfind("checksum: ") else {
            return Err(damaged("the manifest has no checksum line".into()));
        };
        let (body, sum) = text.split_at(at);
        let sum = sum["checksum: ".len()..].trim();
        if format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body.as_bytes())) != sum {
            return Err(damaged("the manifest fails its checksum".into()));
        }
        let mut lines = body.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(damaged(
                "not a varvedb backup manifest (or a newer version)".into(),
            ));
        }
        let fields: std::collections::HashMap<&str, &str> =
            lines.filter_map(|l| l.split_once(": ")).collect();
        let field = |name: &str| {
            fields
                .get(name)
                .copied()
                .ok_or_else(|| damaged(format!("the manifest has no `{name}`")))
        };
        let number = |name: &str| {
            field(name)?
                .parse::<u64>()
                .map_err(|_| damaged(format!("the manifest's `{name}` is not a number")))
        };
        let digest = |name: &str| {
            LogDigest::parse(field(name)?)
                .ok_or_else(|| damaged(format!("the manifest's `{name}` is not a digest")))
        };
        Ok(BackupManifest {
            store_id: parse_hex::<16>(field("store-id")?)
                .map(StoreId::from_bytes)
                .ok_or_else(|| damaged("the manifest's `store-id` is malformed".into()))?,
            format: u32::try_from(number("format")?)
                .map_err(|_| damaged("the manifest's `format` is out of range".into()))?,
            taken_micros: number("taken-micros")?,
            end: GlobalSequence(number("end")?),
            events: number("events")?,
            blocks: number("blocks")?,
            data_bytes: number("data-bytes")?,
            log_digest: digest("log-digest")?,
            data_digest: digest("data-digest")?,
            // Optional: absent from manifests of unchained stores and of
            // builds from before the chain.
            chain_head: match fields.get("chain-head") {
                None => None,
                Some(text) => Some(text.parse().map_err(|_| {
                    damaged("the manifest's `chain-head` is not a head digest".into())
                })?),
            },
        })
    }

    fn encode(&self) -> String {
        let body = format!(
            "{MANIFEST_HEADER}\nstore-id: {}\nformat: {}\ntaken-micros: {}\nend: {}\n\
             events: {}\nblocks: {}\ndata-bytes: {}\nlog-digest: {}\ndata-digest: {}\n",
            self.store_id,
            self.format,
            self.taken_micros,
            self.end.0,
            self.events,
            self.blocks,
            self.data_bytes,
            self.log_digest,
            self.data_digest,
        );
        let body = match &self.chain_head {
            Some(head) => format!("{body}chain-head: {head}\n"),
            None => body,
        };
        let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
        format!("{body}checksum: {sum:016x}\n")
    }
}

// ---------------------------------------------------------------------------
// Reading the log in short snapshots
// ---------------------------------------------------------------------------

/// Blocks read per snapshot: a long walk never pins old pages (nor holds off
/// map growth) for long.
const BLOCKS_PER_SNAPSHOT: usize = 4096;

/// Calls `f(first global, end global, block bytes)` for each block of `[from, to)`, in
/// order, each snapshot reading at most [`BLOCKS_PER_SNAPSHOT`] blocks.
/// `from` and `to` must be block boundaries; a hole in the log is
/// `Corruption`.
fn walk_blocks(
    store: &std::sync::Arc<crate::storage::Store>,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, u64, &[u8]) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut next = from;
    let mut stop = false;
    while next < to && !stop {
        let view = store.snapshot()?;
        let mut read = 0;
        view.for_each_block(next, |key, end, bytes| {
            if key >= to {
                return Ok(ControlFlow::Break(()));
            }
            if key != next {
                return Err(Error::Corruption {
                    location: crate::Location::Global(GlobalSequence(next)),
                    detail: format!("the log has no block here (the next one is at {key})"),
                });
            }
            if f(key, end, bytes)?.is_break() {
                stop = true;
                return Ok(ControlFlow::Break(()));
            }
            next = end;
            read += 1;
            Ok(if read == BLOCKS_PER_SNAPSHOT {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        if read == 0 && next < to && !stop {
            return Err(Error::Corruption {
                location: crate::Location::Global(GlobalSequence(next)),
                detail: format!("the log ends here, before {to}"),
            });
        }
    }
    Ok(())
}

/// The [log digest](crate::LogDigest) of `store` at `to` (a block
/// boundary) and the number of blocks before it; `progress(position)`.
fn digest_log(
    store: &std::sync::Arc<crate::storage::Store>,
    to: u64,
    mut progress: impl FnMut(u64),
) -> Result<(LogDigest, u64)> {
    let mut digest = LogDigest::default();
    let mut blocks = 0u64;
    walk_blocks(store, 0, to, |key, _, bytes| {
        digest = digest.chain(key, bytes);
        blocks += 1;
        if blocks.is_multiple_of(1024) {
            progress(key);
        }
        Ok(ControlFlow::Continue(()))
    })?;
    progress(to);
    Ok((digest, blocks))
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// XXH3-128 of a whole file, read in 1 MiB pieces; `progress(bytes read)`.
fn file_digest(path: &Path, mut progress: impl FnMut(u64)) -> Result<LogDigest> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        read += n as u64;
        progress(read);
    }
    Ok(LogDigest(h.digest128().to_le_bytes()))
}

/// Writes `bytes` to `dir/name` durably: a temporary file, synced, renamed.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let io = io_error(&tmp);
    let mut file = File::create(&tmp).map_err(&io)?;
    file.write_all(bytes).map_err(&io)?;
    file.sync_all().map_err(&io)?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
    crate::storage::sync_dir(dir).map_err(io_error(dir))
}

/// A fresh, empty working directory beside `dest`, removed on drop unless
/// [`Staging::publish`]ed. Work happens there, so a crash (even `kill -9`)
/// never leaves a half-written backup, segment or restore under `dest`'s
/// name: only a `.NAME.partial-*` directory, which no reader mistakes for a
/// finished one (it has no manifest).
struct Staging {
    dir: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl Staging {
    /// Refuses a `dest` that exists (unless `allow_empty_dir` and it is an
    /// empty directory).
    fn new(dest: &Path, allow_empty_dir: bool) -> Result<Staging> {
        check_free(dest, allow_empty_dir)?;
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Open {
                path: dest.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the destination has no file name",
                ),
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!(".{name}.partial-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io_error(&dir))?;
        Ok(Staging {
            dir,
            dest: dest.to_path_buf(),
            published: false,
        })
    }

    /// Syncs the staging directory, renames it to `dest` and syncs the
    /// parent: the destination appears whole or not at all.
    fn publish(mut self, allow_empty_dir: bool) -> Result<()> {
        crate::storage::sync_dir(&self.dir).map_err(io_error(&self.dir))?;
        // Checked again: `rename` replaces an empty directory, never a
        // non-empty one, so a finished backup (never empty) is never lost;
        // this check turns the race into a typed error.
        check_free(&self.dest, allow_empty_dir)?;
        std::fs::rename(&self.dir, &self.dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                || e.kind() == std::io::ErrorKind::AlreadyExists
            {
                Error::DestinationExists {
                    path: self.dest.clone(),
                }
            } else {
                io_error(&self.dest)(e)
            }
        })?;
        self.published = true;
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        crate::storage::sync_dir(parent).map_err(io_error(parent))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn check_free(dest: &Path, allow_empty_dir: bool) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(dest)(e)),
        Ok(meta)
            if allow_empty_dir
                && meta.is_dir()
                && std::fs::read_dir(dest)
                    .map_err(io_error(dest))?
                    .next()
                    .is_none() =>
        {
            Ok(())
        }
        Ok(_) => Err(Error::DestinationExists {
            path: dest.to_path_buf(),
        }),
    }
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Bytes per second, for reports.
fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-9)
}
