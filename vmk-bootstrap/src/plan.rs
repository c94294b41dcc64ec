//! The plan of a bootstrap: everything decided and checked before anything is created (the
//! directory, the VM's name, hostname and number, what to install, the cache to use), and
//! its `-D` printing.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use vmk_common::config::{self, LoadOptions, Size};
use vmk_common::{layout, outln, shell};

use crate::args::BootstrapArgs;
use crate::cache::{cache_dir, package_key, tree_cache_path};
use crate::debian::{apt_mirror, debian_arch, debian_packages, DebianRoot, DEFAULT_SUITE};
use crate::diskboot::{self, Boot, DISK_BOOT_PACKAGES};
use crate::image::{mkfs_args, DISK0_NAME};
use crate::staging::staging_path;
use crate::vmconfig::vm_config_text;

/// What a bootstrap will do, decided and checked before anything is created.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The new VM directory (absolute).
    pub(crate) dir: PathBuf,
    /// VMK_NAME.
    pub(crate) name: String,
    /// The guest's hostname.
    pub(crate) hostname: String,
    /// What debootstrap installs.
    pub(crate) debian: DebianRoot,
    pub(crate) size: Size,
    pub(crate) vnc: u8,
    /// The package tarball to use or fill, unless --no-cache.
    pub(crate) cache: Option<PathBuf>,
    /// How the VM boots.
    pub(crate) boot: Boot,
}

impl Plan {
    pub(crate) fn new(args: &BootstrapArgs) -> Result<Plan> {
        let cwd = std::env::current_dir().context("finding the current directory")?;
        let dir = std::path::absolute(cwd.join(&args.dir)).unwrap_or_else(|_| cwd.join(&args.dir));
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .ok_or_else(|| {
                vmk_common::usage!("{}: give a new directory's name", args.dir.display())
            })?;
        check_dir_is_new(&dir)?;
        let name = match &args.name {
            Some(n) => n.clone(),
            None => vm_name(&dir_name),
        };
        let arch = match &args.arch {
            Some(a) => a.clone(),
            None => debian_arch()?,
        };
        check_foreign_arch(&arch)?;
        let mut packages = debian_packages(&arch);
        if args.boot == Boot::Disk {
            diskboot::check_arch(&arch)?;
            packages.extend(DISK_BOOT_PACKAGES.iter().map(|p| p.to_string()));
        }
        for p in &args.packages {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
        let suite = args.suite.clone().unwrap_or_else(|| DEFAULT_SUITE.into());
        let mirror = args.mirror.clone().unwrap_or_else(apt_mirror);
        let cache = (!args.no_cache).then(|| {
            cache_dir().join(format!(
                "debootstrap-{suite}-{arch}-{}.tgz",
                package_key(&suite, &arch, &mirror, &packages)
            ))
        });
        Ok(Plan {
            hostname: hostname_from(&name),
            vnc: match args.vnc {
                Some(n) => n,
                None => choose_vnc(&dir)?,
            },
            dir,
            name,
            debian: DebianRoot {
                suite,
                arch,
                mirror,
                packages,
            },
            size: args.size,
            cache,
            boot: args.boot,
        })
    }
}

/// A Debian architecture other than this machine's can be bootstrapped only where the
/// kernel runs its programs through qemu-user (binfmt_misc): debootstrap runs the guest's
/// maintainer scripts.
fn check_foreign_arch(arch: &str) -> Result<()> {
    if debian_arch().ok().as_deref() == Some(arch) {
        return Ok(());
    }
    let qemu_arch = vmk_common::qemu::arch::canonical(arch);
    let entry = Path::new("/proc/sys/fs/binfmt_misc").join(format!("qemu-{qemu_arch}"));
    match fs::read_to_string(&entry) {
        Ok(text) if text.starts_with("enabled") => Ok(()),
        _ => Err(anyhow::anyhow!(
            "bootstrapping {arch} on this machine needs qemu-user through binfmt_misc, and {}              is not enabled: apt-get install qemu-user-static binfmt-support (and, where              nothing mounted it, mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc;              update-binfmts --enable qemu-{qemu_arch})",
            entry.display()
        )),
    }
}

impl Plan {
    /// The guest's architecture in vmk's table (console, VMK_ARCH).
    pub fn guest_arch(&self) -> &'static vmk_common::qemu::arch::Arch {
        vmk_common::qemu::arch::spec(&self.debian.arch)
    }
}

