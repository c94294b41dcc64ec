//! Man pages and shell completions, generated from the command table and every tool's clap
//! definition.
//!
//! This crate sees every tool's `Args` (vmk-common cannot: the tools depend on it), so it
//! is where the table of names typed after `vmk` ([`vmk_common::commands`]) meets the clap
//! commands they run: each name becomes that command, called as typed. Completions offer
//! exactly those names, and the man pages ([`man`]) describe exactly those commands.

pub mod man;

use anyhow::{bail, Context, Result};
use clap::{Arg, Command, CommandFactory};
use vmk_common::commands::{self, CommandSpec, COMMANDS};
use vmk_common::frontdoor::{self, FrontDoorArgs};

/// Every tool's clap command, by tool name (without `vmk-`).
pub fn tool_commands() -> Vec<(&'static str, Command)> {
    vec![
        ("run", vmk_run::Args::command()),
        ("snap", vmk_snap::Args::command()),
        ("clone", vmk_clone::Args::command()),
        ("mount", vmk_mount::Args::command()),
        ("sshkey", vmk_sshkey::Args::command()),
        ("ayinstall", vmk_ayinstall::Args::command()),
        ("libvirt", vmk_libvirt::Args::command()),
        ("completions", completions_command()),
    ]
}

/// The clap command of `vmk-<tool>`.
pub fn tool_command(tool: &str) -> Result<Command> {
    tool_commands()
        .into_iter()
        .find(|(name, _)| *name == tool)
        .map(|(_, cmd)| cmd)
        .with_context(|| format!("vmk-docgen does not know the tool vmk-{tool}"))
}

/// The command line of `vmk-completions`.
pub fn completions_command() -> Command {
    Command::new("vmk-completions")
        .about("Print shell completions for vmk")
        .version(env!("CARGO_PKG_VERSION"))
        .arg(
            clap::Arg::new("shell")
                .required(true)
                .value_parser(clap::value_parser!(clap_complete::Shell))
                .help("The shell to complete for"),
        )
}

/// The command `vmk NAME` runs, on its own: called NAME, with the table's about and other
/// names, its tool's global options, and without clap's `help` subcommands.
///
/// A command of the tool named like the table's name is the tool's default (`vmk clone`
/// runs `clone` without saying so): it is hidden, as the name itself stands for it.
pub fn typed_command(spec: &CommandSpec) -> Result<Command> {
    let tool = tool_command(spec.tool)?;
    let globals: Vec<Arg> = tool
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    let cmd = match commands::selected_path(&tool, spec.prefix).as_slice() {
        [] => tool.mut_subcommands(|s| {
            if s.get_name() == spec.name {
                s.hide(true)
            } else {
                s
            }
        }),
        [sub] => tool
            .find_subcommand(sub)
            .cloned()
            .expect("selected_path only names subcommands")
            .args(globals),
        deeper => bail!(
            "`vmk {}` selects {deeper:?} in vmk-{}: the front door names one level at most",
            spec.name,
            spec.tool
        ),
    };
    Ok(without_help_subcommands(
        cmd.name(spec.name)
            .subcommand_value_name("COMMAND")
            .display_name(format!("vmk-{}", spec.name))
            .about(spec.about)
            .alias(None)
            .visible_aliases(spec.also),
    ))
}

fn without_help_subcommands(cmd: Command) -> Command {
    cmd.disable_help_subcommand(true)
        .mut_subcommands(without_help_subcommands)
}

/// The whole tree as the user types it, for completions: the front door's options, every
/// name of the table and `help`.
pub fn vmk_tree() -> Result<Command> {
    let names: Vec<&str> = COMMANDS.iter().flat_map(CommandSpec::names).collect();
    let mut root = FrontDoorArgs::command()
        .allow_external_subcommands(false)
        .subcommand(
            Command::new("help").about(frontdoor::HELP_ABOUT).arg(
                Arg::new("command")
                    .value_name("COMMAND")
                    .value_parser(clap::builder::PossibleValuesParser::new(names)),
            ),
        );
    for spec in COMMANDS {
        root = root.subcommand(typed_command(spec)?);
    }
    Ok(root)
}

/// Completions of `vmk` for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<Vec<u8>> {
    let mut tree = vmk_tree()?;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut tree, "vmk", &mut out);
    Ok(out)
}
