//! `vmk bootstrap`: a new VM directory from nothing — a distribution installed from its
//! packages (debootstrap for Debian) onto a NOCOW disk0, with the guest's own kernel and
//! initrd for direct boot and an ssh key pair, so that `vmk run && vmk waitssh` works at once.
//! This is what a new user runs first.
//!
//! disk0 is a *raw ext4 filesystem without a partition table*, made by `mkfs.ext4 -d` from
//! the staged root tree: that needs no loop device, no nbd and no mounting, is fast, and
//! boots directly with `root=LABEL=vmkroot` (on any disk bus). Snapshots are reflink copies, so qcow2's own
//! snapshots are not needed (`qemu-img convert -O qcow2` turns it into one when wanted).
//! `--boot disk` makes instead a partitioned disk0 that boots itself with GRUB and shim
//! under any firmware ([`diskboot`]).
//!
//! Everything is built in `DIR.vmk-tmp-*` beside DIR and renamed to DIR only when complete:
//! a failure or Ctrl-C leaves nothing behind (mounts that debootstrap may have left are
//! detached before the staging tree is removed, and removal never crosses filesystems).
//!
//! The steps that make a Debian system and turn it into a bootable image ([`debootstrap`],
//! [`configure_root`], [`copy_kernel`], [`make_ext4_image`]) are public, so that the Debian
//! test guest (`vmk-testguest`) is built by this very code.
//!
//! The modules, in the order a bootstrap goes through them: `args` (the command line),
//! `plan` (what will be done, and `-D`), `staging` (the all-or-nothing directory), `runner`
//! and `progress` (the commands run and what is shown), `cache` and `debian` (the system
//! installed), `image` (kernel and disk0), `vmconfig` (the vm-config written last).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::{self, LoadOptions};
use vmk_common::host::which_sbin;
use vmk_common::human;
use vmk_common::outln;

mod args;
mod cache;
mod debian;
pub mod devloop;
pub mod diskboot;
mod image;
mod plan;
mod progress;
mod runner;
mod staging;
mod vmconfig;

pub use args::{BootstrapArgs, Distro};
pub use debian::{
    apt_mirror, configure_root, debian_arch, debian_packages, debootstrap, DebianRoot,
    DEBIAN_PACKAGES, DEFAULT_SUITE,
};
pub use devloop::EXEC_INIT;
pub use diskboot::Boot;
pub use image::{copy_kernel, make_ext4_image, DISK0_NAME, ROOT_LABEL};
pub use runner::{CommandRunner, LOG_NAME};
pub use staging::remove_tree;
pub use vmconfig::APPEND;

use plan::Plan;
use progress::Progress;
use runner::Runner;
use staging::{Interrupted, Staging};

