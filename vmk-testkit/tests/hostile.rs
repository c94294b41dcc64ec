//! The hostile-input corpus: configs, values, files and arguments that a careless or
//! malicious user, a planted file or a shell typo hands to vmk, each run through the real
//! binaries. Nothing hangs, nothing explodes, nothing leaks, every error is clear.
//!
//! Each case runs `vmk ARGS…` in a fresh VM directory (also HOME; no `VMK_*` variable from
//! outside; VMK_QEMU is a fake qemu that only records that it was called), under a memory
//! limit and a timeout, and checks:
//! - it ends within [`TIMEOUT`] (a FIFO or /dev/zero must not block or fill memory);
//! - its exit status: 2 for usage and configuration mistakes, 1 for failures, 0 when the
//!   input is fine;
//! - what it prints names what is wrong (`vm-config:3: VMK_NAME: …`, the option, the file);
//! - stdout and stderr together are bounded ([`MAX_OUTPUT`]) and hold no raw control
//!   character (ESC, BEL, NUL, DEL…: only newline and tab);
//! - nothing was run: no `CANARY` file appeared (the configs try `$(touch CANARY)`,
//!   backticks, `;`), and the fake qemu was not called unless the case says it may be;
//! - nothing in the VM directory changed (names, types, modes, contents), unless the
//!   command legitimately writes (`vmk set` with a good value);
//! - an error that quotes a file quotes only a short excerpt of it.
//!
//! The binaries are those of the other packages: `cargo test --workspace` (make test)
//! builds them; without them every case is skipped loudly (failed under
//! VMK_TEST_REQUIRE_ALL=1). The corpus is a table below, by category; the count per
//! category is printed at the end.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vmk_testkit::{Need, SystemTest};

/// A case that runs longer than this hangs.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most a case may print (stdout and stderr together), unless it says otherwise.
const MAX_OUTPUT: usize = 8 << 10;
/// The address space each case may use (`ulimit -v`, KiB): input that would explode
/// (a 10 MB line, a value that doubles itself, /dev/zero) hits it instead of the machine.
const MEMORY_KIB: u64 = 2 << 20;
/// The config every case starts from: a VM with a small raw disk0 under TCG.
const BASE: &str = "VMK_DISK0=disk0.img\nVMK_ACCEL=tcg\n";
/// The binaries a case may run: the front door and every tool.
const BINARIES: &[&str] = &[
    "vmk",
    "vmk-run",
    "vmk-snap",
    "vmk-clone",
    "vmk-mount",
    "vmk-sshkey",
    "vmk-ayinstall",
    "vmk-completions",
];
/// The unprivileged user of the cases that need permissions to count (root bypasses them).
const NOBODY: u32 = 65534;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    /// Config syntax: shell that would run something, quotes, odd lines, sizes.
    Configs,
    /// Values: every key's bad values, control characters, huge numbers, miscased keys.
    Values,
    /// Config files that are not plain files, or not the user's, or not there.
    Files,
    /// Disk images, kernels and files given to commands that are not plain files.
    Disks,
    /// Command lines of every tool: bad values, missing ones, unknown ones, huge ones.
    Arguments,
}

impl Category {
    const ALL: [Category; 5] = [
        Category::Configs,
        Category::Values,
        Category::Files,
        Category::Disks,
        Category::Arguments,
    ];

    fn name(self) -> &'static str {
        match self {
            Category::Configs => "configs",
            Category::Values => "values",
            Category::Files => "files",
            Category::Disks => "disks",
            Category::Arguments => "arguments",
        }
    }
}

/// Something a case puts in its VM directory (paths relative to it; `~` is the case's root,
/// outside the VM directory).
#[derive(Debug, Clone)]
enum Entry {
    Bytes(Vec<u8>),
    Fifo,
    Dir,
    Symlink(String),
    /// chmod of what is there (`.` is the VM directory).
    Mode(u32),
    /// chown to [`NOBODY`] of what is there (as root).
    Nobody,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    category: Category,
    files: Vec<(String, Entry)>,
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    code: i32,
    says: Vec<String>,
    hides: Vec<String>,
    qemu: bool,
    writes: bool,
    nobody: bool,
    max_output: usize,
}

fn case(category: Category, name: &str) -> Case {
    Case {
        name: name.to_string(),
        category,
        files: vec![
            ("vm-config".into(), Entry::Bytes(BASE.into())),
            ("disk0.img".into(), Entry::Bytes(vec![0; 4096])),
        ],
        args: vec!["run".into()],
        env: Vec::new(),
        code: 2,
        says: Vec::new(),
        hides: Vec::new(),
        qemu: false,
        writes: false,
        nobody: false,
        max_output: MAX_OUTPUT,
    }
}

impl Case {
    /// The VM's config is exactly `bytes`.
    fn config(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.file("vm-config", Entry::Bytes(bytes.into()))
    }

    /// The VM's config is [`BASE`] and `line` (line 3, and on when it holds newlines).
    fn line(self, line: impl AsRef<[u8]>) -> Self {
        let mut bytes = BASE.as_bytes().to_vec();
        bytes.extend_from_slice(line.as_ref());
        bytes.push(b'\n');
        self.config(bytes)
    }

    /// `path` in the VM directory is `entry` (replacing what the case had there).
    fn file(mut self, path: &str, entry: Entry) -> Self {
        if !matches!(entry, Entry::Mode(_) | Entry::Nobody) {
            self.files.retain(|(p, _)| p != path);
        }
        self.files.push((path.to_string(), entry));
        self
    }

    fn args<S: Into<OsString> + Clone>(mut self, args: &[S]) -> Self {
        self.args = args.iter().cloned().map(Into::into).collect();
        self
    }

    fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }

    /// The output names all of these.
    fn says(mut self, fragments: &[&str]) -> Self {
        self.says.extend(fragments.iter().map(|s| s.to_string()));
        self
    }

    /// The output does not hold this (a secret beyond the excerpt, a long run of input).
    fn hides(mut self, fragment: impl Into<String>) -> Self {
        self.hides.push(fragment.into());
        self
    }

    fn qemu(mut self) -> Self {
        self.qemu = true;
        self
    }

    fn writes(mut self) -> Self {
        self.writes = true;
        self
    }

    fn nobody(mut self) -> Self {
        self.nobody = true;
        self
    }

    fn max_output(mut self, max: usize) -> Self {
        self.max_output = max;
        self
    }

    /// Fine input: a dry run, exit 0.
    fn fine(self) -> Self {
        let mut args: Vec<OsString> = vec!["-D".into()];
        args.extend(self.args.iter().cloned());
        let mut c = self.code(0);
        c.args = args;
        c
    }
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

// ---------------------------------------------------------------------------------------
// The corpus.
// ---------------------------------------------------------------------------------------

fn corpus() -> Vec<Case> {
    let mut all = Vec::new();
    configs(&mut all);
    values(&mut all);
    files(&mut all);
    disks(&mut all);
    arguments(&mut all);
    all
}

