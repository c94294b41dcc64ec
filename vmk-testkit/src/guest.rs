//! Real guests for real boots: a busybox initramfs (boots to its first line in ~2 s under
//! TCG), built once into a cache directory and shared by every test process, and the cache
//! plumbing that `vmk-testguest`'s Debian guest uses too.
//!
//! Builds are serialised with `flock` on a lock file per fixture and written under a
//! temporary name that is renamed into place only when complete, so a killed build never
//! leaves something that looks finished, and concurrent test binaries build a fixture once.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Text the busybox guest prints on the console as soon as `/init` starts.
pub const BUSYBOX_HELLO: &str = "vmk-busybox-guest: hello";
/// Printed by the busybox guest when it is idle with a shell on the console.
pub const BUSYBOX_READY: &str = "vmk-busybox-guest: ready";

/// Bump when the busybox initramfs layout or `/init` changes: it is part of the cache key.
const BUSYBOX_VERSION: u32 = 3;
/// Kernel modules the busybox guest loads (with their dependencies): virtio devices,
/// SCSI disks, the ACPI power button so `system_powerdown` works, and virtio-9p for shares.
const BUSYBOX_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "sd_mod",
    "button",
    "evdev",
    "9pnet_virtio",
    "9p",
];

/// The tiny initramfs guest. Boot it with `-kernel kernel -initrd initrd -append append`.
///
/// Its `/init` mounts proc/sys/dev, prints [`BUSYBOX_HELLO`], loads the virtio modules,
/// prints `vmk-busybox-guest: block <disks>`, brings up `eth0` when present (printing
/// `vmk-busybox-guest: eth0 up` and, with DHCP, `vmk-busybox-guest: eth0 <addr/len>`),
/// starts `acpid` (ACPI power button → `poweroff -f`), then:
/// - with `vmk.cmd="CMD"` (or `vmk.cmd=WORD`) on the kernel command line: runs CMD with
///   `sh -c`, prints `vmk-busybox-guest: exit <status>` and powers off;
/// - with `vmk.poweroff`: powers off at once;
/// - otherwise: prints [`BUSYBOX_READY`] and keeps a shell on the console (it never stops
///   by itself, so run/kill/stop tests see a live VM).
#[derive(Debug, Clone)]
pub struct BusyboxGuest {
    /// The host's kernel (a copy in the cache, matching the modules in the initrd).
    pub kernel: PathBuf,
    /// The newc cpio initramfs.
    pub initrd: PathBuf,
    /// Kernel arguments: serial console on ttyS0, reboot at once on panic.
    pub append: String,
}

/// Where fixtures are cached: `$VMK_TEST_CACHE`, else `<workspace>/target/vmk-test-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMK_TEST_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target")
        .join("vmk-test-cache")
}

/// `vmk-ayinstall bootstrap DIR` (the workspace's built binary, see
/// [`crate::workspace_bin`]) with bootstrap's cache of installed systems in the test cache
/// (`<cache>/xdg`), keyed by what was installed: only a cold machine runs the install.
/// The caller adds options (`--vnc`, `--arch`…) and the environment.
pub fn bootstrap_command(dir: &Path) -> Command {
    let mut cmd = Command::new(crate::workspace_bin("vmk-ayinstall"));
    cmd.arg("bootstrap")
        .arg(dir)
        .env("XDG_CACHE_HOME", cache_dir().join("xdg"));
    cmd
}

/// Builds (once, cached) and returns the busybox initramfs guest.
pub fn busybox_guest() -> Result<BusyboxGuest> {
    let kernel = crate::find_host_kernel().context(
        "unmet requirement: no readable kernel /boot/vmlinuz-* to boot the busybox guest",
    )?;
    let busybox = find_static_busybox()?;
    let version = kernel_version(&kernel)?;
    let modules_dir = Path::new("/lib/modules").join(&version);
    let mut key = Fnv::new();
    key.add(&BUSYBOX_VERSION.to_le_bytes());
    key.add(version.as_bytes());
    key.add(&file_stamp(&kernel));
    key.add(&file_stamp(&busybox));
    key.add(&file_stamp(&modules_dir.join("modules.dep")));
    let append = "console=ttyS0 no_timer_check panic=-1".to_string();
    let dir = cached(
        "busybox",
        &key.hex(),
        |tmp| build_busybox(tmp, &kernel, &busybox, &modules_dir),
        remove_dir,
    )?;
    Ok(BusyboxGuest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.cpio"),
        append,
    })
}

