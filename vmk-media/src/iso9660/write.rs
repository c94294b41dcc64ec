//! Writes small ISO 9660 images (the autoyast second CD, the cloud-init `cidata` seed, test
//! installer media) without mkisofs, xorriso or root.
//!
//! The image carries three views of one directory tree, as `genisoimage -R -J` writes it:
//! - the primary tree with ISO 9660 level 2 names (`USER_DATA.;1`), for any reader;
//! - Rock Ridge `NM`/`PX` entries on the primary tree, giving the real names and modes to
//!   Linux and isoinfo;
//! - a Joliet tree (UCS-2 names), which blkid prefers for the label and which other
//!   systems read.
//!
//! Layout: system area (16 sectors), volume descriptors (primary, Joliet, terminator),
//! four path tables, the primary then the Joliet directory extents, then file data. Sizes
//! are computed before anything is written, so the image is written in one pass and file
//! contents are streamed, not held in memory.
//!
//! Why one file of about 800 lines: the three views share one layout computation (names,
//! extents, sizes) that every writing step reads; split apart, each part would need the
//! whole layout anyway. About 80 of the lines are its unit tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::SECTOR;
use crate::clock::Timestamp;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A file on the host, read while the image is written.
    Path(PathBuf),
}

/// Builds an ISO 9660 image from files added under paths like `boot/x86_64/loader/linux`.
#[derive(Debug)]
pub struct IsoBuilder {
    volume_id: String,
    time: Timestamp,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    name: String,
    parent: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Dir(Vec<usize>),
    File { content: Content, size: u64 },
}

/// Which of the two directory trees a computation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Primary,
    Joliet,
}

/// Longest Rock Ridge name that still fits a directory record without continuation areas.
const MAX_NAME: usize = 120;
/// Longest Joliet name, in UCS-2 characters.
const MAX_JOLIET: usize = 64;

