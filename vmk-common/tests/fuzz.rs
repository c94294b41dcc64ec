//! Property tests (proptest) of the config parser, of the editor behind `vmk set`
//! (`RawConfig::set`) and of the way accepted values reach qemu's command line.
//!
//! Properties:
//! - `parse_never_panics`: any bytes (random, or shell-like tokens glued together) either
//!   parse, with line spans that cover every byte, or give an error that names the file
//!   and a line that exists, and is bounded;
//! - `load_never_panics`: the same bytes as a VM's vm-config through `config::load` (trust
//!   checks, merge, expansion, typed values, cross-key rules): a config or a bounded error;
//! - `set_then_parse_gives_the_value_back`: on a config that parses, `set KEY V` gives a
//!   file that parses, where KEY reads back as exactly V and every other byte (and every
//!   other assignment) is as it was;
//! - `accepted_values_reach_qemu`: every value the key table accepts for VMK_NAME, VMK_MEM,
//!   VMK_CPU, VMK_VNC, VMK_MACHINE, VMK_DISK0 and VMK_DISK1 appears in qemu's argv where
//!   that key goes, commas doubled inside option values.
//!
//! `make test` runs a small fixed number of cases per property (seconds); `make fuzz` sets
//! PROPTEST_CASES (e.g. 100000) and prints how many cases ran and how long they took.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vmk_common::config::{self, raw::quote, DiskFormat, LoadOptions, Quoting, RawConfig};
use vmk_common::qemu::{Host, Mode, QemuCommand};
use vmk_common::state::RuntimePaths;

/// The longest error a config may give, in bytes: file, line, key and a short excerpt.
const MAX_ERROR: usize = 1024;

/// Cases per property: PROPTEST_CASES when set (make fuzz), else `default` (make test).
fn config(default: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    // No regression files in the source tree: a failure prints its minimal input.
    c.failure_persistence = None;
    c
}

/// Runs `test` over `strategy` and prints how many cases ran and how long they took.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let runs = AtomicU64::new(0);
    let start = Instant::now();
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&strategy, |v| {
        runs.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    eprintln!(
        "fuzz {name}: {} executions in {:.2?}",
        runs.load(Ordering::Relaxed),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Inputs.
// ---------------------------------------------------------------------------------------

/// Pieces of shell and of configs, glued at random: more interesting than random bytes.
const TOKENS: &[&str] = &[
    "VMK_MEM",
    "VMK_NAME",
    "VMK_TAG",
    "VMK_DISK0",
    "VMK_VNC",
    "A",
    "B",
    "export ",
    "=",
    "'",
    "\"",
    "\\",
    "$",
    "${",
    "}",
    "$(",
    "((",
    ")",
    "`",
    ";",
    "|",
    "&",
    "<",
    ">",
    "#",
    "#!",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\u{feff}",
    "\0",
    "\x1b[2J",
    "\x07",
    "é",
    "😀",
    "${A}",
    "$A",
    "${VMK_MEM}",
    "${B:-x}",
    "x",
    "2G",
    "4096",
    ",",
    "-",
    "~/",
    "/",
    "%02x",
    "\u{202e}",
];

fn shellish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat().into_bytes())
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        shellish(),
        // a good config with a hostile tail
        (shellish(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(a, b)| {
            let mut v = b"VMK_DISK0=disk0.img\nVMK_MEM=2G\n".to_vec();
            v.extend(a);
            v.extend(b);
            v
        }),
    ]
}

/// Text a value may hold: anything, with the characters that matter to quoting often.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        ".{0,24}",
        prop::collection::vec(
            prop::sample::select(
                &[
                    "a", " ", "'", "\"", "\\", "$", "`", "#", ";", "${A}", "\n", "\t", ",", "é",
                    "$(x)", "=", "~", "\r",
                ][..]
            ),
            0..12
        )
        .prop_map(|v| v.concat()),
    ]
}

const KEYS: &[&str] = &["VMK_MEM", "VMK_NAME", "VMK_TAG", "A", "B", "OTHER_1"];