/// Config syntax: line 3 of an otherwise good config. `vmk run` for real (with the fake
/// qemu): a refused config runs nothing at all.
fn configs(all: &mut Vec<Case>) {
    use Category::Configs as C;
    let subst = "command substitution is not supported";
    let refused: &[(&str, &str, &[&str])] = &[
        (
            "cmdsubst_bare",
            "VMK_NAME=$(touch CANARY)",
            &["VMK_NAME", subst],
        ),
        (
            "cmdsubst_double_quoted",
            "VMK_TAG=\"x$(touch CANARY)\"",
            &["VMK_TAG", subst],
        ),
        (
            "cmdsubst_nested",
            "VMK_TAG=\"$(touch $(echo CANARY))\"",
            &["VMK_TAG", subst],
        ),
        (
            "cmdsubst_after_reference",
            "VMK_TAG=${VMK_DISK0}$(touch CANARY)",
            &["VMK_TAG", subst],
        ),
        (
            "backticks_bare",
            "VMK_NAME=`touch CANARY`",
            &["VMK_NAME", subst],
        ),
        (
            "backticks_double_quoted",
            "VMK_TAG=\"a`touch CANARY`\"",
            &["VMK_TAG", subst],
        ),
        ("arithmetic", "VMK_MEM=$((1024*2))", &["VMK_MEM", subst]),
        ("semicolon", "VMK_NAME=a;touch CANARY", &["VMK_NAME", "`;`"]),
        ("pipe", "VMK_NAME=a|touch CANARY", &["VMK_NAME", "`|`"]),
        ("and_list", "VMK_NAME=a&&touch CANARY", &["VMK_NAME", "`&`"]),
        ("background", "VMK_NAME=a&", &["VMK_NAME", "`&`"]),
        ("redirect_out", "VMK_NAME=a>CANARY", &["VMK_NAME", "`>`"]),
        (
            "redirect_in",
            "VMK_NAME=a</etc/passwd",
            &["VMK_NAME", "`<`"],
        ),
        ("subshell", "VMK_NAME=(touch CANARY)", &["VMK_NAME", "`(`"]),
        (
            "text_after_value",
            "VMK_NAME=a touch CANARY",
            &["VMK_NAME", "unexpected text"],
        ),
        (
            "space_after_equals",
            "VMK_MEM= 2048",
            &["VMK_MEM", "unexpected text"],
        ),
        (
            "param_operator",
            "VMK_NAME=${X:-$(touch CANARY)}",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "param_unclosed_brace",
            "VMK_NAME=${VMK_VNC",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "param_empty_brace",
            "VMK_NAME=${}",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "param_positional",
            "VMK_NAME=${1}",
            &["VMK_NAME", "only ${NAME}"],
        ),
        (
            "reference_unset",
            "VMK_NAME=${VMK_NOPE}",
            &["VMK_NAME", "${VMK_NOPE} is not set"],
        ),
        (
            "reference_later_key",
            "VMK_TAG=$VMK_NAME\nVMK_NAME=x",
            &["VMK_TAG", "${VMK_NAME} is not set"],
        ),
        (
            "unclosed_single_quote",
            "VMK_NAME='abc",
            &["VMK_NAME", "unterminated single quote"],
        ),
        (
            "unclosed_double_quote",
            "VMK_TAG=\"abc",
            &["VMK_TAG", "unterminated double quote"],
        ),
        (
            "unclosed_quote_swallows_the_rest",
            "VMK_TAG=\"x\nVMK_MEM=1\n# touch CANARY",
            &["VMK_TAG", "unterminated double quote"],
        ),
        ("plain_command", "touch CANARY", &["expected an assignment"]),
        (
            "leading_semicolon",
            "; touch CANARY",
            &["expected an assignment"],
        ),
        ("export_alone", "export", &["expected an assignment"]),
        (
            "export_without_value",
            "export VMK_MEM",
            &["expected an assignment"],
        ),
        (
            "export_option",
            "export -n VMK_MEM=2048",
            &["expected an assignment"],
        ),
        (
            "export_twice",
            "export export VMK_MEM=2048",
            &["expected an assignment"],
        ),
        (
            "readonly",
            "readonly VMK_MEM=2048",
            &["expected an assignment"],
        ),
        ("local", "local VMK_MEM=2048", &["expected an assignment"]),
        (
            "space_before_equals",
            "VMK_MEM =2048",
            &["expected an assignment"],
        ),
        (
            "if_statement",
            "if true; then touch CANARY; fi",
            &["expected an assignment"],
        ),
        (
            "function",
            "f() { touch CANARY; }",
            &["expected an assignment"],
        ),
        (
            "here_document",
            "cat <<EOF >CANARY",
            &["expected an assignment"],
        ),
        ("dot_source", ". ./CANARY", &["expected an assignment"]),
        ("source", "source /etc/passwd", &["expected an assignment"]),
        ("eval", "eval 'touch CANARY'", &["expected an assignment"]),
        (
            "alias",
            "alias ls='touch CANARY'",
            &["expected an assignment"],
        ),
        ("set_option", "set -e", &["expected an assignment"]),
        (
            "key_starts_with_digit",
            "1VMK=2",
            &["expected an assignment"],
        ),
        ("key_with_umlaut", "VMK_NÄME=x", &["expected an assignment"]),
        ("key_with_dash", "VMK-MEM=1", &["expected an assignment"]),
    ];
    for (name, line, says) in refused {
        all.push(case(C, name).line(line).says(&["vm-config:3:"]).says(says));
    }
    all.push(
        case(C, "escape_sequence_in_key")
            .line(b"VMK_\x1b]0;owned\x07MEM=1")
            .says(&["vm-config:3:", "expected an assignment"]),
    );
    all.push(
        case(C, "cr_only_line_endings")
            .config("VMK_DISK0=disk0.img\rVMK_ACCEL=tcg\r")
            .says(&["vm-config:1:", "VMK_DISK0"]),
    );
    all.push(
        case(C, "crlf_line_endings")
            .config("VMK_DISK0=disk0.img\r\nVMK_ACCEL=tcg\r\nVMK_MEM=2G\r\n")
            .fine()
            .says(&["-m 2048"]),
    );
    all.push(
        case(C, "tabs_and_comments_everywhere")
            .config("#!/bin/sh\n\t# c\n\texport\tVMK_DISK0='disk0.img'\t# c\n VMK_ACCEL=tcg #\n")
            .fine()
            .says(&["disk0.img"]),
    );
    all.push(
        case(C, "quoted_shell_is_text")
            .line("VMK_TAG='$(touch CANARY); `id` | & ;'")
            .fine(),
    );
    all.push(
        case(C, "escape_sequences_in_a_comment")
            .line("# \x1b]0;owned\x07\x1b[2J\u{9b}")
            .fine(),
    );
    all.push(
        case(C, "empty_file")
            .config("")
            .says(&["VMK_DISK0 is not set"]),
    );
    all.push(
        case(C, "only_comments")
            .config("#!/bin/sh\n# nothing here\n\n")
            .says(&["VMK_DISK0 is not set"]),
    );
    all.push(
        case(C, "nul_bytes_only")
            .config(vec![0u8; 4096])
            .says(&["vm-config:1:"]),
    );
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0".to_vec();
    elf.extend((0..4000u32).map(|i| (i * 7 % 256) as u8));
    all.push(case(C, "binary_file").config(elf).says(&["vm-config:1:"]));
    all.push(
        case(C, "invalid_utf8_in_comment")
            .line(b"# caf\xe9 \xff\xfe")
            .says(&["vm-config:3:", "UTF-8"]),
    );
    all.push(
        case(C, "invalid_utf8_in_value")
            .line(b"VMK_TAG=\"\xc3\x28\"")
            .says(&["vm-config:3:", "UTF-8"]),
    );
    all.push(
        case(C, "bom_at_start")
            .config(format!("\u{feff}{BASE}VMK_MEM=2G\n"))
            .fine()
            .says(&["-m 2048"]),
    );
    all.push(
        case(C, "bom_inside_the_file")
            .line("\u{feff}VMK_MEM=2G")
            .says(&["vm-config:3:", "\\u{feff}"]),
    );
    let ten_mb = 10 << 20;
    all.push(
        case(C, "ten_mb_comment_line")
            .config(format!("{BASE}# {}\n", "x".repeat(ten_mb)))
            .says(&["vm-config"])
            .hides("x".repeat(200)),
    );
    all.push(
        case(C, "ten_mb_value")
            .config(format!("{BASE}VMK_TAG=\"{}\"\n", "y".repeat(ten_mb)))
            .says(&["vm-config"])
            .hides("y".repeat(200)),
    );
    all.push(
        case(C, "ten_mb_without_newline")
            .config(format!("{BASE}VMK_TAG={}", "z".repeat(ten_mb)))
            .says(&["vm-config"])
            .hides("z".repeat(200)),
    );
    all.push(
        case(C, "two_mb_of_comment_lines")
            .config(format!("{BASE}{}", "# a comment line\n".repeat(2 << 16)))
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "hundred_kb_value")
            .config(format!("{BASE}VMK_TAG=\"{}\"\n", "v".repeat(100 << 10)))
            .says(&["vm-config:3:", "VMK_TAG"])
            .hides("v".repeat(200)),
    );
    let doubling = |key: &str, seed: &str, lines: usize| {
        let mut s = format!("{BASE}{key}={seed}\n");
        for _ in 0..lines {
            s.push_str(&format!("{key}=${{{key}}}${{{key}}}\n"));
        }
        s
    };
    all.push(
        case(C, "self_doubling_reference")
            .config(doubling("A", "xxxxxxxxxxxxxxxx", 40))
            .says(&["vm-config:", "A:"])
            .hides("x".repeat(200)),
    );
    all.push(
        case(C, "self_doubling_vmk_key")
            .config(
                doubling("VMK_TAG", "$(touch CANARY)", 40)
                    .replace("=$(", "='$(")
                    .replace("Y)\n", "Y)'\n"),
            )
            .says(&["vm-config:", "VMK_TAG"])
            .hides("CANARY)$(touch CANARY)$(touch CANARY)"),
    );
    let mut cross = format!("{BASE}A=abcdefgh\n");
    for _ in 0..20 {
        cross.push_str("B=${A}${A}${A}\nA=\"${B}$B\"\n");
    }
    all.push(
        case(C, "doubling_across_two_names")
            .config(cross)
            .says(&["vm-config:"])
            .hides("abcdefgh".repeat(30)),
    );
    all.push(
        case(C, "fifty_thousand_assignments")
            .config(format!("{BASE}{}", "VMK_TAG=x\n".repeat(50_000)))
            .fine(),
    );
    all.push(
        case(C, "long_unknown_vmk_key")
            .line(format!("VMK_{}=1", "A".repeat(100_000)))
            .says(&["vm-config:3:", "unknown key"])
            .hides("A".repeat(200)),
    );
    all.push(
        case(C, "long_name_outside_vmk")
            .line(format!("{}=1", "B".repeat(100_000)))
            .fine(),
    );
    all.push(
        case(C, "vmkrc_cmdsubst")
            .file("vmkrc", Entry::Bytes(b"VMK_MEM=$(touch CANARY)\n".to_vec()))
            .says(&["vmkrc:1:", "VMK_MEM", subst]),
    );
    all.push(
        case(C, "home_vmkrc_backticks")
            .file(
                ".vmkrc",
                Entry::Bytes(b"# mine\nVMK_TAG=`touch CANARY`\n".to_vec()),
            )
            .says(&[".vmkrc:2:", "VMK_TAG", subst]),
    );
    all.push(
        case(C, "home_vmkrc_semicolon")
            .file(
                ".vmkrc",
                Entry::Bytes(b"VMK_ISO_DIR=$HOME;touch CANARY\n".to_vec()),
            )
            .says(&[".vmkrc:1:", "VMK_ISO_DIR", "`;`"]),
    );
}

