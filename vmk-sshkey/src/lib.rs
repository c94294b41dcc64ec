//! vmk-sshkey: SSH into VMs: the VM's own key pair, ssh, waitssh, scp and sshfs as root@ the
//! VM, and two ways to put the key into a guest that does not take it as a credential.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vmk_common::cli::{GlobalOpts, Tool};
use vmk_common::config::VmConfig;

pub use vmk_common::ssh::{self, hostkey, target, wait, watch};

use hostkey::HostKeys;
use ssh::{key_file, Auth};
use vmk_common::layout::PUBLIC_KEY_FILE;
use vmk_common::shell::command_line;

/// SSH into VMs: keys, ssh, scp, sshfs.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-sshkey",
    version,
    about = "SSH into VMs: keys, ssh, scp, sshfs"
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

/// Key types `sshkeygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    /// Ed25519 (default).
    Ed25519,
    /// RSA (3072 bits), for old guests.
    Rsa,
}

/// The commands of vmk-sshkey.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create this VM's key pair vm-key/vm-key.pub (refuses to overwrite)
    Sshkeygen {
        /// Key type
        #[arg(short = 't', long = "type", value_enum, default_value = "ed25519")]
        key_type: KeyType,
    },
    /// Put vm-key.pub into the stopped image's /root/.ssh/authorized_keys (mounting it)
    Sshkeyput {
        /// Mount backend
        #[arg(long, value_enum, default_value = "auto")]
        backend: vmk_mount::image::Backend,
        /// Mount even when a qemu seems to use the image
        #[arg(long)]
        force: bool,
    },
    /// Append vm-key.pub to root's authorized_keys in the running VM (ssh asks for the password)
    Scpkeyput,
    /// ssh into the VM as root; with a command, run it and pass its exit status through
    Ssh {
        /// Command to run in the guest (interactive shell when empty)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Wait until ssh into the VM works, then run the command and pass its status; without one, a shell when stdin is a terminal (as the original), else just the wait
    #[command(visible_alias = "sshwait")]
    Waitssh {
        /// Give up after this many seconds
        #[arg(short = 't', long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
        /// Print how long the wait took (banner and login) on stderr
        #[arg(long)]
        times: bool,
        /// Command to run in the guest once ssh works (none: a shell on a terminal)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy files into the VM: scp FILES… GUESTPATH
    Scp {
        /// Copy directories recursively
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Use the legacy scp protocol (for guests without an sftp server)
        #[arg(short = 'O', long)]
        legacy: bool,
        /// Files to copy, then the destination path in the guest
        #[arg(required = true, num_args = 2.., value_name = "FILES… GUESTPATH")]
        paths: Vec<PathBuf>,
    },
    /// Mount the VM's / (or GUESTPATH) over sshfs at DIR (default ./mnt-ssh)
    Sshfs {
        /// Where to mount (created when missing); unmount with `fusermount -u DIR`
        dir: Option<PathBuf>,
        /// Directory in the guest
        #[arg(long, default_value = "/")]
        guest_path: String,
    },
}

/// Runs vmk-sshkey.
pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = VmConfig::load_for(&args.global)?;
    cfg.require_vm_dir()?;
    cfg.validate()?;
    let dry = args.global.dry_run;
    match args.cmd {
        Cmd::Sshkeygen { key_type } => sshkeygen(&cfg, key_type, dry),
        Cmd::Sshkeyput { backend, force } => sshkeyput(&cfg, backend, force, dry),
        Cmd::Scpkeyput => scpkeyput(&cfg, dry),
        Cmd::Ssh { command } => ssh_run(&cfg, &command, dry),
        Cmd::Waitssh {
            timeout,
            times,
            command,
        } => waitssh(&cfg, Duration::from_secs(timeout), times, &command, dry),
        Cmd::Scp {
            recursive,
            legacy,
            mut paths,
        } => {
            let dest = paths.pop().expect("clap requires two paths");
            scp(&cfg, &paths, &dest, recursive, legacy, dry)
        }
        Cmd::Sshfs { dir, guest_path } => sshfs(&cfg, dir, &guest_path, dry),
    }
}

/// The VM's private key, or an error that says how to make one.
fn existing_key(cfg: &VmConfig) -> Result<PathBuf> {
    let key = key_file(&cfg.dir);
    if !key.exists() {
        bail!(
            "no ssh key {}: run `vmk sshkeygen` (then boot, or `vmk sshkeyput` for guests without systemd credentials)",
            key.display()
        );
    }
    Ok(key)
}

