//! vmk-clone as a user runs it: newconfig, set (byte-exact round trip), clone's refusals.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

fn vmk_clone(dir: &Path) -> Command {
    // the tests' private HOME, runtime directory and (absent) system config
    let mut c = vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(env!("CARGO_BIN_EXE_vmk-clone"));
    c.current_dir(dir);
    Command::from_std(c)
}

const ODD: &str = "#!/bin/sh\n# a VM with   odd spacing\n\n   VMK_MEM=\"1024\"   # memory\n\
export VMK_NAME=box\t# tab before this comment\nVMK_DISK0='disk 0.img'\n#VMK_MEM=9\n\
\tVMK_VNC=7\nMY_VAR=${VMK_VNC}\nVMK_TAG=\"keep \\\"me\\\"\"\n";

#[test]
fn set_changes_only_that_value_and_keeps_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm-config");
    fs::write(&cfg, ODD).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).unwrap();
    vmk_clone(dir.path())
        .args(["set", "VMK_MEM", "4G"])
        .assert()
        .success()
        .stdout("")
        .stderr(contains("VMK_MEM=4G (was 1024)"));
    let after = fs::read_to_string(&cfg).unwrap();
    assert_eq!(after, ODD.replace("VMK_MEM=\"1024\"", "VMK_MEM=\"4G\""));
    assert_eq!(
        fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // every key of the table can be set; a short name works
    vmk_clone(dir.path())
        .args(["set", "disk_bus", "scsi"])
        .assert()
        .success();
    vmk_clone(dir.path())
        .args(["set", "VMK_APPEND", "console=ttyS0 quiet"])
        .assert()
        .success();
    let after = fs::read_to_string(&cfg).unwrap();
    assert!(after.starts_with(&ODD.replace("VMK_MEM=\"1024\"", "VMK_MEM=\"4G\"")));
    assert!(
        after.ends_with("VMK_DISK_BUS=scsi\nVMK_APPEND='console=ttyS0 quiet'\n"),
        "{after}"
    );
    // no temporary file left
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn set_refuses_bad_values_and_unknown_keys_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm-config");
    fs::write(&cfg, ODD).unwrap();
    vmk_clone(dir.path())
        .args(["set", "VMK_MEM", "lots"])
        .assert()
        .code(2)
        .stderr(contains("expected a memory size"));
    vmk_clone(dir.path())
        .args(["set", "VMK_VNCC", "3"])
        .assert()
        .code(2)
        .stderr(contains("did you mean VMK_VNC"));
    vmk_clone(dir.path())
        .args(["set", "VMK_EXTRA_ARGS", "$(reboot)"])
        .assert()
        .success();
    assert!(fs::read_to_string(&cfg)
        .unwrap()
        .contains("VMK_EXTRA_ARGS='$(reboot)'"));
    vmk_clone(dir.path())
        .args(["set", "VMK_MEM"])
        .assert()
        .code(2);
}

#[test]
fn newconfig_prints_a_config_that_set_can_edit() {
    let dir = tempfile::tempdir().unwrap();
    let out = vmk_clone(dir.path()).arg("newconfig").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\nVMK_DISK0=disk0.qcow2\n") && text.contains("#VMK_ACCEL=auto"));
    fs::write(dir.path().join("vm-config"), &text).unwrap();
    vmk_clone(dir.path())
        .args(["set", "VMK_MEM", "2048"])
        .assert()
        .success();
    let after = fs::read_to_string(dir.path().join("vm-config")).unwrap();
    assert_eq!(after, text.replace("\nVMK_MEM=1024\n", "\nVMK_MEM=2048\n"));
}

/// As the original vmk: without -o the clone goes into the current directory, without -n
/// it is called `<this VM's name>-clone`.
#[test]
fn clone_defaults_to_here_and_name_clone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("vm-config"), "VMK_NAME=sles\nVMK_DISK0=disk0.img\n").unwrap();
    fs::write(d.join("disk0.img"), b"data").unwrap();
    vmk_clone(d)
        .args(["--full-copy", "--vnc", "44"])
        .assert()
        .success()
        .stdout(contains("sles-clone"));
    assert_eq!(fs::read(d.join("sles-clone/disk0.img")).unwrap(), b"data");
    let cfg = fs::read_to_string(d.join("sles-clone/vm-config")).unwrap();
    assert!(cfg.contains("VMK_NAME=sles-clone\n"), "{cfg}");
    vmk_clone(d)
        .args(["-o", "out", "--full-copy", "--vnc", "45"])
        .assert()
        .success();
    assert!(d.join("out/sles-clone/vm-config").is_file());
    // a second default clone would overwrite the first: refused
    vmk_clone(d)
        .args(["--full-copy"])
        .assert()
        .code(2)
        .stderr(contains("refusing to overwrite"));
}

