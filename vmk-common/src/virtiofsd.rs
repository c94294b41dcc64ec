//! virtiofs's daemon: one `virtiofsd` per host folder that reaches the guest over virtiofs
//! (VMK_SHARE_FS), serving qemu's `vhost-user-fs` device on a unix socket in the instance's
//! private runtime directory ([`crate::state::runtime_dir`]).
//!
//! The virtiofsd vmk drives is qemu's own (C, qemu ≤ 7.2; Debian 12 ships it as
//! /usr/lib/qemu/virtiofsd), recognised by its `--help` (`-o source=PATH`). It needs root
//! (it writes a lock under /var/run/virtiofsd and makes namespaces), has no read-only mode
//! (so a `:ro` share stays on virtio-9p, where qemu itself refuses the writes), and runs
//! sandboxed: `-o sandbox=namespace` (new mount, pid and net namespaces and pivot_root(2)
//! into the shared folder, so the guest reaches nothing of the host beyond it), no
//! extended attributes, O_DIRECT from the guest dropped, no device nodes or file
//! capabilities made in the folder. The Rust virtiofsd (`--shared-dir`)
//! takes other options, untried here: vmk does not drive it yet and says so.
//!
//! Lifetime, as the swtpm's ([`crate::swtpm`]): vmk starts the virtiofsds just before qemu
//! (its own process group, so a terminal's Ctrl-C does not end it under the guest), waits
//! for each socket, and records its pid beside the socket; a virtiofsd ends by itself once
//! qemu's connection goes, whichever way qemu ended. [`stop_instance`] then only cleans
//! up, or ends a virtiofsd that qemu never connected to (qemu failed to start). It signals
//! only a process whose pidfile names it AND whose command line is virtiofsd on that socket.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where a virtiofsd is looked for after PATH: Fedora's and Arch's (the Rust one),
/// Debian's (qemu's C one).
pub const PLACES: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// How long a virtiofsd may take to make its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtiofsd vmk can run here, or why there is none (one line, for `info`, `-D` and
/// the error of VMK_SHARE_FS=virtiofs): the first of PATH's `virtiofsd` and [`PLACES`]
/// that is qemu's C virtiofsd.
pub fn find() -> std::result::Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = crate::host::which("virtiofsd").into_iter().collect();
    candidates.extend(PLACES.iter().map(PathBuf::from));
    let mut seen: Vec<(PathBuf, Flavor)> = Vec::new();
    for p in candidates {
        if !crate::host::is_executable(&p) || seen.iter().any(|(s, _)| *s == p) {
            continue;
        }
        match flavor(&p) {
            Flavor::Qemu => return Ok(p),
            other => seen.push((p, other)),
        }
    }
    let seen: Vec<String> = seen
        .iter()
        .map(|(p, f)| format!("{} is {}", p.display(), f.describe()))
        .collect();
    Err(if seen.is_empty() {
        format!(
            "no virtiofsd installed (looked on PATH and in {})",
            PLACES.join(", ")
        )
    } else {
        format!("no virtiofsd vmk can run: {}", seen.join("; "))
    })
}

/// Which virtiofsd a program is, by its `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// qemu's C virtiofsd: `-o source=PATH`, `--socket-path=PATH`.
    Qemu,
    /// The Rust virtiofsd: `--shared-dir`.
    Rust,
    /// Neither, or its `--help` failed.
    Unknown,
}

impl Flavor {
    fn describe(self) -> &'static str {
        match self {
            Flavor::Qemu => "qemu's virtiofsd",
            Flavor::Rust => "the Rust virtiofsd, which vmk does not drive yet",
            Flavor::Unknown => {
                "no virtiofsd vmk knows (its --help names neither -o source= nor --shared-dir)"
            }
        }
    }
}

fn flavor(program: &Path) -> Flavor {
    let Ok(out) = Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
    else {
        return Flavor::Unknown;
    };
    let text = [out.stdout, out.stderr].concat();
    let has = |s: &[u8]| text.windows(s.len()).any(|w| w == s);
    if has(b"-o source=PATH") && has(b"--socket-path=PATH") && has(b"sandbox=namespace") {
        Flavor::Qemu
    } else if has(b"--shared-dir") {
        Flavor::Rust
    } else {
        Flavor::Unknown
    }
}

