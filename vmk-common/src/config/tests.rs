//! Tests of loading: sources, precedence, expansion, errors.

use super::*;

/// A VM directory with system/user files in a temp dir and no process environment.
struct Fixture {
    tmp: tempfile::TempDir,
    env: BTreeMap<String, String>,
    overrides: Vec<(String, String)>,
    config_file: Option<PathBuf>,
}

impl Fixture {
    fn new() -> Self {
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
    fn vm(&self) -> PathBuf {
        self.tmp.path().join("vm")
    }
    fn write(&self, rel: &str, text: &str) -> &Self {
        std::fs::write(self.tmp.path().join(rel), text).unwrap();
        self
    }
    fn opts(&self) -> LoadOptions {
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
    fn load(&self) -> Result<VmConfig, ConfigError> {
        load(&self.opts())
    }
    fn err(&self) -> String {
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
    assert_eq!(c.disk_bus, DiskBus::Virtio);
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
            "1: VMK_DISK_BUS: expected one of virtio, scsi, ide, nvme, got \"usb\"",
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
    assert_eq!(c.disk_bus, DiskBus::Virtio);
}

#[test]
fn config_files_and_vm_directories_others_can_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let f = Fixture::new();
    f.write("vm/vm-config", "VMK_MEM=1G\n");
    chmod(&f.vm().join("vm-config"), 0o644);
    chmod(&f.vm(), 0o755);
    assert!(f.load().is_ok());
    // the VM directory
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
    chmod(&f.vm(), 0o700);
    // its files, and the user's and the system-wide stand-ins
    for (rel, mode) in [
        ("vm/vm-config", 0o666),
        ("vm/vmkrc", 0o620),
        ("etc-vmk-config", 0o602),
    ] {
        f.write(rel, "VMK_CPU=2\n");
        let p = f.tmp.path().join(rel);
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

// ---- hostile input: nothing hangs, nothing explodes, nothing leaks, every error is clear ----

/// Runs `f` on another thread and fails the test when it takes longer than `secs`: a config
/// or image read that blocks must fail the test, not hang it.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s"))
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// An error message is short and shows no raw control character.
fn assert_tame(e: &str) {
    assert!(
        e.len() < 600,
        "{} bytes: {}",
        e.len(),
        crate::text::excerpt(e)
    );
    assert!(
        !e.chars().any(|c| c.is_control()),
        "raw control character in {e:?}"
    );
}

#[test]
fn self_doubling_reference_chain_stops_at_the_line_that_goes_over() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let mut text = String::from("VMK_TAG=x\n");
    for _ in 0..64 {
        text.push_str("VMK_TAG=${VMK_TAG}${VMK_TAG}\n");
    }
    f.write("vm/vm-config", &text);
    let opts = f.opts();
    let start = std::time::Instant::now();
    let e = within(30, "the doubling config", move || load(&opts))
        .unwrap_err()
        .to_string();
    // line 1 makes 1 byte, line n+1 makes 2^n: 2^16 = 64 KiB is the most a value may be
    assert_eq!(
        e,
        format!(
            "{file}:18: VMK_TAG: the value is longer than a value may be (64 KiB) once its references are expanded"
        )
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    // the same through a variable of the user's own
    f.write("vm/vm-config", &text.replace("VMK_TAG", "T"));
    assert!(f
        .err()
        .starts_with(&format!("{file}:18: T: the value is longer")));
}

#[test]
fn many_copies_of_a_long_value_stop_at_the_load_budget() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let mut text = String::from("A=x\n");
    for _ in 0..15 {
        text.push_str("A=$A$A\n"); // 32 KiB
    }
    for i in 0..1000 {
        text.push_str(&format!("B{i}=$A$A\n")); // 64 KiB each
    }
    f.write("vm/vm-config", &text);
    let opts = f.opts();
    let e = within(30, "the copying config", move || load(&opts))
        .unwrap_err()
        .to_string();
    // 4 MiB of budget: the 15 doublings use 64 KiB - 2, then 63 copies fit
    assert_eq!(
        e,
        format!(
            "{file}:80: B63: expanding references makes more text than a config may (4 MiB over all values)"
        )
    );
}

#[test]
fn a_config_of_two_mib_is_refused() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let big =
        "# padding padding padding padding padding padding padding padding\n".repeat(32 << 10);
    assert!(big.len() > 2 << 20);
    f.write("vm/vm-config", &big);
    assert_eq!(
        f.err(),
        format!("{file}: is larger than a config may be (1024 KiB): is it a vmk config file?")
    );
    // the parser and the reader refuse it too, and the reader stops reading at the limit
    assert!(RawConfig::parse(big.as_bytes(), "c").is_err());
    let endless = std::io::Read::take(std::io::repeat(b'#'), u64::MAX);
    let e = within(30, "reading an endless stream", move || {
        RawConfig::read(endless, "stdin").map(drop)
    })
    .unwrap_err();
    assert!(e
        .to_string()
        .starts_with("stdin: is larger than a config may be"));
    // exactly the limit is still a config
    let mut fits = vec![b'#'; files::MAX_FILE_BYTES - 1];
    fits.push(b'\n');
    assert!(RawConfig::parse(&fits, "c").is_ok());
}

#[test]
fn dev_zero_as_config_is_refused_without_reading() {
    let mut f = Fixture::new();
    f.config_file = Some(PathBuf::from("/dev/zero"));
    let opts = f.opts();
    let e = within(10, "-c /dev/zero", move || load(&opts))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "/dev/zero: is a character device, not a regular file: a config must be one"
    );
    let e = files::read_config(Path::new("/dev/zero"), "/dev/zero").unwrap_err();
    assert!(e.to_string().contains("character device"));
    // a directory where the config should be
    f.config_file = Some(f.vm());
    assert!(f.err().contains("is a directory, not a regular file"));
}

#[test]
fn a_fifo_as_vm_config_is_refused_without_blocking() {
    let mut f = Fixture::new();
    mkfifo(&f.vm().join("vm-config"));
    let file = f.vm().join("vm-config").display().to_string();
    let opts = f.opts();
    let e = within(10, "a FIFO as vm-config", move || load(&opts))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{file}: is a FIFO, not a regular file: a config must be one")
    );
    // as -c, as the group's vmkrc, and for readers that do not check trust
    f.config_file = Some(f.vm().join("vm-config"));
    let opts = f.opts();
    assert!(within(10, "-c FIFO", move || load(&opts))
        .unwrap_err()
        .to_string()
        .contains("is a FIFO"));
    f.config_file = None;
    std::fs::remove_file(f.vm().join("vm-config")).unwrap();
    mkfifo(&f.vm().join("vmkrc"));
    let opts = f.opts();
    assert!(within(10, "a FIFO as vmkrc", move || load(&opts))
        .unwrap_err()
        .to_string()
        .contains("vmkrc: is a FIFO"));
    let p = f.vm().join("vmkrc");
    assert!(within(10, "read_config of a FIFO", move || {
        files::read_config(&p, "vmkrc")
    })
    .is_err());
    assert_eq!(
        files::read_config(&f.vm().join("missing"), "missing").unwrap(),
        None
    );
}

