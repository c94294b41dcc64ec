//! Builds the cached guest fixtures for real and checks that what they produce is sane,
//! so a broken fixture fails here with a clear message rather than as a boot timeout in
//! some other tool's test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
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
            "debian_guest_is_built",
            &[Need::Root, Need::Debootstrap, Need::Program("debugfs")],
            debian_guest_is_built,
        ),
        SystemTest::new(
            "busybox_guest_runs_a_command_and_powers_off",
            &[Need::Qemu, Need::Busybox, Need::Kernel],
            busybox_guest_runs_a_command,
        ),
        SystemTest::new(
            "debian_guest_boots_to_ssh_and_powers_off",
            &[Need::Root, Need::Debootstrap, Need::Qemu, Need::Ssh],
            debian_guest_boots_to_ssh,
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

/// qemu under TCG with no defaults, the serial console in `log`, a QMP socket `qmp`.
fn qemu(log: &Path, qmp: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-machine",
        "q35,accel=tcg",
        "-display",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp.display()))
    .stdin(Stdio::null());
    cmd
}

/// Sends QMP commands (after the capabilities handshake), reading one answer each.
fn qmp(socket: &Path, commands: &[&str]) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to QMP at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    for cmd in ["qmp_capabilities"].iter().chain(commands) {
        writeln!(&stream, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            ensure!(!line.is_empty(), "QMP closed the connection");
            if line.contains("\"return\"") {
                break;
            }
            ensure!(!line.contains("\"error\""), "QMP {cmd}: {line}");
        }
    }
    Ok(())
}

fn busybox_guest_runs_a_command() -> Result<()> {
    let g = guest::busybox_guest()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("console.log");
    let append = format!("{} vmk.cmd=\"echo marker-$((6*7))\"", g.append);
    let child = qemu(&log, &dir.path().join("qmp"))
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

fn debian_guest_boots_to_ssh() -> Result<()> {
    let g = guest::debian_guest()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk0.raw");
    g.copy_image(&disk)?;
    let key = dir.path().join("key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .output()?;
    ensure!(out.status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let port = guest::free_port()?;
    let log = dir.path().join("console.log");
    let qmp_socket = dir.path().join("qmp");
    let start = Instant::now();
    let child = qemu(&log, &qmp_socket)
        .args(["-m", "1024", "-smp", "2", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-nic")
        .arg(format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"
        ))
        .arg("-smbios")
        .arg(format!(
            "type=11,value=io.systemd.credential:ssh.authorized_keys.root={}",
            public.trim()
        ))
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initrd)
        .arg("-append")
        .arg(&g.append)
        .spawn()
        .context("starting qemu")?;
    let mut guard = QemuGuard::from_child(child);
    // 15 s on an idle machine, 85 s seen at a load of 15 on 2 cores.
    guest::wait_for_file_line(&log, guest::DEBIAN_READY, Duration::from_secs(300))?;
    let ready = start.elapsed();
    let hostname = vmk_testkit::ssh_until_ok(&key, port, "hostname", Duration::from_secs(90))?;
    ensure!(
        hostname.trim() == "vmk-guest",
        "guest hostname: {hostname:?}"
    );
    let ssh_after = start.elapsed();
    qmp(&qmp_socket, &["system_powerdown"])?;
    let t = Instant::now();
    guard
        .wait_exit(Duration::from_secs(90))
        .context("the guest ignored ACPI power-down")?;
    eprintln!(
        "debian guest: login prompt after {ready:.1?}, ssh after {ssh_after:.1?}, \
         powered off {:.1?} after system_powerdown",
        t.elapsed()
    );
    Ok(())
}
