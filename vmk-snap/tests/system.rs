//! System tests of vmk-snap on real filesystems and a real guest: reflink snapshots on a
//! loop-mounted btrfs share data and keep NOCOW, full copies that are killed or run out of
//! space leave nothing at the destination, and `snap run` boots snap-<disk0> without ever
//! writing disk0 (Debian guest under TCG), or a qcow2 overlay where reflinks are impossible;
//! `dsnap --freeze` of a running Debian guest freezes and thaws its filesystems through
//! qemu-guest-agent, and of a guest without an agent only warns and takes the snapshot.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_common::fileops::create_nocow_file;
use vmk_common::state::RuntimePaths;
use vmk_snap::qga;
use vmk_testkit::btrfs::{LoopBtrfs, LoopFs};
use vmk_testkit::images::{btrfs_du, check_reflink_copy, lsattr_has_c, make_image, sha256};
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::qemu_guard::{PidfileGuard, QemuGuard};
use vmk_testkit::{guest, run_ok, run_system_tests, Need, SystemTest};

const MIB: u64 = 1 << 20;
/// The firmware descriptor Debian's `ovmf` installs (UEFI tests need it).
const OVMF_DESCRIPTOR: &str = "/usr/share/qemu/firmware/60-edk2-x86_64.json";
const GIB: u64 = 1 << 30;

/// `vmk-snap ARGS` in `dir`, in this test process's private environment (no HOME, runtime
/// directory or system config of the machine's).
fn vmk_snap(dir: &Path, args: &[&str]) -> Command {
    let mut c = test_env().command(env!("CARGO_BIN_EXE_vmk-snap"));
    c.current_dir(dir).args(args);
    c
}

fn test_env() -> &'static TestEnv {
    vmk_testkit::isolation::shared_env().expect("making the tests' private environment")
}

fn stdout_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write_config(dir: &Path, text: &str) -> Result<()> {
    fs::write(dir.join("vm-config"), text).context("writing vm-config")
}

fn dsnap_cpfile_fsnap_are_nocow_reflinks() -> Result<()> {
    let btrfs = LoopBtrfs::new(1024 * MIB)?;
    let dir = btrfs.path().join("vm");
    fs::create_dir(&dir)?;
    let disk0 = dir.join("disk0.img");
    make_image(&disk0, 256 * MIB, 4 * MIB, true)?; // 64 MiB of data
    let data = 64 * MIB;
    write_config(&dir, "VMK_DISK0=disk0.img\nVMK_ACCEL=tcg\n")?;
    let sum = sha256(&disk0)?;

    // vmk dsnap -m
    let out = run_ok(vmk_snap(&dir, &["--base", "dsnap", "-m", "first snapshot"]))?;
    let snap = PathBuf::from(stdout_line(&out));
    ensure!(
        snap.parent() == Some(dir.as_path()),
        "snapshot not beside disk0: {snap:?}"
    );
    let name = snap.file_name().unwrap().to_string_lossy().into_owned();
    ensure!(
        name.starts_with("disk0.img-") && name.len() == "disk0.img-".len() + 15,
        "{name}"
    );
    check_reflink_copy(&disk0, &snap, data)?;

    // cpfile into a directory and to a name; fsnap
    fs::create_dir(dir.join("sub"))?;
    run_ok(vmk_snap(&dir, &["cpfile", "disk0.img", "sub"]))?;
    check_reflink_copy(&disk0, &dir.join("sub/disk0.img"), data)?;
    run_ok(vmk_snap(&dir, &["cpfile", "disk0.img", "copy.img"]))?;
    let again = vmk_snap(&dir, &["cpfile", "disk0.img", "copy.img"]).output()?;
    ensure!(
        again.status.code() == Some(1),
        "cpfile over an existing file must fail"
    );
    ensure!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    check_reflink_copy(&disk0, &dir.join("copy.img"), data)?;
    // check_reflink_copy left its marker in copy.img where it writes the next one: change it,
    // so that the check below sees its write reach the snapshot
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join("copy.img"))?
        .write_all_at(b"copy.img before its fsnap", 4096)?;
    let out = run_ok(vmk_snap(&dir, &["fsnap", "copy.img"]))?;
    let fsnap = dir.join(stdout_line(&out));
    let fsnap_name = fsnap.file_name().unwrap_or_default().to_string_lossy();
    ensure!(
        fsnap.parent() == Some(dir.as_path()) && fsnap_name.starts_with("copy.img-"),
        "fsnap printed {:?}",
        stdout_line(&out)
    );
    // README: "the same for any file": a NOCOW reflink snapshot beside it
    check_reflink_copy(&dir.join("copy.img"), &fsnap, data)?;

    // list shows it with its note; --json too
    let out = run_ok(vmk_snap(&dir, &["--base", "dsnap", "list", "--json"]))?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(list.as_array().map(Vec::len) == Some(1), "{list}");
    ensure!(
        list[0]["note"] == "first snapshot" && list[0]["name"] == name.as_str(),
        "{list}"
    );

    // revert: disk0 becomes the snapshot again, the current disk0 is kept
    fs::OpenOptions::new()
        .write(true)
        .open(&disk0)?
        .write_all_at(b"new data", 0)?;
    let changed = sha256(&disk0)?;
    run_ok(vmk_snap(&dir, &["--base", "dsnap", "revert", &name]))?;
    ensure!(sha256(&disk0)? != changed, "revert did not change disk0");
    ensure!(lsattr_has_c(&disk0)?, "disk0 lost NOCOW in the revert");
    let out = run_ok(vmk_snap(&dir, &["--base", "dsnap", "list", "--json"]))?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let kept = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["note"]
                .as_str()
                .is_some_and(|n| n.contains("before revert"))
        })
        .context("no snapshot kept before the revert")?;
    ensure!(sha256(Path::new(kept["path"].as_str().unwrap()))? == changed);
    // the snapshot was modified by check_reflink_copy (a write at 4096): disk0 equals it now
    ensure!(fs::read(&disk0)? == fs::read(&snap)?);
    ensure!(sum != changed);

    // rm removes the snapshot and its note
    run_ok(vmk_snap(&dir, &["--base", "dsnap", "rm", &name]))?;
    ensure!(!snap.exists() && !dir.join(format!("{name}.note")).exists());
    Ok(())
}

