//! Runtime state of one VM instance: where its pidfile, console log and QMP socket live,
//! whether the process a pidfile names really is this VM's qemu, and how to stop it
//! without ever signalling an unrelated process that happens to reuse the pid.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use nix::sys::signal::Signal;

/// Longest unix socket path we create: `sun_path` holds 108 bytes including the final NUL,
/// and we keep one byte of margin.
pub const MAX_SOCKET_PATH: usize = 106;

/// The signals `vmk kill` sends, a second apart.
pub const KILL_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL];

/// The runtime files of one VM instance (the VM booting disk0, or the snapshot VM booting
/// `snap-<disk0>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePaths {
    /// Absolute path of the disk image this instance boots (not canonicalized).
    pub image: PathBuf,
    /// `<vm dir>/<image file name>.pid`.
    pub pidfile: PathBuf,
    /// `<vm dir>/<image file name>.console.log`.
    pub console_log: PathBuf,
    /// `<vm dir>/<image file name>.qmp`, or a short hashed name in a runtime directory
    /// when that path does not fit a unix socket address.
    pub qmp_socket: PathBuf,
}

impl RuntimePaths {
    /// Computes the runtime paths for the instance in `vm_dir` that boots `image` (a path
    /// relative to `vm_dir`, or absolute). Creates nothing: call [`RuntimePaths::prepare`]
    /// before starting qemu.
    pub fn new(vm_dir: &Path, image: &Path) -> Result<RuntimePaths> {
        let vm_dir = std::path::absolute(vm_dir)
            .with_context(|| format!("resolving VM directory {}", vm_dir.display()))?;
        let image = vm_dir.join(image);
        let Some(name) = image.file_name() else {
            bail!("disk image path {} has no file name", image.display());
        };
        let with_suffix = |suffix: &str| {
            let mut n = name.to_os_string();
            n.push(suffix);
            vm_dir.join(n)
        };
        let local_socket = with_suffix(".qmp");
        let qmp_socket = if local_socket.as_os_str().len() <= MAX_SOCKET_PATH {
            local_socket
        } else {
            fallback_socket_path(&image, &runtime_dir())
        };
        Ok(RuntimePaths {
            pidfile: with_suffix(".pid"),
            console_log: with_suffix(".console.log"),
            qmp_socket,
            image,
        })
    }

    /// The guest agent's socket: beside the QMP socket, so it fits the same length limit.
    pub fn qga_socket(&self) -> PathBuf {
        self.qmp_socket.with_extension("qga")
    }

    /// Makes the instance's runtime files safe for qemu to open, before it starts: the
    /// console log exists as a private regular file (created `O_NOFOLLOW`, mode 0600;
    /// qemu appends to it), nothing but a regular file sits at the pidfile's path (qemu
    /// opens and truncates it, following a symlink), and the directory of a QMP socket in a
    /// per-user runtime directory is ours and private ([`ensure_private_dir`]). A symlink
    /// or anything but a regular file at one of those paths is refused: it would make qemu
    /// (often root) write through it.
    pub fn prepare(&self) -> Result<()> {
        check_regular_or_absent(&self.pidfile, "pidfile")?;
        open_console_log(&self.console_log)?;
        let dir = self
            .qmp_socket
            .parent()
            .context("QMP socket path has no directory")?;
        if Some(dir) == self.pidfile.parent() {
            return Ok(()); // the VM directory itself
        }
        ensure_private_dir(dir)
    }
}

/// What sits at `path`, named for messages.
fn kind_of(meta: &fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file (device, FIFO or socket)"
    }
}

