//! System tests of vmk_common::state and vmk_common::qmp against real processes: a real
//! qemu (TCG, paused) and an unrelated `sleep` whose pid sits in a pidfile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vmk_common::qmp::{wait_for_socket, QmpCommandError};
use vmk_common::state::{
    clear_stale_pidfile, is_vm_qemu, kill_verified, status, write_pidfile, KillOutcome,
    RuntimePaths, VmStatus, KILL_SIGNALS,
};
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// Kills the child by its own pid (never by name) and reaps it, also on failure.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.0.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn escape_commas(p: &Path) -> String {
    p.to_str().expect("utf-8 test path").replace(',', ",,")
}

fn raw_image(path: &Path) -> Result<()> {
    fs::File::create(path)?.set_len(1 << 20)?;
    Ok(())
}

/// A paused qemu with `image` as a virtio disk and, optionally, a QMP socket.
fn start_qemu(image: &Path, qmp: Option<&Path>) -> Result<ChildGuard> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "accel=tcg",
        "-display",
        "none",
        "-nodefaults",
        "-S",
    ])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio",
        escape_commas(image)
    ));
    if let Some(sock) = qmp {
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", escape_commas(sock)));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    Ok(ChildGuard(
        cmd.spawn().context("starting qemu-system-x86_64")?,
    ))
}

fn sleep_in_pidfile_is_stale_and_never_signalled() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("disk0.raw");
    raw_image(&image)?;
    let mut sleep = ChildGuard(Command::new("sleep").arg("100").spawn()?);
    let paths = RuntimePaths::new(tmp.path(), Path::new("disk0.raw"))?;
    ensure!(status(&paths)? == VmStatus::Stopped);
    write_pidfile(&paths.pidfile, sleep.pid())?;
    ensure!(!is_vm_qemu(sleep.pid(), &image)?, "sleep taken for qemu");
    ensure!(status(&paths)? == VmStatus::Stale { pid: sleep.pid() });
    let out = kill_verified(
        sleep.pid(),
        &image,
        &KILL_SIGNALS,
        Duration::from_millis(50),
    )?;
    ensure!(out == KillOutcome::NotVerified, "{out:?}");
    ensure!(
        sleep.0.try_wait()?.is_none(),
        "kill_verified signalled an unrelated sleep"
    );
    ensure!(clear_stale_pidfile(&paths)? == Some(sleep.pid()));
    ensure!(!paths.pidfile.exists());
    ensure!(status(&paths)? == VmStatus::Stopped);
    ensure!(sleep.0.try_wait()?.is_none(), "sleep died");
    Ok(())
}

fn real_qemu_is_recognised_for_its_image_only() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // a comma and a space: qemu's doubled-comma escape must be undone
    let image = tmp.path().join("disk,0 a.raw");
    let other = tmp.path().join("disk,0");
    raw_image(&image)?;
    raw_image(&other)?;
    let mut qemu = start_qemu(&image, None)?;
    let pid = qemu.pid();
    ensure!(
        is_vm_qemu(pid, &image)?,
        "qemu not recognised for its image: cmdline {:?}",
        fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).into_owned())
    );
    ensure!(
        !is_vm_qemu(pid, &other)?,
        "qemu taken for another image's VM"
    );
    // the same image through another spelling of its path
    let dotted = tmp.path().join(".").join("disk,0 a.raw");
    ensure!(is_vm_qemu(pid, &dotted)?);
    let paths = RuntimePaths::new(tmp.path(), Path::new("disk,0 a.raw"))?;
    write_pidfile(&paths.pidfile, pid)?;
    ensure!(status(&paths)? == VmStatus::Running { pid });
    let other_paths = RuntimePaths::new(tmp.path(), Path::new("disk,0"))?;
    write_pidfile(&other_paths.pidfile, pid)?;
    ensure!(status(&other_paths)? == VmStatus::Stale { pid });
    // kill for the other image must not touch it
    let out = kill_verified(pid, &other, &KILL_SIGNALS, Duration::from_millis(50))?;
    ensure!(out == KillOutcome::NotVerified && qemu.0.try_wait()?.is_none());
    // a short interval so the test is quick; qemu stops on SIGINT
    let start = Instant::now();
    let out = kill_verified(pid, &image, &KILL_SIGNALS, Duration::from_secs(1));
    // qemu is our child: reap it so it does not linger as a zombie
    ensure!(qemu.wait_exit(Duration::from_secs(5))?, "qemu still runs");
    let out = out?;
    ensure!(matches!(out, KillOutcome::Exited { .. }), "{out:?}");
    eprintln!("qemu stopped by {out:?} in {:?}", start.elapsed());
    ensure!(status(&paths)? == VmStatus::Stale { pid });
    Ok(())
}

fn qmp_against_real_qemu_in_a_deep_dir() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut deep: PathBuf = tmp.path().to_path_buf();
    for _ in 0..4 {
        deep.push("d".repeat(50));
    }
    fs::create_dir_all(&deep)?;
    ensure!(deep.as_os_str().len() > 200);
    let paths = RuntimePaths::new(&deep, Path::new("disk0.raw"))?;
    ensure!(
        !paths.qmp_socket.starts_with(&deep),
        "{}",
        paths.qmp_socket.display()
    );
    ensure!(paths.qmp_socket.as_os_str().len() < 107);
    paths.prepare()?;
    raw_image(&paths.image)?;
    let _ = fs::remove_file(&paths.qmp_socket);
    let mut qemu = start_qemu(&paths.image, Some(&paths.qmp_socket))?;
    let result = (|| -> Result<()> {
        let start = Instant::now();
        let mut qmp = wait_for_socket(&paths.qmp_socket, Duration::from_secs(10))?;
        eprintln!("QMP answered after {:?}", start.elapsed());
        ensure!(qmp.greeting()["QMP"]["version"]["qemu"]["major"].is_u64());
        let (st, running) = qmp.query_status()?;
        ensure!(st == "prelaunch" && !running, "{st} {running}");
        qmp.execute("cont", None)?;
        let (st, running) = qmp.query_status()?;
        ensure!(st == "running" && running, "{st} {running}");
        let e = qmp.execute("no-such-command", None).unwrap_err();
        let ce = e
            .downcast_ref::<QmpCommandError>()
            .context("not a QmpCommandError")?;
        ensure!(ce.class == "CommandNotFound", "{ce:?}");
        qmp.execute("stop", None)?;
        ensure!(qmp.query_status()? == ("paused".to_string(), false));
        let name = qmp.execute("query-name", None)?;
        ensure!(name.is_object(), "{name}");
        qmp.quit()?;
        ensure!(
            qemu.wait_exit(Duration::from_secs(5))?,
            "qemu did not exit after quit"
        );
        Ok(())
    })();
    let _ = fs::remove_file(&paths.qmp_socket);
    result
}

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "sleep_in_pidfile_is_stale_and_never_signalled",
            &[Need::Program("sleep")],
            sleep_in_pidfile_is_stale_and_never_signalled,
        ),
        SystemTest::new(
            "real_qemu_is_recognised_for_its_image_only",
            &[Need::Qemu],
            real_qemu_is_recognised_for_its_image_only,
        ),
        SystemTest::new(
            "qmp_against_real_qemu_in_a_deep_dir",
            &[Need::Qemu],
            qmp_against_real_qemu_in_a_deep_dir,
        ),
    ])
}
