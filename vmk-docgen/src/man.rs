//! The man pages: vmk(1), one vmk-NAME(1) for every name of the command table, and
//! vmk-config(5) from the key table.
//!
//! Synopses and options come from clap (through [`crate::typed_command`], so they read
//! `vmk dsnap …` as typed); what clap does not know (the environment, the files a command
//! touches, what its exit status means) is in the tables of this module, one row per name.
//!
//! Decision: a group's commands (`vmk snap run`, `vmk ayinstall profile`) are sections of
//! the group's page, as git-remote(1) describes `git remote add`, not pages of their own:
//! one page holds everything about `vmk snap`, and no page has a name nobody types. A
//! command that also has a name of its own (`vmk sshkey ssh` is `vmk ssh`) points there.
//! Other names of a command (`vmk status`) are `.so` links to its page.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_mangen::Man;
use vmk_common::commands::{self, CommandSpec, COMMANDS, TOOLS};
use vmk_common::config::keys;
use vmk_common::config::raw::quote;
use vmk_common::config::Quoting;
use vmk_common::frontdoor::{self, FrontDoorArgs};

/// What a command reads or writes besides its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uses {
    /// The config files and `VMK_*` variables.
    Config,
    /// The pidfile, console log and QMP socket of the VM booting disk0.
    Runtime,
    /// The records `vmk run` leaves for `vmk ps`.
    Registry,
    /// The VM's ssh key pair.
    Key,
    /// The snapshot VM's image and runtime files.
    SnapVm,
    /// Snapshots of disk0 beside it.
    Snapshots,
    /// Snapshots of any file beside it.
    FileSnapshots,
    /// The default mount point.
    MountDir,
    /// autoinst.xml and the AutoYaST snippets.
    Autoinst,
    /// The cloud-init seed image.
    Seed,
    /// The new VM directory and the cache of installed systems.
    Bootstrap,
    /// The records `vmk libvirt define` leaves for `vmk info`, `vmk ps` and `vmk run`.
    Libvirt,
}

use Uses::*;

/// What each name of the table uses (a test checks that every name has a row).
const USES: &[(&str, &[Uses])] = &[
    ("run", &[Config, Runtime, Registry, Key, Libvirt]),
    ("runin", &[Config, Runtime, Key]),
    ("info", &[Config, Runtime, Key, Libvirt]),
    ("isrunning", &[Config, Runtime]),
    ("stop", &[Config, Runtime]),
    ("kill", &[Config, Runtime]),
    ("console", &[Config, Runtime]),
    ("vnc", &[Config, Runtime]),
    ("ps", &[Registry, Libvirt]),
    ("checksetup", &[Config]),
    ("fixme", &[Config]),
    ("snap", &[Config, SnapVm, Snapshots, Key]),
    ("dsnap", &[Config, Snapshots]),
    ("fsnap", &[FileSnapshots]),
    ("cpfile", &[]),
    ("clone", &[Config, Key]),
    ("newconfig", &[]),
    ("set", &[Config]),
    ("editme", &[Config]),
    ("mount", &[Config, MountDir]),
    ("umount", &[Config, MountDir]),
    ("putfile", &[Config]),
    ("chroot", &[Config]),
    ("zypper", &[Config, MountDir]),
    ("fixnet", &[Config]),
    ("prep", &[Config]),
    ("mkdisk0", &[Config]),
    ("mkdisks", &[Config]),
    ("sshkey", &[Config, Key]),
    ("sshkeygen", &[Config, Key]),
    ("sshkeyput", &[Config, Key]),
    ("scpkeyput", &[Config, Key]),
    ("ssh", &[Config, Key]),
    ("waitssh", &[Config, Key]),
    ("scp", &[Config, Key]),
    ("sshfs", &[Config, Key]),
    ("ayinstall", &[Config, Runtime, Autoinst]),
    ("qinstall", &[Config, Runtime]),
    ("cloudinit", &[Config, Key, Seed]),
    ("bootstrap", &[Bootstrap]),
    ("libvirt", &[Config, Runtime, Libvirt]),
    ("completions", &[]),
];

const OK: (&str, &str) = ("0", "Success.");
const FAILED: (&str, &str) = ("1", "Failure (the error is on stderr).");
const USAGE: (&str, &str) = (
    "2",
    "A usage or configuration error: a bad option, an unknown VMK_ key, a value of the wrong kind.",
);
const GUEST: (&str, &str) = (
    "other",
    "With a command: its exit status in the guest, passed through (255 when ssh fails).",
);

