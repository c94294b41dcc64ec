//! Guests that boot themselves (`vmk bootstrap --boot disk`) against real qemu under TCG:
//! the one partitioned Debian disk, made by the bootstrap library's own steps and cached,
//! boots with `vmk-run run` and no VMK_KERNEL under each VMK_FIRMWARE to its serial login
//! prompt: GRUB under `bios` (where the kernel packages' update-grub hook, run again in the
//! guest, regenerates a grub.cfg that boots the running kernel with root by label), shim and
//! GRUB under `uefi`, and under `uefi-secure` shim (Microsoft-signed), GRUB and the kernel
//! (Debian-signed) with the guest's `mokutil --sb-state` saying Secure Boot is enabled.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vmk_testguest::DISK_REPORT;
use vmk_testkit::guest::wait_for_file_line;
use vmk_testkit::isolation::VmDir;
use vmk_testkit::qemu_guard::QemuGuard;
use vmk_testkit::{run_system_tests, Need, SystemTest};

/// Hang guards, not timing claims: an OVMF boot under TCG on two busy cores takes minutes.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1200);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

const IMAGE: &str = "disk0.raw";

fn main() -> std::process::ExitCode {
    let needs = |firmware: Option<&'static str>| {
        let mut n = vec![
            Need::Root,
            Need::Qemu,
            Need::Debootstrap,
            Need::Program("sgdisk"),
            Need::Program("mkfs.vfat"),
            Need::Program("losetup"),
        ];
        n.extend(firmware.map(|f| Need::File(f, "ovmf")));
        n
    };
    run_system_tests(vec![
        SystemTest::new(
            "a_disk_booting_guest_boots_with_grub_under_bios",
            &needs(None),
            bios,
        ),
        SystemTest::new(
            "a_disk_booting_guest_boots_with_shim_under_uefi",
            &needs(Some("/usr/share/qemu/firmware/60-edk2-x86_64.json")),
            uefi,
        ),
        SystemTest::new(
            "a_disk_booting_guest_reports_secure_boot_under_uefi_secure",
            &needs(Some(
                "/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json",
            )),
            uefi_secure,
        ),
    ])
}

/// A copy of the disk-booting guest in its own VM directory, on a reserved VM number.
struct Vm(VmDir);

impl Vm {
    /// The VM with VMK_FIRMWARE=`firmware` and no kernel: it boots from disk0.
    fn new(firmware: &str) -> Result<Vm> {
        let g = vmk_testguest::debian_disk_guest()?;
        let config = format!(
            "VMK_NAME=diskboot\nVMK_DISK0={IMAGE}\nVMK_DISK0_FORMAT=raw\nVMK_ACCEL=tcg\n\
             VMK_MEM=1024\nVMK_NET_TYPE=none\nVMK_VNC_SOCKET=yes\nVMK_FIRMWARE={firmware}\n"
        );
        VmDir::new(&config, |dir| {
            let mut c = std::process::Command::new("cp");
            c.args(["--sparse=always", "--reflink=auto"])
                .arg(&g.image)
                .arg(dir.join(IMAGE));
            vmk_testkit::run_ok(c).map(drop)
        })
        .map(Vm)
    }

    fn console_log(&self) -> PathBuf {
        self.0.path().join(format!("{IMAGE}.console.log"))
    }

    fn vmk_run(&self, args: &[&str]) -> Result<std::process::Output> {
        self.0.run(env!("CARGO_BIN_EXE_vmk-run"), args)
    }

    /// Boots it to its serial login prompt; returns the report lines the guest gave.
    fn boot(&self, what: &str) -> Result<Vec<String>> {
        let started = Instant::now();
        let out = self.vmk_run(&["run"]);
        let guard = QemuGuard::from_pidfile(&self.0.path().join(format!("{IMAGE}.pid")));
        ensure!(out?.status.success(), "vmk-run run failed");
        let _guard = guard?;
        let log = self.console_log();
        wait_for_file_line(&log, &format!("{DISK_REPORT}done"), REPORT_TIMEOUT)?;
        wait_for_file_line(&log, "login:", LOGIN_TIMEOUT)?;
        eprintln!(
            "disk-booting guest under {what} (TCG): login prompt {:.1}s after vmk-run run",
            started.elapsed().as_secs_f64()
        );
        let _ = self.vmk_run(&["kill"]);
        Ok(report(&self.console_text()?))
    }

    /// The console log as text (the firmware and GRUB write bytes that are not UTF-8).
    fn console_text(&self) -> Result<String> {
        let log = self.console_log();
        let bytes = std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The guest's report lines in a console log.
fn report(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once(DISK_REPORT).map(|(_, r)| r.trim().to_string()))
        .collect()
}

/// Fails unless the report has `line`.
fn has(said: &[String], line: &str) -> Result<()> {
    ensure!(
        said.iter().any(|l| l == line),
        "the guest did not say `{line}`: {said:?}"
    );
    Ok(())
}

/// What every boot must show: no kernel of vmk's, root by its label, the ESP mounted by
/// fstab.
fn common(said: &[String]) -> Result<()> {
    let cmdline = said
        .iter()
        .find_map(|l| l.strip_prefix("cmdline "))
        .context("no cmdline line")?;
    ensure!(
        cmdline.contains("BOOT_IMAGE=/boot/vmlinuz-") && cmdline.contains("root=LABEL=vmkroot"),
        "the kernel was not started by GRUB with root by label: {cmdline}"
    );
    has(said, "esp mounted")
}

fn bios() -> Result<()> {
    let vm = Vm::new("bios")?;
    let said = vm.boot("bios")?;
    has(&said, "efi no")?;
    common(&said)?;
    has(&said, "kernel hook regenerated grub.cfg, root by label")
}

fn uefi() -> Result<()> {
    let vm = Vm::new("uefi")?;
    let said = vm.boot("uefi")?;
    has(&said, "efi yes")?;
    has(&said, "sb SecureBoot disabled")?;
    common(&said)?;
    ensure!(
        vm.0.path().join(format!("{IMAGE}.efivars")).is_file(),
        "no variable store beside disk0"
    );
    Ok(())
}

fn uefi_secure() -> Result<()> {
    let vm = Vm::new("uefi-secure")?;
    let said = vm.boot("uefi-secure")?;
    has(&said, "efi yes")?;
    has(&said, "sb SecureBoot enabled")?;
    common(&said)?;
    let log = vm.console_text()?;
    ensure!(
        log.contains("secureboot: Secure boot enabled"),
        "the guest's kernel does not report Secure Boot enabled"
    );
    Ok(())
}
