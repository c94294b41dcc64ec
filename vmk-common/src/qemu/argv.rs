//! The argv of a [`QemuCommand`], emitted in one fixed order so that the same config always
//! gives the same command line (and the snapshot tests can hold it): devices, drives, the
//! serial console, the network card.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::Path;

use crate::config::{DiskBus, NicModel, RtcBase};

use super::opts::{Args, Opts};
use super::{Network, QemuCommand, Serial, ShareTransport};

/// The id of the guest's memory when it is shared with virtiofsds.
const SHARED_MEMORY_ID: &str = "vmk-mem";

impl QemuCommand {
    /// The arguments, without the program, in their fixed order.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.push("-nodefaults");
        a.pair("-name", Opts::new().kv("guest", &self.name));
        let smm = self.firmware.as_ref().is_some_and(|f| f.requires_smm);
        let mut machine = Opts::word(&self.machine).kv("accel", self.accel.as_str());
        if smm {
            machine = machine.kv("smm", "on");
        }
        let shared_memory = self.shares.iter().any(|s| s.daemon().is_some());
        if shared_memory {
            machine = machine.kv("memory-backend", SHARED_MEMORY_ID);
        }
        a.pair("-machine", machine);
        if let Some(cpu) = &self.cpu_model {
            a.pair("-cpu", cpu);
        }
        a.pair("-m", self.mem.mib().to_string());
        if shared_memory {
            // virtiofsd reads and writes the guest's buffers in its memory directly
            a.pair(
                "-object",
                Opts::word("memory-backend-memfd")
                    .kv("id", SHARED_MEMORY_ID)
                    .kv("size", format!("{}M", self.mem.mib()))
                    .kv("share", "on"),
            );
        }
        // qemu's own default is utc: only the original vmk's localtime is spelled out
        if self.rtc == RtcBase::Localtime {
            a.pair("-rtc", "base=localtime");
        }
        a.pair("-smp", self.cpus.to_string());
        self.flash(&mut a);
        self.tpm(&mut a);
        if let Some(p) = &self.pidfile {
            a.pair("-pidfile", p);
        }
        if self.daemonize {
            a.push("-daemonize");
        }
        if let Some(sb) = &self.sandbox {
            let mut o = Opts::word("on").kv("obsolete", "deny");
            if !sb.elevate_privileges {
                o = o.kv("elevateprivileges", "deny");
            }
            if !sb.spawn {
                o = o.kv("spawn", "deny");
            }
            a.pair("-sandbox", o.kv("resourcecontrol", "deny"));
        }
        if let Some((uid, gid)) = self.runas {
            a.pair("-runas", format!("{uid}:{gid}"));
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
            a.pair(
                "-device",
                format!("{},id=vmk-serial-bus", self.virtio("virtio-serial")),
            );
            a.pair(
                "-device",
                "virtserialport,bus=vmk-serial-bus.0,chardev=qga0,name=org.qemu.guest_agent.0",
            );
        }
        self.display(&mut a);
        self.serial(&mut a);
        self.drives(&mut a);
        self.network(&mut a);
        self.shares(&mut a);
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

    /// UEFI: the firmware code read-only in pflash unit 0, the VM's variable store in unit 1;
    /// with SMM the flash is secure (only SMM code may write it: Secure Boot's guard).
    fn flash(&self, a: &mut Args) {
        let Some(fw) = &self.firmware else {
            return;
        };
        if fw.requires_smm {
            a.pair("-global", "driver=cfi.pflash01,property=secure,value=on");
        }
        let pflash = |unit: &str, file: &Path| {
            Opts::new()
                .kv("if", "pflash")
                .kv("format", "raw")
                .kv("unit", unit)
                .kv("file", file)
        };
        a.pair("-drive", pflash("0", &fw.code).kv("readonly", "on"));
        a.pair("-drive", pflash("1", &fw.vars));
    }

    /// The TPM: qemu talks to swtpm over its control socket.
    fn tpm(&self, a: &mut Args) {
        let Some(tpm) = &self.tpm else {
            return;
        };
        a.pair(
            "-chardev",
            Opts::word("socket")
                .kv("id", "chrtpm")
                .kv("path", &tpm.swtpm.socket),
        );
        a.pair("-tpmdev", "emulator,id=tpm0,chardev=chrtpm");
        a.pair("-device", Opts::word(tpm.model).kv("tpmdev", "tpm0"));
    }

    /// The virtio device `name` on this architecture's bus: `virtio-blk-pci`, or `-ccw`
    /// on s390x.
    fn virtio(&self, name: &str) -> String {
        format!("{name}-{}", super::arch::spec(&self.arch).virtio)
    }

    fn display(&self, a: &mut Args) {
        a.pair("-display", "none");
        let display = super::arch::spec(&self.arch).display;
        let display_device = |a: &mut Args| {
            if let Some(d) = display {
                a.pair("-device", d);
            }
        };
        if let Some(path) = &self.vnc_socket {
            display_device(a);
            // `-vnc unix:PATH`: a plain value, where a comma would start an option
            let mut v = std::ffi::OsString::from("unix:");
            v.push(super::escape_opt_value(path.as_os_str()));
            a.pair("-vnc", v);
        } else if let Some((listen, n)) = self.vnc {
            display_device(a);
            a.pair("-vnc", format!("{}:{n}", host_for_display(listen)));
        }
    }

