//! The ssh client side of vmk, shared by `vmk ssh`/`waitssh` (vmk-sshkey) and `vmk run
//! --exec`/`vmk snap run --exec` (vmk-run): the ssh, scp and sshfs command lines for this VM
//! (its own key, no user ssh config, the guest's host key checked against the VM's own
//! known_hosts file, see [`hostkey`]), where its sshd is ([`target`]), waiting for it
//! ([`wait`]) and running ssh with its errors explained ([`watch`]).

pub mod hostkey;
pub mod target;
pub mod wait;
pub mod watch;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ssh::hostkey::{config_path, HostKeys};
use crate::ssh::target::Target;

/// ssh's ConnectTimeout (seconds; it covers the banner exchange too). Generous: a guest
/// under software emulation on a busy host can take seconds to fork sshd.
pub const CONNECT_TIMEOUT: u32 = 30;

/// The VM's private key file in its directory.
pub fn key_file(dir: &Path) -> PathBuf {
    dir.join(crate::layout::KEY_FILE)
}

/// How a command authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// With vm-key only, never asking anything (scripts, waitssh).
    KeyBatch,
    /// With vm-key; ssh may still ask (e.g. a passphrase) on a terminal.
    Key,
    /// With a password, asked by ssh (scpkeyput).
    Password,
}

/// `-o` options shared by ssh, scp and sshfs (without `-p`/`-P`, which differ).
pub fn common_options(
    key: &Path,
    auth: Auth,
    connect_timeout: Option<u32>,
    host_keys: &HostKeys,
) -> Vec<OsString> {
    let mut o: Vec<OsString> = vec!["-F".into(), "/dev/null".into()];
    let mut opt = |s: String| {
        o.push("-o".into());
        o.push(s.into());
    };
    match auth {
        Auth::KeyBatch | Auth::Key => {
            opt(format!("IdentityFile={}", config_path(key)));
            opt("IdentitiesOnly=yes".into());
        }
        Auth::Password => {
            opt("PubkeyAuthentication=no".into());
            opt("PreferredAuthentications=keyboard-interactive,password".into());
        }
    }
    for o in host_keys.options() {
        opt(o);
    }
    opt("LogLevel=ERROR".into());
    opt(format!(
        "BatchMode={}",
        if auth == Auth::KeyBatch { "yes" } else { "no" }
    ));
    if let Some(t) = connect_timeout {
        opt(format!("ConnectTimeout={t}"));
    }
    o
}

/// `ssh … -p PORT root@HOST [-t] [-- CMD…]`.
pub fn ssh_command(
    key: &Path,
    target: &Target,
    host_keys: &HostKeys,
    auth: Auth,
    connect_timeout: Option<u32>,
    tty: bool,
    remote: &[String],
) -> Command {
    let mut c = Command::new("ssh");
    c.args(common_options(key, auth, connect_timeout, host_keys));
    c.arg("-p").arg(target.port.to_string());
    if tty {
        c.arg("-t");
    }
    c.arg(target.login());
    if !remote.is_empty() {
        c.arg("--");
        c.args(remote);
    }
    c
}

/// `scp … -P PORT [-r] FILES… root@HOST:GUESTPATH`.
pub fn scp_command(
    key: &Path,
    target: &Target,
    host_keys: &HostKeys,
    recursive: bool,
    legacy: bool,
    files: &[PathBuf],
    guest_path: &str,
) -> Command {
    let mut c = Command::new("scp");
    c.args(common_options(
        key,
        Auth::Key,
        Some(CONNECT_TIMEOUT),
        host_keys,
    ));
    c.arg("-P").arg(target.port.to_string());
    if recursive {
        c.arg("-r");
    }
    if legacy {
        c.arg("-O");
    }
    c.arg("--");
    c.args(files);
    c.arg(target.remote_path(guest_path));
    c
}

