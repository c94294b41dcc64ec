//! System tests of the developer's loop on the real Debian guest (TCG, user networking, the
//! VM's key as a systemd credential): `snap run --exec CMD` passes stdin, stdout and stderr
//! through and exits with CMD's status, leaves no qemu and no snapshot behind and never
//! writes disk0; SIGTERM while CMD runs ends the VM and exits 143; host folders shared
//! with VMK_SHARE are mounted at /mnt/TAG with nothing configured in the guest, read-write
//! (the guest's file appears on the host) or read-only (writes refused), whatever commas
//! and spaces their paths hold.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vmk_common::fileops::create_nocow_file;
use vmk_common::state::qemu_pids_using;
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::images::sha256;
use vmk_testkit::isolation::{PortLease, TestEnv, VmSlot};
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_ok, run_system_tests, wait_output, Need, SystemTest};

const GIB: u64 = 1 << 30;
/// Generous: a TCG guest on a busy 2-core host took 60 s to its sshd.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// A VM directory on its own loop-mounted btrfs holding a NOCOW copy of the Debian guest,
/// its kernel and initrd (`vmlinuz`, `initrd.img`: copies, so a fixture rebuilt meanwhile
/// does not pull them away), a key pair, and a config for user networking on a reserved
/// VM number.
struct DevVm {
    btrfs: LoopBtrfs,
    slot: VmSlot,
    env: TestEnv,
}

impl DevVm {
    /// The VM as `vmk bootstrap` configures it (its kernel, initrd, VMK_APPEND and the
    /// one-shot init VMK_EXEC_INIT), with `extra` at the end of its config.
    fn new(extra: &str) -> Result<DevVm> {
        let g = vmk_testguest::debian_guest()?;
        Self::with_config(&format!(
            "VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img\nVMK_APPEND=\"{}\"\n\
             VMK_EXEC_INIT={}\n{extra}",
            g.append, g.exec_init
        ))
    }

    /// The VM with `extra` as the end of its config (no kernel unless `extra` names one).
    fn with_config(extra: &str) -> Result<DevVm> {
        let g = vmk_testguest::debian_guest()?;
        let btrfs = LoopBtrfs::new(6 * GIB)?;
        let vm = DevVm {
            btrfs,
            slot: VmSlot::reserve()?,
            env: TestEnv::new()?,
        };
        let dir = vm.dir();
        fs::create_dir(&dir)?;
        ensure!(create_nocow_file(&vm.disk0(), 0)?, "no NOCOW on btrfs?");
        g.copy_image(&vm.disk0())?;
        fs::copy(&g.kernel, dir.join("vmlinuz"))?;
        fs::copy(&g.initrd, dir.join("initrd.img"))?;
        vmk_testkit::ssh_keygen(&dir.join("vm-key"))?;
        let cfg = format!(
            "VMK_NAME=devloop\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
             {}VMK_MEM=1024\n{extra}",
            vm.slot.config_line(),
        );
        fs::write(dir.join("vm-config"), cfg)?;
        Ok(vm)
    }

    fn dir(&self) -> PathBuf {
        self.btrfs.path().join("vm")
    }

    fn disk0(&self) -> PathBuf {
        self.dir().join("disk0.img")
    }

    fn snap(&self) -> PathBuf {
        self.dir().join("snap-disk0.img")
    }

    fn vmk_snap(&self, args: &[&str]) -> Command {
        self.vmk(Path::new(env!("CARGO_BIN_EXE_vmk-snap")), args)
    }