/// Polls `path` (a console log) every 20 ms until a line contains `needle`; returns how
/// long that took. Reads only what was appended since the last poll, so long logs stay
/// cheap; the file may appear late or be truncated. On timeout the error shows the log's
/// last lines.
pub fn wait_for_file_line(path: &Path, needle: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let needle = needle.as_bytes();
    let mut offset = 0u64;
    let mut pending: Vec<u8> = Vec::new(); // the current, unfinished line and newer bytes
    let mut tail: std::collections::VecDeque<String> = Default::default();
    loop {
        if let Ok(mut f) = File::open(path) {
            if f.metadata().is_ok_and(|m| m.len() < offset) {
                offset = 0; // truncated: start over
                pending.clear();
            }
            f.seek(io::SeekFrom::Start(offset))?;
            offset += f.read_to_end(&mut pending)? as u64;
        }
        if !needle.is_empty() && pending.windows(needle.len()).any(|w| w == needle) {
            return Ok(start.elapsed());
        }
        if let Some(last_nl) = pending.iter().rposition(|b| *b == b'\n') {
            for line in pending[..last_nl].split(|b| *b == b'\n') {
                tail.push_back(String::from_utf8_lossy(line).into_owned());
                if tail.len() > 25 {
                    tail.pop_front();
                }
            }
            pending.drain(..=last_nl);
        }
        if start.elapsed() >= timeout {
            tail.push_back(String::from_utf8_lossy(&pending).into_owned());
            bail!(
                "`{}` did not appear in {} within {:?}; its last lines:\n{}",
                String::from_utf8_lossy(needle),
                path.display(),
                timeout,
                Vec::from(tail).join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Cache plumbing

/// Returns `<cache>/<kind>-<key>`, building it with `build(tmp_dir)` under an exclusive
/// lock when it does not exist yet. Other entries of the same kind are removed afterwards,
/// with `remove` (a fixture whose build may leave mounts behind passes a removal that
/// detaches them and never crosses filesystems).
pub fn cached(
    kind: &str,
    key: &str,
    build: impl FnOnce(&Path) -> Result<()>,
    remove: fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let cache = cache_dir();
    let done = cache.join(format!("{kind}-{key}"));
    if done.is_dir() {
        mark_used(&done);
        return Ok(done);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let lock_path = cache.join(format!("{kind}.lock"));
    let lock = File::create(&lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    eprintln!("vmk-testkit: waiting for the {kind} build lock");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if done.is_dir() {
        return Ok(done); // another process built it while we waited
    }
    let tmp = cache.join(format!("{kind}-{key}.tmp"));
    if tmp.exists() {
        remove(&tmp)?;
    }
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let start = Instant::now();
    eprintln!("vmk-testkit: building {kind} fixture in {}", tmp.display());
    build(&tmp).with_context(|| format!("building the {kind} test fixture"))?;
    fs::rename(&tmp, &done)
        .with_context(|| format!("renaming {} to {}", tmp.display(), done.display()))?;
    eprintln!(
        "vmk-testkit: built {kind} fixture {} in {:.1?}",
        done.display(),
        start.elapsed()
    );
    prune_old(&cache, kind, &done, remove);
    Ok(done)
}

/// Removes a fixture directory that holds no mounts (plain `rm -r`).
pub fn remove_dir(path: &Path) -> Result<()> {
    fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// Removes stale `<kind>-*` entries other than `keep` (we hold the kind's lock).
/// How long a fixture another key built stays after its last use: test runs of other
/// branches on the same machine (other worktrees, other keys) keep theirs meanwhile,
/// instead of removing each other's and rebuilding in turn.
const KEEP_UNUSED: Duration = Duration::from_secs(6 * 3600);

/// Records that a fixture was just used (its directory's mtime), for [`prune_old`].
fn mark_used(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.set_modified(std::time::SystemTime::now());
    }
}

/// Whether the fixture `path` was built or used within [`KEEP_UNUSED`].
fn recently_used(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < KEEP_UNUSED)
}

fn prune_old(cache: &Path, kind: &str, keep: &Path, remove: fn(&Path) -> Result<()>) {
    let prefix = format!("{kind}-");
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // Only `<kind>-<16 hex>` (and its .tmp), so "debian-" never matches "debootstrap-".
        let hex = rest.trim_end_matches(".tmp");
        let finished = !name.ends_with(".tmp");
        if path != keep
            && hex.len() == 16
            && hex.chars().all(|c| c.is_ascii_hexdigit())
            && !(finished && recently_used(&path))
        {
            eprintln!("vmk-testkit: removing old fixture {}", path.display());
            if let Err(e) = remove(&path) {
                eprintln!("vmk-testkit: warning: {e:#}");
            }
        }
    }
}

/// Runs a command, failing with its name and status when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Size and mtime of a file, so a changed input changes the cache key.
pub fn file_stamp(path: &Path) -> Vec<u8> {
    let mut v = path.as_os_str().as_encoded_bytes().to_vec();
    if let Ok(m) = fs::metadata(path) {
        v.extend_from_slice(&m.len().to_le_bytes());
        v.extend_from_slice(&m.mtime().to_le_bytes());
    }
    v
}

/// FNV-1a 64: a hash that stays the same across Rust versions (cache keys on disk).
#[derive(Clone, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    /// An empty key.
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    /// Adds one field to the key.
    pub fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 ^= 0xff; // separator, so ("ab","c") != ("a","bc")
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    /// The key as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

// ---------------------------------------------------------------------------------------
// Busybox guest

fn find_static_busybox() -> Result<PathBuf> {
    let candidates = ["/bin/busybox", "/usr/bin/busybox"];
    let Some(found) = candidates.iter().map(Path::new).find(|p| p.is_file()) else {
        bail!("unmet requirement: no busybox found: apt-get install busybox-static");
    };
    if has_interpreter(found)? {
        bail!(
            "unmet requirement: {} is dynamically linked and cannot run in an initramfs: \
             apt-get install busybox-static",
            found.display()
        );
    }
    Ok(found.to_path_buf())
}

/// True when an ELF64 file has a PT_INTERP header (is dynamically linked).
fn has_interpreter(path: &Path) -> Result<bool> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut data))
        .with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        bail!("{} is not a 64-bit ELF executable", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        data.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == 3)
    }))
}

