//! What a chroot into a guest's tree needs from the host (/dev, /proc, /sys, each on its
//! own directory: the original tool once mounted them swapped), in one table for `vmk
//! chroot` and `vmk bootstrap --boot disk`, and a guard that unmounts what was mounted
//! below a tree vmk made itself, in reverse, on every error path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

use crate::mountinfo::is_mount_point;

/// A system directory a chroot needs from the host.
#[derive(Debug)]
pub struct SystemBind {
    /// The source (a host directory, or the filesystem's name).
    pub src: &'static str,
    /// The directory in the guest.
    pub dst: &'static str,
    /// The options of mount(8) that do the same (shown by a dry run).
    pub extra: &'static [&'static str],
    /// A fresh filesystem of this type, instead of a recursive bind of `src`.
    pub fstype: Option<&'static str>,
}

/// The system directories a chroot needs.
pub const SYSTEM_BINDS: [SystemBind; 3] = [
    SystemBind {
        src: "/dev",
        dst: "dev",
        extra: &["--rbind", "--make-rslave"],
        fstype: None,
    },
    SystemBind {
        src: "proc",
        dst: "proc",
        extra: &["-t", "proc"],
        fstype: Some("proc"),
    },
    SystemBind {
        src: "/sys",
        dst: "sys",
        extra: &["--rbind", "--make-rslave"],
        fstype: None,
    },
];

impl SystemBind {
    /// Mounts it on `on` (a path the caller has checked; `shown` names it in errors).
    pub fn mount_on(&self, on: &Path, shown: &Path) -> Result<()> {
        match self.fstype {
            Some(t) => mount(Some(self.src), on, Some(t), MsFlags::empty(), None::<&str>),
            None => mount(
                Some(self.src),
                on,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        }
        .with_context(|| format!("mounting {} on {}", self.src, shown.display()))
    }
}

/// Makes the mount at `on` a recursive slave, so unmounting it leaves the host's alone.
pub fn make_rslave(on: &Path, shown: &Path) -> Result<()> {
    mount(
        None::<&str>,
        on,
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("making {} a slave mount", shown.display()))
}

/// Mounts below a tree that vmk made itself (so its directories are trusted: no guest
/// symlink can lead elsewhere), unmounted in reverse when dropped or by [`Mounts::undo`].
#[derive(Debug, Default)]
pub struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Mounts the filesystem on `dev` (of type `fstype`) at `dir`, which must exist.
    pub fn device(&mut self, dev: &Path, dir: &Path, fstype: &str) -> Result<()> {
        mount(Some(dev), dir, Some(fstype), MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting {} on {}", dev.display(), dir.display()))?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }

    /// Mounts [`SYSTEM_BINDS`] into `root` (recursive binds made slaves, so unmounting them
    /// leaves the host's alone).
    pub fn system(&mut self, root: &Path) -> Result<()> {
        for b in &SYSTEM_BINDS {
            let on = root.join(b.dst);
            std::fs::create_dir_all(&on).with_context(|| format!("creating {}", on.display()))?;
            b.mount_on(&on, &on)?;
            self.0.push(on.clone());
            if b.fstype.is_none() {
                make_rslave(&on, &on)?;
            }
        }
        Ok(())
    }

    /// Unmounts everything, last mounted first (submounts of recursive binds too).
    pub fn undo(&mut self) -> Result<()> {
        while let Some(d) = self.0.last().cloned() {
            let out = Command::new("umount").arg("-R").arg(&d).output();
            if !out.is_ok_and(|o| o.status.success()) && is_mount_point(&d) {
                nix::mount::umount(&d).with_context(|| format!("unmounting {}", d.display()))?;
            }
            self.0.pop();
        }
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            log::error!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_directory_on_its_own_place() {
        for b in &SYSTEM_BINDS {
            assert_eq!(b.src.trim_start_matches('/'), b.dst, "{b:?}");
        }
    }
}
