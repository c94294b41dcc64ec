//! Starting an instance in the background (`vmk run`): the checks made before any qemu
//! starts (not running, images present and unused, ports free, bridge usable, cloud-init
//! seed), then qemu `-daemonize` and its first QMP answer.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use vmk_common::config::Accel;
use vmk_common::layout;
use vmk_common::qemu::{firmware, kvm_probe, Mode, Network, QemuCommand};
use vmk_common::qmp;
use vmk_common::state::{self, VmStatus};
use vmk_common::swtpm;
use vmk_common::virtiofsd;
use vmk_media::cloudinit;

use super::{command, seed_path, Endpoints, Instance, StartOptions, KILL_INTERVAL};
use crate::{bridge, registry};
use vmk_media::preflight::{missing_files, missing_files_error};

/// What [`start`] started.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The VM's name.
    pub name: String,
    /// qemu's pid.
    pub pid: u32,
    /// The image it boots.
    pub image: PathBuf,
    /// Its pidfile.
    pub pidfile: PathBuf,
    /// The serial console log.
    pub console_log: PathBuf,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// Console, VNC and ssh.
    #[serde(flatten)]
    pub endpoints: Endpoints,
    /// qemu's run state right after start (`running`, …).
    pub qmp_status: String,
}

/// Checks done before qemu starts: not running already (a stale pidfile is removed), every
/// file the config names present ([`missing_files`], a config error), image present and not
/// used by another qemu, ports free, bridge usable.
fn preflight(inst: &Instance, cmd: &QemuCommand) -> Result<()> {
    match inst.status()? {
        VmStatus::Running { pid } => bail!(
            "{} already runs (pid {pid}): attach with {}, stop with {}",
            inst.cfg.display_name(),
            inst.hint("console"),
            inst.hint("stop")
        ),
        VmStatus::Stale { pid } => {
            eprintln!(
                "note: removing stale pidfile {} (pid {pid} is gone or is not this VM's qemu)",
                inst.paths.pidfile.display()
            );
            state::remove_pidfile(&inst.paths.pidfile)?;
        }
        VmStatus::Stopped => {
            if inst.pidfile_holds_no_pid() {
                eprintln!(
                    "note: removing pidfile {}: it holds no process id and no qemu uses the image",
                    inst.paths.pidfile.display()
                );
                state::remove_pidfile(&inst.paths.pidfile)?;
            }
        }
    }
    let missing = missing_files(&inst.cfg, cmd);
    if !missing.is_empty() {
        return Err(missing_files_error(&inst.cfg, &missing).into());
    }
    for disk in &cmd.disks {
        if !disk.file.exists() {
            bail!("disk image {} not found", disk.file.display());
        }
    }
    if let Some(d) = vmk_common::libvirt::active_domain_using(&inst.cfg.dir, &inst.image)? {
        bail!(
            "{} is in use by the libvirt domain {} at {} ({}): stop it with `vmk libvirt stop` first",
            inst.image.display(),
            d.record.domain,
            d.record.uri,
            d.state
        );
    }
    if let Some(&pid) = state::qemu_pids_using(&inst.image)?.first() {
        bail!(
            "{} is in use by another qemu (pid {pid}) that this VM's pidfile does not name: \
             stop that qemu first",
            inst.image.display()
        );
    }
    for s in super::stop::remove_stale_sockets(inst)? {
        eprintln!(
            "note: removing stale socket {} (its qemu is gone)",
            s.display()
        );
    }
    check_ports(inst, cmd)?;
    if let Network::Bridge { bridge, .. } = &cmd.network {
        bridge::check_usable(bridge, &bridge::Files::default())?;
    }
    if inst.cfg.cloud_init && cmd.cdroms.contains(&seed_path(&inst.cfg)) {
        cloudinit::ensure_seed(&inst.cfg).context("VMK_CLOUD_INIT=yes needs a cloud-init seed")?;
    }
    Ok(())
}

