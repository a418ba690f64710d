//! The bank of `bank.rs` on PostgreSQL: the same accounts, commands, tellers
//! and checks; only the store is opened differently, with `Varve::connect`.
//!
//! Point it at an empty database whose user may create tables:
//!
//! ```text
//! VARVEDB_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/bank \
//!     cargo run --example bank_postgres --features postgres
//! ```

// `bank.rs` is an example of its own; its `main` is unused here.
#[allow(dead_code)]
#[path = "bank.rs"]
mod bank;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("VARVEDB_POSTGRES_URL")
        .map_err(|_| "set VARVEDB_POSTGRES_URL to the URL of an empty PostgreSQL database")?;
    bank::run(|| varvedb::Varve::connect(&url))
}
