//! vmk-libvirt against a real libvirtd and virtlogd of the test's own
//! (`vmk_testkit::libvirt`): the Debian test guest defined and started as a domain of type
//! `qemu` (TCG), its login prompt in the console log `vmk info` names, `vmk info`/`vmk ps`
//! showing the domain, `vmk run` refusing its disk0, `virsh dumpxml` keeping every element
//! vmk wrote, a graceful `vmk libvirt stop`, `undefine`; the remote path through
//! `qemu+ssh://root@127.0.0.1:PORT/system` (an sshd of the test's), with the images
//! uploaded into a pool and booted from it; and bad input: a URI that does not answer, a
//! pool that does not exist, a name that is taken, each leaving nothing defined.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vmk_libvirt::xml::{nodes, Node};
use vmk_testguest::{debian_guest, DEBIAN_READY};
use vmk_testkit::guest::wait_for_file_line;
use vmk_testkit::isolation::{TestEnv, VmSlot};
use vmk_testkit::libvirt::{Libvirtd, TestSshd, NEEDS};
use vmk_testkit::{run_system_tests, workspace_bin, Need, SystemTest};

/// The descriptor of Debian's Secure Boot OVMF (package ovmf).
const OVMF_DESCRIPTOR: &str = "/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json";

/// Two slow cores shared with other tests: be generous.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

fn main() -> std::process::ExitCode {
    let mut local: Vec<Need> = NEEDS.to_vec();
    local.extend([Need::Debootstrap, Need::Built("vmk-run")]);
    let mut remote = local.clone();
    remote.extend([Need::Ssh, Need::Program("sshd"), Need::Program("nc")]);
    let mut uefi = local.clone();
    uefi.extend([Need::File(OVMF_DESCRIPTOR, "ovmf"), Need::Program("swtpm")]);
    run_system_tests(vec![
        SystemTest::new(
            "debian_defined_started_stopped_undefined_under_libvirtd",
            &local,
            local_lifecycle,
        ),
        SystemTest::new(
            "remote_uri_uploads_the_images_into_a_pool_and_boots_them",
            &remote,
            remote_lifecycle,
        ),
        SystemTest::new(
            "uefi_secure_boot_and_tpm_domain_is_accepted_as_written",
            &uefi,
            uefi_accepted,
        ),
        SystemTest::new(
            "bad_uri_missing_pool_and_taken_name_leave_nothing_defined",
            &remote,
            bad_input,
        ),
    ])
}

/// A VM directory with a copy of the Debian guest (raw, virtio, direct kernel boot, TCG).
struct Vm {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    env: TestEnv,
    _slot: VmSlot,
}

impl Vm {
    fn new(name: &str, uri: &str, extra: &str) -> Result<Vm> {
        let guest = debian_guest()?;
        let tmp = tempfile::Builder::new()
            .prefix("vmk-lv-")
            .tempdir_in("/tmp")?;
        let dir = tmp.path().join("vm");
        std::fs::create_dir(&dir)?;
        guest.copy_image(&dir.join("disk.img"))?;
        std::fs::copy(&guest.kernel, dir.join("vmlinuz"))?;
        std::fs::copy(&guest.initrd, dir.join("initrd.img"))?;
        let slot = VmSlot::reserve()?;
        std::fs::write(
            dir.join("vm-config"),
            format!(
                "VMK_NAME={name}\nVMK_DISK0=disk.img\nVMK_DISK0_FORMAT=raw\nVMK_DISK_BUS=virtio\n\
                 VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img\nVMK_APPEND=\"{}\"\n\
                 VMK_ACCEL=tcg\nVMK_MEM=1G\nVMK_LIBVIRT_URI=\"{uri}\"\n{}{extra}",
                guest.append,
                slot.config_line()
            ),
        )?;
        Ok(Vm {
            env: TestEnv::inside(tmp.path())?,
            _tmp: tmp,
            dir,
            _slot: slot,
        })
    }

