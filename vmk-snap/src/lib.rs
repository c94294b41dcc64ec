//! vmk-snap: instant reflink snapshots of disk images, and the throwaway snapshot VM that boots
//! `snap-<disk0>` so the base image is never written.
//!
//! - `cpfile SRC DST`, `fsnap FILE`: reflink copies of any file (attributes and NOCOW kept).
//! - `dsnap [-m MSG] [--freeze]`, `dsnap list|revert|rm`: snapshots `<image>-YYYYMMDD-HHMMSS`
//!   (UTC) beside the image; `vmk dsnap` (`vmk-snap --base dsnap`) works on disk0,
//!   `vmk snap dsnap` on `snap-<disk0>`.
//! - `run|runin|info|isrunning|kill|stop|console`: the snapshot VM (see [`snapvm`]).

pub mod dsnap;
pub mod qga;
pub mod snapvm;
pub mod stamp;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vmk_common::cli::{GlobalOpts, Tool};
use vmk_common::config::VmConfig;
use vmk_common::outln;
use vmk_common::state::{self, RuntimePaths, VmStatus};
use vmk_common::{text, usage};

use vmk_common::copy::{copy_file, CopyMode};

/// Instant reflink snapshots and the throwaway snapshot VM.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-snap",
    version,
    about = "Instant reflink snapshots and the throwaway snapshot VM",
    long_about = "Instant reflink snapshots and the throwaway snapshot VM.\n\n\
        Snapshots are reflink copies named <image>-YYYYMMDD-HHMMSS (UTC) beside the image \
        (the original vmk's <image>-YYYY-MM-DD_HH:MM:SS, local time, count too): \
        instant whatever the image's size, sharing every unchanged block. The snapshot VM \
        boots snap-<disk0>, a fresh reflink copy of disk0 made by `run`/`runin`, with its own \
        pidfile, QMP socket and console log; disk0 is never written by it."
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// Act on disk0 itself instead of snap-<disk0> (only with dsnap; `vmk dsnap` passes it)
    #[arg(long)]
    pub base: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// The commands of vmk-snap.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy a file by reflink, keeping its attributes and NOCOW (DST may be a directory)
    Cpfile(CpfileArgs),
    /// Snapshot any file to FILE-YYYYMMDD-HHMMSS beside it; prints the snapshot's path
    Fsnap(FsnapArgs),
    /// Snapshot the image (snap-<disk0>, or disk0 with --base / `vmk dsnap`); list, revert, rm
    Dsnap(DsnapArgs),
    /// Recreate snap-<disk0> from disk0 and start it in the background
    Run(snapvm::RunArgs),
    /// Recreate snap-<disk0> from disk0 and start it with the serial console on this terminal
    Runin,
    /// Show the snapshot VM's config and state
    #[command(visible_alias = "status")]
    Info(snapvm::InfoArgs),
    /// Exit 0 when the snapshot VM runs, 1 when not; prints nothing
    Isrunning,
    /// Stop the snapshot VM now (SIGINT, SIGTERM, SIGKILL), only its own qemu
    Kill,
    /// Power the snapshot VM down over QMP, then kill it after the timeout
    Stop(snapvm::StopArgs),
    /// Attach this terminal to the snapshot VM's serial console
    #[command(visible_alias = "telnet")]
    Console(snapvm::ConsoleArgs),
}

/// How to copy when the filesystem cannot reflink.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct FullCopyOpt {
    /// Where the filesystem cannot reflink, copy every block instead (slow, uses space)
    #[arg(long)]
    pub full_copy: bool,
}

/// `cpfile SRC DST`.
#[derive(clap::Args, Debug)]
pub struct CpfileArgs {
    /// The file to copy (files only, not directories)
    pub src: PathBuf,
    /// The copy, or a directory to copy into
    pub dst: PathBuf,
    /// Replace an existing DST
    #[arg(short, long)]
    pub force: bool,
    #[command(flatten)]
    pub copy: FullCopyOpt,
}

/// `fsnap FILE`.
#[derive(clap::Args, Debug)]
pub struct FsnapArgs {
    /// The file to snapshot
    pub file: PathBuf,
    /// A note kept beside the snapshot (FILE-…​.note), shown by `dsnap list`
    #[arg(short = 'm', long = "message", value_name = "MSG")]
    pub note: Option<String>,
    #[command(flatten)]
    pub copy: FullCopyOpt,
}

