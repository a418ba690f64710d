//! From a recording of a workload's file calls, the store images a power cut
//! could leave.
//!
//! The model of the disk, conservative where file systems differ:
//!
//! - A write is durable once a barrier on its file (`fsync`, `fdatasync`) that
//!   started after the write returned has returned, or as soon as it returns
//!   if its file was opened with `O_DSYNC`/`O_SYNC` (LMDB's meta-page fd).
//!   `sync`/`syncfs` make every file durable.
//! - Until then it may or may not have reached the disk, independently of the
//!   other pending writes (the disk reorders), and a write in flight may be
//!   torn: a prefix of its sectors (512 B or 4 KiB, aligned to the file) has
//!   landed, the rest not.
//! - Directory changes (create, rename, link, unlink) are durable only after an
//!   `fsync` of their directory (or `sync`), and reach the disk in the order
//!   they were made (a journal): a cut keeps a prefix of the pending ones.
//! - `lock.mdb` is gone after a reboot (LMDB rebuilds it), so images omit it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// A file, by the order it was created in the recording.
pub type Ino = usize;

#[derive(Debug, Clone)]
pub enum Op {
    /// `name` now names a new, empty file.
    Create {
        parent: String,
        name: String,
        ino: Ino,
    },
    Rename {
        parent: String,
        from: String,
        to: String,
    },
    /// `to` now also names the file `from` names (a hard link).
    Link {
        parent: String,
        from: String,
        to: String,
    },
    Unlink {
        parent: String,
        name: String,
    },
    /// Bytes `data` (a range of the recording's data file) at `offset`.
    Write {
        ino: Ino,
        offset: u64,
        data: std::ops::Range<usize>,
        dsync: bool,
    },
    Truncate {
        ino: Ino,
        len: u64,
    },
    /// A barrier on one file (`Some`) or on all (`None`), which makes durable
    /// what was logged before sequence number `begin`.
    Barrier {
        target: Option<Target>,
        begin: u64,
    },
    /// The workload acknowledged an append: one line of its ack file.
    Ack(String),
}

/// What a barrier syncs: a file's data or a directory's entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    File(Ino),
    Dir(String),
}

#[derive(Debug)]
pub struct Recording {
    /// `(sequence number, op)` in log order.
    pub ops: Vec<(u64, Op)>,
    pub data: Vec<u8>,
    /// The store directory, whose files make an image.
    pub store: String,
    /// Counts of what was recorded, for the report.
    pub barriers: usize,
    pub dsync_writes: usize,
    /// For each op, the index of the op after which it is durable (a barrier
    /// that covers it, or itself for an `O_DSYNC` write); `usize::MAX` if none.
    durable_after: Vec<usize>,
}