fn sshkeygen(cfg: &VmConfig, key_type: KeyType, dry: bool) -> Result<ExitCode> {
    let key = key_file(&cfg.dir);
    let public = cfg.dir.join(PUBLIC_KEY_FILE);
    for f in [&key, &public] {
        if f.symlink_metadata().is_ok() {
            bail!(
                "{} exists: refusing to overwrite this VM's key (remove vm-key and vm-key.pub first)",
                f.display()
            );
        }
    }
    let mut c = Command::new("ssh-keygen");
    c.arg("-q").arg("-N").arg("").arg("-f").arg(&key);
    c.arg("-C").arg(format!("vmk-{}", cfg.display_name()));
    match key_type {
        KeyType::Ed25519 => c.args(["-t", "ed25519"]),
        KeyType::Rsa => c.args(["-t", "rsa", "-b", "3072"]),
    };
    if dry {
        vmk_common::outln!("{}", command_line(&c))?;
        return Ok(ExitCode::SUCCESS);
    }
    let status = c
        .stdin(Stdio::null())
        .status()
        .context("running ssh-keygen (install openssh-client)")?;
    if !status.success() {
        bail!("ssh-keygen failed ({status})");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", key.display()))?;
    vmk_common::outln!("{}", public.display())?;
    Ok(ExitCode::SUCCESS)
}

/// The public key's text (one line).
fn public_key(cfg: &VmConfig) -> Result<String> {
    let public = cfg.dir.join(PUBLIC_KEY_FILE);
    let text = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {} (run `vmk sshkeygen`)", public.display()))?;
    let line = text.trim();
    if line.is_empty() || line.contains('\n') {
        bail!("{} is not a single public key line", public.display());
    }
    Ok(line.to_string())
}

fn sshkeyput(
    cfg: &VmConfig,
    backend: vmk_mount::image::Backend,
    force: bool,
    dry: bool,
) -> Result<ExitCode> {
    let key = public_key(cfg)?;
    let req = vmk_mount::image::MountRequest::for_disk0(cfg, backend, force)?;
    if dry {
        let (root, lines) = vmk_mount::image::TempMount::plan(&req)?;
        let authorized = root.join("root/.ssh/authorized_keys");
        let append = format!(
            "# append {} to {} unless it is there",
            vmk_common::shell::quote(cfg.dir.join(PUBLIC_KEY_FILE).as_os_str()),
            vmk_common::shell::quote(authorized.as_os_str())
        );
        let end = vmk_mount::image::TempMount::undo_note().to_string();
        for l in lines.into_iter().chain([append, end]) {
            vmk_common::outln!("{l}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mounted = vmk_mount::image::TempMount::mount(&req)?;
    let added = vmk_mount::guestfiles::append_authorized_key(mounted.root(), &key)?;
    mounted.unmount()?;
    if added {
        vmk_common::errln!(
            "vmk-sshkey: added vm-key.pub to root's authorized_keys in {}",
            req.image.display()
        );
    } else {
        vmk_common::errln!("vmk-sshkey: vm-key.pub was already in root's authorized_keys");
    }
    Ok(ExitCode::SUCCESS)
}

fn scpkeyput(cfg: &VmConfig, dry: bool) -> Result<ExitCode> {
    let key = public_key(cfg)?;
    let t = target::target(cfg)?;
    let hk = HostKeys::for_vm(cfg)?;
    // Append only when missing; create ~/.ssh with the right modes.
    let script = "umask 077; mkdir -p ~/.ssh && k=$(cat) && { grep -qxF \"$k\" ~/.ssh/authorized_keys 2>/dev/null || printf '%s\\n' \"$k\" >> ~/.ssh/authorized_keys; }";
    let mut c = ssh::ssh_command(
        &key_file(&cfg.dir),
        &t,
        &hk,
        Auth::Password,
        Some(ssh::CONNECT_TIMEOUT),
        false,
        &[script.to_string()],
    );
    if dry {
        vmk_common::outln!("{}", command_line(&c))?;
        return Ok(ExitCode::SUCCESS);
    }
    c.stdin(Stdio::piped());
    let mut w = watch::spawn(c, &hk)?;
    w.child
        .stdin
        .take()
        .context("ssh's stdin")?
        .write_all(format!("{key}\n").as_bytes())
        .context("sending the key to ssh")?;
    let status = w.wait(&t)?;
    Ok(vmk_common::process::exit_code(status))
}

fn ssh_run(cfg: &VmConfig, command: &[String], dry: bool) -> Result<ExitCode> {
    let key = existing_key(cfg)?;
    let t = target::target(cfg)?;
    let hk = HostKeys::for_vm(cfg)?;
    let c = user_ssh(&key, &t, &hk, command);
    if dry {
        vmk_common::outln!("{}", command_line(&c))?;
        return Ok(ExitCode::SUCCESS);
    }
    log::debug!("{}", command_line(&c));
    watch::run(c, &hk, &t)
}

fn waitssh(
    cfg: &VmConfig,
    timeout: Duration,
    times: bool,
    command: &[String],
    dry: bool,
) -> Result<ExitCode> {
    let key = existing_key(cfg)?;
    let t = target::target(cfg)?;
    let hk = HostKeys::for_vm(cfg)?;
    // as the original: with no command, a shell once ssh answers, when someone is there to
    // use it; a script (stdin not a terminal) only waits
    let shell = command.is_empty() && std::io::stdin().is_terminal();
    if dry {
        let c = ssh::ssh_command(
            &key,
            &t,
            &hk,
            Auth::KeyBatch,
            Some(2),
            false,
            &["true".into()],
        );
        vmk_common::errln!("would poll {t} for sshd, then: {}", command_line(&c));
        if !command.is_empty() || shell {
            vmk_common::outln!("{}", command_line(&user_ssh(&key, &t, &hk, command)))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let w = wait::wait_for_ssh(&key, &t, &hk, timeout)?;
    if times {
        vmk_common::errln!(
            "vmk-sshkey: sshd banner after {:.3}s, login after {:.3}s",
            w.banner.as_secs_f64(),
            w.login.as_secs_f64()
        );
    }
    if command.is_empty() && !shell {
        return Ok(ExitCode::SUCCESS);
    }
    watch::run(user_ssh(&key, &t, &hk, command), &hk, &t)
}

/// The ssh that runs the user's command in the VM (`vmk ssh`, `vmk waitssh CMD`): with the
/// VM's key, the usual connect timeout, and a terminal when there is no command (a shell).
fn user_ssh(key: &Path, t: &target::Target, hk: &HostKeys, command: &[String]) -> Command {
    ssh::ssh_command(
        key,
        t,
        hk,
        Auth::Key,
        Some(ssh::CONNECT_TIMEOUT),
        command.is_empty(),
        command,
    )
}

fn scp(
    cfg: &VmConfig,
    files: &[PathBuf],
    dest: &Path,
    recursive: bool,
    legacy: bool,
    dry: bool,
) -> Result<ExitCode> {
    let key = existing_key(cfg)?;
    let t = target::target(cfg)?;
    let hk = HostKeys::for_vm(cfg)?;
    let dest = dest.to_str().context("the guest path is not valid UTF-8")?;
    let c = ssh::scp_command(&key, &t, &hk, recursive, legacy, files, dest);
    if dry {
        vmk_common::outln!("{}", command_line(&c))?;
        return Ok(ExitCode::SUCCESS);
    }
    watch::run(c, &hk, &t)
}

fn sshfs(cfg: &VmConfig, dir: Option<PathBuf>, guest_path: &str, dry: bool) -> Result<ExitCode> {
    let key = existing_key(cfg)?;
    let t = target::target(cfg)?;
    let hk = HostKeys::for_vm(cfg)?;
    let dir = dir.unwrap_or_else(|| cfg.dir.join("mnt-ssh"));
    let c = ssh::sshfs_command(&key, &t, &hk, guest_path, &dir);
    if dry {
        vmk_common::outln!("{}", command_line(&c))?;
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut c = c;
    let status = c.status().context("running sshfs (install sshfs)")?;
    if !status.success() {
        // sshfs hides why its ssh failed; one ssh with the same options tells a refused
        // host key apart (the mounted sshfs keeps its ssh's stderr, so it is not watched).
        let probe = ssh::ssh_command(
            &key,
            &t,
            &hk,
            Auth::KeyBatch,
            Some(ssh::CONNECT_TIMEOUT),
            false,
            &["true".into()],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
        if let Ok(out) = probe {
            watch::check(out.status, &out.stderr, &hk, &t, true)?;
        }
        bail!("sshfs failed ({status})");
    }
    vmk_common::errln!(
        "vmk-sshkey: guest {guest_path} mounted at {}; unmount with `fusermount -u {}`",
        dir.display(),
        dir.display()
    );
    vmk_common::outln!("{}", dir.display())?;
    Ok(ExitCode::SUCCESS)
}