/// VMK_PORTS: each host port must differ from this VM's own ports and be free; one that a
/// running VM uses is refused naming both VMs and what each uses it for.
fn check_forwards(inst: &Instance, ep: &Endpoints) -> Result<()> {
    let cfg = &inst.cfg;
    if !cfg.ports.is_empty() && ep.forwards.is_empty() {
        log::warn!("VMK_PORTS is set but only user networking forwards ports: ignored");
    }
    let own = [ep.console, ep.vnc, ep.ssh];
    for (e, f) in &ep.forwards {
        if !f.udp && own.iter().flatten().any(|o| o.port == e.port) {
            return Err(vmk_common::config::ConfigError::new(format!(
                "host port {} of {f} is one of this VM's own ports (ssh, console or VNC): \
                 choose another",
                e.port
            ))
            .with_key("VMK_PORTS")
            .with_origin(&cfg.origin("VMK_PORTS"))
            .into());
        }
        let free = if f.udp {
            std::net::UdpSocket::bind((e.host, e.port)).is_ok()
        } else {
            state::port_is_free(e.host, e.port)
        };
        if free {
            continue;
        }
        let who = match registry::who_uses(e.port, f.udp) {
            Some((dir, what)) => format!("by the VM {what} in {}", dir.display()),
            None => "by another program".to_string(),
        };
        bail!(
            "{}: VMK_PORTS {f}: {} port {} on {} is in use {who}: change VMK_PORTS of one of them",
            cfg.display_name(),
            f.protocol(),
            e.port,
            e.host
        );
    }
    Ok(())
}

/// Fails naming the first port of `cmd` that something already listens on.
fn check_ports(inst: &Instance, cmd: &QemuCommand) -> Result<()> {
    let cfg = &inst.cfg;
    let ep = Endpoints::of(cmd);
    let vnc = cfg.vnc;
    let checks = [
        (
            ep.console,
            format!(
                "serial console: VMK_TELNET_BASE {} + VMK_VNC {vnc}",
                cfg.telnet_base
            ),
        ),
        (
            ep.vnc,
            format!(
                "VNC display :{vnc}: {} + VMK_VNC {vnc}",
                layout::VNC_PORT_BASE
            ),
        ),
        (
            ep.ssh,
            format!("ssh forward: VMK_SSH_BASE {} + VMK_VNC {vnc}", cfg.ssh_base),
        ),
    ];
    check_forwards(inst, &ep)?;
    for (endpoint, why) in checks {
        let Some(e) = endpoint else { continue };
        if !state::port_is_free(e.host, e.port) {
            let who = registry::who_uses_port(e.port)
                .map(|d| format!(" by the VM in {}", d.display()))
                .or_else(|| state::port_listener(e.port).map(|p| format!(" by {p}")))
                .unwrap_or_default();
            bail!(
                "port {} ({why}) on {} is in use{who}: choose another VMK_VNC (`vmk set VMK_VNC N`) \
                 or stop what uses it",
                e.port,
                e.host
            );
        }
    }
    Ok(())
}

/// The checks of [`preflight`], then the instance's runtime directory made, its UEFI
/// variable store made on the first run, and its swtpm (VMK_TPM=yes) and virtiofsds
/// started (stopped again by whatever ends qemu: [`super::cleanup`], the end of
/// [`super::attach`], a failed start): what every start of qemu (background or
/// foreground) does first.
pub fn prepare(inst: &Instance, cmd: &QemuCommand) -> Result<()> {
    preflight(inst, cmd)?;
    super::warn_exposed(cmd);
    if let Some(fw) = &cmd.firmware {
        if firmware::create_vars(&fw.vars_template, &fw.vars)? {
            eprintln!(
                "note: made the UEFI variable store {} from {}",
                fw.vars.display(),
                fw.vars_template.display()
            );
        }
    }
    inst.paths.prepare()?;
    start_helpers(inst, cmd)
}

