//! vmk-run against real qemu (TCG): the Debian guest from `run` to its login prompt,
//! `info --json`, `isrunning`, a piped `console`, a graceful `stop`; two busybox VMs side
//! by side in `ps` and a third refused for its port; `kill` never signalling a pid that is
//! not the VM's qemu; the serial console over TCP with VMK_CONSOLE=telnet. Every qemu
//! started is guarded by its pid.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::guest;
use vmk_testkit::isolation::{as_nobody, TestEnv, VmSlot, NOBODY};
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::terminal::{ended_with_terminal_restored, in_terminal};
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// Two slow cores shared with other tests: be generous.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> std::process::ExitCode {
    let bb = &[Need::Qemu, Need::Busybox, Need::Kernel];
    let deb = &[Need::Qemu, Need::Debootstrap];
    run_system_tests(vec![
        SystemTest::new(
            "debian_run_info_console_stop",
            &[Need::Qemu, Need::Debootstrap],
            debian_lifecycle,
        ),
        SystemTest::new(
            "accel_auto_ends_with_a_running_guest_even_where_kvm_is_broken",
            bb,
            accel_auto_runs,
        ),
        SystemTest::new(
            "accel_auto_starts_again_under_tcg_when_qemu_dies_of_kvm",
            &[
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::File("/dev/kvm", "the kvm kernel module"),
            ],
            accel_auto_restarts_under_tcg,
        ),
        SystemTest::new("two_vms_in_ps_and_a_port_clash_refused", bb, two_vms),
        SystemTest::new("debian_boots_on_scsi_by_default", deb, || {
            boots_on_bus(None, "sda")
        }),
        SystemTest::new(
            "readme_original_hardware_boots_to_login",
            deb,
            original_hardware_boots,
        ),
        SystemTest::new(
            "guest_with_dev_sda_in_cmdline_and_fstab_boots_on_the_default_bus_without_vmk_accel",
            &[Need::Qemu, Need::Debootstrap, Need::Program("debugfs")],
            dev_sda_guest_boots,
        ),
        SystemTest::new(
            "original_newconfig_vm_boots_with_its_iso_and_disk0_on_scsi",
            &[
                Need::Qemu,
                Need::Debootstrap,
                Need::Program("genisoimage"),
                Need::Program("ssh-keygen"),
            ],
            original_newconfig_boots,
        ),
        SystemTest::new("debian_boots_on_lsi", deb, || {
            boots_on_bus(Some("lsi"), "sda")
        }),
        SystemTest::new("debian_boots_on_ide", deb, || {
            boots_on_bus(Some("ide"), "sda")
        }),
        SystemTest::new("debian_boots_on_nvme", deb, || {
            boots_on_bus(Some("nvme"), "nvme0n1")
        }),
        SystemTest::new(
            "cloud_init_guest_takes_hostname_and_key_from_the_seed",
            &[
                Need::Qemu,
                Need::Debootstrap,
                Need::Ssh,
                Need::Program("isoinfo"),
            ],
            cloud_init_guest_takes_the_seed,
        ),
        SystemTest::new("kill_never_signals_an_unrelated_pid", bb, kill_unrelated),
        SystemTest::new(
            "kernel_alone_boots_without_the_configs_initrd",
            bb,
            kernel_alone_boots_without_the_configs_initrd,
        ),
        SystemTest::new(
            "a_users_vm_writes_its_9p_share_as_that_user",
            &[
                Need::Root,
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("setpriv"),
            ],
            a_users_vm_writes_its_share_as_that_user,
        ),
        SystemTest::new(
            "sockets_are_the_owners_alone_and_console_works_for_the_owner",
            &[
                Need::Root,
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("setpriv"),
                Need::Program("python3"),
            ],
            sockets_are_the_owners,
        ),
        SystemTest::new(
            "telnet_console_reaches_the_guest_over_tcp_on_loopback",
            bb,
            telnet_console,
        ),
        SystemTest::new(
            "runin_in_a_terminal_tells_how_to_leave_and_restores_it",
            &[
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("tmux"),
            ],
            runin_in_a_terminal,
        ),
        SystemTest::new(
            "runin_with_a_virtiofs_share_ends_its_virtiofsd",
            &[
                Need::Root,
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("tmux"),
                Need::File("/usr/lib/qemu/virtiofsd", "qemu-system-common"),
            ],
            runin_ends_its_virtiofsd,
        ),
        SystemTest::new(
            "console_in_a_terminal_detaches_with_ctrl_bracket",
            &[
                Need::Qemu,
                Need::Busybox,
                Need::Kernel,
                Need::Program("tmux"),
            ],
            console_in_a_terminal,
        ),
    ])
}

/// Runs vmk-run in `dir` in the test's environment `env` (its own HOME, runtime directory
/// and no system config); the VM's config alone says VMK_VNC and VMK_ACCEL (every config
/// here sets tcg, but one that tests `auto`).
fn vmk_run(env: &TestEnv, dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmk-run"));
    // VMK_ACCEL is the one variable a TestEnv passes on: here the config decides.
    cmd.args(args).current_dir(dir).env_remove("VMK_ACCEL");
    env.run_command_logged(&mut cmd, stdin)
}

