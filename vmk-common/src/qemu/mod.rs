//! The one typed builder of qemu command lines, used by every tool (run, runin, snap, install).
//!
//! A [`QemuCommand`] holds qemu's options as values (one field per option, after the
//! kata-containers builder) and emits them in one fixed order, so that the same config always
//! gives the same argv, and tests can snapshot it. Decisions:
//! - argv elements are `OsString`s; inside qemu option lists (`file=…,id=…`) commas in values
//!   are doubled, so a disk named `a,b.qcow2` stays one file and cannot inject options.
//!   Options that take a plain value (`-kernel`, `-pidfile`, `-append`) are passed unchanged.
//! - `-nodefaults`: no default NIC, cdrom, serial or monitor; every device is ours, so device
//!   order (and `sr0`/`sr1` for the autoyast CD) does not depend on qemu's defaults.
//! - disks are `-drive if=none` + `-device` (so every cache mode works); the drive ids are
//!   `disk0`…`disk6`, `cd0`, `cd1`, `fd0`. IDE devices get explicit AHCI ports in order
//!   (disks first, then cdroms): q35's ports take one device each.
//! - both modes show a VNC display on VMK_LISTEN:VMK_VNC (or, with VMK_VNC_SOCKET=yes, on a
//!   unix socket beside the QMP socket) and have a QMP socket and pidfile; [`Mode::Run`]
//!   daemonizes with the serial console on a unix socket beside the QMP socket (a telnet
//!   port with VMK_CONSOLE=telnet), [`Mode::Foreground`] puts the serial console and qemu's
//!   monitor on the terminal (Ctrl-A x quits, Ctrl-A c switches to the monitor; Ctrl-C goes
//!   to the guest). The console is logged in both. Unix sockets live in the VM's private
//!   space and need write permission to connect: other local users cannot, unlike a TCP
//!   port on loopback.
//! - qemu runs under its seccomp sandbox ([`Sandbox`]), as strict as the mode allows, and,
//!   when root runs a VM whose directory belongs to another user, as that user (`-runas`).
//! - relative paths given to the builder are made absolute against the VM directory.
//! - the machine probes (is /dev/kvm usable, which programs are on PATH, what format is an
//!   image, the ssh public key) go through [`Host`], so tests give fixed answers.

pub mod arch;
mod argv;
pub mod firmware;
#[doc(hidden)]
pub mod fixtures;
mod host;
pub mod kvm_probe;
mod opts;
pub mod shares;

use std::ffi::OsString;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{
    Accel, CacheMode, DiskBus, DiskFormat, Firmware, MemSize, NetType, NicModel, PortForward,
    RtcBase, VmConfig,
};

use arch::default_machine;
pub use firmware::Uefi;
pub use host::{
    choose_accel, resolve_accel, select_qemu, Host, RealHost, DEFAULT_ARCH, DEFAULT_MACHINE,
    KVM_CPU_MODEL,
};
pub use opts::escape_opt_value;
pub use shares::{ShareTransport, SharedFolder};

/// The serial console's unix socket of the instance with `paths` (`vmk run`, unless
/// VMK_CONSOLE=telnet): beside the QMP socket, with an extension as long as `qmp`, so it
/// fits the same length limit (and falls back to the same private runtime directory).
pub fn console_socket(paths: &RuntimePaths) -> PathBuf {
    paths.qmp_socket.with_extension("con")
}

/// The VNC display's unix socket of the instance with `paths` (VMK_VNC_SOCKET=yes): beside
/// the QMP socket, like [`console_socket`].
pub fn vnc_socket(paths: &RuntimePaths) -> PathBuf {
    paths.qmp_socket.with_extension("vnc")
}

/// The credential through which systemd guests take root's ssh key.
pub const SSH_CREDENTIAL: &str = "ssh.authorized_keys.root";

/// How the VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `vmk run`: in the background (`-daemonize`), serial console on a unix socket (or a
    /// telnet port).
    Run,
    /// `vmk runin` and installs: in the foreground, serial console and monitor on stdio.
    Foreground,
}

