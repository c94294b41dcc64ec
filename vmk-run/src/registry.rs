//! `vmk ps` without a daemon: `run` leaves a small JSON record per running instance in
//! `<runtime dir>/running/`, named by a hash of its pidfile's path; `ps` reads them all,
//! verifies each against its pidfile and /proc, and drops the dead ones.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vmk_common::layout;
use vmk_common::state::{self, RuntimePaths, VmStatus};

use crate::instance::{Endpoints, Instance};

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

fn record_path(pidfile: &Path) -> PathBuf {
    let hash = state::fnv1a64(pidfile.as_os_str().as_bytes());
    dir().join(format!("{hash:016x}.json"))
}

/// Records a started instance.
pub fn add(entry: &Entry) -> Result<()> {
    let d = dir();
    fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let path = record_path(&entry.pidfile);
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(entry)?;
    fs::write(&tmp, json)
        .and_then(|()| fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Forgets the instance whose pidfile is `pidfile`.
pub fn remove(pidfile: &Path) -> Result<()> {
    let path = record_path(pidfile);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Every recorded instance that still runs, sorted by directory; records of instances
/// that are gone are removed.
pub fn list() -> Result<Vec<Running>> {
    let d = dir();
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
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
    list().ok()?.into_iter().find_map(|r| {
        let e = &r.entry;
        [e.console, e.vnc, e.ssh]
            .contains(&Some(port))
            .then(|| e.dir.clone())
    })
}

/// `ps` as a table.
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
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let vnc = e.vnc.and_then(layout::vnc_display).map(|d| format!(":{d}"));
        lines.push(format!(
            "{:<16} {:>7} {:>7} {:>5} {:>6}  {} ({image})",
            e.name,
            r.pid,
            port(e.console),
            vnc.unwrap_or_else(|| "-".into()),
            port(e.ssh),
            e.dir.display()
        ));
    }
    lines
}
