//! vmk-mount against real images: the Debian guest's raw image (loop device), the same as
//! qcow2 (qemu-storage-daemon FUSE export + loop), guestmount, refusals, an interrupted
//! chroot, and NOCOW disks on a loop-mounted btrfs. Every test checks that no mount, loop
//! device or daemon is left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};
use vmk_testguest::debian_guest;
use vmk_testkit::btrfs::LoopBtrfs;
use vmk_testkit::images::lsattr_has_c;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

const BIN: &str = env!("CARGO_BIN_EXE_vmk-mount");

/// A VM directory with a copy of the Debian image as disk0 (raw, or converted to qcow2).
fn vm_dir(format: &str) -> Result<tempfile::TempDir> {
    let guest = debian_guest()?;
    let dir = tempfile::Builder::new()
        .prefix("vmk-mount-test")
        .tempdir()?;
    let disk0 = dir.path().join("disk0");
    if format == "raw" {
        guest.copy_image(&disk0)?;
    } else {
        let st = Command::new("qemu-img")
            .args(["convert", "-O", format])
            .arg(&guest.image)
            .arg(&disk0)
            .status()?;
        ensure!(st.success(), "qemu-img convert failed");
    }
    fs::write(
        dir.path().join("vm-config"),
        "VMK_DISK0=disk0\nVMK_ACCEL=tcg\n",
    )?;
    Ok(dir)
}

fn tool(dir: &Path, args: &[&str]) -> Result<Output> {
    // the tests' private HOME, runtime directory and (absent) system config
    let out = vmk_testkit::isolation::shared_env()?
        .command(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .context("running vmk-mount")?;
    eprintln!(
        "$ vmk-mount {}\n  -> {:?}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn ok(dir: &Path, args: &[&str]) -> Result<String> {
    let out = tool(dir, args)?;
    if !out.status.success() {
        bail!("vmk-mount {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fails when anything of `dir`'s VM is still mounted, looped or exported.
fn assert_clean(dir: &Path) -> Result<()> {
    let findmnt = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET,SOURCE"])
        .output()?;
    let mounts = String::from_utf8_lossy(&findmnt.stdout);
    let d = dir.to_string_lossy();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&*d)).collect();
    ensure!(left.is_empty(), "mounts left behind: {left:?}");
    let losetup = Command::new("losetup").arg("-a").output()?;
    let loops = String::from_utf8_lossy(&losetup.stdout);
    let left: Vec<&str> = loops.lines().filter(|l| l.contains(&*d)).collect();
    ensure!(left.is_empty(), "loop devices left behind: {left:?}");
    ensure!(!dir.join("disk0.mount").exists(), "state file left behind");
    ensure!(
        !dir.join("disk0.fuse").exists(),
        "FUSE export file left behind"
    );
    let stray: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".vmk-mnt-"))
        .collect();
    ensure!(stray.is_empty(), "temporary mount points left: {stray:?}");
    Ok(())
}

fn mount_shows_hostname(format: &'static str, backend: &'static str) -> Result<()> {
    let vm = vm_dir(format)?;
    let dir = vm.path();
    let printed = ok(dir, &["mount", "--backend", backend])?;
    let check = || -> Result<()> {
        ensure!(
            printed == dir.join("mnt-disk0").to_string_lossy(),
            "mount printed {printed}"
        );
        let host = fs::read_to_string(dir.join("mnt-disk0/etc/hostname"))?;
        ensure!(host.trim() == "vmk-guest", "hostname {host:?}");
        ensure!(dir.join("disk0.mount").exists(), "no state file");
        // A second mount refuses.
        let again = tool(dir, &["mount", "--backend", backend])?;
        ensure!(again.status.code() == Some(1), "second mount must refuse");
        Ok(())
    };
    let result = check();
    ok(dir, &["umount"])?;
    result?;
    assert_clean(dir)?;
    ensure!(
        !dir.join("mnt-disk0").exists(),
        "mnt-disk0 made by mount is left"
    );
    Ok(())
}

fn refuses_image_in_use() -> Result<()> {
    let vm = vm_dir("raw")?;
    let dir = vm.path();
    // A qemu that has the image open (no need to boot anything).
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-machine",
            "q35,accel=tcg",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            dir.join("disk0").display()
        ))
        .spawn()?;
    let _guard = QemuGuard::from_child(child);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = tool(dir, &["mount"])?;
    ensure!(
        out.status.code() == Some(1),
        "mount of a used image must fail"
    );
    ensure!(String::from_utf8_lossy(&out.stderr).contains("in use by a running qemu"));
    let out = tool(dir, &["putfile", "vm-config"])?;
    ensure!(
        out.status.code() == Some(1),
        "putfile into a used image must fail"
    );
    assert_clean(dir)?;
    // umount without a mount says so.
    let out = tool(dir, &["umount"])?;
    ensure!(out.status.code() == Some(1));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("not mounted by vmk"));
    Ok(())
}

