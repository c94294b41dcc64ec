//! Whether KVM really runs guests here, not only whether /dev/kvm opens: under nested
//! virtualisation (many CI machines) /dev/kvm opens, and then qemu aborts ("failed to set
//! MSR 0x10a") or the guest stalls without a word. `VMK_ACCEL=auto` asks this probe before
//! it chooses kvm, so that a newcomer who never sets VMK_ACCEL gets a running VM there.
//!
//! The probe boots qemu's own firmware (SeaBIOS on x86) under KVM with no disk: a working
//! KVM reaches "No bootable device" in a fraction of a second; a broken one dies or stalls
//! before, or crawls: every guest instruction handled in the host kernel instead of run by
//! the CPU (seen on nested hosts, where SeaBIOS then takes seconds of kernel time with no
//! time in the guest, and Linux never gets through its decompressor). Crawling is told from
//! the CPU time qemu's threads spent in the host kernel versus in the guest, not from the
//! clock, so a busy host does not make a working KVM look broken ([`crawls`]).
//! The answer is kept per boot of the host and per qemu binary in the private
//! runtime directory, so only the first start after a reboot pays for it (on a broken host:
//! at most [`PROBE_TIMEOUT`], about a second where KVM crawls).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the firmware may take to reach its end under KVM before KVM counts as broken.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// What the firmware prints once it ran to its end (no disk: nothing to boot).
const FIRMWARE_DONE: [&str; 2] = ["No bootable device", "Booting from"];

/// Host-kernel CPU time past which the probe's firmware counts as crawling under KVM (when
/// the guest got under a tenth of it): SeaBIOS needs a small fraction of it on a working
/// KVM, and over three seconds on the nested hosts where Linux then never boots.
pub const CRAWL_KERNEL_TIME: Duration = Duration::from_secs(1);

/// How often the probe looks at the firmware's output and qemu's CPU time.
const PROBE_POLL: Duration = Duration::from_millis(50);

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    /// The firmware ran to its end under KVM.
    Works,
    /// KVM is present but does not run guests; why, in a few words.
    Broken(String),
    /// The probe could not tell (no probe for this architecture, qemu did not start).
    Unknown,
}

/// The probe's answer for `qemu` with `cpu` on this machine, from the cache when this boot
/// of the host already asked it, else by running it (and caching what it found).
pub fn probe_cached(qemu: &Path, cpu: &str, arch: &str) -> KvmProbe {
    if !matches!(arch, "x86_64" | "i386" | "i686") {
        return KvmProbe::Unknown;
    }
    let key = cache_key(qemu, cpu);
    let file = cache_file(qemu, cpu);
    if let Some(found) = file.as_deref().and_then(|f| read_cache(f, &key)) {
        return found;
    }
    let found = probe(qemu, cpu);
    if let (Some(f), KvmProbe::Works | KvmProbe::Broken(_)) = (file.as_deref(), &found) {
        if let Err(e) = write_cache(f, &key, &found) {
            log::debug!(
                "cannot keep the kvm probe's answer in {}: {e:#}",
                f.display()
            );
        }
    }
    found
}

/// Runs the probe: qemu's firmware under KVM, watched on its debug console.
pub fn probe(qemu: &Path, cpu: &str) -> KvmProbe {
    log::debug!("probing kvm with {} -cpu {cpu}", qemu.display());
    let child = Command::new(qemu)
        .args(["-nodefaults", "-machine", "pc,accel=kvm", "-cpu", cpu])
        .args(["-m", "16", "-display", "none", "-no-reboot"])
        .args(["-debugcon", "stdio", "-global", "isa-debugcon.iobase=0x402"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::debug!("kvm probe: cannot start {}: {e}", qemu.display());
            return KvmProbe::Unknown;
        }
    };
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        let done = BufReader::new(stdout)
            .split(b'\n')
            .map_while(Result::ok)
            .any(|line| {
                let line = String::from_utf8_lossy(&line);
                FIRMWARE_DONE.iter().any(|d| line.contains(d))
            });
        let _ = tx.send(done);
    });
    let outcome = watch_firmware(&rx, child.id());
    // our own child: end it whatever it did
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let said = last_error_line(&stderr);
    match outcome {
        Firmware::Done => KvmProbe::Works,
        Firmware::Died => KvmProbe::Broken(match said {
            Some(l) => format!("qemu died under kvm: {l}"),
            None => "qemu died under kvm before its firmware ran".into(),
        }),
        Firmware::Stalled => KvmProbe::Broken(format!(
            "qemu's firmware stalled under kvm (no progress in {} s)",
            PROBE_TIMEOUT.as_secs()
        )),
        Firmware::Crawled(t) => KvmProbe::Broken(format!(
            "KVM crawls: qemu's firmware spent {:.1} s in the host kernel and {:.1} s in \
             the guest, where a working KVM needs a fraction of a second",
            t.kernel.as_secs_f64(),
            t.guest.as_secs_f64()
        )),
    }
}