/// The version a kernel image's file name carries (`vmlinuz-6.1.0-57-amd64` → `6.1.0-57-amd64`).
pub fn kernel_version(kernel: &Path) -> Result<String> {
    kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_string)
        .with_context(|| format!("cannot tell the kernel version of {}", kernel.display()))
}

fn build_busybox(tmp: &Path, kernel: &Path, busybox: &Path, modules_dir: &Path) -> Result<()> {
    fs::copy(kernel, tmp.join("vmlinuz"))
        .with_context(|| format!("copying {}", kernel.display()))?;
    let mut cpio = Cpio::default();
    for d in [
        "bin", "dev", "etc", "lib", "proc", "sys", "tmp", "root", "run", "var", "var/log",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.char_dev("dev/null", 1, 3);
    let bb = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    cpio.file("bin/busybox", 0o755, bb);
    cpio.symlink("sbin", "bin");
    cpio.symlink("var/run", "../run"); // acpid writes its pidfile there
    cpio.dir("usr");
    cpio.symlink("usr/bin", "../bin");
    cpio.symlink("usr/sbin", "../bin");
    for applet in busybox_applets(busybox)? {
        if applet != "busybox" {
            cpio.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    let modules = if modules_dir.join("modules.dep").is_file() {
        module_closure(modules_dir, BUSYBOX_MODULES)?
    } else {
        eprintln!(
            "vmk-testkit: warning: no {}/modules.dep: the busybox guest gets no virtio modules",
            modules_dir.display()
        );
        Vec::new()
    };
    cpio.dir("lib/modules");
    let mut order = String::new();
    for rel in &modules {
        let name = module_name(rel);
        let data = read_module(&modules_dir.join(rel))?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, data);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("etc/vmk-modules", 0o644, order.into_bytes());
    cpio.file("init", 0o755, BUSYBOX_INIT.as_bytes().to_vec());
    cpio.file(
        "etc/udhcpc.script",
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    );
    cpio.dir("etc/acpi");
    cpio.dir("etc/acpi/PWRF");
    cpio.file(
        "etc/acpi/PWRF/00000080",
        0o755,
        b"#!/bin/sh\necho 'vmk-busybox-guest: power button'\nsync\npoweroff -f\n".to_vec(),
    );
    cpio.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    cpio.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    let out = tmp.join("initrd.cpio");
    let mut f = io::BufWriter::new(File::create(&out)?);
    cpio.write(&mut f)
        .with_context(|| format!("writing {}", out.display()))?;
    f.flush()?;
    Ok(())
}

const BUSYBOX_INIT: &str = r#"#!/bin/sh
# vmk test guest: see vmk_testkit::guest::BusyboxGuest
export PATH=/bin HOME=/root PS1='vmk-busybox# '
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "vmk-busybox-guest: hello"
for m in $(cat /etc/vmk-modules); do
  insmod /lib/modules/$m.ko 2>/dev/null || echo "vmk-busybox-guest: insmod $m failed"
done
hostname vmk-busybox; ip link set lo up
sleep 0.2; echo "vmk-busybox-guest: block $(ls /sys/block | grep -v -e loop -e ram | tr '\n' ' ')"
if [ -e /sys/class/net/eth0 ] && ip link set eth0 up; then
  echo "vmk-busybox-guest: eth0 up"
  if udhcpc -i eth0 -n -q -t 5 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1; then
    echo "vmk-busybox-guest: eth0 $(ip -4 -o addr show eth0 | awk '{print $4}')"
  fi
fi
[ -e /dev/input/event0 ] && acpid -c /etc/acpi
cmd=$(sed -n 's/.*vmk\.cmd="\([^"]*\)".*/\1/p' /proc/cmdline)
[ -n "$cmd" ] || cmd=$(sed -n 's/.*vmk\.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$cmd" ]; then
  sh -c "$cmd"; echo "vmk-busybox-guest: exit $?"; sync; poweroff -f
fi
case " $(cat /proc/cmdline) " in *" vmk.poweroff "*) sync; poweroff -f;; esac
echo "vmk-busybox-guest: ready"
while true; do setsid cttyhack sh -l; sleep 1; done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf; for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
exit 0
"#;

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_string)
        .collect())
}

