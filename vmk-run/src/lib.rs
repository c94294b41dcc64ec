//! vmk-run: Run VMs: start, stop, consoles, status.

use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{GlobalOpts, Tool};

/// Run VMs: start, stop, consoles, status.
#[derive(Parser, Debug)]
#[command(name = "vmk-run", version, about = "Run VMs: start, stop, consoles, status")]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// Runs vmk-run.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("vmk-run: not implemented yet");
    Ok(ExitCode::from(vmk_common::cli::EXIT_FAILURE))
}
