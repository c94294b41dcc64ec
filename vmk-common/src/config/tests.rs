//! Tests of loading: sources, precedence, expansion, errors.

use super::*;

/// A VM directory with system/user files in a temp dir and no process environment.
pub(super) struct Fixture {
    pub(super) tmp: tempfile::TempDir,
    pub(super) env: BTreeMap<String, String>,
    pub(super) overrides: Vec<(String, String)>,
    pub(super) config_file: Option<PathBuf>,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("vm")).unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        let mut env = BTreeMap::new();
        env.insert(
            "HOME".to_string(),
            tmp.path().join("home").display().to_string(),
        );
        Fixture {
            tmp,
            env,
            overrides: Vec::new(),
            config_file: None,
        }
    }
    pub(super) fn vm(&self) -> PathBuf {
        self.tmp.path().join("vm")
    }
    pub(super) fn write(&self, rel: &str, text: &str) -> &Self {
        std::fs::write(self.tmp.path().join(rel), text).unwrap();
        self
    }
    pub(super) fn opts(&self) -> LoadOptions {
        LoadOptions {
            config_file: self.config_file.clone(),
            dir: Some(self.vm()),
            overrides: self.overrides.clone(),
            system_file: Some(self.tmp.path().join("etc-vmk-config")),
            user_file: None,
            env: true,
            env_vars: Some(self.env.clone()),
        }
    }
    pub(super) fn load(&self) -> Result<VmConfig, ConfigError> {
        load(&self.opts())
    }
    pub(super) fn err(&self) -> String {
        self.load().unwrap_err().to_string()
    }
}

#[test]
fn defaults_without_any_file() {
    let f = Fixture::new();
    let c = f.load().unwrap();
    assert_eq!(c.dir, f.vm());
    assert_eq!(c.config_file, f.vm().join("vm-config"));
    assert_eq!(c.vnc, 1);
    assert_eq!(c.mem.mib(), 1024);
    assert_eq!(c.cpus, 2);
    assert_eq!(c.disk_bus, DiskBus::Scsi);
    assert_eq!(c.disk0_cache, CacheMode::None);
    assert_eq!(c.accel, Accel::Auto);
    assert_eq!(c.net_type, NetType::User);
    assert_eq!(c.bridge, "br0");
    assert_eq!(c.listen.to_string(), "127.0.0.1");
    assert_eq!(
        (c.vnc_port(), c.telnet_port(), c.ssh_port()),
        (5901, 9991, 10021)
    );
    assert_eq!(c.mac(), "52:54:00:00:00:01");
    assert_eq!(c.inst_disk0.to_string(), "30G");
    assert_eq!(c.inst_disk.to_string(), "100G");
    assert!(c.ssh_credential);
    assert!(!c.cloud_init);
    assert_eq!(c.display_name(), "vm");
    assert_eq!(c.origin("VMK_MEM"), Origin::Default);
    let e = c.disk0().unwrap_err().to_string();
    assert!(
        e.contains("is not a VM directory: it has no vm-config")
            && e.contains("`vmk bootstrap DIR`")
            && e.contains("`vmk newconfig > vm-config`"),
        "{e}"
    );
    f.write("vm/vm-config", "VMK_NAME=x\n");
    let e = f.load().unwrap().disk0().unwrap_err().to_string();
    assert!(
        e.contains("VMK_DISK0 is not set in ")
            && e.ends_with("vm-config: set it or run `vmk mkdisk0`"),
        "{e}"
    );
    assert!(c.extra_disks().is_empty());
    assert!(c.iso().is_none());
    serde_json::to_string(&c).unwrap();
}

