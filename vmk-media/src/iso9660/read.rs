//! Reads files out of ISO 9660 images: enough to take an installer's kernel and initrd off a
//! SUSE-layout medium (`/boot/<arch>/loader/linux`) without mounting it.
//!
//! Names are matched as a user would type them: the Rock Ridge name when the image has
//! one, else the primary name without its `;1` version and trailing dot, both compared
//! without regard to case. Joliet is not read: every medium that has Joliet names also
//! has primary names, and SUSE media carry Rock Ridge.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::SECTOR;

/// Architectures whose SUSE loader layout vmk knows, in the order it tries them after the
/// host's own.
pub const KNOWN_ARCHES: [&str; 4] = ["x86_64", "aarch64", "ppc64le", "s390x"];

/// An open ISO 9660 image.
#[derive(Debug)]
pub struct IsoImage {
    file: File,
    path: PathBuf,
    root: IsoEntry,
    /// Bytes to skip at the start of each system use field (from the `SP` entry), when the
    /// image uses SUSP/Rock Ridge.
    susp_skip: Option<usize>,
    volume_id: String,
}

/// A file or directory in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// The name to show: Rock Ridge when present, else the primary name in lower case
    /// without `;1` (as Linux shows it).
    pub name: String,
    /// The primary (ISO 9660) identifier as recorded.
    pub iso_name: String,
    /// First sector of the data.
    pub lba: u32,
    /// Size in bytes.
    pub size: u64,
    /// True for directories.
    pub is_dir: bool,
}

impl IsoEntry {
    /// True when this entry is what a user means by `component`.
    pub fn matches(&self, component: &str) -> bool {
        self.name.eq_ignore_ascii_case(component)
            || plain_iso_name(&self.iso_name).eq_ignore_ascii_case(component)
    }
}

/// `LINUX.;1` → `LINUX`: drops the version and the dot ISO 9660 requires before it.
fn plain_iso_name(name: &str) -> &str {
    let name = name.split_once(';').map_or(name, |(n, _)| n);
    name.strip_suffix('.').unwrap_or(name)
}

