//! Shared fixtures for the workspace's examples and behaviour tests.

use rkyv::{Archive, Deserialize, Serialize};
use varvedb::Varve;

/// A fresh store in a temporary directory (deleted when the guard drops).
pub fn temp_store() -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let varve = Varve::new(dir.path()).expect("open a fresh store");
    (dir, varve)
}

/// A small event used across the tests.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
