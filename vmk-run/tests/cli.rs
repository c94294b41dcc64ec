//! vmk-run's refusals and dry runs, with a fake qemu that records it was called: nothing
//! boots here.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use vmk_testkit::isolation::{TestEnv, VmSlot};

/// A VM directory with a fake qemu, on a VM number reserved for the test (hold the slot
/// while the test runs: `vmk run` checks its ports are free).
fn vm(dir: &Path, extra: &str) -> VmSlot {
    let slot = VmSlot::reserve().unwrap();
    vm_numbered(dir, &slot, extra);
    slot
}

fn vm_numbered(dir: &Path, slot: &VmSlot, extra: &str) {
    let fake = dir.join("qemu-fake");
    vmk_testkit::write_executable(&fake, "#!/bin/sh\necho called >> \"$(dirname \"$0\")/fake-called\"\necho 'fake: boom' >&2\nexit 1\n").unwrap();
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=t\nVMK_DISK0=disk0.qcow2\nVMK_ACCEL=tcg\n{}VMK_QEMU={}\n{extra}",
            slot.config_line(),
            fake.display()
        ),
    )
    .unwrap();
}

/// vmk-run in `dir`, with a private HOME and runtime dir, no /etc/vmk-config and no
/// inherited VMK_* variables.
fn vmk_run(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("vmk-run").unwrap();
    isolate(&mut c, dir);
    c.current_dir(dir);
    c
}

fn isolate(c: &mut Command, dir: &Path) {
    let env = TestEnv::inside(dir).unwrap();
    for name in vmk_testkit::isolation::inherited_vmk_vars() {
        c.env_remove(name);
    }
    c.envs(env.vars());
}

#[test]
fn dry_run_without_disk0_guesses_the_format_and_prints_only_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let slot = vm(tmp.path(), "");
    let out = vmk_run(tmp.path()).args(["-D", "run"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("format=qcow2"), "{stdout}");
    assert!(stdout.contains("-daemonize"), "{stdout}");
    // the serial console is a unix socket beside the QMP socket, no TCP port
    assert!(
        stdout.contains("id=serial0,path=") && stdout.contains("disk0.qcow2.con,server=on"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&format!("port={}", slot.telnet_port())),
        "{stdout}"
    );
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
    let _slot = vm(tmp.path(), "");
    let disk0 = tmp.path().join("disk0.qcow2");
    vmk_run(tmp.path()).arg("run").assert().code(2).stderr(
        predicate::str::contains(format!(
            "vm-config:2: VMK_DISK0: disk image {} does not exist",
            disk0.display()
        ))
        .and(predicate::str::contains("`vmk mkdisk0`")),
    );
    assert!(!tmp.path().join("fake-called").exists());
}

/// One case of [`every_file_a_key_names_is_checked_before_qemu_and_warned_by_the_dry_run`]:
/// config lines (from line 6 of vm-config on), files to create, the key expected in the
/// error, the line it was set on (`None`: the environment), and the missing file.
struct Missing {
    extra: &'static str,
    env: &'static [(&'static str, &'static str)],
    create: &'static [&'static str],
    key: &'static str,
    line: Option<usize>,
    file: &'static str,
}

