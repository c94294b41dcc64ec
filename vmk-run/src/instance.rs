//! One VM instance (the VM booting disk0, or `vmk snap`'s VM booting `snap-<disk0>`) and
//! everything that can be done to it: start in the background or the foreground, dry run,
//! state, kill, stop. `vmk-run` and `vmk-snap` both call these, so `vmk snap run` behaves
//! exactly like `vmk run`, only on another image.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vmk_common::config::{DiskFormat, NetType, VmConfig};
use vmk_common::qemu::{self, Mode, Network, QemuCommand, Serial};
use vmk_common::qmp;
use vmk_common::state::{self, KillOutcome, RuntimePaths, VmStatus};
use vmk_media::cloudinit;

use crate::{bridge, registry, term};

/// How long `start` waits for qemu's QMP socket to answer.
pub const QMP_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time `stop` gives the guest to power off.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between the signals of `kill`.
pub const KILL_INTERVAL: Duration = Duration::from_secs(1);

/// One VM instance: its config, the image it boots and its runtime files.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The VM's configuration.
    pub cfg: VmConfig,
    /// The image this instance boots (absolute).
    pub image: PathBuf,
    /// Pidfile, console log, QMP socket of this instance.
    pub paths: RuntimePaths,
    /// How the user names this instance's commands in hints: `vmk` (so `vmk console`) or
    /// `vmk snap` (so `vmk snap console`).
    pub commands: String,
}

impl Instance {
    /// The VM booting its disk0 (VMK_DISK0 must be set).
    pub fn disk0(cfg: VmConfig) -> Result<Instance> {
        let image = cfg.disk0()?.to_path_buf();
        Instance::for_image(cfg, &image)
    }

    /// The VM booting `image` (relative to the VM directory, or absolute) instead of disk0.
    pub fn for_image(cfg: VmConfig, image: &Path) -> Result<Instance> {
        let paths = RuntimePaths::new(&cfg.dir, image)?;
        Ok(Instance {
            image: paths.image.clone(),
            cfg,
            paths,
            commands: "vmk".to_string(),
        })
    }

    /// True when this instance boots the configured disk0 (not a snapshot copy).
    pub fn is_disk0(&self) -> bool {
        self.cfg
            .disk0_path
            .as_deref()
            .is_some_and(|d| self.cfg.dir.join(d) == self.image)
    }

    /// The state of this instance as its pidfile and /proc tell.
    pub fn status(&self) -> Result<VmStatus> {
        state::status(&self.paths)
    }

    fn hint(&self, cmd: &str) -> String {
        format!("`{} {cmd}`", self.commands)
    }
}

/// A change to the qemu command line before it is started (e.g. `snap run` booting a qcow2
/// overlay).
pub type Adjust<'a> = &'a dyn Fn(QemuCommand) -> Result<QemuCommand>;

/// Options of [`start`] and [`run_foreground`].
#[derive(Clone, Copy)]
pub struct StartOptions<'a> {
    /// Applied to the command line last.
    pub adjust: Option<Adjust<'a>>,
    /// How long to wait for QMP to answer after qemu daemonized.
    pub qmp_timeout: Duration,
}

impl Default for StartOptions<'_> {
    fn default() -> Self {
        StartOptions {
            adjust: None,
            qmp_timeout: QMP_START_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for StartOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("adjust", &self.adjust.is_some())
            .field("qmp_timeout", &self.qmp_timeout)
            .finish()
    }
}

/// A TCP endpoint of a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Address it listens on.
    pub host: IpAddr,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host {
            IpAddr::V6(h) => write!(f, "[{h}]:{}", self.port),
            IpAddr::V4(h) => write!(f, "{h}:{}", self.port),
        }
    }
}

/// Where a VM's console, display and ssh are (from its command line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// The serial console's telnet port (background runs only).
    pub console: Option<Endpoint>,
    /// VNC (TCP port 5900 + display).
    pub vnc: Option<Endpoint>,
    /// The VNC display number.
    pub vnc_display: Option<u8>,
    /// The host port forwarded to the guest's ssh (user networking only).
    pub ssh: Option<Endpoint>,
}

