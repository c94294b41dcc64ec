//! The Debian recipe: what a bootstrapped Debian guest is made of (release, architecture,
//! mirror, packages) and the steps that make an installed tree a VM's system (debootstrap,
//! configuration, no root password, the ssh key). Public, so that the test guest
//! (`vmk-testguest`) is built by these very steps.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vmk_common::host::command;
use vmk_common::layout::{KEY_FILE, PUBLIC_KEY_FILE};

use crate::image::ROOT_LABEL;
use crate::runner::CommandRunner;

/// Default Debian release.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Debian packages every bootstrapped guest gets (plus the kernel: [`debian_packages`]).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "udev",
    "iproute2",
    "kmod",
    "qemu-guest-agent",
    "ca-certificates",
];

/// The installer of another architecture's system: debootstrap cannot set anything up
/// before the packages' maintainer scripts run, and the costly one under emulation (the
/// kernel's initrd) must find vmk's small-initrd settings already there.
pub const MMDEBSTRAP: &str = "mmdebstrap";

/// What dpkg leaves out of a system of another architecture (documentation, man pages,
/// translations; the copyright files stay).
const DPKG_PATH_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
];

/// A Debian system to install with debootstrap: release, architecture, mirror, packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianRoot {
    /// The release (bookworm, trixie…).
    pub suite: String,
    /// Debian architecture (amd64, arm64…), see [`debian_arch`].
    pub arch: String,
    /// Package mirror URL, see [`apt_mirror`].
    pub mirror: String,
    /// Packages besides debootstrap's minbase (the kernel among them, for a bootable system).
    pub packages: Vec<String>,
}

impl DebianRoot {
    /// The debootstrap options shared by every run: variant, arch, packages.
    pub fn debootstrap_args(&self) -> Vec<String> {
        vec![
            "--variant=minbase".into(),
            format!("--arch={}", self.arch),
            format!("--include={}", self.packages.join(",")),
        ]
    }

    /// Whether this is another architecture than this machine's: installed with
    /// [`MMDEBSTRAP`] through qemu-user (see [`debootstrap`]).
    pub fn is_foreign(&self) -> bool {
        debian_arch().ok().as_deref() != Some(self.arch.as_str())
    }

    /// The arguments of the mmdebstrap run that installs another architecture into
    /// `target` (which already holds the initrd settings, hence `--skip=check/empty`):
    /// debootstrap's minbase and packages, no recommends (mmdebstrap's default), and no
    /// documentation, man pages or translations unpacked (dpkg's path filters, kept in the
    /// guest for later installs): every file costs under emulation.
    pub(crate) fn mmdebstrap_argv(&self, target: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = [
            "--mode=root".to_string(),
            "--variant=minbase".into(),
            format!("--architectures={}", self.arch),
            format!("--include={}", self.packages.join(",")),
            "--skip=check/empty".into(),
        ]
        .into_iter()
        .chain(DPKG_PATH_FILTERS.iter().map(|f| format!("--dpkgopt={f}")))
        .map(Into::into)
        .collect();
        argv.extend([
            OsString::from(&self.suite),
            target.into(),
            OsString::from(&self.mirror),
        ]);
        argv
    }

    /// The arguments of a debootstrap run into `target`: the shared options, `extra`
    /// (`--make-tarball=…`, `--unpack-tarball=…`), the release, `target` and the mirror.
    pub(crate) fn debootstrap_argv(&self, extra: Option<String>, target: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = self
            .debootstrap_args()
            .into_iter()
            .map(Into::into)
            .collect();
        argv.extend(extra.map(Into::into));
        argv.extend([
            OsString::from(&self.suite),
            target.into(),
            OsString::from(&self.mirror),
        ]);
        argv
    }
}

/// The Debian name of this machine's architecture.
pub fn debian_arch() -> Result<String> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => bail!(
            "bootstrapping on {other} is not supported: no Debian kernel flavour known for it"
        ),
    }
    .to_string())
}

/// Every package a bootstrapped Debian guest of `arch` gets: [`DEBIAN_PACKAGES`] and the
/// kernel.
pub fn debian_packages(arch: &str) -> Vec<String> {
    let mut packages: Vec<String> = DEBIAN_PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.push(kernel_package(arch));
    packages
}

/// The kernel package: Debian's standard flavour. Not the smaller "cloud" one: it has no
/// 9p at all (CONFIG_NET_9P is not set), and host folders are shared over virtio-9p
/// (VMK_SHARE, `--modules`). The initrd stays small anyway: it holds only the modules a
/// VM's disk needs ([`crate::devloop`]).
fn kernel_package(arch: &str) -> String {
    match arch {
        "amd64" | "arm64" => format!("linux-image-{arch}"),
        "i386" => "linux-image-686".into(),
        "ppc64el" => "linux-image-powerpc64le".into(),
        other => format!("linux-image-{other}"),
    }
}

