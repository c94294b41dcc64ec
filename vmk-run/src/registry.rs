//! `vmk ps` without a daemon: `run` leaves a small JSON record per running instance in
//! `<runtime dir>/running/`, named by a hash of its pidfile's path; `ps` reads them all,
//! verifies each against its pidfile and /proc, and drops the dead ones.
//!
//! The runtime directory and `running/` in it are checked on every use to be ours and
//! private ([`state::ensure_private_dir`]): another user who made `/tmp/vmk-<uid>` first
//! gets a refusal, never a record. Records are written through random `O_EXCL|O_NOFOLLOW`
//! temporary names and renamed into place ([`vmk_common::fileops::replace_file`]).

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vmk_common::state::{self, RuntimePaths, VmStatus};
use vmk_common::{fileops, layout, text};

use crate::instance::{Endpoints, Instance};
use vmk_common::config::PortForward;

/// One running instance as recorded by `run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The VM's name.
    pub name: String,
    /// The VM directory.
    pub dir: PathBuf,
    /// The image it boots.
    pub image: PathBuf,
    /// Its pidfile.
    pub pidfile: PathBuf,
    /// Its console log.
    pub console_log: PathBuf,
    /// Its QMP socket.
    pub qmp_socket: PathBuf,
    /// Listening address of its ports.
    pub listen: IpAddr,
    /// Serial console port (background runs).
    pub console: Option<u16>,
    /// VNC port.
    pub vnc: Option<u16>,
    /// Forwarded ssh port.
    pub ssh: Option<u16>,
    /// VMK_PORTS host ports (records written before VMK_PORTS have none).
    #[serde(default)]
    pub forwards: Vec<PortForward>,
}

impl Entry {
    /// The record for `inst` listening on `ep`.
    pub fn new(inst: &Instance, ep: &Endpoints) -> Entry {
        Entry {
            name: inst.cfg.display_name(),
            dir: inst.cfg.dir.clone(),
            image: inst.image.clone(),
            pidfile: inst.paths.pidfile.clone(),
            console_log: inst.paths.console_log.clone(),
            qmp_socket: inst.paths.qmp_socket.clone(),
            listen: inst.cfg.listen,
            console: ep.console.map(|e| e.port),
            vnc: ep.vnc.map(|e| e.port),
            ssh: ep.ssh.map(|e| e.port),
            forwards: ep.forwards.iter().map(|(_, f)| *f).collect(),
        }
    }

    fn paths(&self) -> RuntimePaths {
        RuntimePaths {
            image: self.image.clone(),
            pidfile: self.pidfile.clone(),
            console_log: self.console_log.clone(),
            qmp_socket: self.qmp_socket.clone(),
        }
    }
}

/// A verified running instance.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    /// qemu's pid.
    pub pid: u32,
    /// What `run` recorded.
    #[serde(flatten)]
    pub entry: Entry,
}

/// The registry directory: `<runtime dir>/running` (`VMK_RUNNING_DIR` overrides it, for tests).
pub fn dir() -> PathBuf {
    match std::env::var_os("VMK_RUNNING_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => state::runtime_dir().join("running"),
    }
}

/// The registry directory, created when missing, after checking that it and the runtime
/// directory that holds it are ours and private.
fn private_dir() -> Result<PathBuf> {
    let d = dir();
    if let Some(runtime) = runtime_parent(&d) {
        state::ensure_private_dir(&runtime)?;
    }
    state::ensure_private_dir(&d)?;
    Ok(d)
}

/// The runtime directory that holds the registry `d`, when it is the default one (not
/// the `VMK_RUNNING_DIR` of a test).
fn runtime_parent(d: &Path) -> Option<PathBuf> {
    let runtime = state::runtime_dir();
    (d.parent() == Some(runtime.as_path())).then_some(runtime)
}

/// The registry directory when it exists (checked as in [`private_dir`]); `None` when it
/// does not, so that reading creates nothing.
fn existing_dir() -> Result<Option<PathBuf>> {
    let d = dir();
    match fs::symlink_metadata(&d) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // a missing registry is fine, a foreign runtime directory still is not
            if let Some(runtime) = runtime_parent(&d).filter(|r| r.exists()) {
                state::check_private_dir(&runtime)?;
            }
            Ok(None)
        }
        _ => private_dir().map(Some),
    }
}

fn record_path(dir: &Path, pidfile: &Path) -> PathBuf {
    let hash = state::fnv1a64(pidfile.as_os_str().as_bytes());
    dir.join(format!("{hash:016x}.json"))
}

