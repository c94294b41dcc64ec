//! The one table of config keys: name, kind, default and help for every `VMK_*` key.
//!
//! Everything that lists or checks keys reads this table: the loader, `vmk set`, `vmk info`,
//! `vmk newconfig`, the man page vmk-config(5). Adding a key means adding a row here and a field in
//! [`super::VmConfig`].

use super::values::{
    self, Accel, CacheMode, DiskBus, DiskFormat, Firmware, MacFormat, MemSize, NetType, NicModel,
    RtcBase, ShareFs, Size,
};
use super::ConfigError;

/// What kind of value a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Free text.
    Text,
    /// One word without spaces or commas (names, machine types, bridges).
    Word,
    /// A host name.
    Hostname,
    /// An absolute path inside the guest, for its kernel command line.
    GuestPath,
    /// A memory size ([`MemSize`]).
    Mem,
    /// A disk size ([`Size`]).
    Size,
    /// A [`CacheMode`].
    Cache,
    /// A [`DiskBus`].
    Bus,
    /// A [`DiskFormat`].
    Format,
    /// An [`Accel`].
    Accel,
    /// A [`NetType`].
    Net,
    /// A [`Firmware`].
    Firmware,
    /// A [`NicModel`].
    Nic,
    /// An [`RtcBase`].
    Rtc,
    /// yes or no.
    Bool,
    /// A TCP port.
    Port,
    /// The VM number, 0 to 99.
    Vnc,
    /// A cpu count.
    Cpus,
    /// A [`MacFormat`].
    MacFormat,
    /// An IP address.
    Ip,
    /// A file or directory; relative to the VM directory, `~/` is the home directory.
    Path,
    /// Words split like a shell would (without running anything).
    Words,
    /// Host folders shared with the guest: `HOSTDIR[:TAG][:ro]` words.
    Shares,
    /// A [`ShareFs`].
    ShareFs,
    /// Port forwards: `HOSTPORT:GUESTPORT[/udp]` words.
    Ports,
}

impl KeyKind {
    /// What a value of this kind looks like, for the documentation.
    pub fn describe(self) -> String {
        fn one_of<T: std::fmt::Display>(all: &[T]) -> String {
            let names: Vec<String> = all.iter().map(T::to_string).collect();
            format!("one of {}", names.join(", "))
        }
        match self {
            KeyKind::Text => "text".into(),
            KeyKind::Word => "a word (letters, digits and . _ - + : @)".into(),
            KeyKind::Hostname => "a host name".into(),
            KeyKind::GuestPath => {
                "an absolute path in the guest (letters, digits and / . _ -)".into()
            }
            KeyKind::Mem => {
                "a memory size from 16M to 16T: MiB, or with M, G or T (2048, 2G, 512M)".into()
            }
            KeyKind::Size => "a disk size up to 1024T: bytes, or with K, M, G or T (30G)".into(),
            KeyKind::Cache => one_of(CacheMode::ALL),
            KeyKind::Bus => one_of(DiskBus::ALL),
            KeyKind::Format => one_of(DiskFormat::ALL),
            KeyKind::Accel => one_of(Accel::ALL),
            KeyKind::Net => one_of(NetType::ALL),
            KeyKind::Firmware => one_of(Firmware::ALL),
            KeyKind::Nic => one_of(NicModel::ALL),
            KeyKind::Rtc => one_of(RtcBase::ALL),
            KeyKind::ShareFs => one_of(ShareFs::ALL),
            KeyKind::Bool => "yes or no".into(),
            KeyKind::Port => "a TCP port, 1 to 65535".into(),
            KeyKind::Vnc => "a VM number, 0 to 99".into(),
            KeyKind::Cpus => "a cpu count, 1 to 1024".into(),
            KeyKind::MacFormat => "a printf format with one %x, %02x or %d".into(),
            KeyKind::Ip => "an IP address".into(),
            KeyKind::Path => {
                "a path, relative to the VM directory; ~/ is the home directory".into()
            }
            KeyKind::Words => "words, split like a shell would (nothing is run)".into(),
            KeyKind::Ports => "space-separated HOSTPORT:GUESTPORT[/udp] (TCP unless /udp)".into(),
            KeyKind::Shares => {
                "space-separated HOSTDIR[:TAG][:ro] (quoted like shell words; TAG defaults to \
                 the folder's name; HOSTDIR relative to the VM directory, ~/ is the home \
                 directory)"
                    .into()
            }
        }
    }

