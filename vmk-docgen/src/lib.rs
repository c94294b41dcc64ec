//! Man pages and shell completions, generated from every tool's clap definition.
//!
//! This crate sees every tool's `Args` (vmk-common cannot: the tools depend on it), so it
//! is the one place where the whole command tree of `vmk` is put together: the front
//! door, each tool, and each alias mapped to the tool subcommand it runs.

use clap::{Command, CommandFactory};
use vmk_common::frontdoor::{FrontDoorArgs, ALIASES, BUILTINS};

/// Every tool's clap command, by tool name (without `vmk-`).
pub fn tool_commands() -> Vec<(&'static str, Command)> {
    vec![
        ("run", vmk_run::Args::command()),
        ("snap", vmk_snap::Args::command()),
        ("clone", vmk_clone::Args::command()),
        ("mount", vmk_mount::Args::command()),
        ("sshkey", vmk_sshkey::Args::command()),
        ("ayinstall", vmk_ayinstall::Args::command()),
        ("completions", completions_command()),
    ]
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

/// The whole tree as the user types it: `vmk <tool|alias> …`, for completions.
pub fn vmk_tree() -> Command {
    let tools = tool_commands();
    let mut root = FrontDoorArgs::command()
        .allow_external_subcommands(false)
        .subcommand(Command::new("help").about("List commands, or show one command's help"));
    for (name, about) in BUILTINS {
        let sub = tools
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| Command::new(*name));
        root = root.subcommand(sub.name(*name).about(*about));
    }
    for alias in ALIASES {
        let target = alias.args.iter().rev().find(|a| !a.starts_with('-'));
        let sub = tools
            .iter()
            .find(|(t, _)| *t == alias.tool)
            .and_then(|(_, c)| target.and_then(|t| c.find_subcommand(t)).cloned())
            .unwrap_or_else(|| Command::new(alias.name));
        // keep the subcommand's own name when it answers to the alias already (`info`
        // answers to `status`), so that no name is there twice
        let covers = sub.get_name() == alias.name || sub.get_all_aliases().any(|a| a == alias.name);
        let sub = if covers { sub } else { sub.name(alias.name) };
        let names: Vec<String> = std::iter::once(sub.get_name())
            .chain(sub.get_all_aliases())
            .map(str::to_string)
            .collect();
        let taken = root.get_subcommands().any(|c| {
            names
                .iter()
                .any(|n| c.get_name() == n || c.get_all_aliases().any(|a| a == n))
        });
        if !taken {
            root = root.subcommand(sub);
        }
    }
    root
}

/// Writes completions of `vmk` for `shell`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut tree = vmk_tree();
    clap_complete::generate(shell, &mut tree, "vmk", out);
}

/// Every man page: `(file name, contents)`, for vmk, each tool and each tool subcommand.
pub fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    pages.push(render("vmk", FrontDoorArgs::command())?);
    for (_, cmd) in tool_commands() {
        let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
        let tool = cmd.get_name().to_string();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{tool}-{}", sub.get_name());
            pages.push(render(
                &name,
                sub.clone().name(name.clone()).disable_version_flag(true),
            )?);
        }
        pages.push(render(&tool, cmd)?);
    }
    pages.sort();
    Ok(pages)
}

fn render(name: &str, cmd: Command) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .date("")
        .source(format!("vmk {}", env!("CARGO_PKG_VERSION")))
        .manual("vmk manual")
        .render(&mut buf)?;
    Ok((format!("{name}.1"), buf))
}
