//! File operations on disk images: reflink copies that keep NOCOW, that never touch the
//! source and never leave a half-written destination, and an explicit, sparse-aware full
//! copy for filesystems that cannot share data.
//!
//! Why one file of about 800 lines: every copy path (reflink, sparse full copy, the
//! temporary file and its rename, NOCOW, the clean-up of killed copies) shares the same
//! invariants and helpers; about 130 of the lines are its unit tests.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{IFlags, SeekFrom};
use rustix::io::Errno;

const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;
const XFS_SUPER_MAGIC: u64 = 0x5846_5342;

/// Names of other filesystems, for messages.
const FS_NAMES: &[(u64, &str)] = &[
    (0xEF53, "ext2/3/4"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58f6, "ramfs"),
    (0x794c_7630, "overlayfs"),
    (0x6969, "nfs"),
    (0x2fc1_2fc1, "zfs"),
    (0xF2F5_2010, "f2fs"),
    (0xca45_1a4e, "bcachefs"),
    (0x6573_5546, "fuse"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x4d44, "vfat"),
    (0x7461_636f, "ocfs2"),
    (0x0000_9fa0, "proc"),
];

/// The kind of filesystem a path lives on, as far as reflinks and NOCOW are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// btrfs: reflinks and the NOCOW attribute.
    Btrfs,
    /// XFS: reflinks when made with `reflink=1` (the default of current mkfs.xfs).
    Xfs,
    /// Anything else.
    Other {
        /// `statfs` `f_type`.
        magic: u64,
        /// A name for messages when the magic is known.
        name: Option<&'static str>,
    },
}

impl FsKind {
    fn from_magic(magic: u64) -> FsKind {
        match magic {
            BTRFS_SUPER_MAGIC => FsKind::Btrfs,
            XFS_SUPER_MAGIC => FsKind::Xfs,
            _ => FsKind::Other {
                magic,
                name: FS_NAMES.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n),
            },
        }
    }

    /// True for filesystems that can usually reflink (btrfs, XFS).
    pub fn can_reflink(self) -> bool {
        matches!(self, FsKind::Btrfs | FsKind::Xfs)
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsKind::Btrfs => f.write_str("btrfs"),
            FsKind::Xfs => f.write_str("xfs"),
            FsKind::Other { name: Some(n), .. } => f.write_str(n),
            FsKind::Other { magic, name: None } => write!(f, "unknown (magic {magic:#x})"),
        }
    }
}

/// What went wrong in a file operation; each message names the files and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileopsError {
    /// A system call failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("opening", "cloning to"…).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The source is not a regular file.
    #[error("{} is not a regular file: only files can be copied", path.display())]
    NotAFile {
        /// The source.
        path: PathBuf,
    },
    /// Source and destination are the same file (same device and inode).
    #[error("{} and {} are the same file", src.display(), dst.display())]
    SameFile {
        /// The source.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
    },
    /// The destination exists and `force` was not given.
    #[error("{} already exists: remove it first or pass --force", dst.display())]
    DestinationExists {
        /// The destination.
        dst: PathBuf,
    },
    /// The filesystem cannot reflink and a full copy was not allowed.
    #[error("cannot reflink {} to {}: {reason}; put the VM on btrfs or XFS, or pass --full-copy", src.display(), dst.display())]
    ReflinkUnsupported {
        /// The source.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
        /// The destination's filesystem.
        fs: FsKind,
        /// Why, in words (e.g. "the ext2/3/4 filesystem cannot share data blocks").
        reason: String,
    },
    /// The filesystem has no NOCOW attribute.
    #[error("{}: the {fs} filesystem has no NOCOW attribute (only btrfs has one)", path.display())]
    NocowUnsupported {
        /// The file.
        path: PathBuf,
        /// Its filesystem.
        fs: FsKind,
    },
    /// NOCOW can only be set while a file is empty.
    #[error("cannot make {} NOCOW: it is not empty (btrfs takes NOCOW only on empty files; create a new file and copy into it)", path.display())]
    NocowNotEmpty {
        /// The file.
        path: PathBuf,
    },
}

