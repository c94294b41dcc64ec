//! What a bootstrap shows while it works (minutes, on a cold cache): on a terminal a
//! spinner with the current phase and the last line of the running command, else plain
//! lines on stderr; with -v every line of the commands' output.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use vmk_common::human;

/// A spinner with the current phase on a terminal; plain lines on stderr otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    verbose: bool,
    phase: Mutex<String>,
}

impl Progress {
    pub(crate) fn new(verbose: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {elapsed:>4} {prefix}: {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            verbose,
            phase: Mutex::new(String::new()),
        }
    }

    pub(crate) fn phase(&self, what: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = what.to_string();
        match &self.bar {
            Some(b) => {
                b.reset_elapsed();
                b.set_prefix(what.to_string());
                b.set_message("");
            }
            None => vmk_common::errln!("vmk-ayinstall: {what}…"),
        }
    }

    pub(crate) fn done(&self, what: &str, took: Duration) {
        self.note(&format!("{what} done ({})", human::duration(took)));
    }

    /// A line that stays (on a terminal: above the spinner).
    pub(crate) fn note(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(format!("vmk-ayinstall: {text}")),
            None => vmk_common::errln!("vmk-ayinstall: {text}"),
        }
    }

    /// What the phase is doing right now (the spinner's message).
    pub(crate) fn detail(&self, text: &str) {
        if let Some(b) = &self.bar {
            b.set_message(text.trim().to_string());
        }
    }

    /// A line of a command's output: shown with -v, else only in the log.
    pub(crate) fn line(&self, text: &str) {
        if self.verbose {
            match &self.bar {
                Some(b) => b.println(format!("  {text}")),
                None => vmk_common::errln!("  {text}"),
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("terminal", &self.bar.is_some())
            .finish()
    }
}