/// `sshfs root@HOST:/ DIR -p PORT -F /dev/null -o …`.
pub fn sshfs_command(
    key: &Path,
    target: &Target,
    host_keys: &HostKeys,
    guest_path: &str,
    dir: &Path,
) -> Command {
    let mut c = Command::new("sshfs");
    c.arg(target.remote_path(guest_path));
    c.arg(dir);
    c.arg("-p").arg(target.port.to_string());
    // sshfs takes ssh's -F itself and passes the ssh options it knows on to ssh; FUSE
    // splits -o values at commas first, so those (and backslashes) are escaped for it.
    let mut next_is_value = false;
    for a in common_options(key, Auth::KeyBatch, Some(CONNECT_TIMEOUT), host_keys) {
        if next_is_value {
            let v = a
                .to_string_lossy()
                .replace('\\', "\\\\")
                .replace(',', "\\,");
            c.arg(v);
        } else {
            c.arg(&a);
        }
        next_is_value = a == "-o";
    }
    c.args(["-o", "reconnect"]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::command_line;

    fn t() -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 10021,
        }
    }

    fn hk() -> HostKeys {
        HostKeys {
            file: PathBuf::from("/vm/vm-known_hosts"),
            learn: false,
        }
    }

    fn argv(c: &Command) -> String {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn ssh_has_no_user_config_and_own_key_only() {
        let c = ssh_command(
            Path::new("/vm/vm-key"),
            &t(),
            &hk(),
            Auth::KeyBatch,
            Some(2),
            false,
            &["exit 7".into()],
        );
        let a = argv(&c);
        assert!(
            a.starts_with("-F /dev/null -o IdentityFile=/vm/vm-key -o IdentitiesOnly=yes"),
            "{a}"
        );
        assert!(
            a.contains(
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/vm/vm-known_hosts \
                 -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=vmk-vm -o CheckHostIP=no"
            ),
            "{a}"
        );
        assert!(!a.contains("StrictHostKeyChecking=no"), "{a}");
        assert!(
            a.ends_with("-o BatchMode=yes -o ConnectTimeout=2 -p 10021 root@127.0.0.1 -- exit 7"),
            "{a}"
        );
        assert!(command_line(&c).ends_with("-- 'exit 7'"));
    }

    #[test]
    fn interactive_ssh_asks_for_a_tty_and_sends_no_command() {
        let c = ssh_command(Path::new("k"), &t(), &hk(), Auth::Key, None, true, &[]);
        let a = argv(&c);
        assert!(a.ends_with("-p 10021 -t root@127.0.0.1"), "{a}");
        assert!(a.contains("BatchMode=no"));
    }

    #[test]
    fn scp_targets_the_guest_path() {
        let c = scp_command(
            Path::new("k"),
            &t(),
            &hk(),
            true,
            false,
            &[PathBuf::from("a b"), PathBuf::from("c")],
            "/root/",
        );
        assert!(argv(&c).ends_with("-P 10021 -r -- a b c root@127.0.0.1:/root/"));
        assert!(command_line(&c).ends_with("-- 'a b' c root@127.0.0.1:/root/"));
    }

    #[test]
    fn password_auth_does_not_offer_keys() {
        let o = common_options(Path::new("k"), Auth::Password, None, &hk());
        let s: Vec<String> = o.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        assert!(s.contains(&"PubkeyAuthentication=no".to_string()));
        assert!(!s.iter().any(|x| x.starts_with("IdentityFile")));
        assert!(s.contains(&"StrictHostKeyChecking=yes".to_string()));
    }

    #[test]
    fn sshfs_escapes_commas_for_fuse_and_checks_host_keys() {
        let keys = HostKeys {
            file: PathBuf::from("/my vms/a,b/vm-known_hosts"),
            learn: true,
        };
        let c = sshfs_command(
            Path::new("/my vms/a,b/vm-key"),
            &t(),
            &keys,
            "/",
            Path::new("/mnt"),
        );
        let a: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            a.contains(&"UserKnownHostsFile=\"/my vms/a\\,b/vm-known_hosts\"".to_string()),
            "{a:?}"
        );
        assert!(
            a.contains(&"IdentityFile=\"/my vms/a\\,b/vm-key\"".to_string()),
            "{a:?}"
        );
        assert!(
            a.contains(&"StrictHostKeyChecking=accept-new".to_string()),
            "{a:?}"
        );
    }
}