fn interrupted_chroot_cleans_up() -> Result<()> {
    let vm = vm_dir("raw")?;
    let dir = vm.path();
    // The command inside sends SIGINT to vmk-mount (its parent) and exits 3: vmk must
    // survive the signal, clean up, and pass 3 through.
    let out = tool(
        dir,
        &[
            "chroot",
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/hostname; test -e /proc/self/mounts; kill -INT $PPID; sleep 0.2; exit 3",
        ],
    )?;
    ensure!(
        out.status.code() == Some(3),
        "chroot status {:?}",
        out.status
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("vmk-guest"));
    assert_clean(dir)
}

fn mkdisks_nocow_and_idempotent() -> Result<()> {
    let fs_ = LoopBtrfs::new(1 << 30)?;
    let dir = fs_.path().join("vm");
    fs::create_dir(&dir)?;
    fs::write(
        dir.join("vm-config"),
        "VMK_DISK0=disk0\nVMK_INST_DISK0=3G\nVMK_INST_DISK=1G\n",
    )?;
    let printed = ok(&dir, &["mkdisk0"])?;
    ensure!(printed.ends_with("disk0"));
    let disk0 = dir.join("disk0");
    ensure!(lsattr_has_c(&disk0)?, "lsattr shows no C on disk0");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk0)
        .output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    ensure!(info.contains("\"format\": \"qcow2\""), "{info}");
    ensure!(
        info.contains(&format!("\"virtual-size\": {}", 3u64 << 30)),
        "{info}"
    );
    // as the original: an existing disk0 is said, left as it is, and not an error
    let before = fs::read(&disk0)?;
    let out = tool(&dir, &["mkdisk0"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "mkdisk0 on an existing disk0: {err}");
    ensure!(err.contains("exists: left as it is"), "{err}");
    ensure!(
        out.stdout.is_empty(),
        "nothing was created, yet it printed a path"
    );
    ensure!(fs::read(&disk0)? == before, "disk0 changed");
    let printed = ok(&dir, &["mkdisks", "-n", "2"])?;
    ensure!(printed.lines().count() == 2, "{printed}");
    for d in ["disk1", "disk2"] {
        ensure!(lsattr_has_c(&dir.join(d))?, "lsattr shows no C on {d}");
    }
    ensure!(!dir.join("disk3").exists());
    // mkdisks makes what is missing, however often it runs, and leaves the rest
    fs::write(dir.join("disk1"), b"the guest's data")?;
    let printed = ok(&dir, &["mkdisks", "-n", "3"])?;
    ensure!(
        printed.trim().ends_with("disk3") && printed.lines().count() == 1,
        "{printed}"
    );
    ensure!(
        fs::read(dir.join("disk1"))? == b"the guest's data",
        "disk1 was overwritten"
    );
    let printed = ok(&dir, &["mkdisks", "-n", "3"])?;
    ensure!(printed.is_empty(), "a third mkdisks created {printed}");
    Ok(())
}

// ---- Hostile guest images: nothing inside an image reaches the host. ----

