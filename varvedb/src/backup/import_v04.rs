//! [`Varve::import_v04`]: a store of this format rebuilt from one written by
//! varvedb 0.4.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::Staging;
use crate::chain::Chain;
use crate::config::VarveConfig;
use crate::error::{Error, Location, Result};
use crate::event::{layout_fingerprint, Archivable};
use crate::position::{ExpectedVersion, GlobalSequence, StreamSequence};
use crate::storage::legacy04::{LegacyRecord, LegacyStore};
use crate::storage::{BlockBuilder, StreamInfo, TypeIdentity};
use crate::store::Varve;

/// Events written per write transaction while importing.
const CHUNK_EVENTS: usize = 4096;

/// The type a 0.4 stream is imported as.
#[derive(Clone, Copy)]
struct Binding {
    type_name: &'static str,
    layout_fingerprint: u64,
    /// Whether bytes are a valid archived value of the type.
    check: fn(&[u8]) -> std::result::Result<(), String>,
}

fn check_as<T: Archivable>(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::access::<T::Archived, rancor::Error>(&aligned)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How [`Varve::import_v04`] imports a varvedb 0.4 store: the event type of
/// each stream, and whether positions may be renumbered.
///
/// 0.4 stored each event's rkyv bytes under a stream name without
/// recording the type; VarveDB binds every stream to one type (as
/// [`Varve::stream`] does on a first append). Name the type each stream was
/// written with, the type your program passed to 0.4's `Varve::stream`:
/// every payload is validated as that type before anything is written, and
/// the new store opens the stream with exactly that type.
///
/// ```
/// # use rkyv::{Archive, Serialize};
/// # #[derive(Archive, Serialize)] struct OrderPlaced { cents: u64 }
/// let options = varvedb::ImportOptions::new().stream::<OrderPlaced>("orders");
/// ```
#[derive(Clone, Default)]
pub struct ImportOptions {
    bindings: HashMap<String, Binding>,
    renumber: bool,
    chain: Option<Chain>,
}

impl std::fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound: BTreeMap<&str, &str> = self
            .bindings
            .iter()
            .map(|(k, b)| (k.as_str(), b.type_name))
            .collect();
        f.debug_struct("ImportOptions")
            .field("streams", &bound)
            .field("renumber", &self.renumber)
            .field("tamper_evident", &self.chain)
            .finish()
    }
}

impl ImportOptions {
    /// No streams bound, positions kept.
    pub fn new() -> ImportOptions {
        ImportOptions::default()
    }

    /// Imports the 0.4 stream `name` as events of `T` (a plain rkyv type,
    /// opened afterwards with [`Varve::stream::<T, N>`](Varve::stream)).
    pub fn stream<T: Archivable>(mut self, name: &str) -> ImportOptions {
        self.bindings.insert(
            name.to_owned(),
            Binding {
                type_name: std::any::type_name::<T>(),
                layout_fingerprint: layout_fingerprint::<T>(),
                check: check_as::<T>,
            },
        );
        self
    }

    /// Whether a store whose positions cannot be kept (a hole in its
    /// global log, left by a failed 0.4 commit, or a stream id whose
    /// sequences are not dense from 0) is imported with its events
    /// numbered densely in the same order. Off by default: such a store is
    /// refused with [`Error::LegacyGap`].
    pub fn renumber(mut self, renumber: bool) -> ImportOptions {
        self.renumber = renumber;
        self
    }

    /// Creates the new store with a tamper-evident chain (see
    /// [`VarveConfig::tamper_evident`]): every imported block is chained as
    /// it is appended, so the imported history is sealed from the start.
    ///
    /// ```
    /// let options = varvedb::ImportOptions::new().tamper_evident(varvedb::Chain::Plain);
    /// assert!(format!("{options:?}").contains("Plain"));
    /// ```
    pub fn tamper_evident(mut self, chain: Chain) -> ImportOptions {
        self.chain = Some(chain);
        self
    }

    /// The stream names bound so far.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.bindings.keys().map(String::as_str)
    }
}

