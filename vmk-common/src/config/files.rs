//! The one place that opens config files and disk images to read them, and the limits that
//! keep hostile input from making vmk hang or grow without bound:
//!
//! - a config must be a regular file: it is opened without blocking (`O_NONBLOCK`, so a FIFO
//!   cannot hang the open) and without becoming a controlling terminal (`O_NOCTTY`), its type
//!   is checked on the opened file, and anything else (`-c /dev/zero`, a FIFO as
//!   `vm-config`, a directory) is refused, naming what it is;
//! - a config is at most [`MAX_FILE_BYTES`]: reading stops one byte past that;
//! - a value is at most [`MAX_VALUE_BYTES`] after expanding references, and all the values of
//!   one load together at most [`MAX_EXPANDED_BYTES`] (a value that doubles itself line after
//!   line stops at the line that goes over);
//! - a disk image probed for its format must be a regular file or a block device.

use std::fs::{File, FileType, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::ConfigError;

/// The largest config file vmk reads: 1 MiB (a real config is a few KiB).
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The longest value of one key, references expanded: 64 KiB.
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// The most text that expanding references may make in one load, over all values: 4 MiB.
pub const MAX_EXPANDED_BYTES: usize = 4 << 20;

/// What a file is, for messages: "a FIFO", "a character device", "a directory"…
pub fn file_type_name(ft: FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn not_regular(display: &str, ft: FileType) -> ConfigError {
    ConfigError::file(
        display,
        format!(
            "is {}, not a regular file: a config must be one",
            file_type_name(ft)
        ),
    )
}

/// Opens a config file, refusing anything but a regular file before reading a byte:
/// `Ok(None)` when it does not exist, else the open file and its metadata (from the opened
/// file, so what is checked is what is read).
pub fn open_config(path: &Path, display: &str) -> Result<Option<(File, Metadata)>, ConfigError> {
    let cannot = |e: io::Error| ConfigError::file(display, format!("cannot read it: {e}"));
    // Devices are refused before they are opened: opening some has effects.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(not_regular(display, m.file_type())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot(e)),
    }
    let file = match crate::fileops::open_nonblocking(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot(e)),
    };
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_regular(display, meta.file_type()));
    }
    Ok(Some((file, meta)))
}

/// Reads an opened config, at most [`MAX_FILE_BYTES`]; a longer one is refused.
pub fn read_bounded(reader: impl Read, display: &str) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::file(display, format!("cannot read it: {e}")))?;
    check_file_size(bytes.len(), display)?;
    Ok(bytes)
}

/// Refuses a config of more than [`MAX_FILE_BYTES`].
pub fn check_file_size(len: usize, display: &str) -> Result<(), ConfigError> {
    if len > MAX_FILE_BYTES {
        return Err(ConfigError::file(
            display,
            format!(
                "is larger than a config may be ({} KiB): is it a vmk config file?",
                MAX_FILE_BYTES >> 10
            ),
        ));
    }
    Ok(())
}

/// The bytes of a config file that is not checked for trust (`vmk set` editing the user's
/// own file, reading a neighbour's VMK_VNC): a regular file only, opened without blocking,
/// at most [`MAX_FILE_BYTES`]. `Ok(None)` when it does not exist.
pub fn read_config(path: &Path, display: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    match open_config(path, display)? {
        None => Ok(None),
        Some((file, _)) => read_bounded(file, display).map(Some),
    }
}

/// Opens a disk image to probe its first bytes: a regular file or a block device (opened
/// without blocking), anything else is an error naming the path and what it is.
pub fn open_image(path: &Path) -> io::Result<File> {
    let check = |meta: &Metadata| -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_file() || ft.is_block_device() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {}, not a disk image (a regular file or a block device)",
                path.display(),
                file_type_name(ft)
            ),
        ))
    };
    check(&std::fs::metadata(path)?)?;
    let file = crate::fileops::open_nonblocking(path)?;
    check(&file.metadata()?)?;
    Ok(file)
}
