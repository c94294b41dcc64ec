//! The libvirt domain XML of every mode the qemu argv snapshots hold (the shared table
//! `vmk_common::qemu::fixtures::MODES`), and its parity with the argv: for each mode, the
//! disks, CD-ROMs, MACs, forwarded ports, VNC, console, kernel arguments and credentials
//! read back from the XML equal those read from the argv of the same command.
//!
//! Review changes with `INSTA_UPDATE=always cargo test -p vmk-libvirt --test xml`.

use std::collections::BTreeMap;

use vmk_common::qemu::fixtures::{self, MODES};
use vmk_common::qemu::QemuCommand;
use vmk_common::state::split_qemu_opts;
use vmk_libvirt::xml::{nodes, Domain, Node};

fn domain_xml(cmd: &QemuCommand) -> anyhow::Result<String> {
    Ok(Domain::from_command(cmd, &cmd.arch)?.to_xml())
}

#[test]
fn every_mode() {
    for (name, make) in MODES {
        let text = match domain_xml(&make()) {
            Ok(x) => x,
            Err(e) => format!("error: {e:#}\n"),
        };
        insta::assert_snapshot!(*name, text);
    }
}

/// What a VM's hardware is, as far as both forms can say it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Facts {
    /// (file, format, cache) of each disk.
    disks: Vec<(String, String, String)>,
    cdroms: Vec<String>,
    floppy: Option<String>,
    macs: Vec<String>,
    /// hostfwd rules.
    forwards: Vec<String>,
    /// `listen:port` or `unix:path`.
    vnc: Option<String>,
    /// Telnet console port.
    telnet: Option<String>,
    console_log: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    append: Option<String>,
    credentials: Vec<String>,
    memory_mib: u64,
    cpus: u32,
    /// The TPM's device model.
    tpm: Option<String>,
    /// UEFI: firmware code and the VM's variable store.
    flash: Vec<String>,
    /// Shared folders: (folder, tag, read-only, virtiofs).
    shares: Vec<(String, String, bool, bool)>,
    /// Guest memory shared with other processes (virtiofsd).
    shared_memory: bool,
}

fn opts(value: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let mut words = Vec::new();
    let mut kv = BTreeMap::new();
    for part in split_qemu_opts(value.as_bytes()) {
        let part = String::from_utf8(part).unwrap();
        match part.split_once('=') {
            Some((k, v)) => {
                kv.insert(k.to_string(), v.to_string());
            }
            None => words.push(part),
        }
    }
    (words, kv)
}

/// The facts of `cmd`'s argv; a virtiofs share's folder is read from its virtiofsd's
/// command line (`-o source=`), which starts beside qemu.
fn facts_of_argv(cmd: &QemuCommand) -> Facts {
    let argv: Vec<String> = cmd
        .argv()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let virtiofsd_source = |socket: &str| -> String {
        let d = cmd
            .shares
            .iter()
            .filter_map(|s| s.daemon())
            .find(|d| d.socket.to_string_lossy() == socket)
            .expect("a virtiofsd for the socket");
        let args: Vec<String> = d
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let source = args
            .iter()
            .find_map(|a| a.strip_prefix("source="))
            .expect("-o source=");
        source.replace("\\,", ",").replace("\\\\", "\\")
    };
    let mut vfs_sockets = BTreeMap::new();
    let mut f = Facts::default();
    for w in argv.windows(2) {
        let (opt, value) = (w[0].as_str(), w[1].as_str());
        let (words, kv) = opts(value);
        let get = |k: &str| kv.get(k).cloned();
        match opt {
            "-drive" if get("media").as_deref() == Some("cdrom") => {
                f.cdroms.push(get("file").unwrap())
            }
            "-drive" if get("id").as_deref() == Some("fd0") => f.floppy = get("file"),
            "-drive" if get("if").as_deref() == Some("pflash") => {
                f.flash.push(get("file").unwrap())
            }
            "-drive" => f.disks.push((
                get("file").unwrap(),
                get("format").unwrap(),
                get("cache").unwrap(),
            )),
            "-device" if kv.contains_key("mac") => f.macs.push(get("mac").unwrap()),
            "-device" if kv.contains_key("tpmdev") => f.tpm = words.first().cloned(),
            "-fsdev" => f.shares.push((
                get("path").unwrap(),
                get("id").unwrap(),
                get("readonly").as_deref() == Some("on"),
                false,
            )),
            "-chardev" if get("id").is_some_and(|i| i.starts_with("vfs")) => {
                vfs_sockets.insert(get("id").unwrap(), get("path").unwrap());
            }
            "-device" if words.first().map(String::as_str) == Some("vhost-user-fs-pci") => {
                let socket = &vfs_sockets[&get("chardev").unwrap()];
                f.shares
                    .push((virtiofsd_source(socket), get("tag").unwrap(), false, true));
            }
            "-object" if words.first().map(String::as_str) == Some("memory-backend-memfd") => {
                f.shared_memory = get("share").as_deref() == Some("on")
            }
            "-device" if kv.contains_key("mount_tag") => {
                let id = get("fsdev").unwrap();
                let tag = get("mount_tag").unwrap();
                for s in f.shares.iter_mut().filter(|s| s.1 == id) {
                    s.1 = tag.clone();
                }
            }
            "-netdev" if words.first().map(String::as_str) == Some("user") => {
                f.forwards.extend(get("hostfwd"))
            }
            "-vnc" => {
                f.vnc = Some(match value.strip_prefix("unix:") {
                    Some(p) => format!("unix:{}", opts(p).0[0]),
                    None => {
                        let (listen, n) = value.rsplit_once(':').unwrap();
                        format!("{listen}:{}", 5900 + n.parse::<u16>().unwrap())
                    }
                })
            }
            "-chardev" if get("id").as_deref() == Some("serial0") => {
                f.console_log = get("logfile");
                if get("telnet").as_deref() == Some("on") {
                    f.telnet = get("port");
                }
            }
            "-kernel" => f.kernel = Some(value.into()),
            "-initrd" => f.initrd = Some(value.into()),
            "-append" => f.append = Some(value.into()),
            "-smbios" => f.credentials.extend(get("value")),
            "-m" => f.memory_mib = value.parse().unwrap(),
            "-smp" => f.cpus = value.parse().unwrap(),
            _ => {}
        }
    }
    f
}

