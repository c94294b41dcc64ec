//! Mounting a VM's disk image on the host, and undoing it completely.
//!
//! Two backends:
//! - `kernel` (root only): the image on a loop device with its partitions (`losetup -P`);
//!   qcow2 images are first exported as a raw file by `qemu-storage-daemon`'s FUSE export.
//!   The root filesystem is found by inspection (the filesystem holding `/etc`), and the
//!   other local filesystems of its `/etc/fstab` are mounted below it (e.g. btrfs subvolumes).
//!   Fast (well under a second).
//! - `guestmount` (libguestfs, `-i`): works without root, any format; boots a small
//!   appliance VM, so it takes seconds.
//!
//! Everything a mount set up (mounts, loop device, daemon, guestmount pid, the directory)
//! is recorded in `<image>.mount` beside the image (not inside the mount point), so that
//! `vmk umount` — or a later run after a crash — can undo exactly that. A failed mount
//! undoes what it did before returning.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmk_common::config::{Accel, DiskFormat, VmConfig};

use crate::signals::Interrupts;

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

/// What a mount set up, in the order to undo it backwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountState {
    /// The backend used ("kernel" or "guestmount").
    pub backend: String,
    /// The image.
    pub image: PathBuf,
    /// The mount point of the image's root.
    pub dir: PathBuf,
    /// The mount point was created by vmk (removed again when empty).
    pub created_dir: bool,
    /// qemu-storage-daemon's pidfile (its FUSE export of a qcow2 image).
    pub qsd_pidfile: Option<PathBuf>,
    /// The FUSE export file (qcow2 as raw).
    pub fuse_file: Option<PathBuf>,
    /// The loop device.
    pub loop_dev: Option<PathBuf>,
    /// guestmount's pidfile.
    pub guestmount_pidfile: Option<PathBuf>,
    /// Kernel mounts, in the order they were made.
    pub mounts: Vec<PathBuf>,
}

/// `<image>.mount`: where the state of a mount of `image` is kept.
pub fn state_file(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_os_string();
    s.push(".mount");
    PathBuf::from(s)
}

impl MountState {
    /// The state file's text: `key=value` lines.
    pub fn to_text(&self) -> String {
        let mut t = String::from("# vmk mount state: undo with `vmk umount`\n");
        let mut line = |k: &str, v: &Path| t.push_str(&format!("{k}={}\n", v.display()));
        line("backend", Path::new(&self.backend));
        line("image", &self.image);
        line("dir", &self.dir);
        if self.created_dir {
            line("created_dir", Path::new("yes"));
        }
        for (k, v) in [
            ("qsd_pidfile", &self.qsd_pidfile),
            ("fuse_file", &self.fuse_file),
            ("loop_dev", &self.loop_dev),
            ("guestmount_pidfile", &self.guestmount_pidfile),
        ] {
            if let Some(v) = v {
                line(k, v);
            }
        }
        for m in &self.mounts {
            line("mount", m);
        }
        t
    }

