//! `qinstall` and `ayinstall`: install a guest from a SUSE-layout medium in two phases.
//!
//! Phase 1 boots the installer's kernel and initrd (taken off VMK_ISO in Rust) directly, with
//! the ISO attached as the first CD, `-no-reboot`, and disk0 with cache=unsafe (an install
//! writes a lot and is redone from scratch if the host crashes). For `ayinstall` the profile
//! goes on a second CD (`sr1`, `autoyast=device://sr1/autoinst.xml`) and on a floppy. The
//! installer's reboot into the new system ends qemu.
//!
//! Phase 2 boots the VM the way `vmk runin` would (its own config: the installed bootloader,
//! or VMK_KERNEL when set), with the ISO still attached for the installer's second stage,
//! and `-no-reboot` again, so the phase ends when the guest powers off or reboots (the
//! snippet `general/unattended` sets `final_halt`). Then the VM is ready for `vmk run`.
//! Phase 2 runs in the foreground rather than being handed to `vmk run` so that "both
//! phases run to the end" is something vmk can see and report, and a script calling
//! `vmk ayinstall` knows the VM is installed when it returns.
//!
//! Both phases run through vmk-run's foreground lifecycle ([`vmk_run::instance::attach`]:
//! the checks of `vmk runin`, `vmk ps`, the terminal restored, the SHUTDOWN reason over QMP,
//! the timeout). They show the serial console on the terminal (Ctrl-A x quits qemu) and log
//! it to the VM's console log; the installer's screen is also on VNC. A phase ended from the host
//! (monitor `quit`, a signal) stops the install: phase 2 starts only after phase 1 ended by
//! itself. Everything that can be checked (config, ISO, loader, profile, qemu, disk0 not in
//! use) is checked before anything is created or booted.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::{CacheMode, DiskFormat, VmConfig};
use vmk_common::qemu::{Mode, QemuCommand};
use vmk_common::qemu_img::QemuImgCreate;
use vmk_common::state::{self, VmStatus};
use vmk_common::{human, layout};
use vmk_run::instance::{self, Instance, Watch};

use crate::profile;
use vmk_media::fat::FloppyBuilder;
use vmk_media::iso9660::{find_loader, IsoBuilder, IsoImage, Loader};

/// The kernel argument that points AutoYaST at the profile on the second CD.
pub const AUTOYAST_ARG: &str = "autoyast=device://sr1/autoinst.xml";
const PHASE1: &str = "phase 1";
const PHASE2: &str = "phase 2";
/// Name of the profile file on the second CD and the floppy.
pub const PROFILE_NAME: &str = "autoinst.xml";

/// Which install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// `qinstall`: the installer asks; its screen is on VNC (and the serial console).
    Interactive,
    /// `ayinstall`: AutoYaST with this profile.
    AutoYast {
        /// The profile; `None` for `autoinst.xml` in the VM directory.
        profile: Option<PathBuf>,
    },
}

/// What the user asked for, beyond the config.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--iso`: overrides VMK_ISO.
    pub iso: Option<PathBuf>,
    /// `--arch`: overrides VMK_ARCH.
    pub arch: Option<String>,
    /// `--append`: after VMK_INST_APPEND.
    pub append: Option<String>,
    /// `--no-phase2`.
    pub no_phase2: bool,
    /// `--timeout`: the longest each phase may run.
    pub timeout: Option<Duration>,
}

/// A checked install, ready to run: nothing has been created yet.
#[derive(Debug)]
pub struct Plan {
    /// The VM booting disk0, with the config the install uses.
    inst: Instance,
    flavor: Flavor,
    iso: PathBuf,
    loader: Loader,
    disk0: PathBuf,
    /// Size of disk0 to create, when it does not exist.
    create_disk0: Option<u64>,
    append: String,
    phase2: bool,
    timeout: Option<Duration>,
}