/// A kernel module's name from its path in modules.dep:
/// `kernel/drivers/net/virtio_net.ko.xz` → `virtio_net` (`-` becomes `_`, as modprobe does).
pub fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The `wanted` modules (by [`module_name`]) of the kernel whose modules are in
/// `modules_dir` (`/lib/modules/<version>`), with everything they depend on: their paths
/// relative to `modules_dir` as modules.dep names them, dependencies first (the order to
/// `insmod` them in). Modules built into the kernel are absent from modules.dep and so
/// simply left out.
pub fn module_closure(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep_file = modules_dir.join("modules.dep");
    let text =
        fs::read_to_string(&dep_file).with_context(|| format!("reading {}", dep_file.display()))?;
    let deps: BTreeMap<String, (String, Vec<String>)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            let d = d.split_whitespace().map(str::to_string).collect();
            (module_name(m), (m.to_string(), d))
        })
        .collect();
    let mut order = Vec::new();
    for want in wanted {
        if let Some((path, _)) = deps.get(*want) {
            visit(path, &deps, &mut order);
        }
    }
    Ok(order)
}

fn visit(path: &str, deps: &BTreeMap<String, (String, Vec<String>)>, order: &mut Vec<String>) {
    if order.iter().any(|p| p == path) {
        return;
    }
    if let Some((_, ds)) = deps.get(&module_name(path)) {
        for d in ds {
            visit(d, deps, order);
        }
    }
    order.push(path.to_string());
}

/// A kernel module's bytes, decompressed from `.ko.xz`/`.ko.zst`/`.ko.gz` (busybox insmod
/// may not read compressed modules).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} to decompress {}", path.display()))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

