//! TESTS.md, the table of README's claims and the tests that prove them, stays true: every
//! test it names exists in the workspace (a `file.rs::name` exists when the file has
//! `fn name(` or registers a system test `SystemTest::new("name", …)`), every script it names
//! exists, every claim of a README section's table names at least one test, and TESTS.md
//! has a table for each section of README (and no table for a section README lacks).

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmk-testkit lives in the workspace")
        .to_path_buf()
}

/// TESTS.md's own sections that are no README section.
const OWN_SECTIONS: [&str; 2] = ["Introduction", "Claims without a real test"];

/// The section whose rows need not name a test.
const GAPS: &str = "Claims without a real test";

/// A reference to a test or script in TESTS.md.
#[derive(Debug, PartialEq)]
enum Reference {
    /// `path/to/file.rs::name`.
    Test { file: String, name: String },
    /// `scripts/name`.
    Script(String),
}

/// The references in a piece of text: its backquoted `file.rs::name` and `scripts/…` spans.
fn references(text: &str) -> Vec<Reference> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            if let Some((file, name)) = span.split_once("::") {
                let word = |s: &str| {
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                (file.ends_with(".rs") && !file.contains(' ') && word(name)).then(|| {
                    Reference::Test {
                        file: file.to_string(),
                        name: name.to_string(),
                    }
                })
            } else {
                (span.starts_with("scripts/") && !span.contains(' '))
                    .then(|| Reference::Script(span.to_string()))
            }
        })
        .collect()
}

/// Whether the Rust source `text` defines the test `name`: a function `fn name(` or a
/// system test registered as `SystemTest::new("name"`.
fn defines(text: &str, name: &str) -> bool {
    let function = text.contains(&format!("fn {name}(")) || text.contains(&format!("fn {name}<"));
    function
        || text.split("SystemTest::new(").skip(1).any(|rest| {
            rest.trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split_once('"'))
                .is_some_and(|(registered, _)| registered == name)
        })
}

/// The `## ` headings of a markdown text.
fn sections(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_string())
        .collect()
}

/// The table rows of each `## ` section: (section, row).
fn rows(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
        } else if line.starts_with('|')
            && !line.starts_with("|---")
            && !line.starts_with("| claim ")
        {
            out.push((section.clone(), line.to_string()));
        }
    }
    out
}

/// What is wrong with TESTS.md (`tests`) against README (`readme`), reading the workspace's
/// files through `read` (a path relative to the workspace root; `None` when it does not
/// exist).
fn problems(tests: &str, readme: &str, read: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut found = Vec::new();
    for r in references(tests) {
        match r {
            Reference::Test { file, name } => match read(&file) {
                None => found.push(format!("{file}::{name}: no file {file}")),
                Some(text) if !defines(&text, &name) => {
                    found.push(format!("{file}::{name}: {file} has no test {name}"))
                }
                Some(_) => {}
            },
            Reference::Script(path) => {
                if read(&path).is_none() {
                    found.push(format!("{path}: no such script"));
                }
            }
        }
    }
    for (section, row) in rows(tests) {
        if section != GAPS && references(&row).is_empty() {
            found.push(format!("{section}: a claim with no test: {row}"));
        }
    }
    let theirs = sections(readme);
    let ours = sections(tests);
    for s in &theirs {
        if !ours.contains(s) {
            found.push(format!("README's section {s:?} has no table in TESTS.md"));
        }
    }
    for s in &ours {
        if !theirs.contains(s) && !OWN_SECTIONS.contains(&s.as_str()) {
            found.push(format!("TESTS.md's section {s:?} is no section of README"));
        }
    }
    found
}

#[test]
fn every_test_tests_md_names_exists_and_every_readme_section_has_a_table() {
    let root = workspace();
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    let tests = read("TESTS.md").expect("TESTS.md at the workspace root");
    let readme = read("README.md").expect("README.md at the workspace root");
    assert!(
        references(&tests).len() > 100,
        "TESTS.md names only {} tests",
        references(&tests).len()
    );
    let found = problems(&tests, &readme, &read);
    assert!(
        found.is_empty(),
        "TESTS.md does not match the workspace (fix the table or the test):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_what_it_forbids() {
    let readme = "# x\n## Running\ntext\n## Gone\n";
    let tests = "## Running\n\n| claim | test | oracle |\n|---|---|---|\n\
                 | a | `a/tests/t.rs::real` | x |\n\
                 | b | `a/tests/t.rs::registered`, `a/src/u.rs::unit` | x |\n\
                 | c | `a/tests/t.rs::missing` | x |\n\
                 | d | `a/tests/none.rs::real` | x |\n\
                 | e | `scripts/absent` | x |\n\
                 | f | nothing | x |\n\
                 ## Invented\n## Claims without a real test\n| g | nothing | |\n";
    let read = |rel: &str| {
        match rel {
        "a/tests/t.rs" => Some(
            "fn real() {}\nfn main() { run(vec![SystemTest::new(\n    \"registered\", &[], f)]) }\n"
                .to_string(),
        ),
        "a/src/u.rs" => Some("    fn unit() {}\n".to_string()),
        _ => None,
    }
    };
    let found = problems(tests, readme, &read);
    let expected = [
        "a/tests/t.rs::missing: a/tests/t.rs has no test missing",
        "a/tests/none.rs::real: no file a/tests/none.rs",
        "scripts/absent: no such script",
        "Running: a claim with no test: | f | nothing | x |",
        "README's section \"Gone\" has no table in TESTS.md",
        "TESTS.md's section \"Invented\" is no section of README",
    ];
    assert_eq!(found, expected);
    // a helper's name is no test, and a string that is not registered is none either
    assert!(!defines("let s = \"registered\";", "registered"));
    assert!(!defines("fn real_one() {}", "real"));
}
