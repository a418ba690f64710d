//! LMDB's reader table, read from `lock.mdb` with plain reads: who holds a
//! reader slot (process, thread, snapshot) and whether that process is
//! alive, as LMDB's own `mdb_reader_list` and `mdb_reader_check` see it.
//!
//! heed exposes neither, so the table is parsed here. Its layout is
//! LMDB's `MDB_txninfo` (`mdb.c`), which the lock file describes itself:
//! the second word of the file (`mtb_format`) encodes the lock version, the
//! cache line, the sizes of a process id, a thread id and a transaction id,
//! and the size and alignment of the POSIX mutexes in the header. A file
//! whose format is not one this code can lay out (another lock version,
//! semaphores instead of mutexes, other sizes) is refused with
//! `Error::ReaderTable`, never guessed at.
//!
//! ```text
//! MDB_txbody   magic u32 | format u32 | last txn id u64 | slots used u32 | reader mutex
//!              (padded to a cache line)
//! writer mutex (padded to a cache line)
//! MDB_reader * n: txn id u64 (u64::MAX: no snapshot) | pid i32 | thread id u64,
//!              each padded to a cache line
//! ```
//!
//! A process is alive while it holds LMDB's `fcntl` lock on byte `pid` of
//! the lock file (taken by its first reader, dropped at exit, even by
//! `kill -9`): the same probe `mdb_reader_check` makes.
//!
//! POSIX drops *all* of a process's `fcntl` locks on a file when the process
//! closes *any* descriptor of it, so opening `lock.mdb` here and closing it
//! would silently remove this process's own LMDB locks if it had the store
//! open. The table is therefore read only by a process that does not have
//! the store open (checked under the registry's lock, so no open races it).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::registry;
use crate::error::{Error, Result};

/// LMDB's `MDB_MAGIC`.
const MAGIC: u32 = 0xBEEF_C0DE;
/// LMDB's `MDB_LOCK_VERSION` (not a development build).
const LOCK_VERSION: u32 = 2;
/// Bits of the format word that hold the lock version.
const VERSION_BITS: u32 = 12;
const CACHELINE: usize = 64;
/// The lock file's name in a store directory.
const LOCK_FILE: &str = "lock.mdb";

/// One taken slot of the reader table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) pid: i32,
    pub(crate) thread: u64,
    /// The snapshot's transaction id, `None` when the slot's thread has no
    /// snapshot open (LMDB keeps a thread's slot between snapshots).
    pub(crate) txn: Option<u64>,
    pub(crate) alive: bool,
}

/// The reader table of a store, as read from its lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// The newest committed transaction's id (as the lock file records it).
    pub(crate) last_txn: u64,
    /// Slots ever used: LMDB's high-water mark, never lowered.
    pub(crate) used: u32,
    /// Slots the lock file holds (the `max_readers` of the process that
    /// created it).
    pub(crate) capacity: u32,
    /// The slots a process holds, in table order.
    pub(crate) slots: Vec<Slot>,
}