/// The Debian mirror apt uses on this machine (its first Debian archive URI), else
/// deb.debian.org.
pub fn apt_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "list" || e == "sources"))
        .filter_map(|f| fs::read_to_string(f).ok())
        .find_map(|text| mirror_in(&text))
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// Finds a Debian archive URI (not debian-security) in a sources.list or deb822 text.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let l = l.strip_prefix("URIs:").unwrap_or(l);
            l.split_whitespace().map(str::to_string).collect::<Vec<_>>()
        })
        .find(|w| {
            (w.starts_with("http://") || w.starts_with("https://"))
                && w.trim_end_matches('/').ends_with("/debian")
        })
}

/// Installs `debian` into `root` with debootstrap: from the mirror, or from a package
/// tarball made by `debootstrap --make-tarball`. The downloaded .debs are dropped.
///
/// Another architecture than this machine's ([`DebianRoot::is_foreign`]) runs its
/// maintainer scripts through qemu-user and is installed with [`MMDEBSTRAP`] instead,
/// always from the mirror (`tarball` must be `None`), with vmk's initrd settings
/// ([`crate::devloop::write_initrd_config`]) in place before the kernel package is
/// configured: its initrd is then small, not Debian's large default (still made twice
/// during the install, by the kernel's postinst and initramfs-tools' trigger; configure
/// does not make it again). Timed by bench/bootstrap-arch.sh.
pub fn debootstrap(
    debian: &DebianRoot,
    root: &Path,
    tarball: Option<&Path>,
    runner: &dyn CommandRunner,
) -> Result<()> {
    if debian.is_foreign() {
        if tarball.is_some() {
            bail!(
                "a package tarball is debootstrap's: {} is installed with {MMDEBSTRAP}",
                debian.arch
            );
        }
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", root.display()))?;
        crate::devloop::write_initrd_config(root)?;
        runner.run(
            MMDEBSTRAP,
            command(MMDEBSTRAP).args(debian.mmdebstrap_argv(root)),
        )?;
    } else {
        let extra = tarball.map(|t| format!("--unpack-tarball={}", t.display()));
        runner.run(
            "debootstrap",
            command("debootstrap").args(debian.debootstrap_argv(extra, root)),
        )?;
    }
    // The downloaded .debs are not needed inside the image.
    if let Ok(rd) = fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Makes an installed Debian tree a VM's system: hostname, fstab (the ext4 labelled
/// [`ROOT_LABEL`]), DHCP with systemd-networkd, sshd for keys only, a serial getty on
/// the architecture's serial `console` (ttyS0, ttyAMA0…), no root password, an empty machine-id, the host's shares mounted at boot
/// ([`crate::devloop`]); nothing waits for the network or reaches out on a timer. Runs the guest's own systemctl in a chroot (needs root).
pub fn configure_root(
    root: &Path,
    hostname: &str,
    console: &str,
    runner: &dyn CommandRunner,
) -> Result<()> {
    let h = hostname;
    write_file(&root.join("etc/hostname"), 0o644, &format!("{h}\n"))?;
    write_file(
        &root.join("etc/hosts"),
        0o644,
        &format!("127.0.0.1 localhost\n127.0.1.1 {h}\n::1 localhost ip6-localhost ip6-loopback\n"),
    )?;
    write_file(
        &root.join("etc/fstab"),
        0o644,
        &format!("# written by vmk bootstrap: disk0 is one ext4 filesystem\nLABEL={ROOT_LABEL} / ext4 rw,errors=remount-ro 0 1\n"),
    )?;
    write_file(
        &root.join("etc/systemd/network/80-vmk-dhcp.network"),
        0o644,
        "# written by vmk bootstrap\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )?;
    // qemu's user networking answers DNS at 10.0.2.3 (no resolver daemon in a minbase system).
    write_file(
        &root.join("etc/resolv.conf"),
        0o644,
        "nameserver 10.0.2.3\n",
    )?;
    write_file(
        &root.join("etc/ssh/sshd_config.d/vmk.conf"),
        0o644,
        "# written by vmk bootstrap: root logs in with vm-key only\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n",
    )?;
    lock_root_password(root)?;
    // Empty: systemd makes a fresh machine-id on the first boot of each copy.
    write_file(&root.join("etc/machine-id"), 0o444, "")?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.is_file() && !dbus_id.is_symlink() {
        fs::remove_file(&dbus_id).with_context(|| format!("removing {}", dbus_id.display()))?;
    }
    // The guest's own systemctl, so its unit files and version decide (works offline in a chroot).
    runner.run(
        "systemctl enable",
        command("chroot")
            .arg(root)
            .args([
                "systemctl",
                "enable",
                "systemd-networkd.service",
                "ssh.service",
            ])
            .arg(format!("serial-getty@{console}.service")),
    )?;
    // A VM without network must not wait 2 minutes at boot; nothing should reach out on a
    // timer; e2scrub (LVM snapshots of ext4) has nothing to do here and costs a minute under TCG.
    runner.run(
        "systemctl mask",
        command("chroot").arg(root).args([
            "systemctl",
            "mask",
            "systemd-networkd-wait-online.service",
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "e2scrub_reap.service",
            "e2scrub_all.timer",
        ]),
    )?;
    crate::devloop::install(root, runner)
}

/// Root gets no password at all (`*`): logins are by ssh key only.
fn lock_root_password(root: &Path) -> Result<()> {
    let shadow = root.join("etc/shadow");
    let text =
        fs::read_to_string(&shadow).with_context(|| format!("reading {}", shadow.display()))?;
    let mode = fs::metadata(&shadow)?.mode() & 0o7777;
    write_file(&shadow, mode, &lock_root(&text))
}

fn lock_root(shadow: &str) -> String {
    shadow
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => {
                let after = rest.split_once(':').map_or("", |(_, a)| a);
                format!("root:*:{after}\n")
            }
            None => format!("{l}\n"),
        })
        .collect()
}

