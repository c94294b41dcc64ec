//! Mounting a VM's disk image on the host, and undoing it completely: the request, the
//! choice of backend, the in-use check, and mounts that last as long as a value.
//!
//! Two backends:
//! - [`kernel`] (root only): the image on a loop device with its partitions (`losetup -P`);
//!   qcow2 images are first exported as a raw file by `qemu-storage-daemon`'s FUSE export.
//!   The root filesystem is found by inspection (the filesystem holding `/etc`), and the
//!   other local filesystems of its `/etc/fstab` are mounted below it ([`fstab`]). Fast
//!   (well under a second).
//! - [`guestmount`] (libguestfs, `-i`): works without root, any format; boots a small
//!   appliance VM, so it takes seconds.
//!
//! Everything a mount set up (mounts, loop device, daemon, guestmount pid, the directory)
//! is recorded in `<image>.mount` beside the image (not inside the mount point, see
//! [`journal`]), so that `vmk umount` — or a later run after a crash — can undo exactly
//! that. A failed mount undoes what it did before returning.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmk_common::config::{Accel, DiskFormat, VmConfig};
use vmk_common::host::which;
use vmk_common::mountinfo::is_mount_point;
use vmk_common::shell;

use crate::signals::Interrupts;

pub mod fstab;
pub mod guestmount;
pub mod journal;
pub mod kernel;

pub use journal::{state_file, MountState};

/// Which way to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// kernel when root (and the tools are there), else guestmount
    Auto,
    /// loop device (+ qemu-storage-daemon FUSE export for qcow2); needs root
    Kernel,
    /// libguestfs guestmount -i
    Guestmount,
}

/// A backend chosen for one mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// Loop device and kernel mounts.
    Kernel,
    /// guestmount.
    Guestmount,
}

impl Chosen {
    /// The backend's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Chosen::Kernel => "kernel",
            Chosen::Guestmount => "guestmount",
        }
    }
}

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// The image (absolute).
    pub image: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The backend asked for.
    pub backend: Backend,
    /// Mount even when a qemu uses the image (no question asked).
    pub force: bool,
    /// libguestfs must not use KVM (VMK_ACCEL=tcg, or no usable /dev/kvm).
    pub force_tcg: bool,
    /// The VM directory (temporary mount points go there).
    pub vm_dir: PathBuf,
}

impl MountRequest {
    /// A request for `image` (disk0 when `None`) of the VM `cfg`.
    pub fn new(
        cfg: &VmConfig,
        image: Option<&Path>,
        backend: Backend,
        force: bool,
    ) -> Result<MountRequest> {
        let disk0 = cfg.disk0()?.to_path_buf();
        let image = match image {
            Some(i) => {
                std::path::absolute(i).with_context(|| format!("resolving {}", i.display()))?
            }
            None => disk0.clone(),
        };
        if !image.is_file() {
            bail!(
                "disk image {} not found (set VMK_DISK0 or run `vmk mkdisk0`)",
                image.display()
            );
        }
        let format = match cfg.disk0_format.filter(|_| image == disk0) {
            Some(f) => f,
            None => DiskFormat::detect(&image)
                .with_context(|| format!("reading {}", image.display()))?,
        };
        let kvm_usable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        Ok(MountRequest {
            image,
            format,
            backend,
            force,
            force_tcg: cfg.accel == Accel::Tcg || !kvm_usable,
            vm_dir: cfg.dir.clone(),
        })
    }

    /// A request for disk0.
    pub fn for_disk0(cfg: &VmConfig, backend: Backend, force: bool) -> Result<MountRequest> {
        Self::new(cfg, None, backend, force)
    }
}

