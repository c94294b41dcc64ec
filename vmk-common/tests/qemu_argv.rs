//! Snapshots of the full qemu argv for each way vmk runs a VM, one argument per line.
//!
//! Paths are fixed (`/vm/…`) and the machine is a fake [`Host`], so the snapshots are stable.
//! Review changes with `INSTA_UPDATE=always cargo test -p vmk-common --test qemu_argv` and
//! a look at `tests/snapshots/`.

use std::io;
use std::path::{Path, PathBuf};

use vmk_common::config::{Accel, CacheMode, DiskBus, DiskFormat, NetType, VmConfig};
use vmk_common::qemu::{Host, Mode, QemuCommand, RuntimePaths};

/// A machine with qemu-system-x86_64, the given kvm answer, qcow2 images except `*.raw`,
/// and an ssh key for VMs in /vm.
struct FakeHost {
    kvm: bool,
}

/// [`FakeHost`] where vmk runs as root and /vm belongs to uid 1000, gid 100.
struct RootHost;

impl Host for RootHost {
    fn kvm_usable(&self) -> bool {
        false
    }
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        FakeHost { kvm: false }.find_program(name)
    }
    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat> {
        FakeHost { kvm: false }.disk_format(path)
    }
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        FakeHost { kvm: false }.read_to_string(path)
    }
    fn is_root(&self) -> bool {
        true
    }
    fn owner(&self, path: &Path) -> Option<(u32, u32)> {
        (path == Path::new("/vm")).then_some((1000, 100))
    }
}

impl Host for FakeHost {
    fn kvm_usable(&self) -> bool {
        self.kvm
    }
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        (name == "qemu-system-x86_64").then(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
    }
    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat> {
        Ok(if path.extension().is_some_and(|e| e == "raw") {
            DiskFormat::Raw
        } else {
            DiskFormat::Qcow2
        })
    }
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        if path == Path::new("/vm/vm-key.pub") {
            Ok("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKey root@vm,1\n".into())
        } else {
            Err(io::ErrorKind::NotFound.into())
        }
    }
}

fn config() -> VmConfig {
    let mut c = VmConfig::defaults(Path::new("/vm"));
    c.name = Some("sles15".into());
    c.disk0_path = Some("/vm/sles15.qcow2".into());
    c.accel = Accel::Tcg;
    c.vnc = 3;
    c.mem = "4G".parse().unwrap();
    c.ssh_credential = false;
    c
}

fn paths(prefix: &str) -> RuntimePaths {
    RuntimePaths {
        image: format!("/vm/{prefix}sles15.qcow2").into(),
        pidfile: format!("/vm/{prefix}sles15.qcow2.pid").into(),
        qmp_socket: format!("/run/vmk/{prefix}sles15.qmp").into(),
        console_log: format!("/vm/{prefix}sles15.qcow2.console.log").into(),
    }
}

fn build(cfg: &VmConfig, mode: Mode) -> QemuCommand {
    QemuCommand::from_config_with(cfg, mode, &paths(""), &FakeHost { kvm: false }).unwrap()
}

/// The program and each argument on its own line.
fn lines(cmd: &QemuCommand) -> String {
    let mut out = cmd.program().display().to_string();
    for a in cmd.argv() {
        out.push('\n');
        out.push_str(&a.to_string_lossy());
    }
    out
}

#[test]
fn run_user_net() {
    let mut cfg = config();
    cfg.ssh_credential = true;
    insta::assert_snapshot!("run_user_net", lines(&build(&cfg, Mode::Run)));
}

#[test]
fn runin() {
    insta::assert_snapshot!("runin", lines(&build(&config(), Mode::Foreground)));
}

#[test]
fn snap_run() {
    let cmd = QemuCommand::from_config_with(
        &config(),
        Mode::Run,
        &paths("snap-"),
        &FakeHost { kvm: false },
    )
    .unwrap()
    .disk0_override("snap-sles15.qcow2");
    insta::assert_snapshot!("snap_run", lines(&cmd));
}

#[test]
fn kvm_auto_and_bridge_net() {
    let mut cfg = config();
    cfg.accel = Accel::Auto;
    cfg.net_type = NetType::Bridge;
    cfg.bridge = "br1".into();
    cfg.mac_format = "52:54:00:12:34:%02x".parse().unwrap();
    let cmd = QemuCommand::from_config_with(&cfg, Mode::Run, &paths(""), &FakeHost { kvm: true })
        .unwrap();
    insta::assert_snapshot!("bridge_net_kvm", lines(&cmd));
}

#[test]
fn no_net() {
    let mut cfg = config();
    cfg.net_type = NetType::None;
    cfg.cpu_model = Some("qemu64,+ssse3".into());
    insta::assert_snapshot!("no_net", lines(&build(&cfg, Mode::Run)));
}

