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
//!
//! One-shot runs (`--exec`) need no systemd: [`EXEC_INIT`] is a small init they boot with
//! `init=` (VMK_EXEC_INIT), and the initrd's own init mounts the root without udev when the
//! kernel command line says [`ONE_SHOT_ARG`]; every other boot is the normal one.

use std::path::Path;

use anyhow::Result;
use vmk_common::config::values::{ONE_SHOT_ARG, SSHD_STARTED_LINE, VIRTIOFS_TAGS_CREDENTIAL};
use vmk_common::config::Share;

use crate::debian::write_file;
use crate::runner::CommandRunner;
use vmk_common::host::command;

/// The script that mounts the shares.
pub const SHARES_SCRIPT: &str = "usr/local/sbin/vmk-shares";
/// The init of one-shot runs (in the guest; VMK_EXEC_INIT of the VMs `vmk bootstrap`
/// makes): `run --exec` boots it with `init=` instead of systemd. Under /usr/local, which
/// apt never touches.
pub const EXEC_INIT: &str = "/usr/local/lib/vmk/exec-init";
/// The unit that runs it at boot.
pub const SHARES_UNIT: &str = "etc/systemd/system/vmk-shares.service";
/// The modules the initrd holds (`MODULES=list` plus [`INITRD_HOOK`], with their
/// dependencies): the disk on every VMK_DISK_BUS (virtio-blk, virtio-scsi, lsi, ide/ahci,
/// nvme), ext4, 9p, virtiofs, and the SCSI CD-ROM driver (a cloud-init seed, an install
/// medium). Held, not loaded: udev in the initrd loads what the VM's devices need (loading
/// all of them cost seconds each under emulation; virtiofs by its device's modalias, as
/// the one-shot init does too), and [`INITRD_9P`] loads 9p when the VM has a 9p share. A small initrd unpacks fast (Debian's default `MODULES=most`
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
    "virtiofs",
    "sr_mod",
];
/// The initramfs-tools hook that adds [`INITRD_MODULES`].
const INITRD_HOOK: &str = "etc/initramfs-tools/hooks/vmk";
/// The initrd script that loads 9p when qemu gives the VM a 9p device (virtio device id 9),
/// so that a `--modules` share can replace /lib/modules before anything is read from it.
const INITRD_9P: &str = "etc/initramfs-tools/scripts/init-premount/vmk-9p";
/// The init of the initrd (put there by [`INITRD_HOOK`], which keeps initramfs-tools' own
/// as `/init.initramfs-tools`): on a one-shot boot ([`ONE_SHOT_ARG`] on the kernel command
/// line) it mounts the root itself, without udev (whose start and coldplug cost seconds each
/// under emulation); on every other boot it hands over to initramfs-tools' init at once.
const INITRD_INIT: &str = "usr/local/lib/vmk/initrd-init";

/// [`INITRD_INIT`], for the initrd's klibc shell and tools: the drivers of the VM's PCI
/// and virtio devices by their modaliases, the SCSI disk driver and ext4 (the initrd holds
/// only [`INITRD_MODULES`]), 9p when the VM has a share (as [`INITRD_9P`]), in two
/// modprobes; /dev's links to /proc/self/fd and /run's directories for [`EXEC_INIT`]; the
/// root from `root=` (`LABEL=`, `UUID=` or a device, found with blkid as it appears)
/// mounted `rw` or `ro` as asked, then
/// `init=` (the last one, as the kernel reads it) by run-init. A root that does not appear
/// within a minute: initramfs-tools' init takes over (and says why).
fn initrd_init_text() -> String {
    format!(
        r#"#!/bin/sh
# Written by vmk bootstrap (installed as the initrd's /init by /etc/initramfs-tools/hooks/vmk):
# a one-shot boot ({arg}: `vmk run --exec`) mounts the root without udev; every other boot
# runs initramfs-tools' init (/init.initramfs-tools) as usual.
mkdir -p /proc /sys /dev /run /root
mount -t proc -o nodev,noexec,nosuid proc /proc
case " $(cat /proc/cmdline) " in
    *" {arg} "*) ;;
    *) umount /proc; exec /init.initramfs-tools "$@" ;;