impl IsoImage {
    /// Opens `path` and reads its primary volume descriptor.
    pub fn open(path: &Path) -> Result<IsoImage> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut image = IsoImage {
            file,
            path: path.to_path_buf(),
            root: IsoEntry {
                name: String::new(),
                iso_name: String::new(),
                lba: 0,
                size: 0,
                is_dir: true,
            },
            susp_skip: None,
            volume_id: String::new(),
        };
        let pvd = image.primary_descriptor()?;
        image.volume_id = String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string();
        let root = parse_record(&pvd[156..190]).context("bad root directory record")?;
        image.root = IsoEntry {
            lba: root.lba,
            size: root.size,
            ..image.root
        };
        image.susp_skip = image.detect_susp()?;
        Ok(image)
    }

    /// The volume label.
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// True when the image carries Rock Ridge (SUSP) entries.
    pub fn has_rock_ridge(&self) -> bool {
        self.susp_skip.is_some()
    }

    fn primary_descriptor(&self) -> Result<Vec<u8>> {
        let not_iso = || {
            format!(
                "{} is not an ISO 9660 image (no primary volume descriptor at sector 16)",
                self.path.display()
            )
        };
        for sector in 16..80u64 {
            let d = self
                .read_at(sector * SECTOR as u64, SECTOR)
                .with_context(not_iso)?;
            if &d[1..6] != b"CD001" {
                bail!(not_iso());
            }
            match d[0] {
                1 => {
                    let block = u16::from_le_bytes([d[128], d[129]]);
                    if usize::from(block) != SECTOR {
                        bail!(
                            "{}: logical block size {block} is not supported",
                            self.path.display()
                        );
                    }
                    return Ok(d);
                }
                255 => break,
                _ => {}
            }
        }
        bail!(not_iso())
    }

    /// SUSP is in use when the root's `.` record starts its system use field with `SP`.
    fn detect_susp(&self) -> Result<Option<usize>> {
        let extent = self.read_at(u64::from(self.root.lba) * SECTOR as u64, SECTOR)?;
        let len = usize::from(extent[0]);
        if len < 34 || len > extent.len() {
            return Ok(None);
        }
        let record = &extent[..len];
        let su = &record[system_use_start(record)..];
        if su.len() >= 7 && &su[..2] == b"SP" && su[4] == 0xbe && su[5] == 0xef {
            return Ok(Some(usize::from(su[6])));
        }
        Ok(None)
    }

    /// The root directory.
    pub fn root(&self) -> &IsoEntry {
        &self.root
    }

    /// The entries of directory `dir`, without `.` and `..`.
    pub fn read_dir(&self, dir: &IsoEntry) -> Result<Vec<IsoEntry>> {
        if !dir.is_dir {
            bail!("{} is not a directory", dir.name);
        }
        let data = self.read_at(u64::from(dir.lba) * SECTOR as u64, dir.size as usize)?;
        let mut entries = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let len = usize::from(data[pos]);
            if len == 0 {
                // Records never cross sectors: the rest of this sector is padding.
                pos = (pos / SECTOR + 1) * SECTOR;
                continue;
            }
            let record = data.get(pos..pos + len).with_context(|| {
                format!(
                    "{}: directory record runs past its extent",
                    self.path.display()
                )
            })?;
            pos += len;
            let raw = parse_record(record)?;
            if raw.id == [0] || raw.id == [1] {
                continue;
            }
            let rr = match self.susp_skip {
                Some(skip) => self.rock_ridge(record, skip)?,
                None => RockRidge::default(),
            };
            if rr.relocated {
                continue;
            }
            let iso_name = String::from_utf8_lossy(&raw.id).into_owned();
            // Without Rock Ridge, show names as Linux does (map=normal): lower case, no `;1`.
            let name = rr
                .name
                .unwrap_or_else(|| plain_iso_name(&iso_name).to_ascii_lowercase());
            entries.push(IsoEntry {
                name,
                iso_name,
                lba: raw.lba,
                size: raw.size,
                is_dir: raw.is_dir,
            });
        }
        Ok(entries)
    }

    /// Rock Ridge facts from one record's system use field, following `CE` continuations.
    fn rock_ridge(&self, record: &[u8], skip: usize) -> Result<RockRidge> {
        let mut rr = RockRidge::default();
        let mut area = record
            .get(system_use_start(record) + skip..)
            .unwrap_or(&[])
            .to_vec();
        let mut name = String::new();
        let mut has_name = false;
        for _ in 0..16 {
            let mut next = None;
            let mut pos = 0;
            while pos + 4 <= area.len() {
                let (sig, len) = (&area[pos..pos + 2], usize::from(area[pos + 2]));
                if len < 4 || pos + len > area.len() {
                    break;
                }
                let e = &area[pos..pos + len];
                match sig {
                    b"NM" if len >= 5 && e[4] & 0x06 == 0 => {
                        name.push_str(&String::from_utf8_lossy(&e[5..]));
                        has_name = true;
                    }
                    b"RE" => rr.relocated = true,
                    b"CE" if len >= 28 => {
                        let block = u64::from(u32::from_le_bytes(e[4..8].try_into()?));
                        let offset = u64::from(u32::from_le_bytes(e[12..16].try_into()?));
                        let length = u32::from_le_bytes(e[20..24].try_into()?) as usize;
                        next = Some((block * SECTOR as u64 + offset, length.min(SECTOR)));
                    }
                    b"ST" => break,
                    _ => {}
                }
                pos += len;
            }
            match next {
                Some((at, length)) => area = self.read_at(at, length)?,
                None => break,
            }
        }
        rr.name = has_name.then_some(name);
        Ok(rr)
    }

    /// Finds `path` (`boot/x86_64/loader/linux`), matching each part as [`IsoEntry::matches`] does.
    pub fn lookup(&self, path: &str) -> Result<Option<IsoEntry>> {
        let mut current = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !current.is_dir {
                return Ok(None);
            }
            let entries = self.read_dir(&current)?;
            // An exact Rock Ridge match wins over a case-insensitive one.
            let found = entries
                .iter()
                .find(|e| e.name == part)
                .or_else(|| entries.iter().find(|e| e.matches(part)));
            match found {
                Some(e) => current = e.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Reads a whole file into memory.
    pub fn read_file(&self, entry: &IsoEntry) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.copy_file(entry, &mut out)?;
        Ok(out)
    }

    /// Copies a file's bytes into `out`.
    pub fn copy_file(&self, entry: &IsoEntry, out: &mut impl Write) -> Result<()> {
        if entry.is_dir {
            bail!("{} is a directory", entry.name);
        }
        let mut reader = ExtentReader {
            file: &self.file,
            offset: u64::from(entry.lba) * SECTOR as u64,
            left: entry.size,
        };
        let copied = io::copy(&mut reader, out)
            .with_context(|| format!("reading {} from {}", entry.name, self.path.display()))?;
        if copied != entry.size {
            bail!(
                "{}: {} is cut short ({copied} of {} bytes): is the image complete?",
                self.path.display(),
                entry.name,
                entry.size
            );
        }
        Ok(())
    }

    /// Copies a file out of the image to `dest` (created or replaced).
    pub fn extract(&self, entry: &IsoEntry, dest: &Path) -> Result<()> {
        let file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut out = io::BufWriter::new(file);
        self.copy_file(entry, &mut out)?;
        out.flush()
            .with_context(|| format!("writing {}", dest.display()))
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).with_context(|| {
            format!(
                "reading {len} bytes at offset {offset} of {}",
                self.path.display()
            )
        })?;
        Ok(buf)
    }
}