/// The `ssh-keygen` that makes the VM's key pair `key` (also what `-D` prints).
pub(crate) fn keygen(name: &str, key: &Path) -> std::process::Command {
    let mut c = command("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("vmk-{name}"))
        .arg("-f")
        .arg(key);
    c
}

/// `vm-key`/`vm-key.pub` in the VM directory `dir` (commented `vmk-<name>`), and the public
/// key in root's authorized_keys (besides the SMBIOS credential vmk gives systemd guests).
pub(crate) fn ssh_key(
    name: &str,
    runner: &dyn CommandRunner,
    dir: &Path,
    root: &Path,
) -> Result<()> {
    let key = dir.join(KEY_FILE);
    runner.run("ssh-keygen", &mut keygen(name, &key))?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    let public_path = dir.join(PUBLIC_KEY_FILE);
    let public = fs::read_to_string(&public_path)
        .with_context(|| format!("reading {}", public_path.display()))?;
    let ssh_dir = root.join("root/.ssh");
    fs::create_dir_all(&ssh_dir).with_context(|| format!("creating {}", ssh_dir.display()))?;
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))?;
    write_file(&ssh_dir.join("authorized_keys"), 0o600, &public)
}

/// Writes a file (replacing a symlink rather than following it), creating parents.
pub(crate) fn write_file(path: &Path, mode: u32, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.is_symlink() {
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let list = "deb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(list).as_deref(),
            Some("http://ftp.de.debian.org/debian/")
        );
        assert_eq!(
            mirror_in("URIs: http://deb.debian.org/debian-security\n"),
            None
        );
    }

    #[test]
    fn root_is_locked_and_the_kernel_is_the_standard_flavour() {
        assert_eq!(
            lock_root("root:$6$x:19000:0:99999:7:::\nbin:*:1::\n"),
            "root:*:19000:0:99999:7:::\nbin:*:1::\n"
        );
        assert_eq!(kernel_package("amd64"), "linux-image-amd64");
    }

    #[test]
    fn another_architecture_is_installed_with_mmdebstrap_without_docs() {
        let mut d = crate::plan::example(Path::new("/vms/d")).debian;
        d.arch = if debian_arch().unwrap() == "arm64" {
            "riscv64".into()
        } else {
            "arm64".into()
        };
        assert!(d.is_foreign());
        let argv: Vec<String> = d
            .mmdebstrap_argv(Path::new("/r"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--variant=minbase".to_string(),
            format!("--architectures={}", d.arch),
            "--include=systemd".into(),
            "--skip=check/empty".into(),
            "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        ] {
            assert!(argv.contains(&want), "{want} missing: {argv:?}");
        }
        assert_eq!(
            argv[argv.len() - 3..],
            ["bookworm", "/r", "http://deb.debian.org/debian"]
        );
        let e = debootstrap(
            &d,
            Path::new("/nonexistent/r"),
            Some(Path::new("/t.tgz")),
            &NoRun,
        )
        .unwrap_err();
        assert!(e.to_string().contains("mmdebstrap"), "{e}");
    }

    /// A runner for steps that must fail before running anything.
    struct NoRun;

    impl CommandRunner for NoRun {
        fn run(&self, what: &str, _: &mut std::process::Command) -> Result<()> {
            panic!("{what} was run")
        }
    }

    #[test]
    fn debootstrap_arguments() {
        let d = crate::plan::example(Path::new("/vms/d")).debian;
        let argv = d.debootstrap_argv(Some("--unpack-tarball=/c/t.tgz".into()), Path::new("/r"));
        assert_eq!(
            argv,
            [
                "--variant=minbase",
                "--arch=amd64",
                "--include=systemd",
                "--unpack-tarball=/c/t.tgz",
                "bookworm",
                "/r",
                "http://deb.debian.org/debian"
            ]
        );
    }
}
