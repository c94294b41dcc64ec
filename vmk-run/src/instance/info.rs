//! What `vmk info` shows about an instance: gathered once into [`Info`] (also its JSON),
//! then laid out as aligned lines.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use vmk_common::config::{Accel, DiskFormat, NetType, PortForward, ShareFs, VmConfig};
use vmk_common::human;
use vmk_common::layout::{KEY_FILE, PUBLIC_KEY_FILE};
use vmk_common::qemu::{self, SharedFolder};
use vmk_common::qmp;
use vmk_common::state::VmStatus;
use vmk_common::text;

use super::{console_socket, guess_format, seed_path, vnc_socket, Instance};

/// State of an instance as `vmk info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// VMK_NAME (or the directory's name).
    pub name: String,
    /// VMK_TAG.
    pub tag: Option<String>,
    /// The VM directory.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The image this instance boots.
    pub image: PathBuf,
    /// Whether it exists.
    pub image_exists: bool,
    /// Its format (configured, else detected, else guessed from the name).
    pub image_format: Option<String>,
    /// Its apparent size in bytes.
    pub image_size: Option<u64>,
    /// Its allocated size in bytes.
    pub image_allocated: Option<u64>,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// CPUs.
    pub cpus: u32,
    /// VMK_ACCEL as configured.
    pub accel: String,
    /// The accelerator qemu will get (auto resolved); for a running VM, the one it got.
    pub accel_resolved: String,
    /// Why `auto` resolves to tcg on this host, when it does.
    pub accel_note: Option<String>,
    /// The qemu binary (None when none is found).
    pub qemu: Option<PathBuf>,
    /// VMK_NET_TYPE.
    pub net: String,
    /// VMK_BRIDGE when bridged.
    pub bridge: Option<String>,
    /// The derived MAC.
    pub mac: String,
    /// VMK_IP.
    pub ip: Option<IpAddr>,
    /// The guest's address as far as vmk can know it, and where that came from.
    pub guest_ip: Option<GuestIp>,
    /// VMK_HOSTNAME.
    pub hostname: Option<String>,
    /// VMK_VNC.
    pub vnc_display: u8,
    /// VMK_LISTEN.
    pub listen: IpAddr,
    /// Serial console TCP port of `vmk run` (VMK_CONSOLE=telnet).
    pub console_port: Option<u16>,
    /// Serial console unix socket of `vmk run` (VMK_CONSOLE=socket, the default).
    pub console_socket: Option<PathBuf>,
    /// VNC port (unless VMK_VNC_SOCKET=yes).
    pub vnc_port: Option<u16>,
    /// VNC unix socket (VMK_VNC_SOCKET=yes).
    pub vnc_socket: Option<PathBuf>,
    /// Forwarded ssh port (user networking).
    pub ssh_port: Option<u16>,
    /// `vm-key` present.
    pub ssh_key: bool,
    /// `vm-key.pub` present.
    pub ssh_pubkey: bool,
    /// The install medium attached as a CD-ROM (VMK_ISO, resolved as `run` does: as given,
    /// then in VMK_ISO_DIR), and whether it exists.
    pub iso: Option<PathBuf>,
    /// Whether [`Info::iso`] exists (`run` refuses to start without it).
    pub iso_exists: bool,
    /// VMK_KERNEL: the kernel booted directly (None: the VM boots from its disk).
    pub kernel: Option<PathBuf>,
    /// VMK_INITRD.
    pub initrd: Option<PathBuf>,
    /// VMK_APPEND: the kernel command line.
    pub append: Option<String>,
    /// The cloud-init seed attached as a CD (VMK_CLOUD_INIT=yes), made when the VM starts.
    pub cloud_init_seed: Option<PathBuf>,
    /// Host folders shared with the guest (VMK_SHARE).
    pub shares: Vec<ShareInfo>,
    /// VMK_PORTS forwards (user networking).
    pub ports: Vec<PortForward>,
    /// running, stopped or stale.
    pub state: String,
    /// qemu's pid when running (or the stale pidfile's pid).
    pub pid: Option<u32>,
    /// qemu's run state over QMP when running (`running`, `paused`…), or why it is unknown.
    pub qmp_status: Option<String>,
    /// The pidfile.
    pub pidfile: PathBuf,
    /// The console log.
    pub console_log: PathBuf,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// The libvirt domain `vmk libvirt define` made of this VM directory, if any.
    pub libvirt: Option<LibvirtInfo>,
}