/// Refuses a DIR that exists and is not an empty directory.
fn check_dir_is_new(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(vmk_common::usage!(
                    "{} exists and is not empty: give a new directory (bootstrap never writes into an existing VM)",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(vmk_common::usage!(
                    "{} does not exist: create it first (mkdir -p), bootstrap makes only the VM directory",
                    parent.display()
                ));
            }
            Ok(())
        }
        Err(_) if dir.exists() && !dir.is_dir() => Err(vmk_common::usage!(
            "{} exists and is not a directory",
            dir.display()
        )),
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

/// VMK_NAME from a directory name: characters a config word cannot hold become `-`.
fn vm_name(dir_name: &str) -> String {
    let name: String = dir_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+:@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.trim_matches('-').is_empty() {
        "vmk".into()
    } else {
        name
    }
}

/// A valid hostname (one DNS label) from a VM name.
fn hostname_from(name: &str) -> String {
    let mut label = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if !(c == '-' && label.ends_with('-')) {
            label.push(c);
        }
    }
    let label: String = label.trim_matches('-').chars().take(63).collect();
    let label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        "vmk".into()
    } else {
        label
    }
}

/// The first VM number whose VNC, serial and ssh ports are free on VMK_LISTEN and that no
/// VM directory beside `dir` uses. Port bases come from the user's config files.
fn choose_vnc(dir: &Path) -> Result<u8> {
    let cfg = config::load(&LoadOptions {
        dir: Some(dir.to_path_buf()),
        ..LoadOptions::new()
    })
    .context("reading the config files for the port bases")?;
    let taken = layout::vm_numbers_in(dir.parent().unwrap_or(Path::new("/")));
    layout::first_free_vm_number(cfg.listen, cfg.telnet_base, cfg.ssh_base, &taken)
        .map(|(n, _)| n)
        .ok_or_else(|| {
            anyhow!(
                "no free VM number from 1 to 99 (ports in use or taken by VMs beside it): give --vnc N"
            )
        })
}

/// `-D`: what would be done.
pub(crate) fn print_plan(plan: &Plan) -> Result<()> {
    let stage = staging_path(&plan.dir, 0);
    let root = stage.join("root");
    let debootstrap = |extra: Option<String>, target: &Path| {
        command_words("debootstrap", plan.debian.debootstrap_argv(extra, target))
    };
    let mut steps: Vec<Vec<OsString>> = Vec::new();
    let tree = plan.cache.as_deref().map(tree_cache_path);
    match &plan.cache {
        Some(_) if tree.as_deref().is_some_and(Path::is_file) => {
            let tree = tree.as_deref().expect("checked");
            steps.push(words_of(&crate::cache::unpack_tree(tree, &root)));
        }
        _ if plan.debian.is_foreign() => {
            outln!("# write vmk's initrd settings into the root, then (through qemu-user):")?;
            steps.push(command_words(
                crate::debian::MMDEBSTRAP,
                plan.debian.mmdebstrap_argv(&root),
            ));
        }
        Some(tarball) => {
            if !tarball.is_file() {
                steps.push(debootstrap(
                    Some(format!("--make-tarball={}", tarball.display())),
                    &stage.join("download"),
                ));
            }
            steps.push(debootstrap(
                Some(format!("--unpack-tarball={}", tarball.display())),
                &root,
            ));
        }
        None => steps.push(debootstrap(None, &root)),
    }
    let key = stage.join(layout::KEY_FILE);
    steps.push(words_of(&crate::debian::keygen(&plan.name, &key)));
    let disk0 = stage.join(DISK0_NAME);
    match plan.boot {
        Boot::Kernel => steps.push(command_words("mkfs.ext4", mkfs_args(&root, &disk0))),
        Boot::Disk => disk_steps(&mut steps, &stage, &root, &disk0),
    }
    for s in steps {
        outln!("{}", shell::join(s))?;
    }
    let last = match plan.boot {
        Boot::Kernel => "copy kernel and initrd",
        Boot::Disk => {
            "GRUB's settings and the ESP in fstab before disk0; before mcopy, the guest's signed \
             shim (as EFI/BOOT/BOOTX64.EFI), signed GRUB, mmx64 and a grub.cfg finding the root by \
             its UUID are gathered in esp/"
        }
    };
    outln!(
        "# configure the root (hostname {}, DHCP, sshd, serial getty), make disk0 NOCOW ({}), {last}",
        plan.hostname,
        plan.size
    )?;
    outln!(
        "# then rename {} to {}; vm-config:",
        stage.display(),
        plan.dir.display()
    )?;
    for line in vm_config_text(plan, "now").lines() {
        outln!("#   {line}")?;
    }
    Ok(())
}