#[test]
fn every_file_a_key_names_is_checked_before_qemu_and_warned_by_the_dry_run() {
    let disk = |n: usize| -> &'static str {
        [
            "", "d1.qcow2", "d2.raw", "d3.qcow2", "d4.img", "d5.qcow2", "d6.raw",
        ][n]
    };
    let mut cases = vec![Missing {
        extra: "VMK_NET_TYPE=none\n",
        env: &[],
        create: &[],
        key: "VMK_DISK0",
        line: Some(2),
        file: "disk0.qcow2",
    }];
    let disk_lines = [
        "",
        "VMK_DISK1=d1.qcow2\n",
        "VMK_DISK2=d2.raw\n",
        "VMK_DISK3=d3.qcow2\n",
        "VMK_DISK4=d4.img\n",
        "VMK_DISK5=d5.qcow2\n",
        "VMK_DISK6=d6.raw\n",
    ];
    let keys = [
        "",
        "VMK_DISK1",
        "VMK_DISK2",
        "VMK_DISK3",
        "VMK_DISK4",
        "VMK_DISK5",
        "VMK_DISK6",
    ];
    for n in 1..=6 {
        cases.push(Missing {
            extra: disk_lines[n],
            env: &[],
            create: &["disk0.qcow2"],
            key: keys[n],
            line: Some(6),
            file: disk(n),
        });
    }
    cases.extend([
        // disk1 is there, disk2 is not: disk2 is named, in its place
        Missing {
            extra: "VMK_DISK1=d1.qcow2\nVMK_DISK2=d2.raw\n",
            env: &[],
            create: &["disk0.qcow2", "d1.qcow2"],
            key: "VMK_DISK2",
            line: Some(7),
            file: "d2.raw",
        },
        Missing {
            extra: "",
            env: &[("VMK_DISK3", "from-env.qcow2")],
            create: &["disk0.qcow2"],
            key: "VMK_DISK3",
            line: None,
            file: "from-env.qcow2",
        },
        Missing {
            extra: "VMK_KERNEL=vmlinuz\n",
            env: &[],
            create: &["disk0.qcow2"],
            key: "VMK_KERNEL",
            line: Some(6),
            file: "vmlinuz",
        },
        Missing {
            extra: "VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img\n",
            env: &[],
            create: &["disk0.qcow2", "vmlinuz"],
            key: "VMK_INITRD",
            line: Some(7),
            file: "initrd.img",
        },
        Missing {
            extra: "VMK_QEMU=bin/qemu-system-x86_64\n",
            env: &[],
            create: &["disk0.qcow2"],
            key: "VMK_QEMU",
            line: Some(6),
            file: "bin/qemu-system-x86_64",
        },
        Missing {
            extra: "VMK_CLOUD_INIT=yes\n",
            env: &[],
            create: &["disk0.qcow2"],
            key: "VMK_CLOUD_INIT",
            line: Some(6),
            file: "vm-key.pub",
        },
    ]);
    for case in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let _slot = vm(dir, case.extra);
        for f in case.create {
            std::fs::write(dir.join(f), b"QFI\xfb").unwrap();
        }
        let file = dir.join(case.file);
        let at = match case.line {
            Some(l) => format!("vm-config:{l}: {}: ", case.key),
            None => format!("environment: {}: ", case.key),
        };
        let label = format!("{} ({})", case.key, case.extra.trim());
        let out = vmk_run(dir)
            .envs(case.env.iter().copied())
            .arg("run")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{label}: {stderr}");
        assert!(stderr.contains(&at), "{label}: {stderr}");
        assert!(
            stderr.contains(&format!("{} does not exist", file.display())),
            "{label}: {stderr}"
        );
        if case.key != "VMK_DISK0" {
            assert!(!stderr.contains("VMK_DISK0"), "{label}: {stderr}");
        }
        assert!(!dir.join("fake-called").exists(), "{label}: qemu ran");
        for mode in ["run", "runin"] {
            let out = vmk_run(dir)
                .envs(case.env.iter().copied())
                .args(["-D", mode])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{label} -D {mode}: {stderr}");
            let warnings: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("WARN") && l.contains(&at))
                .collect();
            assert_eq!(warnings.len(), 1, "{label} -D {mode}: {stderr}");
            assert!(
                warnings[0].contains(&format!("{} does not exist", file.display())),
                "{label} -D {mode}: {stderr}"
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&*file.to_string_lossy())
                    || case.key == "VMK_CLOUD_INIT",
                "{label} -D {mode}: the command line does not name the file"
            );
        }
    }
}

/// Several missing files: the error names each with its key, the dry run warns once each.
#[test]
fn several_missing_files_are_all_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _slot = vm(
        dir,
        "VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img\nVMK_DISK1=d1.qcow2\n",
    );
    let out = vmk_run(dir).arg("run").assert().code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    for key in ["VMK_DISK0", "VMK_DISK1", "VMK_KERNEL", "VMK_INITRD"] {
        assert!(stderr.contains(&format!("{key}: ")), "{key}: {stderr}");
    }
    let out = vmk_run(dir).args(["-D", "run"]).assert().success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("does not exist"))
        .count();
    assert_eq!(warnings, 4, "{stderr}");
    assert!(!dir.join("fake-called").exists());
}

#[test]
fn busy_port_is_refused_naming_it_and_vmk_vnc() {
    let tmp = tempfile::tempdir().unwrap();
    // a VM number of its own (reserved): holding a port another test's VM probes made
    // that test fail whenever they ran at the same time (seen with 10 test threads)
    let slot = vm(tmp.path(), "VMK_NET_TYPE=none\n");
    std::fs::write(tmp.path().join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let _hold = std::net::TcpListener::bind(("127.0.0.1", slot.vnc_port())).unwrap();
    // the holder is this test process: the error names it
    vmk_run(tmp.path()).arg("run").assert().code(1).stderr(
        predicate::str::contains(format!("port {}", slot.vnc_port()))
            .and(predicate::str::contains(format!(
                "VMK_VNC {}",
                slot.number()
            )))
            .and(predicate::str::contains(format!(
                "(pid {})",
                std::process::id()
            ))),
    );
    assert!(!tmp.path().join("fake-called").exists());
}

#[test]
fn qemu_errors_are_shown_and_not_running_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let slot = vm(tmp.path(), "VMK_NET_TYPE=none\n");
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
    vmk_run(tmp.path())
        .arg("stop")
        .assert()
        .success()
        .stderr(predicate::str::contains("not running"));
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
    assert_eq!(v["mac"], format!("52:54:00:00:00:{:02x}", slot.number()));
    assert_eq!(v["ssh_port"], serde_json::Value::Null);
}