fn ok(out: &Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_config(dir: &Path, body: &str) -> Result<()> {
    std::fs::write(dir.join("vm-config"), body)?;
    Ok(())
}

fn busybox_vm(dir: &Path, vnc: u8) -> Result<PathBuf> {
    busybox_vm_with(dir, vnc, "")
}

/// [`busybox_vm`] with `more` lines at the end of its config.
fn busybox_vm_with(dir: &Path, vnc: u8, more: &str) -> Result<PathBuf> {
    let g = guest::busybox_guest()?;
    std::fs::File::create(dir.join("disk0.raw"))?.set_len(64 << 20)?;
    write_config(
        dir,
        &format!(
            "VMK_NAME=bb{vnc}\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\nVMK_CPU=1\n\
             VMK_ACCEL=tcg\nVMK_VNC={vnc}\nVMK_KERNEL='{}'\nVMK_INITRD='{}'\nVMK_APPEND='{}'\n{more}",
            g.kernel.display(),
            g.initrd.display(),
            g.append
        ),
    )?;
    Ok(dir.join("disk0.raw.pid"))
}

/// `vmk run ARGS` of the busybox VM in `dir`, which must succeed: its qemu's guard (armed
/// from the pidfile whatever vmk said) and what vmk printed on stdout.
fn start_busybox(env: &TestEnv, dir: &Path, args: &[&str]) -> Result<(QemuGuard, String)> {
    let out = vmk_run(env, dir, args, None)?;
    let guard = QemuGuard::from_pidfile(&dir.join("disk0.raw.pid"));
    let stdout = ok(&out)?;
    Ok((guard?, stdout))
}

/// A VM directory `dir` with a copy of the Debian guest as disk0.img (raw), VM number
/// `vnc`, tcg, and `more` config lines.
fn debian_vm(dir: &Path, vnc: u8, more: &str) -> Result<()> {
    let g = vmk_testguest::debian_guest()?;
    g.copy_image(&dir.join("disk0.img"))?;
    write_config(
        dir,
        &format!(
            "VMK_NAME=deb{vnc}\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_MEM=1G\nVMK_CPU=2\n\
             VMK_ACCEL=tcg\nVMK_VNC={vnc}\nVMK_KERNEL='{}'\nVMK_INITRD='{}'\nVMK_APPEND='{}'\n{more}",
            g.kernel.display(),
            g.initrd.display(),
            g.append
        ),
    )
}

fn debian_lifecycle() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    debian_vm(dir, slot.number(), "")?;
    let t0 = Instant::now();
    let out = vmk_run(&env, dir, &["run", "--json"], None)?;
    let guard = QemuGuard::from_pidfile(&dir.join("disk0.img.pid"));
    let started: serde_json::Value = serde_json::from_str(&ok(&out)?)?;
    let mut guard = guard?;
    let pid = started["pid"].as_u64().context("run --json has no pid")?;
    ensure!(
        pid == guard.pid() as u64,
        "run --json pid {pid} is not the pidfile's"
    );
    eprintln!("vmk run returned after {:.2?}", t0.elapsed());
    let log = dir.join("disk0.img.console.log");
    let took = guest::wait_for_file_line(&log, "login:", BOOT_TIMEOUT)?;
    eprintln!("login prompt after {took:.1?}");

    let info: serde_json::Value =
        serde_json::from_str(&ok(&vmk_run(&env, dir, &["info", "--json"], None)?)?)?;
    ensure!(info["state"] == "running", "info says {}", info["state"]);
    ensure!(
        info["pid"].as_u64() == Some(pid),
        "info pid {}",
        info["pid"]
    );
    ensure!(info["console_port"].is_null(), "{}", info["console_port"]);
    ensure!(
        info["console_socket"] == dir.join("disk0.img.con").to_str().unwrap(),
        "{}",
        info["console_socket"]
    );
    ensure!(vmk_run(&env, dir, &["isrunning"], None)?.status.code() == Some(0));
    // `status` (info's alias, as the original's) says it in words, with the pid
    let status = ok(&vmk_run(&env, dir, &["status"], None)?)?;
    ensure!(
        status.contains(&format!("running, pid {pid}")),
        "status does not say running with qemu's pid {pid}: {status}"
    );

    let out = console_says(&env, dir, "console", "5", "\n", "login:")?;
    ensure!(
        !out.as_bytes().contains(&255),
        "telnet negotiation leaked: {out:?}"
    );

    let t = Instant::now();
    let out = vmk_run(&env, dir, &["stop", "--timeout", "120"], None)?;
    ok(&out)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("powered off"),
        "not a graceful power-off: {stderr}"
    );
    eprintln!("stop took {:.1?}", t.elapsed());
    ensure!(!guard.is_running(), "qemu still runs after stop");
    ensure!(vmk_run(&env, dir, &["isrunning"], None)?.status.code() == Some(1));
    ensure!(!dir.join("disk0.img.pid").exists(), "pidfile left behind");
    ensure!(
        !dir.join("disk0.img.qmp").exists(),
        "QMP socket left behind"
    );
    Ok(())
}