/// How the probe's firmware fared under KVM.
enum Firmware {
    /// It ran to its end at a working KVM's pace.
    Done,
    /// qemu exited before the firmware's end.
    Died,
    /// No end within [`PROBE_TIMEOUT`].
    Stalled,
    /// It spent this much CPU time, nearly all of it in the host kernel ([`crawls`]).
    Crawled(CpuTime),
}

/// Waits for the firmware's end (`done` says whether qemu's output showed it) while
/// watching qemu's (`pid`) CPU time, for at most [`PROBE_TIMEOUT`].
fn watch_firmware(done: &mpsc::Receiver<bool>, pid: u32) -> Firmware {
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    loop {
        let outcome = done.recv_timeout(PROBE_POLL);
        // the end reached at a crawl counts as crawling too: Linux would not get that far
        if let Some(t) = cpu_time(pid).filter(|t| crawls(*t)) {
            return Firmware::Crawled(t);
        }
        match outcome {
            Ok(true) => return Firmware::Done,
            Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => return Firmware::Died,
            Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() >= deadline => {
                return Firmware::Stalled
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// CPU time a process's threads spent in the host kernel and, of their time, in a KVM guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    /// System time: the host kernel, where KVM handles what the guest cannot run itself.
    pub kernel: Duration,
    /// Guest time: the CPU running the guest's own instructions.
    pub guest: Duration,
}

/// Whether KVM crawls: [`CRAWL_KERNEL_TIME`] or more in the host kernel, with the guest
/// given under a tenth of it. On a working KVM the guest runs on the CPU and the kernel
/// only handles its exits; where the host kernel handles every instruction, the guest's
/// share is nil.
pub fn crawls(t: CpuTime) -> bool {
    t.kernel >= CRAWL_KERNEL_TIME && t.guest * 10 < t.kernel
}

/// The [`CpuTime`] of process `pid`, summed over its threads (`/proc/PID/task/*/stat`).
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ticks = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| stat_kernel_and_guest_ticks(&stat))
        .fold((0, 0), |(k, g), (tk, tg)| (k + tk, g + tg));
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let of = |t: u64| Duration::from_secs_f64(t as f64 / hz as f64);
    Some(CpuTime {
        kernel: of(ticks.0),
        guest: of(ticks.1),
    })
}

/// The system time and guest time (clock ticks) of one `/proc/…/stat` line: fields 15 and
/// 43, counted after the parenthesised command name, which may hold spaces.
fn stat_kernel_and_guest_ticks(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state)
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(15)?, field(43)?))
}

/// The last line of qemu's stderr that is not a warning (about cpu features) or its note
/// on being ended, as a short escaped excerpt.
pub fn last_error_line(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains("warning:") && !l.contains("terminating on"))
        .map(|l| crate::text::excerpt_of(l, 160))
}

/// What identifies one answer: this boot of the host, the qemu binary (path, size, mtime)
/// and the cpu model.
fn cache_key(qemu: &Path, cpu: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let bin = std::fs::metadata(qemu)
        .map(|m| format!("{}:{}", m.size(), m.mtime()))
        .unwrap_or_default();
    // "2": the probe that tells crawling; an answer of the probe before it is asked again
    format!("2 {} {} {bin} {cpu}", boot.trim(), qemu.display())
}

