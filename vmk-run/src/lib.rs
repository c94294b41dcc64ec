//! vmk-run: run VMs — start them in the background or the foreground, attach to their
//! consoles, show their state, stop them; plus `ps`, `checksetup` and `fixme`.
//!
//! The per-instance operations live in [`instance`] as a library, because `vmk snap`
//! runs its snapshot VM with exactly the same code on another image.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use vmk_common::cli::{GlobalOpts, Tool, EXIT_FAILURE};

use vmk_common::config::values::ONE_SHOT_ARG;
use vmk_common::config::{NetType, Share, VmConfig};
use vmk_common::outln;
use vmk_common::qemu::Mode;

pub mod bridge;
pub mod console;
pub mod instance;
pub mod pvh;
pub mod registry;
pub mod setup;
pub mod term;

pub use instance::{Instance, StartOptions, Started, StopOutcome};

/// Run VMs: start, stop, consoles, status.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-run",
    version,
    about = "Run VMs: start, stop, consoles, status"
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// `--exec CMD` of `run` and `snap run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ExecArgs {
    /// Run CMD in the guest over ssh once it answers (stdin, stdout and stderr passed
    /// through), then end the VM and exit with CMD's status
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// With --exec: how long to wait for the guest's sshd (seconds)
    #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "exec")]
    pub ssh_timeout: u64,
    /// With --exec: boot the guest's normal init (systemd) even when VMK_EXEC_INIT names a
    /// small one for one-shot runs
    #[arg(long, requires = "exec")]
    pub full_boot: bool,
}

/// Kernel arguments of a one-shot boot besides `init=`: [`ONE_SHOT_ARG`] (the initrd of a
/// bootstrapped guest mounts the root without udev), and no kernel messages on the serial
/// console but errors (every character is slow to print under emulation).
fn one_shot_append() -> String {
    format!("{ONE_SHOT_ARG} quiet")
}

impl ExecArgs {
    /// The options of [`instance::exec`] for `end` and the VM's config `cfg`, when `--exec`
    /// was given.
    pub fn options(&self, end: instance::End, cfg: &VmConfig) -> Option<instance::ExecOptions> {
        self.exec.as_ref().map(|command| instance::ExecOptions {
            command: command.clone(),
            ssh_timeout: Duration::from_secs(self.ssh_timeout),
            end,
            one_shot: self.one_shot_init(cfg).is_some(),
        })
    }

    /// The init a one-shot run of `cfg` boots: VMK_EXEC_INIT, with --exec and without
    /// --full-boot, when vmk gives the kernel its command line (direct kernel boot) and
    /// the guest's network is user networking (the init configures qemu's fixed addresses).
    pub fn one_shot_init<'c>(&self, cfg: &'c VmConfig) -> Option<&'c str> {
        let init = cfg.exec_init.as_deref().filter(|_| self.exec.is_some())?;
        let can = cfg.kernel.is_some() && cfg.net_type == NetType::User;
        (can && !self.full_boot).then_some(init)
    }

    /// `cfg` for this run: a one-shot run ([`ExecArgs::one_shot_init`]) boots its init,
    /// with [`one_shot_append`]; both go before the configured arguments, so that an
    /// `init=` or `loglevel=` there (VMK_APPEND, --append) still wins. An x86 bzImage boots
    /// as its unpacked ELF ([`pvh::pvh_kernel`]; not in a dry run, which writes nothing).
    pub fn apply(&self, mut cfg: VmConfig, dry_run: bool) -> Result<VmConfig> {
        match (self.one_shot_init(&cfg), &cfg.exec_init) {
            (Some(init), _) => {
                let given = cfg.append.as_deref().unwrap_or("");
                let append = format!("init={init} {} {given}", one_shot_append());
                cfg.append = Some(append.trim_end().to_string());
                let x86 = cfg.arch.as_deref().is_none_or(|a| a == "x86_64");
                if let (Some(kernel), true, false) = (&cfg.kernel, x86, dry_run) {
                    if let Some(elf) = pvh::pvh_kernel(kernel)? {
                        cfg.kernel = Some(elf);
                    }
                }
            }
            (None, Some(init)) if self.exec.is_some() && !self.full_boot => log::info!(
                "VMK_EXEC_INIT {init} needs direct kernel boot (VMK_KERNEL or --kernel) and \
                 VMK_NET_TYPE=user: the guest boots its own init"
            ),
            _ => {}
        }
        Ok(cfg)
    }
}