esac
PATH=/sbin:/usr/sbin:/bin:/usr/bin
export PATH
mount -t sysfs -o nodev,noexec,nosuid sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 udev /dev
mount -t tmpfs -o nodev,nosuid,mode=0755 tmpfs /run
root=
init=/sbin/init
mode=ro
for w in $(cat /proc/cmdline); do
    case "$w" in
        root=*) root=${{w#root=}} ;;
        init=*) init=${{w#init=}} ;;
        rw) mode=rw ;;
        ro) mode=ro ;;
    esac
done
# few modprobes (each program started costs much under emulation): the drivers of the PCI
# devices (virtio-pci among them), the SCSI disk driver and ext4; then those of the virtio
# devices that virtio-pci found, and 9p when there is a share
aliases="sd_mod ext4"
for f in /sys/bus/pci/devices/*/modalias; do
    [ -r "$f" ] && read -r a < "$f" && aliases="$aliases $a"
done
modprobe -qab $aliases
aliases=
for d in /sys/bus/virtio/devices/*; do
    [ -r "$d/modalias" ] && read -r a < "$d/modalias" && aliases="$aliases $a"
    read -r id < "$d/device" && [ "$id" = 0x0009 ] && aliases="$aliases 9pnet_virtio 9p"
done
[ -z "$aliases" ] || modprobe -qab $aliases
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mkdir -p /run/lock /run/sshd /run/vmk
n=0
dev=
while [ -z "$dev" ]; do
    case "$root" in
        LABEL=*) dev=$(blkid -L "${{root#LABEL=}}" 2>/dev/null) ;;
        UUID=*) dev=$(blkid -U "${{root#UUID=}}" 2>/dev/null) ;;
        /dev/*) [ -b "$root" ] && dev=$root ;;
    esac
    [ -n "$dev" ] && break
    n=$((n + 1))
    if [ $n -gt 600 ]; then
        echo "vmk initrd: root $root did not appear: initramfs-tools takes over"
        umount /run; umount /dev; umount /sys; umount /proc
        exec /init.initramfs-tools "$@"
    fi
    sleep 0.1
done
mount -t ext4 -o "$mode" "$dev" /root 2>/dev/null || {{
    fstype=$(blkid -s TYPE -o value "$dev" 2>/dev/null)
    modprobe -q "$fstype"
    mount -t "$fstype" -o "$mode" "$dev" /root
}} || {{
    echo "vmk initrd: cannot mount $dev: initramfs-tools takes over"
    umount /run; umount /dev; umount /sys; umount /proc
    exec /init.initramfs-tools "$@"
}}
for m in /dev /run /sys /proc; do
    mount -o move "$m" "/root$m"
done
exec run-init /root "$init" "$@" </root/dev/console >/root/dev/console 2>&1
"#,
        arg = ONE_SHOT_ARG
    )
}

/// initramfs-tools' setting for that list.
const INITRAMFS_CONF: &str = "etc/initramfs-tools/conf.d/vmk.conf";

/// The script: every 9p mount tag the guest sees, and every virtiofs tag vmk lists in the
/// [`VIRTIOFS_TAGS_CREDENTIAL`] SMBIOS string (a kernel before 6.9 shows virtiofs tags
/// nowhere else), mounted once; [`Share::MODULES_TAG`] over /lib/modules, any other TAG at
/// /mnt/TAG. Nothing to do when vmk shares nothing.
fn shares_script() -> String {
    format!(
        r#"#!/bin/sh
# Written by vmk bootstrap: mounts the host folders vmk shares with this VM (virtio-9p and
# virtiofs). Tag {modules} goes over /lib/modules (a kernel's modules for one boot: vmk run
# --modules), every other tag TAG at /mnt/TAG. Run at boot by vmk-shares.service; safe to
# run again.
set -u
LC_ALL=C
export LC_ALL
status=0
share() {{
    case "$2" in
        {modules}) dir=/lib/modules ;;
        ''|.*|-*|*[!A-Za-z0-9_.-]*) echo "vmk-shares: ignoring mount tag '$2'" >&2; return ;;
        *) dir=/mnt/$2 ;;
    esac
    mountpoint -q "$dir" && return
    if [ "$1" = virtiofs ]; then
        mkdir -p "$dir" && mount -t virtiofs "$2" "$dir" || status=1
    else
        mkdir -p "$dir" && mount -t 9p -o {options} "$2" "$dir" || status=1
    fi
}}
for d in /sys/bus/virtio/devices/*; do
    read -r id < "$d/device" 2>/dev/null || continue
    case "$id" in
        0x0009) ninep=1 ;;
        0x001a) virtiofs=1 ;;
    esac
done
if [ -n "${{ninep:-}}" ]; then
    modprobe -q 9pnet_virtio 2>/dev/null || true
    for f in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
        [ -r "$f" ] && share 9p "$(tr -d '\000' < "$f")"
    done
fi
if [ -n "${{virtiofs:-}}" ]; then
    modprobe -q virtiofs 2>/dev/null || true
    tags=$(tr '\000' '\n' < /sys/firmware/dmi/tables/DMI 2>/dev/null |
        sed -n 's/^.*io\.systemd\.credential:{credential_re}=//p')
    [ -n "$tags" ] || echo "vmk-shares: a virtiofs device but no {credential} SMBIOS string" >&2
    for tag in $tags; do
        share virtiofs "$tag"
    done
fi
exit $status
"#,
        modules = Share::MODULES_TAG,
        options = Share::MOUNT_OPTIONS,
        credential = VIRTIOFS_TAGS_CREDENTIAL,
        credential_re = VIRTIOFS_TAGS_CREDENTIAL.replace('.', "\\."),
    )
}

/// [`EXEC_INIT`]: what a command over ssh needs and nothing else, in the order it needs it.
/// The kernel file systems (the initrd moved most of them here already), the root
/// read-write, the shares ([`SHARES_SCRIPT`], before any module is read: a `--modules`
/// share goes over /lib/modules), the drivers of the VM's PCI and virtio devices (as udev's
/// coldplug would load them, blacklist included), the network as qemu's user networking
/// has it (10.0.2.15/24 via 10.0.2.2: no DHCP to wait for), root's key from the SMBIOS
/// credential vmk gives systemd guests (in /run, nothing is written to disk), sshd (without
/// PAM: no session bookkeeping for a login that runs one command), and once sshd listens
/// (its pidfile) [`SSHD_STARTED_LINE`] on the console, which vmk waits for. /run/vmk/uptime-init and
/// uptime-sshd keep /proc/uptime when it started and when sshd did (bench/devloop.sh). Then it
/// waits: the ACPI power button (`vmk stop`, and `vmk run --exec` on disk0) or
/// Ctrl-Alt-Del (SIGINT) end every process, remount the root read-only and power off.
const EXEC_INIT_TEXT: &str = r#"#!/bin/sh
# Written by vmk bootstrap: the init of one-shot runs (`vmk run --exec`, `vmk snap run
# --exec`: VMK_EXEC_INIT in vm-config; `--full-boot` boots systemd instead). No systemd:
# just what a command over ssh needs. Every other boot is the normal systemd boot.
# Few programs: every one started costs much under emulation, so shell builtins do the rest.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
say() { echo "vmk-exec-init: $*"; }
[ -e /proc/self/mountinfo ] || mount -t proc -o nosuid,nodev,noexec proc /proc
mounted=" "
rootopts=
while read -r _ m _ o _; do
    mounted="$mounted$m "
    [ "$m" = / ] && rootopts=$o
done < /proc/mounts
fs() {
    case "$mounted" in *" $3 "*) return 0 ;; esac
    [ -d "$3" ] || mkdir -p "$3"
    mount -t "$1" -o "$2" "$1" "$3"
}
fs sysfs nosuid,nodev,noexec /sys
fs devtmpfs mode=0755,nosuid /dev
fs devpts nosuid,noexec,gid=5,mode=620,ptmxmode=000 /dev/pts
fs tmpfs nosuid,nodev /dev/shm
fs tmpfs nosuid,nodev,mode=0755 /run
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
[ -d /run/vmk ] && [ -d /run/sshd ] && [ -d /run/lock ] || mkdir -p /run/lock /run/sshd /run/vmk
read -r up _ < /proc/uptime && echo "$up" > /run/vmk/uptime-init
case "$rootopts" in
    rw,*) ;;
    *) mount -o remount,rw / || say "the root stays read-only" ;;
esac
read -r h < /etc/hostname && echo "$h" > /proc/sys/kernel/hostname
for d in /sys/bus/virtio/devices/*; do
    read -r id < "$d/device" 2>/dev/null || continue
    if [ "$id" = 0x0009 ] || [ "$id" = 0x001a ]; then
        /usr/local/sbin/vmk-shares
        break
    fi
done
aliases=
for f in /sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias; do
    [ -r "$f" ] && read -r a < "$f" && aliases="$aliases $a"
done
modprobe -qab $aliases button evdev
nic=
for d in /sys/class/net/*; do
    [ "${d##*/}" != lo ] && [ -e "$d/device" ] && nic=${d##*/} && break
