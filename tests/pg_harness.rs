//! The PostgreSQL test harness itself (`varvedb_suite::pg`): which server it
//! picks, the database names it derives, that a fresh database is empty,
//! distinct and dropped, that a private cluster survives an abrupt stop and
//! restarts, that a temporary cluster stops when its process exits or is
//! killed, and that a missing server is a skip, or a failure when required.
//!
//! The tests that need a server run against the real one the harness finds
//! (skipped without one, like the conformance suite's PostgreSQL tests).

use std::path::Path;
use std::process::{Command, Stdio};

use varvedb_suite::pg::{self, Source};

#[test]
fn the_source_is_the_named_server_then_the_tools_then_nothing() {
    let url = || Some("postgres://u@h/db".to_string());
    let tools = || Some(Path::new("/opt/pg/bin").to_path_buf());
    assert_eq!(
        pg::choose(url(), tools()),
        Source::External("postgres://u@h/db".into())
    );
    assert_eq!(
        pg::choose(url(), None),
        Source::External("postgres://u@h/db".into())
    );
    assert_eq!(
        pg::choose(None, tools()),
        Source::Temporary("/opt/pg/bin".into())
    );
    // An empty variable names no server.
    assert_eq!(
        pg::choose(Some("  ".into()), tools()),
        Source::Temporary("/opt/pg/bin".into())
    );
    assert_eq!(pg::choose(None, None), Source::Missing);
}

#[test]
fn a_database_url_is_derived_from_either_connection_string_form() {
    let cases = [
        (
            "postgres://u@127.0.0.1:5432/postgres",
            "postgres://u@127.0.0.1:5432/t1",
        ),
        ("postgresql://u:p@h", "postgresql://u:p@h/t1"),
        (
            "postgres://u@h/x?sslmode=disable",
            "postgres://u@h/t1?sslmode=disable",
        ),
        ("postgres://u@%2Ftmp%2Fpg/x", "postgres://u@%2Ftmp%2Fpg/t1"),
        (
            "host=/tmp user=u dbname=x",
            "host=/tmp user=u dbname=x dbname=t1",
        ),
    ];
    for (url, want) in cases {
        assert_eq!(pg::url_with_database(url, "t1"), want, "{url}");
    }
    // The key=value form really takes the last dbname.
    let config: postgres::Config = pg::url_with_database("host=/tmp dbname=x", "t1")
        .parse()
        .unwrap();
    assert_eq!(config.get_dbname(), Some("t1"));
}

fn fake_tools(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("initdb"), "").unwrap();
    std::fs::write(dir.join("pg_ctl"), "").unwrap();
}

#[test]
fn the_tools_are_found_on_the_path_then_in_the_newest_versioned_directory() {
    let root = tempfile::tempdir().unwrap();
    let on_path = root.path().join("path-bin");
    let versions = root.path().join("versions");
    fake_tools(&on_path);
    fake_tools(&versions.join("9").join("bin"));
    fake_tools(&versions.join("15").join("bin"));
    fake_tools(&versions.join("13").join("bin"));
    std::fs::create_dir_all(versions.join("16").join("bin")).unwrap(); // no tools
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();

    let path = std::env::join_paths([&empty, &on_path]).unwrap();
    assert_eq!(pg::find_tools_in(Some(&path), &versions), Some(on_path));
    let path = std::env::join_paths([&empty]).unwrap();
    assert_eq!(
        pg::find_tools_in(Some(&path), &versions),
        Some(versions.join("15").join("bin"))
    );
    assert_eq!(pg::find_tools_in(None, &root.path().join("absent")), None);
}

fn database_count(db: &pg::TestDatabase) -> i64 {
    pg::query_i64(
        db.admin_url(),
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}'",
            db.name()
        ),
    )
    .unwrap()
}

