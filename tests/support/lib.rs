//! Shared fixtures for the workspace's examples and behaviour tests.

/// A versioned event shared by the migration, fixture and chain tests.
pub mod deposited;

/// Checks of a global log: dense sequences, whole batches.
pub mod checks;

/// The backends the conformance suite runs against.
pub mod backend;

/// PostgreSQL servers and databases for the tests.
pub mod pg;

/// Child processes that report to their parent test.
#[cfg(unix)]
pub mod child;

pub use backend::{Backend, Place, TestStore};

use std::path::Path;

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::{Filter, GlobalEvent, HandlerError, Projection, ReadModel, Varve};

/// A fresh store in a temporary directory (deleted when the guard drops).
pub fn temp_store() -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let varve = Varve::new(dir.path()).expect("open a fresh store");
    (dir, varve)
}

/// A small event used across the tests.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, varvedb::Event)]
#[rkyv(derive(Debug))]
pub struct Order {
    /// Order number.
    pub id: u64,
    /// Quantity ordered.
    pub quantity: u32,
    /// Free text.
    pub note: String,
}

impl Order {
    /// An order whose fields are all derived from `n`.
    pub fn numbered(n: u64) -> Order {
        Order {
            id: n,
            quantity: (n % 7) as u32,
            note: format!("order number {n}"),
        }
    }
}

/// Flips bit 5 of the byte at `offset_in_needle` in every copy of `needle` in
/// the store's data file (LMDB's copy-on-write may leave stale copies in free
/// pages, so damaging only the first could miss the live one).
pub fn flip_in_data_file(dir: &Path, needle: &[u8], offset_in_needle: usize) {
    let path = dir.join("data.mdb");
    let mut bytes = std::fs::read(&path).expect("read the data file");
    let found: Vec<usize> = (0..bytes.len().saturating_sub(needle.len()))
        .filter(|&i| bytes[i..].starts_with(needle))
        .collect();
    assert!(!found.is_empty(), "needle present in the data file");
    for at in found {
        bytes[at + offset_in_needle] ^= 0x20;
    }
    std::fs::write(&path, bytes).expect("write the data file");
}

/// The product an order counts for in [`Sales`].
pub fn product(order: u64) -> String {
    format!("p{}", order % 5)
}

/// A projection of the `"orders"` stream: units and orders per product, the
/// number of orders and the last global sequence applied, so an event applied
/// twice, skipped or out of order shows (as a handler error).
pub struct Sales;

fn add(model: &mut ReadModel<'_, '_>, key: &str, n: u64) -> Result<(), HandlerError> {
    let total = model.get_u64(key.as_bytes())?.unwrap_or(0);
    model.put_u64(key.as_bytes(), total + n)?;
    Ok(())
}

impl Projection for Sales {
    fn filter(&self) -> Filter {
        Filter::all().stream("orders")
    }

    fn apply(
        &mut self,
        event: &GlobalEvent,
        model: &mut ReadModel<'_, '_>,
    ) -> Result<(), HandlerError> {
        let order = event.archived_plain::<Order>()?;
        let product = product(order.id.to_native());
        add(
            model,
            &format!("units/{product}"),
            u64::from(order.quantity.to_native()),
        )?;
        add(model, &format!("orders/{product}"), 1)?;
        add(model, "orders", 1)?;
        let global = event.global_sequence().0;
        if let Some(last) = model.get_u64(b"last")?.filter(|&last| last >= global) {
            return Err(
                format!("event {global} applied after {last}: twice or out of order").into(),
            );
        }
        model.put_u64(b"last", global)?;
        Ok(())
    }
}

/// A command that runs `test`, an `#[ignore]`d child-process entry point of the
/// calling test binary, alone: `--ignored --exact test --nocapture
/// --test-threads=1`. The parent adds the environment that tells the child
/// what to do (without it, every child entry point fails).
pub fn child_test(test: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    command.args([
        "--ignored",
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

/// Whether this run is the suite's encrypted run: `VARVEDB_TEST_ENCRYPTION_KEY`
/// set, so every store a test creates without a key is encrypted (varvedb's
/// test-only feature `test-encryption`, see docs/reliability.md).
pub fn encrypted_run() -> bool {
    std::env::var_os("VARVEDB_TEST_ENCRYPTION_KEY").is_some_and(|v| !v.is_empty())
}

/// For a test about the plaintext physical layout (raw bytes of the data
/// file, byte offsets in blocks): `true` (after printing why) in the
/// encrypted run, where it does not apply; the test then returns.
pub fn skip_when_encrypted(reason: &str) -> bool {
    let skip = encrypted_run();
    if skip {
        println!("skipped in the encrypted run: {reason}");
    }
    skip
}

/// Every file of `dir` with a digest of its bytes, to show a call changed
/// no byte (and created no file); `lock.mdb`, LMDB's reader table that
/// every reader writes its slot into, only by name.
pub fn file_digests(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| e.expect("read a directory entry"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = if name == "lock.mdb" {
                0
            } else {
                let bytes = std::fs::read(e.path()).expect("read a file");
                bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                }) ^ bytes.len() as u64
            };
            (name, digest)
        })
        .collect()
}