type Result<T, E = FileopsError> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileopsError + 'a {
    move |source| FileopsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The kind of filesystem `path` is on (`statfs`).
pub fn fs_kind(path: &Path) -> Result<FsKind> {
    let st = rustix::fs::statfs(path)
        .map_err(|e| io_err("checking the filesystem of", path)(e.into()))?;
    Ok(FsKind::from_magic(st.f_type as u64))
}

fn fs_kind_of(file: &File) -> Option<FsKind> {
    rustix::fs::fstatfs(file)
        .ok()
        .map(|st| FsKind::from_magic(st.f_type as u64))
}

/// True when `path` has the NOCOW attribute (`lsattr` shows `C`). Filesystems without
/// inode flags answer false.
pub fn is_nocow(path: &Path) -> Result<bool> {
    let f = File::open(path).map_err(io_err("opening", path))?;
    is_nocow_file(&f, path)
}

fn is_nocow_file(file: &File, path: &Path) -> Result<bool> {
    match rustix::fs::ioctl_getflags(file) {
        Ok(flags) => Ok(flags.contains(IFlags::NOCOW)),
        Err(Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => Ok(false),
        Err(e) => Err(io_err("reading the attributes of", path)(e.into())),
    }
}

/// Gives `path` the NOCOW attribute. Works on empty files (and directories, whose new
/// files inherit it) on btrfs; elsewhere fails with [`FileopsError::NocowUnsupported`].
pub fn set_nocow(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(io_err("opening", path))?;
    set_nocow_file(&f, path)
}

/// [`set_nocow`] on an open file; `path` is used in messages.
pub fn set_nocow_file(file: &File, path: &Path) -> Result<()> {
    let unsupported = || FileopsError::NocowUnsupported {
        path: path.to_path_buf(),
        fs: fs_kind_of(file).unwrap_or(FsKind::Other {
            magic: 0,
            name: None,
        }),
    };
    let flags = match rustix::fs::ioctl_getflags(file) {
        Ok(f) => f,
        Err(Errno::NOTTY | Errno::OPNOTSUPP | Errno::NOSYS) => return Err(unsupported()),
        Err(e) => return Err(io_err("reading the attributes of", path)(e.into())),
    };
    if flags.contains(IFlags::NOCOW) {
        return Ok(());
    }
    match rustix::fs::ioctl_setflags(file, flags | IFlags::NOCOW) {
        Ok(()) => {}
        Err(Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
            return Err(unsupported())
        }
        Err(e) => return Err(io_err("setting NOCOW on", path)(e.into())),
    }
    // btrfs silently ignores NOCOW on a regular file that already has data.
    if !is_nocow_file(file, path)? {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        return Err(if len > 0 {
            FileopsError::NocowNotEmpty {
                path: path.to_path_buf(),
            }
        } else {
            unsupported()
        });
    }
    Ok(())
}

/// Creates a new file `path` (refusing an existing one, a symlink included), private
/// (mode 0600: a disk image is the guest's data), makes it NOCOW when the filesystem
/// supports that, then sets its length to `size` (sparse). Returns whether it is NOCOW. On
/// error the new file is removed.
pub fn create_nocow_file(path: &Path, size: u64) -> Result<bool> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating", path))?;
    let result = (|| {
        let nocow = match set_nocow_file(&file, path) {
            Ok(()) => true,
            Err(FileopsError::NocowUnsupported { fs, .. }) => {
                log::info!(
                    "{}: {fs} has no NOCOW attribute, created without it",
                    path.display()
                );
                false
            }
            Err(e) => return Err(e),
        };
        file.set_len(size).map_err(io_err("resizing", path))?;
        file.sync_all().map_err(io_err("syncing", path))?;
        Ok(nocow)
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// How [`reflink_copy`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Shares the source's data blocks (FICLONE).
    Reflink,
    /// Copied every data block (holes kept).
    FullCopy,
}

/// The result of [`reflink_copy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    /// How it was copied.
    pub method: CopyMethod,
    /// The size of the file.
    pub bytes: u64,
    /// The final destination (DST, or DST/<source name> when DST is a directory).
    pub dst: PathBuf,
}

/// Options of [`reflink_copy`].
#[derive(Default)]
pub struct CopyOptions<'a> {
    /// Replace an existing destination.
    pub force: bool,
    /// Fall back to a full copy when the filesystem cannot reflink.
    pub allow_full_copy: bool,
    /// Called during a full copy with (bytes done, total bytes).
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Drop the group and other permission bits from the copy (disk images: only their
    /// owner reads them, whatever the source's mode).
    pub private: bool,
}

impl std::fmt::Debug for CopyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("force", &self.force)
            .field("allow_full_copy", &self.allow_full_copy)
            .field("progress", &self.progress.is_some())
            .field("private", &self.private)
            .finish()
    }
}

