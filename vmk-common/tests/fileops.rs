//! System tests of vmk_common::fileops on real filesystems (loop-mounted btrfs, XFS, ext4,
//! tmpfs): reflink, NOCOW, refusals, and that failures leave nothing behind.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{ensure, Result};
use vmk_common::fileops::{
    create_nocow_file, fs_kind, is_nocow, reflink_copy, set_nocow, CopyMethod, CopyOptions,
    FileopsError, FsKind,
};
use vmk_testkit::btrfs::{LoopBtrfs, LoopFs};
use vmk_testkit::images::{btrfs_du, check_reflink_copy, lsattr_has_c, make_image};
use vmk_testkit::{run_system_tests, Need, SystemTest};

const MIB: u64 = 1 << 20;

fn checksum(path: &Path) -> Result<u64> {
    Ok(vmk_common::state::fnv1a64(&fs::read(path)?))
}

/// Files in `dir` (names), to prove nothing (no temporary file) was left.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    v.retain(|n| n != "lost+found");
    Ok(v)
}

fn nocow_reflink_shares_data_and_keeps_attributes() -> Result<()> {
    let fs_ = LoopBtrfs::new(512 * MIB)?;
    let dir = fs_.path();
    ensure!(fs_kind(dir)? == FsKind::Btrfs);
    let src = dir.join("disk0.raw");
    make_image(&src, 64 * MIB, MIB, true)?;
    fs::set_permissions(&src, fs::Permissions::from_mode(0o640))?;
    let mtime = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    fs::File::options()
        .write(true)
        .open(&src)?
        .set_modified(mtime)?;
    let before = checksum(&src)?;
    let src_meta = fs::metadata(&src)?;

    let out = reflink_copy(&src, &dir.join("copy.raw"), &CopyOptions::default())?;
    ensure!(out.method == CopyMethod::Reflink, "{out:?}");
    ensure!(out.bytes == 64 * MIB);
    let dst = dir.join("copy.raw");
    ensure!(is_nocow(&dst)?, "copy lost NOCOW");
    ensure!(lsattr_has_c(&dst)?, "lsattr shows no C on the copy");
    ensure!(checksum(&dst)? == before, "content differs");
    let m = fs::metadata(&dst)?;
    ensure!(m.mode() & 0o7777 == 0o640, "mode {:o}", m.mode());
    ensure!(m.modified()? == mtime, "mtime not kept");
    ensure!(m.ino() != src_meta.ino());

    // all data of both files is shared, none exclusive
    for file in [&src, &dst] {
        let du = btrfs_du(file)?;
        ensure!(
            du.exclusive == 0 && du.total == 64 * MIB,
            "data not shared: {}: {du:?}",
            file.display()
        );
    }
    // lsattr C, same content, shared data; writing to the copy leaves the source as it was
    check_reflink_copy(&src, &dst, 64 * MIB)?;
    ensure!(checksum(&src)? == before, "source changed");
    ensure!(
        fs::metadata(&src)?.modified()? == mtime,
        "source mtime changed"
    );

    // DST may be a directory
    fs::create_dir(dir.join("sub"))?;
    let out = reflink_copy(&src, &dir.join("sub"), &CopyOptions::default())?;
    ensure!(out.dst == dir.join("sub/disk0.raw"));
    ensure!(checksum(&out.dst)? == before);
    ensure!(
        names(dir)? == ["copy.raw", "disk0.raw", "sub"],
        "{:?}",
        names(dir)?
    );
    Ok(())
}

fn plain_reflink_and_set_nocow_rules() -> Result<()> {
    let fs_ = LoopFs::btrfs(256 * MIB)?;
    let dir = fs_.path();
    let src = dir.join("plain.img");
    make_image(&src, 3 * MIB, MIB, false)?;
    ensure!(!is_nocow(&src)?);
    let out = reflink_copy(&src, &dir.join("plain2.img"), &CopyOptions::default())?;
    ensure!(out.method == CopyMethod::Reflink);
    ensure!(!is_nocow(&dir.join("plain2.img"))?);
    // NOCOW cannot be added to a file with data
    let e = set_nocow(&src).unwrap_err();
    ensure!(matches!(e, FileopsError::NocowNotEmpty { .. }), "{e}");
    // create_nocow_file: NOCOW and sized, refuses an existing file
    let d = dir.join("disk1.qcow2");
    ensure!(create_nocow_file(&d, 10 * MIB)?);
    ensure!(fs::metadata(&d)?.len() == 10 * MIB && lsattr_has_c(&d)?);
    ensure!(create_nocow_file(&d, MIB).is_err());
    ensure!(fs::metadata(&d)?.len() == 10 * MIB);
    Ok(())
}

