//! `vmk bootstrap --boot disk`: a disk0 that boots itself, so that a kernel update inside
//! the guest just works (direct kernel boot stays the fast default).
//!
//! One image serves every VMK_FIRMWARE: GPT with a BIOS boot partition (GRUB for BIOS
//! embeds its core there), an EFI system partition (shim, signed by Microsoft, as the
//! NVRAM-less fallback loader EFI/BOOT/BOOTX64.EFI, then GRUB and the kernel, signed by
//! Debian: Secure Boot works) and the root filesystem labelled as with direct boot. It is
//! made without a running guest: sgdisk on the image, a loop device with its partitions
//! (detached on every error path), `mkfs.ext4 -d` from the staged tree, then `grub-install`
//! (BIOS) and `update-grub` of the guest itself in a chroot, and the ESP's files, the
//! guest's signed shim and GRUB, written with mtools (the host's kernel may have no vfat;
//! the guest's has). Inside the guest, fstab mounts the
//! root and the ESP by label and the grub configuration finds root by its label, so the
//! guest's own `update-grub` (run by every kernel package) keeps it bootable on any disk bus.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vmk_common::chroot::Mounts;
use vmk_common::host::command;
use vmk_common::loopdev::LoopDevice;

use crate::debian::write_file;
use crate::image::{mkfs_args, ROOT_LABEL};
use crate::runner::CommandRunner;
use crate::vmconfig::append_for;

/// How the VM boots (`--boot`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Boot {
    /// Direct kernel boot of a kernel and initrd copied out of the guest (VMK_KERNEL):
    /// fast, and disk0 is one ext4 filesystem.
    #[default]
    Kernel,
    /// A partitioned disk0 with GRUB (BIOS) and shim + GRUB (UEFI, Secure Boot) inside:
    /// boots with any VMK_FIRMWARE, without VMK_KERNEL; a kernel update inside the guest
    /// just works.
    Disk,
}

/// The packages a guest that boots itself needs besides the others: GRUB for BIOS and for
/// UEFI, the signed GRUB and shim, update-grub (whose kernel hook keeps grub.cfg current),
/// mokutil to ask the firmware about Secure Boot, and what checks the ESP at boot.
pub const DISK_BOOT_PACKAGES: &[&str] = &[
    "grub2-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub-efi-amd64-signed",
    "shim-signed",
    "mokutil",
    "dosfstools",
];

/// The filesystem label of the EFI system partition (FAT: 11 characters, upper case).
pub const ESP_LABEL: &str = "VMKEFI";
/// The ESP's size in MiB.
const ESP_MIB: u64 = 128;
/// What the partitions other than the root take (MiB): the first MiB, the BIOS boot
/// partition, the ESP, and the backup GPT at the end.
pub(crate) const PARTITIONS_MIB: u64 = 1 + 1 + ESP_MIB + 1;

/// The Debian architectures `--boot disk` knows the bootloaders of.
pub(crate) fn check_arch(arch: &str) -> Result<()> {
    if arch != "amd64" {
        return Err(vmk_common::usage!(
            "--boot disk makes GRUB and shim disks for amd64 only (not {arch}): use --boot kernel"
        ));
    }
    Ok(())
}

/// `sgdisk` arguments that write the layout onto `image`: 1 MiB BIOS boot partition,
/// the ESP, and the root (labelled [`ROOT_LABEL`] as a partition too) over the rest.
pub(crate) fn sgdisk_args(image: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--clear".to_string(),
        "--new=1:1M:+1M".into(),
        "--typecode=1:ef02".into(),
        "--change-name=1:bios".into(),
        format!("--new=2:0:+{ESP_MIB}M"),
        "--typecode=2:ef00".into(),
        "--change-name=2:esp".into(),
        "--new=3:0:0".into(),
        "--typecode=3:8300".into(),
        format!("--change-name=3:{ROOT_LABEL}"),
    ]
    .map(Into::into)
    .into();
    args.push(image.into());
    args
}