/// Checks everything about an install without creating or booting anything.
pub fn plan(global: &GlobalOpts, flavor: Flavor, req: &Request) -> Result<Plan> {
    let mut cfg = VmConfig::load_for(global)?;
    cfg.validate()?;
    let iso = match &req.iso {
        Some(p) => p.clone(),
        None => cfg.iso().ok_or_else(|| {
            vmk_common::usage!("no install medium: set VMK_ISO in vm-config (or give --iso ISO)")
        })?,
    };
    if !iso.is_file() {
        return Err(vmk_common::usage!(
            "install medium {} not found: check VMK_ISO and VMK_ISO_DIR (or give --iso ISO)",
            iso.display()
        ));
    }
    let flavor = match flavor {
        Flavor::AutoYast { profile } => {
            let profile = profile.unwrap_or_else(|| cfg.dir.join(PROFILE_NAME));
            profile::check_profile_file(&profile).with_context(|| {
                format!("{} is not a usable AutoYaST profile", profile.display())
            })?;
            Flavor::AutoYast {
                profile: Some(profile),
            }
        }
        other => other,
    };
    let image = IsoImage::open(&iso)?;
    let arch = req.arch.clone().or_else(|| cfg.arch.clone());
    let loader = find_loader(&image, arch.as_deref())?;
    // the VM is of the medium's architecture (VMK_ARCH, --arch, or what the medium holds)
    cfg.arch = Some(loader.arch.clone());
    let disk0 = cfg.dir.join(cfg.disk0()?);
    let create_disk0 = if disk0.exists() {
        None
    } else {
        let parent = disk0.parent().unwrap_or(Path::new("."));
        if !parent.is_dir() {
            bail!(
                "cannot create disk0 {}: {} does not exist",
                disk0.display(),
                parent.display()
            );
        }
        // The new disk is qcow2 unless the config says raw; qemu must not probe a missing file.
        cfg.disk0_format.get_or_insert(DiskFormat::Qcow2);
        Some(cfg.inst_disk0.bytes())
    };
    let inst = Instance::for_image(cfg, &disk0)?;
    match inst.status()? {
        VmStatus::Running { pid } => bail!(
            "the VM is running (pid {pid}): stop it first (`vmk stop`), an install rewrites disk0"
        ),
        VmStatus::Stale { .. } => {
            state::clear_stale_pidfile(&inst.paths)?;
        }
        VmStatus::Stopped => {}
    }
    let append = kernel_args(
        &flavor,
        vmk_common::qemu::arch::spec(&loader.arch).console,
        inst.cfg.inst_append.as_deref(),
        req.append.as_deref(),
    );
    let plan = Plan {
        phase2: !req.no_phase2,
        timeout: req.timeout,
        inst,
        flavor,
        iso,
        loader,
        disk0,
        create_disk0,
        append,
    };
    // Building both command lines finds qemu and checks the disks now, not after phase 1.
    let dummy = plan.inst.cfg.dir.join(".vmk-install");
    plan.phase1_command(&dummy)?;
    plan.phase2_command()?;
    Ok(plan)
}

/// The installer's kernel arguments: ours, then VMK_INST_APPEND, then `--append` (the
/// kernel and linuxrc let later ones win).
pub fn kernel_args(
    flavor: &Flavor,
    serial: &str,
    inst_append: Option<&str>,
    extra: Option<&str>,
) -> String {
    let serial = format!("console={serial},115200");
    let mut args = match flavor {
        // The installer's own console (the last console=) is the screen, on VNC.
        Flavor::Interactive => vec![serial.as_str(), "console=tty0"],
        // Unattended: text mode on the serial console, which vmk shows and logs.
        Flavor::AutoYast { .. } => vec![AUTOYAST_ARG, "textmode=1", "console=tty0", &serial],
    };
    args.extend(
        inst_append
            .into_iter()
            .chain(extra)
            .map(str::trim)
            .filter(|s| !s.is_empty()),
    );
    args.join(" ")
}

impl Plan {
    /// Files phase 1 needs, in the work directory `work`.
    fn work_files(work: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        (
            work.join("linux"),
            work.join("initrd"),
            work.join("autoinst.iso"),
            work.join("autoinst.img"),
        )
    }

    fn phase1_command(&self, work: &Path) -> Result<QemuCommand> {
        let (kernel, initrd, cd, floppy) = Self::work_files(work);
        let mut q = QemuCommand::from_config(&self.inst.cfg, Mode::Foreground, &self.inst.paths)?
            .kernel_boot(&kernel, Some(&initrd), Some(&self.append))
            .disk0_cache(CacheMode::Unsafe)
            .add_cdrom(&self.iso)
            .no_reboot();
        if let Flavor::AutoYast { .. } = self.flavor {
            q = q.add_cdrom(&cd).floppy(&floppy);
        }
        Ok(q)
    }

    fn phase2_command(&self) -> Result<QemuCommand> {
        Ok(
            QemuCommand::from_config(&self.inst.cfg, Mode::Foreground, &self.inst.paths)?
                .add_cdrom(&self.iso)
                .no_reboot(),
        )
    }

