//! Bytes on disk must give a
//! typed error or a correct store, never a crash. Each image is opened in a
//! child process (this binary with `--ignored --exact`), so a crash shows as
//! a failed parent with its signal.

use std::path::{Path, PathBuf};
use std::process::Command;

use varvedb::{Durability, GlobalSequence, StreamId, Varve, VarveConfig};
use varvedb_suite::Order;

const CHILD: &str = "VARVEDB_DAMAGE_CHILD";
const PAGE: u64 = 4096;

fn data_file(dir: &Path) -> PathBuf {
    dir.join("data.mdb")
}

/// A small store: `events` orders in batches of 7 on 3 ids.
fn fill(dir: &Path, events: u64) {
    let varve = Varve::with_config(
        dir,
        VarveConfig {
            durability: Durability::NoSync,
            ..VarveConfig::default()
        },
    )
    .unwrap();
    let mut orders = varve.stream::<Order, 256>("orders").unwrap();
    let mut n = 0;
    while n < events {
        let batch: Vec<Order> = (n..(n + 7).min(events)).map(Order::numbered).collect();
        orders.append_batch(StreamId(n % 3), &batch).unwrap();
        n += batch.len() as u64;
    }
}

/// Runs the ignored test `name` with `CHILD=arg`: the child's outcome as
/// text, or the failure (a signal, a panic) as an error.
fn try_child(name: &str, arg: &str) -> Result<String, String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, arg)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let panic_line = stderr
        .lines()
        .find(|l| l.contains("panicked at") || l.contains("memory allocation"))
        .map(|l| {
            let next = stderr.lines().skip_while(|x| *x != l).nth(1).unwrap_or("");
            format!("{l} {next}")
        })
        .unwrap_or_default();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = out.status.signal() {
            return Err(format!(
                "child for {arg} killed by signal {sig} {panic_line}"
            ));
        }
    }
    if !(out.status.success() && stdout.contains("1 passed")) {
        return Err(format!("child for {arg} failed: {panic_line}"));
    }
    Ok(stdout
        .lines()
        .find_map(|l| l.split_once("OUTCOME ").map(|(_, o)| o.to_string()))
        .unwrap_or_else(|| "?".into()))
}

/// The child: opens the store at `CHILD` = `dir:expected_events` and reads
/// everything; an error is fine, a wrong count is not.
#[test]
#[ignore = "a child process of the damage tests"]
fn child_opens_a_damaged_store() {
    let spec = std::env::var(CHILD).expect("run by its parent test");
    let (dir, expected) = spec.rsplit_once(':').unwrap();
    let expected: u64 = expected.parse().unwrap();
    // Without an identity record an empty data file is a new store.
    let expected = if std::fs::metadata(Path::new(dir).join("data.mdb"))
        .unwrap()
        .len()
        == 0
        && !Path::new(dir).join("varvedb.id").exists()
    {
        0
    } else {
        expected
    };
    let result = Varve::new(dir).and_then(|varve| {
        let mut n = 0u64;
        for event in varve.global_reader().iter_from(GlobalSequence(0))? {
            event?;
            n += 1;
        }
        let report = varve.verify()?;
        Ok((n, report.problems.len()))
    });
    match result {
        Ok((n, problems)) => {
            println!("OUTCOME ok {n} events, {problems} problems");
            assert_eq!(problems, 0, "a store that opens verifies clean");
            assert_eq!(n, expected, "a store that opens holds every event");
        }
        Err(e) => println!("OUTCOME error {e}"),
    }
}

/// Byte offsets of `mm_last_pg` in LMDB's two meta pages (64-bit layout:
/// page header 16 bytes, then `MDB_meta` whose `mm_last_pg` is at +120).
const LAST_PG: [u64; 2] = [16 + 120, PAGE + 16 + 120];

fn patch_u64(path: &Path, at: u64, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_le_bytes(), at).unwrap();
}

/// A damaged `mm_last_pg` in the meta pages (one flipped high bit, or all
/// ones) must be a typed error at open. The length check computes
/// `last_pg + 1 - first_missing` unchecked and allocates a `Vec<bool>` of
/// that many entries before looking at anything else, so a huge `last_pg`
/// panics (overflow) or aborts (allocation failure) inside `Varve::new`.
#[test]
fn a_damaged_last_page_number_in_the_meta_pages_is_a_typed_error_never_a_crash() {
    let pristine = tempfile::tempdir().unwrap();
    fill(pristine.path(), 40);
    let mut outcomes = Vec::new();
    for last_pg in [u64::MAX, 1 << 44, 1 << 40] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["data.mdb", "varvedb.id"] {
            std::fs::copy(pristine.path().join(f), dir.path().join(f)).unwrap();
        }
        for at in LAST_PG {
            patch_u64(&data_file(dir.path()), at, last_pg);
        }
        let outcome = try_child(
            "child_opens_a_damaged_store",
            &format!("{}:40", dir.path().display()),
        );
        outcomes.push((last_pg, outcome));
    }
    for o in &outcomes {
        eprintln!("{o:?}");
    }
    assert!(outcomes.iter().all(|(_, o)| o.is_ok()), "{outcomes:#?}");
}

/// A small store cut at every page boundary (with and without its identity
/// record): each must open to every event, or be a typed error.
#[test]
fn a_small_store_cut_at_every_page_boundary_never_crashes() {
    let pristine = tempfile::tempdir().unwrap();
    fill(pristine.path(), 60);
    let bytes = std::fs::read(data_file(pristine.path())).unwrap();
    let full = bytes.len() as u64;
    let mut outcomes = Vec::new();
    for with_record in [true, false] {
        let mut len = 0;
        while len < full {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(data_file(dir.path()), &bytes[..len as usize]).unwrap();
            if with_record {
                std::fs::copy(
                    pristine.path().join("varvedb.id"),
                    dir.path().join("varvedb.id"),
                )
                .unwrap();
            }
            let outcome = try_child(
                "child_opens_a_damaged_store",
                &format!("{}:60", dir.path().display()),
            );
            outcomes.push((with_record, len, outcome));
            len += PAGE;
        }
    }
    for o in &outcomes {
        eprintln!("{o:?}");
    }
    assert!(outcomes.iter().all(|(_, _, o)| o.is_ok()), "see above");
}