    fn serial(&self, a: &mut Args) {
        let (chardev, log) = match &self.serial {
            Serial::Socket { path, log } => (
                Opts::word("socket")
                    .kv("id", "serial0")
                    .kv("path", path)
                    .kv("server", "on")
                    .kv("wait", "off"),
                log,
            ),
            Serial::Telnet { listen, port, log } => (
                Opts::word("socket")
                    .kv("id", "serial0")
                    .kv("host", listen.to_string())
                    .kv("port", port.to_string())
                    .kv("server", "on")
                    .kv("wait", "off")
                    .kv("telnet", "on"),
                log,
            ),
            Serial::Stdio { log } => (
                Opts::word("stdio")
                    .kv("id", "serial0")
                    .kv("mux", "on")
                    .kv("signal", "off"),
                log,
            ),
        };
        a.pair("-chardev", chardev.kv("logfile", log).kv("logappend", "on"));
        a.pair("-serial", "chardev:serial0");
        if let Serial::Stdio { .. } = self.serial {
            a.pair("-mon", "chardev=serial0,mode=readline");
        }
    }

    fn drives(&self, a: &mut Args) {
        let mut ide_port = 0;
        let mut next_ide = |machine: &str| {
            let bus = ide_bus(machine, ide_port);
            ide_port += 1;
            bus
        };
        let ide = super::arch::spec(&self.arch).ide;
        // without IDE (arm, ppc64, s390x) CD-ROMs are SCSI too
        let cd_on_scsi = !ide && !self.cdroms.is_empty();
        let virtio_scsi = format!("{},id=scsi0", self.virtio("virtio-scsi"));
        match self.disk_bus {
            DiskBus::Lsi if !self.disks.is_empty() => a.pair("-device", "lsi53c895a,id=scsi0"),
            DiskBus::Scsi if !self.disks.is_empty() => a.pair("-device", virtio_scsi),
            _ if cd_on_scsi => a.pair("-device", virtio_scsi),
            _ => {}
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
                DiskBus::Virtio => Opts::word(&self.virtio("virtio-blk")).kv("drive", &id),
                DiskBus::Scsi | DiskBus::Lsi => {
                    Opts::word("scsi-hd").kv("drive", &id).kv("bus", "scsi0.0")
                }
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
            let dev = if ide {
                Opts::word("ide-cd")
                    .kv("drive", &id)
                    .raw(&next_ide(&self.machine))
            } else {
                Opts::word("scsi-cd").kv("drive", &id).kv("bus", "scsi0.0")
            };
            a.pair("-device", dev);
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

    /// Each share over its transport. virtio-9p in qemu itself, no daemon:
    /// `security_model=none` (files are the qemu user's, the guest's chown is ignored
    /// rather than refused), `readonly=on` for `:ro`. virtiofs: a vhost-user device on
    /// its virtiofsd's socket.
    fn shares(&self, a: &mut Args) {
        for (i, s) in self.shares.iter().enumerate() {
            match &s.transport {
                ShareTransport::NineP => {
                    let id = format!("share{i}");
                    let mut fsdev = Opts::word("local")
                        .kv("id", &id)
                        .kv("path", &s.share.dir)
                        .kv("security_model", "none");
                    if s.share.readonly {
                        fsdev = fsdev.kv("readonly", "on");
                    }
                    a.pair("-fsdev", fsdev);
                    a.pair(
                        "-device",
                        Opts::word("virtio-9p-pci")
                            .kv("fsdev", &id)
                            .kv("mount_tag", &s.share.tag),
                    );
                }
                ShareTransport::Virtiofs(d) => {
                    let id = format!("vfs{i}");
                    a.pair(
                        "-chardev",
                        Opts::word("socket").kv("id", &id).kv("path", &d.socket),
                    );
                    a.pair(
                        "-device",
                        Opts::word(&self.virtio("vhost-user-fs"))
                            .kv("chardev", &id)
                            .kv("tag", &s.share.tag),
                    );
                }
            }
        }
    }

    fn network(&self, a: &mut Args) {
        let mac = match &self.network {
            Network::User {
                listen,
                ssh_port,
                forwards,
                mac,
            } => {
                let host = host_for_display(*listen);
                let mut netdev = Opts::word("user")
                    .kv("id", "net0")
                    .kv("hostfwd", format!("tcp:{host}:{ssh_port}-:22"));
                for f in forwards {
                    let fwd = format!("{}:{host}:{}-:{}", f.protocol(), f.host, f.guest);
                    netdev = netdev.kv("hostfwd", fwd);
                }
                a.pair("-netdev", netdev);
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
            Opts::word(&match self.nic {
                NicModel::Virtio => self.virtio("virtio-net"),
                other => other.device().to_string(),
            })
            .kv("netdev", "net0")
            .kv("mac", mac),
        );
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

/// An IP address as `-vnc` and `hostfwd` want it: IPv6 in brackets.
fn host_for_display(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