/// One line of a config that parses: blank, comment or an assignment in any style.
fn line() -> impl Strategy<Value = String> {
    let style = prop::sample::select(&[Quoting::Bare, Quoting::Single, Quoting::Double][..]);
    let prefix = prop::sample::select(&["", "export ", "  ", "\t", "export\t"][..]);
    // `KEY=#c` (an empty value glued to a comment) is left out: `set` puts a space before
    // the comment there, one byte outside the value (see `set_before_a_glued_comment`).
    let suffix = prop::sample::select(&["", " # c", "\t#x y", "  "][..]);
    let assignment = (
        prefix,
        prop::sample::select(KEYS),
        value_text(),
        style,
        suffix,
    )
        .prop_map(|(p, k, v, q, s)| format!("{p}{k}={}{s}", quote(&v, q)));
    let mixed = (prop::sample::select(KEYS), "[a-z]{0,3}", "[ a-z$]{0,5}")
        .prop_map(|(k, a, b)| format!("{k}={a}'{b}'\"{a}\"{a}"));
    let reference = (prop::sample::select(KEYS), prop::sample::select(KEYS))
        .prop_map(|(k, r)| format!("{k}=\"${{{r}}}-x\"$VMK_MEM"));
    prop_oneof![
        3 => assignment,
        1 => mixed,
        1 => reference,
        1 => Just(String::new()),
        1 => "# [^\n]{0,20}",
        1 => Just("#!/bin/sh".to_string()),
    ]
}

/// A config that parses, as bytes; lines end in \n or \r\n, the last one maybe in neither.
fn good_config() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((line(), any::<bool>()), 0..12),
        any::<bool>(),
    )
        .prop_map(|(lines, last_newline)| {
            let mut s = String::new();
            let n = lines.len();
            for (i, (l, crlf)) in lines.into_iter().enumerate() {
                s.push_str(&l);
                if i + 1 < n || last_newline {
                    s.push_str(if crlf { "\r\n" } else { "\n" });
                }
            }
            s.into_bytes()
        })
}

// ---------------------------------------------------------------------------------------
// Parsing and loading.
// ---------------------------------------------------------------------------------------

fn check_error(e: &config::ConfigError, bytes: &[u8]) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(
        shown.len() <= MAX_ERROR,
        "error of {} bytes: {}",
        shown.len(),
        &shown[..shown.len().min(300)]
    );
    if let Some(line) = e.line {
        let lines = bytes.iter().filter(|b| **b == b'\n').count() + 1;
        prop_assert!(
            (1..=lines).contains(&line),
            "line {line} of {lines}: {shown}"
        );
    }
    Ok(())
}

#[test]
fn parse_never_panics() {
    fuzz("parse_never_panics", 10_000, any_bytes(), |bytes| {
        match RawConfig::parse(&bytes, "vm-config") {
            Ok(raw) => {
                let mut at = 0;
                for l in raw.lines() {
                    prop_assert_eq!(l.span.start, at, "lines leave a gap");
                    at = l.span.end;
                }
                // A file that is only a byte order mark has no line to hold it (the BOM is
                // skipped, and a first line takes it in): reported, harmless for `set`.
                let lone_bom = raw.lines().is_empty() && raw.bytes() == "\u{feff}".as_bytes();
                prop_assert!(
                    at == raw.bytes().len() || lone_bom,
                    "lines cover {at} of {} bytes",
                    raw.bytes().len()
                );
            }
            Err(e) => {
                prop_assert_eq!(e.file.as_deref(), Some("vm-config"));
                check_error(&e, &bytes)?;
            }
        }
        Ok(())
    });
}

/// A private directory for the loads (0700, as the trust checks want it).
fn load_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fn load_options(dir: &Path) -> LoadOptions {
    LoadOptions {
        dir: Some(dir.to_path_buf()),
        system_file: Some(dir.join("no-system-config")),
        user_file: Some(dir.join("no-user-config")),
        env: false,
        ..LoadOptions::new()
    }
}