/// The guest's address and how vmk knows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuestIp {
    /// The address.
    pub addr: IpAddr,
    /// Where vmk has it from.
    pub source: GuestIpSource,
}

/// Where [`GuestIp`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestIpSource {
    /// qemu's user networking gives every guest the same address.
    UserNet,
    /// VMK_IP.
    VmkIp,
    /// The host's neighbour table, by the VM's MAC.
    Neighbour,
}

/// Where the guest can be found: under user networking the address qemu gives every guest;
/// on a bridge VMK_IP, else the host's neighbour table by the VM's MAC (known once the
/// guest has talked to the host).
fn guest_ip(cfg: &vmk_common::config::VmConfig) -> Option<GuestIp> {
    match cfg.net_type {
        NetType::User => Some(GuestIp {
            addr: IpAddr::V4(qemu::USER_NET_GUEST_ADDR),
            source: GuestIpSource::UserNet,
        }),
        NetType::Bridge => cfg
            .ip
            .map(|addr| GuestIp {
                addr,
                source: GuestIpSource::VmkIp,
            })
            .or_else(|| {
                let found = vmk_common::ssh::target::neighbour_for_mac(&cfg.mac());
                found
                    .unwrap_or_else(|e| {
                        log::warn!("reading the neighbour table: {e:#}");
                        None
                    })
                    .map(|addr| GuestIp {
                        addr,
                        source: GuestIpSource::Neighbour,
                    })
            }),
        NetType::None => None,
    }
}

/// A VM directory's libvirt domain as `vmk info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtInfo {
    /// The domain's name.
    pub domain: String,
    /// The connection.
    pub uri: String,
    /// `running`, `shut off`…, or `unknown (why)`.
    pub state: String,
}

/// One share as `info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShareInfo {
    /// The host folder.
    pub dir: PathBuf,
    /// The mount tag.
    pub tag: String,
    /// Read-only for the guest.
    pub readonly: bool,
    /// How it reaches the guest: `virtiofs` or `virtio-9p` (VMK_SHARE_FS).
    pub transport: &'static str,
    /// Why that transport (the virtiofsd, read-only, no virtiofsd installed…).
    pub transport_reason: String,
    /// Where guests made by `vmk bootstrap` mount it.
    pub guest_dir: String,
    /// The command that mounts it in other guests.
    pub mount: String,
}

impl ShareInfo {
    fn of(f: &SharedFolder) -> ShareInfo {
        let s = &f.share;
        ShareInfo {
            dir: s.dir.clone(),
            tag: s.tag.clone(),
            readonly: s.readonly,
            transport: f.fs().transport_name(),
            transport_reason: f.reason.clone(),
            guest_dir: s.guest_dir(),
            mount: s.mount_command(f.fs()),
        }
    }
}

/// The shares as `info` shows them: each with its transport and why; where
/// VMK_SHARE_FS=virtiofs cannot be had (`run` refuses to start then), virtiofs with the
/// reason it cannot run, rather than no `info` at all.
fn share_infos(cfg: &VmConfig, image: &Path, host: &dyn qemu::Host) -> Vec<ShareInfo> {
    match qemu::shares::plan(cfg, image, host) {
        Ok(shares) => shares.iter().map(ShareInfo::of).collect(),
        Err(e) => cfg
            .shares
            .iter()
            .map(|s| ShareInfo {
                dir: s.dir.clone(),
                tag: s.tag.clone(),
                readonly: s.readonly,
                transport: ShareFs::Virtiofs.transport_name(),
                transport_reason: e.to_string(),
                guest_dir: s.guest_dir(),
                mount: s.mount_command(ShareFs::Virtiofs),
            })
            .collect(),
    }
}