    /// Parses [`MountState::to_text`].
    pub fn parse(text: &str) -> Result<MountState> {
        let mut s = MountState::default();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (k, v) = line
                .split_once('=')
                .with_context(|| format!("bad line in mount state: {line:?}"))?;
            let p = PathBuf::from(v);
            match k {
                "backend" => s.backend = v.to_string(),
                "image" => s.image = p,
                "dir" => s.dir = p,
                "created_dir" => s.created_dir = v == "yes",
                "qsd_pidfile" => s.qsd_pidfile = Some(p),
                "fuse_file" => s.fuse_file = Some(p),
                "loop_dev" => s.loop_dev = Some(p),
                "guestmount_pidfile" => s.guestmount_pidfile = Some(p),
                "mount" => s.mounts.push(p),
                _ => bail!("unknown key {k:?} in mount state"),
            }
        }
        if s.image.as_os_str().is_empty() || s.dir.as_os_str().is_empty() {
            bail!("mount state lacks image or dir");
        }
        Ok(s)
    }

    /// Reads the state of `image`'s mount, if it is mounted.
    pub fn load(image: &Path) -> Result<Option<MountState>> {
        let f = state_file(image);
        match fs::read_to_string(&f) {
            Ok(t) => MountState::parse(&t)
                .map(Some)
                .with_context(|| format!("reading {}", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", f.display())),
        }
    }

    /// Writes the state file (atomically).
    pub fn save(&self) -> Result<()> {
        let f = state_file(&self.image);
        let tmp = f.with_extension("mount.tmp");
        fs::write(&tmp, self.to_text()).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &f).with_context(|| format!("writing {}", f.display()))
    }

    fn is_empty(&self) -> bool {
        self.mounts.is_empty()
            && self.loop_dev.is_none()
            && self.qsd_pidfile.is_none()
            && self.fuse_file.is_none()
            && self.guestmount_pidfile.is_none()
            && !self.created_dir
    }

    /// Undoes everything, backwards; what could not be undone stays in the state file
    /// (so `vmk umount` can try again) and is reported.
    pub fn undo(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Some(pidfile) = self.guestmount_pidfile.clone() {
            match undo_guestmount(&self.dir, &pidfile) {
                Ok(()) => self.guestmount_pidfile = None,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        while let Some(m) = self.mounts.last().cloned() {
            if let Err(e) = umount(&m) {
                errors.push(format!("{e:#}"));
                break;
            }
            self.mounts.pop();
        }
        if let Some(dev) = self.loop_dev.clone() {
            if self.mounts.is_empty() {
                match detach_loop(&dev) {
                    Ok(()) => self.loop_dev = None,
                    Err(e) => errors.push(format!("detaching {}: {e:#}", dev.display())),
                }
            }
        }
        if let Some(pidfile) = self.qsd_pidfile.clone() {
            if self.loop_dev.is_none() {
                match stop_daemon(&pidfile, self.fuse_file.as_deref()) {
                    Ok(()) => self.qsd_pidfile = None,
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        if let Some(f) = self.fuse_file.clone() {
            if self.qsd_pidfile.is_none() {
                let _ = fs::remove_file(&f);
                self.fuse_file = None;
            }
        }
        if self.created_dir && self.mounts.is_empty() && self.guestmount_pidfile.is_none() {
            // rmdir only: never delete anything that might be the guest's.
            match fs::remove_dir(&self.dir) {
                Ok(()) => self.created_dir = false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.created_dir = false,
                Err(e) => {
                    log::warn!("leaving {}: {e}", self.dir.display());
                    self.created_dir = false;
                }
            }
        }
        let f = state_file(&self.image);
        if self.is_empty() {
            let _ = fs::remove_file(&f);
        } else {
            self.save()?;
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "could not undo everything ({}); state kept in {}: fix and run `vmk umount` again",
                errors.join("; "),
                f.display()
            ))
        }
    }
}

/// The pids of running qemu processes that use `image`, directly or through the snapshot
/// VM's qcow2 overlay `snap-<image>` backed by it.
pub fn qemu_users(image: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut images = vec![image.to_path_buf()];
    if let Some(overlay) = snap_overlay_of(image) {
        images.push(overlay);
    }
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            images
                .iter()
                .any(|i| vmk_common::state::is_vm_qemu(pid, i).unwrap_or(false))
        })
        .collect()
}

/// `snap-<image>` beside `image` when it is a qcow2 overlay whose backing file is `image`.
fn snap_overlay_of(image: &Path) -> Option<PathBuf> {
    let mut name = std::ffi::OsString::from("snap-");
    name.push(image.file_name()?);
    let snap = image.with_file_name(name);
    let backing = qcow2_backing_file(&snap)?;
    let backing = snap.parent()?.join(backing);
    let same = fs::canonicalize(&backing).ok()? == fs::canonicalize(image).ok()?;
    same.then_some(snap)
}

/// The backing file name in a qcow2 header, if any.
pub fn qcow2_backing_file(path: &Path) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::ffi::OsStringExt;
    let mut f = fs::File::open(path).ok()?;
    let mut h = [0u8; 20];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(h[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(h[16..20].try_into().ok()?) as usize;
    if offset == 0 || size == 0 || size > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size];
    f.read_exact(&mut name).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(name)))
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
    let users = qemu_users(&req.image);
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
    let root = nix::unistd::Uid::effective().is_root();
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