#[test]
fn stale_pidfile_is_reported_and_removed_by_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let _slot = vm(tmp.path(), "");
    let pidfile = tmp.path().join("disk0.qcow2.pid");
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    vmk_run(tmp.path()).arg("kill").assert().success().stderr(
        predicate::str::contains(format!("pid {}", std::process::id()))
            .and(predicate::str::contains("removed the stale pidfile")),
    );
    assert!(!pidfile.exists());
}

/// A pidfile that holds no process id (empty, as qemu leaves it when it dies between
/// creating and writing it, or garbage) is no running VM when no qemu uses the image:
/// `info` and `isrunning` say so (with a warning), `kill` and `stop` remove it, `run`
/// removes it with a note before it starts qemu.
#[test]
fn a_pidfile_without_a_pid_is_not_a_running_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _slot = vm(dir, "VMK_NET_TYPE=none\nVMK_VNC_SOCKET=yes\n");
    std::fs::write(dir.join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let pidfile = dir.join("disk0.qcow2.pid");
    for content in ["", "\n", "garbage\x1b[2J", "-1"] {
        for cmd in ["kill", "stop", "run"] {
            std::fs::write(&pidfile, content).unwrap();
            let out = vmk_run(dir).args(["info", "--json"]).assert().success();
            let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
            assert_eq!(v["state"], "stopped", "{content:?}");
            let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
            assert!(
                stderr.contains("does not hold a process id") && !stderr.contains('\x1b'),
                "{content:?}: {stderr}"
            );
            vmk_run(dir).arg("isrunning").assert().code(1);
            let out = vmk_run(dir).arg(cmd).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if cmd == "run" {
                // the fake qemu fails, after the pidfile was removed
                assert_eq!(out.status.code(), Some(1), "{content:?}: {stderr}");
                assert!(
                    stderr.contains("note: removing pidfile") && stderr.contains("fake: boom"),
                    "{content:?}: {stderr}"
                );
            } else {
                assert!(out.status.success(), "{cmd} {content:?}: {stderr}");
                assert!(
                    stderr.contains("not running"),
                    "{cmd} {content:?}: {stderr}"
                );
            }
            assert!(!pidfile.exists(), "{cmd} {content:?}: the pidfile is left");
        }
    }
}

/// A fake qemu that writes its arguments, one per line, to `argv` beside itself and fails.
fn recording_vm(dir: &Path, extra: &str) -> VmSlot {
    let slot = vm(dir, extra);
    // Rewritten through a child process, like `vm`'s (no ETXTBSY).
    vmk_testkit::write_executable(
        &dir.join("qemu-fake"),
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/argv\"\necho 'fake: recorded' >&2\nexit 1\n",
    )
    .unwrap();
    slot
}

const PUBKEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc2bXl0ZXN0a2V5Zm9yY2xvdWRpbml0c2VlZA vmk-test\n";

#[test]
fn cloud_init_seed_is_made_and_attached_as_a_cd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _slot = recording_vm(dir, "VMK_NET_TYPE=none\nVMK_CLOUD_INIT=yes\n");
    std::fs::write(dir.join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let seed = dir.join("seed.iso");

    // The dry run names the seed but writes nothing.
    let out = vmk_run(dir).args(["-D", "run"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let cd = format!(
        "file={},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
        seed.display()
    );
    assert!(stdout.contains(&cd), "{stdout}");
    assert!(stdout.contains("ide-cd,drive=cd0"), "{stdout}");
    assert!(!seed.exists(), "a dry run wrote the seed");

    // Without vm-key.pub: refused before qemu, saying how to make the key.
    vmk_run(dir).arg("run").assert().code(2).stderr(
        predicate::str::contains("VMK_CLOUD_INIT").and(predicate::str::contains("vmk sshkeygen")),
    );
    assert!(!dir.join("argv").exists(), "qemu ran without a seed");

    std::fs::write(dir.join("vm-key.pub"), PUBKEY).unwrap();
    vmk_run(dir)
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("fake: recorded"));
    let argv = std::fs::read_to_string(dir.join("argv")).unwrap();
    assert!(argv.lines().any(|l| l == cd), "{argv}");
    assert!(seed.is_file());

    // Read back by an independent tool.
    let needs = [vmk_testkit::Need::Program("isoinfo")];
    if vmk_testkit::can_run_part("isoinfo reads the seed", &needs).unwrap() {
        let o = std::process::Command::new("isoinfo")
            .args(["-R", "-x", "/user-data", "-i"])
            .arg(&seed)
            .output()
            .unwrap();
        assert!(o.status.success(), "isoinfo failed");
        let user_data = String::from_utf8(o.stdout).unwrap();
        assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
        assert!(user_data.contains(PUBKEY.trim()), "{user_data}");
        let o = std::process::Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&seed)
            .output()
            .unwrap();
        let pvd = String::from_utf8_lossy(&o.stdout);
        assert!(pvd.contains("Volume id: cidata"), "{pvd}");
    }

    // runin attaches it too; info names it.
    let out = vmk_run(dir).args(["-D", "runin"]).assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains(&cd));
    let out = vmk_run(dir).args(["info", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["cloud_init_seed"], seed.display().to_string());
}