#[test]
fn the_format_probe_reads_only_files_and_block_devices() {
    let f = Fixture::new();
    let fifo = f.vm().join("disk0.qcow2");
    mkfifo(&fifo);
    let p = fifo.clone();
    let e = within(10, "probing a FIFO", move || DiskFormat::detect(&p)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} is a FIFO, not a disk image (a regular file or a block device)",
            fifo.display()
        )
    );
    let e = within(10, "probing /dev/zero", || {
        DiskFormat::detect(Path::new("/dev/zero"))
    })
    .unwrap_err();
    assert!(e
        .to_string()
        .contains("is a character device, not a disk image"));
    assert!(DiskFormat::detect(&f.vm())
        .unwrap_err()
        .to_string()
        .contains("is a directory"));
    // a symlink to a regular file is the file
    let img = f.vm().join("img");
    std::fs::write(&img, b"QFI\xfb").unwrap();
    std::os::unix::fs::symlink(&img, f.vm().join("link")).unwrap();
    assert_eq!(
        DiskFormat::detect(&f.vm().join("link")).unwrap(),
        DiskFormat::Qcow2
    );
}

#[test]
fn control_characters_in_values_are_refused_and_never_echoed() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let cases: [(&str, &str); 5] = [
        (
            "VMK_TAG=\"a\x1b]0;owned\x07\"\n",
            "1: VMK_TAG: the value holds a control character (\\x1b) at character 2: values must be printable text",
        ),
        (
            "VMK_NAME=x\nVMK_APPEND='ring\x07'\n",
            "2: VMK_APPEND: the value holds a control character (\\x07) at character 5",
        ),
        (
            "VMK_DISK0=disk\0.img\n",
            "1: VMK_DISK0: the value holds a NUL byte at character 5",
        ),
        (
            "VMK_TAG='two\nlines'\n",
            "1: VMK_TAG: the value holds a control character (\\n) at character 4",
        ),
        // a variable of the user's own may hold anything; a key that uses it may not
        (
            "ESC=\"\x1b[2J\"\nVMK_TAG=x$ESC\n",
            "2: VMK_TAG: the value holds a control character (\\x1b) at character 2",
        ),
    ];
    for (text, want) in cases {
        f.write("vm/vm-config", text);
        let e = f.err();
        assert!(e.starts_with(&format!("{file}:{want}")), "{text:?}: {e}");
        assert_tame(&e);
    }
    // a word list may span lines
    f.write(
        "vm/vm-config",
        "VMK_EXTRA_ARGS=\"\n  -device virtio-rng-pci\n\t-s\n\"\n",
    );
    assert_eq!(
        f.load().unwrap().extra_args,
        ["-device", "virtio-rng-pci", "-s"]
    );
    // the environment and the command line follow the same rule
    let mut f = f;
    f.write("vm/vm-config", "");
    f.env.insert("VMK_TAG".into(), "\x1b[31mred".into());
    let e = f.err();
    assert!(
        e.starts_with("environment: VMK_TAG: the value holds a control character (\\x1b)"),
        "{e}"
    );
    f.env.remove("VMK_TAG");
    f.overrides.push(("VMK_NAME".into(), "a\0b".into()));
    assert!(f
        .err()
        .starts_with("command line: VMK_NAME: the value holds a NUL byte"));
    // and `vmk set` checks with validate_value
    assert!(validate_value("VMK_TAG", "bell\x07").is_err());
    assert!(
        validate_value("VMK_TAG", &"x".repeat(files::MAX_VALUE_BYTES + 1))
            .unwrap_err()
            .to_string()
            .contains("longer than a value may be (64 KiB)")
    );
}