/// `<runtime dir>/kvm-probe-<hash>`, when the runtime directory is usable.
fn cache_file(qemu: &Path, cpu: &str) -> Option<PathBuf> {
    let dir = crate::state::runtime_dir();
    crate::state::ensure_private_dir(&dir)
        .map_err(|e| log::debug!("no cache for the kvm probe: {e:#}"))
        .ok()?;
    let hash = crate::state::fnv1a64(format!("{} {cpu}", qemu.display()).as_bytes());
    Some(dir.join(format!("kvm-probe-{hash:016x}")))
}

fn read_cache(file: &Path, key: &str) -> Option<KvmProbe> {
    let text = std::fs::read_to_string(file).ok()?;
    let (first, answer) = text.split_once('\n')?;
    if first != key {
        return None;
    }
    match answer.trim_end() {
        "works" => Some(KvmProbe::Works),
        a => a
            .strip_prefix("broken: ")
            .map(|why| KvmProbe::Broken(why.to_string())),
    }
}

fn write_cache(file: &Path, key: &str, found: &KvmProbe) -> std::io::Result<()> {
    let answer = match found {
        KvmProbe::Works => "works".to_string(),
        KvmProbe::Broken(why) => format!("broken: {why}"),
        KvmProbe::Unknown => return Ok(()),
    };
    crate::fileops::replace_file(file, format!("{key}\n{answer}\n").as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_key_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kvm-probe-x");
        let broken = KvmProbe::Broken("qemu died under kvm: failed to set MSR 0x10a".into());
        write_cache(&f, "boot1 /usr/bin/qemu 1:2 host", &broken).unwrap();
        assert_eq!(read_cache(&f, "boot1 /usr/bin/qemu 1:2 host"), Some(broken));
        assert_eq!(read_cache(&f, "boot2 /usr/bin/qemu 1:2 host"), None);
        write_cache(&f, "k", &KvmProbe::Works).unwrap();
        assert_eq!(read_cache(&f, "k"), Some(KvmProbe::Works));
    }

    fn ms(kernel: u64, guest: u64) -> CpuTime {
        CpuTime {
            kernel: Duration::from_millis(kernel),
            guest: Duration::from_millis(guest),
        }
    }

    #[test]
    fn crawling_is_kernel_time_without_guest_time() {
        // this machine's SeaBIOS under nested KVM: 3.6 s in the kernel, none in the guest
        assert!(crawls(ms(3600, 0)));
        assert!(crawls(ms(1000, 90)));
        // a working KVM: little kernel time, or most of the time in the guest
        assert!(!crawls(ms(200, 0)));
        assert!(!crawls(ms(999, 0)));
        assert!(!crawls(ms(1500, 150)));
        assert!(!crawls(ms(3000, 9000)));
    }

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        // a qemu vCPU thread's line (fields 1-44), its name holding ") " and spaces
        let mut fields: Vec<String> = (3..=52).map(|n| format!("{}", n * 1000)).collect();
        fields[0] = "R".into();
        let line = format!("17276 (CPU 0/KVM) x) {}", fields.join(" "));
        assert_eq!(stat_kernel_and_guest_ticks(&line), Some((15_000, 43_000)));
        assert_eq!(stat_kernel_and_guest_ticks("12 (short) R 1 2"), None);
    }

    #[test]
    fn own_cpu_time_is_read() {
        // this test process: some kernel time is likely, guest time is none
        let t = cpu_time(std::process::id()).expect("/proc/self is readable");
        assert_eq!(t.guest, Duration::ZERO);
        assert_eq!(cpu_time(u32::MAX), None);
    }

    #[test]
    fn error_line_skips_warnings() {
        let e = "qemu-system-x86_64: warning: host doesn't support requested feature\n\
                 qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0\n";
        assert_eq!(
            last_error_line(e).unwrap(),
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0"
        );
        assert_eq!(last_error_line("x: warning: y\n"), None);
    }
}
