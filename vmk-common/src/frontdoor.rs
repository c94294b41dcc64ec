//! The `vmk` front door: finds `vmk-<command>` (own directory first, then PATH) and execs it.
//!
//! Modelled on cargo's external subcommands. The names vmk ships with (`vmk info`, `vmk dsnap`,
//! `vmk snap run`…) come from the table in [`crate::commands`]; any other name runs
//! `vmk-<name>`, so plugins work. Global options given before the command are passed on
//! through the environment (`VMK_OPT_*`, see [`crate::cli`]) so that plugins see them
//! without parsing them, and so is the name typed (`VMK_COMMAND`), for usage lines.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::commands::{self, CommandSpec, COMMANDS, TOOLS};

/// Where to look for `vmk-<name>`: the front door's own directory, then PATH.
#[derive(Debug, Clone)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The directory of `own_exe` (when known) followed by the directories of `path`.
    pub fn new(own_exe: Option<&Path>, path: Option<&OsStr>) -> Self {
        let mut dirs: Vec<PathBuf> = own_exe
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        if let Some(path) = path {
            dirs.extend(std::env::split_paths(path).filter(|d| !d.as_os_str().is_empty()));
        }
        SearchPath { dirs }
    }

    /// The search path of the running process.
    pub fn from_env() -> Self {
        let exe = std::env::current_exe().ok();
        Self::new(exe.as_deref(), std::env::var_os("PATH").as_deref())
    }

    /// The first executable `vmk-<name>`.
    pub fn find_tool(&self, name: &str) -> Option<PathBuf> {
        let file = format!("vmk-{name}");
        self.dirs
            .iter()
            .map(|d| d.join(&file))
            .find(|p| is_executable(p))
    }

    /// Every `vmk-*` command found, by name, with the path that wins (the first one).
    pub fn all_tools(&self) -> BTreeMap<String, PathBuf> {
        let mut found = BTreeMap::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str().and_then(|n| n.strip_prefix("vmk-")) else {
                    continue;
                };
                if name.is_empty() || name.contains('.') || !is_executable(&entry.path()) {
                    continue;
                }
                found
                    .entry(name.to_string())
                    .or_insert_with(|| entry.path());
            }
        }
        found
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What `vmk <command> ARGS…` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The executable to exec.
    pub program: PathBuf,
    /// Its arguments (the table's prefix, then the user's).
    pub args: Vec<OsString>,
}

/// Resolves a command name: the table first, then `vmk-<name>` on the search path.
pub fn resolve(search: &SearchPath, command: &str, args: &[OsString]) -> Option<Resolved> {
    let (tool, prefix): (&str, &[&str]) = match commands::find(command) {
        Some(c) => (c.tool, c.prefix),
        None => (command, &[]),
    };
    if tool.is_empty() || tool.contains('/') {
        return None;
    }
    let program = search.find_tool(tool)?;
    let args = prefix
        .iter()
        .map(OsString::from)
        .chain(args.iter().cloned())
        .collect();
    Some(Resolved { program, args })
}

/// What `vmk help` is, in the listing.
pub const HELP_ABOUT: &str = "List the commands, or show one command's help: help NAME";

/// Every name `vmk` answers to: the table's, `help`, and plugins found.
pub fn known_names(search: &SearchPath) -> Vec<String> {
    let mut names: Vec<String> = COMMANDS
        .iter()
        .flat_map(CommandSpec::names)
        .map(str::to_string)
        .collect();
    names.extend(plugins(search).into_keys());
    names.push("help".into());
    names.sort();
    names.dedup();
    names
}

/// The `vmk-*` programs found that are not tools of vmk, by name.
pub fn plugins(search: &SearchPath) -> BTreeMap<String, PathBuf> {
    let mut found = search.all_tools();
    found.retain(|name, _| commands::find_tool(name).is_none() && commands::find(name).is_none());
    found
}

/// The known name closest to a mistyped one, if any is close enough.
pub fn closest<'a>(typed: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if typed.len() > 64 {
        return None; // no command name is that long, and the distance would cost quadratic time
    }
    names
        .into_iter()
        .map(|n| (strsim::damerau_levenshtein(typed, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3) && *d < n.len())
        .min()
        .map(|(_, n)| n)
}

