//! vmk-sshkey: SSH into VMs: keys, ssh, scp, sshfs.

use std::process::ExitCode;

use clap::Parser;
use vmk_common::cli::{GlobalOpts, Tool};

/// SSH into VMs: keys, ssh, scp, sshfs.
#[derive(Parser, Debug)]
#[command(name = "vmk-sshkey", version, about = "SSH into VMs: keys, ssh, scp, sshfs")]
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

/// Runs vmk-sshkey.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("vmk-sshkey: not implemented yet");
    Ok(ExitCode::from(vmk_common::cli::EXIT_FAILURE))
}
