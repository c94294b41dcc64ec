//! The guest's `/etc/fstab`: parsed, its device specs (UUID=, LABEL=, /dev/vdaN…) resolved
//! to the loop device's partitions, and its other local filesystems mounted below the root
//! (btrfs subvolumes, /boot/efi…) so the mount shows the guest as it boots.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use rustix::fs::OFlags;

use super::journal::MountState;
use crate::guestpath::{self, normalize_guest_path, GuestRoot};

/// Mounts the other local filesystems of the guest's /etc/fstab below the root.
///
/// The fstab is data from the image: a mount point must be absolute and free of `..`
/// (checked on the text), it is resolved inside the mounted root (the guest's symlinks as
/// the guest sees them, never reaching the host), must be a directory there, and the
/// filesystem is mounted on that opened directory (`/proc/self/fd/N`), so no path race
/// remains. Bad lines are skipped with a warning that quotes them.
pub(super) fn mount_fstab(
    state: &mut MountState,
    root_dev: &Path,
    devices: &[PathBuf],
) -> Result<()> {
    let root = GuestRoot::open(&state.dir)?;
    let fstab = match root.read_file(Path::new("/etc/fstab")) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => return Ok(()),
        Err(e) => {
            log::warn!("fstab: not used: {e:#}");
            return Ok(());
        }
    };
    let ids: Vec<(PathBuf, Vec<(String, String)>)> =
        devices.iter().map(|d| (d.clone(), blkid_tags(d))).collect();
    for e in parse_fstab(&fstab) {
        if e.target == "/" || e.options.iter().any(|o| o == "noauto") {
            continue;
        }
        const SKIP: &[&str] = &[
            "swap",
            "proc",
            "sysfs",
            "tmpfs",
            "devpts",
            "devtmpfs",
            "nfs",
            "nfs4",
            "cifs",
            "none",
            "efivarfs",
            "securityfs",
            "cgroup",
            "cgroup2",
            "debugfs",
            "sshfs",
        ];
        if SKIP.contains(&e.fstype.as_str()) {
            continue;
        }
        let rel = match normalize_guest_path(&e.target) {
            Ok(rel) if rel.as_os_str().is_empty() => continue,
            Ok(rel) => rel,
            Err(why) => {
                log::warn!(
                    "fstab: skipped the line {:?}: its mount point {why}",
                    e.line
                );
                continue;
            }
        };
        let Some(dev) = resolve_fstab_device(&e.source, &ids, root_dev) else {
            log::info!(
                "fstab: {} ({}) is not on this image: skipped",
                e.target,
                e.source
            );
            continue;
        };
        let guest = Path::new("/").join(&rel);
        let dir = match root.open_in_root(&guest, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                log::info!("fstab: {} does not exist in the image: skipped", e.target);
                continue;
            }
            Err(err) => {
                log::warn!(
                    "fstab: skipped the line {:?}: {} is no directory in the image ({err})",
                    e.line,
                    guest.display()
                );
                continue;
            }
        };
        let target = match root.check_inside(&dir, &guest) {
            Ok(t) => t,
            Err(err) => {
                log::warn!("fstab: skipped the line {:?}: {err:#}", e.line);
                continue;
            }
        };
        let Some(fstype) = fs_type(&dev) else {
            log::warn!(
                "fstab: skipped the line {:?}: no filesystem found on {}",
                e.line,
                dev.display()
            );
            continue;
        };
        let keep: Vec<&str> = e
            .options
            .iter()
            .map(String::as_str)
            .filter(|o| o.starts_with("subvol=") || o.starts_with("subvolid="))
            .collect();
        let data = (!keep.is_empty()).then(|| keep.join(","));
        log::debug!(
            "mounting {} ({fstype}{}) on {}",
            dev.display(),
            data.as_deref()
                .map(|d| format!(", {d}"))
                .unwrap_or_default(),
            target.display()
        );
        match nix::mount::mount(
            Some(dev.as_path()),
            &guestpath::fd_path(&dir),
            Some(fstype.as_str()),
            nix::mount::MsFlags::empty(),
            data.as_deref(),
        ) {
            Ok(()) => {
                state.mounts.push(target);
                state.save()?;
            }
            Err(err) => log::warn!(
                "fstab: could not mount {} on {}: {err}",
                dev.display(),
                target.display()
            ),
        }
    }
    Ok(())
}

