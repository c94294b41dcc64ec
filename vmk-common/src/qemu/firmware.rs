//! UEFI firmware for VMK_FIRMWARE=uefi|uefi-secure, found the way libvirt finds it: through
//! qemu's firmware descriptors (qemu's `docs/interop/firmware.json`), which the
//! distribution's packages (`ovmf`, `qemu-efi-aarch64`) install, never through hard-coded
//! paths that differ between distributions and releases.
//!
//! Decisions:
//! - Descriptors are read from `/usr/share/qemu/firmware`, `/etc/qemu/firmware` and
//!   `$XDG_CONFIG_HOME/qemu/firmware` (else `~/.config/qemu/firmware`); a file in a later
//!   directory replaces the one of the same name in an earlier one (an empty file hides it),
//!   and they are tried in the order of their file names, as qemu's specification says.
//! - `uefi` takes the first flash descriptor for the architecture and machine whose
//!   features have neither `secure-boot` nor `enrolled-keys` (so direct kernel boot of an
//!   unsigned kernel works); `uefi-secure` the first with both (Secure Boot enforced, the
//!   distribution's and Microsoft's keys in the template).
//! - The machine type matches a descriptor's glob (`pc-q35-*`, `virt-*`) by its own name or
//!   through qemu's alias for it (`q35` is the newest `pc-q35-X.Y`, `virt` the newest
//!   `virt-X.Y`, `pc` the newest `pc-i440fx-X.Y`).
//! - A descriptor with `requires-smm` makes vmk turn SMM on and the flash secure, which
//!   Secure Boot on x86 needs so that the guest cannot write the variable store around it.
//! - The variable store of a VM is its own file beside the image it boots
//!   ([`crate::layout::firmware_vars`]), made from the descriptor's template on the first
//!   run ([`create_vars`]): NOCOW like the disks, so that reflink snapshots of it are cheap.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Firmware;

/// The directories qemu's firmware descriptors live in, in the order where later ones
/// override earlier ones: the distribution's, the administrator's, the user's.
pub fn descriptor_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/usr/share/qemu/firmware"),
        PathBuf::from("/etc/qemu/firmware"),
    ];
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config_home {
        dirs.push(c.join("qemu/firmware"));
    }
    dirs
}

/// The descriptors in `dirs`, each as (path, JSON text), in the order they are tried: by
/// file name, a later directory's file replacing an earlier one's of the same name, empty
/// files left out. Unreadable directories and files are skipped (with a debug note).
pub fn read_descriptors(dirs: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(".json") {
                continue;
            }
            by_name.insert(name, e.path());
        }
    }
    by_name
        .into_values()
        .filter_map(
            |path| match crate::fileops::read_user_file(&path, 1 << 20) {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => Some((path, String::from_utf8_lossy(&bytes).into_owned())),
                Err(e) => {
                    log::debug!("skipping firmware descriptor {}: {e}", path.display());
                    None
                }
            },
        )
        .collect()
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "interface-types", default)]
    interface_types: Vec<String>,
    mapping: Mapping,
    #[serde(default)]
    targets: Vec<Target>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Mapping {
    device: String,
    executable: Option<FlashFile>,
    #[serde(rename = "nvram-template")]
    nvram_template: Option<FlashFile>,
}

#[derive(Debug, Deserialize)]
struct FlashFile {
    filename: PathBuf,
    #[serde(default = "raw")]
    format: String,
}

fn raw() -> String {
    "raw".into()
}

#[derive(Debug, Deserialize)]
struct Target {
    architecture: String,
    #[serde(default)]
    machines: Vec<String>,
}

/// The UEFI firmware a VM boots: qemu's two flash devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uefi {
    /// The firmware code (pflash unit 0, read-only).
    pub code: PathBuf,
    /// The template the variable store is made from on the first run.
    pub vars_template: PathBuf,
    /// The VM's own variable store (pflash unit 1): [`crate::layout::firmware_vars`].
    pub vars: PathBuf,
    /// The descriptor asks for SMM (x86 Secure Boot): `smm=on` and a secure flash.
    pub requires_smm: bool,
    /// The descriptor it came from.
    pub descriptor: PathBuf,
}

/// Why no firmware was found.
#[derive(Debug, thiserror::Error)]
#[error("VMK_FIRMWARE={firmware}: no UEFI firmware for {arch} (machine {machine}) among qemu's firmware descriptors{found}: {hint}")]
pub struct NoFirmware {
    firmware: Firmware,
    arch: String,
    machine: String,
    found: String,
    hint: String,
}

