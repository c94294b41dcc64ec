//! Real boots of the Debian guest (TCG): vmk-sshkey's commands against a real sshd, with the
//! key given as a systemd credential and with the key put into the image by `sshkeyput`;
//! and the guest's host key, learned into vm-known_hosts while vmk runs the VM and checked
//! ever after (a changed key is refused with exit 1 and a message that says what to do).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testguest::{debian_guest, DebianGuest};
use vmk_testkit::isolation::VmSlot;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::terminal::{ended_with_terminal_restored, in_terminal};
use vmk_testkit::{run_system_tests, Need, SystemTest};

const BOOT_TIMEOUT: &str = "300";

/// A VM directory holding a copy of the Debian guest.
struct Vm {
    dir: tempfile::TempDir,
    guest: DebianGuest,
    /// The VM's number, reserved while the test runs (held, never read).
    _slot: VmSlot,
}

impl Vm {
    fn new(extra: &str) -> Result<Vm> {
        let guest = debian_guest()?;
        let dir = tempfile::Builder::new()
            .prefix("vmk-sshkey-test")
            .tempdir()?;
        guest.copy_image(&dir.path().join("disk0"))?;
        let slot = VmSlot::reserve()?;
        let cfg = format!(
            "VMK_DISK0=disk0\nVMK_DISK0_FORMAT=raw\nVMK_KERNEL={}\nVMK_INITRD={}\nVMK_APPEND=\"{}\"\n\
             VMK_ACCEL=tcg\n{}VMK_MEM=768\n{extra}",
            guest.kernel.display(),
            guest.initrd.display(),
            guest.append,
            slot.config_line()
        );
        fs::write(dir.path().join("vm-config"), cfg)?;
        Ok(Vm {
            dir,
            guest,
            _slot: slot,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn tool(&self, bin: &Path, args: &[&str]) -> Result<Output> {
        let out = isolated(bin)
            .current_dir(self.path())
            .args(args)
            .env_remove("VMK_OPT_CONFIG")
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        eprintln!(
            "$ {} {}\n  -> {:?}\n  stdout: {}\n  stderr: {}",
            bin.file_name().unwrap().to_string_lossy(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// Starts the VM through the front door (`vmk run` or `vmk snap run`) and guards its qemu.
    fn vmk_run(&self, snap: bool) -> Result<QemuGuard> {
        let vmk = sibling_bin("vmk")?;
        sibling_bin(if snap { "vmk-snap" } else { "vmk-run" })?;
        let args: &[&str] = if snap { &["snap", "run"] } else { &["run"] };
        let out = self.tool(&vmk, args);
        let pidfile = self
            .path()
            .join(if snap { "snap-disk0.pid" } else { "disk0.pid" });
        let guard = QemuGuard::from_pidfile(&pidfile);
        let out = out?;
        ensure!(out.status.success(), "vmk {args:?} failed");
        guard
    }

    fn sshkey(&self, args: &[&str]) -> Result<Output> {
        self.tool(Path::new(env!("CARGO_BIN_EXE_vmk-sshkey")), args)
    }

    fn ok(&self, bin: &Path, args: &[&str]) -> Result<String> {
        let out = self.tool(bin, args)?;
        if !out.status.success() {
            bail!(
                "{} {args:?} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// `program` in the tests' private environment: its own HOME, runtime directory and no
/// system config (never the machine's ~/.ssh, ~/.vmkrc, /etc/vmk-config or /run/vmk).
fn isolated(program: impl AsRef<std::ffi::OsStr>) -> Command {
    vmk_testkit::isolation::shared_env()
        .expect("making the tests' private environment")
        .command(program)
}

/// Another workspace binary next to ours (target/debug/NAME).
fn sibling_bin(name: &str) -> Result<PathBuf> {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_vmk-sshkey"));
    let p = me.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} is not built: run `cargo build -p {name}` first",
            p.display()
        );
    }
    Ok(p)
}

/// The version string in a bzImage header (what `uname -r` prints in the guest).
fn kernel_version(kernel: &Path) -> Result<String> {
    let b = fs::read(kernel)?;
    let ptr = u16::from_le_bytes([b[0x20e], b[0x20f]]) as usize + 0x200;
    let end = b[ptr..]
        .iter()
        .position(|&c| c == b' ' || c == 0)
        .context("no version")?;
    Ok(String::from_utf8_lossy(&b[ptr..ptr + end]).into_owned())
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn loops_of(image: &Path) -> Result<String> {
    let out = Command::new("losetup").arg("-a").output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*image.to_string_lossy()))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn by_credential() -> Result<()> {
    let vm = Vm::new("")?;
    let public = vm.ok(Path::new(env!("CARGO_BIN_EXE_vmk-sshkey")), &["sshkeygen"])?;
    ensure!(public.ends_with("vm-key.pub"), "sshkeygen printed {public}");
    let mode = fs::metadata(vm.path().join("vm-key"))?.permissions();
    ensure!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o600);
    // A second sshkeygen refuses.
    let again = vm.sshkey(&["sshkeygen"])?;
    ensure!(
        again.status.code() == Some(1),
        "second sshkeygen must refuse"
    );
    let start = Instant::now();
    let qemu = vm.vmk_run(true)?;
    // The key goes in as an SMBIOS credential on qemu's command line (what qemu really got)
    let argv = fs::read(format!("/proc/{}/cmdline", qemu.pid()))?;
    let argv = String::from_utf8_lossy(&argv);
    let key = fs::read_to_string(vm.path().join("vm-key.pub"))?;
    let key_body = key
        .split_whitespace()
        .nth(1)
        .context("no key in vm-key.pub")?;
    ensure!(
        argv.contains("io.systemd.credential:ssh.authorized_keys.root=") && argv.contains(key_body),
        "qemu's argv carries no ssh.authorized_keys.root credential with vm-key.pub: {argv}"
    );
    let out = vm.sshkey(&[
        "waitssh",
        "--times",
        "--timeout",
        BOOT_TIMEOUT,
        "--",
        "uname",
        "-r",
    ])?;
    eprintln!("waitssh returned after {:.1?}", start.elapsed());
    ensure!(out.status.success(), "waitssh failed");
    let release = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expected = kernel_version(&vm.guest.kernel)?;
    ensure!(
        release == expected,
        "guest uname -r {release:?}, kernel is {expected:?}"
    );

    let out = vm.sshkey(&["ssh", "--", "exit 7"])?;
    ensure!(
        out.status.code() == Some(7),
        "ssh exit 7 gave {:?}",
        out.status
    );
    shell_on_a_terminal(&vm)?;

    let file = vm.path().join("payload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&file, data)?;
    vm.ok(
        Path::new(env!("CARGO_BIN_EXE_vmk-sshkey")),
        &["scp", file.to_str().unwrap(), "/root/payload.bin"],
    )?;
    let sum = vm.ok(
        Path::new(env!("CARGO_BIN_EXE_vmk-sshkey")),
        &["ssh", "--", "sha256sum /root/payload.bin"],
    )?;
    ensure!(sum.starts_with(&sha256(&file)?), "sha256 in guest {sum}");
    // sshfs: the guest's / at ./mnt-ssh.
    if vmk_testkit::can_run_part(
        "sshfs",
        &[Need::Program("sshfs"), Need::Program("fusermount")],
    )? {
        let mnt = vm.ok(Path::new(env!("CARGO_BIN_EXE_vmk-sshkey")), &["sshfs"])?;
        let host = fs::read_to_string(Path::new(&mnt).join("etc/hostname"));
        let st = Command::new("fusermount").arg("-u").arg(&mnt).status();
        ensure!(
            host?.trim() == "vmk-guest",
            "sshfs showed the wrong /etc/hostname"
        );
        ensure!(st?.success(), "fusermount -u {mnt} failed");
    }
    // The key came in as the credential: the image was never mounted (no mount state
    // file, and no loop device on it).
    ensure!(!vm.path().join("disk0.mount").exists());
    let loops = loops_of(&vm.path().join("disk0"))?;
    ensure!(loops.is_empty(), "disk0 is on a loop device: {loops}");
    drop(qemu);
    Ok(())
}

fn by_sshkeyput_and_putfile() -> Result<()> {
    let vm = Vm::new("VMK_SSH_CREDENTIAL=no\n")?;
    let mount_bin = sibling_bin("vmk-mount")?;
    let sshkey = PathBuf::from(env!("CARGO_BIN_EXE_vmk-sshkey"));
    vm.ok(&sshkey, &["sshkeygen"])?;
    vm.ok(&sshkey, &["sshkeyput", "--backend", "kernel"])?;
    let image = vm.path().join("disk0");
    ensure!(
        !vm.path().join("disk0.mount").exists(),
        "state file left behind"
    );
    ensure!(
        loops_of(&image)?.is_empty(),
        "loop device left: {}",
        loops_of(&image)?
    );
    let note = vm.path().join("note.txt");
    fs::write(&note, "put by vmk putfile\n")?;
    let put = vm.ok(&mount_bin, &["putfile", note.to_str().unwrap()])?;
    ensure!(put == "/root/vm/note.txt", "putfile printed {put}");
    ensure!(
        loops_of(&image)?.is_empty(),
        "loop device left after putfile"
    );

    let _qemu = vm.vmk_run(false)?;
    vm.ok(&sshkey, &["waitssh", "--timeout", BOOT_TIMEOUT])?;
    let text = vm.ok(
        &sshkey,
        &[
            "ssh",
            "--",
            "cat /root/vm/note.txt; stat -c %a /root/.ssh/authorized_keys",
        ],
    )?;
    ensure!(text == "put by vmk putfile\n600", "guest said {text:?}");
    // The credential was off: qemu was not given the key.
    let cmdline = fs::read(format!("/proc/{}/cmdline", _qemu.pid()))?;
    ensure!(!String::from_utf8_lossy(&cmdline).contains("ssh.authorized_keys"));
    Ok(())
}

/// A VM directory whose vm-config names disk0 and a VM number reserved for this test.
fn slot_vm_dir() -> Result<(tempfile::TempDir, VmSlot)> {
    let dir = tempfile::tempdir()?;
    let slot = VmSlot::reserve()?;
    fs::write(
        dir.path().join("vm-config"),
        format!("VMK_DISK0=disk0\n{}", slot.config_line()),
    )?;
    Ok((dir, slot))
}

fn waitssh_times_out_clearly() -> Result<()> {
    // a reserved number: nothing listens on its ssh port
    let (dir, slot) = slot_vm_dir()?;
    let vm = Vm {
        dir,
        _slot: slot,
        guest: DebianGuest {
            image: PathBuf::new(),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            append: String::new(),
            exec_init: "",
        },
    };
    vm.ok(Path::new(env!("CARGO_BIN_EXE_vmk-sshkey")), &["sshkeygen"])?;
    let start = Instant::now();
    let out = vm.sshkey(&["waitssh", "--timeout", "2", "--", "true"])?;
    let took = start.elapsed();
    ensure!(out.status.code() == Some(1));
    // a hang guard only (how close to 2 s it ends is measured by bench/timeouts.sh)
    ensure!(took < Duration::from_secs(60), "timeout 2 took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("did not answer within 2s"), "stderr: {err}");
    // ssh without a running VM is ssh's own connection failure: 255.
    let out = vm.sshkey(&["ssh", "--", "true"])?;
    ensure!(
        out.status.code() == Some(255),
        "ssh to nothing gave {:?}",
        out.status
    );
    Ok(())
}

fn no_key_is_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("vm-config"), "VMK_DISK0=disk0\n")?;
    let out = isolated(env!("CARGO_BIN_EXE_vmk-sshkey"))
        .current_dir(dir.path())
        .args(["ssh", "--", "true"])
        .output()?;
    ensure!(out.status.code() == Some(1));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("vmk sshkeygen"));
    let dry = isolated(env!("CARGO_BIN_EXE_vmk-sshkey"))
        .current_dir(dir.path())
        .args(["-D", "sshkeygen", "-t", "rsa"])
        .output()?;
    let s = String::from_utf8_lossy(&dry.stdout);
    ensure!(s.contains("-t rsa") && s.contains("vm-key"), "{s}");
    ensure!(!dir.path().join("vm-key").exists());
    Ok(())
}

/// The known_hosts lines for the alias vmk gives the guest.
fn alias_lines(known_hosts: &Path) -> Result<Vec<String>> {
    Ok(fs::read_to_string(known_hosts)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("vmk-vm"))
        .map(str::to_string)
        .collect())
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Hides the pidfile of disk0 while alive, so that vmk sees no running VM (the guard and
/// the guest keep running); puts it back on drop.
struct HiddenPidfile(PathBuf);

impl HiddenPidfile {
    fn new(pidfile: &Path) -> Result<HiddenPidfile> {
        let hidden = pidfile.with_extension("pid.hidden");
        fs::rename(pidfile, &hidden)?;
        Ok(HiddenPidfile(hidden))
    }
}

impl Drop for HiddenPidfile {
    fn drop(&mut self) {
        let _ = fs::rename(&self.0, self.0.with_extension(""));
    }
}

fn host_key_learned_then_checked() -> Result<()> {
    let vm = Vm::new("")?;
    let sshkey = PathBuf::from(env!("CARGO_BIN_EXE_vmk-sshkey"));
    vm.ok(&sshkey, &["sshkeygen"])?;
    let known_hosts = vm.path().join("vm-known_hosts");
    ensure!(!known_hosts.exists());
    let _qemu = vm.vmk_run(false)?;

    // While vmk runs the VM, ssh may learn the key (accept-new), under the alias.
    let dry = vm.ok(&sshkey, &["-D", "ssh", "--", "true"])?;
    ensure!(
        dry.contains("StrictHostKeyChecking=accept-new")
            && dry.contains("HostKeyAlias=vmk-vm")
            && dry.contains(&format!("UserKnownHostsFile={}", known_hosts.display())),
        "dry run while running: {dry}"
    );
    vm.ok(&sshkey, &["waitssh", "--timeout", BOOT_TIMEOUT])?;
    vm.ok(&sshkey, &["ssh", "--", "true"])?;
    let learned = alias_lines(&known_hosts)?;
    ensure!(
        !learned.is_empty(),
        "no vmk-vm line in {}",
        known_hosts.display()
    );
    let text = fs::read_to_string(&known_hosts)?;
    ensure!(
        !text.contains("127.0.0.1") && !text.contains('['),
        "the key is tied to the address or port: {text}"
    );
    // It is the guest's own key.
    let guest_key = vm.ok(
        &sshkey,
        &["ssh", "--", "cat /etc/ssh/ssh_host_ed25519_key.pub"],
    )?;
    let blob = guest_key
        .split_whitespace()
        .nth(1)
        .context("no key in the guest's ssh_host_ed25519_key.pub")?;
    ensure!(
        learned.iter().any(|l| l.contains(blob)),
        "known_hosts {learned:?} lacks the guest's key {blob}"
    );
    // A second contact works and learns nothing new.
    vm.ok(&sshkey, &["ssh", "--", "true"])?;
    ensure!(
        fs::read_to_string(&known_hosts)? == text,
        "known_hosts changed"
    );

    // Per the pidfile the VM does not run: checks are strict; the known key still passes,
    // an unknown one is refused (nothing learned).
    {
        let _hidden = HiddenPidfile::new(&vm.path().join("disk0.pid"))?;
        let dry = vm.ok(&sshkey, &["-D", "ssh", "--", "true"])?;
        ensure!(dry.contains("StrictHostKeyChecking=yes"), "{dry}");
        vm.ok(&sshkey, &["ssh", "--", "true"])?;
        fs::rename(&known_hosts, known_hosts.with_extension("saved"))?;
        let out = vm.sshkey(&["ssh", "--", "true"])?;
        fs::rename(known_hosts.with_extension("saved"), &known_hosts)?;
        ensure!(
            out.status.code() == Some(1),
            "unknown key: {:?}",
            out.status
        );
        let err = stderr_of(&out);
        ensure!(
            err.contains("no host key of this VM is known yet") && err.contains("vmk run"),
            "{err}"
        );
    }
    ensure!(
        fs::read_to_string(&known_hosts)? == text,
        "known_hosts changed"
    );

    // Another key recorded: ssh, scp and waitssh refuse with exit 1 and say what to do.
    let other = tempfile::tempdir()?;
    vmk_testkit::ssh_keygen(&other.path().join("host"))?;
    let other_pub = fs::read_to_string(other.path().join("host.pub"))?;
    let mut w = other_pub.split_whitespace();
    let forged = format!(
        "vmk-vm {} {}\n",
        w.next().context("key type")?,
        w.next().context("key")?
    );
    fs::write(&known_hosts, &forged)?;
    let want = format!(
        "the guest's host key changed since vmk first saw it ({})",
        known_hosts.display()
    );
    let payload = vm.path().join("payload.txt");
    fs::write(&payload, "x\n")?;
    for args in [
        &["ssh", "--", "true"][..],
        &["scp", payload.to_str().unwrap(), "/root/"][..],
        &["waitssh", "--timeout", "60", "--", "true"][..],
    ] {
        let start = Instant::now();
        let out = vm.sshkey(args)?;
        let err = stderr_of(&out);
        ensure!(out.status.code() == Some(1), "{args:?}: {:?}", out.status);
        ensure!(
            err.contains(&want) && err.contains("remove that file"),
            "{args:?}: {err}"
        );
        ensure!(
            start.elapsed() < Duration::from_secs(50),
            "{args:?} waited instead of failing"
        );
    }
    ensure!(
        fs::read_to_string(&known_hosts)? == forged,
        "the recorded key was replaced"
    );
    // The advice works: without the file, the running VM's key is learned again.
    fs::remove_file(&known_hosts)?;
    vm.ok(&sshkey, &["ssh", "--", "true"])?;
    ensure!(
        alias_lines(&known_hosts)? == learned,
        "relearned another key"
    );
    Ok(())
}

/// No VM runs per the pidfile: every command's options check the host key strictly
/// against the VM's known_hosts file under the alias; nothing says StrictHostKeyChecking=no.
fn not_running_means_strict_checking() -> Result<()> {
    let (dir, _slot) = slot_vm_dir()?;
    let run = |args: &[&str]| -> Result<Output> {
        Ok(isolated(env!("CARGO_BIN_EXE_vmk-sshkey"))
            .current_dir(dir.path())
            .env_remove("VMK_OPT_CONFIG")
            .env_remove("VMK_OPT_DRY_RUN")
            .args(args)
            .output()?)
    };
    ensure!(run(&["sshkeygen"])?.status.success());
    // A stale pidfile (a live process that is not this VM's qemu) is not a running VM.
    fs::write(
        dir.path().join("disk0.pid"),
        format!("{}\n", std::process::id()),
    )?;
    fs::write(
        dir.path().join("snap-disk0.pid"),
        format!("{}\n", std::process::id()),
    )?;
    let kh = format!(
        "UserKnownHostsFile={}",
        dir.path().join("vm-known_hosts").display()
    );
    for args in [
        &["-D", "ssh", "--", "true"][..],
        &["-D", "ssh"][..],
        &["-D", "scp", "a", "/root/"][..],
        &["-D", "sshfs"][..],
        &["-D", "scpkeyput"][..],
        &["-D", "waitssh", "--", "true"][..],
    ] {
        let out = run(args)?;
        ensure!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        );
        ensure!(
            text.contains("StrictHostKeyChecking=yes")
                && text.contains(&kh)
                && text.contains("HostKeyAlias=vmk-vm")
                && text.contains("GlobalKnownHostsFile=/dev/null"),
            "{args:?}: {text}"
        );
        ensure!(
            !text.contains("StrictHostKeyChecking=no")
                && !text.contains("accept-new")
                && !text.contains("UserKnownHostsFile=/dev/null"),
            "{args:?}: {text}"
        );
    }
    Ok(())
}

/// `waitssh` with no command: a shell once ssh answers when stdin is a terminal (as the
/// original), only the wait for a script. Seen in a dry run: on a pseudo-terminal (made by
/// `script`) it prints the interactive ssh (`-t`), with stdin from /dev/null nothing.
fn waitssh_without_command_is_a_shell_on_a_terminal() -> Result<()> {
    let (dir, _slot) = slot_vm_dir()?;
    let bin = env!("CARGO_BIN_EXE_vmk-sshkey");
    let out = isolated(bin)
        .current_dir(dir.path())
        .arg("sshkeygen")
        .output()?;
    ensure!(out.status.success(), "sshkeygen: {}", stderr_of(&out));
    let script = isolated(bin)
        .current_dir(dir.path())
        .args(["-D", "waitssh"])
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(script.status.success(), "{}", stderr_of(&script));
    ensure!(
        script.stdout.is_empty(),
        "without a terminal waitssh only waits, yet it would run: {}",
        String::from_utf8_lossy(&script.stdout)
    );
    let tty = isolated("script")
        .current_dir(dir.path())
        .args(["-qec", &format!("{bin} -D waitssh"), "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&tty.stdout);
    ensure!(
        tty.status.success(),
        "on a terminal: {text}{}",
        stderr_of(&tty)
    );
    let shell = text
        .lines()
        .find(|l| l.starts_with("ssh ") || l.contains("/ssh "))
        .with_context(|| format!("no interactive ssh on a terminal: {text}"))?;
    ensure!(
        shell.split_whitespace().any(|w| w == "-t"),
        "the shell's ssh has no terminal (-t): {shell}"
    );
    Ok(())
}

/// `waitssh` with no command, in a real terminal (tmux): a shell in the guest on a pty of
/// its own; what is typed reaches it, its exit status comes back, and the terminal's
/// settings are as before.
fn shell_on_a_terminal(vm: &Vm) -> Result<()> {
    let env = vmk_testkit::isolation::shared_env()?;
    let term = in_terminal(
        env,
        "waitssh",
        vm.path(),
        &format!("'{}' waitssh", env!("CARGO_BIN_EXE_vmk-sshkey")),
    )?;
    // the guest's prompt (`root@vmk-guest:~#`), then a command line typed at it
    term.wait_for("@vmk-guest", Duration::from_secs(120))?;
    term.send(&["tty; echo typed-$((6*7)); exit 3", "Enter"])?;
    let screen = term.wait_for("typed-42", Duration::from_secs(120))?;
    ensure!(
        screen.contains("/dev/pts/"),
        "the guest's shell has no terminal:\n{screen}"
    );
    ended_with_terminal_restored(vm.path(), 3)
}

fn main() -> std::process::ExitCode {
    run_system_tests(vec![
        SystemTest::new(
            "waitssh_without_command_is_a_shell_on_a_terminal",
            &[Need::Ssh, Need::Program("script")],
            waitssh_without_command_is_a_shell_on_a_terminal,
        ),
        SystemTest::new(
            "no_key_is_a_clear_error",
            &[Need::Ssh],
            no_key_is_a_clear_error,
        ),
        SystemTest::new(
            "waitssh_times_out_clearly",
            &[Need::Ssh],
            waitssh_times_out_clearly,
        ),
        SystemTest::new(
            "not_running_means_strict_host_key_checking",
            &[],
            not_running_means_strict_checking,
        ),
        SystemTest::new(
            "debian_host_key_learned_then_checked_changed_key_refused",
            &[Need::Root, Need::Qemu, Need::Debootstrap, Need::Ssh],
            host_key_learned_then_checked,
        ),
        SystemTest::new(
            "debian_key_by_credential_ssh_waitssh_scp",
            &[
                Need::Root,
                Need::Qemu,
                Need::Debootstrap,
                Need::Ssh,
                Need::Program("tmux"),
            ],
            by_credential,
        ),
        SystemTest::new(
            "debian_key_by_sshkeyput_and_putfile",
            &[Need::Root, Need::Qemu, Need::Debootstrap, Need::Ssh],
            by_sshkeyput_and_putfile,
        ),
    ])
}
