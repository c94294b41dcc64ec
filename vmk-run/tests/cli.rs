//! vmk-run's refusals and dry runs, with a fake qemu that records it was called: nothing
//! boots here.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn vm(dir: &Path, extra: &str) {
    let fake = dir.join("qemu-fake");
    std::fs::write(&fake, "#!/bin/sh\necho called >> \"$(dirname \"$0\")/fake-called\"\necho 'fake: boom' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=t\nVMK_DISK0=disk0.qcow2\nVMK_ACCEL=tcg\nVMK_VNC=97\nVMK_QEMU={}\n{extra}",
            fake.display()
        ),
    )
    .unwrap();
}

fn vmk_run(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("vmk-run").unwrap();
    c.current_dir(dir)
        .env_remove("VMK_VNC")
        .env_remove("VMK_OPT_DRY_RUN");
    c
}

#[test]
fn dry_run_without_disk0_guesses_the_format_and_prints_only_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    vm(tmp.path(), "");
    let out = vmk_run(tmp.path()).args(["-D", "run"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("format=qcow2"), "{stdout}");
    assert!(stdout.contains("-daemonize"), "{stdout}");
    assert!(stdout.contains("port=10087"), "{stdout}");
    let out = vmk_run(tmp.path()).args(["-D", "runin"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        !stdout.contains("-daemonize") && stdout.contains("stdio"),
        "{stdout}"
    );
    assert!(!tmp.path().join("fake-called").exists());
}

#[test]
fn missing_disk0_is_refused_before_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    vm(tmp.path(), "");
    vmk_run(tmp.path())
        .arg("run")
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("disk0").and(predicate::str::contains(
                "not found: run `vmk mkdisk0` or set VMK_DISK0",
            )),
        );
    assert!(!tmp.path().join("fake-called").exists());
}

#[test]
fn busy_port_is_refused_naming_it_and_vmk_vnc() {
    let tmp = tempfile::tempdir().unwrap();
    vm(tmp.path(), "VMK_NET_TYPE=none\n");
    std::fs::write(tmp.path().join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let _hold = std::net::TcpListener::bind("127.0.0.1:5997").unwrap();
    vmk_run(tmp.path())
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("port 5997").and(predicate::str::contains("VMK_VNC 97")));
    assert!(!tmp.path().join("fake-called").exists());
}

#[test]
fn qemu_errors_are_shown_and_not_running_answers() {
    let tmp = tempfile::tempdir().unwrap();
    vm(tmp.path(), "VMK_NET_TYPE=none\nVMK_TELNET_BASE=9900\n");
    std::fs::write(tmp.path().join("disk0.qcow2"), b"QFI\xfb").unwrap();
    vmk_run(tmp.path())
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("qemu failed to start: fake: boom"));
    assert!(tmp.path().join("fake-called").exists());
    vmk_run(tmp.path())
        .arg("isrunning")
        .assert()
        .code(1)
        .stdout("");
    vmk_run(tmp.path())
        .arg("kill")
        .assert()
        .success()
        .stderr(predicate::str::contains("not running"));
    vmk_run(tmp.path()).arg("stop").assert().success();
    vmk_run(tmp.path())
        .arg("console")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not running"));
    let out = vmk_run(tmp.path())
        .args(["status", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["mac"], "52:54:00:00:00:61");
    assert_eq!(v["ssh_port"], serde_json::Value::Null);
}

#[test]
fn stale_pidfile_is_reported_and_removed_by_kill() {
    let tmp = tempfile::tempdir().unwrap();
    vm(tmp.path(), "");
    let pidfile = tmp.path().join("disk0.qcow2.pid");
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    vmk_run(tmp.path()).arg("kill").assert().success().stderr(
        predicate::str::contains(format!("pid {}", std::process::id()))
            .and(predicate::str::contains("removed the stale pidfile")),
    );
    assert!(!pidfile.exists());
}