done
if [ -n "$nic" ]; then
    ip -batch - <<EOF
link set lo up
link set $nic up
addr add 10.0.2.15/24 dev $nic
route add default via 10.0.2.2 dev $nic
EOF
else
    ip link set lo up
fi
umask 077
tr '\000' '\n' < /sys/firmware/dmi/tables/DMI 2>/dev/null |
    sed -n 's/^.*io\.systemd\.credential:ssh\.authorized_keys\.root=//p' > /run/vmk/authorized_keys
umask 022
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A >/dev/null
/usr/sbin/sshd -o "AuthorizedKeysFile .ssh/authorized_keys /run/vmk/authorized_keys" \
    -o UsePAM=no -o PrintMotd=no -o PrintLastLog=no || say "sshd did not start"
n=0
while [ ! -s /run/sshd.pid ] && [ $n -lt 100 ]; do
    sleep 0.1
    n=$((n + 1))
done
read -r up _ < /proc/uptime && echo "$up" > /run/vmk/uptime-sshd
echo "@SSHD_STARTED_LINE@"

off() {
    trap '' INT TERM USR1
    say "powering off"
    kill -TERM -1 2>/dev/null
    sleep 1
    kill -KILL -1 2>/dev/null
    sync
    umount -a -t 9p,virtiofs 2>/dev/null
    mount -o remount,ro / || sync
    echo o > /proc/sysrq-trigger
}
trap off INT TERM USR1
for e in /sys/class/input/event*; do
    read -r name < "$e/device/name" 2>/dev/null && [ "$name" = "Power Button" ] || continue
    (dd if="/dev/input/${e##*/}" of=/dev/null bs=64 count=1 status=none && kill -USR1 1) &
