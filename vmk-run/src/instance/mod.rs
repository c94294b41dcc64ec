//! One VM instance (the VM booting disk0, or `vmk snap`'s VM booting `snap-<disk0>`) and
//! everything that can be done to it: start in the background or the foreground, dry run,
//! state, kill, stop. `vmk-run` and `vmk-snap` both call these, so `vmk snap run` behaves
//! exactly like `vmk run`, only on another image.

mod exec;
mod foreground;
mod info;
mod start;
mod stop;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use vmk_common::config::{DiskFormat, PortForward, VmConfig};
use vmk_common::layout;
use vmk_common::qemu::{self, Mode, Network, QemuCommand, Serial};
use vmk_common::state::{self, RuntimePaths, VmStatus};
pub use vmk_media::cloudinit::seed_path;
use vmk_media::preflight::{missing_files, present};

pub use exec::{exec, End, ExecOptions};
pub use foreground::{attach, run_foreground, Ended, Watch};
pub use info::{info, info_lines, Info};
pub use start::{describe, prepare, start, Started, FAULT_STEPS};
pub use stop::{cleanup, kill, stop, StopOutcome};

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
    ///
    /// A pidfile that holds no process id (empty: qemu died between creating and writing
    /// it; or anything else) counts as no pidfile, with a warning, when no qemu boots the
    /// image; `vmk run` then removes it ([`start::prepare`]). When a qemu does boot the
    /// image, the pidfile's error stands: nothing tells whether that qemu is this VM's.
    pub fn status(&self) -> Result<VmStatus> {
        match state::status(&self.paths) {
            Err(e) if self.pidfile_holds_no_pid() => {
                if let Some(pid) = state::qemu_pids_using(&self.image)?.first() {
                    return Err(e.context(format!(
                        "qemu pid {pid} uses {} but the pidfile does not name it",
                        self.image.display()
                    )));
                }
                log::warn!("{e:#}; no qemu uses the image: taken as not running");
                Ok(VmStatus::Stopped)
            }
            other => other,
        }
    }

    /// True when the pidfile is a regular file that can be read and holds no process id.
    fn pidfile_holds_no_pid(&self) -> bool {
        let pidfile = &self.paths.pidfile;
        std::fs::symlink_metadata(pidfile).is_ok_and(|m| m.is_file())
            && std::fs::read(pidfile).is_ok()
            && state::read_pidfile(pidfile).is_err()
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
    /// The serial console's telnet port (background runs with VMK_CONSOLE=telnet).
    pub console: Option<Endpoint>,
    /// The serial console's unix socket (background runs with VMK_CONSOLE=socket).
    pub console_socket: Option<PathBuf>,
    /// VNC (TCP port 5900 + display).
    pub vnc: Option<Endpoint>,
    /// VNC's unix socket (VMK_VNC_SOCKET=yes).
    pub vnc_socket: Option<PathBuf>,
    /// The VNC display number.
    pub vnc_display: Option<u8>,
    /// The host port forwarded to the guest's ssh (user networking only).
    pub ssh: Option<Endpoint>,
    /// VMK_PORTS: more host ports forwarded to the guest (user networking only).
    pub forwards: Vec<(Endpoint, PortForward)>,
}

