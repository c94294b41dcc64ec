//! Every qemu a test starts must die with the test, also when the test fails or panics:
//! [`QemuGuard`] kills exactly the pid it was given (never by name) when dropped.
//!
//! [`PidfileGuard`] is armed before the command that starts a daemonized qemu, so a test
//! that fails in between still kills it.
//!
//! A pid read from a pidfile may be reused by an unrelated process once qemu is gone, so
//! the guard remembers the process's start time and only signals a process that still
//! has it.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills its qemu (SIGKILL, then reaps it) when dropped.
#[derive(Debug)]
pub struct QemuGuard {
    pid: i32,
    /// Start time (clock ticks since boot) from /proc/<pid>/stat: identifies the process.
    start_time: Option<u64>,
    /// Set when qemu is our child, so it can be reaped.
    child: Option<Child>,
}

impl QemuGuard {
    /// Guards a qemu started with `Command::spawn`.
    pub fn from_child(child: Child) -> Self {
        let pid = child.id() as i32;
        QemuGuard {
            pid,
            start_time: start_time(pid),
            child: Some(child),
        }
    }

    /// Guards a running process by pid (e.g. a daemonized qemu).
    pub fn from_pid(pid: i32) -> Result<Self> {
        if pid <= 1 {
            bail!("refusing to guard pid {pid}");
        }
        let start_time =
            start_time(pid).with_context(|| format!("no process with pid {pid} to guard"))?;
        Ok(QemuGuard {
            pid,
            start_time: Some(start_time),
            child: None,
        })
    }

    /// Guards the pid written to `path` by `qemu -daemonize -pidfile path`, waiting up to
    /// 10 s for the file to appear and hold a pid.
    pub fn from_pidfile(path: &Path) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Ok(pid) = text.trim().parse::<i32>() {
                return Self::from_pid(pid)
                    .with_context(|| format!("guarding the pid in {}", path.display()));
            }
            if Instant::now() >= deadline {
                bail!("no pid in {} after 10 s", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guarded pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True while the guarded process exists (and is not a zombie).
    pub fn is_running(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        self.is_same_process()
    }

    /// Waits until the process exits by itself (e.g. the guest powered off); returns its
    /// status when it was our child. Fails after `timeout`; the guard still kills it then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait().context("waiting for qemu")? {
                    return Ok(Some(status));
                }
            } else if !self.is_same_process() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                bail!("qemu (pid {}) still runs after {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process now (SIGKILL) and waits until it is gone.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn is_same_process(&self) -> bool {
        let now = start_time(self.pid);
        now.is_some() && now == self.start_time && !is_zombie(self.pid)
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if !self.is_same_process() {
            return; // gone already, or the pid now belongs to someone else
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        // Not our child: whoever is its parent reaps it; wait until it is gone or a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_same_process() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A guard armed BEFORE the command that starts a daemonized qemu runs (`vmk run`): it
/// knows only the pidfile qemu will write. Dropped while armed (the command failed, the
/// test returned an error or panicked), it kills the qemu the pidfile names, if that
/// process is a qemu; [`PidfileGuard::into_guard`] turns it into a [`QemuGuard`] once the
/// pidfile holds the pid. So no qemu outlives a test that failed between starting it and
/// guarding it.
#[derive(Debug)]
pub struct PidfileGuard {
    pidfile: Option<std::path::PathBuf>,
}

impl PidfileGuard {
    /// Arms a guard for the qemu that will write `pidfile`.
    pub fn arm(pidfile: &Path) -> Self {
        PidfileGuard {
            pidfile: Some(pidfile.to_path_buf()),
        }
    }

    /// The [`QemuGuard`] of the pid in the pidfile (waiting up to 10 s for it, as
    /// [`QemuGuard::from_pidfile`]); disarms this guard.
    pub fn into_guard(mut self) -> Result<QemuGuard> {
        let pidfile = self.pidfile.take().expect("armed until here");
        QemuGuard::from_pidfile(&pidfile)
    }
}

impl Drop for PidfileGuard {
    fn drop(&mut self) {
        let Some(pidfile) = self.pidfile.take() else {
            return;
        };
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return; // qemu never wrote it: nothing started
        };
        let is_qemu = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu"));
        if is_qemu {
            if let Ok(guard) = QemuGuard::from_pid(pid) {
                drop(guard); // kills it
            }
        }
    }
}

/// Field 22 of /proc/<pid>/stat: when the process started.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|st| st == "Z" || st == "X")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn drop_kills_a_child() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let mut guard = QemuGuard::from_child(child);
        assert!(guard.is_running());
        drop(guard);
        assert!(start_time(pid).is_none(), "child {pid} was not reaped");
    }

    #[test]
    fn pidfile_guard_kills_that_pid_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pidfile = dir.path().join("q.pid");
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        let mut guard = QemuGuard::from_pidfile(&pidfile).unwrap();
        assert_eq!(guard.pid(), child.id() as i32);
        assert!(guard.is_running());
        // It is our child here, so the guard cannot reap it: it must see the zombie as gone.
        let killer = std::thread::spawn(move || drop(guard));
        let status = child.wait().unwrap();
        killer.join().unwrap();
        assert!(!status.success());
    }

    #[test]
    fn an_armed_pidfile_guard_kills_only_a_qemu_named_by_the_pidfile() {
        let dir = tempfile::tempdir().unwrap();
        // a process whose command line says qemu (a copy of sleep under that name)
        let fake = dir.path().join("qemu-system-fake");
        crate::copy_executable(Path::new("/bin/sleep"), &fake).unwrap();
        let mut child = Command::new(&fake).arg("60").spawn().unwrap();
        let pidfile = dir.path().join("q.pid");
        let armed = PidfileGuard::arm(&pidfile);
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        drop(armed); // the "test" failed before guarding it
        let status = child.wait().unwrap();
        assert!(!status.success(), "the armed guard did not kill it");
        // not a qemu: left alone
        let mut other = Command::new("sleep").arg("60").spawn().unwrap();
        std::fs::write(&pidfile, format!("{}\n", other.id())).unwrap();
        drop(PidfileGuard::arm(&pidfile));
        assert!(
            other.try_wait().unwrap().is_none(),
            "killed a process that is no qemu"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        // no pidfile: nothing happens; into_guard disarms
        drop(PidfileGuard::arm(&dir.path().join("absent.pid")));
        let mut third = Command::new(&fake).arg("60").spawn().unwrap();
        std::fs::write(&pidfile, format!("{}\n", third.id())).unwrap();
        let guard = PidfileGuard::arm(&pidfile).into_guard().unwrap();
        assert_eq!(guard.pid(), third.id() as i32);
        let killer = std::thread::spawn(move || drop(guard));
        assert!(!third.wait().unwrap().success());
        killer.join().unwrap();
    }

    #[test]
    fn guard_notices_exit_and_ignores_reused_pids() {
        let child = Command::new("true").spawn().unwrap();
        let mut guard = QemuGuard::from_child(child);
        let status = guard.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(status.unwrap().success());
        assert!(!guard.is_running());
        assert!(QemuGuard::from_pid(1).is_err());
    }
}