#[test]
fn original_style_config_loads() {
    let f = Fixture::new();
    f.write(
        "vm/vm-config",
        "#!/bin/sh\n# sles 15 test VM\n\nVMK_MEM=\"4096\"\nVMK_DISK0='sles15.qcow2' # the image\nexport VMK_VNC=3\n\
         VMK_ISO=SLE-15.iso\nVMK_ISO_DIR=~/isos\nVMK_EXTRA_ARGS=\"-device 'virtio-rng-pci' -s\"\n",
    );
    let c = f.load().unwrap();
    assert_eq!(c.mem.mib(), 4096);
    assert_eq!(c.disk0().unwrap(), f.vm().join("sles15.qcow2"));
    assert_eq!(c.vnc, 3);
    assert_eq!(c.mac(), "52:54:00:00:00:03");
    assert_eq!(c.iso().unwrap(), f.tmp.path().join("home/isos/SLE-15.iso"));
    assert_eq!(c.extra_args, ["-device", "virtio-rng-pci", "-s"]);
    assert_eq!(
        c.origin("VMK_VNC").to_string(),
        format!("{}:6", f.vm().join("vm-config").display())
    );
}

/// `~/` means the home directory in every key that names a file or folder, as in the
/// original's sourced configs.
#[test]
fn tilde_is_home_in_every_path_like_key() {
    let f = Fixture::new();
    f.write(
        "vm/vm-config",
        "VMK_DISK0=~/d0.img\nVMK_DISK1=~/d1.img\nVMK_KERNEL=~/k\nVMK_INITRD=~/i\n\
         VMK_ISO=x.iso\nVMK_ISO_DIR=~/isos\nVMK_QEMU=~/bin/qemu\nVMK_SHARE=~/src:src\n",
    );
    let c = f.load().unwrap();
    let home = f.tmp.path().join("home");
    assert_eq!(c.disk0().unwrap(), home.join("d0.img"));
    assert_eq!(c.extra_disks()[0], home.join("d1.img"));
    assert_eq!(c.kernel.as_deref(), Some(home.join("k").as_path()));
    assert_eq!(c.initrd.as_deref(), Some(home.join("i").as_path()));
    assert_eq!(c.iso().unwrap(), home.join("isos/x.iso"));
    assert_eq!(c.qemu.as_deref(), Some(home.join("bin/qemu").as_path()));
    assert_eq!(c.shares[0].dir, home.join("src"));
    f.write("vm/vm-config", "VMK_DISK0=d.img\nVMK_ISO=~/isos/y.iso\n");
    assert_eq!(f.load().unwrap().iso().unwrap(), home.join("isos/y.iso"));
}

#[test]
fn precedence_across_all_six_sources() {
    let mut f = Fixture::new();
    // each source sets VMK_TAG and one key of its own; later sources win
    f.write(
        "etc-vmk-config",
        "VMK_TAG=system\nVMK_CPU=3\nVMK_NAME=sys\n",
    );
    f.write("home/.vmkrc", "VMK_TAG=user\nVMK_MEM=2G\nVMK_NAME=usr\n");
    f.write("vm/vmkrc", "VMK_TAG=group\nVMK_VNC=7\nVMK_NAME=grp\n");
    f.write(
        "vm/vm-config",
        "VMK_TAG=vm\nVMK_DISK0=d.qcow2\nVMK_NAME=vm\n",
    );
    let c = f.load().unwrap();
    assert_eq!(c.tag.as_deref(), Some("vm"));
    assert_eq!((c.cpus, c.mem.mib(), c.vnc), (3, 2048, 7));
    assert_eq!(c.name.as_deref(), Some("vm"));
    f.env.insert("VMK_TAG".into(), "env".into());
    f.env.insert("VMK_NAME".into(), "envname".into());
    // control variables of the front door are not keys and are ignored
    f.env.insert("VMK".into(), "/usr/bin/vmk".into());
    f.env.insert("VMK_OPT_DRY_RUN".into(), "1".into());
    f.env.insert("VMK_TOTALLY_UNKNOWN".into(), "x".into());
    let c = f.load().unwrap();
    assert_eq!(c.tag.as_deref(), Some("env"));
    assert_eq!(c.origin("VMK_TAG"), Origin::Env);
    f.overrides.push(("VMK_TAG".into(), "cli".into()));
    let c = f.load().unwrap();
    assert_eq!(c.tag.as_deref(), Some("cli"));
    assert_eq!(c.name.as_deref(), Some("envname"));
    assert_eq!(c.origin("VMK_TAG"), Origin::CommandLine);
    // with env off, the environment does not count
    let mut o = f.opts();
    o.env = false;
    o.user_file = Some(f.tmp.path().join("home/.vmkrc"));
    let c = load(&o).unwrap();
    assert_eq!(c.name.as_deref(), Some("vm"));
}