    fn run(&self, program: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(program);
        self.env.apply(&mut cmd);
        cmd.args(args)
            .current_dir(&self.dir)
            .env("VMK_ACCEL", "tcg")
            .stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("running {}", program.display()))
    }

    /// `vmk-libvirt ARGS`, which must succeed; its stdout and stderr.
    fn libvirt(&self, args: &[&str]) -> Result<(String, String)> {
        let out = self.run(Path::new(env!("CARGO_BIN_EXE_vmk-libvirt")), args)?;
        let (o, e) = texts(&out);
        ensure!(out.status.success(), "vmk libvirt {args:?} failed: {e}");
        Ok((o, e))
    }

    /// `vmk-libvirt ARGS`, which must fail; its stderr.
    fn libvirt_fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(Path::new(env!("CARGO_BIN_EXE_vmk-libvirt")), args)?;
        let (_, e) = texts(&out);
        ensure!(!out.status.success(), "vmk libvirt {args:?} succeeded: {e}");
        Ok(e)
    }

    /// `vmk-run ARGS`: its output whatever the status.
    fn vmk_run(&self, args: &[&str]) -> Result<Output> {
        self.run(&workspace_bin("vmk-run"), args)
    }

    /// The console log `vmk info --json` names.
    fn console_log(&self) -> Result<PathBuf> {
        let out = self.vmk_run(&["info", "--json"])?;
        ensure!(out.status.success(), "vmk info --json: {}", texts(&out).1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(PathBuf::from(
            v["console_log"].as_str().context("no console_log")?,
        ))
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every element and attribute of `ours` is in `theirs` (libvirt adds, never drops):
/// libvirt accepted all of it. The machine type may come back expanded (q35 →
/// pc-q35-7.2).
fn round_trips(ours: &str, theirs: &str) -> Result<()> {
    let theirs = nodes(theirs)?;
    let kept = |n: &Node| {
        theirs.iter().any(|t| {
            t.path == n.path
                && t.text == n.text
                && n.attrs.iter().all(|(k, v)| {
                    t.attrs.get(k).is_some_and(|tv| {
                        tv == v || (k == "machine" && tv.starts_with(&format!("pc-{v}-")))
                    })
                })
        })
    };
    for n in nodes(ours)? {
        ensure!(kept(&n), "libvirt did not keep {n:?}");
    }
    Ok(())
}

fn local_lifecycle() -> Result<()> {
    let lv = Libvirtd::start()?;
    let name = format!("vmk-lv-local-{}", std::process::id());
    let vm = Vm::new(&name, &lv.uri(), "")?;
    let (ours, _) = vm.libvirt(&["xml"])?;
    ensure!(ours.contains("<domain type=\"qemu\""), "{ours}");
    let (out, err) = vm.libvirt(&["define", "--start"])?;
    ensure!(out.trim() == name, "define printed {out:?}");
    ensure!(err.contains("started domain"), "{err}");
    round_trips(&ours, &lv.virsh(&["dumpxml", "--inactive", &name])?)?;

    // info, ps and run know the domain
    let info = vm.vmk_run(&["info"])?;
    let info = texts(&info).0;
    ensure!(
        info.contains(&format!("domain {name} at {}: running", lv.uri())),
        "{info}"
    );
    let ps = texts(&vm.vmk_run(&["ps"])?).0;
    ensure!(
        ps.lines()
            .any(|l| l.starts_with(&name) && l.contains("running")),
        "{ps}"
    );
    let refused = vm.vmk_run(&["run"])?;
    let (_, err) = texts(&refused);
    ensure!(!refused.status.success(), "vmk run started a second copy");
    ensure!(
        err.contains(&format!("in use by the libvirt domain {name}")),
        "{err}"
    );

    // the guest boots to its login prompt, logged where vmk info says
    let log = vm.console_log()?;
    let took = wait_for_file_line(&log, DEBIAN_READY, BOOT_TIMEOUT)?;
    wait_for_file_line(&log, "login:", BOOT_TIMEOUT)?;
    eprintln!(
        "login prompt under libvirt after {took:?} in {}",
        log.display()
    );

    let (_, err) = vm.libvirt(&["stop", "--timeout", "300"])?;
    ensure!(err.contains("powered off after"), "not graceful: {err}");
    ensure!(lv.virsh(&["domstate", &name])?.trim() == "shut off");
    vm.libvirt(&["undefine"])?;
    ensure!(
        !lv.virsh(&["list", "--all", "--name"])?.contains(&name),
        "still defined"
    );
    let info = texts(&vm.vmk_run(&["info"])?).0;
    ensure!(!info.contains("libvirt:"), "{info}");
    Ok(())
}

fn remote_lifecycle() -> Result<()> {
    let lv = Libvirtd::start()?;
    let sshd = TestSshd::start()?;
    let pool_dir = lv.dir().join("pool");
    lv.dir_pool("vmk-test-pool", &pool_dir)?;
    let uri = sshd.libvirt_uri(&lv);
    let name = format!("vmk-lv-remote-{}", std::process::id());
    let vm = Vm::new(&name, &uri, "VMK_LIBVIRT_POOL=vmk-test-pool\n")?;
    // `define`, then `start` on its own (the local test starts with `define --start`)
    let (_, err) = vm.libvirt(&["define"])?;
    ensure!(
        lv.virsh(&["domstate", &name])?.trim() == "shut off",
        "running after `define` alone"
    );
    for what in ["disk0", "kernel", "initrd"] {
        ensure!(
            err.contains(&format!("uploaded {what} "))
                && err.contains("of data) into pool vmk-test-pool"),
            "no upload of {what}: {err}"
        );
    }
    let (_, started) = vm.libvirt(&["start"])?;
    ensure!(started.contains("started domain"), "{started}");
    ensure!(lv.virsh(&["domstate", &name])?.trim() == "running");
    let volume = pool_dir.join(format!("{name}-disk.img"));
    ensure!(volume.is_file(), "{} missing", volume.display());
    let xml = lv.virsh(&["dumpxml", &name])?;
    ensure!(
        xml.contains(&format!("<source file='{}'", volume.display())),
        "{xml}"
    );
    // sparse on the remote side: far less allocated than the 2 GiB image
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&volume)?;
    ensure!(meta.blocks() * 512 < meta.len() / 2, "not sparse: {meta:?}");
    let log = pool_dir.join(format!("{name}.console.log"));
    wait_for_file_line(&log, "login:", BOOT_TIMEOUT)?;
    let (_, err) = vm.libvirt(&["stop", "--timeout", "300"])?;
    ensure!(err.contains("powered off after"), "not graceful: {err}");
    let (_, err) = vm.libvirt(&["undefine"])?;
    ensure!(err.contains("stays in pool vmk-test-pool"), "{err}");
    Ok(())
}

/// VMK_FIRMWARE=uefi-secure and VMK_TPM=yes: libvirt takes the secure loader, the VM's
/// variable store with its template, SMM and the TPM as vmk wrote them (defined, not booted).
fn uefi_accepted() -> Result<()> {
    let lv = Libvirtd::start()?;
    let name = format!("vmk-lv-uefi-{}", std::process::id());
    let vm = Vm::new(&name, &lv.uri(), "VMK_FIRMWARE=uefi-secure\nVMK_TPM=yes\n")?;
    let (ours, _) = vm.libvirt(&["xml"])?;
    ensure!(
        ours.contains("<smm state=\"on\"/>") && ours.contains("<tpm model=\"tpm-crb\">"),
        "{ours}"
    );
    vm.libvirt(&["define"])?;
    round_trips(&ours, &lv.virsh(&["dumpxml", "--inactive", &name])?)?;
    vm.libvirt(&["undefine"])?;
    Ok(())
}

fn bad_input() -> Result<()> {
    let lv = Libvirtd::start()?;
    let sshd = TestSshd::start()?;
    // a URI that does not answer
    let vm = Vm::new(
        "vmk-lv-bad",
        "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
        "",
    )?;
    let err = vm.libvirt_fails(&["define"])?;
    ensure!(err.contains("does not answer"), "{err}");
    let info = texts(&vm.vmk_run(&["info"])?).0;
    ensure!(!info.contains("libvirt:"), "a record was left: {info}");

    // a pool that does not exist: nothing uploaded, nothing defined
    let name = format!("vmk-lv-nopool-{}", std::process::id());
    let vm = Vm::new(
        &name,
        &sshd.libvirt_uri(&lv),
        "VMK_LIBVIRT_POOL=no-such-pool\n",
    )?;
    let err = vm.libvirt_fails(&["define"])?;
    ensure!(
        err.contains("storage pool no-such-pool does not exist"),
        "{err}"
    );
    ensure!(lv.virsh(&["list", "--all", "--name"])?.trim().is_empty());

    // a name that is taken by another VM directory
    let name = format!("vmk-lv-taken-{}", std::process::id());
    let first = Vm::new(&name, &lv.uri(), "")?;
    first.libvirt(&["define"])?;
    let second = Vm::new(&name, &lv.uri(), "")?;
    let err = second.libvirt_fails(&["define"])?;
    ensure!(
        err.contains(&format!("domain {name} is already defined"))
            && err.contains(&first.dir.display().to_string()),
        "{err}"
    );
    let xml = lv.virsh(&["dumpxml", &name])?;
    ensure!(
        xml.contains(&first.dir.display().to_string()),
        "the first VM's domain was replaced"
    );
    // defining the same directory again is an update, not a clash
    first.libvirt(&["define"])?;
    first.libvirt(&["undefine"])?;
    Ok(())
}
