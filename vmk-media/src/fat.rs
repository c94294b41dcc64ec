//! Writes a 1.44 MB FAT12 floppy image holding a few files in its root directory: the
//! autoyast profile on a floppy, as older installers look for it there, made without
//! mkfs.fat, mtools or a loop mount.
//!
//! Every file gets an 8.3 name (`AUTOINST.XML`) and, when its real name differs from that
//! (even only in case), VFAT long-name entries carrying the real name.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::clock::Timestamp;

const SECTOR: usize = 512;
const TOTAL_SECTORS: usize = 2880;
const FAT_SECTORS: usize = 9;
const ROOT_ENTRIES: usize = 224;
const ROOT_SECTORS: usize = ROOT_ENTRIES * 32 / SECTOR;
const FIRST_DATA_SECTOR: usize = 1 + 2 * FAT_SECTORS + ROOT_SECTORS;
const CLUSTERS: usize = TOTAL_SECTORS - FIRST_DATA_SECTOR;
const MEDIA: u8 = 0xf0;

/// Builds a 1.44 MB FAT12 floppy image.
#[derive(Debug)]
pub struct FloppyBuilder {
    label: [u8; 11],
    time: Timestamp,
    files: Vec<(String, Vec<u8>)>,
}

impl FloppyBuilder {
    /// An empty floppy with volume label `label` (up to 11 characters, stored upper case).
    pub fn new(label: &str) -> Result<FloppyBuilder> {
        if label.len() > 11
            || !label
                .bytes()
                .all(|b| short_name_char(b.to_ascii_uppercase()))
        {
            bail!("floppy label {label:?} must be at most 11 characters of A-Z, 0-9 and _-");
        }
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.to_ascii_uppercase().as_bytes());
        Ok(FloppyBuilder {
            label: l,
            time: Timestamp::for_new_image(),
            files: Vec::new(),
        })
    }

    /// Sets the time recorded for every file (default: `SOURCE_DATE_EPOCH` or now).
    pub fn set_time(&mut self, time: Timestamp) {
        self.time = time;
    }

    /// Adds a file to the root directory.
    pub fn add_bytes(&mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Result<()> {
        if name.is_empty()
            || name.len() > 255
            || name.contains(['/', '\\', '\0'])
            || name.starts_with('.')
        {
            bail!("floppy file name {name:?} is not allowed (1-255 characters, no / \\ or leading dot)");
        }
        if self.files.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            bail!("floppy file {name:?} was added twice");
        }
        self.files.push((name.to_string(), bytes.into()));
        Ok(())
    }

    /// The whole image, 1 474 560 bytes.
    pub fn build(&self) -> Result<Vec<u8>> {
        let mut img = vec![0u8; TOTAL_SECTORS * SECTOR];
        img[..SECTOR].copy_from_slice(&self.boot_sector());
        let mut fat = vec![0u8; FAT_SECTORS * SECTOR];
        set_fat12(&mut fat, 0, 0xf00 | u16::from(MEDIA));
        set_fat12(&mut fat, 1, 0xfff);
        let mut dir: Vec<[u8; 32]> = vec![self.label_entry()];
        let mut next_cluster = 2usize;
        let mut shorts: Vec<[u8; 11]> = Vec::new();
        for (name, data) in &self.files {
            let (short, needs_long) = short_name(name, &shorts);
            shorts.push(short);
            let clusters = data.len().div_ceil(SECTOR);
            if next_cluster - 2 + clusters > CLUSTERS {
                bail!(
                    "the files do not fit a 1.44 MB floppy ({name} is {} bytes)",
                    data.len()
                );
            }
            let first = if clusters == 0 { 0 } else { next_cluster };
            for i in 0..clusters {
                let c = next_cluster + i;
                let value = if i + 1 == clusters {
                    0xfff
                } else {
                    c as u16 + 1
                };
                set_fat12(&mut fat, c, value);
                let at = (FIRST_DATA_SECTOR + c - 2) * SECTOR;
                let chunk = &data[i * SECTOR..((i + 1) * SECTOR).min(data.len())];
                img[at..at + chunk.len()].copy_from_slice(chunk);
            }
            next_cluster += clusters;
            if needs_long {
                dir.extend(long_name_entries(name, &short));
            }
            dir.push(self.file_entry(&short, first as u16, data.len() as u32));
        }
        if dir.len() > ROOT_ENTRIES {
            bail!(
                "too many files for a floppy's root directory ({} entries, at most {ROOT_ENTRIES})",
                dir.len()
            );
        }
        for copy in 0..2 {
            let at = (1 + copy * FAT_SECTORS) * SECTOR;
            img[at..at + fat.len()].copy_from_slice(&fat);
        }
        let root = (1 + 2 * FAT_SECTORS) * SECTOR;
        for (i, entry) in dir.iter().enumerate() {
            img[root + 32 * i..root + 32 * (i + 1)].copy_from_slice(entry);
        }
        Ok(img)
    }

    /// Writes the image to `path` (created or replaced).
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let img = self.build()?;
        std::fs::write(path, img).with_context(|| format!("writing {}", path.display()))
    }

    fn boot_sector(&self) -> [u8; SECTOR] {
        let mut b = [0u8; SECTOR];
        b[..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        b[3..11].copy_from_slice(b"MSWIN4.1");
        b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
        b[13] = 1; // sectors per cluster
        b[14..16].copy_from_slice(&1u16.to_le_bytes()); // reserved sectors
        b[16] = 2; // FATs
        b[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
        b[19..21].copy_from_slice(&(TOTAL_SECTORS as u16).to_le_bytes());
        b[21] = MEDIA;
        b[22..24].copy_from_slice(&(FAT_SECTORS as u16).to_le_bytes());
        b[24..26].copy_from_slice(&18u16.to_le_bytes()); // sectors per track
        b[26..28].copy_from_slice(&2u16.to_le_bytes()); // heads
        b[38] = 0x29; // extended boot signature
        b[39..43].copy_from_slice(&self.serial().to_le_bytes());
        b[43..54].copy_from_slice(&self.label);
        b[54..62].copy_from_slice(b"FAT12   ");
        // Not bootable: `int 18h` asks the firmware for the next boot device, then halt.
        b[62..67].copy_from_slice(&[0xcd, 0x18, 0xf4, 0xeb, 0xfd]);
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    fn serial(&self) -> u32 {
        let (date, time) = dos_date_time(&self.time);
        (u32::from(date) << 16 | u32::from(time)) ^ 0x564d_4b00
    }

    fn label_entry(&self) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(&self.label);
        e[11] = 0x08;
        let (date, time) = dos_date_time(&self.time);
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
        e
    }

    fn file_entry(&self, short: &[u8; 11], cluster: u16, size: u32) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(short);
        e[11] = 0x20; // archive
        let (date, time) = dos_date_time(&self.time);
        e[14..16].copy_from_slice(&time.to_le_bytes());
        e[16..18].copy_from_slice(&date.to_le_bytes());
        e[18..20].copy_from_slice(&date.to_le_bytes());
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
        e[26..28].copy_from_slice(&cluster.to_le_bytes());
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }
}