#[test]
fn a_fresh_database_is_empty_distinct_and_dropped_with_its_guard() {
    let Some(first) = pg::fresh_database("harness_fresh") else {
        return;
    };
    let second = pg::fresh_database("harness_fresh").unwrap();
    assert_ne!(first.name(), second.name());
    assert_ne!(first.url(), second.url());
    let tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";
    assert_eq!(pg::query_i64(first.url(), tables).unwrap(), 0);
    pg::admin(
        first.url(),
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    assert_eq!(pg::query_i64(first.url(), tables).unwrap(), 1);
    assert_eq!(
        pg::query_i64(second.url(), tables).unwrap(),
        0,
        "databases are separate"
    );

    // A session still open does not keep the database alive.
    let mut open = postgres::Client::connect(first.url(), postgres::NoTls).unwrap();
    open.batch_execute("SELECT 1").unwrap();
    let (admin, name) = (first.admin_url().to_string(), first.name().to_string());
    assert_eq!(database_count(&first), 1);
    drop(first);
    let left = pg::query_i64(
        &admin,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
    .unwrap();
    assert_eq!(left, 0, "the guard dropped its database");
    assert!(
        open.batch_execute("SELECT 1").is_err(),
        "its sessions were ended"
    );
    assert_eq!(database_count(&second), 1);
}

#[test]
fn a_private_cluster_survives_an_immediate_stop_and_restarts() {
    let Some(cluster) = pg::private_cluster("harness_private_cluster") else {
        return;
    };
    let db = cluster.fresh_database("restart").unwrap();
    pg::admin(
        db.url(),
        "CREATE TABLE t (x bigint); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .unwrap();
    let mut session = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
    assert!(cluster.is_running());

    cluster.stop_immediate().unwrap();
    assert!(!cluster.is_running());
    let cut = session.batch_execute("SELECT 1").unwrap_err();
    assert!(cut.is_closed() || cut.as_db_error().is_some() || !cut.to_string().is_empty());
    assert!(
        pg::admin(db.url(), "SELECT 1").is_err(),
        "no server: connecting fails"
    );

    cluster.start_again().unwrap();
    assert!(cluster.is_running());
    let count = pg::query_i64(db.url(), "SELECT count(*) FROM t").unwrap();
    assert_eq!(count, 1000, "committed rows survive an immediate stop");

    let data = cluster.data_dir();
    assert!(data.join("PG_VERSION").is_file());
    drop(db);
    drop(cluster);
    assert!(!data.exists(), "the cluster's directory is deleted with it");
}

const CHILD: &str = "VARVEDB_PG_HARNESS_CHILD";

#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_without_a_server() {
    assert!(
        std::env::var(CHILD).is_ok(),
        "not a test on its own: run by without_a_server_a_required_run_fails_and_another_skips"
    );
    pg::skip_or_fail("child_test", "no PostgreSQL server is configured");
}

#[test]
fn without_a_server_a_required_run_fails_and_another_skips() {
    // Without --nocapture: the skip line must get past libtest's capture.
    let run = |require: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "a_child_without_a_server",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(pg::REQUIRE_VAR, require)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let skipped = run("0");
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{stderr}");
    assert!(
        stderr.contains("child_test: PostgreSQL tests skipped"),
        "the skip is shown: {stderr}"
    );
    let required = run("1");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&required.stdout),
        String::from_utf8_lossy(&required.stderr)
    );
    assert!(
        !required.status.success(),
        "a required server fails the run"
    );
    assert!(
        output.contains("PostgreSQL is required (VARVEDB_REQUIRE_POSTGRES=1)"),
        "{output}"
    );
}

const CLUSTER_CHILD: &str = "VARVEDB_PG_HARNESS_CLUSTER_CHILD";

#[test]
#[ignore = "a child process: its parent test runs it with --ignored --exact"]
fn a_child_with_a_temporary_cluster() {
    let Ok(how) = std::env::var(CLUSTER_CHILD) else {
        panic!(
            "not a test on its own: run by the temporary cluster tests, which set {CLUSTER_CHILD}"
        );
    };
    let db = pg::fresh_database("cluster_child").expect("a temporary cluster");
    println!("@@ {}", db.admin_url());
    if how == "wait" {
        // Until the parent kills this process.
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Runs the child above, which starts the binary's shared temporary cluster,
/// and returns the cluster's URL once the child has exited or been killed.
fn cluster_of_a_child(how: &str) -> Option<String> {
    if pg::find_tools().is_none() {
        pg::skip_or_fail(
            "temporary_cluster_at_exit",
            "initdb and pg_ctl are not installed",
        );
        return None;
    }
    let mut child = varvedb_suite::child_test("a_child_with_a_temporary_cluster")
        .env(CLUSTER_CHILD, how)
        .env_remove(pg::URL_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut url = None;
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0 {
        if let Some(at) = line.find("@@ ") {
            url = Some(line[at + 3..].trim().to_string());
            break;
        }
        line.clear();
    }
    let url = url.expect("the child reported its cluster");
    assert!(
        pg::admin(&url, "SELECT 1").is_ok(),
        "the cluster runs while the child does"
    );
    if how == "wait" {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    assert_eq!(status.success(), how == "exit", "{status}");
    Some(url)
}

fn stopped_within(url: &str, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if pg::admin(url, "SELECT 1").is_err() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_temporary_cluster_stops_when_its_process_exits_or_is_killed() {
    let Some(url) = cluster_of_a_child("exit") else {
        return;
    };
    // Stopped at exit: gone by the time the exit status is known.
    assert!(
        stopped_within(&url, std::time::Duration::from_millis(1)),
        "still running after exit"
    );
    let url = cluster_of_a_child("wait").unwrap();
    // Killed with SIGKILL: the watchdog stops it within a few seconds.
    assert!(
        stopped_within(&url, std::time::Duration::from_secs(30)),
        "the cluster outlived its killed process"
    );
}
