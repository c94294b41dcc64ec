//! One VM instance (the VM booting disk0, or `vmk snap`'s VM booting `snap-<disk0>`) and
//! everything that can be done to it: start in the background or the foreground, dry run,
//! state, kill, stop. `vmk-run` and `vmk-snap` both call these, so `vmk snap run` behaves
//! exactly like `vmk run`, only on another image.

mod foreground;
mod info;
mod start;
mod stop;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use vmk_common::config::{DiskFormat, VmConfig};
use vmk_common::layout;
use vmk_common::qemu::{self, Mode, Network, QemuCommand, Serial};
use vmk_common::state::{self, RuntimePaths, VmStatus};
use vmk_media::cloudinit;

pub use foreground::{attach, run_foreground, Ended, Watch};
pub use info::{info, info_lines, Info};
pub use start::{describe, find_qemu_using, prepare, start, Started};
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
            console_socket,
            vnc,
            vnc_socket: cmd.vnc_socket.clone(),
            vnc_display: cmd.vnc.map(|(_, n)| n),
            ssh,
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