#[test]
fn bridge_run_is_refused_before_qemu_when_the_helper_may_not_use_the_bridge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let slot = vm(dir, "VMK_NET_TYPE=bridge\nVMK_BRIDGE=vmk-nobr7\n");
    std::fs::write(dir.join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let out = vmk_run(dir).args(["-D", "run"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("-netdev 'bridge,id=net0,br=vmk-nobr7'")
            && stdout.contains(&format!("mac=52:54:00:00:00:{:02x}", slot.number())),
        "{stdout}"
    );
    // Whatever this machine's bridge.conf says, vmk-nobr7 is not a bridge here.
    vmk_run(dir)
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("vmk-nobr7").and(predicate::str::contains("bridge")));
    assert!(!dir.join("fake-called").exists());
}

/// `vmk-run checksetup ARGS` (on the VM number of the directory's config): the exit
/// status and the lines split into (level, what, detail).
#[allow(clippy::type_complexity)]
fn checksetup_lines(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String, Vec<(String, String, String)>) {
    let out = vmk_run(dir)
        .envs(env.iter().copied())
        .arg("checksetup")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let level = w.next().unwrap_or_default().to_string();
            let what = w.next().unwrap_or_default().to_string();
            (level, what, w.collect::<Vec<_>>().join(" "))
        })
        .collect();
    (out.status.code(), stdout, lines)
}

#[test]
fn checksetup_one_line_per_check_and_the_exit_status() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A fake qemu that answers --version.
    let fake = dir.join("qemu-fake");
    // A reserved VM number: its ports at the default bases are free and stay ours.
    let _slot = vm(dir, "");
    vmk_testkit::write_executable(
        &fake,
        "#!/bin/sh\necho 'QEMU emulator version 9.9.9 (fake)'\n",
    )
    .unwrap();
    let helper = dir.join("qemu-bridge-helper");
    std::fs::write(&helper, "").unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.join("bridge.conf");
    let files = [
        "--helper",
        helper.to_str().unwrap(),
        "--bridge-conf",
        conf.to_str().unwrap(),
    ];

    let (code, _, lines) = checksetup_lines(dir, &[], &files);
    for (level, what, detail) in &lines {
        assert!(
            ["ok", "warn", "FAIL"].contains(&level.as_str()),
            "bad level in {level} {what} {detail}"
        );
    }
    let find = |lines: &[(String, String, String)], what: &str| {
        lines
            .iter()
            .find(|l| l.1 == what)
            .cloned()
            .unwrap_or_else(|| panic!("no {what} line in {lines:?}"))
    };
    for what in [
        "qemu", "kvm", "reflink", "nocow", "bridge", "ssh", "console", "vnc",
    ] {
        find(&lines, what);
    }
    let qemu = find(&lines, "qemu");
    assert_eq!(qemu.0, "ok");
    assert!(
        qemu.2.contains("QEMU emulator version 9.9.9 (fake)"),
        "{qemu:?}"
    );
    // The filesystem is named as users know it, not as a Rust value.
    let reflink = find(&lines, "reflink");
    assert!(
        !reflink.2.contains("Other {") && !reflink.2.contains("magic:"),
        "{reflink:?}"
    );
    // Bridge networking is not configured: a bridge problem is only a warning.
    let bridge = find(&lines, "bridge");
    assert_eq!(bridge.0, "warn", "{bridge:?}");
    assert!(
        bridge.2.contains("only needed for VMK_NET_TYPE=bridge"),
        "{bridge:?}"
    );
    assert!(lines.iter().all(|l| l.0 != "FAIL"), "{lines:?}");
    assert_eq!(code, Some(0), "{lines:?}");

    // Configured for a bridge that bridge.conf does not allow: FAIL and exit 1.
    std::fs::write(&conf, "allow br0\n").unwrap();
    let (code, stdout, _) = checksetup_lines(
        dir,
        &[("VMK_NET_TYPE", "bridge"), ("VMK_BRIDGE", "vmk-nobr8")],
        &files,
    );
    assert_eq!(code, Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL bridge"))
        .unwrap_or_else(|| panic!("no FAIL bridge line: {stdout}"));
    assert!(
        line.contains("allow vmk-nobr8") && line.contains("sudo vmk fixme"),
        "{line}"
    );
    assert!(
        !stdout.contains("ssh port"),
        "no ssh forward when bridged: {stdout}"
    );

    // VMK_CLOUD_INIT=yes without vm-key.pub: FAIL, saying how to make the key.
    let (code, stdout, _) = checksetup_lines(dir, &[("VMK_CLOUD_INIT", "yes")], &files);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL cloud-init") && l.contains("vmk sshkeygen")),
        "{stdout}"
    );

    // How shares would reach the guest: VMK_SHARE_FS=9p says so, whatever the machine has.
    let (_, _, lines) = checksetup_lines(dir, &[("VMK_SHARE_FS", "9p")], &files);
    let shares = find(&lines, "shares");
    assert_eq!(
        (shares.0.as_str(), shares.2.as_str()),
        ("ok", "over virtio-9p (VMK_SHARE_FS=9p)")
    );

    // A missing qemu is a failure.
    std::fs::remove_file(&fake).unwrap();
    let (code, _, lines) = checksetup_lines(dir, &[], &files);
    assert_eq!(find(&lines, "qemu").0, "FAIL", "{lines:?}");
    assert_eq!(code, Some(1));
}

