//! The snapshot VM's whole life on a real guest (the busybox guest under TCG, disk0 on a
//! loop-mounted btrfs): `run`, `info`/`isrunning`, `console` (a computation the guest's
//! shell does), the guest writing its disk, `dsnap` of snap-<disk0> (holds the guest's
//! write, disk0 does not, and shares its data by reflink), `stop` (the guest powers off:
//! the kernel says so on the console), `run` again and `kill`, and `runin` in the
//! foreground. Each qemu is guarded by its pid.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Result};
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::guest::{self, BUSYBOX_READY};
use vmk_testkit::images::btrfs_du;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::qemu_guard::{PidfileGuard, QemuGuard};
use vmk_testkit::{run_system_tests, Need, SystemTest};

const MIB: u64 = 1 << 20;
/// A hang guard, not a timing claim.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Where the guest writes its marker on its disk (bytes).
const MARK_AT: u64 = 4 * MIB;
const MARK: &str = "vmk-snapshot-vm-wrote-this";

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "snapshot_vm_run_console_dsnap_stop_kill_runin",
        &[Need::Qemu, Need::Busybox, Need::Kernel, Need::Btrfs],
        lifecycle,
    )])
}

struct Vm {
    dir: PathBuf,
    env: TestEnv,
    slot: VmSlot,
}

