//! `vmk bootstrap`: a new VM directory from nothing — a distribution installed from its
//! packages (debootstrap for Debian) onto a NOCOW disk0, with the guest's own kernel and
//! initrd for direct boot and an ssh key pair, so that `vmk run && vmk waitssh` works at once.
//! This is what a new user runs first.
//!
//! disk0 is a *raw ext4 filesystem without a partition table*, made by `mkfs.ext4 -d` from
//! the staged root tree: that needs no loop device, no nbd and no mounting, is fast, and
//! boots directly with `root=/dev/vda`. Snapshots are reflink copies, so qcow2's own
//! snapshots are not needed (`qemu-img convert -O qcow2` turns it into one when wanted).
//!
//! Everything is built in `DIR.vmk-tmp-*` beside DIR and renamed to DIR only when complete:
//! a failure or Ctrl-C leaves nothing behind (mounts that debootstrap may have left are
//! detached before the staging tree is removed, and removal never crosses filesystems).
//!
//! The steps that make a Debian system and turn it into a bootable image ([`debootstrap`],
//! [`configure_root`], [`copy_kernel`], [`make_ext4_image`]) are public, so that the test
//! fixture `vmk_testkit::guest::debian_guest` is built by this very code.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::{self, LoadOptions, RawConfig, Size};
use vmk_common::outln;
use vmk_common::time::UtcTime;

/// Name of the log file (debootstrap's output and every command run) in the new directory.
pub const LOG_NAME: &str = "bootstrap.log";
/// The disk image's file name (VMK_DISK0).
pub const DISK0_NAME: &str = "disk0.raw";
/// The ext4 label of the root filesystem.
pub const ROOT_LABEL: &str = "vmkroot";
/// Kernel arguments for direct boot of the bootstrapped disk (VMK_APPEND).
pub const APPEND: &str = "console=ttyS0 root=/dev/vda rw";
/// Default Debian release.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Debian packages every bootstrapped guest gets (plus the kernel, see [`kernel_package`]).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "udev",
    "iproute2",
    "kmod",
    "qemu-guest-agent",
    "ca-certificates",
];

/// Which distribution to install.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Distro {
    /// Debian, with debootstrap.
    #[default]
    Debian,
    /// openSUSE, with `zypper --root` (needs zypper on this machine).
    Opensuse,
}

/// Options of `bootstrap`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Examples:
  vmk bootstrap /vms/deb1                 Debian bookworm, 4G disk, first free VM number
  vmk bootstrap --packages vim,git --size 8G --vnc 5 deb2
  cd deb2 && vmk run && vmk waitssh -- uname -a

Needs root (debootstrap installs packages as root). The freshly installed system is kept in
~/.cache/vmk (a tar of about 400 MB per release, architecture, mirror and package list), so
the next bootstrap of the same kind takes seconds, not minutes; each VM still gets its own
ssh host keys, machine-id and vm-key (--no-cache: neither use nor fill the cache).")]
pub struct BootstrapArgs {
    /// The distribution to install
    #[arg(long, value_enum, default_value_t = Distro::Debian)]
    pub distro: Distro,

    /// The release to install [default: bookworm]
    #[arg(long, value_name = "SUITE", value_parser = parse_suite)]
    pub suite: Option<String>,

    /// Package mirror [default: the Debian mirror apt uses here, else deb.debian.org]
    #[arg(long, value_name = "URL", value_parser = parse_mirror)]
    pub mirror: Option<String>,

    /// Size of disk0 (a sparse file: it takes only what is used)
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    pub size: Size,

    /// More packages to install (comma-separated; repeat the option as you like)
    #[arg(long, value_name = "PKG,…", value_delimiter = ',', value_parser = parse_package)]
    pub packages: Vec<String>,

    /// The VM's number, VMK_VNC, 0–99 [default: the first whose ports are free and that no
    /// VM directory beside DIR uses]
    #[arg(long, value_name = "N", value_parser = parse_vnc)]
    pub vnc: Option<u8>,

    /// VMK_NAME of the new VM [default: DIR's name]; its hostname is made from it
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Neither use nor fill the cache of installed systems in ~/.cache/vmk
    #[arg(long)]
    pub no_cache: bool,

    /// The new VM directory: must not exist, or be empty
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

fn parse_suite(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !s.starts_with('-');
    ok.then(|| s.to_string())
        .ok_or_else(|| "expected a release name such as bookworm or trixie".into())
}

fn parse_mirror(s: &str) -> Result<String, String> {
    let ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|p| s.starts_with(p))
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| s.to_string())
        .ok_or_else(|| "expected an http://, https:// or file:/ URL of a package mirror".into())
}

fn parse_size(s: &str) -> Result<Size, String> {
    let size: Size = s
        .parse()
        .map_err(|_| "expected a size such as 4G or 8192M".to_string())?;
    if size.bytes() < 512 << 20 {
        return Err("too small: a bootstrapped system needs at least 512M".into());
    }
    Ok(size)
}

fn parse_package(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:_".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("`{s}` is not a package name (lowercase letters, digits, + - . :)"))
}

