//! The `varvedb` binary against a real store: every command runs, prints
//! tables or JSON, opens the store read-only beside a writer in this process,
//! and refuses what it must with exit code 1; `Cli::event` prints typed JSON.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use assert_cmd::Command;
use serde_json::Value;
use varvedb::{Event, StreamId, Varve};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize, Event)]
#[event(stream = "orders")]
struct Placed {
    order: u64,
    note: String,
}

fn store(dir: &Path) -> Varve {
    let varve = Varve::new(dir.join("store")).unwrap();
    let mut orders = varve.events::<Placed>().unwrap();
    for n in 0..12u64 {
        let note = format!("order {n}");
        orders
            .append(StreamId(n % 3), &Placed { order: n, note })
            .unwrap();
    }
    varve
}

fn varvedb(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("varvedb").unwrap();
    cmd.arg("--store").arg(dir.join("store"));
    cmd
}

fn json(cmd: &mut Command) -> Value {
    let out = cmd
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

fn lines(cmd: &mut Command) -> Vec<Value> {
    let out = cmd
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn inspection_commands_print_tables_and_json_beside_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let varve = store(dir.path());

    let info = json(varvedb(dir.path()).arg("info"));
    assert_eq!(info["events"], 12);
    assert_eq!(info["streams"], 1);
    assert_eq!(info["store_id"], varve.store_id().to_string());
    assert_eq!(info["read_only"], true);
    let table = varvedb(dir.path())
        .arg("info")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(table).unwrap().contains("store id"));

    let streams = json(varvedb(dir.path()).arg("streams"));
    assert_eq!(streams[0]["name"], "orders");
    assert_eq!(
        (streams[0]["ids"].clone(), streams[0]["events"].clone()),
        (3.into(), 12.into())
    );
    let ids = json(varvedb(dir.path()).args(["ids", "orders"]));
    assert_eq!(ids.as_array().unwrap().len(), 3);
    assert_eq!(
        (ids[1]["id"].clone(), ids[1]["version"].clone()),
        (1.into(), 3.into())
    );

    let read = lines(varvedb(dir.path()).args(["read", "orders", "1", "--from", "1"]));
    let globals: Vec<u64> = read.iter().map(|e| e["global"].as_u64().unwrap()).collect();
    assert_eq!(globals, [4, 7, 10]);
    assert!(read[0]["payload_base64"].is_string());

    let log = lines(varvedb(dir.path()).args(["log", "--from", "5", "--limit", "3"]));
    let globals: Vec<u64> = log.iter().map(|e| e["global"].as_u64().unwrap()).collect();
    assert_eq!(globals, [5, 6, 7]);
    let dump = varvedb(dir.path())
        .arg("dump")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(String::from_utf8(dump).unwrap().lines().count(), 12);
    let tail = lines(varvedb(dir.path()).args(["tail", "-n", "2"]));
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[1]["global"], 11);

    let verify = json(varvedb(dir.path()).arg("verify"));
    assert_eq!(
        (verify["ok"].clone(), verify["events"].clone()),
        (true.into(), 12.into())
    );
    assert_eq!(verify["chain"], "off", "an unchained store says so");
    let readers = json(varvedb(dir.path()).arg("readers"));
    assert!(readers["max"].as_u64().unwrap() > 0);
    // The writer went on meanwhile, and still does.
    varve
        .events::<Placed>()
        .unwrap()
        .append(
            StreamId(9),
            &Placed {
                order: 99,
                note: String::new(),
            },
        )
        .unwrap();
}

