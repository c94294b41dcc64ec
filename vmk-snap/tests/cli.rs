//! vmk-snap as a user runs it, on whatever filesystem the temp dir is (usually one that cannot
//! reflink, which is the interesting case for messages): refusals, --full-copy, notes, list,
//! revert, rm, the running-VM warning, --base, and `-D snap run`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command as StdCommand};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

fn vmk_snap(dir: &Path) -> Command {
    // the tests' private HOME, runtime directory and (absent) system config
    let mut c = vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(env!("CARGO_BIN_EXE_vmk-snap"));
    c.current_dir(dir);
    Command::from_std(c)
}

/// Runs `cmd`, asserts that it succeeded (showing its stderr if not), and returns its output.
fn succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn reflinks(dir: &Path) -> bool {
    vmk_common::fileops::fs_kind(dir).unwrap().can_reflink()
}

fn vm_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("vm-config"),
        "VMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\nVMK_VNC=57\n",
    )
    .unwrap();
    fs::write(dir.path().join("disk0.img"), b"version 1").unwrap();
    fs::set_permissions(
        dir.path().join("disk0.img"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    dir
}

#[test]
fn cpfile_refuses_same_file_and_overwrite_and_explains_missing_reflink() {
    let dir = vm_dir();
    let d = dir.path();
    vmk_snap(d)
        .args(["cpfile", "disk0.img", "disk0.img"])
        .assert()
        .code(1)
        .stderr(contains("same file"));
    fs::write(d.join("other"), b"keep").unwrap();
    vmk_snap(d)
        .args(["cpfile", "--full-copy", "disk0.img", "other"])
        .assert()
        .code(1)
        .stderr(contains("--force"));
    assert_eq!(fs::read(d.join("other")).unwrap(), b"keep");
    if !reflinks(d) {
        vmk_snap(d)
            .args(["cpfile", "disk0.img", "copy"])
            .assert()
            .code(1)
            .stderr(contains("cannot reflink").and(contains("--full-copy")));
        assert!(!d.join("copy").exists());
    }
    vmk_snap(d)
        .args(["cpfile", "--full-copy", "-f", "disk0.img", "other"])
        .assert()
        .success()
        .stdout("");
    assert_eq!(fs::read(d.join("other")).unwrap(), b"version 1");
    // a copy is private to its owner, whatever the source's mode (here 0640)
    assert_eq!(
        fs::metadata(d.join("other")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    vmk_snap(d)
        .args(["cpfile", "--full-copy", "/nonexistent/x", "y"])
        .assert()
        .code(2)
        .stderr(contains("does not exist"));
    fs::create_dir(d.join("sub")).unwrap();
    vmk_snap(d)
        .args(["cpfile", "--full-copy", "sub", "z"])
        .assert()
        .code(2)
        .stderr(contains("not a regular file"));
}

/// `dsnap revert --full-copy NAME`, which must succeed; returns the snapshot of what disk0
/// was before, which it prints.
fn revert_full_copy(d: &Path, name: &str) -> String {
    let out = vmk_snap(d)
        .args(["--base", "dsnap", "revert", "--full-copy", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A snapshot the original vmk took (`<disk0>-YYYY-MM-DD_HH:MM:SS`, local time) is one of
/// disk0's snapshots: listed (with its local time, no zone), reverted to by its name or
/// its time part, removed; a file that only looks like one is not.
#[test]
fn dsnap_sees_the_original_vmks_snapshots() {
    let dir = vm_dir();
    let d = dir.path();
    let old = "disk0.img-2019-03-04_05:06:07";
    fs::write(d.join(old), b"old vmk").unwrap();
    fs::write(d.join("disk0.img-2019-03-04_05:06:07.bak"), b"not one").unwrap();
    let out = vmk_snap(d)
        .args(["--base", "dsnap", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], old, "{list:?}");
    assert_eq!(list[0]["time"], "2019-03-04T05:06:07", "{list:?}");
    vmk_snap(d)
        .args(["--base", "dsnap", "list"])
        .assert()
        .success()
        .stdout(contains(old));
    let kept = revert_full_copy(d, "2019-03-04_05:06:07");
    assert_eq!(fs::read(d.join("disk0.img")).unwrap(), b"old vmk");
    assert_eq!(fs::read(kept).unwrap(), b"version 1");
    vmk_snap(d)
        .args(["--base", "dsnap", "rm", old])
        .assert()
        .success();
    assert!(!d.join(old).exists());
    assert!(d.join("disk0.img-2019-03-04_05:06:07.bak").exists());
}

#[test]
fn dsnap_notes_list_revert_rm() {
    let dir = vm_dir();
    let d = dir.path();
    let out = succeeds(vmk_snap(d).args(["--base", "dsnap", "--full-copy", "-m", "clean install"]));
    let snap = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let name = Path::new(&snap)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(name.starts_with("disk0.img-2"), "{name}");
    assert_eq!(
        fs::read_to_string(format!("{snap}.note")).unwrap(),
        "clean install\n"
    );
    vmk_snap(d)
        .args(["--base", "dsnap", "list"])
        .assert()
        .success()
        .stdout(
            contains(name.as_str())
                .and(contains("clean install"))
                .and(contains("9 B")),
        );
    let stamp = name.strip_prefix("disk0.img-").unwrap().to_string();
    fs::write(d.join("disk0.img"), b"version 2").unwrap();
    let kept = revert_full_copy(d, &stamp);
    assert_eq!(fs::read(d.join("disk0.img")).unwrap(), b"version 1");
    assert_eq!(fs::read(kept).unwrap(), b"version 2");
    let out = vmk_snap(d)
        .args(["--base", "dsnap", "list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    vmk_snap(d)
        .args(["--base", "dsnap", "rm", &name])
        .assert()
        .success();
    assert!(!Path::new(&snap).exists() && !Path::new(&format!("{snap}.note")).exists());
    vmk_snap(d)
        .args(["--base", "dsnap", "rm", "disk0.img"])
        .assert()
        .code(2)
        .stderr(contains("no snapshot"));
    assert!(d.join("disk0.img").exists());
    vmk_snap(d)
        .args(["--base", "dsnap", "list", "--json"])
        .assert()
        .success()
        .stdout(contains("before revert"));
}

/// A process that looks like this VM's qemu to vmk (argv[0] `qemu-…`, the image as an argument).
struct FakeQemu(Child);

impl FakeQemu {
    fn start(dir: &Path, image: &str) -> FakeQemu {
        let fake = dir.join("qemu-fake");
        vmk_testkit::copy_executable(Path::new("/usr/bin/tail"), &fake).unwrap();
        let child = StdCommand::new(&fake)
            .arg("-f")
            .arg(dir.join(image))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pidfile = dir.join(format!("{image}.pid"));
        fs::write(pidfile, format!("{}\n", child.id())).unwrap();
        FakeQemu(child)
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn running_vm_warns_on_dsnap_and_blocks_revert() {
    let dir = vm_dir();
    let d = dir.path();
    let _q = FakeQemu::start(d, "disk0.img");
    let out = vmk_snap(d)
        .args(["--base", "dsnap", "--full-copy"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs (pid") && err.contains("crash-consistent"),
        "{err}"
    );
    let snap = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // --freeze without a guest agent socket: warns and still snapshots
    vmk_snap(d)
        .args(["--base", "dsnap", "--full-copy", "--freeze"])
        .assert()
        .success()
        .stderr(contains("no guest agent socket"));
    vmk_snap(d)
        .args(["--base", "dsnap", "revert", &snap])
        .assert()
        .code(1)
        .stderr(contains("stop it first"));
    assert_eq!(fs::read(d.join("disk0.img")).unwrap(), b"version 1");
}

#[test]
fn base_only_with_dsnap_and_snap_image_must_exist() {
    let dir = vm_dir();
    let d = dir.path();
    vmk_snap(d)
        .args(["--base", "run"])
        .assert()
        .code(2)
        .stderr(contains("vmk run"));
    vmk_snap(d)
        .args(["dsnap"])
        .assert()
        .code(1)
        .stderr(contains("snap-disk0.img").and(contains("vmk snap run")));
    vmk_snap(d).args(["isrunning"]).assert().code(1).stdout("");
    fs::write(d.join("vm-config"), "VMK_MEM=lots\n").unwrap();
    vmk_snap(d)
        .args(["--base", "dsnap"])
        .assert()
        .code(2)
        .stderr(contains("VMK_MEM"));
}

#[test]
fn dry_run_snap_run_boots_snap_image_and_touches_nothing() {
    let dir = vm_dir();
    let d = dir.path();
    let out = succeeds(vmk_snap(d).args(["-D", "run"]));
    let argv = String::from_utf8(out.stdout).unwrap();
    let snap = d.join("snap-disk0.img");
    assert!(argv.contains(&format!("file={}", snap.display())), "{argv}");
    assert!(
        argv.contains("snap-disk0.img.pid") && argv.contains("snap-disk0.img.qmp"),
        "{argv}"
    );
    assert!(
        !argv.contains(&format!("file={},", d.join("disk0.img").display())),
        "{argv}"
    );
    let format = if reflinks(d) {
        "format=raw"
    } else {
        "format=qcow2"
    };
    assert!(argv.contains(format), "{argv}");
    assert!(!snap.exists(), "a dry run created the snapshot");
}

#[test]
fn dry_run_shows_shares_kernel_and_modules_of_one_boot() {
    let dir = vm_dir();
    let d = dir.path();
    let share = d.join("my src,x");
    fs::create_dir(&share).unwrap();
    fs::write(d.join("bzImage"), b"kernel").unwrap();
    fs::create_dir_all(d.join("mods/lib/modules/6.99.0-test")).unwrap();
    fs::write(d.join("mods/lib/modules/6.99.0-test/modules.dep"), b"").unwrap();
    fs::write(
        d.join("vm-config"),
        format!(
            "VMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\nVMK_VNC=57\n\
             VMK_SHARE=\"'{}:src:ro'\"\n",
            share.display()
        ),
    )
    .unwrap();
    let out = succeeds(vmk_snap(d).args([
        "-D",
        "run",
        "--kernel",
        "bzImage",
        "--append",
        "console=ttyS0 root=/dev/vda",
        "--modules",
        "mods",
    ]));
    let argv = String::from_utf8_lossy(&out.stdout);
    let fsdev = format!(
        "-fsdev 'local,id=share0,path={}/my src,,x,security_model=none,readonly=on'",
        d.display()
    );
    assert!(argv.contains(&fsdev), "{argv}");
    assert!(
        argv.contains("virtio-9p-pci,fsdev=share0,mount_tag=src"),
        "{argv}"
    );
    let modules = format!(
        "local,id=share1,path={}/mods/lib/modules,security_model=none,readonly=on",
        d.display()
    );
    assert!(argv.contains(&modules), "{argv}");
    assert!(argv.contains("mount_tag=vmk-modules"), "{argv}");
    assert!(
        argv.contains(&format!("-kernel {}/bzImage -append", d.display())),
        "{argv}"
    );
    assert!(!argv.contains("-initrd"), "{argv}");
}

#[test]
fn a_missing_shared_folder_or_kernel_is_a_usage_error() {
    let dir = vm_dir();
    let d = dir.path();
    fs::write(
        d.join("vm-config"),
        "VMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\nVMK_VNC=57\n\
         VMK_SHARE=no-such-folder:x\nVMK_SHARE_FS=9p\n",
    )
    .unwrap();
    fs::write(d.join("vm-key"), b"not checked before the config").unwrap();
    vmk_snap(d)
        .args(["run", "--exec", "true"])
        .assert()
        .code(2)
        .stderr(contains("vm-config:5: VMK_SHARE: shared folder").and(contains("no-such-folder")));
    vmk_snap(d)
        .args(["run", "--kernel", "nope", "--exec", "true"])
        .assert()
        .code(2)
        .stderr(contains("--kernel nope: no such file"));
    vmk_snap(d)
        .args(["run", "--append", "quiet"])
        .assert()
        .code(2)
        .stderr(contains("--initrd and --append need a kernel"));
    vmk_snap(d)
        .args(["run", "--modules", "."])
        .assert()
        .code(2)
        .stderr(contains("no modules tree"));
    vmk_snap(d)
        .args(["info"])
        .assert()
        .success()
        .stdout(contains(
            "mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 x /mnt/x",
        ));
}