impl IsoBuilder {
    /// A new, empty image with volume label `volume_id` (up to 32 ASCII characters; kept
    /// as given, so `cidata` stays lower case as cloud-init expects).
    pub fn new(volume_id: &str) -> Result<IsoBuilder> {
        if volume_id.len() > 32 || !volume_id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            bail!("iso volume id {volume_id:?} must be at most 32 printable ASCII characters");
        }
        Ok(IsoBuilder {
            volume_id: volume_id.to_string(),
            time: Timestamp::for_new_image(),
            nodes: vec![Node {
                name: String::new(),
                parent: 0,
                kind: Kind::Dir(Vec::new()),
            }],
        })
    }

    /// Sets the time recorded for the volume and every file (default: `SOURCE_DATE_EPOCH` or now).
    pub fn set_time(&mut self, time: Timestamp) {
        self.time = time;
    }

    /// Adds a file held in memory at `path` (directories are created as needed).
    pub fn add_bytes(&mut self, path: &str, bytes: impl Into<Vec<u8>>) -> Result<()> {
        let bytes = bytes.into();
        let size = bytes.len() as u64;
        self.add(path, Content::Bytes(bytes), size)
    }

    /// Adds the host file `source` at `path`; its bytes are read when the image is written.
    pub fn add_path(&mut self, path: &str, source: &Path) -> Result<()> {
        let meta = std::fs::metadata(source)
            .with_context(|| format!("reading {} for the iso image", source.display()))?;
        if !meta.is_file() {
            bail!(
                "{} is not a regular file: only files go into the iso image",
                source.display()
            );
        }
        self.add(path, Content::Path(source.to_path_buf()), meta.len())
    }

    fn add(&mut self, path: &str, content: Content, size: u64) -> Result<()> {
        if size > u64::from(u32::MAX) {
            bail!("{path}: files over 4 GiB do not fit one iso 9660 extent");
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some((file, dirs)) = parts.split_last() else {
            bail!("iso path {path:?} names no file");
        };
        let mut dir = 0;
        for part in dirs {
            dir = match self.child(dir, part) {
                Some(i) if matches!(self.nodes[i].kind, Kind::Dir(_)) => i,
                Some(_) => bail!("iso path {path:?}: {part} is already a file"),
                None => self.push(dir, part, Kind::Dir(Vec::new()))?,
            };
        }
        if self.child(dir, file).is_some() {
            bail!("iso path {path:?} was added twice");
        }
        self.push(dir, file, Kind::File { content, size })?;
        Ok(())
    }

    fn child(&self, dir: usize, name: &str) -> Option<usize> {
        match &self.nodes[dir].kind {
            Kind::Dir(children) => children
                .iter()
                .copied()
                .find(|&c| self.nodes[c].name == name),
            Kind::File { .. } => None,
        }
    }

    fn push(&mut self, parent: usize, name: &str, kind: Kind) -> Result<usize> {
        if name == "." || name == ".." || name.len() > MAX_NAME || name.contains('\0') {
            bail!("iso file name {name:?} is not allowed (at most {MAX_NAME} bytes, no . or ..)");
        }
        if name.encode_utf16().count() > MAX_JOLIET || name.contains(['*', ':', ';', '?', '\\']) {
            bail!("iso file name {name:?} does not fit Joliet (at most 64 characters, none of *:;?\\)");
        }
        let index = self.nodes.len();
        self.nodes.push(Node {
            name: name.to_string(),
            parent,
            kind,
        });
        if let Kind::Dir(children) = &mut self.nodes[parent].kind {
            children.push(index);
        }
        Ok(index)
    }

    /// Writes the image to a new file at `path` (replacing it).
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = io::BufWriter::new(file);
        self.write(&mut out)
            .with_context(|| format!("writing {}", path.display()))?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Writes the image to `out`.
    pub fn write(&self, out: &mut impl Write) -> Result<()> {
        let layout = Layout::compute(self)?;
        let mut w = SectorWriter { out, sector: 0 };
        w.zeros(16 * SECTOR)?;
        w.put(&self.volume_descriptor(&layout, Tree::Primary))?;
        w.put(&self.volume_descriptor(&layout, Tree::Joliet))?;
        w.put(&terminator())?;
        for tree in [Tree::Primary, Tree::Joliet] {
            let (l, m) = self.path_tables(&layout, tree);
            w.expect_at(layout.tree(tree).path_table_lba.0)?;
            w.put(&pad_sector(l))?;
            w.expect_at(layout.tree(tree).path_table_lba.1)?;
            w.put(&pad_sector(m))?;
        }
        for tree in [Tree::Primary, Tree::Joliet] {
            for &dir in &layout.tree(tree).order {
                w.expect_at(layout.tree(tree).dir_lba[dir])?;
                w.put(&self.directory_extent(&layout, tree, dir))?;
            }
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if let Kind::File { content, size } = &node.kind {
                if *size == 0 {
                    continue;
                }
                w.expect_at(layout.file_lba[index])?;
                w.file(content, *size)?;
            }
        }
        if w.sector != layout.total_sectors {
            bail!(
                "iso layout error: wrote {} sectors, planned {}",
                w.sector,
                layout.total_sectors
            );
        }
        Ok(())
    }

    fn volume_descriptor(&self, layout: &Layout, tree: Tree) -> Vec<u8> {
        let mut d = vec![0u8; SECTOR];
        d[0] = if tree == Tree::Primary { 1 } else { 2 };
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        let text = |d: &mut [u8], at: usize, len: usize, s: &str| match tree {
            Tree::Primary => put_padded_ascii(&mut d[at..at + len], s),
            Tree::Joliet => put_padded_ucs2(&mut d[at..at + len], s),
        };
        text(&mut d, 8, 32, "LINUX");
        text(&mut d, 40, 32, &self.volume_id);
        both32(&mut d[80..88], layout.total_sectors);
        if tree == Tree::Joliet {
            d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        }
        both16(&mut d[120..124], 1);
        both16(&mut d[124..128], 1);
        both16(&mut d[128..132], SECTOR as u16);
        let t = layout.tree(tree);
        both32(&mut d[132..140], t.path_table_size);
        d[140..144].copy_from_slice(&t.path_table_lba.0.to_le_bytes());
        d[148..152].copy_from_slice(&t.path_table_lba.1.to_be_bytes());
        let root = self.record(layout, tree, 0, RecordName::Dot, false);
        d[156..156 + root.len()].copy_from_slice(&root);
        text(&mut d, 190, 128, "");
        text(&mut d, 318, 128, "");
        text(&mut d, 446, 128, "");
        text(&mut d, 574, 128, "VMK");
        text(&mut d, 702, 37, "");
        text(&mut d, 739, 37, "");
        text(&mut d, 776, 37, "");
        let date = volume_date(&self.time);
        d[813..830].copy_from_slice(&date);
        d[830..847].copy_from_slice(&date);
        d[847..863].fill(b'0');
        d[864..880].fill(b'0');
        d[881] = 1;
        d
    }

    /// The L (little-endian) and M (big-endian) path tables of a tree.
    fn path_tables(&self, layout: &Layout, tree: Tree) -> (Vec<u8>, Vec<u8>) {
        let t = layout.tree(tree);
        let (mut l, mut m) = (Vec::new(), Vec::new());
        for &dir in &t.order {
            let name = if dir == 0 {
                vec![0]
            } else {
                self.name_in(layout, tree, dir).to_vec()
            };
            let parent = t.number[self.nodes[dir].parent];
            for (table, big) in [(&mut l, false), (&mut m, true)] {
                table.push(name.len() as u8);
                table.push(0);
                let lba = t.dir_lba[dir];
                table.extend(if big {
                    lba.to_be_bytes()
                } else {
                    lba.to_le_bytes()
                });
                table.extend(if big {
                    parent.to_be_bytes()
                } else {
                    parent.to_le_bytes()
                });
                table.extend(&name);
                if name.len() % 2 == 1 {
                    table.push(0);
                }
            }
        }
        (l, m)
    }

    fn name_in<'a>(&self, layout: &'a Layout, tree: Tree, node: usize) -> &'a [u8] {
        &layout.tree(tree).names[node]
    }

    /// A directory's extent: `.`, `..`, then its entries sorted by name, never crossing a
    /// sector boundary.
    fn directory_extent(&self, layout: &Layout, tree: Tree, dir: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for record in self.directory_records(layout, tree, dir) {
            let room = SECTOR - out.len() % SECTOR;
            if record.len() > room {
                out.resize(out.len() + room, 0);
            }
            out.extend(record);
        }
        pad_sector(out)
    }

    fn directory_records(&self, layout: &Layout, tree: Tree, dir: usize) -> Vec<Vec<u8>> {
        let mut records = vec![
            self.record(layout, tree, dir, RecordName::Dot, true),
            self.record(
                layout,
                tree,
                self.nodes[dir].parent,
                RecordName::DotDot,
                true,
            ),
        ];
        for &child in &layout.tree(tree).sorted_children[dir] {
            records.push(self.record(layout, tree, child, RecordName::Own, true));
        }
        records
    }

    /// One directory record for `node`, named as `name` says; `rock_ridge` adds the system
    /// use entries (the copy of the root record in the volume descriptor has none).
    fn record(
        &self,
        layout: &Layout,
        tree: Tree,
        node: usize,
        name: RecordName,
        rock_ridge: bool,
    ) -> Vec<u8> {
        let (lba, size, is_dir) = match &self.nodes[node].kind {
            Kind::Dir(_) => {
                let t = layout.tree(tree);
                (t.dir_lba[node], t.dir_size[node], true)
            }
            Kind::File { size, .. } => (layout.file_lba[node], *size as u32, false),
        };
        let id: Vec<u8> = match name {
            RecordName::Dot => vec![0],
            RecordName::DotDot => vec![1],
            RecordName::Own => self.name_in(layout, tree, node).to_vec(),
        };
        let mut r = vec![0u8; 33];
        both32(&mut r[2..10], lba);
        both32(&mut r[10..18], size);
        r[18..25].copy_from_slice(&record_date(&self.time));
        r[25] = if is_dir { 2 } else { 0 };
        both16(&mut r[28..32], 1);
        r[32] = id.len() as u8;
        r.extend(&id);
        if r.len() % 2 == 1 {
            r.push(0);
        }
        if tree == Tree::Primary && rock_ridge {
            if node == 0 && name == RecordName::Dot {
                r.extend(susp_sp());
                r.extend(susp_er());
            }
            r.extend(self.rr_px(node));
            if name == RecordName::Own {
                r.extend(rr_nm(&self.nodes[node].name));
            }
            if r.len() % 2 == 1 {
                r.push(0);
            }
        }
        r[0] = r.len() as u8;
        r
    }

    /// Rock Ridge `PX`: POSIX mode, links, owner root, serial number.
    fn rr_px(&self, node: usize) -> Vec<u8> {
        let (mode, links) = match &self.nodes[node].kind {
            Kind::Dir(children) => {
                let subdirs = children
                    .iter()
                    .filter(|&&c| matches!(self.nodes[c].kind, Kind::Dir(_)))
                    .count();
                (0o040_555, 2 + subdirs as u32)
            }
            Kind::File { .. } => (0o100_444, 1),
        };
        let mut e = vec![b'P', b'X', 44, 1];
        for value in [mode, links, 0, 0, node as u32 + 1] {
            let mut field = [0u8; 8];
            both32(&mut field, value);
            e.extend(field);
        }
        e
    }
}

