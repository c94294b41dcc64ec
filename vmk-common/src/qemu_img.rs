//! The command lines of qemu's image tools, built in one place: `qemu-img create` (new
//! disks, snapshot overlays) and `qemu-storage-daemon`'s FUSE export (a qcow2 image seen as
//! a raw file, for the loop device of `vmk mount`). Typed values in, an argv out, and the
//! same argv shown shell-quoted by every dry run.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::config::DiskFormat;
use crate::qemu::escape_opt_value;

/// `qemu-img create -q -f <format> [-F <backing format> -b <backing>] <path> [<size>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuImgCreate {
    /// The image to create.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Its virtual size in bytes (`None`: the backing file's).
    pub size: Option<u64>,
    /// The backing file and its format, for an overlay (the path is written into the
    /// overlay as given: make it absolute unless it is meant relative to the overlay).
    pub backing: Option<(PathBuf, DiskFormat)>,
}

impl QemuImgCreate {
    /// A new empty image of `size` bytes.
    pub fn new(path: impl Into<PathBuf>, format: DiskFormat, size: u64) -> QemuImgCreate {
        QemuImgCreate {
            path: path.into(),
            format,
            size: Some(size),
            backing: None,
        }
    }

    /// A qcow2 overlay of `backing` (in `backing_format`), of the backing file's size.
    pub fn overlay(
        path: impl Into<PathBuf>,
        backing: impl Into<PathBuf>,
        backing_format: DiskFormat,
    ) -> QemuImgCreate {
        QemuImgCreate {
            path: path.into(),
            format: DiskFormat::Qcow2,
            size: None,
            backing: Some((backing.into(), backing_format)),
        }
    }

    /// The arguments after `qemu-img`.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = ["create", "-q", "-f", self.format.as_str()]
            .map(OsString::from)
            .into();
        if let Some((file, format)) = &self.backing {
            a.extend(["-F", format.as_str(), "-b"].map(OsString::from));
            a.push(file.into());
        }
        a.push(self.path.clone().into());
        a.extend(self.size.map(|s| OsString::from(s.to_string())));
        a
    }

    /// The command, ready to run.
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-img");
        c.args(self.args());
        c
    }

    /// The command line as a shell takes it (for dry runs and logs).
    pub fn shell_quoted(&self) -> String {
        crate::shell::command_line(&self.command())
    }

    /// Runs it. On failure the file at `path` is removed (qemu-img's partial output, or the
    /// empty file the caller made for it), and the error carries qemu-img's message.
    pub fn run(&self) -> Result<()> {
        log::debug!("running {}", self.shell_quoted());
        let out = self
            .command()
            .stdin(Stdio::null())
            .output()
            .context("running qemu-img (install qemu-utils)");
        let failed = match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => format!(
                "qemu-img create {} failed ({}): {}",
                self.path.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("{e:#}"),
        };
        let _ = std::fs::remove_file(&self.path);
        bail!(failed)
    }
}

/// `qemu-storage-daemon` exporting `image` as the raw file `fuse_file` (writable, FUSE),
/// daemonized with its pid in `pidfile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseExport {
    /// The image to export.
    pub image: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The export: an existing regular file the daemon mounts over.
    pub fuse_file: PathBuf,
    /// Where the daemon writes its pid.
    pub pidfile: PathBuf,
}

impl FuseExport {
    /// The arguments after `qemu-storage-daemon` (paths in option values escaped like every
    /// qemu option value: `,` doubled).
    pub fn args(&self) -> Vec<OsString> {
        let opt = |parts: &[&OsStr]| parts.iter().copied().collect::<OsString>();
        vec![
            "--blockdev".into(),
            opt(&[
                "driver=file,filename=".as_ref(),
                &escape_opt_value(self.image.as_os_str()),
                ",node-name=file0".as_ref(),
            ]),
            "--blockdev".into(),
            format!("driver={},file=file0,node-name=disk0", self.format.as_str()).into(),
            "--export".into(),
            opt(&[
                "type=fuse,id=export0,node-name=disk0,mountpoint=".as_ref(),
                &escape_opt_value(self.fuse_file.as_os_str()),
                ",writable=on".as_ref(),
            ]),
            "--pidfile".into(),
            self.pidfile.clone().into(),
            "--daemonize".into(),
        ]
    }