#[test]
fn values_that_fail_are_quoted_as_short_escaped_excerpts() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let long = "9".repeat(60_000);
    f.write("vm/vm-config", &format!("VMK_CPU={long}\n"));
    let e = f.err();
    assert!(
        e.starts_with(&format!(
            "{file}:1: VMK_CPU: expected a cpu count from 1 to 1024, got \"999"
        )) && e.ends_with(&format!(
            "… ({} more bytes)\"",
            60_000 - crate::text::EXCERPT_CHARS
        )),
        "{e}"
    );
    assert_tame(&e);
    // a key name of half a megabyte
    let name = format!("VMK_{}", "A".repeat(500_000));
    f.write("vm/vm-config", &format!("{name}=1\n"));
    let e = within(10, "a huge key name", move || {
        let _ = &name;
        validate_value(&name, "1").unwrap_err().to_string()
    });
    assert!(
        e.starts_with("unknown key VMK_AAAA") && e.contains("vmk-config(5)"),
        "{e}"
    );
    assert_tame(&e);
    let e = f.err();
    assert!(
        e.starts_with(&format!("{file}:1: unknown key VMK_AAA")),
        "{e}"
    );
    assert_tame(&e);
}

#[test]
fn a_leading_byte_order_mark_is_skipped() {
    let f = Fixture::new();
    f.write("vm/vm-config", "\u{feff}VMK_MEM=2G\nVMK_CPU=3\n");
    let c = f.load().unwrap();
    assert_eq!((c.mem.mib(), c.cpus), (2048, 3));
    assert_eq!(
        c.origin("VMK_MEM").to_string(),
        format!("{}:1", f.vm().join("vm-config").display())
    );
    // before a shebang, and kept by an edit
    let text = "\u{feff}#!/bin/sh\nVMK_MEM=2G\n";
    let raw = RawConfig::parse(text.as_bytes(), "c").unwrap();
    assert_eq!(raw.lines()[0].kind, LineKind::Shebang);
    assert_eq!(raw.lines()[0].span, 0..13);
    let spans: usize = raw.lines().iter().map(|l| l.span.len()).sum();
    assert_eq!(spans, text.len());
    assert_eq!(
        String::from_utf8(raw.set("VMK_MEM", "4G")).unwrap(),
        "\u{feff}#!/bin/sh\nVMK_MEM=4G\n"
    );
    let only = RawConfig::parse("\u{feff}".as_bytes(), "c").unwrap();
    assert_eq!(only.lines().len(), 0);
    // anywhere else it is an invisible character, named escaped
    let e = RawConfig::parse("VMK_MEM=2G\n\u{feff}VMK_CPU=3\n".as_bytes(), "c")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("c:2: expected an assignment") && e.contains("\\u{feff}"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_no_config_shows_only_the_start_of_its_line() {
    let mut f = Fixture::new();
    let shadow = f.tmp.path().join("shadow");
    std::fs::write(
        &shadow,
        "root:$6$s3cr3tsalt$Zm9vYmFyYmF6cXV4c2VjcmV0aGFzaA:19000:0:99999:7:::\nbin:*:19000::::::\n",
    )
    .unwrap();
    f.config_file = Some(shadow.clone());
    let e = f.err();
    assert_eq!(
        e,
        format!(
            "{}:1: expected an assignment like VMK_MEM=2048 or a # comment, but the line starts with \"root:\": is this a vmk config file?",
            shadow.display()
        )
    );
    // the system's own passwd, as `-c /etc/passwd`
    if std::fs::read("/etc/passwd").is_ok_and(|b| b.starts_with(b"root:")) {
        f.config_file = Some(PathBuf::from("/etc/passwd"));
        if let Err(e) = f.load() {
            let e = e.to_string();
            assert!(!e.contains("/bin/"), "{e}");
            assert_tame(&e);
        }
    }
    // one long line without `=`, with terminal escapes
    let junk = f.tmp.path().join("junk");
    std::fs::write(&junk, format!("{}\x1b[2J\n", "A".repeat(900_000))).unwrap();
    f.config_file = Some(junk);
    let e = f.err();
    assert!(
        e.contains(":1: expected an assignment") && e.contains("more bytes)"),
        "{e}"
    );
    assert_tame(&e);
    // hints where the line is almost an assignment
    for (line, hint) in [
        (
            "VMK_MEM = 2G",
            "starts with \"VMK_MEM \": no spaces around = in an assignment",
        ),
        (
            "1A=x",
            "starts with \"1A=\": a name cannot start with a digit",
        ),
        ("rm -rf /", "starts with \"rm \""),
    ] {
        let e = RawConfig::parse(format!("# c\n{line}\n").as_bytes(), "c")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c:2: expected an assignment") && e.ends_with(hint),
            "{e}"
        );
    }
}

#[test]
fn memory_and_sizes_out_of_range_are_refused_with_the_range() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    for bad in ["99999999999T", "8", "17T", "99999999999999999999999", "0"] {
        f.write("vm/vm-config", &format!("VMK_MEM={bad}\n"));
        assert_eq!(
            f.err(),
            format!(
                "{file}:1: VMK_MEM: expected a memory size from 16M to 16T, like 2048, 2G or 512M, got \"{bad}\""
            )
        );
    }
    for good in [("16", 16), ("16T", 16 << 20), ("4G", 4096)] {
        f.write("vm/vm-config", &format!("VMK_MEM={}\n", good.0));
        assert_eq!(f.load().unwrap().mem.mib(), good.1);
    }
    f.write("vm/vm-config", "VMK_INST_DISK0=2048T\n");
    assert!(f.err().starts_with(&format!(
        "{file}:1: VMK_INST_DISK0: expected a disk size above zero and up to 1024T"
    )));
    f.write("vm/vm-config", "VMK_INST_DISK0=99999999999999T\n");
    assert!(f.err().contains("up to 1024T"));
    f.write("vm/vm-config", "VMK_INST_DISK0=1024T\n");
    assert_eq!(f.load().unwrap().inst_disk0.bytes(), 1 << 50);
}