fn parse_vnc(s: &str) -> Result<u8, String> {
    config::values::parse_vnc(s).map_err(|_| "expected a VM number from 0 to 99".to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    config::values::parse_word(s)
        .map_err(|_| "expected a single word of letters, digits and . _ - + : @".to_string())
}

// ---------------------------------------------------------------------------------------
// The plan: everything decided before anything is created.

/// What a bootstrap will do, decided and checked before anything is created.
#[derive(Debug, Clone)]
struct Plan {
    /// The new VM directory (absolute).
    dir: PathBuf,
    /// VMK_NAME.
    name: String,
    /// The guest's hostname.
    hostname: String,
    /// What debootstrap installs.
    debian: DebianRoot,
    size: Size,
    vnc: u8,
    /// The package tarball to use or fill, unless --no-cache.
    cache: Option<PathBuf>,
}

impl Plan {
    fn new(args: &BootstrapArgs) -> Result<Plan> {
        let cwd = std::env::current_dir().context("finding the current directory")?;
        let dir = std::path::absolute(cwd.join(&args.dir)).unwrap_or_else(|_| cwd.join(&args.dir));
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .ok_or_else(|| {
                vmk_common::usage!("{}: give a new directory's name", args.dir.display())
            })?;
        check_dir_is_new(&dir)?;
        let name = match &args.name {
            Some(n) => n.clone(),
            None => vm_name(&dir_name),
        };
        let arch = debian_arch()?;
        let mut packages = debian_packages(&arch);
        for p in &args.packages {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
        let suite = args.suite.clone().unwrap_or_else(|| DEFAULT_SUITE.into());
        let mirror = args.mirror.clone().unwrap_or_else(apt_mirror);
        let cache = (!args.no_cache).then(|| {
            cache_dir().join(format!(
                "debootstrap-{suite}-{arch}-{}.tgz",
                package_key(&suite, &arch, &mirror, &packages)
            ))
        });
        Ok(Plan {
            hostname: hostname_from(&name),
            vnc: match args.vnc {
                Some(n) => n,
                None => choose_vnc(&dir)?,
            },
            dir,
            name,
            debian: DebianRoot {
                suite,
                arch,
                mirror,
                packages,
            },
            size: args.size,
            cache,
        })
    }
}

/// A Debian system to install with debootstrap: release, architecture, mirror, packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianRoot {
    /// The release (bookworm, trixie…).
    pub suite: String,
    /// Debian architecture (amd64, arm64…), see [`debian_arch`].
    pub arch: String,
    /// Package mirror URL, see [`apt_mirror`].
    pub mirror: String,
    /// Packages besides debootstrap's minbase (the kernel among them, for a bootable system).
    pub packages: Vec<String>,
}

impl DebianRoot {
    /// The debootstrap options shared by every run: variant, arch, packages.
    pub fn debootstrap_args(&self) -> Vec<String> {
        vec![
            "--variant=minbase".into(),
            format!("--arch={}", self.arch),
            format!("--include={}", self.packages.join(",")),
        ]
    }
}

/// Refuses a DIR that exists and is not an empty directory.
fn check_dir_is_new(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: give a new directory (bootstrap never writes into an existing VM)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                bail!(
                    "{} does not exist: create it first (mkdir -p), bootstrap makes only the VM directory",
                    parent.display()
                );
            }
            Ok(())
        }
        Err(_) if dir.exists() && !dir.is_dir() => {
            bail!("{} exists and is not a directory", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

/// VMK_NAME from a directory name: characters a config word cannot hold become `-`.
fn vm_name(dir_name: &str) -> String {
    let name: String = dir_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+:@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.trim_matches('-').is_empty() {
        "vmk".into()
    } else {
        name
    }
}

/// A valid hostname (one DNS label) from a VM name.
fn hostname_from(name: &str) -> String {
    let mut label = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if !(c == '-' && label.ends_with('-')) {
            label.push(c);
        }
    }
    let label: String = label.trim_matches('-').chars().take(63).collect();
    let label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        "vmk".into()
    } else {
        label
    }
}

/// The Debian name of this machine's architecture.
pub fn debian_arch() -> Result<String> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => bail!(
            "bootstrapping on {other} is not supported: no Debian kernel flavour known for it"
        ),
    }
    .to_string())
}

/// Every package a bootstrapped Debian guest of `arch` gets: [`DEBIAN_PACKAGES`] and the
/// kernel.
pub fn debian_packages(arch: &str) -> Vec<String> {
    let mut packages: Vec<String> = DEBIAN_PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.push(kernel_package(arch));
    packages
}

/// The kernel package: the small "cloud" flavour (virtio drivers, no hardware bloat) where
/// Debian has one.
fn kernel_package(arch: &str) -> String {
    match arch {
        "amd64" | "arm64" => format!("linux-image-cloud-{arch}"),
        "i386" => "linux-image-686".into(),
        "ppc64el" => "linux-image-powerpc64le".into(),
        other => format!("linux-image-{other}"),
    }
}

/// The Debian mirror apt uses on this machine (its first Debian archive URI), else
/// deb.debian.org.
pub fn apt_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "list" || e == "sources"))
        .filter_map(|f| fs::read_to_string(f).ok())
        .find_map(|text| mirror_in(&text))
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// Finds a Debian archive URI (not debian-security) in a sources.list or deb822 text.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let l = l.strip_prefix("URIs:").unwrap_or(l);
            l.split_whitespace().map(str::to_string).collect::<Vec<_>>()
        })
        .find(|w| {
            (w.starts_with("http://") || w.starts_with("https://"))
                && w.trim_end_matches('/').ends_with("/debian")
        })
}

/// `$XDG_CACHE_HOME/vmk`, else `~/.cache/vmk`.
fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("vmk");
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("vmk")
}

/// A stable key for the package tarball: what debootstrap was asked to fetch.
fn package_key(suite: &str, arch: &str, mirror: &str, packages: &[String]) -> String {
    let sorted: BTreeSet<&str> = packages.iter().map(String::as_str).collect();
    let mut text = format!("{suite}\n{arch}\n{}\n", mirror.trim_end_matches('/'));
    for p in sorted {
        text.push_str(p);
        text.push(',');
    }
    format!("{:016x}", vmk_common::state::fnv1a64(text.as_bytes()))
}