    /// The command, ready to run (it returns once the export is up).
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-storage-daemon");
        c.args(self.args());
        c
    }

    /// The command line as a shell takes it (for dry runs and logs).
    pub fn shell_quoted(&self) -> String {
        crate::shell::command_line(&self.command())
    }
}

/// True when `path`'s first bytes are a qcow2 header naming a backing file.
pub fn qcow2_has_backing(path: &Path) -> bool {
    qcow2_backing_file(path).is_some()
}

/// The backing file name in a qcow2 header, as written there (often relative to the image).
pub fn qcow2_backing_file(path: &Path) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::ffi::OsStringExt;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 20];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(h[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(h[16..20].try_into().ok()?) as usize;
    if offset == 0 || size == 0 || size > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size];
    f.read_exact(&mut name).ok()?;
    Some(PathBuf::from(OsString::from_vec(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn words(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn a_new_disk() {
        let c = QemuImgCreate::new("/vms/a/disk 1", DiskFormat::Qcow2, 20 << 30);
        assert_eq!(
            c.shell_quoted(),
            "qemu-img create -q -f qcow2 '/vms/a/disk 1' 21474836480"
        );
        assert_eq!(c.args().len(), 6);
    }

    #[test]
    fn an_overlay_takes_the_backing_files_size() {
        let c = QemuImgCreate::overlay("/v/snap-d", "/v/d", DiskFormat::Raw);
        assert_eq!(
            c.shell_quoted(),
            "qemu-img create -q -f qcow2 -F raw -b /v/d /v/snap-d"
        );
    }

    #[test]
    fn a_failed_create_removes_its_file_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, "").unwrap();
        let c = QemuImgCreate::overlay(&p, d.path().join("no-such-backing"), DiskFormat::Raw);
        if crate::host::which("qemu-img").is_none() {
            assert!(c.run().unwrap_err().to_string().contains("qemu-utils"));
        } else {
            let e = c.run().unwrap_err().to_string();
            assert!(e.contains("qemu-img create"), "{e}");
        }
        assert!(!p.exists());
    }

    #[test]
    fn fuse_export_escapes_commas_in_paths() {
        let e = FuseExport {
            image: "/v/a,b.qcow2".into(),
            format: DiskFormat::Qcow2,
            fuse_file: "/v/a,b.qcow2.fuse".into(),
            pidfile: "/v/a,b.qcow2.qsd.pid".into(),
        };
        assert_eq!(
            words(&e.args()),
            [
                "--blockdev",
                "driver=file,filename=/v/a,,b.qcow2,node-name=file0",
                "--blockdev",
                "driver=qcow2,file=file0,node-name=disk0",
                "--export",
                "type=fuse,id=export0,node-name=disk0,mountpoint=/v/a,,b.qcow2.fuse,writable=on",
                "--pidfile",
                "/v/a,b.qcow2.qsd.pid",
                "--daemonize"
            ]
        );
        let odd = FuseExport {
            image: PathBuf::from(OsStr::from_bytes(b"/v/\xff")),
            ..e
        };
        assert_eq!(
            odd.args()[1].as_bytes(),
            b"driver=file,filename=/v/\xff,node-name=file0"
        );
    }

    #[test]
    fn qcow2_headers() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!(qcow2_backing_file(&raw), None);
        assert!(!qcow2_has_backing(&raw));
        // a minimal qcow2 header: magic, version, backing offset 32, size 4, then the name
        let mut h = b"QFI\xfb\0\0\0\x03".to_vec();
        h.extend(32u64.to_be_bytes());
        h.extend(4u32.to_be_bytes());
        h.resize(32, 0);
        h.extend(b"base");
        let ov = d.path().join("ov");
        std::fs::write(&ov, &h).unwrap();
        assert_eq!(qcow2_backing_file(&ov), Some(PathBuf::from("base")));
        assert!(qcow2_has_backing(&ov));
    }
}
