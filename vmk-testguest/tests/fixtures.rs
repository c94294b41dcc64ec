//! Builds the cached Debian guest for real and checks that what it produces is sane, so a
//! broken fixture fails here with a clear message rather than as a boot timeout in some
//! other tool's test.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "debian_guest_is_built",
            &[Need::Root, Need::Debootstrap, Need::Program("debugfs")],
            debian_guest_is_built,
        ),
        SystemTest::new(
            "cloud_init_guest_is_built",
            &[
                Need::Root,
                Need::Debootstrap,
                Need::Program("debugfs"),
                Need::Program("lsinitramfs"),
            ],
            cloud_init_guest_is_built,
        ),
        SystemTest::new(
            "arm64_bootstrap_is_cached",
            &[
                Need::Root,
                Need::Built("vmk-ayinstall"),
                Need::Program("mmdebstrap"),
                Need::Program("debugfs"),
                Need::Program("file"),
                Need::Binfmt("aarch64"),
            ],
            arm64_bootstrap_is_cached,
        ),
        SystemTest::new(
            "debian_guest_boots_to_ssh_and_powers_off",
            &[Need::Root, Need::Debootstrap, Need::Qemu, Need::Ssh],
            debian_guest_boots_to_ssh,
        ),
    ])
}

fn debian_guest_is_built() -> Result<()> {
    let g = vmk_testguest::debian_guest()?;
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
        g.append.contains("root=LABEL=vmkroot"),
        "append {:?} lacks root",
        g.append
    );
    ensure_files(
        &g.image,
        &[
            "/usr/sbin/sshd",
            "/usr/sbin/qemu-ga",
            "/usr/lib/systemd/systemd",
        ],
    )?;
    let fstab = debugfs(&g.image, "cat /etc/fstab")?;
    ensure!(
        fstab.contains("LABEL=vmkroot / ext4"),
        "fstab names root by its label: {fstab:?}"
    );
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
    let cmp = Command::new("cmp").arg(&g.image).arg(&copy).output()?;
    ensure!(
        cmp.status.success(),
        "cmp: the copy's content differs: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(&g.image)?, std::fs::metadata(&copy)?);
    ensure!(
        (a.dev(), a.ino()) != (b.dev(), b.ino()),
        "the copy is the cached image itself (a hard link)"
    );
    Ok(())
}

/// The cloud-init guest: the Debian guest's system with Debian's cloud-init installed and
/// enabled, the test layer's configuration in place, and no key for root (whatever key
/// root has after a boot came from the seed or a credential).
fn cloud_init_guest_is_built() -> Result<()> {
    let g = vmk_testguest::cloud_init_guest()?;
    let d = vmk_testguest::debian_guest()?;
    ensure!(
        g.image != d.image,
        "the cloud-init guest is the Debian guest's image"
    );
    ensure!(
        size(&g.kernel)? > 1 << 20 && size(&g.image)? >= 1 << 30,
        "kernel or image too small"
    );
    ensure_files(
        &g.image,
        &[
            "/usr/bin/cloud-init",
            "/usr/lib/systemd/system/cloud-init-local.service",
            "/usr/lib/systemd/system/cloud-final.service",
            "/usr/sbin/sshd",
        ],
    )?;
    let cfg = debugfs(&g.image, "cat /etc/cloud/cloud.cfg.d/90-vmk-test.cfg")?;
    ensure!(
        cfg == vmk_testguest::CLOUD_INIT_GUEST_CFG,
        "the test layer's cloud-init config: {cfg:?}"
    );
    // cloud-init's generator enables it at boot when ds-identify finds a data source.
    let wants = debugfs(
        &g.image,
        "ls -l /etc/systemd/system/cloud-init.target.wants",
    )?;
    ensure!(
        wants.contains("cloud-init.service") && wants.contains("cloud-final.service"),
        "cloud-init's units are not enabled: {wants}"
    );
    let issue = debugfs(&g.image, "cat /etc/issue")?;
    ensure!(
        issue.contains(vmk_testguest::CLOUD_INIT_READY),
        "issue: {issue:?}"
    );
    let hostname = debugfs(&g.image, "cat /etc/hostname")?;
    ensure!(hostname.trim() == "vmk-guest", "hostname: {hostname:?}");
    // the seed's CD-ROM is there when ds-identify looks: the initrd loads sr_mod
    let listed = Command::new("lsinitramfs").arg(&g.initrd).output()?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    ensure!(
        listed.lines().any(|l| l.contains("/sr_mod.ko")),
        "the initrd lacks sr_mod"
    );
    ensure!(
        debugfs(&g.image, "stat /root/.ssh/authorized_keys").is_err(),
        "root has an authorized_keys in the image: a key in the guest would not prove the seed's"
    );
    Ok(())
}