#[test]
fn ports_out_of_range_or_shared_are_refused() {
    let f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    let cases = [
        (
            "VMK_TELNET_BASE=65535\n",
            "1: VMK_TELNET_BASE: 65535 + VMK_VNC (1) is above the highest port, 65535",
        ),
        (
            "VMK_VNC=99\nVMK_SSH_BASE=65437\n",
            "2: VMK_SSH_BASE: 65437 + VMK_VNC (99) is above the highest port, 65535",
        ),
        (
            "VMK_SSH_BASE=0\n",
            "1: VMK_SSH_BASE: expected a port number from 1 to 65535, got \"0\"",
        ),
        (
            "VMK_TELNET_BASE=99999999999999999999\n",
            "1: VMK_TELNET_BASE: expected a port number from 1 to 65535",
        ),
        (
            "VMK_CONSOLE=telnet\nVMK_TELNET_BASE=5900\n",
            "2: VMK_TELNET_BASE: the serial console's port, VMK_TELNET_BASE + VMK_VNC is 5901, which is the VNC port, 5900 + VMK_VNC too",
        ),
        (
            "VMK_SSH_BASE=5900\n",
            "1: VMK_SSH_BASE: the ssh port, VMK_SSH_BASE + VMK_VNC is 5901, which is the VNC port",
        ),
        (
            "VMK_CONSOLE=telnet\nVMK_SSH_BASE=9990\n",
            "2: VMK_SSH_BASE: the ssh port, VMK_SSH_BASE + VMK_VNC is 9991, which is the serial console's port",
        ),
    ];
    for (text, want) in cases {
        f.write("vm/vm-config", text);
        let e = f.err();
        assert!(e.starts_with(&format!("{file}:{want}")), "{text:?}: {e}");
    }
    // a port that is not used cannot collide: the console is a unix socket by default
    f.write("vm/vm-config", "VMK_TELNET_BASE=5900\n");
    assert!(f.load().is_ok());
    f.write("vm/vm-config", "VMK_SSH_BASE=5900\nVMK_NET_TYPE=none\n");
    assert!(f.load().is_ok());
    // the highest ports that fit
    f.write(
        "vm/vm-config",
        "VMK_VNC=99\nVMK_TELNET_BASE=65436\nVMK_SSH_BASE=65400\n",
    );
    let c = f.load().unwrap();
    assert_eq!((c.vnc_port(), c.ssh_port()), (5999, 65499));
}

#[test]
fn keys_in_another_case_suggest_the_key() {
    let mut f = Fixture::new();
    let file = f.vm().join("vm-config").display().to_string();
    for name in ["vmk_mem", "VMK_mem", "Vmk_Mem"] {
        f.write("vm/vm-config", &format!("{name}=4096\n"));
        assert_eq!(
            f.err(),
            format!("{file}:1: unknown key {name} (did you mean VMK_MEM?)")
        );
    }
    f.write("vm/vm-config", "");
    f.overrides.push(("VMK_Mem".into(), "2G".into()));
    assert_eq!(
        f.err(),
        "command line: unknown key VMK_Mem (did you mean VMK_MEM?)"
    );
    f.overrides.clear();
    // a name of the user's own that is no key stays theirs
    f.write("vm/vm-config", "mem=4G\nVMK_MEM=$mem\n");
    assert_eq!(f.load().unwrap().mem.mib(), 4096);
    assert_eq!(
        validate_value("vmk_disk_cache", "none")
            .unwrap_err()
            .to_string(),
        "unknown key vmk_disk_cache (did you mean VMK_DISK_CACHE?)"
    );
}
