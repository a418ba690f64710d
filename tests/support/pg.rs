//! PostgreSQL servers for the tests: a fresh database per test, on the
//! server named by `VARVEDB_TEST_POSTGRES_URL`, or on a temporary cluster this
//! process starts when `initdb` and `pg_ctl` are at hand; otherwise the test
//! is skipped, and says so (a failure instead under
//! `VARVEDB_REQUIRE_POSTGRES=1`, as in `.ci/run`).
//!
//! ```no_run
//! let Some(db) = varvedb_suite::pg::fresh_database("my_test") else {
//!     return; // skipped: no server, and none required
//! };
//! let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
//! client.batch_execute("CREATE TABLE t (x int)").unwrap();
//! // The database is dropped when `db` drops.
//! ```
//!
//! The reliability tests that stop the server abruptly get a cluster of their
//! own ([`private_cluster`](crate::pg::private_cluster)): stopping a shared one would break the other
//! tests of the binary, which run in parallel.
//!
//! This file uses only `std`, `postgres`, `tempfile` and `libc`: the
//! PostgreSQL bench of `varvedb` includes it by path for its temporary cluster.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The variable naming a server for the tests (a superuser's URL or
/// `key=value` connection string; the tests create and drop databases on it).
pub const URL_VAR: &str = "VARVEDB_TEST_POSTGRES_URL";

/// Set to `1` to make a missing server a test failure instead of a skip.
pub const REQUIRE_VAR: &str = "VARVEDB_REQUIRE_POSTGRES";

/// Whether the environment requires PostgreSQL (`VARVEDB_REQUIRE_POSTGRES=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v.trim() == "1")
}

/// Where the tests' server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A server the environment names (its URL).
    External(String),
    /// A temporary cluster, started with the tools in this directory.
    Temporary(PathBuf),
    /// Neither: the PostgreSQL tests are skipped (or fail, if required).
    Missing,
}

/// The rule: a named server first, then a temporary cluster if the tools
/// are there, else nothing.
pub fn choose(url: Option<String>, tools: Option<PathBuf>) -> Source {
    match (url.filter(|u| !u.trim().is_empty()), tools) {
        (Some(url), _) => Source::External(url),
        (None, Some(bin)) => Source::Temporary(bin),
        (None, None) => Source::Missing,
    }
}

/// The source this process uses: [`choose`] over the environment and
/// [`find_tools`].
pub fn source() -> Source {
    choose(std::env::var(URL_VAR).ok(), find_tools())
}