done
while :; do
    sleep 3600 &
    wait $!
done
"#;

/// [`EXEC_INIT_TEXT`] with the line vmk waits for ([`SSHD_STARTED_LINE`]).
fn exec_init_text() -> String {
    EXEC_INIT_TEXT.replace("@SSHD_STARTED_LINE@", SSHD_STARTED_LINE)
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
/// the PC speaker; on arm's `virt` machine the virtio-gpu display driver (its framebuffer
/// console draws every kernel line under emulation). Blacklisted, not removed: `modprobe NAME` still loads any of them.
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
    "virtio_gpu",
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
/// modules for the initrd and remakes the initrds (the guest's own tools, in a chroot),
/// unless they were made with these very settings ([`write_initrd_config`] before the
/// kernel package: a system of another architecture, where making one costs minutes).
pub fn install(root: &Path, runner: &dyn CommandRunner) -> Result<()> {
    write_file(&root.join(SHARES_SCRIPT), 0o755, &shares_script())?;
    write_file(&root.join(SHARES_UNIT), 0o644, SHARES_UNIT_TEXT)?;
    write_file(
        &root.join(EXEC_INIT.trim_start_matches('/')),
        0o755,
        &exec_init_text(),
    )?;
    write_file(&root.join(SSH_DROPIN), 0o644, SSH_DROPIN_TEXT)?;
    write_file(&root.join(MODPROBE_BLACKLIST), 0o644, &blacklist_text())?;
    let changed = write_initrd_config(root)?;
    runner.run(
        "systemctl enable vmk-shares",
        command("chroot")
            .arg(root)
            .args(["systemctl", "enable", "vmk-shares.service"]),
    )?;
    if !changed && has_initrd(root) {
        return Ok(());
    }
    runner.run(
        "update-initramfs",
        command("chroot")
            .arg(root)
            .args(["update-initramfs", "-u", "-k", "all"]),
    )
}

/// Whether the tree `root` has an initrd in /boot.
fn has_initrd(root: &Path) -> bool {
    std::fs::read_dir(root.join("boot")).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("initrd.img-"))
    })
}

