//! Snapshots of the full qemu argv for each way vmk runs a VM, one argument per line.
//!
//! The modes are the shared table `vmk_common::qemu::fixtures::MODES` (the libvirt XML
//! snapshots take the same ones): paths are fixed (`/vm/…`) and the machine is a fake
//! `Host`, so the snapshots are stable. Review changes with `INSTA_UPDATE=always cargo test -p vmk-common --test qemu_argv` and
//! a look at `tests/snapshots/`.

use vmk_common::config::{Firmware, NetType, ShareFs};
use vmk_common::qemu::fixtures::{
    self, build, config, mode, paths, FakeHost, RootHost, VirtiofsHost, MODES,
};
use vmk_common::qemu::{Host, Mode, QemuCommand};

/// The program and each argument on its own line.
fn lines(cmd: &QemuCommand) -> String {
    let mut out = cmd.program().display().to_string();
    for a in cmd.argv() {
        out.push('\n');
        out.push_str(&a.to_string_lossy());
    }
    out
}

/// Every mode of the shared table (vmk_common::qemu::fixtures::MODES), one snapshot each.
#[test]
fn every_mode() {
    for (name, make) in MODES {
        insta::assert_snapshot!(*name, lines(&make()));
    }
}

#[test]
fn comma_in_a_file_name_stays_one_file() {
    let text = lines(&mode("comma_file_name"));
    assert!(text.contains("file=/vm/a,,b.qcow2,format=qcow2"));
    assert!(text.contains("logfile=/vm/a,,b.log,,server=off,"));
}

#[test]
fn extra_args_come_last() {
    let argv = mode("extra_args_last").argv();
    assert_eq!(
        &argv[argv.len() - 4..],
        ["-device", "virtio-rng-pci", "-s", "-S"]
    );
}

#[test]
fn dry_run_line_is_shell_quoted() {
    let mut cfg = config();
    cfg.ssh_credential = true;
    let cmd = build(&cfg, Mode::Run);
    let line = cmd.shell_quoted();
    assert!(!line.contains('\n'));
    let words = shlex::split(&line).unwrap();
    let mut expected = vec![cmd.program().display().to_string()];
    expected.extend(cmd.argv().iter().map(|a| a.to_string_lossy().into_owned()));
    assert_eq!(words, expected);
    insta::assert_snapshot!("dry_run_line", line);
}

/// VMK_CONSOLE=telnet keeps the original tool's telnet port (open to every local user).
#[test]
fn run_telnet_console() {
    let text = lines(&mode("run_telnet_console"));
    assert!(text.contains("host=127.0.0.1,port=9993,server=on,wait=off,telnet=on,"));
}

/// Root running a user's VM: qemu drops to the VM directory's owner (`-runas`), which needs
/// set*uid under the sandbox; VMK_VNC_SOCKET=yes puts VNC on a unix socket, not a port.
#[test]
fn root_runs_a_users_vm_with_vnc_on_a_socket() {
    let text = lines(&mode("root_runs_a_users_vm_vnc_socket"));
    assert!(text.contains("\n-runas\n1000:100\n"));
    assert!(text.contains("\n-vnc\nunix:/run/vmk/sles15.vnc\n"));
    assert!(!text.contains("127.0.0.1:3"));
}