/// How a directory record names its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordName {
    Dot,
    DotDot,
    Own,
}

/// Sector numbers and names of one tree (primary or Joliet).
#[derive(Debug, Default)]
struct TreeLayout {
    /// Encoded identifier of every node in this tree (file names carry `;1`).
    names: Vec<Vec<u8>>,
    /// Children of each directory, in this tree's sort order.
    sorted_children: Vec<Vec<usize>>,
    /// Directories in path-table order (breadth first, sorted).
    order: Vec<usize>,
    /// Path table number (1-based) of each directory, by node.
    number: Vec<u16>,
    dir_lba: Vec<u32>,
    dir_size: Vec<u32>,
    path_table_size: u32,
    /// Sectors of the L and M path tables.
    path_table_lba: (u32, u32),
}

#[derive(Debug)]
struct Layout {
    primary: TreeLayout,
    joliet: TreeLayout,
    file_lba: Vec<u32>,
    total_sectors: u32,
}

impl Layout {
    fn tree(&self, tree: Tree) -> &TreeLayout {
        match tree {
            Tree::Primary => &self.primary,
            Tree::Joliet => &self.joliet,
        }
    }

    fn compute(b: &IsoBuilder) -> Result<Layout> {
        let n = b.nodes.len();
        let empty = |names| TreeLayout {
            names,
            dir_lba: vec![0; n],
            dir_size: vec![0; n],
            ..Default::default()
        };
        let mut primary = empty(primary_names(b));
        let mut joliet = empty(joliet_names(b));
        for t in [&mut primary, &mut joliet] {
            sort_and_order(b, t);
        }
        let mut layout = Layout {
            primary,
            joliet,
            file_lba: vec![0; b.nodes.len()],
            total_sectors: 0,
        };
        // Directory sizes depend only on names, so fill them in before any sector numbers.
        for tree in [Tree::Primary, Tree::Joliet] {
            let sizes: Vec<u32> = (0..b.nodes.len())
                .map(|n| match b.nodes[n].kind {
                    Kind::Dir(_) => b.directory_extent(&layout, tree, n).len() as u32,
                    Kind::File { .. } => 0,
                })
                .collect();
            layout.tree_mut(tree).dir_size = sizes;
        }
        let mut next: u32 = 19;
        for tree in [Tree::Primary, Tree::Joliet] {
            let (l, _) = b.path_tables(&layout, tree);
            let t = layout.tree_mut(tree);
            t.path_table_size = l.len() as u32;
            let sectors = sectors_for(l.len() as u64);
            t.path_table_lba = (next, next + sectors);
            next += 2 * sectors;
        }
        for tree in [Tree::Primary, Tree::Joliet] {
            let t = layout.tree_mut(tree);
            for &dir in &t.order {
                t.dir_lba[dir] = next;
                next += t.dir_size[dir] / SECTOR as u32;
            }
        }
        for (index, node) in b.nodes.iter().enumerate() {
            if let Kind::File { size, .. } = node.kind {
                if size > 0 {
                    layout.file_lba[index] = next;
                    next = next
                        .checked_add(sectors_for(size))
                        .context("iso image would exceed 8 TiB")?;
                }
            }
        }
        layout.total_sectors = next;
        Ok(layout)
    }

