//! The libvirt domain XML of a VM, read from the same [`QemuCommand`] that gives `vmk run`
//! its qemu argv, so that a VM handed to libvirt has the hardware vmk would start itself.
//!
//! Decisions (also in vmk-libvirt(1)):
//! - Written with quick-xml's writer: every value is escaped, so a disk named `a&b<c>.raw`
//!   stays one file and no value can add an element.
//! - A [`QemuCommand`] is first turned into [`Domain`] (plain strings, checked: UTF-8
//!   paths, a cpu model libvirt can say), then written; writing cannot fail after that.
//! - Domain type `kvm` where vmk would use kvm, `qemu` (TCG) where it would use tcg.
//! - Disks keep bus, format and cache (`discard='unmap'` as in the argv); disk0 is the
//!   first boot device unless the kernel is booted directly. IDE on q35 is libvirt's `sata`
//!   (AHCI, as vmk's argv). NVMe disks have no libvirt element before libvirt 10: refused.
//! - User networking: libvirt's own `<interface type='user'>` cannot forward a port with
//!   qemu's built-in SLIRP, so the card and its ssh forward are passed as the same
//!   `-netdev user,…hostfwd=…` and `-device virtio-net-pci,…,mac=…` (`-ccw` on s390x) vmk gives qemu, in
//!   `<qemu:commandline>` (libvirt marks such a domain "tainted", and `virsh domiflist`
//!   does not list the card). Bridge networking is a libvirt `<interface type='bridge'>`.
//! - The serial console is a pty (`virsh console`), or with VMK_CONSOLE=telnet the same
//!   telnet port; both are logged (through virtlogd) to the console log `vmk info` names.
//! - The QMP socket, pidfile, `-daemonize`, `-sandbox` and `-runas` are libvirt's business
//!   and have no element here; the guest agent's channel is libvirt's own unix socket.
//! - VMK_EXTRA_ARGS and other extra arguments go to `<qemu:commandline>` unchanged.
//! - VMK_FIRMWARE=uefi: `<loader type='pflash'>` and `<nvram>` naming the same variable store
//!   (beside disk0) as vmk's argv; uefi-secure adds `<smm>` and a secure loader.
//! - VMK_TPM=yes: `<tpm>` with libvirt's own emulator backend (the same device model):
//!   libvirt starts its swtpm with state of its own, not vmk's `<disk0>.tpm`.

use std::io;
use std::path::Path;

use anyhow::{bail, Context, Result};
use quick_xml::events::BytesText;
use quick_xml::Writer;
use vmk_common::config::{Accel, DiskBus, NicModel, RtcBase};
use vmk_common::qemu::{Network, QemuCommand, Serial};

/// The XML namespace of libvirt's qemu pass-through (`<qemu:commandline>`).
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// The XML namespace of vmk's own metadata in a domain (which VM directory it is).
pub const VMK_NS: &str = "https://vmk.invalid/libvirt/1";

/// A domain, as plain strings ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// `kvm` or `qemu`.
    pub domain_type: &'static str,
    /// `<name>`.
    pub name: String,
    /// `<uuid>`: libvirt's own, when a domain of this VM is defined again.
    pub uuid: Option<String>,
    /// The VM directory (vmk's metadata).
    pub vm_dir: String,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// `<vcpu>`.
    pub vcpus: u32,
    /// `<type arch=…>`.
    pub arch: String,
    /// `<type machine=…>`.
    pub machine: String,
    /// `<emulator>`.
    pub emulator: String,
    /// The cpu: host-passthrough, a model with features, or libvirt's default.
    pub cpu: Cpu,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(String, Option<String>, Option<String>)>,
    /// UEFI (VMK_FIRMWARE): the firmware code, the VM's variable store, SMM and a secure
    /// flash (Secure Boot on x86).
    pub uefi: Option<UefiXml>,
    /// SMBIOS type 11 strings (`io.systemd.credential:NAME=VALUE`).
    pub oem_strings: Vec<String>,
    /// `<on_reboot>destroy</on_reboot>` (qemu's `-no-reboot`).
    pub no_reboot: bool,
    /// The SCSI controller of the disks, by libvirt model: `virtio-scsi`, or `lsilogic`
    /// (the LSI 53C895A of VMK_DISK_BUS=lsi).
    pub scsi_controller: Option<&'static str>,
    /// `<clock offset='localtime'/>` (VMK_RTC=localtime).
    pub rtc_localtime: bool,
    /// Disks, CD-ROMs and the floppy, in order.
    pub disks: Vec<DiskXml>,
    /// The network card.
    pub interface: Interface,
    /// The serial console.
    pub serial: SerialXml,
    /// VNC: `(listen, port)` or a unix socket.
    pub vnc: Option<Vnc>,
    /// The guest agent's channel.
    pub guest_agent: bool,
    /// Host folders shared with the guest (VMK_SHARE, `--modules`): virtio-9p
    /// `<filesystem>`s, `accessmode='squash'` as the argv's `security_model=none`; virtiofs
    /// ones `accessmode='passthrough'` with `<driver type='virtiofs'/>` (libvirt starts its
    /// own virtiofsd for them).
    pub filesystems: Vec<FilesystemXml>,
    /// The TPM device model (VMK_TPM=yes), with libvirt's emulator backend.
    pub tpm_model: Option<&'static str>,
    /// Arguments passed to qemu unchanged (`<qemu:commandline>`).
    pub qemu_args: Vec<String>,
}

