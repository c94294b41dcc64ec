//! vmk-mount: Mount, change and prepare VM disk images: mount/umount, putfile, chroot,
//! zypper, fixnet, prep (virt-sysprep), and new NOCOW qcow2 disks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vmk_common::chroot::{SystemBind, SYSTEM_BINDS};
use vmk_common::cli::{GlobalOpts, Tool};
use vmk_common::config::{DiskFormat, Size, VmConfig};
use vmk_common::mountinfo::is_mount_point;
use vmk_common::process::{exit_code, with_umask, GUEST_UMASK};
use vmk_common::qemu_img::QemuImgCreate;
use vmk_common::shell;

pub mod guestfiles;
pub mod guestpath;
pub mod image;
pub use vmk_common::signals;

use guestpath::GuestRoot;
use image::{Backend, MountRequest, MountState, TempMount};
use rustix::fs::OFlags;

/// Mount, change and prepare VM disk images.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-mount",
    version,
    about = "Mount, change and prepare VM disk images"
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// The command
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// Options of every command that mounts the image.
#[derive(clap::Args, Debug, Clone)]
pub struct MountOpts {
    /// How to mount: kernel (root: loop device, qemu-storage-daemon for qcow2) or guestmount
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Mount even when a running qemu uses the image (risks corrupting it)
    #[arg(long)]
    pub force: bool,
}

