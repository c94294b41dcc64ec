//! System tests of vmk_common::state and vmk_common::qmp against real processes: a real
//! qemu (TCG, paused) and an unrelated `sleep` whose pid sits in a pidfile. Then what a
//! hostile VM directory, another local user or a lax umask can do: planted symlinks at the
//! runtime files, foreign or writable VM directories and config files, a runtime directory
//! made by another user, and the modes of what vmk (and its qemu) create under umask 000.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vmk_common::config::{self, trust, LoadOptions};
use vmk_common::qmp::{wait_for_socket, QmpCommandError};
use vmk_common::state::{
    clear_stale_pidfile, is_vm_qemu, kill_verified, status, write_pidfile, KillOutcome,
    RuntimePaths, VmStatus, KILL_SIGNALS,
};
use vmk_testkit::isolation::{as_nobody, NOBODY};
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

/// A file outside the VM directory that planted links point at.
struct Canary {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

const CANARY_TEXT: &str = "precious data, not vmk's\n";

impl Canary {
    fn new() -> Result<Canary> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("canary");
        fs::write(&path, CANARY_TEXT)?;
        Ok(Canary { _dir: dir, path })
    }

    fn check(&self) -> Result<()> {
        let text = fs::read_to_string(&self.path)?;
        ensure!(text == CANARY_TEXT, "the canary was changed: {text:?}");
        Ok(())
    }
}

fn mode_of(p: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::symlink_metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

fn chmod(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn chown_nobody(p: &Path) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY))
        .with_context(|| format!("chown 65534 {}", p.display()))
}

fn planted_symlinks_at_runtime_files_are_never_followed() -> Result<()> {
    use vmk_common::state::open_console_log;
    let canary = Canary::new()?;
    let vm = tempfile::tempdir()?;
    let paths = RuntimePaths::new(vm.path(), Path::new("disk0.raw"))?;
    // the pidfile: qemu would open it (following a link) and truncate the target
    std::os::unix::fs::symlink(&canary.path, &paths.pidfile)?;
    let err = format!("{:#}", paths.prepare().unwrap_err());
    ensure!(
        err.contains("refusing to use the pidfile")
            && err.contains(&paths.pidfile.display().to_string())
            && err.contains("a symbolic link")
            && err.contains(&canary.path.display().to_string()),
        "unclear refusal: {err}"
    );
    canary.check()?;
    // write_pidfile replaces a planted link, never writes through it
    write_pidfile(&paths.pidfile, 4242)?;
    canary.check()?;
    ensure!(fs::symlink_metadata(&paths.pidfile)?.is_file());
    ensure!(fs::read_to_string(&paths.pidfile)? == "4242\n");
    ensure!(mode_of(&paths.pidfile)? == 0o600);
    fs::remove_file(&paths.pidfile)?;
    // the console log: a link to the canary, then a dangling link
    std::os::unix::fs::symlink(&canary.path, &paths.console_log)?;
    let err = format!("{:#}", paths.prepare().unwrap_err());
    ensure!(
        err.contains("refusing to use the console log") && err.contains("a symbolic link"),
        "unclear refusal: {err}"
    );
    canary.check()?;
    fs::remove_file(&paths.console_log)?;
    let absent = vm.path().join("..").join("vmk-test-must-not-appear");
    std::os::unix::fs::symlink(&absent, &paths.console_log)?;
    ensure!(paths.prepare().is_err());
    ensure!(!absent.exists(), "a dangling link was followed");
    fs::remove_file(&paths.console_log)?;
    // a FIFO: refused at once, not waited on
    ensure!(Command::new("mkfifo")
        .arg(&paths.console_log)
        .status()?
        .success());
    let err = format!("{:#}", open_console_log(&paths.console_log).unwrap_err());
    ensure!(err.contains("a special file"), "{err}");
    fs::remove_file(&paths.console_log)?;
    // a regular console log of ours that others could read is made private; a new one is
    fs::write(&paths.console_log, "old boot\n")?;
    chmod(&paths.console_log, 0o644)?;
    paths.prepare()?;
    ensure!(mode_of(&paths.console_log)? == 0o600);
    ensure!(
        fs::read_to_string(&paths.console_log)? == "old boot\n",
        "log truncated"
    );
    fs::remove_file(&paths.console_log)?;
    paths.prepare()?;
    ensure!(mode_of(&paths.console_log)? == 0o600);
    canary.check()
}

