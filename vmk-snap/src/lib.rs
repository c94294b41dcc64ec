//! vmk-snap: Instant reflink snapshots and the throwaway snapshot VM.

use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{GlobalOpts, Tool};

/// Instant reflink snapshots and the throwaway snapshot VM.
#[derive(Parser, Debug)]
#[command(name = "vmk-snap", version, about = "Instant reflink snapshots and the throwaway snapshot VM")]
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

/// Runs vmk-snap.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("vmk-snap: not implemented yet");
    Ok(ExitCode::from(vmk_common::cli::EXIT_FAILURE))
}
