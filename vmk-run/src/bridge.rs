//! Bridge networking goes through qemu-bridge-helper, which must be setuid root (or run by
//! root) and finds the bridges it may use in /etc/qemu/bridge.conf. These checks say what
//! is wrong before qemu fails with a terse message, and `fixme` repairs it.
//!
//! `fixme` grants no more than a VM needs: the helper becomes setuid root for one group
//! (root:kvm, mode 4750, as qemu's own documentation and the original tool set it), never
//! for everyone; a helper that a normal user owns (or could replace, through a directory
//! they may write) is refused, never made setuid; and bridge.conf gets `allow NAME` for one
//! plain interface name, never `allow all`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use vmk_common::usage;

/// Where qemu looks for its helper by default (Debian, Ubuntu, Fedora, openSUSE).
pub const HELPER_CANDIDATES: &[&str] = &[
    "/usr/lib/qemu/qemu-bridge-helper",
    "/usr/libexec/qemu-bridge-helper",
    "/usr/lib/qemu-bridge-helper",
];
/// The helper's access control list.
pub const BRIDGE_CONF: &str = "/etc/qemu/bridge.conf";
/// The group `fixme` lets run the helper, unless told another.
pub const DEFAULT_HELPER_GROUP: &str = "kvm";
/// The helper's mode after `fixme`: setuid, run by its owner (root) and its group only.
pub const HELPER_MODE: u32 = 0o4750;
/// Linux interface names are shorter than IFNAMSIZ (16).
const MAX_IFNAME: usize = 15;

/// The files the checks look at (tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct Files {
    /// qemu-bridge-helper, if found.
    pub helper: Option<PathBuf>,
    /// bridge.conf.
    pub conf: PathBuf,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            helper: HELPER_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
            conf: PathBuf::from(BRIDGE_CONF),
        }
    }
}

/// The state of the helper's permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperState {
    /// Not installed.
    Missing,
    /// Setuid root (any user may use it).
    SetuidRoot,
    /// Not setuid root: only root can use it.
    RootOnly {
        /// Its owner's uid.
        uid: u32,
        /// Its mode bits.
        mode: u32,
    },
}

/// How the helper at `files.helper` is installed.
pub fn helper_state(files: &Files) -> HelperState {
    let Some(h) = &files.helper else {
        return HelperState::Missing;
    };
    match fs::metadata(h) {
        Err(_) => HelperState::Missing,
        Ok(m) if m.uid() == 0 && m.mode() & 0o4000 != 0 => HelperState::SetuidRoot,
        Ok(m) => HelperState::RootOnly {
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        },
    }
}

