//! `vmk`: the front door. Execs `vmk-<command>` (see `vmk_common::frontdoor`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{EXIT_FAILURE, EXIT_USAGE};
use vmk_common::frontdoor::{self, External, FrontDoorArgs, SearchPath};

fn main() -> ExitCode {
    let args = FrontDoorArgs::parse();
    vmk_common::cli::init_logging(if args.debug { 2 } else { args.verbose });
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

fn list_or_usage(args: &FrontDoorArgs, search: &SearchPath) -> ExitCode {
    if args.list {
        print!("{}", frontdoor::listing(search, args.verbose > 0));
        return ExitCode::SUCCESS;
    }
    let mut cmd = <FrontDoorArgs as clap::CommandFactory>::command();
    let _ = cmd.print_help();
    ExitCode::from(EXIT_USAGE)
}

/// `vmk help` lists everything; `vmk help COMMAND` shows that command's `--help`.
fn help(args: &FrontDoorArgs, search: &SearchPath, rest: &[OsString]) -> ExitCode {
    match rest.first().and_then(|c| c.to_str()) {
        None => {
            let mut cmd = <FrontDoorArgs as clap::CommandFactory>::command();
            let _ = cmd.print_help();
            println!();
            print!("{}", frontdoor::listing(search, args.verbose > 0));
            ExitCode::SUCCESS
        }
        Some(command) => exec(args, search, command, &["--help".into()]),
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
        .envs(args.environment(own_exe.as_deref()))
        .exec();
    eprintln!(
        "vmk: error: cannot run {}: {err}",
        resolved.program.display()
    );
    ExitCode::from(EXIT_FAILURE)
}

fn no_such_command(search: &SearchPath, command: &str) -> ExitCode {
    eprintln!("vmk: error: no such command: `{command}`");
    let names = frontdoor::known_names(search);
    if let Some(best) = frontdoor::closest(command, names.iter().map(String::as_str)) {
        eprintln!("\n\tDid you mean `{best}`?");
    }
    eprintln!("\nRun `vmk --list` to see all commands.");
    ExitCode::from(EXIT_USAGE)
}
