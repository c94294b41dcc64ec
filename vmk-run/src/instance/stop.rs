//! Ending an instance: kill (signals only to the verified qemu), stop (ACPI power-down,
//! then kill) and the cleanup of what a stopped instance leaves behind.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmk_common::qmp;
use vmk_common::state::{self, KillOutcome, VmStatus};

use super::{console_socket, is_running, vnc_socket, Instance, KILL_INTERVAL};
use crate::registry;

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
    let pid = match running_pid(inst)? {
        Ok(pid) => pid,
        Err(outcome) => return Ok(outcome),
    };
    let outcome = kill_pid(inst, pid)?;
    cleanup(inst)?;
    Ok(outcome)
}

/// The pid of `inst`'s running qemu, or what [`kill`] and [`stop`] report when none runs
/// (a stale pidfile is cleaned up, nothing is signalled).
fn running_pid(inst: &Instance) -> Result<std::result::Result<u32, StopOutcome>> {
    Ok(match inst.status()? {
        VmStatus::Stopped => {
            if inst.pidfile_holds_no_pid() {
                cleanup(inst)?; // no qemu uses the image (`Instance::status`)
            }
            super::stop_helpers(inst); // one a killed `vmk run` started before its qemu
            Err(StopOutcome::NotRunning)
        }
        VmStatus::Stale { pid } => {
            cleanup(inst)?;
            Err(StopOutcome::StalePidfile { pid })
        }
        VmStatus::Running { pid } => Ok(pid),
    })
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
    let pid = match running_pid(inst)? {
        Ok(pid) => pid,
        Err(outcome) => return Ok(outcome),
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

/// Removes what a stopped instance leaves behind: its swtpm, pidfile, sockets
/// ([`stale_sockets`]), `ps` entry. Only when no qemu of this instance runs.
pub fn cleanup(inst: &Instance) -> Result<()> {
    if is_running(inst)? {
        return Ok(());
    }
    super::stop_helpers(inst);
    state::remove_pidfile(&inst.paths.pidfile)?;
    for s in remove_stale_sockets(inst)? {
        log::debug!("removed {}", s.display());
    }
    registry::remove(&inst.paths.pidfile)
}

/// The unix sockets qemu makes for `inst`: QMP, guest agent, serial console, VNC. qemu
/// removes them when it exits normally, not when it is killed.
fn sockets(inst: &Instance) -> [PathBuf; 4] {
    [
        inst.paths.qmp_socket.clone(),
        inst.paths.qga_socket(),
        console_socket(inst),
        vnc_socket(inst),
    ]
}

/// Removes the sockets ([`sockets`]) that a qemu of `inst` left behind when it died, and
/// returns them: only when no qemu boots the image (a qemu that runs without a pidfile
/// keeps its sockets), and only sockets (anything else at those paths is not ours to
/// remove).
pub(super) fn remove_stale_sockets(inst: &Instance) -> Result<Vec<PathBuf>> {
    let present: Vec<PathBuf> = sockets(inst)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .collect();
    if present.is_empty() {
        return Ok(present);
    }
    if let Some(pid) = state::qemu_pids_using(&inst.image)?.first() {
        log::debug!(
            "qemu pid {pid} uses {}: its sockets stay",
            inst.image.display()
        );
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for p in present {
        match fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", p.display()),
        }
    }
    Ok(removed)
}