/// Where the runtime files of this VM go: computed by [`crate::state`], not here.
pub use crate::state::RuntimePaths;
/// Why no command line could be built (besides a [`crate::config::ConfigError`], which is returned as is so
/// that tools exit with status 2 on it).
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// No qemu binary was found.
    #[error("no qemu found (tried {tried} on PATH): install qemu or set VMK_QEMU")]
    NoQemu {
        /// The names tried, comma-separated.
        tried: String,
    },
    /// An image's format could not be detected.
    #[error("cannot read disk image {path}: {source} (set {key} to an existing image, or create it with {make})")]
    Disk {
        /// The key that names the image (`VMK_DISK0`…`VMK_DISK6`).
        key: String,
        /// What creates it: `` `vmk mkdisk0` `` or `` `vmk mkdisks` ``.
        make: &'static str,
        /// The image.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// VMK_FIRMWARE asks for UEFI and no descriptor offers it.
    #[error(transparent)]
    NoFirmware(#[from] firmware::NoFirmware),
}

impl QemuError {
    /// A config mistake rather than a failure: a key names an image that is missing or is
    /// no disk image at all (a FIFO, a directory…). Tools exit 2 on it, as on a bad value.
    pub fn is_config_mistake(&self) -> bool {
        match self {
            QemuError::Disk { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
            ),
            QemuError::NoQemu { .. } | QemuError::NoFirmware(_) => false,
        }
    }
}

/// The guest's TPM: the swtpm that emulates it and the device model qemu gives the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmDevice {
    /// The swtpm instance (state, socket, pidfile, log).
    pub swtpm: crate::swtpm::Tpm,
    /// `tpm-crb` (x86), `tpm-tis-device` (arm), `tpm-spapr` (ppc64).
    pub model: &'static str,
}

/// The TPM device model of `arch`, if qemu has one there.
fn tpm_model(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" | "i386" => Some("tpm-crb"),
        "aarch64" => Some("tpm-tis-device"),
        "ppc64" | "ppc64le" => Some("tpm-spapr"),
        _ => None,
    }
}

/// One disk: `-drive if=none,…` and its `-device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image file (absolute).
    pub file: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Cache mode.
    pub cache: CacheMode,
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// `-kernel`.
    pub kernel: PathBuf,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// `-append`.
    pub append: Option<String>,
}

/// The address qemu's user networking (slirp) gives the guest: the first of its DHCP range
/// in its default 10.0.2.0/24 (host 10.0.2.2, DNS 10.0.2.3). Reachable only from inside
/// the guest's network; the host reaches the guest through the forwarded ports.
pub const USER_NET_GUEST_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 15);

/// The network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// User networking with the guest's ssh forwarded from `listen:ssh_port`.
    User {
        /// Host address of the forward.
        listen: IpAddr,
        /// Host port forwarded to guest port 22.
        ssh_port: u16,
        /// VMK_PORTS: more host ports on `listen` forwarded to the guest.
        forwards: Vec<PortForward>,
        /// The card's MAC.
        mac: String,
    },
    /// A tap on a host bridge, made by qemu-bridge-helper.
    Bridge {
        /// The bridge.
        bridge: String,
        /// The card's MAC.
        mac: String,
    },
    /// No network card.
    None,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// A unix socket server: only users who may write the socket connect (the VM's user).
    Socket {
        /// The socket.
        path: PathBuf,
        /// Console log.
        log: PathBuf,
    },
    /// A telnet-compatible TCP server (VMK_CONSOLE=telnet): open to every local user.
    Telnet {
        /// Address.
        listen: IpAddr,
        /// Port.
        port: u16,
        /// Console log.
        log: PathBuf,
    },
    /// The terminal, multiplexed with qemu's monitor.
    Stdio {
        /// Console log.
        log: PathBuf,
    },
}

/// qemu's seccomp filter (`-sandbox on,…`): obsolete system calls and resource control
/// (scheduler, priorities, cpu affinity) are always denied; spawning processes and changing
/// credentials only when the command line needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sandbox {
    /// Allow fork and exec: `-daemonize` forks after the filter is loaded, and bridge
    /// networking runs qemu-bridge-helper.
    pub spawn: bool,
    /// Allow set*uid, set*gid and setsid: `-daemonize` calls setsid and `-runas` drops to
    /// the user after the filter is loaded.
    pub elevate_privileges: bool,
}

impl Sandbox {
    /// The strictest filter for a command line that daemonizes or not, runs a bridge
    /// helper or not, and drops to another user or not.
    pub fn for_command(daemonize: bool, bridge: bool, runas: bool) -> Sandbox {
        Sandbox {
            spawn: daemonize || bridge,
            elevate_privileges: daemonize || runas,
        }
    }
}

