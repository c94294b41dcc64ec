//! `vmk-ayinstall ayinstall` end to end with a real qemu (TCG) and a test installer:
//!
//! - the installer ISO is made by the test in the SUSE layout (`boot/x86_64/loader/linux`
//!   and `initrd`): the host's kernel, and the busybox guest's initramfs with a second cpio
//!   archive appended (the kernel unpacks both) that brings the CD/floppy modules and an
//!   `/init` playing the installer: it reads `autoyast=device://sr1/autoinst.xml` from the
//!   kernel command line, mounts that CD, checks the floppy, writes the profile onto disk0
//!   at 1 MiB and a boot sector at 0, and powers off;
//! - phase 2 boots disk0 through the firmware: the boot sector prints a line on the serial
//!   console and resets the machine, which ends qemu (`-no-reboot`);
//! - the test then finds the profile's bytes on disk0 and both phases' lines in the log.
//!
//! Also: every error that must come before anything is created, and the dry run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::guest::{self, Cpio};
use vmk_testkit::isolation::VmSlot;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// Both phases under TCG on 2 busy cores: about 10–30 s; generous for loaded CI machines.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Printed by the test's boot sector in phase 2.
const PHASE2_MARK: &str = "VMK-PHASE2-OK";
/// Modules the fake installer loads (with their dependencies): disk (virtio-scsi, the
/// default bus: the installer writes /dev/sda as under the original vmk), AHCI CD-ROMs,
/// ISO 9660, floppy and FAT.
const INSTALLER_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "sr_mod",
    "isofs",
    "floppy",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "ayinstall_runs_both_phases_unattended",
            &[
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("qemu-img"),
            ],
            ayinstall_runs_both_phases_unattended,
        ),
        SystemTest::new(
            "errors_come_before_anything_is_created",
            &[],
            errors_come_first,
        ),
        SystemTest::new(
            "dry_run_shows_both_phases_and_creates_nothing",
            &[],
            dry_run,
        ),
        SystemTest::new(
            "new_disk0_is_nocow_on_btrfs_and_plain_elsewhere",
            &[Need::Root, Need::Btrfs, Need::Program("qemu-img")],
            new_disk0_is_nocow,
        ),
    ])
}

/// The boot sector phase 2 boots: prints [`PHASE2_MARK`] on COM1, tries ACPI power-off
/// (0x604 on current qemu machines, 0xb004 on old ones), then resets through the keyboard
/// controller. Hand-assembled 16-bit code, loaded at 0x7c00.
fn boot_sector() -> Vec<u8> {
    let mut code: Vec<u8> = vec![
        0xfa, // cli
        0x31, 0xc0, // xor ax,ax
        0x8e, 0xd8, // mov ds,ax
        0xbe, 0x25, 0x7c, // mov si,0x7c25 (msg)
        0xba, 0xf8, 0x03, // mov dx,0x3f8
        0xac, // lodsb
        0x84, 0xc0, // test al,al
        0x74, 0x03, // jz done
        0xee, // out dx,al
        0xeb, 0xf8, // jmp lodsb
        0xb8, 0x00, 0x20, // done: mov ax,0x2000 (SLP_EN, S5)
        0xba, 0x04, 0x06, // mov dx,0x604
        0xef, // out dx,ax
        0xba, 0x04, 0xb0, // mov dx,0xb004
        0xef, // out dx,ax
        0xb0, 0xfe, // mov al,0xfe
        0xe6, 0x64, // out 0x64,al (reset)
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
    ];
    assert_eq!(code.len(), 0x25);
    code.extend(format!("{PHASE2_MARK}\r\n\0").as_bytes());
    code.resize(510, 0);
    code.extend([0x55, 0xaa]);
    code
}

const INSTALLER_INIT: &str = r#"#!/bin/sh
# The test's stand-in for a SUSE installer (see tests/install.rs).
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "fake-installer: started"
for m in $(cat /etc/installer-modules); do
  insmod /lib/modules/installer/$m.ko 2>/dev/null || echo "fake-installer: insmod $m failed"
