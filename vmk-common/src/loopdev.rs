//! Loop devices with their partitions (`losetup -P`), for the tools that work on a disk
//! image's partitions as root (`vmk mount`'s kernel backend, `vmk bootstrap --boot disk`):
//! one way to attach, find the partition nodes and detach until the device is really gone,
//! and a guard that detaches on every error path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::shell;

/// `losetup -P --find --show <backing>`: attaches a free loop device and prints it.
pub fn attach_command(backing: &Path) -> Command {
    let mut c = Command::new("losetup");
    c.args(["-P", "--find", "--show"]).arg(backing);
    c
}

/// `losetup -d <dev>`.
pub fn detach_command(dev: &Path) -> Command {
    let mut c = Command::new("losetup");
    c.arg("-d").arg(dev);
    c
}

/// Attaches `backing` to a free loop device with its partitions scanned; returns the device.
/// A kernel built without a partition table's parser (GPT on some VM kernels) finds no
/// partitions: then `partx -a` reads the table and adds them.
pub fn attach(backing: &Path) -> Result<PathBuf> {
    let out = attach_command(backing)
        .stderr(Stdio::inherit())
        .output()
        .context("running losetup")?;
    if !out.status.success() {
        bail!("losetup -P --find --show {} failed", backing.display());
    }
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if partitions(&dev).is_ok_and(|p| p.is_empty()) {
        // no table at all is no error: the image is one filesystem
        let _ = partx_add_command(&dev).output();
    }
    Ok(dev)
}

/// `partx -a <dev>`: adds the partitions of the table on `dev` that the kernel did not see.
pub fn partx_add_command(dev: &Path) -> Command {
    let mut c = Command::new("partx");
    c.arg("-a").arg(dev);
    c
}

/// The partition devices of a loop device (`/dev/loop0p1`…), in order.
pub fn partitions(dev: &Path) -> Result<Vec<PathBuf>> {
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

/// Detaches a loop device and waits until it is really gone: while something (udev's
/// probe of the partitions, a closing mount) still holds it, `losetup -d` only marks it
/// for detaching and returns at once.
pub fn detach(dev: &Path) -> Result<()> {
    let mut c = detach_command(dev);
    let line = shell::command_line(&c);
    let out = c.output().with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
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

/// A loop device attached for as long as this value lives: detached when dropped (also on
/// every error path), or by [`LoopDevice::detach`] to see the error.
#[derive(Debug)]
pub struct LoopDevice {
    dev: Option<PathBuf>,
}

impl LoopDevice {
    /// Attaches `backing` (see [`attach`]).
    pub fn attach(backing: &Path) -> Result<LoopDevice> {
        Ok(LoopDevice {
            dev: Some(attach(backing)?),
        })
    }

    /// The device (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        self.dev.as_deref().expect("attached until detached")
    }

    /// Its partitions, in order (see [`partitions`]).
    pub fn partitions(&self) -> Result<Vec<PathBuf>> {
        partitions(self.path())
    }

    /// Detaches it now, saying what went wrong.
    pub fn detach(mut self) -> Result<()> {
        match self.dev.take() {
            Some(dev) => detach(&dev),
            None => Ok(()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            if let Err(e) = detach(&dev) {
                log::error!("{e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losetup_commands() {
        assert_eq!(
            shell::command_line(&attach_command(Path::new("/v/disk 0.raw"))),
            "losetup -P --find --show '/v/disk 0.raw'"
        );
        assert_eq!(
            shell::command_line(&detach_command(Path::new("/dev/loop3"))),
            "losetup -d /dev/loop3"
        );
    }
}
