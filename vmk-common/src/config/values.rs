//! The typed values a config key can hold, each parsed from the text of one assignment.
//!
//! Every parser returns `Err(expected)` with a phrase saying what was expected
//! ("a memory size like 2048, 2G or 512M"); the caller adds file, line, key and the value.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// What a failed parse expected, e.g. "a memory size like 2048, 2G or 512M".
pub type Expected = String;

/// Splits "2G" into (2, Some('g')); a plain number gives no suffix.
fn split_size(s: &str) -> Option<(u64, Option<char>)> {
    let s = s.trim().to_ascii_lowercase();
    // "4GiB" and "4GB" mean 4G
    let s = match s.strip_suffix("ib").or_else(|| s.strip_suffix('b')) {
        Some(rest) if rest.ends_with(|c: char| c.is_ascii_alphabetic()) => rest,
        _ => &s,
    };
    let (num, suffix) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], Some(c)),
        _ => (s, None),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // digits past u64 are a number out of range, not a malformed one
    Some((num.parse().unwrap_or(u64::MAX), suffix))
}

/// A memory size in MiB, as qemu's `-m` takes it: `2048` (MiB), `2G`, `512M`, `1T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemSize {
    mib: u64,
}

impl MemSize {
    /// The least memory a config may give a VM: 16 MiB (less boots nothing).
    pub const MIN: MemSize = MemSize { mib: 16 };
    /// The most memory a config may give a VM: 16 TiB (more is a typo, and past what
    /// qemu's x86 machines address).
    pub const MAX: MemSize = MemSize { mib: 16 << 20 };

    /// A size of `mib` MiB.
    pub const fn from_mib(mib: u64) -> Self {
        MemSize { mib }
    }
    /// The size in MiB (the unit of `-m`).
    pub fn mib(self) -> u64 {
        self.mib
    }
}

impl FromStr for MemSize {
    type Err = Expected;
    fn from_str(s: &str) -> Result<Self, Expected> {
        let expected = || "a memory size like 2048, 2G or 512M".to_string();
        let (n, suffix) = split_size(s).ok_or_else(expected)?;
        let mib = match suffix {
            None | Some('m') => Some(n),
            Some('g') => n.checked_mul(1024),
            Some('t') => n.checked_mul(1024 * 1024),
            _ => return Err(expected()),
        };
        match mib {
            Some(mib) if (MemSize::MIN.mib..=MemSize::MAX.mib).contains(&mib) => {
                Ok(MemSize { mib })
            }
            _ => Err("a memory size from 16M to 16T, like 2048, 2G or 512M".into()),
        }
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mib)
    }
}

impl Serialize for MemSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.mib)
    }
}

/// A disk image size in bytes, written like `30G`, `512M`, `1T` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size {
    bytes: u64,
}

impl Size {
    /// The largest disk a config may ask for: 1 PiB (1024T).
    pub const MAX: Size = Size { bytes: 1 << 50 };

    /// A size of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Size { bytes }
    }
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.bytes
    }
}

impl FromStr for Size {
    type Err = Expected;
    fn from_str(s: &str) -> Result<Self, Expected> {
        let expected = || "a disk size like 30G, 512M or 1T".to_string();
        let (n, suffix) = split_size(s).ok_or_else(expected)?;
        let mult: u64 = match suffix {
            None => 1,
            Some('k') => 1 << 10,
            Some('m') => 1 << 20,
            Some('g') => 1 << 30,
            Some('t') => 1 << 40,
            _ => return Err(expected()),
        };
        match n.checked_mul(mult) {
            Some(bytes) if bytes > 0 && bytes <= Size::MAX.bytes => Ok(Size { bytes }),
            _ => Err("a disk size above zero and up to 1024T, like 30G".into()),
        }
    }
}

impl fmt::Display for Size {
    /// The largest unit that divides the size exactly (`30G`), as qemu-img takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [('T', 40), ('G', 30), ('M', 20), ('K', 10)] {
            if self.bytes >= (1 << shift) && self.bytes % (1 << shift) == 0 {
                return write!(f, "{}{unit}", self.bytes >> shift);
            }
        }
        write!(f, "{}", self.bytes)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Declares a config enum: its variants, their spellings in the config and `expected`.