impl Endpoints {
    /// The endpoints `cmd` will listen on.
    pub fn of(cmd: &QemuCommand) -> Endpoints {
        let console = match &cmd.serial {
            Serial::Telnet { listen, port, .. } => Some(Endpoint {
                host: *listen,
                port: *port,
            }),
            Serial::Stdio { .. } => None,
        };
        let vnc = cmd.vnc.map(|(host, n)| Endpoint {
            host,
            port: 5900 + u16::from(n),
        });
        let ssh = match &cmd.network {
            Network::User {
                listen, ssh_port, ..
            } => Some(Endpoint {
                host: *listen,
                port: *ssh_port,
            }),
            _ => None,
        };
        Endpoints {
            console,
            vnc,
            vnc_display: cmd.vnc.map(|(_, n)| n),
            ssh,
        }
    }
}

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

/// The qemu command line for `inst` in `mode`, with `adjust` applied.
///
/// When the image does not exist (yet) and VMK_DISK0_FORMAT is empty, the format is
/// guessed from the file name (`.qcow2` → qcow2, else raw) with a warning, so that a dry
/// run works before `vmk mkdisk0`.
pub fn command(inst: &Instance, mode: Mode, adjust: Option<Adjust<'_>>) -> Result<QemuCommand> {
    let mut cfg = inst.cfg.clone();
    let disk0 = cfg.disk0()?.to_path_buf();
    let disk0 = cfg.dir.join(disk0);
    if cfg.disk0_format.is_none() && !disk0.exists() {
        let guess = guess_format(&disk0);
        log::warn!(
            "{} does not exist: assuming format {} from its name",
            disk0.display(),
            guess.as_str()
        );
        cfg.disk0_format = Some(guess);
    }
    let mut cmd = QemuCommand::from_config(&cfg, mode, &inst.paths)?;
    if disk0 != inst.image {
        cmd = cmd.disk0_override(&inst.image);
    }
    if cfg.cloud_init {
        // Only the path here, so that a dry run writes nothing; `preflight` makes the seed.
        cmd = cmd.add_cdrom(seed_path(&cfg));
    }
    match adjust {
        Some(f) => f(cmd),
        None => Ok(cmd),
    }
}

/// The cloud-init NoCloud seed VMK_CLOUD_INIT=yes attaches: `seed.iso` in the VM directory.
pub fn seed_path(cfg: &VmConfig) -> PathBuf {
    cfg.dir.join(cloudinit::SEED_FILE)
}

/// The format a file name suggests: `.qcow2` → qcow2, anything else raw.
pub fn guess_format(path: &Path) -> DiskFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("qcow2") => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

/// The shell-quoted qemu command line for `mode` (`vmk -D run`).
pub fn dry_run(inst: &Instance, mode: Mode, adjust: Option<Adjust<'_>>) -> Result<String> {
    Ok(command(inst, mode, adjust)?.shell_quoted())
}

