//! The files a VM's command line opens that its config names, checked before anything
//! starts: one rule, so that `vmk run` and `vmk libvirt define` refuse the same missing
//! disk, kernel, ISO, share or firmware with the same error (file, line, key, what to do).

use std::path::{Path, PathBuf};

use vmk_common::config::{ConfigError, Origin, VmConfig};
use vmk_common::layout;
use vmk_common::qemu::{self, QemuCommand};

use crate::cloudinit::seed_path;

/// A file the configuration names, that this run would use, and that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFile {
    /// The key that names it (`VMK_DISK1`, `VMK_KERNEL`, …).
    pub key: String,
    /// The file (absolute).
    pub path: PathBuf,
    /// What is missing and what to do, after the key.
    message: String,
}

impl MissingFile {
    fn new(key: impl Into<String>, path: &Path, what: &str, hint: &str) -> Self {
        MissingFile {
            key: key.into(),
            path: path.to_path_buf(),
            message: format!("{what} {} does not exist: {hint}", path.display()),
        }
    }

    /// The error (or, for a dry run, the warning): the key, where it was set, the file and
    /// what to do, as in `vm-config:3: VMK_DISK1: disk image /vm/d1.qcow2 does not exist: …`.
    pub fn error(&self, cfg: &VmConfig) -> ConfigError {
        let origin = cfg.origin(&self.key);
        let mut e = ConfigError::new(self.message.clone())
            .with_key(&self.key)
            .with_origin(&origin);
        if origin == Origin::Default {
            e.file = Some(cfg.config_display.clone());
        }
        e
    }
}

/// True when something usable is at `path` (a dangling symlink is not).
pub fn present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// The one rule for files named by the config: every file that `cmd` (a command line of
/// `cfg`'s VM) would open and that a key names (VMK_DISK0…VMK_DISK6, VMK_KERNEL, VMK_INITRD,
/// VMK_ISO, VMK_SHARE's folders, VMK_QEMU as a path, the public key VMK_CLOUD_INIT's seed is
/// made from, the firmware files VMK_FIRMWARE's descriptor names), when it
/// is missing. `vmk run` and `vmk libvirt define` refuse to go on with any; their dry runs
/// warn about each. VMK_DISK0 is checked whatever image the VM boots: a snapshot VM is
/// made from it.
pub fn missing_files(cfg: &VmConfig, cmd: &QemuCommand) -> Vec<MissingFile> {
    let mut missing = Vec::new();
    if let Some(d0) = cfg.disk0_path.as_deref().map(|d| cfg.dir.join(d)) {
        if !present(&d0) {
            missing.push(MissingFile::new(
                "VMK_DISK0",
                &d0,
                "disk image",
                "create it with `vmk mkdisk0`, or set VMK_DISK0 to an existing image",
            ));
        }
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let Some(d) = d.as_deref().map(|d| cfg.dir.join(d)) else {
            continue;
        };
        let key = format!("VMK_DISK{}", i + 1);
        if cmd.disks.iter().any(|x| x.file == d) && !present(&d) {
            let hint = format!(
                "create it with `vmk mkdisks`, set {key} to an existing image, or empty {key}"
            );
            missing.push(MissingFile::new(key, &d, "disk image", &hint));
        }
    }
    if let Some(k) = &cmd.kernel {
        if cfg.kernel.as_ref() == Some(&k.kernel) && !present(&k.kernel) {
            missing.push(MissingFile::new(
                "VMK_KERNEL",
                &k.kernel,
                "kernel",
                "set VMK_KERNEL to a kernel image, or empty it (and VMK_INITRD) to boot from disk0",
            ));
        }
        if let Some(initrd) = k.initrd.as_ref().filter(|i| cfg.initrd.as_ref() == Some(i)) {
            if !present(initrd) {
                missing.push(MissingFile::new(
                    "VMK_INITRD",
                    initrd,
                    "initrd",
                    "set VMK_INITRD to an existing file, or empty it",
                ));
            }
        }
    }
    let seed = seed_path(cfg);
    for cd in &cmd.cdroms {
        if cfg.iso().as_ref() == Some(cd) && !present(cd) {
            missing.push(MissingFile::new(
                "VMK_ISO",
                cd,
                "install medium",
                "check VMK_ISO and VMK_ISO_DIR",
            ));
        } else if cfg.cloud_init && *cd == seed && !seed.is_file() {
            let key = cfg.dir.join(layout::PUBLIC_KEY_FILE);
            if !present(&key) {
                missing.push(MissingFile {
                    key: "VMK_CLOUD_INIT".into(),
                    message: format!(
                        "the cloud-init seed is made from the VM's public key, and {} does not \
                         exist: make one with `vmk sshkeygen`, or set VMK_CLOUD_INIT=no",
                        key.display()
                    ),
                    path: key,
                });
            }
        }
    }
    if let Some(fw) = &cmd.firmware {
        let package =
            qemu::firmware::firmware_package(cfg.arch.as_deref().unwrap_or(qemu::DEFAULT_ARCH))
                .unwrap_or("the package that has it");
        for (what, file) in [
            ("code", &fw.code),
            ("variable store template", &fw.vars_template),
        ] {
            if !present(file) {
                let hint = format!("{} names it: reinstall {package}", fw.descriptor.display());
                missing.push(MissingFile::new(
                    "VMK_FIRMWARE",
                    file,
                    &format!("UEFI firmware {what}"),
                    &hint,
                ));
            }
        }
    }
    for share in cmd.shares.iter().map(|s| &s.share) {
        if cfg.shares.contains(share) && !share.dir.is_dir() {
            let hint = "create it, or remove it from VMK_SHARE";
            missing.push(if present(&share.dir) {
                MissingFile {
                    key: "VMK_SHARE".into(),
                    path: share.dir.clone(),
                    message: format!(
                        "shared folder {} is not a directory: {hint}",
                        share.dir.display()
                    ),
                }
            } else {
                MissingFile::new("VMK_SHARE", &share.dir, "shared folder", hint)
            });
        }
    }
    if let Some(q) = cfg.qemu.as_deref() {
        if q.is_absolute() && q == cmd.program && !present(q) {
            missing.push(MissingFile::new(
                "VMK_QEMU",
                q,
                "qemu binary",
                "set VMK_QEMU to an installed qemu (a path, or a name on PATH), or empty it",
            ));
        }
    }
    missing
}

/// The error for `missing` (not empty): the first file, then the others, each with its key
/// and where it was set. A config error: tools exit 2 on it.
pub fn missing_files_error(cfg: &VmConfig, missing: &[MissingFile]) -> ConfigError {
    let mut first = missing[0].error(cfg);
    for m in &missing[1..] {
        first.message.push_str(&format!("; also {}", m.error(cfg)));
    }
    first
}