#[test]
fn config_file_option_sets_the_vm_dir() {
    let mut f = Fixture::new();
    std::fs::create_dir_all(f.tmp.path().join("other")).unwrap();
    f.write("other/my-config", "VMK_DISK0=img\n");
    f.write("other/vmkrc", "VMK_CPU=5\n");
    f.config_file = Some(f.tmp.path().join("other/my-config"));
    let c = f.load().unwrap();
    assert_eq!(c.dir, f.tmp.path().join("other"));
    assert_eq!(c.disk0().unwrap(), f.tmp.path().join("other/img"));
    assert_eq!(c.cpus, 5);
    f.config_file = Some(f.tmp.path().join("other/missing"));
    let e = f.err();
    assert!(e.contains("missing: no such config file"), "{e}");
    let err = f.load().unwrap_err();
    assert!(crate::cli::exit_status_of(&anyhow::Error::new(err)) == 2);
}

#[test]
fn references_expand_across_sources() {
    let f = Fixture::new();
    f.write("home/.vmkrc", "ISOS=/srv/iso\nVMK_NAME=base\n");
    f.write(
        "vm/vm-config",
        "VMK_ISO_DIR=${ISOS}/sles\nVMK_TAG=\"$VMK_NAME-${VMK_NAME}\"\nVMK_APPEND='${VMK_NAME}'\nVMK_KERNEL=$HOME/vmlinuz\n",
    );
    let mut o = f.opts();
    o.user_file = Some(f.tmp.path().join("home/.vmkrc"));
    let c = load(&o).unwrap();
    assert_eq!(c.iso_dir.as_deref(), Some(Path::new("/srv/iso/sles")));
    assert_eq!(c.tag.as_deref(), Some("base-base"));
    assert_eq!(c.append.as_deref(), Some("${VMK_NAME}"));
    assert_eq!(c.kernel, Some(f.tmp.path().join("home/vmlinuz")));
    assert_eq!(c.other.get("ISOS").map(String::as_str), Some("/srv/iso"));
    // a VMK_ key that is not assigned earlier is an error, never ""
    f.write("vm/vm-config", "VMK_TAG=x\nVMK_NAME=${VMK_HOSTNAME}\n");
    assert_eq!(
        f.err(),
        format!(
            "{}:2: VMK_NAME: ${{VMK_HOSTNAME}} is not set: only keys assigned earlier (or, outside VMK_, environment variables) can be referenced",
            f.vm().join("vm-config").display()
        )
    );
    f.write("vm/vm-config", "VMK_TAG=$NOT_IN_ENV\n");
    assert!(f.err().contains(":1: VMK_TAG: ${NOT_IN_ENV} is not set"));
}