    /// `program` (a vmk tool) with `args` in the VM directory and the test's environment.
    fn vmk(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir()).args(args);
        self.env.apply(&mut c);
        c
    }

    /// `vmk-snap run --exec CMD` with `stdin`, its output once it exited (killed after
    /// [`HANG_GUARD`]).
    fn snap_exec(&self, cmd: &str, stdin: &[u8]) -> Result<Output> {
        run_exec(self.vmk_snap(&["-v", "run", "--exec", cmd]), stdin)
    }

    /// Fails when anything of the snapshot VM is left: a qemu on either image, the pidfile,
    /// the snapshot itself.
    fn nothing_left(&self) -> Result<()> {
        for image in [self.snap(), self.disk0()] {
            let pids = qemu_pids_using(&image)?;
            ensure!(
                pids.is_empty(),
                "qemu {pids:?} still uses {}",
                image.display()
            );
        }
        let pidfile = self.dir().join("snap-disk0.img.pid");
        ensure!(!pidfile.exists(), "{} is left", pidfile.display());
        ensure!(!self.snap().exists(), "snap-disk0.img is left");
        Ok(())
    }

    /// Fails when a virtiofsd of this test's runtime directory runs (every VM of the test
    /// has its sockets there), or a virtiofsd socket or pidfile of its is left.
    fn no_virtiofsd_left(&self) -> Result<()> {
        let runtime = self.env.runtime_dir();
        let running = self.env.virtiofsds()?;
        ensure!(
            running.is_empty(),
            "virtiofsds of the test still run: {running:?}"
        );
        let left: Vec<PathBuf> = fs::read_dir(runtime.join("vmk"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().contains(".fs"))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            left.iter().all(|p| p.to_string_lossy().ends_with(".log")),
            "virtiofsd files left: {left:?}"
        );
        // nor the lock files qemu's virtiofsd leaves (named after the socket's path)
        let prefix = vmk_common::virtiofsd::lock_file(&runtime)
            .to_string_lossy()
            .trim_end_matches(".pid")
            .to_string();
        let locks: Vec<PathBuf> = fs::read_dir(vmk_common::virtiofsd::LOCK_DIR)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(locks.is_empty(), "virtiofsd lock files left: {locks:?}");
        Ok(())
    }
}

impl Drop for DevVm {
    /// Whatever a failed test left running on the VM's images dies with it (pids verified
    /// to be qemu processes using those images).
    fn drop(&mut self) {
        for image in [self.snap(), self.disk0()] {
            for pid in qemu_pids_using(&image).unwrap_or_default() {
                if let Ok(g) = QemuGuard::from_pid(pid as i32) {
                    drop(g);
                }
            }
        }
    }
}