impl Endpoints {
    /// The endpoints `cmd` will listen on.
    pub fn of(cmd: &QemuCommand) -> Endpoints {
        let console = match &cmd.serial {
            Serial::Telnet { listen, port, .. } => Some(Endpoint {
                host: *listen,
                port: *port,
            }),
            Serial::Socket { .. } | Serial::Stdio { .. } => None,
        };
        let console_socket = match &cmd.serial {
            Serial::Socket { path, .. } => Some(path.clone()),
            _ => None,
        };
        let vnc = cmd.vnc.map(|(host, n)| Endpoint {
            host,
            port: layout::vnc_port(n),
        });
        let (ssh, forwards) = match &cmd.network {
            Network::User {
                listen,
                ssh_port,
                forwards,
                ..
            } => (
                Some(Endpoint {
                    host: *listen,
                    port: *ssh_port,
                }),
                forwards
                    .iter()
                    .map(|f| {
                        let e = Endpoint {
                            host: *listen,
                            port: f.host,
                        };
                        (e, *f)
                    })
                    .collect(),
            ),
            _ => (None, Vec::new()),
        };
        Endpoints {
            console,
            console_socket,
            vnc,
            vnc_socket: cmd.vnc_socket.clone(),
            vnc_display: cmd.vnc.map(|(_, n)| n),
            ssh,
            forwards,
        }
    }
}
/// The TCP listeners of `ep` that are bound beyond loopback, named for a warning.
pub fn exposed(ep: &Endpoints) -> Vec<String> {
    [
        ("VNC display", ep.vnc),
        ("serial console", ep.console),
        ("ssh forward", ep.ssh),
    ]
    .into_iter()
    .chain(
        ep.forwards
            .iter()
            .map(|(e, _)| ("VMK_PORTS forward", Some(*e))),
    )
    .filter_map(|(what, e)| {
        let e = e?;
        (!e.host.is_loopback()).then(|| format!("{what} on {e}"))
    })
    .collect()
}

/// Warns when `cmd` listens beyond loopback: whoever reaches those ports gets the VM's
/// screen, its console or its ssh login prompt.
pub fn warn_exposed(cmd: &QemuCommand) {
    let open = exposed(&Endpoints::of(cmd));
    if !open.is_empty() {
        log::warn!(
            "{}: reachable beyond this machine (VMK_LISTEN); whoever connects gets the VM's \
             screen, console or ssh login; set VMK_LISTEN=127.0.0.1 unless that is meant",
            open.join(", ")
        );
    }
}

/// Runs `f` (which starts qemu) with vmk's private umask, so that the sockets and files
/// qemu creates (console log, QMP, guest-agent and console sockets) are the user's alone:
/// connecting to a unix socket needs write permission on it. (`-daemonize` sets qemu's
/// umask to 027 itself, which also leaves the group without write.) The tools run with it
/// already; this holds for library callers too.
pub fn with_private_umask<T>(f: impl FnOnce() -> T) -> T {
    vmk_common::process::with_umask(vmk_common::cli::PRIVATE_UMASK, f)
}

/// The serial console's unix socket of `inst` (`vmk run` with VMK_CONSOLE=socket).
pub fn console_socket(inst: &Instance) -> PathBuf {
    qemu::console_socket(&inst.paths)
}

/// The VNC unix socket of `inst` (VMK_VNC_SOCKET=yes).
pub fn vnc_socket(inst: &Instance) -> PathBuf {
    qemu::vnc_socket(&inst.paths)
}