/// The package that ships UEFI firmware for `arch` on Debian-like systems.
pub fn firmware_package(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" | "i386" => Some("ovmf"),
        "aarch64" => Some("qemu-efi-aarch64"),
        "arm" => Some("qemu-efi-arm"),
        "riscv64" => Some("qemu-efi-riscv64"),
        _ => None,
    }
}

/// The names under which `machine` may appear in a descriptor's machine globs: itself, and
/// for qemu's aliases the prefix of the versioned types they stand for.
fn machine_names(machine: &str) -> Vec<String> {
    let mut names = vec![machine.to_string()];
    match machine {
        "q35" => names.push("pc-q35-".into()),
        "pc" => names.push("pc-i440fx-".into()),
        "virt" => names.push("virt-".into()),
        _ => {}
    }
    names
}

/// Shell-like glob with `*` only (what descriptors use).
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// The UEFI firmware for `firmware` (not [`Firmware::Bios`]) on `arch` and `machine`,
/// from `descriptors` (as [`read_descriptors`] returns them), with the variable store
/// `vars`.
pub fn select(
    descriptors: &[(PathBuf, String)],
    firmware: Firmware,
    arch: &str,
    machine: &str,
    vars: &Path,
) -> Result<Uefi, NoFirmware> {
    let names = machine_names(machine);
    let wants_secure = firmware == Firmware::UefiSecure;
    for (path, text) in descriptors {
        let d: Descriptor = match serde_json::from_str(text) {
            Ok(d) => d,
            Err(e) => {
                log::debug!("skipping firmware descriptor {}: {e}", path.display());
                continue;
            }
        };
        let has = |f: &str| d.features.iter().any(|x| x == f);
        let secure = has("secure-boot") && has("enrolled-keys");
        let insecure = !has("secure-boot") && !has("enrolled-keys");
        let fits = d.interface_types.iter().any(|t| t == "uefi")
            && d.mapping.device == "flash"
            && d.targets.iter().any(|t| {
                t.architecture == arch
                    && t.machines.iter().any(|m| names.iter().any(|n| glob(m, n)))
            })
            && if wants_secure { secure } else { insecure };
        let (Some(code), Some(template)) = (&d.mapping.executable, &d.mapping.nvram_template)
        else {
            continue;
        };
        if !fits || code.format != "raw" || template.format != "raw" {
            continue;
        }
        log::debug!("VMK_FIRMWARE={firmware}: {}", path.display());
        return Ok(Uefi {
            code: code.filename.clone(),
            vars_template: template.filename.clone(),
            vars: vars.to_path_buf(),
            requires_smm: has("requires-smm"),
            descriptor: path.clone(),
        });
    }
    let found = if descriptors.is_empty() {
        " (none found)".to_string()
    } else {
        format!(" ({} read)", descriptors.len())
    };
    let hint = match (firmware_package(arch), wants_secure) {
        (Some(p), true) => {
            format!("install {p} (one with Secure Boot keys enrolled), or use VMK_FIRMWARE=uefi")
        }
        (Some(p), false) => format!("install {p}"),
        (None, _) => format!("qemu offers no UEFI for {arch}: set VMK_FIRMWARE=bios"),
    };
    Err(NoFirmware {
        firmware,
        arch: arch.to_string(),
        machine: machine.to_string(),
        found,
        hint,
    })
}