/// `--kernel`, `--initrd`, `--append`, `--modules` of `run` and `snap run`: a kernel under
/// test for one boot, without touching the config.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BootArgs {
    /// Boot this kernel for this run (instead of VMK_KERNEL or disk0's boot loader); without
    /// --initrd it boots without an initrd (VMK_INITRD belongs to VMK_KERNEL)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Boot with this initrd for this run (instead of VMK_INITRD)
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel arguments for this run (instead of VMK_APPEND)
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
    /// A `make modules_install INSTALL_MOD_PATH=DIR` tree (DIR/lib/modules/VERSION) shared
    /// read-only with the guest for this run; guests made by `vmk bootstrap` mount it over
    /// /lib/modules at boot
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
}

impl BootArgs {
    /// `cfg` with the options applied (paths relative to the current directory). Usage
    /// errors (exit 2) for files that are missing, an --initrd or --append with no kernel
    /// to boot, and a --modules tree without modules.
    pub fn apply(&self, mut cfg: VmConfig) -> Result<VmConfig> {
        let given = |opt: &str, p: &Path, dir: bool| -> Result<PathBuf> {
            let abs =
                std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
            let ok = if dir { abs.is_dir() } else { abs.is_file() };
            if !ok {
                return Err(vmk_common::usage!(
                    "{opt} {}: no such {}",
                    p.display(),
                    if dir { "directory" } else { "file" }
                ));
            }
            Ok(abs)
        };
        if let Some(k) = &self.kernel {
            cfg.kernel = Some(given("--kernel", k, false)?);
            cfg.initrd = None;
        }
        if let Some(i) = &self.initrd {
            cfg.initrd = Some(given("--initrd", i, false)?);
        }
        if let Some(a) = &self.append {
            cfg.append = Some(a.clone());
        }
        if cfg.kernel.is_none() && (self.initrd.is_some() || self.append.is_some()) {
            return Err(vmk_common::usage!(
                "--initrd and --append need a kernel to boot: give --kernel or set VMK_KERNEL"
            ));
        }
        if let Some(m) = &self.modules {
            let tree = modules_dir(&given("--modules", m, true)?)?;
            cfg.shares.retain(|s| s.tag != Share::MODULES_TAG);
            cfg.shares.push(Share {
                dir: tree,
                tag: Share::MODULES_TAG.to_string(),
                readonly: true,
            });
        }
        Ok(cfg)
    }
}

/// The `lib/modules` directory of a `modules_install` tree `dir` (or `dir` itself when it
/// is one): the one holding `VERSION/modules.dep`.
fn modules_dir(dir: &Path) -> Result<PathBuf> {
    let has_versions = |d: &Path| -> bool {
        std::fs::read_dir(d).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("modules.dep").is_file())
        })
    };
    for candidate in [
        dir.join("lib/modules"),
        dir.join("usr/lib/modules"),
        dir.to_path_buf(),
    ] {
        if has_versions(&candidate) {
            return Ok(candidate);
        }
    }
    Err(vmk_common::usage!(
        "--modules {}: no modules tree (expected DIR/lib/modules/VERSION/modules.dep, as \
         `make modules_install INSTALL_MOD_PATH=DIR` makes it)",
        dir.display()
    ))
}

