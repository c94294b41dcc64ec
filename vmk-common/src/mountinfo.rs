//! What is mounted where, from `/proc/self/mountinfo` (one parser, octal escapes decoded,
//! so a mount point with a space in its name is found by everyone alike).

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Every mount point of this process's mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Mount points at or below `path`.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(path))
        .collect()
}

/// True when `dir` is a mount point (compared after resolving `dir`'s symlinks).
pub fn is_mount_point(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mount_points().contains(&dir)
}

/// The mount points (fifth field) of mountinfo text.
pub fn parse(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(std::ffi::OsString::from_vec(unescape(m))))
        .collect()
}

/// Decodes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4);
        match octal {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\134c\011d"), b"/a b\\c\td");
        assert_eq!(unescape(r"/trailing\04"), br"/trailing\04");
    }

    #[test]
    fn parses_the_mount_point_field() {
        let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n\
                    22 1 0:21 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse(text),
            [PathBuf::from("/mnt two"), PathBuf::from("/proc")]
        );
    }

    #[test]
    fn root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()));
    }
}
