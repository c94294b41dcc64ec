//! The one table of commands: every name a user types after `vmk`, and what it runs.
//!
//! The front door resolves names with it, `vmk --list` and `vmk help` print it, every tool's
//! usage lines follow it ([`crate::cli`] names a command as it was typed), and vmk-docgen
//! makes the completions and man pages from it and the tools' clap definitions. So none of
//! them can disagree with another. Adding a command means adding a row here.
//!
//! Decisions:
//! - `vmk run` and `vmk mount` are the `run` and `mount` commands, not the tools `vmk-run`
//!   and `vmk-mount`: every command of those tools has a name of its own.
//! - `vmk snap` and `vmk sshkey` are groups: a command of the tool follows (`vmk snap run`).
//! - `vmk clone` and `vmk ayinstall` run their tool without a prefix: the tool's default
//!   command is `clone` (resp. `ayinstall`), its other commands follow the name as nested
//!   commands do after `vmk dsnap` (`vmk clone newconfig`, `vmk ayinstall profile`).
//! - `help` is the front door's own and not in the table.

use clap::Command;

/// A row of the table: one command as the user types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// What the user types after `vmk`.
    pub name: &'static str,
    /// Other names for the same command (`status` for `info`).
    pub also: &'static [&'static str],
    /// The tool that runs it: the binary `vmk-<tool>`.
    pub tool: &'static str,
    /// Arguments put before the user's (`vmk dsnap ARGS` runs `vmk-snap --base dsnap ARGS`).
    pub prefix: &'static [&'static str],
    /// One line: what it does (help, `--list`, man page and completions show it).
    pub about: &'static str,
    /// A command, or a group whose commands follow.
    pub kind: Kind,
}

/// Whether a name is a command or a group of commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `vmk NAME [OPTIONS] [ARGS]` (it may have commands of its own: `vmk dsnap list`).
    Command,
    /// `vmk NAME COMMAND …`: a command of the tool must follow (`vmk snap run`).
    Group,
}

impl CommandSpec {
    /// Every name this command answers to: its name, then the others.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.name).chain(self.also.iter().copied())
    }

    /// The program it runs: `vmk-<tool>`.
    pub fn program(&self) -> String {
        format!("vmk-{}", self.tool)
    }
}

/// A tool that ships with vmk, with the heading its commands are listed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSpec {
    /// The tool, without `vmk-`.
    pub name: &'static str,
    /// What its commands are about (a heading in `vmk --list` and `vmk(1)`).
    pub heading: &'static str,
}

/// The tools that ship with vmk, in listing order.
pub const TOOLS: &[ToolSpec] = &[
    tool("run", "Running"),
    tool("snap", "Snapshots"),
    tool("clone", "Cloning and config"),
    tool("mount", "Images"),
    tool("sshkey", "SSH"),
    tool("ayinstall", "Installing"),
    tool("libvirt", "libvirt"),
    tool("completions", "Shell completions"),
];

const fn tool(name: &'static str, heading: &'static str) -> ToolSpec {
    ToolSpec { name, heading }
}

/// `vmk NAME` runs `vmk-TOOL PREFIX…`.
const fn cmd(
    name: &'static str,
    tool: &'static str,
    prefix: &'static [&'static str],
    about: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        also: &[],
        tool,
        prefix,
        about,
        kind: Kind::Command,
    }
}

impl CommandSpec {
    const fn also(self, also: &'static [&'static str]) -> Self {
        CommandSpec { also, ..self }
    }

    const fn group(self) -> Self {
        CommandSpec {
            kind: Kind::Group,
            ..self
        }
    }
}