/// Exit statuses that differ from [`OK`], [`FAILED`], [`USAGE`].
const EXIT: &[(&str, &[(&str, &str)])] = &[
    (
        "isrunning",
        &[("0", "The VM runs."), ("1", "The VM does not run."), USAGE],
    ),
    (
        "snap",
        &[
            OK,
            (
                "1",
                "Failure; for vmk snap isrunning: the snapshot VM does not run.",
            ),
            USAGE,
        ],
    ),
    (
        "checksetup",
        &[
            ("0", "Every check passed or warned."),
            ("1", "A check failed."),
            USAGE,
        ],
    ),
    ("ssh", &[OK, FAILED, USAGE, GUEST]),
    ("sshkey", &[OK, FAILED, USAGE, GUEST]),
    (
        "waitssh",
        &[
            OK,
            ("1", "Failure, or ssh did not answer before the timeout."),
            USAGE,
            GUEST,
        ],
    ),
    ("scp", &[USAGE, ("other", "The exit status of scp.")]),
    ("sshfs", &[USAGE, ("other", "The exit status of sshfs.")]),
    (
        "chroot",
        &[
            FAILED,
            USAGE,
            ("other", "The exit status of the shell or CMD."),
        ],
    ),
    (
        "zypper",
        &[FAILED, USAGE, ("other", "The exit status of zypper.")],
    ),
    (
        "prep",
        &[FAILED, USAGE, ("other", "The exit status of virt-sysprep.")],
    ),
    ("completions", &[OK, ("2", "An unknown shell.")]),
];

/// Whether `path` is a man page of the sections vmk writes (1 and 5).
pub fn is_page(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "1" || e == "5")
}

/// Every man page as `(file name, contents)`, sorted by file name.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut pages = vec![("vmk.1".to_string(), front_door_page()?)];
    for spec in COMMANDS {
        let page = command_page(spec).with_context(|| format!("man page of vmk {}", spec.name))?;
        pages.push((format!("vmk-{}.1", spec.name), page));
        for other in spec.also {
            let link = format!(".so man1/vmk-{}.1\n", spec.name);
            pages.push((format!("vmk-{other}.1"), link.into_bytes()));
        }
    }
    pages.push(("vmk-config.5".to_string(), config_page().into_bytes()));
    pages.sort();
    Ok(pages)
}

