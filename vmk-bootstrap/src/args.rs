//! The command line of `vmk bootstrap`: its options and the checks of their values, so that
//! a bad value is refused before anything is looked at or created.

use std::path::PathBuf;

use vmk_common::config::{self, Size};

use crate::diskboot::Boot;

/// Which distribution to install.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Distro {
    /// Debian, with debootstrap.
    #[default]
    Debian,
    /// openSUSE, with `zypper --root` (needs zypper on this machine).
    Opensuse,
}

/// Options of `bootstrap`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Examples:
  vmk bootstrap /vms/deb1                 Debian bookworm, 4G disk, first free VM number
  vmk bootstrap --packages vim,git --size 8G --vnc 5 deb2
  vmk bootstrap --boot disk deb3          GRUB and shim inside disk0: boots under any
                                          VMK_FIRMWARE without VMK_KERNEL
  cd deb2 && vmk run && vmk waitssh -- uname -a

Needs root (debootstrap installs packages as root). The freshly installed system is kept in
~/.cache/vmk (a tar of about 400 MB per release, architecture, mirror and package list), so
the next bootstrap of the same kind takes seconds, not minutes; each VM still gets its own
ssh host keys, machine-id and vm-key (--no-cache: neither use nor fill the cache).")]
pub struct BootstrapArgs {
    /// The distribution to install
    #[arg(long, value_enum, default_value_t = Distro::Debian)]
    pub distro: Distro,

    /// The release to install [default: bookworm]
    #[arg(long, value_name = "SUITE", value_parser = parse_suite)]
    pub suite: Option<String>,

    /// Package mirror [default: the Debian mirror apt uses here, else deb.debian.org]
    #[arg(long, value_name = "URL", value_parser = parse_mirror)]
    pub mirror: Option<String>,

    /// Size of disk0 (a sparse file: it takes only what is used)
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    pub size: Size,

    /// The guest's architecture: amd64, arm64, ppc64el, s390x, riscv64 (or qemu's names:
    /// x86_64, aarch64, ppc64le) [default: this machine's]. Another architecture than this
    /// machine's is installed by mmdebstrap through qemu-user: it needs mmdebstrap,
    /// qemu-user-static and binfmt-support, and takes minutes the first time
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    pub arch: Option<String>,

    /// More packages to install (comma-separated; repeat the option as you like)
    #[arg(long, value_name = "PKG,…", value_delimiter = ',', value_parser = parse_package)]
    pub packages: Vec<String>,

    /// The VM's number, VMK_VNC, 0–99 [default: the first whose ports are free and that no
    /// VM directory beside DIR uses]
    #[arg(long, value_name = "N", value_parser = parse_vnc)]
    pub vnc: Option<u8>,

    /// VMK_NAME of the new VM [default: DIR's name]; its hostname is made from it
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// How the VM boots: `kernel`, direct kernel boot of the guest's kernel copied out
    /// (fast; disk0 is one ext4 filesystem), or `disk`, a partitioned disk0 with GRUB
    /// (BIOS) and shim + GRUB (UEFI, Secure Boot) inside, booted without VMK_KERNEL under
    /// any VMK_FIRMWARE, so a kernel update inside the guest just works (amd64)
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Boot::Kernel)]
    pub boot: Boot,

    /// Neither use nor fill the cache of installed systems in ~/.cache/vmk
    #[arg(long)]
    pub no_cache: bool,

    /// The new VM directory: must not exist, or be empty
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// An architecture of vmk's table, as Debian names it.
fn parse_arch(s: &str) -> Result<String, String> {
    vmk_common::qemu::arch::lookup(s)
        .map(|a| a.debian.to_string())
        .ok_or_else(|| {
            let names: Vec<&str> = vmk_common::qemu::arch::ARCHES
                .iter()
                .map(|a| a.debian)
                .collect();
            format!("expected one of {}", names.join(", "))
        })
}

fn parse_suite(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !s.starts_with('-');
    ok.then(|| s.to_string())
        .ok_or_else(|| "expected a release name such as bookworm or trixie".into())
}

fn parse_mirror(s: &str) -> Result<String, String> {
    let ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|p| s.starts_with(p))
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| s.to_string())
        .ok_or_else(|| "expected an http://, https:// or file:/ URL of a package mirror".into())
}

fn parse_size(s: &str) -> Result<Size, String> {
    let size: Size = s
        .parse()
        .map_err(|_| "expected a size such as 4G or 8192M".to_string())?;
    if size.bytes() < 512 << 20 {
        return Err("too small: a bootstrapped system needs at least 512M".into());
    }
    Ok(size)
}

fn parse_package(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:_".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("`{s}` is not a package name (lowercase letters, digits, + - . :)"))
}

fn parse_vnc(s: &str) -> Result<u8, String> {
    config::values::parse_vnc(s).map_err(|_| "expected a VM number from 0 to 99".to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    config::values::parse_word(s)
        .map_err(|_| "expected a single word of letters, digits and . _ - + : @".to_string())
}

/// `bootstrap ARGV…` parsed as the front door would (for the tests of every module).
#[cfg(test)]
pub(crate) fn parse(argv: &[&str]) -> Result<BootstrapArgs, clap::Error> {
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BootstrapArgs,
    }

    Cli::try_parse_from(std::iter::once("bootstrap").chain(argv.iter().copied())).map(|c| c.args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_by_either_name() {
        assert_eq!(parse_arch("arm64").unwrap(), "arm64");
        assert_eq!(parse_arch("aarch64").unwrap(), "arm64");
        assert_eq!(parse_arch("ppc64le").unwrap(), "ppc64el");
        let e = parse_arch("m68k").unwrap_err();
        assert!(e.contains("amd64, arm64, ppc64el, s390x, riscv64"), "{e}");
    }

    #[test]
    fn arguments_are_checked() {
        let a = parse(&[
            "--packages",
            "vim,git",
            "--packages",
            "htop",
            "--vnc",
            "85",
            "d",
        ])
        .unwrap();
        assert_eq!(a.packages, ["vim", "git", "htop"]);
        assert_eq!(a.vnc, Some(85));
        assert_eq!(a.size.bytes(), 4 << 30);
        assert_eq!(a.distro, Distro::Debian);
        assert_eq!(a.boot, Boot::Kernel);
        assert_eq!(parse(&["--boot", "disk", "d"]).unwrap().boot, Boot::Disk);
        assert_eq!(parse(&["--size", "8G", "d"]).unwrap().size.bytes(), 8 << 30);
        assert!(parse(&["--opensuse", "d"]).is_err());
        assert_eq!(
            parse(&["--distro", "opensuse", "d"]).unwrap().distro,
            Distro::Opensuse
        );
        for bad in [
            &["--vnc", "100", "d"][..],
            &["--size", "lots", "d"],
            &["--size", "100M", "d"],
            &["--packages", "vim;rm", "d"],
            &["--packages", "-x", "d"],
            &["--suite", "Book Worm", "d"],
            &["--mirror", "ftp://x/debian", "d"],
            &["--name", "a b", "d"],
            &["--boot", "grub", "d"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