    fn tree_mut(&mut self, tree: Tree) -> &mut TreeLayout {
        match tree {
            Tree::Primary => &mut self.primary,
            Tree::Joliet => &mut self.joliet,
        }
    }
}

fn sort_and_order(b: &IsoBuilder, t: &mut TreeLayout) {
    t.sorted_children = b
        .nodes
        .iter()
        .map(|n| match &n.kind {
            Kind::Dir(children) => {
                let mut c = children.clone();
                c.sort_by(|&x, &y| t.names[x].cmp(&t.names[y]));
                c
            }
            Kind::File { .. } => Vec::new(),
        })
        .collect();
    t.order = vec![0];
    let mut i = 0;
    while i < t.order.len() {
        let dir = t.order[i];
        let subdirs = t.sorted_children[dir]
            .iter()
            .copied()
            .filter(|&c| matches!(b.nodes[c].kind, Kind::Dir(_)));
        t.order.extend(subdirs.collect::<Vec<_>>());
        i += 1;
    }
    t.number = vec![0; b.nodes.len()];
    for (position, &dir) in t.order.iter().enumerate() {
        t.number[dir] = position as u16 + 1;
    }
}

/// ISO 9660 level 2 names: upper case d-characters, one dot, `;1` on files, unique per
/// directory (a clash gets a `_N` suffix on the base name).
fn primary_names(b: &IsoBuilder) -> Vec<Vec<u8>> {
    let mut names = vec![Vec::new(); b.nodes.len()];
    for node in &b.nodes {
        let Kind::Dir(children) = &node.kind else {
            continue;
        };
        let mut taken: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        for &c in children {
            let is_dir = matches!(b.nodes[c].kind, Kind::Dir(_));
            let (base, ext) = iso_base_ext(&b.nodes[c].name, is_dir);
            let mut n = 0;
            let name = loop {
                let base = if n == 0 {
                    base.clone()
                } else {
                    with_suffix(&base, n)
                };
                let candidate = if is_dir {
                    base
                } else {
                    format!("{base}.{ext};1")
                };
                if !taken.contains_key(candidate.as_bytes()) {
                    break candidate;
                }
                n += 1;
            };
            taken.insert(name.clone().into_bytes(), ());
            names[c] = name.into_bytes();
        }
    }
    names
}

