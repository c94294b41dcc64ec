//! AutoYaST profiles: checking a user's `autoinst.xml` before anything is booted, and
//! assembling a profile from the snippets in `autoinst/` (header, chosen snippets, footer).
//!
//! A snippet is a file `autoinst/snippets/<section>/<name>.xml` holding one or more
//! top-level profile sections (`<bootloader>…</bootloader>`), introduced by an XML comment
//! whose first line says what it does. Snippets in one folder are alternatives; a profile
//! may hold each top-level section once, so choosing two of them is an error that names
//! both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use quick_xml::events::Event;
use quick_xml::Reader;

/// Environment variable naming the autoinst directory (with `header.xml`, `footer.xml`, `snippets/`).
pub const ENV_AUTOINST_DIR: &str = "VMK_AUTOINST_DIR";

/// What a well-formed profile holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSummary {
    /// Top-level sections in order of appearance (element names inside `<profile>`).
    pub sections: Vec<String>,
}

/// An XML document that is not a usable profile, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ProfileError {
    /// The file (or `snippet NAME`) the text came from.
    pub origin: String,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column (in characters) of the error.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Checks that `text` is well-formed XML whose root element is `<profile>`, and lists its
/// top-level sections. `origin` names the text in errors.
pub fn check_profile(text: &str, origin: &str) -> Result<ProfileSummary, ProfileError> {
    let root = check_xml(text, origin)?;
    if root.name != "profile" {
        return Err(error_at(
            text,
            origin,
            root.position,
            format!(
                "the root element is <{}>, an autoyast profile needs <profile>",
                root.name
            ),
        ));
    }
    Ok(ProfileSummary {
        sections: root.children.into_iter().map(|(name, _)| name).collect(),
    })
}