/// Gathers [`Info`] about `inst`.
pub fn info(inst: &Instance) -> Result<Info> {
    let cfg = &inst.cfg;
    let meta = fs::metadata(&inst.image).ok();
    let detected = meta
        .as_ref()
        .and_then(|_| DiskFormat::detect(&inst.image).ok());
    // disk0 boots in the configured format; another image (snap-<disk0>, which may be a
    // qcow2 overlay where reflink is impossible) boots in the format it has
    let image_format = if inst.is_disk0() {
        cfg.disk0_format.or(detected)
    } else {
        detected.or(cfg.disk0_format)
    }
    .unwrap_or_else(|| guess_format(&inst.image));
    let host = qemu::RealHost;
    let arch = cfg.arch.as_deref().unwrap_or(qemu::DEFAULT_ARCH);
    let qemu_bin = qemu::select_qemu(cfg.qemu.as_deref(), arch, &host).ok();
    // why `auto` is not kvm goes on the accel line, not in a warning on every `info`
    let (resolved, accel_note) = match &qemu_bin {
        Some(q) => qemu::choose_accel(cfg.accel, &host, q, cfg.cpu_model.as_deref(), arch),
        None => (cfg.accel, None),
    };
    let (state_name, pid, qmp_status, running_kvm) = match inst.status()? {
        VmStatus::Running { pid } => {
            let (status, kvm) =
                match qmp::Qmp::connect(&inst.paths.qmp_socket, Duration::from_secs(3)) {
                    Ok(mut q) => (
                        q.query_status()
                            .map(|(s, _)| s)
                            .unwrap_or_else(|e| format!("unknown ({e:#})")),
                        q.query_kvm().ok(),
                    ),
                    Err(e) => (format!("unknown ({e:#})"), None),
                };
            ("running", Some(pid), Some(status), kvm)
        }
        VmStatus::Stale { pid } => ("stale", Some(pid), None, None),
        VmStatus::Stopped => ("stopped", None, None, None),
    };
    // a running VM's accelerator is what its qemu got (`auto` may have started it again
    // under tcg after kvm failed), not what resolving the config would choose now
    let (resolved, accel_note) = match running_kvm {
        Some(true) => (Accel::Kvm, None),
        Some(false) => (Accel::Tcg, accel_note),
        None => (resolved, accel_note),
    };
    use std::os::unix::fs::MetadataExt;
    let iso = cfg.iso();
    Ok(Info {
        name: cfg.display_name(),
        tag: cfg.tag.clone(),
        dir: cfg.dir.clone(),
        config: cfg.config_file.clone(),
        image: inst.image.clone(),
        image_exists: meta.is_some(),
        image_format: Some(image_format.as_str().to_string()),
        image_size: meta.as_ref().map(|m| m.len()),
        image_allocated: meta.as_ref().map(|m| m.blocks() * 512),
        mem_mib: cfg.mem.mib(),
        cpus: cfg.cpus,
        accel: cfg.accel.as_str().to_string(),
        accel_resolved: resolved.as_str().to_string(),
        accel_note,
        qemu: qemu_bin,
        net: net_name(cfg.net_type).to_string(),
        bridge: (cfg.net_type == NetType::Bridge).then(|| cfg.bridge.clone()),
        mac: cfg.mac(),
        ip: cfg.ip,
        guest_ip: guest_ip(cfg),
        hostname: cfg.hostname.clone(),
        vnc_display: cfg.vnc,
        listen: cfg.listen,
        console_port: cfg.console_telnet.then(|| cfg.telnet_port()),
        console_socket: (!cfg.console_telnet).then(|| console_socket(inst)),
        vnc_port: (!cfg.vnc_socket).then(|| cfg.vnc_port()),
        vnc_socket: cfg.vnc_socket.then(|| vnc_socket(inst)),
        ssh_port: (cfg.net_type == NetType::User).then(|| cfg.ssh_port()),
        ssh_key: cfg.dir.join(KEY_FILE).exists(),
        ssh_pubkey: cfg.dir.join(PUBLIC_KEY_FILE).exists(),
        iso_exists: iso.as_deref().is_some_and(|p| p.exists()),
        iso,
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        append: cfg.append.clone(),
        cloud_init_seed: cfg.cloud_init.then(|| seed_path(cfg)),
        shares: share_infos(cfg, &inst.image, &host),
        ports: if cfg.net_type == NetType::User {
            cfg.ports.clone()
        } else {
            Vec::new()
        },
        state: state_name.to_string(),
        pid,
        qmp_status,
        pidfile: inst.paths.pidfile.clone(),
        console_log: inst.paths.console_log.clone(),
        qmp_socket: inst.paths.qmp_socket.clone(),
        libvirt: libvirt_info(cfg),
    })
}