/// Removes the temporary file unless disarmed: whatever fails, no half-written copy stays.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("could not remove temporary {}: {e}", self.path.display());
            }
        }
    }
}

fn random_suffix() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{nanos}-{n}-{:p}", &n);
    crate::state::fnv1a64(seed.as_bytes()) as u32
}

/// 16 hex digits for a temporary name that others cannot guess: 8 bytes of
/// /dev/urandom (a hash of the clock and a counter when that cannot be read).
pub fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let n = match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => u64::from(random_suffix()) << 32 | u64::from(random_suffix()),
    };
    format!("{n:016x}")
}

/// Writes `bytes` to `path` without ever opening what sits at `path`: a new temporary file
/// beside it (random name, created with `O_EXCL|O_NOFOLLOW`, mode `mode`), synced, then
/// renamed over `path`. A planted symlink at `path` is replaced, never followed; a
/// directory there makes the rename fail. The temporary file is removed on error.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let tmp = temp_beside(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .mode(mode)
        .open(&tmp)?;
    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A fresh temporary name beside `path` for a file that is renamed to `path` once it is
/// complete: `.<name>.vmk-tmp-<pid>-<random>` (hidden, and recognisable as vmk's).
pub fn temp_beside(path: &Path) -> PathBuf {
    let mut tmp_name = OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or(path.as_os_str()));
    tmp_name.push(format!(".vmk-tmp-{}-{}", std::process::id(), random_hex()));
    dir_of(path).join(tmp_name)
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the temporary files that earlier copies to the same destination left behind
/// when they were killed (`.<dst>.vmk-tmp-<pid>-<random>` whose pid no longer runs): a
/// killed full copy of a big image would otherwise keep its space. Temporary files of
/// copies still running are left alone. Best effort: failures are only logged.
fn remove_stale_temps(dir: &Path, prefix: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_bytes().strip_prefix(prefix.as_bytes()) else {
            continue;
        };
        let pid = rest.split(|&b| b == b'-').next().unwrap_or_default();
        let Some(pid) = std::str::from_utf8(pid)
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == 0 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => log::info!("removed {} left by an interrupted copy", path.display()),
            Err(e) => log::warn!(
                "cannot remove {} left by an interrupted copy: {e}",
                path.display()
            ),
        }
    }
}

/// Opens `path` for reading without waiting: a FIFO or device opens at once (O_NONBLOCK,
/// no controlling terminal), so the caller can look at what it got and refuse it. Regular
/// files read as usual.
pub fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
}

/// Reads a small file a user named (a profile, a list, a note): never blocks on a FIFO or
/// device (opened O_NONBLOCK, refused unless it is a regular file) and reads at most
/// `max_bytes` (more is an error saying so).
pub fn read_user_file(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let file = open_nonblocking(path)?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        let what = crate::config::files::file_type_name(ft);
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("it is larger than {}", crate::human::size(max_bytes)),
        ));
    }
    Ok(bytes)
}

