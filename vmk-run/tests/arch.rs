//! Each architecture's qemu command line boots, for real (TCG): `vmk run` with VMK_ARCH set
//! and an empty disk starts the architecture's firmware on the serial console vmk logs:
//! AAVMF reaching its UEFI shell on aarch64, SLOF on ppc64le, the s390-ccw loader on s390x.
//! That checks machine, cpu model, firmware, console and device names together; how long
//! each took goes to stderr.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vmk_testkit::guest::wait_for_file_line;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// A hang guard, not a timing claim: two slow cores shared with other tests.
const FIRMWARE_TIMEOUT: Duration = Duration::from_secs(240);

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "aarch64_boots_aavmf_to_its_shell",
            &[
                Need::Program("qemu-system-aarch64"),
                Need::File(
                    "/usr/share/qemu/firmware/60-edk2-aarch64.json",
                    "qemu-efi-aarch64",
                ),
            ],
            || boots_firmware("aarch64", "UEFI Interactive Shell"),
        ),
        SystemTest::new(
            "ppc64le_boots_slof",
            &[Need::Program("qemu-system-ppc64")],
            || boots_firmware("ppc64le", "SLOF"),
        ),
        SystemTest::new(
            "s390x_boots_its_ccw_loader",
            &[Need::Program("qemu-system-s390x")],
            || boots_firmware("s390x", "LOADPARM"),
        ),
    ])
}

fn vmk_run(env: &TestEnv, dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    env.command(env!("CARGO_BIN_EXE_vmk-run"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running vmk-run")
}

fn boots_firmware(arch: &str, banner: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    std::fs::File::create(dir.join("disk0.raw"))?.set_len(64 << 20)?;
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME={arch}\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_ARCH={arch}\n\
             VMK_ACCEL=tcg\nVMK_MEM=512\nVMK_NET_TYPE=none\nVMK_VNC_SOCKET=yes\n\
             VMK_EXTRA_ARGS='-action panic=pause'\n{}",
            slot.config_line()
        ),
    )?;
    let env = TestEnv::inside(dir)?;
    let started = Instant::now();
    let out = vmk_run(&env, dir, &["run"])?;
    let guard = QemuGuard::from_pidfile(&dir.join("disk0.raw.pid"));
    ensure!(
        out.status.success(),
        "vmk-run run ({arch}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut guard = guard?;
    let log = dir.join("disk0.raw.console.log");
    wait_for_file_line(&log, banner, FIRMWARE_TIMEOUT).with_context(|| {
        format!(
            "{arch}: no {banner:?} on the console; it says:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    eprintln!(
        "{arch} (TCG): firmware on the serial console after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // the s390x loader finds nothing to boot and enters a disabled wait, which qemu reports
    // as a guest panic: `-action panic=pause` (above) keeps qemu there for `kill`
    let out = vmk_run(&env, dir, &["kill"])?;
    ensure!(out.status.success(), "vmk-run kill ({arch}) failed");
    guard.wait_exit(Duration::from_secs(30))?;
    Ok(())
}
