//! The fixed machine and the table of modes that the qemu argv snapshots
//! (vmk-common/tests/qemu_argv.rs) and the libvirt domain XML snapshots (vmk-libvirt) are
//! both taken of, so that every way vmk runs a VM is checked in both forms and a mode added
//! for one is seen by the other. Test support only: paths are fixed (`/vm/…`) and the
//! machine is a fake [`Host`], so the outputs are stable.
//!
//! To add a mode: add a row to [`MODES`]; both snapshot suites pick it up (review the new
//! snapshots with `INSTA_UPDATE=always cargo test -p vmk-common --test qemu_argv` and
//! `… -p vmk-libvirt --test xml`).

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Accel, CacheMode, DiskBus, DiskFormat, Firmware, NetType, VmConfig};

use super::{Host, Mode, QemuCommand, RuntimePaths};

/// A machine with every qemu-system-*, the given kvm answer, qcow2 images except `*.raw`,
/// Debian's firmware descriptors and an ssh key for VMs in /vm.
#[derive(Debug, Clone, Copy)]
pub struct FakeHost {
    /// Whether /dev/kvm is usable.
    pub kvm: bool,
}

impl Host for FakeHost {
    fn kvm_usable(&self) -> bool {
        self.kvm
    }
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        // every architecture's qemu, but no qemu-kvm
        name.starts_with("qemu-system-")
            .then(|| PathBuf::from(format!("/usr/bin/{name}")))
    }
    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat> {
        Ok(if path.extension().is_some_and(|e| e == "raw") {
            DiskFormat::Raw
        } else {
            DiskFormat::Qcow2
        })
    }
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        if path == Path::new("/vm/vm-key.pub") {
            Ok("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKey root@vm,1\n".into())
        } else {
            Err(io::ErrorKind::NotFound.into())
        }
    }
    fn firmware_descriptors(&self) -> Vec<(PathBuf, String)> {
        debian_firmware_descriptors()
    }
}

/// qemu firmware descriptors as Debian 12's ovmf and qemu-efi-aarch64 ship them (trimmed).
pub fn debian_firmware_descriptors() -> Vec<(PathBuf, String)> {
    let d = |code: &str, vars: &str, arch: &str, machine: &str, features: &[&str]| {
        serde_json::json!({
            "description": "test",
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": {"filename": code, "format": "raw"},
                "nvram-template": {"filename": vars, "format": "raw"}
            },
            "targets": [{"architecture": arch, "machines": [machine]}],
            "features": features,
            "tags": []
        })
        .to_string()
    };
    let dir = "/usr/share/qemu/firmware";
    vec![
        (
            format!("{dir}/40-edk2-x86_64-secure-enrolled.json").into(),
            d(
                "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
                "x86_64",
                "pc-q35-*",
                &["acpi-s3", "enrolled-keys", "requires-smm", "secure-boot"],
            ),
        ),
        (
            format!("{dir}/50-edk2-x86_64-secure.json").into(),
            d(
                "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
                "x86_64",
                "pc-q35-*",
                &["acpi-s3", "requires-smm", "secure-boot"],
            ),
        ),
        (
            format!("{dir}/60-edk2-aarch64.json").into(),
            d(
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
                "aarch64",
                "virt-*",
                &["verbose-static"],
            ),
        ),
        (
            format!("{dir}/60-edk2-x86_64.json").into(),
            d(
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
                "x86_64",
                "pc-q35-*",
                &["acpi-s3", "amd-sev"],
            ),
        ),
    ]
}

/// The answers of a [`FakeHost`] without kvm, for a fixture host that differs in others.
macro_rules! as_fake_host_without_kvm {
    () => {
        fn kvm_usable(&self) -> bool {
            false
        }
        fn find_program(&self, name: &str) -> Option<PathBuf> {
            FakeHost { kvm: false }.find_program(name)
        }
        fn disk_format(&self, path: &Path) -> io::Result<DiskFormat> {
            FakeHost { kvm: false }.disk_format(path)
        }
        fn read_to_string(&self, path: &Path) -> io::Result<String> {
            FakeHost { kvm: false }.read_to_string(path)
        }
    };
}

/// [`FakeHost`] where vmk runs as root and /vm belongs to uid 1000, gid 100.
#[derive(Debug, Clone, Copy)]
pub struct RootHost;

impl Host for RootHost {
    as_fake_host_without_kvm!();
    fn is_root(&self) -> bool {
        true
    }
    fn owner(&self, path: &Path) -> Option<(u32, u32)> {
        (path == Path::new("/vm")).then_some((1000, 100))
    }
}

