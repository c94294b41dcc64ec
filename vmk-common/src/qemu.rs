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
//! - both modes show a VNC display on VMK_LISTEN:VMK_VNC and have a QMP socket and pidfile;
//!   [`Mode::Run`] daemonizes with the serial console on a telnet port, [`Mode::Foreground`]
//!   puts the serial console and qemu's monitor on the terminal (Ctrl-A x quits, Ctrl-A c
//!   switches to the monitor; Ctrl-C goes to the guest). The console is logged in both.
//! - relative paths given to the builder are made absolute against the VM directory.
//! - the machine probes (is /dev/kvm usable, which programs are on PATH, what format is an
//!   image, the ssh public key) go through [`Host`], so tests give fixed answers.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Accel, CacheMode, DiskBus, DiskFormat, MemSize, NetType, VmConfig};

/// Architecture assumed when VMK_ARCH is empty.
pub const DEFAULT_ARCH: &str = "x86_64";
/// Machine type when VMK_MACHINE is empty (x86).
pub const DEFAULT_MACHINE: &str = "q35";
/// The credential through which systemd guests take root's ssh key.
pub const SSH_CREDENTIAL: &str = "ssh.authorized_keys.root";

/// How the VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `vmk run`: in the background (`-daemonize`), serial console on a telnet port.
    Run,
    /// `vmk runin` and installs: in the foreground, serial console and monitor on stdio.
    Foreground,
}

/// Where the runtime files of this VM go: computed by [`crate::state`], not here.
pub use crate::state::RuntimePaths;

/// What the builder asks of the machine it runs on.
pub trait Host {
    /// Whether /dev/kvm opens read-write.
    fn kvm_usable(&self) -> bool;
    /// The program `name` on PATH.
    fn find_program(&self, name: &str) -> Option<PathBuf>;
    /// The format of the image at `path` (qcow2 magic, else raw).
    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat>;
    /// The content of a small file (the VM's ssh public key).
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
}

