//! `vmk completions <shell>`: completions for the whole `vmk` command tree.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use vmk_common::cli;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let matches = match cli::shown_command(vmk_docgen::completions_command(), &args)
        .try_get_matches_from(&args)
    {
        Ok(m) => m,
        Err(e) => return cli::clap_exit(&e),
    };
    let shell = *matches
        .get_one::<clap_complete::Shell>("shell")
        .expect("required by clap");
    let written = vmk_docgen::completions(shell)
        .and_then(|script| cli::write_stdout(&script).context("writing the completions to stdout"));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report("vmk-completions", &err),
    }
}