/// The commands of vmk-run.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Start the VM in the background (serial console on a unix socket or telnet port, VNC, QMP, pidfile)
    Run {
        /// Print pid, ports and files as one JSON object on stdout
        #[arg(long, conflicts_with = "exec")]
        json: bool,
        #[command(flatten)]
        exec: ExecArgs,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Start the VM in the foreground with its serial console on this terminal (Ctrl-A x quits)
    Runin,
    /// Show the config values that matter and whether the VM runs
    #[command(visible_alias = "status")]
    Info {
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the VM runs, 1 when not; print nothing
    Isrunning,
    /// Kill the VM now: SIGINT, SIGTERM, SIGKILL a second apart, only to this VM's qemu
    Kill,
    /// Power the VM off gracefully (ACPI over QMP), kill it after the timeout
    Stop {
        /// Seconds to wait for the guest to power off before killing it
        #[arg(short, long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
    },
    /// Attach the terminal to the VM's serial console (Ctrl-] detaches)
    #[command(visible_alias = "telnet")]
    Console {
        /// When stdin is not a terminal: after it ends, leave once the guest has been quiet
        /// this long (seconds)
        #[arg(short, long, value_name = "SECONDS", default_value_t = 2.0)]
        wait: f64,
    },
    /// Open a VNC viewer on the VM's display
    Vnc,
    /// List this user's running VMs
    Ps {
        /// A JSON array on stdout
        #[arg(long)]
        json: bool,
    },
    /// Check what this machine offers for this VM (one line each: ok, warn, fail)
    Checksetup(setup::CheckArgs),
    /// Make the bridge helper setuid root and allow the bridge in /etc/qemu/bridge.conf (root)
    Fixme(setup::FixArgs),
}

fn load(global: &GlobalOpts) -> Result<VmConfig> {
    Ok(VmConfig::load_for(global)?)
}

fn disk0_instance(global: &GlobalOpts) -> Result<Instance> {
    Instance::disk0(load(global)?)
}

/// Runs vmk-run.
pub fn run(args: Args) -> Result<ExitCode> {
    let g = &args.global;
    match args.command {
        Command::Run { json, exec, boot } => {
            let inst = Instance::disk0(exec.apply(boot.apply(load(g)?)?, g.dry_run)?)?;
            let opts = StartOptions::default();
            match exec.options(instance::End::PowerOff(instance::STOP_TIMEOUT), &inst.cfg) {
                Some(x) => cmd_exec(&inst, g.dry_run, &opts, &x),
                None => cmd_run(&inst, g.dry_run, json, &opts),
            }
        }
        Command::Runin => cmd_runin(&disk0_instance(g)?, g.dry_run, &StartOptions::default()),
        Command::Info { json } => cmd_info(&disk0_instance(g)?, json),
        Command::Isrunning => cmd_isrunning(&disk0_instance(g)?),
        Command::Kill => cmd_kill(&disk0_instance(g)?, g.dry_run),
        Command::Stop { timeout } => {
            cmd_stop(&disk0_instance(g)?, Duration::from_secs(timeout), g.dry_run)
        }
        Command::Console { wait } => cmd_console(&disk0_instance(g)?, wait),
        Command::Vnc => cmd_vnc(&disk0_instance(g)?, g.dry_run),
        Command::Ps { json } => cmd_ps(json),
        Command::Checksetup(a) => setup::checksetup(g, &a),
        Command::Fixme(a) => setup::fixme(g, &a),
    }
}

/// `run`: start in the background (or print the command with `-D`).
pub fn cmd_run(
    inst: &Instance,
    dry_run: bool,
    json: bool,
    opts: &StartOptions<'_>,
) -> Result<ExitCode> {
    if dry_run {
        outln!("{}", instance::dry_run(inst, Mode::Run, opts.adjust)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let started = instance::start(inst, opts)?;
    if json {
        outln!("{}", serde_json::to_string(&started)?)?;
    } else {
        for l in instance::describe(inst, &started) {
            vmk_common::errln!("{l}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `run --exec CMD`: start, run CMD over ssh, end the VM; CMD's exit status (or print the
/// commands with `-D`).
pub fn cmd_exec(
    inst: &Instance,
    dry_run: bool,
    opts: &StartOptions<'_>,
    x: &instance::ExecOptions,
) -> Result<ExitCode> {
    if dry_run {
        outln!("{}", instance::dry_run(inst, Mode::Run, opts.adjust)?)?;
        vmk_common::errln!(
            "then: wait for ssh (up to {}s), run {} in the guest, end the VM ({})",
            x.ssh_timeout.as_secs(),
            vmk_common::shell::quote(x.command.as_ref()),
            match x.end {
                instance::End::Kill => "kill".to_string(),
                instance::End::PowerOff(t) => format!("power-off, kill after {}s", t.as_secs()),
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    instance::exec(inst, opts, x)
}

/// `runin`: run in the foreground (or print the command with `-D`).
pub fn cmd_runin(inst: &Instance, dry_run: bool, opts: &StartOptions<'_>) -> Result<ExitCode> {
    if dry_run {
        outln!(
            "{}",
            instance::dry_run(inst, Mode::Foreground, opts.adjust)?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    instance::run_foreground(inst, opts)
}

/// `info`/`status`.
pub fn cmd_info(inst: &Instance, json: bool) -> Result<ExitCode> {
    let info = instance::info(inst)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&info)?)?;
    } else {
        for l in instance::info_lines(&info) {
            outln!("{l}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `isrunning`: the exit status says it.
pub fn cmd_isrunning(inst: &Instance) -> Result<ExitCode> {
    Ok(if instance::is_running(inst)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// `kill`.
pub fn cmd_kill(inst: &Instance, dry_run: bool) -> Result<ExitCode> {
    if dry_run {
        match inst.status()? {
            vmk_common::state::VmStatus::Running { pid } => {
                outln!("kill -INT {pid}; sleep 1; kill -TERM {pid}; sleep 1; kill -KILL {pid}")?
            }
            other => vmk_common::errln!("nothing to kill ({other:?})"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    report_stop(inst, instance::kill(inst)?)
}

/// `stop`.
pub fn cmd_stop(inst: &Instance, timeout: Duration, dry_run: bool) -> Result<ExitCode> {
    if dry_run {
        if let vmk_common::state::VmStatus::Running { pid } = inst.status()? {
            outln!(
                "system_powerdown via {}; wait {}s for pid {pid}; then kill",
                inst.paths.qmp_socket.display(),
                timeout.as_secs()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    report_stop(inst, instance::stop(inst, timeout)?)
}

fn report_stop(inst: &Instance, outcome: StopOutcome) -> Result<ExitCode> {
    vmk_common::errln!("{}: {outcome}", inst.cfg.display_name());
    if let StopOutcome::StalePidfile { .. } = outcome {
        if let Some(pid) = vmk_common::state::qemu_pids_using(&inst.image)?.first() {
            vmk_common::errln!(
                "note: qemu pid {pid} still uses {} but was not started through this pidfile: \
                 not touched",
                inst.image.display()
            );
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `console`/`telnet`.
pub fn cmd_console(inst: &Instance, wait: f64) -> Result<ExitCode> {
    if !instance::is_running(inst)? {
        anyhow::bail!(
            "{} is not running: start it with `{} run`",
            inst.cfg.display_name(),
            inst.commands
        );
    }
    let target = if inst.cfg.console_telnet {
        console::Target::Telnet(console::connect_addr(
            inst.cfg.listen,
            inst.cfg.telnet_port(),
        ))
    } else {
        let sock = instance::console_socket(inst);
        if !sock.exists() {
            anyhow::bail!(
                "{} runs but has no console socket {}: was it started with VMK_CONSOLE=telnet? \
                 (`{} stop` and start it again, or set VMK_CONSOLE=telnet)",
                inst.cfg.display_name(),
                sock.display(),
                inst.commands
            );
        }
        console::Target::Socket(sock)
    };
    let banner = format!(
        "connected to {}'s serial console ({target}); Ctrl-] detaches",
        inst.cfg.display_name()
    );
    let wait = Duration::try_from_secs_f64(wait.max(0.0)).unwrap_or(Duration::from_secs(2));
    console::attach(&target, wait, Some(&banner))?;
    Ok(ExitCode::SUCCESS)
}

/// Viewers tried by `vnc`, in order; `{}` is `host:display`.
const VIEWERS: &[(&str, &str)] = &[
    ("vncviewer", "{}"),
    ("xtightvncviewer", "{}"),
    ("gvncviewer", "{}"),
    ("remote-viewer", "vnc://{hostport}"),
];

/// Viewers tried by `vnc` for a unix socket (VMK_VNC_SOCKET=yes), in order; `{}` is the
/// socket's path.
const SOCKET_VIEWERS: &[(&str, &str)] = &[
    ("vncviewer", "{}"), // TigerVNC takes a socket path
    ("remote-viewer", "vnc+unix://{}"),
];

/// `vnc` for a display on a unix socket: exec a viewer that can open one.
fn vnc_on_socket(inst: &Instance, dry_run: bool) -> Result<ExitCode> {
    let sock = instance::vnc_socket(inst);
    let path = sock.display().to_string();
    let found = SOCKET_VIEWERS.iter().find_map(|(name, arg)| {
        vmk_common::host::which(name).map(|p| (p, arg.replace("{}", &path)))
    });
    let Some((viewer, arg)) = found else {
        outln!("{path}")?;
        vmk_common::errln!(
            "no VNC viewer that opens a unix socket found (tried {}): connect one to {path}",
            SOCKET_VIEWERS
                .iter()
                .map(|v| v.0)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    if dry_run {
        outln!("{} {arg}", viewer.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    if !instance::is_running(inst)? {
        vmk_common::errln!("warning: {} is not running", inst.cfg.display_name());
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&viewer).arg(&arg).exec();
    Err(err).with_context(|| format!("running {}", viewer.display()))
}

/// `vnc`: exec a viewer.
pub fn cmd_vnc(inst: &Instance, dry_run: bool) -> Result<ExitCode> {
    let cfg = &inst.cfg;
    if cfg.vnc_socket {
        return vnc_on_socket(inst, dry_run);
    }
    let host = console::connect_addr(cfg.listen, cfg.vnc_port()).ip();
    let display = format!("{host}:{}", cfg.vnc);
    let hostport = format!("{host}:{}", cfg.vnc_port());
    let found = VIEWERS.iter().find_map(|(name, arg)| {
        vmk_common::host::which(name).map(|p| {
            (
                p,
                arg.replace("{hostport}", &hostport).replace("{}", &display),
            )
        })
    });
    let Some((viewer, arg)) = found else {
        outln!("{display}")?;
        vmk_common::errln!(
            "no VNC viewer found (tried {}): connect one to {display} (port {})",
            VIEWERS.iter().map(|v| v.0).collect::<Vec<_>>().join(", "),
            cfg.vnc_port()
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    if dry_run {
        outln!("{} {arg}", viewer.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    if !instance::is_running(inst)? {
        vmk_common::errln!("warning: {} is not running", cfg.display_name());
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&viewer).arg(&arg).exec();
    Err(err).with_context(|| format!("running {}", viewer.display()))
}

/// `ps`.
pub fn cmd_ps(json: bool) -> Result<ExitCode> {
    let running = registry::list()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&running)?)?;
    } else {
        for l in registry::table(&running) {
            outln!("{l}")?;
        }
        let domains = vmk_common::libvirt::all_records()?;
        if !domains.is_empty() {
            outln!("")?;
            let domains: Vec<_> = domains
                .into_iter()
                .map(vmk_common::libvirt::with_state)
                .collect();
            for l in registry::libvirt_table(&domains) {
                outln!("{l}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_config_file_given_with_c_exits_2() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("no-such-config");
        let a = Args::try_parse_from(["vmk-run", "-c", cfg.to_str().unwrap(), "info"]).unwrap();
        let err = run(a).unwrap_err();
        assert_eq!(vmk_common::cli::exit_status_of(&err), 2, "{err:#}");
    }
}
