//! System tests of `vmk bootstrap`: a Debian VM made from nothing on a throwaway btrfs
//! boots under TCG and answers ssh — driven by plain qemu (the product's own argv builder)
//! and by the front door (`vmk snap run && vmk waitssh -- uname -r`); `--boot disk` makes a
//! partitioned disk0 with the bootloaders on it that boots without a kernel in vm-config;
//! an interrupted bootstrap leaves nothing behind.
//!
//! The VM is bootstrapped once per test binary and shared; tests that boot it hold a lock,
//! so they never run at the same time (they use the same ports). bootstrap's cache of the
//! installed system lives under the test cache (`XDG_CACHE_HOME`), so only a cold cache runs
//! the full debootstrap (about 3 minutes); later runs unpack it (seconds). The interrupt
//! test always runs debootstrap itself (`--no-cache`).

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_bootstrap::{DISK0_NAME, LOG_NAME};
use vmk_common::config::{self, LoadOptions};
use vmk_common::layout::{snap_image, KEY_FILE, PUBLIC_KEY_FILE};
use vmk_common::qemu::{Mode, QemuCommand};
use vmk_common::state::RuntimePaths;
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::isolation::VmSlot;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{Need, SystemTest};

const NEEDS: &[Need] = &[
    Need::Root,
    Need::Debootstrap,
    Need::Qemu,
    Need::Ssh,
    Need::Btrfs,
];
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The shared bootstrapped VM (its btrfs is unmounted at the end of `main`).
struct Shared {
    fs: LoopBtrfs,
    dir: PathBuf,
    /// The shared VM's number, reserved while it exists.
    slot: VmSlot,
}

type Slot = Option<Result<Shared, String>>;
static SHARED: Mutex<Slot> = Mutex::new(None);

fn main() -> ExitCode {
    // Guests hang under KVM on the test machines (nested virtualisation).
    std::env::set_var("VMK_ACCEL", "tcg");
    let code = vmk_testkit::run_system_tests(vec![
        SystemTest::new("bootstrap_makes_a_complete_vm_directory", NEEDS, files_test),
        SystemTest::new(
            "bootstrapped_vm_boots_with_qemu_and_answers_ssh",
            NEEDS,
            qemu_ssh_test,
        ),
        SystemTest::new(
            "bootstrapped_vm_vmk_snap_run_and_waitssh",
            NEEDS,
            snap_run_test,
        ),
        SystemTest::new(
            "bootstrap_boot_disk_makes_a_vm_that_boots_itself",
            &[
                Need::Root,
                Need::Debootstrap,
                Need::Qemu,
                Need::Ssh,
                Need::Btrfs,
                Need::Program("sgdisk"),
                Need::Program("mkfs.vfat"),
                Need::Program("mdir"),
            ],
            boot_disk_test,
        ),
        SystemTest::new(
            "interrupted_bootstrap_leaves_nothing",
            &[Need::Root, Need::Debootstrap, Need::Btrfs],
            interrupt_test,
        ),
    ]);
    if let Some(Ok(shared)) = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        drop(shared.fs);
    }
    code
}

/// Where the built binaries are: the test binary is target/<profile>/deps/bootstrap-….
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A built binary of the workspace; `cargo test -p vmk-ayinstall` alone does not build the
/// front door and the other tools, `cargo build --bins` (or `make test`) does.
fn tool(name: &str) -> Command {
    let path = bin_dir().join(name);
    if !path.exists() {
        panic!(
            "{} is not built: run `cargo build --bins` first",
            path.display()
        );
    }
    // the tests' private environment: no HOME, runtime directory or system config of the
    // machine's
    vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(path)
}

fn vmk() -> Command {
    tool("vmk")
}

fn bootstrap_cmd(dir: &Path, vnc: u8) -> Command {
    let mut cmd = vmk_testkit::guest::bootstrap_command(dir);
    // the tests' private environment (as [`tool`]'s)
    vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .apply(&mut cmd);
    cmd.arg("--vnc").arg(vnc.to_string());
    cmd
}

/// Bootstraps the shared VM once; later calls wait for it and get the same result.
/// Returns the lock guard: hold it while booting, so boots never overlap.
fn shared_vm() -> Result<(std::sync::MutexGuard<'static, Slot>, PathBuf)> {
    let (guard, dir, _) = shared_vm_and_number()?;
    Ok((guard, dir))
}

/// [`shared_vm`] and the shared VM's number.
fn shared_vm_and_number() -> Result<(std::sync::MutexGuard<'static, Slot>, PathBuf, u8)> {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(make_shared().map_err(|e| format!("{e:?}")));
    }
    let (dir, number) = match guard.as_ref().expect("set") {
        Ok(s) => (s.dir.clone(), s.slot.number()),
        Err(e) => bail!("the shared bootstrap failed: {e}"),
    };
    Ok((guard, dir, number))
}

