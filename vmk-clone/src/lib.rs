//! vmk-clone: clone a VM directory (`clone [-o OUTDIR] [-n NAME]`), print a new config
//! (`newconfig`), change one key of ./vm-config (`set KEY VALUE`) or edit it in the user's
//! editor and check it (`editme`).
//!
//! `vmk clone …` runs `vmk-clone …` (the `clone` subcommand is the default when the first
//! argument is an option), `vmk newconfig`, `vmk set` and `vmk editme` run `vmk-clone newconfig|set|editme`.

pub mod clone;
pub mod editme;
pub mod newconfig;
pub mod set;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use vmk_common::cli::{GlobalOpts, Tool};

/// Clone a VM directory; write and edit vm-config.
#[derive(Parser, Debug)]
#[command(
    name = "vmk-clone",
    version,
    about = "Clone a VM directory; write and edit vm-config",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Without a command, the options are those of `clone`: vmk clone [-o OUTDIR] [-n NAME] [-k] (by default ./NAME-clone, as the original vmk)"
)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub clone: clone::CloneArgs,
}

impl Tool for Args {
    fn globals(&self) -> &GlobalOpts {
        &self.global
    }
}

/// The commands of vmk-clone.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// New directory OUTDIR/NAME with this VM's vm-config and a reflink copy of its disks
    Clone(clone::CloneArgs),
    /// Print a commented minimal vm-config to stdout
    Newconfig(newconfig::NewconfigArgs),
    /// Change one key of ./vm-config (or -c FILE), keeping every other byte
    Set(set::SetArgs),
    /// Edit ./vm-config (or -c FILE) in $VISUAL or $EDITOR, then check it (a problem is named with file:line)
    Editme,
}

/// Runs vmk-clone.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Some(Command::Clone(a)) => clone::run(&args.global, &a),
        Some(Command::Newconfig(a)) => newconfig::run(&a),
        Some(Command::Set(a)) => set::run(&args.global, &a),
        Some(Command::Editme) => editme::run(&args.global),
        None => clone::run(&args.global, &args.clone),
    }
}
