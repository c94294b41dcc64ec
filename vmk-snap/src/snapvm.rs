//! The snapshot VM: `snap run`/`snap runin` recreate `snap-<disk0>` from disk0 by reflink (or,
//! where the filesystem cannot reflink, as a qcow2 overlay backed by disk0) and boot it with
//! its own pidfile, QMP socket and console log. Starting, stopping and inspecting are vmk-run's
//! per-instance operations, called on that image, so `vmk snap X` behaves like `vmk X`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::DiskFormat;
use vmk_common::fileops::{self, FileopsError};
use vmk_common::qemu::QemuCommand;
use vmk_common::qemu_img::QemuImgCreate;
use vmk_common::state::VmStatus;
use vmk_run::instance::{Adjust, End};
use vmk_run::{Instance, StartOptions};

use crate::Target;
use vmk_common::copy::{copy_file, CopyMode};

/// Options of `snap run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Print pid, ports and files as one JSON object on stdout
    #[arg(long, conflicts_with = "exec")]
    pub json: bool,
    #[command(flatten)]
    pub exec: vmk_run::ExecArgs,
    #[command(flatten)]
    pub boot: vmk_run::BootArgs,
}

/// Options of `snap info`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InfoArgs {
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

/// Options of `snap stop`.
#[derive(clap::Args, Debug, Clone)]
pub struct StopArgs {
    /// Seconds to wait for the guest to power off before killing it
    #[arg(short, long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Options of `snap console`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// When stdin is not a terminal: after it ends, leave once the guest has been quiet this
    /// long (seconds)
    #[arg(short, long, value_name = "SECONDS", default_value_t = 2.0)]
    pub wait: f64,
}

/// How `snap-<disk0>` was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapKind {
    /// A reflink copy of disk0, in disk0's format.
    Reflink,
    /// A qcow2 overlay whose backing file is disk0.
    Overlay,
}

/// Recreates `snap-<disk0>` from disk0: a reflink copy, or where the filesystem cannot
/// reflink a qcow2 overlay backed by disk0 (saying so); and the files that travel with
/// disk0 (UEFI variable store, TPM state) as throwaway copies beside it, so the snapshot VM
/// never writes disk0's. The snapshot VM must not run.
pub fn recreate_snapshot(t: &Target, base_pid: Option<u32>) -> Result<SnapKind> {
    let kind = recreate_image(t, base_pid)?;
    crate::dsnap::copy_companions(&t.disk0, &t.image)
        .context("giving the snapshot VM its own copy of disk0's UEFI variables and TPM state")?;
    Ok(kind)
}

/// `snap-<disk0>` itself, made from disk0 ([`recreate_snapshot`]).
fn recreate_image(t: &Target, base_pid: Option<u32>) -> Result<SnapKind> {
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
            if let Some(pid) = base_pid {
                bail!(
                    "cannot reflink {} ({reason}) and a qcow2 overlay backed by it is unsafe while its VM runs (pid {pid}): stop it first",
                    t.disk0.display()
                );
            }
            let format = disk0_format(t)?;
            vmk_common::errln!(
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
    tmp_name.push(format!(
        ".vmk-tmp-{}-{}",
        std::process::id(),
        fileops::random_hex()
    ));
    let tmp: PathBuf = overlay.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    QemuImgCreate::overlay(&tmp, &backing, format)
        .run()
        .with_context(|| format!("creating an overlay of {}", backing.display()))?;
    fs::rename(&tmp, overlay)
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("renaming the overlay into {}", overlay.display()))
}

/// The snapshot VM as a vmk-run instance (hints say `vmk snap …`).
pub fn instance(t: &Target) -> Result<Instance> {
    let mut inst = Instance::for_image(t.cfg.clone(), &t.image)?;
    inst.commands = "vmk snap".to_string();
    Ok(inst)
}

fn overlay_adjust(cmd: QemuCommand) -> Result<QemuCommand> {
    Ok(cmd.disk0_format(DiskFormat::Qcow2))
}

