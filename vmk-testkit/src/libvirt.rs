//! A libvirtd and virtlogd of the test's own, and an sshd of the test's own, so that the
//! libvirt tests run against the real daemons without touching a libvirt a developer runs
//! or the machine's ssh setup.
//!
//! Isolation: the daemons run in a mount namespace of their own (`unshare --mount`) with a
//! /run of their own (tmpfs) where /etc/libvirt (a copy, with qemu running as root without relabelling, no security
//! driver and no autostarted network), /run/libvirt, /var/lib/libvirt, /var/log/libvirt
//! and /var/cache/libvirt are directories of the test. Their pidfiles are the test's too
//! (`-p`), so nothing of the machine's libvirt is read or written; clients reach the
//! daemon through `qemu+unix:///system?socket=…`. On drop: every domain is destroyed and
//! undefined, the daemons get SIGTERM by the pids they wrote (checked to be those
//! programs). /run/sshd, sshd's privilege separation directory, is made when missing (as
//! openssh-server's own start would) and left: another test's sshd may be using it.
//!
//! The sshd ([`TestSshd`]) listens on a reserved loopback port with its own host key, an
//! authorized key of the test's and no PAM; the `ssh` libvirt runs is a wrapper with a
//! known_hosts file of the test's, so root's ~/.ssh is never written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::isolation::PortLease;
use crate::{run_ok, write_executable, Need};

/// What the libvirt tests need: root, the daemons, virsh, unshare and nc (the remote
/// connection's proxy).
pub const NEEDS: &[Need] = &[
    Need::Root,
    Need::Qemu,
    Need::Program("libvirtd"),
    Need::Program("virtlogd"),
    Need::Program("virsh"),
    Need::Program("unshare"),
];

/// A running libvirtd + virtlogd of this test.
#[derive(Debug)]
pub struct Libvirtd {
    dir: tempfile::TempDir,
    /// Stops the daemons and their domains should the test binary be interrupted.
    _undo: crate::on_interrupt::Registration,
}

/// Says that /run/libvirt did not exist before the kit's tests: virsh, run by the tests on
/// the machine's side, leaves its identity token there; the tests' end removes it again.
const NO_RUN_LIBVIRT: &str = "/tmp/vmk-testkit-no-run-libvirt";