    /// Checks a non-empty value; `Err` says what was expected.
    pub fn check(self, value: &str) -> Result<(), values::Expected> {
        match self {
            KeyKind::Text | KeyKind::Path => Ok(()),
            KeyKind::Word => values::parse_word(value).map(drop),
            KeyKind::Hostname => values::parse_hostname(value).map(drop),
            KeyKind::GuestPath => values::parse_guest_path(value).map(drop),
            KeyKind::Mem => value.parse::<MemSize>().map(drop),
            KeyKind::Size => value.parse::<Size>().map(drop),
            KeyKind::Cache => value.parse::<CacheMode>().map(drop),
            KeyKind::Bus => value.parse::<DiskBus>().map(drop),
            KeyKind::Format => value.parse::<DiskFormat>().map(drop),
            KeyKind::Accel => value.parse::<Accel>().map(drop),
            KeyKind::Net => value.parse::<NetType>().map(drop),
            KeyKind::Firmware => value.parse::<Firmware>().map(drop),
            KeyKind::Nic => value.parse::<NicModel>().map(drop),
            KeyKind::Rtc => value.parse::<RtcBase>().map(drop),
            KeyKind::ShareFs => value.parse::<ShareFs>().map(drop),
            KeyKind::Bool => values::parse_bool(value).map(drop),
            KeyKind::Port => values::parse_port(value).map(drop),
            KeyKind::Vnc => values::parse_vnc(value).map(drop),
            KeyKind::Cpus => values::parse_cpus(value).map(drop),
            KeyKind::MacFormat => value.parse::<MacFormat>().map(drop),
            KeyKind::Ip => values::parse_ip(value).map(drop),
            KeyKind::Words => values::parse_words(value).map(drop),
            KeyKind::Shares => values::parse_shares(value, &|d| d.into()).map(drop),
            KeyKind::Ports => values::parse_ports(value).map(drop),
        }
    }
}

/// One config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// `VMK_…`.
    pub name: &'static str,
    /// What it holds.
    pub kind: KeyKind,
    /// Its default as it would be written in a config; empty when it has none.
    pub default: &'static str,
    /// A value a config might set (unquoted), for the documentation.
    pub example: &'static str,
    /// One line of help.
    pub help: &'static str,
}

macro_rules! key {
    ($name:literal, $kind:ident, $default:literal, $example:literal, $help:literal) => {
        KeySpec {
            name: $name,
            kind: KeyKind::$kind,
            default: $default,
            example: $example,
            help: $help,
        }
    };
}