/// The first VM number whose VNC, serial and ssh ports are free on VMK_LISTEN and that no
/// VM directory beside `dir` uses. Port bases come from the user's config files.
fn choose_vnc(dir: &Path) -> Result<u8> {
    let cfg = config::load(&LoadOptions {
        dir: Some(dir.to_path_buf()),
        ..LoadOptions::new()
    })
    .context("reading the config files for the port bases")?;
    let taken = sibling_vncs(dir.parent().unwrap_or(Path::new("/")));
    first_free_vnc(&taken, |n| {
        ports_free(
            cfg.listen,
            &[
                5900 + u32::from(n),
                u32::from(cfg.telnet_base) + u32::from(n),
                u32::from(cfg.ssh_base) + u32::from(n),
            ],
        )
    })
    .ok_or_else(|| {
        anyhow!(
            "no free VM number from 1 to 99 (ports in use or taken by VMs beside it): give --vnc N"
        )
    })
}

fn first_free_vnc(taken: &BTreeSet<u8>, free: impl Fn(u8) -> bool) -> Option<u8> {
    (1..=99u8).find(|n| !taken.contains(n) && free(*n))
}

fn ports_free(addr: IpAddr, ports: &[u32]) -> bool {
    ports
        .iter()
        .all(|p| u16::try_from(*p).is_ok_and(|p| vmk_common::state::port_is_free(addr, p)))
}

/// VMK_VNC values of the VM directories in `parent` (unset counts as the default, 1).
fn sibling_vncs(parent: &Path) -> BTreeSet<u8> {
    let Ok(entries) = fs::read_dir(parent) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| fs::read(e.path().join(config::VM_FILE_NAME)).ok())
        .filter_map(|bytes| RawConfig::parse(&bytes, "vm-config").ok())
        .map(|raw| {
            raw.last("VMK_VNC")
                .and_then(|(_, a)| a.literal())
                .and_then(|v| config::values::parse_vnc(&v).ok())
                .unwrap_or(1)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running it

/// Runs `vmk bootstrap`.
pub fn run(global: &GlobalOpts, args: BootstrapArgs) -> Result<ExitCode> {
    if args.distro == Distro::Opensuse {
        return opensuse(&args);
    }
    let plan = Plan::new(&args)?;
    check_host_tools()?;
    if global.dry_run {
        print_plan(&plan)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bootstrap needs root: debootstrap installs packages as root (run it with sudo)");
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
        .map(|(what, d)| format!("{what} {}", human_duration(*d)))
        .collect();
    eprintln!(
        "vmk-ayinstall: bootstrapped Debian {} into {} in {} ({})",
        plan.debian.suite,
        plan.dir.display(),
        human_duration(start.elapsed()),
        times.join(", ")
    );
    let ports = config::load(&LoadOptions {
        dir: Some(plan.dir.clone()),
        ..LoadOptions::new()
    })
    .map(|c| format!("; ssh on {}:{}", c.listen, c.ssh_port()))
    .unwrap_or_default();
    eprintln!(
        "vmk-ayinstall: next: cd {} && vmk run && vmk waitssh   (VM number {}{ports})",
        plan.dir.display(),
        plan.vnc,
    );
    outln!("{}", plan.dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// openSUSE needs zypper on the host; say what is missing.
fn opensuse(args: &BootstrapArgs) -> Result<ExitCode> {
    if find_program("zypper").is_none() {
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

fn check_host_tools() -> Result<()> {
    for (program, package) in [
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("ssh-keygen", "openssh-client"),
        ("chroot", "coreutils"),
    ] {
        if find_program(program).is_none() {
            bail!("bootstrap needs {program}, which is not installed: apt-get install {package}");
        }
    }
    Ok(())
}

/// Finds a program on PATH, or in the sbin directories that a user's PATH may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command found with [`find_program`] (so sbin works without it on PATH).
fn command(program: &str) -> Command {
    Command::new(find_program(program).unwrap_or_else(|| PathBuf::from(program)))
}

/// `-D`: what would be done.
fn print_plan(plan: &Plan) -> Result<()> {
    let stage = staging_path(&plan.dir, 0);
    let root = stage.join("root");
    let common = plan.debian.debootstrap_args();
    let mut steps: Vec<Vec<String>> = Vec::new();
    let tail = |root: &Path| {
        vec![
            plan.debian.suite.clone(),
            root.display().to_string(),
            plan.debian.mirror.clone(),
        ]
    };
    let tree = plan.cache.as_deref().map(tree_cache_path);
    match &plan.cache {
        Some(_) if tree.as_deref().is_some_and(Path::is_file) => {
            let tree = tree.as_deref().expect("checked");
            steps.push(vec![
                "tar".into(),
                "-x".into(),
                "-f".into(),
                tree.display().to_string(),
                "-C".into(),
                root.display().to_string(),
            ]);
        }
        Some(tarball) => {
            if !tarball.is_file() {
                let mut a = vec!["debootstrap".to_string()];
                a.extend(common.clone());
                a.push(format!("--make-tarball={}", tarball.display()));
                a.extend(tail(&stage.join("download")));
                steps.push(a);
            }
            let mut a = vec!["debootstrap".to_string()];
            a.extend(common.clone());
            a.push(format!("--unpack-tarball={}", tarball.display()));
            a.extend(tail(&root));
            steps.push(a);
        }
        None => {
            let mut a = vec!["debootstrap".to_string()];
            a.extend(common);
            a.extend(tail(&root));
            steps.push(a);
        }
    }
    steps.push(vec![
        "ssh-keygen".into(),
        "-q".into(),
        "-t".into(),
        "ed25519".into(),
        "-N".into(),
        String::new(),
        "-f".into(),
        stage.join("vm-key").display().to_string(),
    ]);
    steps.push(vec![
        "mkfs.ext4".into(),
        "-q".into(),
        "-F".into(),
        "-L".into(),
        ROOT_LABEL.into(),
        "-d".into(),
        root.display().to_string(),
        stage.join(DISK0_NAME).display().to_string(),
    ]);
    for s in steps {
        outln!(
            "{}",
            shlex::try_join(s.iter().map(String::as_str)).unwrap_or_default()
        )?;
    }
    outln!(
        "# configure the root (hostname {}, DHCP, sshd, serial getty), make disk0 NOCOW ({}), copy kernel and initrd",
        plan.hostname,
        plan.size
    )?;
    outln!(
        "# then rename {} to {}; vm-config:",
        stage.display(),
        plan.dir.display()
    )?;
    for line in vm_config_text(plan, "now").lines() {
        outln!("#   {line}")?;
    }
    Ok(())
}

/// `DIR.vmk-tmp-<pid>-<n>` beside DIR.
fn staging_path(dir: &Path, n: u32) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".vmk-tmp-{}-{n}", std::process::id()));
    dir.with_file_name(name)
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
            install_system(plan, &runner, &staging.path, &root)
        })?;
        phase("configure", &mut || {
            configure_root(&root, &plan.hostname, &runner)
        })?;
        phase("ssh key", &mut || {
            ssh_key(plan, &runner, &staging.path, &root)
        })?;
        phase("kernel", &mut || copy_kernel(&root, &staging.path))?;
        phase("disk0", &mut || {
            make_disk(plan, &runner, &staging.path, &root)
        })?;
        phase("vm-config", &mut || {
            write_file(
                &staging.path.join(config::VM_FILE_NAME),
                0o644,
                &vm_config_text(plan, &UtcTime::now().to_string()),
            )
        })?;
        Ok(())
    })();
    if let Err(e) = outcome {
        progress.finish();
        let tail = log_tail(&log, 15);
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
    staging.persist(&plan.dir)?;
    Ok(timings)
}

/// The error of a build stopped by Ctrl-C (or SIGTERM/SIGHUP).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// The staging directory; removed on drop unless persisted.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    fn create(dir: &Path) -> Result<Staging> {
        for n in 0..100 {
            let path = staging_path(dir, n);
            match fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Staging { path, keep: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("cannot find a free staging name beside {}", dir.display())
    }

    /// Moves the finished staging directory to `dir` (an absent or empty directory).
    fn persist(mut self, dir: &Path) -> Result<()> {
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", self.path.display()))?;
        fs::rename(&self.path, dir).with_context(|| {
            format!(
                "renaming {} to {} (did something write into {} meanwhile?)",
                self.path.display(),
                dir.display(),
                dir.display()
            )
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = remove_tree(&self.path) {
                eprintln!("vmk-ayinstall: warning: {e:#}");
            }
        }
    }
}

/// Removes a staging tree (of a build that may have been killed): detaches the mounts
/// debootstrap may have left under it first, and never crosses into another filesystem.
pub fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut mounts = mounts_under(path);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in &mounts {
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("unmounting {}: {e}", m.display());
        }
    }
    let status = command("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg("--")
        .arg(path)
        .status()
        .context("running rm")?;
    if !status.success() {
        bail!(
            "removing {} failed ({status}): remove it by hand",
            path.display()
        );
    }
    Ok(())
}

/// Mount points at or below `path` (from /proc/self/mountinfo, octal escapes decoded).
fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(path))
        .collect()
}

