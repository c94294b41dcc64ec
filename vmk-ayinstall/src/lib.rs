//! vmk-ayinstall: install guests without a human — SUSE media with or without AutoYaST,
//! profiles assembled from snippets, cloud-init seeds for cloud images.
//!
//! Everything it hands to a guest (CD images, floppy images, the installer's kernel taken off
//! the medium) is made in Rust by the modules below, so it needs no mkisofs, mkfs.fat,
//! isoinfo, loop devices or root.

pub mod install;
pub mod profile;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vmk_common::cli::{GlobalOpts, Tool};
use vmk_common::outln;
use vmk_media::{cloudinit, fat, iso9660};

/// Install guests without a human: autoyast, cloud-init.
///
/// With no command (or only install options), runs `ayinstall`.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-ayinstall",
    version,
    about = "Install guests without a human: autoyast, cloud-init",
    after_help = "Without a command, vmk-ayinstall runs `ayinstall` with the options given."
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// What to do (default: ayinstall)
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub ayinstall: AyInstallOpts,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// The commands of vmk-ayinstall.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Install from VMK_ISO unattended, with autoinst.xml on a second CD and a floppy
    Ayinstall(AyInstallCmd),
    /// Install from VMK_ISO interactively (installer on VNC and the serial console)
    Qinstall(InstallOpts),
    /// Assemble an AutoYaST profile from snippets (or list snippets, or check a profile)
    Profile(ProfileOpts),
    /// List the AutoYaST snippets (same as `profile --list`)
    Snippets,
    /// Make a cloud-init NoCloud seed ISO (cidata) with the VM's key and hostname
    #[command(visible_alias = "seed")]
    Cloudinit(CloudInitOpts),
    /// Make an ISO 9660 image (Rock Ridge and Joliet) from files
    Mkiso(MkisoOpts),
    /// Make a 1.44 MB FAT12 floppy image from files
    Mkfloppy(MkfloppyOpts),
    /// Take the installer kernel and initrd off a SUSE-layout ISO
    Loader(LoaderOpts),
    /// Create a new VM directory with a distribution installed from packages (debootstrap)
    Bootstrap(vmk_bootstrap::BootstrapArgs),
}

/// Options of both installs.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOpts {
    /// Install medium (default: VMK_ISO, looked up in VMK_ISO_DIR)
    #[arg(long, value_name = "ISO")]
    pub iso: Option<PathBuf>,

    /// Architecture of the medium (default: VMK_ARCH, else detected)
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,

    /// More kernel arguments for the installer, after VMK_INST_APPEND
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,

    /// Stop after phase 1 (do not boot the installed disk)
    #[arg(long)]
    pub no_phase2: bool,

    /// Stop qemu and fail when a phase runs longer than SECONDS
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

impl InstallOpts {
    fn request(&self) -> install::Request {
        install::Request {
            iso: self.iso.clone(),
            arch: self.arch.clone(),
            append: self.append.clone(),
            no_phase2: self.no_phase2,
            timeout: self.timeout.map(std::time::Duration::from_secs),
        }
    }
}

/// Options of `ayinstall`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct AyInstallOpts {
    #[command(flatten)]
    pub install: InstallOpts,

    /// The AutoYaST profile (default: autoinst.xml in the VM directory)
    #[arg(short = 'a', long, value_name = "FILE")]
    pub autoinst: Option<PathBuf>,
}

/// `ayinstall` as a command: its options, or another command after it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AyInstallCmd {
    #[command(flatten)]
    pub opts: AyInstallOpts,

    /// Another command and its arguments: `vmk ayinstall profile …` reaches this tool as
    /// `vmk-ayinstall ayinstall profile …`, and runs as `vmk-ayinstall profile …`.
    #[arg(
        hide = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub nested: Vec<std::ffi::OsString>,
}

