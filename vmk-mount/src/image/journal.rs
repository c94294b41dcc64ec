//! The mount journal `<image>.mount`: every step a mount took (mount point, daemon, loop
//! device, kernel mounts, guestmount), written as it is taken, so that `vmk umount` — or a
//! later run after a crash — undoes exactly that, backwards.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
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
            lines.push(shell::command_line(&kernel::detach_command(dev)));
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

    /// Undoes everything, backwards; what could not be undone stays in the state file
    /// (so `vmk umount` can try again) and is reported.
    pub fn undo(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Some(pidfile) = self.guestmount_pidfile.clone() {
            match guestmount::unmount(&self.dir, &pidfile) {
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
                match kernel::detach_loop(&dev) {
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
}
