//! The `varvedb` command-line tool, and the library entry to build your own
//! with your event types (feature `cli`).
//!
//! The generic binary (`cargo install --path varvedb --features cli`) prints
//! events with their headers and base64 payloads. An application registers
//! its types to print them as JSON:
//!
//! ```no_run
//! use varvedb::Event;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize, Event)]
//! #[event(stream = "orders")]
//! struct OrderPlaced { order: u64, cents: u64 }
//!
//! fn main() -> std::process::ExitCode {
//!     varvedb::cli::Cli::new().event::<OrderPlaced>().run()
//! }
//! ```
//!
//! Every command takes `--json`. Inspection opens the store read-only, so it
//! runs beside the application. Commands that write the store need
//! `--write`: `projections reset NAME --write`, `migrate STREAM --write`
//! (an application tool only: see [`Cli::event`]) and `readers --clear-stale
//! --write` (LMDB's lock file); `restore` and `import` write only their new
//! destination.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rkyv::rancor;
use serde_json::{json, Value};

use crate::{
    BackupPhase, EncryptionKey, Error, Event, GlobalEvent, GlobalSequence, ImportOptions,
    ImportPhase, MigrateOptions, MigrateProgress, MigrationPlan, MigrationReport, ReaderTable,
    StreamId, StreamSequence, Varve, VarveConfig,
};

/// A printer of one stream's events as JSON.
type Typed = Box<dyn Fn(&GlobalEvent) -> Result<Value, String>>;

/// Counts what a migration of one stream would rewrite.
type Plan = Box<dyn Fn(&Varve) -> crate::Result<MigrationPlan>>;

/// Migrates one stream, in batches of about this many events.
type Migrate =
    Box<dyn Fn(&Varve, usize, &mut dyn FnMut(MigrateProgress)) -> crate::Result<MigrationReport>>;

/// `migrate` of one stream, with the event type registered for it.
struct Migrator {
    /// The event's type name, for reports.
    event: &'static str,
    plan: Plan,
    run: Migrate,
}

