//! No test passes without having run: every test source of the workspace is scanned for an
//! early `return` (the way a test used to "skip" when a tool was missing, reporting "ok")
//! and for a skip message printed by hand. Tests that cannot run go through vmk-testkit
//! (`Need` with `run_system_tests`, `can_run_part`, `require`), which reports them as
//! ignored or failed, never as passed.
//!
//! An early return that is no skip (a helper's recursion, a proptest case whose outcome is
//! the refusal) says so on its line or the line above: `// not a skip: <why>`.

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmk-testkit lives in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return; // not a skip: a directory that does not exist holds no sources
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n != "target" && n != "snapshots")
            {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The lines of `file` that are test code, with their numbers: all of a file under
/// `tests/` or named `tests.rs`/`*_tests.rs`; in other sources, from `#[cfg(test)]` on.
fn test_lines(file: &Path, text: &str) -> Vec<(usize, String)> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let whole = file.components().any(|c| c.as_os_str() == "tests")
        || name == "tests.rs"
        || name.ends_with("_tests.rs");
    let mut in_test = whole;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            in_test = true;
        }
        if in_test {
            out.push((i + 1, line.to_string()));
        }
    }
    out
}

/// What is wrong with test line `line` (given the line before it), if anything.
fn problem(line: &str, before: &str) -> Option<&'static str> {
    let code = line.split("//").next().unwrap_or("");
    let justified = line.contains("// not a skip:") || before.trim().starts_with("// not a skip:");
    let returns = ["return;", "return Ok(());", "return Ok(())"]
        .iter()
        .any(|r| code.trim_end().ends_with(r) || code.contains(&format!("{r} ")));
    if returns && !justified {
        return Some("an early return in a test passes without running the rest");
    }
    let prints = ["eprintln!(", "println!(", "errln!(", "eprint!(", "print!("]
        .iter()
        .any(|m| code.contains(m));
    if prints && code.to_lowercase().contains("skip") {
        return Some("a skip printed by hand: use vmk_testkit (Need, can_run_part, require)");
    }
    None
}

/// The early returns and hand-made skips in the workspace's test sources.
fn findings() -> Vec<String> {
    let root = workspace();
    let mut files = Vec::new();
    for e in std::fs::read_dir(&root)
        .expect("reading the workspace")
        .flatten()
    {
        let crate_dir = e.path();
        if crate_dir.join("Cargo.toml").is_file() {
            rust_files(&crate_dir.join("src"), &mut files);
            rust_files(&crate_dir.join("tests"), &mut files);
        }
    }
    files.sort();
    assert!(files.len() > 50, "found only {} sources", files.len());
    // the harness prints the skips; this file spells the forbidden lines as examples
    let exempt = [
        root.join("vmk-testkit/src/lib.rs"),
        root.join("vmk-testkit/tests/no_silent_skips.rs"),
    ];
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !exempt.contains(f)) {
        let text = std::fs::read_to_string(file).expect("reading a source");
        let lines = test_lines(file, &text);
        let mut before = String::new();
        for (n, line) in lines {
            if let Some(why) = problem(&line, &before) {
                let rel = file.strip_prefix(&root).unwrap_or(file);
                found.push(format!("{}:{n}: {why}: {}", rel.display(), line.trim()));
            }
            before = line;
        }
    }
    found
}

#[test]
fn no_test_returns_early_or_skips_by_hand() {
    let found = findings();
    assert!(
        found.is_empty(),
        "tests that may pass without running (see this file's doc):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_catches_what_it_forbids() {
    let bad = [
        "        return;",
        "            return Ok(());",
        "    if !root { return; }",
        r#"        eprintln!("skipped: no qemu");"#,
        r#"        vmk_common::errln!("qemu-img not usable: SKIPPED");"#,
    ];
    for line in bad {
        assert!(problem(line, "").is_some(), "not caught: {line}");
    }
    let good = [
        ("        return; // not a skip: a node already walked", ""),
        (
            "        return Ok(());",
            "        // not a skip: the refusal is the outcome",
        ),
        ("        return Ok(cfg);", ""),
        ("    let skipped = 3;", ""),
        ("    // return; in a comment", ""),
    ];
    for (line, before) in good {
        assert!(problem(line, before).is_none(), "wrongly caught: {line}");
    }
    // test code: a whole tests/ file; in src, from #[cfg(test)] on
    let src = "fn f() {\n    return;\n}\n#[cfg(test)]\nmod tests {\n    return;\n}\n";
    let lines = test_lines(Path::new("x/src/lib.rs"), src);
    assert_eq!(lines.first().map(|l| l.0), Some(4));
    assert_eq!(test_lines(Path::new("x/tests/a.rs"), src).len(), 7);
}
