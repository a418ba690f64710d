//! What a store's files must be before LMDB maps them.
//!
//! Two checks run at open, with plain file reads, before `mdb_env_open` sees
//! the data file:
//!
//! - **Length.** LMDB maps `data.mdb` and reads pages through the map; a page
//!   past the end of a truncated file is not an error but a `SIGBUS`. The
//!   newer of the two meta pages names the last page its commit uses
//!   (`mm_last_pg`), so the file must hold `(last_pg + 1) * page_size` bytes.
//!   LMDB may legitimately leave the file shorter: pages a transaction
//!   allocated at the end and freed again before committing are never written
//!   and go to the free list. So when the file is short, the free list (read
//!   with plain reads too) must name every missing page, or the file is
//!   [`Error::Truncated`].
//! - **Identity.** `varvedb.id` beside the data file, written when the store
//!   is created, records a random [`StoreId`] that the `meta` database also
//!   holds. A data file that is missing or empty while the identity record
//!   exists is a lost store, never a new one; a data file whose id disagrees
//!   belongs to another store.
//!
//! The meta page layout is LMDB's (`mdb.c`, `MDB_page` and `MDB_meta`), for
//! 64-bit little-endian Unix builds; elsewhere the length check is skipped.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::Path;
#[cfg(not(unix))]
use std::path::PathBuf;

use crate::error::{Error, Location, Result};

/// The name of LMDB's data file inside a store directory.
pub(crate) const DATA_FILE: &str = "data.mdb";
/// The name of the identity record inside a store directory.
pub(crate) const IDENTITY_FILE: &str = "varvedb.id";

/// A store's identity: 16 random bytes chosen when it was created.
///
/// The same id is kept in the store's data file and in `varvedb.id` beside it,
/// so a data file that went missing, was emptied, or was copied in from
/// another store is recognised at open. Backups and encryption keys name the
/// store by it. It displays as 32 lowercase hex digits.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let varve = varvedb::Varve::new(dir.path())?;
/// let id = varve.store_id();
/// assert_eq!(id.to_string().len(), 32);
/// drop(varve);
/// assert_eq!(varvedb::Varve::new(dir.path())?.store_id(), id);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId([u8; 16]);

impl StoreId {
    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// An id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> StoreId {
        StoreId(bytes)
    }

    /// A fresh random id from the operating system's generator.
    pub(crate) fn random(dir: &Path) -> Result<StoreId> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| Error::Open {
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!("cannot draw a random store id: {e}")),
        })?;
        Ok(StoreId(bytes))
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreId({self})")
    }
}

// ---------------------------------------------------------------------------
// The identity record
// ---------------------------------------------------------------------------

const RECORD_MAGIC: &[u8; 8] = b"VARVEID\0";
const RECORD_VERSION: u32 = 1;
const RECORD_LEN: usize = 48;

/// The contents of `varvedb.id`.
///
/// ```text
/// magic "VARVEID\0" | record version u32 | store format u32 | store id [16] |
/// created (µs since the epoch) u64 | XXH3-64 of the 40 bytes before it
/// ```
/// (little endian, 48 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) id: StoreId,
    pub(crate) format: u32,
    pub(crate) created_micros: u64,
}

impl Identity {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[..8].copy_from_slice(RECORD_MAGIC);
        b[8..12].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.format.to_le_bytes());
        b[16..32].copy_from_slice(&self.id.0);
        b[32..40].copy_from_slice(&self.created_micros.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..40]);
        b[40..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Identity> {
        if b.len() != RECORD_LEN || &b[..8] != RECORD_MAGIC {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        if u64_at(40) != xxhash_rust::xxh3::xxh3_64(&b[..40]) || u32_at(8) != RECORD_VERSION {
            return None;
        }
        Some(Identity {
            id: StoreId(b[16..32].try_into().ok()?),
            format: u32_at(12),
            created_micros: u64_at(32),
        })
    }
}

/// Reads `varvedb.id` in `dir`: `None` if there is none.
pub(crate) fn read_identity(dir: &Path) -> Result<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Identity::decode(&bytes)
            .map(Some)
            .ok_or_else(|| Error::Corruption {
                location: Location::Record(format!("the store identity record {}", path.display())),
                detail: format!(
                "{} bytes that are not a valid identity record (bad magic, version or checksum)",
                bytes.len()
            ),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Open { path, source }),
    }
}

