//! The `vmk` front door, run as a real binary with plugin scripts on a temporary PATH.

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use vmk_common::commands::{CommandSpec, COMMANDS};

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    vmk_testkit::write_executable(&path, &format!("#!/bin/sh\n{body}\n")).unwrap();
    path
}

/// A copy of the real `vmk` in a directory of its own, so its "own directory" is known.
fn vmk_in(dir: &Path) -> PathBuf {
    let vmk = dir.join("vmk");
    vmk_testkit::copy_executable(&assert_cmd::cargo::cargo_bin("vmk"), &vmk).unwrap();
    vmk
}

#[test]
fn plugin_on_path_gets_arguments_and_exit_status() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    script(&bin, "vmk-hello", r#"echo "hello:$*"; exit 7"#);
    Command::cargo_bin("vmk")
        .unwrap()
        .env("PATH", &bin)
        .args(["hello", "a", "b"])
        .assert()
        .code(7)
        .stdout("hello:a b\n");
}

#[test]
fn global_options_reach_the_plugin_through_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    script(
        tmp.path(),
        "vmk-env",
        r#"echo "VMK=$VMK"; echo "config=$VMK_OPT_CONFIG"; echo "dry=$VMK_OPT_DRY_RUN"; echo "verbose=$VMK_OPT_VERBOSE""#,
    );
    let vmk = assert_cmd::cargo::cargo_bin("vmk");
    let out = Command::new(&vmk)
        .current_dir(tmp.path())
        .env("PATH", tmp.path())
        .args(["-D", "-x", "-c", "my-config", "env"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(&format!("VMK={}", vmk.display())), "{out}");
    let expected_config = tmp.path().join("my-config");
    assert!(
        out.contains(&format!("config={}", expected_config.display())),
        "{out}"
    );
    assert!(out.contains("dry=1"), "{out}");
    assert!(out.contains("verbose=2"), "{out}");
}

#[test]
fn own_directory_wins_over_path_and_aliases_add_their_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path().join("own");
    let path = tmp.path().join("path");
    fs::create_dir_all(&own).unwrap();
    fs::create_dir_all(&path).unwrap();
    let vmk = vmk_in(&own);
    script(&own, "vmk-run", r#"echo "own:$*""#);
    script(&path, "vmk-run", r#"echo "path:$*""#);
    script(&own, "vmk-snap", r#"echo "snap:$*""#);
    let run = |args: &[&str]| Command::new(&vmk).env("PATH", &path).args(args).assert();
    run(&["info", "--json"])
        .success()
        .stdout("own:info --json\n");
    run(&["status"]).success().stdout("own:info\n");
    run(&["run", "-x"]).success().stdout("own:run -x\n");
    run(&["snap", "run"]).success().stdout("snap:run\n");
    run(&["dsnap", "list"])
        .success()
        .stdout("snap:--base dsnap list\n");
}

#[test]
fn unknown_command_suggests_the_closest() {
    let tmp = tempfile::tempdir().unwrap();
    Command::cargo_bin("vmk")
        .unwrap()
        .env("PATH", tmp.path())
        .arg("rnu")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no such command: `rnu`"))
        .stderr(predicate::str::contains("Did you mean `run`?"));
}

#[test]
fn list_shows_every_name_once_and_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = script(tmp.path(), "vmk-hello", "true");
    script(tmp.path(), "vmk-notexec.txt", "true");
    script(tmp.path(), "vmk-dsnap", "true"); // shadowed by the table: no plugin
    let own = tempfile::tempdir().unwrap(); // no other vmk-* beside this vmk
    let vmk = vmk_in(own.path());
    let list = |args: &[&str]| {
        let out = Command::new(&vmk)
            .env("PATH", tmp.path())
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    };
    let plain = list(&["--list"]);
    let mut shown: Vec<&str> = plain
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .flat_map(|l| l.split("  ").next().unwrap().split(", "))
        .collect();
    shown.sort();
    let mut expected: Vec<&str> = COMMANDS.iter().flat_map(CommandSpec::names).collect();
    expected.extend(["help", "hello"]);
    expected.sort();
    assert_eq!(shown, expected, "{plain}");
    assert!(
        plain.contains("Plugins") && !plain.contains("notexec"),
        "{plain}"
    );
    let verbose = list(&["-v", "--list"]);
    assert!(verbose.contains(&plugin.display().to_string()), "{verbose}");
    let help = list(&["help"]);
    assert!(
        help.starts_with("Usage: vmk ") && help.contains("Plugins"),
        "{help}"
    );
}

#[test]
fn the_name_typed_reaches_the_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let vmk = vmk_in(tmp.path());
    script(tmp.path(), "vmk-run", r#"echo "$VMK_COMMAND:$*""#);
    script(tmp.path(), "vmk-hello", r#"echo "$VMK_COMMAND:$*""#);
    let run = |args: &[&str]| {
        Command::new(&vmk)
            .env("PATH", tmp.path())
            .args(args)
            .assert()
    };
    run(&["status", "--json"])
        .success()
        .stdout("status:info --json\n");
    run(&["help", "telnet"])
        .success()
        .stdout("telnet:console --help\n");
    run(&["hello", "x"]).success().stdout("hello:x\n");
}

/// Runs `vmk ARGS…` with stdout on a pipe whose reading end is already closed.
fn status_with_closed_stdout(args: &[&str]) -> std::process::ExitStatus {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    std::process::Command::new(assert_cmd::cargo::cargo_bin("vmk"))
        .args(args)
        .stdout(std::process::Stdio::from(write))
        .status()
        .unwrap()
}

#[test]
fn a_closed_pipe_is_success() {
    for args in [&["--list"][..], &["help"], &[]] {
        let status = status_with_closed_stdout(args);
        let expected = if args.is_empty() { 2 } else { 0 }; // bare `vmk` is a usage error
        assert_eq!(status.code(), Some(expected), "vmk {args:?}");
    }
}

#[test]
fn help_command_shows_the_tools_help() {
    let tmp = tempfile::tempdir().unwrap();
    let vmk = vmk_in(tmp.path());
    script(tmp.path(), "vmk-sshkey", r#"echo "sshkey:$*""#);
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(&vmk)
            .env("PATH", empty.path())
            .args(args)
            .assert()
    };
    run(&["help", "hello-missing"]).code(2);
    run(&["help", "ssh"])
        .success()
        .stdout("sshkey:ssh --help\n");
    run(&["help", "sshkey", "scp"])
        .success()
        .stdout("sshkey:scp --help\n");
}

/// `vmk --version` prints the version the workspace's Cargo.toml gives (read here from the
/// file itself, not from the build's own CARGO_PKG_VERSION) and exits 0.
#[test]
fn version_is_the_workspace_version() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    let package = &text[text
        .find("[workspace.package]")
        .expect("a [workspace.package]")..];
    let version = package
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = "))
        .expect("a version in [workspace.package]")
        .trim_matches('"');
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "{version}"
    );
    Command::cargo_bin("vmk")
        .unwrap()
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("vmk {version}\n"));
}