impl Vm {
    fn vmk_snap(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.env.run_logged(
            env!("CARGO_BIN_EXE_vmk-snap"),
            &self.dir,
            args,
            stdin.map(str::as_bytes),
        )
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.vmk_snap(args, stdin)?;
        ensure!(out.status.success(), "vmk-snap {args:?} failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `vmk-snap run`, its qemu guarded; waits for the guest's prompt line.
    fn run(&self) -> Result<QemuGuard> {
        let armed = PidfileGuard::arm(&self.dir.join("snap-disk0.raw.pid"));
        let out = self.vmk_snap(&["run"], None)?;
        ensure!(out.status.success(), "vmk-snap run failed");
        let guard = armed.into_guard()?;
        guest::wait_for_file_line(&self.console_log(), BUSYBOX_READY, BOOT_TIMEOUT)?;
        Ok(guard)
    }

    fn console_log(&self) -> PathBuf {
        self.dir.join("snap-disk0.raw.console.log")
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    fs::File::open(path)?.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn lifecycle() -> Result<()> {
    let g = guest::busybox_guest()?;
    let fs_ = LoopBtrfs::new(512 * MIB)?;
    let dir = fs_.path().join("vm");
    fs::create_dir(&dir)?;
    let slot = VmSlot::reserve()?;
    // disk0: NOCOW, 16 MiB of a known pattern
    let disk0 = dir.join("disk0.raw");
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"touch "$1" && chattr +C "$1" && yes vmk-disk0-pattern | head -c 16777216 > "$1""#)
        .arg("sh")
        .arg(&disk0)
        .status()?;
    ensure!(status.success(), "making disk0");
    let disk0_bytes = fs::read(&disk0)?;
    fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=snaplife\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\n\
             VMK_CPU=1\nVMK_ACCEL=tcg\nVMK_NET_TYPE=none\n{}VMK_KERNEL='{}'\n\
             VMK_INITRD='{}'\nVMK_APPEND='{}'\n",
            slot.config_line(),
            g.kernel.display(),
            g.initrd.display(),
            g.append
        ),
    )?;
    let env = TestEnv::new()?;
    let vm = Vm { dir, env, slot };

    // run, info, isrunning
    let guard = vm.run()?;
    let info: serde_json::Value = serde_json::from_str(&vm.ok(&["info", "--json"], None)?)?;
    ensure!(info["state"] == "running", "info: {info}");
    ensure!(
        info["pid"].as_i64() == Some(i64::from(guard.pid())),
        "info's pid is not the pidfile's: {info}"
    );
    ensure!(
        info["vnc_port"].as_u64() == Some(u64::from(vm.slot.vnc_port())),
        "info: {info}"
    );
    ensure!(vm.vmk_snap(&["isrunning"], None)?.status.success());

    // console: the guest's shell computes 6*7 and writes a marker onto its disk (the one
    // block device it has, whatever the bus: /dev/sda on the default SCSI, /dev/vda on virtio)
    let said = vm.ok(
        &["console"],
        Some(&format!(
            "echo vmk-$((6*7))\nd=/dev/$(ls /sys/block | grep -v -e loop -e ram | head -n 1)\n\
             [ -b $d ] && printf {MARK} | dd of=$d bs=1 seek={MARK_AT} conv=notrunc && sync && echo written-$((1+1))\n"
        )),
    )?;
    ensure!(
        said.contains("vmk-42"),
        "the console did not reach the guest's shell: {said}"
    );
    ensure!(
        said.contains("written-2"),
        "the guest did not write its disk: {said}"
    );

    // dsnap: a snapshot of snap-<disk0>, taken while it runs
    let snap = PathBuf::from(vm.ok(&["dsnap"], None)?.trim());
    let name = snap.file_name().and_then(|n| n.to_str()).unwrap_or("");
    ensure!(
        name.starts_with("snap-disk0.raw-") && snap.is_file(),
        "dsnap printed {snap:?}"
    );
    ensure!(
        read_at(&snap, MARK_AT, MARK.len())? == MARK.as_bytes(),
        "the snapshot lacks what the guest wrote to snap-disk0"
    );
    ensure!(
        fs::read(&disk0)? == disk0_bytes,
        "disk0 changed while the snapshot VM ran"
    );
    let du = btrfs_du(&snap)?;
    ensure!(
        du.shared() >= 8 * MIB,
        "the snapshot shares only {} bytes: not a reflink copy ({du:?})",
        du.shared()
    );

    // stop: the busybox guest powers off on ACPI, the kernel says so
    let out = vm.vmk_snap(&["stop", "--timeout", "120"], None)?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "stop failed: {text}");
    ensure!(text.contains("powered off"), "stop: {text}");
    let mut guard = guard;
    guard.wait_exit(Duration::from_secs(30))?;
    let log = fs::read_to_string(vm.console_log())?;
    ensure!(
        log.contains("reboot: Power down"),
        "the guest did not power off:\n{log}"
    );
    ensure!(!vm.vmk_snap(&["isrunning"], None)?.status.success());

    // run again (snap-disk0 recreated from disk0: the marker is gone), then kill
    let mut guard = vm.run()?;
    ensure!(
        read_at(&vm.dir.join("snap-disk0.raw"), MARK_AT, MARK.len())? != MARK.as_bytes(),
        "the second run did not start from a fresh copy of disk0"
    );
    let out = vm.vmk_snap(&["kill"], None)?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "kill failed: {text}");
    ensure!(
        text.contains(&format!("killed qemu pid {}", guard.pid())),
        "kill: {text}"
    );
    guard.wait_exit(Duration::from_secs(10))?;
    ensure!(!vm.vmk_snap(&["isrunning"], None)?.status.success());

    // runin: in the foreground, the console on stdio; the guest runs one command and
    // powers off, so runin returns by itself
    let mut cmd = vm.env.command(env!("CARGO_BIN_EXE_vmk-snap"));
    cmd.arg("runin")
        .current_dir(&vm.dir)
        .env(
            "VMK_APPEND",
            format!("{} vmk.cmd=\"echo runin-$((3*5))\"", g.append),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    // the foreground qemu is guarded through its pidfile as soon as it is there
    let runin_guard = QemuGuard::from_pidfile(&vm.dir.join("snap-disk0.raw.pid"));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)?;
    let status = child.wait()?;
    drop(runin_guard);
    eprintln!("runin → {status}\n{stdout}");
    ensure!(status.success(), "runin failed");
    ensure!(
        stdout.contains("runin-15") && stdout.contains("vmk-busybox-guest: exit 0"),
        "runin's terminal did not show the guest's command: {stdout}"
    );
    ensure!(
        fs::read(&disk0)? == disk0_bytes,
        "disk0 changed through the snapshot VM's life"
    );
    Ok(())
}
