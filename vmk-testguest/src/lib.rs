//! The Debian test guest (bookworm, systemd, sshd, qemu-guest-agent), built by the very
//! steps `vmk bootstrap` runs (the `vmk-bootstrap` library) plus a thin test layer, once,
//! into the test cache shared by every test process.
//!
//! A crate of its own so that `vmk-testkit` depends on no vmk crate: `vmk-common`'s tests
//! use the kit, and `vmk-bootstrap` depends on `vmk-common`, so a kit that built this guest
//! would close a dependency cycle.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use vmk_bootstrap::{self as bootstrap, CommandRunner, DebianRoot};
use vmk_testkit::guest::{cached, run, Fnv};

/// Printed by the Debian guest's `/etc/issue` before its serial login prompt.
pub const DEBIAN_READY: &str = "vmk-debian-guest ready";

/// Bump when the Debian configuration steps change: part of the image's cache key (the
/// debootstrap tree itself is keyed by the package list only and is reused).
const DEBIAN_CONFIG_VERSION: u32 = 13;
const DEBIAN_IMAGE_SIZE: u64 = 2 << 30;
/// The Debian guest's hostname.
const DEBIAN_HOSTNAME: &str = "vmk-guest";

/// Removes a fixture tree that debootstrap may have left mounts in (never crossing into them).
fn remove_tree(path: &Path) -> Result<()> {
    bootstrap::remove_tree(path)
}

/// The Debian guest (bookworm, systemd, sshd, systemd-networkd with DHCP, qemu-guest-agent).
///
/// Boot a *copy* of `image` (see [`DebianGuest::copy_image`]) as a raw virtio disk with
/// `-kernel kernel -initrd initrd -append append`. Hostname `vmk-guest`; root has no
/// password (locked): log in with ssh, giving root's key as an SMBIOS credential
/// (`-smbios type=11,value=io.systemd.credential:ssh.authorized_keys.root=<key>`).
/// The serial console shows [`DEBIAN_READY`] before its login prompt.
#[derive(Debug, Clone)]
pub struct DebianGuest {
    /// Raw ext4 image of the root filesystem (cached original: never boot it read-write).
    pub image: PathBuf,
    /// The guest's own kernel (its modules are inside the image).
    pub kernel: PathBuf,
    /// The guest's own initramfs.
    pub initrd: PathBuf,
    /// Kernel arguments: `vmk bootstrap`'s ([`bootstrap::APPEND`]: root by its label, so
    /// the guest boots on every disk bus).
    pub append: String,
    /// The init of one-shot runs that `vmk bootstrap` installs ([`bootstrap::EXEC_INIT`]:
    /// the VMK_EXEC_INIT it writes into the vm-config).
    pub exec_init: &'static str,
}

impl DebianGuest {
    /// Copies the cached image to `dest` (sparse, reflinked where the filesystem can),
    /// for a test to boot. An existing empty `dest` (e.g. made NOCOW) is written in place.
    pub fn copy_image(&self, dest: &Path) -> Result<()> {
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg("--reflink=auto")
            .arg(&self.image)
            .arg(dest))
        .with_context(|| format!("copying the debian guest image to {}", dest.display()))
    }
}

/// The cache key of a debootstrap tree of `packages`.
fn packages_key(packages: &[String]) -> Fnv {
    let mut pkg_key = Fnv::new();
    pkg_key.add(bootstrap::DEFAULT_SUITE.as_bytes());
    for p in packages {
        pkg_key.add(p.as_bytes());
        pkg_key.add(b",");
    }
    pkg_key
}

/// Builds (once, cached; about 2–4 minutes) and returns the Debian guest.
pub fn debian_guest() -> Result<DebianGuest> {
    let packages = debian_packages()?;
    let pkg_key = packages_key(&packages);
    let mut key = pkg_key.clone();
    key.add(&DEBIAN_CONFIG_VERSION.to_le_bytes());
    layered_guest(
        ("debian", "debootstrap"),
        packages,
        &key,
        &pkg_key,
        &DEBIAN_LAYER,
    )
}