/// checksetup for each architecture: what VMK_ARCH means (qemu binary and package,
/// machine, console), whether that qemu is here (else the package to install), and the
/// firmware it boots (found through qemu's descriptors, else the package to install).
#[test]
fn checksetup_says_what_each_architecture_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _slot = vm(dir, "");
    // the machine's own qemu and firmware, not the fake of vm()
    let config = std::fs::read_to_string(dir.join("vm-config")).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("VMK_QEMU="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("vm-config"), config).unwrap();
    for (arch, qemu, package, firmware_package, console) in [
        (
            "x86_64",
            "qemu-system-x86_64",
            "qemu-system-x86",
            "ovmf",
            "ttyS0",
        ),
        (
            "arm64",
            "qemu-system-aarch64",
            "qemu-system-arm",
            "qemu-efi-aarch64",
            "ttyAMA0",
        ),
        (
            "ppc64le",
            "qemu-system-ppc64",
            "qemu-system-ppc",
            "",
            "hvc0",
        ),
        (
            "s390x",
            "qemu-system-s390x",
            "qemu-system-misc",
            "",
            "ttysclp0",
        ),
    ] {
        let env = [
            ("VMK_ARCH", arch),
            ("VMK_FIRMWARE", "uefi"),
            ("VMK_TPM", "yes"),
        ];
        let (_, stdout, lines) = checksetup_lines(dir, &env, &[]);
        let line = |what: &str| {
            lines
                .iter()
                .find(|l| l.1 == what)
                .cloned()
                .unwrap_or_else(|| panic!("{arch}: no {what} line in {stdout}"))
        };
        let a = line("arch");
        assert!(
            a.0 == "ok" && a.2.contains(qemu) && a.2.contains(package) && a.2.contains(console),
            "{arch}: {a:?}"
        );
        let q = line("qemu");
        match q.0.as_str() {
            "ok" => {
                // the binary it names is that qemu, and it says the version that binary gives
                let path = q.2.split_whitespace().next().unwrap_or_default();
                let version = std::process::Command::new(path)
                    .arg("--version")
                    .output()
                    .unwrap_or_else(|e| panic!("{arch}: running {path}: {e}"));
                let version = String::from_utf8_lossy(&version.stdout);
                let first = version.lines().next().unwrap_or_default();
                assert!(
                    path.ends_with(&format!("/{qemu}"))
                        && first.starts_with("QEMU emulator version")
                        && q.2.contains(first),
                    "{arch}: {q:?}, and {path} --version says {version:?}"
                );
            }
            _ => assert!(
                q.2.contains(&format!("apt-get install {package}")),
                "{arch}: {q:?}"
            ),
        }
        let f = line("firmware");
        if firmware_package.is_empty() {
            // pseries and s390x have no UEFI: VMK_FIRMWARE=uefi is refused, saying so
            assert!(
                f.0 == "FAIL" && f.2.contains("set VMK_FIRMWARE=bios"),
                "{arch}: {f:?}"
            );
        } else if f.0 == "ok" {
            assert!(
                f.2.starts_with("uefi: /") && f.2.contains(".json"),
                "{arch}: {f:?}"
            );
        } else {
            assert!(
                f.2.contains(&format!("install {firmware_package}")),
                "{arch}: {f:?}"
            );
        }
        let t = line("tpm");
        assert!(
            (t.0 == "ok" && t.2.contains("swtpm")) || t.2.contains("apt-get install swtpm"),
            "{arch}: {t:?}"
        );
    }
    let (_, stdout, _) = checksetup_lines(dir, &[("VMK_ARCH", "s390x")], &[]);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok   firmware") || l.starts_with("ok firmware"))
            && stdout.contains("built into qemu"),
        "{stdout}"
    );
}