#[test]
fn clone_refuses_an_existing_clone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("vm-config"), "VMK_DISK0=disk0.img\n").unwrap();
    fs::write(dir.path().join("disk0.img"), b"data").unwrap();
    fs::create_dir_all(dir.path().join("out/taken")).unwrap();
    vmk_clone(dir.path())
        .args(["-o", "out", "-n", "taken", "--full-copy"])
        .assert()
        .code(2)
        .stderr(contains("refusing to overwrite"));
    // `clone` spelled out works the same; the copy is a full copy only when asked
    vmk_clone(dir.path())
        .args([
            "clone",
            "-o",
            "out",
            "-n",
            "c1",
            "--full-copy",
            "--vnc",
            "42",
        ])
        .assert()
        .success()
        .stdout(contains("out/c1"));
    let cfg = fs::read_to_string(dir.path().join("out/c1/vm-config")).unwrap();
    assert_eq!(cfg, "VMK_DISK0=disk0.img\nVMK_NAME=c1\nVMK_VNC=42\n");
    assert!(!dir.path().join("out/c1/vm-known_hosts").exists());
    // the guest's known host key goes along (the clone's disk has the same host keys)
    fs::write(
        dir.path().join("vm-known_hosts"),
        "vmk-vm ssh-ed25519 AAAAkey\n",
    )
    .unwrap();
    vmk_clone(dir.path())
        .args(["-o", "out", "-n", "c2", "--full-copy", "--vnc", "43"])
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(dir.path().join("out/c2/vm-known_hosts")).unwrap(),
        "vmk-vm ssh-ed25519 AAAAkey\n"
    );
    assert_eq!(
        fs::read(dir.path().join("out/c1/disk0.img")).unwrap(),
        b"data"
    );
}

/// disk0's UEFI variable store and TPM state are disk0's: the clone gets copies beside its
/// disk0, so it boots with the same boot entries and sealed secrets, and changes neither.
#[test]
fn clone_copies_the_variable_store_and_tpm_state() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("vm-config"), "VMK_DISK0=disk0.img\n").unwrap();
    fs::write(dir.path().join("disk0.img"), b"data").unwrap();
    fs::write(dir.path().join("disk0.img.efivars"), b"vars").unwrap();
    fs::write(dir.path().join("disk0.img.tpm"), b"tpm").unwrap();
    vmk_clone(dir.path())
        .args(["-o", "out", "-n", "c1", "--full-copy", "--vnc", "42"])
        .assert()
        .success();
    let c1 = dir.path().join("out/c1");
    assert_eq!(fs::read(c1.join("disk0.img.efivars")).unwrap(), b"vars");
    assert_eq!(fs::read(c1.join("disk0.img.tpm")).unwrap(), b"tpm");
    fs::remove_file(dir.path().join("disk0.img.tpm")).unwrap();
    vmk_clone(dir.path())
        .args(["-o", "out", "-n", "c2", "--full-copy", "--vnc", "43"])
        .assert()
        .success();
    assert!(!dir.path().join("out/c2/disk0.img.tpm").exists());
}

#[test]
fn clone_checks_the_name_before_making_anything() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("vm-config"), "VMK_DISK0=disk0.img\n").unwrap();
    fs::write(dir.path().join("disk0.img"), b"data").unwrap();
    let long = "n".repeat(300);
    vmk_clone(dir.path())
        .args(["-o", "out/deeper", "-n", &long, "--full-copy"])
        .assert()
        .code(2)
        .stderr(contains("longer than a directory name may be"));
    for bad in ["", ".", "..", "a/b", "bell\x07", "esc\x1b[2J"] {
        let out = vmk_clone(dir.path())
            .args(["-o", "out/deeper", "-n", bad, "--full-copy"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "-n {bad:?}");
        assert!(!out.stderr.contains(&0x1b) && !out.stderr.contains(&0x07));
    }
    // -k without a key to copy is a usage mistake, found before anything is made
    vmk_clone(dir.path())
        .args(["-o", "out/deeper", "-n", "c1", "-k", "--full-copy"])
        .assert()
        .code(2)
        .stderr(contains("no vm-key"));
    assert!(
        !dir.path().join("out").exists(),
        "a refused clone made OUTDIR"
    );
}