fn has_tools(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// The directory holding `initdb` and `pg_ctl`: the first on `PATH`, else
/// the newest `/usr/lib/postgresql/*/bin` (where Debian and Ubuntu install
/// them, off the `PATH`).
pub fn find_tools() -> Option<PathBuf> {
    find_tools_in(
        std::env::var_os("PATH").as_deref(),
        Path::new("/usr/lib/postgresql"),
    )
}

/// [`find_tools`] over a given `PATH` and versions directory.
pub fn find_tools_in(path: Option<&std::ffi::OsStr>, versions: &Path) -> Option<PathBuf> {
    if let Some(path) = path {
        if let Some(dir) = std::env::split_paths(path).find(|d| has_tools(d)) {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(versions)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// `url` with its database replaced by `database`: the path of a
/// `postgres://` URL, or a `dbname=` appended to a `key=value` string (the
/// last one wins).
pub fn url_with_database(url: &str, database: &str) -> String {
    let url = url.trim();
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (main, query) = match rest.split_once('?') {
                Some((main, query)) => (main, Some(query)),
                None => (rest, None),
            };
            let authority = main.split_once('/').map_or(main, |(a, _)| a);
            let mut out = format!("{scheme}{authority}/{database}");
            if let Some(query) = query {
                out.push('?');
                out.push_str(query);
            }
            return out;
        }
    }
    format!("{url} dbname={database}")
}

/// Writes straight to the standard error file, past libtest's capture, so
/// a skip shows in `cargo test`'s output.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Reports that `test` cannot run for want of a server (`why`): a line on
/// standard error (past libtest's capture), or a panic under
/// `VARVEDB_REQUIRE_POSTGRES=1`.
pub fn skip_or_fail(test: &str, why: &str) {
    if required() {
        panic!("{test}: PostgreSQL is required ({REQUIRE_VAR}=1) but {why}");
    }
    say(&format!(
        "{test}: PostgreSQL tests skipped: {why} (set {URL_VAR}, or put initdb and pg_ctl on PATH)"
    ));
}

/// A database created for one test, dropped (its sessions ended first) when
/// this guard drops.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a uniquely named database on the server `admin_url` connects
    /// to (as a user allowed to create databases).
    pub fn create(admin_url: &str, test: &str) -> Result<TestDatabase, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let name = format!(
            "varvedb_{slug}_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin(admin_url, &format!("CREATE DATABASE \"{name}\""))?;
        Ok(TestDatabase {
            url: url_with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL it was created through (the server's maintenance database).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // One statement per call: DROP DATABASE refuses to run inside the
        // implicit transaction of a multi-statement query. `WITH (FORCE)`
        // (PostgreSQL 13+) ends the sessions still open on it and waits;
        // older servers get them ended by hand, then the drop retried.
        let name = &self.name;
        if admin(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )
        .is_ok()
        {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = admin(
                &self.admin_url,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                       WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
            );
            match admin(
                &self.admin_url,
                &format!("DROP DATABASE IF EXISTS \"{name}\""),
            ) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    say(&format!("could not drop test database {name}: {e}"));
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Runs `sql` on a new connection to `url`, on a thread of its own: the
/// blocking client must not run inside a tokio runtime, and a test may call
/// this from one.
pub fn admin(url: &str, sql: &str) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(url, postgres::NoTls)
                .map_err(|e| format!("connect to {url}: {e}"))?;
            client
                .batch_execute(sql)
                .map_err(|e| format!("run {sql:?}: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the admin thread panicked".into()))
    })
}

/// Runs `sql` (one statement returning one `bigint`) on `url` and returns it.
pub fn query_i64(url: &str, sql: &str) -> Result<i64, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(url, postgres::NoTls)
                .map_err(|e| format!("connect to {url}: {e}"))?;
            let row = client
                .query_one(sql, &[])
                .map_err(|e| format!("run {sql:?}: {e}"))?;
            row.try_get::<_, i64>(0).map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("the query thread panicked".into()))
    })
}

/// The server the tests of this process share.
enum Server {
    External(String),
    Temporary(Cluster),
}

impl Server {
    fn admin_url(&self) -> String {
        match self {
            Server::External(url) => url.clone(),
            Server::Temporary(cluster) => cluster.url("postgres"),
        }
    }
}

static SHARED: OnceLock<Result<Option<Server>, String>> = OnceLock::new();

#[cfg(unix)]
extern "C" fn stop_shared_cluster() {
    if let Some(Ok(Some(Server::Temporary(cluster)))) = SHARED.get() {
        cluster.shut_down();
    }
}

fn shared() -> &'static Result<Option<Server>, String> {
    SHARED.get_or_init(|| match source() {
        Source::External(url) => Ok(Some(Server::External(url))),
        Source::Temporary(bin) => {
            let cluster = Cluster::start_with(&bin)?;
            // Statics are never dropped: stop the cluster when the process exits.
            #[cfg(unix)]
            // SAFETY: `stop_shared_cluster` is a plain `extern "C" fn` that
            // only reads a `OnceLock` already initialised.
            unsafe {
                libc::atexit(stop_shared_cluster);
            }
            Ok(Some(Server::Temporary(cluster)))
        }
        Source::Missing => Ok(None),
    })
}

/// A fresh, empty database for `test`, or `None` if there is no server (the
/// test should return: it is skipped, and this says so on standard error).
///
/// # Panics
/// If there is no server and `VARVEDB_REQUIRE_POSTGRES=1`, or if the server
/// cannot be started or the database created.
pub fn fresh_database(test: &str) -> Option<TestDatabase> {
    match shared() {
        Ok(Some(server)) => Some(
            TestDatabase::create(&server.admin_url(), test)
                .unwrap_or_else(|e| panic!("{test}: cannot create a test database: {e}")),
        ),
        Ok(None) => {
            skip_or_fail(test, "no PostgreSQL server is configured");
            None
        }
        Err(e) => panic!("{test}: cannot start a temporary PostgreSQL cluster: {e}"),
    }
}

