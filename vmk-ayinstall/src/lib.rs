//! vmk-ayinstall: Install guests without a human: autoyast, cloud-init, bootstrap.

use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{GlobalOpts, Tool};

/// Install guests without a human: autoyast, cloud-init, bootstrap.
#[derive(Parser, Debug)]
#[command(name = "vmk-ayinstall", version, about = "Install guests without a human: autoyast, cloud-init, bootstrap")]
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

/// Runs vmk-ayinstall.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("vmk-ayinstall: not implemented yet");
    Ok(ExitCode::from(vmk_common::cli::EXIT_FAILURE))
}
