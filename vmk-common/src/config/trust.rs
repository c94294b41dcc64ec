//! Which config files and VM directories vmk trusts: those of the user who runs it (or of
//! root), that no other user can change. A config names the programs vmk runs (VMK_QEMU)
//! and the files it writes, and a VM directory holds the files qemu opens: another user
//! who can change either could make vmk, often run as root, run or overwrite anything.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::ConfigError;

/// What is checked, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// A config file that any user may own for themselves (`~/.vmkrc`, `vmkrc`, `vm-config`).
    ConfigFile,
    /// The system-wide config: root's only.
    SystemFile,
    /// A VM directory.
    VmDir,
}

impl Trusted {
    fn what(self) -> &'static str {
        match self {
            Trusted::ConfigFile => "config file",
            Trusted::SystemFile => "system-wide config file",
            Trusted::VmDir => "VM directory",
        }
    }
}

/// The name of user `uid` from /etc/passwd, if it has one there.
pub fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// Whether `gid` is the user private group of `owner`: the owner's primary group, named as
/// the owner, with no other member listed. Then a group-writable file (umask 002, the
/// default on many systems for users with such groups) is writable by its owner only.
pub(crate) fn is_private_group(owner: u32, gid: u32) -> bool {
    let (Ok(passwd), Ok(group)) = (
        std::fs::read_to_string("/etc/passwd"),
        std::fs::read_to_string("/etc/group"),
    ) else {
        return false;
    };
    private_group_in(&passwd, &group, owner, gid)
}

/// [`is_private_group`] on the text of /etc/passwd and /etc/group.
fn private_group_in(passwd: &str, group: &str, owner: u32, gid: u32) -> bool {
    let user = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(owner)).then(|| (f[0], f[3].parse::<u32>().ok()))
    });
    let Some((name, Some(primary))) = user else {
        return false;
    };
    primary == gid
        && group.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() >= 4 && f[2].parse() == Ok(gid) && f[0] == name && f[3].trim().is_empty()
        })
}

/// `uid 65534 (nobody)`, or `uid N` for a user without a name.
fn who(uid: u32) -> String {
    match user_name(uid) {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// Checks that `meta` (of `path`, shown as `display`) belongs to the user `me` or to root
/// (to root only for [`Trusted::SystemFile`]) and is not writable by group or others.
pub fn check(
    path: &Path,
    display: &str,
    meta: &Metadata,
    kind: Trusted,
    me: u32,
) -> Result<(), ConfigError> {
    let owner = meta.uid();
    let mode = meta.mode() & 0o7777;
    let quoted = crate::shell::quote(path.as_os_str());
    let owner_ok = owner == 0 || (owner == me && kind != Trusted::SystemFile);
    let what = kind.what();
    if !owner_ok {
        let wanted = match kind {
            Trusted::SystemFile => "root".to_string(),
            _ if me == 0 => "root".to_string(),
            _ => format!("{} or root", who(me)),
        };
        let new_owner = match kind {
            Trusted::SystemFile => "root".to_string(),
            _ => user_name(me).unwrap_or_else(|| me.to_string()),
        };
        return Err(ConfigError::file(
            display,
            format!(
                "refusing this {what}: it belongs to {} (mode {mode:04o}), and vmk (running as \
                 {}) trusts only a {what} of {wanted}, as another user could make it run or \
                 overwrite anything; if its content is safe, take it over with \
                 `chown {new_owner} {quoted}`{}",
                who(owner),
                who(me),
                match kind {
                    Trusted::SystemFile => String::new(),
                    _ => format!(", or run vmk as {}", who(owner)),
                },
            ),
        ));
    }
    let group_may_write = mode & 0o020 != 0 && !is_private_group(owner, meta.gid());
    if mode & 0o002 != 0 || group_may_write {
        return Err(ConfigError::file(
            display,
            format!(
                "refusing this {what}: it is writable by {} (owner {}, mode {mode:04o}), so \
                 another user could change it; make it writable by its owner only: \
                 `chmod go-w {quoted}`",
                match mode & 0o022 {
                    0o020 => "its group",
                    0o002 => "every user",
                    _ => "its group and every user",
                },
                who(owner),
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nann:x:1000:1000::/home/ann:/bin/sh\n\
                          bob:x:1001:100::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nann:x:1000:\nusers:x:100:bob,ann\nteam:x:1002:ann\n";

    #[test]
    fn only_a_user_private_group_may_write() {
        assert!(private_group_in(PASSWD, GROUP, 1000, 1000));
        assert!(private_group_in(PASSWD, GROUP, 0, 0));
        // a shared group, another user's group, an unknown user
        assert!(!private_group_in(PASSWD, GROUP, 1001, 100));
        assert!(!private_group_in(PASSWD, GROUP, 1000, 1002));
        assert!(!private_group_in(PASSWD, GROUP, 1000, 0));
        assert!(!private_group_in(PASSWD, GROUP, 4242, 4242));
        // a private-looking group with a member is shared
        let shared = "ann:x:1000:bob\n";
        assert!(!private_group_in(PASSWD, shared, 1000, 1000));
    }
}
