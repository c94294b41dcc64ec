//! ssh and scp run as children whose stderr passes through this process (as it comes), so
//! that a refused host key ends in an error that says what happened and what to do, not
//! only in ssh's own terse (or shouting) lines.
//!
//! Otherwise the child is the session, as if vmk had exec'd it: its exit status is passed
//! through, stdin and stdout are the terminal's, SIGINT and SIGQUIT (which the terminal
//! sends to the whole process group, ssh included) do not end this process before ssh, and
//! SIGTERM and SIGHUP sent to this process are passed on to ssh. (The signals are blocked
//! after ssh starts: a child inherits the mask, and ssh must keep getting them.)

use std::io::{Read, Write};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::process::exit_code;
use anyhow::{Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use crate::ssh::hostkey::{explain, refusal, HostKeys};
use crate::ssh::target::Target;

/// How much of ssh's stderr is kept to look for host-key messages (they come first).
const KEPT: usize = 64 << 10;

/// A running ssh (or scp) whose stderr is copied to ours.
#[derive(Debug)]
pub struct Watched {
    /// The child (its stdin as the command set it).
    pub child: Child,
    reader: Option<JoinHandle<Vec<u8>>>,
    host_keys: HostKeys,
    known_before: bool,
}

/// Starts `c` with its stderr through this process.
pub fn spawn(mut c: Command, host_keys: &HostKeys) -> Result<Watched> {
    let known_before = host_keys.known()?;
    let program = c.get_program().to_string_lossy().into_owned();
    let mut child = c
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (install openssh-client)"))?;
    // Blocked only now: a child inherits the signal mask, and ssh must get the terminal's
    // signals. The threads started below inherit it (the forwarder waits for its two).
    let mut blocked = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        blocked.add(s);
    }
    blocked.thread_block().context("blocking signals")?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("child pid")?);
    std::thread::spawn(move || {
        let mut forwarded = SigSet::empty();
        forwarded.add(Signal::SIGTERM);
        forwarded.add(Signal::SIGHUP);
        while let Ok(sig) = forwarded.wait() {
            let _ = kill(pid, sig);
        }
    });
    let mut stderr = child.stderr.take().context("the child's stderr")?;
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = std::io::stderr().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    let room = KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    });
    Ok(Watched {
        child,
        reader: Some(reader),
        host_keys: host_keys.clone(),
        known_before,
    })
}

impl Watched {
    /// Waits for the child: its status, or the error for a refused host key.
    pub fn wait(mut self, target: &Target) -> Result<ExitStatus> {
        let status = self.child.wait().context("waiting for ssh")?;
        let kept = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        check(status, &kept, &self.host_keys, target, self.known_before)?;
        Ok(status)
    }
}

/// The error for a host key ssh refused (status 255 and its message), else Ok; says so
/// when this connection taught the VM's known_hosts file the guest's key.
pub fn check(
    status: ExitStatus,
    stderr: &[u8],
    host_keys: &HostKeys,
    target: &Target,
    known_before: bool,
) -> Result<()> {
    if let Some(r) = refusal(status.code(), stderr) {
        return Err(explain(r, host_keys, target));
    }
    if !known_before && host_keys.learn && host_keys.known().unwrap_or(false) {
        log::info!(
            "learned the guest's host key from {target} into {}",
            host_keys.file.display()
        );
    }
    Ok(())
}

/// Runs `c` watched and passes its exit status through.
pub fn run(c: Command, host_keys: &HostKeys, target: &Target) -> Result<ExitCode> {
    let status = spawn(c, host_keys)?.wait(target)?;
    Ok(exit_code(status))
}
