//! The guestmount backend (libguestfs, `-i`): works without root and for any format, at the
//! price of booting a small appliance VM; and the libguestfs environment that virt-sysprep
//! shares with it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::journal::{beside, MountState};
use super::MountRequest;
use crate::signals::Interrupts;

/// Sets libguestfs's backend to `direct` (no libvirt needed) and, with `force_tcg`, keeps
/// its appliance off KVM, unless the user chose otherwise in the environment.
pub fn libguestfs_env(c: &mut Command, force_tcg: bool) {
    if std::env::var_os("LIBGUESTFS_BACKEND").is_none() {
        c.env("LIBGUESTFS_BACKEND", "direct");
    }
    if force_tcg && std::env::var_os("LIBGUESTFS_BACKEND_SETTINGS").is_none() {
        c.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
}

/// guestmount's pidfile for a mount of `image`.
fn pidfile(image: &Path) -> PathBuf {
    beside(image, ".guestmount.pid")
}

/// `guestmount --format=F -a IMAGE -i --pid-file P DIR` with the libguestfs environment.
pub(super) fn command(req: &MountRequest, dir: &Path) -> Command {
    let mut c = Command::new("guestmount");
    c.arg(format!("--format={}", req.format.as_str()))
        .arg("-a")
        .arg(&req.image)
        .arg("-i")
        .arg("--pid-file")
        .arg(pidfile(&req.image))
        .arg(dir);
    libguestfs_env(&mut c, req.force_tcg);
    c
}

/// `guestunmount DIR`.
pub(super) fn unmount_command(dir: &Path) -> Command {
    let mut c = Command::new("guestunmount");
    c.arg(dir);
    c
}

/// Mounts `req.image` at `state.dir` with guestmount, recording its pidfile in `state`.
pub(super) fn mount(
    req: &MountRequest,
    state: &mut MountState,
    signals: &Interrupts,
) -> Result<()> {
    let pidfile = pidfile(&req.image);
    let _ = fs::remove_file(&pidfile);
    let mut c = command(req, &state.dir);
    c.stdin(Stdio::null());
    state.guestmount_pidfile = Some(pidfile);
    state.save()?;
    let status = c
        .status()
        .context("running guestmount (install libguestfs-tools)")?;
    signals.check()?;
    if !status.success() {
        bail!(
            "guestmount could not mount {} ({status})",
            req.image.display()
        );
    }
    Ok(())
}

/// Unmounts a guestmount at `dir` and waits for guestmount to write the image back.
pub(super) fn unmount(dir: &Path, pidfile: &Path) -> Result<()> {
    let pid = vmk_common::state::read_pidfile(pidfile).unwrap_or(None);
    if vmk_common::mountinfo::is_mount_point(dir) {
        let status = unmount_command(dir)
            .status()
            .context("running guestunmount")?;
        if !status.success() {
            bail!("guestunmount {} failed ({status})", dir.display());
        }
    }
    // guestmount writes the image back until it exits: wait for it.
    if let Some(pid) = pid {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("guestmount")
            && !vmk_common::state::wait_for_exit(pid, Duration::from_secs(60))
        {
            bail!("guestmount (pid {pid}) still runs after unmounting");
        }
    }
    let _ = fs::remove_file(pidfile);
    Ok(())
}
