//! `checksetup` and `fixme`: what this machine offers a VM directory, one line per item,
//! and the repair of what root can repair (the bridge helper and its ACL).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Result;
use vmk_common::cli::{GlobalOpts, EXIT_FAILURE};
use vmk_common::config::{Accel, NetType, VmConfig};
use vmk_common::host::which;
use vmk_common::qemu::kvm_probe::KvmProbe;
use vmk_common::qemu::{self, Host};
use vmk_common::{fileops, layout, outln, state};

use crate::{bridge, Instance};

/// Options of `checksetup`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Check these bridge helper and bridge.conf instead of the system's (tests)
    #[arg(long, hide = true)]
    pub helper: Option<PathBuf>,
    /// bridge.conf to check
    #[arg(long, hide = true)]
    pub bridge_conf: Option<PathBuf>,
}

/// Options of `fixme`.
#[derive(clap::Args, Debug, Clone)]
pub struct FixArgs {
    /// The bridge to allow (default: VMK_BRIDGE); one plain interface name, never `all`
    #[arg(long)]
    pub bridge: Option<String>,
    /// The group that may run the setuid bridge helper (root:GROUP, mode 4750)
    #[arg(long, value_name = "GROUP", default_value = bridge::DEFAULT_HELPER_GROUP)]
    pub group: String,
    /// Fix this bridge helper instead of the system's (tests)
    #[arg(long, hide = true)]
    pub helper: Option<PathBuf>,
    /// bridge.conf to fix
    #[arg(long, hide = true)]
    pub bridge_conf: Option<PathBuf>,
}

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but not as well as it could, or a feature that is not configured is missing.
    Warn,
    /// Something a configured feature needs is missing.
    Fail,
}

/// One line of `checksetup`.
#[derive(Debug, Clone)]
pub struct Check {
    /// ok, warn or fail.
    pub level: Level,
    /// What was checked.
    pub what: String,
    /// What was found, and what to do.
    pub detail: String,
}

fn check(level: Level, what: &str, detail: impl Into<String>) -> Check {
    Check {
        level,
        what: what.to_string(),
        detail: detail.into(),
    }
}

fn files(helper: &Option<PathBuf>, conf: &Option<PathBuf>) -> bridge::Files {
    let d = bridge::Files::default();
    bridge::Files {
        helper: helper.clone().or(d.helper),
        conf: conf.clone().unwrap_or(d.conf),
    }
}

/// Whether KVM is there and really runs guests (`usable`: /dev/kvm opens; `probe`: what
/// booting qemu's firmware under it showed).
fn kvm_check(usable: bool, probe: &KvmProbe, accel: Accel) -> Check {
    match (usable, probe, accel) {
        (true, KvmProbe::Broken(why), Accel::Kvm) => check(
            Level::Fail,
            "kvm",
            format!("/dev/kvm opens, but KVM is unusable here ({why}) and VMK_ACCEL=kvm: set VMK_ACCEL=auto or tcg"),
        ),
        (true, KvmProbe::Broken(why), _) => check(
            Level::Warn,
            "kvm",
            format!("KVM is present but unusable here ({why}): VMs run with software emulation (tcg), slowly"),
        ),
        (true, KvmProbe::Works, _) => check(
            Level::Ok,
            "kvm",
            "/dev/kvm opens read-write and runs a guest's firmware",
        ),
        (true, KvmProbe::Unknown, _) => check(Level::Ok, "kvm", "/dev/kvm opens read-write"),
        (false, _, Accel::Kvm) => check(
            Level::Fail,
            "kvm",
            "/dev/kvm does not open read-write but VMK_ACCEL=kvm: add yourself to group kvm or set VMK_ACCEL=auto",
        ),
        (false, _, _) => check(
            Level::Warn,
            "kvm",
            "/dev/kvm does not open read-write: VMs run with software emulation (tcg), slowly",
        ),
    }
}