fn facts_of_xml(xml: &str) -> Facts {
    let nodes = nodes(xml).unwrap();
    let mut f = Facts::default();
    let attr = |n: &Node, k: &str| n.attrs.get(k).cloned().unwrap_or_default();
    let mut disk: Option<(String, String, String, String)> = None; // device, file, format, cache
    let flush = |d: Option<(String, String, String, String)>, f: &mut Facts| {
        if let Some((device, file, format, cache)) = d {
            match device.as_str() {
                "cdrom" => f.cdroms.push(file),
                "floppy" => f.floppy = Some(file),
                _ => f.disks.push((file, format, cache)),
            }
        }
    };
    for n in &nodes {
        match n.path.as_str() {
            "domain/devices/disk" => {
                flush(disk.take(), &mut f);
                disk = Some((
                    attr(n, "device"),
                    String::new(),
                    String::new(),
                    String::new(),
                ));
            }
            "domain/devices/disk/source" => disk.as_mut().unwrap().1 = attr(n, "file"),
            "domain/devices/disk/driver" => {
                let d = disk.as_mut().unwrap();
                d.2 = attr(n, "type");
                d.3 = attr(n, "cache");
            }
            "domain/devices/interface/mac" => f.macs.push(attr(n, "address")),
            "domain/devices/tpm" => f.tpm = Some(attr(n, "model")),
            "domain/devices/filesystem" => {
                f.shares.push((String::new(), String::new(), false, false))
            }
            "domain/devices/filesystem/driver" => {
                f.shares.last_mut().unwrap().3 = attr(n, "type") == "virtiofs"
            }
            "domain/memoryBacking/access" => f.shared_memory = attr(n, "mode") == "shared",
            "domain/devices/filesystem/source" => f.shares.last_mut().unwrap().0 = attr(n, "dir"),
            "domain/devices/filesystem/target" => f.shares.last_mut().unwrap().1 = attr(n, "dir"),
            "domain/devices/filesystem/readonly" => f.shares.last_mut().unwrap().2 = true,
            "domain/qemu:commandline/qemu:arg" => {
                let (words, kv) = opts(&attr(n, "value"));
                if words.first().map(String::as_str) == Some("user") {
                    f.forwards.extend(kv.get("hostfwd").cloned());
                }
                f.macs.extend(kv.get("mac").cloned());
            }
            "domain/devices/graphics" => {
                f.vnc = Some(match n.attrs.get("socket") {
                    Some(s) => format!("unix:{s}"),
                    None => {
                        let listen = attr(n, "listen");
                        let listen = if listen.contains(':') {
                            format!("[{listen}]")
                        } else {
                            listen
                        };
                        format!("{listen}:{}", attr(n, "port"))
                    }
                })
            }
            "domain/devices/serial/source" => f.telnet = Some(attr(n, "service")),
            "domain/devices/serial/log" => f.console_log = Some(attr(n, "file")),
            "domain/os/kernel" => f.kernel = Some(n.text.clone()),
            "domain/os/loader" | "domain/os/nvram" => f.flash.push(n.text.clone()),
            "domain/os/initrd" => f.initrd = Some(n.text.clone()),
            "domain/os/cmdline" => f.append = Some(n.text.clone()),
            "domain/sysinfo/oemStrings/entry" => f.credentials.push(n.text.clone()),
            "domain/memory" => f.memory_mib = n.text.parse::<u64>().unwrap() / 1024,
            "domain/vcpu" => f.cpus = n.text.parse().unwrap(),
            _ => {}
        }
    }
    flush(disk, &mut f);
    f
}