#[test]
fn load_never_panics() {
    let dir = load_dir().join("load");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("disk0.img"), [0u8; 512]).unwrap();
    fuzz(
        "load_never_panics",
        1000,
        prop_oneof![any_bytes(), good_config()],
        |bytes| {
            std::fs::write(dir.join(config::VM_FILE_NAME), &bytes).unwrap();
            if let Err(e) = config::load(&load_options(&dir)) {
                check_error(&e, &bytes)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// `vmk set`'s editor.
// ---------------------------------------------------------------------------------------

fn pairs(raw: &RawConfig) -> Vec<(String, String)> {
    raw.assignments()
        .map(|(_, a)| (a.key.clone(), format!("{:?}", a.value)))
        .collect()
}

#[test]
fn set_then_parse_gives_the_value_back() {
    let strategy = (good_config(), prop::sample::select(KEYS), value_text());
    fuzz(
        "set_then_parse_gives_the_value_back",
        5000,
        strategy,
        |(bytes, key, value)| {
            let raw = RawConfig::parse(&bytes, "vm-config");
            prop_assume!(raw.is_ok());
            let raw = raw.unwrap();
            let out = raw.set(key, &value);
            let back = match RawConfig::parse(&out, "vm-config") {
                Ok(b) => b,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "the edited file does not parse: {e}\n{:?}",
                        String::from_utf8_lossy(&out)
                    )))
                }
            };
            let got = back.last(key).and_then(|(_, a)| a.literal());
            prop_assert_eq!(got.as_deref(), Some(value.as_str()));
            let (mut before, mut after) = (pairs(&raw), pairs(&back));
            match raw.last(key) {
                Some((_, a)) => {
                    let (head, tail) = (&bytes[..a.value_span.start], &bytes[a.value_span.end..]);
                    prop_assert!(
                        out.len() >= head.len() + tail.len()
                            && out.starts_with(head)
                            && out.ends_with(tail),
                        "bytes outside {key}'s value changed"
                    );
                    let i = before.iter().rposition(|(k, _)| k == key).unwrap();
                    before.remove(i);
                    let j = after.iter().rposition(|(k, _)| k == key).unwrap();
                    after.remove(j);
                }
                None => {
                    prop_assert!(out.starts_with(&bytes), "bytes before the new line changed");
                    let added = &out[bytes.len()..];
                    let added = added.strip_prefix(b"\n").unwrap_or(added);
                    prop_assert!(
                        added.starts_with(format!("{key}=").as_bytes()) && added.ends_with(b"\n"),
                        "appended {:?}",
                        String::from_utf8_lossy(added)
                    );
                    after.pop();
                }
            }
            prop_assert_eq!(before, after, "another assignment changed");
            Ok(())
        },
    );
}

