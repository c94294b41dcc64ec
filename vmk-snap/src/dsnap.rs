//! Snapshots of an image beside it: `<image>-YYYYMMDD-HHMMSS` reflink copies, an optional note
//! in `<snapshot>.note`, and listing, reverting and removing them. The files that travel with
//! an image (its UEFI variable store and TPM state, [`layout::companions`]) are snapshotted,
//! reverted and removed with it: the firmware's boot entries and the TPM's sealed secrets
//! belong to that disk's state.
//!
//! Notes are plain files beside each snapshot rather than one index file, so a snapshot
//! without a note costs nothing more than the reflink, an index can never disagree with the
//! files, and `rm`/`mv` of a snapshot by hand keeps working (move the note with it).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use vmk_common::fileops::{CopyOutcome, FileopsError};
use vmk_common::layout;

use crate::stamp::{parse_snapshot_name, snapshot_name, SnapName, Stamp};
use vmk_common::copy::{copy_file, CopyMode};

/// The suffix of the note file beside a snapshot.
pub const NOTE_SUFFIX: &str = ".note";

/// One snapshot found beside an image.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// File name.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// When it was taken (from its name), RFC 3339 UTC.
    pub time: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes allocated on disk (shared extents counted in full).
    pub allocated: u64,
    /// The note given with `-m`, if any.
    pub note: Option<String>,
    #[serde(skip)]
    order: SnapName,
}

/// The directory and file name of an image.
fn split(image: &Path) -> Result<(PathBuf, String)> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", image.display()))?
        .to_string();
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// The note file of a snapshot.
pub fn note_path(snapshot: &Path) -> PathBuf {
    let mut s = snapshot.as_os_str().to_os_string();
    s.push(NOTE_SUFFIX);
    PathBuf::from(s)
}

/// Copies `image` to a new `<image>-<UTC timestamp>` beside it (adding `-2`, `-3`… when that
/// name is taken) and writes `note` beside it. Returns the copy.
pub fn take(image: &Path, note: Option<&str>, mode: CopyMode) -> Result<CopyOutcome> {
    let (dir, base) = split(image)?;
    let stamp = Stamp::now();
    let mut seq = 1;
    let outcome = loop {
        let dst = dir.join(snapshot_name(&base, &stamp, seq));
        match copy_file(
            image,
            &dst,
            CopyMode {
                force: false,
                ..mode
            },
        ) {
            Ok(o) => break o,
            Err(FileopsError::DestinationExists { .. }) if seq < 1000 => seq += 1,
            Err(e) => return Err(e).with_context(|| format!("snapshotting {}", image.display())),
        }
    };
    copy_companions(image, &outcome.dst).with_context(|| {
        format!(
            "snapshotting the files that travel with {} (the snapshot {} was made)",
            image.display(),
            outcome.dst.display()
        )
    })?;
    if let Some(note) = note {
        let path = note_path(&outcome.dst);
        let mut text = note.trim_end().to_string();
        text.push('\n');
        vmk_common::fileops::replace_file(&path, text.as_bytes(), 0o600).with_context(|| {
            format!(
                "writing the note {} (the snapshot {} was made)",
                path.display(),
                outcome.dst.display()
            )
        })?;
    }
    Ok(outcome)
}

/// Copies the files that travel with `from` ([`layout::companions`]: its UEFI variable
/// store and TPM state) to those of `to`, replacing them; where `from` has none, `to`'s is
/// removed, so that `to` boots with exactly the state `from` had (a fresh one, made from
/// the template on its first run, when `from` had none). They are small (a variable store
/// is at most a few MiB… 64 MiB on arm), so where the filesystem cannot reflink they are
/// copied in full whatever `--full-copy` says about the image.
pub fn copy_companions(from: &Path, to: &Path) -> Result<()> {
    for (src, dst) in layout::companions(from)
        .into_iter()
        .zip(layout::companions(to))
    {
        if fs::symlink_metadata(&src).is_ok() {
            copy_file(
                &src,
                &dst,
                CopyMode {
                    force: true,
                    full_copy: true,
                },
            )
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        } else {
            remove_if_present(&dst)?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The snapshots of `image`, oldest first.
pub fn list(image: &Path) -> Result<Vec<Snapshot>> {
    let (dir, base) = split(image)?;
    let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut snaps = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(order) = parse_snapshot_name(&base, &name) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue; // removed while we looked
        };
        if !meta.is_file() {
            continue;
        }
        let note = read_note(&note_path(&path));
        snaps.push(Snapshot {
            name,
            time: order.time(),
            size: meta.len(),
            allocated: meta.blocks() * 512,
            note,
            path,
            order,
        });
    }
    snaps.sort_by_key(|s| s.order);
    Ok(snaps)
}

/// The longest part of a note file read, in bytes: a note is a line or two, and a huge
/// file planted beside a snapshot must not be read whole.
const NOTE_MAX_BYTES: u64 = 64 << 10;

/// The note kept beside a snapshot, at most [`NOTE_MAX_BYTES`] of it (invalid UTF-8
/// shown lossily); `None` when there is none or it is not a plain file (a symlink or a
/// FIFO planted there is not opened).
fn read_note(path: &Path) -> Option<String> {
    use std::io::Read;
    if !fs::symlink_metadata(path).ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(NOTE_MAX_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).trim_end().to_string())
}

