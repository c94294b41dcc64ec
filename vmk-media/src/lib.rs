//! vmk-media: the media vmk hands to guests, written in Rust so that no mkisofs, mkfs.fat,
//! loop device or root is needed: ISO 9660 images (with Rock Ridge and Joliet) and reading
//! installer media, 1.44 MB FAT12 floppies, and cloud-init NoCloud seeds.
//!
//! A library, not a tool: `vmk-run` attaches the cloud-init seed on every run and
//! `vmk-ayinstall` builds install media, and neither should pull in the other for it. Also
//! what every start of a VM shares with `vmk libvirt`: the CD-ROMs a run attaches
//! ([`run_cdroms`]) and the check that the files its config names are there ([`preflight`]).

pub mod clock;
pub mod cloudinit;
pub mod fat;
pub mod iso9660;
pub mod preflight;

use std::path::PathBuf;

use vmk_common::config::VmConfig;

/// The CD-ROMs every run of `cfg`'s VM attaches, in order: the install medium (VMK_ISO,
/// as the original vmk attached it on every run, booted from disk first), then the
/// cloud-init seed (VMK_CLOUD_INIT=yes). Paths only, so that a dry run writes nothing:
/// who starts the VM makes the seed ([`cloudinit::ensure_seed`]) and refuses a missing
/// ISO. One list for `vmk run` and `vmk libvirt`, so their VMs cannot differ in media.
pub fn run_cdroms(cfg: &VmConfig) -> Vec<PathBuf> {
    cfg.iso()
        .into_iter()
        .chain(cfg.cloud_init.then(|| cloudinit::seed_path(cfg)))
        .collect()
}