/// Options of `profile`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProfileOpts {
    /// A snippet to include, as SECTION/NAME (repeat; after those of --file, in order)
    #[arg(short = 's', long = "snippet", value_name = "SECTION/NAME")]
    pub snippets: Vec<String>,

    /// Read snippet names from FILE: one per line, # comments
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub lists: Vec<PathBuf>,

    /// List the snippets and what each does
    #[arg(short = 'l', long, conflicts_with_all = ["snippets", "lists", "check"])]
    pub list: bool,

    /// Check FILE instead (well-formed XML, a <profile>) and print its sections
    #[arg(long, value_name = "FILE", conflicts_with_all = ["snippets", "lists"])]
    pub check: Option<PathBuf>,

    /// Write the profile to FILE instead of stdout
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Options of `cloudinit`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CloudInitOpts {
    /// Where to write the seed (default: seed.iso in the VM directory)
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The guest's hostname (default: the VM's hostname)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// A public key for root (repeat; default: vm-key.pub in the VM directory)
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,

    /// Use FILE as user-data instead of the generated one
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,

    /// The instance id (default: vmk-<hostname>; change it to make cloud-init run again)
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
}

/// Options of `mkiso`.
#[derive(clap::Args, Debug, Clone)]
pub struct MkisoOpts {
    /// Volume label
    #[arg(
        short = 'V',
        long = "volid",
        value_name = "LABEL",
        default_value = "VMK"
    )]
    pub label: String,

    /// The image to write
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,

    /// Files to put in: FILE (at the top), DIR (its contents at the top) or PATH/IN/ISO=FILE
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
}

/// Options of `mkfloppy`.
#[derive(clap::Args, Debug, Clone)]
pub struct MkfloppyOpts {
    /// Volume label
    #[arg(short = 'L', long, value_name = "LABEL", default_value = "VMK")]
    pub label: String,

    /// The image to write
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,

    /// Files to put in the root directory: FILE or NAME=FILE
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
}

/// Options of `loader`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoaderOpts {
    /// The installation medium
    #[arg(value_name = "ISO")]
    pub iso: PathBuf,

    /// Architecture (default: VMK_ARCH, else detected)
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,

    /// Directory to write `linux` and `initrd` into (default: only say what is there)
    #[arg(short = 'o', long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// Runs vmk-ayinstall.
pub fn run(args: Args) -> Result<ExitCode> {
    let global = args.global.clone();
    if args.command.is_some() && args.ayinstall != AyInstallOpts::default() {
        return Err(vmk_common::usage!(
            "install options go after the command (`vmk-ayinstall ayinstall --iso …`), not before it"
        ));
    }
    match args.command {
        None => ayinstall(&global, &args.ayinstall),
        Some(Command::Ayinstall(c)) if !c.nested.is_empty() => run_nested(&global, c),
        Some(Command::Ayinstall(c)) => ayinstall(&global, &c.opts),
        Some(Command::Qinstall(o)) => qinstall(&global, &o),
        Some(Command::Profile(o)) => profile_cmd(&o),
        Some(Command::Snippets) => profile_cmd(&ProfileOpts {
            list: true,
            ..Default::default()
        }),
        Some(Command::Cloudinit(o)) => cloudinit_cmd(&global, &o),
        Some(Command::Mkiso(o)) => mkiso_cmd(&o),
        Some(Command::Mkfloppy(o)) => mkfloppy_cmd(&o),
        Some(Command::Loader(o)) => loader_cmd(&o),
        Some(Command::Bootstrap(o)) => vmk_bootstrap::run(&global, o),
    }
}

/// Runs `vmk-ayinstall ayinstall COMMAND …` as `vmk-ayinstall COMMAND …`, keeping the
/// global options given before `ayinstall`.
fn run_nested(global: &GlobalOpts, c: AyInstallCmd) -> Result<ExitCode> {
    if c.opts != AyInstallOpts::default() {
        return Err(vmk_common::usage!(
            "install options go after the command, not before it"
        ));
    }
    let argv = std::iter::once("vmk-ayinstall".into()).chain(c.nested);
    let mut inner = Args::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    if inner.command.is_none() {
        return Err(vmk_common::usage!(
            "unexpected arguments after `ayinstall`: see --help"
        ));
    }
    inner.global.config = inner.global.config.or_else(|| global.config.clone());
    inner.global.dry_run |= global.dry_run;
    run(inner)
}

fn ayinstall(global: &GlobalOpts, opts: &AyInstallOpts) -> Result<ExitCode> {
    let flavor = install::Flavor::AutoYast {
        profile: opts.autoinst.clone(),
    };
    run_install(global, flavor, &opts.install)
}

