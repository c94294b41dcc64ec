//! vmk-mount: Mount, change and prepare VM disk images.

use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{GlobalOpts, Tool};

/// Mount, change and prepare VM disk images.
#[derive(Parser, Debug)]
#[command(name = "vmk-mount", version, about = "Mount, change and prepare VM disk images")]
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

/// Runs vmk-mount.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("vmk-mount: not implemented yet");
    Ok(ExitCode::from(vmk_common::cli::EXIT_FAILURE))
}