/// The refusal of something other than a regular file at a runtime file's path.
fn not_regular(path: &Path, what: &str, meta: &fs::Metadata) -> anyhow::Error {
    let target = if meta.file_type().is_symlink() {
        fs::read_link(path)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    anyhow::anyhow!(
        "refusing to use the {what} {}: it is {}{target}, not a regular file, and vmk never \
         writes through one; remove it (rm {}) if you did not put it there",
        path.display(),
        kind_of(meta),
        crate::shell::quote(path.as_os_str())
    )
}

/// Fails unless `path` is absent or a regular file (never following a symlink).
fn check_regular_or_absent(path: &Path, what: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(not_regular(path, what, &m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking the {what} {}", path.display())),
    }
}

/// Creates (or opens) the console log for appending without following a symlink (mode
/// 0600), checks it is a regular file and makes an existing one of ours private.
pub fn open_console_log(path: &Path) -> Result<fs::File> {
    open_private_log(path, "console log")
}

/// [`open_console_log`] for any log vmk or a helper it starts appends to (`what` names it
/// in errors).
pub fn open_private_log(path: &Path, what: &str) -> Result<fs::File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            // ELOOP (a symlink), ENXIO (a FIFO without reader), EISDIR …: say what is there
            if let Ok(m) = fs::symlink_metadata(path) {
                if !m.file_type().is_file() {
                    return Err(not_regular(path, what, &m));
                }
            }
            return Err(e).with_context(|| format!("creating the {what} {}", path.display()));
        }
    };
    let meta = file
        .metadata()
        .with_context(|| format!("checking the {what} {}", path.display()))?;
    if !meta.is_file() {
        return Err(not_regular(path, what, &meta));
    }
    if meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
        log::info!(
            "making the {what} {} private (mode {:04o} to 0600)",
            path.display(),
            meta.mode() & 0o7777
        );
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(file)
}

/// The directory for sockets whose natural path is too long: `$XDG_RUNTIME_DIR/vmk`,
/// `/run/vmk` for root, else `/tmp/vmk-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        let xdg = PathBuf::from(xdg);
        if xdg.is_absolute() && xdg.as_os_str().len() < 60 {
            return xdg.join("vmk");
        }
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        PathBuf::from("/run/vmk")
    } else {
        PathBuf::from(format!("/tmp/vmk-{}", uid.as_raw()))
    }
}

/// A socket path in `dir` named after the image (readable) plus a stable hash of its
/// absolute path (unique): `NAME-HASH.qmp`, whose extension callers replace for other
/// sockets of the instance (virtiofsd's).
pub fn fallback_socket_path(image: &Path, dir: &Path) -> PathBuf {
    let hash = fnv1a64(image.as_os_str().as_bytes());
    let stem: String = image
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(24)
        .collect();
    dir.join(format!("{stem}-{hash:016x}.qmp"))
}

/// FNV-1a, 64 bit: a hash that stays the same across Rust versions and machines (unlike
/// `DefaultHasher`), so every tool computes the same socket name.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Makes sure `dir` is a private directory of ours, as every runtime directory (sockets,
/// `vmk ps` records) must be, checked on every use: created with mode 0700 when missing
/// (its parents too), then looked at without following a symlink. A symlink, anything
/// but a directory, or a directory of another user is refused (another user who made it
/// first could replace what vmk writes there); a directory of ours with a wider mode is
/// made 0700, and that is logged.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if fs::symlink_metadata(parent).is_err() {
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    check_private_dir(dir)
}

