//! Child processes as every tool treats them: their exit status passed on like a shell
//! does, and ended politely, then firmly (one grace-then-kill sequence for all).

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How long a child gets to end after SIGTERM before SIGKILL (qemu, debootstrap and
/// qemu-storage-daemon all end cleanly on SIGTERM well within it).
pub const GRACE: Duration = Duration::from_secs(10);

/// A child's exit status as this process's own: its code, or 128 + the signal that killed
/// it (as a shell reports it), so `vmk ssh false; echo $?` says 1 and a killed command 130+.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    ExitCode::from(exit_status_byte(status))
}

/// The byte [`exit_code`] exits with.
pub fn exit_status_byte(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// The umask of a child that builds a guest's files (chroot, zypper): the usual 022, so
/// what a package or a user creates in the guest gets the modes a guest expects, not
/// vmk's own private [`crate::cli::PRIVATE_UMASK`].
pub const GUEST_UMASK: u32 = 0o022;

/// Runs `f` (which starts a child) with the process umask set to `mask`, then restores
/// the previous one; the child inherits `mask`. vmk's tools are single-threaded when they
/// start children, so the process-wide umask is theirs to change for that moment.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(mask));
    let out = f();
    rustix::process::umask(old);
    out
}

/// Which processes [`terminate`] signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The child alone.
    Child,
    /// The child's whole process group (the child leads it: spawned with `process_group(0)`),
    /// so that what it started ends too.
    Group,
}

/// Ends a child: SIGTERM, up to `grace` for it to go, then SIGKILL; reaps it. Returns its
/// exit status when it could be reaped.
pub fn terminate(child: &mut Child, scope: Scope, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    send(child, scope, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            if scope == Scope::Group {
                // members of the group may outlive their leader briefly
                std::thread::sleep(Duration::from_millis(200));
                send(child, scope, Signal::SIGKILL);
            }
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log::warn!(
        "pid {} did not end within {} of SIGTERM: sending SIGKILL",
        child.id(),
        crate::human::duration(grace)
    );
    send(child, scope, Signal::SIGKILL);
    child.wait().ok()
}

fn send(child: &Child, scope: Scope, sig: Signal) {
    let Ok(raw) = i32::try_from(child.id()) else {
        return;
    };
    let pid = Pid::from_raw(raw);
    let _ = match scope {
        Scope::Child => kill(pid, sig),
        Scope::Group => killpg(pid, sig),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn a_child_inherits_the_umask_asked_for_and_ours_comes_back() {
        let read = || {
            let mode = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
            rustix::process::umask(mode);
            mode.as_raw_mode()
        };
        let before = read();
        let out = with_umask(0o027, || {
            Command::new("sh").args(["-c", "umask"]).output().unwrap()
        });
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0027");
        assert_eq!(read(), before);
    }

    #[test]
    fn exit_codes_pass_through_like_a_shell() {
        let st = |script: &str| Command::new("sh").args(["-c", script]).status().unwrap();
        assert_eq!(exit_status_byte(st("exit 7")), 7);
        assert_eq!(exit_status_byte(st("exit 0")), 0);
        assert_eq!(exit_status_byte(st("kill -TERM $$")), 128 + 15);
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100)); // let the trap be set
        let t = Instant::now();
        let status = terminate(&mut child, Scope::Child, Duration::from_millis(300)).unwrap();
        assert_eq!(status.signal(), Some(9));
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn a_group_ends_with_its_leader() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $! ; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        terminate(&mut child, Scope::Group, GRACE).unwrap();
        assert!(crate::state::wait_for_exit(
            grandchild,
            Duration::from_secs(5)
        ));
    }
}