/// The directories bind-mounted over the machine's, under the test's directory.
const MOUNTS: &[(&str, &str)] = &[
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

impl Libvirtd {
    /// Starts the daemons (about a second) and waits until libvirtd answers.
    pub fn start() -> Result<Libvirtd> {
        let dir = tempfile::Builder::new()
            .prefix("vmk-libvirtd-")
            .tempdir_in("/tmp")
            .context("creating the libvirtd test directory")?;
        let d = dir.path();
        for (sub, _) in MOUNTS {
            fs::create_dir(d.join(sub))?;
        }
        run_ok({
            let mut c = Command::new("cp");
            c.arg("-a").arg("/etc/libvirt/.").arg(d.join("etc"));
            c
        })?;
        let autostart = d.join("etc/qemu/networks/autostart");
        if autostart.is_dir() {
            fs::remove_dir_all(&autostart)?;
        }
        let qemu_conf = d.join("etc/qemu.conf");
        let mut conf = fs::read_to_string(&qemu_conf).unwrap_or_default();
        conf.push_str(
            "\n# vmk tests: qemu as root on the test's files, nothing relabelled\n\
             user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nsecurity_driver = \"none\"\n",
        );
        fs::write(&qemu_conf, conf)?;
        for (_, target) in MOUNTS {
            ensure!(
                *target == "/run/libvirt" || Path::new(target).is_dir(),
                "{target} is missing: is libvirt-daemon-system installed?"
            );
        }
        if !Path::new("/run/libvirt").exists() {
            fs::write(NO_RUN_LIBVIRT, b"")?;
        }
        // the daemons' own messages go to a file: they would hold a captured stdout open
        let mut script = format!("set -e\nexec >'{}/daemons.log' 2>&1\n", d.display());
        // a /run of the namespace's own, so that the mount point /run/libvirt is made there
        // and never on the machine's /run (removing it there would detach it in every
        // other test's namespace)
        script.push_str("mount -t tmpfs -o mode=0755 vmk-test-run /run\nmkdir /run/libvirt\n");
        for (sub, target) in MOUNTS {
            script.push_str(&format!(
                "mount --bind '{}/{sub}' '{target}'\n",
                d.display()
            ));
        }
        script.push_str(&format!(
            "virtlogd -d -p '{0}/virtlogd.pid'\nlibvirtd -d -p '{0}/libvirtd.pid'\n",
            d.display()
        ));
        let at = dir.path().to_path_buf();
        let lv = Libvirtd {
            dir,
            _undo: crate::on_interrupt::register(move || stop_at(&at)),
        };
        run_ok({
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
            c
        })
        .context("starting virtlogd and libvirtd in a mount namespace of the test")?;
        let begun = Instant::now();
        while lv.virsh(&["uri"]).is_err() {
            ensure!(
                begun.elapsed() < Duration::from_secs(60),
                "the test's libvirtd did not answer within a minute"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(lv)
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        socket_in(self.dir.path())
    }

    /// The local connection URI of this daemon.
    pub fn uri(&self) -> String {
        uri_of(self.dir.path())
    }

    /// The test's directory (pools may go under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `virsh -c <uri> ARGS…`: its stdout, or an error with its stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        virsh_at(self.dir.path(), args)
    }

    /// Defines, builds and starts a directory storage pool `name` at `dir`.
    pub fn dir_pool(&self, name: &str, dir: &Path) -> Result<()> {
        let target = dir.to_str().context("pool directory is not UTF-8")?;
        self.virsh(&["pool-define-as", name, "dir", "--target", target])?;
        self.virsh(&["pool-build", name])?;
        self.virsh(&["pool-start", name])?;
        Ok(())
    }

    fn stop(&mut self) {
        stop_at(self.dir.path());
        if Path::new(NO_RUN_LIBVIRT).exists() {
            // what virsh leaves on the machine's side (a test beside makes it again)
            let _ = fs::remove_file("/run/libvirt/common/system.token");
            let _ = fs::remove_dir("/run/libvirt/common");
            if fs::remove_dir("/run/libvirt").is_ok() {
                let _ = fs::remove_file(NO_RUN_LIBVIRT);
            }
        }
    }
}

/// The socket of the test's libvirtd whose directory is `dir`.
fn socket_in(dir: &Path) -> PathBuf {
    dir.join("run/libvirt-sock")
}

/// The local connection URI of the test's libvirtd whose directory is `dir`.
fn uri_of(dir: &Path) -> String {
    format!("qemu+unix:///system?socket={}", socket_in(dir).display())
}

/// `virsh -c <uri> ARGS…` to the test's libvirtd whose directory is `dir`.
fn virsh_at(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .arg("-q")
        .args(["-c", &uri_of(dir)])
        .args(args)
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Destroys and undefines every domain of the test's libvirtd in `dir`, then ends its
/// daemons (by the pids they wrote there, checked to be those programs).
fn stop_at(dir: &Path) {
    if let Ok(list) = virsh_at(dir, &["list", "--all", "--name"]) {
        for name in list.lines().map(str::trim).filter(|n| !n.is_empty()) {
            let _ = virsh_at(dir, &["destroy", name]);
            let _ = virsh_at(dir, &["undefine", name]);
        }
    }
    for daemon in ["libvirtd", "virtlogd"] {
        if let Some(pid) = pid_of(&dir.join(format!("{daemon}.pid")), daemon) {
            terminate(pid);
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pid in `pidfile` when it is a live `program` (never another process).
fn pid_of(pidfile: &Path, program: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == program).then_some(pid)
}

/// SIGTERM, then up to 10 s to go, then SIGKILL.
fn terminate(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let begun = Instant::now();
    while kill(pid, None).is_ok() && begun.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if kill(pid, None).is_ok() {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// An sshd of the test's own on a reserved loopback port, for `qemu+ssh://` connections.
#[derive(Debug)]
pub struct TestSshd {
    dir: tempfile::TempDir,
    lease: PortLease,
    /// Ends sshd should the test binary be interrupted.
    _undo: crate::on_interrupt::Registration,
}

impl TestSshd {
    /// Starts it (root only: sshd must switch users) with a new host key and client key.
    pub fn start() -> Result<TestSshd> {
        let dir = tempfile::Builder::new()
            .prefix("vmk-sshd-")
            .tempdir_in("/tmp")
            .context("creating the sshd test directory")?;
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            crate::ssh_keygen(&d.join(key))?;
        }
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        let lease = PortLease::reserve()?;
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\n",
                port = lease.port(),
                d = d.display()
            ),
        )?;
        // the ssh that libvirt runs: the test's key and known_hosts, no user config
        write_executable(
            &d.join("ssh"),
            &format!(
                "#!/bin/sh\nexec ssh -F /dev/null -o UserKnownHostsFile={d}/known_hosts \
                 -o StrictHostKeyChecking=no -o BatchMode=yes -i {d}/client_key \"$@\"\n",
                d = d.display()
            ),
        )?;
        // sshd's privilege separation directory, as openssh-server's own start makes it;
        // left in place (another test's sshd may be using it)
        if !Path::new("/run/sshd").exists() {
            fs::create_dir("/run/sshd")?;
        }
        let pidfile = dir.path().join("sshd.pid");
        let sshd = TestSshd {
            dir,
            lease,
            _undo: crate::on_interrupt::register(move || end_sshd(&pidfile)),
        };
        let program = crate::which("sshd")
            .or_else(|| Some(PathBuf::from("/usr/sbin/sshd")).filter(|p| p.exists()))
            .context("no sshd (apt-get install openssh-server)")?;
        run_ok({
            let mut c = Command::new(program);
            c.arg("-f")
                .arg(sshd.dir.path().join("sshd_config"))
                .arg("-E")
                .arg(sshd.dir.path().join("sshd.log"))
                .stdout(std::process::Stdio::null());
            c
        })
        .context("starting the test's sshd")?;
        let begun = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", sshd.port())).is_err() {
            ensure!(
                begun.elapsed() < Duration::from_secs(30),
                "the test's sshd did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sshd)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    /// The `ssh` wrapper with the test's key and known_hosts.
    pub fn ssh_command(&self) -> PathBuf {
        self.dir.path().join("ssh")
    }

    /// A `qemu+ssh://root@127.0.0.1:PORT/system` URI to `libvirtd` through this sshd.
    pub fn libvirt_uri(&self, libvirtd: &Libvirtd) -> String {
        format!(
            "qemu+ssh://root@127.0.0.1:{}/system?socket={}&command={}&proxy=netcat&no_tty=1",
            self.port(),
            libvirtd.socket().display(),
            self.ssh_command().display()
        )
    }
}

/// Ends the test's sshd whose pidfile is `pidfile`.
fn end_sshd(pidfile: &Path) {
    if let Some(pid) = pid_of(pidfile, "sshd") {
        terminate(pid);
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        end_sshd(&self.dir.path().join("sshd.pid"));
    }
}