/// One virtiofsd: the folder it serves and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// The virtiofsd program ([`find`]).
    pub program: PathBuf,
    /// The shared host folder.
    pub dir: PathBuf,
    /// The vhost-user socket qemu's `-chardev` connects to.
    pub socket: PathBuf,
    /// Its pid, written by vmk.
    pub pidfile: PathBuf,
    /// Its output.
    pub log: PathBuf,
}

impl Daemon {
    /// The virtiofsd of the `index`-th share of the instance that boots `image`, serving
    /// `dir`, its files in the private runtime directory `runtime_dir`
    /// ([`crate::state::runtime_dir`] but in tests).
    pub fn for_share(
        program: &Path,
        runtime_dir: &Path,
        image: &Path,
        index: usize,
        dir: &Path,
    ) -> Daemon {
        let base = base(runtime_dir, image);
        Daemon {
            program: program.to_path_buf(),
            dir: dir.to_path_buf(),
            socket: base.with_extension(format!("fs{index}")),
            pidfile: base.with_extension(format!("fs{index}.pid")),
            log: base.with_extension(format!("fs{index}.log")),
        }
    }

    /// The virtiofsd command line: sandboxed into the folder (namespaces and pivot_root),
    /// no extended attributes, no O_DIRECT from the guest, and without the capabilities to
    /// make device nodes or set file capabilities (a device node the guest made in the
    /// folder would open a host device to whoever on the host can reach the folder).
    /// `cache=none`, as vmk's 9p mounts have it: the guest caches no data, so it sees the
    /// host's edits at once, and a long read is not slowed by filling the guest's page
    /// cache (bench/shares.sh under TCG: 392 MiB/s with none, 43 with auto). The folder's commas and
    /// backslashes are escaped for virtiofsd's option list (`\,`, `\\`), so a folder named
    /// `a,allow_direct_io` stays one folder.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.arg(join("--socket-path=", &self.socket))
            .arg("-o")
            .arg(join("source=", &escape_fuse_opt(&self.dir)))
            .args(["-o", "sandbox=namespace"])
            .args(["-o", "no_xattr"])
            .args(["-o", "no_allow_direct_io"])
            .args(["-o", "modcaps=-mknod:-setfcap"])
            .args(["-o", "cache=none"]);
        c
    }
}

/// The runtime files of the instance that boots `image`: in the private runtime directory,
/// named after the image and a hash of its path (as QMP sockets whose natural path is too
/// long), so that the socket fits a unix socket address.
fn base(runtime_dir: &Path, image: &Path) -> PathBuf {
    crate::state::fallback_socket_path(image, runtime_dir)
}

fn join(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

/// `path` as a value of a FUSE option list: `\` → `\\`, `,` → `\,`.
fn escape_fuse_opt(path: &Path) -> PathBuf {
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        if b == b'\\' || b == b',' {
            out.push(b'\\');
        }
        out.push(b);
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Starts the virtiofsd `d` (ending one a previous run left on its socket) and returns its
/// pid once its socket is there. The runtime directory is made private first.
pub fn start(d: &Daemon) -> Result<u32> {
    stop(d)?;
    if let Some(dir) = d.socket.parent() {
        crate::state::ensure_private_dir(dir)?;
    }
    let log = crate::state::open_private_log(&d.log, "virtiofsd log")?;
    log.set_len(0)?;
    let mut c = d.command();
    c.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    log::debug!("starting {}", crate::shell::command_line(&c));
    let mut child = c
        .spawn()
        .with_context(|| format!("starting {}", d.program.display()))?;
    let pid = child.id();
    fs::write(&d.pidfile, format!("{pid}\n"))
        .with_context(|| format!("writing {}", d.pidfile.display()))?;
    // reaps it should it end while this process lives (a foreground run); otherwise it
    // outlives this process, as qemu does
    std::thread::spawn(move || child.wait());
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if fs::symlink_metadata(&d.socket).is_ok_and(|m| m.file_type().is_socket()) {
            log::debug!("virtiofsd pid {pid} on {}", d.socket.display());
            return Ok(pid);
        }
        let why = if crate::state::process_gone(pid) {
            "exited"
        } else if Instant::now() > deadline {
            "made no socket within 10 s"
        } else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let said = fs::read_to_string(&d.log).unwrap_or_default();
        let _ = stop(d);
        bail!(
            "virtiofsd for {} {why}: {}",
            d.dir.display(),
            crate::text::escaped_line(said.trim())
        );
    }
}

/// True when `pid` is a virtiofsd serving `socket` (a gone or reused pid answers false).
pub fn is_instance_virtiofsd(pid: u32, socket: &Path) -> bool {
    let want = join("--socket-path=", socket);
    crate::state::runs_program_with(pid, "virtiofsd", |a| a == want.as_bytes())
}

/// Where qemu's virtiofsd keeps a lock file per socket (`<localstatedir>/run/virtiofsd`;
/// distributions build qemu with /var), which it leaves behind when it exits.
pub const LOCK_DIR: &str = "/var/run/virtiofsd";

/// The lock file qemu's virtiofsd makes for `socket`: its path with `/` made `.`, `.pid`.
pub fn lock_file(socket: &Path) -> PathBuf {
    let mut name: Vec<u8> = socket
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| if b == b'/' { b'.' } else { b })
        .collect();
    name.extend_from_slice(b".pid");
    Path::new(LOCK_DIR).join(std::ffi::OsStr::from_bytes(&name))
}