#[test]
fn tail_follow_prints_commits_of_another_process_as_they_land() {
    let dir = tempfile::tempdir().unwrap();
    let varve = store(dir.path());
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("varvedb"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["--json", "tail", "-f", "-n", "1", "--max", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&out.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["global"], 11);
    let mut orders = varve.events::<Placed>().unwrap();
    for n in 12..15u64 {
        orders
            .append(
                StreamId(1),
                &Placed {
                    order: n,
                    note: String::new(),
                },
            )
            .unwrap();
    }
    let followed: Vec<u64> = out
        .map(|l| {
            serde_json::from_str::<Value>(&l.unwrap()).unwrap()["global"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(followed, [12, 13, 14]);
    assert!(child.wait().unwrap().success());
}

#[test]
fn backup_export_and_restore_round_trip_through_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let varve = store(dir.path());
    let full = dir.path().join("full");
    let report = json(varvedb(dir.path()).arg("backup").arg(&full));
    assert_eq!(report["events"], 12);
    // Never over an existing backup.
    let refused = varvedb(dir.path())
        .arg("backup")
        .arg(&full)
        .assert()
        .code(1);
    assert!(stderr_has(refused.get_output(), "already exists"));
    varve
        .events::<Placed>()
        .unwrap()
        .append(
            StreamId(4),
            &Placed {
                order: 12,
                note: String::new(),
            },
        )
        .unwrap();
    let seg = dir.path().join("1.seg");
    let exported = json(
        varvedb(dir.path())
            .arg("export")
            .arg(&seg)
            .arg("--after")
            .arg(&full),
    );
    assert_eq!(
        (exported["from"].clone(), exported["to"].clone()),
        (12.into(), 13.into())
    );
    let restored = dir.path().join("restored");
    let report = json(
        Command::cargo_bin("varvedb")
            .unwrap()
            .arg("restore")
            .arg(&full)
            .arg(&seg)
            .arg("--to")
            .arg(&restored),
    );
    assert_eq!(report["events"], 13);
    let info = json(
        Command::cargo_bin("varvedb")
            .unwrap()
            .arg("--store")
            .arg(&restored)
            .arg("info"),
    );
    assert_eq!(info["store_id"], varve.store_id().to_string());
    // A follower writes a segment for new commits, in a directory.
    let follow = std::process::Command::new(assert_cmd::cargo::cargo_bin("varvedb"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .args([
            "--json",
            "export",
            "--follow",
            "--max-segments",
            "1",
            "--after",
        ])
        .arg(&seg)
        .arg(dir.path().join("standby"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    varve
        .events::<Placed>()
        .unwrap()
        .append(
            StreamId(4),
            &Placed {
                order: 13,
                note: String::new(),
            },
        )
        .unwrap();
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success());
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (written["from"].clone(), written["to"].clone()),
        (13.into(), 14.into())
    );
    // A segment out of its chain is refused.
    let restored2 = dir.path().join("restored2");
    let refused = Command::cargo_bin("varvedb")
        .unwrap()
        .arg("restore")
        .arg(&full)
        .arg(&seg)
        .arg(&seg)
        .arg("--to")
        .arg(&restored2)
        .assert()
        .code(1);
    assert!(stderr_has(refused.get_output(), "out of order"));
    assert!(!restored2.exists());
}

#[test]
fn commands_without_a_store_or_on_a_missing_one_fail_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("varvedb")
        .unwrap()
        .env_remove("VARVEDB_STORE")
        .arg("info")
        .assert()
        .code(1);
    let missing = dir.path().join("nothing");
    Command::cargo_bin("varvedb")
        .unwrap()
        .arg("--store")
        .arg(&missing)
        .arg("info")
        .assert()
        .code(1);
    assert!(!missing.exists(), "inspection created the store");
}

#[test]
fn an_application_tool_prints_its_registered_events_as_typed_json() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path());
    let mut out = Vec::new();
    let store = dir.path().join("store");
    let code = varvedb::cli::Cli::new().event::<Placed>().run_from(
        [
            "varvedb".as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            "dump".as_ref(),
        ],
        &mut out,
    );
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let first: Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["order"], 0);
    assert_eq!(first["event"]["note"], "order 0");
    assert!(first.get("payload_base64").is_none());
}

fn stderr_has(output: &std::process::Output, needle: &str) -> bool {
    String::from_utf8_lossy(&output.stderr).contains(needle)
}

/// A copy of the store the published varvedb 0.4.2 wrote
/// (`tests/fixtures/v0.4`).
fn old_04(dir: &Path) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v0.4/data.mdb");
    let old = dir.join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(fixture, old.join("data.mdb")).unwrap();
    old
}

