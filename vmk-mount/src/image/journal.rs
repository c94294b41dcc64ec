//! The mount journal `<image>.mount`: every step a mount took (mount point, daemon, loop
//! device, kernel mounts, guestmount), written as it is taken, so that `vmk umount` — or a
//! later run after a crash — undoes exactly that, backwards.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::OFlags;
use vmk_common::shell;

use super::{guestmount, kernel, umount, umount_command};

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
    beside(image, ".mount")
}

/// `<image><suffix>`: the files a mount keeps beside the image (state, pidfiles, export).
pub(super) fn beside(image: &Path, suffix: &str) -> PathBuf {
    let mut s = image.as_os_str().to_os_string();
    s.push(suffix);
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

    /// Reads the state of `image`'s mount, if it is mounted (validated, see
    /// [`MountState::load_file`]).
    pub fn load(image: &Path) -> Result<Option<MountState>> {
        MountState::load_file(&state_file(image))
    }

    /// Reads and validates the state file `f`; `None` when there is none. The file is
    /// opened without following a symlink, must be owned by this user or root and writable
    /// by nobody else, and must name only what vmk creates for a mount of the image it
    /// lies beside (see [`MountState::validate`]): `umount` acts on what it names.
    pub fn load_file(f: &Path) -> Result<Option<MountState>> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
            .open(f)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                bail!(
                    "refusing the mount state {}: it is a symlink, not a file vmk wrote; \
                     check and remove it",
                    f.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", f.display()))?;
        let euid = rustix::process::geteuid().as_raw();
        if !meta.is_file() || (meta.uid() != euid && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
            bail!(
                "refusing the mount state {}: not a regular file owned by this user or root \
                 and writable by nobody else; check and remove it",
                f.display()
            );
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &file, &mut text)
            .with_context(|| format!("reading {}", f.display()))?;
        let s = MountState::parse(&text).with_context(|| format!("reading {}", f.display()))?;
        s.validate(f).with_context(|| {
            format!(
                "refusing the mount state {}: it was not written by vmk (nothing was \
                 touched); check and remove it",
                f.display()
            )
        })?;
        Ok(Some(s))
    }

    /// Fails unless every path this state names is one vmk makes for a mount of
    /// `self.image` recorded in `journal`: the journal, pidfiles and FUSE export beside the
    /// image, a loop device `/dev/loopN`, and mounts at or below the mount point.
    pub fn validate(&self, journal: &Path) -> Result<()> {
        if !matches!(self.backend.as_str(), "kernel" | "guestmount") {
            bail!("unknown backend {:?}", self.backend);
        }
        if !self.image.is_absolute() || state_file(&self.image) != journal {
            bail!(
                "it names the image {}, not the one it lies beside",
                self.image.display()
            );
        }
        if !is_plain_absolute(&self.dir) || self.dir.parent().is_none() {
            bail!(
                "its mount point {} is not a plain absolute path",
                self.dir.display()
            );
        }
        for m in &self.mounts {
            if !is_plain_absolute(m) || !m.starts_with(&self.dir) {
                bail!(
                    "it names a mount {} outside the mount point {}",
                    m.display(),
                    self.dir.display()
                );
            }
        }
        if !self.mounts.is_empty() && (self.backend != "kernel" || self.loop_dev.is_none()) {
            bail!("it names kernel mounts without a loop device");
        }
        if let Some(dev) = &self.loop_dev {
            if !is_loop_device_name(dev) {
                bail!("{} is not a loop device", dev.display());
            }
        }
        for (got, suffix) in [
            (&self.fuse_file, ".fuse"),
            (&self.qsd_pidfile, ".qsd.pid"),
            (&self.guestmount_pidfile, ".guestmount.pid"),
        ] {
            if let Some(p) = got {
                if *p != beside(&self.image, suffix) {
                    bail!(
                        "it names {}, not {}",
                        p.display(),
                        beside(&self.image, suffix).display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes the state file (atomically): a new temporary file (never whatever is at its
    /// path), renamed over the state file (which replaces a symlink there, never follows it).
    pub fn save(&self) -> Result<()> {
        let f = state_file(&self.image);
        let tmp = beside(&self.image, &format!(".mount.tmp-{}", std::process::id()));
        let create = || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(OFlags::NOFOLLOW.bits() as i32)
                .mode(0o644)
                .open(&tmp)
        };
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left by a crash of a process with our pid, or planted: the name goes
                // (unlink never follows a symlink), a new file comes.
                fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
                create()
            }
            r => r,
        }
        .with_context(|| format!("creating {}", tmp.display()))?;
        let written = std::io::Write::write_all(&mut file, self.to_text().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &f)) {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", f.display()));
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.mounts.is_empty()
            && self.loop_dev.is_none()
            && self.qsd_pidfile.is_none()
            && self.fuse_file.is_none()
            && self.guestmount_pidfile.is_none()
            && !self.created_dir
    }

    /// What [`MountState::undo`] would do, as shell lines (for a dry run).
    pub fn undo_plan(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(pidfile) = &self.guestmount_pidfile {
            lines.push(shell::command_line(&guestmount::unmount_command(&self.dir)));
            lines.push(format!(
                "# wait for guestmount (pid in {}) to write the image back and exit",
                shell::quote(pidfile.as_os_str())
            ));
        }
        for m in self.mounts.iter().rev() {
            lines.push(shell::command_line(&umount_command(m)));
        }
        if let Some(dev) = &self.loop_dev {
            lines.push(shell::command_line(&vmk_common::loopdev::detach_command(
                dev,
            )));
        }
        if let Some(pidfile) = &self.qsd_pidfile {
            lines.push(format!(
                "kill \"$(cat {})\"  # qemu-storage-daemon, then wait for it to exit",
                shell::quote(pidfile.as_os_str())
            ));
        }
        if let Some(f) = &self.fuse_file {
            lines.push(shell::join([
                "rm".as_ref(),
                "-f".as_ref(),
                "--".as_ref(),
                f.as_os_str(),
            ]));
        }
        if self.created_dir {
            lines.push(shell::join(["rmdir".as_ref(), self.dir.as_os_str()]));
        }
        let f = state_file(&self.image);
        lines.push(shell::join(["rm".as_ref(), "--".as_ref(), f.as_os_str()]));
        lines
    }

    /// Fails unless what is mounted at `m` (if anything) is the loop device's, reached
    /// from the mount point without a symlink: `umount` unmounts only what vmk mounted.
    fn check_ours(&self, m: &Path) -> Result<()> {
        let Some(mounted) = top_mount(&canonical_below(&self.dir, m)) else {
            return Ok(());
        };
        if let Ok(rel) = m.strip_prefix(&self.dir) {
            if !rel.as_os_str().is_empty() {
                let dir = rustix::fs::open(
                    &self.dir,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?;
                rustix::fs::openat2(
                    &dir,
                    rel,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                    rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
                )
                .with_context(|| {
                    format!(
                        "refusing to unmount {}: the path below {} is no longer plain \
                         directories (a symlink?)",
                        m.display(),
                        self.dir.display()
                    )
                })?;
            }
        }
        let ours = self.loop_dev.as_ref().is_some_and(|dev| {
            let dev = dev.to_string_lossy();
            mounted.source == *dev
                || mounted
                    .source
                    .strip_prefix(&format!("{dev}p"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if !ours {
            bail!(
                "refusing to unmount {}: mounted there is {} ({}), not vmk's loop device",
                m.display(),
                mounted.source,
                mounted.fstype
            );
        }
        Ok(())
    }

    /// Fails unless `dev` is attached to the image or its FUSE export (or to nothing).
    fn check_loop(&self, dev: &Path) -> Result<()> {
        let Some(name) = dev.file_name() else {
            bail!("{} is not a loop device", dev.display());
        };
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        let Ok(text) = fs::read_to_string(&backing) else {
            return Ok(()); // not attached (any more)
        };
        let text = text.trim_end_matches('\n');
        let ok = [Some(&self.image), self.fuse_file.as_ref()]
            .into_iter()
            .flatten()
            .any(|p| Path::new(text) == p);
        if !ok {
            bail!(
                "refusing to detach {}: it is attached to {text}, not to {}",
                dev.display(),
                self.image.display()
            );
        }
        Ok(())
    }

    /// Fails unless what is mounted at the mount point (if anything) is a FUSE mount.
    fn check_guestmount(&self) -> Result<()> {
        match top_mount(&canonical_below(&self.dir, &self.dir)) {
            Some(m) if !m.fstype.starts_with("fuse") => bail!(
                "refusing to unmount {}: mounted there is {} ({}), not guestmount",
                self.dir.display(),
                m.source,
                m.fstype
            ),
            _ => Ok(()),
        }
    }

    /// Undoes everything, backwards; what could not be undone stays in the state file
    /// (so `vmk umount` can try again) and is reported.
    pub fn undo(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Some(pidfile) = self.guestmount_pidfile.clone() {
            match self
                .check_guestmount()
                .and_then(|()| guestmount::unmount(&self.dir, &pidfile))
            {
                Ok(()) => self.guestmount_pidfile = None,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        while let Some(m) = self.mounts.last().cloned() {
            if let Err(e) = self.check_ours(&m).and_then(|()| umount(&m)) {
                errors.push(format!("{e:#}"));
                break;
            }
            self.mounts.pop();
        }
        if let Some(dev) = self.loop_dev.clone() {
            if self.mounts.is_empty() {
                match self
                    .check_loop(&dev)
                    .and_then(|()| vmk_common::loopdev::detach(&dev))
                {
                    Ok(()) => self.loop_dev = None,
                    Err(e) => errors.push(format!("detaching {}: {e:#}", dev.display())),
                }
            }
        }
        if let Some(pidfile) = self.qsd_pidfile.clone() {
            if self.loop_dev.is_none() {
                match kernel::stop_daemon(&pidfile, self.fuse_file.as_deref()) {
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

/// The source and type of the topmost mount at `path`, from /proc/self/mountinfo.
struct Mounted {
    source: String,
    fstype: String,
}

fn top_mount(path: &Path) -> Option<Mounted> {
    use std::os::unix::ffi::OsStrExt;
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    text.lines()
        .rev()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let source = post.next()?;
            (vmk_common::mountinfo::unescape(point) == want).then(|| Mounted {
                source: String::from_utf8_lossy(&vmk_common::mountinfo::unescape(source))
                    .into_owned(),
                fstype: fstype.to_string(),
            })
        })
        .next()
}

/// `m` (at or below `dir`) with `dir` canonical, as mountinfo names it.
fn canonical_below(dir: &Path, m: &Path) -> PathBuf {
    let rel = m.strip_prefix(dir).unwrap_or(Path::new(""));
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if rel.as_os_str().is_empty() {
        dir
    } else {
        dir.join(rel)
    }
}

/// Absolute, without `.`, `..` or empty components.
fn is_plain_absolute(p: &Path) -> bool {
    let text = p.as_os_str().to_string_lossy();
    p.is_absolute()
        && !text.contains("//")
        && (text == "/" || !text.ends_with('/'))
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !text.split('/').any(|c| c == ".")
}

/// `/dev/loopN`.
fn is_loop_device_name(p: &Path) -> bool {
    p.to_str()
        .and_then(|s| s.strip_prefix("/dev/loop"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MountState {
        MountState {
            backend: "kernel".into(),
            image: "/vm/disk0".into(),
            dir: "/vm/mnt-disk0".into(),
            created_dir: true,
            qsd_pidfile: Some("/vm/disk0.qsd.pid".into()),
            fuse_file: Some("/vm/disk0.fuse".into()),
            loop_dev: Some("/dev/loop3".into()),
            guestmount_pidfile: None,
            mounts: vec!["/vm/mnt-disk0".into(), "/vm/mnt disk0/home".into()],
        }
    }

    #[test]
    fn state_round_trips() {
        let s = sample();
        assert_eq!(MountState::parse(&s.to_text()).unwrap(), s);
        assert_eq!(
            state_file(Path::new("/vm/disk0")),
            Path::new("/vm/disk0.mount")
        );
        assert!(MountState::parse("backend=kernel\n").is_err());
    }

    #[test]
    fn the_undo_plan_is_the_steps_backwards() {
        assert_eq!(
            sample().undo_plan(),
            [
                "umount '/vm/mnt disk0/home'",
                "umount /vm/mnt-disk0",
                "losetup -d /dev/loop3",
                "kill \"$(cat /vm/disk0.qsd.pid)\"  # qemu-storage-daemon, then wait for it to exit",
                "rm -f -- /vm/disk0.fuse",
                "rmdir /vm/mnt-disk0",
                "rm -- /vm/disk0.mount",
            ]
        );
    }

    /// [`sample`] with its mounts below its mount point.
    fn valid() -> MountState {
        let mut s = sample();
        s.mounts = vec!["/vm/mnt-disk0".into(), "/vm/mnt-disk0/home".into()];
        s
    }

    #[test]
    fn a_state_naming_anything_vmk_does_not_make_is_refused() {
        let journal = Path::new("/vm/disk0.mount");
        assert!(valid().validate(journal).is_ok());
        let bad = |f: &dyn Fn(&mut MountState), why: &str| {
            let mut s = valid();
            f(&mut s);
            let e = s.validate(journal).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{e:#}");
        };
        bad(
            &|s| s.image = "/etc/passwd".into(),
            "not the one it lies beside",
        );
        bad(&|s| s.mounts.push("/etc".into()), "outside the mount point");
        bad(
            &|s| s.mounts.push("/vm/mnt-disk0/../../etc".into()),
            "outside the mount point",
        );
        bad(
            &|s| s.dir = "/vm/x/../mnt".into(),
            "not a plain absolute path",
        );
        bad(&|s| s.dir = "/".into(), "not a plain absolute path");
        bad(
            &|s| s.loop_dev = Some("/dev/sda".into()),
            "not a loop device",
        );
        bad(
            &|s| s.fuse_file = Some("/etc/shadow".into()),
            "/vm/disk0.fuse",
        );
        bad(
            &|s| s.qsd_pidfile = Some("/run/x.pid".into()),
            "/vm/disk0.qsd.pid",
        );
        bad(&|s| s.backend = "shell".into(), "unknown backend");
        // Read back: a symlink is refused, a file others may write too.
        let d = tempfile::tempdir().unwrap();
        let image = d.path().join("disk0");
        let mut s = sample();
        s.image = image.clone();
        s.dir = d.path().join("mnt");
        s.mounts = vec![s.dir.clone()];
        s.fuse_file = Some(beside(&image, ".fuse"));
        s.qsd_pidfile = Some(beside(&image, ".qsd.pid"));
        s.save().unwrap();
        assert_eq!(MountState::load(&image).unwrap(), Some(s.clone()));
        let f = state_file(&image);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        let e = MountState::load(&image).unwrap_err();
        assert!(
            format!("{e:#}").contains("writable by nobody else"),
            "{e:#}"
        );
        fs::remove_file(&f).unwrap();
        let target = d.path().join("target");
        fs::write(&target, s.to_text()).unwrap();
        std::os::unix::fs::symlink(&target, &f).unwrap();
        let e = MountState::load(&image).unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        // Saving replaces the symlink, never writes through it.
        s.save().unwrap();
        assert!(!fs::symlink_metadata(&f).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), s.to_text());
        fs::write(&target, "canary").unwrap();
        std::os::unix::fs::symlink(
            &target,
            beside(&image, &format!(".mount.tmp-{}", std::process::id())),
        )
        .unwrap();
        s.save().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "canary");
    }
}