/// A cluster of the test's own, for tests that stop and restart the server;
/// `None` (skipped, or a failure if required) without `initdb` and `pg_ctl`.
pub fn private_cluster(test: &str) -> Option<Cluster> {
    match find_tools() {
        Some(bin) => Some(
            Cluster::start_with(&bin)
                .unwrap_or_else(|e| panic!("{test}: cannot start a PostgreSQL cluster: {e}")),
        ),
        None => {
            skip_or_fail(test, "initdb and pg_ctl are not installed");
            None
        }
    }
}

/// Whether this process runs as root (the server must then run as the
/// `postgres` user: `initdb` and `postgres` refuse root).
fn is_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: `geteuid` has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, listening on
/// 127.0.0.1 on a free port (trust authentication, superuser `postgres`,
/// fsync on). Stopped and deleted when dropped, and by a watchdog if this
/// process dies without dropping it.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    watchdog: Mutex<Option<Child>>,
}

impl Cluster {
    /// Starts a cluster with the tools [`find_tools`] finds.
    pub fn start() -> Result<Cluster, String> {
        let bin = find_tools().ok_or("initdb and pg_ctl not found")?;
        Cluster::start_with(&bin)
    }

    /// Starts a cluster with the `initdb` and `pg_ctl` in `bin`.
    pub fn start_with(bin: &Path) -> Result<Cluster, String> {
        let as_postgres = is_root();
        let root = tempfile::Builder::new()
            .prefix("varvedb-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?
            .keep();
        let mut cluster = Cluster {
            root,
            bin: bin.to_path_buf(),
            port: 0,
            as_postgres,
            watchdog: Mutex::new(None),
        };
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&cluster.root)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "cannot give {} to the postgres user (running as root needs one)",
                    cluster.root.display()
                ));
            }
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data_dir().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_again() {
                Ok(()) => {
                    cluster.spawn_watchdog();
                    return Ok(cluster);
                }
                // Most likely another process took the port meanwhile.
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A `postgres://` URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A fresh database on this cluster.
    pub fn fresh_database(&self, test: &str) -> Result<TestDatabase, String> {
        TestDatabase::create(&self.url("postgres"), test)
    }

    fn tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .tool(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?} failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ))
        }
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Starts the server (again, after [`Cluster::stop_immediate`]) and waits
    /// until it accepts connections.
    pub fn start_again(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=on -c max_connections=300",
            self.port,
            self.root.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir().to_string_lossy(),
                "-l",
                &self.log_file().to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )?;
        // `pg_ctl -w` waits for the socket; wait for a real session too.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin(&self.url("postgres"), "SELECT 1") {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`: no checkpoint,
    /// sessions cut, recovery from the WAL at the next start), as a crash.
    pub fn stop_immediate(&self) -> Result<(), String> {
        self.stop("immediate")
    }

    /// Stops the server cleanly (`-m fast`).
    pub fn stop_fast(&self) -> Result<(), String> {
        self.stop("fast")
    }

    fn stop(&self, mode: &str) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir().to_string_lossy(),
                "-m",
                mode,
                "-w",
                "stop",
            ],
        )
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.tool("pg_ctl")
            .args(["-D", &self.data_dir().to_string_lossy(), "status"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A shell process that stops the server and deletes the directory once
    /// this process is gone, however it ended (kill -9 included). Its
    /// output goes nowhere, so it holds no pipe of a caller open.
    fn spawn_watchdog(&self) {
        let stop = format!(
            "{}'{}' -D '{}' -m immediate stop",
            if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.data_dir().display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{root}'",
            pid = std::process::id(),
            root = self.root.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = child {
            *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        }
    }

    /// Stops the server (if running) and deletes its directory.
    fn shut_down(&self) {
        if self.is_running() {
            let _ = self.stop_immediate();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mut watchdog) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
