//! The terminal must come back as it was after `runin` and `console`, whatever happens:
//! guards that restore saved settings on drop (also on error and panic), and a guard that
//! holds termination signals back while the terminal is not ours.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use rustix::termios::{self, OptionalActions, Termios};

/// Saved settings of stdin's terminal, restored on drop. Does nothing when stdin is not a
/// terminal.
#[derive(Debug)]
pub struct Saved {
    saved: Option<Termios>,
}

impl Saved {
    /// Saves stdin's terminal settings (if stdin is a terminal).
    pub fn stdin() -> Saved {
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            termios::tcgetattr(&stdin).ok()
        } else {
            None
        };
        Saved { saved }
    }

    /// Saves stdin's settings, then puts it in raw mode (no echo, no line editing, no
    /// signals from keys). `None` when stdin is not a terminal.
    pub fn raw_stdin() -> Result<Option<Saved>> {
        let guard = Saved::stdin();
        let Some(orig) = guard.saved.clone() else {
            return Ok(None);
        };
        let mut raw = orig;
        raw.make_raw();
        termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(Some(guard))
    }

    /// True when stdin is a terminal whose settings were saved.
    pub fn is_terminal(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, t);
        }
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in this process until dropped; a signal that
/// arrives meanwhile is delivered then (declare it before the terminal guard, so that the terminal is restored first).
/// Children started meanwhile get an empty signal mask from `std::process`.
#[derive(Debug)]
pub struct HoldSignals {
    old: SigSet,
}

impl HoldSignals {
    /// Starts holding the signals.
    pub fn new() -> Result<HoldSignals> {
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
            .context("blocking signals")?;
        Ok(HoldSignals { old })
    }
}

impl Drop for HoldSignals {
    fn drop(&mut self) {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}