/// A qemu command line under construction. Fields are public so that a tool can adjust any
/// of them; the methods cover the usual adjustments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// The qemu binary.
    pub program: PathBuf,
    /// The VM directory (relative paths are made absolute against it).
    pub dir: PathBuf,
    /// `-name guest=…`.
    pub name: String,
    /// `-machine TYPE`.
    pub machine: String,
    /// `accel=` of `-machine`: kvm or tcg (never auto, which is resolved).
    pub accel: Accel,
    /// `-cpu` (verbatim: a model and its flags).
    pub cpu_model: Option<String>,
    /// The guest architecture (VMK_ARCH, canonical: [`arch::canonical`]): which devices.
    pub arch: String,
    /// UEFI firmware (pflash code and the VM's variable store); `None`: qemu's default
    /// (SeaBIOS on x86).
    pub firmware: Option<Uefi>,
    /// A TPM 2.0 emulated by swtpm (VMK_TPM=yes).
    pub tpm: Option<TpmDevice>,
    /// `-m`.
    pub mem: MemSize,
    /// `-smp`.
    pub cpus: u32,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-sandbox on,…`; `None` for no filter.
    pub sandbox: Option<Sandbox>,
    /// `-runas UID:GID`: qemu drops to this user and group once it has opened its files.
    pub runas: Option<(u32, u32)>,
    /// QMP socket.
    pub qmp_socket: Option<PathBuf>,
    /// The guest agent's socket (virtio-serial port `org.qemu.guest_agent.0`), used to
    /// freeze guest filesystems around a snapshot.
    pub qga_socket: Option<PathBuf>,
    /// `-vnc LISTEN:N`; `None` for no display on TCP.
    pub vnc: Option<(IpAddr, u8)>,
    /// `-vnc unix:PATH`, instead of [`QemuCommand::vnc`] (VMK_VNC_SOCKET=yes).
    pub vnc_socket: Option<PathBuf>,
    /// The serial console.
    pub serial: Serial,
    /// Bus of all disks.
    pub disk_bus: DiskBus,
    /// disk0 first, then the extra disks.
    pub disks: Vec<Disk>,
    /// CD-ROM images (read-only), in order: sr0, sr1…
    pub cdroms: Vec<PathBuf>,
    /// A floppy image.
    pub floppy: Option<PathBuf>,
    /// The network card.
    pub network: Network,
    /// The network card's model.
    pub nic: NicModel,
    /// `-rtc base=`.
    pub rtc: RtcBase,
    /// Direct kernel boot.
    pub kernel: Option<KernelBoot>,
    /// Host folders shared with the guest, in order, each over virtio-9p (fsdev ids share0,
    /// share1…) or virtiofs (chardev ids vfs0, vfs1…; guest memory then shared with the
    /// virtiofsds: `memory-backend-memfd,share=on`).
    pub shares: Vec<SharedFolder>,
    /// systemd credentials passed as SMBIOS type 11 strings: (name, value).
    pub credentials: Vec<(String, String)>,
    /// `-no-reboot`.
    pub no_reboot: bool,
    /// VMK_EXTRA_ARGS and anything else, appended last.
    pub extra_args: Vec<OsString>,
}

impl QemuCommand {
    /// The command line for `cfg` on this machine.
    ///
    /// Errors: a [`crate::config::ConfigError`] (VMK_DISK0 unset) or a [`QemuError`], inside the
    /// `anyhow::Error` so that `cli::main` maps them to exit status 2 and 1.
    pub fn from_config(cfg: &VmConfig, mode: Mode, paths: &RuntimePaths) -> anyhow::Result<Self> {
        Self::from_config_with(cfg, mode, paths, &RealHost)
    }

    /// The command line for `cfg`, asking `host` about the machine.
    pub fn from_config_with(
        cfg: &VmConfig,
        mode: Mode,
        paths: &RuntimePaths,
        host: &dyn Host,
    ) -> anyhow::Result<Self> {
        let arch = arch::canonical(cfg.arch.as_deref().unwrap_or(DEFAULT_ARCH));
        let program = select_qemu(cfg.qemu.as_deref(), arch, host)?;
        let accel = resolve_accel(cfg.accel, host, &program, cfg.cpu_model.as_deref(), arch);
        let abs = |p: &Path| absolute(&cfg.dir, p);
        let disk0 = abs(cfg.disk0()?);
        let disk0_format = match cfg.disk0_format {
            Some(f) => f,
            None => detect(host, &disk0, 0)?,
        };
        let mut disks = vec![Disk {
            file: disk0,
            format: disk0_format,
            cache: cfg.disk0_cache,
        }];
        for file in cfg.extra_disks() {
            // VMK_DISKn, or the file diskN that an empty VMK_DISKn attaches
            let n = (1..=6)
                .find(|&n| match &cfg.disks[n - 1] {
                    Some(p) => *p == file,
                    None => cfg.dir.join(format!("disk{n}")) == file,
                })
                .unwrap_or(1);
            let file = abs(&file);
            let format = detect(host, &file, n)?;
            disks.push(Disk {
                file,
                format,
                cache: cfg.disk_cache,
            });
        }
        let serial = match mode {
            Mode::Run if cfg.console_telnet => Serial::Telnet {
                listen: cfg.listen,
                port: cfg.telnet_port(),
                log: abs(&paths.console_log),
            },
            Mode::Run => Serial::Socket {
                path: abs(&console_socket(paths)),
                log: abs(&paths.console_log),
            },
            Mode::Foreground => Serial::Stdio {
                log: abs(&paths.console_log),
            },
        };
        let network = match cfg.net_type {
            NetType::User => Network::User {
                listen: cfg.listen,
                ssh_port: cfg.ssh_port(),
                forwards: cfg.ports.clone(),
                mac: cfg.mac(),
            },
            NetType::Bridge => Network::Bridge {
                bridge: cfg.bridge.clone(),
                mac: cfg.mac(),
            },
            NetType::None => Network::None,
        };
        let kernel = cfg.kernel.as_ref().map(|k| KernelBoot {
            kernel: k.clone(),
            initrd: cfg.initrd.clone(),
            append: cfg.append.clone(),
        });
        let mut credentials = Vec::new();
        if cfg.ssh_credential {
            let key_file = cfg.dir.join(crate::layout::PUBLIC_KEY_FILE);
            match host.read_to_string(&key_file) {
                Ok(key) if !key.trim().is_empty() => {
                    credentials.push((SSH_CREDENTIAL.to_string(), key.trim().to_string()))
                }
                Ok(_) => log::debug!(
                    "{} is empty: no ssh credential for the guest",
                    key_file.display()
                ),
                Err(e) => log::debug!(
                    "no ssh credential for the guest ({}: {e})",
                    key_file.display()
                ),
            }
        }
        let daemonize = mode == Mode::Run;
        let bridge = cfg.net_type == NetType::Bridge;
        let runas = shares::runas(&cfg.dir, host);
        let shares = shares::plan(cfg, &abs(&paths.image), host)?;
        let virtiofs_tags: Vec<&str> = shares
            .iter()
            .filter(|s| s.daemon().is_some())
            .map(|s| s.share.tag.as_str())
            .collect();
        if !virtiofs_tags.is_empty() {
            // how a guest kernel before 6.9 learns the tags (vmk-shares in bootstrapped guests)
            credentials.push((
                crate::config::values::VIRTIOFS_TAGS_CREDENTIAL.to_string(),
                virtiofs_tags.join(" "),
            ));
        }
        let sandbox = if cfg.extra_args.iter().any(|a| a == "-sandbox") {
            log::debug!("VMK_EXTRA_ARGS has its own -sandbox: not adding ours");
            None
        } else if bridge && !host.is_root() {
            // A seccomp filter sets no_new_privs, so the setuid qemu-bridge-helper would
            // run without the root it needs to make the tap.
            log::debug!("bridge networking as a user: no -sandbox (qemu-bridge-helper is setuid)");
            None
        } else {
            Some(Sandbox::for_command(daemonize, bridge, runas.is_some()))
        };
        let machine = cfg
            .machine
            .clone()
            .unwrap_or_else(|| default_machine(arch).to_string());
        let firmware = match effective_firmware(cfg.firmware, arch) {
            Firmware::Bios => None,
            fw => Some(firmware::select(
                &host.firmware_descriptors(),
                fw,
                arch,
                &machine,
                &crate::layout::firmware_vars(&abs(&paths.image)),
            )?),
        };
        let tpm = match (cfg.tpm, tpm_model(arch)) {
            (false, _) => None,
            (true, Some(model)) => Some(TpmDevice {
                swtpm: crate::swtpm::Tpm::for_instance(&abs(&paths.image), &abs(&paths.qmp_socket)),
                model,
            }),
            (true, None) => {
                return Err(crate::config::ConfigError::new(format!(
                    "qemu has no TPM device for {arch}: set VMK_TPM=no"
                ))
                .with_key("VMK_TPM")
                .with_origin(&cfg.origin("VMK_TPM"))
                .into())
            }
        };
        Ok(QemuCommand {
            program,
            tpm,
            dir: cfg.dir.clone(),
            name: cfg.display_name(),
            machine,
            firmware,
            cpu_model: cfg.cpu_model.clone().or_else(|| default_cpu(accel, arch)),
            arch: arch.to_string(),
            accel,
            mem: cfg.mem,
            cpus: cfg.cpus,
            pidfile: Some(abs(&paths.pidfile)),
            daemonize,
            sandbox,
            runas,
            qmp_socket: Some(abs(&paths.qmp_socket)),
            qga_socket: Some(abs(&paths.qga_socket())),
            vnc: (!cfg.vnc_socket).then_some((cfg.listen, cfg.vnc)),
            vnc_socket: cfg.vnc_socket.then(|| abs(&vnc_socket(paths))),
            serial,
            disk_bus: cfg.disk_bus,
            disks,
            cdroms: Vec::new(),
            floppy: None,
            network,
            nic: cfg.nic,
            rtc: cfg.rtc,
            kernel,
            shares,
            credentials,
            no_reboot: false,
            extra_args: cfg.extra_args.iter().map(OsString::from).collect(),
        })
    }

    /// Boots `path` as disk0 instead (the snapshot copy or an overlay); format and cache stay.
    pub fn disk0_override(mut self, path: impl AsRef<Path>) -> Self {
        let file = absolute(&self.dir, path.as_ref());
        if let Some(d) = self.disks.first_mut() {
            d.file = file;
        }
        self
    }

    /// The same command under software emulation: for a qemu that died under the KVM that
    /// VMK_ACCEL=auto chose. The cpu model is the configured one (`host` needs KVM).
    pub fn fall_back_to_tcg(mut self, configured_cpu_model: Option<&str>) -> Self {
        self.accel = Accel::Tcg;
        self.cpu_model = configured_cpu_model
            .map(str::to_string)
            .or_else(|| default_cpu(Accel::Tcg, &self.arch));
        self
    }

    /// Sets disk0's format (a qcow2 overlay over a raw disk0 is qcow2).
    pub fn disk0_format(mut self, format: DiskFormat) -> Self {
        if let Some(d) = self.disks.first_mut() {
            d.format = format;
        }
        self
    }

    /// Sets disk0's cache mode (installs use `unsafe`).
    pub fn disk0_cache(mut self, cache: CacheMode) -> Self {
        if let Some(d) = self.disks.first_mut() {
            d.cache = cache;
        }
        self
    }

    /// Attaches a read-only CD-ROM image after the ones already attached.
    pub fn add_cdrom(mut self, path: impl AsRef<Path>) -> Self {
        self.cdroms.push(absolute(&self.dir, path.as_ref()));
        self
    }

    /// Attaches a floppy image.
    pub fn floppy(mut self, path: impl AsRef<Path>) -> Self {
        self.floppy = Some(absolute(&self.dir, path.as_ref()));
        self
    }

    /// Boots this kernel directly, replacing VMK_KERNEL/VMK_INITRD/VMK_APPEND.
    pub fn kernel_boot(
        mut self,
        kernel: impl AsRef<Path>,
        initrd: Option<&Path>,
        append: Option<&str>,
    ) -> Self {
        self.kernel = Some(KernelBoot {
            kernel: absolute(&self.dir, kernel.as_ref()),
            initrd: initrd.map(|i| absolute(&self.dir, i)),
            append: append.map(str::to_string),
        });
        self
    }

    /// Boots from the disks, not a kernel given on the command line.
    pub fn no_kernel_boot(mut self) -> Self {
        self.kernel = None;
        self
    }

    /// Exits instead of rebooting (`-no-reboot`).
    pub fn no_reboot(mut self) -> Self {
        self.no_reboot = true;
        self
    }

    /// Passes a systemd credential to the guest (`-smbios type=11`), replacing one of that name.
    pub fn credential(mut self, name: &str, value: &str) -> Self {
        self.credentials.retain(|(n, _)| n != name);
        self.credentials.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends arguments after everything else (after VMK_EXTRA_ARGS too).
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The qemu binary.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A `Command` that runs this qemu (nothing is started yet).
    pub fn to_command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(self.argv());
        c
    }

    /// The whole command on one line, each word quoted for a POSIX shell (for `-D`).
    pub fn shell_quoted(&self) -> String {
        crate::shell::join(
            std::iter::once(self.program.as_os_str().to_os_string()).chain(self.argv()),
        )
    }
}

/// The firmware a VM of `arch` boots with VMK_FIRMWARE=`configured`: architectures without
/// a BIOS that boot from flash (arm, riscv) get UEFI for `bios`; `bios` on pseries and
/// s390x is the firmware built into qemu.
pub fn effective_firmware(configured: Firmware, arch: &str) -> Firmware {
    match (configured, arch::spec(arch).firmware) {
        (Firmware::Bios, arch::FirmwareKind::UefiOnly) => Firmware::Uefi,
        (fw, _) => fw,
    }
}

/// The cpu model when VMK_CPU_MODEL is empty: `host` under KVM, the architecture's TCG
/// model (or qemu's default) under TCG.
fn default_cpu(accel: Accel, arch: &str) -> Option<String> {
    match accel {
        Accel::Kvm => Some(KVM_CPU_MODEL.to_string()),
        _ => arch::spec(arch).tcg_cpu.map(str::to_string),
    }
}

/// The format of the image `path` that `VMK_DISK<n>` names.
fn detect(host: &dyn Host, path: &Path, n: usize) -> Result<DiskFormat, QemuError> {
    host.disk_format(path).map_err(|source| QemuError::Disk {
        key: format!("VMK_DISK{n}"),
        make: if n == 0 {
            "`vmk mkdisk0`"
        } else {
            "`vmk mkdisks`"
        },
        path: path.to_path_buf(),
        source,
    })
}

fn absolute(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::host::tests::NoHost;
    use super::*;

    #[test]
    fn missing_disk0_says_what_to_do() {
        let cfg = VmConfig::defaults(Path::new("/vm"));
        let paths = RuntimePaths {
            image: "/vm/disk0".into(),
            pidfile: "p".into(),
            qmp_socket: "q".into(),
            console_log: "l".into(),
        };
        let e = QemuCommand::from_config_with(&cfg, Mode::Run, &paths, &NoHost).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VMK_DISK0 is not set in vm-config: set it or run `vmk mkdisk0`"
        );
        assert_eq!(crate::cli::exit_status_of(&e), 2);
    }

    /// NoHost, but no image can be read.
    struct Unreadable;

    impl Host for Unreadable {
        fn kvm_usable(&self) -> bool {
            false
        }
        fn find_program(&self, name: &str) -> Option<PathBuf> {
            NoHost.find_program(name)
        }
        fn disk_format(&self, _: &Path) -> io::Result<DiskFormat> {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
        fn read_to_string(&self, p: &Path) -> io::Result<String> {
            NoHost.read_to_string(p)
        }
    }

    #[test]
    fn an_unreadable_disk_names_its_own_key() {
        let mut cfg = VmConfig::defaults(Path::new("/vm"));
        cfg.disk0_path = Some("/vm/d0.qcow2".into());
        cfg.disk0_format = Some(DiskFormat::Qcow2);
        cfg.disks[2] = Some("/vm/d3.qcow2".into());
        let paths = RuntimePaths {
            image: "/vm/d0.qcow2".into(),
            pidfile: "p".into(),
            qmp_socket: "q".into(),
            console_log: "l".into(),
        };
        let e = QemuCommand::from_config_with(&cfg, Mode::Run, &paths, &Unreadable)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/vm/d3.qcow2"), "{e}");
        assert!(
            e.contains("set VMK_DISK3 ") && !e.contains("VMK_DISK0"),
            "{e}"
        );
        cfg.disk0_format = None;
        let e = QemuCommand::from_config_with(&cfg, Mode::Run, &paths, &Unreadable)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("set VMK_DISK0 ") && e.contains("`vmk mkdisk0`"),
            "{e}"
        );
    }
}