/// Records a started instance.
pub fn add(entry: &Entry) -> Result<()> {
    let d = private_dir()?;
    let path = record_path(&d, &entry.pidfile);
    let json = serde_json::to_vec_pretty(entry)?;
    fileops::replace_file(&path, &json, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Forgets the instance whose pidfile is `pidfile`.
pub fn remove(pidfile: &Path) -> Result<()> {
    let Some(d) = existing_dir()? else {
        return Ok(());
    };
    let path = record_path(&d, pidfile);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Every recorded instance that still runs, sorted by directory; records of instances
/// that are gone are removed.
pub fn list() -> Result<Vec<Running>> {
    let Some(d) = existing_dir()? else {
        return Ok(Vec::new());
    };
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        // records only: never a temporary file, a symlink or anything else planted here
        let is_record = path.extension().and_then(|x| x.to_str()) == Some("json")
            && e.file_type().is_ok_and(|t| t.is_file());
        if !is_record {
            continue;
        }
        let entry: Option<Entry> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(entry) = entry else {
            log::debug!("ignoring unreadable record {}", path.display());
            continue;
        };
        match state::status(&entry.paths()) {
            Ok(VmStatus::Running { pid }) => out.push(Running { pid, entry }),
            Ok(_) => {
                log::debug!("dropping record of stopped VM {}", entry.dir.display());
                let _ = fs::remove_file(&path);
            }
            Err(err) => log::warn!("{}: {err:#}", entry.pidfile.display()),
        }
    }
    out.sort_by(|a, b| (&a.entry.dir, &a.entry.image).cmp(&(&b.entry.dir, &b.entry.image)));
    Ok(out)
}

/// The directory of a running VM that uses TCP `port`, if a record says so.
pub fn who_uses_port(port: u16) -> Option<PathBuf> {
    who_uses(port, false).map(|(dir, _)| dir)
}

/// The directory and name of a running VM that uses `port` (UDP when `udp`), and what for
/// (`ssh`, `VMK_PORTS 8080:80`…), if a record says so.
pub fn who_uses(port: u16, udp: bool) -> Option<(PathBuf, String)> {
    list().ok()?.into_iter().find_map(|r| {
        let e = &r.entry;
        let fixed = [
            ("serial console", e.console),
            ("VNC", e.vnc),
            ("ssh", e.ssh),
        ];
        let what = if udp {
            None
        } else {
            fixed
                .iter()
                .find(|(_, p)| *p == Some(port))
                .map(|(w, _)| w.to_string())
        };
        let what = what.or_else(|| {
            e.forwards
                .iter()
                .find(|f| f.host == port && f.udp == udp)
                .map(|f| format!("VMK_PORTS {f}"))
        })?;
        Some((e.dir.clone(), format!("{} ({what})", e.name)))
    })
}

/// `ps` as a table. Names, directories and image names are shown escaped
/// ([`text::escaped_line`]): they come from configs and directory names.
pub fn table(running: &[Running]) -> Vec<String> {
    let port = |p: Option<u16>| p.map_or("-".to_string(), |p| p.to_string());
    let mut lines = vec![format!(
        "{:<16} {:>7} {:>7} {:>5} {:>6}  DIR",
        "NAME", "PID", "CONSOLE", "VNC", "SSH"
    )];
    for r in running {
        let e = &r.entry;
        let image = e
            .image
            .file_name()
            .map(|n| text::escaped_line(&n.to_string_lossy()).into_owned())
            .unwrap_or_default();
        let vnc = e.vnc.and_then(layout::vnc_display).map(|d| format!(":{d}"));
        lines.push(format!(
            "{:<16} {:>7} {:>7} {:>5} {:>6}  {} ({image})",
            text::escaped_line(&e.name),
            r.pid,
            port(e.console),
            vnc.unwrap_or_else(|| "-".into()),
            port(e.ssh),
            text::escaped_line(&e.dir.display().to_string())
        ));
    }
    lines
}

/// The VM directories handed to libvirt (`vmk libvirt define`), as a table after `ps`'s:
/// domain, state, connection, directory (escaped like the rest).
pub fn libvirt_table(domains: &[vmk_common::libvirt::Domain]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<16} {:<10} {}  DIR",
        "LIBVIRT DOMAIN", "STATE", "URI"
    )];
    for d in domains {
        lines.push(format!(
            "{:<16} {:<10} {}  {}",
            text::escaped_line(&d.record.domain),
            text::escaped_line(&d.state.to_string()),
            text::escaped_line(&d.record.uri),
            text::escaped_line(&d.record.dir.display().to_string())
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_shows_hostile_names_escaped() {
        let dir = PathBuf::from("/vms/d\x1b[2Jir");
        let image = dir.join("disk\x07.img");
        let running = Running {
            pid: 7,
            entry: Entry {
                name: "vm\x1b]0;owned\x07".into(),
                dir: dir.clone(),
                image: image.clone(),
                pidfile: dir.join("p"),
                console_log: dir.join("l"),
                qmp_socket: dir.join("q"),
                listen: IpAddr::from([127, 0, 0, 1]),
                console: None,
                vnc: Some(5901),
                ssh: Some(2201),
                forwards: Vec::new(),
            },
        };
        let lines = table(&[running]);
        let row = &lines[1];
        assert!(!row.contains('\x1b') && !row.contains('\x07'), "{row}");
        assert!(row.starts_with("vm\\x1b]0;owned\\x07 "), "{row}");
        assert!(row.ends_with("/vms/d\\x1b[2Jir (disk\\x07.img)"), "{row}");
    }
}