/// What the guest's tree needs to boot itself: the ESP in fstab (by label), its mount
/// point, and GRUB's settings in /etc/default/grub.d (serial console, the kernel arguments
/// of direct boot, root by label).
pub fn configure(root: &Path, console: &str) -> Result<()> {
    let fstab = root.join("etc/fstab");
    let mut text =
        fs::read_to_string(&fstab).with_context(|| format!("reading {}", fstab.display()))?;
    text.push_str(&format!(
        "# the EFI system partition (shim and GRUB for UEFI)\n\
         LABEL={ESP_LABEL} /boot/efi vfat umask=0077 0 2\n"
    ));
    write_file(&fstab, 0o644, &text)?;
    fs::create_dir_all(root.join("boot/efi")).context("creating /boot/efi in the guest")?;
    write_file(
        &root.join("etc/default/grub.d/vmk.cfg"),
        0o644,
        &grub_settings(console),
    )
}

/// /etc/default/grub.d/vmk.cfg. `GRUB_DEVICE` is read by grub-mkconfig after it probed the
/// root device: set to the label, with UUIDs off, the kernel gets `root=LABEL=vmkroot`
/// whatever the disk is called (a loop device while bootstrapping, sda or vda in the VM).
fn grub_settings(console: &str) -> String {
    format!(
        "# Written by vmk bootstrap --boot disk: the menu and the kernel on the serial console\n\
         # (qemu's console log), root found by its label as with direct kernel boot (the disk\n\
         # boots on every VMK_DISK_BUS). update-grub reads this after every kernel update.\n\
         GRUB_DISTRIBUTOR=Debian\n\
         GRUB_TIMEOUT=2\n\
         GRUB_TERMINAL=\"console serial\"\n\
         GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n\
         GRUB_CMDLINE_LINUX_DEFAULT=\"\"\n\
         GRUB_CMDLINE_LINUX=\"{}\"\n\
         GRUB_DEVICE=\"LABEL={ROOT_LABEL}\"\n\
         GRUB_DISABLE_LINUX_UUID=true\n\
         GRUB_DISABLE_LINUX_PARTUUID=true\n",
        grub_kernel_args(console)
    )
}

/// The kernel arguments of direct boot but root and rw (GRUB adds its own root, and `ro`).
fn grub_kernel_args(console: &str) -> String {
    append_for(console)
        .split_whitespace()
        .filter(|w| !w.starts_with("root=") && *w != "rw")
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes `image` (a new sparse file of `size` bytes, NOCOW where it can be) the disk that
/// boots the configured tree `root` by itself; `work` is an empty directory to mount on.
/// Returns whether the image is NOCOW. Needs root (loop device, mounts, chroot); not vfat
/// in this machine's kernel: the ESP is written with mtools.
pub fn make_boot_disk(
    root: &Path,
    image: &Path,
    size: u64,
    work: &Path,
    runner: &dyn CommandRunner,
) -> Result<bool> {
    let nocow = vmk_common::fileops::create_nocow_file(image, size)
        .with_context(|| format!("creating {}", image.display()))?;
    runner.run("sgdisk", command("sgdisk").args(sgdisk_args(image)))?;
    let disk = LoopDevice::attach(image)?;
    let parts = disk.partitions()?;
    let [_, esp, rootfs] = &parts[..] else {
        bail!(
            "{} shows {} partitions after sgdisk, expected 3",
            disk.path().display(),
            parts.len()
        );
    };
    runner.run(
        "mkfs.ext4",
        command("mkfs.ext4").args(mkfs_args(root, rootfs)),
    )?;
    runner.run("mkfs.vfat", &mut mkfs_esp(esp))?;
    let mnt = mount_point(work);
    fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let mut mounts = Mounts::default();
    mounts.device(rootfs, &mnt, "ext4")?;
    mounts.system(&mnt)?;
    for args in install_steps(disk.path()) {
        let what = args[..args.len().min(2)].join(" ");
        runner.run(&what, command("chroot").arg(&mnt).args(&args))?;
    }
    let esp_tree = work.join("esp");
    write_esp_tree(&mnt, &esp_tree, &fs_uuid(rootfs)?)?;
    mounts.undo()?;
    runner.run("mcopy", &mut copy_to_esp(&esp_tree, esp))?;
    fs::remove_dir_all(&esp_tree).with_context(|| format!("removing {}", esp_tree.display()))?;
    disk.detach()?;
    Ok(nocow)
}

/// `mkfs.vfat` of the ESP on `dev`.
pub(crate) fn mkfs_esp(dev: &Path) -> std::process::Command {
    let mut c = command("mkfs.vfat");
    c.args(["-F", "32", "-n", ESP_LABEL]).arg(dev);
    c
}

/// `mcopy` of the tree `tree` (its EFI directory) onto the FAT filesystem on `dev`.
pub(crate) fn copy_to_esp(tree: &Path, dev: &Path) -> std::process::Command {
    let mut c = command("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-i"])
        .arg(dev)
        .arg(tree.join("EFI"))
        .arg("::/");
    c
}