/// The `varvedb` tool, with the application's event types registered.
pub struct Cli {
    typed: HashMap<String, Typed>,
    /// The types `import` binds 0.4 streams to (from [`Cli::stream`]).
    import: ImportOptions,
    /// `migrate` per stream (from [`Cli::event`] and [`Cli::event_in`]).
    migrators: HashMap<String, Migrator>,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("typed_streams", &self.typed.keys().collect::<Vec<_>>())
            .field(
                "migrated_streams",
                &self.migrators.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Cli {
    fn default() -> Self {
        Cli::new()
    }
}

impl Cli {
    /// The generic tool: payloads print as base64.
    pub fn new() -> Cli {
        Cli {
            typed: HashMap::new(),
            import: ImportOptions::new(),
            migrators: HashMap::new(),
        }
    }

    /// Registers `E` for its stream `E::STREAM`: its events print as `E`,
    /// serialized with serde (older versions upcast), and `migrate
    /// E::STREAM` rewrites the stream's older versions of `E` into the
    /// current one ([`Varve::migrate`]). Events of another type in that
    /// stream (none, if the store is sound) print as base64.
    ///
    /// ```no_run
    /// # #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize, varvedb::Event)]
    /// # #[event(stream = "orders")]
    /// # struct OrderPlaced { order: u64 }
    /// // `my-tool migrate orders` counts the old versions (a dry run);
    /// // `my-tool migrate orders --write` rewrites them.
    /// varvedb::cli::Cli::new().event::<OrderPlaced>().run();
    /// ```
    pub fn event<E>(self) -> Cli
    where
        E: Event + serde::Serialize + 'static,
        E::Archived: rkyv::Deserialize<E, rkyv::rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
    {
        self.event_in::<E>(E::STREAM)
    }

    /// [`Cli::event`] for the stream `name` (a stream opened with
    /// [`Varve::events_in`]).
    pub fn event_in<E>(mut self, name: &str) -> Cli
    where
        E: Event + serde::Serialize + 'static,
        E::Archived: rkyv::Deserialize<E, rkyv::rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
    {
        // Through the event's family: older versions print upcast.
        let print: Typed = Box::new(|event: &GlobalEvent| {
            let archived = event.archived::<E>().map_err(|e| e.to_string())?;
            let value: E =
                rkyv::deserialize::<E, rancor::Error>(archived).map_err(|e| e.to_string())?;
            serde_json::to_value(&value).map_err(|e| e.to_string())
        });
        self.typed.insert(name.to_owned(), print);
        let (plan_stream, run_stream) = (name.to_owned(), name.to_owned());
        let migrator = Migrator {
            event: std::any::type_name::<E>(),
            plan: Box::new(move |varve: &Varve| {
                varve.migration_plan_with::<E>(&MigrateOptions::default().stream(&plan_stream))
            }),
            run: Box::new(move |varve: &Varve, batch, progress| {
                let options = MigrateOptions::default()
                    .stream(&run_stream)
                    .batch_events(batch);
                varve.migrate_with_progress::<E>(options, progress)
            }),
        };
        self.migrators.insert(name.to_owned(), migrator);
        self
    }

    /// Prints the events of stream `name` as the plain rkyv type `T` (a
    /// stream written through `Varve::stream`), serialized with serde; and
    /// `import` brings a varvedb 0.4 stream `name` in as `T`
    /// ([`ImportOptions::stream`](crate::ImportOptions::stream)).
    pub fn stream<T>(mut self, name: &str) -> Cli
    where
        T: crate::Archivable + serde::Serialize + 'static,
        T::Archived: rkyv::Deserialize<T, rkyv::rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
    {
        let print: Typed = Box::new(|event: &GlobalEvent| {
            let archived = event.archived_plain::<T>().map_err(|e| e.to_string())?;
            let value: T =
                rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| e.to_string())?;
            serde_json::to_value(&value).map_err(|e| e.to_string())
        });
        self.typed.insert(name.to_owned(), print);
        self.import = std::mem::take(&mut self.import).stream::<T>(name);
        self
    }

    /// Parses the process's arguments, runs the command, prints errors to
    /// stderr; exit code 0 on success, 1 on an error (a refusal included:
    /// a writing command without `--write`, an unknown projection, `migrate`
    /// of a stream with no type registered), 2 when `verify` (or the check
    /// after `migrate`) finds problems.
    pub fn run(self) -> ExitCode {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        self.run_from(std::env::args_os(), &mut out)
    }

    /// [`Cli::run`] with these arguments (the first is the program name),
    /// writing to `out`: for tests, or to embed the tool.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # varvedb::Varve::new(dir.path())?;
    /// let mut out = Vec::new();
    /// let args = ["varvedb", "--json", "--store", dir.path().to_str().unwrap(), "info"];
    /// let code = varvedb::cli::Cli::new().run_from(args, &mut out);
    /// assert_eq!(code, std::process::ExitCode::SUCCESS);
    /// assert!(String::from_utf8(out).unwrap().contains("\"events\":0"));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn run_from<I, T>(self, args: I, out: &mut dyn Write) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = match Args::try_parse_from(args) {
            Ok(args) => args,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
            }
        };
        let json = args.json;
        match self.execute(args, out) {
            Ok(code) => code,
            Err(e) => {
                let _ = out.flush();
                if json {
                    let _ = writeln!(out, "{}", json!({ "error": e.to_string() }));
                }
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    }

    fn execute(&self, args: Args, out: &mut dyn Write) -> Result<ExitCode, CliError> {
        let json = args.json;
        let store = || {
            args.store.clone().ok_or(CliError::Usage(
                "this command needs the store: --store PATH (or VARVEDB_STORE)",
            ))
        };
        let config = open_config(&args)?;
        let open = || -> Result<Varve, CliError> {
            Ok(Varve::open_read_only_with_config(store()?, config.clone())?)
        };
        match args.command {
            Command::Info => {
                let info = open()?.info()?;
                if json {
                    put(
                        out,
                        &json!({
                            "path": info.path, "store_id": info.store_id.to_string(),
                            "format": info.format, "read_only": info.read_only,
                            "data_bytes": info.data_bytes, "map_size": info.map_size,
                            "events": info.end.0, "end": info.end.0, "streams": info.streams,
                            "last_commit": info.last_commit, "readers_used": info.readers_used,
                            "max_readers": info.max_readers,
                        }),
                    )?;
                } else {
                    table(
                        out,
                        &["field", "value"],
                        &[
                            vec!["path".into(), info.path.display().to_string()],
                            vec!["store id".into(), info.store_id.to_string()],
                            vec!["format".into(), info.format.to_string()],
                            vec!["data file".into(), bytes(info.data_bytes)],
                            vec!["map".into(), bytes(info.map_size)],
                            vec!["events".into(), info.end.0.to_string()],
                            vec!["streams".into(), info.streams.to_string()],
                            vec!["last commit".into(), info.last_commit.to_string()],
                            vec![
                                "readers".into(),
                                format!("{} of {}", info.readers_used, info.max_readers),
                            ],
                        ],
                    )?;
                }
            }
            Command::Streams => {
                let streams = open()?.streams()?;
                if json {
                    let list: Vec<Value> = streams.iter().map(|s| json!({
                        "name": s.name, "type": s.type_name, "ids": s.ids, "events": s.events,
                        "layout_fingerprint": format!("{:#018x}", s.layout_fingerprint),
                        "schema_fingerprint": format!("{:#018x}", s.schema_fingerprint),
                    })).collect();
                    put(out, &Value::Array(list))?;
                } else {
                    let rows: Vec<Vec<String>> = streams
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.ids.to_string(),
                                s.events.to_string(),
                                s.type_name.clone(),
                            ]
                        })
                        .collect();
                    table(out, &["stream", "ids", "events", "type"], &rows)?;
                }
            }
            Command::Ids { stream } => {
                let ids = open()?.stream_ids(&stream)?;
                if json {
                    let list: Vec<Value> = ids
                        .iter()
                        .map(|i| {
                            json!({
                                "id": i.id.0, "events": i.events, "version": i.version.0,
                            })
                        })
                        .collect();
                    put(out, &Value::Array(list))?;
                } else {
                    let rows: Vec<Vec<String>> = ids
                        .iter()
                        .map(|i| {
                            vec![
                                i.id.0.to_string(),
                                i.events.to_string(),
                                i.version.0.to_string(),
                            ]
                        })
                        .collect();
                    table(out, &["id", "events", "version"], &rows)?;
                }
            }
            Command::Read {
                stream,
                id,
                from,
                limit,
            } => {
                let varve = open()?;
                let globals = varve.stream_globals(
                    &stream,
                    StreamId(id),
                    StreamSequence(from),
                    limit.unwrap_or(u64::MAX),
                )?;
                let mut log = varve.global_reader();
                for g in globals {
                    if let Some(event) = log.get(g)? {
                        self.print_event(out, &event, json)?;
                    }
                }
            }
            Command::Log { from, limit } => {
                let varve = open()?;
                let log = varve.global_reader();
                let limit = limit.unwrap_or(u64::MAX);
                for event in log.iter_from(GlobalSequence(from))?.take(limit as usize) {
                    self.print_event(out, &event?, json)?;
                }
            }
            Command::Dump { from } => {
                let varve = open()?;
                let log = varve.global_reader();
                for event in log.iter_from(GlobalSequence(from))? {
                    self.print_event(out, &event?, true)?;
                }
            }
            Command::Tail { follow, lines, max } => {
                let varve = open()?;
                let end = varve.global_reader().end()?.0;
                let from = end.saturating_sub(lines);
                let log = varve.global_reader();
                for event in log.iter_from(GlobalSequence(from))? {
                    self.print_event(out, &event?, json)?;
                }
                drop(log);
                if follow {
                    out.flush()?;
                    let mut live = varve.subscribe(GlobalSequence(end));
                    let mut seen = 0u64;
                    while max.is_none_or(|m| seen < m) {
                        if let Some(event) = live.next_timeout(Duration::from_secs(3600))? {
                            self.print_event(out, &event, json)?;
                            out.flush()?;
                            seen += 1;
                        }
                    }
                }
            }
            Command::Verify => {
                let varve = open()?;
                let bar = spinner("verifying");
                let report = varve.verify()?;
                bar.finish_and_clear();
                let chain = match &report.chain {
                    crate::ChainCheck::Off => "off".to_string(),
                    crate::ChainCheck::Enabling { covered } => {
                        format!("being enabled, chained below {}", covered.0)
                    }
                    crate::ChainCheck::Checked { head: Some(head) } => {
                        format!("checked, head {head}")
                    }
                    crate::ChainCheck::Checked { head: None } => "checked, empty log".into(),
                    crate::ChainCheck::KeyMissing => "keyed, not checked (no key)".into(),
                };
                if json {
                    let problems: Vec<String> =
                        report.problems.iter().map(ToString::to_string).collect();
                    put(
                        out,
                        &json!({
                            "ok": report.is_ok(), "events": report.events, "blocks": report.blocks,
                            "runs": report.runs, "streams": report.streams, "problems": problems,
                            "chain": chain, "erased_blocks": report.erased_blocks,
                            "erased_events": report.erased_events,
                        }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "{} events, {} blocks, {} runs, {} streams: {}",
                        report.events,
                        report.blocks,
                        report.runs,
                        report.streams,
                        if report.is_ok() {
                            "ok".to_string()
                        } else {
                            format!("{} problems", report.problems.len())
                        }
                    )?;
                    if report.erased_blocks > 0 {
                        writeln!(
                            out,
                            "erased entities: {} events in {} blocks (not problems)",
                            report.erased_events, report.erased_blocks
                        )?;
                    }
                    writeln!(out, "tamper-evident chain: {chain}")?;
                    for p in &report.problems {
                        writeln!(out, "  {p}")?;
                    }
                }
                if !report.is_ok() {
                    return Ok(ExitCode::from(2));
                }
            }
            Command::Backup { dest } => {
                let varve = open()?;
                let bar = ProgressBar::new(0);
                let mut phase = None;
                let report = varve.backup_with_progress(&dest, |p| {
                    if phase != Some(p.phase) {
                        phase = Some(p.phase);
                        let (style, message) = match p.phase {
                            BackupPhase::Copying => {
                                ("{spinner} {msg} {elapsed}", "copying (one LMDB call)")
                            }
                            BackupPhase::HashingFile => {
                                ("{msg} [{bar:30}] {bytes}/{total_bytes}", "hashing the copy")
                            }
                            BackupPhase::DigestingLog => {
                                ("{msg} [{bar:30}] {pos}/{len} events", "digesting the log")
                            }
                            _ => ("{spinner} {msg}", "verifying the copy"),
                        };
                        if let Ok(style) = ProgressStyle::with_template(style) {
                            bar.set_style(style);
                        }
                        bar.set_message(message);
                        bar.enable_steady_tick(Duration::from_millis(120));
                    }
                    bar.set_length(p.total);
                    bar.set_position(p.done);
                })?;
                bar.finish_and_clear();
                let m = &report.manifest;
                if json {
                    put(
                        out,
                        &json!({
                            "path": report.path, "store_id": m.store_id.to_string(), "end": m.end.0,
                            "events": m.events, "blocks": m.blocks, "bytes": report.bytes,
                            "log_digest": m.log_digest.to_string(), "duration_ms": report.duration.as_millis() as u64,
                            "copy_bytes_per_second": report.bytes_per_second(),
                        }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "backed up {} events ({}) to {} in {:.2?} (copy {}/s); log digest {}",
                        m.events,
                        bytes(report.bytes),
                        report.path.display(),
                        report.duration,
                        bytes(report.bytes_per_second() as u64),
                        m.log_digest
                    )?;
                }
            }
            Command::Export {
                dest,
                after: Some(previous),
                follow: true,
                max_segments,
                ..
            } => {
                let varve = open()?;
                let mut follower = varve.export_follower(previous, &dest)?;
                let mut written = 0u64;
                while max_segments.is_none_or(|m| written < m) {
                    if let Some(report) = follower.next_segment(Duration::from_secs(1))? {
                        let s = &report.segment;
                        if json {
                            put(
                                out,
                                &json!({
                                    "path": s.path, "from": s.from.0, "to": s.to.0,
                                    "bytes": report.bytes, "end_digest": s.end_digest.to_string(),
                                }),
                            )?;
                        } else {
                            writeln!(
                                out,
                                "{}: global sequences {}..{}",
                                s.path.display(),
                                s.from.0,
                                s.to.0
                            )?;
                        }
                        out.flush()?;
                        written += 1;
                    }
                }
            }
            Command::Export {
                dest, after, from, ..
            } => {
                let varve = open()?;
                let bar = spinner("exporting");
                let report = match (after, from) {
                    (Some(previous), _) => varve.export_after(previous, &dest)?,
                    (None, Some(from)) => varve.export(GlobalSequence(from), &dest)?,
                    (None, None) => {
                        return Err(CliError::Usage(
                            "export needs --after PREVIOUS or --from POSITION",
                        ))
                    }
                };
                bar.finish_and_clear();
                let s = &report.segment;
                if json {
                    put(
                        out,
                        &json!({
                            "path": s.path, "from": s.from.0, "to": s.to.0, "blocks": s.blocks,
                            "bytes": report.bytes, "start_digest": s.start_digest.to_string(),
                            "end_digest": s.end_digest.to_string(), "duration_ms": report.duration.as_millis() as u64,
                        }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "exported global sequences {}..{} ({} events, {}) to {}",
                        s.from.0,
                        s.to.0,
                        report.events(),
                        bytes(report.bytes),
                        s.path.display()
                    )?;
                }
            }
            Command::Restore {
                backup,
                segments,
                to,
                until,
                new_key_file,
                new_passphrase_file,
            } => {
                let bar = spinner("restoring");
                // `--key-file`/`--passphrase-file` open the backup; the
                // `--new-…` ones re-key the restored store.
                let until = until.map(GlobalSequence);
                let report =
                    match read_key(new_key_file.as_deref(), new_passphrase_file.as_deref())? {
                        None => Varve::restore_with_config(
                            &backup,
                            &segments,
                            &to,
                            until,
                            config.clone(),
                        )?,
                        Some(key) => Varve::restore_rekeyed(
                            &backup,
                            &segments,
                            &to,
                            until,
                            config.clone(),
                            key,
                        )?,
                    };
                bar.finish_and_clear();
                if json {
                    put(
                        out,
                        &json!({
                            "path": report.path, "store_id": report.store_id.to_string(), "end": report.end.0,
                            "events": report.events, "segments_applied": report.segments_applied,
                            "rebuilt": report.rebuilt, "log_digest": report.log_digest.to_string(),
                            "duration_ms": report.duration.as_millis() as u64,
                        }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "restored {} events to {} ({} segments{}); verified, log digest {}",
                        report.events,
                        report.path.display(),
                        report.segments_applied,
                        if report.rebuilt {
                            ", rebuilt from the backup's blocks"
                        } else {
                            ""
                        },
                        report.log_digest
                    )?;
                }
            }
            Command::Import { old, new, renumber } => {
                let options = self.import.clone().renumber(renumber);
                let bar = ProgressBar::new(0);
                let mut phase = None;
                let report = Varve::import_v04_with_progress(&old, &new, &options, |p| {
                    if phase != Some(p.phase) {
                        phase = Some(p.phase);
                        let message = match p.phase {
                            ImportPhase::Checking => "checking the 0.4 store",
                            ImportPhase::Writing => "writing",
                            _ => "verifying and comparing",
                        };
                        if let Ok(style) =
                            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} events")
                        {
                            bar.set_style(style);
                        }
                        bar.set_message(message);
                    }
                    bar.set_length(p.total);
                    bar.set_position(p.done);
                })?;
                bar.finish_and_clear();
                if json {
                    put(
                        out,
                        &json!({
                            "path": report.path, "events": report.events,
                            "streams": report.streams, "renumbered": report.renumbered,
                            "duration_ms": report.duration.as_millis() as u64,
                        }),
                    )?;
                } else {
                    let rows: Vec<Vec<String>> = report
                        .streams
                        .iter()
                        .map(|(name, n)| vec![name.clone(), n.to_string()])
                        .collect();
                    table(out, &["stream", "events"], &rows)?;
                    writeln!(
                        out,
                        "imported {} events into {} in {:.2?} ({} renumbered); verified and \
                         compared event by event",
                        report.events,
                        report.path.display(),
                        report.duration,
                        report.renumbered
                    )?;
                }
            }
            Command::Readers { clear_stale, write } => {
                readers(out, &store()?, &config, clear_stale, write, json)?;
            }
            Command::Projections { action: None } => {
                let listed = open()?.projections()?;
                if json {
                    let list: Vec<Value> = listed
                        .iter()
                        .map(|p| {
                            json!({
                                "name": p.name, "kind": p.kind.map(|k| k.as_str()),
                                "checkpoint": p.checkpoint.0, "generation": p.generation,
                                "lag": p.lag, "skipped": p.skipped,
                                "last_failure": p.last_failure.as_ref().map(|f| json!({
                                    "at": f.at.0, "error": f.error,
                                })),
                            })
                        })
                        .collect();
                    put(out, &Value::Array(list))?;
                } else {
                    let rows: Vec<Vec<String>> = listed
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.kind.map_or("-", |k| k.as_str()).to_owned(),
                                p.checkpoint.0.to_string(),
                                p.lag.to_string(),
                                p.generation.to_string(),
                                p.skipped.to_string(),
                                p.last_failure.as_ref().map_or(String::new(), |f| {
                                    format!("at {}: {}", f.at.0, f.error)
                                }),
                            ]
                        })
                        .collect();
                    let header = [
                        "projection",
                        "kind",
                        "checkpoint",
                        "lag",
                        "generation",
                        "skipped",
                        "last failure",
                    ];
                    table(out, &header, &rows)?;
                }
            }
            Command::Projections {
                action: Some(ProjectionAction::Reset { name, write }),
            } => {
                if !write {
                    // Say what would be reset, or that nothing is there.
                    let found = open()?.projection_status(&name)?;
                    let Some(found) = found else {
                        return Err(Error::UnknownProjection {
                            path: store()?,
                            name,
                        }
                        .into());
                    };
                    return Err(CliError::NeedsWrite(format!(
                        "projections reset writes the store: add --write to reset {:?} \
                         (checkpoint {}, generation {})",
                        found.name, found.checkpoint.0, found.generation
                    )));
                }
                let reset = open_write(&store()?, &config)?.reset_projection(&name)?;
                if json {
                    put(
                        out,
                        &json!({
                            "name": reset.name, "kind": reset.kind.map(|k| k.as_str()),
                            "checkpoint": reset.checkpoint.0, "model_entries": reset.model_entries,
                            "skipped": reset.skipped, "generation": reset.generation,
                        }),
                    )?;
                } else {
                    writeln!(
                        out,
                        "reset projection {:?}: checkpoint {} -> 0, {} read-model entries and {} \
                         skip records deleted, generation {}",
                        reset.name,
                        reset.checkpoint.0,
                        reset.model_entries,
                        reset.skipped,
                        reset.generation
                    )?;
                    if reset.kind == Some(crate::ProjectionKind::External) {
                        writeln!(
                            out,
                            "its sink is outside the store: the projector delivers every event \
                             again from the first"
                        )?;
                    }
                }
            }
            Command::Migrate {
                stream,
                write,
                dry_run: _,
                batch,
            } => {
                let Some(migrator) = self.migrators.get(&stream) else {
                    let mut known: Vec<String> = self.migrators.keys().cloned().collect();
                    known.sort();
                    return Err(CliError::NoEventType { stream, known });
                };
                let path = store()?;
                let at = StoreAt {
                    path: &path,
                    config: &config,
                };
                return migrate(out, migrator, &stream, at, write, batch, json);
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn print_event(
        &self,
        out: &mut dyn Write,
        event: &GlobalEvent,
        json: bool,
    ) -> Result<(), CliError> {
        let micros = event
            .committed_at()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let typed = self
            .typed
            .get(event.stream_name())
            .map(|print| print(event));
        if json {
            let mut line = json!({
                "global": event.global_sequence().0,
                "stream": event.stream_name(),
                "id": event.stream_id().0,
                "seq": event.stream_sequence().0,
                "type": event.type_name(),
                "committed_at_micros": micros,
            });
            match typed {
                Some(Ok(value)) => line["event"] = value,
                other => {
                    line["payload_base64"] = Value::String(base64(event.payload()));
                    if let Some(Err(e)) = other {
                        line["event_error"] = Value::String(e);
                    }
                }
            }
            writeln!(out, "{line}")?;
        } else {
            let body = match typed {
                Some(Ok(value)) => value.to_string(),
                _ => {
                    let p = event.payload();
                    let hex: String = p.iter().take(24).map(|b| format!("{b:02x}")).collect();
                    format!(
                        "{} bytes {hex}{}",
                        p.len(),
                        if p.len() > 24 { "…" } else { "" }
                    )
                }
            };
            writeln!(
                out,
                "{:>8}  {}/{}@{}  {}",
                event.global_sequence().0,
                event.stream_name(),
                event.stream_id().0,
                event.stream_sequence().0,
                body
            )?;
        }
        Ok(())
    }
}

