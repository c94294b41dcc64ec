//! The layout of a VM directory and the numbers derived from a VM's number: the names of
//! its files (`vm-key`, `snap-<disk0>`) and its ports (VNC 5900 + N, console and ssh
//! bases + N), and how a new VM gets a free number. One home for each of these facts.
//!
//! The config file's own name is [`crate::config::VM_FILE_NAME`]; runtime files (pidfile,
//! sockets, console log) are [`crate::state::RuntimePaths`].

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::{self, RawConfig};

/// The VM's private ssh key, in the VM directory.
pub const KEY_FILE: &str = "vm-key";
/// The VM's public ssh key, in the VM directory.
pub const PUBLIC_KEY_FILE: &str = "vm-key.pub";
/// The guest's ssh host keys as vmk learned them on first contact, in the VM directory
/// (ssh's known_hosts format, under the alias `vmk-sshkey` gives them).
pub const KNOWN_HOSTS_FILE: &str = "vm-known_hosts";
/// Prefix of the snapshot VM's image beside disk0: `snap-<disk0 file name>`.
pub const SNAP_PREFIX: &str = "snap-";
/// Suffix of an image's UEFI variable store beside it: `<image>.efivars` (VMK_FIRMWARE=uefi).
pub const FIRMWARE_VARS_SUFFIX: &str = ".efivars";
/// Suffix of an image's TPM state beside it: `<image>.tpm` (VMK_TPM=yes).
pub const TPM_STATE_SUFFIX: &str = ".tpm";
/// VNC display N listens on TCP port 5900 + N.
pub const VNC_PORT_BASE: u16 = 5900;
/// The highest VM number (VMK_VNC).
pub const MAX_VM_NUMBER: u8 = 99;

/// The snapshot VM's image for `disk0`: `snap-<name>` in the same directory.
pub fn snap_image(disk0: &Path) -> PathBuf {
    let mut name = OsString::from(SNAP_PREFIX);
    name.push(disk0.file_name().unwrap_or(disk0.as_os_str()));
    disk0.with_file_name(name)
}

/// `<image><suffix>` beside `image`.
fn beside(image: &Path, suffix: &str) -> PathBuf {
    let mut s = image.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The UEFI variable store of the VM that boots `image`: `<image>.efivars`. It belongs to
/// the image (the boot entries in it name the image's partitions), so it travels with it:
/// `dsnap` snapshots it, `snap run` boots a throwaway copy, `clone` copies it.
pub fn firmware_vars(image: &Path) -> PathBuf {
    beside(image, FIRMWARE_VARS_SUFFIX)
}

/// The TPM state of the VM that boots `image`: `<image>.tpm` (one swtpm state file).
pub fn tpm_state(image: &Path) -> PathBuf {
    beside(image, TPM_STATE_SUFFIX)
}

/// The files that belong to `image` and travel with it wherever it is copied (snapshots,
/// the snapshot VM, clones): its UEFI variable store and its TPM state. Either may not
/// exist.
pub fn companions(image: &Path) -> [PathBuf; 2] {
    [firmware_vars(image), tpm_state(image)]
}

/// `base + vm`, or `None` past port 65535.
pub fn port(base: u16, vm: u8) -> Option<u16> {
    base.checked_add(u16::from(vm))
}

/// The VNC TCP port of display `vm`.
pub fn vnc_port(vm: u8) -> u16 {
    VNC_PORT_BASE + u16::from(vm)
}

/// The VNC display of a VNC TCP port (`5903` → 3).
pub fn vnc_display(port: u16) -> Option<u16> {
    port.checked_sub(VNC_PORT_BASE)
}

/// The three TCP ports a VM with number `vm` listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmPorts {
    /// VNC: 5900 + N.
    pub vnc: u16,
    /// Serial console (telnet): VMK_TELNET_BASE + N.
    pub console: u16,
    /// ssh forwarded to the guest: VMK_SSH_BASE + N.
    pub ssh: u16,
}

