//! Facts about the machine vmk runs on that every tool asks: where a program is, whether
//! we are root.
//!
//! One `which` for the whole workspace (it used to be written five times, with different
//! ideas of "executable").

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directories where administration programs live that a user's PATH may lack.
const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The first executable file `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_in(std::env::split_paths(&path), name)
}

/// Like [`which`], then the sbin directories (for mkfs.ext4, debootstrap, losetup… when a
/// normal user's PATH has no sbin).
pub fn which_sbin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(
        std::env::split_paths(&path).chain(SBIN_DIRS.map(PathBuf::from)),
        name,
    )
}

/// A `Command` for `program` found with [`which_sbin`] (its bare name when not found, so
/// that the spawn error names it).
pub fn command(program: &str) -> std::process::Command {
    std::process::Command::new(which_sbin(program).unwrap_or_else(|| PathBuf::from(program)))
}

fn find_in(dirs: impl IntoIterator<Item = PathBuf>, name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    dirs.into_iter()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_refuses_paths_and_missing_programs() {
        assert!(which_sbin("sh").is_some_and(|p| p.ends_with("sh")));
        assert_eq!(which("no-such-program-vmk-test"), None);
        assert_eq!(which("bin/sh"), None);
        assert_eq!(which(""), None);
    }

    #[test]
    fn a_file_without_execute_bits_is_not_a_program() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tool");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(!is_executable(&f));
        assert_eq!(find_in([d.path().to_path_buf()], "tool"), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in([d.path().to_path_buf()], "tool"), Some(f));
    }
}
