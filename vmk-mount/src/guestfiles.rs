//! Changes to files inside a mounted guest root: root's authorized_keys, files put into
//! /root/vm, and MAC-bound network rules that break a copied VM's network.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::OFlags;

use crate::guestpath::{self, GuestRoot};

/// The guest's `/root`, resolved inside the image mounted at `root`.
fn root_home(root: &Path) -> Result<OwnedFd> {
    GuestRoot::open(root)?
        .open_dir(Path::new("/root"))
        .with_context(|| {
            format!(
                "{} has no /root directory: is it a Linux root filesystem?",
                root.display()
            )
        })
}

/// Appends `key` to `<root>/root/.ssh/authorized_keys` (dir 0700, file 0600, owner root),
/// unless it is there already. Returns whether it was added.
///
/// Everything is resolved inside the image: a guest `/root` that is a symlink leads to the
/// guest's own target, never to the host's; `.ssh` and `authorized_keys` must not be
/// symlinks (refused).
pub fn append_authorized_key(root: &Path, key: &str) -> Result<bool> {
    let home = root_home(root)?;
    let ssh_what = Path::new("/root/.ssh");
    let ssh = guestpath::ensure_dir(home.as_fd(), OsStr::new(".ssh"), 0o700, ssh_what)?;
    guestpath::set_owner_mode(&ssh, 0o700, 0, 0, ssh_what)?;
    let what = Path::new("/root/.ssh/authorized_keys");
    let name = OsStr::new("authorized_keys");
    let mut f = guestpath::open_file(
        ssh.as_fd(),
        name,
        OFlags::RDWR | OFlags::APPEND | OFlags::CREATE,
        0o600,
        what,
    )?
    .with_context(|| format!("creating {}", what.display()))?;
    let mut existing = String::new();
    f.read_to_string(&mut existing)
        .with_context(|| format!("reading {}", what.display()))?;
    let added = !existing.lines().any(|l| l.trim() == key.trim());
    if added {
        let sep = if existing.is_empty() || existing.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        f.write_all(format!("{sep}{}\n", key.trim()).as_bytes())
            .with_context(|| format!("writing {}", what.display()))?;
    }
    guestpath::set_owner_mode(&f, 0o600, 0, 0, what)?;
    Ok(added)
}

/// Copies `files` (files, or directories with everything in them, as the original's
/// `cp -r`) into `<root>/root/vm/` (created 0700); returns the guest paths given. `/root`
/// is resolved inside the image; `vm` and everything put in it must not be symlinks in the
/// image (refused). In a directory, what is neither a file nor a directory (symlinks,
/// FIFOs, devices) is skipped with a warning: vmk copies no link the guest would follow.
pub fn put_files(root: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let home = root_home(root)?;
    let guest_vm = Path::new("/root/vm");
    let dest = guestpath::ensure_dir(home.as_fd(), OsStr::new("vm"), 0o700, guest_vm)?;
    let mut put = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .with_context(|| format!("{} has no file name", f.display()))?;
        let guest = guest_vm.join(name);
        if f.is_dir() {
            put_dir(dest.as_fd(), f, name, &guest)?;
        } else if f.is_file() {
            put_file(dest.as_fd(), f, name, &guest)?;
        } else {
            bail!(
                "{} is not a file or directory (putfile copies those)",
                f.display()
            );
        }
        put.push(guest);
    }
    Ok(put)
}

/// Copies the host file `src` to `name` in the guest directory `dir` (`guest` is its path
/// in the guest), with its mode.
fn put_file(dir: BorrowedFd<'_>, src: &Path, name: &OsStr, guest: &Path) -> Result<()> {
    let mut from = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mode = from.metadata()?.permissions().mode() & 0o7777;
    let mut dst = guestpath::open_file(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        mode,
        guest,
    )?
    .with_context(|| format!("creating {}", guest.display()))?;
    std::io::copy(&mut from, &mut dst)
        .with_context(|| format!("copying {} into the image", src.display()))?;
    dst.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", guest.display()))
}

