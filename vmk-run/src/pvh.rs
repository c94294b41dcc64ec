//! One-shot runs boot an x86 kernel's uncompressed ELF (PVH entry) instead of its bzImage:
//! under emulation, a bzImage spends seconds unpacking itself (Debian's are XZ), before the
//! kernel even starts. The ELF is unpacked once on the host with the compressor's own tool
//! (`xz`, `gzip`, `zstd`) into the user's cache and kept while the bzImage stays the same
//! (the [`KEEP`] most recently booted ones: a bisect boots a new build at each step).
//! Used only when the ELF has the PVH note qemu needs (CONFIG_PVH); otherwise the bzImage
//! boots as before.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use vmk_common::host::command;
use vmk_common::state::fnv1a64;

/// The ELF with a PVH entry for the bzImage `kernel` (unpacked into the cache on first use),
/// or `None` when `kernel` is no bzImage, its compression has no tool here, or the kernel
/// has no PVH entry.
pub fn pvh_kernel(kernel: &Path) -> Result<Option<PathBuf>> {
    let image = fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let Some(payload) = payload(&image) else {
        return Ok(None);
    };
    let dir = cache_dir()?;
    let stem = format!("{:016x}", fnv1a64(kernel.as_os_str().as_encoded_bytes()));
    let elf = dir.join(format!("{stem}-{:016x}.elf", fnv1a64(&image)));
    if elf.is_file() {
        mark_used(&elf);
        return Ok(Some(elf));
    }
    let Some(tool) = decompressor(payload) else {
        return Ok(None);
    };
    let out = match unpack(tool, payload) {
        Ok(out) => out,
        Err(e) => {
            log::info!("cannot unpack {} with {}: {e:#}", kernel.display(), tool[0]);
            return Ok(None);
        }
    };
    if !has_pvh_note(&out) {
        log::info!("{} has no PVH entry: booting the bzImage", kernel.display());
        return Ok(None);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // one ELF per bzImage path: the one of an older build of it goes
    for e in fs::read_dir(&dir)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{stem}-"))
        {
            let _ = fs::remove_file(e.path());
        }
    }
    let tmp = dir.join(format!("{stem}.tmp{}", std::process::id()));
    fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &elf).with_context(|| format!("renaming {}", tmp.display()))?;
    log::info!("unpacked {} into {}", kernel.display(), elf.display());
    keep_recent(&dir, KEEP);
    Ok(Some(elf))
}

/// How many unpacked kernels the cache keeps: the most recently booted.
const KEEP: usize = 8;

/// Marks a cached ELF as just booted (its mtime), for [`keep_recent`].
fn mark_used(elf: &Path) {
    if let Ok(f) = fs::File::options().write(true).open(elf) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes all but the `keep` most recently booted ELFs from the cache `dir` (and what a
/// killed unpack left).
fn keep_recent(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut elfs: Vec<(SystemTime, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
        let modified = e.metadata().and_then(|m| m.modified());
        let stale_tmp = name.contains(".tmp")
            && modified
                .as_ref()
                .is_ok_and(|m| m.elapsed().is_ok_and(|age| age.as_secs() > 3600));
        if stale_tmp {
            let _ = fs::remove_file(&path);
        } else if let (true, Ok(m)) = (name.ends_with(".elf"), modified) {
            elfs.push((m, path));
        }
    }
    elfs.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, old) in elfs.into_iter().skip(keep) {
        log::debug!("dropping {} from the kernel cache", old.display());
        let _ = fs::remove_file(old);
    }
}

/// `payload` through the command `tool` (its stdin to its stdout).
fn unpack(tool: &[&str], payload: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", tool[0]))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(payload);
        });
        child.wait_with_output()
    })?;
    Ok(out.stdout)
}