/// Makes the variable store `vars` from `template` when it does not exist yet: a NOCOW file
/// (where the filesystem has the attribute) written under a temporary name and renamed, so
/// a killed vmk never leaves half a store under the final name. Returns whether it made one.
pub fn create_vars(template: &Path, vars: &Path) -> io::Result<bool> {
    if fs::symlink_metadata(vars).is_ok() {
        return Ok(false);
    }
    let tmp = crate::fileops::temp_beside(vars);
    let made = (|| {
        crate::fileops::create_nocow_file(&tmp, 0).map_err(io::Error::other)?;
        let mut src = fs::File::open(template)?;
        let mut dst = fs::OpenOptions::new().write(true).open(&tmp)?;
        io::copy(&mut src, &mut dst)?;
        dst.flush()?;
        dst.sync_all()?;
        fs::rename(&tmp, vars)
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!(
                "making the UEFI variable store {} from {}: {e}",
                vars.display(),
                template.display()
            ),
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(code: &str, vars: &str, arch: &str, machine: &str, features: &[&str]) -> String {
        serde_json::json!({
            "interface-types": ["uefi"],
            "mapping": {
                "device": "flash",
                "executable": {"filename": code, "format": "raw"},
                "nvram-template": {"filename": vars, "format": "raw"}
            },
            "targets": [{"architecture": arch, "machines": [machine]}],
            "features": features,
        })
        .to_string()
    }

    fn debian() -> Vec<(PathBuf, String)> {
        vec![
            (
                "/d/40-x86-secure-enrolled.json".into(),
                descriptor(
                    "/o/CODE.ms.fd",
                    "/o/VARS.ms.fd",
                    "x86_64",
                    "pc-q35-*",
                    &["enrolled-keys", "requires-smm", "secure-boot"],
                ),
            ),
            (
                "/d/50-x86-secure.json".into(),
                descriptor(
                    "/o/CODE.secboot.fd",
                    "/o/VARS.fd",
                    "x86_64",
                    "pc-q35-*",
                    &["requires-smm", "secure-boot"],
                ),
            ),
            ("/d/55-broken.json".into(), "{ not json".into()),
            (
                "/d/60-aarch64.json".into(),
                descriptor("/a/CODE.fd", "/a/VARS.fd", "aarch64", "virt-*", &[]),
            ),
            (
                "/d/60-x86.json".into(),
                descriptor(
                    "/o/CODE.fd",
                    "/o/VARS.fd",
                    "x86_64",
                    "pc-q35-*",
                    &["acpi-s3"],
                ),
            ),
        ]
    }

    #[test]
    fn plain_and_secure_uefi_per_arch_and_machine() {
        let v = Path::new("/vm/d.efivars");
        let u = select(&debian(), Firmware::Uefi, "x86_64", "q35", v).unwrap();
        assert_eq!(u.code, Path::new("/o/CODE.fd"));
        assert_eq!(u.vars_template, Path::new("/o/VARS.fd"));
        assert!(!u.requires_smm);
        let s = select(&debian(), Firmware::UefiSecure, "x86_64", "pc-q35-7.2", v).unwrap();
        assert_eq!(s.code, Path::new("/o/CODE.ms.fd"));
        assert_eq!(s.vars_template, Path::new("/o/VARS.ms.fd"));
        assert!(s.requires_smm);
        let a = select(&debian(), Firmware::Uefi, "aarch64", "virt", v).unwrap();
        assert_eq!(a.code, Path::new("/a/CODE.fd"));
        let e = select(&debian(), Firmware::Uefi, "x86_64", "pc", v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("VMK_FIRMWARE=uefi: no UEFI firmware for x86_64 (machine pc)")
                && e.contains("install ovmf"),
            "{e}"
        );
        let e = select(&debian(), Firmware::UefiSecure, "aarch64", "virt", v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("install qemu-efi-aarch64"), "{e}");
        let e = select(&[], Firmware::Uefi, "s390x", "s390-ccw-virtio", v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(none found)") && e.contains("VMK_FIRMWARE=bios"),
            "{e}"
        );
    }

    #[test]
    fn globs() {
        assert!(glob("pc-q35-*", "pc-q35-7.2"));
        assert!(glob("pc-q35-*", "pc-q35-"));
        assert!(!glob("pc-q35-*", "q35"));
        assert!(glob("virt-*", "virt-"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXbY"));
    }

    #[test]
    fn later_directories_override_and_empty_files_hide() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("50-x.json"), "A50").unwrap();
        fs::write(a.join("60-y.json"), "A60").unwrap();
        fs::write(a.join("README"), "not a descriptor").unwrap();
        fs::write(b.join("50-x.json"), "B50").unwrap();
        fs::write(b.join("60-y.json"), "").unwrap();
        fs::write(b.join("10-z.json"), "B10").unwrap();
        let got: Vec<String> = read_descriptors(&[a, b.clone()])
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(got, ["B10", "B50"]);
    }

    #[test]
    fn the_store_is_made_once_from_the_template() {
        let t = tempfile::tempdir().unwrap();
        let template = t.path().join("VARS.fd");
        fs::write(&template, b"template bytes").unwrap();
        let vars = t.path().join("disk0.efivars");
        assert!(create_vars(&template, &vars).unwrap());
        assert_eq!(fs::read(&vars).unwrap(), b"template bytes");
        fs::write(&vars, b"the guest's own").unwrap();
        assert!(!create_vars(&template, &vars).unwrap());
        assert_eq!(fs::read(&vars).unwrap(), b"the guest's own");
        let e = create_vars(&t.path().join("missing"), &t.path().join("x.efivars")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(!t.path().join("x.efivars").exists());
        let mut left: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["VARS.fd", "disk0.efivars"], "no temporary file left");
    }
}