#[test]
fn failed_clone_removes_the_outdir_levels_it_made() {
    // on tmpfs, which cannot reflink, so the copy below fails on every machine
    let dir = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    fs::write(dir.path().join("vm-config"), "VMK_DISK0=disk0.img\n").unwrap();
    fs::write(dir.path().join("disk0.img"), b"data").unwrap();
    // without --full-copy the copy fails where the filesystem cannot reflink (tmpfs, ext4)
    let out = vmk_clone(dir.path())
        .args(["-o", "new/deeper", "-n", "c1", "--vnc", "42"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a reflink clone on tmpfs did not fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed the unfinished clone"), "{err}");
    assert!(
        !dir.path().join("new").exists(),
        "the failed clone left OUTDIR behind"
    );
    // an OUTDIR that existed before stays
    fs::create_dir(dir.path().join("kept")).unwrap();
    vmk_clone(dir.path())
        .args(["-o", "kept", "-n", "c1", "--vnc", "42"])
        .assert()
        .code(1);
    assert!(dir.path().join("kept").is_dir());
    assert_eq!(fs::read_dir(dir.path().join("kept")).unwrap().count(), 0);
}

#[test]
fn status_lines_show_hostile_file_names_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm\x1b]0;owned\x07");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("vm-config"), "VMK_MEM=512\n").unwrap();
    let out = vmk_clone(tmp.path())
        .args(["set", "-c"])
        .arg(dir.join("vm-config"))
        .args(["VMK_MEM", "1024"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vm\\x1b]0;owned\\x07/vm-config: VMK_MEM=1024 (was 512)"),
        "{err}"
    );
    assert!(!out.stderr.contains(&0x1b) && !out.stderr.contains(&0x07));
}

#[test]
fn set_and_clone_refuse_a_fifo_as_config_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("vm-config");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    vmk_clone(dir.path())
        .args(["set", "VMK_MEM", "2G"])
        .timeout(std::time::Duration::from_secs(10))
        .assert()
        .code(2)
        .stderr(contains("is a FIFO"));
    vmk_clone(dir.path())
        .args(["-o", "out", "-n", "c1"])
        .timeout(std::time::Duration::from_secs(10))
        .assert()
        .code(2)
        .stderr(contains("is a FIFO"));
    assert!(!dir.path().join("out").exists());
}

/// `editme` runs $VISUAL (before $EDITOR) on vm-config, then checks what was written: a
/// bad value is named with file, line and key (exit 2), a good edit is kept (exit 0).
#[test]
fn editme_edits_in_the_users_editor_then_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("vm-config"), "VMK_DISK0=disk0.img\n").unwrap();
    let editor = d.join("append-line");
    fs::write(&editor, "#!/bin/sh\nprintf '%s\\n' \"$LINE\" >> \"$1\"\n").unwrap();
    fs::set_permissions(&editor, fs::Permissions::from_mode(0o755)).unwrap();
    vmk_clone(d)
        .arg("editme")
        .env("VISUAL", &editor)
        .env("EDITOR", "false")
        .env("LINE", "VMK_MEM=lots")
        .assert()
        .code(2)
        .stderr(contains("vm-config:2").and(contains("VMK_MEM")));
    fs::write(d.join("vm-config"), "VMK_DISK0=disk0.img\n").unwrap();
    vmk_clone(d)
        .arg("editme")
        .env_remove("VISUAL")
        .env("EDITOR", &editor)
        .env("LINE", "VMK_MEM=2G")
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(d.join("vm-config")).unwrap(),
        "VMK_DISK0=disk0.img\nVMK_MEM=2G\n"
    );
    // an editor that fails is said, and the file left as it left it
    vmk_clone(d)
        .arg("editme")
        .env("VISUAL", "false")
        .assert()
        .code(1)
        .stderr(contains("the editor false failed"));
}