fn iso_base_ext(name: &str, is_dir: bool) -> (String, String) {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .collect()
    };
    let (base, ext) = match name.rsplit_once('.') {
        Some((base, ext)) if !is_dir && !base.is_empty() => (clean(base), clean(ext)),
        _ => (clean(name), String::new()),
    };
    // Level 2: name, dot, extension and `;1` within 31 bytes (30 without the version).
    let ext: String = ext.chars().take(8).collect();
    let room = if is_dir { 31 } else { 30 - 1 - ext.len() };
    (base.chars().take(room).collect(), ext)
}

fn with_suffix(base: &str, n: usize) -> String {
    let suffix = format!("_{n}");
    let keep = base.len().min(24);
    format!("{}{suffix}", &base[..keep])
}

/// Joliet names: UCS-2 big-endian, without a version (as genisoimage writes them).
fn joliet_names(b: &IsoBuilder) -> Vec<Vec<u8>> {
    b.nodes
        .iter()
        .map(|n| n.name.encode_utf16().flat_map(u16::to_be_bytes).collect())
        .collect()
}

/// SUSP `SP`: marks the start of System Use Sharing Protocol entries (root `.` only).
fn susp_sp() -> Vec<u8> {
    vec![b'S', b'P', 7, 1, 0xbe, 0xef, 0]
}

/// SUSP `ER`: declares Rock Ridge (short descriptor, so no continuation area is needed).
fn susp_er() -> Vec<u8> {
    let id = b"RRIP_1991A";
    let desc = b"ROCK RIDGE";
    let mut e = vec![b'E', b'R', 0, 1, id.len() as u8, desc.len() as u8, 0, 1];
    e.extend(id);
    e.extend(desc);
    e[2] = e.len() as u8;
    e
}

/// Rock Ridge `NM`: the real name.
fn rr_nm(name: &str) -> Vec<u8> {
    let mut e = vec![b'N', b'M', 5 + name.len() as u8, 1, 0];
    e.extend(name.as_bytes());
    e
}

fn terminator() -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

fn record_date(t: &Timestamp) -> [u8; 7] {
    let year = (t.year - 1900).clamp(0, 255) as u8;
    [year, t.month, t.day, t.hour, t.minute, t.second, 0]
}

fn volume_date(t: &Timestamp) -> [u8; 17] {
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        t.year.clamp(0, 9999),
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second
    );
    let mut d = [0u8; 17];
    d[..16].copy_from_slice(s.as_bytes());
    d
}

fn both16(dst: &mut [u8], v: u16) {
    dst[..2].copy_from_slice(&v.to_le_bytes());
    dst[2..4].copy_from_slice(&v.to_be_bytes());
}

fn both32(dst: &mut [u8], v: u32) {
    dst[..4].copy_from_slice(&v.to_le_bytes());
    dst[4..8].copy_from_slice(&v.to_be_bytes());
}

fn put_padded_ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn put_padded_ucs2(dst: &mut [u8], s: &str) {
    for pair in dst.chunks_mut(2) {
        pair.copy_from_slice(&[0, b' '][..pair.len()]);
    }
    for (i, unit) in s.encode_utf16().take(dst.len() / 2).enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&unit.to_be_bytes());
    }
}