/// `-D` of the disk that boots itself: partitions, loop device, filesystems, bootloaders.
fn disk_steps(steps: &mut Vec<Vec<OsString>>, stage: &Path, root: &Path, disk0: &Path) {
    let dev = Path::new("/dev/loopN");
    let part = |n: u32| PathBuf::from(format!("/dev/loopNp{n}"));
    let mnt = diskboot::mount_point(stage);
    steps.push(command_words("sgdisk", diskboot::sgdisk_args(disk0)));
    steps.push(words_of(&vmk_common::loopdev::attach_command(disk0)));
    steps.push(command_words("mkfs.ext4", mkfs_args(root, &part(3))));
    steps.push(words_of(&diskboot::mkfs_esp(&part(2))));
    steps.push(command_words(
        "mount",
        [part(3).as_os_str(), mnt.as_os_str()],
    ));
    for b in &vmk_common::chroot::SYSTEM_BINDS {
        let mut w: Vec<OsString> = b.extra.iter().map(OsString::from).collect();
        w.push(b.src.into());
        w.push(mnt.join(b.dst).into());
        steps.push(command_words("mount", w));
    }
    for s in diskboot::install_steps(dev) {
        steps.push(command_words(
            "chroot",
            std::iter::once(mnt.display().to_string()).chain(s),
        ));
    }
    steps.push(command_words("umount", ["-R".as_ref(), mnt.as_os_str()]));
    steps.push(words_of(&diskboot::copy_to_esp(
        &stage.join("esp"),
        &part(2),
    )));
    steps.push(words_of(&vmk_common::loopdev::detach_command(dev)));
}

/// A program's name followed by its arguments.
fn command_words<I, S>(program: &str, args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::iter::once(OsString::from(program))
        .chain(args.into_iter().map(|a| a.as_ref().to_os_string()))
        .collect()
}

/// A command's program and arguments, as [`command_words`] gives them.
fn words_of(c: &std::process::Command) -> Vec<OsString> {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(OsStr::to_os_string)
        .collect()
}

/// A plan for a new directory in `dir` (for the tests of every module).
#[cfg(test)]
pub(crate) fn example(dir: &Path) -> Plan {
    Plan {
        dir: dir.to_path_buf(),
        name: "deb-1".into(),
        hostname: "deb-1".into(),
        debian: DebianRoot {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            arch: "amd64".into(),
            packages: vec!["systemd".into()],
        },
        size: "4G".parse().unwrap(),
        vnc: 7,
        cache: None,
        boot: Boot::Kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse;
    use vmk_common::cli::GlobalOpts;

    #[test]
    fn a_dir_that_is_not_new_is_a_usage_mistake_exit_2() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("vm-config"), "").unwrap();
        for dir in [
            tmp.path().to_path_buf(),
            tmp.path().join("vm-config"),
            tmp.path().join("no/such"),
        ] {
            let err = check_dir_is_new(&dir).unwrap_err();
            assert_eq!(vmk_common::cli::exit_status_of(&err), 2, "{err:#}");
        }
        check_dir_is_new(&tmp.path().join("new")).unwrap();
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let t = tempfile::tempdir().unwrap();
        let full = t.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("x"), "").unwrap();
        let e = check_dir_is_new(&full).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(check_dir_is_new(&t.path().join("new")).is_ok());
        fs::create_dir(t.path().join("empty")).unwrap();
        assert!(check_dir_is_new(&t.path().join("empty")).is_ok());
        let e = check_dir_is_new(&t.path().join("no/such"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_dir_is_new(&full.join("x")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        // Through the command: refused before root or debootstrap are looked at.
        let a = parse(&["--vnc", "3", full.to_str().unwrap()]).unwrap();
        let e = crate::run(&GlobalOpts::default(), a).unwrap_err();
        assert!(format!("{e:#}").contains("not empty"), "{e:#}");
        assert!(full.join("x").exists());
    }

    #[test]
    fn names_and_hostnames() {
        assert_eq!(vm_name("deb 12"), "deb-12");
        assert_eq!(vm_name("My_VM.1"), "My_VM.1");
        assert_eq!(vm_name("  "), "vmk");
        assert_eq!(hostname_from("My_VM.1"), "my-vm-1");
        assert_eq!(hostname_from("--a__b--"), "a-b");
        assert_eq!(hostname_from("@@@"), "vmk");
        assert_eq!(hostname_from(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn command_words_keep_the_program_first() {
        assert_eq!(
            shell::join(command_words("tar", ["-x", "a b"])),
            "tar -x 'a b'"
        );
    }
}