/// Values: each key's bad values (line 3 of a good config; `vmk run` for real), values in
/// the environment, keys spelled wrong, and values that are fine however odd they look.
fn values(all: &mut Vec<Case>) {
    use Category::Values as C;
    let bad: &[(&str, &[&[u8]])] = &[
        ("VMK_NAME", &[b"a,b", b"'a b'", b"\"x\x1by\"", b"'..,,'"]),
        (
            "VMK_TAG",
            &[b"\"\x1b]0;owned\x07\"", b"'a\x00b'", b"'\x1b[2J'"],
        ),
        (
            "VMK_VNC",
            &[b"100", b"-1", b"abc", b"99999999999999999999999", b"1e2"],
        ),
        (
            "VMK_MEM",
            &[
                b"lots",
                b"-1",
                b"0",
                b"1.5G",
                b"18446744073709551616",
                b"99999999999T",
                b"2X",
            ],
        ),
        ("VMK_CPU", &[b"0", b"1025", b"-1", b"four", b"4294967297"]),
        ("VMK_DISK0", &[b"'disk\x00.img'", b"\"disk\x1b[2J.img\""]),
        (
            "VMK_DISK0_FORMAT",
            &[b"vmdk", b"qcow2,backing_file=/etc/shadow"],
        ),
        ("VMK_DISK0_CACHE", &[b"fast", b"none,aio=native"]),
        ("VMK_DISK_CACHE", &[b"fast"]),
        ("VMK_DISK_BUS", &[b"usb", b"virtio,x=y"]),
        ("VMK_DISK1", &[b"'\x1b[2J'"]),
        ("VMK_DISK2", &[b"'a\x07b'"]),
        ("VMK_DISK3", &[b"'a\x00b'"]),
        ("VMK_DISK4", &[b"'a\x7fb'"]),
        ("VMK_DISK5", &[b"'a\x08b'"]),
        ("VMK_DISK6", &[b"'a\x1bb'"]),
        ("VMK_ISO", &[b"'\x1b]0;x\x07.iso'"]),
        ("VMK_ISO_DIR", &[b"'iso\x00dir'"]),
        ("VMK_KERNEL", &[b"'vmlinuz\x1b[2J'"]),
        ("VMK_INITRD", &[b"'initrd\x07'"]),
        ("VMK_APPEND", &[b"'console=ttyS0 \x1b[2J'"]),
        ("VMK_ARCH", &[b"'x86 64'", b"x86_64,evil"]),
        ("VMK_ACCEL", &[b"hvf", b"kvm:tcg"]),
        ("VMK_MACHINE", &[b"q35,smm=off", b"'pc q35'"]),
        ("VMK_CPU_MODEL", &[b"'host\x1b[2J'"]),
        ("VMK_NET_TYPE", &[b"tap", b"user,hostfwd=tcp::22-:22"]),
        ("VMK_BRIDGE", &[b"br0,script=/tmp/x", b"'br 0'"]),
        (
            "VMK_MAC_BASE_FORMAT",
            &[
                b"%s",
                b"%n",
                b"52:54:00:00:00:%02x%02x",
                b"52:54:00:00:00:%99999999999999999999x",
                b"52:54:00:00:00:01",
            ],
        ),
        ("VMK_IP", &[b"localhost", b"999.1.1.1"]),
        ("VMK_HOSTNAME", &[b"-bad", b"'a b'", b"a_b"]),
        ("VMK_TELNET_BASE", &[b"0", b"65536", b"-1", b"65535"]),
        ("VMK_SSH_BASE", &[b"0", b"70000"]),
        ("VMK_LISTEN", &[b"0.0.0.0:22", b"example.org"]),
        ("VMK_CONSOLE", &[b"serial", b"telnet,server"]),
        ("VMK_VNC_SOCKET", &[b"maybe"]),
        ("VMK_QEMU", &[b"'/usr/bin/qemu\x1b[2J'"]),
        ("VMK_INST_DISK0", &[b"0", b"30Q", b"99999999999999999999T"]),
        ("VMK_INST_DISK", &[b"-5"]),
        ("VMK_INST_APPEND", &[b"'textmode=1\x1b[2J'"]),
        ("VMK_EXTRA_ARGS", &[b"\"-device 'x\""]),
        ("VMK_SSH_CREDENTIAL", &[b"perhaps"]),
        ("VMK_CLOUD_INIT", &[b"2"]),
    ];
    for (key, values) in bad {
        for (i, v) in values.iter().enumerate() {
            let mut line = format!("{key}=").into_bytes();
            line.extend_from_slice(v);
            all.push(
                case(C, &format!("{}_{}", key.to_lowercase(), i + 1))
                    .line(line)
                    .says(&["vm-config:3:", key]),
            );
        }
    }
    all.push(
        case(C, "hostname_too_long")
            .line(format!("VMK_HOSTNAME={}", "a".repeat(300)))
            .says(&["vm-config:3:", "VMK_HOSTNAME"]),
    );
    all.push(
        case(C, "ssh_base_past_the_last_port")
            .line("VMK_VNC=99\nVMK_SSH_BASE=65500")
            .says(&["VMK_SSH_BASE", "65535"]),
    );
    all.push(
        case(C, "mac_format_for_a_high_vm_number")
            .line("VMK_VNC=99\nVMK_MAC_BASE_FORMAT=52:54:00:00:00:%02d")
            .code(0)
            .fine(),
    );
    all.push(
        case(C, "initrd_without_kernel")
            .line("VMK_INITRD=initrd.img")
            .file("initrd.img", Entry::Bytes(b"x".to_vec()))
            .says(&["VMK_INITRD", "VMK_KERNEL"]),
    );
    for (name, key, suggestion) in [
        ("lowercase_key", "vmk_mem", "VMK_MEM"),
        ("miscased_key", "VMK_mem", "VMK_MEM"),
        ("mixed_case_key", "Vmk_Mem", "VMK_MEM"),
        ("typo_key", "VMK_MEMM", "VMK_MEM"),
        ("typo_key_cache", "VMK_DISK_CAHCE", "VMK_DISK_CACHE"),
    ] {
        all.push(
            case(C, name)
                .line(format!("{key}=2G"))
                .says(&["vm-config:3:", key, suggestion]),
        );
    }
    // In the environment.
    all.push(
        case(C, "env_bad_mem")
            .env("VMK_MEM", "lots")
            .says(&["environment", "VMK_MEM"]),
    );
    all.push(
        case(C, "env_escape_sequence")
            .env("VMK_TAG", "\x1b]0;owned\x07")
            .says(&["environment", "VMK_TAG"]),
    );
    all.push(
        case(C, "env_cmdsubst_is_text")
            .env("VMK_TAG", "$(touch CANARY)")
            .fine(),
    );
    all.push(
        case(C, "env_non_utf8")
            .env("VMK_MEM", os(b"\xff\xfe2G"))
            .says(&["environment", "VMK_MEM"]),
    );
    all.push(
        case(C, "env_huge_value")
            .env("VMK_TAG", "e".repeat(100 << 10))
            .says(&["environment", "VMK_TAG"])
            .hides("e".repeat(200)),
    );
    // Fine however odd: a dry run shows them, escaped where qemu needs it.
    all.push(
        case(C, "disk_path_with_commas")
            .line("VMK_DISK0='a,b,format=qcow2.img'")
            .file("a,b,format=qcow2.img", Entry::Bytes(vec![0; 512]))
            .fine()
            .says(&["file=", "a,,b,,format=qcow2.img"]),
    );
    all.push(
        case(C, "name_is_plain")
            .line("VMK_NAME=my-vm.1")
            .fine()
            .says(&["guest=my-vm.1"]),
    );
    all.push(
        case(C, "mem_with_spaces")
            .line("VMK_MEM=' 4G '")
            .fine()
            .says(&["-m 4096"]),
    );
    all.push(
        case(C, "extra_args_are_words_not_shell")
            .line("VMK_EXTRA_ARGS='-device virtio-rng-pci $(touch CANARY) `id`'")
            .fine()
            .says(&["'$(touch'", "CANARY)'"]),
    );
    all.push(
        case(C, "cpu_model_with_flags")
            .line("VMK_CPU_MODEL='qemu64,+ssse3'")
            .fine()
            .says(&["qemu64,+ssse3"]),
    );
    all.push(
        case(C, "tag_with_unicode")
            .line("VMK_TAG=\"größer als ≥ 😀\"")
            .fine(),
    );
}