fn refuse(dir: &Path, detail: impl Into<String>) -> Error {
    Error::ReaderTable {
        path: dir.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads the reader table of the store in `dir`.
pub(crate) fn read(dir: &Path) -> Result<Table> {
    let open_error = |path: PathBuf| move |source| Error::Open { path, source };
    let canonical = dir.canonicalize().map_err(open_error(dir.to_path_buf()))?;
    // Held while the lock file is open: no store of this directory can be
    // opened by this process until it is closed again.
    let mut open = registry::lock();
    if open.any_at(&canonical) {
        return Err(refuse(
            dir,
            "this process has the store open, and closing a second descriptor of \
             lock.mdb would drop its LMDB locks; list the slots from another process \
             (`varvedb readers`)",
        ));
    }
    if let Some(key) = super::identity::data_file_key(&canonical)? {
        if open.get(&key).is_some() {
            return Err(refuse(dir, "this process has the store open (moved here)"));
        }
    }
    let path = canonical.join(LOCK_FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        // No process opened the store with a lock file here: no slots.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && canonical.join(super::DATA_FILE).is_file() =>
        {
            return Ok(Table {
                last_txn: 0,
                used: 0,
                capacity: 0,
                slots: Vec::new(),
            })
        }
        Err(source) => return Err(Error::Open { path, source }),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(open_error(path.clone()))?;
    let mut table = parse(&bytes).map_err(|detail| refuse(dir, detail))?;
    for slot in &mut table.slots {
        slot.alive = pid_alive(&file, slot.pid).map_err(open_error(path.clone()))?;
    }
    drop(file);
    drop(open);
    Ok(table)
}

/// The layout of a lock file whose format word is `format`: the offset of
/// the first reader slot, or why it cannot be laid out.
fn layout(format: u32) -> std::result::Result<usize, String> {
    let version = format % (1 << VERSION_BITS);
    if version != LOCK_VERSION {
        return Err(format!(
            "lock file version {version}, this build reads version {LOCK_VERSION}"
        ));
    }
    let desc = format >> VERSION_BITS;
    // A mixed-radix number below 2^15 (LMDB's `MDB_lock_desc`), then flags.
    let low = desc & 0x7fff;
    let cacheline_is_64 = low.is_multiple_of(6);
    let pid_words = low / 6 % 3;
    let thread_words = low / 18 % 5;
    let txbody_lines = low / 90 % 3;
    let lock_type = low / 270 % 120;
    let wide_txnid = desc >> 15 & 1 == 1;
    let big_reader = desc >> 16 & 1 == 1;
    let pid_lock = desc >> 17 & 1 == 1;
    if !(cacheline_is_64 && pid_words == 1 && thread_words == 2 && wide_txnid && !big_reader) {
        return Err(format!(
            "lock file layout {desc:#x} (cache line, process, thread or transaction id \
             sizes) is not the one this build reads"
        ));
    }
    // POSIX mutexes in the header: 10 + log2(alignment) + size / 4 * 5.
    if lock_type < 10 || !pid_lock {
        return Err(format!(
            "lock type {lock_type}: the table is guarded by semaphores, not the \
             POSIX mutexes this build lays out"
        ));
    }
    let mutex_align = 1usize << ((lock_type - 10) % 5);
    let mutex_size = ((lock_type - 10) / 5 * 4) as usize;
    if mutex_size == 0 {
        return Err(format!("lock type {lock_type}: a mutex of no size"));
    }
    // magic, format, last txn id (8-aligned), slots used; then the mutex.
    let struct_align = mutex_align.max(8);
    let txbody = (20usize.div_ceil(mutex_align) * mutex_align + mutex_size).div_ceil(struct_align)
        * struct_align;
    if txbody / CACHELINE % 3 != txbody_lines as usize {
        return Err(format!(
            "lock file header of {txbody} bytes disagrees with its format {desc:#x}"
        ));
    }
    let first = txbody.div_ceil(CACHELINE) * CACHELINE;
    let second = mutex_size.div_ceil(CACHELINE) * CACHELINE;
    Ok(first + second)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(word)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(word)
}

/// Parses a lock file's bytes (liveness not yet known: every slot `alive`).
fn parse(bytes: &[u8]) -> std::result::Result<Table, String> {
    if bytes.len() < 24 || u32_at(bytes, 0) != MAGIC {
        return Err("lock.mdb is not an LMDB lock file (no magic number)".into());
    }
    let readers = layout(u32_at(bytes, 4))?;
    if bytes.len() < readers {
        return Err(format!(
            "lock.mdb is {} bytes, shorter than its {readers}-byte header",
            bytes.len()
        ));
    }
    let capacity = (bytes.len() - readers) / CACHELINE;
    let used = u32_at(bytes, 16);
    if used as usize > capacity {
        return Err(format!(
            "lock.mdb says {used} slots were used, but holds {capacity}"
        ));
    }
    let slots = (0..used as usize)
        .map(|i| readers + i * CACHELINE)
        .filter_map(|at| {
            let pid = u32_at(bytes, at + 8) as i32;
            let txn = u64_at(bytes, at);
            (pid != 0).then(|| Slot {
                pid,
                thread: u64_at(bytes, at + 16),
                txn: (txn != u64::MAX).then_some(txn),
                alive: true,
            })
        })
        .collect();
    Ok(Table {
        last_txn: u64_at(bytes, 8),
        used,
        capacity: capacity as u32,
        slots,
    })
}

/// Whether a process holds LMDB's lock on byte `pid` of the lock file
/// (LMDB's `mdb_reader_pid(…, Pidcheck, pid)`).
#[cfg(unix)]
fn pid_alive(file: &std::fs::File, pid: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: `flock` is a plain C struct of integers, for which all
        // zero bytes are a valid value.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = pid as libc::off_t;
        lock.l_len = 1;
        // SAFETY: the descriptor is `file`'s, open for the whole call, and
        // `lock` is a live, initialised `flock` that `F_GETLK` only reads
        // and writes in place.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
        if rc == 0 {
            return Ok(i32::from(lock.l_type) != libc::F_UNLCK);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Elsewhere LMDB asks the OS for the process, not a lock: not laid out here.
#[cfg(not(unix))]
fn pid_alive(_file: &std::fs::File, _pid: i32) -> std::io::Result<bool> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "reader liveness is only probed on Unix",
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The format word of Linux x86-64 glibc's LMDB (40-byte mutexes).
    fn linux_format() -> u32 {
        let lock_type = 10 + 3 + 40 / 4 * 5;
        let desc = 6 + 18 * 2 + 90 + 270 * lock_type + (1 << 15) + (1 << 17);
        LOCK_VERSION + (desc << VERSION_BITS)
    }

    #[test]
    fn the_linux_layout_puts_the_slots_after_two_cache_lines() {
        assert_eq!(layout(linux_format()), Ok(128));
        // 48-byte mutexes (aarch64 glibc): a two-line header.
        let lock_type = 10 + 3 + 48 / 4 * 5;
        let desc = 6 + 18 * 2 + 90 + 270 * lock_type + (1 << 15) + (1 << 17);
        assert_eq!(layout(LOCK_VERSION + (desc << VERSION_BITS)), Ok(192));
    }

    #[test]
    fn other_lock_formats_are_refused_not_guessed() {
        assert!(layout(linux_format() + 1).is_err(), "another version");
        // POSIX semaphores (lock type 4).
        let desc = 6 + 18 * 2 + 270 * 4 + (1 << 15) + (1 << 17);
        assert!(layout(LOCK_VERSION + (desc << VERSION_BITS)).is_err());
        // A 32-bit transaction id.
        assert!(layout(linux_format() - (1 << (15 + VERSION_BITS))).is_err());
    }

    #[test]
    fn a_table_lists_taken_slots_with_their_snapshots() {
        let mut bytes = vec![0u8; 128 + 3 * 64];
        bytes[..4].copy_from_slice(&MAGIC.to_ne_bytes());
        bytes[4..8].copy_from_slice(&linux_format().to_ne_bytes());
        bytes[8..16].copy_from_slice(&42u64.to_ne_bytes());
        bytes[16..20].copy_from_slice(&3u32.to_ne_bytes());
        let slot = |bytes: &mut Vec<u8>, i: usize, txn: u64, pid: i32, tid: u64| {
            let at = 128 + i * 64;
            bytes[at..at + 8].copy_from_slice(&txn.to_ne_bytes());
            bytes[at + 8..at + 12].copy_from_slice(&pid.to_ne_bytes());
            bytes[at + 16..at + 24].copy_from_slice(&tid.to_ne_bytes());
        };
        slot(&mut bytes, 0, 40, 77, 5);
        slot(&mut bytes, 1, u64::MAX, 0, 0); // free
        slot(&mut bytes, 2, u64::MAX, 78, 6);
        let table = parse(&bytes).unwrap();
        assert_eq!((table.last_txn, table.used, table.capacity), (42, 3, 3));
        assert_eq!(table.slots.len(), 2);
        assert_eq!((table.slots[0].pid, table.slots[0].txn), (77, Some(40)));
        assert_eq!((table.slots[1].pid, table.slots[1].txn), (78, None));
        // More slots used than the file holds, or no magic: refused.
        bytes[16..20].copy_from_slice(&9u32.to_ne_bytes());
        assert!(parse(&bytes).is_err());
        assert!(parse(&[0; 64]).is_err());
    }
}
