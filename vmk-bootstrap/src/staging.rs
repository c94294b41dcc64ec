//! The staging transaction: a bootstrap is built in `DIR.vmk-tmp-*` beside DIR and renamed
//! to DIR only when complete, so that a failure or Ctrl-C leaves nothing behind.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vmk_common::host::command;
use vmk_common::mountinfo::mounts_under;

/// The error of a build stopped by Ctrl-C (or SIGTERM/SIGHUP).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub(crate) struct Interrupted;

/// `DIR.vmk-tmp-<pid>-<n>` beside DIR.
pub(crate) fn staging_path(dir: &Path, n: u32) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".vmk-tmp-{}-{n}", std::process::id()));
    dir.with_file_name(name)
}

/// The staging directory; removed on drop unless persisted.
pub(crate) struct Staging {
    pub(crate) path: PathBuf,
    keep: bool,
}

impl Staging {
    pub(crate) fn create(dir: &Path) -> Result<Staging> {
        for n in 0..100 {
            let path = staging_path(dir, n);
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(Staging { path, keep: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("cannot find a free staging name beside {}", dir.display())
    }

    /// Moves the finished staging directory to `dir` (an absent or empty directory),
    /// private (mode 0700): a VM directory holds the guest's disk and keys.
    pub(crate) fn persist(mut self, dir: &Path) -> Result<()> {
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", self.path.display()))?;
        fs::rename(&self.path, dir).with_context(|| {
            format!(
                "renaming {} to {} (did something write into {} meanwhile?)",
                self.path.display(),
                dir.display(),
                dir.display()
            )
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = remove_tree(&self.path) {
                vmk_common::errln!("vmk-ayinstall: warning: {e:#}");
            }
        }
    }
}

/// Removes a staging tree (of a build that may have been killed): detaches the mounts
/// debootstrap may have left under it first, and never crosses into another filesystem.
pub fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut mounts = mounts_under(path);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in &mounts {
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("unmounting {}: {e}", m.display());
        }
    }
    let status = command("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg("--")
        .arg(path)
        .status()
        .context("running rm")?;
    if !status.success() {
        bail!(
            "removing {} failed ({status}): remove it by hand",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_beside_the_new_directory() {
        let p = staging_path(Path::new("/vms/deb"), 3);
        assert!(p.to_string_lossy().starts_with("/vms/deb.vmk-tmp-"));
        assert!(p.to_string_lossy().ends_with("-3"));
    }

    #[test]
    fn a_staging_tree_is_removed_unless_persisted() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vm");
        let s = Staging::create(&dir).unwrap();
        fs::write(s.path.join("f"), "x").unwrap();
        drop(s);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
        let s = Staging::create(&dir).unwrap();
        fs::write(s.path.join("f"), "x").unwrap();
        s.persist(&dir).unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"x");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
