//! The snapshot VM: `snap run`/`snap runin` recreate `snap-<disk0>` from disk0 by reflink (or,
//! where the filesystem cannot reflink, as a qcow2 overlay backed by disk0) and boot it with
//! its own pidfile, QMP socket and console log. Starting, stopping and inspecting are vmk-run's
//! per-instance operations, called on that image, so `vmk snap X` behaves like `vmk X`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::DiskFormat;
use vmk_common::fileops::FileopsError;

use crate::copy::{copy_file, CopyMode};
use crate::Target;

/// Options of `snap run` and `snap runin`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {}

/// Options of `snap info`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InfoArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Options of `snap stop`.
#[derive(clap::Args, Debug, Clone)]
pub struct StopArgs {
    /// Seconds to wait for the guest to power off before killing it
    #[arg(short, long, default_value_t = 60)]
    pub timeout: u64,
}

/// How `snap-<disk0>` was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapKind {
    /// A reflink copy of disk0, in disk0's format.
    Reflink,
    /// A qcow2 overlay whose backing file is disk0.
    Overlay,
}

/// True when `path` is a qcow2 image that names a backing file (an overlay).
pub fn qcow2_has_backing(path: &Path) -> bool {
    let mut header = [0u8; 16];
    let ok = fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    ok.is_ok() && &header[..4] == b"QFI\xfb" && header[8..16] != [0u8; 8]
}

/// Recreates `snap-<disk0>` from disk0: a reflink copy, or where the filesystem cannot
/// reflink a qcow2 overlay backed by disk0 (saying so). The snapshot VM must not run.
pub fn recreate_snapshot(t: &Target) -> Result<SnapKind> {
    if !t.disk0.exists() {
        bail!(
            "disk0 {} does not exist: run `vmk mkdisk0` or set VMK_DISK0",
            t.disk0.display()
        );
    }
    let mode = CopyMode {
        force: true,
        full_copy: false,
    };
    match copy_file(&t.disk0, &t.image, mode) {
        Ok(_) => Ok(SnapKind::Reflink),
        Err(FileopsError::ReflinkUnsupported { reason, .. }) => {
            let format = disk0_format(t)?;
            eprintln!(
                "vmk-snap: cannot reflink {} ({reason}): booting {} as a qcow2 overlay backed by it instead; disk0 must not change while the snapshot VM runs",
                t.disk0.display(),
                t.image.display()
            );
            create_overlay(&t.disk0, format, &t.image)?;
            Ok(SnapKind::Overlay)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "recreating {} from {}",
                t.image.display(),
                t.disk0.display()
            )
        }),
    }
}

fn disk0_format(t: &Target) -> Result<DiskFormat> {
    match t.cfg.disk0_format {
        Some(f) => Ok(f),
        None => DiskFormat::detect(&t.disk0)
            .with_context(|| format!("detecting the format of {}", t.disk0.display())),
    }
}

/// `qemu-img create -f qcow2 -F <format> -b <abs disk0> <overlay>`, built beside the overlay
/// under a temporary name and renamed into place.
pub fn create_overlay(disk0: &Path, format: DiskFormat, overlay: &Path) -> Result<()> {
    let backing =
        std::path::absolute(disk0).with_context(|| format!("resolving {}", disk0.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(overlay.file_name().unwrap_or_default());
    tmp_name.push(format!(".vmk-tmp-{}", std::process::id()));
    let tmp: PathBuf = overlay.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"])
        .arg(&backing)
        .arg(&tmp)
        .output()
        .context("running qemu-img (install qemu-utils)")?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        bail!(
            "qemu-img create of an overlay of {} failed: {}",
            backing.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::rename(&tmp, overlay)
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("renaming the overlay into {}", overlay.display()))
}

fn pending() -> Result<ExitCode> {
    bail!("the snapshot VM commands need vmk-run's instance operations, which are not built in yet")
}

/// `snap run` / `snap runin`.
pub fn run(global: &GlobalOpts, _a: &RunArgs, _foreground: bool) -> Result<ExitCode> {
    let _ = Target::load(global, false)?;
    pending()
}

/// `snap info`.
pub fn info(global: &GlobalOpts, _a: &InfoArgs) -> Result<ExitCode> {
    let _ = Target::load(global, false)?;
    pending()
}

/// `snap isrunning`.
pub fn is_running(global: &GlobalOpts) -> Result<ExitCode> {
    let t = Target::load(global, false)?;
    Ok(if t.running_pid()?.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(vmk_common::cli::EXIT_FAILURE)
    })
}

/// `snap kill`.
pub fn kill(global: &GlobalOpts) -> Result<ExitCode> {
    let _ = Target::load(global, false)?;
    pending()
}

/// `snap stop`.
pub fn stop(global: &GlobalOpts, a: &StopArgs) -> Result<ExitCode> {
    let _ = (Target::load(global, false)?, Duration::from_secs(a.timeout));
    pending()
}

/// `snap console`.
pub fn console(global: &GlobalOpts) -> Result<ExitCode> {
    let _ = Target::load(global, false)?;
    pending()
}
