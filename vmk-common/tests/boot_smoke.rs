//! The boot plumbing end to end: a config in a VM directory → the typed qemu command line
//! → a real qemu-system-x86_64 (TCG) booting the busybox guest, whose console output must
//! reach the console log. Fast (a few seconds), so it catches a broken command line long
//! before the slower Debian-guest tests do.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vmk_common::config::{self, LoadOptions, VmConfig};
use vmk_common::qemu::{Mode, QemuCommand};
use vmk_common::state::RuntimePaths;
use vmk_testkit::guest::{self, BusyboxGuest};
use vmk_testkit::isolation::VmSlot;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// Under TCG the busybox guest prints its first line in 2–6 s on an idle machine and in
/// about 20 s at a load of 10 on 2 cores; the margin is for CI machines busier still.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> std::process::ExitCode {
    let needs = &[Need::Qemu, Need::Busybox, Need::Kernel];
    run_system_tests(vec![
        SystemTest::new(
            "busybox_guest_boots_to_its_first_line",
            needs,
            boots_to_first_line,
        ),
        SystemTest::new("guest_poweroff_ends_qemu", needs, poweroff_ends_qemu),
        SystemTest::new(
            "root_runs_a_users_vm_as_that_user_in_the_sandbox",
            &[Need::Root, Need::Qemu, Need::Busybox, Need::Kernel],
            root_runs_a_users_vm_as_that_user,
        ),
    ])
}

/// A VM directory with a vm-config for direct kernel boot of the busybox guest, an empty
/// raw disk0, no network, TCG, the VM number `slot` (its ports are the test's); only this
/// file is read (no /etc/vmk-config, ~/.vmkrc or environment), so the test means the same
/// on every machine.
fn vm_config(dir: &Path, slot: &VmSlot, g: &BusyboxGuest, append: &str) -> Result<VmConfig> {
    let disk = dir.join("disk0.raw");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let text = format!(
        "VMK_NAME=smoke\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\nVMK_CPU=1\n\
         VMK_ACCEL=tcg\nVMK_NET_TYPE=none\n{}\
         VMK_KERNEL='{}'\nVMK_INITRD='{}'\nVMK_APPEND='{append}'\n",
        slot.config_line(),
        g.kernel.display(),
        g.initrd.display(),
    );
    std::fs::write(dir.join("vm-config"), text)?;
    let none = dir.join("no-such-file");
    let opts = LoadOptions {
        dir: Some(dir.to_path_buf()),
        system_file: Some(none.clone()),
        user_file: Some(none),
        env: false,
        ..LoadOptions::default()
    };
    config::load(&opts).context("loading the smoke test's vm-config")
}

/// Starts qemu as `vmk run` would (daemonized under its sandbox, serial on its unix socket,
/// console logged)
/// and guards the pid from its pidfile.
fn start(dir: &Path, slot: &VmSlot, append: &str) -> Result<(QemuGuard, RuntimePaths)> {
    let g = guest::busybox_guest()?;
    let cfg = vm_config(dir, slot, &g, append)?;
    let paths = RuntimePaths::new(dir, Path::new("disk0.raw"))?;
    paths.prepare()?;
    let qemu = QemuCommand::from_config(&cfg, Mode::Run, &paths)?;
    Ok((launch(qemu, &paths)?, paths))
}

/// Runs a `Mode::Run` command line without its display and guards the pid from its
/// pidfile.
fn launch(mut qemu: QemuCommand, paths: &RuntimePaths) -> Result<QemuGuard> {
    qemu.vnc = None; // no display: nothing to collide with other tests' VNC ports
    eprintln!("{}", qemu.shell_quoted());
    let out = qemu
        .to_command()
        .stdin(Stdio::null())
        .output()
        .context("starting qemu")?;
    ensure!(
        out.status.success(),
        "qemu -daemonize failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    QemuGuard::from_pidfile(&paths.pidfile)
}

/// The `Uid:` and `Seccomp:` lines of a process's status.
fn uid_and_seccomp(pid: i32) -> Result<(String, String)> {
    let status = vmk_testkit::ProcStatus::read(pid).with_context(|| format!("no process {pid}"))?;
    let line = |key: &str| {
        status
            .field(key)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((line("Uid")?, line("Seccomp")?))
}

fn boots_to_first_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let slot = VmSlot::reserve()?;
    let (mut guard, paths) = start(dir.path(), &slot, "console=ttyS0 no_timer_check panic=-1")?;
    let took = guest::wait_for_file_line(&paths.console_log, guest::BUSYBOX_HELLO, BOOT_TIMEOUT)?;
    eprintln!("first guest line after {took:.1?}");
    guest::wait_for_file_line(&paths.console_log, guest::BUSYBOX_READY, BOOT_TIMEOUT)?;
    // No network card was asked for, and disk0 is the only disk.
    let log = std::fs::read_to_string(&paths.console_log)?;
    ensure!(
        !log.contains("vmk-busybox-guest: eth0"),
        "the guest has a NIC:\n{log}"
    );
    ensure!(
        log.contains("vmk-busybox-guest: block sda "),
        "disk0 is not sda (on SCSI, the default bus):\n{log}"
    );
    ensure!(guard.is_running(), "qemu stopped while the guest idles");
    let (_, seccomp) = uid_and_seccomp(guard.pid())?;
    ensure!(
        seccomp == "2",
        "qemu runs without its seccomp filter: {seccomp}"
    );
    guard.kill();
    Ok(())
}

/// Root starting a VM whose directory belongs to another user (`nobody`): qemu opens its
/// files as root, then runs as that user (`-runas`) under its seccomp filter, daemonized,
/// and the guest boots.
fn root_runs_a_users_vm_as_that_user() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let slot = VmSlot::reserve()?;
    let g = guest::busybox_guest()?;
    let cfg = vm_config(
        dir.path(),
        &slot,
        &g,
        "console=ttyS0 no_timer_check panic=-1",
    )?;
    // From here on the VM directory is nobody's (the config was read while it was root's).
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let paths = RuntimePaths::new(dir.path(), Path::new("disk0.raw"))?;
    paths.prepare()?;
    let qemu = QemuCommand::from_config(&cfg, Mode::Run, &paths)?;
    ensure!(
        qemu.runas == Some((65534, 65534)),
        "no -runas for nobody's VM: {:?}",
        qemu.runas
    );
    let mut guard = launch(qemu, &paths)?;
    guest::wait_for_file_line(&paths.console_log, guest::BUSYBOX_READY, BOOT_TIMEOUT)?;
    let (uid, seccomp) = uid_and_seccomp(guard.pid())?;
    ensure!(uid == "65534 65534 65534 65534", "qemu runs as uid {uid}");
    ensure!(
        seccomp == "2",
        "qemu runs without its seccomp filter: {seccomp}"
    );
    ensure!(guard.is_running(), "qemu stopped while the guest idles");
    guard.kill();
    Ok(())
}

fn poweroff_ends_qemu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let slot = VmSlot::reserve()?;
    let (mut guard, paths) = start(
        dir.path(),
        &slot,
        "console=ttyS0 no_timer_check panic=-1 vmk.poweroff",
    )?;
    guest::wait_for_file_line(&paths.console_log, guest::BUSYBOX_HELLO, BOOT_TIMEOUT)?;
    guard
        .wait_exit(BOOT_TIMEOUT)
        .context("the guest powered off but qemu kept running")?;
    Ok(())
}
