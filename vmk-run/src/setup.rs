//! `checksetup` and `fixme`: what this machine offers a VM directory, one line per item,
//! and the repair of what root can repair (the bridge helper and its ACL).

use std::process::ExitCode;

use anyhow::Result;
use vmk_common::cli::GlobalOpts;

use crate::bridge;

/// Options of `checksetup`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Check these bridge helper and bridge.conf instead of the system's (tests)
    #[arg(long, hide = true)]
    pub helper: Option<std::path::PathBuf>,
    /// bridge.conf to check
    #[arg(long, hide = true)]
    pub bridge_conf: Option<std::path::PathBuf>,
}

/// Options of `fixme`.
#[derive(clap::Args, Debug, Clone)]
pub struct FixArgs {
    /// The bridge to allow (default: VMK_BRIDGE)
    #[arg(long)]
    pub bridge: Option<String>,
    /// Fix this bridge helper instead of the system's (tests)
    #[arg(long, hide = true)]
    pub helper: Option<std::path::PathBuf>,
    /// bridge.conf to fix
    #[arg(long, hide = true)]
    pub bridge_conf: Option<std::path::PathBuf>,
}

/// Runs `checksetup`.
pub fn checksetup(_g: &GlobalOpts, _a: &CheckArgs) -> Result<ExitCode> {
    anyhow::bail!("checksetup is not implemented yet")
}

/// Runs `fixme`.
pub fn fixme(_g: &GlobalOpts, _a: &FixArgs) -> Result<ExitCode> {
    let _ = bridge::Files::default();
    anyhow::bail!("fixme is not implemented yet")
}