/// Writes `varvedb.id` in `dir` atomically and durably, never replacing one
/// that is there: a temporary file of this process's own, synced, linked to
/// the name (which fails if the name exists), then the directory synced.
///
/// Several processes may open a new store at once and each find no record:
/// the first link wins, and the others accept the record it wrote if it names
/// the same store (it does: every one read the id from the same data file).
/// A process that dies midway leaves at most its temporary file, never a
/// partial record under the real name.
pub(crate) fn write_identity(dir: &Path, identity: &Identity) -> Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = dir.join(IDENTITY_FILE);
    let unique = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        "{IDENTITY_FILE}.{}.{unique}.tmp",
        std::process::id()
    ));
    let io = |source| Error::Open {
        path: path.clone(),
        source,
    };
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&identity.encode())?;
        file.sync_all()?;
        drop(file);
        std::fs::hard_link(&tmp, &path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => sync_dir(dir).map_err(io),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => match read_identity(dir)? {
            Some(record) if record.id == identity.id => sync_dir(dir).map_err(io),
            // The record beside the data file names another store.
            Some(record) => Err(Error::StoreMismatch {
                path: dir.to_path_buf(),
                expected: record.id,
                found: Some(identity.id),
            }),
            // It was there, and is gone again: someone is removing the store.
            None => Err(io(e)),
        },
        Err(e) => Err(io(e)),
    }
}

#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------
// The data file
// ---------------------------------------------------------------------------

/// What is at `data.mdb` before LMDB opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataFile {
    /// No file.
    Missing,
    /// A file of zero bytes (LMDB would initialize it as a new store).
    Empty,
    /// A file too short to hold its two meta pages: a store another process
    /// is creating right now, or a damaged one. LMDB's own header check (plain
    /// reads, under its lock) refuses it before mapping anything.
    Partial {
        /// The least a data file can be.
        expected: u64,
        /// Its length.
        actual: u64,
    },
    /// A file that holds every page its newest commit uses.
    Whole,
}

/// Which file a path names: device and inode on Unix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileKey(#[cfg(unix)] (u64, u64), #[cfg(not(unix))] PathBuf);

/// The identity of the data file in `dir`, `None` if there is none.
pub(crate) fn data_file_key(dir: &Path) -> Result<Option<FileKey>> {
    let path = dir.join(DATA_FILE);
    match std::fs::metadata(&path) {
        #[cfg(unix)]
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            Ok(Some(FileKey((meta.dev(), meta.ino()))))
        }
        #[cfg(not(unix))]
        Ok(_) => Ok(Some(FileKey(path))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Open { path, source }),
    }
}

/// Checks the data file in `dir` is long enough for its newest commit.
///
/// # Errors
/// [`Error::Truncated`] if pages the newest commit uses lie past the end of
/// the file, [`Error::Corruption`] if a meta page is not LMDB's.
pub(crate) fn check_data_file(dir: &Path) -> Result<DataFile> {
    let path = dir.join(DATA_FILE);
    match File::open(&path) {
        Ok(file) => check_open_file(&file, &path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(DataFile::Missing),
        Err(source) => Err(Error::Open { path, source }),
    }
}

/// As [`check_data_file`], for an open data file (`path` names it in errors).
///
/// Reads the two meta pages, then the file's length (in that order: a writer
/// in another process only ever grows the file, so a length read after the
/// meta pages covers them). Reads again if a commit lands while the free
/// list is being read.
pub(crate) fn check_open_file(file: &File, path: &Path) -> Result<DataFile> {
    let mut last = (0, 0);
    for _ in 0..8 {
        match check_once(file, path)? {
            Checked::Done(state) => return Ok(state),
            Checked::Short {
                expected,
                actual,
                moved: false,
            } => {
                return Err(Error::Truncated {
                    path: path.to_path_buf(),
                    expected,
                    actual,
                })
            }
            // A commit landed while the free list was read: read again.
            Checked::Short {
                expected, actual, ..
            } => last = (expected, actual),
        }
    }
    Err(Error::Truncated {
        path: path.to_path_buf(),
        expected: last.0,
        actual: last.1,
    })
}

/// The identity of an open file.
/// Whether `file` (the open data file) has been unlinked: its directory was
/// deleted or the file removed while the store is open. One `fstat`, so cheap
/// beside a commit's sync.
#[cfg(unix)]
pub(crate) fn is_unlinked(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| m.nlink() == 0)
}

