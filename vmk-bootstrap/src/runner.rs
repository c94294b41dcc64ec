//! How `vmk bootstrap` runs its external commands: their output goes to the log (and to the
//! progress display), they run in their own process group so that Ctrl-C reaches only us,
//! and on Ctrl-C their whole group is stopped. The public steps take any [`CommandRunner`].

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmk_common::process::{terminate, Scope, GRACE};
use vmk_common::shell;

use crate::progress::Progress;
use crate::staging::Interrupted;

/// Name of the log file (debootstrap's output and every command run) in the new directory.
pub const LOG_NAME: &str = "bootstrap.log";

/// Runs the external commands of the public steps (`vmk bootstrap` logs them and stops
/// them on Ctrl-C; a test fixture may simply let their output through).
pub trait CommandRunner {
    /// Runs `cmd` to its end; `what` names it in the error when it fails.
    fn run(&self, what: &str, cmd: &mut Command) -> Result<()>;
}

/// Runs child commands with their output in the log file, in their own process group so
/// that Ctrl-C reaches only us; on Ctrl-C the whole group is stopped.
pub(crate) struct Runner<'a> {
    pub(crate) log: &'a Path,
    pub(crate) progress: &'a Progress,
    pub(crate) interrupted: &'a AtomicBool,
}

impl CommandRunner for Runner<'_> {
    fn run(&self, what: &str, cmd: &mut Command) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let shown = shell::command_line(cmd);
        writeln!(log, "$ {shown}")?;
        log::info!("running {shown}");
        let mut offset = log.metadata()?.len();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let mut partial = Vec::new();
        loop {
            if let Some(status) = child.try_wait()? {
                self.pump(&mut offset, &mut partial);
                if status.success() {
                    return Ok(());
                }
                bail!("{what} failed ({status})");
            }
            if self.interrupted.load(Ordering::SeqCst) {
                terminate(&mut child, Scope::Group, GRACE);
                bail!(Interrupted);
            }
            self.pump(&mut offset, &mut partial);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Runner<'_> {
    /// Shows what the child wrote since `offset`: its last line as the spinner's detail,
    /// every line with -v.
    fn pump(&self, offset: &mut u64, partial: &mut Vec<u8>) {
        let Ok(mut f) = File::open(self.log) else {
            return;
        };
        let mut new = Vec::new();
        if f.seek(SeekFrom::Start(*offset)).is_err() || f.read_to_end(&mut new).is_err() {
            return;
        }
        *offset += new.len() as u64;
        partial.extend_from_slice(&new);
        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = partial.drain(..=end).collect();
        let text = String::from_utf8_lossy(&complete);
        let mut last = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.progress.line(line);
            last = Some(line);
        }
        if let Some(l) = last {
            self.progress.detail(l);
        }
    }
}

/// The last `n` lines of the log, indented.
pub(crate) fn log_tail(log: &Path, n: usize) -> Option<String> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    Some(
        lines[start..]
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_logged_with_their_output() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join(LOG_NAME);
        let progress = Progress::new(false);
        let interrupted = AtomicBool::new(false);
        let runner = Runner {
            log: &log,
            progress: &progress,
            interrupted: &interrupted,
        };
        runner
            .run(
                "echo",
                Command::new("sh").args(["-c", "echo one; echo 'two three'"]),
            )
            .unwrap();
        let e = runner
            .run("false", Command::new("sh").args(["-c", "exit 3"]))
            .unwrap_err();
        assert!(e.to_string().starts_with("false failed"), "{e}");
        assert_eq!(
            log_tail(&log, 3).unwrap(),
            "  one\n  two three\n  $ sh -c 'exit 3'"
        );
        interrupted.store(true, Ordering::SeqCst);
        let e = runner
            .run("sleep", Command::new("sleep").arg("30"))
            .unwrap_err();
        assert!(e.is::<Interrupted>(), "{e}");
    }
}