/// One shared host folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemXml {
    /// The host folder.
    pub dir: String,
    /// The mount tag.
    pub tag: String,
    /// Read-only for the guest.
    pub readonly: bool,
    /// virtiofs (else virtio-9p).
    pub virtiofs: bool,
}

/// The cpu model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cpu {
    /// libvirt's default for the domain type.
    Default,
    /// `-cpu host`.
    HostPassthrough,
    /// A named model with required (`+f`) and disabled (`-f`) features.
    Custom {
        /// The model.
        model: String,
        /// (policy, feature).
        features: Vec<(&'static str, String)>,
    },
}

/// One `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskXml {
    /// `disk`, `cdrom` or `floppy`.
    pub device: &'static str,
    /// The image.
    pub file: String,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// Cache mode (disks only).
    pub cache: Option<&'static str>,
    /// `<target dev=…>`.
    pub dev: String,
    /// `<target bus=…>`.
    pub bus: &'static str,
    /// `<boot order=…>`.
    pub boot_order: Option<u32>,
}

/// The network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    /// User networking, passed through as qemu arguments (see the module's decisions).
    User {
        /// `-netdev user,…`.
        netdev: String,
        /// `-device <VMK_NIC's device>,…`.
        device: String,
    },
    /// A host bridge.
    Bridge {
        /// The bridge.
        bridge: String,
        /// The MAC.
        mac: String,
        /// The card's libvirt model (VMK_NIC): virtio, e1000…
        model: &'static str,
    },
    /// No card.
    None,
}

/// The serial console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialXml {
    /// A pty (`virsh console`), logged.
    Pty {
        /// Console log.
        log: String,
    },
    /// A telnet server, logged.
    Telnet {
        /// Address.
        host: String,
        /// Port.
        port: u16,
        /// Console log.
        log: String,
    },
}

/// The VNC display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vnc {
    /// A TCP port on an address.
    Tcp {
        /// Address.
        listen: String,
        /// Port (5900 + display).
        port: u16,
    },
    /// A unix socket.
    Socket(String),
}

/// A path as libvirt's XML needs it: UTF-8.
fn utf8(what: &str, p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).with_context(|| {
        format!(
            "{what} {} is not UTF-8: libvirt's XML cannot name it",
            p.display()
        )
    })
}

/// `<loader>` and `<nvram>` of a UEFI domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiXml {
    /// The firmware code (read-only pflash).
    pub code: String,
    /// The VM's own variable store (the same file vmk's argv names).
    pub vars: String,
    /// The variable store's template.
    pub template: String,
    /// SMM on and the flash secure.
    pub secure: bool,
}