/// Every command, grouped by tool in the order of [`TOOLS`].
pub const COMMANDS: &[CommandSpec] = &[
    cmd(
        "run",
        "run",
        &["run"],
        "Start the VM in the background: serial console on a private socket, VNC, QMP, pidfile",
    ),
    cmd(
        "runin",
        "run",
        &["runin"],
        "Start the VM in the foreground with its serial console on this terminal (Ctrl-A x quits)",
    ),
    cmd(
        "info",
        "run",
        &["info"],
        "Show the config values that matter, derived ports and MAC, and whether the VM runs",
    )
    .also(&["status"]),
    cmd(
        "isrunning",
        "run",
        &["isrunning"],
        "Exit 0 when the VM runs, 1 when not; print nothing",
    ),
    cmd(
        "stop",
        "run",
        &["stop"],
        "Power the VM off gracefully (ACPI over QMP), kill it after the timeout",
    ),
    cmd(
        "kill",
        "run",
        &["kill"],
        "Kill the VM now: SIGINT, SIGTERM, SIGKILL a second apart, only to this VM's qemu",
    ),
    cmd(
        "console",
        "run",
        &["console"],
        "Attach the terminal to the VM's serial console (Ctrl-] detaches)",
    )
    .also(&["telnet"]),
    cmd("vnc", "run", &["vnc"], "Open a VNC viewer on the VM's display"),
    cmd("ps", "run", &["ps"], "List this user's running VMs"),
    cmd(
        "checksetup",
        "run",
        &["checksetup"],
        "Check what this machine offers for this VM (one line each: ok, warn, fail)",
    ),
    cmd(
        "fixme",
        "run",
        &["fixme"],
        "Make the bridge helper setuid root and allow the bridge in /etc/qemu/bridge.conf (root)",
    ),
    cmd(
        "snap",
        "snap",
        &[],
        "The throwaway VM on snap-<disk0>, a reflink copy of disk0: snap run|runin|info|stop|kill|…",
    )
    .group(),
    cmd(
        "dsnap",
        "snap",
        &["--base", "dsnap"],
        "Snapshot disk0 to <disk0>-YYYYMMDD-HHMMSS by reflink; list, revert, rm snapshots",
    ),
    cmd(
        "fsnap",
        "snap",
        &["fsnap"],
        "Snapshot any file to FILE-YYYYMMDD-HHMMSS beside it; print the snapshot's path",
    ),
    cmd(
        "cpfile",
        "snap",
        &["cpfile"],
        "Copy a file by reflink, keeping its attributes and NOCOW (DST may be a directory)",
    ),
    cmd(
        "clone",
        "clone",
        &[],
        "Clone this VM: OUTDIR/NAME with its vm-config and reflink copies of its disks",
    ),
    cmd(
        "newconfig",
        "clone",
        &["newconfig"],
        "Print a commented minimal vm-config to stdout",
    ),
    cmd(
        "set",
        "clone",
        &["set"],
        "Change one key of ./vm-config (or -c FILE), keeping every other byte",
    ),
    cmd(
        "editme",
        "clone",
        &["editme"],
        "Edit ./vm-config (or -c FILE) in $VISUAL or $EDITOR, then check it (a problem is named with file:line)",
    ),
    cmd(
        "mount",
        "mount",
        &["mount"],
        "Mount disk0 (or IMAGE) at ./mnt-disk0 (or DIR), with the filesystems of its fstab",
    ),
    cmd(
        "umount",
        "mount",
        &["umount"],
        "Undo `vmk mount`: unmount, detach the loop device, stop the export daemon",
    ),
    cmd(
        "putfile",
        "mount",
        &["putfile"],
        "Copy files and directories into the stopped image's /root/vm",
    ),
    cmd(
        "chroot",
        "mount",
        &["chroot"],
        "Open a shell (or run CMD) chrooted into the image; everything is undone on exit",
    ),
    cmd(
        "zypper",
        "mount",
        &["zypper"],
        "Run zypper --root on the mounted image",
    )
    .also(&["zypp"]),
    cmd(
        "fixnet",
        "mount",
        &["fixnet"],
        "Remove MAC-bound persistent network rules from the image",
    ),
    cmd(
        "prep",
        "mount",
        &["prep"],
        "Run virt-sysprep on the stopped disk0 (extra arguments go to virt-sysprep)",
    ),
    cmd(
        "mkdisk0",
        "mount",
        &["mkdisk0"],
        "Create disk0 as a NOCOW qcow2 file of VMK_INST_DISK0 size (an existing disk0 is left as it is)",
    ),
    cmd(
        "mkdisks",
        "mount",
        &["mkdisks"],
        "Create the missing extra disks disk1…disk6 as NOCOW qcow2 files of VMK_INST_DISK size (existing ones are left)",
    ),
    cmd(
        "sshkey",
        "sshkey",
        &[],
        "The ssh commands as one group: sshkey sshkeygen|ssh|waitssh|scp|… (each is a command too)",
    )
    .group(),
    cmd(
        "sshkeygen",
        "sshkey",
        &["sshkeygen"],
        "Create this VM's key pair vm-key/vm-key.pub (refuses to overwrite)",
    ),
    cmd(
        "sshkeyput",
        "sshkey",
        &["sshkeyput"],
        "Put vm-key.pub into the stopped image's /root/.ssh/authorized_keys (mounting it)",
    ),
    cmd(
        "scpkeyput",
        "sshkey",
        &["scpkeyput"],
        "Append vm-key.pub to root's authorized_keys in the running VM (ssh asks for the password)",
    ),
    cmd(
        "ssh",
        "sshkey",
        &["ssh"],
        "ssh into the VM as root; with a command, run it and pass its exit status through",
    ),
    cmd(
        "waitssh",
        "sshkey",
        &["waitssh"],
        "Wait until ssh into the VM works, then run the command and pass its status (none: a shell on a terminal)",
    )
    .also(&["sshwait"]),
    cmd(
        "scp",
        "sshkey",
        &["scp"],
        "Copy files into the VM: scp FILES… GUESTPATH",
    ),
    cmd(
        "sshfs",
        "sshkey",
        &["sshfs"],
        "Mount the VM's / (or GUESTPATH) over sshfs at DIR (default ./mnt-ssh)",
    ),
    cmd(
        "ayinstall",
        "ayinstall",
        &[],
        "Install from VMK_ISO unattended (AutoYaST); ayinstall profile|mkiso|… make the media",
    ),
    cmd(
        "qinstall",
        "ayinstall",
        &["qinstall"],
        "Install from VMK_ISO interactively (installer on VNC and the serial console)",
    ),
    cmd(
        "cloudinit",
        "ayinstall",
        &["cloudinit"],
        "Make a cloud-init NoCloud seed ISO (cidata) with the VM's key and hostname",
    ),
    cmd(
        "bootstrap",
        "ayinstall",
        &["bootstrap"],
        "Create a new VM directory with a distribution installed from packages (debootstrap)",
    ),
    cmd(
        "libvirt",
        "libvirt",
        &[],
        "Hand this VM to libvirt with vmk's hardware: libvirt xml|define|start|stop|undefine",
    )
    .group(),
    cmd(
        "completions",
        "completions",
        &[],
        "Print shell completions for vmk: completions bash|zsh|fish",
    ),
];

