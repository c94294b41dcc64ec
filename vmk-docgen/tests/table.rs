//! The command table against the tools' clap definitions, in process: every name selects
//! a command that exists, groups are groups, and completions and man pages cover every
//! name with synopses a user can type.

use std::collections::BTreeMap;

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

fn pages() -> BTreeMap<String, String> {
    vmk_docgen::man::man_pages()
        .unwrap()
        .into_iter()
        .map(|(name, body)| (name, String::from_utf8(body).unwrap()))
        .collect()
}

/// The first line after `.SH SYNOPSIS`.
fn synopsis(page: &str) -> &str {
    page.lines()
        .skip_while(|l| *l != ".SH \"SYNOPSIS\"")
        .nth(1)
        .unwrap_or_default()
}

#[test]
fn every_name_has_a_man_page_with_a_synopsis_as_typed() {
    let pages = pages();
    for spec in COMMANDS {
        let page = &pages[&format!("vmk-{}.1", spec.name)];
        let typed = format!("\\fBvmk {}\\fR", spec.name.replace('-', "\\-"));
        assert!(
            synopsis(page).starts_with(&typed),
            "vmk-{}.1: {}",
            spec.name,
            synopsis(page)
        );
        for section in ["ENVIRONMENT", "EXIT STATUS", "SEE ALSO"] {
            assert!(
                page.contains(&format!(".SH \"{section}\"")),
                "vmk-{}.1 has no {section}",
                spec.name
            );
        }
        for other in spec.also {
            let link = &pages[&format!("vmk-{other}.1")];
            assert_eq!(link, &format!(".so man1/vmk-{}.1\n", spec.name));
        }
    }
    let names: Vec<String> = COMMANDS
        .iter()
        .flat_map(CommandSpec::names)
        .map(|n| format!("vmk-{n}.1"))
        .collect();
    for name in pages.keys().filter(|p| p.ends_with(".1") && *p != "vmk.1") {
        assert!(names.contains(name), "{name} is the page of no command");
    }
}

#[test]
fn no_man_page_shows_a_name_nobody_types() {
    for (name, page) in pages() {
        // bold `vmk-…` only in references to pages: `\fBvmk\-ssh\fR(1)`
        for piece in page.split("\\fBvmk\\-").skip(1) {
            let (bold, after) = piece.split_once("\\fR").unwrap_or_default();
            assert!(
                after.starts_with('('),
                "{name}: \\fBvmk\\-{bold}\\fR is no command"
            );
        }
        for heading in page.lines().filter_map(|l| l.strip_prefix(".SS \"vmk")) {
            assert!(
                heading.starts_with(' ') && !heading.contains('\\'),
                "{name}: {heading}"
            );
        }
        for tool in TOOLS {
            assert!(
                !page.contains(&format!("vmk\\-{}\\-", tool.name)),
                "{name}: a tool's page"
            );
        }
    }
}

#[test]
fn the_group_page_describes_its_commands() {
    let pages = pages();
    let snap = &pages["vmk-snap.1"];
    for section in ["vmk snap run", "vmk snap dsnap", "vmk snap dsnap list"] {
        assert!(
            snap.contains(&format!(".SS \"{section}\"")),
            "{section} missing"
        );
    }
    let sshkey = &pages["vmk-sshkey.1"];
    assert!(sshkey.contains("see \\fBvmk\\-ssh\\fR(1)"), "{sshkey}");
    let clone = &pages["vmk-clone.1"];
    assert!(
        !clone.contains(".SS \"vmk clone clone\""),
        "the default command is the page itself"
    );
}

#[test]
fn the_config_page_documents_every_key() {
    let page = &pages()["vmk-config.5"];
    for key in vmk_common::config::keys() {
        let name = key.name.replace('-', "\\-");
        assert!(
            page.contains(&format!(".TP\n\\fB{name}\\fR\n")),
            "{} missing",
            key.name
        );
    }
}