/// Progress of [`Varve::import_v04_with_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportProgress {
    /// What it is doing.
    pub phase: ImportPhase,
    /// Events done in this phase.
    pub done: u64,
    /// Events in the 0.4 store.
    pub total: u64,
}

/// The phases of an import, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportPhase {
    /// Reading the 0.4 store: indexes, positions, every payload checked.
    Checking,
    /// Writing the new store.
    Writing,
    /// Verifying the new store and comparing every event with the old.
    Comparing,
}

/// What [`Varve::import_v04`] wrote.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ImportReport {
    /// The new store's directory.
    pub path: PathBuf,
    /// Events imported (all of the 0.4 store's).
    pub events: u64,
    /// Each stream with its event count, by name.
    pub streams: BTreeMap<String, u64>,
    /// Events whose global or stream sequence changed (0 unless
    /// [`ImportOptions::renumber`] was needed).
    pub renumbered: u64,
    /// How long the import took.
    pub duration: Duration,
}

/// Where one old event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    global: u64,
    seq: u64,
}

/// The positions every event of the old log gets, in global order.
struct Plan {
    targets: Vec<Target>,
    streams: BTreeMap<String, u64>,
    renumbered: u64,
}

fn plan(
    old: &LegacyStore,
    path: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Plan> {
    let total = old.len()?;
    old.check_indexes()?;
    let mut next_seq: HashMap<(String, u64), u64> = HashMap::new();
    let mut streams: BTreeMap<String, u64> = BTreeMap::new();
    let mut unbound: BTreeMap<String, u64> = BTreeMap::new();
    let mut targets = Vec::with_capacity(total as usize);
    let mut renumbered = 0;
    let gap = |detail: String| Error::LegacyGap {
        path: path.to_path_buf(),
        detail,
    };
    old.for_each(|r: LegacyRecord<'_>| {
        let global = targets.len() as u64;
        if r.global != global && !options.renumber {
            return Err(gap(format!(
                "the log continues at global sequence {} after {}",
                r.global,
                global.wrapping_sub(1)
            )));
        }
        let next = next_seq.entry((r.stream.to_owned(), r.id)).or_insert(0);
        if r.seq != *next && !options.renumber {
            let what = if r.seq < *next { "repeats" } else { "skips to" };
            return Err(gap(format!(
                "stream {:?} id {} {what} sequence {} at global sequence {} \
                 (its next is {})",
                r.stream, r.id, r.seq, r.global, next
            )));
        }
        let target = Target { global, seq: *next };
        if r.global != target.global || r.seq != target.seq {
            renumbered += 1;
        }
        *next += 1;
        targets.push(target);
        *streams.entry(r.stream.to_owned()).or_insert(0) += 1;
        match options.bindings.get(r.stream) {
            None => *unbound.entry(r.stream.to_owned()).or_insert(0) += 1,
            Some(b) => (b.check)(r.payload).map_err(|why| Error::LegacyDamaged {
                path: path.to_path_buf(),
                detail: format!(
                    "the event at global sequence {} (stream {:?} id {} sequence {}) \
                     is not a valid {}: {why}",
                    r.global, r.stream, r.id, r.seq, b.type_name
                ),
            })?,
        }
        if global.is_multiple_of(1024) {
            progress(ImportProgress {
                phase: ImportPhase::Checking,
                done: global,
                total,
            });
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if !unbound.is_empty() {
        return Err(Error::ImportUnbound {
            path: path.to_path_buf(),
            streams: unbound
                .into_iter()
                .map(|(name, n)| format!("{name:?} ({n} events)"))
                .collect(),
        });
    }
    Ok(Plan {
        targets,
        streams,
        renumbered,
    })
}

/// One block to append: the events of one stream id, consecutive in the log.
struct Run {
    stream: String,
    id: u64,
    first_seq: u64,
    payloads: Vec<Vec<u8>>,
}

fn write_runs(varve: &Varve, infos: &HashMap<String, StreamInfo>, runs: &[Run]) -> Result<()> {
    let mut block = BlockBuilder::with_capacity(4096);
    varve.store().write(|txn| {
        for run in runs {
            block.start(run.payloads.len());
            for p in &run.payloads {
                let mut buf = block.begin_event();
                buf.extend_from_slice(p);
                block
                    .finish_event(buf)
                    .map_err(|size| Error::EventTooLarge {
                        stream: run.stream.clone(),
                        size,
                        max: u32::MAX as usize,
                    })?;
            }
            let expected = match run.first_seq {
                0 => ExpectedVersion::NoStream,
                s => ExpectedVersion::Exact(StreamSequence(s - 1)),
            };
            txn.append(&infos[&run.stream], run.id, expected, &mut block)?;
        }
        Ok(())
    })
}

fn write(
    varve: &Varve,
    old: &LegacyStore,
    options: &ImportOptions,
    plan: &Plan,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<()> {
    let mut infos = HashMap::new();
    for name in plan.streams.keys() {
        let b = &options.bindings[name];
        let identity = TypeIdentity {
            type_name: b.type_name,
            layout_fingerprint: b.layout_fingerprint,
            schema_fingerprint: 0,
            schema: None,
        };
        infos.insert(name.clone(), varve.store().open_stream(name, &identity)?);
    }
    let total = plan.targets.len() as u64;
    let mut runs: Vec<Run> = Vec::new();
    let (mut pending, mut done, mut at) = (0usize, 0u64, 0usize);
    old.for_each(|r| {
        let target = plan.targets[at];
        at += 1;
        match runs.last_mut() {
            Some(run) if run.stream == r.stream && run.id == r.id => {
                run.payloads.push(r.payload.to_vec())
            }
            _ => runs.push(Run {
                stream: r.stream.to_owned(),
                id: r.id,
                first_seq: target.seq,
                payloads: vec![r.payload.to_vec()],
            }),
        }
        pending += 1;
        if pending >= CHUNK_EVENTS {
            write_runs(varve, &infos, &runs)?;
            runs.clear();
            done += pending as u64;
            pending = 0;
            progress(ImportProgress {
                phase: ImportPhase::Writing,
                done,
                total,
            });
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if !runs.is_empty() {
        write_runs(varve, &infos, &runs)?;
    }
    Ok(())
}

/// Checks the new store from scratch against the old one.
fn compare(
    varve: &Varve,
    old: &LegacyStore,
    plan: &Plan,
    dest: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<()> {
    let total = plan.targets.len() as u64;
    let differs = |global: u64, detail: String| Error::Corruption {
        location: Location::Global(GlobalSequence(global)),
        detail: format!("the store imported into {}: {detail}", dest.display()),
    };
    let verified = varve.verify()?;
    if !verified.is_ok() || verified.events != total {
        return Err(differs(
            0,
            format!(
                "it fails verification: {}",
                verified
                    .problems
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| format!("{} events, {total} imported", verified.events))
            ),
        ));
    }
    let mut new = varve.global_reader().iter_from(GlobalSequence(0))?;
    let mut at = 0usize;
    old.for_each(|r| {
        let target = plan.targets[at];
        at += 1;
        let e = new
            .next()
            .ok_or_else(|| differs(target.global, "it ends early".into()))??;
        if e.global_sequence().0 != target.global
            || e.stream_name() != r.stream
            || e.stream_id().0 != r.id
            || e.stream_sequence().0 != target.seq
            || e.payload() != r.payload
        {
            return Err(differs(
                target.global,
                format!(
                    "it holds stream {:?} id {} sequence {} ({} bytes) where the 0.4 store \
                     holds stream {:?} id {} sequence {} ({} bytes)",
                    e.stream_name(),
                    e.stream_id().0,
                    e.stream_sequence().0,
                    e.payload().len(),
                    r.stream,
                    r.id,
                    r.seq,
                    r.payload.len()
                ),
            ));
        }
        if at.is_multiple_of(1024) {
            progress(ImportProgress {
                phase: ImportPhase::Comparing,
                done: at as u64,
                total,
            });
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if new.next().is_some() || at as u64 != total {
        return Err(differs(
            total,
            "it holds more events than the 0.4 store".into(),
        ));
    }
    Ok(())
}

impl Varve {
    /// Imports the store that varvedb 0.4 wrote in directory `old` into
    /// `new`, a new or empty directory: the same streams, ids, stream
    /// sequences, global order and payload bytes.
    ///
    /// `old` is opened read-only and never written (no 0.4 program may
    /// write it meanwhile). Before anything is written, every stream index
    /// is checked against the log, every position against this format's
    /// (dense global and stream sequences, see
    /// [`ImportOptions::renumber`]), and every payload validated as its
    /// stream's type ([`ImportOptions::stream`]). The new store is built
    /// under a temporary name, [verified](Varve::verify), compared event by
    /// event with the old one (stream, id, sequences, bytes), then renamed
    /// to `new`: a failed or interrupted import leaves no `new`.
    ///
    /// The new store's streams are bound to the types named in `options`,
    /// exactly as if [`Varve::stream`] had appended them: open them with
    /// those types.
    ///
    /// ```no_run
    /// # use rkyv::{Archive, Serialize};
    /// # #[derive(Archive, Serialize)] struct OrderPlaced { cents: u64 }
    /// use varvedb::{ImportOptions, StreamId, Varve};
    ///
    /// let options = ImportOptions::new().stream::<OrderPlaced>("orders");
    /// let report = Varve::import_v04("data-0.4", "data", &options)?;
    /// println!("imported {} events", report.events);
    /// let varve = Varve::new("data")?;
    /// let mut orders = varve.stream::<OrderPlaced, 64>("orders")?;
    /// orders.append(StreamId(1), &OrderPlaced { cents: 100 })?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::DestinationExists`] if `new` is neither absent nor an empty
    /// directory; [`Error::ImportUnbound`] for streams without a type;
    /// [`Error::LegacyGap`] for positions that cannot be kept;
    /// [`Error::LegacyDamaged`] if `old` is not a readable 0.4 store or a
    /// payload is not its type; [`Error::InvalidStreamName`] for a 0.4 name
    /// this format does not allow.
    pub fn import_v04(
        old: impl AsRef<Path>,
        new: impl AsRef<Path>,
        options: &ImportOptions,
    ) -> Result<ImportReport> {
        Varve::import_v04_with_progress(old, new, options, |_| {})
    }

    /// [`Varve::import_v04`], calling `progress` as it goes.
    pub fn import_v04_with_progress(
        old: impl AsRef<Path>,
        new: impl AsRef<Path>,
        options: &ImportOptions,
        mut progress: impl FnMut(ImportProgress),
    ) -> Result<ImportReport> {
        let started = Instant::now();
        let (old_path, dest) = (old.as_ref(), new.as_ref());
        let _span = crate::trace::span!(
            INFO,
            "varvedb.import",
            old = crate::trace::display(old_path.display()),
            dest = crate::trace::display(dest.display()),
        );
        super::check_free(dest, true)?;
        let old = LegacyStore::open(old_path)?;
        let plan = plan(&old, old_path, options, &mut progress)?;
        let staging = Staging::new(dest, true)?;
        let config = VarveConfig {
            tamper_evident: options.chain,
            ..VarveConfig::default()
        };
        let varve = Varve::with_config(&staging.dir, config)?;
        write(&varve, &old, options, &plan, &mut progress)?;
        compare(&varve, &old, &plan, dest, &mut progress)?;
        drop(varve);
        staging.publish(true)?;
        let report = ImportReport {
            path: dest.to_path_buf(),
            events: plan.targets.len() as u64,
            streams: plan.streams,
            renumbered: plan.renumbered,
            duration: started.elapsed(),
        };
        crate::trace::event!(
            INFO,
            "varvedb.import",
            "varvedb 0.4 store imported and compared",
            path = crate::trace::display(dest.display()),
            events = report.events,
            streams = report.streams.len() as u64,
            duration_us = report.duration.as_micros() as u64,
        );
        Ok(report)
    }
}