/// Runs `vmk bootstrap`.
pub fn run(global: &GlobalOpts, args: BootstrapArgs) -> Result<ExitCode> {
    if args.distro == Distro::Opensuse {
        return opensuse(&args);
    }
    let plan = Plan::new(&args)?;
    check_host_tools(&plan.debian)?;
    if plan.boot == Boot::Disk {
        check_disk_tools()?;
    }
    if global.dry_run {
        plan::print_plan(&plan)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !vmk_common::host::is_root() {
        return Err(vmk_common::usage!(
            "bootstrap needs root: debootstrap installs packages as root (run it with sudo)"
        ));
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .context("installing the Ctrl-C handler")?;
    }
    let progress = Progress::new(global.verbosity() > 0);
    let start = Instant::now();
    let timings = build(&plan, &progress, &interrupted)?;
    progress.finish();
    let times: Vec<String> = timings
        .iter()
        .map(|(what, d)| format!("{what} {}", human::duration(*d)))
        .collect();
    vmk_common::errln!(
        "vmk-ayinstall: bootstrapped Debian {} into {} in {} ({})",
        plan.debian.suite,
        plan.dir.display(),
        human::duration(start.elapsed()),
        times.join(", ")
    );
    let ports = config::load(&LoadOptions {
        dir: Some(plan.dir.clone()),
        ..LoadOptions::new()
    })
    .map(|c| format!("; ssh on {}:{}", c.listen, c.ssh_port()))
    .unwrap_or_default();
    vmk_common::errln!(
        "vmk-ayinstall: next: cd {} && vmk run && vmk waitssh   (VM number {}{ports})",
        plan.dir.display(),
        plan.vnc,
    );
    outln!("{}", plan.dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// openSUSE needs zypper on the host; say what is missing.
fn opensuse(args: &BootstrapArgs) -> Result<ExitCode> {
    if which_sbin("zypper").is_none() {
        bail!(
            "bootstrapping openSUSE is not available on this machine: it needs zypper (not found on PATH) \
             and openSUSE repositories; install zypper, or use --distro debian"
        );
    }
    let _ = args;
    bail!(
        "bootstrapping openSUSE with zypper --root is not implemented yet: use --distro debian, \
         or install from an ISO with `vmk ayinstall`"
    )
}

/// The programs the bootstrap of `debian` runs on this machine.
fn check_host_tools(debian: &DebianRoot) -> Result<()> {
    let installer = if debian.is_foreign() {
        (debian::MMDEBSTRAP, debian::MMDEBSTRAP)
    } else {
        ("debootstrap", "debootstrap")
    };
    check_tools(&[
        installer,
        ("mkfs.ext4", "e2fsprogs"),
        ("ssh-keygen", "openssh-client"),
        ("chroot", "coreutils"),
    ])
}

/// What `--boot disk` needs besides.
fn check_disk_tools() -> Result<()> {
    check_tools(&[
        ("sgdisk", "gdisk"),
        ("losetup", "mount"),
        ("mkfs.vfat", "dosfstools"),
    ])
}

/// Each (program, package) must be installed.
fn check_tools(tools: &[(&str, &str)]) -> Result<()> {
    for (program, package) in tools {
        if which_sbin(program).is_none() {
            bail!("bootstrap needs {program}, which is not installed: apt-get install {package}");
        }
    }
    Ok(())
}

/// The whole build; returns how long each phase took.
fn build(
    plan: &Plan,
    progress: &Progress,
    interrupted: &AtomicBool,
) -> Result<Vec<(&'static str, Duration)>> {
    let staging = Staging::create(&plan.dir)?;
    let log = staging.path.join(LOG_NAME);
    let runner = Runner {
        log: &log,
        progress,
        interrupted,
    };
    let root = staging.path.join("root");
    let mut timings = Vec::new();
    let mut phase = |what: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!(Interrupted);
        }
        progress.phase(what);
        let t = Instant::now();
        f()?;
        progress.done(what, t.elapsed());
        timings.push((what, t.elapsed()));
        Ok(())
    };
    let outcome = (|| -> Result<()> {
        phase("debootstrap", &mut || {
            cache::install_system(plan, &runner, &staging.path, &root)
        })?;
        phase("configure", &mut || {
            let console = plan.guest_arch().console;
            configure_root(&root, &plan.hostname, console, &runner)?;
            match plan.boot {
                Boot::Kernel => Ok(()),
                Boot::Disk => diskboot::configure(&root, console),
            }
        })?;
        phase("ssh key", &mut || {
            debian::ssh_key(&plan.name, &runner, &staging.path, &root)
        })?;
        if plan.boot == Boot::Kernel {
            phase("kernel", &mut || copy_kernel(&root, &staging.path))?;
        }
        phase("disk0", &mut || {
            image::make_disk(
                plan.size,
                plan.boot,
                &runner,
                &staging.path,
                &root,
                &staging.path,
            )
        })?;
        phase("vm-config", &mut || {
            vmconfig::write_vm_config(plan, &staging.path)
        })?;
        Ok(())
    })();
    if let Err(e) = outcome {
        progress.finish();
        let tail = runner::log_tail(&log, 15);
        drop(staging); // removes everything
        if e.is::<Interrupted>() {
            return Err(e.context(format!(
                "stopped: removed the unfinished {}",
                plan.dir.display()
            )));
        }
        let mut message = format!(
            "bootstrapping {} failed (nothing was left behind)",
            plan.dir.display()
        );
        if let Some(t) = tail.filter(|t| !t.is_empty()) {
            message.push_str(&format!("; the end of its log:\n{t}\n"));
        }
        return Err(e.context(message));
    }
    remove_tree(&root)?;
    let mnt = diskboot::mount_point(&staging.path);
    if mnt.exists() {
        std::fs::remove_dir(&mnt).with_context(|| format!("removing {}", mnt.display()))?;
    }
    staging.persist(&plan.dir)?;
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse;
    use std::fs;

    #[test]
    fn opensuse_says_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let a = parse(&["--distro", "opensuse", t.path().join("s").to_str().unwrap()]).unwrap();
        let e = format!("{:#}", run(&GlobalOpts::default(), a).unwrap_err());
        if which_sbin("zypper").is_none() {
            assert!(
                e.contains("not available on this machine") && e.contains("zypper"),
                "{e}"
            );
        }
        assert!(!t.path().join("s").exists());
    }

    #[test]
    fn dry_run_creates_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vm");
        let a = parse(&["--vnc", "4", "--no-cache", dir.to_str().unwrap()]).unwrap();
        let g = GlobalOpts {
            dry_run: true,
            ..Default::default()
        };
        if check_host_tools(&crate::plan::example(&dir).debian).is_ok() {
            run(&g, a).unwrap();
            assert!(!dir.exists());
            assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
        }
    }
}