/// Waits until a temporary copy `.NAME.vmk-tmp-*` in `dir` holds at least `bytes` allocated.
fn wait_for_temp(dir: &Path, name: &str, bytes: u64, timeout: Duration) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let start = Instant::now();
    let prefix = format!(".{name}.vmk-tmp-");
    loop {
        for e in fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                if let Ok(m) = e.metadata() {
                    if m.blocks() * 512 >= bytes {
                        return Ok(e.path());
                    }
                }
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "no temporary copy with {bytes} bytes in {} after {timeout:?}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn killed_full_copy_leaves_no_destination() -> Result<()> {
    let ext4 = LoopFs::new("ext4", 6 * GIB)?;
    let dir = ext4.path();
    let src = dir.join("big.img");
    // 4 GiB, data every 64 MiB: 8 MiB each, so the copy takes a while
    {
        let f = fs::File::create(&src)?;
        f.set_len(4 * GIB)?;
        let block: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8).collect();
        let mut off = 0;
        while off < 4 * GIB {
            f.write_all_at(&block, off)?;
            off += 64 * MIB;
        }
        f.sync_all()?;
    }
    let before = sha256(&src)?;
    let mut child = vmk_snap(dir, &["cpfile", "--full-copy", "big.img", "copy.img"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let tmp = wait_for_temp(dir, "copy.img", 16 * MIB, Duration::from_secs(30));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let status = child.wait()?;
    let tmp = tmp?;
    ensure!(!status.success(), "the copy finished before it was killed");
    ensure!(
        !dir.join("copy.img").exists(),
        "a file exists at the destination name"
    );
    ensure!(sha256(&src)? == before, "the source changed");
    eprintln!(
        "killed midway: {} ({} bytes allocated) stays as a hidden temporary; copy.img absent",
        tmp.display(),
        {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&tmp)?.blocks() * 512
        }
    );
    // the next copy to the same name clears the killed copy's temporary file away
    let again = vmk_snap(dir, &["cpfile", "--full-copy", "big.img", "copy.img"]).output()?;
    ensure!(again.status.success(), "the second copy failed: {again:?}");
    ensure!(
        !tmp.exists(),
        "{} is still there after the next copy",
        tmp.display()
    );
    ensure!(
        sha256(&dir.join("copy.img"))? == before,
        "the second copy differs"
    );
    Ok(())
}