impl VmPorts {
    /// The ports of VM number `vm` with these bases; `None` when one is past 65535.
    pub fn of(vm: u8, telnet_base: u16, ssh_base: u16) -> Option<VmPorts> {
        Some(VmPorts {
            vnc: vnc_port(vm),
            console: port(telnet_base, vm)?,
            ssh: port(ssh_base, vm)?,
        })
    }

    /// All three, for checks.
    pub fn all(&self) -> [u16; 3] {
        [self.vnc, self.console, self.ssh]
    }
}

/// The first VM number from 1 to 99 not in `taken` whose ports are all free on `listen`.
pub fn first_free_vm_number(
    listen: IpAddr,
    telnet_base: u16,
    ssh_base: u16,
    taken: &BTreeSet<u8>,
) -> Option<(u8, VmPorts)> {
    (1..=MAX_VM_NUMBER)
        .filter(|n| !taken.contains(n))
        .filter_map(|n| Some((n, VmPorts::of(n, telnet_base, ssh_base)?)))
        .find(|(_, ports)| {
            ports
                .all()
                .iter()
                .all(|p| crate::state::port_is_free(listen, *p))
        })
}

/// The VM numbers (VMK_VNC, the default where unset) of the VM directories in `parent`.
pub fn vm_numbers_in(parent: &Path) -> BTreeSet<u8> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return BTreeSet::new();
    };
    let default = config::keys::key("VMK_VNC")
        .and_then(|k| config::values::parse_vnc(k.default).ok())
        .unwrap_or(1);
    entries
        .flatten()
        .filter_map(|e| {
            // through the config reader: a FIFO or device planted there never blocks us
            config::files::read_config(&e.path().join(config::VM_FILE_NAME), config::VM_FILE_NAME)
                .ok()
                .flatten()
        })
        .filter_map(|bytes| RawConfig::parse(&bytes, config::VM_FILE_NAME).ok())
        .map(|raw| {
            raw.last("VMK_VNC")
                .and_then(|(_, a)| a.literal())
                .and_then(|v| config::values::parse_vnc(&v).ok())
                .unwrap_or(default)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snap_image_is_beside_disk0() {
        assert_eq!(
            snap_image(Path::new("/vms/a/disk0.qcow2")),
            Path::new("/vms/a/snap-disk0.qcow2")
        );
        assert_eq!(snap_image(Path::new("d.raw")), Path::new("snap-d.raw"));
    }

    #[test]
    fn companions_are_beside_their_image() {
        assert_eq!(
            companions(Path::new("/vms/a/disk0.qcow2")),
            [
                PathBuf::from("/vms/a/disk0.qcow2.efivars"),
                PathBuf::from("/vms/a/disk0.qcow2.tpm")
            ]
        );
        let snap = snap_image(Path::new("/vms/a/disk0.qcow2"));
        assert_eq!(
            firmware_vars(&snap),
            Path::new("/vms/a/snap-disk0.qcow2.efivars")
        );
    }

    #[test]
    fn ports_never_wrap() {
        assert_eq!(port(65500, 35), Some(65535));
        assert_eq!(port(65500, 36), None);
        assert_eq!(VmPorts::of(99, 65500, 10000), None);
        let p = VmPorts::of(3, 9900, 10020).unwrap();
        assert_eq!(p.all(), [5903, 9903, 10023]);
        assert_eq!(vnc_display(5903), Some(3));
        assert_eq!(vnc_display(80), None);
    }

    #[test]
    fn numbers_of_sibling_directories() {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("a", "VMK_VNC=4\n"),
            ("b", "VMK_NAME=b\n"),
            ("c", "VMK_VNC=x\n"),
        ] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join(config::VM_FILE_NAME), text).unwrap();
        }
        // a FIFO as a neighbour's vm-config is skipped, never waited on
        std::fs::create_dir(d.path().join("fifo")).unwrap();
        let fifo = d.path().join("fifo").join(config::VM_FILE_NAME);
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert_eq!(vm_numbers_in(d.path()), BTreeSet::from([1, 4]));
    }
}