fn refusals_leave_everything_untouched() -> Result<()> {
    let fs_ = LoopFs::btrfs(256 * MIB)?;
    let dir = fs_.path();
    let src = dir.join("disk0");
    make_image(&src, 2 * MIB, MIB, true)?;
    fs::hard_link(&src, dir.join("hardlink"))?;
    std::os::unix::fs::symlink(&src, dir.join("symlink"))?;
    fs::write(dir.join("other"), b"keep me")?;
    let before = checksum(&src)?;
    let force = CopyOptions {
        force: true,
        ..Default::default()
    };
    for target in ["disk0", "hardlink", "symlink"] {
        let e = reflink_copy(&src, &dir.join(target), &force).unwrap_err();
        ensure!(matches!(e, FileopsError::SameFile { .. }), "{target}: {e}");
    }
    let e = reflink_copy(&dir.join("hardlink"), &src, &force).unwrap_err();
    ensure!(matches!(e, FileopsError::SameFile { .. }), "{e}");
    let e = reflink_copy(&src, &dir.join("other"), &CopyOptions::default()).unwrap_err();
    ensure!(matches!(e, FileopsError::DestinationExists { .. }), "{e}");
    ensure!(e.to_string().contains("--force"), "{e}");
    ensure!(fs::read(dir.join("other"))? == b"keep me");
    ensure!(checksum(&src)? == before);
    ensure!(names(dir)? == ["disk0", "hardlink", "other", "symlink"]);
    // with force the existing file is replaced
    reflink_copy(&src, &dir.join("other"), &force)?;
    ensure!(checksum(&dir.join("other"))? == before);
    ensure!(names(dir)? == ["disk0", "hardlink", "other", "symlink"]);
    Ok(())
}

fn ext4_cannot_reflink_clear_error_no_file() -> Result<()> {
    let fs_ = LoopFs::new("ext4", 64 * MIB)?;
    let dir = fs_.path();
    let src = dir.join("disk0");
    make_image(&src, 4 * MIB, MIB, false)?;
    let before = checksum(&src)?;
    let e = reflink_copy(&src, &dir.join("copy"), &CopyOptions::default()).unwrap_err();
    let msg = e.to_string();
    ensure!(
        matches!(e, FileopsError::ReflinkUnsupported { .. }),
        "{msg}"
    );
    ensure!(
        msg.contains("ext2/3/4") && msg.contains("btrfs or XFS") && msg.contains("--full-copy"),
        "{msg}"
    );
    ensure!(names(dir)? == ["disk0"], "left behind: {:?}", names(dir)?);
    let e = set_nocow(&src).unwrap_err();
    ensure!(matches!(e, FileopsError::NocowUnsupported { .. }), "{e}");
    ensure!(!is_nocow(&src)?);
    // with allow_full_copy it copies, and says how
    let o = CopyOptions {
        allow_full_copy: true,
        ..Default::default()
    };
    let out = reflink_copy(&src, &dir.join("copy"), &o)?;
    ensure!(out.method == CopyMethod::FullCopy);
    ensure!(checksum(&dir.join("copy"))? == before && checksum(&src)? == before);
    ensure!(names(dir)? == ["copy", "disk0"]);
    Ok(())
}

fn full_copy_into_full_fs_fails_cleanly() -> Result<()> {
    let big = LoopFs::new("ext4", 64 * MIB)?;
    let tiny = LoopFs::new("tmpfs", 4 * MIB)?;
    let src = big.path().join("disk0");
    make_image(&src, 16 * MIB, MIB, false)?;
    let before = checksum(&src)?;
    let o = CopyOptions {
        allow_full_copy: true,
        ..Default::default()
    };
    let e = reflink_copy(&src, tiny.path(), &o).unwrap_err();
    let msg = e.to_string();
    ensure!(msg.contains("No space left on device"), "{msg}");
    ensure!(
        names(tiny.path())?.is_empty(),
        "left behind: {:?}",
        names(tiny.path())?
    );
    ensure!(checksum(&src)? == before);
    // and without allow_full_copy: the clear refusal, across filesystems
    let e = reflink_copy(&src, tiny.path(), &CopyOptions::default()).unwrap_err();
    ensure!(matches!(e, FileopsError::ReflinkUnsupported { .. }), "{e}");
    ensure!(names(tiny.path())?.is_empty());
    Ok(())
}