fn copy_into_full_filesystem_fails_cleanly() -> Result<()> {
    let big = LoopFs::new("ext4", 512 * MIB)?;
    let tiny = LoopFs::new("ext4", 32 * MIB)?;
    let src = big.path().join("data.img");
    make_image(&src, 128 * MIB, MIB, false)?; // 128 MiB of data
    let out = vmk_snap(big.path(), &["cpfile", "--full-copy", "data.img"])
        .arg(tiny.path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "expected failure, got {}: {err}",
        out.status
    );
    ensure!(
        err.contains("No space left on device"),
        "unclear error: {err}"
    );
    let left: Vec<String> = fs::read_dir(tiny.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    ensure!(
        left.is_empty(),
        "left behind in the full filesystem: {left:?}"
    );
    // without --full-copy the error says what to do
    let out = vmk_snap(big.path(), &["cpfile", "data.img", "again.img"]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && err.contains("cannot share data blocks")
            && err.contains("--full-copy"),
        "{err}"
    );
    Ok(())
}

/// Debian guest config whose kernel command line makes systemd write a file in the guest and
/// power off.
fn debian_config(g: &vmk_testguest::DebianGuest, vnc: u8) -> String {
    format!(
        "VMK_NAME=snap-test\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
         VMK_VNC={vnc}\nVMK_MEM=1024\nVMK_NET_TYPE=none\nVMK_KERNEL={}\nVMK_INITRD={}\n\
         VMK_APPEND=\"{} systemd.run=\\\"/bin/sh -c 'echo written-by-snapshot-vm > /root/vmk-snap-proof; sync'\\\" systemd.run_success_action=poweroff\"\n",
        g.kernel.display(),
        g.initrd.display(),
        g.append
    )
}

/// The Debian guest and a 6 GiB loop-mounted btrfs holding `vm/disk0.img`, a NOCOW copy of
/// the guest's image.
fn debian_guest_on_btrfs() -> Result<(vmk_testguest::DebianGuest, LoopBtrfs)> {
    let g = vmk_testguest::debian_guest()?;
    let btrfs = LoopBtrfs::new(6 * GIB)?;
    let dir = btrfs.path().join("vm");
    fs::create_dir(&dir)?;
    let disk0 = dir.join("disk0.img");
    ensure!(create_nocow_file(&disk0, 0)?, "no NOCOW on btrfs?");
    g.copy_image(&disk0)?;
    ensure!(lsattr_has_c(&disk0)?, "disk0 is not NOCOW");
    Ok((g, btrfs))
}

fn debugfs_cat(image: &Path, file: &str) -> Result<Option<String>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .context("running debugfs")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return Ok(None);
    }
    ensure!(out.status.success(), "debugfs failed: {err}");
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn snap_run_boots_the_snapshot_and_never_writes_disk0() -> Result<()> {
    let (g, btrfs) = debian_guest_on_btrfs()?;
    let dir = btrfs.path().join("vm");
    let disk0 = dir.join("disk0.img");
    let slot = VmSlot::reserve()?;
    write_config(&dir, &debian_config(&g, slot.number()))?;
    let before = sha256(&disk0)?;

    let pidfile = dir.join("snap-disk0.img.pid");
    let armed = PidfileGuard::arm(&pidfile);
    let out = run_ok(vmk_snap(&dir, &["run"]))?;
    let mut guard = armed.into_guard()?;
    let snap = dir.join("snap-disk0.img");
    ensure!(lsattr_has_c(&snap)?, "snap-disk0.img is not NOCOW");
    let running = vmk_snap(&dir, &["isrunning"]).status()?;
    ensure!(running.success(), "snap isrunning says no while it runs");
    // --base: the commands act on disk0, which has no snapshot (the running snapshot VM's
    // image is not one)
    let base = run_ok(vmk_snap(&dir, &["--base", "dsnap", "list", "--json"]))?;
    let listed: serde_json::Value = serde_json::from_slice(&base.stdout)?;
    ensure!(
        listed == serde_json::json!([]),
        "disk0 has snapshots: {listed}"
    );
    // on btrfs the snapshot image is a reflink copy in disk0's format, not an overlay
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !said.contains("overlay"),
        "snap run took an overlay: {said}"
    );
    let info = run_ok({
        let mut c = Command::new("qemu-img");
        c.args(["info", "-U", "--output=json"]).arg(&snap);
        c
    })?;
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)?;
    ensure!(
        info["format"] == "raw" && info["backing-filename"].is_null(),
        "snap-disk0.img is not a raw copy: {info}"
    );
    // the guest writes its file, syncs and powers off
    if let Err(e) = guard.wait_exit(Duration::from_secs(300)) {
        let log = fs::read_to_string(dir.join("snap-disk0.img.console.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{e}; console log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    drop(guard);
    let proof = debugfs_cat(&snap, "/root/vmk-snap-proof")?;
    ensure!(
        proof.as_deref().map(str::trim) == Some("written-by-snapshot-vm"),
        "the guest's file is not in snap-disk0.img: {proof:?}"
    );
    ensure!(
        debugfs_cat(&disk0, "/root/vmk-snap-proof")?.is_none(),
        "the file reached disk0"
    );
    ensure!(
        sha256(&disk0)? == before,
        "disk0 changed while the snapshot VM ran"
    );
    let stopped = vmk_snap(&dir, &["isrunning"]).status()?;
    ensure!(
        stopped.code() == Some(1),
        "snap isrunning says yes after poweroff"
    );
    Ok(())
}

fn snap_run_falls_back_to_a_qcow2_overlay_on_ext4() -> Result<()> {
    let slot = VmSlot::reserve()?;
    let g = guest::busybox_guest()?;
    let ext4 = LoopFs::new("ext4", 256 * MIB)?;
    let dir = ext4.path().join("vm");
    fs::create_dir(&dir)?;
    let disk0 = dir.join("disk0.raw");
    make_image(&disk0, 64 * MIB, 8 * MIB, false)?;
    write_config(
        &dir,
        &format!(
            "VMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n{vnc}VMK_MEM=256\n\
             VMK_NET_TYPE=none\nVMK_KERNEL={}\nVMK_INITRD={}\nVMK_APPEND=\"{} vmk.cmd=\\\"while [ ! -b /dev/sda ]; do sleep 0.1; done; dd if=/dev/zero of=/dev/sda bs=4096 count=16 conv=fsync\\\"\"\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append,
            vnc = slot.config_line()
        ),
    )?;
    let before = sha256(&disk0)?;
    let armed = PidfileGuard::arm(&dir.join("snap-disk0.raw.pid"));
    let out = run_ok(vmk_snap(&dir, &["run"]))?;
    let mut guard = armed.into_guard()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("qcow2 overlay"),
        "snap run did not say it uses an overlay: {err}"
    );
    let info = run_ok({
        let mut c = Command::new("qemu-img");
        c.args(["info", "-U", "--output=json"])
            .arg(dir.join("snap-disk0.raw"));
        c
    })?;
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)?;
    ensure!(info["format"] == "qcow2", "{info}");
    ensure!(
        info["full-backing-filename"].as_str() == Some(disk0.to_str().unwrap()),
        "{info}"
    );
    let shown = run_ok(vmk_snap(&dir, &["info", "--json"]))?;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
    ensure!(
        shown["image_format"] == "qcow2",
        "snap info shows the overlay's format wrong: {shown}"
    );
    guest::wait_for_file_line(
        &dir.join("snap-disk0.raw.console.log"),
        "vmk-busybox-guest: exit 0",
        Duration::from_secs(120),
    )?;
    guard.wait_exit(Duration::from_secs(60))?;
    drop(guard);
    ensure!(
        sha256(&disk0)? == before,
        "the guest's writes reached disk0"
    );
    Ok(())
}