/// A busybox VM in `dir` whose config has no VMK_ACCEL (and `more` lines), started with
/// `vmk run`: the guard of its qemu and what vmk-run printed on stderr.
fn run_busybox_auto(env: &TestEnv, dir: &Path, vnc: u8, more: &str) -> Result<(QemuGuard, String)> {
    let pidfile = busybox_vm(dir, vnc)?;
    let config = std::fs::read_to_string(dir.join("vm-config"))?;
    write_config(dir, &(config.replace("VMK_ACCEL=tcg\n", "") + more))?;
    let out = vmk_run(env, dir, &["run"], None)?;
    let guard = QemuGuard::from_pidfile(&pidfile);
    ok(&out)?;
    Ok((guard?, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// A user who never sets VMK_ACCEL gets a running guest: with KVM where it works, and
/// where /dev/kvm opens but KVM does not run guests (nested virtualisation, as on this
/// project's CI machines), with tcg after a one-line warning that says so.
fn accel_auto_runs() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    let (mut guard, stderr) = run_busybox_auto(&env, dir, slot.number(), "")?;
    let vmk = |args: &[&str]| vmk_run(&env, dir, args, None);
    let log = dir.join("disk0.raw.console.log");
    let took = guest::wait_for_file_line(&log, guest::BUSYBOX_READY, BOOT_TIMEOUT)?;
    eprintln!("guest ready after {took:.1?}");
    let info: serde_json::Value = serde_json::from_str(&ok(&vmk(&["info", "--json"])?)?)?;
    ensure!(info["accel"] == "auto", "info: accel {}", info["accel"]);
    let resolved = info["accel_resolved"].as_str().unwrap_or_default();
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match resolved {
        // the guest reached its shell under kvm: kvm works here
        "kvm" => ensure!(kvm_opens, "kvm chosen but /dev/kvm does not open"),
        "tcg" if kvm_opens => {
            let warnings: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("unusable") || l.contains("died under KVM"))
                .collect();
            ensure!(
                warnings.len() == 1 && warnings[0].contains("tcg"),
                "kvm opens, tcg was chosen, but not with one warning saying why: {stderr}"
            );
            let setup = vmk(&["checksetup"])?;
            let text = String::from_utf8_lossy(&setup.stdout);
            ensure!(
                text.lines()
                    .any(|l| l.contains("kvm") && l.contains("present but unusable")),
                "checksetup does not say that KVM is present but unusable: {text}"
            );
        }
        "tcg" => ensure!(
            stderr.contains("/dev/kvm is not usable"),
            "no warning about tcg: {stderr}"
        ),
        other => anyhow::bail!("accel resolved to {other:?}"),
    }
    ok(&vmk(&["kill"])?)?;
    ensure!(!guard.is_running(), "kill left qemu running");
    Ok(())
}

/// Where KVM's probe passes but qemu then dies of KVM at start (nested virtualisation: the
/// probe's firmware runs, the guest's vCPU setup aborts with "failed to set MSR 0x10a"),
/// `auto` starts qemu again under tcg with one warning, and the guest runs. KVM on this
/// project's machines stalls rather than aborting, so the failure is qemu's own message from
/// a wrapper (VMK_QEMU) that answers the probe as a working KVM, fails every start under
/// KVM, and runs the real qemu otherwise; it logs each call, the proof that vmk tried KVM
/// first. `info` then says tcg: what the running qemu got (QMP query-kvm).
fn accel_auto_restarts_under_tcg() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    let real = vmk_testkit::which("qemu-system-x86_64").context("no qemu-system-x86_64")?;
    let calls = dir.join("qemu-calls");
    let wrapper = dir.join("qemu-dies-of-kvm");
    vmk_testkit::write_executable(
        &wrapper,
        &format!(
            r#"#!/bin/sh
case " $* " in
*" -debugcon "*) echo probe >> '{calls}'; echo 'No bootable device.'; exec sleep 30 ;;
*accel=kvm*) echo kvm >> '{calls}'
    echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000001c0c6b' >&2
    exit 1 ;;
esac
echo other >> '{calls}'
exec '{real}' "$@"
"#,
            calls = calls.display(),
            real = real.display()
        ),
    )?;
    let more = format!("VMK_QEMU='{}'\n", wrapper.display());
    let (mut guard, stderr) = run_busybox_auto(&env, dir, slot.number(), &more)?;
    let vmk = |args: &[&str]| vmk_run(&env, dir, args, None);
    let calls_made = std::fs::read_to_string(&calls)?;
    ensure!(
        calls_made.lines().collect::<Vec<_>>() == ["probe", "kvm", "other"],
        "vmk did not probe, try kvm, then start again: {calls_made:?}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("died under KVM"))
        .collect();
    ensure!(
        warnings.len() == 1
            && warnings[0].contains("failed to set MSR 0x10a")
            && warnings[0].contains("tcg"),
        "not one warning naming qemu's error and tcg: {stderr}"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", guard.pid()))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    ensure!(
        cmdline.contains("accel=tcg") && !cmdline.contains("accel=kvm"),
        "qemu runs with {cmdline}"
    );
    let log = dir.join("disk0.raw.console.log");
    let took = guest::wait_for_file_line(&log, guest::BUSYBOX_READY, BOOT_TIMEOUT)?;
    eprintln!("guest ready under tcg after {took:.1?}");
    let info: serde_json::Value = serde_json::from_str(&ok(&vmk(&["info", "--json"])?)?)?;
    ensure!(
        info["accel"] == "auto" && info["accel_resolved"] == "tcg",
        "info: accel {} resolved {}",
        info["accel"],
        info["accel_resolved"]
    );
    ok(&vmk(&["kill"])?)?;
    ensure!(!guard.is_running(), "kill left qemu running");
    Ok(())
}

/// `vmk run` in `dir` (disk0.img), then the guest's login prompt on its console: the guard
/// of its qemu and the console's text so far.
fn run_to_login(env: &TestEnv, dir: &Path, what: &str) -> Result<(QemuGuard, String)> {
    let out = vmk_run(env, dir, &["run"], None)?;
    let guard = QemuGuard::from_pidfile(&dir.join("disk0.img.pid"));
    ok(&out)?;
    let guard = guard?;
    let log = dir.join("disk0.img.console.log");
    let took = guest::wait_for_file_line(&log, "login:", BOOT_TIMEOUT)?;
    eprintln!("{what}: login prompt after {took:.1?}");
    Ok((guard, std::fs::read_to_string(&log)?))
}

/// `vmk COMMAND --wait WAIT` (`console` or its alias `telnet`) with `input` on stdin: what
/// it printed, which must hold `answer` (what the guest gives back).
fn console_says(
    env: &TestEnv,
    dir: &Path,
    command: &str,
    wait: &str,
    input: &str,
    answer: &str,
) -> Result<String> {
    let said = ok(&vmk_run(
        env,
        dir,
        &[command, "--wait", wait],
        Some(input.as_bytes()),
    )?)?;
    ensure!(
        said.contains(answer),
        "no {answer:?} from the guest through `vmk {command}`: {said:?}"
    );
    Ok(said)
}

/// `vmk kill`, and qemu is gone.
fn kill_and_check(env: &TestEnv, dir: &Path, guard: &mut QemuGuard) -> Result<()> {
    ok(&vmk_run(env, dir, &["kill"], None)?)?;
    ensure!(!guard.is_running(), "kill left qemu running");
    Ok(())
}

/// The VMK_* lines of README's section "Coming from the original vmk".
fn readme_original_hardware() -> Result<String> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme)?;
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Coming from the original vmk"))
        .context("README has no section \"Coming from the original vmk\"")?;
    let lines: Vec<&str> = section.lines().filter(|l| l.starts_with("VMK_")).collect();
    ensure!(lines.len() == 4, "README gives {lines:?}");
    Ok(lines.join("\n") + "\n")
}

