//! Tests that share nothing with the machine or with each other: VM numbers and ports that
//! are reserved while a test holds them, and commands that read no config, home or runtime
//! directory of the machine's.
//!
//! - [`VmSlot::reserve`] hands out a VM number (`VMK_VNC`) from [`SLOT_NUMBERS`] that no
//!   other test (of this binary, another test binary, another checkout) holds: each number
//!   is an exclusive `flock` on `/tmp/vmk-test-locks/vm-N.lock`, held until the slot is
//!   dropped. A number is taken only when its ports (VNC 5900+N, serial console and ssh at
//!   the default bases + N, on 127.0.0.1) are free, so a developer's running VM keeps its
//!   number. All those ports lie below the kernel's ephemeral range (32768–60999), so no
//!   unrelated connection is handed one of them between the check and qemu's bind: the
//!   lock is the reservation.
//! - [`PortLease::reserve`] does the same for one TCP port from [`LEASE_PORTS`] (for
//!   servers a test starts itself, or a `VMK_SSH_BASE` of its own).
//! - [`GuestTurn::wait`] lets at most [`guest_turns`] tests that boot guests run at once on
//!   the machine (every test process): guests under TCG are CPU-bound, so more of them than
//!   cores only make each slower, until hang guards fire (`--test-threads 8` on 2 cores
//!   booted 8 Debian guests at once: logins after 230–250 s, one past its 300 s guard).
//!   The other tests still run as parallel as `--test-threads` says.
//! - [`TestEnv`] is a private HOME, a private `XDG_RUNTIME_DIR` (so sockets and the
//!   registry `vmk ps` reads go there, never to `/run/vmk`), and `VMK_SYSTEM_CONFIG`
//!   pointing at a file that does not exist (the config loader reads it instead of
//!   `/etc/vmk-config`); [`TestEnv::apply`] puts that on a `Command` and removes every
//!   inherited `VMK_*` variable except `VMK_ACCEL` (the one fact tests take from the
//!   machine: KVM or TCG) and the harness's own `VMK_TEST_*`.
//!
//! Fixed VM numbers that older tests still write (1–9, 40–99) are outside
//! [`SLOT_NUMBERS`], so a slot never collides with them.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The VM numbers [`VmSlot::reserve`] hands out.
pub const SLOT_NUMBERS: std::ops::RangeInclusive<u8> = 10..=39;
/// The ports [`PortLease::reserve`] hands out (below the ephemeral range).
pub const LEASE_PORTS: std::ops::RangeInclusive<u16> = 21000..=21999;
/// `VMK_TELNET_BASE`'s default (vmk-config(5)).
pub const DEFAULT_TELNET_BASE: u16 = 9990;
/// `VMK_SSH_BASE`'s default (vmk-config(5)).
pub const DEFAULT_SSH_BASE: u16 = 10020;
/// The environment variable the config loader reads instead of `/etc/vmk-config`.
pub const SYSTEM_CONFIG_VAR: &str = "VMK_SYSTEM_CONFIG";

/// Where the reservation locks live: shared by every test process on the machine.
fn lock_dir() -> Result<PathBuf> {
    let dir = PathBuf::from("/tmp/vmk-test-locks");
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // other users' tests lock here too (sticky, like /tmp)
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    Ok(dir)
}