/// A host directory that a hostile image aims at: its whole tree (names, types, contents,
/// modes, owners, mtimes) is recorded, and must be the same after every command.
struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Result<Canary> {
        let dir = tempfile::Builder::new().prefix("vmk-canary").tempdir()?;
        fs::write(dir.path().join("keep"), "host data\n")?;
        fs::create_dir(dir.path().join("rules.d"))?;
        fs::write(
            dir.path().join("rules.d/70-persistent-net.rules"),
            "host rule\n",
        )?;
        Ok(Canary { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The path without its leading `/` (where the image holds a twin of it).
    fn rel(&self) -> PathBuf {
        self.path().strip_prefix("/").unwrap().to_path_buf()
    }

    fn snapshot(&self) -> Result<Vec<String>> {
        use std::os::unix::fs::MetadataExt;
        fn walk(p: &Path, out: &mut Vec<String>) -> Result<()> {
            let m = fs::symlink_metadata(p)?;
            let content = if m.is_file() {
                String::from_utf8_lossy(&fs::read(p)?).into_owned()
            } else {
                String::new()
            };
            out.push(format!(
                "{} mode={:o} uid={} mtime={}.{} {content:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                let mut names: Vec<PathBuf> =
                    fs::read_dir(p)?.flatten().map(|e| e.path()).collect();
                names.sort();
                for n in names {
                    walk(&n, out)?;
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(self.path(), &mut out)?;
        Ok(out)
    }

    /// Fails when anything is mounted at or below the canary.
    fn not_mounted(&self) -> Result<()> {
        let under = vmk_common::mountinfo::mounts_under(self.path());
        ensure!(
            under.is_empty(),
            "mounted over the host's canary: {under:?}"
        );
        Ok(())
    }
}

/// Checks that the canary is as it was and nothing is mounted on it.
fn assert_untouched(canary: &Canary, before: &[String]) -> Result<()> {
    canary.not_mounted()?;
    let after = canary.snapshot()?;
    ensure!(
        after == before,
        "the host's canary changed:\nbefore {before:#?}\nafter {after:#?}"
    );
    Ok(())
}

/// A minimal Linux root tree (what vmk's root detection needs) in `root`.
fn base_tree(root: &Path) -> Result<()> {
    for d in ["etc", "srv/data", "tmp", "dev", "proc", "sys", "root"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(root.join("etc/os-release"), "ID=hostile\n")?;
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")?;
    fs::write(root.join("etc/hostname"), "hostile\n")?;
    Ok(())
}

/// A VM directory whose disk0 is an ext4 filesystem (label `root`, no partition table)
/// made from the tree `stage` builds, as raw or qcow2. No guest boots: the image is data.
fn hostile_vm(format: &str, stage: impl FnOnce(&Path) -> Result<()>) -> Result<tempfile::TempDir> {
    let vm = tempfile::Builder::new().prefix("vmk-hostile").tempdir()?;
    let tree = vm.path().join("tree");
    fs::create_dir(&tree)?;
    base_tree(&tree)?;
    stage(&tree)?;
    let raw = vm.path().join("disk0.raw");
    fs::File::create(&raw)?.set_len(64 << 20)?;
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&tree)
        .arg(&raw)
        .status()?;
    ensure!(st.success(), "mkfs.ext4 failed");
    vmk_testkit::guest::remove_dir(&tree)?;
    let disk0 = vm.path().join("disk0");
    if format == "raw" {
        fs::rename(&raw, &disk0)?;
    } else {
        let st = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", format])
            .arg(&raw)
            .arg(&disk0)
            .status()?;
        ensure!(st.success(), "qemu-img convert failed");
        fs::remove_file(&raw)?;
    }
    fs::write(
        vm.path().join("vm-config"),
        "VMK_DISK0=disk0\nVMK_ACCEL=tcg\n",
    )?;
    Ok(vm)
}

/// sshkeyput's step on the image of the VM in `dir` (mounted, the key appended, unmounted
/// again whatever happened): its error, or an error when it worked.
fn sshkeyput_error(dir: &Path, key: &str) -> Result<String> {
    let mnt = PathBuf::from(ok(dir, &["mount", "--backend", "kernel"])?);
    let r = vmk_mount::guestfiles::append_authorized_key(&mnt, key);
    ok(dir, &["umount"])?;
    match r {
        Ok(_) => bail!("the key was appended"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// Runs vmk-mount expecting it to fail (status 1) with `message` in its stderr.
fn fails_with(dir: &Path, args: &[&str], message: &str) -> Result<()> {
    let out = tool(dir, args)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "vmk-mount {args:?} must fail, got {:?}",
        out.status
    );
    ensure!(err.contains(message), "no {message:?} in: {err}");
    Ok(())
}

/// The mount points at or below `dir`.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    vmk_common::mountinfo::mounts_under(dir)
}

fn fstab_mount_points_stay_inside() -> Result<()> {
    let canary = Canary::new()?;
    let c = canary.path().display().to_string();
    let rel = canary.rel();
    let vm = hostile_vm("raw", |t| {
        // The canary's twin inside the image, reached by a symlink to the host's path.
        fs::create_dir_all(t.join(&rel))?;
        std::os::unix::fs::symlink(canary.path(), t.join("abs"))?;
        std::os::unix::fs::symlink("/srv/data", t.join("up"))?;
        std::os::unix::fs::symlink("../../../../../../../../tmp", t.join("climb"))?;
        let fstab = format!(
            "LABEL=root / ext4 defaults 0 1\n\
             LABEL=root /../../../../../../../../..{c} ext4 defaults 0 0\n\
             LABEL=root {} ext4 defaults 0 0\n\
             LABEL=root /abs ext4 defaults 0 0\n\
             LABEL=root /up ext4 defaults 0 0\n\
             LABEL=root /climb ext4 defaults 0 0\n\
             LABEL=root /etc/hostname ext4 defaults 0 0\n",
            rel.display()
        );
        fs::write(t.join("etc/fstab"), fstab)?;
        Ok(())
    })?;
    let dir = vm.path();
    let before = canary.snapshot()?;
    let out = tool(dir, &["mount", "--backend", "kernel"])?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let mnt = dir.join("mnt-disk0");
    let check = || -> Result<()> {
        ensure!(out.status.success(), "mount failed");
        assert_untouched(&canary, &before)?;
        ensure!(
            err.contains(&format!(
                "skipped the line \"LABEL=root /../../../../../../../../..{c} ext4 defaults 0 0\": its mount point"
            )) && err.contains("contains `..`"),
            "no warning for the `..` line: {err}"
        );
        ensure!(
            err.contains("is not an absolute path"),
            "no warning for the relative line: {err}"
        );
        ensure!(
            err.contains("/etc/hostname is no directory in the image"),
            "no warning for a file as mount point: {err}"
        );
        // The symlinks were resolved inside the image: its own twin of the canary's path
        // (for /abs), its /srv/data (for /up) and its /tmp (for /climb, which climbs).
        let mut got = mounts_below(&mnt);
        got.sort();
        let mut want = vec![
            mnt.clone(),
            mnt.join(&rel),
            mnt.join("srv/data"),
            mnt.join("tmp"),
        ];
        want.sort();
        ensure!(got == want, "mounts {got:?}, expected {want:?}");
        Ok(())
    };
    let result = check();
    ok(dir, &["umount"])?;
    result?;
    assert_clean(dir)?;
    assert_untouched(&canary, &before)
}

fn guest_symlinks_lead_no_write_out() -> Result<()> {
    let canary = Canary::new()?;
    let before = canary.snapshot()?;
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileTestKeyOnly test";

    // /root is a symlink to the host's canary: resolved inside the image, where that path
    // does not exist.
    let target = canary.path().to_path_buf();
    let vm = hostile_vm("raw", |t| {
        fs::remove_dir(t.join("root"))?;
        std::os::unix::fs::symlink(&target, t.join("root"))?;
        Ok(())
    })?;
    let dir = vm.path();
    fails_with(dir, &["putfile", "vm-config"], "has no /root directory")?;
    assert_clean(dir)?;
    let e = sshkeyput_error(dir, key).context("sshkeyput through a symlinked /root must fail")?;
    ensure!(e.contains("has no /root directory"), "{e}");
    assert_clean(dir)?;
    assert_untouched(&canary, &before)?;

    // /root is real, but /root/vm, /root/.ssh and /etc/udev point at the host; the image
    // has a twin of the canary's rules file where /etc/udev leads inside it.
    let rel = canary.rel();
    let vm = hostile_vm("raw", |t| {
        std::os::unix::fs::symlink(&target, t.join("root/vm"))?;
        std::os::unix::fs::symlink(&target, t.join("root/.ssh"))?;
        std::os::unix::fs::symlink(&target, t.join("etc/udev"))?;
        fs::create_dir_all(t.join(&rel).join("rules.d"))?;
        fs::write(
            t.join(&rel).join("rules.d/70-persistent-net.rules"),
            "guest rule\n",
        )?;
        Ok(())
    })?;
    let dir = vm.path();
    fails_with(
        dir,
        &["putfile", "vm-config"],
        "refusing /root/vm in the image: it (or a directory on the way) is a symlink",
    )?;
    assert_clean(dir)?;
    let e = sshkeyput_error(dir, key).context("sshkeyput through a symlinked .ssh must fail")?;
    ensure!(e.contains("refusing /root/.ssh in the image"), "{e}");
    let removed = ok(dir, &["fixnet"])?;
    ensure!(
        removed == "removed /etc/udev/rules.d/70-persistent-net.rules",
        "fixnet printed {removed:?}"
    );
    let mnt = PathBuf::from(ok(dir, &["mount", "--backend", "kernel"])?);
    let twin_gone = !mnt
        .join(&rel)
        .join("rules.d/70-persistent-net.rules")
        .exists();
    ok(dir, &["umount"])?;
    ensure!(twin_gone, "fixnet did not remove the image's own rule");
    assert_clean(dir)?;
    assert_untouched(&canary, &before)
}

fn chroot_refuses_symlinked_system_dirs() -> Result<()> {
    let canary = Canary::new()?;
    let before = canary.snapshot()?;
    for sys in ["proc", "dev", "sys"] {
        let target = canary.path().to_path_buf();
        let vm = hostile_vm("raw", |t| {
            fs::remove_dir(t.join(sys))?;
            std::os::unix::fs::symlink(&target, t.join(sys))?;
            Ok(())
        })?;
        let dir = vm.path();
        fails_with(
            dir,
            &["chroot", "--backend", "kernel", "--", "/bin/true"],
            &format!("refusing /{sys} in the image: it (or a directory on the way) is a symlink"),
        )?;
        assert_clean(dir)?;
        assert_untouched(&canary, &before)?;
    }
    Ok(())
}

fn planted_journal_and_export_are_refused() -> Result<()> {
    let canary = Canary::new()?;
    let keep = canary.path().join("keep");

    // A symlink where the journal goes: neither mount nor umount opens it.
    let vm = hostile_vm("raw", |_| Ok(()))?;
    let dir = vm.path();
    let journal = dir.join("disk0.mount");
    std::os::unix::fs::symlink(&keep, &journal)?;
    let before = canary.snapshot()?;
    fails_with(dir, &["mount", "--backend", "kernel"], "is a symlink")?;
    fails_with(dir, &["umount"], "is a symlink")?;
    ensure!(fs::symlink_metadata(&journal)?.file_type().is_symlink());
    assert_untouched(&canary, &before)?;
    fs::remove_file(&journal)?;

    // A forged journal (a root-owned file) naming host paths: refused, nothing touched.
    let image = dir.join("disk0");
    let forged = |lines: &str| -> Result<()> {
        fs::write(
            &journal,
            format!("backend=kernel\nimage={}\n{lines}", image.display()),
        )?;
        Ok(())
    };
    forged(&format!(
        "dir={}/mnt-disk0\nloop_dev=/dev/loop0\nmount={}\n",
        dir.display(),
        canary.path().display()
    ))?;
    fails_with(dir, &["umount"], "outside the mount point")?;
    forged(&format!(
        "dir={}/mnt-disk0\nfuse_file={}\n",
        dir.display(),
        keep.display()
    ))?;
    fails_with(dir, &["umount"], "it was not written by vmk")?;
    ensure!(
        keep.exists(),
        "umount removed the file a forged journal named"
    );
    // Owned by another user: refused whatever it says.
    forged(&format!("dir={}/mnt-disk0\n", dir.display()))?;
    std::os::unix::fs::chown(&journal, Some(65534), Some(65534))?;
    fails_with(dir, &["umount"], "owned by this user or root")?;
    fs::remove_file(&journal)?;
    // Naming a real mount that is not vmk's: the check at unmount time refuses.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "vmk-canary"])
        .arg(canary.path())
        .status()?;
    ensure!(st.success(), "mounting a tmpfs on the canary");
    let mounted_before = mounts_below(canary.path());
    forged(&format!(
        "dir={c}\nloop_dev=/dev/loop0\nmount={c}\n",
        c = canary.path().display()
    ))?;
    let r = fails_with(dir, &["umount"], "not vmk's loop device");
    let still = mounts_below(canary.path());
    let _ = Command::new("umount").arg(canary.path()).status();
    r?;
    ensure!(
        still == mounted_before,
        "umount unmounted what a forged journal named"
    );
    ensure!(
        journal.exists(),
        "the refused journal must stay for the user to check"
    );
    fs::remove_file(&journal)?;
    assert_untouched(&canary, &before)?;

    // A symlink where the FUSE export of a qcow2 image goes: refused, not followed.
    let vm = hostile_vm("qcow2", |_| Ok(()))?;
    let dir = vm.path();
    let fuse = dir.join("disk0.fuse");
    std::os::unix::fs::symlink(&keep, &fuse)?;
    fails_with(dir, &["mount", "--backend", "kernel"], "exists already")?;
    ensure!(fs::symlink_metadata(&fuse)?.file_type().is_symlink());
    fs::remove_file(&fuse)?;
    assert_clean(dir)?;
    assert_untouched(&canary, &before)
}

fn main() -> std::process::ExitCode {
    let img = &[Need::Root, Need::Debootstrap, Need::Program("losetup")];
    let hostile = &[
        Need::Root,
        Need::Program("losetup"),
        Need::Program("mkfs.ext4"),
    ];
    run_system_tests(vec![
        SystemTest::new("mount_raw_kernel", img, || {
            mount_shows_hostname("raw", "kernel")
        }),
        SystemTest::new(
            "mount_qcow2_kernel_via_storage_daemon",
            &[
                Need::Root,
                Need::Debootstrap,
                Need::Program("qemu-storage-daemon"),
            ],
            || mount_shows_hostname("qcow2", "kernel"),
        ),
        SystemTest::new(
            "mount_raw_guestmount",
            &[Need::Root, Need::Debootstrap, Need::Guestmount],
            || mount_shows_hostname("raw", "guestmount"),
        ),
        SystemTest::new(
            "refuses_image_in_use",
            &[Need::Root, Need::Debootstrap, Need::Qemu],
            refuses_image_in_use,
        ),
        SystemTest::new(
            "interrupted_chroot_cleans_up",
            img,
            interrupted_chroot_cleans_up,
        ),
        SystemTest::new(
            "fstab_mount_points_stay_inside",
            hostile,
            fstab_mount_points_stay_inside,
        ),
        SystemTest::new(
            "guest_symlinks_lead_no_write_out",
            hostile,
            guest_symlinks_lead_no_write_out,
        ),
        SystemTest::new(
            "chroot_refuses_symlinked_system_dirs",
            hostile,
            chroot_refuses_symlinked_system_dirs,
        ),
        SystemTest::new(
            "planted_journal_and_export_are_refused",
            &[
                Need::Root,
                Need::Program("losetup"),
                Need::Program("mkfs.ext4"),
                Need::Program("qemu-img"),
                Need::Program("qemu-storage-daemon"),
            ],
            planted_journal_and_export_are_refused,
        ),
        SystemTest::new(
            "mkdisks_nocow_and_idempotent",
            &[
                Need::Btrfs,
                Need::Program("qemu-img"),
                Need::Program("lsattr"),
            ],
            mkdisks_nocow_and_idempotent,
        ),
    ])
}