/// Copies the regular file `src` to `dst` by reflink, keeping mode, times, ownership (as
/// root) and the NOCOW attribute. DST may be a directory. The source is only ever opened
/// read-only. The copy is made in a temporary file beside DST and renamed into place, so DST
/// is either the complete copy or untouched. Where the filesystem cannot reflink this fails
/// with [`FileopsError::ReflinkUnsupported`] unless `opts.allow_full_copy`.
pub fn reflink_copy(src: &Path, dst: &Path, opts: &CopyOptions) -> Result<CopyOutcome> {
    // a FIFO or device at `src` is opened without waiting, then refused below
    let src_file = open_nonblocking(src).map_err(io_err("opening", src))?;
    let src_meta = src_file.metadata().map_err(io_err("reading", src))?;
    if !src_meta.is_file() {
        return Err(FileopsError::NotAFile {
            path: src.to_path_buf(),
        });
    }
    let dst = match fs::metadata(dst) {
        Ok(m) if m.is_dir() => match src.file_name() {
            Some(name) => dst.join(name),
            None => {
                return Err(FileopsError::NotAFile {
                    path: src.to_path_buf(),
                })
            }
        },
        _ => dst.to_path_buf(),
    };
    match fs::metadata(&dst) {
        Ok(m) if m.dev() == src_meta.dev() && m.ino() == src_meta.ino() => {
            return Err(FileopsError::SameFile {
                src: src.to_path_buf(),
                dst,
            })
        }
        Ok(m) if m.is_dir() => {
            return Err(FileopsError::DestinationExists { dst });
        }
        Ok(_) if !opts.force => return Err(FileopsError::DestinationExists { dst }),
        _ => {}
    }
    if !opts.force && fs::symlink_metadata(&dst).is_ok() {
        // a dangling symlink: renaming over it would still replace something
        return Err(FileopsError::DestinationExists { dst });
    }

    let dst_name = dst
        .file_name()
        .ok_or_else(|| FileopsError::NotAFile { path: dst.clone() })?;
    let mut tmp_prefix = OsString::from(".");
    tmp_prefix.push(dst_name);
    tmp_prefix.push(".vmk-tmp-");
    remove_stale_temps(dir_of(&dst), &tmp_prefix);
    let mut tmp_name = tmp_prefix;
    tmp_name.push(format!("{}-{:08x}", std::process::id(), random_suffix()));
    let tmp_path = dir_of(&dst).join(tmp_name);
    let tmp_file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_path)
        .map_err(io_err("creating", &tmp_path))?;
    let mut guard = TempFile {
        path: tmp_path.clone(),
        armed: true,
    };

    let src_nocow = is_nocow_file(&src_file, src)?;
    if src_nocow {
        // NOCOW→plain clones fail (EINVAL) on btrfs: the flag must be set while empty.
        if let Err(e) = set_nocow_file(&tmp_file, &tmp_path) {
            log::debug!("destination cannot be NOCOW: {e}");
        }
    }

    let total = src_meta.len();
    let method = match rustix::fs::ioctl_ficlone(&tmp_file, &src_file) {
        Ok(()) => CopyMethod::Reflink,
        Err(e @ (Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS)) => {
            let fs = fs_kind_of(&tmp_file).unwrap_or(FsKind::Other {
                magic: 0,
                name: None,
            });
            let reason = match e {
                Errno::XDEV => "they are on different filesystems".to_string(),
                _ if fs.can_reflink() => format!(
                    "the {fs} filesystem refused the clone ({e}; on XFS check reflink=1, on btrfs the NOCOW attributes must match)"
                ),
                _ => format!("the {fs} filesystem cannot share data blocks"),
            };
            if !opts.allow_full_copy {
                return Err(FileopsError::ReflinkUnsupported {
                    src: src.to_path_buf(),
                    dst,
                    fs,
                    reason,
                });
            }
            log::warn!("{reason}: making a full copy of {}", src.display());
            if src_nocow && !is_nocow_file(&tmp_file, &tmp_path)? {
                log::warn!("{}: the copy is not NOCOW", dst.display());
            }
            full_copy(&src_file, src, &tmp_file, &tmp_path, total, opts.progress)?;
            CopyMethod::FullCopy
        }
        Err(e) => return Err(io_err("cloning into", &tmp_path)(e.into())),
    };

    copy_attributes(&src_meta, &tmp_file, &tmp_path, opts.private)?;
    // A full copy's data sits in the page cache: make it durable before the rename. A reflink
    // needs no fsync (which costs tens of ms on btrfs, where fsync of a cloned file commits the
    // whole transaction, and would make snapshots no longer instant): btrfs and XFS journal
    // the clone before the later rename, so after a crash the name holds either nothing or
    // the complete copy.
    let durable = method == CopyMethod::FullCopy;
    if durable {
        tmp_file.sync_all().map_err(io_err("syncing", &tmp_path))?;
    }
    drop(tmp_file);
    rename_into_place(&tmp_path, &dst, opts.force)?;
    guard.armed = false;
    if durable {
        if let Ok(d) = File::open(dir_of(&dst)) {
            let _ = d.sync_all();
        }
    }
    Ok(CopyOutcome {
        method,
        bytes: total,
        dst,
    })
}