/// Runs `c` (a `run --exec CMD`) with `stdin`, its output once it exited (killed after
/// [`HANG_GUARD`]).
fn run_exec(mut c: Command, stdin: &[u8]) -> Result<Output> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    let out = wait_output(child, HANG_GUARD)?;
    eprintln!(
        "$ {:?} {:?}\n  -> {:?}\n  stdout: {}\n  stderr: {}",
        c.get_program(),
        c.get_args().collect::<Vec<_>>(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn exec_passes_io_and_status_and_leaves_nothing() -> Result<()> {
    let vm = DevVm::new("")?;
    let before = sha256(&vm.disk0())?;
    let out = vm.snap_exec(
        "cat; echo out-marker; uname -n; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         echo err-marker >&2; exit 7",
        b"from-host-stdin\n",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(7), "exit status {:?}", out.status);
    ensure!(
        stdout.starts_with("from-host-stdin\nout-marker\n"),
        "stdout: {stdout:?}"
    );
    ensure!(
        stdout.contains(&format!(
            "\n/bin/sh {} \n",
            vmk_testguest::debian_guest()?.exec_init
        )),
        "PID 1 is not the one-shot init: {stdout:?}"
    );
    ensure!(stderr.contains("err-marker"), "stderr: {stderr:?}");
    ensure!(!stdout.contains("err-marker"), "stderr went to stdout");
    vm.nothing_left()?;
    ensure!(sha256(&vm.disk0())? == before, "disk0 changed");
    Ok(())
}

fn exec_interrupted_by_sigterm_ends_the_vm() -> Result<()> {
    exec_interrupted_by(nix::sys::signal::Signal::SIGTERM)
}

/// Ctrl-C on a terminal: SIGINT to vmk (the terminal sends it to ssh as well).
fn exec_interrupted_by_sigint_ends_the_vm() -> Result<()> {
    exec_interrupted_by(nix::sys::signal::Signal::SIGINT)
}

/// `snap run --exec` of a command that runs until stopped, `signal` to vmk once the command
/// printed its first line: vmk exits 128 + the signal's number and leaves nothing.
fn exec_interrupted_by(signal: nix::sys::signal::Signal) -> Result<()> {
    let vm = DevVm::new("")?;
    let mut child = vm
        .vmk_snap(&["run", "--exec", "echo running; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
    ensure!(first == "running\n", "first line {first:?}");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal)?;
    let out = wait_output(child, Duration::from_secs(60))?;
    ensure!(
        out.status.code() == Some(128 + signal as i32),
        "exit status after {signal}: {:?}",
        out.status
    );
    vm.nothing_left()
}

fn exec_without_sshd_fails_with_exit_1() -> Result<()> {
    // The guest's kernel powers off at once (no init to run): qemu exits, no sshd ever.
    let vm = DevVm::new("")?;
    let append = vmk_testguest::debian_guest()?.append;
    let cfg = fs::read_to_string(vm.dir().join("vm-config"))?;
    let dying = cfg.replace(&append, &format!("{append} init=/bin/false panic=-1"));
    ensure!(
        dying != cfg,
        "the guest's kernel line is not in its vm-config: {cfg}"
    );
    fs::write(
        vm.dir().join("vm-config"),
        dying + "VMK_EXTRA_ARGS=-no-reboot\n",
    )?;
    let out = vm.snap_exec("true", b"")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit status {:?}", out.status);
    ensure!(
        stderr.contains("never answered") && stderr.contains("exited before"),
        "stderr: {stderr}"
    );
    vm.nothing_left()
}

/// The host folders of the shares test: a read-write one with a marker, a read-only one,
/// and a read-write one whose name has a space and a comma (no option for qemu or
/// virtiofsd).
struct ShareDirs {
    _host: tempfile::TempDir,
    src: PathBuf,
    data: PathBuf,
    odd: PathBuf,
}

impl ShareDirs {
    fn new() -> Result<ShareDirs> {
        let host = tempfile::Builder::new().prefix("vmk-share").tempdir()?;
        let src = host.path().join("src");
        let data = host.path().join("data");
        let odd = host.path().join("my src,readonly=on");
        for d in [&src, &data, &odd] {
            fs::create_dir(d)?;
        }
        fs::write(src.join("marker"), "marker-from-host\n")?;
        fs::write(data.join("ro-file"), "read-only-data\n")?;
        fs::write(odd.join("odd"), "odd-path-ok\n")?;
        Ok(ShareDirs {
            _host: host,
            src,
            data,
            odd,
        })
    }

    fn config(&self, share_fs: &str) -> String {
        format!(
            "VMK_SHARE=\"'{}' '{}:data:ro' '{}:odd'\"\nVMK_SHARE_FS={share_fs}\n",
            self.src.display(),
            self.data.display(),
            self.odd.display()
        )
    }
}

/// The shares of [`ShareDirs`] with VMK_SHARE_FS=`share_fs`: the read-write ones reach the
/// guest over `rw_fs` (its /proc/mounts type), the read-only one always over 9p; `info`
/// says so; the guest reads the marker, its file appears on the host, the read-only share
/// refuses writes; nothing of the VM is left (qemu, snapshot, virtiofsd, their sockets).
fn shares_mounted_at_mnt_tag_over(share_fs: &str, rw_fs: &str) -> Result<()> {
    let dirs = ShareDirs::new()?;
    let vm = DevVm::new(&dirs.config(share_fs))?;
    let info = run_ok(vm.vmk_snap(&["info"]))?;
    let info = String::from_utf8_lossy(&info.stdout);
    ensure!(
        info.contains(
            "mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro data /mnt/data"
        ),
        "info: {info}"
    );
    // the read-only share: virtio-9p, because it is read-only (or as VMK_SHARE_FS=9p says)
    let (rw_transport, ro_reason) = if rw_fs == "virtiofs" {
        ("virtiofs: virtiofsd ", "read-only")
    } else {
        ("virtio-9p: VMK_SHARE_FS=9p", "VMK_SHARE_FS=9p")
    };
    ensure!(
        info.contains(&format!("(rw, tag src, {rw_transport}"))
            && info.contains(&format!("(rw, tag odd, {rw_transport}"))
            && info.contains(&format!("(ro, tag data, virtio-9p: {ro_reason}")),
        "info names {rw_transport:?} for the read-write shares: {info}"
    );
    let json = run_ok(vm.vmk_snap(&["info", "--json"]))?;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let transports: Vec<&str> = json["shares"]
        .as_array()
        .context("shares in info --json")?
        .iter()
        .map(|s| s["transport"].as_str().unwrap_or(""))
        .collect();
    let rw_name = if rw_fs == "virtiofs" {
        "virtiofs"
    } else {
        "virtio-9p"
    };
    ensure!(
        transports == [rw_name, "virtio-9p", rw_name],
        "info --json transports: {transports:?}"
    );
    let dry = run_ok(vm.vmk_snap(&["-D", "run"]))?;
    let dry_err = String::from_utf8_lossy(&dry.stderr);
    ensure!(
        dry_err.contains(&format!("share src: {rw_name} ("))
            && dry_err.contains(&format!("share data: virtio-9p ({ro_reason}")),
        "-D names each share's transport: {dry_err}"
    );
    let out = vm.snap_exec(
        "cat /mnt/src/marker /mnt/data/ro-file /mnt/odd/odd; \
         echo written-by-guest > /mnt/src/from-guest; \
         if echo x > /mnt/data/nope; then echo RO-WRITABLE; else echo ro-refused; fi; \
         if echo x > /mnt/odd/rw; then echo odd-writable; fi; \
         while read -r _ m t _; do case $m in /mnt/*) echo \"$m $t\" ;; esac; done < /proc/mounts",
        b"",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "exit status {:?}", out.status);
    let mut mounts: Vec<&str> = stdout.lines().skip(5).collect();
    mounts.sort();
    ensure!(
        stdout.starts_with(
            "marker-from-host\nread-only-data\nodd-path-ok\nro-refused\nodd-writable\n"
        ) && mounts
            == [
                "/mnt/data 9p".to_string(),
                format!("/mnt/odd {rw_fs}"),
                format!("/mnt/src {rw_fs}"),
            ],
        "stdout: {stdout:?}"
    );
    ensure!(
        fs::read_to_string(dirs.src.join("from-guest"))? == "written-by-guest\n",
        "the guest's file is not on the host"
    );
    ensure!(
        !dirs.data.join("nope").exists(),
        "the read-only share was written"
    );
    ensure!(
        dirs.odd.join("rw").exists(),
        "the odd path's share was not written"
    );
    vm.nothing_left()?;
    vm.no_virtiofsd_left()
}

fn shares_over_virtio_9p_are_mounted_at_mnt_tag() -> Result<()> {
    shares_mounted_at_mnt_tag_over("9p", "9p")
}

fn shares_over_virtiofs_are_mounted_at_mnt_tag() -> Result<()> {
    shares_mounted_at_mnt_tag_over("virtiofs", "virtiofs")?;
    // under systemd too: vmk-shares.service finds the tags in the SMBIOS string
    let dirs = ShareDirs::new()?;
    // a program run from the share (mapped from it: cache=none keeps private mappings)
    fs::copy("/bin/true", dirs.src.join("host-true"))?;
    let vm = DevVm::new(&dirs.config("virtiofs"))?;
    let out = full_boot_exec(
        &vm,
        "cat /proc/1/comm /mnt/src/marker; echo from-systemd > /mnt/odd/sd; \
         systemctl is-active vmk-shares.service; /mnt/src/host-true && echo ran-from-share; \
         if mknod /mnt/src/hostdisk b 8 0; then echo MKNOD-WORKED; else echo mknod-refused; fi",
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "exit status {:?}", out.status);
    ensure!(
        stdout == "systemd\nmarker-from-host\nactive\nran-from-share\nmknod-refused\n",
        "stdout: {stdout:?}"
    );
    ensure!(fs::read_to_string(dirs.odd.join("sd"))? == "from-systemd\n");
    ensure!(
        !dirs.src.join("hostdisk").exists(),
        "the guest made a device node in the share"
    );
    vm.nothing_left()?;
    vm.no_virtiofsd_left()
}

/// A virtiofsd runs exactly as long as its qemu: none is left when qemu fails to start;
/// while the VM runs (`snap run` in the background, vmk gone), one per read-write share,
/// sandboxed, its socket private; `snap kill` leaves none, nor their sockets.
fn virtiofsd_lives_with_its_qemu_only() -> Result<()> {
    let dirs = ShareDirs::new()?;
    let vm = DevVm::new(&format!(
        "{}VMK_EXTRA_ARGS=-no-such-qemu-option\n",
        dirs.config("virtiofs")
    ))?;
    let failed = vm.vmk_snap(&["-v", "run"]).output()?;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    ensure!(
        !failed.status.success() && stderr.contains("no-such-qemu-option"),
        "qemu should fail to start: {stderr}"
    );
    ensure!(
        stderr.matches("sending SIGTERM to virtiofsd pid").count() == 2,
        "{stderr}"
    );
    vm.no_virtiofsd_left()?;
    let cfg = vm.dir().join("vm-config");
    let text = fs::read_to_string(&cfg)?.replace("VMK_EXTRA_ARGS=-no-such-qemu-option\n", "");
    fs::write(&cfg, text)?;
    run_ok(vm.vmk_snap(&["run"]))?;
    let running = vm.env.virtiofsds()?;
    let kill = || run_ok(vm.vmk_snap(&["kill"]));
    let checked = (|| -> Result<()> {
        // a sandboxed parent and its child in the new namespaces, per share
        let parents: Vec<_> = running
            .iter()
            .filter(|(_, argv)| argv.iter().any(|a| a == "sandbox=namespace"))
            .collect();
        ensure!(running.len() >= 2, "virtiofsds: {running:?}");
        for (pid, argv) in parents {
            let socket = argv[1].strip_prefix("--socket-path=").context("socket")?;
            let mode = fs::metadata(socket)?.permissions().mode();
            ensure!(
                mode & 0o077 == 0,
                "virtiofsd {pid}'s socket {socket} has mode {mode:o}"
            );
            ensure!(argv.iter().any(|a| a == "no_xattr"), "{argv:?}");
        }
        Ok(())
    })();
    kill()?;
    checked?;
    fs::remove_file(vm.snap())?; // `snap kill` keeps the copy
    vm.nothing_left()?;
    vm.no_virtiofsd_left()
}

/// Mounts disk0 (a raw ext4 image) at `mnt` for the closure, unmounting after.
fn with_disk0_mounted<T>(vm: &DevVm, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let mnt = vm.btrfs.path().join("mnt-disk0");
    fs::create_dir_all(&mnt)?;
    run_ok({
        let mut c = Command::new("mount");
        c.args(["-o", "loop"]).arg(vm.disk0()).arg(&mnt);
        c
    })?;
    let result = f(&mnt);
    let umount = run_ok({
        let mut c = Command::new("umount");
        c.arg("-d").arg(&mnt);
        c
    });
    let value = result?;
    umount?;
    Ok(value)
}

fn kernel_and_modules_from_the_host_for_one_boot() -> Result<()> {
    // No kernel in the config: --kernel/--initrd/--append give it for this boot only.
    let vm = DevVm::with_config("")?;
    let host = tempfile::Builder::new().prefix("vmk-kernel").tempdir()?;
    let modules = host.path().join("modules-install");
    fs::create_dir_all(modules.join("lib"))?;
    // The guest's own modules, copied out as `make modules_install INSTALL_MOD_PATH=`
    // lays them out; disk0 keeps an empty /lib/modules.
    with_disk0_mounted(&vm, |mnt| {
        run_ok({
            let mut c = Command::new("cp");
            c.arg("-a")
                .arg(mnt.join("usr/lib/modules"))
                .arg(modules.join("lib/modules"));
            c
        })?;
        run_ok({
            let mut c = Command::new("find");
            c.arg(mnt.join("usr/lib/modules"))
                .args(["-mindepth", "1", "-delete"]);
            c
        })?;
        Ok(())
    })?;
    let dir = vm.dir();
    let kernel = host.path().join("bzImage");
    fs::copy(dir.join("vmlinuz"), &kernel)?;
    fs::remove_file(dir.join("vmlinuz"))?;
    let (kernel, initrd, modules) = (
        kernel.to_string_lossy().into_owned(),
        dir.join("initrd.img").to_string_lossy().into_owned(),
        modules.to_string_lossy().into_owned(),
    );
    let append = vmk_testguest::debian_guest()?.append;
    let mut child = vm
        .vmk_snap(&[
            "-v",
            "run",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            &format!("{append} vmk.test=one-boot"),
            "--modules",
            &modules,
            "--exec",
            "grep -o vmk.test=one-boot /proc/cmdline; \
             grep -c '^vmk-modules /usr/lib/modules 9p ' /proc/mounts; \
             ! grep -q '^isofs ' /proc/modules && modprobe isofs && grep -o '^isofs ' /proc/modules",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let _ = child.stdin.take();
    let out = wait_output(child, HANG_GUARD)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "exit status {:?}", out.status);
    ensure!(
        stdout == "vmk.test=one-boot\n1\nisofs \n",
        "stdout: {stdout:?}"
    );
    // the image itself never had those modules
    let empty = with_disk0_mounted(&vm, |mnt| {
        Ok(fs::read_dir(mnt.join("usr/lib/modules"))?.next().is_none())
    })?;
    ensure!(empty, "disk0's /lib/modules is not empty");
    vm.nothing_left()
}

fn ports_forward_to_a_real_listener_and_clashes_are_refused() -> Result<()> {
    let lease = PortLease::reserve()?;
    let port = lease.port();
    let vm = DevVm::new(&format!("VMK_PORTS=\"{port}:22\"\n"))?;
    let info = String::from_utf8_lossy(&run_ok(vm.vmk_snap(&["info"]))?.stdout).into_owned();
    ensure!(
        info.contains(&format!("127.0.0.1:{port} → guest 22 (tcp)")),
        "info: {info}"
    );
    // the guest's sshd is the listener; the command waits for a line on stdin
    let mut child = vm
        .vmk_snap(&["run", "--exec", "echo ready; read line; echo got-$line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    ensure!(first == "ready\n", "first line {first:?}");
    let mut banner = [0u8; 4];
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    std::io::Read::read_exact(&mut conn, &mut banner)?;
    ensure!(&banner == b"SSH-", "forwarded port answered {banner:?}");
    // another VM asking for the same host port is refused before its qemu starts
    let other = tempfile::Builder::new().prefix("vmk-other").tempdir()?;
    let other_slot = VmSlot::reserve()?;
    fs::write(other.path().join("disk0.img"), vec![0u8; 1 << 20])?;
    fs::write(
        other.path().join("vm-config"),
        format!(
            "VMK_NAME=other\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n{}\
             VMK_PORTS={port}:80\n",
            other_slot.config_line()
        ),
    )?;
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmk-snap"));
    c.current_dir(other.path()).arg("run");
    vm.env.apply(&mut c);
    let refused = c.output()?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        refused.status.code() == Some(1),
        "status {:?}: {err}",
        refused.status
    );
    ensure!(
        err.contains(&format!("other: VMK_PORTS {port}:80: tcp port {port}"))
            && err.contains("by the VM devloop (VMK_PORTS")
            && err.contains(&vm.dir().display().to_string()),
        "{err}"
    );
    ensure!(
        qemu_pids_using(&other.path().join("snap-disk0.img"))?.is_empty(),
        "the other VM's qemu started"
    );
    child.stdin.take().context("stdin")?.write_all(b"done\n")?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest)?;
    let out = wait_output(child, HANG_GUARD)?;
    ensure!(out.status.success(), "exit status {:?}", out.status);
    ensure!(rest == "got-done\n", "stdout {rest:?}");
    vm.nothing_left()
}

/// `snap run --full-boot --exec CMD` (systemd boots).
fn full_boot_exec(vm: &DevVm, cmd: &str) -> Result<Output> {
    run_exec(
        vm.vmk_snap(&["-v", "run", "--full-boot", "--exec", cmd]),
        b"",
    )
}

fn full_boot_runs_systemd_for_exec() -> Result<()> {
    let vm = DevVm::new("")?;
    let out = full_boot_exec(
        &vm,
        &format!("cat /proc/1/comm; systemctl is-active ssh.service; {SETUP_SECTS}; exit 3"),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.code() == Some(3), "exit status {:?}", out.status);
    // booted as the bzImage (not one-shot: no PVH): its setup header reached the kernel
    let sects = stdout
        .strip_prefix("systemd\nactive\nsetup_sects=")
        .and_then(|n| n.trim_end().parse::<u8>().ok());
    ensure!(sects.is_some_and(|n| n > 0), "stdout: {stdout:?}");
    vm.nothing_left()
}

/// A guest command printing `setup_sects=N`: the bzImage setup header's size as the kernel
/// got it in its boot parameters (`/sys/kernel/boot_params/data`, offset 0x1f1). The boot
/// loader (qemu's linuxboot) copies it from a bzImage; a PVH entry has no setup header and
/// the kernel fills in a zeroed one.
const SETUP_SECTS: &str =
    "echo setup_sects=$(od -An -tu1 -j 497 -N1 /sys/kernel/boot_params/data | tr -d ' ')";

fn run_exec_on_disk0_powers_off_and_exits_with_the_status() -> Result<()> {
    let vm = DevVm::new("")?;
    let cache = tempfile::Builder::new().prefix("vmk-cache").tempdir()?;
    let mut vmk_run = vm.vmk(
        &vmk_testkit::workspace_bin("vmk-run"),
        &[
            "-v",
            "run",
            "--exec",
            &format!(
                "echo on-disk0 > /root/exec-marker; tr '\\0' ' ' < /proc/1/cmdline; echo; \
                 {SETUP_SECTS}; exit 5"
            ),
        ],
    );
    vmk_run.env("XDG_CACHE_HOME", cache.path());
    let out = run_exec(vmk_run, b"")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(5), "exit status {:?}", out.status);
    // the one-shot init, on the bzImage's ELF (PVH): no setup header reached the kernel
    ensure!(
        stdout.contains("exec-init") && stdout.ends_with("\nsetup_sects=0\n"),
        "stdout: {stdout:?}"
    );
    // ...unpacked into the user's cache
    let cached: Vec<PathBuf> = fs::read_dir(cache.path().join("vmk/kernels"))
        .context("no kernel cache")?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    ensure!(
        cached.len() == 1
            && cached[0].extension().is_some_and(|e| e == "elf")
            && fs::read(&cached[0])?.starts_with(b"\x7fELF"),
        "the kernel cache holds {cached:?}"
    );
    // powered off by the guest (the one-shot init's power button), not killed: vmk says so,
    // and the guest's kernel said so on its console
    ensure!(
        stderr.contains("PoweredOff"),
        "the VM was not powered off: {stderr}"
    );
    let console = fs::read_to_string(vm.dir().join("disk0.img.console.log"))?;
    ensure!(
        console.contains("reboot: Power down"),
        "no power-off on the guest's console:\n{console}"
    );
    let pids = qemu_pids_using(&vm.disk0())?;
    ensure!(pids.is_empty(), "qemu {pids:?} still uses disk0");
    let pidfile = vm.dir().join("disk0.img.pid");
    ensure!(!pidfile.exists(), "{} is left", pidfile.display());
    // disk0 itself was booted: the command's file is on it, and it is clean
    let marker = with_disk0_mounted(&vm, |mnt| {
        Ok(fs::read_to_string(mnt.join("root/exec-marker"))?)
    })?;
    ensure!(marker == "on-disk0\n", "marker {marker:?}");
    run_ok({
        let mut c = Command::new("e2fsck");
        c.arg("-fn").arg(vm.disk0());
        c
    })?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let needs: &[Need] = &[
        Need::Root,
        Need::Btrfs,
        Need::Qemu,
        Need::Debootstrap,
        Need::Ssh,
    ];
    // qemu's virtiofsd where Debian 12 ships it (the one vmk drives)
    let virtiofs_needs: &[Need] = &[
        Need::Root,
        Need::Btrfs,
        Need::Qemu,
        Need::Debootstrap,
        Need::Ssh,
        Need::File("/usr/lib/qemu/virtiofsd", "qemu-system-common"),
    ];
    run_system_tests(vec![
        SystemTest::new(
            "exec_passes_io_and_status_and_leaves_nothing",
            needs,
            exec_passes_io_and_status_and_leaves_nothing,
        ),
        SystemTest::new(
            "exec_interrupted_by_sigterm_ends_the_vm",
            needs,
            exec_interrupted_by_sigterm_ends_the_vm,
        ),
        SystemTest::new(
            "exec_interrupted_by_sigint_ends_the_vm",
            needs,
            exec_interrupted_by_sigint_ends_the_vm,
        ),
        SystemTest::new(
            "shares_over_virtio_9p_are_mounted_at_mnt_tag",
            needs,
            shares_over_virtio_9p_are_mounted_at_mnt_tag,
        ),
        SystemTest::new(
            "shares_over_virtiofs_are_mounted_at_mnt_tag",
            virtiofs_needs,
            shares_over_virtiofs_are_mounted_at_mnt_tag,
        ),
        SystemTest::new(
            "virtiofsd_lives_with_its_qemu_only",
            virtiofs_needs,
            virtiofsd_lives_with_its_qemu_only,
        ),
        SystemTest::new(
            "kernel_and_modules_from_the_host_for_one_boot",
            needs,
            kernel_and_modules_from_the_host_for_one_boot,
        ),
        SystemTest::new(
            "ports_forward_to_a_real_listener_and_clashes_are_refused",
            needs,
            ports_forward_to_a_real_listener_and_clashes_are_refused,
        ),
        SystemTest::new(
            "exec_without_sshd_fails_with_exit_1",
            needs,
            exec_without_sshd_fails_with_exit_1,
        ),
        SystemTest::new(
            "full_boot_runs_systemd_for_exec",
            needs,
            full_boot_runs_systemd_for_exec,
        ),
        SystemTest::new(
            "run_exec_on_disk0_powers_off_and_exits_with_the_status",
            &[
                Need::Root,
                Need::Btrfs,
                Need::Qemu,
                Need::Debootstrap,
                Need::Ssh,
                Need::Built("vmk-run"),
            ],
            run_exec_on_disk0_powers_off_and_exits_with_the_status,
        ),
    ])
}
