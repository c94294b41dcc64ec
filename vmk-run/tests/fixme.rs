//! `vmk-run fixme` on copies: a helper (any executable, copied into a temporary directory)
//! and a scratch bridge.conf, given by the hidden `--helper` and `--bridge-conf` options, so
//! the system's own qemu-bridge-helper and /etc/qemu are never touched.
//!
//! What fixme may do: make a root-owned helper setuid root for one group (root:kvm, mode
//! 4750) and add `allow NAME` for one plain bridge name, once. What it must refuse, changing
//! nothing: a helper a normal user owns (or that sits in a directory a normal user owns),
//! `allow all`, and names that are not plain interface names.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use vmk_testkit::isolation::{TestEnv, NOBODY};
use vmk_testkit::{run_system_tests, Need, SystemTest};

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "fixme_makes_a_root_helper_setuid_4750_for_group_kvm_and_allows_once",
            &[Need::Root, Need::Program("groupadd")],
            setuid_for_kvm_and_allow_once,
        ),
        SystemTest::new(
            "fixme_group_option_names_the_helper_group",
            &[Need::Root],
            group_option,
        ),
        SystemTest::new(
            "fixme_refuses_a_helper_owned_by_a_user_and_leaves_it",
            &[Need::Root],
            refuses_user_owned_helper,
        ),
        SystemTest::new(
            "fixme_refuses_a_helper_in_a_directory_a_user_owns",
            &[Need::Root],
            refuses_helper_in_user_dir,
        ),
        SystemTest::new(
            "fixme_refuses_all_and_names_that_are_not_interfaces",
            &[],
            refuses_all,
        ),
    ])
}

