//! Test fixtures for vmk's real tests: requirements that skip loudly, loop-mounted btrfs,
//! guest images and guards that stop every qemu a test started.
//!
//! One skip mechanism; a test that did not run never reports "ok":
//! - Tests that need the system (root, qemu, btrfs, a guest) live in integration test
//!   binaries with `harness = false` and are run through [`run_system_tests`] with their
//!   [`Need`]s: a test whose needs are unmet prints `SKIPPED name: why` and is reported as
//!   *ignored*; run anyway (`cargo test -- --include-ignored` or `--ignored`) it *fails*.
//! - A part of a running test that needs more ([`can_run_part`]): skipped loudly
//!   (`SKIPPED part …`), a failure under `VMK_TEST_REQUIRE_ALL`.
//! - A plain `#[test]` that needs something (a unit test of a private function):
//!   [`require`] fails it when the need is unmet (a plain test cannot be ignored at run
//!   time).
//! - With `VMK_TEST_REQUIRE_ALL=1` (set by `.ci/run`) every skip, whole or partial, is a
//!   failure, so in CI everything runs.
//! - Never an early `return` that passes: `tests/no_silent_skips.rs` scans every test
//!   source and fails on one (a return that is no skip says `// not a skip: why`).
//!
//! Isolation ([`isolation`]): [`isolation::VmSlot::reserve`] gives a VM number (and its
//! VNC/serial/ssh ports) no other test holds, [`isolation::PortLease`] one TCP port,
//! [`isolation::TestEnv`] a private HOME and `XDG_RUNTIME_DIR` and `VMK_SYSTEM_CONFIG`
//! pointing at no file, for every vmk command a test runs. Write new tests with them;
//! older tests' fixed VM numbers (1–9, 40–99) lie outside the slots' range.
//!
//! Guards ([`qemu_guard`]): arm [`qemu_guard::PidfileGuard::arm`] before the command that
//! starts a daemonized qemu, then `into_guard()` for the [`qemu_guard::QemuGuard`] that
//! kills it on drop; a test that fails in between still kills its qemu.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};

pub mod btrfs;
pub mod guest;
pub mod images;
pub mod isolation;
pub mod libvirt;
pub mod on_interrupt;
pub mod qemu_guard;
pub mod terminal;

pub use libtest_mimic::Failed;

