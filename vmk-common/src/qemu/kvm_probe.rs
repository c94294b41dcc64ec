//! Whether KVM really runs guests here, not only whether /dev/kvm opens: under nested
//! virtualisation (many CI machines) /dev/kvm opens, and then qemu aborts ("failed to set
//! MSR 0x10a") or the guest stalls without a word. `VMK_ACCEL=auto` asks this probe before
//! it chooses kvm, so that a newcomer who never sets VMK_ACCEL gets a running VM there.
//!
//! The probe boots qemu's own firmware (SeaBIOS on x86) under KVM with no disk: a working
//! KVM reaches "No bootable device" in a fraction of a second; a broken one dies or stalls
//! before. The answer is kept per boot of the host and per qemu binary in the private
//! runtime directory, so only the first start after a reboot pays for it (on a broken host:
//! [`PROBE_TIMEOUT`]).

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
    let outcome = rx.recv_timeout(PROBE_TIMEOUT);
    // our own child: end it whatever it did
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let said = last_error_line(&stderr);
    match outcome {
        Ok(true) => KvmProbe::Works,
        Ok(false) => KvmProbe::Broken(match said {
            Some(l) => format!("qemu died under kvm: {l}"),
            None => "qemu died under kvm before its firmware ran".into(),
        }),
        Err(_) => KvmProbe::Broken(format!(
            "qemu's firmware stalled under kvm (no progress in {} s)",
            PROBE_TIMEOUT.as_secs()
        )),
    }
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
    format!("{} {} {bin} {cpu}", boot.trim(), qemu.display())
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
