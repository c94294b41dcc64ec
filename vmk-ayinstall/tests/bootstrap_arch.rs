//! A guest of another architecture, made and run on this (x86) machine, for real under
//! TCG: `vmk bootstrap --arch arm64` installs Debian through qemu-user (mmdebstrap), then
//! `vmk snap run --exec 'uname -m'` boots it on qemu's arm `virt` machine (AAVMF, direct
//! kernel boot, ttyAMA0), reaches its sshd and prints `aarch64`.
//!
//! bootstrap's cache of the installed system lives under the test cache (`XDG_CACHE_HOME`,
//! as in `bootstrap.rs`), keyed by release, architecture, mirror and packages: only a cold
//! machine pays the emulated install (the `fixtures` phase of CI fills it first, see
//! vmk-testguest/tests/fixtures.rs), later runs unpack it and configure the copy.
//! How long each step took goes to stderr (the figures bench/bootstrap-arch.sh measures).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vmk_common::config::{self, LoadOptions};
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::{run_system_tests, wait_output, Need, SystemTest};

/// Hang guards, not timing claims: a cold emulated install, and a TCG boot of another
/// architecture, on two slow cores shared with other tests.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(3600);
const SSH_TIMEOUT_SECS: u64 = 900;

const ARM64_NEEDS: &[Need] = &[
    Need::Root,
    Need::Btrfs,
    Need::Ssh,
    Need::Built("vmk"),
    Need::Built("vmk-ayinstall"),
    Need::Program("mmdebstrap"),
    Need::Program("qemu-system-aarch64"),
    Need::Binfmt("aarch64"),
    Need::File(
        "/usr/share/qemu/firmware/60-edk2-aarch64.json",
        "qemu-efi-aarch64",
    ),
];

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "arm64_bootstrap_boots_and_snap_exec_prints_aarch64",
        ARM64_NEEDS,
        arm64_bootstrap_boots,
    )])
}

fn arm64_bootstrap_boots() -> Result<()> {
    let fs = LoopBtrfs::new(8 << 30)?;
    let dir = fs.path().join("arm64");
    let slot = VmSlot::reserve()?;
    let env = TestEnv::new()?;
    let started = Instant::now();
    bootstrap(&env, &dir, "arm64", slot.number())?;
    eprintln!(
        "vmk bootstrap --arch arm64 took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let cfg = config::load(&LoadOptions {
        dir: Some(dir.clone()),
        ..LoadOptions::new()
    })?;
    ensure!(
        cfg.arch.as_deref() == Some("aarch64"),
        "VMK_ARCH of the new VM is {:?}",
        cfg.arch
    );
    let booted = Instant::now();
    let timeout = SSH_TIMEOUT_SECS.to_string();
    let child = env
        .command(vmk_testkit::workspace_bin("vmk"))
        .args([
            "snap",
            "run",
            "--ssh-timeout",
            &timeout,
            "--exec",
            "uname -m",
        ])
        .env("VMK_ACCEL", "tcg")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running vmk snap run --exec")?;
    let out = wait_output(child, Duration::from_secs(SSH_TIMEOUT_SECS + 120))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim() == "aarch64",
        "vmk snap run --exec 'uname -m': {}, stdout {stdout:?}, stderr:\n{}\nconsole:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("snap-disk0.raw.console.log")).unwrap_or_default()
    );
    eprintln!(
        "arm64 guest (TCG): `uname -m` over ssh answered {:.1}s after vmk snap run",
        booted.elapsed().as_secs_f64()
    );
    ensure!(
        !dir.join("snap-disk0.raw").exists(),
        "snap run --exec left its snapshot behind"
    );
    Ok(())
}

/// `vmk bootstrap --arch ARCH --vnc N DIR`, its installed system cached in the test cache.
fn bootstrap(env: &TestEnv, dir: &Path, arch: &str, vnc: u8) -> Result<()> {
    let mut cmd = vmk_testkit::guest::bootstrap_command(dir);
    env.apply(&mut cmd);
    let child = cmd
        .args(["--arch", arch, "--vnc", &vnc.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running vmk-ayinstall bootstrap")?;
    let out = wait_output(child, BOOTSTRAP_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "vmk-ayinstall bootstrap --arch {arch} failed: {}",
        out.status
    );
    Ok(())
}