/// The checks of [`ensure_private_dir`] on an existing directory, creating nothing.
pub fn check_private_dir(dir: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    let quoted = crate::shell::quote(dir.as_os_str());
    if !meta.is_dir() {
        bail!(
            "refusing the runtime directory {}: it is {}, not a directory vmk made; \
             remove it (rm {quoted}) or set XDG_RUNTIME_DIR to a private directory",
            dir.display(),
            kind_of(&meta),
        );
    }
    if meta.uid() != uid {
        bail!(
            "refusing the runtime directory {}: it belongs to uid {} (mode {:04o}), not to \
             uid {uid} who runs vmk, so that user could replace what vmk keeps there; remove \
             it (rm -r {quoted}) or set XDG_RUNTIME_DIR to a private directory",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
        );
    }
    if meta.mode() & 0o1000 != 0 {
        bail!(
            "refusing the runtime directory {}: it is a shared directory (mode {:04o}, sticky); \
             give vmk a private one (set XDG_RUNTIME_DIR)",
            dir.display(),
            meta.mode() & 0o7777,
        );
    }
    if meta.mode() & 0o077 != 0 {
        log::warn!(
            "{} had mode {:04o}: making it private (0700)",
            dir.display(),
            meta.mode() & 0o7777
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

/// Reads a pidfile: `Ok(None)` when it does not exist, an error naming the file when its
/// content is not a positive process id.
pub fn read_pidfile(path: &Path) -> Result<Option<u32>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading pidfile {}", path.display())),
    };
    let trimmed = text.trim();
    match trimmed.parse::<u32>() {
        Ok(pid) if pid > 0 && pid <= i32::MAX as u32 => Ok(Some(pid)),
        _ => bail!(
            "pidfile {} does not hold a process id (found {:?}): remove it if no VM runs",
            path.display(),
            trimmed.chars().take(40).collect::<String>()
        ),
    }
}

/// Writes `pid` to `path` atomically and without following a symlink: a new temporary
/// file beside it (random name, `O_EXCL|O_NOFOLLOW`, mode 0600), then renamed over `path`
/// (see [`crate::fileops::replace_file`]).
pub fn write_pidfile(path: &Path, pid: u32) -> Result<()> {
    crate::fileops::replace_file(path, format!("{pid}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing pidfile {}", path.display()))
}

/// Removes a pidfile; true when there was one.
pub fn remove_pidfile(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing pidfile {}", path.display())),
    }
}

/// Splits a qemu option value (`a=b,file=x,,y`) at single commas, undoing the doubled-comma
/// escape inside each part.
pub fn split_qemu_opts(value: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b',' {
            if value.get(i + 1) == Some(&b',') {
                parts.last_mut().expect("never empty").push(b',');
                i += 2;
                continue;
            }
            parts.push(Vec::new());
        } else {
            parts.last_mut().expect("never empty").push(b);
        }
        i += 1;
    }
    parts
}

/// The arguments of process `pid`, or `None` when it is gone (a zombie has none either).
/// A live process shows an empty cmdline for a moment while it execs (the kernel sets the
/// new argv after the parent of a vfork-style spawn already runs again), and for good
/// when it is a kernel thread or a zombie: retry briefly, then give up.
pub(crate) fn process_argv(pid: u32) -> io::Result<Option<Vec<Vec<u8>>>> {
    for _ in 0..25 {
        match read_argv(pid)? {
            Some(argv) => return Ok(Some(argv)),
            None if process_gone(pid) => return Ok(None),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    Ok(None)
}

/// True when process `pid` runs `program` (its argv[0]'s file name) with an argument for
/// which `arg` holds; a gone or reused pid answers false. How a helper daemon of a VM
/// (swtpm, virtiofsd) is recognised by its socket before it is signalled.
pub(crate) fn runs_program_with(pid: u32, program: &str, arg: impl Fn(&[u8]) -> bool) -> bool {
    let Ok(Some(argv)) = process_argv(pid) else {
        return false;
    };
    let named = argv
        .first()
        .and_then(|a0| Path::new(std::ffi::OsStr::from_bytes(a0)).file_name())
        .is_some_and(|n| n.as_bytes() == program.as_bytes());
    named && argv.iter().any(|a| arg(a))
}

fn read_argv(pid: u32) -> io::Result<Option<Vec<Vec<u8>>>> {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) if raw.is_empty() => Ok(None),
        Ok(raw) => Ok(Some(
            raw.strip_suffix(b"\0")
                .unwrap_or(&raw)
                .split(|&b| b == 0)
                .map(<[u8]>::to_vec)
                .collect(),
        )),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// True when process `pid` is a qemu (argv[0]'s file name starts with `qemu`) that was
/// given `image` (as `file=PATH` inside an option value, or as a whole argument). Paths in
/// qemu's argv that are relative are resolved against its working directory. A gone or
/// reused pid answers false.
pub fn is_vm_qemu(pid: u32, image: &Path) -> Result<bool> {
    let Some(argv) = process_argv(pid).with_context(|| format!("reading /proc/{pid}/cmdline"))?
    else {
        return Ok(false);
    };
    let prog = Path::new(std::ffi::OsStr::from_bytes(&argv[0]));
    let is_qemu = prog
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"qemu"));
    if !is_qemu {
        return Ok(false);
    }
    let image_abs = std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf());
    let image_canon = fs::canonicalize(image).ok();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let matches = |candidate: &[u8]| -> bool {
        if candidate.is_empty() {
            return false;
        }
        let mut p = PathBuf::from(OsString::from_vec(candidate.to_vec()));
        if p.is_relative() {
            match &cwd {
                Some(cwd) => p = cwd.join(p),
                None => return false,
            }
        }
        p == image_abs
            || image_canon
                .as_ref()
                .is_some_and(|c| fs::canonicalize(&p).is_ok_and(|pc| &pc == c))
    };
    Ok(argv[1..].iter().any(|arg| {
        matches(arg)
            || split_qemu_opts(arg)
                .iter()
                .any(|part| part.strip_prefix(b"file=").is_some_and(&matches))
    }))
}