#[test]
fn xml_and_argv_agree_in_every_mode() {
    let mut checked = 0;
    for (name, make) in MODES {
        let cmd = make();
        let Ok(xml) = domain_xml(&cmd) else {
            continue; // modes libvirt cannot hold are snapshotted as their error
        };
        let from_argv = facts_of_argv(&cmd);
        let from_xml = facts_of_xml(&xml);
        assert_eq!(from_xml, from_argv, "mode {name}");
        assert!(!from_argv.disks.is_empty(), "mode {name} has no disk");
        checked += 1;
    }
    assert!(checked >= MODES.len() - 1, "only {checked} modes compared");
}

/// The parity check itself sees what it compares (a fact missing from one side fails).
#[test]
fn parity_facts_are_read_from_both_forms() {
    let tpm = facts_of_xml(&domain_xml(&fixtures::mode("tpm")).unwrap());
    assert_eq!(tpm.tpm.as_deref(), Some("tpm-crb"));
    let cmd = fixtures::mode("direct_kernel_boot");
    let f = facts_of_xml(&domain_xml(&cmd).unwrap());
    assert_eq!(f.kernel.as_deref(), Some("/vm/vmlinuz"));
    assert_eq!(f.append.as_deref(), Some("console=ttyS0 root=/dev/vda rw"));
    assert_eq!(f.forwards, ["tcp:127.0.0.1:10023-:22"]);
    assert_eq!(f.macs, ["52:54:00:00:00:03"]);
    let f = facts_of_xml(&domain_xml(&fixtures::mode("run_user_net")).unwrap());
    assert_eq!(f.credentials.len(), 1);
    assert!(
        f.credentials[0].starts_with("io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 ")
    );
    assert_eq!(f.vnc.as_deref(), Some("127.0.0.1:5903"));
    let cmd = fixtures::mode("virtiofs_shares");
    for f in [
        facts_of_xml(&domain_xml(&cmd).unwrap()),
        facts_of_argv(&cmd),
    ] {
        assert!(f.shared_memory);
        assert_eq!(
            f.shares,
            [
                ("/home/u/src/linux".into(), "linux".into(), false, true),
                ("/data/a,readonly=off b".into(), "data".into(), true, false),
                ("/data/c,d e".into(), "odd".into(), false, true),
            ]
        );
    }
}

/// A disk named `a&b<c>.raw` (and a name, credential and kernel arguments with markup)
/// stays one value: escaped in the text, the same after parsing.
#[test]
fn markup_in_values_is_escaped() {
    let mut cfg = fixtures::config();
    cfg.name = Some("x".into());
    cfg.disk0_path = Some("/vm/a&b<c>.raw".into());
    cfg.kernel = Some("/vm/k'\"&.img".into());
    cfg.append = Some("a=<b> c=&d '\"".into());
    let cmd = fixtures::build(&cfg, vmk_common::qemu::Mode::Run)
        .credential("x", "</entry><entry>injected");
    let xml = domain_xml(&cmd).unwrap();
    assert!(xml.contains("a&amp;b&lt;c&gt;.raw"), "{xml}");
    assert!(!xml.contains("<entry>injected"), "{xml}");
    let f = facts_of_xml(&xml);
    assert_eq!(f.disks[0].0, "/vm/a&b<c>.raw");
    assert_eq!(f.kernel.as_deref(), Some("/vm/k'\"&.img"));
    assert_eq!(f.append.as_deref(), Some("a=<b> c=&d '\""));
    assert_eq!(
        f.credentials,
        ["io.systemd.credential:x=</entry><entry>injected"]
    );
    insta::assert_snapshot!("markup_escaped", xml);
}

/// The CD-ROMs every `vmk run` attaches (VMK_ISO, resolved through VMK_ISO_DIR, and the
/// cloud-init seed) are in the domain too, in the same order, and nothing else is added:
/// a VM defined in libvirt boots with the media it has under vmk.
#[test]
fn iso_and_cloud_init_seed_are_the_domains_cdroms() {
    use vmk_common::config::{self, LoadOptions};
    let vm = tempfile::tempdir().unwrap();
    let isos = tempfile::tempdir().unwrap();
    std::fs::write(vm.path().join("disk0.img"), [0u8; 512]).unwrap();
    std::fs::write(isos.path().join("product-base.iso"), b"iso").unwrap();
    std::fs::write(
        vm.path().join(config::VM_FILE_NAME),
        format!(
            "VMK_DISK0=disk0.img\nVMK_ISO=product-base.iso\nVMK_ISO_DIR='{}'\n\
             VMK_CLOUD_INIT=yes\nVMK_ACCEL=tcg\n",
            isos.path().display()
        ),
    )
    .unwrap();
    let cfg = config::load(&LoadOptions {
        dir: Some(vm.path().to_path_buf()),
        system_file: Some(vm.path().join("no-system-config")),
        user_file: Some(vm.path().join("no-user-config")),
        env: false,
        ..LoadOptions::new()
    })
    .unwrap();
    let xml = vmk_libvirt::domain_for(&cfg).unwrap().to_xml();
    let f = facts_of_xml(&xml);
    let want = [
        isos.path().join("product-base.iso"),
        vm.path().join("seed.iso"),
    ]
    .map(|p| p.display().to_string());
    assert_eq!(f.cdroms, want, "{xml}");
    assert_eq!(f.disks.len(), 1, "{xml}");
}