/// The `.TH` line and the definition of `\*(Aq` that clap_mangen's text uses.
fn title(page: &str, section: &str) -> String {
    format!(
        ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.TH {page} {section} \"\" \"vmk {}\" \"vmk manual\"\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Text escaped for roff: backslashes, dashes, apostrophes, and leading dots.
fn esc(text: &str) -> String {
    let text = text
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq");
    let text = text.replace("\n.", "\n\\&.");
    match text.starts_with('.') {
        true => format!("\\&{text}"),
        false => text,
    }
}

fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", esc(text))
}

/// A reference to another page: `\fBvmk\-ssh\fR(1)`.
fn page_ref(page: &str) -> String {
    match page.split_once('(') {
        Some((name, section)) => format!("{}({section}", bold(name)),
        None => bold(page),
    }
}

fn heading(out: &mut String, name: &str) {
    let _ = writeln!(out, ".SH \"{name}\"");
}

/// A tagged paragraph: `term` is roff already, `body` plain text.
fn item(out: &mut String, term: &str, body: &str) {
    let _ = writeln!(out, ".TP\n{term}\n{}", esc(body));
}

/// One section as clap_mangen renders it, without its `.SH` line (and the preamble).
fn clap_section(
    man: &Man,
    render: fn(&Man, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<String> {
    let mut buf = Vec::new();
    render(man, &mut buf)?;
    let text = String::from_utf8(buf).context("clap_mangen wrote something else than UTF-8")?;
    let body = text
        .lines()
        .skip_while(|l| !l.starts_with(".SH"))
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n");
    Ok(if body.is_empty() { body } else { body + "\n" })
}

/// The page of the front door: what it does, its options, and every command by tool.
fn front_door_page() -> Result<Vec<u8>> {
    let cmd = FrontDoorArgs::command();
    let man = Man::new(cmd.clone());
    let mut out = title("vmk", "1");
    heading(&mut out, "NAME");
    out.push_str(&format!("vmk \\- {}\n", esc(&about(&cmd))));
    heading(&mut out, "SYNOPSIS");
    out.push_str(
        "\\fBvmk\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]\n.br\n\
         \\fBvmk\\fR \\fB\\-\\-list\\fR\n.br\n\\fBvmk help\\fR [\\fICOMMAND\\fR...]\n",
    );
    heading(&mut out, "DESCRIPTION");
    out.push_str(&clap_section(&man, Man::render_description_section)?);
    out.push_str(&format!(
        ".PP\n{}\n",
        esc("The options given before COMMAND reach it through the environment (see ENVIRONMENT).")
    ));
    heading(&mut out, "OPTIONS");
    out.push_str(&clap_section(&man, Man::render_options_section)?);
    heading(&mut out, "COMMANDS");
    for tool in TOOLS {
        let _ = writeln!(out, ".SS \"{} (vmk\\-{})\"", tool.heading, tool.name);
        for spec in commands::of_tool(tool.name) {
            let names: Vec<String> = spec.names().map(|n| bold(&format!("vmk {n}"))).collect();
            let see = format!("{}. See vmk-{}(1).", spec.about, spec.name);
            item(&mut out, &names.join(", "), &see);
        }
    }
    out.push_str(".SS \"Front door\"\n");
    item(
        &mut out,
        &bold("vmk help"),
        &format!("{}.", frontdoor::HELP_ABOUT),
    );
    heading(&mut out, "ENVIRONMENT");
    environment(&mut out, &[Config], true);
    item(
        &mut out,
        &bold("PATH"),
        "Where vmk looks for vmk-NAME after its own directory.",
    );
    heading(&mut out, "FILES");
    files(&mut out, &[Config]);
    heading(&mut out, "EXIT STATUS");
    item(&mut out, "other", "The exit status of the command run.");
    item(
        &mut out,
        "1",
        "The command's program was found but could not be started.",
    );
    item(&mut out, "2", "No such command, or a usage error.");
    heading(&mut out, "SEE ALSO");
    out.push_str(&format!(
        "{}, and vmk\\-\\fINAME\\fR(1) for each NAME under COMMANDS.\n",
        page_ref("vmk-config(5)")
    ));
    Ok(out.into_bytes())
}

fn about(cmd: &Command) -> String {
    cmd.get_about().map(ToString::to_string).unwrap_or_default()
}

/// The page of `vmk NAME`.
fn command_page(spec: &CommandSpec) -> Result<Vec<u8>> {
    let mut cmd = crate::typed_command(spec)?.bin_name(format!("vmk {}", spec.name));
    cmd.build();
    let man = Man::new(cmd.clone());
    let uses = uses(spec.name)?;
    let mut out = title(&format!("vmk-{}", spec.name), "1");
    heading(&mut out, "NAME");
    let names: Vec<String> = spec.names().map(|n| format!("vmk-{n}")).collect();
    out.push_str(&format!(
        "{} \\- {}\n",
        esc(&names.join(", ")),
        esc(spec.about)
    ));
    heading(&mut out, "SYNOPSIS");
    out.push_str(&clap_section(&man, Man::render_synopsis_section)?);
    for other in spec.also {
        let man = Man::new(cmd.clone().bin_name(format!("vmk {other}")));
        out.push_str(".br\n");
        out.push_str(&clap_section(&man, Man::render_synopsis_section)?);
    }
    heading(&mut out, "DESCRIPTION");
    out.push_str(&clap_section(&man, Man::render_description_section)?);
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        out.push_str(&format!(".PP\n{}\n", esc(&after.to_string())));
    }
    if !spec.also.is_empty() {
        let others: Vec<String> = spec
            .also
            .iter()
            .map(|n| bold(&format!("vmk {n}")))
            .collect();
        out.push_str(&format!(".PP\nAlso called {}.\n", others.join(", ")));
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        heading(&mut out, "OPTIONS");
        out.push_str(&clap_section(&man, Man::render_options_section)?);
    }
    let mut see_also = vec!["vmk(1)".to_string()];
    if cmd.has_subcommands() {
        heading(&mut out, "COMMANDS");
        subcommand_sections(&mut out, spec, &cmd, &mut see_also)?;
    }
    heading(&mut out, "ENVIRONMENT");
    environment(&mut out, uses, spec.tool != "completions");
    if !uses.is_empty() {
        heading(&mut out, "FILES");
        files(&mut out, uses);
        if uses.contains(&Config) {
            see_also.push("vmk-config(5)".into());
        }
    }
    heading(&mut out, "EXIT STATUS");
    for (status, meaning) in exit_status(spec.name) {
        item(&mut out, status, meaning);
    }
    if let Some(group) = whole_tool(spec) {
        see_also.push(format!("vmk-{}(1)", group.name));
    }
    heading(&mut out, "SEE ALSO");
    let see_also: Vec<String> = see_also.iter().map(|p| page_ref(p)).collect();
    out.push_str(&format!("{}\n", see_also.join(", ")));
    Ok(out.into_bytes())
}

/// The name that runs this command's whole tool, which has it too (`vmk sshkey` has
/// `vmk ssh` as `vmk sshkey ssh`), if any.
fn whole_tool(spec: &CommandSpec) -> Option<&'static CommandSpec> {
    let [sub] = spec.prefix else {
        return None;
    };
    let group = COMMANDS
        .iter()
        .find(|c| c.tool == spec.tool && c.prefix.is_empty())?;
    let tool = crate::tool_command(spec.tool).ok()?;
    tool.find_subcommand(sub)?;
    Some(group)
}

/// One `.SS` section for each visible subcommand of `cmd` (built), and theirs in turn.
fn subcommand_sections(
    out: &mut String,
    spec: &CommandSpec,
    cmd: &Command,
    see_also: &mut Vec<String>,
) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let typed = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
        let _ = writeln!(out, ".SS \"{}\"", esc(&typed));
        if let Some(own) = own_name(spec, cmd, sub) {
            out.push_str(&format!(
                "{}. The same as {}: see {}.\n",
                esc(own.about),
                bold(&format!("vmk {}", own.name)),
                page_ref(&format!("vmk-{}(1)", own.name))
            ));
            see_also.push(format!("vmk-{}(1)", own.name));
            continue;
        }
        let shown = sub.clone().mut_args(|a| {
            if a.is_global_set() || a.get_id() == "help" {
                a.hide(true)
            } else {
                a
            }
        });
        let man = Man::new(shown.clone());
        out.push_str(&clap_section(&man, Man::render_synopsis_section)?);
        out.push_str(".PP\n");
        out.push_str(&clap_section(&man, Man::render_description_section)?);
        if shown.get_arguments().any(|a| !a.is_hide_set()) {
            out.push_str(&clap_section(&man, Man::render_options_section)?);
        }
        subcommand_sections(out, spec, sub, see_also)?;
    }
    Ok(())
}