#[derive(Parser)]
#[command(
    name = "varvedb",
    version,
    about = "Inspect, verify, back up and restore a VarveDB store"
)]
struct Args {
    /// The store directory (every command but `restore`).
    #[arg(short, long, env = "VARVEDB_STORE", global = true)]
    store: Option<PathBuf>,
    /// Print JSON (one document, or JSON Lines for events) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The master key of an encrypted store: a file holding the 32-byte key
    /// (raw, or as 64 hex digits).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "passphrase_file"
    )]
    key_file: Option<PathBuf>,
    /// The passphrase of an encrypted store, from a file (one trailing
    /// newline is not part of it).
    #[arg(long, global = true, value_name = "PATH")]
    passphrase_file: Option<PathBuf>,
    /// The key vault of a store that seals entities' events with keys of
    /// their own (`VarveConfig::key_vault`; needs the master key too).
    #[arg(long, global = true, value_name = "PATH")]
    key_vault: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format, size, map, readers, end of the log, stream count.
    Info,
    /// Streams with their types, ids and events.
    Streams,
    /// The ids of a stream with their event counts and versions.
    Ids {
        /// The stream name.
        stream: String,
    },
    /// The events of one stream id.
    Read {
        /// The stream name.
        stream: String,
        /// The stream id.
        id: u64,
        /// The first stream sequence.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// The global log from a position.
    Log {
        /// The first global sequence.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// The last events of the log; with -f, then each new commit.
    Tail {
        /// Keep following new commits.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the last events to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Stop after following this many events.
        #[arg(long)]
        max: Option<u64>,
    },
    /// Every event as JSON Lines.
    Dump {
        /// The first global sequence.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Check the whole store; exit code 2 if it finds problems.
    Verify,
    /// A hot, verified full backup into a new directory.
    Backup {
        /// The backup directory (must not exist).
        dest: PathBuf,
    },
    /// A segment of the log for an incremental backup; with --follow, one
    /// segment per burst of commits into a directory, until stopped.
    Export {
        /// The segment file (must not exist); with --follow, a directory.
        dest: PathBuf,
        /// Keep writing segments as commits land (needs --after).
        #[arg(long, requires = "after")]
        follow: bool,
        /// With --follow, stop after this many segments.
        #[arg(long)]
        max_segments: Option<u64>,
        /// Continue this backup directory or segment file.
        #[arg(long, conflicts_with = "from")]
        after: Option<PathBuf>,
        /// Start at this global sequence (a block boundary).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Restore a backup and segments into a new directory.
    Restore {
        /// The full backup directory.
        backup: PathBuf,
        /// Segment files, in order.
        segments: Vec<PathBuf>,
        /// The new store's directory (absent or empty).
        #[arg(long)]
        to: PathBuf,
        /// Stop before this global sequence.
        #[arg(long)]
        until: Option<u64>,
        /// Re-key: seal the restored store under the master key in this file
        /// (32 bytes, raw or as 64 hex digits), with fresh data keys; a
        /// plaintext backup comes out encrypted. `--key-file` (or
        /// `--passphrase-file`) is then the backup's key, if it has one.
        #[arg(long, value_name = "PATH", conflicts_with = "new_passphrase_file")]
        new_key_file: Option<PathBuf>,
        /// Re-key under the passphrase in this file (one trailing newline is
        /// not part of it).
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Import a store written by varvedb 0.4 into a new directory. Its
    /// streams need their types: build your tool with `Cli::stream`.
    Import {
        /// The 0.4 store's directory (read only).
        old: PathBuf,
        /// The new store's directory (absent or empty).
        new: PathBuf,
        /// Number events densely (same order) when the 0.4 log has holes.
        #[arg(long)]
        renumber: bool,
    },
    /// LMDB reader slots: process, thread, snapshot, commits behind, and
    /// whether the process is dead (a stale slot pins old pages).
    Readers {
        /// Free the slots of dead processes (needs --write: it writes
        /// LMDB's lock file).
        #[arg(long)]
        clear_stale: bool,
        /// Allow --clear-stale to write.
        #[arg(long)]
        write: bool,
    },
    /// Projections (in-store and external): checkpoint, generation, lag
    /// behind the end of the log, skipped events; `reset NAME --write`.
    Projections {
        #[command(subcommand)]
        action: Option<ProjectionAction>,
    },
    /// Rewrite a stream's old event versions into the current one. Needs
    /// the event type: a tool built with `Cli::new().event::<E>()`. Without
    /// --write, a dry run counts the events at old versions.
    Migrate {
        /// The stream.
        stream: String,
        /// Rewrite the stream (otherwise only count).
        #[arg(long)]
        write: bool,
        /// Only count the events at old versions (the default without
        /// --write).
        #[arg(long, conflicts_with = "write")]
        dry_run: bool,
        /// Events rewritten per write transaction.
        #[arg(long, default_value_t = 1024)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum ProjectionAction {
    /// Reset a projection: its checkpoint back to the start and, for an
    /// in-store projection, its read model cleared, in one transaction.
    Reset {
        /// The projection's name.
        name: String,
        /// Allow the reset to write the store.
        #[arg(long)]
        write: bool,
    },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Varve(#[from] Error),
    #[error("{0}")]
    Usage(&'static str),
    /// `--key-file` or `--passphrase-file` unreadable or malformed.
    #[error("{0}")]
    Key(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A command that writes, run without `--write`.
    #[error("{0}")]
    NeedsWrite(String),
    /// `migrate` of a stream with no event type registered.
    #[error(
        "migrate needs the event type of stream {stream:?}, and this tool has none registered \
         for it ({}): build an application tool with \
         varvedb::cli::Cli::new().event::<YourEvent>() (see docs/operations.md)",
        if known.is_empty() { "the generic varvedb binary knows no types".to_owned() }
        else { format!("it knows {}", known.join(", ")) }
    )]
    NoEventType { stream: String, known: Vec<String> },
}

/// The options every open takes: the encryption key of `--key-file` or
/// `--passphrase-file`, and the key vault of `--key-vault`, if given.
fn open_config(args: &Args) -> Result<VarveConfig, CliError> {
    Ok(VarveConfig {
        encryption: read_key(args.key_file.as_deref(), args.passphrase_file.as_deref())?,
        key_vault: args.key_vault.clone(),
        ..VarveConfig::default()
    })
}

/// The key of a key file or a passphrase file, if either is given.
fn read_key(
    key_file: Option<&std::path::Path>,
    passphrase_file: Option<&std::path::Path>,
) -> Result<Option<EncryptionKey>, CliError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| CliError::Key(format!("cannot read the key file {}: {e}", path.display())))
    };
    let key = if let Some(path) = key_file {
        let bytes = read(path)?;
        let raw = key_bytes(&bytes).ok_or_else(|| {
            CliError::Key(format!(
                "the key file {} holds neither 32 bytes nor 64 hex digits",
                path.display()
            ))
        })?;
        Some(EncryptionKey::from_bytes(*raw))
    } else if let Some(path) = passphrase_file {
        let bytes = read(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            CliError::Key(format!(
                "the passphrase file {} is not UTF-8",
                path.display()
            ))
        })?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        Some(EncryptionKey::from_passphrase(text))
    } else {
        None
    };
    Ok(key)
}

/// A key file's 32 bytes: raw, or 64 hex digits (surrounding whitespace
/// ignored).
fn key_bytes(file: &[u8]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    if file.len() == 32 {
        key.copy_from_slice(file);
        return Some(key);
    }
    let hex = file.trim_ascii();
    if hex.len() != 64 {
        return None;
    }
    for (byte, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(key)
}

/// A store's directory and the options to open it with.
struct StoreAt<'a> {
    path: &'a std::path::Path,
    config: &'a VarveConfig,
}

impl StoreAt<'_> {
    fn read_only(&self) -> Result<Varve, CliError> {
        Ok(Varve::open_read_only_with_config(
            self.path,
            self.config.clone(),
        )?)
    }
}

/// Opens the existing store at `path` read-write (never creating one), for
/// the commands run with `--write`.
fn open_write(path: &std::path::Path, config: &VarveConfig) -> Result<Varve, CliError> {
    let data = path.join(crate::storage::DATA_FILE);
    if !data.is_file() {
        return Err(Error::Open {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no store here (no data.mdb); a command never creates one",
            ),
        }
        .into());
    }
    Ok(Varve::with_config(path, config.clone())?)
}