static KEYS: &[KeySpec] = &[
    key!(
        "VMK_NAME",
        Word,
        "",
        "sles15",
        "identifier, qemu -name (default: the VM directory's name)"
    ),
    key!(
        "VMK_TAG",
        Text,
        "",
        "SLES 15 SP6 before the kernel update",
        "free text shown by `vmk info`"
    ),
    key!(
        "VMK_VNC",
        Vnc,
        "1",
        "3",
        "the VM's number: VNC display and base of its ports, MAC and hostname"
    ),
    key!(
        "VMK_MEM",
        Mem,
        "1024",
        "4G",
        "memory, qemu -m: 2048 (MiB), 2G, 512M"
    ),
    key!("VMK_CPU", Cpus, "2", "4", "number of cpus, qemu -smp"),
    key!(
        "VMK_DISK0",
        Path,
        "",
        "sles15.qcow2",
        "first disk image (required to run; `vmk mkdisk0` creates it)"
    ),
    key!(
        "VMK_DISK0_FORMAT",
        Format,
        "",
        "raw",
        "qcow2 or raw; detected from the image when empty"
    ),
    key!(
        "VMK_DISK0_CACHE",
        Cache,
        "none",
        "unsafe",
        "qemu cache mode of disk0: none, writeback, writethrough, directsync, unsafe"
    ),
    key!(
        "VMK_DISK_CACHE",
        Cache,
        "none",
        "writeback",
        "qemu cache mode of disk1…disk6"
    ),
    key!(
        "VMK_DISK_BUS",
        Bus,
        "scsi",
        "virtio",
        "bus of all disks: scsi (virtio-scsi: guests see sda…, as under the original vmk), virtio (virtio-blk: vda…), lsi (the original's LSI 53C895A controller), ide, nvme"
    ),
    key!(
        "VMK_DISK1",
        Path,
        "",
        "scratch1.qcow2",
        "extra disk image 1 (when empty: the file disk1 in the VM directory, if it exists)"
    ),
    key!(
        "VMK_DISK2",
        Path,
        "",
        "scratch2.qcow2",
        "extra disk image 2 (when empty: the file disk2, if it exists)"
    ),
    key!(
        "VMK_DISK3",
        Path,
        "",
        "scratch3.qcow2",
        "extra disk image 3 (when empty: the file disk3, if it exists)"
    ),
    key!(
        "VMK_DISK4",
        Path,
        "",
        "scratch4.qcow2",
        "extra disk image 4 (when empty: the file disk4, if it exists)"
    ),
    key!(
        "VMK_DISK5",
        Path,
        "",
        "scratch5.qcow2",
        "extra disk image 5 (when empty: the file disk5, if it exists)"
    ),
    key!(
        "VMK_DISK6",
        Path,
        "",
        "scratch6.qcow2",
        "extra disk image 6 (when empty: the file disk6, if it exists)"
    ),
    key!(
        "VMK_ISO",
        Text,
        "",
        "SLE-15-SP6-Full-x86_64-GM-Media1.iso",
        "install medium: a path, or a file name looked up in VMK_ISO_DIR"
    ),
    key!(
        "VMK_ISO_DIR",
        Path,
        "",
        "~/iso",
        "directory holding install media"
    ),
    key!(
        "VMK_KERNEL",
        Path,
        "",
        "vmlinuz",
        "kernel for direct kernel boot"
    ),
    key!(
        "VMK_INITRD",
        Path,
        "",
        "initrd.img",
        "initrd for direct kernel boot"
    ),
    key!(
        "VMK_APPEND",
        Text,
        "",
        "console=ttyS0 root=/dev/sda rw",
        "kernel command line for direct kernel boot"
    ),
    key!(
        "VMK_EXEC_INIT",
        GuestPath,
        "",
        "/usr/local/lib/vmk/exec-init",
        "the guest's small init for one-shot runs: with direct kernel boot and user networking, `run --exec` and `snap run --exec` boot with init=PATH (no systemd; --full-boot boots normally); `vmk bootstrap` sets it, empty means always the full boot"
    ),
    key!(
        "VMK_ARCH",
        Word,
        "",
        "aarch64",
        "guest architecture: x86_64, aarch64 (or arm64), ppc64le (or ppc64el), s390x, riscv64; it picks qemu, machine, cpu, console, devices and firmware (`vmk checksetup` says what each needs); the installers detect the medium's when empty"
    ),
    key!(
        "VMK_ACCEL",
        Accel,
        "auto",
        "tcg",
        "kvm, tcg, or auto (kvm when /dev/kvm opens and a probe boot shows that KVM runs guests, else tcg with a warning)"
    ),
    key!(
        "VMK_MACHINE",
        Word,
        "",
        "pc",
        "qemu machine type (default q35; pc is the original vmk's)"
    ),
    key!(
        "VMK_NIC",
        Nic,
        "virtio",
        "e1000",
        "network card: virtio (virtio-net), e1000 (the original vmk's card), e1000e, rtl8139"
    ),
    key!(
        "VMK_RTC",
        Rtc,
        "utc",
        "localtime",
        "what the guest's hardware clock keeps: utc, or localtime (as the original vmk)"
    ),
    key!(
        "VMK_FIRMWARE",
        Firmware,
        "bios",
        "uefi",
        "bios (SeaBIOS; x86 only, other architectures boot UEFI), uefi (OVMF/AAVMF from qemu's firmware descriptors, with the VM's own variable store <disk0>.efivars), uefi-secure (Secure Boot, the distribution's keys enrolled)"
    ),
    key!(
        "VMK_TPM",
        Bool,
        "no",
        "yes",
        "yes: a TPM 2.0 emulated by swtpm, its state in <disk0>.tpm beside disk0"
    ),
    key!(
        "VMK_CPU_MODEL",
        Text,
        "",
        "Skylake-Client",
        "qemu cpu model, with flags if needed (default: host under kvm)"
    ),
    key!(
        "VMK_NET_TYPE",
        Net,
        "user",
        "bridge",
        "user (NAT, ssh port forwarded), bridge (qemu-bridge-helper), none"
    ),
    key!(
        "VMK_BRIDGE",
        Word,
        "br0",
        "br1",
        "host bridge for VMK_NET_TYPE=bridge"
    ),
    key!(
        "VMK_MAC_BASE_FORMAT",
        MacFormat,
        "52:54:00:00:00:%02x",
        "52:54:00:12:34:%02x",
        "printf format turned into the MAC with VMK_VNC"
    ),
    key!(
        "VMK_IP",
        Ip,
        "",
        "192.168.10.23",
        "address of a bridged VM, when neighbour lookup can't find it"
    ),
    key!(
        "VMK_HOSTNAME",
        Hostname,
        "",
        "sles15-vm3",
        "host name of a bridged VM"
    ),
    key!(
        "VMK_TELNET_BASE",
        Port,
        "9990",
        "7000",
        "serial console TCP port = base + VMK_VNC"
    ),
    key!(
        "VMK_SSH_BASE",
        Port,
        "10020",
        "2200",
        "user networking: host port forwarded to guest port 22 = base + VMK_VNC"
    ),
    key!(
        "VMK_LISTEN",
        Ip,
        "127.0.0.1",
        "0.0.0.0",
        "address for VNC, serial console and forwarded ports"
    ),
    key!(
        "VMK_CONSOLE",
        Word,
        "socket",
        "telnet",
        "serial console of `vmk run`: socket (a unix socket beside the QMP socket that only the VM's user can open; `vmk console` attaches) or telnet (the original tool's TCP port VMK_TELNET_BASE+N, open to every local user)"
    ),
    key!(
        "VMK_VNC_SOCKET",
        Bool,
        "no",
        "yes",
        "yes: the VNC display on a unix socket beside the QMP socket that only the VM's user can open (`vmk vnc` hands its path to the viewer); no: TCP port 5900+VMK_VNC on VMK_LISTEN, open to every local user"
    ),
    key!(
        "VMK_QEMU",
        Path,
        "",
        "/usr/local/bin/qemu-system-x86_64",
        "qemu binary (default: qemu-kvm, then qemu-system-<arch> on PATH)"
    ),
    key!("VMK_INST_DISK0", Size, "30G", "60G", "size of a new disk0"),
    key!(
        "VMK_INST_DISK",
        Size,
        "100G",
        "20G",
        "size of new extra disks disk1…disk6"
    ),
    key!(
        "VMK_INST_APPEND",
        Text,
        "",
        "textmode=1 self_update=0",
        "kernel arguments for installation"
    ),
    key!(
        "VMK_EXTRA_ARGS",
        Words,
        "",
        "-device virtio-rng-pci",
        "extra qemu arguments, split like shell words, appended last"
    ),
    key!(
        "VMK_SSH_CREDENTIAL",
        Bool,
        "yes",
        "no",
        "give vm-key.pub to systemd guests as an SMBIOS credential for root"
    ),
    key!(
        "VMK_CLOUD_INIT",
        Bool,
        "no",
        "yes",
        "attach a cloud-init seed image"
    ),
    key!(
        "VMK_LIBVIRT_URI",
        Text,
        "",
        "qemu+ssh://root@host.example/system",
        "libvirt connection of `vmk libvirt` (empty: libvirt's default, LIBVIRT_DEFAULT_URI or virsh's own); a remote one gets the disk images uploaded into VMK_LIBVIRT_POOL"
    ),
    key!(
        "VMK_LIBVIRT_POOL",
        Word,
        "default",
        "vmk",
        "libvirt storage pool on a remote host that `vmk libvirt define` uploads the disk images into"

    ),
    key!(
        "VMK_SHARE",
        Shares,
        "",
        "~/src/linux:linux ~/results:out ~/data:data:ro",
        "host folders shared with the guest (virtiofs or virtio-9p: VMK_SHARE_FS); guests made by `vmk bootstrap` mount each at /mnt/TAG"
    ),
    key!(
        "VMK_SHARE_FS",
        ShareFs,
        "auto",
        "9p",
        "how VMK_SHARE's folders reach the guest: auto (virtiofs where qemu's virtiofsd is installed and vmk runs as root, else virtio-9p; a :ro share is always virtio-9p, since virtiofsd cannot enforce read-only), 9p (virtio-9p in qemu, no daemon), virtiofs (one virtiofsd per share; an error where none can run)"
    ),
    key!(
        "VMK_PORTS",
        Ports,
        "",
        "8080:80 5353:53/udp",
        "with user networking: host ports on VMK_LISTEN forwarded to guest ports"
    ),
];