/// Everything `checksetup` looks at, for the VM configured by `cfg`.
pub fn checks(cfg: &VmConfig, files: &bridge::Files) -> Vec<Check> {
    let mut out = Vec::new();
    let host = qemu::RealHost;
    let arch = qemu::arch::canonical(cfg.arch.as_deref().unwrap_or(qemu::DEFAULT_ARCH));
    out.push(arch_check(arch));
    let qemu_bin = qemu::select_qemu(cfg.qemu.as_deref(), arch, &host);
    out.push(match &qemu_bin {
        Ok(q) => qemu_check(q),
        Err(e) => check(
            Level::Fail,
            "qemu",
            format!(
                "{e} (on Debian: apt-get install {})",
                qemu::arch::spec(arch).qemu_package
            ),
        ),
    });
    out.push(firmware_check(cfg, arch, &host));
    if cfg.tpm {
        out.push(match which("swtpm") {
            Some(p) => check(Level::Ok, "tpm", format!("VMK_TPM=yes: {}", p.display())),
            None => check(
                Level::Fail,
                "tpm",
                "VMK_TPM=yes needs swtpm: apt-get install swtpm swtpm-tools",
            ),
        });
    }
    out.push(shares_check(cfg, &host));
    for tool in ["qemu-img", "qemu-storage-daemon"] {
        out.push(match which(tool) {
            Some(p) => check(Level::Ok, tool, p.display().to_string()),
            None => check(Level::Warn, tool, "not found: install qemu-utils"),
        });
    }
    let probe = match (&qemu_bin, host.kvm_usable()) {
        (Ok(q), true) => {
            let cpu = cfg.cpu_model.as_deref().unwrap_or(qemu::KVM_CPU_MODEL);
            host.kvm_probe(q, cpu, arch)
        }
        _ => KvmProbe::Unknown,
    };
    out.push(kvm_check(host.kvm_usable(), &probe, cfg.accel));
    match fileops::fs_kind(&cfg.dir) {
        Ok(kind) if kind.can_reflink() => out.push(check(
            Level::Ok,
            "reflink",
            format!("{} is on {kind}: snapshots are reflink copies", cfg.dir.display()),
        )),
        Ok(kind) => out.push(check(
            Level::Warn,
            "reflink",
            format!(
                "{} is on {kind}, which cannot reflink: snapshots are full copies (use btrfs or XFS)",
                cfg.dir.display()
            ),
        )),
        Err(e) => out.push(check(Level::Warn, "reflink", e.to_string())),
    }
    out.push(nocow_check(&cfg.dir));
    out.push(bridge_check(cfg, files));
    if cfg.cloud_init {
        out.push(cloud_init_check(cfg));
    }
    out.push(match which("guestmount") {
        Some(p) => check(Level::Ok, "guestmount", p.display().to_string()),
        None => check(
            Level::Warn,
            "guestmount",
            "not found: `vmk mount` of qcow2 needs libguestfs-tools or qemu-storage-daemon",
        ),
    });
    for tool in ["ssh", "ssh-keygen", "scp"] {
        out.push(match which(tool) {
            Some(p) => check(Level::Ok, tool, p.display().to_string()),
            None => check(Level::Warn, tool, "not found: install openssh-client"),
        });
    }
    let mut ports = vec![
        (
            "console port",
            cfg.telnet_port(),
            format!("VMK_TELNET_BASE + VMK_VNC {}", cfg.vnc),
        ),
        (
            "vnc port",
            cfg.vnc_port(),
            format!("{} + VMK_VNC {}", layout::VNC_PORT_BASE, cfg.vnc),
        ),
    ];
    if cfg.net_type == NetType::User {
        ports.push((
            "ssh port",
            cfg.ssh_port(),
            format!("VMK_SSH_BASE + VMK_VNC {}", cfg.vnc),
        ));
    }
    let running = cfg
        .disk0_path
        .as_ref()
        .and_then(|d| Instance::for_image(cfg.clone(), d).ok())
        .is_some_and(|i| crate::instance::is_running(&i).unwrap_or(false));
    for (what, port, why) in ports {
        out.push(if state::port_is_free(cfg.listen, port) {
            check(
                Level::Ok,
                what,
                format!("{}:{port} ({why}) is free", cfg.listen),
            )
        } else if running {
            check(
                Level::Ok,
                what,
                format!("{}:{port} ({why}) is used by this running VM", cfg.listen),
            )
        } else {
            check(
                Level::Fail,
                what,
                format!(
                    "{}:{port} ({why}) is in use: choose another VMK_VNC",
                    cfg.listen
                ),
            )
        });
    }
    out
}

