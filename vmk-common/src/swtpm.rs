//! The TPM 2.0 of VMK_TPM=yes: one `swtpm` per VM instance, its state in one file beside the
//! image it boots ([`crate::layout::tpm_state`], so it travels with the image like the UEFI
//! variable store), its control socket in the instance's runtime directory.
//!
//! Lifetime: vmk starts swtpm just before qemu and stops it after qemu, and swtpm runs with
//! `--terminate`, so it also ends by itself once qemu's connection goes, whichever way qemu
//! ended (killed, crashed, powered off). [`stop`] then only cleans up, or ends a swtpm that
//! qemu never connected to (qemu failed to start). It signals only a process whose pidfile
//! names it AND whose command line is swtpm with this instance's socket.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The swtpm of one instance: where its state, socket, pidfile and log are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm {
    /// The TPM's persistent state (one file, NOCOW).
    pub state: PathBuf,
    /// swtpm's control socket, which qemu's `-chardev` connects to.
    pub socket: PathBuf,
    /// swtpm's pidfile.
    pub pidfile: PathBuf,
    /// swtpm's log.
    pub log: PathBuf,
}

impl Tpm {
    /// The swtpm of the instance whose QMP socket is `qmp_socket` and that boots `image`.
    pub fn for_instance(image: &Path, qmp_socket: &Path) -> Tpm {
        Tpm {
            state: crate::layout::tpm_state(image),
            socket: qmp_socket.with_extension("swtpm"),
            pidfile: qmp_socket.with_extension("swtpm.pid"),
            log: qmp_socket.with_extension("swtpm.log"),
        }
    }

    /// The swtpm command line (a daemon that ends when qemu's connection goes).
    pub fn command(&self, program: &Path) -> Result<Command> {
        for p in [&self.state, &self.socket, &self.pidfile, &self.log] {
            if p.as_os_str().as_bytes().contains(&b',') {
                bail!(
                    "VMK_TPM=yes: swtpm cannot take a path with a comma ({}): rename the image or the VM directory",
                    p.display()
                );
            }
        }
        let mut c = Command::new(program);
        c.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(join("backend-uri=file://", &self.state))
            .arg("--ctrl")
            .arg({
                let mut s = join("type=unixio,path=", &self.socket);
                s.push(",mode=0600");
                s
            })
            .arg("--pid")
            .arg(join("file=", &self.pidfile))
            .arg("--log")
            .arg({
                let mut s = join("file=", &self.log);
                s.push(",level=1");
                s
            })
            .arg("--daemon")
            .arg("--terminate");
        Ok(c)
    }
}

fn join(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

/// The swtpm program, or an error saying what to install.
pub fn program() -> Result<PathBuf> {
    crate::host::which("swtpm")
        .context("VMK_TPM=yes needs swtpm: install it (apt-get install swtpm swtpm-tools), or set VMK_TPM=no")
}

/// Starts the swtpm of `tpm` (stopping one a previous run left behind), after making its
/// state file (NOCOW) when there is none; returns its pid once its socket is there.
pub fn start(tpm: &Tpm) -> Result<u32> {
    stop(tpm)?;
    if fs::symlink_metadata(&tpm.state).is_err() {
        crate::fileops::create_nocow_file(&tpm.state, 0)
            .with_context(|| format!("making the TPM state file {}", tpm.state.display()))?;
    }
    let out = tpm
        .command(&program()?)?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("starting swtpm")?;
    if !out.status.success() {
        bail!(
            "swtpm failed to start ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let (Ok(Some(pid)), true) = (
            crate::state::read_pidfile(&tpm.pidfile),
            tpm.socket.exists(),
        ) {
            log::debug!("swtpm pid {pid} on {}", tpm.socket.display());
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!(
                "swtpm did not make its socket {} within 10 s (log: {})",
                tpm.socket.display(),
                tpm.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when `pid` is swtpm serving `socket` (a gone or reused pid answers false).
pub fn is_instance_swtpm(pid: u32, socket: &Path) -> bool {
    let mut want = b"type=unixio,path=".to_vec();
    want.extend_from_slice(socket.as_os_str().as_bytes());
    want.push(b',');
    crate::state::runs_program_with(pid, "swtpm", |a| a.starts_with(&want))
}

/// Stops the swtpm of `tpm` if one runs ([`crate::state::end_verified`]: SIGTERM, then
/// SIGKILL after 2 s, each only after checking that the pid is still that swtpm) and removes its pidfile and socket. The
/// state file stays.
pub fn stop(tpm: &Tpm) -> Result<()> {
    if let Ok(Some(pid)) = crate::state::read_pidfile(&tpm.pidfile) {
        crate::state::end_verified(pid, "swtpm", |p| is_instance_swtpm(p, &tpm.socket))?;
    }
    crate::state::remove_runtime_files(&[&tpm.pidfile, &tpm.socket]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_command() {
        let t = Tpm::for_instance(Path::new("/vm/d.img"), Path::new("/run/vmk/d.img.qmp"));
        assert_eq!(t.state, Path::new("/vm/d.img.tpm"));
        assert_eq!(t.socket, Path::new("/run/vmk/d.img.swtpm"));
        let c = t.command(Path::new("/usr/bin/swtpm")).unwrap();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "socket --tpm2 --tpmstate backend-uri=file:///vm/d.img.tpm \
             --ctrl type=unixio,path=/run/vmk/d.img.swtpm,mode=0600 \
             --pid file=/run/vmk/d.img.swtpm.pid --log file=/run/vmk/d.img.swtpm.log,level=1 \
             --daemon --terminate"
        );
        let comma = Tpm::for_instance(Path::new("/vm/a,b.img"), Path::new("/vm/a,b.img.qmp"));
        let e = comma.command(Path::new("swtpm")).unwrap_err().to_string();
        assert!(e.contains("comma"), "{e}");
    }

    #[test]
    fn this_process_is_no_swtpm() {
        assert!(!is_instance_swtpm(std::process::id(), Path::new("/x")));
    }
}
