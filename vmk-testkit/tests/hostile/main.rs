//! The hostile-input corpus: configs, values, files and arguments that a careless or
//! malicious user, a planted file or a shell typo hands to vmk, each run through the real
//! binaries. Nothing hangs, nothing explodes, nothing leaks, every error is clear.
//!
//! Each case runs `vmk ARGS…` in a fresh VM directory (also HOME and XDG_RUNTIME_DIR; no
//! system config; no `VMK_*` variable from outside; VMK_QEMU is a fake qemu that only
//! records that it was called), under a memory limit and a timeout, and checks:
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
//! category is printed at the end. The cases live in the modules beside this file, one per
//! category (`files.rs` holds the disk images too).

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

mod arguments;
mod configs;
mod files;
mod values;

// ---------------------------------------------------------------------------------------
// The corpus.
// ---------------------------------------------------------------------------------------

fn corpus() -> Vec<Case> {
    let mut all = Vec::new();
    configs::configs(&mut all);
    values::values(&mut all);
    files::files(&mut all);
    files::disks(&mut all);
    arguments::arguments(&mut all);
    all
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
            return; // not a skip: the snapshot records the unreadable directory
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
        // the case's own runtime directory, and no system config (never /etc/vmk-config
        // or /run/vmk of the machine)
        .env("XDG_RUNTIME_DIR", &sb.vm)
        .env(
            vmk_testkit::isolation::SYSTEM_CONFIG_VAR,
            sb.root.join("no-system-config"),
        )
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
        return Ok(()); // not a skip: every check of the case ran
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