impl Domain {
    /// The domain of `cmd`, a command line for `arch`.
    pub fn from_command(cmd: &QemuCommand, arch: &str) -> Result<Domain> {
        every_field_has_an_answer(cmd);
        let disks = disks_of(cmd)?;
        let kernel = match &cmd.kernel {
            Some(k) => Some((
                utf8("kernel", &k.kernel)?,
                k.initrd.as_deref().map(|i| utf8("initrd", i)).transpose()?,
                k.append.clone(),
            )),
            None => None,
        };
        let uefi = match &cmd.firmware {
            Some(fw) => Some(UefiXml {
                code: utf8("UEFI firmware", &fw.code)?,
                vars: utf8("UEFI variable store", &fw.vars)?,
                template: utf8("UEFI variable store template", &fw.vars_template)?,
                secure: fw.requires_smm,
            }),
            None => None,
        };
        let interface = match &cmd.network {
            Network::User { .. } => {
                let argv = cmd.argv();
                let value_after = |opt: &str, prefix: &str| -> Result<String> {
                    argv.windows(2)
                        .filter(|w| w[0] == opt)
                        .map(|w| w[1].to_string_lossy().into_owned())
                        .find(|v| v.starts_with(prefix))
                        .with_context(|| format!("no {opt} {prefix}… in the qemu argv"))
                };
                Interface::User {
                    netdev: value_after("-netdev", "user,")?,
                    device: {
                        // the card VMK_NIC names (virtio-net-pci or -ccw, e1000…)
                        let prefix = match cmd.nic {
                            NicModel::Virtio => "virtio-net-".to_string(),
                            other => format!("{},", other.device()),
                        };
                        match passthrough_nic_address(cmd) {
                            Some(addr) => format!("{},{addr}", value_after("-device", &prefix)?),
                            None => value_after("-device", &prefix)?,
                        }
                    },
                }
            }
            Network::Bridge { bridge, mac } => Interface::Bridge {
                bridge: bridge.clone(),
                mac: mac.clone(),
                model: cmd.nic.as_str(),
            },
            Network::None => Interface::None,
        };
        let serial = match &cmd.serial {
            Serial::Socket { log, .. } | Serial::Stdio { log } => SerialXml::Pty {
                log: utf8("console log", log)?,
            },
            Serial::Telnet { listen, port, log } => SerialXml::Telnet {
                host: listen.to_string(),
                port: *port,
                log: utf8("console log", log)?,
            },
        };
        let vnc = match (&cmd.vnc_socket, cmd.vnc) {
            (Some(path), _) => Some(Vnc::Socket(utf8("VNC socket", path)?)),
            (None, Some((listen, n))) => Some(Vnc::Tcp {
                listen: listen.to_string(),
                port: vmk_common::layout::vnc_port(n),
            }),
            (None, None) => None,
        };
        let qemu_args = cmd
            .extra_args
            .iter()
            .map(|a| {
                a.to_str().map(str::to_string).with_context(|| {
                    format!("extra qemu argument {a:?} is not UTF-8: libvirt's XML cannot hold it")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Domain {
            domain_type: match cmd.accel {
                Accel::Kvm => "kvm",
                _ => "qemu",
            },
            name: cmd.name.clone(),
            uuid: None,
            vm_dir: utf8("VM directory", &cmd.dir)?,
            memory_kib: cmd.mem.mib() * 1024,
            vcpus: cmd.cpus,
            arch: arch.to_string(),
            machine: cmd.machine.clone(),
            emulator: utf8("qemu binary", &cmd.program)?,
            cpu: cpu_of(cmd.cpu_model.as_deref())?,
            kernel,
            uefi,
            oem_strings: cmd
                .credentials
                .iter()
                .map(|(n, v)| format!("io.systemd.credential:{n}={v}"))
                .collect(),
            no_reboot: cmd.no_reboot,
            scsi_controller: match cmd.disk_bus {
                _ if cmd.disks.is_empty() => None,
                DiskBus::Scsi => Some("virtio-scsi"),
                DiskBus::Lsi => Some("lsilogic"),
                DiskBus::Virtio | DiskBus::Ide | DiskBus::Nvme => None,
            },
            rtc_localtime: cmd.rtc == RtcBase::Localtime,
            disks,
            interface,
            serial,
            vnc,
            guest_agent: cmd.qga_socket.is_some(),
            filesystems: cmd
                .shares
                .iter()
                .map(|sh| {
                    Ok(FilesystemXml {
                        dir: utf8("shared folder", &sh.share.dir)?,
                        tag: sh.share.tag.clone(),
                        readonly: sh.share.readonly,
                        virtiofs: sh.daemon().is_some(),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            tpm_model: cmd.tpm.as_ref().map(|t| t.model),
            qemu_args,
        })
    }

    /// The XML document.
    pub fn to_xml(&self) -> String {
        let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
        self.write(&mut w)
            .expect("writing XML into memory does not fail");
        let mut s = String::from_utf8(w.into_inner()).expect("the XML is made of UTF-8 strings");
        s.push('\n');
        s
    }

    fn write(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        let mut root = w
            .create_element("domain")
            .with_attribute(("type", self.domain_type));
        if !self.qemu_args.is_empty() || matches!(self.interface, Interface::User { .. }) {
            root = root.with_attribute(("xmlns:qemu", QEMU_NS));
        }
        root.write_inner_content(|w| {
            text(w, "name", &self.name)?;
            if let Some(uuid) = &self.uuid {
                text(w, "uuid", uuid)?;
            }
            w.create_element("metadata").write_inner_content(|w| {
                w.create_element("vmk:vm")
                    .with_attribute(("xmlns:vmk", VMK_NS))
                    .with_attribute(("dir", self.vm_dir.as_str()))
                    .write_empty()?;
                Ok(())
            })?;
            w.create_element("memory")
                .with_attribute(("unit", "KiB"))
                .write_text_content(BytesText::new(&self.memory_kib.to_string()))?;
            if self.filesystems.iter().any(|f| f.virtiofs) {
                // virtiofsd works in the guest's memory: shared, as the argv's memfd backend
                w.create_element("memoryBacking").write_inner_content(|w| {
                    w.create_element("source")
                        .with_attribute(("type", "memfd"))
                        .write_empty()?;
                    w.create_element("access")
                        .with_attribute(("mode", "shared"))
                        .write_empty()?;
                    Ok(())
                })?;
            }
            text(w, "vcpu", &self.vcpus.to_string())?;
            if !self.oem_strings.is_empty() {
                w.create_element("sysinfo")
                    .with_attribute(("type", "smbios"))
                    .write_inner_content(|w| {
                        w.create_element("oemStrings").write_inner_content(|w| {
                            for s in &self.oem_strings {
                                text(w, "entry", s)?;
                            }
                            Ok(())
                        })?;
                        Ok(())
                    })?;
            }
            self.write_os(w)?;
            w.create_element("features").write_inner_content(|w| {
                w.create_element("acpi").write_empty()?;
                w.create_element("apic").write_empty()?;
                if self.uefi.as_ref().is_some_and(|u| u.secure) {
                    w.create_element("smm")
                        .with_attribute(("state", "on"))
                        .write_empty()?;
                }
                Ok(())
            })?;
            self.write_cpu(w)?;
            if self.rtc_localtime {
                w.create_element("clock")
                    .with_attribute(("offset", "localtime"))
                    .write_empty()?;
            }
            text(w, "on_poweroff", "destroy")?;
            text(
                w,
                "on_reboot",
                if self.no_reboot { "destroy" } else { "restart" },
            )?;
            text(w, "on_crash", "destroy")?;
            w.create_element("devices")
                .write_inner_content(|w| self.write_devices(w))?;
            self.write_qemu_commandline(w)
        })?;
        Ok(())
    }

    fn write_os(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        w.create_element("os").write_inner_content(|w| {
            w.create_element("type")
                .with_attribute(("arch", self.arch.as_str()))
                .with_attribute(("machine", self.machine.as_str()))
                .write_text_content(BytesText::new("hvm"))?;
            if let Some(u) = &self.uefi {
                w.create_element("loader")
                    .with_attribute(("readonly", "yes"))
                    .with_attribute(("secure", if u.secure { "yes" } else { "no" }))
                    .with_attribute(("type", "pflash"))
                    .write_text_content(BytesText::new(&u.code))?;
                w.create_element("nvram")
                    .with_attribute(("template", u.template.as_str()))
                    .write_text_content(BytesText::new(&u.vars))?;
            }
            if let Some((kernel, initrd, cmdline)) = &self.kernel {
                text(w, "kernel", kernel)?;
                if let Some(i) = initrd {
                    text(w, "initrd", i)?;
                }
                if let Some(c) = cmdline {
                    text(w, "cmdline", c)?;
                }
            }
            if !self.oem_strings.is_empty() {
                w.create_element("smbios")
                    .with_attribute(("mode", "sysinfo"))
                    .write_empty()?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn write_cpu(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        match &self.cpu {
            Cpu::Default => {}
            Cpu::HostPassthrough => {
                w.create_element("cpu")
                    .with_attribute(("mode", "host-passthrough"))
                    .write_empty()?;
            }
            Cpu::Custom { model, features } => {
                w.create_element("cpu")
                    .with_attribute(("mode", "custom"))
                    .with_attribute(("match", "exact"))
                    .write_inner_content(|w| {
                        w.create_element("model")
                            .with_attribute(("fallback", "forbid"))
                            .write_text_content(BytesText::new(model))?;
                        for (policy, name) in features {
                            w.create_element("feature")
                                .with_attribute(("policy", *policy))
                                .with_attribute(("name", name.as_str()))
                                .write_empty()?;
                        }
                        Ok(())
                    })?;
            }
        }
        Ok(())
    }

    fn write_devices(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        text(w, "emulator", &self.emulator)?;
        if let Some(model) = self.scsi_controller {
            w.create_element("controller")
                .with_attribute(("type", "scsi"))
                .with_attribute(("index", "0"))
                .with_attribute(("model", model))
                .write_empty()?;
        }
        for d in &self.disks {
            write_disk(w, d)?;
        }
        if let Interface::Bridge { bridge, mac, model } = &self.interface {
            w.create_element("interface")
                .with_attribute(("type", "bridge"))
                .write_inner_content(|w| {
                    w.create_element("source")
                        .with_attribute(("bridge", bridge.as_str()))
                        .write_empty()?;
                    w.create_element("mac")
                        .with_attribute(("address", mac.as_str()))
                        .write_empty()?;
                    w.create_element("model")
                        .with_attribute(("type", *model))
                        .write_empty()?;
                    Ok(())
                })?;
        }
        let (kind, log) = match &self.serial {
            SerialXml::Pty { log } => ("pty", log),
            SerialXml::Telnet { log, .. } => ("tcp", log),
        };
        w.create_element("serial")
            .with_attribute(("type", kind))
            .write_inner_content(|w| {
                if let SerialXml::Telnet { host, port, .. } = &self.serial {
                    w.create_element("source")
                        .with_attribute(("mode", "bind"))
                        .with_attribute(("host", host.as_str()))
                        .with_attribute(("service", port.to_string().as_str()))
                        .write_empty()?;
                    w.create_element("protocol")
                        .with_attribute(("type", "telnet"))
                        .write_empty()?;
                }
                w.create_element("log")
                    .with_attribute(("file", log.as_str()))
                    .with_attribute(("append", "on"))
                    .write_empty()?;
                w.create_element("target")
                    .with_attribute(("port", "0"))
                    .write_empty()?;
                Ok(())
            })?;
        for fs in &self.filesystems {
            w.create_element("filesystem")
                .with_attribute(("type", "mount"))
                .with_attribute((
                    "accessmode",
                    if fs.virtiofs { "passthrough" } else { "squash" },
                ))
                .write_inner_content(|w| {
                    if fs.virtiofs {
                        w.create_element("driver")
                            .with_attribute(("type", "virtiofs"))
                            .write_empty()?;
                    }
                    w.create_element("source")
                        .with_attribute(("dir", fs.dir.as_str()))
                        .write_empty()?;
                    w.create_element("target")
                        .with_attribute(("dir", fs.tag.as_str()))
                        .write_empty()?;
                    if fs.readonly {
                        w.create_element("readonly").write_empty()?;
                    }
                    Ok(())
                })?;
        }
        if self.guest_agent {
            w.create_element("channel")
                .with_attribute(("type", "unix"))
                .write_inner_content(|w| {
                    w.create_element("target")
                        .with_attribute(("type", "virtio"))
                        .with_attribute(("name", "org.qemu.guest_agent.0"))
                        .write_empty()?;
                    Ok(())
                })?;
        }
        if let Some(model) = self.tpm_model {
            w.create_element("tpm")
                .with_attribute(("model", model))
                .write_inner_content(|w| {
                    w.create_element("backend")
                        .with_attribute(("type", "emulator"))
                        .with_attribute(("version", "2.0"))
                        .write_empty()?;
                    Ok(())
                })?;
        }
        if let Some(vnc) = &self.vnc {
            let g = w.create_element("graphics").with_attribute(("type", "vnc"));
            match vnc {
                Vnc::Tcp { listen, port } => g
                    .with_attribute(("port", port.to_string().as_str()))
                    .with_attribute(("autoport", "no"))
                    .with_attribute(("listen", listen.as_str()))
                    .write_empty()?,
                Vnc::Socket(path) => g.with_attribute(("socket", path.as_str())).write_empty()?,
            };
            w.create_element("video").write_inner_content(|w| {
                w.create_element("model")
                    .with_attribute(("type", "vga"))
                    .write_empty()?;
                Ok(())
            })?;
        }
        // vmk's argv has no balloon, no USB and no tablet: neither does the domain
        w.create_element("controller")
            .with_attribute(("type", "usb"))
            .with_attribute(("model", "none"))
            .write_empty()?;
        w.create_element("memballoon")
            .with_attribute(("model", "none"))
            .write_empty()?;
        Ok(())
    }

    fn write_qemu_commandline(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        let mut args: Vec<&str> = Vec::new();
        if let Interface::User { netdev, device } = &self.interface {
            args.extend(["-netdev", netdev, "-device", device]);
        }
        args.extend(self.qemu_args.iter().map(String::as_str));
        if args.is_empty() {
            return Ok(());
        }
        w.create_element("qemu:commandline")
            .write_inner_content(|w| {
                for a in args {
                    w.create_element("qemu:arg")
                        .with_attribute(("value", a))
                        .write_empty()?;
                }
                Ok(())
            })?;
        Ok(())
    }
}

/// Names every field of [`QemuCommand`] (no `..`): a field added to the command line
/// builder does not compile here until the domain XML says what it becomes, so the argv and
/// the XML cannot drift apart. Add it to [`Domain::from_command`] (and to the parity test in
/// tests/xml.rs), or, when libvirt does it its own way, to the list of those below.
fn every_field_has_an_answer(cmd: &QemuCommand) {
    let QemuCommand {
        program: _,
        dir: _,
        name: _,
        machine: _,
        accel: _,
        cpu_model: _,
        arch: _,
        firmware: _,
        tpm: _,
        mem: _,
        cpus: _,
        vnc: _,
        vnc_socket: _,
        serial: _,
        disk_bus: _,
        disks: _,
        cdroms: _,
        floppy: _,
        network: _,
        nic: _,
        rtc: _,
        kernel: _,
        credentials: _,
        shares: _,
        no_reboot: _,
        extra_args: _,
        qga_socket: _,
        // libvirt's own business: it runs qemu, its monitor, pidfile, sandbox and user
        pidfile: _,
        daemonize: _,
        sandbox: _,
        runas: _,
        qmp_socket: _,
    } = cmd;
}

fn text(w: &mut Writer<Vec<u8>>, name: &str, value: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(value))?;
    Ok(())
}

fn write_disk(w: &mut Writer<Vec<u8>>, d: &DiskXml) -> io::Result<()> {
    w.create_element("disk")
        .with_attribute(("type", "file"))
        .with_attribute(("device", d.device))
        .write_inner_content(|w| {
            let mut driver = w
                .create_element("driver")
                .with_attribute(("name", "qemu"))
                .with_attribute(("type", d.format));
            if let Some(cache) = d.cache {
                driver = driver
                    .with_attribute(("cache", cache))
                    .with_attribute(("discard", "unmap"));
            }
            driver.write_empty()?;
            w.create_element("source")
                .with_attribute(("file", d.file.as_str()))
                .write_empty()?;
            w.create_element("target")
                .with_attribute(("dev", d.dev.as_str()))
                .with_attribute(("bus", d.bus))
                .write_empty()?;
            if d.device == "cdrom" {
                w.create_element("readonly").write_empty()?;
            }
            if let Some(order) = d.boot_order {
                w.create_element("boot")
                    .with_attribute(("order", order.to_string().as_str()))
                    .write_empty()?;
            }
            Ok(())
        })?;
    Ok(())
}

/// The VM directory in vmk's metadata of a domain's XML (`virsh dumpxml`), if vmk defined it.
pub fn vmk_dir_of(xml: &str) -> Result<Option<String>> {
    Ok(nodes(xml)?
        .into_iter()
        .find(|n| n.path.starts_with("domain/metadata/") && n.path.ends_with(":vm"))
        .and_then(|n| n.attrs.get("dir").cloned()))
}

/// One element of a parsed document: where it is, its attributes, its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Element names from the root, joined with `/` (`domain/devices/disk/source`).
    pub path: String,
    /// Attributes, unescaped, by qualified name.
    pub attrs: std::collections::BTreeMap<String, String>,
    /// Text content, unescaped and trimmed (empty when none).
    pub text: String,
}

/// Every element of `xml`, in document order (for checks: what libvirt kept of a domain,
/// what a domain holds).
pub fn nodes(xml: &str) -> Result<Vec<Node>> {
    use quick_xml::events::{BytesStart, Event as E};
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut out: Vec<Node> = Vec::new();
    let open = |e: &BytesStart, stack: &[(String, usize)], out: &mut Vec<Node>| -> Result<String> {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let mut path: Vec<&str> = stack.iter().map(|(n, _)| n.as_str()).collect();
        path.push(&name);
        let mut attrs = std::collections::BTreeMap::new();
        for a in e.attributes() {
            let a = a.context("reading XML attributes")?;
            attrs.insert(
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                a.unescape_value().context("reading XML")?.into_owned(),
            );
        }
        out.push(Node {
            path: path.join("/"),
            attrs,
            text: String::new(),
        });
        Ok(name)
    };
    loop {
        match reader.read_event().context("reading XML")? {
            E::Start(e) => {
                let name = open(&e, &stack, &mut out)?;
                stack.push((name, out.len() - 1));
            }
            E::Empty(e) => {
                open(&e, &stack, &mut out)?;
            }
            E::End(_) => {
                if let Some((_, i)) = stack.pop() {
                    out[i].text = out[i].text.trim().to_string();
                }
            }
            E::Text(t) => {
                if let Some((_, i)) = stack.last() {
                    let s = t.decode().context("reading XML")?;
                    out[*i].text.push_str(&s);
                }
            }
            E::GeneralRef(r) => {
                if let Some((_, i)) = stack.last() {
                    let entity = format!("&{};", r.decode().context("reading XML")?);
                    let s = quick_xml::escape::unescape(&entity).context("reading XML")?;
                    out[*i].text.push_str(&s);
                }
            }
            E::Eof => return Ok(out),
            _ => {}
        }
    }
}

/// The directory of a storage pool, from `virsh pool-dumpxml` (`<pool><target><path>`).
pub fn pool_target_path(xml: &str) -> Result<Option<String>> {
    text_at(xml, &["pool", "target", "path"])
}

/// The text of the first element at `path` (element names from the root).
pub fn text_at(xml: &str, path: &[&str]) -> Result<Option<String>> {
    let path = path.join("/");
    Ok(nodes(xml)?
        .into_iter()
        .find(|n| n.path == path)
        .map(|n| n.text))
}

/// Where the passed-through NIC of user networking sits: a PCI slot of the root bus that
/// libvirt leaves free (it puts VGA in slot 1 and endpoints behind root ports from slot 2
/// on q35, in slots from 2 upwards on pc), so that qemu's first-free choice cannot take the
/// slot libvirt gave a device of its own ("slot 1 function 0 not available for VGA").
/// None on s390x, whose channel devices have no PCI address.
fn passthrough_nic_address(cmd: &QemuCommand) -> Option<&'static str> {
    if vmk_common::qemu::arch::spec(&cmd.arch).virtio == "ccw" {
        None // s390x: channel devices have no PCI address
    } else if is_pc(&cmd.machine) || cmd.machine.starts_with("pseries") {
        Some("bus=pci.0,addr=0x1c")
    } else {
        Some("bus=pcie.0,addr=0x1c")
    }
}

/// Whether the machine type is the i440fx `pc` (IDE buses) rather than q35 (AHCI).
fn is_pc(machine: &str) -> bool {
    machine == "pc" || machine.starts_with("pc-i440fx")
}

/// The `n`-th device name of a bus: `vda`, `sdb`, `hdc`… (`sdaa` after `sdz`).
fn dev_name(prefix: &str, n: usize) -> String {
    let mut suffix = String::new();
    let mut n = n + 1;
    while n > 0 {
        n -= 1;
        suffix.insert(0, char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    format!("{prefix}{suffix}")
}

fn disks_of(cmd: &QemuCommand) -> Result<Vec<DiskXml>> {
    let ide_bus = if is_pc(&cmd.machine) { "ide" } else { "sata" };
    let ide_prefix = if is_pc(&cmd.machine) { "hd" } else { "sd" };
    let (bus, prefix) = match cmd.disk_bus {
        DiskBus::Virtio => ("virtio", "vd"),
        DiskBus::Scsi | DiskBus::Lsi => ("scsi", "sd"),
        DiskBus::Ide => (ide_bus, ide_prefix),
        DiskBus::Nvme => bail!(
            "VMK_DISK_BUS=nvme has no libvirt disk element before libvirt 10: \
             set VMK_DISK_BUS to scsi or virtio for libvirt"
        ),
    };
    // Names are unique across buses: sd* is shared by scsi disks and sata CD-ROMs.
    let mut next = std::collections::HashMap::<&str, usize>::new();
    let mut name = |prefix: &'static str| {
        let n = next.entry(prefix).or_default();
        *n += 1;
        dev_name(prefix, *n - 1)
    };
    let mut out = Vec::new();
    for (i, d) in cmd.disks.iter().enumerate() {
        out.push(DiskXml {
            device: "disk",
            file: utf8(&format!("disk{i}"), &d.file)?,
            format: d.format.as_str(),
            cache: Some(d.cache.as_str()),
            dev: name(prefix),
            bus,
            boot_order: (i == 0 && cmd.kernel.is_none()).then_some(1),
        });
    }
    // architectures without IDE (arm, ppc64, s390x) have their CD-ROMs on SCSI, as vmk's argv
    let (cd_bus, cd_prefix) = if vmk_common::qemu::arch::spec(&cmd.arch).ide {
        (ide_bus, ide_prefix)
    } else {
        ("scsi", "sd")
    };
    for cd in &cmd.cdroms {
        out.push(DiskXml {
            device: "cdrom",
            file: utf8("CD-ROM image", cd)?,
            format: "raw",
            cache: None,
            dev: name(cd_prefix),
            bus: cd_bus,
            boot_order: None,
        });
    }
    if let Some(fd) = &cmd.floppy {
        out.push(DiskXml {
            device: "floppy",
            file: utf8("floppy image", fd)?,
            format: "raw",
            cache: None,
            dev: "fda".into(),
            bus: "fdc",
            boot_order: None,
        });
    }
    Ok(out)
}

/// libvirt's cpu element for vmk's `-cpu` value (`host`, or `MODEL,+flag,-flag,flag=on`).
fn cpu_of(model: Option<&str>) -> Result<Cpu> {
    let Some(model) = model else {
        return Ok(Cpu::Default);
    };
    let mut parts = model.split(',');
    let name = parts.next().unwrap_or_default();
    if name == "host" && model == "host" {
        return Ok(Cpu::HostPassthrough);
    }
    let mut features = Vec::new();
    for p in parts {
        let (policy, f) = if let Some(f) = p.strip_prefix('+') {
            ("require", f)
        } else if let Some(f) = p.strip_prefix('-') {
            ("disable", f)
        } else if let Some(f) = p.strip_suffix("=on") {
            ("require", f)
        } else if let Some(f) = p.strip_suffix("=off") {
            ("disable", f)
        } else {
            bail!("VMK_CPU_MODEL={model}: libvirt cannot say {p:?} (use MODEL,+flag,-flag)")
        };
        features.push((policy, f.to_string()));
    }
    Ok(Cpu::Custom {
        model: name.to_string(),
        features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_count_like_the_kernel() {
        assert_eq!(dev_name("vd", 0), "vda");
        assert_eq!(dev_name("sd", 25), "sdz");
        assert_eq!(dev_name("sd", 26), "sdaa");
    }

    #[test]
    fn cpu_models_with_flags() {
        assert_eq!(cpu_of(Some("host")).unwrap(), Cpu::HostPassthrough);
        assert_eq!(
            cpu_of(Some("qemu64,+ssse3,-x2apic,pdpe1gb=on")).unwrap(),
            Cpu::Custom {
                model: "qemu64".into(),
                features: vec![
                    ("require", "ssse3".into()),
                    ("disable", "x2apic".into()),
                    ("require", "pdpe1gb".into())
                ]
            }
        );
        assert!(cpu_of(Some("qemu64,level=7"))
            .unwrap_err()
            .to_string()
            .contains("\"level=7\""));
    }
}