/// The commands of vmk-mount.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Mount disk0 (or IMAGE) at ./mnt-disk0 (or DIR), with the filesystems of its fstab
    Mount {
        #[command(flatten)]
        opts: MountOpts,
        /// The image (default: disk0)
        image: Option<PathBuf>,
        /// The mount point (default: mnt-<image name> in the VM directory)
        dir: Option<PathBuf>,
    },
    /// Undo `vmk mount`: unmount, detach the loop device, stop the export daemon
    Umount {
        /// The mount point or image (default: disk0's mount)
        dir: Option<PathBuf>,
    },
    /// Copy files and directories into the stopped image's /root/vm
    Putfile {
        #[command(flatten)]
        opts: MountOpts,
        /// Files and directories to copy
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Open a shell (or run CMD) chrooted into the image; everything is undone on exit
    Chroot {
        #[command(flatten)]
        opts: MountOpts,
        /// Command to run instead of a shell
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run zypper --root on the mounted image
    #[command(visible_alias = "zypp")]
    Zypper {
        #[command(flatten)]
        opts: MountOpts,
        /// zypper's arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Remove MAC-bound persistent network rules from the image
    Fixnet {
        #[command(flatten)]
        opts: MountOpts,
    },
    /// Run virt-sysprep on the stopped disk0 (extra arguments go to virt-sysprep)
    Prep {
        /// virt-sysprep's arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Create disk0 as a NOCOW qcow2 file of VMK_INST_DISK0 size (an existing disk0 is left as it is)
    Mkdisk0,
    /// Create the missing extra disks (VMK_DISK1…6, else disk1…diskN) as NOCOW qcow2 of VMK_INST_DISK size (existing ones are left)
    Mkdisks {
        /// How many when no VMK_DISKn is set (disk1…diskN)
        #[arg(short = 'n', long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=6))]
        count: u8,
    },
}

/// Runs vmk-mount.
pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = VmConfig::load_for(&args.global)?;
    cfg.validate()?;
    let dry = args.global.dry_run;
    match args.cmd {
        Cmd::Mount { opts, image, dir } => mount(&cfg, &opts, image.as_deref(), dir, dry),
        Cmd::Umount { dir } => umount(&cfg, dir.as_deref(), dry),
        Cmd::Putfile { opts, files } => putfile(&cfg, &opts, &files, dry),
        Cmd::Chroot { opts, command } => chroot(&cfg, &opts, &command, dry),
        Cmd::Zypper { opts, args } => zypper(&cfg, &opts, &args, dry),
        Cmd::Fixnet { opts } => fixnet(&cfg, &opts, dry),
        Cmd::Prep { args } => prep(&cfg, &args, dry),
        Cmd::Mkdisk0 => {
            let path = cfg.disk0()?.to_path_buf();
            mkdisks(&[path], cfg.inst_disk0, dry)
        }
        Cmd::Mkdisks { count } => {
            let configured: Vec<PathBuf> = cfg.disks.iter().flatten().cloned().collect();
            let paths = if configured.is_empty() {
                (1..=count)
                    .map(|i| cfg.dir.join(format!("disk{i}")))
                    .collect()
            } else {
                configured
            };
            mkdisks(&paths, cfg.inst_disk, dry)
        }
    }
}

fn default_dir(cfg: &VmConfig, image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk0".into());
    let name = if Some(image) == cfg.disk0_path.as_deref() {
        "disk0".into()
    } else {
        name
    };
    cfg.dir.join(format!("mnt-{name}"))
}

fn mount(
    cfg: &VmConfig,
    opts: &MountOpts,
    image: Option<&Path>,
    dir: Option<PathBuf>,
    dry: bool,
) -> Result<ExitCode> {
    let req = MountRequest::new(cfg, image, opts.backend, opts.force)?;
    let dir = dir.unwrap_or_else(|| default_dir(cfg, &req.image));
    if dry {
        return print_lines(image::plan(&req, &dir)?);
    }
    let signals = signals::Interrupts::install()?;
    let state = image::mount_at(&req, &dir, &signals)?;
    vmk_common::errln!(
        "vmk-mount: mounted; undo with `vmk umount` (state in {})",
        image::state_file(&req.image).display()
    );
    vmk_common::outln!("{}", state.dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Finds the mount state for `arg` (a mount point or an image), default disk0's.
fn find_state(cfg: &VmConfig, arg: Option<&Path>) -> Result<MountState> {
    let disk0 = cfg.disk0()?;
    let Some(arg) = arg else {
        return MountState::load(disk0)?.with_context(|| {
            format!(
                "{} is not mounted by vmk (no {})",
                disk0.display(),
                image::state_file(disk0).display()
            )
        });
    };
    let abs = std::path::absolute(arg).with_context(|| format!("resolving {}", arg.display()))?;
    if let Some(s) = MountState::load(&abs)? {
        return Ok(s);
    }
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(&cfg.dir)
        .with_context(|| format!("reading {}", cfg.dir.display()))?
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "mount") {
            match MountState::load_file(&p) {
                Ok(Some(s)) if s.dir == abs => return Ok(s),
                Ok(_) => {}
                Err(e) => refused.push(e),
            }
        }
    }
    if let Some(e) = refused.into_iter().next() {
        return Err(e.context(format!(
            "{} is not a mount made by vmk, or its state file is refused",
            arg.display()
        )));
    }
    Err(vmk_common::usage!(
        "{} is not a mount made by vmk (no state file found in {})",
        arg.display(),
        cfg.dir.display()
    ))
}

fn umount(cfg: &VmConfig, dir: Option<&Path>, dry: bool) -> Result<ExitCode> {
    let mut state = find_state(cfg, dir)?;
    if dry {
        return print_lines(state.undo_plan());
    }
    let _signals = signals::Interrupts::install()?;
    state.undo()?;
    vmk_common::errln!("vmk-mount: unmounted {}", state.image.display());
    Ok(ExitCode::SUCCESS)
}

fn putfile(cfg: &VmConfig, opts: &MountOpts, files: &[PathBuf], dry: bool) -> Result<ExitCode> {
    for f in files {
        if !f.is_file() && !f.is_dir() {
            return Err(vmk_common::usage!(
                "{} is not a file or directory (putfile copies those)",
                f.display()
            ));
        }
    }
    let req = MountRequest::new(cfg, None, opts.backend, opts.force)?;
    if dry {
        let (root, mut lines) = TempMount::plan(&req)?;
        lines.push(format!(
            "# copy into {}: {}",
            shell::quote(root.join("root/vm").as_os_str()),
            shell::join(files)
        ));
        lines.push(TempMount::undo_note().into());
        return print_lines(lines);
    }
    let m = TempMount::mount(&req)?;
    let put = guestfiles::put_files(m.root(), files)?;
    m.signals().check()?;
    m.unmount()?;
    for p in put {
        vmk_common::outln!("{}", p.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn fixnet(cfg: &VmConfig, opts: &MountOpts, dry: bool) -> Result<ExitCode> {
    let req = MountRequest::new(cfg, None, opts.backend, opts.force)?;
    if dry {
        let (root, mut lines) = TempMount::plan(&req)?;
        let rules = guestfiles::MAC_BOUND_RULES.iter().map(|r| root.join(r));
        lines.push(shell::join(
            ["rm", "-f", "--"]
                .map(PathBuf::from)
                .into_iter()
                .chain(rules),
        ));
        lines.push(TempMount::undo_note().into());
        return print_lines(lines);
    }
    let m = TempMount::mount(&req)?;
    let removed = guestfiles::fix_net(m.root())?;
    m.unmount()?;
    if removed.is_empty() {
        vmk_common::errln!("vmk-mount: no MAC-bound network rules found");
    }
    for p in removed {
        vmk_common::outln!("removed {}", p.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Mounts for a chroot (their host paths), undone in reverse by the guard.
#[derive(Debug, Default)]
struct Binds(Vec<PathBuf>);

/// `mount <extra> SRC DST`: how a dry run shows a system mount.
fn bind_command(src: &Path, dst: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("mount");
    c.args(extra).arg(src).arg(dst);
    c
}

impl Binds {
    /// Mounts `b` on its directory in the guest, opened inside the root without following
    /// a symlink (a guest `/proc -> /host/dir` is refused) and mounted on through its
    /// descriptor, so nothing can swap the directory in between.
    fn system(&mut self, root: &GuestRoot, b: &SystemBind) -> Result<()> {
        let guest = Path::new("/").join(b.dst);
        let target = root.open_mount_point(&guest).with_context(|| {
            format!(
                "chroot needs {} of the image as a plain directory to mount the host's on",
                guest.display()
            )
        })?;
        let real = root.check_inside(&target, &guest)?;
        b.mount_on(&guestpath::fd_path(&target), &real)?;
        self.0.push(real.clone());
        if b.fstype.is_none() {
            // The new mount, reached through the same directory (a mount point cannot be
            // renamed away): make it a slave so unmounting it leaves the host's alone.
            let top = root.open_mount_point(&guest)?;
            let host = rustix::fs::stat(b.src)?;
            let st = rustix::fs::fstat(&top)?;
            if (st.st_dev, st.st_ino) != (host.st_dev, host.st_ino) {
                bail!(
                    "{} is not the host's {} after binding it there",
                    real.display(),
                    b.src
                );
            }
            vmk_common::chroot::make_rslave(&guestpath::fd_path(&top), &real)?;
        }
        Ok(())
    }

    /// Binds the host's /etc/resolv.conf over the guest's when that is a plain file.
    fn resolv_conf(&mut self, root: &GuestRoot) -> Result<()> {
        let guest = Path::new("/etc/resolv.conf");
        let host = Path::new("/etc/resolv.conf");
        let fd = root.open_in_root(guest, OFlags::PATH | OFlags::NOFOLLOW);
        let plain = fd
            .as_ref()
            .ok()
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .is_some_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            });
        let (Ok(fd), true, true) = (fd, plain, host.exists()) else {
            log::info!("the guest's /etc/resolv.conf is not a plain file: not bound");
            return Ok(());
        };
        let real = root.check_inside(&fd, guest)?;
        nix::mount::mount(
            Some(host),
            &guestpath::fd_path(&fd),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("mounting {} on {}", host.display(), real.display()))?;
        self.0.push(real);
        Ok(())
    }

    fn undo(&mut self) -> Result<()> {
        while let Some(d) = self.0.last().cloned() {
            // Recursive binds (/dev, /sys) may carry submounts: detach them all.
            let out = Command::new("umount").arg("-R").arg(&d).output();
            if !out.is_ok_and(|o| o.status.success()) && is_mount_point(&d) {
                image::umount(&d)?;
            }
            self.0.pop();
        }
        Ok(())
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            log::error!("{e:#}");
        }
    }
}

/// Mounts /dev, /proc, /sys and resolv.conf into `root`.
fn bind_system(root: &Path, binds: &mut Binds) -> Result<()> {
    let root = GuestRoot::open(root)?;
    for b in &SYSTEM_BINDS {
        binds.system(&root, b)?;
    }
    binds.resolv_conf(&root)
}

fn chroot(cfg: &VmConfig, opts: &MountOpts, command: &[String], dry: bool) -> Result<ExitCode> {
    if !vmk_common::host::is_root() {
        return Err(vmk_common::usage!("chroot needs root (run it with sudo)"));
    }
    let req = MountRequest::new(cfg, None, opts.backend, opts.force)?;
    if dry {
        let (root, mut lines) = TempMount::plan(&req)?;
        lines.push(
            "# each directory opened inside the image (a symlink there is refused) and mounted on through its descriptor:".into(),
        );
        for b in &SYSTEM_BINDS {
            lines.push(shell::command_line(&bind_command(
                Path::new(b.src),
                &root.join(b.dst),
                b.extra,
            )));
        }
        lines.push(
            "# and the host's /etc/resolv.conf over the guest's when that is a plain file".into(),
        );
        let mut c = Command::new("chroot");
        c.arg(&root);
        if command.is_empty() {
            c.args(["/bin/bash", "-l"]);
            lines.push("# (/bin/sh -l when the image has no bash)".into());
        } else {
            c.args(command);
        }
        lines.push(shell::command_line(&c));
        lines.push(TempMount::undo_note().into());
        return print_lines(lines);
    }
    let m = TempMount::mount(&req)?;
    let mut binds = Binds::default();
    bind_system(m.root(), &mut binds)?;
    m.signals().check()?;
    let mut c = Command::new("chroot");
    c.arg(m.root());
    if command.is_empty() {
        let groot = GuestRoot::open(m.root())?;
        let sh = ["bin/bash", "bin/sh"]
            .into_iter()
            .find(|s| groot.exists(Path::new(s)))
            .context("the image has no /bin/sh")?;
        vmk_common::errln!(
            "vmk-mount: shell in {}; exit it to unmount",
            req.image.display()
        );
        c.arg(format!("/{sh}")).arg("-l");
    } else {
        c.args(command);
    }
    // Ctrl-C goes to the shell; vmk only notes it (signals are caught) and cleans up after.
    // What is made in the guest gets a guest's usual umask, not vmk's private one.
    let status = with_umask(GUEST_UMASK, || c.status()).context("running chroot");
    m.signals().clear();
    binds.undo()?;
    m.unmount()?;
    Ok(exit_code(status?))
}

fn zypper(cfg: &VmConfig, opts: &MountOpts, args: &[String], dry: bool) -> Result<ExitCode> {
    let req = MountRequest::new(cfg, None, opts.backend, opts.force)?;
    if dry {
        let (root, mut lines) = TempMount::plan(&req)?;
        lines.push(shell::command_line(&zypper_command(&root, args)));
        lines.push(TempMount::undo_note().into());
        return print_lines(lines);
    }
    if Command::new("zypper")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("zypper is not installed on this host (it runs here with --root on the image)");
    }
    let m = TempMount::mount(&req)?;
    let status = image_rpm_macros(m.root()).and_then(|macros| {
        let mut c = zypper_command(m.root(), args);
        c.env("HOME", macros.path());
        with_umask(GUEST_UMASK, || c.status()).context("running zypper")
    });
    m.signals().clear();
    m.unmount()?;
    Ok(exit_code(status?))
}

/// `zypper --root ROOT ARGS…`.
fn zypper_command(root: &Path, args: &[String]) -> Command {
    let mut c = Command::new("zypper");
    c.arg("--root").arg(root).args(args);
    c
}

/// Where the image's own rpm keeps its database: as its rpm's macros say, else where one
/// already is, else where current SUSE systems keep it.
fn image_rpm_dbpath(root: &Path) -> String {
    const SYSIMAGE: &str = "/usr/lib/sysimage/rpm";
    let from_macros = fs::read_to_string(root.join("usr/lib/rpm/macros"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let value = l.strip_prefix("%_dbpath")?.trim();
                (value.starts_with('/') && !value.contains(['%', ' '])).then(|| value.to_string())
            })
        });
    from_macros.unwrap_or_else(|| {
        [SYSIMAGE, "/var/lib/rpm"]
            .into_iter()
            .find(|d| root.join(&d[1..]).is_dir())
            .unwrap_or(SYSIMAGE)
            .to_string()
    })
}

/// A HOME for zypper whose `.rpmmacros` points rpm at the image's own database
/// ([`image_rpm_dbpath`]): the host's rpm and its macros do the work, and a host rpm's
/// database path (Debian's: `~/.rpmdb`, under --root) would put the packages zypper
/// installs where the guest's rpm never looks.
fn image_rpm_macros(root: &Path) -> Result<tempfile::TempDir> {
    let home = tempfile::Builder::new()
        .prefix("vmk-zypper-")
        .tempdir()
        .context("making a HOME for zypper")?;
    let dbpath = image_rpm_dbpath(root);
    log::info!("zypper: the image's rpm database is {dbpath}");
    fs::write(
        home.path().join(".rpmmacros"),
        format!("%_dbpath {dbpath}\n"),
    )
    .context("writing zypper's .rpmmacros")?;
    Ok(home)
}

fn prep(cfg: &VmConfig, args: &[String], dry: bool) -> Result<ExitCode> {
    let req = MountRequest::new(cfg, None, Backend::Guestmount, false)?;
    let users = image::qemu_users(&req.image)?;
    if !users.is_empty() {
        bail!(
            "{} is in use by a running qemu (pid {users:?}): stop the VM first",
            req.image.display()
        );
    }
    if MountState::load(&req.image)?.is_some() {
        bail!("{} is mounted: run `vmk umount` first", req.image.display());
    }
    let mut c = Command::new("virt-sysprep");
    c.arg(format!("--format={}", req.format.as_str()))
        .arg("-a")
        .arg(&req.image)
        .args(args);
    image::guestmount::libguestfs_env(&mut c, req.force_tcg);
    if dry {
        return print_lines([shell::command_line(&c)]);
    }
    let status = c
        .status()
        .context("running virt-sysprep (install libguestfs-tools)")?;
    Ok(exit_code(status))
}

/// Creates each path that does not exist as an empty NOCOW file, then a qcow2 of `size` in
/// it, and prints it. An existing path (whatever it is) is said and left as it is, as the
/// original vmk did: `mkdisks` makes what is missing however often it runs, and never
/// overwrites a disk.
pub fn mkdisks(paths: &[PathBuf], size: Size, dry: bool) -> Result<ExitCode> {
    for p in paths {
        if p.symlink_metadata().is_ok() {
            vmk_common::errln!("vmk-mount: {} exists: left as it is", p.display());
            continue;
        }
        let create = QemuImgCreate::new(p, DiskFormat::Qcow2, size.bytes());
        if dry {
            print_lines([
                format!(
                    "# create {} empty, with the NOCOW attribute (chattr +C)",
                    shell::quote(p.as_os_str())
                ),
                create.shell_quoted(),
            ])?;
            continue;
        }
        let nocow = vmk_common::fileops::create_nocow_file(p, 0)
            .with_context(|| format!("creating {}", p.display()))?;
        if !nocow {
            log::warn!("{}: this filesystem takes no NOCOW flag", p.display());
        }
        create.run()?;
        vmk_common::errln!(
            "vmk-mount: created {} ({size}, qcow2{})",
            p.display(),
            if nocow { ", NOCOW" } else { "" }
        );
        vmk_common::outln!("{}", p.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a dry run's lines (shell commands and `#` comments), one per line.
fn print_lines<I: IntoIterator<Item = S>, S: std::fmt::Display>(lines: I) -> Result<ExitCode> {
    for l in lines {
        vmk_common::outln!("{l}")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn putfile_of_a_missing_file_exits_2() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("vm-config");
        std::fs::write(&cfg, "VMK_DISK0=disk0.img\n").unwrap();
        let a = Args::try_parse_from([
            "vmk-mount",
            "-c",
            cfg.to_str().unwrap(),
            "putfile",
            tmp.path().join("nosuch").to_str().unwrap(),
        ])
        .unwrap();
        let err = run(a).unwrap_err();
        assert_eq!(vmk_common::cli::exit_status_of(&err), 2, "{err:#}");
        assert!(
            err.to_string().contains("is not a file or directory"),
            "{err:#}"
        );
    }

    /// The image's rpm database: as the image's macros say, else where one is, else
    /// current SUSE's place.
    #[test]
    fn image_rpm_dbpath_follows_the_image() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(image_rpm_dbpath(r), "/usr/lib/sysimage/rpm");
        fs::create_dir_all(r.join("var/lib/rpm")).unwrap();
        assert_eq!(image_rpm_dbpath(r), "/var/lib/rpm");
        fs::create_dir_all(r.join("usr/lib/rpm")).unwrap();
        fs::write(
            r.join("usr/lib/rpm/macros"),
            "%_usr /usr\n%_dbpath\t\t/usr/lib/sysimage/rpm\n",
        )
        .unwrap();
        assert_eq!(image_rpm_dbpath(r), "/usr/lib/sysimage/rpm");
        // a computed value (Debian's `%(…)`) is not the image's answer
        fs::write(r.join("usr/lib/rpm/macros"), "%_dbpath %(echo ~/.rpmdb)\n").unwrap();
        assert_eq!(image_rpm_dbpath(r), "/var/lib/rpm");
    }
}