/// A scratch directory with a copy of an executable as `qemu-bridge-helper` (mode 0755,
/// owned by whoever runs the test) and the path of a bridge.conf that does not exist yet.
struct Scratch {
    /// The commands' own HOME, runtime directory and (absent) system config.
    env: TestEnv,
    dir: tempfile::TempDir,
    helper: PathBuf,
    conf: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = tempfile::Builder::new().prefix("vmk-fixme").tempdir()?;
        let helper = dir.path().join("qemu-bridge-helper");
        let program = vmk_testkit::which("true").context("no `true` on PATH")?;
        fs::copy(&program, &helper)?;
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o755))?;
        let conf = dir.path().join("etc-qemu/bridge.conf");
        Ok(Scratch {
            env: TestEnv::new()?,
            dir,
            helper,
            conf,
        })
    }

    /// `vmk-run` in the scratch directory, in the test's environment.
    fn vmk_run(&self) -> Command {
        let mut c = self.env.command(env!("CARGO_BIN_EXE_vmk-run"));
        c.current_dir(self.dir.path());
        c
    }

    /// `vmk-run fixme --helper H --bridge-conf C ARGS…` in the scratch directory.
    fn fixme(&self, args: &[&str]) -> Result<Output> {
        let out = self
            .vmk_run()
            .arg("fixme")
            .arg("--helper")
            .arg(&self.helper)
            .arg("--bridge-conf")
            .arg(&self.conf)
            .args(args)
            .output()
            .context("running vmk-run fixme")?;
        eprintln!(
            "$ vmk-run fixme {} -> {:?}\n  stdout: {}\n  stderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }
}

/// (uid, gid, mode bits) of a file.
fn owner_and_mode(path: &Path) -> Result<(u32, u32, u32)> {
    let m = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((m.uid(), m.gid(), m.mode() & 0o7777))
}

/// The gid of `group`, created (as a system group) when this machine has none.
fn ensure_group(group: &str) -> Result<u32> {
    let gid = |g: &str| -> Option<u32> {
        let out = Command::new("getent").args(["group", g]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split(':').nth(2)?.trim().parse().ok()
    };
    if let Some(g) = gid(group) {
        return Ok(g);
    }
    let st = Command::new("groupadd").args(["-r", group]).status()?;
    ensure!(st.success(), "groupadd -r {group} failed");
    gid(group).with_context(|| format!("group {group} still missing after groupadd"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn setuid_for_kvm_and_allow_once() -> Result<()> {
    let kvm = ensure_group("kvm")?;
    let s = Scratch::new()?;
    let out = s.fixme(&["--bridge", "br-vmk9"])?;
    ensure!(out.status.success(), "fixme failed: {}", stderr(&out));
    let (uid, gid, mode) = owner_and_mode(&s.helper)?;
    ensure!(uid == 0, "helper owner {uid}");
    ensure!(gid == kvm, "helper group {gid}, kvm is {kvm}");
    ensure!(mode == 0o4750, "helper mode {mode:o}, not 4750");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("root:kvm, mode 4750 (was root:") && stdout.contains("mode 755)"),
        "fixme did not say what it changed: {stdout}"
    );
    ensure!(fs::read_to_string(&s.conf)? == "allow br-vmk9\n");
    ensure!(owner_and_mode(&s.conf)?.2 == 0o644);

    // Again: nothing to change, nothing appended.
    let out = s.fixme(&["--bridge", "br-vmk9"])?;
    ensure!(out.status.success());
    ensure!(out.stdout.is_empty(), "second fixme changed something");
    ensure!(stderr(&out).contains("nothing to fix"), "{}", stderr(&out));
    ensure!(fs::read_to_string(&s.conf)? == "allow br-vmk9\n");
    ensure!(owner_and_mode(&s.helper)? == (0, kvm, 0o4750));

    // A helper that an earlier vmk made setuid for everyone (4755) is narrowed to 4750.
    fs::set_permissions(&s.helper, fs::Permissions::from_mode(0o4755))?;
    let out = s.fixme(&["--bridge", "br-vmk9"])?;
    ensure!(out.status.success());
    ensure!(owner_and_mode(&s.helper)? == (0, kvm, 0o4750));

    // A second bridge joins an existing file that lacks its final newline, once.
    fs::write(&s.conf, "# mine\nallow br-vmk9")?;
    for _ in 0..2 {
        ensure!(s.fixme(&["--bridge", "br-vmk8"])?.status.success());
    }
    ensure!(fs::read_to_string(&s.conf)? == "# mine\nallow br-vmk9\nallow br-vmk8\n");
    Ok(())
}

fn group_option() -> Result<()> {
    let s = Scratch::new()?;
    let out = s.fixme(&["--bridge", "br-vmk9", "--group", "vmk-no-such-group"])?;
    ensure!(out.status.code() == Some(1));
    ensure!(
        stderr(&out).contains("there is no group \"vmk-no-such-group\""),
        "{}",
        stderr(&out)
    );
    ensure!(owner_and_mode(&s.helper)?.2 == 0o755, "helper changed");
    ensure!(!s.conf.exists(), "bridge.conf written");
    let out = s.fixme(&["--bridge", "br-vmk9", "--group", "root"])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(owner_and_mode(&s.helper)? == (0, 0, 0o4750));
    Ok(())
}

fn refuses_user_owned_helper() -> Result<()> {
    let s = Scratch::new()?;
    std::os::unix::fs::chown(&s.helper, Some(NOBODY), Some(NOBODY))?;
    let before = owner_and_mode(&s.helper)?;
    let out = s.fixme(&["--bridge", "br-vmk9"])?;
    ensure!(out.status.code() == Some(1), "{:?}", out.status);
    let err = stderr(&out);
    ensure!(
        err.contains(&format!("{} is owned by", s.helper.display()))
            && err.contains("uid 65534")
            && err.contains("not root: vmk will not make it setuid root"),
        "{err}"
    );
    ensure!(owner_and_mode(&s.helper)? == before, "helper changed");
    ensure!(before == (NOBODY, NOBODY, 0o755));
    ensure!(!s.conf.exists(), "bridge.conf written after the refusal");
    Ok(())
}

fn refuses_helper_in_user_dir() -> Result<()> {
    let s = Scratch::new()?;
    let sub = s.dir.path().join("users");
    fs::create_dir(&sub)?;
    let helper = sub.join("qemu-bridge-helper");
    fs::rename(&s.helper, &helper)?;
    std::os::unix::fs::chown(&sub, Some(NOBODY), Some(NOBODY))?;
    let s = Scratch { helper, ..s };
    let out = s.fixme(&["--bridge", "br-vmk9"])?;
    ensure!(out.status.code() == Some(1), "{:?}", out.status);
    let err = stderr(&out);
    ensure!(
        err.contains(&format!(
            "is in {}, which nobody (uid 65534) may change",
            sub.display()
        )),
        "{err}"
    );
    ensure!(
        owner_and_mode(&s.helper)? == (0, 0, 0o755),
        "helper changed"
    );
    Ok(())
}

fn refuses_all() -> Result<()> {
    let s = Scratch::new()?;
    fs::create_dir_all(s.conf.parent().unwrap())?;
    fs::write(&s.conf, "allow br0\n")?;
    let helper_before = owner_and_mode(&s.helper)?;
    for bad in ["all", "br0 all", "br0\nallow all", "../x", ""] {
        let out = s.fixme(&["--bridge", bad])?;
        ensure!(out.status.code() == Some(2), "{bad:?}: {:?}", out.status);
        ensure!(stderr(&out).contains("refusing bridge"), "{}", stderr(&out));
        ensure!(
            fs::read_to_string(&s.conf)? == "allow br0\n",
            "conf changed"
        );
        ensure!(
            owner_and_mode(&s.helper)? == helper_before,
            "helper changed"
        );
    }
    let err = stderr(&s.fixme(&["--bridge", "all"])?);
    ensure!(err.contains("every bridge on this host"), "{err}");
    // From the VM's config too, and in a dry run.
    fs::write(s.dir.path().join("vm-config"), "VMK_BRIDGE=all\n")?;
    for args in [&[][..], &["-D"][..]] {
        let out = s
            .vmk_run()
            .args(args)
            .arg("fixme")
            .arg("--helper")
            .arg(&s.helper)
            .arg("--bridge-conf")
            .arg(&s.conf)
            .output()?;
        ensure!(out.status.code() == Some(2), "{args:?}: {:?}", out.status);
        ensure!(
            stderr(&out).contains("refusing bridge `all`"),
            "{}",
            stderr(&out)
        );
    }
    ensure!(
        fs::read_to_string(&s.conf)? == "allow br0\n",
        "conf changed"
    );
    // The dry run of a good name says what it would do, changing nothing.
    let out = s
        .vmk_run()
        .args(["-D", "fixme", "--bridge", "br-vmk9", "--helper"])
        .arg(&s.helper)
        .arg("--bridge-conf")
        .arg(&s.conf)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("setuid root for group kvm (root:kvm, mode 4750)"),
        "{text}"
    );
    ensure!(owner_and_mode(&s.helper)? == helper_before);
    Ok(())
}