/// The running qemu processes (other than this process) whose command line boots `image`,
/// found by scanning /proc: argv[0] and the image's file name are a cheap filter before
/// the full [`is_vm_qemu`] check.
pub fn qemu_pids_using(image: &Path) -> Result<Vec<u32>> {
    let Some(name) = image.file_name().map(|n| n.as_bytes().to_vec()) else {
        return Ok(Vec::new());
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = raw.split(|&b| b == 0).next().unwrap_or_default();
        let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if pid == me || !base.starts_with(b"qemu") || !raw.windows(name.len()).any(|w| w == name) {
            continue;
        }
        if is_vm_qemu(pid, image)? {
            found.push(pid);
        }
    }
    Ok(found)
}

/// Whether the instance is running, as far as its pidfile and /proc tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    /// The pidfile names a live qemu that boots this image.
    Running {
        /// Its process id.
        pid: u32,
    },
    /// No pidfile.
    Stopped,
    /// A pidfile exists, but its process is gone or is not this VM's qemu.
    Stale {
        /// The pid the pidfile names.
        pid: u32,
    },
}

/// Reads the pidfile of `paths` and checks the process it names against `paths.image`.
pub fn status(paths: &RuntimePaths) -> Result<VmStatus> {
    let Some(pid) = read_pidfile(&paths.pidfile)? else {
        return Ok(VmStatus::Stopped);
    };
    Ok(if is_vm_qemu(pid, &paths.image)? {
        VmStatus::Running { pid }
    } else {
        VmStatus::Stale { pid }
    })
}

/// Removes the pidfile when it is stale and says so (log), returning the pid it named.
pub fn clear_stale_pidfile(paths: &RuntimePaths) -> Result<Option<u32>> {
    match status(paths)? {
        VmStatus::Stale { pid } => {
            log::warn!(
                "removing stale pidfile {} (pid {pid} is not this VM's qemu)",
                paths.pidfile.display()
            );
            remove_pidfile(&paths.pidfile)?;
            Ok(Some(pid))
        }
        _ => Ok(None),
    }
}

/// True when process `pid` no longer exists (or is a zombie waiting to be reaped).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
        Err(_) => true,
    }
}

/// Waits until process `pid` (not necessarily our child) is gone, polling every 10 ms.
/// True when it went within `timeout`.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if process_gone(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends `pid`, a helper process of a VM (`what`: swtpm, virtiofsd) that `is_it` verifies
/// before each signal: SIGTERM, then SIGKILL after 2 s. Nothing is sent to a pid that is
/// no longer (or never was) that helper; an error when it survives SIGKILL.
pub fn end_verified(pid: u32, what: &str, is_it: impl Fn(u32) -> bool) -> Result<()> {
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        if !is_it(pid) {
            return Ok(());
        }
        log::info!("sending {sig} to {what} pid {pid}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        if wait_for_exit(pid, Duration::from_secs(2)) {
            return Ok(());
        }
    }
    if is_it(pid) {
        bail!("{what} pid {pid} still runs after SIGKILL");
    }
    Ok(())
}

