//! `vmk prep` (virt-sysprep) on a real image: a copy of the Debian test guest, given a
//! machine-id, has that id replaced (virt-sysprep sets a fresh one) and its ssh host keys
//! removed afterwards. The oracle is debugfs
//! reading the ext4 image directly (not libguestfs, which prep itself uses).

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use vmk_testguest::debian_guest;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::{run_system_tests, Need, SystemTest};

const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "prep_removes_machine_id_and_ssh_host_keys",
        &[
            Need::Root,
            Need::Debootstrap,
            Need::Program("virt-sysprep"),
            Need::Program("debugfs"),
        ],
        prep_removes_machine_id_and_host_keys,
    )])
}

/// One debugfs request against the (not mounted) image; its stdout. `-w` to write.
fn debugfs(image: &Path, write: bool, request: &str) -> Result<String> {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let out = cmd
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .context("running debugfs")?;
    ensure!(out.status.success(), "debugfs {request}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn host_keys(image: &Path) -> Result<Vec<String>> {
    let listing = debugfs(image, false, "ls -l /etc/ssh")?;
    Ok(listing
        .split_whitespace()
        .filter(|w| w.starts_with("ssh_host_"))
        .map(str::to_string)
        .collect())
}

fn prep_removes_machine_id_and_host_keys() -> Result<()> {
    let g = debian_guest()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let image = dir.join("disk0");
    g.copy_image(&image)?;
    let slot = VmSlot::reserve()?;
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_DISK0=disk0\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n{}",
            slot.config_line()
        ),
    )?;
    // the image as a guest that has booted leaves it: a machine-id of its own
    let id_file = dir.join("machine-id");
    std::fs::write(&id_file, format!("{MACHINE_ID}\n"))?;
    debugfs(&image, true, "rm /etc/machine-id")?;
    debugfs(
        &image,
        true,
        &format!("write {} /etc/machine-id", id_file.display()),
    )?;
    let before = debugfs(&image, false, "cat /etc/machine-id")?;
    ensure!(
        before.trim() == MACHINE_ID,
        "planted machine-id: {before:?}"
    );
    let keys = host_keys(&image)?;
    ensure!(
        keys.iter().any(|k| k == "ssh_host_ed25519_key"),
        "the test image has no ssh host keys to remove: {keys:?}"
    );

    let env = TestEnv::inside(dir)?;
    let out = env
        .command(env!("CARGO_BIN_EXE_vmk-mount"))
        .arg("prep")
        .current_dir(dir)
        .output()?;
    eprintln!(
        "$ vmk-mount prep → {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "vmk prep failed");

    // virt-sysprep's machine-id operation removes the old id and its customize step sets
    // a fresh random one: the image's id is no longer the one it had
    let after = debugfs(&image, false, "cat /etc/machine-id")?;
    let after = after.trim();
    ensure!(
        after != MACHINE_ID
            && (after.is_empty()
                || (after.len() == 32 && after.chars().all(|c| c.is_ascii_hexdigit()))),
        "machine-id after prep: {after:?}"
    );
    let keys = host_keys(&image)?;
    ensure!(keys.is_empty(), "ssh host keys left after prep: {keys:?}");
    // the image is still a filesystem e2fsck accepts
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&image)
        .output()?;
    ensure!(
        fsck.status.success(),
        "e2fsck after prep: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    Ok(())
}