/// [`FakeHost`] where vmk runs as root (owning /vm) and qemu's virtiofsd is installed.
#[derive(Debug, Clone, Copy)]
pub struct VirtiofsHost;

/// Where [`VirtiofsHost`] has its virtiofsd (Debian 12's).
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

impl Host for VirtiofsHost {
    as_fake_host_without_kvm!();
    fn is_root(&self) -> bool {
        true
    }
    fn owner(&self, _: &Path) -> Option<(u32, u32)> {
        Some((0, 0))
    }
    fn virtiofsd(&self) -> Result<PathBuf, String> {
        Ok(VIRTIOFSD.into())
    }
}

/// The base config of every mode: /vm/sles15.qcow2, TCG, VM number 3, 4 GiB.
pub fn config() -> VmConfig {
    let mut c = VmConfig::defaults(Path::new("/vm"));
    c.name = Some("sles15".into());
    c.disk0_path = Some("/vm/sles15.qcow2".into());
    c.accel = Accel::Tcg;
    c.vnc = 3;
    c.mem = "4G".parse().unwrap();
    c.ssh_credential = false;
    c
}

/// The runtime files of the instance whose image is `/vm/<prefix>sles15.qcow2`.
pub fn paths(prefix: &str) -> RuntimePaths {
    RuntimePaths {
        image: format!("/vm/{prefix}sles15.qcow2").into(),
        pidfile: format!("/vm/{prefix}sles15.qcow2.pid").into(),
        qmp_socket: format!("/run/vmk/{prefix}sles15.qmp").into(),
        console_log: format!("/vm/{prefix}sles15.qcow2.console.log").into(),
    }
}

/// The command line for `cfg` in `mode` on a [`FakeHost`] without kvm.
pub fn build(cfg: &VmConfig, mode: Mode) -> QemuCommand {
    QemuCommand::from_config_with(cfg, mode, &paths(""), &FakeHost { kvm: false }).unwrap()
}

