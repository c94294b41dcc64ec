//! What the qemu command builder asks of the machine (is /dev/kvm usable, where programs
//! are, an image's format, the ssh public key), behind a trait so that tests give fixed
//! answers; and the choices made from those answers: the accelerator and the qemu binary.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Accel, DiskFormat};

use super::kvm_probe::KvmProbe;
use super::QemuError;

/// Architecture assumed when VMK_ARCH is empty.
pub const DEFAULT_ARCH: &str = "x86_64";
/// Machine type when VMK_MACHINE is empty (x86).
pub const DEFAULT_MACHINE: &str = "q35";

/// What the builder asks of the machine it runs on.
pub trait Host {
    /// Whether /dev/kvm opens read-write.
    fn kvm_usable(&self) -> bool;
    /// Whether KVM, once /dev/kvm opens, really runs a guest of `arch` with `qemu` and
    /// `cpu` ([`KvmProbe::Unknown`] when this host cannot tell: kvm is then used).
    fn kvm_probe(&self, _qemu: &Path, _cpu: &str, _arch: &str) -> KvmProbe {
        KvmProbe::Unknown
    }
    /// The program `name` on PATH.
    fn find_program(&self, name: &str) -> Option<PathBuf>;
    /// The format of the image at `path` (qcow2 magic, else raw).
    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat>;
    /// The content of a small file (the VM's ssh public key).
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Whether vmk runs as root (then qemu may be asked to drop to the VM's user).
    fn is_root(&self) -> bool {
        false
    }
    /// The owner (uid, gid) of a file or directory (the VM directory), if it can be read.
    fn owner(&self, _path: &Path) -> Option<(u32, u32)> {
        None
    }
    /// qemu's firmware descriptors as (path, JSON text), in the order they are tried
    /// ([`super::firmware::read_descriptors`]); none by default.
    fn firmware_descriptors(&self) -> Vec<(PathBuf, String)> {
        Vec::new()
    }
    /// The virtiofsd vmk can run ([`crate::virtiofsd::find`]), or why there is none; none
    /// by default, so that a test's command lines do not depend on the machine.
    fn virtiofsd(&self) -> Result<PathBuf, String> {
        Err("no virtiofsd on this host".into())
    }
    /// The private directory for sockets ([`crate::state::runtime_dir`]); a fixed one by
    /// default.
    fn runtime_dir(&self) -> PathBuf {
        PathBuf::from("/run/vmk")
    }
}

/// The real machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn kvm_usable(&self) -> bool {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
    }

    fn kvm_probe(&self, qemu: &Path, cpu: &str, arch: &str) -> KvmProbe {
        super::kvm_probe::probe_cached(qemu, cpu, arch)
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        crate::host::which(name)
    }

    fn disk_format(&self, path: &Path) -> io::Result<DiskFormat> {
        DiskFormat::detect(path)
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn is_root(&self) -> bool {
        crate::host::is_root()
    }

    fn owner(&self, path: &Path) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()))
    }

    fn firmware_descriptors(&self) -> Vec<(PathBuf, String)> {
        super::firmware::read_descriptors(&super::firmware::descriptor_dirs())
    }

    fn virtiofsd(&self) -> Result<PathBuf, String> {
        crate::virtiofsd::find()
    }

    fn runtime_dir(&self) -> PathBuf {
        crate::state::runtime_dir()
    }
}

/// The cpu model qemu gets under kvm when VMK_CPU_MODEL is empty.
pub const KVM_CPU_MODEL: &str = "host";

/// The accelerator to use: `auto` is kvm when /dev/kvm is usable and KVM really runs a
/// guest with `qemu` and `cpu_model` ([`Host::kvm_probe`]), else tcg with a one-line
/// warning saying why ([`choose_accel`] without the warning).
pub fn resolve_accel(
    accel: Accel,
    host: &dyn Host,
    qemu: &Path,
    cpu_model: Option<&str>,
    arch: &str,
) -> Accel {
    let (chosen, why_not_kvm) = choose_accel(accel, host, qemu, cpu_model, arch);
    if let Some(why) = why_not_kvm {
        log::warn!("{why}");
    }
    chosen
}

/// [`resolve_accel`]'s choice, and when `auto` could not have kvm, why (one line, with
/// what to do), for a caller that shows it its own way (`vmk info`).
pub fn choose_accel(
    accel: Accel,
    host: &dyn Host,
    qemu: &Path,
    cpu_model: Option<&str>,
    arch: &str,
) -> (Accel, Option<String>) {
    match accel {
        Accel::Auto if !host.kvm_usable() => (
            Accel::Tcg,
            Some(
                "/dev/kvm is not usable: running with software emulation (tcg), which is much slower"
                    .into(),
            ),
        ),
        Accel::Auto => match host.kvm_probe(qemu, cpu_model.unwrap_or(KVM_CPU_MODEL), arch) {
            KvmProbe::Broken(why) => (
                Accel::Tcg,
                Some(format!(
                    "KVM is present but unusable here ({why}): running with software emulation (tcg); set VMK_ACCEL=tcg to skip this check"
                )),
            ),
            KvmProbe::Works | KvmProbe::Unknown => (Accel::Kvm, None),
        },
        other => (other, None),
    }
}