#[derive(Debug, Default)]
struct RockRidge {
    name: Option<String>,
    relocated: bool,
}

struct RawRecord {
    lba: u32,
    size: u64,
    is_dir: bool,
    id: Vec<u8>,
}

fn parse_record(r: &[u8]) -> Result<RawRecord> {
    if r.len() < 34 || r.len() < 33 + usize::from(r[32]) {
        bail!("directory record of {} bytes is too short", r.len());
    }
    Ok(RawRecord {
        lba: u32::from_le_bytes(r[2..6].try_into()?),
        size: u64::from(u32::from_le_bytes(r[10..14].try_into()?)),
        is_dir: r[25] & 0x02 != 0,
        id: r[33..33 + usize::from(r[32])].to_vec(),
    })
}

/// Offset of the system use field: after the identifier and its padding byte.
fn system_use_start(record: &[u8]) -> usize {
    let id_len = usize::from(record[32]);
    (33 + id_len + (1 - id_len % 2)).min(record.len())
}

/// Reads one extent through positioned reads (the image file is shared, not seeked).
struct ExtentReader<'a> {
    file: &'a File,
    offset: u64,
    left: u64,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.left.min(1 << 20) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The installer kernel and initrd found on a medium.
#[derive(Debug, Clone)]
pub struct Loader {
    /// The architecture whose loader was found.
    pub arch: String,
    /// Path of the kernel in the image (`boot/x86_64/loader/linux`).
    pub kernel_path: String,
    /// Path of the initrd in the image.
    pub initrd_path: String,
    /// The kernel.
    pub kernel: IsoEntry,
    /// The initrd.
    pub initrd: IsoEntry,
}

