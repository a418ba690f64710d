//! Several processes opening one fresh store
//! directory at the same moment (workers of one service starting together).
//!
//! Each process whose open finds no `varvedb.id` writes one, through the same
//! temporary name `varvedb.id.tmp`: one process's `File::create` truncates
//! the other's file, a rename moves a file another is still writing, and the
//! loser's rename finds nothing. Every open of a directory nobody damaged
//! must succeed, and the store must open afterwards.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use varvedb::Varve;

const CHILD: &str = "VARVEDB_FIRST_OPEN";

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The child: `CHILD` = `dir:start`; spins until `start` (µs since the
/// epoch), opens the store, prints the outcome.
#[test]
#[ignore = "a child process of processes_opening_one_fresh_store_together_all_succeed"]
fn child_opens_at_a_given_instant() {
    let spec = std::env::var(CHILD).expect("run by its parent test");
    let (dir, start) = spec.rsplit_once(':').unwrap();
    let start: u128 = start.parse().unwrap();
    while now_micros() < start {
        std::hint::spin_loop();
    }
    match Varve::new(dir) {
        Ok(v) => println!("@@ ok {}", v.store_id()),
        Err(e) => println!("@@ error {e}"),
    }
}

#[test]
fn processes_opening_one_fresh_store_together_all_succeed() {
    let mut failures = Vec::new();
    let rounds = 12;
    for round in 0..rounds {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let start = now_micros() + 300_000;
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--ignored",
                        "--exact",
                        "child_opens_at_a_given_instant",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD, format!("{}:{start}", dir.display()))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let report = stdout
                .lines()
                .find_map(|l| l.split_once("@@ ").map(|(_, r)| r.to_string()))
                .unwrap_or_else(|| format!("no report, {}", out.status));
            if !report.starts_with("ok") {
                failures.push(format!("round {round}: {report}"));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        if let Err(e) = Varve::new(&dir) {
            failures.push(format!("round {round}: reopening afterwards: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} opens failed:\n{}",
        failures.len(),
        rounds * 5,
        failures.join("\n")
    );
}