fn copy_attributes(
    src_meta: &fs::Metadata,
    tmp: &File,
    tmp_path: &Path,
    private: bool,
) -> Result<()> {
    if crate::host::is_root() {
        // before chmod: chown clears set-id bits
        std::os::unix::fs::fchown(tmp, Some(src_meta.uid()), Some(src_meta.gid()))
            .map_err(io_err("setting the owner of", tmp_path))?;
    }
    let keep = if private { 0o7700 } else { 0o7777 };
    tmp.set_permissions(fs::Permissions::from_mode(src_meta.mode() & keep))
        .map_err(io_err("setting the mode of", tmp_path))?;
    let mut times = fs::FileTimes::new();
    if let Ok(a) = src_meta.accessed() {
        times = times.set_accessed(a);
    }
    if let Ok(m) = src_meta.modified() {
        times = times.set_modified(m);
    }
    tmp.set_times(times)
        .map_err(io_err("setting the times of", tmp_path))
}

fn rename_into_place(tmp: &Path, dst: &Path, force: bool) -> Result<()> {
    if !force {
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, tmp, cwd, dst, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {
                return Err(FileopsError::DestinationExists {
                    dst: dst.to_path_buf(),
                })
            }
            Err(Errno::INVAL | Errno::NOSYS) if !dst.exists() => {} // no NOREPLACE here
            Err(e) => return Err(io_err("renaming into", dst)(e.into())),
        }
    }
    fs::rename(tmp, dst).map_err(io_err("renaming into", dst))
}

const CHUNK: u64 = 8 << 20;

/// Copies the data of `src` into the empty `dst`, keeping holes: only the ranges that
/// SEEK_DATA finds are copied (copy_file_range, or read/write where that is refused).
fn full_copy(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    total: u64,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<()> {
    dst.set_len(total).map_err(io_err("resizing", dst_path))?;
    let report = |done: u64| {
        if let Some(p) = progress {
            p(done.min(total), total)
        }
    };
    let mut use_cfr = true;
    let mut pos = 0u64;
    report(0);
    while pos < total {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole is left
            Err(Errno::INVAL) => pos,  // no SEEK_DATA: treat all as data
            Err(e) => return Err(io_err("reading", src_path)(e.into())),
        };
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(total),
            Err(_) => total,
        };
        let mut off = data;
        while off < hole {
            let len = (hole - off).min(CHUNK);
            let n = if use_cfr {
                let (mut i, mut o) = (off, off);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut i),
                    dst,
                    Some(&mut o),
                    len as usize,
                ) {
                    Ok(n) => n as u64,
                    Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                        use_cfr = false;
                        continue;
                    }
                    Err(e) => return Err(io_err("writing", dst_path)(e.into())),
                }
            } else {
                copy_chunk(src, src_path, dst, dst_path, off, len)?
            };
            if n == 0 {
                // the source shrank under us
                return Err(io_err("reading", src_path)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being copied",
                )));
            }
            off += n;
            report(off);
        }
        pos = hole;
    }
    report(total);
    Ok(())
}

