//! The kernel backend (root only): the image on a loop device with its partitions, a qcow2
//! image first exported as a raw file by qemu-storage-daemon's FUSE export; the partition
//! that holds `/etc` is the root, and its fstab says what else to mount.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmk_common::config::DiskFormat;
use vmk_common::qemu_img::FuseExport;
use vmk_common::{loopdev, shell};

use super::journal::{beside, MountState};
use super::{fstab, run_quiet, umount, MountRequest};
use crate::signals::Interrupts;

/// The FUSE export of `req.image` (files beside the image).
fn fuse_export(req: &MountRequest) -> FuseExport {
    FuseExport {
        image: req.image.clone(),
        format: req.format,
        fuse_file: beside(&req.image, ".fuse"),
        pidfile: beside(&req.image, ".qsd.pid"),
    }
}

/// What [`mount`] would do, as shell lines (from the mount point's creation on).
pub(super) fn plan(req: &MountRequest, dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let backing = if req.format == DiskFormat::Raw {
        req.image.clone()
    } else {
        let e = fuse_export(req);
        lines.push(shell::join(["touch".as_ref(), e.fuse_file.as_os_str()]));
        lines.push(e.shell_quoted());
        e.fuse_file
    };
    lines.push(shell::command_line(&loopdev::attach_command(&backing)));
    lines.push(format!(
        "# mount the loop device's partition that holds /etc at {}, then the local filesystems of its /etc/fstab below it",
        shell::quote(dir.as_os_str())
    ));
    lines
}

/// Mounts `req.image` at `state.dir`, recording each step in `state`.
pub(super) fn mount(
    req: &MountRequest,
    state: &mut MountState,
    signals: &Interrupts,
) -> Result<()> {
    let backing = if req.format == DiskFormat::Raw {
        req.image.clone()
    } else {
        export_fuse(req, state)?
    };
    signals.check()?;
    let dev = loopdev::attach(&backing)?;
    state.loop_dev = Some(dev.clone());
    state.save()?;
    signals.check()?;
    let parts = loopdev::partitions(&dev)?;
    let candidates = if parts.is_empty() {
        vec![dev.clone()]
    } else {
        parts.clone()
    };
    let mut root = None;
    for c in &candidates {
        let ty = fstab::fs_type(c);
        if matches!(
            ty.as_deref(),
            None | Some("swap" | "LVM2_member" | "crypto_LUKS")
        ) {
            continue;
        }
        if run_quiet(Command::new("mount").arg(c).arg(&state.dir)).is_err() {
            continue;
        }
        state.mounts.push(state.dir.clone());
        state.save()?;
        if looks_like_root(&state.dir) {
            root = Some(c.clone());
            break;
        }
        umount(&state.dir)?;
        state.mounts.pop();
    }
    let Some(root) = root else {
        bail!(
            "found no root filesystem (one with /etc) on {} ({})",
            req.image.display(),
            dev.display()
        );
    };
    log::info!("root filesystem: {}", root.display());
    fstab::mount_fstab(state, &root, &candidates)?;
    Ok(())
}

/// Exports a non-raw image as a raw file through qemu-storage-daemon's FUSE export;
/// returns the file.
fn export_fuse(req: &MountRequest, state: &mut MountState) -> Result<PathBuf> {
    let e = fuse_export(req);
    // A new file, never whatever is at its path (a planted symlink would make root
    // truncate or export over its target).
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc_o_nofollow())
        .mode(0o600)
        .open(&e.fuse_file)
    {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists already (left by a crashed mount, or planted): check it and remove it",
            e.fuse_file.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("creating {}", e.fuse_file.display())),
    }
    state.fuse_file = Some(e.fuse_file.clone());
    let _ = fs::remove_file(&e.pidfile);
    log::debug!("running {}", e.shell_quoted());
    let status = e
        .command()
        .stdin(Stdio::null())
        .status()
        .context("running qemu-storage-daemon")?;
    if !status.success() {
        bail!(
            "qemu-storage-daemon could not export {} ({status})",
            req.image.display()
        );
    }
    state.qsd_pidfile = Some(e.pidfile);
    state.save()?;
    Ok(e.fuse_file)
}

/// `O_NOFOLLOW` as `OpenOptions` takes it.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Stops the storage daemon named by `pidfile` (only if it is the one exporting `fuse`).
pub(super) fn stop_daemon(pidfile: &Path, fuse: Option<&Path>) -> Result<()> {
    let Some(pid) = vmk_common::state::read_pidfile(pidfile)? else {
        return Ok(());
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("qemu-storage-daemon")
        && fuse.is_none_or(|f| cmdline.contains(&*f.display().to_string()));
    if ours {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if !vmk_common::state::wait_for_exit(pid, Duration::from_secs(10)) {
            bail!("qemu-storage-daemon (pid {pid}) did not exit");
        }
    }
    let _ = fs::remove_file(pidfile);
    Ok(())
}

/// Whether the filesystem mounted at `dir` looks like a Linux root (looked up inside it).
fn looks_like_root(dir: &Path) -> bool {
    let Ok(root) = crate::guestpath::GuestRoot::open(dir) else {
        return false;
    };
    root.open_dir(Path::new("etc")).is_ok()
        && [
            "etc/fstab",
            "etc/os-release",
            "usr/lib/os-release",
            "etc/passwd",
        ]
        .iter()
        .any(|f| root.exists(Path::new(f)))
}