/// Fails naming the first of `files` that the ext4 `image` lacks.
fn ensure_files(image: &Path, files: &[&str]) -> Result<()> {
    for file in files {
        debugfs(image, &format!("stat {file}"))
            .with_context(|| format!("{file} is missing from the image"))?;
    }
    Ok(())
}

/// Fills bootstrap's cache of the arm64 system in the test cache (cold: the emulated
/// install, timed here; vmk-ayinstall/tests/bootstrap_arch.rs boots what it makes) and
/// checks what it made: an aarch64 system, kernel and config.
fn arm64_bootstrap_is_cached() -> Result<()> {
    let tmp = tempfile::tempdir_in("/var/tmp")?;
    let dir = tmp.path().join("arm64");
    let start = Instant::now();
    let slot = vmk_testkit::isolation::VmSlot::reserve()?;
    let env = vmk_testkit::isolation::TestEnv::new()?;
    let mut cmd = vmk_testkit::guest::bootstrap_command(&dir);
    env.apply(&mut cmd);
    let child = cmd
        .args(["--arch", "arm64", "--vnc", &slot.number().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running vmk-ayinstall bootstrap")?;
    let out = vmk_testkit::wait_output(child, Duration::from_secs(3600))?;
    ensure!(
        out.status.success(),
        "vmk-ayinstall bootstrap --arch arm64: {}",
        out.status
    );
    eprintln!("vmk bootstrap --arch arm64 took {:.1?}", start.elapsed());
    let config = std::fs::read_to_string(dir.join("vm-config"))?;
    ensure!(
        config.contains("\nVMK_ARCH=aarch64\n"),
        "vm-config:\n{config}"
    );
    let disk = dir.join(vmk_bootstrap::DISK0_NAME);
    let uname = tmp.path().join("uname");
    debugfs(&disk, &format!("dump /usr/bin/uname {}", uname.display()))?;
    for (what, path, want) in [
        ("the guest's uname", uname.as_path(), "ARM aarch64"),
        ("the kernel", &dir.join("vmlinuz"), "ARM64"),
    ] {
        let out = Command::new("file").arg("-bz").arg(path).output()?;
        let kind = String::from_utf8_lossy(&out.stdout);
        ensure!(kind.contains(want), "{what} is {kind}");
    }
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

fn debian_guest_boots_to_ssh() -> Result<()> {
    let g = vmk_testguest::debian_guest()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk0.raw");
    g.copy_image(&disk)?;
    let key = dir.path().join("key");
    vmk_testkit::ssh_keygen(&key)?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let lease = vmk_testkit::isolation::PortLease::reserve()?;
    let port = lease.port();
    let log = dir.path().join("console.log");
    let qmp_socket = dir.path().join("qmp");
    let start = Instant::now();
    let child = vmk_testkit::tcg_qemu(&log, &qmp_socket)
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
    vmk_testkit::guest::wait_for_file_line(
        &log,
        vmk_testguest::DEBIAN_READY,
        Duration::from_secs(300),
    )?;
    let ready = start.elapsed();
    let hostname = vmk_testkit::ssh_until_ok(&key, port, "hostname", Duration::from_secs(90))?;
    ensure!(
        hostname.trim() == "vmk-guest",
        "guest hostname: {hostname:?}"
    );
    let ssh_after = start.elapsed();
    vmk_testkit::qmp_execute(&qmp_socket, &["system_powerdown"])?;
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