/// Settings internal to the original vmk's script that users put into rc files (its debug
/// switch, its lazy defaults, its dry run): vmk accepts them with a one-line warning that it
/// ignores them, instead of refusing every VM that reads such a file. (vmk's own ways:
/// `-x`/`-v`, `-D`; defaults apply where a key is empty.)
pub const ORIGINAL_INTERNAL_KEYS: &[&str] = &["VMK_DEBUG", "VMK_LAZY_DEFAULTS", "VMK_DRY_RUN"];

/// Every config key, in documentation order.
pub fn keys() -> &'static [KeySpec] {
    KEYS
}

/// The key called `name`.
pub fn key(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// The known key closest to `name`, when one is close enough to be a typo: first the key
/// that `name` spells in another case (`VMK_mem`, `vmk_mem`), then one a few letters away.
pub fn closest_key(name: &str) -> Option<&'static str> {
    if let Some(k) = KEYS.iter().find(|k| k.name.eq_ignore_ascii_case(name)) {
        return Some(k.name);
    }
    // far longer than any key is no typo of one (and would cost quadratic time to compare)
    if name.len() > 40 {
        return None;
    }
    // compared without the shared `VMK_` prefix, which alone would make any `VMK_X` look
    // like a key (`MY_VAR` as `VMK_MY_VAR` is no typo of `VMK_ARCH`)
    let stem = |s: &'static str| s.strip_prefix("VMK_").unwrap_or(s);
    let typed = name.strip_prefix("VMK_").unwrap_or(name);
    KEYS.iter()
        .map(|k| (strsim::jaro_winkler(typed, stem(k.name)), k.name))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

/// The message for an unknown key, with the closest known one (the name is quoted as a
/// short, escaped excerpt).
pub fn unknown_key_message(name: &str) -> String {
    let shown = crate::text::excerpt(name);
    match closest_key(name) {
        Some(k) => format!("unknown key {shown} (did you mean {k}?)"),
        None => format!("unknown key {shown} (vmk-config(5) lists the keys)"),
    }
}

/// The key that `name` spells in another case (`vmk_mem` for VMK_MEM): such a name is an
/// error rather than a variable of the user's own, because it is a key gone wrong far more
/// often than a helper variable, and silently ignoring it would leave VMK_MEM at its default.
fn other_case_of_key(name: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|k| k.name != name && k.name.eq_ignore_ascii_case(name))
        .map(|k| k.name)
}

