//! vmk-clone on a real loop-mounted btrfs: the clone's disk0 is a NOCOW reflink copy, keys keep
//! mode 0600, the config changes only VMK_NAME and VMK_VNC, and a failed clone leaves nothing.

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use anyhow::{ensure, Context, Result};
use vmk_testkit::btrfs::{LoopBtrfs, LoopFs};
use vmk_testkit::images::{check_reflink_copy, make_image};
use vmk_testkit::{run_system_tests, Need, SystemTest};

const MIB: u64 = 1 << 20;

fn vmk_clone(dir: &Path, args: &[&str]) -> Result<Output> {
    // the tests' private HOME, runtime directory and (absent) system config
    vmk_testkit::isolation::shared_env()?
        .command(env!("CARGO_BIN_EXE_vmk-clone"))
        .current_dir(dir)
        .args(args)
        .output()
        .context("running vmk-clone")
}

const CONFIG: &str = "# the original\nVMK_NAME=orig   # its name\nVMK_DISK0=disk0.img\n\
VMK_VNC=5\n  VMK_MEM=512\nVMK_ACCEL=tcg\n";

fn make_vm(dir: &Path) -> Result<()> {
    fs::create_dir(dir)?;
    // 64 MiB, NOCOW, 16 MiB of data
    make_image(&dir.join("disk0.img"), 64 * MIB, 4 * MIB, true)?;
    fs::write(dir.join("vm-config"), CONFIG)?;
    fs::write(dir.join("vm-key"), "PRIVATE\n")?;
    fs::set_permissions(dir.join("vm-key"), fs::Permissions::from_mode(0o600))?;
    fs::write(dir.join("vm-key.pub"), "ssh-ed25519 AAAA test\n")?;
    Ok(())
}

fn clone_is_a_nocow_reflink_with_its_own_name_and_number() -> Result<()> {
    let btrfs = LoopBtrfs::new(512 * MIB)?;
    let vm = btrfs.path().join("orig");
    make_vm(&vm)?;
    let out = vmk_clone(&vm, &["-o", "../clones", "-n", "c1", "-k"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "clone failed: {err}");
    let c1 = btrfs.path().join("clones/c1");
    let cfg = fs::read_to_string(c1.join("vm-config"))?;
    let n1 = vnc_of(&c1)?;
    ensure!(n1 != 5, "the clone got the original's number");
    ensure!(
        err.contains(&format!("VMK_VNC={n1} (")),
        "number not reported: {err}"
    );
    ensure!(
        cfg == CONFIG
            .replace("VMK_NAME=orig", "VMK_NAME=c1")
            .replace("VMK_VNC=5", &format!("VMK_VNC={n1}")),
        "clone config: {cfg:?}"
    );
    let copy = c1.join("disk0.img");
    let orig = fs::read(vm.join("disk0.img"))?;
    // NOCOW (lsattr C), same content, all 16 MiB of data shared, a write leaves the original
    check_reflink_copy(&vm.join("disk0.img"), &copy, 16 * MIB)?;
    ensure!(fs::metadata(c1.join("vm-key"))?.permissions().mode() & 0o777 == 0o600);
    ensure!(c1.join("vm-key.pub").exists());
    // writing the clone leaves the original alone
    fs::OpenOptions::new()
        .write(true)
        .open(&copy)?
        .write_all_at(b"clone", 0)?;
    ensure!(fs::read(vm.join("disk0.img"))? == orig);
    // a second clone picks another number than c1's
    let out = vmk_clone(&vm, &["-o", "../clones", "-n", "c2"])?;
    ensure!(out.status.success());
    let cfg2 = fs::read_to_string(btrfs.path().join("clones/c2/vm-config"))?;
    ensure!(
        !cfg2.contains(&format!("VMK_VNC={n1}\n")) && !cfg2.contains("VMK_VNC=5\n"),
        "{cfg2}"
    );
    ensure!(
        !btrfs.path().join("clones/c2/vm-key").exists(),
        "keys copied without -k"
    );
    Ok(())
}

fn failed_clone_leaves_nothing() -> Result<()> {
    let btrfs = LoopBtrfs::new(512 * MIB)?;
    let ext4 = LoopFs::new("ext4", 256 * MIB)?;
    let vm = btrfs.path().join("orig");
    make_vm(&vm)?;
    let out = vmk_clone(&vm, &["-o", ext4.path().to_str().unwrap(), "-n", "c1"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "expected failure: {err}");
    ensure!(err.contains("--full-copy"), "{err}");
    ensure!(
        !ext4.path().join("c1").exists(),
        "the failed clone was left behind"
    );
    let out = vmk_clone(
        &vm,
        &[
            "-o",
            ext4.path().to_str().unwrap(),
            "-n",
            "c1",
            "--full-copy",
        ],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(fs::read(ext4.path().join("c1/disk0.img"))? == fs::read(vm.join("disk0.img"))?);
    Ok(())
}

/// The VMK_VNC a clone's vm-config got.
fn vnc_of(vm_dir: &Path) -> Result<u8> {
    fs::read_to_string(vm_dir.join("vm-config"))?
        .lines()
        .find_map(|l| l.strip_prefix("VMK_VNC="))
        .context("no VMK_VNC")?
        .parse()
        .context("VMK_VNC")
}

/// `clone` passes over a number whose port something listens on. Every number below a
/// reserved one (N) is taken by a VM beside the clone (config files only), and the test
/// listens on N's VNC port: the clone gets a number above N; once the port is closed, the
/// next clone gets N.
fn clone_skips_a_number_whose_port_is_in_use() -> Result<()> {
    let slot = vmk_testkit::isolation::VmSlot::reserve()?;
    let n = slot.number();
    let btrfs = LoopBtrfs::new(512 * MIB)?;
    let vm = btrfs.path().join("orig");
    make_vm(&vm)?;
    let clones = btrfs.path().join("clones");
    for taken in 1..n {
        let dir = clones.join(format!("vm{taken}"));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("vm-config"), format!("VMK_VNC={taken}\n"))?;
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", slot.vnc_port()))
        .with_context(|| format!("listening on the reserved VNC port {}", slot.vnc_port()))?;
    let out = vmk_clone(&vm, &["-o", "../clones", "-n", "busy"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "clone failed: {err}");
    let got = vnc_of(&clones.join("busy"))?;
    ensure!(
        got > n,
        "the clone got VMK_VNC={got}, with 1…{} beside it and {n}'s VNC port in use: {err}",
        n - 1
    );
    drop(listener);
    let out = vmk_clone(&vm, &["-o", "../clones", "-n", "free"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "clone failed: {err}");
    let got = vnc_of(&clones.join("free"))?;
    ensure!(
        got == n,
        "with its port closed, the clone got {got}, not {n}: {err}"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let needs = &[Need::Root, Need::Btrfs, Need::Program("lsattr")];
    run_system_tests(vec![
        SystemTest::new(
            "clone_is_a_nocow_reflink_with_its_own_name_and_number",
            needs,
            clone_is_a_nocow_reflink_with_its_own_name_and_number,
        ),
        SystemTest::new(
            "clone_skips_a_number_whose_port_is_in_use",
            needs,
            clone_skips_a_number_whose_port_is_in_use,
        ),
        SystemTest::new(
            "failed_clone_leaves_nothing",
            needs,
            failed_clone_leaves_nothing,
        ),
    ])
}