/// A guest booted with exactly README's lines for the original's hardware (pc, lsi, e1000,
/// localtime) reaches its login prompt, with its root on the LSI controller's sda (the
/// e1000 card is checked on qemu's command line: the guest loads its driver from the root
/// filesystem after its console went quiet, so the console does not show it).
fn original_hardware_boots() -> Result<()> {
    let env = TestEnv::new()?;
    let lines = readme_original_hardware()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    debian_vm(dir, slot.number(), &lines)?;
    let (mut guard, text) = run_to_login(&env, dir, "original hardware")?;
    let args = argv_of(guard.pid())?;
    for want in ["pc,accel=tcg", "lsi53c895a,id=scsi0", "base=localtime"] {
        ensure!(
            args.iter().any(|a| a == want),
            "qemu runs without {want}: {args:?}"
        );
    }
    ensure!(
        args.iter().any(|a| a.starts_with("e1000,netdev=net0")),
        "qemu runs without an e1000: {args:?}"
    );
    for (what, line) in [
        ("the LSI controller", "sym0: <895a>"),
        ("root on sda", "EXT4-fs (sda): mounted filesystem"),
    ] {
        ensure!(text.contains(line), "the guest shows no {what} ({line:?})");
    }
    kill_and_check(&env, dir, &mut guard)
}

/// A guest installed the original's way names its root `/dev/sda` on its kernel command
/// line and in /etc/fstab: it boots to its login prompt on the default bus, started
/// without VMK_ACCEL (on a host where KVM is broken, as CI's, `auto` falls back to tcg).
fn dev_sda_guest_boots() -> Result<()> {
    let env = TestEnv::new()?;
    let g = vmk_testguest::debian_guest()?;
    let slot = VmSlot::reserve()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let image = dir.join("disk0.img");
    g.copy_image(&image)?;
    let fstab = dir.join("fstab");
    std::fs::write(&fstab, "/dev/sda / ext4 rw,errors=remount-ro 0 1\n")?;
    let cmds = dir.join("debugfs.cmd");
    std::fs::write(
        &cmds,
        format!("rm /etc/fstab\nwrite {} /etc/fstab\n", fstab.display()),
    )?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(&image)
        .output()?;
    ensure!(out.status.success(), "debugfs: {out:?}");
    let check = Command::new("debugfs")
        .args(["-R", "cat /etc/fstab"])
        .arg(&image)
        .output()?;
    let written = String::from_utf8_lossy(&check.stdout);
    ensure!(
        written.starts_with("/dev/sda / ext4"),
        "fstab is {written:?}"
    );
    write_config(
        dir,
        &format!(
            "VMK_NAME=sda\nVMK_DISK0=disk0.img\nVMK_MEM=1G\nVMK_VNC={}\nVMK_KERNEL='{}'\n\
             VMK_INITRD='{}'\nVMK_APPEND='console=ttyS0 root=/dev/sda rw'\n",
            slot.number(),
            g.kernel.display(),
            g.initrd.display(),
        ),
    )?;
    let (mut guard, text) = run_to_login(&env, dir, "/dev/sda guest")?;
    ensure!(
        text.contains("EXT4-fs (sda): mounted filesystem"),
        "root was not mounted from sda"
    );
    ensure!(
        !text.contains("emergency mode") && !text.contains("Dependency failed"),
        "the guest did not boot cleanly from its /dev/sda fstab"
    );
    kill_and_check(&env, dir, &mut guard)
}

/// A VM directory exactly as the original's `newconfig` made it (a `#!/bin/sh` script,
/// disk0 `name.qcow2`, `VMK_ISO=product-base.iso`), with no VMK_ACCEL anywhere: `vmk run
/// --exec` boots it, and the guest itself says its root is on sda (SCSI, the default bus)
/// and reads the ISO's file from its CD-ROM. Only the VM number (a free test slot, not 63)
/// and three kernel lines are added: the original's VMs were installed from the ISO with a
/// bootloader inside; the test guest's disk has none and boots its kernel directly.
fn original_newconfig_boots() -> Result<()> {
    let env = TestEnv::new()?;
    let g = vmk_testguest::debian_guest()?;
    let slot = VmSlot::reserve()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let config = vmk_testkit::ORIGINAL_NEWCONFIG.replace(
        "export VMK_VNC=63\n",
        &format!("export VMK_VNC={}\n", slot.number()),
    );
    ensure!(
        config != vmk_testkit::ORIGINAL_NEWCONFIG,
        "no VMK_VNC=63 line"
    );
    write_config(
        dir,
        &format!(
            "{config}VMK_KERNEL='{}'\nVMK_INITRD='{}'\nVMK_APPEND='{}'\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append
        ),
    )?;
    let raw = dir.join("debian.img");
    g.copy_image(&raw)?;
    vmk_testkit::run_ok({
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join("name.qcow2"));
        c
    })?;
    std::fs::remove_file(&raw)?;
    let medium = dir.join("medium");
    std::fs::create_dir(&medium)?;
    let marker = format!("product medium {}", std::process::id());
    std::fs::write(medium.join("MARKER"), &marker)?;
    vmk_testkit::run_ok({
        let mut c = Command::new("genisoimage");
        c.args(["-quiet", "-r", "-V", "PRODUCT", "-o"])
            .arg(dir.join("product-base.iso"))
            .arg(&medium);
        c
    })?;
    vmk_testkit::ssh_keygen(&dir.join("vm-key"))?;
    let guard = vmk_testkit::qemu_guard::PidfileGuard::arm(&dir.join("name.qcow2.pid"));
    let out = vmk_run(
        &env,
        dir,
        &[
            "run",
            "--exec",
            "findmnt -no SOURCE /; mount -o ro /dev/sr0 /mnt && cat /mnt/MARKER",
        ],
        None,
    )?;
    drop(guard);
    let stdout = ok(&out)?;
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines == ["/dev/sda", marker.as_str()],
        "the guest's root and the ISO's marker: {lines:?}"
    );
    ensure!(
        !dir.join("name.qcow2.pid").exists(),
        "run --exec left its pidfile"
    );
    Ok(())
}

/// The Debian guest `vmk bootstrap`'s way (root by its label) boots to its login prompt
/// with its disks on `bus` (the default when `None`), and mounts its root from `device`.
fn boots_on_bus(bus: Option<&str>, device: &str) -> Result<()> {
    let env = TestEnv::new()?;
    let slot = VmSlot::reserve()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let line = bus
        .map(|b| format!("VMK_DISK_BUS={b}\n"))
        .unwrap_or_default();
    debian_vm(dir, slot.number(), &line)?;
    let (mut guard, text) = run_to_login(&env, dir, &format!("{bus:?}"))?;
    let mounted = format!("EXT4-fs ({device}): mounted filesystem");
    ensure!(
        text.contains(&mounted),
        "the guest did not mount its root from {device} (no {mounted:?} on its console)"
    );
    kill_and_check(&env, dir, &mut guard)
}

