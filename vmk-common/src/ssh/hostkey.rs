//! The guest's ssh host key: learned on first contact with a VM that vmk itself runs, and
//! checked on every connection after.
//!
//! The key lives in the VM directory's own known_hosts file ([`KNOWN_HOSTS_FILE`]) under the
//! name [`HOST_KEY_ALIAS`], not under `[127.0.0.1]:PORT`: forwarded ports are reused by other
//! VMs, and the file already says which VM the key belongs to. ssh may add a key it has not
//! seen (`StrictHostKeyChecking=accept-new`) only while this VM's qemu runs according to
//! vmk's pidfile (of disk0 or of the snapshot VM, whose disk is a copy with the same host
//! keys): then the forwarded port is that qemu's, and whatever answers is the guest. When
//! no qemu of this VM runs, whoever holds the port could be anyone (another local user who
//! bound it, say, to collect the password `scpkeyput` asks for), so ssh checks strictly
//! (`yes`) and an unknown key is refused like a changed one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::VmConfig;
use crate::layout::{self, KNOWN_HOSTS_FILE};
use crate::state::{self, RuntimePaths, VmStatus};
use anyhow::{anyhow, Context, Result};

use crate::ssh::target::Target;

/// The name the guest's host keys have in the VM's known_hosts file.
pub const HOST_KEY_ALIAS: &str = "vmk-vm";

/// How ssh treats the guest's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeys {
    /// The VM's known_hosts file.
    pub file: PathBuf,
    /// True when ssh may learn a key it does not know yet (the VM runs under vmk).
    pub learn: bool,
}

impl HostKeys {
    /// The policy for the VM configured by `cfg`: learn only while its qemu runs.
    pub fn for_vm(cfg: &VmConfig) -> Result<HostKeys> {
        Ok(HostKeys {
            file: cfg.dir.join(KNOWN_HOSTS_FILE),
            learn: vm_is_running(cfg)?,
        })
    }

    /// The `-o` values for ssh (each one goes after a `-o`).
    pub fn options(&self) -> Vec<String> {
        vec![
            format!(
                "StrictHostKeyChecking={}",
                if self.learn { "accept-new" } else { "yes" }
            ),
            format!("UserKnownHostsFile={}", config_path(&self.file)),
            "GlobalKnownHostsFile=/dev/null".into(),
            format!("HostKeyAlias={HOST_KEY_ALIAS}"),
            "CheckHostIP=no".into(),
            "UpdateHostKeys=no".into(),
        ]
    }

    /// True when the known_hosts file holds a key for [`HOST_KEY_ALIAS`].
    pub fn known(&self) -> Result<bool> {
        let text = match fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.file.display())),
        };
        Ok(text.lines().any(|l| {
            let mut w = l.split_whitespace();
            let first = w.next().unwrap_or("");
            let hosts = if first.starts_with('@') {
                w.next().unwrap_or("")
            } else {
                first
            };
            hosts.split(',').any(|h| h == HOST_KEY_ALIAS)
        }))
    }
}

/// True when vmk's pidfile of disk0, or of the snapshot VM, names a live qemu of it.
pub fn vm_is_running(cfg: &VmConfig) -> Result<bool> {
    let Some(disk0) = &cfg.disk0_path else {
        return Ok(false);
    };
    let mut images = vec![disk0.clone()];
    if disk0.file_name().is_some() {
        images.push(layout::snap_image(disk0));
    }
    for image in images {
        let paths = RuntimePaths::new(&cfg.dir, &image)?;
        if let VmStatus::Running { pid } = state::status(&paths)? {
            log::debug!(
                "{} runs (pid {pid}): ssh may learn the guest's host key",
                image.display()
            );
            return Ok(true);
        }
    }
    Ok(false)
}

/// A path as the value of an ssh option: `%` doubled (ssh expands `%` tokens in file
/// options), and in double quotes with `"` and `\` escaped when it has blanks or quotes
/// (ssh splits unquoted values at blanks: UserKnownHostsFile takes a list).
pub fn config_path(path: &Path) -> String {
    let s = path.to_string_lossy().replace('%', "%%");
    if s.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

/// Why ssh refused the guest's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The guest offered another key than the one recorded.
    Changed,
    /// No key is recorded, and ssh was not allowed to learn one.
    Unknown,
}