/// Removes what a helper process of a VM left (its pidfile, its socket): each path that
/// exists and is no directory, quietly (the caller is cleaning up).
pub fn remove_runtime_files(paths: &[&Path]) {
    for p in paths {
        match fs::symlink_metadata(p) {
            Ok(m) if !m.is_dir() => {
                let _ = fs::remove_file(p);
            }
            _ => {}
        }
    }
}

/// What [`kill_verified`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillOutcome {
    /// The pid was not (or no longer) this VM's qemu before the first signal: nothing sent.
    NotVerified,
    /// The process is gone; `last_signal` is the last signal sent to it.
    Exited {
        /// The signal after which it went.
        last_signal: Signal,
    },
    /// It still runs after every signal was sent.
    StillRunning,
}

/// Sends `signals` in turn to `pid`, waiting up to `interval` after each, and stops as soon
/// as the process is gone. Before EVERY signal the pid is checked again to be the qemu of
/// `image` ([`is_vm_qemu`]), so a reused pid is never signalled.
pub fn kill_verified(
    pid: u32,
    image: &Path,
    signals: &[Signal],
    interval: Duration,
) -> Result<KillOutcome> {
    let mut last = None;
    for &sig in signals {
        if !is_vm_qemu(pid, image)? {
            return Ok(match last {
                None => KillOutcome::NotVerified,
                Some(last_signal) => KillOutcome::Exited { last_signal },
            });
        }
        let raw = i32::try_from(pid).context("pid out of range")?;
        log::info!("sending {sig} to qemu pid {pid}");
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig) {
            Ok(()) => {}
            Err(nix::errno::Errno::ESRCH) => {
                return Ok(KillOutcome::Exited {
                    last_signal: last.unwrap_or(sig),
                })
            }
            Err(e) => return Err(e).with_context(|| format!("sending {sig} to pid {pid}")),
        }
        last = Some(sig);
        if wait_for_exit(pid, interval) {
            return Ok(KillOutcome::Exited { last_signal: sig });
        }
    }
    Ok(KillOutcome::StillRunning)
}

/// True when a TCP listener could bind `addr:port` right now.
pub fn port_is_free(addr: IpAddr, port: u16) -> bool {
    TcpListener::bind((addr, port)).is_ok()
}

/// The process listening on TCP `port` (any address, IPv4 or IPv6) as "NAME (pid N)", when
/// this user may see it: the socket's inode from /proc/net/tcp{,6}, then the process whose
/// file descriptors hold it. For an error that says what holds a port.
pub fn port_listener(port: u16) -> Option<String> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|t| listening_inodes(&t, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
        });
        if holds {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", name.trim()));
        }
    }
    None
}