/// cloud-init under TCG on a busy machine: python starting its modules takes minutes.
const CLOUD_INIT_TIMEOUT: Duration = Duration::from_secs(1200);

/// One file of a seed ISO, read by isoinfo (Rock Ridge names): not vmk's ISO reader.
fn isoinfo_file(iso: &Path, file: &str) -> Result<String> {
    let mut c = Command::new("isoinfo");
    c.args(["-R", "-x", file, "-i"]).arg(iso);
    let out = vmk_testkit::run_ok(c)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `key: "value"` in a seed's meta-data (vmk quotes its YAML strings).
fn meta_value(meta: &str, key: &str) -> Result<String> {
    meta.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .with_context(|| format!("meta-data has no {key}: {meta:?}"))
}

/// README (VMK_CLOUD_INIT): "a distribution's cloud image boots with the VM's ssh key for
/// root and its hostname". A guest with Debian's cloud-init and no key of its own, run by
/// vmk with VMK_CLOUD_INIT=yes and no SMBIOS key credential: cloud-init finds the seed vmk
/// made, finishes (`cloud-init status`: done), the guest's hostname is the seed's (read
/// from the seed by isoinfo), and ssh with vm-key as root gets in: root's authorized_keys
/// holds exactly the key from vm-key.pub, and the instance id cloud-init recorded is the
/// seed's.
fn cloud_init_guest_takes_the_seed() -> Result<()> {
    let g = vmk_testguest::cloud_init_guest()?;
    let env = TestEnv::new()?;
    let slot = VmSlot::reserve()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    g.copy_image(&dir.join("disk0.img"))?;
    let key = dir.join("vm-key");
    vmk_testkit::ssh_keygen(&key)?;
    write_config(
        dir,
        &format!(
            "VMK_NAME=Seeded_{n}\nVMK_DISK0=disk0.img\nVMK_DISK0_FORMAT=raw\nVMK_MEM=1G\n\
             VMK_CPU=2\nVMK_ACCEL=tcg\nVMK_VNC={n}\nVMK_KERNEL='{}'\nVMK_INITRD='{}'\n\
             VMK_APPEND='{}'\nVMK_CLOUD_INIT=yes\nVMK_SSH_CREDENTIAL=no\n",
            g.kernel.display(),
            g.initrd.display(),
            g.append,
            n = slot.number()
        ),
    )?;
    let out = vmk_run(&env, dir, &["run"], None)?;
    let guard = QemuGuard::from_pidfile(&dir.join("disk0.img.pid"));
    ok(&out)?;
    let mut guard = guard?;

    // What the seed says, read independently of vmk.
    let seed = dir.join("seed.iso");
    let meta = isoinfo_file(&seed, "/meta-data")?;
    let hostname = meta_value(&meta, "local-hostname")?;
    let instance_id = meta_value(&meta, "instance-id")?;
    ensure!(
        hostname != "vmk-guest" && hostname.contains(&slot.number().to_string()),
        "the seed's hostname {hostname:?} would not tell the seed's from the image's"
    );
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let key_body = public
        .split_whitespace()
        .nth(1)
        .context("vm-key.pub has no key")?;
    ensure!(
        isoinfo_file(&seed, "/user-data")?.contains(key_body),
        "the seed's user-data lacks vm-key.pub"
    );
    // Only the seed carries the key: no credential on qemu's command line.
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", guard.pid()))?)
            .replace('\0', " ");
    ensure!(
        cmdline.contains(&seed.display().to_string()) && !cmdline.contains("ssh.authorized_keys"),
        "qemu's command line: the seed attached, no key credential: {cmdline}"
    );

    let took = guest::wait_for_file_line(
        &dir.join("disk0.img.console.log"),
        vmk_testguest::CLOUD_INIT_READY,
        CLOUD_INIT_TIMEOUT,
    )?;
    eprintln!("cloud-init guest: login prompt after {took:.1?}");
    let t = Instant::now();
    let answer = vmk_testkit::ssh_until_ok(
        &key,
        slot.ssh_port(),
        "cloud-init status --wait >/dev/null; cloud-init status; hostname; \
         cat /var/lib/cloud/data/instance-id; echo ---; cat /root/.ssh/authorized_keys; \
         echo ---; cloud-init status --long; grep -E 'WARNING|ERROR|Traceback' \
         /var/log/cloud-init.log | tail -n 20",
        CLOUD_INIT_TIMEOUT,
    )?;
    eprintln!(
        "cloud-init guest: ssh and cloud-init done {:.1?} after the login prompt:\n{answer}",
        t.elapsed()
    );
    let parts: Vec<&str> = answer.splitn(3, "---\n").collect();
    let [facts, keys, details] = parts[..] else {
        bail!("the guest's answer is cut short: {answer}");
    };
    let facts: Vec<&str> = facts.lines().collect();
    ensure!(
        facts == ["status: done", hostname.as_str(), instance_id.as_str()],
        "the guest says {facts:?}; the seed says hostname {hostname:?}, instance id \
         {instance_id:?}; cloud-init's account:\n{details}"
    );
    let keys: Vec<&str> = keys.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        keys.len() == 1 && keys[0].contains(key_body),
        "root's authorized_keys is not the seed's one key: {keys:?}"
    );
    kill_and_check(&env, dir, &mut guard)
}

