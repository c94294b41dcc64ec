//! The command table against the tools' clap definitions, in process: every name selects
//! a command that exists, groups are groups, and completions cover every name.

use vmk_common::commands::{self, CommandSpec, Kind, COMMANDS, TOOLS};

#[test]
fn every_tool_of_the_table_has_its_clap_command_and_back() {
    let known: Vec<&str> = vmk_docgen::tool_commands()
        .iter()
        .map(|(t, _)| *t)
        .collect();
    let listed: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
    assert_eq!(known, listed);
    for (tool, cmd) in vmk_docgen::tool_commands() {
        assert_eq!(cmd.get_name(), format!("vmk-{tool}"));
    }
}

#[test]
fn every_name_selects_a_command_and_groups_are_groups() {
    for spec in COMMANDS {
        let tool = vmk_docgen::tool_command(spec.tool).unwrap();
        let path = commands::selected_path(&tool, spec.prefix);
        let words = spec.prefix.iter().filter(|w| !w.starts_with('-')).count();
        assert_eq!(
            path.len(),
            words,
            "`vmk {}`: {:?} in vmk-{}",
            spec.name,
            spec.prefix,
            spec.tool
        );
        let cmd = vmk_docgen::typed_command(spec).unwrap();
        let group = cmd.is_subcommand_required_set();
        assert_eq!(
            group,
            spec.kind == Kind::Group,
            "`vmk {}` is a {:?}",
            spec.name,
            spec.kind
        );
    }
}

#[test]
fn completions_offer_exactly_the_table_and_help() {
    let tree = vmk_docgen::vmk_tree().unwrap();
    let mut offered: Vec<&str> = tree
        .get_subcommands()
        .flat_map(|c| std::iter::once(c.get_name()).chain(c.get_visible_aliases()))
        .collect();
    let mut expected: Vec<&str> = COMMANDS.iter().flat_map(CommandSpec::names).collect();
    expected.push("help");
    offered.sort();
    expected.sort();
    assert_eq!(offered, expected);
}

#[test]
fn completions_of_run_are_the_run_command() {
    let tree = vmk_docgen::vmk_tree().unwrap();
    let run = tree.find_subcommand("run").unwrap();
    assert!(!run.has_subcommands(), "`vmk run ps` must not be offered");
    assert!(run.get_arguments().any(|a| a.get_long() == Some("json")));
    assert!(run.get_arguments().any(|a| a.get_long() == Some("config")));
    let snap = tree.find_subcommand("snap").unwrap();
    assert!(snap.find_subcommand("run").is_some());
}
