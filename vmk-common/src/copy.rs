//! Every copy of a disk image that a vmk tool makes goes through here: [`fileops::reflink_copy`] plus a
//! progress bar on a terminal when a full copy was explicitly allowed.

use std::io::IsTerminal;
use std::path::Path;

use crate::fileops::{self, CopyMethod, CopyOptions, CopyOutcome};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyMode {
    /// Replace an existing destination.
    pub force: bool,
    /// Copy every block when the filesystem cannot reflink (slow, uses space).
    pub full_copy: bool,
}

/// Copies `src` to `dst` by reflink (see [`fileops::reflink_copy`]); with `mode.full_copy`, a
/// filesystem that cannot reflink gets a full copy with a progress bar on stderr when stderr is
/// a terminal. The copy is private to its owner (mode without group and other bits): a disk
/// image is the guest's data. Errors keep the [`fileops::FileopsError`] as their source.
pub fn copy_file(
    src: &Path,
    dst: &Path,
    mode: CopyMode,
) -> Result<CopyOutcome, fileops::FileopsError> {
    let bar = progress_bar();
    let progress = |done: u64, total: u64| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    };
    let opts = CopyOptions {
        force: mode.force,
        allow_full_copy: mode.full_copy,
        progress: Some(&progress),
        private: true,
    };
    let result = fileops::reflink_copy(src, dst, &opts);
    bar.finish_and_clear();
    if let Ok(out) = &result {
        match out.method {
            CopyMethod::Reflink => {
                log::info!("reflinked {} to {}", src.display(), out.dst.display())
            }
            CopyMethod::FullCopy => log::info!(
                "made a full copy of {} ({} bytes) at {}: it shares no blocks with the original",
                src.display(),
                out.bytes,
                out.dst.display()
            ),
        }
    }
    result
}

/// A byte progress bar on stderr, hidden when stderr is not a terminal (scripts, logs).
fn progress_bar() -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg}[{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("copying ");
    bar
}
