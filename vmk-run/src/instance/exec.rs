//! `--exec CMD` (`vmk run`, `vmk snap run`): one command in a VM, one exit status, for
//! pipelines and `git bisect run`. Start the VM, wait for its sshd, run CMD there with this
//! process's stdin, stdout and stderr, end the VM, and exit with CMD's status. A VM that
//! never answers is an error (exit 1); SIGINT, SIGTERM or SIGHUP end the VM first, so that
//! nothing of it is left running whatever happens to this process short of SIGKILL.

use std::path::Path;
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmk_common::config::values::SSHD_STARTED_LINE;
use vmk_common::process::exit_code;
use vmk_common::signals::Interrupts;
use vmk_common::ssh::{self, hostkey::HostKeys, target, wait};
use vmk_common::state;

use super::{kill, start, stop, Instance, StartOptions};

/// How `--exec` ends the VM once the command is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Kill qemu at once: for the throwaway snapshot VM, whose copy is discarded anyway.
    Kill,
    /// ACPI power-down, killed after the timeout: for disk0, which must be left consistent.
    PowerOff(Duration),
}

/// What `--exec` runs and how.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The command, as one string for the guest's shell (as `ssh HOST CMD` passes it).
    pub command: String,
    /// How long to wait for sshd to answer and accept the VM's key.
    pub ssh_timeout: Duration,
    /// How to end the VM afterwards.
    pub end: End,
    /// The guest boots its one-shot init (VMK_EXEC_INIT), which has root's key in place
    /// before sshd starts and says on the console when sshd runs: no `ssh true` before the
    /// command.
    pub one_shot: bool,
}

/// How often a running command is checked for an interruption.
const POLL: Duration = Duration::from_millis(20);

/// The exit status for a process ended by `signal`, as a shell reports it.
fn signal_status(signal: i32) -> ExitCode {
    ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)))
}

/// Starts `inst`, runs `x.command` in it over ssh, ends it; CMD's exit status.
///
/// SIGINT, SIGTERM and SIGHUP are caught from the start ([`Interrupts`]: handlers, not a
/// blocked mask, so qemu and ssh get them as usual) and checked between probes and while
/// the command runs: the ssh child gets SIGTERM, and the VM is ended like after the
/// command.
pub fn exec(inst: &Instance, opts: &StartOptions<'_>, x: &ExecOptions) -> Result<ExitCode> {
    let key = ssh::key_file(&inst.cfg.dir);
    if !key.is_file() {
        return Err(vmk_common::usage!(
            "--exec logs in with the VM's key and {} does not exist: make one with `vmk sshkeygen`",
            key.display()
        ));
    }
    let target = target::target(&inst.cfg)?;
    let signals = Interrupts::install()?;
    let t0 = Instant::now();
    let started = start(inst, opts)?;
    log::info!(
        "qemu pid {} started after {:.2?}",
        started.pid,
        t0.elapsed()
    );
    let result = login_and_run(inst, &key, &target, x, started.pid, &signals);
    let t1 = Instant::now();
    let ended = match x.end {
        End::Kill => kill(inst),
        End::PowerOff(timeout) => stop(inst, timeout),
    };
    log::info!("VM ended after {:.2?}: {:?}", t1.elapsed(), ended);
    ended.with_context(|| format!("ending {}", inst.cfg.display_name()))?;
    match signals.signal() {
        None => result,
        Some(sig) => {
            vmk_common::errln!(
                "{}: interrupted (signal {sig}): the VM was ended",
                inst.cfg.display_name()
            );
            Ok(signal_status(sig))
        }
    }
}

/// Waits for `child`, sending it SIGTERM once `signals` caught one (it may have had the
/// terminal's Ctrl-C itself already).
fn wait_interruptible(child: &mut Child, signals: &Interrupts) -> Result<ExitStatus> {
    let mut told = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for ssh")? {
            return Ok(status);
        }
        if signals.interrupted() && !told {
            told = true;
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for sshd (while qemu `pid` lives and no signal came), then runs the command.
fn login_and_run(
    inst: &Instance,
    key: &Path,
    target: &target::Target,
    x: &ExecOptions,
    pid: u32,
    signals: &Interrupts,
) -> Result<ExitCode> {
    let console_log = inst.paths.console_log.clone();
    let alive = move || -> Result<()> {
        signals.check()?;
        if state::process_gone(pid) {
            bail!(
                "qemu (pid {pid}) exited before the guest's sshd answered: see its console log {}",
                console_log.display()
            );
        }
        Ok(())
    };
    let host_keys = HostKeys::for_vm(&inst.cfg)?;
    let never = || format!("{} never answered on ssh", inst.cfg.display_name());
    if x.one_shot {
        let console = ConsoleWatch::new(&inst.paths.console_log);
        let started = || console.saw(SSHD_STARTED_LINE);
        let up = wait::wait_for_sshd_while(target, x.ssh_timeout, &alive, &started)
            .with_context(never)?;
        log::info!("sshd banner after {up:.2?}, login after {up:.2?} (one-shot init)");
    } else {
        let waited = wait::wait_for_ssh_while(key, target, &host_keys, x.ssh_timeout, &alive)
            .with_context(never)?;
        log::info!(
            "sshd banner after {:.2?}, login after {:.2?}",
            waited.banner,
            waited.login
        );
    }
    let mut c = ssh::ssh_command(
        key,
        target,
        &host_keys,
        ssh::Auth::KeyBatch,
        Some(ssh::CONNECT_TIMEOUT),
        false,
        std::slice::from_ref(&x.command),
    );
    log::debug!("{}", vmk_common::shell::command_line(&c));
    let mut child = c
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running ssh (is the openssh client installed?)")?;
    let status = wait_interruptible(&mut child, signals)?;
    if !signals.interrupted() && status.code() == Some(255) && state::process_gone(pid) {
        return Err(anyhow!(
            "qemu (pid {pid}) exited while the command ran: see its console log {}",
            inst.paths.console_log.display()
        ));
    }
    Ok(exit_code(status))
}

/// Watches the console log qemu appends to for a line, from where the log ended when the
/// watch began (the log of earlier boots stays in it).
struct ConsoleWatch {
    path: std::path::PathBuf,
    from: std::cell::Cell<u64>,
    tail: std::cell::RefCell<Vec<u8>>,
}

impl ConsoleWatch {
    fn new(path: &Path) -> ConsoleWatch {
        ConsoleWatch {
            path: path.to_path_buf(),
            from: std::cell::Cell::new(std::fs::metadata(path).map_or(0, |m| m.len())),
            tail: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// True once the log got `line` since the watch began (reads only what is new).
    fn saw(&self, line: &str) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return false;
        };
        let mut new = Vec::new();
        if f.seek(SeekFrom::Start(self.from.get())).is_err() || f.read_to_end(&mut new).is_err() {
            return false;
        }
        self.from.set(self.from.get() + new.len() as u64);
        let mut tail = self.tail.borrow_mut();
        tail.extend_from_slice(&new);
        let found = tail.windows(line.len()).any(|w| w == line.as_bytes());
        // keep what could be the start of the line
        let keep = tail.len().saturating_sub(line.len());
        tail.drain(..keep);
        found
    }
}
