//! Architecture invariants checked on every test run (ARCHITECTURE.md).

use std::collections::{BTreeSet, HashMap};

use crate::support::repo_root;

/// custos-core does no I/O: it must never depend, even transitively, on a runtime, a database
/// driver or a web framework. Read from Cargo.lock, which lists every dependency edge.
#[test]
fn the_core_crate_depends_on_no_runtime_database_or_web_crate() {
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap()).unwrap();
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    for package in lock["package"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap().to_owned();
        let deps: Vec<String> = package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|deps| {
                deps.iter()
                    // An entry is "name" or "name version" when several versions are locked.
                    .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        edges.entry(name).or_default().extend(deps);
    }
    let mut reached = BTreeSet::new();
    let mut queue = vec!["custos-core".to_owned()];
    while let Some(name) = queue.pop() {
        if reached.insert(name.clone()) {
            queue.extend(edges.get(&name).cloned().unwrap_or_default());
        }
    }
    assert!(reached.len() > 1, "custos-core was not found in Cargo.lock");
    let forbidden = [
        "tokio",
        "rusqlite",
        "libsqlite3-sys",
        "postgres",
        "tokio-postgres",
        "axum",
        "hyper",
        "mio",
        "reqwest",
    ];
    let found: Vec<_> = forbidden.iter().filter(|f| reached.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "custos-core depends on {found:?}; the core must stay pure"
    );
}