/// The `vmk` front door, built beside vmk-run when the workspace is built.
fn front_door(dir: &Path) -> Command {
    let vmk = Path::new(env!("CARGO_BIN_EXE_vmk-run")).with_file_name("vmk");
    assert!(
        vmk.exists(),
        "{} is not built: run `cargo build --workspace` (make test does)",
        vmk.display()
    );
    let mut c = Command::new(vmk);
    isolate(&mut c, dir);
    c.current_dir(dir).env_remove("VMK_ACCEL");
    c
}

#[test]
fn front_door_dry_run_of_a_config_in_the_original_tools_style() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("vm-config"),
        "#!/bin/sh\n# SLES 15 test VM\nVMK_NAME=\"sles15\"\nVMK_DISK0='sles,15.qcow2'   # main disk\n\
         VMK_MEM=4G\nexport VMK_VNC=3\nVMK_ACCEL=tcg\n\nVMK_TAG=\"${VMK_NAME} base\"\n",
    )
    .unwrap();
    let out = front_door(tmp.path())
        .args(["-D", "run"])
        .assert()
        .success();
    let line = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    for needle in [
        "qemu-system-x86_64",
        "'guest=sles15'",
        "accel=tcg",
        "-m 4096",
        "-vnc 127.0.0.1:3",
        "sles,,15.qcow2.con,server=on",
        "hostfwd=tcp:127.0.0.1:10023-:22",
        "mac=52:54:00:00:00:03",
        "sles,,15.qcow2,format=qcow2",
    ] {
        assert!(line.contains(needle), "missing {needle} in {line}");
    }
}

#[test]
fn front_door_never_runs_command_substitution_in_a_config() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("created-by-the-config");
    std::fs::write(
        tmp.path().join("vm-config"),
        format!(
            "VMK_DISK0=d.qcow2\nVMK_NAME=$(touch {})\n",
            marker.display()
        ),
    )
    .unwrap();
    front_door(tmp.path())
        .args(["-D", "run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("vm-config:2: VMK_NAME:"));
    assert!(!marker.exists(), "the config was run by a shell");
}

#[test]
fn a_directory_without_vm_config_is_named_as_no_vm_directory() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in ["info", "run", "stop"] {
        vmk_run(tmp.path())
            .arg(cmd)
            .env("HOME", tmp.path())
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("is not a VM directory: it has no vm-config")
                    .and(predicate::str::contains("`vmk bootstrap DIR`"))
                    .and(predicate::str::contains("`vmk newconfig > vm-config`")),
            );
    }
}