/// Decodes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the external commands of the public steps (`vmk bootstrap` logs them and stops
/// them on Ctrl-C; a test fixture may simply let their output through).
pub trait CommandRunner {
    /// Runs `cmd` to its end; `what` names it in the error when it fails.
    fn run(&self, what: &str, cmd: &mut Command) -> Result<()>;
}

/// Runs child commands with their output in the log file, in their own process group so
/// that Ctrl-C reaches only us; on Ctrl-C the whole group is stopped.
struct Runner<'a> {
    log: &'a Path,
    progress: &'a Progress,
    interrupted: &'a AtomicBool,
}

impl CommandRunner for Runner<'_> {
    fn run(&self, what: &str, cmd: &mut Command) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let shown = shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default();
        writeln!(log, "$ {shown}")?;
        log::info!("running {shown}");
        let mut offset = log.metadata()?.len();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        let mut partial = Vec::new();
        loop {
            if let Some(status) = child.try_wait()? {
                self.pump(&mut offset, &mut partial);
                if status.success() {
                    return Ok(());
                }
                bail!("{what} failed ({status})");
            }
            if self.interrupted.load(Ordering::SeqCst) {
                stop_group(&mut child);
                bail!(Interrupted);
            }
            self.pump(&mut offset, &mut partial);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Runner<'_> {
    /// Shows what the child wrote since `offset`: its last line as the spinner's detail,
    /// every line with -v.
    fn pump(&self, offset: &mut u64, partial: &mut Vec<u8>) {
        let Ok(mut f) = File::open(self.log) else {
            return;
        };
        let mut new = Vec::new();
        if f.seek(SeekFrom::Start(*offset)).is_err() || f.read_to_end(&mut new).is_err() {
            return;
        }
        *offset += new.len() as u64;
        partial.extend_from_slice(&new);
        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = partial.drain(..=end).collect();
        let text = String::from_utf8_lossy(&complete);
        let mut last = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.progress.line(line);
            last = Some(line);
        }
        if let Some(l) = last {
            self.progress.detail(l);
        }
    }
}

