//! The new VM's vm-config: the few keys a bootstrapped VM needs, with comments that say
//! what it is and how it boots.

use std::path::Path;

use anyhow::Result;
use vmk_common::config;
use vmk_common::time::UtcTime;

use crate::debian::write_file;
use crate::diskboot::{Boot, ESP_LABEL};
use crate::image::{DISK0_NAME, ROOT_LABEL};
use crate::plan::Plan;

/// Kernel arguments for direct boot of the bootstrapped disk (VMK_APPEND) of an x86 guest.
/// Root is found by its label, so the disk boots on every VMK_DISK_BUS (sda on scsi and lsi,
/// vda on virtio, nvme0n1 on nvme). `no_timer_check`: an x86 kernel checks its IO-APIC timer
/// at boot and panics ("IO-APIC + timer doesn't work!") when the vCPU was descheduled during
/// the check, which happens under TCG on a busy host (seen here at a load of 15 on 2 cores).
pub const APPEND: &str = "console=ttyS0 root=LABEL=vmkroot rw no_timer_check";

/// VMK_APPEND of a guest whose serial console is `console` ([`APPEND`] on x86; other
/// architectures have no IO-APIC timer check, and their kernels would hand the unknown word
/// to init).
pub fn append_for(console: &str) -> String {
    if console == "ttyS0" {
        APPEND.to_string()
    } else {
        format!("console={console} root=LABEL={ROOT_LABEL} rw")
    }
}

/// Writes the vm-config of `plan` into the VM directory `dir`.
pub(crate) fn write_vm_config(plan: &Plan, dir: &Path) -> Result<()> {
    write_file(
        &dir.join(config::VM_FILE_NAME),
        0o600,
        &vm_config_text(plan, &UtcTime::now().to_string()),
    )
}

