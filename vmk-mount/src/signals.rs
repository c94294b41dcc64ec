//! While vmk holds a mount, a loop device or a storage daemon, Ctrl-C (and SIGTERM/SIGHUP)
//! must not kill it before it has undone them: [`Interrupts`] turns those signals into a
//! flag that the code checks between steps. A child in the foreground (the chroot shell)
//! still gets its own Ctrl-C, since handlers are reset on exec.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::SigId;

/// Catches SIGINT, SIGTERM and SIGHUP while alive.
#[derive(Debug)]
pub struct Interrupts {
    flag: Arc<AtomicBool>,
    ids: Vec<SigId>,
}

impl Interrupts {
    /// Starts catching the signals.
    pub fn install() -> Result<Interrupts> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            ids.push(
                signal_hook::flag::register(sig, Arc::clone(&flag))
                    .context("installing a signal handler")?,
            );
        }
        Ok(Interrupts { flag, ids })
    }

    /// True when a signal came.
    pub fn interrupted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Fails when a signal came, so the caller stops and cleans up.
    pub fn check(&self) -> Result<()> {
        if self.interrupted() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Forgets signals that came so far (e.g. Ctrl-C typed into the chroot shell).
    pub fn clear(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
