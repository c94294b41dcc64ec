//! Throwaway filesystems for tests: a sparse image in a temp dir, formatted and
//! loop-mounted (btrfs, ext4) or a size-limited tmpfs, unmounted and detached again in Drop,
//! also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A mounted throwaway filesystem (needs root).
#[derive(Debug)]
pub struct LoopFs {
    kind: String,
    dir: Option<tempfile::TempDir>,
    image: Option<PathBuf>,
    mnt: PathBuf,
    /// Unmounts it and removes its directory should the test binary be interrupted.
    _undo: crate::on_interrupt::Registration,
}

/// A loop-mounted btrfs (unmounted and detached when dropped); derefs to [`LoopFs`].
#[derive(Debug)]
pub struct LoopBtrfs(LoopFs);

impl LoopBtrfs {
    /// A fresh btrfs of `size` bytes (at least about 120 MiB for mkfs.btrfs).
    pub fn new(size: u64) -> Result<LoopBtrfs> {
        LoopFs::new("btrfs", size).map(LoopBtrfs)
    }
}

impl std::ops::Deref for LoopBtrfs {
    type Target = LoopFs;
    fn deref(&self) -> &LoopFs {
        &self.0
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What an interrupted test binary does for a [`LoopFs`] in `top` mounted on `mnt`: a lazy
/// unmount (its qemus are dead, a shell may still be in it; `mount -o loop` set autoclear,
/// so the loop device goes with the last user), then the directory, only once nothing is
/// mounted there (never removing through a mount).
fn undo_loop_fs(top: &Path, mnt: &Path) {
    let _ = Command::new("umount").arg("-l").arg(mnt).output();
    let still_mounted = Command::new("mountpoint")
        .arg("-q")
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !still_mounted {
        let _ = std::fs::remove_dir_all(top);
    }
}

impl LoopFs {
    /// A fresh btrfs of `size` bytes (at least about 120 MiB for mkfs.btrfs).
    pub fn btrfs(size: u64) -> Result<LoopFs> {
        LoopFs::new("btrfs", size)
    }

    /// A fresh filesystem of `kind` (`btrfs`, `ext4`, `xfs` or `tmpfs`) and `size` bytes,
    /// mounted on a temporary directory.
    pub fn new(kind: &str, size: u64) -> Result<LoopFs> {
        let dir = tempfile::Builder::new()
            .prefix("vmk-loopfs-")
            .tempdir()
            .context("creating a temp dir for a loop filesystem")?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        let undo = {
            let (top, mnt) = (dir.path().to_path_buf(), mnt.clone());
            crate::on_interrupt::register(move || undo_loop_fs(&top, &mnt))
        };
        let mut fs = LoopFs {
            kind: kind.to_string(),
            dir: Some(dir),
            image: None,
            mnt,
            _undo: undo,
        };
        if kind == "tmpfs" {
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("vmk-test")
                .arg(&fs.mnt))?;
            return Ok(fs);
        }
        let image = fs
            .dir
            .as_ref()
            .expect("set")
            .path()
            .join(format!("{kind}.img"));
        std::fs::File::create(&image)?.set_len(size)?;
        let mut mkfs = Command::new(format!("mkfs.{kind}"));
        match kind {
            "btrfs" | "xfs" => mkfs.arg("-q"),
            "ext4" => mkfs.args(["-q", "-F"]),
            _ => bail!("LoopFs: unknown filesystem kind {kind:?}"),
        };
        run(mkfs.arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&fs.mnt))?;
        fs.image = Some(image);
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The filesystem kind given to [`LoopFs::new`].
    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn loop_devices(&self) -> Vec<String> {
        let Some(image) = &self.image else {
            return Vec::new();
        };
        Command::new("losetup")
            .args(["-n", "-O", "NAME", "-j"])
            .arg(image)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn is_mounted(&self) -> bool {
        Command::new("mountpoint")
            .arg("-q")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for attempt in 0..20 {
            if !self.is_mounted() {
                break;
            }
            let mut umount = Command::new("umount");
            if attempt == 19 {
                umount.arg("-l");
            }
            let _ = run(umount.arg(&self.mnt));
            if self.is_mounted() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        // `mount -o loop` sets autoclear; detach only what is still attached.
        for dev in self.loop_devices() {
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
        }
        if self.is_mounted() {
            // Never delete the temp dir through a live mount.
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "warning: {} is still mounted; left it in place",
                    kept.display()
                );
            }
        }
    }
}