/// What VMK_ARCH means here: qemu binary and package, machine, console.
fn arch_check(arch: &str) -> Check {
    match qemu::arch::lookup(arch) {
        Some(a) => check(
            Level::Ok,
            "arch",
            format!(
                "{}: {} ({}), machine {}, console {}",
                a.name, a.qemu, a.qemu_package, a.machine, a.console
            ),
        ),
        None => check(
            Level::Warn,
            "arch",
            format!(
                "{arch} is none of {}: qemu-system-{arch} on a virt machine, devices as on x86",
                qemu::arch::ARCHES
                    .iter()
                    .map(|a| a.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// The firmware VMK_FIRMWARE and VMK_ARCH ask for, found through qemu's descriptors.
fn firmware_check(cfg: &VmConfig, arch: &str, host: &dyn Host) -> Check {
    let fw = qemu::effective_firmware(cfg.firmware, arch);
    if fw == vmk_common::config::Firmware::Bios {
        let what = match qemu::arch::spec(arch).firmware {
            qemu::arch::FirmwareKind::BiosOrUefi => "SeaBIOS (VMK_FIRMWARE=bios)",
            _ => "built into qemu",
        };
        return check(Level::Ok, "firmware", what);
    }
    let machine = cfg
        .machine
        .clone()
        .unwrap_or_else(|| qemu::arch::default_machine(arch).to_string());
    let vars = std::path::Path::new("vars");
    match qemu::firmware::select(&host.firmware_descriptors(), fw, arch, &machine, vars) {
        Ok(u) if u.code.exists() && u.vars_template.exists() => check(
            Level::Ok,
            "firmware",
            format!("{fw}: {} ({})", u.code.display(), u.descriptor.display()),
        ),
        Ok(u) => check(
            Level::Fail,
            "firmware",
            format!(
                "{fw}: {} names {} and {}, which are not both there: reinstall {}",
                u.descriptor.display(),
                u.code.display(),
                u.vars_template.display(),
                qemu::firmware::firmware_package(arch).unwrap_or("the firmware package")
            ),
        ),
        Err(e) => check(Level::Fail, "firmware", e.to_string()),
    }
}

/// The qemu binary runs and says its version (VMK_QEMU may name a file that is not there).
/// How VMK_SHARE's folders would reach the guest here (VMK_SHARE_FS): virtiofs, or why
/// virtio-9p; a failure only when VMK_SHARE_FS=virtiofs cannot be had.
fn shares_check(cfg: &VmConfig, host: &dyn Host) -> Check {
    use vmk_common::config::ShareFs;
    match qemu::shares::usable_virtiofsd(cfg, host) {
        Ok(p) => check(
            Level::Ok,
            "shares",
            format!(
                "read-write shares over virtiofs ({}), read-only ones over virtio-9p",
                p.display()
            ),
        ),
        Err(why) if cfg.share_fs == ShareFs::Virtiofs => check(
            Level::Fail,
            "shares",
            format!("VMK_SHARE_FS=virtiofs cannot be had: {why}"),
        ),
        Err(why) => check(Level::Ok, "shares", format!("over virtio-9p ({why})")),
    }
}

fn qemu_check(q: &Path) -> Check {
    match Command::new(q).arg("--version").output() {
        Err(e) => check(
            Level::Fail,
            "qemu",
            format!(
                "{} cannot be run ({e}): install qemu or fix VMK_QEMU",
                q.display()
            ),
        ),
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            match stdout.lines().next().filter(|_| o.status.success()) {
                Some(v) => check(Level::Ok, "qemu", format!("{} ({v})", q.display())),
                None => check(
                    Level::Warn,
                    "qemu",
                    format!("{} (`--version` failed: {})", q.display(), o.status),
                ),
            }
        }
    }
}

/// VMK_CLOUD_INIT=yes: the seed is made from vm-key.pub when the VM starts.
fn cloud_init_check(cfg: &VmConfig) -> Check {
    let key = cfg.dir.join(layout::PUBLIC_KEY_FILE);
    match vmk_media::cloudinit::seed_for(cfg).and_then(|s| s.validate()) {
        Ok(()) => check(
            Level::Ok,
            "cloud-init",
            format!(
                "seed {} from {}",
                crate::instance::seed_path(cfg).display(),
                key.display()
            ),
        ),
        Err(e) => check(
            Level::Fail,
            "cloud-init",
            format!("VMK_CLOUD_INIT=yes but no seed can be made: {e:#}"),
        ),
    }
}

fn nocow_check(dir: &Path) -> Check {
    let probe = dir.join(format!(".vmk-checksetup-{}", std::process::id()));
    let result = fileops::create_nocow_file(&probe, 0);
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(true) => check(
            Level::Ok,
            "nocow",
            format!("{} takes NOCOW files", dir.display()),
        ),
        Ok(false) => check(
            Level::Warn,
            "nocow",
            format!(
                "{} does not take NOCOW (it matters on btrfs only)",
                dir.display()
            ),
        ),
        Err(e) => check(
            Level::Warn,
            "nocow",
            format!("cannot create a file in {}: {e}", dir.display()),
        ),
    }
}

fn bridge_check(cfg: &VmConfig, files: &bridge::Files) -> Check {
    let needed = cfg.net_type == NetType::Bridge;
    let level = if needed { Level::Fail } else { Level::Warn };
    match bridge::check_usable(&cfg.bridge, files) {
        Ok(()) => check(
            Level::Ok,
            "bridge",
            format!("qemu-bridge-helper may attach to {}", cfg.bridge),
        ),
        Err(e) if needed => check(level, "bridge", format!("{e:#}")),
        Err(e) => check(
            level,
            "bridge",
            format!("{e:#} (only needed for VMK_NET_TYPE=bridge)"),
        ),
    }
}

/// Runs `checksetup`: exit 1 when a check failed.
pub fn checksetup(g: &GlobalOpts, a: &CheckArgs) -> Result<ExitCode> {
    let cfg = VmConfig::load_for(g)?;
    let all = checks(&cfg, &files(&a.helper, &a.bridge_conf));
    let mut failed = false;
    for c in &all {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed = true;
                "FAIL"
            }
        };
        outln!("{tag} {:<20} {}", c.what, c.detail)?;
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `fixme`: repairs the bridge helper and bridge.conf (root only).
pub fn fixme(g: &GlobalOpts, a: &FixArgs) -> Result<ExitCode> {
    let bridge_name = match &a.bridge {
        Some(b) => b.clone(),
        None => VmConfig::load_for(g)?.bridge,
    };
    bridge::validate_bridge_name(&bridge_name)?;
    let files = files(&a.helper, &a.bridge_conf);
    if g.dry_run {
        outln!(
            "would make {} setuid root for group {} (root:{}, mode {:o}) and allow {bridge_name} in {}",
            files
                .helper
                .as_deref()
                .unwrap_or(Path::new("qemu-bridge-helper"))
                .display(),
            a.group,
            a.group,
            bridge::HELPER_MODE,
            files.conf.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if !vmk_common::host::is_root() {
        return Err(vmk_common::usage!(
            "fixme changes system files: run it as root (`sudo vmk fixme`)"
        ));
    }
    if files.helper.is_none() {
        anyhow::bail!(
            "no qemu-bridge-helper found (looked for {}): install qemu-system-common",
            bridge::HELPER_CANDIDATES.join(", ")
        );
    }
    let changed = bridge::fix(&bridge_name, &a.group, &files)?;
    if changed.is_empty() {
        vmk_common::errln!(
            "nothing to fix: the bridge helper is setuid root for group {} and {} allows {bridge_name}",
            a.group,
            files.conf.display()
        );
    }
    for c in changed {
        outln!("changed {c}")?;
    }
    Ok(ExitCode::SUCCESS)
}