/// The command called `name` (by its name or another of its names).
pub fn find(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.names().any(|n| n == name))
}

/// The tool called `name` (without `vmk-`), when it ships with vmk.
pub fn find_tool(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The commands of one tool, in table order.
pub fn of_tool(tool: &str) -> impl Iterator<Item = &'static CommandSpec> + '_ {
    COMMANDS.iter().filter(move |c| c.tool == tool)
}

/// The subcommands a prefix selects in a tool's clap command: `["dsnap"]` for
/// `--base dsnap`, nothing for a prefix without commands (the tool itself).
///
/// Words that are no subcommand of the command reached so far (options) are passed over.
pub fn selected_path(tool: &Command, prefix: &[&str]) -> Vec<String> {
    let mut path = Vec::new();
    let mut cmd = tool;
    for word in prefix {
        if let Some(sub) = cmd.find_subcommand(word) {
            path.push(sub.get_name().to_string());
            cmd = sub;
        }
    }
    path
}

/// A tool's clap command, named as the user typed it after `vmk`: usage lines and errors
/// say `vmk TYPED …` (`vmk status`, `vmk snap run`), and the help shows the table's about.
///
/// `typed` is one of `spec`'s names; `tool` is the clap command of `vmk-<spec.tool>`. A
/// selected subcommand whose name differs from `typed` (`info` for `status`) is renamed
/// for display, so the result only serves help and errors: parse with the original.
pub fn as_typed(tool: Command, spec: &CommandSpec, typed: &str) -> Command {
    match selected_path(&tool, spec.prefix).as_slice() {
        [] => tool.bin_name(format!("vmk {typed}")).about(spec.about),
        [sub] => tool
            .bin_name("vmk")
            .mut_subcommand(sub, |s| rename(s.about(spec.about), typed)),
        _ => tool, // the table selects one level at most (vmk-docgen tests it)
    }
}

/// `cmd` called `name`, still answering to its own name (hidden).
fn rename(cmd: Command, name: &str) -> Command {
    if cmd.get_name() == name {
        return cmd;
    }
    let own = cmd.get_name().to_string();
    cmd.name(name.to_string()).alias(None).alias(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_unique() {
        let mut names: Vec<&str> = COMMANDS.iter().flat_map(CommandSpec::names).collect();
        names.push("help");
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a name is in the table twice");
    }

    #[test]
    fn every_command_belongs_to_a_tool_and_is_listed_with_it() {
        for c in COMMANDS {
            assert!(
                find_tool(c.tool).is_some(),
                "{} runs unknown tool {}",
                c.name,
                c.tool
            );
            assert!(
                !c.about.is_empty() && !c.about.ends_with('.'),
                "about of {}",
                c.name
            );
        }
        let order: Vec<&str> = COMMANDS.iter().map(|c| c.tool).collect();
        let mut grouped = order.clone();
        grouped.dedup();
        let tools: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
        assert_eq!(
            grouped, tools,
            "rows are grouped by tool in the order of TOOLS"
        );
    }

    #[test]
    fn names_that_worked_before_the_table_keep_their_meaning() {
        for (name, tool, prefix) in [
            ("run", "run", &["run"][..]),
            ("status", "run", &["info"]),
            ("telnet", "run", &["console"]),
            ("dsnap", "snap", &["--base", "dsnap"]),
            ("snap", "snap", &[]),
            ("clone", "clone", &[]),
            ("mount", "mount", &["mount"]),
            ("zypp", "mount", &["zypper"]),
            ("sshkey", "sshkey", &[]),
            ("sshwait", "sshkey", &["waitssh"]),
            ("ayinstall", "ayinstall", &[]),
            ("completions", "completions", &[]),
        ] {
            let c = find(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!((c.tool, c.prefix), (tool, prefix), "{name}");
        }
    }

    fn fake_tool() -> Command {
        Command::new("vmk-run")
            .subcommand(Command::new("run").about("tool's about"))
            .subcommand(Command::new("info").visible_alias("status"))
    }

    fn usage_of(cmd: Command, args: &[&str]) -> String {
        let err = cmd
            .try_get_matches_from(args.iter().chain(&["--help"]))
            .unwrap_err();
        err.to_string()
    }

    #[test]
    fn typed_names_show_in_usage_lines() {
        let run = find("run").unwrap();
        let help = usage_of(as_typed(fake_tool(), run, "run"), &["vmk-run", "run"]);
        assert!(help.contains("Usage: vmk run"), "{help}");
        assert!(help.contains(run.about), "{help}");
        let info = find("status").unwrap();
        let help = usage_of(as_typed(fake_tool(), info, "status"), &["vmk-run", "info"]);
        assert!(help.contains("Usage: vmk status"), "{help}");
        let group = CommandSpec {
            prefix: &[],
            ..*run
        };
        let help = usage_of(as_typed(fake_tool(), &group, "run"), &["vmk-run", "info"]);
        assert!(help.contains("Usage: vmk run info"), "{help}");
    }

    #[test]
    fn options_in_a_prefix_are_passed_over() {
        let tool = Command::new("vmk-snap")
            .arg(clap::Arg::new("base").long("base").num_args(0))
            .subcommand(Command::new("dsnap"));
        assert_eq!(selected_path(&tool, &["--base", "dsnap"]), ["dsnap"]);
        assert!(selected_path(&tool, &[]).is_empty());
    }
}