fn set_fat12(fat: &mut [u8], cluster: usize, value: u16) {
    let at = cluster * 3 / 2;
    if cluster % 2 == 0 {
        fat[at] = value as u8;
        fat[at + 1] = (fat[at + 1] & 0xf0) | ((value >> 8) as u8 & 0x0f);
    } else {
        fat[at] = (fat[at] & 0x0f) | ((value as u8 & 0x0f) << 4);
        fat[at + 1] = (value >> 4) as u8;
    }
}

fn dos_date_time(t: &Timestamp) -> (u16, u16) {
    let year = (t.year - 1980).clamp(0, 127) as u16;
    let date = year << 9 | u16::from(t.month) << 5 | u16::from(t.day);
    let time = u16::from(t.hour) << 11 | u16::from(t.minute) << 5 | u16::from(t.second / 2);
    (date, time)
}

fn short_name_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'()-@^_`{}~ ".contains(&b)
}

/// The 8.3 name for `name`, unique among `taken`, and whether long-name entries are needed.
fn short_name(name: &str, taken: &[[u8; 11]]) -> ([u8; 11], bool) {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let clean = |s: &str| -> (Vec<u8>, bool) {
        let mut lossy = false;
        let mut out = Vec::new();
        for c in s.chars() {
            let u = c.to_ascii_uppercase();
            if u.is_ascii() && short_name_char(u as u8) && u != ' ' {
                out.push(u as u8);
            } else if c != ' ' && c != '.' {
                out.push(b'_');
                lossy = true;
            } else {
                lossy = true;
            }
        }
        (out, lossy)
    };
    let (b, lossy_b) = clean(base);
    let (e, lossy_e) = clean(ext);
    let fits = !lossy_b && !lossy_e && b.len() <= 8 && e.len() <= 3 && !b.is_empty();
    let make = |b: &[u8], e: &[u8]| {
        let mut s = [b' '; 11];
        s[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
        s[8..8 + e.len().min(3)].copy_from_slice(&e[..e.len().min(3)]);
        s
    };
    if fits {
        let s = make(&b, &e);
        if !taken.contains(&s) {
            let exact = display_short(&s) == name;
            return (s, !exact);
        }
    }
    for n in 1.. {
        let tail = format!("~{n}");
        let keep = b.len().min(8 - tail.len());
        let mut nb = b[..keep].to_vec();
        nb.extend(tail.as_bytes());
        let s = make(&nb, &e);
        if !taken.contains(&s) {
            return (s, true);
        }
    }
    unreachable!("some numeric tail is always free")
}

fn display_short(s: &[u8; 11]) -> String {
    let base = String::from_utf8_lossy(&s[..8]).trim_end().to_string();
    let ext = String::from_utf8_lossy(&s[8..]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// VFAT long-name entries for `name`, in the order they are stored (last part first).
fn long_name_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let checksum = short
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c));
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if units.len() % 13 != 0 {
        units.push(0);
        while units.len() % 13 != 0 {
            units.push(0xffff);
        }
    }
    let parts = units.len() / 13;
    let mut entries = Vec::new();
    for seq in (1..=parts).rev() {
        let chunk = &units[(seq - 1) * 13..seq * 13];
        let mut e = [0u8; 32];
        e[0] = seq as u8 | if seq == parts { 0x40 } else { 0 };
        e[11] = 0x0f;
        e[13] = checksum;
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (unit, at) in chunk.iter().zip(slots) {
            e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        entries.push(e);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_fat12(fat: &[u8], cluster: usize) -> u16 {
        let at = cluster * 3 / 2;
        let v = u16::from_le_bytes([fat[at], fat[at + 1]]);
        if cluster % 2 == 0 {
            v & 0xfff
        } else {
            v >> 4
        }
    }

    #[test]
    fn fat12_packing_round_trips() {
        let mut fat = vec![0u8; 32];
        for (c, v) in [(2, 0x123), (3, 0xabc), (4, 0xfff), (5, 0x001)] {
            set_fat12(&mut fat, c, v);
        }
        assert_eq!(
            [2, 3, 4, 5].map(|c| get_fat12(&fat, c)),
            [0x123, 0xabc, 0xfff, 0x001]
        );
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("AUTOINST.XML", &[]), (*b"AUTOINSTXML", false));
        assert_eq!(short_name("autoinst.xml", &[]), (*b"AUTOINSTXML", true));
        let (s, long) = short_name("a long name.xml", &[]);
        assert_eq!((&s, long), (b"ALONGN~1XML", true));
        let (s, _) = short_name("autoinst.xml", &[*b"AUTOINSTXML"]);
        assert_eq!(&s, b"AUTOIN~1XML");
    }

    #[test]
    fn image_layout() {
        let mut f = FloppyBuilder::new("autoinst").unwrap();
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        f.add_bytes("autoinst.xml", data.clone()).unwrap();
        let img = f.build().unwrap();
        assert_eq!(img.len(), 1_474_560);
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        let fat = &img[SECTOR..SECTOR * 10];
        assert_eq!(get_fat12(fat, 2), 3);
        assert_eq!(get_fat12(fat, 4), 0xfff);
        let root = &img[19 * SECTOR..];
        assert_eq!(&root[..11], b"AUTOINST   ");
        assert_eq!(root[32 + 11], 0x0f, "a long-name entry precedes the file");
        assert_eq!(&root[64..75], b"AUTOINSTXML");
        let data_at = FIRST_DATA_SECTOR * SECTOR;
        assert_eq!(&img[data_at..data_at + data.len()], &data[..]);
        assert!(f.add_bytes("AUTOINST.XML", "x").is_err());
    }

    #[test]
    fn too_big_is_an_error() {
        let mut f = FloppyBuilder::new("X").unwrap();
        f.add_bytes("big", vec![0u8; 1_500_000]).unwrap();
        assert!(f.build().unwrap_err().to_string().contains("do not fit"));
    }
}