/// Finds the snapshot of `image` called `name`: its file name, or the part after
/// `<image>-` (`20240501-125130`), or a path to it.
pub fn resolve(image: &Path, name: &str) -> Result<PathBuf> {
    let (dir, base) = split(image)?;
    let file = Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name);
    let candidates = [file.to_string(), format!("{base}-{file}")];
    for c in &candidates {
        if parse_snapshot_name(&base, c).is_some() && dir.join(c).is_file() {
            if name.contains('/') {
                let given = fs::canonicalize(name).ok();
                if given != fs::canonicalize(dir.join(c)).ok() {
                    return Err(vmk_common::usage!(
                        "{name} is not a snapshot of {}",
                        image.display()
                    ));
                }
            }
            return Ok(dir.join(c));
        }
    }
    Err(vmk_common::usage!(
        "no snapshot {name} of {}: `vmk dsnap list` shows them",
        image.display()
    ))
}

/// Removes a snapshot, its note and the files that travel with it.
pub fn remove(snapshot: &Path) -> Result<()> {
    fs::remove_file(snapshot).with_context(|| format!("removing {}", snapshot.display()))?;
    for companion in layout::companions(snapshot) {
        remove_if_present(&companion)?;
    }
    remove_if_present(&note_path(snapshot))
        .with_context(|| format!("removing the note of {}", snapshot.display()))
}

/// Makes `image` a copy of `snapshot` again, after snapshotting the current `image` (returned)
/// so nothing is lost. The caller checks that no VM uses `image`.
pub fn revert(image: &Path, snapshot: &Path, mode: CopyMode) -> Result<CopyOutcome> {
    let snap_name = snapshot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let saved = take(image, Some(&format!("before revert to {snap_name}")), mode)
        .context("keeping the current image before the revert")?;
    copy_file(
        snapshot,
        image,
        CopyMode {
            force: true,
            ..mode
        },
    )
    .map_err(anyhow::Error::from)
    .and_then(|_| copy_companions(snapshot, image))
    .with_context(|| {
        format!(
            "copying {} over {} (its previous content is in {})",
            snapshot.display(),
            image.display(),
            saved.dst.display()
        )
    })?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_list_resolve_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("disk0.img");
        fs::write(&img, b"v1").unwrap();
        fs::write(tmp.path().join("disk0.img.pid"), b"1").unwrap();
        let full = CopyMode {
            force: false,
            full_copy: true,
        };
        let a = take(&img, Some("first\n"), full).unwrap().dst;
        let b = take(&img, None, full).unwrap().dst;
        assert_ne!(a, b);
        let snaps = list(&img).unwrap();
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        assert_eq!(snaps[0].path, a);
        assert_eq!(snaps[0].note.as_deref(), Some("first"));
        assert_eq!(snaps[1].note, None);
        let short = snaps[0].name.strip_prefix("disk0.img-").unwrap();
        assert_eq!(resolve(&img, short).unwrap(), a);
        assert_eq!(resolve(&img, &snaps[0].name).unwrap(), a);
        assert!(resolve(&img, "disk0.img").is_err());
        assert!(resolve(&img, "disk0.img.pid").is_err());
        fs::write(&img, b"v2").unwrap();
        let saved = revert(&img, &a, full).unwrap();
        assert_eq!(fs::read(&img).unwrap(), b"v1");
        assert_eq!(fs::read(&saved.dst).unwrap(), b"v2");
        assert!(fs::read_to_string(note_path(&saved.dst))
            .unwrap()
            .contains("before revert"));
        remove(&a).unwrap();
        assert!(!a.exists() && !note_path(&a).exists());
        assert_eq!(list(&img).unwrap().len(), 2);
    }

    #[test]
    fn the_variable_store_and_tpm_state_travel_with_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("disk0.img");
        let vars = layout::firmware_vars(&img);
        let tpm = layout::tpm_state(&img);
        fs::write(&img, b"disk v1").unwrap();
        fs::write(&vars, b"vars v1").unwrap();
        let full = CopyMode {
            force: false,
            full_copy: true,
        };
        let snap = take(&img, None, full).unwrap().dst;
        assert_eq!(fs::read(layout::firmware_vars(&snap)).unwrap(), b"vars v1");
        assert!(!layout::tpm_state(&snap).exists());
        // companions are not snapshots of their own
        assert_eq!(list(&img).unwrap().len(), 1);

        fs::write(&img, b"disk v2").unwrap();
        fs::write(&vars, b"vars v2").unwrap();
        fs::write(&tpm, b"tpm v2").unwrap();
        let saved = revert(&img, &snap, full).unwrap().dst;
        assert_eq!(fs::read(&vars).unwrap(), b"vars v1");
        assert!(
            !tpm.exists(),
            "the snapshot had no TPM state: the image has none again"
        );
        assert_eq!(fs::read(layout::firmware_vars(&saved)).unwrap(), b"vars v2");
        assert_eq!(fs::read(layout::tpm_state(&saved)).unwrap(), b"tpm v2");

        remove(&saved).unwrap();
        assert!(!layout::firmware_vars(&saved).exists() && !layout::tpm_state(&saved).exists());
    }
}
