//! vmk-media: the media vmk hands to guests, written in Rust so that no mkisofs, mkfs.fat,
//! loop device or root is needed: ISO 9660 images (with Rock Ridge and Joliet) and reading
//! installer media, 1.44 MB FAT12 floppies, and cloud-init NoCloud seeds.
//!
//! A library, not a tool: `vmk-run` attaches the cloud-init seed on every run and
//! `vmk-ayinstall` builds install media, and neither should pull in the other for it.

pub mod clock;
pub mod cloudinit;
pub mod fat;
pub mod iso9660;