/// Config files that are not plain files, not the user's, or not there.
fn files(all: &mut Vec<Case>) {
    use Category::Files as C;
    let not_regular = "not a regular file";
    for (name, entry) in [
        ("config_fifo", Entry::Fifo),
        ("config_directory", Entry::Dir),
        (
            "config_symlink_to_dev_zero",
            Entry::Symlink("/dev/zero".into()),
        ),
        (
            "config_symlink_to_dev_null",
            Entry::Symlink("/dev/null".into()),
        ),
    ] {
        all.push(
            case(C, name)
                .file("vm-config", entry)
                .says(&["vm-config", not_regular]),
        );
    }
    all.push(
        case(C, "config_fifo_info")
            .file("vm-config", Entry::Fifo)
            .args(&["info"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "config_fifo_dry_run")
            .file("vm-config", Entry::Fifo)
            .args(&["-D", "run"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "config_symlink_to_etc_passwd")
            .file("vm-config", Entry::Symlink("/etc/passwd".into()))
            .says(&["vm-config:1:"]),
    );
    all.push(
        case(C, "config_symlink_to_a_secret")
            .file(
                "~/secret",
                Entry::Bytes(b"root:not-a-config\nSECOND-LINE-SECRET\n".to_vec()),
            )
            .file("vm-config", Entry::Symlink("../secret".into()))
            .says(&["vm-config:1:"])
            .hides("SECOND-LINE-SECRET"),
    );
    all.push(
        case(C, "config_long_first_line_quoted_short")
            .config(format!("{}\n", "S".repeat(10_000)))
            .says(&["vm-config:1:"])
            .hides("S".repeat(200)),
    );
    all.push(
        case(C, "config_dangling_symlink")
            .file("vm-config", Entry::Symlink("nowhere".into()))
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "config_symlink_loop")
            .file("loop-a", Entry::Symlink("vm-config".into()))
            .file("vm-config", Entry::Symlink("loop-a".into()))
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "config_unreadable")
            .file("vm-config", Entry::Mode(0o000))
            .nobody()
            .says(&["vm-config"]),
    );
    all.push(
        case(C, "config_world_writable")
            .file("vm-config", Entry::Mode(0o666))
            .says(&["vm-config", "chmod"]),
    );
    all.push(
        case(C, "config_someone_elses")
            .file("vm-config", Entry::Nobody)
            .says(&["vm-config", "chown"]),
    );
    all.push(
        case(C, "vm_directory_world_writable")
            .file(".", Entry::Mode(0o777))
            .says(&["chmod"]),
    );
    all.push(
        case(C, "vmkrc_fifo")
            .file("vmkrc", Entry::Fifo)
            .says(&["vmkrc", not_regular]),
    );
    all.push(
        case(C, "vmkrc_directory")
            .file("vmkrc", Entry::Dir)
            .says(&["vmkrc", not_regular]),
    );
    all.push(
        case(C, "home_vmkrc_fifo")
            .file(".vmkrc", Entry::Fifo)
            .says(&[".vmkrc", not_regular]),
    );
    all.push(
        case(C, "home_vmkrc_dev_zero")
            .file(".vmkrc", Entry::Symlink("/dev/zero".into()))
            .says(&[".vmkrc", not_regular]),
    );
    all.push(
        case(C, "home_vmkrc_world_writable")
            .file(".vmkrc", Entry::Bytes(b"VMK_MEM=2G\n".to_vec()))
            .file(".vmkrc", Entry::Mode(0o666))
            .says(&[".vmkrc", "chmod"]),
    );
    // -c FILE
    all.push(
        case(C, "dash_c_fifo")
            .file("other", Entry::Fifo)
            .args(&["-c", "other", "run"])
            .says(&["other", not_regular]),
    );
    for (name, path) in [
        ("dash_c_dev_zero", "/dev/zero"),
        ("dash_c_dev_null", "/dev/null"),
        ("dash_c_dev_tty", "/dev/tty"),
    ] {
        all.push(case(C, name).args(&["-c", path, "run"]).says(&[path]));
    }
    all.push(
        case(C, "dash_c_directory")
            .args(&["-c", ".", "run"])
            .says(&[not_regular]),
    );
    all.push(
        case(C, "dash_c_root")
            .args(&["-c", "/", "run"])
            .says(&["/"]),
    );
    all.push(
        case(C, "dash_c_missing")
            .args(&["-c", "missing-config", "run"])
            .says(&["missing-config", "no such config file"]),
    );
    all.push(case(C, "dash_c_empty").args(&["-c", "", "run"]));
    all.push(case(C, "dash_c_very_long_path").args(&[
        OsString::from("-c"),
        "p/".repeat(3000).into(),
        "run".into(),
    ]));
    all.push(
        case(C, "dash_c_escape_sequence")
            .args(&["-c", "\x1b]0;owned\x07", "run"])
            .says(&["no such config file"]),
    );
    all.push(
        case(C, "dash_c_non_utf8")
            .args(&[os(b"-c"), os(b"conf\xff\xfe"), os(b"run")])
            .says(&["no such config file"]),
    );
    all.push(
        case(C, "dash_c_symlink_to_fifo")
            .file("fifo", Entry::Fifo)
            .file("link", Entry::Symlink("fifo".into()))
            .args(&["-c", "link", "info"])
            .says(&["link", not_regular]),
    );
    // vmk set reads and writes the config itself.
    all.push(
        case(C, "set_config_fifo")
            .file("vm-config", Entry::Fifo)
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "set_config_dev_zero")
            .file("vm-config", Entry::Symlink("/dev/zero".into()))
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config", not_regular]),
    );
    all.push(
        case(C, "set_dash_c_fifo")
            .file("other", Entry::Fifo)
            .args(&["set", "-c", "other", "VMK_MEM", "2G"])
            .says(&["other", not_regular]),
    );
    all.push(
        case(C, "set_config_ten_mb")
            .config(format!("{BASE}# {}\n", "x".repeat(10 << 20)))
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config"])
            .hides("x".repeat(200)),
    );
    all.push(
        case(C, "set_config_with_cmdsubst")
            .line("VMK_NAME=$(touch CANARY)")
            .args(&["set", "VMK_MEM", "2G"])
            .says(&["vm-config:3:", "VMK_NAME", "command substitution"]),
    );
    all.push(
        case(C, "clone_config_fifo")
            .file("vm-config", Entry::Fifo)
            .args(&["clone", "-o", "out", "-n", "c1"])
            .says(&["vm-config", not_regular]),
    );
}