    /// What `-D` prints: the steps and both qemu command lines.
    pub fn describe(&self) -> Result<String> {
        let work = self.inst.cfg.dir.join(".vmk-install-XXXXXX");
        let mut s = String::new();
        if let Some(size) = self.create_disk0 {
            s.push_str(&format!(
                "# create {} ({} bytes, NOCOW where the filesystem has it)\n",
                self.disk0.display(),
                size
            ));
        }
        s.push_str(&format!(
            "# take {} and {} ({}) off {} into {}\n",
            self.loader.kernel_path,
            self.loader.initrd_path,
            self.loader.arch,
            self.iso.display(),
            work.display()
        ));
        if let Flavor::AutoYast {
            profile: Some(profile),
        } = &self.flavor
        {
            s.push_str(&format!(
                "# put {} on a CD image and a floppy image in {}\n",
                profile.display(),
                work.display()
            ));
        }
        s.push_str("# phase 1\n");
        s.push_str(&self.phase1_command(&work)?.shell_quoted());
        s.push('\n');
        if self.phase2 {
            s.push_str("# phase 2\n");
            s.push_str(&self.phase2_command()?.shell_quoted());
            s.push('\n');
        }
        Ok(s)
    }

    /// Runs the install: creates disk0 if needed, prepares phase 1's files, runs both phases.
    pub fn run(&self) -> Result<()> {
        let started = Instant::now();
        let work = tempfile::Builder::new()
            .prefix(".vmk-install-")
            .tempdir_in(&self.inst.cfg.dir)
            .with_context(|| {
                format!(
                    "creating a work directory in {}",
                    self.inst.cfg.dir.display()
                )
            })?;
        self.prepare(work.path())?;
        let phase1 = self.phase1_command(work.path())?;
        instance::prepare(&self.inst, &phase1)?;
        say(&format!(
            "phase 1: installing from {} ({} installer); serial console below, Ctrl-A x quits qemu, log in {}",
            self.iso.display(),
            self.loader.arch,
            self.inst.paths.console_log.display()
        ));
        if let Some((ip, n)) = phase1.vnc {
            say(&format!(
                "the installer's screen is on VNC {ip}:{n} (port {})",
                layout::vnc_port(n)
            ));
        }
        let end = self.run_phase(&phase1, PHASE1)?;
        drop(work);
        say(&format!(
            "phase 1 ended ({end}) after {}",
            human::duration(started.elapsed())
        ));
        if !self.phase2 {
            say("phase 2 skipped (--no-phase2): boot the installed system with `vmk runin` or `vmk run`");
            return Ok(());
        }
        let p2 = Instant::now();
        let phase2 = self.phase2_command()?;
        instance::prepare(&self.inst, &phase2)?;
        say("phase 2: booting the installed system from disk0");
        let end = self.run_phase(&phase2, PHASE2)?;
        say(&format!(
            "phase 2 ended ({end}) after {}; installed in {}: start it with `vmk run`",
            human::duration(p2.elapsed()),
            human::duration(started.elapsed())
        ));
        Ok(())
    }

    /// Creates disk0 if missing and writes phase 1's files into `work`.
    fn prepare(&self, work: &Path) -> Result<()> {
        if let Some(size) = self.create_disk0 {
            let format = self.inst.cfg.disk0_format.unwrap_or(DiskFormat::Qcow2);
            create_disk(&self.disk0, format, size)?;
            say(&format!(
                "created {} ({format}, {})",
                self.disk0.display(),
                human::size(size)
            ));
        }
        let (kernel, initrd, cd, floppy) = Self::work_files(work);
        let image = IsoImage::open(&self.iso)?;
        image.extract(&self.loader.kernel, &kernel)?;
        image.extract(&self.loader.initrd, &initrd)?;
        if let Flavor::AutoYast {
            profile: Some(profile),
        } = &self.flavor
        {
            let text =
                std::fs::read(profile).with_context(|| format!("reading {}", profile.display()))?;
            let mut iso = IsoBuilder::new("AUTOINST")?;
            iso.add_bytes(PROFILE_NAME, text.clone())?;
            iso.write_file(&cd)?;
            let mut fd = FloppyBuilder::new("AUTOINST")?;
            fd.add_bytes(PROFILE_NAME, text)?;
            fd.write_file(&floppy)?;
        }
        Ok(())
    }