/// `KEY=#c` is an empty value then a comment, its value span empty and right before the
/// `#`: `set` must separate the new value from the comment, or it reads back as `V#c`
/// (`vmk set` then stopped with "internal error … would read back as").
#[test]
fn set_before_a_glued_comment() {
    let raw = RawConfig::parse(b"VMK_TAG=#note\n", "vm-config").unwrap();
    let out = raw.set("VMK_TAG", "hello");
    let back = RawConfig::parse(&out, "vm-config").unwrap();
    assert_eq!(
        back.last("VMK_TAG")
            .and_then(|(_, a)| a.literal())
            .as_deref(),
        Some("hello"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Accepted values reach qemu's argv.
// ---------------------------------------------------------------------------------------

/// A machine with qemu-system-x86_64, no kvm, raw images and no ssh key.
struct FakeHost;

impl Host for FakeHost {
    fn kvm_usable(&self) -> bool {
        false
    }
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        (name == "qemu-system-x86_64").then(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
    }
    fn disk_format(&self, _path: &Path) -> io::Result<DiskFormat> {
        Ok(DiskFormat::Raw)
    }
    fn read_to_string(&self, _path: &Path) -> io::Result<String> {
        Err(io::ErrorKind::NotFound.into())
    }
}

/// Where an accepted value of `key` must appear in the argv: (option, its argument).
fn expected(key: &str, value: &str, dir: &Path) -> (&'static str, String) {
    let escaped = |s: &str| s.replace(',', ",,");
    match key {
        "VMK_NAME" => ("-name", format!("guest={}", escaped(value))),
        "VMK_MEM" => (
            "-m",
            value.parse::<config::MemSize>().unwrap().mib().to_string(),
        ),
        "VMK_CPU" => (
            "-smp",
            config::values::parse_cpus(value).unwrap().to_string(),
        ),
        "VMK_VNC" => (
            "-vnc",
            format!("127.0.0.1:{}", config::values::parse_vnc(value).unwrap()),
        ),
        "VMK_MACHINE" => ("-machine", format!("{},accel=tcg", escaped(value))),
        "VMK_DISK0" | "VMK_DISK1" => {
            let path = config::resolve_path(dir, None, value);
            (
                "-drive",
                format!("file={},", escaped(&path.to_string_lossy())),
            )
        }
        _ => unreachable!("{key}"),
    }
}

fn candidate(key: &'static str) -> BoxedStrategy<(&'static str, String)> {
    let text: BoxedStrategy<String> = match key {
        "VMK_MEM" => "[0-9]{1,12}[gGmMtTkK]?(i?[bB])?".boxed(),
        "VMK_CPU" | "VMK_VNC" => "[0-9]{1,5}".boxed(),
        "VMK_NAME" | "VMK_MACHINE" => "[a-zA-Z0-9._+:@,= -]{1,20}".boxed(),
        _ => prop_oneof!["[^\\x00-\\x1f]{1,30}", "[a-z,=/ .~-]{1,30}"].boxed(),
    };
    text.prop_map(move |v| (key, v)).boxed()
}

#[test]
fn accepted_values_reach_qemu() {
    let dir = load_dir().join("argv");
    std::fs::create_dir_all(&dir).unwrap();
    let keys: &'static [&str] = &[
        "VMK_NAME",
        "VMK_MEM",
        "VMK_CPU",
        "VMK_VNC",
        "VMK_MACHINE",
        "VMK_DISK0",
        "VMK_DISK1",
    ];
    let strategy = prop::sample::select(keys).prop_flat_map(candidate);
    let accepted = AtomicU64::new(0);
    fuzz(
        "accepted_values_reach_qemu",
        3000,
        strategy,
        |(key, value)| {
            // Only what the key table accepts; the rest must be refused by the loader too.
            let mut opts = load_options(&dir);
            opts.overrides = vec![("VMK_ACCEL".into(), "tcg".into())];
            if key != "VMK_DISK0" {
                opts.overrides
                    .push(("VMK_DISK0".into(), "/vm/disk0.img".into()));
            }
            opts.overrides.push((key.into(), value.clone()));
            let valid = config::validate_value(key, &value).is_ok() && !value.is_empty();
            let cfg = match config::load(&opts) {
                Ok(cfg) => cfg,
                Err(e) => {
                    prop_assert!(
                        !valid,
                        "{key}={value:?} is accepted by the key table but load says: {e}"
                    );
                    return Ok(()); // not a skip: a refused value is this case's outcome
                }
            };
            prop_assume!(valid);
            accepted.fetch_add(1, Ordering::Relaxed);
            let image = cfg.disk0_path.clone().unwrap();
            let paths = RuntimePaths {
                pidfile: image.with_extension("pid"),
                console_log: image.with_extension("log"),
                qmp_socket: PathBuf::from("/run/vmk/fuzz.qmp"),
                image,
            };
            let cmd = match QemuCommand::from_config_with(&cfg, Mode::Run, &paths, &FakeHost) {
                Ok(c) => c,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{key}={value:?}: no qemu command: {e:#}"
                    )))
                }
            };
            let argv: Vec<String> = cmd
                .argv()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let (option, want) = expected(key, &value, &dir);
            let found = argv.windows(2).any(|w| {
                w[0] == option
                    && w[1].starts_with(want.as_str())
                    && (option == "-drive" || w[1] == want)
            });
            prop_assert!(found, "{key}={value:?}: no `{option} {want}` in {argv:?}");
            Ok(())
        },
    );
    eprintln!(
        "fuzz accepted_values_reach_qemu: {} accepted values checked",
        accepted.load(Ordering::Relaxed)
    );
}