/// Disk images, kernels and files handed to commands that are not what they should be.
fn disks(all: &mut Vec<Case>) {
    use Category::Disks as C;
    for (name, entry) in [
        ("disk0_fifo", Entry::Fifo),
        ("disk0_char_device", Entry::Symlink("/dev/zero".into())),
        ("disk0_directory", Entry::Dir),
        ("disk0_symlink_to_fifo", Entry::Symlink("fifo".into())),
    ] {
        for dry in [false, true] {
            let args: &[&str] = if dry { &["-D", "run"] } else { &["run"] };
            all.push(
                case(C, &format!("{name}{}", if dry { "_dry_run" } else { "" }))
                    .file("fifo", Entry::Fifo)
                    .file("disk0.img", entry.clone())
                    .args(args)
                    .says(&["disk0.img"]),
            );
        }
    }
    for dry in [false, true] {
        let args: &[&str] = if dry { &["-D", "run"] } else { &["run"] };
        let suffix = if dry { "_dry_run" } else { "" };
        // A run refuses; a dry run shows the command line and warns, naming the key.
        let code = if dry { 0 } else { 2 };
        all.push(
            case(C, &format!("disk0_missing{suffix}"))
                .line("VMK_DISK0=missing.img")
                .args(args)
                .code(code)
                .says(&["VMK_DISK0", "missing.img"]),
        );
        all.push(
            case(C, &format!("disk1_missing{suffix}"))
                .line("VMK_DISK1=scratch1.img")
                .args(args)
                .code(code)
                .says(&["VMK_DISK1", "scratch1.img"]),
        );
        all.push(
            case(C, &format!("disk6_missing{suffix}"))
                .line("VMK_DISK6=/nonexistent/scratch6.img")
                .args(args)
                .code(code)
                .says(&["VMK_DISK6", "scratch6.img"]),
        );
        all.push(
            case(C, &format!("kernel_missing{suffix}"))
                .line("VMK_KERNEL=vmlinuz")
                .args(args)
                .code(code)
                .says(&["VMK_KERNEL", "vmlinuz"]),
        );
        all.push(
            case(C, &format!("initrd_missing{suffix}"))
                .line("VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img")
                .file("vmlinuz", Entry::Bytes(b"not really a kernel".to_vec()))
                .args(args)
                .code(code)
                .says(&["VMK_INITRD", "initrd.img"]),
        );
    }
    all.push(
        case(C, "disk0_leading_dash")
            .line("VMK_DISK0=-drive.img")
            .file("-drive.img", Entry::Bytes(vec![0; 512]))
            .fine()
            .says(&["-drive.img,format=raw"]),
    );
    all.push(
        case(C, "disk0_escape_in_file_name")
            .line(b"VMK_DISK0='d\x1b[2J.img'")
            .file("d\x1b[2J.img", Entry::Bytes(vec![0; 512]))
            .args(&["-D", "run"])
            .says(&["vm-config:3:", "VMK_DISK0"]),
    );
    all.push(
        case(C, "disk0_qcow2_magic_only")
            .file("disk0.img", Entry::Bytes(b"QFI\xfb".to_vec()))
            .fine()
            .says(&["format=qcow2"]),
    );
    all.push(
        case(C, "run_with_good_config_calls_qemu")
            .args(&["run"])
            .code(1)
            .qemu()
            .writes()
            .says(&["pidfile"]),
    );
    // Files given to commands.
    all.push(
        case(C, "fsnap_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["fsnap", "fifo"])
            .code(2)
            .says(&["fifo", "not a regular file"]),
    );
    all.push(
        case(C, "fsnap_dev_zero")
            .args(&["fsnap", "/dev/zero"])
            .code(2)
            .says(&["/dev/zero", "not a regular file"]),
    );
    all.push(
        case(C, "fsnap_directory")
            .file("dir", Entry::Dir)
            .args(&["fsnap", "dir"])
            .code(2)
            .says(&["dir"]),
    );
    all.push(
        case(C, "fsnap_missing")
            .args(&["fsnap", "missing"])
            .code(2)
            .says(&["missing"]),
    );
    all.push(
        case(C, "cpfile_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["cpfile", "fifo", "copy"])
            .code(2)
            .says(&["fifo", "not a regular file"]),
    );
    all.push(
        case(C, "cpfile_dev_null")
            .args(&["cpfile", "/dev/null", "copy"])
            .code(2)
            .says(&["/dev/null", "not a regular file"]),
    );
    all.push(
        case(C, "cpfile_onto_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["cpfile", "disk0.img", "fifo"])
            .code(1)
            .says(&["fifo"]),
    );
    all.push(
        case(C, "profile_check_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["ayinstall", "profile", "--check", "fifo"])
            .code(1)
            .says(&["fifo"]),
    );
    all.push(
        case(C, "profile_check_dev_zero")
            .args(&["ayinstall", "profile", "--check", "/dev/zero"])
            .code(1)
            .says(&["/dev/zero"]),
    );
    all.push(
        case(C, "profile_snippet_list_fifo")
            .file("fifo", Entry::Fifo)
            .args(&["ayinstall", "profile", "-f", "fifo"])
            .code(1)
            .says(&["fifo"]),
    );
    all.push(
        case(C, "profile_check_ten_mb_garbage")
            .file("big.xml", Entry::Bytes(vec![b'<'; 10 << 20]))
            .args(&["ayinstall", "profile", "--check", "big.xml"])
            .code(1)
            .says(&["big.xml"]),
    );
}

/// Command lines of every tool.
fn arguments(all: &mut Vec<Case>) {
    use Category::Arguments as C;
    let huge = "h".repeat(100 << 10);
    let esc = "\x1b]0;owned\x07\x1b[2J";
    let usage: &[(&str, &[&str], &[&str])] = &[
        ("no_arguments", &[], &["Usage: vmk"]),
        ("unknown_command", &["nosuch"], &["nosuch"]),
        ("unknown_command_escape", &[esc], &["no such command"]),
        ("help_unknown", &["help", "nosuch"], &["nosuch"]),
        ("help_escape", &["help", esc], &["no such command"]),
        ("dash_c_without_file", &["-c"], &["-c"]),
        ("run_unknown_option", &["run", "--nosuch"], &["--nosuch"]),
        ("run_extra_argument", &["run", "extra"], &["extra"]),
        (
            "run_escape_argument",
            &["run", esc],
            &["unexpected argument"],
        ),
        ("run_json_with_value", &["run", "--json=yes"], &["--json"]),
        ("info_extra", &["info", "--json", "x"], &["x"]),
        ("ps_unknown_option", &["ps", "--all"], &["--all"]),
        ("isrunning_extra", &["isrunning", "x"], &["x"]),
        ("stop_negative_timeout", &["stop", "-t", "-1"], &["-1"]),
        (
            "stop_huge_timeout",
            &["stop", "-t", "99999999999999999999999"],
            &["--timeout"],
        ),
        (
            "stop_word_timeout",
            &["stop", "--timeout", "soon"],
            &["--timeout"],
        ),
        ("kill_extra", &["kill", "-9"], &["-9"]),
        ("console_bad_wait", &["console", "-w", "x"], &["--wait"]),
        ("console_negative_wait", &["console", "-w", "-5"], &["-5"]),
        (
            "waitssh_bad_timeout",
            &["waitssh", "-t", "x"],
            &["--timeout"],
        ),
        (
            "waitssh_negative_timeout",
            &["waitssh", "-t", "-1"],
            &["-1"],
        ),
        ("snap_unknown", &["snap", "nosuch"], &["nosuch"]),
        ("snap_run_extra", &["snap", "run", "x"], &["x"]),
        ("dsnap_unknown", &["dsnap", "nosuch"], &["nosuch"]),
        ("dsnap_revert_missing_name", &["dsnap", "revert"], &["NAME"]),
        (
            "dsnap_revert_traversal",
            &["dsnap", "revert", "../../etc/passwd"],
            &["../../etc/passwd"],
        ),
        (
            "dsnap_rm_traversal",
            &["dsnap", "rm", "../disk0.img"],
            &["../disk0.img"],
        ),
        (
            "dsnap_revert_escape",
            &["dsnap", "revert", esc],
            &["no snapshot"],
        ),
        ("fsnap_missing_file", &["fsnap"], &["FILE"]),
        ("cpfile_one_argument", &["cpfile", "disk0.img"], &["DST"]),
        ("clone_nothing", &["clone"], &["-o"]),
        ("clone_no_name", &["clone", "-o", "out"], &["-n"]),
        (
            "clone_name_with_slash",
            &["clone", "-o", "out", "-n", "a/b"],
            &["a/b"],
        ),
        (
            "clone_name_empty",
            &["clone", "-o", "out", "-n", ""],
            &["-n"],
        ),
        (
            "clone_name_dotdot",
            &["clone", "-o", "out", "-n", ".."],
            &[".."],
        ),
        (
            "clone_name_dot",
            &["clone", "-o", "out", "-n", "."],
            &["-n"],
        ),
        (
            "clone_name_escape",
            &["clone", "-o", "out", "-n", esc],
            &["control character"],
        ),
        (
            "clone_vnc_100",
            &["clone", "-o", "out", "-n", "c", "--vnc", "100"],
            &["--vnc"],
        ),
        (
            "clone_vnc_negative",
            &["clone", "-o", "out", "-n", "c", "--vnc", "-1"],
            &["-1"],
        ),
        ("set_nothing", &["set"], &["KEY"]),
        ("set_missing_value", &["set", "VMK_MEM"], &["VALUE"]),
        (
            "set_bad_mem",
            &["set", "VMK_MEM", "lots"],
            &["VMK_MEM", "lots"],
        ),
        (
            "set_typo_key",
            &["set", "VMK_MEMM", "1"],
            &["VMK_MEMM", "VMK_MEM"],
        ),
        (
            "set_typo_short_key",
            &["set", "memm", "1"],
            &["memm", "VMK_MEM"],
        ),
        (
            "set_key_with_space",
            &["set", "A B", "1"],
            &["not a key name"],
        ),
        ("set_empty_key", &["set", "", "1"], &["not a key name"]),
        ("set_escape_key", &["set", esc, "1"], &["not a key name"]),
        ("set_escape_value", &["set", "VMK_TAG", esc], &["VMK_TAG"]),
        (
            "set_newline_in_name",
            &["set", "VMK_NAME", "a\nb"],
            &["VMK_NAME"],
        ),
        (
            "set_cmdsubst_name",
            &["set", "VMK_NAME", "$(touch CANARY)"],
            &["VMK_NAME"],
        ),
        ("set_vnc_100", &["set", "VMK_VNC", "100"], &["VMK_VNC"]),
        (
            "set_port_too_high",
            &["set", "VMK_TELNET_BASE", "65536"],
            &["VMK_TELNET_BASE"],
        ),
        (
            "set_bad_bool",
            &["set", "cloud_init", "maybe"],
            &["VMK_CLOUD_INIT"],
        ),
        (
            "set_mem_huge",
            &["set", "mem", "99999999999T"],
            &["VMK_MEM"],
        ),
        (
            "completions_unknown_shell",
            &["completions", "tcsh"],
            &["tcsh"],
        ),
        ("sshkeygen_bad_type", &["sshkeygen", "-t", "dsa"], &["dsa"]),
        ("sshkey_unknown", &["sshkey", "nosuch"], &["nosuch"]),
        ("scp_one_argument", &["scp", "x"], &["GUESTPATH"]),
        (
            "mount_bad_backend",
            &["-D", "mount", "--backend", "nosuch"],
            &["nosuch"],
        ),
        ("ayinstall_unknown", &["ayinstall", "nosuch"], &["nosuch"]),
        (
            "ayinstall_bad_timeout",
            &["-D", "ayinstall", "--timeout", "x"],
            &["--timeout"],
        ),
        (
            "profile_snippet_traversal",
            &["ayinstall", "profile", "-s", "../../etc/passwd"],
            &["../../etc/passwd"],
        ),
        (
            "profile_snippet_escape",
            &["ayinstall", "profile", "-s", esc],
            &["snippet"],
        ),
        ("bootstrap_no_dir", &["-D", "bootstrap"], &["DIR"]),
        (
            "bootstrap_bad_vnc",
            &["-D", "bootstrap", "--vnc", "100", "new"],
            &["--vnc"],
        ),
        (
            "bootstrap_bad_size",
            &["-D", "bootstrap", "--size", "lots", "new"],
            &["--size"],
        ),
        (
            "bootstrap_bad_name",
            &["-D", "bootstrap", "--name", "a,b", "new"],
            &["--name"],
        ),
        (
            "bootstrap_bad_distro",
            &["-D", "bootstrap", "--distro", "gentoo", "new"],
            &["gentoo"],
        ),
    ];
    for (name, args, says) in usage {
        all.push(case(C, name).args(args).says(says));
    }
    all.push(
        case(C, "console_nan_wait")
            .args(&["console", "-w", "NaN"])
            .code(1)
            .says(&["not running"]),
    );
    all.push(
        case(C, "huge_command_name")
            .args(&[huge.as_str()])
            .says(&["no such command"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "huge_unknown_option")
            .args(&["run", &format!("--{huge}")])
            .says(&["unexpected argument"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "huge_set_key")
            .args(&["set", &format!("VMK_{huge}"), "1"])
            .says(&["unknown key"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "huge_clone_name")
            .args(&["clone", "-o", "out", "-n", huge.as_str()])
            .says(&["-n"])
            .hides("h".repeat(200)),
    );
    all.push(
        case(C, "clone_name_too_long_for_the_filesystem")
            .args(&["clone", "-o", "out", "-n", &"n".repeat(300)])
            .says(&["-n"]),
    );
    all.push(
        case(C, "non_utf8_argument")
            .args(&[os(b"set"), os(b"VMK_TAG"), os(b"\xff\xfe")])
            .says(&["UTF-8"]),
    );
    all.push(
        case(C, "non_utf8_command")
            .args(&[os(b"r\xffun")])
            .says(&["UTF-8"]),
    );
    // Fine: they run and change only what they should.
    all.push(
        case(C, "set_mem")
            .args(&["set", "VMK_MEM", "4G"])
            .code(0)
            .writes()
            .says(&["VMK_MEM=4G"]),
    );
    all.push(
        case(C, "set_shell_text_is_quoted")
            .args(&["set", "VMK_TAG", "$(touch CANARY); `id`"])
            .code(0)
            .writes(),
    );
    all.push(
        case(C, "set_dry_run_writes_nothing")
            .args(&["-D", "set", "VMK_MEM", "4G"])
            .code(0),
    );
    all.push(case(C, "newconfig").args(&["newconfig"]).code(0));
    all.push(case(C, "info").args(&["info"]).code(0).says(&["stopped"]));
    all.push(case(C, "isrunning_not").args(&["isrunning"]).code(1));
    all.push(case(C, "dsnap_list_empty").args(&["dsnap", "list"]).code(0));
    all.push(
        case(C, "many_verbose_flags")
            .args(&[&["-D"][..], &["-v"; 200][..], &["run"][..]].concat())
            .code(0)
            .max_output(64 << 10),
    );
}

// ---------------------------------------------------------------------------------------
// Running a case.
// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let cases = corpus();
    let mut counts: BTreeMap<Category, usize> = BTreeMap::new();
    for c in &cases {
        *counts.entry(c.category).or_default() += 1;
    }
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let dup = names
        .windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| w[0].to_string());
    let summary = format!(
        "hostile corpus: {} cases: {}",
        cases.len(),
        Category::ALL
            .iter()
            .map(|c| format!("{} {}", c.name(), counts.get(c).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let total = cases.len();
    let mut tests = vec![SystemTest::new("corpus_is_complete", &[], move || {
        ensure!(dup.is_none(), "two cases are called {dup:?}");
        ensure!(total >= 150, "only {total} cases");
        for c in Category::ALL {
            ensure!(
                counts.get(&c).is_some_and(|n| *n >= 10),
                "few {} cases",
                c.name()
            );
        }
        Ok(())
    })];
    for c in cases {
        let mut needs: Vec<Need> = BINARIES.iter().map(|b| Need::Built(b)).collect();
        if c.nobody && rustix::process::geteuid().is_root() {
            needs.push(Need::Program("setpriv"));
        }
        if c.files.iter().any(|(_, e)| matches!(e, Entry::Fifo)) {
            needs.push(Need::Program("mkfifo"));
        }
        let name = format!("{}::{}", c.category.name(), c.name);
        tests.push(SystemTest::new(&name, &needs, move || run_case(&c)));
    }
    let code = vmk_testkit::run_system_tests(tests);
    eprintln!("{summary}");
    println!("{summary}");
    code
}

/// The case's own directory: the VM directory `vm` (also HOME), the fake qemu, its record.
struct Sandbox {
    _root: tempfile::TempDir,
    root: PathBuf,
    vm: PathBuf,
    qemu_record: PathBuf,
}

fn sandbox(c: &Case) -> Result<Sandbox> {
    let tmp = tempfile::Builder::new().prefix("vmk-hostile-").tempdir()?;
    let root = tmp.path().to_path_buf();
    let vm = root.join("vm");
    std::fs::create_dir(&vm)?;
    std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o700))?;
    let qemu_record = root.join("qemu-called");
    vmk_testkit::write_executable(
        &root.join("qemu"),
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\nexit 0\n",
            qemu_record.display()
        ),
    )?;
    for (path, entry) in &c.files {
        let p = match path.strip_prefix("~/") {
            Some(rest) => root.join(rest),
            None => vm.join(path),
        };
        match entry {
            Entry::Bytes(b) => std::fs::write(&p, b)?,
            Entry::Dir => std::fs::create_dir(&p)?,
            Entry::Symlink(target) => std::os::unix::fs::symlink(target, &p)?,
            Entry::Fifo => {
                let ok = Command::new("mkfifo")
                    .arg("-m")
                    .arg("600")
                    .arg(&p)
                    .status()?;
                ensure!(ok.success(), "mkfifo {} failed", p.display());
            }
            Entry::Mode(m) => std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m))?,
            Entry::Nobody => std::os::unix::fs::lchown(&p, Some(NOBODY), Some(NOBODY))?,
        }
    }
    if c.nobody && rustix::process::geteuid().is_root() {
        // The unprivileged user owns the VM directory and what is in it, and may pass
        // through the case's root to it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
        for e in std::fs::read_dir(&vm)? {
            std::os::unix::fs::lchown(e?.path(), Some(NOBODY), Some(NOBODY))?;
        }
        std::os::unix::fs::lchown(&vm, Some(NOBODY), Some(NOBODY))?;
        std::fs::set_permissions(root.join("qemu"), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(Sandbox {
        _root: tmp,
        root,
        vm,
        qemu_record,
    })
}

/// What a directory holds, recursively: each path with its type, mode and content (a hash).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            out.insert(dir.to_path_buf(), "unreadable".into());
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap_or(&p).to_path_buf();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("symlink -> {:?}", std::fs::read_link(&p).ok())
            } else if ft.is_dir() {
                walk(base, &p, out);
                format!("dir {:o} {}", m.mode(), m.uid())
            } else if ft.is_fifo() {
                format!("fifo {:o}", m.mode())
            } else if ft.is_file() {
                let mut h = DefaultHasher::new();
                if m.len() <= 64 << 20 {
                    std::fs::read(&p).unwrap_or_default().hash(&mut h);
                }
                format!(
                    "file {:o} {} {} {:x}",
                    m.mode(),
                    m.uid(),
                    m.len(),
                    h.finish()
                )
            } else {
                format!("other {:o}", m.mode())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(m) = std::fs::metadata(dir) {
        out.insert(
            PathBuf::from("."),
            format!("dir {:o} {}", m.mode(), m.uid()),
        );
    }
    walk(dir, dir, &mut out);
    out
}

struct Outcome {
    status: std::process::ExitStatus,
    /// stdout then stderr, at most [`KEEP`] bytes of each.
    output: Vec<u8>,
    /// How many bytes were printed in all.
    printed: usize,
    elapsed: Duration,
}

/// Bytes of each stream kept for the checks (the rest is counted).
const KEEP: usize = 256 << 10;

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<(Vec<u8>, usize)> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut total = 0;
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
            let room = KEEP.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        (kept, total)
    })
}

fn execute(c: &Case, sb: &Sandbox) -> Result<Outcome> {
    let vmk = vmk_testkit::workspace_bin("vmk");
    let as_nobody = c.nobody && rustix::process::geteuid().is_root();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$@\""))
        .arg("sh");
    if as_nobody {
        cmd.arg("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups");
    }
    cmd.arg(&vmk)
        .args(&c.args)
        .current_dir(&sb.vm)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", &sb.vm)
        .env("LC_ALL", "C")
        .env("VMK_QEMU", sb.root.join("qemu"));
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            bail!("hung: still running after {TIMEOUT:?}, killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    // A child of the tool that kept the pipes open is a hang too; kill the group.
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let (mut output, n_out) = out.join().expect("reader thread");
    let (stderr, n_err) = err.join().expect("reader thread");
    output.extend_from_slice(&stderr);
    Ok(Outcome {
        status,
        output,
        printed: n_out + n_err,
        elapsed,
    })
}