/// The UUID of the filesystem on `dev` (blkid).
fn fs_uuid(dev: &Path) -> Result<String> {
    let out = command("blkid")
        .args(["-s", "UUID", "-o", "value"])
        .arg(dev)
        .output()
        .context("running blkid")?;
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || uuid.is_empty() {
        bail!("blkid found no filesystem UUID on {}", dev.display());
    }
    Ok(uuid)
}

/// Where the ESP's files come from in the guest: shim (signed by Microsoft) as the
/// removable-media loader, GRUB (signed by Debian) beside it where shim looks for it, and
/// shim's MOK manager.
const ESP_FILES: &[(&str, &str)] = &[
    ("usr/lib/shim/shimx64.efi.signed", "BOOTX64.EFI"),
    (
        "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "grubx64.efi",
    ),
    ("usr/lib/shim/mmx64.efi.signed", "mmx64.efi"),
];

/// The ESP's tree in `tree`: what `grub-install --target=x86_64-efi --removable
/// --uefi-secure-boot` puts there (it cannot run here: it checks that the ESP is a mounted
/// FAT filesystem), from the guest's `root`: [`ESP_FILES`] in EFI/BOOT and the grub.cfg
/// that sends the signed GRUB (which finds no /EFI/debian and reads the grub.cfg beside
/// itself) to the root filesystem's /boot/grub.
fn write_esp_tree(root: &Path, tree: &Path, root_uuid: &str) -> Result<()> {
    let boot = tree.join("EFI/BOOT");
    fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    for (src, dst) in ESP_FILES {
        let from = root.join(src);
        fs::copy(&from, boot.join(dst)).with_context(|| {
            format!(
                "copying {} to the ESP (are shim-signed and grub-efi-amd64-signed installed?)",
                from.display()
            )
        })?;
    }
    write_file(&boot.join("grub.cfg"), 0o644, &esp_grub_cfg(root_uuid))
}

/// The ESP's grub.cfg, as grub-install writes it.
fn esp_grub_cfg(root_uuid: &str) -> String {
    format!(
        "search.fs_uuid {root_uuid} root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n"
    )
}

/// The guest's own commands, in the chroot, that make the disk boot: GRUB for BIOS into
/// the disk (its core in the BIOS boot partition), then grub.cfg.
pub(crate) fn install_steps(disk: &Path) -> Vec<Vec<String>> {
    let disk = disk.display().to_string();
    vec![
        ["grub-install", "--target=i386-pc", &disk]
            .map(str::to_string)
            .to_vec(),
        vec!["update-grub".to_string()],
    ]
}

/// The work directory's mount point (for `-D`).
pub(crate) fn mount_point(work: &Path) -> PathBuf {
    work.join("mnt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_finds_root_by_label_with_the_direct_boot_arguments() {
        let s = grub_settings("ttyS0");
        assert!(
            s.contains("GRUB_CMDLINE_LINUX=\"console=ttyS0 no_timer_check\"\n"),
            "{s}"
        );
        assert!(s.contains("GRUB_DEVICE=\"LABEL=vmkroot\"\n"), "{s}");
        assert!(s.contains("GRUB_DISABLE_LINUX_UUID=true\n"), "{s}");
    }

    #[test]
    fn the_layout_has_bios_boot_esp_and_root() {
        let a: Vec<String> = sgdisk_args(Path::new("/v/disk0.raw"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--typecode=1:ef02",
            "--typecode=2:ef00",
            "--typecode=3:8300",
        ] {
            assert!(a.iter().any(|x| x == want), "{a:?}");
        }
        assert_eq!(a.last().map(String::as_str), Some("/v/disk0.raw"));
        let steps = install_steps(Path::new("/dev/loop7"));
        assert_eq!(steps[0], ["grub-install", "--target=i386-pc", "/dev/loop7"]);
        assert_eq!(steps[1], ["update-grub"]);
        assert_eq!(
            esp_grub_cfg("1234-ab"),
            "search.fs_uuid 1234-ab root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n"
        );
        assert!(check_arch("arm64").is_err());
    }
}