/// Mounts `req.image` at `dir` (created when missing) and records it in the state file.
/// On failure everything done so far is undone.
pub fn mount_at(req: &MountRequest, dir: &Path, signals: &Interrupts) -> Result<MountState> {
    check_free(req)?;
    let chosen = choose(req)?;
    eprintln!(
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
    } else if is_mountpoint(&dir) {
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
        Chosen::Kernel => mount_kernel(req, &mut state, signals),
        Chosen::Guestmount => mount_guestmount(req, &mut state, signals),
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

fn mount_kernel(req: &MountRequest, state: &mut MountState, signals: &Interrupts) -> Result<()> {
    let backing = if req.format == DiskFormat::Raw {
        req.image.clone()
    } else {
        export_fuse(req, state)?;
        state.fuse_file.clone().expect("set by export_fuse")
    };
    signals.check()?;
    let out = Command::new("losetup")
        .args(["-P", "--find", "--show"])
        .arg(&backing)
        .stderr(Stdio::inherit())
        .output()
        .context("running losetup")?;
    if !out.status.success() {
        bail!("losetup -P --find --show {} failed", backing.display());
    }
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    state.loop_dev = Some(dev.clone());
    state.save()?;
    signals.check()?;
    let parts = partitions(&dev)?;
    let candidates = if parts.is_empty() {
        vec![dev.clone()]
    } else {
        parts.clone()
    };
    let mut root = None;
    for c in &candidates {
        let ty = fs_type(c);
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
    mount_fstab(state, &root, &candidates)?;
    Ok(())
}

/// Exports a non-raw image as a raw file through qemu-storage-daemon's FUSE export.
fn export_fuse(req: &MountRequest, state: &mut MountState) -> Result<()> {
    let mut fuse = req.image.as_os_str().to_os_string();
    fuse.push(".fuse");
    let fuse = PathBuf::from(fuse);
    let mut pidfile = req.image.as_os_str().to_os_string();
    pidfile.push(".qsd.pid");
    let pidfile = PathBuf::from(pidfile);
    fs::File::create(&fuse).with_context(|| format!("creating {}", fuse.display()))?;
    state.fuse_file = Some(fuse.clone());
    let _ = fs::remove_file(&pidfile);
    let q = |p: &Path| p.display().to_string().replace(',', ",,");
    let status = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=file0",
            q(&req.image)
        ))
        .arg("--blockdev")
        .arg(format!(
            "driver={},file=file0,node-name=disk0",
            req.format.as_str()
        ))
        .arg("--export")
        .arg(format!(
            "type=fuse,id=export0,node-name=disk0,mountpoint={},writable=on",
            q(&fuse)
        ))
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--daemonize")
        .stdin(Stdio::null())
        .status()
        .context("running qemu-storage-daemon")?;
    if !status.success() {
        bail!(
            "qemu-storage-daemon could not export {} ({status})",
            req.image.display()
        );
    }
    state.qsd_pidfile = Some(pidfile);
    state.save()
}

/// Stops the storage daemon named by `pidfile` (only if it is the one exporting `fuse`).
fn stop_daemon(pidfile: &Path, fuse: Option<&Path>) -> Result<()> {
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

fn mount_guestmount(
    req: &MountRequest,
    state: &mut MountState,
    signals: &Interrupts,
) -> Result<()> {
    let mut pidfile = req.image.as_os_str().to_os_string();
    pidfile.push(".guestmount.pid");
    let pidfile = PathBuf::from(pidfile);
    let _ = fs::remove_file(&pidfile);
    let mut c = Command::new("guestmount");
    c.arg(format!("--format={}", req.format.as_str()))
        .arg("-a")
        .arg(&req.image)
        .arg("-i")
        .arg("--pid-file")
        .arg(&pidfile)
        .arg(&state.dir)
        .stdin(Stdio::null());
    if std::env::var_os("LIBGUESTFS_BACKEND").is_none() {
        c.env("LIBGUESTFS_BACKEND", "direct");
    }
    if req.force_tcg && std::env::var_os("LIBGUESTFS_BACKEND_SETTINGS").is_none() {
        c.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
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

fn undo_guestmount(dir: &Path, pidfile: &Path) -> Result<()> {
    let pid = vmk_common::state::read_pidfile(pidfile).unwrap_or(None);
    if is_mountpoint(dir) {
        let status = Command::new("guestunmount")
            .arg(dir)
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

/// Mounts the other local filesystems of the guest's /etc/fstab below the root.
fn mount_fstab(state: &mut MountState, root_dev: &Path, devices: &[PathBuf]) -> Result<()> {
    let Ok(fstab) = fs::read_to_string(state.dir.join("etc/fstab")) else {
        return Ok(());
    };
    let ids: Vec<(PathBuf, Vec<(String, String)>)> =
        devices.iter().map(|d| (d.clone(), blkid_tags(d))).collect();
    for e in parse_fstab(&fstab) {
        if e.target == "/" || !e.target.starts_with('/') || e.options.iter().any(|o| o == "noauto")
        {
            continue;
        }
        const SKIP: &[&str] = &[
            "swap",
            "proc",
            "sysfs",
            "tmpfs",
            "devpts",
            "devtmpfs",
            "nfs",
            "nfs4",
            "cifs",
            "none",
            "efivarfs",
            "securityfs",
            "cgroup",
            "cgroup2",
            "debugfs",
            "sshfs",
        ];
        if SKIP.contains(&e.fstype.as_str()) {
            continue;
        }
        let Some(dev) = resolve_fstab_device(&e.source, &ids, root_dev) else {
            log::info!(
                "fstab: {} ({}) is not on this image: skipped",
                e.target,
                e.source
            );
            continue;
        };
        let target = state.dir.join(e.target.trim_start_matches('/'));
        if !target.is_dir() {
            log::info!("fstab: {} does not exist in the image: skipped", e.target);
            continue;
        }
        let keep: Vec<&str> = e
            .options
            .iter()
            .map(String::as_str)
            .filter(|o| o.starts_with("subvol=") || o.starts_with("subvolid="))
            .collect();
        let mut c = Command::new("mount");
        if !keep.is_empty() {
            c.arg("-o").arg(keep.join(","));
        }
        c.arg(&dev).arg(&target);
        match run_quiet(&mut c) {
            Ok(()) => {
                state.mounts.push(target);
                state.save()?;
            }
            Err(err) => log::warn!("fstab: could not mount {}: {err:#}", e.target),
        }
    }
    Ok(())
}

/// One line of an fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// Device spec (UUID=…, LABEL=…, /dev/…).
    pub source: String,
    /// Mount point.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// Options.
    pub options: Vec<String>,
}

/// Parses fstab text (comments and short lines skipped; `\040` is a space).
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| FstabEntry {
                source: f[0].replace("\\040", " "),
                target: f[1].replace("\\040", " "),
                fstype: f[2].to_string(),
                options: f
                    .get(3)
                    .map(|o| o.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Which of our devices an fstab source names (by UUID, LABEL, PARTUUID, PARTLABEL, or a
/// `/dev/<disk><N>` name taken as partition N).
fn resolve_fstab_device(
    source: &str,
    ids: &[(PathBuf, Vec<(String, String)>)],
    root_dev: &Path,
) -> Option<PathBuf> {
    if let Some((tag, value)) = source.split_once('=') {
        let value = value.trim_matches('"');
        return ids
            .iter()
            .find(|(_, tags)| tags.iter().any(|(k, v)| k == tag && v == value))
            .map(|(d, _)| d.clone());
    }
    let name = source.strip_prefix("/dev/")?;
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        return (ids.len() == 1).then(|| root_dev.to_path_buf());
    }
    let n: String = digits.chars().rev().collect();
    ids.iter()
        .map(|(d, _)| d)
        .find(|d| d.to_string_lossy().ends_with(&format!("p{n}")))
        .cloned()
}

/// `blkid -o export DEV` as tag pairs.
fn blkid_tags(dev: &Path) -> Vec<(String, String)> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    })
    .unwrap_or_default()
}

fn fs_type(dev: &Path) -> Option<String> {
    blkid_tags(dev)
        .into_iter()
        .find(|(k, _)| k == "TYPE")
        .map(|(_, v)| v)
}

/// The partition devices of a loop device (`/dev/loop0p1`…), in order.
fn partitions(dev: &Path) -> Result<Vec<PathBuf>> {
    let name = dev
        .file_name()
        .context("loop device without a name")?
        .to_string_lossy()
        .into_owned();
    let sys = Path::new("/sys/block").join(&name);
    let mut parts: Vec<(u32, PathBuf)> = fs::read_dir(&sys)
        .with_context(|| format!("reading {}", sys.display()))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let num = n.strip_prefix(&format!("{name}p"))?.parse().ok()?;
            Some((num, Path::new("/dev").join(n)))
        })
        .collect();
    parts.sort();
    // devtmpfs creates the nodes; give it a moment on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, p) in &parts {
        while !p.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(parts.into_iter().map(|(_, p)| p).collect())
}

fn looks_like_root(dir: &Path) -> bool {
    dir.join("etc").is_dir()
        && [
            "etc/fstab",
            "etc/os-release",
            "usr/lib/os-release",
            "etc/passwd",
        ]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// True when `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(dir) else {
        return false;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_str()))
}