/// A newc ("070701") cpio archive built in memory: what the kernel unpacks as initramfs.
/// Written here rather than with cpio(1) so device nodes need no mknod and no root. Entries
/// are owned by root; names are relative (`etc/passwd`), parents before their children.
/// Several archives may follow each other in one initrd (the kernel unpacks them all, later
/// files replacing earlier ones).
#[derive(Debug, Default)]
pub struct Cpio {
    entries: Vec<(String, u32, u32, Vec<u8>)>, // name, mode, rdev (major<<8|minor), data
}

impl Cpio {
    /// A directory (mode 0755).
    pub fn dir(&mut self, name: &str) {
        self.entries.push((name.into(), 0o040_755, 0, Vec::new()));
    }
    /// A regular file with permission bits `perm` (e.g. 0o644).
    pub fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.entries.push((name.into(), 0o100_000 | perm, 0, data));
    }
    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entries
            .push((name.into(), 0o120_777, 0, target.as_bytes().to_vec()));
    }
    /// A character device node (mode 0600).
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entries
            .push((name.into(), 0o020_600, (major << 8) | minor, Vec::new()));
    }

    /// Writes the archive, ending with its `TRAILER!!!` entry.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut offset = 0usize;
        let trailer = ("TRAILER!!!".to_string(), 0, 0, Vec::new());
        for (ino, (name, mode, rdev, data)) in self.entries.iter().chain([&trailer]).enumerate() {
            let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
            let header = format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                ino + 1,
                mode,
                0,
                0,
                nlink,
                0,
                data.len(),
                0,
                0,
                rdev >> 8,
                rdev & 0xff,
                name.len() + 1,
                0
            );
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            offset += header.len() + name.len() + 1;
            offset += pad(w, offset)?;
            w.write_all(data)?;
            offset += data.len();
            offset += pad(w, offset)?;
        }
        Ok(())
    }
}

fn pad(w: &mut impl Write, offset: usize) -> io::Result<usize> {
    let n = (4 - offset % 4) % 4;
    w.write_all(&[0u8; 3][..n])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_drop_path_and_compression() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko"),
            "virtio_net"
        );
        assert_eq!(module_name("kernel/x/net-failover.ko.zst"), "net_failover");
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.dir("etc");
        c.file("etc/a", 0o644, b"hello".to_vec());
        c.symlink("b", "etc/a");
        let mut out = Vec::new();
        c.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("etc/a\0") && text.contains("hello") && text.contains("TRAILER!!!\0")
        );
        // Second header starts on a 4-byte boundary right after "etc\0" padded.
        let second = out.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
        assert_eq!(second % 4, 0);
    }

    #[test]
    fn waits_for_a_line_written_later_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut f = File::create(&log).unwrap();
                for piece in ["boot\nvmk-busy", "box-guest: hel", "lo\nmore\n"] {
                    std::thread::sleep(Duration::from_millis(50));
                    f.write_all(piece.as_bytes()).unwrap();
                }
            })
        };
        let took = wait_for_file_line(&log, BUSYBOX_HELLO, Duration::from_secs(10)).unwrap();
        assert!(took >= Duration::from_millis(100));
        writer.join().unwrap();
        let err = wait_for_file_line(&log, "never", Duration::from_millis(50)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("never")
                && msg.contains("vmk-busybox-guest: hello")
                && msg.contains("more"),
            "{msg}"
        );
    }

    #[test]
    fn fnv_keys_are_stable() {
        let mut a = Fnv::new();
        a.add(b"ab");
        a.add(b"c");
        let mut b = Fnv::new();
        b.add(b"a");
        b.add(b"bc");
        // fixed values (computed by an independent FNV-1a in Python): a key that changed
        // across versions would silently orphan every cache entry
        assert_eq!(a.hex(), "20ba9b3025a8b421");
        assert_eq!(b.hex(), "a0a3542c19b900ab");
        assert_eq!(Fnv::new().hex(), "cbf29ce484222325");
    }

    #[test]
    fn host_busybox_static_check() {
        // /bin/sh on Debian is dynamically linked.
        if Path::new("/bin/dash").exists() {
            assert!(has_interpreter(Path::new("/bin/dash")).unwrap());
        }
    }
}