    /// Runs one phase (checked with [`instance::prepare`]) in the foreground until qemu
    /// exits; fails when it was ended from the host, failed, or ran out of time.
    fn run_phase(&self, q: &QemuCommand, phase: &str) -> Result<String> {
        log::info!("{phase}: {}", q.shell_quoted());
        let watch = Watch {
            shutdown_reason: true,
            timeout: self.timeout,
        };
        let ended = instance::attach(&self.inst, q, watch)?;
        if ended.timed_out {
            bail!(
                "{phase} did not end within {}: qemu stopped; see {}",
                human::duration(self.timeout.unwrap_or_default()),
                self.inst.paths.console_log.display()
            );
        }
        judge_end(
            phase,
            ended.status,
            ended.shutdown_reason.as_deref(),
            &self.inst.paths.console_log,
        )
    }
}

/// Decides whether a phase ended the way an install should: the guest powered off or
/// rebooted (ends qemu with `-no-reboot`), and qemu exited cleanly. Phase 1 ended from the
/// host is a failure; phase 2 may be (a profile without `final_halt` ends at a login
/// prompt, and the user quits qemu there), so it is only reported.
fn judge_end(phase: &str, status: ExitStatus, reason: Option<&str>, log: &Path) -> Result<String> {
    let first = phase == PHASE1;
    if !status.success() {
        bail!(
            "qemu failed in {phase} ({status}); the console log is {}",
            log.display()
        );
    }
    match reason {
        Some("guest-shutdown") => Ok("the guest powered off".into()),
        Some("guest-reset") => Ok("the guest rebooted".into()),
        Some("guest-panic") => bail!("the guest panicked in {phase}; see {}", log.display()),
        Some(host) if host.starts_with("host-") && !first => Ok(format!(
            "stopped from the host ({host}); if the second stage had not finished, `vmk runin` lets it finish"
        )),
        Some(host) if host.starts_with("host-") => bail!(
            "{phase} was ended from the host ({host}): the install stops here; run it again to start over"
        ),
        Some(other) => Ok(format!("qemu shut down: {other}")),
        None => {
            log::warn!("{phase}: could not tell how qemu ended (no SHUTDOWN event seen); assuming the guest did");
            Ok("qemu exited".into())
        }
    }
}

/// Creates a new disk image: a NOCOW file (where the filesystem has the attribute, set
/// while it is empty), then qcow2 inside it with `qemu-img create`, or a sparse raw file.
/// Nothing is left behind on failure.
pub fn create_disk(path: &Path, format: DiskFormat, size: u64) -> Result<()> {
    match format {
        DiskFormat::Raw => {
            vmk_common::fileops::create_nocow_file(path, size)?;
        }
        DiskFormat::Qcow2 => {
            vmk_common::fileops::create_nocow_file(path, 0)?;
            QemuImgCreate::new(path, DiskFormat::Qcow2, size).run()?;
        }
    }
    Ok(())
}

fn say(msg: &str) {
    vmk_common::errln!("vmk-ayinstall: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn kernel_arguments() {
        let ay = Flavor::AutoYast { profile: None };
        assert_eq!(
            kernel_args(&ay, "ttyS0", Some("self_update=0"), Some("  ")),
            "autoyast=device://sr1/autoinst.xml textmode=1 console=tty0 console=ttyS0,115200 self_update=0"
        );
        assert_eq!(
            kernel_args(&Flavor::Interactive, "ttyS0", None, Some("vnc=1")),
            "console=ttyS0,115200 console=tty0 vnc=1"
        );
        assert_eq!(
            kernel_args(&ay, "ttyAMA0", None, None),
            "autoyast=device://sr1/autoinst.xml textmode=1 console=tty0 console=ttyAMA0,115200"
        );
    }

    #[test]
    fn how_phases_end() {
        let ok = ExitStatus::from_raw(0);
        let log = Path::new("c.log");
        assert!(judge_end("phase 1", ok, Some("guest-shutdown"), log).is_ok());
        assert!(judge_end("phase 1", ok, Some("guest-reset"), log).is_ok());
        assert!(judge_end("phase 1", ok, None, log).is_ok());
        assert!(judge_end(PHASE2, ok, Some("host-qmp-quit"), log).is_ok());
        let e = judge_end("phase 1", ok, Some("host-qmp-quit"), log)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ended from the host"), "{e}");
        assert!(judge_end(
            "phase 1",
            ExitStatus::from_raw(1 << 8),
            Some("guest-shutdown"),
            log
        )
        .is_err());
    }
}