/// Root with bridge networking keeps a sandbox that lets qemu spawn qemu-bridge-helper; a
/// user gets none (the filter's no_new_privs would strip the helper's setuid root).
#[test]
fn bridge_sandbox_as_root_and_as_a_user() {
    let mut cfg = config();
    cfg.net_type = NetType::Bridge;
    let root =
        QemuCommand::from_config_with(&cfg, Mode::Foreground, &paths(""), &RootHost).unwrap();
    let sandbox = |c: &QemuCommand| {
        let argv = c.argv();
        argv.iter()
            .position(|a| a == "-sandbox")
            .map(|i| argv[i + 1].to_string_lossy().into_owned())
    };
    assert_eq!(
        sandbox(&root).as_deref(),
        Some("on,obsolete=deny,resourcecontrol=deny")
    );
    assert_eq!(sandbox(&build(&cfg, Mode::Foreground)), None);
    cfg.net_type = NetType::User;
    assert_eq!(
        sandbox(&build(&cfg, Mode::Foreground)).as_deref(),
        Some("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
    );
    // VMK_EXTRA_ARGS with a -sandbox of its own: that one alone
    cfg.extra_args = vec!["-sandbox".into(), "off".into()];
    let cmd = build(&cfg, Mode::Foreground);
    assert_eq!(sandbox(&cmd).as_deref(), Some("off"));
    assert_eq!(cmd.argv().iter().filter(|a| *a == "-sandbox").count(), 1);
}

/// VMK_FIRMWARE=uefi: OVMF's code read-only in pflash 0, the VM's own variable store beside
/// disk0 in pflash 1; the snapshot VM boots its own copy beside snap-<disk0>.
#[test]
fn uefi() {
    let text = lines(&mode("uefi"));
    assert!(text.contains("\n-drive\nif=pflash,format=raw,unit=1,file=/vm/sles15.qcow2.efivars\n"));
    assert!(!text.contains("smm"));
    assert!(lines(&mode("uefi_snap_run")).contains("file=/vm/snap-sles15.qcow2.efivars\n"));
}

/// VMK_FIRMWARE=uefi-secure: the Secure Boot build with Microsoft's and Debian's keys
/// enrolled, SMM on and the flash secure; direct kernel boot stays possible.
#[test]
fn uefi_secure() {
    let text = lines(&mode("uefi_secure"));
    assert!(text.contains("\n-machine\nq35,accel=tcg,smm=on\n"));
    assert!(text.contains("\n-global\ndriver=cfi.pflash01,property=secure,value=on\n"));
    assert!(text.contains("OVMF_CODE_4M.ms.fd,readonly=on"));
    assert!(text.ends_with("\n-kernel\n/vm/vmlinuz"));
}

/// No firmware for the machine: the error names the key, the machine and the package.
#[test]
fn uefi_without_firmware_for_the_machine() {
    let mut cfg = config();
    cfg.firmware = Firmware::Uefi;
    cfg.machine = Some("pc".into());
    let e = QemuCommand::from_config_with(&cfg, Mode::Run, &paths(""), &FakeHost { kvm: false })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("VMK_FIRMWARE=uefi: no UEFI firmware for x86_64 (machine pc)")
            && e.contains("install ovmf"),
        "{e}"
    );
}

/// VMK_TPM=yes: qemu talks to the VM's swtpm over a socket beside the QMP socket, and the
/// guest gets a CRB TPM (x86).
#[test]
fn tpm() {
    let text = lines(&mode("uefi_tpm"));
    assert!(text.contains("\n-chardev\nsocket,id=chrtpm,path=/run/vmk/sles15.swtpm\n"));
    assert!(
        text.contains("\n-tpmdev\nemulator,id=tpm0,chardev=chrtpm\n-device\ntpm-crb,tpmdev=tpm0\n")
    );
}

/// Each architecture: its own qemu, machine and devices (PCI virtio on arm and ppc64, CCW
/// on s390x; CD-ROMs on SCSI where there is no IDE), a 64-bit cpu on arm under TCG, AAVMF
/// on arm (it has no BIOS), qemu's built-in firmware on ppc64 and s390x.
#[test]
fn architectures() {
    let arm = lines(&mode("arch_aarch64"));
    assert!(arm.starts_with("/usr/bin/qemu-system-aarch64\n"));
    assert!(arm.contains("\n-machine\nvirt,accel=tcg\n-cpu\nmax,pauth-impdef=on\n"));
    assert!(arm.contains("AAVMF_CODE.fd,readonly=on\n"));
    assert!(arm.contains("\nscsi-cd,drive=cd0,bus=scsi0.0\n") && !arm.contains("ide"));
    assert!(arm.contains("\n-device\nvirtio-gpu-pci\n"));
    let ppc = lines(&mode("arch_ppc64le"));
    assert!(ppc.starts_with("/usr/bin/qemu-system-ppc64\n"));
    assert!(ppc.contains("\n-machine\npseries,accel=tcg\n") && !ppc.contains("pflash"));
    let s390 = lines(&mode("arch_s390x"));
    assert!(s390.contains("\n-machine\ns390-ccw-virtio,accel=tcg\n"));
    assert!(s390.contains("virtio-blk-ccw,drive=disk0") && s390.contains("virtio-net-ccw,"));
    assert!(s390.contains("virtio-scsi-ccw,id=scsi0") && !s390.contains("-pci"));
    assert!(!s390.contains("VGA") && !s390.contains("pflash"));
    let kvm = lines(&mode("arch_aarch64_kvm_tpm"));
    assert!(kvm.contains("\n-machine\nvirt,accel=kvm\n-cpu\nhost\n"));
    assert!(kvm.contains("tpm-tis-device,tpmdev=tpm0"));
}