/// The table's own name for a command of a group's tool (`ssh` for `vmk sshkey ssh`).
fn own_name(spec: &CommandSpec, cmd: &Command, sub: &Command) -> Option<&'static CommandSpec> {
    if !spec.prefix.is_empty() || cmd.get_name() != spec.name {
        return None; // only the group's own commands, not nested ones (`dsnap list`)
    }
    COMMANDS
        .iter()
        .find(|c| c.tool == spec.tool && c.prefix == [sub.get_name()])
}

fn uses(name: &str) -> Result<&'static [Uses]> {
    USES.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, u)| *u)
        .with_context(|| format!("the man page table USES has no row for `{name}`"))
}

fn exit_status(name: &str) -> &'static [(&'static str, &'static str)] {
    EXIT.iter()
        .find(|(n, _)| *n == name)
        .map_or(&[OK, FAILED, USAGE], |(_, e)| *e)
}

/// ENVIRONMENT: what the front door passes, and what the command reads.
fn environment(out: &mut String, uses: &[Uses], tool: bool) {
    use vmk_common::cli;
    if uses.contains(&Config) {
        item(
            out,
            &bold("VMK_*"),
            "Config keys for one run: they win over every config file (see vmk-config(5)).",
        );
    }
    if tool {
        for (var, option) in [
            (cli::ENV_CONFIG, "-c FILE"),
            (cli::ENV_DRY_RUN, "-D"),
            (cli::ENV_VERBOSE, "-v and -x (a count)"),
        ] {
            let text = format!("Set by vmk from its option {option}; the same as that option.");
            item(out, &bold(var), &text);
        }
    }
    item(
        out,
        &bold(cli::ENV_VMK),
        "Set by vmk to its own path for the command it runs.",
    );
    item(
        out,
        &bold(cli::ENV_COMMAND),
        "Set by vmk to the name typed after it, so that usage lines and errors show that name.",
    );
    if tool {
        item(
            out,
            &bold("RUST_LOG"),
            "What to log on stderr (env_logger syntax, e.g. debug); wins over -v.",
        );
    }
    if uses
        .iter()
        .any(|u| matches!(u, Runtime | Registry | SnapVm))
    {
        item(
            out,
            &bold("XDG_RUNTIME_DIR"),
            "Runtime files that do not fit beside the image go to $XDG_RUNTIME_DIR/vmk \
             (else /run/vmk for root, /tmp/vmk-UID).",
        );
    }
    if uses.contains(&Autoinst) {
        item(
            out,
            &bold("VMK_AUTOINST_DIR"),
            "The AutoYaST snippets (default: share/vmk/autoinst beside the installed vmk).",
        );
    }
    if uses.contains(&Bootstrap) {
        item(
            out,
            &bold("XDG_CACHE_HOME"),
            "The cache of installed systems is $XDG_CACHE_HOME/vmk (default ~/.cache/vmk).",
        );
    }
}