/// Something a system test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (loop devices, mounts).
    Root,
    /// `qemu-system-x86_64` on PATH.
    Qemu,
    /// `mkfs.btrfs` on PATH (and root to mount it).
    Btrfs,
    /// `debootstrap` on PATH (and root) to build the Debian guest.
    Debootstrap,
    /// A static busybox for the tiny initramfs guest.
    Busybox,
    /// A bootable kernel for direct boot (from /boot or the Debian guest).
    Kernel,
    /// `guestmount` (libguestfs).
    Guestmount,
    /// `ssh` and `ssh-keygen`.
    Ssh,
    /// Any other program on PATH, by name.
    Program(&'static str),
    /// A file that a system package installs: (path, package).
    File(&'static str, &'static str),
    /// qemu-user registered with binfmt_misc for an architecture (qemu's name, `aarch64`),
    /// so that its programs run here (`vmk bootstrap --arch`).
    Binfmt(&'static str),
    /// A binary of this workspace, built (see [`workspace_bin`]): cargo builds only the
    /// binaries of the package under test, `cargo test --workspace` builds them all.
    Built(&'static str),
}

impl Need {
    /// Whether a test with this need boots guests (then it waits for an
    /// [`isolation::GuestTurn`]).
    pub fn boots_guests(self) -> bool {
        match self {
            // guestmount boots libguestfs's appliance under qemu
            Need::Qemu | Need::Kernel | Need::Guestmount => true,
            Need::Program(p) => p.starts_with("qemu-system-"),
            _ => false,
        }
    }

    /// Why this need is not met here, or `None` when it is.
    pub fn unmet(self) -> Option<String> {
        match self {
            Need::Root => (!rustix::process::geteuid().is_root())
                .then(|| "needs root (loop devices and mounts)".to_string()),
            Need::Qemu => missing_program("qemu-system-x86_64"),
            Need::Btrfs => missing_program("mkfs.btrfs").or_else(|| Need::Root.unmet()),
            Need::Debootstrap => missing_program("debootstrap").or_else(|| Need::Root.unmet()),
            Need::Busybox => (!Path::new("/bin/busybox").exists()
                && !Path::new("/usr/bin/busybox").exists())
            .then(|| "needs busybox (apt-get install busybox-static)".to_string()),
            Need::Kernel => crate::find_host_kernel()
                .is_none()
                .then(|| "needs a kernel in /boot to boot guests directly".to_string()),
            Need::Guestmount => missing_program("guestmount"),
            Need::Ssh => missing_program("ssh").or_else(|| missing_program("ssh-keygen")),
            Need::Program(p) => missing_program(p),
            Need::File(path, package) => (!Path::new(path).exists())
                .then(|| format!("needs {path} (apt-get install {package})")),
            Need::Binfmt(arch) => {
                let entry = format!("/proc/sys/fs/binfmt_misc/qemu-{arch}");
                let enabled = std::fs::read_to_string(&entry)
                    .is_ok_and(|t| t.lines().next() == Some("enabled"));
                (!enabled).then(|| {
                    format!(
                        "needs qemu-user for {arch} in binfmt_misc ({entry}): apt-get install \
                         qemu-user-static binfmt-support"
                    )
                })
            }
            Need::Built(name) => (!workspace_bin(name).is_file()).then(|| {
                format!(
                    "needs {} built (cargo build --workspace --bins)",
                    workspace_bin(name).display()
                )
            }),
        }
    }
}

/// The `vm-config` the original vmk's `newconfig` wrote: a shell script of assignments
/// (VM number 63, disk0 `name.qcow2`, install medium `product-base.iso`).
pub const ORIGINAL_NEWCONFIG: &str = r#"#!/bin/sh
# vm-config made by the original vmk's newconfig
VMK_NAME="name"
VMK_TAG="product test VM"
export VMK_VNC=63
VMK_MEM=2048
VMK_CPU=2
VMK_DISK0="name.qcow2"
VMK_ISO="product-base.iso"
"#;

/// Where cargo puts the workspace's binary `name`: target/<profile>/, the parent of the
/// `deps/` directory that holds the running test.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    profile_dir.join(name)
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn missing_program(program: &str) -> Option<String> {
    which(program)
        .is_none()
        .then(|| format!("needs `{program}` on PATH"))
}

/// The newest kernel image in /boot readable by this user, if any.
pub fn find_host_kernel() -> Option<std::path::PathBuf> {
    let mut kernels: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
                && std::fs::File::open(p).is_ok()
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// True when missing requirements must fail instead of skip (CI).
pub fn require_all() -> bool {
    std::env::var_os("VMK_TEST_REQUIRE_ALL").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Whether a part of a running system test can run: `Ok(true)` when every need is met;
/// otherwise prints `SKIPPED part <part>: <why>` and gives `Ok(false)`, or fails under
/// `VMK_TEST_REQUIRE_ALL=1` (a partial skip is a skip too). Use it as
/// `if vmk_testkit::can_run_part("sshfs", &[Need::Program("sshfs")])? { … }`.
pub fn can_run_part(part: &str, needs: &[Need]) -> anyhow::Result<bool> {
    let unmet: Vec<String> = needs.iter().filter_map(|n| n.unmet()).collect();
    if unmet.is_empty() {
        return Ok(true);
    }
    let why = unmet.join(", ");
    ensure!(
        !require_all(),
        "part {part:?} cannot run ({why}) and VMK_TEST_REQUIRE_ALL is set"
    );
    eprintln!("SKIPPED part {part}: {why}");
    Ok(false)
}

/// For a plain `#[test]` (e.g. a unit test of a private function) that needs something
/// from the machine: panics, naming what is missing, unless every need is met. A plain
/// test cannot report itself as ignored once it runs, so it fails rather than pass without
/// having run; a test that may legitimately not run belongs in a system-test binary
/// ([`run_system_tests`]), where it is reported as ignored.
#[track_caller]
pub fn require(needs: &[Need]) {
    let unmet: Vec<String> = needs.iter().filter_map(|n| n.unmet()).collect();
    assert!(
        unmet.is_empty(),
        "SKIPPED (reported as a failure: a plain #[test] cannot be ignored at run time): {}",
        unmet.join(", ")
    );
}

/// One system test: a name, what it needs, and its body.
pub struct SystemTest {
    name: String,
    needs: Vec<Need>,
    body: Box<dyn FnOnce() -> anyhow::Result<()> + Send>,
}

impl std::fmt::Debug for SystemTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTest")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish()
    }
}

impl SystemTest {
    /// A test called `name` that needs `needs` and runs `body`.
    pub fn new(
        name: &str,
        needs: &[Need],
        body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) -> Self {
        SystemTest {
            name: name.to_string(),
            needs: needs.to_vec(),
            body: Box::new(body),
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP (Ctrl-C on `make test`, a CI timeout) the test binary
/// kills every qemu its live guards hold ([`qemu_guard::kill_all_guarded`]) before it
/// exits: daemonized qemus are in a session of their own and would outlive it.
fn reap_qemus_when_interrupted() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: no cleanup on interrupt (installing signal handlers: {e})");
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let killed = qemu_guard::kill_all_guarded();
            let undone = on_interrupt::run_all();
            eprintln!(
                "interrupted by signal {sig}: killed {killed} qemu this test binary started, \
                 undid {undone} fixtures (daemons, loop mounts)"
            );
            std::process::exit(128 + sig);
        }
    });
}

/// Runs system tests with libtest-mimic: unmet needs make a test ignored (with the reason
/// printed), or failed under `VMK_TEST_REQUIRE_ALL=1`. Call from a `harness = false` main.
pub fn run_system_tests(tests: Vec<SystemTest>) -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let strict = require_all();
    let trials = tests
        .into_iter()
        .map(|t| {
            let unmet: Vec<String> = t.needs.iter().filter_map(|n| n.unmet()).collect();
            let name = t.name.clone();
            if unmet.is_empty() {
                let body = t.body;
                let boots = t.needs.iter().any(|n| n.boots_guests());
                libtest_mimic::Trial::test(t.name, move || {
                    let _turn = match boots {
                        true => Some(isolation::GuestTurn::wait().map_err(|e| format!("{e:?}"))?),
                        false => None,
                    };
                    body().map_err(|e| Failed::from(with_disk_note(format!("{e:?}"))))
                })
            } else if strict {
                let why = unmet.join(", ");
                libtest_mimic::Trial::test(t.name, move || {
                    Err(format!("cannot run ({why}) and VMK_TEST_REQUIRE_ALL is set").into())
                })
            } else {
                let why = unmet.join(", ");
                eprintln!("SKIPPED {name}: {why}");
                // Ignored; and should it run anyway (`--include-ignored`, `--ignored`), it
                // fails: a test that did not run never reports "ok".
                libtest_mimic::Trial::test(t.name, move || {
                    Err(format!("SKIPPED: cannot run here ({why}); it did not run").into())
                })
                .with_ignored_flag(true)
            }
        })
        .collect();
    reap_qemus_when_interrupted();
    let conclusion = libtest_mimic::run(&args, trials);
    isolation::remove_shared_env();
    if conclusion.has_failed() {
        std::process::ExitCode::from(101)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Below this much free space in the temporary directory, a failed test says so: guest
/// tests copy images of gigabytes there, and a full disk fails them in ways that look like
/// bugs (a short copy, a truncated module).
const LOW_DISK: u64 = 2 << 30;

/// A failed test's message, with a note when the temporary directory's filesystem is
/// nearly full.
fn with_disk_note(message: String) -> String {
    let dir = std::env::temp_dir();
    let free = rustix::fs::statvfs(&dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize));
    match free {
        Ok(free) if free < LOW_DISK => format!(
            "{message}\n(only {} MiB are free in {}: a full disk may be the cause)",
            free >> 20,
            dir.display()
        ),
        _ => message,
    }
}

/// Writes an executable file (mode 0755) without this process ever holding it open for
/// writing: a `cat` child writes it. Tests run in threads; when one thread forks while
/// another holds a freshly written executable open, running that file fails with "Text
/// file busy" (ETXTBSY). Writing through a child process closes that race.
pub fn write_executable(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sh")
        .args(["-c", r#"cat > "$1" && chmod 0755 "$1""#, "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(contents.as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "writing {} failed: {status}",
        path.display()
    );
    Ok(())
}

/// Makes a new passphrase-less ed25519 key pair at `path` and `path.pub` (a VM's `vm-key`,
/// a test sshd's keys).
pub fn ssh_keygen(path: &Path) -> anyhow::Result<()> {
    let mut c = std::process::Command::new("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path);
    run_ok(c).map(drop)
}

/// Runs `cmd` and returns its output; fails, with its status and stderr, unless it succeeds.
pub fn run_ok(mut cmd: std::process::Command) -> anyhow::Result<std::process::Output> {
    use anyhow::Context;
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Copies an executable (e.g. a real program under a `qemu-…` name) without this process
/// ever holding the copy open for writing: `cp` does it, for the reason given at
/// [`write_executable`].
pub fn copy_executable(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("cp")
        .arg(src)
        .arg(dst)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "cp {} {} failed: {status}",
        src.display(),
        dst.display()
    );
    Ok(())
}

/// Runs `cmd` in a guest as root over ssh (key `key`, forwarded `port` on 127.0.0.1) until
/// it succeeds or `timeout` passes, retrying every second; returns its stdout. No user
/// ssh config, no host-key checks (a throwaway test guest), never a password prompt.
pub fn ssh_until_ok(
    key: &Path,
    port: u16,
    cmd: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-p"])
            .arg(port.to_string())
            .arg("root@127.0.0.1")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .output()
            .context("running ssh")?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "ssh to the guest failed for {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// What the kernel says of a process in `/proc/PID/status`, read once: how tests check
/// qemu's user, sandbox, pending signals and state with no word of vmk's.
#[derive(Debug)]
pub struct ProcStatus(String);

impl ProcStatus {
    /// The status of process `pid`; `None` once it is gone (reaped).
    pub fn read(pid: i32) -> Option<ProcStatus> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .map(ProcStatus)
    }

    /// The value of field `name` (`Uid`, `State`, `ShdPnd`…), trimmed.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.0.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    }
}

/// Waits for `child` and collects its output; kills it after `timeout` (a hang guard).
/// Its output must be piped, or small: what it writes is read only once it has exited.
pub fn wait_output(
    mut child: std::process::Child,
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running after {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child.wait_with_output()?)
}

/// qemu under TCG with no defaults, the serial console in `log`, a QMP socket `qmp`.
pub fn tcg_qemu(log: &Path, qmp: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-machine",
        "q35,accel=tcg",
        "-display",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp.display()))
    .stdin(Stdio::null());
    cmd
}

/// Sends QMP commands (after the capabilities handshake), reading one answer each.
pub fn qmp_execute(socket: &Path, commands: &[&str]) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to QMP at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    for cmd in ["qmp_capabilities"].iter().chain(commands) {
        writeln!(&stream, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            ensure!(!line.is_empty(), "QMP closed the connection");
            if line.contains("\"return\"") {
                break;
            }
            ensure!(!line.contains("\"error\""), "QMP {cmd}: {line}");
        }
    }
    Ok(())
}