/// The bridges bridge.conf allows (`allow NAME` or `allow all`), following `include` lines
/// one level deep. A missing file allows nothing.
pub fn allowed_bridges(conf: &Path) -> Result<Vec<String>> {
    let text = match fs::read_to_string(conf) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", conf.display())),
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("allow"), Some(b)) => out.push(b.to_string()),
            (Some("include"), Some(f)) if Path::new(f) != conf => {
                if let Ok(t) = fs::read_to_string(f) {
                    for l in t.lines() {
                        let mut w = l.split('#').next().unwrap_or("").split_whitespace();
                        if let (Some("allow"), Some(b)) = (w.next(), w.next()) {
                            out.push(b.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// True when `bridge` is an existing bridge device in this network namespace.
pub fn bridge_exists(bridge: &str) -> bool {
    Path::new("/sys/class/net")
        .join(bridge)
        .join("bridge")
        .is_dir()
}

/// Fails with what to do when bridge networking on `bridge` cannot work for this user.
pub fn check_usable(bridge: &str, files: &Files) -> Result<()> {
    check_usable_as(bridge, files, vmk_common::host::is_root())
}

/// [`check_usable`] for a user who is root (`root`) or not: root may run a helper that is
/// not setuid, but even root's helper obeys bridge.conf.
pub fn check_usable_as(bridge: &str, files: &Files, root: bool) -> Result<()> {
    match helper_state(files) {
        HelperState::Missing => bail!(
            "VMK_NET_TYPE=bridge needs qemu-bridge-helper (looked for {}): install qemu-system-common",
            HELPER_CANDIDATES.join(", ")
        ),
        HelperState::RootOnly { uid, mode } if !root => bail!(
            "{} is not setuid root (owner uid {uid}, mode {mode:o}): run `sudo vmk fixme`",
            files.helper.as_deref().unwrap_or(Path::new("?")).display()
        ),
        HelperState::SetuidRoot if !root => {
            let helper = files.helper.as_deref().unwrap_or(Path::new("?"));
            if !executable_by_me(helper) {
                let group = fs::metadata(helper)
                    .map(|m| group_name(m.gid()))
                    .unwrap_or_else(|_| "?".into());
                bail!(
                    "{} is setuid root for group {group} only, and you are not in it: \
                     `sudo usermod -aG {group} $USER`, then log in again",
                    helper.display()
                );
            }
        }
        _ => {}
    }
    let allowed = allowed_bridges(&files.conf)?;
    if !allowed.iter().any(|b| b == bridge || b == "all") {
        bail!(
            "{} does not allow bridge {bridge} (needs a line `allow {bridge}`): run `sudo vmk fixme`",
            files.conf.display()
        );
    }
    if !bridge_exists(bridge) {
        bail!("bridge {bridge} does not exist: create it (e.g. with NetworkManager or `ip link add {bridge} type bridge`) or set VMK_BRIDGE");
    }
    Ok(())
}

/// Whether this process's real user may execute `path` (access(2) with X_OK).
fn executable_by_me(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
}

/// Fails unless `name` is a plain network interface name: 1 to 15 of ASCII letters,
/// digits, `-`, `_` and `.`, not `.` or `..`, and not `all` (which bridge.conf reads as
/// every bridge on the host). A usage error (exit 2).
pub fn validate_bridge_name(name: &str) -> Result<()> {
    if name == "all" {
        return Err(usage!(
            "refusing bridge `all`: it would let every user attach VMs to every bridge on this \
             host; name the one bridge (--bridge NAME or VMK_BRIDGE)"
        ));
    }
    let plain = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !plain {
        return Err(usage!(
            "refusing bridge {name:?}: not a plain interface name (1 to {MAX_IFNAME} letters, \
             digits, `-`, `_` or `.`)"
        ));
    }
    Ok(())
}

/// The fields of `getent DATABASE KEY`'s first line (None when it finds nothing).
fn getent(database: &str, key: &str) -> Option<Vec<String>> {
    let out = Command::new("getent").args([database, key]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    Some(line.split(':').map(str::to_string).collect())
}

/// The gid of group `group` (a name, or a number), or an error that says what to do.
pub fn group_id(group: &str) -> Result<u32> {
    if let Some(gid) = getent("group", group).and_then(|f| f.get(2)?.parse().ok()) {
        return Ok(gid);
    }
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    bail!(
        "there is no group {group:?}: create it (`groupadd -r {group}`) or name another with --group"
    )
}

/// A group's name for messages (its number when it has none).
fn group_name(gid: u32) -> String {
    getent("group", &gid.to_string())
        .and_then(|f| f.into_iter().next())
        .unwrap_or_else(|| gid.to_string())
}

/// A user's name for messages (`uid N` when it has none).
fn user_name(uid: u32) -> String {
    match getent("passwd", &uid.to_string()).and_then(|f| f.into_iter().next()) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Fails unless `helper` is a regular file owned by root in directories that only root may
/// change (or sticky ones, where others cannot replace root's entries): a file a normal user
/// owns, or could swap for another, must never become setuid root.
pub fn check_helper_ownership(helper: &Path) -> Result<()> {
    let real =
        fs::canonicalize(helper).with_context(|| format!("resolving {}", helper.display()))?;
    let m = fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
    let shown = if real == helper {
        helper.display().to_string()
    } else {
        format!("{} (-> {})", helper.display(), real.display())
    };
    if !m.is_file() {
        bail!("{shown} is not a regular file: vmk will not make it setuid root");
    }
    if m.uid() != 0 {
        bail!(
            "{shown} is owned by {}, not root: vmk will not make it setuid root (its owner \
             could replace it with anything); reinstall it from qemu's package (e.g. \
             qemu-system-common) and run `vmk fixme` again",
            user_name(m.uid())
        );
    }
    for dir in real.ancestors().skip(1) {
        let d = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        let writable_by_others = d.mode() & 0o022 != 0 && d.mode() & 0o1000 == 0;
        if d.uid() != 0 || writable_by_others {
            bail!(
                "{shown} is in {}, which {} may change: vmk will not make a file there setuid root",
                dir.display(),
                if d.uid() != 0 {
                    user_name(d.uid())
                } else {
                    "a user other than root".to_string()
                }
            );
        }
    }
    Ok(())
}

/// Makes the helper setuid root for group `group` (root:GROUP, mode 4750) and lets it use
/// `bridge`; returns what was changed. Refuses (changing nothing) a bridge name that is not
/// plain or is `all`, and a helper that root does not own.
pub fn fix(bridge: &str, group: &str, files: &Files) -> Result<Vec<String>> {
    validate_bridge_name(bridge)?;
    let mut changed = Vec::new();
    if let Some(helper) = &files.helper {
        check_helper_ownership(helper)?;
        let gid = group_id(group)?;
        let m = fs::metadata(helper).with_context(|| format!("reading {}", helper.display()))?;
        let mode = m.mode() & 0o7777;
        if m.gid() != gid || mode != HELPER_MODE {
            // chown first: it clears the setuid bit, which the chmod then sets.
            std::os::unix::fs::chown(helper, None, Some(gid))
                .with_context(|| format!("chgrp {group} {}", helper.display()))?;
            fs::set_permissions(helper, fs::Permissions::from_mode(HELPER_MODE))
                .with_context(|| format!("chmod {HELPER_MODE:o} {}", helper.display()))?;
            changed.push(format!(
                "{}: root:{group}, mode {HELPER_MODE:o} (was root:{}, mode {mode:o})",
                helper.display(),
                group_name(m.gid())
            ));
        }
    }
    let allowed = allowed_bridges(&files.conf)?;
    if !allowed.iter().any(|b| b == bridge || b == "all") {
        if let Some(dir) = files.conf.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut text = match fs::read_to_string(&files.conf) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", files.conf.display())),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("allow {bridge}\n"));
        fs::write(&files.conf, text)
            .with_context(|| format!("writing {}", files.conf.display()))?;
        fs::set_permissions(&files.conf, fs::Permissions::from_mode(0o644))?;
        changed.push(format!("{}: added `allow {bridge}`", files.conf.display()));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lines_and_includes() {
        let tmp = tempfile::tempdir().unwrap();
        let inc = tmp.path().join("inc.conf");
        fs::write(&inc, "allow br7\n").unwrap();
        let conf = tmp.path().join("bridge.conf");
        fs::write(
            &conf,
            format!(
                "# comment\nallow br0 # trailing\n\ninclude {}\ndeny x\n",
                inc.display()
            ),
        )
        .unwrap();
        assert_eq!(allowed_bridges(&conf).unwrap(), vec!["br0", "br7"]);
        assert!(allowed_bridges(&tmp.path().join("none"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn fix_adds_allow_and_setuid() {
        let tmp = tempfile::tempdir().unwrap();
        let helper = tmp.path().join("qemu-bridge-helper");
        fs::write(&helper, "").unwrap();
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
        let files = Files {
            helper: Some(helper.clone()),
            conf: tmp.path().join("etc/qemu/bridge.conf"),
        };
        let err = check_usable("br9", &files).unwrap_err().to_string();
        if vmk_common::host::is_root() {
            assert!(err.contains("allow br9"), "{err}");
            let changed = fix("br9", "root", &files).unwrap();
            assert_eq!(changed.len(), 2, "{changed:?}");
            assert_eq!(helper_state(&files), HelperState::SetuidRoot);
            let m = fs::metadata(&helper).unwrap();
            assert_eq!((m.mode() & 0o7777, m.gid()), (HELPER_MODE, 0));
            assert_eq!(allowed_bridges(&files.conf).unwrap(), vec!["br9"]);
            assert!(
                fix("br9", "root", &files).unwrap().is_empty(),
                "second fix changes nothing"
            );
            let err = check_usable("br9", &files).unwrap_err().to_string();
            assert!(err.contains("bridge br9 does not exist"), "{err}");
        } else {
            assert!(err.contains("not setuid root"), "{err}");
        }
    }

    #[test]
    fn only_plain_interface_names_are_bridges() {
        for ok in ["br0", "virbr0", "br-vmk", "a.b_c", "x23456789012345"] {
            validate_bridge_name(ok).unwrap();
        }
        for bad in [
            "all",
            "",
            ".",
            "..",
            "br0 all",
            "br0\nallow all",
            "a/b",
            "br0#x",
            "x234567890123456",
            "eth0:1",
        ] {
            let err = validate_bridge_name(bad).unwrap_err();
            assert_eq!(vmk_common::cli::exit_status_of(&err), 2, "{bad:?}");
            assert!(err.to_string().starts_with("refusing bridge"), "{err}");
        }
    }

    fn helper_with_mode(dir: &Path, mode: u32) -> PathBuf {
        let helper = dir.join("qemu-bridge-helper");
        fs::write(&helper, "").unwrap();
        fs::set_permissions(&helper, fs::Permissions::from_mode(mode)).unwrap();
        helper
    }

    #[test]
    fn missing_helper_says_what_to_install() {
        let tmp = tempfile::tempdir().unwrap();
        for helper in [None, Some(tmp.path().join("gone"))] {
            let files = Files {
                helper,
                conf: tmp.path().join("bridge.conf"),
            };
            assert_eq!(helper_state(&files), HelperState::Missing);
            let err = check_usable_as("br0", &files, true)
                .unwrap_err()
                .to_string();
            assert!(err.contains("install qemu-system-common"), "{err}");
        }
    }

    #[test]
    fn helper_not_setuid_refuses_users_but_not_root() {
        let tmp = tempfile::tempdir().unwrap();
        let helper = helper_with_mode(tmp.path(), 0o755);
        let conf = tmp.path().join("bridge.conf");
        fs::write(&conf, "allow all\n").unwrap();
        let files = Files {
            helper: Some(helper.clone()),
            conf,
        };
        assert!(matches!(
            helper_state(&files),
            HelperState::RootOnly { mode: 0o755, .. }
        ));
        let err = check_usable_as("vmk-no-br0", &files, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not setuid root") && err.contains("mode 755"),
            "{err}"
        );
        assert!(err.contains("sudo vmk fixme"), "{err}");
        assert!(err.contains(&helper.display().to_string()), "{err}");
        // Root passes the helper check and reaches the next one.
        let err = check_usable_as("vmk-no-br0", &files, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bridge vmk-no-br0 does not exist"), "{err}");
    }

    #[test]
    fn setuid_helper_passes_for_users_when_owned_by_root() {
        // a file owned by root needs root to make
        vmk_testkit::require(&[vmk_testkit::Need::Root]);
        let tmp = tempfile::tempdir().unwrap();
        let helper = helper_with_mode(tmp.path(), 0o4755);
        let conf = tmp.path().join("bridge.conf");
        fs::write(&conf, "allow vmk-no-br1\n").unwrap();
        let files = Files {
            helper: Some(helper),
            conf,
        };
        assert_eq!(helper_state(&files), HelperState::SetuidRoot);
        let err = check_usable_as("vmk-no-br1", &files, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn bridge_conf_missing_or_without_allow_line() {
        let tmp = tempfile::tempdir().unwrap();
        let helper = helper_with_mode(tmp.path(), 0o755);
        let conf = tmp.path().join("etc-qemu/bridge.conf");
        let files = Files {
            helper: Some(helper),
            conf: conf.clone(),
        };
        let want = format!(
            "{} does not allow bridge vmk-nobr5 (needs a line `allow vmk-nobr5`): run `sudo vmk fixme`",
            conf.display()
        );
        // Missing.
        let err = check_usable_as("vmk-nobr5", &files, true)
            .unwrap_err()
            .to_string();
        assert_eq!(err, want);
        // Present, allowing other bridges only (and br5 only in a comment).
        fs::create_dir_all(conf.parent().unwrap()).unwrap();
        fs::write(&conf, "allow br0\n# allow vmk-nobr5\nallow vmk-nobr50\n").unwrap();
        let err = check_usable_as("vmk-nobr5", &files, true)
            .unwrap_err()
            .to_string();
        assert_eq!(err, want);
        // `allow all` lets it through to the existence check.
        fs::write(&conf, "allow all\n").unwrap();
        let err = check_usable_as("vmk-nobr5", &files, true)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bridge vmk-nobr5 does not exist"), "{err}");
    }
}
