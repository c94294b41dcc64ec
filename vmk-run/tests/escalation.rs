//! `stop` and `kill` when the first step is not enough, against a real qemu (TCG) running
//! the busybox guest:
//! - `stop` against a guest that ignores ACPI (booted with `acpi=off`: it has no power
//!   button) waits its timeout, then kills qemu; the guest's console shows it never powered
//!   off.
//! - `kill` against a qemu that cannot act on SIGINT or SIGTERM (stopped with SIGSTOP: the
//!   signals stay pending) escalates to SIGKILL: SIGINT, SIGTERM, SIGKILL a second apart.
//!
//! The oracle is the kernel: this test process makes itself a child subreaper, so the
//! daemonized qemu becomes its child and `waitpid` tells how it ended (killed by SIGKILL,
//! or exited). That is why these tests have a binary of their own. While `vmk` works, the
//! test watches qemu's `/proc/PID/status`: when each signal became pending on the stopped
//! process (`ShdPnd`), and when it died (a zombie until this test reaps it).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rustix::process::{Pid, WaitOptions, WaitStatus};
use vmk_testkit::guest::{self, BUSYBOX_READY};
use vmk_testkit::isolation::VmDir;
use vmk_testkit::qemu_guard::{PidfileGuard, QemuGuard};
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// A hang guard, not a timing claim: two slow cores shared with other tests.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> std::process::ExitCode {
    // Orphans (the daemonized qemu) become our children, so we can see how they end.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("PR_SET_CHILD_SUBREAPER");
    let needs = &[Need::Qemu, Need::Busybox, Need::Kernel];
    run_system_tests(vec![
        SystemTest::new(
            "stop_waits_its_timeout_then_kills_a_guest_that_ignores_acpi",
            needs,
            stop_kills_a_guest_that_ignores_acpi,
        ),
        SystemTest::new(
            "kill_escalates_to_sigkill_when_qemu_does_not_end",
            needs,
            kill_escalates_to_sigkill,
        ),
    ])
}

/// A busybox VM in its own directory, on a reserved VM number, in a private environment.
struct Vm(VmDir);