fn load_dir(dir: &Path, user_file: Option<PathBuf>) -> Result<String> {
    let opts = LoadOptions {
        dir: Some(dir.to_path_buf()),
        system_file: Some(dir.join("no-system-file")),
        user_file,
        env: false,
        ..LoadOptions::default()
    };
    match config::load(&opts) {
        Ok(_) => Ok(String::new()),
        Err(e) => Ok(e.to_string()),
    }
}

fn untrusted_vm_directories_and_config_files_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let vm = tmp.path().join("vm");
    fs::create_dir(&vm)?;
    fs::write(vm.join("vm-config"), "VMK_MEM=1G\n")?;
    chmod(&vm.join("vm-config"), 0o644)?;
    ensure!(load_dir(&vm, None)?.is_empty(), "{}", load_dir(&vm, None)?);
    let shown = vm.display().to_string();
    // a VM directory of another user
    chown_nobody(&vm)?;
    let err = load_dir(&vm, None)?;
    ensure!(
        err.contains(&shown)
            && err.contains("refusing this VM directory")
            && err.contains("uid 65534")
            && err.contains(&format!("chown root {shown}")),
        "unclear refusal: {err}"
    );
    // writable by a shared group (nogroup, not root's private group), by others
    std::os::unix::fs::lchown(&vm, Some(0), Some(65534))?;
    for (mode, who) in [
        (0o770, "its group"),
        (0o757, "every user"),
        (0o1777, "its group and every user"),
    ] {
        chmod(&vm, mode)?;
        let err = load_dir(&vm, None)?;
        ensure!(
            err.contains(&shown)
                && err.contains(who)
                && err.contains(&format!("mode {mode:04o}"))
                && err.contains(&format!("chmod go-w {shown}")),
            "unclear refusal for mode {mode:o}: {err}"
        );
    }
    // root's own private group may write (umask 002 with user private groups)
    std::os::unix::fs::lchown(&vm, Some(0), Some(0))?;
    chmod(&vm, 0o775)?;
    ensure!(load_dir(&vm, None)?.is_empty(), "{}", load_dir(&vm, None)?);
    chmod(&vm, 0o755)?;
    ensure!(load_dir(&vm, None)?.is_empty());
    // the config files in it: another user's, or writable by others
    for name in ["vm-config", "vmkrc"] {
        let f = vm.join(name);
        fs::write(&f, "VMK_MEM=2G\n")?;
        chown_nobody(&f)?;
        let err = load_dir(&vm, None)?;
        ensure!(
            err.contains(name) && err.contains("uid 65534") && err.contains("chown root"),
            "{name}: {err}"
        );
        std::os::unix::fs::lchown(&f, Some(0), Some(0))?;
        chmod(&f, 0o666)?;
        let err = load_dir(&vm, None)?;
        ensure!(
            err.contains(name) && err.contains("chmod go-w"),
            "{name}: {err}"
        );
        chmod(&f, 0o600)?;
    }
    ensure!(load_dir(&vm, None)?.is_empty());
    // ~/.vmkrc of another user (a HOME kept by sudo)
    let rc = tmp.path().join(".vmkrc");
    fs::write(&rc, "VMK_QEMU=/tmp/evil\n")?;
    chown_nobody(&rc)?;
    let err = load_dir(&vm, Some(rc.clone()))?;
    ensure!(err.contains(".vmkrc") && err.contains("uid 65534"), "{err}");
    // the system-wide file must be root's, even for its owner
    let meta = fs::metadata(&rc)?;
    let e = trust::check(
        &rc,
        "/etc/vmk-config",
        &meta,
        trust::Trusted::SystemFile,
        NOBODY,
    )
    .unwrap_err()
    .to_string();
    ensure!(
        e.contains("/etc/vmk-config") && e.contains("chown root"),
        "{e}"
    );
    ensure!(trust::check(&rc, "x", &meta, trust::Trusted::ConfigFile, NOBODY).is_ok());
    // and a tool says so, exit status 2, before anything runs
    fs::write(
        vm.join("vm-config"),
        "VMK_DISK0=disk0.raw\nVMK_QEMU=/bin/false\n",
    )?;
    chown_nobody(&vm.join("vm-config"))?;
    let env = vmk_testkit::isolation::TestEnv::new()?;
    let out = env
        .command(vmk_testkit::workspace_bin("vmk-run"))
        .args(["-D", "run"])
        .current_dir(&vm)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && stderr.contains("refusing this config file"),
        "vmk-run run in an untrusted directory: {:?} {stderr}",
        out.status
    );
    Ok(())
}

