//! VMK_TPM=yes against real qemu (TCG) and a real swtpm:
//! - the Debian guest (under UEFI, which measures itself into the TPM) has /dev/tpm0 and
//!   its sysfs PCRs answer, PCR 0 holding the firmware's measurement (not zero);
//! - swtpm runs exactly while its VM runs: gone after `kill`, `stop`, a crash of qemu
//!   (SIGKILL to qemu: swtpm's `--terminate` ends it) and a failed start, never left behind;
//!   `-D run` shows the swtpm command first.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_common::state::RuntimePaths;
use vmk_common::swtpm::{is_instance_swtpm, Tpm};
use vmk_testkit::guest::{self, BUSYBOX_READY};
use vmk_testkit::isolation::VmDir;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// A hang guard, not a timing claim: two slow cores shared with other tests.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "swtpm_lives_exactly_as_long_as_its_vm",
            &[
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("swtpm"),
            ],
            swtpm_lives_as_long_as_its_vm,
        ),
        SystemTest::new(
            "the_guest_sees_a_tpm_whose_pcrs_answer",
            &[
                Need::Root,
                Need::Qemu,
                Need::Debootstrap,
                Need::Program("swtpm"),
                Need::Program("debugfs"),
                Need::File("/usr/share/qemu/firmware/60-edk2-x86_64.json", "ovmf"),
            ],
            the_guest_sees_a_tpm,
        ),
    ])
}

/// A VM in its own directory, on a reserved VM number, in a private environment.
struct Vm {
    dir: VmDir,
    image: &'static str,
}