/// FILES: what the command reads or writes, in the VM directory unless said otherwise.
fn files(out: &mut String, uses: &[Uses]) {
    for u in uses {
        let rows: &[(&str, &str)] = match u {
            Config => &[
                (
                    "vm-config",
                    "This VM's config (or the FILE of -c, whose directory is then the VM directory).",
                ),
                ("vmkrc", "Settings shared by the VMs in the same directory."),
                ("~/.vmkrc", "The user's settings."),
                (
                    "/etc/vmk-config",
                    "System-wide settings (or the file the environment variable \
                     VMK_SYSTEM_CONFIG names; a path that does not exist means none).",
                ),
            ],
            Runtime => &[
                ("DISK0.pid", "The pid of the running VM (DISK0 is the image VMK_DISK0 names)."),
                ("DISK0.console.log", "What the VM wrote on its serial console."),
                ("DISK0.qmp", "The QMP socket of the running VM."),
                (
                    "DISK0.qmp.con",
                    "The serial console's unix socket (VMK_CONSOLE=socket, the default); \
                     only the VM's user can connect.",
                ),
            ],
            Libvirt => &[(
                "$XDG_RUNTIME_DIR/vmk/libvirt/",
                "One record per VM directory defined in libvirt by vmk libvirt define (its \
                 connection and domain), for vmk info, vmk ps and vmk run.",
            )],
            Registry => &[(
                "$XDG_RUNTIME_DIR/vmk/running/",
                "One record per VM started by vmk run, for vmk ps.",
            )],
            Key => &[
                (
                    "vm-key, vm-key.pub",
                    "The VM's ssh key pair (vm-key is 0600); root in the guest accepts vm-key.pub.",
                ),
                (
                    "vm-known_hosts",
                    "The guest's ssh host key, learned the first time vmk reaches the VM while it \
                     runs, checked on every connection after.",
                ),
            ],
            SnapVm => &[(
                "snap-DISK0",
                "The snapshot VM's image, a reflink copy of DISK0; snap-DISK0.pid and the \
                 like are its runtime files.",
            )],
            Snapshots => &[(
                "DISK0-YYYYMMDD-HHMMSS",
                "Snapshots of the image (UTC), with an optional note in SNAPSHOT.note.",
            )],
            FileSnapshots => &[(
                "FILE-YYYYMMDD-HHMMSS",
                "Snapshots of FILE beside it, with an optional note in SNAPSHOT.note.",
            )],
            MountDir => &[("mnt-disk0/", "Where the image is mounted by default.")],
            Autoinst => &[
                ("autoinst.xml", "The AutoYaST profile given to the installer."),
                (
                    "PREFIX/share/vmk/autoinst/",
                    "The AutoYaST snippets that profiles are assembled from.",
                ),
            ],
            Seed => &[("seed.iso", "The cloud-init NoCloud seed (volume cidata).")],
            Bootstrap => &[
                (
                    "DIR/",
                    "The new VM directory: vm-config, disk0.raw, kernel, initrd, vm-key.",
                ),
                ("~/.cache/vmk/", "Installed systems, to bootstrap the same again in seconds."),
            ],
        };
        for (file, what) in rows {
            item(out, &format!("\\fI{}\\fR", esc(file)), what);
        }
    }
}

