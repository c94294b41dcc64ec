//! Builds the cached guest fixtures for real and checks that what they produce is sane,
//! so a broken fixture fails here with a clear message rather than as a boot timeout in
//! some other tool's test.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{guest, run_system_tests, Need, SystemTest};

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "busybox_guest_is_built",
            &[Need::Busybox, Need::Kernel],
            busybox_guest_is_built,
        ),
        SystemTest::new(
            "busybox_guest_runs_a_command_and_powers_off",
            &[Need::Qemu, Need::Busybox, Need::Kernel],
            busybox_guest_runs_a_command,
        ),
    ])
}

fn busybox_guest_is_built() -> Result<()> {
    let g = guest::busybox_guest()?;
    ensure!(
        std::fs::metadata(&g.kernel)?.len() > 1 << 20,
        "kernel {} is too small",
        g.kernel.display()
    );
    let initrd = std::fs::read(&g.initrd)?;
    ensure!(
        initrd.starts_with(b"070701"),
        "initrd is not a newc cpio archive"
    );
    let text = String::from_utf8_lossy(&initrd);
    for needle in [
        "init\0",
        "bin/busybox\0",
        "dev/console\0",
        guest::BUSYBOX_HELLO,
    ] {
        ensure!(text.contains(needle), "initrd lacks {needle:?}");
    }
    if Path::new("/lib/modules")
        .join(kernel_version(&g.kernel))
        .is_dir()
    {
        ensure!(text.contains("virtio_net.ko\0"), "initrd lacks virtio_net");
        ensure!(text.contains("virtio_blk.ko\0"), "initrd lacks virtio_blk");
    }
    // A second call is served from the cache.
    let again = guest::busybox_guest()?;
    ensure!(
        again.initrd == g.initrd,
        "second call rebuilt the busybox guest"
    );
    Ok(())
}

fn kernel_version(kernel: &Path) -> String {
    // The cached copy is named vmlinuz; the host's newest kernel names the version.
    let host = vmk_testkit::find_host_kernel().unwrap_or_else(|| kernel.to_path_buf());
    host.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string()
}

fn busybox_guest_runs_a_command() -> Result<()> {
    let g = guest::busybox_guest()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("console.log");
    let append = format!("{} vmk.cmd=\"echo marker-$((6*7))\"", g.append);
    let child = vmk_testkit::tcg_qemu(&log, &dir.path().join("qmp"))
        .args(["-m", "256", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initrd)
        .arg("-append")
        .arg(append)
        .spawn()
        .context("starting qemu")?;
    let mut guard = QemuGuard::from_child(child);
    let hello = guest::wait_for_file_line(&log, guest::BUSYBOX_HELLO, Duration::from_secs(120))?;
    guest::wait_for_file_line(&log, "marker-42", Duration::from_secs(60))?;
    guest::wait_for_file_line(&log, "vmk-busybox-guest: exit 0", Duration::from_secs(10))?;
    let status = guard.wait_exit(Duration::from_secs(30))?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "qemu ended with {status:?}"
    );
    eprintln!("busybox guest: first line after {hello:.1?}");
    Ok(())
}