fn runtime_dir_of_another_user_is_refused() -> Result<()> {
    use vmk_common::state::{check_private_dir, ensure_private_dir};
    let base = tempfile::tempdir()?;
    chmod(base.path(), 0o777)?; // like /tmp without the sticky bit: nobody may create in it
    let rt = base.path().join("vmk-0");
    // another user made it first, open to everyone
    ensure!(as_nobody("mkdir")
        .args(["-m", "0777"])
        .arg(&rt)
        .status()?
        .success());
    let err = format!("{:#}", ensure_private_dir(&rt).unwrap_err());
    ensure!(
        err.contains(&rt.display().to_string()) && err.contains("belongs to uid 65534"),
        "unclear refusal: {err}"
    );
    ensure!(
        mode_of(&rt)? == 0o777,
        "vmk changed another user's directory"
    );
    let err = format!("{:#}", check_private_dir(&rt).unwrap_err());
    ensure!(err.contains("uid 65534"), "{err}");
    // the socket directory of a deep VM, and `vmk ps`, refuse it too and write nothing
    let env = vmk_testkit::isolation::TestEnv::new()?;
    let ps = || {
        env.command(vmk_testkit::workspace_bin("vmk-run"))
            .arg("ps")
            .env("XDG_RUNTIME_DIR", base.path())
            .output()
    };
    let out = ps()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // XDG_RUNTIME_DIR=base: the runtime dir is base/vmk, also made by nobody
    ensure!(
        !out.status.success() || !base.path().join("vmk").exists(),
        "{stderr}"
    );
    let theirs = base.path().join("vmk");
    ensure!(as_nobody("mkdir")
        .args(["-m", "0755"])
        .arg(&theirs)
        .status()?
        .success());
    let out = ps()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains("belongs to uid 65534"),
        "vmk ps with a foreign runtime dir: {:?} {stderr}",
        out.status
    );
    ensure!(
        fs::read_dir(&theirs)?.count() == 0,
        "something was written there"
    );
    ensure!(
        fs::read_dir(&rt)?.count() == 0,
        "something was written there"
    );
    // a symlink to a directory of ours is refused as well
    let ours = base.path().join("ours");
    fs::create_dir(&ours)?;
    let link = base.path().join("vmk-link");
    std::os::unix::fs::symlink(&ours, &link)?;
    let err = format!("{:#}", ensure_private_dir(&link).unwrap_err());
    ensure!(err.contains("a symbolic link"), "{err}");
    // a file there
    let file = base.path().join("vmk-file");
    fs::write(&file, "")?;
    ensure!(ensure_private_dir(&file).is_err());
    // a shared (sticky) directory of ours is refused, not made private
    let shared = base.path().join("shared");
    fs::create_dir(&shared)?;
    chmod(&shared, 0o1777)?;
    let err = format!("{:#}", ensure_private_dir(&shared).unwrap_err());
    ensure!(err.contains("shared directory"), "{err}");
    ensure!(mode_of(&shared)? == 0o1777);
    // ours but too open: made 0700; a missing one: made 0700
    let wide = base.path().join("wide");
    fs::create_dir(&wide)?;
    chmod(&wide, 0o755)?;
    ensure_private_dir(&wide)?;
    ensure!(mode_of(&wide)? == 0o700);
    let new = base.path().join("new").join("vmk");
    ensure_private_dir(&new)?;
    ensure!(mode_of(&new)? == 0o700);
    Ok(())
}