impl Vm {
    fn new(append_extra: &str) -> Result<Vm> {
        let g = guest::busybox_guest()?;
        let config = format!(
            "VMK_NAME=esc\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\n\
             VMK_CPU=1\nVMK_ACCEL=tcg\nVMK_NET_TYPE=none\nVMK_KERNEL='{}'\n\
             VMK_INITRD='{}'\nVMK_APPEND='{} {append_extra}'\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append
        );
        VmDir::new(&config, |dir| {
            Ok(std::fs::File::create(dir.join("disk0.raw"))?.set_len(64 << 20)?)
        })
        .map(Vm)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn console_log(&self) -> PathBuf {
        self.path().join("disk0.raw.console.log")
    }

    fn vmk_run(&self, args: &[&str]) -> Result<Output> {
        self.0.run(env!("CARGO_BIN_EXE_vmk-run"), args)
    }

    /// `vmk-run run`, the qemu guarded by the pid in its pidfile; waits for the guest's
    /// shell prompt line.
    fn start(&self) -> Result<QemuGuard> {
        let armed = PidfileGuard::arm(&self.path().join("disk0.raw.pid"));
        let out = self.vmk_run(&["run"])?;
        ensure!(out.status.success(), "vmk-run run failed");
        let guard = armed.into_guard()?;
        guest::wait_for_file_line(&self.console_log(), BUSYBOX_READY, BOOT_TIMEOUT)?;
        Ok(guard)
    }
}

/// Waits (as its subreaper) until `pid` ends; how it ended.
fn reap(pid: i32, timeout: Duration) -> Result<WaitStatus> {
    let deadline = Instant::now() + timeout;
    let p = Pid::from_raw(pid).context("pid 0")?;
    loop {
        if let Some((_, status)) = rustix::process::waitpid(Some(p), WaitOptions::NOHANG)
            .with_context(|| format!("waitpid {pid}: is qemu not our (subreaped) child?"))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("qemu pid {pid} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the kernel showed of qemu `pid` while `vmk` worked on it: when SIGINT and SIGTERM
/// were first seen pending, and when it was first seen dead (a zombie: nobody reaps it but
/// this test). Times since the watch began.
#[derive(Debug, Default)]
struct Timeline {
    sigint: Option<Duration>,
    sigterm: Option<Duration>,
    dead: Option<Duration>,
}

/// The signals pending on the whole process (`ShdPnd`, a hex mask, bit N-1 for signal N)
/// and whether it is a zombie, from /proc/PID/status; `None` once it is gone.
fn pending_and_dead(pid: i32) -> Option<(u64, bool)> {
    let status = vmk_testkit::ProcStatus::read(pid)?;
    let pending = u64::from_str_radix(status.field("ShdPnd")?, 16).ok()?;
    let zombie = status.field("State")?.starts_with('Z');
    Some((pending, zombie))
}

/// Runs `vmk` (the closure) in a thread and watches qemu `pid` every few milliseconds until
/// both have ended.
fn watch_while(
    pid: i32,
    vmk: impl FnOnce() -> Result<Output> + Send,
) -> Result<(Output, Timeline)> {
    let bit = |sig: nix::sys::signal::Signal| 1u64 << (sig as i32 - 1);
    let began = Instant::now();
    let mut seen = Timeline::default();
    std::thread::scope(|s| {
        let worker = s.spawn(vmk);
        while seen.dead.is_none() || !worker.is_finished() {
            if began.elapsed() > Duration::from_secs(120) {
                bail!("qemu pid {pid} still alive 120 s into the watch: {seen:?}");
            }
            let at = began.elapsed();
            match pending_and_dead(pid) {
                Some((_, true)) | None => {
                    seen.dead.get_or_insert(at);
                }
                Some((pending, false)) => {
                    if pending & bit(nix::sys::signal::Signal::SIGINT) != 0 {
                        seen.sigint.get_or_insert(at);
                    }
                    if pending & bit(nix::sys::signal::Signal::SIGTERM) != 0 {
                        seen.sigterm.get_or_insert(at);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the vmk thread panicked"))??;
        Ok((out, seen))
    })
}

fn stop_kills_a_guest_that_ignores_acpi() -> Result<()> {
    let vm = Vm::new("acpi=off")?;
    let guard = vm.start()?;
    let pid = guard.pid();
    let log = std::fs::read_to_string(vm.console_log())?;
    ensure!(
        !log.contains("Power Button"),
        "the guest has an ACPI power button despite acpi=off:\n{log}"
    );
    let timeout = 3;
    let started = Instant::now();
    let (out, seen) = watch_while(pid, || {
        vm.vmk_run(&["stop", "--timeout", &timeout.to_string()])
    })?;
    let took = started.elapsed();
    eprintln!("qemu under `stop`: {seen:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "stop failed: {err}");
    ensure!(
        err.contains(&format!(
            "did not power off within {timeout}s: killing qemu pid {pid}"
        )),
        "stop did not say it killed after the timeout: {err}"
    );
    // it really waited for the guest (a lower bound: the timeout is the behaviour)
    ensure!(
        took >= Duration::from_secs(timeout),
        "stop returned after {took:?}, before its {timeout} s timeout"
    );
    // qemu lived through the whole timeout and died only after it, of vmk's signals: it
    // exits when it handles SIGINT or SIGTERM, else SIGKILL ends it
    let dead = seen.dead.context("qemu never died")?;
    ensure!(
        dead >= Duration::from_secs(timeout),
        "qemu died {dead:?} into the stop, before its {timeout} s timeout"
    );
    let status = reap(pid, Duration::from_secs(30))?;
    eprintln!("qemu ended: {status:?}");
    ensure!(
        status.exit_status() == Some(0) || status.terminating_signal() == Some(libc_sigkill()),
        "qemu pid {pid} did not end as vmk's kill ends it: {status:?}"
    );
    // the guest never powered off: the kernel prints this line when it does
    let log = std::fs::read_to_string(vm.console_log())?;
    ensure!(
        !log.contains("reboot: Power down"),
        "the guest powered off by itself:\n{log}"
    );
    ensure!(
        !vm.path().join("disk0.raw.pid").exists(),
        "stop left the pidfile"
    );
    drop(guard);
    Ok(())
}

fn kill_escalates_to_sigkill() -> Result<()> {
    let vm = Vm::new("")?;
    let guard = vm.start()?;
    let pid = guard.pid();
    // the control for the other test: with ACPI the kernel names the power button
    let log = std::fs::read_to_string(vm.console_log())?;
    ensure!(
        log.contains("Power Button"),
        "no power button on an ACPI guest's console:\n{log}"
    );
    // SIGINT and SIGTERM stay pending on a stopped process; only SIGKILL ends it
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    let (out, seen) = watch_while(pid, || vm.vmk_run(&["kill"]))?;
    eprintln!("the stopped qemu under `kill`: {seen:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "kill failed: {text}");
    ensure!(
        text.contains(&format!("killed qemu pid {pid} (SIGKILL)")),
        "kill does not report SIGKILL: {text}"
    );
    // SIGINT, then SIGTERM a second later, then SIGKILL a second after that. Lower bounds,
    // with room for this watcher seeing one signal late (a busy machine makes vmk's own gaps
    // only longer); back-to-back signals would be milliseconds apart
    let (Some(int), Some(term), Some(dead)) = (seen.sigint, seen.sigterm, seen.dead) else {
        bail!("not every step of the escalation was seen: {seen:?}");
    };
    let second = Duration::from_millis(800);
    ensure!(
        term >= int + second && dead >= term + second,
        "SIGINT, SIGTERM and the end not a second apart: {seen:?}"
    );
    let status = reap(pid, Duration::from_secs(30))?;
    ensure!(
        status.terminating_signal() == Some(libc_sigkill()),
        "qemu pid {pid} did not die of SIGKILL: {status:?}"
    );
    ensure!(
        !vm.path().join("disk0.raw.pid").exists(),
        "kill left the pidfile"
    );
    // a control: the same VM started again ends at the first signal (SIGINT)
    let guard2 = vm.start()?;
    let pid2 = guard2.pid();
    let out = vm.vmk_run(&["kill"])?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("killed qemu pid {pid2} (SIGINT)")),
        "a running qemu did not end at SIGINT: {text}"
    );
    let status = reap(pid2, Duration::from_secs(30))?;
    ensure!(
        status.terminating_signal() != Some(libc_sigkill()),
        "qemu pid {pid2} needed SIGKILL: {status:?}"
    );
    drop((guard, guard2));
    Ok(())
}

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}