/// `readers`: the reader table, read from the lock file while this process
/// does not have the store open; with `--clear-stale --write`, the store is
/// opened to clear the stale slots, closed, and the table read again.
fn readers(
    out: &mut dyn Write,
    path: &std::path::Path,
    config: &VarveConfig,
    clear_stale: bool,
    write: bool,
    json: bool,
) -> Result<(), CliError> {
    if clear_stale && !write {
        let stale = ReaderTable::read(path)?.stale();
        return Err(CliError::NeedsWrite(format!(
            "readers --clear-stale writes LMDB's lock file: add --write to free the {stale} \
             stale slots"
        )));
    }
    let mut readers = ReaderTable::read(path)?;
    let mut cleared = None;
    if clear_stale {
        let varve = Varve::open_read_only_with_config(path, config.clone())?;
        cleared = Some(varve.clear_dead_readers()?);
        drop(varve);
        readers = ReaderTable::read(path)?;
    }
    if json {
        let slots: Vec<Value> = readers
            .slots
            .iter()
            .map(|s| {
                json!({
                    "pid": s.pid, "thread": s.thread, "txn": s.txn, "behind": s.behind,
                    "stale": s.stale,
                })
            })
            .collect();
        put(
            out,
            &json!({
                "taken": readers.slots.len(), "stale": readers.stale(), "used": readers.used,
                "max": readers.capacity, "last_txn": readers.last_txn, "slots": slots,
                "cleared": cleared,
            }),
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = readers
        .slots
        .iter()
        .map(|s| {
            vec![
                s.pid.to_string(),
                format!("{:x}", s.thread),
                s.txn.map_or("-".into(), |t| t.to_string()),
                s.behind.map_or("-".into(), |b| b.to_string()),
                if s.stale {
                    "stale (process gone)"
                } else {
                    "live"
                }
                .to_owned(),
            ]
        })
        .collect();
    table(out, &["pid", "thread", "txn", "behind", "state"], &rows)?;
    writeln!(
        out,
        "{} slots taken, {} stale; {} of {} ever used; last commit {}{}",
        readers.slots.len(),
        readers.stale(),
        readers.used,
        readers.capacity,
        readers.last_txn,
        match cleared {
            Some(n) => format!("; cleared {n} left by dead processes"),
            None if readers.stale() > 0 => "; `readers --clear-stale --write` frees them".into(),
            None => String::new(),
        }
    )?;
    Ok(())
}

/// `migrate STREAM`: a dry run (counts) without `write`, the migration with
/// a progress bar with it. Exit code 2 if the migrated store fails its
/// checks.
fn migrate(
    out: &mut dyn Write,
    migrator: &Migrator,
    stream: &str,
    at: StoreAt<'_>,
    write: bool,
    batch: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    if !write {
        let plan = (migrator.plan)(&at.read_only()?)?;
        let versions: Vec<String> = plan
            .versions
            .iter()
            .map(|(v, n)| format!("v{v}: {n}"))
            .collect();
        if json {
            let versions: Vec<Value> = plan
                .versions
                .iter()
                .map(|(v, n)| json!({ "version": v, "events": n }))
                .collect();
            put(
                out,
                &json!({
                    "stream": plan.stream, "event": migrator.event, "dry_run": true,
                    "exists": plan.exists, "version": plan.version, "versions": versions,
                    "events": plan.events, "current": plan.current, "blocks": plan.blocks,
                }),
            )?;
        } else if !plan.exists {
            writeln!(out, "stream {stream:?} does not exist: nothing to migrate")?;
        } else {
            writeln!(
                out,
                "stream {:?} ({}): {} events at older versions{} and {} at v{}; a migration \
                 rewrites {} blocks{}",
                plan.stream,
                migrator.event,
                plan.events,
                if versions.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", versions.join(", "))
                },
                plan.current,
                plan.version,
                plan.blocks,
                if plan.is_needed() {
                    "; run again with --write to migrate"
                } else {
                    ": nothing to do"
                }
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let varve = open_write(at.path, at.config)?;
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} log positions ({elapsed})")
    {
        bar.set_style(style);
    }
    bar.set_message(format!("migrating {stream}"));
    let report = (migrator.run)(&varve, batch, &mut |p: MigrateProgress| {
        bar.set_length(p.end.0);
        bar.set_position(p.position.0);
    })?;
    bar.finish_and_clear();
    let ok = report.verify.is_ok();
    if json {
        let versions: Vec<Value> = report
            .versions
            .iter()
            .map(|(v, n)| json!({ "version": v, "events": n }))
            .collect();
        let problems: Vec<String> = report
            .verify
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        put(
            out,
            &json!({
                "stream": report.stream, "event": migrator.event, "dry_run": false,
                "events": report.events, "blocks": report.blocks, "batches": report.batches,
                "versions": versions, "retired": report.retired, "ok": ok,
                "problems": problems, "duration_ms": report.duration.as_millis() as u64,
            }),
        )?;
    } else {
        writeln!(
            out,
            "migrated stream {:?}: {} events rewritten in {} blocks ({} batches) in {:.2?}; \
             retired versions {:?}; verified: {}",
            report.stream,
            report.events,
            report.blocks,
            report.batches,
            report.duration,
            report.retired,
            if ok {
                "ok".to_owned()
            } else {
                format!("{} problems", report.verify.problems.len())
            }
        )?;
        for p in &report.verify.problems {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn put(out: &mut dyn Write, value: &Value) -> Result<(), CliError> {
    writeln!(out, "{value}")?;
    Ok(())
}

fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Left-aligned columns, a header and a rule.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    )?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
