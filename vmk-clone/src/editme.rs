//! `vmk editme`: edit this VM's vm-config in `$VISUAL`/`$EDITOR`, then check it as every
//! command reads it, naming a problem with file:line. The original tool edited its own
//! script; the config is what a vmk user edits.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use vmk_common::cli::GlobalOpts;
use vmk_common::config::{VmConfig, VM_FILE_NAME};
use vmk_common::{errln, usage};

/// The editor to run: `$VISUAL`, else `$EDITOR`, else `vi` (a command line: `code -w`
/// works, as in git).
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into())
}

/// Runs `editme`.
pub fn run(global: &GlobalOpts) -> Result<ExitCode> {
    let path = global
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(VM_FILE_NAME));
    if !path.is_file() {
        return Err(usage!(
            "{} does not exist: `vmk newconfig > {VM_FILE_NAME}` makes one",
            path.display()
        ));
    }
    let editor = editor();
    // the editor is the user's own command line, run as git runs it
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(&editor)
        .arg(&path)
        .status()
        .with_context(|| format!("running the editor {editor}"))?;
    if !status.success() {
        bail!(
            "the editor {editor} failed ({status}); {} is as it left it",
            path.display()
        );
    }
    VmConfig::load_for(global)?;
    errln!("vmk-clone: {} is fine", path.display());
    Ok(ExitCode::SUCCESS)
}
