//! What a bootstrapped guest carries for the developer's loop, so that nothing has to be
//! configured inside it: the host folders vmk shares (`VMK_SHARE`, virtio-9p) are mounted
//! at /mnt/TAG at boot, and a kernel's modules shared by `--modules` over /lib/modules,
//! early enough for udev to load them.
//!
//! All of it is plain Debian configuration that survives `apt upgrade` and kernel updates:
//! a script in /usr/local/sbin, a unit in /etc/systemd/system, and the initrd's modules
//! listed in /etc/initramfs-tools/modules with `MODULES=list`, so that every initrd
//! update-initramfs makes (now and after a kernel update) is small and loads 9p: a throwaway
//! copy whose /lib/modules is replaced by the share still has 9p before it can read any
//! module from disk.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use vmk_common::config::Share;

use crate::debian::write_file;
use crate::runner::CommandRunner;
use vmk_common::host::command;

/// The script that mounts the shares.
pub const SHARES_SCRIPT: &str = "usr/local/sbin/vmk-shares";
/// The unit that runs it at boot.
pub const SHARES_UNIT: &str = "etc/systemd/system/vmk-shares.service";
/// The modules the initrd holds and loads (`MODULES=list`, with their dependencies): the
/// disk on every VMK_DISK_BUS (virtio-blk, virtio-scsi, lsi, ide/ahci, nvme), ext4, and 9p,
/// so that a share works before the root's /lib/modules is read. Nothing else: a small
/// initrd unpacks fast (seconds under TCG for Debian's default `MODULES=most`).
const INITRD_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sym53c8xx",
    "ahci",
    "ata_piix",
    "nvme",
    "ext4",
    "9p",
    "9pnet_virtio",
];
/// initramfs-tools' setting for that list.
const INITRAMFS_CONF: &str = "etc/initramfs-tools/conf.d/vmk.conf";

/// The script: every 9p mount tag the guest sees, mounted once; [`Share::MODULES_TAG`]
/// over /lib/modules, any other TAG at /mnt/TAG. Nothing to do when vmk shares nothing.
fn shares_script() -> String {
    format!(
        r#"#!/bin/sh
# Written by vmk bootstrap: mounts the host folders vmk shares with this VM (virtio-9p).
# Tag {modules} goes over /lib/modules (a kernel's modules for one boot: vmk run --modules),
# every other tag TAG at /mnt/TAG. Run at boot by vmk-shares.service; safe to run again.
set -u
modprobe -q 9pnet_virtio 2>/dev/null || true
status=0
for f in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
    [ -r "$f" ] || continue
    tag=$(tr -d '\000' < "$f")
    case "$tag" in
        {modules}) dir=/lib/modules ;;
        ''|.*|-*|*[!A-Za-z0-9_.-]*) echo "vmk-shares: ignoring mount tag '$tag'" >&2; continue ;;
        *) dir=/mnt/$tag ;;
    esac
    mountpoint -q "$dir" && continue
    mkdir -p "$dir" && mount -t 9p -o {options} "$tag" "$dir" || status=1
done
exit $status
"#,
        modules = Share::MODULES_TAG,
        options = Share::MOUNT_OPTIONS,
    )
}

/// Before udev's coldplug and systemd-modules-load (so modules come from a `--modules`
/// share), after the root is writable (for /mnt/TAG), before sshd (a command run over ssh
/// finds its shares).
const SHARES_UNIT_TEXT: &str = "\
# Written by vmk bootstrap: mounts the host folders vmk shares (see /usr/local/sbin/vmk-shares).
[Unit]
Description=Mount the host folders vmk shares with this VM
DefaultDependencies=no
After=systemd-remount-fs.service
Before=systemd-udev-trigger.service systemd-modules-load.service local-fs.target ssh.service
ConditionVirtualization=vm

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vmk-shares

[Install]
WantedBy=local-fs.target
";

/// Fast to a shell: Debian's ssh.service runs `sshd -t` before sshd itself, a whole extra
/// sshd start (seconds under emulation) to check a config that sshd checks anyway when it
/// starts. A drop-in (apt upgrades leave it alone) clears it.
const SSH_DROPIN: &str = "etc/systemd/system/ssh.service.d/vmk.conf";
const SSH_DROPIN_TEXT: &str = "\
# Written by vmk bootstrap: no separate `sshd -t` before sshd (it checks its config itself).
[Service]
ExecStartPre=
";

/// Installs the script and unit into the Debian tree `root`, enables the unit, lists the 9p
/// modules for the initrd and remakes the initrds (the guest's own tools, in a chroot).
pub fn install(root: &Path, runner: &dyn CommandRunner) -> Result<()> {
    write_file(&root.join(SHARES_SCRIPT), 0o755, &shares_script())?;
    write_file(&root.join(SHARES_UNIT), 0o644, SHARES_UNIT_TEXT)?;
    write_file(&root.join(SSH_DROPIN), 0o644, SSH_DROPIN_TEXT)?;
    add_initrd_modules(root)?;
    write_file(
        &root.join(INITRAMFS_CONF),
        0o644,
        "# Written by vmk bootstrap: the initrd holds only the modules listed in\n\
         # /etc/initramfs-tools/modules (a VM's disks, ext4, 9p) and their dependencies.\n\
         MODULES=list\n",
    )?;
    runner.run(
        "systemctl enable vmk-shares",
        command("chroot")
            .arg(root)
            .args(["systemctl", "enable", "vmk-shares.service"]),
    )?;
    runner.run(
        "update-initramfs",
        command("chroot")
            .arg(root)
            .args(["update-initramfs", "-u", "-k", "all"]),
    )
}

/// Adds [`INITRD_MODULES`] to /etc/initramfs-tools/modules, keeping what is there.
fn add_initrd_modules(root: &Path) -> Result<()> {
    let path = root.join("etc/initramfs-tools/modules");
    let mut text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let missing: Vec<&str> = INITRD_MODULES
        .iter()
        .copied()
        .filter(|m| !text.lines().any(|l| l.trim() == *m))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(
        "# vmk bootstrap: a VM's disks, ext4, and 9p for shares and `vmk run --modules`\n",
    );
    for m in missing {
        text.push_str(m);
        text.push('\n');
    }
    write_file(&path, 0o644, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_uses_the_tag_and_options_vmk_gives_qemu() {
        let s = shares_script();
        assert!(s.contains(&format!("{}) dir=/lib/modules", Share::MODULES_TAG)));
        assert!(s.contains(&format!("mount -t 9p -o {} ", Share::MOUNT_OPTIONS)));
        assert!(SHARES_UNIT_TEXT.contains(&format!("ExecStart=/{SHARES_SCRIPT}")));
    }

    #[test]
    fn initrd_modules_are_added_once() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("etc/initramfs-tools/modules");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "# list\nvirtio_blk").unwrap();
        add_initrd_modules(d.path()).unwrap();
        add_initrd_modules(d.path()).unwrap();
        let t = fs::read_to_string(&path).unwrap();
        assert!(t.starts_with("# list\nvirtio_blk\n# vmk bootstrap"), "{t}");
        assert_eq!(t.matches("\n9p\n").count(), 1, "{t}");
        assert_eq!(t.matches("\n9pnet_virtio\n").count(), 1, "{t}");
    }
}