/// Unmounts `dir`, retrying briefly while it is busy.
pub fn umount(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = Command::new("umount")
            .arg(dir)
            .output()
            .context("running umount")?;
        if out.status.success() || !is_mountpoint(dir) {
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

/// Detaches a loop device and waits until it is really gone: while something (udev's
/// probe of the partitions, a closing mount) still holds it, `losetup -d` only marks it
/// for detaching and returns at once.
fn detach_loop(dev: &Path) -> Result<()> {
    run_quiet(Command::new("losetup").arg("-d").arg(dev))?;
    let Some(name) = dev.file_name() else {
        return Ok(());
    };
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    let deadline = Instant::now() + Duration::from_secs(10);
    while backing.exists() {
        if Instant::now() > deadline {
            bail!(
                "{} is still attached 10 s after `losetup -d` (something holds it open)",
                dev.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn run_quiet(c: &mut Command) -> Result<()> {
    log::debug!("running {c:?}");
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
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
    /// Mounts `req.image` at a fresh directory in the VM directory.
    pub fn mount(req: &MountRequest) -> Result<TempMount> {
        let signals = Interrupts::install()?;
        if let Some(s) = MountState::load(&req.image)? {
            if is_mountpoint(&s.dir) {
                log::info!("using the existing mount at {}", s.dir.display());
                return Ok(TempMount {
                    root: s.dir,
                    state: None,
                    signals,
                });
            }
        }
        let dir = req.vm_dir.join(format!(".vmk-mnt-{}", std::process::id()));
        let state = mount_at(req, &dir, &signals)?;
        Ok(TempMount {
            root: state.dir.clone(),
            state: Some(state),
            signals,
        })
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
    fn state_round_trips() {
        let s = MountState {
            backend: "kernel".into(),
            image: "/vm/disk0".into(),
            dir: "/vm/mnt-disk0".into(),
            created_dir: true,
            qsd_pidfile: Some("/vm/disk0.qsd.pid".into()),
            fuse_file: Some("/vm/disk0.fuse".into()),
            loop_dev: Some("/dev/loop3".into()),
            guestmount_pidfile: None,
            mounts: vec!["/vm/mnt-disk0".into(), "/vm/mnt-disk0/home".into()],
        };
        assert_eq!(MountState::parse(&s.to_text()).unwrap(), s);
        assert_eq!(
            state_file(Path::new("/vm/disk0")),
            Path::new("/vm/disk0.mount")
        );
        assert!(MountState::parse("backend=kernel\n").is_err());
    }

    #[test]
    fn overlay_backing_file_is_read_from_the_qcow2_header() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("disk0");
        fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "disk0"])
            .arg(d.path().join("snap-disk0"))
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("qemu-img not usable: skipped");
            return;
        }
        assert_eq!(
            qcow2_backing_file(&d.path().join("snap-disk0")),
            Some(PathBuf::from("disk0"))
        );
        assert_eq!(snap_overlay_of(&base), Some(d.path().join("snap-disk0")));
        assert_eq!(qcow2_backing_file(&base), None);
    }

    #[test]
    fn fstab_entries_resolve_to_our_partitions() {
        let fstab = "# comment\nUUID=aaa / btrfs defaults 0 0\n\
                     UUID=aaa /home btrfs subvol=@/home 0 0\n\
                     LABEL=EFI /boot/efi vfat umask=0077 0 2\n\
                     /dev/vda3 /srv ext4 noauto 0 0\n/dev/sda9 /data ext4 defaults 0 0\n\
                     proc /proc proc defaults 0 0\n";
        let e = parse_fstab(fstab);
        assert_eq!(e.len(), 6);
        assert_eq!(e[1].options, vec!["subvol=@/home"]);
        let ids = vec![
            (
                PathBuf::from("/dev/loop0p1"),
                vec![("LABEL".into(), "EFI".into())],
            ),
            (
                PathBuf::from("/dev/loop0p2"),
                vec![("UUID".into(), "aaa".into())],
            ),
        ];
        let root = Path::new("/dev/loop0p2");
        assert_eq!(
            resolve_fstab_device("UUID=aaa", &ids, root),
            Some(PathBuf::from("/dev/loop0p2"))
        );
        assert_eq!(
            resolve_fstab_device("LABEL=EFI", &ids, root),
            Some(PathBuf::from("/dev/loop0p1"))
        );
        assert_eq!(
            resolve_fstab_device("/dev/vda1", &ids, root),
            Some(PathBuf::from("/dev/loop0p1"))
        );
        assert_eq!(resolve_fstab_device("/dev/sda9", &ids, root), None);
        assert_eq!(resolve_fstab_device("UUID=zzz", &ids, root), None);
    }
}