/// An exclusive lock on `<lock_dir>/<name>.lock` if nobody holds it, else `None`.
fn try_lock(name: &str) -> Result<Option<nix::fcntl::Flock<File>>> {
    let path = lock_dir()?.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| File::open(&path))
        .with_context(|| format!("opening {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// True when nothing listens on 127.0.0.1:`port` (nor on every address).
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Where to start scanning a range of `len`: differs between processes and calls, so
/// parallel tests rarely try the same number first.
fn start_offset(len: usize) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    (std::process::id() as usize)
        .wrapping_mul(7)
        .wrapping_add(calls)
        % len.max(1)
}

/// The first of `candidates` (tried from a varying start) that nobody has locked as
/// `<kind>-<candidate>` and whose `ports` are all free, with its lock held.
fn reserve_first<T: Copy + std::fmt::Display>(
    kind: &str,
    candidates: &[T],
    ports: impl Fn(T) -> Vec<u16>,
) -> Result<Option<(T, nix::fcntl::Flock<File>)>> {
    let start = start_offset(candidates.len());
    for i in 0..candidates.len() {
        let c = candidates[(start + i) % candidates.len()];
        let Some(lock) = try_lock(&format!("{kind}-{c}"))? else {
            continue;
        };
        if ports(c).into_iter().all(port_free) {
            return Ok(Some((c, lock)));
        }
    }
    Ok(None)
}

/// A VM number reserved for this test until dropped. See the module doc.
#[derive(Debug)]
pub struct VmSlot {
    number: u8,
    _lock: nix::fcntl::Flock<File>,
}

impl VmSlot {
    /// Reserves a free VM number from [`SLOT_NUMBERS`]; fails when all are taken.
    pub fn reserve() -> Result<VmSlot> {
        let numbers: Vec<u8> = SLOT_NUMBERS.collect();
        let ports = |n: u8| {
            let n = u16::from(n);
            vec![5900 + n, DEFAULT_TELNET_BASE + n, DEFAULT_SSH_BASE + n]
        };
        match reserve_first("vm", &numbers, ports)? {
            Some((number, lock)) => Ok(VmSlot {
                number,
                _lock: lock,
            }),
            None => bail!(
                "no free VM number in {SLOT_NUMBERS:?}: other tests hold them or their ports are in use"
            ),
        }
    }

    /// The VM number (`VMK_VNC`).
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The VNC port, 5900 + N.
    pub fn vnc_port(&self) -> u16 {
        5900 + u16::from(self.number)
    }

    /// The serial console's TCP port at the default `VMK_TELNET_BASE`.
    pub fn telnet_port(&self) -> u16 {
        DEFAULT_TELNET_BASE + u16::from(self.number)
    }

    /// The forwarded ssh port at the default `VMK_SSH_BASE`.
    pub fn ssh_port(&self) -> u16 {
        DEFAULT_SSH_BASE + u16::from(self.number)
    }

    /// Every port the VM may bind with default bases.
    pub fn ports(&self) -> [u16; 3] {
        [self.vnc_port(), self.telnet_port(), self.ssh_port()]
    }

    /// The vm-config line that gives the VM this number: `VMK_VNC=N\n`.
    pub fn config_line(&self) -> String {
        format!("VMK_VNC={}\n", self.number)
    }
}

/// How many tests that boot guests run at once on this machine: `VMK_TEST_GUESTS`, else the
/// number of CPUs.
pub fn guest_turns() -> usize {
    std::env::var("VMK_TEST_GUESTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// One of the [`guest_turns`] turns to boot guests, held until dropped. See the module doc.
#[derive(Debug)]
pub struct GuestTurn {
    _lock: nix::fcntl::Flock<File>,
}

impl GuestTurn {
    /// Waits for a free turn (as long as it takes: the tests before it have their own hang
    /// guards, and its own start once it has the turn).
    pub fn wait() -> Result<GuestTurn> {
        GuestTurn::wait_in("guest-turn", guest_turns())
    }

    /// A turn of the pool `pool` of `turns` turns.
    fn wait_in(pool: &str, turns: usize) -> Result<GuestTurn> {
        let turns: Vec<usize> = (0..turns).collect();
        loop {
            if let Some((_, lock)) = reserve_first(pool, &turns, |_| Vec::new())? {
                return Ok(GuestTurn { _lock: lock });
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A test's VM directory: a temporary directory on a VM number reserved for the test, with
/// a private environment ([`TestEnv::inside`]) in it; removed when dropped.
#[derive(Debug)]
pub struct VmDir {
    env: TestEnv,
    _slot: VmSlot,
    dir: tempfile::TempDir,
}

impl VmDir {
    /// Runs `make` in the new directory (to put the disks there), then writes its vm-config:
    /// `config` and the reserved number's line.
    pub fn new(config: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<VmDir> {
        let dir = tempfile::tempdir()?;
        let slot = VmSlot::reserve()?;
        make(dir.path())?;
        let vm_config = dir.path().join("vm-config");
        std::fs::write(&vm_config, format!("{config}{}", slot.config_line()))
            .with_context(|| format!("writing {}", vm_config.display()))?;
        let env = TestEnv::inside(dir.path())?;
        Ok(VmDir {
            env,
            _slot: slot,
            dir,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Its private environment.
    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    /// Runs the workspace binary `program` with `args` in the directory and its environment,
    /// logged ([`TestEnv::run_logged`]).
    pub fn run(&self, program: &str, args: &[&str]) -> Result<std::process::Output> {
        self.env.run_logged(program, self.path(), args, None)
    }
}

/// One TCP port reserved for this test until dropped. See the module doc.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: nix::fcntl::Flock<File>,
}

impl PortLease {
    /// Reserves a free port from [`LEASE_PORTS`].
    pub fn reserve() -> Result<PortLease> {
        let ports: Vec<u16> = LEASE_PORTS.collect();
        match reserve_first("port", &ports, |p| vec![p])? {
            Some((port, lock)) => Ok(PortLease { port, _lock: lock }),
            None => bail!("no free port in {LEASE_PORTS:?}"),
        }
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The uid and gid of `nobody`: the other local user of tests that check what a second user
/// can and cannot do.
pub const NOBODY: u32 = 65534;

/// A command that runs `program` as [`NOBODY`] (uid and gid, no supplementary groups)
/// through `setpriv`; the test runs as root and needs `Need::Program("setpriv")`.
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(program);
    c
}

/// A private HOME, runtime directory and (absent) system config for the commands a test
/// runs. See the module doc.
#[derive(Debug)]
pub struct TestEnv {
    root: PathBuf,
    /// Set when the environment owns its directory (removed on drop).
    _owned: Option<tempfile::TempDir>,
}

impl TestEnv {
    /// Makes the directories in a temporary directory of their own (under /tmp: the
    /// runtime dir's path must stay short for unix sockets), removed when dropped.
    pub fn new() -> Result<TestEnv> {
        let dir = tempfile::Builder::new()
            .prefix("vmk-env-")
            .tempdir_in("/tmp")
            .context("creating a test environment directory")?;
        Self::make_dirs(dir.path())?;
        Ok(TestEnv {
            root: dir.path().to_path_buf(),
            _owned: Some(dir),
        })
    }

    /// Makes (or reuses) the directories in `<dir>/.vmk-env`, e.g. inside a test's own
    /// temporary directory, which removes them with itself. `dir`'s path must be short
    /// (a tempdir under /tmp is): unix socket paths in the runtime dir are limited.
    pub fn inside(dir: &Path) -> Result<TestEnv> {
        let root = dir.join(".vmk-env");
        if !root.is_dir() {
            std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        }
        Self::make_dirs(&root)?;
        Ok(TestEnv { root, _owned: None })
    }

    fn make_dirs(root: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for sub in ["home", "run"] {
            let p = root.join(sub);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                // made already (by another test of this process racing for the shared env)
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// The private HOME (empty: no `~/.vmkrc`, no `~/.ssh`).
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// The private `XDG_RUNTIME_DIR` (vmk uses `<it>/vmk`).
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The virtiofsd processes of VMs run in this environment (their `--socket-path=` is in
    /// its runtime directory): each as (pid, argv).
    pub fn virtiofsds(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut socket_arg = b"--socket-path=".to_vec();
        socket_arg.extend_from_slice(self.runtime_dir().as_os_str().as_encoded_bytes());
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if argv.iter().any(|a| a.starts_with(&socket_arg)) {
                found.push((
                    e.file_name().to_string_lossy().into_owned(),
                    argv.iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect(),
                ));
            }
        }
        Ok(found)
    }

    /// What `VMK_SYSTEM_CONFIG` names: a file that does not exist unless the test writes
    /// it (a test of the system-wide file may).
    pub fn system_config(&self) -> PathBuf {
        self.root.join("vmk-config")
    }

    /// The environment's variables, as (name, value) pairs, for callers that do not hold
    /// a `std::process::Command` (e.g. `assert_cmd`: `cmd.envs(env.vars())`, after
    /// removing inherited `VMK_*` with [`inherited_vmk_vars`]).
    pub fn vars(&self) -> Vec<(String, PathBuf)> {
        vec![
            ("HOME".into(), self.home()),
            ("XDG_RUNTIME_DIR".into(), self.runtime_dir()),
            (SYSTEM_CONFIG_VAR.into(), self.system_config()),
        ]
    }

    /// Puts the environment on `cmd` and removes the `VMK_*` variables it would inherit
    /// (except `VMK_ACCEL` and `VMK_TEST_*`).
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for name in inherited_vmk_vars() {
            cmd.env_remove(name);
        }
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
        cmd
    }

    /// A `Command` for `program` in this environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.apply(&mut cmd);
        cmd
    }

    /// Runs `program` (a workspace binary) with `args` in `dir` in this environment, with
    /// `stdin` as its input (none: /dev/null), and logs the command, its status and its
    /// output on stderr, where a failing test's report shows them.
    pub fn run_logged(
        &self,
        program: &str,
        dir: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<std::process::Output> {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir);
        self.run_command_logged(&mut cmd, stdin)
    }

    /// [`TestEnv::run_logged`] for a `Command` the caller prepared (arguments, directory,
    /// variables of its own; a variable it removed stays removed).
    pub fn run_command_logged(
        &self,
        cmd: &mut Command,
        stdin: Option<&[u8]>,
    ) -> Result<std::process::Output> {
        use std::io::Write;
        use std::process::Stdio;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let name = Path::new(&program)
            .file_name()
            .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = self
            .apply(cmd)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        if let Some(input) = stdin {
            child.stdin.take().expect("piped").write_all(input)?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("running {name}"))?;
        eprintln!(
            "$ {name} {} → {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// The environment as `env` arguments (`HOME=… XDG_RUNTIME_DIR=… VMK_SYSTEM_CONFIG=…`,
    /// after `-u NAME` for each inherited `VMK_*` variable), for a command line that a
    /// shell or a terminal runs (tmux starts its commands with the tmux server's
    /// environment, not the test's). Paths are quoted for a POSIX shell.
    pub fn env_prefix(&self) -> String {
        let mut s = String::from("env");
        for name in inherited_vmk_vars() {
            s.push_str(&format!(" -u {name}"));
        }
        for (k, v) in self.vars() {
            s.push_str(&format!(" {k}='{}'", v.display()));
        }
        s
    }

    /// The directory holding it all (removed when dropped).
    pub fn path(&self) -> &Path {
        &self.root
    }
}

/// The environment shared by the tests of this process, made at the first call.
static SHARED: std::sync::OnceLock<TestEnv> = std::sync::OnceLock::new();
/// The name of a [`shared_env`] directory in /tmp, before the pid of its process.
const SHARED_PREFIX: &str = "vmk-env-shared-";

/// One [`TestEnv`] for every test of this test process: for helpers that run vmk commands
/// for many tests and would otherwise each need an environment passed in. Private to this
/// process (never the machine's HOME, runtime directory or `/etc/vmk-config`), shared by
/// its tests (a test that lists VMs, `vmk ps`, wants a [`TestEnv::new`] of its own).
/// It is `/tmp/vmk-env-shared-<pid>`: [`crate::run_system_tests`] removes it when the
/// tests are done, and the first call of a later test process removes those of processes
/// that are gone (a plain `#[test]` binary has no hook at its end).
pub fn shared_env() -> Result<&'static TestEnv> {
    if let Some(env) = SHARED.get() {
        return Ok(env);
    }
    remove_orphaned_shared_envs();
    let root = PathBuf::from(format!("/tmp/{SHARED_PREFIX}{}", std::process::id()));
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        // two tests of this process racing here make the same directory: both fine
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && root.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", root.display()))?;
    TestEnv::make_dirs(&root)?;
    Ok(SHARED.get_or_init(|| TestEnv { root, _owned: None }))
}

/// Removes the [`shared_env`] directory, if one was made (a static is never dropped).
pub(crate) fn remove_shared_env() {
    if let Some(env) = SHARED.get() {
        if let Err(e) = std::fs::remove_dir_all(env.path()) {
            eprintln!("vmk-testkit: removing {}: {e}", env.path().display());
        }
    }
}

/// Removes the [`shared_env`] directories of test processes that no longer run.
fn remove_orphaned_shared_envs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SHARED_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let mine = e.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == rustix::process::geteuid().as_raw()
        });
        if mine && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                eprintln!("vmk-testkit: removing {}: {err}", e.path().display());
            }
        }
    }
}

/// The `VMK_*` variables of this process a test's command must not inherit: all but
/// `VMK_ACCEL` and the harness's `VMK_TEST_*`.
pub fn inherited_vmk_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("VMK_") && k != "VMK_ACCEL" && !k.starts_with("VMK_TEST_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_one_process_differ_and_free_on_drop() {
        let slots: Vec<VmSlot> = (0..5).map(|_| VmSlot::reserve().unwrap()).collect();
        let mut numbers: Vec<u8> = slots.iter().map(VmSlot::number).collect();
        numbers.sort();
        numbers.dedup();
        assert_eq!(numbers.len(), 5, "{numbers:?}");
        for s in &slots {
            assert!(SLOT_NUMBERS.contains(&s.number()));
            assert_eq!(s.vnc_port(), 5900 + u16::from(s.number()));
            assert_eq!(s.config_line(), format!("VMK_VNC={}\n", s.number()));
        }
        // while held, another process cannot lock it (flock is per open file, so a second
        // open in this process stands for it)
        let held = slots[0].number();
        assert!(try_lock(&format!("vm-{held}")).unwrap().is_none());
        drop(slots);
        assert!(try_lock(&format!("vm-{held}")).unwrap().is_some());
    }

    #[test]
    fn a_guest_turn_waits_until_one_is_given_back() {
        let pool = format!("test-turn-{}", std::process::id());
        let first = GuestTurn::wait_in(&pool, 2).unwrap();
        let _second = GuestTurn::wait_in(&pool, 2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let pool_of_waiter = pool.clone();
        let waiter = std::thread::spawn(move || {
            let turn = GuestTurn::wait_in(&pool_of_waiter, 2);
            tx.send(()).unwrap();
            turn.map(drop)
        });
        let short = std::time::Duration::from_millis(500);
        assert!(rx.recv_timeout(short).is_err(), "a third turn of two");
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the turn given back goes to the waiter");
        waiter.join().unwrap().unwrap();
        for i in 0..2 {
            let _ = std::fs::remove_file(lock_dir().unwrap().join(format!("{pool}-{i}.lock")));
        }
    }

    #[test]
    fn a_slot_whose_port_is_busy_is_not_handed_out() {
        // Find a number, then make its VNC port busy (as a developer's VM would) and
        // reserve as many times as there are numbers: each call starts at another number,
        // so one of them tries the busy one first; none may return it.
        let n = VmSlot::reserve().unwrap().number();
        let _busy = TcpListener::bind(("127.0.0.1", 5900 + u16::from(n))).unwrap();
        for _ in SLOT_NUMBERS {
            let s = VmSlot::reserve().unwrap();
            assert_ne!(
                s.number(),
                n,
                "handed out a VM number whose VNC port is busy"
            );
        }
    }

    #[test]
    fn leased_ports_differ_and_are_bindable() {
        let a = PortLease::reserve().unwrap();
        let b = PortLease::reserve().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(LEASE_PORTS.contains(&a.port()));
        TcpListener::bind(("127.0.0.1", a.port())).unwrap();
    }

    #[test]
    fn environments_made_at_once_by_many_threads_all_succeed() {
        // as tests of one process racing for the shared env (a flake at 8 test threads:
        // "creating …/home: File exists")
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("env");
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let root = root.clone();
                    std::thread::spawn(move || {
                        let _ = std::fs::create_dir(&root);
                        TestEnv::make_dirs(&root)
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap();
            }
            assert!(root.join("home").is_dir() && root.join("run").is_dir());
        }
    }

    #[test]
    fn the_shared_env_is_one_and_orphans_are_removed() {
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let orphan = PathBuf::from(format!("/tmp/{SHARED_PREFIX}{dead}"));
        std::fs::create_dir_all(orphan.join("home")).unwrap();
        let a = shared_env().unwrap();
        let b = shared_env().unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(
            a.path(),
            Path::new(&format!("/tmp/{SHARED_PREFIX}{}", std::process::id()))
        );
        assert!(a.home().is_dir() && a.runtime_dir().is_dir());
        assert!(!a.system_config().exists());
        // the orphan goes at the first call of a process (another test of this binary may
        // have made the first call before the orphan existed: call the sweep itself too)
        remove_orphaned_shared_envs();
        assert!(!orphan.exists(), "{} left", orphan.display());
        assert!(
            a.path().is_dir(),
            "a live process's environment was removed"
        );
    }

    #[test]
    fn test_env_is_private_and_drops_inherited_vmk_vars() {
        let env = TestEnv::new().unwrap();
        let out = env
            .command("sh")
            .args(["-c", "echo $HOME; echo $XDG_RUNTIME_DIR; echo $VMK_SYSTEM_CONFIG; env | grep -c '^VMK_MEM=' || true"])
            .env("VMK_MEM", "not dropped: set after apply")
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], env.home().to_str().unwrap());
        assert_eq!(lines[1], env.runtime_dir().to_str().unwrap());
        assert_eq!(lines[2], env.system_config().to_str().unwrap());
        assert_eq!(lines[3], "1");
        assert!(!env.system_config().exists());
        assert!(env.runtime_dir().as_os_str().len() < 60);
        let root = env.path().to_path_buf();
        drop(env);
        assert!(!root.exists(), "TestEnv::new left {}", root.display());

        let dir = tempfile::tempdir().unwrap();
        let inside = TestEnv::inside(dir.path()).unwrap();
        assert!(inside.home().starts_with(dir.path()) && inside.home().is_dir());
        let again = TestEnv::inside(dir.path()).unwrap();
        assert_eq!(again.runtime_dir(), inside.runtime_dir());
        drop((inside, again));
        assert!(
            dir.path().join(".vmk-env/home").is_dir(),
            "inside() owns nothing"
        );
    }
}