/// `snap run` / `snap runin`: recreate snap-<disk0> from disk0, then start it.
pub fn run(global: &GlobalOpts, a: &RunArgs, foreground: bool) -> Result<ExitCode> {
    let mut t = Target::load(global, false)?;
    t.cfg = a.exec.apply(a.boot.apply(t.cfg)?, global.dry_run)?;
    let inst = instance(&t)?;
    let kind = if global.dry_run {
        // say what would boot, touching nothing
        let can = fileops::fs_kind(t.image.parent().unwrap_or(Path::new(".")))
            .map(|k| k.can_reflink())
            .unwrap_or(true);
        if can {
            SnapKind::Reflink
        } else {
            SnapKind::Overlay
        }
    } else {
        if let VmStatus::Running { pid } = inst.status()? {
            bail!(
                "the snapshot VM already runs (pid {pid}) on {}: attach with `vmk snap console`, stop with `vmk snap stop`",
                t.image.display()
            );
        }
        if let Some(&pid) = vmk_common::state::qemu_pids_using(&t.image)?.first() {
            bail!(
                "{} is in use by qemu pid {pid}: stop it before recreating the snapshot",
                t.image.display()
            );
        }
        let base_pid = t.base_running_pid()?;
        let kind = recreate_snapshot(&t, base_pid)?;
        if let (Some(pid), SnapKind::Reflink) = (base_pid, kind) {
            log::warn!(
                "the VM on {} runs (pid {pid}): the snapshot VM boots a crash-consistent copy of it",
                t.disk0.display()
            );
        }
        kind
    };
    let adjust: Option<Adjust<'_>> = match kind {
        SnapKind::Overlay => Some(&overlay_adjust),
        SnapKind::Reflink => None,
    };
    let opts = StartOptions {
        adjust,
        ..StartOptions::default()
    };
    if foreground {
        return vmk_run::cmd_runin(&inst, global.dry_run, &opts);
    }
    match a.exec.options(End::Kill, &inst.cfg) {
        Some(x) => {
            let status = vmk_run::cmd_exec(&inst, global.dry_run, &opts, &x);
            if !global.dry_run {
                discard_snapshot(&t, &inst);
            }
            status
        }
        None => vmk_run::cmd_run(&inst, global.dry_run, a.json, &opts),
    }
}

/// Removes snap-<disk0> after `snap run --exec` (nothing of the throwaway VM stays), unless
/// a qemu still uses it.
fn discard_snapshot(t: &Target, inst: &Instance) {
    match vmk_common::state::qemu_pids_using(&t.image) {
        Ok(pids) if pids.is_empty() => {
            if let Err(e) = fs::remove_file(&t.image) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("removing {}: {e}", t.image.display());
                }
            }
        }
        Ok(pids) => log::warn!(
            "{} still in use by qemu pid {:?}: kept",
            inst.image.display(),
            pids
        ),
        Err(e) => log::warn!("checking {}: {e:#}", t.image.display()),
    }
}

/// `snap info`.
pub fn info(global: &GlobalOpts, a: &InfoArgs) -> Result<ExitCode> {
    let t = Target::load(global, false)?;
    vmk_run::cmd_info(&instance(&t)?, a.json)
}

/// `snap isrunning`.
pub fn is_running(global: &GlobalOpts) -> Result<ExitCode> {
    let t = Target::load(global, false)?;
    vmk_run::cmd_isrunning(&instance(&t)?)
}

/// `snap kill`.
pub fn kill(global: &GlobalOpts) -> Result<ExitCode> {
    let t = Target::load(global, false)?;
    vmk_run::cmd_kill(&instance(&t)?, global.dry_run)
}

/// `snap stop`.
pub fn stop(global: &GlobalOpts, a: &StopArgs) -> Result<ExitCode> {
    let t = Target::load(global, false)?;
    vmk_run::cmd_stop(
        &instance(&t)?,
        Duration::from_secs(a.timeout),
        global.dry_run,
    )
}

/// `snap console`.
pub fn console(global: &GlobalOpts, a: &ConsoleArgs) -> Result<ExitCode> {
    let t = Target::load(global, false)?;
    vmk_run::cmd_console(&instance(&t)?, a.wait)
}