/// Elsewhere an open file cannot be unlinked.
#[cfg(not(unix))]
pub(crate) fn is_unlinked(_: &File) -> bool {
    false
}

pub(crate) fn file_key(file: &File, path: &Path) -> Result<FileKey> {
    let meta = file.metadata().map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(FileKey((meta.dev(), meta.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Ok(FileKey(path.to_path_buf()))
    }
}

enum Checked {
    Done(DataFile),
    /// Too short, and the free list does not account for the missing pages;
    /// `moved` if a commit landed meanwhile, so the verdict may be stale.
    Short {
        expected: u64,
        actual: u64,
        moved: bool,
    },
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata().map(|m| m.len()).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Open {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(detail: String) -> Error {
    Error::Corruption {
        location: Location::Record("the LMDB data file".into()),
        detail,
    }
}

#[cfg(not(all(unix, target_pointer_width = "64", target_endian = "little")))]
fn check_once(file: &File, path: &Path) -> Result<Checked> {
    let len = file.metadata().map_err(io_err(path))?.len();
    Ok(Checked::Done(if len == 0 {
        DataFile::Empty
    } else {
        DataFile::Whole
    }))
}

#[cfg(all(unix, target_pointer_width = "64", target_endian = "little"))]
fn check_once(file: &File, path: &Path) -> Result<Checked> {
    use lmdb_layout::*;

    let mut head = [0u8; META_END];
    let got = read_at(file, 0, &mut head).map_err(io_err(path))?;
    if got == 0 {
        return Ok(Checked::Done(DataFile::Empty));
    }
    if got < META_END {
        return Ok(Checked::Done(DataFile::Partial {
            expected: MIN_FILE,
            actual: file_len(file, path)?,
        }));
    }
    let meta0 = Meta::parse(&head, 0)?;
    let psize = u64::from(meta0.psize);
    let mut second = [0u8; META_END];
    if read_at(file, psize, &mut second).map_err(io_err(path))? < META_END {
        return Ok(Checked::Done(DataFile::Partial {
            expected: 2 * psize,
            actual: file_len(file, path)?,
        }));
    }
    let meta1 = Meta::parse(&second, 1)?;
    // LMDB's choice (`mdb_env_read_header`): the higher transaction id, meta 0 on a tie.
    let meta = if meta1.txnid > meta0.txnid {
        meta1
    } else {
        meta0
    };
    let actual = file_len(file, path)?;
    let expected = meta.last_pg.saturating_add(1).saturating_mul(psize);
    if actual >= expected {
        return Ok(Checked::Done(DataFile::Whole));
    }
    // Short: fine only if every missing page is on the free list.
    if free_pages_cover(file, &meta, psize, actual / psize, actual) {
        return Ok(Checked::Done(DataFile::Whole));
    }
    // Did a commit land meanwhile? Then the free list we read may be mixed.
    let mut again = [0u8; META_END];
    let moved = [0u64, psize].into_iter().any(|off| {
        read_at(file, off, &mut again).ok() != Some(META_END)
            || Meta::parse(&again, 0).map_or(true, |m| m.txnid > meta.txnid)
    });
    Ok(Checked::Short {
        expected,
        actual,
        moved,
    })
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many were read
/// (fewer only at the end of the file).
#[cfg(all(unix, target_pointer_width = "64", target_endian = "little"))]
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether LMDB's free list (the `FREE_DBI` tree of `meta`) names every page
/// from `first_missing` to `meta.last_pg`. Any page of the tree that cannot be
/// read, or does not parse, makes the answer "no".
#[cfg(all(unix, target_pointer_width = "64", target_endian = "little"))]
fn free_pages_cover(
    file: &File,
    meta: &lmdb_layout::Meta,
    psize: u64,
    first_missing: u64,
    file_len: u64,
) -> bool {
    use lmdb_layout::*;

    // Every page the free list names is an 8-byte id stored in the file, so
    // a file of `file_len` bytes can account for at most `file_len / 8`
    // missing pages: a larger gap (a damaged `last_pg`) is never covered, and
    // nothing below is sized by numbers read from disk.
    let Some(missing) = meta
        .last_pg
        .checked_add(1)
        .and_then(|end| end.checked_sub(first_missing))
    else {
        return false;
    };
    if missing > file_len / 8 || meta.free_root == P_INVALID {
        return false;
    }
    let mut found = std::collections::BTreeSet::new();
    // Ids read in all, bounded so that a damaged tree that points many nodes
    // at one large overflow page cannot make the walk take forever.
    let mut budget = 4 * (file_len / 8);
    let mut mark = |pgno: u64| -> bool {
        if (first_missing..=meta.last_pg).contains(&pgno) {
            found.insert(pgno);
        }
        budget = budget.saturating_sub(1);
        budget > 0
    };
    let file_pages = file_len / psize;
    let psize_usize = psize as usize;
    let mut page = vec![0u8; psize_usize];
    // (page number, level): level counts down to the leaves at 1.
    let mut stack = vec![(meta.free_root, meta.free_depth)];
    let mut visited = 0u64;
    while let Some((pgno, level)) = stack.pop() {
        visited += 1;
        if level == 0 || visited > file_pages || pgno > meta.last_pg {
            return false;
        }
        let Some(offset) = pgno.checked_mul(psize) else {
            return false;
        };
        if offset.saturating_add(psize) > file_len
            || read_at(file, offset, &mut page).ok() != Some(psize_usize)
        {
            return false;
        }
        let flags = u16_at(&page, 10);
        let lower = usize::from(u16_at(&page, 12));
        if lower < PAGEHDRSZ || lower > psize_usize {
            return false;
        }
        let keys = (lower - PAGEHDRSZ) / 2;
        let branch = flags & P_BRANCH != 0;
        if branch == (level == 1) || (!branch && flags & P_LEAF == 0) {
            return false;
        }
        for i in 0..keys {
            let node = usize::from(u16_at(&page, PAGEHDRSZ + 2 * i));
            if node + NODESIZE > psize_usize {
                return false;
            }
            let lo = u64::from(u16_at(&page, node));
            let hi = u64::from(u16_at(&page, node + 2));
            let nflags = u16_at(&page, node + 4);
            let ksize = usize::from(u16_at(&page, node + 6));
            if branch {
                stack.push((lo | hi << 16 | u64::from(nflags) << 32, level - 1));
                continue;
            }
            let dsize = (lo | hi << 16) as usize;
            let data_at = node + NODESIZE + ksize;
            let ids: Vec<u8> = if nflags & F_BIGDATA != 0 {
                if data_at + 8 > psize_usize {
                    return false;
                }
                let ov = u64_at(&page, data_at);
                let end = ov
                    .checked_mul(psize)
                    .and_then(|o| o.checked_add((PAGEHDRSZ + dsize) as u64));
                if ov > meta.last_pg || end.is_none_or(|end| end > file_len) {
                    return false;
                }
                let mut buf = vec![0u8; PAGEHDRSZ + dsize];
                if read_at(file, ov * psize, &mut buf).ok() != Some(buf.len())
                    || u16_at(&buf, 10) & P_OVERFLOW == 0
                {
                    return false;
                }
                buf.split_off(PAGEHDRSZ)
            } else {
                if data_at + dsize > psize_usize {
                    return false;
                }
                page[data_at..data_at + dsize].to_vec()
            };
            // An ID list: a count, then that many page numbers.
            if ids.len() < 8 {
                return false;
            }
            let count = u64_at(&ids, 0);
            if count.saturating_add(1).saturating_mul(8) > ids.len() as u64 {
                return false;
            }
            for k in 1..=count as usize {
                if !mark(u64_at(&ids, 8 * k)) {
                    return false;
                }
            }
        }
    }
    found.len() as u64 == missing
}

/// LMDB's on-disk layout (`mdb.c`), 64-bit builds.
#[cfg(all(unix, target_pointer_width = "64", target_endian = "little"))]
mod lmdb_layout {
    use super::corrupt;
    use crate::error::Result;

    /// `offsetof(MDB_page, mp_ptrs)`.
    pub(super) const PAGEHDRSZ: usize = 16;
    /// `offsetof(MDB_node, mn_data)`.
    pub(super) const NODESIZE: usize = 8;
    pub(super) const P_BRANCH: u16 = 0x01;
    pub(super) const P_LEAF: u16 = 0x02;
    pub(super) const P_OVERFLOW: u16 = 0x04;
    const P_META: u16 = 0x08;
    pub(super) const F_BIGDATA: u16 = 0x01;
    pub(super) const P_INVALID: u64 = u64::MAX;
    const MDB_MAGIC: u32 = 0xBEEF_C0DE;
    const MDB_DATA_VERSION: u32 = 1;
    /// One past the last byte of `MDB_meta` within its page.
    pub(super) const META_END: usize = PAGEHDRSZ + 136;
    /// The least a data file can be: two meta pages of LMDB's smallest page.
    pub(super) const MIN_FILE: u64 = 2 * 4096;

    // Offsets within the page: MDB_meta starts at PAGEHDRSZ with magic u32,
    // version u32, address u64, mapsize u64, then two MDB_db of 48 bytes
    // (pad u32 (= page size for the free db), flags u16, depth u16, branch,
    // leaf and overflow page counts, entries, root: u64 each), last_pg u64,
    // txnid u64.
    const MAGIC: usize = PAGEHDRSZ;
    const VERSION: usize = PAGEHDRSZ + 4;
    const FREE_DB: usize = PAGEHDRSZ + 24;
    const PSIZE: usize = FREE_DB;
    const FREE_DEPTH: usize = FREE_DB + 6;
    const FREE_ROOT: usize = FREE_DB + 40;
    const LAST_PG: usize = PAGEHDRSZ + 120;
    const TXNID: usize = PAGEHDRSZ + 128;

    pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }

    /// The fields of one meta page this check needs.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Meta {
        pub(super) psize: u32,
        pub(super) last_pg: u64,
        pub(super) txnid: u64,
        pub(super) free_root: u64,
        pub(super) free_depth: u16,
    }

    impl Meta {
        /// Parses meta page `n` from its first `META_END` bytes, with LMDB's
        /// own validity checks.
        pub(super) fn parse(b: &[u8; META_END], n: u32) -> Result<Meta> {
            if u16_at(b, 10) & P_META == 0 {
                return Err(corrupt(format!("page {n} is not an LMDB meta page")));
            }
            if u32_at(b, MAGIC) != MDB_MAGIC {
                return Err(corrupt(format!("meta page {n} has no LMDB magic number")));
            }
            let version = u32_at(b, VERSION);
            if version != MDB_DATA_VERSION {
                return Err(corrupt(format!(
                    "meta page {n} is of LMDB data format {version}, not {MDB_DATA_VERSION}"
                )));
            }
            let psize = u32_at(b, PSIZE);
            if !psize.is_power_of_two() || !(512..=65536).contains(&psize) {
                return Err(corrupt(format!(
                    "meta page {n} records an impossible page size of {psize} bytes"
                )));
            }
            Ok(Meta {
                psize,
                last_pg: u64_at(b, LAST_PG),
                txnid: u64_at(b, TXNID),
                free_root: u64_at(b, FREE_ROOT),
                free_depth: u16_at(b, FREE_DEPTH),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_record_round_trips_and_any_flipped_bit_is_refused() {
        let identity = Identity {
            id: StoreId([7; 16]),
            format: 1,
            created_micros: 1_700_000_000_000_000,
        };
        let bytes = identity.encode();
        assert_eq!(Identity::decode(&bytes), Some(identity));
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes;
            damaged[i / 8] ^= 1 << (i % 8);
            assert_eq!(Identity::decode(&damaged), None, "bit {i}");
        }
        assert_eq!(Identity::decode(&bytes[..47]), None);
    }

    #[test]
    fn a_store_id_displays_as_32_hex_digits() {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xab;
        bytes[15] = 0x01;
        assert_eq!(
            StoreId(bytes).to_string(),
            "ab000000000000000000000000000001"
        );
    }
}
