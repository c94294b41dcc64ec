//! Conventions shared by every vmk tool: global options, logging, error reporting and exit codes.
//!
//! Every tool's `main.rs` is one line that hands its clap `Args` and its `run` function to
//! [`main`]. That gives all tools the same behaviour:
//! - errors are printed as `<tool>: error: …` with their causes, on stderr;
//! - exit status 0 ok, 1 failure, 2 usage or configuration error;
//! - a closed stdout pipe (`vmk ps | head -1`) is not an error;
//! - logging through env_logger: `-v` (info), `-vv`/`-x` (debug), `-vvv` (trace) or `RUST_LOG`;
//! - help starts with its usage line, which names the command as the user typed it
//!   (`Usage: vmk dsnap …` when run as `vmk dsnap`, see [`shown_command`]);
//! - the file mode creation mask is [`PRIVATE_UMASK`] whatever the caller's: everything a
//!   tool creates (sockets, logs, pidfiles, images, directories), and everything its
//!   children such as qemu create, is its owner's only (see [`set_private_umask`]).
//!
//! The front door passes its global options on through the environment (`VMK_OPT_*`), so
//! that plugins see them too without having to accept unknown arguments, and the name
//! typed after `vmk` (`VMK_COMMAND`).

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};

use crate::error::UsageError;

/// Environment variable through which the front door passes `-c FILE`.
pub const ENV_CONFIG: &str = "VMK_OPT_CONFIG";
/// Environment variable through which the front door passes `-D`.
pub const ENV_DRY_RUN: &str = "VMK_OPT_DRY_RUN";
/// Environment variable through which the front door passes `-v`/`-x` (a count).
pub const ENV_VERBOSE: &str = "VMK_OPT_VERBOSE";
/// Environment variable naming the `vmk` front door that started a tool.
pub const ENV_VMK: &str = "VMK";
/// Environment variable through which the front door passes the name typed after `vmk`.
pub const ENV_COMMAND: &str = "VMK_COMMAND";

/// Help layout of every vmk command: the usage line first, as in most Unix tools, so that
/// `vmk NAME --help | head -1` is its usage.
pub const HELP_TEMPLATE: &str =
    "{before-help}{usage-heading} {usage}\n\n{about-with-newline}\n{all-args}{after-help}";

/// The umask of every vmk tool: no permission for group or others.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Sets the process umask to [`PRIVATE_UMASK`] and returns the previous one. A caller's
/// umask 000 would otherwise make qemu's QMP socket (root's qemu, driven by any local user),
/// the console log and new images world-readable or writable.
pub fn set_private_umask() -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(PRIVATE_UMASK)).as_raw_mode()
}

/// Exit status for a failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Options every tool accepts, anywhere on its command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GlobalOpts {
    /// Use FILE as this VM's config instead of ./vm-config (its directory is the VM directory)
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true, env = ENV_CONFIG,
          hide_env_values = true)]
    pub config: Option<PathBuf>,

    /// Dry run: print what would be run (shell-quoted), run nothing
    #[arg(short = 'D', long = "dry-run", global = true, env = ENV_DRY_RUN, hide_env_values = true,
          value_parser = clap::builder::FalseyValueParser::new(), action = ArgAction::SetTrue)]
    pub dry_run: bool,

    /// More logging on stderr: -v info, -vv debug, -vvv trace (or set RUST_LOG)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Debug logging, as -vv (the original tool's -x)
    #[arg(short = 'x', long = "debug", global = true, action = ArgAction::SetTrue)]
    pub debug: bool,
}

impl GlobalOpts {
    /// The log level these options ask for, counting what the front door passed on.
    pub fn verbosity(&self) -> u8 {
        let inherited = std::env::var(ENV_VERBOSE)
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0);
        verbosity_of(self.verbose, self.debug).max(inherited)
    }
}

/// The log level of `-v` counted `verbose` times and `-x` (`debug`): `-x` is at least
/// debug (as `-vv`), more `-v` still raise it. The one rule for the front door and tools.
pub fn verbosity_of(verbose: u8, debug: bool) -> u8 {
    if debug {
        verbose.max(2)
    } else {
        verbose
    }
}

/// A tool's parsed arguments: they carry the global options.
pub trait Tool: Parser {
    /// The global options of this invocation.
    fn globals(&self) -> &GlobalOpts;
}

/// Starts env_logger at the level asked for; `RUST_LOG` wins when set.
///
/// Log lines quote configs, file names and guest output as errors do: every message
/// passes through [`crate::text::message`], escaped and bounded.
pub fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let env = env_logger::Env::default().default_filter_or(level);
    let with_target = verbosity >= 3;
    let _ = env_logger::Builder::from_env(env)
        .format(move |buf, record| {
            let style = buf.default_level_style(record.level());
            let level = record.level();
            let target = if with_target {
                format!(" {}", record.target())
            } else {
                String::new()
            };
            writeln!(
                buf,
                "[{style}{level:<5}{style:#}{target}] {}",
                crate::text::message(&record.args().to_string())
            )
        })
        .try_init();
}

/// Runs a tool: parses its arguments, sets up logging, runs it, reports errors and
/// turns the outcome into an exit status.
pub fn main<A: Tool>(run: fn(A) -> anyhow::Result<ExitCode>) -> ExitCode {
    main_from(std::env::args_os(), run)
}