#[test]
fn errors_name_file_line_key_and_expectation() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let cases = [
        (
            "# c\nVMK_MEM=lots\n",
            "2: VMK_MEM: expected a memory size like 2048, 2G or 512M, got \"lots\"",
        ),
        (
            "VMK_MEMM=1\n",
            "1: unknown key VMK_MEMM (did you mean VMK_MEM?)",
        ),
        (
            "VMK_VNC=100\n",
            "1: VMK_VNC: expected a VM number from 0 to 99, got \"100\"",
        ),
        (
            "VMK_NET_TYPE=tap\n",
            "1: VMK_NET_TYPE: expected one of user, bridge, none, got \"tap\"",
        ),
        (
            "VMK_SSH_BASE=65500\nVMK_VNC=99\n",
            "1: VMK_SSH_BASE: 65500 + VMK_VNC (99) is above the highest port, 65535",
        ),
        (
            "VMK_MAC_BASE_FORMAT=52:54:00:00:00:%d\nVMK_VNC=7\n",
            "1: VMK_MAC_BASE_FORMAT: expected a format that gives a MAC address",
        ),
        (
            "VMK_INITRD=initrd\n",
            "1: VMK_INITRD: is set but VMK_KERNEL is not",
        ),
        (
            "VMK_LISTEN=localhost\n",
            "1: VMK_LISTEN: expected an IP address",
        ),
        (
            "VMK_DISK_BUS=usb\n",
            "1: VMK_DISK_BUS: expected one of scsi, virtio, lsi, ide, nvme, got \"usb\"",
        ),
        (
            "VMK_SSH_CREDENTIAL=maybe\n",
            "1: VMK_SSH_CREDENTIAL: expected yes or no, got \"maybe\"",
        ),
    ];
    for (text, want) in cases {
        f.write("vm/vm-config", text);
        let e = f.err();
        assert!(e.starts_with(&format!("{file}:{want}")), "{text:?}: {e}");
    }
    let mut f = f;
    f.env.insert("VMK_MEM".into(), "huge".into());
    f.write("vm/vm-config", "");
    assert_eq!(
        f.err(),
        "environment: VMK_MEM: expected a memory size like 2048, 2G or 512M, got \"huge\""
    );
    f.env.remove("VMK_MEM");
    f.overrides.push(("VMK_CPUU".into(), "2".into()));
    assert_eq!(
        f.err(),
        "command line: unknown key VMK_CPUU (did you mean VMK_CPU?)"
    );
}

#[test]
fn display_names_relative_files_as_given() {
    let f = Fixture::new();
    f.write("vm/vm-config", "VMK_MEM=lots\n");
    let o = LoadOptions {
        config_file: Some(PathBuf::from("vm-config")),
        ..f.opts()
    };
    // a relative -c path is resolved against the cwd, which is not the fixture: it is missing
    let e = load(&o).unwrap_err();
    assert_eq!(e.file.as_deref(), Some("vm-config"));
}

#[test]
fn injection_runs_nothing() {
    let f = Fixture::new();
    let marker = f.tmp.path().join("pwned");
    for line in [
        format!("VMK_NAME=$(touch {})", marker.display()),
        format!("VMK_NAME=`touch {}`", marker.display()),
        format!("VMK_NAME=x; touch {}", marker.display()),
        format!("VMK_NAME=x && touch {}", marker.display()),
        format!("VMK_NAME=x | touch {}", marker.display()),
        format!("VMK_TAG=\"$(touch {})\"", marker.display()),
    ] {
        f.write("vm/vm-config", &format!("#!/bin/sh\n{line}\n"));
        let e = f.err();
        assert!(
            e.starts_with(&format!("{}:2: ", f.vm().join("vm-config").display())),
            "{line}: {e}"
        );
        assert!(!marker.exists(), "{line} ran something");
    }
    // the exact case of the brief
    let e = RawConfig::parse(b"VMK_NAME=$(touch /tmp/x)\n", "vm-config").unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm-config:1: VMK_NAME: command substitution is not supported: vmk never runs a shell"
    );
    // quoted in single quotes it is text; VMK_TAG is free text so it loads, and runs nothing
    f.write(
        "vm/vm-config",
        &format!("VMK_TAG='$(touch {})'\n", marker.display()),
    );
    assert_eq!(
        f.load().unwrap().tag.unwrap(),
        format!("$(touch {})", marker.display())
    );
    assert!(!marker.exists());
}

