//! vmk-mount against real images: the Debian guest's raw image (loop device), the same as
//! qcow2 (qemu-storage-daemon FUSE export + loop), guestmount, refusals, an interrupted
//! chroot, and NOCOW disks on a loop-mounted btrfs. Every test checks that no mount, loop
//! device or daemon is left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use vmk_testguest::debian_guest;
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

const BIN: &str = env!("CARGO_BIN_EXE_vmk-mount");

/// A VM directory with a copy of the Debian image as disk0 (raw, or converted to qcow2).
fn vm_dir(format: &str) -> Result<tempfile::TempDir> {
    let guest = debian_guest()?;
    let dir = tempfile::Builder::new()
        .prefix("vmk-mount-test")
        .tempdir()?;
    let disk0 = dir.path().join("disk0");
    if format == "raw" {
        guest.copy_image(&disk0)?;
    } else {
        let st = Command::new("qemu-img")
            .args(["convert", "-O", format])
            .arg(&guest.image)
            .arg(&disk0)
            .status()?;
        ensure!(st.success(), "qemu-img convert failed");
    }
    fs::write(
        dir.path().join("vm-config"),
        "VMK_DISK0=disk0\nVMK_ACCEL=tcg\nVMK_VNC=76\n",
    )?;
    Ok(dir)
}

fn tool(dir: &Path, args: &[&str]) -> Result<Output> {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("VMK_OPT_CONFIG")
        .output()
        .context("running vmk-mount")?;
    eprintln!(
        "$ vmk-mount {}\n  -> {:?}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn ok(dir: &Path, args: &[&str]) -> Result<String> {
    let out = tool(dir, args)?;
    if !out.status.success() {
        bail!("vmk-mount {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fails when anything of `dir`'s VM is still mounted, looped or exported.
fn assert_clean(dir: &Path) -> Result<()> {
    let findmnt = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET,SOURCE"])
        .output()?;
    let mounts = String::from_utf8_lossy(&findmnt.stdout);
    let d = dir.to_string_lossy();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&*d)).collect();
    ensure!(left.is_empty(), "mounts left behind: {left:?}");
    let losetup = Command::new("losetup").arg("-a").output()?;
    let loops = String::from_utf8_lossy(&losetup.stdout);
    let left: Vec<&str> = loops.lines().filter(|l| l.contains(&*d)).collect();
    ensure!(left.is_empty(), "loop devices left behind: {left:?}");
    ensure!(!dir.join("disk0.mount").exists(), "state file left behind");
    ensure!(
        !dir.join("disk0.fuse").exists(),
        "FUSE export file left behind"
    );
    let stray: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".vmk-mnt-"))
        .collect();
    ensure!(stray.is_empty(), "temporary mount points left: {stray:?}");
    Ok(())
}

fn mount_shows_hostname(format: &'static str, backend: &'static str) -> Result<()> {
    let vm = vm_dir(format)?;
    let dir = vm.path();
    let printed = ok(dir, &["mount", "--backend", backend])?;
    let check = || -> Result<()> {
        ensure!(
            printed == dir.join("mnt-disk0").to_string_lossy(),
            "mount printed {printed}"
        );
        let host = fs::read_to_string(dir.join("mnt-disk0/etc/hostname"))?;
        ensure!(host.trim() == "vmk-guest", "hostname {host:?}");
        ensure!(dir.join("disk0.mount").exists(), "no state file");
        // A second mount refuses.
        let again = tool(dir, &["mount", "--backend", backend])?;
        ensure!(again.status.code() == Some(1), "second mount must refuse");
        Ok(())
    };
    let result = check();
    ok(dir, &["umount"])?;
    result?;
    assert_clean(dir)?;
    ensure!(
        !dir.join("mnt-disk0").exists(),
        "mnt-disk0 made by mount is left"
    );
    Ok(())
}