/// [`main`] with explicit arguments (for tests and the front door).
pub fn main_from<A: Tool, I, T>(args: I, run: fn(A) -> anyhow::Result<ExitCode>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let old_umask = set_private_umask();
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let tool = A::command().get_name().to_string();
    // help and usage errors come from the command as shown; the values from the tool's own
    if let Err(e) = shown_command(A::command(), &args).try_get_matches_from(&args) {
        return clap_exit(&e);
    }
    let args = match A::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => return clap_exit(&e),
    };
    init_logging(args.globals().verbosity());
    if old_umask != PRIVATE_UMASK {
        log::debug!(
            "umask {old_umask:03o} replaced by {PRIVATE_UMASK:03o}: what vmk creates is private"
        );
    }
    match run(args) {
        Ok(code) => code,
        Err(err) => report(&tool, &err),
    }
}

/// A tool's clap command as the user sees it: usage first ([`HELP_TEMPLATE`]) and, when
/// the front door ran it for a name of the command table, named as typed after `vmk`.
///
/// `args` are the tool's arguments, its own name first. Only help and errors may come
/// from the result: a renamed subcommand no longer matches the tool's derived `Args`.
pub fn shown_command(cmd: clap::Command, args: &[OsString]) -> clap::Command {
    let cmd = with_template(cmd);
    match typed_spec(&cmd, args) {
        Some((spec, typed)) => crate::commands::as_typed(cmd, spec, &typed),
        None => cmd,
    }
}

fn with_template(cmd: clap::Command) -> clap::Command {
    cmd.help_template(HELP_TEMPLATE)
        .mut_subcommands(with_template)
}

/// The table's row for the name in `VMK_COMMAND`, when it names this tool and `args`
/// begin with its prefix (so that a name inherited by another tool is ignored).
fn typed_spec(
    cmd: &clap::Command,
    args: &[OsString],
) -> Option<(&'static crate::commands::CommandSpec, String)> {
    let typed = std::env::var(ENV_COMMAND).ok()?;
    let spec = crate::commands::find(&typed)?;
    let given = args.iter().skip(1).take(spec.prefix.len());
    let prefixed = given.len() == spec.prefix.len() && given.zip(spec.prefix).all(|(a, p)| a == p);
    (spec.program() == cmd.get_name() && prefixed).then_some((spec, typed))
}

/// Prints a clap error, or the help or version it carries, and returns the exit status:
/// 0 for help and version (a closed pipe included), 2 for usage errors.
pub fn clap_exit(e: &clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print(); // help and version, on stdout
        return ExitCode::SUCCESS;
    }
    // clap quotes the offending argument whole: each line cut to a short excerpt when it
    // is that long (no usage line is), then escaped and bounded like every error
    let text = e.render().to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.chars().count() > 200 {
            true => crate::text::excerpt_of(l, 160),
            false => l.to_string(),
        })
        .collect();
    let _ = writeln!(
        io::stderr().lock(),
        "{}",
        crate::text::message(&lines.join("\n"))
    );
    ExitCode::from(EXIT_USAGE)
}

/// Writes `bytes` to stdout at once; a closed pipe is not an error (`vmk --list | head -1`).
pub fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Prints an error with its causes and returns the exit status it stands for.
pub fn report(tool: &str, err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    // Errors quote configs, arguments, file names and guest output: printed through
    // `text::message`, escaped and bounded, whatever they hold.
    let mut stderr = io::stderr().lock();
    let _ = writeln!(
        stderr,
        "{tool}: error: {}",
        crate::text::message(&err.to_string())
    );
    for cause in err.chain().skip(1) {
        let _ = writeln!(
            stderr,
            "  caused by: {}",
            crate::text::message(&cause.to_string())
        );
    }
    ExitCode::from(exit_status_of(err))
}

/// 2 for usage and configuration errors, 1 for everything else.
pub fn exit_status_of(err: &anyhow::Error) -> u8 {
    let is_usage = err.chain().any(|c| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<crate::config::ConfigError>().is_some()
            || c.downcast_ref::<crate::qemu::QemuError>()
                .is_some_and(crate::qemu::QemuError::is_config_mistake)
    });
    if is_usage {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes a line to stdout, returning an error (not panicking) when stdout is closed.
///
/// Tools print results with this (or `outln!`) so that `vmk ps | head -1` ends quietly.
pub fn print_line(line: impl std::fmt::Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
}

/// Writes a status line to stderr (`X runs (pid N)`, warnings, notes), escaped and
/// bounded by [`crate::text::message`]: such lines name configs, files and guests.
/// A closed stderr is ignored.
pub fn status_line(line: impl std::fmt::Display) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{}", crate::text::message(&line.to_string()));
}

/// `eprintln!` for status lines: through [`status_line`], escaped and bounded.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::status_line(format_args!($($arg)*))
    };
}

/// `println!` that returns an `io::Result` instead of panicking on a closed pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_at_least_vv() {
        assert_eq!(verbosity_of(0, false), 0);
        assert_eq!(verbosity_of(1, false), 1);
        assert_eq!(verbosity_of(0, true), 2);
        assert_eq!(verbosity_of(3, true), 3);
    }

    #[test]
    fn usage_errors_exit_2_and_others_1() {
        let usage = anyhow::Error::new(UsageError("bad".into())).context("while parsing");
        assert_eq!(exit_status_of(&usage), 2);
        let other = anyhow::anyhow!("disk0 not found");
        assert_eq!(exit_status_of(&other), 1);
    }

    #[test]
    fn broken_pipe_is_success() {
        let err =
            anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("printing");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
