//! `vmk run` killed (SIGKILL) at each step of a start, with a real qemu booting the busybox
//! guest under TCG: whatever it leaves behind (a qemu that runs although vmk never saw QMP
//! answer, a pidfile and sockets of a qemu that died since), `info` tells the truth and
//! exits 0, `kill` and `stop` end exactly that qemu, and the next `vmk run` starts cleanly,
//! saying what stale files it removed.
//!
//! The faults come from vmk-run's test-only hook: `VMK_TEST_FAULT=<step>` makes it SIGKILL
//! itself at that step (`vmk_run::instance::FAULT_STEPS`). Every qemu is found by scanning
//! /proc for the test's own image path (a fresh temporary directory) and guarded by its
//! pid, so a failing test leaves none running and never signals anything else.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::guest;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> std::process::ExitCode {
    let bb = &[Need::Qemu, Need::Busybox, Need::Kernel];
    let mut tests: Vec<SystemTest> = vmk_run::instance::FAULT_STEPS
        .iter()
        .map(|&step| {
            SystemTest::new(
                &format!("killed_at_{}", step.replace('-', "_")),
                bb,
                move || killed_at(step),
            )
        })
        .collect();
    tests.push(SystemTest::new(
        "a_crashed_qemus_pidfile_and_sockets_are_cleared",
        bb,
        crashed_qemu,
    ));
    run_system_tests(tests)
}

/// One VM directory with the busybox guest: no network and VNC on a unix socket, so that
/// tests running side by side need no TCP port.
struct Vm {
    /// Its own HOME and runtime directory (the registry `ps` reads).
    env: TestEnv,
    _slot: VmSlot,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    image: PathBuf,
    pidfile: PathBuf,
}

impl Vm {
    fn new() -> Result<Vm> {
        let slot = VmSlot::reserve()?;
        let vnc = slot.number();
        let g = guest::busybox_guest()?;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let image = dir.join("disk0.raw");
        std::fs::File::create(&image)?.set_len(64 << 20)?;
        std::fs::write(
            dir.join("vm-config"),
            format!(
                "VMK_NAME=fault{vnc}\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\n\
                 VMK_CPU=1\nVMK_ACCEL=tcg\nVMK_VNC={vnc}\nVMK_VNC_SOCKET=yes\nVMK_NET_TYPE=none\n\
                 VMK_KERNEL='{}'\nVMK_INITRD='{}'\nVMK_APPEND='{}'\n",
                g.kernel.display(),
                g.initrd.display(),
                g.append
            ),
        )?;
        Ok(Vm {
            env: TestEnv::new()?,
            _slot: slot,
            pidfile: dir.join("disk0.raw.pid"),
            _tmp: tmp,
            dir,
            image,
        })
    }

