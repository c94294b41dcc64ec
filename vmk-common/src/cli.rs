//! Conventions shared by every vmk tool: global options, logging, error reporting and exit codes.
//!
//! Every tool's `main.rs` is one line that hands its clap `Args` and its `run` function to
//! [`main`]. That gives all tools the same behaviour:
//! - errors are printed as `<tool>: error: …` with their causes, on stderr;
//! - exit status 0 ok, 1 failure, 2 usage or configuration error;
//! - a closed stdout pipe (`vmk ps | head -1`) is not an error;
//! - logging through env_logger: `-v` (info), `-vv`/`-x` (debug), `-vvv` (trace) or `RUST_LOG`.
//!
//! The front door passes its global options on through the environment (`VMK_OPT_*`), so
//! that plugins see them too without having to accept unknown arguments.

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
        let own = if self.debug {
            self.verbose.max(2)
        } else {
            self.verbose
        };
        own.max(inherited)
    }
}

/// A tool's parsed arguments: they carry the global options.
pub trait Tool: Parser {
    /// The global options of this invocation.
    fn globals(&self) -> &GlobalOpts;
}

/// Starts env_logger at the level asked for; `RUST_LOG` wins when set.
pub fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let env = env_logger::Env::default().default_filter_or(level);
    let _ = env_logger::Builder::from_env(env)
        .format_target(verbosity >= 3)
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
    let tool = A::command().get_name().to_string();
    let args = match A::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(args.globals().verbosity());
    match run(args) {
        Ok(code) => code,
        Err(err) => report(&tool, &err),
    }
}

/// Prints an error with its causes and returns the exit status it stands for.
pub fn report(tool: &str, err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "{tool}: error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
    ExitCode::from(exit_status_of(err))
}

/// 2 for usage and configuration errors, 1 for everything else.
pub fn exit_status_of(err: &anyhow::Error) -> u8 {
    let is_usage = err.chain().any(|c| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<crate::config::ConfigError>().is_some()
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
