//! Disk-image fixtures and checks shared by the tests of several crates: sparse test images
//! with recognisable data, their sha256, the NOCOW attribute as `lsattr` shows it, what
//! `btrfs filesystem du` says about sharing, and the full check of a reflink copy.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::run_ok;

use anyhow::{ensure, Context, Result};

const MIB: u64 = 1 << 20;

fn run_on(program: &str, args: &[&str], path: &Path) -> Result<Output> {
    let mut c = Command::new(program);
    c.args(args).arg(path);
    run_ok(c)
}

/// Makes `path` a sparse image of `size` bytes with 1 MiB of data every `every` bytes (so
/// `every == 1 MiB` fills it); each MiB starts with its number, so no two are alike. With
/// `nocow` the file is created empty and made NOCOW (`chattr +C`, checked with `lsattr`)
/// before any data is written, which is the only time btrfs accepts the attribute. An
/// existing file is written over in place, not truncated.
pub fn make_image(path: &Path, size: u64, every: u64, nocow: bool) -> Result<()> {
    ensure!(every >= MIB, "make_image: `every` must be at least 1 MiB");
    if nocow {
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        run_on("chattr", &["+C"], path)?;
        ensure!(lsattr_has_c(path)?, "no NOCOW on {}", path.display());
    }
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.set_len(size)?;
    let block: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    let mut off = 0;
    let mut n = 0u64;
    while off < size {
        let mut b = block.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        f.write_all_at(&b[..(size - off).min(MIB) as usize], off)?;
        off += every;
        n += 1;
    }
    f.sync_all()?;
    Ok(())
}

/// The sha256 of the file at `path`, in hex, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> Result<String> {
    let out = run_on("sha256sum", &[], path)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let sum = text.split_whitespace().next().unwrap_or_default();
    ensure!(sum.len() == 64, "sha256sum printed {text:?}");
    Ok(sum.to_string())
}

/// Whether `lsattr` shows the NOCOW attribute (`C`) on `path`.
pub fn lsattr_has_c(path: &Path) -> Result<bool> {
    let out = run_on("lsattr", &[], path)?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or("").contains('C'))
}

/// One file as `btrfs filesystem du --raw` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtrfsDu {
    /// All bytes of the file's extents.
    pub total: u64,
    /// Bytes in extents no other file refers to.
    pub exclusive: u64,
    /// The "Set shared" column (`None` where btrfs prints `-`).
    pub set_shared: Option<u64>,
}

impl BtrfsDu {
    /// Bytes shared with other files: all that is not exclusive.
    pub fn shared(&self) -> u64 {
        self.total - self.exclusive
    }
}

/// `btrfs filesystem du --raw` of the single file `path`, after `sync -f` so that the
/// numbers are those on disk.
pub fn btrfs_du(path: &Path) -> Result<BtrfsDu> {
    run_on("sync", &["-f"], path)?;
    let out = run_on("btrfs", &["filesystem", "du", "--raw"], path)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .nth(1)
        .context("btrfs filesystem du printed no line")?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    ensure!(cols.len() >= 4, "unexpected btrfs du line {line:?}");
    let total: u64 = cols[0].parse()?;
    let exclusive: u64 = cols[1].parse()?;
    ensure!(exclusive <= total, "unexpected btrfs du line {line:?}");
    Ok(BtrfsDu {
        total,
        exclusive,
        set_shared: cols[2].parse().ok(),
    })
}

/// Checks that `copy` is a reflink copy of the NOCOW image `orig` holding at least `data`
/// bytes of data: `lsattr` shows `C` on the copy, the contents are identical, `btrfs
/// filesystem du` counts none of the copy exclusive and at least `data` shared, and a
/// write into the copy (at 4096) leaves the original unchanged but changes the copy.
/// The copy is changed afterwards.
pub fn check_reflink_copy(orig: &Path, copy: &Path, data: u64) -> Result<()> {
    ensure!(
        lsattr_has_c(copy)?,
        "lsattr shows no C on {}",
        copy.display()
    );
    let before = fs::read(orig).with_context(|| format!("reading {}", orig.display()))?;
    ensure!(
        before == fs::read(copy)?,
        "{} differs from {}",
        copy.display(),
        orig.display()
    );
    let du = btrfs_du(copy)?;
    ensure!(
        // "Set shared" must be a number (btrfs prints it for a file argument): `-` fails
        du.exclusive == 0 && du.shared() >= data && du.set_shared.is_some_and(|s| s >= data),
        "{}: btrfs du shows {} exclusive and {} shared bytes ({du:?}), expected all {data} shared",
        copy.display(),
        du.exclusive,
        du.shared()
    );
    let f = fs::OpenOptions::new().write(true).open(copy)?;
    f.write_all_at(b"changed in the copy", 4096)?;
    f.sync_all()?;
    ensure!(
        fs::read(orig)? == before,
        "writing the copy changed the original"
    );
    ensure!(
        fs::read(copy)? != before,
        "the write did not reach the copy"
    );
    Ok(())
}
