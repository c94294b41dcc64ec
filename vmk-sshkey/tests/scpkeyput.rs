//! `vmk scpkeyput` into a running guest that knows only a root password: the Debian test
//! guest, with a password and `PermitRootLogin yes` written into its image (debugfs) and
//! no key handed over as a credential (`VMK_SSH_CREDENTIAL=no`). Before, sshd refuses the
//! VM's key ("Permission denied"); `scpkeyput` logs in with the password (given to ssh through SSH_ASKPASS, as a
//! user types it); after, the key logs in and root's authorized_keys holds it once, also
//! after a second `scpkeyput`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testguest::debian_guest;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::qemu_guard::PidfileGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

const PASSWORD: &str = "vmk-test-password";
/// A hang guard, not a timing claim: the Debian guest boots in ~100 s under TCG here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn main() -> std::process::ExitCode {
    run_system_tests(vec![SystemTest::new(
        "scpkeyput_puts_the_key_with_the_root_password",
        &[
            Need::Root,
            Need::Qemu,
            Need::Debootstrap,
            Need::Ssh,
            Need::Program("debugfs"),
            Need::Program("openssl"),
        ],
        scpkeyput_with_password,
    )])
}

fn debugfs(image: &Path, write: bool, request: &str) -> Result<String> {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let out = cmd.arg("-R").arg(request).arg(image).output()?;
    ensure!(out.status.success(), "debugfs {request}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces (or creates) `path` in the ext4 image with `content`, mode 0600 (debugfs takes
/// the mode of the local file).
fn put_file(image: &Path, scratch: &Path, path: &str, content: &str) -> Result<()> {
    let local = scratch.join("put");
    fs::write(&local, content)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&local, fs::Permissions::from_mode(0o600))?;
    let _ = debugfs(image, true, &format!("rm {path}"));
    debugfs(image, true, &format!("write {} {path}", local.display()))?;
    ensure!(
        debugfs(image, false, &format!("cat {path}"))? == content,
        "{path} not written"
    );
    Ok(())
}

/// Root's password and password logins as root, in the image.
fn set_root_password(image: &Path, scratch: &Path) -> Result<()> {
    let hash = Command::new("openssl")
        .args(["passwd", "-6", "-salt", "vmktestsalt", PASSWORD])
        .output()?;
    ensure!(hash.status.success(), "openssl passwd failed");
    let hash = String::from_utf8(hash.stdout)?.trim().to_string();
    let shadow = debugfs(image, false, "cat /etc/shadow")?;
    let mut replaced = 0;
    let shadow: String = shadow
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => {
                replaced += 1;
                let after = rest.split_once(':').map(|x| x.1).unwrap_or("");
                format!("root:{hash}:{after}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    ensure!(replaced == 1, "no root line in /etc/shadow");
    put_file(image, scratch, "/etc/shadow", &shadow)?;
    put_file(
        image,
        scratch,
        "/etc/ssh/sshd_config.d/vmk-test-password.conf",
        "PermitRootLogin yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication yes\n",
    )
}

struct Vm<'a> {
    dir: &'a Path,
    env: TestEnv,
    askpass: std::path::PathBuf,
}

impl Vm<'_> {
    fn sshkey(&self, args: &[&str], with_password: bool) -> Result<Output> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmk-sshkey"));
        cmd.args(args).current_dir(self.dir);
        if with_password {
            cmd.env("SSH_ASKPASS", &self.askpass)
                .env("SSH_ASKPASS_REQUIRE", "force");
        } else {
            cmd.env_remove("SSH_ASKPASS");
        }
        self.env.run_command_logged(&mut cmd, None)
    }
}

fn scpkeyput_with_password() -> Result<()> {
    let g = debian_guest()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let image = dir.join("disk0");
    g.copy_image(&image)?;
    set_root_password(&image, dir)?;
    let slot = VmSlot::reserve()?;
    fs::write(
        dir.join("vm-config"),
        format!(
            "VMK_DISK0=disk0\nVMK_DISK0_FORMAT=raw\nVMK_KERNEL={}\nVMK_INITRD={}\n\
             VMK_APPEND=\"{}\"\nVMK_ACCEL=tcg\n{}VMK_MEM=768\nVMK_SSH_CREDENTIAL=no\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append,
            slot.config_line()
        ),
    )?;
    let askpass = dir.join("askpass");
    vmk_testkit::write_executable(&askpass, &format!("#!/bin/sh\necho '{PASSWORD}'\n"))?;
    let vm = Vm {
        dir,
        env: TestEnv::inside(dir)?,
        askpass,
    };
    let out = vm.sshkey(&["sshkeygen"], false)?;
    ensure!(out.status.success(), "sshkeygen failed");
    let public = fs::read_to_string(dir.join("vm-key.pub"))?;

    let armed = PidfileGuard::arm(&dir.join("disk0.pid"));
    let run = vm
        .env
        .command(vmk_testkit::workspace_bin("vmk-run"))
        .arg("run")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running vmk-run (cargo build --workspace)")?;
    ensure!(run.status.success(), "vmk-run run: {run:?}");
    let _guard = armed.into_guard()?;

    // the control: once sshd answers, it refuses the VM's key
    let start = Instant::now();
    loop {
        let out = vm.sshkey(&["ssh", "--", "true"], false)?;
        ensure!(!out.status.success(), "the key logged in before scpkeyput");
        if String::from_utf8_lossy(&out.stderr).contains("Permission denied") {
            break;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            bail!("sshd did not answer within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let out = vm.sshkey(&["scpkeyput"], true)?;
    ensure!(out.status.success(), "scpkeyput with the password failed");
    // the key alone now logs in, and it is in authorized_keys exactly once
    let out = vm.sshkey(&["ssh", "--", "cat /root/.ssh/authorized_keys"], false)?;
    ensure!(
        out.status.success(),
        "the key does not log in after scpkeyput"
    );
    let keys = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        keys.lines().filter(|l| *l == public.trim()).count() == 1,
        "authorized_keys: {keys:?}"
    );
    ensure!(vm.sshkey(&["scpkeyput"], true)?.status.success());
    let out = vm.sshkey(&["ssh", "--", "cat /root/.ssh/authorized_keys"], false)?;
    let again = String::from_utf8_lossy(&out.stdout);
    ensure!(
        again.lines().filter(|l| *l == public.trim()).count() == 1,
        "a second scpkeyput added the key again: {again:?}"
    );
    Ok(())
}
