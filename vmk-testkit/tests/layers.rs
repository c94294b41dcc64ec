//! The workspace's crate graph obeys its layering (README.md, "Architecture"): the shared
//! crate at the bottom, libraries with one job above it, the tools on top, and tools
//! reaching sideways only where one operation truly is another's. `cargo metadata` is the
//! oracle; a forbidden edge or a cycle (dev-dependencies included) fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Which workspace crates each crate may depend on (normal and build dependencies).
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    const LIBS: [&str; 3] = ["vmk-common", "vmk-media", "vmk-bootstrap"];
    let tool = |extra: &[&'static str]| -> Vec<&'static str> {
        LIBS.iter().chain(extra).copied().collect()
    };
    BTreeMap::from([
        ("vmk-common", vec![]),
        ("vmk-media", vec!["vmk-common"]),
        ("vmk-bootstrap", vec!["vmk-common"]),
        ("vmk-run", tool(&[])),
        ("vmk-snap", tool(&["vmk-run"])),
        ("vmk-clone", tool(&[])),
        ("vmk-mount", tool(&[])),
        ("vmk-sshkey", tool(&["vmk-mount"])),
        ("vmk-ayinstall", tool(&["vmk-run"])),
        ("vmk-libvirt", tool(&[])),
        // documentation sees every tool's clap definition; nothing depends on it
        (
            "vmk-docgen",
            tool(&[
                "vmk-run",
                "vmk-snap",
                "vmk-clone",
                "vmk-mount",
                "vmk-sshkey",
                "vmk-ayinstall",
                "vmk-libvirt",
            ]),
        ),
        // the test kit depends on no vmk crate, so every crate's tests may use it
        ("vmk-testkit", vec![]),
        ("vmk-testguest", vec!["vmk-bootstrap", "vmk-testkit"]),
    ])
}

/// Crates any crate may take as a dev-dependency, beyond what it may depend on.
const TEST_CRATES: [&str; 2] = ["vmk-testkit", "vmk-testguest"];

/// (crate, dependency, kind) for every dependency between workspace crates.
fn workspace_edges() -> Vec<(String, String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut edges = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if members.contains(dep) {
                let kind = d["kind"].as_str().unwrap_or("normal").to_string();
                edges.push((name.to_string(), dep.to_string(), kind));
            }
        }
    }
    edges
}

#[test]
fn every_workspace_crate_has_a_place_in_the_layers() {
    let rules = allowed();
    for (from, _, _) in workspace_edges() {
        assert!(
            rules.contains_key(from.as_str()),
            "{from} is not in the layering table of {}: add it with the crates it may use",
            file!()
        );
    }
}

#[test]
fn no_crate_reaches_sideways_or_up() {
    let rules = allowed();
    let mut forbidden = Vec::new();
    for (from, to, kind) in workspace_edges() {
        let may = rules.get(from.as_str()).cloned().unwrap_or_default();
        let ok =
            may.contains(&to.as_str()) || (kind == "dev" && TEST_CRATES.contains(&to.as_str()));
        if !ok {
            forbidden.push(format!("{from} -> {to} ({kind})"));
        }
    }
    assert!(
        forbidden.is_empty(),
        "forbidden dependencies: {forbidden:?}; move the shared code down a layer instead"
    );
}

#[test]
fn the_graph_has_no_cycles_even_through_dev_dependencies() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to, _) in workspace_edges() {
        graph.entry(from).or_default().insert(to);
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return; // not a skip: a node already walked
        }
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("dependency cycle: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}