#[test]
fn the_generic_binary_refuses_to_import_streams_it_has_no_types_for() {
    let dir = tempfile::tempdir().unwrap();
    let old = old_04(dir.path());
    let new = dir.path().join("new");
    let out = Command::cargo_bin("varvedb")
        .unwrap()
        .arg("import")
        .arg(&old)
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for stream in [
        "\"orders\" (7 events)",
        "\"ticks\" (5 events)",
        "\"users\" (3 events)",
    ] {
        assert!(stderr.contains(stream), "{stderr}");
    }
    assert!(stderr.contains("Cli::stream"), "{stderr}");
    assert!(!new.exists());
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
struct OrderPlaced {
    order: u64,
    cents: u64,
    note: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
struct UserRenamed {
    name: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
struct Tick {
    n: u32,
}

fn tool() -> varvedb::cli::Cli {
    varvedb::cli::Cli::new()
        .stream::<OrderPlaced>("orders")
        .stream::<UserRenamed>("users")
        .stream::<Tick>("ticks")
}

#[test]
fn a_tool_with_the_types_imports_a_042_store_and_reads_it_typed() {
    let dir = tempfile::tempdir().unwrap();
    let old = old_04(dir.path());
    let new = dir.path().join("new");
    let (old_arg, new_arg) = (old.to_str().unwrap(), new.to_str().unwrap());
    let mut out = Vec::new();
    let code = tool().run_from(["varvedb", "--json", "import", old_arg, new_arg], &mut out);
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["events"], 15);
    assert_eq!(report["renumbered"], 0);
    assert_eq!(report["streams"]["orders"], 7);

    // The table form, into another directory.
    let mut out = Vec::new();
    let again = dir.path().join("again");
    let code = tool().run_from(
        ["varvedb", "import", old_arg, again.to_str().unwrap()],
        &mut out,
    );
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("imported 15 events"), "{text}");

    // The imported store reads typed through the same tool.
    let mut out = Vec::new();
    let args = [
        "varvedb", "--json", "--store", new_arg, "read", "orders", "1",
    ];
    assert_eq!(
        tool().run_from(args, &mut out),
        std::process::ExitCode::SUCCESS
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("second, with a longer note"), "{text}");

    // Importing again into the now non-empty destination is refused.
    let mut out = Vec::new();
    let code = tool().run_from(["varvedb", "import", old_arg, new_arg], &mut out);
    assert_ne!(code, std::process::ExitCode::SUCCESS);
}

/// Counts events into its read model.
struct Count;

impl varvedb::Projection for Count {
    fn apply(
        &mut self,
        _: &varvedb::GlobalEvent,
        model: &mut varvedb::ReadModel<'_, '_>,
    ) -> Result<(), varvedb::HandlerError> {
        let n = model.get_u64(b"n")?.unwrap_or(0);
        Ok(model.put_u64(b"n", n + 1)?)
    }
}

/// A sink that refuses the event at global sequence 3.
struct Picky;

impl varvedb::ExternalProjection for Picky {
    fn deliver(&mut self, event: &varvedb::GlobalEvent) -> Result<(), varvedb::HandlerError> {
        if event.global_sequence().0 == 3 {
            return Err("order 3 is not deliverable".into());
        }
        Ok(())
    }
}

fn append_one(varve: &Varve, order: u64) {
    let note = String::new();
    varve
        .events::<Placed>()
        .unwrap()
        .append(StreamId(7), &Placed { order, note })
        .unwrap();
}

#[test]
fn projections_lists_checkpoints_lag_and_failures_beside_a_running_application() {
    let dir = tempfile::tempdir().unwrap();
    let varve = store(dir.path());
    let mut count = varve.projector("count", Count).unwrap();
    count.catch_up().unwrap();
    let mut feed = varve
        .external_projector("feed", Picky)
        .unwrap()
        .on_error(varvedb::OnError::Skip);
    feed.catch_up().unwrap();
    append_one(&varve, 12);
    append_one(&varve, 13);

    let listed = json(varvedb(dir.path()).arg("projections"));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let (count_row, feed_row) = (&listed[0], &listed[1]);
    assert_eq!(count_row["name"], "count");
    assert_eq!(count_row["kind"], "in-store");
    assert_eq!(
        (count_row["checkpoint"].clone(), count_row["lag"].clone()),
        (12.into(), 2.into())
    );
    assert!(count_row["last_failure"].is_null());
    assert_eq!(feed_row["kind"], "external");
    assert_eq!(feed_row["skipped"], 1);
    assert_eq!(feed_row["last_failure"]["at"], 3);
    assert_eq!(
        feed_row["last_failure"]["error"],
        "order 3 is not deliverable"
    );
    let table = varvedb(dir.path())
        .arg("projections")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("last failure") && table.contains("at 3: order 3"),
        "{table}"
    );
}

