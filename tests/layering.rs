//! The crate is layered, as `docs/design.md` ("Layers and the backend seam")
//! says: each top-level module of `varvedb/src` uses only the modules of its
//! own layer or below it, so there are no cycles, and only `storage/` names
//! heed (no LMDB type can reach the public API through another module).
//!
//! Read from the source: every `crate::<module>` path outside comments and
//! outside `#[cfg(test)]` modules counts as a use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, bottom first. A module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "position",
        "id",
        "config",
        "event",
        "verify",
        "chain",
        "trace",
        "encryption",
    ],
    &["storage"],
    &[
        "metadata", "reader", "global", "snapshot", "entity", "stream", "typed",
    ],
    &["aggregate", "subscription", "projection"],
    &["store", "backup", "migrate", "inspect", "cli"],
];

/// Modules outside the layers: the crate root, and test/fuzz support.
const EXEMPT: &[&str] = &["lib", "bin", "fuzzing"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comment lines and without its `#[cfg(..test..)] mod
/// tests { .. }` (which by convention ends the file).
fn code_of(source: &str) -> String {
    let mut code = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(") && t.contains("test") {
            if let Some(next) = lines.peek() {
                if next.trim_start().starts_with("mod tests") {
                    break;
                }
            }
        }
        if t.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Each top-level module of `src` and the crate modules it uses.
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let code = code_of(&std::fs::read_to_string(&file).expect("read source"));
        let used = graph.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && !name.starts_with("__") {
                used.insert(name);
            }
        }
    }
    graph
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("varvedb/src")
}

#[test]
fn every_module_uses_only_its_own_layer_and_those_below() {
    let graph = uses(&src_dir());
    assert!(
        graph.contains_key("storage") && graph.contains_key("store"),
        "{graph:?}"
    );
    let mut violations = Vec::new();
    for (module, used) in &graph {
        if EXEMPT.contains(&module.as_str()) {
            continue;
        }
        let Some(layer) = layer_of(module) else {
            violations.push(format!(
                "{module} is in no layer: add it to LAYERS and docs/design.md"
            ));
            continue;
        };
        for other in used {
            match layer_of(other) {
                Some(l) if l <= layer => {}
                Some(l) => violations.push(format!(
                    "{module} (layer {layer}) uses {other} (layer {l}, above it)"
                )),
                None if EXEMPT.contains(&other.as_str()) => {
                    violations.push(format!("{module} uses the crate root's {other}"))
                }
                None => violations.push(format!("{module} uses {other}, in no layer")),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_modules_of_one_layer_form_no_cycle() {
    let graph = uses(&src_dir());
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn only_storage_names_heed() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            !f.strip_prefix(&src)
                .expect("under src")
                .starts_with("storage")
        })
        .filter(|f| code_of(&std::fs::read_to_string(f).expect("read")).contains("heed"))
        .collect();
    assert!(
        offenders.is_empty(),
        "heed named outside storage/: {offenders:?}"
    );
}