    fn vmk(&self, args: &[&str], fault: Option<&str>) -> Result<Output> {
        let mut cmd = self.env.command(env!("CARGO_BIN_EXE_vmk-run"));
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("VMK_TEST_FAULT")
            .stdin(Stdio::null());
        if let Some(f) = fault {
            cmd.env("VMK_TEST_FAULT", f);
        }
        let out = cmd.output().context("running vmk-run")?;
        eprintln!(
            "[{}] $ {}vmk-run {} → {}\n{}{}",
            self.dir.display(),
            fault
                .map(|f| format!("VMK_TEST_FAULT={f} "))
                .unwrap_or_default(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    fn ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.vmk(args, None)?;
        ensure!(
            out.status.success(),
            "vmk-run {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// `info --json`: (state, pid), checked to exit 0.
    fn info(&self) -> Result<(String, Option<u64>)> {
        let out = self.ok(&["info", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("info --json is not JSON")?;
        let state = v["state"].as_str().context("no state")?.to_string();
        Ok((state, v["pid"].as_u64()))
    }

    /// Whether `ps --json` lists this VM, and with which pid.
    fn ps_pid(&self) -> Result<Option<u64>> {
        let out = self.ok(&["ps", "--json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array()
            .context("ps --json is not an array")?
            .iter()
            .find(|e| e["dir"].as_str().map(Path::new) == Some(self.dir.as_path()))
            .and_then(|e| e["pid"].as_u64()))
    }

    /// The live processes whose argv[0] is a qemu and whose command line names this VM's
    /// image (its directory is a fresh temporary one: no other process names it).
    fn qemu_pids(&self) -> Vec<i32> {
        let needle = self.image.as_os_str().as_encoded_bytes().to_vec();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let argv0 = raw.split(|&b| b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
            if base.starts_with(b"qemu") && raw.windows(needle.len()).any(|w| w == needle) {
                pids.push(pid);
            }
        }
        pids
    }

    /// The one qemu of this VM, once it has daemonized and written its pidfile (qemu
    /// writes it itself, whether or not vmk-run is still there to read it): guarded.
    fn wait_for_qemu(&self) -> Result<QemuGuard> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pids = self.qemu_pids();
            let in_pidfile = std::fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let (&[pid], Some(p)) = (pids.as_slice(), in_pidfile) {
                if p == pid {
                    return QemuGuard::from_pid(pid);
                }
            }
            if Instant::now() >= deadline {
                // guard whatever runs so that it dies with the test
                let _guards: Vec<_> = pids
                    .iter()
                    .filter_map(|&p| QemuGuard::from_pid(p).ok())
                    .collect();
                bail!("no single qemu with a pidfile naming it: qemu pids {pids:?}, pidfile {in_pidfile:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sockets qemu makes beside the image (QMP, guest agent, console, VNC).
    fn sockets(&self) -> Vec<PathBuf> {
        ["qmp", "qga", "con", "vnc"]
            .iter()
            .map(|ext| self.dir.join(format!("disk0.raw.{ext}")))
            .collect()
    }

    fn sockets_left(&self) -> Vec<PathBuf> {
        self.sockets()
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .collect()
    }

    /// Nothing of a running VM is left: no qemu, no pidfile, no socket, `info` says
    /// stopped, `isrunning` exits 1, `ps` does not list it.
    fn check_stopped(&self) -> Result<()> {
        ensure!(
            self.qemu_pids().is_empty(),
            "a qemu still runs: {:?}",
            self.qemu_pids()
        );
        ensure!(!self.pidfile.exists(), "the pidfile is left");
        ensure!(
            self.sockets_left().is_empty(),
            "sockets left: {:?}",
            self.sockets_left()
        );
        let (state, pid) = self.info()?;
        ensure!(
            state == "stopped" && pid.is_none(),
            "info says {state} {pid:?}"
        );
        let out = self.vmk(&["isrunning"], None)?;
        ensure!(out.status.code() == Some(1), "isrunning: {}", out.status);
        ensure!(self.ps_pid()?.is_none(), "ps still lists the VM");
        Ok(())
    }

    /// The VM runs as qemu `pid`, and every command says so.
    fn check_running(&self, pid: i32) -> Result<()> {
        let (state, info_pid) = self.info()?;
        ensure!(
            state == "running" && info_pid == Some(pid as u64),
            "info says {state} {info_pid:?}, qemu is pid {pid}"
        );
        self.ok(&["isrunning"])?;
        ensure!(
            self.ps_pid()? == Some(pid as u64),
            "ps does not list qemu pid {pid}"
        );
        // A second start is refused, naming the pid, and starts nothing.
        let out = self.vmk(&["run"], None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1) && err.contains(&format!("already runs (pid {pid})")),
            "a second run was not refused: {err}"
        );
        ensure!(
            self.qemu_pids() == [pid],
            "qemu pids {:?}",
            self.qemu_pids()
        );
        Ok(())
    }

    /// `vmk run` killed at `step`: checks that it died there and returns the qemu it
    /// started, if any (none before qemu is spawned).
    fn run_killed_at(&self, step: &str) -> Result<Option<QemuGuard>> {
        let out = self.vmk(&["run"], Some(step))?;
        ensure!(
            out.status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32),
            "vmk-run was not killed at {step}: {}",
            out.status
        );
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("VMK_TEST_FAULT={step}")),
            "vmk-run did not die at {step}"
        );
        if step == "before-qemu" {
            std::thread::sleep(Duration::from_millis(300));
            ensure!(
                self.qemu_pids().is_empty(),
                "qemu started before qemu-spawned"
            );
            return Ok(None);
        }
        let mut guard = self.wait_for_qemu()?;
        ensure!(guard.is_running(), "qemu is gone");
        Ok(Some(guard))
    }

    /// A clean `vmk run` (no fault): returns its qemu, guarded, and vmk-run's stderr.
    fn run(&self) -> Result<(QemuGuard, String)> {
        let out = self.vmk(&["run", "--json"], None)?;
        let guard = self.wait_for_qemu();
        ensure!(
            out.status.success(),
            "vmk run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = guard?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            v["pid"].as_u64() == Some(guard.pid() as u64),
            "run --json names pid {}, qemu is {}",
            v["pid"],
            guard.pid()
        );
        Ok((guard, String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    fn wait_ready(&self) -> Result<()> {
        let log = self.dir.join("disk0.raw.console.log");
        guest::wait_for_file_line(&log, guest::BUSYBOX_READY, BOOT_TIMEOUT).map(drop)
    }
}

/// After a `vmk run` killed at `step`: `info`, `ps`, `isrunning` tell the truth; `kill`
/// ends the qemu it left; the same after a second fault with `stop`; after a third, the
/// qemu itself dies (SIGKILL, as in a crash) and its pidfile and sockets are left: `info`
/// says stopped, and the next `vmk run` removes them, saying so, and starts.
fn killed_at(step: &'static str) -> Result<()> {
    let vm = Vm::new()?;

    // 1. ended by `kill`
    let guard = vm.run_killed_at(step)?;
    match guard {
        None => {
            vm.check_stopped()?;
            let out = vm.ok(&["kill"])?;
            ensure!(String::from_utf8_lossy(&out.stderr).contains("not running"));
        }
        Some(mut g) => {
            vm.check_running(g.pid())?;
            let out = vm.ok(&["kill"])?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                err.contains(&format!("killed qemu pid {}", g.pid())),
                "kill did not name the pid: {err}"
            );
            ensure!(!g.is_running(), "kill left qemu running");
        }
    }
    vm.check_stopped()?;

    // 2. ended by `stop` (ACPI power-down once the guest listens for it)
    if let Some(mut g) = vm.run_killed_at(step)? {
        vm.check_running(g.pid())?;
        vm.wait_ready()?;
        let out = vm.ok(&["stop", "--timeout", "60"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains(&format!("qemu pid {}", g.pid())),
            "stop did not name the pid: {err}"
        );
        ensure!(!g.is_running(), "stop left qemu running");
    } else {
        vm.ok(&["stop"])?;
    }
    vm.check_stopped()?;

    // 3. qemu dies behind vmk's back: stale pidfile and sockets, cleared by the next run
    if let Some(g) = vm.run_killed_at(step)? {
        let pid = g.pid();
        g.kill();
        ensure!(vm.qemu_pids().is_empty(), "qemu survived SIGKILL");
        check_stale(&vm, pid)?;
    }
    let (mut g, err) = vm.run()?;
    if step != "before-qemu" {
        ensure!(
            err.contains("removing stale pidfile"),
            "run did not say it removed the stale pidfile: {err}"
        );
        ensure!(
            err.contains("removing stale socket"),
            "run did not say it removed stale sockets: {err}"
        );
    }
    vm.check_running(g.pid())?;
    vm.ok(&["kill"])?;
    ensure!(!g.is_running(), "kill left qemu running");
    vm.check_stopped()
}

/// A dead qemu's leftovers: `info` exits 0 saying it is not running (a stale pidfile
/// naming `pid`), `isrunning` exits 1, `ps` drops it.
fn check_stale(vm: &Vm, pid: i32) -> Result<()> {
    ensure!(
        vm.pidfile.exists(),
        "qemu's pidfile is gone: nothing stale to test"
    );
    ensure!(
        !vm.sockets_left().is_empty(),
        "the killed qemu left no sockets: nothing stale to test"
    );
    let (state, info_pid) = vm.info()?;
    ensure!(
        state == "stale" && info_pid == Some(pid as u64),
        "info says {state} {info_pid:?} for the dead qemu pid {pid}"
    );
    let out = vm.vmk(&["isrunning"], None)?;
    ensure!(out.status.code() == Some(1), "isrunning: {}", out.status);
    ensure!(vm.ps_pid()?.is_none(), "ps lists a dead qemu");
    Ok(())
}

/// A qemu that vmk started and saw answer dies (SIGKILL): `kill` and `stop` report the
/// stale pidfile, signal nothing and clear the pidfile and sockets; the next run starts.
fn crashed_qemu() -> Result<()> {
    let vm = Vm::new()?;
    for end in ["kill", "stop"] {
        let (g, _) = vm.run()?;
        let pid = g.pid();
        g.kill();
        check_stale(&vm, pid)?;
        let out = vm.ok(&[end])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains(&format!("pid {pid}")) && err.contains("stale pidfile"),
            "{end} did not report the stale pidfile: {err}"
        );
        vm.check_stopped()?;
    }
    let (mut g, err) = vm.run()?;
    ensure!(!err.contains("stale"), "nothing was stale: {err}");
    vm.ok(&["kill"])?;
    ensure!(!g.is_running(), "kill left qemu running");
    vm.check_stopped()
}