/// The new VM's config, with comments.
pub(crate) fn vm_config_text(plan: &Plan, when: &str) -> String {
    let q = |v: &str| config::raw::quote(v, config::Quoting::Double);
    format!(
        "\
#!/bin/sh
# vm-config of {name}, written by `vmk bootstrap` on {when}:
# Debian {suite} ({arch}) from {mirror}.
# Read by vmk, never run by a shell. Change a key with `vmk set KEY VALUE`.

# The VM's identifier (qemu -name; the guest's hostname is {hostname}).
VMK_NAME={name_q}
# The VM's number: VNC display :{vnc}, serial console on port VMK_TELNET_BASE+{vnc},
# ssh forwarded from port VMK_SSH_BASE+{vnc} (see `vmk info`).
VMK_VNC={vnc}

{disk_text}
VMK_DISK0={disk}
VMK_DISK0_FORMAT=raw

# The guest's architecture (its qemu, machine, console and firmware follow from it).
VMK_ARCH={qemu_arch}
{boot_text}",
        name = plan.name,
        name_q = config::raw::quote(&plan.name, config::Quoting::Bare),
        hostname = plan.hostname,
        when = when,
        suite = plan.debian.suite,
        arch = plan.debian.arch,
        mirror = plan.debian.mirror,
        vnc = plan.vnc,
        disk = DISK0_NAME,
        qemu_arch = plan.guest_arch().name,
        disk_text = match plan.boot {
            Boot::Kernel => format!(
                "# disk0: one ext4 filesystem (label {ROOT_LABEL}) in a raw file, no partition table."
            ),
            Boot::Disk => format!(
                "# disk0: GPT with a BIOS boot partition, an EFI system partition ({ESP_LABEL}) and\n\
                 # the root filesystem (label {ROOT_LABEL}), with GRUB and shim inside: it boots itself."
            ),
        },
        boot_text = match plan.boot {
            Boot::Kernel => format!(
                "\n# Direct kernel boot with the guest's own kernel and initrd, copied out of its /boot.\n\
                 # After a kernel update inside the guest, copy the new ones out again.\n\
                 VMK_KERNEL=vmlinuz\nVMK_INITRD=initrd.img\nVMK_APPEND={}\n\
                 # One-shot runs (`vmk run --exec`, `vmk snap run --exec`) boot this small init\n\
                 # instead of systemd: the kernel, sshd, the command. `--full-boot` boots systemd\n\
                 # for one run; remove the key to boot systemd always. Any other boot is the\n\
                 # normal systemd boot.\n\
                 VMK_EXEC_INIT={}\n",
                q(&append_for(plan.guest_arch().console)),
                crate::devloop::EXEC_INIT,
            ),
            Boot::Disk => "\n# No VMK_KERNEL: the VM boots from disk0 (GRUB under bios, shim and GRUB under\n\
                 # uefi and uefi-secure, Secure Boot enforced), so a kernel update inside the guest\n\
                 # just works. The same disk boots with any of them:\n\
                 # VMK_FIRMWARE=uefi-secure\n"
                .to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use vmk_common::config::LoadOptions;

    #[test]
    fn config_text_loads_back() {
        let t = tempfile::tempdir().unwrap();
        let plan = crate::plan::example(t.path());
        let text = vm_config_text(&plan, "2024-01-02 03:04:05 UTC");
        assert!(text.starts_with("#!/bin/sh\n# vm-config of deb-1"));
        fs::write(t.path().join("vm-config"), &text).unwrap();
        let none = t.path().join("none");
        let cfg = config::load(&LoadOptions {
            dir: Some(t.path().to_path_buf()),
            system_file: Some(none.clone()),
            user_file: Some(none),
            env: false,
            ..LoadOptions::new()
        })
        .unwrap();
        assert_eq!(cfg.name.as_deref(), Some("deb-1"));
        assert_eq!(cfg.vnc, 7);
        assert_eq!(
            cfg.disk0_path.as_deref(),
            Some(t.path().join(DISK0_NAME).as_path())
        );
        assert_eq!(cfg.disk0_format, Some(config::DiskFormat::Raw));
        assert_eq!(
            cfg.kernel.as_deref(),
            Some(t.path().join("vmlinuz").as_path())
        );
        assert_eq!(
            cfg.initrd.as_deref(),
            Some(t.path().join("initrd.img").as_path())
        );
        assert_eq!(cfg.append.as_deref(), Some(APPEND));
        assert_eq!(cfg.arch.as_deref(), Some("x86_64"));
        assert_eq!(cfg.exec_init.as_deref(), Some(crate::devloop::EXEC_INIT));

        // an arm64 guest: VMK_ARCH and its serial console
        let mut arm = plan.clone();
        arm.debian.arch = "arm64".into();
        let text = vm_config_text(&arm, "2024-01-02 03:04:05 UTC");
        assert!(text.contains("\nVMK_ARCH=aarch64\n"), "{text}");
        assert!(
            text.contains("VMK_APPEND=\"console=ttyAMA0 root=LABEL=vmkroot rw\""),
            "{text}"
        );

        // a VM that boots itself: no kernel, loads with the default firmware
        let mut disk = plan.clone();
        disk.boot = Boot::Disk;
        let text = vm_config_text(&disk, "2024-01-02 03:04:05 UTC");
        fs::write(t.path().join("vm-config"), &text).unwrap();
        let cfg = config::load(&LoadOptions {
            dir: Some(t.path().to_path_buf()),
            system_file: Some(t.path().join("none")),
            user_file: Some(t.path().join("none")),
            env: false,
            ..LoadOptions::new()
        })
        .unwrap();
        assert!(cfg.kernel.is_none() && cfg.initrd.is_none() && cfg.append.is_none());
        assert!(text.contains("\n# VMK_FIRMWARE=uefi-secure\n"), "{text}");
    }

    #[test]
    fn the_written_date_is_a_utc_timestamp() {
        let ts = UtcTime::now().to_string();
        assert_eq!(ts.len(), 23, "{ts}");
        assert!(ts.starts_with("20"));
    }
}