impl Vm {
    /// A VM of `image` (already in the directory or made by `make`) with `config` lines.
    fn new(
        image: &'static str,
        config: &str,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Vm> {
        let config = format!(
            "VMK_NAME=tpm\nVMK_DISK0={image}\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
             VMK_NET_TYPE=none\nVMK_VNC_SOCKET=yes\nVMK_TPM=yes\n{config}"
        );
        Ok(Vm {
            dir: VmDir::new(&config, make)?,
            image,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, suffix: &str) -> PathBuf {
        self.path().join(format!("{}{suffix}", self.image))
    }

    /// Its swtpm's files, as vmk-common computes them.
    fn tpm(&self) -> Result<Tpm> {
        let paths = RuntimePaths::new(self.path(), Path::new(self.image))?;
        Ok(Tpm::for_instance(&paths.image, &paths.qmp_socket))
    }

    fn vmk_run(&self, args: &[&str]) -> Result<Output> {
        self.dir.run(env!("CARGO_BIN_EXE_vmk-run"), args)
    }

    /// `vmk-run run`: its qemu (guarded) and its swtpm's pid, checked to be running.
    fn start(&self) -> Result<(QemuGuard, u32)> {
        let out = self.vmk_run(&["run"]);
        let guard = QemuGuard::from_pidfile(&self.file(".pid"));
        ensure!(out?.status.success(), "vmk-run run failed");
        let guard = guard?;
        let tpm = self.tpm()?;
        let pid = vmk_common::state::read_pidfile(&tpm.pidfile)?
            .with_context(|| format!("no swtpm pidfile {}", tpm.pidfile.display()))?;
        ensure!(
            is_instance_swtpm(pid, &tpm.socket),
            "pid {pid} is not the VM's swtpm"
        );
        Ok((guard, pid))
    }

    /// Fails unless the swtpm `pid` is gone (within `within`) and left no pidfile.
    fn swtpm_gone(&self, pid: u32, within: Duration, after: &str) -> Result<()> {
        let tpm = self.tpm()?;
        let deadline = Instant::now() + within;
        while is_instance_swtpm(pid, &tpm.socket) {
            if Instant::now() > deadline {
                bail!("swtpm pid {pid} still runs {within:?} after {after}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

fn busybox_vm() -> Result<Vm> {
    let g = guest::busybox_guest()?;
    Vm::new(
        "disk0.raw",
        &format!(
            "VMK_MEM=256M\nVMK_CPU=1\nVMK_KERNEL='{}'\nVMK_INITRD='{}'\nVMK_APPEND='{}'\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append
        ),
        |dir| Ok(std::fs::File::create(dir.join("disk0.raw"))?.set_len(64 << 20)?),
    )
}

fn swtpm_lives_as_long_as_its_vm() -> Result<()> {
    let vm = busybox_vm()?;
    let dry = vm.vmk_run(&["-D", "run"])?;
    let text = String::from_utf8_lossy(&dry.stdout);
    let mut lines = text.lines();
    let (first, second) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    ensure!(
        first.contains("swtpm socket --tpm2") && first.contains("--terminate"),
        "-D run does not show swtpm first: {text}"
    );
    ensure!(
        second.contains("-tpmdev 'emulator,id=tpm0,chardev=chrtpm'") && second.contains("tpm-crb"),
        "-D run's qemu has no TPM: {text}"
    );
    let tpm = vm.tpm()?;
    ensure!(!tpm.pidfile.exists(), "a dry run started swtpm");

    // kill
    let (mut guard, pid) = vm.start()?;
    ensure!(vm.file(".tpm").is_file(), "no TPM state beside the image");
    guest::wait_for_file_line(&vm.file(".console.log"), BUSYBOX_READY, BOOT_TIMEOUT)?;
    ensure!(vm.vmk_run(&["kill"])?.status.success());
    guard.wait_exit(Duration::from_secs(30))?;
    vm.swtpm_gone(pid, Duration::from_secs(5), "vmk kill")?;
    ensure!(
        !tpm.pidfile.exists() && !tpm.socket.exists(),
        "swtpm's pidfile or socket left after kill"
    );

    // qemu crashes: swtpm ends by itself (--terminate), the next run starts a fresh one
    let (mut guard, pid) = vm.start()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    guard.wait_exit(Duration::from_secs(30))?;
    vm.swtpm_gone(pid, Duration::from_secs(20), "qemu was SIGKILLed")?;
    let (mut guard, pid2) = vm.start()?;
    ensure!(pid2 != pid, "the second run reused a swtpm");

    // stop (the busybox guest has no ACPI handler: stop kills after its timeout)
    ensure!(vm.vmk_run(&["stop", "--timeout", "2"])?.status.success());
    guard.wait_exit(Duration::from_secs(30))?;
    vm.swtpm_gone(pid2, Duration::from_secs(5), "vmk stop")?;

    // a start that fails after swtpm started (qemu refuses an option) leaves no swtpm
    let out = vm
        .dir
        .env()
        .command(env!("CARGO_BIN_EXE_vmk-run"))
        .arg("run")
        .env("VMK_EXTRA_ARGS", "-no-such-option")
        .current_dir(vm.path())
        .stdin(Stdio::null())
        .output()?;
    ensure!(!out.status.success(), "qemu started with -no-such-option");
    if let Ok(Some(pid)) = vmk_common::state::read_pidfile(&tpm.pidfile) {
        vm.swtpm_gone(pid, Duration::from_secs(5), "a failed start")?;
    }
    ensure!(!tpm.pidfile.exists(), "a failed start left swtpm's pidfile");
    Ok(())
}

/// The guest's part: says whether /dev/tpm0 exists and prints PCR 0 (SHA-256) from sysfs.
const TPM_SCRIPT: &str = r#"#!/bin/sh
say() { echo "vmk-tpmtest: $*" > /dev/console; }
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/tpm0 ] && break; sleep 1; done
if [ -e /dev/tpm0 ]; then say "tpm0 yes"; else say "tpm0 no"; fi
say "pcr0 $(cat /sys/class/tpm/tpm0/pcr-sha256/0 2>&1)"
"#;

fn the_guest_sees_a_tpm() -> Result<()> {
    let g = vmk_testguest::debian_guest()?;
    let vm = Vm::new(
        "disk0.img",
        &format!(
            "VMK_MEM=1024\nVMK_DISK_BUS=virtio\nVMK_FIRMWARE=uefi\nVMK_KERNEL=vmlinuz\n\
             VMK_INITRD=initrd.img\nVMK_APPEND=\"{} systemd.run=\\\"/bin/sh /root/tpmtest.sh\\\" \
             systemd.run_success_action=poweroff\"\n",
            g.append
        ),
        |dir| {
            g.copy_image(&dir.join("disk0.img"))?;
            // a test cache entry may be replaced while the test runs: copies of our own
            std::fs::copy(&g.kernel, dir.join("vmlinuz"))?;
            std::fs::copy(&g.initrd, dir.join("initrd.img"))?;
            let script = dir.join("tpmtest.sh");
            std::fs::write(&script, TPM_SCRIPT)?;
            let out = std::process::Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("write {} /root/tpmtest.sh", script.display()))
                .arg(dir.join("disk0.img"))
                .output()?;
            ensure!(out.status.success(), "debugfs: {out:?}");
            Ok(())
        },
    )?;
    let started = Instant::now();
    let (mut guard, pid) = vm.start()?;
    if let Err(e) = guard.wait_exit(BOOT_TIMEOUT) {
        let log = std::fs::read_to_string(vm.file(".console.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{e}; console:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "Debian guest with UEFI and TPM (TCG): booted, read the TPM and powered off in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    vm.swtpm_gone(pid, Duration::from_secs(10), "the guest powered off")?;
    let log = std::fs::read_to_string(vm.file(".console.log"))?;
    let said: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("vmk-tpmtest: ").map(|(_, r)| r.trim()))
        .collect();
    ensure!(
        said.first() == Some(&"tpm0 yes"),
        "the guest has no /dev/tpm0: {said:?}"
    );
    let pcr0 = said
        .iter()
        .find_map(|l| l.strip_prefix("pcr0 "))
        .context("no PCR line")?;
    ensure!(
        pcr0.len() == 64 && pcr0.chars().all(|c| c.is_ascii_hexdigit()),
        "PCR 0 is no SHA-256 value: {pcr0:?}"
    );
    ensure!(
        pcr0.chars().any(|c| c != '0'),
        "PCR 0 is all zeros: the firmware measured nothing into the TPM"
    );
    ensure!(
        std::fs::metadata(vm.file(".tpm"))?.len() > 0,
        "swtpm wrote no state"
    );
    Ok(())
}