/// Starts what qemu connects to at its start: the swtpm (VMK_TPM=yes) and a virtiofsd per
/// virtiofs share. On failure none of them is left running.
fn start_helpers(inst: &Instance, cmd: &QemuCommand) -> Result<()> {
    let started = (|| {
        if let Some(tpm) = &cmd.tpm {
            swtpm::start(&tpm.swtpm).context("VMK_TPM=yes")?;
        }
        for s in &cmd.shares {
            if let Some(d) = s.daemon() {
                virtiofsd::start(d).with_context(|| {
                    format!(
                        "sharing {} over virtiofs (VMK_SHARE_FS=9p uses virtio-9p instead)",
                        s.share.dir.display()
                    )
                })?;
            }
        }
        Ok(())
    })();
    if started.is_err() {
        super::stop_helpers(inst);
    }
    started
}

/// The steps of [`start`] at which a test can make vmk-run die (see [`fault`]), in order.
pub const FAULT_STEPS: [&str; 5] = [
    "before-qemu",
    "qemu-spawned",
    "after-daemonize",
    "before-qmp",
    "after-qmp",
];

/// TEST-ONLY fault injection: when the environment variable `VMK_TEST_FAULT` names `step`
/// (one of [`FAULT_STEPS`]), vmk-run SIGKILLs itself there, as a `vmk run` killed at that
/// moment (Ctrl-C, OOM killer, a closed terminal) would die, so that
/// `vmk-run/tests/faults.rs` can check that every later `run`, `info`, `kill` and `stop`
/// copes with what it leaves behind. Not an interface for users: nothing else reads it.
/// `fault` is the variable's value, read once per start.
fn fault(fault: Option<&str>, step: &str) {
    debug_assert!(FAULT_STEPS.contains(&step));
    if fault == Some(step) {
        eprintln!("VMK_TEST_FAULT={step}: vmk-run kills itself here (a test's fault injection)");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Starts `inst` in the background (`vmk run`): checks, qemu `-daemonize`, waits until QMP
/// answers. Fails with qemu's own error text.
///
/// The VM is recorded for `vmk ps` before qemu starts (`ps` verifies every record against
/// the pidfile and /proc, and drops the records of VMs that do not run), so that a qemu
/// that runs is listed even when this process dies before QMP answers; on failure the
/// record is removed again.
pub fn start(inst: &Instance, opts: &StartOptions<'_>) -> Result<Started> {
    let injected = std::env::var("VMK_TEST_FAULT").ok();
    let injected = injected.as_deref();
    let cmd = command(inst, Mode::Run, opts.adjust)?;
    prepare(inst, &cmd)?;
    let endpoints = Endpoints::of(&cmd);
    if let Err(e) = registry::add(&registry::Entry::new(inst, &endpoints)) {
        log::warn!("cannot record the VM for `vmk ps`: {e:#}");
    }
    let forget = || {
        let _ = registry::remove(&inst.paths.pidfile);
        super::stop_helpers(inst);
    };
    fault(injected, "before-qemu");
    let daemonize = |cmd: &QemuCommand| {
        log::debug!("starting {}", cmd.shell_quoted());
        super::with_private_umask(|| {
            cmd.to_command()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .and_then(|child| {
            fault(injected, "qemu-spawned");
            child.wait_with_output()
        })
        .with_context(|| format!("starting {}", cmd.program().display()))
        .inspect_err(|_| forget())
    };
    let mut out = daemonize(&cmd)?;
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() && died_of_kvm(inst, &cmd, &stderr) {
        let _ = state::remove_pidfile(&inst.paths.pidfile);
        eprintln!(
            "warning: qemu died under KVM ({}): starting again with software emulation (tcg); set VMK_ACCEL=tcg to skip KVM",
            kvm_probe::last_error_line(&stderr).unwrap_or_default()
        );
        let cmd = cmd.clone().fall_back_to_tcg(inst.cfg.cpu_model.as_deref());
        // the dead qemu may have connected to them, which ends a swtpm (`--terminate`)
        // and a virtiofsd when it goes
        start_helpers(inst, &cmd).inspect_err(|_| forget())?;
        out = daemonize(&cmd)?;
        stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    if !out.status.success() {
        forget();
        let _ = state::remove_pidfile(&inst.paths.pidfile);
        return Err(qemu_failed(inst, &stderr, out.status));
    }
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    fault(injected, "after-daemonize");
    let pid = state::read_pidfile(&inst.paths.pidfile)?.with_context(|| {
        format!(
            "qemu daemonized but wrote no pidfile {}",
            inst.paths.pidfile.display()
        )
    })?;
    fault(injected, "before-qmp");
    let qmp_status = match qmp::wait_for_socket(&inst.paths.qmp_socket, opts.qmp_timeout)
        .and_then(|mut q| q.query_status())
    {
        Ok((s, _)) => s,
        Err(e) => {
            let _ = state::kill_verified(pid, &inst.image, &state::KILL_SIGNALS, KILL_INTERVAL);
            let _ = super::cleanup(inst);
            forget();
            return Err(e.context(format!("qemu (pid {pid}) did not answer on QMP: killed it")));
        }
    };
    fault(injected, "after-qmp");
    Ok(Started {
        name: inst.cfg.display_name(),
        pid,
        image: inst.image.clone(),
        pidfile: inst.paths.pidfile.clone(),
        console_log: inst.paths.console_log.clone(),
        qmp_socket: inst.paths.qmp_socket.clone(),
        endpoints,
        qmp_status,
    })
}

/// Whether qemu, started under KVM that `VMK_ACCEL=auto` chose, died of KVM (nested
/// virtualisation: "failed to set MSR 0x10a", "kvm run failed"…): then it starts again
/// under tcg. An explicit VMK_ACCEL=kvm is kept as asked.
fn died_of_kvm(inst: &Instance, cmd: &QemuCommand, stderr: &str) -> bool {
    inst.cfg.accel == Accel::Auto
        && cmd.accel == Accel::Kvm
        && (stderr.to_ascii_lowercase().contains("kvm") || stderr.contains("MSR"))
}

fn qemu_failed(inst: &Instance, stderr: &str, status: std::process::ExitStatus) -> anyhow::Error {
    let text = if stderr.is_empty() {
        format!("qemu exited with {status} and printed nothing")
    } else {
        stderr.to_string()
    };
    if stderr.contains("Failed to get \"write\" lock") || stderr.contains("Failed to get shared") {
        return anyhow::anyhow!(
            "{} is locked by another qemu: stop the VM that uses it first\nqemu said: {text}",
            inst.image.display()
        );
    }
    anyhow::anyhow!("qemu failed to start: {text}")
}

/// Human lines telling where the console, VNC and ssh of a started VM are.
pub fn describe(inst: &Instance, s: &Started) -> Vec<String> {
    let mut lines = vec![format!("{} runs (pid {})", s.name, s.pid)];
    if let Some(c) = s.endpoints.console {
        lines.push(format!(
            "  console: {} (or telnet {} {}, open to every local user); log {}",
            inst.hint("console"),
            c.host,
            c.port,
            s.console_log.display()
        ));
    }
    if let Some(sock) = &s.endpoints.console_socket {
        lines.push(format!(
            "  console: {} (socket {}); log {}",
            inst.hint("console"),
            sock.display(),
            s.console_log.display()
        ));
    }
    if let (Some(v), Some(n)) = (s.endpoints.vnc, s.endpoints.vnc_display) {
        lines.push(format!(
            "  vnc:     {} or {}:{n} (port {})",
            inst.hint("vnc"),
            v.host,
            v.port
        ));
    }
    if let Some(sock) = &s.endpoints.vnc_socket {
        lines.push(format!(
            "  vnc:     {} (socket {})",
            inst.hint("vnc"),
            sock.display()
        ));
    }
    if let Some(ssh) = s.endpoints.ssh {
        lines.push(format!(
            "  ssh:     `vmk ssh` (ssh -p {} root@{})",
            ssh.port, ssh.host
        ));
    }
    lines.push(format!(
        "  stop:    {} or {}",
        inst.hint("stop"),
        inst.hint("kill")
    ));
    lines
}