fn qinstall(global: &GlobalOpts, opts: &InstallOpts) -> Result<ExitCode> {
    run_install(global, install::Flavor::Interactive, opts)
}

fn run_install(
    global: &GlobalOpts,
    flavor: install::Flavor,
    opts: &InstallOpts,
) -> Result<ExitCode> {
    let plan = install::plan(global, flavor, &opts.request())?;
    if global.dry_run {
        outln!("{}", plan.describe()?.trim_end())?;
        return Ok(ExitCode::SUCCESS);
    }
    plan.run()?;
    Ok(ExitCode::SUCCESS)
}

fn profile_cmd(o: &ProfileOpts) -> Result<ExitCode> {
    if let Some(file) = &o.check {
        let summary = profile::check_profile_file(file)?;
        outln!(
            "{}: well-formed profile with {}",
            file.display(),
            summary.sections.join(", ")
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let dir = profile::autoinst_dir()?;
    if o.list {
        for s in profile::list_snippets(&dir)? {
            outln!("{:<32} {}", s.name, s.summary)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut names = Vec::new();
    for list in &o.lists {
        names.extend(profile::read_list_file(list)?);
    }
    names.extend(o.snippets.iter().cloned());
    if names.is_empty() {
        return Err(vmk_common::usage!(
            "choose snippets with -s SECTION/NAME or -f LISTFILE (see `vmk ayinstall profile --list`)"
        ));
    }
    let text = profile::assemble(&dir, &names)?;
    match &o.output {
        Some(path) => write_new_file(path, text.as_bytes())?,
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cloudinit_cmd(global: &GlobalOpts, o: &CloudInitOpts) -> Result<ExitCode> {
    let cfg = vmk_common::config::VmConfig::load_for(global)?;
    let mut seed = match o.keys.is_empty() {
        true => cloudinit::seed_for(&cfg)?,
        false => cloudinit::Seed {
            hostname: cloudinit::hostname_for(&cfg),
            instance_id: String::new(),
            ssh_keys: o
                .keys
                .iter()
                .map(|k| cloudinit::read_keys(k))
                .collect::<Result<Vec<_>>>()?
                .concat(),
            user_data: None,
        },
    };
    if let Some(h) = &o.hostname {
        seed.hostname = h.clone();
    }
    seed.instance_id = o
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("vmk-{}", seed.hostname));
    if let Some(p) = &o.user_data {
        seed.user_data =
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?);
    }
    let output = o
        .output
        .clone()
        .unwrap_or_else(|| cloudinit::seed_path(&cfg));
    seed.write_iso(&output)?;
    if !cfg.cloud_init {
        vmk_common::errln!(
            "vmk-ayinstall: attach it with `vmk set VMK_CLOUD_INIT yes` (or boot it as a CD-ROM)"
        );
    }
    outln!("{}", output.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Splits `DEST=SRC` (a graft point) from a plain `SRC`.
fn graft(source: &str) -> (Option<&str>, &Path) {
    match source.split_once('=') {
        Some((dest, src)) if !dest.is_empty() => (Some(dest), Path::new(src)),
        _ => (None, Path::new(source)),
    }
}

fn mkiso_cmd(o: &MkisoOpts) -> Result<ExitCode> {
    let mut iso = iso9660::IsoBuilder::new(&o.label)?;
    for source in &o.sources {
        let (dest, src) = graft(source);
        if src.is_dir() {
            add_tree(&mut iso, dest.unwrap_or(""), src)?;
        } else {
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            iso.add_path(dest.unwrap_or(&name), src)?;
        }
    }
    iso.write_file(&o.output)?;
    outln!("{}", o.output.display())?;
    Ok(ExitCode::SUCCESS)
}

fn add_tree(iso: &mut iso9660::IsoBuilder, prefix: &str, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dest = if prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", prefix.trim_end_matches('/'))
        };
        let path = entry.path();
        if path.is_dir() {
            add_tree(iso, &dest, &path)?;
        } else {
            iso.add_path(&dest, &path)?;
        }
    }
    Ok(())
}

fn mkfloppy_cmd(o: &MkfloppyOpts) -> Result<ExitCode> {
    let mut floppy = fat::FloppyBuilder::new(&o.label)?;
    for source in &o.sources {
        let (dest, src) = graft(source);
        let name = match dest {
            Some(d) => d.to_string(),
            None => src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        floppy.add_bytes(&name, bytes)?;
    }
    floppy.write_file(&o.output)?;
    outln!("{}", o.output.display())?;
    Ok(ExitCode::SUCCESS)
}

fn loader_cmd(o: &LoaderOpts) -> Result<ExitCode> {
    let arch = o.arch.clone().or_else(|| std::env::var("VMK_ARCH").ok());
    let iso = iso9660::IsoImage::open(&o.iso)?;
    let loader = iso9660::find_loader(&iso, arch.as_deref())?;
    vmk_common::errln!(
        "vmk-ayinstall: {}: found the {} installer ({}, {} bytes; {}, {} bytes)",
        o.iso.display(),
        loader.arch,
        loader.kernel_path,
        loader.kernel.size,
        loader.initrd_path,
        loader.initrd.size
    );
    match &o.output {
        Some(dir) => {
            let (k, i) = (dir.join("linux"), dir.join("initrd"));
            iso.extract(&loader.kernel, &k)?;
            iso.extract(&loader.initrd, &i)?;
            outln!("{}", k.display())?;
            outln!("{}", i.display())?;
        }
        None => {
            outln!("{}", loader.kernel_path)?;
            outln!("{}", loader.initrd_path)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a temporary file beside it, so that an interrupted
/// write never leaves half a file under the final name.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shapes() {
        let a = Args::try_parse_from(["vmk-ayinstall"]).unwrap();
        assert!(a.command.is_none());
        let a =
            Args::try_parse_from(["vmk-ayinstall", "--autoinst", "x.xml", "--no-phase2"]).unwrap();
        assert!(a.command.is_none() && a.ayinstall.install.no_phase2);
        assert_eq!(a.ayinstall.autoinst.as_deref(), Some(Path::new("x.xml")));
        let a = Args::try_parse_from(["vmk-ayinstall", "ayinstall", "-a", "y.xml"]).unwrap();
        assert!(
            matches!(a.command, Some(Command::Ayinstall(ref c)) if c.opts.autoinst.as_deref() == Some(Path::new("y.xml")) && c.nested.is_empty())
        );
        let a =
            Args::try_parse_from(["vmk-ayinstall", "-D", "qinstall", "--iso", "i.iso"]).unwrap();
        assert!(a.global.dry_run && matches!(a.command, Some(Command::Qinstall(_))));
        let a = Args::try_parse_from(["vmk-ayinstall", "seed", "-o", "s.iso"]).unwrap();
        assert!(matches!(a.command, Some(Command::Cloudinit(_))));
        let a =
            Args::try_parse_from(["vmk-ayinstall", "profile", "-s", "a/b", "-s", "c/d"]).unwrap();
        assert!(matches!(a.command, Some(Command::Profile(ref p)) if p.snippets == ["a/b", "c/d"]));
        let a = Args::try_parse_from(["vmk-ayinstall", "--autoinst", "x", "profile"]).unwrap();
        assert_eq!(vmk_common::cli::exit_status_of(&run(a).unwrap_err()), 2);
        let a =
            Args::try_parse_from(["vmk-ayinstall", "ayinstall", "profile", "-s", "a/b"]).unwrap();
        assert!(
            matches!(a.command, Some(Command::Ayinstall(ref c)) if c.nested == ["profile", "-s", "a/b"])
        );
        <Args as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn usage_mistakes_exit_2() {
        let status = |args: &[&str]| {
            let a = Args::try_parse_from(args).unwrap();
            vmk_common::cli::exit_status_of(&run(a).unwrap_err())
        };
        // an unknown snippet, a snippet name that is no SECTION/NAME
        assert_eq!(
            status(&["vmk-ayinstall", "profile", "-s", "nosuch/snippet"]),
            2
        );
        assert_eq!(status(&["vmk-ayinstall", "profile", "-s", "../x"]), 2);
        // bootstrap into a directory that is not new
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("vm-config"), "").unwrap();
        let dir = tmp.path().to_str().unwrap();
        assert_eq!(status(&["vmk-ayinstall", "bootstrap", dir]), 2);
    }
}
