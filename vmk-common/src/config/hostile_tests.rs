//! Tests of loading hostile input: nothing hangs, nothing explodes, nothing leaks, every
//! error is clear (FIFOs and devices as configs and images, huge files and values,
//! control characters, foreign files, out-of-range numbers, miscased keys).

use super::tests::Fixture;
use super::*;

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