/// vmk-config(5): the file format, where files are read from, and every key.
fn config_page() -> String {
    let mut out = title("vmk-config", "5");
    heading(&mut out, "NAME");
    out.push_str("vmk\\-config \\- the settings of a vmk VM: vm\\-config, vmkrc, ~/.vmkrc, /etc/vmk\\-config\n");
    heading(&mut out, "SYNOPSIS");
    out.push_str("\\fBVMK_\\fR\\fIKEY\\fR=\\fIvalue\\fR\n");
    heading(&mut out, "DESCRIPTION");
    for paragraph in CONFIG_FORMAT {
        out.push_str(&format!(".PP\n{}\n", esc(paragraph)));
    }
    heading(&mut out, "KEYS");
    for key in keys::keys() {
        let example = quote(key.example, Quoting::Bare);
        let mut facts = format!("Type: {}.", key.kind.describe());
        if !key.default.is_empty() {
            facts.push_str(&format!(" Default: {}.", quote(key.default, Quoting::Bare)));
        }
        facts.push_str(&format!(" Example: {}={example}", key.name));
        let _ = writeln!(
            out,
            ".TP\n{}\n{}.\n.br\n{}",
            bold(key.name),
            esc(&capitalized(key.help)),
            esc(&facts)
        );
    }
    heading(&mut out, "ENVIRONMENT");
    item(
        &mut out,
        &bold("VMK_*"),
        "Any key above, for one run: it wins over every file.",
    );
    item(
        &mut out,
        &bold("HOME"),
        "Where ~/.vmkrc is, and what ~/ means in paths.",
    );
    heading(&mut out, "FILES");
    files(&mut out, &[Config]);
    heading(&mut out, "SEE ALSO");
    out.push_str(&format!(
        "{}, {}, {}\n",
        page_ref("vmk(1)"),
        page_ref("vmk-newconfig(1)"),
        page_ref("vmk-set(1)")
    ));
    out
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The file format and the sources, as README.md's "Configuration" says.
const CONFIG_FORMAT: &[&str] = &[
    "vmk reads the settings of a VM from these sources, later ones win: /etc/vmk-config \
     (system-wide; or the file the environment variable VMK_SYSTEM_CONFIG names, held to \
     the rules of a user's file: tests point it at a file that does not exist), ~/.vmkrc (the user's), ./vmkrc (shared by the VMs side by side in a \
     directory), ./vm-config (this VM; or the file given with -c, whose directory is then \
     the VM directory), environment variables VMK_*, and command-line options.",
    "The files are written as shell assignments, one KEY=value a line, values quoted with \
     '…' or \"…\" where they hold spaces; # starts a comment, an optional #!/bin/sh first \
     line and export before a key are allowed, so configs written for the original shell \
     tool work as they are. vmk parses them and never runs them: $(…), backticks and an \
     unquoted ; are errors that name the file and line. ${NAME} and $NAME expand to a key \
     set earlier (in this file or an earlier source); names outside VMK_ may be set for \
     that, and fall back to the process environment (VMK_ISO_DIR=$HOME/iso).",
    "An empty value means unset: the default applies. An unknown VMK_ key is an error that \
     names the file, the line and the closest known key; a value of the wrong kind is an \
     error that names the file, line and key and says what was expected. Relative paths are \
     relative to the VM directory, whichever file set them.",
    "vmk newconfig prints a commented config with every key; vmk set KEY VALUE changes one \
     key of ./vm-config and keeps every other byte.",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_its_facts_and_only_names_do() {
        for spec in COMMANDS {
            uses(spec.name).unwrap();
        }
        let named = USES
            .iter()
            .map(|(n, _)| n)
            .chain(EXIT.iter().map(|(n, _)| n));
        for name in named {
            let spec = commands::find(name).unwrap_or_else(|| panic!("{name} is no command"));
            assert_eq!(spec.name, *name, "{name}: use the command's first name");
        }
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(esc("a-b"), "a\\-b");
        assert_eq!(esc(".x\n.y"), "\\&.x\n\\&.y");
        assert_eq!(esc("it's \\"), "it\\*(Aqs \\e");
    }
}