/// The guest of `layer` over the product's configuration of a debootstrap of `packages`,
/// cached as `<kinds.0>-<key>` (its debootstrap tree as `<kinds.1>-<pkg_key>`).
fn layered_guest(
    kinds: (&str, &str),
    packages: Vec<String>,
    key: &Fnv,
    pkg_key: &Fnv,
    layer: &Layer,
) -> Result<DebianGuest> {
    let dir = cached(
        kinds.0,
        &key.hex(),
        |tmp| {
            let root = cached(
                kinds.1,
                &pkg_key.hex(),
                |r| debootstrap(r, packages),
                remove_tree,
            )?;
            build_debian_image(tmp, &root, layer)
        },
        remove_tree,
    )?;
    Ok(DebianGuest {
        image: dir.join("disk.img"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        append: bootstrap::APPEND.to_string(),
        exec_init: bootstrap::EXEC_INIT,
    })
}

/// Printed by the cloud-init guest's `/etc/issue` before its serial login prompt.
pub const CLOUD_INIT_READY: &str = "vmk-cloud-init-guest ready";

/// The cloud-init guest's own configuration (`/etc/cloud/cloud.cfg.d/90-vmk-test.cfg`):
/// cloud-init leaves the network alone (the guest has `vmk bootstrap`'s DHCP with
/// systemd-networkd, as the Debian guest), so that what the test sees taken from the seed
/// is the hostname and the keys, not a network renderer's choice; and it sets no locale
/// (the minimal guest has none generated: the locale module's `update-locale
/// LANG=en_US.UTF-8` fails, and `cloud-init status` says error). The data sources are
/// cloud-init's own default list: ds-identify has to find vmk's NoCloud seed by itself.
pub const CLOUD_INIT_GUEST_CFG: &str = "# vmk test guest: networking is systemd-networkd's \
     (vmk bootstrap); no locales are generated\nnetwork:\n  config: disabled\nlocale: false\n";

/// Packages of the cloud-init guest besides `vmk bootstrap`'s. python3-cffi-backend: what
/// python3-cryptography (via python3-oauthlib) needs through virtual packages, which
/// debootstrap does not resolve.
const CLOUD_INIT_PACKAGES: &[&str] = &["cloud-init", "python3-cffi-backend"];

/// The cloud-init guest's layer. Before the product's configuration: the CD-ROM driver in
/// the initrd, as a cloud image has it: cloud-init's ds-identify looks for the seed once,
/// as a systemd generator, before udev would load sr_mod from the root filesystem (`vmk
/// bootstrap`'s initrd holds only disk drivers); without it the seed's sr0 appears too late
/// and cloud-init disables itself for the boot. After: [`CLOUD_INIT_GUEST_CFG`].
const CLOUD_INIT_LAYER: Layer = Layer {
    ready: CLOUD_INIT_READY,
    before: &[(
        "etc/initramfs-tools/modules",
        "# vmk test guest: loaded by the initrd\nsr_mod\n",
    )],
    after: &[(
        "etc/cloud/cloud.cfg.d/90-vmk-test.cfg",
        CLOUD_INIT_GUEST_CFG,
    )],
};

/// The Debian guest plus cloud-init (Debian's package, from a debootstrap of its own), for
/// the test that a real guest consumes the NoCloud seed `VMK_CLOUD_INIT=yes` attaches.
///
/// Like [`DebianGuest`] in everything else (boot, kernel, root by label), except: its
/// `/etc/hostname` is the Debian guest's `vmk-guest` until cloud-init sets the seed's;
/// root has no key until one comes from the seed (or a credential); the initrd loads
/// sr_mod; the console shows [`CLOUD_INIT_READY`] before its login prompt. Built once and
/// cached, keyed by its packages and its layer.
pub fn cloud_init_guest() -> Result<DebianGuest> {
    let mut packages = debian_packages()?;
    packages.extend(CLOUD_INIT_PACKAGES.iter().map(|p| p.to_string()));
    let pkg_key = packages_key(&packages);
    let mut key = pkg_key.clone();
    key.add(&DEBIAN_CONFIG_VERSION.to_le_bytes());
    let layer = &CLOUD_INIT_LAYER;
    key.add(layer.ready.as_bytes());
    for (rel, text) in layer.before.iter().chain(layer.after) {
        key.add(rel.as_bytes());
        key.add(text.as_bytes());
    }
    // Kinds named so that neither prunes the other's entries nor the Debian guest's: the
    // cache removes `<kind>-<16 hex digits>` only.
    layered_guest(
        ("debian-cloudinit", "debootstrap-cloudinit"),
        packages,
        &key,
        &pkg_key,
        layer,
    )
}

/// Runs the bootstrap steps' commands for a fixture: their output goes to the test's
/// stderr, and with setpriv each gets SIGTERM when the test that started it dies, so a
/// killed test's debootstrap does not go on writing into a tree that the next build removes
/// (debootstrap then unmounts what it mounted there).
struct FixtureRunner;

impl CommandRunner for FixtureRunner {
    fn run(&self, what: &str, cmd: &mut Command) -> Result<()> {
        let mut wrapped;
        let cmd = match vmk_testkit::which("setpriv") {
            Some(setpriv) => {
                wrapped = Command::new(setpriv);
                wrapped
                    .args(["--pdeathsig", "TERM"])
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                for (k, v) in cmd.get_envs() {
                    match v {
                        Some(v) => wrapped.env(k, v),
                        None => wrapped.env_remove(k),
                    };
                }
                if let Some(dir) = cmd.get_current_dir() {
                    wrapped.current_dir(dir);
                }
                &mut wrapped
            }
            None => cmd,
        };
        run(cmd).with_context(|| format!("{what} failed (output above)"))
    }
}

/// The Debian mirror: `VMK_TEST_DEBIAN_MIRROR`, else the one apt uses on this machine.
fn debian_mirror() -> String {
    match std::env::var_os("VMK_TEST_DEBIAN_MIRROR").filter(|m| !m.is_empty()) {
        Some(m) => m.to_string_lossy().into_owned(),
        None => bootstrap::apt_mirror(),
    }
}

/// The packages of the guest `vmk bootstrap` makes: the fixture is that guest.
fn debian_packages() -> Result<Vec<String>> {
    Ok(bootstrap::debian_packages(&bootstrap::debian_arch()?))
}

fn debootstrap(root: &Path, packages: Vec<String>) -> Result<()> {
    let debian = DebianRoot {
        suite: bootstrap::DEFAULT_SUITE.into(),
        arch: bootstrap::debian_arch()?,
        mirror: debian_mirror(),
        packages,
    };
    eprintln!(
        "vmk-testkit: debootstrap {} from {} (takes a few minutes)",
        debian.suite, debian.mirror
    );
    bootstrap::debootstrap(&debian, root, None, &FixtureRunner)
        .with_context(|| format!("check that {} is reachable and you are root", debian.mirror))
}

/// A test layer over the product's configuration of a Debian guest: the line its
/// /etc/issue shows before the login prompt, files written before the product's
/// configuration runs (and so before it makes the initrd), and files written after it.
struct Layer {
    ready: &'static str,
    before: &'static [(&'static str, &'static str)],
    after: &'static [(&'static str, &'static str)],
}

/// The Debian guest's layer: [`DEBIAN_READY`] alone.
const DEBIAN_LAYER: Layer = Layer {
    ready: DEBIAN_READY,
    before: &[],
    after: &[],
};

/// The product's configuration and image, from a copy of the cached debootstrap tree; the
/// test `layer` on top (its ready line in /etc/issue is what the fixtures' tests check).
/// The ssh host keys debootstrap made stay in the image, so every
/// copy shares them (`vmk bootstrap` makes new ones for each VM).
fn build_debian_image(out: &Path, debootstrapped: &Path, layer: &Layer) -> Result<()> {
    let stage = out.join("root");
    eprintln!("vmk-testkit: copying the debootstrap tree to configure it");
    run(Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(debootstrapped)
        .arg(&stage))?;
    for (rel, text) in layer.before {
        write(&stage, rel, text)?;
    }
    eprintln!("vmk-testkit: configuring the guest root");
    bootstrap::configure_root(&stage, DEBIAN_HOSTNAME, "ttyS0", &FixtureRunner)?;
    write(&stage, "etc/issue", &format!("{} (\\l)\n\n", layer.ready))?;
    for (rel, text) in layer.after {
        write(&stage, rel, text)?;
    }
    bootstrap::copy_kernel(&stage, out)?;
    eprintln!("vmk-testkit: making the ext4 image");
    bootstrap::make_ext4_image(
        &stage,
        &out.join("disk.img"),
        DEBIAN_IMAGE_SIZE,
        &FixtureRunner,
    )?;
    bootstrap::remove_tree(&stage)
}

/// Printed on the serial console by the disk-booting guest's report (see [`DiskGuest`]),
/// before each of its lines.
pub const DISK_REPORT: &str = "vmk-diskboot: ";

/// Bump when the disk-booting guest's build or test layer changes (part of its cache key,
/// with the package list).
const DISK_GUEST_VERSION: u32 = 1;
const DISK_IMAGE_SIZE: u64 = 3 << 30;

/// The Debian guest that boots itself (`vmk bootstrap --boot disk`): a partitioned raw disk
/// with GRUB for BIOS and shim + GRUB on its ESP for UEFI, made by the bootstrap library's
/// own steps. Boot a *copy* of `image` without a kernel, under any VMK_FIRMWARE.
///
/// Its test layer: at boot a unit says on the serial console, each line after
/// [`DISK_REPORT`]: `efi yes|no`, `sb <mokutil --sb-state>`, `cmdline <…>`, `esp mounted`
/// (or `esp missing`), under BIOS `kernel hook <…>` (the kernel packages' update-grub hook
/// run again, then whether the new grub.cfg boots the running kernel with root by label),
/// and last `done`. The serial login prompt follows as usual.
#[derive(Debug, Clone)]
pub struct DiskGuest {
    /// The raw partitioned disk (cached original: never boot it read-write).
    pub image: PathBuf,
}

/// Builds (once, cached) and returns the disk-booting Debian guest.
pub fn debian_disk_guest() -> Result<DiskGuest> {
    let mut packages = debian_packages()?;
    packages.extend(
        bootstrap::diskboot::DISK_BOOT_PACKAGES
            .iter()
            .map(|p| p.to_string()),
    );
    let pkg_key = packages_key(&packages);
    let mut key = pkg_key.clone();
    key.add(&DEBIAN_CONFIG_VERSION.to_le_bytes());
    key.add(&DISK_GUEST_VERSION.to_le_bytes());
    let dir = cached(
        "debian-disk",
        &key.hex(),
        |tmp| {
            let root = cached(
                "debootstrap-disk",
                &pkg_key.hex(),
                |r| debootstrap(r, packages),
                remove_tree,
            )?;
            build_disk_image(tmp, &root)
        },
        remove_tree,
    )?;
    Ok(DiskGuest {
        image: dir.join("disk.img"),
    })
}

/// The report the disk-booting guest gives at boot (see [`DiskGuest`]).
const DISK_REPORT_SCRIPT: &str = r#"#!/bin/sh
say() { echo "vmk-diskboot: $*" > /dev/console; }
if [ -d /sys/firmware/efi ]; then efi=yes; else efi=no; fi
say "efi $efi"
say "sb $(mokutil --sb-state 2>&1 | head -n 1)"
say "cmdline $(cat /proc/cmdline)"
if mountpoint -q /boot/efi; then say "esp mounted"; else say "esp missing"; fi
if [ $efi = no ]; then
    old=$(stat -c %Y /boot/grub/grub.cfg)
    sleep 1
    if /etc/kernel/postinst.d/zz-update-grub "$(uname -r)" "/boot/vmlinuz-$(uname -r)" >/dev/null 2>&1         && [ "$(stat -c %Y /boot/grub/grub.cfg)" != "$old" ]         && grep -q "linux.*/vmlinuz-$(uname -r) root=LABEL=vmkroot " /boot/grub/grub.cfg; then
        say "kernel hook regenerated grub.cfg, root by label"
    else
        say "kernel hook failed"
    fi
fi
say done
"#;

/// The unit that runs it once the system is up.
const DISK_REPORT_UNIT: &str = "\
[Unit]
Description=vmk test: how this guest booted
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmk-diskboot-report

[Install]
WantedBy=multi-user.target
";

/// The disk-booting guest: the product's configuration, the report as test layer, then the
/// product's disk.
fn build_disk_image(out: &Path, debootstrapped: &Path) -> Result<()> {
    let stage = out.join("root");
    run(Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(debootstrapped)
        .arg(&stage))?;
    bootstrap::configure_root(&stage, DEBIAN_HOSTNAME, "ttyS0", &FixtureRunner)?;
    bootstrap::diskboot::configure(&stage, "ttyS0")?;
    write(&stage, "etc/issue", &format!("{DEBIAN_READY} (\\l)\n\n"))?;
    write(
        &stage,
        "usr/local/sbin/vmk-diskboot-report",
        DISK_REPORT_SCRIPT,
    )?;
    fs::set_permissions(
        stage.join("usr/local/sbin/vmk-diskboot-report"),
        fs::Permissions::from_mode(0o755),
    )?;
    write(
        &stage,
        "etc/systemd/system/vmk-diskboot-report.service",
        DISK_REPORT_UNIT,
    )?;
    run(Command::new("chroot").arg(&stage).args([
        "systemctl",
        "enable",
        "vmk-diskboot-report.service",
    ]))?;
    eprintln!("vmk-testkit: making the partitioned disk with its bootloaders");
    bootstrap::diskboot::make_boot_disk(
        &stage,
        &out.join("disk.img"),
        DISK_IMAGE_SIZE,
        out,
        &FixtureRunner,
    )?;
    fs::remove_dir(out.join("mnt")).context("removing the mount point")?;
    bootstrap::remove_tree(&stage)
}

/// Writes a file of the guest tree (mode 0644), making its directory.
fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