/// The libvirt domain of the VM directory (nothing is asked of libvirt without a record).
fn libvirt_info(cfg: &vmk_common::config::VmConfig) -> Option<LibvirtInfo> {
    match vmk_common::libvirt::domain_for(&cfg.dir) {
        Ok(d) => d.map(|d| LibvirtInfo {
            domain: d.record.domain,
            uri: d.record.uri,
            state: d.state.to_string(),
        }),
        Err(e) => {
            log::warn!("{e:#}");
            None
        }
    }
}

/// The `ip` line: the guest's address and where it comes from.
fn guest_ip_line(i: &Info) -> String {
    match &i.guest_ip {
        Some(g) => match g.source {
            GuestIpSource::UserNet => format!(
                "{} (user networking: the guest's side; the host reaches it through the \
                 forwarded ports)",
                g.addr
            ),
            GuestIpSource::Neighbour => format!("{} (neighbour table, MAC {})", g.addr, i.mac),
            GuestIpSource::VmkIp => format!("{} (VMK_IP)", g.addr),
        },
        None if i.bridge.is_some() => format!(
            "- (MAC {} not in the neighbour table yet; set VMK_IP or VMK_HOSTNAME)",
            i.mac
        ),
        None => "-".into(),
    }
}

fn net_name(n: NetType) -> &'static str {
    match n {
        NetType::User => "user",
        NetType::Bridge => "bridge",
        NetType::None => "none",
    }
}