/// The qemu command line for `inst` in `mode`, with `adjust` applied.
///
/// A disk image that does not exist (yet) cannot tell its format: disk0's comes from
/// VMK_DISK0_FORMAT, the others' (and disk0's when that is empty) are guessed from the
/// file name (`.qcow2` → qcow2, else raw), so that a dry run works before `vmk mkdisk0`.
/// Starting refuses such a command line anyway ([`missing_files`]).
pub fn command(inst: &Instance, mode: Mode, adjust: Option<Adjust<'_>>) -> Result<QemuCommand> {
    let mut cfg = inst.cfg.clone();
    let disk0 = cfg.disk0()?.to_path_buf();
    let disk0 = cfg.dir.join(disk0);
    if cfg.disk0_format.is_none() && !present(&disk0) {
        let guess = guess_format(&disk0);
        log::info!(
            "{} does not exist: assuming format {} from its name",
            disk0.display(),
            guess.as_str()
        );
        cfg.disk0_format = Some(guess);
    }
    // qemu's builder probes the format of every extra disk: leave the missing ones out of
    // the probe and put them back in their place with a guessed format.
    let extra = cfg.extra_disks();
    let absent: Vec<PathBuf> = extra.iter().filter(|d| !present(d)).cloned().collect();
    for d in cfg.disks.iter_mut() {
        if d.as_ref().is_some_and(|d| absent.contains(d)) {
            *d = None;
        }
    }
    let mut cmd = QemuCommand::from_config(&cfg, mode, &inst.paths)?;
    if !absent.is_empty() {
        let probed: Vec<qemu::Disk> = cmd.disks.drain(1..).collect();
        for file in extra {
            let disk = match probed.iter().find(|d| d.file == file) {
                Some(d) => d.clone(),
                None => qemu::Disk {
                    format: guess_format(&file),
                    file,
                    cache: cfg.disk_cache,
                },
            };
            cmd.disks.push(disk);
        }
    }
    if disk0 != inst.image {
        cmd = cmd.disk0_override(&inst.image);
    }
    // disk0 has bootindex 0; `preflight` refuses a missing ISO naming VMK_ISO and makes
    // the seed
    for cdrom in vmk_media::run_cdroms(&cfg) {
        cmd = cmd.add_cdrom(cdrom);
    }
    match adjust {
        Some(f) => f(cmd),
        None => Ok(cmd),
    }
}

/// The format a file name suggests: `.qcow2` → qcow2, anything else raw.
pub fn guess_format(path: &Path) -> DiskFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("qcow2") => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

/// The shell-quoted qemu command line for `mode` (`vmk -D run`), after the virtiofsd
/// command lines of virtiofs shares (each share's transport and why on stderr) and the
/// swtpm command line when VMK_TPM=yes, and after a warning on
/// stderr for each missing file the config names ([`missing_files`]: the same rule that
/// makes `vmk run` refuse to start).
pub fn dry_run(inst: &Instance, mode: Mode, adjust: Option<Adjust<'_>>) -> Result<String> {
    let cmd = command(inst, mode, adjust)?;
    for m in missing_files(&inst.cfg, &cmd) {
        log::warn!("{}", m.error(&inst.cfg));
    }
    let mut text = String::new();
    for s in &cmd.shares {
        eprintln!("share {}: {}", s.share.tag, s.describe());
        if let Some(d) = s.daemon() {
            // a virtiofsd starts before qemu, on a line of its own
            text.push_str(&vmk_common::shell::command_line(&d.command()));
            text.push('\n');
        }
    }
    if let Some(tpm) = &cmd.tpm {
        // the swtpm that starts first, on a line of its own
        let program = vmk_common::swtpm::program().unwrap_or_else(|_| "swtpm".into());
        let c = tpm.swtpm.command(&program)?;
        text.push_str(&vmk_common::shell::join(
            std::iter::once(c.get_program().to_os_string())
                .chain(c.get_args().map(|a| a.to_os_string())),
        ));
        text.push('\n');
    }
    text.push_str(&cmd.shell_quoted());
    Ok(text)
}

/// Stops the helpers of `inst` that run (after its qemu has gone): its swtpm (VMK_TPM=yes)
/// and its virtiofsds (virtiofs shares), with a warning when that fails: the caller is
/// ending the VM anyway.
pub fn stop_helpers(inst: &Instance) {
    let tpm = vmk_common::swtpm::Tpm::for_instance(&inst.image, &inst.paths.qmp_socket);
    if let Err(e) = vmk_common::swtpm::stop(&tpm) {
        log::warn!("stopping the VM's swtpm: {e:#}");
    }
    if let Err(e) = vmk_common::virtiofsd::stop_instance(&inst.image) {
        log::warn!("stopping the VM's virtiofsd: {e:#}");
    }
}

/// Exit-free check: true when the instance runs.
pub fn is_running(inst: &Instance) -> Result<bool> {
    Ok(matches!(inst.status()?, VmStatus::Running { .. }))
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
}