fn refuses_image_in_use() -> Result<()> {
    let vm = vm_dir("raw")?;
    let dir = vm.path();
    // A qemu that has the image open (no need to boot anything).
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-machine",
            "q35,accel=tcg",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            dir.join("disk0").display()
        ))
        .spawn()?;
    let _guard = QemuGuard::from_child(child);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = tool(dir, &["mount"])?;
    ensure!(
        out.status.code() == Some(1),
        "mount of a used image must fail"
    );
    ensure!(String::from_utf8_lossy(&out.stderr).contains("in use by a running qemu"));
    let out = tool(dir, &["putfile", "vm-config"])?;
    ensure!(
        out.status.code() == Some(1),
        "putfile into a used image must fail"
    );
    assert_clean(dir)?;
    // umount without a mount says so.
    let out = tool(dir, &["umount"])?;
    ensure!(out.status.code() == Some(1));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("not mounted by vmk"));
    Ok(())
}

fn interrupted_chroot_cleans_up() -> Result<()> {
    let vm = vm_dir("raw")?;
    let dir = vm.path();
    // The command inside sends SIGINT to vmk-mount (its parent) and exits 3: vmk must
    // survive the signal, clean up, and pass 3 through.
    let out = tool(
        dir,
        &[
            "chroot",
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/hostname; test -e /proc/self/mounts; kill -INT $PPID; sleep 0.2; exit 3",
        ],
    )?;
    ensure!(
        out.status.code() == Some(3),
        "chroot status {:?}",
        out.status
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("vmk-guest"));
    assert_clean(dir)
}

fn mkdisks_nocow_and_refuse() -> Result<()> {
    let fs_ = LoopBtrfs::new(1 << 30)?;
    let dir = fs_.path().join("vm");
    fs::create_dir(&dir)?;
    fs::write(
        dir.join("vm-config"),
        "VMK_DISK0=disk0\nVMK_INST_DISK0=3G\nVMK_INST_DISK=1G\n",
    )?;
    let printed = ok(&dir, &["mkdisk0"])?;
    ensure!(printed.ends_with("disk0"));
    let disk0 = dir.join("disk0");
    ensure!(vmk_common::fileops::is_nocow(&disk0)?, "disk0 is not NOCOW");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk0)
        .output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    ensure!(info.contains("\"format\": \"qcow2\""), "{info}");
    ensure!(
        info.contains(&format!("\"virtual-size\": {}", 3u64 << 30)),
        "{info}"
    );
    let before = fs::read(&disk0)?;
    let out = tool(&dir, &["mkdisk0"])?;
    ensure!(
        out.status.code() == Some(1),
        "mkdisk0 must refuse to overwrite"
    );
    ensure!(fs::read(&disk0)? == before, "disk0 changed");
    let printed = ok(&dir, &["mkdisks", "-n", "2"])?;
    ensure!(printed.lines().count() == 2, "{printed}");
    for d in ["disk1", "disk2"] {
        ensure!(
            vmk_common::fileops::is_nocow(&dir.join(d))?,
            "{d} is not NOCOW"
        );
    }
    ensure!(!dir.join("disk3").exists());
    let out = tool(&dir, &["mkdisks", "-n", "3"])?;
    ensure!(
        out.status.code() == Some(1),
        "mkdisks must refuse when disk1 exists"
    );
    ensure!(
        !dir.join("disk3").exists(),
        "mkdisks created disk3 before refusing"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let img = &[Need::Root, Need::Debootstrap, Need::Program("losetup")];
    run_system_tests(vec![
        SystemTest::new("mount_raw_kernel", img, || {
            mount_shows_hostname("raw", "kernel")
        }),
        SystemTest::new(
            "mount_qcow2_kernel_via_storage_daemon",
            &[
                Need::Root,
                Need::Debootstrap,
                Need::Program("qemu-storage-daemon"),
            ],
            || mount_shows_hostname("qcow2", "kernel"),
        ),
        SystemTest::new(
            "mount_raw_guestmount",
            &[Need::Root, Need::Debootstrap, Need::Guestmount],
            || mount_shows_hostname("raw", "guestmount"),
        ),
        SystemTest::new(
            "refuses_image_in_use",
            &[Need::Root, Need::Debootstrap, Need::Qemu],
            refuses_image_in_use,
        ),
        SystemTest::new(
            "interrupted_chroot_cleans_up",
            img,
            interrupted_chroot_cleans_up,
        ),
        SystemTest::new(
            "mkdisks_nocow_and_refuse",
            &[Need::Btrfs, Need::Program("qemu-img")],
            mkdisks_nocow_and_refuse,
        ),
    ])
}