/// VMK_CONSOLE=telnet gives the original tool's telnet port (VMK_TELNET_BASE + VMK_VNC), and
/// `info` says so; the default is the socket.
#[test]
fn console_telnet_gives_the_tcp_port() {
    let tmp = tempfile::tempdir().unwrap();
    let slot = vm(tmp.path(), "VMK_CONSOLE=telnet\n");
    let port = slot.telnet_port();
    let out = vmk_run(tmp.path()).args(["-D", "run"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains(&format!(
            "id=serial0,host=127.0.0.1,port={port},server=on,wait=off,telnet=on"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(".con,"), "{stdout}");
    let out = vmk_run(tmp.path())
        .args(["info", "--json"])
        .assert()
        .success();
    let info: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(info["console_port"], port);
    assert!(info["console_socket"].is_null(), "{info}");
    let out = vmk_run(tmp.path()).arg("info").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        text.contains(&format!(
            "telnet 127.0.0.1:{port} (open to every local user)"
        )),
        "{text}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let _slot = vm(tmp.path(), "");
    let out = vmk_run(tmp.path())
        .args(["info", "--json"])
        .assert()
        .success();
    let info: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(info["console_port"].is_null(), "{info}");
    assert!(
        info["console_socket"]
            .as_str()
            .is_some_and(|s| s.ends_with("/disk0.qcow2.con")),
        "{info}"
    );
    let _slot = vm(tmp.path(), "VMK_CONSOLE=serial\n");
    vmk_run(tmp.path())
        .args(["-D", "run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("socket or telnet"));
}

/// VMK_VNC_SOCKET=yes: VNC on a unix socket beside the QMP socket, no TCP display.
#[test]
fn vnc_socket_replaces_the_tcp_display() {
    let tmp = tempfile::tempdir().unwrap();
    let slot = vm(tmp.path(), "VMK_VNC_SOCKET=yes\n");
    let out = vmk_run(tmp.path()).args(["-D", "run"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        stdout.contains("-vnc unix:/") && stdout.contains("/disk0.qcow2.vnc "),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&format!("127.0.0.1:{}", slot.number())),
        "{stdout}"
    );
}

/// A listener beyond loopback (VMK_LISTEN=0.0.0.0) is warned about, once, before qemu
/// starts; on loopback nothing is said.
#[test]
fn listen_beyond_loopback_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let slot = vm(tmp.path(), "VMK_LISTEN=0.0.0.0\n");
    std::fs::write(tmp.path().join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let out = vmk_run(tmp.path()).arg("run").assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(tmp.path().join("fake-called").exists(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("reachable beyond this machine"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for needle in [
        format!("VNC display on 0.0.0.0:{}", slot.vnc_port()),
        format!("ssh forward on 0.0.0.0:{}", slot.ssh_port()),
    ] {
        assert!(warnings[0].contains(&needle), "{stderr}");
    }
    assert!(!warnings[0].contains("serial console"), "{stderr}");

    vm_numbered(
        tmp.path(),
        &slot,
        "VMK_LISTEN=0.0.0.0\nVMK_CONSOLE=telnet\n",
    );
    let out = vmk_run(tmp.path()).arg("run").assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains(&format!("serial console on 0.0.0.0:{}", slot.telnet_port())),
        "{stderr}"
    );

    let _slot = vm(tmp.path(), "");
    let out = vmk_run(tmp.path()).arg("run").assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(!stderr.contains("reachable beyond"), "{stderr}");
}

/// The original's VM runs with its ISO attached as a CD-ROM (after disk0, which boots
/// first) and disk0 on SCSI; `runin` attaches it too; a missing ISO is an error naming
/// VMK_ISO.
#[test]
fn original_newconfig_vm_runs_with_its_iso_and_disk0_on_scsi() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("vm-config"), vmk_testkit::ORIGINAL_NEWCONFIG).unwrap();
    std::fs::write(dir.join("product-base.iso"), b"").unwrap();
    let dry = |tool: &str, args: &[&str]| {
        let mut c = Command::cargo_bin(tool).unwrap();
        isolate(&mut c, dir);
        let out = c
            .current_dir(dir)
            .env("VMK_ACCEL", "tcg")
            .env("PATH", "/usr/bin:/bin")
            .env_remove("VMK_VNC")
            .env_remove("XDG_RUNTIME_DIR")
            .args(args)
            .assert()
            .success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        let words = shlex::split(text.trim()).unwrap();
        words.join("\n").replace(dir.to_str().unwrap(), "/VM")
    };
    let run = dry("vmk-run", &["-D", "run"]);
    insta::assert_snapshot!("original_newconfig_run", run);
    assert!(run.contains("\nscsi-hd,drive=disk0,bus=scsi0.0,bootindex=0\n"));
    assert!(run.contains("file=/VM/product-base.iso,format=raw,if=none,id=cd0,media=cdrom"));
    // runin (and `vmk snap run`, which builds its command line through the same
    // vmk_run::instance::command) attach it too
    let runin = dry("vmk-run", &["-D", "runin"]);
    assert!(
        runin.contains("file=/VM/product-base.iso,") && runin.contains("\nide-cd,drive=cd0"),
        "{runin}"
    );
    std::fs::remove_file(dir.join("product-base.iso")).unwrap();
    vmk_run(dir)
        .env("VMK_ACCEL", "tcg")
        .arg("run")
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("VMK_ISO").and(predicate::str::contains("product-base.iso")),
        );
}

/// `info` shows what the original's info showed: the ISO and the kernel lines, and the
/// guest's address where vmk can know it (user networking: qemu's fixed guest address).
#[test]
fn info_shows_the_iso_the_kernel_lines_and_the_guests_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _slot = vm(
        dir,
        "VMK_ISO=product-base.iso\nVMK_KERNEL=boot/vmlinuz\nVMK_INITRD=boot/initrd.img\n\
         VMK_APPEND=\"root=/dev/sda1 console=ttyS0\"\n",
    );
    let info = |dir: &Path| {
        let out = vmk_run(dir).arg("info").assert().success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };
    let d = dir.display();
    let text = info(dir);
    for line in [
        format!("iso:         {d}/product-base.iso (missing)"),
        format!("kernel:      {d}/boot/vmlinuz (initrd {d}/boot/initrd.img)"),
        "append:      root=/dev/sda1 console=ttyS0".to_string(),
        "ip:          10.0.2.15 (user networking: the guest's side;".to_string(),
    ] {
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    std::fs::write(dir.join("product-base.iso"), b"").unwrap();
    assert!(info(dir).contains(&format!("iso:         {d}/product-base.iso\n")));

    let out = vmk_run(dir).args(["info", "--json"]).assert().success();
    let j: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(j["iso"], format!("{d}/product-base.iso"));
    assert_eq!(j["iso_exists"], true);
    assert_eq!(j["kernel"], format!("{d}/boot/vmlinuz"));
    assert_eq!(j["initrd"], format!("{d}/boot/initrd.img"));
    assert_eq!(j["append"], "root=/dev/sda1 console=ttyS0");
    assert_eq!(j["guest_ip"]["addr"], "10.0.2.15");
    assert_eq!(j["guest_ip"]["source"], "user-net");

    // no ISO, no kernel: the VM boots from its disk; no network: no address
    let _slot = vm(dir, "VMK_NET_TYPE=none\n");
    let text = info(dir);
    for line in [
        "iso:         -\n",
        "kernel:      - (boots from its disk)\n",
        "ip:          -\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }

    // a bridge with VMK_IP: that address, whatever the neighbour table says
    let _slot = vm(dir, "VMK_NET_TYPE=bridge\nVMK_IP=192.0.2.7\n");
    let text = info(dir);
    assert!(
        text.contains("ip:          192.0.2.7 (VMK_IP)\n"),
        "no VMK_IP line in:\n{text}"
    );
    let out = vmk_run(dir).args(["info", "--json"]).assert().success();
    let j: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(j["guest_ip"]["addr"], "192.0.2.7");
    assert_eq!(j["guest_ip"]["source"], "vmk-ip");
}

/// VMK_ISO is found as the original found it: as given (relative to the VM directory, `~/`
/// expanded), then in VMK_ISO_DIR.
#[test]
fn iso_is_looked_up_as_given_then_in_vmk_iso_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("isos")).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    vm(&dir, "VMK_ISO=a.iso\nVMK_ISO_DIR=~/isos\n");
    let iso_arg = |dir: &Path| {
        let out = vmk_run(dir)
            .env("HOME", &home)
            .args(["-D", "run"])
            .assert()
            .success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        shlex::split(text.trim())
            .unwrap()
            .into_iter()
            .find(|w| w.contains("id=cd0"))
            .unwrap_or_default()
    };
    std::fs::write(home.join("isos/a.iso"), b"").unwrap();
    assert!(iso_arg(&dir).starts_with(&format!("file={}/isos/a.iso,", home.display())));
    std::fs::write(dir.join("a.iso"), b"").unwrap();
    assert!(iso_arg(&dir).starts_with(&format!("file={}/a.iso,", dir.display())));
    vm(&dir, "VMK_ISO=~/isos/a.iso\n");
    assert!(iso_arg(&dir).starts_with(&format!("file={}/isos/a.iso,", home.display())));
}

/// The original's internal settings in ~/.vmkrc are ignored with one warning each, and the
/// VM still runs (here: its dry run).
#[test]
fn original_internal_keys_in_vmkrc_warn_and_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = tmp.path().join("vm");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        home.join(".vmkrc"),
        "VMK_DEBUG=1\nexport VMK_LAZY_DEFAULTS=1\n",
    )
    .unwrap();
    vm(&dir, "");
    let out = vmk_run(&dir)
        .env("HOME", &home)
        .args(["-D", "run"])
        .assert()
        .success();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    for key in ["VMK_DEBUG", "VMK_LAZY_DEFAULTS"] {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(key)).collect();
        assert!(
            lines.len() == 1 && lines[0].contains("vmk ignores it"),
            "{key}: {err}"
        );
    }
}