/// Checks done before qemu starts: not running already (a stale pidfile is removed),
/// image present and not used by another qemu, ports free, bridge usable.
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
                "note: removing stale pidfile {} (pid {pid} is not this VM's qemu)",
                inst.paths.pidfile.display()
            );
            state::remove_pidfile(&inst.paths.pidfile)?;
        }
        VmStatus::Stopped => {}
    }
    for disk in &cmd.disks {
        if !disk.file.exists() {
            if disk.file == inst.image && inst.is_disk0() {
                bail!(
                    "disk0 {} not found: run `vmk mkdisk0` or set VMK_DISK0",
                    disk.file.display()
                );
            }
            bail!("disk image {} not found", disk.file.display());
        }
    }
    if let Some(pid) = find_qemu_using(&inst.image)? {
        bail!(
            "{} is in use by another qemu (pid {pid}) that this VM's pidfile does not name: \
             stop that qemu first",
            inst.image.display()
        );
    }
    check_ports(inst, cmd)?;
    if let Network::Bridge { bridge, .. } = &cmd.network {
        bridge::check_usable(bridge, &bridge::Files::default())?;
    }
    if inst.cfg.cloud_init {
        cloudinit::ensure_seed(&inst.cfg).context("VMK_CLOUD_INIT=yes needs a cloud-init seed")?;
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
        (ep.vnc, format!("VNC display :{vnc}: 5900 + VMK_VNC {vnc}")),
        (
            ep.ssh,
            format!("ssh forward: VMK_SSH_BASE {} + VMK_VNC {vnc}", cfg.ssh_base),
        ),
    ];
    for (endpoint, why) in checks {
        let Some(e) = endpoint else { continue };
        if !state::port_is_free(e.host, e.port) {
            let who = registry::who_uses_port(e.port)
                .map(|d| format!(" by the VM in {}", d.display()))
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

/// A running qemu whose command line boots `image`, if any (found by scanning /proc).
pub fn find_qemu_using(image: &Path) -> Result<Option<u32>> {
    let name = image.file_name().map(|n| n.as_encoded_bytes().to_vec());
    let Some(name) = name else { return Ok(None) };
    let entries = fs::read_dir("/proc").context("reading /proc")?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A cheap filter first: is_vm_qemu waits briefly on processes without a cmdline.
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = raw.split(|&b| b == 0).next().unwrap_or_default();
        let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if !base.starts_with(b"qemu") || !raw.windows(name.len()).any(|w| w == name) {
            continue;
        }
        if state::is_vm_qemu(pid, image)? {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// Starts `inst` in the background (`vmk run`): checks, qemu `-daemonize`, waits until QMP
/// answers, records the VM for `vmk ps`. Fails with qemu's own error text.
pub fn start(inst: &Instance, opts: &StartOptions<'_>) -> Result<Started> {
    let cmd = command(inst, Mode::Run, opts.adjust)?;
    preflight(inst, &cmd)?;
    inst.paths.prepare()?;
    log::debug!("starting {}", cmd.shell_quoted());
    let out = cmd
        .to_command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {}", cmd.program().display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        let _ = state::remove_pidfile(&inst.paths.pidfile);
        return Err(qemu_failed(inst, &stderr, out.status));
    }
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    let pid = state::read_pidfile(&inst.paths.pidfile)?.with_context(|| {
        format!(
            "qemu daemonized but wrote no pidfile {}",
            inst.paths.pidfile.display()
        )
    })?;
    let qmp_status = match qmp::wait_for_socket(&inst.paths.qmp_socket, opts.qmp_timeout)
        .and_then(|mut q| q.query_status())
    {
        Ok((s, _)) => s,
        Err(e) => {
            let _ = state::kill_verified(pid, &inst.image, &state::KILL_SIGNALS, KILL_INTERVAL);
            let _ = state::remove_pidfile(&inst.paths.pidfile);
            return Err(e.context(format!("qemu (pid {pid}) did not answer on QMP: killed it")));
        }
    };
    let endpoints = Endpoints::of(&cmd);
    let started = Started {
        name: inst.cfg.display_name(),
        pid,
        image: inst.image.clone(),
        pidfile: inst.paths.pidfile.clone(),
        console_log: inst.paths.console_log.clone(),
        qmp_socket: inst.paths.qmp_socket.clone(),
        endpoints,
        qmp_status,
    };
    if let Err(e) = registry::add(&registry::Entry::new(inst, &started.endpoints)) {
        log::warn!("cannot record the VM for `vmk ps`: {e:#}");
    }
    Ok(started)
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
            "  console: {} (or telnet {} {}); log {}",
            inst.hint("console"),
            c.host,
            c.port,
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

/// Runs `inst` in the foreground with the serial console on this terminal (`vmk runin`);
/// returns qemu's exit status. The terminal's settings are restored afterwards whatever
/// happens; termination signals are held back until then.
pub fn run_foreground(inst: &Instance, opts: &StartOptions<'_>) -> Result<ExitCode> {
    let cmd = command(inst, Mode::Foreground, opts.adjust)?;
    preflight(inst, &cmd)?;
    inst.paths.prepare()?;
    eprintln!(
        "{}: serial console on this terminal; leave with Ctrl-A x (Ctrl-A c: qemu monitor, Ctrl-A h: help)",
        inst.cfg.display_name()
    );
    // Dropped in reverse order: the terminal is restored before held signals arrive.
    let _signals = term::HoldSignals::new()?;
    let _terminal = term::Saved::stdin();
    let mut child = cmd
        .to_command()
        .spawn()
        .with_context(|| format!("starting {}", cmd.program().display()))?;
    let entry = registry::Entry::new(inst, &Endpoints::of(&cmd));
    if wait_for_pidfile(&inst.paths.pidfile, child.id()) {
        let _ = registry::add(&entry);
    }
    let status = child.wait().context("waiting for qemu")?;
    let _ = registry::remove(&inst.paths.pidfile);
    let _ = state::remove_pidfile(&inst.paths.pidfile);
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

fn wait_for_pidfile(pidfile: &Path, pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(state::read_pidfile(pidfile), Ok(Some(p)) if p == pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Exit-free check: true when the instance runs.
pub fn is_running(inst: &Instance) -> Result<bool> {
    Ok(matches!(inst.status()?, VmStatus::Running { .. }))
}

/// What [`kill`] or [`stop`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing ran.
    NotRunning,
    /// The pidfile named a process that is not this VM's qemu: nothing was signalled and
    /// the pidfile was removed.
    StalePidfile {
        /// The pid the pidfile named.
        pid: u32,
    },
    /// The guest powered off by itself after the ACPI request.
    PoweredOff {
        /// qemu's pid.
        pid: u32,
        /// How long it took.
        after: Duration,
    },
    /// qemu was killed.
    Killed {
        /// qemu's pid.
        pid: u32,
        /// The signal after which it went.
        signal: state::Signal,
    },
}

impl std::fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopOutcome::NotRunning => f.write_str("not running"),
            StopOutcome::StalePidfile { pid } => write!(
                f,
                "the pidfile named pid {pid}, which is not this VM's qemu: removed the stale pidfile"
            ),
            StopOutcome::PoweredOff { pid, after } => {
                write!(f, "powered off (qemu pid {pid}) after {:.1}s", after.as_secs_f64())
            }
            StopOutcome::Killed { pid, signal } => write!(f, "killed qemu pid {pid} ({signal})"),
        }
    }
}

/// Kills `inst`'s qemu now: SIGINT, SIGTERM, SIGKILL a second apart, only to the pid its
/// pidfile names and only while that pid is verified to be this VM's qemu.
pub fn kill(inst: &Instance) -> Result<StopOutcome> {
    let pid = match inst.status()? {
        VmStatus::Stopped => return Ok(StopOutcome::NotRunning),
        VmStatus::Stale { pid } => {
            cleanup(inst)?;
            return Ok(StopOutcome::StalePidfile { pid });
        }
        VmStatus::Running { pid } => pid,
    };
    let outcome = kill_pid(inst, pid)?;
    cleanup(inst)?;
    Ok(outcome)
}

fn kill_pid(inst: &Instance, pid: u32) -> Result<StopOutcome> {
    match state::kill_verified(pid, &inst.image, &state::KILL_SIGNALS, KILL_INTERVAL)? {
        KillOutcome::NotVerified => Ok(StopOutcome::StalePidfile { pid }),
        KillOutcome::Exited { last_signal } => Ok(StopOutcome::Killed {
            pid,
            signal: last_signal,
        }),
        KillOutcome::StillRunning => bail!(
            "qemu pid {pid} still runs after SIGKILL (stuck in the kernel?): check `ps -o stat {pid}`"
        ),
    }
}

/// Stops `inst` gracefully: ACPI power-down over QMP, wait up to `timeout`, then [`kill`].
pub fn stop(inst: &Instance, timeout: Duration) -> Result<StopOutcome> {
    let pid = match inst.status()? {
        VmStatus::Stopped => return Ok(StopOutcome::NotRunning),
        VmStatus::Stale { pid } => {
            cleanup(inst)?;
            return Ok(StopOutcome::StalePidfile { pid });
        }
        VmStatus::Running { pid } => pid,
    };
    let start = Instant::now();
    let asked = qmp::Qmp::connect(&inst.paths.qmp_socket, Duration::from_secs(5))
        .and_then(|mut q| q.system_powerdown());
    let outcome = match asked {
        Ok(()) if state::wait_for_exit(pid, timeout) => StopOutcome::PoweredOff {
            pid,
            after: start.elapsed(),
        },
        Ok(()) => {
            eprintln!(
                "the guest did not power off within {}s: killing qemu pid {pid}",
                timeout.as_secs()
            );
            kill_pid(inst, pid)?
        }
        Err(e) => {
            eprintln!("cannot ask for a power-down over QMP ({e:#}): killing qemu pid {pid}");
            kill_pid(inst, pid)?
        }
    };
    cleanup(inst)?;
    Ok(outcome)
}

/// Removes what a stopped instance leaves behind: pidfile, QMP socket, `ps` entry. Only
/// when no qemu of this instance runs.
pub fn cleanup(inst: &Instance) -> Result<()> {
    if is_running(inst)? {
        return Ok(());
    }
    state::remove_pidfile(&inst.paths.pidfile)?;
    match fs::remove_file(&inst.paths.qmp_socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", inst.paths.qmp_socket.display()),
    }
    registry::remove(&inst.paths.pidfile)
}

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
    /// The accelerator qemu will get (auto resolved).
    pub accel_resolved: String,
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
    /// VMK_HOSTNAME.
    pub hostname: Option<String>,
    /// VMK_VNC.
    pub vnc_display: u8,
    /// VMK_LISTEN.
    pub listen: IpAddr,
    /// Serial console port.
    pub console_port: u16,
    /// VNC port.
    pub vnc_port: u16,
    /// Forwarded ssh port (user networking).
    pub ssh_port: Option<u16>,
    /// `vm-key` present.
    pub ssh_key: bool,
    /// `vm-key.pub` present.
    pub ssh_pubkey: bool,
    /// The cloud-init seed attached as a CD (VMK_CLOUD_INIT=yes), made when the VM starts.
    pub cloud_init_seed: Option<PathBuf>,
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
    let resolved = qemu::resolve_accel(cfg.accel, &host);
    let qemu_bin = qemu::select_qemu(
        cfg.qemu.as_deref(),
        cfg.arch.as_deref().unwrap_or(qemu::DEFAULT_ARCH),
        &host,
    )
    .ok();
    let (state_name, pid, qmp_status) = match inst.status()? {
        VmStatus::Running { pid } => {
            let q = qmp::Qmp::connect(&inst.paths.qmp_socket, Duration::from_secs(3))
                .and_then(|mut q| q.query_status())
                .map(|(s, _)| s)
                .unwrap_or_else(|e| format!("unknown ({e:#})"));
            ("running", Some(pid), Some(q))
        }
        VmStatus::Stale { pid } => ("stale", Some(pid), None),
        VmStatus::Stopped => ("stopped", None, None),
    };
    use std::os::unix::fs::MetadataExt;
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
        qemu: qemu_bin,
        net: net_name(cfg.net_type).to_string(),
        bridge: (cfg.net_type == NetType::Bridge).then(|| cfg.bridge.clone()),
        mac: cfg.mac(),
        ip: cfg.ip,
        hostname: cfg.hostname.clone(),
        vnc_display: cfg.vnc,
        listen: cfg.listen,
        console_port: cfg.telnet_port(),
        vnc_port: cfg.vnc_port(),
        ssh_port: (cfg.net_type == NetType::User).then(|| cfg.ssh_port()),
        ssh_key: cfg.dir.join("vm-key").exists(),
        ssh_pubkey: cfg.dir.join("vm-key.pub").exists(),
        cloud_init_seed: cfg.cloud_init.then(|| seed_path(cfg)),
        state: state_name.to_string(),
        pid,
        qmp_status,
        pidfile: inst.paths.pidfile.clone(),
        console_log: inst.paths.console_log.clone(),
        qmp_socket: inst.paths.qmp_socket.clone(),
    })
}