done
arg=$(sed -n 's|.*autoyast=device://\([^ ]*\).*|\1|p' /proc/cmdline)
dev=${arg%%/*}; file=${arg#*/}
echo "fake-installer: profile $file on /dev/$dev"
i=0; while [ ! -b "/dev/$dev" ] || [ ! -b /dev/sda ]; do
  i=$((i+1)); [ $i -gt 300 ] && { echo "fake-installer: no /dev/$dev or /dev/sda"; ls /dev; poweroff -f; }
  sleep 0.1
done
mkdir -p /cd /fd
if ! mount -t iso9660 -o ro "/dev/$dev" /cd; then echo "fake-installer: cannot mount /dev/$dev"; poweroff -f; fi
echo "fake-installer: cd holds $(ls /cd | tr '\n' ' ')"
if [ -b /dev/fd0 ] && mount -t vfat -o ro /dev/fd0 /fd 2>/dev/null; then
  cmp -s "/cd/$file" "/fd/$file" && echo "fake-installer: floppy has the same $file"
  umount /fd
else
  echo "fake-installer: no floppy"
fi
dd if=/mbr.bin of=/dev/sda bs=512 count=1 conv=notrunc 2>/dev/null
dd if="/cd/$file" of=/dev/sda bs=512 seek=2048 conv=notrunc 2>/dev/null
sync
echo "fake-installer: wrote $(wc -c < "/cd/$file") bytes of $file to /dev/sda"
umount /cd
poweroff -f
"#;

/// The installer's initrd: the busybox guest's, plus an archive with our `/init`, the
/// modules and the boot sector for disk0.
fn installer_initrd(dest: &Path) -> Result<()> {
    let g = guest::busybox_guest()?;
    let kernel = vmk_testkit::find_host_kernel().context("no host kernel")?;
    let modules_dir = Path::new("/lib/modules").join(vmk_testkit::guest::kernel_version(&kernel)?);
    let mut cpio = Cpio::default();
    for d in ["lib", "lib/modules", "lib/modules/installer"] {
        cpio.dir(d);
    }
    let mut order = String::new();
    for rel in guest::module_closure(&modules_dir, INSTALLER_MODULES)? {
        let name = guest::module_name(&rel);
        cpio.file(
            &format!("lib/modules/installer/{name}.ko"),
            0o644,
            guest::read_module(&modules_dir.join(&rel))?,
        );
        order.push_str(&name);
        order.push('\n');
    }
    cpio.dir("etc");
    cpio.file("etc/installer-modules", 0o644, order.into_bytes());
    cpio.file("mbr.bin", 0o644, boot_sector());
    cpio.file("init", 0o755, INSTALLER_INIT.as_bytes().to_vec());
    let mut initrd =
        fs::read(&g.initrd).with_context(|| format!("reading {}", g.initrd.display()))?;
    initrd.resize(initrd.len().div_ceil(512) * 512, 0);
    cpio.write(&mut initrd)?;
    fs::write(dest, initrd)?;
    Ok(())
}

fn bin(dir: &Path) -> Command {
    let mut c = vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(env!("CARGO_BIN_EXE_vmk-ayinstall"));
    // no VMK_ACCEL either: the configs say tcg
    c.current_dir(dir)
        .env_remove("VMK_ACCEL")
        .stdin(Stdio::null());
    c.env(
        "VMK_AUTOINST_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../autoinst"),
    );
    c
}

/// Kills vmk-ayinstall and the qemu it started (by the pid in its pidfile) on drop.
struct InstallGuard {
    child: Option<Child>,
    pidfile: PathBuf,
}