/// The listing printed by `vmk help` and `vmk --list`: every name once, under its tool;
/// with `show_paths`, where each tool and plugin was found.
pub fn listing(search: &SearchPath, show_paths: bool) -> String {
    use std::fmt::Write;
    let mut out = String::from("Commands (`vmk help NAME` shows one):\n");
    for tool in TOOLS {
        let program = format!("vmk-{}", tool.name);
        let _ = write!(out, "\n{} ({program}):", tool.heading);
        if show_paths {
            let path = search
                .find_tool(tool.name)
                .map_or("(not found)".into(), |p| p.display().to_string());
            let _ = write!(out, "  [{path}]");
        }
        out.push('\n');
        for c in commands::of_tool(tool.name) {
            let names = c.names().collect::<Vec<_>>().join(", ");
            let _ = writeln!(out, "    {names:<18} {}", c.about);
        }
    }
    let _ = writeln!(out, "\nFront door (vmk):\n    {:<18} {HELP_ABOUT}", "help");
    let plugins = plugins(search);
    if !plugins.is_empty() {
        out.push_str("\nPlugins (vmk-* on PATH):\n");
        for (name, path) in plugins {
            let _ = write!(out, "    {name}");
            if show_paths {
                let _ = write!(out, "  [{}]", path.display());
            }
            out.push('\n');
        }
    }
    out
}

/// The front door's own command line: global options, then a command and its arguments.
#[derive(clap::Parser, Debug)]
#[command(
    name = "vmk",
    version,
    about = "A small, fast frontend to QEMU/KVM: one directory is one VM",
    long_about = "A small, fast frontend to QEMU/KVM: one directory is one VM.\n\n\
        `vmk COMMAND ARGS…` runs the tool COMMAND belongs to (`vmk dsnap` runs \
        `vmk-snap --base dsnap`), from vmk's own directory or PATH; any other name runs \
        `vmk-COMMAND`, so your own `vmk-foo` on PATH works as `vmk foo`. Run `vmk --list` \
        for all commands.",
    allow_external_subcommands = true,
    disable_help_subcommand = true,
    after_help = "Run `vmk --list` for all commands, `vmk help COMMAND` for one."
)]
pub struct FrontDoorArgs {
    /// Use FILE as the VM's config instead of ./vm-config
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Dry run: print what would be run, run nothing
    #[arg(short = 'D', long = "dry-run")]
    pub dry_run: bool,

    /// More logging (-v info, -vv debug, -vvv trace); with --list: show paths
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Debug logging, as -vv
    #[arg(short = 'x', long = "debug")]
    pub debug: bool,

    /// List the commands, and the plugins found on PATH (-v: where each was found)
    #[arg(long = "list")]
    pub list: bool,

    #[command(subcommand)]
    pub command: Option<External>,
}

/// The command to run and its arguments, taken as they are.
#[derive(clap::Subcommand, Debug)]
pub enum External {
    /// COMMAND ARGS…
    #[command(external_subcommand)]
    Run(Vec<OsString>),
}

impl FrontDoorArgs {
    /// The log level `-v`/`-x` ask for ([`crate::cli::verbosity_of`]).
    pub fn verbosity(&self) -> u8 {
        crate::cli::verbosity_of(self.verbose, self.debug)
    }

    /// The environment the front door passes to the tool it runs for `command`.
    pub fn environment(
        &self,
        own_exe: Option<&Path>,
        command: &str,
    ) -> Vec<(&'static str, OsString)> {
        let mut env = vec![(crate::cli::ENV_COMMAND, OsString::from(command))];
        if let Some(exe) = own_exe {
            env.push((crate::cli::ENV_VMK, exe.as_os_str().to_owned()));
        }
        if let Some(config) = &self.config {
            let abs = std::path::absolute(config).unwrap_or_else(|_| config.clone());
            env.push((crate::cli::ENV_CONFIG, abs.into_os_string()));
        }
        if self.dry_run {
            env.push((crate::cli::ENV_DRY_RUN, "1".into()));
        }
        let verbosity = self.verbosity();
        if verbosity > 0 {
            env.push((crate::cli::ENV_VERBOSE, verbosity.to_string().into()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_suggests_run_for_rnu() {
        let names = ["run", "runin", "snap", "ssh", "stop"];
        assert_eq!(closest("rnu", names), Some("run"));
        assert_eq!(closest("snpa", names), Some("snap"));
        assert_eq!(closest("xyzzy-frobnicate", names), None);
    }

    #[test]
    fn listing_shows_every_name_once() {
        let empty = SearchPath::new(None, None);
        let listing = listing(&empty, false);
        let mut shown: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("    "))
            .flat_map(|l| l.split("  ").next().unwrap_or_default().split(", "))
            .collect();
        shown.sort();
        let mut expected = known_names(&empty);
        expected.sort();
        assert_eq!(shown, expected, "{listing}");
    }
}