/// Checks one value for one key, as the loader (for every file, the environment and the
/// command line) and `vmk set` need before using or writing it.
///
/// Empty values are accepted (they mean "unset": the default applies). Names that do not
/// start with `VMK_` are accepted as they are (they only serve `${NAME}` references; a value
/// that uses one is checked where it is used), except one that spells a key in another case
/// (`vmk_mem`), which is an error naming the key. A value of a key is at most
/// [`MAX_VALUE_BYTES`](super::files::MAX_VALUE_BYTES) and holds no control characters (NUL,
/// ESC, BEL…; a word list, VMK_EXTRA_ARGS, may be split over lines with newlines and tabs).
/// Errors name the key but no file, and quote the value as a short escaped excerpt; callers
/// that know where the value came from use [`ConfigError::with_origin`].
pub fn validate_value(name: &str, value: &str) -> Result<(), ConfigError> {
    if !name.starts_with("VMK_") {
        return match other_case_of_key(name) {
            Some(_) => Err(ConfigError::new(unknown_key_message(name))),
            None => Ok(()),
        };
    }
    let spec = key(name).ok_or_else(|| ConfigError::new(unknown_key_message(name)))?;
    if value.is_empty() {
        return Ok(());
    }
    check_text(spec, value).map_err(|e| ConfigError::new(e).with_key(name))?;
    spec.kind.check(value).map_err(|expected| {
        ConfigError::new(format!(
            "expected {expected}, got \"{}\"",
            crate::text::excerpt(value)
        ))
        .with_key(name)
    })
}