/// One line of an fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// Device spec (UUID=…, LABEL=…, /dev/…).
    pub source: String,
    /// Mount point.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// Options.
    pub options: Vec<String>,
    /// The line as written (for messages).
    pub line: String,
}

/// Parses fstab text (comments and short lines skipped; `\040` is a space).
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| FstabEntry {
                source: f[0].replace("\\040", " "),
                target: f[1].replace("\\040", " "),
                fstype: f[2].to_string(),
                options: f
                    .get(3)
                    .map(|o| o.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
                line: l.to_string(),
            })
        })
        .collect()
}

/// Which of our devices an fstab source names (by UUID, LABEL, PARTUUID, PARTLABEL, or a
/// `/dev/<disk><N>` name taken as partition N).
fn resolve_fstab_device(
    source: &str,
    ids: &[(PathBuf, Vec<(String, String)>)],
    root_dev: &Path,
) -> Option<PathBuf> {
    if let Some((tag, value)) = source.split_once('=') {
        let value = value.trim_matches('"');
        return ids
            .iter()
            .find(|(_, tags)| tags.iter().any(|(k, v)| k == tag && v == value))
            .map(|(d, _)| d.clone());
    }
    let name = source.strip_prefix("/dev/")?;
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        return (ids.len() == 1).then(|| root_dev.to_path_buf());
    }
    let n: String = digits.chars().rev().collect();
    ids.iter()
        .map(|(d, _)| d)
        .find(|d| d.to_string_lossy().ends_with(&format!("p{n}")))
        .cloned()
}

/// `blkid -o export DEV` as tag pairs.
fn blkid_tags(dev: &Path) -> Vec<(String, String)> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    })
    .unwrap_or_default()
}

pub(super) fn fs_type(dev: &Path) -> Option<String> {
    blkid_tags(dev)
        .into_iter()
        .find(|(k, _)| k == "TYPE")
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_entries_resolve_to_our_partitions() {
        let fstab = "# comment\nUUID=aaa / btrfs defaults 0 0\n\
                     UUID=aaa /home btrfs subvol=@/home 0 0\n\
                     LABEL=EFI /boot/efi vfat umask=0077 0 2\n\
                     /dev/vda3 /srv ext4 noauto 0 0\n/dev/sda9 /data ext4 defaults 0 0\n\
                     proc /proc proc defaults 0 0\n";
        let e = parse_fstab(fstab);
        assert_eq!(e.len(), 6);
        assert_eq!(e[1].options, vec!["subvol=@/home"]);
        let ids = vec![
            (
                PathBuf::from("/dev/loop0p1"),
                vec![("LABEL".into(), "EFI".into())],
            ),
            (
                PathBuf::from("/dev/loop0p2"),
                vec![("UUID".into(), "aaa".into())],
            ),
        ];
        let root = Path::new("/dev/loop0p2");
        assert_eq!(
            resolve_fstab_device("UUID=aaa", &ids, root),
            Some(PathBuf::from("/dev/loop0p2"))
        );
        assert_eq!(
            resolve_fstab_device("LABEL=EFI", &ids, root),
            Some(PathBuf::from("/dev/loop0p1"))
        );
        assert_eq!(
            resolve_fstab_device("/dev/vda1", &ids, root),
            Some(PathBuf::from("/dev/loop0p1"))
        );
        assert_eq!(resolve_fstab_device("/dev/sda9", &ids, root), None);
        assert_eq!(resolve_fstab_device("UUID=zzz", &ids, root), None);
    }
}
