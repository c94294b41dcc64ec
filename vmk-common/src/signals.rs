//! While vmk holds a mount, a loop device or a storage daemon, or runs a VM for `--exec`,
//! Ctrl-C (and SIGTERM/SIGHUP) must not kill it before it has undone them: [`Interrupts`]
//! turns those signals into a flag that the code checks between steps. A child in the
//! foreground (the chroot shell, ssh) still gets its own Ctrl-C, since handlers are reset
//! on exec (a blocked signal would stay blocked in every child, qemu included).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::SigId;

/// Catches SIGINT, SIGTERM and SIGHUP while alive.
#[derive(Debug)]
pub struct Interrupts {
    /// The number of the last signal caught, 0 for none.
    flag: Arc<AtomicUsize>,
    ids: Vec<SigId>,
}

impl Interrupts {
    /// Starts catching the signals.
    pub fn install() -> Result<Interrupts> {
        let flag = Arc::new(AtomicUsize::new(0));
        let mut ids = Vec::new();
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let number = usize::try_from(sig).context("signal number")?;
            ids.push(
                signal_hook::flag::register_usize(sig, Arc::clone(&flag), number)
                    .context("installing a signal handler")?,
            );
        }
        Ok(Interrupts { flag, ids })
    }

    /// True when a signal came.
    pub fn interrupted(&self) -> bool {
        self.signal().is_some()
    }

    /// The signal that came last, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.flag.load(Ordering::SeqCst) {
            0 => None,
            n => i32::try_from(n).ok(),
        }
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
        self.flag.store(0, Ordering::SeqCst);
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