/// The extents of `path` as `filefrag -v` (e2fsprogs, through FIEMAP) lists them: how many,
/// and how many carry the `shared` flag.
fn filefrag_extents(path: &Path) -> Result<(usize, usize)> {
    let out = std::process::Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "filefrag -v {} failed",
        path.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // extent lines start with "   N:" after the header
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.split(':')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .collect();
    let shared = extents.iter().filter(|l| l.contains("shared")).count();
    Ok((extents.len(), shared))
}

/// README: reflink copies work on XFS too ("any filesystem that can reflink, such as XFS");
/// XFS has no NOCOW attribute, which vmk says instead of pretending. Oracles: `filefrag -v`
/// (FIEMAP's shared flag) for the shared extents, `cmp` for the content.
fn xfs_reflinks_and_has_no_nocow() -> Result<()> {
    let fs_ = LoopFs::new("xfs", 512 * MIB)?;
    let dir = fs_.path();
    ensure!(fs_kind(dir)? == FsKind::Xfs, "{:?}", fs_kind(dir)?);
    let src = dir.join("disk0.raw");
    make_image(&src, 32 * MIB, MIB, false)?;
    let (extents, shared) = filefrag_extents(&src)?;
    ensure!(
        extents > 0 && shared == 0,
        "before the copy: {shared} of {extents} shared"
    );
    let out = reflink_copy(&src, &dir.join("copy.raw"), &CopyOptions::default())?;
    ensure!(out.method == CopyMethod::Reflink, "{:?}", out.method);
    let copy = out.dst;
    let cmp = std::process::Command::new("cmp")
        .arg(&src)
        .arg(&copy)
        .status()?;
    ensure!(cmp.success(), "cmp: the copy differs");
    let (extents, shared) = filefrag_extents(&copy)?;
    ensure!(
        extents > 0 && shared == extents,
        "filefrag: {shared} of the copy's {extents} extents are shared"
    );
    // a write to the copy unshares only there; the original keeps its bytes
    let before = checksum(&src)?;
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(&copy)?
        .write_all_at(b"changed in the copy", 4096)?;
    ensure!(
        checksum(&src)? == before,
        "writing the copy changed the original"
    );
    ensure!(
        checksum(&copy)? != before,
        "the write did not reach the copy"
    );
    // NOCOW: XFS has none; set_nocow says so, create_nocow_file makes a plain file
    let e = set_nocow(&dir.join("copy.raw")).unwrap_err();
    ensure!(matches!(e, FileopsError::NocowUnsupported { .. }), "{e}");
    ensure!(e.to_string().contains("only btrfs"), "{e}");
    let disk1 = dir.join("disk1.raw");
    ensure!(
        !create_nocow_file(&disk1, 10 * MIB)?,
        "XFS file claimed NOCOW"
    );
    ensure!(fs::metadata(&disk1)?.len() == 10 * MIB && !is_nocow(&disk1)?);
    ensure!(!lsattr_has_c(&disk1)?, "lsattr shows C on XFS");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let btrfs = &[Need::Root, Need::Btrfs, Need::Program("lsattr")];
    run_system_tests(vec![
        SystemTest::new(
            "nocow_reflink_shares_data_and_keeps_attributes",
            btrfs,
            nocow_reflink_shares_data_and_keeps_attributes,
        ),
        SystemTest::new(
            "plain_reflink_and_set_nocow_rules",
            btrfs,
            plain_reflink_and_set_nocow_rules,
        ),
        SystemTest::new(
            "refusals_leave_everything_untouched",
            btrfs,
            refusals_leave_everything_untouched,
        ),
        SystemTest::new(
            "xfs_reflinks_and_has_no_nocow",
            &[
                Need::Root,
                Need::Program("mkfs.xfs"),
                Need::Program("filefrag"),
                Need::Program("lsattr"),
            ],
            xfs_reflinks_and_has_no_nocow,
        ),
        SystemTest::new(
            "ext4_cannot_reflink_clear_error_no_file",
            &[Need::Root, Need::Program("mkfs.ext4")],
            ext4_cannot_reflink_clear_error_no_file,
        ),
        SystemTest::new(
            "full_copy_into_full_fs_fails_cleanly",
            &[Need::Root, Need::Program("mkfs.ext4")],
            full_copy_into_full_fs_fails_cleanly,
        ),
    ])
}
