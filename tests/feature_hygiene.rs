//! What a user's build of the workspace enables: the test-only feature
//! `test-encryption` (which makes every store a test creates encrypted when
//! `VARVEDB_TEST_ENCRYPTION_KEY` is set) reaches test builds only, never the
//! library or the `varvedb` tool a `cargo build`/`cargo install` produces.

use std::process::Command;

/// The features `cargo tree` reports enabled on `varvedb` for `edges`.
fn varvedb_features(edges: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--workspace",
            "-e",
            edges,
            "-i",
            "varvedb",
            "--depth",
            "0",
            "--prefix",
            "none",
            "--format",
            "{p}|{f}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let line = text
        .lines()
        .find(|l| l.starts_with("varvedb v"))
        .unwrap_or_else(|| panic!("varvedb in cargo tree's output:\n{text}"));
    let (_, features) = line.split_once('|').expect("package|features");
    features.split(',').map(str::to_owned).collect()
}

#[test]
fn the_test_only_encryption_switch_is_not_in_a_release_build() {
    let built = varvedb_features("normal");
    assert!(
        built.iter().any(|f| f == "cli"),
        "the tool's features are listed: {built:?}"
    );
    assert!(
        !built.iter().any(|f| f == "test-encryption"),
        "`cargo build --workspace` enables the test-only feature: {built:?}"
    );
}

#[test]
fn the_test_build_has_the_switch_the_encrypted_ci_run_needs() {
    let tested = varvedb_features("normal,dev");
    assert!(
        tested.iter().any(|f| f == "test-encryption"),
        "the suite's test build lacks `test-encryption`: {tested:?}"
    );
}