/// The `shares` config (one read-write share, one read-only) on a machine where virtiofs
/// can run.
fn shares_config(share_fs: ShareFs) -> vmk_common::config::VmConfig {
    let mut cfg = config();
    cfg.shares = vmk_common::config::values::parse_shares(
        "/home/u/src/linux '/data/a,readonly=off b:data:ro'",
        &|d| d.into(),
    )
    .unwrap();
    cfg.share_fs = share_fs;
    cfg
}

/// VMK_SHARE_FS=9p keeps virtio-9p (today's argv, the `shares` snapshot) where virtiofs
/// could run.
#[test]
fn share_fs_9p_keeps_virtio_9p_on_a_virtiofs_host() {
    let cmd = QemuCommand::from_config_with(
        &shares_config(ShareFs::NineP),
        Mode::Run,
        &paths(""),
        &VirtiofsHost,
    )
    .unwrap();
    assert_eq!(lines(&cmd), lines(&fixtures::shares()));
    assert!(cmd.shares.iter().all(|s| s.reason == "VMK_SHARE_FS=9p"));
}

/// virtiofs: the read-write share only; the read-only one stays on 9p (qemu's virtiofsd
/// cannot enforce read-only), and a comma in a folder cannot add an option to qemu.
#[test]
fn virtiofs_for_read_write_shares_only() {
    let cmd = mode("virtiofs_shares");
    let argv: Vec<String> = cmd
        .argv()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let text = argv.join("\n");
    assert!(
        text.contains("q35,accel=tcg,memory-backend=vmk-mem\n"),
        "{text}"
    );
    assert!(
        text.contains("memory-backend-memfd,id=vmk-mem,size=4096M,share=on"),
        "{text}"
    );
    assert_eq!(
        text.matches("vhost-user-fs-pci,chardev=").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("vhost-user-fs-pci,chardev=vfs2,tag=odd"),
        "{text}"
    );
    assert!(
        text.contains(
            "local,id=share1,path=/data/a,,readonly=off b,security_model=none,readonly=on"
        ),
        "{text}"
    );
    assert!(
        text.contains("io.systemd.credential:vmk.virtiofs-tags=linux odd"),
        "{text}"
    );
    let daemons: Vec<_> = cmd.shares.iter().filter_map(|s| s.daemon()).collect();
    assert_eq!(daemons.len(), 2);
    assert!(daemons.iter().all(|d| d.socket.starts_with("/run/vmk")));
    assert_eq!(daemons[1].dir, std::path::Path::new("/data/c,d e"));
    assert!(cmd.shares[1].reason.starts_with("read-only"));
}

/// VMK_SHARE_FS=virtiofs where it cannot run: an error naming the key, and why.
#[test]
fn share_fs_virtiofs_without_virtiofsd_is_a_config_error() {
    for host in [&FakeHost { kvm: false } as &dyn Host, &RootHost] {
        let e = QemuCommand::from_config_with(
            &shares_config(ShareFs::Virtiofs),
            Mode::Run,
            &paths(""),
            host,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("VMK_SHARE_FS"), "{text}");
        assert!(text.contains("virtiofs cannot be used here"), "{text}");
        assert_eq!(vmk_common::cli::exit_status_of(&e), 2);
    }
    // auto: virtio-9p, saying why
    let cmd = QemuCommand::from_config_with(
        &shares_config(ShareFs::Auto),
        Mode::Run,
        &paths(""),
        &FakeHost { kvm: false },
    )
    .unwrap();
    assert_eq!(lines(&cmd), lines(&fixtures::shares()));
    assert_eq!(cmd.shares[0].reason, "no virtiofsd on this host");
}