/// What ssh's stderr says about the host key, when its status was 255 (ssh's own failure).
pub fn refusal(status: Option<i32>, stderr: &[u8]) -> Option<Refusal> {
    if status != Some(255) {
        return None;
    }
    let text = String::from_utf8_lossy(stderr);
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || text.contains("Host key for ") && text.contains(" has changed")
    {
        Some(Refusal::Changed)
    } else if text.contains("Host key verification failed") {
        Some(Refusal::Unknown)
    } else {
        None
    }
}

/// The error that says what happened to the host key and what to do.
pub fn explain(r: Refusal, hk: &HostKeys, target: &Target) -> anyhow::Error {
    let file = hk.file.display();
    match r {
        Refusal::Changed => anyhow!(
            "the guest's host key changed since vmk first saw it ({file}): if you reinstalled \
             the guest or gave it new host keys, remove that file and connect again while the \
             VM runs; otherwise something else answers at {target}: do not log in there"
        ),
        Refusal::Unknown => anyhow!(
            "no host key of this VM is known yet ({file}), and vmk learns one only while it \
             runs the VM itself (no qemu of this VM runs per its pidfile), so it does not \
             trust whoever answers at {target}: start the VM with `vmk run` or `vmk snap run` \
             and connect again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_only_while_running_and_checks_under_the_alias() {
        let hk = HostKeys {
            file: PathBuf::from("/vm/vm-known_hosts"),
            learn: false,
        };
        let o = hk.options();
        assert_eq!(o[0], "StrictHostKeyChecking=yes");
        assert!(o.contains(&"UserKnownHostsFile=/vm/vm-known_hosts".to_string()));
        assert!(o.contains(&"HostKeyAlias=vmk-vm".to_string()));
        assert!(o.contains(&"GlobalKnownHostsFile=/dev/null".to_string()));
        let o = HostKeys { learn: true, ..hk }.options();
        assert_eq!(o[0], "StrictHostKeyChecking=accept-new");
    }

    #[test]
    fn odd_paths_are_quoted_for_ssh() {
        assert_eq!(config_path(Path::new("/a/b")), "/a/b");
        assert_eq!(config_path(Path::new("/a/50%")), "/a/50%%");
        assert_eq!(
            config_path(Path::new("/my vms/a\"b\\c")),
            "\"/my vms/a\\\"b\\\\c\""
        );
    }

    #[test]
    fn known_finds_the_alias_only() {
        let d = tempfile::tempdir().unwrap();
        let hk = HostKeys {
            file: d.path().join("kh"),
            learn: false,
        };
        assert!(!hk.known().unwrap());
        fs::write(&hk.file, "[127.0.0.1]:10021 ssh-ed25519 AAAA\n").unwrap();
        assert!(!hk.known().unwrap());
        fs::write(&hk.file, "other,vmk-vm ssh-ed25519 AAAA\n").unwrap();
        assert!(hk.known().unwrap());
    }

    #[test]
    fn refusals_from_ssh_stderr() {
        let changed = b"@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            Host key for vmk-vm has changed and you have requested strict checking.\n\
            Host key verification failed.\n";
        assert_eq!(refusal(Some(255), changed), Some(Refusal::Changed));
        let unknown =
            b"No ED25519 host key is known for vmk-vm and you have requested strict checking.\n\
            Host key verification failed.\n";
        assert_eq!(refusal(Some(255), unknown), Some(Refusal::Unknown));
        assert_eq!(refusal(Some(1), unknown), None);
        assert_eq!(refusal(Some(255), b"Connection refused"), None);
        let t = Target {
            host: "127.0.0.1".into(),
            port: 10021,
        };
        let hk = HostKeys {
            file: PathBuf::from("/vm/vm-known_hosts"),
            learn: false,
        };
        let e = explain(Refusal::Changed, &hk, &t).to_string();
        assert!(
            e.starts_with(
                "the guest's host key changed since vmk first saw it (/vm/vm-known_hosts)"
            ),
            "{e}"
        );
        assert!(e.contains("remove that file"), "{e}");
    }
}
