//! `vmk clone [-o OUTDIR] [-n NAME]`: a new VM directory OUTDIR/NAME beside the original, with its
//! vm-config (VMK_NAME and VMK_VNC changed, every other byte kept) and reflink copies of its
//! disks, so the clone can run next to the original at once.
//!
//! Decisions:
//! - disk0 and the extra disks that live inside the VM directory are copied (reflink) to the
//!   same relative paths; disks outside it stay shared and a warning says so. disk0's UEFI
//!   variable store and TPM state (`layout::companions`) go with it.
//! - VMK_VNC: `--vnc N`, else the first number from 1 that no VM beside the clone in OUTDIR
//!   uses, that differs from the original's, and whose VNC, console and ssh ports are free.
//! - Relative paths in vm-config that point outside the copied files (kernel, initrd, ISO
//!   directory…) are made absolute, so the clone still finds them.
//! - The name is checked before anything is made; whatever fails later, the clone directory
//!   and the levels of OUTDIR the clone created are removed: no half-made clone stays.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::{self, KeyKind, RawConfig, VmConfig, VM_FILE_NAME};
use vmk_common::copy::{copy_file, CopyMode};
use vmk_common::layout::{self, KEY_FILE, PUBLIC_KEY_FILE};
use vmk_common::outln;
use vmk_common::usage;

/// Options of `clone`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CloneArgs {
    /// Directory to create the clone in (created when missing; default: the current
    /// directory, as the original vmk)
    #[arg(short = 'o', long = "outdir", value_name = "OUTDIR")]
    pub outdir: Option<PathBuf>,
    /// Name of the clone: its directory OUTDIR/NAME and its VMK_NAME (default: this VM's
    /// name with `-clone`, as the original vmk)
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// Copy the ssh key pair (vm-key, vm-key.pub) too
    #[arg(short = 'k', long = "keys")]
    pub keys: bool,
    /// The clone's VMK_VNC (default: the first free number)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=99))]
    pub vnc: Option<u8>,
    /// Where the filesystem cannot reflink, copy every block instead (slow, uses space)
    #[arg(long)]
    pub full_copy: bool,
}

/// What a clone has created so far, removed unless disarmed: the clone directory and the
/// levels of OUTDIR it made (each only when empty), newest first.
struct Cleanup {
    dir: Option<PathBuf>,
    created_outdirs: Vec<PathBuf>,
    armed: bool,
}

impl Cleanup {
    fn new() -> Cleanup {
        Cleanup {
            dir: None,
            created_outdirs: Vec::new(),
            armed: true,
        }
    }

    /// Creates `outdir` and its missing parents, remembering each level it made.
    fn create_outdir(&mut self, outdir: &Path) -> Result<()> {
        let missing: Vec<&Path> = outdir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && fs::symlink_metadata(a).is_err())
            .collect();
        for level in missing.into_iter().rev() {
            fs::create_dir(level).with_context(|| format!("creating {}", level.display()))?;
            self.created_outdirs.push(level.to_path_buf());
        }
        Ok(())
    }

    /// Creates the clone directory `dest` (private: a VM directory holds the guest's disks
    /// and keys); it must not exist.
    fn create_clone_dir(&mut self, dest: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        self.dir = Some(dest.to_path_buf());
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = fs::remove_dir_all(dir) {
                log::warn!(
                    "could not remove the unfinished clone {}: {e}",
                    dir.display()
                );
            } else {
                vmk_common::errln!("vmk-clone: removed the unfinished clone {}", dir.display());
            }
        }
        for o in self.created_outdirs.iter().rev() {
            let _ = fs::remove_dir(o); // only when empty
        }
    }
}

/// The longest clone name, in bytes: it is a directory name (NAME_MAX).
pub const NAME_MAX_BYTES: usize = 255;

/// Checks a clone's name before anything is made: a plain directory name (not empty, `.`
/// or `..`, no `/`), at most [`NAME_MAX_BYTES`], and a valid VMK_NAME (no control
/// characters). A usage error otherwise.
pub fn check_name(name: &str) -> Result<()> {
    let shown = vmk_common::text::excerpt(name);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(usage!(
            "-n \"{shown}\": the clone's name must be a plain directory name"
        ));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(usage!(
            "-n \"{shown}\": the clone's name is {} bytes, longer than a directory name may be ({NAME_MAX_BYTES})",
            name.len()
        ));
    }
    config::validate_value("VMK_NAME", name)?;
    Ok(())
}

/// One file to copy into the clone, and the config key that names it (if any).
#[derive(Debug)]
struct DiskCopy {
    key: Option<String>,
    src: PathBuf,
    rel: PathBuf,
}