/// The real machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn kvm_usable(&self) -> bool {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat> {
        DiskFormat::detect(path)
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

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
    #[error("cannot read disk image {path}: {source} (set VMK_DISK0 to an existing image or run `vmk mkdisk0`)")]
    Disk {
        /// The image.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
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

/// The network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// User networking with the guest's ssh forwarded from `listen:ssh_port`.
    User {
        /// Host address of the forward.
        listen: IpAddr,
        /// Host port forwarded to guest port 22.
        ssh_port: u16,
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
    /// A telnet-compatible TCP server.
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
    /// `-m`.
    pub mem: MemSize,
    /// `-smp`.
    pub cpus: u32,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `-daemonize`.
    pub daemonize: bool,
    /// QMP socket.
    pub qmp_socket: Option<PathBuf>,
    /// The guest agent's socket (virtio-serial port `org.qemu.guest_agent.0`), used to
    /// freeze guest filesystems around a snapshot.
    pub qga_socket: Option<PathBuf>,
    /// `-vnc LISTEN:N`; `None` for no display at all.
    pub vnc: Option<(IpAddr, u8)>,
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
    /// Direct kernel boot.
    pub kernel: Option<KernelBoot>,
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
        let arch = cfg.arch.as_deref().unwrap_or(DEFAULT_ARCH);
        let accel = resolve_accel(cfg.accel, host);
        let abs = |p: &Path| absolute(&cfg.dir, p);
        let disk0 = abs(cfg.disk0()?);
        let disk0_format = match cfg.disk0_format {
            Some(f) => f,
            None => detect(host, &disk0)?,
        };
        let mut disks = vec![Disk {
            file: disk0,
            format: disk0_format,
            cache: cfg.disk0_cache,
        }];
        for file in cfg.extra_disks() {
            let file = abs(&file);
            let format = detect(host, &file)?;
            disks.push(Disk {
                file,
                format,
                cache: cfg.disk_cache,
            });
        }
        let serial = match mode {
            Mode::Run => Serial::Telnet {
                listen: cfg.listen,
                port: cfg.telnet_port(),
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
            let key_file = cfg.dir.join("vm-key.pub");
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
        Ok(QemuCommand {
            program: select_qemu(cfg.qemu.as_deref(), arch, host)?,
            dir: cfg.dir.clone(),
            name: cfg.display_name(),
            machine: cfg
                .machine
                .clone()
                .unwrap_or_else(|| default_machine(arch).to_string()),
            cpu_model: cfg
                .cpu_model
                .clone()
                .or_else(|| (accel == Accel::Kvm).then(|| "host".to_string())),
            accel,
            mem: cfg.mem,
            cpus: cfg.cpus,
            pidfile: Some(abs(&paths.pidfile)),
            daemonize: mode == Mode::Run,
            qmp_socket: Some(abs(&paths.qmp_socket)),
            qga_socket: Some(abs(&paths.qga_socket())),
            vnc: Some((cfg.listen, cfg.vnc)),
            serial,
            disk_bus: cfg.disk_bus,
            disks,
            cdroms: Vec::new(),
            floppy: None,
            network,
            kernel,
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

    /// The arguments, without the program, in their fixed order.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.push("-nodefaults");
        a.pair("-name", Opts::new().kv("guest", &self.name));
        a.pair(
            "-machine",
            Opts::word(&self.machine).kv("accel", self.accel.as_str()),
        );
        if let Some(cpu) = &self.cpu_model {
            a.pair("-cpu", cpu);
        }
        a.pair("-m", self.mem.mib().to_string());
        a.pair("-smp", self.cpus.to_string());
        if let Some(p) = &self.pidfile {
            a.pair("-pidfile", p);
        }
        if self.daemonize {
            a.push("-daemonize");
        }
        // a unix socket server that qemu listens on without waiting for a client
        let listening_socket = |id: &str, path: &Path| {
            Opts::word("socket")
                .kv("id", id)
                .kv("path", path)
                .kv("server", "on")
                .kv("wait", "off")
        };
        if let Some(sock) = &self.qmp_socket {
            a.pair("-chardev", listening_socket("qmp", sock));
            a.pair("-mon", "chardev=qmp,mode=control");
        }
        if let Some(sock) = &self.qga_socket {
            a.pair("-chardev", listening_socket("qga0", sock));
            a.pair("-device", "virtio-serial-pci,id=vmk-serial-bus");
            a.pair(
                "-device",
                "virtserialport,bus=vmk-serial-bus.0,chardev=qga0,name=org.qemu.guest_agent.0",
            );
        }
        self.display(&mut a);
        self.serial(&mut a);
        self.drives(&mut a);
        self.network(&mut a);
        if let Some(k) = &self.kernel {
            a.pair("-kernel", &k.kernel);
            if let Some(i) = &k.initrd {
                a.pair("-initrd", i);
            }
            if let Some(ap) = &k.append {
                a.pair("-append", ap);
            }
        }
        for (name, value) in &self.credentials {
            let v = format!("io.systemd.credential:{name}={value}");
            a.pair("-smbios", Opts::new().kv("type", "11").kv("value", v));
        }
        if self.no_reboot {
            a.push("-no-reboot");
        }
        a.0.extend(self.extra_args.iter().cloned());
        a.0
    }

    fn display(&self, a: &mut Args) {
        a.pair("-display", "none");
        if let Some((listen, n)) = self.vnc {
            a.pair("-device", "VGA");
            a.pair("-vnc", format!("{}:{n}", host_for_display(listen)));
        }
    }

    fn serial(&self, a: &mut Args) {
        match &self.serial {
            Serial::Telnet { listen, port, log } => {
                let o = Opts::word("socket")
                    .kv("id", "serial0")
                    .kv("host", listen.to_string())
                    .kv("port", port.to_string())
                    .kv("server", "on")
                    .kv("wait", "off")
                    .kv("telnet", "on")
                    .kv("logfile", log)
                    .kv("logappend", "on");
                a.pair("-chardev", o);
                a.pair("-serial", "chardev:serial0");
            }
            Serial::Stdio { log } => {
                let o = Opts::word("stdio")
                    .kv("id", "serial0")
                    .kv("mux", "on")
                    .kv("signal", "off")
                    .kv("logfile", log)
                    .kv("logappend", "on");
                a.pair("-chardev", o);
                a.pair("-serial", "chardev:serial0");
                a.pair("-mon", "chardev=serial0,mode=readline");
            }
        }
    }

    fn drives(&self, a: &mut Args) {
        let mut ide_port = 0;
        let mut next_ide = |machine: &str| {
            let bus = ide_bus(machine, ide_port);
            ide_port += 1;
            bus
        };
        if self.disk_bus == DiskBus::Scsi && !self.disks.is_empty() {
            a.pair("-device", "virtio-scsi-pci,id=scsi0");
        }
        for (i, d) in self.disks.iter().enumerate() {
            let id = format!("disk{i}");
            let drive = Opts::new()
                .kv("file", &d.file)
                .kv("format", d.format.as_str())
                .kv("if", "none")
                .kv("id", &id)
                .kv("cache", d.cache.as_str())
                .kv("discard", "unmap");
            a.pair("-drive", drive);
            let dev = match self.disk_bus {
                DiskBus::Virtio => Opts::word("virtio-blk-pci").kv("drive", &id),
                DiskBus::Scsi => Opts::word("scsi-hd").kv("drive", &id).kv("bus", "scsi0.0"),
                DiskBus::Ide => Opts::word("ide-hd")
                    .kv("drive", &id)
                    .raw(&next_ide(&self.machine)),
                DiskBus::Nvme => Opts::word("nvme")
                    .kv("drive", &id)
                    .kv("serial", format!("vmk-{id}")),
            };
            // With -kernel, qemu gives bootindex 0 to its linuxboot option ROM: a disk
            // asking for it too is an error ("bootindex 0 has already been used").
            let dev = if i == 0 && self.kernel.is_none() {
                dev.kv("bootindex", "0")
            } else {
                dev
            };
            a.pair("-device", dev);
        }
        for (i, cd) in self.cdroms.iter().enumerate() {
            let id = format!("cd{i}");
            let drive = Opts::new()
                .kv("file", cd)
                .kv("format", "raw")
                .kv("if", "none")
                .kv("id", &id)
                .kv("media", "cdrom")
                .kv("readonly", "on");
            a.pair("-drive", drive);
            a.pair(
                "-device",
                Opts::word("ide-cd")
                    .kv("drive", &id)
                    .raw(&next_ide(&self.machine)),
            );
        }
        if let Some(fd) = &self.floppy {
            a.pair(
                "-drive",
                Opts::new()
                    .kv("file", fd)
                    .kv("format", "raw")
                    .kv("if", "none")
                    .kv("id", "fd0"),
            );
            if is_q35(&self.machine) {
                a.pair("-device", "isa-fdc");
            }
            a.pair("-device", "floppy,drive=fd0");
        }
    }

    fn network(&self, a: &mut Args) {
        let mac = match &self.network {
            Network::User {
                listen,
                ssh_port,
                mac,
            } => {
                let fwd = format!("tcp:{}:{ssh_port}-:22", host_for_display(*listen));
                a.pair(
                    "-netdev",
                    Opts::word("user").kv("id", "net0").kv("hostfwd", fwd),
                );
                mac
            }
            Network::Bridge { bridge, mac } => {
                a.pair(
                    "-netdev",
                    Opts::word("bridge").kv("id", "net0").kv("br", bridge),
                );
                mac
            }
            Network::None => {
                a.pair("-nic", "none");
                return;
            }
        };
        a.pair(
            "-device",
            Opts::word("virtio-net-pci")
                .kv("netdev", "net0")
                .kv("mac", mac),
        );
    }

    /// A `Command` that runs this qemu (nothing is started yet).
    pub fn to_command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(self.argv());
        c
    }

    /// The whole command on one line, each word quoted for a POSIX shell (for `-D`).
    pub fn shell_quoted(&self) -> String {
        std::iter::once(self.program.as_os_str().to_os_string())
            .chain(self.argv())
            .map(|w| shell_quote(&w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `w` quoted for a POSIX shell; bytes that are not UTF-8 are shown lossily.
pub fn shell_quote(w: &OsStr) -> String {
    let s = w.to_string_lossy();
    match shlex::try_quote(&s) {
        Ok(q) => q.into_owned(),
        // a NUL byte cannot be in an argument anyway
        Err(_) => format!("'{}'", s.replace('\'', r"'\''")),
    }
}

/// A value for a qemu option list, with its commas doubled: `a,b` → `a,,b`.
pub fn escape_opt_value(v: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(v.len());
    for &b in v.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// The accelerator to use: `auto` is kvm when /dev/kvm is usable, else tcg with a warning.
pub fn resolve_accel(accel: Accel, host: &dyn Host) -> Accel {
    match accel {
        Accel::Auto if host.kvm_usable() => Accel::Kvm,
        Accel::Auto => {
            log::warn!("/dev/kvm is not usable: running with software emulation (tcg), which is much slower");
            Accel::Tcg
        }
        other => other,
    }
}

/// The qemu binary: VMK_QEMU (a path, or a name looked up on PATH), else `qemu-kvm` (x86_64
/// only), then `qemu-system-<arch>` on PATH.
pub fn select_qemu(
    configured: Option<&Path>,
    arch: &str,
    host: &dyn Host,
) -> Result<PathBuf, QemuError> {
    if let Some(q) = configured {
        if q.components().count() > 1 || q.is_absolute() {
            return Ok(q.to_path_buf());
        }
        let name = q.to_string_lossy();
        return host.find_program(&name).ok_or(QemuError::NoQemu {
            tried: format!("VMK_QEMU={name}"),
        });
    }
    let mut tried = Vec::new();
    if arch == "x86_64" {
        tried.push("qemu-kvm".to_string());
    }
    tried.push(format!("qemu-system-{arch}"));
    tried
        .iter()
        .find_map(|name| host.find_program(name))
        .ok_or_else(|| QemuError::NoQemu {
            tried: tried.join(", "),
        })
}

fn default_machine(arch: &str) -> &'static str {
    match arch {
        "x86_64" | "i386" | "i686" => DEFAULT_MACHINE,
        _ => "virt",
    }
}

fn is_q35(machine: &str) -> bool {
    machine.contains("q35")
}

/// The AHCI port (q35: one device per `ide.N`) or IDE bus and unit (pc: two per bus) of the
/// `n`-th IDE device.
fn ide_bus(machine: &str, n: usize) -> String {
    if machine == "pc" || machine.starts_with("pc-i440fx") {
        format!("bus=ide.{},unit={}", n / 2, n % 2)
    } else {
        format!("bus=ide.{n}")
    }
}

fn detect(host: &dyn Host, path: &Path) -> Result<DiskFormat, QemuError> {
    host.disk_format(path).map_err(|source| QemuError::Disk {
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

/// An IP address as `-vnc` and `hostfwd` want it: IPv6 in brackets.
fn host_for_display(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A qemu option list under construction: `word,key=value,…` with values escaped.
#[derive(Debug, Default)]
struct Opts(OsString);

impl Opts {
    fn new() -> Self {
        Opts::default()
    }

    /// A list starting with a word of ours (a driver or backend name), not escaped.
    fn word(w: &str) -> Self {
        Opts(OsString::from(w))
    }

    fn sep(&mut self) {
        if !self.0.is_empty() {
            self.0.push(",");
        }
    }

    fn kv(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.sep();
        self.0.push(key);
        self.0.push("=");
        self.0.push(escape_opt_value(value.as_ref()));
        self
    }

    /// Options of ours, already in qemu's syntax.
    fn raw(mut self, s: &str) -> Self {
        self.sep();
        self.0.push(s);
        self
    }
}

impl AsRef<OsStr> for Opts {
    fn as_ref(&self) -> &OsStr {
        &self.0
    }
}

#[derive(Debug, Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: impl AsRef<OsStr>) {
        self.0.push(s.as_ref().to_os_string());
    }

    fn pair(&mut self, opt: &str, value: impl AsRef<OsStr>) {
        self.push(opt);
        self.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHost;
    impl Host for NoHost {
        fn kvm_usable(&self) -> bool {
            false
        }
        fn find_program(&self, name: &str) -> Option<PathBuf> {
            (name == "qemu-system-x86_64").then(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
        }
        fn disk_format(&self, _: &Path) -> io::Result<DiskFormat> {
            Ok(DiskFormat::Qcow2)
        }
        fn read_to_string(&self, p: &Path) -> io::Result<String> {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                p.display().to_string(),
            ))
        }
    }

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape_opt_value(OsStr::new("a,b,,c")), "a,,b,,,,c");
        assert_eq!(escape_opt_value(OsStr::new("plain")), "plain");
        let bytes = OsStr::from_bytes(b"\xff,x");
        assert_eq!(escape_opt_value(bytes).as_bytes(), b"\xff,,x");
    }

    #[test]
    fn qemu_selection() {
        assert_eq!(
            select_qemu(None, "x86_64", &NoHost).unwrap(),
            Path::new("/usr/bin/qemu-system-x86_64")
        );
        let e = select_qemu(None, "aarch64", &NoHost)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no qemu found (tried qemu-system-aarch64 on PATH): install qemu or set VMK_QEMU"
        );
        assert_eq!(
            select_qemu(Some(Path::new("/opt/q")), "x86_64", &NoHost).unwrap(),
            Path::new("/opt/q")
        );
        assert!(select_qemu(Some(Path::new("qemu-nope")), "x86_64", &NoHost).is_err());
        assert_eq!(resolve_accel(Accel::Auto, &NoHost), Accel::Tcg);
        assert_eq!(resolve_accel(Accel::Kvm, &NoHost), Accel::Kvm);
    }

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

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("plain")), "plain");
        assert_eq!(shell_quote(OsStr::new("it's")), "\"it's\"");
    }
}