/// `$XDG_CACHE_HOME/vmk/kernels`, else `~/.cache/vmk/kernels`.
fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        _ => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => bail!("neither XDG_CACHE_HOME nor HOME is set"),
        },
    };
    Ok(base.join("vmk/kernels"))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The compressed kernel inside a bzImage (boot protocol 2.08 or later: `HdrS` at 0x202,
/// `payload_offset` and `payload_length` after the setup sectors).
fn payload(image: &[u8]) -> Option<&[u8]> {
    if image.get(0x202..0x206)? != b"HdrS" || le16(image, 0x206)? < 0x208 {
        return None;
    }
    let setup_sects = match image.get(0x1f1)? {
        0 => 4,
        n => usize::from(*n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(le32(image, 0x248)?).ok()?;
    let len = usize::try_from(le32(image, 0x24c)?).ok()?;
    image.get(start..start.checked_add(len)?)
}

/// The command that unpacks `payload` to stdout, by its magic.
fn decompressor(payload: &[u8]) -> Option<&'static [&'static str]> {
    if payload.starts_with(b"\xfd7zXZ\x00") {
        Some(&["xz", "-dc", "--single-stream"])
    } else if payload.starts_with(b"\x1f\x8b") {
        Some(&["gzip", "-dc"])
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        Some(&["zstd", "-dcq"])
    } else {
        None
    }
}

/// True for an ELF64 (little-endian) with the note qemu boots by: `Xen`, type 18
/// (XEN_ELFNOTE_PHYS32_ENTRY).
fn has_pvh_note(elf: &[u8]) -> bool {
    pvh_note(elf).unwrap_or(false)
}

fn pvh_note(elf: &[u8]) -> Option<bool> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return Some(false);
    }
    let phoff = usize::try_from(le64(elf, 0x20)?).ok()?;
    let (size, count) = (usize::from(le16(elf, 0x36)?), usize::from(le16(elf, 0x38)?));
    for i in 0..count {
        let ph = phoff + i * size;
        if le32(elf, ph)? != 4 {
            continue; // not PT_NOTE
        }
        let off = usize::try_from(le64(elf, ph + 0x08)?).ok()?;
        let end = off + usize::try_from(le64(elf, ph + 0x20)?).ok()?;
        let mut at = off;
        while at + 12 <= end {
            let (namesz, descsz) = (le32(elf, at)? as usize, le32(elf, at + 4)? as usize);
            let kind = le32(elf, at + 8)?;
            let name = elf.get(at + 12..at + 12 + namesz)?;
            if name == b"Xen\0" && kind == 18 {
                return Some(true);
            }
            at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE holding `name`/`kind`.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut e = vec![0u8; 0x40 + 0x38];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let note_at = e.len() as u64;
        let mut note = Vec::new();
        note.extend_from_slice(&(name.len() as u32).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        note.resize(12 + name.len().div_ceil(4) * 4 + 4, 0);
        e[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        e[0x48..0x50].copy_from_slice(&note_at.to_le_bytes());
        e[0x60..0x68].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend_from_slice(&note);
        e
    }

    #[test]
    fn the_pvh_note_is_found_and_nothing_else_counts() {
        assert!(has_pvh_note(&elf_with_note(b"Xen\0", 18)));
        assert!(!has_pvh_note(&elf_with_note(b"Xen\0", 17)));
        assert!(!has_pvh_note(&elf_with_note(b"GNU\0", 18)));
        assert!(!has_pvh_note(b"MZ not an elf"));
        assert!(!has_pvh_note(&elf_with_note(b"Xen\0", 18)[..0x50]));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_booted_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let day = std::time::Duration::from_secs(86400);
        let at = |name: &str, days_ago: u32| {
            let p = dir.path().join(name);
            fs::write(&p, name).unwrap();
            let f = fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - day * days_ago).unwrap();
            p
        };
        let oldest = at("a-1.elf", 9);
        let old = at("b-1.elf", 5);
        let recent = at("c-1.elf", 1);
        let stale_tmp = at("d.tmp123", 2);
        let other = at("notes.txt", 30);
        // booting the old one makes it the most recent
        mark_used(&old);
        keep_recent(dir.path(), 2);
        assert!(old.exists() && recent.exists() && other.exists());
        assert!(!oldest.exists() && !stale_tmp.exists());
    }

    #[test]
    fn the_payload_of_a_bzimage_and_its_tool() {
        let mut img = vec![0u8; 3 * 512 + 64];
        img[0x1f1] = 1; // one setup sector: the kernel starts at 1024
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        img[1040..1048].copy_from_slice(b"\xfd7zXZ\x00ab");
        let p = payload(&img).unwrap();
        assert_eq!(p, b"\xfd7zXZ\x00ab");
        assert_eq!(decompressor(p).unwrap()[0], "xz");
        assert_eq!(decompressor(b"\x1f\x8b\x08").unwrap()[0], "gzip");
        assert!(decompressor(b"LZ4!").is_none());
        img[0x202] = b'X';
        assert!(payload(&img).is_none());
    }
}
