//! The layering, checked: no crate below `net` may depend on an I/O crate (directly or through
//! another workspace crate), nor read the clock, open sockets or spawn threads in its sources.
//! The list of crates below `net` is DESIGN §2's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The sans-IO core: everything below `net`.
const CORE: [&str; 10] = [
    "tessera-tensor",
    "tessera-verify",
    "tessera-ledger",
    "tessera-model",
    "tessera-data",
    "tessera-checkpoint",
    "tessera-sync",
    "tessera-wire",
    "tessera-coord",
    "tessera-sim",
];
/// Crates that do I/O of their own: the core may not reach them.
const IO_CRATES: [&str; 7] = ["tokio", "iroh", "rusqlite", "axum", "hyper", "tessera-net", "tessera-node"];
/// Source text the core may not contain.
const IO_WORDS: [&str; 4] = ["Instant", "SystemTime", "std::net", "thread::spawn"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each workspace package's declared dependencies (every kind), from `cargo metadata`.
fn declared_deps() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut deps = BTreeMap::new();
    for p in v["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_string();
        let d = p["dependencies"].as_array().expect("dependencies");
        deps.insert(name, d.iter().map(|d| d["name"].as_str().expect("dep name").to_string()).collect());
    }
    deps
}

/// What `krate` reaches, through workspace crates.
fn reach(deps: &BTreeMap<String, BTreeSet<String>>, krate: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_string()];
    while let Some(k) = todo.pop() {
        for d in deps.get(&k).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn no_core_crate_depends_on_an_io_crate() {
    let deps = declared_deps();
    for k in CORE {
        assert!(deps.contains_key(k), "{k} is not in the workspace: update CORE");
        let bad: Vec<String> =
            reach(&deps, k).into_iter().filter(|d| IO_CRATES.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "{k} is below `net` but reaches {bad:?}");
    }
    // The check can fail: the daemons do reach them.
    assert!(reach(&deps, "tessera-node").contains("tokio"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable source dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of `path` that contain a word the core may not use.
fn offending_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable source");
    text.lines()
        .enumerate()
        .filter(|(_, l)| IO_WORDS.iter().any(|w| l.contains(w)))
        .map(|(i, l)| format!("{}:{}: {}", path.display(), i + 1, l.trim()))
        .collect()
}

#[test]
fn no_core_source_reads_the_clock_opens_sockets_or_spawns_threads() {
    let root = workspace_root();
    let mut bad = Vec::new();
    for k in CORE {
        let mut files = Vec::new();
        rust_files(&root.join("crates").join(k).join("src"), &mut files);
        assert!(!files.is_empty(), "{k} has no sources");
        files.iter().for_each(|f| bad.extend(offending_lines(f)));
    }
    assert!(bad.is_empty(), "the sans-IO core may not use {IO_WORDS:?}:\n{}", bad.join("\n"));
    // The check can fail: the daemons do read the clock.
    let mut node = Vec::new();
    rust_files(&root.join("crates/tessera-node/src"), &mut node);
    assert!(node.iter().any(|f| !offending_lines(f).is_empty()));
}

/// Where the non-deterministic fast path may be switched on: the benchmarks only.
const FAST_PATH_SWITCH: &str = "relaxed::set_enabled";

#[test]
fn only_the_benchmarks_switch_on_the_non_deterministic_fast_path() {
    let root = workspace_root().join("crates");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let allowed = [root.join("tessera-cli/src/bench.rs")];
    let users: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.components().all(|c| c.as_os_str() != "tests"))
        .filter(|f| std::fs::read_to_string(f).expect("readable source").contains(FAST_PATH_SWITCH))
        .collect();
    let bad: Vec<_> = users.iter().filter(|f| !allowed.contains(f)).collect();
    assert!(bad.is_empty(), "only the benchmarks may call {FAST_PATH_SWITCH}: {bad:?}");
    // The check can fail: the benchmarks do call it.
    assert_eq!(users, allowed.iter().collect::<Vec<_>>());
}
