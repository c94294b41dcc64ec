//! The `vmk` front door: finds `vmk-<command>` (own directory first, then PATH) and execs it.
//!
//! Modelled on cargo's external subcommands. Commands that belong to a tool but have a
//! short name of their own (`vmk info`, `vmk dsnap`, `vmk ssh`…) go through [`ALIASES`].
//! Global options given before the command are passed on through the environment
//! (`VMK_OPT_*`, see [`crate::cli`]) so that plugins see them without parsing them.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The tools that ship with vmk, with what they are for.
pub const BUILTINS: &[(&str, &str)] = &[
    ("run", "run VMs: start, stop, consoles, status (vmk-run)"),
    (
        "snap",
        "the throwaway snapshot VM: snap run|runin|info|dsnap|kill (vmk-snap)",
    ),
    ("clone", "clone a VM directory (vmk-clone)"),
    ("mount", "mount, change and prepare disk images (vmk-mount)"),
    ("sshkey", "ssh keys and ssh into the VM (vmk-sshkey)"),
    (
        "ayinstall",
        "unattended installs: autoyast, cloud-init, bootstrap (vmk-ayinstall)",
    ),
    ("completions", "shell completions for vmk (vmk-completions)"),
];

/// One alias: `vmk <name> ARGS…` runs `vmk-<tool> <args…> ARGS…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// What the user types after `vmk`.
    pub name: &'static str,
    /// The tool, without the `vmk-` prefix.
    pub tool: &'static str,
    /// Arguments put before the user's arguments.
    pub args: &'static [&'static str],
}

const fn alias(name: &'static str, tool: &'static str, args: &'static [&'static str]) -> Alias {
    Alias { name, tool, args }
}

/// Every command of SPEC §4 that is not a tool name of its own.
pub const ALIASES: &[Alias] = &[
    alias("run", "run", &["run"]),
    alias("runin", "run", &["runin"]),
    alias("info", "run", &["info"]),
    alias("status", "run", &["info"]),
    alias("isrunning", "run", &["isrunning"]),
    alias("kill", "run", &["kill"]),
    alias("stop", "run", &["stop"]),
    alias("telnet", "run", &["console"]),
    alias("console", "run", &["console"]),
    alias("vnc", "run", &["vnc"]),
    alias("ps", "run", &["ps"]),
    alias("checksetup", "run", &["checksetup"]),
    alias("fixme", "run", &["fixme"]),
    alias("cpfile", "snap", &["cpfile"]),
    alias("fsnap", "snap", &["fsnap"]),
    alias("dsnap", "snap", &["--base", "dsnap"]),
    alias("newconfig", "clone", &["newconfig"]),
    alias("set", "clone", &["set"]),
    alias("mount", "mount", &["mount"]),
    alias("umount", "mount", &["umount"]),
    alias("putfile", "mount", &["putfile"]),
    alias("chroot", "mount", &["chroot"]),
    alias("zypper", "mount", &["zypper"]),
    alias("zypp", "mount", &["zypper"]),
    alias("fixnet", "mount", &["fixnet"]),
    alias("prep", "mount", &["prep"]),
    alias("mkdisk0", "mount", &["mkdisk0"]),
    alias("mkdisks", "mount", &["mkdisks"]),
    alias("sshkeygen", "sshkey", &["sshkeygen"]),
    alias("sshkeyput", "sshkey", &["sshkeyput"]),
    alias("scpkeyput", "sshkey", &["scpkeyput"]),
    alias("ssh", "sshkey", &["ssh"]),
    alias("waitssh", "sshkey", &["waitssh"]),
    alias("sshwait", "sshkey", &["waitssh"]),
    alias("scp", "sshkey", &["scp"]),
    alias("sshfs", "sshkey", &["sshfs"]),
    alias("qinstall", "ayinstall", &["qinstall"]),
    alias("cloudinit", "ayinstall", &["cloudinit"]),
    alias("bootstrap", "ayinstall", &["bootstrap"]),
];

/// Looks up an alias by the name the user typed.
pub fn find_alias(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.name == name)
}

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
    /// Its arguments (alias prefix, then the user's).
    pub args: Vec<OsString>,
}

/// Resolves a command name: aliases first, then `vmk-<name>` on the search path.
pub fn resolve(search: &SearchPath, command: &str, args: &[OsString]) -> Option<Resolved> {
    let (tool, prefix): (&str, &[&str]) = match find_alias(command) {
        Some(a) => (a.tool, a.args),
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

/// Every name `vmk` answers to: built-ins, aliases and plugins found.
pub fn known_names(search: &SearchPath) -> Vec<String> {
    let mut names: Vec<String> = BUILTINS.iter().map(|(n, _)| n.to_string()).collect();
    names.extend(ALIASES.iter().map(|a| a.name.to_string()));
    names.extend(search.all_tools().into_keys());
    names.push("help".into());
    names.sort();
    names.dedup();
    names
}

/// The known name closest to a mistyped one, if any is close enough.
pub fn closest<'a>(typed: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .map(|n| (strsim::damerau_levenshtein(typed, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3) && *d < n.len())
        .min()
        .map(|(_, n)| n)
}

/// The listing printed by `vmk help` and `vmk --list`.
pub fn listing(search: &SearchPath, show_paths: bool) -> String {
    use std::fmt::Write;
    let tools = search.all_tools();
    let mut out = String::from("Tools:\n");
    for (name, what) in BUILTINS {
        let _ = write!(out, "    {name:<12} {what}");
        if show_paths {
            let path = tools
                .get(*name)
                .map_or("(not found)".into(), |p| p.display().to_string());
            let _ = write!(out, "  [{path}]");
        }
        out.push('\n');
    }
    out.push_str("\nCommands (aliases):\n");
    for a in ALIASES {
        let target = std::iter::once(format!("vmk-{}", a.tool))
            .chain(a.args.iter().map(|s| s.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(out, "    {:<12} {target}", a.name);
    }
    let plugins: Vec<_> = tools
        .iter()
        .filter(|(n, _)| !BUILTINS.iter().any(|(b, _)| b == n))
        .collect();
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
    fn every_alias_targets_a_builtin_tool() {
        for a in ALIASES {
            assert!(
                BUILTINS.iter().any(|(b, _)| *b == a.tool),
                "alias {} targets unknown tool {}",
                a.name,
                a.tool
            );
        }
    }

    #[test]
    fn aliases_are_unique() {
        let mut names: Vec<_> = ALIASES.iter().map(|a| a.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}

/// The front door's own command line: global options, then a command and its arguments.
#[derive(clap::Parser, Debug)]
#[command(
    name = "vmk",
    version,
    about = "A small, fast frontend to QEMU/KVM: one directory is one VM",
    long_about = "A small, fast frontend to QEMU/KVM: one directory is one VM.\n\n\
        `vmk COMMAND ARGS…` runs `vmk-COMMAND ARGS…` from vmk's own directory or PATH, \
        so your own `vmk-foo` on PATH works as `vmk foo`. Run `vmk --list` for all commands.",
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

    /// List built-in tools, aliases and plugins found on PATH
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
    /// The environment the front door passes to the tool it runs.
    pub fn environment(&self, own_exe: Option<&Path>) -> Vec<(&'static str, OsString)> {
        let mut env = Vec::new();
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
        let verbosity = if self.debug {
            self.verbose.max(2)
        } else {
            self.verbose
        };
        if verbosity > 0 {
            env.push((crate::cli::ENV_VERBOSE, verbosity.to_string().into()));
        }
        env
    }
}
