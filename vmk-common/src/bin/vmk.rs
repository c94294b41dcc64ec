//! `vmk`: the front door. Execs `vmk-<command>` (see `vmk_common::frontdoor`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use vmk_common::cli::{self, EXIT_FAILURE, EXIT_USAGE};
use vmk_common::frontdoor::{self, External, FrontDoorArgs, SearchPath};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let parsed = command()
        .try_get_matches_from(&argv)
        .and_then(|m| FrontDoorArgs::from_arg_matches(&m));
    let args = match parsed {
        Ok(args) => args,
        Err(e) => return cli::clap_exit(&e),
    };
    cli::init_logging(args.verbosity());
    let search = SearchPath::from_env();
    let Some(External::Run(words)) = &args.command else {
        return list_or_usage(&args, &search);
    };
    let (command, rest) = words.split_first().expect("clap gives the command name");
    let Some(command) = command.to_str() else {
        eprintln!("vmk: error: command names are UTF-8");
        return ExitCode::from(EXIT_USAGE);
    };
    match command {
        "help" => help(&args, &search, rest),
        _ => exec(&args, &search, command, rest),
    }
}

/// The front door's clap command, laid out like every tool's.
fn command() -> clap::Command {
    cli::shown_command(FrontDoorArgs::command(), &[])
}

fn list_or_usage(args: &FrontDoorArgs, search: &SearchPath) -> ExitCode {
    if args.list {
        return print(&frontdoor::listing(search, args.verbose > 0));
    }
    let _ = print(&command().render_help().to_string());
    ExitCode::from(EXIT_USAGE)
}

/// `vmk help` lists everything; `vmk help COMMAND [SUBCOMMAND…]` shows that command's help.
fn help(args: &FrontDoorArgs, search: &SearchPath, rest: &[OsString]) -> ExitCode {
    let Some((command, words)) = rest.split_first() else {
        let help = command().render_help().to_string();
        return print(&format!(
            "{help}\n{}",
            frontdoor::listing(search, args.verbose > 0)
        ));
    };
    let Some(command) = command.to_str() else {
        return no_such_command(search, &command.to_string_lossy());
    };
    let words: Vec<OsString> = words.iter().cloned().chain(["--help".into()]).collect();
    exec(args, search, command, &words)
}

/// Prints `text` on stdout; a closed pipe is fine.
fn print(text: &str) -> ExitCode {
    match cli::write_stdout(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmk: error: writing to stdout: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Replaces this process with the tool; returns only when that is impossible.
fn exec(args: &FrontDoorArgs, search: &SearchPath, command: &str, rest: &[OsString]) -> ExitCode {
    let Some(resolved) = frontdoor::resolve(search, command, rest) else {
        return no_such_command(search, command);
    };
    log::debug!("exec {} {:?}", resolved.program.display(), resolved.args);
    let own_exe = std::env::current_exe().ok();
    let err = std::process::Command::new(&resolved.program)
        .args(&resolved.args)
        .envs(args.environment(own_exe.as_deref(), command))
        .exec();
    eprintln!(
        "vmk: error: cannot run {}: {err}",
        resolved.program.display()
    );
    ExitCode::from(EXIT_FAILURE)
}

fn no_such_command(search: &SearchPath, command: &str) -> ExitCode {
    eprintln!(
        "vmk: error: no such command: `{}`",
        vmk_common::text::excerpt(command)
    );
    let names = frontdoor::known_names(search);
    if let Some(best) = frontdoor::closest(command, names.iter().map(String::as_str)) {
        eprintln!("\n\tDid you mean `{best}`?");
    }
    eprintln!("\nRun `vmk --list` to see all commands.");
    ExitCode::from(EXIT_USAGE)
}