fn copy_chunk(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    off: u64,
    len: u64,
) -> Result<u64> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let n = src
        .read_at(&mut buf, off)
        .map_err(io_err("reading", src_path))?;
    dst.write_all_at(&buf[..n], off)
        .map_err(io_err("writing", dst_path))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CopyOptions<'static> {
        CopyOptions::default()
    }

    #[test]
    fn temporary_files_of_killed_copies_are_removed_and_running_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::write(&src, b"data").unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = tmp.path().join(format!(".dst.vmk-tmp-{dead}-0000abcd"));
        let running = tmp
            .path()
            .join(format!(".dst.vmk-tmp-{}-0000abcd", std::process::id()));
        let other = tmp.path().join(format!(".other.vmk-tmp-{dead}-0000abcd"));
        for f in [&stale, &running, &other] {
            fs::write(f, b"partial").unwrap();
        }
        let o = CopyOptions {
            allow_full_copy: true,
            ..CopyOptions::default()
        };
        reflink_copy(&src, &tmp.path().join("dst"), &o).unwrap();
        assert!(
            !stale.exists(),
            "the killed copy's temporary file is still there"
        );
        assert!(
            running.exists(),
            "a running copy's temporary file was removed"
        );
        assert!(
            other.exists(),
            "another destination's temporary file was removed"
        );
        assert_eq!(fs::read(tmp.path().join("dst")).unwrap(), b"data");
    }

    #[test]
    fn fs_kind_names() {
        assert_eq!(FsKind::from_magic(0x9123683E), FsKind::Btrfs);
        assert_eq!(FsKind::from_magic(0x58465342).to_string(), "xfs");
        assert_eq!(FsKind::from_magic(0xEF53).to_string(), "ext2/3/4");
        assert_eq!(
            FsKind::from_magic(0x1234).to_string(),
            "unknown (magic 0x1234)"
        );
        assert!(fs_kind(Path::new("/proc/self")).unwrap().to_string() == "proc");
    }

    #[test]
    fn refuses_same_file_and_existing_destination_anywhere() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs::write(&a, b"data").unwrap();
        fs::hard_link(&a, tmp.path().join("link")).unwrap();
        let e = reflink_copy(&a, &a, &opts()).unwrap_err();
        assert!(matches!(e, FileopsError::SameFile { .. }), "{e}");
        let force = CopyOptions {
            force: true,
            ..opts()
        };
        let e = reflink_copy(&a, &tmp.path().join("link"), &force).unwrap_err();
        assert!(matches!(e, FileopsError::SameFile { .. }), "{e}");
        // a directory DST that holds the source itself
        let e = reflink_copy(&a, tmp.path(), &force).unwrap_err();
        assert!(matches!(e, FileopsError::SameFile { .. }), "{e}");
        fs::write(tmp.path().join("b"), b"other").unwrap();
        let e = reflink_copy(&a, &tmp.path().join("b"), &opts()).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read(tmp.path().join("b")).unwrap(), b"other");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 3);
    }

    #[test]
    fn full_copy_keeps_content_holes_mode_and_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src.img");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        f.write_all_at(&[7u8; 100_000], 20 << 20).unwrap();
        drop(f);
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let calls = std::cell::Cell::new(0u32);
        let last = std::cell::Cell::new((0u64, 0u64));
        let progress = |d: u64, t: u64| {
            calls.set(calls.get() + 1);
            last.set((d, t));
        };
        let o = CopyOptions {
            allow_full_copy: true,
            progress: Some(&progress),
            ..opts()
        };
        let dst = tmp.path().join("dst.img");
        let out = reflink_copy(&src, &dst, &o).unwrap();
        assert_eq!(out.bytes, 64 << 20);
        assert_eq!(out.dst, dst);
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let m = fs::metadata(&dst).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.modified().unwrap(), mtime);
        if out.method == CopyMethod::FullCopy {
            assert!(
                m.blocks() * 512 < 8 << 20,
                "holes were filled: {} blocks",
                m.blocks()
            );
            assert!(calls.get() >= 2);
            assert_eq!(last.get(), (64 << 20, 64 << 20));
        }
    }
}
