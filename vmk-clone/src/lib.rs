//! vmk-clone: Clone a VM directory; write and edit vm-config.

use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{GlobalOpts, Tool};

/// Clone a VM directory; write and edit vm-config.
#[derive(Parser, Debug)]
#[command(name = "vmk-clone", version, about = "Clone a VM directory; write and edit vm-config")]
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

/// Runs vmk-clone.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("vmk-clone: not implemented yet");
    Ok(ExitCode::from(vmk_common::cli::EXIT_FAILURE))
}