/// The inodes of the sockets listening (state 0A) on `port` in a /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port_hex = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            (local_port == port_hex && *f.get(3)? == "0A")
                .then(|| f.get(9).map(|i| i.to_string()))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_of_a_port_is_this_process() {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let who = port_listener(port).expect("our own listener is visible");
        assert!(
            who.ends_with(&format!("(pid {})", std::process::id())),
            "{who}"
        );
        drop(l);
        assert_eq!(port_listener(port), None);
    }

    #[test]
    fn listening_sockets_of_a_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1716 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:1716 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 5910), ["4242"]);
        assert_eq!(listening_inodes(table, 22), ["4444"]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn paths_in_a_short_dir() {
        let p = RuntimePaths::new(Path::new("/vms/a"), Path::new("disk.qcow2")).unwrap();
        assert_eq!(p.image, Path::new("/vms/a/disk.qcow2"));
        assert_eq!(p.pidfile, Path::new("/vms/a/disk.qcow2.pid"));
        assert_eq!(p.console_log, Path::new("/vms/a/disk.qcow2.console.log"));
        assert_eq!(p.qmp_socket, Path::new("/vms/a/disk.qcow2.qmp"));
        let s = RuntimePaths::new(Path::new("/vms/a"), Path::new("snap-disk.qcow2")).unwrap();
        assert_eq!(s.pidfile, Path::new("/vms/a/snap-disk.qcow2.pid"));
    }

    #[test]
    fn paths_in_a_deep_dir_use_a_short_stable_socket() {
        let deep = format!("/{}", vec!["d".repeat(49); 4].join("/"));
        assert!(deep.len() >= 200);
        let a = RuntimePaths::new(Path::new(&deep), Path::new("disk0.qcow2")).unwrap();
        let again = RuntimePaths::new(Path::new(&deep), Path::new("disk0.qcow2")).unwrap();
        let snap = RuntimePaths::new(Path::new(&deep), Path::new("snap-disk0.qcow2")).unwrap();
        assert!(a.pidfile.starts_with(&deep));
        assert!(!a.qmp_socket.starts_with(&deep));
        assert!(a.qmp_socket.starts_with(runtime_dir()));
        assert!(a.qmp_socket.as_os_str().len() <= MAX_SOCKET_PATH);
        assert_eq!(a.qmp_socket, again.qmp_socket);
        assert_ne!(a.qmp_socket, snap.qmp_socket);
        assert!(a
            .qmp_socket
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("disk0.qcow2-"));
    }

    #[test]
    fn deep_socket_dir_is_created_private_and_bindable() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("x".repeat(200));
        let image = deep.join("disk0.raw");
        let sock = fallback_socket_path(&image, &tmp.path().join("rt"));
        ensure_private_dir(sock.parent().unwrap()).unwrap();
        let mode = fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::os::unix::net::UnixListener::bind(&sock).unwrap();
    }

    #[test]
    fn pidfile_round_trip_and_bad_content() {
        let tmp = tempfile::tempdir().unwrap();
        let pf = tmp.path().join("disk0.pid");
        assert_eq!(read_pidfile(&pf).unwrap(), None);
        write_pidfile(&pf, 4242).unwrap();
        assert_eq!(fs::read_to_string(&pf).unwrap(), "4242\n");
        assert_eq!(read_pidfile(&pf).unwrap(), Some(4242));
        fs::write(&pf, "  77 \n\n").unwrap();
        assert_eq!(read_pidfile(&pf).unwrap(), Some(77));
        for bad in ["", "abc", "0", "-5", "12 13", "99999999999"] {
            fs::write(&pf, bad).unwrap();
            let err = read_pidfile(&pf).unwrap_err().to_string();
            assert!(err.contains(&pf.display().to_string()), "{err}");
        }
        assert!(remove_pidfile(&pf).unwrap());
        assert!(!remove_pidfile(&pf).unwrap());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn qemu_option_splitting() {
        let parts = split_qemu_opts(b"if=virtio,file=/a,,b.img,format=raw");
        assert_eq!(
            parts,
            vec![
                b"if=virtio".to_vec(),
                b"file=/a,b.img".to_vec(),
                b"format=raw".to_vec()
            ]
        );
        assert_eq!(split_qemu_opts(b"x,,,,y"), vec![b"x,,y".to_vec()]);
    }

    #[test]
    fn our_own_process_and_a_gone_pid_are_not_qemu() {
        let me = std::process::id();
        assert!(!is_vm_qemu(me, Path::new("/nonexistent")).unwrap());
        assert!(!process_gone(me));
        assert!(!is_vm_qemu(i32::MAX as u32, Path::new("/x")).unwrap());
        assert!(process_gone(i32::MAX as u32));
    }

    #[test]
    fn port_check() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!port_is_free(lo, port));
        drop(l);
        assert!(port_is_free(lo, port));
    }
}