#[test]
fn direct_kernel_boot() {
    let mut cfg = config();
    cfg.kernel = Some("/vm/vmlinuz".into());
    cfg.initrd = Some("/vm/initrd.img".into());
    cfg.append = Some("console=ttyS0 root=/dev/vda rw".into());
    insta::assert_snapshot!("direct_kernel_boot", lines(&build(&cfg, Mode::Foreground)));
}

#[test]
fn extra_disks_on_each_bus() {
    for bus in [DiskBus::Scsi, DiskBus::Nvme, DiskBus::Ide] {
        let mut cfg = config();
        cfg.disk_bus = bus;
        cfg.disk_cache = CacheMode::Writeback;
        cfg.disks[0] = Some("/data/disk1.raw".into());
        cfg.disks[1] = Some("/vm/disk2".into());
        let cmd = build(&cfg, Mode::Run);
        insta::assert_snapshot!(format!("extra_disks_{bus}"), lines(&cmd));
    }
}

#[test]
fn install_phase_1() {
    let mut cfg = config();
    cfg.disk0_format = Some(DiskFormat::Raw);
    let cmd = build(&cfg, Mode::Foreground)
        .disk0_cache(CacheMode::Unsafe)
        .kernel_boot(
            "/vm/install/linux",
            Some(Path::new("/vm/install/initrd")),
            Some("autoyast=device://sr1/autoinst.xml console=ttyS0"),
        )
        .add_cdrom("/srv/iso/SLE-15-SP6-Full-x86_64.iso")
        .add_cdrom("/vm/install/autoinst.iso")
        .floppy("/vm/install/autoinst.img")
        .no_reboot();
    insta::assert_snapshot!("install_phase_1", lines(&cmd));
}

#[test]
fn install_phase_2() {
    let mut cfg = config();
    cfg.disk0_format = Some(DiskFormat::Raw);
    let cmd = build(&cfg, Mode::Foreground)
        .disk0_cache(CacheMode::Unsafe)
        .add_cdrom("/srv/iso/SLE-15-SP6-Full-x86_64.iso")
        .no_reboot();
    insta::assert_snapshot!("install_phase_2", lines(&cmd));
}

#[test]
fn comma_in_a_file_name_stays_one_file() {
    let mut cfg = config();
    cfg.disk0_path = Some("/vm/a,b.qcow2".into());
    cfg.name = Some("x".into());
    let cmd = QemuCommand::from_config_with(
        &cfg,
        Mode::Run,
        &RuntimePaths {
            image: "/vm/a,b.qcow2".into(),
            pidfile: "/vm/a,b.qcow2.pid".into(),
            qmp_socket: "/run/a,b.qmp".into(),
            console_log: "/vm/a,b.log,server=off".into(),
        },
        &FakeHost { kvm: false },
    )
    .unwrap()
    .add_cdrom("/iso/x,readonly=off.iso");
    let text = lines(&cmd);
    assert!(text.contains("file=/vm/a,,b.qcow2,format=qcow2"));
    assert!(text.contains("logfile=/vm/a,,b.log,,server=off,"));
    insta::assert_snapshot!("comma_file_name", text);
}

#[test]
fn extra_args_come_last() {
    let mut cfg = config();
    cfg.extra_args = vec!["-device".into(), "virtio-rng-pci".into(), "-s".into()];
    let cmd = build(&cfg, Mode::Run).no_reboot().extra_args(["-S"]);
    let argv = cmd.argv();
    assert_eq!(
        &argv[argv.len() - 4..],
        ["-device", "virtio-rng-pci", "-s", "-S"]
    );
    insta::assert_snapshot!("extra_args_last", lines(&cmd));
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
    let mut cfg = config();
    cfg.console_telnet = true;
    let cmd = build(&cfg, Mode::Run);
    let text = lines(&cmd);
    assert!(text.contains("host=127.0.0.1,port=9993,server=on,wait=off,telnet=on,"));
    insta::assert_snapshot!("run_telnet_console", text);
}

/// Root running a user's VM: qemu drops to the VM directory's owner (`-runas`), which needs
/// set*uid under the sandbox; VMK_VNC_SOCKET=yes puts VNC on a unix socket, not a port.
#[test]
fn root_runs_a_users_vm_with_vnc_on_a_socket() {
    let mut cfg = config();
    cfg.vnc_socket = true;
    let cmd = QemuCommand::from_config_with(&cfg, Mode::Foreground, &paths(""), &RootHost).unwrap();
    let text = lines(&cmd);
    assert!(text.contains("\n-runas\n1000:100\n"));
    assert!(text.contains("\n-vnc\nunix:/run/vmk/sles15.vnc\n"));
    assert!(!text.contains("127.0.0.1:3"));
    insta::assert_snapshot!("root_runs_a_users_vm_vnc_socket", text);
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
