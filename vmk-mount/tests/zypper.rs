//! `vmk zypper` against a local rpm-md repository built in the test: rpmbuild makes a
//! noarch package, createrepo_c a repository of it; `vmk zypper ar` and `vmk zypper in`
//! install it into disk0 (an ext4 image). The oracles read the image after vmk has
//! unmounted it: `rpm --root --dbpath` on a mount of the test's own finds the package in
//! the image's own rpm database (where the guest's rpm looks, not where the host's rpm
//! would keep one), debugfs reads the installed file, and no loop device is left.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::{run_ok, run_system_tests, Need, SystemTest};

const SPEC: &str = "Name: vmk-test-hello
Version: 1.2
Release: 3
Summary: vmk zypper test package
License: GPL-2.0
BuildArch: noarch
%description
A file for vmk's zypper test.
%install
mkdir -p %{buildroot}/usr/share/vmk-test
echo vmk-zypper-installed-this > %{buildroot}/usr/share/vmk-test/hello
%files
/usr/share/vmk-test/hello
";

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "zypper_installs_a_package_from_a_local_repo_into_disk0",
        &[
            Need::Root,
            Need::Program("zypper"),
            Need::Program("rpmbuild"),
            Need::Program("createrepo_c"),
            Need::Program("rpm"),
            Need::Program("debugfs"),
            Need::Program("mkfs.ext4"),
        ],
        zypper_installs,
    )])
}

/// The rpm-md repository: one package, built here.
fn make_repo(work: &Path) -> Result<std::path::PathBuf> {
    let top = work.join("rpmbuild");
    std::fs::create_dir_all(top.join("SPECS"))?;
    let spec = top.join("SPECS/hello.spec");
    std::fs::write(&spec, SPEC)?;
    run_ok({
        let mut c = Command::new("rpmbuild");
        c.arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("-bb")
            .arg(&spec);
        c
    })?;
    let repo = work.join("repo");
    std::fs::create_dir(&repo)?;
    let rpm = top.join("RPMS/noarch/vmk-test-hello-1.2-3.noarch.rpm");
    std::fs::copy(&rpm, repo.join("vmk-test-hello-1.2-3.noarch.rpm"))
        .with_context(|| format!("rpmbuild made no {}", rpm.display()))?;
    run_ok({
        let mut c = Command::new("createrepo_c");
        c.arg("-q").arg(&repo);
        c
    })?;
    Ok(repo)
}

fn zypper_installs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let repo = make_repo(dir)?;
    // a root filesystem with nothing but /etc and os-release (what vmk looks for) and no rpm database yet
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc"))?;
    std::fs::write(tree.join("etc/hostname"), "vmk-zypper-test\n")?;
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=vmk-test\nNAME=\"vmk zypper test\"\n",
    )?;
    let image = dir.join("disk0");
    std::fs::File::create(&image)?.set_len(256 << 20)?;
    run_ok({
        let mut c = Command::new("mkfs.ext4");
        c.args(["-q", "-F", "-d"]).arg(&tree).arg(&image);
        c
    })?;
    let slot = VmSlot::reserve()?;
    std::fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_DISK0=disk0\nVMK_DISK0_FORMAT=raw\n{}",
            slot.config_line()
        ),
    )?;
    let env = TestEnv::inside(dir)?;
    let vmk_zypper = |args: &[&str]| -> Result<String> {
        let out = env
            .command(env!("CARGO_BIN_EXE_vmk-mount"))
            .arg("zypper")
            .args(args)
            .current_dir(dir)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("$ vmk zypper {} → {}\n{text}", args.join(" "), out.status);
        ensure!(out.status.success(), "vmk zypper {args:?} failed");
        Ok(text)
    };
    let url = format!("file://{}", repo.display());
    vmk_zypper(&["--non-interactive", "ar", "--no-gpgcheck", &url, "vmk-test"])?;
    vmk_zypper(&[
        "--non-interactive",
        "--no-gpg-checks",
        "in",
        "vmk-test-hello",
    ])?;

    // vmk unmounted the image: no loop device holds it
    let loops = run_ok({
        let mut c = Command::new("losetup");
        c.arg("-j").arg(&image);
        c
    })?;
    ensure!(
        loops.stdout.is_empty(),
        "a loop device still holds disk0: {}",
        String::from_utf8_lossy(&loops.stdout)
    );
    // the installed file, read from the ext4 image by debugfs
    let hello = run_ok({
        let mut c = Command::new("debugfs");
        c.args(["-R", "cat /usr/share/vmk-test/hello"]).arg(&image);
        c
    })?;
    ensure!(
        String::from_utf8_lossy(&hello.stdout).trim() == "vmk-zypper-installed-this",
        "the package's file is not in disk0"
    );
    // the image's rpm database, read by rpm on a read-only mount of the test's own
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt)?;
    run_ok({
        let mut c = Command::new("mount");
        c.args(["-o", "loop,ro"]).arg(&image).arg(&mnt);
        c
    })?;
    // where the guest's own rpm looks: an explicit --dbpath (current SUSE's), not the host
    // rpm's macros (Debian's would say $HOME/.rpmdb)
    let q = Command::new("rpm")
        .arg("--root")
        .arg(&mnt)
        .args(["--dbpath", "/usr/lib/sysimage/rpm", "-q", "vmk-test-hello"])
        .output();
    let strays = find_rpmdb_dirs(&mnt);
    let umount = Command::new("umount").arg(&mnt).status();
    let q = q?;
    ensure!(umount?.success(), "umount {}", mnt.display());
    ensure!(
        q.status.success()
            && String::from_utf8_lossy(&q.stdout).trim() == "vmk-test-hello-1.2-3.noarch",
        "the image's rpm database at /usr/lib/sysimage/rpm does not have the package: {q:?}"
    );
    let strays = strays?;
    ensure!(
        strays.is_empty(),
        "an rpm database landed outside the guest's own: {strays:?}"
    );
    Ok(())
}

/// Directories named `.rpmdb` anywhere in the tree at `root` (where a host rpm whose
/// database lives in ~/.rpmdb would have put the packages it installed under --root).
fn find_rpmdb_dirs(root: &Path) -> Result<Vec<std::path::PathBuf>> {
    let out = run_ok({
        let mut c = Command::new("find");
        c.arg(root).args(["-xdev", "-name", ".rpmdb"]);
        c
    })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(Into::into)
        .collect())
}
