//! Every qemu a test starts must die with the test, also when the test fails or panics:
//! [`QemuGuard`] kills exactly the pid it was given (never by name) when dropped.
//!
//! [`PidfileGuard`] is armed before the command that starts a daemonized qemu, so a test
//! that fails in between still kills it.
//!
//! A pid read from a pidfile may be reused by an unrelated process once qemu is gone, so
//! the guard remembers the process's start time and only signals a process that still
//! has it.
//!
//! A test binary that is interrupted (Ctrl-C on `make test`, a CI timeout's SIGTERM) runs
//! no destructor: every live guard is also listed, and [`kill_all_guarded`] kills what the
//! list holds; the system-test harness calls it on SIGINT, SIGTERM and SIGHUP, so a
//! daemonized qemu does not outlive the test run that started it.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What live guards hold: (pid, start time) of each guarded process, and each armed
/// pidfile.
type Live = (Vec<(i32, Option<u64>)>, Vec<PathBuf>);
static LIVE: Mutex<Live> = Mutex::new((Vec::new(), Vec::new()));

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Kills (SIGKILL) every process a live [`QemuGuard`] holds and the qemu of every armed
/// [`PidfileGuard`], each only if it is still that process (same start time; a qemu for a
/// pidfile's pid). For an interrupted test binary, whose guards will never be dropped.
/// Returns how many it killed.
pub fn kill_all_guarded() -> usize {
    let listed = live().clone();
    kill_listed(listed)
}

/// Kills what `(pids, pidfiles)` lists, as [`kill_all_guarded`] says.
fn kill_listed((pids, pidfiles): Live) -> usize {
    let from_pidfiles = pidfiles
        .iter()
        .filter_map(|f| qemu_in_pidfile(f))
        .map(|pid| (pid, start_time(pid)));
    let mut killed = 0;
    for (pid, started) in pids.into_iter().chain(from_pidfiles) {
        if started.is_some()
            && start_time(pid) == started
            && !is_zombie(pid)
            && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// The pid in `pidfile`, when that process is a qemu.
fn qemu_in_pidfile(pidfile: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(pidfile)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 1)?;
    String::from_utf8_lossy(&command_line(pid)?)
        .contains("qemu")
        .then_some(pid)
}

/// /proc/<pid>/cmdline, None when there is no such process. A process in the middle of
/// exec shows an empty one for a moment (its new memory has no arguments yet; a vfork
/// parent already runs on): wait up to a second for it.
fn command_line(pid: i32) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if !c.is_empty() || Instant::now() >= deadline || is_zombie(pid) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
        .listed()
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
        }
        .listed())
    }

    /// Puts the guard on the list [`kill_all_guarded`] reads.
    fn listed(self) -> Self {
        live().0.push((self.pid, self.start_time));
        self
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
        live().0.retain(|&(pid, _)| pid != self.pid);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if !self.is_same_process() {
            return; // gone already, or the pid now belongs to someone else
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        // Not our child: whoever is its parent reaps it; wait until it is gone or a zombie,
        // so that its ports and image are free for what the test does next. A killed qemu
        // with a gigabyte guest took over 5 s on a loaded machine (the next test's `vmk
        // snap run` found the VNC port still in use).
        let deadline = Instant::now() + KILL_WAIT;
        while self.is_same_process() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.is_same_process() {
            eprintln!(
                "qemu pid {} still exists {KILL_WAIT:?} after SIGKILL",
                self.pid
            );
        }
    }
}

/// How long [`QemuGuard`] waits for a qemu it SIGKILLed to be gone.
const KILL_WAIT: Duration = Duration::from_secs(60);

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
        live().1.push(pidfile.to_path_buf());
        PidfileGuard {
            pidfile: Some(pidfile.to_path_buf()),
        }
    }

    /// The [`QemuGuard`] of the pid in the pidfile (waiting up to 10 s for it, as
    /// [`QemuGuard::from_pidfile`]); disarms this guard.
    pub fn into_guard(mut self) -> Result<QemuGuard> {
        let pidfile = self.pidfile.take().expect("armed until here");
        let guard = QemuGuard::from_pidfile(&pidfile);
        unlist_pidfile(&pidfile);
        guard
    }
}

fn unlist_pidfile(pidfile: &Path) {
    let mut live = live();
    if let Some(i) = live.1.iter().position(|p| p == pidfile) {
        live.1.remove(i);
    }
}

impl Drop for PidfileGuard {
    fn drop(&mut self) {
        let Some(pidfile) = self.pidfile.take() else {
            return;
        };
        unlist_pidfile(&pidfile);
        // no pid (qemu never wrote it: nothing started), or not a qemu: nothing to kill
        if let Some(pid) = qemu_in_pidfile(&pidfile) {
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

    /// What an interrupted test binary kills: the processes its live guards hold, and
    /// no longer those of guards that were dropped.
    #[test]
    fn live_guards_are_listed_and_killed_from_the_list() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let mut guard = QemuGuard::from_child(child);
        let listed = live().0.iter().find(|&&(p, _)| p == pid).copied();
        assert!(listed.is_some(), "a live guard is not listed");
        // only this test's entry: other tests of this binary run alongside
        assert_eq!(kill_listed((vec![listed.unwrap()], Vec::new())), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while guard.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!guard.is_running(), "pid {pid} survived kill_all_guarded");
        drop(guard);
        assert!(
            !live().0.iter().any(|&(p, _)| p == pid),
            "a dropped guard stays listed"
        );
    }
}