fn two_vms() -> Result<()> {
    let env = TestEnv::new()?;
    let (a, b, c) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let (sa, sb) = (VmSlot::reserve()?, VmSlot::reserve()?);
    let (na, nb) = (format!("bb{}", sa.number()), format!("bb{}", sb.number()));
    busybox_vm(a.path(), sa.number())?;
    busybox_vm(b.path(), sb.number())?;
    busybox_vm(c.path(), sb.number())?; // b's number: its ports clash
    let ra = vmk_run(&env, a.path(), &["run"], None)?;
    let ga = QemuGuard::from_pidfile(&a.path().join("disk0.raw.pid"));
    ok(&ra)?;
    let _ga = ga?;
    let rb = vmk_run(&env, b.path(), &["run"], None)?;
    let gb = QemuGuard::from_pidfile(&b.path().join("disk0.raw.pid"));
    ok(&rb)?;
    let _gb = gb?;

    let ps: serde_json::Value =
        serde_json::from_str(&ok(&vmk_run(&env, a.path(), &["ps", "--json"], None)?)?)?;
    let dirs: Vec<PathBuf> = ps
        .as_array()
        .context("ps --json is not an array")?
        .iter()
        .filter_map(|e| e["dir"].as_str().map(PathBuf::from))
        .collect();
    for d in [a.path(), b.path()] {
        ensure!(
            dirs.iter().any(|x| x == d),
            "ps does not list {}: {dirs:?}",
            d.display()
        );
    }
    let table = ok(&vmk_run(&env, a.path(), &["ps"], None)?)?;
    ensure!(table.contains(&na) && table.contains(&nb), "{table}");

    let rc = vmk_run(&env, c.path(), &["run"], None)?;
    let err = String::from_utf8_lossy(&rc.stderr);
    ensure!(
        rc.status.code() == Some(1),
        "the clashing VM was not refused"
    );
    ensure!(
        err.contains(&format!("port {}", sb.vnc_port()))
            && err.contains(&format!("VMK_VNC {}", sb.number())),
        "the refusal does not name the port and VMK_VNC: {err}"
    );
    ensure!(
        !c.path().join("disk0.raw.pid").exists(),
        "qemu started for the clashing VM"
    );
    ensure!(
        !c.path().join("disk0.raw.console.log").exists(),
        "qemu started for the clashing VM"
    );

    for d in [a.path(), b.path()] {
        ok(&vmk_run(&env, d, &["kill"], None)?)?;
    }
    let ps = ok(&vmk_run(&env, a.path(), &["ps"], None)?)?;
    ensure!(
        !ps.contains(&na) && !ps.contains(&nb),
        "killed VMs still listed: {ps}"
    );
    Ok(())
}

fn kill_unrelated() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    let pidfile = busybox_vm(dir, slot.number())?;
    let (mut guard, _) = start_busybox(&env, dir, &["run"])?;
    let mut sleep = Command::new("sleep").arg("300").spawn()?;
    let _sleep_guard = QemuGuard::from_pid(sleep.id() as i32)?;
    std::fs::write(&pidfile, format!("{}\n", sleep.id()))?;
    let out = vmk_run(&env, dir, &["kill"], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains(&format!("pid {}", sleep.id())) && err.contains("stale pidfile"),
        "kill did not report the stale pidfile: {err}"
    );
    ensure!(
        sleep.try_wait()?.is_none(),
        "kill signalled the unrelated sleep"
    );
    ensure!(!pidfile.exists(), "the stale pidfile was not removed");
    ensure!(
        guard.is_running(),
        "the VM's qemu was killed without its pidfile naming it"
    );
    // Put the right pid back: now kill works.
    std::fs::write(&pidfile, format!("{}\n", guard.pid()))?;
    ok(&vmk_run(&env, dir, &["kill"], None)?)?;
    ensure!(!guard.is_running(), "kill left qemu running");
    ensure!(sleep.try_wait()?.is_none(), "the sleep died");
    let _ = sleep.kill();
    let _ = sleep.wait();
    Ok(())
}

/// Whether the kernel lists a TCP socket listening on `addr` (as /proc/net/tcp spells it,
/// `0100007F` for 127.0.0.1) and `port`.
fn tcp_listens(addr: &str, port: u16) -> Result<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!("{addr}:{port:04X}");
    Ok(table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    }))
}

/// README (VMK_CONSOLE=telnet, "the original tool's TCP console on VMK_TELNET_BASE+N"):
/// qemu listens on 127.0.0.1 at that port and nowhere else (the kernel's /proc/net/tcp),
/// `vmk telnet` talks to the guest's shell through it, and so does a plain TCP client of
/// the test's own: the guest computes what each sends.
fn telnet_console() -> Result<()> {
    use std::io::{Read, Write};
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    busybox_vm_with(dir, slot.number(), "VMK_CONSOLE=telnet\n")?;
    let (mut guard, _) = start_busybox(&env, dir, &["run"])?;
    guest::wait_for_file_line(
        &dir.join("disk0.raw.console.log"),
        guest::BUSYBOX_READY,
        BOOT_TIMEOUT,
    )?;
    let port = slot.telnet_port();
    ensure!(
        tcp_listens("0100007F", port)?,
        "nothing listens on 127.0.0.1:{port}"
    );
    ensure!(
        !tcp_listens("00000000", port)?,
        "the console listens on every address at port {port}"
    );
    ensure!(
        !dir.join("disk0.raw.con").exists(),
        "a console socket besides the telnet port"
    );

    console_says(
        &env,
        dir,
        "telnet",
        "3",
        "echo via-vmk-$((6*7))\n",
        "via-vmk-42",
    )?;

    // qemu serves one client at a time: vmk's has gone, this one is served
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"echo via-tcp-$((6*7))\n")?;
    let start = Instant::now();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("via-tcp-42") {
        ensure!(
            start.elapsed() < BOOT_TIMEOUT,
            "no answer over TCP: {:?}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) => bail!(
                "qemu closed the console: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(conn);
    kill_and_check(&env, dir, &mut guard)
}

/// `vmk-run runin` in a real terminal (tmux): the user is told how to leave, the guest's
/// console is on the terminal both ways, Ctrl-A x quits, and the terminal settings are the
/// same afterwards as before.
fn runin_in_a_terminal() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    busybox_vm(dir, slot.number())?;
    let term = in_terminal(
        &env,
        "runin",
        dir,
        &format!("'{}' runin", env!("CARGO_BIN_EXE_vmk-run")),
    )?;
    let _guard = QemuGuard::from_pidfile(&dir.join("disk0.raw.pid"))?;
    let first = term.wait_for("vmk-busybox-guest: ready", BOOT_TIMEOUT)?;
    ensure!(
        first.contains("leave with Ctrl-A x"),
        "not told how to leave:\n{first}"
    );
    term.send(&["echo typed-$((6*7))", "Enter"])?;
    term.wait_for("typed-42", BOOT_TIMEOUT)?;
    term.send(&["C-a", "x"])?;
    ended_with_terminal_restored(dir, 0)
}