/// Copies the host directory `src` and everything in it to `name` in the guest directory
/// `dir`, with their modes.
fn put_dir(dir: BorrowedFd<'_>, src: &Path, name: &OsStr, guest: &Path) -> Result<()> {
    let mode = fs::metadata(src)
        .with_context(|| format!("reading {}", src.display()))?
        .permissions()
        .mode()
        & 0o7777;
    let sub = guestpath::ensure_dir(dir, name, mode, guest)?;
    let mut entries = fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (path, name) = (e.path(), e.file_name());
        let kind = e
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        let in_guest = guest.join(&name);
        if kind.is_dir() {
            put_dir(sub.as_fd(), &path, &name, &in_guest)?;
        } else if kind.is_file() {
            put_file(sub.as_fd(), &path, &name, &in_guest)?;
        } else {
            log::warn!("{}: not a file or directory, skipped", path.display());
        }
    }
    Ok(())
}

/// Files that tie a guest's network to the MAC of the VM it was installed in.
pub const MAC_BOUND_RULES: &[&str] = &[
    "etc/udev/rules.d/70-persistent-net.rules",
    "etc/udev/rules.d/75-persistent-net-generator.rules",
];

/// Removes MAC-bound persistent network rules; returns the guest paths removed. Their
/// directory is resolved inside the image; a rule that is a symlink is removed itself.
pub fn fix_net(root: &Path) -> Result<Vec<PathBuf>> {
    let groot = GuestRoot::open(root)?;
    let mut removed = Vec::new();
    for rel in MAC_BOUND_RULES {
        let guest = Path::new("/").join(rel);
        let (Some(dir), Some(name)) = (guest.parent(), guest.file_name()) else {
            continue;
        };
        let dirfd = match groot.open_dir(dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("opening {} in the image", dir.display()))
            }
        };
        if guestpath::remove_file(dirfd.as_fd(), name, &guest)? {
            removed.push(guest);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_appended_once_with_private_modes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("root")).unwrap();
        fs::write(d.path().join("root/.keep"), "").unwrap();
        assert!(append_authorized_key(d.path(), "ssh-ed25519 AAA k").unwrap());
        assert!(!append_authorized_key(d.path(), "ssh-ed25519 AAA k").unwrap());
        let f = d.path().join("root/.ssh/authorized_keys");
        assert_eq!(fs::read_to_string(&f).unwrap(), "ssh-ed25519 AAA k\n");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dir = d.path().join("root/.ssh");
        assert_eq!(
            fs::metadata(dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    /// A directory goes in whole, as the original's `cp -r`: files with their modes,
    /// subdirectories, nothing that is a link; a symlink planted in the image where a
    /// directory goes is refused, not followed.
    #[test]
    fn directories_are_put_whole_without_links() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("guest");
        fs::create_dir_all(root.join("root")).unwrap();
        let src = d.path().join("tests");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("sub/deeper/data"), "42").unwrap();
        symlink("/etc/shadow", src.join("sub/link")).unwrap();
        let put = put_files(&root, std::slice::from_ref(&src)).unwrap();
        assert_eq!(put, [PathBuf::from("/root/vm/tests")]);
        let got = root.join("root/vm/tests");
        assert_eq!(
            fs::read_to_string(got.join("sub/deeper/data")).unwrap(),
            "42"
        );
        let mode = fs::metadata(got.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(fs::symlink_metadata(got.join("sub/link")).is_err());
        // again: the same tree, updated in place
        fs::write(src.join("sub/deeper/data"), "43").unwrap();
        put_files(&root, std::slice::from_ref(&src)).unwrap();
        assert_eq!(
            fs::read_to_string(got.join("sub/deeper/data")).unwrap(),
            "43"
        );
        // a guest symlink where a directory goes leads nowhere outside the image
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::remove_dir_all(got.join("sub")).unwrap();
        symlink(&outside, got.join("sub")).unwrap();
        assert!(put_files(&root, std::slice::from_ref(&src)).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn no_root_dir_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(append_authorized_key(d.path(), "k").is_err());
    }

    #[test]
    fn fixnet_removes_only_mac_rules() {
        let d = tempfile::tempdir().unwrap();
        let rules = d.path().join("etc/udev/rules.d");
        fs::create_dir_all(&rules).unwrap();
        fs::write(rules.join("70-persistent-net.rules"), "x").unwrap();
        fs::write(rules.join("99-other.rules"), "y").unwrap();
        let r = fix_net(d.path()).unwrap();
        assert_eq!(
            r,
            vec![PathBuf::from("/etc/udev/rules.d/70-persistent-net.rules")]
        );
        assert!(rules.join("99-other.rules").exists());
    }
}