#[test]
fn extra_disks_fall_back_to_files_in_the_vm_dir() {
    let f = Fixture::new();
    f.write("vm/disk2", "");
    f.write("vm/disk1", "");
    f.write("vm/vm-config", "VMK_DISK1=/data/big.raw\nVMK_DISK3=third\n");
    let c = f.load().unwrap();
    assert_eq!(
        c.extra_disks(),
        [
            PathBuf::from("/data/big.raw"),
            f.vm().join("disk2"),
            f.vm().join("third")
        ]
    );
}

#[test]
fn iso_lookup() {
    let f = Fixture::new();
    f.write("vm/vm-config", "VMK_ISO=a.iso\n");
    assert_eq!(f.load().unwrap().iso().unwrap(), f.vm().join("a.iso"));
    f.write("vm/vm-config", "VMK_ISO=a.iso\nVMK_ISO_DIR=/srv/iso\n");
    assert_eq!(
        f.load().unwrap().iso().unwrap(),
        PathBuf::from("/srv/iso/a.iso")
    );
    f.write("vm/vm-config", "VMK_ISO=./a.iso\nVMK_ISO_DIR=/srv/iso\n");
    assert_eq!(f.load().unwrap().iso().unwrap(), f.vm().join("./a.iso"));
    f.write("vm/vm-config", "VMK_QEMU=qemu-system-aarch64\n");
    assert_eq!(
        f.load().unwrap().qemu.unwrap(),
        PathBuf::from("qemu-system-aarch64")
    );
    f.write("vm/vm-config", "VMK_QEMU=bin/qemu\n");
    assert_eq!(f.load().unwrap().qemu.unwrap(), f.vm().join("bin/qemu"));
}

#[test]
fn empty_values_mean_default() {
    let f = Fixture::new();
    f.write("etc-vmk-config", "VMK_MEM=4G\n");
    f.write("vm/vm-config", "VMK_MEM=\nVMK_DISK_BUS=\"\"\n");
    let c = f.load().unwrap();
    assert_eq!(c.mem.mib(), 1024);
    assert_eq!(c.disk_bus, DiskBus::Scsi);
}

#[test]
fn config_files_and_vm_directories_others_can_write_are_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let f = Fixture::new();
    f.write("vm/vm-config", "VMK_MEM=1G\n");
    chmod(&f.vm().join("vm-config"), 0o644);
    chmod(&f.vm(), 0o755);
    assert!(f.load().is_ok());
    // group-writable with the owner's private group: fine (umask 002 systems)
    let private = std::fs::metadata(f.vm()).unwrap();
    if super::trust::is_private_group(private.uid(), private.gid()) {
        chmod(&f.vm(), 0o775);
        assert!(f.load().is_ok());
    }
    // writable by a group others are in (nogroup): only root can give files that group
    let root = crate::host::is_root();
    let shared_group = |p: &Path| {
        if root {
            std::os::unix::fs::lchown(p, None, Some(65534)).unwrap();
        }
    };
    if root {
        shared_group(&f.vm());
        chmod(&f.vm(), 0o775);
        let e = f.err();
        let vm = f.vm().display().to_string();
        assert!(
            e.contains(&vm)
                && e.contains("refusing this VM directory")
                && e.contains("writable by its group")
                && e.contains("mode 0775")
                && e.contains(&format!("chmod go-w {vm}")),
            "{e}"
        );
    }
    chmod(&f.vm(), 0o700);
    // its files, and the user's and the system-wide stand-ins
    for (rel, mode) in [
        ("vm/vm-config", 0o666),
        ("vm/vmkrc", 0o620),
        ("etc-vmk-config", 0o602),
    ] {
        if mode & 0o002 == 0 && !root {
            continue; // group-only: the test cannot make a shared group without root
        }
        f.write(rel, "VMK_CPU=2\n");
        let p = f.tmp.path().join(rel);
        shared_group(&p);
        chmod(&p, mode);
        let e = f.err();
        let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
        assert!(
            e.contains(name)
                && e.contains("refusing this config file")
                && e.contains(&format!("mode {mode:04o}"))
                && e.contains("chmod go-w"),
            "{rel}: {e}"
        );
        chmod(&p, 0o600);
    }
    assert_eq!(f.load().unwrap().cpus, 2);
    // a directory where the config should be is no config
    std::fs::remove_file(f.vm().join("vmkrc")).unwrap();
    std::fs::create_dir(f.vm().join("vmkrc")).unwrap();
    assert!(f.err().contains("not a regular file"), "{}", f.err());
}

