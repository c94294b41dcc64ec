//! What vmk knows about VMs handed to libvirt (`vmk libvirt define`), shared by the tools
//! that must answer for them without depending on vmk-libvirt: `vmk info` and `vmk ps`
//! show the domain and its state, `vmk run` refuses to boot a disk0 that a running domain
//! uses.
//!
//! Decisions:
//! - `vmk libvirt define` leaves a small JSON record per VM directory in
//!   `<runtime dir>/libvirt/` (named by a hash of the directory), and `undefine` removes it.
//!   Without a record nothing is asked of libvirt: a machine without libvirt, or a VM never
//!   handed to it, costs one failed `stat`, no `virsh` and no delay.
//! - With a record, the state is `virsh domstate` on the recorded connection, bounded by a
//!   timeout ([`QUERY_TIMEOUT`]) so that a host that does not answer cannot hang `vmk ps`.
//! - Only domains defined through vmk are known: a domain someone defined by hand on the
//!   same image is not (vmk does not read every domain of every connection).

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{fileops, state};

/// How long a state query may take before it is given up.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM directory handed to libvirt, as `vmk libvirt define` recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The VM directory.
    pub dir: PathBuf,
    /// The domain's name.
    pub domain: String,
    /// The connection URI, as `virsh uri` named it.
    pub uri: String,
    /// disk0 as the domain uses it on this machine; `None` when it was uploaded to another
    /// host's storage pool.
    pub local_disk0: Option<PathBuf>,
    /// The volumes uploaded into a storage pool of the connection: (pool, volume).
    #[serde(default)]
    pub volumes: Vec<(String, String)>,
}

/// A recorded domain with its state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The record.
    pub record: Record,
    /// `virsh domstate`'s answer (`running`, `shut off`, `paused`…), or why there is none.
    pub state: DomainState,
}

/// What libvirt says about a recorded domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    /// `virsh domstate`'s answer.
    Known(String),
    /// No answer: why.
    Unknown(String),
}

impl DomainState {
    /// Whether the domain runs (or is paused, which holds its disks as well).
    pub fn is_active(&self) -> bool {
        matches!(self, DomainState::Known(s) if s != "shut off" && s != "crashed")
    }
}

impl std::fmt::Display for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainState::Known(s) => f.write_str(s),
            DomainState::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// The record directory: `<runtime dir>/libvirt` (`VMK_LIBVIRT_DIR` overrides it, for tests).
pub fn records_dir() -> PathBuf {
    match std::env::var_os("VMK_LIBVIRT_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => state::runtime_dir().join("libvirt"),
    }
}

fn record_path(records: &Path, vm_dir: &Path) -> PathBuf {
    let hash = state::fnv1a64(vm_dir.as_os_str().as_bytes());
    records.join(format!("{hash:016x}.json"))
}

/// Records that `rec.dir` is now the domain `rec.domain`.
pub fn write_record(rec: &Record) -> Result<()> {
    let d = records_dir();
    if d.parent() == Some(state::runtime_dir().as_path()) {
        state::ensure_private_dir(&state::runtime_dir())?;
    }
    state::ensure_private_dir(&d)?;
    let path = record_path(&d, &rec.dir);
    fileops::replace_file(&path, &serde_json::to_vec_pretty(rec)?, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Forgets the domain of `vm_dir`; false when there was none.
pub fn remove_record(vm_dir: &Path) -> Result<bool> {
    let path = record_path(&records_dir(), vm_dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The record of `vm_dir`, if it was handed to libvirt.
pub fn record_for(vm_dir: &Path) -> Result<Option<Record>> {
    read_record(&record_path(&records_dir(), vm_dir))
}

fn read_record(path: &Path) -> Result<Option<Record>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Every record, in no particular order (none when the directory does not exist).
pub fn all_records() -> Result<Vec<Record>> {
    let d = records_dir();
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            match read_record(&path) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => log::warn!("{e:#}"),
            }
        }
    }
    Ok(out)
}

/// The domain of `vm_dir` and its state, if it was handed to libvirt.
pub fn domain_for(vm_dir: &Path) -> Result<Option<Domain>> {
    Ok(record_for(vm_dir)?.map(with_state))
}

/// A record with its state asked of libvirt now.
pub fn with_state(record: Record) -> Domain {
    let state = match virsh_query(Some(&record.uri), &["domstate", &record.domain]) {
        Ok(s) => DomainState::Known(s.trim().to_string()),
        Err(e) => DomainState::Unknown(format!("{e:#}")),
    };
    Domain { record, state }
}

/// The running (or paused) domain whose disk0 is `image` on this machine, if any.
pub fn active_domain_using(vm_dir: &Path, image: &Path) -> Result<Option<Domain>> {
    let Some(rec) = record_for(vm_dir)? else {
        return Ok(None);
    };
    if rec.local_disk0.as_deref() != Some(image) {
        return Ok(None);
    }
    let d = with_state(rec);
    Ok(d.state.is_active().then_some(d))
}

/// `virsh [-c URI] ARGS…` (nothing run yet).
pub fn virsh(uri: Option<&str>) -> Command {
    let mut c = crate::host::command("virsh");
    c.arg("-q");
    if let Some(uri) = uri {
        c.args(["-c", uri]);
    }
    c
}

/// Runs `virsh [-c URI] ARGS…` for a short answer: its stdout, or an error with its
/// stderr. Gives up after [`QUERY_TIMEOUT`] (killing the virsh it started).
pub fn virsh_query(uri: Option<&str>, args: &[&str]) -> Result<String> {
    virsh_output(uri, args, Some(QUERY_TIMEOUT))
}

/// Runs `virsh [-c URI] ARGS…`: its stdout, or an error with its stderr; gives up after
/// `timeout` when there is one (killing the virsh it started).
pub fn virsh_output(uri: Option<&str>, args: &[&str], timeout: Option<Duration>) -> Result<String> {
    if crate::host::which("virsh").is_none() {
        bail!("virsh is not installed (package libvirt-clients)");
    }
    let mut child = virsh(uri)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running virsh")?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(timeout) = timeout.filter(|_| deadline.is_some_and(|d| Instant::now() > d)) {
            crate::process::terminate(
                &mut child,
                crate::process::Scope::Child,
                Duration::from_secs(1),
            );
            bail!(
                "virsh {} did not answer within {}",
                args.join(" "),
                crate::human::duration(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !status.success() {
        bail!("{}", virsh_error(&err));
    }
    Ok(out)
}

/// virsh's error message without its `error: ` prefixes, on one line.
pub fn virsh_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("error: ").trim())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "virsh failed without a message".into()
    } else {
        lines.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_that_hold_the_disk() {
        assert!(DomainState::Known("running".into()).is_active());
        assert!(DomainState::Known("paused".into()).is_active());
        assert!(!DomainState::Known("shut off".into()).is_active());
        assert!(!DomainState::Unknown("no answer".into()).is_active());
    }

    #[test]
    fn virsh_errors_on_one_line() {
        assert_eq!(
            virsh_error("error: failed to get domain 'x'\nerror: Domain not found\n"),
            "failed to get domain 'x': Domain not found"
        );
    }
}