macro_rules! config_enum {
    ($(#[$m:meta])* $name:ident, $expected:literal, { $($(#[$vm:meta])* $var:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every value, in the order the documentation lists them.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The spelling used in configs and on qemu's command line.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = Expected;
            fn from_str(s: &str) -> Result<Self, Expected> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($name::$var),)+
                    _ => Err($expected.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

config_enum!(
    /// A qemu disk cache mode (`cache=` of `-drive`).
    CacheMode, "one of none, writeback, writethrough, directsync, unsafe", {
    /// O_DIRECT, no host page cache: safe and the default.
    None = "none",
    /// Host page cache, flushes honoured.
    Writeback = "writeback",
    /// Host page cache, every write flushed.
    Writethrough = "writethrough",
    /// O_DIRECT and every write flushed.
    Directsync = "directsync",
    /// Flushes ignored: fastest, for throwaway installs.
    Unsafe = "unsafe",
});

config_enum!(
    /// The bus disks are attached to.
    DiskBus, "one of scsi, virtio, lsi, ide, nvme", {
    /// virtio-scsi-pci with scsi-hd disks: guests see sda… as under the original vmk, with
    /// virtio's speed and discard.
    Scsi = "scsi",
    /// virtio-blk-pci: guests see vda….
    Virtio = "virtio",
    /// The original vmk's SCSI controller, an LSI 53C895A (lsi53c895a) with scsi-hd disks:
    /// for old guests without virtio drivers.
    Lsi = "lsi",
    /// ide-hd (AHCI on q35).
    Ide = "ide",
    /// nvme controllers, one per disk.
    Nvme = "nvme",
});

config_enum!(
    /// A disk image format.
    DiskFormat, "one of qcow2, raw (or empty to detect it)", {
    /// qcow2.
    Qcow2 = "qcow2",
    /// A raw image.
    Raw = "raw",
});

impl DiskFormat {
    /// qcow2 when the file starts with the qcow2 magic `QFI\xfb`, else raw. Only a regular
    /// file or a block device is read ([`super::files::open_image`]): a FIFO or a character
    /// device is an error naming it, never a read that blocks or never ends.
    pub fn detect(path: &Path) -> std::io::Result<DiskFormat> {
        let mut magic = [0u8; 4];
        let mut file = super::files::open_image(path)?;
        let mut got = 0;
        while got < magic.len() {
            match file.read(&mut magic[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(Self::from_magic(&magic[..got]))
    }

    /// The format that the first bytes of an image announce.
    pub fn from_magic(bytes: &[u8]) -> DiskFormat {
        if bytes.starts_with(b"QFI\xfb") {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

config_enum!(
    /// The accelerator qemu uses.
    Accel, "one of kvm, tcg, auto", {
    /// Hardware virtualisation through /dev/kvm.
    Kvm = "kvm",
    /// Software emulation.
    Tcg = "tcg",
    /// kvm when /dev/kvm is usable, else tcg with a warning.
    Auto = "auto",
});

config_enum!(
    /// The firmware the VM boots (VMK_FIRMWARE).
    Firmware, "one of bios, uefi, uefi-secure", {
    /// SeaBIOS, qemu's default on x86 (other architectures have no BIOS: they get UEFI).
    Bios = "bios",
    /// UEFI (OVMF, AAVMF) without Secure Boot, with the VM's own variable store.
    Uefi = "uefi",
    /// UEFI with Secure Boot enforced: the distribution's keys enrolled in the variable store.
    UefiSecure = "uefi-secure",
});

config_enum!(
    /// How the VM is networked.
    NetType, "one of user, bridge, none", {
    /// qemu user networking (NAT), the ssh port forwarded from the host.
    User = "user",
    /// A tap on a host bridge through qemu-bridge-helper.
    Bridge = "bridge",
    /// No network card.
    None = "none",
});

config_enum!(
    /// The network card's model.
    NicModel, "one of virtio, e1000, e1000e, rtl8139", {
    /// virtio-net-pci: fast, needs virtio drivers in the guest.
    Virtio = "virtio",
    /// Intel 82540EM (e1000): the original vmk's card, drivers everywhere.
    E1000 = "e1000",
    /// Intel 82574L (e1000e).
    E1000e = "e1000e",
    /// Realtek RTL8139.
    Rtl8139 = "rtl8139",
});

impl NicModel {
    /// The qemu device of this card.
    pub fn device(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio-net-pci",
            other => other.as_str(),
        }
    }
}

config_enum!(
    /// What the guest's hardware clock keeps (`-rtc base=`).
    RtcBase, "one of utc, localtime", {
    /// UTC, as Linux guests expect.
    Utc = "utc",
    /// The host's local time, as the original vmk gave (and Windows guests expect).
    Localtime = "localtime",
});

/// A yes/no value: yes, no, true, false, 1, 0, on, off.
pub fn parse_bool(s: &str) -> Result<bool, Expected> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "1" | "on" => Ok(true),
        "no" | "n" | "false" | "0" | "off" => Ok(false),
        _ => Err("yes or no".into()),
    }
}

/// A TCP port number.
pub fn parse_port(s: &str) -> Result<u16, Expected> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| "a port number from 1 to 65535".into())
}

/// The VM's number (VNC display, base of its ports and MAC): 0 to 99.
pub fn parse_vnc(s: &str) -> Result<u8, Expected> {
    s.trim()
        .parse::<u8>()
        .ok()
        .filter(|n| *n <= 99)
        .ok_or_else(|| "a VM number from 0 to 99".into())
}

/// A cpu count for `-smp`: 1 to 1024.
pub fn parse_cpus(s: &str) -> Result<u32, Expected> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| "a cpu count from 1 to 1024".into())
}

/// An IP address to listen on or to reach the VM at.
pub fn parse_ip(s: &str) -> Result<std::net::IpAddr, Expected> {
    s.trim()
        .parse()
        .map_err(|_| "an IP address like 127.0.0.1 or ::1".into())
}

/// A word for qemu names, machine types, architectures, bridges: no spaces or commas.
pub fn parse_word(s: &str) -> Result<String, Expected> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+:@".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a single word of letters, digits and . _ - + : @".into())
    }
}