/// README: "`export VMK_ACCEL=tcg` skips the probe" (the KVM probe is a qemu run of its
/// own, with `-debugcon`). A qemu that logs each command line it is started with: with
/// VMK_ACCEL=tcg in the environment, over a config that says auto, vmk starts it once, to
/// run the VM under tcg, never to probe; the control, `auto` where /dev/kvm opens, probes
/// before anything else.
#[test]
fn vmk_accel_tcg_in_the_environment_runs_no_kvm_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let slot = VmSlot::reserve().unwrap();
    let fake = dir.join("qemu-fake");
    vmk_testkit::write_executable(
        &fake,
        "#!/bin/sh\necho \"$*\" >> \"$(dirname \"$0\")/calls\"\necho 'fake: no qemu' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_NAME=t\nVMK_DISK0=disk0.qcow2\nVMK_ACCEL=auto\n{}VMK_QEMU={}\n",
            slot.config_line(),
            fake.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("disk0.qcow2"), b"QFI\xfb").unwrap();
    let calls = || std::fs::read_to_string(dir.join("calls")).unwrap_or_default();

    vmk_run(dir)
        .env("VMK_ACCEL", "tcg")
        .arg("run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("fake: no qemu"));
    let tcg = calls();
    assert_eq!(tcg.lines().count(), 1, "one start, no probe: {tcg}");
    assert!(
        tcg.contains("accel=tcg") && !tcg.contains("-debugcon"),
        "{tcg}"
    );

    let needs = [
        vmk_testkit::Need::Root,
        vmk_testkit::Need::File("/dev/kvm", "the kvm kernel module"),
    ];
    if vmk_testkit::can_run_part("the control: auto probes KVM", &needs).unwrap() {
        std::fs::remove_file(dir.join("calls")).unwrap();
        // VMK_ACCEL is the one variable the test environment passes on (CI sets tcg)
        vmk_run(dir)
            .env_remove("VMK_ACCEL")
            .arg("run")
            .assert()
            .code(1);
        let auto = calls();
        assert!(
            auto.lines().next().is_some_and(|l| l.contains("-debugcon")),
            "auto did not probe first: {auto}"
        );
    }
}
