//! What a bootstrapped guest carries for the developer's loop, so that nothing has to be
//! configured inside it: the host folders vmk shares (`VMK_SHARE`, virtio-9p) are mounted
//! at /mnt/TAG at boot, and a kernel's modules shared by `--modules` over /lib/modules,
//! early enough for udev to load them.
//!
//! All of it is plain Debian configuration that survives `apt upgrade` and kernel updates:
//! a script in /usr/local/sbin, a unit in /etc/systemd/system, and an initramfs-tools hook
//! and init-premount script with `MODULES=list`, so that every initrd update-initramfs makes
//! (now and after a kernel update) is small and loads 9p when there is a share: a throwaway
//! copy whose /lib/modules is replaced by the share still has 9p before it can read any
//! module from disk. Also: ssh.service without its separate `sshd -t`, and modules a test
//! VM does not need blacklisted (measured in bench/devloop.sh).

use std::path::Path;

use anyhow::Result;
use vmk_common::config::Share;

use crate::debian::write_file;
use crate::runner::CommandRunner;
use vmk_common::host::command;

/// The script that mounts the shares.
pub const SHARES_SCRIPT: &str = "usr/local/sbin/vmk-shares";
/// The unit that runs it at boot.
pub const SHARES_UNIT: &str = "etc/systemd/system/vmk-shares.service";
/// The modules the initrd holds (`MODULES=list` plus [`INITRD_HOOK`], with their
/// dependencies): the disk on every VMK_DISK_BUS (virtio-blk, virtio-scsi, lsi, ide/ahci,
/// nvme), ext4, and 9p. Held, not loaded: udev in the initrd loads what the VM's devices
/// need (loading all of them cost seconds each under emulation), and [`INITRD_9P`] loads 9p
/// when the VM has a 9p share. A small initrd unpacks fast (Debian's default `MODULES=most`
/// is several times larger).
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
/// The initramfs-tools hook that adds [`INITRD_MODULES`].
const INITRD_HOOK: &str = "etc/initramfs-tools/hooks/vmk";
/// The initrd script that loads 9p when qemu gives the VM a 9p device (virtio device id 9),
/// so that a `--modules` share can replace /lib/modules before anything is read from it.
const INITRD_9P: &str = "etc/initramfs-tools/scripts/init-premount/vmk-9p";
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

/// Fast to a shell: modules Debian's standard kernel loads on qemu's q35 machine that a
/// test VM does not need and that cost seconds each under emulation (measured: the guest's
/// boot went from 54 s to 140 s with the standard kernel's coldplug): the bochs display
/// driver (the VGA text console stays), wireless, the TCO watchdog, nested KVM, cpufreq,
/// the PC speaker. Blacklisted, not removed: `modprobe NAME` still loads any of them.
const MODPROBE_BLACKLIST: &str = "etc/modprobe.d/vmk-test-vm.conf";
const BLACKLISTED: &[&str] = &[
    "bochs",
    "cfg80211",
    "iTCO_wdt",
    "iTCO_vendor_support",
    "kvm_amd",
    "kvm_intel",
    "kvm",
    "powernow_k8",
    "acpi_cpufreq",
    "pcspkr",
    "joydev",
    "intel_pmc_bxt",
    "lpc_ich",
    "i2c_i801",
    "drm_vram_helper",
];

fn blacklist_text() -> String {
    let mut t = String::from(
        "# Written by vmk bootstrap: modules a test VM does not need, kept from loading at\n\
         # boot (seconds each under emulation); `modprobe NAME` still loads them.\n",
    );
    for m in BLACKLISTED {
        t.push_str(&format!("blacklist {m}\n"));
    }
    t
}

/// Installs the script and unit into the Debian tree `root`, enables the unit, lists the 9p
/// modules for the initrd and remakes the initrds (the guest's own tools, in a chroot).
pub fn install(root: &Path, runner: &dyn CommandRunner) -> Result<()> {
    write_file(&root.join(SHARES_SCRIPT), 0o755, &shares_script())?;
    write_file(&root.join(SHARES_UNIT), 0o644, SHARES_UNIT_TEXT)?;
    write_file(&root.join(SSH_DROPIN), 0o644, SSH_DROPIN_TEXT)?;
    write_file(&root.join(MODPROBE_BLACKLIST), 0o644, &blacklist_text())?;
    write_file(&root.join(INITRD_HOOK), 0o755, &initrd_hook())?;
    write_file(&root.join(INITRD_9P), 0o755, INITRD_9P_TEXT)?;
    write_file(
        &root.join(INITRAMFS_CONF),
        0o644,
        "# Written by vmk bootstrap: the initrd holds only the modules that\n\
         # /etc/initramfs-tools/hooks/vmk adds (a VM's disks, ext4, 9p) and their dependencies.\n\
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

/// The hook that puts [`INITRD_MODULES`] into every initrd update-initramfs makes.
fn initrd_hook() -> String {
    format!(
        "#!/bin/sh\n\
         # Written by vmk bootstrap: a VM's disk drivers, ext4 and 9p in the initrd (see\n\
         # conf.d/vmk.conf); udev loads what the VM's devices need.\n\
         case \"$1\" in prereqs) exit 0 ;; esac\n\
         . /usr/share/initramfs-tools/hook-functions\n\
         for m in {}; do manual_add_modules \"$m\"; done\n",
        INITRD_MODULES.join(" ")
    )
}

const INITRD_9P_TEXT: &str = r#"#!/bin/sh
# Written by vmk bootstrap: 9p before the root's /lib/modules is read, when qemu gives this
# VM a 9p share (virtio device 9): `vmk run --modules` mounts one over /lib/modules.
case "$1" in prereqs) exit 0 ;; esac
for d in /sys/bus/virtio/devices/*; do
    if [ "$(cat "$d/device" 2>/dev/null)" = 0x0009 ]; then
        modprobe -q 9pnet_virtio
        modprobe -q 9p
        break
    fi
done
exit 0
"#;

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
    fn the_initrd_holds_the_disk_drivers_and_loads_9p_only_for_a_share() {
        let hook = initrd_hook();
        assert!(hook.contains("manual_add_modules"), "{hook}");
        for m in ["virtio_blk", "virtio_scsi", "9pnet_virtio", "ext4"] {
            assert!(
                hook.contains(&format!(" {m} ")) || hook.contains(&format!(" {m};")),
                "{m}: {hook}"
            );
        }
        assert!(INITRD_9P_TEXT.contains("= 0x0009 ]"));
    }
}