fn parent_of(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Recording {
    /// Parses the recorder's log. `acks` is the workload's ack file, `store`
    /// the store directory (both absolute, as the workload named them).
    pub fn parse(log: &str, data: Vec<u8>, acks: &str, store: &str) -> Recording {
        let mut ops = Vec::new();
        // The volatile namespace and file sizes, as the process saw them.
        let mut names: HashMap<String, Ino> = HashMap::new();
        let mut sizes: Vec<u64> = Vec::new();
        let mut fds: HashMap<i32, (Option<Ino>, String, bool)> = HashMap::new();
        let mut ack_buf = Vec::new();
        let mut lines = log.lines();
        let ignored = |path: &str| path.ends_with("/lock.mdb");
        while let Some(line) = lines.next() {
            let mut f = line.splitn(7, ' ');
            let kind = f.next().expect("an op");
            let seq: u64 = f.next().expect("a sequence number").parse().expect("seq");
            let mut field = || f.next().expect("a field");
            match kind {
                "O" => {
                    let fd: i32 = field().parse().unwrap();
                    let flags: i32 = field().parse().unwrap();
                    let dir = field() == "1";
                    let path = line.splitn(6, ' ').nth(5).expect("a path").to_string();
                    let ino = if dir || ignored(&path) {
                        None
                    } else if let Some(&ino) = names.get(&path) {
                        Some(ino)
                    } else {
                        let ino = sizes.len();
                        sizes.push(0);
                        names.insert(path.clone(), ino);
                        ops.push((
                            seq,
                            Op::Create {
                                parent: parent_of(&path),
                                name: path.clone(),
                                ino,
                            },
                        ));
                        Some(ino)
                    };
                    if let Some(ino) = ino {
                        if flags & libc::O_TRUNC != 0 && sizes[ino] > 0 {
                            sizes[ino] = 0;
                            ops.push((seq, Op::Truncate { ino, len: 0 }));
                        }
                    }
                    let dsync = flags & libc::O_DSYNC != 0;
                    fds.insert(fd, (ino, path, dsync));
                }
                "C" => {
                    fds.remove(&field().parse().unwrap());
                }
                "W" => {
                    let fd: i32 = field().parse().unwrap();
                    let offset: i64 = field().parse().unwrap();
                    let len: usize = field().parse().unwrap();
                    let at: usize = field().parse().unwrap();
                    let rwf_dsync = field() == "1";
                    let (ino, path, dsync) = fds.get(&fd).expect("a write to an open file");
                    let Some(ino) = *ino else { continue };
                    let offset = if offset < 0 {
                        sizes[ino]
                    } else {
                        offset as u64
                    };
                    sizes[ino] = sizes[ino].max(offset + len as u64);
                    if path == acks {
                        ack_buf.extend_from_slice(&data[at..at + len]);
                        while let Some(end) = ack_buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = ack_buf.drain(..=end).collect();
                            let line = String::from_utf8(line).expect("an ack line");
                            ops.push((seq, Op::Ack(line.trim_end().to_string())));
                        }
                        continue;
                    }
                    ops.push((
                        seq,
                        Op::Write {
                            ino,
                            offset,
                            data: at..at + len,
                            dsync: *dsync || rwf_dsync,
                        },
                    ));
                }
                "T" => {
                    let fd: i32 = field().parse().unwrap();
                    let len: u64 = field().parse().unwrap();
                    if let Some((Some(ino), _, _)) = fds.get(&fd) {
                        sizes[*ino] = len;
                        ops.push((seq, Op::Truncate { ino: *ino, len }));
                    }
                }
                "S" => {
                    let fd: i32 = field().parse().unwrap();
                    let begin: u64 = field().parse().unwrap();
                    let (ino, path, _) = fds.get(&fd).expect("a barrier on an open file");
                    let target = match ino {
                        Some(ino) => Target::File(*ino),
                        None if ignored(path) => continue,
                        None => Target::Dir(path.clone()),
                    };
                    ops.push((
                        seq,
                        Op::Barrier {
                            target: Some(target),
                            begin,
                        },
                    ));
                }
                "G" => {
                    let begin: u64 = field().parse().unwrap();
                    ops.push((
                        seq,
                        Op::Barrier {
                            target: None,
                            begin,
                        },
                    ));
                }
                "R" => {
                    let from = line.splitn(3, ' ').nth(2).expect("a path").to_string();
                    let to = lines.next().expect("a rename target").to_string();
                    if let Some(ino) = names.remove(&from) {
                        names.insert(to.clone(), ino);
                    }
                    ops.push((
                        seq,
                        Op::Rename {
                            parent: parent_of(&to),
                            from,
                            to,
                        },
                    ));
                }
                "L" => {
                    let from = line.splitn(3, ' ').nth(2).expect("a path").to_string();
                    let to = lines.next().expect("a link target").to_string();
                    if let Some(&ino) = names.get(&from) {
                        names.insert(to.clone(), ino);
                    }
                    ops.push((
                        seq,
                        Op::Link {
                            parent: parent_of(&to),
                            from,
                            to,
                        },
                    ));
                }
                "U" => {
                    let name = line.splitn(3, ' ').nth(2).expect("a path").to_string();
                    names.remove(&name);
                    if !ignored(&name) {
                        ops.push((
                            seq,
                            Op::Unlink {
                                parent: parent_of(&name),
                                name,
                            },
                        ));
                    }
                }
                "N" => {}
                "X" => {
                    let what = field();
                    let fd = f.next().and_then(|fd| fd.parse::<i32>().ok());
                    let on_lock = fd
                        .and_then(|fd| fds.get(&fd))
                        .is_some_and(|(_, path, _)| ignored(path));
                    assert!(
                        on_lock,
                        "the workload wrote through a memory map ({what}), which the recorder cannot see"
                    );
                }
                other => panic!("unknown record {other:?} in {line:?}"),
            }
        }
        let barriers = ops
            .iter()
            .filter(|(_, op)| matches!(op, Op::Barrier { .. }))
            .count();
        let dsync_writes = ops
            .iter()
            .filter(|(_, op)| matches!(op, Op::Write { dsync: true, .. }))
            .count();
        let durable_after = durable_after(&ops);
        Recording {
            ops,
            data,
            store: store.to_string(),
            barriers,
            dsync_writes,
            durable_after,
        }
    }

    pub fn acks(&self) -> Vec<String> {
        self.ops
            .iter()
            .filter_map(|(_, op)| match op {
                Op::Ack(line) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    /// Where a cut is worth making: just before and just after each barrier
    /// (and each `O_DSYNC` write) returns, just after each acknowledgement,
    /// and at the end.
    pub fn cuts(&self) -> Vec<usize> {
        let mut cuts = Vec::new();
        for (i, (_, op)) in self.ops.iter().enumerate() {
            match op {
                Op::Barrier { .. } | Op::Write { dsync: true, .. } => {
                    cuts.push(i);
                    cuts.push(i + 1);
                }
                Op::Ack(_) => cuts.push(i + 1),
                _ => {}
            }
        }
        cuts.push(self.ops.len());
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    fn is_durable(&self, at: usize, cut: usize) -> bool {
        self.durable_after[at] < cut
    }

    /// What a cut at `cut` (ops `..cut` happened) leaves undecided.
    pub fn pending(&self, cut: usize) -> Pending {
        let mut data = Vec::new();
        let mut dir_durable = 0;
        let mut dir_ops = Vec::new();
        for i in 0..cut {
            match &self.ops[i].1 {
                Op::Write { .. } | Op::Truncate { .. } if !self.is_durable(i, cut) => {
                    data.push(i);
                }
                Op::Create { .. } | Op::Rename { .. } | Op::Link { .. } | Op::Unlink { .. } => {
                    dir_ops.push(i);
                    if self.is_durable(i, cut) {
                        // The journal is ordered: all before it are durable too.
                        dir_durable = dir_ops.len();
                    }
                }
                _ => {}
            }
        }
        // An O_DSYNC write in flight at the cut: it may have landed, torn, or not.
        if let Some((_, Op::Write { dsync: true, .. })) = self.ops.get(cut) {
            data.push(cut);
        }
        let acks = self.ops[..cut]
            .iter()
            .filter(|(_, op)| matches!(op, Op::Ack(_)))
            .count();
        Pending {
            data,
            dir_ops,
            dir_durable,
            acks,
        }
    }

    /// The files of the store directory in a crash state.
    pub fn image(&self, state: &State) -> BTreeMap<String, Vec<u8>> {
        let mut files: Vec<Vec<u8>> = Vec::new();
        let mut names: BTreeMap<String, Ino> = BTreeMap::new();
        let mut dir_seen = 0;
        let included: std::collections::HashSet<usize> = state.included.iter().copied().collect();
        let end = state.cut + 1;
        for i in 0..end.min(self.ops.len()) {
            let op = &self.ops[i].1;
            if let Op::Create { ino, .. } = op {
                if files.len() <= *ino {
                    files.resize(*ino + 1, Vec::new());
                }
            }
            let is_dir_op = matches!(
                op,
                Op::Create { .. } | Op::Rename { .. } | Op::Link { .. } | Op::Unlink { .. }
            );
            if is_dir_op {
                if i >= state.cut {
                    continue;
                }
                dir_seen += 1;
                if dir_seen > state.dir_prefix {
                    continue;
                }
                match op {
                    Op::Create { name, ino, .. } => {
                        names.insert(name.clone(), *ino);
                    }
                    Op::Rename { from, to, .. } => {
                        if let Some(ino) = names.remove(from) {
                            names.insert(to.clone(), ino);
                        }
                    }
                    Op::Link { from, to, .. } => {
                        if let Some(&ino) = names.get(from) {
                            names.insert(to.clone(), ino);
                        }
                    }
                    Op::Unlink { name, .. } => {
                        names.remove(name);
                    }
                    _ => unreachable!(),
                }
                continue;
            }
            let torn = state.torn.filter(|&(at, _)| at == i).map(|(_, len)| len);
            let landed = (i < state.cut && self.is_durable(i, state.cut)) || included.contains(&i);
            if !landed && torn.is_none() {
                continue;
            }
            match op {
                Op::Write {
                    ino, offset, data, ..
                } => {
                    let bytes = &self.data[data.clone()];
                    let bytes = &bytes[..torn.unwrap_or(bytes.len())];
                    let file = &mut files[*ino];
                    let end = *offset as usize + bytes.len();
                    if file.len() < end {
                        file.resize(end, 0);
                    }
                    file[*offset as usize..end].copy_from_slice(bytes);
                }
                Op::Truncate { ino, len } => files[*ino].resize(*len as usize, 0),
                _ => {}
            }
        }
        let prefix = format!("{}/", self.store);
        names
            .into_iter()
            .filter_map(|(name, ino)| {
                let rel = name.strip_prefix(&prefix)?;
                Some((rel.to_string(), files[ino].clone()))
            })
            .collect()
    }

    /// The sector-aligned prefixes a write in flight could leave, longest
    /// first excluded (that is the whole write).
    pub fn tears(&self, at: usize, sector: u64) -> Vec<usize> {
        let Op::Write { offset, data, .. } = &self.ops[at].1 else {
            return Vec::new();
        };
        let end = offset + data.len() as u64;
        let mut out = Vec::new();
        let mut boundary = (offset / sector + 1) * sector;
        while boundary < end {
            out.push((boundary - offset) as usize);
            boundary += sector;
        }
        out
    }
}

/// When each op becomes durable (see [`Recording::durable_after`]).
fn durable_after(ops: &[(u64, Op)]) -> Vec<usize> {
    let mut out = vec![usize::MAX; ops.len()];
    // Ops not yet durable, by what would sync them.
    let mut waiting: HashMap<Target, Vec<usize>> = HashMap::new();
    for (i, (seq, op)) in ops.iter().enumerate() {
        let target = match op {
            Op::Write { dsync: true, .. } => {
                out[i] = i;
                continue;
            }
            Op::Write { ino, .. } | Op::Truncate { ino, .. } => Target::File(*ino),
            Op::Create { parent, .. }
            | Op::Rename { parent, .. }
            | Op::Link { parent, .. }
            | Op::Unlink { parent, .. } => Target::Dir(parent.clone()),
            Op::Ack(_) => {
                out[i] = i;
                continue;
            }
            Op::Barrier { target, begin } => {
                out[i] = i;
                let mut settle = |list: &mut Vec<usize>| {
                    list.retain(|&w| {
                        if ops[w].0 < *begin {
                            out[w] = i;
                            false
                        } else {
                            true
                        }
                    })
                };
                match target {
                    Some(t) => {
                        if let Some(list) = waiting.get_mut(t) {
                            settle(list);
                        }
                    }
                    None => waiting.values_mut().for_each(settle),
                }
                continue;
            }
        };
        let _ = seq;
        waiting.entry(target).or_default().push(i);
    }
    out
}

/// What a cut leaves undecided.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Data ops (writes, truncations) that may or may not have landed.
    pub data: Vec<usize>,
    /// Directory ops before the cut, in order, and how many of them are durable.
    pub dir_ops: Vec<usize>,
    pub dir_durable: usize,
    /// Acknowledgements before the cut.
    pub acks: usize,
}

/// One crash state: a cut, which pending writes landed, how many directory
/// ops, and at most one torn write (op index, bytes that landed).
#[derive(Debug, Clone)]
pub struct State {
    pub cut: usize,
    pub included: Vec<usize>,
    pub dir_prefix: usize,
    pub torn: Option<(usize, usize)>,
    pub acks: usize,
    pub label: &'static str,
    /// Whether this is the state where every write before the cut landed:
    /// what a process crash (not a power cut) leaves.
    pub process_crash: bool,
}

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl Recording {
    /// The crash states of one cut: nothing pending landed, everything
    /// landed, and `samples` more, alternating a random subset with a random
    /// subset plus one torn write.
    pub fn states(&self, cut: usize, samples: usize, rng: &mut Rng) -> Vec<State> {
        let p = self.pending(cut);
        let dir_all = p.dir_ops.len();
        let base = |label, included: Vec<usize>, dir_prefix, torn| State {
            cut,
            included,
            dir_prefix,
            torn,
            acks: p.acks,
            label,
            process_crash: false,
        };
        let mut out = vec![
            base("durable", Vec::new(), p.dir_durable, None),
            base(
                "all",
                p.data.iter().copied().filter(|&i| i < cut).collect(),
                dir_all,
                None,
            ),
        ];
        for s in 0..samples {
            let dir_prefix =
                p.dir_durable + rng.below((dir_all - p.dir_durable + 1) as u64) as usize;
            let mut included: Vec<usize> = p
                .data
                .iter()
                .copied()
                .filter(|_| rng.below(2) == 0)
                .collect();
            let mut torn = None;
            if s % 2 == 1 {
                let writes: Vec<usize> = p
                    .data
                    .iter()
                    .copied()
                    .filter(|&i| matches!(self.ops[i].1, Op::Write { .. }))
                    .collect();
                if !writes.is_empty() {
                    let at = writes[rng.below(writes.len() as u64) as usize];
                    let sector = if rng.below(2) == 0 { 512 } else { 4096 };
                    let tears = self.tears(at, sector);
                    if !tears.is_empty() {
                        included.retain(|&i| i != at);
                        torn = Some((at, tears[rng.below(tears.len() as u64) as usize]));
                    }
                }
            }
            // The in-flight O_DSYNC write at the cut is "included" only as a
            // whole write that returned a moment later: same as the next cut.
            included.retain(|&i| i < cut);
            out.push(base(
                if torn.is_some() { "torn" } else { "subset" },
                included,
                dir_prefix,
                torn,
            ));
        }
        out
    }
}

/// A hash of an image, to check each distinct image once.
pub fn image_hash(files: &BTreeMap<String, Vec<u8>>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

/// Writes an image into `dir` (created).
pub fn write_image(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create an image directory");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write an image file");
    }
    dir.to_path_buf()
}