/// The qemu binary: VMK_QEMU (a path, or a name looked up on PATH), else `qemu-kvm` (x86_64
/// only), then the architecture's `qemu-system-…` ([`super::arch::qemu_binary`]) on PATH.
pub fn select_qemu(
    configured: Option<&Path>,
    arch: &str,
    host: &dyn Host,
) -> Result<PathBuf, QemuError> {
    if let Some(q) = configured {
        if q.components().count() > 1 || q.is_absolute() {
            return Ok(q.to_path_buf());
        }
        let name = q.to_string_lossy();
        return host.find_program(&name).ok_or(QemuError::NoQemu {
            tried: format!("VMK_QEMU={name}"),
        });
    }
    let mut tried = Vec::new();
    if arch == "x86_64" {
        tried.push("qemu-kvm".to_string());
    }
    tried.push(super::arch::qemu_binary(arch));
    tried
        .iter()
        .find_map(|name| host.find_program(name))
        .ok_or_else(|| QemuError::NoQemu {
            tried: tried.join(", "),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A machine without kvm whose only qemu is qemu-system-x86_64 and whose images are qcow2.
    pub(crate) struct NoHost;

    impl Host for NoHost {
        fn kvm_usable(&self) -> bool {
            false
        }
        fn find_program(&self, name: &str) -> Option<PathBuf> {
            (name == "qemu-system-x86_64").then(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
        }
        fn disk_format(&self, _: &Path) -> io::Result<DiskFormat> {
            Ok(DiskFormat::Qcow2)
        }
        fn read_to_string(&self, p: &Path) -> io::Result<String> {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                p.display().to_string(),
            ))
        }
    }

    #[test]
    fn qemu_selection() {
        assert_eq!(
            select_qemu(None, "x86_64", &NoHost).unwrap(),
            Path::new("/usr/bin/qemu-system-x86_64")
        );
        let e = select_qemu(None, "aarch64", &NoHost)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no qemu found (tried qemu-system-aarch64 on PATH): install qemu or set VMK_QEMU"
        );
        assert_eq!(
            select_qemu(Some(Path::new("/opt/q")), "x86_64", &NoHost).unwrap(),
            Path::new("/opt/q")
        );
        assert!(select_qemu(Some(Path::new("qemu-nope")), "x86_64", &NoHost).is_err());
        let q = Path::new("/usr/bin/qemu-system-x86_64");
        assert_eq!(
            resolve_accel(Accel::Auto, &NoHost, q, None, DEFAULT_ARCH),
            Accel::Tcg
        );
        assert_eq!(
            resolve_accel(Accel::Kvm, &NoHost, q, None, DEFAULT_ARCH),
            Accel::Kvm
        );
        assert_eq!(
            resolve_accel(Accel::Auto, &BrokenKvm, q, None, DEFAULT_ARCH),
            Accel::Tcg
        );
        assert_eq!(
            resolve_accel(Accel::Kvm, &BrokenKvm, q, None, DEFAULT_ARCH),
            Accel::Kvm,
            "an explicit kvm is kept"
        );
        // the reason, for `info`'s accel line
        let (chosen, why) = choose_accel(Accel::Auto, &BrokenKvm, q, None, DEFAULT_ARCH);
        assert_eq!(chosen, Accel::Tcg);
        assert!(why.is_some_and(|w| w.contains("present but unusable")));
        let (_, why) = choose_accel(Accel::Auto, &NoHost, q, None, DEFAULT_ARCH);
        assert!(why.is_some_and(|w| w.contains("/dev/kvm is not usable")));
        assert_eq!(
            choose_accel(Accel::Tcg, &BrokenKvm, q, None, DEFAULT_ARCH),
            (Accel::Tcg, None)
        );
    }

    /// /dev/kvm opens, but KVM does not run guests.
    struct BrokenKvm;

    impl Host for BrokenKvm {
        fn kvm_usable(&self) -> bool {
            true
        }
        fn kvm_probe(&self, _: &Path, _: &str, _: &str) -> KvmProbe {
            KvmProbe::Broken("qemu died under kvm: failed to set MSR 0x10a".into())
        }
        fn find_program(&self, name: &str) -> Option<PathBuf> {
            NoHost.find_program(name)
        }
        fn disk_format(&self, p: &Path) -> io::Result<DiskFormat> {
            NoHost.disk_format(p)
        }
        fn read_to_string(&self, p: &Path) -> io::Result<String> {
            NoHost.read_to_string(p)
        }
    }
}