/// `info` as aligned `key: value` lines. Every value is one escaped line
/// ([`text::escaped_line`]): names, tags, paths and qemu's answers come from configs,
/// directories and the guest, and print as they are, never as terminal controls.
pub fn info_lines(i: &Info) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let size = match (i.image_size, i.image_allocated) {
        (Some(s), Some(a)) => format!("{} (allocated {})", human::size(s), human::size(a)),
        _ => "missing".into(),
    };
    let st = match (i.state.as_str(), i.pid) {
        ("running", Some(pid)) => format!(
            "running, pid {pid}, qemu {}",
            i.qmp_status.clone().unwrap_or_default()
        ),
        ("stale", Some(pid)) => format!("stopped (stale pidfile names pid {pid})"),
        (s, _) => s.to_string(),
    };
    let rows: Vec<(&str, String)> = vec![
        ("name", i.name.clone()),
        ("tag", opt(i.tag.clone())),
        ("state", st),
        ("dir", i.dir.display().to_string()),
        ("config", i.config.display().to_string()),
        (
            "image",
            format!(
                "{} ({}, {size})",
                i.image.display(),
                i.image_format.clone().unwrap_or_default()
            ),
        ),
        ("memory", format!("{} MiB", i.mem_mib)),
        ("cpus", i.cpus.to_string()),
        (
            "accel",
            match &i.accel_note {
                Some(why) => format!("{} → {} ({why})", i.accel, i.accel_resolved),
                None => format!("{} → {}", i.accel, i.accel_resolved),
            },
        ),
        (
            "qemu",
            opt(i.qemu.as_ref().map(|p| p.display().to_string())),
        ),
        (
            "net",
            match &i.bridge {
                Some(b) => format!("bridge {b}"),
                None => i.net.clone(),
            },
        ),
        ("mac", i.mac.clone()),
        ("ip", guest_ip_line(i)),
        ("hostname", opt(i.hostname.clone())),
        (
            "console",
            match (&i.console_socket, i.console_port) {
                (Some(s), _) => format!("socket {}", s.display()),
                (None, Some(p)) => {
                    format!("telnet {}:{p} (open to every local user)", i.listen)
                }
                (None, None) => "-".into(),
            },
        ),
        (
            "vnc",
            match (&i.vnc_socket, i.vnc_port) {
                (Some(s), _) => format!("socket {}", s.display()),
                (None, Some(p)) => format!("{}:{} (port {p})", i.listen, i.vnc_display),
                (None, None) => "-".into(),
            },
        ),
        (
            "ssh",
            opt(i.ssh_port.map(|p| format!("{}:{p} → guest 22", i.listen))),
        ),
        (
            "ssh key",
            match (i.ssh_key, i.ssh_pubkey) {
                (true, true) => format!("{KEY_FILE}, {PUBLIC_KEY_FILE}"),
                (false, false) => "none (`vmk sshkeygen`)".into(),
                (true, false) => format!("{KEY_FILE} only ({PUBLIC_KEY_FILE} missing)"),
                (false, true) => format!("{PUBLIC_KEY_FILE} only ({KEY_FILE} missing)"),
            },
        ),
        (
            "iso",
            opt(i.iso.as_ref().map(|p| {
                let missing = if i.iso_exists { "" } else { " (missing)" };
                format!("{}{missing}", p.display())
            })),
        ),
        (
            "kernel",
            match (&i.kernel, &i.initrd) {
                (None, _) => "- (boots from its disk)".into(),
                (Some(k), None) => k.display().to_string(),
                (Some(k), Some(r)) => format!("{} (initrd {})", k.display(), r.display()),
            },
        ),
        ("append", opt(i.append.clone())),
        (
            "cloud-init",
            opt(i
                .cloud_init_seed
                .as_ref()
                .map(|p| format!("seed {}", p.display()))),
        ),
        ("console log", i.console_log.display().to_string()),
    ];
    let mut rows = rows;
    if let Some(l) = &i.libvirt {
        rows.push((
            "libvirt",
            format!("domain {} at {}: {}", l.domain, l.uri, l.state),
        ));
    }
    let shares = i.shares.iter().map(|s| {
        (
            "share",
            format!(
                "{} → {} ({}, tag {}, {}: {}; elsewhere: {})",
                s.dir.display(),
                s.guest_dir,
                if s.readonly { "ro" } else { "rw" },
                s.tag,
                s.transport,
                s.transport_reason,
                s.mount
            ),
        )
    });
    let ports = i.ports.iter().map(|f| {
        (
            "port",
            format!(
                "{}:{} → guest {} ({})",
                i.listen,
                f.host,
                f.guest,
                f.protocol()
            ),
        )
    });
    rows.extend(shares);
    rows.extend(ports);
    rows.into_iter()
        .map(|(k, v)| format!("{:<12} {}", format!("{k}:"), text::escaped_line(&v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "vm\x1b]0;owned\x07\x1b[2J";

    fn info_named(name: &str) -> Info {
        let dir = PathBuf::from(format!("/vms/{name}"));
        Info {
            name: name.into(),
            tag: Some(format!("tag {name}")),
            dir: dir.clone(),
            config: dir.join("vm-config"),
            image: dir.join("disk0.img"),
            image_exists: true,
            image_format: Some("raw".into()),
            image_size: Some(1 << 20),
            image_allocated: Some(4096),
            mem_mib: 512,
            cpus: 1,
            accel: "auto".into(),
            accel_resolved: "tcg".into(),
            accel_note: None,
            qemu: None,
            net: "user".into(),
            bridge: None,
            mac: "52:54:00:00:00:01".into(),
            ip: None,
            guest_ip: None,
            hostname: Some(name.into()),
            vnc_display: 1,
            listen: IpAddr::from([127, 0, 0, 1]),
            console_port: None,
            console_socket: Some(dir.join("disk0.img.con")),
            vnc_port: Some(5901),
            vnc_socket: None,
            ssh_port: Some(2201),
            ssh_key: false,
            ssh_pubkey: false,
            iso: None,
            iso_exists: false,
            kernel: None,
            initrd: None,
            append: None,
            cloud_init_seed: None,
            shares: Vec::new(),
            ports: Vec::new(),
            state: "running".into(),
            pid: Some(42),
            qmp_status: Some(format!("unknown ({name}\nsecond line)")),
            pidfile: dir.join("disk0.img.pid"),
            console_log: dir.join("disk0.img.log"),
            qmp_socket: dir.join("disk0.img.qmp"),
            libvirt: None,
        }
    }

    #[test]
    fn info_shows_hostile_names_escaped_one_line_each() {
        let lines = info_lines(&info_named(HOSTILE));
        let all = lines.join("\n");
        assert!(!all.contains('\x1b') && !all.contains('\x07'), "{all}");
        assert!(
            all.contains("name:        vm\\x1b]0;owned\\x07\\x1b[2J"),
            "{all}"
        );
        assert!(all.contains("dir:         /vms/vm\\x1b]0;owned"), "{all}");
        // a value's newline cannot start a line that looks like another row
        assert!(lines.iter().all(|l| !l.contains('\n')), "{all}");
        assert!(all.contains("unknown (vm\\x1b]0;owned\\x07\\x1b[2J\\nsecond line)"));
    }

    #[test]
    fn info_of_plain_names_is_unchanged() {
        let lines = info_lines(&info_named("web"));
        assert!(lines.contains(&"name:        web".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"tag:         tag web".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn shares_show_their_transport_and_why() {
        use vmk_common::qemu::fixtures::{FakeHost, VirtiofsHost};
        let mut cfg = VmConfig::defaults(Path::new("/vm"));
        cfg.shares =
            vmk_common::config::values::parse_shares("/src /data:data:ro", &|d| d.into()).unwrap();
        let image = Path::new("/vm/disk0.img");
        let got = share_infos(&cfg, image, &VirtiofsHost);
        assert_eq!(
            (got[0].transport, got[0].mount.as_str()),
            (
                "virtiofs",
                "mkdir -p /mnt/src && mount -t virtiofs src /mnt/src"
            )
        );
        assert_eq!(got[0].transport_reason, "virtiofsd /usr/lib/qemu/virtiofsd");
        assert_eq!(got[1].transport, "virtio-9p");
        assert!(got[1].transport_reason.starts_with("read-only"));
        let got = share_infos(&cfg, image, &FakeHost { kvm: false });
        assert_eq!(got[0].transport, "virtio-9p");
        assert_eq!(got[0].transport_reason, "no virtiofsd on this host");
        // VMK_SHARE_FS=virtiofs where it cannot run: info still shows the shares, and why
        cfg.share_fs = ShareFs::Virtiofs;
        let got = share_infos(&cfg, image, &FakeHost { kvm: false });
        assert_eq!(got[0].transport, "virtiofs");
        assert!(
            got[0].transport_reason.contains("VMK_SHARE_FS")
                && got[0]
                    .transport_reason
                    .contains("no virtiofsd on this host"),
            "{}",
            got[0].transport_reason
        );
    }
}