/// A raw disk the BIOS finds nothing to boot on: qemu runs (and waits) all the same.
fn lax_umask_still_gives_private_files() -> Result<()> {
    use std::os::unix::net::UnixStream;
    use vmk_testkit::isolation::{TestEnv, VmSlot};
    use vmk_testkit::qemu_guard::PidfileGuard;
    let tmp = tempfile::tempdir()?;
    let env = TestEnv::new()?;
    let slot = VmSlot::reserve()?;
    let vm = tmp.path().join("vm");
    fs::create_dir(&vm)?;
    chmod(tmp.path(), 0o755)?;
    chmod(&vm, 0o755)?; // nobody may look in: only the files' own modes protect them
    fs::write(
        vm.join("vm-config"),
        format!(
            "VMK_NAME=umask\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n{}\
             VMK_NET_TYPE=none\nVMK_MEM=64\n",
            slot.config_line()
        ),
    )?;
    chmod(&vm.join("vm-config"), 0o644)?;
    raw_image(&vm.join("disk0.raw"))?;
    let bin = vmk_testkit::workspace_bin("vmk-run");
    let paths = RuntimePaths::new(&vm, Path::new("disk0.raw"))?;
    let guard = PidfileGuard::arm(&paths.pidfile);
    let out = env
        .command("sh")
        .args(["-c", r#"umask 000; exec "$0" run"#])
        .arg(&bin)
        .current_dir(&vm)
        .env("VMK_RUNNING_DIR", tmp.path().join("running"))
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "vmk run: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut guard = guard.into_guard()?;
    let result = (|| -> Result<()> {
        for (p, want) in [
            (&paths.qmp_socket, 0o600),
            (&paths.console_log, 0o600),
            (&paths.pidfile, 0o600),
            (&tmp.path().join("running"), 0o700),
        ] {
            let got = mode_of(p)?;
            if p == &paths.qmp_socket {
                // `-daemonize` makes qemu's own umask 027: no write (connect) for the group
                ensure!(got & 0o027 == 0, "{} has mode {got:04o}", p.display());
            } else {
                ensure!(got == want, "{} has mode {got:04o}", p.display());
            }
        }
        let entries: Vec<_> = fs::read_dir(tmp.path().join("running"))?
            .flatten()
            .collect();
        ensure!(entries.len() == 1, "one `vmk ps` record");
        ensure!(mode_of(&entries[0].path())? == 0o600);
        // nobody can neither drive qemu nor read the console; a socket open to all (the
        // control) shows that nobody's connect attempt itself works
        let python = "/usr/bin/python3";
        ensure!(
            Path::new(python).exists(),
            "needs {python} to connect as nobody"
        );
        let control = vm.join("control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&control)?;
        chmod(&control, 0o777)?;
        let connect = |sock: &Path| -> Result<std::process::Output> {
            Ok(as_nobody(python)
                .args([
                    "-c",
                    "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                ])
                .arg(sock)
                .output()?)
        };
        let o = connect(&control)?;
        ensure!(
            o.status.success(),
            "control: nobody cannot connect to an open socket: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = connect(&paths.qmp_socket)?;
        ensure!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "nobody connected to the QMP socket: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let log = paths.console_log.display().to_string();
        let o = as_nobody("cat").arg(&log).output()?;
        ensure!(!o.status.success(), "nobody read the console log");
        ensure!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
        // we can: the socket answers
        ensure!(UnixStream::connect(&paths.qmp_socket).is_ok());
        Ok(())
    })();
    let killed = env
        .command(&bin)
        .arg("kill")
        .current_dir(&vm)
        .env("VMK_RUNNING_DIR", tmp.path().join("running"))
        .output()?;
    result?;
    ensure!(
        killed.status.success() && !guard.is_running(),
        "vmk kill: {killed:?}"
    );
    Ok(())
}

/// Images vmk creates and copies are private, whatever the source's mode or the umask.
fn new_and_copied_images_are_private() -> Result<()> {
    use vmk_common::copy::{copy_file, CopyMode};
    use vmk_common::fileops::create_nocow_file;
    let tmp = tempfile::tempdir()?;
    let img = tmp.path().join("disk0.img");
    create_nocow_file(&img, 1 << 20)?;
    ensure!(mode_of(&img)? == 0o600, "new image {:04o}", mode_of(&img)?);
    let old = tmp.path().join("old.img");
    raw_image(&old)?;
    chmod(&old, 0o644)?;
    let copy = copy_file(
        &old,
        &tmp.path().join("copy.img"),
        CopyMode {
            force: false,
            full_copy: true,
        },
    )?;
    ensure!(
        mode_of(&copy.dst)? == 0o600,
        "copy {:04o}",
        mode_of(&copy.dst)?
    );
    // a planted link at a new image's name is not followed
    let canary = Canary::new()?;
    let planted = tmp.path().join("disk1");
    std::os::unix::fs::symlink(&canary.path, &planted)?;
    ensure!(create_nocow_file(&planted, 1 << 20).is_err());
    canary.check()
}

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "planted_symlinks_at_runtime_files_are_never_followed",
            &[Need::Program("mkfifo")],
            planted_symlinks_at_runtime_files_are_never_followed,
        ),
        SystemTest::new(
            "untrusted_vm_directories_and_config_files_are_refused",
            &[Need::Root, Need::Built("vmk-run")],
            untrusted_vm_directories_and_config_files_are_refused,
        ),
        SystemTest::new(
            "runtime_dir_of_another_user_is_refused",
            &[Need::Root, Need::Program("setpriv"), Need::Built("vmk-run")],
            runtime_dir_of_another_user_is_refused,
        ),
        SystemTest::new(
            "lax_umask_still_gives_private_files",
            &[
                Need::Root,
                Need::Qemu,
                Need::Program("setpriv"),
                Need::Built("vmk-run"),
            ],
            lax_umask_still_gives_private_files,
        ),
        SystemTest::new(
            "new_and_copied_images_are_private",
            &[],
            new_and_copied_images_are_private,
        ),
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