/// `vmk-run runin` with a virtiofs share: its virtiofsd runs while qemu does (qemu
/// connected to it) and none is left once Ctrl-A x ended qemu in the foreground.
fn runin_ends_its_virtiofsd() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let share = tempfile::tempdir()?;
    let slot = VmSlot::reserve()?;
    busybox_vm_with(
        dir,
        slot.number(),
        &format!(
            "VMK_SHARE='{}:s'\nVMK_SHARE_FS=virtiofs\n",
            share.path().display()
        ),
    )?;
    let term = in_terminal(
        &env,
        "runin-virtiofs",
        dir,
        &format!("'{}' runin", env!("CARGO_BIN_EXE_vmk-run")),
    )?;
    let _guard = QemuGuard::from_pidfile(&dir.join("disk0.raw.pid"))?;
    term.wait_for("vmk-busybox-guest: ready", BOOT_TIMEOUT)?;
    let running = env.virtiofsds()?;
    ensure!(
        running
            .iter()
            .any(|(_, argv)| argv.iter().any(|a| a == "sandbox=namespace")),
        "no virtiofsd while the VM runs: {running:?}"
    );
    term.send(&["C-a", "x"])?;
    ended_with_terminal_restored(dir, 0)?;
    let left = env.virtiofsds()?;
    ensure!(left.is_empty(), "virtiofsds left after runin: {left:?}");
    Ok(())
}

/// `vmk-run console` in a real terminal: raw mode both ways, Ctrl-] detaches, the VM
/// keeps running, and the terminal settings are restored.
fn console_in_a_terminal() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    busybox_vm(dir, slot.number())?;
    let (guard, _) = start_busybox(&env, dir, &["run"])?;
    guest::wait_for_file_line(
        &dir.join("disk0.raw.console.log"),
        "vmk-busybox-guest: ready",
        BOOT_TIMEOUT,
    )?;
    let term = in_terminal(
        &env,
        "console",
        dir,
        &format!("'{}' console", env!("CARGO_BIN_EXE_vmk-run")),
    )?;
    term.wait_for("Ctrl-]", BOOT_TIMEOUT)?;
    term.send(&["echo typed-$((6*7))", "Enter"])?;
    term.wait_for("typed-42", BOOT_TIMEOUT)?;
    term.send(&["C-]"])?;
    ended_with_terminal_restored(dir, 0)?;
    let running = vmk_run(&env, dir, &["isrunning"], None)?;
    ensure!(
        running.status.success(),
        "the VM stopped when the console detached"
    );
    drop(guard);
    Ok(())
}

/// `run --kernel K` without `--initrd` on a VM whose config has VMK_INITRD: qemu gets K and
/// no initrd (its /proc/PID/cmdline), and the guest kernel, with no initramfs and no root,
/// panics for want of a root filesystem (the busybox guest's root is its initrd).
fn kernel_alone_boots_without_the_configs_initrd() -> Result<()> {
    let env = TestEnv::new()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let slot = VmSlot::reserve()?;
    busybox_vm(dir, slot.number())?;
    let kernel = dir.join("bzImage-under-test");
    std::fs::copy(guest::busybox_guest()?.kernel, &kernel)?;
    let kernel_arg = kernel.to_string_lossy().into_owned();
    let (guard, _) = start_busybox(&env, dir, &["run", "--kernel", &kernel_arg])?;
    let argv = argv_of(guard.pid())?;
    ensure!(
        argv.windows(2)
            .any(|w| w[0] == "-kernel" && w[1] == kernel_arg)
            && !argv.iter().any(|a| a == "-initrd"),
        "qemu runs with {argv:?}"
    );
    let log = dir.join("disk0.raw.console.log");
    guest::wait_for_file_line(&log, "VFS: Unable to mount root fs", BOOT_TIMEOUT)?;
    let console = std::fs::read_to_string(&log)?;
    ensure!(
        !console.contains(guest::BUSYBOX_HELLO),
        "the busybox initrd ran:\n{console}"
    );
    drop(guard);
    Ok(())
}