/// `dsnap [-m MSG] [--freeze]` or `dsnap list|revert|rm`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DsnapArgs {
    #[command(subcommand)]
    pub action: Option<DsnapAction>,
    /// A note kept beside the snapshot, shown by `dsnap list`
    #[arg(short = 'm', long = "message", value_name = "MSG")]
    pub note: Option<String>,
    /// When the VM runs, freeze the guest's filesystems around the copy through its guest
    /// agent (socket <image>.qga); without an agent the snapshot is crash-consistent
    #[arg(long)]
    pub freeze: bool,
    /// Print the new snapshot as JSON instead of its path
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub copy: FullCopyOpt,
}

/// What `dsnap` does besides taking a snapshot.
#[derive(Subcommand, Debug)]
pub enum DsnapAction {
    /// List the snapshots: name, time (UTC), size, note
    #[command(visible_alias = "ls")]
    List {
        /// Print JSON (an array of {name, path, time, size, allocated, note})
        #[arg(long)]
        json: bool,
    },
    /// Make the image that snapshot again, after snapshotting the current image
    Revert {
        /// The snapshot: its file name or its YYYYMMDD-HHMMSS part
        name: String,
        #[command(flatten)]
        copy: FullCopyOpt,
    },
    /// Remove snapshots and their notes
    Rm {
        /// The snapshots: file names or their YYYYMMDD-HHMMSS parts
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs vmk-snap.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.base && !matches!(args.command, Command::Dsnap(_)) {
        return Err(usage!(
            "--base only applies to dsnap: to run disk0 itself use `vmk run` (and `vmk info`, `vmk kill`…)"
        ));
    }
    let global = &args.global;
    match args.command {
        Command::Cpfile(a) => cpfile(global, a),
        Command::Fsnap(a) => fsnap(global, a),
        Command::Dsnap(a) => dsnap_cmd(global, args.base, a),
        Command::Run(a) => snapvm::run(global, &a, false),
        Command::Runin => snapvm::run(global, &snapvm::RunArgs::default(), true),
        Command::Info(a) => snapvm::info(global, &a),
        Command::Isrunning => snapvm::is_running(global),
        Command::Kill => snapvm::kill(global),
        Command::Stop(a) => snapvm::stop(global, &a),
        Command::Console(a) => snapvm::console(global, &a),
    }
}

/// A file named on the command line that must exist: a usage error when it does not.
fn given_file(what: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(usage!(
            "{what} {} is not a regular file but {} ({what} takes files only)",
            path.display(),
            vmk_common::config::files::file_type_name(m.file_type())
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(usage!("{what} {} does not exist", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn cpfile(global: &GlobalOpts, a: CpfileArgs) -> Result<ExitCode> {
    given_file("cpfile", &a.src)?;
    if global.dry_run {
        outln!(
            "cpfile {} {} (reflink{})",
            a.src.display(),
            a.dst.display(),
            if a.copy.full_copy {
                ", full copy allowed"
            } else {
                ""
            }
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mode = CopyMode {
        force: a.force,
        full_copy: a.copy.full_copy,
    };
    copy_file(&a.src, &a.dst, mode)
        .with_context(|| format!("copying {} to {}", a.src.display(), a.dst.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn fsnap(global: &GlobalOpts, a: FsnapArgs) -> Result<ExitCode> {
    given_file("fsnap", &a.file)?;
    if global.dry_run {
        outln!("fsnap {}", a.file.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mode = CopyMode {
        force: false,
        full_copy: a.copy.full_copy,
    };
    let out = dsnap::take(&a.file, a.note.as_deref(), mode)?;
    outln!("{}", out.dst.display())?;
    Ok(ExitCode::SUCCESS)
}

/// The VM directory's config and the image a dsnap/snap command works on.
pub struct Target {
    /// The config.
    pub cfg: VmConfig,
    /// disk0 (absolute).
    pub disk0: PathBuf,
    /// The image acted on: disk0 or snap-<disk0> (absolute).
    pub image: PathBuf,
    /// Runtime files of the VM booting `image`.
    pub paths: RuntimePaths,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("image", &self.image)
            .finish()
    }
}

/// `snap-<disk0>` in disk0's directory.
pub fn snap_image_of(disk0: &Path) -> Result<PathBuf> {
    disk0
        .file_name()
        .with_context(|| format!("VMK_DISK0 {} has no file name", disk0.display()))?;
    Ok(vmk_common::layout::snap_image(disk0))
}

impl Target {
    /// Loads the config; `base` picks disk0, else snap-<disk0>.
    pub fn load(global: &GlobalOpts, base: bool) -> Result<Target> {
        let cfg = VmConfig::load_for(global)?;
        let disk0 = cfg.dir.join(cfg.disk0()?);
        let image = if base {
            disk0.clone()
        } else {
            snap_image_of(&disk0)?
        };
        let paths = RuntimePaths::new(&cfg.dir, &image)?;
        Ok(Target {
            cfg,
            disk0,
            image,
            paths,
        })
    }

    /// The pid of the VM running disk0 itself, if one runs.
    pub fn base_running_pid(&self) -> Result<Option<u32>> {
        let paths = RuntimePaths::new(&self.cfg.dir, &self.disk0)?;
        Ok(match state::status(&paths)? {
            VmStatus::Running { pid } => Some(pid),
            _ => None,
        })
    }

    /// The pid of the VM running this image, if one runs.
    pub fn running_pid(&self) -> Result<Option<u32>> {
        Ok(match state::status(&self.paths)? {
            VmStatus::Running { pid } => Some(pid),
            _ => None,
        })
    }
}

fn dsnap_cmd(global: &GlobalOpts, base: bool, a: DsnapArgs) -> Result<ExitCode> {
    let t = Target::load(global, base)?;
    if !t.image.exists() {
        if base {
            bail!(
                "disk0 {} does not exist: run `vmk mkdisk0` or set VMK_DISK0",
                t.image.display()
            );
        }
        bail!(
            "{} does not exist: `vmk snap run` creates it (or use `vmk dsnap` for disk0)",
            t.image.display()
        );
    }
    match a.action {
        None => dsnap_take(global, &t, &a),
        Some(DsnapAction::List { json }) => dsnap_list(&t, json),
        Some(DsnapAction::Revert { name, copy }) => dsnap_revert(global, &t, base, &name, copy),
        Some(DsnapAction::Rm { names }) => dsnap_rm(global, &t, &names),
    }
}

fn dsnap_take(global: &GlobalOpts, t: &Target, a: &DsnapArgs) -> Result<ExitCode> {
    let running = t.running_pid()?;
    if global.dry_run {
        outln!("dsnap {}", t.image.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mode = CopyMode {
        force: false,
        full_copy: a.copy.full_copy,
    };
    let take = || dsnap::take(&t.image, a.note.as_deref(), mode);
    let out = match running {
        Some(_) if a.freeze => qga::with_frozen(&t.paths.qga_socket(), take)?,
        Some(pid) => {
            log::warn!(
                "the VM using {} runs (pid {pid}): the snapshot is crash-consistent, like after a power cut (--freeze asks its guest agent to freeze filesystems first)",
                t.image.display()
            );
            take()?
        }
        None => take()?,
    };
    if a.json {
        let v = serde_json::json!({
            "name": out.dst.file_name().map(|n| n.to_string_lossy().into_owned()),
            "path": out.dst,
            "bytes": out.bytes,
            "method": match out.method {
                vmk_common::fileops::CopyMethod::Reflink => "reflink",
                vmk_common::fileops::CopyMethod::FullCopy => "full-copy",
            },
            "note": a.note,
        });
        outln!("{v}")?;
    } else {
        outln!("{}", out.dst.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The longest note `dsnap list` shows, in characters.
const NOTE_CHARS: usize = 200;

fn dsnap_list(t: &Target, json: bool) -> Result<ExitCode> {
    let snaps = dsnap::list(&t.image)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&snaps)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if snaps.is_empty() {
        if std::io::stderr().is_terminal() {
            vmk_common::errln!(
                "no snapshots of {} (take one with `vmk dsnap`)",
                t.image.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    for l in list_lines(&snaps) {
        outln!("{l}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `dsnap list` as aligned lines. File names and notes are shown escaped, notes cut to
/// an excerpt of [`NOTE_CHARS`]: either may have been written by anyone who could write
/// the image's directory.
fn list_lines(snaps: &[dsnap::Snapshot]) -> Vec<String> {
    let names: Vec<_> = snaps.iter().map(|s| text::escaped_line(&s.name)).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut lines = vec![format!(
        "{:width$}  {:20}  {:>10}  NOTE",
        "NAME", "TIME (UTC)", "SIZE"
    )];
    for (s, name) in snaps.iter().zip(&names) {
        let note = s.note.as_deref().unwrap_or("").replace('\n', " / ");
        lines.push(format!(
            "{:width$}  {:20}  {:>10}  {}",
            name,
            s.time,
            vmk_common::human::size(s.size),
            text::excerpt_of(&note, NOTE_CHARS)
        ));
    }
    lines
}

fn dsnap_revert(
    global: &GlobalOpts,
    t: &Target,
    base: bool,
    name: &str,
    copy: FullCopyOpt,
) -> Result<ExitCode> {
    let snapshot = dsnap::resolve(&t.image, name)?;
    if let Some(pid) = t.running_pid()? {
        let stop = if base { "vmk stop" } else { "vmk snap stop" };
        bail!(
            "the VM using {} runs (pid {pid}): stop it first (`{stop}`)",
            t.image.display()
        );
    }
    if base {
        refuse_if_overlay_running(t)?;
    }
    if global.dry_run {
        outln!("revert {} to {}", t.image.display(), snapshot.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mode = CopyMode {
        force: true,
        full_copy: copy.full_copy,
    };
    let saved = dsnap::revert(&t.image, &snapshot, mode)?;
    vmk_common::errln!(
        "{} is {} again; its previous content is kept in {}",
        t.image.display(),
        snapshot.file_name().unwrap_or_default().to_string_lossy(),
        saved.dst.display()
    );
    outln!("{}", saved.dst.display())?;
    Ok(ExitCode::SUCCESS)
}

/// A running snapshot VM that boots a qcow2 overlay of disk0 reads disk0: replacing disk0
/// under it would corrupt what it sees.
fn refuse_if_overlay_running(t: &Target) -> Result<()> {
    let snap = snap_image_of(&t.disk0)?;
    let paths = RuntimePaths::new(&t.cfg.dir, &snap)?;
    if let VmStatus::Running { pid } = state::status(&paths)? {
        if vmk_common::qemu_img::qcow2_has_backing(&snap) {
            bail!(
                "the snapshot VM (pid {pid}) boots a qcow2 overlay backed by {}: stop it first (`vmk snap stop`)",
                t.disk0.display()
            );
        }
    }
    Ok(())
}

fn dsnap_rm(global: &GlobalOpts, t: &Target, names: &[String]) -> Result<ExitCode> {
    let snaps = names
        .iter()
        .map(|n| dsnap::resolve(&t.image, n))
        .collect::<Result<Vec<_>>>()?;
    for snap in &snaps {
        let paths = RuntimePaths::new(&t.cfg.dir, snap)?;
        if let VmStatus::Running { pid } = state::status(&paths)? {
            bail!("a VM boots {} (pid {pid}): stop it first", snap.display());
        }
    }
    for snap in &snaps {
        if global.dry_run {
            outln!("rm {}", snap.display())?;
            continue;
        }
        dsnap::remove(snap)?;
        log::info!("removed {}", snap.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsnap_list_shows_hostile_names_and_notes_escaped_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("disk\x1b[2J.img");
        std::fs::write(&img, b"v1").unwrap();
        let full = CopyMode {
            force: false,
            full_copy: true,
        };
        let a = dsnap::take(&img, Some("\x1b]0;owned\x07"), full)
            .unwrap()
            .dst;
        let b = dsnap::take(&img, None, full).unwrap().dst;
        // a huge note planted beside a snapshot is read bounded and shown as an excerpt
        let huge = format!("\x1b[31m{}", "x".repeat(8 << 20));
        std::fs::write(dsnap::note_path(&b), huge).unwrap();
        let lines = list_lines(&dsnap::list(&img).unwrap());
        let all = lines.join("\n");
        assert_eq!(lines.len(), 3, "{all}");
        assert!(!all.contains('\x1b') && !all.contains('\x07'));
        assert!(lines[1].starts_with("disk\\x1b[2J.img-"), "{}", lines[1]);
        assert!(lines[1].ends_with("\\x1b]0;owned\\x07"), "{}", lines[1]);
        assert!(lines[2].contains("\\x1b[31mxxx") && lines[2].ends_with("more bytes)"));
        assert!(lines[2].len() < 400, "{}", lines[2].len());
        assert!(a != b);
    }

    #[test]
    fn a_missing_file_on_the_command_line_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing.img");
        let dst = tmp.path().join("copy.img");
        for args in [
            vec![
                "vmk-snap",
                "cpfile",
                missing.to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            vec![
                "vmk-snap",
                "cpfile",
                tmp.path().to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            vec!["vmk-snap", "fsnap", missing.to_str().unwrap()],
        ] {
            let err = run(Args::try_parse_from(&args).unwrap()).unwrap_err();
            assert_eq!(
                vmk_common::cli::exit_status_of(&err),
                2,
                "{args:?}: {err:#}"
            );
        }
        assert!(!dst.exists());
    }

    #[test]
    fn an_unknown_snapshot_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("disk0.img");
        std::fs::write(&img, b"v1").unwrap();
        let err = dsnap::resolve(&img, "20990101-000000").unwrap_err();
        assert_eq!(vmk_common::cli::exit_status_of(&err), 2, "{err:#}");
        assert!(err.to_string().contains("`vmk dsnap list` shows them"));
    }
}
