//! Running an instance in the foreground with its serial console on this terminal: `vmk
//! runin`, and the phases of an install, which also need to know how the guest ended (the
//! reason of qemu's SHUTDOWN event) and to end a run that takes too long.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vmk_common::process::{self, Scope};
use vmk_common::qemu::{Mode, QemuCommand};
use vmk_common::qmp;
use vmk_common::state;

use super::{command, prepare, Endpoints, Instance, StartOptions};
use crate::{registry, term};

/// What a foreground run watches besides qemu's exit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch {
    /// Hold qemu's QMP connection to learn how the guest ended (the SHUTDOWN event's
    /// reason); nothing else can talk QMP to this qemu meanwhile.
    pub shutdown_reason: bool,
    /// End qemu (SIGTERM, then SIGKILL after [`process::GRACE`]) when it runs longer.
    pub timeout: Option<Duration>,
}

/// How a foreground run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// qemu's exit status.
    pub status: ExitStatus,
    /// The reason of qemu's SHUTDOWN event (`guest-shutdown`, `guest-reset`,
    /// `host-qmp-quit`, …), when [`Watch::shutdown_reason`] asked for it and qemu sent one.
    pub shutdown_reason: Option<String>,
    /// True when [`Watch::timeout`] ran out and qemu was ended.
    pub timed_out: bool,
}

/// Runs `inst` in the foreground with the serial console on this terminal (`vmk runin`);
/// returns qemu's exit status as a shell reports it (128 + signal when a signal ended it).
/// The terminal's settings are restored afterwards whatever happens; termination signals
/// are held back until then.
pub fn run_foreground(inst: &Instance, opts: &StartOptions<'_>) -> Result<ExitCode> {
    let cmd = command(inst, Mode::Foreground, opts.adjust)?;
    prepare(inst, &cmd)?;
    eprintln!(
        "{}: serial console on this terminal; leave with Ctrl-A x (Ctrl-A c: qemu monitor, Ctrl-A h: help)",
        inst.cfg.display_name()
    );
    let ended = attach(inst, &cmd, Watch::default())?;
    Ok(process::exit_code(ended.status))
}

/// Runs `cmd`, a foreground command line of `inst` already checked with [`prepare`], on
/// this terminal until qemu exits (or `watch.timeout` ends it); records it for `vmk ps`
/// meanwhile and removes its pidfile (and stops its swtpm) afterwards.
pub fn attach(inst: &Instance, cmd: &QemuCommand, watch: Watch) -> Result<Ended> {
    // Dropped in reverse order: the terminal is restored before held signals arrive.
    let _signals = term::HoldSignals::new()?;
    let _terminal = term::Saved::stdin();
    let mut child = super::with_private_umask(|| cmd.to_command().spawn())
        .with_context(|| format!("starting {}", cmd.program().display()))
        .inspect_err(|_| super::stop_helpers(inst))?;
    let deadline = watch.timeout.map(|t| Instant::now() + t);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch
        .shutdown_reason
        .then(|| watch_shutdown(inst.paths.qmp_socket.clone(), done.clone()));
    let entry = registry::Entry::new(inst, &Endpoints::of(cmd));
    if wait_for_pidfile(&inst.paths.pidfile, child.id()) {
        let _ = registry::add(&entry);
    }
    let waited = wait(&mut child, deadline);
    done.store(true, Ordering::Relaxed);
    let shutdown_reason = watcher.and_then(|w| w.join().ok().flatten());
    let _ = registry::remove(&inst.paths.pidfile);
    let _ = state::remove_pidfile(&inst.paths.pidfile);
    super::stop_helpers(inst);
    let (status, timed_out) = waited?;
    Ok(Ended {
        status,
        shutdown_reason,
        timed_out,
    })
}

/// Waits for `child`; past `deadline`, ends it. True with the status when it was ended.
fn wait(child: &mut std::process::Child, deadline: Option<Instant>) -> Result<(ExitStatus, bool)> {
    let Some(deadline) = deadline else {
        return Ok((child.wait().context("waiting for qemu")?, false));
    };
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            let status = match process::terminate(child, Scope::Child, process::GRACE) {
                Some(s) => s,
                None => child.wait().context("waiting for qemu")?,
            };
            return Ok((status, true));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects to qemu's QMP socket as soon as it answers and returns the reason of its
/// SHUTDOWN event once qemu closed the socket; gives up connecting when `done` is set.
fn watch_shutdown(socket: PathBuf, done: Arc<AtomicBool>) -> JoinHandle<Option<String>> {
    std::thread::spawn(move || loop {
        match qmp::Qmp::connect(&socket, Duration::from_secs(5)) {
            Ok(q) => return q.shutdown_reason(),
            Err(_) if done.load(Ordering::Relaxed) => return None,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
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