#[test]
fn projections_reset_needs_write_and_a_recorded_name_then_resets_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let varve = store(dir.path());
    let mut count = varve.projector("count", Count).unwrap();
    count.catch_up().unwrap();
    let mut feed = varve.external_projector("feed", Picky).unwrap();
    // Stops at event 3 (the default policy): checkpoint 3.
    assert!(feed.catch_up().is_err());

    // Without --write: refused, nothing written.
    let refused = varvedb(dir.path())
        .args(["projections", "reset", "count"])
        .assert()
        .code(1);
    assert!(stderr_has(refused.get_output(), "--write"));
    assert_eq!(count.checkpoint().unwrap().0, 12);
    // A name the store does not record, with or without --write.
    for args in [
        &["projections", "reset", "counts", "--write"][..],
        &["projections", "reset", "counts"][..],
    ] {
        let refused = varvedb(dir.path()).args(args).assert().code(1);
        assert!(stderr_has(
            refused.get_output(),
            "no projection named \"counts\""
        ));
    }
    let refused = varvedb(dir.path())
        .args(["projections", "reset", "a/b", "--write"])
        .assert()
        .code(1);
    assert!(stderr_has(refused.get_output(), "projection name"));
    assert_eq!(count.checkpoint().unwrap().0, 12);

    // With --write, from another process, while this one holds the store.
    let reset = json(varvedb(dir.path()).args(["projections", "reset", "count", "--write"]));
    assert_eq!(
        (reset["checkpoint"].clone(), reset["model_entries"].clone()),
        (12.into(), 1.into())
    );
    assert_eq!(count.checkpoint().unwrap().0, 0);
    assert_eq!(count.model().get_u64(b"n").unwrap(), None);
    let listed = json(varvedb(dir.path()).arg("projections"));
    assert_eq!(listed[0]["name"], "count");
    assert!(listed[0]["kind"].is_null());
    assert_eq!(listed[0]["lag"], 12);
    // The in-store projector starts over, and sees each event once.
    count.catch_up().unwrap();
    assert_eq!(count.model().get_u64(b"n").unwrap(), Some(12));

    // An external one: its checkpoint goes back to the start (its sink is
    // not the store's to empty: its events are delivered again).
    let reset = json(varvedb(dir.path()).args(["projections", "reset", "feed", "--write"]));
    assert_eq!(
        (reset["kind"].clone(), reset["checkpoint"].clone()),
        ("external".into(), 3.into())
    );
    assert_eq!(feed.checkpoint().unwrap().0, 0);
}

#[test]
fn the_generic_binary_refuses_to_migrate_a_stream_it_has_no_type_for() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path());
    for args in [
        &["migrate", "orders"][..],
        &["migrate", "orders", "--write"][..],
    ] {
        let refused = varvedb(dir.path()).args(args).assert().code(1);
        let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
        assert!(stderr.contains("generic varvedb binary"), "{stderr}");
        assert!(
            stderr.contains("Cli::new().event::<YourEvent>()"),
            "{stderr}"
        );
    }
    let json_error = varvedb(dir.path())
        .args(["--json", "migrate", "orders"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let json_error: Value = serde_json::from_slice(&json_error).unwrap();
    assert!(json_error["error"]
        .as_str()
        .unwrap()
        .contains("needs the event type"));
}

mod v1 {
    #[derive(
        rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize, varvedb::Event,
    )]
    #[event(name = "Deposited", stream = "accounts")]
    pub struct Deposited {
        pub cents: u32,
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize, Event)]
#[event(name = "Deposited", stream = "accounts", version = 2, upcast_from = v1::Deposited)]
struct Deposited {
    cents: u64,
    currency: String,
}