/// A path inside the guest for its kernel command line (`VMK_EXEC_INIT`): absolute, of
/// letters, digits and `/ . _ -` (nothing a kernel command line would split or quote).
pub fn parse_guest_path(s: &str) -> Result<String, Expected> {
    let ok = s.starts_with('/')
        && s.len() > 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err("an absolute path in the guest of letters, digits and / . _ -".into())
    }
}

/// The kernel argument of a one-shot boot (`--exec` with VMK_EXEC_INIT): the initrd of a
/// guest `vmk bootstrap` makes then mounts the root itself, without udev.
pub const ONE_SHOT_ARG: &str = "vmk.oneshot=1";

/// The line the one-shot init of a bootstrapped guest prints on the serial console once its
/// sshd runs: `--exec` then probes ssh afresh.
pub const SSHD_STARTED_LINE: &str = "vmk-exec-init: sshd started";

/// The systemd credential (an SMBIOS type 11 string, like root's ssh key) that lists the
/// mount tags of the VM's virtiofs shares, space-separated: a guest kernel before 6.9 shows
/// no virtiofs tag anywhere (9p tags are in sysfs), so the `vmk-shares` script of guests
/// `vmk bootstrap` makes reads them from there.
pub const VIRTIOFS_TAGS_CREDENTIAL: &str = "vmk.virtiofs-tags";

/// A host name: letters, digits, dots and dashes.
pub fn parse_hostname(s: &str) -> Result<String, Expected> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !s.starts_with(['-', '.']);
    if ok {
        Ok(s.to_string())
    } else {
        Err("a host name of letters, digits, dots and dashes".into())
    }
}

/// `VMK_EXTRA_ARGS`: split into words like a shell would, without running anything.
pub fn parse_words(s: &str) -> Result<Vec<String>, Expected> {
    shlex::split(s).ok_or_else(|| "qemu arguments with balanced quotes".into())
}

/// One host folder shared with the guest (an entry of `VMK_SHARE`: `HOSTDIR[:TAG][:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Share {
    /// The host folder (absolute once the config is loaded).
    pub dir: PathBuf,
    /// The mount tag the guest sees; guests `vmk bootstrap` makes mount it at /mnt/TAG.
    pub tag: String,
    /// Read-only for the guest.
    pub readonly: bool,
}

impl Share {
    /// Where guests made by `vmk bootstrap` mount it.
    pub fn guest_dir(&self) -> String {
        format!("/mnt/{}", self.tag)
    }

    /// The 9p mount options every 9p share is mounted with in the guest. `msize` of 512
    /// KiB: fewer, larger 9p messages than the kernel's default.
    pub const MOUNT_OPTIONS: &'static str = "trans=virtio,version=9p2000.L,msize=524288";

