//! What differs between the guest architectures vmk runs (VMK_ARCH): one table, read by the
//! qemu command builder (binary, machine, cpu model, devices, firmware), `checksetup` (the
//! packages each needs), the installers and `vmk bootstrap` (console, Debian's name).
//!
//! Decisions:
//! - VMK_ARCH takes qemu's names (`x86_64`, `aarch64`, `ppc64le`, `s390x`, `riscv64`) and
//!   Debian's (`amd64`, `arm64`, `ppc64el`) for the same thing; an architecture outside the
//!   table still runs `qemu-system-<arch>` on its `virt` machine, as before.
//! - Under TCG the cpu model is qemu's default except on aarch64, whose `virt` machine
//!   defaults to a 32-bit Cortex-A15: `max` there, with qemu's own pointer authentication
//!   (`pauth-impdef=on`: the architected QARMA cipher, which Debian's kernel and programs
//!   use on every call, is many times slower to emulate). Under KVM it is `host` everywhere.
//! - The serial console is qemu's `-serial` on every machine: the 16550 on x86 (ttyS0), the
//!   PL011 on arm (ttyAMA0), the hypervisor console on pseries (hvc0) and the SCLP console
//!   on s390x (ttysclp0: `-serial` is that device there, and what its installers log to).
//! - s390x has no PCI devices of use: virtio disks, NIC and serial bus are `-ccw`, it has
//!   no display device (VNC shows nothing) and no IDE: CD-ROMs go on virtio-scsi there, as
//!   on arm and ppc64, where there is no IDE either.
//! - Firmware: x86 boots SeaBIOS unless VMK_FIRMWARE says uefi; arm and riscv boot UEFI
//!   from flash always (they have no BIOS); pseries (SLOF) and s390x (s390-ccw) have their
//!   firmware built into qemu and no UEFI.

/// How the firmware of an architecture is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// SeaBIOS by default, UEFI from flash when asked (x86).
    BiosOrUefi,
    /// UEFI from flash only (arm, riscv).
    UefiOnly,
    /// Built into qemu (SLOF, s390-ccw), no UEFI.
    Builtin,
}

/// One guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// qemu's name, the canonical VMK_ARCH value.
    pub name: &'static str,
    /// Debian's name (debootstrap `--arch`).
    pub debian: &'static str,
    /// The qemu binary.
    pub qemu: &'static str,
    /// The Debian package that has it.
    pub qemu_package: &'static str,
    /// The default machine type.
    pub machine: &'static str,
    /// `-cpu` under TCG (`None`: qemu's default).
    pub tcg_cpu: Option<&'static str>,
    /// The guest's serial console device (for `console=`).
    pub console: &'static str,
    /// `pci` or `ccw`: the suffix of virtio device names.
    pub virtio: &'static str,
    /// The display device (`None`: none).
    pub display: Option<&'static str>,
    /// Whether CD-ROMs and floppies can be IDE/ISA devices (x86), else CD-ROMs are SCSI.
    pub ide: bool,
    /// How its firmware is chosen.
    pub firmware: FirmwareKind,
}

/// Every architecture vmk knows, x86_64 first.
pub const ARCHES: &[Arch] = &[
    Arch {
        name: "x86_64",
        debian: "amd64",
        qemu: "qemu-system-x86_64",
        qemu_package: "qemu-system-x86",
        machine: "q35",
        tcg_cpu: None,
        console: "ttyS0",
        virtio: "pci",
        display: Some("VGA"),
        ide: true,
        firmware: FirmwareKind::BiosOrUefi,
    },
    Arch {
        name: "aarch64",
        debian: "arm64",
        qemu: "qemu-system-aarch64",
        qemu_package: "qemu-system-arm",
        machine: "virt",
        tcg_cpu: Some("max,pauth-impdef=on"),
        console: "ttyAMA0",
        virtio: "pci",
        display: Some("virtio-gpu-pci"),
        ide: false,
        firmware: FirmwareKind::UefiOnly,
    },
    Arch {
        name: "ppc64le",
        debian: "ppc64el",
        qemu: "qemu-system-ppc64",
        qemu_package: "qemu-system-ppc",
        machine: "pseries",
        tcg_cpu: None,
        console: "hvc0",
        virtio: "pci",
        display: Some("VGA"),
        ide: false,
        firmware: FirmwareKind::Builtin,
    },
    Arch {
        name: "s390x",
        debian: "s390x",
        qemu: "qemu-system-s390x",
        qemu_package: "qemu-system-misc",
        machine: "s390-ccw-virtio",
        tcg_cpu: None,
        console: "ttysclp0",
        virtio: "ccw",
        display: None,
        ide: false,
        firmware: FirmwareKind::Builtin,
    },
    Arch {
        name: "riscv64",
        debian: "riscv64",
        qemu: "qemu-system-riscv64",
        qemu_package: "qemu-system-misc",
        machine: "virt",
        tcg_cpu: None,
        console: "ttyS0",
        virtio: "pci",
        display: Some("virtio-gpu-pci"),
        ide: false,
        firmware: FirmwareKind::UefiOnly,
    },
];

/// The devices of an architecture vmk does not know (run as before the table: PCI virtio,
/// VGA, IDE, no firmware of vmk's choosing).
const OTHER: Arch = Arch {
    name: "other",
    debian: "",
    qemu: "",
    qemu_package: "qemu-system",
    machine: "virt",
    tcg_cpu: None,
    console: "ttyS0",
    virtio: "pci",
    display: Some("VGA"),
    ide: true,
    firmware: FirmwareKind::Builtin,
};

/// The table's row of `arch`, or the generic one for an architecture vmk does not know.
pub fn spec(arch: &str) -> &'static Arch {
    lookup(arch).unwrap_or(&OTHER)
}

/// The architecture VMK_ARCH names (qemu's or Debian's name), if vmk knows it.
pub fn lookup(name: &str) -> Option<&'static Arch> {
    let name = match name {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "ppc64el" => "ppc64le",
        other => other,
    };
    ARCHES.iter().find(|a| a.name == name)
}

/// The canonical name of VMK_ARCH `name` (qemu's), or `name` itself when vmk does not know it.
pub fn canonical(name: &str) -> &str {
    lookup(name).map(|a| a.name).unwrap_or(name)
}

/// The default machine type of `arch` (`virt` for one vmk does not know).
pub fn default_machine(arch: &str) -> &'static str {
    lookup(arch).map(|a| a.machine).unwrap_or("virt")
}

/// The qemu binary of `arch`: from the table, else `qemu-system-<arch>`.
pub fn qemu_binary(arch: &str) -> String {
    lookup(arch)
        .map(|a| a.qemu.to_string())
        .unwrap_or_else(|| format!("qemu-system-{arch}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        assert_eq!(canonical("arm64"), "aarch64");
        assert_eq!(canonical("ppc64el"), "ppc64le");
        assert_eq!(canonical("mips64"), "mips64");
        assert_eq!(qemu_binary("ppc64le"), "qemu-system-ppc64");
        assert_eq!(qemu_binary("loongarch64"), "qemu-system-loongarch64");
        assert_eq!(default_machine("s390x"), "s390-ccw-virtio");
        assert_eq!(default_machine("amd64"), "q35");
        assert_eq!(lookup("aarch64").unwrap().console, "ttyAMA0");
        let mut names: Vec<_> = ARCHES.iter().map(|a| a.name).collect();
        names.dedup();
        assert_eq!(names.len(), ARCHES.len());
    }
}