/// Stops a child's process group: SIGTERM, then SIGKILL after 10 s; reaps the child.
fn stop_group(child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            // Children of the group may outlive the leader briefly.
            std::thread::sleep(Duration::from_millis(200));
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

/// The last `n` lines of the log, indented.
fn log_tail(log: &Path, n: usize) -> Option<String> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    Some(
        lines[start..]
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

// ---------------------------------------------------------------------------------------
// The phases

/// Installs the system into `root`: from the cached installed tree when there is one, else
/// with debootstrap (then caching the tree, unless --no-cache).
fn install_system(plan: &Plan, runner: &Runner, staging: &Path, root: &Path) -> Result<()> {
    let tree = plan.cache.as_deref().map(tree_cache_path);
    if let Some(tree) = tree.as_deref().filter(|t| t.is_file()) {
        runner
            .progress
            .note(&format!("using the cached system in {}", tree.display()));
        runner.progress.detail("unpacking");
        fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
        runner
            .run(
                "tar -x",
                command("tar")
                    .args(TAR_OPTIONS)
                    .arg("-x")
                    .arg("-f")
                    .arg(tree)
                    .arg("-C")
                    .arg(root),
            )
            .with_context(|| {
                format!(
                    "if the cached system is damaged, remove {} (or use --no-cache)",
                    tree.display()
                )
            })?;
        return fresh_identity(runner, root);
    }
    install_packages(plan, runner, staging, root)?;
    if let (Some(tree), Some(tarball)) = (&tree, &plan.cache) {
        match save_tree(runner, root, tree) {
            // The installed tree holds everything the package tarball did.
            Ok(()) => {
                let _ = fs::remove_file(tarball);
            }
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => runner.progress.note(&format!(
                "warning: could not cache the installed system ({e:#})"
            )),
        }
    }
    fresh_identity(runner, root)
}

/// tar options that keep owners, modes, device nodes and file capabilities.
const TAR_OPTIONS: &[&str] = &[
    "--numeric-owner",
    "-p",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
];

/// The cached installed tree that belongs to a package tarball: `…-root.tar` beside it.
fn tree_cache_path(tarball: &Path) -> PathBuf {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".tgz").unwrap_or(&name);
    tarball.with_file_name(format!("{stem}-root.tar"))
}

/// Saves the freshly installed tree (before any per-VM change) to the cache.
fn save_tree(runner: &Runner, root: &Path, tree: &Path) -> Result<()> {
    runner.progress.detail("caching the installed system");
    let tmp = tree.with_file_name(format!(
        "{}.tmp-{}",
        tree.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = runner
        .run(
            "tar -c",
            command("tar")
                .args(TAR_OPTIONS)
                .args(["--one-file-system", "-c", "-f"])
                .arg(&tmp)
                .arg("-C")
                .arg(root)
                .arg("."),
        )
        .and_then(|()| {
            fs::rename(&tmp, tree)
                .with_context(|| format!("renaming {} to {}", tmp.display(), tree.display()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What must differ between VMs made from the same cached tree: ssh host keys (made anew)
/// and the random seed (dropped); the machine-id is emptied by [`configure`].
fn fresh_identity(runner: &Runner, root: &Path) -> Result<()> {
    let ssh = root.join("etc/ssh");
    if let Ok(rd) = fs::read_dir(&ssh) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    let _ = fs::remove_file(root.join("var/lib/systemd/random-seed"));
    runner.run(
        "ssh-keygen -A",
        command("chroot").arg(root).args(["ssh-keygen", "-A"]),
    )
}

/// debootstrap: the packages downloaded into the package tarball first (when it is
/// missing), then installed from it; or straight from the mirror with --no-cache.
fn install_packages(plan: &Plan, runner: &Runner, staging: &Path, root: &Path) -> Result<()> {
    let install_from = match &plan.cache {
        None => None,
        Some(tarball) if tarball.is_file() => {
            runner.progress.note(&format!(
                "using the cached packages in {}",
                tarball.display()
            ));
            Some(tarball.clone())
        }
        Some(tarball) => match fill_cache(plan, runner, staging, tarball) {
            Ok(()) => Some(tarball.clone()),
            Err(e) if e.is::<Interrupted>() => return Err(e),
            Err(e) => {
                runner.progress.note(&format!(
                    "warning: could not cache the packages ({e:#}); installing without the cache"
                ));
                None
            }
        },
    };
    let debian = &plan.debian;
    runner.progress.detail(&format!(
        "installing Debian {} from {}",
        debian.suite, debian.mirror
    ));
    debootstrap(debian, root, install_from.as_deref(), runner).with_context(
        || match &install_from {
            Some(t) => format!(
                "if the cached package tarball is stale, remove {} (or use --no-cache)",
                t.display()
            ),
            None => format!(
                "check that {} is reachable and has {}",
                debian.mirror, debian.suite
            ),
        },
    )
}

/// Installs `debian` into `root` with debootstrap: from the mirror, or from a package
/// tarball made by `debootstrap --make-tarball`. The downloaded .debs are dropped.
pub fn debootstrap(
    debian: &DebianRoot,
    root: &Path,
    tarball: Option<&Path>,
    runner: &dyn CommandRunner,
) -> Result<()> {
    let mut cmd = command("debootstrap");
    cmd.args(debian.debootstrap_args());
    if let Some(t) = tarball {
        cmd.arg(format!("--unpack-tarball={}", t.display()));
    }
    cmd.arg(&debian.suite).arg(root).arg(&debian.mirror);
    runner.run("debootstrap", &mut cmd)?;
    // The downloaded .debs are not needed inside the image.
    if let Ok(rd) = fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// `debootstrap --make-tarball` into the cache (written under a temporary name).
fn fill_cache(plan: &Plan, runner: &Runner, staging: &Path, tarball: &Path) -> Result<()> {
    let dir = tarball.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tarball.with_extension(format!("tmp-{}.tgz", std::process::id()));
    let download = staging.join("download");
    let debian = &plan.debian;
    runner.progress.detail(&format!(
        "downloading Debian {} from {}",
        debian.suite, debian.mirror
    ));
    let result = runner.run(
        "debootstrap --make-tarball",
        command("debootstrap")
            .args(debian.debootstrap_args())
            .arg(format!("--make-tarball={}", tmp.display()))
            .arg(&debian.suite)
            .arg(&download)
            .arg(&debian.mirror),
    );
    let result = result.and_then(|()| {
        fs::rename(&tmp, tarball)
            .with_context(|| format!("renaming {} to {}", tmp.display(), tarball.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let _ = fs::remove_dir_all(&download);
    result
}

/// Makes an installed Debian tree a VM's system: hostname, fstab (the ext4 labelled
/// [`ROOT_LABEL`]), DHCP with systemd-networkd, sshd for keys only, a serial getty on
/// ttyS0, no root password, an empty machine-id; nothing waits for the network or reaches
/// out on a timer. Runs the guest's own systemctl in a chroot (needs root).
pub fn configure_root(root: &Path, hostname: &str, runner: &dyn CommandRunner) -> Result<()> {
    let h = hostname;
    write_file(&root.join("etc/hostname"), 0o644, &format!("{h}\n"))?;
    write_file(
        &root.join("etc/hosts"),
        0o644,
        &format!("127.0.0.1 localhost\n127.0.1.1 {h}\n::1 localhost ip6-localhost ip6-loopback\n"),
    )?;
    write_file(
        &root.join("etc/fstab"),
        0o644,
        &format!("# written by vmk bootstrap: disk0 is one ext4 filesystem\nLABEL={ROOT_LABEL} / ext4 rw,errors=remount-ro 0 1\n"),
    )?;
    write_file(
        &root.join("etc/systemd/network/80-vmk-dhcp.network"),
        0o644,
        "# written by vmk bootstrap\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )?;
    // qemu's user networking answers DNS at 10.0.2.3 (no resolver daemon in a minbase system).
    write_file(
        &root.join("etc/resolv.conf"),
        0o644,
        "nameserver 10.0.2.3\n",
    )?;
    write_file(
        &root.join("etc/ssh/sshd_config.d/vmk.conf"),
        0o644,
        "# written by vmk bootstrap: root logs in with vm-key only\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
    )?;
    lock_root_password(root)?;
    // Empty: systemd makes a fresh machine-id on the first boot of each copy.
    write_file(&root.join("etc/machine-id"), 0o444, "")?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.is_file() && !dbus_id.is_symlink() {
        fs::remove_file(&dbus_id).with_context(|| format!("removing {}", dbus_id.display()))?;
    }
    // The guest's own systemctl, so its unit files and version decide (works offline in a chroot).
    runner.run(
        "systemctl enable",
        command("chroot").arg(root).args([
            "systemctl",
            "enable",
            "systemd-networkd.service",
            "ssh.service",
            "serial-getty@ttyS0.service",
        ]),
    )?;
    // A VM without network must not wait 2 minutes at boot; nothing should reach out on a
    // timer; e2scrub (LVM snapshots of ext4) has nothing to do here and costs a minute under TCG.
    runner.run(
        "systemctl mask",
        command("chroot").arg(root).args([
            "systemctl",
            "mask",
            "systemd-networkd-wait-online.service",
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "e2scrub_reap.service",
            "e2scrub_all.timer",
        ]),
    )
}

/// Root gets no password at all (`*`): logins are by ssh key only.
fn lock_root_password(root: &Path) -> Result<()> {
    let shadow = root.join("etc/shadow");
    let text =
        fs::read_to_string(&shadow).with_context(|| format!("reading {}", shadow.display()))?;
    let mode = fs::metadata(&shadow)?.mode() & 0o7777;
    write_file(&shadow, mode, &lock_root(&text))
}

fn lock_root(shadow: &str) -> String {
    shadow
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => {
                let after = rest.split_once(':').map_or("", |(_, a)| a);
                format!("root:*:{after}\n")
            }
            None => format!("{l}\n"),
        })
        .collect()
}

/// `vm-key`/`vm-key.pub` in the new directory, and the public key in root's
/// authorized_keys (besides the SMBIOS credential vmk gives systemd guests).
fn ssh_key(plan: &Plan, runner: &Runner, staging: &Path, root: &Path) -> Result<()> {
    let key = staging.join("vm-key");
    runner.run(
        "ssh-keygen",
        command("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("vmk-{}", plan.name))
            .arg("-f")
            .arg(&key),
    )?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    let public = fs::read_to_string(key.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", key.display()))?;
    let ssh_dir = root.join("root/.ssh");
    fs::create_dir_all(&ssh_dir).with_context(|| format!("creating {}", ssh_dir.display()))?;
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))?;
    write_file(&ssh_dir.join("authorized_keys"), 0o600, &public)
}

/// Copies the guest's newest kernel and initrd out of `root`/boot to `dir`/vmlinuz and
/// `dir`/initrd.img, for direct boot.
pub fn copy_kernel(root: &Path, dir: &Path) -> Result<()> {
    let boot = root.join("boot");
    copy_newest(&boot, "vmlinuz-", &dir.join("vmlinuz"))?;
    copy_newest(&boot, "initrd.img-", &dir.join("initrd.img"))
}

/// Copies the newest `<prefix>*` of the guest's /boot to `dest`.
fn copy_newest(dir: &Path, prefix: &str, dest: &Path) -> Result<()> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort_by(|a, b| version_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    let src = found.pop().with_context(|| {
        format!("the guest has no {prefix}* in /boot: did the kernel package install?")
    })?;
    fs::copy(&src, dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Compares strings with runs of digits as numbers (6.1.0-10 after 6.1.0-9).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// disk0: a NOCOW sparse file (NOCOW must be set while it is empty), then the root tree
/// written into it by `mkfs.ext4 -d` (which keeps the file and its flag).
fn make_disk(plan: &Plan, runner: &Runner, staging: &Path, root: &Path) -> Result<()> {
    let used = tree_bytes(root);
    let need = used + used / 5 + (64 << 20);
    if need > plan.size.bytes() {
        bail!(
            "the installed system takes {} MiB: give a disk of at least {} MiB (--size {}M)",
            used >> 20,
            need >> 20,
            (need >> 20) + 1
        );
    }
    let disk = staging.join(DISK0_NAME);
    if !make_ext4_image(root, &disk, plan.size.bytes(), runner)? {
        runner
            .progress
            .note("note: this filesystem has no NOCOW attribute; disk0 is a plain file");
    }
    Ok(())
}

/// Makes `image` (a new sparse file of `size` bytes, NOCOW where the filesystem has the
/// attribute) an ext4 filesystem labelled [`ROOT_LABEL`] holding the tree `root`, with
/// `mkfs.ext4 -d` (no loop device, no mounting). Returns whether the image is NOCOW.
pub fn make_ext4_image(
    root: &Path,
    image: &Path,
    size: u64,
    runner: &dyn CommandRunner,
) -> Result<bool> {
    // NOCOW must be set while the file is empty; mkfs.ext4 keeps the file and its flag.
    let nocow = vmk_common::fileops::create_nocow_file(image, size)
        .with_context(|| format!("creating {}", image.display()))?;
    runner.run(
        "mkfs.ext4",
        command("mkfs.ext4")
            .args(["-q", "-F", "-L", ROOT_LABEL, "-d"])
            .arg(root)
            .arg(image),
    )?;
    Ok(nocow)
}

/// Bytes the files of a tree take (allocated blocks), not following symlinks or mounts.
fn tree_bytes(root: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = meta.dev();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() && m.dev() == dev {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The new VM's config, with comments.
fn vm_config_text(plan: &Plan, when: &str) -> String {
    let q = |v: &str| config::raw::quote(v, config::Quoting::Double);
    format!(
        "\
#!/bin/sh
# vm-config of {name}, written by `vmk bootstrap` on {when}:
# Debian {suite} ({arch}) from {mirror}.
# Read by vmk, never run by a shell. Change a key with `vmk set KEY VALUE`.

# The VM's identifier (qemu -name; the guest's hostname is {hostname}).
VMK_NAME={name_q}
# The VM's number: VNC display :{vnc}, serial console on port VMK_TELNET_BASE+{vnc},
# ssh forwarded from port VMK_SSH_BASE+{vnc} (see `vmk info`).
VMK_VNC={vnc}

# disk0: one ext4 filesystem (label {label}) in a raw file, no partition table.
VMK_DISK0={disk}
VMK_DISK0_FORMAT=raw

# Direct kernel boot with the guest's own kernel and initrd, copied out of its /boot.
# After a kernel update inside the guest, copy the new ones out again.
VMK_KERNEL=vmlinuz
VMK_INITRD=initrd.img
VMK_APPEND={append}
",
        name = plan.name,
        name_q = config::raw::quote(&plan.name, config::Quoting::Bare),
        hostname = plan.hostname,
        when = when,
        suite = plan.debian.suite,
        arch = plan.debian.arch,
        mirror = plan.debian.mirror,
        vnc = plan.vnc,
        label = ROOT_LABEL,
        disk = DISK0_NAME,
        append = q(APPEND),
    )
}

/// Writes a file (replacing a symlink rather than following it), creating parents.
fn write_file(path: &Path, mode: u32, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.is_symlink() {
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

// ---------------------------------------------------------------------------------------
// Progress on a terminal

/// A spinner with the current phase on a terminal; plain lines on stderr otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    verbose: bool,
    phase: std::sync::Mutex<String>,
}

impl Progress {
    fn new(verbose: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {elapsed:>4} {prefix}: {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            verbose,
            phase: std::sync::Mutex::new(String::new()),
        }
    }

    fn phase(&self, what: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = what.to_string();
        match &self.bar {
            Some(b) => {
                b.reset_elapsed();
                b.set_prefix(what.to_string());
                b.set_message("");
            }
            None => eprintln!("vmk-ayinstall: {what}…"),
        }
    }

    fn done(&self, what: &str, took: Duration) {
        self.note(&format!("{what} done ({})", human_duration(took)));
    }

    /// A line that stays (on a terminal: above the spinner).
    fn note(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(format!("vmk-ayinstall: {text}")),
            None => eprintln!("vmk-ayinstall: {text}"),
        }
    }

    /// What the phase is doing right now (the spinner's message).
    fn detail(&self, text: &str) {
        if let Some(b) = &self.bar {
            b.set_message(text.trim().to_string());
        }
    }

    /// A line of a command's output: shown with -v, else only in the log.
    fn line(&self, text: &str) {
        if self.verbose {
            match &self.bar {
                Some(b) => b.println(format!("  {text}")),
                None => eprintln!("  {text}"),
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("terminal", &self.bar.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BootstrapArgs,
    }

    fn parse(argv: &[&str]) -> Result<BootstrapArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bootstrap").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    fn plan_in(dir: &Path) -> Plan {
        Plan {
            dir: dir.to_path_buf(),
            name: "deb-1".into(),
            hostname: "deb-1".into(),
            debian: DebianRoot {
                suite: "bookworm".into(),
                mirror: "http://deb.debian.org/debian".into(),
                arch: "amd64".into(),
                packages: vec!["systemd".into()],
            },
            size: "4G".parse().unwrap(),
            vnc: 7,
            cache: None,
        }
    }

    #[test]
    fn arguments_are_checked() {
        let a = parse(&[
            "--packages",
            "vim,git",
            "--packages",
            "htop",
            "--vnc",
            "85",
            "d",
        ])
        .unwrap();
        assert_eq!(a.packages, ["vim", "git", "htop"]);
        assert_eq!(a.vnc, Some(85));
        assert_eq!(a.size.bytes(), 4 << 30);
        assert_eq!(a.distro, Distro::Debian);
        assert_eq!(parse(&["--size", "8G", "d"]).unwrap().size.bytes(), 8 << 30);
        assert!(parse(&["--opensuse", "d"]).is_err());
        assert_eq!(
            parse(&["--distro", "opensuse", "d"]).unwrap().distro,
            Distro::Opensuse
        );
        for bad in [
            &["--vnc", "100", "d"][..],
            &["--size", "lots", "d"],
            &["--size", "100M", "d"],
            &["--packages", "vim;rm", "d"],
            &["--packages", "-x", "d"],
            &["--suite", "Book Worm", "d"],
            &["--mirror", "ftp://x/debian", "d"],
            &["--name", "a b", "d"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let t = tempfile::tempdir().unwrap();
        let full = t.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("x"), "").unwrap();
        let e = check_dir_is_new(&full).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(check_dir_is_new(&t.path().join("new")).is_ok());
        fs::create_dir(t.path().join("empty")).unwrap();
        assert!(check_dir_is_new(&t.path().join("empty")).is_ok());
        let e = check_dir_is_new(&t.path().join("no/such"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_dir_is_new(&full.join("x")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        // Through the command: refused before root or debootstrap are looked at.
        let a = parse(&["--vnc", "3", full.to_str().unwrap()]).unwrap();
        let e = run(&GlobalOpts::default(), a).unwrap_err();
        assert!(format!("{e:#}").contains("not empty"), "{e:#}");
        assert!(full.join("x").exists());
    }

    #[test]
    fn opensuse_says_what_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let a = parse(&["--distro", "opensuse", t.path().join("s").to_str().unwrap()]).unwrap();
        let e = format!("{:#}", run(&GlobalOpts::default(), a).unwrap_err());
        if find_program("zypper").is_none() {
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
        if check_host_tools().is_ok() {
            run(&g, a).unwrap();
            assert!(!dir.exists());
            assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn config_text_loads_back() {
        let t = tempfile::tempdir().unwrap();
        let plan = plan_in(t.path());
        let text = vm_config_text(&plan, "2024-01-02 03:04:05 UTC");
        assert!(text.starts_with("#!/bin/sh\n# vm-config of deb-1"));
        fs::write(t.path().join("vm-config"), &text).unwrap();
        let none = t.path().join("none");
        let cfg = config::load(&LoadOptions {
            dir: Some(t.path().to_path_buf()),
            system_file: Some(none.clone()),
            user_file: Some(none),
            env: false,
            ..LoadOptions::new()
        })
        .unwrap();
        assert_eq!(cfg.name.as_deref(), Some("deb-1"));
        assert_eq!(cfg.vnc, 7);
        assert_eq!(
            cfg.disk0_path.as_deref(),
            Some(t.path().join(DISK0_NAME).as_path())
        );
        assert_eq!(cfg.disk0_format, Some(config::DiskFormat::Raw));
        assert_eq!(
            cfg.kernel.as_deref(),
            Some(t.path().join("vmlinuz").as_path())
        );
        assert_eq!(
            cfg.initrd.as_deref(),
            Some(t.path().join("initrd.img").as_path())
        );
        assert_eq!(cfg.append.as_deref(), Some(APPEND));
    }

    #[test]
    fn names_and_hostnames() {
        assert_eq!(vm_name("deb 12"), "deb-12");
        assert_eq!(vm_name("My_VM.1"), "My_VM.1");
        assert_eq!(vm_name("  "), "vmk");
        assert_eq!(hostname_from("My_VM.1"), "my-vm-1");
        assert_eq!(hostname_from("--a__b--"), "a-b");
        assert_eq!(hostname_from("@@@"), "vmk");
        assert_eq!(hostname_from(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn vnc_choice_skips_taken_and_busy() {
        let taken: BTreeSet<u8> = [1, 2].into();
        assert_eq!(first_free_vnc(&taken, |n| n != 3), Some(4));
        assert_eq!(first_free_vnc(&BTreeSet::new(), |_| false), None);
        let t = tempfile::tempdir().unwrap();
        for (d, cfg) in [
            ("a", "VMK_VNC=5\n"),
            ("b", "VMK_NAME=b\n"),
            ("c", "junk $(x\n"),
        ] {
            fs::create_dir(t.path().join(d)).unwrap();
            fs::write(t.path().join(d).join("vm-config"), cfg).unwrap();
        }
        let found = sibling_vncs(t.path());
        assert!(found.contains(&5) && found.contains(&1), "{found:?}");
        // A port in use makes its number unavailable.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = u32::from(l.local_addr().unwrap().port());
        assert!(!ports_free("127.0.0.1".parse().unwrap(), &[port]));
        assert!(!ports_free("127.0.0.1".parse().unwrap(), &[70_000]));
    }

    #[test]
    fn mirrors_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let list = "deb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(list).as_deref(),
            Some("http://ftp.de.debian.org/debian/")
        );
        assert_eq!(
            mirror_in("URIs: http://deb.debian.org/debian-security\n"),
            None
        );
    }

    #[test]
    fn package_keys_ignore_order_but_not_content() {
        let a = package_key(
            "bookworm",
            "amd64",
            "http://m/debian",
            &["a".into(), "b".into()],
        );
        let b = package_key(
            "bookworm",
            "amd64",
            "http://m/debian/",
            &["b".into(), "a".into()],
        );
        let c = package_key(
            "trixie",
            "amd64",
            "http://m/debian",
            &["a".into(), "b".into()],
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn small_helpers() {
        assert_eq!(
            lock_root("root:$6$x:19000:0:99999:7:::\nbin:*:1::\n"),
            "root:*:19000:0:99999:7:::\nbin:*:1::\n"
        );
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert!(version_cmp("vmlinuz-6.1.0-10-cloud", "vmlinuz-6.1.0-9-cloud").is_gt());
        assert!(version_cmp("a-1", "a-1").is_eq());
        assert_eq!(kernel_package("amd64"), "linux-image-cloud-amd64");
        let ts = UtcTime::now().to_string();
        assert_eq!(ts.len(), 23, "{ts}");
        assert!(ts.starts_with("20"));
        assert_eq!(
            tree_cache_path(Path::new("/c/vmk/debootstrap-bookworm-amd64-0123.tgz")),
            Path::new("/c/vmk/debootstrap-bookworm-amd64-0123-root.tar")
        );
        let p = staging_path(Path::new("/vms/deb"), 3);
        assert!(p.to_string_lossy().starts_with("/vms/deb.vmk-tmp-"));
        assert!(p.to_string_lossy().ends_with("-3"));
    }
}