impl Drop for InstallGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(text) = fs::read_to_string(&self.pidfile) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    if let Ok(g) = QemuGuard::from_pid(pid) {
                        g.kill();
                    }
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ayinstall_runs_both_phases_unattended() -> Result<()> {
    let slot = VmSlot::reserve()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let work = tempfile::tempdir()?;
    let initrd = work.path().join("initrd");
    installer_initrd(&initrd)?;
    let kernel = vmk_testkit::find_host_kernel().context("no host kernel")?;
    let iso = dir.join("installer.iso");
    let out = bin(dir)
        .args(["mkiso", "-V", "VMK-TEST-INSTALLER", "-o"])
        .arg(&iso)
        .arg(format!("boot/x86_64/loader/linux={}", kernel.display()))
        .arg(format!("boot/x86_64/loader/initrd={}", initrd.display()))
        .output()?;
    ensure!(
        out.status.success(),
        "mkiso: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let default_list = Path::new(env!("CARGO_MANIFEST_DIR")).join("../autoinst/default.list");
    let out = bin(dir)
        .args(["profile", "-f"])
        .arg(&default_list)
        .args(["-o", "autoinst.xml"])
        .output()?;
    ensure!(
        out.status.success(),
        "profile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let profile = fs::read(dir.join("autoinst.xml"))?;

    fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=aytest\nVMK_DISK0=disk0.qcow2\nVMK_ISO=installer.iso\nVMK_ACCEL=tcg\n\
             VMK_MEM=512M\nVMK_CPU=1\nVMK_NET_TYPE=none\n{}VMK_INST_DISK0=64M\n\
             VMK_INST_APPEND='panic=-1'\n",
            slot.config_line()
        ),
    )?;
    let stdout = fs::File::create(dir.join("stdout"))?;
    let stderr = fs::File::create(dir.join("stderr"))?;
    let started = Instant::now();
    let child = bin(dir)
        .arg("ayinstall")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let mut guard = InstallGuard {
        child: Some(child),
        pidfile: dir.join("disk0.qcow2.pid"),
    };
    let status = loop {
        if let Some(s) = guard.child.as_mut().unwrap().try_wait()? {
            guard.child = None;
            break s;
        }
        if started.elapsed() > INSTALL_TIMEOUT {
            drop(guard);
            bail!(
                "ayinstall did not finish within {INSTALL_TIMEOUT:?}; log:\n{}",
                fs::read_to_string(dir.join("disk0.qcow2.console.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = fs::read_to_string(dir.join("stderr"))?;
    let log = fs::read_to_string(dir.join("disk0.qcow2.console.log")).unwrap_or_default();
    eprintln!("ayinstall took {:.1?}, stderr:\n{err}", started.elapsed());
    ensure!(
        status.success(),
        "ayinstall failed ({status}):\n{err}\nconsole log:\n{log}"
    );

    for want in [
        "created ",
        "phase 1: installing from",
        "(x86_64 installer)",
        "phase 1 ended (the guest powered off)",
        "phase 2: booting the installed system",
        "phase 2 ended (the guest",
    ] {
        ensure!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    for want in [
        "fake-installer: profile autoinst.xml on /dev/sr1",
        "fake-installer: cd holds autoinst.xml",
        "fake-installer: floppy has the same autoinst.xml",
        &format!(
            "fake-installer: wrote {} bytes of autoinst.xml to /dev/sda",
            profile.len()
        ),
        PHASE2_MARK,
    ] {
        ensure!(log.contains(want), "console log lacks {want:?}:\n{log}");
    }
    let p1 = log.find("fake-installer: wrote").unwrap_or(usize::MAX);
    ensure!(
        log.rfind(PHASE2_MARK) > Some(p1),
        "phase 2's line comes after phase 1's"
    );

    // disk0: a new qcow2 of VMK_INST_DISK0 holding the profile at 1 MiB and our boot sector.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.join("disk0.qcow2"))
        .output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    ensure!(
        info.contains("\"format\": \"qcow2\""),
        "disk0 is qcow2: {info}"
    );
    ensure!(
        info.contains(&format!("\"virtual-size\": {}", 64u64 << 20)),
        "disk0 is 64M: {info}"
    );
    let raw = work.path().join("disk0.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(dir.join("disk0.qcow2"))
        .arg(&raw)
        .output()?;
    ensure!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = fs::read(&raw)?;
    ensure!(
        disk[..512] == boot_sector()[..],
        "disk0's boot sector is not the installer's"
    );
    ensure!(
        disk[1 << 20..(1 << 20) + profile.len()] == profile[..],
        "the profile is not on disk0 at 1 MiB"
    );

    let leftovers: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".vmk-install") || n.ends_with(".pid"))
        .collect();
    ensure!(leftovers.is_empty(), "left behind: {leftovers:?}");
    Ok(())
}

/// A VM directory whose qemu is /bin/true (nothing can boot) and an installer ISO.
fn error_vm(dir: &Path, iso_files: &[(&str, &[u8])], config_extra: &str) -> Result<()> {
    let mut b = Command::new(env!("CARGO_BIN_EXE_vmk-ayinstall"));
    b.current_dir(dir).args(["mkiso", "-o", "inst.iso"]);
    let src = dir.join("src");
    for (name, data) in iso_files {
        let p = src.join(name);
        fs::create_dir_all(p.parent().unwrap())?;
        fs::write(&p, data)?;
        b.arg(format!("{name}={}", p.display()));
    }
    let out = b.output()?;
    ensure!(
        out.status.success(),
        "mkiso: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&src)?;
    fs::write(
        dir.join("vm-config"),
        format!("VMK_DISK0=disk0.qcow2\nVMK_QEMU=/bin/true\nVMK_ACCEL=tcg\nVMK_INST_DISK0=16M\n{config_extra}"),
    )?;
    Ok(())
}

fn listing(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Runs vmk-ayinstall in `dir`; expects exit `code` and every `want` in stderr, and that
/// the directory is unchanged.
fn expect_error(dir: &Path, args: &[&str], code: i32, wants: &[&str]) -> Result<()> {
    let before = listing(dir)?;
    let out = bin(dir).args(args).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code),
        "{args:?}: exit {:?}, want {code}:\n{err}",
        out.status.code()
    );
    for w in wants {
        ensure!(err.contains(w), "{args:?}: stderr lacks {w:?}:\n{err}");
    }
    ensure!(
        listing(dir)? == before,
        "{args:?} changed the VM directory: {:?}",
        listing(dir)?
    );
    Ok(())
}

const LOADER: &[(&str, &[u8])] = &[
    ("boot/x86_64/loader/linux", b"k"),
    ("boot/x86_64/loader/initrd", b"i"),
];

fn errors_come_first() -> Result<()> {
    let good = b"<?xml version=\"1.0\"?>\n<profile xmlns=\"http://www.suse.com/1.0/yast2ns\"/>\n";

    let d = tempfile::tempdir()?;
    error_vm(d.path(), LOADER, "")?;
    fs::write(d.path().join("autoinst.xml"), good)?;
    expect_error(
        d.path(),
        &["ayinstall"],
        2,
        &["no install medium: set VMK_ISO"],
    )?;
    expect_error(
        d.path(),
        &["qinstall", "--iso", "missing.iso"],
        2, // a medium named on the command line that is not there: a usage mistake
        &["install medium missing.iso not found"],
    )?;

    let d = tempfile::tempdir()?;
    error_vm(
        d.path(),
        &[("README", b"not an installer")],
        "VMK_ISO=inst.iso\n",
    )?;
    fs::write(d.path().join("autoinst.xml"), good)?;
    expect_error(
        d.path(),
        &["ayinstall"],
        1,
        &[
            "no installer kernel and initrd",
            "is it a SUSE installation medium",
        ],
    )?;
    expect_error(
        d.path(),
        &["qinstall", "--arch", "aarch64"],
        1,
        &["no installer for aarch64", "set VMK_ARCH"],
    )?;

    let d = tempfile::tempdir()?;
    error_vm(d.path(), LOADER, "VMK_ISO=inst.iso\n")?;
    expect_error(
        d.path(),
        &["ayinstall"],
        1,
        &["reading the autoyast profile", "autoinst.xml"],
    )?;
    fs::write(
        d.path().join("autoinst.xml"),
        "<?xml version=\"1.0\"?>\n<profile>\n  <general>\n</profile>\n",
    )?;
    expect_error(
        d.path(),
        &["ayinstall"],
        1,
        &["autoinst.xml:4:", "not well-formed"],
    )?;
    fs::write(
        d.path().join("autoinst.xml"),
        "<?xml version=\"1.0\"?>\n<config/>\n",
    )?;
    expect_error(
        d.path(),
        &["ayinstall"],
        1,
        &["autoinst.xml:2:1: the root element is <config>"],
    )?;
    fs::write(d.path().join("other.xml"), "<profile>")?;
    expect_error(
        d.path(),
        &["ayinstall", "-a", "other.xml"],
        1,
        &["other.xml:1:", "not closed"],
    )?;
    Ok(())
}

fn dry_run() -> Result<()> {
    let d = tempfile::tempdir()?;
    error_vm(
        d.path(),
        LOADER,
        "VMK_ISO=inst.iso\nVMK_INST_APPEND='self_update=0'\n",
    )?;
    fs::write(d.path().join("autoinst.xml"), "<profile/>")?;
    let before = listing(d.path())?;
    let out = bin(d.path()).args(["-D", "ayinstall"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "-D ayinstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (p1, p2) = text
        .split_once("# phase 2\n")
        .context("no phase 2 in the dry run")?;
    for want in [
        "# create ",
        "disk0.qcow2 (16777216 bytes",
        "boot/x86_64/loader/linux",
        "-kernel ",
        "-no-reboot",
        "cache=unsafe",
        "autoyast=device://sr1/autoinst.xml textmode=1 console=tty0 console=ttyS0,115200 self_update=0",
        "inst.iso",
        "autoinst.iso",
        "id=fd0",
    ] {
        ensure!(p1.contains(want), "phase 1 lacks {want:?}:\n{p1}");
    }
    ensure!(
        p1.matches("media=cdrom").count() == 2,
        "two CDs in phase 1:\n{p1}"
    );
    ensure!(
        !p2.contains("-kernel") && p2.contains("-no-reboot") && p2.contains("media=cdrom"),
        "phase 2:\n{p2}"
    );
    ensure!(
        !p2.contains("cache=unsafe"),
        "phase 2 uses the configured cache:\n{p2}"
    );
    ensure!(listing(d.path())? == before, "the dry run created files");
    let out = bin(d.path())
        .args(["-D", "qinstall", "--no-phase2"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && !text.contains("# phase 2") && !text.contains("autoyast="),
        "{text}"
    );
    let _ = std::io::stderr().flush();
    Ok(())
}

/// The disk0 an install creates: qcow2 (or sparse raw) of the asked size, NOCOW on btrfs,
/// created without the attribute on a filesystem that has none.
fn new_disk0_is_nocow() -> Result<()> {
    use vmk_ayinstall::install::create_disk;
    use vmk_common::config::DiskFormat;
    use vmk_common::fileops::is_nocow;
    let btrfs = vmk_testkit::btrfs::LoopBtrfs::new(256 << 20)?;
    let tmpfs = vmk_testkit::btrfs::LoopFs::new("tmpfs", 64 << 20)?;
    for (fs, nocow) in [(btrfs.path(), true), (tmpfs.path(), false)] {
        let q = fs.join("disk0.qcow2");
        create_disk(&q, DiskFormat::Qcow2, 30 << 30)?;
        ensure!(
            is_nocow(&q)? == nocow,
            "{}: NOCOW should be {nocow}",
            q.display()
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&q)
            .output()?;
        let info = String::from_utf8_lossy(&info.stdout);
        ensure!(
            info.contains("\"format\": \"qcow2\"")
                && info.contains(&format!("\"virtual-size\": {}", 30u64 << 30)),
            "{info}"
        );
        ensure!(
            create_disk(&q, DiskFormat::Qcow2, 1 << 20).is_err(),
            "an existing disk is never overwritten"
        );
        let r = fs.join("disk0.raw");
        create_disk(&r, DiskFormat::Raw, 1 << 30)?;
        let meta = fs::metadata(&r)?;
        ensure!(
            meta.len() == 1 << 30 && is_nocow(&r)? == nocow,
            "raw disk0 on {}",
            fs.display()
        );
        use std::os::unix::fs::MetadataExt;
        ensure!(meta.blocks() < 1024, "raw disk0 is sparse");
    }
    Ok(())
}
