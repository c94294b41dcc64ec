//! man/ must match the clap definitions and the tables: regenerate with `make man` when this
//! fails.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn man_pages_in_the_repository_are_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../man");
    let expected: BTreeMap<String, Vec<u8>> =
        vmk_docgen::man::man_pages().unwrap().into_iter().collect();
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("man/ exists") {
        let path = entry.unwrap().path();
        if vmk_docgen::man::is_page(&path) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            found.insert(name, std::fs::read(&path).unwrap());
        }
    }
    assert!(
        expected.contains_key("vmk-config.5"),
        "{:?}",
        expected.keys()
    );
    let stale: Vec<_> = expected
        .iter()
        .filter(|(name, body)| found.get(*name) != Some(body))
        .map(|(name, _)| name.clone())
        .chain(found.keys().filter(|n| !expected.contains_key(*n)).cloned())
        .collect();
    assert!(
        stale.is_empty(),
        "man/ is stale ({stale:?}): run `make man` and commit man/"
    );
}
