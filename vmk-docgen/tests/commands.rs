//! Every name of the command table through the real `vmk` and the real tools: its help and
//! usage errors name it as typed, every completion offered runs, and a closed stdout is
//! success.
//!
//! The tools are binaries of other packages, which `cargo test -p vmk-docgen` does not build
//! (cargo builds the binaries of the packages under test only). So these tests need them in
//! target/<profile>/: without them they are skipped loudly (failed under
//! VMK_TEST_REQUIRE_ALL=1); `cargo test --workspace` (make test) builds every binary first.
//! A stale binary fails here, saying so: `cargo build --workspace --bins`.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::process::{Command, ExitCode, Output, Stdio};

use anyhow::{ensure, Context, Result};
use vmk_common::commands::{CommandSpec, COMMANDS, TOOLS};
use vmk_testkit::{Need, SystemTest};

fn main() -> ExitCode {
    let needs = binaries();
    let test = |name: &str, body: fn() -> Result<()>| SystemTest::new(name, &needs, body);
    vmk_testkit::run_system_tests(vec![
        test(
            "every_name_shows_its_usage_as_typed",
            every_name_shows_its_usage_as_typed,
        ),
        test(
            "every_completion_runs_and_says_so",
            every_completion_runs_and_says_so,
        ),
        test(
            "usage_errors_name_the_command",
            usage_errors_name_the_command,
        ),
        test("closed_pipes_are_success", closed_pipes_are_success),
        test(
            "bash_completes_exactly_the_table",
            bash_completes_exactly_the_table,
        ),
    ])
}

/// `vmk` and every tool that ships with it.
fn binaries() -> Vec<Need> {
    let tools = TOOLS.iter().map(|t| format!("vmk-{}", t.name));
    std::iter::once("vmk".to_string())
        .chain(tools)
        .map(|name| Need::Built(Box::leak(name.into_boxed_str())))
        .collect()
}

/// `vmk ARGS…` in an empty directory, with nothing inherited from an outer `vmk`.
fn vmk<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let dir = std::env::temp_dir();
    // the tests' private HOME, runtime directory and (absent) system config, and no
    // VMK_* variable inherited (VMK_COMMAND, VMK_OPT_* of an outer `vmk` among them)
    let mut cmd = vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(vmk_testkit::workspace_bin("vmk"));
    cmd.args(args).current_dir(dir);
    cmd
}

fn output<S: AsRef<OsStr>>(args: &[S]) -> Result<Output> {
    let mut cmd = vmk(args);
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

/// Whether `text` starts with the usage line of `vmk TYPED` (and not of a longer name).
fn starts_with_usage(text: &str, typed: &str) -> bool {
    text.strip_prefix(&format!("Usage: vmk {typed}"))
        .is_some_and(|rest| rest.starts_with([' ', '\n']))
}

/// Runs `vmk WORDS… --help` and checks that it succeeds with the usage of `vmk SHOWN`.
fn check_help(words: &[String], shown: &str) -> Result<()> {
    let out = output(&[words, &["--help".to_string()]].concat())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && starts_with_usage(&stdout, shown),
        "`vmk {} --help` exited {} and printed (expected `Usage: vmk {shown}` first; a stale \
         binary? cargo build --workspace --bins):\n{stdout}{}",
        words.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn every_name_shows_its_usage_as_typed() -> Result<()> {
    for name in COMMANDS.iter().flat_map(CommandSpec::names) {
        check_help(&[name.to_string()], name)?;
        let help = output(&["help", name])?;
        let direct = output(&[name, "--help"])?;
        ensure!(
            help.status.success() && help.stdout == direct.stdout,
            "`vmk help {name}` differs from `vmk {name} --help`"
        );
    }
    let help = output(&["help"])?;
    ensure!(
        help.status.success()
            && starts_with_usage(&String::from_utf8_lossy(&help.stdout), "[OPTIONS]")
    );
    Ok(())
}

/// Every path of words that completions offer below `cmd`, with the usage name each shows
/// (nested commands show their own name, not the alias typed: `vmk dsnap ls` is `list`).
fn completion_paths(
    cmd: &clap::Command,
    typed: &[String],
    shown: &str,
    out: &mut Vec<(Vec<String>, String)>,
) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let shown = format!("{shown} {}", sub.get_name());
        for word in std::iter::once(sub.get_name()).chain(sub.get_visible_aliases()) {
            let typed = [typed, &[word.to_string()]].concat();
            out.push((typed.clone(), shown.clone()));
            completion_paths(sub, &typed, &shown, out);
        }
    }
}

fn every_completion_runs_and_says_so() -> Result<()> {
    let tree = vmk_docgen::vmk_tree()?;
    let mut paths = Vec::new();
    for top in tree.get_subcommands().filter(|s| s.get_name() != "help") {
        for word in std::iter::once(top.get_name()).chain(top.get_visible_aliases()) {
            let typed = vec![word.to_string()];
            paths.push((typed.clone(), word.to_string()));
            completion_paths(top, &typed, word, &mut paths);
        }
    }
    ensure!(paths.len() > COMMANDS.len(), "only {} paths", paths.len());
    for (typed, shown) in &paths {
        check_help(typed, shown)?;
    }
    Ok(())
}

fn usage_errors_name_the_command() -> Result<()> {
    for (args, typed) in [
        (&["run", "--no-such-option"][..], "run"),
        (&["status", "--no-such-option"], "status"),
        (&["dsnap", "--no-such-option"], "dsnap"),
        (&["snap"], "snap"),
        (&["snap", "run", "--no-such-option"], "snap run"),
        (&["completions"], "completions"),
    ] {
        let out = output(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2) && stderr.contains(&format!("Usage: vmk {typed} ")),
            "`vmk {}` exited {} with:\n{stderr}",
            args.join(" "),
            out.status
        );
    }
    Ok(())
}

/// Runs `vmk ARGS…` with stdout on a pipe whose reading end is already closed.
fn status_with_closed_stdout(args: &[&str]) -> Result<std::process::ExitStatus> {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().context("making a pipe")?;
    drop(read);
    let mut cmd = vmk(args);
    cmd.stdout(Stdio::from(write)).stderr(Stdio::null());
    cmd.status().with_context(|| format!("running {cmd:?}"))
}

fn closed_pipes_are_success() -> Result<()> {
    for args in [
        &["completions", "bash"][..],
        &["completions", "fish"],
        &["--list"],
        &["help"],
        &["help", "snap"],
        &["dsnap", "--help"],
    ] {
        let status = status_with_closed_stdout(args)?;
        ensure!(
            status.success(),
            "`vmk {}` with stdout closed: {status}",
            args.join(" ")
        );
    }
    Ok(())
}

/// The words bash offers after `vmk` (options left out): the table's names and `help`.
fn bash_completes_exactly_the_table() -> Result<()> {
    let out = output(&["completions", "bash"])?;
    ensure!(out.status.success(), "vmk completions bash: {}", out.status);
    let script = String::from_utf8(out.stdout)?;
    let opts = script
        .lines()
        .skip_while(|l| l.trim() != "vmk)")
        .find_map(|l| l.trim().strip_prefix("opts=\""))
        .context("no top-level case `vmk)` in the bash completions")?;
    let mut offered: Vec<&str> = opts
        .trim_end_matches('"')
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    let mut expected: Vec<&str> = COMMANDS.iter().flat_map(CommandSpec::names).collect();
    expected.push("help");
    offered.sort();
    expected.sort();
    ensure!(
        offered == expected,
        "bash offers {offered:?}, the table has {expected:?}"
    );
    Ok(())
}