/// Runs `clone`.
pub fn run(global: &GlobalOpts, a: &CloneArgs) -> Result<ExitCode> {
    let cfg = VmConfig::load_for(global)?;
    cfg.require_vm_dir()?;
    let outdir = a.outdir.as_deref().unwrap_or(Path::new("."));
    let name = &a
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-clone", cfg.display_name()));
    check_name(name)?;
    let src_config = &cfg.config_file;
    let config_bytes = config::files::read_config(src_config, &cfg.config_display)?
        .with_context(|| format!("{} went away while cloning", cfg.config_display))?;
    let dest = outdir.join(name);
    if fs::symlink_metadata(&dest).is_ok() {
        return Err(usage!(
            "{} already exists: refusing to overwrite a clone (pick another -n, or remove it)",
            dest.display()
        ));
    }
    if a.keys && !cfg.dir.join(KEY_FILE).exists() && !cfg.dir.join(PUBLIC_KEY_FILE).exists() {
        return Err(usage!(
            "-k: {} has no vm-key to copy (`vmk sshkeygen` makes one)",
            cfg.dir.display()
        ));
    }
    let (vnc, why) = match a.vnc {
        Some(n) => (n, "given with --vnc".to_string()),
        None => pick_vnc(&cfg, outdir)?,
    };
    let disks = disks_to_copy(&cfg)?;
    let mut raw_bytes = config_bytes;
    for (key, value) in config_changes(&cfg, &raw_bytes, name, vnc, &disks)? {
        let raw = RawConfig::parse(&raw_bytes, &cfg.config_display)?;
        raw_bytes = raw.set(&key, &value);
    }
    if global.dry_run {
        outln!(
            "clone {} to {} (VMK_VNC={vnc})",
            cfg.dir.display(),
            dest.display()
        )?;
        for d in &disks {
            outln!(
                "  copy {} to {}",
                d.src.display(),
                dest.join(&d.rel).display()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    // from here on, whatever fails removes what this clone made
    let mut cleanup = Cleanup::new();
    cleanup.create_outdir(outdir)?;
    cleanup.create_clone_dir(&dest)?;
    // the directory's NOCOW attribute (if any) is inherited by new files in it
    if vmk_common::fileops::is_nocow(&cfg.dir).unwrap_or(false) {
        let _ = vmk_common::fileops::set_nocow(&dest);
    }
    let mode = CopyMode {
        force: false,
        full_copy: a.full_copy,
    };
    for d in &disks {
        let to = dest.join(&d.rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        copy_file(&d.src, &to, mode)
            .with_context(|| format!("copying {} into the clone", d.src.display()))?;
    }
    copy_keys(&cfg.dir, &dest, a.keys)?;
    let config_dest = dest.join(src_config.file_name().unwrap_or(VM_FILE_NAME.as_ref()));
    fs::write(&config_dest, &raw_bytes)
        .with_context(|| format!("writing {}", config_dest.display()))?;
    if let Ok(m) = fs::metadata(src_config) {
        let _ = fs::set_permissions(&config_dest, m.permissions());
    }
    cleanup.armed = false;
    vmk_common::errln!(
        "vmk-clone: {}: VMK_NAME={name}, VMK_VNC={vnc} ({why})",
        dest.display()
    );
    outln!("{}", dest.display())?;
    Ok(ExitCode::SUCCESS)
}

/// disk0 and the extra disks inside the VM directory, with their paths relative to it.
fn disks_to_copy(cfg: &VmConfig) -> Result<Vec<DiskCopy>> {
    let mut out = Vec::new();
    let disk0 = cfg.dir.join(cfg.disk0()?);
    if disk0.exists() {
        let rel = match disk0.strip_prefix(&cfg.dir) {
            Ok(r) if !r.starts_with("..") => r.to_path_buf(),
            _ => PathBuf::from(disk0.file_name().context("VMK_DISK0 has no file name")?),
        };
        // disk0's UEFI variable store and TPM state go with it, beside the copy
        for (src, to) in layout::companions(&disk0)
            .into_iter()
            .zip(layout::companions(&rel))
        {
            if fs::symlink_metadata(&src).is_ok() {
                out.push(DiskCopy {
                    key: None,
                    src,
                    rel: to,
                });
            }
        }
        out.insert(
            0,
            DiskCopy {
                key: Some("VMK_DISK0".into()),
                src: disk0,
                rel,
            },
        );
    } else {
        log::warn!(
            "{} does not exist yet: the clone gets the config only",
            disk0.display()
        );
    }
    for i in 1..=6 {
        let configured = cfg.disks[i - 1].clone();
        let path = match &configured {
            Some(p) => cfg.dir.join(p),
            None => cfg.dir.join(format!("disk{i}")),
        };
        if !path.exists() {
            continue;
        }
        match path.strip_prefix(&cfg.dir) {
            Ok(rel) if !rel.starts_with("..") => out.push(DiskCopy {
                key: configured.map(|_| format!("VMK_DISK{i}")),
                src: path.clone(),
                rel: rel.to_path_buf(),
            }),
            _ => log::warn!(
                "{} is outside the VM directory: the clone shares it (copy it yourself if both VMs write it)",
                path.display()
            ),
        }
    }
    Ok(out)
}

/// The keys to set in the clone's config: name, number, disk paths that must name the copies,
/// and relative paths of other files made absolute.
fn config_changes(
    cfg: &VmConfig,
    bytes: &[u8],
    name: &str,
    vnc: u8,
    disks: &[DiskCopy],
) -> Result<Vec<(String, String)>> {
    let raw = RawConfig::parse(bytes, &cfg.config_display)?;
    let mut changes = vec![
        ("VMK_NAME".to_string(), name.to_string()),
        ("VMK_VNC".to_string(), vnc.to_string()),
    ];
    let literal = |key: &str| raw.last(key).and_then(|(_, a)| a.literal());
    for d in disks {
        if let Some(key) = &d.key {
            let want = d.rel.to_string_lossy().into_owned();
            if literal(key).as_deref() != Some(want.as_str()) {
                changes.push((key.clone(), want));
            }
        }
    }
    for spec in config::keys() {
        if spec.kind != KeyKind::Path || spec.name.starts_with("VMK_DISK") {
            continue;
        }
        if let Some(v) = literal(spec.name) {
            if !v.is_empty() && !v.starts_with('/') && !v.starts_with("~/") {
                let abs = cfg.dir.join(&v);
                changes.push((spec.name.to_string(), abs.to_string_lossy().into_owned()));
            }
        }
    }
    // relative VMK_ISO with a '/' is a path too
    if let Some(iso) = literal("VMK_ISO") {
        if iso.contains('/') && !iso.starts_with('/') && !iso.starts_with("~/") {
            changes.push((
                "VMK_ISO".into(),
                cfg.dir.join(&iso).to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(changes)
}

/// The first VM number (1…99) that differs from the original's, is not used by a VM beside
/// the clone in `outdir`, and whose VNC, console and ssh ports are free; with the reason.
fn pick_vnc(cfg: &VmConfig, outdir: &Path) -> Result<(u8, String)> {
    let mut taken = layout::vm_numbers_in(outdir);
    taken.insert(cfg.vnc);
    let Some((n, ports)) =
        layout::first_free_vm_number(cfg.listen, cfg.telnet_base, cfg.ssh_base, &taken)
    else {
        bail!("no free VM number between 1 and 99: give one with --vnc N")
    };
    Ok((
        n,
        format!(
            "the first number not used by the original ({}) nor by a VM in {}, with free ports {}, {} and {}",
            cfg.vnc,
            outdir.display(),
            ports.vnc,
            ports.console,
            ports.ssh
        ),
    ))
}

/// Copies vm-key and vm-key.pub (mode kept) with `-k`; otherwise says the clone has none.
/// The guest's known host key always goes along: the clone's disk has the same host keys.
fn copy_keys(src_dir: &Path, dest: &Path, keys: bool) -> Result<()> {
    copy_known_hosts(src_dir, dest)?;
    let key = src_dir.join(KEY_FILE);
    if !keys {
        if key.exists() {
            vmk_common::errln!(
                "vmk-clone: the clone has no ssh key: `vmk sshkeygen` in it, or clone with -k"
            );
        }
        return Ok(());
    }
    let mut copied = 0;
    for f in [KEY_FILE, PUBLIC_KEY_FILE] {
        let src = src_dir.join(f);
        if !src.exists() {
            continue;
        }
        // tiny files: a full copy is fine where reflinks are not
        let mode = CopyMode {
            force: false,
            full_copy: true,
        };
        copy_file(&src, &dest.join(f), mode)
            .with_context(|| format!("copying {}", src.display()))?;
        copied += 1;
    }
    if copied == 0 {
        bail!(
            "-k: {} has no vm-key to copy (`vmk sshkeygen` makes one)",
            src_dir.display()
        );
    }
    Ok(())
}

/// Copies the VM's known ssh host key, when it has one.
fn copy_known_hosts(src_dir: &Path, dest: &Path) -> Result<()> {
    let src = src_dir.join(layout::KNOWN_HOSTS_FILE);
    if !src.is_file() {
        return Ok(());
    }
    let mode = CopyMode {
        force: false,
        full_copy: true,
    };
    copy_file(&src, &dest.join(layout::KNOWN_HOSTS_FILE), mode)
        .with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}