/// The pids of running qemu processes that use `image`, directly or through the snapshot
/// VM's qcow2 overlay `snap-<image>` backed by it.
pub fn qemu_users(image: &Path) -> Result<Vec<u32>> {
    let mut pids = vmk_common::state::qemu_pids_using(image)?;
    if let Some(overlay) = snap_overlay_of(image) {
        pids.extend(vmk_common::state::qemu_pids_using(&overlay)?);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// `snap-<image>` beside `image` when it is a qcow2 overlay whose backing file is `image`.
fn snap_overlay_of(image: &Path) -> Option<PathBuf> {
    let snap = vmk_common::layout::snap_image(image);
    let backing = vmk_common::qemu_img::qcow2_backing_file(&snap)?;
    let backing = snap.parent()?.join(backing);
    let same = fs::canonicalize(&backing).ok()? == fs::canonicalize(image).ok()?;
    same.then_some(snap)
}

/// Refuses (or asks, on a terminal) when the image is mounted already or used by a qemu.
fn check_free(req: &MountRequest) -> Result<()> {
    if let Some(s) = MountState::load(&req.image)? {
        bail!(
            "{} is mounted already at {} ({} backend): run `vmk umount` first",
            req.image.display(),
            s.dir.display(),
            s.backend
        );
    }
    let users = qemu_users(&req.image)?;
    if users.is_empty() || req.force {
        return Ok(());
    }
    let pids = users
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let what = format!(
        "{} is in use by a running qemu (pid {pids}): writing to it now can corrupt it",
        req.image.display()
    );
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("vmk-mount: {what}. Mount anyway? [y/N] ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
        bail!("not mounted");
    }
    bail!("{what}; stop the VM first (`vmk stop`) or pass --force")
}

/// Picks the backend for `req` on this machine.
pub fn choose(req: &MountRequest) -> Result<Chosen> {
    let root = vmk_common::host::is_root();
    let kernel_ok = || -> Result<()> {
        if !root {
            bail!("the kernel backend needs root");
        }
        if which("losetup").is_none() {
            bail!("the kernel backend needs losetup (util-linux)");
        }
        if req.format != DiskFormat::Raw && which("qemu-storage-daemon").is_none() {
            bail!(
                "the kernel backend needs qemu-storage-daemon for {} images",
                req.format.as_str()
            );
        }
        Ok(())
    };
    match req.backend {
        Backend::Kernel => kernel_ok().map(|()| Chosen::Kernel),
        Backend::Guestmount => match which("guestmount") {
            Some(_) => Ok(Chosen::Guestmount),
            None => bail!("guestmount not found: install libguestfs-tools"),
        },
        Backend::Auto => {
            match kernel_ok() {
                Ok(()) => Ok(Chosen::Kernel),
                Err(why) => {
                    if which("guestmount").is_some() {
                        log::info!("not using the kernel backend: {why:#}");
                        Ok(Chosen::Guestmount)
                    } else {
                        bail!("cannot mount: {why:#}, and guestmount is not installed (libguestfs-tools)")
                    }
                }
            }
        }
    }
}

/// What [`mount_at`] would do, as shell lines (commands; `#` lines for steps that depend
/// on what is found), for a dry run.
pub fn plan(req: &MountRequest, dir: &Path) -> Result<Vec<String>> {
    let chosen = choose(req)?;
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mut lines = vec![format!(
        "# mount {} ({}) with the {} backend, each step recorded in {}",
        shell::quote(req.image.as_os_str()),
        req.format.as_str(),
        chosen.as_str(),
        shell::quote(state_file(&req.image).as_os_str())
    )];
    if !dir.exists() {
        lines.push(shell::join(["mkdir".as_ref(), dir.as_os_str()]));
    }
    match chosen {
        Chosen::Kernel => lines.extend(kernel::plan(req, &dir)),
        Chosen::Guestmount => lines.push(shell::command_line(&guestmount::command(req, &dir))),
    }
    Ok(lines)
}

/// Mounts `req.image` at `dir` (created when missing) and records it in the state file.
/// On failure everything done so far is undone.
pub fn mount_at(req: &MountRequest, dir: &Path, signals: &Interrupts) -> Result<MountState> {
    check_free(req)?;
    let chosen = choose(req)?;
    vmk_common::errln!(
        "vmk-mount: mounting {} ({}) at {} with the {} backend",
        req.image.display(),
        req.format.as_str(),
        dir.display(),
        chosen.as_str()
    );
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mut state = MountState {
        backend: chosen.as_str().into(),
        image: req.image.clone(),
        dir: dir.clone(),
        ..MountState::default()
    };
    if !dir.exists() {
        fs::create_dir(&dir).with_context(|| format!("creating mount point {}", dir.display()))?;
        state.created_dir = true;
    } else if is_mount_point(&dir) {
        bail!(
            "{} is a mount point already: unmount it first",
            dir.display()
        );
    } else if fs::read_dir(&dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        bail!("mount point {} is not empty", dir.display());
    }
    state.save()?;
    let result = match chosen {
        Chosen::Kernel => kernel::mount(req, &mut state, signals),
        Chosen::Guestmount => guestmount::mount(req, &mut state, signals),
    };
    match result.and_then(|()| signals.check()) {
        Ok(()) => {
            state.save()?;
            Ok(state)
        }
        Err(e) => {
            if let Err(u) = state.undo() {
                log::error!("{u:#}");
            }
            Err(e)
        }
    }
}

/// `umount DIR`.
pub fn umount_command(dir: &Path) -> Command {
    let mut c = Command::new("umount");
    c.arg(dir);
    c
}

/// Unmounts `dir`, retrying briefly while it is busy.
pub fn umount(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = umount_command(dir).output().context("running umount")?;
        if out.status.success() || !is_mount_point(dir) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "cannot unmount {}: {} (is a shell still inside it? `fuser -m {}`)",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `c` with its output captured; its stderr is the error when it fails.
fn run_quiet(c: &mut Command) -> Result<()> {
    let line = shell::command_line(c);
    log::debug!("running {line}");
    let out = c.output().with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A mount that lasts as long as this value: for commands that change the image and are
/// done (putfile, sshkeyput, chroot…). Reuses a mount that `vmk mount` left in place.
#[derive(Debug)]
pub struct TempMount {
    state: Option<MountState>,
    root: PathBuf,
    signals: Interrupts,
}

impl TempMount {
    /// The mount `vmk mount` left in place for `req.image`, if it is still mounted.
    fn existing(req: &MountRequest) -> Result<Option<PathBuf>> {
        Ok(MountState::load(&req.image)?
            .map(|s| s.dir)
            .filter(|d| is_mount_point(d)))
    }

    /// The fresh mount point in the VM directory.
    fn fresh_dir(req: &MountRequest) -> PathBuf {
        req.vm_dir.join(format!(".vmk-mnt-{}", std::process::id()))
    }

    /// Mounts `req.image` at a fresh directory in the VM directory.
    pub fn mount(req: &MountRequest) -> Result<TempMount> {
        let signals = Interrupts::install()?;
        if let Some(root) = Self::existing(req)? {
            log::info!("using the existing mount at {}", root.display());
            return Ok(TempMount {
                root,
                state: None,
                signals,
            });
        }
        let state = mount_at(req, &Self::fresh_dir(req), &signals)?;
        Ok(TempMount {
            root: state.dir.clone(),
            state: Some(state),
            signals,
        })
    }

    /// What [`TempMount::mount`] would do, for a dry run: the guest's root directory and the
    /// shell lines that mount it. [`TempMount::undo_note`] ends the list.
    pub fn plan(req: &MountRequest) -> Result<(PathBuf, Vec<String>)> {
        if let Some(root) = Self::existing(req)? {
            let line = format!(
                "# using the existing mount at {}",
                shell::quote(root.as_os_str())
            );
            return Ok((root, vec![line]));
        }
        let dir = std::path::absolute(Self::fresh_dir(req))?;
        Ok((dir.clone(), plan(req, &dir)?))
    }

    /// The closing line of a dry run's plan.
    pub fn undo_note() -> &'static str {
        "# then unmount: every step above is undone, backwards"
    }

    /// The guest's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The signal catcher (checked between steps; cleared after an interactive child).
    pub fn signals(&self) -> &Interrupts {
        &self.signals
    }

    /// Unmounts now, reporting failures (dropping does the same, logging them).
    pub fn unmount(mut self) -> Result<()> {
        match self.state.take() {
            Some(mut s) => s.undo(),
            None => Ok(()),
        }
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Some(mut s) = self.state.take() {
            if let Err(e) = s.undo() {
                log::error!("{e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_overlay_of_an_image_is_found_by_its_backing_file() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("disk0");
        fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let snap = vmk_common::layout::snap_image(&base);
        let create = vmk_common::qemu_img::QemuImgCreate::overlay(&snap, "disk0", DiskFormat::Raw);
        vmk_testkit::require(&[vmk_testkit::Need::Program("qemu-img")]);
        create.run().unwrap();
        assert_eq!(snap_overlay_of(&base), Some(snap.clone()));
        assert_eq!(snap_overlay_of(&snap), None);
    }
}