/// Ends the virtiofsd of `d` if one runs ([`crate::state::end_verified`]) and removes its
/// pidfile, its socket and the lock file virtiofsd left (when no virtiofsd on that socket
/// holds it). The log stays.
pub fn stop(d: &Daemon) -> Result<()> {
    if let Ok(Some(pid)) = crate::state::read_pidfile(&d.pidfile) {
        crate::state::end_verified(pid, "virtiofsd", |p| is_instance_virtiofsd(p, &d.socket))?;
    }
    let lock = lock_file(&d.socket);
    let held = crate::state::read_pidfile(&lock)
        .ok()
        .flatten()
        .is_some_and(|pid| is_instance_virtiofsd(pid, &d.socket));
    let lock_is_file = fs::symlink_metadata(&lock).is_ok_and(|m| m.is_file());
    if lock_is_file && !held {
        let _ = fs::remove_file(&lock);
    }
    crate::state::remove_runtime_files(&[&d.pidfile, &d.socket]);
    Ok(())
}

/// Ends every virtiofsd the instance that boots `image` has (whatever its shares are now:
/// found by their pidfiles) and removes their files. Call it once qemu is gone.
pub fn stop_instance(image: &Path) -> Result<()> {
    let runtime_dir = crate::state::runtime_dir();
    let base = base(&runtime_dir, image);
    let (Some(dir), Some(stem)) = (base.parent(), base.file_stem()) else {
        return Ok(());
    };
    let mut prefix = stem.as_bytes().to_vec();
    prefix.extend_from_slice(b".fs");
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // no runtime directory: nothing was started
    };
    let mut result = Ok(());
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(index) = name
            .as_bytes()
            .strip_prefix(prefix.as_slice())
            .and_then(|r| r.strip_suffix(b".pid"))
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let d = Daemon::for_share(
            Path::new("virtiofsd"),
            &runtime_dir,
            image,
            index,
            Path::new(""),
        );
        if let Err(e) = stop(&d) {
            result = Err(e);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_escapes_the_folder_and_sandboxes_it() {
        let d = Daemon::for_share(
            Path::new("/usr/lib/qemu/virtiofsd"),
            Path::new("/run/vmk"),
            Path::new("/vm/disk0.img"),
            1,
            Path::new("/src/a,allow_direct_io\\x"),
        );
        assert!(d.socket.to_string_lossy().ends_with(".fs1"), "{d:?}");
        assert_eq!(d.pidfile, d.socket.with_extension("fs1.pid"));
        let args: Vec<String> = d
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[1..].join(" "),
            "-o source=/src/a\\,allow_direct_io\\\\x -o sandbox=namespace -o no_xattr \
             -o no_allow_direct_io -o modcaps=-mknod:-setfcap -o cache=none"
        );
        assert_eq!(args[0], format!("--socket-path={}", d.socket.display()));
    }

    #[test]
    fn the_lock_file_is_named_after_the_socket() {
        assert_eq!(
            lock_file(Path::new("/run/vmk/disk0.img-b66aaaf068901df1.fs0")),
            Path::new("/var/run/virtiofsd/.run.vmk.disk0.img-b66aaaf068901df1.fs0.pid")
        );
    }

    #[test]
    fn this_process_is_no_virtiofsd() {
        assert!(!is_instance_virtiofsd(std::process::id(), Path::new("/x")));
    }
}