    /// The tag of the share that `--modules` mounts over /lib/modules in guests `vmk
    /// bootstrap` makes (not a tag VMK_SHARE may use).
    pub const MODULES_TAG: &'static str = "vmk-modules";

    /// The 9p mount options in the guest (`ro` for a read-only share).
    pub fn mount_options(&self) -> String {
        let mut o = Self::MOUNT_OPTIONS.to_string();
        if self.readonly {
            o.push_str(",ro");
        }
        o
    }

    /// The one command that mounts it in any Linux guest with support for `fs` (9p, or
    /// virtiofs: Linux 5.4 and later).
    pub fn mount_command(&self, fs: ShareFs) -> String {
        let dir = self.guest_dir();
        let (fstype, options) = match fs {
            ShareFs::Virtiofs => ("virtiofs", self.readonly.then(|| "ro".to_string())),
            ShareFs::NineP | ShareFs::Auto => ("9p", Some(self.mount_options())),
        };
        let options = options.map(|o| format!("-o {o} ")).unwrap_or_default();
        format!(
            "mkdir -p {dir} && mount -t {fstype} {options}{} {dir}",
            self.tag
        )
    }
}

config_enum!(
    /// How host folders are shared with the guest (VMK_SHARE_FS).
    ShareFs, "one of auto, 9p, virtiofs", {
    /// virtiofs where a virtiofsd that vmk can run is installed, else virtio-9p; a
    /// read-only share always 9p (qemu's virtiofsd cannot enforce read-only).
    Auto = "auto",
    /// virtio-9p in qemu itself: no daemon.
    NineP = "9p",
    /// virtiofs through one virtiofsd per share (an error where none can run).
    Virtiofs = "virtiofs",
});

impl ShareFs {
    /// The name a transport is shown by (`info`, `-D`): `virtio-9p` or `virtiofs`.
    pub fn transport_name(self) -> &'static str {
        match self {
            ShareFs::Virtiofs => "virtiofs",
            ShareFs::NineP | ShareFs::Auto => "virtio-9p",
        }
    }
}

/// Longest mount tag (virtio-9p allows more, virtiofs 36 bytes; short names fit both).
pub const MAX_TAG_LEN: usize = 31;

/// True for a mount tag vmk accepts: letters, digits, `_`, `.` and `-`, not starting with
/// `.` or `-`, at most [`MAX_TAG_LEN`] bytes (it becomes a directory name in the guest).
pub fn is_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TAG_LEN
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The tag a folder gets when none is given: its name, with every character a tag may not
/// hold made `_` and cut to [`MAX_TAG_LEN`] bytes (`my src` → `my_src`).
pub fn default_tag(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TAG_LEN)
        .collect();
    if t.starts_with(['.', '-']) {
        t.replace_range(..1, "_");
    }
    if t.is_empty() {
        t = "share".into();
    }
    t
}

/// `VMK_SHARE`: words split like a shell would (so a folder with spaces is quoted), each
/// `HOSTDIR[:TAG][:ro]` (`:rw` is the default and may be written). The folder is kept as
/// written; `resolve` makes it absolute. Two shares with one tag are an error.
pub fn parse_shares(s: &str, resolve: &dyn Fn(&str) -> PathBuf) -> Result<Vec<Share>, Expected> {
    let expected = || {
        "space-separated HOSTDIR[:TAG][:ro] (TAG: letters, digits, _ . -, at most 31)".to_string()
    };
    let words = shlex::split(s).ok_or_else(expected)?;
    let mut shares: Vec<Share> = Vec::new();
    for w in words {
        let (rest, readonly) = match w.rsplit_once(':') {
            Some((r, "ro")) => (r, true),
            Some((r, "rw")) => (r, false),
            _ => (w.as_str(), false),
        };
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !d.is_empty() => {
                if !is_tag(t) || t == Share::MODULES_TAG {
                    return Err(format!(
                        "{} (bad tag \"{}\")",
                        expected(),
                        crate::text::excerpt(t)
                    ));
                }
                (d, Some(t.to_string()))
            }
            _ => (rest, None),
        };
        if dir.is_empty() {
            return Err(expected());
        }
        let dir = resolve(dir);
        let tag = tag.unwrap_or_else(|| default_tag(&dir));
        if shares.iter().any(|o| o.tag == tag) {
            return Err(format!("{} (tag \"{tag}\" given twice)", expected()));
        }
        shares.push(Share { dir, tag, readonly });
    }
    Ok(shares)
}

