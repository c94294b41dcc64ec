//! Civil (UTC) timestamps for the filesystems vmk writes: ISO 9660 and FAT store
//! broken-down dates. Images are reproducible when `SOURCE_DATE_EPOCH` is set (the
//! reproducible-builds convention); otherwise they carry the current time
//! ([`Timestamp::for_new_image`]). The conversion itself is [`vmk_common::time`]'s.

/// A UTC date and time, broken down as filesystems store it.
pub use vmk_common::time::UtcTime as Timestamp;