/// The initramfs-tools settings of a small initrd ([`INITRD_MODULES`], `MODULES=list`,
/// 9p when shared, the one-shot init) in the tree `root`; written
/// before the kernel package is configured when its initrd is costly to make (another
/// architecture, under emulation). Returns whether any file was missing or different.
pub fn write_initrd_config(root: &Path) -> Result<bool> {
    let mut changed = false;
    for (rel, mode, text) in [
        (INITRD_INIT, 0o755, initrd_init_text()),
        (INITRD_HOOK, 0o755, initrd_hook()),
        (INITRD_9P, 0o755, INITRD_9P_TEXT.to_string()),
        (
            INITRAMFS_CONF,
            0o644,
            "# Written by vmk bootstrap: the initrd holds only the modules that\n\
             # /etc/initramfs-tools/hooks/vmk adds (a VM's disks, ext4, 9p, virtiofs, CD-ROM) and their dependencies.\n\
             MODULES=list\n"
                .to_string(),
        ),
    ] {
        let path = root.join(rel);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_file(&path, mode, &text)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The hook that puts [`INITRD_MODULES`] into every initrd update-initramfs makes.
fn initrd_hook() -> String {
    format!(
        "#!/bin/sh\n\
         # Written by vmk bootstrap: a VM's disk drivers, ext4, 9p and virtiofs in the initrd (see\n\
         # conf.d/vmk.conf); udev loads what the VM's devices need.\n\
         case \"$1\" in prereqs) exit 0 ;; esac\n\
         . /usr/share/initramfs-tools/hook-functions\n\
         for m in {}; do manual_add_modules \"$m\"; done\n\
         # one-shot boots mount the root without udev: see /{init}\n\
         mv \"$DESTDIR/init\" \"$DESTDIR/init.initramfs-tools\"\n\
         cp /{init} \"$DESTDIR/init\"\n\
         chmod 755 \"$DESTDIR/init\"\n",
        INITRD_MODULES.join(" "),
        init = INITRD_INIT,
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
        assert!(s.contains(r"credential:vmk\.virtiofs-tags=//p"), "{s}");
        assert!(s.contains(r#"mount -t virtiofs "$2" "$dir""#), "{s}");
        assert!(SHARES_UNIT_TEXT.contains(&format!("ExecStart=/{SHARES_SCRIPT}")));
    }

    #[test]
    fn initrd_settings_written_twice_change_nothing_the_second_time() {
        let t = tempfile::tempdir().unwrap();
        assert!(write_initrd_config(t.path()).unwrap());
        assert!(!has_initrd(t.path()));
        assert!(!write_initrd_config(t.path()).unwrap());
        std::fs::write(t.path().join(INITRAMFS_CONF), "MODULES=most\n").unwrap();
        assert!(write_initrd_config(t.path()).unwrap());
        std::fs::create_dir(t.path().join("boot")).unwrap();
        std::fs::write(t.path().join("boot/initrd.img-6.1.0-9-arm64"), "").unwrap();
        assert!(has_initrd(t.path()));
    }

    #[test]
    fn the_initrd_holds_the_disk_drivers_and_loads_9p_only_for_a_share() {
        let hook = initrd_hook();
        assert!(hook.contains("manual_add_modules"), "{hook}");
        for m in [
            "virtio_blk",
            "virtio_scsi",
            "9pnet_virtio",
            "ext4",
            "virtiofs",
            "sr_mod",
        ] {
            assert!(
                hook.contains(&format!(" {m} ")) || hook.contains(&format!(" {m};")),
                "{m}: {hook}"
            );
        }
        assert!(INITRD_9P_TEXT.contains("= 0x0009 ]"));
    }
}
