//! From an installed tree to what the VM boots: the guest's kernel and initrd copied out
//! for direct boot, and disk0, a raw ext4 filesystem without a partition table made by
//! `mkfs.ext4 -d` (no loop device, no nbd, no mounting; boots with `root=LABEL=vmkroot` on any disk bus).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vmk_common::config::Size;
use vmk_common::host::command;

use crate::diskboot::Boot;
use crate::runner::{CommandRunner, Runner};

/// The disk image's file name (VMK_DISK0).
pub const DISK0_NAME: &str = "disk0.raw";
/// The ext4 label of the root filesystem.
pub const ROOT_LABEL: &str = "vmkroot";

/// Copies the guest's newest kernel and initrd out of `root`/boot to `dir`/vmlinuz and
/// `dir`/initrd.img, for direct boot.
pub fn copy_kernel(root: &Path, dir: &Path) -> Result<()> {
    let boot = root.join("boot");
    copy_newest(&boot, "vmlinuz-", &dir.join("vmlinuz"))?;
    copy_newest(&boot, "initrd.img-", &dir.join("initrd.img"))
}

/// Copies the newest `<prefix>*` of the guest's /boot to `dest`.
fn copy_newest(dir: &Path, prefix: &str, dest: &Path) -> Result<()> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort_by(|a, b| version_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    let src = found.pop().with_context(|| {
        format!("the guest has no {prefix}* in /boot: did the kernel package install?")
    })?;
    fs::copy(&src, dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    // private like the disk: an initrd can hold the guest's secrets
    fs::set_permissions(dest, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Compares strings with runs of digits as numbers (6.1.0-10 after 6.1.0-9).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// disk0 of `size` in `dir`, holding the tree `root` (refused when the tree would not fit):
/// one ext4 filesystem, or with `boot` [`Boot::Disk`] the partitioned disk that boots
/// itself (made with the work directory `work`).
pub(crate) fn make_disk(
    size: Size,
    boot: Boot,
    runner: &Runner,
    dir: &Path,
    root: &Path,
    work: &Path,
) -> Result<()> {
    let used = tree_bytes(root);
    let mut need = used + used / 5 + (64 << 20);
    if boot == Boot::Disk {
        need += crate::diskboot::PARTITIONS_MIB << 20;
    }
    if need > size.bytes() {
        bail!(
            "the installed system takes {} MiB: give a disk of at least {} MiB (--size {}M)",
            used >> 20,
            need >> 20,
            (need >> 20) + 1
        );
    }
    let disk = dir.join(DISK0_NAME);
    let nocow = match boot {
        Boot::Kernel => make_ext4_image(root, &disk, size.bytes(), runner)?,
        Boot::Disk => crate::diskboot::make_boot_disk(root, &disk, size.bytes(), work, runner)?,
    };
    if !nocow {
        runner
            .progress
            .note("note: this filesystem has no NOCOW attribute; disk0 is a plain file");
    }
    Ok(())
}

/// Makes `image` (a new sparse file of `size` bytes, NOCOW where the filesystem has the
/// attribute) an ext4 filesystem labelled [`ROOT_LABEL`] holding the tree `root`, with
/// `mkfs.ext4 -d` (no loop device, no mounting). Returns whether the image is NOCOW.
pub fn make_ext4_image(
    root: &Path,
    image: &Path,
    size: u64,
    runner: &dyn CommandRunner,
) -> Result<bool> {
    // NOCOW must be set while the file is empty; mkfs.ext4 keeps the file and its flag.
    let nocow = vmk_common::fileops::create_nocow_file(image, size)
        .with_context(|| format!("creating {}", image.display()))?;
    runner.run(
        "mkfs.ext4",
        command("mkfs.ext4").args(mkfs_args(root, image)),
    )?;
    Ok(nocow)
}

/// The arguments of `mkfs.ext4` that writes the tree `root` into `image`.
pub(crate) fn mkfs_args(root: &Path, image: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-q", "-F", "-L", ROOT_LABEL, "-d"].map(Into::into).into();
    args.extend([root.into(), image.into()]);
    args
}

/// Bytes the files of a tree take (allocated blocks), not following symlinks or mounts.
fn tree_bytes(root: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = meta.dev();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() && m.dev() == dev {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare_as_numbers() {
        assert!(version_cmp("vmlinuz-6.1.0-10-cloud", "vmlinuz-6.1.0-9-cloud").is_gt());
        assert!(version_cmp("a-1", "a-1").is_eq());
    }

    #[test]
    fn the_newest_kernel_is_copied() {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("root/boot");
        fs::create_dir_all(&boot).unwrap();
        for f in ["vmlinuz-6.1.0-9", "vmlinuz-6.1.0-10", "initrd.img-6.1.0-10"] {
            fs::write(boot.join(f), f).unwrap();
        }
        copy_kernel(&t.path().join("root"), t.path()).unwrap();
        assert_eq!(
            fs::read(t.path().join("vmlinuz")).unwrap(),
            b"vmlinuz-6.1.0-10"
        );
        assert_eq!(
            fs::read(t.path().join("initrd.img")).unwrap(),
            b"initrd.img-6.1.0-10"
        );
    }
}
