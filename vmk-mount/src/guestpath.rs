//! Paths inside a guest image, resolved inside it: nothing a guest image holds (a symlink
//! `/root -> /etc`, an fstab mount point `/../../etc`) may lead vmk, often root, to a file
//! or directory of the host.
//!
//! Every lookup below a guest root goes through `openat2(2)` with `RESOLVE_IN_ROOT` (the
//! guest's symlinks and `..` are taken as the guest would take them, with the mount point as
//! `/`) or, where following a link makes no sense (a file vmk creates or changes, a mount
//! point), `RESOLVE_NO_SYMLINKS`. Directories and files are created through directory file
//! descriptors (`mkdirat`, `openat2` with `O_NOFOLLOW`), never through a joined host path,
//! and mounts are made on the opened directory (`/proc/self/fd/N`), so no path race remains.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, Stat};

/// How many times a lookup is retried when the kernel reports a concurrent rename (EAGAIN).
const RETRIES: usize = 16;

/// `openat2` retried on EAGAIN (RESOLVE_IN_ROOT/BENEATH fail so when a rename races).
fn openat2_retry(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < RETRIES => tries += 1,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// The root directory of a mounted guest filesystem, held open.
#[derive(Debug)]
pub struct GuestRoot {
    fd: OwnedFd,
    path: PathBuf,
}

impl GuestRoot {
    /// Opens the mount point `path` (a host path vmk chose; its last component must not be a
    /// symlink).
    pub fn open(path: &Path) -> Result<GuestRoot> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", path.display()))?;
        Ok(GuestRoot {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path of the root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the guest path `guest` (absolute or not, always taken from the guest's `/`)
    /// resolved inside the root, the guest's symlinks followed as the guest sees them.
    pub fn open_in_root(&self, guest: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = guest.strip_prefix("/").unwrap_or(guest);
        openat2_retry(
            self.fd(),
            rel,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Opens the directory `guest` inside the root (readable, for `*at` calls, `fchmod`…).
    pub fn open_dir(&self, guest: &Path) -> io::Result<OwnedFd> {
        self.open_in_root(guest, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// Whether `guest` exists inside the root (as the guest would resolve it).
    pub fn exists(&self, guest: &Path) -> bool {
        self.open_in_root(guest, OFlags::PATH).is_ok()
    }

    /// Reads the regular file `guest` (resolved inside the root); `None` when it is missing.
    pub fn read_file(&self, guest: &Path) -> Result<Option<Vec<u8>>> {
        let fd = match self.open_in_root(guest, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("opening {} in the image", guest.display()))
            }
        };
        expect_type(&fd, FileType::RegularFile, guest)?;
        let mut data = Vec::new();
        io::Read::read_to_end(&mut File::from(fd), &mut data)
            .with_context(|| format!("reading {} in the image", guest.display()))?;
        Ok(Some(data))
    }

    /// Opens the mount point `guest` (a directory) for mounting on: every component must be
    /// a directory, none a symlink (the guest's `/proc -> /host/path` is refused, not
    /// followed).
    pub fn open_mount_point(&self, guest: &Path) -> Result<OwnedFd> {
        let rel = guest.strip_prefix("/").unwrap_or(guest);
        let fd = openat2_retry(
            self.fd(),
            rel,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| refusal(e, guest))?;
        self.check_inside(&fd, guest)?;
        Ok(fd)
    }

    /// Fails unless the opened `fd` is this root or below it (by the kernel's name of
    /// both); returns its path as seen through [`GuestRoot::path`].
    pub fn check_inside(&self, fd: &OwnedFd, guest: &Path) -> Result<PathBuf> {
        let root = fd_path_target(&self.fd)?;
        let real = fd_path_target(fd)?;
        match real.strip_prefix(&root) {
            Ok(rel) => Ok(self.path.join(rel)),
            Err(_) => bail!(
                "{} in the image resolves to {}, outside {}: refused",
                guest.display(),
                real.display(),
                self.path.display()
            ),
        }
    }
}

/// An error of opening a guest path, saying why when it is a symlink or not a directory.
fn refusal(e: io::Error, guest: &Path) -> anyhow::Error {
    let why = match e.raw_os_error() {
        Some(n) if n == rustix::io::Errno::LOOP.raw_os_error() => {
            "it (or a directory on the way) is a symlink, which vmk does not follow there"
        }
        Some(n) if n == rustix::io::Errno::NOTDIR.raw_os_error() => "it is not a directory",
        Some(n) if n == rustix::io::Errno::NOENT.raw_os_error() => "it does not exist",
        Some(n) if n == rustix::io::Errno::XDEV.raw_os_error() => "it leaves the image",
        _ => "",
    };
    let e = anyhow::Error::from(e);
    if why.is_empty() {
        e.context(format!("opening {} in the image", guest.display()))
    } else {
        e.context(format!("refusing {} in the image: {why}", guest.display()))
    }
}

/// `/proc/self/fd/N`: the path that names what `fd` refers to, for `mount(2)`.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Where `fd` is now, as the kernel names it.
pub fn fd_path_target(fd: &impl AsRawFd) -> Result<PathBuf> {
    let p = fd_path(fd);
    std::fs::read_link(&p).with_context(|| format!("reading {}", p.display()))
}

/// Fails unless `fd` is of type `want`.
fn expect_type(fd: &impl AsFd, want: FileType, what: &Path) -> Result<Stat> {
    let st = rustix::fs::fstat(fd).with_context(|| format!("examining {}", what.display()))?;
    let got = FileType::from_raw_mode(st.st_mode);
    if got != want {
        bail!(
            "{} in the image is a {} where vmk expects a {}: refused",
            what.display(),
            type_name(got),
            type_name(want)
        );
    }
    Ok(st)
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Checks that `name` is one plain path component (no `/`, not `.` or `..`).
fn one_component(name: &OsStr) -> Result<&Path> {
    let p = Path::new(name);
    let mut c = p.components();
    match (c.next(), c.next()) {
        (Some(Component::Normal(_)), None) if !name.as_bytes().contains(&b'/') => Ok(p),
        _ => bail!("{:?} is not a plain file name", name),
    }
}

/// Opens the entry `name` of `dir` without following a symlink anywhere (ELOOP).
fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    openat2_retry(
        dir,
        name,
        flags,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens the directory `name` in `dir`, creating it with `mode` when missing; a symlink
/// there is refused. `what` names it in messages (its guest path).
pub fn ensure_dir(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, what: &Path) -> Result<OwnedFd> {
    let name = one_component(name)?;
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", what.display())),
    }
    let fd = open_beneath(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| refusal(e, what))?;
    expect_type(&fd, FileType::Directory, what)?;
    Ok(fd)
}

/// Opens the regular file `name` in `dir` with `flags` (`O_CREAT` creates it with `mode`);
/// a symlink, fifo or device there is refused, never followed or opened for writing.
pub fn open_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: u32,
    what: &Path,
) -> Result<Option<File>> {
    let name = one_component(name)?;
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(mode)
    } else {
        Mode::empty()
    };
    // O_NONBLOCK: opening a fifo must not hang; it has no effect on regular files.
    let fd = match open_beneath(dir, name, flags | OFlags::NOFOLLOW | OFlags::NONBLOCK, mode) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refusal(e, what)),
    };
    expect_type(&fd, FileType::RegularFile, what)?;
    let file = File::from(fd);
    // Back to blocking I/O for the regular file.
    rustix::fs::fcntl_setfl(&file, rustix::fs::fcntl_getfl(&file)? - OFlags::NONBLOCK)?;
    Ok(Some(file))
}

/// Removes the entry `name` of `dir` (a symlink is removed itself, its target untouched);
/// false when there was none.
pub fn remove_file(dir: BorrowedFd<'_>, name: &OsStr, what: &Path) -> Result<bool> {
    let name = one_component(name)?;
    match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", what.display())),
    }
}

/// Sets mode and owner of an open file or directory (never through its path).
pub fn set_owner_mode(fd: &impl AsFd, mode: u32, uid: u32, gid: u32, what: &Path) -> Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
        .with_context(|| format!("setting the mode of {}", what.display()))?;
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .with_context(|| format!("setting the owner of {}", what.display()))
}

/// A guest path from data (an fstab line) made relative to the guest's `/`: it must be
/// absolute; `.` and repeated `/` go; `..` is refused (lexically, before any lookup).
pub fn normalize_guest_path(p: &str) -> std::result::Result<PathBuf, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(format!("{p:?} contains `..`")),
            Component::Prefix(_) => return Err(format!("{p:?} is not a Linux path")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn guest_paths_from_data_are_normalised_and_climbing_is_refused() {
        assert_eq!(normalize_guest_path("/").unwrap(), PathBuf::new());
        assert_eq!(
            normalize_guest_path("//boot/./efi/").unwrap(),
            PathBuf::from("boot/efi")
        );
        assert!(normalize_guest_path("/../../etc").is_err());
        assert!(normalize_guest_path("/boot/../..").is_err());
        assert!(normalize_guest_path("boot").is_err());
        assert!(normalize_guest_path("").is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        let outside = host.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = host.path().join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        // An absolute link to the host's outside dir, and one climbing there.
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../../../outside", root.join("climb")).unwrap();
        let r = GuestRoot::open(&root).unwrap();
        // Resolved in the root: /<host>/outside does not exist in the guest.
        assert!(r.open_dir(&outside).is_err());
        assert!(r.open_dir(Path::new("/abs")).is_err());
        assert!(r.open_dir(Path::new("/climb")).is_err());
        std::fs::create_dir(root.join("outside")).unwrap();
        // `climb` now reaches the guest's own /outside.
        let fd = r.open_dir(Path::new("/climb")).unwrap();
        assert_eq!(fd_path_target(&fd).unwrap(), root.join("outside"));
        // Mount points never follow a symlink.
        let e = r.open_mount_point(Path::new("/climb")).unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert!(r.open_mount_point(Path::new("/real")).is_ok());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    }

    #[test]
    fn files_are_never_opened_through_a_symlink() {
        let host = tempfile::tempdir().unwrap();
        let canary = host.path().join("canary");
        std::fs::write(&canary, "host").unwrap();
        let dir = host.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        symlink(&canary, dir.join("f")).unwrap();
        symlink(host.path(), dir.join("sub")).unwrap();
        let d = rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let e = open_file(
            d.as_fd(),
            OsStr::new("f"),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            0o600,
            Path::new("/f"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        let e = ensure_dir(d.as_fd(), OsStr::new("sub"), 0o700, Path::new("/sub")).unwrap_err();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
        assert!(open_file(
            d.as_fd(),
            OsStr::new("../canary"),
            OFlags::RDONLY,
            0,
            Path::new("x")
        )
        .is_err());
        assert!(remove_file(d.as_fd(), OsStr::new("f"), Path::new("/f")).unwrap());
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host");
    }
}