fn make_shared() -> Result<Shared> {
    let fs = LoopBtrfs::new(8 << 30)?;
    let dir = fs.path().join("deb-test");
    let slot = VmSlot::reserve()?;
    let start = Instant::now();
    let out = bootstrap_cmd(&dir, slot.number())
        .stderr(Stdio::inherit())
        .output()
        .context("running vmk-ayinstall bootstrap")?;
    eprintln!("bootstrap took {:.1?}", start.elapsed());
    ensure!(
        out.status.success(),
        "vmk-ayinstall bootstrap failed: {}",
        out.status
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        printed.trim() == dir.display().to_string(),
        "bootstrap printed {printed:?}, not the new directory"
    );
    Ok(Shared { fs, dir, slot })
}

fn load_config(dir: &Path) -> Result<config::VmConfig> {
    Ok(config::load(&LoadOptions {
        dir: Some(dir.to_path_buf()),
        ..LoadOptions::new()
    })?)
}

fn files_test() -> Result<()> {
    let (_lock, dir, vnc) = shared_vm_and_number()?;
    for f in [
        config::VM_FILE_NAME,
        DISK0_NAME,
        KEY_FILE,
        PUBLIC_KEY_FILE,
        "vmlinuz",
        "initrd.img",
        LOG_NAME,
    ] {
        ensure!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    ensure!(
        !dir.join("root").exists(),
        "the staging root tree was left in the VM directory"
    );
    let mode = fs::metadata(dir.join(KEY_FILE))?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "{KEY_FILE} has mode {mode:o}");
    ensure!(
        vmk_common::fileops::is_nocow(&dir.join(DISK0_NAME))?,
        "{DISK0_NAME} on btrfs is not NOCOW"
    );
    let leftovers: Vec<String> = fs::read_dir(dir.parent().unwrap())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".vmk-tmp-"))
        .collect();
    ensure!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    let cfg = load_config(&dir)?;
    ensure!(cfg.vnc == vnc, "VMK_VNC is {}, not {vnc}", cfg.vnc);
    ensure!(
        cfg.name.as_deref() == Some("deb-test"),
        "VMK_NAME is {:?}",
        cfg.name
    );
    ensure!(cfg.disk0_format == Some(config::DiskFormat::Raw));
    // The disk is a plain ext4 filesystem holding the configured system.
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(dir.join(DISK0_NAME))
        .output()
        .context("running debugfs")?;
    let hostname = String::from_utf8_lossy(&out.stdout);
    ensure!(
        hostname.trim() == "deb-test",
        "hostname in the image: {hostname:?}"
    );
    Ok(())
}

/// The running kernel must be the one copied out of the guest's /boot.
fn guest_kernel_release(dir: &Path) -> Result<String> {
    let out = Command::new("debugfs")
        .args(["-R", "ls -p /boot"])
        .arg(dir.join(DISK0_NAME))
        .output()
        .context("running debugfs")?;
    String::from_utf8_lossy(&out.stdout)
        .split('/')
        .find_map(|f| f.strip_prefix("vmlinuz-").map(str::to_string))
        .context("no /boot/vmlinuz-* in the image")
}

fn qemu_ssh_test() -> Result<()> {
    let (_lock, dir) = shared_vm()?;
    let release = guest_kernel_release(&dir)?;
    // Boot a reflink copy, so the shared disk0 stays as bootstrap made it.
    let copy = dir.join("test-copy.raw");
    let _ = fs::remove_file(&copy);
    vmk_common::fileops::reflink_copy(
        &dir.join(DISK0_NAME),
        &copy,
        &vmk_common::fileops::CopyOptions::default(),
    )?;
    let mut cfg = load_config(&dir)?;
    // No SMBIOS credential: the key bootstrap put into /root/.ssh must be enough.
    cfg.ssh_credential = false;
    let paths = RuntimePaths::new(&dir, &copy)?;
    paths.prepare()?;
    let qemu = QemuCommand::from_config(&cfg, Mode::Run, &paths)?.disk0_override(&copy);
    eprintln!("starting {}", qemu.shell_quoted());
    let status = qemu.to_command().status().context("starting qemu")?;
    ensure!(status.success(), "qemu failed to start: {status}");
    let _guard = QemuGuard::from_pidfile(&paths.pidfile)?;
    let start = Instant::now();
    let out = vmk_testkit::ssh_until_ok(
        &dir.join(KEY_FILE),
        cfg.ssh_port(),
        "uname -r; hostname",
        BOOT_TIMEOUT,
    )
    .with_context(|| format!("console:\n{}", tail(&paths.console_log)))?;
    eprintln!("ssh answered {:.1?} after start", start.elapsed());
    let mut lines = out.lines();
    ensure!(
        lines.next() == Some(release.as_str()),
        "uname -r said {out:?}, expected {release}"
    );
    ensure!(lines.next() == Some("deb-test"), "hostname: {out:?}");
    drop(_guard);
    fs::remove_file(&copy)?;
    Ok(())
}

fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn snap_run_test() -> Result<()> {
    let (_lock, dir) = shared_vm()?;
    let release = guest_kernel_release(&dir)?;
    let out = snap_run_waitssh(&dir, &["uname", "-r"])?;
    ensure!(
        out.trim() == release,
        "uname -r said {out:?}, expected {release}"
    );
    Ok(())
}

