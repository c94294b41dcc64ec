//! ISO 9660, read and written in Rust: vmk makes its own CD images (autoyast profile,
//! cloud-init seed) and takes the installer kernel out of install media, with no mkisofs,
//! isoinfo, loop device or root.

pub mod read;
pub mod write;

pub use read::{find_loader, IsoEntry, IsoImage, Loader, KNOWN_ARCHES};
pub use write::{Content, IsoBuilder};

/// The logical block (sector) size of every ISO 9660 image vmk reads or writes.
pub const SECTOR: usize = 2048;
