//! Builds the cached guest fixtures for real and checks that what they produce is sane,
//! so a broken fixture fails here with a clear message rather than as a boot timeout in
//! some other tool's test.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::{guest, run_system_tests, Need, SystemTest};

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "busybox_guest_is_built",
            &[Need::Busybox, Need::Kernel],
            busybox_guest_is_built,
        ),
        SystemTest::new(
            "debian_guest_is_built",
            &[Need::Root, Need::Debootstrap, Need::Program("debugfs")],
            debian_guest_is_built,
        ),
    ])
}

fn busybox_guest_is_built() -> Result<()> {
    let g = guest::busybox_guest()?;
    ensure!(
        size(&g.kernel)? > 1 << 20,
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

fn debian_guest_is_built() -> Result<()> {
    let g = guest::debian_guest()?;
    ensure!(
        size(&g.kernel)? > 1 << 20,
        "kernel {} is too small",
        g.kernel.display()
    );
    ensure!(
        size(&g.initrd)? > 1 << 20,
        "initrd {} is too small",
        g.initrd.display()
    );
    ensure!(
        size(&g.image)? >= 1 << 30,
        "image {} is too small",
        g.image.display()
    );
    ensure!(
        g.append.contains("root=/dev/vda"),
        "append {:?} lacks root",
        g.append
    );
    for file in [
        "/usr/sbin/sshd",
        "/usr/sbin/qemu-ga",
        "/usr/lib/systemd/systemd",
    ] {
        debugfs(&g.image, &format!("stat {file}"))
            .with_context(|| format!("{file} is missing from the image"))?;
    }
    let fstab = debugfs(&g.image, "cat /etc/fstab")?;
    ensure!(fstab.contains("/dev/vda / ext4"), "fstab: {fstab:?}");
    let hostname = debugfs(&g.image, "cat /etc/hostname")?;
    ensure!(hostname.trim() == "vmk-guest", "hostname: {hostname:?}");
    let machine_id = debugfs(&g.image, "cat /etc/machine-id")?;
    ensure!(
        machine_id.trim().is_empty(),
        "machine-id is not empty: {machine_id:?}"
    );
    let wants = debugfs(
        &g.image,
        "ls -l /etc/systemd/system/multi-user.target.wants",
    )?;
    for unit in ["systemd-networkd.service", "ssh.service"] {
        ensure!(wants.contains(unit), "{unit} is not enabled: {wants}");
    }
    // A copy for a test is a separate file with the same content.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("disk0.raw");
    g.copy_image(&copy)?;
    ensure!(size(&copy)? == size(&g.image)?, "copy has another size");
    Ok(())
}

fn size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("{} is missing", p.display()))?
        .len())
}

/// Runs one debugfs request against a (not mounted) ext4 image, read-only.
fn debugfs(image: &Path, request: &str) -> Result<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .context("running debugfs")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when the request fails; it says so on stderr.
    if !out.status.success() || stderr.contains("File not found") {
        bail!("debugfs -R {request:?}: {stderr}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