/// Reads and checks a user's profile file (see [`check_profile`]).
pub fn check_profile_file(path: &Path) -> Result<ProfileSummary> {
    let text = read_small(path).with_context(|| {
        format!(
            "reading the autoyast profile {} (write one, or make one with `vmk ayinstall profile`)",
            path.display()
        )
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(check_profile(&text, &path.display().to_string())?)
}

/// The root element of a document and its direct children, with byte positions.
struct Root {
    name: String,
    position: usize,
    children: Vec<(String, usize)>,
}

/// Well-formedness check with quick-xml, plus what quick-xml leaves to the caller: exactly
/// one root element, no text outside it, no unclosed element at the end, only the
/// predefined entities.
fn check_xml(text: &str, origin: &str) -> Result<Root, ProfileError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut root: Option<Root> = None;
    let mut depth = 0usize;
    let fail = |pos: u64, message: String| error_at(text, origin, pos as usize, message);
    loop {
        let before = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| fail(reader.error_position(), format!("not well-formed XML: {e}")))?;
        let element = |e: &quick_xml::events::BytesStart| -> Result<String, ProfileError> {
            for attr in e.attributes() {
                attr.map_err(|err| fail(before, format!("bad attribute: {err}")))?;
            }
            Ok(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = element(e)?;
                match (depth, &mut root) {
                    (0, Some(_)) => {
                        return Err(fail(before, format!("a second root element <{name}>")))
                    }
                    (0, None) => {
                        root = Some(Root {
                            name,
                            position: before as usize,
                            children: Vec::new(),
                        })
                    }
                    (1, Some(r)) => r.children.push((name, before as usize)),
                    _ => {}
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth -= 1,
            Event::Text(ref t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(fail(before, "text outside the root element".to_string()));
            }
            Event::GeneralRef(ref r) => {
                let name = String::from_utf8_lossy(r).into_owned();
                let known = matches!(name.as_str(), "lt" | "gt" | "amp" | "apos" | "quot");
                let char_ok = r.is_char_ref() && matches!(r.resolve_char_ref(), Ok(Some(_)));
                if !known && !char_ok {
                    return Err(fail(before, format!("unknown entity &{name};")));
                }
                if depth == 0 {
                    return Err(fail(before, "text outside the root element".to_string()));
                }
            }
            Event::CData(_) if depth == 0 => {
                return Err(fail(before, "text outside the root element".to_string()))
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth > 0 {
        return Err(fail(
            text.len() as u64,
            format!("{depth} element(s) not closed at the end"),
        ));
    }
    root.ok_or_else(|| fail(0, "no root element (empty document?)".to_string()))
}

fn error_at(text: &str, origin: &str, pos: usize, message: String) -> ProfileError {
    let pos = pos.min(text.len());
    let before = &text.as_bytes()[..pos];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    ProfileError {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

/// The autoinst directory: `$VMK_AUTOINST_DIR`, else `<bin>/../share/vmk/autoinst` beside
/// an installed binary, else this source tree's `autoinst/` (development builds).
pub fn autoinst_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_AUTOINST_DIR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.join("snippets").is_dir() {
            bail!(
                "{ENV_AUTOINST_DIR}={} has no snippets/ folder",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let mut tried = Vec::new();
    if let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        tried.push(bin_dir.join("../share/vmk/autoinst"));
    }
    tried.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../autoinst"));
    for dir in &tried {
        if dir.join("snippets").is_dir() {
            return Ok(dir.clone());
        }
    }
    let list: Vec<String> = tried.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "no autoinst snippets found (looked in {}); set {ENV_AUTOINST_DIR}",
        list.join(", ")
    )
}

/// One snippet found in the autoinst directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetInfo {
    /// `section/name`, as given to `-s`.
    pub name: String,
    /// The first line of its leading comment.
    pub summary: String,
    /// Its file.
    pub path: PathBuf,
}

/// All snippets under `dir/snippets`, sorted by name.
pub fn list_snippets(dir: &Path) -> Result<Vec<SnippetInfo>> {
    let root = dir.join("snippets");
    let mut out = Vec::new();
    let sections =
        std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))?;
    for section in sections {
        let section = section?.path();
        if !section.is_dir() {
            continue;
        }
        for file in
            std::fs::read_dir(&section).with_context(|| format!("listing {}", section.display()))?
        {
            let path = file?.path();
            if path.extension().is_none_or(|e| e != "xml") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap_or(&path).with_extension("");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            out.push(SnippetInfo {
                name: rel.to_string_lossy().into_owned(),
                summary: first_comment_line(&text).unwrap_or_default(),
                path,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn first_comment_line(text: &str) -> Option<String> {
    let start = text.find("<!--")? + 4;
    let end = text[start..].find("-->").map_or(text.len(), |e| start + e);
    text[start..end]
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// A profile or list file a user named: a regular file of at most 4 MiB, never waited on.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    vmk_common::fileops::read_user_file(path, 4 << 20)
}

/// Reads snippet names from a list file: one per line, `#` comments and blank lines ignored.
pub fn read_list_file(path: &Path) -> Result<Vec<String>> {
    let text = read_small(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .with_context(|| format!("reading snippet list {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Assembles header + snippets + footer from `dir`, and checks the result: well-formed,
/// a `<profile>`, each top-level section at most once (a clash names both snippets).
pub fn assemble(dir: &Path, names: &[String]) -> Result<String> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let header = read(dir.join("header.xml"))?;
    let footer = read(dir.join("footer.xml"))?;
    let mut out = header.trim_end().to_string();
    out.push('\n');
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for name in names {
        let name = name.trim_end_matches(".xml");
        let path = snippet_path(dir, name)?;
        let text = read(path.clone())?;
        // Check the snippet alone first, so an error points into the snippet's own file.
        let wrapped = format!("{}\n{text}\n{}", header.trim_end(), footer);
        let origin = format!("snippet {name} ({})", path.display());
        let offset_lines = header.trim_end().lines().count();
        let summary = check_profile(&wrapped, &origin).map_err(|mut e| {
            e.line = e.line.saturating_sub(offset_lines).max(1);
            e
        })?;
        if summary.sections.is_empty() {
            bail!(
                "snippet {name} ({}) holds no profile section",
                path.display()
            );
        }
        for section in summary.sections {
            if let Some(first) = owner.insert(section.clone(), name.to_string()) {
                return Err(vmk_common::usage!("snippets {first} and {name} both set <{section}>: a profile holds each section once; choose one"));
            }
        }
        out.push_str(&format!("  <!-- vmk snippet: {name} -->\n"));
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out.push_str(footer.trim_start());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let summary = check_profile(&out, "assembled profile")?;
    let mut seen = BTreeMap::new();
    for s in &summary.sections {
        if seen.insert(s, ()).is_some() {
            bail!("the assembled profile holds <{s}> twice (is it in header.xml or footer.xml?)");
        }
    }
    Ok(out)
}

fn snippet_path(dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty()
        || name.starts_with('/')
        || name.split('/').any(|p| p == ".." || p.is_empty())
    {
        return Err(vmk_common::usage!(
            "snippet name \"{}\" must look like section/name (see `vmk ayinstall profile --list`)",
            vmk_common::text::excerpt(name)
        ));
    }
    let path = dir.join("snippets").join(format!("{name}.xml"));
    if !path.is_file() {
        let known = list_snippets(dir).unwrap_or_default();
        let best = known
            .iter()
            .map(|s| (strsim::jaro_winkler(&s.name, name), &s.name))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .filter(|(score, _)| *score > 0.7)
            .map(|(_, n)| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
        return Err(vmk_common::usage!(
            "no snippet {}{best}: see `vmk ayinstall profile --list`",
            vmk_common::text::excerpt(name)
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "<?xml version=\"1.0\"?>\n<!DOCTYPE profile>\n<profile xmlns=\"http://www.suse.com/1.0/yast2ns\" xmlns:config=\"http://www.suse.com/1.0/configns\">\n";

    #[test]
    fn accepts_a_profile_and_lists_sections() {
        let text = format!("{HEAD}<general><mode><confirm config:type=\"boolean\">false</confirm></mode></general>\n<users config:type=\"list\"/>\n</profile>\n");
        let s = check_profile(&text, "t.xml").unwrap();
        assert_eq!(s.sections, ["general", "users"]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let text = format!("{HEAD}<general>\n  <mode></general>\n</profile>\n");
        let e = check_profile(&text, "autoinst.xml").unwrap_err();
        assert_eq!((e.origin.as_str(), e.line), ("autoinst.xml", 5), "{e}");
        assert!(e.to_string().starts_with("autoinst.xml:5:"), "{e}");
        let e = check_profile("<profile><a>", "x.xml").unwrap_err();
        assert!(e.message.contains("not closed"), "{e}");
        let e = check_profile("<config/>", "x.xml").unwrap_err();
        assert!(e.message.contains("needs <profile>"), "{e}");
        let e = check_profile("<profile/><profile/>", "x.xml").unwrap_err();
        assert!(e.message.contains("second root"), "{e}");
        let e = check_profile("<profile>&nbsp;</profile>", "x.xml").unwrap_err();
        assert!(e.message.contains("unknown entity"), "{e}");
        let e = check_profile("", "x.xml").unwrap_err();
        assert!(e.message.contains("no root element"), "{e}");
        let e = check_profile("<profile a='1' a='2'/>", "x.xml").unwrap_err();
        assert!(e.message.contains("attribute"), "{e}");
        assert!(check_profile("<profile>a &amp; b &#65;</profile>", "x.xml").is_ok());
    }

    #[test]
    fn first_comment_lines() {
        assert_eq!(
            first_comment_line("<!--\n  grub2 with serial\n more -->").as_deref(),
            Some("grub2 with serial")
        );
        assert_eq!(first_comment_line("<a/>"), None);
    }
}