#[test]
fn a_directory_without_a_config_is_not_checked() {
    use std::os::unix::fs::PermissionsExt;
    // `vmk ps` or `newconfig` run from a shared directory such as /tmp still work
    let f = Fixture::new();
    std::fs::set_permissions(f.vm(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let c = f.load().unwrap();
    assert!(!c.config_found);
}

#[test]
fn vmk_system_config_names_the_file_read_instead_of_etc_vmk_config() {
    let mut f = Fixture::new();
    f.write("other-system", "VMK_MEM=3G\n");
    let mut opts = f.opts();
    opts.system_file = None;
    f.env.insert(
        SYSTEM_FILE_VAR.to_string(),
        f.tmp.path().join("other-system").display().to_string(),
    );
    opts.env_vars = Some(f.env.clone());
    let c = load(&opts).unwrap();
    assert_eq!(c.mem.mib(), 3 * 1024);
    let origin = c.origin("VMK_MEM").to_string();
    assert!(origin.contains("other-system"), "{origin}");
    // a path that does not exist: no system-wide settings (whatever /etc/vmk-config says)
    f.env.insert(
        SYSTEM_FILE_VAR.to_string(),
        f.tmp.path().join("absent").display().to_string(),
    );
    opts.env_vars = Some(f.env.clone());
    assert_eq!(load(&opts).unwrap().mem.mib(), 1024);
    // held to a user's file's rules: group-writable is refused
    std::fs::set_permissions(
        f.tmp.path().join("other-system"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    f.env.insert(
        SYSTEM_FILE_VAR.to_string(),
        f.tmp.path().join("other-system").display().to_string(),
    );
    opts.env_vars = Some(f.env.clone());
    let e = load(&opts).unwrap_err().to_string();
    assert!(e.contains("other-system"), "{e}");
}

/// The shell's defaults, as users of a sourced config wrote them: `${NAME:-word}` takes the
/// word when NAME is unset or empty, `${NAME-word}` only when it is unset.
#[test]
fn shell_defaults_in_references() {
    let f = Fixture::new();
    f.write(
        "vm/vm-config",
        "EMPTY=\nVMK_NAME=${UNSET_ONE:-sles}${EMPTY-x}15\nVMK_TAG=${EMPTY:-empty}-${VMK_NAME-no}\n\
         VMK_MEM=${MEMORY:-2G}\n",
    );
    let c = f.load().unwrap();
    assert_eq!(c.name.as_deref(), Some("sles15"));
    assert_eq!(c.tag.as_deref(), Some("empty-sles15"));
    assert_eq!(c.mem, "2G".parse().unwrap());
    f.write("vm/vm-config", "VMK_NAME=${X:-a b}\n");
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("VMK_NAME"), "{e}");
}

/// The original's internal settings in an rc file are ignored with a warning, not an error
/// that would break every VM reading that file.
#[test]
fn original_internal_keys_in_rc_files_are_ignored() {
    let f = Fixture::new();
    f.write(
        "vm/vm-config",
        "VMK_DEBUG=1\nVMK_LAZY_DEFAULTS=yes\nVMK_DRY_RUN=true\nVMK_MEM=2G\n",
    );
    let c = f.load().unwrap();
    assert_eq!(c.mem, "2G".parse().unwrap());
    assert!(!c.other.contains_key("VMK_DEBUG"));
}