/// `vmk-run`, built beside `vmk-snap` (a binary of another package: `cargo build -p vmk-run`).
fn vmk_run(dir: &Path, args: &[&str]) -> Result<Command> {
    let bin = Path::new(env!("CARGO_BIN_EXE_vmk-snap")).with_file_name("vmk-run");
    ensure!(
        bin.exists(),
        "{} is not built: run `cargo build -p vmk-run` (or the whole workspace) first",
        bin.display()
    );
    let mut c = test_env().command(bin);
    c.current_dir(dir).args(args).stdin(Stdio::null());
    Ok(c)
}

/// A VM started with `vmk-run run` in `dir`: stopped with `vmk-run kill` when dropped, and
/// killed by its pid (the guard) should that fail.
struct RunningVm {
    dir: PathBuf,
    guard: Option<QemuGuard>,
}

impl RunningVm {
    fn start(dir: &Path, image: &str) -> Result<RunningVm> {
        let out = vmk_run(dir, &["run"])?
            .output()
            .context("running vmk-run run")?;
        // guard first: a failing `run` may still have started qemu
        let guard = QemuGuard::from_pidfile(&dir.join(format!("{image}.pid")));
        ensure!(
            out.status.success(),
            "vmk-run run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(RunningVm {
            dir: dir.to_path_buf(),
            guard: Some(guard?),
        })
    }

    fn is_running(&mut self) -> bool {
        self.guard.as_mut().is_some_and(QemuGuard::is_running)
    }

    /// `vmk-run ACTION` (stop or kill); fails unless qemu is gone afterwards.
    fn stop_with(mut self, action: &str) -> Result<String> {
        let out = run_ok(vmk_run(&self.dir, &[action])?)?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let mut guard = self.guard.take().expect("guard present until stopped");
        guard
            .wait_exit(Duration::from_secs(10))
            .with_context(|| format!("qemu still runs after `vmk-run {action}` ({said})"))?;
        Ok(said)
    }

    fn console_tail(&self, image: &str) -> String {
        let log =
            fs::read_to_string(self.dir.join(format!("{image}.console.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.guard.is_some() {
            if let Ok(mut c) = vmk_run(&self.dir, &["kill"]) {
                let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
        // the guard (if any) kills whatever is left by its pid
    }
}

/// Polls `guest-ping` until the guest agent answers; returns how long that took.
fn wait_for_agent(socket: &Path, vm: &mut RunningVm, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = String::from("no attempt");
    let mut attempts = 0;
    while start.elapsed() < timeout {
        ensure!(
            vm.is_running(),
            "qemu exited while waiting for the guest agent"
        );
        attempts += 1;
        match qga::Agent::connect(socket).and_then(|mut a| a.execute("guest-ping", None)) {
            Ok(_) => {
                eprintln!("guest-ping answered at attempt {attempts}");
                return Ok(start.elapsed());
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("the guest agent did not answer guest-ping within {timeout:?}: {last}")
}

fn agent(socket: &Path, command: &str) -> Result<serde_json::Value> {
    qga::Agent::connect(socket)?.execute(command, None)
}

/// The only `disk0.img-*` snapshot image in `dir`.
fn only_snapshot(dir: &Path) -> Result<PathBuf> {
    let snaps: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("disk0.img-") && !n.ends_with(".note")
        })
        .collect();
    ensure!(
        snaps.len() == 1,
        "expected one snapshot in {}: {snaps:?}",
        dir.display()
    );
    Ok(snaps.into_iter().next().unwrap())
}

/// Runs `vmk-snap --base dsnap --freeze ARGS` in `dir` and fails unless it succeeds; returns
/// its output, its stderr and how long it took.
fn dsnap_freeze(dir: &Path, args: &[&str]) -> Result<(Output, String, Duration)> {
    let t0 = Instant::now();
    let out = vmk_snap(dir, &[&["--base", "dsnap", "--freeze"], args].concat()).output()?;
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "dsnap --freeze failed ({}): {err}",
        out.status
    );
    Ok((out, err, took))
}

fn dsnap_freeze_through_the_guest_agent() -> Result<()> {
    let slot = VmSlot::reserve()?;
    let (g, btrfs) = debian_guest_on_btrfs()?;
    let dir = btrfs.path().join("vm");
    let disk0 = dir.join("disk0.img");
    write_config(
        &dir,
        &format!(
            "VMK_NAME=freeze-test\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
             {vnc}VMK_MEM=1024\nVMK_NET_TYPE=none\nVMK_KERNEL={}\nVMK_INITRD={}\n\
             VMK_APPEND=\"{}\"\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append,
            vnc = slot.config_line()
        ),
    )?;
    let socket = RuntimePaths::new(&dir, &disk0)?.qga_socket();
    let mut vm = RunningVm::start(&dir, "disk0.img")?;
    let took = wait_for_agent(&socket, &mut vm, Duration::from_secs(240)).map_err(|e| {
        anyhow::anyhow!("{e:#}; console log tail:\n{}", vm.console_tail("disk0.img"))
    })?;
    eprintln!("guest agent answered guest-ping {took:.1?} after vmk-run run");
    let status = agent(&socket, "guest-fsfreeze-status")?;
    ensure!(
        status == "thawed",
        "fsfreeze status before the snapshot: {status}"
    );
    // a client that gave up leaves commands behind; their answers reach the next client
    // (dsnap) first, which must skip them
    for _ in 0..3 {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&socket)?;
        s.write_all(b"{\"execute\": \"guest-get-time\"}\n{\"execute\": \"guest-ping\"}\n")?;
    }
    std::thread::sleep(Duration::from_secs(1));

    let (out, err, took) = dsnap_freeze(&dir, &["-m", "frozen", "-v"])?;
    eprintln!("dsnap --freeze took {took:.2?}; it said:\n{err}");
    let frozen = count_after(&err, "guest agent froze ")
        .with_context(|| format!("dsnap did not report a freeze: {err}"))?;
    let thawed = count_after(&err, "guest agent thawed ")
        .with_context(|| format!("dsnap did not report a thaw: {err}"))?;
    ensure!(frozen >= 1, "the agent froze {frozen} filesystems");
    ensure!(thawed == frozen, "froze {frozen} but thawed {thawed}");

    let snap = PathBuf::from(stdout_line(&out));
    ensure!(snap == only_snapshot(&dir)?, "dsnap printed {snap:?}");
    ensure!(lsattr_has_c(&snap)?, "the snapshot is not NOCOW");
    // the guest still runs and writes disk0, so compare extents, not contents: everything
    // the snapshot holds is shared (reflinked), nothing of it was copied
    let du = btrfs_du(&snap)?;
    let (excl, shared) = (du.exclusive, du.shared());
    ensure!(
        shared > 0 && excl < shared / 100,
        "snapshot: {excl} exclusive and {shared} shared bytes: not a reflink copy"
    );
    eprintln!(
        "snapshot {}: {shared} bytes shared, {excl} exclusive",
        snap.display()
    );
    let list = run_ok(vmk_snap(&dir, &["--base", "dsnap", "list", "--json"]))?;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    ensure!(list[0]["note"] == "frozen", "{list}");

    // the guest is thawed and alive
    ensure!(
        agent(&socket, "guest-ping")?.is_object(),
        "guest-ping after the snapshot"
    );
    let status = agent(&socket, "guest-fsfreeze-status")?;
    ensure!(
        status == "thawed",
        "fsfreeze status after the snapshot: {status}"
    );
    ensure!(vm.is_running(), "qemu died");
    let said = vm.stop_with("kill")?;
    eprintln!("vmk-run kill: {said}");

    // the frozen snapshot is a clean filesystem: fsck finds nothing to repair
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(&snap).output()?;
    ensure!(
        fsck.status.success(),
        "e2fsck -fn of the snapshot found problems ({}): {}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // ...and it was taken while frozen: ext4's freeze writes its journal out and clears
    // `needs_recovery` in the superblock (until the thaw); the killed guest's disk0 (the
    // control) still has it, as every ext4 mounted read-write
    ensure!(
        !ext4_needs_recovery(&snap)?,
        "the snapshot's ext4 needs journal recovery: not taken while frozen"
    );
    ensure!(
        ext4_needs_recovery(&disk0)?,
        "control: the killed guest's disk0 does not need journal recovery"
    );
    Ok(())
}

/// Whether the ext4 superblock of `image` has the `needs_recovery` feature (`dumpe2fs -h`).
fn ext4_needs_recovery(image: &Path) -> Result<bool> {
    let out = run_ok({
        let mut c = Command::new("dumpe2fs");
        c.arg("-h").arg(image);
        c
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let features = text
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .with_context(|| format!("no features in dumpe2fs -h {}", image.display()))?;
    Ok(features.split_whitespace().any(|f| f == "needs_recovery"))
}

/// The number after `prefix` in `text` (e.g. "guest agent froze 1 filesystem(s)" → 1).
fn count_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn dsnap_freeze_without_an_agent_warns_and_snapshots() -> Result<()> {
    let slot = VmSlot::reserve()?;
    let g = guest::busybox_guest()?;
    let btrfs = LoopBtrfs::new(512 * MIB)?;
    let dir = btrfs.path().join("vm");
    fs::create_dir(&dir)?;
    let disk0 = dir.join("disk0.img");
    make_image(&disk0, 64 * MIB, 8 * MIB, true)?;
    write_config(
        &dir,
        &format!(
            "VMK_NAME=noagent\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
             {vnc}VMK_MEM=256\nVMK_NET_TYPE=none\nVMK_KERNEL={}\nVMK_INITRD={}\n\
             VMK_APPEND=\"{}\"\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append,
            vnc = slot.config_line()
        ),
    )?;
    let mut vm = RunningVm::start(&dir, "disk0.img")?;
    guest::wait_for_file_line(
        &dir.join("disk0.img.console.log"),
        guest::BUSYBOX_READY,
        Duration::from_secs(120),
    )?;
    let socket = RuntimePaths::new(&dir, &disk0)?.qga_socket();
    ensure!(
        socket.exists(),
        "no guest agent socket at {}",
        socket.display()
    );

    let (out, err, took) = dsnap_freeze(&dir, &[])?;
    eprintln!("dsnap --freeze without an agent took {took:.2?}; it said:\n{err}");
    ensure!(
        err.contains("no guest agent answered") && err.contains("without freezing"),
        "no warning about the missing agent: {err}"
    );
    // a hang guard only (the agent sync gives up after 3 s; bench/timeouts.sh measures it)
    ensure!(
        took < Duration::from_secs(90),
        "took {took:?}: it waited for an agent that is not there"
    );
    let snap = PathBuf::from(stdout_line(&out));
    ensure!(snap == only_snapshot(&dir)?, "dsnap printed {snap:?}");
    ensure!(lsattr_has_c(&snap)?, "the snapshot is not NOCOW");
    ensure!(vm.is_running(), "qemu died");
    let said = vm.stop_with("kill")?;
    eprintln!("vmk-run kill: {said}");
    // the guest never writes disk0: the snapshot is a full reflink copy of it
    check_reflink_copy(&disk0, &snap, 8 * MIB)?;
    Ok(())
}

/// The guest's part of the UEFI variable test: says whether it booted through EFI, prints
/// the test variable's value, then replaces it with the word after `vmk.efitest=` on the
/// kernel command line (a non-volatile variable: attributes NV|BS|RT, then the text).
/// efivarfs makes variables that exist at boot immutable, and cannot seek in them.
const EFI_TEST_SCRIPT: &str = r#"#!/bin/sh
v=/sys/firmware/efi/efivars/VmkTest-3f8e4c2a-6b1d-4e55-9a0b-7c2d1e0f5a11
say() { echo "vmk-efitest: $*" > /dev/console; }
if [ -d /sys/firmware/efi ]; then say "efi yes"; else say "efi no"; fi
if [ -e "$v" ]; then say "read $(cat "$v" | tail -c +5)"; else say "read none"; fi
new=$(sed -n 's/.*vmk.efitest=\([a-z]*\).*/\1/p' /proc/cmdline)
chattr -i "$v" 2>/dev/null
rm -f "$v"
printf '\007\000\000\000%s' "$new" > "$v" && say "wrote $new"
sync
"#;

/// A UEFI VM of the Debian guest that runs [`EFI_TEST_SCRIPT`] once booted, then powers
/// off; the guest's kernel and initrd are copied into `dir` (a test cache entry may be
/// replaced while the test runs).
fn efi_config(g: &vmk_testguest::DebianGuest, dir: &Path, vnc: u8) -> Result<String> {
    fs::copy(&g.kernel, dir.join("vmlinuz")).context("copying the guest's kernel")?;
    fs::copy(&g.initrd, dir.join("initrd.img")).context("copying the guest's initrd")?;
    Ok(format!(
        "VMK_NAME=efi-test\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_DISK_BUS=virtio\n\
         VMK_ACCEL=tcg\nVMK_VNC={vnc}\nVMK_VNC_SOCKET=yes\nVMK_MEM=1024\nVMK_NET_TYPE=none\n\
         VMK_FIRMWARE=uefi\nVMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img\n"
    ))
}

/// Boots `image` of the VM in `dir` with `cmd` (`vmk-run run` or `vmk-snap run`) until the
/// guest's script has written `value` and powered off; returns the script's lines.
fn efi_test_boot(
    g: &vmk_testguest::DebianGuest,
    dir: &Path,
    mut cmd: Command,
    image: &str,
    value: &str,
) -> Result<Vec<String>> {
    let log = dir.join(format!("{image}.console.log"));
    let _ = fs::remove_file(&log);
    cmd.env(
        "VMK_APPEND",
        format!(
            "{} systemd.run=\"/bin/sh /root/efitest.sh\" systemd.run_success_action=poweroff \
             vmk.efitest={value}",
            g.append
        ),
    );
    let out = cmd.output().context("starting the UEFI guest")?;
    let mut guard = QemuGuard::from_pidfile(&dir.join(format!("{image}.pid")));
    ensure!(
        out.status.success(),
        "starting {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    if let Err(e) = guard
        .as_mut()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?
        .wait_exit(Duration::from_secs(400))
    {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        bail!(
            "{e}; console log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "{image} under UEFI (TCG): booted, ran the script and powered off in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_once("vmk-efitest: ")
                .map(|(_, r)| r.trim().to_string())
        })
        .collect())
}

/// [`debian_guest_on_btrfs`] with [`EFI_TEST_SCRIPT`] written into disk0 as
/// /root/efitest.sh (by debugfs, nothing mounted).
fn debian_guest_with_efi_test_script() -> Result<(vmk_testguest::DebianGuest, LoopBtrfs)> {
    let (g, btrfs) = debian_guest_on_btrfs()?;
    let dir = btrfs.path().join("vm");
    let script = dir.join("efitest.sh");
    fs::write(&script, EFI_TEST_SCRIPT)?;
    run_ok({
        let mut c = Command::new("debugfs");
        c.arg("-w")
            .arg("-R")
            .arg(format!("write {} /root/efitest.sh", script.display()))
            .arg(dir.join("disk0.img"));
        c
    })?;
    Ok((g, btrfs))
}

/// VMK_FIRMWARE=uefi: the first run makes disk0's variable store (NOCOW) and the guest
/// sees EFI; a variable the guest sets lives in the store, `dsnap` snapshots the store with
/// disk0 and `dsnap revert` brings its value back; `snap run` boots a copy of the store and
/// leaves disk0's unchanged.
fn uefi_variables_travel_with_disk0() -> Result<()> {
    let (g, btrfs) = debian_guest_with_efi_test_script()?;
    let dir = btrfs.path().join("vm");
    let slot = VmSlot::reserve()?;
    write_config(&dir, &efi_config(&g, &dir, slot.number())?)?;
    let vars = dir.join("disk0.img.efivars");

    let said = efi_test_boot(&g, &dir, vmk_run(&dir, &["run"])?, "disk0.img", "first")?;
    ensure!(
        said == ["efi yes", "read none", "wrote first"],
        "first boot: {said:?}"
    );
    ensure!(
        vars.is_file(),
        "no variable store {} after the first run",
        vars.display()
    );
    ensure!(lsattr_has_c(&vars)?, "the variable store is not NOCOW");

    let out = run_ok(vmk_snap(&dir, &["--base", "dsnap"]))?;
    let snap = PathBuf::from(stdout_line(&out));
    let snap_vars = PathBuf::from(format!("{}.efivars", snap.display()));
    ensure!(
        fs::read(&snap_vars)? == fs::read(&vars)?,
        "dsnap did not snapshot the variable store beside {}",
        snap.display()
    );

    let said = efi_test_boot(&g, &dir, vmk_run(&dir, &["run"])?, "disk0.img", "second")?;
    ensure!(
        said == ["efi yes", "read first", "wrote second"],
        "second boot: {said:?}"
    );

    let name = snap.file_name().unwrap().to_string_lossy().into_owned();
    run_ok(vmk_snap(&dir, &["--base", "dsnap", "revert", &name]))?;
    ensure!(
        fs::read(&vars)? == fs::read(&snap_vars)?,
        "revert did not restore the store"
    );
    let base = sha256(&vars)?;

    let said = efi_test_boot(
        &g,
        &dir,
        vmk_snap(&dir, &["run"]),
        "snap-disk0.img",
        "third",
    )?;
    ensure!(
        said == ["efi yes", "read first", "wrote third"],
        "snapshot VM after the revert: {said:?}"
    );
    ensure!(
        sha256(&vars)? == base,
        "snap run changed disk0's variable store"
    );
    ensure!(
        sha256(&dir.join("snap-disk0.img.efivars"))? != base,
        "the snapshot VM's variable change is not in its own store"
    );
    Ok(())
}

/// VMK_FIRMWARE=uefi-secure: OVMF's Secure Boot build with Microsoft's and Debian's keys
/// enrolled, direct kernel boot of Debian's signed kernel: the guest's kernel finds Secure
/// Boot enabled (its EFI stub and `secureboot:` lines, then it locks itself down).
fn uefi_secure_guest_reports_secure_boot() -> Result<()> {
    let (g, btrfs) = debian_guest_with_efi_test_script()?;
    let dir = btrfs.path().join("vm");
    let slot = VmSlot::reserve()?;
    let config = efi_config(&g, &dir, slot.number())?
        .replace("VMK_FIRMWARE=uefi\n", "VMK_FIRMWARE=uefi-secure\n");
    write_config(&dir, &config)?;
    let said = efi_test_boot(&g, &dir, vmk_run(&dir, &["run"])?, "disk0.img", "secure")?;
    ensure!(
        said.first().map(String::as_str) == Some("efi yes"),
        "the guest under uefi-secure: {said:?}"
    );
    let log = fs::read_to_string(dir.join("disk0.img.console.log"))?;
    ensure!(
        log.contains("secureboot: Secure boot enabled")
            && log.contains("EFI stub: UEFI Secure Boot is enabled"),
        "the guest's kernel does not report Secure Boot enabled"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let btrfs = &[Need::Root, Need::Btrfs, Need::Program("lsattr")];
    run_system_tests(vec![
        SystemTest::new(
            "dsnap_cpfile_fsnap_are_nocow_reflinks",
            btrfs,
            dsnap_cpfile_fsnap_are_nocow_reflinks,
        ),
        SystemTest::new(
            "killed_full_copy_leaves_no_destination",
            &[Need::Root],
            killed_full_copy_leaves_no_destination,
        ),
        SystemTest::new(
            "copy_into_full_filesystem_fails_cleanly",
            &[Need::Root],
            copy_into_full_filesystem_fails_cleanly,
        ),
        SystemTest::new(
            "snap_run_boots_the_snapshot_and_never_writes_disk0",
            &[
                Need::Root,
                Need::Btrfs,
                Need::Qemu,
                Need::Debootstrap,
                Need::Program("debugfs"),
            ],
            snap_run_boots_the_snapshot_and_never_writes_disk0,
        ),
        SystemTest::new(
            "snap_run_falls_back_to_a_qcow2_overlay_on_ext4",
            &[
                Need::Root,
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("qemu-img"),
            ],
            snap_run_falls_back_to_a_qcow2_overlay_on_ext4,
        ),
        SystemTest::new(
            "dsnap_freeze_through_the_guest_agent",
            &[
                Need::Root,
                Need::Btrfs,
                Need::Qemu,
                Need::Debootstrap,
                Need::Program("lsattr"),
                Need::Program("e2fsck"),
                Need::Program("dumpe2fs"),
            ],
            dsnap_freeze_through_the_guest_agent,
        ),
        SystemTest::new(
            "dsnap_freeze_without_an_agent_warns_and_snapshots",
            &[
                Need::Root,
                Need::Btrfs,
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("lsattr"),
            ],
            dsnap_freeze_without_an_agent_warns_and_snapshots,
        ),
        SystemTest::new(
            "uefi_variables_travel_with_disk0",
            &[
                Need::Root,
                Need::Btrfs,
                Need::Qemu,
                Need::Debootstrap,
                Need::Program("debugfs"),
                Need::Program("lsattr"),
                Need::File(OVMF_DESCRIPTOR, "ovmf"),
            ],
            uefi_variables_travel_with_disk0,
        ),
        SystemTest::new(
            "uefi_secure_guest_reports_secure_boot",
            &[
                Need::Root,
                Need::Btrfs,
                Need::Qemu,
                Need::Debootstrap,
                Need::Program("debugfs"),
                Need::File(
                    "/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json",
                    "ovmf",
                ),
            ],
            uefi_secure_guest_reports_secure_boot,
        ),
    ])
}
