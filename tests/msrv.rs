//! The declared `rust-version` is true of the dependencies: no crate the
//! workspace builds (Cargo.lock as resolved with the features actually enabled,
//! on any target; normal, build and dev dependencies) declares a newer one.
//! loom and what it pulls in are left out: they are built only by CI's
//! `--cfg loom` model-checking step, never for a user of the crate.
//!
//! What this cannot see: a dependency that uses a newer std API without
//! declaring a `rust-version` (heed 0.23 declares none and needs 1.87). Only
//! building with the oldest toolchain proves those; clippy's `incompatible_msrv`
//! covers our own code.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `"1.88"` or `"1.85.0"` as a comparable `(major, minor, patch)`.
fn parse_version(v: &str) -> (u64, u64, u64) {
    let mut parts = v
        .split('.')
        .map(|p| p.parse::<u64>().expect("a numeric version"));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn no_dependency_declares_a_rust_version_newer_than_ours() {
    // `cargo metadata` lists every package of the lock file, even optional
    // dependencies no feature enables; `cargo tree` lists what is built.
    let built: BTreeSet<(String, String)> = cargo(&[
        "tree",
        "--locked",
        "--workspace",
        "--target",
        "all",
        "-e",
        "normal,build,dev",
        // loom is built only with `--cfg loom`, by CI's model-checking step
        // on its own toolchain, never for a user of the crate.
        "--prune",
        "loom",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ])
    .lines()
    .filter_map(|line| {
        let mut words = line.split_whitespace();
        let name = words.next()?;
        let version = words.next()?.strip_prefix('v')?;
        Some((name.to_string(), version.to_string()))
    })
    .collect();
    assert!(built.iter().any(|(name, _)| name == "heed"), "{built:?}");

    let metadata: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--locked", "--format-version", "1"]))
            .expect("cargo metadata's JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let declared: BTreeMap<(String, String), Option<String>> = packages
        .iter()
        .map(|p| {
            let key = (
                p["name"].as_str().expect("name").to_string(),
                p["version"].as_str().expect("version").to_string(),
            );
            (key, p["rust_version"].as_str().map(str::to_string))
        })
        .collect();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "varvedb")
        .and_then(|p| p["rust_version"].as_str())
        .expect("varvedb declares a rust-version");

    let mut newer = Vec::new();
    let mut undeclared = Vec::new();
    for key in &built {
        match declared.get(key) {
            Some(Some(theirs)) if parse_version(theirs) > parse_version(ours) => {
                newer.push(format!("{} {} needs {theirs}", key.0, key.1))
            }
            Some(Some(_)) => {}
            Some(None) => undeclared.push(format!("{} {}", key.0, key.1)),
            None => panic!("{key:?} is built but not in cargo metadata"),
        }
    }
    assert!(
        newer.is_empty(),
        "rust-version {ours} is false; raise it or pin older versions: {newer:?}"
    );
    // Not a failure (they cannot be checked without their toolchain), but
    // said, so a reader knows what the check does not cover.
    eprintln!(
        "rust-version {ours}: {} crates checked, {} declare none: {undeclared:?}",
        built.len(),
        undeclared.len()
    );
}
