//! System tests of the developer's loop on the real Debian guest (TCG, user networking, the
//! VM's key as a systemd credential): `snap run --exec CMD` passes stdin, stdout and stderr
//! through and exits with CMD's status, leaves no qemu and no snapshot behind and never
//! writes disk0; SIGTERM while CMD runs ends the VM and exits 143.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_common::fileops::create_nocow_file;
use vmk_common::state::qemu_pids_using;
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::images::sha256;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_ok, run_system_tests, Need, SystemTest};

const GIB: u64 = 1 << 30;
/// Generous: a TCG guest on a busy 2-core host took 60 s to its sshd.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// A VM directory on its own loop-mounted btrfs holding a NOCOW copy of the Debian guest,
/// a key pair, and a config for user networking on VM number `vnc`.
struct DevVm {
    btrfs: LoopBtrfs,
}

impl DevVm {
    fn new(vnc: u8, extra: &str) -> Result<DevVm> {
        let g = vmk_testguest::debian_guest()?;
        let btrfs = LoopBtrfs::new(6 * GIB)?;
        let vm = DevVm { btrfs };
        let dir = vm.dir();
        fs::create_dir(&dir)?;
        ensure!(create_nocow_file(&vm.disk0(), 0)?, "no NOCOW on btrfs?");
        g.copy_image(&vm.disk0())?;
        run_ok({
            let mut c = Command::new("ssh-keygen");
            c.args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join("vm-key"));
            c
        })?;
        let cfg = format!(
            "VMK_NAME=devloop\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
             VMK_VNC={vnc}\nVMK_MEM=1024\nVMK_KERNEL={}\nVMK_INITRD={}\nVMK_APPEND=\"{}\"\n{extra}",
            g.kernel.display(),
            g.initrd.display(),
            g.append
        );
        fs::write(dir.join("vm-config"), cfg)?;
        Ok(vm)
    }

    fn dir(&self) -> PathBuf {
        self.btrfs.path().join("vm")
    }

    fn disk0(&self) -> PathBuf {
        self.dir().join("disk0.img")
    }

    fn snap(&self) -> PathBuf {
        self.dir().join("snap-disk0.img")
    }

    fn vmk_snap(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmk-snap"));
        c.current_dir(self.dir())
            .args(args)
            .env_remove("VMK_OPT_CONFIG")
            .env_remove("VMK_OPT_DRY_RUN")
            .env("HOME", self.dir());
        c
    }

    /// `vmk-snap run --exec CMD` with `stdin`, its output once it exited (killed after
    /// [`HANG_GUARD`]).
    fn snap_exec(&self, cmd: &str, stdin: &[u8]) -> Result<Output> {
        let mut child = self
            .vmk_snap(&["-v", "run", "--exec", cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running vmk-snap run --exec")?;
        child.stdin.take().context("stdin")?.write_all(stdin)?;
        let out = wait_output(child, HANG_GUARD)?;
        eprintln!(
            "$ vmk-snap run --exec {cmd:?}\n  -> {:?}\n  stdout: {}\n  stderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// Fails when anything of the snapshot VM is left: a qemu on either image, the pidfile,
    /// the snapshot itself.
    fn nothing_left(&self) -> Result<()> {
        for image in [self.snap(), self.disk0()] {
            let pids = qemu_pids_using(&image)?;
            ensure!(
                pids.is_empty(),
                "qemu {pids:?} still uses {}",
                image.display()
            );
        }
        let pidfile = self.dir().join("snap-disk0.img.pid");
        ensure!(!pidfile.exists(), "{} is left", pidfile.display());
        ensure!(!self.snap().exists(), "snap-disk0.img is left");
        Ok(())
    }
}

impl Drop for DevVm {
    /// Whatever a failed test left running on the VM's images dies with it (pids verified
    /// to be qemu processes using those images).
    fn drop(&mut self) {
        for image in [self.snap(), self.disk0()] {
            for pid in qemu_pids_using(&image).unwrap_or_default() {
                if let Ok(g) = QemuGuard::from_pid(pid as i32) {
                    drop(g);
                }
            }
        }
    }
}

/// Waits for `child` and collects its output; kills it after `timeout`.
fn wait_output(mut child: std::process::Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("still running after {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child.wait_with_output()?)
}

fn exec_passes_io_and_status_and_leaves_nothing() -> Result<()> {
    let vm = DevVm::new(44, "")?;
    let before = sha256(&vm.disk0())?;
    let out = vm.snap_exec(
        "cat; echo out-marker; uname -n; echo err-marker >&2; exit 7",
        b"from-host-stdin\n",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(7), "exit status {:?}", out.status);
    ensure!(
        stdout.starts_with("from-host-stdin\nout-marker\n"),
        "stdout: {stdout:?}"
    );
    ensure!(stderr.contains("err-marker"), "stderr: {stderr:?}");
    ensure!(!stdout.contains("err-marker"), "stderr went to stdout");
    vm.nothing_left()?;
    ensure!(sha256(&vm.disk0())? == before, "disk0 changed");
    Ok(())
}

fn exec_interrupted_by_sigterm_ends_the_vm() -> Result<()> {
    let vm = DevVm::new(45, "")?;
    let mut child = vm
        .vmk_snap(&["run", "--exec", "echo running; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
    ensure!(first == "running\n", "first line {first:?}");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let out = wait_output(child, Duration::from_secs(60))?;
    ensure!(
        out.status.code() == Some(143),
        "exit status after SIGTERM: {:?}",
        out.status
    );
    vm.nothing_left()
}

fn exec_without_sshd_fails_with_exit_1() -> Result<()> {
    // The guest's kernel powers off at once (no init to run): qemu exits, no sshd ever.
    let vm = DevVm::new(46, "")?;
    let cfg = fs::read_to_string(vm.dir().join("vm-config"))?;
    fs::write(
        vm.dir().join("vm-config"),
        cfg.replace(
            "root=/dev/vda rw",
            "root=/dev/vda rw init=/bin/false panic=-1",
        ) + "VMK_EXTRA_ARGS=-no-reboot\n",
    )?;
    let out = vm.snap_exec("true", b"")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit status {:?}", out.status);
    ensure!(
        stderr.contains("never answered") && stderr.contains("exited before"),
        "stderr: {stderr}"
    );
    vm.nothing_left()
}

fn main() -> std::process::ExitCode {
    let needs: &[Need] = &[
        Need::Root,
        Need::Btrfs,
        Need::Qemu,
        Need::Debootstrap,
        Need::Ssh,
    ];
    run_system_tests(vec![
        SystemTest::new(
            "exec_passes_io_and_status_and_leaves_nothing",
            needs,
            exec_passes_io_and_status_and_leaves_nothing,
        ),
        SystemTest::new(
            "exec_interrupted_by_sigterm_ends_the_vm",
            needs,
            exec_interrupted_by_sigterm_ends_the_vm,
        ),
        SystemTest::new(
            "exec_without_sshd_fails_with_exit_1",
            needs,
            exec_without_sshd_fails_with_exit_1,
        ),
    ])
}