/// `vmk snap run` in `dir`, then `vmk waitssh -- COMMAND…`; returns what it printed, and
/// kills the snapshot VM.
fn snap_run_waitssh(dir: &Path, command: &[&str]) -> Result<String> {
    let snap = snap_image(&dir.join(DISK0_NAME));
    let paths = RuntimePaths::new(dir, &snap)?;
    let start = Instant::now();
    let status = vmk()
        .args(["snap", "run"])
        .current_dir(dir)
        .status()
        .context("running vmk snap run")?;
    // Guard whatever it started, also when it then failed.
    let guard = QemuGuard::from_pidfile(&paths.pidfile);
    ensure!(status.success(), "vmk snap run failed: {status}");
    let _guard = guard?;
    let mut waitssh = vmk()
        .args(["waitssh", "--"])
        .args(command)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("running vmk waitssh")?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(s) = waitssh.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = waitssh.kill();
            let _ = waitssh.wait();
            bail!(
                "vmk waitssh still waiting after {BOOT_TIMEOUT:?}; console:\n{}",
                tail(&paths.console_log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    waitssh
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)?;
    eprintln!(
        "vmk waitssh answered {:.1?} after vmk snap run",
        start.elapsed()
    );
    ensure!(
        status.success(),
        "vmk waitssh failed: {status}; console:\n{}",
        tail(&paths.console_log)
    );
    let _ = vmk().args(["snap", "kill"]).current_dir(dir).status();
    Ok(out)
}

/// `--boot disk`: a partitioned disk0 (BIOS boot, ESP with shim at the removable path,
/// root) and a vm-config without a kernel; the VM boots from it (SeaBIOS and GRUB) to ssh,
/// with root by label and the ESP mounted by fstab.
fn boot_disk_test() -> Result<()> {
    let slot = VmSlot::reserve()?;
    let fs = LoopBtrfs::new(8 << 30)?;
    let dir = fs.path().join("deb-disk");
    let start = Instant::now();
    let out = bootstrap_cmd(&dir, slot.number())
        .args(["--boot", "disk"])
        .stderr(Stdio::inherit())
        .output()
        .context("running vmk-ayinstall bootstrap --boot disk")?;
    eprintln!("bootstrap --boot disk took {:.1?}", start.elapsed());
    ensure!(
        out.status.success(),
        "bootstrap --boot disk failed: {}",
        out.status
    );
    let cfg = load_config(&dir)?;
    ensure!(
        cfg.kernel.is_none() && cfg.initrd.is_none() && cfg.append.is_none(),
        "a VM that boots itself has a kernel in its vm-config"
    );
    ensure!(!dir.join("vmlinuz").exists() && !dir.join("mnt").exists());
    let disk0 = dir.join(DISK0_NAME);
    let table = Command::new("sgdisk").arg("-p").arg(&disk0).output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    for code in ["EF02", "EF00", "8300"] {
        ensure!(table.contains(code), "no {code} partition:\n{table}");
    }
    let esp = Command::new("sgdisk")
        .args(["-i", "2"])
        .arg(&disk0)
        .output()?;
    let esp = String::from_utf8_lossy(&esp.stdout);
    let first: u64 = esp
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no first sector of the ESP in:\n{esp}"))?;
    let listing = Command::new("mdir")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{}", disk0.display(), first * 512))
        .arg("::/EFI/BOOT")
        .output()?;
    let listing = String::from_utf8_lossy(&listing.stdout).to_lowercase();
    for f in ["bootx64.efi", "grubx64.efi"] {
        ensure!(listing.contains(f), "no EFI/BOOT/{f} on the ESP: {listing}");
    }
    let said = snap_run_waitssh(
        &dir,
        &["cat /proc/cmdline; findmnt -n -o SOURCE,TARGET /boot/efi"],
    )?;
    ensure!(
        said.contains("BOOT_IMAGE=/boot/vmlinuz-") && said.contains("root=LABEL=vmkroot"),
        "not booted by GRUB with root by label: {said}"
    );
    ensure!(said.contains("/boot/efi"), "the ESP is not mounted: {said}");
    Ok(())
}

fn interrupt_test() -> Result<()> {
    let fs = LoopBtrfs::new(2 << 30)?;
    let dir = fs.path().join("stopped");
    let slot = VmSlot::reserve()?;
    let mut child = bootstrap_cmd(&dir, slot.number())
        .arg("--no-cache")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running vmk-ayinstall bootstrap")?;
    // Let debootstrap get going inside the staging directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let staged = fs::read_dir(fs.path())?
            .flatten()
            .any(|e| e.path().join("root").exists());
        if staged {
            std::thread::sleep(Duration::from_secs(3));
            break;
        }
        if let Some(s) = child.try_wait()? {
            bail!("bootstrap ended ({s}) before it was interrupted");
        }
        ensure!(Instant::now() < deadline, "no staging directory after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("bootstrap did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(!status.success(), "an interrupted bootstrap exited 0");
    let left: Vec<_> = fs::read_dir(fs.path())?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "left behind: {left:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    let under = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(fs.path()))
        .count();
    ensure!(under == 1, "mounts left under {}", fs.path().display());
    Ok(())
}