impl varvedb::Upcast<v1::Deposited> for Deposited {
    fn upcast(old: &v1::ArchivedDeposited) -> Self {
        Deposited {
            cents: u64::from(old.cents.to_native()),
            currency: "EUR".into(),
        }
    }
}

fn accounts_tool() -> varvedb::cli::Cli {
    varvedb::cli::Cli::new().event::<Deposited>()
}

/// Runs the application tool in this process; the exit code and stdout.
fn run_tool(args: &[&str]) -> (std::process::ExitCode, String) {
    let mut out = Vec::new();
    let args = std::iter::once("varvedb").chain(args.iter().copied());
    let code = accounts_tool().run_from(args, &mut out);
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn an_application_tool_counts_old_versions_then_migrates_with_write() {
    use std::process::ExitCode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let varve = Varve::new(&path).unwrap();
        let mut old = varve.events::<v1::Deposited>().unwrap();
        old.append_batch(
            StreamId(1),
            &[v1::Deposited { cents: 5 }, v1::Deposited { cents: 6 }],
        )
        .unwrap();
        old.append(StreamId(2), &v1::Deposited { cents: 7 })
            .unwrap();
    }
    let store = path.to_str().unwrap();

    // A dry run (the default) counts without writing.
    let (code, out) = run_tool(&["--json", "--store", store, "migrate", "accounts"]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        (plan["events"].clone(), plan["blocks"].clone()),
        (3.into(), 2.into())
    );
    assert_eq!(plan["versions"][0]["version"], 1);
    assert_eq!(plan["version"], 2);
    let (code, out) = run_tool(&["--store", store, "migrate", "accounts", "--dry-run"]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.contains("3 events at older versions (v1: 3)"), "{out}");
    assert!(out.contains("--write"), "{out}");
    // Still version 1 on disk: a dry run wrote nothing.
    let (_, out) = run_tool(&["--json", "--store", store, "migrate", "accounts"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["events"], 3);
    // --dry-run and --write contradict each other.
    let (code, _) = run_tool(&[
        "--store",
        store,
        "migrate",
        "accounts",
        "--dry-run",
        "--write",
    ]);
    assert_ne!(code, ExitCode::SUCCESS);
    // A stream with no registered type, even in an application tool.
    let (code, _) = run_tool(&["--store", store, "migrate", "orders", "--write"]);
    assert_eq!(code, ExitCode::from(1));

    let (code, out) = run_tool(&["--json", "--store", store, "migrate", "accounts", "--write"]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            report["events"].clone(),
            report["blocks"].clone(),
            report["ok"].clone()
        ),
        (3.into(), 2.into(), true.into())
    );
    assert_eq!(report["retired"], serde_json::json!([1]));
    // Nothing left at an old version; the events read as version 2.
    let (_, out) = run_tool(&["--json", "--store", store, "migrate", "accounts"]);
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (plan["events"].clone(), plan["current"].clone()),
        (0.into(), 3.into())
    );
    let (_, out) = run_tool(&["--json", "--store", store, "dump"]);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["cents"], 5);
    assert_eq!(first["event"]["currency"], "EUR");
    // The table form of a migration with nothing left to do.
    let (code, out) = run_tool(&["--store", store, "migrate", "accounts", "--write"]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.contains("0 events rewritten"), "{out}");
}