fn sectors_for(bytes: u64) -> u32 {
    bytes.div_ceil(SECTOR as u64) as u32
}

fn pad_sector(mut v: Vec<u8>) -> Vec<u8> {
    let len = v.len().div_ceil(SECTOR).max(1) * SECTOR;
    v.resize(len, 0);
    v
}

/// Writes whole sectors and checks that each part lands where the layout put it.
struct SectorWriter<'a, W: Write> {
    out: &'a mut W,
    sector: u32,
}

impl<W: Write> SectorWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        debug_assert_eq!(bytes.len() % SECTOR, 0);
        self.out.write_all(bytes)?;
        self.sector += (bytes.len() / SECTOR) as u32;
        Ok(())
    }

    fn zeros(&mut self, len: usize) -> Result<()> {
        self.put(&vec![0u8; len])
    }

    fn expect_at(&self, sector: u32) -> Result<()> {
        if self.sector != sector {
            bail!(
                "iso layout error: at sector {} but planned {sector}",
                self.sector
            );
        }
        Ok(())
    }

    fn file(&mut self, content: &Content, size: u64) -> Result<()> {
        let written = match content {
            Content::Bytes(b) => {
                self.out.write_all(b)?;
                b.len() as u64
            }
            Content::Path(p) => {
                let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                let copied = io::copy(&mut io::Read::take(f, size + 1), self.out)
                    .with_context(|| format!("copying {} into the iso image", p.display()))?;
                if copied != size {
                    bail!(
                        "{} changed size while the iso image was written",
                        p.display()
                    );
                }
                copied
            }
        };
        let padded = u64::from(sectors_for(written)) * SECTOR as u64;
        self.out
            .write_all(&vec![0u8; (padded - written) as usize])?;
        self.sector += sectors_for(written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(b: &IsoBuilder) -> Vec<u8> {
        let mut v = Vec::new();
        b.write(&mut v).unwrap();
        v
    }

    #[test]
    fn descriptors_and_size() {
        let mut b = IsoBuilder::new("cidata").unwrap();
        b.add_bytes("user-data", "#cloud-config\n").unwrap();
        b.add_bytes("meta-data", "instance-id: x\n").unwrap();
        let img = image(&b);
        assert_eq!(img.len() % SECTOR, 0);
        assert_eq!(&img[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
        assert_eq!(img[16 * SECTOR], 1);
        assert_eq!(img[17 * SECTOR], 2);
        assert_eq!(img[18 * SECTOR], 255);
        assert_eq!(&img[16 * SECTOR + 40..16 * SECTOR + 46], b"cidata");
        let total = u32::from_le_bytes(img[16 * SECTOR + 80..16 * SECTOR + 84].try_into().unwrap());
        assert_eq!(total as usize * SECTOR, img.len());
    }

    #[test]
    fn level2_names_are_unique_and_valid() {
        let mut b = IsoBuilder::new("T").unwrap();
        b.add_bytes("user-data", "a").unwrap();
        b.add_bytes("user_data", "b").unwrap();
        b.add_bytes("dir.x/autoinst.xml", "c").unwrap();
        let names = primary_names(&b);
        let mut got: Vec<String> = names
            .iter()
            .map(|n| String::from_utf8(n.clone()).unwrap())
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "",
                "AUTOINST.XML;1",
                "DIR_X",
                "USER_DATA.;1",
                "USER_DATA_1.;1"
            ]
        );
    }

    #[test]
    fn rejects_bad_paths() {
        let mut b = IsoBuilder::new("T").unwrap();
        b.add_bytes("a/b", "x").unwrap();
        assert!(b.add_bytes("a/b", "y").is_err());
        assert!(b.add_bytes("a/b/c", "y").is_err());
        assert!(b.add_bytes("/", "y").is_err());
        assert!(b.add_bytes("x;y", "y").is_err());
        assert!(IsoBuilder::new("a-volume-label-longer-than-32-bytes").is_err());
    }

    #[test]
    fn many_files_span_directory_sectors() {
        let mut b = IsoBuilder::new("MANY").unwrap();
        for i in 0..100 {
            b.add_bytes(
                &format!("some-rather-long-file-name-{i:03}.txt"),
                vec![b'x'; i],
            )
            .unwrap();
        }
        let img = image(&b);
        let layout = Layout::compute(&b).unwrap();
        assert!(layout.primary.dir_size[0] > SECTOR as u32);
        assert_eq!(layout.total_sectors as usize * SECTOR, img.len());
    }
}