/// An excerpt of output for a failure message: escaped, bounded.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1500)]);
    let mut s: String = text
        .chars()
        .flat_map(|c| match c {
            '\n' | '\t' => vec![c],
            c if c.is_control() => format!("\\x{:02x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    if bytes.len() > 1500 {
        s.push_str(&format!("… ({} more bytes)", bytes.len() - 1500));
    }
    s
}

fn shown_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let b = a.as_bytes();
            let s = shown(&b[..b.len().min(60)]).replace('\n', "\\n");
            if b.len() > 60 {
                format!("{s}…({} bytes)", b.len())
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_case(c: &Case) -> Result<()> {
    let sb = sandbox(c)?;
    let before = snapshot(&sb.vm);
    let what = format!("`vmk {}`", shown_args(&c.args));
    let outcome = execute(c, &sb).with_context(|| what.clone())?;
    let after = snapshot(&sb.vm);
    let out = &outcome.output;
    let text = String::from_utf8_lossy(out);
    let mut problems = Vec::new();

    match outcome.status.code() {
        Some(code) if code == c.code => {}
        Some(code) => problems.push(format!("exited {code}, expected {}", c.code)),
        None => problems.push(format!(
            "killed by signal {:?} (expected exit {}): it exploded",
            outcome.status.signal(),
            c.code
        )),
    }
    if outcome.printed > c.max_output {
        problems.push(format!(
            "printed {} bytes, more than {}",
            outcome.printed, c.max_output
        ));
    }
    if let Some(i) = out
        .iter()
        .position(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
    {
        problems.push(format!(
            "printed a raw control character 0x{:02x} at byte {i}: {:?}",
            out[i],
            String::from_utf8_lossy(&out[i.saturating_sub(30)..(i + 30).min(out.len())])
        ));
    }
    for f in &c.says {
        if !text.contains(f.as_str()) {
            problems.push(format!("does not say {:?}", shown(f.as_bytes())));
        }
    }
    for f in &c.hides {
        if text.contains(f.as_str()) {
            problems.push(format!(
                "quotes more than a short excerpt: {:?}",
                shown(&f.as_bytes()[..f.len().min(40)])
            ));
        }
    }
    let canaries: Vec<&PathBuf> = after
        .keys()
        .filter(|p| p.to_string_lossy().contains("CANARY"))
        .collect();
    if !canaries.is_empty() || sb.root.join("CANARY").exists() {
        problems.push(format!("RAN SOMETHING: {canaries:?} exists"));
    }
    if !c.qemu && sb.qemu_record.exists() {
        problems.push("called qemu".to_string());
    }
    if !c.writes && before != after {
        let changed: Vec<String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| {
                format!(
                    "{}: {:?} -> {:?}",
                    k.display(),
                    before.get(k).map(|s| shown(s.as_bytes())),
                    after.get(k).map(|s| shown(s.as_bytes()))
                )
            })
            .collect();
        let mut changed = changed;
        changed.dedup();
        problems.push(format!("changed the VM directory: {}", changed.join("; ")));
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "{what} ({:?} case, {:.1}s): {}\n--- output ({} bytes) ---\n{}",
        c.category.name(),
        outcome.elapsed.as_secs_f64(),
        problems.join("\n  "),
        outcome.printed,
        shown(out)
    )
}