/// Waits (up to ten seconds) until `check` holds of `readers --json`.
fn readers_until(dir: &Path, mut check: impl FnMut(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let table = json(varvedb(dir).arg("readers"));
        if check(&table) || std::time::Instant::now() > deadline {
            return table;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn slot_of(table: &Value, pid: u32) -> Option<Value> {
    table["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == pid)
        .cloned()
}

#[test]
fn readers_lists_live_and_stale_slots_and_clears_stale_ones_only_with_write() {
    let dir = tempfile::tempdir().unwrap();
    let varve = store(dir.path());
    let mut orders = varve.events::<Placed>().unwrap();
    for n in 12..1500u64 {
        let note = "a note long enough to fill a pipe".to_owned();
        orders
            .append(StreamId(n % 5), &Placed { order: n, note })
            .unwrap();
    }

    // This process holds a snapshot: a live slot, one commit behind after
    // one more append.
    let snapshot = varve.snapshot().unwrap();
    append_one(&varve, 1500);
    let me = std::process::id();
    let table = json(varvedb(dir.path()).arg("readers"));
    let mine = slot_of(&table, me).expect("this process's slot is listed");
    assert_eq!(mine["stale"], false);
    assert_eq!(mine["behind"], 1);
    assert!(mine["txn"].as_u64().is_some());
    drop(snapshot);

    // A process killed while it reads leaves a stale slot: `dump` into a
    // pipe nobody reads blocks with its snapshot open.
    let mut dump = std::process::Command::new(assert_cmd::cargo::cargo_bin("varvedb"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("dump")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = dump.id();
    let table = readers_until(dir.path(), |t| slot_of(t, pid).is_some());
    assert_eq!(slot_of(&table, pid).unwrap()["stale"], false, "{table}");
    dump.kill().unwrap();
    dump.wait().unwrap();
    let table = json(varvedb(dir.path()).arg("readers"));
    let dead = slot_of(&table, pid).expect("the dead process's slot stays taken");
    assert_eq!(dead["stale"], true, "{table}");
    assert!(table["stale"].as_u64().unwrap() >= 1);
    let text = varvedb(dir.path())
        .arg("readers")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(text)
        .unwrap()
        .contains("stale (process gone)"));

    // Clearing writes the lock file: refused without --write.
    let refused = varvedb(dir.path())
        .args(["readers", "--clear-stale"])
        .assert()
        .code(1);
    assert!(stderr_has(refused.get_output(), "--write"));
    assert!(slot_of(&json(varvedb(dir.path()).arg("readers")), pid).is_some());
    let cleared = json(varvedb(dir.path()).args(["readers", "--clear-stale", "--write"]));
    assert!(cleared["cleared"].as_u64().unwrap() >= 1, "{cleared}");
    assert!(slot_of(&cleared, pid).is_none(), "{cleared}");
    assert_eq!(cleared["stale"], 0);
}

#[test]
fn an_encrypted_store_opens_with_a_key_file_or_a_passphrase_file_and_not_without() {
    let dir = tempfile::tempdir().unwrap();
    let key = [0x5au8; 32];
    for (n, config) in [
        varvedb::VarveConfig::encryption(varvedb::EncryptionKey::from_bytes(key)),
        varvedb::VarveConfig::encryption(varvedb::EncryptionKey::from_passphrase("open sesame")),
    ]
    .into_iter()
    .enumerate()
    {
        let sub = dir.path().join(format!("s{n}"));
        {
            let varve = Varve::with_config(sub.join("store"), config).unwrap();
            let mut orders = varve.events::<Placed>().unwrap();
            orders
                .append(
                    StreamId(1),
                    &Placed {
                        order: 1,
                        note: "secret".into(),
                    },
                )
                .unwrap();
        }
        // Without a key: a typed refusal at open, exit code 1.
        let refused = varvedb(&sub).arg("streams").assert().code(1);
        let stderr = String::from_utf8_lossy(&refused.get_output().stderr).to_lowercase();
        assert!(stderr.contains("key"), "{stderr}");
    }
    // The raw key, as 32 bytes and as hex; the passphrase with its newline.
    let raw = dir.path().join("key.bin");
    std::fs::write(&raw, key).unwrap();
    let hex = dir.path().join("key.hex");
    let digits: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&hex, format!("{digits}\n")).unwrap();
    let phrase = dir.path().join("passphrase");
    std::fs::write(&phrase, "open sesame\n").unwrap();
    let s0 = dir.path().join("s0");
    let s1 = dir.path().join("s1");
    for (store, flag, file) in [
        (&s0, "--key-file", &raw),
        (&s0, "--key-file", &hex),
        (&s1, "--passphrase-file", &phrase),
    ] {
        let streams = json(varvedb(store).arg(flag).arg(file).arg("streams"));
        assert_eq!(streams[0]["name"], "orders", "{flag} {}", file.display());
        let verify = json(varvedb(store).arg(flag).arg(file).arg("verify"));
        assert_eq!(verify["ok"], true);
    }
    // A wrong key, and a file that is no key, are refused with exit code 1.
    std::fs::write(&raw, [0x11u8; 32]).unwrap();
    varvedb(&s0)
        .arg("--key-file")
        .arg(&raw)
        .arg("info")
        .assert()
        .code(1);
    std::fs::write(&hex, "not a key").unwrap();
    let bad = varvedb(&s0)
        .arg("--key-file")
        .arg(&hex)
        .arg("info")
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&bad.get_output().stderr).to_string();
    assert!(
        stderr.contains("neither 32 bytes nor 64 hex digits"),
        "{stderr}"
    );
}

#[test]
fn restore_re_keys_a_backup_with_a_new_key_file_and_converts_a_plaintext_one() {
    let dir = tempfile::tempdir().unwrap();
    // A plaintext store (encrypted with the suite's key in its encrypted run).
    drop(store(dir.path()));
    varvedb(dir.path())
        .arg("backup")
        .arg(dir.path().join("full"))
        .assert()
        .success();
    let key = dir.path().join("new.key");
    std::fs::write(&key, [0x6bu8; 32]).unwrap();
    let rekeyed = dir.path().join("rekeyed");
    let report = json(
        Command::cargo_bin("varvedb")
            .unwrap()
            .arg("restore")
            .arg(dir.path().join("full"))
            .arg("--to")
            .arg(&rekeyed)
            .arg("--new-key-file")
            .arg(&key),
    );
    assert_eq!(report["events"], 12);
    let bytes = std::fs::read(rekeyed.join("data.mdb")).unwrap();
    assert!(!bytes.windows(7).any(|w| w == b"order 3"), "plaintext left");
    // It opens with the new key only.
    let open = |args: &[&str]| {
        let mut cmd = Command::cargo_bin("varvedb").unwrap();
        cmd.arg("--store").arg(&rekeyed).args(args);
        cmd
    };
    open(&["streams"]).assert().code(1);
    let verify = json(&mut open(&["verify", "--key-file", key.to_str().unwrap()]));
    assert_eq!(verify["ok"], true);
    // Re-keyed again, from a backup of the encrypted one, to a passphrase.
    json(open(&["--key-file", key.to_str().unwrap(), "backup"]).arg(dir.path().join("full2")));
    let phrase = dir.path().join("phrase");
    std::fs::write(&phrase, "second key\n").unwrap();
    let again = dir.path().join("again");
    json(
        Command::cargo_bin("varvedb")
            .unwrap()
            .arg("--key-file")
            .arg(&key)
            .arg("restore")
            .arg(dir.path().join("full2"))
            .arg("--to")
            .arg(&again)
            .arg("--new-passphrase-file")
            .arg(&phrase),
    );
    let mut cmd = Command::cargo_bin("varvedb").unwrap();
    cmd.arg("--store")
        .arg(&again)
        .arg("--passphrase-file")
        .arg(&phrase)
        .arg("streams");
    assert_eq!(json(&mut cmd)[0]["name"], "orders");
}

#[test]
fn a_store_with_a_key_vault_verifies_with_it_and_counts_erased_events() {
    let dir = tempfile::tempdir().unwrap();
    let key = [0x5au8; 32];
    let vault = dir.path().join("vault");
    {
        let config = varvedb::VarveConfig::encryption(varvedb::EncryptionKey::from_bytes(key))
            .key_vault(&vault);
        let varve = Varve::with_config(dir.path().join("store"), config).unwrap();
        let mut orders = varve.events::<Placed>().unwrap();
        for id in [1, 2] {
            let placed = Placed {
                order: id,
                note: "secret".into(),
            };
            orders.append(StreamId(id), &placed).unwrap();
        }
        assert_eq!(orders.erase(StreamId(2)).unwrap(), varvedb::Erasure::Erased);
    }
    let raw = dir.path().join("key.bin");
    std::fs::write(&raw, key).unwrap();
    // Without the vault: a typed refusal at open.
    let refused = varvedb(dir.path())
        .arg("--key-file")
        .arg(&raw)
        .arg("verify")
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert!(stderr.contains("key vault"), "{stderr}");
    let verify = json(
        varvedb(dir.path())
            .arg("--key-file")
            .arg(&raw)
            .arg("--key-vault")
            .arg(&vault)
            .arg("verify"),
    );
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["events"], 1, "{verify}");
    assert_eq!(verify["erased_events"], 1, "{verify}");
}