/// The rules every value of a key follows, whatever its kind: bounded, and no control
/// characters (which would reach qemu's command line, files and terminals as they are).
fn check_text(spec: &KeySpec, value: &str) -> Result<(), String> {
    let max = super::files::MAX_VALUE_BYTES;
    if value.len() > max {
        return Err(format!(
            "the value is {} bytes, longer than a value may be ({} KiB)",
            value.len(),
            max >> 10
        ));
    }
    let whitespace_ok = spec.kind == KeyKind::Words;
    if let Some((i, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !(whitespace_ok && matches!(c, '\t' | '\n' | '\r')))
    {
        let what = match c {
            '\0' => "a NUL byte".to_string(),
            c => format!(
                "a control character ({})",
                crate::text::escaped_line(&c.to_string())
            ),
        };
        return Err(format!(
            "the value holds {what} at character {}: values must be printable text{}",
            i + 1,
            if whitespace_ok {
                " (tabs and newlines may separate words)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn suggestions_ignore_the_shared_prefix() {
        assert_eq!(closest_key("VMK_MEMM"), Some("VMK_MEM"));
        assert_eq!(closest_key("VMK_DISK_CACH"), Some("VMK_DISK_CACHE"));
        assert_eq!(closest_key("vmk_mem"), Some("VMK_MEM"));
        // a user's own variable, tried as VMK_MY_VAR, is no typo of VMK_ARCH
        assert_eq!(closest_key("VMK_MY_VAR"), None);
    }

    use super::*;

    #[test]
    fn table_is_sane() {
        let mut names: Vec<&str> = keys().iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), keys().len(), "duplicate key");
        for k in keys() {
            assert!(k.name.starts_with("VMK_"));
            assert!(!k.help.is_empty());
            if !k.default.is_empty() {
                validate_value(k.name, k.default)
                    .unwrap_or_else(|e| panic!("default of {}: {e}", k.name));
            }
            assert!(!k.example.is_empty(), "{} has no example", k.name);
            assert_ne!(
                k.example, k.default,
                "the example of {} is its default",
                k.name
            );
            validate_value(k.name, k.example)
                .unwrap_or_else(|e| panic!("example of {}: {e}", k.name));
        }
        for spec_key in [
            "VMK_NAME",
            "VMK_TAG",
            "VMK_VNC",
            "VMK_MEM",
            "VMK_CPU",
            "VMK_DISK0",
            "VMK_DISK0_FORMAT",
            "VMK_DISK0_CACHE",
            "VMK_DISK_CACHE",
            "VMK_DISK_BUS",
            "VMK_ISO",
            "VMK_ISO_DIR",
            "VMK_KERNEL",
            "VMK_INITRD",
            "VMK_APPEND",
            "VMK_ARCH",
            "VMK_ACCEL",
            "VMK_MACHINE",
            "VMK_CPU_MODEL",
            "VMK_NET_TYPE",
            "VMK_BRIDGE",
            "VMK_MAC_BASE_FORMAT",
            "VMK_IP",
            "VMK_HOSTNAME",
            "VMK_TELNET_BASE",
            "VMK_SSH_BASE",
            "VMK_LISTEN",
            "VMK_QEMU",
            "VMK_INST_DISK0",
            "VMK_INST_DISK",
            "VMK_INST_APPEND",
            "VMK_EXTRA_ARGS",
            "VMK_DISK1",
            "VMK_DISK6",
            "VMK_SSH_CREDENTIAL",
            "VMK_CLOUD_INIT",
            "VMK_FIRMWARE",
            "VMK_TPM",
            "VMK_NIC",
            "VMK_RTC",
        ] {
            assert!(key(spec_key).is_some(), "{spec_key} missing");
        }
    }

    #[test]
    fn single_values() {
        validate_value("VMK_MEM", "2G").unwrap();
        validate_value("VMK_MEM", "").unwrap();
        validate_value("MY_VAR", "anything $(at all)").unwrap();
        assert_eq!(
            validate_value("VMK_MEM", "lots").unwrap_err().to_string(),
            "VMK_MEM: expected a memory size like 2048, 2G or 512M, got \"lots\""
        );
        assert_eq!(
            validate_value("VMK_MEMM", "1").unwrap_err().to_string(),
            "unknown key VMK_MEMM (did you mean VMK_MEM?)"
        );
        assert_eq!(
            validate_value("VMK_DISK_CAHCE", "1")
                .unwrap_err()
                .to_string(),
            "unknown key VMK_DISK_CAHCE (did you mean VMK_DISK_CACHE?)"
        );
        assert!(validate_value("VMK_ZZZZZZZZZZZZZZZZZZZZZ", "1")
            .unwrap_err()
            .to_string()
            .contains("vmk-config(5)"));
        assert!(validate_value("VMK_NET_TYPE", "tap")
            .unwrap_err()
            .to_string()
            .contains("user, bridge, none"));
        assert!(validate_value("VMK_NAME", "a,b").is_err());
        assert!(validate_value("VMK_EXTRA_ARGS", "-device 'x").is_err());
    }
}