/// A user (`nobody`) runs a VM with a read-write share: vmk picks virtio-9p (virtiofsd needs
/// root), and what the guest's root writes there belongs to that user on the host; the
/// guest's root cannot make a device node there. The user's VM directory, environment and
/// copies of the guest's kernel, initrd and of vmk-run are all theirs (nothing of root's).
fn a_users_vm_writes_its_share_as_that_user() -> Result<()> {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let (dir, share) = (tmp.path().join("vm"), tmp.path().join("share"));
    let slot = VmSlot::reserve()?;
    let g = guest::busybox_guest()?;
    std::fs::create_dir(&dir)?;
    std::fs::create_dir(&share)?;
    let vmk_run = tmp.path().join("vmk-run");
    std::fs::copy(env!("CARGO_BIN_EXE_vmk-run"), &vmk_run)?;
    std::fs::copy(&g.kernel, dir.join("kernel"))?;
    std::fs::copy(&g.initrd, dir.join("initrd"))?;
    std::fs::File::create(dir.join("disk0.raw"))?.set_len(64 << 20)?;
    let guest_cmd = "mkdir -p /mnt && mount -t 9p -o trans=virtio,version=9p2000.L host /mnt \
                     && echo from-the-guest > /mnt/written; mknod /mnt/node c 1 3; \
                     echo mknod-status=$?";
    write_config(
        &dir,
        &format!(
            "VMK_NAME=users\nVMK_DISK0=disk0.raw\nVMK_DISK0_FORMAT=raw\nVMK_MEM=256M\nVMK_CPU=1\n\
             VMK_ACCEL=tcg\nVMK_NET_TYPE=none\n{}VMK_KERNEL=kernel\nVMK_INITRD=initrd\n\
             VMK_APPEND='{} vmk.cmd=\"{guest_cmd}\"'\nVMK_SHARE='{}:host'\n",
            slot.config_line(),
            g.append,
            share.display()
        ),
    )?;
    let env = TestEnv::new()?;
    let files = ["vm-config", "kernel", "initrd", "disk0.raw"].map(|f| dir.join(f));
    let dirs = [
        env.path().to_path_buf(),
        env.home(),
        env.runtime_dir(),
        dir.clone(),
    ];
    for p in dirs.iter().chain(&files).chain([&share]) {
        chown(p, Some(NOBODY), Some(NOBODY))?;
    }
    let mut cmd = as_nobody(&vmk_run);
    cmd.arg("run")
        .current_dir(&dir)
        // the system's programs (qemu), not those in root's home
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    let armed = vmk_testkit::qemu_guard::PidfileGuard::arm(&dir.join("disk0.raw.pid"));
    let out = env.run_command_logged(&mut cmd, None)?;
    ensure!(
        out.status.success(),
        "vmk-run run as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guard = armed.into_guard()?;
    let (uid, _) = uid_of(guard.pid())?;
    ensure!(uid == NOBODY, "qemu runs as uid {uid}, not nobody's");
    let log = dir.join("disk0.raw.console.log");
    guest::wait_for_file_line(&log, "vmk-busybox-guest: exit", BOOT_TIMEOUT)?;
    let console = std::fs::read_to_string(&log)?;
    ensure!(
        console.contains("mknod-status=1"),
        "the guest's mknod on the share did not fail:\n{console}"
    );
    let written = share.join("written");
    let meta = std::fs::metadata(&written)
        .with_context(|| format!("the guest's file is not on the host:\n{console}"))?;
    ensure!(
        (meta.uid(), meta.gid()) == (NOBODY, NOBODY),
        "the guest's file belongs to {}:{}, not to nobody",
        meta.uid(),
        meta.gid()
    );
    ensure!(std::fs::read_to_string(&written)? == "from-the-guest\n");
    ensure!(
        std::fs::symlink_metadata(share.join("node")).is_err(),
        "a device node is on the host"
    );
    drop(guard);
    Ok(())
}

/// The arguments process `pid` runs with, one each (/proc/PID/cmdline).
fn argv_of(pid: i32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

/// The real uid and gid of process `pid` (/proc/PID/status).
fn uid_of(pid: i32) -> Result<(u32, u32)> {
    let status = vmk_testkit::ProcStatus::read(pid).context(format!("no process {pid}"))?;
    let first = |key: &str| -> Result<u32> {
        status
            .field(key)
            .and_then(|v| v.split_whitespace().next())
            .context(format!("no {key} in /proc/{pid}/status"))?
            .parse()
            .context(key.to_string())
    };
    Ok((first("Uid")?, first("Gid")?))
}

/// As `nobody` (another local user): connect to the unix socket `path`; the error text,
/// or `connected` when it connected.
fn connect_as_nobody(path: &Path) -> Result<String> {
    let out = as_nobody("python3")
        .args([
            "-c",
            "import os, socket, sys\n\
             os.stat(sys.argv[1])\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n    s.connect(sys.argv[1]); print('connected')\n\
             except OSError as e:\n    print(os.strerror(e.errno))\n",
        ])
        .arg(path)
        // the system's python, not one in root's home (pyenv shims) that nobody cannot run
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "as nobody, cannot even see {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A VM started with the default settings (and VMK_VNC_SOCKET=yes, README: "moves VNC onto
/// a private unix socket") in a directory every user may enter: its console, QMP,
/// guest-agent and VNC sockets are there for all to see, yet `nobody` cannot connect to any
/// of them (EACCES), while the owner's `vmk console` talks to the guest and the owner's
/// connection to the VNC socket gets an RFB server's greeting.
fn sockets_are_the_owners() -> Result<()> {
    let env = TestEnv::new()?;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let slot = VmSlot::reserve()?;
    busybox_vm_with(dir, slot.number(), "VMK_VNC_SOCKET=yes\n")?;
    let (mut guard, out) = start_busybox(&env, dir, &["run", "--json"])?;
    let started: serde_json::Value = serde_json::from_str(&out)?;
    let console = dir.join("disk0.raw.con");
    ensure!(
        started["console_socket"] == console.to_str().unwrap() && started["console"].is_null(),
        "run --json does not name the console socket: {started}"
    );
    guest::wait_for_file_line(
        &dir.join("disk0.raw.console.log"),
        "vmk-busybox-guest: ready",
        BOOT_TIMEOUT,
    )?;
    let vnc = dir.join("disk0.raw.vnc");
    ensure!(
        !tcp_listens("0100007F", slot.vnc_port())? && !tcp_listens("00000000", slot.vnc_port())?,
        "VNC listens on TCP port {} besides its socket",
        slot.vnc_port()
    );
    for sock in [
        console.clone(),
        dir.join("disk0.raw.qmp"),
        dir.join("disk0.raw.qga"),
        vnc.clone(),
    ] {
        let answer = connect_as_nobody(&sock)?;
        ensure!(
            answer == "Permission denied" || answer == "Operation not permitted",
            "nobody connecting to {}: {answer}",
            sock.display()
        );
    }
    console_says(
        &env,
        dir,
        "console",
        "3",
        "echo through-the-socket-$((6*7))\n",
        "through-the-socket-42",
    )?;
    guest::wait_for_file_line(
        &dir.join("disk0.raw.console.log"),
        "through-the-socket-42",
        Duration::from_secs(10),
    )?;
    // RFC 6143: the server speaks first, "RFB 003.008\n"
    let mut greeting = [0u8; 12];
    let mut rfb = std::os::unix::net::UnixStream::connect(&vnc)?;
    rfb.set_read_timeout(Some(Duration::from_secs(30)))?;
    rfb.read_exact(&mut greeting)?;
    ensure!(
        greeting.starts_with(b"RFB 003."),
        "the VNC socket's greeting: {:?}",
        String::from_utf8_lossy(&greeting)
    );
    drop(rfb);
    ok(&vmk_run(&env, dir, &["kill"], None)?)?;
    ensure!(!guard.is_running(), "kill left qemu running");
    Ok(())
}