/// One port forward of `VMK_PORTS`: `HOSTPORT:GUESTPORT[/udp]` (TCP unless `/udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortForward {
    /// The port on VMK_LISTEN.
    pub host: u16,
    /// The guest's port.
    pub guest: u16,
    /// UDP instead of TCP.
    pub udp: bool,
}

impl PortForward {
    /// `tcp` or `udp`.
    pub fn protocol(&self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest)?;
        if self.udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

/// `VMK_PORTS`: space-separated `HOSTPORT:GUESTPORT[/udp]` (`/tcp` may be written); one
/// host port and protocol at most once.
pub fn parse_ports(s: &str) -> Result<Vec<PortForward>, Expected> {
    let expected = || "space-separated HOSTPORT:GUESTPORT[/udp], ports 1 to 65535".to_string();
    let mut out: Vec<PortForward> = Vec::new();
    for w in s.split_whitespace() {
        let (pair, udp) = match w.rsplit_once('/') {
            Some((p, "udp")) => (p, true),
            Some((p, "tcp")) => (p, false),
            Some(_) => return Err(expected()),
            None => (w, false),
        };
        let (h, g) = pair.split_once(':').ok_or_else(expected)?;
        let host = parse_port(h).map_err(|_| expected())?;
        let guest = parse_port(g).map_err(|_| expected())?;
        let f = PortForward { host, guest, udp };
        if out.iter().any(|o| o.host == host && o.udp == udp) {
            return Err(format!(
                "{} (host port {host}/{} given twice)",
                expected(),
                f.protocol()
            ));
        }
        out.push(f);
    }
    Ok(out)
}

/// A printf format with one integer conversion that makes the VM's MAC from its number,
/// e.g. `52:54:00:00:00:%02x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacFormat {
    format: String,
    prefix: String,
    conversion: Conversion,
    suffix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Conversion {
    zero_pad: bool,
    width: usize,
    radix: Radix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Radix {
    Hex,
    HexUpper,
    Decimal,
}

impl MacFormat {
    /// The format as written in the config.
    pub fn as_str(&self) -> &str {
        &self.format
    }

    /// The MAC address for VM number `n`, checked to be six hex bytes.
    pub fn mac(&self, n: u32) -> Result<String, Expected> {
        let c = &self.conversion;
        let digits = match c.radix {
            Radix::Hex => format!("{n:x}"),
            Radix::HexUpper => format!("{n:X}"),
            Radix::Decimal => n.to_string(),
        };
        let pad = if c.zero_pad { '0' } else { ' ' };
        let padding: String =
            std::iter::repeat_n(pad, c.width.saturating_sub(digits.len())).collect();
        let mac = format!("{}{padding}{digits}{}", self.prefix, self.suffix);
        if is_mac(&mac) {
            Ok(mac.to_ascii_lowercase())
        } else {
            Err(format!(
                "a format that gives a MAC address like 52:54:00:00:00:01, but VM number {n} gives \"{mac}\""
            ))
        }
    }
}

impl Default for MacFormat {
    fn default() -> Self {
        "52:54:00:00:00:%02x"
            .parse()
            .expect("the default MAC format parses")
    }
}

impl FromStr for MacFormat {
    type Err = Expected;
    fn from_str(s: &str) -> Result<Self, Expected> {
        let expected =
            || "a printf format with one %x, %02x or %d, like 52:54:00:00:00:%02x".to_string();
        let (prefix, rest) = s.split_once('%').ok_or_else(expected)?;
        let zero_pad = rest.starts_with('0');
        let width_len = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        let width = if width_len == 0 {
            0
        } else {
            rest[..width_len].parse().map_err(|_| expected())?
        };
        let mut after = rest[width_len..].chars();
        let radix = match after.next() {
            Some('x') => Radix::Hex,
            Some('X') => Radix::HexUpper,
            Some('d') | Some('u') | Some('i') => Radix::Decimal,
            _ => return Err(expected()),
        };
        let suffix: String = after.collect();
        if suffix.contains('%') || prefix.contains('%') || width > 17 {
            return Err(expected());
        }
        let fmt = MacFormat {
            format: s.to_string(),
            prefix: prefix.to_string(),
            conversion: Conversion {
                zero_pad,
                width,
                radix,
            },
            suffix,
        };
        fmt.mac(1)?;
        Ok(fmt)
    }
}

impl fmt::Display for MacFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format)
    }
}

impl Serialize for MacFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.format)
    }
}