fn net_name(n: NetType) -> &'static str {
    match n {
        NetType::User => "user",
        NetType::Bridge => "bridge",
        NetType::None => "none",
    }
}

/// `info` as aligned `key: value` lines.
pub fn info_lines(i: &Info) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let size = match (i.image_size, i.image_allocated) {
        (Some(s), Some(a)) => format!("{} (allocated {})", human(s), human(a)),
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
        ("accel", format!("{} → {}", i.accel, i.accel_resolved)),
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
        ("ip", opt(i.ip.map(|ip| ip.to_string()))),
        ("hostname", opt(i.hostname.clone())),
        ("console", format!("{}:{}", i.listen, i.console_port)),
        (
            "vnc",
            format!("{}:{} (port {})", i.listen, i.vnc_display, i.vnc_port),
        ),
        (
            "ssh",
            opt(i.ssh_port.map(|p| format!("{}:{p} → guest 22", i.listen))),
        ),
        (
            "ssh key",
            match (i.ssh_key, i.ssh_pubkey) {
                (true, true) => "vm-key, vm-key.pub".into(),
                (false, false) => "none (`vmk sshkeygen`)".into(),
                (true, false) => "vm-key only (vm-key.pub missing)".into(),
                (false, true) => "vm-key.pub only (vm-key missing)".into(),
            },
        ),
        (
            "cloud-init",
            opt(i
                .cloud_init_seed
                .as_ref()
                .map(|p| format!("seed {}", p.display()))),
        ),
        ("console log", i.console_log.display().to_string()),
    ];
    rows.into_iter()
        .map(|(k, v)| format!("{:<12} {v}", format!("{k}:")))
        .collect()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_guess_from_name() {
        assert_eq!(guess_format(Path::new("/a/disk0.qcow2")), DiskFormat::Qcow2);
        assert_eq!(guess_format(Path::new("/a/disk0.QCOW2")), DiskFormat::Qcow2);
        assert_eq!(guess_format(Path::new("/a/disk0.raw")), DiskFormat::Raw);
        assert_eq!(guess_format(Path::new("/a/disk0")), DiskFormat::Raw);
    }

    #[test]
    fn sizes_for_humans() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(2 << 30), "2.0 GiB");
    }
}