/// The host's architecture as SUSE media name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Finds the installer kernel and initrd: `boot/<arch>/loader/{linux,initrd}` (x86_64,
/// aarch64) or `boot/<arch>/{linux,initrd}` (ppc64le, s390x). With `arch` empty, tries the
/// host's architecture first, then [`KNOWN_ARCHES`].
pub fn find_loader(iso: &IsoImage, arch: Option<&str>) -> Result<Loader> {
    let candidates: Vec<String> = match arch.filter(|a| !a.is_empty()) {
        Some(a) => vec![a.to_string()],
        None => {
            let mut v = vec![host_arch().to_string()];
            v.extend(
                KNOWN_ARCHES
                    .iter()
                    .map(|a| a.to_string())
                    .filter(|a| a != host_arch()),
            );
            v
        }
    };
    for a in &candidates {
        for dir in [format!("boot/{a}/loader"), format!("boot/{a}")] {
            let (kp, ip) = (format!("{dir}/linux"), format!("{dir}/initrd"));
            let (Some(kernel), Some(initrd)) = (iso.lookup(&kp)?, iso.lookup(&ip)?) else {
                continue;
            };
            if kernel.is_dir || initrd.is_dir {
                continue;
            }
            return Ok(Loader {
                arch: a.clone(),
                kernel_path: kp,
                initrd_path: ip,
                kernel,
                initrd,
            });
        }
    }
    let present: Vec<String> = match iso.lookup("boot")? {
        Some(boot) if boot.is_dir => iso.read_dir(&boot)?.into_iter().map(|e| e.name).collect(),
        _ => Vec::new(),
    };
    let found = if present.is_empty() {
        "it has no /boot directory".to_string()
    } else {
        format!("its /boot holds: {}", present.join(", "))
    };
    match arch.filter(|a| !a.is_empty()) {
        Some(a) => bail!(
            "{}: no installer for {a} (looked for boot/{a}/loader/linux and initrd, and \
             boot/{a}/linux and initrd); {found}; set VMK_ARCH to the medium's architecture",
            iso.path.display()
        ),
        None => bail!(
            "{}: no installer kernel and initrd for {} (looked in boot/<arch>/loader/ and \
             boot/<arch>/); {found}; is it a SUSE installation medium?",
            iso.path.display(),
            candidates.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::write::IsoBuilder;
    use super::*;

    fn roundtrip(b: &IsoBuilder) -> (tempfile::TempDir, IsoImage) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.iso");
        b.write_file(&path).unwrap();
        let iso = IsoImage::open(&path).unwrap();
        (dir, iso)
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let mut b = IsoBuilder::new("SUSE").unwrap();
        let kernel: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        b.add_bytes("boot/x86_64/loader/linux", kernel.clone())
            .unwrap();
        b.add_bytes("boot/x86_64/loader/initrd", "initrd").unwrap();
        b.add_bytes("README-with-long-name.txt", "hi").unwrap();
        let (_d, iso) = roundtrip(&b);
        assert!(iso.has_rock_ridge());
        assert_eq!(iso.volume_id(), "SUSE");
        let names: Vec<String> = iso
            .read_dir(iso.root())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["boot", "README-with-long-name.txt"]);
        let loader = find_loader(&iso, None).unwrap();
        assert_eq!(loader.arch, "x86_64");
        assert_eq!(iso.read_file(&loader.kernel).unwrap(), kernel);
        assert_eq!(iso.read_file(&loader.initrd).unwrap(), b"initrd");
        // Primary names work too, in any case.
        assert!(iso.lookup("BOOT/X86_64/LOADER/LINUX").unwrap().is_some());
        assert!(iso.lookup("boot/x86_64/loader/nothing").unwrap().is_none());
    }

    #[test]
    fn finds_other_arches_and_their_layouts() {
        let mut b = IsoBuilder::new("S390").unwrap();
        b.add_bytes("boot/s390x/linux", "k").unwrap();
        b.add_bytes("boot/s390x/initrd", "i").unwrap();
        let (_d, iso) = roundtrip(&b);
        let loader = find_loader(&iso, None).unwrap();
        assert_eq!(
            (loader.arch.as_str(), loader.kernel_path.as_str()),
            ("s390x", "boot/s390x/linux")
        );
        let err = find_loader(&iso, Some("aarch64")).unwrap_err().to_string();
        assert!(err.contains("no installer for aarch64"), "{err}");
        assert!(err.contains("s390x"), "{err}");
    }

    #[test]
    fn missing_loader_and_non_iso_are_clear_errors() {
        let mut b = IsoBuilder::new("X").unwrap();
        b.add_bytes("file", "x").unwrap();
        let (d, iso) = roundtrip(&b);
        let err = find_loader(&iso, None).unwrap_err().to_string();
        assert!(err.contains("no /boot directory"), "{err}");
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0u8; 40 * SECTOR]).unwrap();
        let err = format!("{:#}", IsoImage::open(&junk).unwrap_err());
        assert!(err.contains("not an ISO 9660 image"), "{err}");
    }
}