/// Six two-digit hex bytes separated by colons.
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes() {
        for (s, mib) in [
            ("2048", 2048),
            ("2G", 2048),
            ("2g", 2048),
            ("512M", 512),
            ("512m", 512),
            ("1T", 1 << 20),
            ("4GiB", 4096),
            (" 1024 ", 1024),
        ] {
            assert_eq!(s.parse::<MemSize>().unwrap().mib(), mib, "{s}");
        }
        for s in [
            "lots",
            "",
            "2X",
            "G",
            "-1",
            "0",
            "1.5G",
            "2 G",
            "99999999999999999T",
            "99999999999T",
            "8",
            "15M",
            "17T",
            "99999999999999999999999",
        ] {
            let e = s.parse::<MemSize>().unwrap_err();
            assert!(e.contains("memory size"), "{s}: {e}");
        }
        assert_eq!("16".parse::<MemSize>().unwrap(), MemSize::MIN);
        assert_eq!("16T".parse::<MemSize>().unwrap(), MemSize::MAX);
    }

    #[test]
    fn disk_sizes() {
        assert_eq!("30G".parse::<Size>().unwrap().bytes(), 30 << 30);
        assert_eq!("512m".parse::<Size>().unwrap().bytes(), 512 << 20);
        assert_eq!("1T".parse::<Size>().unwrap().bytes(), 1 << 40);
        assert_eq!("4096".parse::<Size>().unwrap().bytes(), 4096);
        assert_eq!("30G".parse::<Size>().unwrap().to_string(), "30G");
        assert_eq!("1536M".parse::<Size>().unwrap().to_string(), "1536M");
        assert_eq!("1024T".parse::<Size>().unwrap(), Size::MAX);
        for s in [
            "big",
            "0",
            "",
            "3Q",
            "1.5G",
            "1025T",
            "99999999999999999999999",
        ] {
            assert!(s.parse::<Size>().unwrap_err().contains("disk size"), "{s}");
        }
    }

    #[test]
    fn enums() {
        for m in CacheMode::ALL {
            assert_eq!(m.as_str().parse::<CacheMode>().unwrap(), *m);
        }
        assert_eq!(
            "Writeback".parse::<CacheMode>().unwrap(),
            CacheMode::Writeback
        );
        assert!("fast"
            .parse::<CacheMode>()
            .unwrap_err()
            .contains("writethrough"));
        assert_eq!("NVME".parse::<DiskBus>().unwrap(), DiskBus::Nvme);
        assert!("usb".parse::<DiskBus>().is_err());
        assert_eq!("raw".parse::<DiskFormat>().unwrap(), DiskFormat::Raw);
        assert!("vmdk".parse::<DiskFormat>().is_err());
        assert_eq!("auto".parse::<Accel>().unwrap(), Accel::Auto);
        assert!("hvf".parse::<Accel>().is_err());
        assert_eq!("bridge".parse::<NetType>().unwrap(), NetType::Bridge);
        assert!("tap".parse::<NetType>().is_err());
    }

    #[test]
    fn disk_format_magic() {
        assert_eq!(
            DiskFormat::from_magic(b"QFI\xfb\0\0\0\x03"),
            DiskFormat::Qcow2
        );
        assert_eq!(DiskFormat::from_magic(b"QFI"), DiskFormat::Raw);
        assert_eq!(DiskFormat::from_magic(b"\0\0\0\0"), DiskFormat::Raw);
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        std::fs::write(&q, b"QFI\xfbrest").unwrap();
        assert_eq!(DiskFormat::detect(&q).unwrap(), DiskFormat::Qcow2);
        let r = dir.path().join("r");
        std::fs::write(&r, b"").unwrap();
        assert_eq!(DiskFormat::detect(&r).unwrap(), DiskFormat::Raw);
        assert!(DiskFormat::detect(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn small_values() {
        assert!(parse_bool("Yes").unwrap());
        assert!(!parse_bool("0").unwrap());
        assert_eq!(parse_bool("maybe").unwrap_err(), "yes or no");
        assert_eq!(parse_port("9990").unwrap(), 9990);
        for p in ["0", "65536", "x", "-1"] {
            assert!(parse_port(p).is_err(), "{p}");
        }
        assert_eq!(parse_vnc("99").unwrap(), 99);
        assert!(parse_vnc("100").is_err());
        assert!(parse_vnc("a").is_err());
        assert_eq!(parse_cpus("4").unwrap(), 4);
        assert!(parse_cpus("0").is_err());
        assert!(parse_ip("::1").unwrap().is_loopback());
        assert!(parse_ip("localhost").is_err());
        assert!(parse_word("pc-q35-7.2").is_ok());
        assert!(parse_word("q35,smm=off").is_err());
        assert!(parse_hostname("vm1.example.org").is_ok());
        assert!(parse_hostname("bad host").is_err());
        assert_eq!(
            parse_words("-device 'a b' \"c\"").unwrap(),
            ["-device", "a b", "c"]
        );
        assert!(parse_words("'open").is_err());
        assert_eq!(
            parse_words("$(touch /x); rm").unwrap(),
            ["$(touch", "/x);", "rm"]
        );
    }

    #[test]
    fn mac_formats() {
        let f = MacFormat::default();
        assert_eq!(f.mac(1).unwrap(), "52:54:00:00:00:01");
        assert_eq!(f.mac(99).unwrap(), "52:54:00:00:00:63");
        let d: MacFormat = "52:54:00:12:34:%02d".parse().unwrap();
        assert_eq!(d.mac(7).unwrap(), "52:54:00:12:34:07");
        let short = "52:54:00:12:%x:00".parse::<MacFormat>().unwrap_err();
        assert!(short.contains("gives \"52:54:00:12:1:00\""), "{short}");
        let up: MacFormat = "52:54:00:AB:CD:%02X".parse().unwrap();
        assert_eq!(up.mac(10).unwrap(), "52:54:00:ab:cd:0a");
        for bad in [
            "52:54:00:00:00:01",
            "%s",
            "52:54:00:00:00:%02x%02x",
            "52:54:%02x",
            "52:54:00:00:00:%2q",
        ] {
            assert!(bad.parse::<MacFormat>().is_err(), "{bad}");
        }
        // valid for 1 but not for 200 (three decimal digits)
        let dec: MacFormat = "52:54:00:00:00:%02d".parse().unwrap();
        assert!(dec.mac(99).is_ok());
        assert!(dec.mac(100).is_err());
    }

    #[test]
    fn shares_parse_with_tags_flags_and_odd_paths() {
        let resolve = |d: &str| PathBuf::from("/vm").join(d);
        let s = parse_shares("src '/a b,c:odd:ro' data:d:rw /x/my\\ dir", &resolve).unwrap();
        let got: Vec<(String, &str, bool)> = s
            .iter()
            .map(|s| (s.dir.display().to_string(), s.tag.as_str(), s.readonly))
            .collect();
        assert_eq!(
            got,
            [
                ("/vm/src".to_string(), "src", false),
                ("/a b,c".to_string(), "odd", true),
                ("/vm/data".to_string(), "d", false),
                ("/x/my dir".to_string(), "my_dir", false),
            ]
        );
        assert_eq!(
            s[1].mount_command(ShareFs::NineP),
            "mkdir -p /mnt/odd && mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro odd /mnt/odd"
        );
        assert_eq!(
            s[2].mount_command(ShareFs::Virtiofs),
            "mkdir -p /mnt/d && mount -t virtiofs d /mnt/d"
        );
        assert!(parse_shares("a:x b:x", &resolve)
            .unwrap_err()
            .contains("given twice"));
        assert!(parse_shares("a:bad/tag", &resolve).is_err());
        assert!(parse_shares("a:vmk-modules", &resolve).is_err());
        assert!(parse_shares(":ro", &resolve).is_err());
        assert!(parse_shares("'unbalanced", &resolve).is_err());
        assert_eq!(default_tag(Path::new("/.hidden")), "_hidden");
    }

    #[test]
    fn ports_parse() {
        let p = parse_ports("8080:80 5353:53/udp 2222:22/tcp").unwrap();
        assert_eq!(
            p,
            [
                PortForward {
                    host: 8080,
                    guest: 80,
                    udp: false
                },
                PortForward {
                    host: 5353,
                    guest: 53,
                    udp: true
                },
                PortForward {
                    host: 2222,
                    guest: 22,
                    udp: false
                },
            ]
        );
        assert_eq!(p[1].to_string(), "5353:53/udp");
        assert!(parse_ports("8080:80 8080:81")
            .unwrap_err()
            .contains("given twice"));
        parse_ports("8080:80 8080:80/udp").unwrap();
        for bad in ["80", "0:80", "80:70000", "80:80/sctp", "a:b"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
