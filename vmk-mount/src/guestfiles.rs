//! Changes to files inside a mounted guest root: root's authorized_keys, files put into
//! /root/vm, and MAC-bound network rules that break a copied VM's network.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Appends `key` to `<root>/root/.ssh/authorized_keys` (dir 0700, file 0600, owner root),
/// unless it is there already. Returns whether it was added.
pub fn append_authorized_key(root: &Path, key: &str) -> Result<bool> {
    let home = root.join("root");
    if !home.is_dir() {
        bail!(
            "{} has no /root directory: is it a Linux root filesystem?",
            root.display()
        );
    }
    let ssh = home.join(".ssh");
    if !ssh.exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&ssh)
            .with_context(|| format!("creating {}", ssh.display()))?;
    }
    set_owner_mode(&ssh, 0o700)?;
    let file = ssh.join("authorized_keys");
    let existing = fs::read_to_string(&file).unwrap_or_default();
    let added = !existing.lines().any(|l| l.trim() == key.trim());
    if added {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("opening {}", file.display()))?;
        let sep = if existing.is_empty() || existing.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        f.write_all(format!("{sep}{}\n", key.trim()).as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    set_owner_mode(&file, 0o600)?;
    Ok(added)
}

fn set_owner_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    chown(path, Some(0), Some(0)).with_context(|| format!("making root own {}", path.display()))
}

/// Copies `files` into `<root>/root/vm/` (created 0700); returns the guest paths.
pub fn put_files(root: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let dest = root.join("root/vm");
    if !dest.exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dest)
            .with_context(|| format!("creating {}", dest.display()))?;
    }
    let mut put = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .with_context(|| format!("{} has no file name", f.display()))?;
        if !f.is_file() {
            bail!("{} is not a file (putfile copies files)", f.display());
        }
        let target = dest.join(name);
        fs::copy(f, &target).with_context(|| format!("copying {} into the image", f.display()))?;
        put.push(Path::new("/root/vm").join(name));
    }
    Ok(put)
}

/// Files that tie a guest's network to the MAC of the VM it was installed in.
pub const MAC_BOUND_RULES: &[&str] = &[
    "etc/udev/rules.d/70-persistent-net.rules",
    "etc/udev/rules.d/75-persistent-net-generator.rules",
];

/// Removes MAC-bound persistent network rules; returns the guest paths removed.
pub fn fix_net(root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for rel in MAC_BOUND_RULES {
        let p = root.join(rel);
        if p.symlink_metadata().is_ok() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(Path::new("/").join(rel));
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