/// A named way of running a VM: the snapshot name and how its command line is made.
pub type ModeRow = (&'static str, fn() -> QemuCommand);

/// Every mode, by snapshot name.
pub const MODES: &[ModeRow] = &[
    ("run_user_net", run_user_net),
    ("runin", runin),
    ("snap_run", snap_run),
    ("bridge_net_kvm", bridge_net_kvm),
    ("no_net", no_net),
    ("direct_kernel_boot", direct_kernel_boot),
    ("extra_disks_scsi", || extra_disks(DiskBus::Scsi)),
    ("extra_disks_nvme", || extra_disks(DiskBus::Nvme)),
    ("extra_disks_ide", || extra_disks(DiskBus::Ide)),
    ("extra_disks_virtio", || extra_disks(DiskBus::Virtio)),
    ("extra_disks_lsi", || extra_disks(DiskBus::Lsi)),
    ("original_hardware", original_hardware),
    ("install_phase_1", install_phase_1),
    ("install_phase_2", install_phase_2),
    ("comma_file_name", comma_file_name),
    ("extra_args_last", extra_args_last),
    ("run_telnet_console", run_telnet_console),
    (
        "root_runs_a_users_vm_vnc_socket",
        root_runs_a_users_vm_vnc_socket,
    ),
    ("uefi", uefi),
    ("uefi_snap_run", uefi_snap_run),
    ("uefi_secure", uefi_secure),
    ("tpm", tpm),
    ("uefi_tpm", uefi_tpm),
    ("shares", shares),
    ("virtiofs_shares", virtiofs_shares),
    ("port_forwards", port_forwards),
    ("arch_aarch64", || other_arch("aarch64", DiskBus::Scsi)),
    ("arch_ppc64le", || other_arch("ppc64le", DiskBus::Scsi)),
    ("arch_s390x", || other_arch("s390x", DiskBus::Virtio)),
    ("arch_aarch64_kvm_tpm", arch_aarch64_kvm_tpm),
];

/// The command line of the mode called `name` in [`MODES`].
pub fn mode(name: &str) -> QemuCommand {
    let (_, make) = MODES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no mode {name} in MODES"));
    make()
}

/// `vmk run` with user networking and the ssh key as a credential.
fn run_user_net() -> QemuCommand {
    let mut cfg = config();
    cfg.ssh_credential = true;
    build(&cfg, Mode::Run)
}

/// `vmk runin`.
fn runin() -> QemuCommand {
    build(&config(), Mode::Foreground)
}

/// `vmk snap run`: the throwaway copy as disk0.
fn snap_run() -> QemuCommand {
    QemuCommand::from_config_with(
        &config(),
        Mode::Run,
        &paths("snap-"),
        &FakeHost { kvm: false },
    )
    .unwrap()
    .disk0_override("snap-sles15.qcow2")
}

/// VMK_ACCEL=auto on a machine with kvm, bridge networking with a MAC format of its own.
fn bridge_net_kvm() -> QemuCommand {
    let mut cfg = config();
    cfg.accel = Accel::Auto;
    cfg.net_type = NetType::Bridge;
    cfg.bridge = "br1".into();
    cfg.mac_format = "52:54:00:12:34:%02x".parse().unwrap();
    QemuCommand::from_config_with(&cfg, Mode::Run, &paths(""), &FakeHost { kvm: true }).unwrap()
}

/// No network card, a cpu model with a flag.
fn no_net() -> QemuCommand {
    let mut cfg = config();
    cfg.net_type = NetType::None;
    cfg.cpu_model = Some("qemu64,+ssse3".into());
    build(&cfg, Mode::Run)
}

/// VMK_KERNEL, VMK_INITRD, VMK_APPEND.
fn direct_kernel_boot() -> QemuCommand {
    let mut cfg = config();
    cfg.kernel = Some("/vm/vmlinuz".into());
    cfg.initrd = Some("/vm/initrd.img".into());
    cfg.append = Some("console=ttyS0 root=/dev/vda rw".into());
    build(&cfg, Mode::Foreground)
}

/// The original vmk's hardware, as README's "Coming from the original vmk" gives it:
/// VMK_MACHINE=pc, VMK_DISK_BUS=lsi, VMK_NIC=e1000, VMK_RTC=localtime.
fn original_hardware() -> QemuCommand {
    let mut cfg = config();
    cfg.machine = Some("pc".into());
    cfg.disk_bus = DiskBus::Lsi;
    cfg.nic = crate::config::NicModel::E1000;
    cfg.rtc = crate::config::RtcBase::Localtime;
    build(&cfg, Mode::Run)
}

/// Two extra disks (one raw, elsewhere) on `bus`, with their own cache mode.
fn extra_disks(bus: DiskBus) -> QemuCommand {
    let mut cfg = config();
    cfg.disk_bus = bus;
    cfg.disk_cache = CacheMode::Writeback;
    cfg.disks[0] = Some("/data/disk1.raw".into());
    cfg.disks[1] = Some("/vm/disk2".into());
    build(&cfg, Mode::Run)
}

/// The first install phase: installer kernel, the ISO and the autoyast CD and floppy.
fn install_phase_1() -> QemuCommand {
    let mut cfg = config();
    cfg.disk0_format = Some(DiskFormat::Raw);
    build(&cfg, Mode::Foreground)
        .disk0_cache(CacheMode::Unsafe)
        .kernel_boot(
            "/vm/install/linux",
            Some(Path::new("/vm/install/initrd")),
            Some("autoyast=device://sr1/autoinst.xml console=ttyS0"),
        )
        .add_cdrom("/srv/iso/SLE-15-SP6-Full-x86_64.iso")
        .add_cdrom("/vm/install/autoinst.iso")
        .floppy("/vm/install/autoinst.img")
        .no_reboot()
}

/// The second install phase: the installed disk with the ISO.
fn install_phase_2() -> QemuCommand {
    let mut cfg = config();
    cfg.disk0_format = Some(DiskFormat::Raw);
    build(&cfg, Mode::Foreground)
        .disk0_cache(CacheMode::Unsafe)
        .add_cdrom("/srv/iso/SLE-15-SP6-Full-x86_64.iso")
        .no_reboot()
}

/// File names with commas (and what would be options after them).
fn comma_file_name() -> QemuCommand {
    let mut cfg = config();
    cfg.disk0_path = Some("/vm/a,b.qcow2".into());
    cfg.name = Some("x".into());
    QemuCommand::from_config_with(
        &cfg,
        Mode::Run,
        &RuntimePaths {
            image: "/vm/a,b.qcow2".into(),
            pidfile: "/vm/a,b.qcow2.pid".into(),
            qmp_socket: "/run/a,b.qmp".into(),
            console_log: "/vm/a,b.log,server=off".into(),
        },
        &FakeHost { kvm: false },
    )
    .unwrap()
    .add_cdrom("/iso/x,readonly=off.iso")
}

/// VMK_EXTRA_ARGS, then arguments a tool appends.
fn extra_args_last() -> QemuCommand {
    let mut cfg = config();
    cfg.extra_args = vec!["-device".into(), "virtio-rng-pci".into(), "-s".into()];
    build(&cfg, Mode::Run).no_reboot().extra_args(["-S"])
}

/// VMK_SHARE: a read-write share, a read-only one whose folder has a comma and a space
/// (one path for qemu, no injected option).
pub fn shares() -> QemuCommand {
    let mut cfg = config();
    cfg.shares = crate::config::values::parse_shares(
        "/home/u/src/linux '/data/a,readonly=off b:data:ro'",
        &|d| d.into(),
    )
    .unwrap();
    build(&cfg, Mode::Run)
}

/// VMK_SHARE with VMK_SHARE_FS=auto where virtiofs can run: the read-write folders over
/// virtiofs (shared guest memory, a virtiofsd socket each, their tags in an SMBIOS
/// credential), the read-only one, whose folder has a comma and a space, over virtio-9p.
fn virtiofs_shares() -> QemuCommand {
    let mut cfg = config();
    cfg.shares = crate::config::values::parse_shares(
        "/home/u/src/linux '/data/a,readonly=off b:data:ro' '/data/c,d e:odd'",
        &|d| d.into(),
    )
    .unwrap();
    QemuCommand::from_config_with(&cfg, Mode::Run, &paths(""), &VirtiofsHost).unwrap()
}

/// VMK_PORTS: a TCP and a UDP forward beside ssh's.
fn port_forwards() -> QemuCommand {
    let mut cfg = config();
    cfg.ports = crate::config::values::parse_ports("8080:80 5353:53/udp").unwrap();
    build(&cfg, Mode::Run)
}

/// VMK_CONSOLE=telnet.
fn run_telnet_console() -> QemuCommand {
    let mut cfg = config();
    cfg.console_telnet = true;
    build(&cfg, Mode::Run)
}

/// Root running a user's VM with VMK_VNC_SOCKET=yes.
fn root_runs_a_users_vm_vnc_socket() -> QemuCommand {
    let mut cfg = config();
    cfg.vnc_socket = true;
    QemuCommand::from_config_with(&cfg, Mode::Foreground, &paths(""), &RootHost).unwrap()
}

/// VMK_FIRMWARE=uefi.
fn uefi() -> QemuCommand {
    let mut cfg = config();
    cfg.firmware = Firmware::Uefi;
    build(&cfg, Mode::Run)
}

/// VMK_FIRMWARE=uefi, `vmk snap run`: the snapshot's own variable store.
fn uefi_snap_run() -> QemuCommand {
    let mut cfg = config();
    cfg.firmware = Firmware::Uefi;
    QemuCommand::from_config_with(&cfg, Mode::Run, &paths("snap-"), &FakeHost { kvm: false })
        .unwrap()
        .disk0_override("snap-sles15.qcow2")
}

/// VMK_FIRMWARE=uefi-secure with direct kernel boot.
fn uefi_secure() -> QemuCommand {
    let mut cfg = config();
    cfg.firmware = Firmware::UefiSecure;
    cfg.kernel = Some("/vm/vmlinuz".into());
    build(&cfg, Mode::Foreground)
}

/// VMK_FIRMWARE=uefi and VMK_TPM=yes: swtpm's socket beside the QMP socket.
fn uefi_tpm() -> QemuCommand {
    let mut cfg = config();
    cfg.firmware = Firmware::Uefi;
    cfg.tpm = true;
    build(&cfg, Mode::Run)
}

/// VMK_TPM=yes: a TPM 2.0 of swtpm.
fn tpm() -> QemuCommand {
    let mut cfg = config();
    cfg.tpm = true;
    build(&cfg, Mode::Run)
}

/// VMK_ARCH=`arch` (its qemu, machine, TCG cpu, console, firmware, devices) with disks on
/// `bus`, an install medium attached.
fn other_arch(arch: &str, bus: DiskBus) -> QemuCommand {
    let mut cfg = config();
    cfg.arch = Some(arch.into());
    cfg.disk_bus = bus;
    build(&cfg, Mode::Run).add_cdrom("/srv/iso/install.iso")
}

/// VMK_ARCH=arm64 (Debian's name) under KVM with a TPM.
fn arch_aarch64_kvm_tpm() -> QemuCommand {
    let mut cfg = config();
    cfg.arch = Some("arm64".into());
    cfg.accel = Accel::Kvm;
    cfg.tpm = true;
    build(&cfg, Mode::Run)
}
