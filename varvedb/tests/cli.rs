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
